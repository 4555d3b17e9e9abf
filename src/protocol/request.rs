//! Client request parser: bytes in, one [`Request`] (ranges into the buffer) out.
//!
//! # Format
//! ```text
//! get <key>*\r\n                     gets <key>*\r\n
//! gat <exptime> <key>*\r\n           gats <exptime> <key>*\r\n
//! set <key> <flags> <exptime> <bytes> [noreply]\r\n<data>\r\n   (add replace append prepend)
//! cas <key> <flags> <exptime> <bytes> <cas unique> [noreply]\r\n<data>\r\n
//! delete <key> [<time>] [noreply]\r\n  incr <key> <value> [noreply]\r\n   (decr)
//! touch <key> <exptime> [noreply]\r\n  flush_all [delay] [noreply]\r\n
//! version\r\n  verbosity <level> [noreply]\r\n  stats [<args>]\r\n  quit\r\n
//! mg <key> <flags>*\r\n  ms <key> <datalen> <flags>*\r\n<data>\r\n  md <key> <flags>*\r\n
//! ma <key> <flags>*\r\n  mn\r\n  me <key>\r\n
//! ```
//! A bare `\n` terminator is accepted as memcached does.
//!
//! # Errors, as memcached 1.6.18 answers them (checked against a live server)
//! - Unknown or wrong-case word, empty line, wrong number of arguments:
//!   `ERROR`, only the line is skipped (a storage command's data block is then
//!   read as the next command, exactly as memcached does).
//! - Bad key or number: `CLIENT_ERROR bad command line format` (touch, gat,
//!   flush_all: `invalid exptime argument`; incr/decr: `invalid numeric delta
//!   argument`), only the line is skipped.
//! - Data block not followed by `\r\n`: `CLIENT_ERROR bad data chunk`, line +
//!   length + 2 skipped. Too large: `SERVER_ERROR object too large for cache`.
//! - memcached stays silent on these errors when the command ends in
//!   `noreply` (see [`noreply_requested`]), but not on `ERROR`.

use super::lex::{parse_i64, parse_u64, slice, Tokens};
use std::ops::Range;

/// Every command the proxy understands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Verb {
    /// `get <key>*`
    Get,
    /// `gets <key>*`
    Gets,
    /// `gat <exptime> <key>*`
    Gat,
    /// `gats <exptime> <key>*`
    Gats,
    /// `set`
    Set,
    /// `add`
    Add,
    /// `replace`
    Replace,
    /// `append`
    Append,
    /// `prepend`
    Prepend,
    /// `cas`
    Cas,
    /// `delete`
    Delete,
    /// `incr`
    Incr,
    /// `decr`
    Decr,
    /// `touch`
    Touch,
    /// `flush_all`
    FlushAll,
    /// `version`
    Version,
    /// `verbosity`
    Verbosity,
    /// `stats`
    Stats,
    /// `quit`
    Quit,
    /// `mg` meta get
    MetaGet,
    /// `ms` meta set
    MetaSet,
    /// `md` meta delete
    MetaDelete,
    /// `ma` meta arithmetic
    MetaArithmetic,
    /// `mn` meta no-op
    MetaNoop,
    /// `me` meta debug
    MetaDebug,
    /// A server administration command: `cache_memlimit`, `slabs`,
    /// `lru_crawler` (its word and arguments are in `meta_flags`); see
    /// [`crate::proxy::admin_plan`].
    Admin,
}

impl Verb {
    /// Whether a request may change what a later read of the same key
    /// sees (every verb but the retrievals and the local or admin ones; a
    /// `gat` only moves a TTL).
    pub fn writes(self) -> bool {
        !matches!(
            self,
            Verb::Get
                | Verb::Gets
                | Verb::Gat
                | Verb::Gats
                | Verb::MetaGet
                | Verb::MetaDebug
                | Verb::MetaNoop
                | Verb::Version
                | Verb::Verbosity
                | Verb::Quit
                | Verb::Stats
                | Verb::Admin
        )
    }

    /// The command word on the wire, e.g. `b"gets"`.
    pub fn as_bytes(self) -> &'static [u8] {
        match self {
            Verb::Get => b"get",
            Verb::Gets => b"gets",
            Verb::Gat => b"gat",
            Verb::Gats => b"gats",
            Verb::Set => b"set",
            Verb::Add => b"add",
            Verb::Replace => b"replace",
            Verb::Append => b"append",
            Verb::Prepend => b"prepend",
            Verb::Cas => b"cas",
            Verb::Delete => b"delete",
            Verb::Incr => b"incr",
            Verb::Decr => b"decr",
            Verb::Touch => b"touch",
            Verb::FlushAll => b"flush_all",
            Verb::Version => b"version",
            Verb::Verbosity => b"verbosity",
            Verb::Stats => b"stats",
            Verb::Quit => b"quit",
            Verb::MetaGet => b"mg",
            Verb::MetaSet => b"ms",
            Verb::MetaDelete => b"md",
            Verb::MetaArithmetic => b"ma",
            Verb::MetaNoop => b"mn",
            Verb::MetaDebug => b"me",
            Verb::Admin => b"admin",
        }
    }

    /// get, gets, gat, gats: any number of keys, replies are VALUE blocks + END.
    pub fn is_retrieval(self) -> bool {
        matches!(self, Verb::Get | Verb::Gets | Verb::Gat | Verb::Gats)
    }

    /// set, add, replace, append, prepend, cas: a data block follows the line.
    pub fn is_storage(self) -> bool {
        matches!(
            self,
            Verb::Set | Verb::Add | Verb::Replace | Verb::Append | Verb::Prepend | Verb::Cas
        )
    }

    /// Verbs that change server state and therefore go to the backup too.
    pub fn is_write(self) -> bool {
        self.is_storage()
            || matches!(
                self,
                Verb::Delete
                    | Verb::Incr
                    | Verb::Decr
                    | Verb::Touch
                    | Verb::MetaSet
                    | Verb::MetaDelete
                    | Verb::MetaArithmetic
            )
    }

    /// Verbs the proxy answers itself, without a server.
    pub fn is_local(self) -> bool {
        matches!(
            self,
            Verb::Version | Verb::Verbosity | Verb::Stats | Verb::Quit | Verb::MetaNoop
        )
    }

    /// What reply shape a server sends for this verb.
    pub fn expect(self) -> super::Expect {
        use super::Expect;
        match self {
            Verb::Get | Verb::Gets | Verb::Gat | Verb::Gats => Expect::Values,
            Verb::Stats => Expect::Stats,
            Verb::MetaGet | Verb::MetaArithmetic => Expect::Meta,
            Verb::MetaSet | Verb::MetaDelete | Verb::MetaDebug | Verb::MetaNoop => Expect::Meta,
            // Only `lru_crawler metadump` lists lines; see proxy::admin_plan.
            Verb::Admin => Expect::Line,
            _ => Expect::Line,
        }
    }
}

/// One complete, well-formed client request. All ranges index the buffer that
/// was passed to [`parse_request`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    /// The command.
    pub verb: Verb,
    /// Bytes the whole request occupies: the line plus any data block with its `\r\n`.
    pub consumed: usize,
    /// Length of the command line, terminator included.
    pub line_len: usize,
    /// The key of a single-key command (empty range for keyless commands and
    /// for retrieval commands, whose keys go to the `keys` out-parameter).
    pub key: Range<usize>,
    /// The data block of storage commands and `ms`, without its trailing `\r\n`.
    pub data: Range<usize>,
    /// Client flags of storage commands (wider values are truncated to 32
    /// bits, as memcached 1.6 does).
    pub flags: u32,
    /// Exptime of storage, touch, gat and gats; `delay` of flush_all; 0 otherwise.
    /// Passed through unchanged (relative up to 30 days, a unix time above).
    pub exptime: i64,
    /// The cas unique of `cas`.
    pub cas_unique: u64,
    /// The delta of incr/decr; the level of verbosity.
    pub delta: u64,
    /// `noreply` was given (classic commands).
    pub noreply: bool,
    /// Meta commands: the `q` flag was given (quiet mode).
    pub quiet: bool,
    /// Meta commands: the flags, typed (parsed once, here).
    pub meta: super::MetaFlags,
    /// Meta commands: range of the flags part of the line (everything after
    /// the key, or after the datalen for `ms`), without the terminator.
    /// For `stats`, its arguments. An empty range at the line's end otherwise.
    pub meta_flags: Range<usize>,
    /// Whether the line was terminated by `\r\n` (true) or a bare `\n`.
    pub crlf: bool,
    /// A retrieval line longer than [`super::MAX_LINE_LEN`]: these keys are
    /// one batch of it and the line goes on (parse the rest with
    /// [`parse_retrieval_more`]). Its answer must leave out the closing `END`,
    /// which only the last batch sends.
    pub more: bool,
}

/// Outcome of parsing the front of a buffer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Parsed {
    /// A complete request; its keys (retrieval commands) were pushed to `keys`.
    Complete(Request),
    /// More bytes are needed. Not an error.
    Incomplete,
    /// The front of the buffer is a bad request; see [`ParseError`] for how
    /// many bytes to skip and what to answer.
    Error(ParseError),
}

