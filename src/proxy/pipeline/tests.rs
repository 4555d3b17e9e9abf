//! The upstream connection machine without sockets: calls in, wire bytes
//! out, reply bytes in, outcomes out.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::*;
use crate::protocol::Status;

const TIMEOUT: Duration = Duration::from_secs(1);
const MAX_VALUE: usize = 2 << 20;
/// The server every pipeline here talks to.
const S: ServerId = ServerId(7);

fn get(req: usize, key: &str, now: Instant) -> Call {
    let line = Bytes::from(format!("get {key}\r\n"));
    Call::new(req, 0, Expect::Values, [line, Bytes::new()], now)
}

fn set(req: usize, now: Instant) -> Call {
    let parts = [
        Bytes::from_static(b"set k 0 0 1\r\n"),
        Bytes::from_static(b"x\r\n"),
    ];
    Call::new(req, 0, Expect::Line, parts, now)
}

fn mg(req: usize, now: Instant) -> Call {
    Call::new(
        req,
        0,
        Expect::Meta,
        [Bytes::from_static(b"mg k v\r\n"), Bytes::new()],
        now,
    )
}

fn wire(p: &Pipeline) -> Vec<u8> {
    p.out().iter().flat_map(|b| b.to_vec()).collect()
}

/// A connected pipeline with `calls` written.
fn ready(now: Instant, calls: Vec<Call>) -> (Pipeline, VecDeque<Outcome>) {
    let mut p = Pipeline::new(S, now);
    let mut q = VecDeque::new();
    p.connecting(now + TIMEOUT);
    p.connected(now);
    for c in calls {
        assert_eq!(p.queue(c, now, &mut q), Queued::Written);
    }
    (p, q)
}

fn feed(
    p: &mut Pipeline,
    bytes: &[u8],
    now: Instant,
    q: &mut VecDeque<Outcome>,
) -> Result<bool, Fault> {
    p.copy_in(bytes);
    p.frame(now, MAX_VALUE, &mut Vec::new(), q, |_| {})
}

/// Land `bytes` as a receive into [`Pipeline::landing`] would, in pieces
/// of at most `step` bytes (fewer when the landing has less room). Returns
/// the last result and, per piece, where it landed.
fn land(
    p: &mut Pipeline,
    bytes: &[u8],
    step: usize,
    now: Instant,
    q: &mut VecDeque<Outcome>,
) -> (Result<bool, Fault>, Vec<*const u8>) {
    let (mut res, mut at) = (Ok(false), Vec::new());
    let mut rest = bytes;
    // Bounded: every pass lands at least one byte (a landing has room).
    while !rest.is_empty() {
        let mut l = p.landing();
        assert_eq!(l.len(), 0, "a landing starts empty");
        let n = step.min(l.capacity()).min(rest.len());
        assert!(n > 0, "a landing has room");
        at.push(l.as_ptr());
        l.extend_from_slice(&rest[..n]);
        rest = &rest[n..];
        p.landed(l);
        res = p.frame(now, MAX_VALUE, &mut Vec::new(), q, |_| {});
        if res.is_err() {
            break;
        }
    }
    (res, at)
}

/// A call's result as a test compares it: the reply's status, or the
/// failure's kind and whether it may be sent again.
type Settled = Result<Status, (Failure, bool)>;

/// Which requests got which results, in order; a failure as its kind and
/// whether it may be sent again (every call here is for server `S`).
fn settled(q: &mut VecDeque<Outcome>) -> Vec<(usize, Settled)> {
    q.drain(..)
        .map(|(r, _, res)| {
            let res = res.map(|reply| reply.status).map_err(|e| {
                assert_eq!(e.server, S, "the error names the connection's server");
                (e.kind, e.retryable)
            });
            (r, res)
        })
        .collect()
}

