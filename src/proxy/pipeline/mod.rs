//! The upstream connection machine, sans-IO: one pipelined connection to a
//! server, shared by every client of a core.
//!
//! It owns the connection's decisions: its phase (idle, connecting, ready,
//! backing off), the FIFO of calls written on it and the matching of reply
//! bytes to them (a meta request's opaque, a value's key), when it is stuck
//! (the oldest written call has seen no reply bytes for the request
//! timeout), and what a failure does to its calls: the head fails; reads
//! behind it go again once on a fresh connection while the server is up;
//! other written calls fail, since they may have run; calls still waiting
//! for the connection move to the new one.
//!
//! Outcomes are pushed onto the caller's queue as `(request, call, result)`.
//! The shell owns the socket; it reports connects, sends and received
//! plaintext, and asks [`Pipeline::due`] once per turn. Time is injected.
//!
//! Must not import `server`, sockets or the clock.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};

use crate::protocol::matching::{self, TagCheck};
use crate::protocol::{advance_queue, reply_size_hint, Expect, ValueItem, MAX_LINE_LEN};
use crate::proxy::machine::{CallError, CallId, Failure, Reply};
use crate::upstream::ServerId;

/// Grow the read buffer by at least this much.
const READ_STEP: usize = 64 * 1024;

/// The least room a receive is given before the bytes move to the other
/// read buffer: a burst of pipelined replies arrives in one receive instead
/// of being cut across loop turns (with 4 KiB, the load bench's (b) cost 5 %
/// more CPU per request than with provided buffers; with 32 KiB, level:
/// docs/benchmarks.md, 2026-12-07 23:00 UTC).
const MIN_LANDING: usize = 32 * 1024;

/// An empty read buffer larger than this is released when the connection idles.
const IDLE_KEEP: usize = 1 << 20;

/// A call's result, for the request slot that made it.
pub type Outcome = (usize, CallId, Result<Reply, CallError>);

/// One call: a request machine's request to a server.
#[derive(Debug)]
pub struct Call {
    /// The request slot that made it.
    pub req: usize,
    /// Which of that request's calls it is.
    pub call: CallId,
    /// The shape of its reply.
    pub expect: Expect,
    /// Its bytes: kept only for reads, which may be sent again after a
    /// failure and whose replies are checked against the keys they asked for.
    pub parts: [Bytes; 2],
    /// Already sent again once after a failure.
    pub retried: bool,
    /// The opaque memring added to this meta request, which its reply must
    /// echo (see [`crate::protocol::matching`]).
    pub tag: Option<u32>,
    /// When it was written on its connection (upstream latency runs from
    /// there to the reply).
    pub written_at: Instant,
}

impl Call {
    /// A call not yet written anywhere.
    pub fn new(req: usize, call: CallId, expect: Expect, parts: [Bytes; 2], now: Instant) -> Call {
        Call {
            req,
            call,
            expect,
            parts,
            retried: false,
            tag: None,
            written_at: now,
        }
    }

    fn retryable(&self) -> bool {
        self.expect == Expect::Values && !self.retried
    }

    /// This call's outcome when it fails with `kind` at `server`.
    fn failed(&self, server: ServerId, kind: Failure) -> Outcome {
        (
            self.req,
            self.call,
            Err(CallError::new(server, self.expect, kind)),
        )
    }

    /// This call's outcome when it fails before it was written.
    fn unsent(&self, server: ServerId, kind: Failure) -> Outcome {
        let e = CallError::unsent(server, self.expect, kind);
        (self.req, self.call, Err(e))
    }
}

/// Where a connection is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// No socket; the next call connects.
    Idle,
    /// A connect is in flight until `deadline`.
    Connecting {
        /// When the connect counts as failed.
        deadline: Instant,
    },
    /// Connected: calls are written at once.
    Ready,
    /// A connect failed: calls fail at once until then.
    Backoff(Instant),
}

