//! One client connection: a reader task that parses pipelined requests and
//! starts them, and a writer loop that waits for their replies in order and
//! writes whatever is ready with one vectored write (cut at IOV_MAX, partial
//! writes resumed).

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::{Buf, Bytes, BytesMut};
use futures_util::stream::{FuturesOrdered, StreamExt};
use futures_util::FutureExt;
use tokio::sync::mpsc;

use crate::metrics::Command;
use crate::protocol::request::noreply_requested;
use crate::protocol::{compose, parse_request, ParseError, Parsed, Verb};
use crate::stats::Counter;

use super::core::Core;
use super::dispatch::{self, Keys, Out, Req};
use super::io::{write_all, Backend, Stream};

/// First read buffer of a connection; it grows only when a client sends more.
/// Small, so that idle connections cost little memory.
const READ_START: usize = 2 * 1024;

/// Requests parsed ahead of their replies, per connection. Past this the
/// reader stops reading, which pushes back on the client through TCP.
const MAX_INFLIGHT: usize = 1024;

/// Channel depth between the reader and the writer.
const QUEUE: usize = 128;

/// A reply slot in the client's order.
enum Slot {
    Ready(Option<Out>),
    Pending(dispatch::Pending),
}

impl Future for Slot {
    type Output = Out;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Out> {
        match self.get_mut() {
            Slot::Ready(o) => Poll::Ready(o.take().unwrap_or(Out::Nothing)),
            Slot::Pending(f) => f.as_mut().poll(cx),
        }
    }
}

/// What the latency histogram needs of a request: its command and when the
/// read that brought its first byte completed (`None` when not timing).
#[derive(Clone, Copy)]
struct Stamp {
    cmd: Command,
    since: Option<Instant>,
}

/// A slot with its stamp; resolves to both.
struct Timed {
    slot: Slot,
    stamp: Stamp,
}

impl Future for Timed {
    type Output = (Out, Stamp);

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<(Out, Stamp)> {
        let this = self.get_mut();
        Pin::new(&mut this.slot)
            .poll(cx)
            .map(|out| (out, this.stamp))
    }
}

/// When the oldest unparsed byte of the read buffer arrived. Clock reads
/// happen once per read, never per request, and only when timing is on.
struct Arrival {
    timing: bool,
    /// Read that brought the oldest unparsed byte.
    oldest: Option<Instant>,
    /// The latest read and how many bytes it brought.
    last: Option<(Instant, usize)>,
}

impl Arrival {
    /// `n` bytes were read into a buffer that now holds `buffered` unparsed bytes.
    fn read(&mut self, n: usize, buffered: usize) {
        if !self.timing {
            return;
        }
        let now = Instant::now();
        if buffered <= n || self.oldest.is_none() {
            self.oldest = Some(now);
        }
        self.last = Some((now, n));
    }

    /// Requests were parsed off the front; `buffered` unparsed bytes remain.
    fn consumed(&mut self, buffered: usize) {
        if let Some((at, n)) = self.last {
            // The rest all came with the latest read: it started there.
            // (Otherwise it started in an earlier read: keep the oldest, an
            // overestimate only when a request spans three reads or more.)
            if buffered <= n {
                self.oldest = Some(at);
            }
        }
    }

    fn stamp(&self, cmd: Command) -> Stamp {
        Stamp {
            cmd,
            since: self.oldest,
        }
    }
}

/// Serve one client until it quits, disconnects or breaks framing.
pub(crate) async fn serve<B: Backend, S: Stream>(core: Rc<Core<B>>, stream: S) {
    let stream = Rc::new(stream);
    let stats = core.stats();
    stats.curr_connections.fetch_add(1, Ordering::Relaxed);
    stats.incr(Counter::TotalConnections);
    let (tx, rx) = mpsc::channel::<Timed>(QUEUE);
    let reader = tokio::task::spawn_local(read_requests(core.clone(), stream.clone(), tx));
    write_replies(&core, &*stream, rx).await;
    // Wakes the reader if it is still waiting for bytes.
    stream.shutdown();
    let _ = reader.await;
    core.stats()
        .curr_connections
        .fetch_sub(1, Ordering::Relaxed);
}

