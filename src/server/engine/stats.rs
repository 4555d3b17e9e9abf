//! The plain `stats` command (and `stats reset`), and memring's own groups
//! `stats proxy` (its counters, per-server block and latency percentiles)
//! and `stats proxy settings` (its effective settings), answered by the
//! engine from every core's counters and metrics and the shared server
//! health. Other groups and administration commands go to the servers (see
//! [`crate::proxy::admin_plan`]); `stats settings` is the first server's.

use std::time::Instant;

use bytes::Bytes;

use crate::protocol::{compose, Request};
use crate::proxy::machine::Answer;
use crate::stats::{ProcessView, ServerView};

use super::Ctx;

/// Keys `stats hotkeys` lists.
const HOT_LISTED: usize = 20;

/// Answer `stats [group]`.
pub(super) fn answer(cx: &Ctx, r: &Request, bytes: &Bytes) -> Answer {
    let shared = &cx.shared;
    let args = bytes.get(r.meta_flags.clone()).unwrap_or_default();
    if args == b"reset" {
        for s in &shared.stats {
            s.reset();
        }
        return Answer::One(Bytes::from_static(compose::RESET));
    }
    let topo = &cx.topo;
    let views: Vec<ServerView<'_>> = topo
        .servers
        .iter()
        .map(|s| ServerView {
            name: &s.name,
            role: s.role,
            pool: &s.pool,
            health: &s.health,
            leaving: s.leaving,
        })
        .collect();
    let p = ProcessView {
        pid: std::process::id(),
        started: shared.started,
        now_unix: cx.now_unix.max(0) as u64,
        threads: shared.stats.len(),
        max_connections: shared.max_conns,
        backend: shared.backend,
        config_generation: topo.generation,
        rusage: rusage(),
        migration: topo.window_until.map(|until| {
            let left = until.saturating_duration_since(Instant::now());
            (left, topo.history.len())
        }),
    };
    let mut words = crate::protocol::lex::words(args);
    let text = match (words.next(), words.next(), words.next()) {
        (None, ..) => crate::stats::render(&shared.stats, &views, &p, Instant::now()),
        (Some(b"proxy"), None, _) => {
            let snap = crate::server::observe::snapshot(shared, topo);
            crate::stats::render_proxy(&shared.stats, &views, &snap, Instant::now())
        }
        // A reload keeps the settings that need a restart, so the config
        // the topology was built from is the effective one.
        (Some(b"proxy"), Some(b"settings"), None) => {
            crate::stats::render_settings(&topo.config, &p, shared.tcp_addr)
        }
        (Some(b"route"), Some(key), None) => route_text(topo, key),
        (Some(b"hotkeys"), None, _) => {
            let hot = crate::server::observe::hot_keys(shared, topo, HOT_LISTED);
            crate::stats::render_hot_keys(&hot)
        }
        _ => return Answer::One(Bytes::from_static(compose::ERROR)),
    };
    Answer::One(Bytes::from(text))
}

/// This process's CPU time in user and system mode (zero if getrusage fails).
fn rusage() -> (std::time::Duration, std::time::Duration) {
    use nix::sys::resource::{getrusage, UsageWho};
    getrusage(UsageWho::RUSAGE_SELF).map_or(Default::default(), |u| {
        let d = |t: nix::sys::time::TimeVal| {
            std::time::Duration::new(t.tv_sec().max(0) as u64, (t.tv_usec().max(0) as u32) * 1000)
        };
        (d(u.user_time()), d(u.system_time()))
    })
}

/// `stats route <key>` for the live topology (health states included).
pub(crate) fn route_text(topo: &crate::server::topology::Topology, key: &[u8]) -> String {
    let r = topo.router.route(key);
    let server = |id: u32| {
        topo.servers
            .get(id as usize)
            .map(|s| (s.name.as_str(), s.health.state()))
    };
    let Some(primary) = server(r.primary) else {
        return "END\r\n".to_string();
    };
    let rep = crate::proxy::machine::Replicas {
        primary: crate::upstream::ServerId(r.primary),
        backup: r.backup.map(crate::upstream::ServerId),
    };
    let earlier = topo.earlier_owners(key, false, rep);
    crate::stats::render_route(&crate::stats::RouteView {
        pool: topo.router.pool_name(r.pool),
        primary,
        backup: r.backup.and_then(server),
        earlier: earlier
            .as_slice()
            .iter()
            .filter_map(|&id| server(id))
            .collect(),
    })
}