/// A bad request, with the exact answer memcached gives and how to resync.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ParseError {
    /// Unknown command word or wrong arity: answer `ERROR\r\n`, skip
    /// `consumed` bytes (the line; for a storage line whose length is
    /// readable, its data block too, which may reach beyond the buffer).
    UnknownCommand {
        /// Bytes to skip.
        consumed: usize,
    },
    /// Malformed line or key: answer `CLIENT_ERROR <msg>\r\n`, skip `consumed`
    /// bytes (the line, plus the data block when its length was readable, e.g.
    /// "bad data chunk" or a storage line with a bad key). `consumed` may
    /// reach beyond the buffer: the rest is swallowed as it arrives.
    Client {
        /// Bytes to skip.
        consumed: usize,
        /// The message after `CLIENT_ERROR `.
        msg: &'static str,
    },
    /// A storage command whose value exceeds `max_item_size`: swallow `skip`
    /// bytes (line + data + 2), which may be more than is buffered yet, then
    /// answer `SERVER_ERROR object too large for cache\r\n` (memcached answers
    /// once the data is swallowed, not before). A `set` or `ms` that is too
    /// large also removes the old item: see [`too_large_removes`].
    TooLarge {
        /// Bytes to swallow, possibly beyond the current buffer.
        skip: usize,
    },
    /// No line terminator within [`super::MAX_LINE_LEN`]: answer
    /// `CLIENT_ERROR line too long\r\n` and close the connection.
    LineTooLong,
    /// Not a memcached text client: answer nothing and close the connection
    /// at once. An HTTP request line (memcached closes silently on a line
    /// whose last word starts with `HTTP/`), or the binary protocol's request
    /// magic 0x80 as the first byte of a request (until memring has a binary
    /// front end, a client must not be left waiting for an answer).
    Close,
}

/// `CLIENT_ERROR` message for malformed lines, bad numbers and bad keys.
pub const MSG_BAD_FORMAT: &str = "bad command line format";
/// `CLIENT_ERROR` message for a data block not followed by `\r\n`.
pub const MSG_BAD_DATA_CHUNK: &str = "bad data chunk";
/// `CLIENT_ERROR` message for a bad exptime of touch, gat, gats and flush_all.
pub const MSG_BAD_EXPTIME: &str = "invalid exptime argument";
/// `CLIENT_ERROR` message for a bad incr/decr delta.
pub const MSG_BAD_DELTA: &str = "invalid numeric delta argument";
/// `CLIENT_ERROR` message for `delete <key> <nonzero>` (memcached's exact text, two spaces included).
pub const MSG_DELETE_USAGE: &str = "bad command line format.  Usage: delete <key> [noreply]";
/// `CLIENT_ERROR` message of `mg` with too many flags (memcached's text).
pub const MSG_MG_FLAGS_TOO_LONG: &str = "options flags are too long";
/// `CLIENT_ERROR` message of `ms`, `md`, `ma` with too many flags (memcached's text).
pub const MSG_FLAGS_TOO_LONG: &str = "options flags too long";

/// memcached 1.6 refuses a meta command line of this many words or more
/// (command, key, `ms`'s length and the flags), before reading a data block.
const META_MAX_WORDS: usize = 20;

/// Largest data length memcached accepts before even checking the item size
/// (`INT_MAX - 2`); longer lengths are a bad command line, not "too large".
const MAX_DATA_LEN: i64 = (i32::MAX as i64) - 2;

/// A data length as memcached 1.6 reads it: `strtol` into a C `int`, so a
/// number past 32 bits wraps (`4294967298` is 2, `99999999999` is
/// 1215752191, too large, swallowed in silence), and the result must be
/// `0..=INT_MAX-2`.
fn data_len(tok: &[u8]) -> Option<usize> {
    let wrapped = parse_i64(tok)? as i32;
    let n = i64::from(wrapped);
    (0..=MAX_DATA_LEN).contains(&n).then_some(n as usize)
}

/// Most arguments any fixed-arity command takes (`cas` with `noreply`: 6).
const MAX_ARGS: usize = 7;

/// Parse one request from the front of `buf`.
///
/// Retrieval keys are appended to `keys` (cleared first) as ranges into `buf`.
/// `max_item_size` bounds data blocks. Never panics, never allocates beyond
/// `keys`' capacity growth, never copies.
///
/// Keys are what memcached 1.6 takes: 1..=250 bytes of anything but a
/// space (tabs, `\r`, control bytes and bytes >= 0x7f included); a NUL ends
/// the line's content, as in memcached's C-string parsing. A retrieval line
/// has no key-count limit; one longer than [`super::MAX_LINE_LEN`] comes
/// back in batches (see [`Request::more`]).
///
/// Deviations from memcached 1.6, on purpose: a storage line refused for its
/// key, flags, exptime or arity skips its data block too when the length is
/// readable (memcached runs the block as a command: `set <251 bytes> 0 0 11`
/// followed by `flush_all` flushes the cache); `-0` is not accepted as an
/// unsigned number.
pub fn parse_request(buf: &[u8], max_item_size: usize, keys: &mut Vec<Range<usize>>) -> Parsed {
    keys.clear();
    if buf.first() == Some(&BINARY_REQUEST_MAGIC) {
        return Parsed::Error(ParseError::Close);
    }
    let line = match find_line(buf) {
        LineScan::Found(line) => line,
        LineScan::Incomplete => return Parsed::Incomplete,
        LineScan::TooLong => return long_retrieval(buf, keys),
    };
    let mut toks = Tokens::new(line.content_end);
    let verb = match toks
        .next(buf)
        .and_then(|cmd| verb_from_word(slice(buf, cmd)))
    {
        Some(verb) => verb,
        None => {
            // `GET / HTTP/1.0`: memcached drops the connection without a word.
            let last = Tokens::new(line.content_end).last(buf);
            if last.is_some_and(|t| slice(buf, t).starts_with(b"HTTP/")) {
                return Parsed::Error(ParseError::Close);
            }
            return unknown(&line);
        }
    };
    let req = Request {
        verb,
        consumed: line.len,
        line_len: line.len,
        key: 0..0,
        data: 0..0,
        flags: 0,
        exptime: 0,
        cas_unique: 0,
        delta: 0,
        noreply: false,
        quiet: false,
        meta: super::MetaFlags::default(),
        meta_flags: line.content_end..line.content_end,
        crlf: line.crlf,
        more: false,
    };
    match verb {
        Verb::Get | Verb::Gets | Verb::Gat | Verb::Gats => {
            parse_retrieval(buf, &line, toks, req, keys)
        }
        Verb::Set | Verb::Add | Verb::Replace | Verb::Append | Verb::Prepend | Verb::Cas => {
            parse_storage(buf, &line, toks, req, max_item_size)
        }
        Verb::Delete => parse_delete(buf, &line, toks, req),
        Verb::Incr | Verb::Decr => {
            parse_key_and_number(buf, &line, toks, req, store_delta, MSG_BAD_DELTA)
        }
        Verb::Touch => parse_key_and_number(buf, &line, toks, req, store_exptime, MSG_BAD_EXPTIME),
        Verb::FlushAll => parse_flush_all(buf, &line, toks, req),
        Verb::Verbosity => parse_verbosity(buf, &line, toks, req),
        Verb::Stats => {
            // `stats <args>`: the arguments travel in `meta_flags`.
            let mut req = req;
            req.meta_flags = rest_range(buf, toks, line.content_end);
            Parsed::Complete(req)
        }
        Verb::Admin => {
            // The whole line, command word included, travels in `meta_flags`.
            let mut req = req;
            req.meta_flags = rest_range(buf, Tokens::new(line.content_end), line.content_end);
            Parsed::Complete(req)
        }
        // memcached ignores anything after these words.
        Verb::Version | Verb::Quit | Verb::MetaNoop => Parsed::Complete(req),
        Verb::MetaGet
        | Verb::MetaSet
        | Verb::MetaDelete
        | Verb::MetaArithmetic
        | Verb::MetaDebug => parse_meta(buf, &line, toks, req, max_item_size),
    }
}

/// Whether the first line of `buf` is a classic command that ends in
/// `noreply`. memcached stays silent on such a command even when it fails
/// (bad format, bad data chunk, too large), so the caller asks this when
/// [`parse_request`] returns an error to decide whether to answer at all.
pub fn noreply_requested(buf: &[u8]) -> bool {
    let end = match find_line(buf) {
        LineScan::Found(line) => line.content_end,
        // Enough of the line may be there for a TooLarge decision.
        LineScan::Incomplete | LineScan::TooLong => buf.len().min(super::MAX_LINE_LEN),
    };
    let mut toks = Tokens::new(end);
    let Some(verb) = toks
        .next(buf)
        .and_then(|cmd| verb_from_word(slice(buf, cmd)))
    else {
        return false;
    };
    let takes_noreply = verb.is_storage()
        || matches!(
            verb,
            Verb::Delete | Verb::Incr | Verb::Decr | Verb::Touch | Verb::FlushAll | Verb::Verbosity
        );
    takes_noreply && toks.last(buf).is_some_and(|t| slice(buf, t) == b"noreply")
}

