//! Proves the integration-test harness (`tests/common`) against real memcached
//! and its own fault servers, without the proxy: if these fail, a failing
//! proxy test says nothing about the proxy.

// Tests and benchmarks keep time themselves (clippy.toml holds the library).
#![allow(clippy::disallowed_methods)]

mod common;

use std::time::{Duration, Instant};

use common::*;

#[test]
fn memcached_starts_on_a_discovered_port_and_answers_exact_bytes() {
    let mc = Memcached::start();
    assert_ne!(mc.port(), 0);
    assert!(listening_ports(mc.pid()).contains(&mc.port()));
    let mut c = mc.client();
    assert_bytes(&c.request(b"set k 5 0 2\r\nhi\r\n"), b"STORED\r\n", "set");
    assert_bytes(
        &c.request(b"get k\r\n"),
        b"VALUE k 5 2\r\nhi\r\nEND\r\n",
        "get",
    );
    assert_bytes(&c.request(b"get nope\r\n"), b"END\r\n", "miss");
    let gets = c.request(b"gets k\r\n");
    let cas = cas_of(&gets);
    assert_bytes(
        &gets,
        format!("VALUE k 5 2 {cas}\r\nhi\r\nEND\r\n").as_bytes(),
        "gets",
    );
    assert_bytes(
        &normalize(&gets),
        b"VALUE k 5 2 <cas>\r\nhi\r\nEND\r\n",
        "normalize gets",
    );
    // A multi-get frames several values; data that looks like protocol is data.
    c.request(&set_cmd("v", b"END\r\nVALUE x 0 1"));
    assert_bytes(
        &c.request(b"get k v\r\n"),
        b"VALUE k 5 2\r\nhi\r\nVALUE v 0 16\r\nEND\r\nVALUE x 0 1\r\nEND\r\n",
        "multi-get",
    );
    // Meta: VA carries a data block, EN and HD are one line.
    let mg = c.request(b"mg k v f c k O7\r\n");
    assert_bytes(&normalize(&mg), b"VA 2 f5 c<cas> kk O7\r\nhi\r\n", "mg");
    assert_bytes(&c.request(b"mg nope v\r\n"), b"EN\r\n", "mg miss");
    assert_bytes(&c.request(b"mn\r\n"), b"MN\r\n", "mn");
    let me = c.request(b"me k\r\n");
    assert!(me.starts_with(b"ME k "), "{}", show(&me));
    assert!(
        normalize(&me).windows(9).any(|w| w == b"cas=<cas>"),
        "{}",
        show(&normalize(&me))
    );
    // noreply: nothing comes back, the next reply is the next command's.
    assert_eq!(
        Reply::for_request(b"set q 0 0 1 noreply\r\nx\r\n"),
        Reply::None
    );
    c.send(b"set q 0 0 1 noreply\r\nx\r\n");
    assert_bytes(
        &c.request(b"get q\r\n"),
        b"VALUE q 0 1\r\nx\r\nEND\r\n",
        "after noreply",
    );
    // Quiet meta miss is silent; mn syncs.
    c.send(b"mg nope v q\r\nmn\r\n");
    assert_bytes(&c.read_reply(Reply::Meta), b"MN\r\n", "quiet mg then mn");
    // stats: every line is `STAT name value`.
    let stats = parse_stats(&c.request(b"stats\r\n"));
    assert_eq!(stat(&stats, "pid"), mc.pid().to_string());
    assert_bytes(&c.request(b"bogus\r\n"), b"ERROR\r\n", "unknown command");
    c.send(b"quit\r\n");
    c.expect_eof();
}

#[test]
fn two_memcacheds_get_distinct_ports() {
    let a = Memcached::start();
    let b = Memcached::start();
    assert_ne!(a.port(), b.port());
    a.client().request(&set_cmd("x", b"a"));
    assert_bytes(
        &b.client().request(b"get x\r\n"),
        b"END\r\n",
        "separate servers",
    );
}

