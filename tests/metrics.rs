//! Observability end to end (issue 12): `stats proxy settings` and `stats proxy`
//! through the real binary, the `--metrics-listen` endpoint, and a real
//! Prometheus server (Debian's `prometheus`) scraping memring every second
//! while a primary memcached is SIGKILLed.
//!
//! Every wait polls a condition with a generous deadline; nothing asserts on
//! speed.

// Tests and benchmarks keep time themselves (clippy.toml holds the library).
#![allow(clippy::disallowed_methods)]

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;

/// How long Prometheus may take to start, scrape and answer a query.
const PROM_WAIT: Duration = Duration::from_secs(90);

/// `GET path` over plain HTTP/1.1; the status code and the body.
fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    http_raw(
        addr,
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
}

fn http_raw(addr: SocketAddr, request: &[u8]) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, IO_TIMEOUT)?;
    s.set_read_timeout(Some(IO_TIMEOUT))?;
    s.set_write_timeout(Some(IO_TIMEOUT))?;
    s.write_all(request)?;
    let mut raw = Vec::new();
    s.take(64 << 20).read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let code = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    Ok((code, body.to_string()))
}

/// memring with `--metrics-listen` on a free loopback port (retried if the
/// port was taken between picking and binding); the proxy and the endpoint.
fn memring_with_metrics(servers: &[&Memcached], extra: &[&str]) -> (Memring, SocketAddr) {
    let mut last = String::new();
    for _ in 0..5 {
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let mut args = proxy_args(servers);
        args.push("--metrics-listen".into());
        args.push(addr.to_string());
        args.extend(extra.iter().map(|s| s.to_string()));
        match Memring::try_start(&args) {
            Ok(m) => return (m, addr),
            Err(e) => last = e,
        }
    }
    panic!("memring with --metrics-listen did not start: {last}");
}

fn drive(c: &mut Client, n: usize, tag: &str) {
    for i in 0..n {
        let key = format!("{tag}{i}");
        assert_eq!(c.request(&set_cmd(&key, b"value")), b"STORED\r\n");
        assert_eq!(
            c.request(format!("get {key}\r\n").as_bytes()),
            value_reply(&key, 0, b"value")
        );
    }
}

#[test]
fn stats_settings_and_proxy_show_settings_counters_and_percentiles() {
    let mc = Memcached::start();
    let p = Memring::start_for(&[&mc], &["--latency-stats", "--request-timeout", "750ms"]);
    let mut c = p.client();
    drive(&mut c, 50, "s");
    assert_eq!(c.request(b"get nosuchkey\r\n"), b"END\r\n");

    let settings = parse_stats(&c.request(b"stats proxy settings\r\n"));
    assert_eq!(stat(&settings, "servers"), mc.server_arg());
    assert_eq!(stat(&settings, "backups"), "NULL");
    assert_eq!(stat(&settings, "request_timeout"), "0.750");
    assert_eq!(stat(&settings, "tcpport"), p.addr().port().to_string());
    assert_eq!(stat(&settings, "latency_stats"), "yes");
    assert_eq!(stat(&settings, "metrics_listen"), "NULL");
    assert_eq!(stat(&settings, "maxconns"), "4096");

    // Latency is recorded once a reply is written: ask in a later batch.
    let proxy = parse_stats(&c.request(b"stats proxy\r\n"));
    assert_eq!(stat(&proxy, "proxy_latency_recorded"), "1");
    assert_eq!(stat(&proxy, "proxy_servers"), "1");
    assert_eq!(stat(&proxy, "server_0:address"), mc.server_arg());
    assert_eq!(stat(&proxy, "server_0:state"), "up");
    assert_eq!(stat(&proxy, "latency_get_count"), "51");
    assert_eq!(stat(&proxy, "latency_set_count"), "50");
    // Every upstream call got its reply: 50 sets and 51 gets.
    assert_eq!(stat(&proxy, "server_0:latency_count"), "101");
    let us = |name: &str| -> f64 {
        stat(&proxy, name)
            .parse()
            .unwrap_or_else(|e| panic!("{name}: {e}"))
    };
    for cmd in ["get", "set"] {
        let (p50, p99) = (
            us(&format!("latency_{cmd}_p50_us")),
            us(&format!("latency_{cmd}_p99_us")),
        );
        assert!(p50 > 0.0 && p50 <= p99, "{cmd}: p50 {p50} p99 {p99}");
        assert!(us(&format!("latency_{cmd}_mean_us")) > 0.0);
    }
    assert!(us("server_0:latency_p99_us") > 0.0);
    // Unknown groups stay an ERROR, as in memcached.
    assert_eq!(c.request(b"stats nonsense\r\n"), b"ERROR\r\n");
}

