//! Warm rejoin (issue 9): a primary that missed writes loses only those
//! keys, not its whole cache, and a primary that is merely slow is not
//! ejected at all. Real memcached servers behind the real memring binary;
//! the faults are SIGSTOP/SIGCONT of one primary, a reply held past the
//! request timeout by a shim, and refused connections, under a read+write
//! load.
//!
//! Each load thread owns the keys `i` with `i % LOAD_THREADS == t`, so every
//! key's acknowledged writes form one sequence and its expected value is the
//! last one acknowledged: any other value read is a stale read.

// Tests and benchmarks keep time themselves (clippy.toml holds the library).
#![allow(clippy::disallowed_methods)]

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::*;

/// The request timeout of the scenario; the primary is frozen 1.5x as long.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(1);
const REJOIN: Duration = Duration::from_secs(60);
/// Enough threads that both of memring's cores have a request stuck on the
/// frozen primary.
const LOAD_THREADS: usize = 4;

fn key(i: usize) -> String {
    format!("warm:{i}")
}

fn value(i: usize, gen: u32) -> Vec<u8> {
    format!("v{i}-g{gen}-{}", "x".repeat(20 + i % 31)).into_bytes()
}

fn refs(v: &[Memcached]) -> Vec<&Memcached> {
    v.iter().collect()
}

fn proxy(prim: &[Memcached], back: &[Memcached], extra: &[&str]) -> Memring {
    let timeout = format!("{}ms", REQUEST_TIMEOUT.as_millis());
    let mut flags = vec![
        "--request-timeout",
        timeout.as_str(),
        "--connect-timeout",
        "300ms",
        "--retry-interval",
        "100ms",
    ];
    flags.extend_from_slice(extra);
    start_with_backups(&refs(prim), &refs(back), &flags)
}

fn preload(c: &mut Client, n: usize) {
    let all: Vec<usize> = (0..n).collect();
    for chunk in all.chunks(100) {
        let cmds: Vec<Vec<u8>> = chunk
            .iter()
            .map(|&i| set_cmd(&key(i), &value(i, 0)))
            .collect();
        for (reply, &i) in c.pipeline(&cmds).iter().zip(chunk) {
            assert_bytes(reply, b"STORED\r\n", &format!("preload {}", key(i)));
        }
    }
}

fn curr_items(m: &Memcached) -> u64 {
    let s = parse_stats(&m.client().request(b"stats\r\n"));
    stat(&s, "curr_items").parse().expect("curr_items")
}

fn u(s: &[(String, String)], m: &Memcached, role: &str, f: &str) -> u64 {
    server_stat(s, m, role, f)
        .parse()
        .unwrap_or_else(|_| panic!("server stat {f} is not a number: {s:?}"))
}

/// Wait until `m` is up again after having been cleaned (drained or flushed).
fn wait_rejoined(c: &mut Client, m: &Memcached) -> Vec<(String, String)> {
    let mut last = Vec::new();
    let got = wait_for(REJOIN, || {
        let s = proxy_stats(c);
        let ok = server_stat(&s, m, "primary", "state") == "up"
            && u(&s, m, "primary", "drains") + u(&s, m, "primary", "flushes") >= 1;
        last = s.clone();
        ok.then_some(s)
    });
    got.unwrap_or_else(|| panic!("primary did not rejoin within {REJOIN:?}: {last:?}"))
}

/// What a load thread saw.
#[derive(Default)]
struct Seen {
    writes: u64,
    reads: u64,
    errors: Vec<String>,
    stale: Vec<String>,
    misses: u64,
    slowest: Duration,
    /// Last acknowledged generation per key it owns.
    want: HashMap<usize, u32>,
}

