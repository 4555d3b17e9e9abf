//! Day-2 operations through the real binary: argument errors, `--check`,
//! SIGTERM with requests in flight, SIGHUP reload, daemon mode with a pid
//! file, and the `-p 0` / unix-socket-only mode.

// Tests and benchmarks keep time themselves (clippy.toml holds the library).
#![allow(clippy::disallowed_methods)]

mod common;

use std::process::{Command, Stdio};
use std::thread;
use std::time::Duration;

use common::*;

fn memring(args: &[&str]) -> std::process::Output {
    Command::new(memring_path())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run memring")
}

#[test]
fn bad_flags_exit_2_with_a_message_and_help_exits_0() {
    let cases: &[&[&str]] = &[
        &["-D"],                                   // no -s
        &["-D", "-s", "127.0.0.1"],                // no port
        &["-D", "-s", "127.0.0.1:99999"],          // port out of range
        &["-D", "-s", "127.0.0.1:1", "-n", "abc"], // not a number
        &["-D", "-s", "127.0.0.1:1", "--no-such-flag"],
        &["-D", "-s", "127.0.0.1:1", "--io-backend", "kqueue"],
    ];
    for args in cases {
        let out = memring(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {out:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.starts_with("memring: "), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{args:?}: {err}");
    }
    let help = memring(&["-h"]);
    assert_eq!(help.status.code(), Some(0));
    let text = String::from_utf8_lossy(&help.stdout);
    for flag in [
        "-s", "-b", "-k", "-p", "-l", "-n", "-i", "-f", "-u", "-g", "-D", "-v",
    ] {
        assert!(text.contains(flag), "help lacks {flag}: {text}");
    }
}

#[test]
fn check_validates_without_starting() {
    let ok = memring(&["--check", "-s", "127.0.0.1:1", "-b", "127.0.0.1:2", "-k"]);
    assert_eq!(ok.status.code(), Some(0), "{ok:?}");
    assert_eq!(String::from_utf8_lossy(&ok.stdout), "configuration ok\n");
    let bad = memring(&["--check", "-s", "127.0.0.1:1:0"]);
    assert_eq!(bad.status.code(), Some(2), "{bad:?}");
}

#[test]
fn sigterm_finishes_requests_in_flight_then_exits_0() {
    let mc = Memcached::start();
    let slow = FaultServer::slow(mc.addr(), Duration::from_millis(400));
    let mut proxy = Memring::start(&[
        "-D",
        "--bind",
        "127.0.0.1:0",
        "-s",
        &slow.addr().to_string(),
        "--request-timeout",
        "3s",
    ]);
    let mut c = proxy.client();
    c.send(b"set k 0 0 2\r\nhi\r\n");
    // Wait until the slow server holds the request, then stop the proxy.
    assert!(
        wait_for(Duration::from_secs(30), || (slow.received() > 0)
            .then_some(()))
        .is_some(),
        "the request never reached the slow server"
    );
    let pid = proxy.pid();
    let killer = thread::spawn(move || {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .expect("kill");
    });
    killer.join().expect("signal thread");
    assert_eq!(
        c.read_line(),
        b"STORED\r\n".to_vec(),
        "in-flight request finished"
    );
    let status = proxy.terminate();
    assert_eq!(status.code(), Some(0));
    // No new connections after the stop.
    let refused = match Client::try_tcp(proxy.addr()) {
        Err(_) => true,
        Ok(mut c2) => c2.try_request(b"version\r\n").is_err(),
    };
    assert!(refused, "a stopped proxy must not serve");
}

#[test]
fn sighup_reloads_servers_and_keeps_healthy_connections() {
    let a = Memcached::start();
    let b = Memcached::start();
    let (_dir, file) = config_file(
        "memring.toml",
        &format!("servers = [\"{}\"]\n", a.server_arg()),
    );
    let proxy = Memring::with_config(&file, &["--threads", "1"]);
    let mut c = proxy.client();
    assert_eq!(c.request(&set_cmd("k1", b"one")), b"STORED\r\n".to_vec());
    assert_eq!(
        a.client().request(b"get k1\r\n"),
        value_reply("k1", 0, b"one")
    );
    let conns_before = stat(
        &parse_stats(&a.client().request(b"stats\r\n")),
        "total_connections",
    );

    // Two servers now: a stays (its connection must survive), b joins.
    std::fs::write(
        &file,
        format!(
            "servers = [\"{}\", \"{}\"]\n",
            a.server_arg(),
            b.server_arg()
        ),
    )
    .expect("rewrite config");
    proxy.sighup();
    let reloaded = wait_for(Duration::from_secs(10), || {
        let s = parse_stats(&c.request(b"stats\r\n"));
        (stat(&s, "config_generation") == "1").then_some(s)
    })
    .expect("config_generation 1 after SIGHUP");
    assert_eq!(stat(&reloaded, "proxy_servers"), "2");
    // A server that a reload adds is flushed before it serves (it may be
    // one that left and came back with old values): wait for that.
    let up = wait_for(Duration::from_secs(10), || {
        let s = proxy_stats(&mut c);
        (server_stat(&s, &b, "primary", "state") == "up").then_some(())
    });
    assert!(up.is_some(), "the added server came up: {}", proxy.stderr());

    // Keys now spread over both servers; each lands where the ring says.
    let mut on_b = 0;
    for i in 0..40 {
        let key = format!("r{i}");
        assert_eq!(c.request(&set_cmd(&key, b"v")), b"STORED\r\n".to_vec());
        if b.client().request(format!("get {key}\r\n").as_bytes()) != b"END\r\n" {
            on_b += 1;
        }
    }
    assert!(on_b > 0 && on_b < 40, "keys on the new server: {on_b}/40");
    // The stats connection above counts once; the proxy's own link to a was kept.
    let conns_after = stat(
        &parse_stats(&a.client().request(b"stats\r\n")),
        "total_connections",
    );
    let before: u64 = conns_before.parse().expect("number");
    let after: u64 = conns_after.parse().expect("number");
    assert_eq!(
        after,
        before + 1,
        "reload reconnected to a server that stayed"
    );

    // A broken file keeps the running configuration.
    std::fs::write(&file, "servers = [\"nonsense\"]\n").expect("write bad config");
    proxy.sighup();
    wait_for(Duration::from_secs(30), || {
        proxy.stderr().contains("reload failed").then_some(())
    });
    assert!(
        proxy.stderr().contains("reload failed"),
        "{}",
        proxy.stderr()
    );
    let s = parse_stats(&c.request(b"stats\r\n"));
    assert_eq!(stat(&s, "config_generation"), "1");
    assert_eq!(stat(&s, "proxy_servers"), "2");
    assert_eq!(c.request(&set_cmd("k2", b"two")), b"STORED\r\n".to_vec());
    assert_eq!(c.request(b"get k2\r\n"), value_reply("k2", 0, b"two"));
}

#[test]
fn daemon_mode_writes_a_pid_file_and_serves() {
    let mc = Memcached::start();
    let dir = TempDir::new("daemon");
    let pid_file = dir.path().join("memring.pid");
    let port = free_port();
    let status = Command::new(memring_path())
        .args([
            "-l",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-s",
            &mc.server_arg(),
            "--pid-file",
            pid_file.to_str().expect("utf8"),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("run memring");
    assert!(
        status.success(),
        "the launching process exits 0 once detached"
    );
    let pid: i32 = wait_for(Duration::from_secs(10), || {
        std::fs::read_to_string(&pid_file).ok()?.trim().parse().ok()
    })
    .expect("pid file written");
    let guard = KillOnDrop(pid);
    let mut c = wait_for(Duration::from_secs(10), || {
        Client::try_tcp(format!("127.0.0.1:{port}").parse().expect("addr")).ok()
    })
    .expect("daemon accepts connections");
    assert_eq!(c.request(&set_cmd("d", b"1")), b"STORED\r\n".to_vec());
    assert_eq!(c.request(b"get d\r\n"), value_reply("d", 0, b"1"));
    let me = nix::unistd::getpid().as_raw();
    assert_ne!(pid, me);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGTERM,
    )
    .expect("SIGTERM");
    let gone = wait_for(Duration::from_secs(10), || {
        (!pid_file.exists()).then_some(())
    });
    assert!(gone.is_some(), "pid file removed on exit");
    drop(guard);
}

/// `-p 0 -f PATH`: only the unix socket, with the permission bits `-a`
/// gives (memcached's `-a`).
#[test]
fn port_zero_disables_tcp_and_the_unix_socket_serves() {
    use std::os::unix::fs::PermissionsExt;
    let mc = Memcached::start();
    let dir = TempDir::new("unix-only");
    let sock = dir.path().join("m.sock");
    let proxy = Memring::start(&[
        "-D",
        "-p",
        "0",
        "-f",
        sock.to_str().expect("utf8"),
        "-a",
        "660",
        "-s",
        &mc.server_arg(),
    ]);
    assert!(proxy.tcp.is_none(), "{:?}", proxy.listen_lines);
    let mode = std::fs::metadata(&sock)
        .expect("socket")
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o660, "mode {mode:o}");
    let mut c = proxy.unix_client();
    assert_eq!(c.request(&set_cmd("u", b"x")), b"STORED\r\n".to_vec());
    assert_eq!(c.request(b"get u\r\n"), value_reply("u", 0, b"x"));
}

#[test]
fn stats_name_the_backend_and_the_servers() {
    let a = Memcached::start();
    let b = Memcached::start();
    let proxy = Memring::start_for(&[&a], &["-b", &b.server_arg(), "--threads", "2"]);
    let s = parse_stats(&proxy.client().request(b"stats\r\n"));
    let want_backend = match std::env::var("MEMRING_IO_BACKEND").as_deref() {
        Ok("epoll") => "epoll",
        _ => "io_uring",
    };
    assert_eq!(stat(&s, "io_backend"), want_backend);
    assert_eq!(stat(&s, "threads"), "2");
    assert_eq!(stat(&s, "server_0:role"), "primary");
    assert_eq!(stat(&s, "server_1:role"), "backup");
    assert_eq!(stat(&s, "server_1:address"), b.server_arg());
    assert_eq!(stat(&s, "server_0:state"), "up");
}

#[test]
fn dash_u_drops_privileges_after_binding() {
    let mc = Memcached::start();
    let args = [
        "-D",
        "--bind",
        "127.0.0.1:0",
        "-u",
        "nobody",
        "-s",
        &mc.server_arg(),
    ];
    if !nix::unistd::getuid().is_root() {
        // Only root can switch users; anyone else gets told so, not ignored.
        let err = Memring::try_start(&args)
            .err()
            .expect("refused without root");
        assert!(err.contains("-u needs root"), "{err}");
        return;
    }
    let proxy = Memring::start(&args);
    let nobody = nix::unistd::User::from_name("nobody")
        .expect("passwd lookup")
        .expect("user nobody exists");
    let status = std::fs::read_to_string(format!("/proc/{}/status", proxy.pid())).expect("status");
    for field in ["Uid:", "Gid:"] {
        let line = status
            .lines()
            .find(|l| l.starts_with(field))
            .expect("field present");
        let want = if field == "Uid:" {
            nobody.uid.as_raw()
        } else {
            nobody.gid.as_raw()
        };
        assert!(
            line.split_whitespace()
                .skip(1)
                .all(|id| id == want.to_string()),
            "{line} (want {want} everywhere)"
        );
    }
    let mut c = proxy.client();
    assert_eq!(c.request(&set_cmd("u", b"1")), b"STORED\r\n".to_vec());
}

/// A port another process serves is refused (a second memring, or memcached
/// itself), instead of splitting the clients through SO_REUSEPORT.
#[test]
fn a_port_already_served_is_refused() {
    let mc = Memcached::start();
    let first = Memring::start_for(&[&mc], &[]);
    let taken = first.addr().to_string();
    for addr in [taken.as_str(), &mc.addr().to_string()] {
        let out = memring(&["-D", "--bind", addr, "-s", &mc.server_arg()]);
        assert_eq!(out.status.code(), Some(1), "{addr}: {out:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            err,
            format!("memring: {addr} is already in use by another process\n"),
            "{addr}"
        );
        assert!(
            out.stdout.is_empty(),
            "{:?}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
    // The first one still serves every client.
    let mut c = first.client();
    assert_eq!(c.request(&set_cmd("still", b"1")), b"STORED\r\n".to_vec());
}

/// `-u nosuchuser` fails before anything is announced, with one error line.
#[test]
fn startup_errors_come_once_and_before_listening() {
    let mc = Memcached::start();
    let out = memring(&[
        "-D",
        "--bind",
        "127.0.0.1:0",
        "-u",
        "memring-no-such-user",
        "-s",
        &mc.server_arg(),
    ]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        out.stdout.is_empty(),
        "{:?}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "memring: unknown user \"memring-no-such-user\" (-u)\n"
    );
}

/// `--check` refuses what a start would refuse: an unknown user, a server
/// name that does not resolve, a unix socket in a missing directory, a log
/// file that cannot be opened.
#[test]
fn check_refuses_what_start_would_refuse() {
    let cases: &[(&[&str], &str)] = &[
        (
            &["-s", "127.0.0.1:1", "-u", "memring-no-such-user"],
            "unknown user",
        ),
        (
            &["-s", "memring-no-such-host.invalid:11211"],
            "cannot resolve",
        ),
        (
            &["-s", "127.0.0.1:1", "-f", "/nonexistent-memring-dir/m.sock"],
            "does not exist",
        ),
        (
            &[
                "-s",
                "127.0.0.1:1",
                "--log-file",
                "/nonexistent-memring-dir/m.log",
            ],
            "cannot open log file",
        ),
    ];
    for (args, why) in cases {
        let mut argv = vec!["--check"];
        argv.extend_from_slice(args);
        let out = memring(&argv);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {out:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(why), "{args:?}: {err}");
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
        assert!(out.stdout.is_empty(), "{args:?}");
    }
}

/// `--log-file`: logs go there, and SIGHUP reopens it after logrotate moved it.
#[test]
fn log_file_is_reopened_on_sighup() {
    let mc = Memcached::start();
    let dir = TempDir::new("logfile");
    let log = dir.path().join("memring.log");
    let rotated = dir.path().join("memring.log.1");
    let proxy = Memring::start(&[
        "-v",
        "--bind",
        "127.0.0.1:0",
        "--log-file",
        log.to_str().expect("utf8"),
        "-s",
        &mc.server_arg(),
    ]);
    let read = |p: &std::path::Path| std::fs::read_to_string(p).unwrap_or_default();
    assert!(read(&log).contains("memring started"), "{}", read(&log));
    assert!(
        !proxy.stderr().contains("memring started"),
        "logs went to stderr too"
    );
    std::fs::rename(&log, &rotated).expect("rotate");
    proxy.sighup();
    let reopened = wait_for(Duration::from_secs(20), || {
        read(&log).contains("log file reopened").then_some(())
    });
    assert!(reopened.is_some(), "new log: {:?}", read(&log));
    assert!(!read(&rotated).contains("log file reopened"));
    let mut c = proxy.client();
    assert_eq!(c.request(&set_cmd("l", b"1")), b"STORED\r\n".to_vec());
}

/// The unix socket file goes away when memring exits.
#[test]
fn unix_socket_file_is_removed_on_exit() {
    let mc = Memcached::start();
    let dir = TempDir::new("unix-cleanup");
    let sock = dir.path().join("m.sock");
    let mut proxy = Memring::start(&[
        "-D",
        "-p",
        "0",
        "-f",
        sock.to_str().expect("utf8"),
        "-s",
        &mc.server_arg(),
    ]);
    assert!(sock.exists());
    let st = proxy.terminate();
    assert!(st.success(), "{st:?}");
    assert!(!sock.exists(), "{} left behind", sock.display());
}

/// A reload tells the operator what happened at the default log level: one
/// line with the generation and what changed, and a warning for each
/// setting the file changed that needs a restart.
#[test]
fn a_reload_logs_what_changed_and_what_needs_a_restart() {
    let a = Memcached::start();
    let b = Memcached::start();
    let dir = TempDir::new("reload-log");
    let file = dir.path().join("memring.toml");
    let log = dir.path().join("memring.log");
    std::fs::write(
        &file,
        format!("servers = [\"{}\"]\nthreads = 1\n", a.server_arg()),
    )
    .expect("write config");
    let proxy = Memring::start(&[
        "-D",
        "--bind",
        "127.0.0.1:0",
        "--log-file",
        log.to_str().expect("utf8"),
        "--config",
        file.to_str().expect("utf8"),
    ]);
    std::fs::write(
        &file,
        format!(
            "servers = [\"{}\", \"{}\"]\nthreads = 2\nrequest_timeout = \"300ms\"\n",
            a.server_arg(),
            b.server_arg()
        ),
    )
    .expect("rewrite config");
    proxy.sighup();
    let read = || std::fs::read_to_string(&log).unwrap_or_default();
    let logged = wait_for(Duration::from_secs(20), || {
        read().contains("configuration reloaded").then_some(())
    });
    assert!(logged.is_some(), "no reload line: {}", read());
    let text = read();
    let line = text
        .lines()
        .find(|l| l.contains("configuration reloaded"))
        .expect("reload line");
    for want in [
        "generation=1",
        &format!("+server {}", b.server_arg()),
        "request_timeout 1s -> 300ms",
    ] {
        assert!(line.contains(want), "{want:?} not in {line}");
    }
    assert!(
        text.lines()
            .any(|l| l.contains("WARN")
                && l.contains("threads changed in the file but needs a restart")),
        "{text}"
    );
}

/// `stats route <key>` names the pool, primary and backup a key lands on
/// (checked against where it really is), with their live states and where
/// its reads go now; `memring --route KEY` prints the same placement
/// offline.
#[test]
fn stats_route_names_where_a_key_lands_and_the_live_states() {
    let (mut servers, proxy) = magent_seed_cluster();
    let mut c = proxy.client();
    let route = |c: &mut Client, key: &str| {
        parse_stats(&c.request(format!("stats route {key}\r\n").as_bytes()))
    };
    for i in 0..20 {
        let key = format!("route:{i}");
        assert_eq!(c.request(&set_cmd(&key, b"v")), b"STORED\r\n".to_vec());
        let holders: Vec<String> = servers
            .iter()
            .filter(|s| s.client().request(format!("get {key}\r\n").as_bytes()) != b"END\r\n")
            .map(Memcached::server_arg)
            .collect();
        let r = route(&mut c, &key);
        assert_eq!(stat(&r, "pool"), "default");
        assert_eq!(
            holders,
            [stat(&r, "primary"), stat(&r, "backup")],
            "{key}: {r:?}"
        );
        assert_eq!(stat(&r, "reads_from"), "primary");
        let mut args: Vec<String> = vec!["--route".into(), key.clone()];
        for (j, s) in servers.iter().enumerate() {
            args.push(if j < 3 { "-s" } else { "-b" }.into());
            args.push(s.server_arg());
        }
        let out = Command::new(memring_path())
            .args(&args)
            .output()
            .expect("memring --route");
        let offline = parse_stats(&out.stdout);
        assert_eq!(
            stat(&offline, "primary"),
            stat(&r, "primary"),
            "{key} offline"
        );
        assert_eq!(
            stat(&offline, "backup"),
            stat(&r, "backup"),
            "{key} offline"
        );
    }
    // The key's primary dies: its reads go to the backup.
    let r = route(&mut c, "route:0");
    let primary = stat(&r, "primary");
    let dead = servers
        .iter_mut()
        .find(|s| s.server_arg() == primary)
        .expect("primary");
    dead.kill();
    let moved = wait_for(Duration::from_secs(30), || {
        let _ = c.request(b"get route:0\r\n");
        let r = route(&mut c, "route:0");
        (stat(&r, "reads_from") == "backup").then_some(r)
    });
    let r = moved.expect("reads of route:0 went to its backup");
    assert_ne!(stat(&r, "primary_state"), "up", "{r:?}");
    assert_eq!(
        c.request(b"stats route\r\n"),
        b"ERROR\r\n".to_vec(),
        "no key"
    );
}
