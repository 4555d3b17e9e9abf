//! nutcracker (twemproxy) YAML config files, read unchanged (`--config
//! FILE.yml` or `.yaml`), so that a fleet moves behind memring without
//! rewriting its configuration.
//!
//! Every nutcracker pool becomes a memring pool with its own listener: the
//! first pool is `default` (its `listen` is memring's `--bind`), the others
//! are `[pools.NAME]` with `listen`. Placement follows nutcracker's: its
//! default hash (`fnv1a_64`) and distribution (`ketama`) apply when a pool
//! does not name them, and named servers (`host:port:weight name`) are
//! placed by name. Timeouts and failure limits are memring's own settings
//! for every pool: they are taken from the first pool (a pool that differs
//! gets a note). Keys memring has no use for are ignored with one note
//! each; what memring cannot honour (a Redis pool, the `random`
//! distribution, a listener that is not an IP address or a unix path) is
//! an error that says so.

use std::path::Path;
use std::time::Duration;

use serde_norway::{Mapping, Value};

use super::{value, ConfigError, Layer, PoolConfig};

/// Keys of a nutcracker pool that memring has no use for (or does
/// anyway): ignored, with a note.
const IGNORED: &[(&str, &str)] = &[
    ("preconnect", "memring connects on first use"),
    ("backlog", "memring's listen backlog is 1024"),
    ("client_connections", "memring's client limit is -n"),
    ("tcpkeepalive", "not configurable in memring"),
    ("reuseport", "memring always listens with SO_REUSEPORT"),
    ("redis_auth", "memring does not speak Redis"),
    ("redis_db", "memring does not speak Redis"),
];

/// Read the YAML file at `path`: the layer it sets, and notes on what was
/// ignored or taken from elsewhere.
pub(super) fn load(path: &Path) -> Result<(Layer, Vec<String>), ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigError::usage(format!("cannot read config file {}: {e}", path.display()))
    })?;
    parse(&text, path)
}

/// Parse the YAML text of a nutcracker config; `path` only names it.
pub(super) fn parse(text: &str, path: &Path) -> Result<(Layer, Vec<String>), ConfigError> {
    let err = |m: String| ConfigError::usage(format!("config file {}: {m}", path.display()));
    let root: Mapping = serde_norway::from_str(text)
        .map_err(|e| err(format!("not a nutcracker YAML file: {e}")))?;
    if root.is_empty() {
        return Err(err("no pool".into()));
    }
    let mut layer = Layer::default();
    let mut notes = Vec::new();
    let mut first_timeouts: Option<Timeouts> = None;
    for (i, (name, pool)) in root.iter().enumerate() {
        let name = name
            .as_str()
            .ok_or_else(|| err("a pool's name is not a string".into()))?
            .to_string();
        let pool = pool
            .as_mapping()
            .ok_or_else(|| err(format!("pool {name} is not a mapping")))?;
        let p =
            Pool::read(&name, pool, &mut notes).map_err(|m| err(format!("pool {name}: {m}")))?;
        match &first_timeouts {
            None => first_timeouts = Some(p.timeouts),
            Some(t) if *t != p.timeouts => notes.push(format!(
                "pool {name}: its timeout and failure settings differ from the first pool's; memring uses the first pool's for every pool"
            )),
            Some(_) => {}
        }
        if i == 0 {
            match p.listen {
                Listen::Tcp(a) => layer.bind = Some(a),
                Listen::Unix(path, mask) => {
                    layer.unix_socket = Some(path.into());
                    layer.unix_mask = mask;
                    layer.port = Some(0);
                }
            }
            layer.servers = Some(p.servers);
            layer.distribution = Some(p.distribution);
            layer.hash = Some(p.hash);
            layer.hash_tag = p.hash_tag;
        } else {
            let Listen::Tcp(listen) = p.listen else {
                return Err(err(format!(
                    "pool {name}: only the first pool may listen on a unix socket"
                )));
            };
            layer.pools.get_or_insert_with(Vec::new).push(PoolConfig {
                name,
                servers: p.servers,
                backups: Vec::new(),
                distribution: p.distribution,
                hash: Some(p.hash),
                hash_tag: p.hash_tag,
                listen: Some(listen),
            });
        }
    }
    if let Some(t) = first_timeouts {
        layer.request_timeout = t.request;
        layer.failure_limit = t.failure_limit;
        layer.retry_interval = t.retry;
        layer.upstream_conns = t.server_connections;
    }
    Ok((layer, notes))
}

