//! Faults end to end: a memcached killed or stopped under load, servers that
//! never answer or answer garbage, and clients that vanish mid-request. The
//! proxy must answer `SERVER_ERROR` within a generous bound of its request
//! timeout, keep the client connection usable for healthy servers, and
//! recover when the server comes back.
//!
//! The only timing assertions are upper bounds of 5x the request timeout.

// Tests and benchmarks keep time themselves (clippy.toml holds the library).
#![allow(clippy::disallowed_methods)]

mod common;

use std::time::{Duration, Instant};

use common::*;

/// The proxy's request timeout in these tests (`--request-timeout 500ms`).
const REQ_TIMEOUT_MS: u64 = 500;
/// Generous bound for "answered within the request timeout".
const BOUND: Duration = Duration::from_millis(5 * REQ_TIMEOUT_MS);
/// How long a recovery may take before the test fails.
const RECOVERY: Duration = Duration::from_secs(30);

const PROXY_ARGS: [&str; 6] = [
    "--request-timeout",
    "500ms",
    "--connect-timeout",
    "500ms",
    "--retry-interval",
    "100ms",
];

/// Set `k0..k<n>` = `v<i>` through the proxy and split them by the server
/// (asked directly) that holds them.
fn keys_by_owner(c: &mut Client, servers: &[&Memcached], n: usize) -> Vec<Vec<String>> {
    let keys: Vec<String> = (0..n).map(|i| format!("k{i}")).collect();
    for k in &keys {
        assert_bytes(&c.request(&set_cmd(k, &val(k))), b"STORED\r\n", "seed set");
    }
    let owners = key_owners(servers, &keys);
    let mut by = vec![Vec::new(); servers.len()];
    for (k, o) in keys.iter().zip(owners) {
        by[o.unwrap_or_else(|| panic!("{k} is on no server"))].push(k.clone());
    }
    assert!(
        by.iter().all(|v| !v.is_empty()),
        "keys do not span all servers: {by:?}"
    );
    by
}

/// The value stored under `key` by these tests.
fn val(key: &str) -> Vec<u8> {
    format!("value-of-{key}").into_bytes()
}

fn get(key: &str) -> Vec<u8> {
    format!("get {key}\r\n").into_bytes()
}

/// `get` of `key` answers SERVER_ERROR within BOUND.
#[track_caller]
fn assert_fails_fast(c: &mut Client, key: &str, what: &str) {
    let t0 = Instant::now();
    let reply = c.request(&get(key));
    let took = t0.elapsed();
    assert_server_error(&reply, what);
    assert!(
        took < BOUND,
        "{what}: answered after {took:?} (bound {BOUND:?})"
    );
}

#[test]
fn killed_server_gives_server_error_then_recovers_on_the_same_port() {
    let mut servers = Memcached::cluster(2, "2m");
    let proxy = Memring::start_for(&[&servers[0], &servers[1]], &PROXY_ARGS);
    let mut c = proxy.client();
    let by = keys_by_owner(&mut c, &[&servers[0], &servers[1]], 20);
    let (a, b) = (by[0][0].clone(), by[1][0].clone());
    // Mid-stream: 200 gets for server 0 in one write; kill it once replies flow.
    let batch: Vec<u8> = (0..200)
        .flat_map(|i| get(&by[0][i % by[0].len()]))
        .collect();
    c.send(&batch);
    let first = c.read_reply(Reply::Values);
    assert_bytes(
        &first,
        &value_reply(&by[0][0], 0, &val(&by[0][0])),
        "before the kill",
    );
    let port = servers[0].port();
    servers[0].kill();
    for i in 1..200 {
        let k = &by[0][i % by[0].len()];
        let r = c.read_reply(Reply::Values);
        if !r.starts_with(b"SERVER_ERROR ") {
            assert_bytes(
                &r,
                &value_reply(k, 0, &val(k)),
                &format!("reply {i} around the kill"),
            );
        } else {
            assert_server_error(&r, &format!("reply {i} around the kill"));
        }
    }
    // Now dead: fast SERVER_ERROR, while the other server still works on the
    // same connection.
    assert_fails_fast(&mut c, &a, "get on the killed server");
    assert_bytes(
        &c.request(&get(&b)),
        &value_reply(&b, 0, &val(&b)),
        "healthy server",
    );
    assert_fails_fast(&mut c, &a, "second get on the killed server");
    // A multi-get touching both servers still answers (the dead part as an error or misses).
    c.request(format!("get {a} {b}\r\n").as_bytes());
    assert_bytes(
        &c.request(&get(&b)),
        &value_reply(&b, 0, &val(&b)),
        "in sync after a partial multi-get",
    );

    servers[0].restart();
    assert_eq!(servers[0].port(), port);
    // Bounded polling until the proxy uses the restarted (empty) server again.
    let recovered = wait_for(RECOVERY, || {
        let r = c.request(&set_cmd(&a, b"again"));
        (r == b"STORED\r\n").then_some(())
    });
    assert!(
        recovered.is_some(),
        "no recovery within {RECOVERY:?}\n{}",
        proxy.stderr()
    );
    assert_bytes(
        &c.request(&get(&a)),
        &value_reply(&a, 0, b"again"),
        "after recovery",
    );
    assert_bytes(
        &servers[0].client().request(&get(&a)),
        &value_reply(&a, 0, b"again"),
        "the value is on the restarted server",
    );
}

