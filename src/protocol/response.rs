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

fn slice(buf: &[u8], r: Range<usize>) -> &[u8] {
    buf.get(r).unwrap_or_default()
}

/// Space-separated tokens of a line.
fn tokens(line: &[u8]) -> impl Iterator<Item = &[u8]> {
    line.split(|&b| b == b' ').filter(|t| !t.is_empty())
}

/// Space-separated tokens of `buf[content]`, as ranges into `buf`.
fn token_ranges(buf: &[u8], content: Range<usize>) -> impl Iterator<Item = Range<usize>> + '_ {
    let end = content.end;
    let mut pos = content.start;
    std::iter::from_fn(move || {
        while pos < end && buf.get(pos) == Some(&b' ') {
            pos += 1;
        }
        if pos >= end {
            return None;
        }
        let start = pos;
        while pos < end && buf.get(pos).is_some_and(|&b| b != b' ') {
            pos += 1;
        }
        Some(start..pos)
    })
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

fn parse_u64(tok: &[u8]) -> Option<u64> {
    if tok.is_empty() {
        return None;
    }
    tok.iter().try_fold(0u64, |acc, &b| {
        if b.is_ascii_digit() {
            acc.checked_mul(10)?.checked_add(u64::from(b - b'0'))
        } else {
            None
        }
    })
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
        let mut toks = token_ranges(buf, l.content.clone()).skip(1);
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
