//! What the process-level benchmarks share: starting real memcached and
//! memring pinned to a core, waiting for them, and reading `stats`.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A child process stopped (and reaped) on drop.
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

pub fn wait_listening(addr: SocketAddr) {
    let until = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(addr).is_err() {
        assert!(Instant::now() < until, "nothing listens on {addr}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Pin the calling thread, and the threads it starts afterwards, to `cpu`
/// (the load generator shares the pool's core, never the proxy's).
pub fn pin_self(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t is empty; CPU_SET writes within it, and
    // sched_setaffinity reads it for the calling thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        let rc = libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
        assert_eq!(rc, 0, "sched_setaffinity to cpu {cpu}");
    }
}

/// `cmd` pinned to `cpu` with taskset.
pub fn pinned(cpu: usize, program: &str) -> Command {
    let mut c = Command::new("taskset");
    c.args(["-c", &cpu.to_string(), program]);
    c.stdout(Stdio::null()).stderr(Stdio::null());
    c
}

pub fn memcached(cpu: usize) -> (Proc, SocketAddr) {
    let port = free_port();
    let mut c = pinned(cpu, "memcached");
    c.args([
        "-l",
        "127.0.0.1",
        "-p",
        &port.to_string(),
        "-U",
        "0",
        "-t",
        "1",
        "-m",
        "64",
    ]);
    if is_root() {
        c.args(["-u", "root"]);
    }
    let child = c
        .spawn()
        .expect("memcached (Debian package memcached) and taskset (util-linux)");
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    wait_listening(addr);
    (Proc(child), addr)
}

pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

pub fn memring_bin() -> String {
    std::env::var("MEMRING_BIN").unwrap_or_else(|_| {
        concat!(env!("CARGO_MANIFEST_DIR"), "/target/release/memring").to_string()
    })
}

/// A server's `stats`, as (name, value).
pub fn stats(addr: SocketAddr) -> Vec<(String, String)> {
    let mut s = BufReader::new(TcpStream::connect(addr).expect("connect"));
    s.get_mut().write_all(b"stats\r\n").expect("send");
    let mut out = Vec::new();
    // Bounded by END.
    loop {
        let mut line = String::new();
        if s.read_line(&mut line).unwrap_or(0) == 0 || line.starts_with("END") {
            return out;
        }
        let mut w = line.split_whitespace().skip(1);
        if let (Some(k), Some(v)) = (w.next(), w.next()) {
            out.push((k.to_string(), v.to_string()));
        }
    }
}

pub fn stat(s: &[(String, String)], name: &str) -> u64 {
    s.iter()
        .find(|(k, _)| k == name)
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0)
}

/// memring (`MEMRING_BIN`) pinned to `cpu`, one thread, ketama, in front of
/// `primaries` with `backups`, with `extra` flags; its process and address.
/// `-D` keeps it in the foreground (as magent, memring detaches without it,
/// and the daemon would outlive the run).
pub fn memring(
    cpu: usize,
    primaries: &[SocketAddr],
    backups: &[SocketAddr],
    extra: &[&str],
) -> (Proc, SocketAddr) {
    let port = free_port();
    let mut c = pinned(cpu, &memring_bin());
    let port_arg = port.to_string();
    c.args([
        "-D",
        "-p",
        &port_arg,
        "-l",
        "127.0.0.1",
        "--threads",
        "1",
        "-k",
    ]);
    for a in primaries {
        c.args(["-s", &a.to_string()]);
    }
    for a in backups {
        c.args(["-b", &a.to_string()]);
    }
    c.args(extra);
    let child = c
        .spawn()
        .expect("memring (build it: cargo build --release)");
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    wait_listening(addr);
    (Proc(child), addr)
}
