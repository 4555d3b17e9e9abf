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

/// The tests of this file edit /etc/hosts one at a time.
static HOSTS: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Lines of /etc/hosts owned by this test; the file is restored when it
/// drops (and the next test may edit it).
struct HostsEntry {
    name: String,
    original: String,
    _turn: std::sync::MutexGuard<'static, ()>,
}

impl HostsEntry {
    fn new(name: &str) -> HostsEntry {
        let turn = HOSTS.lock().unwrap_or_else(|e| e.into_inner());
        let original = std::fs::read_to_string("/etc/hosts").expect("read /etc/hosts");
        HostsEntry {
            name: name.to_string(),
            original,
            _turn: turn,
        }
    }

    /// Point the name at `ip` (None: no entry, the name does not resolve).
    fn set(&self, ip: Option<&str>) {
        self.set_all(ip.as_slice());
    }

    /// Point the name at every address of `ips` (one line each).
    fn set_all(&self, ips: &[&str]) {
        let mut text = self.original.clone();
        if !text.ends_with('\n') {
            text.push('\n');
        }
        for ip in ips {
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

/// memring in front of `server` (a name or a `dns+` set), resolving it
/// again every 200 ms, with `extra`.
fn proxy_following(server: &str, extra: &[&str]) -> Memring {
    let mut args = vec![
        "-D",
        "--bind",
        "127.0.0.1:0",
        "-s",
        server,
        "--dns-refresh",
        "200ms",
    ];
    args.extend_from_slice(extra);
    Memring::start(&args)
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
    // The first move is followed on the connections it fails: quick
    // failover keeps the test short.
    let proxy = proxy_following(&server, &FAST_FAILOVER);
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

/// `dns+NAME:PORT`: every address of the name is a server (a headless
/// service). Growing the set to a third address is followed, keys move and
/// the servers are swept; shrinking back serves no value older than the
/// last write (a miss at worst).
#[test]
fn a_dns_set_follows_its_members_without_stale_reads() {
    let name = format!("memring-set-{}.test", std::process::id());
    let hosts = HostsEntry::new(&name);
    let port = free_port();
    let ips = ["127.0.0.1", "127.0.0.2", "127.0.0.3"];
    let _servers: Vec<Server> = ips.iter().map(|ip| memcached_on(ip, port)).collect();
    hosts.set_all(&ips[..2]);
    let set = format!("dns+{name}:{port}");
    // Default timeouts: writes without a backup must not time out on a
    // busy machine.
    // No migration window: this test is about the sweep after the change.
    let proxy = proxy_following(&set, &["-k", "--migrate-window", "0"]);
    let mut c = proxy.client();
    let servers = |c: &mut Client| stat_u64(&proxy_stats(c), "proxy_servers");
    assert_eq!(servers(&mut c), 2);
    let keys: Vec<String> = (0..200).map(|i| format!("set:{i}")).collect();
    let write_all = |c: &mut Client, v: &[u8]| {
        for k in &keys {
            let got = c.request(&set_cmd(k, v));
            assert_eq!(got, b"STORED\r\n".to_vec(), "{k}:\n{}", proxy.stderr());
        }
    };
    write_all(&mut c, b"v1");

    // Grow to three: followed, and the third gets keys.
    hosts.set_all(&ips);
    // A member added is flushed before it serves (it may hold values from
    // before it left): wait until every member is up.
    let grown = wait_for(Duration::from_secs(30), || {
        let s = proxy_stats(&mut c);
        if stat_u64(&s, "proxy_servers") != 3 {
            return None;
        }
        (0..3)
            .all(|i| stat(&s, &format!("server_{i}:state")) == "up")
            .then_some(())
    });
    assert!(
        grown.is_some(),
        "the third member was not followed:\n{}",
        proxy.stderr()
    );
    write_all(&mut c, b"v2");
    let on_third = keys.iter().filter(|k| holds(ips[2], port, k)).count();
    assert!(on_third > 20, "{on_third} keys on the new member");
    // The sweep after the change deletes, on the first two, the keys that
    // moved to the third.
    let swept = wait_for(Duration::from_secs(60), || {
        let s = proxy_stats(&mut c);
        (0..3)
            .all(|i| stat_u64(&s, &format!("server_{i}:sweeps")) >= 1)
            .then_some(())
    });
    assert!(
        swept.is_some(),
        "no sweep after the set grew:\n{}",
        proxy.stderr()
    );

    // Shrink back: the keys of the third come home to owners that dropped
    // their old copies: a miss, never v1.
    hosts.set_all(&ips[..2]);
    let shrunk = wait_for(Duration::from_secs(30), || {
        (servers(&mut c) == 2).then_some(())
    });
    assert!(shrunk.is_some(), "the member that left was not followed");
    let mut misses = 0;
    for k in &keys {
        let got = c.request(format!("get {k}\r\n").as_bytes());
        if got == b"END\r\n" {
            misses += 1;
        } else {
            assert_eq!(
                got,
                value_reply(k, 0, b"v2"),
                "{k}: a stale value after the shrink"
            );
        }
    }
    assert!(
        misses <= on_third,
        "{misses} misses, {on_third} keys were on the third"
    );
    assert!(
        proxy.stderr().contains("dns+ set membership changed"),
        "{}",
        proxy.stderr()
    );
}
