//! One generic test body per behaviour, run for both drivers over loopback
//! with std sockets on the other side.

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, IntoRawFd, RawFd};
use std::thread;
use std::time::{Duration, Instant};

use super::{uring_available, Completion, Driver, DriverConfig, EpollDriver, UringDriver};

/// How long any one expected completion may take on a busy machine.
const LIMIT: Duration = Duration::from_secs(30);

// Tokens come back unchanged, whatever their bits.
const ACCEPT: u64 = 1;
const RECV: u64 = 0x8000_0000_0000_0002;
const SEND: u64 = u64::MAX;
const CONNECT: u64 = 0xffff_ffff;

fn config() -> DriverConfig {
    DriverConfig {
        entries: 64,
        buffers: 16,
        buffer_size: 4096,
    }
}

/// A driver and the completions it delivered that no one asked for yet.
struct Harness<D> {
    d: D,
    seen: VecDeque<Completion>,
}

impl<D: Driver> Harness<D> {
    fn new(cfg: &DriverConfig) -> Harness<D> {
        let d = D::new(cfg).unwrap_or_else(|e| {
            panic!(
                "the {} driver could not start: {e}. The io_uring driver needs io_uring \
                 (Linux >= 6.1 with sysctl kernel.io_uring_disabled=0 and no seccomp \
                 filter refusing io_uring_setup)",
                D::NAME
            )
        });
        assert!(!d.describe().is_empty());
        Harness {
            d,
            seen: VecDeque::new(),
        }
    }

    /// The next completion for `token`, if one comes within `within`.
    fn try_next(&mut self, token: u64, within: Duration) -> Option<Completion> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(i) = self.seen.iter().position(|c| c.token == token) {
                return self.seen.remove(i);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            let mut out = Vec::new();
            self.d
                .wait(Some(left.min(Duration::from_millis(200))), &mut out)
                .expect("wait failed");
            self.seen.extend(out);
        }
    }

    /// The next completion for `token`; fails the test after `LIMIT`.
    fn next(&mut self, token: u64) -> Completion {
        self.try_next(token, LIMIT).unwrap_or_else(|| {
            panic!(
                "{}: no completion for token {token:#x} within {LIMIT:?}",
                D::NAME
            )
        })
    }

    /// Arm a multishot accept on a fresh listener and connect one client.
    fn accept_one(&mut self, listener: &TcpListener) -> (RawFd, TcpStream) {
        self.d.accept(ACCEPT, listener.as_raw_fd());
        let client = TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
        let c = self.next(ACCEPT);
        assert!(c.res >= 0, "{}: accept failed: {c:?}", D::NAME);
        assert!(c.more, "{}: multishot accept ended: {c:?}", D::NAME);
        (c.res, client)
    }

    /// Receive exactly `n` bytes from an armed recv, recycling each buffer
    /// at once and re-arming after -ENOBUFS.
    fn recv_exact(&mut self, fd: RawFd, n: usize) -> Vec<u8> {
        let mut got = Vec::new();
        // Bounded: every pass delivers bytes or fails the test.
        while got.len() < n {
            let c = self.next(RECV);
            if c.res == -libc::ENOBUFS && !c.more {
                self.d.recv(RECV, fd);
                continue;
            }
            assert!(c.res > 0, "{}: recv ended early: {c:?}", D::NAME);
            let id = c.buf.expect("bytes come in a buffer");
            got.extend_from_slice(self.d.buffer(id, c.res as usize));
            self.d.recycle(id);
            if !c.more {
                self.d.recv(RECV, fd);
            }
        }
        got
    }

    /// The receive armed on `fd` ends with the end of the stream; then
    /// close `fd`.
    fn eof_then_close(&mut self, fd: RawFd) {
        let c = self.next(RECV);
        assert_eq!(
            (c.res, c.more),
            (0, false),
            "{}: EOF expected: {c:?}",
            D::NAME
        );
        self.d.close(fd);
    }

    /// Send all of `data`, resuming after partial sends.
    fn send_all(&mut self, fd: RawFd, data: &[u8]) {
        let mut off = 0;
        // Bounded: each round sends at least one byte or fails.
        while off < data.len() {
            let iov = [iovec(&data[off..])];
            // SAFETY: `iov` and `data` outlive the completion awaited below.
            unsafe { self.d.send(SEND, fd, iov.as_ptr(), iov.len()) };
            let c = self.next(SEND);
            assert!(c.res > 0, "{}: send failed: {c:?}", D::NAME);
            assert!(!c.more);
            off += c.res as usize;
        }
    }
}

