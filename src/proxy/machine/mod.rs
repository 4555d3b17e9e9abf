//! Request state machines, sans-IO: one client request from its start to its
//! end, as explicit states advanced by upstream outcomes.
//!
//! The engine owns every [`Machine`] in a per-core slab. It calls
//! [`Machine::start`] with the parsed request and the key's replicas, carries
//! out the [`Effect`]s the machine pushes (send these bytes to server N,
//! answer the client, mark server M as having missed key K, bump a counter),
//! and feeds each call's outcome back through [`Machine::on_outcome`] until
//! [`Machine::is_done`]. A machine runs to its end whatever its client does:
//! when the client is gone the engine simply drops the [`Effect::Answer`], and
//! the replication steps still happen.
//!
//! The decisions are those of the per-verb rules in [`crate::proxy`] and the
//! README's failover table: routing to the primary, failover to the backup,
//! read-through and repair, mirrored and primary-then-copy writes, recovery of
//! a key the primary lost, convergence of the backup, `flush_all` everywhere.
//!
//! Must not import `server`, tokio, sockets or read the clock: the time it
//! needs (`now_unix`, for TTLs) and the servers' health come through [`View`].
//!
//! # The engine's side of the contract
//! - Every [`Effect::Send`] gets exactly one outcome, fed back with its
//!   [`CallId`] (a server dropped by a reload: an `Err(CallError)` of kind [`Failure::Closed`]).
//!   Call ids are opaque; the top bit marks a call whose reply the machine
//!   ignores but still waits for (the backups' `touch` after a gat).
//! - Effects are pushed in the order they happen; Sends of one step are
//!   independent and may go out together.
//! - [`Effect::Spawn`] hands over a machine that has not started: give it a
//!   slot, then call [`Machine::begin`]; the effects of that call are its own.
//! - When [`Machine::is_done`], free the slot: nothing is in flight and
//!   nothing more will be pushed.
//!
//! ```
//! use std::time::Instant;
//! use bytes::Bytes;
//! use memring::protocol::{frame_response, parse_request, Expect, Framed, Parsed};
//! use memring::proxy::machine::*;
//! use memring::upstream::{Health, Observed, ServerId};
//!
//! struct Up(Vec<Health>);
//! impl View for Up {
//!     fn observe(&self, s: ServerId) -> Observed { self.0[s.index()].observe() }
//!     fn now_unix(&self) -> i64 { 1_700_000_000 }
//! }
//! let view = Up(vec![Health::new(Instant::now()), Health::new(Instant::now())]);
//! let bytes = Bytes::from_static(b"get k\r\n");
//! let mut keys = Vec::new();
//! let Parsed::Complete(r) = parse_request(&bytes, 1 << 20, &mut keys) else { panic!() };
//! let req = ClientRequest { r, bytes, keys: Keys::take(&mut keys) };
//! let replicas = [Replicas { primary: ServerId(0), backup: Some(ServerId(1)) }];
//!
//! let mut fx = Vec::new();
//! let mut m = Machine::start(req, &replicas, &[ServerId(0), ServerId(1)], &view, &mut fx);
//! let call = fx.iter().find_map(|e| match e {
//!     Effect::Send { call, server: ServerId(0), .. } => Some(*call),
//!     _ => None,
//! }).expect("asks the primary");
//!
//! // The primary's reply, framed as the engine frames it.
//! let frame = Bytes::from_static(b"VALUE k 0 1\r\nv\r\nEND\r\n");
//! let Ok(Framed::Complete { status, line, data, .. }) =
//!     frame_response(Expect::Values, &frame, usize::MAX, &mut Vec::new()) else { panic!() };
//! fx.clear();
//! m.on_outcome(call, Ok(Reply { frame, status, line, data }), &view, &mut fx);
//! assert!(fx.iter().any(|e| matches!(e, Effect::Answer(Answer::One(b)) if b.starts_with(b"VALUE k"))));
//! assert!(m.is_done());
//! ```

mod admin;
mod copy;
mod read;
mod write;

#[cfg(test)]
mod tests;

use std::ops::Range;

use bytes::{Bytes, BytesMut};

use crate::protocol::{compose, Expect, Request, Status, Verb};
use crate::route::Owners;
use crate::stats::Counter;
use crate::upstream::{Observed, ServerId};

pub use copy::MetaItem;

/// Names one upstream call of a machine; unique within that machine.
pub type CallId = u32;

