//! Upstream connections on the engine: pipelined, shared by every client
//! of the core, matched to replies in FIFO order.
//!
//! Calls queued during a turn leave in one send at its end. A connection
//! that fails (closed, unparseable reply, or stuck: no reply bytes for the
//! request timeout while a request waits) is one failure for the server's
//! health (a stuck one makes it suspect rather than down: the prober,
//! woken at once, decides). Its head request fails; reads behind it are sent again once on a
//! fresh connection; other written requests fail, since they may have run.
//! Calls still waiting for a connection move to the new one. Operations the
//! kernel still holds on the old socket keep its buffers alive in a
//! [`Zombie`] until their completions arrive.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::os::fd::{IntoRawFd, RawFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};

use crate::metrics::UpstreamErrorKind;
use crate::protocol::matching::{self, TagCheck};
use crate::protocol::{reply_size_hint, Expect, MAX_LINE_LEN};
use crate::proxy::machine::{CallError, CallId, Reply};
use crate::stats::Counter;
use crate::upstream::{backoff, Health, HealthPolicy, ServerId, Verdict};

use super::{next_gen, token, Ctx, Kind, State};
use crate::server::driver::{set_linger_zero, Completion, Driver};
use crate::server::topology::{advance, failure_reason, fill_iov, ProbeBell};

/// Grow the read buffer by at least this much.
const READ_STEP: usize = 64 * 1024;

/// An empty read buffer larger than this is released when the connection idles.
const IDLE_KEEP: usize = 1 << 20;

/// One call: a machine's request to a server.
pub(super) struct Call {
    pub req: usize,
    pub call: CallId,
    pub expect: Expect,
    /// Kept only for reads, which may be sent again after a failure and
    /// whose replies are checked against the keys they asked for.
    pub parts: [Bytes; 2],
    pub retried: bool,
    /// The opaque memring added to this meta request, which its reply must
    /// echo (see [`crate::protocol::matching`]).
    pub tag: Option<u32>,
    /// The turn that wrote it on its connection (upstream latency runs from
    /// there to the turn that framed its reply).
    pub written_at: Instant,
}

impl Call {
    fn retryable(&self) -> bool {
        self.expect == Expect::Values && !self.retried
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Idle,
    Connecting { deadline: Instant },
    Ready,
    Backoff(Instant),
}

/// One pipelined connection to a server.
pub(super) struct UpConn {
    pub server: ServerId,
    pub addr: SocketAddr,
    name: String,
    gen: u32,
    fd: Option<RawFd>,
    phase: Phase,
    attempts: u32,
    /// Waiting for the connection.
    pending: VecDeque<Call>,
    /// Queued in `out` (or sent), waiting for their replies, in order.
    written: VecDeque<Call>,
    out: VecDeque<Bytes>,
    iov: Vec<libc::iovec>,
    rbuf: BytesMut,
    /// The head's reply already had its opaque checked and taken out.
    head_checked: bool,
    /// The opaque for the next tagged meta request.
    next_tag: u32,
    /// Where the ` O<n>` tokens of this connection's requests are written
    /// (split off in turn: one allocation per few hundred requests).
    tags: BytesMut,
    /// Last time the head of `written` made progress (written, or reply bytes).
    progress_at: Instant,
    send_inflight: bool,
    recv_armed: bool,
    connecting: bool,
    dirty: bool,
}

/// A failed connection's socket whose operations are still in the kernel.
pub(super) struct Zombie {
    idx: usize,
    gen: u32,
    fd: RawFd,
    recv: bool,
    send: bool,
    connect: bool,
    /// The server's health, fenced until this socket is closed (it was
    /// given up with requests unanswered), and the prober's bell, rung
    /// then so that a probe held back by the fence starts at once.
    fence: Option<(Arc<Health>, Arc<ProbeBell>)>,
    /// Memory an in-flight send still points into.
    _out: VecDeque<Bytes>,
    _iov: Vec<libc::iovec>,
}

impl UpConn {
    pub(super) fn new(server: ServerId, addr: SocketAddr, name: &str) -> UpConn {
        UpConn {
            server,
            addr,
            name: name.to_string(),
            gen: 0,
            fd: None,
            phase: Phase::Idle,
            attempts: 0,
            pending: VecDeque::new(),
            written: VecDeque::with_capacity(64),
            out: VecDeque::with_capacity(64),
            iov: Vec::with_capacity(64),
            rbuf: BytesMut::new(),
            head_checked: false,
            next_tag: 0,
            tags: BytesMut::new(),
            progress_at: Instant::now(),
            send_inflight: false,
            recv_armed: false,
            connecting: false,
            dirty: false,
        }
    }