/// What [`Pipeline::queue`] asks of the shell.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Queued {
    /// Written to the output: send it this turn.
    Written,
    /// Waiting for the connect in flight.
    Waiting,
    /// Waiting for a connection: open one.
    Connect,
    /// Failed at once (backing off); its outcome is queued.
    Refused,
}

/// A connection that must be given up, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    /// The bytes are a reply, but not to the call at the head of the FIFO
    /// (`what` they were): any later reply could be matched to the wrong
    /// request.
    OutOfStep(&'static str),
    /// The bytes are not a reply at all.
    Garbled(&'static str),
}

/// What a turn's deadline check found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Due {
    /// Nothing is timed.
    Never,
    /// Look again by then.
    At(Instant),
    /// Give the connection up: the connect timed out
    /// ([`Failure::Connect`]) or the head call is stuck
    /// ([`Failure::Timeout`]).
    Fail(Failure),
}

/// What a failure did, for the shell's counters and its next step.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Failed {
    /// The head call timed out (count a backend timeout).
    pub timed_out: bool,
    /// Calls wait for a fresh connection: open one now.
    pub reconnect: bool,
}

/// One pipelined connection's protocol state.
#[derive(Debug)]
pub struct Pipeline {
    /// The server it talks to, as the live topology numbers it (named in
    /// its calls' errors).
    server: ServerId,
    phase: Phase,
    /// Failed connects in a row, for the backoff.
    attempts: u32,
    /// Waiting for the connection.
    pending: VecDeque<Call>,
    /// Queued in `out` (or sent), waiting for their replies, in order.
    written: VecDeque<Call>,
    /// Bytes to send, in order; the shell may have the front ones in flight.
    out: VecDeque<Bytes>,
    rbuf: BytesMut,
    /// `rbuf` is a [`READ_STEP`] buffer made by [`Pipeline::grow`] (not a
    /// large value's exact one).
    rbuf_standard: bool,
    /// The read buffer before the last [`Pipeline::grow`], kept to be
    /// reused once the replies framed from it are gone: receives alternate
    /// between two buffers instead of allocating one per [`READ_STEP`].
    other: Option<BytesMut>,
    /// The head's reply already had its opaque checked and taken out.
    head_checked: bool,
    /// The opaque for the next tagged meta request.
    next_tag: u32,
    /// Where the ` O<n>` tokens of this connection's requests are written
    /// (split off in turn: one allocation per few hundred requests).
    tags: BytesMut,
    /// Last time the head of `written` made progress (written, or reply bytes).
    progress_at: Instant,
}

impl Pipeline {
    /// An idle connection to `server`.
    pub fn new(server: ServerId, now: Instant) -> Pipeline {
        Pipeline {
            server,
            phase: Phase::Idle,
            attempts: 0,
            pending: VecDeque::new(),
            written: VecDeque::with_capacity(64),
            out: VecDeque::with_capacity(64),
            rbuf: BytesMut::new(),
            rbuf_standard: false,
            other: None,
            head_checked: false,
            next_tag: 0,
            tags: BytesMut::new(),
            progress_at: now,
        }
    }

    /// A reload numbered the servers anew: this connection's server is now
    /// `server`.
    pub fn renumber(&mut self, server: ServerId) {
        self.server = server;
    }

    /// Where the connection is in its life.
    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// Calls on this connection, for picking the least loaded one.
    pub fn load(&self) -> usize {
        self.pending.len() + self.written.len()
    }

    /// True when calls were written and not all answered: a socket given
    /// up now leaves requests that may still reach the server.
    pub fn unanswered(&self) -> bool {
        !self.written.is_empty() || !self.out.is_empty()
    }

    /// Take `call` on: write it, or keep it for the connection, or refuse
    /// it while backing off (its outcome goes to `outcomes`).
    pub fn queue(&mut self, call: Call, now: Instant, outcomes: &mut VecDeque<Outcome>) -> Queued {
        match self.phase {
            Phase::Ready => {
                self.write(now, call);
                Queued::Written
            }
            Phase::Connecting { .. } => {
                self.pending.push_back(call);
                Queued::Waiting
            }
            Phase::Backoff(until) if now < until => {
                outcomes.push_back(call.unsent(self.server, Failure::Connect));
                Queued::Refused
            }
            Phase::Idle | Phase::Backoff(_) => {
                self.pending.push_back(call);
                Queued::Connect
            }
        }
    }

