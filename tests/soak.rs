//! Soak: memcached servers flap (kill -9 and restart empty on the same port,
//! or SIGSTOP/SIGCONT) one at a time while client threads write and read
//! through memring; afterwards a checker replays every key's history.
//!
//! Duration: `MEMRING_SOAK_SECS` (default 45).
//!
//! # What the checker allows
//! Each client thread owns its keys, so each key's operations form one
//! sequence. For a key with primary P and backup B, let W be its last
//! acknowledged write (`STORED`, `DELETED`, `NOT_FOUND` for a delete) and E
//! the writes that got an error after W.
//! - A read returns W's value, or a value of a write in E. Anything else (an
//!   older value: stale; a value never written: phantom) is a violation.
//! - A read misses when W is a delete (or E holds one). Otherwise a miss is
//!   allowed only if *both* copies may be gone: a copy on server R may be
//!   gone if R was out during W (a flap of R, or an ejection or suspicion
//!   of R seen in `stats`, overlaps W), or R was wiped between W and the read (killed and
//!   restarted empty, or flushed or drained by memring on rejoin, as counted
//!   by its `server_<i>:flushes` and `:drains`: a drain deletes the keys the
//!   server missed and may delete one written again while it drained). Flaps never overlap (the next starts only when
//!   `stats` shows every server `up`), so this happens only when P and B
//!   were wiped one after the other: memring does not copy data back onto
//!   a server that rejoined empty (only reads repair the primary).
//! - An error (`SERVER_ERROR`) is allowed only if both P and B were out
//!   during the request.
//! - Every request is answered within `BOUND`.

// Tests and benchmarks keep time themselves (clippy.toml holds the library).
#![allow(clippy::disallowed_methods)]

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::*;

/// Client threads; each owns `KEYS_PER_THREAD` keys.
const THREADS: usize = 4;
const KEYS_PER_THREAD: usize = 40;
/// Keys per multi-get.
const MULTI: usize = 8;
/// Every request is answered within this (the request timeout is 300ms).
const BOUND: Duration = Duration::from_secs(5);
/// How long the servers may take to be all `up` again after a flap.
const REJOIN: Duration = Duration::from_secs(30);
/// Upper bound on the number of flaps, whatever the duration.
const MAX_FLAPS: usize = 1000;

const PRIMARIES: usize = 3;
const SERVERS: usize = 6;

fn key_name(k: usize) -> String {
    format!("soak:t{}:k{}", k / KEYS_PER_THREAD, k % KEYS_PER_THREAD)
}

/// A small deterministic generator (xorshift64*).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// What a read saw.
#[derive(Clone, Debug)]
enum Got {
    Value(String),
    Miss,
    /// `SERVER_ERROR ...`
    Error(String),
    /// Anything else (I/O error, unexpected reply): always a violation.
    Bad(String),
}

/// What a write was told.
#[derive(Clone, Debug)]
enum Told {
    Acked,
    Error(String),
    Bad(String),
}

#[derive(Clone, Debug)]
enum Rec {
    /// `value` None: a delete.
    Write {
        key: usize,
        value: Option<String>,
        send: Instant,
        done: Instant,
        told: Told,
    },
    Read {
        key: usize,
        send: Instant,
        done: Instant,
        got: Got,
    },
}

impl Rec {
    fn key(&self) -> usize {
        match self {
            Rec::Write { key, .. } | Rec::Read { key, .. } => *key,
        }
    }
}

/// A client that reconnects after an I/O error.
struct Conn {
    addr: std::net::SocketAddr,
    c: Option<Client>,
}

impl Conn {
    fn request(&mut self, cmd: &[u8]) -> Result<Vec<u8>, String> {
        if self.c.is_none() {
            self.c = Some(Client::try_tcp(self.addr).map_err(|e| format!("connect: {e}"))?);
        }
        let r = self.c.as_mut().map(|c| c.try_request(cmd));
        match r {
            Some(Ok(reply)) => Ok(reply),
            Some(Err(e)) => {
                self.c = None;
                Err(format!("io: {e}"))
            }
            None => Err("no connection".into()),
        }
    }
}

