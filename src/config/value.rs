//! Parsers for single values shared by the command line and the config file:
//! servers, listen addresses, humane durations and sizes, bounded integers.
//!
//! Each returns `Err(reason)` without the flag name; the caller (clap or the
//! file loader) adds which flag or key held the bad value.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use super::{IoBackend, ServerAddr};
use crate::route::Distribution;

/// Largest accepted server weight; keeps the sum of weights far from `u32::MAX`.
pub const MAX_WEIGHT: u32 = 10_000;
/// Smallest `--max-item-size` (memcached's `-I` minimum).
pub const MIN_ITEM_SIZE: usize = 1024;
/// Largest `--max-item-size` (memcached's `-I` maximum).
pub const MAX_ITEM_SIZE: usize = 1 << 30;
/// Upper bound of `-n`; a guard against typos that would size tables absurdly.
pub const MAX_CONNS: usize = 10_000_000;
/// Upper bound of `-i` and `--upstream-conns`.
pub const MAX_SERVER_CONNS: usize = 10_000;
/// Upper bound of `--threads`.
pub const MAX_THREADS: usize = 1024;
/// Upper bound of every duration, so that `Instant + d` can never overflow.
pub const MAX_DURATION: Duration = Duration::from_secs(3600);
/// `sun_path` holds 108 bytes including the terminating NUL.
pub const MAX_UNIX_PATH: usize = 107;

/// Parse `host:port[:weight]` or `[v6]:port[:weight]`.
pub(crate) fn server(s: &str) -> Result<ServerAddr, String> {
    if let Some(rest) = s.trim().strip_prefix("dns+") {
        // Every address of the name is a server: placed by its address.
        let mut a = server(rest)?;
        if a.alias.is_some() {
            return Err("a dns+ set's servers are named by their addresses; drop the name".into());
        }
        if a.host.parse::<std::net::IpAddr>().is_ok() {
            return Err("dns+ needs a host name, not an address".into());
        }
        a.set = true;
        return Ok(a);
    }
    // nutcracker's `host:port:weight name`: the name places the server.
    let (s, alias) = match s.trim().split_once(' ') {
        Some((addr, name)) => {
            let name = name.trim();
            if name.is_empty() || name.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return Err(format!("server name '{name}' must be one word"));
            }
            (addr, Some(name.to_string()))
        }
        None => (s.trim(), None),
    };
    if s.is_empty() {
        return Err("empty; expected host:port[:weight] [name]".into());
    }
    if s.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("contains whitespace; expected host:port[:weight] [name]".into());
    }
    let (host, rest) = if let Some(inner) = s.strip_prefix('[') {
        let Some((h, rest)) = inner.split_once(']') else {
            return Err("missing ']' after an IPv6 address".into());
        };
        if h.parse::<Ipv6Addr>().is_err() {
            return Err(format!("'{h}' is not an IPv6 address"));
        }
        let Some(rest) = rest.strip_prefix(':') else {
            return Err("expected ':port' after ']'".into());
        };
        (h, rest)
    } else {
        if s.matches(':').count() > 2 {
            return Err("IPv6 addresses need brackets, e.g. [::1]:11211".into());
        }
        let Some((h, rest)) = s.split_once(':') else {
            return Err("missing ':port'; expected host:port[:weight]".into());
        };
        hostname(h)?;
        (h, rest)
    };
    let (port, weight) = match rest.split_once(':') {
        Some((p, w)) => (p, Some(w)),
        None => (rest, None),
    };
    let digits = |t: &str| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit());
    let port = match port.parse::<u16>() {
        Ok(0) => return Err("port 0 is not a valid server port".into()),
        Ok(p) if digits(port) => p,
        _ => return Err(format!("port '{port}' is not a number in 1..=65535")),
    };
    let weight = match weight {
        None => 1,
        Some(w) => match w.parse::<u32>() {
            Ok(n) if digits(w) && (1..=MAX_WEIGHT).contains(&n) => n,
            _ => return Err(format!("weight '{w}' is not a number in 1..={MAX_WEIGHT}")),
        },
    };
    Ok(ServerAddr {
        host: host.to_string(),
        port,
        weight,
        alias,
        set: false,
    })
}

