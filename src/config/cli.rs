//! The clap definition: magent's short flags (getopt-compatible, so `-uroot`,
//! `-p12000`, `-Dk` work) plus long ones, and the [`Layer`] of values that
//! were actually given on the command line.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use clap::builder::TypedValueParser;
use clap::parser::ValueSource;
use clap::{ArgAction, CommandFactory, FromArgMatches, Parser};

use super::value;
use super::{ConfigError, IoBackend, Layer, ServerAddr};
use crate::route::Distribution;

const MAGENT: &str = "magent options (same letters, meanings and defaults)";
const MEMRING: &str = "memring options";

/// The command line as clap sees it; defaults here are for `--help` only,
/// the effective defaults are applied after merging with the config file.
#[derive(Parser, Debug)]
#[command(
    name = "memring",
    version,
    about = "memring: a memcached proxy on per-core io_uring runtimes, a drop-in replacement for magent",
    override_usage = "memring -s HOST:PORT [-s HOST:PORT ...] [-b HOST:PORT ...] [OPTIONS]",
    after_help = "Command-line flags override the --config file. Durations: 250ms, 1s, 2m. Sizes: 512k, 1m.",
    disable_help_flag = true,
    args_override_self = true,
    disable_version_flag = true,
    color = clap::ColorChoice::Never,
    max_term_width = 100
)]
pub(super) struct Cli {
    /// TCP port to listen on; 0 disables TCP
    #[arg(short = 'p', long, value_name = "PORT", default_value_t = super::DEFAULT_PORT, help_heading = MAGENT)]
    pub port: u16,

    /// Local IP address to bind
    #[arg(short = 'l', long, value_name = "IP", default_value = super::DEFAULT_LISTEN, value_parser = value::listen, help_heading = MAGENT)]
    pub listen: String,

    /// memcached server, repeatable, at least one (host:port[:weight], [v6]:port)
    #[arg(short = 's', long = "server", value_name = "HOST:PORT", value_parser = value::server, help_heading = MAGENT)]
    pub servers: Vec<ServerAddr>,

    /// Backup memcached server, repeatable
    #[arg(short = 'b', long = "backup", value_name = "HOST:PORT", value_parser = value::server, help_heading = MAGENT)]
    pub backups: Vec<ServerAddr>,

    /// Use ketama consistent hashing (default: modula, as magent)
    #[arg(short = 'k', long, help_heading = MAGENT)]
    pub ketama: bool,

    /// After a server rejoins, copy the keys it owns back from its partners
    /// (see README: closes a data-loss window, opens a rare delete race)
    #[arg(long, help_heading = MEMRING)]
    pub resync: bool,

    /// Bytes of missed keys logged per server; past it a rejoin flushes the
    /// server instead of deleting its missed keys (0: always flush)
    #[arg(long, value_name = "SIZE", default_value = super::DEFAULT_MISSED_KEYS_LIMIT, value_parser = value::missed_keys_limit, help_heading = MEMRING)]
    pub missed_keys_limit: usize,

    /// Max client connections
    #[arg(short = 'n', long, value_name = "N", default_value_t = super::DEFAULT_MAX_CONNS, value_parser = value::max_conns, help_heading = MAGENT)]
    pub max_conns: usize,

    /// Max keep-alive connections per memcached server
    #[arg(short = 'i', long, value_name = "N", default_value_t = super::DEFAULT_MAX_SERVER_CONNS, value_parser = value::server_conns, help_heading = MAGENT)]
    pub max_server_conns: usize,

    /// Unix socket path to listen on [default: off]
    #[arg(short = 'f', long, value_name = "PATH", value_parser = value_os(value::unix_path), help_heading = MAGENT)]
    pub unix_socket: Option<PathBuf>,

    /// Permission bits of the unix socket, in octal [default: as the umask leaves them]
    #[arg(short = 'a', long, value_name = "MASK", value_parser = value::unix_mask, help_heading = MEMRING)]
    pub unix_mask: Option<u32>,