/// Read and write this thread's keys until `stop`: as many `set`s as
/// `get`s, paced so that the load is steady rather than maximal.
fn load(addr: SocketAddr, t: usize, n: usize, stop: Arc<AtomicBool>) -> Seen {
    let mut c = Client::tcp(addr);
    let mut seen = Seen::default();
    let mine: Vec<usize> = (t..n).step_by(LOAD_THREADS).collect();
    let mut rng = 0x9E37_79B9_7F4A_7C15u64 ^ (t as u64 + 1);
    let mut gen = 0u32;
    // Bounded by `stop`, which the test sets after the rejoin (or on failure
    // of the rejoin wait, which panics after REJOIN).
    while !stop.load(Ordering::Relaxed) {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let i = mine[(rng % mine.len() as u64) as usize];
        let k = key(i);
        let t0 = Instant::now();
        if rng & 1 == 0 {
            gen += 1;
            let reply = c.request(&set_cmd(&k, &value(i, gen)));
            if reply == b"STORED\r\n" {
                seen.want.insert(i, gen);
            } else {
                seen.errors.push(format!("set {k}: {}", show(&reply)));
            }
            seen.writes += 1;
        } else {
            let reply = c.request(format!("get {k}\r\n").as_bytes());
            let expected = value(i, seen.want.get(&i).copied().unwrap_or(0));
            match parse_values(&reply) {
                Ok(items) => match items.first() {
                    Some((_, _, d)) if *d == expected => {}
                    Some((_, _, d)) => {
                        seen.stale
                            .push(format!("{k}: got {} want {}", show(d), show(&expected)))
                    }
                    None => seen.misses += 1,
                },
                Err(e) => seen.errors.push(format!("get {k}: {e}")),
            }
            seen.reads += 1;
        }
        seen.slowest = seen.slowest.max(t0.elapsed());
        // Pacing of the load (not synchronisation).
        thread::sleep(Duration::from_millis(2));
    }
    seen
}

/// Expected value of every key after the load.
fn expected(n: usize, seen: &[Seen]) -> Vec<Vec<u8>> {
    (0..n)
        .map(|i| value(i, seen[i % LOAD_THREADS].want.get(&i).copied().unwrap_or(0)))
        .collect()
}

/// Read every key (multi-gets of 100) through `c`: (misses, stale reads).
fn read_all(c: &mut Client, want: &[Vec<u8>], what: &str) -> (usize, Vec<String>) {
    let mut misses = 0;
    let mut stale = Vec::new();
    let all: Vec<usize> = (0..want.len()).collect();
    for chunk in all.chunks(100) {
        let cmd = format!(
            "get {}\r\n",
            chunk.iter().map(|&i| key(i)).collect::<Vec<_>>().join(" ")
        );
        let reply = c.request(cmd.as_bytes());
        let got: HashMap<String, Vec<u8>> = parse_values(&reply)
            .unwrap_or_else(|e| panic!("{what}: multi-get: {e}"))
            .into_iter()
            .map(|(k, _, d)| (k, d))
            .collect();
        for &i in chunk {
            match got.get(&key(i)) {
                None => misses += 1,
                Some(d) if *d == want[i] => {}
                Some(d) => stale.push(format!("{}: got {}", key(i), show(d))),
            }
        }
    }
    (misses, stale)
}

/// Run the load (keys `0..n`) on `proxy` around `fault`, which gets a
/// client for `stats` and returns once the fault is over; returns the load
/// threads' observations and what `fault` returned. The load threads are
/// stopped and joined even if `fault` panics.
fn under_load<T>(
    proxy: &Memring,
    n: usize,
    fault: impl FnOnce(&mut Client) -> T,
) -> (Vec<Seen>, T) {
    let stop = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = (0..LOAD_THREADS)
        .map(|t| {
            let (addr, stop) = (proxy.addr(), stop.clone());
            thread::spawn(move || load(addr, t, n, stop))
        })
        .collect();
    let mut c = proxy.client();
    // Let the load run before and after the fault (fault timing, not sync).
    thread::sleep(Duration::from_millis(500));
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| fault(&mut c)));
    thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    let seen: Vec<Seen> = workers
        .into_iter()
        .map(|w| w.join().expect("load thread panicked"))
        .collect();
    let got = outcome.unwrap_or_else(|e| std::panic::resume_unwind(e));
    (seen, got)
}

