//! Hedged reads (issue 22): real memcached primaries and backups behind the
//! real binary. A primary frozen with SIGSTOP does not answer; a `get` of
//! its key is sent to the backup too once the primary's hedge delay has
//! passed, and the backup's hit answers (a multi-get's late part goes to
//! its keys' backups). The request timeout is long, so a
//! quick answer can only be the hedge's; the counters show it. A core
//! hedges once its own reads taught it the primary's delay and grew its
//! budget, so each test reads on one connection.

// Tests and benchmarks keep time themselves (clippy.toml holds the library).
#![allow(clippy::disallowed_methods)]

mod common;

use common::*;

/// Keys `hedge:0..n`, written through memring (so on both replicas).
fn write_keys(c: &mut Client, n: usize, round: u32) {
    for i in 0..n {
        let k = format!("hedge:{i}");
        let reply = c.request(&set_cmd(&k, format!("{k}-v{round}").as_bytes()));
        assert_eq!(reply, b"STORED\r\n".to_vec(), "{k}");
    }
}

/// memring in front of one primary and its backup, hedging with `extra`.
fn pair(extra: &[&str]) -> (Memcached, Memcached, Memring) {
    let (p, b) = (Memcached::start(), Memcached::start());
    // A request timeout no test waits out: only a hedge answers quickly.
    let mut args = vec!["--request-timeout", "20s"];
    args.extend_from_slice(extra);
    let proxy = Memring::start_with_backup(&p, &b, &args);
    (p, b, proxy)
}

#[test]
fn a_frozen_primary_is_hedged_onto_its_backup_and_the_value_is_the_last_written() {
    let (primary, _backup, proxy) = pair(&["--hedge-budget", "50%"]);
    let mut c = proxy.client();
    write_keys(&mut c, 50, 1);
    write_keys(&mut c, 50, 2);
    // Reads on time: the primary's hedge delay learns from them, and the
    // budget grows with them.
    for i in 0..200 {
        let k = format!("hedge:{}", i % 50);
        let reply = c.request(format!("get {k}\r\n").as_bytes());
        assert_eq!(reply, value_reply(&k, 0, format!("{k}-v2").as_bytes()));
    }
    // (A reply slower than the primary's p95 is hedged even now, so how
    // many were is the machine's business; the freeze adds one per read.)
    let before = proxy_stats(&mut c);
    let (sent0, won0) = (
        stat_u64(&before, "proxy_hedges_sent"),
        stat_u64(&before, "proxy_hedges_won"),
    );
    primary.stop();
    // Each read is answered by the backup, with the last acknowledged value.
    // (On the same connection: the delays and the budget are per core.)
    for i in 0..5 {
        let k = format!("hedge:{i}");
        let reply = c.request(format!("get {k}\r\n").as_bytes());
        assert_eq!(
            reply,
            value_reply(&k, 0, format!("{k}-v2").as_bytes()),
            "{k} from the backup:\n{}",
            proxy.stderr()
        );
    }
    // A multi-get of the frozen primary's keys is hedged as one part: every
    // key from the backup, in the client's order.
    let keys: Vec<String> = (10..15).map(|i| format!("hedge:{i}")).collect();
    let reply = c.request(format!("get {}\r\n", keys.join(" ")).as_bytes());
    let mut want = Vec::new();
    for k in &keys {
        let one = value_reply(k, 0, format!("{k}-v2").as_bytes());
        want.extend_from_slice(&one[..one.len() - b"END\r\n".len()]);
    }
    want.extend_from_slice(b"END\r\n");
    assert_eq!(
        String::from_utf8_lossy(&reply),
        String::from_utf8_lossy(&want),
        "the multi-get from the backup"
    );
    let s = proxy_stats(&mut proxy.client());
    assert!(stat_u64(&s, "proxy_hedges_sent") >= sent0 + 6, "{s:?}");
    assert!(stat_u64(&s, "proxy_hedges_won") >= won0 + 6, "{s:?}");
    assert_eq!(stat(&s, "get_misses"), "0", "no false miss");
    primary.cont();
    // The primary's late replies are dropped; it serves on.
    let k = "hedge:7";
    let reply = c.request(format!("get {k}\r\n").as_bytes());
    assert_eq!(reply, value_reply(k, 0, format!("{k}-v2").as_bytes()));
}

#[test]
fn without_budget_or_with_hedging_off_nothing_is_hedged() {
    for extra in [&["--hedge", "off"][..], &["--hedge-budget", "0%"][..]] {
        let (primary, _backup, proxy) = pair(extra);
        let mut c = proxy.client();
        write_keys(&mut c, 20, 1);
        for i in 0..100 {
            let k = format!("hedge:{}", i % 20);
            let reply = c.request(format!("get {k}\r\n").as_bytes());
            assert_eq!(reply, value_reply(&k, 0, format!("{k}-v1").as_bytes()));
        }
        primary.stop();
        // A get of the frozen primary's key now waits for the primary: ask
        // it on a connection of its own and do not wait for the answer.
        let mut r = proxy.client();
        r.send(b"get hedge:1\r\n");
        let s = wait_for(std::time::Duration::from_secs(30), || {
            let s = proxy_stats(&mut c);
            (stat_u64(&s, "cmd_get") >= 101).then_some(s)
        })
        .expect("the get arrived");
        assert_eq!(stat_u64(&s, "proxy_hedges_sent"), 0, "{extra:?}: {s:?}");
        if extra[0] == "--hedge-budget" {
            // Hedging is on, so the late read asked; the budget said no.
            let skipped = wait_for(std::time::Duration::from_secs(30), || {
                let s = proxy_stats(&mut c);
                (stat_u64(&s, "proxy_hedges_skipped") >= 1).then_some(())
            });
            assert!(skipped.is_some(), "the budget refused the hedge");
        }
        primary.cont();
        let reply = r.read_reply(Reply::Values);
        assert_eq!(reply, value_reply("hedge:1", 0, b"hedge:1-v1"));
    }
}
