//! Upstream response framer: finds where one server reply ends.
//!
//! A reply can only be framed when the request it answers is known, so the
//! caller passes an [`Expect`] derived from the request's verb.
//!
//! # Format
//! ```text
//! Values: (VALUE <key> <flags> <bytes> [<cas>]\r\n<data>\r\n)* END\r\n
//! Line:   STORED | NOT_STORED | EXISTS | NOT_FOUND | DELETED | TOUCHED | OK
//!         | <number> | VERSION <v> | ERROR | CLIENT_ERROR <m> | SERVER_ERROR <m>
//! Stats:  (STAT <name> <value>\r\n)* END\r\n
//! Meta:   VA <len> <flags>*\r\n<data>\r\n | HD <flags>* | EN | NF | NS | EX | MN | ME <key> <kv>*
//! ```
//! Any reply may instead be a single `ERROR`, `CLIENT_ERROR ...` or
//! `SERVER_ERROR ...` line, which completes it.

use super::lex::{parse_u64, slice, words as tokens, Tokens};
use std::ops::Range;

/// The reply shape a request expects.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expect {
    /// get/gets/gat/gats: VALUE blocks then END.
    Values,
    /// A single status line.
    Line,
    /// STAT lines then END.
    Stats,
    /// A meta reply: `VA` with a data block, or one status line.
    Meta,
    /// Any lines up to `END` (`stats cachedump`'s `ITEM` lines,
    /// `lru_crawler metadump`'s `key=` lines, which end in a bare `\n`), or
    /// a single error line.
    Lines,
}

/// One `VALUE` block of a retrieval reply; ranges index the framed buffer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ValueItem {
    /// The key as the server echoed it.
    pub key: Range<usize>,
    /// The whole block: from `VALUE` through the data's trailing `\r\n`.
    pub item: Range<usize>,
    /// The data block without its trailing `\r\n`.
    pub data: Range<usize>,
    /// Client flags.
    pub flags: u32,
    /// The cas unique (gets/gats only).
    pub cas: Option<u64>,
}

/// What kind of reply was framed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// Retrieval reply; the number of VALUE blocks is `items.len()`.
    Values,
    /// `STORED`
    Stored,
    /// `NOT_STORED`
    NotStored,
    /// `EXISTS`
    Exists,
    /// `NOT_FOUND`
    NotFound,
    /// `DELETED`
    Deleted,
    /// `TOUCHED`
    Touched,
    /// `OK`
    Ok,
    /// A decimal number (incr/decr result).
    Number(u64),
    /// `VERSION <v>`
    Version,
    /// STAT lines then END.
    Stats,
    /// `ERROR`
    Error,
    /// `CLIENT_ERROR <msg>`
    ClientError,
    /// `SERVER_ERROR <msg>`
    ServerError,
    /// Meta `VA <len> <flags>*` followed by a data block (see `Framed::Complete::data`).
    MetaValue,
    /// Meta `HD`
    MetaHd,
    /// Meta `EN` (miss)
    MetaEn,
    /// Meta `NF` (not found)
    MetaNf,
    /// Meta `NS` (not stored)
    MetaNs,
    /// Meta `EX` (exists)
    MetaEx,
    /// Meta `MN` (no-op)
    MetaMn,
    /// Meta `ME <key> ...` (debug)
    MetaMe,
}

impl Status {
    /// `ERROR`, `CLIENT_ERROR` or `SERVER_ERROR`.
    pub fn is_error(self) -> bool {
        matches!(
            self,
            Status::Error | Status::ClientError | Status::ServerError
        )
    }
}

/// Outcome of framing the front of an upstream buffer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Framed {
    /// More bytes are needed.
    Incomplete,
    /// One whole reply of `len` bytes.
    Complete {
        /// Bytes the reply occupies.
        len: usize,
        /// Its kind.
        status: Status,
        /// The first line without its terminator (for Values with items, the
        /// END line; for Stats, the END line).
        line: Range<usize>,
        /// The data block of a meta `VA` reply, without its `\r\n`; empty otherwise.
        data: Range<usize>,
    },
}

