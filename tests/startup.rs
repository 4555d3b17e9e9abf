//! Startup never fails silently (issue 19): every failure memring can meet
//! while starting gives a non-zero exit, one line on stderr and no
//! `listening` line, in the foreground (`-D`) and as a daemon, whose
//! launching process waits for the daemon's report. `--check` refuses the
//! same configurations.

// Tests and benchmarks keep time themselves (clippy.toml holds the library).
#![allow(clippy::disallowed_methods)]

mod common;

use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// How long one start may take to fail (a busy CI machine included).
const EXIT_LIMIT: Duration = Duration::from_secs(60);

/// Run memring with `args` (and an open-file limit, when given) until it
/// exits; kills it and panics past [`EXIT_LIMIT`].
fn run_memring(args: &[String], nofile: Option<u64>) -> Output {
    let mut cmd = Command::new(memring_path());
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(n) = nofile {
        // SAFETY: setrlimit is async-signal-safe; nothing else runs
        // between fork and exec here.
        unsafe {
            cmd.pre_exec(move || {
                nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE, n, n)
                    .map_err(std::io::Error::from)
            });
        }
    }
    let mut child = cmd.spawn().expect("spawn memring");
    let deadline = Instant::now() + EXIT_LIMIT;
    // Bounded by the deadline.
    while Instant::now() < deadline {
        if child.try_wait().expect("try_wait").is_some() {
            return child.wait_with_output().expect("output");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let out = child.wait_with_output().expect("output");
    panic!("memring {args:?} did not exit within {EXIT_LIMIT:?}: {out:?}");
}

/// A start that must fail: each case's arguments, the part of its error
/// line, and an open-file limit.
struct Case {
    args: Vec<String>,
    why: &'static str,
    nofile: Option<u64>,
}

fn case(args: &[&str], why: &'static str) -> Case {
    Case {
        args: args.iter().map(|s| s.to_string()).collect(),
        why,
        nofile: None,
    }
}

#[test]
fn every_startup_failure_exits_non_zero_with_one_line_and_no_listening_line() {
    let mc = Memcached::start();
    let server = mc.server_arg();
    let held = TcpListener::bind("127.0.0.1:0").expect("bind a port to hold");
    let held_port = held.local_addr().expect("addr").port().to_string();
    let held_addr = format!("127.0.0.1:{held_port}");
    let free = free_port().to_string();
    let mut cases = vec![
        case(
            &[
                "-l",
                "127.0.0.1",
                "-p",
                &free,
                "-s",
                &server,
                "--pid-file",
                "/nonexistent-memring-dir/x.pid",
            ],
            "pid file",
        ),
        case(
            &["-l", "127.0.0.1", "-p", &held_port, "-s", &server],
            "already in use",
        ),
        case(
            &[
                "--bind",
                "127.0.0.1:0",
                "-s",
                &server,
                "--metrics-listen",
                &held_addr,
            ],
            "already in use",
        ),
        case(
            &[
                "--bind",
                "127.0.0.1:0",
                "-s",
                &server,
                "-u",
                "memring-no-such-user",
            ],
            "unknown user",
        ),
        case(
            &[
                "--bind",
                "127.0.0.1:0",
                "-s",
                "memring-no-such-host.invalid:11211",
            ],
            "cannot resolve",
        ),
        case(
            &[
                "-p",
                "0",
                "-f",
                "/nonexistent-memring-dir/m.sock",
                "-s",
                &server,
            ],
            "m.sock",
        ),
        case(
            &[
                "--bind",
                "127.0.0.1:0",
                "-s",
                &server,
                "--log-file",
                "/nonexistent-memring-dir/m.log",
            ],
            "cannot open log file",
        ),
    ];
    cases.push(Case {
        nofile: Some(40),
        ..case(&["--bind", "127.0.0.1:0", "-s", &server], "open-file limit")
    });
    for c in &cases {
        for foreground in [true, false] {
            let mut args = c.args.clone();
            if foreground {
                args.push("-D".into());
            }
            let out = run_memring(&args, c.nofile);
            let (stdout, stderr) = (
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
            );
            let what = format!("{} {args:?}", if foreground { "-D" } else { "daemon" });
            assert_ne!(out.status.code(), Some(0), "{what}: exit {:?}", out.status);
            assert!(
                !stdout.contains("listening") && !stdout.contains("ready"),
                "{what}: announced before failing: {stdout}"
            );
            let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
            assert_eq!(lines.len(), 1, "{what}: one line on stderr: {stderr}");
            assert!(lines[0].contains(c.why), "{what}: {stderr}");
        }
    }
    drop(held);
}

#[test]
fn check_covers_the_pid_files_directory_and_ports_in_use() {
    let held = TcpListener::bind("127.0.0.1:0").expect("bind a port to hold");
    let port = held.local_addr().expect("addr").port().to_string();
    let cases: &[(&[&str], &str)] = &[
        (
            &[
                "--bind",
                "127.0.0.1:0",
                "--pid-file",
                "/nonexistent-memring-dir/x.pid",
            ],
            "does not exist",
        ),
        (&["-l", "127.0.0.1", "-p", &port], "already in use"),
        (
            &["--bind", "127.0.0.1:0", "-s", "localhost:1"],
            "are one server",
        ),
    ];
    for (args, why) in cases {
        let mut argv: Vec<String> = ["--check", "-s", "127.0.0.1:1"].map(String::from).to_vec();
        argv.extend(args.iter().map(|s| s.to_string()));
        let out = run_memring(&argv, None);
        assert_eq!(out.status.code(), Some(1), "{argv:?}: {out:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(why), "{argv:?}: {err}");
        assert_eq!(err.lines().count(), 1, "{argv:?}: {err}");
    }
    drop(held);
}

/// The daemon's launching process exits 0 only once the daemon serves, and
/// the log file gets a startup line at the default level.
#[test]
fn a_daemon_reports_ready_before_its_parent_exits_and_logs_its_start() {
    let mc = Memcached::start();
    let dir = TempDir::new("daemon-ready");
    let (pid_file, log) = (dir.path().join("m.pid"), dir.path().join("m.log"));
    let port = free_port();
    let args: Vec<String> = [
        "-l",
        "127.0.0.1",
        "-p",
        &port.to_string(),
        "-s",
        &mc.server_arg(),
        "--pid-file",
        pid_file.to_str().expect("utf8"),
        "--log-file",
        log.to_str().expect("utf8"),
    ]
    .map(String::from)
    .to_vec();
    let out = run_memring(&args, None);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("listening on tcp 127.0.0.1:{port}\n")
    );
    let pid: i32 = std::fs::read_to_string(&pid_file)
        .expect("the pid file exists when the parent exits")
        .trim()
        .parse()
        .expect("pid");
    let _stop = KillOnDrop(pid);
    // No wait: it serves as soon as its parent has exited.
    let mut c = Client::tcp(format!("127.0.0.1:{port}").parse().expect("addr"));
    assert_eq!(c.request(&set_cmd("d", b"1")), b"STORED\r\n".to_vec());
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(text.contains("memring started"), "log: {text}");
}