/// Client-visible latency runs from the turn that received a request's
/// first byte (not its last) to the write of its reply's last byte, and
/// upstream latency from the write of the call to its reply. A request sent
/// in two halves 400 ms apart, and a get held 400 ms by a stopped memcached,
/// each show at least 300 ms (the lower edge of their histogram bucket).
/// Only lower bounds: a busy machine makes things slower, never faster.
#[test]
fn latency_runs_from_the_first_byte_to_the_reply_and_covers_a_slow_server() {
    const HOLD: Duration = Duration::from_millis(400);
    const AT_LEAST_US: f64 = 300_000.0;
    let mc = Memcached::start();
    let p = Memring::start_for(&[&mc], &["--latency-stats", "--request-timeout", "30s"]);
    let mut c = p.client();
    let us = |stats: &[(String, String)], name: &str| -> f64 {
        stat(stats, name)
            .parse()
            .unwrap_or_else(|e| panic!("{name}: {e} in {stats:?}"))
    };

    // A get whose line arrives in two receives, HOLD apart. The sleep makes
    // the delay being measured; nothing waits on it for synchronisation.
    c.send(b"get spl");
    std::thread::sleep(HOLD);
    c.send(b"it\r\n");
    assert_eq!(c.read_reply(Reply::Values), b"END\r\n");
    let proxy = parse_stats(&c.request(b"stats proxy\r\n"));
    assert_eq!(stat(&proxy, "latency_get_count"), "1");
    let first = us(&proxy, "latency_get_p50_us");
    assert!(
        first >= AT_LEAST_US,
        "a request split {HOLD:?} apart took {first} us from its first byte"
    );

    // A get that the stopped server holds: the upstream call and the
    // client's request both take at least HOLD.
    mc.stop();
    c.send(b"get held\r\n");
    std::thread::sleep(HOLD);
    mc.cont();
    assert_eq!(c.read_reply(Reply::Values), b"END\r\n");
    let proxy = parse_stats(&c.request(b"stats proxy\r\n"));
    assert_eq!(stat(&proxy, "latency_get_count"), "2");
    // Both gets are slow: even the lower quantile is.
    let held = us(&proxy, "latency_get_p50_us");
    assert!(held >= AT_LEAST_US, "get held {HOLD:?}: p50 {held} us");
    assert_eq!(stat(&proxy, "server_0:latency_count"), "2");
    let upstream = us(&proxy, "server_0:latency_p99_us");
    assert!(
        upstream >= AT_LEAST_US,
        "upstream call held {HOLD:?}: p99 {upstream} us"
    );
    assert_eq!(stat(&proxy, "server_0:state"), "up");
    // The stats requests themselves are timed too.
    assert_eq!(stat(&proxy, "latency_stats_count"), "1");
}

#[test]
fn without_latency_recording_stats_proxy_has_no_percentiles() {
    let mc = Memcached::start();
    let p = Memring::start_for(&[&mc], &[]);
    let mut c = p.client();
    drive(&mut c, 5, "n");
    let proxy = parse_stats(&c.request(b"stats proxy\r\n"));
    assert_eq!(stat(&proxy, "proxy_latency_recorded"), "0");
    assert!(
        !proxy.iter().any(|(n, _)| n.starts_with("latency_")),
        "{proxy:?}"
    );
    let settings = parse_stats(&c.request(b"stats proxy settings\r\n"));
    assert_eq!(stat(&settings, "latency_stats"), "no");
}

