//! memcached's binary protocol, sans-IO: request frame parser and frame
//! composer (responses, and requests for clients and tests).
//!
//! # Format
//! Every frame is a 24-byte header followed by a body of `extras`, `key` and
//! `value`, in that order; integers are big-endian.
//! ```text
//! byte  0      1       2..4    4       5         6..8              8..12     12..16  16..24
//!       magic  opcode  keylen  extlen  datatype  vbucket|status    bodylen   opaque  cas
//! magic: 0x80 request, 0x81 response; bodylen = extlen + keylen + value length
//! ```
//!
//! # Bad frames, as memcached 1.6 answers them
//! Checked from the header alone, before the body is buffered, in memcached's
//! order:
//! - magic other than 0x80: the connection is closed without an answer;
//! - `keylen + extlen > bodylen`: "Unknown command", then close;
//! - key longer than 250 bytes: "Invalid arguments", then close;
//! - a known opcode with the wrong extras/key/body shape: "Invalid arguments",
//!   then close (memcached's `handle_binary_protocol_error`);
//! - a storage value over the item size limit: "Too large.", the body is
//!   swallowed and the connection stays in sync;
//! - an unknown opcode (and SASL, which memcached without SASL does not
//!   serve): "Unknown command", the body is swallowed.
//!
//! Must not import `server`, tokio or the clock.

use std::ops::Range;

use bytes::{BufMut, BytesMut};

use super::MAX_KEY_LEN;

/// Magic byte of a request frame; a connection whose first byte is this speaks binary.
pub const REQUEST_MAGIC: u8 = 0x80;
/// Magic byte of a response frame.
pub const RESPONSE_MAGIC: u8 = 0x81;
/// Length of the fixed header.
pub const HEADER_LEN: usize = 24;

/// Every opcode of memcached 1.6's binary protocol that memring knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Opcode {
    /// 0x00
    Get = 0x00,
    /// 0x01
    Set = 0x01,
    /// 0x02
    Add = 0x02,
    /// 0x03
    Replace = 0x03,
    /// 0x04
    Delete = 0x04,
    /// 0x05
    Increment = 0x05,
    /// 0x06
    Decrement = 0x06,
    /// 0x07
    Quit = 0x07,
    /// 0x08
    Flush = 0x08,
    /// 0x09
    GetQ = 0x09,
    /// 0x0a
    NoOp = 0x0a,
    /// 0x0b
    Version = 0x0b,
    /// 0x0c
    GetK = 0x0c,
    /// 0x0d
    GetKQ = 0x0d,
    /// 0x0e
    Append = 0x0e,
    /// 0x0f
    Prepend = 0x0f,
    /// 0x10
    Stat = 0x10,
    /// 0x11
    SetQ = 0x11,
    /// 0x12
    AddQ = 0x12,
    /// 0x13
    ReplaceQ = 0x13,
    /// 0x14
    DeleteQ = 0x14,
    /// 0x15
    IncrementQ = 0x15,
    /// 0x16
    DecrementQ = 0x16,
    /// 0x17
    QuitQ = 0x17,
    /// 0x18
    FlushQ = 0x18,
    /// 0x19
    AppendQ = 0x19,
    /// 0x1a
    PrependQ = 0x1a,
    /// 0x1b
    Verbosity = 0x1b,
    /// 0x1c
    Touch = 0x1c,
    /// 0x1d
    Gat = 0x1d,
    /// 0x1e
    GatQ = 0x1e,
    /// 0x20
    SaslListMechs = 0x20,
    /// 0x21
    SaslAuth = 0x21,
    /// 0x22
    SaslStep = 0x22,
    /// 0x23
    GatK = 0x23,
    /// 0x24
    GatKQ = 0x24,
}

