//! Writes, by the verb's replication rule (see [`crate::proxy`]), and
//! `flush_all` to every server.
//!
//! The client's answer comes last, once the backup has converged (or has
//! been marked as having missed the write), so an acknowledged write is on
//! both replicas or recorded as missing from one.

use bytes::Bytes;

use super::{
    delete_parts_for, deleted, one, readback_parts, server_error, store_parts_for, stored,
    CallError, CallId, ClientRequest, Cx, Effect, MetaItem, Replicas, Reply, Work,
};
use crate::protocol::compose;
use crate::protocol::{Expect, Status, Verb};
use crate::proxy::{self, Replicate, WriteRule};
use crate::stats::Counter;
use crate::upstream::{Observed, ServerId};

/// The counter a write's final outcome bumps, if any.
fn write_counter(verb: Verb, st: Status) -> Option<Counter> {
    Some(match (verb, st) {
        (Verb::Delete, Status::Deleted) => Counter::DeleteHits,
        (Verb::Delete, Status::NotFound) => Counter::DeleteMisses,
        (Verb::Incr, Status::Number(_)) => Counter::IncrHits,
        (Verb::Incr, Status::NotFound) => Counter::IncrMisses,
        (Verb::Decr, Status::Number(_)) => Counter::DecrHits,
        (Verb::Decr, Status::NotFound) => Counter::DecrMisses,
        (Verb::Cas, Status::Stored) => Counter::CasHits,
        (Verb::Cas, Status::Exists) => Counter::CasBadval,
        (Verb::Cas, Status::NotFound) => Counter::CasMisses,
        (Verb::Touch, Status::Touched) => Counter::TouchHits,
        (Verb::Touch, Status::NotFound) => Counter::TouchMisses,
        (_, s) if s.is_error() => Counter::ServerErrors,
        _ => return None,
    })
}

/// One write verb (set add replace append prepend cas delete incr decr touch ms md ma).
#[derive(Debug)]
pub(super) struct Write {
    req: ClientRequest,
    rep: Replicas,
    /// The primary's health when the request decided.
    p_seen: Observed,
    /// The backup's, if there is one.
    b_seen: Option<Observed>,
    /// The request as it goes upstream.
    parts: [Bytes; 2],
    stage: Stage,
}

/// The outcome of one of a mirrored write's two calls, once it arrived.
type Slot = Option<Result<Reply, CallError>>;

#[derive(Debug)]
enum Stage {
    /// The primary is out: the backup takes the write alone.
    BackupAlone(CallId),
    /// No backup in service: the primary alone.
    PrimaryAlone(CallId),
    /// Both, in parallel.
    Mirror {
        p: CallId,
        b: CallId,
        rp: Slot,
        rb: Slot,
    },
    /// Primary-then-copy: waiting for the key's exclusive section, so that
    /// the backup gets the copies of this key's writes in the order the
    /// primary applied them (see `server::exclusive`).
    Exclusive(CallId),
    /// Primary-then-copy: the primary first.
    Primary(CallId),
    /// The primary failed: the backup decides.
    Failover(CallId),
    /// The primary said "not there": read the item back from the backup.
    RecoverRead {
        call: CallId,
        rp: Reply,
    },
    /// Put the backup's item back on the primary.
    RecoverStore {
        call: CallId,
        rp: Reply,
    },
    /// Run the command on the primary again.
    Rerun {
        call: CallId,
        rp: Reply,
    },
    /// Converge: `set` the request's item on the backup.
    SetItem {
        call: CallId,
        rp: Reply,
    },
    /// Converge: read the item back from the primary.
    CopyRead {
        call: CallId,
        rp: Reply,
    },
    /// Converge: `set` the read-back item on the backup.
    CopyStore {
        call: CallId,
        rp: Reply,
    },
    /// Converge: `delete` on the backup.
    DeleteBackup {
        call: CallId,
        rp: Reply,
    },
    Done,
}

/// A write to a key that a migration window's earlier placements put on
/// other servers: the copies there are deleted first, then the write runs
/// as usual. So an earlier owner never holds a value older than the last
/// acknowledged write: the window reads a key that missed from there, and a
/// later change may give the key back to one of them. An owner out of
/// service, or whose delete fails, has the key logged as a missed write
/// (deleted before it serves again).
#[derive(Debug)]
pub(super) struct Retire {
    req: ClientRequest,
    rep: Replicas,
    /// Deletes in flight: (call, server, its health when the request
    /// decided).
    deletes: Vec<(CallId, ServerId, Observed)>,
}