    /// The shell started a connect that must finish by `deadline`.
    pub fn connecting(&mut self, deadline: Instant) {
        self.phase = Phase::Connecting { deadline };
    }

    /// The connect succeeded: the waiting calls are written.
    pub fn connected(&mut self, now: Instant) {
        self.phase = Phase::Ready;
        self.attempts = 0;
        // Bounded by the calls waiting.
        while let Some(call) = self.pending.pop_front() {
            self.write(now, call);
        }
    }

    /// Queue a call's bytes for this turn's send.
    fn write(&mut self, now: Instant, mut call: Call) {
        if self.written.is_empty() {
            self.progress_at = now;
        }
        call.written_at = now;
        call.tag = None;
        if call.expect == Expect::Values {
            for p in &call.parts {
                if !p.is_empty() {
                    self.out.push_back(p.clone());
                }
            }
        } else {
            let [mut line, data] = std::mem::take(&mut call.parts);
            if let Some(at) = (call.expect == Expect::Meta)
                .then(|| matching::meta_tag_point(&line))
                .flatten()
            {
                let tag = self.next_tag;
                self.next_tag = tag.wrapping_add(1);
                if self.tags.capacity() < 16 {
                    self.tags = BytesMut::with_capacity(4096);
                }
                matching::compose_meta_tag(&mut self.tags, tag);
                self.out.push_back(line.split_to(at));
                self.out.push_back(self.tags.split().freeze());
                call.tag = Some(tag);
            }
            for p in [line, data] {
                if !p.is_empty() {
                    self.out.push_back(p);
                }
            }
        }
        self.written.push_back(call);
    }

    /// The bytes to send, in order.
    pub fn out(&self) -> &VecDeque<Bytes> {
        &self.out
    }

    /// `n` bytes of [`Pipeline::out`] were sent.
    pub fn sent(&mut self, n: usize) {
        advance_queue(&mut self.out, n);
    }

    /// Hand the bytes to send to `each` (a transport that copies them:
    /// TLS encrypts them into records), which returns how much of a chunk
    /// it took; a short take stops, and what is left stays queued.
    pub fn drain_out(&mut self, mut each: impl FnMut(&[u8]) -> usize) {
        // Bounded by the queue: each pass takes a chunk or stops.
        while let Some(front) = self.out.front_mut() {
            let n = each(front).min(front.len());
            if n == front.len() {
                self.out.pop_front();
            } else {
                bytes::Buf::advance(front, n);
                break;
            }
        }
    }

    /// Take the output queue (its memory must outlive a send in flight on
    /// a socket given up).
    pub fn take_out(&mut self) -> VecDeque<Bytes> {
        std::mem::take(&mut self.out)
    }

    /// Plaintext reply bytes arrived, copied in (TLS decrypts into a
    /// buffer of its own). Then [`Pipeline::frame`].
    pub fn copy_in(&mut self, bytes: &[u8]) {
        if self.rbuf.capacity() - self.rbuf.len() < bytes.len() {
            self.rbuf.reserve(bytes.len().max(READ_STEP));
            self.rbuf_standard = false;
        }
        self.rbuf.extend_from_slice(bytes);
    }

    /// The memory the next receive should land in: the read buffer's spare
    /// capacity (at least [`MIN_LANDING`] bytes; a large value's exact
    /// buffer when one streams in), split off so that the kernel can write
    /// it while the buffered bytes stay readable. Hand it back, filled, to
    /// [`Pipeline::landed`]; until then the read buffer is not grown.
    pub fn landing(&mut self) -> BytesMut {
        self.release_idle();
        if self.rbuf.capacity() - self.rbuf.len() < MIN_LANDING {
            // Little room left. A reply whose end fits it (a large value's
            // exact buffer, near its end) is not moved for want of a few
            // KiB. Otherwise the buffer's own room is reclaimed if no reply
            // framed from it is still alive, or the bytes move on to the
            // other buffer.
            let fits = reply_size_hint(&self.rbuf).is_some_and(|n| n <= self.rbuf.capacity());
            if !fits && !self.rbuf.try_reclaim(READ_STEP) {
                self.grow();
            }
        }
        if self.rbuf.capacity() == self.rbuf.len() {
            // No room at all (a receive needs room for a byte).
            self.grow();
        }
        self.rbuf.split_off(self.rbuf.len())
    }

