//! The io_uring driver on the `io-uring` crate: multishot accept, multishot
//! recv on a provided-buffer ring, SendMsg with MSG_NOSIGNAL, Connect and
//! AsyncCancel, everything queued in one turn submitted by one
//! `io_uring_enter` in `wait`.
//!
//! Every operation in flight has an entry in a slab; its user_data is the
//! entry's key with a sequence number above it, so that a cancel aimed at an
//! ended operation can never hit a newer one that reuses the key. The
//! caller's token lives in the entry. Internal operations (cancels) carry
//! `INTERNAL` and never reach the caller.

use std::io;
use std::mem::ManuallyDrop;
use std::net::SocketAddr;
use std::os::fd::RawFd;
use std::ptr;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

use io_uring::types::{BufRingEntry, CancelBuilder, Fd, SubmitArgs, Timespec};
use io_uring::{cqueue, opcode, squeue, CompletionQueue, EnterFlags, IoUring, SubmissionQueue};
use io_uring::{Builder, Submitter};
use slab::Slab;

use socket2::SockAddr;

use super::{Completion, Driver, DriverConfig};

/// user_data of operations whose completions the caller never sees.
const INTERNAL: u64 = u64::MAX;
/// The provided-buffer group of the receive pool.
const BGID: u16 = 0;
/// No recv armed on this fd.
const NONE: u32 = u32::MAX;
/// Rounds of submit-or-reap before giving up on a full submission queue.
const PUSH_ROUNDS: usize = 8;
/// Rounds of flushing an overflowed completion queue per reap.
const OVERFLOW_ROUNDS: usize = 64;

/// One operation the kernel may still be working on.
struct Op {
    seq: u32,
    token: u64,
    kind: InFlight,
}

/// What an operation is, with the memory the kernel reads until it ends.
enum InFlight {
    Accept,
    Recv {
        fd: RawFd,
    },
    /// A one-shot receive into the caller's memory.
    RecvInto,
    /// A vectored send's header (none for a one-buffer send).
    Send {
        msg: Option<Box<libc::msghdr>>,
    },
    Connect {
        _addr: Box<SockAddr>,
    },
    /// A wake-up ([`Driver::alarm`]); its timespec is `alarm_ts[slot]`,
    /// which the kernel reads when the entry is submitted.
    Alarm {
        slot: u8,
        at: Instant,
    },
}

/// Wake-ups armed at once at most; past them, the caller shortens its wait.
const MAX_ALARMS: usize = 4;

/// The first flag set. With `DEFER_TASKRUN`, completions wait as task work
/// until the loop enters the kernel; `TASKRUN_FLAG` makes the kernel say so
/// in the shared ring (`IORING_SQ_TASKRUN`), which lets
/// [`Driver::maybe_ready`] answer without a syscall.
const TASKRUN_FLAGS: &str = "SINGLE_ISSUER|DEFER_TASKRUN|COOP_TASKRUN|TASKRUN_FLAG|SUBMIT_ALL";

/// Adds one set of setup flags to a builder.
type SetFlags = fn(&mut Builder);

/// The setup flag sets tried in order; a kernel that refuses one with EINVAL
/// gets the next, plainer one.
const FLAG_SETS: [(&str, SetFlags); 4] = [
    (TASKRUN_FLAGS, |b| {
        b.setup_single_issuer()
            .setup_defer_taskrun()
            .setup_coop_taskrun()
            .setup_taskrun_flag()
            .setup_submit_all();
    }),
    ("COOP_TASKRUN|SUBMIT_ALL", |b| {
        b.setup_coop_taskrun().setup_submit_all();
    }),
    ("SUBMIT_ALL", |b| {
        b.setup_submit_all();
    }),
    ("no setup flags", |_| {}),
];

