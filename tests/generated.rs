//! The man page and shell completions shipped by the Debian package are
//! generated from the clap definition (clap_mangen, clap_complete) and
//! committed under `packaging/`, where `cargo deb` picks them up. This test
//! fails when they no longer match the command line; regenerate them with
//! `MEMRING_BLESS=1 cargo test --test generated`.

// Tests and benchmarks keep time themselves (clippy.toml holds the library).
#![allow(clippy::disallowed_methods)]

use std::path::{Path, PathBuf};

use clap_complete::Shell;

/// Each generated file: its path under the repository and its bytes now.
fn generated() -> Vec<(PathBuf, Vec<u8>)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("packaging");
    let mut out = Vec::new();
    let mut man = Vec::new();
    clap_mangen::Man::new(memring::config::command())
        .render(&mut man)
        .expect("render the man page");
    out.push((root.join("memring.1"), man));
    for (shell, file) in [
        (Shell::Bash, "memring.bash"),
        (Shell::Zsh, "_memring"),
        (Shell::Fish, "memring.fish"),
    ] {
        let mut text = Vec::new();
        clap_complete::generate(shell, &mut memring::config::command(), "memring", &mut text);
        out.push((root.join("completions").join(file), text));
    }
    out
}

#[test]
fn man_page_and_completions_match_the_command_line() {
    let bless = std::env::var_os("MEMRING_BLESS").is_some();
    let mut stale = Vec::new();
    for (path, now) in generated() {
        if bless {
            std::fs::write(&path, &now).unwrap_or_else(|e| panic!("write {path:?}: {e}"));
            continue;
        }
        let committed = std::fs::read(&path).unwrap_or_default();
        if committed != now {
            stale.push(path.display().to_string());
        }
    }
    assert!(
        stale.is_empty(),
        "out of date: {stale:?}; regenerate with `MEMRING_BLESS=1 cargo test --test generated`"
    );
}

#[test]
fn the_man_page_documents_every_magent_flag() {
    let (_, man) = &generated()[0];
    let text = String::from_utf8_lossy(man);
    for flag in [
        "\\-s", "\\-b", "\\-k", "\\-p", "\\-l", "\\-n", "\\-i", "\\-f", "\\-u", "\\-g", "\\-D",
        "\\-v",
    ] {
        assert!(text.contains(flag), "man page lacks {flag}");
    }
    assert!(
        text.contains(".TH memring 1"),
        "{}",
        &text[..text.len().min(200)]
    );
}