/// The server sent bytes that do not fit the expected reply: the connection's
/// framing is lost and it must be closed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FrameError {
    /// What did not parse.
    pub msg: &'static str,
}

/// Frame one reply of shape `expect` from the front of `buf`.
///
/// VALUE blocks are appended to `items` (cleared first). `max_value` bounds a
/// single data block so a garbage-sending server cannot make the caller buffer
/// without limit. Never panics and never copies.
///
/// An `ERROR`, `CLIENT_ERROR` or `SERVER_ERROR` line ends any reply, even
/// after VALUE blocks (those stay in `items`, and `len` covers them). Lines
/// end in `\r\n`; a bare `\n` is tolerated. A Stats reply may also be a single
/// `OK` or `RESET` line (`stats detail on`, `stats reset`), framed as [`Status::Ok`].
pub fn frame_response(
    expect: Expect,
    buf: &[u8],
    max_value: usize,
    items: &mut Vec<ValueItem>,
) -> Result<Framed, FrameError> {
    items.clear();
    let res = match expect {
        Expect::Values => frame_values(buf, max_value, items),
        Expect::Line => frame_line(buf),
        Expect::Stats => frame_stats(buf),
        Expect::Meta => frame_meta(buf, max_value),
        Expect::Lines => frame_lines(buf),
    };
    if !matches!(res, Ok(Framed::Complete { .. })) {
        items.clear();
    }
    res
}

/// A reply line: `content` without terminator, `next` is the offset after it.
struct RLine {
    content: Range<usize>,
    next: usize,
}

/// Find the line starting at `start`; `None` when more bytes are needed.
/// How many bytes the reply at the front of `buf` will take at least, once
/// its first line is in: a `VALUE` line's data block and the closing `END`,
/// or a meta `VA` line's data block. None before the line is complete or for
/// replies without a data block. A reader that learns this early can make
/// room for a large value once, instead of growing its buffer step by step.
pub fn reply_size_hint(buf: &[u8]) -> Option<usize> {
    let end = buf.iter().position(|&b| b == b'\n')?;
    let line = buf.get(..end)?.strip_suffix(b"\r")?;
    let mut words = tokens(line);
    let (size, tail) = match words.next()? {
        b"VALUE" => (words.nth(2)?, END_LEN),
        b"VA" => (words.next()?, 0),
        _ => return None,
    };
    let size = usize::try_from(parse_u64(size)?).ok()?;
    (end + 1).checked_add(size)?.checked_add(2 + tail)
}

/// `END\r\n`.
const END_LEN: usize = 5;

fn line_at(buf: &[u8], start: usize) -> Result<Option<RLine>, FrameError> {
    let rest = buf.get(start..).unwrap_or_default();
    let window = rest.get(..super::MAX_LINE_LEN).unwrap_or(rest);
    match window.iter().position(|&b| b == b'\n') {
        Some(nl) => {
            let end = start + nl;
            let content_end = if nl > 0 && buf.get(end - 1) == Some(&b'\r') {
                end - 1
            } else {
                end
            };
            Ok(Some(RLine {
                content: start..content_end,
                next: end + 1,
            }))
        }
        None if rest.len() >= super::MAX_LINE_LEN => Err(FrameError {
            msg: "reply line too long",
        }),
        None => Ok(None),
    }
}

/// Whether `line` is `word` alone or `word` followed by a space.
fn starts_word(line: &[u8], word: &[u8]) -> bool {
    match line.strip_prefix(word) {
        Some(rest) => rest.is_empty() || rest.first() == Some(&b' '),
        None => false,
    }
}

/// `ERROR`, `CLIENT_ERROR ...`, `SERVER_ERROR ...`
fn error_status(line: &[u8]) -> Option<Status> {
    if starts_word(line, b"ERROR") {
        Some(Status::Error)
    } else if starts_word(line, b"CLIENT_ERROR") {
        Some(Status::ClientError)
    } else if starts_word(line, b"SERVER_ERROR") {
        Some(Status::ServerError)
    } else {
        None
    }
}

fn complete(len: usize, status: Status, line: Range<usize>) -> Framed {
    Framed::Complete {
        len,
        status,
        line,
        data: 0..0,
    }
}

