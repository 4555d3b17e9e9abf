//! One slow primary (issue 22): read latency when a primary freezes for
//! 100 ms every second, with hedged reads and without, against the same
//! run with no freezes.
//!
//! Three primaries with three backups (real memcached) behind one memring
//! (`--threads 1`). memring is pinned to a core of its own; the servers and
//! the load generator share the other. The load is open loop: each client
//! thread sends gets on a schedule of exponential gaps (spread arrivals),
//! and a get's latency runs from its scheduled time, so a reply held up by
//! the freeze also counts against the gets queued behind it (no
//! coordinated omission). The freezer SIGSTOPs the first primary for
//! `--freeze` every `--every`.
//!
//! ```text
//! MEMRING_BIN=target/release/memring cargo bench --bench freeze -- [--rate 8000] [--duration 10s]
//!     [--freeze 100ms] [--every 1s] [--hedge-budget 5%] [--rounds 3]
//! ```
//! Reported per run: p50, p99, p99.9 and max in microseconds, the hedges
//! memring sent and won, and the upstream reads per client read (every
//! memcached's `cmd_get`). Each round runs the three cases once, in an
//! order rotated by round; the summary gives the medians over rounds of the
//! issue's three ratios (frozen with hedging / no freezes: p99, p99.9 and
//! upstream reads per read), each taken within its round.

// Tests and benchmarks keep time themselves (clippy.toml holds the library).
#![allow(clippy::disallowed_methods)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

#[path = "support/mod.rs"]
mod support;
use support::{memcached, memring, pin_self, stat, stats, Proc};

/// Distinct keys, all written before measuring (every get hits).
const KEYS: usize = 10_000;
/// Client threads (one connection each), sharing the offered rate.
const CLIENTS: usize = 16;

struct Opts {
    rate: f64,
    duration: Duration,
    freeze: Duration,
    every: Duration,
    /// memring's `--hedge-budget`.
    budget: String,
    rounds: usize,
}

fn parse_duration(s: &str) -> Duration {
    let (n, scale) = if let Some(v) = s.strip_suffix("ms") {
        (v, 0.001)
    } else if let Some(v) = s.strip_suffix('s') {
        (v, 1.0)
    } else {
        (s, 1.0)
    };
    Duration::from_secs_f64(
        n.parse::<f64>()
            .unwrap_or_else(|_| panic!("bad duration {s:?}"))
            * scale,
    )
}

fn opts() -> Opts {
    let mut o = Opts {
        rate: 8000.0,
        duration: Duration::from_secs(10),
        freeze: Duration::from_millis(100),
        every: Duration::from_secs(1),
        budget: "5%".to_string(),
        rounds: 3,
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut val = || it.next().cloned().unwrap_or_default();
        match a.as_str() {
            "--rate" => o.rate = val().parse().expect("--rate N"),
            "--duration" => o.duration = parse_duration(&val()),
            "--freeze" => o.freeze = parse_duration(&val()),
            "--every" => o.every = parse_duration(&val()),
            "--hedge-budget" => o.budget = val(),
            "--rounds" => o.rounds = val().parse::<usize>().expect("--rounds N").max(1),
            _ => {}
        }
    }
    o
}

/// Send `cmd` and read until a line ending the reply (`END`, `STORED`).
fn request(s: &mut BufReader<TcpStream>, cmd: &[u8]) -> Vec<u8> {
    s.get_mut().write_all(cmd).expect("send");
    let mut out = Vec::new();
    // Bounded by the reply: a VALUE block, then END (or one status line).
    loop {
        let mut line = Vec::new();
        let n = s.read_until(b'\n', &mut line).expect("read");
        assert!(n > 0, "connection closed");
        let done = line.starts_with(b"END") || !line.starts_with(b"VALUE");
        let len = line
            .starts_with(b"VALUE")
            .then(|| {
                let text = String::from_utf8_lossy(&line);
                text.split_whitespace()
                    .nth(3)
                    .and_then(|n| n.parse::<usize>().ok())
            })
            .flatten();
        out.extend_from_slice(&line);
        if let Some(len) = len {
            let mut data = vec![0u8; len + 2];
            s.read_exact(&mut data).expect("data");
            out.extend_from_slice(&data);
            continue;
        }
        if done {
            return out;
        }
    }
}

