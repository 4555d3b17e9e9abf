//! CPU cost of one request through its state machine, without I/O: parse a
//! `get` (hit) or a mirrored `set`, run its machine, frame the canned replies
//! the servers would send, and take the answer. Thread CPU time, so a busy
//! machine inflates it less than wall time.
//!
//! Run: `cargo run --release --example machine_cost`.

// Examples keep time themselves (clippy.toml holds the library).
#![allow(clippy::disallowed_methods)]

use bytes::Bytes;
use memring::protocol::{frame_response, parse_request, Expect, Framed, Parsed};
use memring::proxy::machine::*;
use memring::upstream::{Health, Observed, ServerId};
use std::time::Instant;

struct Up(Vec<Health>);
impl View for Up {
    fn observe(&self, s: ServerId) -> Observed {
        self.0[s.index()].observe()
    }
    fn now_unix(&self) -> i64 {
        1_700_000_000
    }
}

fn run(
    view: &Up,
    req: &Bytes,
    reply: &'static [u8],
    expect: Expect,
    keys: &mut Vec<std::ops::Range<usize>>,
    items: &mut Vec<memring::protocol::ValueItem>,
    fx: &mut Vec<Effect>,
) {
    let Parsed::Complete(r) = parse_request(req, 1 << 20, keys) else {
        panic!()
    };
    let cr = ClientRequest {
        r,
        bytes: req.clone(),
        keys: Keys::take(keys),
    };
    let reps = [Replicas {
        primary: ServerId(0),
        backup: Some(ServerId(1)),
    }];
    fx.clear();
    let mut m = Machine::start(cr, &reps, &[ServerId(0), ServerId(1)], view, fx);
    let mut i = 0;
    while i < fx.len() {
        if let Effect::Send { call, .. } = fx[i] {
            let Ok(Framed::Complete {
                status, line, data, ..
            }) = frame_response(expect, reply, usize::MAX, items)
            else {
                panic!()
            };
            m.on_outcome(
                call,
                Ok(Reply {
                    frame: Bytes::from_static(reply),
                    status,
                    line,
                    data,
                }),
                view,
                fx,
            );
        }
        i += 1;
    }
    assert!(m.is_done());
}

fn cpu_ns() -> u128 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid timespec out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as u128 * 1_000_000_000 + ts.tv_nsec as u128
}

fn main() {
    let view = Up(vec![
        Health::new(Instant::now()),
        Health::new(Instant::now()),
    ]);
    let get = Bytes::from_static(b"get user:0042\r\n");
    let set = Bytes::from_static(b"set user:0042 5 0 100\r\nvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvv\r\n");
    let mut keys = Vec::new();
    let mut items = Vec::new();
    let mut fx = Vec::with_capacity(16);
    for (name, req, reply, expect) in [
        (
            "get hit",
            &get,
            &b"VALUE user:0042 5 3\r\nabc\r\nEND\r\n"[..],
            Expect::Values,
        ),
        ("mirrored set", &set, &b"STORED\r\n"[..], Expect::Line),
    ] {
        for _ in 0..100_000 {
            run(&view, req, reply, expect, &mut keys, &mut items, &mut fx);
        }
        let n = 2_000_000;
        let t = Instant::now();
        let c0 = cpu_ns();
        for _ in 0..n {
            run(&view, req, reply, expect, &mut keys, &mut items, &mut fx);
        }
        let ns = t.elapsed().as_nanos() as f64 / n as f64;
        let cpu = (cpu_ns() - c0) as f64 / n as f64;
        println!("{name}: {cpu:.0} ns CPU ({ns:.0} ns wall) per request (parse + machine + framing the canned reply)");
    }
}
