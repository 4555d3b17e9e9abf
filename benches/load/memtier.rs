//! The second driver: memtier_benchmark (Redis Ltd.'s load generator, which
//! memring did not write) runs the same workloads at the same fixed rates
//! against the same targets, so no figure rests on the project's own client.
//!
//! memtier is a child of the harness, so it runs on the client core beside
//! the pool. Its rate limit is per connection: `--rate-limiting` =
//! offered rate / connections. memtier keeps it with one timer per
//! connection at 50 ticks a second and sends ⌈rate/50⌉ requests per tick,
//! one after another (with `--pipeline` up to that many at once): arrivals
//! come in small per-connection trains, between the harness's spread
//! arrivals and its 1 ms bursts. Latency counts from memtier's send, so a
//! request queued behind its own train is not charged (coordinated
//! omission, unlike the harness's driver).
//!
//! A run is: populate (first round only, memtier writing every key once),
//! an unmeasured memtier run for the warm-up, then the measured memtier run;
//! CPU is sampled around the measured run, which includes its 50 connects.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::{rusage_cpu, Live, Opts, RunStats, Sample, Workload, PERCENTILES};

/// How to get memtier_benchmark, said when it is missing.
const INSTALL: &str = "memtier_benchmark not found: set MEMTIER_BIN, or put it on PATH \
    (Debian has no package; build it: apt-get install autoconf automake make g++ \
    libevent-dev libssl-dev zlib1g-dev pkg-config, then in a clone of \
    github.com/RedisLabs/memtier_benchmark `autoreconf -ivf && ./configure && make`)";

/// memtier_benchmark: `MEMTIER_BIN`, else the first on PATH.
pub(super) fn bin() -> Result<PathBuf, String> {
    if let Some(bin) = std::env::var_os("MEMTIER_BIN") {
        let bin = PathBuf::from(bin);
        return if bin.exists() {
            Ok(bin)
        } else {
            Err(format!(
                "MEMTIER_BIN={} does not exist; {INSTALL}",
                bin.display()
            ))
        };
    }
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join("memtier_benchmark"))
        .find(|p| p.exists())
        .ok_or_else(|| INSTALL.to_string())
}

/// memtier's flags for workload `w`'s keys and values against `port`.
fn target_args(w: &Workload, port: u16) -> Vec<String> {
    vec![
        "--protocol=memcache_text".to_string(),
        "--server=127.0.0.1".to_string(),
        format!("--port={port}"),
        "--threads=1".to_string(),
        format!("--data-size={}", w.value_size),
        format!("--key-prefix=memring:{}:", w.id),
        "--key-minimum=1".to_string(),
        format!("--key-maximum={}", w.keys),
        "--hide-histogram".to_string(),
        "--print-percentiles=50,90,99,99.9".to_string(),
    ]
}

/// memtier's flags for workload `w`'s traffic against `port`, running `d`.
fn traffic_args(w: &Workload, port: u16, d: Duration) -> Vec<String> {
    let (set, get) = (w.set_weight, w.get_weight);
    let mut args = target_args(w, port);
    args.extend([
        format!("--clients={}", w.conns),
        format!("--pipeline={}", w.depth),
        "--key-pattern=R:R".to_string(),
        // Whole seconds: memtier's `--test-time` takes no fraction.
        format!("--test-time={}", d.as_secs_f64().ceil().max(1.0)),
    ]);
    if w.multiget > 1 {
        // memtier's ratio counts keys: `get` gets of `multiget` keys each.
        args.push(format!("--ratio={set}:{}", get as usize * w.multiget));
        args.push(format!("--multi-key-get={}", w.multiget));
    } else {
        args.push(format!("--ratio={set}:{get}"));
    }
    if let Some(rate) = w.rate {
        let per_conn = (rate / w.conns as f64).ceil().max(1.0);
        args.push(format!("--rate-limiting={per_conn}"));
    }
    args
}