#[test]
fn kill_then_restart_on_the_same_port() {
    let mut mc = Memcached::start();
    let port = mc.port();
    let mut c = mc.client();
    assert_bytes(&c.request(&set_cmd("k", b"v")), b"STORED\r\n", "set");
    mc.kill();
    assert!(!mc.is_running());
    // The open connection sees EOF/reset; a request cannot succeed.
    assert!(c.try_request(b"get k\r\n").is_err());
    mc.restart();
    assert_eq!(mc.port(), port);
    assert!(listening_ports(mc.pid()).contains(&port));
    // A fresh process: the data is gone.
    assert_bytes(
        &mc.client().request(b"get k\r\n"),
        b"END\r\n",
        "after restart",
    );
    // Restart also works on a live server.
    mc.restart();
    assert_bytes(
        &mc.client().request(b"version\r\n"),
        b"VERSION 1.6.18\r\n",
        "version",
    );
}

#[test]
fn stopped_memcached_is_silent_until_continued() {
    let mc = Memcached::start();
    let mut c = mc.client();
    c.request(&set_cmd("k", b"v"));
    mc.stop();
    assert_eq!(process_state(mc.pid()), Some('T'));
    c.send(b"get k\r\n");
    c.expect_silence(Duration::from_millis(300));
    mc.cont();
    assert_bytes(
        &c.read_reply(Reply::Values),
        b"VALUE k 0 1\r\nv\r\nEND\r\n",
        "after cont",
    );
}

#[test]
fn blackhole_reads_and_never_answers() {
    let bh = FaultServer::blackhole();
    let mut c = Client::tcp(bh.addr());
    c.send(b"get k\r\n");
    c.expect_silence(Duration::from_millis(200));
    assert_eq!(bh.accepted(), 1);
    let got = wait_for(IO_TIMEOUT, || (bh.received() == 7).then_some(()));
    assert!(got.is_some(), "blackhole read {} bytes", bh.received());
}

#[test]
fn garbage_server_answers_junk() {
    let g = FaultServer::garbage_with(b"\x00junk\r\n");
    let mut c = Client::tcp(g.addr());
    c.send(b"get k\r\n");
    assert_bytes(&c.read_exact_reply(7), b"\x00junk\r\n", "junk");
    let g = FaultServer::garbage();
    let mut c = Client::tcp(g.addr());
    c.send(b"version\r\n");
    assert_bytes(
        &c.read_line(),
        b"\x00\xffHTTP/1.1 418 I'm a teapot\r\n",
        "default junk",
    );
}

#[test]
fn slow_shim_forwards_exact_bytes_after_its_delay() {
    let mc = Memcached::start();
    let delay = Duration::from_millis(150);
    let slow = FaultServer::slow(mc.addr(), delay);
    let mut c = Client::tcp(slow.addr());
    let t0 = Instant::now();
    assert_bytes(
        &c.request(&set_cmd("k", b"v")),
        b"STORED\r\n",
        "set via shim",
    );
    // Guaranteed by construction: the shim sleeps before it forwards.
    assert!(t0.elapsed() >= delay);
    slow.set_delay(Duration::ZERO);
    assert_bytes(
        &c.request(b"get k\r\n"),
        b"VALUE k 0 1\r\nv\r\nEND\r\n",
        "get via shim",
    );
    // It really is memcached behind it.
    assert_bytes(
        &mc.client().request(b"get k\r\n"),
        b"VALUE k 0 1\r\nv\r\nEND\r\n",
        "direct",
    );
    // A shim whose upstream is gone closes the client connection.
    drop(c);
    drop(mc);
    let mut c = Client::tcp(slow.addr());
    assert!(c.try_request(b"get k\r\n").is_err());
}

