//! Tables: argv -> Config, argv -> error, config files and precedence, reload.

use super::*;
use std::sync::atomic::{AtomicU32, Ordering};

fn sa(host: &str, port: u16, weight: u32) -> ServerAddr {
    ServerAddr {
        host: host.into(),
        port,
        weight,
        alias: None,
        set: false,
    }
}

fn argv(line: &str) -> Vec<OsString> {
    line.split_whitespace().map(OsString::from).collect()
}

fn parse(line: &str) -> Result<Config, ConfigError> {
    parse_args(argv(line))
}

/// The Config `memring -s 127.0.0.1:1` gives, plus `argv`.
fn base(line: &str) -> Config {
    Config {
        servers: vec![sa("127.0.0.1", 1, 1)],
        argv: argv(line),
        ..Config::default()
    }
}

const SEED: &str = "memring -uroot -n 51200 -l 127.0.0.1 -p 12000 -s 127.0.0.1:10001 -s 127.0.0.1:10002 -s 127.0.0.1:10003 -b 127.0.0.1:10004 -b 127.0.0.1:10005";

#[test]
fn shares_and_switches() {
    assert_eq!(value::percent("5%"), Ok(0.05));
    assert_eq!(value::percent(" 0.5 % "), Ok(0.005));
    assert_eq!(value::percent("100"), Ok(1.0));
    assert!(value::percent("101%").is_err());
    assert!(value::percent("-1%").is_err());
    assert!(value::percent("five").is_err());
    assert_eq!(value::on_off("OFF"), Ok(false));
    assert_eq!(value::on_off("on"), Ok(true));
    assert!(value::on_off("maybe").is_err());
    let c = parse("memring -s 127.0.0.1:1 --hedge off --hedge-budget 2%").expect("parses");
    assert!(!c.hedge);
    assert_eq!(c.hedge_budget, 0.02);
    let d = parse("memring -s 127.0.0.1:1").expect("parses");
    assert!(d.hedge);
    assert_eq!(d.hedge_budget, 0.05);
}

#[test]
fn defaults_are_magents() {
    let c = parse("memring -s 127.0.0.1:1").unwrap();
    assert_eq!(c.port, 11211);
    assert_eq!(c.listen, "0.0.0.0");
    assert_eq!(c.bind, None);
    assert_eq!(c.distribution, Distribution::Modula);
    assert_eq!(c.max_conns, 4096);
    assert_eq!(c.max_server_conns, 20);
    assert_eq!(c.upstream_conns, 1);
    assert_eq!(c.unix_socket, None);
    assert_eq!(c.user, None);
    assert_eq!(c.group, None);
    assert!(!c.foreground);
    assert_eq!(c.verbose, 0);
    assert_eq!(c.threads, default_threads());
    assert!(c.threads >= 1);
    assert_eq!(c.connect_timeout, Duration::from_secs(1));
    assert_eq!(c.request_timeout, Duration::from_secs(1));
    assert_eq!(c.max_item_size, 1 << 20);
    assert_eq!(c.failure_limit, 2);
    assert_eq!(c.retry_interval, Duration::from_millis(500));
    assert_eq!(c.io_backend, IoBackend::Auto);
    assert_eq!(c.pid_file, None);
    assert_eq!(c.config_file, None);
    assert!(!c.check);
    assert_eq!(c.shutdown_timeout, Duration::from_secs(5));
    assert_eq!(c.missed_keys_limit, 64 << 20);
    assert_eq!(c, base("memring -s 127.0.0.1:1"));
    assert_eq!(c.tcp_addr(), Some("0.0.0.0:11211".parse().unwrap()));
}

#[test]
fn seed_line() {
    let c = parse(SEED).unwrap();
    let want = Config {
        user: Some("root".into()),
        max_conns: 51200,
        listen: "127.0.0.1".into(),
        port: 12000,
        servers: vec![
            sa("127.0.0.1", 10001, 1),
            sa("127.0.0.1", 10002, 1),
            sa("127.0.0.1", 10003, 1),
        ],
        backups: vec![sa("127.0.0.1", 10004, 1), sa("127.0.0.1", 10005, 1)],
        argv: argv(SEED),
        ..Config::default()
    };
    assert_eq!(c, want);
    assert_eq!(c.tcp_addr(), Some("127.0.0.1:12000".parse().unwrap()));
}

