//! Every verb through memring, compared byte for byte with the same command
//! sent straight to a real memcached; plus the verbs the proxy answers
//! itself and its error answers.
//!
//! The proxy fronts two fresh memcacheds; the reference is a third fresh
//! memcached. Single-key state then evolves identically on both sides, so
//! replies must be identical except for cas uniques (and `me`'s last-access
//! seconds), which `normalize` masks. Multi-key gets are expected in request
//! key order, as memcached answers them.

// Tests and benchmarks keep time themselves (clippy.toml holds the library).
#![allow(clippy::disallowed_methods)]

mod common;

use common::*;

/// The proxy (over two memcacheds) and a reference memcached, with a client on each.
struct Rig {
    proxy: Memring,
    servers: Vec<Memcached>,
    _direct: Memcached,
    p: Client,
    d: Client,
}

fn rig() -> Rig {
    let servers = Memcached::cluster(2, "2m");
    let direct = Memcached::start_with_item_size("2m");
    let proxy = Memring::start_for(&[&servers[0], &servers[1]], &["--request-timeout", "2s"]);
    let (p, d) = (proxy.client(), direct.client());
    Rig {
        proxy,
        servers,
        _direct: direct,
        p,
        d,
    }
}

impl Rig {
    /// Send `cmd` to both; the (normalised) replies must be equal. Returns the proxy's.
    #[track_caller]
    fn same(&mut self, cmd: &[u8]) -> Vec<u8> {
        let got = self.p.request(cmd);
        let want = self.d.request(cmd);
        assert_bytes(
            &normalize(&got),
            &normalize(&want),
            &format!("proxy vs memcached for {}", show(cmd)),
        );
        got
    }

    /// Like `same`, and the reply must also be exactly `expected` (documents the wire).
    #[track_caller]
    fn same_is(&mut self, cmd: &[u8], expected: &[u8]) {
        let got = self.same(cmd);
        assert_bytes(
            &normalize(&got),
            expected,
            &format!("reply to {}", show(cmd)),
        );
    }

    /// Proxy only: the reply to `cmd` must be exactly `expected`.
    #[track_caller]
    fn proxy_is(&mut self, cmd: &[u8], expected: &[u8]) {
        let got = self.p.request(cmd);
        assert_bytes(&got, expected, &format!("proxy reply to {}", show(cmd)));
    }
}

