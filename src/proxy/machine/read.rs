//! Reads: get/gets/gat/gats of one key and of several, and mg/me.
//!
//! A read goes to the key's primary; on an error or a timeout the same
//! request goes to the backup (a failover). A miss on a primary that answered
//! is read through from the backup (`mg v f t c`), and a hit found there is
//! repaired into the primary by a detached [`super::copy`] machine.
//!
//! While a migration window is open, a get/gets/gat/gats that still misses
//! is read the same way from the servers earlier placements put the key on
//! (newest first, each once, only while up); a hit there is answered and
//! copied to the primary with `add`, by the same copy machine.

use bytes::{Bytes, BytesMut};

use super::{
    one, server_error, Answer, CallError, CallId, ClientRequest, Cx, Effect, Machine, MetaItem,
    Replicas, Reply, Work,
};
use crate::metrics::ReadThrough;
use crate::protocol::compose::{self, compose_key_command, compose_value_line};
use crate::protocol::{frame_response, Expect, Framed, Status, Verb};
use crate::proxy::PartReply;
use crate::route::Owners;
use crate::stats::Counter;
use crate::upstream::ServerId;

fn is_miss(frame: &[u8]) -> bool {
    frame.starts_with(b"END")
}

fn is_touch(verb: Verb) -> bool {
    matches!(verb, Verb::Gat | Verb::Gats)
}

/// gat/gats touch the item: the backups' copies get the same new exptime.
/// Loose calls: nobody uses their replies.
fn touch_backups(
    req: &ClientRequest,
    replicas: impl IntoIterator<Item = Replicas>,
    cx: &mut Cx<'_>,
) {
    if !is_touch(req.r.verb) {
        return;
    }
    for (k, rep) in req.keys().iter().zip(replicas) {
        let key = req.bytes.get(k.clone()).unwrap_or_default();
        if let Some(b) = rep.backup.filter(|b| cx.is_up(*b)) {
            let mut line = BytesMut::with_capacity(key.len() + 24);
            compose_key_command(&mut line, b"touch", key, Some(req.r.exptime));
            cx.send_loose(b, [line.freeze(), Bytes::new()], Expect::Line);
        }
    }
}

/// Ask `backup` for `key` with its flags, TTL and cas (and the gat's new
/// exptime). `None` when the backup is out.
fn send_read_through(
    req: &ClientRequest,
    key: &[u8],
    backup: ServerId,
    cx: &mut Cx<'_>,
) -> Option<CallId> {
    let mut flags = BytesMut::with_capacity(32);
    flags.extend_from_slice(b"v f t c");
    if is_touch(req.r.verb) {
        flags.extend_from_slice(b" T");
        compose::put_i64(&mut flags, req.r.exptime);
    }
    let mut line = BytesMut::with_capacity(key.len() + 40);
    compose::compose_meta_get(&mut line, key, &flags);
    cx.send_up(backup, [line.freeze(), Bytes::new()], Expect::Meta)
}

/// Where a read-through asks: the key's backup, or a server an earlier
/// placement put it on (a migration window's old owner).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Source {
    Backup(ServerId),
    Earlier(ServerId),
}

impl Source {
    fn server(self) -> ServerId {
        match self {
            Source::Backup(s) | Source::Earlier(s) => s,
        }
    }

    /// Count how a read-through from here ended.
    fn count(self, how: ReadThrough, cx: &mut Cx<'_>) {
        match self {
            Source::Backup(_) => cx.read_through(how),
            Source::Earlier(_) if how == ReadThrough::Hit => cx.count(Counter::MigrationHits),
            Source::Earlier(_) => cx.count(Counter::MigrationMisses),
        }
    }
}

/// A migration window's earlier owners of one key, asked one at a time:
/// looked up only once the key has missed everywhere else.
#[derive(Clone, Copy, Debug, Default)]
struct Lookback {
    owners: Option<Owners>,
    next: u8,
}

impl Lookback {
    /// The next earlier owner of `key` that is in service.
    fn next(&mut self, key: &[u8], rep: Replicas, cx: &Cx<'_>) -> Option<ServerId> {
        let owners = *self
            .owners
            .get_or_insert_with(|| cx.view.earlier_owners(key, false, rep));
        while let Some(&o) = owners.as_slice().get(usize::from(self.next)) {
            self.next += 1;
            if cx.is_up(ServerId(o)) {
                return Some(ServerId(o));
            }
        }
        None
    }
}

/// A read-through's answer from `from`: on a hit, the VALUE line and data
/// block in the client's retrieval form, and a copy of the item into the
/// primary is spawned (a repair from the backup, a migration from an
/// earlier owner).
fn read_through_hit(
    req: &ClientRequest,
    key: Bytes,
    primary: ServerId,
    from: Source,
    r: Result<Reply, CallError>,
    cx: &mut Cx<'_>,
) -> Option<[Bytes; 2]> {
    let reply = match r {
        Ok(reply) => reply,
        Err(_) => {
            from.count(ReadThrough::Error, cx);
            return None;
        }
    };
    let Some(item) = MetaItem::parse(&reply) else {
        let how = if reply.status == Status::MetaEn {
            ReadThrough::Miss
        } else {
            ReadThrough::Error
        };
        from.count(how, cx);
        return None;
    };
    from.count(ReadThrough::Hit, cx);
    let cas = matches!(req.r.verb, Verb::Gets | Verb::Gats).then_some(item.cas);
    let mut head = BytesMut::with_capacity(key.len() + 48);
    compose_value_line(&mut head, &key, item.flags, item.data_len, cas);
    let block = item.block.clone();
    if let Source::Backup(_) = from {
        cx.count(Counter::Repairs);
    }
    cx.fx.push(Effect::Spawn(Box::new(Machine::copy_item_later(
        from.server(),
        primary,
        key,
        item,
    ))));
    Some([head.freeze(), block])
}

