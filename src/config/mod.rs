//! Command line (magent's short flags plus long ones) and optional config file
//! -> a validated [`Config`]. All validation lives here.
//!
//! Precedence: command line > `--config` file > defaults (magent's for magent's
//! flags). [`reload`] re-reads the file on SIGHUP and re-applies the original
//! command line over it, keeping the settings in [`RELOAD_KEEPS`].
//!
//! Must not import `server`; it may read the config file from disk.

use std::ffi::OsString;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::route::Distribution;

mod cli;
pub use cli::command;
mod file;
mod nutcracker;
mod value;

pub use value::{
    fmt_duration, MAX_CONNS, MAX_DURATION, MAX_ITEM_SIZE, MAX_SERVER_CONNS, MAX_THREADS,
    MAX_UNIX_PATH, MAX_WEIGHT, MIN_ITEM_SIZE,
};

/// `-p` default (magent's).
pub const DEFAULT_PORT: u16 = 11211;
/// `-l` default (magent's).
pub const DEFAULT_LISTEN: &str = "0.0.0.0";
/// `-n` default (magent's).
pub const DEFAULT_MAX_CONNS: usize = 4096;
/// `-i` default (magent's).
pub const DEFAULT_MAX_SERVER_CONNS: usize = 20;
/// `--upstream-conns` default.
pub const DEFAULT_UPSTREAM_CONNS: usize = 1;
/// `--connect-timeout` default.
pub const DEFAULT_CONNECT_TIMEOUT: &str = "1s";
/// `--request-timeout` default.
pub const DEFAULT_REQUEST_TIMEOUT: &str = "1s";
/// `--max-item-size` default (memcached's `-I` default, 1 MiB).
pub const DEFAULT_MAX_ITEM_SIZE: &str = "1m";
/// Default `--client-buffer`: unsent reply bytes a client may have before it is not read.
pub const DEFAULT_CLIENT_BUFFER: &str = "4m";
/// Default `--max-input-memory`: unparsed client input, all clients together.
pub const DEFAULT_MAX_INPUT_MEMORY: &str = "256m";
/// `--failure-limit` default.
pub const DEFAULT_FAILURE_LIMIT: u32 = 2;
/// `--retry-interval` default.
pub const DEFAULT_RETRY_INTERVAL: &str = "500ms";
/// `--dns-refresh` default.
pub const DEFAULT_DNS_REFRESH: &str = "30s";
/// `--migrate-window` default.
pub const DEFAULT_MIGRATE_WINDOW: &str = "5m";
/// `--hedge-budget` default.
pub const DEFAULT_HEDGE_BUDGET: &str = "5%";
/// `--shutdown-timeout` default.
pub const DEFAULT_SHUTDOWN_TIMEOUT: &str = "5s";
/// `--tls-handshake-timeout` default.
pub const DEFAULT_TLS_HANDSHAKE_TIMEOUT: &str = "10s";
/// `--missed-keys-limit` default: 64 MiB per server, about 750 000 keys of
/// 40 bytes (each key costs its length plus
/// [`crate::upstream::missed::PER_KEY_OVERHEAD`]).
pub const DEFAULT_MISSED_KEYS_LIMIT: &str = "64m";

/// One memcached server: `host:port[:weight] [name]`, host may be a name
/// or `[v6]`; a nutcracker-style name places the server on the ketama ring
/// by that name instead of its address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerAddr {
    /// Host name or IP literal, without brackets.
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// Ketama weight (default 1).
    pub weight: u32,
    /// The name it is placed by (nutcracker's `host:port:weight name`).
    pub alias: Option<String>,
    /// `dns+NAME:PORT`: every address NAME resolves to is a server (a
    /// Kubernetes headless service), followed as the records change.
    pub set: bool,
}

impl ServerAddr {
    /// The name hashed onto the ring: `host:port` exactly as memcached clients
    /// write it (`[v6]:port` for IPv6 literals); a set's is `dns+host:port`.
    pub fn name(&self) -> String {
        if self.set {
            format!("dns+{}:{}", self.host, self.port)
        } else if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// A pool beside the default one (`[pools.NAME]` in the config file).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PoolConfig {
    /// Its name (the table's key).
    pub name: String,
    /// Its primaries.
    pub servers: Vec<ServerAddr>,
    /// Its backups (may be empty).
    pub backups: Vec<ServerAddr>,
    /// Its distribution.
    pub distribution: Distribution,
    /// Its key hash (None: the distribution's own).
    pub hash: Option<crate::route::KeyHash>,
    /// Its hash tag.
    pub hash_tag: Option<String>,
    /// `listen = "IP:PORT"`: a listener of its own, as in twemproxy: every
    /// key a client sends there is placed in this pool (prefix routes
    /// aside).
    pub listen: Option<String>,
}

/// A prefix route (`[[routes]]`): keys starting with `prefix` go to `pool`
/// (the longest matching prefix wins; other keys go to `default`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteRule {
    /// The key prefix.
    pub prefix: String,
    /// The pool's name (`default` or a `[pools.NAME]`).
    pub pool: String,
}