#[test]
fn argv_table() {
    type Edit = fn(&mut Config);
    let table: &[(&str, Edit)] = &[
        // getopt-style glued values and clusters.
        ("memring -uroot -p12000 -s127.0.0.1:1", |c| {
            c.user = Some("root".into());
            c.port = 12000;
        }),
        ("memring -s127.0.0.1:1 -b127.0.0.1:2 -n10 -i5 -l::1", |c| {
            c.backups = vec![sa("127.0.0.1", 2, 1)];
            c.max_conns = 10;
            c.max_server_conns = 5;
            c.listen = "::1".into();
        }),
        ("memring -s 127.0.0.1:1 -Dk", |c| {
            c.foreground = true;
            c.distribution = Distribution::Ketama;
        }),
        ("memring -s 127.0.0.1:1 -kDp12000", |c| {
            c.foreground = true;
            c.distribution = Distribution::Ketama;
            c.port = 12000;
        }),
        ("memring -s 127.0.0.1:1 -f/tmp/m.sock -p 0", |c| {
            c.unix_socket = Some("/tmp/m.sock".into());
            c.port = 0;
        }),
        ("memring -s 127.0.0.1:1 -ggroup -unobody", |c| {
            c.group = Some("group".into());
            c.user = Some("nobody".into());
        }),
        // -v counts and implies -D (magent).
        ("memring -s 127.0.0.1:1 -v", |c| {
            c.verbose = 1;
            c.foreground = true;
        }),
        ("memring -s 127.0.0.1:1 -vv", |c| {
            c.verbose = 2;
            c.foreground = true;
        }),
        ("memring -s 127.0.0.1:1 -v -v -v", |c| {
            c.verbose = 3;
            c.foreground = true;
        }),
        // Long forms of magent's flags.
        (
            "memring --server 127.0.0.1:1 --backup 127.0.0.1:2 --port 1 --listen 10.0.0.1 --ketama --max-conns 7 --max-server-conns 3 --unix-socket /s --user u --group g --foreground --verbose",
            |c| {
                c.backups = vec![sa("127.0.0.1", 2, 1)];
                c.port = 1;
                c.listen = "10.0.0.1".into();
                c.distribution = Distribution::Ketama;
                c.max_conns = 7;
                c.max_server_conns = 3;
                c.unix_socket = Some("/s".into());
                c.user = Some("u".into());
                c.group = Some("g".into());
                c.foreground = true;
                c.verbose = 1;
            },
        ),
        ("memring --server=127.0.0.1:1 --port=0 --bind=[::1]:0", |c| {
            c.port = 0;
            c.bind = Some("[::1]:0".into());
        }),
        ("memring -s 127.0.0.1:1 --bind 127.0.0.1:0", |c| {
            c.bind = Some("127.0.0.1:0".into());
        }),
        // memring's own flags.
        (
            "memring -s 127.0.0.1:1 --threads 3 --connect-timeout 250ms --request-timeout 2m --max-item-size 512k --failure-limit 5 --retry-interval 1.5s --upstream-conns 4 --io-backend epoll --pid-file /run/m.pid --check --shutdown-timeout 0",
            |c| {
                c.threads = 3;
                c.connect_timeout = Duration::from_millis(250);
                c.request_timeout = Duration::from_secs(120);
                c.max_item_size = 512 * 1024;
                c.failure_limit = 5;
                c.retry_interval = Duration::from_millis(1500);
                c.upstream_conns = 4;
                c.io_backend = IoBackend::Epoll;
                c.pid_file = Some("/run/m.pid".into());
                c.check = true;
                c.shutdown_timeout = Duration::ZERO;
            },
        ),
        ("memring -s 127.0.0.1:1 --max-item-size 2097152 --io-backend uring", |c| {
            c.max_item_size = 2 << 20;
            c.io_backend = IoBackend::Uring;
        }),
        ("memring -s 127.0.0.1:1 --max-item-size 1g --distribution ketama", |c| {
            c.max_item_size = 1 << 30;
            c.distribution = Distribution::Ketama;
        }),
        ("memring -s 127.0.0.1:1 --missed-keys-limit 256", |c| {
            c.missed_keys_limit = 256;
        }),
        ("memring -s 127.0.0.1:1 --missed-keys-limit 0", |c| {
            c.missed_keys_limit = 0;
        }),
        ("memring -s 127.0.0.1:1 --missed-keys-limit 16g", |c| {
            c.missed_keys_limit = 16 << 30;
        }),
        ("memring -s 127.0.0.1:1 --max-item-size 1k -i 1 --upstream-conns 1", |c| {
            c.max_item_size = 1024;
            c.max_server_conns = 1;
        }),
        // Server forms; order is kept.
        ("memring -s 127.0.0.1:1 -s cache-1.example.com:11211:3 -s [::1]:11212 -s [fe80::1]:5:2", |c| {
            c.servers.extend([
                sa("cache-1.example.com", 11211, 3),
                sa("::1", 11212, 1),
                sa("fe80::1", 5, 2),
            ]);
        }),
    ];
    for (line, edit) in table {
        let mut want = base(line);
        edit(&mut want);
        match parse(line) {
            Ok(got) => assert_eq!(got, want, "{line}"),
            Err(e) => panic!("{line}: {e}"),
        }
    }
}

