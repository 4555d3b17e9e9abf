//! Load benchmark: the same workloads against one memcached directly, memring
//! in front of three memcached, and nutcracker in front of the same three.
//!
//! The client codec is memring's own protocol module: requests are composed
//! with `memring::protocol::compose` and replies framed with
//! `memring::protocol::frame_response`, so the harness exercises the same
//! parser contract the proxy does.
//!
//! The driver is one tokio current-thread runtime (one task per connection,
//! non-blocking sockets), pinned to one core while the system under test
//! (proxy and its memcached servers) is pinned to another. It reports its own
//! CPU use next to the SUT's so a saturated client is visible in the table.
//!
//! ```text
//! cargo bench --bench load -- [--workload a,b,...] [--duration 10s] [--quick]
//! ```
//! See `docs/benchmarks.md` for every flag and how to read the output.

// Tests and benchmarks keep time themselves (clippy.toml holds the library).
#![allow(clippy::disallowed_methods)]

use std::cell::RefCell;
use std::collections::VecDeque;
use std::fmt::Write as _;
use std::io::{self, BufRead, BufReader};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::rc::Rc;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};
use hdrhistogram::Histogram;
use memring::protocol::{compose, frame_response, Expect, Framed, Status, ValueItem, Verb};
use tokio::io::{AsyncReadExt, AsyncWriteExt, Interest};
use tokio::net::TcpStream;

#[path = "load/memtier.rs"]
mod memtier;

/// Largest reply data block the client accepts before calling framing lost.
const MAX_VALUE: usize = 2 * 1024 * 1024;
/// How long in-flight requests may take to drain after the measurement window.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a child process may take to accept connections.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(10);
/// Sets in flight per connection while pre-populating the key space.
const POPULATE_WINDOW: usize = 64;
/// Connections used to pre-populate the key space.
const POPULATE_CONNS: usize = 4;
/// Latency percentiles reported everywhere (label, quantile).
const PERCENTILES: [(&str, f64); 5] = [
    ("p50", 0.50),
    ("p90", 0.90),
    ("p99", 0.99),
    ("p99.9", 0.999),
    ("max", 1.0),
];

// ---------------------------------------------------------------------------
// Workloads and options
// ---------------------------------------------------------------------------

/// One workload: the shape of the traffic a run drives.
#[derive(Clone, Debug)]
struct Workload {
    /// Preset letter (`a`..`e`).
    id: char,
    /// One-line description for the table and the plot.
    name: String,
    /// Client connections.
    conns: usize,
    /// Requests in flight per connection (1 = no pipelining).
    depth: usize,
    /// Distinct keys; all of them are set before measuring so gets hit.
    keys: usize,
    /// Value size of sets and of the pre-populated items.
    value_size: usize,
    /// Relative weight of gets in the mix.
    get_weight: u32,
    /// Relative weight of sets in the mix.
    set_weight: u32,
    /// Keys per get (1 = single get).
    multiget: usize,
    /// Open loop: total requests per second over all connections, each
    /// connection on a fixed schedule; latency counts from the scheduled
    /// send time (no coordinated omission). `None` = closed loop.
    rate: Option<f64>,
}

/// The preset workloads of issues 4 and 8. a..d are open loop at the rates
/// issue 8 compares CPU per request at; e is the fan-in test.
fn presets() -> Vec<Workload> {
    let base = Workload {
        id: 'a',
        name: "50 conns, get:set 9:1, 100 B, 20k req/s".into(),
        conns: 50,
        depth: 1,
        keys: 10_000,
        value_size: 100,
        get_weight: 9,
        set_weight: 1,
        multiget: 1,
        rate: Some(20_000.0),
    };
    vec![
        base.clone(),
        Workload {
            id: 'b',
            name: "50 conns, pipeline depth 16, 9:1, 100 B, 60k req/s".into(),
            depth: 16,
            rate: Some(60_000.0),
            ..base.clone()
        },
        Workload {
            id: 'c',
            name: "50 conns, 10-key multi-gets, 9:1, 100 B, 10k req/s".into(),
            multiget: 10,
            rate: Some(10_000.0),
            ..base.clone()
        },
        Workload {
            id: 'd',
            name: "50 conns, 16 KB values, 9:1, 15k req/s".into(),
            value_size: 16 * 1024,
            keys: 2_000,
            rate: Some(15_000.0),
            ..base.clone()
        },
        Workload {
            id: 'e',
            name: "1000 mostly idle conns, 5000 req/s total".into(),
            conns: 1000,
            rate: Some(5000.0),
            ..base
        },
    ]
}

/// The processes a workload can be driven against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum TargetKind {
    /// One memcached, no proxy.
    Direct,
    /// nutcracker (twemproxy) in front of the 3-server pool: the yardstick.
    Nutcracker,
    /// memcached's built-in proxy (a memcached built with `--enable-proxy`)
    /// in front of the same pool.
    McProxy,
    /// memring in front of the same pool, default I/O backend.
    Memring,
    /// The same memring binary with `--io-backend epoll`.
    MemringEpoll,
    /// Another memring build (`MEMRING_BASE_BIN`), to compare two versions
    /// in one run.
    MemringBase,
    /// memring over TLS on both sides: the load generator speaks TLS to
    /// its `--tls-listen`, and it speaks TLS (`--server-tls`) to a pool of
    /// three memcached with `-Z`. Compared with `memring` in the same run,
    /// it is the cost of TLS.
    MemringTls,
}

impl TargetKind {
    const ALL: [TargetKind; 7] = [
        TargetKind::Direct,
        TargetKind::Nutcracker,
        TargetKind::McProxy,
        TargetKind::Memring,
        TargetKind::MemringEpoll,
        TargetKind::MemringBase,
        TargetKind::MemringTls,
    ];

    /// What runs without `--targets`.
    const DEFAULT: [TargetKind; 4] = [
        TargetKind::Direct,
        TargetKind::Nutcracker,
        TargetKind::McProxy,
        TargetKind::Memring,
    ];

    fn name(self) -> &'static str {
        match self {
            TargetKind::Direct => "direct",
            TargetKind::Nutcracker => "nutcracker",
            TargetKind::McProxy => "mcproxy",
            TargetKind::Memring => "memring",
            TargetKind::MemringEpoll => "memring-epoll",
            TargetKind::MemringBase => "memring-base",
            TargetKind::MemringTls => "memring-tls",
        }
    }
}

/// Command-line options. Unknown flags are ignored (cargo passes `--bench`).
#[derive(Debug)]
struct Opts {
    workloads: Vec<Workload>,
    targets: Vec<TargetKind>,
    duration: Duration,
    warmup: Duration,
    quick: bool,
    pin: bool,
    /// Pin the memcached pools to the client's core, not the proxy's (the
    /// default: the servers are other hosts in production; a pool on the
    /// proxy's core runs only when the proxy yields, which flatters a
    /// batching proxy).
    pool_on_client: bool,
    /// Arrivals spread (the default): exponential gaps per connection, kept
    /// by a high-resolution timer (timerfd), instead of bursts on tokio's
    /// 1 ms timer ticks.
    spread: bool,
    /// The load generator: the harness's own, or memtier_benchmark.
    driver: DriverKind,
    client_cpu: Option<usize>,
    server_cpu: Option<usize>,
    memring_threads: usize,
    /// Give the memring targets a backup pool of three more memcached
    /// (`-b`), which they write to and hedge onto.
    backups: bool,
    /// Rounds of every (workload, target) run; medians are reported.
    rounds: usize,
    /// `--sweep`: the workloads are the first selected one at each of
    /// these offered rates, and a latency-against-load plot is written.
    sweep: bool,
    out_dir: PathBuf,
    /// The harness's own command line, recorded with the results.
    command: String,
}

/// Which load generator drives the workloads.
#[derive(Clone, Copy, Debug, PartialEq)]
enum DriverKind {
    /// The harness's own (tokio; spread or bursty arrivals).
    Own,
    /// memtier_benchmark, a load generator memring did not write.
    Memtier,
}

fn usage() -> &'static str {
    "usage: cargo bench --bench load -- [options]\n\
     --workload a,b,c,d,e   presets to run (default: all)\n\
     --targets direct,nutcracker,mcproxy,memring[,memring-epoll,memring-base,memring-tls]\n\
     --rounds N             rounds of every run, targets rotated; medians (default 3, --quick 1)\n\
     --duration 6s          measured time per run (default 6s, --quick 1s)\n\
     --warmup 2s            unmeasured time per run (default 2s, --quick 250ms)\n\
     --quick                short runs for a smoke test (about a minute)\n\
     --conns N --depth N --keys N --value-size N --get-set G:S --multiget N\n\
     --rate OPS             override the presets (open loop at OPS req/s in total; 0 = closed loop)\n\
     --no-pin               do not pin client and servers to separate cores\n\
     --pool-on-proxy-core   pin the memcached pools to the proxy's core (the old, flattering shape;\n\
                            default: the client's core, so the proxy has a core of its own)\n\
     --arrivals spread|burst  exponential gaps on a timerfd (default), or bursts on 1 ms ticks\n\
     --sweep R1,R2,...      the first workload at each offered rate (req/s): the latency-against-load\n\
                            curve (latest-curve.svg), up to saturation\n\
     --driver own|memtier   the harness's driver (default) or memtier_benchmark (MEMTIER_BIN or PATH)\n\
     --client-cpu N --server-cpu N   cores to pin to (default: first two allowed)\n\
     --memring-threads N    memring --threads (default 1: one SUT core)\n\
     --backups              memring targets get three backups (-b) beside the pool\n\
     MEMRING_ARGS, MEMRING_BASE_ARGS: extra flags for memring / memring-base\n\
     --out DIR              results directory (default bench-results/)"
}

