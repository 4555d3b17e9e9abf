//! The I/O shell: the only module that touches tokio-uring, tokio, sockets,
//! threads, signals and the clock.
//!
//! Startup: choose the backend (io_uring, or epoll when io_uring is refused),
//! resolve the servers, bind one SO_REUSEPORT listener per core, detach (unless
//! `-D`), write the pid file, drop privileges, then start one runtime thread
//! per core. The main thread keeps only signals: SIGHUP reloads the config
//! file, SIGTERM/SIGINT stop accepting, let in-flight requests finish
//! (bounded by `--shutdown-timeout`) and exit 0.

mod client;
mod core;
mod dispatch;
mod epoll;
mod io;
mod observe;
mod resync;
mod uring;

use std::fmt;
use std::io::Write as _;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, RwLock};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};

use crate::config::{Config, IoBackend};
use crate::metrics::CoreMetrics;
use crate::protocol::{frame_response, Expect, Framed, Status};
use crate::stats::CoreStats;
use crate::upstream::Probe;

use self::core::{Core, Shared, Topology};
use self::io::{Backend, Listener, Stream};

/// Why memring could not start or keep running.
#[derive(Debug)]
pub enum RunError {
    /// io_uring was refused and `--io-backend uring` forbids the fallback.
    IoUringRefused(std::io::Error),
    /// A server name did not resolve.
    Resolve(String),
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
            RunError::IoUringRefused(e) => write!(f, "{}", io_uring_refused_message(e)),
            RunError::Resolve(m) => write!(f, "cannot resolve {m}"),
            RunError::Bind { what, source } => write!(f, "cannot listen on {what}: {source}"),
            RunError::Setup(m) => f.write_str(m),
            RunError::Runtime(e) => write!(f, "cannot start a runtime thread: {e}"),
        }
    }
}

impl std::error::Error for RunError {}

/// The operator-facing explanation of an io_uring refusal.
pub fn io_uring_refused_message(e: &std::io::Error) -> String {
    format!(
        "io_uring is not available: io_uring_setup failed ({e}). Containers: Docker >= 25 and \
         containerd >= 2.0 block io_uring in their default seccomp profile; run with \
         `--security-opt seccomp=docker/seccomp-io_uring.json` (Kubernetes: \
         seccompProfile type Localhost). Hosts: check the sysctl kernel.io_uring_disabled \
         (0 allows it). Or run with --io-backend epoll (or auto) to use epoll instead."
    )
}

/// Run the proxy until SIGTERM/SIGINT. Returns only on a startup error.
pub fn run(cfg: Config) -> Result<(), RunError> {
    let use_uring = match cfg.io_backend {
        IoBackend::Epoll => false,
        IoBackend::Uring => {
            uring::probe().map_err(RunError::IoUringRefused)?;
            true
        }
        IoBackend::Auto => match uring::probe() {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!("{}; falling back to epoll", io_uring_refused_message(&e));
                false
            }
        },
    };
    if use_uring {
        start::<uring::Uring>(cfg)
    } else {
        start::<epoll::Epoll>(cfg)
    }
}

struct Listeners {
    tcp: Vec<TcpListener>,
    unix: Vec<UnixListener>,
    fds: Vec<RawFd>,
    announce: Vec<String>,
}