impl Retire {
    pub(super) fn start(req: ClientRequest, replicas: &[Replicas], cx: &mut Cx<'_>) -> Work {
        let Some(&rep) = replicas.first() else {
            return Write::start(req, replicas, cx);
        };
        let base64 = req.key_is_base64();
        let owners = cx.view.earlier_owners(&req.key_bytes(), base64, rep);
        if owners.is_empty() {
            return Write::start(req, replicas, cx);
        }
        let mut deletes = Vec::with_capacity(owners.as_slice().len());
        for &o in owners.as_slice() {
            let o = ServerId(o);
            let seen = cx.view.observe(o);
            if !seen.is_up() {
                cx.missed(o, seen, missed_key(&req));
                continue;
            }
            let (parts, expect) = delete_parts_for(&req.key_bytes(), base64);
            match cx.send_up(o, parts, expect) {
                Some(call) => deletes.push((call, o, seen)),
                None => cx.missed(o, seen, missed_key(&req)),
            }
        }
        cx.count_n(Counter::MigrationDeletes, deletes.len() as u64);
        if deletes.is_empty() {
            return Write::start(req, replicas, cx);
        }
        cx.fx.push(Effect::HoldClient(true));
        Work::Retire(Retire { req, rep, deletes })
    }

    /// One delete's outcome; true once every delete is in (then
    /// [`Retire::write`] starts the write).
    pub(super) fn on_outcome(
        &mut self,
        call: CallId,
        r: Result<Reply, CallError>,
        cx: &mut Cx<'_>,
    ) -> bool {
        let Some(pos) = self.deletes.iter().position(|(c, ..)| *c == call) else {
            return false;
        };
        let (_, server, seen) = self.deletes.swap_remove(pos);
        if !deleted(&r) {
            cx.missed(server, seen, missed_key(&self.req));
        }
        self.deletes.is_empty()
    }

    /// The write itself, once the earlier owners' copies are gone. Its
    /// client goes on: the write's first calls leave in this same turn,
    /// before any later request of the client can start.
    pub(super) fn write(self, cx: &mut Cx<'_>) -> Work {
        cx.fx.push(Effect::HoldClient(false));
        Write::start(self.req, &[self.rep], cx)
    }
}

/// The key a missed write logs: the request's, or none for a base64 key
/// (the whole server then, which a flush covers).
fn missed_key(req: &ClientRequest) -> Bytes {
    if req.r.meta.base64_key() {
        Bytes::new()
    } else {
        req.key_bytes()
    }
}

impl Write {
    pub(super) fn start(req: ClientRequest, replicas: &[Replicas], cx: &mut Cx<'_>) -> Work {
        let Some(&rep) = replicas.first() else {
            cx.count(Counter::ServerErrors);
            let a = req.silent_or(one(compose::NO_SERVER));
            cx.answer(a);
            return Work::Done;
        };
        let p_seen = cx.view.observe(rep.primary);
        let b_seen = rep.backup.map(|b| cx.view.observe(b));
        // A server draining its missed keys takes the writes that do not
        // depend on what it holds (set, delete, touch), so that no write
        // is missed from the moment its drain began; relative writes
        // (incr, append, add, cas...) wait until it is up.
        let rule = proxy::write_rule(req.r.verb, req.r.meta);
        let takes = |seen: Observed| match rule {
            WriteRule::Mirror => seen.takes_writes(),
            WriteRule::PrimaryThenCopy => seen.is_up(),
        };
        let p_takes = takes(p_seen);
        let b_up = rep.backup.filter(|_| b_seen.is_some_and(takes));
        let mut w = Write {
            parts: [Bytes::new(), Bytes::new()],
            req,
            rep,
            p_seen,
            b_seen,
            stage: Stage::Done,
        };
        let expect = w.req.r.verb.expect();
        match (p_takes, b_up) {
            (false, None) => {
                cx.count(Counter::ServerErrors);
                let a = w.req.silent_or(one(compose::NO_SERVER));
                cx.answer(a);
                return Work::Done;
            }
            (false, Some(b)) => {
                w.parts = w.req.upstream_parts();
                let call = cx.send(b, w.parts.clone(), expect);
                w.stage = Stage::BackupAlone(call);
            }
            (true, None) => {
                w.parts = w.req.upstream_parts();
                let call = cx.send(rep.primary, w.parts.clone(), expect);
                w.stage = Stage::PrimaryAlone(call);
            }
            (true, Some(b)) => {
                w.parts = w.req.upstream_parts();
                match rule {
                    WriteRule::Mirror => {
                        let p = cx.send(rep.primary, w.parts.clone(), expect);
                        let b = cx.send(b, w.parts.clone(), expect);
                        w.stage = Stage::Mirror {
                            p,
                            b,
                            rp: None,
                            rb: None,
                        };
                    }
                    WriteRule::PrimaryThenCopy => {
                        let call = cx.exclusive(w.req.key_bytes());
                        w.stage = Stage::Exclusive(call);
                    }
                }
            }
        }
        Work::Write(w)
    }

