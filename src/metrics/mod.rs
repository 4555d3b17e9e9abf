//! Latency histograms and event counters for Prometheus and `stats proxy`.
//!
//! Owns the metric state that an engine writes on its request path, and the
//! pure merge of that state into a [`Snapshot`] on scrape. Rendering the
//! snapshot is in [`expose`]; serving it over HTTP is the I/O shell's job.
//! Must not import `server`, sockets, threads or the clock: durations come in
//! as arguments.
//!
//! # Who writes what
//! - [`CoreMetrics`]: one block per core; only its core writes it (request
//!   latency per command, read-through results).
//! - [`ServerMetrics`]: one per server, kept across reloads by name like its
//!   health; it holds one [`UpstreamBlock`] per core (upstream call latency,
//!   upstream errors by kind), again written only by that core. Its health
//!   counters (ejections and suspicions by reason, missed keys, drains,
//!   flushes) live in its [`crate::upstream::Health`] and are copied at
//!   scrape time.
//!
//! A single-writer cell is bumped with a relaxed load and store rather than a
//! locked read-modify-write: the owning core is the only writer, so nothing is
//! lost, and a scrape on another thread reads each cell with a relaxed load
//! (a scrape may see one request's bucket before its sum; Prometheus tolerates
//! that much skew). No lock and no cache line written by two cores.

pub mod expose;

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::protocol::Verb;
use crate::upstream::{Counters, Role, State};

/// Upper bounds of the latency buckets in nanoseconds: 1, 2, 3, 5, 7 per
/// decade from 10 µs to 10 s (a `+Inf` bucket follows). Fine enough that the
/// percentiles interpolated from them are within a bucket's width of the
/// truth, coarse enough that a command costs 32 series.
pub const BUCKETS_NS: [u64; 31] = [
    10_000,
    20_000,
    30_000,
    50_000,
    70_000,
    100_000,
    200_000,
    300_000,
    500_000,
    700_000,
    1_000_000,
    2_000_000,
    3_000_000,
    5_000_000,
    7_000_000,
    10_000_000,
    20_000_000,
    30_000_000,
    50_000_000,
    70_000_000,
    100_000_000,
    200_000_000,
    300_000_000,
    500_000_000,
    700_000_000,
    1_000_000_000,
    2_000_000_000,
    3_000_000_000,
    5_000_000_000,
    7_000_000_000,
    10_000_000_000,
];

/// Buckets including `+Inf`.
const NB: usize = BUCKETS_NS.len() + 1;

/// Bump a cell that only the calling core writes (see the module docs).
#[inline]
fn bump(cell: &AtomicU64, n: u64) {
    cell.store(
        cell.load(Ordering::Relaxed).wrapping_add(n),
        Ordering::Relaxed,
    );
}

