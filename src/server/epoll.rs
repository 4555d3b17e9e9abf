//! The epoll backend: plain tokio on a current-thread runtime, for hosts and
//! containers where io_uring is refused.

use std::future::Future;
use std::io::{self, IoSlice};
use std::net::SocketAddr;

use bytes::{Bytes, BytesMut};

use super::io::{Backend, Listener, Stream};

/// epoll backend marker.
pub(crate) struct Epoll;

macro_rules! epoll_stream {
    ($t:ty) => {
        impl Stream for $t {
            async fn read(&self, mut buf: BytesMut) -> (io::Result<usize>, BytesMut) {
                loop {
                    if let Err(e) = self.readable().await {
                        return (Err(e), buf);
                    }
                    match self.try_read_buf(&mut buf) {
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                        res => return (res, buf),
                    }
                }
            }

            async fn writev(&self, bufs: Vec<Bytes>) -> (io::Result<usize>, Vec<Bytes>) {
                loop {
                    if let Err(e) = self.writable().await {
                        return (Err(e), bufs);
                    }
                    let res = {
                        let iov: Vec<IoSlice<'_>> = bufs.iter().map(|b| IoSlice::new(b)).collect();
                        self.try_write_vectored(&iov)
                    };
                    match res {
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                        res => return (res, bufs),
                    }
                }
            }

            fn shutdown(&self) {
                let _ = socket2::SockRef::from(self).shutdown(std::net::Shutdown::Both);
            }
        }
    };
}

epoll_stream!(tokio::net::TcpStream);
epoll_stream!(tokio::net::UnixStream);

impl Listener for tokio::net::TcpListener {
    type Conn = tokio::net::TcpStream;

    async fn accept(&self) -> io::Result<Self::Conn> {
        let (s, _) = tokio::net::TcpListener::accept(self).await?;
        s.set_nodelay(true)?;
        Ok(s)
    }
}

impl Listener for tokio::net::UnixListener {
    type Conn = tokio::net::UnixStream;

    async fn accept(&self) -> io::Result<Self::Conn> {
        let (s, _) = tokio::net::UnixListener::accept(self).await?;
        Ok(s)
    }
}

impl Backend for Epoll {
    type Tcp = tokio::net::TcpStream;
    type TcpListener = tokio::net::TcpListener;
    type UnixListener = tokio::net::UnixListener;

    const NAME: &'static str = "epoll";

    async fn connect(addr: SocketAddr) -> io::Result<Self::Tcp> {
        let s = tokio::net::TcpStream::connect(addr).await?;
        s.set_nodelay(true)?;
        Ok(s)
    }

    fn tcp_listener(l: std::net::TcpListener) -> io::Result<Self::TcpListener> {
        tokio::net::TcpListener::from_std(l)
    }

    fn unix_listener(l: std::os::unix::net::UnixListener) -> io::Result<Self::UnixListener> {
        tokio::net::UnixListener::from_std(l)
    }

    fn block_on<F: Future>(fut: F) -> io::Result<F::Output> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let local = tokio::task::LocalSet::new();
        Ok(local.block_on(&rt, fut))
    }
}
