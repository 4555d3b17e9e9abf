//! What every core shares: the immutable topology snapshot (servers, rings,
//! tunables; swapped whole on reload) and the process-wide state around it.
//!
//! Across cores only [`Shared`] is shared: immutable data behind `Arc`,
//! relaxed atomics, and a lock taken only when a reload swaps the topology
//! (the cores notice through the generation number, once per loop turn).

use super::tls::{server_name, Dial, TlsConfigs};
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::exclusive::Sections;
use crate::config::{Config, ServerAddr};
use crate::metrics::{CoreMetrics, ServerMetrics};
use crate::proxy::machine::Replicas;
use crate::route::router::{Placement, PoolSpec};
use crate::route::{History, Member, Router};
use crate::stats::CoreStats;
use crate::upstream::{Health, HealthPolicy, Role, ServerId, Verdict};

/// Most iovecs one `writev` may carry (Linux IOV_MAX).
pub(crate) const IOV_MAX: usize = 1024;

/// One server as the current configuration knows it.
#[derive(Clone, Debug)]
pub(crate) struct ServerInfo {
    /// `host:port` as configured.
    pub name: String,
    /// Resolved address.
    pub addr: SocketAddr,
    /// Primary or backup.
    pub role: Role,
    /// The pool it serves (`default`, or a `[pools.NAME]`).
    pub pool: String,
    /// Health, shared by every core and kept across reloads by name.
    pub health: Arc<Health>,
    /// Latency and error metrics, one block per core, kept like `health`.
    pub metrics: Arc<ServerMetrics>,
    /// The name its TLS certificate must carry (its host as configured),
    /// when `--server-tls` is on.
    pub tls_name: Option<rustls::pki_types::ServerName<'static>>,
    /// The host name it was given by, re-resolved every `--dns-refresh`
    /// (None for an address, and for a `dns+` set's members: the set is
    /// resolved instead).
    pub host: Option<String>,
    /// No longer in the configuration, kept while a migration window is
    /// open: keys that lived here are read from it and deleted on writes.
    /// It is on no ring; only `flush_all` and the window's calls reach it.
    pub leaving: bool,
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
    /// Hedge late reads onto backups (`--hedge`).
    pub hedge: bool,
    /// The share of hedgeable reads that may be hedged (`--hedge-budget`).
    pub hedge_budget: f64,
}

/// An immutable routing snapshot, swapped whole on reload.
#[derive(Debug)]
pub(crate) struct Topology {
    /// Bumped by each reload.
    pub generation: u64,
    /// Primaries first, then backups; `ServerId` indexes this.
    pub servers: Vec<ServerInfo>,
    /// Every placement decision (see [`crate::route::Router`]).
    pub router: Router,
    /// Tunables.
    pub settings: Settings,
    /// The configuration this was built from (for `stats settings`).
    pub config: Arc<Config>,
    /// Wakes the prober; kept across reloads like the servers' health.
    pub bell: Arc<ProbeBell>,
    /// The TLS configurations, loaded with this topology (so a SIGHUP
    /// re-reads certificates and keys; a file that fails keeps the running
    /// ones).
    pub tls: TlsConfigs,
    /// Each `dns+` set (by name) and its members, sorted.
    pub sets: Vec<(String, Vec<SocketAddr>)>,
    /// The earlier placements of an open migration window (empty: none).
    pub history: History,
    /// When the open migration window closes (None: no window).
    pub window_until: Option<Instant>,
    /// Opening this topology's window dropped an earlier placement it
    /// could not hold (see [`History::push_newest`]).
    window_broken: bool,
}

/// Wakes the prober thread when a server turns suspect, so that its probe
/// starts at once instead of at the prober's next tick.
#[derive(Debug, Default)]
pub(crate) struct ProbeBell(OnceLock<std::thread::Thread>);

impl ProbeBell {
    /// The calling thread is the prober (once; later calls are ignored).
    pub fn answer_here(&self) {
        let _ = self.0.set(std::thread::current());
    }

