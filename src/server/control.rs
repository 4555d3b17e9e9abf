//! The control plane of the engine: probes of ejected servers, on their own
//! thread with blocking sockets, never on a core.
//!
//! Every 50 ms (jittered) the prober looks for ejected servers whose probe
//! is due and claims them; each claimed probe runs on a short-lived thread
//! (`version`, then `flush_all` when the server may hold stale values) and
//! reports back to the server's shared health.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::upstream::Probe;

use super::core::{Settings, Shared};

/// Start the prober thread.
pub(super) fn spawn_prober(shared: Arc<Shared>) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("memring-control".into())
        .spawn(move || prober(&shared))
        .map(drop)
}

fn prober(shared: &Arc<Shared>) {
    let mut rng = 0x2545_F491_4F6C_DD1Du64 ^ u64::from(std::process::id());
    let mut jitter = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        (rng >> 11) as f64 / (1u64 << 53) as f64
    };
    let tick = Duration::from_millis(50);
    while !shared.stopping.load(Ordering::Relaxed) {
        std::thread::sleep(tick.mul_f64(0.5 + jitter()));
        let topo = shared.current();
        let now = Instant::now();
        for s in &topo.servers {
            let Some(probe) = s.health.try_claim_probe(now) else {
                continue;
            };
            let (health, addr, name, settings) =
                (s.health.clone(), s.addr, s.name.clone(), topo.settings);
            let j = jitter();
            let spawned = std::thread::Builder::new()
                .name("memring-probe".into())
                .spawn(move || {
                    let ok = probe_server(addr, probe, &settings);
                    let now = Instant::now();
                    if ok && health.probe_succeeded(now, probe) {
                        tracing::warn!(server = %name, flushed = probe.flush, "server rejoined");
                        return;
                    }
                    if ok {
                        tracing::info!(server = %name, "probe overtaken by a missed write; retrying");
                    }
                    health.probe_failed(now, &settings.policy, probe, j);
                });
            if let Err(e) = spawned {
                tracing::warn!(error = %e, "cannot start a probe thread");
                s.health
                    .probe_failed(Instant::now(), &topo.settings.policy, probe, j);
            }
        }
    }
}

/// Connect, ask `version`, and `flush_all` when the server may be stale.
fn probe_server(addr: SocketAddr, probe: Probe, settings: &Settings) -> bool {
    let Ok(mut s) = TcpStream::connect_timeout(&addr, settings.connect_timeout) else {
        return false;
    };
    let limit = Some(settings.request_timeout.max(Duration::from_millis(100)));
    if s.set_read_timeout(limit).is_err() || s.set_write_timeout(limit).is_err() {
        return false;
    }
    let _ = s.set_nodelay(true);
    let ok = roundtrip(&mut s, b"version\r\n", b"VERSION ")
        && (!probe.flush || roundtrip(&mut s, b"flush_all\r\n", b"OK\r\n"));
    let _ = s.shutdown(std::net::Shutdown::Both);
    ok
}

/// Send `req` and read one line; true when it starts with `want`.
fn roundtrip(s: &mut TcpStream, req: &[u8], want: &[u8]) -> bool {
    if s.write_all(req).is_err() {
        return false;
    }
    let mut line = Vec::with_capacity(64);
    let mut byte = [0u8; 256];
    // Bounded: a reply line longer than 4 KiB is not a probe answer.
    while line.len() < 4096 {
        match s.read(&mut byte) {
            Ok(0) | Err(_) => return false,
            Ok(n) => {
                line.extend_from_slice(&byte[..n]);
                if line.ends_with(b"\r\n") {
                    return line.starts_with(want);
                }
            }
        }
    }
    false
}