/// Run the load around a SIGSTOP of `prim[0]` for 1.5x the request timeout;
/// returns the load threads' observations and the proxy stats after the
/// rejoin.
fn freeze_under_load(
    proxy: &Memring,
    prim: &[Memcached],
    n: usize,
    missed_enough: impl Fn(&[(String, String)]) -> bool,
) -> (Vec<Seen>, Vec<(String, String)>) {
    under_load(proxy, n, |c| {
        prim[0].stop();
        thread::sleep(REQUEST_TIMEOUT.mul_f64(1.5));
        // On a busy machine the primary can be taken out later than 1.5
        // request timeouts, and the load can be slow to miss writes: stay
        // frozen until the proxy has taken it out and it missed what the
        // scenario needs ("missed writes, then back"), bounded.
        let out = wait_for(Duration::from_secs(30), || {
            let s = proxy_stats(c);
            (server_stat(&s, &prim[0], "primary", "state") != "up" && missed_enough(&s))
                .then_some(())
        });
        prim[0].cont();
        assert!(out.is_some(), "the frozen primary was never taken out");
        wait_rejoined(c, &prim[0])
    })
}

/// Nothing stale on `primary` itself, and through the proxy every key reads
/// its last acknowledged value (the backup holds every key: no miss).
fn assert_every_key_current(c: &mut Client, primary: &Memcached, want: &[Vec<u8>], when: &str) {
    assert_no_stale_on(primary, want);
    let (misses, stale) = read_all(c, want, when);
    assert!(stale.is_empty(), "stale reads {when}: {stale:?}");
    assert_eq!(misses, 0, "{when}: the backup holds every key");
}

fn assert_clean_load(seen: &[Seen]) {
    let errors: Vec<&String> = seen.iter().flat_map(|s| &s.errors).collect();
    let stale: Vec<&String> = seen.iter().flat_map(|s| &s.stale).collect();
    assert!(
        errors.is_empty(),
        "{} client errors: {:?}",
        errors.len(),
        &errors[..errors.len().min(20)]
    );
    assert!(
        stale.is_empty(),
        "{} stale reads under load: {:?}",
        stale.len(),
        &stale[..stale.len().min(20)]
    );
}

/// Every value `m` holds for a key is the expected one.
fn assert_no_stale_on(m: &Memcached, want: &[Vec<u8>]) -> usize {
    let mut c = m.client();
    let (misses, stale) = read_all(&mut c, want, "direct read of the frozen primary");
    assert!(
        stale.is_empty(),
        "the frozen primary holds {} stale values: {:?}",
        stale.len(),
        &stale[..stale.len().min(20)]
    );
    want.len() - misses
}