fn iovec(b: &[u8]) -> libc::iovec {
    libc::iovec {
        iov_base: b.as_ptr() as *mut libc::c_void,
        iov_len: b.len(),
    }
}

fn listener() -> TcpListener {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    l.set_nonblocking(true).expect("nonblocking");
    l
}

fn pattern(n: usize, seed: usize) -> Vec<u8> {
    (0..n).map(|i| ((i * 7 + seed) % 251) as u8).collect()
}

fn accept_several<D: Driver>() {
    let l = listener();
    let mut h = Harness::<D>::new(&config());
    h.d.accept(ACCEPT, l.as_raw_fd());
    let addr = l.local_addr().expect("addr");
    let clients: Vec<TcpStream> = (0..5)
        .map(|_| TcpStream::connect(addr).expect("connect"))
        .collect();
    let mut fds = Vec::new();
    for _ in &clients {
        let c = h.next(ACCEPT);
        assert!(c.res >= 0, "{}: accept failed: {c:?}", D::NAME);
        assert!(c.more, "{}: multishot accept ended: {c:?}", D::NAME);
        assert_eq!(c.buf, None);
        let fd = c.res;
        // SAFETY: fcntl queries on an fd we own.
        let (fl, fdfl) = unsafe {
            (
                libc::fcntl(fd, libc::F_GETFL),
                libc::fcntl(fd, libc::F_GETFD),
            )
        };
        assert!(
            fl & libc::O_NONBLOCK != 0,
            "{}: accepted fd is blocking",
            D::NAME
        );
        assert!(
            fdfl & libc::FD_CLOEXEC != 0,
            "{}: accepted fd lacks CLOEXEC",
            D::NAME
        );
        fds.push(fd);
    }
    fds.sort_unstable();
    fds.dedup();
    assert_eq!(fds.len(), clients.len());
    for fd in fds {
        h.d.close(fd);
    }
}

fn echo<D: Driver>() {
    let l = listener();
    let mut h = Harness::<D>::new(&config());
    let (fd, mut client) = h.accept_one(&l);
    client.set_read_timeout(Some(LIMIT)).expect("timeout");
    h.d.recv(RECV, fd);
    for round in 0..20 {
        let msg = pattern(1 + round * 997, round);
        client.write_all(&msg).expect("client write");
        let got = h.recv_exact(fd, msg.len());
        assert_eq!(got, msg, "{}: round {round} bytes differ", D::NAME);
        h.send_all(fd, &got);
        let mut back = vec![0; msg.len()];
        client.read_exact(&mut back).expect("client read");
        assert_eq!(back, msg, "{}: round {round} echo differs", D::NAME);
    }
    // A vectored send of three pieces arrives as one stream.
    let parts: [&[u8]; 3] = [b"VALUE k 0 3\r\n", b"abc", b"\r\nEND\r\n"];
    let iov = parts.map(iovec);
    // SAFETY: `iov` and `parts` outlive the completion awaited below.
    unsafe { h.d.send(SEND, fd, iov.as_ptr(), iov.len()) };
    let c = h.next(SEND);
    let want = b"VALUE k 0 3\r\nabc\r\nEND\r\n";
    assert_eq!(
        c.res as usize,
        want.len(),
        "{}: small vectored send was partial",
        D::NAME
    );
    let mut back = vec![0; want.len()];
    client.read_exact(&mut back).expect("client read");
    assert_eq!(&back, want);
    drop(client);
    h.eof_then_close(fd);
}

