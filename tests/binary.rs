//! memcached's binary protocol through memring: byte-for-byte against a real
//! memcached, quiet semantics, bad frames, libmemcached's tools with
//! `--binary`, pylibmc with `binary=True`, and failover for keys written by
//! binary clients. All against the seed's 3 primaries + 2 backups.

// Tests and benchmarks keep time themselves (clippy.toml holds the library).
#![allow(clippy::disallowed_methods)]

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use memring::protocol::binary::{
    arithmetic_extras as incr_extras, request_frame as frame, storage_extras as set_extras, Opcode,
    HEADER_LEN,
};

/// Read one response frame, whole.
fn read_frame(c: &mut Client) -> Vec<u8> {
    let mut f = c.read_exact_reply(HEADER_LEN);
    assert_eq!(f[0], 0x81, "not a response frame: {}", show(&f));
    let body = u32::from_be_bytes([f[8], f[9], f[10], f[11]]) as usize;
    if body > 0 {
        f.extend(c.read_exact_reply(body));
    }
    f
}

/// Send `frames` then a NoOp with opaque `u32::MAX`; return every response
/// before the NoOp's (which is checked), in order.
fn exchange(c: &mut Client, frames: &[Vec<u8>]) -> Vec<Vec<u8>> {
    let mut all = frames.concat();
    all.extend(frame(Opcode::NoOp, u32::MAX, 0, b"", b"", b""));
    c.send(&all);
    let mut out = Vec::new();
    // Bounded: at most one response per frame plus stats lines.
    for _ in 0..10_000 {
        let f = read_frame(c);
        if f[1] == Opcode::NoOp as u8 && f[12..16] == u32::MAX.to_be_bytes() {
            return out;
        }
        out.push(f);
    }
    panic!("no NoOp response after 10000 frames");
}

fn status(f: &[u8]) -> u16 {
    u16::from_be_bytes([f[6], f[7]])
}

fn opaque(f: &[u8]) -> u32 {
    u32::from_be_bytes([f[12], f[13], f[14], f[15]])
}

fn cas(f: &[u8]) -> u64 {
    u64::from_be_bytes(f[16..24].try_into().unwrap())
}

fn body(f: &[u8]) -> &[u8] {
    &f[HEADER_LEN..]
}

/// The value of a response (after extras and key).
fn value(f: &[u8]) -> &[u8] {
    let key = u16::from_be_bytes([f[2], f[3]]) as usize;
    &f[HEADER_LEN + f[4] as usize + key..]
}

/// CAS values differ per server: keep only whether there is one.
fn masked(f: &[u8]) -> Vec<u8> {
    let mut f = f.to_vec();
    if cas(&f) != 0 {
        f[16..24].copy_from_slice(&1u64.to_be_bytes());
    }
    f
}

/// One scripted request: opcode, CAS, extras, key, value.
type Op<'a> = (Opcode, u64, Vec<u8>, &'a [u8], &'a [u8]);

/// Extras of a storage request, owned for a script row.
fn storage(flags: u32, exptime: u32) -> Vec<u8> {
    set_extras(flags, exptime).to_vec()
}

/// Extras of an incr/decr request, owned for a script row.
fn incr(delta: u64, initial: u64, exptime: u32) -> Vec<u8> {
    incr_extras(delta, initial, exptime).to_vec()
}