#[test]
fn storage_and_retrieval_verbs_match_memcached() {
    let mut r = rig();
    r.same_is(b"get a\r\n", b"END\r\n");
    r.same_is(b"set a 5 0 3\r\nabc\r\n", b"STORED\r\n");
    r.same_is(b"get a\r\n", b"VALUE a 5 3\r\nabc\r\nEND\r\n");
    r.same_is(b"gets a\r\n", b"VALUE a 5 3 <cas>\r\nabc\r\nEND\r\n");
    // Largest flags, empty value, binary value with CR LF inside.
    r.same_is(b"set b 4294967295 0 0\r\n\r\n", b"STORED\r\n");
    r.same_is(b"get b\r\n", b"VALUE b 4294967295 0\r\n\r\nEND\r\n");
    r.same(&storage("set", "bin", 1, 0, b"\r\nEND\r\n\x00\xff"));
    r.same_is(
        b"get bin\r\n",
        b"VALUE bin 1 9\r\n\r\nEND\r\n\x00\xff\r\nEND\r\n",
    );
    // add / replace.
    r.same_is(b"add a 0 0 1\r\nx\r\n", b"NOT_STORED\r\n");
    r.same_is(b"add c 7 0 2\r\nc1\r\n", b"STORED\r\n");
    r.same_is(b"replace nope 0 0 1\r\nx\r\n", b"NOT_STORED\r\n");
    r.same_is(b"replace c 8 0 2\r\nc2\r\n", b"STORED\r\n");
    // append / prepend keep the flags.
    r.same_is(b"append c 0 0 3\r\n-ap\r\n", b"STORED\r\n");
    r.same_is(b"prepend c 0 0 3\r\npr-\r\n", b"STORED\r\n");
    r.same_is(b"append nope 0 0 1\r\nx\r\n", b"NOT_STORED\r\n");
    r.same_is(b"prepend nope 0 0 1\r\nx\r\n", b"NOT_STORED\r\n");
    r.same_is(b"get c\r\n", b"VALUE c 8 8\r\npr-c2-ap\r\nEND\r\n");
    // Multi-key retrieval: hits and misses, spread over both servers, key order kept.
    let keys: Vec<String> = (0..12).map(|i| format!("mk{i}")).collect();
    for (i, k) in keys.iter().enumerate() {
        if i % 3 != 0 {
            r.same(&storage("set", k, i as u32, 0, k.as_bytes()));
        }
    }
    let owners = key_owners(&[&r.servers[0], &r.servers[1]], &keys);
    assert!(
        owners.contains(&Some(0)) && owners.contains(&Some(1)),
        "multi-get keys should span both servers: {owners:?}"
    );
    r.same(format!("get a {} nope c\r\n", keys.join(" ")).as_bytes());
    r.same(format!("gets {} a\r\n", keys.join(" ")).as_bytes());
    // Exptime in the past: stored, then already expired.
    r.same_is(b"set gone 0 -1 1\r\nx\r\n", b"STORED\r\n");
    r.same_is(b"get gone\r\n", b"END\r\n");
    // delete.
    r.same_is(b"delete c\r\n", b"DELETED\r\n");
    r.same_is(b"delete c\r\n", b"NOT_FOUND\r\n");
    r.same_is(b"delete a 0\r\n", b"DELETED\r\n");
    // A bare \n terminator is accepted as memcached does.
    r.same_is(b"get b\n", b"VALUE b 4294967295 0\r\n\r\nEND\r\n");
}

#[test]
fn cas_matches_memcached() {
    let mut r = rig();
    r.same_is(b"cas nope 0 0 1 1\r\nx\r\n", b"NOT_FOUND\r\n");
    r.same_is(b"set k 3 0 2\r\nv1\r\n", b"STORED\r\n");
    let (pg, dg) = (r.p.request(b"gets k\r\n"), r.d.request(b"gets k\r\n"));
    assert_bytes(&normalize(&pg), &normalize(&dg), "gets");
    let (pc, dc) = (cas_of(&pg), cas_of(&dg));
    // A wrong unique: EXISTS on both sides.
    let stale = |c: u64| storage_cas("k", 3, c + 1000, b"zz");
    assert_bytes(&r.p.request(&stale(pc)), b"EXISTS\r\n", "proxy cas stale");
    assert_bytes(&r.d.request(&stale(dc)), b"EXISTS\r\n", "direct cas stale");
    // The right unique: STORED, and the value changed.
    assert_bytes(
        &r.p.request(&storage_cas("k", 4, pc, b"v2")),
        b"STORED\r\n",
        "proxy cas",
    );
    assert_bytes(
        &r.d.request(&storage_cas("k", 4, dc, b"v2")),
        b"STORED\r\n",
        "direct cas",
    );
    r.same_is(b"get k\r\n", b"VALUE k 4 2\r\nv2\r\nEND\r\n");
    // Reusing the old unique fails now.
    assert_bytes(
        &r.p.request(&storage_cas("k", 4, pc, b"v3")),
        b"EXISTS\r\n",
        "proxy reuse",
    );
    // noreply cas: nothing comes back.
    let (pg, dg) = (r.p.request(b"gets k\r\n"), r.d.request(b"gets k\r\n"));
    r.p.send(&noreply(&storage_cas("k", 5, cas_of(&pg), b"v4")));
    r.d.send(&noreply(&storage_cas("k", 5, cas_of(&dg), b"v4")));
    r.same_is(b"get k\r\n", b"VALUE k 5 2\r\nv4\r\nEND\r\n");
}

