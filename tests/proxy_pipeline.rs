//! Pipelining, fan-out, sizes, many clients and listener styles, end to end
//! through the real memring binary and real memcached servers.

// Tests and benchmarks keep time themselves (clippy.toml holds the library).
#![allow(clippy::disallowed_methods)]

mod common;

use std::net::SocketAddr;
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use common::*;

/// Mixed verbs in ONE write come back complete and in request order, equal
/// to what a single memcached answers to the same bytes.
#[test]
fn pipelined_mixed_verbs_reply_in_order() {
    let servers = Memcached::cluster(3, "2m");
    let direct = Memcached::start_with_item_size("2m");
    let proxy = Memring::start_for(&[&servers[0], &servers[1], &servers[2]], &[]);
    let cmds: Vec<Vec<u8>> = vec![
        set_cmd("a", b"1"),
        b"get a\r\n".to_vec(),
        b"add a 0 0 1\r\nx\r\n".to_vec(),
        b"add b 3 0 2\r\nbb\r\n".to_vec(),
        b"incr a 41\r\n".to_vec(),
        b"get a b nope c\r\n".to_vec(),
        noreply(&set_cmd("c", b"ccc")),
        b"mg c v f k\r\n".to_vec(),
        b"ms d 4 F9\r\ndddd\r\n".to_vec(),
        b"gets d\r\n".to_vec(),
        b"append d 0 0 1\r\n!\r\n".to_vec(),
        b"mg nope v q\r\n".to_vec(),
        b"mn\r\n".to_vec(),
        b"touch b 0\r\n".to_vec(),
        b"delete a\r\n".to_vec(),
        b"decr a 1\r\n".to_vec(),
        b"bogus\r\n".to_vec(),
        b"md b q\r\n".to_vec(),
        b"ma e N0 J7 v\r\n".to_vec(),
        b"get a b c d e\r\n".to_vec(),
        b"mn\r\n".to_vec(),
    ];
    // Quiet meta commands that stay silent have no reply to frame; the
    // framer treats them as one-line replies, so list them separately.
    let framed: Vec<Vec<u8>> = cmds
        .iter()
        .filter(|c| !(c.starts_with(b"mg nope v q") || c.starts_with(b"md b q")))
        .cloned()
        .collect();
    let (mut p, mut d) = (proxy.client(), direct.client());
    let got = pipeline_with_quiet(&mut p, &cmds, &framed);
    let want = pipeline_with_quiet(&mut d, &cmds, &framed);
    assert_eq!(got.len(), want.len());
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert_bytes(
            &normalize(g),
            &normalize(w),
            &format!("reply {i} to {}", show(&framed[i])),
        );
    }
    assert_bytes(
        got.last().unwrap(),
        b"MN\r\n",
        "the last reply is the final mn",
    );
}

/// Send all of `cmds` in one write, read one reply per command in `framed`.
fn pipeline_with_quiet(c: &mut Client, cmds: &[Vec<u8>], framed: &[Vec<u8>]) -> Vec<Vec<u8>> {
    c.send(&cmds.concat());
    framed
        .iter()
        .map(|cmd| c.read_reply(Reply::for_request(cmd)))
        .collect()
}

fn noreply(cmd: &[u8]) -> Vec<u8> {
    let eol = cmd.windows(2).position(|w| w == b"\r\n").expect("CR LF");
    [&cmd[..eol], b" noreply", &cmd[eol..]].concat()
}