    pub(super) fn on_outcome(
        &mut self,
        call: CallId,
        r: Result<Reply, CallError>,
        cx: &mut Cx<'_>,
    ) {
        let p = self.rep.primary;
        match std::mem::replace(&mut self.stage, Stage::Done) {
            Stage::BackupAlone(c) if c == call => match r {
                Ok(r) => {
                    cx.failover(p);
                    if !r.status.is_error() {
                        cx.missed(p, self.p_seen, self.missed_key());
                    }
                    self.finish(r, cx);
                }
                Err(e) => self.fail(e, cx),
            },
            Stage::PrimaryAlone(c) if c == call => match r {
                Ok(r) => {
                    if let (Some(b), Some(seen)) = (self.rep.backup, self.b_seen) {
                        if !r.status.is_error() {
                            cx.missed(b, seen, self.missed_key());
                        }
                    }
                    self.finish(r, cx);
                }
                Err(e) => self.fail(e, cx),
            },
            Stage::Mirror {
                p: cp,
                b: cb,
                mut rp,
                mut rb,
            } if call == cp || call == cb => {
                if call == cp {
                    rp = Some(r);
                } else {
                    rb = Some(r);
                }
                match (rp, rb) {
                    (Some(rp), Some(rb)) => self.mirrored(rp, rb, cx),
                    (rp, rb) => {
                        self.stage = Stage::Mirror {
                            p: cp,
                            b: cb,
                            rp,
                            rb,
                        }
                    }
                }
            }
            Stage::Exclusive(c) if c == call => {
                // The wait may have outlasted the primary.
                let expect = self.req.r.verb.expect();
                match cx.send_up(p, self.parts.clone(), expect) {
                    Some(call) => self.stage = Stage::Primary(call),
                    None => self.primary_failed(cx),
                }
            }
            Stage::Primary(c) if c == call => match r {
                Ok(rp) => {
                    if proxy::primary_may_lack_for(self.req.r.verb, self.req.r.meta, rp.status) {
                        self.recover(rp, cx);
                    } else {
                        self.converge(rp, cx);
                    }
                }
                Err(_) => self.primary_failed(cx),
            },
            Stage::Failover(c) if c == call => match r {
                // The primary may or may not have applied it: the backup decides.
                Ok(rb) => {
                    cx.failover(p);
                    cx.missed(p, self.p_seen, self.missed_key());
                    self.finish(rb, cx);
                }
                Err(e) => self.fail(e, cx),
            },
            Stage::RecoverRead { call: c, rp } if c == call => {
                let item = match r {
                    Ok(r) => MetaItem::parse(&r),
                    Err(_) => None,
                };
                // No item on the backup either: the primary's answer stands.
                let Some(item) = item else {
                    return self.converge(rp, cx);
                };
                let store_verb = if proxy::recovery_overwrites(self.req.r.verb, self.req.r.meta) {
                    Verb::Set
                } else {
                    Verb::Add
                };
                let (store, expect) = item.store_parts_for(
                    store_verb,
                    self.req.key(),
                    self.req.key_is_base64(),
                    cx.view.now_unix(),
                );
                match cx.send_up(p, store, expect) {
                    Some(call) => self.stage = Stage::RecoverStore { call, rp },
                    None => self.converge(rp, cx),
                }
            }
            Stage::RecoverStore { call: c, rp } if c == call => {
                if r.is_err() {
                    return self.converge(rp, cx);
                }
                cx.count(Counter::Repairs);
                let expect = self.req.r.verb.expect();
                match cx.send_up(p, self.parts.clone(), expect) {
                    Some(call) => self.stage = Stage::Rerun { call, rp },
                    None => self.converge(rp, cx),
                }
            }
            Stage::Rerun { call: c, rp } if c == call => {
                let rp = r.unwrap_or(rp);
                self.converge(rp, cx);
            }
            Stage::SetItem { call: c, rp } | Stage::CopyStore { call: c, rp } if c == call => {
                let ok = stored(&r);
                self.converged(ok, rp, cx);
            }
            Stage::DeleteBackup { call: c, rp } if c == call => {
                let ok = deleted(&r);
                self.converged(ok, rp, cx);
            }
            Stage::CopyRead { call: c, rp } if c == call => match r {
                Ok(r) => match MetaItem::parse(&r) {
                    Some(item) => {
                        let (parts, expect) = item.store_parts_for(
                            Verb::Set,
                            self.req.key(),
                            self.req.key_is_base64(),
                            cx.view.now_unix(),
                        );
                        match cx.send_up(self.backup(), parts, expect) {
                            Some(call) => self.stage = Stage::CopyStore { call, rp },
                            None => self.converged(false, rp, cx),
                        }
                    }
                    None if r.status == Status::MetaEn => self.delete_backup(rp, cx),
                    None => self.converged(false, rp, cx),
                },
                Err(_) => self.delete_backup(rp, cx),
            },
            other => self.stage = other,
        }
    }

