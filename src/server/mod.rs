//! The I/O shell: the only module that touches io_uring, epoll, sockets,
//! threads, signals and the clock.
//!
//! Startup: choose the driver (io_uring, or epoll when io_uring is refused),
//! resolve the servers, bind one SO_REUSEPORT listener per core, detach
//! (unless `-D`), write the pid file, drop privileges, then start one event
//! loop thread per core (`engine`) and the control plane (`control`:
//! probes and resync). The main thread keeps only signals: SIGHUP reloads
//! the config file, SIGTERM/SIGINT stop accepting, let in-flight requests
//! finish (bounded by `--shutdown-timeout`) and exit 0.

mod control;
mod driver;
mod engine;
mod exclusive;
mod limits;
pub mod logfile;
mod observe;
mod tls;
mod topology;
pub use topology::TopologyError;

use std::fmt;
use std::io::Write as _;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, RwLock};
use std::time::{Duration, Instant};

use crate::config::{Config, IoBackend};
use crate::metrics::CoreMetrics;
use crate::stats::CoreStats;

use self::driver::{Driver, EpollDriver, UringDriver};
use self::exclusive::Sections;
use self::topology::{Shared, Topology};

/// Why memring could not start or keep running.
#[derive(Debug)]
pub enum RunError {
    /// io_uring was refused and `--io-backend uring` forbids the fallback.
    IoUringRefused(std::io::Error),
    /// The servers could not be set up: a name did not resolve, two names
    /// are one server, a TLS file did not load.
    Resolve(topology::TopologyError),
    /// A listener could not be bound.
    Bind {
        /// What was being bound.
        what: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// Detaching, the pid file or dropping privileges failed.
    Setup(String),
    /// A runtime thread failed to start.
    Runtime(std::io::Error),
}

impl fmt::Display for RunError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RunError::IoUringRefused(e) => write!(f, "{}", io_uring_refused_message(e, false)),
            RunError::Resolve(e) => write!(f, "{e}"),
            RunError::Bind { what, source } => write!(f, "cannot listen on {what}: {source}"),
            RunError::Setup(m) => f.write_str(m),
            RunError::Runtime(e) => write!(f, "cannot start a runtime thread: {e}"),
        }
    }
}

impl std::error::Error for RunError {}

/// The operator-facing explanation of an io_uring refusal: why, how to
/// allow it, and what memring does about it (`falling_back`: uses epoll;
/// otherwise refuses, with how to choose epoll).
pub fn io_uring_refused_message(e: &std::io::Error, falling_back: bool) -> String {
    let then = if falling_back {
        "Falling back to epoll."
    } else {
        "Or run with --io-backend epoll (or auto) to use epoll instead."
    };
    format!(
        "io_uring is not available: io_uring_setup failed ({e}). Containers: Docker >= 25 and \
         containerd >= 2.0 block io_uring in their default seccomp profile; run with \
         `--security-opt seccomp=docker/seccomp-io_uring.json` (Kubernetes: \
         seccompProfile type Localhost). Hosts: check the sysctl kernel.io_uring_disabled \
         (0 allows it). {then}"
    )
}

/// Run the proxy until SIGTERM/SIGINT. Returns only on a startup error.
pub fn run(cfg: Config) -> Result<(), RunError> {
    let use_uring = match cfg.io_backend {
        IoBackend::Epoll => false,
        IoBackend::Uring => {
            driver::uring_available().map_err(RunError::IoUringRefused)?;
            true
        }
        IoBackend::Auto => match driver::uring_available() {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!("{}", io_uring_refused_message(&e, true));
                false
            }
        },
    };
    if use_uring {
        start_cores(cfg, UringDriver::NAME, engine_core::<UringDriver>)
    } else {
        start_cores(cfg, EpollDriver::NAME, engine_core::<EpollDriver>)
    }
}

/// How a core thread is run: given the shared state, its index, its
/// listeners, and where to report that it is ready (or why it is not).
type CoreMain = fn(Arc<Shared>, usize, engine::Listeners, ReadyTx);

/// A core reports once: ready (with a line describing its I/O setup), or the error.
type ReadyTx = mpsc::Sender<Result<String, std::io::Error>>;

