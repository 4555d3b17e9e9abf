//! Micro-benchmarks of the pure hot path: request parsing, reply framing,
//! key placement (ring lookups, and the router over a multi-get's keys), and what latency recording
//! adds per request (`metrics`).
//!
//! ```text
//! cargo bench --bench micro            # all
//! cargo bench --bench micro -- ketama  # a filter
//! ```
//! Throughput is reported in elements: requests, replies, keys or lookups.

// Tests and benchmarks keep time themselves (clippy.toml holds the library).
#![allow(clippy::disallowed_methods)]

use std::hint::black_box;
use std::ops::Range;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use memring::protocol::{frame_response, parse_request, Expect, Framed, Parsed};
use memring::route::{Distribution, Member, Ring, Router};

/// Generous item limit, as the proxy's default (1 MiB).
const MAX_ITEM: usize = 1024 * 1024;

fn key(i: usize) -> String {
    format!("user:profile:{i:08}")
}

fn members() -> Vec<Member> {
    (0..3)
        .map(|i| Member {
            name: format!("127.0.0.1:{}", 11211 + i),
            weight: 1,
        })
        .collect()
}

fn parse_one(buf: &[u8], keys: &mut Vec<Range<usize>>) -> usize {
    match parse_request(buf, MAX_ITEM, keys) {
        Parsed::Complete(r) => r.consumed,
        other => panic!("benchmark input did not parse: {other:?}"),
    }
}

fn bench_parse(c: &mut Criterion) {
    let mut g = c.benchmark_group("parse");
    let mut keys = Vec::with_capacity(128);

    let get = format!("get {}\r\n", key(42)).into_bytes();
    g.throughput(Throughput::Elements(1));
    g.bench_function("get", |b| b.iter(|| parse_one(black_box(&get), &mut keys)));

    let mut set = format!("set {} 0 0 4096\r\n", key(42)).into_bytes();
    set.extend_from_slice(&[b'x'; 4096]);
    set.extend_from_slice(b"\r\n");
    g.throughput(Throughput::Elements(1));
    g.bench_function("set_4k", |b| {
        b.iter(|| parse_one(black_box(&set), &mut keys))
    });

    let mut mget = String::from("get");
    for i in 0..100 {
        mget.push(' ');
        mget.push_str(&key(i));
    }
    mget.push_str("\r\n");
    let mget = mget.into_bytes();
    g.throughput(Throughput::Elements(100));
    g.bench_function("multiget_100_keys", |b| {
        b.iter(|| parse_one(black_box(&mget), &mut keys))
    });
    g.finish();
}

fn bench_frame(c: &mut Criterion) {
    let mut g = c.benchmark_group("frame");
    let mut reply = format!("VALUE {} 0 100\r\n", key(42)).into_bytes();
    reply.extend_from_slice(&[b'v'; 100]);
    reply.extend_from_slice(b"\r\nEND\r\n");
    let mut items = Vec::with_capacity(4);
    g.throughput(Throughput::Elements(1));
    g.bench_function("get_reply_100b", |b| {
        b.iter(
            || match frame_response(Expect::Values, black_box(&reply), MAX_ITEM, &mut items) {
                Ok(Framed::Complete { len, .. }) => len,
                other => panic!("benchmark reply did not frame: {other:?}"),
            },
        )
    });
    g.finish();
}

fn bench_route(c: &mut Criterion) {
    let mut g = c.benchmark_group("route");
    let keys: Vec<Vec<u8>> = (0..1000).map(|i| key(i).into_bytes()).collect();
    for (name, dist) in [
        ("ketama_lookup", Distribution::Ketama),
        ("modula_lookup", Distribution::Modula),
    ] {
        let ring = Ring::new(dist, &members());
        g.throughput(Throughput::Elements(keys.len() as u64));
        g.bench_function(name, |b| {
            b.iter(|| {
                let mut acc = 0usize;
                for k in &keys {
                    acc = acc.wrapping_add(ring.server_for(black_box(k)));
                }
                acc
            })
        });
    }

    // A 100-key multi-get as the parser hands it over, placed by the
    // router (pool, primary, backup) as a request machine asks for it.
    let mut buf = Vec::new();
    let mut ranges = Vec::new();
    for i in 0..100 {
        let k = key(i);
        ranges.push(buf.len()..buf.len() + k.len());
        buf.extend_from_slice(k.as_bytes());
        buf.push(b' ');
    }
    let router = Router::single(Distribution::Ketama, &members(), &members());
    g.throughput(Throughput::Elements(100));
    g.bench_function("router_100_keys_3_servers_with_backups", |b| {
        b.iter(|| {
            let mut acc = 0u32;
            for r in &ranges {
                let route = router.route(black_box(&buf[r.clone()]));
                acc = acc.wrapping_add(route.primary + route.backup.unwrap_or(0));
            }
            acc
        })
    });
    g.finish();
}

/// An upper bound on what `--metrics-listen` adds to one proxied get: four
/// clock reads and the two histogram updates. (The engine reads no clock
/// for metrics: it stamps with the loop turn's time, so its real cost is
/// the two updates and a stamp queued and popped per request.)
fn bench_metrics(c: &mut Criterion) {
    use memring::metrics::{Command, CoreMetrics, ServerMetrics};
    use std::time::{Duration, Instant};
    let mut g = c.benchmark_group("metrics");
    let core = CoreMetrics::default();
    let server = ServerMetrics::new(1);
    g.throughput(Throughput::Elements(1));
    g.bench_function("instant_now", |b| b.iter(Instant::now));
    g.bench_function("record_request", |b| {
        let mut d = Duration::from_micros(37);
        b.iter(|| {
            d += Duration::from_nanos(13);
            core.record_request(black_box(Command::Get), black_box(d));
        })
    });
    g.bench_function("per_request_total", |b| {
        b.iter(|| {
            let t_read = Instant::now();
            let t_call = Instant::now();
            server.record_upstream(0, black_box(t_call.elapsed()));
            let t_write = Instant::now();
            core.record_request(Command::Get, black_box(t_write - t_read));
        })
    });
    g.finish();
}

criterion_group!(
    benches,
    bench_parse,
    bench_frame,
    bench_route,
    bench_metrics
);
criterion_main!(benches);