/// get/gets/gat/gats of one key.
#[derive(Debug)]
pub(super) struct GetOne {
    req: ClientRequest,
    rep: Replicas,
    lookback: Lookback,
    hedge: HedgeState,
    stage: GetStage,
}

/// Where a `get`'s hedge is (see [`super::Hedge`]): a `get` whose primary
/// is late goes to the backup too, and the first hit answers; a miss from
/// one replica waits for the other. Only `get`: the backup's cas differs
/// from the primary's (gets), and gat touches.
#[derive(Debug)]
enum HedgeState {
    /// Not hedged, or no longer.
    Off,
    /// Waiting for the primary's hedge delay.
    Armed(CallId),
    /// On the backup too.
    Sent(CallId),
    /// The backup answered a miss (its reply).
    Missed(Bytes),
}

#[derive(Debug)]
enum GetStage {
    /// The request on the primary.
    Primary(CallId),
    /// The same request on the backup; `failed` is the primary's error.
    Backup {
        call: CallId,
        failed: Option<CallError>,
    },
    /// The primary missed: `mg` on `from`; `miss` is the primary's reply.
    ReadThrough {
        call: CallId,
        miss: Bytes,
        from: Source,
    },
    /// The primary missed while the hedge on the backup is out: its answer
    /// decides.
    AwaitHedge {
        miss: Bytes,
    },
    /// Answered by the hedge; the primary's late reply is still due.
    Abandoned(CallId),
    Done,
}

impl GetOne {
    pub(super) fn start(req: ClientRequest, replicas: &[Replicas], cx: &mut Cx<'_>) -> Work {
        let Some(&rep) = replicas.first() else {
            cx.count(Counter::ServerErrors);
            cx.answer(one(compose::NO_SERVER));
            return Work::Done;
        };
        let mut m = GetOne {
            req,
            rep,
            lookback: Lookback::default(),
            hedge: HedgeState::Off,
            stage: GetStage::Done,
        };
        if cx.is_up(rep.primary) {
            let call = cx.send(
                rep.primary,
                [m.req.bytes.clone(), Bytes::new()],
                Expect::Values,
            );
            m.stage = GetStage::Primary(call);
            let hedgeable = m.req.r.verb == Verb::Get
                && cx.view.hedging()
                && rep.backup.is_some_and(|b| cx.is_up(b));
            if hedgeable {
                m.hedge = HedgeState::Armed(cx.hedge_timer(rep.primary));
            }
        } else {
            m.try_backup(None, cx);
        }
        if m.is_done() {
            return Work::Done;
        }
        Work::GetOne(m)
    }

    pub(super) fn on_outcome(
        &mut self,
        call: CallId,
        r: Result<Reply, CallError>,
        cx: &mut Cx<'_>,
    ) {
        match std::mem::replace(&mut self.stage, GetStage::Done) {
            GetStage::Primary(c) if c == call => self.on_primary(r, cx),
            GetStage::Backup { call: c, failed } if c == call => self.on_backup(failed, r, cx),
            GetStage::ReadThrough {
                call: c,
                miss,
                from,
            } if c == call => self.on_read_through(miss, from, r, cx),
            GetStage::Abandoned(c) if c == call => {}
            other => {
                self.stage = other;
                self.on_hedge(call, r, cx);
            }
        }
    }

    /// The hedge's timer or its read on the backup.
    fn on_hedge(&mut self, call: CallId, r: Result<Reply, CallError>, cx: &mut Cx<'_>) {
        match std::mem::replace(&mut self.hedge, HedgeState::Off) {
            HedgeState::Armed(t) if t == call => {
                // Late: the primary has not answered yet.
                let waiting = matches!(self.stage, GetStage::Primary(_));
                if let Some(b) = self.rep.backup.filter(|b| waiting && cx.is_up(*b)) {
                    let parts = [self.req.bytes.clone(), Bytes::new()];
                    let h = cx.hedge_send(b, self.rep.primary, parts, Expect::Values);
                    self.hedge = HedgeState::Sent(h);
                }
            }
            HedgeState::Sent(h) if h == call => {
                let hit = matches!(&r, Ok(x) if !x.status.is_error() && !is_miss(&x.frame));
                match (std::mem::replace(&mut self.stage, GetStage::Done), r) {
                    // The backup's hit comes first: it answers, and the
                    // primary's late reply is waited for and dropped.
                    (GetStage::Primary(c), Ok(x)) if hit => {
                        cx.count(Counter::GetHits);
                        cx.fx.push(Effect::Hedge(super::Hedge::Won {
                            primary: self.rep.primary,
                        }));
                        cx.answer(Answer::One(x.frame));
                        self.stage = GetStage::Abandoned(c);
                    }
                    // The primary missed before: the backup's answer decides.
                    (GetStage::AwaitHedge { .. }, Ok(x)) if hit => {
                        cx.count(Counter::GetHits);
                        cx.answer(Answer::One(x.frame));
                    }
                    (GetStage::AwaitHedge { miss }, _) => self.read_through(None, miss, cx),
                    // A miss waits for the primary (hedging never turns a
                    // hit into a miss); an error is no answer; after the
                    // answer, nothing.
                    (stage, r) => {
                        let waiting = matches!(stage, GetStage::Primary(_));
                        self.stage = stage;
                        match r {
                            Ok(x) if waiting && !x.status.is_error() => {
                                self.hedge = HedgeState::Missed(x.frame)
                            }
                            _ => {}
                        }
                    }
                }
            }
            other => self.hedge = other,
        }
    }