/// Which I/O backend to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum IoBackend {
    /// io_uring, falling back to epoll with a warning when it is refused.
    #[default]
    Auto,
    /// io_uring or exit with an explanation.
    Uring,
    /// epoll (mio), with the same completion-shaped driver interface.
    Epoll,
}

/// The validated configuration of one memring process.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// `-p`: TCP port (0 disables TCP, as in magent). Default 11211.
    pub port: u16,
    /// `-l`: bind address. Default 0.0.0.0.
    pub listen: String,
    /// `--bind ADDR:PORT`: overrides `-l`/`-p`; port 0 picks a free port.
    pub bind: Option<String>,
    /// `-s`: primaries, at least one.
    pub servers: Vec<ServerAddr>,
    /// `-b`: backups.
    pub backups: Vec<ServerAddr>,
    /// `-k`: ketama, otherwise modula.
    pub distribution: Distribution,
    /// `--hash`: nutcracker's key hash (None: the distribution's own).
    pub hash: Option<crate::route::KeyHash>,
    /// Pools beside the default one (config file only).
    pub pools: Vec<PoolConfig>,
    /// Prefix routes to pools (config file only).
    pub routes: Vec<RouteRule>,
    /// `--hash-tag`: nutcracker's hash tag, two characters (`{}`).
    pub hash_tag: Option<String>,
    /// `-n`: max client connections. Default 4096.
    pub max_conns: usize,
    /// `-i`: max connections kept per server. Default 20.
    pub max_server_conns: usize,
    /// `--upstream-conns`: pipelined connections per server per core (<= `-i`). Default 1.
    pub upstream_conns: usize,
    /// `-f`: unix socket path.
    pub unix_socket: Option<PathBuf>,
    /// `-a`/`--unix-mask`: the unix socket's permission bits (None: as the
    /// umask leaves them).
    pub unix_mask: Option<u32>,
    /// `-u`: user to run as.
    pub user: Option<String>,
    /// `-g`: group to run as.
    pub group: Option<String>,
    /// `-D`: stay in the foreground.
    pub foreground: bool,
    /// `-v` count: 0 warn, 1 info, 2 debug, 3+ trace.
    pub verbose: u8,
    /// `--threads`: runtimes (one per core by default).
    pub threads: usize,
    /// `--connect-timeout`. Default 1s.
    pub connect_timeout: Duration,
    /// `--request-timeout`. Default 1s.
    pub request_timeout: Duration,
    /// `--max-item-size`. Default 1 MiB.
    pub max_item_size: usize,
    /// `--client-buffer`: unsent reply bytes (answered plus expected) past which a
    /// client is not read until it catches up. Default 4 MiB.
    pub client_buffer: usize,
    /// `--max-input-memory`: unparsed client input (partial requests) that
    /// all clients together may hold; past it the largest partial requests
    /// are refused. Default 256 MiB.
    pub max_input_memory: usize,
    /// `--failure-limit`: consecutive failures before a server is taken out
    /// (ejected, or suspect and probed at once when the last was a stuck
    /// connection). Default 2.
    pub failure_limit: u32,
    /// `--retry-interval`: base of the probe backoff for a down server. Default 500ms.
    pub retry_interval: Duration,
    /// `--dns-refresh`: how often server host names are resolved again
    /// (zero: never after start and reload). Default 30s.
    pub dns_refresh: Duration,
    /// `--migrate-window`: how long a reload or DNS change that moves keys
    /// keeps the previous placement, so that a key that misses on its new
    /// owner is read from its old one (zero: off). Default 5m.
    pub migrate_window: Duration,
    /// `--hedge`: send a read whose primary is late to its backup too.
    /// Default on (it acts only where backups exist).
    pub hedge: bool,
    /// `--hedge-budget`: the share of hedgeable reads that may be hedged,
    /// per core over a sliding window (0.0..=1.0). Default 0.05.
    pub hedge_budget: f64,
    /// `--hot-keys`: keep a sketch of the hottest keys read (`stats
    /// hotkeys`, Prometheus). Default on.
    pub hot_keys: bool,
    /// `--hot-key-threshold`: reads per second above which a key that also
    /// takes more than 1 % of a core's reads has its gets alternated
    /// between primary and backup (0: never). Default 1000.
    pub hot_key_threshold: u64,
    /// `--io-backend`.
    pub io_backend: IoBackend,
    /// `--pid-file`.
    pub pid_file: Option<PathBuf>,
    /// `--log-file`: logs are appended there instead of stderr; reopened on SIGHUP.
    pub log_file: Option<PathBuf>,
    /// `--config`: the TOML file this was loaded from (reloaded on SIGHUP).
    pub config_file: Option<PathBuf>,
    /// `--check`: validate and exit.
    pub check: bool,
    /// `--route KEY`: print where KEY goes and exit.
    pub route: Option<String>,
    /// `--shutdown-timeout`: how long in-flight requests may take on SIGTERM. Default 5s.
    pub shutdown_timeout: Duration,
    /// `--resync`: copy a rejoined server's keys back from its partners. Default off.
    pub resync: bool,
    /// `--missed-keys-limit`: bytes of keys a server may miss before its
    /// rejoin falls back from deleting them to `flush_all`. Default 64 MiB.
    pub missed_keys_limit: usize,
    /// `--metrics-listen ADDR:PORT`: serve Prometheus metrics over HTTP there
    /// (canonical `SocketAddr` text). Default off.
    pub metrics_listen: Option<String>,
    /// `--latency-stats`: record latency histograms for `stats proxy` even
    /// without `--metrics-listen` (which implies it). Default off.
    pub latency_stats: bool,
    /// `--log-level`: overrides the level `-v` picks, without `-v`'s
    /// foreground (`RUST_LOG` overrides both).
    pub log_level: Option<String>,
    /// `--tls-listen ADDR:PORT`: a TLS listener beside the plaintext one.
    pub tls_listen: Option<String>,
    /// `--tls-cert`: the TLS listener's certificate chain (PEM).
    pub tls_cert: Option<PathBuf>,
    /// `--tls-key`: the TLS listener's private key (PEM).
    pub tls_key: Option<PathBuf>,
    /// `--tls-ca`: require client certificates signed by this CA (PEM).
    pub tls_ca: Option<PathBuf>,
    /// `--tls-handshake-timeout`: a client that has not finished its TLS
    /// handshake by then is cut. Default 10s.
    pub tls_handshake_timeout: Duration,
    /// `--server-tls`: speak TLS to every server.
    pub server_tls: bool,
    /// `--server-tls-ca`: verify servers against this CA (PEM) instead of
    /// the system's trust store.
    pub server_tls_ca: Option<PathBuf>,
    /// `--server-tls-cert`: a client certificate for the servers (PEM).
    pub server_tls_cert: Option<PathBuf>,
    /// `--server-tls-key`: its private key (PEM).
    pub server_tls_key: Option<PathBuf>,
    /// Notes on the config file for the log (a nutcracker YAML's keys that
    /// were ignored, settings taken from its first pool).
    pub notes: Vec<String>,
    /// The command line this was parsed from (empty when built by hand);
    /// [`reload`] re-applies it over the re-read file so flags keep winning.
    pub argv: Vec<OsString>,
}

