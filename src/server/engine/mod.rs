//! The per-core engine: one event loop per core on a completion-shaped
//! [`Driver`] (io_uring, or epoll behind the same interface).
//!
//! Everything a core serves lives in three slabs it owns: client
//! connections, upstream connections and requests. A request is a pure
//! state machine ([`Machine`]) that belongs to the core, not to its client:
//! it advances when its upstream replies (or failures) arrive, whatever the
//! client does, and its effects (send this to server N, answer the client,
//! mark server M as having missed key K) are carried out here. This module
//! decides nothing about a request; it moves bytes, keeps time and budgets.
//!
//! One loop turn: wait for completions (submitting everything the previous
//! turn queued), handle them, deliver the upstream outcomes to their
//! machines, check deadlines, then queue one send per connection that has
//! output (everything the turn produced for it, at most IOV_MAX buffers).
//! Before that last step, a turn that has requests for the servers takes a
//! second, non-blocking look for completions that arrived while it ran, so
//! that the requests they bring leave in the same upstream sends. That costs
//! one non-blocking `io_uring_enter` (or `epoll_wait`) per such turn and cut
//! the upstream sends per request by 15-25 % in the load benchmark (a:
//! 0.418 -> 0.354 TCP segments per request, b: 0.086 -> 0.063, c: 0.689 ->
//! 0.545), and with them memring's CPU per request (a: 0.66 -> 0.61x
//! nutcracker, b: 0.74 -> 0.69x, c: 0.83 -> 0.80x, same runs; the A/B
//! command is in docs/benchmarks.md, 2026-11-30 21:05 UTC). Nutcracker
//! gets the same effect by writing to a server one event-loop pass after it
//! read the requests. On io_uring the look is skipped when the ring says no
//! completion is pending (`IORING_SQ_TASKRUN`, [`Driver::maybe_ready`]):
//! with spread arrivals most looks found nothing, and skipping them cut
//! `io_uring_enter` calls from 2.56 to 1.71 per request in (a) (the
//! command is in docs/benchmarks.md, 2026-12-07 20:18 UTC).
//!
//! Timeouts measure lack of progress: an upstream connection is stuck when
//! the oldest request written on it has seen no reply bytes for the request
//! timeout. Its head request fails, reads behind it are sent again on a new
//! connection, and the server is charged one failure, not one per request.
//!
//! Budgets are in bytes: a client whose unsent replies plus the estimate of
//! its in-flight replies exceed `--client-buffer` stops being read (TCP
//! pushes back on it); other clients on the core are not held up.

mod client;
mod hedge;
mod stats;
pub(crate) use self::stats::route_text;
mod upstream;

use std::collections::{HashMap, VecDeque};
use std::net::TcpListener;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixListener;
use std::sync::atomic::Ordering;
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use slab::Slab;

use crate::metrics::CoreMetrics;
use crate::protocol::Expect;
use crate::proxy::machine::{Answer, CallError, CallId, Effect, Machine, Replicas, Reply, View};
use crate::proxy::pipeline::{Call, Outcome};
use crate::route::Owners;
use crate::stats::{CoreStats, Counter};
use crate::upstream::{Observed, Role, ServerId};

use self::client::Client;
use self::upstream::{UpConn, Zombie};

use super::driver::{Completion, Driver, DriverConfig};
use super::exclusive::Held;
use super::topology::{Shared, Topology};

/// Longest wait of a turn with nothing due: reloads and shutdown are noticed
/// within this.
const IDLE_TICK: Duration = Duration::from_millis(50);

/// Hot keys each core publishes (`stats hotkeys` lists the top 20 of all).
const HOT_PUBLISHED: usize = 32;

/// Longest wait of a turn while a request waits for a key section held on
/// another core (held for a round trip or two to the servers).
const PARK_POLL: Duration = Duration::from_micros(100);

/// Submission entries per ring.
const RING_ENTRIES: u32 = 1024;
/// Provided receive buffers per core, and their size. 256 x 16 KiB = 4 MiB
/// per core: a turn's worth of reads for hundreds of connections, while a
/// 500 KB value streams through them in 32 reads, each copied out at once.
const RECV_BUFFERS: u16 = 256;
const RECV_BUFFER_SIZE: usize = 16 * 1024;

