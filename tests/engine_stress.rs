//! The data path under the stress a cache proxy exists for (issue 8): each
//! test is one failure of the task-based engine, held against the per-core
//! engine with real memcached (and a small fault server where a real one
//! cannot misbehave on cue).
//!
//! None asserts on speed: budgets are checked in bytes, deadlines only
//! separate "finished" from "leaked" with a wide margin.

// Tests and benchmarks keep time themselves (clippy.toml holds the library).
#![allow(clippy::disallowed_methods)]

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::*;

/// 500 KB: the large value of the stress scenarios.
const BIG: usize = 500 * 1000;

fn stats_of(p: &Memring) -> Vec<(String, String)> {
    proxy_stats(&mut p.client())
}

/// Peak resident memory of a process, in bytes (`VmHWM`).
fn peak_rss(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read /proc status");
    let kb: u64 = s
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc status");
    kb * 1024
}

/// Store the large value every scenario reads, through the proxy.
fn seed_big(c: &mut Client) {
    assert_bytes(
        &c.request(&storage("set", "big", 0, 0, &vec![b'v'; BIG])),
        b"STORED\r\n",
        "seed",
    );
}

/// Read one `get` reply of exactly one value of `len` bytes (or END on a
/// miss); returns whether it was the value.
fn read_value(r: &mut BufReader<TcpStream>, len: usize) -> Result<bool, String> {
    let mut line = Vec::new();
    r.read_until(b'\n', &mut line).map_err(|e| e.to_string())?;
    if line == b"END\r\n" {
        return Ok(false);
    }
    if !line.starts_with(b"VALUE ") {
        return Err(format!("unexpected reply line {:?}", show(&line)));
    }
    let mut data = vec![0u8; len + 2 + 5];
    r.read_exact(&mut data).map_err(|e| e.to_string())?;
    if &data[len..] != b"\r\nEND\r\n" {
        return Err("value not followed by END".into());
    }
    Ok(true)
}

/// 200 clients send an early-answered request, then read-modify-write
/// batches on shared keys, and close without reading: every replicated
/// write still reaches both replicas.
#[test]
fn vanished_clients_leave_the_backup_in_step() {
    let primary = Memcached::start();
    let backup = Memcached::start();
    // Four event loops (more than this machine's cores, so they also
    // preempt each other): each has its own connections, so the copies of
    // one key's read-modify-writes stay in order only through the key's
    // exclusive section.
    let proxy = start_with_backups(&[&primary], &[&backup], &["--threads", "4"]);
    let keys = 30;
    let mut c = proxy.client();
    for k in 0..keys {
        assert_bytes(
            &c.request(&storage("set", &format!("ctr{k}"), 0, 0, b"0")),
            b"STORED\r\n",
            "seed counter",
        );
        assert_bytes(
            &c.request(&storage("set", &format!("log{k}"), 0, 0, b"-")),
            b"STORED\r\n",
            "seed log",
        );
    }
    let addr = proxy.addr();
    let handles: Vec<_> = (0..200)
        .map(|i| {
            thread::spawn(move || {
                let mut batch = b"mn\r\n".to_vec();
                for k in 0..keys {
                    batch.extend_from_slice(format!("incr ctr{k} 1\r\n").as_bytes());
                    batch.extend_from_slice(&storage("append", &format!("log{k}"), 0, 0, b"x"));
                    batch.extend_from_slice(&storage("add", &format!("new{i}_{k}"), 0, 0, b"y"));
                }
                let mut s = TcpStream::connect(addr).expect("connect");
                s.write_all(&batch).expect("send batch");
                // Read the early answer only, then vanish.
                let mut mn = [0u8; 4];
                let _ = s.read_exact(&mut mn);
                drop(s);
            })
        })
        .collect();
    for h in handles {
        h.join().expect("client thread");
    }
    // Every request runs to its end on the proxy: wait until both replicas
    // agree on every key (a leak would leave them apart forever).
    let mut pc = primary.client();
    let mut bc = backup.client();
    let mut names: Vec<String> = Vec::new();
    for k in 0..keys {
        names.push(format!("ctr{k}"));
        names.push(format!("log{k}"));
    }
    // A sample of the added keys too: a client held back behind a write
    // that waits for its key's section may have its last adds started
    // after every counter already agrees.
    for i in (0..200).step_by(37) {
        for k in 0..keys {
            names.push(format!("new{i}_{k}"));
        }
    }
    let mut last = String::new();
    let agreed = wait_for(Duration::from_secs(60), || {
        for n in &names {
            let cmd = format!("get {n}\r\n");
            let (a, b) = (pc.request(cmd.as_bytes()), bc.request(cmd.as_bytes()));
            if a != b {
                last = format!("{n}: primary {} backup {}", show(&a), show(&b));
                return None;
            }
        }
        Some(())
    });
    assert!(agreed.is_some(), "replicas never converged: {last}");
    // A client that closes without reading resets its connection, so the
    // requests the proxy had not read yet are lost with it (as with
    // memcached): counters end at most at 200, and where they end, both
    // replicas agree (checked above).
    let mut applied = 0u64;
    for k in 0..keys {
        let reply = pc.request(format!("get ctr{k}\r\n").as_bytes());
        let items = parse_values(&reply).expect("counter value");
        let n: u64 = String::from_utf8_lossy(&items[0].2)
            .parse()
            .expect("number");
        assert!(n <= 200, "ctr{k} = {n}: an incr ran twice");
        applied += n;
        let log = pc.request(format!("get log{k}\r\n").as_bytes());
        let items = parse_values(&log).expect("log value");
        assert!(items[0].2.len() <= 201, "an append ran twice");
    }
    eprintln!(
        "{applied} of {} incrs reached the proxy before their client vanished",
        200 * keys
    );
    assert!(applied > 0, "no request ran at all");
}