/// Why the command line or config file was rejected (exit code 2).
#[derive(Debug)]
pub struct ConfigError {
    /// A message for the operator (or the help text).
    pub msg: String,
    /// Process exit code: 2 for errors, 0 for `--help` / `--version`.
    pub code: i32,
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.msg)
    }
}

impl std::error::Error for ConfigError {}

impl ConfigError {
    /// A configuration error: exit code 2.
    pub fn usage(msg: impl Into<String>) -> ConfigError {
        ConfigError {
            msg: msg.into(),
            code: 2,
        }
    }
}

impl Default for Config {
    /// magent's defaults with no servers (so not valid until servers are added);
    /// handy for tests: `Config { servers, ..Config::default() }`.
    fn default() -> Config {
        Layer::default().finish()
    }
}

impl Config {
    /// The TCP address to listen on: `--bind` if given, else `-l`:`-p`;
    /// `None` when TCP is disabled (`-p 0` without `--bind`).
    pub fn tcp_addr(&self) -> Option<SocketAddr> {
        if let Some(b) = &self.bind {
            return b.parse().ok();
        }
        if self.port == 0 {
            return None;
        }
        let ip: IpAddr = self.listen.parse().ok()?;
        Some(SocketAddr::new(ip, self.port))
    }

    /// The TLS listener's address, if `--tls-listen` is given.
    pub fn tls_addr(&self) -> Option<SocketAddr> {
        self.tls_listen.as_deref().and_then(|a| a.parse().ok())
    }