    /// User to run as (name or uid)
    #[arg(short = 'u', long, value_name = "USER", value_parser = value::account, help_heading = MAGENT)]
    pub user: Option<String>,

    /// Group to run as (name or gid)
    #[arg(short = 'g', long, value_name = "GROUP", value_parser = value::account, help_heading = MAGENT)]
    pub group: Option<String>,

    /// Don't go to background
    #[arg(short = 'D', long, help_heading = MAGENT)]
    pub foreground: bool,

    /// Verbose: -v info, -vv debug, -vvv trace; implies -D, as in magent
    #[arg(short = 'v', long, action = ArgAction::Count, help_heading = MAGENT)]
    pub verbose: u8,

    /// Print this help
    #[arg(short = 'h', long, action = ArgAction::HelpLong, help_heading = MAGENT)]
    pub help: Option<bool>,

    /// Listen on ADDR:PORT instead of -l/-p; port 0 picks a free port, IPv6 as [::1]:0
    #[arg(long, value_name = "ADDR:PORT", value_parser = value::bind, help_heading = MEMRING)]
    pub bind: Option<String>,

    /// Runtimes, one per core [default: available cores]
    #[arg(long, value_name = "N", value_parser = value::threads, help_heading = MEMRING)]
    pub threads: Option<usize>,

    /// Placement of keys: modula or ketama (-k is --distribution ketama)
    #[arg(long, value_name = "NAME", value_parser = value::distribution, conflicts_with = "ketama", help_heading = MEMRING)]
    pub distribution: Option<Distribution>,

    /// Key hash as nutcracker names it (fnv1a_64, md5, murmur, ...) [default: magent's for modula, md5 for ketama]
    #[arg(long, value_name = "NAME", value_parser = value::key_hash, help_heading = MEMRING)]
    pub hash: Option<crate::route::KeyHash>,

    /// Hash only the part of a key between these two characters, as nutcracker's hash_tag (e.g. "{}")
    #[arg(long, value_name = "XY", value_parser = value::hash_tag, help_heading = MEMRING)]
    pub hash_tag: Option<String>,

    /// Timeout for connecting to a server
    #[arg(long, value_name = "DURATION", default_value = super::DEFAULT_CONNECT_TIMEOUT, value_parser = value::timeout, help_heading = MEMRING)]
    pub connect_timeout: Duration,

    /// Timeout for a server's reply to a request
    #[arg(long, value_name = "DURATION", default_value = super::DEFAULT_REQUEST_TIMEOUT, value_parser = value::timeout, help_heading = MEMRING)]
    pub request_timeout: Duration,

    /// Largest item accepted, like memcached -I (1k..1g)
    #[arg(long, value_name = "SIZE", default_value = super::DEFAULT_MAX_ITEM_SIZE, value_parser = value::size, help_heading = MEMRING)]
    pub max_item_size: usize,

    /// Unsent reply bytes per client before it is not read (1k..1g)
    #[arg(long, value_name = "SIZE", default_value = super::DEFAULT_CLIENT_BUFFER, value_parser = value::size, help_heading = MEMRING)]
    pub client_buffer: usize,

    /// Unparsed client input all clients together may hold; past it the largest partial requests are refused
    #[arg(long, value_name = "SIZE", default_value = super::DEFAULT_MAX_INPUT_MEMORY, value_parser = value::size, help_heading = MEMRING)]
    pub max_input_memory: usize,

    /// Consecutive failures before a server is taken out (suspect if the last was a timeout)
    #[arg(long, value_name = "N", default_value_t = super::DEFAULT_FAILURE_LIMIT, value_parser = value::failure_limit, help_heading = MEMRING)]
    pub failure_limit: u32,