/// A framed upstream reply.
#[derive(Clone, Debug)]
pub struct Reply {
    /// The whole reply.
    pub frame: Bytes,
    /// Its kind.
    pub status: Status,
    /// First line (without terminator), range into `frame`.
    pub line: Range<usize>,
    /// Meta `VA` data block, range into `frame`.
    pub data: Range<usize>,
}

impl Reply {
    /// The outcome that grants an [`Effect::Exclusive`]: no bytes.
    pub fn grant() -> Reply {
        Reply {
            frame: Bytes::new(),
            status: Status::Ok,
            line: 0..0,
            data: 0..0,
        }
    }

    /// Frame the reply at the front of `buf` (shaped by `expect`, values up
    /// to `max_value`) and split it off: `Ok(None)` while it is incomplete.
    pub fn frame(
        expect: Expect,
        buf: &mut BytesMut,
        max_value: usize,
        items: &mut Vec<crate::protocol::ValueItem>,
    ) -> Result<Option<Reply>, crate::protocol::FrameError> {
        match crate::protocol::frame_response(expect, buf, max_value, items)? {
            crate::protocol::Framed::Complete {
                len,
                status,
                line,
                data,
            } => Ok(Some(Reply {
                frame: buf.split_to(len).freeze(),
                status,
                line,
                data,
            })),
            crate::protocol::Framed::Incomplete => Ok(None),
        }
    }
}

/// Why an upstream call produced no reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    /// Could not connect (or still backing off after a failed connect).
    Connect,
    /// No progress within the request timeout.
    Timeout,
    /// The connection closed or failed before the reply (or the server is out).
    Closed,
    /// The server sent bytes that are not a reply.
    Protocol,
    /// The TLS session failed (a certificate that does not verify, a
    /// handshake refused, a bad record).
    Tls,
}

impl Failure {
    /// The reason a server is charged for this failure (its ejection or
    /// suspicion reason in `stats` and Prometheus).
    pub fn ejection(self) -> crate::upstream::Ejection {
        use crate::upstream::Ejection;
        match self {
            Failure::Connect => Ejection::Connect,
            Failure::Timeout => Ejection::Timeout,
            Failure::Closed => Ejection::Closed,
            Failure::Protocol => Ejection::Protocol,
            Failure::Tls => Ejection::Tls,
        }
    }

    /// The `kind` label of `memring_upstream_errors_total`.
    pub fn metric(self) -> crate::metrics::UpstreamErrorKind {
        use crate::metrics::UpstreamErrorKind as K;
        match self {
            Failure::Connect => K::Connect,
            Failure::Timeout => K::Timeout,
            Failure::Closed => K::Closed,
            Failure::Protocol => K::Protocol,
            Failure::Tls => K::Tls,
        }
    }

    /// As a log field.
    pub fn as_str(self) -> &'static str {
        match self {
            Failure::Connect => "connect",
            Failure::Timeout => "timeout",
            Failure::Closed => "closed",
            Failure::Protocol => "protocol",
            Failure::Tls => "tls",
        }
    }
}

/// An upstream call that produced no reply, with its context: which server,
/// what it asked, what went wrong, and whether sending it again is safe.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CallError {
    /// The server it was for.
    pub server: ServerId,
    /// What it asked, by the reply it expected (`Values`: a retrieval;
    /// `Line`: a storage command, delete, arithmetic or touch; ...).
    pub op: Expect,
    /// What went wrong.
    pub kind: Failure,
    /// It may be sent again without applying twice: it never reached the
    /// server (a failed connect), or it is a retrieval.
    pub retryable: bool,
}

impl CallError {
    /// A call to `server` asking `op` failed with `kind`; whether it is
    /// retryable follows from those (see [`CallError::retryable`]).
    pub fn new(server: ServerId, op: Expect, kind: Failure) -> CallError {
        CallError {
            server,
            op,
            kind,
            retryable: kind == Failure::Connect || op == Expect::Values,
        }
    }

    /// A call that never reached `server` (no connection to it, the server
    /// out or gone, a connect that failed): sending it again is safe.
    pub fn unsent(server: ServerId, op: Expect, kind: Failure) -> CallError {
        CallError {
            server,
            op,
            kind,
            retryable: true,
        }
    }

    /// A call that could not be made: `server` is out, gone, or has no
    /// connection for it.
    pub fn no_call(server: ServerId, op: Expect) -> CallError {
        CallError::unsent(server, op, Failure::Closed)
    }