    /// The primary of a primary-then-copy write failed (or went out while
    /// the write waited for its section): the backup decides.
    fn primary_failed(&mut self, cx: &mut Cx<'_>) {
        let b = self.backup();
        let expect = self.req.r.verb.expect();
        match cx.send_up(b, self.parts.clone(), expect) {
            Some(call) => self.stage = Stage::Failover(call),
            None => self.fail(CallError::no_call(b, expect), cx),
        }
    }

    /// The key a replica that missed this write logs for its rejoin to
    /// delete. A base64 key (meta `b` flag) is stored decoded, which a text
    /// `delete` cannot name: it logs the empty key, "flush".
    fn missed_key(&self) -> Bytes {
        missed_key(&self.req)
    }

    /// The backup of a write that has one (only called on paths that checked).
    fn backup(&self) -> ServerId {
        self.rep.backup.unwrap_or(self.rep.primary)
    }

    fn mirrored(
        &mut self,
        rp: Result<Reply, CallError>,
        rb: Result<Reply, CallError>,
        cx: &mut Cx<'_>,
    ) {
        let (p, b) = (self.rep.primary, self.backup());
        let b_seen = self.b_seen.unwrap_or(self.p_seen);
        match (rp, rb) {
            (Ok(rp), Ok(rb)) => {
                // The backup refused what the primary took: it may hold an
                // older value now.
                if !rp.status.is_error() && rb.status.is_error() {
                    cx.missed(b, b_seen, self.missed_key());
                }
                let r = if proxy::backup_answer_wins(rp.status, rb.status) {
                    rb
                } else {
                    rp
                };
                self.finish(r, cx);
            }
            (Ok(rp), Err(_)) => {
                if !rp.status.is_error() {
                    cx.missed(b, b_seen, self.missed_key());
                }
                self.finish(rp, cx);
            }
            (Err(_), Ok(rb)) => {
                cx.failover(p);
                if !rb.status.is_error() {
                    cx.missed(p, self.p_seen, self.missed_key());
                }
                self.finish(rb, cx);
            }
            (Err(e), Err(_)) => self.fail(e, cx),
        }
    }

    /// The primary answered as if it did not hold the item. If the backup
    /// holds it, it is an acknowledged item the primary lost (flushed on
    /// rejoin, or evicted): put it back on the primary (`add`, or `set` over
    /// the value an `add` just stored wrongly) and run the command again, so
    /// incr, append, replace, cas and add act on the real item.
    fn recover(&mut self, rp: Reply, cx: &mut Cx<'_>) {
        let parts = readback_parts(self.req.key(), self.req.key_is_base64());
        match cx.send_up(self.backup(), parts, Expect::Meta) {
            Some(call) => self.stage = Stage::RecoverRead { call, rp },
            None => self.converge(rp, cx),
        }
    }

    /// Bring the backup in line with what the primary just did (see the
    /// table in [`crate::proxy`]).
    fn converge(&mut self, rp: Reply, cx: &mut Cx<'_>) {
        let b = self.backup();
        match proxy::after_primary_for(self.req.r.verb, self.req.r.meta, rp.status) {
            Replicate::Nothing => self.converged(true, rp, cx),
            Replicate::SetRequestItem => {
                let (parts, expect) = store_parts_for(
                    Verb::Set,
                    self.req.key(),
                    self.req.key_is_base64(),
                    self.req.r.flags,
                    self.req.r.exptime,
                    self.req.r.data.len(),
                    self.req.data_block(),
                );
                match cx.send_up(b, parts, expect) {
                    Some(call) => self.stage = Stage::SetItem { call, rp },
                    None => self.converged(false, rp, cx),
                }
            }
            Replicate::CopyItem => {
                let parts = readback_parts(self.req.key(), self.req.key_is_base64());
                let p = self.rep.primary;
                match cx.send_up(p, parts, Expect::Meta) {
                    Some(call) => self.stage = Stage::CopyRead { call, rp },
                    None => self.delete_backup(rp, cx),
                }
            }
            Replicate::Delete => self.delete_backup(rp, cx),
        }
    }

