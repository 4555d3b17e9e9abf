//! The optional TOML config file -> a [`Layer`]. Keys are the long flag names
//! with `_` for `-`; unknown keys are an error.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::value;
use super::{ConfigError, Layer};

/// A `[pools.NAME]` table: a pool beside the default one.
#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
struct FilePool {
    servers: Vec<String>,
    backups: Option<Vec<String>>,
    distribution: Option<String>,
    hash: Option<String>,
    hash_tag: Option<String>,
    listen: Option<String>,
}

/// A `[[routes]]` entry: keys starting with `prefix` go to `pool`.
#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct FileRoute {
    prefix: String,
    pool: String,
}

/// The file as written; every key is optional.
#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    pools: Option<std::collections::BTreeMap<String, FilePool>>,
    routes: Option<Vec<FileRoute>>,
    port: Option<u16>,
    listen: Option<String>,
    bind: Option<String>,
    servers: Option<Vec<String>>,
    backups: Option<Vec<String>>,
    distribution: Option<String>,
    hash: Option<String>,
    hash_tag: Option<String>,
    max_conns: Option<u64>,
    max_server_conns: Option<u64>,
    upstream_conns: Option<u64>,
    unix_socket: Option<PathBuf>,
    unix_mask: Option<String>,
    user: Option<String>,
    group: Option<String>,
    foreground: Option<bool>,
    verbose: Option<u8>,
    threads: Option<u64>,
    connect_timeout: Option<String>,
    request_timeout: Option<String>,
    max_item_size: Option<toml::Value>,
    client_buffer: Option<String>,
    max_input_memory: Option<String>,
    failure_limit: Option<u64>,
    retry_interval: Option<String>,
    dns_refresh: Option<String>,
    migrate_window: Option<String>,
    hedge: Option<bool>,
    hedge_budget: Option<String>,
    hot_keys: Option<bool>,
    hot_key_threshold: Option<u64>,
    io_backend: Option<String>,
    pid_file: Option<PathBuf>,
    log_file: Option<PathBuf>,
    shutdown_timeout: Option<String>,
    resync: Option<bool>,
    missed_keys_limit: Option<String>,
    metrics_listen: Option<String>,
    latency_stats: Option<bool>,
    log_level: Option<String>,
    tls_listen: Option<String>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    tls_ca: Option<PathBuf>,
    tls_handshake_timeout: Option<String>,
    server_tls: Option<bool>,
    server_tls_ca: Option<PathBuf>,
    server_tls_cert: Option<PathBuf>,
    server_tls_key: Option<PathBuf>,
}

/// Read and validate `path`.
pub(super) fn load(path: &Path) -> Result<Layer, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigError::usage(format!("cannot read config file {}: {e}", path.display()))
    })?;
    parse(&text, path)
}

