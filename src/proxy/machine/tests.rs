//! The machines against a fake world: a table of server health and a driver
//! that feeds scripted outcomes and records every effect. No sockets.

use std::collections::BTreeMap;
use std::time::Instant;

use bytes::Bytes;

use super::*;
use crate::metrics::ReadThrough;
use crate::protocol::{frame_response, parse_request, Framed, Parsed};
use crate::upstream::{Health, HealthPolicy};

/// Server ids used throughout: primaries 0 and 1, backups 2 and 3.
const P0: ServerId = ServerId(0);
const P1: ServerId = ServerId(1);
const B2: ServerId = ServerId(2);
const B3: ServerId = ServerId(3);
const ALL: [ServerId; 4] = [P0, P1, B2, B3];
/// A server an earlier placement put keys on (a migration window's old
/// owner), not one of the live replicas of any key here.
const E4: ServerId = ServerId(4);
/// Another one, of an older placement still.
const E5: ServerId = ServerId(5);

/// How a hedge timer shows among the requests in flight.
const HEDGE_TIMER: &str = "hedge timer";

/// A fixed clock for TTL conversion.
const NOW: i64 = 1_700_000_000;

/// Key `a` (and `c`) live on 0 with backup 2; `b` (and `d`) on 1 with backup 3.
const RA: Replicas = Replicas {
    primary: P0,
    backup: Some(B2),
};
const RB: Replicas = Replicas {
    primary: P1,
    backup: Some(B3),
};

/// Health of every server: real [`Health`] records, taken down by failures.
struct World {
    health: Vec<Health>,
    /// A migration window's earlier owners, by key.
    earlier: BTreeMap<&'static str, Vec<u32>>,
    /// Reads may be hedged.
    hedge: bool,
}

impl World {
    fn new() -> World {
        let t0 = Instant::now();
        World {
            health: (0..6).map(|_| Health::new(t0)).collect(),
            earlier: BTreeMap::new(),
            hedge: false,
        }
    }

    /// With hedging on (or off).
    fn hedging(mut self, on: bool) -> World {
        self.hedge = on;
        self
    }

    /// With a migration window open in which `key` lived on `owners`
    /// (newest first).
    fn moved(mut self, key: &'static str, owners: &[ServerId]) -> World {
        let ids = owners.iter().map(|s| s.0).collect();
        self.earlier.insert(key, ids);
        self
    }

    /// With these servers out of service.
    fn down(servers: &[ServerId]) -> World {
        let w = World::new();
        let policy = HealthPolicy::default();
        for s in servers {
            let h = &w.health[s.index()];
            for _ in 0..policy.failure_limit {
                h.record_failure(Instant::now(), &policy, crate::upstream::Ejection::Timeout);
            }
            assert!(!h.is_up());
        }
        w
    }
}

impl View for World {
    fn observe(&self, s: ServerId) -> Observed {
        self.health[s.index()].observe()
    }

    fn now_unix(&self) -> i64 {
        NOW
    }

    fn hedging(&self) -> bool {
        self.hedge
    }

    fn earlier_owners(&self, key: &[u8], _base64: bool, rep: Replicas) -> Owners {
        let ids = std::str::from_utf8(key)
            .ok()
            .and_then(|k| self.earlier.get(k))
            .map(Vec::as_slice)
            .unwrap_or_default();
        let others: Vec<u32> = ids
            .iter()
            .copied()
            .filter(|&id| id != rep.primary.0 && Some(id) != rep.backup.map(|b| b.0))
            .collect();
        Owners::from_ids(&others)
    }
}

/// Parse one whole client request.
fn req(text: &str) -> ClientRequest {
    let bytes = Bytes::copy_from_slice(text.as_bytes());
    let mut keys = Vec::new();
    match parse_request(&bytes, 1 << 20, &mut keys) {
        Parsed::Complete(r) => {
            assert_eq!(r.consumed, bytes.len(), "one whole request: {text:?}");
            ClientRequest {
                r,
                bytes,
                keys: Keys::take(&mut keys),
            }
        }
        other => panic!("{text:?} does not parse: {other:?}"),
    }
}

/// Frame `text` as the reply to a request that expects `expect`.
fn reply(expect: Expect, text: &[u8]) -> Reply {
    let mut items = Vec::new();
    match frame_response(expect, text, usize::MAX, &mut items) {
        Ok(Framed::Complete {
            len,
            status,
            line,
            data,
        }) => {
            assert_eq!(len, text.len(), "one whole reply: {text:?}");
            Reply {
                frame: Bytes::copy_from_slice(text),
                status,
                line,
                data,
            }
        }
        other => panic!("{:?} is no {expect:?} reply: {other:?}", text),
    }
}

/// One upstream request a machine sent and has no outcome for yet.
#[derive(Debug, Clone)]
struct Sent {
    call: CallId,
    server: ServerId,
    bytes: Vec<u8>,
    expect: Expect,
    /// A wait for an exclusive section, not a request.
    section: bool,
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Drives one machine and records what it did.
struct Run<'w> {
    world: &'w World,
    m: Machine,
    pending: Vec<Sent>,
    answers: Vec<Answer>,
    counts: BTreeMap<&'static str, u64>,
    failovers: Vec<ServerId>,
    missed: Vec<(ServerId, String)>,
    spawned: Vec<Machine>,
    /// Read-through results, in order.
    read_through: Vec<ReadThrough>,
    /// Every request sent, in order: (server, bytes).
    history: Vec<(ServerId, String)>,
    /// Keys whose exclusive section was asked for, in order.
    sections: Vec<String>,
    /// Hedges asked for, by late primary (the budget allows them unless
    /// `refuse_hedges`).
    hedged: Vec<ServerId>,
    refuse_hedges: bool,
    /// Hedges the backup won, by late primary.
    won: Vec<ServerId>,
    /// Holds of the client (true) and releases (false), in order.
    holds: Vec<bool>,
}