#[test]
fn calls_wait_for_the_connect_then_leave_in_order() {
    let now = Instant::now();
    let mut p = Pipeline::new(S, now);
    let mut q = VecDeque::new();
    assert_eq!(p.queue(get(1, "a", now), now, &mut q), Queued::Connect);
    p.connecting(now + TIMEOUT);
    assert_eq!(p.queue(set(2, now), now, &mut q), Queued::Waiting);
    assert!(wire(&p).is_empty());
    p.connected(now);
    assert_eq!(wire(&p), b"get a\r\nset k 0 0 1\r\nx\r\n");
    assert_eq!(p.load(), 2);
    p.sent(10);
    assert_eq!(wire(&p), b" k 0 0 1\r\nx\r\n");
}

#[test]
fn replies_are_matched_to_calls_in_fifo_order() {
    let now = Instant::now();
    let (mut p, mut q) = ready(now, vec![get(1, "a", now), set(2, now)]);
    assert_eq!(feed(&mut p, b"VALUE a 0 1\r\nz", now, &mut q), Ok(false));
    assert!(q.is_empty());
    assert_eq!(feed(&mut p, b"\r\nEND\r\nSTO", now, &mut q), Ok(true));
    assert_eq!(feed(&mut p, b"RED\r\n", now, &mut q), Ok(true));
    let got = settled(&mut q);
    assert_eq!(got.iter().map(|g| g.0).collect::<Vec<_>>(), vec![1, 2]);
    assert_eq!(got[1].1, Ok(Status::Stored));
    assert_eq!(p.load(), 0);
}

#[test]
fn replies_out_of_step_give_the_connection_up() {
    let now = Instant::now();
    // A value for a key the head did not ask for.
    let (mut p, mut q) = ready(now, vec![get(1, "a", now)]);
    assert!(matches!(
        feed(&mut p, b"VALUE b 0 1\r\nz\r\nEND\r\n", now, &mut q),
        Err(Fault::OutOfStep(_))
    ));
    // Bytes with nothing asked.
    let (mut p, mut q) = ready(now, vec![]);
    assert!(matches!(
        feed(&mut p, b"STORED\r\n", now, &mut q),
        Err(Fault::OutOfStep(_))
    ));
    // Not a reply at all.
    let (mut p, mut q) = ready(now, vec![set(1, now)]);
    assert!(matches!(
        feed(&mut p, b"HTTP/1.1 200 OK\r\n", now, &mut q),
        Err(Fault::Garbled(_))
    ));
}

#[test]
fn meta_requests_carry_an_opaque_their_replies_must_echo() {
    let now = Instant::now();
    let (mut p, mut q) = ready(now, vec![mg(1, now), mg(2, now)]);
    assert_eq!(wire(&p), b"mg k v O0\r\nmg k v O1\r\n");
    assert_eq!(feed(&mut p, b"VA 1 O0\r\nx\r\n", now, &mut q), Ok(true));
    let (_, _, first) = q.pop_front().expect("answered");
    // The client never sees memring's opaque.
    assert_eq!(&first.expect("reply").frame[..], b"VA 1\r\nx\r\n");
    assert!(matches!(
        feed(&mut p, b"EN O7\r\n", now, &mut q),
        Err(Fault::OutOfStep(_))
    ));
}

#[test]
fn a_connection_is_stuck_when_its_head_sees_no_reply_bytes() {
    let t0 = Instant::now();
    let (mut p, mut q) = ready(t0, vec![get(1, "a", t0)]);
    assert_eq!(p.due(t0, TIMEOUT), Due::At(t0 + TIMEOUT));
    assert_eq!(
        p.stalled(t0 + Duration::from_millis(5)),
        Duration::from_millis(5)
    );
    // Progress (some reply bytes) moves the deadline.
    let t1 = t0 + Duration::from_millis(900);
    assert_eq!(feed(&mut p, b"VALUE a 0 1\r\n", t1, &mut q), Ok(false));
    assert_eq!(p.stalled(t1), Duration::ZERO);
    assert_eq!(p.due(t0 + TIMEOUT, TIMEOUT), Due::At(t1 + TIMEOUT));
    assert_eq!(p.due(t1 + TIMEOUT, TIMEOUT), Due::Fail(Failure::Timeout));
    // Idle connections have no deadline; connects do.
    let idle = Pipeline::new(S, t0);
    assert_eq!(idle.due(t0, TIMEOUT), Due::Never);
    let mut c = Pipeline::new(S, t0);
    c.connecting(t0 + TIMEOUT);
    assert_eq!(c.due(t0 + TIMEOUT, TIMEOUT), Due::Fail(Failure::Connect));
}