/// What an operation's token refers to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    Listener = 0,
    ClientRecv = 1,
    ClientSend = 2,
    UpRecv = 3,
    UpSend = 4,
    UpConnect = 5,
}

/// Token layout: kind in the top 4 bits, a 28-bit generation, a 32-bit
/// slab index. The generation tells a completion of a previous connection
/// in the same slot from one of the current connection.
fn token(kind: Op, idx: usize, gen: u32) -> u64 {
    ((kind as u64) << 60) | ((u64::from(gen) & 0x0FFF_FFFF) << 32) | (idx as u64 & 0xFFFF_FFFF)
}

fn untoken(t: u64) -> (Option<Op>, usize, u32) {
    let kind = match t >> 60 {
        0 => Some(Op::Listener),
        1 => Some(Op::ClientRecv),
        2 => Some(Op::ClientSend),
        3 => Some(Op::UpRecv),
        4 => Some(Op::UpSend),
        5 => Some(Op::UpConnect),
        _ => None,
    };
    (
        kind,
        (t & 0xFFFF_FFFF) as usize,
        ((t >> 32) & 0x0FFF_FFFF) as u32,
    )
}

/// Wrap a generation counter into the token's 28 bits.
fn next_gen(g: &mut u32) -> u32 {
    *g = (*g + 1) & 0x0FFF_FFFF;
    *g
}

/// Where a request's answer goes.
#[derive(Clone, Copy, Debug)]
pub(super) struct ClientRef {
    idx: usize,
    gen: u32,
    seq: u64,
    /// A batch of a long get line that is not its last: its END is left out.
    strip_end: bool,
}

/// An answer produced off the core (a metadump on the control plane), with
/// where it goes.
pub(super) type Handoff = (ClientRef, Answer);

/// A request in flight on this core.
struct ReqSlot {
    machine: Machine,
    /// None for detached work (repairs) and once the answer was handed over.
    client: Option<ClientRef>,
    /// The topology generation whose server ids the machine uses.
    generation: u64,
    /// Calls sent and not yet answered: the slot is freed only at zero, so
    /// an outcome never reaches a slot that was reused.
    outstanding: u32,
    /// A binary client's request: how its answer becomes binary.
    binary: Option<crate::proxy::binary::Plan>,
    /// This slot's life (see `Core::next_seq`).
    seq: u64,
    /// The key section the machine queued for (held once granted, released
    /// when the slot is freed).
    section: Option<Held>,
}

/// Read-only context of a turn: configuration, the topology snapshot and
/// the clock, read once per turn.
pub(super) struct Ctx {
    shared: Arc<Shared>,
    id: usize,
    topo: Arc<Topology>,
    /// The topology before the last reload, for requests that started under it.
    prev: Option<Arc<Topology>>,
    now: Instant,
    now_unix: i64,
    max_item: usize,
    client_budget: usize,
    rng: std::cell::Cell<crate::upstream::Jitter>,
}

impl Ctx {
    fn stats(&self) -> &CoreStats {
        &self.shared.stats[self.id]
    }

    /// This core's metrics block (only this core writes it).
    fn metrics(&self) -> &CoreMetrics {
        &self.shared.metrics[self.id]
    }

    /// A pseudo-random number in [0, 1) for backoff jitter.
    fn jitter(&self) -> f64 {
        let mut j = self.rng.get();
        let x = j.sample();
        self.rng.set(j);
        x
    }

    fn topology(&self, generation: u64) -> Option<&Topology> {
        if generation == self.topo.generation {
            return Some(&self.topo);
        }
        self.prev.as_deref().filter(|p| p.generation == generation)
    }
}

/// The machines' view of the world: server health from the current
/// topology, and the wall clock of this turn.
struct HealthView<'a> {
    topo: &'a Topology,
    now_unix: i64,
    /// A read may be hedged: its client has no write in flight before it
    /// (a hedge on the backup could overtake that write's copy there and
    /// show the client a value older than its own acknowledged write).
    hedge_ok: bool,
    /// The topology generation the request decided under: a migration
    /// window's owners are numbered by the live one, so only a request of
    /// that generation is given them.
    generation: u64,
}

