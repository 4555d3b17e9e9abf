//! The memcached text and meta protocol, sans-IO.
//!
//! Owns: parsing client requests ([`request`]), framing upstream responses
//! ([`response`]) and composing wire bytes ([`compose`]). It must not import
//! `server`, an I/O runtime or the clock: the load generator reuses it as
//! its client codec.
//!
//! Parsers never copy and never allocate: they return byte ranges into the
//! caller's buffer plus how many bytes were consumed. `Incomplete` is a normal
//! state, not an error.

pub mod binary;
pub mod compose;
pub mod matching;
pub mod metadump;
pub mod request;
pub mod response;

pub use request::{parse_request, ParseError, Parsed, Request, Verb};
pub use response::{
    frame_response, reply_size_hint, Expect, FrameError, Framed, Status, ValueItem,
};

/// Longest key memcached accepts.
pub const MAX_KEY_LEN: usize = 250;

/// Longest command line (terminator included) the parser looks at. A longer
/// retrieval line is served in batches of keys that each fit in this window
/// (memcached has no key-count limit); any other longer line closes the
/// connection, as framing is lost.
pub const MAX_LINE_LEN: usize = 64 * 1024;