fn big_send<D: Driver>() {
    let l = listener();
    let mut h = Harness::<D>::new(&config());
    let (fd, mut client) = h.accept_one(&l);
    let data = pattern(32 << 20, 3);
    // The client does not read yet: 32 MiB is more than both socket buffers.
    let iov = [iovec(&data)];
    // SAFETY: `iov` and `data` outlive the completion awaited below.
    unsafe { h.d.send(SEND, fd, iov.as_ptr(), 1) };
    let first = h.next(SEND);
    assert!(first.res > 0, "{}: send failed: {first:?}", D::NAME);
    let sent = first.res as usize;
    assert!(sent <= data.len());
    let reader = thread::spawn(move || {
        client.set_read_timeout(Some(LIMIT)).expect("timeout");
        let mut all = Vec::new();
        client.read_to_end(&mut all).map(|_| all)
    });
    h.send_all(fd, &data[sent..]);
    h.d.close(fd);
    let all = reader
        .join()
        .expect("reader panicked")
        .expect("reader failed");
    assert_eq!(all.len(), data.len(), "{}: byte count differs", D::NAME);
    assert!(all == data, "{}: bytes differ", D::NAME);
}

fn eof<D: Driver>() {
    let l = listener();
    let mut h = Harness::<D>::new(&config());
    let (fd, mut client) = h.accept_one(&l);
    h.d.recv(RECV, fd);
    client.write_all(b"last words").expect("write");
    drop(client);
    let mut got = Vec::new();
    // Bounded: "last words" is 10 bytes, so at most 10 data completions.
    for _ in 0..=10 {
        let c = h.next(RECV);
        if c.res == 0 {
            assert!(!c.more, "{}: EOF left the recv armed", D::NAME);
            assert_eq!(c.buf, None);
            break;
        }
        assert!(c.res > 0 && c.more, "{}: unexpected {c:?}", D::NAME);
        let id = c.buf.expect("buffer");
        got.extend_from_slice(h.d.buffer(id, c.res as usize));
        h.d.recycle(id);
    }
    assert_eq!(got, b"last words");
    h.d.close(fd);
}

/// One-shot receives into the caller's memory: every byte arrives, in
/// order, where it was asked to land, however the stream is cut; a receive
/// waiting for bytes ends at the peer's close with 0, and one armed before
/// a shutdown ends too.
fn recv_into<D: Driver>() {
    let l = listener();
    let mut h = Harness::<D>::new(&config());
    let (fd, mut client) = h.accept_one(&l);
    let data = pattern(3 << 20, 7);
    let writer = {
        let data = data.clone();
        thread::spawn(move || {
            client.write_all(&data).expect("client write");
            client
        })
    };
    let mut got = vec![0u8; data.len()];
    let mut off = 0;
    // Bounded: each pass lands at least one byte or fails the test. The
    // windows vary (1 byte to 64 KiB) so that cuts fall anywhere.
    for round in 0usize.. {
        if off == got.len() {
            break;
        }
        let want = (1 + round * 7919 % 65_536).min(got.len() - off);
        let window = &mut got[off..off + want];
        // SAFETY: `got` outlives the completion awaited below, and nothing
        // touches it meanwhile.
        unsafe { h.d.recv_into(RECV, fd, window.as_mut_ptr(), window.len()) };
        let c = h.next(RECV);
        assert!(c.res > 0, "{}: recv_into ended early: {c:?}", D::NAME);
        assert!(!c.more && c.buf.is_none(), "{}: {c:?}", D::NAME);
        assert!(c.res as usize <= want, "{}: {c:?} past {want}", D::NAME);
        off += c.res as usize;
    }
    assert!(got == data, "{}: bytes differ", D::NAME);
    let client = writer.join().expect("writer panicked");
    // Waiting when the peer closes: the end of the stream.
    let mut byte = [0u8; 16];
    // SAFETY: `byte` outlives the completion awaited below.
    unsafe { h.d.recv_into(RECV, fd, byte.as_mut_ptr(), byte.len()) };
    assert!(h.try_next(RECV, Duration::from_millis(50)).is_none());
    drop(client);
    h.eof_then_close(fd);

    // Armed, then the socket is shut down: the receive still completes.
    let (fd, _client) = h.accept_one(&l);
    // SAFETY: as above.
    unsafe { h.d.recv_into(RECV, fd, byte.as_mut_ptr(), byte.len()) };
    h.d.shutdown(fd);
    let c = h.next(RECV);
    assert!(c.res <= 0 && !c.more, "{}: after shutdown: {c:?}", D::NAME);
    h.d.close(fd);
}