/// A 100-key multi-get over 3 servers returns every value in key order, and
/// the keys really are spread over the 3 servers (asked directly).
#[test]
fn multiget_of_100_keys_across_3_servers() {
    for dist in [&[][..], &["-k"][..]] {
        let servers = Memcached::cluster(3, "2m");
        let refs: Vec<&Memcached> = servers.iter().collect();
        let proxy = Memring::start_for(&refs, dist);
        let mut c = proxy.client();
        let keys: Vec<String> = (0..100).map(|i| format!("user:{i}:profile")).collect();
        let sets: Vec<Vec<u8>> = keys
            .iter()
            .enumerate()
            .map(|(i, k)| storage("set", k, i as u32, 0, format!("value-of-{k}").as_bytes()))
            .collect();
        for (i, r) in c.pipeline(&sets).iter().enumerate() {
            assert_bytes(r, b"STORED\r\n", &format!("set {i} ({dist:?})"));
        }
        let owners = key_owners(&refs, &keys);
        for (s, _) in servers.iter().enumerate() {
            let n = owners.iter().filter(|o| **o == Some(s)).count();
            assert!(n > 0, "{dist:?}: no key on server {s}: {owners:?}");
        }
        assert!(
            owners.iter().all(Option::is_some),
            "{dist:?}: lost keys: {owners:?}"
        );
        // Every key, plus misses mixed in, in one get.
        let mut req = keys.clone();
        req.insert(50, "missing:1".into());
        req.push("missing:2".into());
        let mut want = Vec::new();
        for (i, k) in keys.iter().enumerate() {
            let v = format!("value-of-{k}");
            want.extend(format!("VALUE {k} {i} {}\r\n{v}\r\n", v.len()).into_bytes());
        }
        want.extend_from_slice(b"END\r\n");
        let got = c.request(format!("get {}\r\n", req.join(" ")).as_bytes());
        assert_bytes(&got, &want, &format!("100-key get ({dist:?})"));
        // Duplicate keys are answered once per mention, as memcached does.
        let got = c.request(b"get user:1:profile user:1:profile\r\n");
        let one = b"VALUE user:1:profile 1 23\r\nvalue-of-user:1:profile\r\n";
        assert_bytes(
            &got,
            &[&one[..], one, b"END\r\n"].concat(),
            "duplicate keys",
        );
    }
}

/// Values of 0 B, 1 B and 1 MiB - 1 pass through; 1 MiB + 1 (over the
/// default --max-item-size of 1 MiB) is refused with the data swallowed.
/// memcached runs with -I 2m: with -I 1m it cannot store 1 MiB - 1 bytes of
/// value itself (item overhead), see harness_selftest.
#[test]
fn value_sizes_up_to_and_over_the_limit() {
    let servers = Memcached::cluster(2, "2m");
    let proxy = Memring::start_for(&[&servers[0], &servers[1]], &[]);
    let mut c = proxy.client();
    let patterned = |n: usize| -> Vec<u8> { (0..n).map(|i| b"0123456789\r\n"[i % 12]).collect() };
    for (key, len) in [("zero", 0usize), ("one", 1), ("max", (1 << 20) - 1)] {
        let v = patterned(len);
        assert_bytes(
            &c.request(&set_cmd(key, &v)),
            b"STORED\r\n",
            &format!("set {len} B"),
        );
        assert_bytes(
            &c.request(format!("get {key}\r\n").as_bytes()),
            &value_reply(key, 0, &v),
            &format!("get {len} B"),
        );
    }
    // All three in one multi-get.
    let got = c.request(b"get zero one max\r\n");
    let want = [
        b"VALUE zero 0 0\r\n\r\n".to_vec(),
        b"VALUE one 0 1\r\n0\r\n".to_vec(),
        format!("VALUE max 0 {}\r\n", (1 << 20) - 1).into_bytes(),
        patterned((1 << 20) - 1),
        b"\r\nEND\r\n".to_vec(),
    ]
    .concat();
    assert_bytes(&got, &want, "multi-get of 0 B, 1 B and 1 MiB-1");
    // Just over the limit: refused, swallowed, in sync.
    let over = patterned((1 << 20) + 1);
    assert_bytes(
        &c.request(&set_cmd("over", &over)),
        b"SERVER_ERROR object too large for cache\r\n",
        "1 MiB + 1",
    );
    let max_only = [
        format!("VALUE max 0 {}\r\n", (1 << 20) - 1).into_bytes(),
        patterned((1 << 20) - 1),
        b"\r\nEND\r\n".to_vec(),
    ]
    .concat();
    assert_bytes(
        &c.request(b"get over max\r\n"),
        &max_only,
        "after the refusal",
    );
    // Nothing reached a server.
    assert!(key_owners(&[&servers[0], &servers[1]], &["over".into()])[0].is_none());
}

