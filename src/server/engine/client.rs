//! Client connections on the engine: receive, parse, start requests, and
//! write their answers back in order with vectored sends.
//!
//! A client is read while its byte budget allows; answers are queued in
//! request order and leave in one send per turn (cut at IOV_MAX, a partial
//! send resumed at the exact byte). A closed or failed connection stays in
//! its slot until every operation on it has completed, then its descriptor
//! is closed: the kernel never writes into memory that was reused.

use bytes::Bytes;
use slab::Slab;

use crate::metrics::Command;
use crate::protocol::{parse_request, Expect, Parsed, Request, Verb};
use crate::proxy::binary::{Plan, Translated};
use crate::proxy::client::{ClientConn, Handshake, Limits, Next, Phase};
use crate::proxy::machine::{Answer, ClientRequest, Keys, Machine};
use crate::proxy::{admin_plan, AdminPlan};
use crate::stats::Counter;
use crate::upstream::ServerId;

use super::{next_gen, token, ClientRef, Core, Ctx, HealthView, Op};
use crate::server::driver::{Completion, Driver};
use crate::server::tls::{HandshakeError, TlsSession};
use crate::server::topology::fill_iov;

/// Past `--max-input-memory`, only partial requests at least this large are
/// refused: a client with a few bytes of a command line buffered is never
/// the one that holds the memory.
const SHED_FLOOR: usize = 64 * 1024;

/// One client connection: its protocol machine, and the I/O state of its
/// socket on this core.
pub(super) struct Client {
    fd: i32,
    pub(super) gen: u32,
    /// Every protocol decision of the connection.
    pub(super) conn: ClientConn,
    /// The transport: None for plain bytes, or the TLS session the bytes
    /// go through.
    tls: Option<Box<TlsSession>>,
    /// The listener it came in on (a pool's own places its keys there).
    listener: usize,
    /// The part of the process-wide input gauge that is this client's.
    charged: usize,
    iov: Vec<libc::iovec>,
    recv_armed: bool,
    cancel_pending: bool,
    /// shutdown(2) issued: the armed operations are ending.
    shut: bool,
    send_inflight: bool,
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
    fn new(
        fd: i32,
        gen: u32,
        conn: ClientConn,
        tls: Option<Box<TlsSession>>,
        listener: usize,
    ) -> Client {
        Client {
            fd,
            gen,
            conn,
            tls,
            listener,
            charged: 0,
            iov: Vec::new(),
            recv_armed: false,
            cancel_pending: false,
            shut: false,
            send_inflight: false,
            dirty: false,
        }
    }

    /// Bring the process-wide input gauge in line with what the machine
    /// buffers now; returns the gauge's new value.
    fn charge_input(&mut self, cx: &Ctx) -> usize {
        // A TLS session in its handshake holds memory no request accounts
        // for: counted as input, so that a flood of handshakes is bounded
        // by --max-input-memory as partial requests are.
        let handshake = match &self.tls {
            Some(t) if t.handshaking() => TLS_HANDSHAKE_CHARGE,
            _ => 0,
        };
        self.charge(cx, self.conn.buffered() + handshake)
    }

    /// Encrypted bytes the transport holds, not yet sent (they count
    /// against the client's budget like unsent answers).
    fn pending(&self) -> usize {
        self.tls.as_ref().map_or(0, |t| t.pending())
    }