/// `10s`, `500ms`, `2m`, `1.5s` or plain seconds.
fn parse_duration(s: &str) -> Result<Duration, String> {
    let (num, mul) = if let Some(n) = s.strip_suffix("ms") {
        (n, 0.001)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = s.strip_suffix('m') {
        (n, 60.0)
    } else {
        (s, 1.0)
    };
    let v: f64 = num
        .trim()
        .parse()
        .map_err(|_| format!("bad duration {s:?}"))?;
    if !(v.is_finite() && v >= 0.0) {
        return Err(format!("bad duration {s:?}"));
    }
    Ok(Duration::from_secs_f64(v * mul))
}

fn parse_num<T: std::str::FromStr>(flag: &str, v: &str) -> Result<T, String> {
    v.parse().map_err(|_| format!("{flag}: bad number {v:?}"))
}

fn parse_opts(args: Vec<String>) -> Result<Opts, String> {
    let mut sel: Option<Vec<char>> = None;
    let given: Vec<&str> = args
        .iter()
        .skip(1)
        .map(String::as_str)
        .filter(|a| *a != "--bench")
        .collect();
    let command = format!("cargo bench --bench load -- {}", given.join(" "))
        .trim_end()
        .trim_end_matches(" --")
        .to_string();
    let mut targets = TargetKind::DEFAULT.to_vec();
    let mut rounds = None;
    let (mut duration, mut warmup) = (None, None);
    let mut quick = false;
    let mut pin = true;
    let mut pool_on_client = true;
    let mut spread = true;
    let mut driver = DriverKind::Own;
    let mut sweep: Option<Vec<f64>> = None;
    let (mut client_cpu, mut server_cpu) = (None, None);
    let mut memring_threads = 1;
    let mut backups = false;
    let mut out_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("bench-results");
    let (mut conns, mut depth, mut keys, mut vsize, mut mix, mut mget, mut rate) =
        (None, None, None, None, None, None, None);

    let mut it = args.into_iter().skip(1).peekable();
    while let Some(arg) = it.next() {
        // Accept both `--flag value` and `--flag=value`.
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_string(), Some(v.to_string())),
            _ => (arg.clone(), None),
        };
        let takes_value = matches!(
            flag.as_str(),
            "--workload"
                | "--workloads"
                | "--targets"
                | "--target"
                | "--duration"
                | "--warmup"
                | "--client-cpu"
                | "--arrivals"
                | "--server-cpu"
                | "--memring-threads"
                | "--rounds"
                | "--out"
                | "--conns"
                | "--depth"
                | "--keys"
                | "--value-size"
                | "--get-set"
                | "--multiget"
                | "--rate"
                | "--driver"
                | "--sweep"
        );
        let val = if takes_value {
            match inline.or_else(|| it.next()) {
                Some(v) => v,
                None => return Err(format!("{flag} needs a value")),
            }
        } else {
            String::new()
        };
        match flag.as_str() {
            "--workload" | "--workloads" => {
                sel = Some(
                    val.split(',')
                        .filter_map(|s| s.trim().chars().next())
                        .collect(),
                )
            }
            "--targets" | "--target" => {
                let mut t = Vec::new();
                for name in val.split(',') {
                    match TargetKind::ALL.iter().find(|k| k.name() == name.trim()) {
                        Some(k) => t.push(*k),
                        None => return Err(format!("unknown target {name:?}")),
                    }
                }
                targets = t;
            }
            "--duration" => duration = Some(parse_duration(&val)?),
            "--warmup" => warmup = Some(parse_duration(&val)?),
            "--quick" => quick = true,
            "--no-pin" => pin = false,
            "--pool-on-client-core" => pool_on_client = true,
            "--pool-on-proxy-core" => pool_on_client = false,
            "--arrivals" => {
                spread = match val.as_str() {
                    "spread" => true,
                    "burst" => false,
                    other => return Err(format!("--arrivals {other}: expected spread or burst")),
                }
            }
            "--driver" => {
                driver = match val.as_str() {
                    "own" => DriverKind::Own,
                    "memtier" => DriverKind::Memtier,
                    other => return Err(format!("--driver {other}: expected own or memtier")),
                }
            }
            "--sweep" => {
                let rates = val
                    .split(',')
                    .map(|r| parse_num::<f64>(&flag, r.trim()))
                    .collect::<Result<Vec<f64>, String>>()?;
                if rates.is_empty() || rates.len() > 10 || rates.iter().any(|r| *r <= 0.0) {
                    return Err("--sweep wants 1 to 10 rates above 0, e.g. 10000,20000".into());
                }
                sweep = Some(rates);
            }
            "--client-cpu" => client_cpu = Some(parse_num(&flag, &val)?),
            "--server-cpu" => server_cpu = Some(parse_num(&flag, &val)?),
            "--memring-threads" => memring_threads = parse_num(&flag, &val)?,
            "--backups" => backups = true,
            "--rounds" => rounds = Some(parse_num::<usize>(&flag, &val)?.max(1)),
            "--out" => out_dir = PathBuf::from(val),
            "--conns" => conns = Some(parse_num::<usize>(&flag, &val)?.max(1)),
            "--depth" => depth = Some(parse_num::<usize>(&flag, &val)?.max(1)),
            "--keys" => keys = Some(parse_num::<usize>(&flag, &val)?.max(1)),
            "--value-size" => vsize = Some(parse_num::<usize>(&flag, &val)?),
            "--multiget" => mget = Some(parse_num::<usize>(&flag, &val)?.max(1)),
            "--rate" => rate = Some(parse_num::<f64>(&flag, &val)?),
            "--get-set" => {
                let (g, s) = val.split_once(':').ok_or("--get-set wants G:S, e.g. 9:1")?;
                let (g, s): (u32, u32) = (parse_num(&flag, g)?, parse_num(&flag, s)?);
                if g + s == 0 {
                    return Err("--get-set: both weights are 0".into());
                }
                mix = Some((g, s));
            }
            "--help" | "-h" => return Err(usage().to_string()),
            _ => {} // cargo passes --bench; ignore anything we do not know
        }
    }

    let mut workloads: Vec<Workload> = presets();
    if let Some(sel) = sel {
        workloads.retain(|w| sel.contains(&w.id));
        if workloads.is_empty() {
            return Err(format!("no such workload in {sel:?}; presets are a..e"));
        }
    }
    for w in &mut workloads {
        w.conns = conns.unwrap_or(w.conns);
        w.depth = depth.unwrap_or(w.depth);
        w.keys = keys.unwrap_or(w.keys);
        w.value_size = vsize.unwrap_or(w.value_size);
        w.multiget = mget.unwrap_or(w.multiget);
        if let Some((g, s)) = mix {
            (w.get_weight, w.set_weight) = (g, s);
        }
        if let Some(r) = rate {
            w.rate = (r > 0.0).then_some(r);
        }
    }
    if let Some(rates) = &sweep {
        // One workload per rate, named by digit ('0'..'9'): its own corpus.
        let base = workloads.swap_remove(0);
        // The preset's name without its rate.
        let shape = match base.name.rsplit_once(", ") {
            Some((head, rate)) if rate.ends_with("req/s") => head.to_string(),
            _ => base.name.clone(),
        };
        workloads = rates
            .iter()
            .zip('0'..='9')
            .map(|(&r, id)| Workload {
                id,
                name: format!("{} at {r:.0} req/s: {}", base.id, shape),
                rate: Some(r),
                ..base.clone()
            })
            .collect();
    }
    let duration = duration.unwrap_or(if quick {
        Duration::from_secs(1)
    } else {
        Duration::from_secs(6)
    });
    let warmup = warmup.unwrap_or(if quick {
        Duration::from_millis(250)
    } else {
        Duration::from_secs(2)
    });
    Ok(Opts {
        workloads,
        targets,
        duration,
        warmup,
        quick,
        pin,
        pool_on_client,
        spread,
        driver,
        client_cpu,
        server_cpu,
        memring_threads: memring_threads.max(1),
        backups,
        rounds: rounds.unwrap_or(if quick { 1 } else { 3 }),
        sweep: sweep.is_some(),
        out_dir,
        command,
    })
}

// ---------------------------------------------------------------------------
// Processes
// ---------------------------------------------------------------------------

/// A child process stopped by PID (SIGTERM, then SIGKILL) when dropped.
struct Proc {
    name: String,
    child: Child,
}

impl Proc {
    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.exited().is_some() {
            return;
        }
        let Ok(pid) = libc::pid_t::try_from(self.child.id()) else {
            return;
        };
        // SAFETY: kill(2) on our own child's pid; it is not reaped yet, so the
        // pid cannot have been reused.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        for _ in 0..100 {
            if self.exited().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        eprintln!("load: {} (pid {pid}) ignored SIGTERM; killing", self.name);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Where children are placed: the SUT core, and whether to pin at all.
#[derive(Clone, Copy, Debug)]
struct Placement {
    server_cpu: Option<usize>,
}

/// Spawn `cmd` as a child that dies with us and runs on the SUT core.
fn spawn(name: &str, mut cmd: Command, place: Placement) -> io::Result<Proc> {
    use std::os::unix::process::CommandExt;
    let cpu = place.server_cpu;
    // SAFETY: the closure runs between fork and exec and only makes
    // async-signal-safe syscalls (prctl, sched_setaffinity) on stack data.
    unsafe {
        cmd.pre_exec(move || {
            // If the harness dies (even by SIGKILL), take the child with it.
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            if let Some(cpu) = cpu {
                let mut set: libc::cpu_set_t = std::mem::zeroed();
                libc::CPU_SET(cpu, &mut set);
                libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
            }
            Ok(())
        });
    }
    let child = cmd.spawn()?;
    Ok(Proc {
        name: name.to_string(),
        child,
    })
}

/// Ask the kernel for a free 127.0.0.1 port. Racy by nature (the port is
/// released before the child binds it), so callers retry on a failed start.
fn free_port() -> io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Wait until `addr` accepts connections or `proc` exits; bounded.
fn wait_listening(proc: &mut Proc, addr: SocketAddr) -> Result<(), String> {
    let deadline = Instant::now() + STARTUP_TIMEOUT;
    while Instant::now() < deadline {
        if let Some(st) = proc.exited() {
            return Err(format!("{} exited during startup: {st}", proc.name));
        }
        if std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Err(format!(
        "{} did not listen on {addr} within {STARTUP_TIMEOUT:?}",
        proc.name
    ))
}

const MEMCACHED: &str = "/usr/bin/memcached";
const NUTCRACKER: &str = "/usr/sbin/nutcracker";

/// Start one memcached with one worker thread on a free port.
fn start_memcached(
    name: &str,
    place: Placement,
    log_dir: &Path,
) -> Result<(Proc, SocketAddr), String> {
    start_memcached_with(name, &[], place, log_dir)
}

/// [`start_memcached`] with `extra` arguments (`-Z` and its certificate).
fn start_memcached_with(
    name: &str,
    extra: &[String],
    place: Placement,
    log_dir: &Path,
) -> Result<(Proc, SocketAddr), String> {
    let mut last = String::new();
    for _attempt in 0..5 {
        let port = free_port().map_err(|e| e.to_string())?;
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let log = std::fs::File::create(log_dir.join(format!("{name}.log")))
            .map_err(|e| e.to_string())?;
        let mut cmd = Command::new(MEMCACHED);
        cmd.args([
            "-l",
            "127.0.0.1",
            "-U",
            "0",
            "-t",
            "1",
            "-m",
            "1024",
            "-c",
            "8192",
        ])
        .args(["-p", &port.to_string()])
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log);
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } == 0 {
            cmd.args(["-u", "root"]); // memcached refuses to run as root without it
        }
        let mut p = spawn(name, cmd, place).map_err(|e| format!("{MEMCACHED}: {e}"))?;
        match wait_listening(&mut p, addr) {
            Ok(()) => return Ok((p, addr)),
            Err(e) => last = e, // most likely lost the port race; try another
        }
    }
    Err(last)
}

/// Start memring in front of `pool`; it reports the port it bound on stdout.
fn start_memring(
    name: &str,
    bin: &Path,
    extra: &[&str],
    pool: &[SocketAddr],
    threads: usize,
    place: Placement,
    log_dir: &Path,
) -> Result<(Proc, SocketAddr, Option<SocketAddr>), String> {
    if !bin.exists() {
        return Err(format!(
            "{} not found (build it with `cargo build --release` or set MEMRING_BIN)",
            bin.display()
        ));
    }
    let log_path = log_dir.join(format!("{name}.log"));
    let log = std::fs::File::create(&log_path).map_err(|e| e.to_string())?;
    let mut cmd = Command::new(bin);
    cmd.args([
        "-D",
        "-k",
        "--bind",
        "127.0.0.1:0",
        "--threads",
        &threads.to_string(),
    ])
    .args(extra);
    for a in pool {
        cmd.args(["-s", &a.to_string()]);
    }
    cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(log);
    let mut p = spawn(name, cmd, place).map_err(|e| format!("{}: {e}", bin.display()))?;
    let stdout = p.child.stdout.take().ok_or("memring: no stdout")?;
    // A reader thread forwards lines and then keeps draining stdout so the
    // child never blocks on a full pipe; it ends at EOF (when memring exits).
    let (tx, rx) = mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + STARTUP_TIMEOUT;
    let mut addr: Option<SocketAddr> = None;
    let mut tls: Option<SocketAddr> = None;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => {
                if let Some(a) = line.trim().strip_prefix("listening on tcp ") {
                    addr = a.trim().parse().ok();
                } else if let Some(a) = line.trim().strip_prefix("listening on tls ") {
                    tls = a.trim().parse().ok();
                } else if line.trim() == "ready" {
                    break;
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                return Err(format!(
                    "memring printed no `ready` within {STARTUP_TIMEOUT:?}"
                ))
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                let st = p.child.wait().map(|s| s.to_string()).unwrap_or_default();
                let tail = log_tail(&log_path);
                return Err(format!("memring exited before `ready` ({st}): {tail}"));
            }
        }
    }
    let addr = addr.ok_or("memring printed `ready` but no `listening on tcp ADDR` line")?;
    Ok((p, addr, tls))
}

