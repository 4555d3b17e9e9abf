//! Integration-test harness shared by `tests/proxy_*.rs` and `tests/harness_selftest.rs`.
//!
//! Owns: starting real `memcached` servers and the real `memring` binary as
//! child processes (guards that kill + wait on Drop), a small blocking
//! memcached client with reply framing, and in-process fault servers
//! (blackhole, slow shim, garbage).
//!
//! Rules it enforces for every test: loopback only, no fixed ports, no sleeps
//! as synchronisation (waits poll a condition with a deadline), every loop is
//! bounded in count and time, and a missing memcached is a failure, never a
//! silent skip.
//!
//! Ports: memcached 1.6.18 treats `-p 0` as "no TCP listener" (so
//! `MEMCACHED_PORT_FILENAME` is created but stays empty). We therefore pick a
//! free port by binding 127.0.0.1:0, start memcached on it, and wait until
//! `/proc/<pid>/net/tcp` shows a listening socket on that port owned by that
//! very process (matched by socket inode against `/proc/<pid>/fd`). If the
//! port was taken in between, memcached exits and we retry with another one.
//! The same check is the readiness signal, and `restart()` reuses the port.

// Each test binary compiles this module and uses a different subset of it.
#![allow(dead_code)]

use std::collections::HashSet;
use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// How long a single blocking read or write may take before the test fails.
pub const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a child process may take to start listening.
pub const START_TIMEOUT: Duration = Duration::from_secs(20);
/// Upper bound on one framed reply (a few maximal values).
const MAX_REPLY: usize = 64 << 20;
/// Interval between polls of a condition (process state, /proc, a port).
const POLL: Duration = Duration::from_millis(5);

// ---------------------------------------------------------------------------
// Paths and small utilities
// ---------------------------------------------------------------------------

/// The memcached binary, or a panic that says how to install it.
pub fn memcached_path() -> PathBuf {
    let candidates = [
        std::env::var_os("MEMCACHED_BIN").map(PathBuf::from),
        Some(PathBuf::from("/usr/bin/memcached")),
        Some(PathBuf::from("/usr/local/bin/memcached")),
    ];
    for c in candidates.into_iter().flatten() {
        if c.is_file() {
            return c;
        }
    }
    panic!(
        "memcached not found (looked at $MEMCACHED_BIN, /usr/bin/memcached, \
         /usr/local/bin/memcached). These tests need a real memcached: \
         run `apt-get install -y memcached`"
    );
}

/// The memring binary under test.
pub fn memring_path() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_memring"))
}

/// A directory removed (with its contents) on Drop.
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    /// A fresh, empty directory under the system temp dir; `tag` goes into its name.
    pub fn new(tag: &str) -> TempDir {
        static SEQ: AtomicUsize = AtomicUsize::new(0);
        let base = std::env::temp_dir();
        for _ in 0..100 {
            let n = SEQ.fetch_add(1, Ordering::Relaxed);
            let path = base.join(format!("memring-test-{tag}-{}-{n}", std::process::id()));
            match fs::create_dir(&path) {
                Ok(()) => return TempDir { path },
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => panic!("cannot create temp dir {}: {e}", path.display()),
            }
        }
        panic!("cannot create a temp dir under {}", base.display());
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.path);
    }
}

/// A config file named `name` holding `text`, in a temporary directory
/// that lives as long as the returned guard.
pub fn config_file(name: &str, text: &str) -> (TempDir, PathBuf) {
    let dir = TempDir::new("config");
    let file = dir.path().join(name);
    std::fs::write(&file, text).expect("write the config file");
    (dir, file)
}

/// A loopback port that was free a moment ago. Racy by nature: callers must
/// retry when the bind fails later (see `Memring::start_retrying_port`).
pub fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().expect("local_addr").port()
}

/// Raise RLIMIT_NOFILE (soft) to at least `want`, capped by the hard limit.
/// Children (memcached, memring) inherit it. Returns the new soft limit.
pub fn raise_nofile(want: u64) -> u64 {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).expect("getrlimit");
    if soft >= want {
        return soft;
    }
    let new = want.min(hard);
    setrlimit(Resource::RLIMIT_NOFILE, new, hard).expect("setrlimit RLIMIT_NOFILE");
    new
}

/// Poll `cond` every few ms until it returns `Some`, or give up after `limit`.
pub fn wait_for<T>(limit: Duration, mut cond: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + limit;
    // Bounded by count as well as by time.
    let max_polls = (limit.as_millis() / POLL.as_millis().max(1)) as usize + 2;
    for _ in 0..max_polls {
        if let Some(v) = cond() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            break;
        }
        thread::sleep(POLL);
    }
    cond()
}

fn read_to_string_lossy(p: &Path) -> String {
    fs::read(p)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

/// TCP ports on which process `pid` has a listening socket, from /proc.
pub fn listening_ports(pid: u32) -> Vec<u16> {
    let mut inodes = HashSet::new();
    if let Ok(rd) = fs::read_dir(format!("/proc/{pid}/fd")) {
        for e in rd.flatten() {
            if let Ok(target) = fs::read_link(e.path()) {
                let s = target.to_string_lossy();
                if let Some(n) = s.strip_prefix("socket:[").and_then(|r| r.strip_suffix(']')) {
                    inodes.insert(n.to_string());
                }
            }
        }
    }
    let mut ports = Vec::new();
    for table in ["tcp", "tcp6"] {
        let Ok(text) = fs::read_to_string(format!("/proc/{pid}/net/{table}")) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let cols: Vec<&str> = line.split_whitespace().collect();
            // cols: sl local rem st tx:rx tr:when retrnsmt uid timeout inode
            if cols.len() > 9 && cols[3] == "0A" && inodes.contains(cols[9]) {
                if let Some((_, hex)) = cols[1].rsplit_once(':') {
                    if let Ok(p) = u16::from_str_radix(hex, 16) {
                        ports.push(p);
                    }
                }
            }
        }
    }
    ports
}

/// The one-letter state of a process from /proc/<pid>/stat (`R`, `S`, `T`, ...).
pub fn process_state(pid: u32) -> Option<char> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The comm field may contain spaces; the state follows the last ')'.
    let after = &stat[stat.rfind(')')? + 1..];
    after.trim_start().chars().next()
}

fn signal(pid: u32, sig: Signal) {
    let raw = i32::try_from(pid).expect("pid fits i32");
    kill(Pid::from_raw(raw), sig).unwrap_or_else(|e| panic!("kill({pid}, {sig:?}): {e}"));
}

/// Kill (SIGKILL) and reap a child if it is still ours.
fn kill_and_reap(child: &mut Child) {
    if let Ok(None) = child.try_wait() {
        let _ = child.kill();
    }
    let _ = child.wait();
}

// ---------------------------------------------------------------------------
// memcached
// ---------------------------------------------------------------------------

/// A real memcached on 127.0.0.1, killed and reaped on Drop.
pub struct Memcached {
    child: Option<Child>,
    port: u16,
    item_size: String,
    /// More arguments (e.g. `-Z` and its certificate for TLS).
    extra: Vec<String>,
    dir: TempDir,
    generation: usize,
}

impl Memcached {
    /// memcached with `-I 1m` (its default item size limit).
    pub fn start() -> Memcached {
        Memcached::start_with_item_size("1m")
    }

    /// memcached with `-I <item_size>` (e.g. `"2m"`).
    pub fn start_with_item_size(item_size: &str) -> Memcached {
        Memcached::start_with_args(item_size, &[])
    }