    /// The reason the server is charged (see [`Failure::ejection`]).
    pub fn ejection(self) -> crate::upstream::Ejection {
        self.kind.ejection()
    }

    /// The metric label (see [`Failure::metric`]).
    pub fn metric(self) -> crate::metrics::UpstreamErrorKind {
        self.kind.metric()
    }
}

/// What the client gets for one request.
#[derive(Debug)]
pub enum Answer {
    /// Nothing (noreply, quiet mode).
    Nothing,
    /// One buffer.
    One(Bytes),
    /// Several buffers, written with one `writev`.
    Many(Vec<Bytes>),
    /// Close the connection after everything before it is written.
    Close,
}

impl Answer {
    /// The answer without its closing `END` (a batch of a get line that goes
    /// on past the line limit; only the last batch ends the answer). Empty
    /// buffers are dropped: a zero-length write reads as a closed peer.
    pub fn without_end(self) -> Answer {
        match self {
            Answer::One(b) => {
                let b = super::without_end(b);
                if b.is_empty() {
                    Answer::Nothing
                } else {
                    Answer::One(b)
                }
            }
            Answer::Many(mut v) => {
                if let Some(last) = v.pop() {
                    let last = super::without_end(last);
                    if !last.is_empty() {
                        v.push(last);
                    }
                }
                if v.is_empty() {
                    Answer::Nothing
                } else {
                    Answer::Many(v)
                }
            }
            a => a,
        }
    }

    /// The bytes the client gets, concatenated (for tests and logs).
    pub fn to_vec(&self) -> Vec<u8> {
        match self {
            Answer::Nothing | Answer::Close => Vec::new(),
            Answer::One(b) => b.to_vec(),
            Answer::Many(v) => v.iter().flat_map(|b| b.iter().copied()).collect(),
        }
    }
}

/// A parsed client request with the bytes it came in.
#[derive(Debug)]
pub struct ClientRequest {
    /// The parse result; ranges index `bytes`.
    pub r: Request,
    /// The whole request: line and data block.
    pub bytes: Bytes,
    /// Retrieval keys, ranges into `bytes`.
    pub keys: Keys,
}

/// Retrieval keys: the common single key is kept inline, so a get costs no
/// allocation for its key list.
#[derive(Debug)]
pub enum Keys {
    /// One key (or none, for keyless requests).
    One(Option<Range<usize>>),
    /// A multi-key retrieval.
    Many(Vec<Range<usize>>),
}

impl Keys {
    /// Take the parser's key list, leaving it empty with its capacity (a
    /// multi-key list is copied into one allocation of its exact size, so
    /// the parser's list does not grow again from nothing every request).
    pub fn take(parsed: &mut Vec<Range<usize>>) -> Keys {
        if parsed.len() <= 1 {
            Keys::One(parsed.pop())
        } else {
            let keys = Keys::Many(parsed.as_slice().to_vec());
            parsed.clear();
            keys
        }
    }

    /// The key ranges, in request order.
    pub fn as_slice(&self) -> &[Range<usize>] {
        match self {
            Keys::One(k) => k.as_slice(),
            Keys::Many(v) => v,
        }
    }
}

impl ClientRequest {
    /// Retrieval keys (empty for other verbs).
    pub fn keys(&self) -> &[Range<usize>] {
        self.keys.as_slice()
    }

    /// The key of a single-key command.
    pub fn key(&self) -> &[u8] {
        self.bytes.get(self.r.key.clone()).unwrap_or_default()
    }

    /// Whether the key is base64 (a meta request with the `b` flag):
    /// memcached stores it decoded, and only meta commands with `b` name it.
    pub fn key_is_base64(&self) -> bool {
        matches!(
            self.r.verb,
            Verb::MetaGet | Verb::MetaSet | Verb::MetaDelete | Verb::MetaArithmetic
        ) && self.r.meta.base64_key()
    }

    /// The key of a single-key command, sharing the request's buffer.
    pub fn key_bytes(&self) -> Bytes {
        slice(&self.bytes, self.r.key.clone())
    }

    /// Retrieval key `i`, sharing the request's buffer.
    fn retrieval_key(&self, i: usize) -> Bytes {
        match self.keys().get(i) {
            Some(k) => slice(&self.bytes, k.clone()),
            None => Bytes::new(),
        }
    }

