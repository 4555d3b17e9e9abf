//! The client connection machine without sockets: byte tables in, the
//! requests it starts and the bytes it writes out.

use std::time::{Duration, Instant};

use bytes::Bytes;
use proptest::prelude::*;

use super::*;
use crate::protocol::binary::{arithmetic_extras, request_frame, Opcode};
use crate::protocol::Verb;

const LIM: Limits = Limits {
    max_item: 1024 * 1024,
    budget: 1 << 20,
    timing: false,
};

/// What the shell would do with one handed-out request, for the tables.
#[derive(Debug, PartialEq, Eq)]
enum Started {
    Text(u64, Verb, Vec<u8>),
    Binary(u64, Vec<u8>),
}

/// A connection whose answer estimate starts small (a fresh one lets only
/// two requests run until it has seen answers).
fn conn() -> ClientConn {
    ClientConn::new(128, Instant::now())
}

/// Everything the machine starts now.
fn drain(c: &mut ClientConn, lim: &Limits) -> Vec<Started> {
    let mut keys = Vec::new();
    let mut out = Vec::new();
    // Bounded: a table never holds more than a few hundred requests.
    for _ in 0..1000 {
        match c.next(lim, 0, &mut keys) {
            None => break,
            Some(Next::Request { seq, r, bytes, .. }) => {
                out.push(Started::Text(seq, r.verb, bytes.to_vec()));
            }
            Some(Next::Binary { seq, request, .. }) => {
                out.push(Started::Binary(seq, request.to_vec()))
            }
        }
    }
    out
}

/// The bytes queued for the client, written out in full.
fn written(c: &mut ClientConn) -> Vec<u8> {
    c.drain_ready();
    let mut all = Vec::new();
    for b in c.out() {
        all.extend_from_slice(b);
    }
    c.sent(all.len(), Instant::now(), |_, _| {});
    all
}

fn text(seq: u64, verb: Verb, line: &[u8]) -> Started {
    Started::Text(seq, verb, line.to_vec())
}

fn answer(b: &'static [u8]) -> Answer {
    Answer::One(Bytes::from_static(b))
}

#[test]
fn pipelined_requests_start_in_order_and_answers_leave_in_order() {
    let mut c = conn();
    c.received(b"get a\r\nset b 0 0 1\r\nx\r\ndelete c\r\n", Instant::now());
    assert_eq!(
        drain(&mut c, &LIM),
        vec![
            text(0, Verb::Get, b"get a\r\n"),
            text(1, Verb::Set, b"set b 0 0 1\r\nx\r\n"),
            text(2, Verb::Delete, b"delete c\r\n"),
        ]
    );
    // Answered out of order: nothing leaves before the first.
    assert!(!c.fill(2, answer(b"DELETED\r\n")));
    assert!(!c.fill(1, answer(b"STORED\r\n")));
    assert_eq!(written(&mut c), b"");
    assert!(c.fill(0, answer(b"END\r\n")));
    assert_eq!(written(&mut c), b"END\r\nSTORED\r\nDELETED\r\n");
    assert_eq!(c.phase(), Phase::Open);
}

#[test]
fn a_request_starts_only_once_all_its_bytes_are_in() {
    let wire: &[u8] = b"set k 0 0 5\r\nhello\r\n";
    let mut c = conn();
    for (i, b) in wire.iter().enumerate() {
        c.received(&[*b], Instant::now());
        let started = drain(&mut c, &LIM);
        if i + 1 < wire.len() {
            assert!(started.is_empty(), "started after {} bytes", i + 1);
        } else {
            assert_eq!(started, vec![text(0, Verb::Set, wire)]);
        }
    }
    assert_eq!(c.buffered(), 0);
}

#[test]
fn bad_lines_get_memcached_answers_in_their_place() {
    let mut c = conn();
    c.received(
        b"get a\r\nbogus\r\nset k 0 0 x\r\nset q 0 0 x noreply\r\nget b\r\n",
        Instant::now(),
    );
    assert_eq!(
        drain(&mut c, &LIM),
        vec![
            text(0, Verb::Get, b"get a\r\n"),
            text(4, Verb::Get, b"get b\r\n")
        ]
    );
    assert_eq!(c.take_refused(), 3);
    assert_eq!(c.take_refused(), 0);
    c.fill(0, answer(b"END\r\n"));
    c.fill(4, answer(b"END\r\n"));
    assert_eq!(
        written(&mut c),
        b"END\r\nERROR\r\nCLIENT_ERROR bad command line format\r\nEND\r\n"
    );
}