    /// Calls on this connection, for picking the least loaded one.
    pub(super) fn load(&self) -> usize {
        self.pending.len() + self.written.len()
    }

    /// Let go of the socket: closed at once when the kernel holds nothing of
    /// it, otherwise shut down and handed back as a [`Zombie`] that keeps
    /// what in-flight operations point into until they complete.
    ///
    /// A socket that carried requests still unanswered is reset, not
    /// closed gracefully (see [`Driver::abort`]), and `health` stays fenced
    /// until it is closed: the server is not probed back into service while
    /// those requests could still reach it.
    fn bury<D: Driver>(
        &mut self,
        d: &mut D,
        idx: usize,
        health: Option<(&Arc<Health>, &Arc<ProbeBell>)>,
    ) -> Option<Zombie> {
        let fd = self.fd.take()?;
        let unanswered = !self.written.is_empty() || !self.out.is_empty();
        if !(self.recv_armed || self.send_inflight || self.connecting) {
            if unanswered {
                // Nothing of it is in the kernel's hands: reset it now.
                set_linger_zero(fd);
                if let Some((h, _)) = health {
                    h.aborted();
                }
            }
            d.close(fd);
            return None;
        }
        let fence = if unanswered {
            d.abort(fd);
            health.map(|(h, bell)| {
                h.fence();
                (h.clone(), bell.clone())
            })
        } else {
            d.shutdown(fd);
            None
        };
        Some(Zombie {
            idx,
            gen: self.gen,
            fd,
            recv: self.recv_armed,
            send: self.send_inflight,
            connect: self.connecting,
            fence,
            _out: std::mem::take(&mut self.out),
            _iov: std::mem::take(&mut self.iov),
        })
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
}

fn mark(st: &mut State, ci: usize) {
    if let Some(u) = st.ups.get_mut(ci) {
        if !u.dirty {
            u.dirty = true;
            st.dirty_ups.push(ci);
        }
    }
}

impl State {
    /// Queue `call` on connection `ci`, connecting first if needed.
    pub(super) fn queue_call<D: Driver>(&mut self, d: &mut D, cx: &Ctx, ci: usize, call: Call) {
        let Some(u) = self.ups.get_mut(ci) else {
            self.outcomes
                .push_back((call.req, call.call, Err(CallError::Closed)));
            return;
        };
        match u.phase {
            Phase::Ready => {
                u.write(cx.now, call);
                mark(self, ci);
            }
            Phase::Connecting { .. } => u.pending.push_back(call),
            Phase::Backoff(until) if cx.now < until => {
                self.outcomes
                    .push_back((call.req, call.call, Err(CallError::Connect)));
            }
            Phase::Idle | Phase::Backoff(_) => {
                u.pending.push_back(call);
                self.connect(d, cx, ci);
            }
        }
    }

    /// Open a new socket for connection `ci`.
    fn connect<D: Driver>(&mut self, d: &mut D, cx: &Ctx, ci: usize) {
        let gen = next_gen(&mut self.up_gen);
        let Some(u) = self.ups.get_mut(ci) else {
            return;
        };
        u.gen = gen;
        match new_socket(u.addr) {
            Ok(fd) => {
                u.fd = Some(fd);
                u.connecting = true;
                u.phase = Phase::Connecting {
                    deadline: cx.now + cx.topo.settings.connect_timeout,
                };
                d.connect(token(Kind::UpConnect, ci, gen), fd, u.addr);
            }
            Err(e) => {
                tracing::warn!(server = %u.name, error = %e, "cannot create a socket");
                self.fail_up(d, cx, ci, CallError::Connect);
            }
        }
    }

    /// A connect finished.
    pub(super) fn up_connected<D: Driver>(
        &mut self,
        d: &mut D,
        cx: &Ctx,
        ci: usize,
        gen: u32,
        c: Completion,
    ) {
        if self.zombie_done(d, ci, gen, Kind::UpConnect, c.more) {
            return;
        }
        let Some(u) = self.ups.get_mut(ci) else {
            return;
        };
        u.connecting = false;
        if c.res < 0 {
            tracing::debug!(server = %u.name, error = %std::io::Error::from_raw_os_error(-c.res), "connect failed");
            self.fail_up(d, cx, ci, CallError::Connect);
            return;
        }
        u.phase = Phase::Ready;
        u.attempts = 0;
        while let Some(call) = u.pending.pop_front() {
            u.write(cx.now, call);
        }
        mark(self, ci);
    }