/// The command word -> verb; case-sensitive like memcached.
pub(super) fn verb_from_word(word: &[u8]) -> Option<Verb> {
    Some(match word {
        b"get" => Verb::Get,
        b"gets" => Verb::Gets,
        b"gat" => Verb::Gat,
        b"gats" => Verb::Gats,
        b"set" => Verb::Set,
        b"add" => Verb::Add,
        b"replace" => Verb::Replace,
        b"append" => Verb::Append,
        b"prepend" => Verb::Prepend,
        b"cas" => Verb::Cas,
        b"delete" => Verb::Delete,
        b"incr" => Verb::Incr,
        b"decr" => Verb::Decr,
        b"touch" => Verb::Touch,
        b"flush_all" => Verb::FlushAll,
        b"version" => Verb::Version,
        b"verbosity" => Verb::Verbosity,
        b"stats" => Verb::Stats,
        b"quit" => Verb::Quit,
        b"mg" => Verb::MetaGet,
        b"ms" => Verb::MetaSet,
        b"md" => Verb::MetaDelete,
        b"ma" => Verb::MetaArithmetic,
        b"mn" => Verb::MetaNoop,
        b"me" => Verb::MetaDebug,
        b"cache_memlimit" | b"slabs" | b"lru_crawler" => Verb::Admin,
        _ => return None,
    })
}

/// A located command line.
struct Line {
    /// Length including the terminator.
    len: usize,
    /// End of the line's content (before `\r\n` or `\n`).
    content_end: usize,
    /// Terminated by `\r\n`.
    crlf: bool,
}

/// Result of looking for a line terminator.
enum LineScan {
    Found(Line),
    Incomplete,
    TooLong,
}

/// First byte of a binary protocol request.
pub const BINARY_REQUEST_MAGIC: u8 = 0x80;

/// Find the first line, looking no further than `MAX_LINE_LEN` bytes. A NUL
/// ends the line's content, as it does for memcached, which parses the line
/// as a C string.
fn find_line(buf: &[u8]) -> LineScan {
    let window = buf.get(..super::MAX_LINE_LEN).unwrap_or(buf);
    match window.iter().position(|&b| b == b'\n') {
        Some(nl) => {
            let crlf = nl > 0 && buf.get(nl - 1) == Some(&b'\r');
            let end = if crlf { nl - 1 } else { nl };
            let content_end = window
                .get(..end)
                .and_then(|l| l.iter().position(|&b| b == 0))
                .unwrap_or(end);
            LineScan::Found(Line {
                len: nl + 1,
                content_end,
                crlf,
            })
        }
        None if buf.len() >= super::MAX_LINE_LEN => LineScan::TooLong,
        None => LineScan::Incomplete,
    }
}

/// Up to `MAX_ARGS` arguments of a fixed-arity command.
struct Args {
    r: [(usize, usize); MAX_ARGS],
    /// Number of arguments, saturating at `MAX_ARGS + 1` ("too many").
    n: usize,
}

impl Args {
    fn collect(buf: &[u8], mut toks: Tokens) -> Args {
        let mut args = Args {
            r: [(0, 0); MAX_ARGS],
            n: 0,
        };
        while let Some(t) = toks.next(buf) {
            match args.r.get_mut(args.n) {
                Some(slot) => *slot = (t.start, t.end),
                None => {
                    return Args {
                        n: MAX_ARGS + 1,
                        ..args
                    }
                }
            }
            args.n += 1;
        }
        args
    }

    fn range(&self, i: usize) -> Range<usize> {
        match self.r.get(i) {
            Some(&(s, e)) if i < self.n => s..e,
            _ => 0..0,
        }
    }

    fn get<'b>(&self, buf: &'b [u8], i: usize) -> &'b [u8] {
        slice(buf, self.range(i))
    }

    /// Whether the last argument is exactly `noreply`.
    fn ends_with_noreply(&self, buf: &[u8]) -> bool {
        self.n > 0 && self.get(buf, self.n - 1) == b"noreply"
    }
}

/// The range from the next token to the last token's end (empty at `end` if none).
fn rest_range(buf: &[u8], mut toks: Tokens, end: usize) -> Range<usize> {
    let Some(first) = toks.next(buf) else {
        return end..end;
    };
    let last = toks.last(buf).map_or(first.end, |t| t.end);
    first.start..last
}

fn unknown(line: &Line) -> Parsed {
    Parsed::Error(ParseError::UnknownCommand { consumed: line.len })
}

fn client(consumed: usize, msg: &'static str) -> Parsed {
    Parsed::Error(ParseError::Client { consumed, msg })
}

/// memcached's key rule: 1..=250 bytes. Tokens never hold a space or a NUL
/// (see [`find_line`]); every other byte is allowed, as memcached stores it.
fn key_ok(key: &[u8]) -> bool {
    !key.is_empty() && key.len() <= super::MAX_KEY_LEN
}

fn parse_retrieval(
    buf: &[u8],
    line: &Line,
    mut toks: Tokens,
    mut req: Request,
    keys: &mut Vec<Range<usize>>,
) -> Parsed {
    if req.verb == Verb::Gat || req.verb == Verb::Gats {
        let Some(t) = toks.next(buf) else {
            return unknown(line);
        };
        match parse_i64(slice(buf, t)) {
            Some(exptime) => req.exptime = exptime,
            None => return client(line.len, MSG_BAD_EXPTIME),
        }
        // `gat <exptime>` with no key is accepted by memcached: a bare END.
    } else if toks.clone().next(buf).is_none() {
        return unknown(line);
    }
    // (A batch rebuilt as its own line, verb and exptime added, stays whole.)
    if line.len > window(req.verb) + 64 {
        // A gat line memcached would refuse upstream: served in batches.
        req.more = true;
        return retrieval_batch(buf, toks.pos(), req, keys);
    }
    if !push_keys(buf, toks, keys) {
        return client(line.len, MSG_BAD_FORMAT);
    }
    Parsed::Complete(req)
}

/// Push every remaining token as a key; false (keys cleared) on a bad key.
fn push_keys(buf: &[u8], mut toks: Tokens, keys: &mut Vec<Range<usize>>) -> bool {
    while let Some(k) = toks.next(buf) {
        if !key_ok(slice(buf, k.clone())) {
            keys.clear();
            return false;
        }
        keys.push(k);
    }
    true
}

/// A line with no terminator within [`super::MAX_LINE_LEN`]. memcached serves
/// retrieval lines of any length (a 187 KB `get` of 18 725 keys), so a
/// `get`/`gets`/`gat`/`gats` line becomes its first batch of keys; anything
/// else is [`ParseError::LineTooLong`].
fn long_retrieval(buf: &[u8], keys: &mut Vec<Range<usize>>) -> Parsed {
    let window = buf.get(..super::MAX_LINE_LEN).unwrap_or(buf);
    let mut toks = Tokens::new(window.len());
    let verb = match toks.next(buf).and_then(|w| verb_from_word(slice(buf, w))) {
        Some(v) if v.is_retrieval() => v,
        _ => return Parsed::Error(ParseError::LineTooLong),
    };
    let mut req = Request {
        verb,
        consumed: 0,
        line_len: 0,
        key: 0..0,
        data: 0..0,
        flags: 0,
        exptime: 0,
        cas_unique: 0,
        delta: 0,
        noreply: false,
        quiet: false,
        meta: super::MetaFlags::default(),
        meta_flags: 0..0,
        crlf: true,
        more: true,
    };
    if matches!(verb, Verb::Gat | Verb::Gats) {
        match toks.next(buf).map(|t| parse_i64(slice(buf, t))) {
            Some(Some(exptime)) => req.exptime = exptime,
            _ => return Parsed::Error(ParseError::LineTooLong),
        }
    }
    retrieval_batch(buf, toks.pos(), req, keys)
}

/// The next batch of keys of a retrieval line that goes on past
/// [`super::MAX_LINE_LEN`] (`first` is the batch [`parse_request`] returned,
/// or the previous one): up to the line's end (then `more` is false and
/// `consumed` includes the terminator) or up to the last whole key in the
/// window. A bad key, or a window without a single whole key, is
/// [`ParseError::LineTooLong`]: the line cannot be resynchronised.
pub fn parse_retrieval_more(buf: &[u8], first: &Request, keys: &mut Vec<Range<usize>>) -> Parsed {
    keys.clear();
    let req = Request {
        consumed: 0,
        line_len: 0,
        more: true,
        ..first.clone()
    };
    retrieval_batch(buf, 0, req, keys)
}

/// A batch of a long retrieval line as a request of its own: the line
/// `<verb> [<exptime>] <keys>\r\n` written into `out` (cleared first), and
/// the request and key ranges that index it, as [`parse_request`] would give
/// them. `batch` and `keys` are what [`parse_request`] or
/// [`parse_retrieval_more`] returned (`keys` index `batch`); `more` is kept.
pub fn batch_request(
    out: &mut bytes::BytesMut,
    batch: &[u8],
    r: &Request,
    keys: &mut [Range<usize>],
) -> Request {
    out.clear();
    out.extend_from_slice(r.verb.as_bytes());
    if matches!(r.verb, Verb::Gat | Verb::Gats) {
        out.extend_from_slice(b" ");
        out.extend_from_slice(r.exptime.to_string().as_bytes());
    }
    for k in keys.iter_mut() {
        out.extend_from_slice(b" ");
        let start = out.len();
        out.extend_from_slice(slice(batch, k.clone()));
        *k = start..out.len();
    }
    out.extend_from_slice(b"\r\n");
    let end = out.len() - 2;
    Request {
        consumed: out.len(),
        line_len: out.len(),
        meta_flags: end..end,
        crlf: true,
        ..r.clone()
    }
}