    /// The data block with its `\r\n`.
    fn data_block(&self) -> Bytes {
        slice(
            &self.bytes,
            self.r.line_len.min(self.bytes.len())..self.bytes.len(),
        )
    }

    /// The request as it goes upstream: without `noreply` or `q`, so that
    /// every upstream request gets exactly one reply and the FIFO stays in step.
    fn upstream_parts(&self) -> [Bytes; 2] {
        let line = self
            .bytes
            .get(..self.r.line_len.min(self.bytes.len()))
            .unwrap_or_default();
        if self.r.noreply {
            let mut out = BytesMut::with_capacity(line.len());
            compose::compose_without_noreply(&mut out, line);
            [out.freeze(), self.data_block()]
        } else if self.r.quiet {
            let mut out = BytesMut::with_capacity(line.len());
            compose::compose_without_quiet(&mut out, line);
            [out.freeze(), self.data_block()]
        } else {
            [self.bytes.clone(), Bytes::new()]
        }
    }

    /// The client's view of a reply: nothing under `noreply`, and nothing
    /// for the outcomes meta quiet mode hides.
    fn reply_out(&self, r: Reply) -> Answer {
        if self.r.noreply || (self.r.quiet && super::quiet_hides(self.r.verb, r.status)) {
            Answer::Nothing
        } else {
            Answer::One(r.frame)
        }
    }

    /// `out`, unless the client said `noreply`.
    fn silent_or(&self, out: Answer) -> Answer {
        if self.r.noreply {
            Answer::Nothing
        } else {
            out
        }
    }
}

/// A bounds-checked `Bytes::slice`: an empty buffer when out of range.
fn slice(b: &Bytes, r: Range<usize>) -> Bytes {
    if r.start <= r.end && r.end <= b.len() {
        b.slice(r)
    } else {
        Bytes::new()
    }
}

/// The two replicas of one key, computed by the engine (each key hashed once
/// for both rings).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Replicas {
    /// The key's server on the primary ring.
    pub primary: ServerId,
    /// The key's server on the backup ring, if there is one.
    pub backup: Option<ServerId>,
}

impl Replicas {
    /// The same key read from its backup first (a spread hot key): the
    /// backup as primary, the primary as its backup. Unchanged without a
    /// backup.
    pub fn swapped(self) -> Replicas {
        match self.backup {
            Some(b) => Replicas {
                primary: b,
                backup: Some(self.primary),
            },
            None => self,
        }
    }
}

/// What a machine sees of the world, implemented by the engine (and by fakes
/// in tests).
pub trait View {
    /// Health snapshot of server `s` ([`Observed::is_up`]).
    fn observe(&self, s: ServerId) -> Observed;
    /// Seconds since the unix epoch, for turning TTLs into exptimes.
    fn now_unix(&self) -> i64;
    /// Whether reads may be hedged onto backups (`--hedge`).
    fn hedging(&self) -> bool {
        false
    }
    /// While a migration window is open: the servers that held `key` (as
    /// written; `base64`: a meta `b` key) under earlier placements and are
    /// not `rep` now, newest first. Empty without a window.
    fn earlier_owners(&self, key: &[u8], base64: bool, rep: Replicas) -> Owners {
        let _ = (key, base64, rep);
        Owners::default()
    }
}