/// The data block of `len` bytes starting at `start`, with its `\r\n`.
/// Returns the data range and the offset after the block.
fn data_at(
    buf: &[u8],
    start: usize,
    len: u64,
    max_value: usize,
) -> Result<Option<(Range<usize>, usize)>, FrameError> {
    let len = match usize::try_from(len) {
        Ok(n) if n <= max_value => n,
        _ => {
            return Err(FrameError {
                msg: "value larger than max_value",
            })
        }
    };
    let Some(after) = start.checked_add(len).and_then(|e| e.checked_add(2)) else {
        return Err(FrameError {
            msg: "value larger than max_value",
        });
    };
    let end = after - 2;
    let Some(term) = buf.get(end..after) else {
        return Ok(None);
    };
    if term != b"\r\n" {
        return Err(FrameError {
            msg: "data block not followed by CRLF",
        });
    }
    Ok(Some((start..end, after)))
}

fn frame_values(
    buf: &[u8],
    max_value: usize,
    items: &mut Vec<ValueItem>,
) -> Result<Framed, FrameError> {
    let mut pos = 0;
    loop {
        let Some(l) = line_at(buf, pos)? else {
            return Ok(Framed::Incomplete);
        };
        let text = slice(buf, l.content.clone());
        if text == b"END" {
            return Ok(complete(l.next, Status::Values, l.content));
        }
        if let Some(status) = error_status(text) {
            return Ok(complete(l.next, status, l.content));
        }
        if !starts_word(text, b"VALUE") {
            return Err(FrameError {
                msg: "retrieval reply line is neither VALUE, END nor an error",
            });
        }
        let bad = FrameError {
            msg: "malformed VALUE line",
        };
        // VALUE <key> <flags> <bytes> [<cas>]
        let mut toks = Tokens::within(l.content.clone()).iter(buf).skip(1);
        let key = toks.next().ok_or(bad.clone())?;
        let flags = toks.next().and_then(|t| parse_u64(slice(buf, t)));
        let bytes = toks.next().and_then(|t| parse_u64(slice(buf, t)));
        let (Some(flags), Some(bytes)) = (flags, bytes) else {
            return Err(bad);
        };
        let cas = match toks.next() {
            Some(t) => Some(parse_u64(slice(buf, t)).ok_or(bad.clone())?),
            None => None,
        };
        if toks.next().is_some() {
            return Err(bad);
        }
        let flags = u32::try_from(flags).map_err(|_| bad.clone())?;
        let Some((data, next)) = data_at(buf, l.next, bytes, max_value)? else {
            return Ok(Framed::Incomplete);
        };
        items.push(ValueItem {
            key,
            item: pos..next,
            data,
            flags,
            cas,
        });
        pos = next;
    }
}

fn frame_line(buf: &[u8]) -> Result<Framed, FrameError> {
    let Some(l) = line_at(buf, 0)? else {
        return Ok(Framed::Incomplete);
    };
    let text = slice(buf, l.content.clone());
    let status = match text {
        b"STORED" => Status::Stored,
        b"NOT_STORED" => Status::NotStored,
        b"EXISTS" => Status::Exists,
        b"NOT_FOUND" => Status::NotFound,
        b"DELETED" => Status::Deleted,
        b"TOUCHED" => Status::Touched,
        b"OK" => Status::Ok,
        _ if starts_word(text, b"VERSION") => Status::Version,
        _ => match error_status(text) {
            Some(status) => status,
            None => match parse_u64(text) {
                Some(n) => Status::Number(n),
                None => {
                    return Err(FrameError {
                        msg: "unexpected reply line",
                    })
                }
            },
        },
    };
    Ok(complete(l.next, status, l.content))
}

