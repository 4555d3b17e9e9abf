//! Per-core state: the topology snapshot, pipelined upstream connections and
//! the completion slots that hand replies to waiting requests.
//!
//! One [`Core`] lives on each runtime thread and is never shared across
//! threads. Across cores only [`Shared`] is shared: immutable data behind
//! `Arc`, relaxed atomics, and a lock taken only when a reload swaps the
//! topology.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::net::SocketAddr;
use std::ops::Range;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use slab::Slab;
use tokio::sync::Notify;

use crate::config::Config;
use crate::metrics::{CoreMetrics, ServerMetrics};
use crate::protocol::{frame_response, Expect, Framed, Status};
use crate::route::{Member, Ring};
use crate::stats::CoreStats;
use crate::upstream::{backoff, Health, HealthPolicy, Role, ServerId};

use super::io::{write_all, Backend, Stream};

/// Most iovecs one `writev` may carry (Linux IOV_MAX).
pub(crate) const IOV_MAX: usize = 1024;

/// Upstream read buffer step: one per server connection per core, so it can
/// be generous; large values then arrive in few reads and few copies.
const READ_CHUNK: usize = 64 * 1024;

/// One server as the current configuration knows it.
#[derive(Debug)]
pub(crate) struct ServerInfo {
    /// `host:port` as configured.
    pub name: String,
    /// Resolved address.
    pub addr: SocketAddr,
    /// Primary or backup.
    pub role: Role,
    /// Health, shared by every core and kept across reloads by name.
    pub health: Arc<Health>,
    /// Latency and error metrics, one block per core, kept like `health`.
    pub metrics: Arc<ServerMetrics>,
}

/// Timeouts and health tunables that a reload may change.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Settings {
    /// Connect timeout.
    pub connect_timeout: Duration,
    /// Request timeout.
    pub request_timeout: Duration,
    /// Health policy.
    pub policy: HealthPolicy,
    /// Pipelined connections per server per core.
    pub conns_per_server: usize,
    /// Copy a rejoined server's keys back from its partners.
    pub resync: bool,
}

/// An immutable routing snapshot, swapped whole on reload.
#[derive(Debug)]
pub(crate) struct Topology {
    /// Bumped by each reload.
    pub generation: u64,
    /// Primaries first, then backups; `ServerId` indexes this.
    pub servers: Vec<ServerInfo>,
    /// Number of primaries.
    pub n_primaries: usize,
    /// Ring over the primaries.
    pub primary_ring: Ring,
    /// Ring over the backups, if any.
    pub backup_ring: Option<Ring>,
    /// Tunables.
    pub settings: Settings,
    /// The configuration this was built from (for `stats settings`).
    pub config: Arc<Config>,
}

impl Topology {
    /// Build from a configuration, resolving names and keeping the health of
    /// servers that `previous` already knew.
    pub fn build(
        cfg: &Config,
        previous: Option<&Topology>,
        base: Instant,
    ) -> Result<Topology, String> {
        let mut servers = Vec::new();
        let lists = [(Role::Primary, &cfg.servers), (Role::Backup, &cfg.backups)];
        for (role, list) in lists {
            for s in list.iter() {
                let name = s.name();
                let addr = resolve(&s.host, s.port).map_err(|e| format!("server {name}: {e}"))?;
                let known = previous
                    .and_then(|p| p.servers.iter().find(|o| o.name == name && o.role == role));
                let health = known
                    .map(|o| o.health.clone())
                    .unwrap_or_else(|| Arc::new(Health::new(base)));
                let metrics = known
                    .map(|o| o.metrics.clone())
                    .unwrap_or_else(|| Arc::new(ServerMetrics::new(cfg.threads.max(1))));
                servers.push(ServerInfo {
                    name,
                    addr,
                    role,
                    health,
                    metrics,
                });
            }
        }
        let members = |list: &[crate::config::ServerAddr]| -> Vec<Member> {
            // Name points like libmemcached and nutcracker (`host` alone on
            // port 11211), so a fleet moving behind memring keeps its keys.
            list.iter()
                .map(|s| Member::for_nutcracker(&s.name(), s.weight))
                .collect()
        };
        let backup_ring = if cfg.backups.is_empty() {
            None
        } else {
            Some(Ring::new(cfg.distribution, &members(&cfg.backups)))
        };
        Ok(Topology {
            generation: previous.map_or(0, |p| p.generation + 1),
            n_primaries: cfg.servers.len(),
            primary_ring: Ring::new(cfg.distribution, &members(&cfg.servers)),
            backup_ring,
            servers,
            settings: Settings {
                connect_timeout: cfg.connect_timeout,
                request_timeout: cfg.request_timeout,
                policy: HealthPolicy {
                    failure_limit: cfg.failure_limit,
                    retry_interval: cfg.retry_interval,
                    max_retry_interval: cfg.retry_interval.max(Duration::from_secs(5)),
                },
                conns_per_server: cfg.upstream_conns.clamp(1, cfg.max_server_conns.max(1)),
                resync: cfg.resync,
            },
            config: Arc::new(cfg.clone()),
        })
    }