fn shutdown_ends_ops<D: Driver>() {
    let l = listener();
    let mut h = Harness::<D>::new(&config());
    let (fd, client) = h.accept_one(&l);
    h.d.recv(RECV, fd);
    let data = pattern(4 << 20, 5);
    let iov = [iovec(&data)];
    // Fill the socket (the client never reads) until a send stays pending.
    let mut pending = false;
    for _ in 0..64 {
        // SAFETY: `iov` and `data` outlive this send's completion, which is
        // awaited below or after the shutdown.
        unsafe { h.d.send(SEND, fd, iov.as_ptr(), 1) };
        match h.try_next(SEND, Duration::from_millis(500)) {
            Some(c) => assert!(c.res > 0, "{}: send failed: {c:?}", D::NAME),
            None => {
                pending = true;
                break;
            }
        }
    }
    assert!(
        pending,
        "{}: 256 MiB went into a socket nobody reads",
        D::NAME
    );
    h.d.shutdown(fd);
    let mut c = h.next(SEND);
    if c.res >= 0 {
        // It was only slow; after the shutdown the next one must fail.
        // SAFETY: as above.
        unsafe { h.d.send(SEND, fd, iov.as_ptr(), 1) };
        c = h.next(SEND);
    }
    assert!(
        c.res < 0,
        "{}: send after shutdown succeeded: {c:?}",
        D::NAME
    );
    let r = h.next(RECV);
    assert!(
        r.res <= 0 && !r.more,
        "{}: recv not ended by shutdown: {r:?}",
        D::NAME
    );
    h.d.close(fd);
    drop(client);
}

fn pool_exhaustion<D: Driver>() {
    let cfg = DriverConfig {
        entries: 16,
        buffers: 4,
        buffer_size: 64,
    };
    let l = listener();
    let mut h = Harness::<D>::new(&cfg);
    let (fd, mut client) = h.accept_one(&l);
    let msg = pattern(1000, 9);
    client.write_all(&msg).expect("write");
    h.d.recv(RECV, fd);
    let mut held = Vec::new();
    let mut got = Vec::new();
    // Bounded: 4 buffers, then the pool is dry.
    let last = loop {
        let c = h.next(RECV);
        if !c.more {
            break c;
        }
        assert!(c.res > 0, "{}: unexpected {c:?}", D::NAME);
        let id = c.buf.expect("buffer");
        got.extend_from_slice(h.d.buffer(id, c.res as usize));
        held.push(id);
        assert!(
            held.len() <= 4,
            "{}: more buffers than the pool has",
            D::NAME
        );
    };
    assert_eq!(last.res, -libc::ENOBUFS, "{}: {last:?}", D::NAME);
    assert_eq!(held.len(), 4, "{}: the pool ran dry early", D::NAME);
    // A recycled id is no longer readable; a double recycle is ignored.
    let first = held[0];
    for id in held {
        h.d.recycle(id);
    }
    h.d.recycle(first);
    assert!(h.d.buffer(first, 64).is_empty());
    h.d.recv(RECV, fd);
    got.extend(h.recv_exact(fd, msg.len() - got.len()));
    assert_eq!(got, msg, "{}: bytes differ after re-arming", D::NAME);
    h.d.close(fd);
}

fn nonblocking_socket() -> RawFd {
    let s =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    s.set_nonblocking(true).expect("nonblocking");
    s.into_raw_fd()
}

fn connect<D: Driver>() {
    let mut h = Harness::<D>::new(&config());
    let closed: SocketAddr = {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr")
    };
    let fd = nonblocking_socket();
    h.d.connect(CONNECT, fd, closed);
    let c = h.next(CONNECT);
    assert_eq!(
        (c.res, c.more),
        (-libc::ECONNREFUSED, false),
        "{}: {c:?}",
        D::NAME
    );
    h.d.close(fd);

    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let fd = nonblocking_socket();
    h.d.connect(CONNECT, fd, l.local_addr().expect("addr"));
    let c = h.next(CONNECT);
    assert_eq!((c.res, c.more), (0, false), "{}: {c:?}", D::NAME);
    let (mut server, _) = l.accept().expect("accept");
    server.set_read_timeout(Some(LIMIT)).expect("timeout");
    h.send_all(fd, b"hello");
    let mut got = [0; 5];
    server.read_exact(&mut got).expect("read");
    assert_eq!(&got, b"hello");
    h.d.close(fd);
}

