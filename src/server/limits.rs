//! The open-file limit: raised at start as far as `-n` needs, with room
//! kept for the upstream connections, so that the proxy never runs out of
//! descriptors with clients waiting unseen in the accept backlog, and a
//! server that comes back can always be reached.
//!
//! [`plan`] is pure; [`fit_open_files`] applies it to the process.

use nix::sys::resource::{getrlimit, setrlimit, Resource, RLIM_INFINITY};

use crate::config::Config;

/// Descriptors kept for everything that is neither a client nor an upstream
/// connection: stdio, the log file, the metrics listener and its scrapes,
/// the control thread's dumps, eventfds, a reload's new connections.
const RESERVE: u64 = 64;

/// Fewest client connections worth starting for; below it memring refuses.
const MIN_CLIENTS: u64 = 16;

/// Descriptors memring needs besides its clients': every core's upstream
/// connections (twice: a reset one may wait for its last completion beside
/// its replacement), a probe and a resync connection per server, each
/// core's listeners, ring and spare descriptor, and [`RESERVE`].
pub(crate) fn besides_clients(cfg: &Config) -> u64 {
    let threads = cfg.threads.max(1) as u64;
    let servers = (cfg.servers.len() + cfg.backups.len()) as u64;
    let per_server = cfg.upstream_conns.clamp(1, cfg.max_server_conns.max(1)) as u64;
    threads * servers * per_server * 2 + servers * 2 + threads * 4 + RESERVE
}

/// What to do about the open-file limit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct FdPlan {
    /// The soft limit to set (never below the current one).
    pub soft: u64,
    /// The client connections allowed: `-n`, or fewer if the hard limit
    /// cannot cover it.
    pub max_conns: usize,
}

/// Fit `max_conns` clients plus `besides` other descriptors under the
/// limits `soft`/`hard` (`u64::MAX` for unlimited): raise the soft limit as
/// far as needed (up to the hard one), and lower the client limit when even
/// the hard one is short. An error when fewer than [`MIN_CLIENTS`] clients
/// would fit.
pub(crate) fn plan(max_conns: usize, besides: u64, soft: u64, hard: u64) -> Result<FdPlan, String> {
    let want = (max_conns as u64).saturating_add(besides);
    let new_soft = want.max(soft).min(hard.max(soft));
    if want <= new_soft {
        return Ok(FdPlan {
            soft: new_soft,
            max_conns,
        });
    }
    let room = new_soft.saturating_sub(besides);
    if room < MIN_CLIENTS {
        return Err(format!(
            "the open-file limit ({new_soft}) leaves room for {room} client connections once \
             {besides} are kept for upstream connections; raise it (ulimit -n, LimitNOFILE=, \
             docker --ulimit nofile=) or lower -n"
        ));
    }
    Ok(FdPlan {
        soft: new_soft,
        max_conns: usize::try_from(room).unwrap_or(max_conns).min(max_conns),
    })
}

/// Raise this process's soft open-file limit as far as `cfg` needs; the
/// client connections it allows: `-n`, or fewer (with one warning) when the
/// hard limit is short.
pub(crate) fn fit_open_files(cfg: &Config) -> Result<usize, String> {
    let (soft, hard) =
        getrlimit(Resource::RLIMIT_NOFILE).map_err(|e| format!("getrlimit(RLIMIT_NOFILE): {e}"))?;
    let unlimited = |v| if v == RLIM_INFINITY { u64::MAX } else { v };
    let besides = besides_clients(cfg);
    let p = plan(cfg.max_conns, besides, unlimited(soft), unlimited(hard))?;
    if p.soft != unlimited(soft) {
        setrlimit(Resource::RLIMIT_NOFILE, p.soft, hard)
            .map_err(|e| format!("setrlimit(RLIMIT_NOFILE, {}): {e}", p.soft))?;
    }
    if p.max_conns < cfg.max_conns {
        tracing::warn!(
            requested = cfg.max_conns,
            allowed = p.max_conns,
            open_file_limit = p.soft,
            kept_for_upstreams = besides,
            "the open-file limit cannot cover -n: serving at most {} client connections; \
             clients past it get `ERROR Too many open connections`",
            p.max_conns
        );
    }
    Ok(p.max_conns)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_soft_limit_is_raised_as_far_as_needed_and_no_further() {
        assert_eq!(
            plan(4096, 100, 1024, 524_288),
            Ok(FdPlan {
                soft: 4196,
                max_conns: 4096
            })
        );
        assert_eq!(
            plan(4096, 100, 1024, u64::MAX),
            Ok(FdPlan {
                soft: 4196,
                max_conns: 4096
            })
        );
        // Never lowered.
        assert_eq!(
            plan(10, 100, 1_048_576, 1_048_576),
            Ok(FdPlan {
                soft: 1_048_576,
                max_conns: 10
            })
        );
    }

    #[test]
    fn a_short_hard_limit_lowers_the_client_limit() {
        assert_eq!(
            plan(4096, 100, 256, 256),
            Ok(FdPlan {
                soft: 256,
                max_conns: 156
            })
        );
        assert_eq!(
            plan(4096, 100, 256, 1000),
            Ok(FdPlan {
                soft: 1000,
                max_conns: 900
            })
        );
        // Exactly enough.
        assert_eq!(
            plan(900, 100, 256, 1000),
            Ok(FdPlan {
                soft: 1000,
                max_conns: 900
            })
        );
    }

    #[test]
    fn too_little_room_for_clients_refuses_to_start() {
        let e = plan(4096, 100, 110, 110).expect_err("10 clients only");
        assert!(e.contains("room for 10 client connections"), "{e}");
        assert!(plan(4096, 100, 116, 116).is_ok());
    }

    #[test]
    fn upstream_connections_are_kept_per_core_and_server() {
        let server = crate::config::parse_server("127.0.0.1:1").expect("server");
        let cfg = Config {
            threads: 2,
            servers: vec![server.clone(); 3],
            backups: vec![server; 2],
            upstream_conns: 1,
            ..Config::default()
        };
        // 2 cores x 5 servers x 1 x 2, 2 per server, 4 per core, the reserve.
        assert_eq!(besides_clients(&cfg), 20 + 10 + 8 + RESERVE);
    }
}
