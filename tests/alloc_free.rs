//! "Zero heap allocations per proxied request in steady state", checked
//! in-process.
//!
//! A benchmark can only count allocations in its own process and the proxy
//! runs as a separate one, so this test drives the pure hot path the proxy
//! runs per request — parse the client request, route it (the router, and a
//! multi-get grouped per server as the request machine groups it), compose the upstream request, frame the upstream
//! reply, assemble the client reply — through memring's public API only,
//! with warm buffers, under a counting `#[global_allocator]`, and asserts that
//! after warmup an iteration allocates nothing.
//!
//! The counter is per thread, so libtest's own threads (and other tests in
//! this file running in parallel) do not disturb the count.
//!
//! The request state machines (`proxy::machine`) are checked the same way:
//! a single-key get and a mirrored set, start to answer, allocate nothing.

// Tests and benchmarks keep time themselves (clippy.toml holds the library).
#![allow(clippy::disallowed_methods)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::ops::Range;

use bytes::BytesMut;
use memring::protocol::compose::{compose_retrieval, compose_storage_line, END};
use memring::protocol::{
    frame_response, parse_request, Expect, Framed, Parsed, Request, ValueItem,
};
use memring::route::{Distribution, Member, Router};

/// Counts allocations (alloc, alloc_zeroed, realloc) made by the current thread.
struct CountingAlloc;

thread_local! {
    // const-initialised and without a destructor: touching it never allocates.
    static ALLOCS: Cell<u64> = const { Cell::new(0) };
}

fn bump() {
    // try_with: the slot may be gone while the thread is being torn down.
    let _ = ALLOCS.try_with(|c| c.set(c.get() + 1));
}

fn allocs() -> u64 {
    ALLOCS.with(|c| c.get())
}

// SAFETY: every method forwards to `System` unchanged; counting has no effect
// on the memory handed out.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        bump();
        System.alloc(layout)
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        bump();
        System.alloc_zeroed(layout)
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        bump();
        System.realloc(ptr, layout, new_size)
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
}

#[global_allocator]
static GLOBAL: CountingAlloc = CountingAlloc;

const MAX_ITEM: usize = 1024 * 1024;
const SERVERS: usize = 3;

/// The per-connection state a proxy keeps warm between requests.
struct HotPath {
    router: Router,
    keys: Vec<Range<usize>>,
    /// The primary of each key of a multi-get.
    owners: Vec<u32>,
    items: Vec<ValueItem>,
    /// One upstream write buffer per server.
    upstream: Vec<BytesMut>,
    /// The client's reply buffer.
    out: BytesMut,
}

impl HotPath {
    fn new() -> HotPath {
        let members: Vec<Member> = (0..SERVERS)
            .map(|i| Member {
                name: format!("127.0.0.1:{}", 11211 + i),
                weight: 1,
            })
            .collect();
        HotPath {
            router: Router::single(Distribution::Ketama, &members, &[]),
            keys: Vec::new(),
            owners: Vec::new(),
            items: Vec::new(),
            upstream: (0..SERVERS).map(|_| BytesMut::new()).collect(),
            out: BytesMut::new(),
        }
    }

    /// Route one parsed request: compose what goes to which server(s).
    fn route(&mut self, buf: &[u8], req: &Request) {
        if req.verb.is_retrieval() {
            let router = &self.router;
            self.owners.clear();
            self.owners.extend(
                self.keys
                    .iter()
                    .map(|k| router.route(&buf[k.clone()]).primary),
            );
            for (server, up) in self.upstream.iter_mut().enumerate() {
                let mine = |i: &usize| self.owners[*i] == server as u32;
                if !(0..self.keys.len()).any(|i| mine(&i)) {
                    continue;
                }
                let ks = (0..self.keys.len())
                    .filter(mine)
                    .map(|i| &buf[self.keys[i].clone()]);
                compose_retrieval(up, req.verb, req.exptime, ks);
            }
        } else {
            let key = &buf[req.key.clone()];
            let data = &buf[req.data.clone()];
            let up = &mut self.upstream[self.router.route(key).primary as usize];
            compose_storage_line(
                up,
                req.verb,
                key,
                req.flags,
                req.exptime,
                data.len(),
                None,
                req.noreply,
            );
            up.extend_from_slice(data);
            up.extend_from_slice(b"\r\n");
        }
    }