impl Opcode {
    /// The opcode for a wire byte, if memring knows it.
    pub fn from_u8(b: u8) -> Option<Opcode> {
        use Opcode::*;
        Some(match b {
            0x00 => Get,
            0x01 => Set,
            0x02 => Add,
            0x03 => Replace,
            0x04 => Delete,
            0x05 => Increment,
            0x06 => Decrement,
            0x07 => Quit,
            0x08 => Flush,
            0x09 => GetQ,
            0x0a => NoOp,
            0x0b => Version,
            0x0c => GetK,
            0x0d => GetKQ,
            0x0e => Append,
            0x0f => Prepend,
            0x10 => Stat,
            0x11 => SetQ,
            0x12 => AddQ,
            0x13 => ReplaceQ,
            0x14 => DeleteQ,
            0x15 => IncrementQ,
            0x16 => DecrementQ,
            0x17 => QuitQ,
            0x18 => FlushQ,
            0x19 => AppendQ,
            0x1a => PrependQ,
            0x1b => Verbosity,
            0x1c => Touch,
            0x1d => Gat,
            0x1e => GatQ,
            0x20 => SaslListMechs,
            0x21 => SaslAuth,
            0x22 => SaslStep,
            0x23 => GatK,
            0x24 => GatKQ,
            _ => return None,
        })
    }

    /// The quiet variant's loud counterpart (`SetQ` -> `Set`); itself otherwise.
    pub fn loud(self) -> Opcode {
        use Opcode::*;
        match self {
            GetQ => Get,
            GetKQ => GetK,
            SetQ => Set,
            AddQ => Add,
            ReplaceQ => Replace,
            DeleteQ => Delete,
            IncrementQ => Increment,
            DecrementQ => Decrement,
            QuitQ => Quit,
            FlushQ => Flush,
            AppendQ => Append,
            PrependQ => Prepend,
            GatQ => Gat,
            GatKQ => GatK,
            other => other,
        }
    }

    /// Whether this is a quiet variant: gets say nothing on a miss, the
    /// others nothing on success; errors are always answered.
    pub fn is_quiet(self) -> bool {
        self.loud() != self
    }

    /// Set, Add, Replace, Append, Prepend and their quiet forms: a value follows the key.
    pub fn is_storage(self) -> bool {
        use Opcode::*;
        matches!(self.loud(), Set | Add | Replace | Append | Prepend)
    }

    /// Get, GetK, GAT, GATK and their quiet forms.
    pub fn is_get(self) -> bool {
        use Opcode::*;
        matches!(self.loud(), Get | GetK | Gat | GatK)
    }

    /// Whether a hit's response echoes the key (GetK, GATK and their quiet forms).
    pub fn returns_key(self) -> bool {
        matches!(self.loud(), Opcode::GetK | Opcode::GatK)
    }

    /// Whether the request's body has memcached's shape for this opcode
    /// (`dispatch_bin_command`'s checks, plus: no value where none is read).
    fn shape_ok(self, extras: usize, key: usize, body: usize) -> bool {
        use Opcode::*;
        let no_value = body == extras + key;
        match self.loud() {
            Version | NoOp | Quit | SaslListMechs => extras == 0 && key == 0 && body == 0,
            Flush => key == 0 && no_value && (extras == 0 || extras == 4),
            Set | Add | Replace => extras == 8 && key != 0,
            Append | Prepend => extras == 0 && key != 0,
            Get | GetK | Delete => extras == 0 && key != 0 && no_value,
            Increment | Decrement => extras == 20 && key != 0 && no_value,
            Stat => extras == 0 && no_value,
            Verbosity => extras == 4 && key == 0 && no_value,
            Touch | Gat | GatK => extras == 4 && key != 0 && no_value,
            SaslAuth | SaslStep => extras == 0 && key != 0,
            // Quiet forms were mapped by `loud`.
            _ => false,
        }
    }
}

/// Response status codes (memcached's `protocol_binary_response_status`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum Status {
    /// 0x0000
    Success = 0x0000,
    /// 0x0001
    KeyNotFound = 0x0001,
    /// 0x0002
    KeyExists = 0x0002,
    /// 0x0003
    TooLarge = 0x0003,
    /// 0x0004
    InvalidArguments = 0x0004,
    /// 0x0005
    NotStored = 0x0005,
    /// 0x0006
    NonNumeric = 0x0006,
    /// 0x0081
    UnknownCommand = 0x0081,
    /// 0x0082
    OutOfMemory = 0x0082,
    /// 0x0084: memring's answer when no server could serve the request.
    InternalError = 0x0084,
}