/// Test certificates for the TLS target, made with `openssl` in `dir`: a
/// CA and a certificate for 127.0.0.1 that it signed.
fn make_certs(dir: &Path) -> Result<(), String> {
    let run = |args: &[&str]| -> Result<(), String> {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .map_err(|e| format!("openssl not found ({e}): `apt-get install openssl`"))?;
        if !out.status.success() {
            return Err(format!(
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        Ok(())
    };
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    run(&[
        &["req", "-x509"],
        &ec[..],
        &[
            "-days",
            "2",
            "-subj",
            "/CN=bench CA",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
        ],
    ]
    .concat())?;
    run(&[
        &["req"],
        &ec[..],
        &[
            "-subj",
            "/CN=127.0.0.1",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
        ],
    ]
    .concat())?;
    std::fs::write(dir.join("san.cnf"), "subjectAltName=IP:127.0.0.1\n")
        .map_err(|e| e.to_string())?;
    run(&[
        "x509",
        "-req",
        "-days",
        "2",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-extfile",
        "san.cnf",
        "-out",
        "server.pem",
    ])
}

/// The load generator's TLS configuration: trusts the bench CA.
fn tls_client_config(ca: &Path) -> Result<Arc<rustls::ClientConfig>, String> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls::pki_types::CertificateDer::pem_file_iter(ca).map_err(|e| e.to_string())? {
        roots
            .add(c.map_err(|e| e.to_string())?)
            .map_err(|e| e.to_string())?;
    }
    #[allow(deprecated)]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(cfg))
}

/// Connect and finish a TLS handshake with `cfg` (the handshake is not
/// part of any measured window).
async fn connect_tls(
    addr: SocketAddr,
    cfg: Arc<rustls::ClientConfig>,
) -> io::Result<(TcpStream, rustls::ClientConnection)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = connect(addr).await?;
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").map_err(io::Error::other)?;
    let mut t = rustls::ClientConnection::new(cfg, name).map_err(io::Error::other)?;
    let mut buf = vec![0u8; 16 * 1024];
    // Bounded: a handshake is a few round trips, each read or fail.
    for _ in 0..64 {
        while t.wants_write() {
            let mut out = Vec::new();
            t.write_tls(&mut out)?;
            s.write_all(&out).await?;
        }
        if !t.is_handshaking() {
            return Ok((s, t));
        }
        let n = s.read(&mut buf).await?;
        if n == 0 {
            return Err(io::Error::other("closed during the TLS handshake"));
        }
        t.read_tls(&mut &buf[..n])?;
        t.process_new_packets().map_err(io::Error::other)?;
    }
    Err(io::Error::other("TLS handshake did not finish"))
}

/// Sleep until `at` on the high-resolution timer when there is one.
async fn pause(timer: Option<&HiresTimer>, at: Instant) {
    match timer {
        Some(t) => t.sleep_until(at).await,
        None => tokio::time::sleep_until(at.into()).await,
    }
}

/// Decrypt the ciphertext in `craw` into `rbuf`.
fn tls_decrypt(
    t: &mut rustls::ClientConnection,
    craw: &mut BytesMut,
    rbuf: &mut BytesMut,
) -> Result<(), String> {
    use std::io::Read as _;
    // Bounded by the ciphertext: each pass consumes some or stops.
    while !craw.is_empty() {
        let mut rd = &craw[..];
        let n = t.read_tls(&mut rd).map_err(|e| format!("tls read: {e}"))?;
        craw.advance(n);
        let st = t.process_new_packets().map_err(|e| format!("tls: {e}"))?;
        let want = st.plaintext_bytes_to_read();
        if want > 0 {
            let at = rbuf.len();
            rbuf.resize(at + want, 0);
            let got = t.reader().read(&mut rbuf[at..]).unwrap_or(0);
            rbuf.truncate(at + got);
        }
        if n == 0 {
            break;
        }
    }
    Ok(())
}

/// Start nutcracker (ketama, md5) in front of `pool`.
fn start_nutcracker(
    pool: &[SocketAddr],
    place: Placement,
    dir: &Path,
) -> Result<(Proc, SocketAddr), String> {
    let mut last = String::new();
    for _attempt in 0..5 {
        let port = free_port().map_err(|e| e.to_string())?;
        let stats_port = free_port().map_err(|e| e.to_string())?;
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let mut conf = format!(
            "bench:\n  listen: {addr}\n  hash: md5\n  distribution: ketama\n  backlog: 1024\n  \
             preconnect: true\n  auto_eject_hosts: false\n  server_connections: 1\n  servers:\n"
        );
        for (i, a) in pool.iter().enumerate() {
            let _ = writeln!(conf, "    - {a}:1 mc{i}");
        }
        let conf_path = dir.join("nutcracker.yml");
        std::fs::write(&conf_path, conf).map_err(|e| e.to_string())?;
        let mut cmd = Command::new(NUTCRACKER);
        cmd.arg("-c")
            .arg(&conf_path)
            .args(["-a", "127.0.0.1", "-s", &stats_port.to_string()])
            .arg("-o")
            .arg(dir.join("nutcracker.log"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let mut p = spawn("nutcracker", cmd, place).map_err(|e| format!("{NUTCRACKER}: {e}"))?;
        match wait_listening(&mut p, addr) {
            Ok(()) => return Ok((p, addr)),
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// The memcached binary with the built-in proxy: `MEMCACHED_PROXY_BIN`, or
/// the system memcached if it was built with `--enable-proxy` (its `-h`
/// lists `proxy_config`). Never built here.
fn mcproxy_bin() -> Result<PathBuf, String> {
    if let Some(bin) = std::env::var_os("MEMCACHED_PROXY_BIN") {
        let bin = PathBuf::from(bin);
        if !bin.exists() {
            return Err(format!("MEMCACHED_PROXY_BIN={} not found", bin.display()));
        }
        return Ok(bin);
    }
    let help = Command::new(MEMCACHED)
        .arg("-h")
        .stdin(Stdio::null())
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    if help.contains("proxy_config") {
        return Ok(PathBuf::from(MEMCACHED));
    }
    Err(format!(
        "not installed ({MEMCACHED} has no built-in proxy; set MEMCACHED_PROXY_BIN to a \
         memcached built with --enable-proxy)"
    ))
}

/// Start memcached's built-in proxy (one worker thread) in front of `pool`,
/// with a minimal route: every command to the pool's default hash.
fn start_mcproxy(
    bin: &Path,
    pool: &[SocketAddr],
    place: Placement,
    dir: &Path,
) -> Result<(Proc, SocketAddr), String> {
    let mut conf = String::from("function mcp_config_pools()\n");
    for (i, a) in pool.iter().enumerate() {
        let _ = writeln!(
            conf,
            "    local b{i} = mcp.backend('b{i}', '{}', {})",
            a.ip(),
            a.port()
        );
    }
    let names: Vec<String> = (0..pool.len()).map(|i| format!("b{i}")).collect();
    let _ = write!(
        conf,
        "    return mcp.pool({{{}}})\nend\n\n\
         function mcp_config_routes(pool)\n\
         \x20   local fgen = mcp.funcgen_new()\n\
         \x20   local h = fgen:new_handle(pool)\n\
         \x20   fgen:ready({{ f = function(rctx)\n\
         \x20       return function(r) return rctx:enqueue_and_wait(r, h) end\n\
         \x20   end }})\n\
         \x20   mcp.attach(mcp.CMD_ANY_STORAGE, fgen)\n\
         end\n",
        names.join(", ")
    );
    let conf_path = dir.join("mcproxy.lua");
    std::fs::write(&conf_path, conf).map_err(|e| e.to_string())?;
    let mut last = String::new();
    for _attempt in 0..5 {
        let port = free_port().map_err(|e| e.to_string())?;
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let log = std::fs::File::create(dir.join("mcproxy.log")).map_err(|e| e.to_string())?;
        let mut cmd = Command::new(bin);
        cmd.args([
            "-l",
            "127.0.0.1",
            "-U",
            "0",
            "-t",
            "1",
            "-m",
            "64",
            "-c",
            "8192",
        ])
        .args(["-p", &port.to_string()])
        .arg(format!("-oproxy_config={}", conf_path.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log);
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } == 0 {
            cmd.args(["-u", "root"]);
        }
        let mut p = spawn("mcproxy", cmd, place).map_err(|e| format!("{}: {e}", bin.display()))?;
        match wait_listening(&mut p, addr) {
            Ok(()) => return Ok((p, addr)),
            Err(e) => last = format!("{e}: {}", log_tail(&dir.join("mcproxy.log"))),
        }
    }
    Err(last)
}

fn log_tail(path: &Path) -> String {
    let s = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = s.lines().rev().take(5).collect();
    lines.into_iter().rev().collect::<Vec<_>>().join(" | ")
}

// ---------------------------------------------------------------------------
// CPU placement and accounting
// ---------------------------------------------------------------------------

fn allowed_cpus() -> Vec<usize> {
    // SAFETY: sched_getaffinity fills a zeroed cpu_set_t of the size we pass.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return Vec::new();
        }
        (0..libc::CPU_SETSIZE as usize)
            .filter(|&c| libc::CPU_ISSET(c, &set))
            .collect()
    }
}

fn pin_self(cpu: usize) -> io::Result<()> {
    // SAFETY: as in allowed_cpus; pins the calling (main) thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// CPU seconds (user + system) this process has used.
fn self_cpu() -> f64 {
    rusage_cpu(libc::RUSAGE_SELF)
}

/// CPU seconds (user + system) of `who` (`RUSAGE_SELF`, `RUSAGE_CHILDREN`).
fn rusage_cpu(who: libc::c_int) -> f64 {
    // SAFETY: getrusage fills the zeroed struct we pass.
    let ru = unsafe {
        let mut ru: libc::rusage = std::mem::zeroed();
        libc::getrusage(who, &mut ru);
        ru
    };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// Busy CPU seconds (everything but idle and iowait, steal included) of
/// `cpus`, from /proc/stat.
fn cpus_busy(cpus: &[usize]) -> f64 {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let mut ticks = 0u64;
    for line in stat.lines() {
        let mut f = line.split_whitespace();
        let Some(cpu) = f.next().and_then(|n| n.strip_prefix("cpu")) else {
            continue;
        };
        if !cpu.parse::<usize>().is_ok_and(|c| cpus.contains(&c)) {
            continue;
        }
        // user nice system idle iowait irq softirq steal
        let v: Vec<u64> = f.take(8).map(|x| x.parse().unwrap_or(0)).collect();
        for (i, x) in v.iter().enumerate() {
            if i != 3 && i != 4 {
                ticks += x;
            }
        }
    }
    ticks as f64 / hz
}

/// CPU seconds of `pids`: the sum over their threads of the scheduler's
/// on-CPU time (/proc/PID/task/TID/schedstat, nanoseconds). utime + stime
/// in /proc/PID/stat count 10 ms ticks, which at 15 % of a core over 4 s
/// is a 2 % step, as large as the differences compared here. A thread that
/// exits drops out of the sum; the processes measured keep theirs.
fn procs_cpu(pids: &[u32]) -> f64 {
    let mut ns = 0u64;
    for pid in pids {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
            continue;
        };
        for task in tasks.flatten() {
            let Ok(stat) = std::fs::read_to_string(task.path().join("schedstat")) else {
                continue;
            };
            let on_cpu = stat
                .split_whitespace()
                .next()
                .and_then(|v| v.parse::<u64>().ok());
            ns += on_cpu.unwrap_or(0);
        }
    }
    ns as f64 / 1e9
}

/// TCP data segments `pid` has sent on its established connections to
/// `upstreams`, from `ss -tie` (data_segs_out), matched to the process by
/// socket inode. `None` for no upstreams or when `ss` cannot be run.
///
/// A connection that closes between two readings drops out of the sum; the
/// proxies keep theirs open for the whole run.
fn upstream_segs(pid: u32, upstreams: &[SocketAddr]) -> Option<u64> {
    if upstreams.is_empty() {
        return None;
    }
    let mut inodes = std::collections::HashSet::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.flatten() {
        let Ok(link) = std::fs::read_link(entry.path()) else {
            continue;
        };
        let ino = link
            .to_str()
            .and_then(|l| l.strip_prefix("socket:["))
            .and_then(|l| l.strip_suffix(']'))
            .and_then(|l| l.parse::<u64>().ok());
        if let Some(ino) = ino {
            inodes.insert(ino);
        }
    }
    let filter = upstreams
        .iter()
        .map(|a| format!("dport = :{}", a.port()))
        .collect::<Vec<_>>()
        .join(" or ");
    let out = Command::new("ss")
        .args(["-tinHe", "state", "established"])
        .arg(format!("( {filter} )"))
        .stderr(Stdio::null())
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    // Each socket is `... ino:N ...` followed by its info with `data_segs_out:M`.
    let (mut mine, mut total) = (false, 0u64);
    for tok in String::from_utf8_lossy(&out.stdout).split_whitespace() {
        if let Some(ino) = tok.strip_prefix("ino:") {
            mine = ino.parse::<u64>().is_ok_and(|i| inodes.contains(&i));
        } else if let Some(n) = tok.strip_prefix("data_segs_out:") {
            if mine {
                total += n.parse::<u64>().unwrap_or(0);
            }
        }
    }
    Some(total)
}

// ---------------------------------------------------------------------------
// The driver
// ---------------------------------------------------------------------------

/// splitmix64: small, fast, good enough to pick keys and verbs.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (((self.next() >> 32) * n as u64) >> 32) as usize
    }
}

/// Keys and the value shared by all connections of one run.
struct Corpus {
    keys: Vec<Box<[u8]>>,
    value: Vec<u8>,
}

impl Corpus {
    fn new(w: &Workload) -> Corpus {
        let keys = (0..w.keys)
            .map(|i| {
                format!("memring:{}:{i:08}", w.id)
                    .into_bytes()
                    .into_boxed_slice()
            })
            .collect();
        let value = (0..w.value_size).map(|i| b'a' + (i % 26) as u8).collect();
        Corpus { keys, value }
    }
}

/// What a request in flight was, to know how to frame its reply.
#[derive(Clone, Copy)]
enum Op {
    Get(usize),
    Set,
}

/// Counters of one run, shared by the connection tasks of a `LocalSet`.
struct Tally {
    hist: Histogram<u64>,
    ops: u64,
    keys_requested: u64,
    hits: u64,
    set_ok: u64,
    errors: u64,
    timeouts: u64,
    conn_errors: u64,
    first_error: Option<String>,
}

impl Tally {
    fn new() -> Tally {
        Tally {
            // nanoseconds, 1 ns .. 100 s, 3 significant figures
            hist: Histogram::new_with_bounds(1, 100_000_000_000, 3)
                .expect("static bounds are valid"),
            ops: 0,
            keys_requested: 0,
            hits: 0,
            set_ok: 0,
            errors: 0,
            timeouts: 0,
            conn_errors: 0,
            first_error: None,
        }
    }

    fn error(&mut self, msg: String) {
        self.conn_errors += 1;
        self.first_error.get_or_insert(msg);
    }
}

/// The measurement window of a run.
#[derive(Clone, Copy)]
struct Window {
    /// Requests sent before this are warmup and not recorded.
    measure: Instant,
    /// No request is sent at or after this.
    end: Instant,
}

async fn connect(addr: SocketAddr) -> io::Result<TcpStream> {
    let s = TcpStream::connect(addr).await?;
    s.set_nodelay(true)?;
    Ok(s)
}

/// One connection's closed- or open-loop driver.
struct Driver {
    w: Arc<Workload>,
    corpus: Arc<Corpus>,
    rng: Rng,
    wbuf: BytesMut,
    rbuf: BytesMut,
    /// The TLS session (the `memring-tls` target): requests are encrypted
    /// from `wbuf` into `cbuf`, replies decrypted from `craw` into `rbuf`.
    tls: Option<rustls::ClientConnection>,
    cbuf: BytesMut,
    craw: BytesMut,
    items: Vec<ValueItem>,
    /// Latency origin and kind of each request in flight, in send order.
    inflight: VecDeque<(Instant, Op)>,
    /// When the window last went from full to having a free slot (open loop).
    slot_freed_at: Instant,
    /// `--arrivals spread`: the timer that releases each send on time.
    timer: Option<HiresTimer>,
}

/// A one-shot high-resolution timer (timerfd on CLOCK_MONOTONIC, which
/// `Instant` reads too) awaited through tokio: tokio's own timer wakes on
/// 1 ms ticks, which releases spread arrivals as bursts.
struct HiresTimer(tokio::io::unix::AsyncFd<std::os::fd::OwnedFd>);

impl HiresTimer {
    fn new() -> io::Result<HiresTimer> {
        use std::os::fd::FromRawFd;
        // SAFETY: timerfd_create has no preconditions; a valid fd is owned.
        let fd = unsafe {
            libc::timerfd_create(
                libc::CLOCK_MONOTONIC,
                libc::TFD_NONBLOCK | libc::TFD_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just created and is owned by nobody else.
        let owned = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
        // SAFETY: an OwnedFd keeps its descriptor open and the same for as
        // long as it lives, and the AsyncFd owns it.
        let registered = unsafe { tokio::io::unix::AsyncFd::register(owned) };
        registered
            .map(HiresTimer)
            .map_err(|e| io::Error::other(e.to_string()))
    }

    /// Sleep until `at` (at once when it has passed).
    async fn sleep_until(&self, at: Instant) {
        use std::os::fd::AsRawFd;
        let d = at.saturating_duration_since(Instant::now());
        if d.is_zero() {
            return;
        }
        let spec = libc::itimerspec {
            it_interval: libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
            it_value: libc::timespec {
                tv_sec: d.as_secs() as libc::time_t,
                tv_nsec: libc::c_long::from(d.subsec_nanos() as i32),
            },
        };
        let fd = self.0.get_ref().as_raw_fd();
        // SAFETY: a valid timerfd and a live itimerspec.
        if unsafe { libc::timerfd_settime(fd, 0, &spec, std::ptr::null_mut()) } != 0 {
            tokio::time::sleep_until(at.into()).await;
            return;
        }
        // Bounded: one expiry per arming.
        loop {
            let Ok(mut guard) = self.0.readable().await else {
                return;
            };
            let mut ticks = [0u8; 8];
            // SAFETY: reads at most 8 bytes into a live local buffer.
            let n = unsafe { libc::read(fd, ticks.as_mut_ptr().cast(), 8) };
            if n == 8 {
                return;
            }
            guard.clear_ready();
        }
    }
}

impl Driver {
    /// Nothing is waiting to be written.
    fn out_empty(&self) -> bool {
        self.wbuf.is_empty() && self.cbuf.is_empty()
    }

    fn issue(&mut self, origin: Instant) {
        let w = &*self.w;
        let total = u64::from(w.get_weight) + u64::from(w.set_weight);
        let is_get = self.rng.next() % total < u64::from(w.get_weight);
        let corpus = &*self.corpus;
        if is_get {
            let rng = &mut self.rng;
            let n = w.multiget;
            let keys = (0..n).map(|_| &*corpus.keys[rng.below(corpus.keys.len())]);
            compose::compose_retrieval(&mut self.wbuf, Verb::Get, 0, keys);
            self.inflight.push_back((origin, Op::Get(n)));
        } else {
            let key = &corpus.keys[self.rng.below(corpus.keys.len())];
            compose::compose_storage(
                &mut self.wbuf,
                Verb::Set,
                key,
                0,
                0,
                &corpus.value,
                None,
                false,
            );
            self.inflight.push_back((origin, Op::Set));
        }
    }

    /// Frame every complete reply in `rbuf`, recording those sent in the window.
    fn frame_replies(
        &mut self,
        now: Instant,
        win: Window,
        tally: &RefCell<Tally>,
    ) -> Result<(), String> {
        let mut t = tally.borrow_mut();
        while let Some(&(origin, op)) = self.inflight.front() {
            let expect = match op {
                Op::Get(_) => Expect::Values,
                Op::Set => Expect::Line,
            };
            let framed = frame_response(expect, &self.rbuf, MAX_VALUE, &mut self.items)
                .map_err(|e| format!("framing lost: {}", e.msg))?;
            let Framed::Complete { len, status, .. } = framed else {
                break;
            };
            if origin >= win.measure && origin < win.end {
                t.ops += 1;
                let ns = now.saturating_duration_since(origin).as_nanos();
                let _ = t.hist.record(u64::try_from(ns).unwrap_or(u64::MAX).max(1));
                match (op, status) {
                    (_, s) if s.is_error() => t.errors += 1,
                    (Op::Get(n), Status::Values) => {
                        t.keys_requested += n as u64;
                        t.hits += self.items.len() as u64;
                    }
                    (Op::Set, Status::Stored) => t.set_ok += 1,
                    _ => t.errors += 1,
                }
            }
            self.rbuf.advance(len);
            if self.inflight.len() == self.w.depth {
                self.slot_freed_at = now;
            }
            self.inflight.pop_front();
        }
        Ok(())
    }

    async fn run(
        &mut self,
        stream: TcpStream,
        win: Window,
        phase: Duration,
        tally: &RefCell<Tally>,
    ) -> Result<(), String> {
        let depth = self.w.depth;
        // Open loop sends bursts of `depth` requests (one write when the
        // window is free), so a pipelined workload at a fixed rate really
        // arrives pipelined; `interval` is the time between bursts.
        let interval = self
            .w
            .rate
            .map(|r| Duration::from_secs_f64(self.w.conns as f64 * depth as f64 / r.max(1e-3)));
        let mut in_burst = 0usize;
        let drain_end = win.end + DRAIN_TIMEOUT;
        let mut next_send = Instant::now() + phase;
        loop {
            let now = Instant::now();
            let sending = now < win.end;
            if !sending && self.inflight.is_empty() && self.out_empty() {
                return Ok(());
            }
            if now >= drain_end {
                tally.borrow_mut().timeouts += self.inflight.len() as u64;
                return Err(format!(
                    "{} requests unanswered after the drain timeout",
                    self.inflight.len()
                ));
            }
            if sending {
                match interval {
                    None => {
                        while self.inflight.len() < depth {
                            self.issue(now);
                        }
                    }
                    Some(iv) => {
                        // A send held back because the window was full waited
                        // for the server: its latency counts from the scheduled
                        // time, so a stall shows up (no coordinated omission).
                        // A send that is late only because our timer (1 ms
                        // granularity) woke us late counts from now, so the
                        // client's own lateness is not charged to the server.
                        while self.inflight.len() < depth && next_send <= now && next_send < win.end
                        {
                            let origin = if self.slot_freed_at > next_send {
                                next_send
                            } else {
                                now
                            };
                            self.issue(origin);
                            in_burst += 1;
                            if in_burst == depth {
                                in_burst = 0;
                                next_send += if self.timer.is_some() {
                                    // Exponential gaps (a Poisson process per
                                    // connection) with the same mean.
                                    let u = (self.rng.next() >> 11) as f64 / (1u64 << 53) as f64;
                                    iv.mul_f64(-(1.0 - u).ln())
                                } else {
                                    iv
                                };
                            }
                        }
                    }
                }
            }
            if let Some(t) = self.tls.as_mut().filter(|_| !self.wbuf.is_empty()) {
                use std::io::Write as _;
                t.writer()
                    .write_all(&self.wbuf)
                    .map_err(|e| format!("tls write: {e}"))?;
                self.wbuf.clear();
                while t.wants_write() {
                    let mut w = bytes::BufMut::writer(&mut self.cbuf);
                    t.write_tls(&mut w).map_err(|e| format!("tls: {e}"))?;
                }
            }
            let out = if self.tls.is_some() {
                &mut self.cbuf
            } else {
                &mut self.wbuf
            };
            if !out.is_empty() {
                match stream.try_write(out) {
                    Ok(n) => out.advance(n),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => return Err(format!("write: {e}")),
                }
            }
            let interest = if self.out_empty() {
                Interest::READABLE
            } else {
                Interest::READABLE | Interest::WRITABLE
            };
            let mut wake = if sending { win.end } else { drain_end };
            if interval.is_some() && sending && self.inflight.len() < depth {
                wake = wake.min(next_send);
            }
            let ready = if self.inflight.is_empty() && self.out_empty() {
                // Open loop and idle: nothing can arrive, just wait for the schedule.
                pause(self.timer.as_ref(), wake).await;
                continue;
            } else {
                tokio::select! {
                    r = stream.ready(interest) => r.map_err(|e| format!("poll: {e}"))?,
                    _ = pause(self.timer.as_ref(), wake) => continue,
                }
            };
            if ready.is_readable() {
                let into = if self.tls.is_some() {
                    &mut self.craw
                } else {
                    &mut self.rbuf
                };
                match read_drained(&stream, into) {
                    Ok(0) => return Err("server closed the connection".into()),
                    Ok(_) => {
                        if let Some(t) = self.tls.as_mut() {
                            tls_decrypt(t, &mut self.craw, &mut self.rbuf)?;
                        }
                        self.frame_replies(Instant::now(), win, tally)?
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => return Err(format!("read: {e}")),
                }
            }
        }
    }
}

/// Read what the socket has into `rbuf`'s spare capacity.
///
/// Unlike `try_read_buf`, a short read (fewer bytes than there was room for)
/// means the socket is drained, and we tell tokio so by answering
/// `WouldBlock` from inside `try_io`, which clears the readiness. That saves
/// the extra `recv` returning `EAGAIN` that would otherwise follow every
/// reply: about one syscall per request at pipeline depth 1, which matters
/// when the client has one core. Tokio only clears readiness that was not
/// refreshed by a newer event, so data arriving meanwhile is not missed.
fn read_drained(stream: &TcpStream, rbuf: &mut BytesMut) -> io::Result<usize> {
    use std::os::fd::AsRawFd;
    rbuf.reserve(64 * 1024);
    let fd = stream.as_raw_fd();
    let mut got = 0usize;
    let res = stream.try_io(Interest::READABLE, || {
        let spare = rbuf.spare_capacity_mut();
        let room = spare.len();
        // SAFETY: recv writes at most `room` bytes into the spare capacity,
        // which is valid, writable memory owned by `rbuf`.
        let n = unsafe { libc::recv(fd, spare.as_mut_ptr().cast(), room, 0) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let n = n as usize;
        // SAFETY: the kernel initialised exactly `n` bytes past the length.
        unsafe { rbuf.set_len(rbuf.len() + n) };
        got = n;
        if n > 0 && n < room {
            Err(io::ErrorKind::WouldBlock.into())
        } else {
            Ok(n)
        }
    });
    match res {
        Err(e) if e.kind() == io::ErrorKind::WouldBlock && got > 0 => Ok(got),
        other => other,
    }
}

/// Set every key of the corpus through `addr` so that gets hit. Bounded.
async fn populate(addr: SocketAddr, corpus: Arc<Corpus>) -> Result<(), String> {
    let mut tasks = Vec::new();
    for c in 0..POPULATE_CONNS {
        let corpus = corpus.clone();
        tasks.push(tokio::task::spawn_local(async move {
            let mut s = connect(addr)
                .await
                .map_err(|e| format!("connect {addr}: {e}"))?;
            let mut wbuf = BytesMut::new();
            let mut rbuf = BytesMut::with_capacity(64 * 1024);
            let mut items = Vec::new();
            let mine: Vec<usize> = (c..corpus.keys.len()).step_by(POPULATE_CONNS).collect();
            for chunk in mine.chunks(POPULATE_WINDOW) {
                wbuf.clear();
                for &i in chunk {
                    compose::compose_storage(
                        &mut wbuf,
                        Verb::Set,
                        &corpus.keys[i],
                        0,
                        0,
                        &corpus.value,
                        None,
                        false,
                    );
                }
                s.write_all(&wbuf)
                    .await
                    .map_err(|e| format!("populate write: {e}"))?;
                let mut left = chunk.len();
                while left > 0 {
                    match frame_response(Expect::Line, &rbuf, MAX_VALUE, &mut items) {
                        Ok(Framed::Complete { len, status, .. }) => {
                            if status != Status::Stored {
                                return Err(format!("populate: set answered {status:?}"));
                            }
                            rbuf.advance(len);
                            left -= 1;
                        }
                        Ok(Framed::Incomplete) => {
                            rbuf.reserve(16 * 1024);
                            if s.read_buf(&mut rbuf)
                                .await
                                .map_err(|e| format!("populate read: {e}"))?
                                == 0
                            {
                                return Err("populate: server closed the connection".into());
                            }
                        }
                        Err(e) => return Err(format!("populate: framing lost: {}", e.msg)),
                    }
                }
            }
            Ok::<(), String>(())
        }));
    }
    for t in tasks {
        t.await.map_err(|e| format!("populate task: {e}"))??;
    }
    Ok(())
}

/// A target that started.
#[derive(Clone, Debug)]
struct Live {
    addr: SocketAddr,
    /// Where the corpus is written before a run (`addr`, or the TLS
    /// target's plaintext listener).
    populate_addr: SocketAddr,
    /// The TLS target: the load generator speaks TLS with this.
    tls: Option<Arc<rustls::ClientConfig>>,
    /// The proxy's own pid (the memcached's for `direct`): its CPU per
    /// request is the figure compared.
    pid: u32,
    /// Every pid of the system under test: the proxy and its pool.
    sut_pids: Vec<u32>,
    /// The pool the proxy forwards to (empty for `direct`); the proxy's
    /// sockets towards it are the ones whose sends are counted.
    upstreams: Vec<SocketAddr>,
}

/// A started target, or why it is not there.
type Started = Result<Live, String>;

/// Result of one workload against one target.
#[derive(Clone, Debug)]
struct RunResult {
    /// Round number, from 0.
    round: usize,
    workload: char,
    target: &'static str,
    /// `None` when the target could not be run; the reason is in `note`.
    stats: Option<RunStats>,
    note: String,
}

#[derive(Clone, Debug, Default)]
struct RunStats {
    ops_per_sec: f64,
    keys_per_sec: f64,
    /// Latency in microseconds at each of [`PERCENTILES`].
    lat_us: [f64; 5],
    mean_us: f64,
    ops: u64,
    hit_ratio: f64,
    errors: u64,
    timeouts: u64,
    conn_errors: u64,
    client_cpu: f64,
    /// CPU of the proxy process alone (of memcached for `direct`), cores.
    proxy_cpu: f64,
    /// The proxy's CPU time (on-CPU time, from schedstat) in the window per request
    /// completed, in microseconds: the figure issue 8 compares.
    us_per_req: f64,
    /// The memcached pool's CPU time in the window per request completed,
    /// in microseconds (0 for `direct`, where memcached is the target).
    pool_us_per_req: f64,
    /// TCP data segments the proxy sent to its pool per request completed
    /// (`ss` data_segs_out; about its upstream sends per request).
    up_segs_per_req: Option<f64>,
    /// CPU of the whole SUT: the proxy and its memcached pool, cores.
    sut_cpu: f64,
    /// CPU used on the client and SUT cores by anything else (other
    /// processes, interrupts, steal): noise.
    other_cpu: f64,
}

/// CPU use and upstream segments at one moment, to take the measured
/// window's figures from two of them.
struct Sample {
    /// The load generator's CPU seconds.
    client: f64,
    /// The proxy's, and the whole SUT's (proxy and pool).
    proxy: f64,
    sut: f64,
    /// Busy seconds of the watched cores.
    busy: f64,
    at: Instant,
    segs: Option<u64>,
}

impl Sample {
    fn take(client: f64, live: &Live, watched: &[usize]) -> Sample {
        Sample {
            client,
            proxy: procs_cpu(&[live.pid]),
            sut: procs_cpu(&live.sut_pids),
            busy: cpus_busy(watched),
            at: Instant::now(),
            segs: upstream_segs(live.pid, &live.upstreams),
        }
    }

    /// The CPU and segment figures from this sample to `end`, with `ops`
    /// requests completed in between; the other fields are left at zero.
    fn until(&self, end: &Sample, ops: f64) -> RunStats {
        let wall = (end.at - self.at).as_secs_f64().max(1e-9);
        let (client, proxy, sut) = (
            end.client - self.client,
            end.proxy - self.proxy,
            end.sut - self.sut,
        );
        RunStats {
            client_cpu: client / wall,
            proxy_cpu: proxy / wall,
            us_per_req: proxy * 1e6 / ops,
            pool_us_per_req: (sut - proxy).max(0.0) * 1e6 / ops,
            up_segs_per_req: match (self.segs, end.segs) {
                (Some(a), Some(b)) => Some(b.saturating_sub(a) as f64 / ops),
                _ => None,
            },
            sut_cpu: sut / wall,
            other_cpu: ((end.busy - self.busy - client - sut) / wall).max(0.0),
            ..RunStats::default()
        }
    }
}

/// Populate (if asked), warm up and measure one workload against `live`.
fn run_one(
    rt: &tokio::runtime::Runtime,
    w: &Workload,
    live: &Live,
    populate_first: bool,
    watched: &[usize],
    opts: &Opts,
) -> Result<RunStats, String> {
    let w = Arc::new(w.clone());
    let corpus = Arc::new(Corpus::new(&w));
    let addr = live.addr;
    let local = tokio::task::LocalSet::new();
    local.block_on(rt, async {
        if populate_first {
            tokio::time::timeout(
                Duration::from_secs(120),
                populate(live.populate_addr, corpus.clone()),
            )
            .await
            .map_err(|_| "populate timed out".to_string())??;
        }

        // Connect everything first so connection setup is not measured.
        let mut streams = Vec::with_capacity(w.conns);
        for chunk in (0..w.conns).collect::<Vec<_>>().chunks(100) {
            let tls = live.tls.clone();
            let conns = chunk.iter().map(move |_| {
                let tls = tls.clone();
                async move {
                    match tls {
                        None => connect(addr).await.map(|s| (s, None)),
                        Some(cfg) => connect_tls(addr, cfg).await.map(|(s, t)| (s, Some(t))),
                    }
                }
            });
            for s in futures_join_all(conns).await {
                streams.push(s.map_err(|e| format!("connect {addr}: {e}"))?);
            }
        }

        let tally = Rc::new(RefCell::new(Tally::new()));
        let start = Instant::now();
        let win = Window {
            measure: start + opts.warmup,
            end: start + opts.warmup + opts.duration,
        };
        let mut seed_rng = Rng(0x5eed ^ u64::from(w.id as u32));
        let mut tasks = Vec::with_capacity(w.conns);
        for (stream, tls) in streams {
            let tally = tally.clone();
            let seed = seed_rng.next();
            let phase = match w.rate {
                Some(r) => Duration::from_secs_f64(
                    w.conns as f64 * w.depth as f64 / r * (seed >> 11) as f64 / (1u64 << 53) as f64,
                ),
                None => Duration::ZERO,
            };
            let mut d = Driver {
                w: w.clone(),
                corpus: corpus.clone(),
                rng: Rng(seed),
                wbuf: BytesMut::with_capacity(4096 + w.value_size * w.depth),
                rbuf: BytesMut::with_capacity(64 * 1024),
                tls,
                cbuf: BytesMut::with_capacity(8 * 1024),
                craw: BytesMut::with_capacity(64 * 1024),
                items: Vec::with_capacity(w.multiget),
                inflight: VecDeque::with_capacity(w.depth),
                slot_freed_at: start,
                timer: if opts.spread && w.rate.is_some() {
                    Some(HiresTimer::new().map_err(|e| format!("timerfd: {e}"))?)
                } else {
                    None
                },
            };
            tasks.push(tokio::task::spawn_local(async move {
                if let Err(e) = d.run(stream, win, phase, &tally).await {
                    tally.borrow_mut().error(e);
                }
            }));
        }

        // Sample CPU use around the measured window only.
        tokio::time::sleep_until(win.measure.into()).await;
        let before = Sample::take(self_cpu(), live, watched);
        tokio::time::sleep_until(win.end.into()).await;
        let after = Sample::take(self_cpu(), live, watched);
        for t in tasks {
            let _ = t.await;
        }
        let t = tally.borrow();
        if t.ops == 0 {
            return Err(t.first_error.clone().unwrap_or_else(|| {
                format!(
                    "no request completed in the window ({} unanswered at the drain timeout)",
                    t.timeouts
                )
            }));
        }
        let secs = opts.duration.as_secs_f64();
        let mut lat_us = [0.0; 5];
        for (slot, (_, q)) in lat_us.iter_mut().zip(PERCENTILES) {
            *slot = t.hist.value_at_quantile(q) as f64 / 1000.0;
        }
        Ok(RunStats {
            ops_per_sec: t.ops as f64 / secs,
            keys_per_sec: (t.keys_requested + t.set_ok) as f64 / secs,
            lat_us,
            mean_us: t.hist.mean() / 1000.0,
            ops: t.ops,
            hit_ratio: if t.keys_requested == 0 {
                1.0
            } else {
                t.hits as f64 / t.keys_requested as f64
            },
            errors: t.errors,
            timeouts: t.timeouts,
            conn_errors: t.conn_errors,
            ..before.until(&after, t.ops as f64)
        })
    })
}

/// Await all futures concurrently on the local set (no `futures` crate needed).
async fn futures_join_all<F>(futs: impl Iterator<Item = F>) -> Vec<F::Output>
where
    F: std::future::Future + 'static,
    F::Output: 'static,
{
    let handles: Vec<_> = futs.map(tokio::task::spawn_local).collect();
    let mut out = Vec::with_capacity(handles.len());
    for h in handles {
        match h.await {
            Ok(v) => out.push(v),
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        }
    }
    out
}

// ---------------------------------------------------------------------------
// Rounds and medians
// ---------------------------------------------------------------------------

/// One (workload, target) over all its rounds.
#[derive(Clone, Debug)]
struct Summary {
    workload: char,
    target: &'static str,
    /// Rounds that produced numbers.
    rounds: usize,
    /// Field-wise medians over those rounds (error counts summed, hit ratio
    /// the lowest). `None` when no round produced numbers.
    stats: Option<RunStats>,
    /// CPU µs per request of each round that produced numbers, in order.
    us_rounds: Vec<f64>,
    /// Median over rounds of this target's µs per request divided by
    /// nutcracker's in the same round.
    vs_nutcracker: Option<f64>,
    note: String,
}

/// Median of `v` (mean of the middle two for an even count); NaN if empty.
fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Field-wise medians of several rounds' stats.
fn median_stats(runs: &[&RunStats]) -> RunStats {
    let med = |f: &dyn Fn(&RunStats) -> f64| median(runs.iter().map(|r| f(r)).collect());
    let mut lat_us = [0.0; 5];
    for (i, slot) in lat_us.iter_mut().enumerate() {
        *slot = med(&|r| r.lat_us[i]);
    }
    let segs: Vec<f64> = runs.iter().filter_map(|r| r.up_segs_per_req).collect();
    RunStats {
        ops_per_sec: med(&|r| r.ops_per_sec),
        keys_per_sec: med(&|r| r.keys_per_sec),
        lat_us,
        mean_us: med(&|r| r.mean_us),
        ops: med(&|r| r.ops as f64) as u64,
        hit_ratio: runs.iter().map(|r| r.hit_ratio).fold(1.0, f64::min),
        errors: runs.iter().map(|r| r.errors).sum(),
        timeouts: runs.iter().map(|r| r.timeouts).sum(),
        conn_errors: runs.iter().map(|r| r.conn_errors).sum(),
        client_cpu: med(&|r| r.client_cpu),
        proxy_cpu: med(&|r| r.proxy_cpu),
        us_per_req: med(&|r| r.us_per_req),
        pool_us_per_req: med(&|r| r.pool_us_per_req),
        up_segs_per_req: (!segs.is_empty()).then(|| median(segs)),
        sut_cpu: med(&|r| r.sut_cpu),
        other_cpu: med(&|r| r.other_cpu),
    }
}

/// Medians per (workload, target), ratios to nutcracker paired by round,
/// and the flags that make a row suspect.
fn summarize(opts: &Opts, targets: &[TargetKind], results: &[RunResult]) -> Vec<Summary> {
    let mut out = Vec::new();
    for w in &opts.workloads {
        let nut = |round: usize| {
            results.iter().find_map(|r| {
                (r.round == round && r.workload == w.id && r.target == "nutcracker")
                    .then_some(r.stats.as_ref())
                    .flatten()
            })
        };
        for t in targets {
            let mine: Vec<&RunResult> = results
                .iter()
                .filter(|r| r.workload == w.id && r.target == t.name())
                .collect();
            let ok: Vec<&RunStats> = mine.iter().filter_map(|r| r.stats.as_ref()).collect();
            let ratios: Vec<f64> = mine
                .iter()
                .filter_map(|r| {
                    let n = nut(r.round)?;
                    let m = r.stats.as_ref()?;
                    (n.us_per_req > 0.0).then(|| m.us_per_req / n.us_per_req)
                })
                .collect();
            let mut notes: Vec<String> = Vec::new();
            for r in &mine {
                if !r.note.is_empty() && !notes.contains(&r.note) {
                    notes.push(r.note.clone());
                }
            }
            let stats = (!ok.is_empty()).then(|| median_stats(&ok));
            if let Some(s) = &stats {
                if s.errors + s.timeouts + s.conn_errors > 0 {
                    notes.push(format!(
                        "errors={} timeouts={} conn_errors={}",
                        s.errors, s.timeouts, s.conn_errors
                    ));
                }
                if let Some(rate) = w.rate {
                    if s.ops_per_sec < 0.97 * rate {
                        notes.push("below offered rate".into());
                    }
                }
                if s.client_cpu > 0.9 {
                    notes.push("client-bound".into());
                }
                if s.other_cpu > 0.2 {
                    notes.push("noisy".into());
                }
                if ok.len() < mine.len() {
                    notes.push(format!(
                        "{} of {} rounds failed",
                        mine.len() - ok.len(),
                        mine.len()
                    ));
                }
            }
            out.push(Summary {
                workload: w.id,
                target: t.name(),
                rounds: ok.len(),
                us_rounds: ok.iter().map(|s| s.us_per_req).collect(),
                stats,
                vs_nutcracker: (!ratios.is_empty()).then(|| median(ratios)),
                note: notes.join("; "),
            });
        }
    }
    out
}

// ---------------------------------------------------------------------------
// Output
// ---------------------------------------------------------------------------

/// How requests arrive, by the driver that sends them.
fn arrivals(opts: &Opts) -> &'static str {
    match (opts.driver, opts.spread) {
        (DriverKind::Memtier, _) => {
            "memtier_benchmark's: per connection, trains of rate/50 every 20 ms"
        }
        (DriverKind::Own, true) => "spread (exponential gaps per connection)",
        (DriverKind::Own, false) => "in 1 ms bursts",
    }
}

fn print_table(opts: &Opts, sums: &[Summary]) {
    println!();
    println!(
        "medians of {} round(s); us/req = the proxy's own CPU (scheduler on-CPU time) per request \
         completed; x nutc = that ratio to nutcracker, paired by round; pool = its memcached \
         pool's CPU per request; sum = both",
        opts.rounds
    );
    println!(
        "shape: pools on the {} core, arrivals {}",
        if opts.pool_on_client {
            "client's"
        } else {
            "proxy's (flattering)"
        },
        arrivals(opts)
    );
    println!(
        "{:<3} {:<13} {:>8} {:>8} {:>8} {:>9} {:>7} {:>6} {:>6} {:>6} {:>8} {:>5} {:>5} {:>5}  note",
        "wl",
        "target",
        "ops/s",
        "p50 us",
        "p99 us",
        "p99.9 us",
        "us/req",
        "pool",
        "sum",
        "x nutc",
        "segs/req",
        "prx%",
        "sut%",
        "oth%"
    );
    for w in &opts.workloads {
        let offered = w.rate.map_or("closed loop".to_string(), |r| {
            format!("offered {r:.0} req/s")
        });
        println!("--- {}: {} ({offered})", w.id, w.name);
        let mut by_round = Vec::new();
        for r in sums.iter().filter(|r| r.workload == w.id) {
            match &r.stats {
                Some(s) => {
                    println!(
                        "{:<3} {:<13} {:>8.0} {:>8.1} {:>8.1} {:>9.1} {:>7.2} {:>6.2} {:>6.2} {:>6} {:>8} {:>5.0} {:>5.0} {:>5.0}  {}",
                        r.workload,
                        r.target,
                        s.ops_per_sec,
                        s.lat_us[0],
                        s.lat_us[2],
                        s.lat_us[3],
                        s.us_per_req,
                        s.pool_us_per_req,
                        s.us_per_req + s.pool_us_per_req,
                        r.vs_nutcracker.map_or("-".into(), |x| format!("{x:.2}")),
                        s.up_segs_per_req.map_or("-".into(), |x| format!("{x:.3}")),
                        s.proxy_cpu * 100.0,
                        s.sut_cpu * 100.0,
                        s.other_cpu * 100.0,
                        r.note
                    );
                    let rounds: Vec<String> =
                        r.us_rounds.iter().map(|u| format!("{u:.2}")).collect();
                    by_round.push(format!("{} {}", r.target, rounds.join(" ")));
                }
                None => println!(
                    "{:<3} {:<13} {:>8}  {}",
                    r.workload, r.target, "n/a", r.note
                ),
            }
        }
        if opts.rounds > 1 && !by_round.is_empty() {
            println!("    us/req by round: {}", by_round.join(" | "));
        }
        if let Some(line) = against_peers(w.id, sums) {
            println!("    {line}");
        }
    }
    println!();
    println!(
        "targets (issue 18): memring's CPU per request below nutcracker's and memcached's          proxy's; its p99 at most 1.1x the best peer's (medians above)."
    );
    println!(
        "segs/req = TCP data segments the proxy sent to its pool per client request (ss \
         data_segs_out), about its upstream sends per request."
    );
    println!(
        "prx% / sut% / oth% = CPU of the proxy alone / of the proxy + its memcached pool / of \
         anything else on the client and SUT cores (100 = one core)."
    );
    println!(
        "client-bound: the load generator used > 90 % of its core. noisy: oth% > 20, other work \
         competed; rerun. below offered rate: the target did not keep up, so its us/req is not \
         at the fixed rate."
    );
}

/// memring against its peers (nutcracker, memcached's proxy) in workload
/// `wl`: CPU per request over each peer's and p99 over the best peer's,
/// each marked met or not against issue 18's targets. `None` without
/// memring or without a peer in the run.
fn against_peers(wl: char, sums: &[Summary]) -> Option<String> {
    let stats = |t: &str| {
        sums.iter()
            .find(|s| s.workload == wl && s.target == t)?
            .stats
            .as_ref()
    };
    let me = stats("memring")?;
    let peers: Vec<(&str, &RunStats)> = ["nutcracker", "mcproxy"]
        .into_iter()
        .filter_map(|t| Some((t, stats(t)?)))
        .collect();
    let verdict = |ok: bool| if ok { "met" } else { "NOT met" };
    let mut parts: Vec<String> = peers
        .iter()
        .map(|(t, p)| {
            let r = me.us_per_req / p.us_per_req;
            format!("CPU {r:.3}x {t} ({})", verdict(r < 1.0))
        })
        .collect();
    let best = peers
        .iter()
        .map(|(_, p)| p.lat_us[2])
        .fold(f64::INFINITY, f64::min);
    if best.is_finite() {
        let r = me.lat_us[2] / best;
        parts.push(format!(
            "p99 {r:.2}x the best peer's ({})",
            verdict(r <= 1.1)
        ));
    }
    (!parts.is_empty()).then(|| format!("memring: {}", parts.join(", ")))
}

fn write_csv(path: &Path, opts: &Opts, sums: &[Summary]) -> io::Result<()> {
    let mut s = String::from(
        "workload,target,rounds,offered_rate,ops_per_sec,keys_per_sec,p50_us,p90_us,p99_us,\
         p999_us,max_us,mean_us,us_per_req,pool_us_per_req,vs_nutcracker,upstream_segs_per_req,hit_ratio,errors,\
         timeouts,conn_errors,client_cpu,proxy_cpu,sut_cpu,other_cpu,conns,depth,keys,value_size,\
         get_weight,set_weight,multiget,note\n",
    );
    let opt = |v: Option<f64>, prec: usize| v.map_or(String::new(), |x| format!("{x:.prec$}"));
    for r in sums {
        let w = opts.workloads.iter().find(|w| w.id == r.workload);
        let _ = write!(
            s,
            "{},{},{},{},",
            r.workload,
            r.target,
            r.rounds,
            opt(w.and_then(|w| w.rate), 0)
        );
        match &r.stats {
            Some(x) => {
                let _ = write!(
                    s,
                    "{:.1},{:.1},{:.2},{:.2},{:.2},{:.2},{:.2},{:.2},{:.3},{:.3},{},{},{:.4},{},{},{},{:.3},{:.3},{:.3},{:.3},",
                    x.ops_per_sec,
                    x.keys_per_sec,
                    x.lat_us[0],
                    x.lat_us[1],
                    x.lat_us[2],
                    x.lat_us[3],
                    x.lat_us[4],
                    x.mean_us,
                    x.us_per_req,
                    x.pool_us_per_req,
                    opt(r.vs_nutcracker, 3),
                    opt(x.up_segs_per_req, 4),
                    x.hit_ratio,
                    x.errors,
                    x.timeouts,
                    x.conn_errors,
                    x.client_cpu,
                    x.proxy_cpu,
                    x.sut_cpu,
                    x.other_cpu
                );
            }
            None => s.push_str(",,,,,,,,,,,,,,,,,,,,"),
        }
        if let Some(w) = w {
            let _ = write!(
                s,
                "{},{},{},{},{},{},{},",
                w.conns, w.depth, w.keys, w.value_size, w.get_weight, w.set_weight, w.multiget,
            );
        } else {
            s.push_str(",,,,,,,");
        }
        let _ = writeln!(s, "\"{}\"", r.note.replace('"', "'"));
    }
    std::fs::write(path, s)
}

fn stats_json(x: &RunStats) -> serde_json::Value {
    serde_json::json!({
        "ops_per_sec": x.ops_per_sec, "keys_per_sec": x.keys_per_sec,
        "latency_us": {
            "p50": x.lat_us[0], "p90": x.lat_us[1], "p99": x.lat_us[2],
            "p99.9": x.lat_us[3], "max": x.lat_us[4], "mean": x.mean_us,
        },
        "ops": x.ops, "hit_ratio": x.hit_ratio, "errors": x.errors,
        "timeouts": x.timeouts, "conn_errors": x.conn_errors,
        "us_per_req": x.us_per_req, "pool_us_per_req": x.pool_us_per_req,
        "upstream_segs_per_req": x.up_segs_per_req,
        "client_cpu": x.client_cpu, "proxy_cpu": x.proxy_cpu, "sut_cpu": x.sut_cpu,
        "other_cpu": x.other_cpu,
    })
}

fn write_json(
    path: &Path,
    opts: &Opts,
    sums: &[Summary],
    results: &[RunResult],
    machine: &serde_json::Value,
) -> io::Result<()> {
    use serde_json::json;
    let workloads: Vec<_> = opts
        .workloads
        .iter()
        .map(|w| {
            json!({
                "id": w.id.to_string(), "name": w.name, "conns": w.conns, "depth": w.depth,
                "keys": w.keys, "value_size": w.value_size, "get_weight": w.get_weight,
                "set_weight": w.set_weight, "multiget": w.multiget, "rate": w.rate,
            })
        })
        .collect();
    let summary: Vec<_> = sums
        .iter()
        .map(|r| {
            json!({
                "workload": r.workload.to_string(), "target": r.target, "rounds": r.rounds,
                "median": r.stats.as_ref().map(stats_json),
                "us_per_req_by_round": r.us_rounds, "vs_nutcracker": r.vs_nutcracker,
                "note": r.note,
            })
        })
        .collect();
    let runs: Vec<_> = results
        .iter()
        .map(|r| {
            json!({
                "round": r.round, "workload": r.workload.to_string(), "target": r.target,
                "stats": r.stats.as_ref().map(stats_json), "note": r.note,
            })
        })
        .collect();
    let doc = json!({
        "command": opts.command,
        "rounds": opts.rounds,
        "duration_s": opts.duration.as_secs_f64(),
        "warmup_s": opts.warmup.as_secs_f64(),
        "quick": opts.quick,
        "pool_on_client_core": opts.pool_on_client,
        "driver": match opts.driver {
            DriverKind::Own => "own",
            DriverKind::Memtier => "memtier_benchmark",
        },
        "arrivals": arrivals(opts),
        "machine": machine,
        "workloads": workloads,
        "summary": summary,
        "runs": runs,
    });
    let text = serde_json::to_string_pretty(&doc).map_err(io::Error::other)?;
    std::fs::write(path, text + "\n")
}

/// One colour per target, in `TargetKind::ALL` order.
const COLORS: [(u8, u8, u8); 7] = [
    (127, 127, 127),
    (31, 119, 180),
    (255, 127, 14),
    (214, 39, 40),
    (44, 160, 44),
    (148, 103, 189),
    (140, 86, 75),
];

fn color_of(target: &str) -> plotters::style::RGBColor {
    let i = TargetKind::ALL
        .iter()
        .position(|t| t.name() == target)
        .unwrap_or(0);
    let (r, g, b) = COLORS[i];
    plotters::style::RGBColor(r, g, b)
}

/// The plot: a panel of CPU per request (every workload, every target),
/// then one latency panel per workload (p50 .. max on a log axis).
fn write_svg(path: &Path, opts: &Opts, sums: &[Summary]) -> Result<(), String> {
    use plotters::prelude::*;
    let n = opts.workloads.len() + 1;
    let cols = n.min(3);
    let rows = n.div_ceil(cols);
    let root = SVGBackend::new(path, (440 * cols as u32, 340 * rows as u32)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let panels = root.split_evenly((rows, cols));
    let targets: Vec<&'static str> = TargetKind::ALL
        .iter()
        .map(|t| t.name())
        .filter(|t| sums.iter().any(|s| s.target == *t && s.stats.is_some()))
        .collect();

    // CPU per request, grouped bars.
    let nw = opts.workloads.len();
    let top = sums
        .iter()
        .filter_map(|s| s.stats.as_ref().map(|x| x.us_per_req))
        .fold(1.0f64, f64::max);
    let ids: Vec<char> = opts.workloads.iter().map(|w| w.id).collect();
    let mut chart = ChartBuilder::on(&panels[0])
        .caption(
            format!("CPU per request, medians of {} round(s)", opts.rounds),
            ("sans-serif", 13),
        )
        .margin(10)
        .x_label_area_size(28)
        .y_label_area_size(45)
        .build_cartesian_2d(0f64..nw as f64, 0f64..top * 1.45)
        .map_err(|e| e.to_string())?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(nw * 2 + 1)
        .x_label_formatter(&|x| {
            let i = x - 0.5;
            if (i - i.round()).abs() < 1e-6 && i >= 0.0 {
                ids.get(i.round() as usize)
                    .map_or(String::new(), |c| c.to_string())
            } else {
                String::new()
            }
        })
        .y_desc("proxy CPU us / request")
        .draw()
        .map_err(|e| e.to_string())?;
    let bw = 0.8 / targets.len().max(1) as f64;
    for (ti, t) in targets.iter().enumerate() {
        let color = color_of(t);
        let bars: Vec<Rectangle<(f64, f64)>> = opts
            .workloads
            .iter()
            .enumerate()
            .filter_map(|(wi, w)| {
                let s = sums
                    .iter()
                    .find(|s| s.workload == w.id && s.target == *t)?
                    .stats
                    .as_ref()?;
                let x0 = wi as f64 + 0.1 + ti as f64 * bw;
                Some(Rectangle::new(
                    [(x0, 0.0), (x0 + bw * 0.9, s.us_per_req)],
                    color.filled(),
                ))
            })
            .collect();
        chart
            .draw_series(bars)
            .map_err(|e| e.to_string())?
            .label(t.to_string())
            .legend(move |(x, y)| Rectangle::new([(x, y - 4), (x + 12, y + 4)], color.filled()));
    }
    legend(&mut chart, 11)?;

    for (panel, w) in panels.iter().skip(1).zip(&opts.workloads) {
        let runs: Vec<(&Summary, &RunStats)> = targets
            .iter()
            .filter_map(|t| {
                let r = sums.iter().find(|r| r.workload == w.id && r.target == *t)?;
                Some((r, r.stats.as_ref()?))
            })
            .collect();
        let (mut lo, mut hi) = (f64::MAX, 0.0f64);
        for (_, s) in &runs {
            for v in s.lat_us {
                lo = lo.min(v.max(0.1));
                hi = hi.max(v);
            }
        }
        if runs.is_empty() {
            (lo, hi) = (1.0, 10.0);
        }
        let mut chart = ChartBuilder::on(panel)
            .caption(format!("{}: {}", w.id, w.name), ("sans-serif", 12))
            .margin(10)
            .x_label_area_size(28)
            .y_label_area_size(55)
            .build_cartesian_2d(-0.2f64..4.2f64, (lo * 0.8..hi * 1.25).log_scale())
            .map_err(|e| e.to_string())?;
        chart
            .configure_mesh()
            .x_labels(5)
            .x_label_formatter(&|x| {
                let i = x.round();
                if (x - i).abs() < 1e-6 && (0.0..=4.0).contains(&i) {
                    PERCENTILES[i as usize].0.to_string()
                } else {
                    String::new()
                }
            })
            .y_desc("latency (us)")
            .y_label_formatter(&|v| {
                if *v >= 100.0 {
                    format!("{v:.0}")
                } else {
                    format!("{v:.1}")
                }
            })
            .draw()
            .map_err(|e| e.to_string())?;
        for (r, s) in runs {
            let color = color_of(r.target);
            let pts: Vec<(f64, f64)> = s
                .lat_us
                .iter()
                .enumerate()
                .map(|(x, y)| (x as f64, *y))
                .collect();
            chart
                .draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))
                .map_err(|e| e.to_string())?
                .label(format!("{} ({:.0} ops/s)", r.target, s.ops_per_sec))
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 15, y)], color.stroke_width(2))
                });
            chart
                .draw_series(pts.into_iter().map(|p| Circle::new(p, 3, color.filled())))
                .map_err(|e| e.to_string())?;
        }
        legend(&mut chart, 10)?;
    }
    root.present().map_err(|e| e.to_string())
}