/// A script that exercises every opcode memcached 1.6 serves, with hits,
/// misses, quiet forms and errors. Opaques are the frame's index. NoOps
/// split it into groups, each sent as one pipeline once the previous one is
/// answered: memring serves one client's requests concurrently, so a read
/// pipelined before a write of the same key may see it (read-through from the
/// backup happens after the primary's miss).
fn parity_script() -> Vec<Vec<Vec<u8>>> {
    let se = storage(0xdead_beef, 0);
    let big = vec![b'x'; 2 * 1024 * 1024];
    let ops: Vec<Op> = vec![
        (Opcode::Get, 0, vec![], b"a", b""),
        (Opcode::GetK, 0, vec![], b"a", b""),
        (Opcode::GetQ, 0, vec![], b"a", b""),
        (Opcode::GetKQ, 0, vec![], b"a", b""),
        (Opcode::NoOp, 0, vec![], b"", b""),
        (Opcode::Set, 0, se.to_vec(), b"a", b"alpha"),
        (Opcode::SetQ, 0, storage(7, 0), b"b", b"beta"),
        (Opcode::Get, 0, vec![], b"a", b""),
        (Opcode::GetK, 0, vec![], b"b", b""),
        (Opcode::GetKQ, 0, vec![], b"a", b""),
        (Opcode::GetKQ, 0, vec![], b"nokey", b""),
        (Opcode::GetQ, 0, vec![], b"b", b""),
        (Opcode::GetK, 0, vec![], b"nokey2", b""),
        (Opcode::NoOp, 0, vec![], b"", b""),
        (Opcode::Add, 0, se.to_vec(), b"a", b"x"),
        (Opcode::AddQ, 0, se.to_vec(), b"c", b"gamma"),
        (Opcode::AddQ, 0, se.to_vec(), b"c", b"again"),
        (Opcode::Replace, 0, se.to_vec(), b"nokey", b"x"),
        (Opcode::ReplaceQ, 0, se.to_vec(), b"nokey", b"x"),
        (Opcode::Replace, 0, se.to_vec(), b"a", b"alpha2"),
        (Opcode::Append, 0, vec![], b"a", b"!"),
        (Opcode::Prepend, 0, vec![], b"a", b"<"),
        (Opcode::AppendQ, 0, vec![], b"a", b"?"),
        (Opcode::Append, 0, vec![], b"nokey", b"!"),
        (Opcode::PrependQ, 0, vec![], b"nokey", b"!"),
        (Opcode::Get, 0, vec![], b"a", b""),
        (Opcode::NoOp, 0, vec![], b"", b""),
        (Opcode::Set, 1, se.to_vec(), b"a", b"wrong cas"),
        (Opcode::Set, 5, se.to_vec(), b"nokey", b"cas on a miss"),
        (Opcode::Delete, 0, vec![], b"nokey", b""),
        (Opcode::DeleteQ, 0, vec![], b"c", b""),
        (Opcode::Get, 0, vec![], b"c", b""),
        (Opcode::Delete, 3, vec![], b"b", b""),
        (Opcode::Increment, 0, incr(1, 0, 0xffff_ffff), b"n", b""),
        (Opcode::Increment, 0, incr(1, 10, 0), b"n", b""),
        (Opcode::Increment, 0, incr(5, 10, 0), b"n", b""),
        (Opcode::Decrement, 0, incr(5, 0, 0), b"n", b""),
        // (Below zero clamps to 0; memcached pads the shrunk value with
        // spaces only when no other reference holds the item, so the
        // bytes of a later get depend on timing: kept out of this script.)
        (Opcode::IncrementQ, 0, incr(1, 0, 0), b"n", b""),
        (Opcode::DecrementQ, 0, incr(1, 7, 0), b"m", b""),
        (Opcode::Get, 0, vec![], b"n", b""),
        (Opcode::Get, 0, vec![], b"m", b""),
        (Opcode::NoOp, 0, vec![], b"", b""),
        (Opcode::Increment, 0, incr(u64::MAX, 0, 0), b"n", b""),
        (Opcode::Increment, 0, incr(1, 0, 0), b"a", b""),
        (Opcode::NoOp, 0, vec![], b"", b""),
        (Opcode::Touch, 0, 100u32.to_be_bytes().to_vec(), b"a", b""),
        (
            Opcode::Touch,
            0,
            100u32.to_be_bytes().to_vec(),
            b"nokey",
            b"",
        ),
        (Opcode::Gat, 0, 100u32.to_be_bytes().to_vec(), b"a", b""),
        (Opcode::GatK, 0, 100u32.to_be_bytes().to_vec(), b"a", b""),
        (Opcode::GatQ, 0, 100u32.to_be_bytes().to_vec(), b"a", b""),
        (Opcode::GatKQ, 0, 100u32.to_be_bytes().to_vec(), b"a", b""),
        (
            Opcode::GatQ,
            0,
            100u32.to_be_bytes().to_vec(),
            b"nokey",
            b"",
        ),
        (
            Opcode::GatKQ,
            0,
            100u32.to_be_bytes().to_vec(),
            b"nokey",
            b"",
        ),
        (Opcode::Gat, 0, 100u32.to_be_bytes().to_vec(), b"nokey", b""),
        (
            Opcode::GatK,
            0,
            100u32.to_be_bytes().to_vec(),
            b"nokey",
            b"",
        ),
        (Opcode::NoOp, 0, vec![], b"", b""),
        (Opcode::SaslListMechs, 0, vec![], b"", b""),
        (Opcode::Set, 0, se.to_vec(), b"big", b"small"),
        (Opcode::NoOp, 0, vec![], b"", b""),
        // Too large: refused, and the old value is gone (memcached unlinks it).
        (Opcode::Set, 0, se.to_vec(), b"big", &big),
        (Opcode::SetQ, 0, se.to_vec(), b"big", &big),
        (Opcode::Get, 0, vec![], b"big", b""),
        (Opcode::Stat, 0, vec![], b"nosuchgroup", b""),
        (Opcode::NoOp, 0, vec![], b"", b""),
        (Opcode::Flush, 0, vec![], b"", b""),
        (Opcode::Get, 0, vec![], b"a", b""),
        (Opcode::NoOp, 0, vec![], b"", b""),
        (Opcode::Set, 0, se.to_vec(), b"a", b"after flush"),
        (Opcode::FlushQ, 0, vec![], b"", b""),
        (Opcode::GetK, 0, vec![], b"a", b""),
    ];
    let mut groups = vec![Vec::new()];
    for (i, (op, cas, extras, key, value)) in ops.iter().enumerate() {
        if *op == Opcode::NoOp {
            groups.push(Vec::new());
        } else if let Some(g) = groups.last_mut() {
            g.push(frame(*op, i as u32, *cas, extras, key, value));
        }
    }
    // An unknown opcode with a body: answered and skipped. (Only a value:
    // memcached skips the body length again after the key and extras.)
    let mut unknown = frame(Opcode::Append, 1000, 0, b"", b"", b"body");
    unknown[1] = 0x42;
    groups.push(vec![unknown]);
    groups
}