fn storage_cas(key: &str, flags: u32, cas: u64, data: &[u8]) -> Vec<u8> {
    let mut v = format!("cas {key} {flags} 0 {} {cas}\r\n", data.len()).into_bytes();
    v.extend_from_slice(data);
    v.extend_from_slice(b"\r\n");
    v
}

/// Insert ` noreply` at the end of the command line.
fn noreply(cmd: &[u8]) -> Vec<u8> {
    let eol = cmd.windows(2).position(|w| w == b"\r\n").expect("CR LF");
    let mut v = cmd[..eol].to_vec();
    v.extend_from_slice(b" noreply");
    v.extend_from_slice(&cmd[eol..]);
    v
}

#[test]
fn arithmetic_touch_and_gat_match_memcached() {
    let mut r = rig();
    r.same_is(b"incr n 1\r\n", b"NOT_FOUND\r\n");
    r.same_is(b"decr n 1\r\n", b"NOT_FOUND\r\n");
    r.same_is(b"set n 0 0 2\r\n10\r\n", b"STORED\r\n");
    r.same_is(b"incr n 5\r\n", b"15\r\n");
    r.same_is(b"decr n 20\r\n", b"0\r\n");
    r.same_is(
        b"incr n 18446744073709551615\r\n",
        b"18446744073709551615\r\n",
    );
    r.same_is(b"incr n 2\r\n", b"1\r\n");
    r.same_is(b"set s 0 0 3\r\nabc\r\n", b"STORED\r\n");
    r.same_is(
        b"incr s 1\r\n",
        b"CLIENT_ERROR cannot increment or decrement non-numeric value\r\n",
    );
    r.same_is(b"touch s 0\r\n", b"TOUCHED\r\n");
    r.same_is(b"touch nope 0\r\n", b"NOT_FOUND\r\n");
    r.same_is(b"gat 0 s nope\r\n", b"VALUE s 0 3\r\nabc\r\nEND\r\n");
    r.same_is(b"gats 0 s\r\n", b"VALUE s 0 3 <cas>\r\nabc\r\nEND\r\n");
    r.same_is(b"gat 0 nope\r\n", b"END\r\n");
    // gat with a past exptime returns the item and expires it.
    r.same_is(b"gat -1 s\r\n", b"VALUE s 0 3\r\nabc\r\nEND\r\n");
    r.same_is(b"get s\r\n", b"END\r\n");
}

