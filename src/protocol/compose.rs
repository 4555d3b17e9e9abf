//! Composing wire bytes: requests the proxy sends upstream (split multi-gets,
//! backup writes, read-backs) and replies it makes itself.
//!
//! Everything appends to a caller-owned `BytesMut`, so a warm buffer means no
//! allocation.

use bytes::BytesMut;

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

/// `CLIENT_ERROR <msg>\r\n`
pub fn compose_client_error(out: &mut BytesMut, msg: &str) {
    let _ = (out, msg);
    todo!("protocol helper implements")
}

/// A retrieval line: `get k1 k2\r\n`, or `gat <exptime> k1 k2\r\n` for gat/gats.
pub fn compose_retrieval<'k>(
    out: &mut BytesMut,
    verb: Verb,
    exptime: i64,
    keys: impl IntoIterator<Item = &'k [u8]>,
) {
    let _ = (out, verb, exptime, keys.into_iter());
    todo!("protocol helper implements")
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
    let _ = (out, verb, key, flags, exptime, bytes, cas, noreply);
    todo!("protocol helper implements")
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
    let _ = (out, verb, key, flags, exptime, data, cas, noreply);
    todo!("protocol helper implements")
}

/// A single-key command line: `<word> <key>[ <arg>]\r\n`, e.g. `delete k\r\n`,
/// `touch k 300\r\n`, `incr k 5\r\n`.
pub fn compose_key_command(out: &mut BytesMut, word: &[u8], key: &[u8], arg: Option<i64>) {
    let _ = (out, word, key, arg);
    todo!("protocol helper implements")
}

/// The read-back used to copy an item to a backup: `mg <key> v f t\r\n`
/// (value, client flags, remaining TTL).
pub fn compose_readback(out: &mut BytesMut, key: &[u8]) {
    let _ = (out, key);
    todo!("protocol helper implements")
}

/// A retrieval reply's VALUE line: `VALUE <key> <flags> <bytes>[ <cas>]\r\n`.
pub fn compose_value_line(out: &mut BytesMut, key: &[u8], flags: u32, bytes: usize, cas: Option<u64>) {
    let _ = (out, key, flags, bytes, cas);
    todo!("protocol helper implements")
}

/// Re-emit a classic request line without its `noreply` token, keeping the
/// terminator as `\r\n`. Used so that every upstream request gets a reply and
/// the pipelined FIFO stays in step.
pub fn compose_without_noreply(out: &mut BytesMut, line: &[u8]) {
    let _ = (out, line);
    todo!("protocol helper implements")
}

/// Re-emit a meta request line without its `q` flag, keeping everything else.
pub fn compose_without_quiet(out: &mut BytesMut, line: &[u8]) {
    let _ = (out, line);
    todo!("protocol helper implements")
}

/// Find meta flag `flag` in a meta flags string (`f30 t-1 v`) and return its
/// token after the flag character (`b"30"`), or `Some(b"")` for a bare flag.
pub fn meta_flag(flags: &[u8], flag: u8) -> Option<&[u8]> {
    let _ = (flags, flag);
    todo!("protocol helper implements")
}