/// Every response memring gives equals memcached's, byte for byte (CAS
/// values aside, which differ per server), for a script covering every
/// opcode, quiet forms and error statuses.
#[test]
fn responses_match_memcached_byte_for_byte() {
    let direct = Memcached::start();
    let (_servers, proxy) = magent_seed_cluster();
    let script = parity_script();
    let (mut d, mut p) = (direct.client(), proxy.client());
    let want: Vec<Vec<u8>> = script.iter().flat_map(|g| exchange(&mut d, g)).collect();
    let got: Vec<Vec<u8>> = script.iter().flat_map(|g| exchange(&mut p, g)).collect();
    let n = want.len().max(got.len());
    for i in 0..n {
        let (w, g) = (want.get(i), got.get(i));
        assert_eq!(
            g.map(|f| show(&masked(f))),
            w.map(|f| show(&masked(f))),
            "response {i} (opaque {:?}) differs",
            w.map(|f| opaque(f))
        );
    }
    assert!(
        want.len() >= 40,
        "the script produced {} responses",
        want.len()
    );
    println!("{} responses compared with memcached", want.len());
}

#[test]
fn version_verbosity_stats_quit() {
    let (_servers, proxy) = magent_seed_cluster();
    let mut c = proxy.client();
    let r = exchange(
        &mut c,
        &[
            frame(Opcode::Version, 1, 0, b"", b"", b""),
            frame(Opcode::Verbosity, 2, 0, &1u32.to_be_bytes(), b"", b""),
            frame(Opcode::Stat, 3, 0, b"", b"", b""),
        ],
    );
    assert_eq!(status(&r[0]), 0);
    assert_eq!(
        body(&r[0]),
        // The text `version` line's version, which libmemcached parses.
        memring::protocol::compose::VERSION
            .strip_prefix(b"VERSION ")
            .and_then(|v| v.strip_suffix(b"\r\n"))
            .expect("a VERSION line")
    );
    assert_eq!(
        (opaque(&r[1]), status(&r[1]), body(&r[1])),
        (2, 0, &b""[..])
    );
    // Stats: one frame per stat with key = name, value = value, then an empty one.
    let stats = &r[2..];
    assert!(stats.len() > 10, "{} stat frames", stats.len());
    let last = stats.last().unwrap();
    assert_eq!((last[1], body(last).len()), (Opcode::Stat as u8, 0));
    let names: Vec<String> = stats
        .iter()
        .map(|f| {
            let k = u16::from_be_bytes([f[2], f[3]]) as usize;
            String::from_utf8_lossy(&f[HEADER_LEN..HEADER_LEN + k]).into_owned()
        })
        .collect();
    assert!(names.iter().any(|n| n == "curr_connections"), "{names:?}");
    assert!(stats.iter().all(|f| opaque(f) == 3));
    // Quit answers, then closes; QuitQ closes silently.
    c.send(&frame(Opcode::Quit, 9, 0, b"", b"", b""));
    let f = read_frame(&mut c);
    assert_eq!((f[1], opaque(&f), status(&f)), (Opcode::Quit as u8, 9, 0));
    c.expect_eof();
    let mut c = proxy.client();
    c.send(&frame(Opcode::QuitQ, 9, 0, b"", b"", b""));
    c.expect_eof();
}