    /// memcached with `-I <item_size>` and `extra` arguments.
    pub fn start_with_args(item_size: &str, extra: &[&str]) -> Memcached {
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        let bin = memcached_path();
        let dir = TempDir::new("memcached");
        let mut last_err = String::new();
        // Bounded retries: each failure means another process took the port.
        for attempt in 0..20 {
            let port = free_port();
            match spawn_memcached(&bin, &dir, item_size, &extra, port, attempt) {
                Ok(child) => {
                    return Memcached {
                        child: Some(child),
                        port,
                        item_size: item_size.to_string(),
                        extra,
                        dir,
                        generation: attempt,
                    }
                }
                Err(e) => last_err = e,
            }
        }
        panic!("memcached did not start: {last_err}");
    }

    /// `n` independent servers with `-I <item_size>`.
    pub fn cluster(n: usize, item_size: &str) -> Vec<Memcached> {
        (0..n)
            .map(|_| Memcached::start_with_item_size(item_size))
            .collect()
    }

    /// Its TCP port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Its address.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// `127.0.0.1:<port>`, as passed to `-s`/`-b`.
    pub fn server_arg(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Process id (panics if killed).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("memcached is not running").id()
    }

    /// A client connected straight to this memcached.
    pub fn client(&self) -> Client {
        Client::tcp(self.addr())
    }

    /// SIGKILL and reap it. The port stays reserved for `restart()`.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            kill_and_reap(&mut c);
        }
    }

    /// SIGSTOP, and wait until the kernel reports it stopped.
    pub fn stop(&self) {
        let pid = self.pid();
        signal(pid, Signal::SIGSTOP);
        wait_for(START_TIMEOUT, || {
            (process_state(pid) == Some('T')).then_some(())
        })
        .unwrap_or_else(|| panic!("memcached {pid} did not stop after SIGSTOP"));
    }

    /// SIGCONT, and wait until it is no longer stopped.
    pub fn cont(&self) {
        let pid = self.pid();
        signal(pid, Signal::SIGCONT);
        wait_for(START_TIMEOUT, || {
            (process_state(pid) != Some('T')).then_some(())
        })
        .unwrap_or_else(|| panic!("memcached {pid} still stopped after SIGCONT"));
    }

    /// Kill it if it runs, then start a fresh (empty) memcached on the same port.
    pub fn restart(&mut self) {
        self.kill();
        self.generation += 1;
        let bin = memcached_path();
        let deadline = Instant::now() + START_TIMEOUT;
        let mut last_err = String::new();
        // The port can be briefly held by someone else (an ephemeral client
        // port); memcached then exits and we try again, bounded.
        for _ in 0..200 {
            match spawn_memcached(
                &bin,
                &self.dir,
                &self.item_size,
                &self.extra,
                self.port,
                self.generation,
            ) {
                Ok(child) => {
                    self.child = Some(child);
                    return;
                }
                Err(e) => last_err = e,
            }
            if Instant::now() >= deadline {
                break;
            }
            thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "memcached could not restart on port {}: {last_err}",
            self.port
        );
    }

    /// Whether the process is alive (not reaped).
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }
}

impl Drop for Memcached {
    fn drop(&mut self) {
        // SIGKILL also ends a SIGSTOPped process.
        self.kill();
    }
}

/// Spawn memcached on `port` and wait until this very process listens there.
/// Returns the child, or why it failed (with its stderr).
fn spawn_memcached(
    bin: &Path,
    dir: &TempDir,
    item_size: &str,
    extra: &[String],
    port: u16,
    generation: usize,
) -> Result<Child, String> {
    let stderr_path = dir.path().join(format!("stderr.{generation}"));
    let stderr = File::create(&stderr_path).map_err(|e| format!("create stderr file: {e}"))?;
    let mut cmd = Command::new(bin);
    cmd.args(["-U", "0", "-l", "127.0.0.1", "-t", "1", "-m", "64"])
        .args(["-p", &port.to_string(), "-I", item_size])
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(stderr));
    if nix::unistd::geteuid().is_root() {
        // memcached refuses to run as root without -u.
        cmd.args(["-u", "root"]);
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("spawn {}: {e}", bin.display()))?;
    let pid = child.id();
    let mut exited = None;
    let got = wait_for(START_TIMEOUT, || {
        if let Ok(Some(st)) = child.try_wait() {
            exited = Some(st);
            return Some(None);
        }
        listening_ports(pid).contains(&port).then_some(Some(()))
    });
    match got {
        Some(Some(())) => Ok(child),
        Some(None) => Err(format!(
            "memcached exited ({:?}) before listening; stderr: {}",
            exited,
            read_to_string_lossy(&stderr_path)
        )),
        None => {
            kill_and_reap(&mut child);
            Err(format!(
                "memcached did not listen within {START_TIMEOUT:?}; stderr: {}",
                read_to_string_lossy(&stderr_path)
            ))
        }
    }
}

// ---------------------------------------------------------------------------
// memring
// ---------------------------------------------------------------------------

/// The real memring binary, killed and reaped on Drop.
pub struct Memring {
    child: Option<Child>,
    /// The TCP listener it reported, if any.
    pub tcp: Option<SocketAddr>,
    /// The unix listener it reported, if any.
    pub unix: Option<PathBuf>,
    /// The TLS listener it reported, if any.
    pub tls: Option<SocketAddr>,
    /// Every `listening on ...` line, in order.
    pub listen_lines: Vec<String>,
    stderr_path: PathBuf,
    _dir: TempDir,
}

/// A process this test did not spawn itself (a daemon, known by its pid
/// file), killed (SIGKILL) when the guard drops.
pub struct KillOnDrop(pub i32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.0),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

/// `-D --bind 127.0.0.1:0 -s <each server>`: the common prefix of a test proxy.
pub fn proxy_args(servers: &[&Memcached]) -> Vec<String> {
    let mut a: Vec<String> = ["-D", "--bind", "127.0.0.1:0"].map(String::from).to_vec();
    for s in servers {
        a.push("-s".into());
        a.push(s.server_arg());
    }
    a
}

impl Memring {
    /// `memring -D --bind 127.0.0.1:0 -s ...servers <extra>`; panics with its stderr on failure.
    pub fn start_for(servers: &[&Memcached], extra: &[&str]) -> Memring {
        let mut args = proxy_args(servers);
        args.extend(extra.iter().map(|s| s.to_string()));
        Memring::start(&args)
    }

    /// `memring -D --bind 127.0.0.1:0 -s <primary> -b <backup> <extra>`.
    pub fn start_with_backup(primary: &Memcached, backup: &Memcached, extra: &[&str]) -> Memring {
        let mut args = proxy_args(&[primary]);
        args.extend(["-b".to_string(), backup.server_arg()]);
        args.extend(extra.iter().map(|s| s.to_string()));
        Memring::start(&args)
    }

    /// Start memring with exactly `args` (plus `--io-backend $MEMRING_IO_BACKEND`
    /// when set); panics with its stderr if it exits or is not ready in time.
    pub fn start<S: AsRef<str>>(args: &[S]) -> Memring {
        Memring::try_start(args).unwrap_or_else(|e| panic!("{e}"))
    }

    /// `memring -D --bind 127.0.0.1:0 <extra> --config <file>`.
    pub fn with_config(file: &Path, extra: &[&str]) -> Memring {
        let mut args: Vec<&str> = vec!["-D", "--bind", "127.0.0.1:0"];
        args.extend_from_slice(extra);
        args.push("--config");
        args.push(file.to_str().expect("a UTF-8 config path"));
        Memring::start(&args)
    }

