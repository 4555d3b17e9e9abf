//! The epoll driver on mio: io_uring's completion semantics emulated over
//! edge-triggered readiness, so the engine above sees one interface.
//!
//! Every fd is registered once, for reading and writing, the first time an
//! operation uses it. The driver remembers whether each fd may be readable or
//! writable (set by events, cleared by EAGAIN) and runs an operation's
//! syscalls when its side is ready: new operations are tried at once, in
//! `wait` before polling, as io_uring tries them at submission.

use std::io;
use std::mem;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};

use socket2::SockAddr;

use super::{errno_of, last_errno, Completion, Driver, DriverConfig};

/// Syscall retries after EINTR before giving up with it.
const EINTR_ROUNDS: usize = 16;

/// The epoll token of the wake-up timer (no fd has this number).
const ALARM: Token = Token(usize::MAX);

/// A send waiting for the socket to take bytes.
struct PendingSend {
    token: u64,
    iov: *const libc::iovec,
    iovcnt: usize,
}

/// A one-shot receive waiting for bytes, into the caller's memory.
struct PendingRecv {
    token: u64,
    buf: *mut u8,
    len: usize,
}

/// What the driver knows and wants of one fd.
#[derive(Default)]
struct FdState {
    registered: bool,
    /// No EAGAIN seen for reading since the last readable event.
    readable: bool,
    /// No EAGAIN seen for writing since the last writable event.
    writable: bool,
    /// Already in `ready`.
    queued: bool,
    accept: Option<u64>,
    recv: Option<u64>,
    recv_into: Option<PendingRecv>,
    send: Option<PendingSend>,
    connect: Option<u64>,
}

/// One core's epoll instance with its receive pool.
pub(crate) struct EpollDriver {
    poll: Poll,
    events: Events,
    /// Per fd number.
    fds: Vec<FdState>,
    /// Fds with an operation to try before the next poll.
    ready: Vec<RawFd>,
    /// Spare vector swapped with `ready` while it is worked through.
    ready_spare: Vec<RawFd>,
    /// Completions produced but not yet handed out.
    done: Vec<Completion>,
    pool: Pool,
    /// The wake-up timer ([`Driver::alarm`]), a timerfd in the epoll set,
    /// made on first use; its expirations are read and bring the caller
    /// nothing.
    alarm: Option<OwnedFd>,
    /// When it is set to go off (`None`: disarmed or gone off).
    alarm_at: Option<Instant>,
}

impl EpollDriver {
    /// The wake-up timer's fd, made and added to the epoll set on first
    /// use; `None` if the kernel refuses.
    fn alarm_fd(&mut self) -> Option<RawFd> {
        if let Some(fd) = &self.alarm {
            return Some(fd.as_raw_fd());
        }
        // SAFETY: timerfd_create has no memory arguments.
        let raw = unsafe {
            libc::timerfd_create(
                libc::CLOCK_MONOTONIC,
                libc::TFD_NONBLOCK | libc::TFD_CLOEXEC,
            )
        };
        if raw < 0 {
            return None;
        }
        // SAFETY: `raw` is a new fd that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        self.poll
            .registry()
            .register(&mut SourceFd(&raw), ALARM, Interest::READABLE)
            .ok()?;
        self.alarm = Some(fd);
        Some(raw)
    }

    /// The wake-up timer went off: read its count (so that it can go off
    /// again) and disarm the record of it.
    fn alarm_rang(&mut self) {
        if let Some(fd) = &self.alarm {
            let mut count = [0u8; 8];
            // SAFETY: reads at most 8 bytes into `count`; nonblocking.
            let _ = unsafe { libc::read(fd.as_raw_fd(), count.as_mut_ptr().cast(), count.len()) };
        }
        self.alarm_at = None;
    }

    /// The state of `fd`, created on first use.
    fn state(&mut self, fd: RawFd) -> Option<&mut FdState> {
        let i = usize::try_from(fd).ok()?;
        if self.fds.len() <= i {
            self.fds.resize_with(i + 1, FdState::default);
        }
        self.fds.get_mut(i)
    }

    /// Register `fd` if it is not yet; an `errno` if epoll refuses it.
    fn register(&mut self, fd: RawFd) -> Result<(), i32> {
        let registry = self.poll.registry();
        let Some(i) = usize::try_from(fd).ok() else {
            return Err(libc::EBADF);
        };
        if self.fds.len() <= i {
            self.fds.resize_with(i + 1, FdState::default);
        }
        let st = &mut self.fds[i];
        if st.registered {
            return Ok(());
        }
        let interest = Interest::READABLE | Interest::WRITABLE;
        let res = match registry.register(&mut SourceFd(&fd), Token(i), interest) {
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {
                registry.reregister(&mut SourceFd(&fd), Token(i), interest)
            }
            other => other,
        };
        res.map_err(|e| errno_of(&e))?;
        st.registered = true;
        // Optimistic: the first attempt finds out.
        st.readable = true;
        st.writable = true;
        Ok(())
    }