#[test]
fn stopped_server_is_answered_within_the_request_timeout() {
    let servers = Memcached::cluster(2, "2m");
    let mut proxy = Memring::start_for(&[&servers[0], &servers[1]], &PROXY_ARGS);
    let mut c = proxy.client();
    let by = keys_by_owner(&mut c, &[&servers[0], &servers[1]], 20);
    let (a, b) = (by[0][0].clone(), by[1][0].clone());
    servers[0].stop();
    assert_fails_fast(&mut c, &a, "get on a SIGSTOPped server");
    assert_bytes(
        &c.request(&get(&b)),
        &value_reply(&b, 0, &val(&b)),
        "healthy server",
    );
    // Another client too, while the server is still stopped.
    let mut c2 = proxy.client();
    assert_fails_fast(&mut c2, &by[0][1 % by[0].len()], "second client");
    servers[0].cont();
    // The stopped server now answers requests the proxy gave up on; those
    // late replies must never reach a client as the answer to something else.
    let recovered = wait_for(RECOVERY, || {
        let r = c.request(&get(&a));
        (r == value_reply(&a, 0, &val(&a))).then_some(())
    });
    assert!(
        recovered.is_some(),
        "no recovery within {RECOVERY:?}\n{}",
        proxy.stderr()
    );
    for i in 0..60 {
        let k = &by[i % 2][(i / 2) % by[i % 2].len()];
        assert_bytes(
            &c.request(&get(k)),
            &value_reply(k, 0, &val(k)),
            &format!("get {i} after SIGCONT"),
        );
        assert_bytes(
            &c2.request(&get(k)),
            &value_reply(k, 0, &val(k)),
            &format!("client 2, get {i}"),
        );
    }
    proxy.assert_alive();
}

/// Shared by the blackhole and garbage tests: one real memcached and one
/// faulty server behind the proxy.
fn faulty_peer(fault: &FaultServer) {
    let real = Memcached::start_with_item_size("2m");
    let args: Vec<String> = proxy_args(&[&real])
        .into_iter()
        .chain(["-s".to_string(), fault.server_arg()])
        .chain(PROXY_ARGS.iter().map(|s| s.to_string()))
        .collect();
    let mut proxy = Memring::start(&args);
    let mut c = proxy.client();
    // Pipelined sets: keys on the real server are STORED, the others fail.
    let keys: Vec<String> = (0..20).map(|i| format!("k{i}")).collect();
    let sets: Vec<Vec<u8>> = keys.iter().map(|k| set_cmd(k, &val(k))).collect();
    let t0 = Instant::now();
    let replies = c.pipeline(&sets);
    let took = t0.elapsed();
    let owners = key_owners(&[&real], &keys);
    let (mut good, mut bad) = (Vec::new(), Vec::new());
    for ((k, r), o) in keys.iter().zip(&replies).zip(&owners) {
        if o.is_some() {
            assert_bytes(r, b"STORED\r\n", &format!("set {k} on the real server"));
            good.push(k.clone());
        } else {
            assert_server_error(r, &format!("set {k} on the faulty server"));
            bad.push(k.clone());
        }
    }
    assert!(
        !good.is_empty() && !bad.is_empty(),
        "keys do not span both servers: {owners:?}"
    );
    // Each request may wait out its own timeout; bound it by the count.
    let pipeline_bound = BOUND * bad.len() as u32;
    assert!(took < pipeline_bound, "20 pipelined sets took {took:?}");
    assert!(
        fault.accepted() >= 1,
        "the proxy never connected to the faulty server"
    );
    // Single requests: fast error, then the same connection still serves the real server.
    for k in bad.iter().take(3) {
        assert_fails_fast(&mut c, k, "get on the faulty server");
        let g = &good[0];
        assert_bytes(
            &c.request(&get(g)),
            &value_reply(g, 0, &val(g)),
            "real server after an error",
        );
    }
    // A multi-get over both: answered, and the connection stays in sync.
    c.request(format!("get {} {}\r\n", good[0], bad[0]).as_bytes());
    assert_bytes(
        &c.request(b"mn\r\n"),
        b"MN\r\n",
        "in sync after a partial multi-get",
    );
    let g = &good[good.len() - 1];
    assert_bytes(
        &c.request(&get(g)),
        &value_reply(g, 0, &val(g)),
        "real server at the end",
    );
    proxy.assert_alive();
}

