//! The metrics endpoint: a control-plane thread that answers `GET /metrics`
//! with the merged per-core metrics, and the snapshot it (and `stats proxy`)
//! takes. Never runs on a core: a slow scraper costs the cores nothing.
//!
//! The HTTP side is deliberately small: blocking std sockets, one connection
//! at a time with short timeouts, `Connection: close`. A scraper asks every
//! few seconds; nothing here needs more.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use crate::metrics::{self, ProcessCounters, ServerInput, Snapshot};
use crate::stats::Counter;

use super::tls::HandshakeError;
use super::topology::{Shared, Topology};

/// Longest request head read (request line and headers).
const MAX_HEAD: usize = 8 * 1024;

/// How long a scraper may take to send its request or read the reply.
const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// The `n` hottest keys of every core's last published sketch, with the
/// pool and primary each is placed on now.
pub(crate) fn hot_keys(shared: &Shared, topo: &Topology, n: usize) -> Vec<crate::stats::HotView> {
    let published: Vec<Vec<crate::upstream::hot::HotKey>> = shared
        .hot
        .iter()
        .map(|m| m.lock().unwrap_or_else(|e| e.into_inner()).clone())
        .collect();
    crate::upstream::hot::merge(published.iter().map(Vec::as_slice), n)
        .into_iter()
        .map(|k| {
            let r = topo.router.route(k.key());
            let primary = topo
                .servers
                .get(r.primary as usize)
                .map_or_else(String::new, |s| s.name.clone());
            crate::stats::HotView {
                pool: topo.router.pool_name(r.pool).to_string(),
                primary,
                rate: k.rate,
                spread: k.spread,
                key: k.key().to_vec(),
            }
        })
        .collect()
}

/// Merge every core's metrics and the servers' health into a snapshot.
pub(crate) fn snapshot(shared: &Shared, topo: &Topology) -> Snapshot {
    let sum = |c: Counter| -> u64 { shared.stats.iter().map(|s| s.get(c)).sum() };
    let process = ProcessCounters {
        client_connections: shared
            .stats
            .iter()
            .map(|s| s.curr_connections.load(Ordering::Relaxed))
            .sum(),
        client_connections_rejected: sum(Counter::RejectedConnections),
        client_bytes_read: sum(Counter::BytesRead),
        client_bytes_written: sum(Counter::BytesWritten),
        failovers: sum(Counter::Failovers),
        resync_copies: sum(Counter::ResyncCopies),
        repairs: sum(Counter::Repairs),
        section_waits: sum(Counter::SectionWaits),
        backend_desyncs: sum(Counter::BackendDesyncs),
        input_memory_refusals: sum(Counter::InputMemoryRefusals),
        input_bytes: shared.input_bytes.load(Ordering::Relaxed) as u64,
        tls_connections: shared
            .stats
            .iter()
            .map(|s| s.curr_tls_connections.load(Ordering::Relaxed))
            .sum(),
        tls_handshakes: sum(Counter::TlsHandshakes),
        tls_handshake_errors: HandshakeError::ALL
            .iter()
            .map(|r| (r.as_str(), sum(r.counter())))
            .collect(),
        tls_on_plain_port: sum(Counter::TlsOnPlainPort),
        migration_hits: sum(Counter::MigrationHits),
        migration_misses: sum(Counter::MigrationMisses),
        migration_deletes: sum(Counter::MigrationDeletes),
        migration_window_open: u64::from(topo.window_until.is_some()),
        migration_placements: topo.history.len() as u64,
        hot_keys: hot_keys(shared, topo, 10)
            .into_iter()
            .map(|h| (crate::upstream::hot::label(&h.key), h.pool, h.rate))
            .collect(),
    };
    let servers: Vec<ServerInput<'_>> = topo
        .servers
        .iter()
        .map(|s| ServerInput {
            name: &s.name,
            role: s.role,
            pool: &s.pool,
            state: s.health.state(),
            health: s.health.counters(),
            metrics: &s.metrics,
        })
        .collect();
    Snapshot::take(
        &shared.metrics,
        &servers,
        process,
        shared.backend,
        shared.timing,
    )
}