    /// Base interval between probes of a down server
    #[arg(long, value_name = "DURATION", default_value = super::DEFAULT_RETRY_INTERVAL, value_parser = value::timeout, help_heading = MEMRING)]
    pub retry_interval: Duration,

    /// How often server host names are resolved again (0 disables)
    #[arg(long, value_name = "DURATION", default_value = super::DEFAULT_DNS_REFRESH, value_parser = value::shutdown_timeout, help_heading = MEMRING)]
    pub dns_refresh: Duration,

    /// How long a reload that moves keys reads a missed key from its old owner (0 disables)
    #[arg(long, value_name = "DURATION", default_value = super::DEFAULT_MIGRATE_WINDOW, value_parser = value::shutdown_timeout, help_heading = MEMRING)]
    pub migrate_window: Duration,

    /// Send a read whose primary is late to its backup too (on, off)
    #[arg(long, value_name = "on|off", default_value = "on", action = clap::ArgAction::Set, value_parser = value::on_off, help_heading = MEMRING)]
    pub hedge: bool,

    /// Share of reads per core that may be hedged, e.g. 5%
    #[arg(long, value_name = "PERCENT", default_value = super::DEFAULT_HEDGE_BUDGET, value_parser = value::percent, help_heading = MEMRING)]
    pub hedge_budget: f64,

    /// Keep a sketch of the hottest keys read: stats hotkeys, Prometheus (on, off)
    #[arg(long, value_name = "on|off", default_value = "on", action = clap::ArgAction::Set, value_parser = value::on_off, help_heading = MEMRING)]
    pub hot_keys: bool,

    /// Reads/s above which a key with over 1% of a core's reads is spread over primary and backup (0: never)
    #[arg(long, value_name = "N", default_value_t = 1000, help_heading = MEMRING)]
    pub hot_key_threshold: u64,

    /// Pipelined connections per server per core (at most -i)
    #[arg(long, value_name = "N", default_value_t = super::DEFAULT_UPSTREAM_CONNS, value_parser = value::server_conns, help_heading = MEMRING)]
    pub upstream_conns: usize,

    /// I/O backend: auto (io_uring, else epoll), uring, epoll
    #[arg(long, value_name = "BACKEND", default_value = "auto", value_parser = value::io_backend, help_heading = MEMRING)]
    pub io_backend: IoBackend,

    /// Write the process id to PATH
    #[arg(long, value_name = "PATH", value_parser = value_os(value::path), help_heading = MEMRING)]
    pub pid_file: Option<PathBuf>,

    /// Append logs to PATH instead of stderr (reopened on SIGHUP, for logrotate)
    #[arg(long, value_name = "PATH", value_parser = value_os(value::path), help_heading = MEMRING)]
    pub log_file: Option<PathBuf>,

    /// TOML config file; flags given here override it; reloaded on SIGHUP
    #[arg(long, value_name = "PATH", value_parser = value_os(value::path), help_heading = MEMRING)]
    pub config: Option<PathBuf>,

    /// Serve Prometheus metrics at http://ADDR:PORT/metrics (off by default)
    #[arg(long, value_name = "ADDR:PORT", value_parser = value::bind, help_heading = MEMRING)]
    pub metrics_listen: Option<String>,

    /// Record per-command latency for `stats proxy` (implied by --metrics-listen)
    #[arg(long, help_heading = MEMRING)]
    pub latency_stats: bool,

    /// Log level (error, warn, info, debug, trace); unlike -v it keeps a daemon detached
    #[arg(long, value_name = "LEVEL", value_parser = value::log_level, help_heading = MEMRING)]
    pub log_level: Option<String>,

    /// Also serve clients over TLS on ADDR:PORT (with --tls-cert and --tls-key; -p 0 leaves only TLS)
    #[arg(long, value_name = "ADDR:PORT", value_parser = value::bind, help_heading = MEMRING)]
    pub tls_listen: Option<String>,