    /// The metrics endpoint's address, if `--metrics-listen` is given.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_listen.as_deref().and_then(|a| a.parse().ok())
    }

    /// Whether request and upstream latency is recorded (stamped with each
    /// event loop turn's clock; no clock reads of its own).
    pub fn latency_timing(&self) -> bool {
        self.latency_stats || self.metrics_listen.is_some()
    }

    /// The TLS settings fit together (the files themselves are read when
    /// the listener and connections are set up).
    fn validate_tls(&self) -> Result<(), ConfigError> {
        let err = |m: &str| Err(ConfigError::usage(m));
        if let Some(t) = &self.tls_listen {
            if let Err(why) = value::bind(t) {
                return Err(ConfigError::usage(format!(
                    "invalid --tls-listen '{t}': {why}"
                )));
            }
            if self.tls_cert.is_none() || self.tls_key.is_none() {
                return err("--tls-listen needs --tls-cert PATH and --tls-key PATH");
            }
            let twin = self.tls_addr().filter(|a| a.port() != 0);
            if twin.is_some() && twin == self.tcp_addr() {
                return err("--tls-listen and the plaintext listener cannot share an address");
            }
        } else if self.tls_cert.is_some() || self.tls_key.is_some() || self.tls_ca.is_some() {
            return err("--tls-cert, --tls-key and --tls-ca need --tls-listen ADDR:PORT");
        }
        if !self.server_tls
            && (self.server_tls_ca.is_some()
                || self.server_tls_cert.is_some()
                || self.server_tls_key.is_some())
        {
            return err(
                "--server-tls-ca, --server-tls-cert and --server-tls-key need --server-tls",
            );
        }
        if self.server_tls_cert.is_some() != self.server_tls_key.is_some() {
            return err("--server-tls-cert and --server-tls-key go together");
        }
        Ok(())
    }

    /// Cross-field and range checks. [`parse_args`] and [`reload`] run it;
    /// call it on a `Config` built by hand.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let err = |m: String| Err(ConfigError::usage(m));
        if self.servers.is_empty() {
            return err(
                "no servers: give at least one -s HOST:PORT (or servers = [...] in the config file)"
                    .into(),
            );
        }
        for r in &self.routes {
            if r.pool != "default" && !self.pools.iter().any(|p| p.name == r.pool) {
                return err(format!(
                    "route for prefix '{}' names pool '{}', which is not defined ([pools.{}])",
                    r.prefix, r.pool, r.pool
                ));
            }
        }
        let mut listeners: Vec<(SocketAddr, String)> = [
            (self.tcp_addr(), "the plaintext listener".to_string()),
            (self.tls_addr(), "--tls-listen".to_string()),
            (self.metrics_addr(), "--metrics-listen".to_string()),
        ]
        .into_iter()
        .filter_map(|(a, what)| Some((a?, what)))
        .filter(|(a, _)| a.port() != 0)
        .collect();
        for p in &self.pools {
            if p.servers.is_empty() {
                return err(format!("pool '{}' has no servers", p.name));
            }
            let Some(addr) = p
                .listen
                .as_deref()
                .and_then(|l| l.parse::<SocketAddr>().ok())
            else {
                continue;
            };
            if let Some((_, what)) = listeners.iter().find(|(a, _)| *a == addr) {
                return err(format!(
                    "pool '{}' listens on {addr}, which {what} already uses",
                    p.name
                ));
            }
            if addr.port() != 0 {
                listeners.push((addr, format!("pool '{}'", p.name)));
            }
        }
        let mut seen: Vec<((String, u16), &str)> = Vec::new();
        let pooled: Vec<(&Vec<ServerAddr>, &str)> = self
            .pools
            .iter()
            .flat_map(|p| [(&p.servers, "-s"), (&p.backups, "-b")])
            .collect();
        for (list, flag) in [(&self.servers, "-s"), (&self.backups, "-b")]
            .into_iter()
            .chain(pooled)
        {
            for s in list {
                if s.port == 0 || s.weight == 0 || s.weight > MAX_WEIGHT || s.host.is_empty() {
                    return err(format!(
                        "invalid server '{}:{}' ({flag}): port must be 1..=65535, weight 1..={MAX_WEIGHT}",
                        s.name(),
                        s.weight
                    ));
                }
                let id = value::server_identity(s);
                if let Some((_, first)) = seen.iter().find(|(k, _)| *k == id) {
                    let role = |f: &str| {
                        if f == "-s" {
                            "a server (-s, servers =)"
                        } else {
                            "a backup (-b, backups =)"
                        }
                    };
                    return err(if *first == flag {
                        format!(
                            "duplicate server {}: given twice as {}",
                            s.name(),
                            role(flag)
                        )
                    } else {
                        format!(
                            "server {} is given both as {} and as {}",
                            s.name(),
                            role(first),
                            role(flag)
                        )
                    });
                }
                seen.push((id, flag));
            }
        }
        let mut names: Vec<&str> = self
            .servers
            .iter()
            .chain(&self.backups)
            .filter_map(|s| s.alias.as_deref())
            .collect();
        names.sort_unstable();
        if let Some(w) = names.windows(2).find(|w| w[0] == w[1]) {
            return err(format!("server name '{}' is given to two servers", w[0]));
        }
        self.validate_tls()?;
        if self.bind.is_none()
            && self.port == 0
            && self.unix_socket.is_none()
            && self.tls_listen.is_none()
        {
            return err(
                "nothing to listen on: -p 0 disables TCP and neither -f/--unix-socket nor --bind is given"
                    .into(),
            );
        }
        if let Some(b) = &self.bind {
            if let Err(why) = value::bind(b) {
                return err(format!("invalid --bind '{b}': {why}"));
            }
        } else {
            if let Err(why) = value::listen(&self.listen) {
                return err(format!("invalid -l/--listen '{}': {why}", self.listen));
            }
        }
        if let Some(m) = &self.metrics_listen {
            if let Err(why) = value::bind(m) {
                return err(format!("invalid --metrics-listen '{m}': {why}"));
            }
        }
        let range = |flag: &str, v: usize, lo: usize, hi: usize| {
            if v < lo || v > hi {
                err(format!("invalid {flag} {v}: must be in {lo}..={hi}"))
            } else {
                Ok(())
            }
        };
        range("-n/--max-conns", self.max_conns, 1, MAX_CONNS)?;
        range(
            "-i/--max-server-conns",
            self.max_server_conns,
            1,
            MAX_SERVER_CONNS,
        )?;
        range("--upstream-conns", self.upstream_conns, 1, MAX_SERVER_CONNS)?;
        range("--threads", self.threads, 1, MAX_THREADS)?;
        range(
            "--max-item-size",
            self.max_item_size,
            MIN_ITEM_SIZE,
            MAX_ITEM_SIZE,
        )?;
        range(
            "--client-buffer",
            self.client_buffer,
            MIN_ITEM_SIZE,
            MAX_ITEM_SIZE,
        )?;
        range(
            "--max-input-memory",
            self.max_input_memory,
            1 << 20,
            usize::MAX,
        )?;
        if self.upstream_conns > self.max_server_conns {
            return err(format!(
                "--upstream-conns {} is more than -i/--max-server-conns {}",
                self.upstream_conns, self.max_server_conns
            ));
        }
        if self.failure_limit == 0 {
            return err("invalid --failure-limit 0: must be at least 1".into());
        }
        for (flag, d, lo) in [
            (
                "--connect-timeout",
                self.connect_timeout,
                Duration::from_millis(1),
            ),
            (
                "--request-timeout",
                self.request_timeout,
                Duration::from_millis(1),
            ),
            (
                "--retry-interval",
                self.retry_interval,
                Duration::from_millis(1),
            ),
            ("--shutdown-timeout", self.shutdown_timeout, Duration::ZERO),
        ] {
            if d < lo || d > MAX_DURATION {
                return err(format!(
                    "invalid {flag} {}: must be between {} and {}",
                    fmt_duration(d),
                    fmt_duration(lo),
                    fmt_duration(MAX_DURATION)
                ));
            }
        }
        Ok(())
    }
}

