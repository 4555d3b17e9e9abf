//! TLS on both sides, with real components: Debian's memcached as a TLS
//! server (`-Z`), pymemcache with an `ssl.SSLContext` and Python's `ssl`
//! as TLS clients, and certificates the test makes with `openssl`.
//!
//! Needs: memcached, python3 with pymemcache, openssl (scripts/test.sh
//! installs them).

// Tests and benchmarks keep time themselves (clippy.toml holds the library).
#![allow(clippy::disallowed_methods)]

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{wait_for, Memcached, Memring, TempDir};

/// A TLS client in this process (rustls), trusting `ca`.
fn rust_tls_client(
    addr: SocketAddr,
    ca: &Path,
) -> rustls::StreamOwned<rustls::ClientConnection, TcpStream> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls::pki_types::CertificateDer::pem_file_iter(ca).expect("CA file") {
        roots.add(c.expect("CA certificate")).expect("add CA");
    }
    #[allow(deprecated)]
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").expect("name");
    let conn = rustls::ClientConnection::new(std::sync::Arc::new(cfg), name).expect("session");
    let sock = TcpStream::connect(addr).expect("connect");
    sock.set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    rustls::StreamOwned::new(conn, sock)
}

/// Read until the bytes end with `end`.
fn read_reply(s: &mut impl Read, end: &[u8]) -> Vec<u8> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    // Bounded by the read timeout and the reply's size.
    while !got.ends_with(end) && got.len() < 1 << 20 {
        let n = s.read(&mut buf).expect("read a reply");
        assert!(n > 0, "closed after {:?}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    got
}

/// A small PKI for one test: a CA, a server certificate for 127.0.0.1, a
/// client certificate, and a second ("rogue") CA with a client and a
/// server certificate of its own, which the first CA does not vouch for.
struct Pki {
    dir: TempDir,
}

fn openssl(args: &[&str], dir: &Path) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| {
            panic!("openssl is missing ({e}): install it with `apt-get install openssl`")
        });
    assert!(
        out.status.success(),
        "openssl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Pki {
    fn new() -> Pki {
        let pki = Pki {
            dir: TempDir::new("pki"),
        };
        pki.ca("ca");
        pki.ca("rogue-ca");
        pki.leaf("server", "ca", "serverAuth");
        pki.leaf("client", "ca", "clientAuth");
        pki.leaf("rogue-client", "rogue-ca", "clientAuth");
        pki.leaf("rogue-server", "rogue-ca", "serverAuth");
        pki
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn arg(&self, name: &str) -> String {
        self.path(name).display().to_string()
    }

    fn ca(&self, name: &str) {
        openssl(
            &[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-days",
                "2",
                "-subj",
                &format!("/CN=memring test {name}"),
                "-keyout",
                &format!("{name}.key"),
                "-out",
                &format!("{name}.pem"),
            ],
            self.dir.path(),
        );
    }

    /// `name.pem` and `name.key`, signed by `ca`, valid for 127.0.0.1.
    fn leaf(&self, name: &str, ca: &str, usage: &str) {
        let d = self.dir.path();
        openssl(
            &[
                "req",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-subj",
                &format!("/CN={name}"),
                "-keyout",
                &format!("{name}.key"),
                "-out",
                &format!("{name}.csr"),
            ],
            d,
        );
        let ext = format!(
            "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n\
             keyUsage=digitalSignature\nextendedKeyUsage={usage}\n"
        );
        std::fs::write(d.join(format!("{name}.ext")), ext).expect("ext file");
        openssl(
            &[
                "x509",
                "-req",
                "-days",
                "2",
                "-in",
                &format!("{name}.csr"),
                "-CA",
                &format!("{ca}.pem"),
                "-CAkey",
                &format!("{ca}.key"),
                "-CAcreateserial",
                "-extfile",
                &format!("{name}.ext"),
                "-out",
                &format!("{name}.pem"),
            ],
            d,
        );
    }
}

/// memcached serving TLS only, with the PKI's server certificate.
fn tls_memcached(pki: &Pki) -> Memcached {
    let opt = format!(
        "ssl_chain_cert={},ssl_key={}",
        pki.arg("server.pem"),
        pki.arg("server.key")
    );
    Memcached::start_with_args("2m", &["-Z", "-o", &opt])
}

/// The arguments of a TLS listener on a free port with the PKI's server
/// certificate.
fn tls_listener_args(pki: &Pki) -> Vec<String> {
    vec![
        "--tls-listen".into(),
        "127.0.0.1:0".into(),
        "--tls-cert".into(),
        pki.arg("server.pem"),
        "--tls-key".into(),
        pki.arg("server.key"),
    ]
}

/// memring with a TLS listener (and `extra`) in front of `servers`.
fn tls_memring(pki: &Pki, servers: &[&Memcached], extra: &[&str]) -> Memring {
    let mut args = tls_listener_args(pki);
    args.extend(extra.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Memring::start_for(servers, &args)
}

/// Run a Python script with `args`; its stdout (panics with its stderr).
fn python(script: &str, args: &[String]) -> String {
    let out = Command::new("python3")
        .arg("-c")
        .arg(script)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("python3 is missing ({e}): apt-get install python3"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("No module named 'pymemcache'"),
        "pymemcache missing: pip install pymemcache"
    );
    assert!(out.status.success(), "python failed:\n{stderr}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// One `STAT name value` of memring's `stats`, over its plaintext port.
fn stat(p: &Memring, name: &str) -> u64 {
    let mut c = p.client();
    let text = String::from_utf8_lossy(&c.request(b"stats\r\n")).into_owned();
    let want = format!("STAT {name} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&want))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in stats:\n{text}"))
}

/// Wait until `stat(name)` reaches `at_least`.
fn wait_stat(p: &Memring, name: &str, at_least: u64) {
    let got = wait_for(Duration::from_secs(30), || {
        (stat(p, name) >= at_least).then_some(())
    });
    assert!(
        got.is_some(),
        "{name} stayed below {at_least}: {}",
        stat(p, name)
    );
}

/// True when the peer closes `s` (or resets it) within `limit`.
fn closed_within(s: &mut TcpStream, limit: Duration) -> bool {
    let _ = s.set_read_timeout(Some(Duration::from_millis(200)));
    let deadline = Instant::now() + limit;
    let mut buf = [0u8; 4096];
    // Bounded by the deadline.
    while Instant::now() < deadline {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => return true,
        }
    }
    false
}

const CLIENT_SCRIPT: &str = r#"
import ssl, sys
from pymemcache.client.base import Client
port, ca = int(sys.argv[1]), sys.argv[2]
version = sys.argv[3] if len(sys.argv) > 3 else ""
ctx = ssl.create_default_context(cafile=ca)
if version == "1.2":
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
c = Client(("127.0.0.1", port), tls_context=ctx, timeout=10)
big = b"v" * 500000
assert c.set("tls-small" + version, b"hello")
assert c.set("tls-big" + version, big)
assert c.get("tls-small" + version) == b"hello"
assert c.get("tls-big" + version) == big
got = c.get_many(["tls-small" + version, "tls-big" + version, "tls-absent"])
assert got == {"tls-small" + version: b"hello", "tls-big" + version: big}, got.keys()
assert c.set("tls-n" + version, b"1")
assert c.incr("tls-n" + version, 41) == 42
assert c.delete("tls-small" + version)
assert c.get("tls-small" + version) is None
print(c.raw_command(b"version").decode().split()[0], c.sock.version())
"#;

#[test]
fn tls_clients_and_tls_servers_with_real_clients() {
    let pki = Pki::new();
    let mc = tls_memcached(&pki);
    // The server really speaks only TLS: a plaintext request gets no answer.
    let mut plain = TcpStream::connect(mc.addr()).expect("connect to memcached");
    plain.write_all(b"version\r\n").expect("send");
    let _ = plain.set_read_timeout(Some(Duration::from_millis(500)));
    let mut buf = [0u8; 64];
    let n = plain.read(&mut buf).unwrap_or(0);
    assert!(
        !buf[..n].starts_with(b"VERSION"),
        "memcached -Z answered plaintext"
    );
    let ca = pki.arg("ca.pem");
    let p = tls_memring(&pki, &[&mc], &["--server-tls", "--server-tls-ca", &ca]);
    let tls = p.tls.expect("a TLS listener line");
    for version in ["1.3", "1.2"] {
        let out = python(
            CLIENT_SCRIPT,
            &[tls.port().to_string(), ca.clone(), version.to_string()],
        );
        let want = format!("VERSION TLSv{version}");
        assert_eq!(out.trim(), want);
    }
    // The plaintext listener reaches the same TLS servers.
    let mut c = p.client();
    assert_eq!(
        c.request(b"get tls-n1.3\r\n"),
        b"VALUE tls-n1.3 0 2\r\n42\r\nEND\r\n"
    );
    assert!(stat(&p, "tls_handshakes") >= 2);
    assert_eq!(stat(&p, "tls_handshake_errors_protocol"), 0);
}

#[test]
fn tls_only_listener_with_port_zero() {
    let pki = Pki::new();
    let mc = Memcached::start();
    let mut args: Vec<String> = ["-D", "-p", "0", "-s"].map(String::from).to_vec();
    args.push(mc.server_arg());
    args.extend(tls_listener_args(&pki));
    let p = Memring::start(&args);
    assert!(p.tcp.is_none(), "{:?}", p.listen_lines);
    let tls = p.tls.expect("a TLS listener");
    let out = python(CLIENT_SCRIPT, &[tls.port().to_string(), pki.arg("ca.pem")]);
    assert!(out.starts_with("VERSION"), "{out}");
}

const MTLS_SCRIPT: &str = r#"
import ssl, sys, socket
port, ca = int(sys.argv[1]), sys.argv[2]
cert = sys.argv[3] if len(sys.argv) > 3 else None
ctx = ssl.create_default_context(cafile=ca)
if cert:
    ctx.load_cert_chain(cert + ".pem", cert + ".key")
try:
    s = ctx.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=10),
                        server_hostname="127.0.0.1")
    s.sendall(b"version\r\n")
    data = s.recv(100)
    print("answered" if data.startswith(b"VERSION") else "closed")
