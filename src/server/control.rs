//! The control plane of the engine: probes of suspect and ejected servers,
//! on their own thread with blocking sockets, never on a core.
//!
//! Every 50 ms (jittered), or at once when a core rings the topology's
//! [`super::topology::ProbeBell`] (a server turned suspect), the prober looks
//! for suspect servers and ejected servers whose probe is due, and claims
//! them; each claimed probe runs on a short-lived thread
//! (`version`, then the rejoin the server's health picks: pipelined
//! `delete`s of the keys it missed while the server already takes writes,
//! or `flush_all` when its missed-key log overflowed) and reports back to
//! the server's shared health. One log line per rejoin names the path and
//! the keys touched. A suspect server that fails its probe is ejected, for
//! the probe's reason; one that answers rejoins with no ejection counted.
//! With `--resync`, a server that rejoined then gets the keys it owns copied
//! back from the servers of the other role, on the same thread, by the same
//! pure copy machine a read-through repair uses, driven over blocking
//! sockets.

use std::io::{Read, Write};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use std::collections::{HashMap, VecDeque};

use bytes::{Bytes, BytesMut};

use crate::protocol::metadump::{parse_dump_line, DumpLine};
use crate::protocol::{compose, Expect, Status};
use crate::proxy::machine::{
    Answer, CallError, CallId, Effect, Failure, Hedge, Machine, MetaItem, Reply, View,
};
use crate::stats::{CoreStats, Counter};
use crate::upstream::{DrainStep, Ejection, Health, Observed, Probe, Rejoin, Role, ServerId};

use super::tls::{is_tls_failure, Dial, Stream};
use super::topology::{Settings, Shared, Topology};

/// Start the prober thread.
pub(super) fn spawn_prober(shared: Arc<Shared>) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("memring-control".into())
        .spawn(move || prober(&shared))
        .map(drop)
}

fn prober(shared: &Arc<Shared>) {
    let mut rng =
        crate::upstream::Jitter::new(0x2545_F491_4F6C_DD1D ^ u64::from(std::process::id()));
    let mut jitter = move || rng.sample();
    let tick = Duration::from_millis(50);
    shared.current().bell.answer_here();
    while !shared.stopping.load(Ordering::Relaxed) {
        // Woken early by the bell when a server turns suspect.
        std::thread::park_timeout(tick.mul_f64(0.5 + jitter()));
        let mut topo = shared.current();
        let now = Instant::now();
        if topo.window_until.is_some_and(|until| now >= until) {
            close_window(shared);
            topo = shared.current();
        }
        for (i, s) in topo.servers.iter().enumerate() {
            let Some(probe) = s.health.try_claim_probe(now) else {
                continue;
            };
            let Some(dial) = topo.dial(i) else {
                continue;
            };
            let (health, name, settings) = (s.health.clone(), s.name.clone(), topo.settings);
            let j = jitter();
            let (shared, topo2) = (shared.clone(), topo.clone());
            let id = topo
                .servers
                .iter()
                .position(|x| std::ptr::eq(x, s))
                .map(|i| ServerId(i as u32));
            let spawned = std::thread::Builder::new()
                .name("memring-probe".into())
                .spawn(move || {
                    if rejoin(&health, &dial, &name, probe, &settings, j) {
                        if let (true, Some(id)) = (settings.resync, id) {
                            resync(&shared, &topo2, id);
                        }
                    }
                });
            if let Err(e) = spawned {
                tracing::warn!(error = %e, "cannot start a probe thread");
                s.health
                    .probe_not_run(Instant::now(), &topo.settings.policy, probe, j);
            }
        }
    }
}

/// Keys deleted per pipelined batch of a drain.
const DRAIN_BATCH: usize = 256;

/// Steps a drain may take before it gives up (and retries later): each
/// step deletes a batch or waits [`DRAIN_WAIT`] for the grace to run out.
const DRAIN_STEPS: usize = 1 << 20;

/// Pause of a drain whose log is empty while its grace runs.
const DRAIN_WAIT: Duration = Duration::from_millis(10);