impl<'a> HealthView<'a> {
    fn new(cx: &'a Ctx, generation: u64) -> HealthView<'a> {
        HealthView {
            topo: &cx.topo,
            now_unix: cx.now_unix,
            hedge_ok: false,
            generation,
        }
    }
}

impl View for HealthView<'_> {
    fn observe(&self, s: ServerId) -> Observed {
        match self.topo.servers.get(s.index()) {
            Some(info) => info.health.observe(),
            None => Observed::gone(),
        }
    }

    fn now_unix(&self) -> i64 {
        self.now_unix
    }

    fn hedging(&self) -> bool {
        self.hedge_ok && self.topo.settings.hedge && self.generation == self.topo.generation
    }

    fn earlier_owners(&self, key: &[u8], base64: bool, rep: Replicas) -> Owners {
        if self.generation != self.topo.generation {
            return Owners::default();
        }
        self.topo.earlier_owners(key, base64, rep)
    }
}

/// Everything mutable on a core.
pub(super) struct Core {
    clients: Slab<Client>,
    ups: Slab<UpConn>,
    reqs: Slab<ReqSlot>,
    /// Upstream connections of each server of the current topology.
    pools: Vec<Vec<usize>>,
    /// The same pools by (name, role, address), so a reload keeps live
    /// connections (a migration window may hold a leaving server of the
    /// same name as a live one, at its old address).
    by_name: HashMap<(String, Role, std::net::SocketAddr), Vec<usize>>,
    /// Upstream outcomes not yet handed to their machines.
    outcomes: VecDeque<Outcome>,
    /// Requests waiting for a key section another request holds: (slot,
    /// call, ticket). Polled each turn and whenever this core leaves one.
    parked: Vec<(usize, CallId, Held)>,
    /// Connections with output or state to act on at the end of the turn.
    dirty_clients: Vec<usize>,
    dirty_ups: Vec<usize>,
    /// Reused scratch space.
    fx: Vec<Effect>,
    keys: Vec<std::ops::Range<usize>>,
    replicas: Vec<crate::proxy::machine::Replicas>,
    servers: Vec<ServerId>,
    items: Vec<crate::protocol::ValueItem>,
    /// Sockets of failed upstream connections with operations still in the kernel.
    zombies: Vec<Zombie>,
    client_gen: u32,
    up_gen: u32,
    /// This core's listeners.
    listeners: Vec<Listener>,
    /// TLS clients still in their handshake: (slot, generation); their
    /// machines hold the deadline.
    handshakes: Vec<(usize, u32)>,
    /// Plaintext a TLS session just decrypted (reused).
    plain: Vec<u8>,
    listen_retry: Option<Instant>,
    /// When a failed accept was last logged (at most one line a second).
    accept_warned: Option<Instant>,
    /// Scratch list of upstream connection slots for the per-turn deadline check.
    up_ids: Vec<usize>,
    /// Answers made off the core come back here (checked once per turn).
    control_tx: mpsc::Sender<Handoff>,
    control_rx: mpsc::Receiver<Handoff>,
    /// Hedged reads: the servers' delays, the budget, and the timers armed
    /// (see `hedge.rs`).
    hedges: hedge::Hedges,
    /// Numbers request slots' lives, so that a timer never reaches a slot
    /// that was reused.
    next_seq: u64,
    /// The keys this core reads, sampled (`--hot-keys`).
    hot: crate::upstream::hot::Sketch,
}

/// One listener of this core.
struct Listener {
    fd: RawFd,
    /// Its accept is armed.
    armed: bool,
    /// Its clients speak TLS.
    tls: bool,
    /// A pool's own listener: its name, and its index in the current
    /// topology's router (found again at each reload; None once a reload
    /// removed the pool, and its clients' keys are placed as on the main
    /// listener).
    pool_name: Option<String>,
    pool: Option<usize>,
}

/// A core's listeners, kept open for the core's lifetime.
pub(super) struct Listeners {
    pub tcp: Option<TcpListener>,
    /// `--tls-listen`: its clients speak TLS.
    pub tls: Option<TcpListener>,
    pub unix: Option<UnixListener>,
    /// Pools' own listeners: (pool name, this core's listener).
    pub pools: Vec<(String, TcpListener)>,
}