/// One core's io_uring with its buffer ring.
pub(crate) struct UringDriver {
    // The queues and the submitter borrow the boxed ring behind `ring`: they
    // are dropped by hand, before it (see `Drop`).
    sq: ManuallyDrop<SubmissionQueue<'static>>,
    cq: ManuallyDrop<CompletionQueue<'static>>,
    submitter: ManuallyDrop<Submitter<'static>>,
    ring: *mut IoUring,
    /// Provided receive buffers; unmapped only after the ring is gone.
    bufs: ManuallyDrop<BufRing>,
    ops: Slab<Op>,
    seq: u32,
    /// Slab key of the armed recv of each fd (`NONE` if none).
    recv_of_fd: Vec<u32>,
    /// Completions reaped while making room in the submission queue.
    pending: Vec<Completion>,
    /// Message headers of finished sends, kept for the next ones. Boxed:
    /// the kernel reads a header at its address while the send is queued.
    #[allow(clippy::vec_box)]
    spare_msgs: Vec<Box<libc::msghdr>>,
    /// The ring has `TASKRUN_FLAG`: the kernel flags pending completions.
    flags_pending: bool,
    /// The earliest wake-up armed and not yet come.
    alarm_at: Option<Instant>,
    /// The armed wake-ups' timespecs (boxed: their address must not move
    /// until the kernel has read them), and which slots are taken (a bit
    /// each): arming one allocates nothing.
    alarm_ts: Box<[Timespec; MAX_ALARMS]>,
    alarm_taken: u8,
    describe: String,
}

impl UringDriver {
    /// A fresh user_data for an operation, and its slab entry.
    fn start(&mut self, token: u64, kind: InFlight) -> u64 {
        self.seq = self.seq.wrapping_add(1);
        let key = self.ops.insert(Op {
            seq: self.seq,
            token,
            kind,
        });
        (u64::from(self.seq) << 32) | key as u64
    }

    /// Queue an entry, making room first if the submission queue is full. An
    /// entry that still cannot be queued completes at once with `-EBUSY`.
    fn push(&mut self, sqe: squeue::Entry) {
        for _ in 0..PUSH_ROUNDS {
            // SAFETY: the memory each entry points to (msghdr, sockaddr, the
            // caller's iovecs, the buffer ring) lives in `self.ops`, in the
            // caller (per `send`'s contract) or in `self.bufs` until the
            // entry's completion is reaped or the ring is gone.
            if unsafe { self.sq.push(&sqe) }.is_ok() {
                return;
            }
            // Full: hand what is queued to the kernel (and collect whatever
            // completed, in case the kernel waits for room in the CQ).
            let _ = self.enter(0, None);
            self.reap_into_pending();
        }
        if let Some(c) = self.complete(sqe.get_user_data(), -libc::EBUSY, 0) {
            self.pending.push(c);
        }
    }

    /// One io_uring_enter: submit what is queued, run deferred completions,
    /// and wait for `want` of them (at most `timeout`).
    fn enter(&mut self, want: usize, timeout: Option<Duration>) -> io::Result<()> {
        self.sq.sync();
        let res = match (want, timeout) {
            (0, _) => {
                let to_submit = self.sq.len() as u32;
                // SAFETY: a plain io_uring_enter with no argument struct.
                unsafe {
                    self.submitter.enter::<libc::sigset_t>(
                        to_submit,
                        0,
                        EnterFlags::GETEVENTS.bits(),
                        None,
                    )
                }
            }
            (_, None) => self.submitter.submit_and_wait(want),
            (_, Some(t)) => {
                let ts = Timespec::from(t);
                let args = SubmitArgs::new().timespec(&ts);
                self.submitter.submit_with_args(want, &args)
            }
        };
        self.sq.sync();
        match res {
            Ok(_) => Ok(()),
            Err(e) => match e.raw_os_error() {
                // Timed out, interrupted, or the CQ needs reaping first:
                // none of these is a failure of the ring.
                Some(libc::ETIME | libc::EINTR | libc::EBUSY | libc::EAGAIN) => Ok(()),
                _ => Err(e),
            },
        }
    }

    /// Translate every completion in the CQ, flushing an overflowed CQ.
    fn reap(&mut self, out: &mut Vec<Completion>) {
        for _ in 0..OVERFLOW_ROUNDS {
            self.cq.sync();
            while let Some(cqe) = self.cq.next() {
                if let Some(c) = self.complete(cqe.user_data(), cqe.result(), cqe.flags()) {
                    out.push(c);
                }
            }
            self.cq.sync();
            // The kernel kept completions it had no room for: enter to move
            // them into the (now empty) CQ.
            if !self.sq.cq_overflow() {
                break;
            }
            let _ = self.enter(0, None);
        }
    }

    fn reap_into_pending(&mut self) {
        let mut pending = std::mem::take(&mut self.pending);
        self.reap(&mut pending);
        self.pending = pending;
    }