/// Probe the server and bring it back: true when it is in service again.
fn rejoin(
    health: &Health,
    dial: &Dial,
    name: &str,
    probe: Probe,
    settings: &Settings,
    jitter: f64,
) -> bool {
    let policy = &settings.policy;
    let failed = |why: Ejection| {
        if probe.of_suspect() {
            tracing::warn!(server = %name, reason = why.as_str(), "suspect server failed its probe: ejected");
        }
        health.probe_failed(Instant::now(), policy, probe, why, jitter);
        false
    };
    let mut s = match probe_server(dial, settings) {
        Ok(s) => s,
        Err(why) => return failed(why),
    };
    let suspect = probe.of_suspect();
    let done = match health.begin_rejoin(Instant::now(), probe) {
        Rejoin::Flush => match roundtrip(&mut s, b"flush_all\r\n", Status::Ok) {
            Ok(()) => {
                // Always true: only this probe's holder leaves Flushing.
                let back = health.probe_succeeded(Instant::now(), probe);
                if back {
                    tracing::warn!(server = %name, path = "flush", keys = "all", suspect, "server rejoined");
                }
                back
            }
            Err(why) => failed(why),
        },
        Rejoin::Drain => drain(health, &mut s, name, settings, probe, jitter),
    };
    let _ = s.tcp().shutdown(std::net::Shutdown::Both);
    done
}

/// Delete the server's missed keys over `s` until its health puts it back
/// in service; writes already reach it meanwhile.
fn drain(
    health: &Health,
    s: &mut Stream,
    name: &str,
    settings: &Settings,
    probe: Probe,
    jitter: f64,
) -> bool {
    let policy = &settings.policy;
    let suspect = probe.of_suspect();
    // A server that missed writes stays draining until the writes decided
    // while it was out have all been answered: a request timeout (a little
    // more for the cores' turn). One that missed nothing (no replica
    // answered for it: reads only, or no backups at all) comes back at
    // once; a late missed write would only eject it again.
    let mut grace = Duration::ZERO;
    let mut deleted = 0u64;
    let mut buf = Vec::with_capacity(16 * 1024);
    for _ in 0..DRAIN_STEPS {
        match health.drain_step(Instant::now(), policy, probe, grace, DRAIN_BATCH, deleted) {
            DrainStep::Delete(keys) => {
                grace = settings.request_timeout + Duration::from_millis(100);
                if delete_all(s, &keys, &mut buf) {
                    health.drained(keys.len() as u64);
                    deleted += keys.len() as u64;
                } else {
                    tracing::warn!(server = %name, deleted, suspect, "drain failed; retrying later");
                    health.drain_failed(Instant::now(), policy, probe, keys, jitter);
                    return false;
                }
            }
            DrainStep::Wait => std::thread::sleep(DRAIN_WAIT),
            DrainStep::Rejoined => {
                let path = if deleted > 0 { "drain" } else { "clean" };
                tracing::warn!(server = %name, path, keys = deleted, suspect, "server rejoined");
                return true;
            }
            DrainStep::Aborted => {
                tracing::warn!(server = %name, deleted, "drain aborted: missed-key log overflowed, will flush");
                return false;
            }
        }
    }
    tracing::warn!(server = %name, deleted, "drain did not finish; retrying later");
    health.drain_failed(Instant::now(), policy, probe, Vec::new(), jitter);
    false
}

/// Pipelined `delete` of every key; true when each got `DELETED` or
/// `NOT_FOUND` (or `CLIENT_ERROR`: a key memcached refuses it cannot hold).
fn delete_all(s: &mut Stream, keys: &[Box<[u8]>], buf: &mut Vec<u8>) -> bool {
    buf.clear();
    for k in keys {
        buf.extend_from_slice(b"delete ");
        buf.extend_from_slice(k);
        buf.extend_from_slice(b"\r\n");
    }
    read_deletes(s, buf, keys.len())
}