/// One source of settings (command line or file): `None` = not given there.
#[derive(Clone, Debug, Default)]
struct Layer {
    port: Option<u16>,
    listen: Option<String>,
    bind: Option<String>,
    servers: Option<Vec<ServerAddr>>,
    backups: Option<Vec<ServerAddr>>,
    distribution: Option<Distribution>,
    hash: Option<crate::route::KeyHash>,
    hash_tag: Option<String>,
    pools: Option<Vec<PoolConfig>>,
    routes: Option<Vec<RouteRule>>,
    max_conns: Option<usize>,
    max_server_conns: Option<usize>,
    upstream_conns: Option<usize>,
    unix_socket: Option<PathBuf>,
    unix_mask: Option<u32>,
    user: Option<String>,
    group: Option<String>,
    foreground: Option<bool>,
    verbose: Option<u8>,
    threads: Option<usize>,
    connect_timeout: Option<Duration>,
    request_timeout: Option<Duration>,
    max_item_size: Option<usize>,
    client_buffer: Option<usize>,
    max_input_memory: Option<usize>,
    failure_limit: Option<u32>,
    retry_interval: Option<Duration>,
    dns_refresh: Option<Duration>,
    migrate_window: Option<Duration>,
    hedge: Option<bool>,
    hedge_budget: Option<f64>,
    hot_keys: Option<bool>,
    hot_key_threshold: Option<u64>,
    io_backend: Option<IoBackend>,
    pid_file: Option<PathBuf>,
    log_file: Option<PathBuf>,
    shutdown_timeout: Option<Duration>,
    resync: Option<bool>,
    missed_keys_limit: Option<usize>,
    metrics_listen: Option<String>,
    latency_stats: Option<bool>,
    log_level: Option<String>,
    tls_listen: Option<String>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    tls_ca: Option<PathBuf>,
    tls_handshake_timeout: Option<Duration>,
    server_tls: Option<bool>,
    server_tls_ca: Option<PathBuf>,
    server_tls_cert: Option<PathBuf>,
    server_tls_key: Option<PathBuf>,
}