    /// Make `fd` be tried before the next poll.
    fn enqueue(&mut self, fd: RawFd) {
        if let Some(st) = self.state(fd) {
            if !st.queued {
                st.queued = true;
                self.ready.push(fd);
            }
        }
    }

    fn finish(&mut self, token: u64, res: i32) {
        self.done.push(Completion {
            token,
            res,
            buf: None,
            more: false,
        });
    }

    /// Register `fd` and queue it, or fail the operation with the errno.
    fn start(&mut self, token: u64, fd: RawFd) -> bool {
        match self.register(fd) {
            Ok(()) => {
                self.enqueue(fd);
                true
            }
            Err(errno) => {
                self.finish(token, -errno);
                false
            }
        }
    }

    /// Run every operation on `fd` whose side is ready.
    fn progress(&mut self, fd: RawFd) {
        let Some(i) = usize::try_from(fd).ok() else {
            return;
        };
        let Some(st) = self.fds.get_mut(i) else {
            return;
        };
        st.queued = false;
        let done = &mut self.done;
        if st.writable {
            if let Some(token) = st.connect {
                progress_connect(fd, st, token, done);
            }
        }
        one_shot(
            &mut st.writable,
            &mut st.send,
            done,
            |s| s.token,
            |s| {
                // SAFETY: `send`'s contract keeps the iovecs valid until the
                // completion.
                unsafe { try_send(fd, s) }
            },
        );
        let accepted_from = done.len();
        if st.readable {
            if let Some(token) = st.accept {
                progress_accept(fd, st, token, done);
            }
        }
        let accepted_to = done.len();
        if st.readable {
            if let Some(token) = st.recv {
                progress_recv(fd, st, token, done, &mut self.pool);
            }
        }
        one_shot(
            &mut st.readable,
            &mut st.recv_into,
            done,
            |r| r.token,
            |r| {
                // SAFETY: `recv_into`'s contract keeps the memory valid until
                // the completion.
                unsafe { try_recv_into(fd, r) }
            },
        );
        // A new fd's number may be one closed behind the driver's back: what
        // was known about that number is stale.
        for c in self
            .done
            .get(accepted_from..accepted_to)
            .unwrap_or_default()
        {
            if let Some(st) = usize::try_from(c.res)
                .ok()
                .and_then(|i| self.fds.get_mut(i))
            {
                *st = FdState::default();
            }
        }
    }
}

/// Try the one-shot operation waiting in `slot` if its side is `ready`:
/// `attempt` gives its result, or `None` on EAGAIN, when it waits again and
/// the side is marked not ready until the next event.
fn one_shot<P>(
    ready: &mut bool,
    slot: &mut Option<P>,
    done: &mut Vec<Completion>,
    token: impl FnOnce(&P) -> u64,
    attempt: impl FnOnce(&P) -> Option<i32>,
) {
    if !*ready {
        return;
    }
    let Some(op) = slot.take() else {
        return;
    };
    match attempt(&op) {
        Some(res) => done.push(Completion {
            token: token(&op),
            res,
            buf: None,
            more: false,
        }),
        None => {
            *ready = false;
            *slot = Some(op);
        }
    }
}

