//! The client connection machine, sans-IO: plaintext bytes in, requests to
//! start and answers out in the client's order.
//!
//! It owns every protocol decision a connection makes between requests:
//! which protocol the connection speaks (its first byte), how much of the
//! input is a request and how much is a refused item's data to swallow, when
//! a retrieval line past the line limit is served batch by batch, when the
//! next request must wait (the byte budget, a binary request that may take
//! two steps, a write queued for its key's section), and when the
//! connection ends. Its life is one [`Phase`].
//!
//! The shell feeds it what the transport decrypted ([`ClientConn::received`]),
//! asks for the next request to start ([`ClientConn::next`]), fills the
//! answers in ([`ClientConn::fill`]) and writes [`ClientConn::out`], telling
//! the machine how much left ([`ClientConn::sent`]). Time is injected.
//!
//! Must not import `server`, sockets or the clock.

use std::collections::VecDeque;
use std::ops::Range;
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};

use crate::metrics::Command;
use crate::protocol::binary::REQUEST_MAGIC;
use crate::protocol::request::{
    batch_request, noreply_requested, parse_retrieval_more, too_large_removes,
};
use crate::protocol::{advance_queue, compose, parse_request, ParseError, Parsed, Request, Verb};
use crate::proxy::binary::{self, Plan, Step};
use crate::proxy::machine::Answer;

/// Requests parsed ahead of their answers, per connection (as memcached
/// bounds a connection's pipeline): past this the client is not read.
pub const MAX_INFLIGHT: usize = 1024;

/// Grow the read buffer by at least this much, so small reads do not each
/// reallocate.
const READ_STEP: usize = 4 * 1024;

/// An empty read buffer larger than this is released.
const IDLE_KEEP: usize = 64 * 1024;

/// The first byte of a TLS handshake record (a ClientHello).
const TLS_HANDSHAKE: u8 = 0x16;

/// memcached's answer to a store it has no memory for.
pub const OUT_OF_MEMORY: &[u8] = b"SERVER_ERROR out of memory storing object\r\n";

/// Where a client connection is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// The transport's handshake (TLS) is under way: no request yet; the
    /// connection is cut if it has not finished by `deadline`.
    Handshaking {
        /// When an unfinished handshake is given up.
        deadline: Instant,
    },
    /// Reading and serving requests.
    Open,
    /// The peer ended its side: what it sent is still served, then the
    /// connection closes.
    Draining,
    /// A close is queued (quit, lost framing, refused input): nothing more
    /// is read or started; the answers before it are written, then the
    /// connection closes.
    Closing,
    /// Failed or finished: the shell lets the socket go.
    Closed,
}

/// What the machine needs of the proxy's configuration.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// memcached's `-I`: the largest item a store may carry.
    pub max_item: usize,
    /// `--client-buffer`: unsent answers plus the estimate of those in
    /// flight that a client may have before it stops being read.
    pub budget: usize,
    /// Stamp requests for the latency histograms.
    pub timing: bool,
}

/// Where a handshaking connection stands (see [`ClientConn::handshake_check`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Handshake {
    /// Not handshaking (any more).
    Done,
    /// Still handshaking; look again by then.
    Pending(Instant),
    /// The deadline passed: the connection is closed (count it).
    Expired,
}

/// The next thing the shell must do for this connection.
#[derive(Debug)]
pub enum Next {
    /// Serve a text/meta request; its answer goes to slot `seq`.
    /// `strip_end`: a batch of a long get line that is not its last.
    Request {
        seq: u64,
        r: Request,
        bytes: Bytes,
        strip_end: bool,
    },
    /// Serve a binary request, translated to text/meta; `plan` turns its
    /// answer back into binary. Its answer goes to slot `seq`.
    Binary {
        seq: u64,
        request: Bytes,
        plan: Plan,
    },
}

/// A reply slot in the client's order, with its latency stamp (None when
/// not timing, or for answers that are not a request's, like a close).
#[derive(Debug)]
enum Slot {
    /// Its answer is due; `write`: the request may change what a later
    /// read of this client sees (see [`ClientConn::writing`]).
    Waiting {
        stamp: Option<Stamp>,
        write: bool,
    },
    Ready(Answer, Option<Stamp>),
}