    /// Like `start`, but hands back the failure (with the captured stderr).
    pub fn try_start<S: AsRef<str>>(args: &[S]) -> Result<Memring, String> {
        Memring::try_start_limited(args, None)
    }

    /// Like `start`, with the open-file limit (soft and hard) set to `nofile`.
    pub fn start_limited<S: AsRef<str>>(args: &[S], nofile: u64) -> Memring {
        Memring::try_start_limited(args, Some(nofile)).unwrap_or_else(|e| panic!("{e}"))
    }

    /// `try_start`, with the open-file limit set to `nofile` when given.
    pub fn try_start_limited<S: AsRef<str>>(
        args: &[S],
        nofile: Option<u64>,
    ) -> Result<Memring, String> {
        let dir = TempDir::new("memring");
        let stderr_path = dir.path().join("stderr");
        let stderr = File::create(&stderr_path).map_err(|e| format!("stderr file: {e}"))?;
        let mut argv: Vec<String> = args.iter().map(|s| s.as_ref().to_string()).collect();
        if let Ok(b) = std::env::var("MEMRING_IO_BACKEND") {
            if !b.is_empty() {
                argv.push("--io-backend".into());
                argv.push(b);
            }
        }
        let mut cmd = Command::new(memring_path());
        cmd.args(&argv)
            .env("RUST_BACKTRACE", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(stderr));
        if let Some(n) = nofile {
            use std::os::unix::process::CommandExt;
            // SAFETY: setrlimit is async-signal-safe; nothing else runs
            // between fork and exec here.
            unsafe {
                cmd.pre_exec(move || {
                    nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE, n, n)
                        .map_err(io::Error::from)
                });
            }
        }
        let mut child = cmd.spawn().map_err(|e| format!("spawn memring: {e}"))?;

        // A thread owns stdout: it forwards lines until EOF, so the pipe never
        // fills after `ready` and EOF tells us the process went away.
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel::<String>();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    // Receiver gone: keep draining so the child never blocks.
                    continue;
                }
            }
        });

        let fail = |child: &mut Child, why: String| -> String {
            kill_and_reap(child);
            format!(
                "memring {argv:?} {why}\n--- memring stderr ---\n{}",
                read_to_string_lossy(&stderr_path)
            )
        };
        let deadline = Instant::now() + START_TIMEOUT;
        let (mut tcp, mut unix, mut tls, mut listen_lines) = (None, None, None, Vec::new());
        // Bounded: at most a few listener lines precede `ready`.
        for _ in 0..64 {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    let l = line.trim_end();
                    if l == "ready" {
                        return Ok(Memring {
                            child: Some(child),
                            tcp,
                            unix,
                            tls,
                            listen_lines,
                            stderr_path: stderr_path.clone(),
                            _dir: dir,
                        });
                    } else if let Some(a) = l.strip_prefix("listening on tcp ") {
                        let addr: SocketAddr = a
                            .parse()
                            .map_err(|e| fail(&mut child, format!("bad listen line {l:?}: {e}")))?;
                        tcp.get_or_insert(addr);
                        listen_lines.push(l.to_string());
                    } else if let Some(a) = l.strip_prefix("listening on tls ") {
                        let addr: SocketAddr = a
                            .parse()
                            .map_err(|e| fail(&mut child, format!("bad listen line {l:?}: {e}")))?;
                        tls.get_or_insert(addr);
                        listen_lines.push(l.to_string());
                    } else if let Some(p) = l.strip_prefix("listening on unix ") {
                        unix.get_or_insert(PathBuf::from(p));
                        listen_lines.push(l.to_string());
                    } else if l.starts_with("listening on ") {
                        listen_lines.push(l.to_string());
                    }
                    // Anything else on stdout is ignored.
                }
                Err(RecvTimeoutError::Disconnected) => {
                    let st = wait_bounded(&mut child, START_TIMEOUT);
                    return Err(fail(
                        &mut child,
                        format!("exited before `ready` (status {st:?})"),
                    ));
                }
                Err(RecvTimeoutError::Timeout) => {
                    return Err(fail(
                        &mut child,
                        format!("printed no `ready` within {START_TIMEOUT:?}"),
                    ));
                }
            }
        }
        Err(fail(
            &mut child,
            "printed too many lines before `ready`".into(),
        ))
    }

    /// The TCP address (panics if it has no TCP listener).
    pub fn addr(&self) -> SocketAddr {
        self.tcp.expect("memring reported no TCP listener")
    }

    /// A client on its TCP listener.
    pub fn client(&self) -> Client {
        Client::tcp(self.addr())
    }

    /// A client on its unix listener.
    pub fn unix_client(&self) -> Client {
        Client::unix(
            self.unix
                .as_deref()
                .expect("memring reported no unix listener"),
        )
    }

    /// Process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("memring already reaped").id()
    }

    /// What it logged so far.
    pub fn stderr(&self) -> String {
        read_to_string_lossy(&self.stderr_path)
    }

    /// Panics (with its stderr) if the process has exited.
    pub fn assert_alive(&mut self) {
        let c = self.child.as_mut().expect("memring already reaped");
        if let Ok(Some(st)) = c.try_wait() {
            panic!(
                "memring exited unexpectedly ({st})\n--- stderr ---\n{}",
                self.stderr()
            );
        }
    }

    /// Send SIGHUP (reload the config file, reopen the log file).
    pub fn sighup(&self) {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.pid() as i32),
            nix::sys::signal::Signal::SIGHUP,
        )
        .expect("SIGHUP");
    }

    /// SIGTERM and wait (bounded) for it to exit; returns its status.
    pub fn terminate(&mut self) -> ExitStatus {
        let mut c = self.child.take().expect("memring already reaped");
        signal(c.id(), Signal::SIGTERM);
        match wait_bounded(&mut c, START_TIMEOUT) {
            Some(st) => st,
            None => {
                kill_and_reap(&mut c);
                panic!(
                    "memring did not exit within {START_TIMEOUT:?} of SIGTERM\n--- stderr ---\n{}",
                    self.stderr()
                );
            }
        }
    }
}

impl Drop for Memring {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            kill_and_reap(&mut c);
        }
    }
}

fn wait_bounded(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    wait_for(limit, || child.try_wait().ok().flatten())
}

// ---------------------------------------------------------------------------
// Client
// ---------------------------------------------------------------------------

/// A TCP or unix stream.
pub enum Stream {
    /// TCP.
    Tcp(TcpStream),
    /// Unix domain socket.
    Unix(UnixStream),
}

impl Stream {
    fn try_clone(&self) -> io::Result<Stream> {
        Ok(match self {
            Stream::Tcp(s) => Stream::Tcp(s.try_clone()?),
            Stream::Unix(s) => Stream::Unix(s.try_clone()?),
        })
    }

    fn set_read_timeout(&self, t: Duration) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.set_read_timeout(Some(t)),
            Stream::Unix(s) => s.set_read_timeout(Some(t)),
        }
    }

    fn shutdown(&self, how: Shutdown) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.shutdown(how),
            Stream::Unix(s) => s.shutdown(how),
        }
    }
}