    /// Reply bytes (or the end) from a server.
    pub(super) fn up_recv<D: Driver>(
        &mut self,
        d: &mut D,
        cx: &Ctx,
        ci: usize,
        gen: u32,
        c: Completion,
    ) {
        let current = self
            .ups
            .get(ci)
            .is_some_and(|u| u.gen == gen && u.fd.is_some());
        if !current {
            if let Some(b) = c.buf {
                d.recycle(b);
            }
            self.zombie_done(d, ci, gen, Kind::UpRecv, c.more);
            return;
        }
        let Some(u) = self.ups.get_mut(ci) else {
            return;
        };
        super::take_received(d, &c, &mut u.rbuf, READ_STEP, true);
        if !c.more {
            u.recv_armed = false;
        }
        if c.res == -libc::ENOBUFS {
            mark(self, ci);
            return;
        }
        if c.res <= 0 {
            self.fail_up(d, cx, ci, CallError::Closed);
            return;
        }
        u.progress_at = cx.now;
        let max_value = cx.max_item.saturating_mul(2) + (1 << 20);
        let mut answered = false;
        // Upstream latency, when timing: this server's block of this core.
        let timed = cx
            .shared
            .timing
            .then(|| cx.topo.servers.get(u.server.index()))
            .flatten();
        while let Some(head) = u.written.front() {
            if let (Some(tag), false) = (head.tag, u.head_checked) {
                match matching::check_meta_tag(&u.rbuf, tag, MAX_LINE_LEN) {
                    TagCheck::Incomplete if u.rbuf.len() < MAX_LINE_LEN => break,
                    TagCheck::Echoed(r) => matching::strip_token(&mut u.rbuf, r),
                    TagCheck::ErrorLine => {}
                    TagCheck::Incomplete | TagCheck::Mismatch => {
                        self.out_of_step(d, cx, ci, "a meta reply without its request's opaque");
                        return;
                    }
                }
                u.head_checked = true;
            }
            match Reply::frame(head.expect, &mut u.rbuf, max_value, &mut self.items) {
                Ok(Some(reply)) => {
                    if head.expect == Expect::Values
                        && !matching::values_match(&head.parts[0], &reply.frame, &self.items)
                    {
                        self.out_of_step(
                            d,
                            cx,
                            ci,
                            "a value for a key its request did not ask for",
                        );
                        return;
                    }
                    u.head_checked = false;
                    if let Some(call) = u.written.pop_front() {
                        answered = true;
                        if let Some(s) = timed {
                            s.metrics.record_upstream(
                                cx.id,
                                cx.now.saturating_duration_since(call.written_at),
                            );
                        }
                        self.outcomes.push_back((call.req, call.call, Ok(reply)));
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    tracing::warn!(server = %u.name, error = e.msg, "unparseable reply, closing connection");
                    self.fail_up(d, cx, ci, CallError::Protocol);
                    return;
                }
            }
        }
        if let Some(need) = reply_size_hint(&u.rbuf).filter(|n| *n > READ_STEP) {
            if u.rbuf.capacity() < need {
                // A large value is on its way: one buffer of its exact size,
                // instead of growing step by step (and copying) while it
                // streams in.
                let mut exact = BytesMut::with_capacity(need);
                exact.extend_from_slice(&u.rbuf);
                u.rbuf = exact;
            }
        }
        if u.written.is_empty() && !u.rbuf.is_empty() {
            self.out_of_step(d, cx, ci, "bytes no request asked for");
            return;
        }
        if answered {
            if let Some(s) = cx.topo.servers.get(u.server.index()) {
                s.health.record_success();
            }
        }
        mark(self, ci);
    }

    /// Connection `ci` is out of step with its requests (`what` it sent):
    /// any later reply could be matched to the wrong request, so it fails
    /// as a garbled one does (its reads go again on a fresh connection, the
    /// server is charged a `protocol` failure) and is counted.
    fn out_of_step<D: Driver>(&mut self, d: &mut D, cx: &Ctx, ci: usize, what: &str) {
        if let Some(u) = self.ups.get(ci) {
            tracing::warn!(server = %u.name, reply = what, "upstream connection out of step with its requests, closing it");
        }
        cx.stats().incr(Counter::BackendDesyncs);
        self.fail_up(d, cx, ci, CallError::Protocol);
    }

    /// A send to a server finished.
    pub(super) fn up_sent<D: Driver>(
        &mut self,
        d: &mut D,
        cx: &Ctx,
        ci: usize,
        gen: u32,
        c: Completion,
    ) {
        if self.zombie_done(d, ci, gen, Kind::UpSend, c.more) {
            return;
        }
        let Some(u) = self.ups.get_mut(ci) else {
            return;
        };
        u.send_inflight = false;
        if c.res <= 0 {
            self.fail_up(d, cx, ci, CallError::Closed);
            return;
        }
        advance(&mut u.out, c.res as usize);
        mark(self, ci);
    }

    /// A completion for an earlier socket of connection `ci`: note that
    /// its operation ended, and close the socket once none is left. Returns
    /// false when `gen` is the connection's current socket.
    fn zombie_done<D: Driver>(
        &mut self,
        d: &mut D,
        ci: usize,
        gen: u32,
        kind: Kind,
        more: bool,
    ) -> bool {
        if self
            .ups
            .get(ci)
            .is_some_and(|u| u.gen == gen && u.fd.is_some())
        {
            return false;
        }
        let Some(pos) = self
            .zombies
            .iter()
            .position(|z| z.idx == ci && z.gen == gen)
        else {
            return true;
        };
        let z = &mut self.zombies[pos];
        match kind {
            Kind::UpRecv if !more => z.recv = false,
            Kind::UpSend => z.send = false,
            Kind::UpConnect => z.connect = false,
            _ => {}
        }
        if !z.recv && !z.send && !z.connect {
            let z = self.zombies.swap_remove(pos);
            d.close(z.fd);
            if let Some((h, bell)) = z.fence {
                h.unfence();
                bell.ring();
            }
        }
        true
    }

    /// Fail connection `ci`: one failure for the server; see the module
    /// comment for what happens to its calls.
    pub(super) fn fail_up<D: Driver>(&mut self, d: &mut D, cx: &Ctx, ci: usize, why: CallError) {
        let gen = next_gen(&mut self.up_gen);
        let Some(u) = self.ups.get_mut(ci) else {
            return;
        };
        let server = cx.topo.servers.get(u.server.index());
        if let Some(z) = u.bury(d, ci, server.map(|s| (&s.health, &cx.topo.bell))) {
            self.zombies.push(z);
        }
        u.gen = gen;
        u.recv_armed = false;
        u.send_inflight = false;
        u.connecting = false;
        u.out.clear();
        u.rbuf.clear();
        u.head_checked = false;
        let policy = cx.topo.settings.policy;
        if let Some(s) = server {
            s.metrics.upstream_error(cx.id, error_kind(why));
            let reason = failure_reason(why);
            match s.health.record_failure(cx.now, &policy, reason) {
                Verdict::Ejected => {
                    tracing::warn!(server = %s.name, reason = reason.as_str(), "server ejected after failures");
                }
                Verdict::Suspected => {
                    tracing::warn!(server = %s.name, reason = reason.as_str(), "server suspect: out of service until a probe answers");
                    cx.topo.bell.ring();
                }
                Verdict::Stays => {}
            }
        }
        let up = server.is_some_and(|s| s.health.is_up());
        u.phase = if why == CallError::Connect {
            u.attempts = u.attempts.saturating_add(1);
            let p = HealthPolicy {
                retry_interval: Duration::from_millis(20),
                max_retry_interval: policy.retry_interval,
                ..policy
            };
            Phase::Backoff(cx.now + backoff(&p, u.attempts, cx.jitter()))
        } else {
            Phase::Idle
        };
        // Written calls, oldest first.
        let mut retry = VecDeque::new();
        for (i, mut call) in u.written.drain(..).enumerate() {
            let head_timed_out = why == CallError::Timeout && i == 0;
            if up && call.retryable() && !head_timed_out && why != CallError::Connect {
                call.retried = true;
                retry.push_back(call);
                continue;
            }
            let err = if head_timed_out {
                cx.stats().incr(Counter::BackendTimeouts);
                CallError::Timeout
            } else {
                why
            };
            self.outcomes.push_back((call.req, call.call, Err(err)));
        }
        while let Some(call) = u.pending.pop_front() {
            retry.push_back(call);
        }
        if !up || why == CallError::Connect {
            let err = if why == CallError::Connect {
                CallError::Connect
            } else {
                CallError::Closed
            };
            for call in retry {
                self.outcomes.push_back((call.req, call.call, Err(err)));
            }
            return;
        }
        if !retry.is_empty() {
            u.pending = retry;
            self.connect(d, cx, ci);
        }
    }

    /// Deadlines of connection `ci`; returns when it is next due.
    pub(super) fn check_up<D: Driver>(
        &mut self,
        d: &mut D,
        cx: &Ctx,
        ci: usize,
    ) -> Option<Instant> {
        let u = self.ups.get(ci)?;
        match u.phase {
            Phase::Connecting { deadline } => {
                if cx.now >= deadline {
                    tracing::debug!(server = %u.name, "connect timed out");
                    self.fail_up(d, cx, ci, CallError::Connect);
                    None
                } else {
                    Some(deadline)
                }
            }
            Phase::Ready if !u.written.is_empty() => {
                let due = u.progress_at + cx.topo.settings.request_timeout;
                if cx.now >= due {
                    tracing::debug!(server = %u.name, waiting = u.written.len(), "upstream connection stuck");
                    self.fail_up(d, cx, ci, CallError::Timeout);
                    None
                } else {
                    Some(due)
                }
            }
            _ => None,
        }
    }

    /// End-of-turn work for one connection: send what the turn queued, and
    /// keep a receive armed while connected.
    pub(super) fn flush_up<D: Driver>(&mut self, d: &mut D, _cx: &Ctx, ci: usize) {
        let Some(u) = self.ups.get_mut(ci) else {
            return;
        };
        u.dirty = false;
        let (Phase::Ready, Some(fd)) = (u.phase, u.fd) else {
            return;
        };
        if !u.send_inflight && !u.out.is_empty() {
            fill_iov(&mut u.iov, &u.out);
            // SAFETY: the iovecs point into `out`'s buffers, which are neither
            // advanced nor dropped before this send completes (a failure moves
            // them into a Zombie until then); `iov` is not touched either.
            unsafe {
                d.send(
                    token(Kind::UpSend, ci, u.gen),
                    fd,
                    u.iov.as_ptr(),
                    u.iov.len(),
                )
            };
            u.send_inflight = true;
        }
        if !u.recv_armed {
            d.recv(token(Kind::UpRecv, ci, u.gen), fd);
            u.recv_armed = true;
        }
        if u.written.is_empty() && u.rbuf.is_empty() && u.rbuf.capacity() > IDLE_KEEP {
            // Large values passed: release the buffer while the connection idles.
            u.rbuf = BytesMut::new();
        }
    }

    /// A reload dropped connection `ci`'s server: fail its calls and let it go.
    pub(super) fn retire_up<D: Driver>(&mut self, d: &mut D, cx: &Ctx, ci: usize) {
        let Some(u) = self.ups.get_mut(ci) else {
            return;
        };
        let server = cx.topo.servers.get(u.server.index());
        if let Some(z) = u.bury(d, ci, server.map(|s| (&s.health, &cx.topo.bell))) {
            self.zombies.push(z);
        }
        for call in u.written.drain(..).chain(u.pending.drain(..)) {
            self.outcomes
                .push_back((call.req, call.call, Err(CallError::Closed)));
        }
        self.ups.remove(ci);
    }
}

/// The `kind` label of a connection failure.
fn error_kind(why: CallError) -> UpstreamErrorKind {
    match why {
        CallError::Connect => UpstreamErrorKind::Connect,
        CallError::Timeout => UpstreamErrorKind::Timeout,
        CallError::Closed => UpstreamErrorKind::Closed,
        CallError::Protocol => UpstreamErrorKind::Protocol,
    }
}

/// A nonblocking TCP socket with TCP_NODELAY for `addr`.
fn new_socket(addr: SocketAddr) -> std::io::Result<RawFd> {
    use socket2::{Domain, Protocol, Socket, Type};
    let s = Socket::new(
        Domain::for_address(addr),
        Type::STREAM.nonblocking().cloexec(),
        Some(Protocol::TCP),
    )?;
    s.set_nodelay(true)?;
    Ok(s.into_raw_fd())
}
