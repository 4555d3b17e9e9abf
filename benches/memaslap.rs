//! The same comparison driven by a load generator memring did not write:
//! memaslap (libmemcached's, `memcaslap` in Debian's libmemcached-tools).
//!
//! Shaped like `load`'s default: each target (memcached itself, nutcracker,
//! memring) runs alone on CPU 1; the 3-server memcached pool and memaslap
//! share CPU 0. memaslap is closed loop (this build ignores `--tps`), so
//! each target is driven as fast as the client core allows, and the figure
//! compared is the target's own CPU time (utime + stime from /proc) per
//! operation memaslap completed. Rounds rotate the targets; medians are
//! reported with the ratio to nutcracker.
//!
//! ```text
//! MEMRING_BIN=target/release/memring cargo bench --bench memaslap -- [--rounds 3] [--time 8]
//! ```

// Tests and benchmarks keep time themselves (clippy.toml holds the library).
#![allow(clippy::disallowed_methods)]

use std::net::SocketAddr;
use std::process::{Command, Stdio};

#[path = "support/mod.rs"]
mod support;
use support::{free_port, memcached, memring, pinned, wait_listening, Proc};

/// One workload: memaslap's flags for it.
struct Workload {
    name: &'static str,
    /// Keys per get (`-d`).
    multiget: u32,
}

const WORKLOADS: [Workload; 2] = [
    Workload {
        name: "a: 50 conns, get:set 9:1, 100 B",
        multiget: 1,
    },
    Workload {
        name: "c: 50 conns, 10-key multi-gets, 9:1, 100 B",
        multiget: 10,
    },
];

const TARGETS: [&str; 3] = ["direct", "nutcracker", "memring"];

/// CPU time (user + system) of process `pid` so far, in microseconds.
fn cpu_us(pid: u32) -> f64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) start past ')'.
    let rest = text.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 (1-based), 11 and 12 past ')'.
    let ticks: f64 = [11, 12]
        .iter()
        .filter_map(|&i| f.get(i).and_then(|v| v.parse::<f64>().ok()))
        .sum();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    ticks * 1e6 / hz.max(1.0)
}

/// Start target `name` on CPU 1 in front of `pool`; its process and address.
fn start(name: &str, pool: &[SocketAddr], dir: &std::path::Path) -> (Proc, SocketAddr) {
    match name {
        "direct" => memcached(1),
        "nutcracker" => {
            let port = free_port();
            let servers: String = pool.iter().map(|a| format!("    - {a}:1\n")).collect();
            let conf = dir.join("nutcracker.yml");
            let yaml = format!(
                "bench:\n  listen: 127.0.0.1:{port}\n  hash: fnv1a_64\n  distribution: ketama\n  \
                 auto_eject_hosts: false\n  servers:\n{servers}"
            );
            std::fs::write(&conf, yaml).expect("write the nutcracker config");
            let bin = ["/usr/sbin/nutcracker", "nutcracker"]
                .into_iter()
                .find(|b| std::path::Path::new(b).exists())
                .unwrap_or("nutcracker");
            let mut c = pinned(1, bin);
            c.args(["-c", &conf.display().to_string()]);
            let child = c.spawn().expect("nutcracker (Debian package nutcracker)");
            let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
            wait_listening(addr);
            (Proc(child), addr)
        }
        _ => memring(1, pool, &[], &[]),
    }
}

/// Run memaslap against `addr` for `secs` seconds; the operations it
/// completed and the average latency it reports (µs).
fn drive(addr: SocketAddr, w: &Workload, secs: u32, cfg: &std::path::Path) -> (u64, f64) {
    let out = Command::new("taskset")
        .args(["-c", "0", "memcaslap"])
        .args(["-s", &addr.to_string(), "-F", &cfg.display().to_string()])
        .args(["-t", &format!("{secs}s"), "-S", &format!("{secs}s")])
        .args([
            "-T",
            "1",
            "-c",
            "50",
            "-X",
            "100",
            "-d",
            &w.multiget.to_string(),
        ])
        .stderr(Stdio::null())
        .output()
        .expect("memcaslap (Debian package libmemcached-tools)");
    let text = String::from_utf8_lossy(&out.stdout);
    let ops = text
        .lines()
        .find(|l| l.starts_with("Run time:"))
        .and_then(|l| l.split("Ops:").nth(1))
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    // "Global <time> <ops> <tps> <net> <miss> <min> <max> <avg> ...".
    let avg = text
        .lines()
        .find(|l| l.starts_with("Global"))
        .and_then(|l| l.split_whitespace().nth(8))
        .and_then(|v| v.parse().ok())
        .unwrap_or(f64::NAN);
    (ops, avg)
}

/// One run: (target index, ops/s, memaslap's average µs, CPU µs per op).
type Row = (usize, f64, f64, f64);

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let flag = |name: &str, default: u32| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let (rounds, secs) = (flag("--rounds", 3), flag("--time", 8));
    let dir = std::env::temp_dir().join(format!("memring-memaslap-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let cfg = dir.join("memaslap.cfg");
    std::fs::write(&cfg, "key\n32 32 1\nvalue\n100 100 1\ncmd\n0 0.1\n1 0.9\n").expect("cfg");
    let pool_procs: Vec<(Proc, SocketAddr)> = (0..3).map(|_| memcached(0)).collect();
    let pool: Vec<SocketAddr> = pool_procs.iter().map(|(_, a)| *a).collect();
    println!(
        "memaslap (closed loop, 50 connections, 1 thread) on CPU 0 with the pool; each target \
         alone on CPU 1; {rounds} rounds of {secs} s; us/op = the target's CPU per operation"
    );
    println!(
        "{:<46} {:<11} {:>9} {:>8} {:>8} {:>7}",
        "workload", "target", "ops/s", "avg us", "us/op", "x nutc"
    );
    for w in &WORKLOADS {
        let mut rows: Vec<Row> = Vec::new();
        for round in 0..rounds as usize {
            for k in 0..TARGETS.len() {
                let t = (k + round) % TARGETS.len();
                let (proc, addr) = start(TARGETS[t], &pool, &dir);
                let pid = proc.0.id();
                let before = cpu_us(pid);
                let (ops, avg) = drive(addr, w, secs, &cfg);
                let used = cpu_us(pid) - before;
                drop(proc);
                rows.push((
                    t,
                    ops as f64 / f64::from(secs),
                    avg,
                    used / ops.max(1) as f64,
                ));
            }
        }
        let of = |t: usize, f: &dyn Fn(&Row) -> f64| {
            median(rows.iter().filter(|r| r.0 == t).map(f).collect())
        };
        let nutc = of(1, &|r| r.3);
        for (t, name) in TARGETS.iter().enumerate() {
            let us = of(t, &|r| r.3);
            println!(
                "{:<46} {:<11} {:>9.0} {:>8.0} {:>8.2} {:>7.2}",
                w.name,
                name,
                of(t, &|r| r.1),
                of(t, &|r| r.2),
                us,
                us / nutc
            );
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}