    /// Wake the prober if it sleeps (or make its next sleep return at once).
    pub fn ring(&self) {
        if let Some(t) = self.0.get() {
            t.unpark();
        }
    }
}

impl Topology {
    /// Build from a configuration, resolving names and keeping the health of
    /// servers that `previous` already knew.
    pub fn build(
        cfg: &Config,
        previous: Option<&Topology>,
        base: Instant,
    ) -> Result<Topology, TopologyError> {
        let tls = TlsConfigs::load(cfg).map_err(TopologyError::Tls)?;
        let mut servers = Vec::new();
        // `dns+` sets become their members (resolved now, or as the
        // previous topology had them when the name does not resolve).
        let mut sets = Vec::new();
        let mut expand = |list: &[ServerAddr]| -> Result<Vec<ServerAddr>, TopologyError> {
            let mut out = Vec::with_capacity(list.len());
            for s in list {
                if !s.set {
                    out.push(s.clone());
                    continue;
                }
                let name = s.name();
                let members = match resolve_all(&s.host, s.port) {
                    Ok(m) => m,
                    Err(source) => match previous.and_then(|p| p.set_members(&name)) {
                        Some(kept) => {
                            tracing::warn!(set = %name, error = %source, "cannot resolve a dns+ set: keeping its last members");
                            kept.to_vec()
                        }
                        None => {
                            return Err(TopologyError::Resolve {
                                server: name,
                                source,
                            })
                        }
                    },
                };
                out.extend(members.iter().map(|a| ServerAddr {
                    host: a.ip().to_string(),
                    port: a.port(),
                    weight: s.weight,
                    alias: None,
                    set: false,
                }));
                sets.push((name, members));
            }
            Ok(out)
        };
        let default = (expand(&cfg.servers)?, expand(&cfg.backups)?);
        let mut pooled = Vec::with_capacity(cfg.pools.len());
        for p in &cfg.pools {
            pooled.push((expand(&p.servers)?, expand(&p.backups)?));
        }
        // The router's numbering: each pool's primaries, then its backups,
        // the default pool first.
        let mut lists = vec![
            ("default", Role::Primary, &default.0),
            ("default", Role::Backup, &default.1),
        ];
        for (p, (primaries, backups)) in cfg.pools.iter().zip(&pooled) {
            lists.push((p.name.as_str(), Role::Primary, primaries));
            lists.push((p.name.as_str(), Role::Backup, backups));
        }
        for (pool, role, list) in lists {
            for s in list.iter() {
                let name = s.name();
                let addr = resolve(&s.host, s.port).map_err(|source| TopologyError::Resolve {
                    server: name.clone(),
                    source,
                })?;
                if let Some(twin) = servers.iter().find(|o: &&ServerInfo| o.addr == addr) {
                    return Err(TopologyError::Twin {
                        first: twin.name.clone(),
                        second: name,
                        addr,
                    });
                }
                let known = previous
                    .and_then(|p| p.servers.iter().find(|o| o.name == name && o.role == role));
                // A server the previous topology did not have (by name and
                // role) and that a reload brings in is flushed before it
                // serves: it may be one that left and came back holding values
                // from before it left, and nothing recorded what it missed.
                let health = match (known, previous) {
                    (Some(o), _) => o.health.clone(),
                    (None, Some(_)) => {
                        tracing::info!(server = %name, role = role.as_str(), "server added by reload: out of service until it is flushed");
                        Arc::new(Health::added_by_reload(
                            base,
                            previous.map_or(0, |p| p.generation + 1),
                        ))
                    }
                    (None, None) => Arc::new(Health::new(base)),
                };
                let metrics = known
                    .map(|o| o.metrics.clone())
                    .unwrap_or_else(|| Arc::new(ServerMetrics::new(cfg.threads.max(1))));
                let tls_name = match cfg.server_tls {
                    true => Some(server_name(&s.host).ok_or_else(|| TopologyError::TlsName {
                        server: name.clone(),
                        host: s.host.clone(),
                    })?),
                    false => None,
                };
                servers.push(ServerInfo {
                    name,
                    addr,
                    role,
                    pool: pool.to_string(),
                    health,
                    metrics,
                    tls_name,
                    host: s
                        .host
                        .parse::<std::net::IpAddr>()
                        .is_err()
                        .then(|| s.host.clone()),
                    leaving: false,
                });
            }
        }
        let members = |list: &[crate::config::ServerAddr]| -> Vec<Member> {
            // Name points like libmemcached and nutcracker (`host` alone on
            // port 11211, or the server's nutcracker name when it has one),
            // so a fleet moving behind memring keeps its keys.
            list.iter()
                .map(|s| match &s.alias {
                    Some(name) => Member::new(name, s.weight),
                    None => Member::for_nutcracker(&s.name(), s.weight),
                })
                .collect()
        };
        let placement = |distribution, hash, tag: &Option<String>| Placement {
            distribution,
            hash,
            hash_tag: tag
                .as_deref()
                .and_then(|t| <[u8; 2]>::try_from(t.as_bytes()).ok()),
        };
        let all: Vec<(String, Placement, Vec<Member>, Vec<Member>)> = std::iter::once((
            "default".to_string(),
            placement(cfg.distribution, cfg.hash, &cfg.hash_tag),
            members(&default.0),
            members(&default.1),
        ))
        .chain(
            cfg.pools
                .iter()
                .zip(&pooled)
                .map(|(p, (primaries, backups))| {
                    (
                        p.name.clone(),
                        placement(p.distribution, p.hash, &p.hash_tag),
                        members(primaries),
                        members(backups),
                    )
                }),
        )
        .collect();
        let specs: Vec<PoolSpec<'_>> = all
            .iter()
            .map(|(name, how, primaries, backups)| PoolSpec {
                name,
                how: *how,
                primaries,
                backups,
            })
            .collect();
        let routes: Vec<(&[u8], usize)> = cfg
            .routes
            .iter()
            .filter_map(|r| {
                let pool = all.iter().position(|(name, ..)| *name == r.pool)?;
                Some((r.prefix.as_bytes(), pool))
            })
            .collect();
        let mut t = Topology {
            generation: previous.map_or(0, |p| p.generation + 1),
            router: Router::new(&specs, &routes),
            servers,
            settings: Settings {
                connect_timeout: cfg.connect_timeout,
                request_timeout: cfg.request_timeout,
                policy: HealthPolicy {
                    failure_limit: cfg.failure_limit,
                    retry_interval: cfg.retry_interval,
                    max_retry_interval: cfg.retry_interval.max(Duration::from_secs(5)),
                    missed_keys_limit: cfg.missed_keys_limit,
                },
                conns_per_server: cfg.upstream_conns.clamp(1, cfg.max_server_conns.max(1)),
                resync: cfg.resync,
                hedge: cfg.hedge,
                hedge_budget: cfg.hedge_budget,
            },
            config: Arc::new(cfg.clone()),
            bell: previous.map_or_else(Arc::default, |p| p.bell.clone()),
            tls,
            sets,
            history: History::default(),
            window_until: None,
            window_broken: false,
        };
        if let Some(p) = previous {
            t.remember(p, Instant::now());
        }
        Ok(t)
    }