/// Quiet gets and writes are silent until a loud command, and a run of
/// GetKQ ... NoOp over keys on every server comes back in request order.
#[test]
fn quiet_pipeline_is_split_per_server_and_merged_in_order() {
    let (servers, proxy) = magent_seed_cluster();
    let mut c = proxy.client();
    let keys: Vec<String> = (0..300).map(|i| format!("bk:{i}")).collect();
    let sets: Vec<Vec<u8>> = keys
        .iter()
        .enumerate()
        .filter(|(i, _)| i % 3 != 0)
        .map(|(i, k)| {
            frame(
                Opcode::SetQ,
                i as u32,
                0,
                &set_extras(i as u32, 0),
                k.as_bytes(),
                k.as_bytes(),
            )
        })
        .collect();
    assert!(exchange(&mut c, &sets).is_empty(), "quiet sets answered");
    let gets: Vec<Vec<u8>> = keys
        .iter()
        .enumerate()
        .map(|(i, k)| frame(Opcode::GetKQ, i as u32, 0, b"", k.as_bytes(), b""))
        .collect();
    let r = exchange(&mut c, &gets);
    let want: Vec<u32> = (0..300u32).filter(|i| i % 3 != 0).collect();
    assert_eq!(r.iter().map(|f| opaque(f)).collect::<Vec<_>>(), want);
    for f in &r {
        let i = opaque(f);
        let key = format!("bk:{i}");
        assert_eq!(status(f), 0);
        assert_eq!(&f[HEADER_LEN..HEADER_LEN + 4], &i.to_be_bytes(), "flags");
        assert_eq!(value(f), key.as_bytes());
        assert_ne!(cas(f), 0);
    }
    // The keys really are spread over all three primaries.
    let primaries: Vec<&Memcached> = servers[..3].iter().collect();
    let owners = key_owners(&primaries, &keys[1..10]);
    let mut distinct: Vec<_> = owners.into_iter().flatten().collect();
    distinct.sort();
    distinct.dedup();
    assert!(distinct.len() >= 2, "keys on {distinct:?}");
}

/// Bad frames get memcached's answer or a close, and never disturb another client.
#[test]
fn bad_frames_answer_or_close_and_spare_other_clients() {
    let (_servers, proxy) = magent_seed_cluster();
    let mut other = proxy.client();
    let r = exchange(
        &mut other,
        &[frame(Opcode::Set, 1, 0, &set_extras(0, 0), b"o", b"ok")],
    );
    assert_eq!(status(&r[0]), 0);
    // Wrong magic after the first frame: closed without an answer.
    let mut c = proxy.client();
    let mut bytes = frame(Opcode::NoOp, 1, 0, b"", b"", b"");
    bytes.extend_from_slice(b"get o\r\n");
    c.send(&bytes);
    assert_eq!(status(&read_frame(&mut c)), 0);
    c.expect_eof();
    // A key over 250 bytes: "Invalid arguments", then closed.
    let mut c = proxy.client();
    c.send(&frame(Opcode::Get, 2, 0, b"", &[b'k'; 251], b""));
    let f = read_frame(&mut c);
    assert_eq!((status(&f), body(&f)), (0x04, &b"Invalid arguments"[..]));
    c.expect_eof();
    // A body length of 4 GB on a set: judged from the header ("Too large."),
    // not buffered; then the client goes away.
    let mut c = proxy.client();
    let mut huge = frame(Opcode::Set, 3, 0, &set_extras(0, 0), b"k", b"");
    huge[8..12].copy_from_slice(&u32::MAX.to_be_bytes());
    c.send(&huge);
    let f = read_frame(&mut c);
    assert_eq!((status(&f), body(&f)), (0x03, &b"Too large."[..]));
    drop(c);
    // Extras + key longer than the body: "Unknown command", then closed.
    let mut c = proxy.client();
    let mut bad = frame(Opcode::Get, 4, 0, b"", b"abc", b"");
    bad[11] = 1;
    c.send(&bad[..HEADER_LEN]);
    let f = read_frame(&mut c);
    assert_eq!(status(&f), 0x81);
    c.expect_eof();
    // A key of any bytes too long to travel base64: "Invalid arguments",
    // connection kept.
    let mut c = proxy.client();
    let r = exchange(&mut c, &[frame(Opcode::Get, 5, 0, b"", &[b' '; 187], b"")]);
    assert_eq!(status(&r[0]), 0x04);
    // A frame cut in the middle waits; the rest completes it.
    let whole = frame(Opcode::Get, 6, 0, b"", b"o", b"");
    c.send(&whole[..10]);
    c.expect_silence(Duration::from_millis(200));
    c.send(&whole[10..]);
    let f = read_frame(&mut c);
    assert_eq!((opaque(&f), value(&f)), (6, &b"ok"[..]));
    // The first client was never disturbed.
    let r = exchange(&mut other, &[frame(Opcode::Get, 7, 0, b"", b"o", b"")]);
    assert_eq!(value(&r[0]), b"ok");
}