    fn on_primary(&mut self, r: Result<Reply, CallError>, cx: &mut Cx<'_>) {
        match r {
            Ok(r) if r.status.is_error() || !is_miss(&r.frame) => {
                cx.count(if r.status.is_error() {
                    Counter::ServerErrors
                } else {
                    Counter::GetHits
                });
                touch_backups(&self.req, [self.rep], cx);
                cx.answer(Answer::One(r.frame));
            }
            Ok(r) => match std::mem::replace(&mut self.hedge, HedgeState::Off) {
                // The backup is being asked already: its answer decides.
                HedgeState::Sent(h) => {
                    self.hedge = HedgeState::Sent(h);
                    self.stage = GetStage::AwaitHedge { miss: r.frame };
                }
                // The backup missed too: on to the earlier owners, if any.
                HedgeState::Missed(_) => self.read_through(None, r.frame, cx),
                other => {
                    // (A timer still armed is waited for, and does nothing.)
                    self.hedge = other;
                    // A miss on the primary: the backup may hold the key
                    // (the primary was flushed on rejoin, or evicted it).
                    let b = self.rep.backup.filter(|b| cx.is_up(*b));
                    self.read_through(b.map(Source::Backup), r.frame, cx);
                }
            },
            Err(e) => match std::mem::replace(&mut self.hedge, HedgeState::Off) {
                // The hedge is the failover read already.
                HedgeState::Sent(h) => {
                    self.stage = GetStage::Backup {
                        call: h,
                        failed: Some(e),
                    }
                }
                HedgeState::Missed(miss) => {
                    cx.failover(self.rep.primary);
                    cx.count(Counter::GetMisses);
                    cx.answer(Answer::One(miss));
                }
                other => {
                    self.hedge = other;
                    self.try_backup(Some(e), cx);
                }
            },
        }
    }

    fn try_backup(&mut self, failed: Option<CallError>, cx: &mut Cx<'_>) {
        let Some(b) = self.rep.backup else {
            cx.count(Counter::ServerErrors);
            cx.answer(server_error(
                failed.unwrap_or(CallError::no_call(self.rep.primary, Expect::Values)),
            ));
            return;
        };
        let parts = [self.req.bytes.clone(), Bytes::new()];
        match cx.send_up(b, parts, Expect::Values) {
            Some(call) => self.stage = GetStage::Backup { call, failed },
            None => self.on_backup(failed, Err(CallError::no_call(b, Expect::Values)), cx),
        }
    }

    fn on_backup(
        &mut self,
        failed: Option<CallError>,
        r: Result<Reply, CallError>,
        cx: &mut Cx<'_>,
    ) {
        match r {
            Ok(r) => {
                cx.failover(self.rep.primary);
                cx.count(if is_miss(&r.frame) {
                    Counter::GetMisses
                } else {
                    Counter::GetHits
                });
                cx.answer(Answer::One(r.frame));
            }
            Err(e) => {
                cx.count(Counter::ServerErrors);
                cx.answer(server_error(failed.unwrap_or(e)));
            }
        }
    }

    /// Ask `first`, then the earlier owners, for a key the primary
    /// missed (`miss`, its reply); the miss is answered when nobody has it.
    fn read_through(&mut self, first: Option<Source>, miss: Bytes, cx: &mut Cx<'_>) {
        let key = self.req.retrieval_key(0);
        let mut first = first;
        let (lookback, rep) = (&mut self.lookback, self.rep);
        let mut next = |cx: &Cx<'_>| {
            first
                .take()
                .or_else(|| lookback.next(&key, rep, cx).map(Source::Earlier))
        };
        // Bounded by the earlier owners (a handful).
        while let Some(src) = next(cx) {
            if let Some(call) = send_read_through(&self.req, &key, src.server(), cx) {
                self.stage = GetStage::ReadThrough {
                    call,
                    miss,
                    from: src,
                };
                return;
            }
        }
        cx.count(Counter::GetMisses);
        cx.answer(Answer::One(miss));
    }

    fn on_read_through(
        &mut self,
        miss: Bytes,
        from: Source,
        r: Result<Reply, CallError>,
        cx: &mut Cx<'_>,
    ) {
        let key = self.req.retrieval_key(0);
        let hit = read_through_hit(&self.req, key, self.rep.primary, from, r, cx);
        match hit {
            Some([head, block]) => {
                cx.count(Counter::GetHits);
                if let Source::Backup(_) = from {
                    cx.count(Counter::ReadThroughHits);
                }
                cx.answer(Answer::Many(vec![
                    head,
                    block,
                    Bytes::from_static(compose::END),
                ]));
            }
            // Not there: the next earlier owner, if any.
            None => self.read_through(None, miss, cx),
        }
    }

    pub(super) fn is_done(&self) -> bool {
        // A hedge still out is waited for; a timer is not (the engine
        // drops the timers of finished requests unfired).
        matches!(self.stage, GetStage::Done) && !matches!(self.hedge, HedgeState::Sent(_))
    }
}