    /// The TLS listener's certificate chain (PEM); re-read on SIGHUP
    #[arg(long, value_name = "PATH", value_parser = value_os(value::path), help_heading = MEMRING)]
    pub tls_cert: Option<PathBuf>,

    /// The TLS listener's private key (PEM); re-read on SIGHUP
    #[arg(long, value_name = "PATH", value_parser = value_os(value::path), help_heading = MEMRING)]
    pub tls_key: Option<PathBuf>,

    /// Require TLS clients to present a certificate signed by this CA (PEM)
    #[arg(long, value_name = "PATH", value_parser = value_os(value::path), help_heading = MEMRING)]
    pub tls_ca: Option<PathBuf>,

    /// Cut a TLS client that has not finished its handshake by then
    #[arg(long, value_name = "DURATION", default_value = super::DEFAULT_TLS_HANDSHAKE_TIMEOUT, value_parser = value::timeout, help_heading = MEMRING)]
    pub tls_handshake_timeout: Duration,

    /// Speak TLS to every server (primaries and backups)
    #[arg(long, help_heading = MEMRING)]
    pub server_tls: bool,

    /// Verify the servers' certificates against this CA (PEM) instead of the system's
    #[arg(long, value_name = "PATH", value_parser = value_os(value::path), help_heading = MEMRING)]
    pub server_tls_ca: Option<PathBuf>,

    /// A client certificate (PEM) to present to the servers
    #[arg(long, value_name = "PATH", value_parser = value_os(value::path), help_heading = MEMRING)]
    pub server_tls_cert: Option<PathBuf>,

    /// The private key (PEM) of --server-tls-cert
    #[arg(long, value_name = "PATH", value_parser = value_os(value::path), help_heading = MEMRING)]
    pub server_tls_key: Option<PathBuf>,

    /// Validate the configuration and exit
    #[arg(long, help_heading = MEMRING)]
    pub check: bool,

    /// Print where KEY goes (pool, primary, backup) under this configuration, and exit
    #[arg(long, value_name = "KEY", help_heading = MEMRING)]
    pub route: Option<String>,

    /// How long in-flight requests may finish on SIGTERM
    #[arg(long, value_name = "DURATION", default_value = super::DEFAULT_SHUTDOWN_TIMEOUT, value_parser = value::shutdown_timeout, help_heading = MEMRING)]
    pub shutdown_timeout: Duration,

    /// Print the version
    #[arg(long, action = ArgAction::Version, help_heading = MEMRING)]
    pub version: Option<bool>,
}

/// The clap command, for the man page and shell completions
/// (`tests/generated.rs` writes them from it).
pub fn command() -> clap::Command {
    Cli::command()
}

/// Adapt an `OsStr` parser (paths need not be UTF-8) to clap.
fn value_os<T, F>(f: F) -> impl TypedValueParser<Value = T>
where
    T: Clone + Send + Sync + 'static,
    F: Fn(&std::ffi::OsStr) -> Result<T, String> + Clone + Send + Sync + 'static,
{
    clap::builder::OsStringValueParser::new().try_map(move |s: OsString| f(&s))
}

/// What the command line says: the [`Layer`] of explicitly given values, the
/// config file path and `--check`.
pub(super) struct CliArgs {
    pub layer: Layer,
    pub config: Option<PathBuf>,
    pub check: bool,
    pub route: Option<String>,
}

