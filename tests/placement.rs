//! A fleet keeps its warm cache when it moves from nutcracker (ketama, md5)
//! to memring `-k`: keys written through the real nutcracker are all found
//! through memring, on the same servers.

// Tests and benchmarks keep time themselves (clippy.toml holds the library).
#![allow(clippy::disallowed_methods)]

mod common;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;

struct Nutcracker(Child);

impl Drop for Nutcracker {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn nutcracker_path() -> &'static str {
    for p in ["/usr/sbin/nutcracker", "/usr/bin/nutcracker"] {
        if std::path::Path::new(p).exists() {
            return p;
        }
    }
    panic!("nutcracker not found: apt-get install -y nutcracker");
}

#[test]
fn memring_ketama_finds_every_key_nutcracker_placed() {
    let servers = Memcached::cluster(3, "1m");
    let dir = TempDir::new("nutcracker");
    let port = free_port();
    let mut conf = format!(
        "pool:\n  listen: 127.0.0.1:{port}\n  hash: md5\n  distribution: ketama\n  auto_eject_hosts: false\n  timeout: 2000\n  servers:\n"
    );
    for s in &servers {
        conf.push_str(&format!("    - {}:1\n", s.server_arg()));
    }
    let conf_path = dir.path().join("nutcracker.yml");
    std::fs::write(&conf_path, conf).expect("write nutcracker config");
    let (_nut, mut nut) = start_nutcracker(&conf_path, port);
    let keys: Vec<String> = (0..300)
        .map(|i| format!("fleet:{i}:{}", i * 7919))
        .collect();
    for k in &keys {
        assert_eq!(
            nut.request(&set_cmd(k, k.as_bytes())),
            b"STORED\r\n".to_vec(),
            "{k} via nutcracker"
        );
    }
    let proxy = Memring::start_for(&[&servers[0], &servers[1], &servers[2]], &["-k"]);
    let mut c = proxy.client();
    let mut used = [0usize; 3];
    for k in &keys {
        assert_eq!(
            c.request(format!("get {k}\r\n").as_bytes()),
            value_reply(k, 0, k.as_bytes()),
            "{k} placed by nutcracker is found through memring -k"
        );
        let holder = servers
            .iter()
            .position(|s| s.client().request(format!("get {k}\r\n").as_bytes()) != b"END\r\n")
            .expect("some server holds it");
        used[holder] += 1;
    }
    assert!(
        used.iter().all(|n| *n > 30),
        "keys spread over all servers: {used:?}"
    );
}

/// Start nutcracker on `conf` and wait until its pool listening on `port`
/// answers.
fn start_nutcracker(conf: &std::path::Path, port: u16) -> (Nutcracker, Client) {
    let child = Command::new(nutcracker_path())
        .args([
            "-c",
            conf.to_str().expect("utf8"),
            "-s",
            &free_port().to_string(),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start nutcracker");
    let guard = Nutcracker(child);
    let c = wait_for(Duration::from_secs(10), || {
        let mut c = Client::try_tcp(format!("127.0.0.1:{port}").parse().ok()?).ok()?;
        (c.try_request(b"get probe\r\n").ok()? == b"END\r\n").then_some(c)
    })
    .expect("nutcracker answers");
    (guard, c)
}

/// The same nutcracker YAML file, unchanged, drives nutcracker and memring
/// (`--config x.yml`): named servers, nutcracker's default hash (fnv1a_64,
/// not given in the file) and a hash tag; every key nutcracker placed is
/// found through memring, and memring notes the keys it ignores.
#[test]
fn the_same_nutcracker_yaml_places_keys_alike() {
    let servers = Memcached::cluster(3, "1m");
    let dir = TempDir::new("nutcracker-yaml");
    let port = free_port();
    let mut conf = format!(
        "pool:\n  listen: 127.0.0.1:{port}\n  distribution: ketama\n  hash_tag: \"{{}}\"\n  preconnect: true\n  timeout: 2000\n  servers:\n"
    );
    for (i, s) in servers.iter().enumerate() {
        conf.push_str(&format!("    - {}:1 cache-{i}\n", s.server_arg()));
    }
    let conf_path = dir.path().join("nutcracker.yml");
    std::fs::write(&conf_path, conf).expect("write nutcracker config");
    let (_nut, mut nut) = start_nutcracker(&conf_path, port);
    let keys: Vec<String> = (0..300)
        .map(|i| format!("user:{{{}}}:{i}", i % 37))
        .collect();
    for k in &keys {
        assert_eq!(
            nut.request(&set_cmd(k, k.as_bytes())),
            b"STORED\r\n".to_vec(),
            "{k} via nutcracker"
        );
    }
    // The file's listen is nutcracker's port: memring's --bind wins over it.
    let proxy = Memring::with_config(&conf_path, &[]);
    let mut c = proxy.client();
    for k in &keys {
        assert_eq!(
            c.request(format!("get {k}\r\n").as_bytes()),
            value_reply(k, 0, k.as_bytes()),
            "{k} placed by nutcracker is found through memring"
        );
    }
    let log = proxy.stderr();
    assert!(log.contains("preconnect is ignored"), "{log}");
}

/// A nutcracker file's second pool listens where the file says, and keys
/// sent there land in its servers.
#[test]
fn a_nutcracker_yaml_second_pool_gets_its_listener() {
    let first = Memcached::start();
    let second = Memcached::start();
    let dir = TempDir::new("nutcracker-pools");
    let beta = free_port();
    let conf = format!(
        "alpha:\n  listen: 127.0.0.1:0\n  servers:\n    - {}:1\nbeta:\n  listen: 127.0.0.1:{beta}\n  distribution: modula\n  servers:\n    - {}:1\n",
        first.server_arg(),
        second.server_arg()
    );
    let conf_path = dir.path().join("two.yaml");
    std::fs::write(&conf_path, conf).expect("write config");
    let proxy = Memring::start(&["-D", "--config", conf_path.to_str().expect("utf8")]);
    let mut a = proxy.client();
    let mut b = Client::tcp(format!("127.0.0.1:{beta}").parse().expect("addr"));
    assert_eq!(a.request(&set_cmd("k", b"a")), b"STORED\r\n".to_vec());
    assert_eq!(b.request(&set_cmd("k", b"b")), b"STORED\r\n".to_vec());
    assert_eq!(
        first.client().request(b"get k\r\n"),
        value_reply("k", 0, b"a")
    );
    assert_eq!(
        second.client().request(b"get k\r\n"),
        value_reply("k", 0, b"b")
    );
}