impl Status {
    /// The body memcached sends with this error status (`write_bin_error`).
    pub fn message(self) -> &'static [u8] {
        match self {
            Status::Success => b"",
            Status::KeyNotFound => b"Not found",
            Status::KeyExists => b"Data exists for key.",
            Status::TooLarge => b"Too large.",
            Status::InvalidArguments => b"Invalid arguments",
            Status::NotStored => b"Not stored.",
            Status::NonNumeric => b"Non-numeric server-side value for incr or decr",
            Status::UnknownCommand => b"Unknown command",
            Status::OutOfMemory => b"Out of memory",
            Status::InternalError => b"Internal error",
        }
    }
}

/// A decoded 24-byte header (request or response).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// 0x80 request, 0x81 response.
    pub magic: u8,
    /// The opcode byte, known or not.
    pub opcode: u8,
    /// Key length.
    pub key_len: u16,
    /// Extras length.
    pub extras_len: u8,
    /// Data type (always 0, raw bytes).
    pub data_type: u8,
    /// vbucket id in a request, status in a response.
    pub vbucket_or_status: u16,
    /// Extras + key + value length.
    pub body_len: u32,
    /// Echoed back unchanged in the response.
    pub opaque: u32,
    /// CAS: a compare-and-swap token in, the item's token out.
    pub cas: u64,
}

impl Header {
    /// Decode the first 24 bytes of `buf`; `None` when fewer are there.
    pub fn decode(buf: &[u8]) -> Option<Header> {
        let h: &[u8; HEADER_LEN] = buf.get(..HEADER_LEN)?.try_into().ok()?;
        Some(Header {
            magic: h[0],
            opcode: h[1],
            key_len: u16::from_be_bytes([h[2], h[3]]),
            extras_len: h[4],
            data_type: h[5],
            vbucket_or_status: u16::from_be_bytes([h[6], h[7]]),
            body_len: u32::from_be_bytes([h[8], h[9], h[10], h[11]]),
            opaque: u32::from_be_bytes([h[12], h[13], h[14], h[15]]),
            cas: u64::from_be_bytes([h[16], h[17], h[18], h[19], h[20], h[21], h[22], h[23]]),
        })
    }

    /// Append the 24 header bytes.
    pub fn encode(&self, out: &mut BytesMut) {
        out.reserve(HEADER_LEN);
        out.put_u8(self.magic);
        out.put_u8(self.opcode);
        out.put_u16(self.key_len);
        out.put_u8(self.extras_len);
        out.put_u8(self.data_type);
        out.put_u16(self.vbucket_or_status);
        out.put_u32(self.body_len);
        out.put_u32(self.opaque);
        out.put_u64(self.cas);
    }
}

/// One complete, well-shaped request frame; ranges index the parsed buffer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    /// The header.
    pub header: Header,
    /// The opcode (only known opcodes make a `Frame`).
    pub opcode: Opcode,
    /// Bytes the frame occupies: 24 + body.
    pub consumed: usize,
    /// The extras.
    pub extras: Range<usize>,
    /// The key.
    pub key: Range<usize>,
    /// The value.
    pub value: Range<usize>,
}

/// How to answer a frame that cannot be served.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BadFrame {
    /// Not a request magic: close the connection without an answer.
    BadMagic,
    /// Answer `status` (with its message) to `opcode`/`opaque`, then skip
    /// `skip` bytes (the whole frame, possibly more than is buffered yet) and
    /// close the connection if `close`.
    Reject {
        /// The request's opcode byte, echoed in the answer.
        opcode: u8,
        /// The request's opaque, echoed in the answer.
        opaque: u32,
        /// The error status.
        status: Status,
        /// Bytes to skip: header and body.
        skip: usize,
        /// Framing cannot be trusted: close after the answer.
        close: bool,
    },
}