fn do_write(conn: &mut Conn, key: usize, value: Option<String>) -> Rec {
    let name = key_name(key);
    let cmd = match &value {
        Some(v) => set_cmd(&name, v.as_bytes()),
        None => format!("delete {name}\r\n").into_bytes(),
    };
    let send = Instant::now();
    let r = conn.request(&cmd);
    let done = Instant::now();
    let told = match r {
        Ok(reply) => {
            let ok: &[&[u8]] = if value.is_some() {
                &[b"STORED\r\n"]
            } else {
                &[b"DELETED\r\n", b"NOT_FOUND\r\n"]
            };
            if ok.contains(&&reply[..]) {
                Told::Acked
            } else if reply.starts_with(b"SERVER_ERROR ") {
                Told::Error(String::from_utf8_lossy(&reply).trim_end().to_string())
            } else {
                Told::Bad(show(&reply))
            }
        }
        Err(e) => Told::Bad(e),
    };
    Rec::Write {
        key,
        value,
        send,
        done,
        told,
    }
}

fn do_read(conn: &mut Conn, keys: &[usize], out: &mut Vec<Rec>) {
    let names: Vec<String> = keys.iter().map(|k| key_name(*k)).collect();
    let cmd = format!("get {}\r\n", names.join(" "));
    let send = Instant::now();
    let r = conn.request(cmd.as_bytes());
    let done = Instant::now();
    let per_key: Vec<Got> = match r {
        Err(e) => vec![Got::Bad(e); keys.len()],
        Ok(reply) if reply.starts_with(b"SERVER_ERROR ") => {
            let why = String::from_utf8_lossy(&reply).trim_end().to_string();
            vec![Got::Error(why); keys.len()]
        }
        Ok(reply) => match parse_values(&reply) {
            Err(e) => vec![Got::Bad(e); keys.len()],
            Ok(items) => {
                let found: HashMap<String, String> = items
                    .into_iter()
                    .map(|(k, _, d)| (k, String::from_utf8_lossy(&d).into_owned()))
                    .collect();
                names
                    .iter()
                    .map(|n| match found.get(n) {
                        Some(v) => Got::Value(v.clone()),
                        None => Got::Miss,
                    })
                    .collect()
            }
        },
    };
    for (key, got) in keys.iter().zip(per_key) {
        out.push(Rec::Read {
            key: *key,
            send,
            done,
            got,
        });
    }
}

/// One client thread: random sets, deletes, gets and multi-gets on its own keys.
fn client_loop(addr: std::net::SocketAddr, t: usize, stop: Arc<AtomicBool>) -> Vec<Rec> {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ ((t as u64 + 1) << 17));
    let mut conn = Conn { addr, c: None };
    let mut log = Vec::new();
    let base = t * KEYS_PER_THREAD;
    let mut seq = 0u64;
    // Bounded by the stop flag, which the flapper sets at its deadline, and
    // by a hard cap on operations.
    for _ in 0..50_000_000u64 {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let key = base + rng.below(KEYS_PER_THREAD as u64) as usize;
        match rng.below(100) {
            0..=29 => {
                seq += 1;
                log.push(do_write(&mut conn, key, Some(format!("t{t}s{seq}"))));
            }
            30..=34 => log.push(do_write(&mut conn, key, None)),
            35..=79 => do_read(&mut conn, &[key], &mut log),
            _ => {
                let mut keys: Vec<usize> = (0..MULTI)
                    .map(|_| base + rng.below(KEYS_PER_THREAD as u64) as usize)
                    .collect();
                keys.sort_unstable();
                keys.dedup();
                do_read(&mut conn, &keys, &mut log);
            }
        }
    }
    log
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum FlapKind {
    Kill,
    Stop,
}

/// A `stats` snapshot: when it was asked and answered, and the per-server
/// counters (indexed like the servers vector: primaries, then backups).
struct Poll {
    sent: Instant,
    done: Instant,
    ejections: Vec<u64>,
    suspects: Vec<u64>,
    flushes: Vec<u64>,
    drains: Vec<u64>,
}

fn poll(c: &mut Client, servers: &[Memcached]) -> (Poll, Vec<(String, String)>) {
    let sent = Instant::now();
    let s = wait_all_up(c, REJOIN);
    let done = Instant::now();
    let field = |f: &str| -> Vec<u64> {
        servers
            .iter()
            .enumerate()
            .map(|(i, m)| {
                let role = if i < PRIMARIES { "primary" } else { "backup" };
                server_stat(&s, m, role, f).parse().unwrap()
            })
            .collect()
    };
    let p = Poll {
        sent,
        done,
        ejections: field("ejections"),
        suspects: field("suspects"),
        flushes: field("flushes"),
        drains: field("drains"),
    };
    (p, s)
}

/// Time intervals per server.
#[derive(Default, Clone)]
struct Windows(Vec<Vec<(Instant, Instant)>>);

impl Windows {
    fn new() -> Windows {
        Windows(vec![Vec::new(); SERVERS])
    }

    fn add(&mut self, server: usize, from: Instant, to: Instant) {
        self.0[server].push((from, to));
    }

