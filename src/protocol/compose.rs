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
/// memring's answer to `version`.
///
/// Clients parse the first word as a memcached `major.minor.patch`:
/// libmemcached (memcping, memcstat, memcdump) fails with "strtol() failed to
/// parse major version" on anything else, and some clients enable the meta
/// protocol only from 1.6 on. So the line claims the memcached protocol level
/// memring speaks, 1.6.0 (text + meta, checked against 1.6.18), and memring's
/// own version follows after a space, where those parsers stop reading.
pub const VERSION: &[u8] =
    concat!("VERSION 1.6.0 memring-", env!("CARGO_PKG_VERSION"), "\r\n").as_bytes();

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

/// The meta store of a base64 key (meta `b` flag), which a text storage
/// line cannot name: `ms <key> <bytes> b F<flags> T<exptime> M<S|E>\r\n`
/// (`add`: mode `E`, otherwise `S`).
pub fn compose_meta_store_b64(
    out: &mut BytesMut,
    key: &[u8],
    flags: u32,
    exptime: i64,
    bytes: usize,
    add: bool,
) {
    out.extend_from_slice(b"ms ");
    out.extend_from_slice(key);
    out.put_u8(b' ');
    put_u64(out, bytes as u64);
    out.extend_from_slice(b" b F");
    put_u64(out, u64::from(flags));
    out.extend_from_slice(b" T");
    put_i64(out, exptime);
    out.extend_from_slice(if add { b" ME\r\n" } else { b" MS\r\n" });
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
    compose_meta_get(out, key, b"v f t");
}