/// What the engine must do.
#[derive(Debug)]
pub enum Effect {
    /// Send one request to a server; its outcome comes back through
    /// [`Machine::on_outcome`]`(call, ..)`. The request bytes are `parts`
    /// concatenated (empty parts allowed). Every Send gets exactly one outcome.
    Send {
        /// Names the call in the outcome.
        call: CallId,
        /// Where it goes.
        server: ServerId,
        /// The request bytes, in two pieces (line, data block).
        parts: [Bytes; 2],
        /// The reply shape, for the framer.
        expect: Expect,
    },
    /// The answer to the client (emitted exactly once by a client-facing
    /// machine, never by a detached one).
    Answer(Answer),
    /// A write was acknowledged without `server`: the engine calls
    /// `Health::record_missed_write(now, policy, seen, key)`, which logs
    /// `key` for the rejoin to delete. `key` is empty for `flush_all`.
    MissedWrite {
        /// The replica that missed the write.
        server: ServerId,
        /// Its health as the request saw it when it decided.
        seen: Observed,
        /// The key written (empty: the whole server, for `flush_all`).
        key: Bytes,
    },
    /// Bump a counter on this core.
    Count(Counter, u64),
    /// The request was served by `failed`'s partner: count a failover on
    /// that server and on the core.
    Failover {
        /// The server that failed or was out.
        failed: ServerId,
    },
    /// A primary missed and its backup was asked: how that ended (for
    /// `memring_read_through_total`).
    ReadThrough(crate::metrics::ReadThrough),
    /// Enter `key`'s exclusive section: the outcome of `call` (always `Ok`,
    /// with an empty reply) comes once no other request on any core is inside
    /// it, and the section is held until this machine is done. A machine asks
    /// for at most one section, before its first upstream call, so waits
    /// never form a cycle.
    Exclusive {
        /// Names the wait in the outcome.
        call: CallId,
        /// The key whose section is asked for.
        key: Bytes,
    },
    /// A step of a hedged read (see [`Hedge`]).
    Hedge(Hedge),
    /// Hold this request's client's later requests back (`true`) until the
    /// same machine lets them go (`false`): a write that must wait before
    /// its first call to the key's replicas (a migration window's deletes)
    /// is not overtaken by its own client's later reads.
    HoldClient(bool),
    /// Start a detached machine (the background repair after a read-through
    /// hit); it has no client. It has not started yet: the engine gives it a
    /// slot, then calls [`Machine::begin`] on it, and the effects that call
    /// pushes belong to the new machine.
    Spawn(Box<Machine>),
}

/// A hedged read's steps, carried out by the engine, which owns the
/// per-server delays and the per-core budget (see
/// [`crate::upstream::hedge`]).
#[derive(Debug)]
pub enum Hedge {
    /// The read on `primary` is hedgeable: the outcome of `call` (always
    /// `Ok`, an empty reply) comes once `primary`'s hedge delay has passed,
    /// if the machine is not done by then (a finished machine's timers are
    /// dropped unfired: a machine does not wait for its timers).
    Timer {
        /// Names the wait in the outcome.
        call: CallId,
        /// The server the read waits for.
        primary: ServerId,
    },
    /// Send the read to `backup` too, if the core's hedge budget allows;
    /// otherwise `call` fails at once (kind `Closed`). Exactly one outcome,
    /// as for [`Effect::Send`].
    Send {
        /// Names the call in the outcome.
        call: CallId,
        /// Where it goes.
        backup: ServerId,
        /// The late primary (the counters are its).
        primary: ServerId,
        /// The request bytes.
        parts: [Bytes; 2],
        /// The reply shape.
        expect: Expect,
    },
    /// The backup's hit answered the client before `primary` did.
    Won {
        /// The late primary.
        primary: ServerId,
    },
}

/// Top bit of a [`CallId`]: a call whose outcome the machine waits for but
/// does not use (the backups' `touch` after a gat).
const LOOSE: CallId = 1 << 31;

/// One request being served.
#[derive(Debug)]
pub struct Machine {
    /// Id of the next call.
    next_call: CallId,
    /// Loose calls without an outcome yet.
    loose: u32,
    /// Whether an `Answer` was pushed.
    answered: bool,
    /// A finished copy: whether the target kept it.
    copied: Option<bool>,
    kind: Work,
}

#[derive(Debug)]
enum Work {
    /// Nothing more to do.
    Done,
    GetOne(read::GetOne),
    GetMany(Box<read::GetMany>),
    Meta(read::MetaRead),
    Write(write::Write),
    Retire(write::Retire),
    Flush(Box<write::Flush>),
    Copy(copy::CopyItem),
    Admin(admin::Admin),
}

/// What a step may use and push to: the view, the effect list and the call ids.
struct Cx<'a> {
    view: &'a dyn View,
    fx: &'a mut Vec<Effect>,
    next_call: &'a mut CallId,
    loose: &'a mut u32,
    answered: &'a mut bool,
}