/// The scenario: the frozen primary keeps its cache (>= 90 % of its
/// items), clients see no error and no stale value, and once both backups
/// are gone at most 1 % of the preloaded keys miss.
#[test]
fn frozen_primary_keeps_its_cache_and_serves_nothing_stale() {
    const N: usize = 30_000;
    let prim = Memcached::cluster(3, "1m");
    let mut back = Memcached::cluster(2, "1m");
    let proxy = proxy(&prim, &back, &[]);
    let mut c = proxy.client();
    preload(&mut c, N);
    let before = curr_items(&prim[0]);
    assert!(
        before > N as u64 / 5,
        "primary 0 holds only {before} of {N}"
    );

    let (seen, stats) = freeze_under_load(&proxy, &prim, N, |_| true);
    assert_clean_load(&seen);
    let after = curr_items(&prim[0]);
    let want = expected(N, &seen);
    let held = assert_no_stale_on(&prim[0], &want);

    let s = |f: &str| u(&stats, &prim[0], "primary", f);
    let writes: u64 = seen.iter().map(|s| s.writes).sum();
    let reads: u64 = seen.iter().map(|s| s.reads).sum();
    let misses: u64 = seen.iter().map(|s| s.misses).sum();
    let slowest = seen.iter().map(|s| s.slowest).max().unwrap_or_default();
    println!(
        "warm rejoin: primary 0 items {before} -> {after} ({:.1} %), holds {held} current \
         values; suspects {} (cleared {}), ejections {}, last ejection {}, keys logged {}, \
         drains {}, drained keys {}, flushes {}, last rejoin {}; load {writes} writes, \
         {reads} reads, {misses} misses, slowest request {slowest:?}",
        100.0 * after as f64 / before as f64,
        s("suspects"),
        s("suspects_cleared"),
        s("ejections"),
        server_stat(&stats, &prim[0], "primary", "last_ejection"),
        s("keys_logged"),
        s("drains"),
        s("drained_keys"),
        s("flushes"),
        server_stat(&stats, &prim[0], "primary", "last_rejoin"),
    );
    // A freeze of 1.5 request timeouts is usually shorter than the request
    // timeout plus the probe's: the primary is suspect, answers its probe
    // and is not ejected; on a slow machine the probe may time out first.
    // Either way it was out of service and missed writes.
    assert!(
        s("ejections") + s("suspects") >= 1,
        "the freeze did not take the primary out: {stats:?}"
    );
    assert_eq!(s("flushes"), 0, "the primary was flushed: {stats:?}");
    assert!(
        after * 10 >= before * 9,
        "primary 0 kept {after} of {before} items (< 90 %): {stats:?}"
    );
    assert_eq!(
        misses, 0,
        "keys missed under load although a replica held them"
    );

    // Both backups die: the primaries alone must still hold the cache.
    for b in back.iter_mut() {
        b.kill();
    }
    let (lost, stale) = read_all(&mut c, &want, "after both backups died");
    println!(
        "warm rejoin: both backups killed: {lost} of {N} keys miss ({:.2} %), {} stale",
        100.0 * lost as f64 / N as f64,
        stale.len()
    );
    assert!(
        stale.is_empty(),
        "{} stale reads: {:?}",
        stale.len(),
        &stale[..stale.len().min(20)]
    );
    assert!(
        lost * 100 <= N,
        "{lost} of {N} keys miss with both backups dead (more than 1 %)"
    );
}

/// A missed-key log too small for the outage overflows: the rejoin falls
/// back to `flush_all`, and still nothing stale is ever read.
#[test]
fn overflowed_log_falls_back_to_flush_without_stale_reads() {
    const N: usize = 3_000;
    let prim = Memcached::cluster(3, "1m");
    let back = Memcached::cluster(2, "1m");
    // 256 bytes: four keys of this test.
    let proxy = proxy(&prim, &back, &["--missed-keys-limit", "256"]);
    let mut c = proxy.client();
    preload(&mut c, N);

    // Frozen until its missed-key log overflowed (more than four keys).
    let overflowed = |s: &[(String, String)]| {
        server_stat(s, &prim[0], "primary", "missed_keys_overflowed") == "1"
    };
    let (seen, stats) = freeze_under_load(&proxy, &prim, N, overflowed);
    assert_clean_load(&seen);
    let s = |f: &str| u(&stats, &prim[0], "primary", f);
    println!(
        "overflow: keys logged {}, flushes {}, drains {}, last rejoin {}",
        s("keys_logged"),
        s("flushes"),
        s("drains"),
        server_stat(&stats, &prim[0], "primary", "last_rejoin"),
    );
    assert!(s("flushes") >= 1, "no flush after an overflow: {stats:?}");
    assert_eq!(
        server_stat(&stats, &prim[0], "primary", "last_rejoin"),
        "flush",
        "{stats:?}"
    );
    let want = expected(N, &seen);
    assert_no_stale_on(&prim[0], &want);
    let (misses, stale) = read_all(&mut c, &want, "after the flush");
    assert!(
        stale.is_empty(),
        "{} stale reads after the flush: {:?}",
        stale.len(),
        &stale[..stale.len().min(20)]
    );
    assert_eq!(misses, 0, "the backups hold every key: none may miss");
}