/// Check a host name or IPv4 literal (RFC 1123 labels; `_` tolerated).
fn hostname(h: &str) -> Result<(), String> {
    if h.is_empty() {
        return Err("missing host before ':'".into());
    }
    if h.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return h
            .parse::<Ipv4Addr>()
            .map(|_| ())
            .map_err(|_| format!("'{h}' is not an IPv4 address"));
    }
    let name = h.strip_suffix('.').unwrap_or(h);
    if name.len() > 253 {
        return Err("host name longer than 253 characters".into());
    }
    for label in name.split('.') {
        let ok = !label.is_empty()
            && label.len() <= 63
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !ok {
            return Err(format!("'{h}' is not a valid host name"));
        }
    }
    Ok(())
}

/// The identity used to detect duplicates: IP literals in canonical form,
/// names lowercased; the weight does not count.
pub(crate) fn server_identity(s: &ServerAddr) -> (String, u16) {
    let host = match s.host.trim_end_matches('.').parse::<IpAddr>() {
        Ok(ip) => ip.to_string(),
        Err(_) => s.host.trim_end_matches('.').to_ascii_lowercase(),
    };
    (host, s.port)
}

/// `-l`: an IP literal (magent took IPv4 only; IPv6 is accepted, brackets optional).
pub(crate) fn listen(s: &str) -> Result<String, String> {
    let bare = s
        .strip_prefix('[')
        .and_then(|x| x.strip_suffix(']'))
        .unwrap_or(s);
    bare.parse::<IpAddr>()
        .map(|ip| ip.to_string())
        .map_err(|_| "not an IP address (e.g. 0.0.0.0, 127.0.0.1, ::1)".into())
}

/// `--bind ADDR:PORT`, IPv6 as `[::1]:0`; returned in canonical form.
pub(crate) fn bind(s: &str) -> Result<String, String> {
    s.parse::<SocketAddr>()
        .map(|a| a.to_string())
        .map_err(|_| "expected IP:PORT, e.g. 127.0.0.1:11211 or [::1]:0".into())
}

/// A humane duration: `250ms`, `1s`, `1.5s`, `2m`, `1h`, `500us`; bare `0`.
pub(crate) fn duration(s: &str) -> Result<Duration, String> {
    const HINT: &str = "expected a number with a unit: 250ms, 1s, 2m";
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    if num.is_empty() {
        return Err(HINT.into());
    }
    let scale: u128 = match unit.trim() {
        // Long forms as humantime and systemd write them, each unit alike.
        "ns" | "nsec" | "nsecs" => 1,
        "us" | "µs" | "usec" | "usecs" => 1_000,
        "ms" | "msec" | "msecs" => 1_000_000,
        "s" | "sec" | "secs" => 1_000_000_000,
        "m" | "min" | "mins" => 60_000_000_000,
        "h" | "hour" | "hours" => 3_600_000_000_000,
        "" if num.bytes().all(|b| b == b'0' || b == b'.') => 1,
        "" => return Err(format!("missing unit; write {num}s or {num}ms")),
        other => return Err(format!("unknown unit '{other}'; use ns, us, ms, s, m or h")),
    };
    let (int, frac) = num.split_once('.').unwrap_or((num, ""));
    if (int.is_empty() && frac.is_empty()) || frac.contains('.') || int.len() > 20 {
        return Err(HINT.into());
    }
    let too_big = || "too large".to_string();
    let int: u128 = if int.is_empty() {
        0
    } else {
        int.parse().map_err(|_| HINT.to_string())?
    };
    let mut nanos = int.checked_mul(scale).ok_or_else(too_big)?;
    // At most 18 fractional digits matter at nanosecond resolution with hour units.
    let frac = &frac[..frac.len().min(18)];
    if !frac.is_empty() {
        let f: u128 = frac.parse().map_err(|_| HINT.to_string())?;
        let denom = 10u128.pow(frac.len() as u32);
        nanos = nanos
            .checked_add(f.checked_mul(scale).ok_or_else(too_big)? / denom)
            .ok_or_else(too_big)?;
    }
    let nanos = u64::try_from(nanos).map_err(|_| too_big())?;
    Ok(Duration::from_nanos(nanos))
}

/// A duration within `lo..=hi`.
pub(crate) fn duration_in(s: &str, lo: Duration, hi: Duration) -> Result<Duration, String> {
    let d = duration(s)?;
    if d < lo || d > hi {
        return Err(format!(
            "must be between {} and {}",
            fmt_duration(lo),
            fmt_duration(hi)
        ));
    }
    Ok(d)
}

/// Timeouts and intervals: 1ms..=1h.
pub(crate) fn timeout(s: &str) -> Result<Duration, String> {
    duration_in(s, Duration::from_millis(1), MAX_DURATION)
}