except (ssl.SSLError, OSError) as e:
    print("refused")
"#;

#[test]
fn bad_tls_input_gets_a_clean_close_and_a_counter() {
    let pki = Pki::new();
    let mc = Memcached::start();
    let ca = pki.arg("ca.pem");
    let p = tls_memring(
        &pki,
        &[&mc],
        &["--tls-ca", &ca, "--tls-handshake-timeout", "1s"],
    );
    let tls = p.tls.expect("TLS listener");
    let port = tls.port().to_string();
    let run = |cert: Option<&str>| {
        let mut a = vec![port.clone(), ca.clone()];
        a.extend(cert.map(|c| pki.arg(c)));
        python(MTLS_SCRIPT, &a).trim().to_string()
    };
    // Mutual TLS: a certificate from the CA is served; none, or one from
    // another CA, is refused.
    assert_eq!(run(Some("client")), "answered");
    assert_ne!(run(None), "answered");
    wait_stat(&p, "tls_handshake_errors_no_certificate", 1);
    assert_ne!(run(Some("rogue-client")), "answered");
    wait_stat(&p, "tls_handshake_errors_bad_certificate", 1);

    // Plaintext on the TLS port.
    let mut s = TcpStream::connect(tls).expect("connect");
    s.write_all(b"get k\r\n").expect("send");
    assert!(closed_within(&mut s, Duration::from_secs(30)));
    wait_stat(&p, "tls_handshake_errors_not_tls", 1);

    // A TLS hello on the plaintext port.
    let hello = python(MTLS_SCRIPT, &[p.addr().port().to_string(), ca.clone()]);
    assert_eq!(hello.trim(), "refused");
    wait_stat(&p, "tls_hellos_on_plaintext_port", 1);

    // A handshake flood that stalls (half a record, then nothing), while
    // a real client is served; every stalled one is cut after the timeout.
    let mut stalled: Vec<TcpStream> = (0..100)
        .map(|_| {
            let mut s = TcpStream::connect(tls).expect("connect");
            s.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01])
                .expect("send");
            s
        })
        .collect();
    assert_eq!(run(Some("client")), "answered");
    for s in &mut stalled {
        assert!(
            closed_within(s, Duration::from_secs(30)),
            "a stalled handshake was not cut"
        );
    }
    wait_stat(&p, "tls_handshake_errors_timeout", 100);
    // Nothing of them is left, and the proxy serves on.
    let gone = wait_for(Duration::from_secs(30), || {
        (stat(&p, "curr_tls_connections") == 0).then_some(())
    });
    assert!(gone.is_some(), "TLS connections left open");
    let mut c = p.client();
    assert!(c.request(b"version\r\n").starts_with(b"VERSION"));
}