/// `server_<i>:<field>` of the server configured as `addr`, as a number.
fn num(s: &[(String, String)], addr: &str, role: &str, f: &str) -> u64 {
    server_stat_at(s, addr, role, f)
        .parse()
        .unwrap_or_else(|_| panic!("server stat {f} is not a number: {s:?}"))
}

/// The reasons `stats` gives for `addr`'s ejections and suspicions.
fn reasons(s: &[(String, String)], addr: &str, role: &str) -> String {
    let fields = [
        "ejections",
        "ejections_connect",
        "ejections_timeout",
        "ejections_closed",
        "ejections_protocol",
        "ejections_drain_failed",
        "last_ejection",
        "suspects",
        "suspects_timeout",
        "suspects_missed_write",
        "suspects_cleared",
        "last_suspect",
        "keys_logged",
        "drained_keys",
    ];
    fields
        .iter()
        .map(|f| format!("{f} {}", server_stat_at(s, addr, role, f)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `-s <primary> -b <backup>` with the scenario's timeouts and `extra`.
/// One primary and its backup behind memring with `timeout`, `n` keys
/// preloaded: the primary (as a one-server cluster), the backup, the
/// primary's `-s` argument, the proxy and a client of it.
fn preloaded_pair(
    n: usize,
    timeout: Duration,
) -> (Vec<Memcached>, Memcached, String, Memring, Client) {
    let prim = Memcached::cluster(1, "1m");
    let back = Memcached::start();
    let p = prim[0].server_arg();
    let proxy = pair(&p, &back, timeout, &[]);
    let mut c = proxy.client();
    preload(&mut c, n);
    (prim, back, p, proxy, c)
}

fn pair(primary: &str, backup: &Memcached, timeout: Duration, extra: &[&str]) -> Memring {
    let timeout = format!("{}ms", timeout.as_millis());
    let mut args: Vec<String> = ["-D", "--bind", "127.0.0.1:0", "-s", primary, "-b"]
        .map(String::from)
        .to_vec();
    args.push(backup.server_arg());
    for a in [
        "--request-timeout",
        timeout.as_str(),
        "--connect-timeout",
        "300ms",
        "--retry-interval",
        "100ms",
    ]
    .iter()
    .chain(extra)
    {
        args.push(a.to_string());
    }
    Memring::start(&args)
}

/// Wait until `cond` holds on `stats`.
fn wait_primary(
    c: &mut Client,
    what: &str,
    cond: impl Fn(&[(String, String)]) -> bool,
) -> Vec<(String, String)> {
    let mut last = Vec::new();
    wait_for(REJOIN, || {
        let s = proxy_stats(c);
        let ok = cond(&s);
        last = s.clone();
        ok.then_some(s)
    })
    .unwrap_or_else(|| panic!("{what}: not within {REJOIN:?}: {last:?}"))
}

/// Slow is not dead: one reply held past the request timeout by a shim in
/// front of the primary makes it suspect, even with `--failure-limit 1`
/// (one stuck connection is enough to take it out of reads); its probe is
/// answered at once, so it drains the keys it missed meanwhile and comes
/// back without an ejection. Clients see no error and no stale value, and
/// the primary holds nothing stale.
#[test]
fn a_reply_held_past_the_timeout_makes_the_primary_suspect_not_ejected() {
    const N: usize = 2_000;
    let timeout = Duration::from_millis(300);
    let mc = Memcached::start();
    let shim = FaultServer::slow(mc.addr(), Duration::ZERO);
    let back = Memcached::start();
    let p = shim.server_arg();
    let proxy = pair(&p, &back, timeout, &["--failure-limit", "1"]);
    let mut c = proxy.client();
    preload(&mut c, N);

    let (seen, stats) = under_load(&proxy, N, |c| {
        // Held for more than three request timeouts (the fault, not sync).
        shim.hold_next(timeout * 3 + Duration::from_millis(100));
        wait_primary(c, "suspected, then back up", |s| {
            server_stat_at(s, &p, "primary", "state") == "up"
                && num(s, &p, "primary", "suspects_cleared") >= 1
        })
    });
    assert!(shim.hold_taken(), "no reply was held");
    let r = |f: &str| num(&stats, &p, "primary", f);
    let misses: u64 = seen.iter().map(|s| s.misses).sum();
    let writes: u64 = seen.iter().map(|s| s.writes).sum();
    println!(
        "held reply: {}; load {writes} writes, {misses} misses",
        reasons(&stats, &p, "primary")
    );
    assert_clean_load(&seen);
    assert_eq!(r("ejections"), 0, "a slow reply ejected: {stats:?}");
    assert!(
        r("suspects") >= 1 && r("suspects_timeout") >= 1,
        "{stats:?}"
    );
    assert_eq!(
        server_stat_at(&stats, &p, "primary", "last_ejection"),
        "none"
    );
    // The stuck connection made it suspect; a write decided while it was
    // out and answered just after its drain may make it suspect once more
    // (README: "logged once the server is up"), which is no ejection either.
    let last = server_stat_at(&stats, &p, "primary", "last_suspect");
    assert!(
        last == "timeout" || last == "missed_write",
        "last suspicion {last}: {stats:?}"
    );
    assert_eq!(misses, 0, "the backup held every key the drain deleted");
    let want = expected(N, &seen);
    assert_no_stale_on(&mc, &want);
    let (_, stale) = read_all(&mut c, &want, "after the suspicion");
    assert!(stale.is_empty(), "stale reads: {stale:?}");
}

/// A freeze shorter than the request timeout plus the probe's (the
/// primary is thawed as soon as the proxy has taken it out): it was
/// suspect, its probe is answered, it drains what it missed and comes back
/// without an ejection.
#[test]
fn a_short_freeze_is_a_suspicion_not_an_ejection() {
    const N: usize = 2_000;
    // The probe waits one request timeout for `version`: ample time to
    // thaw the primary once it is seen out.
    let (prim, _back, p, proxy, mut c) = preloaded_pair(N, REQUEST_TIMEOUT);

    let (seen, stats) = under_load(&proxy, N, |c| {
        prim[0].stop();
        let out = wait_for(Duration::from_secs(30), || {
            let s = proxy_stats(c);
            (server_stat_at(&s, &p, "primary", "state") != "up").then_some(())
        });
        prim[0].cont();
        assert!(out.is_some(), "the frozen primary was never taken out");
        wait_primary(c, "back up after the freeze", |s| {
            server_stat_at(s, &p, "primary", "state") == "up"
                && num(s, &p, "primary", "suspects_cleared") >= 1
        })
    });
    let r = |f: &str| num(&stats, &p, "primary", f);
    println!("short freeze: {}", reasons(&stats, &p, "primary"));
    assert_clean_load(&seen);
    assert_eq!(r("ejections"), 0, "a short freeze ejected: {stats:?}");
    assert!(r("suspects") >= 1, "{stats:?}");
    assert_every_key_current(
        &mut c,
        &prim[0],
        &expected(N, &seen),
        "after the short freeze",
    );
}

/// A freeze that outlasts the probe: the stuck primary turns suspect, its
/// probe times out, and that ejects it for `timeout`. After the thaw it
/// drains what it missed; nothing stale is read.
#[test]
fn a_long_freeze_is_ejected_for_timeout_once_its_probe_fails() {
    const N: usize = 2_000;
    let (prim, _back, p, proxy, mut c) = preloaded_pair(N, Duration::from_millis(300));

    let (seen, stats) = under_load(&proxy, N, |c| {
        prim[0].stop();
        // Frozen until the proxy has ejected it (bounded).
        let ejected = wait_for(Duration::from_secs(30), || {
            let s = proxy_stats(c);
            (num(&s, &p, "primary", "ejections") >= 1).then_some(())
        });
        prim[0].cont();
        assert!(ejected.is_some(), "the frozen primary was never ejected");
        wait_primary(c, "back up after the thaw", |s| {
            server_stat_at(s, &p, "primary", "state") == "up"
                && num(s, &p, "primary", "drains") + num(s, &p, "primary", "flushes") >= 1
        })
    });
    let r = |f: &str| num(&stats, &p, "primary", f);
    println!("long freeze: {}", reasons(&stats, &p, "primary"));
    assert_clean_load(&seen);
    assert_eq!(
        server_stat_at(&stats, &p, "primary", "last_ejection"),
        "timeout",
        "{stats:?}"
    );
    assert!(r("ejections_timeout") >= 1, "{stats:?}");
    assert_eq!(r("ejections"), r("ejections_timeout"), "{stats:?}");
    assert!(r("suspects") >= 1, "it was suspect before its probe failed");
    assert_every_key_current(
        &mut c,
        &prim[0],
        &expected(N, &seen),
        "after the long freeze",
    );
}

/// Refused connections are a real failure: the primary is ejected for
/// `connect` directly, without a suspicion; clients are served by the
/// backup, and after a restart the primary drains what it missed. (A write
/// missed before the failure limit is reached would make it suspect first;
/// its probe, refused too, would then eject it for `connect` all the same.
/// Reads alone show the direct path.)
#[test]
fn refused_connections_eject_for_connect_without_a_suspicion() {
    const N: usize = 200;
    let mut prim = Memcached::cluster(1, "1m");
    let back = Memcached::start();
    let p = prim[0].server_arg();
    let proxy = pair(&p, &back, Duration::from_millis(300), &[]);
    let mut c = proxy.client();
    let mut want: Vec<Vec<u8>> = (0..N).map(|i| value(i, 0)).collect();
    // Loaded on the backup directly: memring never connects to the primary
    // before it is killed, so every connect is refused (no connection of its
    // is closed under requests).
    preload(&mut back.client(), N);
    prim[0].kill();
    let mut i = 0usize;
    let ejected = wait_for(Duration::from_secs(30), || {
        let k = i % N;
        i += 1;
        let reply = c.request(format!("get {}\r\n", key(k)).as_bytes());
        assert_bytes(
            &reply,
            &value_reply(&key(k), 0, &want[k]),
            "get while refused",
        );
        let s = proxy_stats(&mut c);
        (num(&s, &p, "primary", "ejections") >= 1).then_some(s)
    });
    let stats = ejected.expect("refused connections did not eject");
    println!("refused: {}", reasons(&stats, &p, "primary"));
    assert_eq!(
        server_stat_at(&stats, &p, "primary", "last_ejection"),
        "connect",
        "{stats:?}"
    );
    assert_eq!(num(&stats, &p, "primary", "ejections_connect"), 1);
    assert_eq!(num(&stats, &p, "primary", "suspects"), 0, "{stats:?}");
    // Every key written while it is out.
    for (k, v) in want.iter_mut().enumerate() {
        *v = value(k, 2);
        let reply = c.request(&set_cmd(&key(k), v));
        assert_bytes(&reply, b"STORED\r\n", &format!("set {}", key(k)));
    }
    prim[0].restart();
    wait_primary(&mut c, "back up after the restart", |s| {
        server_stat_at(s, &p, "primary", "state") == "up" && num(s, &p, "primary", "drains") >= 1
    });
    let (misses, stale) = read_all(&mut c, &want, "after the restart");
    assert!(stale.is_empty(), "stale reads: {stale:?}");
    assert_eq!(misses, 0, "the backup holds every key");
}
