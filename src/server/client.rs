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

use bytes::{Buf, Bytes, BytesMut};
use futures_util::stream::{FuturesOrdered, StreamExt};
use futures_util::FutureExt;
use tokio::sync::mpsc;

use crate::protocol::request::{
    batch_request, noreply_requested, parse_retrieval_more, too_large_removes, Request,
};
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

/// Serve one client until it quits, disconnects or breaks framing.
pub(crate) async fn serve<B: Backend, S: Stream>(core: Rc<Core<B>>, stream: S) {
    let stream = Rc::new(stream);
    let stats = core.stats();
    stats.curr_connections.fetch_add(1, Ordering::Relaxed);
    stats.incr(Counter::TotalConnections);
    let (tx, rx) = mpsc::channel(QUEUE);
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
    tx: mpsc::Sender<Slot>,
) {
    let max_item = core.shared.cfg.max_item_size;
    let mut buf = BytesMut::with_capacity(READ_START);
    let mut keys = Vec::new();
    let mut swallow = 0usize;
    // The answer to a too-large request, sent once its data is swallowed.
    let mut held: Option<Out> = None;
    // A retrieval line longer than MAX_LINE_LEN, served batch by batch.
    let mut long_get: Option<Request> = None;
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
            if let Some(out) = held.take() {
                if tx.send(Slot::Ready(Some(out))).await.is_err() {
                    return;
                }
            }
            if buf.is_empty() {
                break;
            }
            let parsed = match &long_get {
                Some(first) => parse_retrieval_more(&buf, first, &mut keys),
                None => parse_request(&buf, max_item, &mut keys),
            };
            let (slot, last) = match parsed {
                Parsed::Incomplete => break,
                Parsed::Complete(r) => {
                    let quit = r.verb == Verb::Quit;
                    let more = r.more;
                    let batch = more || long_get.is_some();
                    long_get = more.then(|| r.clone());
                    let mut bytes = buf.split_to(r.consumed).freeze();
                    if more && keys.is_empty() {
                        continue;
                    }
                    let mut r = r;
                    if batch {
                        // A batch of a long get line goes on as a get of its own.
                        let mut line = BytesMut::new();
                        r = batch_request(&mut line, &bytes, &r, &mut keys);
                        bytes = line.freeze();
                    }
                    let req = Req {
                        r,
                        bytes,
                        keys: Keys::take(&mut keys),
                    };
                    let slot = match (dispatch::start(&core, req), more) {
                        (Ok(out), false) => Slot::Ready(Some(out)),
                        (Err(fut), false) => Slot::Pending(fut),
                        // Not the line's last batch: its END is left out.
                        (Ok(out), true) => Slot::Ready(Some(out.without_end())),
                        (Err(fut), true) => {
                            Slot::Pending(Box::pin(async move { fut.await.without_end() }))
                        }
                    };
                    (slot, quit)
                }
                Parsed::Error(ParseError::TooLarge { skip }) => {
                    core.stats().incr(Counter::ClientErrors);
                    // The old item goes too, on every replica, as memcached
                    // removes it; the answer waits until the data is swallowed.
                    let delete = too_large_removes(&buf).and_then(|k| {
                        dispatch::delete_silently(&core, buf.get(k).unwrap_or_default())
                    });
                    held = Some(if noreply_requested(&buf) {
                        Out::Nothing
                    } else {
                        Out::One(Bytes::from_static(compose::TOO_LARGE))
                    });
                    swallow = skip;
                    match delete {
                        Some(fut) => (Slot::Pending(fut), false),
                        None => continue,
                    }
                }
                Parsed::Error(e) => {
                    core.stats().incr(Counter::ClientErrors);
                    let silent = noreply_requested(&buf);
                    let (out, last) = match e {
                        ParseError::UnknownCommand { consumed } => {
                            swallow = consumed;
                            (Out::One(Bytes::from_static(compose::ERROR)), false)
                        }
                        ParseError::Client { consumed, msg } => {
                            swallow = consumed;
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
                        ParseError::LineTooLong => {
                            (Out::One(Bytes::from_static(compose::LINE_TOO_LONG)), true)
                        }
                        ParseError::TooLarge { .. } | ParseError::Close => (Out::Nothing, true),
                    };
                    if last {
                        let _ = tx.send(Slot::Ready(Some(out))).await;
                        let _ = tx.send(Slot::Ready(Some(Out::Close))).await;
                        return;
                    }
                    (Slot::Ready(Some(out)), false)
                }
            };
            if tx.send(slot).await.is_err() || last {
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
            Ok(n) if n > 0 => core.stats().add(Counter::BytesRead, n as u64),
            _ => return,
        }
    }
}

async fn write_replies<B: Backend, S: Stream>(
    core: &Core<B>,
    stream: &S,
    mut rx: mpsc::Receiver<Slot>,
) {
    let mut queue: FuturesOrdered<Slot> = FuturesOrdered::new();
    let mut out: VecDeque<Bytes> = VecDeque::new();
    let mut batch: Vec<Bytes> = Vec::new();
    let mut open = true;
    let mut closing = false;
    loop {
        tokio::select! {
            biased;
            Some(o) = queue.next(), if !queue.is_empty() => closing |= push(&mut out, o),
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
                Some(Some(o)) => closing |= push(&mut out, o),
                _ => break,
            }
        }
        if !out.is_empty() {
            match write_all(stream, &mut out, &mut batch).await {
                Ok(n) => core.stats().add(Counter::BytesWritten, n as u64),
                Err(()) => return,
            }
        }
        if closing {
            return;
        }
    }
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
