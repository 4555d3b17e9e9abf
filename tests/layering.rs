//! The layering the README describes: the pure modules never import the I/O
//! shell (`server`), and the control plane never imports the engine (the
//! engine calls the control plane, not the other way round). Reads the
//! sources; starts nothing.

// Tests and benchmarks keep time themselves (clippy.toml holds the library).
#![allow(clippy::disallowed_methods)]

use std::path::{Path, PathBuf};

/// Every `.rs` file under `dir`.
fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    for e in entries {
        let p = e.expect("directory entry").path();
        if p.is_dir() {
            sources(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// Lines of `files` that mention any of `needles` outside comments.
fn offending(files: &[PathBuf], needles: &[&str]) -> Vec<String> {
    let mut bad = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(f).expect("source file");
        for (i, line) in text.lines().enumerate() {
            let code = line.split("//").next().unwrap_or("");
            if needles.iter().any(|n| code.contains(n)) {
                bad.push(format!("{}:{}: {}", f.display(), i + 1, line.trim()));
            }
        }
    }
    bad
}

#[test]
fn pure_modules_never_import_the_shell() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    for m in [
        "protocol", "route", "proxy", "upstream", "metrics", "config",
    ] {
        sources(&src.join(m), &mut files);
    }
    files.push(src.join("stats.rs"));
    assert!(
        files.len() > 20,
        "sources not found under {}",
        src.display()
    );
    let bad = offending(
        &files,
        &[
            "crate::server",
            "memring::server",
            "super::server",
            "tokio",
            "mio::",
            "io_uring::",
        ],
    );
    assert!(
        bad.is_empty(),
        "pure modules import the shell:\n{}",
        bad.join("\n")
    );
}

#[test]
fn the_control_plane_never_imports_the_engine() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/server");
    let files = vec![
        src.join("control.rs"),
        src.join("topology.rs"),
        src.join("tls.rs"),
    ];
    let bad = offending(
        &files,
        &["super::engine", "server::engine", "crate::server::engine"],
    );
    assert!(
        bad.is_empty(),
        "control plane imports the engine:\n{}",
        bad.join("\n")
    );
}