/// Parse the text of a config file; `path` only names it in messages.
pub(super) fn parse(text: &str, path: &Path) -> Result<Layer, ConfigError> {
    let f: FileConfig = toml::from_str(text).map_err(|e| {
        ConfigError::usage(format!(
            "config file {}: {}",
            path.display(),
            e.to_string().trim_end()
        ))
    })?;
    let bad = |key: &str, val: &dyn std::fmt::Display, why: String| {
        ConfigError::usage(format!(
            "config file {}: invalid {key} = {val}: {why}",
            path.display()
        ))
    };
    // Apply a `&str -> Result<T, String>` check to an optional string key.
    macro_rules! text {
        ($key:ident, $f:expr) => {
            match &f.$key {
                None => None,
                Some(s) => Some(
                    $f(s.as_str()).map_err(|why| bad(stringify!($key), &format!("{s:?}"), why))?,
                ),
            }
        };
    }
    // Range-check an optional integer key.
    macro_rules! int {
        ($key:ident, $lo:expr, $hi:expr) => {
            match f.$key {
                None => None,
                Some(n) => Some(
                    value::in_range(n, $lo as u64, $hi as u64)
                        .map_err(|why| bad(stringify!($key), &n, why))?,
                ),
            }
        };
    }
    let servers = |key: &str, list: &Option<Vec<String>>| -> Result<_, ConfigError> {
        match list {
            None => Ok(None),
            Some(v) => v
                .iter()
                .map(|s| value::server(s).map_err(|why| bad(key, &format!("{s:?}"), why)))
                .collect::<Result<Vec<_>, _>>()
                .map(Some),
        }
    };
    let max_item_size = match &f.max_item_size {
        None => None,
        Some(toml::Value::String(s)) => {
            Some(value::size(s).map_err(|why| bad("max_item_size", &format!("{s:?}"), why))?)
        }
        Some(toml::Value::Integer(n)) => Some(
            u64::try_from(*n)
                .map_err(|_| "must not be negative".to_string())
                .and_then(value::item_size)
                .map_err(|why| bad("max_item_size", n, why))?,
        ),
        Some(other) => {
            return Err(bad(
                "max_item_size",
                other,
                "expected a size like \"1m\" or a number of bytes".into(),
            ))
        }
    };
    let mut pools = Vec::new();
    for (name, p) in f.pools.iter().flatten() {
        let key = |k: &str| format!("pools.{name}.{k}");
        let check = |k: &str, v: &str, r: Result<(), String>| {
            r.map_err(|why| bad(&key(k), &format!("{v:?}"), why))
        };
        if name == "default" {
            return Err(bad(
                "pools.default",
                &"{...}",
                "`default` is the top-level servers; name the pool otherwise".into(),
            ));
        }
        let list = |k: &str, v: &[String]| -> Result<Vec<_>, ConfigError> {
            v.iter()
                .map(|s| value::server(s).map_err(|why| bad(&key(k), &format!("{s:?}"), why)))
                .collect()
        };
        let distribution = match &p.distribution {
            None => Default::default(),
            Some(d) => value::distribution(d)
                .map_err(|why| bad(&key("distribution"), &format!("{d:?}"), why))?,
        };
        let hash = match &p.hash {
            None => None,
            Some(h) => {
                Some(value::key_hash(h).map_err(|why| bad(&key("hash"), &format!("{h:?}"), why))?)
            }
        };
        if let Some(t) = &p.hash_tag {
            check("hash_tag", t, value::hash_tag(t).map(drop))?;
        }
        if let Some(l) = &p.listen {
            check("listen", l, value::bind(l).map(drop))?;
        }
        pools.push(super::PoolConfig {
            name: name.clone(),
            servers: list("servers", &p.servers)?,
            backups: list("backups", p.backups.as_deref().unwrap_or_default())?,
            distribution,
            hash,
            hash_tag: p.hash_tag.clone(),
            listen: p.listen.clone(),
        });
    }
    let routes = f
        .routes
        .iter()
        .flatten()
        .map(|r| super::RouteRule {
            prefix: r.prefix.clone(),
            pool: r.pool.clone(),
        })
        .collect::<Vec<_>>();
    let path_ok =
        |key: &str, p: &Option<PathBuf>, check: fn(&std::ffi::OsStr) -> Result<PathBuf, String>| {
            match p {
                None => Ok(None),
                Some(p) => check(p.as_os_str())
                    .map(Some)
                    .map_err(|why| bad(key, &format!("{:?}", p.display().to_string()), why)),
            }
        };
    Ok(Layer {
        pools: (!pools.is_empty()).then_some(pools),
        routes: (!routes.is_empty()).then_some(routes),
        port: f.port,
        listen: text!(listen, value::listen),
        bind: text!(bind, value::bind),
        servers: servers("servers", &f.servers)?,
        backups: servers("backups", &f.backups)?,
        distribution: text!(distribution, value::distribution),
        hash: text!(hash, value::key_hash),
        hash_tag: text!(hash_tag, value::hash_tag),
        max_conns: int!(max_conns, 1, value::MAX_CONNS).map(|n| n as usize),
        max_server_conns: int!(max_server_conns, 1, value::MAX_SERVER_CONNS).map(|n| n as usize),
        upstream_conns: int!(upstream_conns, 1, value::MAX_SERVER_CONNS).map(|n| n as usize),
        unix_socket: path_ok("unix_socket", &f.unix_socket, value::unix_path)?,
        unix_mask: text!(unix_mask, value::unix_mask),
        user: text!(user, value::account),
        group: text!(group, value::account),
        foreground: f.foreground,
        verbose: f.verbose,
        threads: int!(threads, 1, value::MAX_THREADS).map(|n| n as usize),
        connect_timeout: text!(connect_timeout, value::timeout),
        request_timeout: text!(request_timeout, value::timeout),
        max_item_size,
        client_buffer: text!(client_buffer, value::size),
        max_input_memory: text!(max_input_memory, value::size),
        failure_limit: int!(failure_limit, 1, u32::MAX).map(|n| n as u32),
        retry_interval: text!(retry_interval, value::timeout),
        dns_refresh: text!(dns_refresh, value::shutdown_timeout),
        migrate_window: text!(migrate_window, value::shutdown_timeout),
        hedge: f.hedge,
        hedge_budget: text!(hedge_budget, value::percent),
        hot_keys: f.hot_keys,
        hot_key_threshold: f.hot_key_threshold,
        io_backend: text!(io_backend, value::io_backend),
        pid_file: path_ok("pid_file", &f.pid_file, value::path)?,
        log_file: path_ok("log_file", &f.log_file, value::path)?,
        shutdown_timeout: text!(shutdown_timeout, value::shutdown_timeout),
        resync: f.resync,
        missed_keys_limit: text!(missed_keys_limit, value::missed_keys_limit),
        metrics_listen: text!(metrics_listen, value::bind),
        latency_stats: f.latency_stats,
        log_level: text!(log_level, value::log_level),
        tls_listen: text!(tls_listen, value::bind),
        tls_cert: path_ok("tls_cert", &f.tls_cert, value::path)?,
        tls_key: path_ok("tls_key", &f.tls_key, value::path)?,
        tls_ca: path_ok("tls_ca", &f.tls_ca, value::path)?,
        tls_handshake_timeout: text!(tls_handshake_timeout, value::timeout),
        server_tls: f.server_tls,
        server_tls_ca: path_ok("server_tls_ca", &f.server_tls_ca, value::path)?,
        server_tls_cert: path_ok("server_tls_cert", &f.server_tls_cert, value::path)?,
        server_tls_key: path_ok("server_tls_key", &f.server_tls_key, value::path)?,
    })
}