#[test]
fn a_server_certificate_that_fails_verification_is_a_tls_failure() {
    let pki = Pki::new();
    let mc = tls_memcached(&pki);
    // The servers are verified against a CA that did not sign them.
    let rogue = pki.arg("rogue-ca.pem");
    let p = Memring::start_for(
        &[&mc],
        &[
            "--server-tls",
            "--server-tls-ca",
            &rogue,
            "--failure-limit",
            "2",
        ],
    );
    let mut c = p.client();
    let failed = wait_for(Duration::from_secs(30), || {
        let line = c.request(b"get k\r\n");
        assert!(
            line.starts_with(b"SERVER_ERROR"),
            "a server that failed verification answered: {}",
            String::from_utf8_lossy(&line)
        );
        (stat(&p, "server_0:ejections_tls") >= 1).then_some(())
    });
    assert!(failed.is_some(), "no TLS ejection:\n{}", p.stderr());
    assert!(
        p.stderr().contains("TLS to the server failed"),
        "{}",
        p.stderr()
    );
}

const PEER_CERT_SCRIPT: &str = r#"
import ssl, sys, socket, hashlib
port, ca = int(sys.argv[1]), sys.argv[2]
ctx = ssl.create_default_context(cafile=ca)
s = ctx.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=10),
                    server_hostname="127.0.0.1")
