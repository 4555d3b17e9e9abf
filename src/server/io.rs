//! The seam between the generic proxy shell and an I/O backend.
//!
//! Both backends use owned buffers (io_uring's model: the kernel owns the
//! buffer while an operation is in flight), so the code above this seam is
//! written once and runs on either.

use std::future::Future;
use std::io;
use std::net::SocketAddr;

use std::collections::VecDeque;

use bytes::{Bytes, BytesMut};

use super::core::{advance, IOV_MAX};

/// A connected byte stream driven by one runtime thread.
pub(crate) trait Stream: 'static {
    /// Read into the spare capacity of `buf`, appending. The caller reserves
    /// capacity first; `Ok(0)` means end of stream.
    fn read(&self, buf: BytesMut) -> impl Future<Output = (io::Result<usize>, BytesMut)>;

    /// Write `bufs` (at most IOV_MAX of them) with one vectored write; may be partial.
    fn writev(&self, bufs: Vec<Bytes>) -> impl Future<Output = (io::Result<usize>, Vec<Bytes>)>;

    /// Shut both directions down, failing any operation in flight.
    fn shutdown(&self);
}

/// A listening socket of a backend.
pub(crate) trait Listener: 'static {
    /// The accepted stream type.
    type Conn: Stream;

    /// Accept one connection.
    fn accept(&self) -> impl Future<Output = io::Result<Self::Conn>>;
}

/// An I/O backend: how to run a core and how to make sockets on it.
pub(crate) trait Backend: 'static {
    /// Upstream (and client) TCP streams.
    type Tcp: Stream;
    /// TCP listener.
    type TcpListener: Listener;
    /// Unix socket listener.
    type UnixListener: Listener;

    /// Shown by `stats` and in logs.
    const NAME: &'static str;

    /// Connect to a server, with TCP_NODELAY set.
    fn connect(addr: SocketAddr) -> impl Future<Output = io::Result<Self::Tcp>>;

    /// Wrap a bound std listener (the caller set SO_REUSEPORT and non-blocking mode).
    fn tcp_listener(l: std::net::TcpListener) -> io::Result<Self::TcpListener>;

    /// Wrap a bound std unix listener.
    fn unix_listener(l: std::os::unix::net::UnixListener) -> io::Result<Self::UnixListener>;

    /// Run `fut` to completion on a new single-threaded runtime on this thread.
    fn block_on<F: Future>(fut: F) -> io::Result<F::Output>;
}

/// Write every queued buffer: at most IOV_MAX per `writev`, resuming a
/// partial write at the exact byte where it stopped, so nothing unsent is
/// ever dropped as sent.
pub(crate) async fn write_all<S: Stream>(
    stream: &S,
    out: &mut VecDeque<Bytes>,
    batch: &mut Vec<Bytes>,
) -> Result<usize, ()> {
    let mut total = 0;
    while !out.is_empty() {
        let mut b = std::mem::take(batch);
        b.clear();
        b.extend(out.iter().take(IOV_MAX).cloned());
        let (res, mut b) = stream.writev(b).await;
        b.clear();
        *batch = b;
        match res {
            Ok(n) if n > 0 => {
                advance(out, n);
                total += n;
            }
            _ => return Err(()),
        }
    }
    Ok(total)
}