    /// Open or carry the migration window as this topology replaces
    /// `previous`: a change of placement (with `--migrate-window` above
    /// zero) remembers the previous placement, newest first, on top of the
    /// ones an open window already held, and opens the window for another
    /// `--migrate-window`; a reload that moves nothing carries an open
    /// window as it is. The servers an earlier placement names that this
    /// configuration no longer has are kept, as leaving servers, at the end
    /// of `servers` (a server is known by its address).
    fn remember(&mut self, previous: &Topology, now: Instant) {
        let window = self.config.migrate_window;
        let moved = self.placement_changed(previous);
        if window.is_zero() || (!moved && previous.history.is_empty()) {
            return;
        }
        // The previous placement's servers (its live ones, numbered first)
        // and those its own window still reads from.
        let live = previous.servers.iter().take_while(|s| !s.leaving).count() as u32;
        let mut map: Vec<Option<u32>> = vec![None; previous.servers.len()];
        let needed = previous
            .history
            .servers()
            .chain((0..live).filter(|_| moved));
        for n in needed {
            let (Some(slot), Some(s)) = (map.get_mut(n as usize), previous.servers.get(n as usize))
            else {
                continue;
            };
            if slot.is_some() {
                continue;
            }
            let id = match self.servers.iter().position(|o| o.addr == s.addr) {
                Some(i) => i,
                None => {
                    self.servers.push(ServerInfo {
                        leaving: true,
                        ..s.clone()
                    });
                    self.servers.len() - 1
                }
            };
            *slot = Some(id as u32);
        }
        let mut history = previous.history.clone();
        history.renumber(|n| {
            map.get(n as usize)
                .copied()
                .flatten()
                .unwrap_or(crate::route::history::GONE)
        });
        if moved {
            let ids = (0..live)
                .map(|n| {
                    map.get(n as usize)
                        .copied()
                        .flatten()
                        .unwrap_or(crate::route::history::GONE)
                })
                .collect();
            self.window_broken = history.push_newest(previous.router.clone(), ids);
            self.window_until = Some(now + window);
        } else {
            self.window_until = previous.window_until;
        }
        self.history = history;
    }