#[test]
fn slow_shim_holds_only_the_next_chunk() {
    let mc = Memcached::start();
    let slow = FaultServer::slow(mc.addr(), Duration::ZERO);
    let mut c = Client::tcp(slow.addr());
    let hold = Duration::from_millis(150);
    slow.hold_next(hold);
    assert!(!slow.hold_taken());
    let t0 = Instant::now();
    assert_bytes(&c.request(b"version\r\n")[..8], b"VERSION ", "held");
    // Guaranteed by construction: the shim sleeps before it forwards.
    assert!(t0.elapsed() >= hold);
    assert!(slow.hold_taken());
    // The next one passes at the shim's delay (none), and the hold is gone.
    assert_bytes(
        &c.request(&set_cmd("k", b"v")),
        b"STORED\r\n",
        "after the hold",
    );
}

#[test]
fn pipeline_of_2000_gets_in_one_write() {
    let mc = Memcached::start();
    let mut c = mc.client();
    let val = vec![b'x'; 1000];
    for i in 0..50 {
        c.request(&set_cmd(&format!("key:{i}"), &val));
    }
    let cmds: Vec<Vec<u8>> = (0..2000)
        .map(|i| format!("get key:{}\r\n", i % 60).into_bytes())
        .collect();
    let replies = c.pipeline(&cmds);
    assert_eq!(replies.len(), 2000);
    for (i, r) in replies.iter().enumerate() {
        let k = i % 60;
        let want = if k < 50 {
            value_reply(&format!("key:{k}"), 0, &val)
        } else {
            b"END\r\n".to_vec()
        };
        assert_bytes(r, &want, &format!("reply {i}"));
    }
}

#[test]
fn item_size_limits_of_memcached() {
    // Why the proxy tests start memcached with -I 2m: with -I 1m, memcached
    // cannot store a value of 1 MiB - 1 (item header, key and suffix count).
    let small = Memcached::start_with_item_size("1m");
    let big = vec![b'v'; (1 << 20) - 1];
    assert_bytes(
        &small.client().request(&set_cmd("big", &big)),
        b"SERVER_ERROR object too large for cache\r\n",
        "-I 1m, 1MiB-1 value",
    );
    let mc = Memcached::start_with_item_size("2m");
    let mut c = mc.client();
    for len in [(1 << 20) - 1, (1 << 20) + 1] {
        let v = vec![b'v'; len];
        assert_bytes(&c.request(&set_cmd("big", &v)), b"STORED\r\n", "-I 2m");
        assert_bytes(
            &c.request(b"get big\r\n"),
            &value_reply("big", 0, &v),
            "get big",
        );
    }
    // Over the limit: the data is swallowed and the connection stays in sync.
    let huge = vec![b'h'; 3 << 20];
    assert_bytes(
        &c.request(&set_cmd("huge", &huge)),
        b"SERVER_ERROR object too large for cache\r\n",
        "-I 2m, 3 MiB",
    );
    assert_bytes(&c.request(b"get huge\r\n"), b"END\r\n", "in sync");
}

#[test]
fn normalize_rewrites_only_cas_and_last_access() {
    let r = b"VALUE a 1 3 99\r\nc12\r\nVA 3 c77 f0\r\nc12\r\nHD c5 O1\r\nME a exp=-1 la=3 cas=9 fetch=no\r\nEND\r\n";
    assert_bytes(
        &normalize(r),
        b"VALUE a 1 3 <cas>\r\nc12\r\nVA 3 c<cas> f0\r\nc12\r\nHD c<cas> O1\r\nME a exp=-1 la=<la> cas=<cas> fetch=no\r\nEND\r\n",
        "normalize",
    );
}

#[test]
fn memring_start_failure_reports_stderr() {
    // Holds before and after the proxy lands: an unknown flag must not
    // produce `ready`, and the harness must say why instead of hanging.
    let err = match Memring::try_start(&["--definitely-not-a-memring-flag"]) {
        Ok(_) => panic!("memring accepted an unknown flag"),
        Err(e) => e,
    };
    assert!(err.contains("memring stderr"), "{err}");
    assert!(err.contains("exited before `ready`"), "{err}");
}

#[test]
fn raise_nofile_is_idempotent() {
    let n = raise_nofile(1024);
    assert!(n >= 1024);
    assert_eq!(raise_nofile(64), n);
}