    /// The primary and (if backups exist) the backup of `key`.
    pub fn replicas(&self, key: &[u8]) -> (ServerId, Option<ServerId>) {
        let p = ServerId(self.primary_ring.server_for(key) as u32);
        let b = self
            .backup_ring
            .as_ref()
            .map(|r| ServerId((self.n_primaries + r.server_for(key)) as u32));
        (p, b)
    }

    /// Health of a server.
    pub fn health(&self, id: ServerId) -> &Health {
        &self.servers[id.index()].health
    }
}

fn resolve(host: &str, port: u16) -> std::io::Result<SocketAddr> {
    use std::net::ToSocketAddrs;
    (host, port)
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, "no address"))
}

/// Process-wide state shared by all cores.
#[derive(Debug)]
pub(crate) struct Shared {
    /// The startup configuration (listeners, limits).
    pub cfg: Config,
    /// Current topology; written only by reload.
    pub topology: RwLock<Arc<Topology>>,
    /// Generation of `topology`, read on the hot path instead of the lock.
    pub generation: AtomicU64,
    /// One block of counters per core.
    pub stats: Vec<CoreStats>,
    /// One block of latency metrics per core.
    pub metrics: Vec<CoreMetrics>,
    /// Whether latency is recorded (`--metrics-listen` or `--latency-stats`).
    pub timing: bool,
    /// Process start.
    pub started: Instant,
    /// Set on SIGTERM/SIGINT: stop accepting.
    pub stopping: AtomicBool,
    /// Backend name for `stats`.
    pub backend: &'static str,
    /// The TCP address bound (for `stats settings`; port 0 resolved).
    pub tcp_addr: Option<SocketAddr>,
}

impl Shared {
    /// Install a new topology (SIGHUP reload).
    pub fn swap_topology(&self, t: Topology) {
        let generation = t.generation;
        if let Ok(mut g) = self.topology.write() {
            *g = Arc::new(t);
        }
        self.generation.store(generation, Ordering::Release);
    }

    /// The current topology.
    pub fn current(&self) -> Arc<Topology> {
        match self.topology.read() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }
}

/// A framed upstream reply.
#[derive(Clone, Debug)]
pub(crate) struct Reply {
    /// The whole reply.
    pub frame: Bytes,
    /// Its kind.
    pub status: Status,
    /// First line (without terminator), range into `frame`.
    pub line: Range<usize>,
    /// Meta `VA` data block, range into `frame`.
    pub data: Range<usize>,
}

/// Why an upstream call produced no reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum CallError {
    /// Could not connect (or still backing off after a failed connect).
    Connect,
    /// No reply within the request timeout.
    Timeout,
    /// The connection closed or failed before the reply.
    Closed,
    /// The server sent bytes that are not a reply.
    Protocol,
}

enum SlotState {
    Waiting(Option<Waker>),
    Done(Result<Reply, CallError>),
    Abandoned,
}

struct Pending {
    slot: usize,
    expect: Expect,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Idle,
    Connecting,
    Ready,
    Backoff(Instant),
}