#[test]
fn noreply_variants_send_nothing() {
    let mut r = rig();
    // Each command is followed by a sync `get`: a stray reply would be read
    // as the get's reply and fail the comparison.
    let steps: Vec<(Vec<u8>, &[u8], &[u8])> = vec![
        (
            noreply(&set_cmd("k", b"v1")),
            b"get k\r\n",
            b"VALUE k 0 2\r\nv1\r\nEND\r\n",
        ),
        (
            noreply(&set_cmd("k", b"v2")),
            b"get k\r\n",
            b"VALUE k 0 2\r\nv2\r\nEND\r\n",
        ),
        (
            b"add k 0 0 1 noreply\r\nx\r\n".to_vec(),
            b"get k\r\n",
            b"VALUE k 0 2\r\nv2\r\nEND\r\n",
        ),
        (
            b"add a 1 0 1 noreply\r\nx\r\n".to_vec(),
            b"get a\r\n",
            b"VALUE a 1 1\r\nx\r\nEND\r\n",
        ),
        (
            b"replace a 2 0 1 noreply\r\ny\r\n".to_vec(),
            b"get a\r\n",
            b"VALUE a 2 1\r\ny\r\nEND\r\n",
        ),
        (
            b"append a 0 0 1 noreply\r\nz\r\n".to_vec(),
            b"get a\r\n",
            b"VALUE a 2 2\r\nyz\r\nEND\r\n",
        ),
        (
            b"prepend a 0 0 1 noreply\r\nw\r\n".to_vec(),
            b"get a\r\n",
            b"VALUE a 2 3\r\nwyz\r\nEND\r\n",
        ),
        (
            b"set n 0 0 1 noreply\r\n5\r\n".to_vec(),
            b"get n\r\n",
            b"VALUE n 0 1\r\n5\r\nEND\r\n",
        ),
        (
            b"incr n 3 noreply\r\n".to_vec(),
            b"get n\r\n",
            b"VALUE n 0 1\r\n8\r\nEND\r\n",
        ),
        (
            b"decr n 2 noreply\r\n".to_vec(),
            b"get n\r\n",
            b"VALUE n 0 1\r\n6\r\nEND\r\n",
        ),
        (
            b"touch n 0 noreply\r\n".to_vec(),
            b"get n\r\n",
            b"VALUE n 0 1\r\n6\r\nEND\r\n",
        ),
        (b"delete n noreply\r\n".to_vec(), b"get n\r\n", b"END\r\n"),
        // Failures are silent too.
        (b"delete n noreply\r\n".to_vec(), b"get n\r\n", b"END\r\n"),
        (b"incr n 1 noreply\r\n".to_vec(), b"get n\r\n", b"END\r\n"),
        (
            b"replace n 0 0 1 noreply\r\nx\r\n".to_vec(),
            b"get n\r\n",
            b"END\r\n",
        ),
    ];
    for (cmd, sync, want) in steps {
        r.p.send(&cmd);
        r.d.send(&cmd);
        r.same_is(sync, want);
    }
    // Several noreply commands pipelined in one write, then one sync.
    let batch: Vec<u8> = [
        noreply(&set_cmd("p1", b"1")),
        noreply(&set_cmd("p2", b"2")),
        b"incr p1 9 noreply\r\n".to_vec(),
        b"delete p2 noreply\r\n".to_vec(),
    ]
    .concat();
    r.p.send(&batch);
    r.d.send(&batch);
    r.same_is(b"get p1 p2\r\n", b"VALUE p1 0 2\r\n10\r\nEND\r\n");
}

#[test]
fn meta_commands_match_memcached() {
    let mut r = rig();
    r.same_is(b"mn\r\n", b"MN\r\n");
    r.same_is(b"mg m v\r\n", b"EN\r\n");
    r.same_is(b"ms m 3 T0 F5\r\nabc\r\n", b"HD\r\n");
    r.same_is(b"mg m\r\n", b"HD\r\n");
    r.same_is(
        b"mg m v f t s k O42\r\n",
        b"VA 3 f5 t-1 s3 km O42\r\nabc\r\n",
    );
    r.same_is(b"mg m v c\r\n", b"VA 3 c<cas>\r\nabc\r\n");
    r.same_is(b"ms m2 2 c k O1\r\nxy\r\n", b"HD c<cas> km2 O1\r\n");
    // Modes: add (NS when present), append.
    r.same_is(b"ms m2 1 MA\r\nz\r\n", b"HD\r\n");
    r.same_is(b"ms m2 1 ME\r\nz\r\n", b"NS\r\n");
    r.same_is(b"mg m2 v\r\n", b"VA 3\r\nxyz\r\n");
    // Quiet mode: a miss is silent; mn flushes.
    r.p.send(b"mg nope v q\r\nmg m v q k\r\nmn\r\n");
    r.d.send(b"mg nope v q\r\nmg m v q k\r\nmn\r\n");
    for what in ["quiet hit", "mn after quiet"] {
        let (a, b) = (r.p.read_reply(Reply::Meta), r.d.read_reply(Reply::Meta));
        assert_bytes(&a, &b, what);
    }
    // Arithmetic with auto-create.
    r.same_is(b"ma cnt v\r\n", b"NF\r\n");
    r.same_is(b"ma cnt N0 J13 v\r\n", b"VA 2\r\n13\r\n");
    r.same_is(b"ma cnt v\r\n", b"VA 2\r\n14\r\n");
    r.same_is(b"ma cnt MD D4 v\r\n", b"VA 2\r\n10\r\n");
    r.same_is(b"ma cnt\r\n", b"HD\r\n");
    // Debug: exp, la, cas, fetch, cls, size (cas and la masked).
    let me = r.same(b"me m\r\n");
    assert!(me.starts_with(b"ME m exp=-1 la="), "{}", show(&me));
    r.same_is(b"me nope\r\n", b"EN\r\n");
    // Delete, quiet delete, delete miss.
    r.same_is(b"md m\r\n", b"HD\r\n");
    r.same_is(b"md m\r\n", b"NF\r\n");
    r.p.send(b"md m2 q\r\nmn\r\n");
    r.d.send(b"md m2 q\r\nmn\r\n");
    let (a, b) = (r.p.read_reply(Reply::Meta), r.d.read_reply(Reply::Meta));
    assert_bytes(&a, &b, "quiet md then mn");
    assert_bytes(&a, b"MN\r\n", "quiet md hit is silent");
    r.same_is(b"mg m2 v\r\n", b"EN\r\n");
    // Text and meta on the same key agree.
    r.same_is(b"set t 9 0 2\r\nhi\r\n", b"STORED\r\n");
    r.same_is(b"mg t v f\r\n", b"VA 2 f9\r\nhi\r\n");
}