// ---------------------------------------------------------------------------
// Real binary clients
// ---------------------------------------------------------------------------

/// libmemcached's binary conformance checks (memccapable -b) all pass
/// through memring in front of the seed cluster.
#[test]
fn memccapable_binary_conformance_passes() {
    let (_servers, proxy) = magent_seed_cluster();
    let text = memccapable(proxy.addr().port(), "-b");
    let passed = text.lines().filter(|l| l.ends_with("[pass]")).count();
    assert!(passed >= 27, "{passed} checks passed:\n{text}");
}

#[test]
fn libmemcached_tools_round_trip_with_binary() {
    let (servers, proxy) = magent_seed_cluster();
    let dir = TempDir::new("memccp-bin");
    let file = dir.path().join("bin-payload");
    let data: Vec<u8> = (0..50_000u32).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(&file, &data).expect("write payload");
    let target = format!("--servers=127.0.0.1:{}", proxy.addr().port());
    run(Command::new(tool("memccp"))
        .args([&target, "--binary"])
        .arg(&file));
    let out = run(Command::new(tool("memccat")).args([&target, "--binary", "bin-payload"]));
    let got = out.stdout.strip_suffix(b"\n").unwrap_or(&out.stdout);
    assert!(
        got == data.as_slice(),
        "memccat returned {} bytes",
        got.len()
    );
    // Stored on one primary and one backup, readable by a text client.
    let holders = |range: std::ops::Range<usize>| {
        servers[range]
            .iter()
            .filter(|s| s.client().request(b"get bin-payload\r\n") != b"END\r\n")
            .count()
    };
    assert_eq!((holders(0..3), holders(3..5)), (1, 1));
    run(Command::new(tool("memcexist")).args([&target, "--binary", "bin-payload"]));
    run(Command::new(tool("memctouch")).args([&target, "--binary", "--expire=300", "bin-payload"]));
    run(Command::new(tool("memcrm")).args([&target, "--binary", "bin-payload"]));
    let gone = Command::new(tool("memcexist"))
        .args([&target, "--binary", "bin-payload"])
        .stdin(Stdio::null())
        .output()
        .expect("memcexist");
    assert!(
        !gone.status.success(),
        "memcexist still finds the removed key"
    );
    assert_eq!(
        proxy.client().request(b"get bin-payload\r\n"),
        b"END\r\n",
        "a text client still sees it"
    );
}

/// memcslap's set, get and mget tests with `--binary`: no error reported,
/// every get a hit.
#[test]
fn memcslap_binary_load_has_no_failures() {
    let (_servers, proxy) = magent_seed_cluster();
    let target = format!("--servers=127.0.0.1:{}", proxy.addr().port());
    for test in ["set", "get", "mget"] {
        let out = run(Command::new(tool("memcslap")).args([
            &target,
            "--binary",
            "--verbose",
            &format!("--test={test}"),
            "--concurrency=2",
            "--execute-number=200",
        ]));
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(text.contains(&format!("Time to {test}")), "{text}");
        assert!(
            !text.contains(" keys by ") || !text.contains(" 0 keys by "),
            "{text}"
        );
        let lower = text.to_lowercase();
        assert!(
            !lower.contains("error") && !lower.contains("fail"),
            "{text}"
        );
    }
    let stats = proxy_stats(&mut proxy.client());
    let hits: u64 = stat(&stats, "get_hits").parse().expect("get_hits");
    let misses: u64 = stat(&stats, "get_misses").parse().expect("get_misses");
    assert!(hits >= 400, "get_hits {hits}");
    assert_eq!(misses, 0, "memcslap's gets missed keys it had set");
}