    /// The caller's view of one CQE; `None` for internal ones.
    fn complete(&mut self, user_data: u64, mut res: i32, flags: u32) -> Option<Completion> {
        if user_data == INTERNAL {
            return None;
        }
        let key = (user_data & u64::from(u32::MAX)) as usize;
        let seq = (user_data >> 32) as u32;
        let op = self.ops.get(key)?;
        if op.seq != seq {
            return None;
        }
        let token = op.token;
        let mut more = cqueue::more(flags);
        let mut buf = cqueue::buffer_select(flags);
        match op.kind {
            InFlight::Accept => {}
            InFlight::Recv { fd } => {
                if res > 0 {
                    match buf {
                        Some(id) if self.bufs.lend(id) => {}
                        // Bytes without a buffer of ours cannot be handed out.
                        _ => {
                            res = -libc::EIO;
                            buf = None;
                        }
                    }
                } else if let Some(id) = buf.take() {
                    // A buffer picked for no bytes goes straight back.
                    self.bufs.put(id);
                }
                if !more {
                    if let Some(slot) = usize::try_from(fd)
                        .ok()
                        .and_then(|i| self.recv_of_fd.get_mut(i))
                    {
                        if *slot == key as u32 {
                            *slot = NONE;
                        }
                    }
                }
            }
            InFlight::Send { .. } | InFlight::Connect { .. } | InFlight::RecvInto => more = false,
            InFlight::Alarm { slot, at } => {
                // The driver's own: it only woke the loop.
                self.ops.remove(key);
                self.alarm_taken &= !(1 << slot);
                if self.alarm_at == Some(at) {
                    self.alarm_at = None;
                }
                return None;
            }
        }
        if !more {
            if let InFlight::Send { msg: Some(msg) } = self.ops.remove(key).kind {
                self.spare_msgs.push(msg);
            }
        }
        Some(Completion {
            token,
            res,
            buf,
            more,
        })
    }

    /// Complete an operation at once, without the kernel (bad arguments).
    fn fail_now(&mut self, token: u64, errno: i32) {
        self.pending.push(Completion {
            token,
            res: -errno,
            buf: None,
            more: false,
        });
    }
}

impl Driver for UringDriver {
    const NAME: &'static str = "io_uring";