impl Layer {
    /// `self` wins where it has a value; lists (`servers`, `backups`) replace, not append.
    fn over(self, lower: Layer) -> Layer {
        macro_rules! each {
            ($($f:ident),*) => { Layer { $($f: self.$f.or(lower.$f)),* } };
        }
        each!(
            port,
            listen,
            bind,
            servers,
            backups,
            distribution,
            hash,
            hash_tag,
            pools,
            routes,
            max_conns,
            max_server_conns,
            upstream_conns,
            unix_socket,
            unix_mask,
            user,
            group,
            foreground,
            verbose,
            threads,
            connect_timeout,
            request_timeout,
            max_item_size,
            client_buffer,
            max_input_memory,
            failure_limit,
            retry_interval,
            dns_refresh,
            migrate_window,
            hedge,
            hedge_budget,
            hot_keys,
            hot_key_threshold,
            io_backend,
            pid_file,
            log_file,
            shutdown_timeout,
            resync,
            missed_keys_limit,
            metrics_listen,
            latency_stats,
            log_level,
            tls_listen,
            tls_cert,
            tls_key,
            tls_ca,
            tls_handshake_timeout,
            server_tls,
            server_tls_ca,
            server_tls_cert,
            server_tls_key
        )
    }

    /// Fill in the defaults. Not validated.
    fn finish(self) -> Config {
        let dur = |d: Option<Duration>, default: &str| {
            d.unwrap_or_else(|| value::duration(default).unwrap_or(Duration::from_secs(1)))
        };
        let verbose = self.verbose.unwrap_or(0);
        Config {
            port: self.port.unwrap_or(DEFAULT_PORT),
            listen: self.listen.unwrap_or_else(|| DEFAULT_LISTEN.to_string()),
            bind: self.bind,
            servers: self.servers.unwrap_or_default(),
            backups: self.backups.unwrap_or_default(),
            distribution: self.distribution.unwrap_or_default(),
            hash: self.hash,
            hash_tag: self.hash_tag,
            pools: self.pools.unwrap_or_default(),
            routes: self.routes.unwrap_or_default(),
            max_conns: self.max_conns.unwrap_or(DEFAULT_MAX_CONNS),
            max_server_conns: self.max_server_conns.unwrap_or(DEFAULT_MAX_SERVER_CONNS),
            upstream_conns: self.upstream_conns.unwrap_or(DEFAULT_UPSTREAM_CONNS),
            unix_socket: self.unix_socket,
            unix_mask: self.unix_mask,
            user: self.user,
            group: self.group,
            // magent: -v also keeps it in the foreground (its logs go to stderr).
            foreground: self.foreground.unwrap_or(false) || verbose > 0,
            verbose,
            threads: self.threads.unwrap_or_else(default_threads),
            connect_timeout: dur(self.connect_timeout, DEFAULT_CONNECT_TIMEOUT),
            request_timeout: dur(self.request_timeout, DEFAULT_REQUEST_TIMEOUT),
            max_item_size: self
                .max_item_size
                .unwrap_or_else(|| value::size(DEFAULT_MAX_ITEM_SIZE).unwrap_or(1 << 20)),
            client_buffer: self
                .client_buffer
                .unwrap_or_else(|| value::size(DEFAULT_CLIENT_BUFFER).unwrap_or(4 << 20)),
            max_input_memory: self
                .max_input_memory
                .unwrap_or_else(|| value::size(DEFAULT_MAX_INPUT_MEMORY).unwrap_or(256 << 20)),
            failure_limit: self.failure_limit.unwrap_or(DEFAULT_FAILURE_LIMIT),
            retry_interval: dur(self.retry_interval, DEFAULT_RETRY_INTERVAL),
            dns_refresh: dur(self.dns_refresh, DEFAULT_DNS_REFRESH),
            migrate_window: dur(self.migrate_window, DEFAULT_MIGRATE_WINDOW),
            hedge: self.hedge.unwrap_or(true),
            hot_keys: self.hot_keys.unwrap_or(true),
            hot_key_threshold: self.hot_key_threshold.unwrap_or(1000),
            hedge_budget: self
                .hedge_budget
                .unwrap_or_else(|| value::percent(DEFAULT_HEDGE_BUDGET).unwrap_or(0.05)),
            io_backend: self.io_backend.unwrap_or_default(),
            pid_file: self.pid_file,
            log_file: self.log_file,
            config_file: None,
            check: false,
            route: None,
            shutdown_timeout: dur(self.shutdown_timeout, DEFAULT_SHUTDOWN_TIMEOUT),
            resync: self.resync.unwrap_or(false),
            missed_keys_limit: self.missed_keys_limit.unwrap_or_else(|| {
                value::missed_keys_limit(DEFAULT_MISSED_KEYS_LIMIT).unwrap_or(64 << 20)
            }),
            metrics_listen: self.metrics_listen,
            latency_stats: self.latency_stats.unwrap_or(false),
            log_level: self.log_level,
            tls_listen: self.tls_listen,
            tls_cert: self.tls_cert,
            tls_key: self.tls_key,
            tls_ca: self.tls_ca,
            tls_handshake_timeout: dur(self.tls_handshake_timeout, DEFAULT_TLS_HANDSHAKE_TIMEOUT),
            server_tls: self.server_tls.unwrap_or(false),
            server_tls_ca: self.server_tls_ca,
            server_tls_cert: self.server_tls_cert,
            server_tls_key: self.server_tls_key,
            notes: Vec::new(),
            argv: Vec::new(),
        }
    }
}