/// What the latency histogram needs of a request: its command and the turn
/// that received its first byte.
#[derive(Clone, Copy, Debug)]
struct Stamp {
    cmd: Command,
    since: Instant,
}

/// One client connection's protocol state.
#[derive(Debug)]
pub struct ClientConn {
    phase: Phase,
    rbuf: BytesMut,
    /// Data bytes still to drop after a refused storage command.
    swallow: usize,
    /// Decided by the connection's first byte (0x80: the binary protocol),
    /// as memcached does.
    binary: Option<bool>,
    /// A binary request that may take two steps is in flight (its slot's
    /// sequence number): nothing after it may start before it ends, or its
    /// second step could be overtaken.
    barrier: Option<u64>,
    /// A write of this client waits for a key section another request
    /// holds: nothing after it may start before it does.
    section_wait: bool,
    /// The answer to a too-large request, queued once its data is swallowed
    /// (memcached answers a length it cannot swallow, never).
    held: Option<(Answer, Option<Stamp>)>,
    /// A retrieval line past the line limit being served batch by batch:
    /// the previous batch, which the next parse continues.
    long_get: Option<Request>,
    /// Answers in request order; `first_seq` numbers the front one.
    slots: VecDeque<Slot>,
    first_seq: u64,
    /// Requests started and not yet answered.
    waiting: usize,
    /// Of those, writes (see [`ClientConn::writing`]).
    writes: u32,
    /// Turn that received the oldest unparsed byte of `rbuf` (when timing).
    arrived: Instant,
    /// The latest receive: its turn and how many bytes it brought.
    last_read: (Instant, usize),
    /// Bytes written to this client so far.
    sent_total: u64,
    /// Answers moved to `out`, timed once `sent_total` passes the offset of
    /// their last byte: (that offset, stamp), in order.
    timed: VecDeque<(u64, Stamp)>,
    /// Answered bytes not yet written, in order; the shell may have the
    /// front ones in flight.
    out: VecDeque<Bytes>,
    out_bytes: usize,
    /// Running estimate of one answer's size, for the budget.
    est_answer: usize,
    /// Bad input answered since the shell last asked.
    refused: u32,
    /// The first byte was a TLS handshake record's.
    tls_hello: bool,
}

impl ClientConn {
    /// A connection accepted at `now`, with `budget` bytes of answers.
    pub fn new(budget: usize, now: Instant) -> ClientConn {
        ClientConn {
            phase: Phase::Open,
            rbuf: BytesMut::new(),
            swallow: 0,
            binary: None,
            barrier: None,
            section_wait: false,
            held: None,
            long_get: None,
            slots: VecDeque::new(),
            first_seq: 0,
            waiting: 0,
            writes: 0,
            arrived: now,
            last_read: (now, 0),
            sent_total: 0,
            timed: VecDeque::new(),
            out: VecDeque::new(),
            out_bytes: 0,
            // Start cautious (two answers fill the budget) and learn.
            est_answer: (budget / 2).max(1),
            refused: 0,
            tls_hello: false,
        }
    }

    /// A connection whose transport must finish a handshake by `deadline`
    /// before it carries requests.
    pub fn handshaking(budget: usize, now: Instant, deadline: Instant) -> ClientConn {
        let mut c = ClientConn::new(budget, now);
        c.phase = Phase::Handshaking { deadline };
        c
    }

    /// The transport finished its handshake: requests may come.
    pub fn handshake_done(&mut self) {
        if matches!(self.phase, Phase::Handshaking { .. }) {
            self.phase = Phase::Open;
        }
    }

    /// Whether the handshake is done, pending, or just expired at `now` (the
    /// connection is then closed).
    pub fn handshake_check(&mut self, now: Instant) -> Handshake {
        match self.phase {
            Phase::Handshaking { deadline } if now >= deadline => {
                self.phase = Phase::Closed;
                Handshake::Expired
            }
            Phase::Handshaking { deadline } => Handshake::Pending(deadline),
            _ => Handshake::Done,
        }
    }