    fn delete_backup(&mut self, rp: Reply, cx: &mut Cx<'_>) {
        let (parts, expect) = delete_parts_for(self.req.key(), self.req.key_is_base64());
        match cx.send_up(self.backup(), parts, expect) {
            Some(call) => self.stage = Stage::DeleteBackup { call, rp },
            None => self.converged(false, rp, cx),
        }
    }

    /// The backup converged (`ok`) or cannot be trusted for this key: it is
    /// then marked as having missed a write.
    fn converged(&mut self, ok: bool, rp: Reply, cx: &mut Cx<'_>) {
        if !ok {
            cx.count(Counter::ReplicationErrors);
            let seen = self.b_seen.unwrap_or(self.p_seen);
            cx.missed(self.backup(), seen, self.missed_key());
        }
        self.finish(rp, cx);
    }

    /// Answer with the reply that decides the write.
    fn finish(&mut self, r: Reply, cx: &mut Cx<'_>) {
        if let Some(c) = write_counter(self.req.r.verb, r.status) {
            cx.count(c);
        }
        let a = self.req.reply_out(r);
        cx.answer(a);
    }

    /// No replica took the write.
    fn fail(&mut self, e: CallError, cx: &mut Cx<'_>) {
        cx.count(Counter::ServerErrors);
        let a = self.req.silent_or(server_error(e));
        cx.answer(a);
    }

    pub(super) fn is_done(&self) -> bool {
        matches!(self.stage, Stage::Done)
    }
}

/// `flush_all` goes to every server; one that is out is marked so that it
/// is flushed before it serves again.
#[derive(Debug)]
pub(super) struct Flush {
    req: ClientRequest,
    /// Per server: what the request saw, its call (none when out), and
    /// whether it answered `OK`.
    servers: Vec<FlushServer>,
    /// Answered.
    done: bool,
}

#[derive(Debug)]
struct FlushServer {
    id: ServerId,
    seen: Observed,
    call: Option<CallId>,
    ok: bool,
}

impl Flush {
    pub(super) fn start(req: ClientRequest, servers: &[ServerId], cx: &mut Cx<'_>) -> Work {
        let parts = req.upstream_parts();
        let mut list = Vec::with_capacity(servers.len());
        for &id in servers {
            let seen = cx.view.observe(id);
            let call = seen
                .is_up()
                .then(|| cx.send(id, parts.clone(), Expect::Line));
            list.push(FlushServer {
                id,
                seen,
                call,
                ok: false,
            });
        }
        let mut f = Box::new(Flush {
            req,
            servers: list,
            done: false,
        });
        f.finish_if_complete(cx);
        if f.is_done() {
            return Work::Done;
        }
        Work::Flush(f)
    }

    pub(super) fn on_outcome(
        &mut self,
        call: CallId,
        r: Result<Reply, CallError>,
        cx: &mut Cx<'_>,
    ) {
        let Some(s) = self.servers.iter_mut().find(|s| s.call == Some(call)) else {
            return;
        };
        s.call = None;
        s.ok = matches!(
            r,
            Ok(Reply {
                status: Status::Ok,
                ..
            })
        );
        self.finish_if_complete(cx);
    }

    fn finish_if_complete(&mut self, cx: &mut Cx<'_>) {
        if self.done || self.servers.iter().any(|s| s.call.is_some()) {
            return;
        }
        self.done = true;
        let mut all_ok = true;
        let mut any_ok = false;
        for s in &self.servers {
            if s.ok {
                any_ok = true;
            } else {
                all_ok = false;
                cx.missed(s.id, s.seen, Bytes::new());
            }
        }
        let out = if all_ok && any_ok {
            one(compose::OK)
        } else if any_ok {
            one(b"SERVER_ERROR flush_all reached only some servers\r\n")
        } else {
            one(compose::NO_SERVER)
        };
        let a = self.req.silent_or(out);
        cx.answer(a);
    }

    pub(super) fn is_done(&self) -> bool {
        self.done
    }
}