#[test]
fn a_refused_items_data_is_swallowed_never_run_as_commands() {
    let lim = Limits {
        max_item: 16,
        ..LIM
    };
    let mut c = conn();
    // Its data holds a command line: it must be dropped with the rest.
    c.received(b"set k 0 0 40\r\nflush_all\r\n", Instant::now());
    // The old item goes first: a silent delete, not timed, not a client's.
    assert_eq!(
        drain(&mut c, &lim),
        vec![text(0, Verb::Delete, b"delete k noreply\r\n")]
    );
    assert_eq!(c.take_refused(), 1);
    c.received(&[b'x'; 29], Instant::now());
    c.received(b"\r", Instant::now());
    assert!(drain(&mut c, &lim).is_empty());
    c.received(b"\n", Instant::now());
    assert!(drain(&mut c, &lim).is_empty());
    c.received(b"get k\r\n", Instant::now());
    assert_eq!(drain(&mut c, &lim), vec![text(2, Verb::Get, b"get k\r\n")]);
    c.fill(0, Answer::Nothing);
    c.fill(2, answer(b"END\r\n"));
    assert_eq!(
        written(&mut c),
        b"SERVER_ERROR object too large for cache\r\nEND\r\n"
    );
}

#[test]
fn nothing_after_quit_starts_even_behind_an_unanswered_request() {
    let mut c = conn();
    c.received(b"get a\r\nquit\r\nset b 0 0 1\r\nx\r\n", Instant::now());
    let started = drain(&mut c, &LIM);
    assert_eq!(started, vec![text(0, Verb::Get, b"get a\r\n")]);
    assert_eq!(c.phase(), Phase::Closing);
    assert!(drain(&mut c, &LIM).is_empty(), "the set ran after quit");
    assert!(!c.finished());
    c.fill(0, answer(b"END\r\n"));
    assert_eq!(written(&mut c), b"END\r\n");
    assert!(c.finished());
    // What was buffered behind the quit is released, what arrives now is
    // dropped.
    assert_eq!(c.buffered(), 0);
    c.received(b"get z\r\n", Instant::now());
    assert_eq!(c.buffered(), 0);
}

#[test]
fn a_peer_that_ends_its_side_is_still_answered() {
    let mut c = conn();
    c.received(b"get a\r\nget b\r\n", Instant::now());
    c.peer_closed();
    assert_eq!(c.phase(), Phase::Draining);
    assert!(!c.wants_input(LIM.budget, 0));
    assert_eq!(drain(&mut c, &LIM).len(), 2);
    c.fill(0, answer(b"END\r\n"));
    assert!(!c.finished());
    c.fill(1, answer(b"END\r\n"));
    assert_eq!(written(&mut c), b"END\r\nEND\r\n");
    assert!(c.finished());
}

#[test]
fn framing_lost_closes_after_what_was_answered() {
    // Not memcached at all: closed without a word.
    let mut c = conn();
    c.received(b"get a\r\nGET / HTTP/1.1\r\n\r\n", Instant::now());
    assert_eq!(drain(&mut c, &LIM).len(), 1);
    assert_eq!(c.take_refused(), 1);
    c.fill(0, answer(b"END\r\n"));
    assert_eq!(written(&mut c), b"END\r\n");
    assert_eq!(c.phase(), Phase::Closing);
    assert!(c.finished());

    // A line past the limit: memcached's error, then the close.
    let mut c = conn();
    c.received(&vec![b'a'; 70 * 1024], Instant::now());
    assert!(drain(&mut c, &LIM).is_empty());
    assert_eq!(written(&mut c), b"CLIENT_ERROR line too long\r\n");
    assert!(c.finished());
}

#[test]
fn the_budget_holds_requests_back_until_answers_leave() {
    let lim = Limits {
        budget: 1000,
        ..LIM
    };
    let mut c = ClientConn::new(lim.budget, Instant::now());
    c.received(b"get a\r\nget b\r\nget c\r\n", Instant::now());
    // Two answers of the cautious first estimate fill the budget.
    assert_eq!(drain(&mut c, &lim).len(), 2);
    assert!(!c.wants_input(lim.budget, 0));
    c.fill(0, answer(b"END\r\n"));
    c.fill(1, answer(b"END\r\n"));
    c.drain_ready();
    // Unsent answers count, and bytes the transport still holds count too.
    assert!(!c.can_start(lim.budget, 996));
    assert!(c.can_start(lim.budget, 0));
    written(&mut c);
    assert_eq!(drain(&mut c, &lim).len(), 1);
    assert!(c.wants_input(lim.budget, 0));
}