    /// Where the connection is in its life.
    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// True when received bytes are still wanted (a handshake's too).
    pub fn reading(&self) -> bool {
        matches!(self.phase, Phase::Open | Phase::Handshaking { .. })
    }

    /// True when the binary protocol was detected.
    pub fn is_binary(&self) -> bool {
        self.binary == Some(true)
    }

    /// Bytes received and not yet consumed (partial requests, or requests
    /// the budget holds back).
    pub fn buffered(&self) -> usize {
        self.rbuf.len()
    }

    /// Plaintext bytes the transport received at `now`. Dropped unless the
    /// connection is still [`Phase::Open`].
    pub fn received(&mut self, bytes: &[u8], now: Instant) {
        if self.phase != Phase::Open || bytes.is_empty() {
            return;
        }
        if self.rbuf.capacity() - self.rbuf.len() < bytes.len() {
            self.rbuf.reserve(bytes.len().max(READ_STEP));
        }
        self.rbuf.extend_from_slice(bytes);
        self.last_read = (now, bytes.len());
        self.sync_arrival();
    }

    /// The peer ended its side: serve what it sent, then close (at once
    /// when it left during the handshake).
    pub fn peer_closed(&mut self) {
        match self.phase {
            Phase::Open => self.phase = Phase::Draining,
            Phase::Handshaking { .. } => self.phase = Phase::Closed,
            _ => {}
        }
    }

    /// The connection failed (a send or receive error): nothing more is
    /// written.
    pub fn fail(&mut self) {
        self.phase = Phase::Closed;
    }

    /// The transport under the connection failed (a TLS error): drop every
    /// request and answer; the connection closes once what the transport
    /// itself still has to say (an alert) is written.
    pub fn abandon(&mut self) {
        self.stop();
        self.slots.clear();
        self.waiting = 0;
        self.out.clear();
        self.out_bytes = 0;
        self.held = None;
    }

    /// True (once) when the connection began with a TLS handshake record
    /// on a plaintext listener: it was closed without a word.
    pub fn take_tls_hello(&mut self) -> bool {
        std::mem::take(&mut self.tls_hello)
    }

    /// Release the read buffer after a large request passed, rather than
    /// keep it for an idle connection.
    pub fn release_idle(&mut self) {
        if self.rbuf.is_empty() && self.rbuf.capacity() > IDLE_KEEP {
            self.rbuf = BytesMut::new();
        }
    }

    /// True when the client may start another request: its unsent answers
    /// (and `pending` bytes the transport still holds) plus the expected
    /// size of those in flight, this one included, fit the budget. One
    /// request may always run, whatever its size.
    pub fn can_start(&self, budget: usize, pending: usize) -> bool {
        let unsent = self.out_bytes.saturating_add(pending);
        if self.waiting == 0 && unsent == 0 {
            return true;
        }
        self.waiting < MAX_INFLIGHT
            && unsent.saturating_add((self.waiting + 1).saturating_mul(self.est_answer)) <= budget
    }

    /// True when the shell should keep a receive armed: open and within
    /// budget.
    pub fn wants_input(&self, budget: usize, pending: usize) -> bool {
        self.reading() && self.can_start(budget, pending)
    }

    /// True when everything there was to answer is written out: the shell
    /// closes the connection once its own send has completed.
    pub fn finished(&self) -> bool {
        match self.phase {
            Phase::Open | Phase::Handshaking { .. } => false,
            Phase::Draining | Phase::Closing => self.slots.is_empty() && self.out.is_empty(),
            Phase::Closed => true,
        }
    }

    /// Hold the client's next requests back while one of its writes waits
    /// before its first call (for its key's section, or for a migration
    /// window's deletes) (`true`), or let them go (`false`).
    pub fn hold(&mut self, waiting: bool) {
        self.section_wait = waiting;
    }

    /// The request in slot `seq` writes: until it is answered, a later
    /// read of this client must not be hedged (a hedge on the backup could
    /// overtake the write's copy there).
    pub fn writing(&mut self, seq: u64) {
        if let Some(Slot::Waiting { write, .. }) = self.slot_mut(seq) {
            if !*write {
                *write = true;
                self.writes += 1;
            }
        }
    }