fn start<B: Backend>(cfg: Config) -> Result<(), RunError> {
    let started = Instant::now();
    let topo = Topology::build(&cfg, None, started).map_err(RunError::Resolve)?;
    let threads = cfg.threads.max(1);
    let listeners = bind_all(&cfg, threads)?;
    let metrics = match cfg.metrics_addr() {
        Some(addr) => Some(observe::bind(addr).map_err(|source| RunError::Bind {
            what: format!("metrics {addr}"),
            source,
        })?),
        None => None,
    };
    for line in &listeners.announce {
        println!("listening on {line}");
    }
    if let Some(Ok(addr)) = metrics.as_ref().map(TcpListener::local_addr) {
        println!("metrics on http://{addr}/metrics");
    }
    let _ = std::io::stdout().flush();
    if !cfg.foreground {
        // Before any thread exists: fork keeps only the calling thread.
        nix::unistd::daemon(true, false)
            .map_err(|e| RunError::Setup(format!("cannot detach: {e}")))?;
    }
    let pid_file = cfg.pid_file.as_ref().map(|p| absolute(p));
    if let Some(p) = &pid_file {
        std::fs::write(p, format!("{}\n", std::process::id()))
            .map_err(|e| RunError::Setup(format!("cannot write pid file {}: {e}", p.display())))?;
    }
    drop_privileges(cfg.user.as_deref(), cfg.group.as_deref())?;
    block_signals();

    let shared = Arc::new(Shared {
        generation: AtomicU64::new(topo.generation),
        topology: RwLock::new(Arc::new(topo)),
        stats: (0..threads).map(|_| CoreStats::default()).collect(),
        metrics: (0..threads).map(|_| CoreMetrics::default()).collect(),
        timing: cfg.latency_timing(),
        started,
        stopping: AtomicBool::new(false),
        backend: B::NAME,
        tcp_addr: listeners.tcp.first().and_then(|l| l.local_addr().ok()),
        cfg,
    });
    tracing::info!(backend = B::NAME, threads, "starting");
    if let Some(l) = metrics {
        observe::spawn(l, shared.clone()).map_err(RunError::Runtime)?;
    }

    let (ready_tx, ready_rx) = mpsc::channel::<Result<usize, std::io::Error>>();
    let mut tcp = listeners.tcp.into_iter();
    let mut unix = listeners.unix.into_iter();
    for id in 0..threads {
        let shared = shared.clone();
        let tcp = tcp.next();
        let unix = unix.next();
        let ready = ready_tx.clone();
        std::thread::Builder::new()
            .name(format!("memring-{id}"))
            .spawn(move || {
                let res = B::block_on(core_main::<B>(shared, id, tcp, unix, ready.clone()));
                if let Err(e) = res {
                    let _ = ready.send(Err(e));
                }
            })
            .map_err(RunError::Runtime)?;
    }
    drop(ready_tx);
    for _ in 0..threads {
        match ready_rx.recv() {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(RunError::Runtime(e)),
            Err(_) => {
                return Err(RunError::Runtime(std::io::Error::other(
                    "a runtime thread exited",
                )))
            }
        }
    }
    println!("ready");
    let _ = std::io::stdout().flush();
    signal_loop(&shared, &listeners.fds, pid_file.as_deref());
    Ok(())
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
        unix: Vec::new(),
        fds: Vec::new(),
        announce: Vec::new(),
    };
    if let Some(mut addr) = cfg.tcp_addr() {
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
            l.tcp.push(s);
        }
        l.announce.push(format!("tcp {addr}"));
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
    if l.tcp.is_empty() && l.unix.is_empty() {
        return Err(RunError::Setup(
            "nothing to listen on: -p 0 disables TCP, so give -f PATH or --bind ADDR:PORT".into(),
        ));
    }
    Ok(l)
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

fn drop_privileges(user: Option<&str>, group: Option<&str>) -> Result<(), RunError> {
    use nix::unistd::{getuid, setgid, setgroups, setuid, Gid, Group, Uid, User};
    if user.is_none() && group.is_none() {
        return Ok(());
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
    if !getuid().is_root() {
        // Only root can switch; asking for who we already are is fine.
        if target_user.is_some_and(|(u, _)| u != getuid()) {
            return Err(RunError::Setup("-u needs root to switch users".into()));
        }
        return Ok(());
    }
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
            Ok(Signal::SIGHUP) => reload(shared),
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

fn reload(shared: &Arc<Shared>) {
    let Some(path) = shared.cfg.config_file.clone() else {
        tracing::warn!("SIGHUP ignored: no --config file to reload");
        return;
    };
    let cfg = match crate::config::reload(&path, &shared.cfg) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(file = %path.display(), error = %e, "reload failed; keeping the running configuration");
            return;
        }
    };
    let current = shared.current();
    match Topology::build(&cfg, Some(&current), shared.started) {
        Ok(t) => {
            tracing::info!(
                generation = t.generation,
                servers = t.servers.len(),
                "configuration reloaded"
            );
            shared.swap_topology(t);
        }
        Err(e) => tracing::error!(error = %e, "reload failed; keeping the running configuration"),
    }
}

async fn core_main<B: Backend>(
    shared: Arc<Shared>,
    id: usize,
    tcp: Option<TcpListener>,
    unix: Option<UnixListener>,
    ready: mpsc::Sender<Result<usize, std::io::Error>>,
) {
    let core: Rc<Core<B>> = Core::new(shared.clone(), id);
    let wrapped = (
        tcp.map(B::tcp_listener).transpose(),
        unix.map(B::unix_listener).transpose(),
    );
    match wrapped {
        (Ok(tcp), Ok(unix)) => {
            if let Some(l) = tcp {
                tokio::task::spawn_local(accept_loop(core.clone(), l));
            }
            if let Some(l) = unix {
                tokio::task::spawn_local(accept_loop(core.clone(), l));
            }
        }
        (Err(e), _) | (_, Err(e)) => {
            let _ = ready.send(Err(e));
            return;
        }
    }
    let _ = ready.send(Ok(id));
    drop(ready);
    health_loop(core).await;
}