impl Read for Stream {
    fn read(&mut self, b: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.read(b),
            Stream::Unix(s) => s.read(b),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.write(b),
            Stream::Unix(s) => s.write(b),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// How the reply to one request is framed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reply {
    /// No reply (`noreply`, `quit`).
    None,
    /// One line.
    Line,
    /// `VALUE <key> <flags> <bytes> [<cas>]\r\n<data>\r\n`* then `END\r\n` (or one error line).
    Values,
    /// `STAT ...\r\n`* then `END\r\n` (or one error line).
    Stats,
    /// One meta line; `VA <len> ...` is followed by `<data>\r\n`.
    Meta,
}

impl Reply {
    /// The framing memcached uses for the reply to `cmd` (its first line).
    /// Meta commands with the `q` flag may not answer at all: send them with
    /// `Client::send` and sync with `mn`.
    pub fn for_request(cmd: &[u8]) -> Reply {
        let line = first_line(cmd);
        let toks: Vec<&[u8]> = line
            .split(|b| *b == b' ')
            .filter(|t| !t.is_empty())
            .collect();
        let Some(verb) = toks.first() else {
            return Reply::Line;
        };
        match *verb {
            b"get" | b"gets" | b"gat" | b"gats" => Reply::Values,
            b"stats" => Reply::Stats,
            b"quit" => Reply::None,
            b"mg" | b"ms" | b"md" | b"ma" | b"mn" | b"me" => Reply::Meta,
            _ if toks.last() == Some(&&b"noreply"[..]) => Reply::None,
            _ => Reply::Line,
        }
    }
}

fn first_line(b: &[u8]) -> &[u8] {
    let end = b.iter().position(|c| *c == b'\n').unwrap_or(b.len());
    let l = &b[..end];
    l.strip_suffix(b"\r").unwrap_or(l)
}

/// A small blocking memcached client: every read has a timeout, every reply
/// is framed by the request it answers, and bytes are returned exactly.
pub struct Client {
    stream: Stream,
    buf: Vec<u8>,
    start: usize,
    peer: String,
}

impl Client {
    /// Connect over TCP (panics on failure).
    pub fn tcp(addr: SocketAddr) -> Client {
        Client::try_tcp(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"))
    }

    /// Connect over TCP.
    pub fn try_tcp(addr: SocketAddr) -> io::Result<Client> {
        let s = TcpStream::connect_timeout(&addr, IO_TIMEOUT)?;
        s.set_nodelay(true)?;
        s.set_read_timeout(Some(IO_TIMEOUT))?;
        s.set_write_timeout(Some(IO_TIMEOUT))?;
        Ok(Client::from_stream(Stream::Tcp(s), addr.to_string()))
    }

    /// Connect over a unix socket (panics on failure).
    pub fn unix(path: &Path) -> Client {
        let s =
            UnixStream::connect(path).unwrap_or_else(|e| panic!("connect {}: {e}", path.display()));
        s.set_read_timeout(Some(IO_TIMEOUT)).expect("timeout");
        s.set_write_timeout(Some(IO_TIMEOUT)).expect("timeout");
        Client::from_stream(Stream::Unix(s), path.display().to_string())
    }

    fn from_stream(stream: Stream, peer: String) -> Client {
        Client {
            stream,
            buf: Vec::with_capacity(64 << 10),
            start: 0,
            peer,
        }
    }

    /// Change the read timeout (e.g. short, to show that nothing arrives).
    pub fn set_read_timeout(&mut self, t: Duration) {
        self.stream.set_read_timeout(t).expect("set_read_timeout");
    }

    /// Write all of `bytes` (panics on error).
    pub fn send(&mut self, bytes: &[u8]) {
        self.stream
            .write_all(bytes)
            .unwrap_or_else(|e| panic!("write to {}: {e}", self.peer));
    }

    /// Write all of `bytes`.
    pub fn try_send(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes)
    }

    /// Close our sending half (the peer reads EOF).
    pub fn shutdown_write(&mut self) {
        let _ = self.stream.shutdown(Shutdown::Write);
    }

    fn buffered(&self) -> &[u8] {
        &self.buf[self.start..]
    }

    /// Read more bytes into the buffer; `Ok(0)` is EOF.
    fn fill(&mut self) -> io::Result<usize> {
        if self.start > 0 && self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        } else if self.start > (1 << 20) {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        let old = self.buf.len();
        self.buf.resize(old + (64 << 10), 0);
        let r = self.stream.read(&mut self.buf[old..]);
        let n = *r.as_ref().unwrap_or(&0);
        self.buf.truncate(old + n);
        r
    }

    fn take(&mut self, n: usize) -> Vec<u8> {
        let v = self.buf[self.start..self.start + n].to_vec();
        self.start += n;
        v
    }