/// Outcome of parsing the front of a buffer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ParsedFrame {
    /// A complete request.
    Complete(Frame),
    /// More bytes are needed. Not an error.
    Incomplete,
    /// A bad frame, decided from its header alone.
    Error(BadFrame),
}

/// Parse one request frame from the front of `buf`.
///
/// Limits are judged from the header before the body is waited for, so a
/// client cannot make the caller buffer more than `max_item_size` plus a
/// storage frame's extras and key. Never panics and never copies.
pub fn parse_request(buf: &[u8], max_item_size: usize) -> ParsedFrame {
    let Some(header) = Header::decode(buf) else {
        return match buf.first() {
            Some(&m) if m != REQUEST_MAGIC => ParsedFrame::Error(BadFrame::BadMagic),
            _ => ParsedFrame::Incomplete,
        };
    };
    if header.magic != REQUEST_MAGIC {
        return ParsedFrame::Error(BadFrame::BadMagic);
    }
    let extras = usize::from(header.extras_len);
    let key = usize::from(header.key_len);
    let body = header.body_len as usize;
    let skip = HEADER_LEN.saturating_add(body);
    let reject = |status: Status, close: bool| {
        ParsedFrame::Error(BadFrame::Reject {
            opcode: header.opcode,
            opaque: header.opaque,
            status,
            skip,
            close,
        })
    };
    if key + extras > body {
        return reject(Status::UnknownCommand, true);
    }
    if key > MAX_KEY_LEN {
        return reject(Status::InvalidArguments, true);
    }
    let Some(opcode) = Opcode::from_u8(header.opcode) else {
        return reject(Status::UnknownCommand, false);
    };
    if matches!(
        opcode,
        Opcode::SaslListMechs | Opcode::SaslAuth | Opcode::SaslStep
    ) {
        return reject(Status::UnknownCommand, false);
    }
    if !opcode.shape_ok(extras, key, body) {
        return reject(Status::InvalidArguments, true);
    }
    if opcode.is_storage() && body - extras - key > max_item_size {
        return reject(Status::TooLarge, false);
    }
    if buf.len() < skip {
        return ParsedFrame::Incomplete;
    }
    let e = HEADER_LEN + extras;
    let k = e + key;
    ParsedFrame::Complete(Frame {
        header,
        opcode,
        consumed: skip,
        extras: HEADER_LEN..e,
        key: e..k,
        value: k..skip,
    })
}

/// One response frame; ranges index the parsed buffer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResponseFrame {
    /// The header (`vbucket_or_status` is the status).
    pub header: Header,
    /// Bytes the frame occupies.
    pub consumed: usize,
    /// The extras.
    pub extras: Range<usize>,
    /// The key.
    pub key: Range<usize>,
    /// The value (the error message for an error status).
    pub value: Range<usize>,
}

/// Outcome of parsing a response frame from the front of a buffer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ParsedResponse {
    /// A complete response.
    Complete(ResponseFrame),
    /// More bytes are needed. Not an error.
    Incomplete,
    /// The bytes are not a response frame (a wrong magic, or lengths that
    /// do not add up).
    NotAResponse,
}

/// Parse one response frame (the client side of the codec, used by tests and
/// load generators).
pub fn parse_response(buf: &[u8]) -> ParsedResponse {
    let Some(header) = Header::decode(buf) else {
        return ParsedResponse::Incomplete;
    };
    let extras = usize::from(header.extras_len);
    let key = usize::from(header.key_len);
    let body = header.body_len as usize;
    if header.magic != RESPONSE_MAGIC || extras + key > body {
        return ParsedResponse::NotAResponse;
    }
    let end = HEADER_LEN.saturating_add(body);
    if buf.len() < end {
        return ParsedResponse::Incomplete;
    }
    let e = HEADER_LEN + extras;
    let k = e + key;
    ParsedResponse::Complete(ResponseFrame {
        header,
        consumed: end,
        extras: HEADER_LEN..e,
        key: e..k,
        value: k..end,
    })
}