/// One server's reply to part of a multi-get, framed into its VALUE blocks
/// (`n`: how many are expected); `None` for an error or a garbled reply.
fn values_part(r: Result<Reply, CallError>, n: usize) -> Option<PartReply> {
    let frame = match r {
        Ok(r) if !r.status.is_error() => r.frame,
        _ => return None,
    };
    let mut items = Vec::with_capacity(n);
    matches!(
        frame_response(Expect::Values, &frame, usize::MAX, &mut items),
        Ok(Framed::Complete { .. })
    )
    .then_some(PartReply {
        frame,
        items,
        cursor: 0,
    })
}

/// A multi-key retrieval: split per server, sent in parallel, merged back
/// in the client's key order.
#[derive(Debug)]
pub(super) struct GetMany {
    req: ClientRequest,
    /// Per key, in request order (one allocation for all of them).
    keys: Vec<KeyState>,
    /// Servers that failed in the first round.
    failed: Vec<ServerId>,
    /// Calls in flight: id, server (fetch rounds) or key index (read-through).
    calls: Vec<(CallId, u32)>,
    /// Hedge timers and hedged reads of the first round.
    hedges: Vec<PartHedge>,
    /// Parts whose keys hedges answered: their late replies are waited for
    /// and dropped.
    late: Vec<CallId>,
    stage: ManyStage,
}

/// A multi-get's hedge of one server's part (see [`super::Hedge`]): a timer
/// per server asked in the first round; when it fires with that part still
/// out, the part's keys go to their backups too, one call per backup. A hit
/// from a backup answers its key; a key missing there waits for its
/// primary. The round ends when every part and every hedged read is back,
/// or a part's keys have all been answered by hedges (its late reply is
/// dropped).
#[derive(Debug, Clone, Copy)]
struct PartHedge {
    call: CallId,
    /// The server whose part is hedged.
    primary: ServerId,
    /// `None`: the timer; `Some`: the read on that backup.
    backup: Option<ServerId>,
}

/// One key of a multi-key retrieval.
#[derive(Debug)]
struct KeyState {
    rep: Replicas,
    /// Where the key is asked first: its primary, or its backup when the primary is out.
    target: Option<ServerId>,
    /// The key's backup in service, when it was asked on its primary.
    backup_of: Option<ServerId>,
    /// Where it is asked in the retry round (its first server failed).
    retry: Option<ServerId>,
    /// Its VALUE block, once found.
    found: Option<Bytes>,
    /// A read-through hit: VALUE line and data block.
    through: Option<[Bytes; 2]>,
    /// Its earlier owners, while a migration window is open.
    lookback: Lookback,
    /// Where its read-through in flight asks.
    asking: Option<Source>,
    /// The backup a hedge asked it on.
    hedged: Option<ServerId>,
    /// That backup answered without it (no read-through needed).
    backup_missed: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ManyStage {
    /// Each server gets its keys, in parallel.
    First,
    /// Keys whose server failed go to their backups.
    Retry,
    /// Misses on primaries that answered are read through from the backups.
    ReadThrough,
    /// Keys missing still are read from their earlier owners, a round per
    /// owner (migration window).
    Migrate,
    Done,
}

impl GetMany {
    pub(super) fn start(req: ClientRequest, replicas: &[Replicas], cx: &mut Cx<'_>) -> Work {
        let n = req.keys().len();
        if replicas.len() < n {
            cx.count(Counter::ServerErrors);
            cx.answer(one(compose::NO_SERVER));
            return Work::Done;
        }
        let mut keys = Vec::with_capacity(n);
        for &rep in &replicas[..n] {
            let b = rep.backup.filter(|b| cx.is_up(*b));
            let (target, backup_of) = if cx.is_up(rep.primary) {
                (Some(rep.primary), b)
            } else {
                if b.is_some() {
                    cx.failover(rep.primary);
                }
                (b, None)
            };
            keys.push(KeyState {
                rep,
                target,
                backup_of,
                retry: None,
                found: None,
                through: None,
                lookback: Lookback::default(),
                asking: None,
                hedged: None,
                backup_missed: false,
            });
        }
        let mut m = Box::new(GetMany {
            req,
            keys,
            failed: Vec::new(),
            calls: Vec::new(),
            hedges: Vec::new(),
            late: Vec::new(),
            stage: ManyStage::First,
        });
        m.fetch(|k| k.target, cx);
        if m.req.r.verb == Verb::Get && cx.view.hedging() {
            m.arm_hedges(cx);
        }
        m.advance(cx);
        if m.is_done() {
            return Work::Done;
        }
        Work::GetMany(m)
    }