    /// One line including its `\n`, or the I/O error (timeout, EOF as `UnexpectedEof`).
    pub fn try_read_line(&mut self) -> io::Result<Vec<u8>> {
        let deadline = Instant::now() + IO_TIMEOUT * 3;
        loop {
            if let Some(i) = self.buffered().iter().position(|c| *c == b'\n') {
                return Ok(self.take(i + 1));
            }
            if self.buffered().len() > MAX_REPLY || Instant::now() > deadline {
                return Err(io::Error::new(io::ErrorKind::TimedOut, "no end of line"));
            }
            if self.fill()? == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("EOF after {:?}", String::from_utf8_lossy(self.buffered())),
                ));
            }
        }
    }

    /// One line including `\r\n` (panics on timeout/EOF).
    pub fn read_line(&mut self) -> Vec<u8> {
        self.try_read_line()
            .unwrap_or_else(|e| panic!("read line from {}: {e}", self.peer))
    }

    /// Exactly `n` bytes, or the I/O error.
    pub fn try_read_exact(&mut self, n: usize) -> io::Result<Vec<u8>> {
        let deadline = Instant::now() + IO_TIMEOUT * 3;
        while self.buffered().len() < n {
            if Instant::now() > deadline {
                return Err(io::Error::new(io::ErrorKind::TimedOut, "slow reply"));
            }
            if self.fill()? == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("EOF after {} of {n} bytes", self.buffered().len()),
                ));
            }
        }
        Ok(self.take(n))
    }

    /// Exactly `n` bytes (panics on timeout/EOF).
    pub fn read_exact_reply(&mut self, n: usize) -> Vec<u8> {
        self.try_read_exact(n)
            .unwrap_or_else(|e| panic!("read {n} bytes from {}: {e}", self.peer))
    }

    /// One whole reply framed as `kind`, or the I/O error.
    pub fn try_read_reply(&mut self, kind: Reply) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        match kind {
            Reply::None => {}
            Reply::Line => out = self.try_read_line()?,
            Reply::Meta => {
                let line = self.try_read_line()?;
                let data = match line.strip_prefix(b"VA ") {
                    Some(rest) => Some(parse_len(first_token(rest), &line)?),
                    None => None,
                };
                out.extend_from_slice(&line);
                if let Some(n) = data {
                    out.extend(self.try_read_exact(n + 2)?);
                }
            }
            Reply::Values | Reply::Stats => {
                // Bounded: MAX_REPLY caps the bytes, so it caps the lines too.
                loop {
                    let line = self.try_read_line()?;
                    out.extend_from_slice(&line);
                    if line == b"END\r\n" {
                        break;
                    }
                    let value = kind == Reply::Values && line.starts_with(b"VALUE ");
                    let stat = kind == Reply::Stats && line.starts_with(b"STAT ");
                    if value {
                        let toks: Vec<&[u8]> = first_line(&line).split(|c| *c == b' ').collect();
                        let n = parse_len(toks.get(3).copied().unwrap_or(b""), &line)?;
                        out.extend(self.try_read_exact(n + 2)?);
                    } else if !stat {
                        // An error line (ERROR, CLIENT_ERROR, SERVER_ERROR) ends it.
                        break;
                    }
                    if out.len() > MAX_REPLY {
                        return Err(io::Error::new(io::ErrorKind::InvalidData, "reply too long"));
                    }
                }
            }
        }
        Ok(out)
    }

    /// One whole reply framed as `kind` (panics on timeout/EOF).
    pub fn read_reply(&mut self, kind: Reply) -> Vec<u8> {
        self.try_read_reply(kind)
            .unwrap_or_else(|e| panic!("read {kind:?} reply from {}: {e}", self.peer))
    }

    /// Send `cmd` and read its reply (framed by `Reply::for_request`).
    pub fn request(&mut self, cmd: &[u8]) -> Vec<u8> {
        self.send(cmd);
        self.read_reply(Reply::for_request(cmd))
    }

    /// Send `cmd` and read its reply, or the I/O error.
    pub fn try_request(&mut self, cmd: &[u8]) -> io::Result<Vec<u8>> {
        self.try_send(cmd)?;
        self.try_read_reply(Reply::for_request(cmd))
    }

    /// Send all `cmds` in ONE write (from a helper thread, so a large pipeline
    /// cannot deadlock against our own unread replies), then read one reply per
    /// command, in order.
    pub fn pipeline(&mut self, cmds: &[Vec<u8>]) -> Vec<Vec<u8>> {
        let all: Vec<u8> = cmds.concat();
        let mut w = self.stream.try_clone().expect("clone stream");
        let writer = thread::spawn(move || w.write_all(&all));
        let replies = cmds
            .iter()
            .enumerate()
            .map(|(i, c)| {
                self.try_read_reply(Reply::for_request(c))
                    .unwrap_or_else(|e| {
                        panic!(
                            "reply {i} to {:?} from {}: {e}",
                            String::from_utf8_lossy(first_line(c)),
                            self.peer
                        )
                    })
            })
            .collect();
        writer
            .join()
            .expect("writer thread")
            .unwrap_or_else(|e| panic!("pipelined write to {}: {e}", self.peer));
        replies
    }

    /// The connection is closed by the peer: the next read is EOF (or a reset).
    pub fn expect_eof(&mut self) {
        assert!(
            self.buffered().is_empty(),
            "unexpected bytes before EOF: {:?}",
            String::from_utf8_lossy(self.buffered())
        );
        match self.fill() {
            Ok(0) => {}
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => {}
            Ok(_) => panic!(
                "expected EOF from {}, got {:?}",
                self.peer,
                String::from_utf8_lossy(self.buffered())
            ),
            Err(e) => panic!("expected EOF from {}, got error {e}", self.peer),
        }
    }

    /// Nothing arrives within `t` (the read times out). Restores IO_TIMEOUT.
    pub fn expect_silence(&mut self, t: Duration) {
        assert!(self.buffered().is_empty(), "bytes already buffered");
        self.set_read_timeout(t);
        let r = self.fill();
        self.set_read_timeout(IO_TIMEOUT);
        match r {
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) => {}
            Ok(0) => panic!("{} closed the connection", self.peer),
            Ok(_) => panic!(
                "expected silence from {}, got {:?}",
                self.peer,
                String::from_utf8_lossy(self.buffered())
            ),
            Err(e) => panic!("expected silence from {}, got error {e}", self.peer),
        }
    }
}

fn first_token(b: &[u8]) -> &[u8] {
    let b = first_line(b);
    let end = b.iter().position(|c| *c == b' ').unwrap_or(b.len());
    &b[..end]
}

fn parse_len(tok: &[u8], line: &[u8]) -> io::Result<usize> {
    std::str::from_utf8(tok)
        .ok()
        .and_then(|s| s.parse::<usize>().ok())
        .filter(|n| *n <= MAX_REPLY)
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("bad length in {:?}", String::from_utf8_lossy(line)),
            )
        })
}

// ---------------------------------------------------------------------------
// Commands and reply helpers
// ---------------------------------------------------------------------------

/// `<verb> <key> <flags> <exptime> <len>\r\n<data>\r\n`.
pub fn storage(verb: &str, key: &str, flags: u32, exptime: i64, data: &[u8]) -> Vec<u8> {
    let mut v = format!("{verb} {key} {flags} {exptime} {}\r\n", data.len()).into_bytes();
    v.extend_from_slice(data);
    v.extend_from_slice(b"\r\n");
    v
}

/// `set <key> 0 0 <len>\r\n<data>\r\n`.
pub fn set_cmd(key: &str, data: &[u8]) -> Vec<u8> {
    storage("set", key, 0, 0, data)
}

/// The exact memcached reply to a `get` of one key holding `data` (flags 0).
pub fn value_reply(key: &str, flags: u32, data: &[u8]) -> Vec<u8> {
    let mut v = format!("VALUE {key} {flags} {}\r\n", data.len()).into_bytes();
    v.extend_from_slice(data);
    v.extend_from_slice(b"\r\nEND\r\n");
    v
}

/// The cas unique of the first `VALUE` line of a `gets` reply.
pub fn cas_of(reply: &[u8]) -> u64 {
    let line = first_line(reply);
    let toks: Vec<&[u8]> = line.split(|c| *c == b' ').collect();
    assert!(
        toks.len() == 5 && toks[0] == b"VALUE",
        "no cas in {:?}",
        String::from_utf8_lossy(line)
    );
    std::str::from_utf8(toks[4]).unwrap().parse().unwrap()
}

/// Replace what legitimately differs between two memcached instances: cas
/// uniques (`VALUE ... <cas>`, meta `c<cas>`, `me`'s `cas=`) and `me`'s
/// `la=` (last access, in seconds since the item was touched). Data blocks are
/// copied verbatim, so their contents are never rewritten.
pub fn normalize(reply: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(reply.len());
    let mut i = 0;
    // Bounded by the reply length: each step consumes at least one line.
    while i < reply.len() {
        let end = reply[i..]
            .iter()
            .position(|c| *c == b'\n')
            .map(|p| i + p + 1)
            .unwrap_or(reply.len());
        let line = &reply[i..end];
        i = end;
        let body = first_line(line);
        let toks: Vec<&[u8]> = body.split(|c| *c == b' ').collect();
        let mut data_len: Option<usize> = None;
        let new: Vec<Vec<u8>> = if toks[0] == b"VALUE" {
            data_len = toks
                .get(3)
                .and_then(|t| std::str::from_utf8(t).ok()?.parse().ok());
            toks.iter()
                .enumerate()
                .map(|(k, t)| {
                    if k == 4 {
                        b"<cas>".to_vec()
                    } else {
                        t.to_vec()
                    }
                })
                .collect()
        } else if matches!(toks[0], b"VA" | b"HD" | b"EN" | b"NF" | b"NS" | b"EX") {
            if toks[0] == b"VA" {
                data_len = toks
                    .get(1)
                    .and_then(|t| std::str::from_utf8(t).ok()?.parse().ok());
            }
            toks.iter()
                .enumerate()
                .map(|(k, t)| {
                    let is_cas = k > 0
                        && t.len() > 1
                        && t[0] == b'c'
                        && t[1..].iter().all(u8::is_ascii_digit);
                    if is_cas {
                        b"c<cas>".to_vec()
                    } else {
                        t.to_vec()
                    }
                })
                .collect()
        } else if toks[0] == b"ME" {
            toks.iter()
                .map(|t| {
                    if t.starts_with(b"cas=") {
                        b"cas=<cas>".to_vec()
                    } else if t.starts_with(b"la=") {
                        b"la=<la>".to_vec()
                    } else {
                        t.to_vec()
                    }
                })
                .collect()
        } else {
            out.extend_from_slice(line);
            continue;
        };
        out.extend_from_slice(&new.join(&b' '));
        out.extend_from_slice(&line[body.len()..]);
        if let Some(n) = data_len {
            let take = (n + 2).min(reply.len() - i);
            out.extend_from_slice(&reply[i..i + take]);
            i += take;
        }
    }
    out
}