#[test]
fn proxy_local_verbs() {
    let mut r = rig();
    // version: answered by the proxy, one line.
    let v = r.p.request(b"version\r\n");
    assert!(
        v.starts_with(b"VERSION ") && v.ends_with(b"\r\n") && v.len() > 10,
        "{}",
        show(&v)
    );
    r.proxy_is(b"verbosity 1\r\n", b"OK\r\n");
    r.p.send(b"verbosity 1 noreply\r\n");
    r.proxy_is(b"mn\r\n", b"MN\r\n");
    // stats on a fresh proxy: one set, one hit, one miss.
    r.proxy_is(&set_cmd("k", b"v"), b"STORED\r\n");
    r.proxy_is(b"get k\r\n", b"VALUE k 0 1\r\nv\r\nEND\r\n");
    r.proxy_is(b"get nope\r\n", b"END\r\n");
    // A second connection, proven accepted by a round trip.
    let mut second = r.proxy.client();
    assert_bytes(&second.request(b"mn\r\n"), b"MN\r\n", "second client");
    let stats = parse_stats(&r.p.request(b"stats\r\n"));
    assert_eq!(stat(&stats, "pid"), r.proxy.pid().to_string());
    stat(&stats, "uptime")
        .parse::<u64>()
        .expect("uptime is a number");
    for (name, at_least) in [("curr_connections", 2), ("total_connections", 2)] {
        let n: u64 = stat(&stats, name).parse().expect("number");
        assert!(n >= at_least, "{name} = {n}, want >= {at_least}");
    }
    for (name, want) in [
        ("cmd_get", "2"),
        ("cmd_set", "1"),
        ("get_hits", "1"),
        ("get_misses", "1"),
    ] {
        assert_eq!(stat(&stats, name), want, "STAT {name}");
    }
    // flush_all goes to every server.
    let keys: Vec<String> = (0..10).map(|i| format!("f{i}")).collect();
    for k in &keys {
        r.proxy_is(&set_cmd(k, b"x"), b"STORED\r\n");
    }
    let owners = key_owners(&[&r.servers[0], &r.servers[1]], &keys);
    assert!(
        owners.contains(&Some(0)) && owners.contains(&Some(1)),
        "{owners:?}"
    );
    r.proxy_is(b"flush_all\r\n", b"OK\r\n");
    assert!(key_owners(&[&r.servers[0], &r.servers[1]], &keys)
        .iter()
        .all(Option::is_none));
    r.proxy_is(&set_cmd("k", b"v"), b"STORED\r\n");
    r.p.send(b"flush_all noreply\r\n");
    r.proxy_is(b"get k\r\n", b"END\r\n");
    // quit answers everything before it, then closes.
    r.p.send(b"get nope\r\nquit\r\nget nope\r\n");
    assert_bytes(&r.p.read_reply(Reply::Values), b"END\r\n", "before quit");
    r.p.expect_eof();
    // The proxy itself is fine.
    let mut c = r.proxy.client();
    assert_bytes(
        &c.request(b"mn\r\n"),
        b"MN\r\n",
        "new connection after quit",
    );
    r.proxy.assert_alive();
}