/// The per-core engine on driver `D`.
fn engine_core<D: driver::Driver>(
    shared: Arc<Shared>,
    id: usize,
    listeners: engine::Listeners,
    ready: ReadyTx,
) {
    engine::run_core::<D>(shared, id, listeners, ready);
}

struct Listeners {
    tcp: Vec<TcpListener>,
    /// `--tls-listen`: one per core, like `tcp`.
    tls: Vec<TcpListener>,
    /// Pools with a `listen` of their own: (pool name, one per core).
    pools: Vec<(String, Vec<TcpListener>)>,
    unix: Vec<UnixListener>,
    fds: Vec<RawFd>,
    announce: Vec<String>,
}

/// `--check`: everything `run` would refuse before listening, without
/// binding: the servers resolve, the open-file limit leaves room for
/// clients, the user and group exist, the unix socket's and the pid file's
/// directories exist, the log file opens and the ports are free.
pub fn check(cfg: &Config) -> Result<(), RunError> {
    Topology::build(cfg, None, Instant::now()).map_err(RunError::Resolve)?;
    // Warns when the open-file limit would lower -n (this process's own
    // limit is raised, which ends with it).
    limits::fit_open_files(cfg).map_err(RunError::Setup)?;
    resolve_identity(cfg.user.as_deref(), cfg.group.as_deref())?;
    if let Some(path) = &cfg.unix_socket {
        parent_dir_exists(path, "unix socket")?;
    }
    if let Some(p) = &cfg.log_file {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(p)
            .map_err(|e| RunError::Setup(format!("cannot open log file {}: {e}", p.display())))?;
    }
    if let Some(p) = &cfg.pid_file {
        parent_dir_exists(p, "cannot write pid file")?;
    }
    // A port in use fails a start, so it fails the check too (run it with
    // the instance it replaces stopped, or reload that one with SIGHUP,
    // which checks the file and logs what it refuses).
    for addr in [cfg.tcp_addr(), cfg.tls_addr(), cfg.metrics_addr()]
        .into_iter()
        .flatten()
        .chain(pool_addrs(cfg))
    {
        port_is_free(addr)?;
    }
    Ok(())
}

/// `what {path}: directory {dir} does not exist` unless `path`'s directory
/// exists (the working directory for a bare file name).
fn parent_dir_exists(path: &Path, what: &str) -> Result<(), RunError> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    if dir.is_dir() {
        return Ok(());
    }
    Err(RunError::Setup(format!(
        "{what} {}: directory {} does not exist",
        path.display(),
        dir.display()
    )))
}

/// `--route KEY`: where KEY goes under `cfg` (names resolved, every
/// server taken as up), as `stats route` prints it.
pub fn route(cfg: &Config, key: &str) -> Result<String, RunError> {
    let topo = Topology::build(cfg, None, Instant::now()).map_err(RunError::Resolve)?;
    Ok(engine::route_text(&topo, key.as_bytes()))
}

/// Refuse a port another process already serves. memring's own listeners
/// share their port through SO_REUSEPORT, which would also let a second
/// memring (even one with other servers) bind it and silently take half of
/// the clients; a probe bound without SO_REUSEPORT fails if anyone listens.
fn port_is_free(addr: SocketAddr) -> Result<(), RunError> {
    use socket2::{Domain, Protocol, Socket, Type};
    if addr.port() == 0 {
        return Ok(());
    }
    let probe =
        Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP)).and_then(|s| {
            // SO_REUSEADDR: connections in TIME_WAIT from an earlier run do not count.
            s.set_reuse_address(true)?;
            if addr.is_ipv6() {
                s.set_only_v6(true)?;
            }
            s.bind(&addr.into())?;
            Ok(s)
        });
    match probe {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => Err(RunError::Setup(format!(
            "{addr} is already in use by another process"
        ))),
        Err(source) => Err(RunError::Bind {
            what: addr.to_string(),
            source,
        }),
    }
}

