//! Counters and the `stats` replies: `stats`, `stats proxy settings`, `stats proxy`.
//!
//! Each core bumps its own block of relaxed atomics (no sharing of cache lines
//! between writers); `stats` sums the blocks. Must not import `server`.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::config::{Config, IoBackend};
use crate::metrics::{
    Command, HedgeResult, HistogramSnapshot, ReadThrough, Snapshot, UpstreamErrorKind,
};
use crate::route::Distribution;
use crate::upstream::{Counters, Ejection, Health, Role};

macro_rules! counters {
    ($($name:ident => $wire:literal,)*) => {
        /// A per-core counter; the wire name follows memcached where one exists.
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        #[repr(usize)]
        pub enum Counter { $(#[doc = $wire] $name,)* }

        impl Counter {
            /// Every counter, in `stats` order.
            pub const ALL: &'static [Counter] = &[$(Counter::$name,)*];

            /// Its name in the `stats` reply.
            pub fn wire_name(self) -> &'static str {
                match self { $(Counter::$name => $wire,)* }
            }
        }
    };
}

counters! {
    TotalConnections => "total_connections",
    RejectedConnections => "rejected_connections",
    CmdGet => "cmd_get",
    CmdSet => "cmd_set",
    CmdTouch => "cmd_touch",
    CmdFlush => "cmd_flush",
    CmdMeta => "cmd_meta",
    GetHits => "get_hits",
    GetMisses => "get_misses",
    DeleteHits => "delete_hits",
    DeleteMisses => "delete_misses",
    IncrHits => "incr_hits",
    IncrMisses => "incr_misses",
    DecrHits => "decr_hits",
    DecrMisses => "decr_misses",
    CasHits => "cas_hits",
    CasBadval => "cas_badval",
    CasMisses => "cas_misses",
    TouchHits => "touch_hits",
    TouchMisses => "touch_misses",
    BytesRead => "bytes_read",
    BytesWritten => "bytes_written",
    ClientErrors => "proxy_client_errors",
    ServerErrors => "proxy_server_errors",
    BackendTimeouts => "proxy_backend_timeouts",
    BackendDesyncs => "proxy_backend_desyncs",
    Failovers => "proxy_failovers",
    ReadThroughHits => "proxy_read_through_hits",
    MigrationHits => "proxy_migration_hits",
    MigrationMisses => "proxy_migration_misses",
    MigrationDeletes => "proxy_migration_deletes",
    HedgesSent => "proxy_hedges_sent",
    HedgesWon => "proxy_hedges_won",
    HedgesSkipped => "proxy_hedges_skipped",
    HotSpreads => "proxy_hot_key_spreads",
    Repairs => "proxy_repairs",
    ReplicationErrors => "proxy_replication_errors",
    ResyncCopies => "proxy_resync_copies",
    SectionWaits => "proxy_section_waits",
    InputMemoryRefusals => "proxy_input_memory_refusals",
    TlsConnections => "tls_total_connections",
    TlsHandshakes => "tls_handshakes",
    TlsErrorNotTls => "tls_handshake_errors_not_tls",
    TlsErrorTimeout => "tls_handshake_errors_timeout",
    TlsErrorNoCertificate => "tls_handshake_errors_no_certificate",
    TlsErrorBadCertificate => "tls_handshake_errors_bad_certificate",
    TlsErrorAlert => "tls_handshake_errors_alert",
    TlsErrorClosed => "tls_handshake_errors_closed",
    TlsErrorProtocol => "tls_handshake_errors_protocol",
    TlsOnPlainPort => "tls_hellos_on_plaintext_port",
}

const N: usize = Counter::ALL.len();

/// A global allocator that counts allocations (feature `alloc-stats`): the
/// binary installs it so `stats` can show allocations per proxied request.
#[cfg(feature = "alloc-stats")]
pub struct CountingAlloc;

/// Heap allocations so far (feature `alloc-stats`).
#[cfg(feature = "alloc-stats")]
pub static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

#[cfg(feature = "alloc-stats")]
// SAFETY: forwards to the system allocator unchanged; only counts.
unsafe impl std::alloc::GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { std::alloc::System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { std::alloc::System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: std::alloc::Layout, new: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { std::alloc::System.realloc(ptr, layout, new) }
    }
}

/// One core's counters.
#[derive(Debug)]
#[repr(align(128))]
pub struct CoreStats {
    counters: [AtomicU64; N],
    /// Open client connections on this core.
    pub curr_connections: AtomicU64,
    /// Of those, the ones on the TLS listener.
    pub curr_tls_connections: AtomicU64,
    /// Requests being proxied on this core right now (drained on SIGTERM).
    pub active_requests: AtomicU64,
}

impl Default for CoreStats {
    fn default() -> Self {
        CoreStats {
            counters: std::array::from_fn(|_| AtomicU64::new(0)),
            curr_connections: AtomicU64::new(0),
            curr_tls_connections: AtomicU64::new(0),
            active_requests: AtomicU64::new(0),
        }
    }
}

impl CoreStats {
    /// Add `n` to a counter.
    #[inline]
    pub fn add(&self, c: Counter, n: u64) {
        self.counters[c as usize].fetch_add(n, Ordering::Relaxed);
    }

    /// Add one to a counter.
    #[inline]
    pub fn incr(&self, c: Counter) {
        self.add(c, 1);
    }

    /// Read a counter.
    pub fn get(&self, c: Counter) -> u64 {
        self.counters[c as usize].load(Ordering::Relaxed)
    }

    /// Zero every counter (`stats reset`); connection gauges stay.
    pub fn reset(&self) {
        for c in &self.counters {
            c.store(0, Ordering::Relaxed);
        }
    }
}

/// What `stats` shows of one server.
#[derive(Debug)]
pub struct ServerView<'a> {
    /// `host:port`.
    pub name: &'a str,
    /// Primary or backup.
    pub role: Role,
    /// Its pool's name.
    pub pool: &'a str,
    /// Shared health.
    pub health: &'a Health,
    /// Kept only while a migration window is open (see
    /// `--migrate-window`).
    pub leaving: bool,
}