/// `--threads` default: the number of cores we may run on (1 if unknown).
pub fn default_threads() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .min(MAX_THREADS)
}

/// Parse a command line (`args[0]` is the program name).
///
/// `--help` / `--version` come back as `Err` with code 0 and the text to print.
pub fn parse_args<I, T>(args: I) -> Result<Config, ConfigError>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let argv: Vec<OsString> = args.into_iter().map(Into::into).collect();
    let cli = cli::parse(&argv)?;
    let (layer, config_file, notes) = match &cli.config {
        Some(path) => {
            let (file, notes) = load_file(path)?;
            // Absolute, so that SIGHUP still finds it after a chdir.
            let abs = std::fs::canonicalize(path).unwrap_or_else(|_| path.clone());
            (cli.layer.over(file), Some(abs), notes)
        }
        None => (cli.layer, None, Vec::new()),
    };
    let mut cfg = layer.finish();
    cfg.notes = notes;
    cfg.config_file = config_file;
    cfg.check = cli.check;
    cfg.route = cli.route;
    cfg.argv = argv;
    cfg.validate()?;
    Ok(cfg)
}

/// Read a config file: memring's TOML, or a nutcracker YAML file (by its
/// `.yml`/`.yaml` name) read unchanged, with notes on what it ignored.
fn load_file(path: &Path) -> Result<(Layer, Vec<String>), ConfigError> {
    let yaml = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("yml") || e.eq_ignore_ascii_case("yaml"));
    if yaml {
        nutcracker::load(path)
    } else {
        Ok((file::load(path)?, Vec::new()))
    }
}

/// Parse `host:port[:weight]`, `[v6]:port[:weight]`.
pub fn parse_server(s: &str) -> Result<ServerAddr, ConfigError> {
    value::server(s).map_err(|why| ConfigError::usage(format!("invalid server '{s}': {why}")))
}