/// `--shutdown-timeout`: 0..=1h (0 = stop at once).
pub(crate) fn shutdown_timeout(s: &str) -> Result<Duration, String> {
    duration_in(s, Duration::ZERO, MAX_DURATION)
}

/// Render a duration the way the parser reads it (`1s`, `250ms`, `1h`).
pub fn fmt_duration(d: Duration) -> String {
    let ns = d.as_nanos();
    for (unit, scale) in [
        ("h", 3_600_000_000_000u128),
        ("m", 60_000_000_000),
        ("s", 1_000_000_000),
        ("ms", 1_000_000),
        ("us", 1_000),
    ] {
        if ns >= scale && ns.is_multiple_of(scale) {
            return format!("{}{unit}", ns / scale);
        }
    }
    if ns == 0 {
        "0s".into()
    } else {
        format!("{ns}ns")
    }
}

/// A byte size like memcached's `-I`: `1m`, `512k`, `2097152`, `1g`.
pub(crate) fn size(s: &str) -> Result<usize, String> {
    item_size(bytes(s)?)
}

/// Largest `--missed-keys-limit`.
pub const MAX_MISSED_KEYS_LIMIT: u64 = 16 << 30;

/// `--missed-keys-limit`: a byte size from 0 (always flush) to 16g.
pub(crate) fn missed_keys_limit(s: &str) -> Result<usize, String> {
    let n = bytes(s)?;
    if n > MAX_MISSED_KEYS_LIMIT {
        return Err("must be at most 16g".into());
    }
    usize::try_from(n).map_err(|_| "too large for this machine".to_string())
}

/// A byte count with an optional unit (k, m, g).
fn bytes(s: &str) -> Result<u64, String> {
    const HINT: &str = "expected a size like 1m, 512k or 2097152";
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    if num.is_empty() || num.len() > 20 {
        return Err(HINT.into());
    }
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        _ => return Err(format!("unknown unit '{unit}'; use k, m or g")),
    };
    let n: u64 = num.parse().map_err(|_| HINT.to_string())?;
    Ok(n.saturating_mul(mult))
}

/// Range check for `--max-item-size` given in bytes.
pub(crate) fn item_size(n: u64) -> Result<usize, String> {
    if n < MIN_ITEM_SIZE as u64 || n > MAX_ITEM_SIZE as u64 {
        return Err("must be between 1k (1024) and 1g (1073741824)".into());
    }
    Ok(n as usize)
}

/// An unsigned integer within `lo..=hi`.
pub(crate) fn bounded(s: &str, lo: u64, hi: u64) -> Result<u64, String> {
    let n: u64 = s
        .trim()
        .parse()
        .map_err(|_| format!("not a whole number in {lo}..={hi}"))?;
    in_range(n, lo, hi)
}

/// Range check shared with the config file.
pub(crate) fn in_range(n: u64, lo: u64, hi: u64) -> Result<u64, String> {
    if n < lo || n > hi {
        return Err(format!("must be in {lo}..={hi}"));
    }
    Ok(n)
}

/// `-n`.
pub(crate) fn max_conns(s: &str) -> Result<usize, String> {
    bounded(s, 1, MAX_CONNS as u64).map(|n| n as usize)
}

/// `-i` and `--upstream-conns`.
pub(crate) fn server_conns(s: &str) -> Result<usize, String> {
    bounded(s, 1, MAX_SERVER_CONNS as u64).map(|n| n as usize)
}

/// `--threads`.
pub(crate) fn threads(s: &str) -> Result<usize, String> {
    bounded(s, 1, MAX_THREADS as u64).map(|n| n as usize)
}

/// `--failure-limit`.
pub(crate) fn failure_limit(s: &str) -> Result<u32, String> {
    bounded(s, 1, u32::MAX as u64).map(|n| n as u32)
}

/// `ketama` or `modula`.
pub(crate) fn distribution(s: &str) -> Result<Distribution, String> {
    match s.trim().to_ascii_lowercase().as_str() {
        "ketama" => Ok(Distribution::Ketama),
        "modula" => Ok(Distribution::Modula),
        _ => Err("expected 'ketama' or 'modula'".into()),
    }
}

