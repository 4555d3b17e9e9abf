//! The Debian package (issue 12): `cargo deb` builds it, `dpkg -i` installs
//! it on this machine, and the installed files work: `memring --version`,
//! `--check` of the default config, the `memring` system user, the systemd
//! unit (`systemd-analyze verify`, or its content where that tool is absent),
//! and the installed binary proxying to a real memcached as that user.
//! `dpkg --purge` removes it again (`dpkg -r` keeps the conffile; purge is
//! what leaves the machine as it was).
//!
//! Needs root (dpkg) and cargo-deb (`cargo install cargo-deb --locked`;
//! scripts/test.sh installs it): without them the test fails saying so.

// Tests and benchmarks keep time themselves (clippy.toml holds the library).
#![allow(clippy::disallowed_methods)]

mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use common::*;

fn run(cmd: &mut Command) -> Output {
    let shown = format!("{cmd:?}");
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {shown}: {e}"))
}

#[track_caller]
fn run_ok(cmd: &mut Command) -> String {
    let shown = format!("{cmd:?}");
    let out = run(cmd);
    assert!(
        out.status.success(),
        "{shown} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `dpkg` with its arguments, retried while another dpkg holds the lock.
fn dpkg(args: &[&str]) -> String {
    let mut last = String::new();
    let done = wait_for(Duration::from_secs(300), || {
        let out = run(Command::new("dpkg").args(args));
        if out.status.success() {
            return Some(String::from_utf8_lossy(&out.stdout).into_owned());
        }
        last = String::from_utf8_lossy(&out.stderr).into_owned();
        if !last.contains("lock") {
            panic!("dpkg {args:?} failed ({}):\n{last}", out.status);
        }
        std::thread::sleep(Duration::from_millis(500));
        None
    });
    done.unwrap_or_else(|| panic!("dpkg {args:?}: lock never freed:\n{last}"))
}

/// Removes the package even when an assertion fails halfway.
struct Installed;

impl Drop for Installed {
    fn drop(&mut self) {
        let _ = Command::new("dpkg").args(["--purge", "memring"]).output();
    }
}

fn build_package(out_dir: &Path) -> PathBuf {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let probe = Command::new(&cargo).args(["deb", "--version"]).output();
    if !matches!(&probe, Ok(o) if o.status.success()) {
        panic!(
            "cargo-deb is missing: install it with `cargo install cargo-deb --locked` \
             (scripts/test.sh does)"
        );
    }
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    // Its own target directory: the `cargo test` that runs us owns ours.
    let target = manifest.join("target").join("package-test");
    run_ok(
        Command::new(&cargo)
            .current_dir(manifest)
            .env("CARGO_TARGET_DIR", &target)
            .args(["deb", "--profile", "deb-test", "--fast", "-o"])
            .arg(out_dir),
    );
    let debs: Vec<PathBuf> = std::fs::read_dir(out_dir)
        .expect("read the output directory")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "deb"))
        .collect();
    assert_eq!(debs.len(), 1, "expected one .deb in {out_dir:?}: {debs:?}");
    debs[0].clone()
}