fn frame_stats(buf: &[u8]) -> Result<Framed, FrameError> {
    let mut pos = 0;
    loop {
        let Some(l) = line_at(buf, pos)? else {
            return Ok(Framed::Incomplete);
        };
        let text = slice(buf, l.content.clone());
        if text == b"END" {
            return Ok(complete(l.next, Status::Stats, l.content));
        }
        if let Some(status) = error_status(text) {
            return Ok(complete(l.next, status, l.content));
        }
        if pos == 0 && (text == b"OK" || text == b"RESET") {
            return Ok(complete(l.next, Status::Ok, l.content));
        }
        if !starts_word(text, b"STAT") {
            return Err(FrameError {
                msg: "stats reply line is neither STAT, END nor an error",
            });
        }
        pos = l.next;
    }
}

fn frame_lines(buf: &[u8]) -> Result<Framed, FrameError> {
    let mut pos = 0;
    loop {
        let Some(l) = line_at(buf, pos)? else {
            return Ok(Framed::Incomplete);
        };
        let text = slice(buf, l.content.clone());
        if text == b"END" {
            return Ok(complete(l.next, Status::Stats, l.content));
        }
        if pos == 0 {
            if let Some(status) = error_status(text) {
                return Ok(complete(l.next, status, l.content));
            }
        }
        pos = l.next;
    }
}

fn frame_meta(buf: &[u8], max_value: usize) -> Result<Framed, FrameError> {
    let Some(l) = line_at(buf, 0)? else {
        return Ok(Framed::Incomplete);
    };
    let text = slice(buf, l.content.clone());
    if let Some(status) = error_status(text) {
        return Ok(complete(l.next, status, l.content));
    }
    let mut toks = tokens(text);
    let status = match toks.next().unwrap_or_default() {
        b"VA" => {
            let len = toks.next().and_then(parse_u64).ok_or(FrameError {
                msg: "malformed VA line",
            })?;
            let Some((data, next)) = data_at(buf, l.next, len, max_value)? else {
                return Ok(Framed::Incomplete);
            };
            return Ok(Framed::Complete {
                len: next,
                status: Status::MetaValue,
                line: l.content,
                data,
            });
        }
        b"HD" => Status::MetaHd,
        b"EN" => Status::MetaEn,
        b"NF" => Status::MetaNf,
        b"NS" => Status::MetaNs,
        b"EX" => Status::MetaEx,
        b"MN" => Status::MetaMn,
        b"ME" => Status::MetaMe,
        _ => {
            return Err(FrameError {
                msg: "unexpected meta reply line",
            })
        }
    };
    Ok(complete(l.next, status, l.content))
}

#[cfg(test)]
mod tests {

    #[test]
    fn size_hints_come_from_the_first_line() {
        assert_eq!(
            reply_size_hint(b"VALUE k 0 500\r\nxx"),
            Some(15 + 500 + 2 + 5)
        );
        assert_eq!(reply_size_hint(b"VALUE k 0 5 99\r\n"), Some(16 + 5 + 2 + 5));
        assert_eq!(reply_size_hint(b"VA 10 f0\r\n"), Some(10 + 10 + 2));
        assert_eq!(reply_size_hint(b"VALUE k 0 500"), None, "line not complete");
        assert_eq!(reply_size_hint(b"END\r\n"), None);
        assert_eq!(reply_size_hint(b"HD\r\n"), None);
        assert_eq!(reply_size_hint(b"VALUE k 0 x\r\n"), None);
        assert_eq!(
            reply_size_hint(b"VALUE k 0 99999999999999999999999\r\n"),
            None
        );
    }

    use super::*;
    use crate::protocol::MAX_LINE_LEN;
    use proptest::prelude::*;

    const MAX: usize = 64;

    fn frame(expect: Expect, buf: &[u8]) -> (Result<Framed, FrameError>, Vec<ValueItem>) {
        let mut items = Vec::new();
        let r = frame_response(expect, buf, MAX, &mut items);
        (r, items)
    }

    fn text(buf: &[u8], r: &Range<usize>) -> String {
        String::from_utf8_lossy(&buf[r.clone()]).into_owned()
    }