/// Draw `chart`'s legend (the series' labels) in its upper left corner.
fn legend<'a, DB, CT>(
    chart: &mut plotters::chart::ChartContext<'a, DB, CT>,
    font: u32,
) -> Result<(), String>
where
    DB: plotters::prelude::DrawingBackend + 'a,
    CT: plotters::coord::CoordTranslate,
{
    use plotters::prelude::*;
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .border_style(BLACK)
        .background_style(WHITE.mix(0.85))
        .label_font(("sans-serif", font))
        .draw()
        .map_err(|e| e.to_string())
}

/// The sweep's plot: p50 and p99 against offered rate (log axis), and the
/// proxy's CPU per request against offered rate, one line per target. A
/// point where the target fell below 97 % of the offered rate is a cross:
/// past saturation.
fn write_curve_svg(path: &Path, opts: &Opts, sums: &[Summary]) -> Result<(), String> {
    use plotters::prelude::*;
    let root = SVGBackend::new(path, (1100, 420)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let panels = root.split_evenly((1, 2));
    // (target, [(offered, stats)]) in rate order.
    let mut lines: Vec<(&'static str, Vec<(f64, &RunStats)>)> = Vec::new();
    for t in TargetKind::ALL.iter().map(|t| t.name()) {
        let pts: Vec<(f64, &RunStats)> = opts
            .workloads
            .iter()
            .filter_map(|w| {
                let s = sums.iter().find(|s| s.workload == w.id && s.target == t)?;
                Some((w.rate?, s.stats.as_ref()?))
            })
            .collect();
        if !pts.is_empty() {
            lines.push((t, pts));
        }
    }
    let all = || lines.iter().flat_map(|(_, p)| p.iter());
    let x_hi = all().map(|(r, _)| *r).fold(1.0, f64::max) * 1.05;
    let lat_lo = all()
        .map(|(_, s)| s.lat_us[0].max(1.0))
        .fold(f64::MAX, f64::min);
    let lat_hi = all().map(|(_, s)| s.lat_us[2]).fold(10.0, f64::max);
    let cpu_hi = all().map(|(_, s)| s.us_per_req).fold(1.0, f64::max);
    let saturated = |r: f64, s: &RunStats| s.ops_per_sec < 0.97 * r;
    let krate = |x: &f64| format!("{:.0}k", x / 1000.0);

    let mut lat = ChartBuilder::on(&panels[0])
        .caption(
            format!(
                "p99 (solid) and p50 (thin) against offered load, medians of {} round(s)",
                opts.rounds
            ),
            ("sans-serif", 13),
        )
        .margin(10)
        .x_label_area_size(32)
        .y_label_area_size(55)
        .build_cartesian_2d(
            0f64..x_hi,
            (lat_lo.min(lat_hi) * 0.8..lat_hi * 1.3).log_scale(),
        )
        .map_err(|e| e.to_string())?;
    lat.configure_mesh()
        .x_desc("offered requests/s")
        .x_label_formatter(&krate)
        .y_desc("latency (us)")
        .y_label_formatter(&|v| format!("{v:.0}"))
        .draw()
        .map_err(|e| e.to_string())?;
    let mut cpu = ChartBuilder::on(&panels[1])
        .caption(
            "proxy CPU per request against offered load",
            ("sans-serif", 13),
        )
        .margin(10)
        .x_label_area_size(32)
        .y_label_area_size(45)
        .build_cartesian_2d(0f64..x_hi, 0f64..cpu_hi * 1.3)
        .map_err(|e| e.to_string())?;
    cpu.configure_mesh()
        .x_desc("offered requests/s")
        .x_label_formatter(&krate)
        .y_desc("us / request")
        .draw()
        .map_err(|e| e.to_string())?;
    for (t, pts) in &lines {
        let color = color_of(t);
        let mark = |x: f64, y: f64, s: &RunStats| -> DynElement<SVGBackend, (f64, f64)> {
            if saturated(x, s) {
                Cross::new((x, y), 5, color.stroke_width(2)).into_dyn()
            } else {
                Circle::new((x, y), 3, color.filled()).into_dyn()
            }
        };
        let p99: Vec<(f64, f64)> = pts.iter().map(|(r, s)| (*r, s.lat_us[2])).collect();
        let p50: Vec<(f64, f64)> = pts.iter().map(|(r, s)| (*r, s.lat_us[0])).collect();
        lat.draw_series(LineSeries::new(p99, color.stroke_width(2)))
            .map_err(|e| e.to_string())?
            .label(t.to_string())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 15, y)], color.stroke_width(2))
            });
        lat.draw_series(LineSeries::new(p50, color.stroke_width(1)))
            .map_err(|e| e.to_string())?;
        lat.draw_series(pts.iter().map(|(r, s)| mark(*r, s.lat_us[2], s)))
            .map_err(|e| e.to_string())?;
        let us: Vec<(f64, f64)> = pts.iter().map(|(r, s)| (*r, s.us_per_req)).collect();
        cpu.draw_series(LineSeries::new(us, color.stroke_width(2)))
            .map_err(|e| e.to_string())?
            .label(t.to_string())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 15, y)], color.stroke_width(2))
            });
        cpu.draw_series(pts.iter().map(|(r, s)| mark(*r, s.us_per_req, s)))
            .map_err(|e| e.to_string())?;
    }
    legend(&mut lat, 11)?;
    legend(&mut cpu, 11)?;
    root.present().map_err(|e| e.to_string())
}