    /// This topology with its migration window closed: the leaving servers
    /// and the earlier placements dropped (the next generation).
    pub fn window_closed(&self) -> Topology {
        Topology {
            generation: self.generation + 1,
            servers: self
                .servers
                .iter()
                .filter(|s| !s.leaving)
                .cloned()
                .collect(),
            router: self.router.clone(),
            settings: self.settings,
            config: self.config.clone(),
            bell: self.bell.clone(),
            tls: self.tls.clone(),
            sets: self.sets.clone(),
            history: History::default(),
            window_until: None,
            window_broken: false,
        }
    }

    /// The servers that held `key` under the open window's earlier
    /// placements and are not `rep` now, newest first (none without a
    /// window). `key` is in the pool of `rep`'s primary.
    pub fn earlier_owners(&self, key: &[u8], base64: bool, rep: Replicas) -> crate::route::Owners {
        if self.history.is_empty() {
            return crate::route::Owners::default();
        }
        let Some(pool) = self
            .servers
            .get(rep.primary.index())
            .map(|s| s.pool.as_str())
        else {
            return crate::route::Owners::default();
        };
        self.history
            .owners(pool, key, base64, rep.primary.0, rep.backup.map(|b| b.0))
    }

    /// The members a `dns+` set (by its name) had when this topology was
    /// built.
    pub fn set_members(&self, name: &str) -> Option<&[SocketAddr]> {
        self.sets
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, m)| m.as_slice())
    }

    /// How the control plane reaches server `i` (None: no such server).
    pub fn dial(&self, i: usize) -> Option<Dial> {
        let s = self.servers.get(i)?;
        let tls = match (&self.tls.servers, &s.tls_name) {
            (Some(cfg), Some(name)) => Some((cfg.clone(), name.clone())),
            _ => None,
        };
        Some(Dial { addr: s.addr, tls })
    }

    /// Whether this topology places keys differently from `previous`: a
    /// server added, removed, reweighted, renamed or reordered, or another
    /// distribution, hash or hash tag.
    pub fn placement_changed(&self, previous: &Topology) -> bool {
        let (a, b) = (&previous.config, &self.config);
        previous.sets != self.sets
            || a.servers != b.servers
            || a.backups != b.backups
            || a.pools != b.pools
            || a.routes != b.routes
            || a.distribution != b.distribution
            || a.hash != b.hash
            || a.hash_tag != b.hash_tag
    }

    /// Settle the servers' "holds no key it does not own" marks as this
    /// topology replaces `previous` (a reload about to be installed), and
    /// say whether keys moved, so that a sweep must delete, on every
    /// server, the keys it no longer owns:
    /// - placement unchanged: a server clean under `previous` is clean now;
    /// - placement changed: a server whose sweep for an earlier change did
    ///   not finish may hold copies of keys it lost then and now owns
    ///   again, older than writes made elsewhere meanwhile: it is flushed
    ///   before it serves. The others wait for this change's sweep.
    ///
    /// A change made while a migration window is open (and that the window
    /// could hold) settles nothing: every write of the window deleted the
    /// copies earlier placements left, so those copies are never older than
    /// the last acknowledged write, and the sweep after the window covers
    /// every change it held.
    ///
    /// Returns whether a sweep is due once no window is open: keys moved,
    /// or a window closed (by its timer, or a reload that turned it off).
    pub fn settle_after(&self, previous: &Topology) -> bool {
        let changed = self.placement_changed(previous);
        let closed = !previous.history.is_empty() && self.history.is_empty();
        let chained = changed && !previous.history.is_empty() && !self.window_broken;
        if chained {
            return true;
        }
        for s in self.servers.iter().filter(|s| !s.leaving) {
            let kept = previous
                .servers
                .iter()
                .any(|o| Arc::ptr_eq(&o.health, &s.health));
            if !kept {
                continue;
            }
            if s.health
                .settle_reload(previous.generation, self.generation, changed)
            {
                tracing::warn!(server = %s.name, "keys moved again before this server's sweep finished: out of service until it is flushed");
                self.bell.ring();
            }
        }
        changed || closed
    }

    /// The primary and (if backups exist) the backup of `key`, as the
    /// router places it (`base64`: a meta `b` key, placed by its bytes).
    pub fn replicas(&self, key: &[u8], base64: bool) -> Replicas {
        self.replicas_in(None, key, base64)
    }

    /// [`Topology::replicas`] in pool `pool` when given (a client on that
    /// pool's own listener).
    pub fn replicas_in(&self, pool: Option<usize>, key: &[u8], base64: bool) -> Replicas {
        let r = self.router.route_key_in(pool, key, base64);
        Replicas {
            primary: ServerId(r.primary),
            backup: r.backup.map(ServerId),
        }
    }

    /// A write was acknowledged without `server` (as the request saw it,
    /// `seen`): it logs `key` for the server's rejoin, and a server that was
    /// up turns suspect and is probed at once (see
    /// [`Health::record_missed_write`]).
    pub fn missed_write(
        &self,
        server: ServerId,
        seen: crate::upstream::Observed,
        key: &[u8],
        now: Instant,
    ) {
        let Some(s) = self.servers.get(server.index()) else {
            return;
        };
        let verdict = s
            .health
            .record_missed_write(now, &self.settings.policy, seen, key);
        if verdict == Verdict::Suspected {
            tracing::warn!(server = %s.name, "server missed a write: suspect, out of service until its missed keys are deleted");
            self.bell.ring();
        }
    }

    /// Health of a server.
    pub fn health(&self, id: ServerId) -> &Health {
        &self.servers[id.index()].health
    }
}