/// Settings that cannot change at runtime: [`reload`] keeps them from the
/// running `Config` (a restart is needed to change them).
pub const RELOAD_KEEPS: &[&str] = &[
    "port",
    "listen",
    "bind",
    "unix_socket",
    "unix_mask",
    "threads",
    "io_backend",
    "user",
    "group",
    "foreground",
    "verbose",
    "pid_file",
    "log_file",
    "max_conns",
    "max_server_conns",
    "upstream_conns",
    "max_item_size",
    "client_buffer",
    "max_input_memory",
    "log_level",
    "tls_listen",
    "server_tls",
];

/// What a reload from `old` to `new` changes, for the reload's log line:
/// servers added (`+`) and removed (`-`) by role, then each changed
/// setting as `name old -> new`.
pub fn reload_changes(old: &Config, new: &Config) -> Vec<String> {
    let mut out = Vec::new();
    for (role, was, now) in [
        ("server", &old.servers, &new.servers),
        ("backup", &old.backups, &new.backups),
    ] {
        let names = |l: &[ServerAddr]| l.iter().map(ServerAddr::name).collect::<Vec<_>>();
        let (was, now) = (names(was), names(now));
        out.extend(
            now.iter()
                .filter(|n| !was.contains(n))
                .map(|n| format!("+{role} {n}")),
        );
        out.extend(
            was.iter()
                .filter(|n| !now.contains(n))
                .map(|n| format!("-{role} {n}")),
        );
    }
    for (o, n) in old.servers.iter().chain(&old.backups).flat_map(|o| {
        new.servers
            .iter()
            .chain(&new.backups)
            .filter(move |n| n.name() == o.name() && n.weight != o.weight)
            .map(move |n| (o, n))
    }) {
        out.push(format!(
            "weight of {} {} -> {}",
            o.name(),
            o.weight,
            n.weight
        ));
    }
    macro_rules! each {
        ($($f:ident),*) => {$(
            if old.$f != new.$f {
                out.push(format!("{} {:?} -> {:?}", stringify!($f), old.$f, new.$f));
            }
        )*};
    }
    each!(
        distribution,
        hash,
        hash_tag,
        connect_timeout,
        request_timeout,
        failure_limit,
        retry_interval,
        dns_refresh,
        migrate_window,
        hedge,
        hedge_budget,
        missed_keys_limit,
        shutdown_timeout,
        resync,
        latency_stats,
        tls_cert,
        tls_key,
        tls_ca,
        tls_handshake_timeout,
        server_tls_ca,
        server_tls_cert,
        server_tls_key
    );
    out
}

/// SIGHUP: re-read the config file at `path`, re-apply `base`'s command line
/// over it (flags still win), keep [`RELOAD_KEEPS`] from `base`, validate.
///
/// What changes: servers, backups, distribution, connect/request timeouts,
/// failure_limit, retry_interval, missed_keys_limit, shutdown_timeout. On error the caller keeps
/// running with `base`.
pub fn reload(path: &Path, base: &Config) -> Result<Config, ConfigError> {
    reload_with_report(path, base).map(|(cfg, _)| cfg)
}

/// [`reload`], also naming the kept settings whose value in the file (or
/// defaults) differs from `base`, so the caller can log "restart needed".
pub fn reload_with_report(
    path: &Path,
    base: &Config,
) -> Result<(Config, Vec<&'static str>), ConfigError> {
    let cli = if base.argv.is_empty() {
        Layer::default()
    } else {
        cli::parse(&base.argv)?.layer
    };
    let (file, notes) = load_file(path)?;
    let mut new = cli.over(file).finish();
    new.notes = notes;
    new.config_file = Some(path.to_path_buf());
    new.check = false;
    new.argv = base.argv.clone();
    let mut ignored = Vec::new();
    macro_rules! keep {
        ($($f:ident),*) => {$(
            if new.$f != base.$f {
                ignored.push(stringify!($f));
                new.$f = base.$f.clone();
            }
        )*};
    }
    keep!(
        port,
        listen,
        bind,
        unix_socket,
        unix_mask,
        threads,
        io_backend,
        user,
        group,
        foreground,
        verbose,
        pid_file,
        log_file,
        max_conns,
        max_server_conns,
        upstream_conns,
        max_item_size,
        client_buffer,
        max_input_memory,
        metrics_listen,
        log_level,
        tls_listen,
        server_tls
    );
    // A pool's own listener is bound at start: its address stays.
    for p in &mut new.pools {
        let was = base
            .pools
            .iter()
            .find(|b| b.name == p.name)
            .and_then(|b| b.listen.clone());
        if p.listen != was {
            ignored.push("pools.*.listen");
            p.listen = was;
        }
    }
    new.validate()?;
    Ok((new, ignored))
}

#[cfg(test)]
mod tests;