fn start_cores(cfg: Config, backend: &'static str, core: CoreMain) -> Result<(), RunError> {
    let started = Instant::now();
    let max_conns = limits::fit_open_files(&cfg).map_err(RunError::Setup)?;
    let topo = Topology::build(&cfg, None, started).map_err(RunError::Resolve)?;
    let threads = cfg.threads.max(1);
    // Before anything is bound or announced: a bad -u/-g fails here.
    let identity = resolve_identity(cfg.user.as_deref(), cfg.group.as_deref())?;
    for addr in [cfg.tcp_addr(), cfg.tls_addr()]
        .into_iter()
        .flatten()
        .chain(pool_addrs(&cfg))
    {
        port_is_free(addr)?;
    }
    let listeners = bind_all(&cfg, threads)?;
    let result = serve_on(Startup {
        max_conns,
        cfg: cfg.clone(),
        topo,
        threads,
        listeners,
        identity,
        started,
        backend,
        core,
    });
    // Every way out after binding removes the unix socket file.
    if let Some(p) = &cfg.unix_socket {
        let _ = std::fs::remove_file(p);
    }
    result
}

/// What starting needs once the listeners are bound.
struct Startup {
    /// Client connections allowed (`-n`, or fewer under the open-file limit).
    max_conns: usize,
    cfg: Config,
    topo: Topology,
    threads: usize,
    listeners: Listeners,
    identity: Identity,
    started: Instant,
    backend: &'static str,
    core: CoreMain,
}

fn serve_on(s: Startup) -> Result<(), RunError> {
    let (cfg, listeners) = (&s.cfg, &s.listeners);
    let metrics = match cfg.metrics_addr() {
        Some(addr) => Some(observe::bind(addr).map_err(|source| RunError::Bind {
            what: format!("metrics {addr}"),
            source,
        })?),
        None => None,
    };
    let mut announce: Vec<String> = listeners
        .announce
        .iter()
        .map(|l| format!("listening on {l}"))
        .collect();
    if let Some(Ok(addr)) = metrics.as_ref().map(TcpListener::local_addr) {
        announce.push(format!("metrics on http://{addr}/metrics"));
    }
    // Daemon mode: the parent stays until the daemon reports; only this
    // process (the daemon) returns.
    let report = if cfg.foreground {
        None
    } else {
        Some(detach(&announce)?)
    };
    let fds = listeners.fds.clone();
    let pid_file = cfg.pid_file.as_ref().map(|p| absolute(p));
    let (backend, threads) = (s.backend, s.threads);
    let up = start_serving(s, metrics, pid_file.as_deref());
    let shared = match up {
        Ok(shared) => shared,
        Err(e) => {
            if let Some(r) = report {
                r.fail(&e.to_string());
            }
            if let Some(p) = &pid_file {
                let _ = std::fs::remove_file(p);
            }
            return Err(e);
        }
    };
    // Every fallible step is behind us: only now is anything announced.
    tracing::info!(
        target: LIFECYCLE,
        pid = std::process::id(),
        version = env!("CARGO_PKG_VERSION"),
        backend,
        threads,
        listening = %announce.iter().map(|l| l.trim_start_matches("listening on ")).collect::<Vec<_>>().join(", "),
        "memring started"
    );
    match report {
        Some(r) => r.ready(),
        None => {
            for line in &announce {
                println!("{line}");
            }
            println!("ready");
            let _ = std::io::stdout().flush();
        }
    }
    signal_loop(&shared, &fds, pid_file.as_deref());
    Ok(())
}

/// The tracing target of lifecycle lines (start, reload, stop), logged at
/// info and shown at the default level.
pub const LIFECYCLE: &str = "memring::lifecycle";

/// The daemon's end of the pipe its parent waits on.
struct Report(std::fs::File);

impl Report {
    /// Everything is up: the parent announces the listeners and exits 0.
    fn ready(mut self) {
        let _ = self.0.write_all(b"ready\n");
    }

    /// Starting failed: the parent prints `why` on stderr and exits 1.
    fn fail(mut self, why: &str) {
        let _ = self.0.write_all(format!("error {why}\n").as_bytes());
    }
}

/// How long the parent of a daemon waits for it to report.
const DAEMON_REPORT_TIMEOUT: Duration = Duration::from_secs(120);