#[test]
fn dpkg_installs_a_working_memring_with_its_unit_config_and_user() {
    assert!(
        nix::unistd::getuid().is_root(),
        "this test installs a Debian package: run it as root (CI does)"
    );
    let dir = TempDir::new("package");
    let deb = build_package(dir.path());

    // What the package holds, before installing it.
    let contents = run_ok(Command::new("dpkg-deb").arg("--contents").arg(&deb));
    for path in [
        "./usr/bin/memring",
        "./lib/systemd/system/memring.service",
        "./etc/memring/memring.toml",
        "./usr/share/man/man1/memring.1",
        "./usr/share/bash-completion/completions/memring",
        "./usr/share/zsh/vendor-completions/_memring",
        "./usr/share/fish/vendor_completions.d/memring.fish",
        "./usr/share/doc/memring/copyright",
        "./usr/share/doc/memring/README.md",
    ] {
        assert!(
            contents.contains(path),
            "{path} not in the package:\n{contents}"
        );
    }
    // Every file the shipped README links is shipped beside it.
    let readme = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md"))
        .expect("README.md");
    for link in readme
        .split("](")
        .skip(1)
        .filter_map(|r| r.split(')').next())
    {
        if link.starts_with('#') || link.contains("://") {
            continue;
        }
        let shipped = format!("./usr/share/doc/memring/{link}");
        assert!(
            contents.contains(&shipped),
            "the README links {link}, which the package does not ship:\n{contents}"
        );
    }
    let control = run_ok(
        Command::new("dpkg-deb")
            .arg("--field")
            .arg(&deb)
            .arg("Maintainer"),
    );
    assert!(
        control.contains('<') && control.contains('@') && control.trim_end().ends_with('>'),
        "Maintainer with an address: {control}"
    );
    let conffiles = run_ok(
        Command::new("dpkg-deb")
            .arg("--info")
            .arg(&deb)
            .arg("conffiles"),
    );
    assert!(
        conffiles.contains("/etc/memring/memring.toml"),
        "{conffiles}"
    );

    let _guard = Installed;
    dpkg(&["-i", deb.to_str().expect("utf-8 path")]);
    let status = run_ok(Command::new("dpkg").args(["-s", "memring"]));
    assert!(status.contains("Status: install ok installed"), "{status}");

    // Stripped: no symbol table, and a size far from the 80 MB of an
    // unstripped build of this profile (with rustls, ring and the YAML
    // reader the stripped one is about 13 MB).
    let sections = run_ok(Command::new("readelf").args(["-S", "-W", "/usr/bin/memring"]));
    assert!(
        !sections.contains(".symtab"),
        "/usr/bin/memring is not stripped"
    );
    let size = std::fs::metadata("/usr/bin/memring")
        .expect("installed")
        .len();
    assert!(size < 20 << 20, "/usr/bin/memring is {size} bytes");
    let copyright = std::fs::read_to_string("/usr/share/doc/memring/copyright").expect("copyright");
    assert!(copyright.contains("MIT License"), "{copyright}");
    // From the package itself: images often exclude /usr/share/man from
    // what dpkg installs.
    let tree = dir.path().join("tree");
    run_ok(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&tree));
    let man_dir = tree.join("usr/share/man/man1");
    let man = if man_dir.join("memring.1").exists() {
        std::fs::read_to_string(man_dir.join("memring.1")).expect("man page")
    } else {
        run_ok(Command::new("zcat").arg(man_dir.join("memring.1.gz")))
    };
    assert!(
        man.contains(".TH memring 1") && man.contains("\\-\\-server"),
        "{man}"
    );

    let version = run_ok(Command::new("/usr/bin/memring").arg("--version"));
    assert_eq!(
        version.trim(),
        format!("memring {}", env!("CARGO_PKG_VERSION"))
    );
    let check = run_ok(Command::new("/usr/bin/memring").args([
        "--config",
        "/etc/memring/memring.toml",
        "--check",
    ]));
    assert_eq!(check.trim(), "configuration ok");

    // The packaged binary carries TLS: --check loads the certificate and
    // key (and refuses a file that is not one).
    let tls = common::TempDir::new("pkg-tls");
    run_ok(
        Command::new("openssl")
            .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
            .args(["ec_paramgen_curve:prime256v1", "-nodes", "-days", "2"])
            .args([
                "-subj",
                "/CN=127.0.0.1",
                "-addext",
                "subjectAltName=IP:127.0.0.1",
            ])
            .args(["-keyout", "k.pem", "-out", "c.pem"])
            .current_dir(tls.path()),
    );
    let (cert, key) = (tls.path().join("c.pem"), tls.path().join("k.pem"));
    let tls_check = |cert: &Path| {
        run(Command::new("/usr/bin/memring")
            .args(["--check", "-s", "127.0.0.1:11211", "-p", "0"])
            .args(["--tls-listen", "127.0.0.1:0", "--tls-cert"])
            .arg(cert)
            .arg("--tls-key")
            .arg(&key)
            .arg("--server-tls")
            .arg("--server-tls-ca")
            .arg(cert))
    };
    let ok = tls_check(&cert);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let bad = tls_check(&key);
    assert!(!bad.status.success(), "a key passed for a certificate");
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("certificate"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );

    let user = run_ok(Command::new("getent").args(["passwd", "memring"]));
    assert!(user.starts_with("memring:"), "{user}");
    assert!(
        user.trim_end().ends_with("/usr/sbin/nologin") || user.contains("/bin/false"),
        "{user}"
    );

    let unit_path = "/lib/systemd/system/memring.service";
    let unit = std::fs::read_to_string(unit_path).expect("the unit file is installed");
    for line in [
        "User=memring",
        "ExecStart=/usr/bin/memring -D --config /etc/memring/memring.toml",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "WantedBy=multi-user.target",
    ] {
        assert!(
            unit.lines().any(|l| l == line),
            "{line:?} not in the unit:\n{unit}"
        );
    }
    if Path::new("/usr/bin/systemd-analyze").exists() || Path::new("/bin/systemd-analyze").exists()
    {
        let out = run(Command::new("systemd-analyze").args(["verify", unit_path]));
        let errors = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && !errors.contains("memring.service"),
            "systemd-analyze verify {unit_path} ({}):\n{errors}",
            out.status
        );
    }

    // The installed binary, as the unit would run it (its user, its config),
    // with the servers and listener overridden for this test.
    let mc = Memcached::start();
    let mut child = Command::new("/usr/bin/memring")
        .args([
            "-D",
            "--config",
            "/etc/memring/memring.toml",
            "--bind",
            "127.0.0.1:0",
        ])
        .args(["-s", &mc.server_arg(), "-u", "memring"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn the installed memring");
    let stdout = child.stdout.take().expect("piped stdout");
    let (tx, rx) = mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut addr: Option<SocketAddr> = None;
    let mut ready = false;
    for _ in 0..16 {
        match rx.recv_timeout(START_TIMEOUT) {
            Ok(l) if l == "ready" => {
                ready = true;
                break;
            }
            Ok(l) => {
                if let Some(a) = l.strip_prefix("listening on tcp ") {
                    addr = a.parse().ok();
                }
            }
            Err(_) => break,
        }
    }
    let pid = child.id();
    let result = std::panic::catch_unwind(|| {
        assert!(ready, "the installed memring never printed `ready`");
        let addr = addr.expect("a `listening on tcp` line");
        // It dropped to the packaged user.
        let uid = run_ok(Command::new("id").args(["-u", "memring"]));
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let real_uid = status
            .lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .and_then(|l| l.split_whitespace().next())
            .unwrap_or_default()
            .to_string();
        assert_eq!(real_uid, uid.trim(), "{status}");
        let mut c = Client::tcp(addr);
        assert_eq!(c.request(&set_cmd("pkg", b"installed")), b"STORED\r\n");
        assert_eq!(
            c.request(b"get pkg\r\n"),
            value_reply("pkg", 0, b"installed")
        );
    });
    let _ = child.kill();
    let _ = child.wait();
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }

    dpkg(&["--purge", "memring"]);
    assert!(!Path::new("/usr/bin/memring").exists());
    assert!(!Path::new(unit_path).exists());
    let gone = run(Command::new("dpkg").args(["-s", "memring"]));
    assert!(
        !gone.status.success(),
        "memring is still installed after dpkg --purge"
    );
}