struct ConnState<T> {
    phase: Phase,
    gen: u64,
    attempts: u32,
    stream: Option<Rc<T>>,
    outq: VecDeque<Bytes>,
    inflight: VecDeque<Pending>,
}

/// One pipelined connection to a server: requests from every client on this
/// core are queued on it, written in batches, and matched to replies FIFO.
pub(crate) struct UpConn<B: Backend> {
    addr: SocketAddr,
    name: Rc<str>,
    st: RefCell<ConnState<B::Tcp>>,
    wake: Notify,
}

/// A server's connections on one core.
pub(crate) struct Pool<B: Backend> {
    conns: Vec<Rc<UpConn<B>>>,
    next: Cell<usize>,
}

/// Pools keyed by server name and role, so a reload keeps live connections.
type PoolsByName<B> = HashMap<(String, Role), Rc<Pool<B>>>;

/// Per-core state.
pub(crate) struct Core<B: Backend> {
    /// Process-wide state.
    pub shared: Arc<Shared>,
    /// This core's index.
    pub id: usize,
    topo: RefCell<Arc<Topology>>,
    pools_by_name: RefCell<PoolsByName<B>>,
    pools: RefCell<Vec<Rc<Pool<B>>>>,
    slots: RefCell<Slab<SlotState>>,
    rng: Cell<u64>,
}

impl<B: Backend> Core<B> {
    /// A core over the current topology.
    pub fn new(shared: Arc<Shared>, id: usize) -> Rc<Core<B>> {
        let topo = shared.current();
        let seed =
            0x9E37_79B9_7F4A_7C15u64 ^ ((id as u64 + 1) << 32) ^ u64::from(std::process::id());
        let core = Rc::new(Core {
            shared,
            id,
            topo: RefCell::new(topo.clone()),
            pools_by_name: RefCell::new(HashMap::new()),
            pools: RefCell::new(Vec::new()),
            slots: RefCell::new(Slab::with_capacity(1024)),
            rng: Cell::new(seed),
        });
        core.install(&topo);
        core
    }

    /// This core's counters.
    pub fn stats(&self) -> &CoreStats {
        &self.shared.stats[self.id]
    }

    /// This core's latency metrics.
    pub fn metrics(&self) -> &CoreMetrics {
        &self.shared.metrics[self.id]
    }

    /// The topology snapshot, refreshed if a reload happened.
    pub fn topology(&self) -> Arc<Topology> {
        let g = self.shared.generation.load(Ordering::Acquire);
        let cur = self.topo.borrow().clone();
        if cur.generation == g {
            return cur;
        }
        let fresh = self.shared.current();
        *self.topo.borrow_mut() = fresh.clone();
        self.install(&fresh);
        fresh
    }

    /// Point the per-server pools at a topology, keeping connections to
    /// servers that stay (by name and role) and closing the others.
    fn install(&self, topo: &Topology) {
        let mut by_name = self.pools_by_name.borrow_mut();
        let mut kept = HashMap::new();
        let mut pools = Vec::with_capacity(topo.servers.len());
        for s in &topo.servers {
            let key = (s.name.clone(), s.role);
            let pool = match by_name.remove(&key) {
                Some(p)
                    if p.conns.first().map(|c| c.addr) == Some(s.addr)
                        && p.conns.len() == topo.settings.conns_per_server =>
                {
                    p
                }
                old => {
                    if let Some(old) = old {
                        old.close(self);
                    }
                    Rc::new(Pool::new(s, topo.settings.conns_per_server))
                }
            };
            kept.insert(key, pool.clone());
            pools.push(pool);
        }
        for (_, gone) in by_name.drain() {
            gone.close(self);
        }
        *by_name = kept;
        *self.pools.borrow_mut() = pools;
    }

    /// This core's pool for `server` of `topo`. A request that started before
    /// a reload may carry the previous topology: its ids are then resolved by
    /// name, never by a position that now means another server.
    fn pool(&self, topo: &Topology, server: ServerId) -> Option<Rc<Pool<B>>> {
        if topo.generation == self.topo.borrow().generation {
            return self.pools.borrow().get(server.index()).cloned();
        }
        let s = topo.servers.get(server.index())?;
        self.pools_by_name
            .borrow()
            .get(&(s.name.clone(), s.role))
            .cloned()
    }

