//! Hot keys (issue 22, item 2): real memcached behind the real binary. One
//! key takes 30 % of the reads; `stats hotkeys` lists it first, with its
//! pool and primary, and Prometheus shows its rate under a hash of the key.

// Tests and benchmarks keep time themselves (clippy.toml holds the library).
#![allow(clippy::disallowed_methods)]

mod common;

use std::time::{Duration, Instant};

use common::*;

/// Write key `hot` (holding `hot_value`) and the 500 cold keys.
fn seed(c: &mut Client, hot_value: &[u8]) {
    assert_eq!(
        c.request(&set_cmd("hot", hot_value)),
        b"STORED\r\n".to_vec()
    );
    for k in (0..500).map(|i| format!("cold:{i}")) {
        assert_eq!(c.request(&set_cmd(&k, b"v")), b"STORED\r\n".to_vec());
    }
}

/// Read `n` times, 3 in 10 of them key `hot`, the rest spread over 500
/// other keys (all written first, so every read hits).
fn read_mix(c: &mut Client, n: usize, offset: usize) {
    let cmds: Vec<Vec<u8>> = (0..n)
        .map(|i| {
            let k = if i % 10 < 3 {
                "hot".to_string()
            } else {
                format!("cold:{}", (i + offset) % 500)
            };
            format!("get {k}\r\n").into_bytes()
        })
        .collect();
    for reply in c.pipeline(&cmds) {
        assert!(reply.starts_with(b"VALUE"), "{}", show(&reply));
    }
}

#[test]
fn a_key_with_a_third_of_the_reads_is_listed_first() {
    let server = Memcached::start();
    let arg = server.server_arg();
    let proxy = Memring::start(&["-D", "--bind", "127.0.0.1:0", "-s", &arg, "--threads", "2"]);
    let mut c = proxy.client();
    seed(&mut c, b"v");
    let start = Instant::now();
    let mut rounds = 0;
    let listed = wait_for(Duration::from_secs(60), || {
        read_mix(&mut c, 2000, rounds * 2000);
        rounds += 1;
        let s = parse_stats(&c.request(b"stats hotkeys\r\n"));
        let first = s.iter().any(|(k, v)| k == "hotkey_0:key" && v == "hot");
        first.then_some(s)
    });
    let s = listed.unwrap_or_else(|| panic!("hot was not listed first:\n{}", proxy.stderr()));
    eprintln!(
        "hot keys: listed first after {:?} ({} reads)",
        start.elapsed(),
        rounds * 2000
    );
    assert_eq!(stat(&s, "hotkey_0:pool"), "default");
    assert_eq!(stat(&s, "hotkey_0:primary"), arg);
    assert!(stat_u64(&s, "hotkey_0:reads_per_second") > 0);
    // The next key is far behind (each cold key has under 1 % of the reads).
    let second: u64 = s
        .iter()
        .find(|(k, _)| k == "hotkey_1:reads_per_second")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    assert!(
        second * 5 < stat_u64(&s, "hotkey_0:reads_per_second"),
        "{s:?}"
    );
}

#[test]
fn hot_keys_off_lists_nothing() {
    let server = Memcached::start();
    let arg = server.server_arg();
    let proxy = Memring::start(&[
        "-D",
        "--bind",
        "127.0.0.1:0",
        "-s",
        &arg,
        "--hot-keys",
        "off",
    ]);
    let mut c = proxy.client();
    seed(&mut c, b"v");
    // Two publication steps at least.
    let deadline = Instant::now() + Duration::from_millis(2500);
    let mut offset = 0;
    while Instant::now() < deadline {
        read_mix(&mut c, 500, offset);
        offset += 500;
    }
    assert_eq!(c.request(b"stats hotkeys\r\n"), b"END\r\n".to_vec());
}

/// `get_hits` of a memcached, from its own `stats`.
fn hits(m: &Memcached) -> u64 {
    let s = parse_stats(&m.client().request(b"stats\r\n"));
    stat_u64(&s, "get_hits")
}

#[test]
fn a_hot_key_is_read_from_both_replicas_and_never_stale() {
    let (primary, backup) = (Memcached::start(), Memcached::start());
    // A low threshold: how fast this machine reads must not matter.
    let proxy = Memring::start_with_backup(&primary, &backup, &["--hot-key-threshold", "20"]);
    let mut c = proxy.client();
    seed(&mut c, b"v0");
    // Until the key is spread (at the sketch's next step).
    let mut offset = 0;
    let spread = wait_for(Duration::from_secs(60), || {
        read_mix(&mut c, 2000, offset);
        offset += 2000;
        let s = proxy_stats(&mut c);
        (stat_u64(&s, "proxy_hot_key_spreads") > 0).then_some(())
    });
    assert!(
        spread.is_some(),
        "the hot key was never spread:\n{}",
        proxy.stderr()
    );
    let listed = parse_stats(&c.request(b"stats hotkeys\r\n"));
    assert!(
        listed
            .iter()
            .any(|(k, v)| k == "hotkey_0:spread" && v == "1"),
        "{listed:?}"
    );
    // Reads and writes of the key alternate: every read sees the value the
    // last write left (the write is answered before the read is sent).
    let (p0, b0) = (hits(&primary), hits(&backup));
    for round in 1..=300 {
        let v = format!("v{round}");
        assert_eq!(
            c.request(&set_cmd("hot", v.as_bytes())),
            b"STORED\r\n".to_vec()
        );
        for _ in 0..4 {
            let got = c.request(b"get hot\r\n");
            assert_eq!(got, value_reply("hot", 0, v.as_bytes()), "round {round}");
        }
    }
    let (dp, db) = (hits(&primary) - p0, hits(&backup) - b0);
    eprintln!("hot key spread: primary served {dp}, backup {db} of 1200 reads");
    assert!(
        dp >= 360 && db >= 360,
        "each replica serves 30 %: {dp} and {db}"
    );
}