    /// Frame one upstream reply and append what the client gets.
    fn reply(&mut self, expect: Expect, reply: &[u8]) -> usize {
        match frame_response(expect, reply, MAX_ITEM, &mut self.items) {
            Ok(Framed::Complete { len, .. }) => {
                if expect == Expect::Values {
                    for it in &self.items {
                        self.out.extend_from_slice(&reply[it.item.clone()]);
                    }
                    self.out.extend_from_slice(END);
                } else {
                    self.out.extend_from_slice(&reply[..len]);
                }
                len
            }
            other => panic!("canned reply did not frame: {other:?}"),
        }
    }

    /// One iteration: every request in `client`, routed and answered.
    fn iteration(&mut self, client: &[u8], get_reply: &[u8], mget_reply: &[u8]) -> usize {
        let mut pos = 0;
        let mut served = 0;
        while pos < client.len() {
            let buf = &client[pos..];
            let req = match parse_request(buf, MAX_ITEM, &mut self.keys) {
                Parsed::Complete(r) => r,
                other => panic!("request at {pos} did not parse: {other:?}"),
            };
            self.route(buf, &req);
            if req.verb.is_retrieval() {
                let canned = if self.keys.len() > 1 {
                    mget_reply
                } else {
                    get_reply
                };
                self.reply(Expect::Values, canned);
            } else {
                self.reply(Expect::Line, b"STORED\r\n");
            }
            pos += req.consumed;
            served += 1;
        }
        // The server layer would write these out; the buffers keep their capacity.
        for up in &mut self.upstream {
            up.clear();
        }
        self.out.clear();
        served
    }
}

fn value_block(key: &str, data: &[u8]) -> Vec<u8> {
    let mut v = format!("VALUE {key} 0 {}\r\n", data.len()).into_bytes();
    v.extend_from_slice(data);
    v.extend_from_slice(b"\r\n");
    v
}

#[test]
fn counting_allocator_sees_allocations() {
    let before = allocs();
    let v: Vec<u8> = Vec::with_capacity(64);
    std::hint::black_box(&v);
    assert!(allocs() > before, "the counting allocator is not installed");
}

#[test]
fn hot_path_allocates_nothing_in_steady_state() {
    let value = [b'v'; 100];
    let mget_keys: Vec<String> = (0..10).map(|i| format!("user:{i:04}")).collect();

    // A pipelined batch from one client: get, 10-key multi-get, set.
    let mut client = b"get user:0042\r\n".to_vec();
    client.extend_from_slice(format!("get {}\r\n", mget_keys.join(" ")).as_bytes());
    client.extend_from_slice(b"set user:0042 5 0 100\r\n");
    client.extend_from_slice(&value);
    client.extend_from_slice(b"\r\n");

    let mut get_reply = value_block("user:0042", &value);
    get_reply.extend_from_slice(b"END\r\n");
    let mut mget_reply = Vec::new();
    for k in &mget_keys {
        mget_reply.extend_from_slice(&value_block(k, &value));
    }
    mget_reply.extend_from_slice(b"END\r\n");

    let mut hot = HotPath::new();
    // Warmup: buffers and plan vectors grow to their steady-state size.
    for _ in 0..100 {
        assert_eq!(hot.iteration(&client, &get_reply, &mget_reply), 3);
    }

    const ITERS: u64 = 10_000;
    let before = allocs();
    for _ in 0..ITERS {
        std::hint::black_box(hot.iteration(&client, &get_reply, &mget_reply));
    }
    let n = allocs() - before;
    assert_eq!(
        n,
        0,
        "{n} allocations over {ITERS} iterations ({:.3} per iteration of 3 requests)",
        n as f64 / ITERS as f64
    );
}