impl<'w> Run<'w> {
    fn start(world: &'w World, text: &str, replicas: &[Replicas]) -> Run<'w> {
        let mut fx = Vec::new();
        let m = Machine::start(req(text), replicas, &ALL, world, &mut fx);
        let mut run = Run::empty(world, m);
        run.absorb(fx);
        run
    }

    fn adopt(world: &'w World, mut m: Machine) -> Run<'w> {
        let mut fx = Vec::new();
        m.begin(world, &mut fx);
        let mut run = Run::empty(world, m);
        run.absorb(fx);
        run
    }

    fn empty(world: &'w World, m: Machine) -> Run<'w> {
        Run {
            world,
            m,
            pending: Vec::new(),
            answers: Vec::new(),
            counts: BTreeMap::new(),
            failovers: Vec::new(),
            missed: Vec::new(),
            spawned: Vec::new(),
            read_through: Vec::new(),
            history: Vec::new(),
            sections: Vec::new(),
            hedged: Vec::new(),
            refuse_hedges: false,
            won: Vec::new(),
            holds: Vec::new(),
        }
    }

    fn absorb(&mut self, fx: Vec<Effect>) {
        for e in fx {
            match e {
                Effect::Send {
                    call,
                    server,
                    parts,
                    expect,
                } => {
                    assert!(
                        !self.pending.iter().any(|s| s.call == call),
                        "call id {call} reused while in flight"
                    );
                    let bytes = [parts[0].as_ref(), parts[1].as_ref()].concat();
                    self.history.push((server, text(&bytes)));
                    self.pending.push(Sent {
                        call,
                        server,
                        bytes,
                        expect,
                        section: false,
                    });
                }
                Effect::Answer(a) => self.answers.push(a),
                Effect::Count(c, n) => *self.counts.entry(c.wire_name()).or_default() += n,
                Effect::Failover { failed } => self.failovers.push(failed),
                Effect::MissedWrite { server, seen, key } => {
                    assert_eq!(seen, self.world.observe(server), "seen is that server's");
                    self.missed.push((server, text(&key)));
                }
                Effect::Spawn(m) => self.spawned.push(*m),
                Effect::ReadThrough(t) => self.read_through.push(t),
                // A timer waits in flight as the request "hedge timer" to
                // its primary, until the test fires it.
                Effect::Hedge(Hedge::Timer { call, primary }) => self.pending.push(Sent {
                    call,
                    server: primary,
                    bytes: HEDGE_TIMER.as_bytes().to_vec(),
                    expect: Expect::Line,
                    section: false,
                }),
                Effect::Hedge(Hedge::Send {
                    call,
                    backup,
                    primary,
                    parts,
                    expect,
                }) => {
                    self.hedged.push(primary);
                    if self.refuse_hedges {
                        self.feed(call, Err(CallError::no_call(backup, expect)));
                    } else {
                        self.absorb(vec![Effect::Send {
                            call,
                            server: backup,
                            parts,
                            expect,
                        }]);
                    }
                }
                Effect::Hedge(Hedge::Won { primary }) => self.won.push(primary),
                Effect::HoldClient(h) => self.holds.push(h),
                // Nobody else holds the section here: granted at once.
                Effect::Exclusive { call, key } => {
                    self.sections.push(text(&key));
                    self.feed(call, Ok(Reply::grant()));
                }
            }
        }
    }

    /// The pending requests, as (server, bytes), in the order sent.
    fn pending(&self) -> Vec<(ServerId, String)> {
        self.pending
            .iter()
            .map(|s| (s.server, text(&s.bytes)))
            .collect()
    }

    /// Assert that exactly these requests are in flight.
    fn expect_pending(&self, want: &[(ServerId, &str)]) {
        let want: Vec<(ServerId, String)> = want.iter().map(|(s, t)| (*s, t.to_string())).collect();
        assert_eq!(self.pending(), want, "requests in flight");
    }

    fn take(&mut self, server: ServerId, bytes: &str) -> Sent {
        let Some(i) = self
            .pending
            .iter()
            .position(|s| s.server == server && s.bytes == bytes.as_bytes())
        else {
            panic!(
                "no {bytes:?} in flight to {server:?}; in flight: {:?}",
                self.pending()
            )
        };
        self.pending.remove(i)
    }

    /// The server answers the request `bytes` it got with `answer`.
    fn reply(&mut self, server: ServerId, bytes: &str, answer: &str) {
        let s = self.take(server, bytes);
        let r = reply(s.expect, answer.as_bytes());
        self.feed(s.call, Ok(r));
    }

    /// The request `bytes` to `server` fails with `e`.
    fn fail(&mut self, server: ServerId, bytes: &str, kind: Failure) {
        let s = self.take(server, bytes);
        self.feed(s.call, Err(CallError::new(server, s.expect, kind)));
    }

    fn feed(&mut self, call: CallId, r: Result<Reply, CallError>) {
        assert!(!self.m.is_done(), "outcome fed to a finished machine");
        let mut fx = Vec::new();
        self.m.on_outcome(call, r, self.world, &mut fx);
        self.absorb(fx);
    }

    /// The one answer, as the client would read it (`None` for Nothing).
    fn answer(&self) -> Option<String> {
        assert_eq!(
            self.answers.len(),
            1,
            "exactly one answer: {:?}",
            self.answers
        );
        match &self.answers[0] {
            Answer::Nothing => None,
            a => Some(text(&a.to_vec())),
        }
    }

    fn counts(&self) -> Vec<(&'static str, u64)> {
        self.counts.iter().map(|(k, v)| (*k, *v)).collect()
    }

    /// Finished, with nothing in flight and one answer.
    fn assert_done(&self) {
        // Hedge timers of a finished machine are dropped unfired.
        assert!(
            self.pending
                .iter()
                .all(|s| s.bytes == HEDGE_TIMER.as_bytes()),
            "still in flight: {:?}",
            self.pending()
        );
        assert!(self.m.is_done(), "machine not done");
        assert_eq!(self.answers.len(), 1, "answers: {:?}", self.answers);
    }

    fn missed(&self) -> Vec<(ServerId, &str)> {
        self.missed.iter().map(|(s, k)| (*s, k.as_str())).collect()
    }
}

// ---- get / gets / gat / gats: one key ----

#[test]
fn get_hit_on_the_primary() {
    let w = World::new();
    let mut r = Run::start(&w, "get a\r\n", &[RA]);
    r.expect_pending(&[(P0, "get a\r\n")]);
    assert!(r.answers.is_empty());
    r.reply(P0, "get a\r\n", "VALUE a 0 1\r\nx\r\nEND\r\n");
    r.assert_done();
    assert_eq!(r.answer().as_deref(), Some("VALUE a 0 1\r\nx\r\nEND\r\n"));
    assert_eq!(r.counts(), [("cmd_get", 1), ("get_hits", 1)]);
    assert!(r.failovers.is_empty() && r.missed.is_empty() && r.spawned.is_empty());
}

#[test]
fn get_miss_on_the_primary_without_a_backup_in_service() {
    for (w, reps) in [
        (World::down(&[B2]), RA),
        (
            World::new(),
            Replicas {
                primary: P0,
                backup: None,
            },
        ),
    ] {
        let mut r = Run::start(&w, "get a\r\n", &[reps]);
        r.reply(P0, "get a\r\n", "END\r\n");
        r.assert_done();
        assert_eq!(r.answer().as_deref(), Some("END\r\n"));
        assert_eq!(r.counts(), [("cmd_get", 1), ("get_misses", 1)]);
        assert_eq!(r.history.len(), 1, "no read-through: {:?}", r.history);
    }
}

#[test]
fn get_miss_read_through_misses_too() {
    let w = World::new();
    let mut r = Run::start(&w, "get a\r\n", &[RA]);
    r.reply(P0, "get a\r\n", "END\r\n");
    r.expect_pending(&[(B2, "mg a v f t c\r\n")]);
    assert!(r.answers.is_empty(), "the answer waits for the backup");
    r.reply(B2, "mg a v f t c\r\n", "EN\r\n");
    r.assert_done();
    assert_eq!(r.answer().as_deref(), Some("END\r\n"));
    assert_eq!(r.counts(), [("cmd_get", 1), ("get_misses", 1)]);
    assert!(r.spawned.is_empty());
    assert_eq!(r.read_through, [ReadThrough::Miss]);
}

#[test]
fn get_read_through_failure_is_a_miss() {
    let w = World::new();
    let mut r = Run::start(&w, "get a\r\n", &[RA]);
    r.reply(P0, "get a\r\n", "END\r\n");
    r.fail(B2, "mg a v f t c\r\n", Failure::Timeout);
    r.assert_done();
    assert_eq!(r.answer().as_deref(), Some("END\r\n"));
    assert_eq!(r.counts(), [("cmd_get", 1), ("get_misses", 1)]);
    assert!(r.failovers.is_empty());
    assert_eq!(r.read_through, [ReadThrough::Error]);
}

#[test]
fn primary_down_get_goes_to_the_backup() {
    let w = World::down(&[P0]);
    let mut r = Run::start(&w, "get a\r\n", &[RA]);
    r.expect_pending(&[(B2, "get a\r\n")]);
    r.reply(B2, "get a\r\n", "VALUE a 0 1\r\nx\r\nEND\r\n");
    r.assert_done();
    assert_eq!(r.answer().as_deref(), Some("VALUE a 0 1\r\nx\r\nEND\r\n"));
    assert_eq!(r.failovers, [P0]);
    assert_eq!(r.counts(), [("cmd_get", 1), ("get_hits", 1)]);
}

#[test]
fn primary_error_get_fails_over_and_a_backup_miss_is_a_miss() {
    let w = World::new();
    let mut r = Run::start(&w, "gets a\r\n", &[RA]);
    r.fail(P0, "gets a\r\n", Failure::Closed);
    r.expect_pending(&[(B2, "gets a\r\n")]);
    r.reply(B2, "gets a\r\n", "END\r\n");
    r.assert_done();
    assert_eq!(r.answer().as_deref(), Some("END\r\n"));
    assert_eq!(r.failovers, [P0]);
    assert_eq!(r.counts(), [("cmd_get", 1), ("get_misses", 1)]);
}

#[test]
fn a_server_error_reply_is_passed_on_and_counted() {
    let w = World::new();
    let mut r = Run::start(&w, "get a\r\n", &[RA]);
    r.reply(P0, "get a\r\n", "SERVER_ERROR out of memory\r\n");
    r.assert_done();
    assert_eq!(
        r.answer().as_deref(),
        Some("SERVER_ERROR out of memory\r\n")
    );
    assert_eq!(r.counts(), [("cmd_get", 1), ("proxy_server_errors", 1)]);
}

#[test]
fn both_replicas_down_get_is_a_server_error() {
    let w = World::down(&[P0, B2]);
    let r = Run::start(&w, "get a\r\n", &[RA]);
    r.assert_done();
    assert!(r.history.is_empty());
    assert_eq!(
        r.answer().as_deref(),
        Some("SERVER_ERROR no server available\r\n")
    );
    assert_eq!(r.counts(), [("cmd_get", 1), ("proxy_server_errors", 1)]);
    assert!(r.failovers.is_empty());

    // The primary's timeout names the failure even when the backup then fails differently.
    let w = World::new();
    let mut r = Run::start(&w, "get a\r\n", &[RA]);
    r.fail(P0, "get a\r\n", Failure::Timeout);
    r.fail(B2, "get a\r\n", Failure::Closed);
    r.assert_done();
    assert_eq!(
        r.answer().as_deref(),
        Some("SERVER_ERROR backend timeout\r\n")
    );
    assert_eq!(r.counts(), [("cmd_get", 1), ("proxy_server_errors", 1)]);

    // Primary down, no backup configured.
    let w = World::down(&[P0]);
    let r = Run::start(
        &w,
        "get a\r\n",
        &[Replicas {
            primary: P0,
            backup: None,
        }],
    );
    r.assert_done();
    assert_eq!(
        r.answer().as_deref(),
        Some("SERVER_ERROR no server available\r\n")
    );
}

#[test]
fn read_through_hit_answers_from_the_backup_and_spawns_a_repair() {
    let w = World::new();
    let mut r = Run::start(&w, "get a\r\n", &[RA]);
    r.reply(P0, "get a\r\n", "END\r\n");
    r.reply(B2, "mg a v f t c\r\n", "VA 5 f3 t100 c77\r\nhello\r\n");
    r.assert_done();
    assert_eq!(
        r.answer().as_deref(),
        Some("VALUE a 3 5\r\nhello\r\nEND\r\n")
    );
    assert_eq!(
        r.counts(),
        [
            ("cmd_get", 1),
            ("get_hits", 1),
            ("proxy_read_through_hits", 1),
            ("proxy_repairs", 1)
        ]
    );
    assert!(r.failovers.is_empty());
    assert_eq!(r.spawned.len(), 1);
    assert_eq!(r.read_through, [ReadThrough::Hit]);

    // The repair: add on the primary, then check the source still holds cas 77.
    let child = r.spawned.pop().expect("spawned");
    assert!(!child.is_done(), "a spawned machine has work to do");
    let mut c = Run::adopt(&w, child);
    c.expect_pending(&[(P0, "add a 3 100 5\r\nhello\r\n")]);
    c.reply(P0, "add a 3 100 5\r\nhello\r\n", "STORED\r\n");
    c.expect_pending(&[(B2, "mg a c\r\n")]);
    c.reply(B2, "mg a c\r\n", "HD c77\r\n");
    assert!(c.pending.is_empty() && c.m.is_done());
    assert!(c.answers.is_empty(), "a detached machine never answers");
    assert_eq!(c.m.copy_result(), Some(true));
    assert!(c.counts.is_empty() && c.missed.is_empty());
}

#[test]
fn gets_read_through_shows_the_backups_cas() {
    let w = World::new();
    let mut r = Run::start(&w, "gets a\r\n", &[RA]);
    r.reply(P0, "gets a\r\n", "END\r\n");
    r.reply(B2, "mg a v f t c\r\n", "VA 2 f0 t-1 c9\r\nhi\r\n");
    r.assert_done();
    assert_eq!(
        r.answer().as_deref(),
        Some("VALUE a 0 2 9\r\nhi\r\nEND\r\n")
    );
}

#[test]
fn repair_deletes_its_copy_when_the_source_changed() {
    let w = World::new();
    for check in ["HD c78\r\n", "EN\r\n", "HD\r\n"] {
        let item = MetaItem::parse(&reply(Expect::Meta, b"VA 1 f0 t-1 c77\r\nx\r\n")).expect("VA");
        let mut fx = Vec::new();
        let m = Machine::copy_item(B2, P0, Bytes::from_static(b"k"), item, &w, &mut fx);
        let mut c = Run::empty(&w, m);
        c.absorb(fx);
        c.reply(P0, "add k 0 0 1\r\nx\r\n", "STORED\r\n");
        c.reply(B2, "mg k c\r\n", check);
        c.expect_pending(&[(P0, "delete k\r\n")]);
        assert!(!c.m.is_done());
        c.reply(P0, "delete k\r\n", "DELETED\r\n");
        assert!(c.pending.is_empty() && c.m.is_done(), "{check}");
        assert_eq!(c.m.copy_result(), Some(false));
        assert!(c.answers.is_empty());
    }
}

#[test]
fn repair_stops_when_the_target_has_the_key_or_is_out() {
    let item = || MetaItem::parse(&reply(Expect::Meta, b"VA 1 f0 t-1 c77\r\nx\r\n")).expect("VA");
    let w = World::new();
    let mut fx = Vec::new();
    let m = Machine::copy_item(B2, P0, Bytes::from_static(b"k"), item(), &w, &mut fx);
    let mut c = Run::empty(&w, m);
    c.absorb(fx);
    c.reply(P0, "add k 0 0 1\r\nx\r\n", "NOT_STORED\r\n");
    assert!(c.pending.is_empty() && c.m.is_done());
    assert_eq!(c.m.copy_result(), Some(false));
    assert_eq!(c.history.len(), 1);

    let w = World::down(&[P0]);
    let mut fx = Vec::new();
    let m = Machine::copy_item(B2, P0, Bytes::from_static(b"k"), item(), &w, &mut fx);
    assert!(fx.is_empty(), "nothing is sent to a server out of service");
    assert!(m.is_done());
    assert_eq!(m.copy_result(), Some(false));

    // The source went out between the add and the check: the copy is undone.
    let w = World::down(&[B2]);
    let mut fx = Vec::new();
    let m = Machine::copy_item(B2, P0, Bytes::from_static(b"k"), item(), &w, &mut fx);
    let mut c = Run::empty(&w, m);
    c.absorb(fx);
    c.reply(P0, "add k 0 0 1\r\nx\r\n", "STORED\r\n");
    c.reply(P0, "delete k\r\n", "NOT_FOUND\r\n");
    assert!(c.m.is_done());
    assert_eq!(c.m.copy_result(), Some(false));
}

#[test]
fn copied_ttl_becomes_an_exptime() {
    let r = reply(Expect::Meta, b"VA 1 f7 t2592001 c1\r\nx\r\n");
    let item = MetaItem::parse(&r).expect("VA");
    let [line, block] = item.store_parts(Verb::Set, b"k", NOW);
    assert_eq!(text(&line), format!("set k 7 {} 1\r\n", NOW + 2_592_001));
    assert_eq!(&block[..], b"x\r\n");
    let item = MetaItem::parse(&reply(Expect::Meta, b"VA 0 t-1\r\n\r\n")).expect("VA");
    assert_eq!(
        text(&item.store_parts(Verb::Add, b"k", NOW)[0]),
        "add k 0 0 0\r\n"
    );
    assert!(MetaItem::parse(&reply(Expect::Meta, b"HD\r\n")).is_none());
}

#[test]
fn gat_touches_the_backup_and_waits_for_it_after_answering() {
    let w = World::new();
    let mut r = Run::start(&w, "gat 100 a\r\n", &[RA]);
    r.expect_pending(&[(P0, "gat 100 a\r\n")]);
    r.reply(P0, "gat 100 a\r\n", "VALUE a 0 1\r\nx\r\nEND\r\n");
    assert_eq!(r.answer().as_deref(), Some("VALUE a 0 1\r\nx\r\nEND\r\n"));
    r.expect_pending(&[(B2, "touch a 100\r\n")]);
    assert!(!r.m.is_done(), "the touch is still in flight");
    r.fail(B2, "touch a 100\r\n", Failure::Timeout);
    r.assert_done();
    assert_eq!(
        r.counts(),
        [("cmd_get", 1), ("cmd_touch", 1), ("get_hits", 1)]
    );
}

#[test]
fn gats_read_through_touches_on_the_backup() {
    let w = World::new();
    let mut r = Run::start(&w, "gats 60 a\r\n", &[RA]);
    r.reply(P0, "gats 60 a\r\n", "END\r\n");
    r.reply(B2, "mg a v f t c T60\r\n", "VA 1 f0 t60 c5\r\nx\r\n");
    r.assert_done();
    assert_eq!(r.answer().as_deref(), Some("VALUE a 0 1 5\r\nx\r\nEND\r\n"));
    assert_eq!(r.spawned.len(), 1);
}

// ---- multi-get ----

#[test]
fn multi_get_splits_by_server_and_merges_in_key_order() {
    let w = World::new();
    let mut r = Run::start(&w, "get a b c d\r\n", &[RA, RB, RA, RB]);
    r.expect_pending(&[(P0, "get a c\r\n"), (P1, "get b d\r\n")]);
    r.reply(P1, "get b d\r\n", "VALUE d 0 1\r\n4\r\nEND\r\n");
    r.reply(
        P0,
        "get a c\r\n",
        "VALUE a 0 1\r\n1\r\nVALUE c 0 1\r\n3\r\nEND\r\n",
    );
    // b missed on its primary: read through from its backup.
    r.expect_pending(&[(B3, "mg b v f t c\r\n")]);
    assert!(r.answers.is_empty());
    r.reply(B3, "mg b v f t c\r\n", "EN\r\n");
    r.assert_done();
    assert_eq!(
        r.answer().as_deref(),
        Some("VALUE a 0 1\r\n1\r\nVALUE c 0 1\r\n3\r\nVALUE d 0 1\r\n4\r\nEND\r\n")
    );
    assert_eq!(
        r.counts(),
        [("cmd_get", 4), ("get_hits", 3), ("get_misses", 1)]
    );
}

#[test]
fn multi_get_on_one_server_forwards_the_request_as_is() {
    let w = World::new();
    let mut r = Run::start(&w, "gets a c\r\n", &[RA, RA]);
    r.expect_pending(&[(P0, "gets a c\r\n")]);
    r.reply(
        P0,
        "gets a c\r\n",
        "VALUE a 0 1 5\r\n1\r\nVALUE c 0 1 6\r\n3\r\nEND\r\n",
    );
    r.assert_done();
    assert_eq!(
        r.answer().as_deref(),
        Some("VALUE a 0 1 5\r\n1\r\nVALUE c 0 1 6\r\n3\r\nEND\r\n")
    );
}

#[test]
fn multi_get_read_through_hit_fills_its_place() {
    let w = World::new();
    let mut r = Run::start(&w, "get a b\r\n", &[RA, RB]);
    r.reply(P0, "get a\r\n", "END\r\n");
    r.reply(P1, "get b\r\n", "VALUE b 0 1\r\n2\r\nEND\r\n");
    r.reply(B2, "mg a v f t c\r\n", "VA 1 f4 t-1 c3\r\n1\r\n");
    r.assert_done();
    assert_eq!(
        r.answer().as_deref(),
        Some("VALUE a 4 1\r\n1\r\nVALUE b 0 1\r\n2\r\nEND\r\n")
    );
    assert_eq!(
        r.counts(),
        [
            ("cmd_get", 2),
            ("get_hits", 2),
            ("proxy_read_through_hits", 1),
            ("proxy_repairs", 1)
        ]
    );
    assert_eq!(r.spawned.len(), 1);
    assert_eq!(r.read_through, [ReadThrough::Hit]);
}

#[test]
fn multi_get_read_through_results_are_reported_per_key() {
    let w = World::new();
    let mut r = Run::start(&w, "get a b\r\n", &[RA, RB]);
    r.reply(P0, "get a\r\n", "END\r\n");
    r.reply(P1, "get b\r\n", "END\r\n");
    // The backups: one misses too, one fails.
    r.reply(B2, "mg a v f t c\r\n", "EN\r\n");
    r.fail(B3, "mg b v f t c\r\n", Failure::Closed);
    r.assert_done();
    assert_eq!(r.answer().as_deref(), Some("END\r\n"));
    let mut got = r.read_through.clone();
    got.sort_by_key(|t| t.label());
    assert_eq!(got, [ReadThrough::Error, ReadThrough::Miss]);
}

#[test]
fn multi_get_a_failing_server_only_affects_its_keys_which_go_to_their_backups() {
    let w = World::new();
    let mut r = Run::start(&w, "get a b c d\r\n", &[RA, RB, RA, RB]);
    r.reply(P0, "get a c\r\n", "VALUE a 0 1\r\n1\r\nEND\r\n");
    r.fail(P1, "get b d\r\n", Failure::Timeout);
    // Round 2: b and d on their backup, failovers counted per key.
    r.expect_pending(&[(B3, "get b d\r\n")]);
    assert_eq!(r.failovers, [P1, P1]);
    r.reply(B3, "get b d\r\n", "VALUE b 0 1\r\n2\r\nEND\r\n");
    // c missed on a primary that answered: read through; b/d are not.
    r.expect_pending(&[(B2, "mg c v f t c\r\n")]);
    r.reply(B2, "mg c v f t c\r\n", "EN\r\n");
    r.assert_done();
    assert_eq!(
        r.answer().as_deref(),
        Some("VALUE a 0 1\r\n1\r\nVALUE b 0 1\r\n2\r\nEND\r\n")
    );
    assert_eq!(
        r.counts(),
        [("cmd_get", 4), ("get_hits", 2), ("get_misses", 2)]
    );
}

#[test]
fn multi_get_server_error_reply_counts_as_a_failure() {
    let w = World::new();
    let mut r = Run::start(&w, "get a b\r\n", &[RA, RB]);
    r.reply(P0, "get a\r\n", "SERVER_ERROR busy\r\n");
    r.reply(P1, "get b\r\n", "END\r\n");
    // a is retried on its backup; b's read-through waits for that round.
    r.expect_pending(&[(B2, "get a\r\n")]);
    r.fail(B2, "get a\r\n", Failure::Closed);
    r.expect_pending(&[(B3, "mg b v f t c\r\n")]);
    r.reply(B3, "mg b v f t c\r\n", "EN\r\n");
    r.assert_done();
    assert_eq!(r.answer().as_deref(), Some("END\r\n"));
    assert_eq!(r.failovers, [P0]);
    assert_eq!(r.counts(), [("cmd_get", 2), ("get_misses", 2)]);
}

#[test]
fn multi_get_primary_down_asks_the_backup_first() {
    let w = World::down(&[P1]);
    let mut r = Run::start(&w, "get a b d\r\n", &[RA, RB, RB]);
    assert_eq!(r.failovers, [P1, P1], "one failover per key");
    r.expect_pending(&[(P0, "get a\r\n"), (B3, "get b d\r\n")]);
    r.reply(P0, "get a\r\n", "VALUE a 0 1\r\n1\r\nEND\r\n");
    r.reply(B3, "get b d\r\n", "END\r\n");
    // No read-through for keys already asked on their backup.
    r.assert_done();
    assert_eq!(r.answer().as_deref(), Some("VALUE a 0 1\r\n1\r\nEND\r\n"));
    assert_eq!(
        r.counts(),
        [("cmd_get", 3), ("get_hits", 1), ("get_misses", 2)]
    );
}

#[test]
fn multi_gat_touches_every_backup_in_service() {
    let w = World::down(&[B3]);
    let mut r = Run::start(&w, "gat 9 a b\r\n", &[RA, RB]);
    r.expect_pending(&[(P0, "gat 9 a\r\n"), (P1, "gat 9 b\r\n")]);
    r.reply(P0, "gat 9 a\r\n", "VALUE a 0 1\r\n1\r\nEND\r\n");
    r.reply(P1, "gat 9 b\r\n", "VALUE b 0 1\r\n2\r\nEND\r\n");
    assert_eq!(
        r.answer().as_deref(),
        Some("VALUE a 0 1\r\n1\r\nVALUE b 0 1\r\n2\r\nEND\r\n")
    );
    r.expect_pending(&[(B2, "touch a 9\r\n")]);
    r.reply(B2, "touch a 9\r\n", "TOUCHED\r\n");
    r.assert_done();
}

// ---- mg / me ----

#[test]
fn meta_get_hit_and_quiet_miss() {
    let w = World::new();
    let mut r = Run::start(&w, "mg a v\r\n", &[RA]);
    r.reply(P0, "mg a v\r\n", "VA 1\r\nx\r\n");
    r.assert_done();
    assert_eq!(r.answer().as_deref(), Some("VA 1\r\nx\r\n"));
    assert_eq!(r.counts(), [("cmd_meta", 1)]);

    // q is not sent upstream (every request needs a reply); a miss read
    // through and missed again is hidden from the client.
    let mut r = Run::start(&w, "mg a v q k\r\n", &[RA]);
    r.expect_pending(&[(P0, "mg a v k\r\n")]);
    r.reply(P0, "mg a v k\r\n", "EN\r\n");
    r.expect_pending(&[(B2, "mg a v k\r\n")]);
    r.reply(B2, "mg a v k\r\n", "EN\r\n");
    r.assert_done();
    assert_eq!(r.answer(), None);
}

#[test]
fn meta_get_read_through_hit_answers_the_backups_reply() {
    let w = World::new();
    let mut r = Run::start(&w, "mg a v k q\r\n", &[RA]);
    r.reply(P0, "mg a v k\r\n", "EN\r\n");
    r.reply(B2, "mg a v k\r\n", "VA 1 ka\r\nz\r\n");
    r.assert_done();
    assert_eq!(r.answer().as_deref(), Some("VA 1 ka\r\nz\r\n"));
    assert_eq!(
        r.counts(),
        [("cmd_meta", 1), ("proxy_read_through_hits", 1)]
    );
    assert!(r.spawned.is_empty(), "mg read-through does not repair");
    assert_eq!(r.read_through, [ReadThrough::Hit]);

    // A failed read-through keeps the primary's miss.
    let mut r = Run::start(&w, "mg a v\r\n", &[RA]);
    r.reply(P0, "mg a v\r\n", "EN\r\n");
    r.fail(B2, "mg a v\r\n", Failure::Closed);
    r.assert_done();
    assert_eq!(r.answer().as_deref(), Some("EN\r\n"));
    assert_eq!(r.read_through, [ReadThrough::Error]);

    // A read-through miss keeps it too.
    let mut r = Run::start(&w, "mg a v\r\n", &[RA]);
    r.reply(P0, "mg a v\r\n", "EN\r\n");
    r.reply(B2, "mg a v\r\n", "EN\r\n");
    r.assert_done();
    assert_eq!(r.answer().as_deref(), Some("EN\r\n"));
    assert_eq!(r.read_through, [ReadThrough::Miss]);
}

#[test]
fn meta_debug_miss_is_not_read_through() {
    let w = World::new();
    let mut r = Run::start(&w, "me a\r\n", &[RA]);
    r.reply(P0, "me a\r\n", "EN\r\n");
    r.assert_done();
    assert_eq!(r.answer().as_deref(), Some("EN\r\n"));
}

#[test]
fn meta_get_fails_over_and_errors_when_both_are_out() {
    let w = World::new();
    let mut r = Run::start(&w, "mg a v\r\n", &[RA]);
    r.fail(P0, "mg a v\r\n", Failure::Protocol);
    r.reply(B2, "mg a v\r\n", "VA 1\r\nx\r\n");
    r.assert_done();
    assert_eq!(r.answer().as_deref(), Some("VA 1\r\nx\r\n"));
    assert_eq!(r.failovers, [P0]);

    let w = World::down(&[P0, B2]);
    let r = Run::start(&w, "mg a v q\r\n", &[RA]);
    r.assert_done();
    assert_eq!(
        r.answer().as_deref(),
        Some("SERVER_ERROR no server available\r\n"),
        "quiet mode never hides errors"
    );
    assert_eq!(r.counts(), [("cmd_meta", 1)]);

    let w = World::down(&[B2]);
    let mut r = Run::start(&w, "mg a v\r\n", &[RA]);
    r.fail(P0, "mg a v\r\n", Failure::Timeout);
    r.assert_done();
    assert_eq!(
        r.answer().as_deref(),
        Some("SERVER_ERROR backend timeout\r\n")
    );
}

// ---- mirrored writes ----

const SET: &str = "set a 0 0 1\r\nx\r\n";

#[test]
fn mirrored_set_goes_to_both_and_answers_after_both() {
    let w = World::new();
    let mut r = Run::start(&w, SET, &[RA]);
    r.expect_pending(&[(P0, SET), (B2, SET)]);
    r.reply(P0, SET, "STORED\r\n");
    assert!(r.answers.is_empty(), "acknowledged only when both answered");
    r.reply(B2, SET, "STORED\r\n");
    r.assert_done();
    assert_eq!(r.answer().as_deref(), Some("STORED\r\n"));
    assert_eq!(r.counts(), [("cmd_set", 1)]);
    assert!(r.missed.is_empty() && r.failovers.is_empty());
}

#[test]
fn mirrored_set_backup_failure_marks_the_backup() {
    for fail in [true, false] {
        let w = World::new();
        let mut r = Run::start(&w, SET, &[RA]);
        if fail {
            r.fail(B2, SET, Failure::Timeout);
        } else {
            r.reply(B2, SET, "SERVER_ERROR out of memory\r\n");
        }
        r.reply(P0, SET, "STORED\r\n");
        r.assert_done();
        assert_eq!(r.answer().as_deref(), Some("STORED\r\n"));
        assert_eq!(r.missed(), [(B2, "a")]);
        assert!(r.failovers.is_empty());
    }
}

#[test]
fn mirrored_set_primary_failure_answers_the_backup_and_marks_the_primary() {
    let w = World::new();
    let mut r = Run::start(&w, SET, &[RA]);
    r.fail(P0, SET, Failure::Closed);
    r.reply(B2, SET, "STORED\r\n");
    r.assert_done();
    assert_eq!(r.answer().as_deref(), Some("STORED\r\n"));
    assert_eq!(r.missed(), [(P0, "a")]);
    assert_eq!(r.failovers, [P0]);

    // A refusal by the backup after the primary failed marks nobody.
    let mut r = Run::start(&w, SET, &[RA]);
    r.fail(P0, SET, Failure::Closed);
    r.reply(B2, SET, "SERVER_ERROR out of memory\r\n");
    r.assert_done();
    assert_eq!(
        r.answer().as_deref(),
        Some("SERVER_ERROR out of memory\r\n")
    );
    assert!(r.missed.is_empty());
    assert_eq!(r.counts(), [("cmd_set", 1), ("proxy_server_errors", 1)]);
}

#[test]
fn mirrored_set_both_failing_is_a_server_error() {
    let w = World::new();
    let mut r = Run::start(&w, SET, &[RA]);
    r.fail(B2, SET, Failure::Closed);
    r.fail(P0, SET, Failure::Timeout);
    r.assert_done();
    assert_eq!(
        r.answer().as_deref(),
        Some("SERVER_ERROR backend timeout\r\n")
    );
    assert_eq!(r.counts(), [("cmd_set", 1), ("proxy_server_errors", 1)]);
    assert!(r.missed.is_empty());
}

#[test]
fn mirrored_delete_backup_answer_wins_when_only_it_had_the_key() {
    let w = World::new();
    let mut r = Run::start(&w, "delete a\r\n", &[RA]);
    r.expect_pending(&[(P0, "delete a\r\n"), (B2, "delete a\r\n")]);
    r.reply(P0, "delete a\r\n", "NOT_FOUND\r\n");
    r.reply(B2, "delete a\r\n", "DELETED\r\n");
    r.assert_done();
    assert_eq!(r.answer().as_deref(), Some("DELETED\r\n"));
    assert_eq!(r.counts(), [("delete_hits", 1)]);

    let mut r = Run::start(&w, "touch a 10\r\n", &[RA]);
    r.reply(P0, "touch a 10\r\n", "NOT_FOUND\r\n");
    r.reply(B2, "touch a 10\r\n", "NOT_FOUND\r\n");
    r.assert_done();
    assert_eq!(r.answer().as_deref(), Some("NOT_FOUND\r\n"));
    assert_eq!(r.counts(), [("cmd_touch", 1), ("touch_misses", 1)]);
}

#[test]
fn write_with_the_primary_out_goes_to_the_backup_alone() {
    let w = World::down(&[P0]);
    for verb in [SET, "incr a 1\r\n", "add a 0 0 1\r\nx\r\n"] {
        let mut r = Run::start(&w, verb, &[RA]);
        r.expect_pending(&[(B2, verb)]);
        let ok = if verb.starts_with("incr") {
            "2\r\n"
        } else {
            "STORED\r\n"
        };
        r.reply(B2, verb, ok);
        r.assert_done();
        assert_eq!(r.answer().as_deref(), Some(ok));
        assert_eq!(r.failovers, [P0]);
        assert_eq!(r.missed(), [(P0, "a")]);
    }
    // The backup failing too: a server error, nobody marked.
    let mut r = Run::start(&w, SET, &[RA]);
    r.fail(B2, SET, Failure::Timeout);
    r.assert_done();
    assert_eq!(
        r.answer().as_deref(),
        Some("SERVER_ERROR backend timeout\r\n")
    );
    assert!(r.missed.is_empty() && r.failovers.is_empty());
}

#[test]
fn write_with_the_backup_out_goes_to_the_primary_alone() {
    let w = World::down(&[B2]);
    let mut r = Run::start(&w, "append a 0 0 1\r\ny\r\n", &[RA]);
    r.expect_pending(&[(P0, "append a 0 0 1\r\ny\r\n")]);
    r.reply(P0, "append a 0 0 1\r\ny\r\n", "STORED\r\n");
    r.assert_done();
    assert_eq!(r.answer().as_deref(), Some("STORED\r\n"));
    assert_eq!(r.missed(), [(B2, "a")]);
    assert!(r.failovers.is_empty());

    // Refused by the primary: the backup missed nothing.
    let mut r = Run::start(&w, SET, &[RA]);
    r.reply(P0, SET, "SERVER_ERROR out of memory\r\n");
    r.assert_done();
    assert!(r.missed.is_empty());

    // No backup configured: nobody to mark.
    let w = World::new();
    let mut r = Run::start(
        &w,
        SET,
        &[Replicas {
            primary: P0,
            backup: None,
        }],
    );
    r.reply(P0, SET, "STORED\r\n");
    r.assert_done();
    assert!(r.missed.is_empty());
}

#[test]
fn write_with_both_replicas_out_is_a_server_error() {
    let w = World::down(&[P0, B2]);
    let r = Run::start(&w, SET, &[RA]);
    r.assert_done();
    assert!(r.history.is_empty());
    assert_eq!(
        r.answer().as_deref(),
        Some("SERVER_ERROR no server available\r\n")
    );
    assert_eq!(r.counts(), [("cmd_set", 1), ("proxy_server_errors", 1)]);
    assert!(r.missed.is_empty());
    let r = Run::start(&w, "set a 0 0 1 noreply\r\nx\r\n", &[RA]);
    r.assert_done();
    assert_eq!(r.answer(), None);
}

// ---- primary-then-copy writes ----

#[test]
fn add_stored_with_nothing_on_the_backup_sets_the_request_item_there() {
    let w = World::new();
    let add = "add a 5 300 1\r\nx\r\n";
    let mut r = Run::start(&w, add, &[RA]);
    r.expect_pending(&[(P0, add)]);
    r.reply(P0, add, "STORED\r\n");
    // add STORED may mean the primary lost the item: the backup is asked.
    r.expect_pending(&[(B2, "mg a v f t\r\n")]);
    r.reply(B2, "mg a v f t\r\n", "EN\r\n");
    r.expect_pending(&[(B2, "set a 5 300 1\r\nx\r\n")]);
    assert!(r.answers.is_empty());
    r.reply(B2, "set a 5 300 1\r\nx\r\n", "STORED\r\n");
    r.assert_done();
    assert_eq!(r.answer().as_deref(), Some("STORED\r\n"));
    assert_eq!(r.counts(), [("cmd_set", 1)]);
    assert!(r.missed.is_empty());
}

#[test]
fn add_not_stored_changes_nothing_on_the_backup() {
    let w = World::new();
    let add = "add a 0 0 1\r\nx\r\n";
    let mut r = Run::start(&w, add, &[RA]);
    r.reply(P0, add, "NOT_STORED\r\n");
    r.assert_done();
    assert_eq!(r.answer().as_deref(), Some("NOT_STORED\r\n"));
    assert_eq!(r.history.len(), 1);
}

#[test]
fn add_over_an_item_the_primary_lost_is_judged_against_it() {
    let w = World::new();
    let add = "add a 0 0 1\r\nx\r\n";
    let mut r = Run::start(&w, add, &[RA]);
    r.reply(P0, add, "STORED\r\n");
    r.reply(B2, "mg a v f t\r\n", "VA 1 f2 t-1\r\ny\r\n");
    // The backup's item goes back with set (over the add's wrong value)...
    r.expect_pending(&[(P0, "set a 2 0 1\r\ny\r\n")]);
    r.reply(P0, "set a 2 0 1\r\ny\r\n", "STORED\r\n");
    // ...and the add runs again.
    r.expect_pending(&[(P0, add)]);
    r.reply(P0, add, "NOT_STORED\r\n");
    r.assert_done();
    assert_eq!(r.answer().as_deref(), Some("NOT_STORED\r\n"));
    assert_eq!(r.counts(), [("cmd_set", 1), ("proxy_repairs", 1)]);
    assert!(r.missed.is_empty());
}

#[test]
fn replace_not_stored_deletes_on_the_backup() {
    let w = World::new();
    let rep = "replace a 0 0 1\r\nx\r\n";
    let mut r = Run::start(&w, rep, &[RA]);
    r.reply(P0, rep, "NOT_STORED\r\n");
    r.reply(B2, "mg a v f t\r\n", "EN\r\n");
    r.expect_pending(&[(B2, "delete a\r\n")]);
    r.reply(B2, "delete a\r\n", "NOT_FOUND\r\n");
    r.assert_done();
    assert_eq!(r.answer().as_deref(), Some("NOT_STORED\r\n"));
    assert!(r.missed.is_empty());
}

#[test]
fn cas_stored_sets_the_item_and_exists_changes_nothing() {
    let w = World::new();
    let cas = "cas a 1 0 1 99\r\nx\r\n";
    let mut r = Run::start(&w, cas, &[RA]);
    r.expect_pending(&[(P0, cas)]);
    r.reply(P0, cas, "STORED\r\n");
    r.reply(B2, "set a 1 0 1\r\nx\r\n", "STORED\r\n");
    r.assert_done();
    assert_eq!(r.answer().as_deref(), Some("STORED\r\n"));
    assert_eq!(r.counts(), [("cas_hits", 1), ("cmd_set", 1)]);

    let mut r = Run::start(&w, cas, &[RA]);
    r.reply(P0, cas, "EXISTS\r\n");
    r.assert_done();
    assert_eq!(r.answer().as_deref(), Some("EXISTS\r\n"));
    assert_eq!(r.counts(), [("cas_badval", 1), ("cmd_set", 1)]);

    // NOT_FOUND: the backup is asked, then the key deleted there.
    let mut r = Run::start(&w, cas, &[RA]);
    r.reply(P0, cas, "NOT_FOUND\r\n");
    r.reply(B2, "mg a v f t\r\n", "EN\r\n");
    r.reply(B2, "delete a\r\n", "DELETED\r\n");
    r.assert_done();
    assert_eq!(r.answer().as_deref(), Some("NOT_FOUND\r\n"));
    assert_eq!(r.counts(), [("cas_misses", 1), ("cmd_set", 1)]);
}

#[test]
fn append_success_copies_the_item_to_the_backup() {
    let w = World::new();
    let app = "append a 0 0 1\r\ny\r\n";
    let mut r = Run::start(&w, app, &[RA]);
    r.reply(P0, app, "STORED\r\n");
    r.expect_pending(&[(P0, "mg a v f t\r\n")]);
    r.reply(P0, "mg a v f t\r\n", "VA 2 f3 t50\r\nxy\r\n");
    r.expect_pending(&[(B2, "set a 3 50 2\r\nxy\r\n")]);
    r.reply(B2, "set a 3 50 2\r\nxy\r\n", "STORED\r\n");
    r.assert_done();
    assert_eq!(r.answer().as_deref(), Some("STORED\r\n"));
    assert!(r.missed.is_empty());
}

#[test]
fn incr_copies_the_counter_and_counts_a_hit() {
    let w = World::new();
    let mut r = Run::start(&w, "incr a 5\r\n", &[RA]);
    r.expect_pending(&[(P0, "incr a 5\r\n")]);
    r.reply(P0, "incr a 5\r\n", "8\r\n");
    r.reply(P0, "mg a v f t\r\n", "VA 1 f0 t-1\r\n8\r\n");
    r.reply(B2, "set a 0 0 1\r\n8\r\n", "STORED\r\n");
    r.assert_done();
    assert_eq!(r.answer().as_deref(), Some("8\r\n"));
    assert_eq!(r.counts(), [("incr_hits", 1)]);
}

#[test]
fn writes_that_copy_from_the_primary_run_inside_the_keys_section() {
    let w = World::new();
    for text in [
        "incr a 5\r\n",
        "decr a 5\r\n",
        "append a 0 0 1\r\ny\r\n",
        "add a 0 0 1\r\ny\r\n",
        "cas a 0 0 1 7\r\ny\r\n",
        "ms a 1 MA\r\ny\r\n",
        "ma a\r\n",
    ] {
        let r = Run::start(&w, text, &[RA]);
        assert_eq!(r.sections, ["a"], "{text:?}");
        assert_eq!(r.pending().len(), 1, "{text:?}: the primary, once granted");
    }
    for text in [SET, "delete a\r\n", "touch a 5\r\n", "ms a 1\r\ny\r\n"] {
        let r = Run::start(&w, text, &[RA]);
        assert!(r.sections.is_empty(), "{text:?} is mirrored: no section");
    }
    // Without a backup in service there is nothing to keep in order.
    let w = World::down(&[B2]);
    let r = Run::start(&w, "incr a 5\r\n", &[RA]);
    assert!(r.sections.is_empty());
}

#[test]
fn nothing_goes_upstream_before_the_section_is_granted() {
    let w = World::new();
    let mut fx = Vec::new();
    let mut m = Machine::start(req("incr a 5\r\n"), &[RA], &ALL, &w, &mut fx);
    let [Effect::Exclusive { call, key }] = fx.as_slice() else {
        panic!("only the section is asked for: {fx:?}");
    };
    assert_eq!(key.as_ref(), b"a");
    let call = *call;
    fx.clear();
    // The primary went out while the write waited: the backup decides.
    let policy = HealthPolicy::default();
    for _ in 0..policy.failure_limit {
        w.health[0].record_failure(Instant::now(), &policy, crate::upstream::Ejection::Timeout);
    }
    m.on_outcome(call, Ok(Reply::grant()), &w, &mut fx);
    let sends: Vec<(ServerId, Vec<u8>)> = fx
        .iter()
        .filter_map(|e| match e {
            Effect::Send { server, parts, .. } => Some((*server, parts[0].to_vec())),
            _ => None,
        })
        .collect();
    assert_eq!(sends, [(B2, b"incr a 5\r\n".to_vec())]);
}

#[test]
fn incr_on_a_primary_that_lost_the_key_recovers_it_from_the_backup_and_runs_again() {
    let w = World::new();
    let mut r = Run::start(&w, "incr a 5\r\n", &[RA]);
    r.reply(P0, "incr a 5\r\n", "NOT_FOUND\r\n");
    r.expect_pending(&[(B2, "mg a v f t\r\n")]);
    r.reply(B2, "mg a v f t\r\n", "VA 1 f0 t-1\r\n3\r\n");
    r.expect_pending(&[(P0, "add a 0 0 1\r\n3\r\n")]);
    r.reply(P0, "add a 0 0 1\r\n3\r\n", "STORED\r\n");
    r.expect_pending(&[(P0, "incr a 5\r\n")]);
    r.reply(P0, "incr a 5\r\n", "8\r\n");
    r.reply(P0, "mg a v f t\r\n", "VA 1 f0 t-1\r\n8\r\n");
    r.reply(B2, "set a 0 0 1\r\n8\r\n", "STORED\r\n");
    r.assert_done();
    assert_eq!(r.answer().as_deref(), Some("8\r\n"));
    assert_eq!(r.counts(), [("incr_hits", 1), ("proxy_repairs", 1)]);
    assert!(r.missed.is_empty());
}

#[test]
fn incr_missing_everywhere_deletes_on_the_backup() {
    let w = World::new();
    let mut r = Run::start(&w, "decr a 1\r\n", &[RA]);
    r.reply(P0, "decr a 1\r\n", "NOT_FOUND\r\n");
    r.reply(B2, "mg a v f t\r\n", "EN\r\n");
    r.reply(B2, "delete a\r\n", "NOT_FOUND\r\n");
    r.assert_done();
    assert_eq!(r.answer().as_deref(), Some("NOT_FOUND\r\n"));
    assert_eq!(r.counts(), [("decr_misses", 1)]);
}

#[test]
fn recovery_that_cannot_store_keeps_the_primarys_answer() {
    let w = World::new();
    let mut r = Run::start(&w, "incr a 5\r\n", &[RA]);
    r.reply(P0, "incr a 5\r\n", "NOT_FOUND\r\n");
    r.reply(B2, "mg a v f t\r\n", "VA 1 f0 t-1\r\n3\r\n");
    r.fail(P0, "add a 0 0 1\r\n3\r\n", Failure::Timeout);
    // Converge on NOT_FOUND: delete on the backup.
    r.reply(B2, "delete a\r\n", "DELETED\r\n");
    r.assert_done();
    assert_eq!(r.answer().as_deref(), Some("NOT_FOUND\r\n"));
    assert_eq!(r.counts(), [("incr_misses", 1)]);

    // The rerun failing keeps the first answer too.
    let mut r = Run::start(&w, "incr a 5\r\n", &[RA]);
    r.reply(P0, "incr a 5\r\n", "NOT_FOUND\r\n");
    r.reply(B2, "mg a v f t\r\n", "VA 1 f0 t-1\r\n3\r\n");
    r.reply(P0, "add a 0 0 1\r\n3\r\n", "STORED\r\n");
    r.fail(P0, "incr a 5\r\n", Failure::Closed);
    r.reply(B2, "delete a\r\n", "DELETED\r\n");
    r.assert_done();
    assert_eq!(r.answer().as_deref(), Some("NOT_FOUND\r\n"));
    assert_eq!(r.counts(), [("incr_misses", 1), ("proxy_repairs", 1)]);
}

#[test]
fn failed_convergence_marks_the_backup() {
    let w = World::new();
    // The set on the backup fails.
    let mut r = Run::start(&w, "incr a 1\r\n", &[RA]);
    r.reply(P0, "incr a 1\r\n", "2\r\n");
    r.reply(P0, "mg a v f t\r\n", "VA 1 f0 t-1\r\n2\r\n");
    r.fail(B2, "set a 0 0 1\r\n2\r\n", Failure::Timeout);
    r.assert_done();
    assert_eq!(r.answer().as_deref(), Some("2\r\n"));
    assert_eq!(
        r.counts(),
        [("incr_hits", 1), ("proxy_replication_errors", 1)]
    );
    assert_eq!(r.missed(), [(B2, "a")]);

    // The read-back fails: the backup's copy is deleted instead.
    let mut r = Run::start(&w, "prepend a 0 0 1\r\ny\r\n", &[RA]);
    r.reply(P0, "prepend a 0 0 1\r\ny\r\n", "STORED\r\n");
    r.fail(P0, "mg a v f t\r\n", Failure::Closed);
    r.reply(B2, "delete a\r\n", "DELETED\r\n");
    r.assert_done();
    assert!(r.missed.is_empty());

    // The item vanished on the primary: deleted on the backup too; that
    // delete failing marks the backup.
    let mut r = Run::start(&w, "prepend a 0 0 1\r\ny\r\n", &[RA]);
    r.reply(P0, "prepend a 0 0 1\r\ny\r\n", "STORED\r\n");
    r.reply(P0, "mg a v f t\r\n", "EN\r\n");
    r.reply(B2, "delete a\r\n", "SERVER_ERROR busy\r\n");
    r.assert_done();
    assert_eq!(r.answer().as_deref(), Some("STORED\r\n"));
    assert_eq!(r.missed(), [(B2, "a")]);
    assert_eq!(
        r.counts(),
        [("cmd_set", 1), ("proxy_replication_errors", 1)]
    );

    // Any other read-back reply: the backup cannot be trusted.
    let mut r = Run::start(&w, "append a 0 0 1\r\ny\r\n", &[RA]);
    r.reply(P0, "append a 0 0 1\r\ny\r\n", "STORED\r\n");
    r.reply(P0, "mg a v f t\r\n", "SERVER_ERROR busy\r\n");
    r.assert_done();
    assert_eq!(r.missed(), [(B2, "a")]);
}

#[test]
fn backup_going_out_before_the_copy_step_is_marked() {
    let w = World::new();
    let mut r = Run::start(&w, "incr a 1\r\n", &[RA]);
    r.reply(P0, "incr a 1\r\n", "2\r\n");
    // Another core ejects the backup meanwhile.
    let policy = HealthPolicy::default();
    let seen_at_start = w.observe(B2);
    for _ in 0..policy.failure_limit {
        w.health[2].record_failure(Instant::now(), &policy, crate::upstream::Ejection::Timeout);
    }
    let mut fx = Vec::new();
    let s = r.take(P0, "mg a v f t\r\n");
    r.m.on_outcome(
        s.call,
        Ok(reply(Expect::Meta, b"VA 1 f0 t-1\r\n2\r\n")),
        &w,
        &mut fx,
    );
    assert!(r.m.is_done());
    let missed: Vec<_> = fx
        .iter()
        .filter_map(|e| match e {
            Effect::MissedWrite { server, seen, .. } => Some((*server, *seen)),
            _ => None,
        })
        .collect();
    assert_eq!(
        missed,
        [(B2, seen_at_start)],
        "marked with what the request saw when it decided"
    );
    assert!(!fx.iter().any(|e| matches!(e, Effect::Send { .. })));
}

#[test]
fn primary_failure_on_a_copied_write_lets_the_backup_decide() {
    let w = World::new();
    let mut r = Run::start(&w, "incr a 1\r\n", &[RA]);
    r.fail(P0, "incr a 1\r\n", Failure::Timeout);
    r.expect_pending(&[(B2, "incr a 1\r\n")]);
    r.reply(B2, "incr a 1\r\n", "NOT_FOUND\r\n");
    r.assert_done();
    assert_eq!(r.answer().as_deref(), Some("NOT_FOUND\r\n"));
    assert_eq!(r.failovers, [P0]);
    // The primary may have applied it: marked whatever the backup said.
    assert_eq!(r.missed(), [(P0, "a")]);
    assert_eq!(r.counts(), [("incr_misses", 1)]);

    let mut r = Run::start(&w, "incr a 1\r\n", &[RA]);
    r.fail(P0, "incr a 1\r\n", Failure::Timeout);
    r.fail(B2, "incr a 1\r\n", Failure::Closed);
    r.assert_done();
    assert_eq!(
        r.answer().as_deref(),
        Some("SERVER_ERROR no server available\r\n")
    );
    assert!(r.missed.is_empty() && r.failovers.is_empty());
}

#[test]
fn meta_writes_follow_their_mode() {
    let w = World::new();
    // ms in set mode is mirrored; q hides HD but is not sent upstream.
    let mut r = Run::start(&w, "ms a 1 q T0\r\nx\r\n", &[RA]);
    r.expect_pending(&[(P0, "ms a 1 T0\r\nx\r\n"), (B2, "ms a 1 T0\r\nx\r\n")]);
    r.reply(P0, "ms a 1 T0\r\nx\r\n", "HD\r\n");
    r.reply(B2, "ms a 1 T0\r\nx\r\n", "HD\r\n");
    r.assert_done();
    assert_eq!(r.answer(), None);
    assert_eq!(r.counts(), [("cmd_meta", 1)]);

    // ms in append mode: primary, then copied.
    let mut r = Run::start(&w, "ms a 1 MA\r\ny\r\n", &[RA]);
    r.expect_pending(&[(P0, "ms a 1 MA\r\ny\r\n")]);
    r.reply(P0, "ms a 1 MA\r\ny\r\n", "HD\r\n");
    r.reply(P0, "mg a v f t\r\n", "VA 2 f0 t-1\r\nxy\r\n");
    r.reply(B2, "set a 0 0 2\r\nxy\r\n", "STORED\r\n");
    r.assert_done();
    assert_eq!(r.answer().as_deref(), Some("HD\r\n"));

    // md with a cas: primary first; NF is checked against the backup, then
    // the key is deleted there; q shows NF, as memcached does for md.
    let mut r = Run::start(&w, "md a C5 q\r\n", &[RA]);
    r.expect_pending(&[(P0, "md a C5\r\n")]);
    r.reply(P0, "md a C5\r\n", "NF\r\n");
    r.reply(B2, "mg a v f t\r\n", "EN\r\n");
    r.reply(B2, "delete a\r\n", "NOT_FOUND\r\n");
    r.assert_done();
    assert_eq!(r.answer().as_deref(), Some("NF\r\n"));

    // md with a cas answered HD: the primary had it; deleted on the backup
    // at once, no recovery.
    let mut r = Run::start(&w, "md a C5\r\n", &[RA]);
    r.reply(P0, "md a C5\r\n", "HD\r\n");
    r.expect_pending(&[(B2, "delete a\r\n")]);
    r.reply(B2, "delete a\r\n", "DELETED\r\n");
    r.assert_done();
    assert_eq!(r.answer().as_deref(), Some("HD\r\n"));

    // A quiet error is shown.
    let mut r = Run::start(&w, "ma a q\r\n", &[RA]);
    r.reply(P0, "ma a\r\n", "NS\r\n");
    r.assert_done();
    assert_eq!(r.answer().as_deref(), Some("NS\r\n"));
}

#[test]
fn copied_writes_converge_the_backup_by_outcome() {
    // (request, primary's reply, backup's reply to the readback if asked,
    //  the primary's reply to the readback if asked, the backup step, answer)
    struct Case {
        req: &'static str,
        primary: &'static str,
        recover: Option<&'static str>,
        readback: Option<&'static str>,
        step: Option<&'static str>,
    }
    let cases = [
        Case {
            req: "replace a 3 7 1\r\nx\r\n",
            primary: "STORED\r\n",
            recover: None,
            readback: None,
            step: Some("set a 3 7 1\r\nx\r\n"),
        },
        Case {
            req: "append a 0 0 1\r\nx\r\n",
            primary: "NOT_STORED\r\n",
            recover: Some("EN\r\n"),
            readback: None,
            step: Some("delete a\r\n"),
        },
        Case {
            req: "ma a\r\n",
            primary: "HD\r\n",
            recover: None,
            readback: Some("VA 1 f0 t-1\r\n1\r\n"),
            step: Some("set a 0 0 1\r\n1\r\n"),
        },
        Case {
            req: "ma a\r\n",
            primary: "NF\r\n",
            recover: Some("EN\r\n"),
            readback: None,
            step: Some("delete a\r\n"),
        },
        Case {
            req: "ms a 1 I\r\nx\r\n",
            primary: "NS\r\n",
            recover: None,
            readback: None,
            step: None,
        },
        Case {
            req: "incr a 1\r\n",
            primary: "CLIENT_ERROR cannot increment or decrement non-numeric value\r\n",
            recover: None,
            readback: None,
            step: None,
        },
    ];
    let w = World::new();
    for c in cases {
        let upstream = c.req;
        let mut r = Run::start(&w, c.req, &[RA]);
        r.expect_pending(&[(P0, upstream)]);
        r.reply(P0, upstream, c.primary);
        if let Some(rec) = c.recover {
            r.reply(B2, "mg a v f t\r\n", rec);
        }
        if let Some(rb) = c.readback {
            r.reply(P0, "mg a v f t\r\n", rb);
        }
        match c.step {
            Some(step) => {
                r.expect_pending(&[(B2, step)]);
                assert!(
                    r.answers.is_empty(),
                    "{}: answered before the backup",
                    c.req
                );
                let ok = if step.starts_with("delete") {
                    "DELETED\r\n"
                } else {
                    "STORED\r\n"
                };
                r.reply(B2, step, ok);
            }
            None => r.expect_pending(&[]),
        }
        r.assert_done();
        assert_eq!(r.answer().as_deref(), Some(c.primary), "{}", c.req);
        assert!(r.missed.is_empty(), "{}", c.req);
    }
}

#[test]
fn cas_with_the_primary_out_goes_to_the_backup_alone() {
    let w = World::down(&[P0]);
    let cas = "cas a 0 0 1 7\r\nx\r\n";
    let mut r = Run::start(&w, cas, &[RA]);
    r.expect_pending(&[(B2, cas)]);
    r.reply(B2, cas, "EXISTS\r\n");
    r.assert_done();
    assert_eq!(r.answer().as_deref(), Some("EXISTS\r\n"));
    assert_eq!(r.missed(), [(P0, "a")]);
    assert_eq!(r.counts(), [("cas_badval", 1), ("cmd_set", 1)]);
}

// ---- noreply and vanished clients ----

#[test]
fn noreply_hides_the_answer_but_the_write_runs_to_its_end() {
    let w = World::new();
    let set = "set a 0 0 1 noreply\r\nx\r\n";
    let mut r = Run::start(&w, set, &[RA]);
    r.expect_pending(&[(P0, SET), (B2, SET)]);
    r.reply(P0, SET, "STORED\r\n");
    assert!(!r.m.is_done(), "still waiting for the backup");
    r.fail(B2, SET, Failure::Closed);
    r.assert_done();
    assert_eq!(r.answer(), None);
    assert_eq!(r.missed(), [(B2, "a")]);

    let mut r = Run::start(&w, "incr a 1 noreply\r\n", &[RA]);
    r.reply(P0, "incr a 1\r\n", "2\r\n");
    r.reply(P0, "mg a v f t\r\n", "VA 1 f0 t-1\r\n2\r\n");
    r.reply(B2, "set a 0 0 1\r\n2\r\n", "STORED\r\n");
    r.assert_done();
    assert_eq!(r.answer(), None);
    assert_eq!(r.counts(), [("incr_hits", 1)]);
}

#[test]
fn a_vanished_client_still_gets_its_replication_done() {
    // The engine drops the answer of a client that is gone; the machine does
    // not know and must not care: the backup step is sent before any answer,
    // and the machine is not done until the backup converged.
    let w = World::new();
    for (req, first, reply1) in [
        ("incr a 1\r\n", "incr a 1\r\n", "2\r\n"),
        (
            "append a 0 0 1\r\ny\r\n",
            "append a 0 0 1\r\ny\r\n",
            "STORED\r\n",
        ),
    ] {
        let mut r = Run::start(&w, req, &[RA]);
        r.reply(P0, first, reply1);
        assert!(r.answers.is_empty(), "no answer before the backup step");
        assert!(!r.m.is_done());
        assert_eq!(r.pending().len(), 1, "the copy step is under way");
        // Drive it to its end without ever looking at an answer.
        r.reply(P0, "mg a v f t\r\n", "VA 1 f0 t-1\r\n2\r\n");
        let step = r.pending()[0].clone();
        assert_eq!(step.0, B2);
        r.reply(B2, &step.1, "STORED\r\n");
        assert!(r.m.is_done() && r.pending.is_empty());
    }
}

// ---- flush_all ----

#[test]
fn flush_all_goes_to_every_server() {
    let w = World::new();
    let mut r = Run::start(&w, "flush_all\r\n", &[]);
    r.expect_pending(&[
        (P0, "flush_all\r\n"),
        (P1, "flush_all\r\n"),
        (B2, "flush_all\r\n"),
        (B3, "flush_all\r\n"),
    ]);
    for s in ALL {
        assert!(r.answers.is_empty());
        r.reply(s, "flush_all\r\n", "OK\r\n");
    }
    r.assert_done();
    assert_eq!(r.answer().as_deref(), Some("OK\r\n"));
    assert_eq!(r.counts(), [("cmd_flush", 1)]);
    assert!(r.missed.is_empty());
}

#[test]
fn flush_all_with_a_server_out_marks_it_and_answers_partially() {
    let w = World::down(&[P1]);
    let mut r = Run::start(&w, "flush_all 10\r\n", &[]);
    r.expect_pending(&[
        (P0, "flush_all 10\r\n"),
        (B2, "flush_all 10\r\n"),
        (B3, "flush_all 10\r\n"),
    ]);
    r.reply(P0, "flush_all 10\r\n", "OK\r\n");
    r.reply(B2, "flush_all 10\r\n", "OK\r\n");
    r.fail(B3, "flush_all 10\r\n", Failure::Timeout);
    r.assert_done();
    assert_eq!(
        r.answer().as_deref(),
        Some("SERVER_ERROR flush_all reached only some servers\r\n")
    );
    assert_eq!(r.missed(), [(P1, ""), (B3, "")]);

    let w = World::down(&ALL);
    let r = Run::start(&w, "flush_all noreply\r\n", &[]);
    r.assert_done();
    assert_eq!(r.answer(), None);
    assert_eq!(r.missed().len(), 4);
    let r = Run::start(&w, "flush_all\r\n", &[]);
    assert_eq!(
        r.answer().as_deref(),
        Some("SERVER_ERROR no server available\r\n")
    );
}

#[test]
fn flush_all_noreply_is_sent_with_a_reply_and_waits() {
    let w = World::new();
    let mut r = Run::start(&w, "flush_all noreply\r\n", &[]);
    assert_eq!(r.pending().len(), 4);
    for s in ALL {
        r.reply(s, "flush_all\r\n", "OK\r\n");
    }
    r.assert_done();
    assert_eq!(r.answer(), None);
}

// ---- machine bookkeeping ----

#[test]
fn stray_outcomes_are_ignored() {
    let w = World::new();
    let mut r = Run::start(&w, SET, &[RA]);
    let mut fx = Vec::new();
    r.m.on_outcome(999, Err(CallError::no_call(P0, Expect::Line)), &w, &mut fx);
    assert!(fx.is_empty());
    r.reply(P0, SET, "STORED\r\n");
    r.reply(B2, SET, "STORED\r\n");
    r.assert_done();
    r.m.on_outcome(0, Err(CallError::no_call(P0, Expect::Line)), &w, &mut fx);
    assert!(fx.is_empty(), "nothing after done");
}

#[test]
fn machines_stay_small() {
    // The engine keeps one per request in flight in its slab.
    let size = std::mem::size_of::<Machine>();
    eprintln!("size_of::<Machine>() = {size}");
    assert!(size <= 512, "Machine is {size} bytes");
}

mod prop;

/// A world where `s` drains its missed keys after an outage.
fn draining(s: ServerId) -> World {
    let w = World::new();
    let h = &w.health[s.index()];
    let policy = HealthPolicy::default();
    let t0 = Instant::now();
    h.record_missed_write(t0, &policy, h.observe(), b"x");
    let t1 = t0 + policy.retry_interval;
    let probe = h.try_claim_probe(t1).expect("probe due");
    assert_eq!(
        h.begin_rejoin(t1, probe),
        crate::upstream::Rejoin::Drain,
        "a small log drains"
    );
    w
}

#[test]
fn a_draining_server_takes_absolute_writes_but_no_reads() {
    let w = draining(P0);
    let mut r = Run::start(&w, "set a 0 0 1\r\nv\r\n", &[RA]);
    r.expect_pending(&[(P0, "set a 0 0 1\r\nv\r\n"), (B2, "set a 0 0 1\r\nv\r\n")]);
    r.reply(P0, "set a 0 0 1\r\nv\r\n", "STORED\r\n");
    r.reply(B2, "set a 0 0 1\r\nv\r\n", "STORED\r\n");
    r.assert_done();
    assert_eq!(r.answer().as_deref(), Some("STORED\r\n"));
    assert!(r.missed().is_empty(), "the draining primary got the write");

    // The drain may have deleted it already: the backup's DELETED wins.
    let mut r = Run::start(&w, "delete a\r\n", &[RA]);
    r.reply(P0, "delete a\r\n", "NOT_FOUND\r\n");
    r.reply(B2, "delete a\r\n", "DELETED\r\n");
    r.assert_done();
    assert_eq!(r.answer().as_deref(), Some("DELETED\r\n"));

    let r = Run::start(&w, "get a\r\n", &[RA]);
    r.expect_pending(&[(B2, "get a\r\n")]);
}

#[test]
fn a_draining_server_misses_relative_writes_and_logs_them() {
    let w = draining(P0);
    let mut r = Run::start(&w, "incr a 1\r\n", &[RA]);
    r.expect_pending(&[(B2, "incr a 1\r\n")]);
    r.reply(B2, "incr a 1\r\n", "2\r\n");
    r.assert_done();
    assert_eq!(r.answer().as_deref(), Some("2\r\n"));
    assert_eq!(r.missed(), [(P0, "a")]);
}

#[test]
fn a_missed_base64_key_is_logged_as_a_flush() {
    let w = World::down(&[B2]);
    let mut r = Run::start(&w, "ms YQ== 1 b\r\nv\r\n", &[RA]);
    r.reply(P0, "ms YQ== 1 b\r\nv\r\n", "HD\r\n");
    r.assert_done();
    assert_eq!(
        r.missed(),
        [(B2, "")],
        "the server holds the decoded key: only a flush is sure to cover it"
    );
}

/// A world where `s` is suspect after a stuck connection.
fn suspect(s: ServerId) -> World {
    let w = World::new();
    let h = &w.health[s.index()];
    let policy = HealthPolicy::default();
    for _ in 0..policy.failure_limit {
        h.record_failure(Instant::now(), &policy, crate::upstream::Ejection::Timeout);
    }
    assert_eq!(h.state(), crate::upstream::State::Suspect);
    w
}

#[test]
fn a_suspect_server_gets_no_reads_and_no_writes_and_its_missed_writes_are_logged() {
    let w = suspect(P0);
    let r = Run::start(&w, "get a\r\n", &[RA]);
    r.expect_pending(&[(B2, "get a\r\n")]);

    // Absolute writes too: it may be stuck, and the key is logged instead.
    for (cmd, answer) in [
        ("set a 0 0 1\r\nv\r\n", "STORED\r\n"),
        ("delete a\r\n", "DELETED\r\n"),
        ("incr a 1\r\n", "2\r\n"),
    ] {
        let mut r = Run::start(&w, cmd, &[RA]);
        r.expect_pending(&[(B2, cmd)]);
        r.reply(B2, cmd, answer);
        r.assert_done();
        assert_eq!(r.answer().as_deref(), Some(answer));
        assert_eq!(r.missed(), [(P0, "a")], "{cmd:?}");
    }
}

/// A meta write of a base64 key (`b`): every command composed for it names
/// the key in base64 with `b` (a text command, or a meta one without `b`,
/// would name another key).
#[test]
fn a_base64_keys_copies_recovery_and_deletes_carry_the_b_flag() {
    let w = World::new();
    let mut r = Run::start(&w, "ma YSBi b D5 v\r\n", &[RA]);
    r.reply(P0, "ma YSBi b D5 v\r\n", "VA 1\r\n8\r\n");
    r.reply(P0, "mg YSBi b v f t\r\n", "VA 1 f0 t-1\r\n8\r\n");
    r.reply(B2, "ms YSBi 1 b F0 T0 MS\r\n8\r\n", "HD\r\n");
    r.assert_done();
    assert_eq!(r.answer().as_deref(), Some("VA 1\r\n8\r\n"));
    assert!(r.missed.is_empty(), "the backup's copy counts as stored");

    let mut r = Run::start(&w, "ma YSBi b D5\r\n", &[RA]);
    r.reply(P0, "ma YSBi b D5\r\n", "NF\r\n");
    r.reply(B2, "mg YSBi b v f t\r\n", "VA 1 f0 t-1\r\n3\r\n");
    r.reply(P0, "ms YSBi 1 b F0 T0 ME\r\n3\r\n", "HD\r\n");
    r.reply(P0, "ma YSBi b D5\r\n", "HD\r\n");
    r.reply(P0, "mg YSBi b v f t\r\n", "VA 1 f0 t-1\r\n8\r\n");
    r.reply(B2, "ms YSBi 1 b F0 T0 MS\r\n8\r\n", "HD\r\n");
    r.assert_done();
    assert_eq!(r.answer().as_deref(), Some("HD\r\n"));

    let mut r = Run::start(&w, "ma YSBi b D1\r\n", &[RA]);
    r.reply(P0, "ma YSBi b D1\r\n", "NF\r\n");
    r.reply(B2, "mg YSBi b v f t\r\n", "EN\r\n");
    r.reply(B2, "md YSBi b\r\n", "NF\r\n");
    r.assert_done();
    assert_eq!(r.answer().as_deref(), Some("NF\r\n"));
    assert!(
        r.missed.is_empty(),
        "NF on the backup: it lacks the key too"
    );
}

// ---- a migration window: earlier owners ----

/// Key `a` on primary 0 without a backup.
const RA_ALONE: Replicas = Replicas {
    primary: P0,
    backup: None,
};

#[test]
fn a_moved_key_that_misses_is_read_from_its_earlier_owner_and_copied() {
    let w = World::new().moved("a", &[E4]);
    let mut r = Run::start(&w, "get a\r\n", &[RA_ALONE]);
    r.reply(P0, "get a\r\n", "END\r\n");
    r.reply(E4, "mg a v f t c\r\n", "VA 2 f1 t-1 c9\r\nhi\r\n");
    r.assert_done();
    assert_eq!(r.answer().as_deref(), Some("VALUE a 1 2\r\nhi\r\nEND\r\n"));
    assert_eq!(
        r.counts(),
        [("cmd_get", 1), ("get_hits", 1), ("proxy_migration_hits", 1)]
    );
    assert!(r.read_through.is_empty(), "not a backup read-through");
    // The copy: add on the new owner (never over a newer value), then the
    // earlier owner must still hold the same item.
    let mut c = Run::adopt(&w, r.spawned.pop().expect("a copy"));
    c.reply(P0, "add a 1 0 2\r\nhi\r\n", "STORED\r\n");
    c.reply(E4, "mg a c\r\n", "HD c9\r\n");
    assert!(c.m.is_done());
    assert_eq!(c.m.copy_result(), Some(true));
}

#[test]
fn earlier_owners_come_after_the_backup_newest_first_and_a_miss_stays_a_miss() {
    let w = World::new().moved("a", &[E4, E5]);
    let mut r = Run::start(&w, "get a\r\n", &[RA]);
    r.reply(P0, "get a\r\n", "END\r\n");
    r.reply(B2, "mg a v f t c\r\n", "EN\r\n");
    r.reply(E4, "mg a v f t c\r\n", "EN\r\n");
    r.fail(E5, "mg a v f t c\r\n", Failure::Timeout);
    r.assert_done();
    assert_eq!(r.answer().as_deref(), Some("END\r\n"));
    assert_eq!(
        r.counts(),
        [
            ("cmd_get", 1),
            ("get_misses", 1),
            ("proxy_migration_misses", 2)
        ]
    );
    assert!(r.spawned.is_empty());
}

#[test]
fn an_earlier_owner_out_of_service_is_not_asked() {
    let w = World::down(&[E4]).moved("a", &[E4, E5]);
    let mut r = Run::start(&w, "get a\r\n", &[RA_ALONE]);
    r.reply(P0, "get a\r\n", "END\r\n");
    r.expect_pending(&[(E5, "mg a v f t c\r\n")]);
    r.reply(E5, "mg a v f t c\r\n", "EN\r\n");
    r.assert_done();
    assert_eq!(r.answer().as_deref(), Some("END\r\n"));
}

#[test]
fn a_multi_get_reads_its_moved_misses_from_earlier_owners_in_rounds() {
    let w = World::new().moved("a", &[E4, E5]).moved("b", &[E4]);
    let mut r = Run::start(&w, "get a b\r\n", &[RA_ALONE, RB]);
    r.reply(P0, "get a\r\n", "END\r\n");
    r.reply(P1, "get b\r\n", "END\r\n");
    // b's backup first; a has none.
    r.reply(B3, "mg b v f t c\r\n", "EN\r\n");
    // Round one: each key's newest earlier owner.
    r.expect_pending(&[(E4, "mg a v f t c\r\n"), (E4, "mg b v f t c\r\n")]);
    r.reply(E4, "mg b v f t c\r\n", "VA 1 f0 t-1 c3\r\nB\r\n");
    r.reply(E4, "mg a v f t c\r\n", "EN\r\n");
    // Round two: a's older owner.
    r.reply(E5, "mg a v f t c\r\n", "VA 1 f0 t-1 c4\r\nA\r\n");
    r.assert_done();
    assert_eq!(
        r.answer().as_deref(),
        Some("VALUE a 0 1\r\nA\r\nVALUE b 0 1\r\nB\r\nEND\r\n")
    );
    assert_eq!(
        r.spawned.len(),
        2,
        "both hits are copied to their primaries"
    );
    assert_eq!(r.counts.get("proxy_migration_hits"), Some(&2));
    assert_eq!(r.counts.get("proxy_migration_misses"), Some(&1));
}

#[test]
fn a_write_to_a_moved_key_deletes_the_earlier_copies_first() {
    let w = World::new().moved("a", &[E4, E5]);
    let mut r = Run::start(&w, "set a 0 0 1\r\nx\r\n", &[RA_ALONE]);
    // The deletes go out together; the write waits for both.
    r.expect_pending(&[(E4, "delete a\r\n"), (E5, "delete a\r\n")]);
    assert_eq!(r.holds, [true], "the client waits with the write");
    r.reply(E5, "delete a\r\n", "NOT_FOUND\r\n");
    r.expect_pending(&[(E4, "delete a\r\n")]);
    // A delete that fails logs the key for that owner (deleted before it
    // serves again).
    r.fail(E4, "delete a\r\n", Failure::Closed);
    assert_eq!(r.holds, [true, false], "and goes on as the write leaves");
    r.reply(P0, "set a 0 0 1\r\nx\r\n", "STORED\r\n");
    r.assert_done();
    assert_eq!(r.answer().as_deref(), Some("STORED\r\n"));
    assert_eq!(r.missed(), [(E4, "a")]);
    assert_eq!(r.counts.get("proxy_migration_deletes"), Some(&2));
}

#[test]
fn a_write_logs_the_key_for_an_earlier_owner_out_of_service_and_goes_on() {
    let w = World::down(&[E4]).moved("a", &[E4]);
    let mut r = Run::start(&w, "delete a\r\n", &[RA_ALONE]);
    assert_eq!(r.missed(), [(E4, "a")]);
    r.reply(P0, "delete a\r\n", "DELETED\r\n");
    r.assert_done();
    assert_eq!(r.answer().as_deref(), Some("DELETED\r\n"));
}

#[test]
fn a_meta_write_with_a_base64_key_deletes_with_md_b() {
    let w = World::new().moved("YQ==", &[E4]);
    let mut r = Run::start(&w, "ms YQ== 1 b\r\nx\r\n", &[RA_ALONE]);
    r.reply(E4, "md YQ== b\r\n", "HD\r\n");
    r.reply(P0, "ms YQ== 1 b\r\nx\r\n", "HD\r\n");
    r.assert_done();
    assert_eq!(r.answer().as_deref(), Some("HD\r\n"));
    assert!(r.missed.is_empty());
}

#[test]
fn without_a_window_nothing_changes() {
    let w = World::new();
    let mut r = Run::start(&w, "set a 0 0 1\r\nx\r\n", &[RA_ALONE]);
    r.expect_pending(&[(P0, "set a 0 0 1\r\nx\r\n")]);
    r.reply(P0, "set a 0 0 1\r\nx\r\n", "STORED\r\n");
    r.assert_done();
    let mut r = Run::start(&w, "get a\r\n", &[RA_ALONE]);
    r.reply(P0, "get a\r\n", "END\r\n");
    r.assert_done();
    assert_eq!(r.answer().as_deref(), Some("END\r\n"));
}

// ---- hedged reads ----

/// The hedge timer of a read on `primary` fires.
fn fire(r: &mut Run<'_>, primary: ServerId) {
    let s = r.take(primary, HEDGE_TIMER);
    r.feed(s.call, Ok(Reply::grant()));
}

#[test]
fn a_late_primary_is_hedged_onto_the_backup_and_the_first_hit_answers() {
    let w = World::new().hedging(true);
    let mut r = Run::start(&w, "get a\r\n", &[RA]);
    r.expect_pending(&[(P0, "get a\r\n"), (P0, HEDGE_TIMER)]);
    fire(&mut r, P0);
    r.expect_pending(&[(P0, "get a\r\n"), (B2, "get a\r\n")]);
    r.reply(B2, "get a\r\n", "VALUE a 0 1\r\nb\r\nEND\r\n");
    assert_eq!(r.answer().as_deref(), Some("VALUE a 0 1\r\nb\r\nEND\r\n"));
    assert_eq!(r.won, [P0]);
    // The primary's late reply is waited for, then dropped.
    assert!(!r.m.is_done());
    r.reply(P0, "get a\r\n", "VALUE a 0 1\r\nb\r\nEND\r\n");
    r.assert_done();
    assert_eq!(r.counts(), [("cmd_get", 1), ("get_hits", 1)]);
    assert!(r.failovers.is_empty());
}

#[test]
fn a_primary_on_time_is_not_hedged() {
    let w = World::new().hedging(true);
    let mut r = Run::start(&w, "get a\r\n", &[RA]);
    r.reply(P0, "get a\r\n", "VALUE a 0 1\r\nb\r\nEND\r\n");
    assert_eq!(r.answer().as_deref(), Some("VALUE a 0 1\r\nb\r\nEND\r\n"));
    // Done at once: its timer is not waited for.
    r.assert_done();
    assert!(r.hedged.is_empty());
}

#[test]
fn a_miss_on_one_replica_waits_for_the_other() {
    let w = World::new().hedging(true);
    // The backup misses first: the primary's hit answers.
    let mut r = Run::start(&w, "get a\r\n", &[RA]);
    fire(&mut r, P0);
    r.reply(B2, "get a\r\n", "END\r\n");
    assert!(
        r.answers.is_empty(),
        "a miss does not answer while the primary may hit"
    );
    r.reply(P0, "get a\r\n", "VALUE a 0 1\r\nb\r\nEND\r\n");
    r.assert_done();
    assert_eq!(r.answer().as_deref(), Some("VALUE a 0 1\r\nb\r\nEND\r\n"));
    // The primary misses first: the backup's hit answers.
    let mut r = Run::start(&w, "get a\r\n", &[RA]);
    fire(&mut r, P0);
    r.reply(P0, "get a\r\n", "END\r\n");
    assert!(r.answers.is_empty());
    r.reply(B2, "get a\r\n", "VALUE a 0 1\r\nb\r\nEND\r\n");
    r.assert_done();
    assert_eq!(r.answer().as_deref(), Some("VALUE a 0 1\r\nb\r\nEND\r\n"));
    // Both miss: one miss, and no read-through of a backup that was asked.
    let mut r = Run::start(&w, "get a\r\n", &[RA]);
    fire(&mut r, P0);
    r.reply(B2, "get a\r\n", "END\r\n");
    r.reply(P0, "get a\r\n", "END\r\n");
    r.assert_done();
    assert_eq!(r.answer().as_deref(), Some("END\r\n"));
    assert_eq!(r.counts(), [("cmd_get", 1), ("get_misses", 1)]);
}

#[test]
fn a_primary_that_fails_while_hedged_is_answered_by_the_hedge() {
    let w = World::new().hedging(true);
    let mut r = Run::start(&w, "get a\r\n", &[RA]);
    fire(&mut r, P0);
    r.fail(P0, "get a\r\n", Failure::Timeout);
    r.reply(B2, "get a\r\n", "VALUE a 0 1\r\nb\r\nEND\r\n");
    r.assert_done();
    assert_eq!(r.answer().as_deref(), Some("VALUE a 0 1\r\nb\r\nEND\r\n"));
    assert_eq!(r.failovers, [P0]);
    assert!(r.won.is_empty(), "a failover, not a win");
}

#[test]
fn a_hedge_the_budget_refuses_leaves_the_read_to_its_primary() {
    let w = World::new().hedging(true);
    let mut r = Run::start(&w, "get a\r\n", &[RA]);
    r.refuse_hedges = true;
    fire(&mut r, P0);
    assert_eq!(r.hedged, [P0]);
    r.expect_pending(&[(P0, "get a\r\n")]);
    r.reply(P0, "get a\r\n", "VALUE a 0 1\r\nb\r\nEND\r\n");
    r.assert_done();
}

#[test]
fn an_mg_without_side_effects_is_hedged_like_a_get() {
    let w = World::new().hedging(true);
    let mut r = Run::start(&w, "mg a v k\r\n", &[RA]);
    r.expect_pending(&[(P0, "mg a v k\r\n"), (P0, HEDGE_TIMER)]);
    fire(&mut r, P0);
    r.reply(B2, "mg a v k\r\n", "VA 1 ka\r\nb\r\n");
    assert_eq!(r.answer().as_deref(), Some("VA 1 ka\r\nb\r\n"));
    assert_eq!(r.won, [P0]);
    r.reply(P0, "mg a v k\r\n", "VA 1 ka\r\nb\r\n");
    r.assert_done();
    // A miss on the backup waits for the primary's hit.
    let mut r = Run::start(&w, "mg a v\r\n", &[RA]);
    fire(&mut r, P0);
    r.reply(B2, "mg a v\r\n", "EN\r\n");
    assert!(r.answers.is_empty());
    r.reply(P0, "mg a v\r\n", "VA 1\r\nb\r\n");
    r.assert_done();
    assert_eq!(r.answer().as_deref(), Some("VA 1\r\nb\r\n"));
    // Both miss: one EN, no read-through of the backup that was asked.
    let mut r = Run::start(&w, "mg a v\r\n", &[RA]);
    fire(&mut r, P0);
    r.reply(P0, "mg a v\r\n", "EN\r\n");
    r.reply(B2, "mg a v\r\n", "EN\r\n");
    r.assert_done();
    assert_eq!(r.answer().as_deref(), Some("EN\r\n"));
}

#[test]
fn only_reads_without_side_effects_with_a_backup_in_service_are_hedged() {
    let w = World::new().hedging(true);
    for text in [
        "gets a\r\n",
        "gat 10 a\r\n",
        "gets a b\r\n",
        "gat 10 a b\r\n",
        "mg a v c\r\n",
        "mg a v T30\r\n",
        "mg a v N30\r\n",
    ] {
        let r = Run::start(&w, text, &[RA, RB]);
        assert!(
            r.pending().iter().all(|(_, b)| b != HEDGE_TIMER),
            "{text:?} is not hedged: {:?}",
            r.pending()
        );
    }
    let r = Run::start(&w, "get a\r\n", &[RA_ALONE]);
    r.expect_pending(&[(P0, "get a\r\n")]);
    let down = World::down(&[B2]).hedging(true);
    let r = Run::start(&down, "get a\r\n", &[RA]);
    r.expect_pending(&[(P0, "get a\r\n")]);
    let off = World::new();
    let r = Run::start(&off, "get a\r\n", &[RA]);
    r.expect_pending(&[(P0, "get a\r\n")]);
}

/// Key `e` lives on 0, like `a`, but its backup is 3.
const RE: Replicas = Replicas {
    primary: P0,
    backup: Some(B3),
};

#[test]
fn a_multi_get_hedges_a_late_part_onto_its_keys_backups() {
    let w = World::new().hedging(true);
    let mut r = Run::start(&w, "get a b c d\r\n", &[RA, RB, RA, RB]);
    r.expect_pending(&[
        (P0, "get a c\r\n"),
        (P1, "get b d\r\n"),
        (P0, HEDGE_TIMER),
        (P1, HEDGE_TIMER),
    ]);
    // P1 is on time: its timer sends nothing.
    r.reply(
        P1,
        "get b d\r\n",
        "VALUE b 0 1\r\n2\r\nVALUE d 0 1\r\n4\r\nEND\r\n",
    );
    fire(&mut r, P1);
    // P0 is late: its keys go to their backup.
    fire(&mut r, P0);
    r.expect_pending(&[(P0, "get a c\r\n"), (B2, "get a c\r\n")]);
    r.reply(
        B2,
        "get a c\r\n",
        "VALUE a 0 1\r\n1\r\nVALUE c 0 1\r\n3\r\nEND\r\n",
    );
    assert_eq!(
        r.answer().as_deref(),
        Some("VALUE a 0 1\r\n1\r\nVALUE b 0 1\r\n2\r\nVALUE c 0 1\r\n3\r\nVALUE d 0 1\r\n4\r\nEND\r\n")
    );
    assert_eq!(r.won, [P0]);
    assert_eq!(r.hedged, [P0]);
    // The late part is waited for, then dropped.
    assert!(!r.m.is_done());
    r.reply(P0, "get a c\r\n", "END\r\n");
    r.assert_done();
    assert_eq!(r.counts(), [("cmd_get", 4), ("get_hits", 4)]);
    assert!(r.failovers.is_empty());
}

#[test]
fn a_multi_get_hedge_goes_to_each_backup_of_the_late_part() {
    let w = World::new().hedging(true);
    let mut r = Run::start(&w, "get a e\r\n", &[RA, RE]);
    fire(&mut r, P0);
    r.expect_pending(&[(P0, "get a e\r\n"), (B2, "get a\r\n"), (B3, "get e\r\n")]);
    // One backup's hit answers its key; the other key waits for P0.
    r.reply(B2, "get a\r\n", "VALUE a 0 1\r\n1\r\nEND\r\n");
    assert!(r.answers.is_empty());
    r.fail(B3, "get e\r\n", Failure::Closed);
    assert!(r.answers.is_empty(), "e still waits for its primary");
    r.reply(
        P0,
        "get a e\r\n",
        "VALUE a 0 1\r\n1\r\nVALUE e 0 1\r\n5\r\nEND\r\n",
    );
    r.assert_done();
    assert_eq!(
        r.answer().as_deref(),
        Some("VALUE a 0 1\r\n1\r\nVALUE e 0 1\r\n5\r\nEND\r\n")
    );
}

#[test]
fn a_multi_get_key_missing_on_one_replica_waits_for_the_other() {
    let w = World::new().hedging(true);
    // The backup lacks c, the primary has it.
    let mut r = Run::start(&w, "get a c\r\n", &[RA, RA]);
    fire(&mut r, P0);
    r.reply(B2, "get a c\r\n", "VALUE a 0 1\r\n1\r\nEND\r\n");
    assert!(
        r.answers.is_empty(),
        "a miss does not answer while the primary may hit"
    );
    r.reply(
        P0,
        "get a c\r\n",
        "VALUE a 0 1\r\n1\r\nVALUE c 0 1\r\n3\r\nEND\r\n",
    );
    r.assert_done();
    assert_eq!(
        r.answer().as_deref(),
        Some("VALUE a 0 1\r\n1\r\nVALUE c 0 1\r\n3\r\nEND\r\n")
    );
    // Both lack c: a miss, and no read-through of the backup that was asked.
    let mut r = Run::start(&w, "get a c\r\n", &[RA, RA]);
    fire(&mut r, P0);
    r.reply(P0, "get a c\r\n", "VALUE a 0 1\r\n1\r\nEND\r\n");
    r.reply(B2, "get a c\r\n", "VALUE a 0 1\r\n1\r\nEND\r\n");
    r.assert_done();
    assert_eq!(r.answer().as_deref(), Some("VALUE a 0 1\r\n1\r\nEND\r\n"));
    assert_eq!(
        r.counts(),
        [("cmd_get", 2), ("get_hits", 1), ("get_misses", 1)]
    );
}

#[test]
fn a_multi_get_part_that_fails_while_hedged_is_not_retried_where_the_hedge_asked() {
    let w = World::new().hedging(true);
    let mut r = Run::start(&w, "get a c\r\n", &[RA, RA]);
    fire(&mut r, P0);
    r.fail(P0, "get a c\r\n", Failure::Timeout);
    assert!(r.answers.is_empty(), "the hedge is still out");
    r.reply(B2, "get a c\r\n", "VALUE c 0 1\r\n3\r\nEND\r\n");
    r.assert_done();
    assert_eq!(r.answer().as_deref(), Some("VALUE c 0 1\r\n3\r\nEND\r\n"));
    // A hedge the budget refused leaves the keys to the usual failover.
    let mut r = Run::start(&w, "get a c\r\n", &[RA, RA]);
    r.refuse_hedges = true;
    fire(&mut r, P0);
    r.fail(P0, "get a c\r\n", Failure::Timeout);
    r.expect_pending(&[(B2, "get a c\r\n")]);
    r.reply(B2, "get a c\r\n", "VALUE a 0 1\r\n1\r\nEND\r\n");
    r.assert_done();
    assert_eq!(r.failovers, [P0, P0]);
}