/// xorshift64*, one per client thread.
struct Rng(u64);

impl Rng {
    fn next_f64(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64
    }
}

struct Outcome {
    hist: Histogram<u64>,
    gets: u64,
    upstream_gets: u64,
    hedges_sent: u64,
    hedges_won: u64,
    hedges_skipped: u64,
}

/// One run: a fresh pool and memring (`hedge` on or off), the load, and
/// the freezer when `freezing`.
fn run(o: &Opts, hedge: bool, freezing: bool) -> Outcome {
    let (proxy_cpu, pool_cpu) = (PROXY_CPU, POOL_CPU);
    let servers: Vec<(Proc, SocketAddr)> = (0..6).map(|_| memcached(pool_cpu)).collect();
    let addrs: Vec<SocketAddr> = servers.iter().map(|(_, a)| *a).collect();
    let flags = [
        "--request-timeout",
        "2s",
        "--hedge",
        if hedge { "on" } else { "off" },
        "--hedge-budget",
        &o.budget,
    ];
    let (_proxy, addr) = memring(proxy_cpu, &addrs[..3], &addrs[3..], &flags);
    let value = vec![b'x'; 100];
    let mut w = BufReader::new(TcpStream::connect(addr).expect("connect"));
    for k in 0..KEYS {
        let mut cmd = format!("set freeze:{k} 0 0 {}\r\n", value.len()).into_bytes();
        cmd.extend_from_slice(&value);
        cmd.extend_from_slice(b"\r\n");
        assert_eq!(request(&mut w, &cmd), b"STORED\r\n");
    }
    let before: Vec<u64> = servers
        .iter()
        .map(|(_, a)| stat(&stats(*a), "cmd_get"))
        .collect();
    let stop = Arc::new(AtomicBool::new(false));
    let frozen_pid = servers[0].0 .0.id() as i32;
    let freezer = freezing.then(|| {
        let (stop, freeze, every) = (stop.clone(), o.freeze, o.every);
        std::thread::spawn(move || {
            // Bounded by the run's end.
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(every.saturating_sub(freeze));
                // SAFETY: kill(2) on the child's pid (taskset execs it).
                unsafe { libc::kill(frozen_pid, libc::SIGSTOP) };
                std::thread::sleep(freeze);
                // SAFETY: as above.
                unsafe { libc::kill(frozen_pid, libc::SIGCONT) };
            }
        })
    });
    let start = Instant::now();
    let clients: Vec<_> = (0..CLIENTS)
        .map(|t| {
            let (rate, duration) = (o.rate / CLIENTS as f64, o.duration);
            std::thread::spawn(move || {
                let mut s = BufReader::new(TcpStream::connect(addr).expect("connect"));
                let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("hist");
                let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ (t as u64 + 1));
                let mut next = start;
                let mut gets = 0u64;
                // Bounded by the duration.
                while next < start + duration {
                    let now = Instant::now();
                    if next > now {
                        std::thread::sleep(next - now);
                    }
                    let k = (rng.next_f64() * KEYS as f64) as usize;
                    let reply = request(&mut s, format!("get freeze:{k}\r\n").as_bytes());
                    assert!(
                        reply.starts_with(b"VALUE"),
                        "get freeze:{k}: a miss or an error"
                    );
                    let took = Instant::now().saturating_duration_since(next);
                    let _ = hist.record(took.as_micros().max(1) as u64);
                    gets += 1;
                    next += Duration::from_secs_f64(-(1.0 - rng.next_f64()).ln() / rate);
                }
                (hist, gets)
            })
        })
        .collect();
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("hist");
    let mut gets = 0;
    for c in clients {
        let (h, n) = c.join().expect("client");
        hist.add(h).expect("merge");
        gets += n;
    }
    stop.store(true, Ordering::Relaxed);
    if let Some(f) = freezer {
        f.join().expect("freezer");
    }
    // SAFETY: kill(2) on our child; it may be stopped at the end.
    unsafe { libc::kill(frozen_pid, libc::SIGCONT) };
    let after: Vec<u64> = servers
        .iter()
        .map(|(_, a)| stat(&stats(*a), "cmd_get"))
        .collect();
    let upstream_gets = after.iter().zip(&before).map(|(a, b)| a - b).sum();
    let p = stats(addr);
    Outcome {
        hist,
        gets,
        upstream_gets,
        hedges_sent: stat(&p, "proxy_hedges_sent"),
        hedges_won: stat(&p, "proxy_hedges_won"),
        hedges_skipped: stat(&p, "proxy_hedges_skipped"),
    }
}