const PYLIBMC_SCRIPT: &str = r#"
import sys
import pylibmc
c = pylibmc.Client(["127.0.0.1:%s" % sys.argv[1]], binary=True, behaviors={"cas": True})
c.set("pl:a", "alpha")
assert c.get("pl:a") == "alpha", c.get("pl:a")
assert c.get("pl:missing") is None
c.set_multi({"pl:m%d" % i: i for i in range(100)})
got = c.get_multi(["pl:m%d" % i for i in range(100)] + ["pl:nope"])
assert got == {"pl:m%d" % i: i for i in range(100)}, got
assert c.add("pl:a", "x") is False
assert c.add("pl:b", "beta") is True
assert c.replace("pl:b", "BETA") is True
try:
    c.replace("pl:none", "x")
    raise SystemExit("replace of a missing key did not fail")
except pylibmc.NotFound:
    pass
assert c.append("pl:b", "!") is True
assert c.prepend("pl:b", "<") is True
assert c.get("pl:b") == "<BETA!", c.get("pl:b")
c.set("pl:n", 10)
assert c.incr("pl:n", 5) == 15
assert c.decr("pl:n", 20) == 0
try:
    c.incr("pl:nocounter")
    raise SystemExit("incr on a missing key did not fail")
except pylibmc.NotFound:
    pass
v, cas = c.gets("pl:a")
assert v == "alpha"
assert c.cas("pl:a", "alpha2", cas) is True
assert c.cas("pl:a", "alpha3", cas) is False
assert c.get("pl:a") == "alpha2"
assert c.touch("pl:a", 100) is True
assert c.touch("pl:none", 100) is False
assert c.delete("pl:a") is True
assert c.delete("pl:a") is False
assert c.get("pl:a") is None
c.delete_multi(["pl:m%d" % i for i in range(50)])
assert len(c.get_multi(["pl:m%d" % i for i in range(100)])) == 50
print("pylibmc ok")
"#;

/// The Debian package's interpreter, where python3-pylibmc installs.
fn system_python() -> &'static str {
    if Path::new("/usr/bin/python3").exists() {
        "/usr/bin/python3"
    } else {
        "python3"
    }
}

/// pylibmc with `binary=True` over every verb, first against memcached
/// itself (so the script states memcached's behaviour), then through memring.
#[test]
fn pylibmc_binary_speaks_every_verb() {
    let direct = Memcached::start();
    let (_servers, proxy) = magent_seed_cluster();
    let probe = Command::new(system_python())
        .args(["-c", "import pylibmc"])
        .output()
        .expect("python3");
    assert!(
        probe.status.success(),
        "pylibmc missing: apt-get install -y python3-pylibmc ({})",
        String::from_utf8_lossy(&probe.stderr)
    );
    for port in [direct.port(), proxy.addr().port()] {
        let out =
            run(Command::new(system_python()).args(["-c", PYLIBMC_SCRIPT, &port.to_string()]));
        assert_eq!(String::from_utf8_lossy(&out.stdout), "pylibmc ok\n");
    }
}