/// Every address `host` resolves to, sorted and without repeats (a `dns+`
/// set's members); an error when there is none.
pub(crate) fn resolve_all(host: &str, port: u16) -> std::io::Result<Vec<SocketAddr>> {
    use std::net::ToSocketAddrs;
    let mut all: Vec<SocketAddr> = (host, port).to_socket_addrs()?.collect();
    all.sort_unstable();
    all.dedup();
    if all.is_empty() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            "no address",
        ));
    }
    Ok(all)
}

fn resolve(host: &str, port: u16) -> std::io::Result<SocketAddr> {
    use std::net::ToSocketAddrs;
    (host, port)
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, "no address"))
}

/// Why a topology could not be built from a configuration.
#[derive(Debug)]
pub enum TopologyError {
    /// A server's host name does not resolve.
    Resolve {
        /// The server as configured.
        server: String,
        /// The resolver's error.
        source: std::io::Error,
    },
    /// Two configured servers are one: both resolve to `addr`.
    Twin {
        /// The one configured first.
        first: String,
        /// The other.
        second: String,
        /// Where both resolve.
        addr: SocketAddr,
    },
    /// `--server-tls`: a server's host cannot be a certificate's name.
    TlsName {
        /// The server as configured.
        server: String,
        /// Its host.
        host: String,
    },
    /// A TLS certificate, key or CA file did not load.
    Tls(String),
}