#[test]
fn error_table() {
    // (argv, substrings the message must contain)
    let table: &[(&str, &[&str])] = &[
        ("memring", &["no servers", "-s"]),
        ("memring -p 12000", &["no servers"]),
        ("memring -s 127.0.0.1:1 -p 70000", &["70000", "--port"]),
        ("memring -s 127.0.0.1:1 -p abc", &["abc", "--port"]),
        ("memring -s 127.0.0.1:1 -p", &["--port"]),
        ("memring -s 127.0.0.1:1 -n 0", &["'0'", "--max-conns"]),
        ("memring -s 127.0.0.1:1 -n -5", &["-5"]),
        (
            "memring -s 127.0.0.1:1 --missed-keys-limit 17g",
            &["17g", "--missed-keys-limit", "16g"],
        ),
        (
            "memring -s 127.0.0.1:1 --missed-keys-limit lots",
            &["lots", "--missed-keys-limit"],
        ),
        (
            "memring -s 127.0.0.1:1 -i 0",
            &["'0'", "--max-server-conns"],
        ),
        ("memring -s 127.0.0.1", &["127.0.0.1", "--server", "port"]),
        ("memring -s 127.0.0.1:0", &["127.0.0.1:0", "port 0"]),
        ("memring -s 127.0.0.1:99999", &["99999", "--server"]),
        ("memring -s 127.0.0.1:1:0", &["weight '0'"]),
        ("memring -s 127.0.0.1:1:x", &["weight 'x'"]),
        ("memring -s 127.0.0.1:1:1:1", &["127.0.0.1:1:1:1"]),
        ("memring -s ::1:11211", &["brackets"]),
        ("memring -s [::1:11211", &["']'"]),
        ("memring -s [zz]:1", &["IPv6"]),
        ("memring -s 300.1.1.1:1", &["300.1.1.1", "IPv4"]),
        ("memring -s bad_-host-:1", &["bad_-host-"]),
        ("memring -s :1", &["missing host"]),
        (
            "memring -s 127.0.0.1:1 -s 127.0.0.1:1",
            &["duplicate", "127.0.0.1:1"],
        ),
        ("memring -s 127.0.0.1:1 -s 127.0.0.1:1:2", &["duplicate"]),
        ("memring -s [::1]:1 -s [0:0::1]:1", &["duplicate"]),
        ("memring -s Cache:1 -s cache:1", &["duplicate"]),
        (
            "memring -s 127.0.0.1:1 -b 127.0.0.1:2 -b 127.0.0.1:2",
            &["duplicate", "-b"],
        ),
        (
            "memring -s 127.0.0.1:1 -b 127.0.0.1:1",
            &["both", "-s", "-b"],
        ),
        (
            "memring -s 127.0.0.1:1 -l localhost",
            &["localhost", "--listen"],
        ),
        ("memring -s 127.0.0.1:1 -p 0", &["nothing to listen on"]),
        (
            "memring -s 127.0.0.1:1 --bind 127.0.0.1",
            &["127.0.0.1", "--bind"],
        ),
        ("memring -s 127.0.0.1:1 --bind ::1:0", &["::1:0", "--bind"]),
        ("memring -s 127.0.0.1:1 --threads 0", &["'0'", "--threads"]),
        ("memring -s 127.0.0.1:1 --threads 100000", &["--threads"]),
        (
            "memring -s 127.0.0.1:1 --connect-timeout 5",
            &["'5'", "--connect-timeout", "unit"],
        ),
        (
            "memring -s 127.0.0.1:1 --connect-timeout 0s",
            &["--connect-timeout", "between"],
        ),
        (
            "memring -s 127.0.0.1:1 --request-timeout 2d",
            &["'2d'", "--request-timeout", "unit"],
        ),
        (
            "memring -s 127.0.0.1:1 --request-timeout 2h",
            &["--request-timeout", "1h"],
        ),
        (
            "memring -s 127.0.0.1:1 --retry-interval abc",
            &["'abc'", "--retry-interval"],
        ),
        (
            "memring -s 127.0.0.1:1 --shutdown-timeout 1..5s",
            &["--shutdown-timeout"],
        ),
        (
            "memring -s 127.0.0.1:1 --max-item-size 512",
            &["'512'", "--max-item-size", "1k"],
        ),
        (
            "memring -s 127.0.0.1:1 --max-item-size 2g",
            &["'2g'", "--max-item-size"],
        ),
        (
            "memring -s 127.0.0.1:1 --max-item-size 1t",
            &["'1t'", "unit"],
        ),
        (
            "memring -s 127.0.0.1:1 --max-item-size 99999999999999999999999g",
            &["--max-item-size"],
        ),
        (
            "memring -s 127.0.0.1:1 --failure-limit 0",
            &["'0'", "--failure-limit"],
        ),
        (
            "memring -s 127.0.0.1:1 --upstream-conns 21",
            &["--upstream-conns 21", "-i/--max-server-conns 20"],
        ),
        (
            "memring -s 127.0.0.1:1 -i 2 --upstream-conns 3",
            &["--upstream-conns 3"],
        ),
        (
            "memring -s 127.0.0.1:1 --io-backend kqueue",
            &["'kqueue'", "--io-backend"],
        ),
        (
            "memring -s 127.0.0.1:1 --distribution random",
            &["'random'", "--distribution"],
        ),
        (
            "memring -s 127.0.0.1:1 -k --distribution modula",
            &["--distribution", "--ketama"],
        ),
        ("memring -s 127.0.0.1:1 -x", &["'-x'"]),
        ("memring -s 127.0.0.1:1 --frobnicate", &["--frobnicate"]),
        ("memring -s 127.0.0.1:1 stray", &["stray"]),
        ("memring -s 127.0.0.1:1 -u", &["--user"]),
        (
            "memring -s 127.0.0.1:1 --config /nonexistent/memring.toml",
            &["/nonexistent/memring.toml", "cannot read"],
        ),
    ];
    for (line, needles) in table {
        match parse(line) {
            Ok(c) => panic!("{line}: accepted: {c:?}"),
            Err(e) => {
                assert_eq!(e.code, 2, "{line}: {e}");
                for n in *needles {
                    assert!(e.msg.contains(n), "{line}: {:?} lacks {n:?}", e.msg);
                }
                assert!(!e.msg.starts_with("error:"), "{line}: {}", e.msg);
            }
        }
    }
}

#[test]
fn unix_socket_path_limit() {
    let ok = format!(
        "memring -s 127.0.0.1:1 -f /{}",
        "a".repeat(MAX_UNIX_PATH - 1)
    );
    assert!(parse(&ok).is_ok());
    let long = format!("memring -s 127.0.0.1:1 -f /{}", "a".repeat(MAX_UNIX_PATH));
    let e = parse(&long).unwrap_err();
    assert_eq!(e.code, 2);
    assert!(e.msg.contains("--unix-socket"), "{}", e.msg);
}

#[test]
fn help_and_version_exit_zero() {
    for line in ["memring -h", "memring --help", "memring -s 127.0.0.1:1 -h"] {
        let e = parse(line).unwrap_err();
        assert_eq!(e.code, 0, "{line}");
        let magent = e.msg.find("magent options").expect("magent heading");
        let ours = e.msg.find("memring options").expect("memring heading");
        assert!(magent < ours, "magent flags come first");
        for needle in [
            "-p, --port",
            "[default: 11211]",
            "[default: 0.0.0.0]",
            "[default: 4096]",
            "[default: 20]",
            "-s, --server",
            "-b, --backup",
            "-k, --ketama",
            "-f, --unix-socket",
            "-u, --user",
            "-g, --group",
            "-D, --foreground",
            "-v, --verbose",
            "--connect-timeout",
            "[default: 1s]",
            "[default: 500ms]",
            "[default: 1m]",
        ] {
            assert!(e.msg.contains(needle), "help lacks {needle:?}:\n{}", e.msg);
        }
        // Every magent flag sits under the magent heading.
        for flag in [
            "-p,", "-l,", "-s,", "-b,", "-k,", "-n,", "-i,", "-f,", "-u,", "-g,", "-D,", "-v,",
            "-h,",
        ] {
            let at = e.msg.find(flag).unwrap_or(usize::MAX);
            assert!(
                at > magent && at < ours,
                "{flag} not under the magent heading"
            );
        }
    }
    let e = parse("memring --version").unwrap_err();
    assert_eq!(e.code, 0);
    assert_eq!(e.msg, format!("memring {}", env!("CARGO_PKG_VERSION")));
}