    /// A pseudo-random number in [0, 1) for backoff jitter.
    pub fn jitter(&self) -> f64 {
        let mut x = self.rng.get();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.rng.set(x);
        (x >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Send one request (its `parts` concatenated) to `server` and wait for
    /// the reply, at most the request timeout. A timeout kills the connection
    /// (its FIFO can no longer be trusted) and fails every request on it.
    pub async fn call(
        self: &Rc<Self>,
        topo: &Topology,
        server: ServerId,
        parts: &[Bytes],
        expect: Expect,
    ) -> Result<Reply, CallError> {
        let Some(pool) = self.pool(topo, server) else {
            return Err(CallError::Closed);
        };
        let conn = pool.pick();
        let slot = self.slots.borrow_mut().insert(SlotState::Waiting(None));
        let gen = match conn.enqueue(self, parts, expect, slot, &topo.settings) {
            Ok(gen) => gen,
            Err(e) => {
                self.slots.borrow_mut().remove(slot);
                return Err(e);
            }
        };
        let wait = SlotWait {
            core: self.clone(),
            slot: Some(slot),
        };
        match tokio::time::timeout(topo.settings.request_timeout, wait).await {
            Ok(r) => r,
            Err(_) => {
                conn.fail(self, gen, CallError::Timeout, &topo.settings);
                Err(CallError::Timeout)
            }
        }
    }

    fn complete(&self, slot: usize, result: Result<Reply, CallError>) {
        let mut slots = self.slots.borrow_mut();
        let Some(state) = slots.get_mut(slot) else {
            return;
        };
        match state {
            SlotState::Waiting(w) => {
                let w = w.take();
                *state = SlotState::Done(result);
                if let Some(w) = w {
                    w.wake();
                }
            }
            SlotState::Abandoned => {
                slots.remove(slot);
            }
            SlotState::Done(_) => {}
        }
    }
}

struct SlotWait<B: Backend> {
    core: Rc<Core<B>>,
    slot: Option<usize>,
}

impl<B: Backend> Future for SlotWait<B> {
    type Output = Result<Reply, CallError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let Some(slot) = self.slot else {
            return Poll::Ready(Err(CallError::Closed));
        };
        let mut slots = self.core.slots.borrow_mut();
        let ready = match slots.get_mut(slot) {
            Some(SlotState::Waiting(w)) => {
                if !w.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                    *w = Some(cx.waker().clone());
                }
                false
            }
            Some(SlotState::Done(_)) => true,
            _ => return Poll::Ready(Err(CallError::Closed)),
        };
        if !ready {
            return Poll::Pending;
        }
        let result = match slots.remove(slot) {
            SlotState::Done(r) => r,
            _ => Err(CallError::Closed),
        };
        drop(slots);
        self.slot = None;
        Poll::Ready(result)
    }
}

impl<B: Backend> Drop for SlotWait<B> {
    fn drop(&mut self) {
        let Some(slot) = self.slot else {
            return;
        };
        let mut slots = self.core.slots.borrow_mut();
        match slots.get_mut(slot) {
            // The reply may still come: its reader frees the slot.
            Some(s @ SlotState::Waiting(_)) => *s = SlotState::Abandoned,
            Some(_) => {
                slots.remove(slot);
            }
            None => {}
        }
    }
}

impl<B: Backend> Pool<B> {
    fn new(s: &ServerInfo, n: usize) -> Pool<B> {
        let name: Rc<str> = Rc::from(s.name.as_str());
        Pool {
            conns: (0..n.max(1))
                .map(|_| {
                    Rc::new(UpConn {
                        addr: s.addr,
                        name: name.clone(),
                        st: RefCell::new(ConnState {
                            phase: Phase::Idle,
                            gen: 0,
                            attempts: 0,
                            stream: None,
                            outq: VecDeque::new(),
                            inflight: VecDeque::new(),
                        }),
                        wake: Notify::new(),
                    })
                })
                .collect(),
            next: Cell::new(0),
        }
    }

