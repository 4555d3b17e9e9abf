//! The completion-shaped I/O driver under the per-core engine: start socket
//! operations with a caller's token, get `Completion`s back, the way io_uring
//! delivers CQEs. `uring` implements it on the `io-uring` crate; `epoll`
//! emulates the same semantics on mio, so the event loop above is written once.
//!
//! Owns: one ring (or epoll instance) per core, its provided-buffer pool and
//! the kernel-facing memory of operations in flight (message headers, socket
//! addresses). Imports nothing from the engine above it.

mod epoll;
mod uring;

use std::io;
use std::net::SocketAddr;
use std::os::fd::RawFd;
use std::time::{Duration, Instant};

pub(crate) use self::epoll::EpollDriver;
pub(crate) use self::uring::UringDriver;

/// One finished operation, as an io_uring CQE is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Completion {
    /// The caller's token given when the operation was started.
    pub token: u64,
    /// `>= 0`: the result (bytes, a new fd, 0); `< 0`: `-errno`.
    pub res: i32,
    /// recv: the id of the provided buffer that holds `res` bytes.
    pub buf: Option<u16>,
    /// The multishot operation is still armed (false: it ended; re-arm if
    /// still wanted).
    pub more: bool,
}

/// Sizes of one driver instance.
#[derive(Clone, Copy, Debug)]
pub(crate) struct DriverConfig {
    /// Submission queue entries (io_uring) or events per poll (epoll).
    pub entries: u32,
    /// Provided buffers in the receive pool (io_uring allows at most 32768).
    pub buffers: u16,
    /// Bytes per provided buffer.
    pub buffer_size: usize,
}

/// A completion-based I/O backend for one core's thread.
///
/// Every operation started with a token ends in exactly one completion with
/// `more == false` carrying that token (multishot ones may deliver
/// `more == true` completions before it), unless the driver is dropped first.
pub(crate) trait Driver: Sized {
    /// The backend's name for logs: "io_uring" or "epoll".
    const NAME: &'static str;

    /// Set the backend up; called on the core's own thread.
    fn new(cfg: &DriverConfig) -> io::Result<Self>;

    /// Which setup flags were accepted, for the startup log line.
    fn describe(&self) -> String;

    /// Arm a multishot accept on a nonblocking listening socket. Each
    /// completion: `res` = a new connected fd (O_NONBLOCK|O_CLOEXEC set;
    /// TCP_NODELAY is the caller's), `more` = still armed. It ends
    /// (`more == false`) on an error, on `shutdown(listener)` (which also
    /// stops listening: the way to stop accepting) and on io_uring when the
    /// completion queue overflowed; that last completion may still carry a
    /// connection. Re-arm if still wanted.
    fn accept(&mut self, token: u64, listener: RawFd);

    /// Arm a multishot receive into the provided-buffer pool. Each completion:
    /// `res > 0` bytes in `buf`, `res == 0` end of stream, `res < 0` an error
    /// (`-ENOBUFS` when the pool ran dry). `more == false`: the receive ended;
    /// re-arm it (after recycling buffers) to get more bytes.
    fn recv(&mut self, token: u64, fd: RawFd);

    /// Receive once into the caller's memory: `res > 0` bytes written at
    /// `buf`, `0` end of stream, `< 0` an error; one completion
    /// (`more == false`, no provided buffer). The bytes land where the
    /// caller parses them, without the copy out of a provided buffer.
    ///
    /// # Safety
    /// `buf[..len]` stays valid, unmoved and unread by the caller until
    /// this operation's completion arrives (or the driver is dropped); at
    /// most one receive is in flight per fd.
    unsafe fn recv_into(&mut self, token: u64, fd: RawFd, buf: *mut u8, len: usize);

    /// Stop an armed multishot receive (backpressure). Its last completion
    /// (`more == false`, `res` may be `-ECANCELED`) still arrives; afterwards
    /// `recv` may arm it again.
    fn cancel_recv(&mut self, token: u64, fd: RawFd);

    /// The bytes of a provided buffer named by a completion (empty if `id` is
    /// not a buffer currently lent to the caller).
    fn buffer(&self, id: u16, len: usize) -> &[u8];

    /// Give a provided buffer back to the pool, as soon as its bytes are copied.
    fn recycle(&mut self, id: u16);