    /// Ask every server that `asked` names for its keys at once, in the
    /// order the servers first appear among the keys.
    fn fetch(&mut self, asked: fn(&KeyState) -> Option<ServerId>, cx: &mut Cx<'_>) {
        let whole = self.keys.iter().all(|k| asked(k).is_some())
            && self.keys.windows(2).all(|w| asked(&w[0]) == asked(&w[1]));
        // Servers already asked: a bit per server id below 128 (no
        // allocation, linear in the keys); larger fleets look back.
        let mut seen: u128 = 0;
        for i in 0..self.keys.len() {
            let Some(s) = asked(&self.keys[i]) else {
                continue;
            };
            let first = match 1u128.checked_shl(s.0) {
                Some(bit) => {
                    let new = seen & bit == 0;
                    seen |= bit;
                    new
                }
                None => !self.keys[..i].iter().any(|k| asked(k) == Some(s)),
            };
            if !first {
                continue;
            }
            let line = if whole {
                self.req.bytes.clone()
            } else {
                self.part_line(|k| asked(k) == Some(s))
            };
            match cx.send_up(s, [line, Bytes::new()], Expect::Values) {
                Some(call) => self.calls.push((call, s.0)),
                None => self.part_failed(s),
            }
        }
    }

    /// The retrieval line for the keys `asked` picks, in request order.
    fn part_line(&self, asked: impl Fn(&KeyState) -> bool) -> Bytes {
        let mut line = BytesMut::with_capacity(64);
        let keys = self
            .req
            .keys()
            .iter()
            .zip(&self.keys)
            .filter(|(_, k)| asked(k))
            .map(|(r, _)| self.req.bytes.get(r.clone()).unwrap_or_default());
        compose::compose_retrieval(&mut line, self.req.r.verb, self.req.r.exptime, keys);
        line.freeze()
    }

    fn part_failed(&mut self, s: ServerId) {
        if self.stage == ManyStage::First {
            self.failed.push(s);
        }
    }

    /// Take one server's reply to its part: its VALUE blocks for the keys
    /// that were asked there in this round.
    fn part_done(&mut self, s: ServerId, r: Result<Reply, CallError>) {
        let first = self.stage == ManyStage::First;
        let asked = |k: &KeyState| if first { k.target } else { k.retry };
        let n = self.keys.iter().filter(|k| asked(k) == Some(s)).count();
        let Some(mut part) = values_part(r, n) else {
            return self.part_failed(s);
        };
        for (k, r) in self.keys.iter_mut().zip(self.req.keys()) {
            if asked(k) == Some(s) {
                // Taken even when a hedge found it: the blocks come in order.
                let got = part.take(self.req.bytes.get(r.clone()).unwrap_or_default());
                if k.found.is_none() {
                    k.found = got;
                }
            }
        }
    }

    /// A hedge timer per server asked in the first round for a key whose
    /// backup is in service.
    fn arm_hedges(&mut self, cx: &mut Cx<'_>) {
        for i in 0..self.calls.len() {
            let s = ServerId(self.calls[i].1);
            if self
                .keys
                .iter()
                .any(|k| k.target == Some(s) && k.backup_of.is_some())
            {
                let call = cx.hedge_timer(s);
                self.hedges.push(PartHedge {
                    call,
                    primary: s,
                    backup: None,
                });
            }
        }
    }

    /// Whether `primary`'s first-round part is still out.
    fn part_out(&self, primary: ServerId) -> bool {
        self.stage == ManyStage::First && self.calls.iter().any(|&(_, s)| s == primary.0)
    }

    /// `primary`'s hedge delay passed: if its part is still out, send its
    /// keys that have a backup in service to those backups.
    fn hedge_part(&mut self, primary: ServerId, cx: &mut Cx<'_>) {
        if !self.part_out(primary) {
            return;
        }
        // The backup a key of this part still waiting would be hedged to.
        let to = |k: &KeyState| {
            let wanted = k.target == Some(primary) && k.found.is_none() && k.hedged.is_none();
            k.backup_of.filter(|_| wanted)
        };
        // Bounded by the keys: each pass sends one backup's keys and marks them.
        while let Some(b) = self.keys.iter().filter_map(to).find(|b| cx.is_up(*b)) {
            let line = self.part_line(|k| to(k) == Some(b));
            for k in self.keys.iter_mut().filter(|k| to(k) == Some(b)) {
                k.hedged = Some(b);
            }
            let call = cx.hedge_send(b, primary, [line, Bytes::new()], Expect::Values);
            self.hedges.push(PartHedge {
                call,
                primary,
                backup: Some(b),
            });
        }
    }