/// Send the `n` pipelined deletes in `buf` and read their replies: true
/// when each was `DELETED`/`HD` or `NOT_FOUND`/`NF` (or `CLIENT_ERROR`: a
/// key memcached refuses it cannot hold). `buf` is reused for the replies.
fn read_deletes(s: &mut Stream, buf: &mut Vec<u8>, n: usize) -> bool {
    if s.write_all(buf).is_err() {
        return false;
    }
    buf.clear();
    let mut answered = 0;
    let mut start = 0;
    let mut chunk = [0u8; 16 * 1024];
    // Bounded by the key count and the read timeout.
    while answered < n {
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => return false,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
        while let Some(pos) = buf[start..].iter().position(|&b| b == b'\n') {
            let line = &buf[start..start + pos + 1];
            let ok = [&b"DELETED"[..], b"NOT_FOUND", b"HD", b"NF", b"CLIENT_ERROR"]
                .iter()
                .any(|w| line.starts_with(w));
            if !ok {
                return false;
            }
            answered += 1;
            start += pos + 1;
        }
        if buf.len() > 1 << 20 {
            return false;
        }
    }
    true
}

/// Connect and ask `version`: the connection when the server answered
/// within the request timeout, or why not.
fn probe_server(dial: &Dial, settings: &Settings) -> Result<Stream, Ejection> {
    let mut s = open(dial, settings).map_err(|e| {
        if is_tls_failure(&e) {
            Ejection::Tls
        } else {
            Ejection::Connect
        }
    })?;
    roundtrip(&mut s, b"version\r\n", Status::Version)?;
    Ok(s)
}

/// A control-plane connection for requests that change data (drains,
/// resync copies): reads and writes time out after the request timeout,
/// and its close resets it (`SO_LINGER {1, 0}`), so that requests still
/// unanswered when it is given up are dropped by the kernel, never
/// retransmitted to a server that is back in service.
fn open(dial: &Dial, settings: &Settings) -> std::io::Result<Stream> {
    let limit = settings.request_timeout.max(Duration::from_millis(100));
    let s = dial.open(settings.connect_timeout, limit)?;
    socket2::SockRef::from(s.tcp()).set_linger(Some(Duration::ZERO))?;
    Ok(s)
}

/// Send `req` and read its one-line reply: Ok when it is `want`, otherwise
/// why not (a reply other than `want` counts as garbled).
fn roundtrip(s: &mut Stream, req: &'static [u8], want: Status) -> Result<(), Ejection> {
    let mut buf = BytesMut::with_capacity(256);
    let parts = [Bytes::from_static(req), Bytes::new()];
    match exchange(s, &mut buf, &parts, Expect::Line, &mut Vec::new()) {
        Ok(r) if r.status == want => Ok(()),
        Ok(_) => Err(Ejection::Protocol),
        Err(e) => Err(e.ejection()),
    }
}

/// The machines' view from the control plane: health now, wall clock now.
struct ControlView<'a>(&'a Topology);

impl View for ControlView<'_> {
    fn observe(&self, s: ServerId) -> Observed {
        self.0
            .servers
            .get(s.index())
            .map_or_else(Observed::gone, |x| x.health.observe())
    }

    fn now_unix(&self) -> i64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64)
    }
}

/// Blocking connections to servers, one per server, for running machines
/// off the cores.
struct Blocking<'a> {
    topo: &'a Topology,
    conns: HashMap<ServerId, (Stream, BytesMut)>,
    items: Vec<crate::protocol::ValueItem>,
}

