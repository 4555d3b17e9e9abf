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
//!
//! A plain connection's replies land in its read buffer itself: one receive
//! at a time into the buffer's spare room ([`Pipeline::landing`],
//! [`Driver::recv_into`]), so they are parsed where the kernel wrote them
//! and a value goes to its client without a copy. A TLS connection's
//! records come through the core's provided buffers and are decrypted.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::os::fd::{IntoRawFd, RawFd};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};

use crate::proxy::machine::{CallError, Failure};
use crate::proxy::pipeline::{Call, Due, Fault, Pipeline, Queued};
use crate::stats::Counter;
use crate::upstream::{backoff, Health, HealthPolicy, ServerId, Verdict};

use super::{next_gen, token, Core, Ctx, Op};
use crate::server::driver::{set_linger_zero, Completion, Driver};
use crate::server::tls::TlsSession;
use crate::server::topology::{fill_iov, ProbeBell};

/// One pipelined connection to a server: its machine, and the I/O state
/// of its socket on this core.
pub(super) struct UpConn {
    pub server: ServerId,
    pub addr: SocketAddr,
    name: String,
    gen: u32,
    fd: Option<RawFd>,
    /// Every protocol decision of the connection.
    pipe: Pipeline,
    /// The transport: None for plain bytes, or the TLS session
    /// (`--server-tls`) of the current socket.
    tls: Option<Box<TlsSession>>,
    iov: Vec<libc::iovec>,
    send_inflight: bool,
    recv_armed: bool,
    /// The memory an armed plain receive writes into (see
    /// [`Pipeline::landing`]).
    landing: Option<BytesMut>,
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
    /// Memory an in-flight receive still writes into.
    _landing: Option<BytesMut>,
}

impl UpConn {
    /// A reload numbered the servers anew: this connection's is `server`.
    pub(super) fn renumber(&mut self, server: ServerId) {
        self.server = server;
        self.pipe.renumber(server);
    }

    pub(super) fn new(server: ServerId, addr: SocketAddr, name: &str) -> UpConn {
        UpConn {
            server,
            addr,
            name: name.to_string(),
            gen: 0,
            fd: None,
            pipe: Pipeline::new(server, std::time::Instant::now()),
            tls: None,
            iov: Vec::with_capacity(64),
            send_inflight: false,
            recv_armed: false,
            landing: None,
            connecting: false,
            dirty: false,
        }
    }

    /// Calls on this connection, for picking the least loaded one.
    /// How long this connection has made no progress with calls waiting.
    pub(super) fn stalled(&self, now: std::time::Instant) -> std::time::Duration {
        self.pipe.stalled(now)
    }

    pub(super) fn load(&self) -> usize {
        self.pipe.load()
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
        let tls = self.tls.take();
        let unanswered = self.pipe.unanswered() || tls.as_ref().is_some_and(|t| t.pending() > 0);
        let (recv, send, connect) = (
            std::mem::take(&mut self.recv_armed),
            std::mem::take(&mut self.send_inflight),
            std::mem::take(&mut self.connecting),
        );
        if !(recv || send || connect) {
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
            recv,
            send,
            connect,
            fence,
            _out: match tls {
                Some(mut t) => t.take_out(),
                None => self.pipe.take_out(),
            },
            _iov: std::mem::take(&mut self.iov),
            _landing: self.landing.take(),
        })
    }
}

fn mark(st: &mut Core, ci: usize) {
    if let Some(u) = st.ups.get_mut(ci) {
        if !u.dirty {
            u.dirty = true;
            st.dirty_ups.push(ci);
        }
    }
}

