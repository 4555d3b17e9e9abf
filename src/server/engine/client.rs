//! Client connections on the engine: receive, parse, start requests, and
//! write their answers back in order with vectored sends.
//!
//! A client is read while its byte budget allows; answers are queued in
//! request order and leave in one send per turn (cut at IOV_MAX, a partial
//! send resumed at the exact byte). A closed or failed connection stays in
//! its slot until every operation on it has completed, then its descriptor
//! is closed: the kernel never writes into memory that was reused.

use std::collections::VecDeque;
use std::time::Instant;

use bytes::{Buf, Bytes, BytesMut};
use slab::Slab;

use crate::metrics::Command;
use crate::protocol::binary::REQUEST_MAGIC;
use crate::protocol::request::{
    batch_request, noreply_requested, parse_retrieval_more, too_large_removes,
};
use crate::protocol::{compose, parse_request, Expect, ParseError, Parsed, Request, Verb};
use crate::proxy::binary::{self, Plan, Step, Translated};
use crate::proxy::machine::{Answer, ClientRequest, Keys, Machine};
use crate::proxy::{admin_plan, AdminPlan};
use crate::stats::Counter;
use crate::upstream::ServerId;

use super::{next_gen, token, ClientRef, Ctx, HealthView, Kind, State};
use crate::server::driver::{Completion, Driver};
use crate::server::topology::{advance, fill_iov};

/// Requests parsed ahead of their answers, per connection (as memcached
/// bounds a connection's pipeline): past this the client is not read.
const MAX_INFLIGHT: usize = 1024;

/// Grow the read buffer by at least this much, so small reads do not each
/// reallocate.
const READ_STEP: usize = 4 * 1024;

/// An empty read buffer larger than this is released.
const IDLE_KEEP: usize = 64 * 1024;

/// Past `--max-input-memory`, only partial requests at least this large are
/// refused: a client with a few bytes of a command line buffered is never
/// the one that holds the memory.
const SHED_FLOOR: usize = 64 * 1024;

/// memcached's answer to a store it has no memory for.
const OUT_OF_MEMORY: &[u8] = b"SERVER_ERROR out of memory storing object\r\n";

/// A reply slot in the client's order, with its latency stamp (None when
/// not timing, or for answers that are not a request's, like a close).
enum Slot {
    Waiting(Option<Stamp>),
    Ready(Answer, Option<Stamp>),
}

/// What the latency histogram needs of a request: its command and the turn
/// that received its first byte.
#[derive(Clone, Copy, Debug)]
struct Stamp {
    cmd: Command,
    since: Instant,
}

/// One client connection.
pub(super) struct Client {
    fd: i32,
    pub(super) gen: u32,
    rbuf: BytesMut,
    /// The part of the process-wide input gauge that is `rbuf`'s.
    charged: usize,
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
    pub(super) section_wait: bool,
    /// The answer to a too-large request, queued once its data is swallowed
    /// (memcached answers a length it cannot swallow, never).
    held: Option<(Answer, Option<Stamp>)>,
    /// A retrieval line past the line limit being served batch by batch:
    /// the previous batch, which the next parse continues.
    long_get: Option<Request>,
    /// Answers in request order; `first_seq` numbers the front one.
    slots: VecDeque<Slot>,
    /// Turn that received the oldest unparsed byte of `rbuf` (when timing).
    arrived: Instant,
    /// The latest receive: its turn and how many bytes it brought.
    last_read: (Instant, usize),
    /// Bytes sent to this client so far.
    sent_total: u64,
    /// Answers moved to `out`, timed once `sent_total` passes the offset of
    /// their last byte: (that offset, stamp), in order.
    timed: VecDeque<(u64, Stamp)>,
    first_seq: u64,
    /// Requests started and not yet answered.
    waiting: usize,
    /// Answered bytes not yet sent, in order; the front ones may be in flight.
    out: VecDeque<Bytes>,
    out_bytes: usize,
    iov: Vec<libc::iovec>,
    /// Running estimate of one answer's size, for the budget.
    est_answer: usize,
    recv_armed: bool,
    cancel_pending: bool,
    /// shutdown(2) issued: the armed operations are ending.
    shut: bool,
    send_inflight: bool,
    /// No more requests: the peer ended its side, or a quit/fatal error.
    read_done: bool,
    /// Close once the queued answers are written (quit, lost framing).
    close_after: bool,
    /// Failed or finished: shut down, waiting for operations to end.
    dead: bool,
    dirty: bool,
}