/// Detach like magent (`daemon(3)` with the working directory kept): fork;
/// the parent waits for the child's report on a pipe, prints `announce`
/// and exits 0 once it is ready, or prints its error and exits 1; the child
/// starts a new session, points stdio at /dev/null and carries on. Called
/// before any thread exists: fork keeps only the calling thread.
fn detach(announce: &[String]) -> Result<Report, RunError> {
    use std::os::fd::{FromRawFd, IntoRawFd};
    let setup =
        |what: &str, e: &dyn fmt::Display| RunError::Setup(format!("cannot detach: {what}: {e}"));
    let (rd, wr) = nix::unistd::pipe().map_err(|e| setup("pipe", &e))?;
    let _ = std::io::stdout().flush();
    // SAFETY: no other thread exists yet (see above), so the child may run
    // arbitrary code after fork.
    match unsafe { nix::unistd::fork() }.map_err(|e| setup("fork", &e))? {
        nix::unistd::ForkResult::Parent { .. } => {
            drop(wr);
            let code = wait_for_report(std::fs::File::from(rd), announce);
            std::process::exit(code);
        }
        nix::unistd::ForkResult::Child => {
            drop(rd);
            nix::unistd::setsid().map_err(|e| setup("setsid", &e))?;
            let null = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open("/dev/null")
                .map_err(|e| setup("/dev/null", &e))?;
            for fd in 0..3 {
                nix::unistd::dup2(null.as_raw_fd(), fd).map_err(|e| setup("dup2", &e))?;
            }
            // SAFETY: `wr` is this process's own pipe end, moved in here.
            Ok(Report(unsafe {
                std::fs::File::from_raw_fd(wr.into_raw_fd())
            }))
        }
    }
}

/// The parent's side of [`detach`]: the exit code to leave with.
fn wait_for_report(mut pipe: std::fs::File, announce: &[String]) -> i32 {
    use std::io::Read;
    let mut msg = String::new();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = pipe.read_to_string(&mut msg);
        let _ = tx.send(msg);
    });
    match rx.recv_timeout(DAEMON_REPORT_TIMEOUT) {
        Ok(m) if m.starts_with("ready") => {
            for line in announce {
                println!("{line}");
            }
            let _ = std::io::stdout().flush();
            0
        }
        Ok(m) => {
            let why = m.strip_prefix("error ").unwrap_or(&m).trim_end();
            if why.is_empty() {
                eprintln!("memring: the daemon exited before it was ready");
            } else {
                eprintln!("memring: {why}");
            }
            1
        }
        Err(_) => {
            eprintln!(
                "memring: the daemon did not report ready within {}s",
                DAEMON_REPORT_TIMEOUT.as_secs()
            );
            1
        }
    }
}

/// Everything after detaching that can fail, in order: the pid file,
/// privileges, the event loops, the control plane and the metrics
/// endpoint. Announces nothing.
fn start_serving(
    s: Startup,
    metrics: Option<TcpListener>,
    pid_file: Option<&Path>,
) -> Result<Arc<Shared>, RunError> {
    let Startup {
        max_conns,
        cfg,
        topo,
        threads,
        listeners,
        identity,
        started,
        backend,
        core,
    } = s;
    if let Some(p) = pid_file {
        std::fs::write(p, format!("{}\n", std::process::id()))
            .map_err(|e| RunError::Setup(format!("cannot write pid file {}: {e}", p.display())))?;
    }
    drop_privileges(identity)?;
    block_signals();

    let shared = Arc::new(Shared {
        generation: AtomicU64::new(topo.generation),
        topology: RwLock::new(Arc::new(topo)),
        stats: (0..threads).map(|_| CoreStats::default()).collect(),
        metrics: (0..threads).map(|_| CoreMetrics::default()).collect(),
        timing: cfg.latency_timing(),
        started,
        stopping: AtomicBool::new(false),
        backend,
        tcp_addr: listeners.tcp.first().and_then(|l| l.local_addr().ok()),
        sections: Sections::default(),
        input_bytes: Default::default(),
        // Sized once: a core publishes into its list without allocating.
        hot: (0..threads)
            .map(|_| std::sync::Mutex::new(Vec::with_capacity(crate::upstream::hot::SLOTS)))
            .collect(),
        max_conns,
        updating: Default::default(),
        cfg,
    });

    let (ready_tx, ready_rx) = mpsc::channel::<Result<String, std::io::Error>>();
    let mut tcp = listeners.tcp.into_iter();
    let mut tls = listeners.tls.into_iter();
    let mut unix = listeners.unix.into_iter();
    let mut pools: Vec<(String, std::vec::IntoIter<TcpListener>)> = listeners
        .pools
        .into_iter()
        .map(|(name, l)| (name, l.into_iter()))
        .collect();
    for id in 0..threads {
        let shared = shared.clone();
        let mine = engine::Listeners {
            tcp: tcp.next(),
            tls: tls.next(),
            unix: unix.next(),
            pools: pools
                .iter_mut()
                .filter_map(|(name, l)| Some((name.clone(), l.next()?)))
                .collect(),
        };
        let ready = ready_tx.clone();
        std::thread::Builder::new()
            .name(format!("memring-{id}"))
            .spawn(move || core(shared, id, mine, ready))
            .map_err(RunError::Runtime)?;
    }
    drop(ready_tx);
    for id in 0..threads {
        match ready_rx.recv() {
            Ok(Ok(setup)) => {
                if id == 0 && !setup.is_empty() {
                    tracing::info!(backend, setup = %setup, "event loops ready");
                }
            }
            Ok(Err(e)) => return Err(RunError::Runtime(e)),
            Err(_) => {
                return Err(RunError::Runtime(std::io::Error::other(
                    "a runtime thread exited",
                )))
            }
        }
    }
    control::spawn_prober(shared.clone()).map_err(RunError::Runtime)?;
    control::spawn_dns(shared.clone()).map_err(RunError::Runtime)?;
    if let Some(l) = metrics {
        observe::spawn(l, shared.clone()).map_err(RunError::Runtime)?;
    }
    Ok(shared)
}