/// Bytes as readable text for assertion messages (long values shortened).
pub fn show(b: &[u8]) -> String {
    if b.len() > 400 {
        format!(
            "{:?}...({} bytes)...{:?}",
            String::from_utf8_lossy(&b[..200]),
            b.len(),
            String::from_utf8_lossy(&b[b.len() - 100..])
        )
    } else {
        format!("{:?}", String::from_utf8_lossy(b))
    }
}

/// Assert two byte strings are equal, printing them as text.
#[track_caller]
pub fn assert_bytes(got: &[u8], want: &[u8], what: &str) {
    assert!(
        got == want,
        "{what}:\n  got  {}\n  want {}",
        show(got),
        show(want)
    );
}

/// Parse a `stats` reply into (name, value) pairs, asserting its exact shape:
/// every line `STAT <name> <value>\r\n`, then `END\r\n`.
pub fn parse_stats(reply: &[u8]) -> Vec<(String, String)> {
    let text = std::str::from_utf8(reply).expect("stats reply is UTF-8");
    assert!(
        text.ends_with("END\r\n"),
        "stats reply does not end with END: {text:?}"
    );
    let body = &text[..text.len() - "END\r\n".len()];
    body.split_terminator("\r\n")
        .map(|l| {
            let mut it = l.splitn(3, ' ');
            match (it.next(), it.next(), it.next()) {
                (Some("STAT"), Some(n), Some(v)) if !n.is_empty() => (n.to_string(), v.to_string()),
                _ => panic!("malformed stats line {l:?} in {text:?}"),
            }
        })
        .collect()
}

/// The value of one stat (panics if absent).
pub fn stat(stats: &[(String, String)], name: &str) -> String {
    stats
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.clone())
        .unwrap_or_else(|| panic!("no STAT {name} in {stats:?}"))
}

// ---------------------------------------------------------------------------
// Fault servers
// ---------------------------------------------------------------------------

/// What a `FaultServer` does with each connection.
#[derive(Clone)]
pub enum Fault {
    /// Accept and read forever; never answer.
    Blackhole,
    /// Answer every chunk read with these bytes.
    Garbage(Arc<Vec<u8>>),
    /// Forward to a real server; delay each chunk of its answers (see `set_delay`).
    Slow(SocketAddr),
}

/// An in-process misbehaving server on 127.0.0.1:0. Drop closes every
/// connection and joins its threads.
pub struct FaultServer {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    socks: Arc<Mutex<Vec<TcpStream>>>,
    threads: Arc<Mutex<Vec<JoinHandle<()>>>>,
    accepted: Arc<AtomicUsize>,
    received: Arc<AtomicUsize>,
    delay_ms: Arc<AtomicU64>,
    hold_next_ms: Arc<AtomicU64>,
    inject: Arc<Mutex<Option<Vec<u8>>>>,
    acceptor: Option<JoinHandle<()>>,
}

impl FaultServer {
    /// Accepts and reads, never answers.
    pub fn blackhole() -> FaultServer {
        FaultServer::start(Fault::Blackhole, Duration::ZERO)
    }

    /// Answers anything it reads with junk that is not memcached protocol.
    pub fn garbage() -> FaultServer {
        FaultServer::garbage_with(b"\x00\xffHTTP/1.1 418 I'm a teapot\r\nVALUE\r\n\x07garbage")
    }

    /// Answers anything it reads with `junk`.
    pub fn garbage_with(junk: &[u8]) -> FaultServer {
        FaultServer::start(Fault::Garbage(Arc::new(junk.to_vec())), Duration::ZERO)
    }

    /// A forwarding shim in front of `upstream` that holds each chunk of the
    /// upstream's answers for `delay` before passing it on.
    pub fn slow(upstream: SocketAddr, delay: Duration) -> FaultServer {
        FaultServer::start(Fault::Slow(upstream), delay)
    }

    fn start(fault: Fault, delay: Duration) -> FaultServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind fault server");
        let addr = listener.local_addr().expect("local_addr");
        let stop = Arc::new(AtomicBool::new(false));
        let accepted = Arc::new(AtomicUsize::new(0));
        let ctx = ConnCtx {
            stop: stop.clone(),
            socks: Arc::default(),
            threads: Arc::default(),
            received: Arc::default(),
            delay_ms: Arc::new(AtomicU64::new(delay.as_millis() as u64)),
            hold_next_ms: Arc::default(),
            inject: Arc::default(),
        };
        let mut server = FaultServer {
            addr,
            stop: stop.clone(),
            socks: ctx.socks.clone(),
            threads: ctx.threads.clone(),
            accepted: accepted.clone(),
            received: ctx.received.clone(),
            delay_ms: ctx.delay_ms.clone(),
            hold_next_ms: ctx.hold_next_ms.clone(),
            inject: ctx.inject.clone(),
            acceptor: None,
        };
        let acceptor = thread::spawn(move || {
            // Ends when Drop sets `stop` and connects once to wake accept().
            for conn in listener.incoming() {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                accepted.fetch_add(1, Ordering::SeqCst);
                ctx.serve(conn, &fault);
            }
        });
        server.acceptor = Some(acceptor);
        server
    }

    /// Its address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `127.0.0.1:<port>`, as passed to `-s`.
    pub fn server_arg(&self) -> String {
        self.addr.to_string()
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    /// Bytes read from clients so far.
    pub fn received(&self) -> usize {
        self.received.load(Ordering::SeqCst)
    }

    /// Change the delay of a slow shim (applies to chunks forwarded from now on).
    pub fn set_delay(&self, d: Duration) {
        self.delay_ms.store(d.as_millis() as u64, Ordering::SeqCst);
    }

    /// Hold the next chunk of upstream answers a slow shim forwards (on
    /// whichever connection it comes first) for `d` instead of the delay;
    /// the chunks after it pass as before.
    pub fn hold_next(&self, d: Duration) {
        self.hold_next_ms
            .store(d.as_millis().max(1) as u64, Ordering::SeqCst);
    }

    /// A slow shim sends `reply` before the next chunk of upstream answers it
    /// forwards (on whichever connection it comes first): one reply too
    /// many, as a buggy server or a middlebox would send.
    pub fn inject_next(&self, reply: &[u8]) {
        *self.inject.lock().unwrap() = Some(reply.to_vec());
    }

    /// True once the reply armed by `inject_next` has been sent.
    pub fn injected(&self) -> bool {
        self.inject.lock().unwrap().is_none()
    }

    /// True once the chunk armed by `hold_next` has been taken.
    pub fn hold_taken(&self) -> bool {
        self.hold_next_ms.load(Ordering::SeqCst) == 0
    }
}

impl Drop for FaultServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect_timeout(&self.addr, IO_TIMEOUT);
        if let Some(a) = self.acceptor.take() {
            let _ = a.join();
        }
        for s in self.socks.lock().unwrap().drain(..) {
            let _ = s.shutdown(Shutdown::Both);
        }
        let threads: Vec<_> = self.threads.lock().unwrap().drain(..).collect();
        for t in threads {
            let _ = t.join();
        }
    }
}