/// More than 1024 requests in one write (past IOV_MAX for a writev of
/// replies) with ~6 MB of replies, forcing partial writes.
#[test]
fn large_pipelined_batch_in_one_write() {
    let servers = Memcached::cluster(2, "2m");
    let proxy = Memring::start_for(&[&servers[0], &servers[1]], &[]);
    let mut c = proxy.client();
    let val: Vec<u8> = (0..4000u32).map(|i| b'a' + (i % 26) as u8).collect();
    let sets: Vec<Vec<u8>> = (0..1500)
        .map(|i| set_cmd(&format!("b:{i}"), &val))
        .collect();
    for (i, r) in c.pipeline(&sets).iter().enumerate() {
        assert_bytes(r, b"STORED\r\n", &format!("pipelined set {i}"));
    }
    let gets: Vec<Vec<u8>> = (0..1500)
        .map(|i| format!("get b:{}\r\n", (i * 7) % 1600).into_bytes())
        .collect();
    let replies = c.pipeline(&gets);
    assert_eq!(replies.len(), 1500);
    for (i, r) in replies.iter().enumerate() {
        let k = (i * 7) % 1600;
        let want = if k < 1500 {
            value_reply(&format!("b:{k}"), 0, &val)
        } else {
            b"END\r\n".to_vec()
        };
        assert_bytes(r, &want, &format!("pipelined get {i}"));
    }
    // Small replies, many of them: 3000 tiny requests in one write.
    let tiny: Vec<Vec<u8>> = (0..3000)
        .map(|i| {
            if i % 2 == 0 {
                b"mn\r\n".to_vec()
            } else {
                b"get nope\r\n".to_vec()
            }
        })
        .collect();
    for (i, r) in c.pipeline(&tiny).iter().enumerate() {
        let want: &[u8] = if i % 2 == 0 { b"MN\r\n" } else { b"END\r\n" };
        assert_bytes(r, want, &format!("tiny {i}"));
    }
}

/// 1000 client connections open at once, each with a request in flight.
#[test]
fn thousand_concurrent_clients() {
    const THREADS: usize = 4;
    const PER_THREAD: usize = 250;
    let limit = raise_nofile(8192);
    assert!(
        limit >= 4096,
        "RLIMIT_NOFILE hard limit too low for 1000 clients: {limit}"
    );
    let servers = Memcached::cluster(2, "2m");
    let proxy = Memring::start_for(&[&servers[0], &servers[1]], &[]);
    let addr = proxy.addr();
    // Channels, not barriers: a worker that panics drops its sender, and
    // every wait below has a deadline, so a failure can never hang the test.
    let (opened_tx, opened_rx) = mpsc::channel::<usize>();
    let mut releases = Vec::new();
    let workers: Vec<_> = (0..THREADS)
        .map(|t| {
            let opened = opened_tx.clone();
            let (release_tx, release_rx) = mpsc::channel::<()>();
            releases.push(release_tx);
            thread::spawn(move || client_worker(addr, t, PER_THREAD, &opened, &release_rx))
        })
        .collect();
    drop(opened_tx);
    let deadline = Instant::now() + Duration::from_secs(120);
    for _ in 0..THREADS {
        let left = deadline.saturating_duration_since(Instant::now());
        opened_rx
            .recv_timeout(left)
            .expect("every client worker opened its connections and got its replies");
    }
    let stats = parse_stats(&proxy.client().request(b"stats\r\n"));
    let curr: usize = stat(&stats, "curr_connections").parse().unwrap();
    for r in &releases {
        let _ = r.send(());
    }
    for w in workers {
        w.join().expect("client worker panicked");
    }
    assert!(
        curr > THREADS * PER_THREAD,
        "curr_connections = {curr} with 1000 clients open"
    );
    // Every value really landed.
    let keys: Vec<String> = (0..THREADS * PER_THREAD)
        .map(|i| format!("c:{i}"))
        .collect();
    assert!(key_owners(&[&servers[0], &servers[1]], &keys)
        .iter()
        .all(Option::is_some));
}

fn client_worker(
    addr: SocketAddr,
    t: usize,
    n: usize,
    opened: &mpsc::Sender<usize>,
    release: &mpsc::Receiver<()>,
) {
    let mut conns: Vec<Client> = (0..n).map(|_| Client::tcp(addr)).collect();
    // A set in flight on every connection before any reply is read.
    for (i, c) in conns.iter_mut().enumerate() {
        c.send(&set_cmd(
            &format!("c:{}", t * n + i),
            format!("v{}", t * n + i).as_bytes(),
        ));
    }
    for (i, c) in conns.iter_mut().enumerate() {
        assert_bytes(
            &c.read_line(),
            b"STORED\r\n",
            &format!("client {t}/{i} set"),
        );
    }
    for (i, c) in conns.iter_mut().enumerate() {
        c.send(format!("get c:{}\r\n", t * n + i).as_bytes());
    }
    for (i, c) in conns.iter_mut().enumerate() {
        let k = format!("c:{}", t * n + i);
        let v = format!("v{}", t * n + i);
        assert_bytes(
            &c.read_reply(Reply::Values),
            &value_reply(&k, 0, v.as_bytes()),
            &format!("client {t}/{i} get"),
        );
    }
    let _ = opened.send(t);
    // Keep them open until the main thread has read curr_connections (or gave up).
    let _ = release.recv_timeout(Duration::from_secs(120));
}