/// First line of a command's output (stdout, then stderr), or "".
fn first_line(bin: &Path, args: &[&str]) -> String {
    Command::new(bin)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map(|o| {
            let mut s = String::from_utf8_lossy(&o.stdout).to_string();
            s.push_str(&String::from_utf8_lossy(&o.stderr));
            s.lines().next().unwrap_or("").trim().to_string()
        })
        .unwrap_or_default()
}

fn machine_info(
    opts: &Opts,
    place: Placement,
    client_cpu: Option<usize>,
    cpus_allowed: usize,
    bins: &[(&'static str, String)],
) -> serde_json::Value {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .map(|r| r.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_default();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mem_kb = std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:").map(|v| v.trim().to_string()))
        .unwrap_or_default();
    let git = |args: &[&str]| {
        Command::new("git")
            .arg("-C")
            .arg(env!("CARGO_MANIFEST_DIR"))
            .args(args)
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default()
    };
    let date = Command::new("date")
        .args(["-u", "+%Y-%m-%dT%H:%M:%SZ"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let mut m = serde_json::json!({
        "date_utc": date,
        "cpu_model": model,
        // SAFETY: sysconf has no preconditions. (available_parallelism would
        // see the affinity the harness pinned itself to.)
        "cpus_online": unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) },
        "cpus_allowed": cpus_allowed,
        "mem_total": mem_kb,
        "kernel": kernel.trim(),
        "client_cpu": client_cpu,
        "server_cpu": place.server_cpu,
        "memring_threads": opts.memring_threads,
        "memring_backups": opts.backups,
        "memring_args": std::env::var("MEMRING_ARGS").unwrap_or_default(),
        "memring_base_args": std::env::var("MEMRING_BASE_ARGS").unwrap_or_default(),
        "memring_commit": git(&["rev-parse", "--short", "HEAD"]),
        "memring_dirty": !git(&["status", "--porcelain", "--untracked-files=no"]).is_empty(),
        "memcached": first_line(Path::new(MEMCACHED), &["-V"]),
        "nutcracker": first_line(Path::new(NUTCRACKER), &["-V"]),
    });
    for (k, v) in bins {
        m[*k] = serde_json::Value::String(v.clone());
    }
    m
}

// ---------------------------------------------------------------------------
// main
// ---------------------------------------------------------------------------

fn main() {
    let opts = match parse_opts(std::env::args().collect()) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    if !Path::new(MEMCACHED).exists() {
        eprintln!("load: {MEMCACHED} not found; install it with `apt-get install memcached`");
        std::process::exit(1);
    }
    if let Err(e) = run(opts) {
        eprintln!("load: {e}");
        std::process::exit(1);
    }
}

/// The memring binary `cargo bench` built next to the harness, unless
/// `MEMRING_BIN` names another.
fn memring_bin() -> PathBuf {
    std::env::var_os("MEMRING_BIN")
        .map(PathBuf::from)
        .or_else(|| option_env!("CARGO_BIN_EXE_memring").map(PathBuf::from))
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target/release/memring"))
}

fn run(opts: Opts) -> Result<(), String> {
    // Raise the fd limit for the 1000-connection workload; children inherit it.
    // SAFETY: getrlimit/setrlimit on a zeroed struct we own.
    unsafe {
        let mut rl: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) == 0 && rl.rlim_cur < rl.rlim_max {
            rl.rlim_cur = rl.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &rl);
        }
    }

    // Client on one core, SUT on another, when there are two to choose from.
    let cpus = allowed_cpus();
    let (mut client_cpu, mut place) = (None, Placement { server_cpu: None });
    if opts.pin && cpus.len() >= 2 {
        let c = opts.client_cpu.unwrap_or(cpus[0]);
        let s = opts
            .server_cpu
            .unwrap_or(if cpus[0] == c { cpus[1] } else { cpus[0] });
        match pin_self(c) {
            Ok(()) => {
                client_cpu = Some(c);
                place.server_cpu = Some(s);
            }
            Err(e) => eprintln!("load: cannot pin to cpu {c} ({e}); running unpinned"),
        }
    }
    println!(
        "load: client on cpu {}, servers on cpu {}; {} rounds of {} warmup + {} measured per run",
        client_cpu.map_or("any".into(), |c| c.to_string()),
        place.server_cpu.map_or("any".into(), |c| c.to_string()),
        opts.rounds,
        humantime(opts.warmup),
        humantime(opts.duration)
    );

    let memtier_bin = match opts.driver {
        DriverKind::Own => None,
        DriverKind::Memtier => {
            let bin = memtier::bin()?;
            println!("load: driver {}", first_line(&bin, &["--version"]));
            Some(bin)
        }
    };
    let dir = std::env::temp_dir().join(format!("memring-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;

    // Processes live until the end of this function and are stopped by PID on drop.
    let mut procs: Vec<Proc> = Vec::new();
    let mut targets: Vec<(TargetKind, Started)> = Vec::new();
    let mut pool: Vec<SocketAddr> = Vec::new();
    let mut pool_pids: Vec<u32> = Vec::new();
    let mut bins: Vec<(&'static str, String)> = Vec::new();
    if let Some(bin) = &memtier_bin {
        bins.push(("memtier", first_line(bin, &["--version"])));
    }
    let pool_place = if opts.pool_on_client {
        Placement {
            server_cpu: client_cpu,
        }
    } else {
        place
    };
    let needs_pool = opts
        .targets
        .iter()
        .any(|t| !matches!(t, TargetKind::Direct | TargetKind::MemringTls));
    // The TLS target has a pool of its own, serving TLS only.
    let mut tls_pool: Vec<SocketAddr> = Vec::new();
    let mut tls_pool_pids: Vec<u32> = Vec::new();
    let mut tls_client = None;
    if opts.targets.contains(&TargetKind::MemringTls) {
        make_certs(&dir)?;
        let opt = format!(
            "ssl_chain_cert={},ssl_key={}",
            dir.join("server.pem").display(),
            dir.join("server.key").display()
        );
        let extra = ["-Z".to_string(), "-o".to_string(), opt];
        for i in 0..3 {
            let (p, a) =
                start_memcached_with(&format!("memcached-tls{i}"), &extra, pool_place, &dir)?;
            tls_pool.push(a);
            tls_pool_pids.push(p.pid());
            procs.push(p);
        }
        tls_client = Some(tls_client_config(&dir.join("ca.pem"))?);
    }
    if needs_pool {
        for i in 0..3 {
            let (p, a) = start_memcached(&format!("memcached-pool{i}"), pool_place, &dir)?;
            pool.push(a);
            pool_pids.push(p.pid());
            procs.push(p);
        }
    }
    // memring's flags beyond the pool: the backups (`--backups`; their CPU
    // counts as the pool's), then MEMRING_ARGS / MEMRING_BASE_ARGS.
    let mut memring_extra: Vec<String> = Vec::new();
    if opts.backups && needs_pool {
        for i in 0..3 {
            let (p, a) = start_memcached(&format!("memcached-backup{i}"), pool_place, &dir)?;
            memring_extra.extend(["-b".to_string(), a.to_string()]);
            pool_pids.push(p.pid());
            procs.push(p);
        }
    }
    let env_args = |var: &str| -> Vec<String> {
        let mut v = memring_extra.clone();
        v.extend(
            std::env::var(var)
                .unwrap_or_default()
                .split_whitespace()
                .map(str::to_string),
        );
        v
    };
    let (main_args, base_args) = (env_args("MEMRING_ARGS"), env_args("MEMRING_BASE_ARGS"));
    for &t in &opts.targets {
        let started = match t {
            TargetKind::Direct => {
                start_memcached("memcached-direct", place, &dir).map(|(p, a)| (p, a, None))
            }
            TargetKind::Nutcracker if !Path::new(NUTCRACKER).exists() => Err(format!(
                "not installed ({NUTCRACKER}; `apt-get install nutcracker`)"
            )),
            TargetKind::Nutcracker => {
                start_nutcracker(&pool, place, &dir).map(|(p, a)| (p, a, None))
            }
            TargetKind::McProxy => mcproxy_bin().and_then(|bin| {
                bins.push(("mcproxy", first_line(&bin, &["-V"])));
                start_mcproxy(&bin, &pool, place, &dir).map(|(p, a)| (p, a, None))
            }),
            TargetKind::MemringTls => {
                let bin = memring_bin();
                bins.push(("memring_bin", bin.display().to_string()));
                let (cert, key, ca) = (
                    dir.join("server.pem").display().to_string(),
                    dir.join("server.key").display().to_string(),
                    dir.join("ca.pem").display().to_string(),
                );
                let extra = [
                    "--tls-listen",
                    "127.0.0.1:0",
                    "--tls-cert",
                    &cert,
                    "--tls-key",
                    &key,
                    "--server-tls",
                    "--server-tls-ca",
                    &ca,
                ];
                start_memring(
                    t.name(),
                    &bin,
                    &extra,
                    &tls_pool,
                    opts.memring_threads,
                    place,
                    &dir,
                )
            }
            TargetKind::Memring | TargetKind::MemringEpoll => {
                let mut extra: Vec<&str> = main_args.iter().map(String::as_str).collect();
                if t == TargetKind::MemringEpoll {
                    extra.extend(["--io-backend", "epoll"]);
                }
                let bin = memring_bin();
                bins.push(("memring_bin", bin.display().to_string()));
                start_memring(
                    t.name(),
                    &bin,
                    &extra,
                    &pool,
                    opts.memring_threads,
                    place,
                    &dir,
                )
            }
            TargetKind::MemringBase => match std::env::var_os("MEMRING_BASE_BIN") {
                None => Err("set MEMRING_BASE_BIN to the memring build to compare".into()),
                Some(bin) => {
                    let bin = PathBuf::from(bin);
                    bins.push(("memring_base_bin", bin.display().to_string()));
                    let extra: Vec<&str> = base_args.iter().map(String::as_str).collect();
                    start_memring(
                        t.name(),
                        &bin,
                        &extra,
                        &pool,
                        opts.memring_threads,
                        place,
                        &dir,
                    )
                }
            },
        };
        let entry = match started {
            Ok((p, plain, tls)) => {
                let mut sut_pids = vec![p.pid()];
                let upstreams = match t {
                    TargetKind::Direct => Vec::new(),
                    TargetKind::MemringTls => {
                        sut_pids.extend(&tls_pool_pids);
                        tls_pool.clone()
                    }
                    _ => {
                        sut_pids.extend(&pool_pids);
                        pool.clone()
                    }
                };
                let addr = tls.unwrap_or(plain);
                println!("load: {} on {addr} (pid {})", t.name(), p.pid());
                let live = Live {
                    addr,
                    populate_addr: plain,
                    tls: tls.and(tls_client.clone()),
                    pid: p.pid(),
                    sut_pids,
                    upstreams,
                };
                procs.push(p);
                Ok(live)
            }
            Err(e) => {
                println!("load: {} not available: {e}", t.name());
                Err(e)
            }
        };
        targets.push((t, entry));
    }
    if targets
        .iter()
        .any(|(t, e)| *t != TargetKind::Direct && e.is_ok())
        && Command::new("ss").arg("-V").output().is_err()
    {
        println!("load: `ss` not found (apt-get install iproute2): no upstream segment counts");
    }

    // The cores whose other users we report as noise: the two we pinned to,
    // or every allowed one when unpinned.
    let watched: Vec<usize> = match (client_cpu, place.server_cpu) {
        (Some(c), Some(s)) => vec![c, s],
        _ => cpus.clone(),
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("tokio runtime: {e}"))?;

    // Targets are interleaved: in every round each workload runs against
    // every target, in an order rotated by round and workload, so a slow
    // phase of this shared machine does not always land on the same target.
    let mut results = Vec::new();
    let t_all = Instant::now();
    for round in 0..opts.rounds {
        for (wi, w) in opts.workloads.iter().enumerate() {
            let mut order: Vec<&(TargetKind, Started)> = targets.iter().collect();
            let k = (round + wi) % order.len().max(1);
            order.rotate_left(k);
            for (t, entry) in order {
                let (stats, note) = match entry {
                    Err(e) => (None, e.clone()),
                    Ok(live) => {
                        print!("load: round {} {} {:<13} ... ", round + 1, w.id, t.name());
                        let _ = io::Write::flush(&mut io::stdout());
                        let ran = match &memtier_bin {
                            None => run_one(&rt, w, live, round == 0, &watched, &opts),
                            Some(bin) => {
                                memtier::run_one(bin, w, live, round == 0, &watched, &opts, &dir)
                            }
                        };
                        match ran {
                            Ok(s) => {
                                println!(
                                    "{:.0} ops/s, p99 {:.1} us, {:.2} us/req",
                                    s.ops_per_sec, s.lat_us[2], s.us_per_req
                                );
                                (Some(s), String::new())
                            }
                            Err(e) => {
                                println!("failed: {e}");
                                (None, format!("failed: {e}"))
                            }
                        }
                    }
                };
                results.push(RunResult {
                    round,
                    workload: w.id,
                    target: t.name(),
                    stats,
                    note,
                });
            }
        }
    }
    drop(rt);
    let machine = machine_info(&opts, place, client_cpu, cpus.len(), &bins);
    drop(procs); // stop every child before writing results
    let _ = std::fs::remove_dir_all(&dir);

    let kinds: Vec<TargetKind> = targets.iter().map(|(t, _)| *t).collect();
    let sums = summarize(&opts, &kinds, &results);
    print_table(&opts, &sums);
    std::fs::create_dir_all(&opts.out_dir)
        .map_err(|e| format!("{}: {e}", opts.out_dir.display()))?;
    let base = opts.out_dir.join("latest");
    write_csv(&base.with_extension("csv"), &opts, &sums).map_err(|e| format!("csv: {e}"))?;
    write_json(
        &base.with_extension("json"),
        &opts,
        &sums,
        &results,
        &machine,
    )
    .map_err(|e| format!("json: {e}"))?;
    write_svg(&base.with_extension("svg"), &opts, &sums).map_err(|e| format!("svg: {e}"))?;
    if opts.sweep {
        let curve = opts.out_dir.join("latest-curve.svg");
        write_curve_svg(&curve, &opts, &sums).map_err(|e| format!("curve svg: {e}"))?;
        println!("load: wrote {}", curve.display());
    }
    println!("load: command: {}", opts.command);
    println!(
        "load: wrote {}.{{csv,json,svg}} in {:.1}s total",
        base.display(),
        t_all.elapsed().as_secs_f64()
    );
    Ok(())
}

fn humantime(d: Duration) -> String {
    if d < Duration::from_secs(1) {
        format!("{}ms", d.as_millis())
    } else {
        format!("{:.1}s", d.as_secs_f64())
    }
}