/// Parse argv (`args[0]` is the program name).
pub(super) fn parse(args: &[OsString]) -> Result<CliArgs, ConfigError> {
    let m = Cli::command()
        .try_get_matches_from(args)
        .map_err(from_clap)?;
    let cli = Cli::from_arg_matches(&m).map_err(from_clap)?;
    let given = |id: &str| m.value_source(id) == Some(ValueSource::CommandLine);
    let pick = |id: &str| given(id).then_some(());
    let layer = Layer {
        port: pick("port").map(|_| cli.port),
        listen: pick("listen").map(|_| cli.listen.clone()),
        bind: cli.bind.clone(),
        servers: (!cli.servers.is_empty()).then(|| cli.servers.clone()),
        backups: (!cli.backups.is_empty()).then(|| cli.backups.clone()),
        hash: cli.hash,
        hash_tag: cli.hash_tag.clone(),
        pools: None,
        routes: None,
        distribution: if cli.ketama {
            Some(Distribution::Ketama)
        } else {
            cli.distribution
        },
        max_conns: pick("max_conns").map(|_| cli.max_conns),
        max_server_conns: pick("max_server_conns").map(|_| cli.max_server_conns),
        upstream_conns: pick("upstream_conns").map(|_| cli.upstream_conns),
        unix_socket: cli.unix_socket.clone(),
        unix_mask: cli.unix_mask,
        user: cli.user.clone(),
        group: cli.group.clone(),
        foreground: cli.foreground.then_some(true),
        verbose: (cli.verbose > 0).then_some(cli.verbose),
        threads: cli.threads,
        connect_timeout: pick("connect_timeout").map(|_| cli.connect_timeout),
        request_timeout: pick("request_timeout").map(|_| cli.request_timeout),
        max_item_size: pick("max_item_size").map(|_| cli.max_item_size),
        client_buffer: pick("client_buffer").map(|_| cli.client_buffer),
        max_input_memory: pick("max_input_memory").map(|_| cli.max_input_memory),
        failure_limit: pick("failure_limit").map(|_| cli.failure_limit),
        retry_interval: pick("retry_interval").map(|_| cli.retry_interval),
        dns_refresh: pick("dns_refresh").map(|_| cli.dns_refresh),
        migrate_window: pick("migrate_window").map(|_| cli.migrate_window),
        hedge: pick("hedge").map(|_| cli.hedge),
        hedge_budget: pick("hedge_budget").map(|_| cli.hedge_budget),
        hot_keys: pick("hot_keys").map(|_| cli.hot_keys),
        hot_key_threshold: pick("hot_key_threshold").map(|_| cli.hot_key_threshold),
        io_backend: pick("io_backend").map(|_| cli.io_backend),
        pid_file: cli.pid_file.clone(),
        log_file: cli.log_file.clone(),
        shutdown_timeout: pick("shutdown_timeout").map(|_| cli.shutdown_timeout),
        resync: cli.resync.then_some(true),
        missed_keys_limit: pick("missed_keys_limit").map(|_| cli.missed_keys_limit),
        metrics_listen: cli.metrics_listen.clone(),
        latency_stats: cli.latency_stats.then_some(true),
        log_level: cli.log_level.clone(),
        tls_listen: cli.tls_listen.clone(),
        tls_cert: cli.tls_cert.clone(),
        tls_key: cli.tls_key.clone(),
        tls_ca: cli.tls_ca.clone(),
        tls_handshake_timeout: pick("tls_handshake_timeout").map(|_| cli.tls_handshake_timeout),
        server_tls: cli.server_tls.then_some(true),
        server_tls_ca: cli.server_tls_ca.clone(),
        server_tls_cert: cli.server_tls_cert.clone(),
        server_tls_key: cli.server_tls_key.clone(),
    };
    Ok(CliArgs {
        layer,
        config: cli.config,
        check: cli.check,
        route: cli.route,
    })
}

/// clap's error -> ours: help and version exit 0 with the text, the rest exit 2.
fn from_clap(e: clap::Error) -> ConfigError {
    use clap::error::ErrorKind;
    let text = e.render().to_string();
    match e.kind() {
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => ConfigError {
            msg: text.trim_end().to_string(),
            code: 0,
        },
        _ => {
            // main prints "memring: <msg>", so drop clap's own "error: " prefix.
            let msg = text.strip_prefix("error: ").unwrap_or(&text);
            ConfigError::usage(msg.trim_end())
        }
    }
}