/// Clients on several cores pipeline `incr` and `get` of one shared counter:
/// a write that waits for its key's section is never overtaken by its own
/// client's later requests (each get sees at least the value its incr
/// returned), no increment is lost, and both replicas end equal.
#[test]
fn contended_writes_keep_their_clients_order() {
    let primary = Memcached::start();
    let backup = Memcached::start();
    let proxy = start_with_backups(&[&primary], &[&backup], &["--threads", "4"]);
    let mut c = proxy.client();
    assert_bytes(
        &c.request(&storage("set", "hot", 0, 0, b"0")),
        b"STORED\r\n",
        "seed",
    );
    let (clients, rounds, pairs) = (8, 25, 20);
    let handles: Vec<_> = (0..clients)
        .map(|_| {
            let mut c = proxy.client();
            thread::spawn(move || {
                for _ in 0..rounds {
                    c.send(&b"incr hot 1\r\nget hot\r\n".repeat(pairs));
                    for _ in 0..pairs {
                        let line = c.read_line();
                        let mine: u64 = String::from_utf8_lossy(&line)
                            .trim()
                            .parse()
                            .unwrap_or_else(|_| panic!("incr reply {}", show(&line)));
                        let got = c.read_reply(Reply::Values);
                        let items = parse_values(&got).expect("get reply");
                        let seen: u64 = String::from_utf8_lossy(&items[0].2)
                            .parse()
                            .expect("number");
                        assert!(
                            seen >= mine,
                            "get saw {seen} after its own incr gave {mine}"
                        );
                    }
                }
            })
        })
        .collect();
    for h in handles {
        h.join().expect("client thread");
    }
    // A client's second pipelined incr of the key already waits for the
    // first: the scenario cannot run without waits.
    let waits = stat_u64(&proxy_stats(&mut c), "proxy_section_waits");
    assert!(waits > 0, "no write waited for its key's section");
    eprintln!("{waits} writes waited for the key's section");
    let want = format!(
        "VALUE hot 0 {}\r\n{}\r\nEND\r\n",
        4,
        clients * rounds * pairs
    );
    assert_bytes(
        &primary.client().request(b"get hot\r\n"),
        want.as_bytes(),
        "primary",
    );
    assert_bytes(
        &backup.client().request(b"get hot\r\n"),
        want.as_bytes(),
        "backup",
    );
}

/// Two clients pipeline 2000 large gets each and read every reply: a deep
/// queue streaming at the client's pace is progress, never a timeout.
#[test]
fn deep_pipelines_of_large_values_do_not_time_out() {
    let server = Memcached::start();
    let proxy = Memring::start_for(&[&server], &["--request-timeout", "1s"]);
    let mut c = proxy.client();
    seed_big(&mut c);
    let addr = proxy.addr();
    let handles: Vec<_> = (0..2)
        .map(|_| {
            thread::spawn(move || -> Result<usize, String> {
                let s = TcpStream::connect(addr).map_err(|e| e.to_string())?;
                s.set_read_timeout(Some(Duration::from_secs(60))).ok();
                let mut w = s.try_clone().map_err(|e| e.to_string())?;
                let writer = thread::spawn(move || {
                    let batch = b"get big\r\n".repeat(2000);
                    w.write_all(&batch)
                });
                let mut r = BufReader::with_capacity(1 << 20, s);
                let mut hits = 0;
                for _ in 0..2000 {
                    if read_value(&mut r, BIG)? {
                        hits += 1;
                    }
                }
                writer
                    .join()
                    .map_err(|_| "writer panicked".to_string())?
                    .map_err(|e| e.to_string())?;
                Ok(hits)
            })
        })
        .collect();
    for h in handles {
        let hits = h.join().expect("client thread").expect("client");
        assert_eq!(hits, 2000, "every get answered with the value");
    }
    let st = stats_of(&proxy);
    assert_eq!(stat_u64(&st, "proxy_server_errors"), 0, "no errors: {st:?}");
    assert_eq!(stat_u64(&st, "proxy_backend_timeouts"), 0);
    assert_eq!(server_stat(&st, &server, "primary", "ejections"), "0");
    assert_eq!(server_stat(&st, &server, "primary", "state"), "up");
}