#[test]
fn a_partial_send_resumes_at_the_exact_byte() {
    let mut c = conn();
    c.received(b"get a\r\n", Instant::now());
    drain(&mut c, &LIM);
    c.fill(
        0,
        Answer::Many(vec![
            Bytes::from_static(b"VALUE a 0 3\r\nabc\r\n"),
            Bytes::from_static(b"END\r\n"),
        ]),
    );
    c.drain_ready();
    c.sent(15, Instant::now(), |_, _| {});
    let rest: Vec<u8> = c.out().iter().flat_map(|b| b.to_vec()).collect();
    assert_eq!(rest, b"c\r\nEND\r\n");
}

#[test]
fn answers_are_timed_when_their_last_byte_is_written() {
    let lim = Limits {
        timing: true,
        ..LIM
    };
    let t0 = Instant::now();
    let mut c = ClientConn::new(lim.budget, t0);
    c.received(b"get a\r\nset b 0 0 1\r\nx\r\n", t0);
    drain(&mut c, &lim);
    c.fill(0, answer(b"END\r\n"));
    c.fill(1, answer(b"STORED\r\n"));
    c.drain_ready();
    let mut seen = Vec::new();
    let t1 = t0 + Duration::from_millis(3);
    c.sent(6, t1, |cmd, t| seen.push((cmd, t)));
    assert_eq!(
        seen,
        vec![(Command::of(Verb::Get), Duration::from_millis(3))]
    );
    c.sent(7, t1, |cmd, t| seen.push((cmd, t)));
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[1].0, Command::of(Verb::Set));
}

#[test]
fn refused_input_gets_out_of_memory_then_a_close() {
    let mut c = conn();
    c.received(b"get a\r\nset k 0 0 100000\r\nabc", Instant::now());
    assert_eq!(drain(&mut c, &LIM).len(), 1);
    assert!(c.buffered() > 0);
    c.refuse_input();
    assert_eq!(c.buffered(), 0);
    assert!(!c.reading());
    c.fill(0, answer(b"END\r\n"));
    assert_eq!(
        written(&mut c),
        b"END\r\nSERVER_ERROR out of memory storing object\r\n"
    );
    assert!(c.finished());
}

#[test]
fn a_long_get_line_is_served_in_batches() {
    let mut line = b"get".to_vec();
    let mut n = 0;
    while line.len() < 80 * 1024 {
        line.extend_from_slice(format!(" key{n:05}").as_bytes());
        n += 1;
    }
    line.extend_from_slice(b"\r\n");
    let mut c = conn();
    c.received(&line, Instant::now());
    let mut keys = Vec::new();
    let mut batches = Vec::new();
    // Bounded: a few batches.
    while let Some(Next::Request {
        bytes, strip_end, ..
    }) = c.next(&LIM, 0, &mut keys)
    {
        batches.push((bytes.len(), strip_end));
    }
    assert!(batches.len() >= 2, "{batches:?}");
    assert!(batches[..batches.len() - 1].iter().all(|b| b.1));
    assert!(!batches[batches.len() - 1].1);
    assert_eq!(c.buffered(), 0);
}

#[test]
fn binary_connections_are_told_by_their_first_byte() {
    let mut c = conn();
    let get = request_frame(Opcode::Get, 7, 0, b"", b"k", b"");
    c.received(&get, Instant::now());
    assert!(matches!(drain(&mut c, &LIM)[..], [Started::Binary(0, _)]));
    assert!(c.is_binary());
    // A text line on a binary connection is a bad magic: closed.
    c.received(b"get k\r\n", Instant::now());
    assert!(drain(&mut c, &LIM).is_empty());
    assert_eq!(c.take_refused(), 1);
    assert_eq!(c.phase(), Phase::Closing);
}

#[test]
fn a_binary_request_of_two_steps_holds_back_the_ones_after_it() {
    let mut c = conn();
    let incr = request_frame(
        Opcode::Increment,
        1,
        0,
        &arithmetic_extras(1, 5, 0),
        b"n",
        b"",
    );
    let get = request_frame(Opcode::Get, 2, 0, b"", b"k", b"");
    c.received(&[incr, get].concat(), Instant::now());
    assert_eq!(drain(&mut c, &LIM).len(), 1, "the get overtook the incr");
    assert!(c.end_barrier(0));
    assert_eq!(drain(&mut c, &LIM).len(), 1);
}

#[test]
fn a_write_waiting_for_its_section_holds_back_the_ones_after_it() {
    let mut c = conn();
    c.received(b"incr n 1\r\nget n\r\n", Instant::now());
    let mut keys = Vec::new();
    assert!(c.next(&LIM, 0, &mut keys).is_some());
    c.hold(true);
    assert!(c.next(&LIM, 0, &mut keys).is_none());
    c.hold(false);
    assert!(c.next(&LIM, 0, &mut keys).is_some());
}