#[test]
fn metrics_endpoint_serves_get_metrics_only_and_survives_garbage() {
    let mc = Memcached::start();
    let (p, maddr) = memring_with_metrics(&[&mc], &[]);
    let mut c = p.client();
    drive(&mut c, 20, "h");

    let (code, body) = http_get(maddr, "/metrics").expect("GET /metrics");
    assert_eq!(code, 200, "{body}");
    for want in [
        "memring_requests_total{command=\"get\"} 20\n",
        "memring_requests_total{command=\"set\"} 20\n",
        "memring_request_duration_seconds_count{command=\"get\"} 20\n",
        "memring_request_duration_seconds_bucket{le=\"+Inf\",command=\"set\"} 20\n",
        &format!(
            "memring_upstream_request_duration_seconds_count{{server=\"{}\"}} 40\n",
            mc.server_arg()
        ),
        &format!(
            "memring_server_up{{server=\"{}\",role=\"primary\",pool=\"default\"}} 1\n",
            mc.server_arg()
        ),
        &format!(
            "memring_server_state{{server=\"{}\",state=\"suspect\"}} 0\n",
            mc.server_arg()
        ),
        &format!(
            "memring_ejections_total{{server=\"{}\",reason=\"timeout\"}} 0\n",
            mc.server_arg()
        ),
        &format!(
            "memring_suspects_total{{server=\"{}\",reason=\"missed_write\"}} 0\n",
            mc.server_arg()
        ),
        &format!(
            "memring_suspects_cleared_total{{server=\"{}\"}} 0\n",
            mc.server_arg()
        ),
        &format!(
            "memring_keys_logged_total{{server=\"{}\"}} 0\n",
            mc.server_arg()
        ),
        &format!("memring_drains_total{{server=\"{}\"}} 0\n", mc.server_arg()),
        &format!(
            "memring_drained_keys_total{{server=\"{}\"}} 0\n",
            mc.server_arg()
        ),
        "memring_client_connections 1\n",
        "# EOF\n",
    ] {
        assert!(body.contains(want), "missing {want:?} in\n{body}");
    }
    assert_eq!(http_get(maddr, "/").expect("GET /").0, 404);
    assert_eq!(http_get(maddr, "/metricsz").expect("GET /metricsz").0, 404);
    // Not HTTP at all, and a head that never ends: answered or cut, never fatal.
    let _ = http_raw(maddr, b"\x00\xff garbage\r\n\r\n");
    let _ = http_raw(maddr, &vec![b'a'; 20_000]);
    assert_eq!(
        http_get(maddr, "/metrics").expect("GET after garbage").0,
        200
    );
    // The proxy still serves.
    assert_eq!(c.request(b"get h0\r\n"), value_reply("h0", 0, b"value"));
}

#[test]
fn metrics_listen_in_the_config_file_and_a_taken_port_fails_startup() {
    let mc = Memcached::start();
    let dir = TempDir::new("metrics-cfg");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken_addr = taken.local_addr().unwrap();
    let cfg = dir.path().join("memring.toml");
    std::fs::write(
        &cfg,
        format!(
            "servers = [\"{}\"]\nmetrics_listen = \"{taken_addr}\"\n",
            mc.server_arg()
        ),
    )
    .unwrap();
    let err = Memring::try_start(&[
        "-D",
        "--bind",
        "127.0.0.1:0",
        "--config",
        cfg.to_str().unwrap(),
    ])
    .err()
    .expect("a taken metrics port must fail startup");
    assert!(err.contains("metrics"), "{err}");
    drop(taken);
}

// ---------------------------------------------------------------------------
// A real Prometheus
// ---------------------------------------------------------------------------

/// The prometheus binary, or a panic that says how to install it.
fn prometheus_path() -> PathBuf {
    let candidates = [
        std::env::var_os("PROMETHEUS_BIN").map(PathBuf::from),
        Some(PathBuf::from("/usr/bin/prometheus")),
        Some(PathBuf::from("/usr/local/bin/prometheus")),
    ];
    for c in candidates.into_iter().flatten() {
        if c.is_file() {
            return c;
        }
    }
    panic!(
        "prometheus not found: install it with `apt-get install prometheus` \
         (scripts/test.sh does), or set PROMETHEUS_BIN"
    );
}

/// A Prometheus server scraping one target every second, killed and reaped on Drop.
struct Prometheus {
    child: Child,
    addr: SocketAddr,
    _dir: TempDir,
}