/// The three cases of a round: name, hedging, freezing.
const CASES: [(&str, bool, bool); 3] = [
    ("no freezes, hedging on", true, false),
    ("freezes, hedging on", true, true),
    ("freezes, hedging off", false, true),
];

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// The cores: memring alone on one; the pool and this load generator on
/// the other.
const PROXY_CPU: usize = 1;
const POOL_CPU: usize = 0;

fn main() {
    let o = opts();
    pin_self(POOL_CPU);
    println!(
        "freeze: 3 primaries + 3 backups, one memring core; {} gets/s offered by {CLIENTS} \
         connections, spread; {} runs, {} rounds; freezes of {:?} every {:?} on the first primary",
        o.rate,
        humantime(o.duration),
        o.rounds,
        o.freeze,
        o.every
    );
    println!(
        "{:<5} {:<24} {:>9} {:>9} {:>9} {:>9} {:>9} {:>8} {:>8} {:>8} {:>10}",
        "round",
        "run",
        "gets/s",
        "p50 us",
        "p99 us",
        "p99.9 us",
        "max us",
        "hedges",
        "won",
        "skipped",
        "up/read"
    );
    // Per round, per case: p99, p99.9, upstream reads per read.
    let mut got: Vec<[(f64, f64, f64); 3]> = Vec::with_capacity(o.rounds);
    for round in 0..o.rounds {
        let mut this = [(0.0, 0.0, 0.0); 3];
        for i in 0..CASES.len() {
            let c = (i + round) % CASES.len();
            let (name, hedge, freezing) = CASES[c];
            let r = run(&o, hedge, freezing);
            let q = |x: f64| r.hist.value_at_quantile(x);
            let up = r.upstream_gets as f64 / r.gets.max(1) as f64;
            println!(
                "{:<5} {:<24} {:>9.0} {:>9} {:>9} {:>9} {:>9} {:>8} {:>8} {:>8} {:>10.3}",
                round + 1,
                name,
                r.gets as f64 / o.duration.as_secs_f64(),
                q(0.5),
                q(0.99),
                q(0.999),
                r.hist.max(),
                r.hedges_sent,
                r.hedges_won,
                r.hedges_skipped,
                up
            );
            this[c] = (q(0.99) as f64, q(0.999) as f64, up);
        }
        got.push(this);
    }
    let ratio = |f: fn(&(f64, f64, f64)) -> f64, case: usize| {
        median(got.iter().map(|r| f(&r[case]) / f(&r[0])).collect())
    };
    println!(
        "medians over {} rounds of (frozen / no freezes), each within its round:",
        o.rounds
    );
    for (case, target) in [(1, true), (2, false)] {
        let (p99, p999, up) = (
            ratio(|r| r.0, case),
            ratio(|r| r.1, case),
            ratio(|r| r.2, case),
        );
        let mark = |ok: bool| {
            if !target {
                ""
            } else if ok {
                " (met)"
            } else {
                " (NOT met)"
            }
        };
        println!(
            "  {:<22} p99 {p99:.2}x{} (target <= 1.5x), p99.9 {p999:.2}x{} (<= 3x), \
             upstream reads {up:.3}x{} (<= 1.06x)",
            CASES[case].0,
            mark(p99 <= 1.5),
            mark(p999 <= 3.0),
            mark(up <= 1.06),
        );
    }
}

fn humantime(d: Duration) -> String {
    format!("{:.1}s", d.as_secs_f64())
}