fn absolute(p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir()
            .map(|d| d.join(p))
            .unwrap_or_else(|_| p.to_path_buf())
    }
}

/// One SO_REUSEPORT TCP listener per core (the kernel spreads connections
/// over them) and one unix listener shared by dup'd descriptors.
fn bind_all(cfg: &Config, threads: usize) -> Result<Listeners, RunError> {
    let mut l = Listeners {
        tcp: Vec::new(),
        tls: Vec::new(),
        pools: Vec::new(),
        unix: Vec::new(),
        fds: Vec::new(),
        announce: Vec::new(),
    };
    for (addr, tls) in [(cfg.tcp_addr(), false), (cfg.tls_addr(), true)] {
        let Some(mut addr) = addr else { continue };
        for _ in 0..threads {
            let s = bind_reuseport(addr).map_err(|source| RunError::Bind {
                what: addr.to_string(),
                source,
            })?;
            // Port 0: the first bind picks the port, the others join it.
            addr = s.local_addr().map_err(|source| RunError::Bind {
                what: addr.to_string(),
                source,
            })?;
            l.fds.push(s.as_raw_fd());
            if tls {
                l.tls.push(s);
            } else {
                l.tcp.push(s);
            }
        }
        l.announce
            .push(format!("{} {addr}", if tls { "tls" } else { "tcp" }));
    }
    for p in &cfg.pools {
        let Some(mut addr) = p
            .listen
            .as_deref()
            .and_then(|a| a.parse::<SocketAddr>().ok())
        else {
            continue;
        };
        let mut mine = Vec::with_capacity(threads);
        for _ in 0..threads {
            let what = format!("pool {} {addr}", p.name);
            let s = bind_reuseport(addr).map_err(|source| RunError::Bind {
                what: what.clone(),
                source,
            })?;
            addr = s
                .local_addr()
                .map_err(|source| RunError::Bind { what, source })?;
            l.fds.push(s.as_raw_fd());
            mine.push(s);
        }
        l.announce.push(format!("pool {} {addr}", p.name));
        l.pools.push((p.name.clone(), mine));
    }
    if let Some(path) = &cfg.unix_socket {
        let what = path.display().to_string();
        if let Ok(meta) = std::fs::symlink_metadata(path) {
            use std::os::unix::fs::FileTypeExt;
            if meta.file_type().is_socket() {
                let _ = std::fs::remove_file(path);
            }
        }
        let u = UnixListener::bind(path).map_err(|source| RunError::Bind {
            what: what.clone(),
            source,
        })?;
        u.set_nonblocking(true).map_err(|source| RunError::Bind {
            what: what.clone(),
            source,
        })?;
        if let Some(mask) = cfg.unix_mask {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(mask)).map_err(
                |source| RunError::Bind {
                    what: format!("{what} (mode {mask:o})"),
                    source,
                },
            )?;
        }
        l.fds.push(u.as_raw_fd());
        for _ in 1..threads {
            let d = u.try_clone().map_err(|source| RunError::Bind {
                what: what.clone(),
                source,
            })?;
            l.unix.push(d);
        }
        l.unix.insert(0, u);
        l.announce.push(format!("unix {what}"));
    }
    if l.tcp.is_empty() && l.unix.is_empty() && l.tls.is_empty() && l.pools.is_empty() {
        return Err(RunError::Setup(
            "nothing to listen on: -p 0 disables TCP, so give -f PATH or --bind ADDR:PORT".into(),
        ));
    }
    Ok(l)
}