/// Finish a connect once the socket reports writable: SO_ERROR says how it
/// went; no error and no peer yet means still connecting.
fn progress_connect(fd: RawFd, st: &mut FdState, token: u64, done: &mut Vec<Completion>) {
    let mut err: libc::c_int = 0;
    let mut len = mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `err` and `len` are valid for the kernel to write an int.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_ERROR,
            (&mut err as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    let res = if rc < 0 {
        -last_errno()
    } else if err != 0 {
        -err
    } else {
        // SAFETY: sockaddr_storage is plain old data, big enough for any peer.
        let mut peer: libc::sockaddr_storage = unsafe { mem::zeroed() };
        let mut plen = mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        // SAFETY: `peer` and `plen` describe a writable buffer of that size.
        let rc = unsafe {
            libc::getpeername(
                fd,
                (&mut peer as *mut libc::sockaddr_storage).cast(),
                &mut plen,
            )
        };
        if rc == 0 {
            0
        } else if last_errno() == libc::ENOTCONN {
            st.writable = false;
            return;
        } else {
            -last_errno()
        }
    };
    st.connect = None;
    done.push(Completion {
        token,
        res,
        buf: None,
        more: false,
    });
}

/// One sendmsg: `Some(bytes or -errno)`, or `None` on EAGAIN.
///
/// # Safety
/// `send.iov[..send.iovcnt]` and what it points to are valid.
unsafe fn try_send(fd: RawFd, send: &PendingSend) -> Option<i32> {
    // SAFETY: msghdr is plain old data; all zeroes is an empty header.
    let mut msg: libc::msghdr = unsafe { mem::zeroed() };
    msg.msg_iov = send.iov as *mut libc::iovec;
    msg.msg_iovlen = send.iovcnt as _;
    for _ in 0..EINTR_ROUNDS {
        // SAFETY: `msg` points at iovecs valid per this function's contract.
        let n = unsafe { libc::sendmsg(fd, &msg, libc::MSG_NOSIGNAL) };
        if n >= 0 {
            return Some(i32::try_from(n).unwrap_or(i32::MAX));
        }
        match last_errno() {
            libc::EINTR => continue,
            libc::EAGAIN => return None,
            errno => return Some(-errno),
        }
    }
    Some(-libc::EINTR)
}

/// Accept until EAGAIN; an error other than a vanished peer ends the
/// multishot accept, as it does on io_uring.
fn progress_accept(fd: RawFd, st: &mut FdState, token: u64, done: &mut Vec<Completion>) {
    // Bounded by the listen backlog; EINTR/ECONNABORTED retries are counted.
    let mut retries = 0;
    loop {
        // SAFETY: accept4 with no address buffers writes no memory of ours.
        let new = unsafe {
            libc::accept4(
                fd,
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            )
        };
        if new >= 0 {
            done.push(Completion {
                token,
                res: new,
                buf: None,
                more: true,
            });
            continue;
        }
        match last_errno() {
            libc::EAGAIN => {
                st.readable = false;
                return;
            }
            libc::EINTR | libc::ECONNABORTED if retries < EINTR_ROUNDS => retries += 1,
            errno => {
                st.accept = None;
                done.push(Completion {
                    token,
                    res: -errno,
                    buf: None,
                    more: false,
                });
                return;
            }
        }
    }
}

/// One recv into the caller's memory: its result, or `None` on EAGAIN.
///
/// # Safety
/// `recv.buf[..recv.len]` is valid, writable memory.
unsafe fn try_recv_into(fd: RawFd, recv: &PendingRecv) -> Option<i32> {
    // Bounded: EINTR is retried a few times, then reported.
    for _ in 0..EINTR_ROUNDS {
        // SAFETY: the caller's contract covers `buf[..len]`.
        let n = unsafe { libc::recv(fd, recv.buf.cast(), recv.len, 0) };
        if n >= 0 {
            return Some(i32::try_from(n).unwrap_or(i32::MAX));
        }
        match last_errno() {
            libc::EAGAIN => return None,
            libc::EINTR => {}
            errno => return Some(-errno),
        }
    }
    Some(-libc::EINTR)
}

/// Read into free pool buffers until EAGAIN, end of stream, an error, or a
/// dry pool with bytes waiting (-ENOBUFS).
fn progress_recv(
    fd: RawFd,
    st: &mut FdState,
    token: u64,
    done: &mut Vec<Completion>,
    pool: &mut Pool,
) {
    let mut retries = 0;
    let end = |st: &mut FdState, done: &mut Vec<Completion>, res: i32| {
        st.recv = None;
        done.push(Completion {
            token,
            res,
            buf: None,
            more: false,
        });
    };
    // Bounded by the pool: every pass takes a buffer or ends.
    loop {
        let Some(id) = pool.take() else {
            // io_uring reports a dry pool only when there are bytes to put
            // somewhere: peek for one.
            let mut byte = 0u8;
            // SAFETY: one writable byte.
            let n = unsafe { libc::recv(fd, (&mut byte as *mut u8).cast(), 1, libc::MSG_PEEK) };
            if n < 0 && last_errno() == libc::EAGAIN {
                st.readable = false;
                return;
            }
            return end(st, done, -libc::ENOBUFS);
        };
        let slot = pool.slot_mut(id);
        // SAFETY: `slot` is a writable buffer of `slot.len()` bytes.
        let n = unsafe { libc::recv(fd, slot.as_mut_ptr().cast(), slot.len(), 0) };
        if n > 0 {
            pool.lend(id);
            done.push(Completion {
                token,
                res: i32::try_from(n).unwrap_or(i32::MAX),
                buf: Some(id),
                more: true,
            });
            continue;
        }
        pool.give_back(id);
        if n == 0 {
            return end(st, done, 0);
        }
        match last_errno() {
            libc::EAGAIN => {
                st.readable = false;
                return;
            }
            libc::EINTR if retries < EINTR_ROUNDS => retries += 1,
            errno => return end(st, done, -errno),
        }
    }
}

/// The receive pool: `count` buffers of `size` bytes.
struct Pool {
    data: Vec<u8>,
    size: usize,
    free: Vec<u16>,
    lent: Vec<bool>,
}

impl Pool {
    fn new(count: u16, size: usize) -> io::Result<Pool> {
        let len = usize::from(count)
            .checked_mul(size)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "receive pool too large"))?;
        Ok(Pool {
            data: vec![0; len],
            size,
            // Popped from the end: hand out low ids first.
            free: (0..count).rev().collect(),
            lent: vec![false; usize::from(count)],
        })
    }

    fn take(&mut self) -> Option<u16> {
        self.free.pop()
    }

    fn slot_mut(&mut self, id: u16) -> &mut [u8] {
        let start = usize::from(id) * self.size;
        self.data
            .get_mut(start..start + self.size)
            .unwrap_or_default()
    }

    fn lend(&mut self, id: u16) {
        if let Some(l) = self.lent.get_mut(usize::from(id)) {
            *l = true;
        }
    }

    /// A taken buffer that was not handed out goes back.
    fn give_back(&mut self, id: u16) {
        self.free.push(id);
    }

    fn is_lent(&self, id: u16) -> bool {
        self.lent.get(usize::from(id)).copied().unwrap_or(false)
    }

    fn recycle(&mut self, id: u16) {
        if let Some(l) = self.lent.get_mut(usize::from(id)) {
            if *l {
                *l = false;
                self.free.push(id);
            }
        }
    }

    fn get(&self, id: u16, len: usize) -> &[u8] {
        if !self.is_lent(id) {
            return &[];
        }
        let start = usize::from(id) * self.size;
        self.data
            .get(start..start + len.min(self.size))
            .unwrap_or_default()
    }
}