    /// Some interval of `server` meets [from, to].
    fn meets(&self, server: usize, from: Instant, to: Instant) -> bool {
        self.0[server].iter().any(|(a, b)| *a <= to && *b >= from)
    }
}

#[derive(Default)]
struct Verdicts {
    violations: Vec<String>,
    allowed_errors: usize,
    allowed_losses: usize,
    lost_keys: std::collections::BTreeSet<String>,
    reads: usize,
    writes: usize,
    hits: usize,
    misses: usize,
}

/// Replay every key's history (see the module docs for the rules).
fn check(
    log: &[Rec],
    replicas: &[(usize, usize)],
    out: &Windows,
    wiped: &Windows,
    v: &mut Verdicts,
) {
    let mut by_key: HashMap<usize, Vec<&Rec>> = HashMap::new();
    for r in log {
        by_key.entry(r.key()).or_default().push(r);
    }
    for (key, recs) in by_key {
        let name = key_name(key);
        let (p, b) = replicas[key];
        // The last acknowledged write: (value, send, done).
        let mut acked: Option<(Option<String>, Instant, Instant)> = None;
        let mut errored: Vec<Option<String>> = Vec::new();
        let both_out = |s: Instant, d: Instant| out.meets(p, s, d) && out.meets(b, s, d);
        for r in recs {
            let (send, done) = match r {
                Rec::Write { send, done, .. } | Rec::Read { send, done, .. } => (*send, *done),
            };
            if done.duration_since(send) > BOUND {
                v.violations.push(format!(
                    "{name}: answered after {:?} (bound {BOUND:?}): {r:?}",
                    done.duration_since(send)
                ));
            }
            match r {
                Rec::Write { value, told, .. } => {
                    v.writes += 1;
                    match told {
                        Told::Acked => {
                            acked = Some((value.clone(), send, done));
                            errored.clear();
                        }
                        Told::Error(e) => {
                            if both_out(send, done) {
                                v.allowed_errors += 1;
                            } else {
                                v.violations.push(format!(
                                    "{name}: write {value:?} got {e:?} while a replica was up"
                                ));
                            }
                            errored.push(value.clone());
                        }
                        Told::Bad(e) => {
                            v.violations
                                .push(format!("{name}: write {value:?} got {e}"));
                            errored.push(value.clone());
                        }
                    }
                }
                Rec::Read { got, .. } => {
                    v.reads += 1;
                    let Some((want, w_send, w_done)) = &acked else {
                        v.violations
                            .push(format!("{name}: read before any acknowledged write"));
                        continue;
                    };
                    match got {
                        Got::Value(x) => {
                            v.hits += 1;
                            let ok = want.as_deref() == Some(x.as_str())
                                || errored.iter().any(|e| e.as_deref() == Some(x.as_str()));
                            if !ok {
                                v.violations.push(format!(
                                    "{name}: read {x:?}, last acknowledged {want:?} \
                                     (unacknowledged since: {errored:?}): STALE"
                                ));
                            }
                        }
                        Got::Miss => {
                            v.misses += 1;
                            if want.is_none() || errored.iter().any(|e| e.is_none()) {
                                continue;
                            }
                            let gone = |r: usize| {
                                out.meets(r, *w_send, *w_done) || wiped.meets(r, *w_send, done)
                            };
                            if gone(p) && gone(b) {
                                v.allowed_losses += 1;
                                v.lost_keys.insert(name.clone());
                            } else {
                                v.violations.push(format!(
                                    "{name}: MISS, last acknowledged {want:?} \
                                     (primary {p} and backup {b}: gone {} / {})",
                                    gone(p),
                                    gone(b)
                                ));
                            }
                        }
                        Got::Error(e) => {
                            if both_out(send, done) {
                                v.allowed_errors += 1;
                            } else {
                                v.violations
                                    .push(format!("{name}: read got {e:?} while a replica was up"));
                            }
                        }
                        Got::Bad(e) => v.violations.push(format!("{name}: read got {e}")),
                    }
                }
            }
        }
    }
}