/// The addresses of the pools' own listeners.
fn pool_addrs(cfg: &Config) -> impl Iterator<Item = SocketAddr> + '_ {
    cfg.pools
        .iter()
        .filter_map(|p| p.listen.as_deref()?.parse().ok())
}

fn bind_reuseport(addr: SocketAddr) -> std::io::Result<TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    s.set_reuse_address(true)?;
    s.set_reuse_port(true)?;
    if addr.is_ipv6() {
        s.set_only_v6(true)?;
    }
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    s.listen(1024)?;
    Ok(s.into())
}

/// The user and group to switch to after binding (`-u`, `-g`), resolved.
#[derive(Clone, Copy, Default)]
struct Identity {
    user: Option<(nix::unistd::Uid, nix::unistd::Gid)>,
    group: Option<nix::unistd::Gid>,
}

/// Look up `-u` and `-g`; an unknown name is an error, and so is switching
/// users without being root.
fn resolve_identity(user: Option<&str>, group: Option<&str>) -> Result<Identity, RunError> {
    use nix::unistd::{getuid, Gid, Group, Uid, User};
    if user.is_none() && group.is_none() {
        return Ok(Identity::default());
    }
    let find_user = |u: &str| -> Result<(Uid, Gid), RunError> {
        if let Ok(n) = u.parse::<u32>() {
            let uid = Uid::from_raw(n);
            let gid = User::from_uid(uid)
                .ok()
                .flatten()
                .map_or(Gid::from_raw(n), |u| u.gid);
            return Ok((uid, gid));
        }
        match User::from_name(u) {
            Ok(Some(u)) => Ok((u.uid, u.gid)),
            _ => Err(RunError::Setup(format!("unknown user {u:?} (-u)"))),
        }
    };
    let target_user = user.map(find_user).transpose()?;
    let target_group = match group {
        None => target_user.map(|(_, g)| g),
        Some(g) => Some(match g.parse::<u32>() {
            Ok(n) => Gid::from_raw(n),
            Err(_) => match Group::from_name(g) {
                Ok(Some(gr)) => gr.gid,
                _ => return Err(RunError::Setup(format!("unknown group {g:?} (-g)"))),
            },
        }),
    };
    // Only root can switch; asking for who we already are is fine.
    if !getuid().is_root() && target_user.is_some_and(|(u, _)| u != getuid()) {
        return Err(RunError::Setup("-u needs root to switch users".into()));
    }
    Ok(Identity {
        user: target_user,
        group: target_group,
    })
}

fn drop_privileges(id: Identity) -> Result<(), RunError> {
    use nix::unistd::{getuid, setgid, setgroups, setuid};
    if !getuid().is_root() {
        return Ok(());
    }
    let (target_user, target_group) = (id.user, id.group);
    if let Some(g) = target_group {
        setgroups(&[g]).map_err(|e| RunError::Setup(format!("setgroups: {e}")))?;
        setgid(g).map_err(|e| RunError::Setup(format!("setgid: {e}")))?;
    }
    if let Some((u, _)) = target_user {
        setuid(u).map_err(|e| RunError::Setup(format!("setuid: {e}")))?;
    }
    Ok(())
}

fn handled_signals() -> nix::sys::signal::SigSet {
    use nix::sys::signal::{SigSet, Signal};
    let mut set = SigSet::empty();
    set.add(Signal::SIGTERM);
    set.add(Signal::SIGINT);
    set.add(Signal::SIGHUP);
    set
}