/// Put a client on the end-of-turn list once.
pub(super) fn mark(clients: &mut Slab<Client>, dirty: &mut Vec<usize>, idx: usize) {
    if let Some(c) = clients.get_mut(idx) {
        if !c.dirty {
            c.dirty = true;
            dirty.push(idx);
        }
    }
}

impl Client {
    fn new(fd: i32, gen: u32, budget: usize, now: Instant) -> Client {
        Client {
            arrived: now,
            last_read: (now, 0),
            sent_total: 0,
            timed: VecDeque::new(),
            fd,
            gen,
            rbuf: BytesMut::new(),
            charged: 0,
            swallow: 0,
            long_get: None,
            binary: None,
            barrier: None,
            section_wait: false,
            held: None,
            slots: VecDeque::new(),
            first_seq: 0,
            waiting: 0,
            out: VecDeque::new(),
            out_bytes: 0,
            iov: Vec::new(),
            // Start cautious (two answers fill the budget) and learn.
            est_answer: (budget / 2).max(1),
            recv_armed: false,
            cancel_pending: false,
            shut: false,
            send_inflight: false,
            read_done: false,
            close_after: false,
            dead: false,
            dirty: false,
        }
    }

    /// Bring the process-wide input gauge in line with what `rbuf` holds
    /// now; returns the gauge's new value.
    fn charge_input(&mut self, cx: &Ctx) -> usize {
        use std::sync::atomic::Ordering::Relaxed;
        let now = self.rbuf.len();
        let gauge = &cx.shared.input_bytes;
        let total = if now >= self.charged {
            gauge.fetch_add(now - self.charged, Relaxed) + (now - self.charged)
        } else {
            gauge
                .fetch_sub(self.charged - now, Relaxed)
                .saturating_sub(self.charged - now)
        };
        self.charged = now;
        total
    }