#[test]
fn parse_server_forms() {
    let ok: &[(&str, ServerAddr)] = &[
        ("127.0.0.1:11211", sa("127.0.0.1", 11211, 1)),
        ("127.0.0.1:11211:7", sa("127.0.0.1", 11211, 7)),
        ("localhost:1", sa("localhost", 1, 1)),
        ("mc_1.internal.:65535", sa("mc_1.internal.", 65535, 1)),
        ("[::1]:11211", sa("::1", 11211, 1)),
        ("[2001:db8::1]:11211:10000", sa("2001:db8::1", 11211, 10000)),
    ];
    for (s, want) in ok {
        assert_eq!(&parse_server(s).unwrap(), want, "{s}");
    }
    assert_eq!(parse_server("[::1]:1").unwrap().name(), "[::1]:1");
    assert_eq!(parse_server("h:1:5").unwrap().name(), "h:1");
    for bad in [
        "",
        "h",
        "h:",
        ":1",
        "h:1:",
        "h:1:10001",
        "h:-1",
        "h:+1",
        "h :1",
        "[::1]",
        "[::1]1",
        "[1.2.3.4]:1",
        "-h:1",
        "h..x:1",
        "1.2.3:1",
    ] {
        let e = parse_server(bad).unwrap_err();
        assert_eq!(e.code, 2);
        assert!(e.msg.contains(&format!("'{bad}'")), "{bad}: {}", e.msg);
    }
}

#[test]
fn durations_and_sizes() {
    let d = |s: &str| value::duration(s);
    assert_eq!(d("250ms"), Ok(Duration::from_millis(250)));
    // Every unit's long form, with or without a space, as "1 sec" is.
    for (text, want) in [
        ("1 sec", Duration::from_secs(1)),
        ("1sec", Duration::from_secs(1)),
        ("1 msec", Duration::from_millis(1)),
        ("2msecs", Duration::from_millis(2)),
        ("3 usec", Duration::from_micros(3)),
        ("4 nsec", Duration::from_nanos(4)),
        ("1 min", Duration::from_secs(60)),
        ("1 hour", Duration::from_secs(3600)),
    ] {
        assert_eq!(d(text), Ok(want), "{text}");
    }
    assert_eq!(d("1s"), Ok(Duration::from_secs(1)));
    assert_eq!(d("2m"), Ok(Duration::from_secs(120)));
    assert_eq!(d("1h"), Ok(Duration::from_secs(3600)));
    assert_eq!(d("1.5s"), Ok(Duration::from_millis(1500)));
    assert_eq!(d(".5s"), Ok(Duration::from_millis(500)));
    assert_eq!(d("500us"), Ok(Duration::from_micros(500)));
    assert_eq!(d("10 ms"), Ok(Duration::from_millis(10)));
    assert_eq!(d("0"), Ok(Duration::ZERO));
    for bad in [
        "",
        "s",
        "1",
        "1x",
        "-1s",
        "1.2.3s",
        "nan",
        "infs",
        "1e3s",
        "99999999999999999999999h",
    ] {
        assert!(d(bad).is_err(), "{bad}");
    }
    for dur in [
        Duration::ZERO,
        Duration::from_millis(250),
        Duration::from_secs(90),
        Duration::from_secs(3600),
        Duration::from_nanos(7),
    ] {
        assert_eq!(d(&fmt_duration(dur)), Ok(dur));
    }
    let z = |s: &str| value::size(s);
    assert_eq!(z("1m"), Ok(1 << 20));
    assert_eq!(z("1M"), Ok(1 << 20));
    assert_eq!(z("512k"), Ok(512 << 10));
    assert_eq!(z("2097152"), Ok(2 << 20));
    assert_eq!(z("1g"), Ok(1 << 30));
    assert_eq!(z("1024"), Ok(1024));
    assert_eq!(z("1mb"), Ok(1 << 20));
    for bad in ["", "k", "1023", "1025m", "1t", "1.5m", "-1m"] {
        assert!(z(bad).is_err(), "{bad}");
    }
}

/// A file under the temp dir that is removed on drop.
struct TempFile(PathBuf);