    /// Replies as memcached 1.6.18 sends them: (expect, bytes, status, line, data, items).
    /// Items render as `key/flags/data[/cas]`.
    #[allow(clippy::type_complexity)]
    const VALID: &[(Expect, &[u8], Status, &str, &str, &[&str])] = &[
        (Expect::Values, b"END\r\n", Status::Values, "END", "", &[]),
        (
            Expect::Values,
            b"VALUE k 7 2\r\nhi\r\nEND\r\n",
            Status::Values,
            "END",
            "",
            &["k/7/hi"],
        ),
        (
            Expect::Values,
            b"VALUE k 7 2 37\r\nhi\r\nEND\r\n",
            Status::Values,
            "END",
            "",
            &["k/7/hi/37"],
        ),
        (
            Expect::Values,
            b"VALUE a 0 0\r\n\r\nVALUE b 4294967295 4\r\nx\r\ny\r\nEND\r\n",
            Status::Values,
            "END",
            "",
            &["a/0/", "b/4294967295/x\r\ny"],
        ),
        (
            Expect::Values,
            b"VALUE k 0 1\nx\r\nEND\n",
            Status::Values,
            "END",
            "",
            &["k/0/x"],
        ),
        (
            Expect::Values,
            b"ERROR\r\n",
            Status::Error,
            "ERROR",
            "",
            &[],
        ),
        (
            Expect::Values,
            b"CLIENT_ERROR bad command line format\r\n",
            Status::ClientError,
            "CLIENT_ERROR bad command line format",
            "",
            &[],
        ),
        (
            Expect::Values,
            b"VALUE k 0 1\r\nx\r\nSERVER_ERROR out of memory\r\n",
            Status::ServerError,
            "SERVER_ERROR out of memory",
            "",
            &["k/0/x"],
        ),
        (
            Expect::Line,
            b"STORED\r\n",
            Status::Stored,
            "STORED",
            "",
            &[],
        ),
        (
            Expect::Line,
            b"NOT_STORED\r\n",
            Status::NotStored,
            "NOT_STORED",
            "",
            &[],
        ),
        (
            Expect::Line,
            b"EXISTS\r\n",
            Status::Exists,
            "EXISTS",
            "",
            &[],
        ),
        (
            Expect::Line,
            b"NOT_FOUND\r\n",
            Status::NotFound,
            "NOT_FOUND",
            "",
            &[],
        ),
        (
            Expect::Line,
            b"DELETED\r\n",
            Status::Deleted,
            "DELETED",
            "",
            &[],
        ),
        (
            Expect::Line,
            b"TOUCHED\r\n",
            Status::Touched,
            "TOUCHED",
            "",
            &[],
        ),
        (Expect::Line, b"OK\r\n", Status::Ok, "OK", "", &[]),
        (Expect::Line, b"8\r\n", Status::Number(8), "8", "", &[]),
        (
            Expect::Line,
            b"18446744073709551615\r\n",
            Status::Number(u64::MAX),
            "18446744073709551615",
            "",
            &[],
        ),
        (
            Expect::Line,
            b"VERSION 1.6.18\r\n",
            Status::Version,
            "VERSION 1.6.18",
            "",
            &[],
        ),
        (Expect::Line, b"ERROR\r\n", Status::Error, "ERROR", "", &[]),
        (
            Expect::Line,
            b"CLIENT_ERROR cannot increment or decrement non-numeric value\r\n",
            Status::ClientError,
            "CLIENT_ERROR cannot increment or decrement non-numeric value",
            "",
            &[],
        ),
        (
            Expect::Line,
            b"SERVER_ERROR object too large for cache\r\n",
            Status::ServerError,
            "SERVER_ERROR object too large for cache",
            "",
            &[],
        ),
        (Expect::Line, b"STORED\n", Status::Stored, "STORED", "", &[]),
        (Expect::Stats, b"END\r\n", Status::Stats, "END", "", &[]),
        (
            Expect::Stats,
            b"STAT pid 1\r\nSTAT version 1.6.18\r\nEND\r\n",
            Status::Stats,
            "END",
            "",
            &[],
        ),
        (Expect::Stats, b"RESET\r\n", Status::Ok, "RESET", "", &[]),
        (Expect::Stats, b"OK\r\n", Status::Ok, "OK", "", &[]),
        (Expect::Stats, b"ERROR\r\n", Status::Error, "ERROR", "", &[]),
        (
            Expect::Lines,
            b"ITEM a [1 b; 0 s]\r\nITEM b [2 b; 0 s]\r\nEND\r\n",
            Status::Stats,
            "END",
            "",
            &[],
        ),
        (
            Expect::Lines,
            b"key=a exp=-1 la=1 cas=2 fetch=no cls=1 size=61\nEND\r\n",
            Status::Stats,
            "END",
            "",
            &[],
        ),
        (
            Expect::Lines,
            b"CLIENT_ERROR Illegal slab id\r\n",
            Status::ClientError,
            "CLIENT_ERROR Illegal slab id",
            "",
            &[],
        ),
        (
            Expect::Meta,
            b"VA 2 f7 c37\r\nhi\r\n",
            Status::MetaValue,
            "VA 2 f7 c37",
            "hi",
            &[],
        ),
        (
            Expect::Meta,
            b"VA 0\r\n\r\n",
            Status::MetaValue,
            "VA 0",
            "",
            &[],
        ),
        (Expect::Meta, b"HD\r\n", Status::MetaHd, "HD", "", &[]),
        (
            Expect::Meta,
            b"HD c5 O1\r\n",
            Status::MetaHd,
            "HD c5 O1",
            "",
            &[],
        ),
        (Expect::Meta, b"EN\r\n", Status::MetaEn, "EN", "", &[]),
        (Expect::Meta, b"NF\r\n", Status::MetaNf, "NF", "", &[]),
        (Expect::Meta, b"NS\r\n", Status::MetaNs, "NS", "", &[]),
        (Expect::Meta, b"EX\r\n", Status::MetaEx, "EX", "", &[]),
        (Expect::Meta, b"MN\r\n", Status::MetaMn, "MN", "", &[]),
        (
            Expect::Meta,
            b"ME k exp=-1 la=0 cas=37 fetch=yes cls=1 size=66\r\n",
            Status::MetaMe,
            "ME k exp=-1 la=0 cas=37 fetch=yes cls=1 size=66",
            "",
            &[],
        ),
        (
            Expect::Meta,
            b"CLIENT_ERROR invalid flag\r\n",
            Status::ClientError,
            "CLIENT_ERROR invalid flag",
            "",
            &[],
        ),
    ];