fn cancel_then_rearm<D: Driver>() {
    let l = listener();
    let mut h = Harness::<D>::new(&config());
    let (fd, mut client) = h.accept_one(&l);
    h.d.recv(RECV, fd);
    // Let the recv reach the kernel before cancelling it.
    let mut out = Vec::new();
    h.d.wait(Some(Duration::ZERO), &mut out).expect("wait");
    h.seen.extend(out);
    h.d.cancel_recv(RECV, fd);
    let c = h.next(RECV);
    assert_eq!(
        (c.res, c.more),
        (-libc::ECANCELED, false),
        "{}: {c:?}",
        D::NAME
    );
    client.write_all(b"after").expect("write");
    assert_eq!(
        h.try_next(RECV, Duration::from_millis(300)),
        None,
        "{}: bytes delivered to a cancelled recv",
        D::NAME
    );
    h.d.recv(RECV, fd);
    assert_eq!(h.recv_exact(fd, 5), b"after");
    h.d.close(fd);
}

fn wait_timeout<D: Driver>() {
    let mut h = Harness::<D>::new(&config());
    let mut out = Vec::new();
    h.d.wait(Some(Duration::from_millis(100)), &mut out)
        .expect("wait");
    assert!(out.is_empty(), "{}: {out:?}", D::NAME);
    h.d.wait(Some(Duration::ZERO), &mut out).expect("wait");
    assert!(out.is_empty(), "{}: {out:?}", D::NAME);
}

/// An alarm wakes a wait with a long timeout, and brings nothing for the
/// caller; a later alarm is covered by the one armed.
fn alarm_wakes_a_long_wait<D: Driver>() {
    let mut h = Harness::<D>::new(&config());
    let t0 = Instant::now();
    assert!(
        h.d.alarm(t0, Duration::from_millis(20)),
        "{}: armed",
        D::NAME
    );
    assert!(h.d.alarm(t0, Duration::from_millis(500)), "covered");
    let mut out = Vec::new();
    h.d.wait(Some(Duration::from_secs(60)), &mut out)
        .expect("wait");
    assert!(out.is_empty(), "the alarm is the driver's own: {out:?}");
    let took = t0.elapsed();
    assert!(took >= Duration::from_millis(20), "woke after {took:?}");
    assert!(took < Duration::from_secs(60), "the alarm woke the wait");
    // Once it went off, the next one is armed afresh.
    let t1 = Instant::now();
    assert!(h.d.alarm(t1, Duration::from_millis(10)), "re-armed");
    h.d.wait(Some(Duration::from_secs(60)), &mut out)
        .expect("wait");
    assert!(out.is_empty(), "{out:?}");
    assert!(
        t1.elapsed() < Duration::from_secs(60),
        "the second alarm woke the wait"
    );
}

/// More operations than the submission queue holds and more completions
/// than the completion queue holds, in one turn.
fn many_connections<D: Driver>() {
    let cfg = DriverConfig {
        entries: 4,
        buffers: 128,
        buffer_size: 256,
    };
    let l = listener();
    let mut h = Harness::<D>::new(&cfg);
    h.d.accept(ACCEPT, l.as_raw_fd());
    let addr = l.local_addr().expect("addr");
    let mut clients: Vec<TcpStream> = (0..40)
        .map(|_| TcpStream::connect(addr).expect("connect"))
        .collect();
    let mut fds = Vec::new();
    while fds.len() < clients.len() {
        let c = h.next(ACCEPT);
        assert!(c.res >= 0, "{}: {c:?}", D::NAME);
        fds.push(c.res);
        // A full completion queue ends a multishot accept (its last
        // completion still carries a connection): the caller re-arms.
        if !c.more {
            h.d.accept(ACCEPT, l.as_raw_fd());
        }
    }
    for &fd in &fds {
        h.d.recv(fd as u64, fd);
    }
    for (i, c) in clients.iter_mut().enumerate() {
        c.write_all(&[i as u8; 3]).expect("write");
    }
    let mut bytes = 0;
    let deadline = Instant::now() + LIMIT;
    // Bounded by the deadline.
    while bytes < 3 * fds.len() {
        assert!(
            Instant::now() < deadline,
            "{}: only {bytes} bytes arrived",
            D::NAME
        );
        let mut out = Vec::new();
        h.d.wait(Some(Duration::from_millis(200)), &mut out)
            .expect("wait");
        for c in out {
            if c.token == ACCEPT {
                continue;
            }
            assert!(c.res > 0, "{}: {c:?}", D::NAME);
            let id = c.buf.expect("buffer");
            let fd = c.token as RawFd;
            let i = fds
                .iter()
                .position(|&f| f == fd)
                .expect("token is one of ours");
            assert!(h.d.buffer(id, c.res as usize).iter().all(|&b| b == i as u8));
            bytes += c.res as usize;
            h.d.recycle(id);
            if !c.more {
                h.d.recv(c.token, fd);
            }
        }
    }
    assert_eq!(bytes, 3 * fds.len());
    for fd in fds {
        h.d.shutdown(fd);
    }
    // Every recv ends after the shutdown (its last completion arrives).
    // Drop then cancels the accept and waits for it.
}