impl TempFile {
    fn new(text: &str) -> TempFile {
        static N: AtomicU32 = AtomicU32::new(0);
        let p = std::env::temp_dir().join(format!(
            "memring-config-test-{}-{}.toml",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::write(&p, text).unwrap();
        TempFile(p)
    }

    fn write(&self, text: &str) {
        std::fs::write(&self.0, text).unwrap();
    }

    fn path(&self) -> &str {
        self.0.to_str().unwrap()
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

const FULL: &str = r#"
listen = "127.0.0.1"
port = 12000
servers = ["10.0.0.1:11211:2", "[::1]:11212", "cache.local:11213"]
backups = ["10.0.0.9:11211"]
distribution = "ketama"
max_conns = 51200
max_server_conns = 8
upstream_conns = 2
unix_socket = "/tmp/memring.sock"
user = "nobody"
group = "nogroup"
foreground = true
verbose = 1
threads = 2
connect_timeout = "250ms"
request_timeout = "2s"
max_item_size = "2m"
failure_limit = 3
retry_interval = "1s"
io_backend = "epoll"
pid_file = "/run/memring.pid"
shutdown_timeout = "10s"
missed_keys_limit = "1m"
"#;

#[test]
fn config_file_full() {
    let f = TempFile::new(FULL);
    let line = format!("memring --config {}", f.path());
    let c = parse(&line).unwrap();
    let want = Config {
        listen: "127.0.0.1".into(),
        port: 12000,
        servers: vec![
            sa("10.0.0.1", 11211, 2),
            sa("::1", 11212, 1),
            sa("cache.local", 11213, 1),
        ],
        backups: vec![sa("10.0.0.9", 11211, 1)],
        distribution: Distribution::Ketama,
        max_conns: 51200,
        max_server_conns: 8,
        upstream_conns: 2,
        unix_socket: Some("/tmp/memring.sock".into()),
        user: Some("nobody".into()),
        group: Some("nogroup".into()),
        foreground: true,
        verbose: 1,
        threads: 2,
        connect_timeout: Duration::from_millis(250),
        request_timeout: Duration::from_secs(2),
        max_item_size: 2 << 20,
        failure_limit: 3,
        retry_interval: Duration::from_secs(1),
        io_backend: IoBackend::Epoll,
        pid_file: Some("/run/memring.pid".into()),
        shutdown_timeout: Duration::from_secs(10),
        missed_keys_limit: 1 << 20,
        config_file: Some(std::fs::canonicalize(&f.0).unwrap()),
        argv: argv(&line),
        ..Config::default()
    };
    assert_eq!(c, want);
}

#[test]
fn the_example_file_parses() {
    let text = include_str!("../../docs/memring.example.toml");
    let layer = file::parse(text, Path::new("memring.example.toml")).unwrap();
    let c = layer.finish();
    c.validate().unwrap();
    assert!(!c.servers.is_empty());
}

#[test]
fn command_line_overrides_file() {
    let f = TempFile::new(FULL);
    let line = format!(
        "memring -p 13000 -s 127.0.0.1:1 -s 127.0.0.1:2 --request-timeout 3s -i 30 --config {} --distribution modula --max-item-size 4096",
        f.path()
    );
    let c = parse(&line).unwrap();
    assert_eq!(c.port, 13000);
    // -s replaces the file's list rather than appending to it.
    assert_eq!(
        c.servers,
        vec![sa("127.0.0.1", 1, 1), sa("127.0.0.1", 2, 1)]
    );
    // Backups were not given on the command line: the file's stay.
    assert_eq!(c.backups, vec![sa("10.0.0.9", 11211, 1)]);
    assert_eq!(c.request_timeout, Duration::from_secs(3));
    assert_eq!(c.max_server_conns, 30);
    assert_eq!(c.distribution, Distribution::Modula);
    assert_eq!(c.max_item_size, 4096);
    // Not given on the command line: from the file, not the defaults.
    assert_eq!(c.listen, "127.0.0.1");
    assert_eq!(c.connect_timeout, Duration::from_millis(250));
    assert_eq!(c.upstream_conns, 2);
    assert_eq!(c.threads, 2);
}

#[test]
fn file_alone_and_magent_flags_alone() {
    let f = TempFile::new("servers = [\"127.0.0.1:1\"]\n");
    let c = parse(&format!("memring --config {}", f.path())).unwrap();
    assert_eq!(c.servers, vec![sa("127.0.0.1", 1, 1)]);
    assert_eq!(c.port, 11211);
    assert_eq!(c.max_item_size, 1 << 20);
    // Integer sizes are bytes.
    f.write("servers = [\"127.0.0.1:1\"]\nmax_item_size = 4096\n");
    let c = parse(&format!("memring --config {}", f.path())).unwrap();
    assert_eq!(c.max_item_size, 4096);
}

#[test]
fn config_file_errors() {
    let table: &[(&str, &[&str])] = &[
        (
            "servers = [\"127.0.0.1:1\"]\nbogus = 1\n",
            &["bogus", "unknown field"],
        ),
        (
            "servers = [\"127.0.0.1:1\"]\nport = 70000\n",
            &["port", "70000"],
        ),
        ("servers = [\"127.0.0.1:1\"]\nport = \"x\"\n", &["port"]),
        (
            "servers = [\"127.0.0.1\"]\n",
            &["servers", "\"127.0.0.1\"", "port"],
        ),
        ("servers = []\n", &["no servers"]),
        (
            "servers = [\"127.0.0.1:1\", \"127.0.0.1:1:3\"]\n",
            &["duplicate"],
        ),
        (
            "servers = [\"127.0.0.1:1\"]\nbackups = [\"127.0.0.1:1\"]\n",
            &["both"],
        ),
        (
            "servers = [\"127.0.0.1:1\"]\ndistribution = \"rand\"\n",
            &["distribution", "\"rand\""],
        ),
        (
            "servers = [\"127.0.0.1:1\"]\nconnect_timeout = \"5\"\n",
            &["connect_timeout", "\"5\"", "unit"],
        ),
        (
            "servers = [\"127.0.0.1:1\"]\nconnect_timeout = 5\n",
            &["connect_timeout"],
        ),
        (
            "servers = [\"127.0.0.1:1\"]\nretry_interval = \"0ms\"\n",
            &["retry_interval"],
        ),
        (
            "servers = [\"127.0.0.1:1\"]\nmax_item_size = 12\n",
            &["max_item_size", "12"],
        ),
        (
            "servers = [\"127.0.0.1:1\"]\nmax_item_size = -1\n",
            &["max_item_size", "-1"],
        ),
        (
            "servers = [\"127.0.0.1:1\"]\nmax_item_size = true\n",
            &["max_item_size"],
        ),
        (
            "servers = [\"127.0.0.1:1\"]\nthreads = 0\n",
            &["threads", "0"],
        ),
        (
            "servers = [\"127.0.0.1:1\"]\nmax_conns = -3\n",
            &["max_conns"],
        ),
        (
            "servers = [\"127.0.0.1:1\"]\nfailure_limit = 0\n",
            &["failure_limit"],
        ),
        (
            "servers = [\"127.0.0.1:1\"]\nio_backend = \"kqueue\"\n",
            &["io_backend"],
        ),
        (
            "servers = [\"127.0.0.1:1\"]\nlisten = \"nowhere\"\n",
            &["listen", "nowhere"],
        ),
        (
            "servers = [\"127.0.0.1:1\"]\nbind = \"1.2.3.4\"\n",
            &["bind"],
        ),
        (
            "servers = [\"127.0.0.1:1\"]\nmax_server_conns = 2\nupstream_conns = 3\n",
            &["--upstream-conns 3"],
        ),
        (
            "servers = [\"127.0.0.1:1\"]\nunix_socket = \"\"\n",
            &["unix_socket"],
        ),
        ("servers = \"127.0.0.1:1\"\n", &["servers"]),
        ("servers = [\"127.0.0.1:1\"\n", &["TOML"]),
        ("[server]\n127.0.0.1:1 10\n", &["config file"]),
    ];
    for (text, needles) in table {
        let f = TempFile::new(text);
        match parse(&format!("memring --config {}", f.path())) {
            Ok(c) => panic!("{text:?}: accepted: {c:?}"),
            Err(e) => {
                assert_eq!(e.code, 2, "{text}: {e}");
                for n in *needles {
                    assert!(e.msg.contains(n), "{text:?}: {:?} lacks {n:?}", e.msg);
                }
            }
        }
    }
}

#[test]
fn reload_keeps_fixed_settings_and_flags() {
    let f = TempFile::new(
        "servers = [\"127.0.0.1:1\"]\nport = 12000\nthreads = 2\nuser = \"a\"\nconnect_timeout = \"2s\"\nrequest_timeout = \"2s\"\n",
    );
    let line = format!(
        "memring --config {} --request-timeout 3s -b 127.0.0.1:9",
        f.path()
    );
    let base = parse(&line).unwrap();
    assert_eq!(base.port, 12000);
    assert_eq!(base.request_timeout, Duration::from_secs(3));

    f.write(
        "servers = [\"127.0.0.1:1\", \"127.0.0.1:2:3\"]\nbackups = [\"127.0.0.1:8\"]\nport = 13000\nthreads = 4\nuser = \"b\"\ndistribution = \"ketama\"\nconnect_timeout = \"5s\"\nrequest_timeout = \"9s\"\nfailure_limit = 7\n",
    );
    let (new, ignored) = reload_with_report(&f.0, &base).unwrap();
    // Changed at runtime.
    assert_eq!(
        new.servers,
        vec![sa("127.0.0.1", 1, 1), sa("127.0.0.1", 2, 3)]
    );
    assert_eq!(new.distribution, Distribution::Ketama);
    assert_eq!(new.connect_timeout, Duration::from_secs(5));
    assert_eq!(new.failure_limit, 7);
    // Flags still override the file.
    assert_eq!(new.request_timeout, Duration::from_secs(3));
    assert_eq!(new.backups, vec![sa("127.0.0.1", 9, 1)]);
    // Kept from the running config.
    assert_eq!(new.port, 12000);
    assert_eq!(new.threads, 2);
    assert_eq!(new.user.as_deref(), Some("a"));
    assert_eq!(ignored, vec!["port", "threads", "user"]);
    assert_eq!(new.argv, base.argv);

    // A broken file is an error; the caller keeps `base`.
    f.write("servers = [\"127.0.0.1:1\", \"127.0.0.1:1\"]\n");
    assert_eq!(reload(&f.0, &base).unwrap_err().code, 2);
    f.write("servers = [\n");
    assert_eq!(reload(&f.0, &base).unwrap_err().code, 2);

    // A hand-built base (no argv) takes the file alone.
    f.write("servers = [\"127.0.0.1:5\"]\n");
    let hand = base_with_servers();
    let new = reload(&f.0, &hand).unwrap();
    assert_eq!(new.servers, vec![sa("127.0.0.1", 5, 1)]);
    assert_eq!(new.config_file.as_deref(), Some(f.0.as_path()));
}

fn base_with_servers() -> Config {
    Config {
        servers: vec![sa("127.0.0.1", 1, 1)],
        ..Config::default()
    }
}

#[test]
fn reload_keeps_list_is_complete() {
    // RELOAD_KEEPS names exactly the fields reload_with_report keeps.
    let f = TempFile::new(
        "servers = [\"127.0.0.1:1\"]\nport = 1\nlisten = \"::1\"\nbind = \"127.0.0.1:0\"\nunix_socket = \"/x\"\nthreads = 3\nio_backend = \"epoll\"\nuser = \"u\"\ngroup = \"g\"\nforeground = true\nverbose = 2\npid_file = \"/p\"\nlog_file = \"/l\"\nmax_conns = 5\nmax_server_conns = 5\nupstream_conns = 5\nmax_item_size = \"2m\"\nclient_buffer = \"8m\"\nmax_input_memory = \"512m\"\nlog_level = \"debug\"\nunix_mask = \"660\"\ntls_listen = \"127.0.0.1:9\"\nserver_tls = true\n",
    );
    let (_, mut ignored) = reload_with_report(&f.0, &base_with_servers()).unwrap();
    let mut keeps = RELOAD_KEEPS.to_vec();
    ignored.sort_unstable();
    keeps.sort_unstable();
    assert_eq!(ignored, keeps);
}

#[test]
fn validate_catches_hand_built_mistakes() {
    let ok = base_with_servers();
    ok.validate().unwrap();
    let cases: Vec<(Config, &str)> = vec![
        (Config::default(), "no servers"),
        (
            Config {
                threads: 0,
                ..ok.clone()
            },
            "--threads",
        ),
        (
            Config {
                upstream_conns: 0,
                ..ok.clone()
            },
            "--upstream-conns",
        ),
        (
            Config {
                failure_limit: 0,
                ..ok.clone()
            },
            "--failure-limit",
        ),
        (
            Config {
                request_timeout: Duration::ZERO,
                ..ok.clone()
            },
            "--request-timeout",
        ),
        (
            Config {
                connect_timeout: Duration::from_secs(7200),
                ..ok.clone()
            },
            "--connect-timeout",
        ),
        (
            Config {
                max_item_size: 10,
                ..ok.clone()
            },
            "--max-item-size",
        ),
        (
            Config {
                listen: "x".into(),
                ..ok.clone()
            },
            "--listen",
        ),
        (
            Config {
                bind: Some("x".into()),
                ..ok.clone()
            },
            "--bind",
        ),
        (
            Config {
                servers: vec![sa("h", 0, 1)],
                ..ok.clone()
            },
            "invalid server",
        ),
        (
            Config {
                servers: vec![sa("h", 1, 0)],
                ..ok.clone()
            },
            "invalid server",
        ),
    ];
    for (c, needle) in cases {
        let e = c.validate().unwrap_err();
        assert_eq!(e.code, 2);
        assert!(e.msg.contains(needle), "{needle}: {}", e.msg);
    }
}

#[test]
fn tcp_addr() {
    let c = |line: &str| parse(line).unwrap().tcp_addr();
    assert_eq!(c("memring -s h:1 -p 0 -f /s"), None);
    assert_eq!(
        c("memring -s h:1 -p 0 --bind [::1]:0"),
        Some("[::1]:0".parse().unwrap())
    );
    assert_eq!(
        c("memring -s h:1 -l ::1 -p 5"),
        Some("[::1]:5".parse().unwrap())
    );
    assert_eq!(
        c("memring -s h:1 -l [::1] -p 5"),
        Some("[::1]:5".parse().unwrap())
    );
}

mod never_panics {
    use super::*;
    use proptest::prelude::*;

    /// Tokens that reach deep into the parser more often than random strings.
    fn token() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("-s".to_string()),
            Just("-b".to_string()),
            Just("-p".to_string()),
            Just("-k".to_string()),
            Just("-vv".to_string()),
            Just("--bind".to_string()),
            Just("--max-item-size".to_string()),
            Just("--connect-timeout".to_string()),
            Just("--upstream-conns".to_string()),
            Just("--config".to_string()),
            Just("127.0.0.1:1".to_string()),
            Just("[::1]:1:2".to_string()),
            "[0-9a-z:.\\[\\]-]{0,12}",
            "[0-9]{0,25}(ns|us|ms|s|m|h|k|g)?",
            ".{0,16}",
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn arbitrary_argv(args in proptest::collection::vec(token(), 0..10)) {
            // `--config` with a random path only ever names a missing file.
            let mut argv = vec!["memring".to_string()];
            argv.extend(args);
            if let Err(e) = parse_args(&argv) {
                prop_assert!(e.code == 0 || e.code == 2);
                prop_assert!(!e.msg.is_empty());
            }
        }

        #[test]
        fn arbitrary_server(s in ".{0,40}") {
            let _ = parse_server(&s);
        }

        #[test]
        fn arbitrary_values(s in ".{0,30}") {
            let _ = value::duration(&s);
            let _ = value::size(&s);
            let _ = value::bind(&s);
            let _ = value::listen(&s);
        }

        #[test]
        fn arbitrary_file(text in ".{0,200}") {
            let _ = file::parse(&text, Path::new("p.toml")).map(|l| l.finish().validate());
        }
    }

    #[test]
    fn non_utf8_argv() {
        use std::os::unix::ffi::OsStringExt;
        let bad = OsString::from_vec(vec![0xff, 0xfe]);
        for flag in ["-s", "-u", "-f", "--pid-file", "--config", "-p"] {
            let e = parse_args(vec![OsString::from("memring"), flag.into(), bad.clone()]);
            assert_eq!(e.unwrap_err().code, 2, "{flag}");
        }
        let e = parse_args(vec![bad.clone()]).unwrap_err();
        assert_eq!(e.code, 2);
    }
}

#[test]
fn metrics_listen_and_latency_stats() {
    let c = parse("memring -s 127.0.0.1:1").unwrap();
    assert_eq!(
        (c.metrics_listen.as_deref(), c.latency_stats),
        (None, false)
    );
    assert!(!c.latency_timing());
    let c = parse("memring -s 127.0.0.1:1 --metrics-listen [::1]:9150").unwrap();
    assert_eq!(c.metrics_listen.as_deref(), Some("[::1]:9150"));
    assert_eq!(c.metrics_addr(), "[::1]:9150".parse().ok());
    assert!(c.latency_timing(), "the endpoint implies latency recording");
    let c = parse("memring -s 127.0.0.1:1 --latency-stats").unwrap();
    assert!(c.latency_timing() && c.metrics_listen.is_none());
    for bad in ["localhost:9150", "127.0.0.1", "9150", "127.0.0.1:x"] {
        let e = parse(&format!("memring -s 127.0.0.1:1 --metrics-listen {bad}")).unwrap_err();
        assert_eq!(e.code, 2, "{bad}: {}", e.msg);
    }
    let layer = file::parse(
        "metrics_listen = \"127.0.0.1:0\"\nlatency_stats = true\n",
        Path::new("m.toml"),
    )
    .unwrap();
    let c = layer.finish();
    assert_eq!(c.metrics_listen.as_deref(), Some("127.0.0.1:0"));
    assert!(c.latency_stats);
    let e = file::parse("metrics_listen = \"nope\"\n", Path::new("m.toml")).unwrap_err();
    assert!(e.msg.contains("metrics_listen"), "{}", e.msg);
}

#[test]
fn reload_changes_name_servers_weights_and_settings() {
    let old = Config {
        servers: vec![sa("a", 1, 1), sa("b", 1, 1)],
        backups: vec![sa("c", 1, 1)],
        ..Config::default()
    };
    let new = Config {
        servers: vec![sa("a", 1, 2), sa("d", 1, 1)],
        backups: vec![],
        request_timeout: Duration::from_millis(300),
        ..Config::default()
    };
    assert_eq!(
        reload_changes(&old, &new),
        vec![
            "+server d:1".to_string(),
            "-server b:1".to_string(),
            "-backup c:1".to_string(),
            "weight of a:1 1 -> 2".to_string(),
            "request_timeout 1s -> 300ms".to_string(),
        ]
    );
    assert!(reload_changes(&old, &old).is_empty());
}

#[test]
fn nutcracker_placement_settings() {
    let s = value::server("10.0.0.1:11211:2 cache-a").expect("named server");
    assert_eq!(
        (s.host.as_str(), s.port, s.weight, s.alias.as_deref()),
        ("10.0.0.1", 11211, 2, Some("cache-a"))
    );
    assert_eq!(value::server("10.0.0.1:11211").expect("plain").alias, None);
    assert!(value::server("10.0.0.1:11211:1 two words").is_err());
    assert_eq!(
        value::key_hash("fnv1a_64"),
        Ok(crate::route::KeyHash::Fnv1a64)
    );
    let e = value::key_hash("sha1").expect_err("unknown hash");
    assert!(e.contains("fnv1a_64") && e.contains("murmur"), "{e}");
    assert_eq!(value::hash_tag("{}"), Ok("{}".to_string()));
    for bad in ["{", "{}}", "  ", "é}"] {
        assert!(value::hash_tag(bad).is_err(), "{bad}");
    }
    let f = TempFile::new(
        "distribution = \"ketama\"\nhash = \"murmur\"\nhash_tag = \"{}\"\nservers = [\"10.0.0.1:1:1 a\", \"10.0.0.2:1:1 b\"]\n",
    );
    let c = parse(&format!("memring --config {}", f.0.display())).expect("config");
    assert_eq!(c.hash, Some(crate::route::KeyHash::Murmur));
    assert_eq!(c.hash_tag.as_deref(), Some("{}"));
    assert_eq!(c.servers[1].alias.as_deref(), Some("b"));
    let dup = TempFile::new("servers = [\"10.0.0.1:1:1 a\", \"10.0.0.2:1:1 a\"]\n");
    let e = parse(&format!("memring --config {}", dup.0.display())).expect_err("duplicate name");
    assert!(e.to_string().contains("server name 'a'"), "{e}");
}

#[test]
fn tls_settings_fit_together() {
    let s = "memring -s 127.0.0.1:1";
    let c = parse(&format!(
        "{s} --tls-listen 127.0.0.1:0 --tls-cert c.pem --tls-key k.pem --tls-ca ca.pem"
    ))
    .unwrap();
    assert_eq!(c.tls_addr(), "127.0.0.1:0".parse().ok());
    assert_eq!(c.tls_ca.as_deref(), Some(Path::new("ca.pem")));
    assert_eq!(c.tls_handshake_timeout, Duration::from_secs(10));
    // -p 0 with only a TLS listener is a listener.
    parse(&format!(
        "{s} -p 0 --tls-listen 127.0.0.1:0 --tls-cert c.pem --tls-key k.pem"
    ))
    .unwrap();
    let c = parse(&format!(
        "{s} --server-tls --server-tls-ca ca.pem --server-tls-cert c.pem --server-tls-key k.pem"
    ))
    .unwrap();
    assert!(c.server_tls);
    for (bad, why) in [
        ("--tls-listen 127.0.0.1:0", "--tls-cert"),
        ("--tls-listen 127.0.0.1:0 --tls-cert c.pem", "--tls-key"),
        ("--tls-cert c.pem --tls-key k.pem", "--tls-listen"),
        ("--tls-ca ca.pem", "--tls-listen"),
        ("--server-tls-ca ca.pem", "--server-tls"),
        ("--server-tls --server-tls-cert c.pem", "go together"),
        ("--tls-listen nope --tls-cert c --tls-key k", "--tls-listen"),
        (
            "-l 127.0.0.1 -p 7000 --tls-listen 127.0.0.1:7000 --tls-cert c --tls-key k",
            "share an address",
        ),
    ] {
        let e = parse(&format!("{s} {bad}")).unwrap_err();
        assert_eq!(e.code, 2, "{bad}");
        assert!(e.msg.contains(why), "{bad}: {}", e.msg);
    }
    let layer = file::parse(
        "tls_listen = \"127.0.0.1:0\"\ntls_cert = \"c.pem\"\ntls_key = \"k.pem\"\n\
         tls_handshake_timeout = \"2s\"\nserver_tls = true\nserver_tls_ca = \"ca.pem\"\n",
        Path::new("t.toml"),
    )
    .unwrap();
    let c = layer.finish();
    assert_eq!(c.tls_listen.as_deref(), Some("127.0.0.1:0"));
    assert_eq!(c.tls_handshake_timeout, Duration::from_secs(2));
    assert!(c.server_tls);
    assert_eq!(c.server_tls_ca.as_deref(), Some(Path::new("ca.pem")));
}

#[test]
fn dns_sets_are_servers_by_every_address_of_a_name() {
    let s = value::server("dns+memcached.cache.svc:11211:2").expect("a set");
    assert!(s.set);
    assert_eq!(
        (s.host.as_str(), s.port, s.weight),
        ("memcached.cache.svc", 11211, 2)
    );
    assert_eq!(s.name(), "dns+memcached.cache.svc:11211");
    for (bad, why) in [
        ("dns+10.0.0.1:11211", "host name"),
        ("dns+svc:11211:1 name", "drop the name"),
        ("dns+svc", "port"),
    ] {
        let e = value::server(bad).expect_err(bad);
        assert!(e.contains(why), "{bad}: {e}");
    }
    let c = parse("memring -s dns+svc.test:11211 -b 127.0.0.1:2").expect("parse");
    assert!(c.servers[0].set && !c.backups[0].set);
}