    fn render(buf: &[u8], it: &ValueItem) -> String {
        let mut s = format!(
            "{}/{}/{}",
            text(buf, &it.key),
            it.flags,
            text(buf, &it.data)
        );
        if let Some(cas) = it.cas {
            s += &format!("/{cas}");
        }
        s
    }

    #[test]
    fn valid_replies() {
        for &(expect, input, status, line, data, want_items) in VALID {
            let ctx = String::from_utf8_lossy(input);
            let (r, items) = frame(expect, input);
            let Ok(Framed::Complete {
                len,
                status: got,
                line: l,
                data: d,
            }) = r
            else {
                panic!("{ctx:?}: {r:?}");
            };
            assert_eq!(len, input.len(), "{ctx:?}");
            assert_eq!(got, status, "{ctx:?}");
            assert_eq!(text(input, &l), line, "{ctx:?}");
            assert_eq!(text(input, &d), data, "{ctx:?}");
            let got_items: Vec<String> = items.iter().map(|it| render(input, it)).collect();
            assert_eq!(got_items, want_items, "{ctx:?}");
            // Items tile the reply from its start.
            let mut pos = 0;
            for it in &items {
                assert_eq!(it.item.start, pos);
                assert_eq!(&input[it.item.start..it.item.start + 6], b"VALUE ");
                assert_eq!(it.data.end + 2, it.item.end);
                pos = it.item.end;
            }
        }
    }

    /// Every strict prefix is Incomplete (with `items` left empty), and a reply
    /// is framed to exactly its length when the next reply is already buffered.
    #[test]
    fn split_points() {
        for &(expect, input, ..) in VALID {
            for cut in 0..input.len() {
                let (r, items) = frame(expect, &input[..cut]);
                assert_eq!(
                    r,
                    Ok(Framed::Incomplete),
                    "{:?} cut at {cut}",
                    String::from_utf8_lossy(input)
                );
                assert!(items.is_empty());
            }
            let mut two = input.to_vec();
            two.extend_from_slice(b"END\r\n");
            match frame(expect, &two).0 {
                Ok(Framed::Complete { len, .. }) => assert_eq!(len, input.len()),
                r => panic!("{r:?}"),
            }
        }
    }