macro_rules! labelled {
    ($(#[$m:meta])* $ty:ident { $($name:ident => $label:literal,)* }) => {
        $(#[$m])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        #[repr(usize)]
        pub enum $ty { $(#[doc = $label] $name,)* }

        impl $ty {
            /// Every value, in exposition order.
            pub const ALL: &'static [$ty] = &[$($ty::$name,)*];
            /// How many values there are.
            pub const COUNT: usize = $ty::ALL.len();

            /// Its label value.
            pub fn label(self) -> &'static str {
                match self { $($ty::$name => $label,)* }
            }
        }
    };
}

labelled! {
    /// The `command` label of a client request: the verb on the wire.
    Command {
        Get => "get",
        Gets => "gets",
        Gat => "gat",
        Gats => "gats",
        Set => "set",
        Add => "add",
        Replace => "replace",
        Append => "append",
        Prepend => "prepend",
        Cas => "cas",
        Delete => "delete",
        Incr => "incr",
        Decr => "decr",
        Touch => "touch",
        FlushAll => "flush_all",
        Version => "version",
        Verbosity => "verbosity",
        Stats => "stats",
        Quit => "quit",
        MetaGet => "mg",
        MetaSet => "ms",
        MetaDelete => "md",
        MetaArithmetic => "ma",
        MetaNoop => "mn",
        MetaDebug => "me",
        Admin => "admin",
        Invalid => "invalid",
    }
}

impl Command {
    /// The label of a parsed verb.
    pub fn of(verb: Verb) -> Command {
        match verb {
            Verb::Get => Command::Get,
            Verb::Gets => Command::Gets,
            Verb::Gat => Command::Gat,
            Verb::Gats => Command::Gats,
            Verb::Set => Command::Set,
            Verb::Add => Command::Add,
            Verb::Replace => Command::Replace,
            Verb::Append => Command::Append,
            Verb::Prepend => Command::Prepend,
            Verb::Cas => Command::Cas,
            Verb::Delete => Command::Delete,
            Verb::Incr => Command::Incr,
            Verb::Decr => Command::Decr,
            Verb::Touch => Command::Touch,
            Verb::FlushAll => Command::FlushAll,
            Verb::Version => Command::Version,
            Verb::Verbosity => Command::Verbosity,
            Verb::Stats => Command::Stats,
            Verb::Quit => Command::Quit,
            Verb::MetaGet => Command::MetaGet,
            Verb::MetaSet => Command::MetaSet,
            Verb::MetaDelete => Command::MetaDelete,
            Verb::MetaArithmetic => Command::MetaArithmetic,
            Verb::MetaNoop => Command::MetaNoop,
            Verb::MetaDebug => Command::MetaDebug,
            Verb::Admin => Command::Admin,
        }
    }
}

labelled! {
    /// The `kind` label of `memring_upstream_errors_total`.
    UpstreamErrorKind {
        Connect => "connect",
        Timeout => "timeout",
        Closed => "closed",
        Protocol => "protocol",
        Tls => "tls",
    }
}

labelled! {
    /// The `result` label of `memring_hedges_total`: a late read of the
    /// server was sent to its backup too, the backup's hit answered first,
    /// or the core's hedge budget said no.
    HedgeResult {
        Sent => "sent",
        Won => "won",
        Skipped => "skipped",
    }
}

labelled! {
    /// The `result` label of `memring_read_through_total`: a primary missed
    /// and its backup was asked.
    ReadThrough {
        Hit => "hit",
        Miss => "miss",
        Error => "error",
    }
}

/// The bucket a duration falls in (the last one is `+Inf`).
#[inline]
pub fn bucket_of(d: Duration) -> usize {
    let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
    BUCKETS_NS.partition_point(|&b| b < ns)
}

/// A latency histogram one core writes.
#[derive(Debug)]
pub struct Histogram {
    buckets: [AtomicU64; NB],
    sum_ns: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            sum_ns: AtomicU64::new(0),
        }
    }
}

impl Histogram {
    /// Count one observation (owning core only).
    #[inline]
    pub fn observe(&self, d: Duration) {
        bump(&self.buckets[bucket_of(d)], 1);
        bump(
            &self.sum_ns,
            u64::try_from(d.as_nanos()).unwrap_or(u64::MAX),
        );
    }

    /// Add this histogram into a merged one.
    pub fn merge_into(&self, into: &mut HistogramSnapshot) {
        for (i, b) in self.buckets.iter().enumerate() {
            into.buckets[i] += b.load(Ordering::Relaxed);
        }
        into.sum_ns = into
            .sum_ns
            .wrapping_add(self.sum_ns.load(Ordering::Relaxed));
    }
}

/// A histogram merged over cores: plain numbers.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HistogramSnapshot {
    /// Observations per bucket (not cumulative); the last is `+Inf`.
    pub buckets: [u64; NB],
    /// Sum of the observations in nanoseconds.
    pub sum_ns: u64,
}

impl HistogramSnapshot {
    /// Observations in all.
    pub fn count(&self) -> u64 {
        self.buckets.iter().sum()
    }

    /// The `q` quantile (0..=1), interpolated linearly inside its bucket as
    /// Prometheus' `histogram_quantile` does; `None` when empty. Values in
    /// the `+Inf` bucket report the highest finite bound.
    pub fn quantile(&self, q: f64) -> Option<Duration> {
        let total = self.count();
        if total == 0 {
            return None;
        }
        let rank = q.clamp(0.0, 1.0) * total as f64;
        let mut seen = 0u64;
        for (i, &n) in self.buckets.iter().enumerate() {
            if n == 0 || ((seen + n) as f64) < rank {
                seen += n;
                continue;
            }
            let Some(&hi) = BUCKETS_NS.get(i) else {
                return Some(Duration::from_nanos(BUCKETS_NS[BUCKETS_NS.len() - 1]));
            };
            let lo = if i == 0 { 0 } else { BUCKETS_NS[i - 1] };
            let frac = ((rank - seen as f64) / n as f64).clamp(0.0, 1.0);
            let ns = lo as f64 + (hi - lo) as f64 * frac;
            return Some(Duration::from_nanos(ns as u64));
        }
        None
    }
}