/// shutdown() on a listener ends its armed accept and stops listening.
fn shutdown_listener<D: Driver>() {
    let l = listener();
    let addr = l.local_addr().expect("addr");
    let mut h = Harness::<D>::new(&config());
    let (fd, _client) = h.accept_one(&l);
    h.d.close(fd);
    h.d.shutdown(l.as_raw_fd());
    let c = h.next(ACCEPT);
    assert!(c.res < 0 && !c.more, "{}: accept not ended: {c:?}", D::NAME);
    let refused = TcpStream::connect(addr).map(drop).map_err(|e| e.kind());
    assert_eq!(
        refused,
        Err(std::io::ErrorKind::ConnectionRefused),
        "{}",
        D::NAME
    );
}

/// Dropping the driver with a multishot accept and a recv armed lets go of
/// the listener at once: its port can be bound again right away.
fn drop_releases_listener<D: Driver>() {
    let l = listener();
    let addr = l.local_addr().expect("addr");
    let mut h = Harness::<D>::new(&config());
    let (fd, client) = h.accept_one(&l);
    h.d.recv(RECV, fd);
    let mut out = Vec::new();
    h.d.wait(Some(Duration::ZERO), &mut out).expect("wait");
    assert!(out.is_empty(), "{}: {out:?}", D::NAME);
    drop(h);
    // SAFETY: the accepted fd is ours and the driver that used it is gone.
    unsafe { libc::close(fd) };
    drop(client);
    drop(l);
    if let Err(e) = TcpListener::bind(addr) {
        panic!(
            "{}: {addr} still taken after the driver and the listener went: {e}",
            D::NAME
        );
    }
}

fn two_threads<D: Driver + 'static>() {
    let a = thread::spawn(echo::<D>);
    let b = thread::spawn(echo::<D>);
    a.join().expect("first driver thread");
    b.join().expect("second driver thread");
}

macro_rules! for_both {
    ($($name:ident),* $(,)?) => {
        mod uring {
            $(#[test] fn $name() { super::$name::<super::UringDriver>() })*
        }
        mod epoll {
            $(#[test] fn $name() { super::$name::<super::EpollDriver>() })*
        }
    };
}

for_both!(
    accept_several,
    echo,
    big_send,
    eof,
    recv_into,
    shutdown_ends_ops,
    pool_exhaustion,
    connect,
    cancel_then_rearm,
    wait_timeout,
    alarm_wakes_a_long_wait,
    many_connections,
    shutdown_listener,
    drop_releases_listener,
    two_threads,
);

#[test]
fn uring_is_available_here() {
    if let Err(e) = uring_available() {
        panic!(
            "io_uring is unavailable here ({e}): the io_uring driver tests need Linux >= 6.1 \
             with sysctl kernel.io_uring_disabled=0 and no seccomp filter refusing io_uring_setup"
        );
    }
    let h = Harness::<UringDriver>::new(&config());
    // Shown with --nocapture: which setup flags this kernel took.
    eprintln!("io_uring driver: {}", h.d.describe());
}