/// Process facts `stats` shows.
#[derive(Debug)]
pub struct ProcessView {
    /// Process id.
    pub pid: u32,
    /// When the process started.
    pub started: Instant,
    /// Unix time now.
    pub now_unix: u64,
    /// Runtimes (cores).
    pub threads: usize,
    /// `-n`.
    pub max_connections: usize,
    /// I/O backend in use.
    pub backend: &'static str,
    /// Configuration generation (bumped by each reload).
    pub config_generation: u64,
    /// CPU time in user and in system mode so far (`getrusage`).
    pub rusage: (Duration, Duration),
    /// An open migration window: the time left, and how many earlier
    /// placements it reads from.
    pub migration: Option<(Duration, usize)>,
}

/// Render the `stats` reply: `STAT <name> <value>\r\n` lines, then `END\r\n`.
pub fn render(
    cores: &[CoreStats],
    servers: &[ServerView<'_>],
    p: &ProcessView,
    now: Instant,
) -> String {
    let mut s = String::with_capacity(4096);
    let uptime = now.saturating_duration_since(p.started).as_secs();
    let mut stat = |name: &str, value: &dyn std::fmt::Display| {
        let _ = write!(s, "STAT {name} {value}\r\n");
    };
    stat("pid", &p.pid);
    stat("uptime", &uptime);
    stat("time", &p.now_unix);
    stat("version", &concat!("memring-", env!("CARGO_PKG_VERSION")));
    stat("pointer_size", &(usize::BITS));
    // As memcached writes them: seconds.microseconds.
    let cpu = |d: Duration| format!("{}.{:06}", d.as_secs(), d.subsec_micros());
    stat("rusage_user", &cpu(p.rusage.0));
    stat("rusage_system", &cpu(p.rusage.1));
    stat("threads", &p.threads);
    stat("io_backend", &p.backend);
    stat("config_generation", &p.config_generation);
    let (left, placements) = p.migration.unwrap_or_default();
    stat("migration_window_open", &u8::from(p.migration.is_some()));
    stat("migration_window_seconds_left", &left.as_secs());
    stat("migration_placements", &placements);
    stat("max_connections", &p.max_connections);
    let curr: u64 = cores
        .iter()
        .map(|c| c.curr_connections.load(Ordering::Relaxed))
        .sum();
    stat("curr_connections", &curr);
    let tls: u64 = cores
        .iter()
        .map(|c| c.curr_tls_connections.load(Ordering::Relaxed))
        .sum();
    stat("curr_tls_connections", &tls);
    for &c in Counter::ALL {
        let v: u64 = cores.iter().map(|core| core.get(c)).sum();
        stat(c.wire_name(), &v);
    }
    #[cfg(feature = "alloc-stats")]
    stat("heap_allocations", &ALLOCATIONS.load(Ordering::Relaxed));
    stat("proxy_servers", &servers.len());
    for (i, v) in servers.iter().enumerate() {
        let h = v.health;
        stat(&format!("server_{i}:address"), &v.name);
        stat(&format!("server_{i}:role"), &v.role.as_str());
        stat(&format!("server_{i}:pool"), &v.pool);
        stat(&format!("server_{i}:leaving"), &u8::from(v.leaving));
        stat(&format!("server_{i}:state"), &h.state().as_str());
        stat(&format!("server_{i}:dirty"), &u8::from(h.is_dirty()));
        let c = h.counters();
        for (name, v) in [
            ("failures", c.failures),
            ("failovers", c.failovers),
            ("ejections", c.ejections),
            ("flushes", c.flushes),
        ] {
            stat(&format!("server_{i}:{name}"), &v);
        }
        let (logged_now, overflowed) = h.missed_keys();
        stat(&format!("server_{i}:missed_keys"), &logged_now);
        stat(
            &format!("server_{i}:missed_keys_overflowed"),
            &u8::from(overflowed),
        );
        for (name, v) in [
            ("keys_logged", c.keys_logged),
            ("drains", c.drains),
            ("drained_keys", c.drained_keys),
            ("aborts", c.aborts),
            ("sweeps", c.sweeps),
            ("swept_keys", c.swept_keys),
            ("addr_changes", c.addr_changes),
            ("dns_failures", c.dns_failures),
        ] {
            stat(&format!("server_{i}:{name}"), &v);
        }
        stat(
            &format!("server_{i}:last_rejoin"),
            &h.last_rejoin().as_str(),
        );
        stat(
            &format!("server_{i}:last_ejection"),
            &h.last_ejection().as_str(),
        );
        reasons(&c, &mut |name, v| stat(&format!("server_{i}:{name}"), &v));
        stat(
            &format!("server_{i}:last_suspect"),
            &h.last_suspicion().as_str(),
        );
        stat(
            &format!("server_{i}:since_state_change"),
            &secs(h.since_change(now)),
        );
    }
    s.push_str("END\r\n");
    s
}

/// Where one key goes, for `stats route <key>` and `memring --route`.
#[derive(Clone, Debug)]
pub struct RouteView<'a> {
    /// The pool's name.
    pub pool: &'a str,
    /// The primary's `host:port` and state.
    pub primary: (&'a str, crate::upstream::State),
    /// The backup's, if the pool has backups.
    pub backup: Option<(&'a str, crate::upstream::State)>,
    /// While a migration window is open: the servers earlier placements
    /// put the key on (newest first), read when it misses.
    pub earlier: Vec<(&'a str, crate::upstream::State)>,
}

/// One hot key for `stats hotkeys`.
#[derive(Clone, Debug)]
pub struct HotView {
    /// The key as the clients send it.
    pub key: Vec<u8>,
    /// Estimated reads per second.
    pub rate: f64,
    /// The pool it is placed in, and its primary there.
    pub pool: String,
    /// `host:port`.
    pub primary: String,
    /// Its gets alternate between primary and backup now.
    pub spread: bool,
}

/// Render `stats hotkeys`: the hottest keys first, each as `hotkey_<i>:key`
/// (the key as sent; one a text line cannot carry in base64, with
/// `hotkey_<i>:base64 1`), `:reads_per_second`, `:pool` and `:primary`.
pub fn render_hot_keys(keys: &[HotView]) -> String {
    use base64::Engine as _;
    let mut s = String::with_capacity(128 * keys.len() + 8);
    for (i, k) in keys.iter().enumerate() {
        let printable = k.key.iter().all(|b| b.is_ascii_graphic());
        let key = if printable {
            String::from_utf8_lossy(&k.key).into_owned()
        } else {
            base64::engine::general_purpose::STANDARD.encode(&k.key)
        };
        let _ = write!(s, "STAT hotkey_{i}:key {key}\r\n");
        if !printable {
            let _ = write!(s, "STAT hotkey_{i}:base64 1\r\n");
        }
        let _ = write!(
            s,
            "STAT hotkey_{i}:reads_per_second {:.0}\r\nSTAT hotkey_{i}:pool {}\r\nSTAT hotkey_{i}:primary {}\r\nSTAT hotkey_{i}:spread {}\r\n",
            k.rate,
            k.pool,
            k.primary,
            u8::from(k.spread)
        );
    }
    s.push_str("END\r\n");
    s
}

/// Render `stats route <key>`: the key's pool, primary and backup with
/// their states now, and which of them a read of the key goes to now
/// (`reads_from`: `primary`, `backup` or `none`).
pub fn render_route(r: &RouteView<'_>) -> String {
    use crate::upstream::State;
    let mut s = String::with_capacity(256);
    let mut stat = |name: &str, value: &dyn std::fmt::Display| {
        let _ = write!(s, "STAT {name} {value}\r\n");
    };
    stat("pool", &r.pool);
    stat("primary", &r.primary.0);
    stat("primary_state", &r.primary.1.as_str());
    if let Some((name, state)) = r.backup {
        stat("backup", &name);
        stat("backup_state", &state.as_str());
    }
    let reads_from = if r.primary.1 == State::Up {
        "primary"
    } else if r.backup.is_some_and(|(_, st)| st == State::Up) {
        "backup"
    } else {
        "none"
    };
    stat("reads_from", &reads_from);
    for (name, state) in &r.earlier {
        stat("earlier", name);
        stat("earlier_state", &state.as_str());
    }
    s.push_str("END\r\n");
    s
}

/// Render `stats proxy settings`: memring's effective settings, memcached's names
/// where memcached has the setting (`maxconns`, `tcpport`, `num_threads`,
/// `item_size_max`, ...). Lists are comma-separated so that each value stays
/// one word; booleans are `yes`/`no` as memcached writes them. `tcp` is the
/// address actually bound (it differs from the configured one for port 0).
pub fn render_settings(cfg: &Config, p: &ProcessView, tcp: Option<SocketAddr>) -> String {
    let mut s = String::with_capacity(2048);
    let mut stat = |name: &str, value: &dyn std::fmt::Display| {
        let _ = write!(s, "STAT {name} {value}\r\n");
    };
    let yes = |b: bool| if b { "yes" } else { "no" };
    let list = |v: &[crate::config::ServerAddr]| -> String {
        if v.is_empty() {
            return "NULL".into();
        }
        v.iter()
            .map(|a| {
                if a.weight == 1 {
                    a.name()
                } else {
                    format!("{}:{}", a.name(), a.weight)
                }
            })
            .collect::<Vec<_>>()
            .join(",")
    };
    let path = |p: &Option<std::path::PathBuf>| {
        p.as_ref()
            .map_or_else(|| "NULL".to_string(), |p| p.display().to_string())
    };
    let tcp = tcp.or_else(|| cfg.tcp_addr());
    stat("maxconns", &cfg.max_conns);
    stat("tcpport", &tcp.map_or(0, |a| a.port()));
    stat(
        "inter",
        &tcp.map_or_else(|| "NULL".to_string(), |a| a.ip().to_string()),
    );
    stat("domain_socket", &path(&cfg.unix_socket));
    stat("verbosity", &cfg.verbose);
    stat("num_threads", &p.threads);
    stat("item_size_max", &cfg.max_item_size);
    // memcached's word for serving text and binary clients on one port,
    // each connection by its first byte (its default, -B auto).
    stat("binding_protocol", &"auto-negotiate");
    stat("servers", &list(&cfg.servers));
    stat("backups", &list(&cfg.backups));
    stat(
        "distribution",
        &match cfg.distribution {
            Distribution::Modula => "modula",
            Distribution::Ketama => "ketama",
        },
    );
    stat("hash", &cfg.hash.map_or("default", |h| h.name()));
    stat("hash_tag", &cfg.hash_tag.as_deref().unwrap_or("NULL"));
    stat("max_server_conns", &cfg.max_server_conns);
    stat("upstream_conns", &cfg.upstream_conns);
    stat("connect_timeout", &secs(cfg.connect_timeout));
    stat("request_timeout", &secs(cfg.request_timeout));
    stat("failure_limit", &cfg.failure_limit);
    stat("retry_interval", &secs(cfg.retry_interval));
    stat("dns_refresh", &secs(cfg.dns_refresh));
    stat("migrate_window", &secs(cfg.migrate_window));
    stat("hedge", &yes(cfg.hedge));
    stat("hedge_budget", &format!("{}%", cfg.hedge_budget * 100.0));
    stat("resync", &yes(cfg.resync));
    stat("shutdown_timeout", &secs(cfg.shutdown_timeout));
    stat(
        "io_backend_setting",
        &match cfg.io_backend {
            IoBackend::Auto => "auto",
            IoBackend::Uring => "uring",
            IoBackend::Epoll => "epoll",
        },
    );
    stat("io_backend", &p.backend);
    stat(
        "metrics_listen",
        &cfg.metrics_listen.as_deref().unwrap_or("NULL"),
    );
    stat("latency_stats", &yes(cfg.latency_timing()));
    stat("config_file", &path(&cfg.config_file));
    stat("config_generation", &p.config_generation);
    stat("pid_file", &path(&cfg.pid_file));
    stat("user", &cfg.user.as_deref().unwrap_or("NULL"));
    s.push_str("END\r\n");
    s
}

/// Percentiles `stats proxy` shows for each histogram, with their suffixes.
const PERCENTILES: [(f64, &str); 4] = [(0.5, "p50"), (0.9, "p90"), (0.99, "p99"), (0.999, "p999")];

/// Render `stats proxy`: memring's own counters, read-through results, each
/// server's block, and latency percentiles (microseconds, interpolated in
/// the histogram buckets as Prometheus does) for every command seen and every
/// server. `servers` and `snap.servers` list the same servers in order.
pub fn render_proxy(
    cores: &[CoreStats],
    servers: &[ServerView<'_>],
    snap: &Snapshot,
    now: Instant,
) -> String {
    let mut s = String::with_capacity(4096);
    let mut stat = |name: &str, value: &dyn std::fmt::Display| {
        let _ = write!(s, "STAT {name} {value}\r\n");
    };
    // Read-throughs by result come from the metrics (`hits` is the same
    // count as the counter of that name, so it is written once).
    for &c in Counter::ALL {
        if c.wire_name().starts_with("proxy_") && c != Counter::ReadThroughHits {
            let v: u64 = cores.iter().map(|core| core.get(c)).sum();
            stat(c.wire_name(), &v);
        }
    }
    for r in ReadThrough::ALL {
        let plural = match r {
            ReadThrough::Hit => "hits",
            ReadThrough::Miss => "misses",
            ReadThrough::Error => "errors",
        };
        stat(
            &format!("proxy_read_through_{plural}"),
            &snap.read_through[*r as usize],
        );
    }
    stat("proxy_latency_recorded", &u8::from(snap.timing));
    stat("proxy_servers", &servers.len());
    let pct = |h: &HistogramSnapshot,
               stat: &mut dyn FnMut(&str, &dyn std::fmt::Display),
               prefix: &str| {
        stat(&format!("{prefix}_count"), &h.count());
        if h.count() > 0 {
            let mean = h.sum_ns as f64 / h.count() as f64 / 1000.0;
            stat(&format!("{prefix}_mean_us"), &format!("{mean:.1}"));
        }
        for (q, name) in PERCENTILES {
            if let Some(d) = h.quantile(q) {
                let us = d.as_nanos() as f64 / 1000.0;
                stat(&format!("{prefix}_{name}_us"), &format!("{us:.1}"));
            }
        }
    };
    for (i, (v, m)) in servers.iter().zip(&snap.servers).enumerate() {
        let h = v.health;
        stat(&format!("server_{i}:address"), &v.name);
        stat(&format!("server_{i}:role"), &v.role.as_str());
        stat(&format!("server_{i}:state"), &h.state().as_str());
        stat(&format!("server_{i}:dirty"), &u8::from(h.is_dirty()));
        stat(
            &format!("server_{i}:since_state_change"),
            &secs(h.since_change(now)),
        );
        stat(
            &format!("server_{i}:failures"),
            &h.failures.load(Ordering::Relaxed),
        );
        stat(
            &format!("server_{i}:failovers"),
            &h.failovers.load(Ordering::Relaxed),
        );
        stat(&format!("server_{i}:flushes"), &m.health.flushes);
        reasons(&m.health, &mut |name, v| {
            stat(&format!("server_{i}:{name}"), &v)
        });
        for k in UpstreamErrorKind::ALL {
            stat(
                &format!("server_{i}:errors_{}", k.label()),
                &m.errors[*k as usize],
            );
        }
        for h in HedgeResult::ALL {
            stat(
                &format!("server_{i}:hedges_{}", h.label()),
                &m.hedges[*h as usize],
            );
        }
        if snap.timing {
            pct(&m.upstream, &mut stat, &format!("server_{i}:latency"));
        }
    }
    if snap.timing {
        for (c, h) in Command::ALL.iter().zip(&snap.requests) {
            if h.count() > 0 {
                pct(h, &mut stat, &format!("latency_{}", c.label()));
            }
        }
    }
    s.push_str("END\r\n");
    s
}

/// A server's ejections and suspicions by reason (`ejections_timeout`,
/// `suspects`, `suspects_missed_write`, `suspects_cleared`, ...).
fn reasons(c: &Counters, out: &mut dyn FnMut(&str, u64)) {
    for r in Ejection::EJECTIONS {
        out(
            &format!("ejections_{}", r.as_str()),
            c.ejected_for[r as usize],
        );
    }
    out("suspects", c.suspects);
    for r in Ejection::SUSPICIONS {
        out(
            &format!("suspects_{}", r.as_str()),
            c.suspected_for[r as usize],
        );
    }
    out("suspects_cleared", c.suspects_cleared);
}

fn secs(d: Duration) -> String {
    format!("{}.{:03}", d.as_secs(), d.subsec_millis())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn render_sums_cores_and_lists_servers() {
        let cores = vec![CoreStats::default(), CoreStats::default()];
        cores[0].incr(Counter::CmdGet);
        cores[1].add(Counter::CmdGet, 2);
        cores[1].curr_connections.store(3, Ordering::Relaxed);
        let t0 = Instant::now();
        let h = Health::new(t0);
        let servers = [ServerView {
            name: "127.0.0.1:1",
            role: Role::Backup,
            pool: "default",
            health: &h,
            leaving: false,
        }];
        let p = ProcessView {
            pid: 7,
            started: t0,
            now_unix: 1,
            threads: 2,
            max_connections: 4096,
            backend: "io_uring",
            config_generation: 0,
            rusage: (Duration::from_micros(1_500_001), Duration::from_micros(20)),
            migration: None,
        };
        let out = render(&cores, &servers, &p, t0 + Duration::from_secs(5));
        assert!(out.starts_with("STAT pid 7\r\nSTAT uptime 5\r\n"));
        assert!(out.contains("STAT cmd_get 3\r\n"));
        assert!(out.contains("STAT curr_connections 3\r\n"));
        assert!(out.contains("STAT server_0:address 127.0.0.1:1\r\n"));
        assert!(out.contains("STAT server_0:role backup\r\n"));
        assert!(out.contains("STAT server_0:state up\r\n"));
        assert!(out.contains("STAT server_0:since_state_change 5.000\r\n"));
        for want in [
            "STAT rusage_user 1.500001\r\n",
            "STAT rusage_system 0.000020\r\n",
            "STAT server_0:ejections_connect 0\r\n",
            "STAT server_0:ejections_drain_failed 0\r\n",
            "STAT server_0:suspects 0\r\n",
            "STAT server_0:suspects_timeout 0\r\n",
            "STAT server_0:suspects_missed_write 0\r\n",
            "STAT server_0:suspects_cleared 0\r\n",
            "STAT server_0:last_suspect none\r\n",
        ] {
            assert!(out.contains(want), "missing {want:?} in {out}");
        }
        assert!(out.ends_with("END\r\n"));
        // A stuck server: suspect, then ejected by its failed probe.
        let policy = crate::upstream::HealthPolicy::default();
        for _ in 0..policy.failure_limit {
            h.record_failure(t0, &policy, Ejection::Timeout);
        }
        let probe = h.try_claim_probe(t0).expect("a suspect is probed at once");
        h.probe_failed(t0, &policy, probe, Ejection::Timeout, 0.5);
        let out = render(&cores, &servers, &p, t0);
        for want in [
            "STAT server_0:state down\r\n",
            "STAT server_0:ejections 1\r\n",
            "STAT server_0:ejections_timeout 1\r\n",
            "STAT server_0:last_ejection timeout\r\n",
            "STAT server_0:suspects 1\r\n",
            "STAT server_0:suspects_timeout 1\r\n",
            "STAT server_0:last_suspect timeout\r\n",
        ] {
            assert!(out.contains(want), "missing {want:?} in {out}");
        }
        cores[0].reset();
        assert_eq!(cores[0].get(Counter::CmdGet), 0);
    }

    #[test]
    fn proxy_group_shows_servers_and_interpolated_percentiles() {
        use crate::metrics::{CoreMetrics, ProcessCounters, ServerInput, ServerMetrics};
        let cores = vec![CoreStats::default()];
        cores[0].incr(Counter::Failovers);
        let m = [CoreMetrics::default()];
        for _ in 0..100 {
            m[0].record_request(Command::Get, Duration::from_micros(15));
        }
        let sm = ServerMetrics::new(1);
        sm.upstream_error(0, UpstreamErrorKind::Timeout);
        let t0 = Instant::now();
        let h = Health::new(t0);
        let policy = crate::upstream::HealthPolicy::default();
        for _ in 0..policy.failure_limit {
            h.record_failure(t0, &policy, Ejection::Connect);
        }
        let views = [ServerView {
            name: "127.0.0.1:1",
            role: Role::Primary,
            pool: "default",
            health: &h,
            leaving: false,
        }];
        let inputs = [ServerInput {
            name: "127.0.0.1:1",
            role: Role::Primary,
            pool: "default",
            state: h.state(),
            health: h.counters(),
            metrics: &sm,
        }];
        let snap = Snapshot::take(&m, &inputs, ProcessCounters::default(), "epoll", true);
        let out = render_proxy(&cores, &views, &snap, t0);
        for want in [
            "STAT proxy_failovers 1\r\n",
            "STAT proxy_latency_recorded 1\r\n",
            "STAT server_0:state down\r\n",
            "STAT server_0:errors_timeout 1\r\n",
            "STAT server_0:hedges_won 0\r\n",
            "STAT server_0:ejections_connect 1\r\n",
            "STAT server_0:ejections_timeout 0\r\n",
            "STAT server_0:suspects 0\r\n",
            "STAT server_0:latency_count 0\r\n",
            "STAT latency_get_count 100\r\n",
            "STAT latency_get_mean_us 15.0\r\n",
            // All in the 10..20 us bucket: rank 50 of 100 is its middle.
            "STAT latency_get_p50_us 15.0\r\n",
            "STAT latency_get_p99_us 19.9\r\n",
        ] {
            assert!(out.contains(want), "missing {want:?} in {out}");
        }
        assert!(!out.contains("latency_set"), "unseen commands are left out");
        assert!(out.ends_with("END\r\n"));
    }

    #[test]
    fn hot_keys_print_as_sent_or_in_base64() {
        let keys = [
            HotView {
                key: b"user:1".to_vec(),
                rate: 1234.4,
                pool: "default".into(),
                primary: "10.0.0.1:11211".into(),
                spread: true,
            },
            HotView {
                key: b"a b".to_vec(),
                rate: 7.0,
                pool: "sessions".into(),
                primary: "10.0.0.2:11211".into(),
                spread: false,
            },
        ];
        assert_eq!(
            render_hot_keys(&keys),
            "STAT hotkey_0:key user:1\r\nSTAT hotkey_0:reads_per_second 1234\r\n\
             STAT hotkey_0:pool default\r\nSTAT hotkey_0:primary 10.0.0.1:11211\r\nSTAT hotkey_0:spread 1\r\n\
             STAT hotkey_1:key YSBi\r\nSTAT hotkey_1:base64 1\r\n\
             STAT hotkey_1:reads_per_second 7\r\nSTAT hotkey_1:pool sessions\r\n\
             STAT hotkey_1:primary 10.0.0.2:11211\r\nSTAT hotkey_1:spread 0\r\nEND\r\n"
        );
        assert_eq!(render_hot_keys(&[]), "END\r\n");
    }

    #[test]
    fn route_names_the_servers_their_states_and_where_reads_go() {
        use crate::upstream::State;
        let view = |p: State, b: Option<State>| RouteView {
            pool: "default",
            primary: ("10.0.0.1:11211", p),
            backup: b.map(|st| ("10.0.0.2:11211", st)),
            earlier: Vec::new(),
        };
        assert_eq!(
            render_route(&view(State::Up, Some(State::Up))),
            "STAT pool default\r\nSTAT primary 10.0.0.1:11211\r\nSTAT primary_state up\r\n\
             STAT backup 10.0.0.2:11211\r\nSTAT backup_state up\r\nSTAT reads_from primary\r\nEND\r\n"
        );
        for (p, b, want) in [
            (State::Suspect, Some(State::Up), "backup"),
            (State::Draining, Some(State::Up), "backup"),
            (State::Down, Some(State::Down), "none"),
            (State::Down, None, "none"),
        ] {
            let out = render_route(&view(p, b));
            assert!(
                out.contains(&format!("STAT reads_from {want}\r\n")),
                "{out}"
            );
        }
        assert!(!render_route(&view(State::Up, None)).contains("backup"));
        // A migration window: the earlier owners, newest first.
        let mut moved = view(State::Up, None);
        moved.earlier = vec![
            ("10.0.0.9:11211", State::Up),
            ("10.0.0.8:11211", State::Down),
        ];
        assert!(render_route(&moved).ends_with(
            "STAT reads_from primary\r\nSTAT earlier 10.0.0.9:11211\r\nSTAT earlier_state up\r\n\
             STAT earlier 10.0.0.8:11211\r\nSTAT earlier_state down\r\nEND\r\n"
        ));
    }

    #[test]
    fn settings_group_uses_memcached_names_and_one_word_values() {
        let cfg = Config {
            servers: vec![
                crate::config::ServerAddr {
                    host: "10.0.0.1".into(),
                    port: 11211,
                    weight: 1,
                    alias: None,
                    set: false,
                },
                crate::config::ServerAddr {
                    host: "::1".into(),
                    port: 11212,
                    weight: 3,
                    alias: None,
                    set: false,
                },
            ],
            ..Config::default()
        };
        let p = ProcessView {
            pid: 1,
            started: Instant::now(),
            now_unix: 0,
            threads: 2,
            max_connections: 4096,
            backend: "epoll",
            config_generation: 4,
            rusage: (Duration::from_micros(1_500_001), Duration::from_micros(20)),
            migration: None,
        };
        let out = render_settings(&cfg, &p, "127.0.0.1:4242".parse().ok());
        for want in [
            "STAT maxconns 4096\r\n",
            "STAT tcpport 4242\r\n",
            "STAT inter 127.0.0.1\r\n",
            "STAT num_threads 2\r\n",
            "STAT item_size_max 1048576\r\n",
            "STAT binding_protocol auto-negotiate\r\n",
            "STAT servers 10.0.0.1:11211,[::1]:11212:3\r\n",
            "STAT backups NULL\r\n",
            "STAT request_timeout 1.000\r\n",
            "STAT resync no\r\n",
            "STAT io_backend epoll\r\n",
            "STAT config_generation 4\r\n",
            "STAT latency_stats no\r\n",
        ] {
            assert!(out.contains(want), "missing {want:?} in {out}");
        }
        for line in out.lines() {
            assert!(line == "END" || line.split(' ').count() == 3, "{line:?}");
        }
    }
}