    fn new(cfg: &DriverConfig) -> io::Result<Self> {
        if cfg.buffers == 0 || cfg.buffers > 32768 || cfg.buffer_size == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "the receive pool needs 1..=32768 buffers of at least 1 byte",
            ));
        }
        let buffer_len = u32::try_from(cfg.buffer_size).map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                "receive buffers are 4 GiB at most",
            )
        })?;
        // Mapped first: nothing below may fail while the ring is half set up.
        let bufs = BufRing::new(cfg.buffers, buffer_len)?;
        let entries = cfg.entries.clamp(1, 32768);
        let mut last = None;
        let mut built = None;
        for (name, set) in FLAG_SETS {
            let mut b = IoUring::builder();
            b.setup_cqsize(entries.saturating_mul(4)).setup_clamp();
            set(&mut b);
            match b.build(entries) {
                Ok(ring) => {
                    built = Some((name, ring));
                    break;
                }
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        let Some((flags, ring)) = built else {
            return Err(last.unwrap_or_else(|| io::Error::from_raw_os_error(libc::EINVAL)));
        };
        let (sq_entries, cq_entries) = (ring.params().sq_entries(), ring.params().cq_entries());
        let ring: *mut IoUring = Box::into_raw(Box::new(ring));
        // SAFETY: the box is only freed in `Drop`, after the queues and the
        // submitter borrowed from it here are dropped; nothing else touches it.
        let (mut submitter, sq, cq) = unsafe { (*ring).split() };
        let registered = submitter.register_ring_fd().is_ok();
        let mut driver = UringDriver {
            sq: ManuallyDrop::new(sq),
            cq: ManuallyDrop::new(cq),
            submitter: ManuallyDrop::new(submitter),
            ring,
            bufs: ManuallyDrop::new(bufs),
            ops: Slab::with_capacity(entries as usize),
            seq: 0,
            recv_of_fd: Vec::new(),
            pending: Vec::new(),
            spare_msgs: Vec::new(),
            flags_pending: flags == TASKRUN_FLAGS,
            alarm_at: None,
            alarm_ts: Box::new([Timespec::new(); MAX_ALARMS]),
            alarm_taken: 0,
            describe: format!(
                "{flags}, sq {sq_entries}, cq {cq_entries}, {} ring fd",
                if registered {
                    "registered"
                } else {
                    "unregistered"
                }
            ),
        };
        let (addr, ring_entries) = driver.bufs.ring_addr();
        // SAFETY: the buffer ring memory is page-aligned, holds `ring_entries`
        // entries and stays mapped until after the io_uring is destroyed
        // (`Drop` drops `bufs` last, and leaks it if operations remain).
        unsafe {
            driver
                .submitter
                .register_buf_ring_with_flags(addr, ring_entries, BGID, 0)?;
        }
        driver.bufs.fill();
        Ok(driver)
    }

    fn describe(&self) -> String {
        self.describe.clone()
    }

    fn accept(&mut self, token: u64, listener: RawFd) {
        let ud = self.start(token, InFlight::Accept);
        let sqe = opcode::AcceptMulti::new(Fd(listener))
            .flags(libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC)
            .build()
            .user_data(ud);
        self.push(sqe);
    }

    fn recv(&mut self, token: u64, fd: RawFd) {
        let Ok(index) = usize::try_from(fd) else {
            return self.fail_now(token, libc::EBADF);
        };
        let ud = self.start(token, InFlight::Recv { fd });
        if self.recv_of_fd.len() <= index {
            self.recv_of_fd.resize(index + 1, NONE);
        }
        self.recv_of_fd[index] = ud as u32;
        let sqe = opcode::RecvMulti::new(Fd(fd), BGID).build().user_data(ud);
        self.push(sqe);
    }

    unsafe fn recv_into(&mut self, token: u64, fd: RawFd, buf: *mut u8, len: usize) {
        let len = u32::try_from(len).unwrap_or(u32::MAX);
        let ud = self.start(token, InFlight::RecvInto);
        // The caller keeps `buf[..len]` valid until the completion.
        let sqe = opcode::Recv::new(Fd(fd), buf, len).build().user_data(ud);
        self.push(sqe);
    }

    fn cancel_recv(&mut self, token: u64, fd: RawFd) {
        let Some(&key) = usize::try_from(fd)
            .ok()
            .and_then(|i| self.recv_of_fd.get(i))
            .filter(|&&k| k != NONE)
        else {
            return;
        };
        let Some(op) = self.ops.get(key as usize).filter(|op| op.token == token) else {
            return;
        };
        let target = (u64::from(op.seq) << 32) | u64::from(key);
        let sqe = opcode::AsyncCancel::new(target).build().user_data(INTERNAL);
        self.push(sqe);
    }

    fn buffer(&self, id: u16, len: usize) -> &[u8] {
        self.bufs.get(id, len)
    }

    fn recycle(&mut self, id: u16) {
        if self.bufs.is_lent(id) {
            self.bufs.put(id);
        }
    }

    unsafe fn send(&mut self, token: u64, fd: RawFd, iov: *const libc::iovec, iovcnt: usize) {
        // SAFETY: the caller passes `iovcnt` valid iovecs at `iov`.
        let one = (iovcnt == 1).then(|| unsafe { *iov });
        if let Some(one) = one.filter(|v| u32::try_from(v.iov_len).is_ok()) {
            // One buffer: a plain send, without a message header to import;
            // the caller keeps its memory valid until the completion.
            let ud = self.start(token, InFlight::Send { msg: None });
            let sqe = opcode::Send::new(Fd(fd), one.iov_base as *const u8, one.iov_len as u32)
                .flags(libc::MSG_NOSIGNAL)
                .build()
                .user_data(ud);
            self.push(sqe);
            return;
        }
        let mut msg = match self.spare_msgs.pop() {
            Some(m) => m,
            // SAFETY: msghdr is plain old data; all zeroes is an empty header.
            None => Box::new(unsafe { std::mem::zeroed::<libc::msghdr>() }),
        };
        msg.msg_iov = iov as *mut libc::iovec;
        msg.msg_iovlen = iovcnt as _;
        let hdr: *const libc::msghdr = &*msg;
        let ud = self.start(token, InFlight::Send { msg: Some(msg) });
        let sqe = opcode::SendMsg::new(Fd(fd), hdr)
            .flags(libc::MSG_NOSIGNAL as u32)
            .build()
            .user_data(ud);
        self.push(sqe);
    }

    fn connect(&mut self, token: u64, fd: RawFd, addr: SocketAddr) {
        let addr = Box::new(SockAddr::from(addr));
        let (ptr, len) = (addr.as_ptr(), addr.len());
        let ud = self.start(token, InFlight::Connect { _addr: addr });
        let sqe = opcode::Connect::new(Fd(fd), ptr, len).build().user_data(ud);
        self.push(sqe);
    }

    fn shutdown(&mut self, fd: RawFd) {
        // SAFETY: shutdown on any fd number is memory-safe; errors (ENOTCONN
        // after a failed connect) leave nothing to undo.
        unsafe { libc::shutdown(fd, libc::SHUT_RDWR) };
    }

    fn close(&mut self, fd: RawFd) {
        if let Some(slot) = usize::try_from(fd)
            .ok()
            .and_then(|i| self.recv_of_fd.get_mut(i))
        {
            *slot = NONE;
        }
        // SAFETY: the caller owns `fd` and has no operation on it in flight.
        unsafe { libc::close(fd) };
    }

    fn alarm(&mut self, now: Instant, after: Duration) -> bool {
        let at = now + after;
        if self.alarm_at.is_some_and(|a| a <= at) {
            return true;
        }
        let Some(slot) = (0..MAX_ALARMS as u8).find(|i| self.alarm_taken & (1 << i) == 0) else {
            return false;
        };
        let Some(ts) = self.alarm_ts.get_mut(usize::from(slot)) else {
            return false;
        };
        *ts = Timespec::from(after);
        let sqe = opcode::Timeout::new(ts).build();
        let ud = self.start(INTERNAL, InFlight::Alarm { slot, at });
        self.push(sqe.user_data(ud));
        self.alarm_taken |= 1 << slot;
        self.alarm_at = Some(at);
        true
    }

    fn maybe_ready(&mut self) -> bool {
        if !self.flags_pending || !self.pending.is_empty() {
            return true;
        }
        self.cq.sync();
        !self.cq.is_empty() || self.sq.taskrun()
    }

    fn wait(&mut self, timeout: Option<Duration>, out: &mut Vec<Completion>) -> io::Result<()> {
        let start = out.len();
        out.append(&mut self.pending);
        // Without a timeout, bounded by the first completion for the caller;
        // with one, a single wait (a wake-up that brought only the driver's
        // own completions returns early with nothing, as EINTR does).
        loop {
            self.cq.sync();
            let want =
                if out.len() > start || !self.cq.is_empty() || timeout == Some(Duration::ZERO) {
                    0
                } else {
                    1
                };
            self.enter(want, timeout)?;
            self.reap(out);
            if out.len() > start || want == 0 || timeout.is_some() {
                return Ok(());
            }
        }
    }
}