/// Bind the endpoint (before detaching, so that a bad address fails startup).
pub(crate) fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr)
}

/// Serve scrapes on a thread of its own until the process exits.
pub(crate) fn spawn(listener: TcpListener, shared: Arc<Shared>) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("memring-metrics".into())
        .spawn(move || {
            for conn in listener.incoming() {
                match conn {
                    Ok(s) => {
                        if let Err(e) = answer(s, &shared) {
                            tracing::debug!(error = %e, "metrics request failed");
                        }
                    }
                    Err(e) => {
                        // EMFILE and friends: back off instead of spinning.
                        tracing::warn!(error = %e, "metrics accept failed");
                        std::thread::sleep(Duration::from_millis(50));
                    }
                }
            }
        })
        .map(|_| ())
}

/// What a request head asks for.
#[derive(Debug, PartialEq, Eq)]
enum Ask {
    /// `GET /metrics` (a query string is ignored).
    Metrics,
    /// Anything else: 404.
    Other,
    /// Not HTTP, or too long: 400.
    Bad,
}

/// Read the request head (up to the blank line) and classify it.
fn read_head(s: &mut TcpStream) -> std::io::Result<Ask> {
    let mut head = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    // Bounded by MAX_HEAD and by the read timeout.
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && !head.windows(2).any(|w| w == b"\n\n") {
        if head.len() >= MAX_HEAD {
            return Ok(Ask::Bad);
        }
        let n = s.read(&mut chunk)?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&chunk[..n]);
    }
    Ok(classify(&head))
}

fn classify(head: &[u8]) -> Ask {
    let line = head.split(|&b| b == b'\n').next().unwrap_or_default();
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let mut words = crate::protocol::lex::words(line);
    let (Some(method), Some(target), Some(version)) = (words.next(), words.next(), words.next())
    else {
        return Ask::Bad;
    };
    if !version.starts_with(b"HTTP/") {
        return Ask::Bad;
    }
    let path = target.split(|&b| b == b'?').next().unwrap_or_default();
    if method == b"GET" && path == b"/metrics" {
        Ask::Metrics
    } else {
        Ask::Other
    }
}

fn answer(mut s: TcpStream, shared: &Shared) -> std::io::Result<()> {
    s.set_read_timeout(Some(IO_TIMEOUT))?;
    s.set_write_timeout(Some(IO_TIMEOUT))?;
    let (status, ctype, body) = match read_head(&mut s)? {
        Ask::Metrics => {
            let topo = shared.current();
            let text = metrics::expose::render(snapshot(shared, &topo));
            ("200 OK", metrics::expose::CONTENT_TYPE, text)
        }
        Ask::Other => (
            "404 Not Found",
            "text/plain; charset=utf-8",
            "not found: try GET /metrics\n".to_string(),
        ),
        Ask::Bad => (
            "400 Bad Request",
            "text/plain; charset=utf-8",
            "bad request\n".to_string(),
        ),
    };
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes())?;
    s.write_all(body.as_bytes())?;
    s.flush()?;
    let _ = s.shutdown(std::net::Shutdown::Write);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_get_metrics_is_served() {
        let table: &[(&[u8], Ask)] = &[
            (b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n", Ask::Metrics),
            (b"GET /metrics?x=1 HTTP/1.0\r\n\r\n", Ask::Metrics),
            (b"GET / HTTP/1.1\r\n\r\n", Ask::Other),
            (b"GET /metricsx HTTP/1.1\r\n\r\n", Ask::Other),
            (b"POST /metrics HTTP/1.1\r\n\r\n", Ask::Other),
            (b"HEAD /metrics HTTP/1.1\r\n\r\n", Ask::Other),
            (b"GET /metrics\r\n\r\n", Ask::Bad),
            (b"stats\r\n", Ask::Bad),
            (b"", Ask::Bad),
            (b"\xff\xfe garbage", Ask::Bad),
        ];
        for (head, want) in table {
            assert_eq!(classify(head), *want, "{:?}", String::from_utf8_lossy(head));
        }
    }
}