impl Blocking<'_> {
    /// One request, one reply; a failed connection is dropped (the next
    /// call reconnects).
    fn call(
        &mut self,
        server: ServerId,
        parts: &[Bytes; 2],
        expect: Expect,
    ) -> Result<Reply, CallError> {
        let info = self
            .topo
            .servers
            .get(server.index())
            .ok_or(CallError::no_call(server, expect))?;
        if !info.health.is_up() {
            return Err(CallError::no_call(server, expect));
        }
        let settings = &self.topo.settings;
        let (s, buf) = match self.conns.entry(server) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(v) => {
                let dial = self
                    .topo
                    .dial(server.index())
                    .ok_or(CallError::no_call(server, expect))?;
                let s = open(&dial, settings).map_err(|e| {
                    let kind = if is_tls_failure(&e) {
                        Failure::Tls
                    } else {
                        Failure::Connect
                    };
                    CallError::unsent(server, expect, kind)
                })?;
                v.insert((s, BytesMut::with_capacity(16 * 1024)))
            }
        };
        let result = exchange(s, buf, parts, expect, &mut self.items)
            .map_err(|kind| CallError::new(server, expect, kind));
        if result.is_err() {
            self.conns.remove(&server);
        }
        result
    }

    /// Run a started machine to its end, carrying out its effects.
    fn run(&mut self, m: &mut Machine, mut fx: Vec<Effect>, stats: &CoreStats) {
        let view = ControlView(self.topo);
        let mut sends: VecDeque<(CallId, ServerId, [Bytes; 2], Expect)> = VecDeque::new();
        let mut granted: Vec<CallId> = Vec::new();
        // Bounded: a copy machine makes a handful of calls.
        for _ in 0..64 {
            for e in fx.drain(..) {
                match e {
                    Effect::Send {
                        call,
                        server,
                        parts,
                        expect,
                    } => sends.push_back((call, server, parts, expect)),
                    Effect::Count(c, n) => stats.add(c, n),
                    Effect::MissedWrite { server, seen, key } => {
                        self.topo.missed_write(server, seen, &key, Instant::now());
                    }
                    // One call at a time here: a section is free at once.
                    Effect::Exclusive { call, .. } => granted.push(call),
                    // Never asked for here (the control plane does not
                    // hedge); were it, a timer is due at once and a hedge
                    // is an ordinary call.
                    Effect::Hedge(Hedge::Timer { call, .. }) => granted.push(call),
                    Effect::Hedge(Hedge::Send {
                        call,
                        backup,
                        parts,
                        expect,
                        ..
                    }) => sends.push_back((call, backup, parts, expect)),
                    Effect::Hedge(Hedge::Won { .. }) | Effect::HoldClient(_) => {}
                    Effect::Answer(_)
                    | Effect::Failover { .. }
                    | Effect::Spawn(_)
                    | Effect::ReadThrough(_) => {}
                }
            }
            if let Some(call) = granted.pop() {
                m.on_outcome(call, Ok(Reply::grant()), &view, &mut fx);
                continue;
            }
            let Some((call, server, parts, expect)) = sends.pop_front() else {
                return;
            };
            let outcome = self.call(server, &parts, expect);
            m.on_outcome(call, outcome, &view, &mut fx);
        }
    }
}

/// Write `parts` and read one reply framed by `expect`.
fn exchange(
    s: &mut Stream,
    buf: &mut BytesMut,
    parts: &[Bytes; 2],
    expect: Expect,
    items: &mut Vec<crate::protocol::ValueItem>,
) -> Result<Reply, Failure> {
    for p in parts {
        s.write_all(p).map_err(|_| Failure::Closed)?;
    }
    // Bounded by the reply size limit and the read timeout.
    loop {
        match Reply::frame(expect, buf, usize::MAX, items) {
            Ok(Some(r)) => return Ok(r),
            Ok(None) => {}
            Err(_) => return Err(Failure::Protocol),
        }
        if buf.len() > 64 << 20 {
            return Err(Failure::Protocol);
        }
        let mut chunk = [0u8; 16 * 1024];
        match s.read(&mut chunk) {
            Ok(0) => return Err(Failure::Closed),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return Err(Failure::Timeout)
            }
            Err(_) => return Err(Failure::Closed),
        }
    }
}

/// Start the DNS refresher: every `--dns-refresh` it resolves every server
/// given by host name again through the system resolver (so /etc/hosts and
/// resolv.conf apply); when one resolves to a new address, it installs a
/// topology with that address: new connections go there, and a server keeps
/// its place on the ring, which is by name. A failed lookup keeps the last
/// address, with a warning and a count.
pub(super) fn spawn_dns(shared: Arc<Shared>) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("memring-dns".into())
        .spawn(move || dns_loop(&shared))
        .map(drop)
}