impl Cx<'_> {
    fn is_up(&self, s: ServerId) -> bool {
        self.view.observe(s).is_up()
    }

    /// A fresh call id (never with the [`LOOSE`] bit).
    fn next_id(&mut self) -> CallId {
        let call = *self.next_call & !LOOSE;
        *self.next_call = call.wrapping_add(1) & !LOOSE;
        call
    }

    /// Send a request; the outcome comes back under the returned id.
    fn send(&mut self, server: ServerId, parts: [Bytes; 2], expect: Expect) -> CallId {
        let call = self.next_id();
        self.fx.push(Effect::Send {
            call,
            server,
            parts,
            expect,
        });
        call
    }

    /// Send to `server` if it is in service now; `None` when it is out (the
    /// call fails at once, as [`CallError::Closed`]).
    fn send_up(&mut self, server: ServerId, parts: [Bytes; 2], expect: Expect) -> Option<CallId> {
        self.is_up(server).then(|| self.send(server, parts, expect))
    }

    /// Ask for `key`'s exclusive section ([`Effect::Exclusive`]); the grant
    /// comes back as the outcome of the returned id.
    fn exclusive(&mut self, key: Bytes) -> CallId {
        let call = self.next_id();
        self.fx.push(Effect::Exclusive { call, key });
        call
    }

    /// Send a request whose reply nobody uses; the machine still waits for it.
    fn send_loose(&mut self, server: ServerId, parts: [Bytes; 2], expect: Expect) {
        let call = self.send(server, parts, expect) | LOOSE;
        if let Some(Effect::Send { call: c, .. }) = self.fx.last_mut() {
            *c = call;
        }
        *self.loose += 1;
    }

    /// Wait for `primary`'s hedge delay (see [`Hedge::Timer`]).
    fn hedge_timer(&mut self, primary: ServerId) -> CallId {
        let call = self.next_id();
        self.fx.push(Effect::Hedge(Hedge::Timer { call, primary }));
        call
    }

    /// Hedge a late read of `primary` onto `backup` (see [`Hedge::Send`]).
    fn hedge_send(
        &mut self,
        backup: ServerId,
        primary: ServerId,
        parts: [Bytes; 2],
        expect: Expect,
    ) -> CallId {
        let call = self.next_id();
        self.fx.push(Effect::Hedge(Hedge::Send {
            call,
            backup,
            primary,
            parts,
            expect,
        }));
        call
    }

    fn count(&mut self, c: Counter) {
        self.fx.push(Effect::Count(c, 1));
    }

    fn count_n(&mut self, c: Counter, n: u64) {
        if n > 0 {
            self.fx.push(Effect::Count(c, n));
        }
    }

    fn read_through(&mut self, r: crate::metrics::ReadThrough) {
        self.fx.push(Effect::ReadThrough(r));
    }

    fn failover(&mut self, failed: ServerId) {
        self.fx.push(Effect::Failover { failed });
    }

    fn missed(&mut self, server: ServerId, seen: Observed, key: Bytes) {
        self.fx.push(Effect::MissedWrite { server, seen, key });
    }

    fn answer(&mut self, a: Answer) {
        *self.answered = true;
        self.fx.push(Effect::Answer(a));
    }
}

fn one(b: &'static [u8]) -> Answer {
    Answer::One(Bytes::from_static(b))
}

/// The answer when no replica could serve, by the first failure's kind.
fn server_error(e: CallError) -> Answer {
    match e.kind {
        Failure::Timeout => one(compose::BACKEND_TIMEOUT),
        _ => one(compose::NO_SERVER),
    }
}

/// A `delete <key>` for the backup (or a copy's target).
fn delete_parts(key: &[u8]) -> [Bytes; 2] {
    delete_parts_for(key, false).0
}

/// How a machine names a request's key in the commands it composes: as the
/// client wrote it, or, for a meta request with the `b` flag, in base64,
/// which only meta commands with `b` take (memcached stores the decoded
/// key). Returns the parts and the reply shape for each command.
fn delete_parts_for(key: &[u8], base64: bool) -> ([Bytes; 2], Expect) {
    let mut line = BytesMut::with_capacity(key.len() + 16);
    if base64 {
        line.extend_from_slice(b"md ");
        line.extend_from_slice(key);
        line.extend_from_slice(b" b\r\n");
        ([line.freeze(), Bytes::new()], Expect::Meta)
    } else {
        compose::compose_key_command(&mut line, b"delete", key, None);
        ([line.freeze(), Bytes::new()], Expect::Line)
    }
}

/// The read-back of `key` (`mg <key> v f t`, with `b` for a base64 key).
fn readback_parts(key: &[u8], base64: bool) -> [Bytes; 2] {
    let mut line = BytesMut::with_capacity(key.len() + 16);
    if base64 {
        compose::compose_meta_get(&mut line, key, b"b v f t");
    } else {
        compose::compose_readback(&mut line, key);
    }
    [line.freeze(), Bytes::new()]
}