    /// Writes started and not yet answered.
    pub fn writes_waiting(&self) -> u32 {
        self.writes
    }

    /// The request in slot `seq` ended (its binary answer is final): lift
    /// the barrier it set. True when that lets more requests start.
    pub fn end_barrier(&mut self, seq: u64) -> bool {
        if self.barrier == Some(seq) {
            self.barrier = None;
            return true;
        }
        false
    }

    /// Give slot `seq` its command once known (a binary request's).
    pub fn label(&mut self, seq: u64, cmd: Command) {
        if let Some(Slot::Waiting { stamp: Some(s), .. }) = self.slot_mut(seq) {
            s.cmd = cmd;
        }
    }

    fn slot_mut(&mut self, seq: u64) -> Option<&mut Slot> {
        let pos = seq.checked_sub(self.first_seq)?;
        self.slots.get_mut(usize::try_from(pos).ok()?)
    }

    /// Fill slot `seq` with its answer; true when answers became ready to
    /// write (it was the front one). An [`Answer::Close`] stops the
    /// connection from starting anything after it.
    pub fn fill(&mut self, seq: u64, a: Answer) -> bool {
        let Some(pos) = seq.checked_sub(self.first_seq) else {
            return false;
        };
        let Some(slot) = usize::try_from(pos)
            .ok()
            .and_then(|p| self.slots.get_mut(p))
        else {
            return false;
        };
        let stamp = match slot {
            Slot::Waiting { stamp, write } => {
                self.waiting = self.waiting.saturating_sub(1);
                if *write {
                    self.writes = self.writes.saturating_sub(1);
                }
                *stamp
            }
            Slot::Ready(..) => None,
        };
        // The estimate follows a larger answer at once and halves towards a
        // smaller one, so the window of requests in flight opens like TCP's
        // slow start and never lets a burst of large answers past the budget.
        let size = answer_len(&a).max(64);
        self.est_answer = if size >= self.est_answer {
            size
        } else {
            (self.est_answer / 2).max(size)
        };
        let close = matches!(a, Answer::Close);
        *slot = Slot::Ready(a, stamp);
        if close {
            self.stop();
        }
        pos == 0
    }

    /// Queue an answer made without a request (an error, a close) in order.
    fn push_ready(&mut self, a: Answer, stamp: Option<Stamp>) {
        if matches!(a, Answer::Close) {
            self.stop();
        }
        self.push_slot(Slot::Ready(a, stamp));
        self.drain_ready();
    }

    /// A close is queued: nothing more is read or started, and what was
    /// buffered behind it is released.
    fn stop(&mut self) {
        if matches!(
            self.phase,
            Phase::Open | Phase::Draining | Phase::Handshaking { .. }
        ) {
            self.phase = Phase::Closing;
        }
        self.rbuf = BytesMut::new();
        self.swallow = 0;
        self.long_get = None;
    }

    /// Reserve the next answer slot; returns its sequence number.
    fn push_slot(&mut self, slot: Slot) -> u64 {
        let seq = self.first_seq + self.slots.len() as u64;
        if matches!(slot, Slot::Waiting { .. }) {
            self.waiting += 1;
        }
        self.slots.push_back(slot);
        seq
    }

    /// Move the answered prefix of the slots to the output queue.
    pub fn drain_ready(&mut self) {
        while let Some(Slot::Ready(..)) = self.slots.front() {
            let Some(Slot::Ready(a, stamp)) = self.slots.pop_front() else {
                break;
            };
            self.first_seq += 1;
            match a {
                Answer::Nothing => {}
                Answer::One(b) => self.queue_out(b),
                Answer::Many(v) => v.into_iter().for_each(|b| self.queue_out(b)),
                Answer::Close => {
                    // Whatever was still to come is dropped with the connection.
                    self.slots.clear();
                    self.waiting = 0;
                    self.phase = Phase::Closing;
                    break;
                }
            }
            if let Some(s) = stamp {
                // Its last byte is the last one queued so far.
                let end = self.sent_total + self.out_bytes as u64;
                self.timed.push_back((end, s));
            }
        }
    }