    #[test]
    fn garbage_is_a_frame_error() {
        let table: &[(Expect, &[u8])] = &[
            (Expect::Values, b"STORED\r\n"),
            (Expect::Values, b"\r\n"),
            (Expect::Values, b"VALUES k 0 1\r\nx\r\nEND\r\n"),
            (Expect::Values, b"VALUE k 0\r\n"),
            (Expect::Values, b"VALUE k 0 1 2 3\r\nx\r\nEND\r\n"),
            (Expect::Values, b"VALUE k x 1\r\nx\r\nEND\r\n"),
            (Expect::Values, b"VALUE k 4294967296 1\r\nx\r\nEND\r\n"),
            (Expect::Values, b"VALUE k 0 -1\r\n"),
            (Expect::Values, b"VALUE k 0 1 c\r\nx\r\nEND\r\n"),
            (Expect::Values, b"VALUE k 0 1\r\nxy\r\nEND\r\n"),
            (Expect::Values, b"VALUE k 0 1\r\nx\r\nSTORED\r\n"),
            (Expect::Values, b"end\r\n"),
            (Expect::Values, b"ENDX\r\n"),
            (Expect::Line, b"\r\n"),
            (Expect::Line, b"END\r\n"),
            (Expect::Line, b"stored\r\n"),
            (Expect::Line, b"STORED \r\n"),
            (Expect::Line, b"-1\r\n"),
            (Expect::Line, b"18446744073709551616\r\n"),
            (Expect::Line, b"VALUE k 0 1\r\nx\r\nEND\r\n"),
            (Expect::Line, b"ERRORS\r\n"),
            (Expect::Stats, b"STORED\r\n"),
            (Expect::Stats, b"STAT a 1\r\nOK\r\n"),
            (Expect::Meta, b"END\r\n"),
            (Expect::Meta, b"VA\r\n"),
            (Expect::Meta, b"VA x\r\n"),
            (Expect::Meta, b"VA 1\r\nxy\r\n"),
            (Expect::Meta, b"HDX\r\n"),
            (Expect::Meta, b"\r\n"),
        ];
        for &(expect, input) in table {
            let (r, items) = frame(expect, input);
            assert!(
                r.is_err(),
                "{expect:?} {:?}: {r:?}",
                String::from_utf8_lossy(input)
            );
            assert!(items.is_empty());
        }
    }

    #[test]
    fn value_size_limit() {
        let ok = [b"VALUE k 0 64\r\n".as_slice(), &[b'x'; MAX], b"\r\nEND\r\n"].concat();
        assert!(matches!(
            frame(Expect::Values, &ok).0,
            Ok(Framed::Complete { .. })
        ));
        // One byte over is refused from the line alone, before any data arrives.
        assert!(frame(Expect::Values, b"VALUE k 0 65\r\n").0.is_err());
        let ok = [b"VA 64 f1\r\n".as_slice(), &[b'x'; MAX], b"\r\n"].concat();
        assert!(matches!(
            frame(Expect::Meta, &ok).0,
            Ok(Framed::Complete { .. })
        ));
        assert!(frame(Expect::Meta, b"VA 65 f1\r\n").0.is_err());
        assert!(frame(Expect::Meta, b"VA 18446744073709551615\r\n")
            .0
            .is_err());
        let mut items = Vec::new();
        let huge = frame_response(
            Expect::Meta,
            b"VA 18446744073709551613\r\n",
            usize::MAX,
            &mut items,
        );
        assert!(huge.is_err() || huge == Ok(Framed::Incomplete));
    }