impl Driver for EpollDriver {
    const NAME: &'static str = "epoll";

    fn new(cfg: &DriverConfig) -> io::Result<Self> {
        if cfg.buffers == 0 || cfg.buffer_size == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "the receive pool needs at least 1 buffer of at least 1 byte",
            ));
        }
        Ok(EpollDriver {
            poll: Poll::new()?,
            events: Events::with_capacity(cfg.entries.clamp(1, 65536) as usize),
            fds: Vec::new(),
            ready: Vec::new(),
            ready_spare: Vec::new(),
            done: Vec::new(),
            pool: Pool::new(cfg.buffers, cfg.buffer_size)?,
            alarm: None,
            alarm_at: None,
        })
    }

    fn describe(&self) -> String {
        "edge-triggered, read until EAGAIN".to_string()
    }

    fn alarm(&mut self, now: Instant, after: Duration) -> bool {
        let at = now + after;
        if self.alarm_at.is_some_and(|a| a <= at) {
            return true;
        }
        let Some(fd) = self.alarm_fd() else {
            return false;
        };
        // A zero it_value disarms: at least a nanosecond.
        let spec = libc::itimerspec {
            it_interval: libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
            it_value: libc::timespec {
                tv_sec: after.as_secs().min(i64::MAX as u64) as libc::time_t,
                tv_nsec: libc::c_long::from(after.subsec_nanos().max(u32::from(after.is_zero()))),
            },
        };
        // SAFETY: `fd` is our timerfd; `spec` is a valid itimerspec and the
        // old value is not asked for.
        if unsafe { libc::timerfd_settime(fd, 0, &spec, std::ptr::null_mut()) } != 0 {
            return false;
        }
        self.alarm_at = Some(at);
        true
    }

    fn accept(&mut self, token: u64, listener: RawFd) {
        if self.start(token, listener) {
            if let Some(st) = self.state(listener) {
                st.accept = Some(token);
            }
        }
    }

    fn recv(&mut self, token: u64, fd: RawFd) {
        if self.start(token, fd) {
            if let Some(st) = self.state(fd) {
                // No read is forced: `readable` stays true from the last
                // event until a read sees EAGAIN, armed or not, so bytes that
                // came while unarmed are read at once.
                st.recv = Some(token);
            }
        }
    }

    unsafe fn recv_into(&mut self, token: u64, fd: RawFd, buf: *mut u8, len: usize) {
        let len = len.min(i32::MAX as usize);
        if self.start(token, fd) {
            if let Some(st) = self.state(fd) {
                st.recv_into = Some(PendingRecv { token, buf, len });
            }
        }
    }

    fn cancel_recv(&mut self, token: u64, fd: RawFd) {
        let Some(st) = self.state(fd) else {
            return;
        };
        if st.recv == Some(token) {
            st.recv = None;
            self.finish(token, -libc::ECANCELED);
        }
    }

    fn buffer(&self, id: u16, len: usize) -> &[u8] {
        self.pool.get(id, len)
    }

    fn recycle(&mut self, id: u16) {
        self.pool.recycle(id);
    }

    unsafe fn send(&mut self, token: u64, fd: RawFd, iov: *const libc::iovec, iovcnt: usize) {
        if self.start(token, fd) {
            if let Some(st) = self.state(fd) {
                st.send = Some(PendingSend { token, iov, iovcnt });
            }
        }
    }

    fn connect(&mut self, token: u64, fd: RawFd, addr: SocketAddr) {
        let raw = SockAddr::from(addr);
        // SAFETY: `raw` holds a valid socket address of `raw.len()` bytes.
        let rc = unsafe { libc::connect(fd, raw.as_ptr(), raw.len()) };
        let errno = if rc == 0 { 0 } else { last_errno() };
        match errno {
            0 => self.finish(token, 0),
            libc::EINPROGRESS | libc::EINTR => {
                // Registered after connect(): registering reports the state
                // it finds, so a connect that ended in between is not missed.
                if self.start(token, fd) {
                    if let Some(st) = self.state(fd) {
                        st.connect = Some(token);
                    }
                }
            }
            errno => self.finish(token, -errno),
        }
    }

    fn shutdown(&mut self, fd: RawFd) {
        // SAFETY: shutdown on any fd number is memory-safe; errors (ENOTCONN
        // after a failed connect) leave nothing to undo.
        unsafe { libc::shutdown(fd, libc::SHUT_RDWR) };
        if let Some(st) = self.state(fd) {
            st.readable = true;
            st.writable = true;
        }
        self.enqueue(fd);
    }

    fn close(&mut self, fd: RawFd) {
        if let Some(st) = usize::try_from(fd).ok().and_then(|i| self.fds.get_mut(i)) {
            if st.registered {
                let _ = self.poll.registry().deregister(&mut SourceFd(&fd));
            }
            *st = FdState::default();
        }
        // SAFETY: the caller owns `fd` and has no operation on it in flight.
        unsafe { libc::close(fd) };
    }

    fn wait(&mut self, timeout: Option<Duration>, out: &mut Vec<Completion>) -> io::Result<()> {
        let deadline = timeout.map(|t| Instant::now() + t);
        let start = out.len();
        // Bounded by the deadline; without one, by the first completion.
        loop {
            let mut ready = mem::replace(&mut self.ready, mem::take(&mut self.ready_spare));
            for &fd in &ready {
                self.progress(fd);
            }
            ready.clear();
            self.ready_spare = ready;

            let poll_for = if self.done.is_empty() {
                deadline.map(|d| d.saturating_duration_since(Instant::now()))
            } else {
                Some(Duration::ZERO)
            };
            match self.poll.poll(&mut self.events, poll_for) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
            let mut woken = mem::take(&mut self.ready_spare);
            let mut rang = false;
            for ev in self.events.iter() {
                if ev.token() == ALARM {
                    rang = true;
                    continue;
                }
                let Ok(fd) = RawFd::try_from(ev.token().0) else {
                    continue;
                };
                let Some(st) = self.fds.get_mut(ev.token().0) else {
                    continue;
                };
                // Errors and hang-ups wake both sides: the syscalls report them.
                let broken = ev.is_error() || ev.is_read_closed() || ev.is_write_closed();
                if ev.is_readable() || broken {
                    st.readable = true;
                }
                if ev.is_writable() || broken {
                    st.writable = true;
                }
                woken.push(fd);
            }
            for &fd in &woken {
                self.progress(fd);
            }
            woken.clear();
            self.ready_spare = woken;

            out.append(&mut self.done);
            if rang {
                // The caller asked to be woken now, with or without news.
                self.alarm_rang();
                return Ok(());
            }
            if out.len() > start || poll_for == Some(Duration::ZERO) {
                return Ok(());
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Ok(());
            }
        }
    }
}
