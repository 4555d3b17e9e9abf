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
        matches!(self, Status::Error | Status::ClientError | Status::ServerError)
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
pub fn frame_response(
    expect: Expect,
    buf: &[u8],
    max_value: usize,
    items: &mut Vec<ValueItem>,
) -> Result<Framed, FrameError> {
    let _ = (expect, buf, max_value, items);
    todo!("protocol helper implements")
}