    fn queue_out(&mut self, b: Bytes) {
        if !b.is_empty() {
            self.out_bytes += b.len();
            self.out.push_back(b);
        }
    }

    /// The answers ready to write, in order.
    pub fn out(&self) -> &VecDeque<Bytes> {
        &self.out
    }

    /// Hand up to `max` bytes of the ready answers to a transport that
    /// copies them (TLS encrypts them into records): `each` returns how
    /// much of a chunk it took, and a short take stops. Each taken byte
    /// counts as written.
    pub fn take_out(&mut self, max: usize, mut each: impl FnMut(&[u8]) -> usize) -> usize {
        let mut taken = 0;
        // Bounded by the queue: each pass takes a chunk or stops.
        while taken < max {
            let Some(front) = self.out.front_mut() else {
                break;
            };
            let want = front.len().min(max - taken);
            let n = each(&front[..want]).min(want);
            if n == front.len() {
                self.out.pop_front();
            } else {
                front.advance(n);
            }
            taken += n;
            if n < want {
                break;
            }
        }
        self.out_bytes = self.out_bytes.saturating_sub(taken);
        self.sent_total += taken as u64;
        taken
    }

    /// `n` bytes of [`ClientConn::out`] were written at `now`; `record` gets
    /// the latency of every answer whose last byte is now written.
    pub fn sent(&mut self, n: usize, now: Instant, record: impl FnMut(Command, Duration)) {
        advance_queue(&mut self.out, n);
        self.out_bytes = self.out_bytes.saturating_sub(n);
        self.sent_total += n as u64;
        self.record_sent(now, record);
    }

    /// Record the latency of every answer whose last byte is written (at
    /// once for answers with nothing to write).
    pub fn record_sent(&mut self, now: Instant, mut record: impl FnMut(Command, Duration)) {
        // Bounded by the answers queued.
        while let Some(&(end, s)) = self.timed.front() {
            if end > self.sent_total {
                break;
            }
            self.timed.pop_front();
            record(s.cmd, now.saturating_duration_since(s.since));
        }
    }

    /// Client input is over `--max-input-memory` and this connection holds
    /// one of the largest partial requests: drop it, answer memcached's
    /// out-of-memory error (a binary client: nothing) after what it was
    /// already answered, and close. Returns the bytes released.
    pub fn refuse_input(&mut self) -> usize {
        let released = self.rbuf.len();
        self.rbuf = BytesMut::new();
        self.swallow = 0;
        self.long_get = None;
        self.held = None;
        if !self.is_binary() {
            self.push_ready(Answer::One(Bytes::from_static(OUT_OF_MEMORY)), None);
        }
        self.push_ready(Answer::Close, None);
        released
    }

    /// The stamp of a request parsed now (None when not timing).
    fn stamp(&self, timing: bool, cmd: Command) -> Option<Stamp> {
        timing.then_some(Stamp {
            cmd,
            since: self.arrived,
        })
    }

    /// Keep `arrived` true: when everything unparsed came with the latest
    /// receive, it arrived then. (Otherwise it started in an earlier one:
    /// `arrived` stays, an overestimate only for a request spanning three
    /// receives or more.)
    fn sync_arrival(&mut self) {
        if self.rbuf.len() <= self.last_read.1 {
            self.arrived = self.last_read.0;
        }
    }

    /// Bad input the machine answered itself since the last call (client
    /// errors, for the counters).
    pub fn take_refused(&mut self) -> u32 {
        std::mem::take(&mut self.refused)
    }

