//! `--log-file`: a log destination that the signal thread can reopen on
//! SIGHUP, so logrotate can move the file away and memring starts a new one.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

/// The open log file and its path.
struct Open {
    path: PathBuf,
    file: Mutex<File>,
}

static LOG: OnceLock<Open> = OnceLock::new();

fn open_append(path: &Path) -> io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

/// Open `path` for appending and make it the log destination. Fails if the
/// file cannot be opened, so a bad path stops memring before it listens.
pub fn open(path: &Path) -> io::Result<()> {
    let file = open_append(path)?;
    let _ = LOG.set(Open {
        path: path.to_path_buf(),
        file: Mutex::new(file),
    });
    Ok(())
}

/// SIGHUP: open the path again (a new file if logrotate moved the old one).
/// On failure the old file stays in use.
pub fn reopen() -> io::Result<()> {
    let Some(log) = LOG.get() else {
        return Ok(());
    };
    let file = open_append(&log.path)?;
    if let Ok(mut f) = log.file.lock() {
        *f = file;
    }
    Ok(())
}

/// Whether logs go to a file.
pub fn active() -> bool {
    LOG.get().is_some()
}

/// A writer for tracing: one locked write per log line.
pub struct Writer;

impl Write for Writer {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match LOG.get() {
            Some(log) => match log.file.lock() {
                Ok(mut f) => f.write(buf),
                Err(_) => Ok(buf.len()),
            },
            None => io::stderr().write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