fn dns_loop(shared: &Arc<Shared>) {
    let mut last = Instant::now();
    // Ends with the process (checked every 100 ms).
    while !shared.stopping.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(100));
        let every = shared.current().config.dns_refresh;
        if every.is_zero() || last.elapsed() < every {
            continue;
        }
        last = Instant::now();
        refresh_addresses(shared);
    }
}

/// Resolve every named server and every `dns+` set once; install a
/// topology when an address or a set's membership changed. A membership
/// change moves keys: the servers are swept as after a reload.
fn refresh_addresses(shared: &Arc<Shared>) {
    use std::net::ToSocketAddrs;
    let _updating = shared.updating.lock().unwrap_or_else(|e| e.into_inner());
    let topo = shared.current();
    let mut moved = Vec::new();
    for info in &topo.servers {
        let Some(host) = &info.host else {
            continue;
        };
        match (host.as_str(), info.addr.port())
            .to_socket_addrs()
            .map(|mut a| a.next())
        {
            Ok(Some(now)) if now != info.addr => moved.push((info, now)),
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => {
                info.health.dns_failures.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(server = %info.name, kept = %info.addr, "cannot resolve the server's host name: keeping its last address");
            }
        }
    }
    let mut regrown = Vec::new();
    for (name, members) in &topo.sets {
        let Some((host, port)) = name
            .strip_prefix("dns+")
            .and_then(|hp| hp.rsplit_once(':'))
            .and_then(|(h, p)| Some((h, p.parse::<u16>().ok()?)))
        else {
            continue;
        };
        match super::topology::resolve_all(host, port) {
            Ok(now) if now != *members => regrown.push((name, members, now)),
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(set = %name, error = %e, "cannot resolve a dns+ set: keeping its last members")
            }
        }
    }
    if moved.is_empty() && regrown.is_empty() {
        return;
    }
    match Topology::build(&topo.config, Some(&topo), shared.started) {
        Ok(t) => {
            for (info, now) in moved {
                info.health.addr_changes.fetch_add(1, Ordering::Relaxed);
                tracing::info!(target: super::LIFECYCLE, server = %info.name, from = %info.addr, to = %now, "server address changed: new connections go to the new address");
            }
            for (name, was, now) in regrown {
                let added: Vec<String> = now
                    .iter()
                    .filter(|a| !was.contains(a))
                    .map(|a| a.to_string())
                    .collect();
                let removed: Vec<String> = was
                    .iter()
                    .filter(|a| !now.contains(a))
                    .map(|a| a.to_string())
                    .collect();
                tracing::info!(target: super::LIFECYCLE, set = %name, added = %added.join(" "), removed = %removed.join(" "), "dns+ set membership changed");
            }
            let keys_moved = t.settle_after(&topo);
            install(shared, t, keys_moved);
        }
        Err(e) => {
            tracing::warn!(error = %e, "address refresh failed; keeping the running topology")
        }
    }
}

/// Install `t` (a reload's, or the DNS refresher's); `sweep_due`: what
/// [`Topology::settle_after`] said. Then either a migration window is open,
/// and the sweep waits for it to close, or the sweep starts now.
pub(super) fn install(shared: &Arc<Shared>, t: Topology, sweep_due: bool) {
    let generation = t.generation;
    let window = t.window_until;
    if sweep_due {
        if let Some(until) = window {
            let secs = until.saturating_duration_since(Instant::now()).as_secs();
            tracing::info!(target: super::LIFECYCLE, generation, placements = t.history.len(), closes_in_s = secs, "keys moved: migration window open (a key that misses is read from its earlier owners)");
        }
    }
    shared.swap_topology(t);
    if sweep_due && window.is_none() {
        spawn_sweep(shared.clone(), generation);
    }
}