/// A `set` (or `add`) of `key` with `block` (the data and its `\r\n`): a
/// text storage line, or for a base64 key the same store in meta.
#[allow(clippy::too_many_arguments)]
fn store_parts_for(
    verb: Verb,
    key: &[u8],
    base64: bool,
    flags: u32,
    exptime: i64,
    len: usize,
    block: Bytes,
) -> ([Bytes; 2], Expect) {
    let mut line = BytesMut::with_capacity(key.len() + 48);
    if base64 {
        compose::compose_meta_store_b64(&mut line, key, flags, exptime, len, verb == Verb::Add);
        ([line.freeze(), block], Expect::Meta)
    } else {
        compose::compose_storage_line(&mut line, verb, key, flags, exptime, len, None, false);
        ([line.freeze(), block], Expect::Line)
    }
}

/// Whether a delete outcome leaves the server without the key.
fn deleted(r: &Result<Reply, CallError>) -> bool {
    matches!(
        r,
        Ok(Reply {
            status: Status::Deleted | Status::NotFound | Status::MetaHd | Status::MetaNf,
            ..
        })
    )
}

/// Whether a store outcome is `STORED` (`HD` for a meta store).
fn stored(r: &Result<Reply, CallError>) -> bool {
    matches!(
        r,
        Ok(Reply {
            status: Status::Stored | Status::MetaHd,
            ..
        })
    )
}

impl Machine {
    fn new(kind: Work) -> Machine {
        Machine {
            next_call: 0,
            loose: 0,
            answered: false,
            copied: None,
            kind,
        }
    }