fn soak_secs() -> u64 {
    std::env::var("MEMRING_SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(45)
        .clamp(1, 24 * 3600)
}

#[test]
fn flapping_servers_never_serve_stale_values() {
    let secs = soak_secs();
    let mut servers = Memcached::cluster(SERVERS, "1m");
    let (prim, back) = servers.split_at(PRIMARIES);
    let proxy = start_with_backups(
        &prim.iter().collect::<Vec<_>>(),
        &back.iter().collect::<Vec<_>>(),
        &FAST_FAILOVER,
    );
    let n_keys = THREADS * KEYS_PER_THREAD;
    let names: Vec<String> = (0..n_keys).map(key_name).collect();

    // Every key starts with an acknowledged value on both replicas.
    let mut log: Vec<Rec> = Vec::new();
    let mut conn = Conn {
        addr: proxy.addr(),
        c: None,
    };
    for k in 0..n_keys {
        let r = do_write(&mut conn, k, Some(format!("init{k}")));
        assert!(
            matches!(
                r,
                Rec::Write {
                    told: Told::Acked,
                    ..
                }
            ),
            "{r:?}"
        );
        log.push(r);
    }
    let p_own = key_owners(&prim.iter().collect::<Vec<_>>(), &names);
    let b_own = key_owners(&back.iter().collect::<Vec<_>>(), &names);
    let replicas: Vec<(usize, usize)> = (0..n_keys)
        .map(|k| {
            let p = p_own[k].unwrap_or_else(|| panic!("{} on no primary", names[k]));
            let b = b_own[k].unwrap_or_else(|| panic!("{} on no backup", names[k]));
            (p, PRIMARIES + b)
        })
        .collect();

    let stop = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = (0..THREADS)
        .map(|t| {
            let stop = stop.clone();
            let addr = proxy.addr();
            thread::spawn(move || client_loop(addr, t, stop))
        })
        .collect();

    // The flapper: one server at a time, each flap ends when stats shows
    // every server up again.
    let mut sc = proxy.client();
    let mut out = Windows::new();
    let mut wiped = Windows::new();
    let mut flaps: Vec<(usize, FlapKind, Duration)> = Vec::new();
    let mut spurious = 0usize;
    let mut rng = Rng(0xD1B5_4A32_D192_ED03);
    let order = [0, 3, 1, 4, 2, 5];
    let start = Instant::now();
    let deadline = start + Duration::from_secs(secs);
    let (mut prev, _) = poll(&mut sc, &servers);
    let first_stats = proxy_stats(&mut sc);
    let mut note_poll = |prev: &Poll,
                         now: &Poll,
                         flapped: Option<usize>,
                         out: &mut Windows,
                         wiped: &mut Windows| {
        for s in 0..SERVERS {
            // A drain deletes the keys the server missed, and may delete a
            // key written again while it drained (a miss, never a stale
            // value): for the checker it wipes like a flush.
            if now.flushes[s] > prev.flushes[s] || now.drains[s] > prev.drains[s] {
                wiped.add(s, prev.sent, now.done);
            }
            // A suspect server is out like an ejected one until it rejoins.
            let taken_out =
                now.ejections[s] > prev.ejections[s] || now.suspects[s] > prev.suspects[s];
            if taken_out && Some(s) != flapped {
                out.add(s, prev.sent, now.done);
                spurious += 1;
            }
        }
    };
    for i in 0..MAX_FLAPS {
        if Instant::now() >= deadline {
            break;
        }
        let s = order[i % order.len()];
        let kind = if (i + i / order.len()) % 2 == 0 {
            FlapKind::Kill
        } else {
            FlapKind::Stop
        };
        // The fault lasts this long (fault injection, not synchronisation).
        let hold = Duration::from_millis(match kind {
            FlapKind::Kill => 200 + rng.below(600),
            FlapKind::Stop => 500 + rng.below(700),
        });
        let (before, _) = poll(&mut sc, &servers);
        note_poll(&prev, &before, None, &mut out, &mut wiped);
        let t0 = Instant::now();
        match kind {
            FlapKind::Kill => {
                wiped.add(s, t0, t0);
                servers[s].kill();
            }
            FlapKind::Stop => servers[s].stop(),
        }
        thread::sleep(hold);
        match kind {
            FlapKind::Kill => servers[s].restart(),
            FlapKind::Stop => servers[s].cont(),
        }
        let (after, _) = poll(&mut sc, &servers);
        out.add(s, t0, after.done);
        note_poll(&before, &after, Some(s), &mut out, &mut wiped);
        flaps.push((s, kind, after.done.duration_since(t0)));
        prev = after;
        // Normal operation between faults.
        thread::sleep(Duration::from_millis(200));
    }
    let (last, _) = poll(&mut sc, &servers);
    note_poll(&prev, &last, None, &mut out, &mut wiped);
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        log.extend(w.join().expect("client thread panicked"));
    }
    // A last read of every key, everything up.
    let mut tail = Vec::new();
    for k in 0..n_keys {
        do_read(&mut conn, &[k], &mut tail);
    }
    log.extend(tail);
    let final_stats = proxy_stats(&mut sc);

    let mut v = Verdicts::default();
    check(&log, &replicas, &out, &wiped, &mut v);

    let errors = log
        .iter()
        .filter(|r| {
            matches!(
                r,
                Rec::Read {
                    got: Got::Error(_) | Got::Bad(_),
                    ..
                } | Rec::Write {
                    told: Told::Error(_) | Told::Bad(_),
                    ..
                }
            )
        })
        .count();
    let kills = flaps.iter().filter(|f| f.1 == FlapKind::Kill).count();
    let slowest_rejoin = flaps.iter().map(|f| f.2).max().unwrap_or_default();
    let delta = |name: &str| stat_u64(&final_stats, name) - stat_u64(&first_stats, name);
    println!("soak summary ({secs}s, {:?} elapsed):", start.elapsed());
    println!(
        "  ops: {} writes, {} key reads ({} hits, {} misses)",
        v.writes, v.reads, v.hits, v.misses
    );
    println!(
        "  errors: {errors} ({} allowed: both replicas out); violations: {}",
        v.allowed_errors,
        v.violations.len()
    );
    println!(
        "  flaps: {} ({kills} kill -9 + restart, {} SIGSTOP/SIGCONT), slowest back-to-all-up {slowest_rejoin:?}; \
         ejections or suspicions not caused by a flap: {spurious}",
        flaps.len(),
        flaps.len() - kills
    );
    println!(
        "  memring: proxy_failovers {}, proxy_read_through_hits {}",
        delta("proxy_failovers"),
        delta("proxy_read_through_hits"),
    );
    println!(
        "  allowed losses (both replicas wiped one after the other): {} reads of {} keys",
        v.allowed_losses,
        v.lost_keys.len()
    );
    for (i, s) in servers.iter().enumerate() {
        let role = if i < PRIMARIES { "primary" } else { "backup" };
        println!(
            "  server {i} {role} {}: ejections {} (last {}), suspects {} (cleared {}), flushes {}, drains {}, drained keys {}, failovers {}",
            s.server_arg(),
            server_stat(&final_stats, s, role, "ejections"),
            server_stat(&final_stats, s, role, "last_ejection"),
            server_stat(&final_stats, s, role, "suspects"),
            server_stat(&final_stats, s, role, "suspects_cleared"),
            server_stat(&final_stats, s, role, "flushes"),
            server_stat(&final_stats, s, role, "drains"),
            server_stat(&final_stats, s, role, "drained_keys"),
            server_stat(&final_stats, s, role, "failovers"),
        );
    }
    assert!(!flaps.is_empty(), "no flap happened");
    assert!(
        v.violations.is_empty(),
        "{} violations, first ones:\n  {}",
        v.violations.len(),
        v.violations
            .iter()
            .take(30)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n  ")
    );
}