impl Drop for UringDriver {
    fn drop(&mut self) {
        if !self.ops.is_empty() {
            // Cancel whatever is still armed so the kernel lets go of the
            // listener, the sockets and our buffers, and wait (bounded) for
            // the last completions.
            let sqe = opcode::AsyncCancel2::new(CancelBuilder::any())
                .build()
                .user_data(INTERNAL);
            // SAFETY: a cancel points at no memory.
            if unsafe { self.sq.push(&sqe) }.is_err() {
                let _ = self.enter(0, None);
                // SAFETY: as above.
                let _ = unsafe { self.sq.push(&sqe) };
            }
            let mut sink = Vec::new();
            for _ in 0..100 {
                if self.ops.is_empty() {
                    break;
                }
                if self.enter(1, Some(Duration::from_millis(10))).is_err() {
                    break;
                }
                self.reap(&mut sink);
                sink.clear();
            }
        }
        let idle = self.ops.is_empty();
        // SAFETY: the queues and the submitter borrow `*self.ring`; they are
        // dropped exactly once, here, before the ring is freed, and nothing
        // uses them afterwards.
        unsafe {
            ManuallyDrop::drop(&mut self.sq);
            ManuallyDrop::drop(&mut self.cq);
            ManuallyDrop::drop(&mut self.submitter);
            drop(Box::from_raw(self.ring));
        }
        if idle {
            // SAFETY: dropped once; the ring that wrote into it is gone.
            unsafe { ManuallyDrop::drop(&mut self.bufs) };
        }
        // Otherwise an operation the kernel never finished may still write
        // into the buffers: leaking them is the only safe end.
    }
}