print(hashlib.sha256(s.getpeercert(binary_form=True)).hexdigest())
"#;

#[test]
fn sighup_reloads_certificates_without_dropping_connections() {
    let pki = Pki::new();
    let mc = Memcached::start();
    let p = tls_memring(&pki, &[&mc], &[]);
    let tls: SocketAddr = p.tls.expect("TLS listener");
    let args = [tls.port().to_string(), pki.arg("ca.pem")];
    let before = python(PEER_CERT_SCRIPT, &args);
    // A TLS connection open across the reload.
    let mut held = rust_tls_client(tls, &pki.path("ca.pem"));
    held.write_all(b"set r 0 0 1\r\nx\r\n").expect("send");
    assert_eq!(read_reply(&mut held, b"\r\n"), b"STORED\r\n");
    // A new certificate for the same name, in place.
    pki.leaf("server", "ca", "serverAuth");
    p.sighup();
    let changed = wait_for(Duration::from_secs(30), || {
        let now = python(PEER_CERT_SCRIPT, &args);
        (now != before).then_some(())
    });
    assert!(changed.is_some(), "the new certificate was not served");
    held.write_all(b"get r\r\n").expect("send");
    assert_eq!(
        read_reply(&mut held, b"END\r\n"),
        b"VALUE r 0 1\r\nx\r\nEND\r\n"
    );
    // A broken file keeps the running certificate.
    std::fs::write(pki.path("server.pem"), b"not a certificate").expect("write");
    p.sighup();
    let logged = wait_for(Duration::from_secs(30), || {
        p.stderr()
            .contains("certificate reload failed")
            .then_some(())
    });
    assert!(logged.is_some(), "{}", p.stderr());
    let _ = python(PEER_CERT_SCRIPT, &args);
}