/// One core's request-path metrics.
#[derive(Debug)]
#[repr(align(128))]
pub struct CoreMetrics {
    requests: [Histogram; Command::COUNT],
    read_through: [AtomicU64; ReadThrough::COUNT],
}

impl Default for CoreMetrics {
    fn default() -> Self {
        CoreMetrics {
            requests: std::array::from_fn(|_| Histogram::default()),
            read_through: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

impl CoreMetrics {
    /// One client request answered: `d` runs from the read that brought its
    /// first byte to the write that sent its reply's last byte.
    #[inline]
    pub fn record_request(&self, cmd: Command, d: Duration) {
        self.requests[cmd as usize].observe(d);
    }

    /// A primary missed and the backup was asked.
    #[inline]
    pub fn read_through(&self, r: ReadThrough) {
        bump(&self.read_through[r as usize], 1);
    }
}

/// One core's view of one server.
#[derive(Debug, Default)]
#[repr(align(128))]
pub struct UpstreamBlock {
    duration: Histogram,
    errors: [AtomicU64; UpstreamErrorKind::COUNT],
    hedges: [AtomicU64; HedgeResult::COUNT],
}

/// A server's metrics, shared by every core.
#[derive(Debug)]
pub struct ServerMetrics {
    per_core: Vec<UpstreamBlock>,
}

impl ServerMetrics {
    /// Blocks for `cores` cores.
    pub fn new(cores: usize) -> ServerMetrics {
        ServerMetrics {
            per_core: (0..cores.max(1))
                .map(|_| UpstreamBlock::default())
                .collect(),
        }
    }

    /// An upstream call that got a reply, from queueing to the reply (core `core` only).
    #[inline]
    pub fn record_upstream(&self, core: usize, d: Duration) {
        if let Some(b) = self.per_core.get(core) {
            b.duration.observe(d);
        }
    }

    /// An upstream call that failed (core `core` only).
    #[inline]
    pub fn upstream_error(&self, core: usize, kind: UpstreamErrorKind) {
        if let Some(b) = self.per_core.get(core) {
            bump(&b.errors[kind as usize], 1);
        }
    }

    /// A late read of this server was hedged, won or skipped (core `core`
    /// only).
    #[inline]
    pub fn hedge(&self, core: usize, result: HedgeResult) {
        if let Some(b) = self.per_core.get(core) {
            bump(&b.hedges[result as usize], 1);
        }
    }

    /// Merge the per-core blocks.
    fn merge(&self) -> Merged {
        let mut m = Merged::default();
        for b in &self.per_core {
            b.duration.merge_into(&mut m.upstream);
            for (e, c) in m.errors.iter_mut().zip(&b.errors) {
                *e += c.load(Ordering::Relaxed);
            }
            for (e, c) in m.hedges.iter_mut().zip(&b.hedges) {
                *e += c.load(Ordering::Relaxed);
            }
        }
        m
    }

    /// Hedges of this server by [`HedgeResult`], all cores.
    pub fn hedges(&self) -> [u64; HedgeResult::COUNT] {
        self.merge().hedges
    }
}

/// One server's blocks merged.
#[derive(Default)]
struct Merged {
    upstream: HistogramSnapshot,
    errors: [u64; UpstreamErrorKind::COUNT],
    hedges: [u64; HedgeResult::COUNT],
}

impl ServerMetrics {}

/// What the shell knows of one server at scrape time.
#[derive(Debug)]
pub struct ServerInput<'a> {
    /// `host:port`.
    pub name: &'a str,
    /// Primary or backup.
    pub role: Role,
    /// Its pool.
    pub pool: &'a str,
    /// Health state now.
    pub state: State,
    /// Its health counters now.
    pub health: Counters,
    /// Its metrics.
    pub metrics: &'a ServerMetrics,
}

/// Process-wide counters the shell reads from its own blocks at scrape time.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ProcessCounters {
    /// Open client connections.
    pub client_connections: u64,
    /// Client connections refused at `-n`.
    pub client_connections_rejected: u64,
    /// Bytes read from clients.
    pub client_bytes_read: u64,
    /// Bytes written to clients.
    pub client_bytes_written: u64,
    /// Requests answered by the other replica.
    pub failovers: u64,
    /// Items copied back into a rejoined server (warm rejoin).
    pub resync_copies: u64,
    /// Items a read-through or write put back on a primary.
    pub repairs: u64,
    /// Primary-first writes that waited for their key's exclusive section.
    pub section_waits: u64,
    /// Upstream connections found out of step with their requests.
    pub backend_desyncs: u64,
    /// Partial requests refused past `--max-input-memory`.
    pub input_memory_refusals: u64,
    /// Unparsed client input buffered now, all cores.
    pub input_bytes: u64,
    /// Open client connections on the TLS listener.
    pub tls_connections: u64,
    /// TLS handshakes completed with clients.
    pub tls_handshakes: u64,
    /// Client TLS handshakes that failed, by reason (`reason` label).
    pub tls_handshake_errors: Vec<(&'static str, u64)>,
    /// TLS handshake records sent to the plaintext listener.
    pub tls_on_plain_port: u64,
    /// Keys that missed on their new owner and were found on an earlier
    /// owner during a migration window (answered, and copied over).
    pub migration_hits: u64,
    /// Those looked up on an earlier owner and not found there.
    pub migration_misses: u64,
    /// Deletes sent to earlier owners by writes during a migration window.
    pub migration_deletes: u64,
    /// 1 while a migration window is open.
    pub migration_window_open: u64,
    /// Earlier placements the open window reads from.
    pub migration_placements: u64,
    /// The hottest keys: a hash of the key (never the key), its pool, and
    /// its estimated reads per second.
    pub hot_keys: Vec<(String, String, f64)>,
}

/// One server, merged.
#[derive(Clone, Debug, PartialEq)]
pub struct ServerSnapshot {
    /// `host:port`.
    pub name: String,
    /// Primary or backup.
    pub role: Role,
    /// Its pool.
    pub pool: String,
    /// Health state.
    pub state: State,
    /// Health counters (ejections and suspicions by reason, drains...).
    pub health: Counters,
    /// Upstream call latency.
    pub upstream: HistogramSnapshot,
    /// Upstream errors by [`UpstreamErrorKind`].
    pub errors: [u64; UpstreamErrorKind::COUNT],
    /// Hedged reads by [`HedgeResult`].
    pub hedges: [u64; HedgeResult::COUNT],
}

/// Everything a scrape shows, merged over cores.
#[derive(Clone, Debug, PartialEq)]
pub struct Snapshot {
    /// memring's version.
    pub version: &'static str,
    /// `io_uring` or `epoll`.
    pub io_backend: &'static str,
    /// Whether request latency is being recorded at all.
    pub timing: bool,
    /// Request latency by [`Command`].
    pub requests: Vec<HistogramSnapshot>,
    /// Read-through results by [`ReadThrough`].
    pub read_through: [u64; ReadThrough::COUNT],
    /// Process counters.
    pub process: ProcessCounters,
    /// Every configured server.
    pub servers: Vec<ServerSnapshot>,
}

impl Snapshot {
    /// Merge the cores' blocks and the servers' state.
    pub fn take(
        cores: &[CoreMetrics],
        servers: &[ServerInput<'_>],
        process: ProcessCounters,
        io_backend: &'static str,
        timing: bool,
    ) -> Snapshot {
        let mut requests = vec![HistogramSnapshot::default(); Command::COUNT];
        let mut read_through = [0u64; ReadThrough::COUNT];
        for c in cores {
            for (h, into) in c.requests.iter().zip(requests.iter_mut()) {
                h.merge_into(into);
            }
            for (r, into) in c.read_through.iter().zip(read_through.iter_mut()) {
                *into += r.load(Ordering::Relaxed);
            }
        }
        let servers = servers
            .iter()
            .map(|s| {
                let m = s.metrics.merge();
                ServerSnapshot {
                    name: s.name.to_string(),
                    pool: s.pool.to_string(),
                    role: s.role,
                    state: s.state,
                    health: s.health,
                    upstream: m.upstream,
                    errors: m.errors,
                    hedges: m.hedges,
                }
            })
            .collect();
        Snapshot {
            version: env!("CARGO_PKG_VERSION"),
            io_backend,
            timing,
            requests,
            read_through,
            process,
            servers,
        }
    }

    /// Requests answered, over all commands.
    pub fn requests_total(&self) -> u64 {
        self.requests.iter().map(HistogramSnapshot::count).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_increasing_and_durations_land_at_or_below_their_bound() {
        assert!(BUCKETS_NS.windows(2).all(|w| w[0] < w[1]));
        let table: &[(u64, usize)] = &[
            (0, 0),
            (10_000, 0),
            (10_001, 1),
            (20_000, 1),
            (69_999, 4),
            (1_000_000, 10),
            (10_000_000_000, 30),
            (10_000_000_001, 31),
            (u64::MAX, 31),
        ];
        for &(ns, want) in table {
            assert_eq!(bucket_of(Duration::from_nanos(ns)), want, "{ns} ns");
        }
        assert_eq!(bucket_of(Duration::MAX), NB - 1);
    }

    #[test]
    fn quantiles_interpolate_inside_the_bucket() {
        let h = Histogram::default();
        // 90 at 15 µs (bucket 10..20 µs), 10 at 150 µs (bucket 100..200 µs).
        for _ in 0..90 {
            h.observe(Duration::from_micros(15));
        }
        for _ in 0..10 {
            h.observe(Duration::from_micros(150));
        }
        let mut s = HistogramSnapshot::default();
        h.merge_into(&mut s);
        assert_eq!(s.count(), 100);
        assert_eq!(s.sum_ns, 90 * 15_000 + 10 * 150_000);
        // Rank 50 of 90 in 10..20 µs.
        let p50 = s.quantile(0.5).unwrap().as_nanos() as f64;
        assert!(
            (p50 - (10_000.0 + 10_000.0 * 50.0 / 90.0)).abs() < 2.0,
            "{p50}"
        );
        assert_eq!(s.quantile(0.9), Some(Duration::from_micros(20)));
        // Rank 99: 9 of 10 into 100..200 µs.
        assert_eq!(s.quantile(0.99), Some(Duration::from_micros(190)));
        assert_eq!(s.quantile(1.0), Some(Duration::from_micros(200)));
        assert_eq!(HistogramSnapshot::default().quantile(0.5), None);
    }

    #[test]
    fn overflow_bucket_reports_the_top_bound() {
        let h = Histogram::default();
        h.observe(Duration::from_secs(60));
        let mut s = HistogramSnapshot::default();
        h.merge_into(&mut s);
        assert_eq!(s.quantile(0.99), Some(Duration::from_secs(10)));
    }

    #[test]
    fn snapshot_merges_cores_and_servers() {
        let cores = [CoreMetrics::default(), CoreMetrics::default()];
        cores[0].record_request(Command::Get, Duration::from_micros(40));
        cores[1].record_request(Command::Get, Duration::from_micros(40));
        cores[1].record_request(Command::of(Verb::MetaSet), Duration::from_millis(2));
        cores[0].read_through(ReadThrough::Hit);
        cores[1].read_through(ReadThrough::Hit);
        cores[1].read_through(ReadThrough::Error);
        let m = ServerMetrics::new(2);
        m.record_upstream(0, Duration::from_micros(30));
        m.record_upstream(1, Duration::from_micros(30));
        m.record_upstream(7, Duration::from_micros(30)); // no such core: ignored
        m.upstream_error(1, UpstreamErrorKind::Timeout);
        let health = Counters {
            flushes: 3,
            ejections: 1,
            ..Counters::default()
        };
        let servers = [ServerInput {
            name: "127.0.0.1:1",
            role: Role::Primary,
            pool: "default",
            state: State::Down,
            health,
            metrics: &m,
        }];
        let s = Snapshot::take(&cores, &servers, ProcessCounters::default(), "epoll", true);
        assert_eq!(s.requests[Command::Get as usize].count(), 2);
        assert_eq!(s.requests[Command::MetaSet as usize].count(), 1);
        assert_eq!(s.requests_total(), 3);
        assert_eq!(s.read_through, [2, 0, 1]);
        let srv = &s.servers[0];
        assert_eq!(srv.upstream.count(), 2);
        assert_eq!(srv.errors, [0, 1, 0, 0, 0]);
        assert_eq!(srv.health, health);
        assert_eq!(srv.state, State::Down);
    }

    #[test]
    fn every_verb_has_its_wire_name_as_label() {
        for c in Command::ALL {
            assert!(!c.label().is_empty());
        }
        assert_eq!(Command::of(Verb::MetaGet).label(), "mg");
        assert_eq!(Command::of(Verb::FlushAll).label(), "flush_all");
        assert_eq!(Command::COUNT, Command::ALL.len());
    }
}