/// Keys written by a binary client survive the loss of every primary:
/// readable through memring by binary and by text clients, counters and
/// appends included.
#[test]
fn failover_serves_binary_written_keys_to_binary_and_text_clients() {
    let (mut servers, proxy) = magent_seed_cluster();
    let mut c = proxy.client();
    let keys: Vec<String> = (0..200).map(|i| format!("fo:{i}")).collect();
    let mut writes: Vec<Vec<u8>> = keys
        .iter()
        .enumerate()
        .map(|(i, k)| {
            frame(
                Opcode::Set,
                i as u32,
                0,
                &set_extras(i as u32, 0),
                k.as_bytes(),
                b"v",
            )
        })
        .collect();
    writes.extend(
        keys.iter()
            .map(|k| frame(Opcode::AppendQ, 0, 0, b"", k.as_bytes(), b"+")),
    );
    writes.extend((0..20).map(|i| {
        frame(
            Opcode::IncrementQ,
            0,
            0,
            &incr_extras(3, 100, 0),
            format!("fo:n{i}").as_bytes(),
            b"",
        )
    }));
    writes.extend((0..20).map(|i| {
        frame(
            Opcode::IncrementQ,
            0,
            0,
            &incr_extras(3, 100, 0),
            format!("fo:n{i}").as_bytes(),
            b"",
        )
    }));
    let r = exchange(&mut c, &writes);
    assert_eq!(r.len(), 200, "only the loud sets answer");
    assert!(r.iter().all(|f| status(f) == 0));
    for s in servers.iter_mut().take(3) {
        s.kill();
    }
    let mut b = proxy.client();
    let gets: Vec<Vec<u8>> = keys
        .iter()
        .enumerate()
        .map(|(i, k)| frame(Opcode::GetK, i as u32, 0, b"", k.as_bytes(), b""))
        .collect();
    let r = exchange(&mut b, &gets);
    assert_eq!(r.len(), 200);
    for (i, f) in r.iter().enumerate() {
        assert_eq!(
            (status(f), opaque(f), value(f)),
            (0, i as u32, &b"v+"[..]),
            "{}",
            keys[i]
        );
        assert_eq!(&f[HEADER_LEN..HEADER_LEN + 4], &(i as u32).to_be_bytes());
    }
    let counters: Vec<Vec<u8>> = (0..20)
        .map(|i| frame(Opcode::Get, i, 0, b"", format!("fo:n{i}").as_bytes(), b""))
        .collect();
    for f in exchange(&mut b, &counters) {
        assert_eq!((status(&f), value(&f)), (0, &b"103"[..]));
    }
    let mut t = proxy.client();
    for (i, k) in keys.iter().enumerate() {
        let reply = t.request(format!("get {k}\r\n").as_bytes());
        assert_eq!(reply, value_reply(k, i as u32, b"v+"), "text get {k}");
    }
    for i in 0..20 {
        let k = format!("fo:n{i}");
        assert_eq!(
            t.request(format!("get {k}\r\n").as_bytes()),
            value_reply(&k, 0, b"103")
        );
    }
}

/// A primary that lost items (flushed on rejoin, or evicted) while its backup
/// kept them: binary add, replace, append, prepend and incr act on the kept
/// item, exactly as their text forms do, instead of on the gap.
#[test]
fn binary_writes_recover_items_the_primary_lost() {
    let (servers, proxy) = magent_seed_cluster();
    let mut c = proxy.client();
    let keys: Vec<String> = ["add", "rep", "app", "pre", "cnt"]
        .iter()
        .map(|k| format!("lost:{k}"))
        .collect();
    let sets: Vec<Vec<u8>> = keys
        .iter()
        .map(|k| {
            let v: &[u8] = if k.ends_with("cnt") { b"40" } else { b"kept" };
            frame(Opcode::SetQ, 0, 0, &set_extras(3, 0), k.as_bytes(), v)
        })
        .collect();
    assert!(exchange(&mut c, &sets).is_empty());
    // Every primary forgets the keys; the backups keep them.
    let primaries: Vec<&Memcached> = servers[..3].iter().collect();
    let owners = key_owners(&primaries, &keys);
    for (k, o) in keys.iter().zip(&owners) {
        let o = o.unwrap_or_else(|| panic!("no primary holds {k}"));
        assert_eq!(
            servers[o]
                .client()
                .request(format!("delete {k}\r\n").as_bytes()),
            b"DELETED\r\n"
        );
    }
    let r = exchange(
        &mut c,
        &[
            frame(
                Opcode::Add,
                1,
                0,
                &set_extras(0, 0),
                keys[0].as_bytes(),
                b"new",
            ),
            frame(
                Opcode::Replace,
                2,
                0,
                &set_extras(4, 0),
                keys[1].as_bytes(),
                b"replaced",
            ),
            frame(Opcode::Append, 3, 0, b"", keys[2].as_bytes(), b"+"),
            frame(Opcode::Prepend, 4, 0, b"", keys[3].as_bytes(), b"-"),
            frame(
                Opcode::Increment,
                5,
                0,
                &incr_extras(2, 0, 0),
                keys[4].as_bytes(),
                b"",
            ),
        ],
    );
    let got: Vec<(u32, u16)> = r.iter().map(|f| (opaque(f), status(f))).collect();
    assert_eq!(got, vec![(1, 0x02), (2, 0), (3, 0), (4, 0), (5, 0)]);
    assert_eq!(value(&r[4]), &42u64.to_be_bytes());
    let mut t = proxy.client();
    for (k, want) in keys.iter().zip([
        value_reply(&keys[0], 3, b"kept"),
        value_reply(&keys[1], 4, b"replaced"),
        value_reply(&keys[2], 3, b"kept+"),
        value_reply(&keys[3], 3, b"-kept"),
        value_reply(&keys[4], 3, b"42"),
    ]) {
        assert_eq!(
            show(&t.request(format!("get {k}\r\n").as_bytes())),
            show(&want),
            "{k}"
        );
    }
}