/// The settings memring keeps once for every pool.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Timeouts {
    request: Option<Duration>,
    failure_limit: Option<u32>,
    retry: Option<Duration>,
    server_connections: Option<usize>,
}

enum Listen {
    Tcp(String),
    Unix(String, Option<u32>),
}

struct Pool {
    listen: Listen,
    servers: Vec<super::ServerAddr>,
    distribution: crate::route::Distribution,
    hash: crate::route::KeyHash,
    hash_tag: Option<String>,
    timeouts: Timeouts,
}

impl Pool {
    fn read(name: &str, m: &Mapping, notes: &mut Vec<String>) -> Result<Pool, String> {
        let mut listen = None;
        let mut servers = Vec::new();
        let mut distribution = crate::route::Distribution::Ketama;
        let mut hash = crate::route::KeyHash::Fnv1a64;
        let mut hash_tag = None;
        let mut t = Timeouts::default();
        for (k, v) in m {
            let key = k.as_str().ok_or("a key is not a string")?;
            let text = || -> Result<String, String> {
                match v {
                    Value::String(s) => Ok(s.clone()),
                    Value::Number(n) => Ok(n.to_string()),
                    Value::Bool(b) => Ok(b.to_string()),
                    _ => Err(format!("{key}: expected a value")),
                }
            };
            let millis = || -> Result<Duration, String> {
                v.as_u64()
                    .map(Duration::from_millis)
                    .ok_or_else(|| format!("{key}: expected milliseconds"))
            };
            match key {
                "listen" => listen = Some(listen_of(&text()?)?),
                "servers" => {
                    let list = v.as_sequence().ok_or("servers: expected a list")?;
                    for s in list {
                        let s = s.as_str().ok_or("servers: expected strings")?;
                        servers
                            .push(value::server(s).map_err(|why| format!("server '{s}': {why}"))?);
                    }
                }
                "distribution" => {
                    let d = text()?;
                    distribution =
                        match d.as_str() {
                            "random" => return Err(
                                "distribution random is not served by memring (ketama or modula)"
                                    .into(),
                            ),
                            other => value::distribution(other)?,
                        };
                }
                "hash" => hash = value::key_hash(&text()?)?,
                "hash_tag" => {
                    let tag = text()?;
                    value::hash_tag(&tag)?;
                    hash_tag = Some(tag);
                }
                "timeout" => t.request = Some(millis()?),
                "server_retry_timeout" => t.retry = Some(millis()?),
                "server_failure_limit" => {
                    let n = v
                        .as_u64()
                        .ok_or("server_failure_limit: expected a number")?;
                    t.failure_limit = Some(u32::try_from(n).unwrap_or(u32::MAX).max(1));
                }
                "server_connections" => {
                    let n = v.as_u64().ok_or("server_connections: expected a number")?;
                    t.server_connections = Some(usize::try_from(n).unwrap_or(1).max(1));
                }
                "redis" => {
                    if v.as_bool() == Some(true) {
                        return Err("redis: true: memring serves memcached, not Redis".into());
                    }
                }
                "auto_eject_hosts" => {
                    if v.as_bool() == Some(false) {
                        notes.push(format!(
                            "pool {name}: auto_eject_hosts false is ignored: memring always takes failing servers out (and serves their keys from backups when there are any)"
                        ));
                    }
                }
                other => {
                    let why = IGNORED
                        .iter()
                        .find(|(k, _)| *k == other)
                        .map_or("not a setting memring knows", |(_, why)| why);
                    notes.push(format!("pool {name}: {other} is ignored ({why})"));
                }
            }
        }
        let listen = listen.ok_or("no listen address")?;
        if servers.is_empty() {
            return Err("no servers".into());
        }
        Ok(Pool {
            listen,
            servers,
            distribution,
            hash,
            hash_tag,
            timeouts: t,
        })
    }
}