/// Append a frame with `magic`. Lengths that do not fit the header's
/// fields are clamped (a caller bug, never network input: keys are at most
/// 250 bytes and values at most the item size limit).
#[allow(clippy::too_many_arguments)]
fn compose_frame(
    out: &mut BytesMut,
    magic: u8,
    opcode: u8,
    status: u16,
    opaque: u32,
    cas: u64,
    extras: &[u8],
    key: &[u8],
    value: &[u8],
) {
    let body = extras.len() + key.len() + value.len();
    Header {
        magic,
        opcode,
        key_len: u16::try_from(key.len()).unwrap_or(u16::MAX),
        extras_len: u8::try_from(extras.len()).unwrap_or(u8::MAX),
        data_type: 0,
        vbucket_or_status: status,
        body_len: u32::try_from(body).unwrap_or(u32::MAX),
        opaque,
        cas,
    }
    .encode(out);
    out.reserve(body);
    out.extend_from_slice(extras);
    out.extend_from_slice(key);
    out.extend_from_slice(value);
}

/// Append a response frame.
#[allow(clippy::too_many_arguments)]
pub fn compose_response(
    out: &mut BytesMut,
    opcode: u8,
    status: Status,
    opaque: u32,
    cas: u64,
    extras: &[u8],
    key: &[u8],
    value: &[u8],
) {
    compose_frame(
        out,
        RESPONSE_MAGIC,
        opcode,
        status as u16,
        opaque,
        cas,
        extras,
        key,
        value,
    );
}

/// Append an error response: `status` with memcached's message as the body.
pub fn compose_error(out: &mut BytesMut, opcode: u8, status: Status, opaque: u32) {
    compose_response(out, opcode, status, opaque, 0, b"", b"", status.message());
}

/// Append a request frame (the client side of the codec).
pub fn compose_request(
    out: &mut BytesMut,
    opcode: Opcode,
    opaque: u32,
    cas: u64,
    extras: &[u8],
    key: &[u8],
    value: &[u8],
) {
    compose_frame(
        out,
        REQUEST_MAGIC,
        opcode as u8,
        0,
        opaque,
        cas,
        extras,
        key,
        value,
    );
}

/// One request frame as its own buffer (clients and tests).
pub fn request_frame(
    opcode: Opcode,
    opaque: u32,
    cas: u64,
    extras: &[u8],
    key: &[u8],
    value: &[u8],
) -> Vec<u8> {
    let mut out = BytesMut::new();
    compose_request(&mut out, opcode, opaque, cas, extras, key, value);
    out.to_vec()
}

/// The extras of a set, add or replace request: flags, exptime.
pub fn storage_extras(flags: u32, exptime: u32) -> [u8; 8] {
    let mut e = [0u8; 8];
    e[..4].copy_from_slice(&flags.to_be_bytes());
    e[4..].copy_from_slice(&exptime.to_be_bytes());
    e
}