    /// The next request to start, if the buffered bytes hold one and
    /// nothing holds it back (the budget with `pending` transport bytes,
    /// a barrier, a section wait). Bad input is answered here (and counted,
    /// see [`ClientConn::take_refused`]). `keys` receives the request's key
    /// ranges.
    pub fn next(
        &mut self,
        lim: &Limits,
        pending: usize,
        keys: &mut Vec<Range<usize>>,
    ) -> Option<Next> {
        // Bounded by the buffered bytes: every pass consumes some or returns.
        loop {
            if matches!(
                self.phase,
                Phase::Closing | Phase::Closed | Phase::Handshaking { .. }
            ) {
                return None;
            }
            self.sync_arrival();
            if self.swallow > 0 {
                let n = self.swallow.min(self.rbuf.len());
                self.rbuf.advance(n);
                self.swallow -= n;
                if self.swallow > 0 {
                    return None;
                }
            }
            if let Some((a, stamp)) = self.held.take() {
                self.push_ready(a, stamp);
                continue;
            }
            if self.rbuf.is_empty()
                || !self.can_start(lim.budget, pending)
                || self.barrier.is_some()
                || self.section_wait
            {
                return None;
            }
            if self.binary.is_none() && self.rbuf.first() == Some(&TLS_HANDSHAKE) {
                // A TLS client on the plaintext port: no memcached command
                // starts with this byte, so it is closed at once rather
                // than read up to the line limit.
                self.tls_hello = true;
                self.rbuf.clear();
                self.push_ready(Answer::Close, None);
                return None;
            }
            let binary = *self
                .binary
                .get_or_insert(self.rbuf.first() == Some(&REQUEST_MAGIC));
            let pass = if binary {
                self.binary_pass(lim)
            } else {
                self.text_pass(lim, keys)
            };
            match pass {
                Pass::Start(next) => return Some(next),
                Pass::Again => {}
                Pass::Wait => return None,
            }
        }
    }

    /// The next frame of a binary connection: answered here, or translated
    /// into a text/meta request (see [`crate::proxy::binary`]).
    fn binary_pass(&mut self, lim: &Limits) -> Pass {
        match binary::next_step(&self.rbuf, lim.max_item) {
            Step::Incomplete => Pass::Wait,
            Step::Close => {
                self.refused += 1;
                self.rbuf.clear();
                self.push_ready(Answer::Close, None);
                Pass::Wait
            }
            Step::Answer {
                consumed,
                swallow,
                reply,
                close,
            } => {
                self.swallow = consumed + swallow;
                let a = if reply.is_empty() {
                    Answer::Nothing
                } else {
                    Answer::One(reply)
                };
                // Answered by the adapter itself: no verb to label it with,
                // so it is not timed.
                self.push_ready(a, None);
                if close {
                    self.push_ready(Answer::Close, None);
                }
                Pass::Again
            }
            Step::Forward {
                consumed,
                swallow,
                request,
                plan,
            } => {
                self.swallow = consumed + swallow;
                // Labelled with its text verb once translated.
                let stamp = self.stamp(lim.timing, Command::Invalid);
                let seq = self.push_slot(Slot::Waiting {
                    stamp,
                    write: false,
                });
                if plan.may_take_two_steps() {
                    self.barrier = Some(seq);
                }
                Pass::Start(Next::Binary { seq, request, plan })
            }
        }
    }

