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
use tokio::sync::{mpsc, oneshot};

use crate::protocol::binary::REQUEST_MAGIC;
use crate::protocol::request::noreply_requested;
use crate::protocol::{compose, parse_request, ParseError, Parsed, Verb};
use crate::proxy::binary::{self, Plan, Step, Translated};
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
    // Decided by the connection's first byte, as memcached does.
    let mut is_binary = None;
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
            if *is_binary.get_or_insert(buf.first() == Some(&REQUEST_MAGIC)) {
                let Some((slot, close, done)) =
                    binary_slot(&core, &mut buf, max_item, &mut swallow)
                else {
                    break;
                };
                if tx.send(slot).await.is_err() {
                    return;
                }
                if let Some(done) = done {
                    // A two-step request: nothing later may overtake it.
                    let _ = done.await;
                }
                if close {
                    let _ = tx.send(Slot::Ready(Some(Out::Close))).await;
                    return;
                }
                continue;
            }
            let (slot, last) = match parse_request(&buf, max_item, &mut keys) {
                Parsed::Incomplete => break,
                Parsed::Complete(r) => {
                    let quit = r.verb == Verb::Quit;
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

/// A binary connection's next request as a reply slot (whether the
/// connection closes after it, and what to wait for before starting the next
/// request), or `None` when more bytes are needed. The
/// adapter in [`crate::proxy::binary`] turns frames into text/meta requests
/// that take the text path through [`dispatch`], and their replies back.
fn binary_slot<B: Backend>(
    core: &Rc<Core<B>>,
    buf: &mut BytesMut,
    max_item: usize,
    swallow: &mut usize,
) -> Option<(Slot, bool, Option<oneshot::Receiver<()>>)> {
    match binary::next_step(buf, max_item) {
        Step::Incomplete => None,
        Step::Close => {
            core.stats().incr(Counter::ClientErrors);
            Some((Slot::Ready(Some(Out::Nothing)), true, None))
        }
        Step::Answer {
            consumed,
            swallow: more,
            reply,
            close,
        } => {
            buf.advance(consumed.min(buf.len()));
            *swallow = more;
            let out = if reply.is_empty() {
                Out::Nothing
            } else {
                Out::One(reply)
            };
            Some((Slot::Ready(Some(out)), close, None))
        }
        Step::Forward {
            consumed,
            swallow: more,
            request,
            plan,
        } => {
            buf.advance(consumed.min(buf.len()));
            *swallow = more;
            let (done_tx, done_rx) = if plan.may_take_two_steps() {
                let (t, r) = oneshot::channel();
                (Some(t), Some(r))
            } else {
                (None, None)
            };
            let first = start_text(core, request, max_item);
            let core = core.clone();
            let fut = async move {
                let out = serve_binary(&core, first, plan, max_item).await;
                if let Some(t) = done_tx {
                    let _ = t.send(());
                }
                out
            };
            Some((Slot::Pending(Box::pin(fut)), false, done_rx))
        }
    }
}

/// Start a translated request exactly as a text client's.
fn start_text<B: Backend>(
    core: &Rc<Core<B>>,
    request: Bytes,
    max_item: usize,
) -> Result<Out, dispatch::Pending> {
    let mut keys = Vec::new();
    match parse_request(&request, max_item, &mut keys) {
        Parsed::Complete(r) => dispatch::start(
            core,
            Req {
                r,
                bytes: request,
                keys: Keys::take(&mut keys),
            },
        ),
        // The adapter only builds well-formed requests; should one not parse,
        // the client gets an error frame, not silence.
        _ => Ok(Out::One(Bytes::from_static(
            b"SERVER_ERROR binary request translation failed\r\n",
        ))),
    }
}

/// Wait for a translated request's reply and turn it into binary; a second
/// step (incr/decr creating a missing counter) is started from here.
async fn serve_binary<B: Backend>(
    core: &Rc<Core<B>>,
    first: Result<Out, dispatch::Pending>,
    plan: Plan,
    max_item: usize,
) -> Out {
    let (mut next, mut plan) = (first, plan);
    // Bounded: a plan asks for at most one more step.
    for _ in 0..3 {
        let out = match next {
            Ok(out) => out,
            Err(fut) => fut.await,
        };
        let parts = match out {
            Out::Nothing => Vec::new(),
            Out::One(b) => vec![b],
            Out::Many(v) => v,
            Out::Close => return Out::Close,
        };
        match plan.translate(&parts) {
            Translated::Reply(b) if b.is_empty() => return Out::Nothing,
            Translated::Reply(b) => return Out::One(b),
            Translated::Then { request, plan: p } => {
                next = start_text(core, request, max_item);
                plan = p;
            }
        }
    }
    Out::Nothing
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