#[test]
fn a_failure_retries_reads_once_and_fails_what_may_have_run() {
    let now = Instant::now();
    let (mut p, mut q) = ready(now, vec![get(1, "a", now), set(2, now), get(3, "c", now)]);
    let failed = p.fail(Failure::Closed, true, now, |_| TIMEOUT, &mut q);
    assert_eq!(
        failed,
        Failed {
            timed_out: false,
            reconnect: true
        }
    );
    assert_eq!(settled(&mut q), vec![(2, Err((Failure::Closed, false)))]);
    assert_eq!(p.phase(), Phase::Idle);
    assert!(p.out().is_empty());
    // The reads go again on the fresh connection, once.
    p.connecting(now + TIMEOUT);
    p.connected(now);
    assert_eq!(wire(&p), b"get a\r\nget c\r\n");
    let failed = p.fail(Failure::Closed, true, now, |_| TIMEOUT, &mut q);
    assert!(!failed.reconnect);
    assert_eq!(
        settled(&mut q),
        vec![
            (1, Err((Failure::Closed, true))),
            (3, Err((Failure::Closed, true)))
        ]
    );
}

#[test]
fn a_timed_out_head_fails_and_is_not_sent_again() {
    let now = Instant::now();
    let (mut p, mut q) = ready(now, vec![get(1, "a", now), get(2, "b", now)]);
    let failed = p.fail(Failure::Timeout, true, now, |_| TIMEOUT, &mut q);
    assert!(failed.timed_out && failed.reconnect);
    assert_eq!(settled(&mut q), vec![(1, Err((Failure::Timeout, true)))]);
}

#[test]
fn a_server_out_of_service_fails_every_call() {
    let now = Instant::now();
    let (mut p, mut q) = ready(now, vec![get(1, "a", now)]);
    let failed = p.fail(Failure::Closed, false, now, |_| TIMEOUT, &mut q);
    assert!(!failed.reconnect);
    assert_eq!(settled(&mut q), vec![(1, Err((Failure::Closed, true)))]);

    let (mut p, mut q) = ready(now, vec![get(1, "a", now)]);
    p.retire(&mut q);
    assert_eq!(settled(&mut q), vec![(1, Err((Failure::Closed, true)))]);
}

#[test]
fn failed_connects_back_off_longer_each_time() {
    let t0 = Instant::now();
    let step = Duration::from_millis(10);
    let mut p = Pipeline::new(S, t0);
    let mut q = VecDeque::new();
    let mut seen = Vec::new();
    for i in 0..3u32 {
        let now = t0 + step * i;
        assert_eq!(p.queue(get(1, "a", now), now, &mut q), Queued::Connect);
        p.connecting(now + TIMEOUT);
        p.fail(
            Failure::Connect,
            true,
            now,
            |n| {
                seen.push(n);
                step
            },
            &mut q,
        );
        assert_eq!(settled(&mut q), vec![(1, Err((Failure::Connect, true)))]);
        // Calls while backing off fail at once.
        assert_eq!(p.queue(get(2, "b", now), now, &mut q), Queued::Refused);
        assert_eq!(settled(&mut q), vec![(2, Err((Failure::Connect, true)))]);
    }
    assert_eq!(seen, vec![1, 2, 3]);
    let later = t0 + step * 3;
    assert_eq!(p.queue(get(3, "c", later), later, &mut q), Queued::Connect);
    p.connecting(later + TIMEOUT);
    p.connected(later);
    let mut after = 0;
    p.fail(
        Failure::Connect,
        true,
        later,
        |n| {
            after = n;
            TIMEOUT
        },
        &mut q,
    );
    assert_eq!(after, 1, "a connect that worked resets the count");
}