/// nutcracker's `listen`: `IP:PORT`, or a unix socket path with an
/// optional `:MODE` (`/tmp/mc.sock:0666`).
fn listen_of(s: &str) -> Result<Listen, String> {
    if s.starts_with('/') {
        return Ok(match s.rsplit_once(':') {
            Some((path, mode)) => Listen::Unix(path.to_string(), Some(value::unix_mask(mode)?)),
            None => Listen::Unix(s.to_string(), None),
        });
    }
    value::bind(s).map(Listen::Tcp).map_err(|_| {
        format!("listen '{s}': memring listens on an IP address and port (or a unix path)")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const YML: &str = "\
alpha:
  listen: 127.0.0.1:22121
  hash: fnv1a_64
  distribution: ketama
  auto_eject_hosts: true
  redis: false
  timeout: 400
  server_retry_timeout: 2000
  server_failure_limit: 1
  hash_tag: \"{}\"
  preconnect: true
  servers:
   - 127.0.0.1:11212:1 one
   - 127.0.0.1:11213:1 two
beta:
  listen: 127.0.0.1:22122
  distribution: modula
  timeout: 300
  servers:
   - 127.0.0.1:11214:1
";

    #[test]
    fn pools_become_pools_with_their_listeners() {
        let (layer, notes) = parse(YML, Path::new("n.yml")).expect("parse");
        let c = layer.finish();
        assert_eq!(c.bind.as_deref(), Some("127.0.0.1:22121"));
        assert_eq!(c.servers.len(), 2);
        assert_eq!(c.servers[0].alias.as_deref(), Some("one"));
        assert_eq!(c.distribution, crate::route::Distribution::Ketama);
        assert_eq!(c.hash, Some(crate::route::KeyHash::Fnv1a64));
        assert_eq!(c.hash_tag.as_deref(), Some("{}"));
        assert_eq!(c.request_timeout, Duration::from_millis(400));
        assert_eq!(c.retry_interval, Duration::from_millis(2000));
        assert_eq!(c.failure_limit, 1);
        assert_eq!(c.pools.len(), 1);
        let b = &c.pools[0];
        assert_eq!(b.name, "beta");
        assert_eq!(b.listen.as_deref(), Some("127.0.0.1:22122"));
        assert_eq!(b.distribution, crate::route::Distribution::Modula);
        // nutcracker's default hash, not memring's.
        assert_eq!(b.hash, Some(crate::route::KeyHash::Fnv1a64));
        assert!(
            notes.iter().any(|n| n.contains("preconnect is ignored")),
            "{notes:?}"
        );
        assert!(
            notes
                .iter()
                .any(|n| n.contains("pool beta") && n.contains("first pool")),
            "{notes:?}"
        );
        c.validate().expect("valid");
    }

    #[test]
    fn what_memring_cannot_honour_says_so() {
        for (yml, why) in [
            ("a:\n  listen: 127.0.0.1:1\n  redis: true\n  servers: [\"127.0.0.1:2:1\"]\n", "Redis"),
            ("a:\n  listen: 127.0.0.1:1\n  distribution: random\n  servers: [\"127.0.0.1:2:1\"]\n", "random"),
            ("a:\n  listen: localhost:1\n  servers: [\"127.0.0.1:2:1\"]\n", "IP address"),
            ("a:\n  servers: [\"127.0.0.1:2:1\"]\n", "no listen"),
            ("a:\n  listen: 127.0.0.1:1\n", "no servers"),
            ("- 1\n", "not a nutcracker"),
        ] {
            let e = parse(yml, Path::new("n.yml")).expect_err(why);
            assert!(e.msg.contains(why), "{why}: {}", e.msg);
        }
        let (layer, _) = parse(
            "a:\n  listen: /tmp/mr.sock:0660\n  servers: [\"127.0.0.1:2:1\"]\n",
            Path::new("n.yml"),
        )
        .expect("unix");
        let c = layer.finish();
        assert_eq!(c.unix_socket.as_deref(), Some(Path::new("/tmp/mr.sock")));
        assert_eq!(c.unix_mask, Some(0o660));
        assert_eq!(c.port, 0);
    }
}