/// Close the open migration window once it is due: install the topology
/// without its earlier placements and leaving servers, and sweep (every
/// server then deletes the keys it does not own under the live placement).
fn close_window(shared: &Arc<Shared>) {
    let _updating = shared.updating.lock().unwrap_or_else(|e| e.into_inner());
    let current = shared.current();
    let due = current
        .window_until
        .is_some_and(|until| Instant::now() >= until);
    if !due {
        return;
    }
    let t = current.window_closed();
    t.settle_after(&current);
    let generation = t.generation;
    let left = current.servers.iter().filter(|s| s.leaving).count();
    shared.swap_topology(t);
    tracing::info!(target: super::LIFECYCLE, generation, servers_left = left, "migration window closed: sweeping");
    spawn_sweep(shared.clone(), generation);
}

/// Start the sweep of reload generation `generation` on its own thread:
/// once every request decided under an earlier placement has had time to
/// end (twice the request timeout, a little more for the cores' turn),
/// every server in service is asked for its keys (`lru_crawler metadump`)
/// and the keys it does not own under this placement are deleted there.
/// A server swept clean is marked so ([`crate::upstream::Health::sweep_done`]);
/// a later reload flushes one that is not (see [`Topology::settle_after`]).
/// A newer reload ends this sweep: its own covers every server.
pub(super) fn spawn_sweep(shared: Arc<Shared>, generation: u64) {
    let spawned = std::thread::Builder::new()
        .name("memring-sweep".into())
        .spawn(move || sweep(&shared, generation));
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "cannot start the sweep thread: servers stay unswept and a later reload flushes them");
    }
}