/// Run memtier to completion; its stdout and stderr tail on failure.
fn memtier(bin: &Path, args: &[String], limit: Duration) -> Result<(), String> {
    let mut child = Command::new(bin)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("{}: {e}", bin.display()))?;
    let deadline = Instant::now() + limit;
    loop {
        match child.try_wait() {
            Ok(Some(st)) if st.success() => return Ok(()),
            Ok(Some(st)) => {
                let out = child.wait_with_output().map_err(|e| e.to_string())?;
                let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
                text.push_str(&String::from_utf8_lossy(&out.stderr));
                let tail: Vec<&str> = text.lines().rev().take(6).collect();
                let tail: Vec<&str> = tail.into_iter().rev().collect();
                return Err(format!("memtier_benchmark {st}: {}", tail.join(" | ")));
            }
            Ok(None) if Instant::now() > deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("memtier_benchmark ran past {limit:?}; killed"));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => return Err(format!("memtier_benchmark: {e}")),
        }
    }
}

/// Populate (if asked), warm up and measure workload `w` against `live`
/// with memtier; the same figures as the harness's own driver.
pub(super) fn run_one(
    bin: &Path,
    w: &Workload,
    live: &Live,
    populate_first: bool,
    watched: &[usize],
    opts: &Opts,
    scratch: &Path,
) -> Result<RunStats, String> {
    if live.tls.is_some() {
        return Err("the memtier driver does not run the TLS target".into());
    }
    let slack = Duration::from_secs(60);
    if populate_first {
        let mut args = target_args(w, live.populate_addr.port());
        args.extend(
            [
                "--clients=4",
                "--pipeline=64",
                "--ratio=1:0",
                "--key-pattern=P:P",
                "--requests=allkeys",
            ]
            .map(String::from),
        );
        memtier(bin, &args, slack).map_err(|e| format!("populate: {e}"))?;
    }
    let port = live.addr.port();
    if !opts.warmup.is_zero() {
        let args = traffic_args(w, port, opts.warmup);
        memtier(bin, &args, opts.warmup + slack).map_err(|e| format!("warm-up: {e}"))?;
    }

    let json = scratch.join(format!("memtier-{}-{}.json", w.id, live.pid));
    let mut args = traffic_args(w, port, opts.duration);
    args.push(format!("--json-out-file={}", json.display()));
    let before = Sample::take(rusage_cpu(libc::RUSAGE_CHILDREN), live, watched);
    memtier(bin, &args, opts.duration + slack)?;
    let after = Sample::take(rusage_cpu(libc::RUSAGE_CHILDREN), live, watched);
    let text = std::fs::read_to_string(&json).map_err(|e| format!("{}: {e}", json.display()))?;
    let _ = std::fs::remove_file(&json);
    let report: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| format!("memtier's JSON: {e}"))?;
    let all = &report["ALL STATS"];
    let totals = &all["Totals"];
    let num = |v: &serde_json::Value, what: &str| {
        v.as_f64()
            .ok_or_else(|| format!("memtier's JSON has no {what}"))
    };
    let ops = num(&totals["Count"], "Totals.Count")?;
    if ops < 1.0 {
        return Err("memtier completed no request".into());
    }
    let ops_per_sec = num(&totals["Ops/sec"], "Totals.Ops/sec")?;
    // memtier's latencies are in milliseconds; its percentile keys are
    // `p50.00`, `p99.90`, ...
    let pct = &totals["Percentile Latencies"];
    let mut lat_us = [0.0; 5];
    for (slot, (label, _)) in lat_us.iter_mut().zip(PERCENTILES) {
        let ms = match label {
            "max" => num(&totals["Max Latency"], "Totals.Max Latency")?,
            "p99.9" => num(&pct["p99.90"], label)?,
            _ => num(&pct[format!("{label}.00")], label)?,
        };
        *slot = ms * 1000.0;
    }
    let gets = &all["Gets"];
    let (hits, misses) = (
        num(&gets["Hits/sec"], "Gets.Hits/sec")?,
        num(&gets["Misses/sec"], "Gets.Misses/sec")?,
    );
    let sets = num(&all["Sets"]["Ops/sec"], "Sets.Ops/sec")?;
    Ok(RunStats {
        ops_per_sec,
        keys_per_sec: hits + misses + sets,
        lat_us,
        // The summed latency is in milliseconds too.
        mean_us: num(&totals["Accumulated Latency"], "Totals.Accumulated Latency")? * 1000.0 / ops,
        ops: ops as u64,
        hit_ratio: if hits + misses > 0.0 {
            hits / (hits + misses)
        } else {
            1.0
        },
        errors: 0,
        timeouts: 0,
        conn_errors: num(&totals["Connection Errors"], "Totals.Connection Errors")? as u64,
        ..before.until(&after, ops)
    })
}