/// `-f <path> -p 0`: only a unix listener (magent's -p 0 disables TCP).
#[test]
fn unix_socket_only_with_port_zero() {
    let servers = Memcached::cluster(2, "2m");
    let dir = TempDir::new("unix");
    let sock = dir.path().join("memring.sock");
    let sock_s = sock.to_str().unwrap().to_string();
    let args = [
        "-D",
        "-p",
        "0",
        "-f",
        &sock_s,
        "-s",
        &servers[0].server_arg(),
        "-s",
        &servers[1].server_arg(),
    ];
    let proxy = Memring::start(&args);
    assert_eq!(
        proxy.listen_lines,
        vec![format!("listening on unix {sock_s}")]
    );
    assert!(proxy.tcp.is_none());
    let mut c = proxy.unix_client();
    assert_bytes(
        &c.request(&set_cmd("u", b"unix")),
        b"STORED\r\n",
        "set over unix",
    );
    assert_bytes(
        &c.request(b"get u\r\n"),
        &value_reply("u", 0, b"unix"),
        "get over unix",
    );
    assert!(key_owners(&[&servers[0], &servers[1]], &["u".into()])[0].is_some());
}

/// `--bind` and `-f` together: both listeners, same data behind them.
#[test]
fn unix_socket_and_tcp_together() {
    let servers = Memcached::cluster(2, "2m");
    let dir = TempDir::new("unix2");
    let sock = dir.path().join("m.sock");
    let proxy = Memring::start_for(&[&servers[0], &servers[1]], &["-f", sock.to_str().unwrap()]);
    assert_eq!(proxy.listen_lines.len(), 2, "{:?}", proxy.listen_lines);
    assert_eq!(proxy.unix.as_deref(), Some(sock.as_path()));
    let mut t = proxy.client();
    let mut u = proxy.unix_client();
    assert_bytes(
        &t.request(&set_cmd("both", b"x")),
        b"STORED\r\n",
        "set over tcp",
    );
    assert_bytes(
        &u.request(b"get both\r\n"),
        &value_reply("both", 0, b"x"),
        "get over unix",
    );
}

/// magent's own command-line style, short flags glued to their values.
#[test]
fn magent_style_command_line() {
    let servers = Memcached::cluster(3, "2m");
    let (s0, s1, b0) = (
        servers[0].server_arg(),
        servers[1].server_arg(),
        servers[2].server_arg(),
    );
    let mut last_err = String::new();
    // free_port() can race with another process: retry a few times.
    for _ in 0..3 {
        let port = free_port();
        let args = [
            "-uroot".to_string(),
            "-n1024".into(),
            "-l127.0.0.1".into(),
            format!("-p{port}"),
            format!("-s{s0}"),
            format!("-s{s1}"),
            format!("-b{b0}"),
            "-D".into(),
        ];
        match Memring::try_start(&args) {
            Ok(proxy) => {
                assert_eq!(
                    proxy.listen_lines,
                    vec![format!("listening on tcp 127.0.0.1:{port}")]
                );
                assert_eq!(proxy.addr().port(), port);
                let mut c = proxy.client();
                assert_bytes(&c.request(&set_cmd("m", b"agent")), b"STORED\r\n", "set");
                assert_bytes(
                    &c.request(b"get m\r\n"),
                    &value_reply("m", 0, b"agent"),
                    "get",
                );
                let owner = key_owners(&[&servers[0], &servers[1]], &["m".into()])[0];
                assert!(owner.is_some(), "the key is on a primary");
                return;
            }
            Err(e) => last_err = e,
        }
    }
    panic!("memring with a magent-style command line did not start: {last_err}");
}