/// The provided-buffer ring: `count` buffers of `size` bytes and the ring of
/// entries that hands them to the kernel, both in memory mapped here.
struct BufRing {
    ring: *mut BufRingEntry,
    ring_len: usize,
    entries: u16,
    tail: u16,
    data: *mut u8,
    data_len: usize,
    count: u16,
    size: u32,
    /// Which buffers the caller holds (handed out, not yet recycled).
    lent: Vec<bool>,
}

impl BufRing {
    fn new(count: u16, size: u32) -> io::Result<BufRing> {
        let entries = count.next_power_of_two();
        let ring_len = usize::from(entries) * std::mem::size_of::<BufRingEntry>();
        let data_len = usize::from(count)
            .checked_mul(size as usize)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "receive pool too large"))?;
        let ring = map(ring_len)?;
        let data = match map(data_len) {
            Ok(d) => d,
            Err(e) => {
                // SAFETY: `ring` was mapped above with this length.
                unsafe { libc::munmap(ring.cast(), ring_len) };
                return Err(e);
            }
        };
        Ok(BufRing {
            ring: ring.cast(),
            ring_len,
            entries,
            tail: 0,
            data,
            data_len,
            count,
            size,
            lent: vec![false; usize::from(count)],
        })
    }

    fn ring_addr(&self) -> (u64, u16) {
        (self.ring as u64, self.entries)
    }

    /// Hand every buffer to the kernel.
    fn fill(&mut self) {
        for id in 0..self.count {
            self.put(id);
        }
    }

    /// Hand buffer `id` to the kernel (it must not be lent or in the ring).
    fn put(&mut self, id: u16) {
        if id >= self.count {
            return;
        }
        self.lent[usize::from(id)] = false;
        let index = usize::from(self.tail & (self.entries - 1));
        // SAFETY: `index < entries`, inside the mapped ring; the kernel reads
        // entries only up to the published tail, which this one is past.
        // Only the three fields are set: entry 0's last field is the tail.
        unsafe {
            let entry = &mut *self.ring.add(index);
            entry.set_addr(self.data.add(usize::from(id) * self.size as usize) as u64);
            entry.set_len(self.size);
            entry.set_bid(id);
        }
        self.tail = self.tail.wrapping_add(1);
        // SAFETY: the ring base is page-aligned and its entries initialised;
        // the tail is a u16 the kernel reads with acquire semantics.
        unsafe {
            let tail = BufRingEntry::tail(self.ring) as *const AtomicU16;
            (*tail).store(self.tail, Ordering::Release);
        }
    }

    /// Mark `id` as the caller's; false if it is no buffer of ours or
    /// already lent.
    fn lend(&mut self, id: u16) -> bool {
        match self.lent.get_mut(usize::from(id)) {
            Some(l) if !*l => {
                *l = true;
                true
            }
            _ => false,
        }
    }

    fn is_lent(&self, id: u16) -> bool {
        self.lent.get(usize::from(id)).copied().unwrap_or(false)
    }

    fn get(&self, id: u16, len: usize) -> &[u8] {
        if !self.is_lent(id) {
            return &[];
        }
        let len = len.min(self.size as usize);
        // SAFETY: `id < count` (it is lent), so the range lies inside the
        // mapping; the kernel does not write a lent buffer until it is put
        // back, which needs `&mut self`.
        unsafe {
            std::slice::from_raw_parts(self.data.add(usize::from(id) * self.size as usize), len)
        }
    }
}

impl Drop for BufRing {
    fn drop(&mut self) {
        // SAFETY: both regions were mapped in `new` with these lengths and are
        // unmapped once.
        unsafe {
            libc::munmap(self.ring.cast(), self.ring_len);
            libc::munmap(self.data.cast(), self.data_len);
        }
    }
}

/// Anonymous private page-aligned memory.
fn map(len: usize) -> io::Result<*mut u8> {
    // SAFETY: a fresh anonymous mapping touches no existing memory.
    let p = unsafe {
        libc::mmap(
            ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    Ok(p.cast())
}