    /// A hedged read of `primary`'s keys on `backup` came back: its hits
    /// answer their keys; once every key of the part is answered, the part
    /// itself is given up.
    fn hedge_done(
        &mut self,
        primary: ServerId,
        backup: ServerId,
        r: Result<Reply, CallError>,
        cx: &mut Cx<'_>,
    ) {
        let Some(mut part) = values_part(r, 0) else {
            return;
        };
        let mut won = false;
        for (k, r) in self.keys.iter_mut().zip(self.req.keys()) {
            if k.target != Some(primary) || k.hedged != Some(backup) {
                continue;
            }
            match part.take(self.req.bytes.get(r.clone()).unwrap_or_default()) {
                Some(block) if k.found.is_none() => {
                    k.found = Some(block);
                    won = true;
                }
                Some(_) => {}
                None => k.backup_missed = true,
            }
        }
        if !won || !self.part_out(primary) {
            return;
        }
        cx.fx.push(Effect::Hedge(super::Hedge::Won { primary }));
        let answered = self
            .keys
            .iter()
            .all(|k| k.target != Some(primary) || k.found.is_some());
        if answered {
            // Bounded by the calls of the round.
            while let Some(i) = self.calls.iter().position(|&(_, s)| s == primary.0) {
                let (c, _) = self.calls.swap_remove(i);
                self.late.push(c);
            }
        }
    }

    /// Whether the current round has every outcome (hedged reads included).
    fn round_over(&self) -> bool {
        self.calls.is_empty() && self.hedges.iter().all(|h| h.backup.is_none())
    }

    pub(super) fn on_outcome(
        &mut self,
        call: CallId,
        r: Result<Reply, CallError>,
        cx: &mut Cx<'_>,
    ) {
        if let Some(i) = self.late.iter().position(|&c| c == call) {
            self.late.swap_remove(i);
            return;
        }
        if let Some(pos) = self.hedges.iter().position(|h| h.call == call) {
            let h = self.hedges.swap_remove(pos);
            match h.backup {
                None => self.hedge_part(h.primary, cx),
                Some(b) => self.hedge_done(h.primary, b, r, cx),
            }
            self.advance(cx);
            return;
        }
        let Some(pos) = self.calls.iter().position(|(c, _)| *c == call) else {
            return;
        };
        let (_, what) = self.calls.swap_remove(pos);
        match self.stage {
            ManyStage::First | ManyStage::Retry => self.part_done(ServerId(what), r),
            ManyStage::ReadThrough | ManyStage::Migrate => {
                let i = what as usize;
                let key = self.req.retrieval_key(i);
                let asked = self
                    .keys
                    .get_mut(i)
                    .and_then(|k| Some((k.target?, k.asking.take()?)));
                if let Some((p, from)) = asked {
                    let hit = read_through_hit(&self.req, key, p, from, r, cx);
                    if hit.is_some() && matches!(from, Source::Backup(_)) {
                        cx.count(Counter::ReadThroughHits);
                    }
                    if let Some(k) = self.keys.get_mut(i) {
                        k.through = hit;
                    }
                }
            }
            ManyStage::Done => {}
        }
        self.advance(cx);
    }

    /// Move to the next round once the current one has every outcome.
    fn advance(&mut self, cx: &mut Cx<'_>) {
        while self.round_over() && self.stage != ManyStage::Done {
            match self.stage {
                ManyStage::First => {
                    self.stage = ManyStage::Retry;
                    if self.failed.is_empty() {
                        continue;
                    }
                    let mut any = false;
                    for k in &mut self.keys {
                        // A key whose first server failed goes to its backup
                        // (unless a hedge asked there already).
                        let asked = k.found.is_some() || k.backup_missed;
                        let t = k.target.filter(|t| !asked && self.failed.contains(t));
                        if let (Some(t), Some(b)) = (t, k.backup_of) {
                            k.retry = Some(b);
                            any = true;
                            cx.failover(t);
                        }
                    }
                    if any {
                        self.fetch(|k| k.retry, cx);
                    }
                }
                ManyStage::Retry => {
                    self.stage = ManyStage::ReadThrough;
                    for i in 0..self.keys.len() {
                        let k = &self.keys[i];
                        let (Some(p), Some(b)) = (k.target, k.backup_of) else {
                            continue;
                        };
                        if k.found.is_some() || k.backup_missed || self.failed.contains(&p) {
                            continue;
                        }
                        let key = self.req.retrieval_key(i);
                        if let Some(call) = send_read_through(&self.req, &key, b, cx) {
                            self.calls.push((call, i as u32));
                            self.keys[i].asking = Some(Source::Backup(b));
                        }
                    }
                }
                ManyStage::ReadThrough | ManyStage::Migrate => {
                    // Another round while some key that missed on its
                    // primary has an earlier owner left to ask.
                    self.stage = ManyStage::Migrate;
                    self.migrate_round(cx);
                    if self.calls.is_empty() {
                        self.stage = ManyStage::Done;
                        self.finish(cx);
                    }
                }
                ManyStage::Done => {}
            }
        }
    }