    /// One text request off the buffer: one to start, or bad input
    /// answered here.
    fn text_pass(&mut self, lim: &Limits, keys: &mut Vec<Range<usize>>) -> Pass {
        let parsed = match &self.long_get {
            Some(first) => parse_retrieval_more(&self.rbuf, first, keys),
            None => parse_request(&self.rbuf, lim.max_item, keys),
        };
        match parsed {
            Parsed::Incomplete => Pass::Wait,
            Parsed::Complete(r) => {
                // A retrieval line past the line limit is served batch by
                // batch, each a get of its own whose END is left out but
                // for the last.
                let more = r.more;
                let batch = more || self.long_get.is_some();
                self.long_get = more.then(|| r.clone());
                let mut bytes = self.rbuf.split_to(r.consumed).freeze();
                if more && keys.is_empty() {
                    return Pass::Again;
                }
                let mut r = r;
                if batch {
                    let mut line = BytesMut::new();
                    r = batch_request(&mut line, &bytes, &r, keys);
                    bytes = line.freeze();
                }
                self.request(lim, r, bytes, more)
            }
            Parsed::Error(ParseError::TooLarge { skip }) => {
                self.refused += 1;
                // The old item goes too, on every replica, as memcached
                // removes it: a silent delete, answered before the error.
                let delete = too_large_removes(&self.rbuf)
                    .and_then(|k| self.rbuf.get(k))
                    .and_then(delete_noreply);
                let held = if noreply_requested(&self.rbuf) {
                    Answer::Nothing
                } else {
                    one(compose::TOO_LARGE)
                };
                self.swallow = skip;
                self.held = Some((held, self.stamp(lim.timing, Command::Invalid)));
                match delete {
                    Some((r, bytes, delete_keys)) => {
                        keys.clear();
                        keys.extend(delete_keys);
                        self.request(lim, r, bytes, false)
                    }
                    None => Pass::Again,
                }
            }
            Parsed::Error(e) => {
                self.refused += 1;
                let silent = noreply_requested(&self.rbuf);
                let stamp = self.stamp(lim.timing, Command::Invalid);
                let a = match e {
                    ParseError::UnknownCommand { consumed } => {
                        self.swallow = consumed;
                        one(compose::ERROR)
                    }
                    ParseError::Client { consumed, msg } => {
                        self.swallow = consumed;
                        let mut m = BytesMut::with_capacity(msg.len() + 16);
                        compose::compose_client_error(&mut m, msg);
                        if silent {
                            Answer::Nothing
                        } else {
                            Answer::One(m.freeze())
                        }
                    }
                    ParseError::TooLarge { .. } | ParseError::Close => {
                        // Not a memcached client (HTTP, binary bytes): close
                        // without a word, after what is answered already.
                        self.rbuf.clear();
                        self.push_ready(Answer::Close, None);
                        return Pass::Wait;
                    }
                    ParseError::LineTooLong => {
                        self.rbuf.clear();
                        self.push_ready(one(compose::LINE_TOO_LONG), stamp);
                        self.push_ready(Answer::Close, None);
                        return Pass::Wait;
                    }
                };
                self.push_ready(a, stamp);
                Pass::Again
            }
        }
    }

    /// Reserve the slot of a parsed text request. The silent delete that
    /// goes with a refused too-large set (its error is held meanwhile) is
    /// not a client request: not timed.
    fn request(&mut self, lim: &Limits, r: Request, bytes: Bytes, strip_end: bool) -> Pass {
        if r.verb == Verb::Quit {
            // The connection's own business: nothing after it starts.
            self.push_ready(Answer::Close, None);
            return Pass::Wait;
        }
        let timing = lim.timing && self.held.is_none();
        let stamp = self.stamp(timing, Command::of(r.verb));
        let seq = self.push_slot(Slot::Waiting {
            stamp,
            write: false,
        });
        Pass::Start(Next::Request {
            seq,
            r,
            bytes,
            strip_end,
        })
    }
}

/// One pass of [`ClientConn::next`].
enum Pass {
    /// A request to start.
    Start(Next),
    /// Bytes were consumed: look again.
    Again,
    /// Nothing to do until more bytes arrive or an answer is written.
    Wait,
}

fn answer_len(a: &Answer) -> usize {
    match a {
        Answer::Nothing | Answer::Close => 0,
        Answer::One(b) => b.len(),
        Answer::Many(v) => v.iter().map(Bytes::len).sum(),
    }
}

fn one(b: &'static [u8]) -> Answer {
    Answer::One(Bytes::from_static(b))
}

/// `delete <key> noreply` as a parsed request with its key ranges, for
/// removing the old item of a set refused as too large. None for a key the
/// parser would refuse.
fn delete_noreply(key: &[u8]) -> Option<(Request, Bytes, Vec<Range<usize>>)> {
    let mut line = BytesMut::with_capacity(key.len() + 24);
    line.extend_from_slice(b"delete ");
    line.extend_from_slice(key);
    line.extend_from_slice(b" noreply\r\n");
    let bytes = line.freeze();
    let mut keys = Vec::new();
    match parse_request(&bytes, 0, &mut keys) {
        Parsed::Complete(r) => Some((r, bytes, keys)),
        _ => None,
    }
}

#[cfg(test)]
mod tests;