    fn cx<'a>(&'a mut self, view: &'a dyn View, fx: &'a mut Vec<Effect>) -> (Cx<'a>, &'a mut Work) {
        (
            Cx {
                view,
                fx,
                next_call: &mut self.next_call,
                loose: &mut self.loose,
                answered: &mut self.answered,
            },
            &mut self.kind,
        )
    }

    /// Start serving `req`. `replicas` has one entry per key (retrievals:
    /// per key in order; single-key verbs: one; flush_all: empty, it uses
    /// `servers`). `servers` is every server id (for flush_all).
    ///
    /// Requests the engine answers itself (quit, version, verbosity, mn,
    /// stats) are answered here too, without upstream calls, should they
    /// arrive.
    pub fn start(
        req: ClientRequest,
        replicas: &[Replicas],
        servers: &[ServerId],
        view: &dyn View,
        fx: &mut Vec<Effect>,
    ) -> Machine {
        let mut m = Machine::new(Work::Done);
        let (mut cx, kind) = m.cx(view, fx);
        *kind = match req.r.verb {
            Verb::Get | Verb::Gets | Verb::Gat | Verb::Gats => {
                cx.count_n(Counter::CmdGet, req.keys().len() as u64);
                if matches!(req.r.verb, Verb::Gat | Verb::Gats) {
                    cx.count(Counter::CmdTouch);
                }
                if req.keys().len() == 1 {
                    read::GetOne::start(req, replicas, &mut cx)
                } else {
                    read::GetMany::start(req, replicas, &mut cx)
                }
            }
            Verb::MetaGet | Verb::MetaDebug => {
                cx.count(Counter::CmdMeta);
                read::MetaRead::start(req, replicas, &mut cx)
            }
            Verb::FlushAll => {
                cx.count(Counter::CmdFlush);
                write::Flush::start(req, servers, &mut cx)
            }
            Verb::Quit | Verb::Version | Verb::Verbosity | Verb::MetaNoop => {
                if let Some(a) = crate::proxy::local_answer(&req.r) {
                    cx.answer(a);
                }
                Work::Done
            }
            Verb::Stats => {
                // `stats` needs every core's counters: only the engine can answer it.
                cx.answer(one(compose::ERROR));
                Work::Done
            }
            verb => {
                if verb.is_storage() {
                    cx.count(Counter::CmdSet);
                } else if verb == Verb::Touch {
                    cx.count(Counter::CmdTouch);
                } else if matches!(
                    verb,
                    Verb::MetaSet | Verb::MetaDelete | Verb::MetaArithmetic
                ) {
                    cx.count(Counter::CmdMeta);
                }
                write::Retire::start(req, replicas, &mut cx)
            }
        };
        m
    }

    /// `stats <group>` or an administration line under `plan` (not
    /// [`AdminPlan::Local`](crate::proxy::AdminPlan::Local) or
    /// [`AdminPlan::Answer`](crate::proxy::AdminPlan::Answer), which the engine
    /// answers itself): sent to every server of `servers` in service, the
    /// replies merged.
    pub fn admin(
        req: ClientRequest,
        plan: crate::proxy::AdminPlan,
        servers: &[ServerId],
        view: &dyn View,
        fx: &mut Vec<Effect>,
    ) -> Machine {
        let mut m = Machine::new(Work::Done);
        let (mut cx, kind) = m.cx(view, fx);
        *kind = admin::Admin::start(&req, plan, servers, &mut cx);
        m.settle();
        m
    }

    /// A detached copy of `item`, just read from `src`, onto `target` with
    /// `add`, verified against `src` afterwards (see [`MetaItem`]); started at
    /// once, its first call pushed to `fx`. Used by resync; a read-through
    /// hit spawns one through [`Effect::Spawn`].
    pub fn copy_item(
        src: ServerId,
        target: ServerId,
        key: Bytes,
        item: MetaItem,
        view: &dyn View,
        fx: &mut Vec<Effect>,
    ) -> Machine {
        let mut m = Machine::copy_item_later(src, target, key, item);
        m.begin(view, fx);
        m
    }

    /// The same copy, not started yet (for [`Effect::Spawn`]).
    fn copy_item_later(src: ServerId, target: ServerId, key: Bytes, item: MetaItem) -> Machine {
        Machine::new(Work::Copy(copy::CopyItem::new(src, target, key, item)))
    }

    /// Start a machine handed over by [`Effect::Spawn`]. Does nothing for a
    /// machine that has started already.
    pub fn begin(&mut self, view: &dyn View, fx: &mut Vec<Effect>) {
        let (mut cx, kind) = self.cx(view, fx);
        if let Work::Copy(c) = kind {
            c.begin(&mut cx);
        }
        self.settle();
    }

    /// Feed the outcome of call `call`. Outcomes for calls the machine does
    /// not wait for are ignored.
    pub fn on_outcome(
        &mut self,
        call: CallId,
        outcome: Result<Reply, CallError>,
        view: &dyn View,
        fx: &mut Vec<Effect>,
    ) {
        if call & LOOSE != 0 {
            self.loose = self.loose.saturating_sub(1);
            return;
        }
        let (mut cx, kind) = self.cx(view, fx);
        match kind {
            Work::Done => {}
            Work::GetOne(m) => m.on_outcome(call, outcome, &mut cx),
            Work::GetMany(m) => m.on_outcome(call, outcome, &mut cx),
            Work::Meta(m) => m.on_outcome(call, outcome, &mut cx),
            Work::Write(m) => m.on_outcome(call, outcome, &mut cx),
            Work::Retire(m) => {
                if m.on_outcome(call, outcome, &mut cx) {
                    if let Work::Retire(m) = std::mem::replace(kind, Work::Done) {
                        *kind = m.write(&mut cx);
                    }
                }
            }
            Work::Flush(m) => m.on_outcome(call, outcome, &mut cx),
            Work::Copy(m) => m.on_outcome(call, outcome, &mut cx),
            Work::Admin(m) => m.on_outcome(call, outcome, &mut cx),
        }
        self.settle();
    }

    /// Drop the state of a finished machine early (its buffers go back at once).
    fn settle(&mut self) {
        let finished = match &self.kind {
            Work::Done => false,
            Work::GetOne(m) => m.is_done(),
            Work::GetMany(m) => m.is_done(),
            Work::Meta(m) => m.is_done(),
            Work::Write(m) => m.is_done(),
            Work::Retire(_) => false,
            Work::Flush(m) => m.is_done(),
            Work::Copy(m) => m.is_done(),
            Work::Admin(m) => m.is_done(),
        };
        if finished {
            if let Work::Copy(c) = &self.kind {
                self.copied = c.result();
            }
            self.kind = Work::Done;
        }
    }

    /// True when no call is outstanding and nothing more will be emitted:
    /// the engine frees the slot.
    pub fn is_done(&self) -> bool {
        self.loose == 0 && matches!(self.kind, Work::Done)
    }

    /// Whether this machine has pushed its client's answer.
    pub fn answered(&self) -> bool {
        self.answered
    }

    /// For a finished copy machine: whether the target kept the copy.
    pub fn copy_result(&self) -> Option<bool> {
        self.copied
    }
}