    /// Move the buffered bytes to a fresh [`READ_STEP`] buffer: the other
    /// one if the replies framed from it are gone (no allocation), else a
    /// new one; the current one becomes the other. A partial reply too long
    /// for that grows the buffer instead.
    fn grow(&mut self) {
        let len = self.rbuf.len();
        if len + MIN_LANDING > READ_STEP {
            self.rbuf.reserve(READ_STEP);
            self.rbuf_standard = false;
            return;
        }
        let mut next = match self.other.take() {
            Some(mut b) => {
                b.clear();
                if b.try_reclaim(READ_STEP) {
                    b
                } else {
                    BytesMut::with_capacity(READ_STEP)
                }
            }
            None => BytesMut::with_capacity(READ_STEP),
        };
        next.extend_from_slice(&self.rbuf);
        let old = std::mem::replace(&mut self.rbuf, next);
        if std::mem::replace(&mut self.rbuf_standard, true) {
            self.other = Some(old);
        }
    }

    /// Reply bytes arrived in `filled`, a landing from
    /// [`Pipeline::landing`]: they join the read buffer they were split
    /// from, without a copy. Then [`Pipeline::frame`].
    pub fn landed(&mut self, filled: BytesMut) {
        self.rbuf.unsplit(filled);
    }

    /// After bytes arrived at `now`: frame every complete reply, match it to
    /// its call and queue its outcome. `latency` gets each answered call's
    /// time since it was written. Returns whether any call was answered, or
    /// the fault that ends the connection.
    pub fn frame(
        &mut self,
        now: Instant,
        max_value: usize,
        items: &mut Vec<ValueItem>,
        outcomes: &mut VecDeque<Outcome>,
        mut latency: impl FnMut(Duration),
    ) -> Result<bool, Fault> {
        self.progress_at = now;
        let mut answered = false;
        // Bounded by the buffered bytes: every pass frames a reply or stops.
        while let Some(head) = self.written.front() {
            if let (Some(tag), false) = (head.tag, self.head_checked) {
                match matching::check_meta_tag(&self.rbuf, tag, MAX_LINE_LEN) {
                    TagCheck::Incomplete if self.rbuf.len() < MAX_LINE_LEN => break,
                    TagCheck::Echoed(r) => matching::strip_token(&mut self.rbuf, r),
                    TagCheck::ErrorLine => {}
                    TagCheck::Incomplete | TagCheck::Mismatch => {
                        return Err(Fault::OutOfStep(
                            "a meta reply without its request's opaque",
                        ));
                    }
                }
                self.head_checked = true;
            }
            match Reply::frame(head.expect, &mut self.rbuf, max_value, items) {
                Ok(Some(reply)) => {
                    if head.expect == Expect::Values
                        && !matching::values_match(&head.parts[0], &reply.frame, items)
                    {
                        return Err(Fault::OutOfStep(
                            "a value for a key its request did not ask for",
                        ));
                    }
                    self.head_checked = false;
                    if let Some(call) = self.written.pop_front() {
                        answered = true;
                        latency(now.saturating_duration_since(call.written_at));
                        outcomes.push_back((call.req, call.call, Ok(reply)));
                    }
                }
                Ok(None) => break,
                Err(e) => return Err(Fault::Garbled(e.msg)),
            }
        }
        if let Some(need) = reply_size_hint(&self.rbuf).filter(|n| *n > READ_STEP) {
            if self.rbuf.capacity() < need {
                // A large value is on its way: one buffer of its exact size,
                // instead of growing step by step (and copying) while it
                // streams in.
                let mut exact = BytesMut::with_capacity(need);
                exact.extend_from_slice(&self.rbuf);
                self.rbuf = exact;
                self.rbuf_standard = false;
            }
        }
        if self.written.is_empty() && !self.rbuf.is_empty() {
            return Err(Fault::OutOfStep("bytes no request asked for"));
        }
        Ok(answered)
    }

