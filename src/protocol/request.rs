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
}

impl Verb {
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
    /// Client flags of storage commands.
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
    /// Meta commands: range of the flags part of the line (everything after
    /// the key, or after the datalen for `ms`), without the terminator.
    pub meta_flags: Range<usize>,
    /// Whether the line was terminated by `\r\n` (true) or a bare `\n`.
    pub crlf: bool,
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
    /// Unknown command word: answer `ERROR\r\n`, skip `consumed` bytes (the line).
    UnknownCommand {
        /// Bytes to skip.
        consumed: usize,
    },
    /// Malformed line or key: answer `CLIENT_ERROR <msg>\r\n`, skip `consumed`
    /// bytes (the line, plus the data block when its length was readable and
    /// the block is complete, e.g. "bad data chunk").
    Client {
        /// Bytes to skip.
        consumed: usize,
        /// The message after `CLIENT_ERROR `.
        msg: &'static str,
    },
    /// A storage command whose value exceeds `max_item_size`: answer
    /// `SERVER_ERROR object too large for cache\r\n` and swallow `skip` bytes
    /// (line + data + 2), which may be more than is buffered yet.
    TooLarge {
        /// Bytes to swallow, possibly beyond the current buffer.
        skip: usize,
    },
    /// No line terminator within [`super::MAX_LINE_LEN`]: answer
    /// `CLIENT_ERROR line too long\r\n` and close the connection.
    LineTooLong,
}

/// Parse one request from the front of `buf`.
///
/// Retrieval keys are appended to `keys` (cleared first) as ranges into `buf`.
/// `max_item_size` bounds data blocks. Never panics, never allocates beyond
/// `keys`' capacity growth, never copies.
pub fn parse_request(buf: &[u8], max_item_size: usize, keys: &mut Vec<Range<usize>>) -> Parsed {
    let _ = (buf, max_item_size, keys);
    todo!("protocol helper implements")
}