fn sweep(shared: &Shared, generation: u64) {
    let topo = shared.current();
    if topo.generation != generation {
        return;
    }
    let grace = topo.settings.request_timeout * 2 + Duration::from_millis(200);
    // Bounded: the grace, in small steps so that shutdown is not held up.
    let until = Instant::now() + grace;
    while Instant::now() < until {
        if shared.stopping.load(Ordering::Relaxed) {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut total = 0u64;
    for (i, info) in topo.servers.iter().enumerate() {
        if shared.current().generation != generation || shared.stopping.load(Ordering::Relaxed) {
            tracing::info!(generation, "sweep ended by a newer reload");
            return;
        }
        if !info.health.is_up() || info.leaving {
            // Not swept: a later reload that moves keys flushes it (a
            // leaving server is gone from the fleet once the window closes).
            continue;
        }
        match sweep_server(&topo, ServerId(i as u32)) {
            Ok(n) => {
                info.health.sweep_done(generation, Some(n));
                total += n;
            }
            Err(why) => {
                tracing::warn!(server = %info.name, why, "sweep incomplete: a later reload that moves keys flushes this server");
            }
        }
    }
    tracing::info!(target: super::LIFECYCLE, generation, deleted = total, "sweep finished: no server holds a key it does not own");
}

/// Delete on `server` every key (from its metadump) it does not own under
/// `topo`; the number deleted.
fn sweep_server(topo: &Topology, server: ServerId) -> Result<u64, &'static str> {
    let dial = topo.dial(server.index()).ok_or("no such server")?;
    let mut del = open(&dial, &topo.settings).map_err(|_| "cannot connect for the deletes")?;
    let mut out = Vec::with_capacity(16 * 1024);
    let mut deleted = 0u64;
    // Placed by their bytes, binary keys included (deleted with `md ... b`).
    let foreign = |key: &[u8], _binary: bool| {
        let r = topo.replicas(key, false);
        r.primary != server && r.backup != Some(server)
    };
    for_dumped_keys(topo, server, DRAIN_BATCH, foreign, |batch| {
        if !delete_keys(&mut del, batch, &mut out) {
            return Err("a delete failed");
        }
        deleted += batch.len() as u64;
        Ok(())
    })?;
    Ok(deleted)
}

/// Pipelined deletes of `keys` (`(key, binary)`: a binary key as `md
/// <base64> b`); true when each was deleted or absent.
fn delete_keys(s: &mut Stream, keys: &[(Bytes, bool)], buf: &mut Vec<u8>) -> bool {
    use base64::Engine as _;
    buf.clear();
    for (k, binary) in keys {
        if *binary {
            buf.extend_from_slice(b"md ");
            buf.extend_from_slice(
                base64::engine::general_purpose::STANDARD
                    .encode(k)
                    .as_bytes(),
            );
            buf.extend_from_slice(b" b\r\n");
        } else {
            buf.extend_from_slice(b"delete ");
            buf.extend_from_slice(k);
            buf.extend_from_slice(b"\r\n");
        }
    }
    read_deletes(s, buf, keys.len())
}

/// Stream `server`'s keys (`lru_crawler metadump all`) and hand those that
/// `keep` accepts (`keep(key, binary)`: `binary` for a key only meta
/// commands with `b` can name) to `on_batch`, `batch` at a time (the last
/// batch may be shorter).
fn for_dumped_keys(
    topo: &Topology,
    server: ServerId,
    batch: usize,
    keep: impl Fn(&[u8], bool) -> bool,
    mut on_batch: impl FnMut(&mut Vec<(Bytes, bool)>) -> Result<(), &'static str>,
) -> Result<(), &'static str> {
    let settings = &topo.settings;
    let dial = topo.dial(server.index()).ok_or("no such server")?;
    // A dump stalls only while a batch is handled.
    let mut dump = dial
        .open(settings.connect_timeout, settings.request_timeout * 10)
        .map_err(|_| "cannot connect for the metadump")?;
    dump.write_all(b"lru_crawler metadump all\r\n")
        .map_err(|_| "cannot send metadump")?;
    let mut buf = BytesMut::with_capacity(64 * 1024);
    let mut key = Vec::new();
    let mut keys: Vec<(Bytes, bool)> = Vec::with_capacity(batch);
    let mut chunk = vec![0u8; 64 * 1024];
    // Bounded by the dump's END and the read timeout.
    loop {
        let mut end = false;
        while let Some(pos) = buf.iter().position(|&b| b == b'\n') {
            let line = buf.split_to(pos + 1);
            match parse_dump_line(&line[..pos], &mut key) {
                DumpLine::Key if keep(&key, false) => {
                    keys.push((Bytes::copy_from_slice(&key), false))
                }
                DumpLine::BinaryKey if keep(&key, true) => {
                    keys.push((Bytes::copy_from_slice(&key), true))
                }
                DumpLine::Key | DumpLine::BinaryKey | DumpLine::Skip => {}
                DumpLine::End => {
                    end = true;
                    break;
                }
            }
        }
        if end || keys.len() >= batch {
            if !keys.is_empty() {
                on_batch(&mut keys)?;
                keys.clear();
            }
            if end {
                return Ok(());
            }
        }
        if buf.len() > 4096 {
            return Err("metadump line too long");
        }
        match dump.read(&mut chunk) {
            Ok(n) if n > 0 => buf.extend_from_slice(&chunk[..n]),
            _ => return Err("metadump stream ended early"),
        }
    }
}

/// Copy every key `target` owns from the in-service servers of the other role.
fn resync(shared: &Shared, topo: &Topology, target: ServerId) {
    let Some(info) = topo.servers.get(target.index()) else {
        return;
    };
    let stats = &shared.stats[0];
    let sources: Vec<ServerId> = (0..topo.servers.len() as u32)
        .map(ServerId)
        .filter(|s| {
            let o = &topo.servers[s.index()];
            o.role != info.role && o.pool == info.pool && !o.leaving && topo.health(*s).is_up()
        })
        .collect();
    let mut copied = 0u64;
    for src in sources {
        match resync_from(topo, src, target, info.role, stats) {
            Ok(n) => copied += n,
            Err(why) => {
                tracing::warn!(server = %info.name, source = %topo.servers[src.index()].name, why, "resync incomplete")
            }
        }
        if !topo.health(target).is_up() {
            break;
        }
    }
    tracing::info!(server = %info.name, copied, "resync finished");
}

/// Keys per batch between metadump reads.
const RESYNC_BATCH: usize = 64;