    /// Set this client's part of the input gauge to `now` bytes.
    fn charge(&mut self, cx: &Ctx, now: usize) -> usize {
        use std::sync::atomic::Ordering::Relaxed;
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

    fn ops_in_flight(&self) -> bool {
        self.recv_armed || self.send_inflight
    }
}

/// What a TLS client in its handshake is charged to the input gauge: about
/// what rustls holds for a session until the handshake is done.
const TLS_HANDSHAKE_CHARGE: usize = 32 * 1024;

/// The machine's limits from the configuration.
fn limits(cx: &Ctx) -> Limits {
    Limits {
        max_item: cx.max_item,
        budget: cx.client_budget,
        timing: cx.shared.timing,
    }
}

fn one(b: &'static [u8]) -> Answer {
    Answer::One(Bytes::from_static(b))
}

impl Core {
    /// A listener accepted a connection (or its multishot accept ended).
    pub(super) fn accepted<D: Driver>(&mut self, d: &mut D, cx: &Ctx, li: usize, c: Completion) {
        if !c.more {
            if let Some(l) = self.listeners.get_mut(li) {
                l.armed = false;
            }
        }
        let on_tls = self.listeners.get(li).is_some_and(|l| l.tls);
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
        let tls = match on_tls {
            true => match self.tls_session(cx) {
                Some(s) => Some(s),
                None => {
                    // SAFETY: a descriptor the kernel just handed to us.
                    unsafe { libc::close(fd) };
                    return;
                }
            },
            false => None,
        };
        set_nodelay(fd);
        let gen = next_gen(&mut self.client_gen);
        let conn = if on_tls {
            self.handshakes.push((self.clients.vacant_key(), gen));
            let deadline = cx.now + cx.shared.cfg.tls_handshake_timeout;
            ClientConn::handshaking(cx.client_budget, cx.now, deadline)
        } else {
            ClientConn::new(cx.client_budget, cx.now)
        };
        if on_tls {
            cx.stats().incr(Counter::TlsConnections);
            cx.stats()
                .curr_tls_connections
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        let idx = self.clients.insert(Client::new(fd, gen, conn, tls, li));
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
        let mut tls_failed = None;
        let mut tls_closed = false;
        if let Some(b) = c.buf {
            if c.res > 0 {
                let bytes = d.buffer(b, c.res as usize);
                match cl.tls.as_deref_mut() {
                    None => cl.conn.received(bytes, cx.now),
                    Some(t) => {
                        self.plain.clear();
                        match t.receive(bytes, &mut self.plain) {
                            Ok(got) => {
                                if got.handshake_done {
                                    cx.stats().incr(Counter::TlsHandshakes);
                                    cl.conn.handshake_done();
                                }
                                cl.conn.received(&self.plain, cx.now);
                                tls_closed = got.closed;
                            }
                            Err(e) => tls_failed = Some(e),
                        }
                    }
                }
            }
            d.recycle(b);
        }
        if !c.more {
            cl.recv_armed = false;
            cl.cancel_pending = false;
        }
        if let Some(e) = tls_failed {
            if e.handshaking {
                cx.stats().incr(e.reason.counter());
            }
            tracing::debug!(reason = e.reason.as_str(), error = %e.detail, handshaking = e.handshaking, "TLS client failed, closing it");
            // The alert that says why is written before the close.
            cl.conn.abandon();
            mark(&mut self.clients, &mut self.dirty_clients, idx);
            return;
        }
        if tls_closed || (c.res == 0 && cl.tls.as_ref().is_some_and(|t| t.handshaking())) {
            if c.res == 0 {
                cx.stats().incr(HandshakeError::Closed.counter());
            }
            cl.conn.peer_closed();
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
            // The peer ended its side: answer what it sent, then close.
            0 => cl.conn.peer_closed(),
            e if e == -libc::ENOBUFS || e == -libc::ECANCELED => {}
            _ => cl.conn.fail(),
        }
        mark(&mut self.clients, &mut self.dirty_clients, idx);
    }

    /// A send to a client finished.
    pub(super) fn client_sent<D: Driver>(
        &mut self,
        d: &mut D,
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
            match cl.tls.as_deref_mut() {
                // Recorded now, not at the end of the turn: a request this
                // turn's later completions bring (a `stats proxy`) sees
                // this one counted.
                None => cl
                    .conn
                    .sent(n, cx.now, |cmd, t| cx.metrics().record_request(cmd, t)),
                // Its answers were counted as written when encrypted.
                Some(t) => t.sent(n),
            }
            cx.stats().add(Counter::BytesWritten, n as u64);
        } else {
            cl.conn.fail();
        }
        mark(&mut self.clients, &mut self.dirty_clients, idx);
        // Room in the budget again: requests already buffered may start.
        self.parse(cx, d, idx);
    }

