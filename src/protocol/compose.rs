//! Composing wire bytes: requests the proxy sends upstream (split multi-gets,
//! backup writes, read-backs) and replies it makes itself.
//!
//! Everything appends to a caller-owned `BytesMut`, so a warm buffer means no
//! allocation.

use bytes::{BufMut, BytesMut};

use super::Verb;

/// `STORED\r\n`
pub const STORED: &[u8] = b"STORED\r\n";
/// `NOT_STORED\r\n`
pub const NOT_STORED: &[u8] = b"NOT_STORED\r\n";
/// `END\r\n`
pub const END: &[u8] = b"END\r\n";
/// `OK\r\n`
pub const OK: &[u8] = b"OK\r\n";
/// `ERROR\r\n`
pub const ERROR: &[u8] = b"ERROR\r\n";
/// `RESET\r\n`
pub const RESET: &[u8] = b"RESET\r\n";
/// `MN\r\n`
pub const MN: &[u8] = b"MN\r\n";
/// `EN\r\n`
pub const EN: &[u8] = b"EN\r\n";
/// `SERVER_ERROR object too large for cache\r\n`
pub const TOO_LARGE: &[u8] = b"SERVER_ERROR object too large for cache\r\n";
/// `CLIENT_ERROR line too long\r\n`
pub const LINE_TOO_LONG: &[u8] = b"CLIENT_ERROR line too long\r\n";
/// `SERVER_ERROR no server available\r\n`: neither the primary nor its backup answered.
pub const NO_SERVER: &[u8] = b"SERVER_ERROR no server available\r\n";
/// `SERVER_ERROR backend timeout\r\n`
pub const BACKEND_TIMEOUT: &[u8] = b"SERVER_ERROR backend timeout\r\n";