/// `mg <key> <flags>\r\n`, e.g. flags `v f t c` for value, client flags,
/// remaining TTL and cas.
pub fn compose_meta_get(out: &mut BytesMut, key: &[u8], flags: &[u8]) {
    out.extend_from_slice(b"mg ");
    out.extend_from_slice(key);
    out.put_u8(b' ');
    out.extend_from_slice(flags);
    out.extend_from_slice(b"\r\n");
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
/// `line` may carry its terminator or not. A last token that is exactly
/// `noreply` is dropped only where it is an extra argument of a verb that
/// takes one (so `get noreply` and `delete noreply` keep their key); every
/// other byte is kept as it was, trailing spaces aside.
pub fn compose_without_noreply(out: &mut BytesMut, line: &[u8]) {
    let mut content = line_content(line);
    if let Some(head) = content.strip_suffix(b" noreply") {
        let mut words = super::lex::words(head);
        let required = match words.next().and_then(super::request::verb_from_word) {
            Some(Verb::Set | Verb::Add | Verb::Replace | Verb::Append | Verb::Prepend) => Some(4),
            Some(Verb::Cas) => Some(5),
            Some(Verb::Delete | Verb::Verbosity) => Some(1),
            Some(Verb::Incr | Verb::Decr | Verb::Touch) => Some(2),
            Some(Verb::FlushAll) => Some(0),
            _ => None,
        };
        if required.is_some_and(|n| words.count() >= n) {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn run(f: impl FnOnce(&mut BytesMut)) -> Vec<u8> {
        let mut out = BytesMut::new();
        f(&mut out);
        out.to_vec()
    }

    #[test]
    fn numbers() {
        for (v, want) in [
            (0u64, "0"),
            (7, "7"),
            (10, "10"),
            (u64::MAX, "18446744073709551615"),
        ] {
            assert_eq!(run(|o| put_u64(o, v)), want.as_bytes());
        }
        for (v, want) in [
            (0i64, "0"),
            (-1, "-1"),
            (i64::MIN, "-9223372036854775808"),
            (i64::MAX, "9223372036854775807"),
        ] {
            assert_eq!(run(|o| put_i64(o, v)), want.as_bytes());
        }
    }

    #[test]
    fn composed_bytes() {
        let table: &[(Vec<u8>, &[u8])] = &[
            (
                run(|o| compose_client_error(o, "bad data chunk")),
                b"CLIENT_ERROR bad data chunk\r\n",
            ),
            (
                run(|o| compose_retrieval(o, Verb::Get, 99, [&b"a"[..], b"b"])),
                b"get a b\r\n",
            ),
            (
                run(|o| compose_retrieval(o, Verb::Gets, 0, [&b"a"[..]])),
                b"gets a\r\n",
            ),
            (
                run(|o| compose_retrieval(o, Verb::Gat, -1, [&b"a"[..]])),
                b"gat -1 a\r\n",
            ),
            (
                run(|o| compose_retrieval(o, Verb::Gats, 300, [&b"a"[..], b"b"])),
                b"gats 300 a b\r\n",
            ),
            (
                run(|o| compose_storage_line(o, Verb::Set, b"k", 5, 10, 2, None, false)),
                b"set k 5 10 2\r\n",
            ),
            (
                run(|o| compose_storage_line(o, Verb::Cas, b"k", 0, 0, 1, Some(42), true)),
                b"cas k 0 0 1 42 noreply\r\n",
            ),
            (
                run(|o| compose_storage(o, Verb::Append, b"k", 1, -1, b"hi", None, true)),
                b"append k 1 -1 2 noreply\r\nhi\r\n",
            ),
            (
                run(|o| compose_key_command(o, b"delete", b"k", None)),
                b"delete k\r\n",
            ),
            (
                run(|o| compose_key_command(o, b"touch", b"k", Some(300))),
                b"touch k 300\r\n",
            ),
            (
                run(|o| compose_key_command(o, b"incr", b"k", Some(5))),
                b"incr k 5\r\n",
            ),
            (run(|o| compose_readback(o, b"k")), b"mg k v f t\r\n"),
            (
                run(|o| compose_value_line(o, b"k", 7, 2, None)),
                b"VALUE k 7 2\r\n",
            ),
            (
                run(|o| compose_value_line(o, b"k", u32::MAX, 0, Some(37))),
                b"VALUE k 4294967295 0 37\r\n",
            ),
        ];
        for (got, want) in table {
            assert_eq!(String::from_utf8_lossy(got), String::from_utf8_lossy(want));
        }
    }

    #[test]
    fn without_noreply() {
        let table: &[(&[u8], &[u8])] = &[
            (b"set k 0 0 1 noreply\r\n", b"set k 0 0 1\r\n"),
            (b"set k 0 0 1 noreply", b"set k 0 0 1\r\n"),
            (b"delete k noreply\n", b"delete k\r\n"),
            (b"delete k 0  noreply  \r\n", b"delete k 0\r\n"),
            (b"incr k 1\r\n", b"incr k 1\r\n"),
            (b"incr k 1\n", b"incr k 1\r\n"),
            (b"set  k 0 0 1 noreply\r\n", b"set  k 0 0 1\r\n"),
            (b"set k 0 0 1 xnoreply\r\n", b"set k 0 0 1 xnoreply\r\n"),
            (b"get noreply\r\n", b"get noreply\r\n"),
            (b"get a noreply\r\n", b"get a noreply\r\n"),
            (b"delete noreply\r\n", b"delete noreply\r\n"),
            (b"flush_all noreply\r\n", b"flush_all\r\n"),
            (b"flush_all 10 noreply\r\n", b"flush_all 10\r\n"),
            (b"cas k 0 0 1 noreply\r\n", b"cas k 0 0 1 noreply\r\n"),
            (b"cas k 0 0 1 9 noreply\r\n", b"cas k 0 0 1 9\r\n"),
            (b"noreply\r\n", b"noreply\r\n"),
            (b"\r\n", b"\r\n"),
        ];
        for &(line, want) in table {
            let got = run(|o| compose_without_noreply(o, line));
            assert_eq!(String::from_utf8_lossy(&got), String::from_utf8_lossy(want));
        }
    }

    #[test]
    fn without_quiet() {
        let table: &[(&[u8], &[u8])] = &[
            (b"mg k v q\r\n", b"mg k v\r\n"),
            (b"mg k q v\r\n", b"mg k v\r\n"),
            (b"mg k  q  v\n", b"mg k  v\r\n"),
            (b"mg q v q\r\n", b"mg q v\r\n"),
            (b"ms k 2 T90 q F1\r\n", b"ms k 2 T90 F1\r\n"),
            (b"md k q q\r\n", b"md k\r\n"),
            (b"mg k qq v\r\n", b"mg k qq v\r\n"),
            (b"mg k v\r\n", b"mg k v\r\n"),
            (b"mg k v", b"mg k v\r\n"),
            (b"mn\r\n", b"mn\r\n"),
        ];
        for &(line, want) in table {
            let got = run(|o| compose_without_quiet(o, line));
            assert_eq!(String::from_utf8_lossy(&got), String::from_utf8_lossy(want));
        }
    }

    /// A parsed request's own line, re-emitted without noreply/quiet, parses
    /// back to the same request with the flag cleared.
    #[test]
    fn strip_then_parse() {
        use crate::protocol::{parse_request, Parsed};
        let mut keys = Vec::new();
        for line in [
            &b"delete k noreply\r\n"[..],
            b"incr k 5 noreply\r\n",
            b"touch k 9 noreply\n",
        ] {
            let got = run(|o| compose_without_noreply(o, line));
            let Parsed::Complete(r) = parse_request(&got, 1024, &mut keys) else {
                panic!()
            };
            assert!(!r.noreply);
            assert_eq!(r.consumed, got.len());
        }
        let got = run(|o| compose_without_quiet(o, b"mg k v q k\r\n"));
        let Parsed::Complete(r) = parse_request(&got, 1024, &mut keys) else {
            panic!()
        };
        assert!(!r.quiet);
        assert_eq!(&got[r.meta_flags], b"v k");
    }
}