/// A tiny memcached stand-in that answers `get <key>` for any key at once,
/// except `slow`, which stalls its connection for `stall` first (as a real
/// server stuck on one request would).
struct SlowKeyServer {
    addr: std::net::SocketAddr,
    stop: Arc<AtomicBool>,
    accepted: Arc<AtomicUsize>,
}

impl SlowKeyServer {
    fn start(stall: Duration) -> SlowKeyServer {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = l.local_addr().expect("addr");
        let stop = Arc::new(AtomicBool::new(false));
        let accepted = Arc::new(AtomicUsize::new(0));
        let (stop2, acc2) = (stop.clone(), accepted.clone());
        thread::spawn(move || {
            for conn in l.incoming() {
                if stop2.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                acc2.fetch_add(1, Ordering::SeqCst);
                let stop3 = stop2.clone();
                thread::spawn(move || serve_slow_key(conn, stall, &stop3));
            }
        });
        SlowKeyServer {
            addr,
            stop,
            accepted,
        }
    }
}

impl Drop for SlowKeyServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr);
    }
}

fn serve_slow_key(conn: TcpStream, stall: Duration, stop: &AtomicBool) {
    let Ok(mut w) = conn.try_clone() else { return };
    let mut r = BufReader::new(conn);
    let mut line = String::new();
    // Bounded by the connection: it ends when the proxy closes it.
    while !stop.load(Ordering::SeqCst) {
        line.clear();
        match r.read_line(&mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let reply = match line.trim_end().split(' ').collect::<Vec<_>>().as_slice() {
            ["get", key] => {
                if *key == "slow" {
                    thread::sleep(stall);
                }
                format!("VALUE {key} 0 1\r\nx\r\nEND\r\n")
            }
            ["version"] => "VERSION 1.6.0\r\n".to_string(),
            _ => "ERROR\r\n".to_string(),
        };
        if w.write_all(reply.as_bytes()).is_err() {
            return;
        }
    }
}

/// One key whose reply is delayed past the request timeout costs that key,
/// not the unrelated requests pipelined with it, and does not eject the
/// server.
#[test]
fn one_slow_key_does_not_fail_its_neighbours() {
    // Three request timeouts: the stall outlasts the timeout even when the
    // proxy's loop runs late on a busy machine.
    let server = SlowKeyServer::start(Duration::from_secs(3));
    let proxy = Memring::start(&[
        "-D",
        "--bind",
        "127.0.0.1:0",
        "--threads",
        "1",
        "-s",
        &server.addr.to_string(),
        "--request-timeout",
        "1s",
    ]);
    let addr = proxy.addr();
    let running = Arc::new(AtomicBool::new(true));
    let workers: Vec<_> = (0..4)
        .map(|w| {
            let running = running.clone();
            thread::spawn(move || -> (usize, usize) {
                let mut c = Client::tcp(addr);
                let (mut ok, mut failed) = (0, 0);
                let mut i = 0usize;
                // Bounded by the main thread's stop flag and a count.
                while running.load(Ordering::SeqCst) && i < 1_000_000 {
                    let key = format!("k{w}_{i}");
                    let reply = c.request(format!("get {key}\r\n").as_bytes());
                    if reply == format!("VALUE {key} 0 1\r\nx\r\nEND\r\n").as_bytes() {
                        ok += 1;
                    } else {
                        failed += 1;
                    }
                    i += 1;
                }
                (ok, failed)
            })
        })
        .collect();
    // Let the workers get going, then ask for the slow key once.
    let mut c = Client::tcp(addr);
    assert!(
        wait_for(Duration::from_secs(30), || {
            (stat_u64(&proxy_stats(&mut c), "cmd_get") > 200).then_some(())
        })
        .is_some(),
        "workers made no progress"
    );
    let slow = c.request(b"get slow\r\n");
    assert_server_error(&slow, "the stalled key times out");
    // Keep the others running a little past the stall.
    let before = stat_u64(&proxy_stats(&mut c), "cmd_get");
    assert!(
        wait_for(Duration::from_secs(30), || {
            (stat_u64(&proxy_stats(&mut c), "cmd_get") > before + 200).then_some(())
        })
        .is_some(),
        "no progress after the stall"
    );
    running.store(false, Ordering::SeqCst);
    let (mut ok, mut failed) = (0, 0);
    for w in workers {
        let (o, f) = w.join().expect("worker");
        ok += o;
        failed += f;
    }
    eprintln!(
        "unrelated gets: {ok} ok, {failed} failed; connections {}",
        server.accepted.load(Ordering::SeqCst)
    );
    assert!(ok > 0);
    assert!(
        failed * 100 <= ok + failed,
        "more than 1% of unrelated requests failed: {failed} of {}",
        ok + failed
    );
    let st = proxy_stats(&mut c);
    assert_eq!(stat(&st, "server_0:state"), "up", "{st:?}");
    assert_eq!(stat(&st, "server_0:ejections"), "0", "{st:?}");
}

/// Clients that pipeline large gets and do not read are held to their byte
/// budget: the proxy's memory stays bounded, a well-behaved client on the
/// same proxy is unaffected, and the slow clients get every value later.
#[test]
fn clients_that_do_not_read_are_bounded_in_bytes() {
    let server = Memcached::start();
    let budget: u64 = 4 << 20;
    let proxy = Memring::start_for(&[&server], &["--client-buffer", "4m"]);
    let mut c = proxy.client();
    seed_big(&mut c);
    let addr = proxy.addr();
    let slow: Vec<TcpStream> = (0..10)
        .map(|_| {
            let s = TcpStream::connect(addr).expect("connect");
            s.set_read_timeout(Some(Duration::from_secs(120))).ok();
            let mut w = s.try_clone().expect("clone");
            // Small requests: all 2000 fit the socket buffers, so this
            // write completes although nobody reads the answers.
            w.write_all(&b"get big\r\n".repeat(2000)).expect("pipeline");
            s
        })
        .collect();
    // While they stall, a well-behaved client works normally.
    let started = Instant::now();
    let mut errors = 0;
    let mut i = 0u64;
    while started.elapsed() < Duration::from_secs(15) {
        let key = format!("ok{}", i % 50);
        let set = c.request(&storage("set", &key, 0, 0, b"fine"));
        let get = c.request(format!("get {key}\r\n").as_bytes());
        if set != b"STORED\r\n" || get != format!("VALUE {key} 0 4\r\nfine\r\nEND\r\n").as_bytes() {
            errors += 1;
        }
        i += 1;
        thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(errors, 0, "the well-behaved client saw errors");
    let peak = peak_rss(proxy.pid());
    let limit = (64 << 20) + 10 * budget;
    eprintln!(
        "peak RSS {:.1} MiB (limit {:.1} MiB)",
        peak as f64 / 1048576.0,
        limit as f64 / 1048576.0
    );
    assert!(peak < limit, "peak RSS {peak} over {limit}");
    let readers: Vec<_> = slow
        .into_iter()
        .map(|s| {
            thread::spawn(move || -> Result<usize, String> {
                let mut r = BufReader::with_capacity(1 << 20, s);
                let mut hits = 0;
                for _ in 0..2000 {
                    if read_value(&mut r, BIG)? {
                        hits += 1;
                    }
                }
                Ok(hits)
            })
        })
        .collect();
    for r in readers {
        let hits = r.join().expect("reader").expect("slow client");
        assert_eq!(hits, 2000, "a slow client got every value");
    }
}

/// After clients vanish mid-request, SIGTERM finds nothing in flight and the
/// proxy exits at once, not after `--shutdown-timeout` (60 s here).
#[test]
fn sigterm_after_vanished_clients_exits_promptly() {
    let server = Memcached::start();
    let mut proxy = Memring::start_for(&[&server], &["--shutdown-timeout", "60s"]);
    let mut c = proxy.client();
    seed_big(&mut c);
    drop(c);
    for _ in 0..20 {
        let mut s = TcpStream::connect(proxy.addr()).expect("connect");
        s.write_all(&b"get big\r\n".repeat(100)).expect("send");
        drop(s);
    }
    // Let the proxy see them go: a fresh stats round trip orders after them.
    let _ = stats_of(&proxy);
    let t = Instant::now();
    let status = proxy.terminate();
    let took = t.elapsed();
    eprintln!("exit after SIGTERM took {took:?}");
    assert!(status.success(), "exit status {status:?}");
    assert!(
        took < Duration::from_secs(20),
        "waited for requests that had leaked ({took:?})"
    );
}
