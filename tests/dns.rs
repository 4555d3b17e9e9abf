//! DNS that follows the fleet (issue 17, item 4): a server given by host
//! name is resolved again every `--dns-refresh` through the system
//! resolver; when its address changes new connections go to the new one,
//! and a failed lookup keeps the last address. The name lives in
//! /etc/hosts (root, as in CI), added by the test and removed when it ends;
//! the two addresses are 127.0.0.1 and 127.0.0.2 (both loopback).

// Tests and benchmarks keep time themselves (clippy.toml holds the library).
#![allow(clippy::disallowed_methods)]

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// One line of /etc/hosts owned by this test; the file is restored when
/// it drops.
struct HostsEntry {
    name: String,
    original: String,
}

impl HostsEntry {
    fn new(name: &str) -> HostsEntry {
        let original = std::fs::read_to_string("/etc/hosts").expect("read /etc/hosts");
        HostsEntry {
            name: name.to_string(),
            original,
        }
    }

    /// Point the name at `ip` (None: no entry, the name does not resolve).
    fn set(&self, ip: Option<&str>) {
        let mut text = self.original.clone();
        if !text.ends_with('\n') {
            text.push('\n');
        }
        if let Some(ip) = ip {
            text.push_str(&format!("{ip} {}\n", self.name));
        }
        std::fs::write("/etc/hosts", text)
            .expect("write /etc/hosts (the DNS test needs root, as CI has)");
    }
}

impl Drop for HostsEntry {
    fn drop(&mut self) {
        let _ = std::fs::write("/etc/hosts", &self.original);
    }
}

/// A memcached this test started, killed and reaped when it drops.
struct Server(std::process::Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// memcached on `ip:port`.
fn memcached_on(ip: &str, port: u16) -> Server {
    let mut cmd = Command::new(memcached_path());
    cmd.args([
        "-l",
        ip,
        "-p",
        &port.to_string(),
        "-U",
        "0",
        "-t",
        "1",
        "-m",
        "16",
    ])
    .stdin(Stdio::null())
    .stdout(Stdio::null())
    .stderr(Stdio::null());
    if nix::unistd::getuid().is_root() {
        cmd.args(["-u", "root"]);
    }
    let guard = Server(cmd.spawn().expect("spawn memcached"));
    let addr: std::net::SocketAddr = format!("{ip}:{port}").parse().expect("addr");
    let up = wait_for(Duration::from_secs(10), || Client::try_tcp(addr).ok());
    assert!(up.is_some(), "memcached on {addr} did not come up");
    guard
}

fn holds(ip: &str, port: u16, key: &str) -> bool {
    let mut c = Client::tcp(format!("{ip}:{port}").parse().expect("addr"));
    c.request(format!("get {key}\r\n").as_bytes()) != b"END\r\n"
}

#[test]
fn a_server_name_that_moves_is_followed_and_a_failed_lookup_keeps_the_last_address() {
    let name = format!("memring-dns-{}.test", std::process::id());
    let hosts = HostsEntry::new(&name);
    let port = free_port();
    let _a = memcached_on("127.0.0.1", port);
    let _b = memcached_on("127.0.0.2", port);
    hosts.set(Some("127.0.0.1"));
    let server = format!("{name}:{port}");
    let mut args: Vec<String> = [
        "-D",
        "--bind",
        "127.0.0.1:0",
        "-s",
        &server,
        "--dns-refresh",
        "200ms",
    ]
    .map(String::from)
    .to_vec();
    args.extend(FAST_FAILOVER.map(String::from));
    let proxy = Memring::start(&args);
    let mut c = proxy.client();
    assert_eq!(c.request(&set_cmd("before", b"1")), b"STORED\r\n".to_vec());
    assert!(holds("127.0.0.1", port, "before"));

    hosts.set(Some("127.0.0.2"));
    let moved_at = Instant::now();
    let mut i = 0;
    let followed = wait_for(Duration::from_secs(30), || {
        i += 1;
        let key = format!("after{i}");
        let stored = c.request(&set_cmd(&key, b"2")) == b"STORED\r\n";
        (stored && holds("127.0.0.2", port, &key)).then(|| moved_at.elapsed())
    })
    .expect("memring followed the name to 127.0.0.2");
    let s = proxy_stats(&mut c);
    assert_eq!(stat(&s, "server_0:addr_changes"), "1", "{s:?}");
    assert!(
        !holds("127.0.0.2", port, "before"),
        "the old server's keys did not move"
    );

    // The name stops resolving: the last address is kept and served.
    hosts.set(None);
    let failed = wait_for(Duration::from_secs(30), || {
        let s = proxy_stats(&mut c);
        (stat_u64(&s, "server_0:dns_failures") >= 1).then_some(())
    });
    assert!(failed.is_some(), "no failed lookup counted");
    assert_eq!(c.request(&set_cmd("kept", b"3")), b"STORED\r\n".to_vec());
    assert!(holds("127.0.0.2", port, "kept"));
    eprintln!("dns: the new address took {followed:?} to be followed (refresh every 200ms)");
}