async fn accept_loop<B: Backend, L: Listener>(core: Rc<Core<B>>, l: L) {
    loop {
        let conn = l.accept().await;
        if core.shared.stopping.load(Ordering::Relaxed) {
            return;
        }
        match conn {
            Ok(s) => {
                let open: u64 = core
                    .shared
                    .stats
                    .iter()
                    .map(|c| c.curr_connections.load(Ordering::Relaxed))
                    .sum();
                if open >= core.shared.cfg.max_conns as u64 {
                    core.stats()
                        .incr(crate::stats::Counter::RejectedConnections);
                    tokio::task::spawn_local(async move {
                        let _ = s
                            .writev(vec![Bytes::from_static(
                                b"ERROR Too many open connections\r\n",
                            )])
                            .await;
                        s.shutdown();
                    });
                    continue;
                }
                tokio::task::spawn_local(client::serve(core.clone(), s));
            }
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

/// Every core looks for ejected servers whose probe is due; the first to
/// claim one probes it (and flushes it when it may hold stale values).
async fn health_loop<B: Backend>(core: Rc<Core<B>>) {
    let tick = Duration::from_millis(50);
    loop {
        tokio::time::sleep(tick.mul_f64(0.5 + core.jitter())).await;
        let topo = core.topology();
        let now = Instant::now();
        for (i, s) in topo.servers.iter().enumerate() {
            if let Some(probe) = s.health.try_claim_probe(now) {
                let id = crate::upstream::ServerId(i as u32);
                tokio::task::spawn_local(probe_and_rejoin(core.clone(), topo.clone(), id, probe));
            }
        }
    }
}

/// Probe a claimed server; on success it rejoins (and, with `--resync`, gets
/// its keys copied back), otherwise it goes back to waiting with a backoff.
async fn probe_and_rejoin<B: Backend>(
    core: Rc<Core<B>>,
    topo: Arc<Topology>,
    id: crate::upstream::ServerId,
    probe: Probe,
) {
    let s = &topo.servers[id.index()];
    let ok = probe_server::<B>(s.addr, probe, &topo.settings).await;
    let now = Instant::now();
    if ok && s.health.probe_succeeded(now, probe) {
        tracing::warn!(server = %s.name, flushed = probe.flush, "server rejoined");
        // It may have come back empty (restarted, or flushed just now).
        if topo.settings.resync {
            resync::resync(core.clone(), topo.clone(), id).await;
        }
        return;
    }
    if ok {
        tracing::info!(server = %s.name, "probe overtaken by a missed write; retrying");
    }
    s.health
        .probe_failed(now, &topo.settings.policy, probe, core.jitter());
}

/// Connect, ask `version`, and `flush_all` when the server may be stale.
async fn probe_server<B: Backend>(
    addr: SocketAddr,
    probe: Probe,
    settings: &core::Settings,
) -> bool {
    let attempt = async {
        let s = B::connect(addr).await.ok()?;
        let ok = roundtrip(&s, b"version\r\n").await == Some(Status::Version)
            && (!probe.flush || roundtrip(&s, b"flush_all\r\n").await == Some(Status::Ok));
        s.shutdown();
        Some(ok)
    };
    let limit = settings.connect_timeout + settings.request_timeout * 2;
    matches!(tokio::time::timeout(limit, attempt).await, Ok(Some(true)))
}

async fn roundtrip<S: Stream>(s: &S, req: &'static [u8]) -> Option<Status> {
    let (res, _) = s.writev(vec![Bytes::from_static(req)]).await;
    if res.ok()? != req.len() {
        return None;
    }
    let mut buf = BytesMut::with_capacity(256);
    let mut items = Vec::new();
    for _ in 0..64 {
        if let Ok(Framed::Complete { status, .. }) =
            frame_response(Expect::Line, &buf, 1024, &mut items)
        {
            return Some(status);
        }
        if buf.len() > 4096 {
            return None;
        }
        buf.reserve(256);
        let (res, b) = s.read(buf).await;
        buf = b;
        if res.ok()? == 0 {
            return None;
        }
    }
    None
}
