//! The io_uring backend (tokio-uring): the only file that imports tokio_uring.

use std::future::Future;
use std::io;
use std::net::{Shutdown, SocketAddr};

use bytes::{Bytes, BytesMut};
use tokio_uring::buf::BoundedBuf;

use super::io::{Backend, Listener, Stream};

/// io_uring backend marker.
pub(crate) struct Uring;

/// Submission queue depth per core. Completions get twice as many slots.
const SQ_ENTRIES: u32 = 1024;

macro_rules! uring_stream {
    ($t:ty) => {
        impl Stream for $t {
            async fn read(&self, buf: BytesMut) -> (io::Result<usize>, BytesMut) {
                let len = buf.len();
                // Read into the spare capacity only: tokio-uring reads at the
                // slice's start and extends the initialised length.
                let (res, slice) = <$t>::read(self, buf.slice(len..)).await;
                (res, slice.into_inner())
            }

            async fn writev(&self, mut bufs: Vec<Bytes>) -> (io::Result<usize>, Vec<Bytes>) {
                // One buffer (most replies): a plain write, which spares
                // tokio-uring's per-call iovec allocation.
                if bufs.len() == 1 {
                    if let Some(one) = bufs.pop() {
                        let (res, one) = <$t>::write(self, one).submit().await;
                        bufs.push(one);
                        return (res, bufs);
                    }
                }
                <$t>::writev(self, bufs).await
            }

            fn shutdown(&self) {
                let _ = <$t>::shutdown(self, Shutdown::Both);
            }
        }
    };
}

uring_stream!(tokio_uring::net::TcpStream);
uring_stream!(tokio_uring::net::UnixStream);

impl Listener for tokio_uring::net::TcpListener {
    type Conn = tokio_uring::net::TcpStream;

    async fn accept(&self) -> io::Result<Self::Conn> {
        let (s, _) = tokio_uring::net::TcpListener::accept(self).await?;
        s.set_nodelay(true)?;
        Ok(s)
    }
}

/// Unix listener for the io_uring backend. tokio-uring 0.5 can only bind unix
/// listeners by path, so accepting goes through tokio's reactor (which the
/// tokio-uring runtime also drives); accepted streams then run on io_uring.
pub(crate) struct UringUnixListener(tokio::net::UnixListener);

impl Listener for UringUnixListener {
    type Conn = tokio_uring::net::UnixStream;

    async fn accept(&self) -> io::Result<Self::Conn> {
        let (s, _) = self.0.accept().await?;
        Ok(tokio_uring::net::UnixStream::from_std(s.into_std()?))
    }
}

impl Backend for Uring {
    type Tcp = tokio_uring::net::TcpStream;
    type TcpListener = tokio_uring::net::TcpListener;
    type UnixListener = UringUnixListener;

    const NAME: &'static str = "io_uring";

    async fn connect(addr: SocketAddr) -> io::Result<Self::Tcp> {
        let s = tokio_uring::net::TcpStream::connect(addr).await?;
        s.set_nodelay(true)?;
        Ok(s)
    }

    fn tcp_listener(l: std::net::TcpListener) -> io::Result<Self::TcpListener> {
        Ok(tokio_uring::net::TcpListener::from_std(l))
    }

    fn unix_listener(l: std::os::unix::net::UnixListener) -> io::Result<Self::UnixListener> {
        Ok(UringUnixListener(tokio::net::UnixListener::from_std(l)?))
    }

    fn block_on<F: Future>(fut: F) -> io::Result<F::Output> {
        let rt = runtime()?;
        Ok(rt.block_on(fut))
    }
}

/// Ring flags, most helpful first. COOP_TASKRUN stops the kernel from
/// interrupting the thread to run completion work (it runs when the thread
/// enters the kernel anyway), and SINGLE_ISSUER lets it skip locking since
/// only this thread submits. Kernels older than 6.0 reject them with EINVAL,
/// so a plain ring is the fallback.
fn builder(tuned: bool) -> tokio_uring::Builder {
    let mut urb = tokio_uring::uring_builder();
    urb.setup_cqsize(SQ_ENTRIES * 4);
    if tuned {
        urb.setup_coop_taskrun();
        urb.setup_single_issuer();
    }
    let mut b = tokio_uring::builder();
    b.entries(SQ_ENTRIES).uring_builder(&urb);
    b
}

fn runtime() -> io::Result<tokio_uring::Runtime> {
    match tokio_uring::Runtime::new(&builder(true)) {
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
            tokio_uring::Runtime::new(&builder(false))
        }
        other => other,
    }
}

/// Try to create an io_uring instance: the startup check for seccomp and
/// `kernel.io_uring_disabled`.
pub(crate) fn probe() -> io::Result<()> {
    runtime().map(drop)
}