#[test]
fn error_answers_keep_the_connection_usable() {
    let mut r = rig();
    r.same_is(b"set ok 0 0 2\r\nok\r\n", b"STORED\r\n");
    let sync = |r: &mut Rig, what: &str| {
        assert_bytes(
            &r.p.request(b"get ok\r\n"),
            b"VALUE ok 0 2\r\nok\r\nEND\r\n",
            &format!("connection usable after {what}"),
        );
    };
    // Unknown command: exactly memcached's answer.
    r.same_is(b"bogus\r\n", b"ERROR\r\n");
    r.same_is(b"GET ok\r\n", b"ERROR\r\n");
    sync(&mut r, "unknown command");
    // A 250-byte key is fine; 251 is not.
    let k250 = "k".repeat(250);
    r.same_is(&set_cmd(&k250, b"x"), b"STORED\r\n");
    r.same_is(
        format!("get {k250}\r\n").as_bytes(),
        &value_reply(&k250, 0, b"x"),
    );
    let k251 = "k".repeat(251);
    for cmd in [
        format!("get {k251}\r\n"),
        format!("get ok {k251}\r\n"),
        format!("delete {k251}\r\n"),
        format!("incr {k251} 1\r\n"),
        format!("touch {k251} 0\r\n"),
    ] {
        // memcached answers `CLIENT_ERROR bad command line format`; the proxy
        // may word it differently, but it must be one CLIENT_ERROR line.
        let got = r.p.request(cmd.as_bytes());
        assert_client_error(
            &got,
            &format!("251-byte key in {}", show(&cmd.as_bytes()[..10])),
        );
        sync(&mut r, "a 251-byte key");
    }
    // Control characters in a key: memcached takes them (it splits on
    // spaces only), and so does the proxy.
    for cmd in [
        &b"get a\x01b\r\n"[..],
        b"get ok a\x7fb\r\n",
        b"delete a\x1bb\r\n",
    ] {
        let want = r.d.request(cmd);
        let got = r.p.request(cmd);
        assert_bytes(&got, &want, &format!("control char in key: {}", show(cmd)));
        sync(&mut r, "a key with a control character");
    }
    // Bad numbers.
    for cmd in [
        &b"incr ok abc\r\n"[..],
        b"decr ok -1\r\n",
        b"touch ok soon\r\n",
        b"gat soon ok\r\n",
        b"set k 0 0 abc\r\n",
        b"set k 0 0 -1\r\n",
    ] {
        // memcached answers each of these with one CLIENT_ERROR line; the
        // proxy may word it differently, the shape may not.
        let want = r.d.request(cmd);
        assert_client_error(&want, &format!("memcached itself for {}", show(cmd)));
        let got = r.p.request(cmd);
        assert_client_error(&got, &format!("bad number in {}", show(cmd)));
        sync(&mut r, "a bad number");
    }
    // Too large for --max-item-size (default 1 MiB): the data is swallowed.
    let big = vec![b'B'; (1 << 20) + 1];
    r.proxy_is(
        &set_cmd("big", &big),
        b"SERVER_ERROR object too large for cache\r\n",
    );
    sync(&mut r, "a too-large value");
    r.proxy_is(b"get big\r\n", b"END\r\n");
    // The same, pipelined with the next command in one write.
    let mut batch = set_cmd("big", &big);
    batch.extend_from_slice(b"get ok\r\n");
    r.p.send(&batch);
    assert_bytes(
        &r.p.read_line(),
        b"SERVER_ERROR object too large for cache\r\n",
        "pipelined too large",
    );
    assert_bytes(
        &r.p.read_reply(Reply::Values),
        b"VALUE ok 0 2\r\nok\r\nEND\r\n",
        "after pipelined too large",
    );
    r.proxy.assert_alive();
}