    /// Ask each key still missing after its primary answered its next
    /// earlier owner in service (none without a migration window).
    fn migrate_round(&mut self, cx: &mut Cx<'_>) {
        for i in 0..self.keys.len() {
            let k = &mut self.keys[i];
            let missing = k.found.is_none() && k.through.is_none();
            if !missing || k.target != Some(k.rep.primary) || self.failed.contains(&k.rep.primary) {
                continue;
            }
            let key = self.req.retrieval_key(i);
            // Bounded by the key's earlier owners.
            while let Some(o) = k.lookback.next(&key, k.rep, cx) {
                if let Some(call) = send_read_through(&self.req, &key, o, cx) {
                    self.calls.push((call, i as u32));
                    k.asking = Some(Source::Earlier(o));
                    break;
                }
            }
        }
    }

    fn finish(&mut self, cx: &mut Cx<'_>) {
        let n = self.keys.len();
        let mut out = Vec::with_capacity(n + 1);
        let mut hits = 0u64;
        for k in &mut self.keys {
            if let Some(block) = k.found.take() {
                out.push(block);
                hits += 1;
            } else if let Some(pair) = k.through.take() {
                out.extend(pair);
                hits += 1;
            }
        }
        cx.count_n(Counter::GetHits, hits);
        cx.count_n(Counter::GetMisses, n as u64 - hits);
        touch_backups(&self.req, self.keys.iter().map(|k| k.rep), cx);
        out.push(Bytes::from_static(compose::END));
        cx.answer(Answer::Many(out));
    }

    pub(super) fn is_done(&self) -> bool {
        // Late parts are waited for, timers not (see `GetOne`).
        self.stage == ManyStage::Done && self.round_over() && self.late.is_empty()
    }
}

/// mg and me: the primary, the backup on failure, and for `mg` a miss read
/// through from the backup (without a repair).
#[derive(Debug)]
pub(super) struct MetaRead {
    req: ClientRequest,
    rep: Replicas,
    parts: [Bytes; 2],
    hedge: MetaHedge,
    stage: MetaStage,
}

/// Where an `mg`'s hedge is (as [`HedgeState`] for a get).
#[derive(Debug)]
enum MetaHedge {
    Off,
    Armed(CallId),
    Sent(CallId),
    /// The backup answered `EN` (its reply).
    Missed(Reply),
}

/// An `mg` that reads without side effects and whose answer does not
/// depend on the replica: no touch (`T`), vivify (`N`), recache (`R`) or
/// cas (`c`, `E`: the backup's cas differs from the primary's).
fn meta_hedgeable(req: &ClientRequest) -> bool {
    let m = req.r.meta;
    req.r.verb == Verb::MetaGet && ![b'T', b'N', b'R', b'c', b'E'].iter().any(|f| m.has(*f))
}

/// An `mg` reply that found the item.
fn meta_hit(r: &Reply) -> bool {
    matches!(r.status, Status::MetaValue | Status::MetaHd)
}

#[derive(Debug)]
enum MetaStage {
    Primary(CallId),
    /// The primary missed; the same request on the backup.
    ReadThrough {
        call: CallId,
        miss: Reply,
    },
    /// The primary failed (or is out); the backup answers.
    Backup {
        call: CallId,
        failed: Option<CallError>,
    },
    /// The primary missed while the hedge is out: its answer decides.
    AwaitHedge {
        miss: Reply,
    },
    /// Answered by the hedge; the primary's late reply is still due.
    Abandoned(CallId),
    Done,
}

impl MetaRead {
    pub(super) fn start(req: ClientRequest, replicas: &[Replicas], cx: &mut Cx<'_>) -> Work {
        let Some(&rep) = replicas.first() else {
            cx.answer(one(compose::NO_SERVER));
            return Work::Done;
        };
        let parts = req.upstream_parts();
        let mut m = MetaRead {
            req,
            rep,
            parts,
            hedge: MetaHedge::Off,
            stage: MetaStage::Done,
        };
        if cx.is_up(rep.primary) {
            let call = cx.send(rep.primary, m.parts.clone(), Expect::Meta);
            m.stage = MetaStage::Primary(call);
            let hedgeable = meta_hedgeable(&m.req)
                && cx.view.hedging()
                && rep.backup.is_some_and(|b| cx.is_up(b));
            if hedgeable {
                m.hedge = MetaHedge::Armed(cx.hedge_timer(rep.primary));
            }
        } else {
            m.try_backup(None, cx);
        }
        if m.is_done() {
            return Work::Done;
        }
        Work::Meta(m)
    }

    pub(super) fn on_outcome(
        &mut self,
        call: CallId,
        r: Result<Reply, CallError>,
        cx: &mut Cx<'_>,
    ) {
        match std::mem::replace(&mut self.stage, MetaStage::Done) {
            MetaStage::Primary(c) if c == call => self.on_primary(r, cx),
            MetaStage::ReadThrough { call: c, miss } if c == call => {
                let a = match r {
                    Ok(rb) if matches!(rb.status, Status::MetaValue | Status::MetaHd) => {
                        cx.count(Counter::ReadThroughHits);
                        cx.read_through(ReadThrough::Hit);
                        self.req.reply_out(rb)
                    }
                    Ok(rb) if rb.status == Status::MetaEn => {
                        cx.read_through(ReadThrough::Miss);
                        self.req.reply_out(miss)
                    }
                    _ => {
                        cx.read_through(ReadThrough::Error);
                        self.req.reply_out(miss)
                    }
                };
                cx.answer(a);
            }
            MetaStage::Backup { call: c, failed } if c == call => self.on_backup(failed, r, cx),
            MetaStage::Abandoned(c) if c == call => {}
            other => {
                self.stage = other;
                self.on_hedge(call, r, cx);
            }
        }
    }