impl std::fmt::Display for TopologyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TopologyError::Resolve { server, source } => {
                write!(f, "cannot resolve server {server}: {source}")
            }
            TopologyError::Twin {
                first,
                second,
                addr,
            } => write!(
                f,
                "servers {first} and {second} are one server: both resolve to {addr}"
            ),
            TopologyError::TlsName { server, host } => write!(
                f,
                "server {server}: '{host}' is not a name a TLS certificate can carry"
            ),
            TopologyError::Tls(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for TopologyError {}

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
    /// Per-key sections of the writes whose copy depends on the primary.
    pub sections: Sections,
    /// Held by whoever reads, rebuilds and swaps the topology (a reload, the
    /// DNS refresher), so that one never installs over the other's change.
    pub updating: std::sync::Mutex<()>,
    /// Client connections allowed: `-n`, or fewer when the open-file limit
    /// cannot cover it (see `limits`).
    pub max_conns: usize,
    /// Unparsed client input buffered on every core (partial requests),
    /// held under `cfg.max_input_memory`.
    pub input_bytes: std::sync::atomic::AtomicUsize,
    /// Each core's hottest keys, published once a second (`--hot-keys`).
    pub hot: Vec<std::sync::Mutex<Vec<crate::upstream::hot::HotKey>>>,
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

/// Point `iov` at the first IOV_MAX buffers of `out`, for one vectored send.
pub(crate) fn fill_iov(iov: &mut Vec<libc::iovec>, out: &VecDeque<Bytes>) {
    iov.clear();
    for b in out {
        if b.is_empty() {
            continue;
        }
        // Buffers that follow each other in memory (pipelined requests cut
        // from one read, replies framed from one receive) become one iovec.
        if let Some(last) = iov.last_mut() {
            if (last.iov_base as usize).wrapping_add(last.iov_len) == b.as_ptr() as usize {
                last.iov_len += b.len();
                continue;
            }
        }
        if iov.len() == IOV_MAX {
            break;
        }
        iov.push(libc::iovec {
            iov_base: b.as_ptr() as *mut libc::c_void,
            iov_len: b.len(),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(ports: &[u16]) -> Config {
        Config {
            servers: ports
                .iter()
                .map(|p| crate::config::parse_server(&format!("127.0.0.1:{p}")).expect("server"))
                .collect(),
            distribution: crate::route::Distribution::Ketama,
            migrate_window: Duration::ZERO,
            ..Config::default()
        }
    }

    #[test]
    fn moving_keys_again_before_a_sweep_flushes_the_unswept_servers() {
        let t0 = Instant::now();
        let g0 = Topology::build(&config(&[1, 2]), None, t0).expect("g0");
        // No change of placement: clean servers stay clean, no sweep.
        let g1 = Topology::build(&config(&[1, 2]), Some(&g0), t0).expect("g1");
        assert!(!g1.settle_after(&g0));
        assert!(g1.servers.iter().all(|s| s.health.clean_through(1)));
        // A server added: keys move; the kept ones wait for the sweep.
        let g2 = Topology::build(&config(&[1, 2, 3]), Some(&g1), t0).expect("g2");
        assert!(g2.settle_after(&g1));
        assert!(g2.servers[0].health.is_up() && !g2.servers[0].health.clean_through(2));
        assert!(
            g2.servers[2].health.clean_through(2),
            "an added server is flushed, so clean"
        );
        // Server 1 swept, server 2 not; keys move back.
        g2.servers[0].health.sweep_done(2, Some(5));
        let g3 = Topology::build(&config(&[1, 2]), Some(&g2), t0).expect("g3");
        assert!(g3.settle_after(&g2));
        assert!(g3.servers[0].health.is_up(), "swept: serves on");
        assert_eq!(
            g3.servers[1].health.state(),
            crate::upstream::State::Down,
            "unswept: flushed first"
        );
        assert_eq!(g3.servers[0].health.counters().swept_keys, 5);
    }

    fn windowed(ports: &[u16]) -> Config {
        Config {
            migrate_window: Duration::from_secs(300),
            ..config(ports)
        }
    }

    /// Keys `key:0..n` whose primary changed between `a` and `b`, with the
    /// earlier owners `b` names for them.
    fn moved(a: &Topology, b: &Topology, n: usize) -> Vec<(u32, u32, Vec<u32>)> {
        (0..n)
            .filter_map(|i| {
                let key = format!("key:{i}");
                let (was, now) = (
                    a.replicas(key.as_bytes(), false),
                    b.replicas(key.as_bytes(), false),
                );
                let owners = b.earlier_owners(key.as_bytes(), false, now);
                (was.primary != now.primary)
                    .then(|| (was.primary.0, now.primary.0, owners.as_slice().to_vec()))
            })
            .collect()
    }

    #[test]
    fn a_reload_that_moves_keys_opens_a_window_on_the_old_placement() {
        let t0 = Instant::now();
        let g0 = Topology::build(&windowed(&[1, 2, 3]), None, t0).expect("g0");
        assert!(g0.history.is_empty() && g0.window_until.is_none());
        // Grow: the new server takes keys; each moved key names its old owner.
        let g1 = Topology::build(&windowed(&[1, 2, 3, 4]), Some(&g0), t0).expect("g1");
        assert!(g1.window_until.is_some());
        assert!(g1.servers.iter().all(|s| !s.leaving), "nobody left");
        let m = moved(&g0, &g1, 3000);
        assert!(!m.is_empty());
        for (was, now, owners) in &m {
            assert_eq!(*now, 3);
            assert_eq!(
                owners,
                &[*was],
                "by address, the old owner keeps its number"
            );
        }
        // Keys that did not move have no earlier owner.
        let key = (0..3000)
            .map(|i| format!("key:{i}"))
            .find(|k| g0.replicas(k.as_bytes(), false) == g1.replicas(k.as_bytes(), false))
            .expect("some key stays");
        let rep = g1.replicas(key.as_bytes(), false);
        assert!(g1.earlier_owners(key.as_bytes(), false, rep).is_empty());
        // A reload that moves keys inside the window settles nothing (no
        // flush), and chains: shrink to two, the third server leaving.
        assert!(g1.settle_after(&g0));
        let g2 = Topology::build(&windowed(&[1, 2]), Some(&g1), t0).expect("g2");
        assert!(g2.settle_after(&g1), "keys moved");
        // (:4 is still out, waiting for the flush every added server gets.)
        assert!(
            g2.servers
                .iter()
                .filter(|s| !s.leaving)
                .all(|s| s.health.is_up()),
            "no flush inside the window"
        );
        assert_eq!(g2.history.len(), 2);
        let leaving: Vec<&str> = g2
            .servers
            .iter()
            .filter(|s| s.leaving)
            .map(|s| s.name.as_str())
            .collect();
        assert_eq!(leaving, ["127.0.0.1:3", "127.0.0.1:4"]);
        // A key that lived on 3 under g0 and on 4 under g1 names both,
        // newest first, as g2 numbers them.
        let by_name = |n: &str| g2.servers.iter().position(|s| s.name == n).expect("server") as u32;
        let chain = (0..3000).map(|i| format!("key:{i}")).find_map(|k| {
            let (a, b) = (
                g0.replicas(k.as_bytes(), false),
                g1.replicas(k.as_bytes(), false),
            );
            (a.primary.0 == 2 && b.primary.0 == 3).then_some(k)
        });
        let k = chain.expect("a key on :3 then :4");
        let rep = g2.replicas(k.as_bytes(), false);
        assert_eq!(
            g2.earlier_owners(k.as_bytes(), false, rep).as_slice(),
            [by_name("127.0.0.1:4"), by_name("127.0.0.1:3")]
        );
        // A reload that moves nothing carries the window as it is.
        let g3 = Topology::build(&windowed(&[1, 2]), Some(&g2), t0).expect("g3");
        assert!(!g3.settle_after(&g2));
        assert_eq!(g3.history.len(), 2);
        assert_eq!(g3.window_until, g2.window_until);
        // Closed: the leaving servers and the history go.
        let g4 = g3.window_closed();
        assert_eq!(g4.generation, g3.generation + 1);
        assert!(g4.history.is_empty() && g4.window_until.is_none());
        assert_eq!(g4.servers.len(), 2);
        assert!(g4.settle_after(&g3), "a closed window is swept");
    }

    #[test]
    fn without_a_window_or_beyond_its_depth_the_old_rules_hold() {
        let t0 = Instant::now();
        // --migrate-window 0: no history, and the sweep rules of before.
        let g0 = Topology::build(&config(&[1, 2]), None, t0).expect("g0");
        let g1 = Topology::build(&config(&[1, 2, 3]), Some(&g0), t0).expect("g1");
        assert!(g1.history.is_empty() && g1.window_until.is_none());
        // Chained changes past the window's depth break it: the unswept
        // servers are flushed, as without a window.
        let mut prev = Topology::build(&windowed(&[1, 2]), None, t0).expect("w0");
        let sizes: [&[u16]; 4] = [&[1, 2, 3], &[1, 2], &[1, 2, 3], &[1, 2]];
        for (i, ports) in sizes.iter().enumerate() {
            let next = Topology::build(&windowed(ports), Some(&prev), t0).expect("next");
            next.settle_after(&prev);
            // The servers every placement kept (an added one waits for its
            // flush anyway).
            let kept = |s: &&ServerInfo| ["127.0.0.1:1", "127.0.0.1:2"].contains(&s.name.as_str());
            let flushed = next.servers.iter().filter(kept).any(|s| !s.health.is_up());
            assert_eq!(flushed, i == crate::route::history::DEPTH, "change {i}");
            prev = next;
        }
    }

    #[test]
    fn iovecs_merge_adjacent_buffers_and_stop_at_iov_max() {
        let read = Bytes::from_static(b"get a\r\nget b\r\n");
        let other = Bytes::from(b"get c\r\n".to_vec());
        let out: VecDeque<Bytes> = [
            read.slice(..7),
            Bytes::new(),
            read.slice(7..),
            other.clone(),
        ]
        .into_iter()
        .collect();
        let mut iov = Vec::new();
        fill_iov(&mut iov, &out);
        let got: Vec<(usize, usize)> = iov
            .iter()
            .map(|v| (v.iov_base as usize, v.iov_len))
            .collect();
        assert_eq!(
            got,
            [(read.as_ptr() as usize, 14), (other.as_ptr() as usize, 7)],
            "one request line after another in one read is one iovec"
        );
        // Separate buffers: at most IOV_MAX iovecs; the rest waits.
        let many: VecDeque<Bytes> = (0..IOV_MAX + 5)
            .map(|i| Bytes::from(vec![i as u8; 3]))
            .collect();
        fill_iov(&mut iov, &many);
        assert_eq!(iov.len(), IOV_MAX);
        assert!(iov
            .iter()
            .zip(&many)
            .all(|(v, b)| std::ptr::eq(v.iov_base as *const u8, b.as_ptr())));
    }
}
