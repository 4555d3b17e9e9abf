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

#![deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod binary;
pub mod compose;
pub mod lex;
pub mod matching;
pub mod meta;
pub mod metadump;
pub mod request;
pub mod response;

pub use lex::{parse_i64, parse_u64};
pub use meta::{MetaFlags, ReplyValues};
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

/// Drop `n` written bytes from the front of a queue of wire buffers (what a
/// partial vectored send leaves: the next send resumes at the exact byte).
pub fn advance_queue(q: &mut std::collections::VecDeque<bytes::Bytes>, mut n: usize) {
    use bytes::Buf;
    // Bounded by the queue: every pass pops a buffer or returns.
    while n > 0 {
        let Some(front) = q.front_mut() else {
            return;
        };
        if front.len() <= n {
            n -= front.len();
            q.pop_front();
        } else {
            front.advance(n);
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use bytes::Bytes;

    use super::advance_queue;

    #[test]
    fn advance_resumes_partial_writes_exactly() {
        let mut q: VecDeque<Bytes> = ["abc", "de", "fghij"]
            .iter()
            .map(|s| Bytes::from_static(s.as_bytes()))
            .collect();
        advance_queue(&mut q, 4);
        assert_eq!(
            q,
            vec![Bytes::from_static(b"e"), Bytes::from_static(b"fghij")]
        );
        advance_queue(&mut q, 3);
        assert_eq!(q, vec![Bytes::from_static(b"hij")]);
        advance_queue(&mut q, 3);
        assert!(q.is_empty());
        advance_queue(&mut q, 1);
        assert!(q.is_empty());
    }
}