impl Core {
    /// Queue `call` on connection `ci` of `server`, connecting first if
    /// needed.
    pub(super) fn queue_call<D: Driver>(
        &mut self,
        d: &mut D,
        cx: &Ctx,
        (server, ci): (ServerId, usize),
        call: Call,
    ) {
        let Some(u) = self.ups.get_mut(ci) else {
            let e = CallError::no_call(server, call.expect);
            self.outcomes.push_back((call.req, call.call, Err(e)));
            return;
        };
        match u.pipe.queue(call, cx.now, &mut self.outcomes) {
            Queued::Written => mark(self, ci),
            Queued::Connect => self.connect(d, cx, ci),
            Queued::Waiting | Queued::Refused => {}
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
                u.pipe.connecting(cx.now + cx.topo.settings.connect_timeout);
                d.connect(token(Op::UpConnect, ci, gen), fd, u.addr);
            }
            Err(e) => {
                tracing::warn!(server = %u.name, error = %e, "cannot create a socket");
                self.fail_up(d, cx, ci, Failure::Connect);
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
        if self.zombie_done(d, ci, gen, Op::UpConnect, c.more) {
            return;
        }
        let Some(u) = self.ups.get_mut(ci) else {
            return;
        };
        u.connecting = false;
        if c.res < 0 {
            tracing::debug!(server = %u.name, error = %std::io::Error::from_raw_os_error(-c.res), "connect failed");
            self.fail_up(d, cx, ci, Failure::Connect);
            return;
        }
        let info = cx.topo.servers.get(u.server.index());
        match (&cx.topo.tls.servers, info.and_then(|s| s.tls_name.clone())) {
            (Some(cfg), Some(name)) => match TlsSession::connect(cfg.clone(), name) {
                // Still connecting (its deadline covers the handshake):
                // the calls are written once the handshake is done.
                Ok(s) => u.tls = Some(Box::new(s)),
                Err(e) => {
                    tracing::warn!(server = %u.name, error = %e, "cannot start a TLS session");
                    self.fail_up(d, cx, ci, Failure::Tls);
                    return;
                }
            },
            _ => u.pipe.connected(cx.now),
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
            self.zombie_done(d, ci, gen, Op::UpRecv, c.more);
            return;
        }
        let Some(u) = self.ups.get_mut(ci) else {
            return;
        };
        if !c.more {
            u.recv_armed = false;
        }
        let mut outcome = Ok(false);
        let mut tls_failed = None;
        let mut tls_closed = false;
        // The bytes landed in the read buffer's own memory (plain), or in a
        // provided buffer (TLS, decrypted here).
        let (landed, provided) = (u.landing.take(), c.buf);
        if c.res > 0 {
            let max_value = cx.max_item.saturating_mul(2) + (1 << 20);
            // Upstream latency, when timing: this server's block of this core.
            let timed = cx
                .shared
                .timing
                .then(|| cx.topo.servers.get(u.server.index()))
                .flatten();
            // And the server's hedge delay, when hedging.
            let (hedges, server) = (&mut self.hedges, u.server);
            let hedging = cx.topo.settings.hedge;
            let observe = |t| {
                if let Some(s) = timed {
                    s.metrics.record_upstream(cx.id, t);
                }
                if hedging {
                    hedges.observe(server, t, cx.now);
                }
            };
            if let Some(mut land) = landed {
                let n = (c.res as usize).min(land.capacity());
                // SAFETY: the receive was given the landing's spare
                // capacity (all of it: it starts empty) and wrote `n` bytes
                // at its start.
                unsafe { land.set_len(n) };
                u.pipe.landed(land);
            } else if let Some(b) = provided {
                let mut bytes = d.buffer(b, c.res as usize);
                if let Some(t) = u.tls.as_deref_mut() {
                    self.plain.clear();
                    match t.receive(bytes, &mut self.plain) {
                        Ok(got) => {
                            if got.handshake_done {
                                u.pipe.connected(cx.now);
                            }
                            tls_closed = got.closed;
                        }
                        Err(e) => tls_failed = Some(e),
                    }
                    bytes = &self.plain;
                }
                u.pipe.copy_in(bytes);
            }
            outcome = u.pipe.frame(
                cx.now,
                max_value,
                &mut self.items,
                &mut self.outcomes,
                observe,
            );
        }
        if let Some(b) = provided {
            d.recycle(b);
        }
        if let Some(e) = tls_failed {
            tracing::warn!(server = %u.name, reason = e.reason.as_str(), error = %e.detail, handshaking = e.handshaking, "TLS to the server failed, closing the connection");
            self.fail_up(d, cx, ci, Failure::Tls);
            return;
        }
        if c.res == -libc::ENOBUFS {
            mark(self, ci);
            return;
        }
        if c.res <= 0 || tls_closed {
            self.fail_up(d, cx, ci, Failure::Closed);
            return;
        }
        match outcome {
            Ok(answered) => {
                if answered {
                    if let Some(s) = cx.topo.servers.get(u.server.index()) {
                        s.health.record_success();
                    }
                }
                mark(self, ci);
            }
            Err(Fault::OutOfStep(what)) => self.out_of_step(d, cx, ci, what),
            Err(Fault::Garbled(msg)) => {
                tracing::warn!(server = %u.name, error = msg, "unparseable reply, closing connection");
                self.fail_up(d, cx, ci, Failure::Protocol);
            }
        }
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
        self.fail_up(d, cx, ci, Failure::Protocol);
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
        if self.zombie_done(d, ci, gen, Op::UpSend, c.more) {
            return;
        }
        let Some(u) = self.ups.get_mut(ci) else {
            return;
        };
        u.send_inflight = false;
        if c.res <= 0 {
            self.fail_up(d, cx, ci, Failure::Closed);
            return;
        }
        match u.tls.as_deref_mut() {
            None => u.pipe.sent(c.res as usize),
            Some(t) => t.sent(c.res as usize),
        }
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
        kind: Op,
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
            Op::UpRecv if !more => z.recv = false,
            Op::UpSend => z.send = false,
            Op::UpConnect => z.connect = false,
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

    /// Fail connection `ci`: one failure for the server; its machine
    /// settles its calls (see [`Pipeline::fail`]).
    pub(super) fn fail_up<D: Driver>(&mut self, d: &mut D, cx: &Ctx, ci: usize, why: Failure) {
        let gen = next_gen(&mut self.up_gen);
        let Some(u) = self.ups.get_mut(ci) else {
            return;
        };
        let server = cx.topo.servers.get(u.server.index());
        if let Some(z) = u.bury(d, ci, server.map(|s| (&s.health, &cx.topo.bell))) {
            self.zombies.push(z);
        }
        u.gen = gen;
        let policy = cx.topo.settings.policy;
        if let Some(s) = server {
            s.metrics.upstream_error(cx.id, why.metric());
            let reason = why.ejection();
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
        let p = HealthPolicy {
            retry_interval: Duration::from_millis(20),
            max_retry_interval: policy.retry_interval,
            ..policy
        };
        let failed = u.pipe.fail(
            why,
            up,
            cx.now,
            |attempts| backoff(&p, attempts, cx.jitter()),
            &mut self.outcomes,
        );
        if failed.timed_out {
            cx.stats().incr(Counter::BackendTimeouts);
        }
        if failed.reconnect {
            self.connect(d, cx, ci);
        }
    }

    /// Deadlines of connection `ci`; returns when it is next due.
    pub(super) fn check_up<D: Driver>(
        &mut self,
        d: &mut D,
        cx: &Ctx,
        ci: usize,
    ) -> Option<std::time::Instant> {
        let u = self.ups.get(ci)?;
        match u.pipe.due(cx.now, cx.topo.settings.request_timeout) {
            Due::Never => None,
            Due::At(at) => Some(at),
            Due::Fail(why) => {
                if why == Failure::Connect {
                    tracing::debug!(server = %u.name, "connect timed out");
                } else {
                    tracing::debug!(server = %u.name, waiting = u.pipe.waiting(), "upstream connection stuck");
                }
                self.fail_up(d, cx, ci, why);
                None
            }
        }
    }

    /// End-of-turn work for one connection: send what the turn queued, and
    /// keep a receive armed while connected.
    pub(super) fn flush_up<D: Driver>(&mut self, d: &mut D, _cx: &Ctx, ci: usize) {
        let Some(u) = self.ups.get_mut(ci) else {
            return;
        };
        u.dirty = false;
        let Some(fd) = u.fd.filter(|_| !u.connecting) else {
            return;
        };
        let ready = u.pipe.phase() == crate::proxy::pipeline::Phase::Ready;
        let out = match u.tls.as_deref_mut() {
            // Plain: nothing goes before the connection is ready.
            None if !ready => return,
            None => u.pipe.out(),
            Some(t) => {
                // The handshake's records go first; the calls once it is
                // done (the pipeline is ready then).
                if ready {
                    u.pipe.drain_out(|b| t.write(b));
                }
                t.flush();
                t.out()
            }
        };
        if !u.send_inflight && !out.is_empty() {
            fill_iov(&mut u.iov, out);
            // SAFETY: the iovecs point into the machine's output buffers,
            // which are neither advanced nor dropped before this send
            // completes (a failure moves them into a Zombie until then);
            // `iov` is not touched either.
            unsafe {
                d.send(
                    token(Op::UpSend, ci, u.gen),
                    fd,
                    u.iov.as_ptr(),
                    u.iov.len(),
                )
            };
            u.send_inflight = true;
        }
        if !u.recv_armed {
            let tok = token(Op::UpRecv, ci, u.gen);
            if u.tls.is_some() {
                // TLS records are decrypted out of the provided buffers.
                d.recv(tok, fd);
            } else {
                // Plain replies land in the read buffer itself.
                let mut land = u.pipe.landing();
                let room = land.spare_capacity_mut();
                let (ptr, len) = (room.as_mut_ptr().cast::<u8>(), room.len());
                // SAFETY: `land` owns that memory and is neither read, grown
                // nor dropped until the completion: it waits in `landing`
                // (or in a Zombie, if the socket is given up first); one
                // receive per socket is armed (`recv_armed`).
                unsafe { d.recv_into(tok, fd, ptr, len) };
                u.landing = Some(land);
            }
            u.recv_armed = true;
        }
        u.pipe.release_idle();
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
        u.pipe.retire(&mut self.outcomes);
        self.ups.remove(ci);
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