/// Block the handled signals in this thread (and so in every thread it
/// starts); the main thread takes them with sigwait.
fn block_signals() {
    let _ = handled_signals().thread_block();
}

fn signal_loop(shared: &Arc<Shared>, fds: &[RawFd], pid_file: Option<&Path>) {
    use nix::sys::signal::Signal;
    let set = handled_signals();
    loop {
        match set.wait() {
            Ok(Signal::SIGHUP) => {
                if logfile::active() {
                    match logfile::reopen() {
                        Ok(()) => tracing::info!("log file reopened"),
                        Err(e) => tracing::warn!("cannot reopen the log file: {e}"),
                    }
                }
                // A SIGHUP for logrotate alone is not a failed reload.
                if shared.cfg.config_file.is_some() {
                    reload(shared);
                } else if shared.cfg.tls_listen.is_some() || shared.cfg.server_tls {
                    reload_certificates(shared);
                } else if !logfile::active() {
                    tracing::warn!("SIGHUP ignored: no --config file to reload");
                }
            }
            Ok(sig) => {
                tracing::info!(signal = %sig, "stopping: no new connections, finishing in-flight requests");
                shared.stopping.store(true, Ordering::SeqCst);
                for &fd in fds {
                    // Wakes the accept loops with an error.
                    let _ = nix::sys::socket::shutdown(fd, nix::sys::socket::Shutdown::Both);
                }
                let deadline = Instant::now() + shared.cfg.shutdown_timeout;
                let active = || -> u64 {
                    shared
                        .stats
                        .iter()
                        .map(|c| c.active_requests.load(Ordering::SeqCst))
                        .sum()
                };
                while active() > 0 && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(5));
                }
                if let Some(p) = &shared.cfg.unix_socket {
                    let _ = std::fs::remove_file(p);
                }
                if let Some(p) = pid_file {
                    let _ = std::fs::remove_file(p);
                }
                let _ = std::io::stdout().flush();
                std::process::exit(0);
            }
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        }
    }
}

/// SIGHUP without a config file: re-read the TLS certificates and keys
/// the command line names. New connections use them; open ones keep
/// their sessions. A file that fails keeps the running ones.
fn reload_certificates(shared: &Arc<Shared>) {
    let _updating = shared.updating.lock().unwrap_or_else(|e| e.into_inner());
    let current = shared.current();
    match Topology::build(&current.config, Some(&current), shared.started) {
        Ok(t) => {
            tracing::info!(target: LIFECYCLE, generation = t.generation, "TLS certificates reloaded");
            let _ = t.settle_after(&current);
            shared.swap_topology(t);
        }
        Err(e) => {
            tracing::error!(error = %e, "certificate reload failed; keeping the running certificates")
        }
    }
}

fn reload(shared: &Arc<Shared>) {
    let Some(path) = shared.cfg.config_file.clone() else {
        return;
    };
    let (cfg, kept) = match crate::config::reload_with_report(&path, &shared.cfg) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(file = %path.display(), error = %e, "reload failed; keeping the running configuration");
            return;
        }
    };
    for n in &cfg.notes {
        tracing::warn!(file = %path.display(), "{n}");
    }
    for setting in kept {
        tracing::warn!(
            file = %path.display(),
            setting,
            "{setting} changed in the file but needs a restart: the running value is kept"
        );
    }
    let _updating = shared.updating.lock().unwrap_or_else(|e| e.into_inner());
    let current = shared.current();
    match Topology::build(&cfg, Some(&current), shared.started) {
        Ok(t) => {
            let changes = crate::config::reload_changes(&current.config, &cfg);
            tracing::info!(
                target: LIFECYCLE,
                file = %path.display(),
                generation = t.generation,
                servers = t.servers.len(),
                changed = %if changes.is_empty() { "nothing".to_string() } else { changes.join(", ") },
                "configuration reloaded"
            );
            let moved = t.settle_after(&current);
            control::install(shared, t, moved);
        }
        Err(e) => {
            tracing::error!(file = %path.display(), error = %e, "reload failed; keeping the running configuration")
        }
    }
}