/// Longest `gat`/`gats` line sent to a server: memcached 1.6 serves long
/// lines only for `get` and `gets`, and resets the connection when a `gat`
/// line does not fit its 2048-byte first read. Longer client lines are
/// served in batches of this size.
pub const GAT_WINDOW: usize = 1536;

/// The batch window of a retrieval verb.
fn window(verb: Verb) -> usize {
    if matches!(verb, Verb::Gat | Verb::Gats) {
        GAT_WINDOW
    } else {
        super::MAX_LINE_LEN
    }
}

fn retrieval_batch(
    buf: &[u8],
    start: usize,
    mut req: Request,
    keys: &mut Vec<Range<usize>>,
) -> Parsed {
    let limit = window(req.verb);
    let window = buf.get(..limit).unwrap_or(buf);
    let (end, consumed, more) = match window.iter().position(|&b| b == b'\n') {
        Some(nl) => {
            let end = if nl > 0 && window.get(nl - 1) == Some(&b'\r') {
                nl - 1
            } else {
                nl
            };
            (end, nl + 1, false)
        }
        None if window.len() < limit => return Parsed::Incomplete,
        // Stop before the last token, which may continue in the next read.
        None => match window.iter().rposition(|&b| b == b' ') {
            Some(sp) if sp >= start => (sp, sp + 1, true),
            _ => return Parsed::Error(ParseError::LineTooLong),
        },
    };
    let toks = Tokens::within(start..end);
    if !push_keys(buf, toks, keys) {
        return Parsed::Error(ParseError::LineTooLong);
    }
    req.consumed = consumed;
    req.line_len = consumed;
    req.more = more;
    req.meta_flags = end..end;
    Parsed::Complete(req)
}

/// Check a data length against the limits and, when the block is buffered,
/// fill `data` and `consumed`.
fn take_data(
    buf: &[u8],
    line: &Line,
    len_tok: &[u8],
    max_item_size: usize,
    mut req: Request,
) -> Parsed {
    let Some(len) = data_len(len_tok) else {
        return client(line.len, MSG_BAD_FORMAT);
    };
    let total = line.len.saturating_add(len).saturating_add(2);
    if len > max_item_size {
        return Parsed::Error(ParseError::TooLarge { skip: total });
    }
    if buf.len() < total {
        return Parsed::Incomplete;
    }
    let data_end = line.len + len;
    if buf.get(data_end..total) != Some(b"\r\n".as_slice()) {
        return client(total, MSG_BAD_DATA_CHUNK);
    }
    req.data = line.len..data_end;
    req.consumed = total;
    Parsed::Complete(req)
}

fn parse_storage(
    buf: &[u8],
    line: &Line,
    toks: Tokens,
    mut req: Request,
    max_item_size: usize,
) -> Parsed {
    let args = Args::collect(buf, toks);
    let base = if req.verb == Verb::Cas { 5 } else { 4 };
    // A refused line never lets its data block run as a command: when the
    // length is readable, the block is skipped with the line.
    let refused = match (args.n >= 4).then(|| data_len(args.get(buf, 3))).flatten() {
        Some(len) => line.len.saturating_add(len).saturating_add(2),
        None => line.len,
    };
    if args.n != base && args.n != base + 1 {
        return Parsed::Error(ParseError::UnknownCommand { consumed: refused });
    }
    // An extra last token that is not `noreply` is ignored, as memcached does.
    req.noreply = args.n == base + 1 && args.ends_with_noreply(buf);
    let key = args.range(0);
    if !key_ok(slice(buf, key.clone())) {
        return client(refused, MSG_BAD_FORMAT);
    }
    req.key = key;
    // Flags wider than 32 bits are truncated, exactly like memcached 1.6.
    match (parse_u64(args.get(buf, 1)), parse_i64(args.get(buf, 2))) {
        (Some(flags), Some(exptime)) => {
            req.flags = flags as u32;
            req.exptime = exptime;
        }
        _ => return client(refused, MSG_BAD_FORMAT),
    }
    if req.verb == Verb::Cas {
        match parse_u64(args.get(buf, 4)) {
            Some(cas) => req.cas_unique = cas,
            None => return client(refused, MSG_BAD_FORMAT),
        }
    }
    take_data(buf, line, args.get(buf, 3), max_item_size, req)
}

/// The key whose old item a refused-as-too-large request removes, as
/// memcached does ("avoid stale data persisting in cache because we failed
/// alloc"): `set` and `ms` (any mode), not add/replace/append/prepend/cas.
/// `buf` starts with the request line that [`parse_request`] answered with
/// [`ParseError::TooLarge`]; the range indexes `buf`. A proxy must delete the
/// key on every replica, or `get` would still return the old value.
pub fn too_large_removes(buf: &[u8]) -> Option<Range<usize>> {
    let LineScan::Found(line) = find_line(buf) else {
        return None;
    };
    let mut toks = Tokens::new(line.content_end);
    let verb = verb_from_word(slice(buf, toks.next(buf)?))?;
    if !matches!(verb, Verb::Set | Verb::MetaSet) {
        return None;
    }
    let key = toks.next(buf)?;
    key_ok(slice(buf, key.clone())).then_some(key)
}

fn parse_delete(buf: &[u8], line: &Line, toks: Tokens, mut req: Request) -> Parsed {
    let args = Args::collect(buf, toks);
    if !(1..=3).contains(&args.n) {
        return unknown(line);
    }
    if args.n > 1 {
        // Only `delete <key> 0`, `delete <key> noreply` and `delete <key> 0 noreply`.
        let hold_is_zero = args.get(buf, 1) == b"0";
        req.noreply = args.ends_with_noreply(buf);
        let valid = (args.n == 2 && (hold_is_zero || req.noreply))
            || (args.n == 3 && hold_is_zero && req.noreply);
        if !valid {
            return client(line.len, MSG_DELETE_USAGE);
        }
    }
    let key = args.range(0);
    if !key_ok(slice(buf, key.clone())) {
        return client(line.len, MSG_BAD_FORMAT);
    }
    req.key = key;
    Parsed::Complete(req)
}

/// `<verb> <key> <number> [noreply]`, the shape of incr, decr and touch:
/// checks the arity and the key; `store` parses the number into the request
/// and says whether it was valid, `msg` is the CLIENT_ERROR when it was not.
fn parse_key_and_number(
    buf: &[u8],
    line: &Line,
    toks: Tokens,
    mut req: Request,
    store: fn(&mut Request, &[u8]) -> bool,
    msg: &'static str,
) -> Parsed {
    let args = Args::collect(buf, toks);
    if args.n != 2 && args.n != 3 {
        return unknown(line);
    }
    req.noreply = args.n == 3 && args.ends_with_noreply(buf);
    let key = args.range(0);
    if !key_ok(slice(buf, key.clone())) {
        return client(line.len, MSG_BAD_FORMAT);
    }
    req.key = key;
    if store(&mut req, args.get(buf, 1)) {
        Parsed::Complete(req)
    } else {
        client(line.len, msg)
    }
}

fn store_delta(req: &mut Request, tok: &[u8]) -> bool {
    parse_u64(tok).map(|d| req.delta = d).is_some()
}

fn store_exptime(req: &mut Request, tok: &[u8]) -> bool {
    parse_i64(tok).map(|e| req.exptime = e).is_some()
}

fn parse_flush_all(buf: &[u8], line: &Line, toks: Tokens, mut req: Request) -> Parsed {
    let args = Args::collect(buf, toks);
    if args.n > 2 {
        return unknown(line);
    }
    req.noreply = args.ends_with_noreply(buf);
    // `flush_all noreply` has no delay; otherwise the first argument is it.
    if args.n > usize::from(req.noreply) {
        match parse_i64(args.get(buf, 0)) {
            Some(delay) => req.exptime = delay,
            None => return client(line.len, MSG_BAD_EXPTIME),
        }
    }
    Parsed::Complete(req)
}

fn parse_verbosity(buf: &[u8], line: &Line, toks: Tokens, mut req: Request) -> Parsed {
    let args = Args::collect(buf, toks);
    if args.n != 1 && args.n != 2 {
        return unknown(line);
    }
    req.noreply = args.ends_with_noreply(buf);
    match parse_u64(args.get(buf, 0)) {
        Some(level) => req.delta = level,
        None => return client(line.len, MSG_BAD_FORMAT),
    }
    Parsed::Complete(req)
}