async fn read_requests<B: Backend, S: Stream>(
    core: Rc<Core<B>>,
    stream: Rc<S>,
    tx: mpsc::Sender<Timed>,
) {
    let max_item = core.shared.cfg.max_item_size;
    let mut buf = BytesMut::with_capacity(READ_START);
    let mut keys = Vec::new();
    let mut swallow = 0usize;
    let mut arrival = Arrival {
        timing: core.shared.timing,
        oldest: None,
        last: None,
    };
    loop {
        loop {
            if swallow > 0 {
                let n = swallow.min(buf.len());
                buf.advance(n);
                swallow -= n;
                if swallow > 0 {
                    break;
                }
            }
            if buf.is_empty() {
                break;
            }
            let mut stamp = arrival.stamp(Command::Invalid);
            let (slot, last) = match parse_request(&buf, max_item, &mut keys) {
                Parsed::Incomplete => break,
                Parsed::Complete(r) => {
                    let quit = r.verb == Verb::Quit;
                    stamp.cmd = Command::of(r.verb);
                    let bytes = buf.split_to(r.consumed).freeze();
                    let req = Req {
                        r,
                        bytes,
                        keys: Keys::take(&mut keys),
                    };
                    let slot = match dispatch::start(&core, req) {
                        Ok(out) => Slot::Ready(Some(out)),
                        Err(fut) => Slot::Pending(fut),
                    };
                    (slot, quit)
                }
                Parsed::Error(e) => {
                    core.stats().incr(Counter::ClientErrors);
                    let silent = noreply_requested(&buf);
                    let (out, last) = match e {
                        ParseError::UnknownCommand { consumed } => {
                            buf.advance(consumed.min(buf.len()));
                            (Out::One(Bytes::from_static(compose::ERROR)), false)
                        }
                        ParseError::Client { consumed, msg } => {
                            buf.advance(consumed.min(buf.len()));
                            let mut m = BytesMut::with_capacity(msg.len() + 16);
                            compose::compose_client_error(&mut m, msg);
                            (
                                if silent {
                                    Out::Nothing
                                } else {
                                    Out::One(m.freeze())
                                },
                                false,
                            )
                        }
                        ParseError::TooLarge { skip } => {
                            swallow = skip;
                            let o = Out::One(Bytes::from_static(compose::TOO_LARGE));
                            (if silent { Out::Nothing } else { o }, false)
                        }
                        ParseError::LineTooLong => {
                            (Out::One(Bytes::from_static(compose::LINE_TOO_LONG)), true)
                        }
                    };
                    if last {
                        let slot = Slot::Ready(Some(out));
                        let _ = tx.send(Timed { slot, stamp }).await;
                        let slot = Slot::Ready(Some(Out::Close));
                        stamp.since = None;
                        let _ = tx.send(Timed { slot, stamp }).await;
                        return;
                    }
                    (Slot::Ready(Some(out)), false)
                }
            };
            arrival.consumed(buf.len().saturating_sub(swallow));
            if tx.send(Timed { slot, stamp }).await.is_err() || last {
                return;
            }
        }
        if buf.capacity() - buf.len() < READ_START / 2 {
            let grow = buf.capacity().max(READ_START);
            buf.reserve(grow);
        }
        let (res, b) = stream.read(buf).await;
        buf = b;
        match res {
            Ok(n) if n > 0 => {
                core.stats().add(Counter::BytesRead, n as u64);
                arrival.read(n, buf.len());
            }
            _ => return,
        }
    }
}

async fn write_replies<B: Backend, S: Stream>(
    core: &Core<B>,
    stream: &S,
    mut rx: mpsc::Receiver<Timed>,
) {
    let mut queue: FuturesOrdered<Timed> = FuturesOrdered::new();
    let mut out: VecDeque<Bytes> = VecDeque::new();
    let mut batch: Vec<Bytes> = Vec::new();
    // Replies in `out`, to time once their last byte is written.
    let mut answered: Vec<Stamp> = Vec::new();
    let mut open = true;
    let mut closing = false;
    loop {
        tokio::select! {
            biased;
            Some((o, s)) = queue.next(), if !queue.is_empty() => {
                closing |= push(&mut out, o);
                answered.push(s);
            }
            r = rx.recv(), if open && queue.len() < MAX_INFLIGHT => match r {
                Some(slot) => queue.push_back(slot),
                None => open = false,
            },
            else => {
                if out.is_empty() {
                    return;
                }
            }
        }
        // Take everything that is already answered, so one write carries it all.
        while !closing {
            while open && queue.len() < MAX_INFLIGHT {
                match rx.try_recv() {
                    Ok(slot) => queue.push_back(slot),
                    Err(mpsc::error::TryRecvError::Empty) => break,
                    Err(mpsc::error::TryRecvError::Disconnected) => open = false,
                }
            }
            match queue.next().now_or_never() {
                Some(Some((o, s))) => {
                    closing |= push(&mut out, o);
                    answered.push(s);
                }
                _ => break,
            }
        }
        if !out.is_empty() {
            match write_all(stream, &mut out, &mut batch).await {
                Ok(n) => core.stats().add(Counter::BytesWritten, n as u64),
                Err(()) => return,
            }
        }
        record_latency(core, &mut answered);
        if closing {
            return;
        }
    }
}

/// Every reply in `answered` has been written (or had nothing to write):
/// record its latency. One clock read per batch.
fn record_latency<B: Backend>(core: &Core<B>, answered: &mut Vec<Stamp>) {
    if answered.is_empty() {
        return;
    }
    if core.shared.timing {
        let now = Instant::now();
        let m = core.metrics();
        for s in answered.iter() {
            if let Some(since) = s.since {
                m.record_request(s.cmd, now.saturating_duration_since(since));
            }
        }
    }
    answered.clear();
}

/// Queue a reply's buffers; true when the connection must close after them.
fn push(out: &mut VecDeque<Bytes>, o: Out) -> bool {
    match o {
        Out::Nothing => {}
        Out::One(b) => out.push_back(b),
        Out::Many(v) => out.extend(v),
        Out::Close => return true,
    }
    false
}