/// Append the decimal form of `v` (no allocation).
pub fn put_u64(out: &mut BytesMut, mut v: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

/// Append the decimal form of `v`, with a `-` when negative.
pub fn put_i64(out: &mut BytesMut, v: i64) {
    if v < 0 {
        out.put_u8(b'-');
    }
    put_u64(out, v.unsigned_abs());
}

/// `CLIENT_ERROR <msg>\r\n`
pub fn compose_client_error(out: &mut BytesMut, msg: &str) {
    out.extend_from_slice(b"CLIENT_ERROR ");
    out.extend_from_slice(msg.as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// A retrieval line: `get k1 k2\r\n`, or `gat <exptime> k1 k2\r\n` for gat/gats.
pub fn compose_retrieval<'k>(
    out: &mut BytesMut,
    verb: Verb,
    exptime: i64,
    keys: impl IntoIterator<Item = &'k [u8]>,
) {
    out.extend_from_slice(verb.as_bytes());
    if matches!(verb, Verb::Gat | Verb::Gats) {
        out.put_u8(b' ');
        put_i64(out, exptime);
    }
    for key in keys {
        out.put_u8(b' ');
        out.extend_from_slice(key);
    }
    out.extend_from_slice(b"\r\n");
}

/// A storage command line without its data block:
/// `<verb> <key> <flags> <exptime> <bytes> [<cas>] [noreply]\r\n`.
#[allow(clippy::too_many_arguments)]
pub fn compose_storage_line(
    out: &mut BytesMut,
    verb: Verb,
    key: &[u8],
    flags: u32,
    exptime: i64,
    bytes: usize,
    cas: Option<u64>,
    noreply: bool,
) {
    out.extend_from_slice(verb.as_bytes());
    out.put_u8(b' ');
    out.extend_from_slice(key);
    out.put_u8(b' ');
    put_u64(out, u64::from(flags));
    out.put_u8(b' ');
    put_i64(out, exptime);
    out.put_u8(b' ');
    put_u64(out, bytes as u64);
    if let Some(cas) = cas {
        out.put_u8(b' ');
        put_u64(out, cas);
    }
    if noreply {
        out.extend_from_slice(b" noreply");
    }
    out.extend_from_slice(b"\r\n");
}

/// A whole storage command, line and data block (used by the load generator and tests).
#[allow(clippy::too_many_arguments)]
pub fn compose_storage(
    out: &mut BytesMut,
    verb: Verb,
    key: &[u8],
    flags: u32,
    exptime: i64,
    data: &[u8],
    cas: Option<u64>,
    noreply: bool,
) {
    compose_storage_line(out, verb, key, flags, exptime, data.len(), cas, noreply);
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
}

/// A single-key command line: `<word> <key>[ <arg>]\r\n`, e.g. `delete k\r\n`,
/// `touch k 300\r\n`, `incr k 5\r\n`.
pub fn compose_key_command(out: &mut BytesMut, word: &[u8], key: &[u8], arg: Option<i64>) {
    out.extend_from_slice(word);
    out.put_u8(b' ');
    out.extend_from_slice(key);
    if let Some(arg) = arg {
        out.put_u8(b' ');
        put_i64(out, arg);
    }
    out.extend_from_slice(b"\r\n");
}

/// The read-back used to copy an item to a backup: `mg <key> v f t\r\n`
/// (value, client flags, remaining TTL).
pub fn compose_readback(out: &mut BytesMut, key: &[u8]) {
    out.extend_from_slice(b"mg ");
    out.extend_from_slice(key);
    out.extend_from_slice(b" v f t\r\n");
}

/// A retrieval reply's VALUE line: `VALUE <key> <flags> <bytes>[ <cas>]\r\n`.
pub fn compose_value_line(
    out: &mut BytesMut,
    key: &[u8],
    flags: u32,
    bytes: usize,
    cas: Option<u64>,
) {
    out.extend_from_slice(b"VALUE ");
    out.extend_from_slice(key);
    out.put_u8(b' ');
    put_u64(out, u64::from(flags));
    out.put_u8(b' ');
    put_u64(out, bytes as u64);
    if let Some(cas) = cas {
        out.put_u8(b' ');
        put_u64(out, cas);
    }
    out.extend_from_slice(b"\r\n");
}

/// `line` without its terminator (`\r\n`, `\n`, or none) and trailing spaces.
fn line_content(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    let mut line = line.strip_suffix(b"\r").unwrap_or(line);
    while let Some(rest) = line.strip_suffix(b" ") {
        line = rest;
    }
    line
}

/// Re-emit a classic request line without its `noreply` token, keeping the
/// terminator as `\r\n`. Used so that every upstream request gets a reply and
/// the pipelined FIFO stays in step.
///
/// `line` may carry its terminator or not. Only a last token that is exactly
/// `noreply` (and not the command word itself) is dropped; every other byte is
/// kept as it was, trailing spaces aside.
pub fn compose_without_noreply(out: &mut BytesMut, line: &[u8]) {
    let mut content = line_content(line);
    if let Some(head) = content.strip_suffix(b"noreply") {
        if head.ends_with(b" ") && head.iter().any(|&b| b != b' ') {
            content = head;
            while let Some(rest) = content.strip_suffix(b" ") {
                content = rest;
            }
        }
    }
    out.extend_from_slice(content);
    out.extend_from_slice(b"\r\n");
}

/// Re-emit a meta request line without its `q` flag, keeping everything else.
///
/// Every bare `q` token after the command word and the key is dropped with
/// the spaces before it; other bytes are kept as they were, trailing spaces
/// aside, and the terminator becomes `\r\n`.
pub fn compose_without_quiet(out: &mut BytesMut, line: &[u8]) {
    let content = line_content(line);
    let mut copied = 0;
    let mut prev_end = 0;
    let mut pos = 0;
    let mut index = 0;
    while pos < content.len() {
        if content.get(pos) == Some(&b' ') {
            pos += 1;
            continue;
        }
        let start = pos;
        while content.get(pos).is_some_and(|&b| b != b' ') {
            pos += 1;
        }
        if index >= 2 && content.get(start..pos) == Some(b"q".as_slice()) {
            out.extend_from_slice(content.get(copied..prev_end).unwrap_or_default());
            copied = pos;
        }
        prev_end = pos;
        index += 1;
    }
    out.extend_from_slice(content.get(copied..).unwrap_or_default());
    out.extend_from_slice(b"\r\n");
}

/// Find meta flag `flag` in a meta flags string (`f30 t-1 v`) and return its
/// token after the flag character (`b"30"`), or `Some(b"")` for a bare flag.
pub fn meta_flag(flags: &[u8], flag: u8) -> Option<&[u8]> {
    flags
        .split(|&b| b == b' ')
        .find_map(|tok| match tok.split_first() {
            Some((&first, rest)) if first == flag => Some(rest),
            _ => None,
        })
}