/// The extras of an increment or decrement request: delta, initial value,
/// exptime.
pub fn arithmetic_extras(delta: u64, initial: u64, exptime: u32) -> [u8; 20] {
    let mut e = [0u8; 20];
    e[..8].copy_from_slice(&delta.to_be_bytes());
    e[8..16].copy_from_slice(&initial.to_be_bytes());
    e[16..].copy_from_slice(&exptime.to_be_bytes());
    e
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MAX_ITEM: usize = 1024;

    use super::request_frame as req;
    use super::storage_extras as set_extras;

    /// The exact bytes of a get request, as memcached's protocol_binary.h lays them out.
    #[test]
    fn get_request_bytes() {
        let wire = req(Opcode::Get, 0xdeadbeef, 0, b"", b"foo", b"");
        assert_eq!(
            wire,
            [
                0x80, 0x00, 0x00, 0x03, 0x00, 0x00, 0x00,
                0x00, // magic op keylen extlen dt vb
                0x00, 0x00, 0x00, 0x03, 0xde, 0xad, 0xbe, 0xef, // bodylen opaque
                0, 0, 0, 0, 0, 0, 0, 0, b'f', b'o', b'o',
            ]
        );
        let ParsedFrame::Complete(f) = parse_request(&wire, MAX_ITEM) else {
            panic!("not complete");
        };
        assert_eq!(f.opcode, Opcode::Get);
        assert_eq!(f.consumed, 27);
        assert_eq!(&wire[f.key.clone()], b"foo");
        assert!(f.extras.is_empty() && f.value.is_empty());
        assert_eq!(f.header.opaque, 0xdeadbeef);
    }

    /// memcached's own "Not found" answer to a get miss, byte for byte.
    #[test]
    fn error_response_bytes() {
        let mut out = BytesMut::new();
        compose_error(&mut out, 0x00, Status::KeyNotFound, 7);
        assert_eq!(
            &out[..],
            b"\x81\x00\x00\x00\x00\x00\x00\x01\x00\x00\x00\x09\x00\x00\x00\x07\
              \x00\x00\x00\x00\x00\x00\x00\x00Not found"
        );
    }

    /// Every opcode with a well-shaped body parses, with its ranges.
    #[test]
    fn table_of_valid_frames() {
        let se = set_extras(5, 0);
        let incr = [0u8; 20];
        let four = [0, 0, 0, 9];
        type Row<'a> = (Opcode, &'a [u8], &'a [u8], &'a [u8]);
        let table: &[Row] = &[
            (Opcode::Get, b"", b"k", b""),
            (Opcode::GetQ, b"", b"k", b""),
            (Opcode::GetK, b"", b"k", b""),
            (Opcode::GetKQ, b"", b"k", b""),
            (Opcode::Set, &se, b"k", b"value"),
            (Opcode::SetQ, &se, b"k", b""),
            (Opcode::Add, &se, b"k", b"v"),
            (Opcode::AddQ, &se, b"k", b"v"),
            (Opcode::Replace, &se, b"k", b"v"),
            (Opcode::ReplaceQ, &se, b"k", b"v"),
            (Opcode::Append, b"", b"k", b"v"),
            (Opcode::AppendQ, b"", b"k", b"v"),
            (Opcode::Prepend, b"", b"k", b"v"),
            (Opcode::PrependQ, b"", b"k", b"v"),
            (Opcode::Delete, b"", b"k", b""),
            (Opcode::DeleteQ, b"", b"k", b""),
            (Opcode::Increment, &incr, b"k", b""),
            (Opcode::IncrementQ, &incr, b"k", b""),
            (Opcode::Decrement, &incr, b"k", b""),
            (Opcode::DecrementQ, &incr, b"k", b""),
            (Opcode::Quit, b"", b"", b""),
            (Opcode::QuitQ, b"", b"", b""),
            (Opcode::Flush, b"", b"", b""),
            (Opcode::Flush, &four, b"", b""),
            (Opcode::FlushQ, &four, b"", b""),
            (Opcode::NoOp, b"", b"", b""),
            (Opcode::Version, b"", b"", b""),
            (Opcode::Stat, b"", b"", b""),
            (Opcode::Stat, b"", b"items", b""),
            (Opcode::Verbosity, &four, b"", b""),
            (Opcode::Touch, &four, b"k", b""),
            (Opcode::Gat, &four, b"k", b""),
            (Opcode::GatQ, &four, b"k", b""),
            (Opcode::GatK, &four, b"k", b""),
            (Opcode::GatKQ, &four, b"k", b""),
        ];
        for &(op, extras, key, value) in table {
            let wire = req(op, 1, 2, extras, key, value);
            match parse_request(&wire, MAX_ITEM) {
                ParsedFrame::Complete(f) => {
                    assert_eq!(f.opcode, op);
                    assert_eq!(f.consumed, wire.len(), "{op:?}");
                    assert_eq!(&wire[f.extras.clone()], extras, "{op:?}");
                    assert_eq!(&wire[f.key.clone()], key, "{op:?}");
                    assert_eq!(&wire[f.value.clone()], value, "{op:?}");
                    assert_eq!(f.header.cas, 2);
                }
                other => panic!("{op:?}: {other:?}"),
            }
            // Split points: every strict prefix is Incomplete.
            for cut in 0..wire.len() {
                assert_eq!(
                    parse_request(&wire[..cut], MAX_ITEM),
                    ParsedFrame::Incomplete,
                    "{op:?} cut at {cut}"
                );
            }
        }
    }

    fn rejected(wire: &[u8]) -> (Status, usize, bool) {
        match parse_request(wire, MAX_ITEM) {
            ParsedFrame::Error(BadFrame::Reject {
                status,
                skip,
                close,
                ..
            }) => (status, skip, close),
            other => panic!("not rejected: {other:?}"),
        }
    }

    #[test]
    fn bad_frames_are_judged_from_the_header() {
        // Wrong magic, even before the header is whole.
        assert_eq!(
            parse_request(b"get a\r\n", MAX_ITEM),
            ParsedFrame::Error(BadFrame::BadMagic)
        );
        assert_eq!(
            parse_request(&[0x81], MAX_ITEM),
            ParsedFrame::Error(BadFrame::BadMagic)
        );
        // Key + extras longer than the body: unknown command, close.
        let mut wire = req(Opcode::Get, 0, 0, b"", b"abc", b"");
        wire[11] = 2;
        assert_eq!(
            rejected(&wire[..HEADER_LEN]),
            (Status::UnknownCommand, 26, true)
        );
        // Key of 250 is fine, 251 is not (judged before the key arrives).
        let k250 = vec![b'k'; 250];
        let wire = req(Opcode::Get, 0, 0, b"", &k250, b"");
        assert!(matches!(
            parse_request(&wire, MAX_ITEM),
            ParsedFrame::Complete(_)
        ));
        let k251 = vec![b'k'; 251];
        let wire = req(Opcode::Get, 0, 0, b"", &k251, b"");
        assert_eq!(
            rejected(&wire[..HEADER_LEN]),
            (Status::InvalidArguments, HEADER_LEN + 251, true)
        );
        // Value at the limit is fine; one byte over is too large, swallowed, not closed.
        let se = set_extras(0, 0);
        let v = vec![b'v'; MAX_ITEM];
        let wire = req(Opcode::Set, 0, 0, &se, b"k", &v);
        assert!(matches!(
            parse_request(&wire, MAX_ITEM),
            ParsedFrame::Complete(_)
        ));
        let v = vec![b'v'; MAX_ITEM + 1];
        let wire = req(Opcode::SetQ, 0, 0, &se, b"k", &v);
        assert_eq!(
            rejected(&wire[..HEADER_LEN]),
            (Status::TooLarge, wire.len(), false)
        );
        // A 4 GB body on a get: wrong shape, invalid arguments, close.
        let mut wire = req(Opcode::Get, 0, 0, b"", b"k", b"");
        wire[8..12].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(matches!(
            rejected(&wire),
            (Status::InvalidArguments, _, true)
        ));
        // Wrong shapes.
        for (op, extras, key, value) in [
            (Opcode::Get, &b""[..], &b""[..], &b""[..]),
            (Opcode::Get, b"", b"k", b"v"),
            (Opcode::Set, b"", b"k", b"v"),
            (Opcode::Increment, &[0u8; 8][..], b"k", b""),
            (Opcode::Version, b"", b"k", b""),
            (Opcode::NoOp, b"", b"", b"x"),
            (Opcode::Touch, b"", b"k", b""),
            (Opcode::Flush, &[0u8; 3][..], b"", b""),
        ] {
            let wire = req(op, 0, 0, extras, key, value);
            assert_eq!(rejected(&wire).0, Status::InvalidArguments, "{op:?}");
        }
        // Unknown opcodes and SASL: unknown command, body swallowed, connection kept.
        let mut wire = req(Opcode::Get, 0, 0, b"", b"k", b"xyz");
        wire[1] = 0x42;
        assert_eq!(
            rejected(&wire[..HEADER_LEN]),
            (Status::UnknownCommand, wire.len(), false)
        );
        let wire = req(Opcode::SaslListMechs, 0, 0, b"", b"", b"");
        assert_eq!(rejected(&wire), (Status::UnknownCommand, HEADER_LEN, false));
        let wire = req(Opcode::SaslAuth, 0, 0, b"", b"PLAIN", b"\0u\0p");
        assert_eq!(rejected(&wire), (Status::UnknownCommand, wire.len(), false));
    }

    #[test]
    fn quiet_variants() {
        for b in 0..=0xffu8 {
            if let Some(op) = Opcode::from_u8(b) {
                assert_eq!(op as u8, b);
                assert!(!op.loud().is_quiet());
                assert_eq!(op.is_storage(), op.loud().is_storage());
            }
        }
        assert!(Opcode::GetKQ.is_quiet() && Opcode::GetKQ.returns_key());
        assert_eq!(Opcode::GatKQ.loud(), Opcode::GatK);
        assert!(!Opcode::NoOp.is_quiet());
    }

    proptest! {
        #[test]
        fn random_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..200)) {
            let mut rest = &data[..];
            for _ in 0..64 {
                match parse_request(rest, MAX_ITEM) {
                    ParsedFrame::Complete(f) => {
                        prop_assert!(f.consumed >= HEADER_LEN && f.consumed <= rest.len());
                        for r in [&f.extras, &f.key, &f.value] {
                            prop_assert!(r.start <= r.end && r.end <= f.consumed);
                        }
                        rest = &rest[f.consumed..];
                    }
                    ParsedFrame::Error(BadFrame::Reject { skip, close: false, .. }) => {
                        prop_assert!(skip >= HEADER_LEN);
                        rest = &rest[skip.min(rest.len())..];
                    }
                    _ => break,
                }
            }
            let _ = parse_response(&data);
        }

        #[test]
        fn with_magic_never_panics(mut data in proptest::collection::vec(any::<u8>(), 24..400)) {
            data[0] = REQUEST_MAGIC;
            let _ = parse_request(&data, MAX_ITEM);
        }

        #[test]
        fn compose_then_parse_round_trips(
            op in prop::sample::select(vec![Opcode::Set, Opcode::AddQ, Opcode::Append, Opcode::Get, Opcode::GetKQ, Opcode::Delete]),
            opaque in any::<u32>(),
            cas in any::<u64>(),
            key in "[a-z0-9]{1,250}",
            value in proptest::collection::vec(any::<u8>(), 0..300),
            flags in any::<u32>(),
        ) {
            let extras = if matches!(op.loud(), Opcode::Set | Opcode::Add) { set_extras(flags, 3).to_vec() } else { vec![] };
            let value = if op.is_storage() { value } else { vec![] };
            let wire = req(op, opaque, cas, &extras, key.as_bytes(), &value);
            let ParsedFrame::Complete(f) = parse_request(&wire, MAX_ITEM) else {
                return Err(TestCaseError::fail("not complete"));
            };
            prop_assert_eq!(f.opcode, op);
            prop_assert_eq!(f.header.opaque, opaque);
            prop_assert_eq!(f.header.cas, cas);
            prop_assert_eq!(&wire[f.extras.clone()], &extras[..]);
            prop_assert_eq!(&wire[f.key.clone()], key.as_bytes());
            prop_assert_eq!(&wire[f.value.clone()], &value[..]);
            prop_assert_eq!(f.consumed, wire.len());

            let mut out = BytesMut::new();
            compose_response(&mut out, op as u8, Status::Success, opaque, cas, &extras, key.as_bytes(), &value);
            let r = match parse_response(&out) {
                ParsedResponse::Complete(f) => Some(f),
                _ => None,
            };
            prop_assert!(r.is_some());
            let r = r.unwrap_or_else(|| unreachable!());
            prop_assert_eq!(r.header.opaque, opaque);
            prop_assert_eq!(r.header.cas, cas);
            prop_assert_eq!(r.header.vbucket_or_status, 0);
            prop_assert_eq!(&out[r.key.clone()], key.as_bytes());
            prop_assert_eq!(&out[r.value.clone()], &value[..]);
            prop_assert_eq!(r.consumed, out.len());
        }
    }
}