    fn pick(&self) -> Rc<UpConn<B>> {
        let i = self.next.get();
        self.next.set(i.wrapping_add(1));
        self.conns[i % self.conns.len()].clone()
    }

    /// A reload dropped this server (or changed its address): end its
    /// connections and fail the requests still waiting on them.
    fn close(&self, core: &Core<B>) {
        for c in &self.conns {
            let gen = c.st.borrow().gen;
            c.end(core, gen, CallError::Closed, Phase::Idle);
        }
    }
}

impl<B: Backend> UpConn<B> {
    fn enqueue(
        self: &Rc<Self>,
        core: &Rc<Core<B>>,
        parts: &[Bytes],
        expect: Expect,
        slot: usize,
        settings: &Settings,
    ) -> Result<u64, CallError> {
        let mut st = self.st.borrow_mut();
        match st.phase {
            Phase::Backoff(until) if Instant::now() < until => return Err(CallError::Connect),
            Phase::Idle | Phase::Backoff(_) => {
                st.phase = Phase::Connecting;
                st.gen += 1;
                let gen = st.gen;
                tokio::task::spawn_local(connect(core.clone(), self.clone(), gen, *settings));
            }
            Phase::Connecting | Phase::Ready => {}
        }
        st.outq
            .extend(parts.iter().filter(|p| !p.is_empty()).cloned());
        st.inflight.push_back(Pending { slot, expect });
        let gen = st.gen;
        drop(st);
        self.wake.notify_one();
        Ok(gen)
    }

    /// Fail connection generation `gen`: shut it down and fail every request
    /// on it. After a connect failure the next attempt waits a jittered backoff.
    fn fail(&self, core: &Core<B>, gen: u64, why: CallError, settings: &Settings) {
        let next = if why == CallError::Connect {
            let policy = HealthPolicy {
                retry_interval: Duration::from_millis(20),
                max_retry_interval: settings.policy.retry_interval,
                ..settings.policy
            };
            let attempts = self.st.borrow().attempts;
            Phase::Backoff(Instant::now() + backoff(&policy, attempts, core.jitter()))
        } else {
            Phase::Idle
        };
        self.end(core, gen, why, next);
    }

    /// End connection generation `gen` (if still current): shut the socket,
    /// drop unsent bytes, wake the writer so it exits, and complete every
    /// request waiting on it with `why`.
    fn end(&self, core: &Core<B>, gen: u64, why: CallError, next: Phase) {
        let mut st = self.st.borrow_mut();
        if st.gen != gen {
            return;
        }
        st.gen += 1;
        if let Some(s) = st.stream.take() {
            s.shutdown();
        }
        if matches!(next, Phase::Backoff(_)) {
            st.attempts = st.attempts.saturating_add(1);
        }
        st.phase = next;
        st.outq.clear();
        let pending = std::mem::take(&mut st.inflight);
        drop(st);
        self.wake.notify_one();
        if why != CallError::Connect || !pending.is_empty() {
            tracing::debug!(server = %self.name, ?why, failed = pending.len(), "upstream connection ended");
        }
        for p in pending {
            core.complete(p.slot, Err(why));
        }
    }
}

async fn connect<B: Backend>(core: Rc<Core<B>>, conn: Rc<UpConn<B>>, gen: u64, settings: Settings) {
    let res = tokio::time::timeout(settings.connect_timeout, B::connect(conn.addr)).await;
    let stream = match res {
        Ok(Ok(s)) => Rc::new(s),
        Ok(Err(e)) => {
            tracing::debug!(server = %conn.name, error = %e, "connect failed");
            conn.fail(&core, gen, CallError::Connect, &settings);
            return;
        }
        Err(_) => {
            tracing::debug!(server = %conn.name, "connect timed out");
            conn.fail(&core, gen, CallError::Connect, &settings);
            return;
        }
    };
    {
        let mut st = conn.st.borrow_mut();
        if st.gen != gen {
            stream.shutdown();
            return;
        }
        st.phase = Phase::Ready;
        st.attempts = 0;
        st.stream = Some(stream.clone());
    }
    tokio::task::spawn_local(read_replies(
        core.clone(),
        conn.clone(),
        stream.clone(),
        gen,
        settings,
    ));
    write_requests(core, conn, stream, gen, settings).await;
}