#[test]
fn blackhole_server_gives_server_error_and_the_connection_stays_usable() {
    let bh = FaultServer::blackhole();
    faulty_peer(&bh);
    assert!(bh.received() > 0, "the proxy sent nothing to the blackhole");
}

#[test]
fn garbage_server_gives_server_error_and_the_connection_stays_usable() {
    let g = FaultServer::garbage();
    faulty_peer(&g);
}

#[test]
fn client_disconnects_mid_request_do_not_disturb_others() {
    let a = Memcached::start_with_item_size("2m");
    let b = Memcached::start_with_item_size("2m");
    // Server 1 sits behind a slow shim, so requests to it are in flight for a while.
    let slow = FaultServer::slow(b.addr(), Duration::from_millis(200));
    let args: Vec<String> = proxy_args(&[&a])
        .into_iter()
        .chain([
            "-s".to_string(),
            slow.server_arg(),
            "--request-timeout".into(),
            "5s".into(),
        ])
        .collect();
    let mut proxy = Memring::start(&args);
    let mut z = proxy.client();
    let by = keys_by_owner(&mut z, &[&a, &b], 20);
    // The big value must live on the fast server: 20 MB of flood through the
    // slow shim (200 ms per chunk) would stall that upstream for minutes and
    // time out everyone queued behind it, which is the shim's fault, not the
    // proxy's.
    let big: Vec<u8> = vec![b'Z'; 64 << 10];
    let names: Vec<String> = (0..20).map(|i| format!("big{i}")).collect();
    for n in &names {
        assert_bytes(&z.request(&set_cmd(n, &big)), b"STORED\r\n", "big value");
    }
    let owners = key_owners(&[&a, &b], &names);
    let big_key = names[owners
        .iter()
        .position(|o| *o == Some(0))
        .expect("a big key on server 0")]
    .clone();
    let get_big = get(&big_key);

    // Y: a request to the slow server, gone before its reply arrives.
    let mut y = proxy.client();
    y.send(&get(&by[1][0]));
    drop(y);
    // X: half a storage command, then gone.
    let mut x = proxy.client();
    x.send(b"set torn 0 0 100\r\n0123456789");
    drop(x);
    // W: a large pipelined multi-reply it never reads, then a hard close.
    let mut w = proxy.client();
    let flood: Vec<u8> = (0..300).flat_map(|_| get_big.clone()).collect();
    w.send(&flood);
    w.shutdown_write();
    drop(w);
    // V: a multi-get over both servers, then half-closed and dropped.
    let mut v = proxy.client();
    v.send(format!("get {} {}\r\n", by[0][0], by[1][0]).as_bytes());
    v.shutdown_write();
    drop(v);

    // Z meanwhile: every reply exact, including keys on the slow server.
    let keys: Vec<&String> = by[0].iter().chain(&by[1]).collect();
    let cmds: Vec<Vec<u8>> = keys
        .iter()
        .map(|k| get(k))
        .chain([get_big.clone()])
        .collect();
    let replies = z.pipeline(&cmds);
    for (k, r) in keys.iter().zip(&replies) {
        assert_bytes(r, &value_reply(k, 0, &val(k)), &format!("z get {k}"));
    }
    assert_bytes(
        replies.last().unwrap(),
        &value_reply(&big_key, 0, &big),
        "z get big",
    );
    // The torn set stored nothing.
    assert_bytes(&z.request(b"get torn\r\n"), b"END\r\n", "torn set");
    // New clients still work, and so does the slow server.
    let mut n = proxy.client();
    let k = &by[1][by[1].len() - 1];
    assert_bytes(
        &n.request(&get(k)),
        &value_reply(k, 0, &val(k)),
        "new client, slow server",
    );
    proxy.assert_alive();
}

#[test]
fn sigterm_exits_zero() {
    let s = Memcached::start();
    let mut proxy = Memring::start_for(&[&s], &[]);
    let mut c = proxy.client();
    assert_bytes(&c.request(&set_cmd("k", b"v")), b"STORED\r\n", "set");
    drop(c);
    let st = proxy.terminate();
    assert!(
        st.success(),
        "memring exited with {st} on SIGTERM\n{}",
        proxy.stderr()
    );
}