fn parse_meta(
    buf: &[u8],
    line: &Line,
    mut toks: Tokens,
    mut req: Request,
    max_item_size: usize,
) -> Parsed {
    let Some(key) = toks.next(buf) else {
        // memcached: a bare `me` is a bad line, the other bare meta words unknown.
        return if req.verb == Verb::MetaDebug {
            client(line.len, MSG_BAD_FORMAT)
        } else {
            unknown(line)
        };
    };
    if !key_ok(slice(buf, key.clone())) {
        // An `ms` with a readable length takes its data block with it.
        let block = (req.verb == Verb::MetaSet)
            .then(|| toks.clone().next(buf).and_then(|t| data_len(slice(buf, t))))
            .flatten();
        let consumed = block.map_or(line.len, |n| line.len.saturating_add(n).saturating_add(2));
        return client(consumed, MSG_BAD_FORMAT);
    }
    req.key = key;
    // memcached refuses a line of too many words before it reads `ms`'s data
    // block, which it then runs as a command: so does the proxy, as a server
    // would otherwise answer twice for one request.
    let mut words = toks.clone();
    let mut n = 2;
    while n < META_MAX_WORDS && words.next(buf).is_some() {
        n += 1;
    }
    if n >= META_MAX_WORDS && req.verb != Verb::MetaDebug {
        let msg = if req.verb == Verb::MetaGet {
            MSG_MG_FLAGS_TOO_LONG
        } else {
            MSG_FLAGS_TOO_LONG
        };
        return client(line.len, msg);
    }
    let len_tok = if req.verb == Verb::MetaSet {
        match toks.next(buf) {
            Some(t) => Some(t),
            None => return client(line.len, MSG_BAD_FORMAT),
        }
    } else {
        None
    };
    req.meta_flags = rest_range(buf, toks, line.content_end);
    req.meta = super::MetaFlags::parse(slice(buf, req.meta_flags.clone()));
    req.quiet = req.meta.quiet();
    match len_tok {
        Some(t) => take_data(buf, line, slice(buf, t), max_item_size, req),
        None => Parsed::Complete(req),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::MAX_LINE_LEN;
    use proptest::prelude::*;

    const MAX_ITEM: usize = 1024;

    fn parse(buf: &[u8]) -> (Parsed, Vec<Range<usize>>) {
        let mut keys = Vec::new();
        let p = parse_request(buf, MAX_ITEM, &mut keys);
        (p, keys)
    }

    fn text(buf: &[u8], r: &Range<usize>) -> String {
        String::from_utf8_lossy(&buf[r.clone()]).into_owned()
    }

    /// A one-line rendering of the non-default fields, for compact tables.
    fn summary(buf: &[u8], r: &Request, keys: &[Range<usize>]) -> String {
        let mut s = format!("{:?}", r.verb);
        if !r.key.is_empty() {
            s += &format!(" key={}", text(buf, &r.key));
        }
        if !keys.is_empty() {
            let k: Vec<String> = keys.iter().map(|k| text(buf, k)).collect();
            s += &format!(" keys={}", k.join(","));
        }
        if r.flags != 0 {
            s += &format!(" flags={}", r.flags);
        }
        if r.exptime != 0 {
            s += &format!(" exp={}", r.exptime);
        }
        if r.cas_unique != 0 {
            s += &format!(" cas={}", r.cas_unique);
        }
        if r.delta != 0 {
            s += &format!(" delta={}", r.delta);
        }
        if r.verb.is_storage() || r.verb == Verb::MetaSet {
            s += &format!(" data={}", text(buf, &r.data));
        } else {
            assert!(r.data.is_empty());
        }
        if r.noreply {
            s += " noreply";
        }
        if r.quiet {
            s += " q";
        }
        if !r.meta_flags.is_empty() {
            s += &format!(" mf={}", text(buf, &r.meta_flags));
        }
        if !r.crlf {
            s += " lf";
        }
        s
    }

    /// Every verb, noreply, spacing and terminator variants: input -> summary.
    const VALID: &[(&[u8], &str)] = &[
        (b"get a\r\n", "Get keys=a"),
        (b"get a b c\r\n", "Get keys=a,b,c"),
        (b"get  a   b  \r\n", "Get keys=a,b"),
        (b" get a\r\n", "Get keys=a"),
        (b"get a\n", "Get keys=a lf"),
        (b"get a \n", "Get keys=a lf"),
        (b"get noreply\r\n", "Get keys=noreply"),
        (b"get \xc3\xa9t\xc3\xa9\r\n", "Get keys=\u{e9}t\u{e9}"),
        (b"gets a b\r\n", "Gets keys=a,b"),
        (b"gat 10 a\r\n", "Gat keys=a exp=10"),
        (b"gat -1 a b\r\n", "Gat keys=a,b exp=-1"),
        (b"gat 10\r\n", "Gat exp=10"),
        (b"gats 0 a\r\n", "Gats keys=a"),
        (
            b"set a 5 10 2\r\nhi\r\n",
            "Set key=a flags=5 exp=10 data=hi",
        ),
        (b"set a 0 0 0\r\n\r\n", "Set key=a data="),
        (
            b"set a 0 0 2 noreply\r\nhi\r\n",
            "Set key=a data=hi noreply",
        ),
        (b"set a 0 0 2 garbage\r\nhi\r\n", "Set key=a data=hi"),
        (b"set a 0 0 2\nhi\r\n", "Set key=a data=hi lf"),
        (b"set  a  0  0  2 \r\nhi\r\n", "Set key=a data=hi"),
        (b"set a 0 0 4\r\na\r\nb\r\n", "Set key=a data=a\r\nb"),
        (
            b"set a +1 -5 +2\r\nhi\r\n",
            "Set key=a flags=1 exp=-5 data=hi",
        ),
        (b"set a 007 0 02\r\nhi\r\n", "Set key=a flags=7 data=hi"),
        (
            b"set a 4294967295 0 1\r\nx\r\n",
            "Set key=a flags=4294967295 data=x",
        ),
        (b"set a 4294967297 0 1\r\nx\r\n", "Set key=a flags=1 data=x"),
        (
            b"set a 0 2147483648 1\r\nx\r\n",
            "Set key=a exp=2147483648 data=x",
        ),
        (b"add a 1 2 1\r\nx\r\n", "Add key=a flags=1 exp=2 data=x"),
        (
            b"replace a 0 0 1 noreply\r\nx\r\n",
            "Replace key=a data=x noreply",
        ),
        (b"append a 0 0 1\r\nx\r\n", "Append key=a data=x"),
        (b"prepend a 0 0 1\r\nx\r\n", "Prepend key=a data=x"),
        (b"cas a 0 0 1 99\r\nx\r\n", "Cas key=a cas=99 data=x"),
        (
            b"cas a 0 0 1 99 noreply\r\nx\r\n",
            "Cas key=a cas=99 data=x noreply",
        ),
        (
            b"cas a 0 0 1 18446744073709551615\r\nx\r\n",
            "Cas key=a cas=18446744073709551615 data=x",
        ),
        (b"delete a\r\n", "Delete key=a"),
        (b"delete a 0\r\n", "Delete key=a"),
        (b"delete a noreply\r\n", "Delete key=a noreply"),
        (b"delete a 0 noreply\r\n", "Delete key=a noreply"),
        (b"incr a 5\r\n", "Incr key=a delta=5"),
        (
            b"incr a 18446744073709551615\r\n",
            "Incr key=a delta=18446744073709551615",
        ),
        (b"incr a 1 noreply\r\n", "Incr key=a delta=1 noreply"),
        (b"incr a 1 foo\r\n", "Incr key=a delta=1"),
        (b"decr a +1\r\n", "Decr key=a delta=1"),
        (b"touch a 10\r\n", "Touch key=a exp=10"),
        (b"touch a -1 noreply\r\n", "Touch key=a exp=-1 noreply"),
        (b"flush_all\r\n", "FlushAll"),
        (b"flush_all 10\r\n", "FlushAll exp=10"),
        (b"flush_all noreply\r\n", "FlushAll noreply"),
        (b"flush_all 10 noreply\r\n", "FlushAll exp=10 noreply"),
        (b"flush_all 0 x\r\n", "FlushAll"),
        (b"version\r\n", "Version"),
        (b"version x\r\n", "Version"),
        (b"verbosity 1\r\n", "Verbosity delta=1"),
        (b"verbosity 1 noreply\r\n", "Verbosity delta=1 noreply"),
        (b"verbosity 1 x\r\n", "Verbosity delta=1"),
        (b"stats\r\n", "Stats"),
        (b"stats settings\r\n", "Stats mf=settings"),
        (b"stats  slabs  x \r\n", "Stats mf=slabs  x"),
        (b"quit\r\n", "Quit"),
        (b"mg a\r\n", "MetaGet key=a"),
        (b"mg a v f t\r\n", "MetaGet key=a mf=v f t"),
        (b"mg a  v   q \r\n", "MetaGet key=a q mf=v   q"),
        (b"mg q v\r\n", "MetaGet key=q mf=v"),
        // A flag is its first byte, as memcached reads it: `qq` is quiet too.
        (b"mg a qq\r\n", "MetaGet key=a q mf=qq"),
        (b"ms a 2\r\nhi\r\n", "MetaSet key=a data=hi"),
        (
            b"ms a 2 T90 F1 q\r\nhi\r\n",
            "MetaSet key=a data=hi q mf=T90 F1 q",
        ),
        (b"ms a 0\r\n\r\n", "MetaSet key=a data="),
        (b"md a q\r\n", "MetaDelete key=a q mf=q"),
        (b"md a\n", "MetaDelete key=a lf"),
        (b"ma a D5 MI\r\n", "MetaArithmetic key=a mf=D5 MI"),
        (b"mn\r\n", "MetaNoop"),
        (b"me a\r\n", "MetaDebug key=a"),
        (b"cache_memlimit 100\r\n", "Admin mf=cache_memlimit 100"),
        (
            b"lru_crawler metadump all\r\n",
            "Admin mf=lru_crawler metadump all",
        ),
        (b"slabs automove 1\r\n", "Admin mf=slabs automove 1"),
    ];

    #[test]
    fn valid_requests() {
        for &(input, want) in VALID {
            let (p, keys) = parse(input);
            let Parsed::Complete(r) = p else {
                panic!("{:?}: {p:?}", String::from_utf8_lossy(input));
            };
            assert_eq!(
                summary(input, &r, &keys),
                want,
                "{:?}",
                String::from_utf8_lossy(input)
            );
            assert_eq!(
                r.consumed,
                input.len(),
                "{:?}",
                String::from_utf8_lossy(input)
            );
            let nl = input.iter().position(|&b| b == b'\n').unwrap();
            assert_eq!(r.line_len, nl + 1);
        }
    }

    /// Split-point test: every strict prefix is Incomplete, and the request is
    /// consumed exactly even with the next request already buffered.
    #[test]
    fn split_points() {
        for &(input, _) in VALID {
            for cut in 0..input.len() {
                assert_eq!(
                    parse(&input[..cut]).0,
                    Parsed::Incomplete,
                    "{:?} cut at {cut}",
                    String::from_utf8_lossy(input)
                );
            }
            let mut two = input.to_vec();
            two.extend_from_slice(b"get next\r\n");
            match parse(&two).0 {
                Parsed::Complete(r) => assert_eq!(r.consumed, input.len()),
                p => panic!("{p:?}"),
            }
        }
    }

    fn unknown(consumed: usize) -> Parsed {
        Parsed::Error(ParseError::UnknownCommand { consumed })
    }

    fn client(consumed: usize, msg: &'static str) -> Parsed {
        Parsed::Error(ParseError::Client { consumed, msg })
    }

    /// Bad requests -> the answer memcached 1.6.18 gives and the bytes to skip.
    /// `usize::MAX` as consumed stands for "the first line".
    #[test]
    fn bad_requests() {
        const LINE: usize = usize::MAX;
        // "The line and its data block": the whole input.
        const ALL: usize = usize::MAX - 1;
        let table: &[(&[u8], Parsed)] = &[
            (b"\r\n", unknown(LINE)),
            (b"\n", unknown(LINE)),
            (b"   \r\n", unknown(LINE)),
            (b"GET a\r\n", unknown(LINE)),
            (b"Set a 0 0 1\r\nx\r\n", unknown(LINE)),
            (b"get\r\n", unknown(LINE)),
            (b"get \r\n", unknown(LINE)),
            (b"gets\r\n", unknown(LINE)),
            (b"get\ta\r\n", unknown(LINE)),
            (b"bogus\r\n", unknown(LINE)),
            (b"gat\r\n", unknown(LINE)),
            (b"gat abc a\r\n", client(LINE, MSG_BAD_EXPTIME)),
            (b"gats 1.5 a\r\n", client(LINE, MSG_BAD_EXPTIME)),
            // Wrong arity: memcached says ERROR and then reads the data as a
            // command; memring skips the block when its length is readable.
            (b"set a 0 0\r\n", unknown(LINE)),
            (b"set a 0 0 1 noreply extra\r\nx\r\n", unknown(ALL)),
            (b"cas a 0 0 1\r\nx\r\n", unknown(ALL)),
            (b"cas a 0 0 1 5 noreply x\r\nx\r\n", unknown(ALL)),
            // Bad flags or exptime: CLIENT_ERROR, and the block is skipped
            // with the line (memcached runs it as a command).
            (b"set a -1 0 1\r\nx\r\n", client(ALL, MSG_BAD_FORMAT)),
            (b"set a 0 abc 1\r\nx\r\n", client(ALL, MSG_BAD_FORMAT)),
            (b"set a 0 1.5 1\r\nx\r\n", client(ALL, MSG_BAD_FORMAT)),
            (b"set a 0 0x10 1\r\nx\r\n", client(ALL, MSG_BAD_FORMAT)),
            (
                b"set a 18446744073709551616 0 1\r\nx\r\n",
                client(ALL, MSG_BAD_FORMAT),
            ),
            (
                b"set a 0 9999999999999999999 1\r\nx\r\n",
                client(ALL, MSG_BAD_FORMAT),
            ),
            (b"cas a 0 0 1 abc\r\nx\r\n", client(ALL, MSG_BAD_FORMAT)),
            (b"cas a 0 0 1 -1\r\nx\r\n", client(ALL, MSG_BAD_FORMAT)),
            // A long key: the same, and the block skipped with its length.
            (
                b"set aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa 0 0 9\r\nflush_all\r\n",
                client(ALL, MSG_BAD_FORMAT),
            ),
            // A NUL ends the line's content as in memcached: `set a` is short.
            (b"set a\x00b 0 0 1\r\nx\r\n", unknown(LINE)),
            // Unreadable length: only the line is skipped, as in memcached.
            (b"set a 0 0 -1\r\n", client(LINE, MSG_BAD_FORMAT)),
            (b"set a 0 0 1x\r\nx\r\n", client(LINE, MSG_BAD_FORMAT)),
            (b"set a 0 0 +\r\nx\r\n", client(LINE, MSG_BAD_FORMAT)),
            (
                b"set a 0 0 2147483645\r\n",
                Parsed::Error(ParseError::TooLarge {
                    skip: 22 + 2147483645 + 2,
                }),
            ),
            (b"set a 0 0 2147483646\r\n", client(LINE, MSG_BAD_FORMAT)),
            // memcached reads the length into a C int: 99999999999 wraps to
            // 1215752191, too large (swallowed, answered after the swallow).
            (
                b"set a 0 0 99999999999\r\n",
                Parsed::Error(ParseError::TooLarge {
                    skip: 23 + 1215752191 + 2,
                }),
            ),
            (
                b"ms k 99999999999\r\n",
                Parsed::Error(ParseError::TooLarge {
                    skip: 18 + 1215752191 + 2,
                }),
            ),
            (b"ms k 2147483646\r\nxx\r\n", client(LINE, MSG_BAD_FORMAT)),
            // 17 flags on `ms`, 18 on the others: memcached refuses the line
            // and runs the data block as a command.
            (
                b"ms k 2 T1 T1 T1 T1 T1 T1 T1 T1 T1 T1 T1 T1 T1 T1 T1 T1 T1\r\nxx\r\n",
                client(LINE, MSG_FLAGS_TOO_LONG),
            ),
            (
                b"mg k v v v v v v v v v v v v v v v v v v\r\n",
                client(LINE, MSG_MG_FLAGS_TOO_LONG),
            ),
            (
                b"md k q q q q q q q q q q q q q q q q q q\r\n",
                client(LINE, MSG_FLAGS_TOO_LONG),
            ),
            // HTTP and the binary protocol: closed without an answer.
            (b"GET / HTTP/1.0\r\n", Parsed::Error(ParseError::Close)),
            (b"HTTP/1.1\r\n", Parsed::Error(ParseError::Close)),
            (b"POST /x HTTP/1.1\r\n", Parsed::Error(ParseError::Close)),
            (b"\x80\x00\x00\x00\n", Parsed::Error(ParseError::Close)),
            // Bad data chunk: line + len + 2 consumed, like memcached.
            (b"set a 0 0 1\r\nab\r\n", client(16, MSG_BAD_DATA_CHUNK)),
            (b"set a 0 0 1\r\nx\n\r\n", client(16, MSG_BAD_DATA_CHUNK)),
            (b"ms a 2\r\nx\r\nmn\r\n", client(12, MSG_BAD_DATA_CHUNK)),
            (b"delete\r\n", unknown(LINE)),
            (b"delete a b c d\r\n", unknown(LINE)),
            (b"delete a 1\r\n", client(LINE, MSG_DELETE_USAGE)),
            (b"delete a 1 noreply\r\n", client(LINE, MSG_DELETE_USAGE)),
            (b"delete a x\r\n", client(LINE, MSG_DELETE_USAGE)),
            (b"delete a 00\r\n", client(LINE, MSG_DELETE_USAGE)),
            (b"delete a 0 x\r\n", client(LINE, MSG_DELETE_USAGE)),
            (b"incr\r\n", unknown(LINE)),
            (b"incr a\r\n", unknown(LINE)),
            (b"incr a 1 noreply x\r\n", unknown(LINE)),
            (b"incr a -1\r\n", client(LINE, MSG_BAD_DELTA)),
            (b"incr a abc\r\n", client(LINE, MSG_BAD_DELTA)),
            (
                b"decr a 18446744073709551616\r\n",
                client(LINE, MSG_BAD_DELTA),
            ),
            (b"touch a\r\n", unknown(LINE)),
            (b"touch a abc\r\n", client(LINE, MSG_BAD_EXPTIME)),
            (b"flush_all abc\r\n", client(LINE, MSG_BAD_EXPTIME)),
            (b"flush_all x y\r\n", client(LINE, MSG_BAD_EXPTIME)),
            (b"flush_all 0 noreply x\r\n", unknown(LINE)),
            (b"verbosity\r\n", unknown(LINE)),
            (b"verbosity abc\r\n", client(LINE, MSG_BAD_FORMAT)),
            (b"verbosity -1\r\n", client(LINE, MSG_BAD_FORMAT)),
            (b"verbosity 1 noreply x\r\n", unknown(LINE)),
            (b"mg\r\n", unknown(LINE)),
            (b"ms\r\n", unknown(LINE)),
            (b"md\r\n", unknown(LINE)),
            (b"ma\r\n", unknown(LINE)),
            (b"MG a\r\n", unknown(LINE)),
            (b"me\r\n", client(LINE, MSG_BAD_FORMAT)),
            (b"ms a\r\n", client(LINE, MSG_BAD_FORMAT)),
            (b"ms a abc\r\nx\r\n", client(LINE, MSG_BAD_FORMAT)),
            (b"ms a -1\r\nx\r\n", client(LINE, MSG_BAD_FORMAT)),
        ];
        for (input, want) in table {
            let line = input.iter().position(|&b| b == b'\n').unwrap() + 1;
            let want = match want {
                Parsed::Error(ParseError::UnknownCommand { consumed: LINE }) => unknown(line),
                Parsed::Error(ParseError::UnknownCommand { consumed: ALL }) => unknown(input.len()),
                Parsed::Error(ParseError::Client { consumed: ALL, msg }) => {
                    client(input.len(), msg)
                }
                Parsed::Error(ParseError::Client {
                    consumed: LINE,
                    msg,
                }) => client(line, msg),
                other => other.clone(),
            };
            let (got, keys) = parse(input);
            assert_eq!(got, want, "{:?}", String::from_utf8_lossy(input));
            assert!(keys.is_empty());
        }
        assert_eq!(parse(b"\x80").0, Parsed::Error(ParseError::Close));
    }

    /// Keys as memcached 1.6.18 takes them (checked against a live server):
    /// any byte but a space; a NUL ends the line.
    #[test]
    fn key_bytes_like_memcached() {
        let table: &[(&[u8], &str)] = &[
            (b"get a\x01b\r\n", "a\x01b"),
            (b"get a\tb\r\n", "a\tb"),
            (b"get a\x7f\r\n", "a\x7f"),
            (b"get a\rb\r\n", "a\rb"),
            (b"get a\xffb\r\n", "a\u{fffd}b"),
            (b"get a\x00b c\r\n", "a"),
        ];
        for &(input, want) in table {
            let (p, keys) = parse(input);
            assert!(matches!(p, Parsed::Complete(_)), "{input:?}: {p:?}");
            assert_eq!(keys.len(), 1, "{input:?}");
            assert_eq!(text(input, &keys[0]), want);
        }
        let set = b"set k\tx 0 0 9\r\nflush_all\r\n";
        match parse(set).0 {
            Parsed::Complete(r) => {
                assert_eq!(&set[r.key.clone()], b"k\tx");
                assert_eq!(&set[r.data.clone()], b"flush_all");
            }
            p => panic!("{p:?}"),
        }
    }

    #[test]
    fn too_large_set_and_ms_remove_the_key() {
        assert_eq!(too_large_removes(b"set foo 0 0 1049600\r\n"), Some(4..7));
        assert_eq!(too_large_removes(b"ms foo 1049600 T0\r\n"), Some(3..6));
        assert_eq!(too_large_removes(b"add foo 0 0 1049600\r\n"), None);
        assert_eq!(too_large_removes(b"cas foo 0 0 1049600 1\r\n"), None);
        assert_eq!(too_large_removes(b"set foo 0 0 10"), None);
    }

    fn key(n: usize) -> Vec<u8> {
        vec![b'k'; n]
    }

    fn cat(parts: &[&[u8]]) -> Vec<u8> {
        parts.concat()
    }

    /// Key length 250 is accepted and 251 rejected by every keyed verb.
    #[test]
    fn key_length_limit() {
        let templates: &[(&[u8], &[u8])] = &[
            (b"get ", b"\r\n"),
            (b"get a ", b" b\r\n"),
            (b"gets ", b"\r\n"),
            (b"gat 1 ", b"\r\n"),
            (b"set ", b" 0 0 1\r\nx\r\n"),
            (b"cas ", b" 0 0 1 1\r\nx\r\n"),
            (b"delete ", b"\r\n"),
            (b"incr ", b" 1\r\n"),
            (b"touch ", b" 1\r\n"),
            (b"mg ", b" v\r\n"),
            (b"ms ", b" 1\r\nx\r\n"),
            (b"md ", b"\r\n"),
            (b"ma ", b"\r\n"),
            (b"me ", b"\r\n"),
        ];
        for &(pre, post) in templates {
            let ok = cat(&[pre, &key(250), post]);
            match parse(&ok).0 {
                Parsed::Complete(r) => assert_eq!(r.consumed, ok.len()),
                p => panic!("{:?}: {p:?}", String::from_utf8_lossy(pre)),
            }
            let bad = cat(&[pre, &key(251), post]);
            // A refused storage line takes its data block with it.
            let line = if pre == b"set " || pre == b"cas " || pre == b"ms " {
                bad.len()
            } else {
                bad.iter().position(|&b| b == b'\n').unwrap() + 1
            };
            assert_eq!(
                parse(&bad).0,
                client(line, MSG_BAD_FORMAT),
                "{:?}",
                String::from_utf8_lossy(pre)
            );
        }
    }

    /// Items of exactly `max_item_size` parse; one byte more is TooLarge with
    /// the whole request to swallow, decided before the data arrives.
    #[test]
    fn item_size_limit() {
        for verb in [&b"set"[..], b"add", b"cas"] {
            let cas: &[u8] = if verb == b"cas" { b" 7" } else { b"" };
            let line = cat(&[verb, b" k 0 0 1024", cas, b"\r\n"]);
            let ok = cat(&[&line, &vec![b'x'; MAX_ITEM], b"\r\n"]);
            match parse(&ok).0 {
                Parsed::Complete(r) => {
                    assert_eq!(r.data.len(), MAX_ITEM);
                    assert_eq!(r.consumed, ok.len());
                }
                p => panic!("{p:?}"),
            }
            let line = cat(&[verb, b" k 0 0 1025", cas, b"\r\n"]);
            let want = Parsed::Error(ParseError::TooLarge {
                skip: line.len() + 1025 + 2,
            });
            assert_eq!(parse(&line).0, want);
            let full = cat(&[&line, &vec![b'x'; 1025], b"\r\n"]);
            assert_eq!(parse(&full).0, want);
        }
        let ok = cat(&[b"ms k 1024 T0\r\n", &vec![b'x'; MAX_ITEM], b"\r\n"]);
        assert!(matches!(parse(&ok).0, Parsed::Complete(_)));
        let bad = b"ms k 1025 q\r\n";
        assert_eq!(
            parse(bad).0,
            Parsed::Error(ParseError::TooLarge {
                skip: bad.len() + 1027
            })
        );
    }

    #[test]
    fn line_length_limit() {
        // A get line of exactly MAX_LINE_LEN bytes, terminator included.
        let mut ok = b"get".to_vec();
        while ok.len() + 2 + 201 <= MAX_LINE_LEN {
            ok.push(b' ');
            ok.extend_from_slice(&key(200));
        }
        ok.push(b' ');
        ok.extend(std::iter::repeat_n(b'z', MAX_LINE_LEN - 2 - ok.len()));
        ok.extend_from_slice(b"\r\n");
        assert_eq!(ok.len(), MAX_LINE_LEN);
        assert!(matches!(parse(&ok).0, Parsed::Complete(r) if r.consumed == MAX_LINE_LEN));
        // No terminator yet: wait until MAX_LINE_LEN bytes.
        assert_eq!(parse(&ok[..MAX_LINE_LEN - 1]).0, Parsed::Incomplete);
        // Longer lines that are not retrievals close the connection.
        let mut long = b"set".to_vec();
        long.resize(MAX_LINE_LEN, b' ');
        assert_eq!(parse(&long).0, Parsed::Error(ParseError::LineTooLong));
        long[..3].copy_from_slice(b"xyz");
        assert_eq!(parse(&long).0, Parsed::Error(ParseError::LineTooLong));
    }

    /// A get line past MAX_LINE_LEN (memcached serves a 187 KB line of 18 725
    /// keys) comes out in batches: every key once, in order, END only at the end.
    #[test]
    fn long_get_lines_come_in_batches() {
        for (verb, head) in [(Verb::Get, &b"get"[..]), (Verb::Gats, b"gats 100")] {
            let mut line = head.to_vec();
            let n = 18_725;
            for i in 0..n {
                line.extend_from_slice(format!(" key:{i}").as_bytes());
            }
            line.extend_from_slice(b"\r\n");
            assert!(line.len() > 2 * MAX_LINE_LEN);
            let mut rest = &line[..];
            let mut got = Vec::new();
            let mut first: Option<Request> = None;
            let mut batches = 0;
            loop {
                let mut keys = Vec::new();
                let p = match &first {
                    None => parse_request(rest, MAX_ITEM, &mut keys),
                    Some(f) => parse_retrieval_more(rest, f, &mut keys),
                };
                let Parsed::Complete(r) = p else {
                    panic!("{p:?}")
                };
                assert_eq!(r.verb, verb);
                if verb == Verb::Gats {
                    assert_eq!(r.exptime, 100);
                }
                assert!(r.consumed <= MAX_LINE_LEN);
                got.extend(keys.iter().map(|k| text(rest, k)));
                // Each batch stands alone as a request a server can take.
                let mut line = bytes::BytesMut::new();
                let mut ks = keys.clone();
                let b = batch_request(&mut line, rest, &r, &mut ks);
                assert_eq!(b.more, r.more);
                let again: Vec<String> = ks.iter().map(|k| text(&line, k)).collect();
                assert_eq!(
                    again,
                    keys.iter().map(|k| text(rest, k)).collect::<Vec<_>>()
                );
                if line.len() <= MAX_LINE_LEN {
                    let mut k2 = Vec::new();
                    match parse_request(&line, MAX_ITEM, &mut k2) {
                        Parsed::Complete(p) => {
                            assert_eq!(p.consumed, line.len());
                            assert_eq!(k2, ks);
                        }
                        p => panic!("{p:?}"),
                    }
                }
                rest = &rest[r.consumed..];
                batches += 1;
                if !r.more {
                    break;
                }
                // Each prefix of the rest is Incomplete until a window fills.
                if rest.len() > 10 {
                    assert_eq!(
                        parse_retrieval_more(&rest[..10], &r, &mut keys),
                        Parsed::Incomplete
                    );
                }
                first = Some(r);
            }
            assert!(rest.is_empty());
            assert!(batches >= 3);
            let want: Vec<String> = (0..n).map(|i| format!("key:{i}")).collect();
            assert_eq!(got, want);
        }
    }

    #[test]
    fn keys_are_cleared_first() {
        let mut keys = vec![0..1, 2..3];
        let p = parse_request(b"set a 0 0 1\r\nx\r\n", MAX_ITEM, &mut keys);
        assert!(matches!(p, Parsed::Complete(_)));
        assert!(keys.is_empty());
    }

    #[test]
    fn noreply_requested_table() {
        let table: &[(&[u8], bool)] = &[
            (b"set a 0 0 1 noreply\r\nx\r\n", true),
            (b"set a abc 0 1 noreply\r\n", true),
            (b"set a 0 0 99999999 noreply\r\n", true),
            (b"set a 0 0 99999999 noreply", true),
            (b"delete a 1 noreply\r\n", true),
            (b"incr a x noreply\n", true),
            (b"flush_all noreply\r\n", true),
            (b"set a 0 0 1\r\nx\r\n", false),
            (b"get noreply\r\n", false),
            (b"mg a noreply\r\n", false),
            (b"noreply\r\n", false),
            (b"\r\n", false),
        ];
        for &(input, want) in table {
            assert_eq!(
                noreply_requested(input),
                want,
                "{:?}",
                String::from_utf8_lossy(input)
            );
        }
    }

    fn storage_verb() -> impl Strategy<Value = Verb> {
        prop::sample::select(vec![
            Verb::Set,
            Verb::Add,
            Verb::Replace,
            Verb::Append,
            Verb::Prepend,
            Verb::Cas,
        ])
    }

    fn key_strategy() -> impl Strategy<Value = Vec<u8>> {
        prop::collection::vec(0x21u8..=0xff, 1..=250).prop_map(|k| {
            k.into_iter()
                .map(|b| if b == 0x7f { b'x' } else { b })
                .collect()
        })
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(buf in prop::collection::vec(any::<u8>(), 0..600)) {
            let mut keys = Vec::new();
            match parse_request(&buf, 64, &mut keys) {
                Parsed::Complete(r) => {
                    prop_assert!(r.consumed <= buf.len());
                    prop_assert!(r.line_len <= r.consumed);
                    for k in keys.iter().chain([&r.key, &r.data, &r.meta_flags]) {
                        prop_assert!(k.start <= k.end && k.end <= buf.len());
                    }
                }
                Parsed::Error(ParseError::UnknownCommand { consumed })
                | Parsed::Error(ParseError::Client { consumed, .. }) => {
                    prop_assert!(consumed > 0);
                }
                Parsed::Error(ParseError::TooLarge { skip }) => prop_assert!(skip > 64),
                Parsed::Error(ParseError::LineTooLong | ParseError::Close) | Parsed::Incomplete => {}
            }
            let _ = noreply_requested(&buf);
        }

        /// Parsing a buffer request by request always makes progress and
        /// stays inside it (the invariant the fuzz target also asserts).
        #[test]
        fn stream_always_progresses(buf in prop::collection::vec(
            prop::sample::select(vec![
                &b"get k"[..], b"set k 0 0 1", b"ms k 1", b"delete k 0", b"x", b" ",
                b"\r\n", b"\n", b"\r", b"100",
            ]),
            0..30,
        ).prop_map(|w| w.concat())) {
            let mut keys = Vec::new();
            let mut rest = &buf[..];
            while !rest.is_empty() {
                let step = match parse_request(rest, 64, &mut keys) {
                    Parsed::Complete(r) => r.consumed,
                    Parsed::Error(ParseError::UnknownCommand { consumed })
                    | Parsed::Error(ParseError::Client { consumed, .. }) => consumed.min(rest.len()),
                    Parsed::Error(ParseError::TooLarge { skip }) => skip.min(rest.len()),
                    Parsed::Error(ParseError::LineTooLong | ParseError::Close)
                    | Parsed::Incomplete => break,
                };
                prop_assert!(step > 0 && step <= rest.len());
                rest = &rest[step..];
            }
        }

        #[test]
        fn text_like_bytes_never_panic(
            words in prop::collection::vec(
                prop::sample::select(vec![
                    &b"get"[..], b"gat", b"set", b"cas", b"delete", b"incr", b"touch",
                    b"flush_all", b"verbosity", b"mg", b"ms", b"me", b"0", b"1", b"-1",
                    b"noreply", b"q", b"k", b" ", b"\r\n", b"\n", b"\r", b"99999999999999999999",
                ]),
                0..20,
            )
        ) {
            let buf = words.concat();
            let mut keys = Vec::new();
            if let Parsed::Complete(r) = parse_request(&buf, 64, &mut keys) {
                prop_assert!(r.consumed <= buf.len());
            }
        }

        #[test]
        fn storage_round_trip(
            verb in storage_verb(),
            key in key_strategy(),
            flags in any::<u32>(),
            exptime in any::<i64>(),
            data in prop::collection::vec(any::<u8>(), 0..300),
            cas in any::<u64>(),
            noreply in any::<bool>(),
        ) {
            let cas = (verb == Verb::Cas).then_some(cas);
            let mut out = bytes::BytesMut::new();
            crate::protocol::compose::compose_storage(
                &mut out, verb, &key, flags, exptime, &data, cas, noreply,
            );
            let mut keys = Vec::new();
            let Parsed::Complete(r) = parse_request(&out, 300, &mut keys) else {
                panic!("{out:?}");
            };
            prop_assert_eq!(r.verb, verb);
            prop_assert_eq!(&out[r.key.clone()], &key[..]);
            prop_assert_eq!(&out[r.data.clone()], &data[..]);
            prop_assert_eq!(r.flags, flags);
            prop_assert_eq!(r.exptime, exptime);
            prop_assert_eq!(r.cas_unique, cas.unwrap_or(0));
            prop_assert_eq!(r.noreply, noreply);
            prop_assert_eq!(r.consumed, out.len());
            for cut in 0..out.len() {
                prop_assert_eq!(parse_request(&out[..cut], 300, &mut keys), Parsed::Incomplete);
            }
        }

        #[test]
        fn retrieval_round_trip(
            verb in prop::sample::select(vec![Verb::Get, Verb::Gets, Verb::Gat, Verb::Gats]),
            exptime in any::<i64>(),
            ks in prop::collection::vec(key_strategy(), 1..20),
        ) {
            let mut out = bytes::BytesMut::new();
            crate::protocol::compose::compose_retrieval(
                &mut out, verb, exptime, ks.iter().map(|k| &k[..]),
            );
            // Long gat lines come in batches; every key comes back once, in order.
            let mut keys = Vec::new();
            let mut got: Vec<Vec<u8>> = Vec::new();
            let mut rest = &out[..];
            let mut first: Option<Request> = None;
            for _ in 0..ks.len() + 1 {
                let p = match &first {
                    None => parse_request(rest, 300, &mut keys),
                    Some(f) => parse_retrieval_more(rest, f, &mut keys),
                };
                let Parsed::Complete(r) = p else {
                    panic!("{out:?}: {p:?}");
                };
                prop_assert_eq!(r.verb, verb);
                let want_exp = if matches!(verb, Verb::Gat | Verb::Gats) { exptime } else { 0 };
                prop_assert_eq!(r.exptime, want_exp);
                got.extend(keys.iter().map(|k| rest[k.clone()].to_vec()));
                rest = &rest[r.consumed..];
                if !r.more {
                    break;
                }
                first = Some(r);
            }
            prop_assert!(rest.is_empty());
            prop_assert!(first.is_none() || matches!(verb, Verb::Gat | Verb::Gats));
            let want: Vec<Vec<u8>> = ks.clone();
            prop_assert_eq!(got, want);
        }
    }
}