const PYLIBMC_ANY_BYTES: &str = r#"
import sys
import pylibmc
c = pylibmc.Client(["127.0.0.1:%s" % sys.argv[1]], binary=True)
keys = [b"\x00\x01", "a key with a replacement character \ufffd and spaces".encode(), b"tab\there", b"nl\r\n"]
for i, k in enumerate(keys):
    assert c.set(k, "value-%d" % i), k
    assert c.get(k) == "value-%d" % i, (k, c.get(k))
assert c.get_multi(keys) == {k: "value-%d" % i for i, k in enumerate(keys)}
assert c.add(keys[0], "x") is False
assert c.append(keys[1], "+") is True
assert c.get(keys[1]) == "value-1+"
c.set(keys[2], 10)
assert c.incr(keys[2], 5) == 15
assert c.delete(keys[3]) is True
assert c.get(keys[3]) is None
print("any bytes ok")
"#;

/// The value memcached holds under the decoded `key`, asked with a meta
/// base64 key; None on a miss.
fn meta_b64_get(c: &mut Client, key: &[u8]) -> Option<Vec<u8>> {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(key);
    let reply = c.request(format!("mg {b64} b v\r\n").as_bytes());
    if reply == b"EN\r\n" {
        return None;
    }
    let text = String::from_utf8_lossy(&reply).into_owned();
    let (line, rest) = text
        .split_once("\r\n")
        .unwrap_or_else(|| panic!("mg reply {text:?}"));
    assert!(line.starts_with("VA "), "mg reply {text:?}");
    Some(rest.trim_end_matches("\r\n").as_bytes().to_vec())
}

/// Keys of any bytes from a binary client (pylibmc's own test keys among
/// them): stored through memring in the 3+2 deployment, readable back,
/// held by exactly one primary and one backup (asked directly with meta
/// base64 keys), placed by their bytes, so a meta client with `b` reads
/// them through memring too, and a text key written as base64 lands where
/// its text form is read.
#[test]
fn binary_keys_of_any_bytes_reach_one_primary_and_its_backup() {
    let (servers, proxy) = magent_seed_cluster();
    let out = run(Command::new(system_python()).args([
        "-c",
        PYLIBMC_ANY_BYTES,
        &proxy.addr().port().to_string(),
    ]));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "any bytes ok\n");
    let expected: [(&[u8], Option<&[u8]>); 4] = [
        (b"\x00\x01", Some(b"value-0")),
        (
            "a key with a replacement character \u{fffd} and spaces".as_bytes(),
            Some(b"value-1+"),
        ),
        (b"tab\there", Some(b"15")),
        (b"nl\r\n", None),
    ];
    let mut through = proxy.client();
    for (key, want) in expected {
        let holders: Vec<usize> = servers
            .iter()
            .enumerate()
            .filter(|(_, s)| meta_b64_get(&mut s.client(), key).is_some())
            .map(|(i, _)| i)
            .collect();
        let Some(want) = want else {
            assert!(holders.is_empty(), "{key:?} deleted, still on {holders:?}");
            continue;
        };
        assert_eq!(holders.len(), 2, "{key:?} on servers {holders:?}");
        assert!(
            holders[0] < 3 && holders[1] >= 3,
            "{key:?}: one primary, one backup: {holders:?}"
        );
        for &i in &holders {
            assert_eq!(
                meta_b64_get(&mut servers[i].client(), key).as_deref(),
                Some(want),
                "{key:?} on server {i}"
            );
        }
        assert_eq!(
            meta_b64_get(&mut through, key).as_deref(),
            Some(want),
            "{key:?} via memring"
        );
    }
    // Placed by the decoded bytes: `ms <base64 of plain> b` and `get plain`
    // meet on one server.
    assert_eq!(
        through.request(b"ms cGxhaW4tYjY0 2 b\r\nhi\r\n"),
        b"HD\r\n".to_vec()
    );
    assert_eq!(
        through.request(b"get plain-b64\r\n"),
        b"VALUE plain-b64 0 2\r\nhi\r\nEND\r\n".to_vec()
    );
}