/// What a request machine sees of the servers: all of them up.
struct AllUp(Vec<memring::upstream::Health>);

impl memring::proxy::machine::View for AllUp {
    fn observe(&self, s: memring::upstream::ServerId) -> memring::upstream::Observed {
        self.0[s.index()].observe()
    }

    fn now_unix(&self) -> i64 {
        1_700_000_000
    }
}

/// Run one request through its machine, answering every call with `reply`;
/// returns the answer's length.
fn run_machine(
    request: &bytes::Bytes,
    reply: &'static [u8],
    expect: Expect,
    view: &AllUp,
    keys: &mut Vec<Range<usize>>,
    items: &mut Vec<ValueItem>,
    fx: &mut Vec<memring::proxy::machine::Effect>,
) -> usize {
    use memring::proxy::machine::{Answer, ClientRequest, Effect, Keys, Machine, Replicas, Reply};
    use memring::upstream::ServerId;
    let r = match parse_request(request, MAX_ITEM, keys) {
        Parsed::Complete(r) => r,
        other => panic!("did not parse: {other:?}"),
    };
    let req = ClientRequest {
        r,
        bytes: request.clone(),
        keys: Keys::take(keys),
    };
    let replicas = [Replicas {
        primary: ServerId(0),
        backup: Some(ServerId(1)),
    }];
    let servers = [ServerId(0), ServerId(1)];
    fx.clear();
    let mut m = Machine::start(req, &replicas, &servers, view, fx);
    // Effects are handled in order; outcomes append the next steps' effects.
    let mut answered = 0;
    let mut i = 0;
    while i < fx.len() {
        if let Effect::Send { call, .. } = fx[i] {
            let (status, line, data) = match frame_response(expect, reply, MAX_ITEM, items) {
                Ok(Framed::Complete {
                    status, line, data, ..
                }) => (status, line, data),
                other => panic!("canned reply did not frame: {other:?}"),
            };
            let frame = bytes::Bytes::from_static(reply);
            let r = Reply {
                frame,
                status,
                line,
                data,
            };
            m.on_outcome(call, Ok(r), view, fx);
        } else if let Effect::Answer(Answer::One(b)) = &fx[i] {
            answered += b.len();
        }
        i += 1;
    }
    assert!(m.is_done(), "machine did not finish");
    answered
}

#[test]
fn request_machines_allocate_nothing_for_a_get_and_a_mirrored_set() {
    let t0 = std::time::Instant::now();
    let view = AllUp(vec![
        memring::upstream::Health::new(t0),
        memring::upstream::Health::new(t0),
    ]);
    let get = bytes::Bytes::from_static(b"get user:0042\r\n");
    let set = bytes::Bytes::from_static(b"set user:0042 5 0 3\r\nabc\r\n");
    const HIT: &[u8] = b"VALUE user:0042 5 3\r\nabc\r\nEND\r\n";
    let mut keys = Vec::new();
    let mut items = Vec::new();
    let mut fx = Vec::with_capacity(16);
    let mut iteration = |fx: &mut Vec<_>| {
        let a = run_machine(&get, HIT, Expect::Values, &view, &mut keys, &mut items, fx);
        let b = run_machine(
            &set,
            b"STORED\r\n",
            Expect::Line,
            &view,
            &mut keys,
            &mut items,
            fx,
        );
        (a, b)
    };
    for _ in 0..10 {
        assert_eq!(iteration(&mut fx), (HIT.len(), 8));
    }
    const ITERS: u64 = 10_000;
    let before = allocs();
    for _ in 0..ITERS {
        std::hint::black_box(iteration(&mut fx));
    }
    let n = allocs() - before;
    assert_eq!(
        n, 0,
        "{n} allocations over {ITERS} machine runs of a get and a mirrored set"
    );
}
