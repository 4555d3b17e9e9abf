//! Pools and prefix routes (issue 17, item 2): `[pools.NAME]` tables beside
//! the default pool and `[[routes]]` that send keys by prefix (the longest
//! wins), with real memcached servers behind the real binary.

// Tests and benchmarks keep time themselves (clippy.toml holds the library).
#![allow(clippy::disallowed_methods)]

mod common;

use std::process::Command;

use common::*;

fn holds(server: &Memcached, key: &str) -> bool {
    server.client().request(format!("get {key}\r\n").as_bytes()) != b"END\r\n"
}

#[test]
fn prefix_routes_send_keys_to_their_pool_and_everything_else_to_default() {
    let d = Memcached::cluster(2, "1m");
    let sessions = Memcached::start();
    let sessions_backup = Memcached::start();
    let carts = Memcached::start();
    let (_dir, file) = config_file(
        "memring.toml",
        &format!(
        "servers = [\"{}\", \"{}\"]\n\
         [pools.sessions]\nservers = [\"{}\"]\nbackups = [\"{}\"]\ndistribution = \"ketama\"\nhash = \"fnv1a_64\"\n\
         [pools.carts]\nservers = [\"{}\"]\n\
         [[routes]]\nprefix = \"s:\"\npool = \"sessions\"\n\
         [[routes]]\nprefix = \"s:cart:\"\npool = \"carts\"\n",
        d[0].server_arg(),
        d[1].server_arg(),
        sessions.server_arg(),
        sessions_backup.server_arg(),
        carts.server_arg()
    ),
    );
    let proxy = Memring::with_config(&file, &[]);
    let mut c = proxy.client();
    let mut get_line = String::from("get");
    for i in 0..30 {
        for key in [format!("s:{i}"), format!("s:cart:{i}"), format!("u:{i}")] {
            assert_eq!(
                c.request(&set_cmd(&key, key.as_bytes())),
                b"STORED\r\n".to_vec(),
                "{key}"
            );
            get_line.push(' ');
            get_line.push_str(&key);
            let default_holds = holds(&d[0], &key) || holds(&d[1], &key);
            let (in_sessions, in_carts) = (holds(&sessions, &key), holds(&carts, &key));
            match key.split(':').take(2).collect::<Vec<_>>()[..] {
                ["s", "cart"] => assert!(in_carts && !in_sessions && !default_holds, "{key}"),
                ["s", _] => {
                    assert!(
                        in_sessions && holds(&sessions_backup, &key) && !in_carts && !default_holds,
                        "{key}"
                    )
                }
                _ => assert!(default_holds && !in_sessions && !in_carts, "{key}"),
            }
        }
    }
    // A multi-get across the three pools: every value, in the request's order.
    get_line.push_str("\r\n");
    let reply = c.request(get_line.as_bytes());
    let mut whole = Vec::new();
    for i in 0..30 {
        for key in [format!("s:{i}"), format!("s:cart:{i}"), format!("u:{i}")] {
            whole.extend_from_slice(format!("VALUE {key} 0 {}\r\n{key}\r\n", key.len()).as_bytes());
        }
    }
    whole.extend_from_slice(b"END\r\n");
    assert_bytes(&reply, &whole, "multi-get across pools");
    // Where a key goes, by name.
    let r = parse_stats(&c.request(b"stats route s:cart:7\r\n"));
    assert_eq!(stat(&r, "pool"), "carts");
    assert_eq!(stat(&r, "primary"), carts.server_arg());
    let r = parse_stats(&c.request(b"stats route s:7\r\n"));
    assert_eq!(
        (stat(&r, "pool"), stat(&r, "backup")),
        ("sessions".to_string(), sessions_backup.server_arg())
    );
    let s = proxy_stats(&mut c);
    assert_eq!(server_stat(&s, &carts, "primary", "pool"), "carts");
    // flush_all reaches every pool.
    assert_eq!(c.request(b"flush_all\r\n"), b"OK\r\n".to_vec());
    for (m, key) in [
        (&sessions, "s:1"),
        (&carts, "s:cart:1"),
        (&sessions_backup, "s:1"),
    ] {
        assert!(
            !holds(m, key),
            "{key} survived flush_all on {}",
            m.server_arg()
        );
    }
}

#[test]
fn a_route_to_a_missing_pool_is_refused_with_one_line() {
    let dir = TempDir::new("pools-bad");
    let file = dir.path().join("memring.toml");
    std::fs::write(
        &file,
        "servers = [\"127.0.0.1:1\"]\n[[routes]]\nprefix = \"s:\"\npool = \"nope\"\n",
    )
    .expect("write config");
    let out = Command::new(memring_path())
        .args(["--check", "--config", file.to_str().expect("utf8")])
        .output()
        .expect("memring --check");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_ne!(out.status.code(), Some(0));
    assert!(
        err.contains("pool 'nope'") && err.lines().count() == 1,
        "{err}"
    );
}

/// The address a `listening on pool NAME ADDR` line announced.
fn pool_listener(proxy: &Memring, name: &str) -> std::net::SocketAddr {
    let prefix = format!("listening on pool {name} ");
    proxy
        .listen_lines
        .iter()
        .find_map(|l| l.strip_prefix(&prefix)?.parse().ok())
        .unwrap_or_else(|| panic!("no pool {name} listener in {:?}", proxy.listen_lines))
}

#[test]
fn a_pool_with_its_own_listener_places_every_key_there() {
    let d = Memcached::start();
    let carts = Memcached::start();
    let carts_backup = Memcached::start();
    let (_dir, file) = config_file(
        "memring.toml",
        &format!(
            "servers = [\"{}\"]\n\
         [pools.carts]\nservers = [\"{}\"]\nbackups = [\"{}\"]\nlisten = \"127.0.0.1:0\"\n",
            d.server_arg(),
            carts.server_arg(),
            carts_backup.server_arg(),
        ),
    );
    let proxy = Memring::with_config(&file, &[]);
    let mut main = proxy.client();
    let mut pool = Client::tcp(pool_listener(&proxy, "carts"));
    for i in 0..20 {
        let (a, b) = (format!("main:{i}"), format!("cart:{i}"));
        assert_eq!(main.request(&set_cmd(&a, b"m")), b"STORED\r\n");
        assert_eq!(pool.request(&set_cmd(&b, b"c")), b"STORED\r\n");
        assert!(holds(&d, &a) && !holds(&carts, &a), "{a}");
        assert!(holds(&carts, &b) && holds(&carts_backup, &b), "{b}");
        assert!(!holds(&d, &b), "{b} reached the default pool");
    }
    // Each listener reads its own pool.
    assert_eq!(
        pool.request(b"get cart:3 main:3\r\n"),
        b"VALUE cart:3 0 1\r\nc\r\nEND\r\n"
    );
    assert_eq!(
        main.request(b"get cart:3 main:3\r\n"),
        b"VALUE main:3 0 1\r\nm\r\nEND\r\n"
    );
}

#[test]
fn a_pool_listener_on_a_taken_address_is_refused() {
    let d = Memcached::start();
    let (_dir, file) = config_file(
        "memring.toml",
        &format!(
            "servers = [\"{}\"]\nport = 23456\nlisten = \"127.0.0.1\"\n\
         [pools.p]\nservers = [\"{}\"]\nlisten = \"127.0.0.1:23456\"\n",
            d.server_arg(),
            d.server_arg()
        ),
    );
    let out = Command::new(memring_path())
        .args(["--check", "--config", file.to_str().expect("utf8")])
        .output()
        .expect("run memring --check");
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("pool 'p' listens on 127.0.0.1:23456"), "{err}");
}
