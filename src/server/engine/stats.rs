//! The plain `stats` command (and `stats reset`), answered by the engine
//! from every core's counters and the shared server health. Groups and
//! administration commands go to the servers (see [`crate::proxy::admin_plan`]).

use std::time::Instant;

use bytes::Bytes;

use crate::protocol::{compose, Request};
use crate::proxy::machine::Answer;
use crate::stats::{ProcessView, ServerView};

use super::Ctx;

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
            health: &s.health,
        })
        .collect();
    let p = ProcessView {
        pid: std::process::id(),
        started: shared.started,
        now_unix: cx.now_unix.max(0) as u64,
        threads: shared.stats.len(),
        max_connections: shared.cfg.max_conns,
        backend: shared.backend,
        config_generation: topo.generation,
    };
    Answer::One(Bytes::from(crate::stats::render(
        &shared.stats,
        &views,
        &p,
        Instant::now(),
    )))
}