    /// True when the client may start another request: its unsent answers
    /// plus the expected size of those in flight, this one included, fit the
    /// budget. One request may always run, whatever its size.
    fn can_start(&self, budget: usize) -> bool {
        if self.waiting == 0 && self.out_bytes == 0 {
            return true;
        }
        self.waiting < MAX_INFLIGHT
            && self
                .out_bytes
                .saturating_add((self.waiting + 1).saturating_mul(self.est_answer))
                <= budget
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

    /// Give slot `seq` its command once known (a binary request's).
    fn label(&mut self, seq: u64, cmd: Command) {
        let pos = seq.checked_sub(self.first_seq);
        if let Some(Slot::Waiting(Some(s))) = pos.and_then(|p| self.slots.get_mut(p as usize)) {
            s.cmd = cmd;
        }
    }

    /// Record the latency of every answer whose last byte is now written
    /// (at once for answers with nothing to write).
    fn record_sent(&mut self, cx: &Ctx) {
        // Bounded by the answers queued.
        while let Some(&(end, s)) = self.timed.front() {
            if end > self.sent_total {
                break;
            }
            self.timed.pop_front();
            cx.metrics()
                .record_request(s.cmd, cx.now.saturating_duration_since(s.since));
        }
    }

    /// Reserve the next answer slot; returns its sequence number.
    fn push_slot(&mut self, slot: Slot) -> u64 {
        let seq = self.first_seq + self.slots.len() as u64;
        if matches!(slot, Slot::Waiting(_)) {
            self.waiting += 1;
        }
        self.slots.push_back(slot);
        seq
    }

    /// Fill slot `seq`; true when answers became ready to send.
    pub(super) fn fill(&mut self, seq: u64, a: Answer) -> bool {
        let Some(pos) = seq.checked_sub(self.first_seq) else {
            return false;
        };
        let Some(slot) = self.slots.get_mut(pos as usize) else {
            return false;
        };
        let stamp = match slot {
            Slot::Waiting(s) => {
                self.waiting = self.waiting.saturating_sub(1);
                *s
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
        *slot = Slot::Ready(a, stamp);
        pos == 0
    }

    /// Move the answered prefix of the slots to the output queue.
    fn drain_ready(&mut self) {
        while let Some(Slot::Ready(..)) = self.slots.front() {
            let Some(Slot::Ready(a, stamp)) = self.slots.pop_front() else {
                break;
            };
            self.first_seq += 1;
            match a {
                Answer::Nothing => {}
                Answer::One(b) => {
                    self.out_bytes += b.len();
                    self.out.push_back(b);
                }
                Answer::Many(v) => {
                    for b in v {
                        self.out_bytes += b.len();
                        self.out.push_back(b);
                    }
                }
                Answer::Close => {
                    self.close_after = true;
                    self.read_done = true;
                    self.slots.clear();
                    self.waiting = 0;
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

    fn ops_in_flight(&self) -> bool {
        self.recv_armed || self.send_inflight
    }
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

impl State {
    /// A listener accepted a connection (or its multishot accept ended).
    pub(super) fn accepted<D: Driver>(&mut self, d: &mut D, cx: &Ctx, li: usize, c: Completion) {
        if !c.more {
            if let Some(l) = self.listeners.get_mut(li) {
                l.1 = false;
            }
        }
        let stopping = cx
            .shared
            .stopping
            .load(std::sync::atomic::Ordering::Relaxed);
        if c.res < 0 {
            if !stopping && !c.more {
                // EMFILE and friends: try again shortly instead of spinning,
                // and say so at most once a second. (The open-file limit is
                // fitted to -n at start, so this means something else holds
                // descriptors.)
                let quiet = self
                    .accept_warned
                    .is_some_and(|at| cx.now < at + std::time::Duration::from_secs(1));
                if !quiet {
                    self.accept_warned = Some(cx.now);
                    tracing::warn!(error = %std::io::Error::from_raw_os_error(-c.res), "accept failed");
                }
                self.listen_retry = Some(cx.now + std::time::Duration::from_millis(20));
            }
            return;
        }
        if !c.more && !stopping {
            self.listen_retry = Some(cx.now);
        }
        let fd = c.res;
        if stopping {
            // SAFETY: a descriptor the kernel just handed to us and nobody else uses.
            unsafe { libc::close(fd) };
            return;
        }
        let open: u64 = cx
            .shared
            .stats
            .iter()
            .map(|s| {
                s.curr_connections
                    .load(std::sync::atomic::Ordering::Relaxed)
            })
            .sum();
        if open >= cx.shared.max_conns as u64 {
            cx.stats().incr(Counter::RejectedConnections);
            let msg = b"ERROR Too many open connections\r\n";
            // SAFETY: plain syscalls on a descriptor we own; best effort.
            unsafe {
                libc::send(
                    fd,
                    msg.as_ptr().cast(),
                    msg.len(),
                    libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT,
                );
                libc::close(fd);
            }
            return;
        }
        set_nodelay(fd);
        let gen = next_gen(&mut self.client_gen);
        let idx = self
            .clients
            .insert(Client::new(fd, gen, cx.client_budget, cx.now));
        cx.stats()
            .curr_connections
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        cx.stats().incr(Counter::TotalConnections);
        mark(&mut self.clients, &mut self.dirty_clients, idx);
        let _ = d;
    }

    /// Bytes (or the end) from a client.
    pub(super) fn client_recv<D: Driver>(
        &mut self,
        d: &mut D,
        cx: &Ctx,
        idx: usize,
        gen: u32,
        c: Completion,
    ) {
        let Some(cl) = self.clients.get_mut(idx).filter(|cl| cl.gen == gen) else {
            if let Some(b) = c.buf {
                d.recycle(b);
            }
            return;
        };
        let keep = !cl.dead && !cl.read_done;
        super::take_received(d, &c, &mut cl.rbuf, READ_STEP, keep);
        if keep && c.buf.is_some() && c.res > 0 {
            cl.last_read = (cx.now, c.res as usize);
            cl.sync_arrival();
        }
        if !c.more {
            cl.recv_armed = false;
            cl.cancel_pending = false;
        }
        match c.res {
            n if n > 0 => {
                cx.stats().add(Counter::BytesRead, n as u64);
                self.parse(cx, d, idx);
                // Charged once parsed: what stays buffered is partial
                // requests (and those held back by the client's budget),
                // never a pipeline that was just served.
                let over = self
                    .clients
                    .get_mut(idx)
                    .is_some_and(|cl| cl.charge_input(cx) > cx.shared.cfg.max_input_memory);
                if over {
                    self.shed_input(cx);
                }
            }
            0 => {
                // The peer ended its side: answer what it sent, then close.
                cl.read_done = true;
            }
            e if e == -libc::ENOBUFS || e == -libc::ECANCELED => {}
            _ => cl.dead = true,
        }
        mark(&mut self.clients, &mut self.dirty_clients, idx);
    }

    /// A send to a client finished.
    pub(super) fn client_sent<D: Driver>(
        &mut self,
        _d: &mut D,
        cx: &Ctx,
        idx: usize,
        gen: u32,
        c: Completion,
    ) {
        let Some(cl) = self.clients.get_mut(idx).filter(|cl| cl.gen == gen) else {
            return;
        };
        cl.send_inflight = false;
        if c.res > 0 {
            let n = c.res as usize;
            advance(&mut cl.out, n);
            cl.out_bytes = cl.out_bytes.saturating_sub(n);
            cl.sent_total += n as u64;
            // Now, not at the end of the turn: a request this turn's later
            // completions bring (a `stats proxy`) sees this one counted.
            cl.record_sent(cx);
            cx.stats().add(Counter::BytesWritten, n as u64);
        } else {
            cl.dead = true;
        }
        mark(&mut self.clients, &mut self.dirty_clients, idx);
        // Room in the budget again: requests already buffered may start.
        self.parse(cx, _d, idx);
    }

    /// Parse and start every complete request the budget allows.
    fn parse<D: Driver>(&mut self, cx: &Ctx, d: &mut D, idx: usize) {
        // Bounded by the buffered bytes: every pass consumes some or stops.
        loop {
            let Some(cl) = self.clients.get_mut(idx) else {
                return;
            };
            if cl.dead || cl.close_after {
                return;
            }
            cl.sync_arrival();
            if cl.swallow > 0 {
                let n = cl.swallow.min(cl.rbuf.len());
                cl.rbuf.advance(n);
                cl.swallow -= n;
                if cl.swallow > 0 {
                    return;
                }
            }
            if let Some((a, stamp)) = cl.held.take() {
                self.push_ready(idx, a, stamp);
                continue;
            }
            if cl.rbuf.is_empty()
                || !cl.can_start(cx.client_budget)
                || cl.barrier.is_some()
                || cl.section_wait
            {
                return;
            }
            if *cl
                .binary
                .get_or_insert(cl.rbuf.first() == Some(&REQUEST_MAGIC))
            {
                if !self.binary_step(d, cx, idx) {
                    return;
                }
                continue;
            }
            let parsed = match &cl.long_get {
                Some(first) => parse_retrieval_more(&cl.rbuf, first, &mut self.keys),
                None => parse_request(&cl.rbuf, cx.max_item, &mut self.keys),
            };
            match parsed {
                Parsed::Incomplete => return,
                Parsed::Complete(r) => {
                    // A retrieval line past the line limit is served batch by
                    // batch, each a get of its own whose END is left out but
                    // for the last.
                    let more = r.more;
                    let batch = more || cl.long_get.is_some();
                    cl.long_get = more.then(|| r.clone());
                    let mut bytes = cl.rbuf.split_to(r.consumed).freeze();
                    let gen = cl.gen;
                    if more && self.keys.is_empty() {
                        continue;
                    }
                    let mut r = r;
                    if batch {
                        let mut line = BytesMut::new();
                        r = batch_request(&mut line, &bytes, &r, &mut self.keys);
                        bytes = line.freeze();
                    }
                    self.start(d, cx, idx, gen, r, bytes, more);
                }
                Parsed::Error(ParseError::TooLarge { skip }) => {
                    cx.stats().incr(Counter::ClientErrors);
                    // The old item goes too, on every replica, as memcached
                    // removes it: a silent delete, answered before the error.
                    let delete = too_large_removes(&cl.rbuf)
                        .and_then(|k| cl.rbuf.get(k))
                        .and_then(delete_noreply);
                    let held = if noreply_requested(&cl.rbuf) {
                        Answer::Nothing
                    } else {
                        one(compose::TOO_LARGE)
                    };
                    cl.swallow = skip;
                    let gen = cl.gen;
                    cl.held = Some((held, cl.stamp(cx.shared.timing, Command::Invalid)));
                    if let Some((r, bytes)) = delete {
                        self.start(d, cx, idx, gen, r, bytes, false);
                    }
                }
                Parsed::Error(e) => {
                    cx.stats().incr(Counter::ClientErrors);
                    let silent = noreply_requested(&cl.rbuf);
                    let stamp = cl.stamp(cx.shared.timing, Command::Invalid);
                    let a = match e {
                        ParseError::UnknownCommand { consumed } => {
                            cl.swallow = consumed;
                            one(compose::ERROR)
                        }
                        ParseError::Client { consumed, msg } => {
                            cl.swallow = consumed;
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
                            cl.rbuf.clear();
                            self.push_ready(idx, Answer::Close, None);
                            return;
                        }
                        ParseError::LineTooLong => {
                            cl.rbuf.clear();
                            self.push_ready(idx, one(compose::LINE_TOO_LONG), stamp);
                            self.push_ready(idx, Answer::Close, None);
                            return;
                        }
                    };
                    self.push_ready(idx, a, stamp);
                }
            }
        }
    }

    /// The next frame of a binary connection: answered here, or translated
    /// into a text/meta request that takes the text path (see
    /// [`crate::proxy::binary`]). False when more bytes are needed.
    fn binary_step<D: Driver>(&mut self, d: &mut D, cx: &Ctx, idx: usize) -> bool {
        let Some(cl) = self.clients.get_mut(idx) else {
            return false;
        };
        match binary::next_step(&cl.rbuf, cx.max_item) {
            Step::Incomplete => false,
            Step::Close => {
                cx.stats().incr(Counter::ClientErrors);
                cl.rbuf.clear();
                self.push_ready(idx, Answer::Close, None);
                false
            }
            Step::Answer {
                consumed,
                swallow,
                reply,
                close,
            } => {
                cl.swallow = consumed + swallow;
                let a = if reply.is_empty() {
                    Answer::Nothing
                } else {
                    Answer::One(reply)
                };
                // Answered by the adapter itself: no verb to label it with,
                // so it is not timed.
                self.push_ready(idx, a, None);
                if close {
                    self.push_ready(idx, Answer::Close, None);
                    return false;
                }
                true
            }
            Step::Forward {
                consumed,
                swallow,
                request,
                plan,
            } => {
                cl.swallow = consumed + swallow;
                let gen = cl.gen;
                // Labelled with its text verb once translated (serve_text).
                let stamp = cl.stamp(cx.shared.timing, Command::Invalid);
                let seq = cl.push_slot(Slot::Waiting(stamp));
                if plan.may_take_two_steps() {
                    cl.barrier = Some(seq);
                }
                let cref = ClientRef {
                    idx,
                    gen,
                    seq,
                    strip_end: false,
                };
                self.serve_text(d, cx, cref, request, Some(plan));
                true
            }
        }
    }

    /// Serve a translated binary request like a text client's, into the
    /// slot `cref` already holds; `plan` turns the answer back into binary.
    pub(super) fn serve_text<D: Driver>(
        &mut self,
        d: &mut D,
        cx: &Ctx,
        cref: ClientRef,
        request: Bytes,
        plan: Option<Plan>,
    ) {
        let mut keys = std::mem::take(&mut self.keys);
        let parsed = parse_request(&request, cx.max_item, &mut keys);
        self.keys = keys;
        if let Some(cl) = self.live_client(cref) {
            if let Parsed::Complete(r) = &parsed {
                cl.label(cref.seq, Command::of(r.verb));
            }
        }
        let Parsed::Complete(r) = parsed else {
            // The adapter builds only well-formed requests; should one not
            // parse, the client gets an error, not silence.
            self.finish(
                d,
                cx,
                cref,
                plan,
                one(b"SERVER_ERROR binary request translation failed\r\n"),
            );
            return;
        };
        let (local, admin) = route_locally(cx, &r, &request);
        if let Some(a) = local {
            self.finish(d, cx, cref, plan, a);
            return;
        }
        let keys = Keys::take(&mut self.keys);
        let req = ClientRequest {
            r,
            bytes: request,
            keys,
        };
        let mut fx = std::mem::take(&mut self.fx);
        let machine = self.machine_for(cx, req, admin, &mut fx);
        self.launch(d, cx, machine, Some(cref), plan, &mut fx);
        self.fx = fx;
    }

    /// A machine for `req` (an admin fan-out when `plan` is given), its
    /// first effects in `fx`.
    fn machine_for(
        &mut self,
        cx: &Ctx,
        req: ClientRequest,
        plan: Option<AdminPlan>,
        fx: &mut Vec<crate::proxy::machine::Effect>,
    ) -> Machine {
        self.servers.clear();
        if req.r.verb == Verb::FlushAll || plan.is_some() {
            self.servers
                .extend((0..cx.topo.servers.len() as u32).map(ServerId));
        }
        let view = HealthView {
            topo: &cx.topo,
            now_unix: cx.now_unix,
        };
        if let Some(p) = plan {
            return Machine::admin(req, p, &self.servers, &view, fx);
        }
        self.replicas.clear();
        for k in req.keys.as_slice() {
            let key = req.bytes.get(k.clone()).unwrap_or_default();
            self.replicas.push(cx.topo.replicas(key, false));
        }
        if req.keys.as_slice().is_empty() && !req.r.key.is_empty() {
            let key = req.bytes.get(req.r.key.clone()).unwrap_or_default();
            self.replicas
                .push(cx.topo.replicas(key, req.key_is_base64()));
        }
        Machine::start(req, &self.replicas, &self.servers, &view, fx)
    }

    /// Hand an answer to its client; a binary request's answer is
    /// translated first (and may start its second step instead).
    pub(super) fn finish<D: Driver>(
        &mut self,
        d: &mut D,
        cx: &Ctx,
        cref: ClientRef,
        plan: Option<Plan>,
        a: Answer,
    ) {
        let Some(plan) = plan else {
            self.deliver_answer(cref, a);
            return;
        };
        let parts = match a {
            Answer::Nothing => Vec::new(),
            Answer::One(b) => vec![b],
            Answer::Many(v) => v,
            Answer::Close => {
                self.deliver_answer(cref, Answer::Close);
                return;
            }
        };
        match plan.translate(&parts) {
            Translated::Reply(b) => {
                if let Some(cl) = self.live_client(cref) {
                    if cl.barrier == Some(cref.seq) {
                        cl.barrier = None;
                        mark(&mut self.clients, &mut self.dirty_clients, cref.idx);
                    }
                }
                let a = if b.is_empty() {
                    Answer::Nothing
                } else {
                    Answer::One(b)
                };
                self.deliver_answer(cref, a);
            }
            Translated::Then { request, plan } => self.serve_text(d, cx, cref, request, Some(plan)),
        }
    }

    /// Client input is over `--max-input-memory`: refuse this core's largest
    /// partial requests (of [`SHED_FLOOR`] bytes or more) until it is under
    /// again or none is left here. Each gets memcached's out-of-memory
    /// answer (a binary client: a plain close) after what it was already
    /// answered, and its connection is closed; the rest of its input is
    /// not read.
    fn shed_input(&mut self, cx: &Ctx) {
        let budget = cx.shared.cfg.max_input_memory;
        let mut refused = 0usize;
        // Bounded by this core's clients: each pass refuses one.
        for _ in 0..self.clients.len() {
            let total = cx
                .shared
                .input_bytes
                .load(std::sync::atomic::Ordering::Relaxed);
            if total <= budget {
                break;
            }
            let Some(idx) = self
                .clients
                .iter()
                .filter(|(_, c)| !c.dead && !c.read_done && c.rbuf.len() >= SHED_FLOOR)
                .max_by_key(|(_, c)| c.rbuf.len())
                .map(|(i, _)| i)
            else {
                break;
            };
            let Some(cl) = self.clients.get_mut(idx) else {
                break;
            };
            cl.rbuf = BytesMut::new();
            cl.swallow = 0;
            cl.long_get = None;
            cl.read_done = true;
            cl.charge_input(cx);
            let binary = cl.binary == Some(true);
            cx.stats().incr(Counter::InputMemoryRefusals);
            refused += 1;
            if !binary {
                self.push_ready(idx, one(OUT_OF_MEMORY), None);
            }
            self.push_ready(idx, Answer::Close, None);
        }
        if refused > 0 {
            tracing::warn!(
                refused,
                max_input_memory = budget,
                "client input over --max-input-memory: the largest partial requests were refused"
            );
        }
    }

    /// Queue an answer the client gets in order, without a machine.
    fn push_ready(&mut self, idx: usize, a: Answer, stamp: Option<Stamp>) {
        if let Some(cl) = self.clients.get_mut(idx) {
            cl.push_slot(Slot::Ready(a, stamp));
            cl.drain_ready();
            mark(&mut self.clients, &mut self.dirty_clients, idx);
        }
    }

    /// Start one parsed request: answer it here or launch its machine.
    /// `strip_end`: a batch of a long get line that is not its last.
    #[allow(clippy::too_many_arguments)]
    fn start<D: Driver>(
        &mut self,
        d: &mut D,
        cx: &Ctx,
        idx: usize,
        gen: u32,
        r: Request,
        bytes: Bytes,
        strip_end: bool,
    ) {
        let (local, plan) = route_locally(cx, &r, &bytes);
        let Some(cl) = self.clients.get_mut(idx) else {
            return;
        };
        // The silent delete that goes with a refused too-large set (its
        // error is held meanwhile) is not a client request: not timed.
        let timing = cx.shared.timing && cl.held.is_none();
        let stamp = cl.stamp(timing, Command::of(r.verb));
        if let Some(a) = local {
            self.push_ready(idx, a, stamp);
            return;
        }
        let seq = cl.push_slot(Slot::Waiting(stamp));
        let cref = ClientRef {
            idx,
            gen,
            seq,
            strip_end,
        };
        let keys = Keys::take(&mut self.keys);
        let req = ClientRequest { r, bytes, keys };
        if let Some(AdminPlan::Listing(Expect::Lines)) = plan.filter(|_| req.r.verb == Verb::Admin)
        {
            // memcached refuses a metadump with anything pipelined behind it:
            // the control plane runs it on connections of its own.
            let line = req.bytes.slice(..req.r.line_len.min(req.bytes.len()));
            super::super::control::dump_for(cx.topo.clone(), line, self.control_tx.clone(), cref);
            return;
        }
        let mut fx = std::mem::take(&mut self.fx);
        let machine = self.machine_for(cx, req, plan, &mut fx);
        self.launch(d, cx, machine, Some(cref), None, &mut fx);
        self.fx = fx;
    }

    /// End-of-turn work for one client: send, re-arm, pause, or close.
    pub(super) fn flush_client<D: Driver>(&mut self, d: &mut D, cx: &Ctx, idx: usize) {
        if let Some(cl) = self.clients.get_mut(idx) {
            cl.drain_ready();
        }
        // Answers that need no send (noreply) free budget too.
        self.parse(cx, d, idx);
        let Some(cl) = self.clients.get_mut(idx) else {
            return;
        };
        cl.dirty = false;
        if !cl.dead {
            cl.drain_ready();
            cl.record_sent(cx);
            if !cl.send_inflight && !cl.out.is_empty() {
                fill_iov(&mut cl.iov, &cl.out);
                // SAFETY: the iovecs point into `out`'s buffers, which stay
                // untouched (never advanced or dropped) until this send's
                // completion; `iov` itself is not modified until then either.
                unsafe {
                    d.send(
                        token(Kind::ClientSend, idx, cl.gen),
                        cl.fd,
                        cl.iov.as_ptr(),
                        cl.iov.len(),
                    )
                };
                cl.send_inflight = true;
            }
            let finished = cl.read_done && cl.slots.is_empty() && cl.out.is_empty();
            if (cl.close_after || finished) && cl.out.is_empty() && !cl.send_inflight {
                cl.dead = true;
            }
        }
        if cl.dead {
            if cl.ops_in_flight() {
                if !cl.shut {
                    d.shutdown(cl.fd);
                    cl.shut = true;
                }
                return;
            }
            d.close(cl.fd);
            cl.rbuf = BytesMut::new();
            cl.charge_input(cx);
            self.clients.remove(idx);
            cx.stats()
                .curr_connections
                .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
            return;
        }
        cl.charge_input(cx);
        if cl.rbuf.is_empty() && cl.rbuf.capacity() > IDLE_KEEP {
            // A large request passed: give its buffer back rather than keep
            // it for an idle connection.
            cl.rbuf = BytesMut::new();
        }
        let want = !cl.read_done && cl.can_start(cx.client_budget);
        if want && !cl.recv_armed {
            d.recv(token(Kind::ClientRecv, idx, cl.gen), cl.fd);
            cl.recv_armed = true;
        } else if !want && cl.recv_armed && !cl.cancel_pending && !cl.read_done {
            // Over budget: stop reading; TCP pushes back on the client.
            d.cancel_recv(token(Kind::ClientRecv, idx, cl.gen), cl.fd);
            cl.cancel_pending = true;
        }
    }
}

fn set_nodelay(fd: i32) {
    let one: libc::c_int = 1;
    // SAFETY: setsockopt with a valid pointer and length; failure (a unix
    // socket) is harmless.
    unsafe {
        libc::setsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_NODELAY,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

/// What the engine answers itself (quit, version, verbosity, mn, memring's
/// own `stats`, memcached's answer to an unknown group), or the admin plan of
/// a `stats <group>` / administration line; neither for everything else.
fn route_locally(cx: &Ctx, r: &Request, bytes: &Bytes) -> (Option<Answer>, Option<AdminPlan>) {
    let local = match r.verb {
        Verb::Quit => Answer::Close,
        Verb::Version => one(compose::VERSION),
        Verb::Verbosity if r.noreply => Answer::Nothing,
        Verb::Verbosity => one(compose::OK),
        Verb::MetaNoop => one(compose::MN),
        Verb::Stats | Verb::Admin => {
            let args = bytes.get(r.meta_flags.clone()).unwrap_or_default();
            match admin_plan(r.verb, args) {
                AdminPlan::Local => super::stats::answer(cx, r, bytes),
                AdminPlan::Answer(b) => one(b),
                p => return (None, Some(p)),
            }
        }
        _ => return (None, None),
    };
    (Some(local), None)
}

/// `delete <key> noreply` as a parsed request, for removing the old item of
/// a set refused as too large. None for a key the parser would refuse.
fn delete_noreply(key: &[u8]) -> Option<(Request, Bytes)> {
    let mut line = BytesMut::with_capacity(key.len() + 24);
    line.extend_from_slice(b"delete ");
    line.extend_from_slice(key);
    line.extend_from_slice(b" noreply\r\n");
    let bytes = line.freeze();
    let mut keys = Vec::new();
    match parse_request(&bytes, 0, &mut keys) {
        Parsed::Complete(r) => Some((r, bytes)),
        _ => None,
    }
}