/// The checker itself: it flags a stale value, an unexplained miss and an
/// error while a replica was up, and allows a miss after both replicas
/// were wiped.
#[test]
fn checker_flags_stale_values_and_unexplained_misses() {
    let t = Instant::now();
    let at = |ms: u64| t + Duration::from_millis(ms);
    let w = |key, v: &str, s, d| Rec::Write {
        key,
        value: Some(v.to_string()),
        send: at(s),
        done: at(d),
        told: Told::Acked,
    };
    let r = |key, got: Got, s| Rec::Read {
        key,
        send: at(s),
        done: at(s + 1),
        got,
    };
    let replicas = vec![(0, 3), (1, 4)];
    let log = vec![
        w(0, "a", 0, 1),
        w(0, "b", 2, 3),
        r(0, Got::Value("b".into()), 4),
        r(0, Got::Value("a".into()), 5),
        r(0, Got::Miss, 6),
        r(0, Got::Error("SERVER_ERROR no server available".into()), 7),
        w(1, "x", 0, 1),
        r(1, Got::Miss, 50),
    ];
    let out = Windows::new();
    let mut wiped = Windows::new();
    wiped.add(1, at(10), at(10));
    wiped.add(4, at(20), at(30));
    let mut v = Verdicts::default();
    check(&log, &replicas, &out, &wiped, &mut v);
    assert_eq!(v.violations.len(), 3, "{:?}", v.violations);
    assert!(v.violations[0].contains("STALE"), "{:?}", v.violations);
    assert!(v.violations[1].contains("MISS"), "{:?}", v.violations);
    assert!(
        v.violations[2].contains("replica was up"),
        "{:?}",
        v.violations
    );
    assert_eq!((v.allowed_losses, v.allowed_errors), (1, 0));
}