/// Run one core until the process exits. Reports readiness (or the error
/// that kept the core from starting) on `ready`.
pub(super) fn run_core<D: Driver>(
    shared: Arc<Shared>,
    id: usize,
    listeners: Listeners,
    ready: mpsc::Sender<Result<String, std::io::Error>>,
) {
    let cfg = DriverConfig {
        entries: RING_ENTRIES,
        buffers: RECV_BUFFERS,
        buffer_size: RECV_BUFFER_SIZE,
    };
    let mut d = match D::new(&cfg) {
        Ok(d) => d,
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    let topo = shared.current();
    let seed = 0x9E37_79B9_7F4A_7C15u64 ^ ((id as u64 + 1) << 32) ^ u64::from(std::process::id());
    let mut cx = Ctx {
        max_item: shared.cfg.max_item_size,
        client_budget: shared.cfg.client_buffer,
        shared,
        id,
        topo: topo.clone(),
        prev: None,
        now: Instant::now(),
        now_unix: unix_now(),
        rng: std::cell::Cell::new(crate::upstream::Jitter::new(seed)),
    };
    let (control_tx, control_rx) = mpsc::channel();
    let mut st = Core {
        clients: Slab::with_capacity(256),
        ups: Slab::with_capacity(16),
        reqs: Slab::with_capacity(1024),
        pools: Vec::new(),
        by_name: HashMap::new(),
        outcomes: VecDeque::with_capacity(256),
        parked: Vec::new(),
        dirty_clients: Vec::with_capacity(64),
        dirty_ups: Vec::with_capacity(16),
        fx: Vec::with_capacity(16),
        keys: Vec::with_capacity(16),
        replicas: Vec::with_capacity(16),
        servers: Vec::with_capacity(16),
        items: Vec::with_capacity(16),
        zombies: Vec::new(),
        client_gen: 0,
        up_gen: 0,
        listeners: Vec::new(),
        handshakes: Vec::new(),
        plain: Vec::new(),
        listen_retry: None,
        accept_warned: None,
        up_ids: Vec::with_capacity(16),
        control_tx,
        control_rx,
        hedges: hedge::Hedges::new(topo.settings.hedge_budget),
        next_seq: 0,
        hot: crate::upstream::hot::Sketch::new(),
    };
    st.install(&mut d, &mut cx, topo);
    let fds: Vec<(RawFd, bool, Option<String>)> = listeners
        .tcp
        .iter()
        .map(|l| (l.as_raw_fd(), false, None))
        .chain(listeners.tls.iter().map(|l| (l.as_raw_fd(), true, None)))
        .chain(listeners.unix.iter().map(|l| (l.as_raw_fd(), false, None)))
        .chain(
            listeners
                .pools
                .iter()
                .map(|(name, l)| (l.as_raw_fd(), false, Some(name.clone()))),
        )
        .collect();
    for (fd, tls, pool_name) in fds {
        let i = st.listeners.len();
        d.accept(token(Op::Listener, i, 0), fd);
        let pool = pool_name
            .as_deref()
            .and_then(|n| cx.topo.router.pool_index(n));
        st.listeners.push(Listener {
            fd,
            armed: true,
            tls,
            pool_name,
            pool,
        });
    }
    let _ = ready.send(Ok(d.describe()));
    drop(ready);
    let _keep_open = listeners;
    let mut cqes: Vec<Completion> = Vec::with_capacity(1024);
    let mut timeout = IDLE_TICK;
    // The wall clock only counts seconds here: read it every 100 ms, not
    // every turn.
    let mut unix_read = cx.now;
    loop {
        cqes.clear();
        if let Err(e) = d.wait(Some(timeout), &mut cqes) {
            tracing::warn!(core = id, error = %e, "event loop wait failed");
            std::thread::sleep(Duration::from_millis(10));
        }
        cx.now = Instant::now();
        if cx.now.saturating_duration_since(unix_read) >= UNIX_CLOCK_EVERY {
            cx.now_unix = unix_now();
            unix_read = cx.now;
        }
        for c in &cqes {
            st.complete(&mut d, &cx, *c);
        }
        st.deliver(&mut d, &cx);
        timeout = st.tick(&mut d, &mut cx);
        st.deliver(&mut d, &cx);
        if !st.dirty_ups.is_empty() && d.maybe_ready() {
            // A second look before the upstream sends leave: what arrived
            // while this turn ran joins them (see the module's header).
            cqes.clear();
            if d.wait(Some(Duration::ZERO), &mut cqes).is_ok() {
                for c in &cqes {
                    st.complete(&mut d, &cx, *c);
                }
                st.deliver(&mut d, &cx);
            }
        }
        st.flush(&mut d, &cx);
        // Hedge timers (of requests still waiting after this turn).
        if let Some(at) = st.next_hedge_due() {
            let after = at.saturating_duration_since(cx.now);
            if after.is_zero() || !d.alarm(cx.now, after) {
                timeout = timeout.min(after);
            }
        }
    }
}

/// How often a core reads the wall clock (seconds are all it needs of it).
const UNIX_CLOCK_EVERY: Duration = Duration::from_millis(100);

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

impl Core {
    /// Dispatch one completion by what its token names.
    fn complete<D: Driver>(&mut self, d: &mut D, cx: &Ctx, c: Completion) {
        let (kind, idx, gen) = untoken(c.token);
        match kind {
            Some(Op::Listener) => self.accepted(d, cx, idx, c),
            Some(Op::ClientRecv) => self.client_recv(d, cx, idx, gen, c),
            Some(Op::ClientSend) => self.client_sent(d, cx, idx, gen, c),
            Some(Op::UpRecv) => self.up_recv(d, cx, idx, gen, c),
            Some(Op::UpSend) => self.up_sent(d, cx, idx, gen, c),
            Some(Op::UpConnect) => self.up_connected(d, cx, idx, gen, c),
            None => {
                if let Some(b) = c.buf {
                    d.recycle(b);
                }
            }
        }
    }

    /// Hand every queued upstream outcome to its machine, and carry out what
    /// the machines ask for (which may queue more outcomes).
    fn deliver<D: Driver>(&mut self, d: &mut D, cx: &Ctx) {
        // Bounded: each outcome answers one call, and a machine makes a
        // bounded number of calls.
        while let Some((r, call, outcome)) = self.outcomes.pop_front() {
            let Some(slot) = self.reqs.get_mut(r) else {
                continue;
            };
            slot.outstanding = slot.outstanding.saturating_sub(1);
            if let Err(e) = &outcome {
                let name = cx.topo.servers.get(e.server.index()).map(|s| &*s.name);
                tracing::debug!(
                    server = name.unwrap_or("(gone)"),
                    op = ?e.op,
                    kind = e.kind.as_str(),
                    retryable = e.retryable,
                    "upstream call failed"
                );
            }
            let mut fx = std::mem::take(&mut self.fx);
            let view = HealthView::new(cx, slot.generation);
            slot.machine.on_outcome(call, outcome, &view, &mut fx);
            self.apply(d, cx, r, &mut fx);
            self.fx = fx;
            self.maybe_free(cx, r);
        }
    }

    /// Free a request whose machine ended and has no call outstanding, and
    /// leave its key section.
    fn maybe_free(&mut self, cx: &Ctx, r: usize) {
        let done = self
            .reqs
            .get(r)
            .is_some_and(|s| s.outstanding == 0 && s.machine.is_done());
        if done {
            let slot = self.reqs.remove(r);
            cx.stats().active_requests.fetch_sub(1, Ordering::Relaxed);
            if let Some(held) = slot.section {
                // Granted: a waiting request holds an outstanding call.
                cx.shared.sections.release(held);
                self.poll_parked(cx);
            }
        }
    }

    /// Queue request `r` for `key`'s section: true when it is free (the
    /// caller grants `call` at once); otherwise the request is parked, and
    /// its client starts nothing more until the grant, so that its later
    /// requests cannot overtake the write.
    fn enter_section(&mut self, cx: &Ctx, r: usize, call: CallId, key: &[u8]) -> bool {
        let Some(slot) = self.reqs.get_mut(r) else {
            return false;
        };
        let held = *slot
            .section
            .get_or_insert_with(|| cx.shared.sections.take(key));
        if cx.shared.sections.granted(held) {
            return true;
        }
        slot.outstanding += 1;
        let client = slot.client;
        self.parked.push((r, call, held));
        cx.stats().incr(Counter::SectionWaits);
        if let Some(cref) = client {
            if let Some(c) = self.live_client(cref) {
                c.conn.hold(true);
            }
        }
        false
    }

    /// Grant the parked requests whose turn has come, and let their clients
    /// go on.
    fn poll_parked(&mut self, cx: &Ctx) {
        let mut i = 0;
        while i < self.parked.len() {
            let (r, call, held) = self.parked[i];
            if !cx.shared.sections.granted(held) {
                i += 1;
                continue;
            }
            self.parked.swap_remove(i);
            self.outcomes.push_back((r, call, Ok(Reply::grant())));
            let client = self.reqs.get(r).and_then(|s| s.client);
            if let Some(cref) = client {
                if let Some(c) = self.live_client(cref) {
                    c.conn.hold(false);
                    client::mark(&mut self.clients, &mut self.dirty_clients, cref.idx);
                }
            }
        }
    }

    /// Start a machine for a request (or a detached job) and carry out its
    /// first effects.
    fn launch<D: Driver>(
        &mut self,
        d: &mut D,
        cx: &Ctx,
        machine: Machine,
        client: Option<ClientRef>,
        binary: Option<crate::proxy::binary::Plan>,
        fx: &mut Vec<Effect>,
    ) {
        self.next_seq += 1;
        let r = self.reqs.insert(ReqSlot {
            machine,
            client,
            generation: cx.topo.generation,
            outstanding: 0,
            binary,
            seq: self.next_seq,
            section: None,
        });
        cx.stats().active_requests.fetch_add(1, Ordering::Relaxed);
        self.apply(d, cx, r, fx);
        self.maybe_free(cx, r);
    }

    /// Carry out a machine's effects.
    fn apply<D: Driver>(&mut self, d: &mut D, cx: &Ctx, r: usize, fx: &mut Vec<Effect>) {
        let mut spawned: Vec<Box<Machine>> = Vec::new();
        let mut granted = None;
        loop {
            for e in fx.drain(..) {
                match e {
                    Effect::Send {
                        call,
                        server,
                        parts,
                        expect,
                    } => self.send_call(d, cx, r, call, server, parts, expect),
                    Effect::Answer(a) => self.answer(d, cx, r, a),
                    Effect::MissedWrite { server, seen, key } => {
                        cx.topo.missed_write(server, seen, &key, cx.now);
                    }
                    Effect::Count(c, n) => cx.stats().add(c, n),
                    Effect::Failover { failed } => {
                        cx.stats().incr(Counter::Failovers);
                        if let Some(s) = cx.topo.servers.get(failed.index()) {
                            s.health.failovers.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    Effect::Spawn(m) => spawned.push(m),
                    Effect::ReadThrough(t) => cx.metrics().read_through(t),
                    Effect::Hedge(h) => self.hedge(d, cx, r, h),
                    Effect::HoldClient(hold) => {
                        let client = self.reqs.get(r).and_then(|s| s.client);
                        if let Some(cref) = client {
                            if let Some(c) = self.live_client(cref) {
                                c.conn.hold(hold);
                                if !hold {
                                    client::mark(
                                        &mut self.clients,
                                        &mut self.dirty_clients,
                                        cref.idx,
                                    );
                                }
                            }
                        }
                    }
                    Effect::Exclusive { call, key } => {
                        if self.enter_section(cx, r, call, &key) {
                            granted = Some(call);
                        }
                    }
                }
            }
            // A free section is entered at once, so the write's first upstream
            // call keeps its place among its client's pipelined requests.
            let Some(call) = granted.take() else { break };
            let Some(slot) = self.reqs.get_mut(r) else {
                break;
            };
            let view = HealthView::new(cx, slot.generation);
            slot.machine.on_outcome(call, Ok(Reply::grant()), &view, fx);
        }
        for m in spawned {
            let mut sub = Vec::new();
            let view = HealthView::new(cx, cx.topo.generation);
            let mut m = *m;
            m.begin(&view, &mut sub);
            self.launch(d, cx, m, None, None, &mut sub);
        }
    }

    /// Queue one call on a connection of `server`, or fail it at once when
    /// the server cannot take it.
    #[allow(clippy::too_many_arguments)]
    fn send_call<D: Driver>(
        &mut self,
        d: &mut D,
        cx: &Ctx,
        r: usize,
        call: CallId,
        server: ServerId,
        parts: [Bytes; 2],
        expect: Expect,
    ) {
        let Some(slot) = self.reqs.get_mut(r) else {
            return;
        };
        slot.outstanding += 1;
        let generation = slot.generation;
        let Some(pool) = self.pool_for(cx, generation, server) else {
            let e = CallError::no_call(server, expect);
            self.outcomes.push_back((r, call, Err(e)));
            return;
        };
        let Some(ci) = pool
            .iter()
            .copied()
            .min_by_key(|&i| self.ups.get(i).map_or(usize::MAX, UpConn::load))
        else {
            let e = CallError::no_call(server, expect);
            self.outcomes.push_back((r, call, Err(e)));
            return;
        };
        let call = Call::new(r, call, expect, parts, cx.now);
        self.queue_call(d, cx, (server, ci), call);
    }

    /// The connections of `server` as the request's topology numbers it.
    /// A request that started before a reload resolves its ids by name, never
    /// by a position that now means another server.
    fn pool_for(&self, cx: &Ctx, generation: u64, server: ServerId) -> Option<&[usize]> {
        if generation == cx.topo.generation {
            return self.pools.get(server.index()).map(Vec::as_slice);
        }
        let old = cx.topology(generation)?;
        let s = old.servers.get(server.index())?;
        // The same server at the same address, else (its address changed
        // since) at its new one.
        self.by_name
            .get(&(s.name.clone(), s.role, s.addr))
            .or_else(|| {
                self.by_name
                    .iter()
                    .find(|((name, role, _), _)| *name == s.name && *role == s.role)
                    .map(|(_, conns)| conns)
            })
            .map(Vec::as_slice)
    }

    /// Hand a machine's answer to its client, in the client's order.
    fn answer<D: Driver>(&mut self, d: &mut D, cx: &Ctx, r: usize, a: Answer) {
        let Some(slot) = self.reqs.get_mut(r) else {
            return;
        };
        let plan = slot.binary.take();
        if let Some(cref) = slot.client.take() {
            self.finish(d, cx, cref, plan, a);
        }
    }

    /// The client `cref` names, if that connection is still there (not a
    /// later one in the same slot).
    fn live_client(&mut self, cref: ClientRef) -> Option<&mut Client> {
        self.clients.get_mut(cref.idx).filter(|c| c.gen == cref.gen)
    }

    /// Put an answer in its client's slot (if the client is still there).
    fn deliver_answer(&mut self, cref: ClientRef, a: Answer) {
        let Some(c) = self.live_client(cref) else {
            return;
        };
        let a = if cref.strip_end { a.without_end() } else { a };
        if c.conn.fill(cref.seq, a) {
            client::mark(&mut self.clients, &mut self.dirty_clients, cref.idx);
        }
    }

    /// Point the pools at a topology, keeping connections to servers that
    /// stay (same name, role, address and pool size) and closing the others.
    fn install<D: Driver>(&mut self, d: &mut D, cx: &mut Ctx, topo: Arc<Topology>) {
        let mut kept: HashMap<(String, Role, std::net::SocketAddr), Vec<usize>> = HashMap::new();
        let mut pools = Vec::with_capacity(topo.servers.len());
        let n = topo.settings.conns_per_server.max(1);
        for (i, s) in topo.servers.iter().enumerate() {
            let key = (s.name.clone(), s.role, s.addr);
            let reuse = self.by_name.remove(&key).filter(|conns| conns.len() == n);
            let conns = match reuse {
                Some(conns) => {
                    for &c in &conns {
                        if let Some(u) = self.ups.get_mut(c) {
                            u.renumber(ServerId(i as u32));
                        }
                    }
                    conns
                }
                None => (0..n)
                    .map(|_| {
                        self.ups
                            .insert(UpConn::new(ServerId(i as u32), s.addr, &s.name))
                    })
                    .collect(),
            };
            kept.insert(key, conns.clone());
            pools.push(conns);
        }
        for l in &mut self.listeners {
            l.pool = l
                .pool_name
                .as_deref()
                .and_then(|n| topo.router.pool_index(n));
        }
        let gone: Vec<usize> = self.by_name.drain().flat_map(|(_, v)| v).collect();
        for c in gone {
            self.retire_up(d, cx, c);
        }
        self.by_name = kept;
        self.pools = pools;
        self.hedges
            .reconfigure(topo.servers.len(), topo.settings.hedge_budget);
        let old = std::mem::replace(&mut cx.topo, topo);
        if old.generation != cx.topo.generation {
            cx.prev = Some(old);
        }
    }

    /// Deadlines and housekeeping once per turn; returns how long the next
    /// wait may block.
    fn tick<D: Driver>(&mut self, d: &mut D, cx: &mut Ctx) -> Duration {
        let generation = cx.shared.generation.load(Ordering::Acquire);
        if generation != cx.topo.generation {
            let fresh = cx.shared.current();
            self.install(d, cx, fresh);
        }
        while let Ok((cref, a)) = self.control_rx.try_recv() {
            self.deliver_answer(cref, a);
        }
        let stopping = cx.shared.stopping.load(Ordering::Relaxed);
        let mut next = cx.now + IDLE_TICK;
        if let Some(at) = self.listen_retry {
            if stopping {
                self.listen_retry = None;
            } else if cx.now >= at {
                self.listen_retry = None;
                for (i, l) in self.listeners.iter_mut().enumerate() {
                    if !l.armed {
                        d.accept(token(Op::Listener, i, 0), l.fd);
                        l.armed = true;
                    }
                }
            } else {
                next = next.min(at);
            }
        }
        let mut ids = std::mem::take(&mut self.up_ids);
        ids.clear();
        ids.extend(self.ups.iter().map(|(i, _)| i));
        for &ci in &ids {
            if let Some(due) = self.check_up(d, cx, ci) {
                next = next.min(due);
            }
        }
        self.up_ids = ids;
        if !self.handshakes.is_empty() {
            if let Some(at) = self.check_handshakes(cx) {
                next = next.min(at);
            }
        }
        if !self.parked.is_empty() {
            // Another core holds a section a request here waits for.
            self.poll_parked(cx);
            next = next.min(cx.now + PARK_POLL);
        }
        self.fire_hedge_timers(cx);
        let cfg = &cx.topo.config;
        let threshold =
            (cfg.hot_keys && cfg.hot_key_threshold > 0).then_some(cfg.hot_key_threshold as f64);
        if self.hot.step(cx.now, threshold) {
            // Published once a step for `stats hotkeys` and the scrape.
            // Into the list it published last time: no allocation once
            // it has grown.
            if let Some(slot) = cx.shared.hot.get(cx.id) {
                let mut list = slot.lock().unwrap_or_else(|e| e.into_inner());
                if cx.topo.config.hot_keys {
                    self.hot.top_into(HOT_PUBLISHED, &mut list);
                } else {
                    list.clear();
                }
            }
        }
        next.saturating_duration_since(cx.now)
    }

    /// Issue the sends (and re-arm the receives) that this turn made due.
    fn flush<D: Driver>(&mut self, d: &mut D, cx: &Ctx) {
        while let Some(ci) = self.dirty_ups.pop() {
            self.flush_up(d, cx, ci);
        }
        while let Some(idx) = self.dirty_clients.pop() {
            self.flush_client(d, cx, idx);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip() {
        for kind in [
            Op::Listener,
            Op::ClientRecv,
            Op::ClientSend,
            Op::UpRecv,
            Op::UpSend,
            Op::UpConnect,
        ] {
            for (idx, gen) in [(0, 0), (1, 7), (0xFFFF_FFFF, 0x0FFF_FFFF)] {
                assert_eq!(untoken(token(kind, idx, gen)), (Some(kind), idx, gen));
            }
        }
        let mut g = 0x0FFF_FFFE;
        assert_eq!(next_gen(&mut g), 0x0FFF_FFFF);
        assert_eq!(next_gen(&mut g), 0);
    }
}