struct ConnCtx {
    stop: Arc<AtomicBool>,
    socks: Arc<Mutex<Vec<TcpStream>>>,
    threads: Arc<Mutex<Vec<JoinHandle<()>>>>,
    received: Arc<AtomicUsize>,
    delay_ms: Arc<AtomicU64>,
    hold_next_ms: Arc<AtomicU64>,
    inject: Arc<Mutex<Option<Vec<u8>>>>,
}

impl ConnCtx {
    fn track(&self, s: &TcpStream) {
        if let Ok(c) = s.try_clone() {
            self.socks.lock().unwrap().push(c);
        }
    }

    fn spawn(&self, f: impl FnOnce() + Send + 'static) {
        self.threads.lock().unwrap().push(thread::spawn(f));
    }

    fn serve(&self, conn: TcpStream, fault: &Fault) {
        self.track(&conn);
        // If the stop flag was set while we were accepting, the socket is
        // already tracked and Drop shuts it down.
        let (received, stop) = (self.received.clone(), self.stop.clone());
        match fault.clone() {
            // A blackhole is a garbage server with nothing to say.
            fault @ (Fault::Blackhole | Fault::Garbage(_)) => {
                let junk = match fault {
                    Fault::Garbage(junk) => junk,
                    _ => Arc::new(Vec::new()),
                };
                self.spawn(move || {
                    let mut conn = conn;
                    let mut buf = [0u8; 16 << 10];
                    // Ends on EOF, error, or the shutdown done by Drop.
                    while let Ok(n) = conn.read(&mut buf) {
                        if n == 0 || stop.load(Ordering::SeqCst) {
                            break;
                        }
                        received.fetch_add(n, Ordering::SeqCst);
                        if !junk.is_empty() && conn.write_all(&junk).is_err() {
                            break;
                        }
                    }
                })
            }
            Fault::Slow(upstream) => {
                let Ok(up) = TcpStream::connect_timeout(&upstream, IO_TIMEOUT) else {
                    // The upstream is down: close the client side (a tracked
                    // clone would otherwise keep it open).
                    let _ = conn.shutdown(Shutdown::Both);
                    return;
                };
                let _ = up.set_nodelay(true);
                let _ = conn.set_nodelay(true);
                self.track(&up);
                let (Ok(mut c_rd), Ok(mut u_wr)) = (conn.try_clone(), up.try_clone()) else {
                    return;
                };
                let (mut u_rd, mut c_wr) = (up, conn);
                let received2 = received.clone();
                self.spawn(move || {
                    let mut buf = [0u8; 64 << 10];
                    while let Ok(n) = c_rd.read(&mut buf) {
                        if n == 0 || u_wr.write_all(&buf[..n]).is_err() {
                            break;
                        }
                        received2.fetch_add(n, Ordering::SeqCst);
                    }
                    let _ = u_wr.shutdown(Shutdown::Write);
                });
                let (delay, hold) = (self.delay_ms.clone(), self.hold_next_ms.clone());
                let inject = self.inject.clone();
                self.spawn(move || {
                    let mut buf = [0u8; 64 << 10];
                    while let Ok(n) = u_rd.read(&mut buf) {
                        if n == 0 || stop.load(Ordering::SeqCst) {
                            break;
                        }
                        let held = hold.swap(0, Ordering::SeqCst);
                        let ms = if held > 0 {
                            held
                        } else {
                            delay.load(Ordering::SeqCst)
                        };
                        // The injected fault, not synchronisation.
                        thread::sleep(Duration::from_millis(ms));
                        let extra = inject.lock().unwrap().take();
                        if extra.is_some_and(|e| c_wr.write_all(&e).is_err()) {
                            break;
                        }
                        if c_wr.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                    let _ = c_wr.shutdown(Shutdown::Write);
                });
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Placement and assertions shared by the proxy tests
// ---------------------------------------------------------------------------

/// For each key, the index of the server (asked directly) that holds it, or
/// `None`. Panics if a key is held by two servers: a proxy must not
/// duplicate a key across primaries.
pub fn key_owners(servers: &[&Memcached], keys: &[String]) -> Vec<Option<usize>> {
    let mut owners = vec![None; keys.len()];
    for (si, s) in servers.iter().enumerate() {
        let mut c = s.client();
        // Chunks keep the command line short.
        for (chunk_no, chunk) in keys.chunks(50).enumerate() {
            let cmd = format!("get {}\r\n", chunk.join(" "));
            let reply = c.request(cmd.as_bytes());
            for (ki, k) in chunk.iter().enumerate() {
                let prefix = format!("VALUE {k} ");
                let held = reply
                    .split(|b| *b == b'\n')
                    .any(|l| l.starts_with(prefix.as_bytes()));
                if held {
                    let slot = &mut owners[chunk_no * 50 + ki];
                    assert!(slot.is_none(), "key {k} is on servers {slot:?} and {si}");
                    *slot = Some(si);
                }
            }
        }
    }
    owners
}

/// `reply` is exactly one `SERVER_ERROR <reason>\r\n` line.
#[track_caller]
pub fn assert_server_error(reply: &[u8], what: &str) {
    assert_error_line(reply, "SERVER_ERROR", what);
}

/// `reply` is exactly one `CLIENT_ERROR <reason>\r\n` line.
#[track_caller]
pub fn assert_client_error(reply: &[u8], what: &str) {
    assert_error_line(reply, "CLIENT_ERROR", what);
}

#[track_caller]
fn assert_error_line(reply: &[u8], kind: &str, what: &str) {
    let ok = reply.starts_with(format!("{kind} ").as_bytes())
        && reply.ends_with(b"\r\n")
        && reply.iter().filter(|b| **b == b'\n').count() == 1;
    assert!(ok, "{what}: expected one {kind} line, got {}", show(reply));
}

// ---------------------------------------------------------------------------
// Failover helpers (for tests/failover.rs and tests/soak.rs)
// ---------------------------------------------------------------------------

/// Timeouts that keep failover tests quick: 300ms request and connect
/// timeouts, probes of ejected servers from 100ms on.
pub const FAST_FAILOVER: [&str; 6] = [
    "--request-timeout",
    "300ms",
    "--connect-timeout",
    "300ms",
    "--retry-interval",
    "100ms",
];

/// libmemcached's `memccapable` conformance run against `port` (`-a` text,
/// `-b` binary), 5 s per check; its report, once it said every check passed.
pub fn memccapable(port: u16, protocol: &str) -> String {
    let out = run(std::process::Command::new(tool("memccapable")).args([
        "-h",
        "127.0.0.1",
        "-p",
        &port.to_string(),
        protocol,
        "-t",
        "5",
    ]));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        text.contains("All tests passed"),
        "memccapable {protocol}:\n{text}"
    );
    text
}

/// The seed's deployment with magent's command line as written: 3
/// primaries, 2 backups, `-uroot -n 51200 -l 127.0.0.1 -p <port> -s ... -b
/// ... -D`.
pub fn magent_seed_cluster() -> (Vec<Memcached>, Memring) {
    let servers = Memcached::cluster(5, "1m");
    let port = free_port();
    let mut args: Vec<String> = ["-uroot", "-n", "51200", "-l", "127.0.0.1", "-p"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    args.push(port.to_string());
    for (i, s) in servers.iter().enumerate() {
        args.push(if i < 3 { "-s" } else { "-b" }.to_string());
        args.push(s.server_arg());
    }
    args.push("-D".into());
    let proxy = Memring::start(&args);
    assert_eq!(proxy.addr().port(), port, "-p is honoured");
    (servers, proxy)
}

/// `memring -D --bind 127.0.0.1:0 -s <each primary> -b <each backup> <extra>`.
pub fn start_with_backups(
    primaries: &[&Memcached],
    backups: &[&Memcached],
    extra: &[&str],
) -> Memring {
    let mut args = proxy_args(primaries);
    for b in backups {
        args.push("-b".into());
        args.push(b.server_arg());
    }
    args.extend(extra.iter().map(|s| s.to_string()));
    Memring::start(&args)
}

/// `stats` over `c`, parsed.
pub fn proxy_stats(c: &mut Client) -> Vec<(String, String)> {
    parse_stats(&c.request(b"stats\r\n"))
}

/// The index `i` of the `server_<i>:...` stats lines of `server` in `role`
/// (`primary` or `backup`).
pub fn server_index(stats: &[(String, String)], server: &Memcached, role: &str) -> usize {
    server_index_at(stats, &server.server_arg(), role)
}

/// The index `i` of the `server_<i>:...` stats lines of the server
/// configured as `addr` (`host:port`) in `role`.
pub fn server_index_at(stats: &[(String, String)], addr: &str, role: &str) -> usize {
    let n: usize = stat(stats, "proxy_servers").parse().expect("proxy_servers");
    (0..n)
        .find(|i| {
            stat(stats, &format!("server_{i}:address")) == addr
                && stat(stats, &format!("server_{i}:role")) == role
        })
        .unwrap_or_else(|| panic!("no {role} {addr} in stats {stats:?}"))
}

/// `server_<i>:<field>` of the server configured as `addr` (`host:port`)
/// in `role`.
pub fn server_stat_at(stats: &[(String, String)], addr: &str, role: &str, field: &str) -> String {
    let i = server_index_at(stats, addr, role);
    stat(stats, &format!("server_{i}:{field}"))
}

/// `server_<i>:<field>` of `server` in `role`.
pub fn server_stat(
    stats: &[(String, String)],
    server: &Memcached,
    role: &str,
    field: &str,
) -> String {
    let i = server_index(stats, server, role);
    stat(stats, &format!("server_{i}:{field}"))
}

/// A numeric stat (panics if absent or not a number).
pub fn stat_u64(stats: &[(String, String)], name: &str) -> u64 {
    stat(stats, name)
        .parse()
        .unwrap_or_else(|e| panic!("STAT {name} is not a number: {e}"))
}

/// Poll `stats` until every server the proxy knows is `up`; returns that
/// `stats`, or panics with the last one after `limit`.
pub fn wait_all_up(c: &mut Client, limit: Duration) -> Vec<(String, String)> {
    let mut last = Vec::new();
    let got = wait_for(limit, || {
        let s = proxy_stats(c);
        let n = stat_u64(&s, "proxy_servers");
        let up = (0..n).all(|i| stat(&s, &format!("server_{i}:state")) == "up");
        last = s.clone();
        up.then_some(s)
    });
    got.unwrap_or_else(|| panic!("servers not all up within {limit:?}: {last:?}"))
}

/// The items of a `get`/`gets` reply as (key, flags, data), or why it is
/// not a well-formed retrieval reply (an error line, junk, no `END`).
pub fn parse_values(reply: &[u8]) -> Result<Vec<(String, u32, Vec<u8>)>, String> {
    let mut items = Vec::new();
    let mut rest = reply;
    // Bounded: each step consumes at least one line of `reply`.
    loop {
        let Some(eol) = rest.windows(2).position(|w| w == b"\r\n") else {
            return Err(format!("no END in {}", show(reply)));
        };
        let line = &rest[..eol];
        rest = &rest[eol + 2..];
        if line == b"END" {
            return if rest.is_empty() {
                Ok(items)
            } else {
                Err(format!("bytes after END in {}", show(reply)))
            };
        }
        let text = String::from_utf8_lossy(line).into_owned();
        let toks: Vec<&str> = text.split(' ').collect();
        if toks.len() < 4 || toks[0] != "VALUE" {
            return Err(format!("not a VALUE line {text:?} in {}", show(reply)));
        }
        let flags: u32 = toks[2].parse().map_err(|_| format!("bad flags {text:?}"))?;
        let len: usize = toks[3]
            .parse()
            .map_err(|_| format!("bad length {text:?}"))?;
        if rest.len() < len + 2 || &rest[len..len + 2] != b"\r\n" {
            return Err(format!("bad data block after {text:?} in {}", show(reply)));
        }
        items.push((toks[1].to_string(), flags, rest[..len].to_vec()));
        rest = &rest[len + 2..];
    }
}

/// `get <key>` over `c` (to memring or straight to a memcached): the item's
/// flags and data, or None on a miss. Panics on any other reply.
pub fn item_of(c: &mut Client, key: &str) -> Option<(u32, Vec<u8>)> {
    let reply = c.request(format!("get {key}\r\n").as_bytes());
    let mut items = parse_values(&reply).unwrap_or_else(|e| panic!("get {key}: {e}"));
    assert!(items.len() <= 1, "get {key}: {}", show(&reply));
    items.pop().map(|(k, f, d)| {
        assert_eq!(k, key, "get {key} answered another key");
        (f, d)
    })
}

// ---------------------------------------------------------------------------
// Client tools (libmemcached-tools)
// ---------------------------------------------------------------------------

/// The path of a libmemcached client tool, or a panic that says how to install it.
pub fn tool(name: &str) -> String {
    for dir in ["/usr/bin", "/usr/local/bin"] {
        let p = Path::new(dir).join(name);
        if p.exists() {
            return p.display().to_string();
        }
    }
    panic!("{name} not found: apt-get install -y libmemcached-tools");
}

/// Run a client tool without input; panics with its output unless it succeeds.
pub fn run(cmd: &mut Command) -> std::process::Output {
    let out = cmd.stdin(Stdio::null()).output().expect("run client tool");
    assert!(
        out.status.success(),
        "{:?} {:?} failed: {}\n{}",
        cmd.get_program(),
        cmd.get_args().collect::<Vec<_>>(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A configuration of `servers` on ketama with migration window `window`
/// (`"0"`: none, as the sweep tests want).
pub fn ketama_config(servers: &[&Memcached], window: &str) -> String {
    let list: Vec<String> = servers
        .iter()
        .map(|s| format!("\"{}\"", s.server_arg()))
        .collect();
    format!(
        "distribution = \"ketama\"\nmigrate_window = \"{window}\"\nservers = [{}]\n",
        list.join(", ")
    )
}

/// SIGHUP `proxy` after writing `servers` (ketama, migration window
/// `window`) to `file`, and wait until it runs configuration generation
/// `generation`.
pub fn reload_to(
    proxy: &Memring,
    c: &mut Client,
    file: &std::path::Path,
    (servers, window): (&[&Memcached], &str),
    generation: u64,
) {
    std::fs::write(file, ketama_config(servers, window)).expect("write config");
    proxy.sighup();
    let want = generation.to_string();
    let done = wait_for(Duration::from_secs(30), || {
        let s = proxy_stats(c);
        (stat(&s, "config_generation") == want).then_some(())
    });
    assert!(
        done.is_some(),
        "config_generation {generation} after SIGHUP: {}",
        proxy.stderr()
    );
}