    /// The connection's deadline at `now`: the connect's, or the head
    /// call's (`request_timeout` without reply bytes).
    pub fn due(&self, now: Instant, request_timeout: Duration) -> Due {
        let at = match self.phase {
            Phase::Connecting { deadline } => deadline,
            Phase::Ready if !self.written.is_empty() => self.progress_at + request_timeout,
            _ => return Due::Never,
        };
        if now < at {
            return Due::At(at);
        }
        Due::Fail(match self.phase {
            Phase::Connecting { .. } => Failure::Connect,
            _ => Failure::Timeout,
        })
    }

    /// How long the connection has made no progress with calls waiting for
    /// replies (zero when none wait).
    pub fn stalled(&self, now: Instant) -> Duration {
        if self.written.is_empty() {
            return Duration::ZERO;
        }
        now.saturating_duration_since(self.progress_at)
    }

    /// Calls written and waiting for replies (for the log line of a stuck
    /// connection).
    pub fn waiting(&self) -> usize {
        self.written.len()
    }

    /// The connection failed (`why`), its socket is gone: settle its calls
    /// (see the module's header). `server_up`: the server's health after
    /// this failure was charged. `backoff` gives the delay after the given
    /// number of failed connects in a row.
    pub fn fail(
        &mut self,
        why: Failure,
        server_up: bool,
        now: Instant,
        backoff: impl FnOnce(u32) -> Duration,
        outcomes: &mut VecDeque<Outcome>,
    ) -> Failed {
        self.out.clear();
        self.rbuf.clear();
        self.head_checked = false;
        self.phase = if why == Failure::Connect {
            self.attempts = self.attempts.saturating_add(1);
            Phase::Backoff(now + backoff(self.attempts))
        } else {
            Phase::Idle
        };
        let mut failed = Failed::default();
        // Written calls, oldest first.
        let mut retry = VecDeque::new();
        for (i, mut call) in self.written.drain(..).enumerate() {
            let head_timed_out = why == Failure::Timeout && i == 0;
            if server_up && call.retryable() && !head_timed_out && why != Failure::Connect {
                call.retried = true;
                retry.push_back(call);
                continue;
            }
            failed.timed_out |= head_timed_out;
            outcomes.push_back(call.failed(self.server, why));
        }
        retry.append(&mut self.pending);
        if !server_up || why == Failure::Connect {
            let kind = if why == Failure::Connect {
                Failure::Connect
            } else {
                Failure::Closed
            };
            for call in retry {
                // Reads set aside for a retry were written once: they keep
                // their reply shape's verdict on being sent again.
                outcomes.push_back(if call.retried {
                    call.failed(self.server, kind)
                } else {
                    call.unsent(self.server, kind)
                });
            }
            return failed;
        }
        failed.reconnect = !retry.is_empty();
        self.pending = retry;
        failed
    }

    /// The server left the topology: every call fails as closed.
    pub fn retire(&mut self, outcomes: &mut VecDeque<Outcome>) {
        for call in self.written.drain(..) {
            outcomes.push_back(call.failed(self.server, Failure::Closed));
        }
        for call in self.pending.drain(..) {
            outcomes.push_back(call.unsent(self.server, Failure::Closed));
        }
    }

    /// Release the read buffer while the connection idles after large
    /// values passed.
    pub fn release_idle(&mut self) {
        if self.written.is_empty() && self.rbuf.is_empty() && self.rbuf.capacity() > IDLE_KEEP {
            self.rbuf = BytesMut::new();
            self.rbuf_standard = false;
        }
    }
}

#[cfg(test)]
mod tests;