/// Drain the connection's queue: everything queued so far goes out with
/// vectored writes (see [`write_all`]), then the writer waits for more.
async fn write_requests<B: Backend>(
    core: Rc<Core<B>>,
    conn: Rc<UpConn<B>>,
    stream: Rc<B::Tcp>,
    gen: u64,
    settings: Settings,
) {
    let mut sending: VecDeque<Bytes> = VecDeque::with_capacity(64);
    let mut batch: Vec<Bytes> = Vec::with_capacity(64);
    loop {
        {
            let mut st = conn.st.borrow_mut();
            if st.gen != gen {
                return;
            }
            // Swap, not take: both queues keep their capacity.
            std::mem::swap(&mut st.outq, &mut sending);
        }
        if sending.is_empty() {
            conn.wake.notified().await;
            continue;
        }
        if write_all(&*stream, &mut sending, &mut batch).await.is_err() {
            conn.fail(&core, gen, CallError::Closed, &settings);
            return;
        }
    }
}

/// Drop `n` written bytes from the front of a queue of buffers.
pub(crate) fn advance(q: &mut VecDeque<Bytes>, mut n: usize) {
    while n > 0 {
        let Some(front) = q.front_mut() else {
            return;
        };
        if front.len() <= n {
            n -= front.len();
            q.pop_front();
        } else {
            front.advance(n);
            return;
        }
    }
}

async fn read_replies<B: Backend>(
    core: Rc<Core<B>>,
    conn: Rc<UpConn<B>>,
    stream: Rc<B::Tcp>,
    gen: u64,
    settings: Settings,
) {
    let max_value = core.shared.cfg.max_item_size.saturating_mul(2) + (1 << 20);
    let mut buf = BytesMut::with_capacity(READ_CHUNK);
    let mut items = Vec::new();
    loop {
        loop {
            let expect = {
                let st = conn.st.borrow();
                if st.gen != gen {
                    return;
                }
                match st.inflight.front() {
                    Some(p) => p.expect,
                    None => break,
                }
            };
            match frame_response(expect, &buf, max_value, &mut items) {
                Ok(Framed::Complete {
                    len,
                    status,
                    line,
                    data,
                }) => {
                    let frame = buf.split_to(len).freeze();
                    let pending = conn.st.borrow_mut().inflight.pop_front();
                    if let Some(p) = pending {
                        core.complete(
                            p.slot,
                            Ok(Reply {
                                frame,
                                status,
                                line,
                                data,
                            }),
                        );
                    }
                }
                Ok(Framed::Incomplete) => break,
                Err(e) => {
                    tracing::warn!(server = %conn.name, error = e.msg, "unparseable reply, closing connection");
                    conn.fail(&core, gen, CallError::Protocol, &settings);
                    return;
                }
            }
        }
        if !buf.is_empty() && conn.st.borrow().inflight.is_empty() {
            tracing::warn!(server = %conn.name, "unsolicited bytes from server, closing connection");
            conn.fail(&core, gen, CallError::Protocol, &settings);
            return;
        }
        if buf.capacity() - buf.len() < READ_CHUNK / 4 {
            buf.reserve(READ_CHUNK);
        }
        let (res, b) = stream.read(buf).await;
        buf = b;
        match res {
            Ok(n) if n > 0 => {}
            _ => {
                conn.fail(&core, gen, CallError::Closed, &settings);
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advance_resumes_partial_writes_exactly() {
        let mut q: VecDeque<Bytes> = ["abc", "de", "fghij"]
            .iter()
            .map(|s| Bytes::from_static(s.as_bytes()))
            .collect();
        advance(&mut q, 4);
        assert_eq!(
            q,
            vec![Bytes::from_static(b"e"), Bytes::from_static(b"fghij")]
        );
        advance(&mut q, 3);
        assert_eq!(q, vec![Bytes::from_static(b"hij")]);
        advance(&mut q, 3);
        assert!(q.is_empty());
        advance(&mut q, 1);
        assert!(q.is_empty());
    }
}