    /// Start every request the client's machine lets go.
    fn parse<D: Driver>(&mut self, cx: &Ctx, d: &mut D, idx: usize) {
        let lim = limits(cx);
        // Bounded by the buffered bytes: the machine consumes some with
        // every request it hands out.
        loop {
            let Some(cl) = self.clients.get_mut(idx) else {
                return;
            };
            let next = cl.conn.next(&lim, cl.pending(), &mut self.keys);
            let refused = cl.conn.take_refused();
            if refused > 0 {
                cx.stats().add(Counter::ClientErrors, u64::from(refused));
            }
            if cl.conn.take_tls_hello() {
                cx.stats().incr(Counter::TlsOnPlainPort);
            }
            let gen = cl.gen;
            let cref = |seq, strip_end| ClientRef {
                idx,
                gen,
                seq,
                strip_end,
            };
            match next {
                None => return,
                Some(Next::Request {
                    seq,
                    r,
                    bytes,
                    strip_end,
                }) => self.start(d, cx, cref(seq, strip_end), r, bytes),
                Some(Next::Binary { seq, request, plan }) => {
                    self.serve_text(d, cx, cref(seq, false), request, Some(plan));
                }
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
                cl.conn.label(cref.seq, Command::of(r.verb));
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
        let machine = self.machine_for(cx, cref, req, admin, &mut fx);
        self.launch(d, cx, machine, Some(cref), plan, &mut fx);
        self.fx = fx;
    }

    /// A machine for `req` (an admin fan-out when `plan` is given), its
    /// first effects in `fx`.
    fn machine_for(
        &mut self,
        cx: &Ctx,
        cref: ClientRef,
        req: ClientRequest,
        plan: Option<AdminPlan>,
        fx: &mut Vec<crate::proxy::machine::Effect>,
    ) -> Machine {
        // A read is hedged (or spread) only with no write of its client
        // in flight; a write counts until it is answered.
        let mut hedge_ok = false;
        if let Some(c) = self.live_client(cref) {
            hedge_ok = c.conn.writes_waiting() == 0;
            if plan.is_none() && req.r.verb.writes() {
                c.conn.writing(cref.seq);
            }
        }
        // A client of a pool's own listener has its keys placed in that pool.
        let pool = self
            .clients
            .get(cref.idx)
            .and_then(|c| self.listeners.get(c.listener))
            .and_then(|l| l.pool);
        self.servers.clear();
        // flush_all reaches the servers a migration window is leaving too
        // (a key that misses is read from them); the other fan-outs list
        // the configured fleet.
        let flush = req.r.verb == Verb::FlushAll;
        if flush || plan.is_some() {
            let all = cx.topo.servers.iter().enumerate();
            self.servers.extend(
                all.filter(|(_, s)| flush || !s.leaving)
                    .map(|(i, _)| ServerId(i as u32)),
            );
        }
        let mut view = HealthView::new(cx, cx.topo.generation);
        view.hedge_ok = hedge_ok;
        if let Some(p) = plan {
            return Machine::admin(req, p, &self.servers, &view, fx);
        }
        self.replicas.clear();
        let sample = cx.topo.config.hot_keys;
        // A hot key's gets alternate between its primary and its backup
        // (on the hedging argument: the backup holds every acknowledged
        // write, and the client has none in flight).
        let spreadable = req.r.verb == Verb::Get && req.keys.as_slice().len() == 1 && hedge_ok;
        for k in req.keys.as_slice() {
            let key = req.bytes.get(k.clone()).unwrap_or_default();
            if sample {
                self.hot.read(key);
            }
            let rep = cx.topo.replicas_in(pool, key, false);
            let backup_up = || rep.backup.is_some_and(|b| cx.topo.health(b).is_up());
            let spread = spreadable && self.hot.spread(key) && backup_up();
            if spread {
                cx.stats().incr(Counter::HotSpreads);
            }
            self.replicas.push(if spread { rep.swapped() } else { rep });
        }
        if req.keys.as_slice().is_empty() && !req.r.key.is_empty() {
            let key = req.bytes.get(req.r.key.clone()).unwrap_or_default();
            if sample && req.r.verb == Verb::MetaGet {
                self.hot.read(key);
            }
            self.replicas
                .push(cx.topo.replicas_in(pool, key, req.key_is_base64()));
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
                let lifted = self
                    .live_client(cref)
                    .is_some_and(|cl| cl.conn.end_barrier(cref.seq));
                if lifted {
                    mark(&mut self.clients, &mut self.dirty_clients, cref.idx);
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

    /// A TLS session for a client accepted on the TLS listener, or None
    /// when it is refused: no listener configuration, or client input
    /// (handshakes included) already over `--max-input-memory`.
    fn tls_session(&self, cx: &Ctx) -> Option<Box<TlsSession>> {
        let cfg = cx.topo.tls.listener.clone()?;
        let held = cx
            .shared
            .input_bytes
            .load(std::sync::atomic::Ordering::Relaxed);
        if held + TLS_HANDSHAKE_CHARGE > cx.shared.cfg.max_input_memory {
            cx.stats().incr(Counter::RejectedConnections);
            return None;
        }
        match TlsSession::accept(cfg) {
            Ok(s) => Some(Box::new(s)),
            Err(e) => {
                tracing::warn!(error = %e, "cannot start a TLS session");
                None
            }
        }
    }

    /// Ask the handshaking clients' machines whether their handshake
    /// outlived `--tls-handshake-timeout` (each closes itself then); count
    /// those, and return when the next one is due.
    pub(super) fn check_handshakes(&mut self, cx: &Ctx) -> Option<std::time::Instant> {
        let mut next = None;
        let mut i = 0;
        // Bounded by the handshakes listed: each pass keeps or drops one.
        while i < self.handshakes.len() {
            let (idx, gen) = self.handshakes[i];
            let verdict = self
                .clients
                .get_mut(idx)
                .filter(|c| c.gen == gen)
                .map(|c| c.conn.handshake_check(cx.now));
            match verdict {
                Some(Handshake::Pending(at)) => {
                    next = Some(next.map_or(at, |n: std::time::Instant| n.min(at)));
                    i += 1;
                    continue;
                }
                Some(Handshake::Expired) => {
                    cx.stats().incr(HandshakeError::Timeout.counter());
                    tracing::debug!("TLS handshake timed out, closing the client");
                    mark(&mut self.clients, &mut self.dirty_clients, idx);
                }
                Some(Handshake::Done) | None => {}
            }
            self.handshakes.swap_remove(i);
        }
        next
    }

    /// Client input is over `--max-input-memory`: refuse this core's largest
    /// partial requests (of [`SHED_FLOOR`] bytes or more) until it is under
    /// again or none is left here (see [`ClientConn::refuse_input`]).
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
                .filter(|(_, c)| c.conn.reading() && c.conn.buffered() >= SHED_FLOOR)
                .max_by_key(|(_, c)| c.conn.buffered())
                .map(|(i, _)| i)
            else {
                break;
            };
            let Some(cl) = self.clients.get_mut(idx) else {
                break;
            };
            cl.conn.refuse_input();
            cl.charge_input(cx);
            cx.stats().incr(Counter::InputMemoryRefusals);
            refused += 1;
            mark(&mut self.clients, &mut self.dirty_clients, idx);
        }
        if refused > 0 {
            tracing::warn!(
                refused,
                max_input_memory = budget,
                "client input over --max-input-memory: the largest partial requests were refused"
            );
        }
    }

    /// Start one request the machine handed out into slot `cref`: answer
    /// it here or launch its machine.
    fn start<D: Driver>(&mut self, d: &mut D, cx: &Ctx, cref: ClientRef, r: Request, bytes: Bytes) {
        let (local, plan) = route_locally(cx, &r, &bytes);
        if let Some(a) = local {
            self.deliver_answer(cref, a);
            return;
        }
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
        let machine = self.machine_for(cx, cref, req, plan, &mut fx);
        self.launch(d, cx, machine, Some(cref), None, &mut fx);
        self.fx = fx;
    }

    /// End-of-turn work for one client: send, re-arm, pause, or close.
    pub(super) fn flush_client<D: Driver>(&mut self, d: &mut D, cx: &Ctx, idx: usize) {
        if let Some(cl) = self.clients.get_mut(idx) {
            cl.conn.drain_ready();
        }
        // Answers that need no send (noreply) free budget too.
        self.parse(cx, d, idx);
        let Some(cl) = self.clients.get_mut(idx) else {
            return;
        };
        cl.dirty = false;
        if cl.conn.phase() != Phase::Closed {
            cl.conn.drain_ready();
            if let Some(t) = cl.tls.as_deref_mut() {
                // Answers become records; they count as written now.
                cl.conn.take_out(t.room(), |plain| t.write(plain));
                if cl.conn.finished() {
                    t.close_notify();
                }
                t.flush();
            }
            cl.conn
                .record_sent(cx.now, |cmd, t| cx.metrics().record_request(cmd, t));
            let out = match cl.tls.as_deref() {
                None => cl.conn.out(),
                Some(t) => t.out(),
            };
            if !cl.send_inflight && !out.is_empty() {
                fill_iov(&mut cl.iov, out);
                // SAFETY: the iovecs point into the machine's (or the TLS
                // session's) output buffers, which stay untouched (never
                // advanced or dropped) until this send's completion; `iov`
                // itself is not modified until then either.
                unsafe {
                    d.send(
                        token(Op::ClientSend, idx, cl.gen),
                        cl.fd,
                        cl.iov.as_ptr(),
                        cl.iov.len(),
                    )
                };
                cl.send_inflight = true;
            }
            if cl.conn.finished() && cl.pending() == 0 && !cl.send_inflight {
                cl.conn.fail();
            }
        }
        if cl.conn.phase() == Phase::Closed {
            if cl.ops_in_flight() {
                if !cl.shut {
                    d.shutdown(cl.fd);
                    cl.shut = true;
                }
                return;
            }
            d.close(cl.fd);
            cl.charge(cx, 0);
            if cl.tls.is_some() {
                cx.stats()
                    .curr_tls_connections
                    .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
            }
            self.clients.remove(idx);
            cx.stats()
                .curr_connections
                .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
            return;
        }
        cl.charge_input(cx);
        cl.conn.release_idle();
        let want = cl.conn.wants_input(cx.client_budget, cl.pending());
        if want && !cl.recv_armed {
            d.recv(token(Op::ClientRecv, idx, cl.gen), cl.fd);
            cl.recv_armed = true;
        } else if !want && cl.recv_armed && !cl.cancel_pending && cl.conn.reading() {
            // Over budget: stop reading; TCP pushes back on the client.
            d.cancel_recv(token(Op::ClientRecv, idx, cl.gen), cl.fd);
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
    if let Some(a) = crate::proxy::local_answer(r) {
        return (Some(a), None);
    }
    let local = match r.verb {
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