    /// Vectored send with MSG_NOSIGNAL. `res` = bytes sent (may be fewer than
    /// asked: the caller resumes) or `-errno` (`-EMSGSIZE` beyond IOV_MAX,
    /// 1024, iovecs).
    ///
    /// # Safety
    /// `iov[..iovcnt]` and the memory it points to stay valid and unmoved until
    /// this operation's completion arrives (or the driver is dropped); at most
    /// one send is in flight per fd.
    unsafe fn send(&mut self, token: u64, fd: RawFd, iov: *const libc::iovec, iovcnt: usize);

    /// Connect a nonblocking TCP socket the caller created. `res` = 0 or `-errno`.
    fn connect(&mut self, token: u64, fd: RawFd, addr: SocketAddr);

    /// Fail every operation on `fd` soon: shutdown(SHUT_RDWR). An armed recv
    /// ends with 0 or an error, a pending send fails. Their completions still
    /// arrive; only then may the caller `close`.
    fn shutdown(&mut self, fd: RawFd);

    /// Forget `fd` and close it; only when no operation on it is in flight.
    fn close(&mut self, fd: RawFd);

    /// Like [`Driver::shutdown`], for a connection given up with requests
    /// unanswered: `SO_LINGER {1, 0}` first, so that its `close` sends RST
    /// and the kernel drops whatever it still holds to send. A graceful
    /// close would keep retransmitting those requests for seconds, and one
    /// that reaches a server after it is back in service applies an old
    /// write last.
    fn abort(&mut self, fd: RawFd) {
        set_linger_zero(fd);
        self.shutdown(fd);
    }

    /// Wake the loop `after` from `now` at the latest, without shortening
    /// every wait until then: `false` when the driver cannot (the caller
    /// then passes `after` as its wait's timeout). On io_uring an armed
    /// timeout operation, on epoll a timerfd in the set; either stays armed
    /// across waits, and a wait it wakes returns early with nothing. A wait with a
    /// timeout shorter than the kernel's next tick programs the timer
    /// hardware twice per sleep, which in a VM is two exits (measured: 20 %
    /// more CPU per request in the load bench's (a) with a hedge timer per
    /// get; the runs and their commands are in docs/benchmarks.md,
    /// 2026-12-07 20:18 UTC).
    fn alarm(&mut self, now: Instant, after: Duration) -> bool;

    /// Whether a non-blocking [`Driver::wait`] may find completions: `false`
    /// only when the driver can tell cheaply (without a syscall) that none
    /// are ready. Lets the loop skip a second look that would find nothing.
    fn maybe_ready(&mut self) -> bool {
        true
    }

    /// Submit everything queued since the last call, wait until at least one
    /// completion is ready or `timeout` passed (`None`: no limit;
    /// `Some(ZERO)`: don't block) and append the ready completions to `out`.
    /// EINTR is not an error; it may return early with nothing. On io_uring
    /// this is one io_uring_enter; a wake-up that brought only the driver's
    /// own completions waits again without a timeout, and with one returns
    /// early with nothing.
    fn wait(&mut self, timeout: Option<Duration>, out: &mut Vec<Completion>) -> io::Result<()>;
}

/// Whether io_uring, with everything the driver needs (a provided-buffer
/// ring), can be set up here: seccomp and `kernel.io_uring_disabled` refuse it.
pub(crate) fn uring_available() -> io::Result<()> {
    let cfg = DriverConfig {
        entries: 8,
        buffers: 1,
        buffer_size: 64,
    };
    UringDriver::new(&cfg).map(drop)
}

/// `SO_LINGER {1, 0}` on `fd`: its close resets the connection instead of
/// sending what is queued. An error (not a socket, already closed) leaves
/// nothing to undo.
pub(crate) fn set_linger_zero(fd: RawFd) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt reads `size_of::<linger>()` bytes from a live local.
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            std::ptr::addr_of!(linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
}

/// The positive errno of an `io::Error` (EIO when it carries none).
fn errno_of(e: &io::Error) -> i32 {
    e.raw_os_error().unwrap_or(libc::EIO)
}

/// The `errno` of the last failed libc call.
fn last_errno() -> i32 {
    errno_of(&io::Error::last_os_error())
}

#[cfg(test)]
mod tests;