    /// The hedge's timer or its read on the backup (see [`GetOne`]).
    fn on_hedge(&mut self, call: CallId, r: Result<Reply, CallError>, cx: &mut Cx<'_>) {
        match std::mem::replace(&mut self.hedge, MetaHedge::Off) {
            MetaHedge::Armed(t) if t == call => {
                let waiting = matches!(self.stage, MetaStage::Primary(_));
                if let Some(b) = self.rep.backup.filter(|b| waiting && cx.is_up(*b)) {
                    let h = cx.hedge_send(b, self.rep.primary, self.parts.clone(), Expect::Meta);
                    self.hedge = MetaHedge::Sent(h);
                }
            }
            MetaHedge::Sent(h) if h == call => {
                let hit = matches!(&r, Ok(x) if meta_hit(x));
                match (std::mem::replace(&mut self.stage, MetaStage::Done), r) {
                    (MetaStage::Primary(c), Ok(x)) if hit => {
                        cx.fx.push(Effect::Hedge(super::Hedge::Won {
                            primary: self.rep.primary,
                        }));
                        let a = self.req.reply_out(x);
                        cx.answer(a);
                        self.stage = MetaStage::Abandoned(c);
                    }
                    (MetaStage::AwaitHedge { .. }, Ok(x)) if hit => {
                        let a = self.req.reply_out(x);
                        cx.answer(a);
                    }
                    (MetaStage::AwaitHedge { miss }, _) => {
                        let a = self.req.reply_out(miss);
                        cx.answer(a);
                    }
                    (stage, r) => {
                        let waiting = matches!(stage, MetaStage::Primary(_));
                        self.stage = stage;
                        match r {
                            Ok(x) if waiting && x.status == Status::MetaEn => {
                                self.hedge = MetaHedge::Missed(x)
                            }
                            _ => {}
                        }
                    }
                }
            }
            other => self.hedge = other,
        }
    }

    fn on_primary(&mut self, r: Result<Reply, CallError>, cx: &mut Cx<'_>) {
        match r {
            Ok(r) => {
                let miss = r.status == Status::MetaEn;
                match std::mem::replace(&mut self.hedge, MetaHedge::Off) {
                    // The backup is being asked already: its answer decides.
                    MetaHedge::Sent(h) if miss => {
                        self.hedge = MetaHedge::Sent(h);
                        self.stage = MetaStage::AwaitHedge { miss: r };
                        return;
                    }
                    // The backup missed too.
                    MetaHedge::Missed(_) if miss => {
                        let a = self.req.reply_out(r);
                        cx.answer(a);
                        return;
                    }
                    // A hit (its hedge, if out, is waited for and dropped),
                    // or no hedge answered yet.
                    MetaHedge::Missed(_) => {}
                    other => self.hedge = other,
                }
                let backup = self.rep.backup.filter(|b| cx.is_up(*b));
                if let Some(b) = backup.filter(|_| miss && self.req.r.verb == Verb::MetaGet) {
                    let call = cx.send(b, self.parts.clone(), Expect::Meta);
                    self.stage = MetaStage::ReadThrough { call, miss: r };
                    return;
                }
                let a = self.req.reply_out(r);
                cx.answer(a);
            }
            Err(e) => match std::mem::replace(&mut self.hedge, MetaHedge::Off) {
                // The hedge is the failover read already.
                MetaHedge::Sent(h) => {
                    self.stage = MetaStage::Backup {
                        call: h,
                        failed: Some(e),
                    }
                }
                MetaHedge::Missed(miss) => {
                    cx.failover(self.rep.primary);
                    let a = self.req.reply_out(miss);
                    cx.answer(a);
                }
                other => {
                    self.hedge = other;
                    self.try_backup(Some(e), cx);
                }
            },
        }
    }

    fn try_backup(&mut self, failed: Option<CallError>, cx: &mut Cx<'_>) {
        let Some(b) = self.rep.backup else {
            cx.answer(server_error(
                failed.unwrap_or(CallError::no_call(self.rep.primary, Expect::Meta)),
            ));
            return;
        };
        match cx.send_up(b, self.parts.clone(), Expect::Meta) {
            Some(call) => self.stage = MetaStage::Backup { call, failed },
            None => self.on_backup(failed, Err(CallError::no_call(b, Expect::Meta)), cx),
        }
    }

    fn on_backup(
        &mut self,
        failed: Option<CallError>,
        r: Result<Reply, CallError>,
        cx: &mut Cx<'_>,
    ) {
        match r {
            Ok(r) => {
                cx.failover(self.rep.primary);
                let a = self.req.reply_out(r);
                cx.answer(a);
            }
            Err(e) => cx.answer(server_error(failed.unwrap_or(e))),
        }
    }

    pub(super) fn is_done(&self) -> bool {
        // A hedge still out is waited for, a timer is not (see `GetOne`).
        matches!(self.stage, MetaStage::Done) && !matches!(self.hedge, MetaHedge::Sent(_))
    }
}