/// `-a`/`--unix-mask`: permission bits of the unix socket, in octal as
/// memcached's `-a` takes them (`700`, `0660`).
pub(crate) fn unix_mask(s: &str) -> Result<u32, String> {
    let t = s.trim();
    let digits = t.strip_prefix("0o").unwrap_or(t);
    match u32::from_str_radix(digits, 8) {
        Ok(m) if !digits.is_empty() && m <= 0o777 => Ok(m),
        _ => Err(format!(
            "invalid mask {s:?}: expected octal permission bits such as 700 or 0660"
        )),
    }
}

/// `--hash`: one of nutcracker's key hashes.
pub(crate) fn key_hash(s: &str) -> Result<crate::route::KeyHash, String> {
    crate::route::KeyHash::from_name(s.trim()).ok_or_else(|| {
        let names: Vec<&str> = crate::route::KeyHash::ALL
            .iter()
            .map(|h| h.name())
            .collect();
        format!("unknown hash '{s}'; expected one of {}", names.join(", "))
    })
}

/// `--hash-tag`: two characters, the tag's opening and closing byte (`{}`).
pub(crate) fn hash_tag(s: &str) -> Result<String, String> {
    let b = s.as_bytes();
    if b.len() == 2 && b.iter().all(|c| c.is_ascii_graphic()) {
        Ok(s.to_string())
    } else {
        Err(format!(
            "hash tag '{s}' must be two printable ASCII characters, such as {{}}"
        ))
    }
}

/// `--log-level`: one of tracing's levels.
pub(crate) fn log_level(s: &str) -> Result<String, String> {
    let l = s.trim().to_ascii_lowercase();
    match l.as_str() {
        "error" | "warn" | "info" | "debug" | "trace" => Ok(l),
        _ => Err(format!(
            "invalid log level {s:?}: expected error, warn, info, debug or trace"
        )),
    }
}

/// `on` or `off` (also `true`/`false`, `yes`/`no`).
pub(crate) fn on_off(s: &str) -> Result<bool, String> {
    match s.trim().to_ascii_lowercase().as_str() {
        "on" | "true" | "yes" => Ok(true),
        "off" | "false" | "no" => Ok(false),
        _ => Err("expected 'on' or 'off'".into()),
    }
}

/// A share in percent: `5%`, `0.5%` or `5` (percent); 0..=100. Returned as
/// a fraction (`5%` is 0.05).
pub(crate) fn percent(s: &str) -> Result<f64, String> {
    let t = s.trim();
    let n: f64 = t
        .strip_suffix('%')
        .unwrap_or(t)
        .trim()
        .parse()
        .map_err(|_| format!("invalid share {s:?}: expected a percentage such as 5%"))?;
    if !(0.0..=100.0).contains(&n) {
        return Err(format!("invalid share {s:?}: expected 0% to 100%"));
    }
    Ok(n / 100.0)
}

/// `auto`, `uring` (or `io_uring`) or `epoll`.
pub(crate) fn io_backend(s: &str) -> Result<IoBackend, String> {
    match s.trim().to_ascii_lowercase().as_str() {
        "auto" => Ok(IoBackend::Auto),
        "uring" | "io_uring" | "io-uring" => Ok(IoBackend::Uring),
        "epoll" => Ok(IoBackend::Epoll),
        _ => Err("expected 'auto', 'uring' or 'epoll'".into()),
    }
}

/// `-u` / `-g`: a name or a numeric id; only emptiness and NUL are rejected here,
/// the server resolves it when dropping privileges.
pub(crate) fn account(s: &str) -> Result<String, String> {
    if s.is_empty() || s.contains('\0') {
        return Err("expected a name or a numeric id".into());
    }
    Ok(s.to_string())
}

/// `-f`: a unix socket path that fits in `sun_path`.
pub(crate) fn unix_path(s: &std::ffi::OsStr) -> Result<std::path::PathBuf, String> {
    use std::os::unix::ffi::OsStrExt;
    let b = s.as_bytes();
    if b.is_empty() || b.contains(&0) {
        return Err("expected a file path".into());
    }
    if b.len() > MAX_UNIX_PATH {
        return Err(format!(
            "{} bytes long; unix socket paths are limited to {MAX_UNIX_PATH}",
            b.len()
        ));
    }
    Ok(s.into())
}

/// A non-empty path (`--pid-file`, `--config`).
pub(crate) fn path(s: &std::ffi::OsStr) -> Result<std::path::PathBuf, String> {
    use std::os::unix::ffi::OsStrExt;
    if s.is_empty() || s.as_bytes().contains(&0) {
        return Err("expected a file path".into());
    }
    Ok(s.into())
}