#[test]
fn replies_landed_in_place_frame_as_copied_ones_do() {
    let now = Instant::now();
    let big = vec![b'v'; 300 * 1024];
    let mut stream = b"VALUE a 0 1\r\nz\r\nEND\r\n".to_vec();
    stream.extend_from_slice(format!("VALUE b 0 {}\r\n", big.len()).as_bytes());
    stream.extend_from_slice(&big);
    stream.extend_from_slice(b"\r\nEND\r\nSTORED\r\n");
    let calls = || vec![get(1, "a", now), get(2, "b", now), set(3, now)];
    let (mut copied, mut want) = ready(now, calls());
    assert_eq!(feed(&mut copied, &stream, now, &mut want), Ok(true));
    let want: Vec<(usize, Result<Bytes, CallError>)> = want
        .into_iter()
        .map(|(r, _, o)| (r, o.map(|x| x.frame)))
        .collect();
    for step in [1, 7, 1460, 16 * 1024, 1 << 20] {
        let (mut p, mut q) = ready(now, calls());
        let (res, _) = land(&mut p, &stream, step, now, &mut q);
        assert_eq!(res, Ok(true), "step {step}");
        let got: Vec<(usize, Result<Bytes, CallError>)> = q
            .into_iter()
            .map(|(r, _, o)| (r, o.map(|x| x.frame)))
            .collect();
        assert_eq!(got, want, "step {step}");
        assert_eq!(p.load(), 0);
    }
}

#[test]
fn a_large_value_lands_in_one_buffer_of_its_size() {
    let now = Instant::now();
    let big = vec![b'v'; 500 * 1024];
    let head = format!("VALUE b 0 {}\r\n", big.len());
    let (mut p, mut q) = ready(now, vec![get(1, "b", now)]);
    // The line first: the pipeline learns the value's size from it.
    assert_eq!(
        land(&mut p, head.as_bytes(), 1 << 20, now, &mut q).0,
        Ok(false)
    );
    let mut rest = big.clone();
    rest.extend_from_slice(b"\r\nEND\r\n");
    let (res, at) = land(&mut p, &rest, 16 * 1024, now, &mut q);
    assert_eq!(res, Ok(true));
    // Each piece landed right behind the one before: nothing was moved.
    for (i, w) in at.windows(2).enumerate() {
        assert_eq!(w[1] as usize - w[0] as usize, 16 * 1024, "piece {i}");
    }
    let (_, _, reply) = q.pop_front().expect("the value's outcome");
    let frame = reply.expect("a reply").frame;
    assert_eq!(frame.len(), head.len() + rest.len());
    assert!(frame[head.len()..head.len() + big.len()] == big[..]);
}

#[test]
fn receives_alternate_between_two_buffers_while_replies_are_alive() {
    let now = Instant::now();
    let reply = format!("VALUE a 0 100\r\n{}\r\nEND\r\n", "v".repeat(100));
    let (mut p, mut q) = ready(now, vec![]);
    let mut alive = VecDeque::new();
    let mut starts = std::collections::BTreeSet::new();
    let mut last_end = 0usize;
    for i in 0..5_000 {
        let mut dummy = VecDeque::new();
        assert_eq!(p.queue(get(i, "a", now), now, &mut dummy), Queued::Written);
        let mut l = p.landing();
        let at = l.as_ptr() as usize;
        if at != last_end {
            // A new buffer (or this one reclaimed from its start).
            starts.insert(at);
        }
        l.extend_from_slice(reply.as_bytes());
        last_end = at + reply.len();
        p.landed(l);
        assert_eq!(
            p.frame(now, MAX_VALUE, &mut Vec::new(), &mut q, |_| {}),
            Ok(true)
        );
        // This turn's reply is still being sent when the next receive is
        // armed; the one before is gone.
        alive.extend(q.drain(..));
        while alive.len() > 1 {
            alive.pop_front();
        }
    }
    // 5 000 replies of 131 bytes pass through 64 KiB buffers about ten
    // times; two buffers serve them all.
    assert!(starts.len() <= 2, "{} buffers: {starts:x?}", starts.len());
}