    #[test]
    fn line_length_limit() {
        let mut ok = b"SERVER_ERROR ".to_vec();
        ok.resize(MAX_LINE_LEN - 2, b'e');
        ok.extend_from_slice(b"\r\n");
        assert!(
            matches!(frame(Expect::Line, &ok).0, Ok(Framed::Complete { len, .. }) if len == MAX_LINE_LEN)
        );
        let mut long = ok.clone();
        long.insert(13, b'e');
        assert!(frame(Expect::Line, &long).0.is_err());
        assert_eq!(
            frame(Expect::Line, &long[..MAX_LINE_LEN - 1]).0,
            Ok(Framed::Incomplete)
        );
        assert!(
            frame(Expect::Stats, &[b"STAT a 1\r\n".as_slice(), &long].concat())
                .0
                .is_err()
        );
    }

    #[test]
    fn items_are_cleared_first() {
        let mut items = vec![ValueItem {
            key: 0..1,
            item: 0..1,
            data: 0..1,
            flags: 0,
            cas: None,
        }];
        let r = frame_response(Expect::Line, b"STORED\r\n", MAX, &mut items);
        assert!(matches!(r, Ok(Framed::Complete { .. })));
        assert!(items.is_empty());
    }

    fn expect_strategy() -> impl Strategy<Value = Expect> {
        prop::sample::select(vec![
            Expect::Values,
            Expect::Line,
            Expect::Stats,
            Expect::Meta,
        ])
    }

    fn check_invariants(buf: &[u8], r: &Result<Framed, FrameError>, items: &[ValueItem]) {
        if let Ok(Framed::Complete {
            len, line, data, ..
        }) = r
        {
            assert!(*len <= buf.len());
            for rg in [line, data] {
                assert!(rg.start <= rg.end && rg.end <= *len);
            }
            for it in items {
                for rg in [&it.key, &it.item, &it.data] {
                    assert!(rg.start <= rg.end && rg.end <= *len);
                }
            }
        } else {
            assert!(items.is_empty());
        }
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(
            expect in expect_strategy(),
            buf in prop::collection::vec(any::<u8>(), 0..400),
        ) {
            let mut items = Vec::new();
            let r = frame_response(expect, &buf, MAX, &mut items);
            check_invariants(&buf, &r, &items);
        }

        #[test]
        fn reply_like_bytes_never_panic(
            expect in expect_strategy(),
            words in prop::collection::vec(
                prop::sample::select(vec![
                    &b"VALUE"[..], b"END", b"STAT", b"VA", b"HD", b"ERROR", b"SERVER_ERROR",
                    b"k", b"0", b"1", b"2", b"99999999999999999999", b" ", b"\r\n", b"\n",
                    b"\r", b"x",
                ]),
                0..30,
            ),
        ) {
            let buf = words.concat();
            let mut items = Vec::new();
            let r = frame_response(expect, &buf, MAX, &mut items);
            check_invariants(&buf, &r, &items);
        }

        #[test]
        fn value_round_trip(
            blocks in prop::collection::vec(
                (
                    prop::collection::vec(0x21u8..0x7f, 1..=250),
                    any::<u32>(),
                    prop::collection::vec(any::<u8>(), 0..=MAX),
                    prop::option::of(any::<u64>()),
                ),
                0..8,
            ),
        ) {
            let mut out = bytes::BytesMut::new();
            for (key, flags, data, cas) in &blocks {
                crate::protocol::compose::compose_value_line(&mut out, key, *flags, data.len(), *cas);
                out.extend_from_slice(data);
                out.extend_from_slice(b"\r\n");
            }
            out.extend_from_slice(crate::protocol::compose::END);
            let mut items = Vec::new();
            let r = frame_response(Expect::Values, &out, MAX, &mut items);
            let framed_all = matches!(
                r,
                Ok(Framed::Complete { len, status: Status::Values, .. }) if len == out.len()
            );
            prop_assert!(framed_all, "{:?}", r);
            prop_assert_eq!(items.len(), blocks.len());
            for (it, (key, flags, data, cas)) in items.iter().zip(&blocks) {
                prop_assert_eq!(&out[it.key.clone()], &key[..]);
                prop_assert_eq!(&out[it.data.clone()], &data[..]);
                prop_assert_eq!(it.flags, *flags);
                prop_assert_eq!(it.cas, *cas);
            }
        }
    }
}