impl Prometheus {
    fn start(target: SocketAddr) -> Prometheus {
        let bin = prometheus_path();
        let mut last = String::new();
        // The web port is picked free and may be taken before Prometheus binds it.
        for _ in 0..5 {
            let dir = TempDir::new("prometheus");
            let config = dir.path().join("prometheus.yml");
            std::fs::write(
                &config,
                format!(
                    "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
                     scrape_configs:\n  - job_name: memring\n    scrape_interval: 1s\n    \
                     scrape_timeout: 1s\n    static_configs:\n      - targets: ['{target}']\n"
                ),
            )
            .unwrap();
            let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
            let log = std::fs::File::create(dir.path().join("log")).unwrap();
            let mut child = Command::new(&bin)
                .arg(format!("--config.file={}", config.display()))
                .arg(format!(
                    "--storage.tsdb.path={}",
                    dir.path().join("data").display()
                ))
                .arg(format!("--web.listen-address={addr}"))
                .arg("--log.level=warn")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::from(log))
                .spawn()
                .unwrap_or_else(|e| panic!("spawn {}: {e}", bin.display()));
            let ready = wait_for(PROM_WAIT, || {
                if let Ok(Some(_)) = child.try_wait() {
                    return Some(false);
                }
                matches!(http_get(addr, "/-/ready"), Ok((200, _))).then_some(true)
            });
            if ready == Some(true) {
                return Prometheus {
                    child,
                    addr,
                    _dir: dir,
                };
            }
            let _ = child.kill();
            let _ = child.wait();
            last = std::fs::read_to_string(dir.path().join("log")).unwrap_or_default();
        }
        panic!("prometheus did not become ready; its log:\n{last}");
    }

    /// An instant query; the result vector as (labels, value) pairs.
    fn query(&self, promql: &str) -> Vec<(serde_json::Value, f64)> {
        let path = format!("/api/v1/query?query={}", url_encode(promql));
        let (code, body) = match http_get(self.addr, &path) {
            Ok(r) => r,
            Err(_) => return Vec::new(),
        };
        if code != 200 {
            return Vec::new();
        }
        let v: serde_json::Value = match serde_json::from_str(&body) {
            Ok(v) => v,
            Err(_) => return Vec::new(),
        };
        v["data"]["result"]
            .as_array()
            .map(|rs| {
                rs.iter()
                    .filter_map(|r| {
                        let val = r["value"][1].as_str()?.parse::<f64>().ok()?;
                        Some((r["metric"].clone(), val))
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Whether Prometheus accepts `promql` (parses and evaluates it); its error otherwise.
    fn check(&self, promql: &str) -> Result<(), String> {
        let path = format!("/api/v1/query?query={}", url_encode(promql));
        let (code, body) = http_get(self.addr, &path).map_err(|e| e.to_string())?;
        let v: serde_json::Value =
            serde_json::from_str(&body).map_err(|e| format!("{e}: {body}"))?;
        if code == 200 && v["status"] == "success" {
            Ok(())
        } else {
            Err(format!("HTTP {code}: {body}"))
        }
    }

    /// Poll `promql` until `ok` accepts its result; panics after `PROM_WAIT`.
    fn wait_query(
        &self,
        promql: &str,
        what: &str,
        mut ok: impl FnMut(&[(serde_json::Value, f64)]) -> bool,
        mut between: impl FnMut(),
    ) -> Vec<(serde_json::Value, f64)> {
        let mut last = Vec::new();
        let found = wait_for(PROM_WAIT, || {
            between();
            last = self.query(promql);
            if ok(&last) {
                return Some(last.clone());
            }
            // Prometheus scrapes every second: no need to ask more than ~10 times a second.
            std::thread::sleep(Duration::from_millis(100));
            None
        });
        found.unwrap_or_else(|| panic!("{what}: `{promql}` never matched; last result {last:?}"))
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Every PromQL expression in docs/grafana-memring.json.
fn dashboard_queries() -> Vec<String> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/grafana-memring.json");
    let text = std::fs::read_to_string(&path).expect("docs/grafana-memring.json");
    let doc: serde_json::Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    let mut out = Vec::new();
    for p in doc["panels"].as_array().expect("panels") {
        for t in p["targets"].as_array().into_iter().flatten() {
            if let Some(e) = t["expr"].as_str() {
                out.push(e.to_string());
            }
        }
    }
    assert!(out.len() >= 10, "too few dashboard queries: {out:?}");
    out
}

/// The `memring_*` identifiers in an expression.
fn metric_names(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = expr;
    while let Some(i) = rest.find("memring_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        names.push(tail[..end].to_string());
        rest = &tail[end..];
    }
    names
}

fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[test]
fn prometheus_scrapes_memring_and_sees_a_killed_primary_go_down() {
    let mut a = Memcached::start();
    let b = Memcached::start();
    let (p, maddr) = memring_with_metrics(&[&a, &b], &["--request-timeout", "500ms"]);
    let prom = Prometheus::start(maddr);
    let mut c = p.client();
    drive(&mut c, 200, "k");
    let sent = 400.0;

    // Every request answered so far is counted (the scrape may lag a second).
    let total = prom.wait_query(
        "sum(memring_requests_total)",
        "requests counted",
        |r| r.first().is_some_and(|(_, v)| *v >= sent),
        || {},
    );
    assert!(total[0].1 >= sent, "{total:?}");

    // A p99 from the histogram buckets: a finite, positive latency below
    // the top bucket bound (no request here took seconds).
    let p99 = prom.wait_query(
        "histogram_quantile(0.99, sum by (le) (memring_request_duration_seconds_bucket))",
        "p99 over the request latency buckets",
        |r| r.first().is_some_and(|(_, v)| v.is_finite() && *v > 0.0),
        || {},
    );
    assert!(p99[0].1 < 10.0, "p99 {:?}", p99);
    let get_p99 = prom.wait_query(
        "histogram_quantile(0.99, sum by (le) (memring_request_duration_seconds_bucket{command=\"get\"}))",
        "p99 of get",
        |r| r.first().is_some_and(|(_, v)| v.is_finite() && *v > 0.0),
        || {},
    );
    assert!(get_p99[0].1 < 10.0, "{get_p99:?}");

    // Both primaries serving.
    let up = prom.wait_query(
        "memring_server_up",
        "both servers up",
        |r| r.len() == 2 && r.iter().all(|(_, v)| *v == 1.0),
        || {},
    );
    for (labels, _) in &up {
        assert_eq!(labels["role"], "primary", "{up:?}");
        assert_eq!(labels["job"], "memring", "{up:?}");
    }

    // The Grafana dashboard's queries: each one parses and evaluates, and
    // every metric it names is one memring exposes.
    let (_, exposed) = http_get(maddr, "/metrics").expect("GET /metrics");
    for expr in dashboard_queries() {
        let q = expr
            .replace("$__rate_interval", "1m")
            .replace("$instance", ".*");
        prom.check(&q)
            .unwrap_or_else(|e| panic!("dashboard query `{expr}` rejected: {e}"));
        for name in metric_names(&expr) {
            let family = ["_bucket", "_count", "_sum"]
                .iter()
                .find_map(|suf| name.strip_suffix(suf))
                .unwrap_or(&name);
            assert!(
                exposed.contains(&format!("\n{family}")),
                "dashboard query `{expr}` names {name}, which memring does not expose"
            );
        }
    }

    // SIGKILL primary `a`; traffic over many keys reaches it, fails, and
    // ejects it. Its series goes to 0 while `b` stays at 1.
    let dead = a.server_arg();
    a.kill();
    let mut i = 0usize;
    let query = format!("memring_server_up{{server=\"{dead}\"}}");
    prom.wait_query(
        &query,
        "killed primary down",
        |r| r.first().is_some_and(|(_, v)| *v == 0.0),
        || {
            // A few requests per poll; their replies may be errors now.
            for _ in 0..4 {
                i += 1;
                let _ = c.request(format!("get after{i}\r\n").as_bytes());
            }
        },
    );
    let alive = prom.query(&format!(
        "memring_server_up{{server=\"{}\"}}",
        b.server_arg()
    ));
    assert_eq!(alive.first().map(|(_, v)| *v), Some(1.0), "{alive:?}");
    let ejected = prom.wait_query(
        &format!("sum(memring_ejections_total{{server=\"{dead}\"}})"),
        "ejection counted",
        |r| r.first().is_some_and(|(_, v)| *v >= 1.0),
        || {},
    );
    assert!(ejected[0].1 >= 1.0);
    prom.wait_query(
        &format!("sum(memring_upstream_errors_total{{server=\"{dead}\"}})"),
        "upstream errors counted",
        |r| r.first().is_some_and(|(_, v)| *v >= 1.0),
        || {},
    );
    drop(p);
}