fn resync_from(
    topo: &Topology,
    src: ServerId,
    target: ServerId,
    role: Role,
    stats: &CoreStats,
) -> Result<u64, &'static str> {
    let mut runner = Blocking {
        topo,
        conns: HashMap::new(),
        items: Vec::new(),
    };
    // The copy machine names keys in text commands: binary keys are left
    // out of a resync (they are read through instead).
    let owns = |key: &[u8], binary: bool| {
        let r = topo.replicas(key, false);
        !binary
            && match role {
                Role::Primary => r.primary == target,
                Role::Backup => r.backup == Some(target),
            }
    };
    let mut copied = 0u64;
    for_dumped_keys(topo, src, RESYNC_BATCH, owns, |batch| {
        for (k, _) in batch.drain(..) {
            if copy_one(&mut runner, src, target, k, stats) {
                copied += 1;
            }
        }
        if !topo.health(target).is_up() || !topo.health(src).is_up() {
            return Err("a server went down during the resync");
        }
        Ok(())
    })?;
    Ok(copied)
}

/// Copy one key from `src` to `target`; true when the target kept it.
fn copy_one(
    runner: &mut Blocking<'_>,
    src: ServerId,
    target: ServerId,
    key: Bytes,
    stats: &CoreStats,
) -> bool {
    let mut line = BytesMut::with_capacity(key.len() + 16);
    compose::compose_meta_get(&mut line, &key, b"v f t c");
    let Ok(r) = runner.call(src, &[line.freeze(), Bytes::new()], Expect::Meta) else {
        return false;
    };
    let Some(item) = MetaItem::parse(&r) else {
        return false;
    };
    let view = ControlView(runner.topo);
    let mut fx = Vec::new();
    let mut m = Machine::copy_item(src, target, key, item, &view, &mut fx);
    runner.run(&mut m, fx, stats);
    let ok = m.copy_result() == Some(true);
    if ok {
        stats.incr(Counter::ResyncCopies);
    }
    ok
}

/// Largest metadump one server may send through the proxy; a bigger one is
/// left out (the proxy would hold it all in memory).
const MAX_DUMP: usize = 64 * 1024 * 1024;

/// Run `lru_crawler metadump ...` (`line`) on every server in service, each
/// on a connection of its own (memcached refuses anything pipelined behind
/// a metadump), on a thread off the cores; the merged listing goes back to
/// the core through `tx`, with `to` (where the core delivers it: the control
/// plane knows nothing of the engine).
pub(super) fn dump_for<To: Send + 'static>(
    topo: Arc<Topology>,
    line: Bytes,
    tx: std::sync::mpsc::Sender<(To, Answer)>,
    to: To,
) {
    let spawned = std::thread::Builder::new()
        .name("memring-dump".into())
        .spawn(move || {
            let replies: Vec<Bytes> = topo
                .servers
                .iter()
                .enumerate()
                .filter(|(_, s)| s.health.is_up())
                .filter_map(|(i, _)| dump_from(&topo.dial(i)?, &line, &topo.settings))
                .collect();
            let a = if replies.is_empty() {
                Answer::One(Bytes::from_static(compose::NO_SERVER))
            } else {
                Answer::Many(crate::proxy::merge_listings(&replies))
            };
            let _ = tx.send((to, a));
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "cannot start a metadump thread");
    }
}

/// One server's whole metadump answer, or None if it cannot be reached,
/// stalls or sends too much.
fn dump_from(dial: &Dial, line: &[u8], settings: &Settings) -> Option<Bytes> {
    let mut s = dial
        .open(settings.connect_timeout, settings.request_timeout * 10)
        .ok()?;
    s.write_all(line).ok()?;
    let mut buf = BytesMut::with_capacity(64 * 1024);
    let mut scanned = 0;
    let mut chunk = vec![0u8; 64 * 1024];
    // Bounded by MAX_DUMP and the read timeout.
    while !crate::protocol::metadump::dump_complete(&buf, &mut scanned) {
        if buf.len() > MAX_DUMP {
            return None;
        }
        match s.read(&mut chunk) {
            Ok(n) if n > 0 => buf.extend_from_slice(&chunk[..n]),
            _ => return None,
        }
    }
    Some(buf.freeze())
}