#[test]
fn writes_are_counted_until_answered() {
    let mut c = conn();
    c.received(b"set a 0 0 1\r\nx\r\nget a\r\n", Instant::now());
    let mut keys = Vec::new();
    let Some(Next::Request { seq: set, .. }) = c.next(&LIM, 0, &mut keys) else {
        panic!("the set starts");
    };
    c.writing(set);
    c.writing(set);
    assert_eq!(c.writes_waiting(), 1, "a write counts once");
    let Some(Next::Request { seq: get, .. }) = c.next(&LIM, 0, &mut keys) else {
        panic!("the get starts");
    };
    assert_eq!(c.writes_waiting(), 1, "a read is not a write");
    c.fill(get, Answer::One(Bytes::from_static(b"END\r\n")));
    assert_eq!(c.writes_waiting(), 1);
    c.fill(set, Answer::One(Bytes::from_static(b"STORED\r\n")));
    assert_eq!(c.writes_waiting(), 0);
}

#[test]
fn a_handshake_holds_requests_and_expires_at_its_deadline() {
    let t0 = Instant::now();
    let deadline = t0 + Duration::from_secs(10);
    let mut c = ClientConn::handshaking(128, t0, deadline);
    assert!(c.reading() && c.wants_input(LIM.budget, 0));
    assert_eq!(c.handshake_check(t0), Handshake::Pending(deadline));
    // Plaintext cannot come before the handshake ends; nothing starts.
    assert!(drain(&mut c, &LIM).is_empty());
    assert!(!c.finished());
    c.handshake_done();
    assert_eq!(c.phase(), Phase::Open);
    assert_eq!(c.handshake_check(deadline), Handshake::Done);
    c.received(b"get a\r\n", t0);
    assert_eq!(drain(&mut c, &LIM).len(), 1);

    // One that never finishes is closed at its deadline, not before.
    let mut slow = ClientConn::handshaking(128, t0, deadline);
    assert_eq!(
        slow.handshake_check(deadline - Duration::from_millis(1)),
        Handshake::Pending(deadline)
    );
    assert_eq!(slow.handshake_check(deadline), Handshake::Expired);
    assert_eq!(slow.phase(), Phase::Closed);
    // A peer that leaves mid-handshake is done at once.
    let mut gone = ClientConn::handshaking(128, t0, deadline);
    gone.peer_closed();
    assert!(gone.finished());
}

/// A stream of valid requests, as bytes, and how many it holds.
fn stream() -> impl Strategy<Value = (Vec<u8>, usize)> {
    let one = prop_oneof![
        "[a-z]{1,8}".prop_map(|k| format!("get {k}\r\n").into_bytes()),
        ("[a-z]{1,8}", "[a-z]{0,20}").prop_map(|(k, v)| format!(
            "set {k} 0 0 {}\r\n{v}\r\n",
            v.len()
        )
        .into_bytes()),
        "[a-z]{1,8}".prop_map(|k| format!("mg {k} v\r\n").into_bytes()),
        Just(b"version\r\n".to_vec()),
    ];
    proptest::collection::vec(one, 1..20).prop_map(|v| (v.concat(), v.len()))
}

proptest! {
    /// However the stream is cut into receives, the same requests start in
    /// the same order, each exactly once.
    #[test]
    fn any_split_of_a_stream_starts_the_same_requests(
        (wire, n) in stream(),
        cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..8),
    ) {
        let mut whole = conn();
        whole.received(&wire, Instant::now());
        let expect = drain(&mut whole, &LIM);
        prop_assert_eq!(expect.len(), n);
        let mut at: Vec<usize> = cuts.iter().map(|i| i.index(wire.len())).collect();
        at.push(wire.len());
        at.sort_unstable();
        let mut c = conn();
        let mut got = Vec::new();
        let mut from = 0;
        for to in at {
            c.received(&wire[from..to], Instant::now());
            got.extend(drain(&mut c, &LIM));
            from = to;
        }
        prop_assert_eq!(got, expect);
    }

    /// Random bytes never panic the machine, and every request it starts
    /// is answered exactly once in order.
    #[test]
    fn random_bytes_never_break_the_machine(chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..64), 0..8)) {
        let mut c = conn();
        for ch in chunks {
            c.received(&ch, Instant::now());
            for s in drain(&mut c, &LIM) {
                let seq = match s { Started::Text(q, ..) | Started::Binary(q, _) => q };
                c.fill(seq, Answer::Nothing);
            }
            written(&mut c);
        }
    }
}
