//! Matching upstream replies to the requests they answer.
//!
//! Replies on a pipelined connection are matched in FIFO order, so a server
//! that sends one reply too many (a bug, a middlebox, a desync after a
//! partial failure) would shift every later reply onto the wrong request,
//! and serve one key's value for another. Two checks catch it:
//! - every `VALUE` of a retrieval reply names a key its request asked for,
//!   in the request's order ([`values_match`]);
//! - a meta request (`mg`, `ms`, `md`, `ma`) without an opaque of its own
//!   carries memring's (`O<n>`, [`meta_tag_point`]), which its reply must
//!   echo; the token is taken out of the reply before anyone sees it
//!   ([`check_meta_tag`], [`strip_token`]).
//!
//! Error lines (`ERROR`, `CLIENT_ERROR`, `SERVER_ERROR`) carry no opaque and
//! are accepted as they come. Owns no I/O and no clock.

use super::lex::words as tokens;
use std::ops::Range;

use bytes::{Buf, BytesMut};

use super::response::ValueItem;

/// A meta request line longer than this goes upstream untagged: the tag
/// must never push a line memcached accepts past one of its limits.
const TAG_MAX_LINE: usize = 1024;

/// A meta request with this many tokens or more goes upstream untagged, far
/// below memcached's 24-token limit for a command line.
const TAG_MAX_TOKENS: usize = 20;

/// The first line of `req` without its terminator, and where the line ends
/// (the offset of its `\r\n` or `\n`). None before the line is complete.
fn first_line(req: &[u8]) -> Option<(&[u8], usize)> {
    let nl = req.iter().position(|&b| b == b'\n')?;
    let end = if nl > 0 && req.get(nl - 1) == Some(&b'\r') {
        nl - 1
    } else {
        nl
    };
    Some((req.get(..end)?, end))
}

/// Where memring's opaque goes in the meta request `req`: the end of its
/// first line, before the terminator. None when the request is not `mg`,
/// `ms`, `md` or `ma` with a key, already carries an `O` flag (memcached
/// refuses a flag given twice; the client's opaque is then echoed as it
/// gave it), or is near one of memcached's line limits.
pub fn meta_tag_point(req: &[u8]) -> Option<usize> {
    let (line, end) = first_line(req)?;
    if line.len() > TAG_MAX_LINE {
        return None;
    }
    let mut words = tokens(line);
    if !matches!(words.next()?, b"mg" | b"ms" | b"md" | b"ma") {
        return None;
    }
    words.next()?; // the key
    let mut n = 2;
    for w in words {
        n += 1;
        if w.first() == Some(&b'O') || n >= TAG_MAX_TOKENS {
            return None;
        }
    }
    Some(end)
}

/// Append memring's opaque ` O<tag>` (what goes at [`meta_tag_point`]).
pub fn compose_meta_tag(out: &mut BytesMut, tag: u32) {
    out.extend_from_slice(b" O");
    super::compose::put_u64(out, u64::from(tag));
}

/// What the reply at the front of a buffer says about the opaque `tag` its
/// request carried.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TagCheck {
    /// Its first line is not complete yet.
    Incomplete,
    /// The line echoes the tag: these bytes (the token and the space before
    /// it) are memring's, to be taken out before the reply is framed.
    Echoed(Range<usize>),
    /// An error line, which carries no opaque.
    ErrorLine,
    /// A reply to some other request: the connection is out of step.
    Mismatch,
}

/// Check the first line of `buf` (a meta reply) for ` O<tag>`. Looks at
/// most at `max_line` bytes for the end of the line (a longer one is left
/// for the framer to refuse).
pub fn check_meta_tag(buf: &[u8], tag: u32, max_line: usize) -> TagCheck {
    let window = buf.get(..max_line.min(buf.len())).unwrap_or_default();
    let Some((line, _)) = first_line(window) else {
        return TagCheck::Incomplete;
    };
    if line.starts_with(b"ERROR")
        || line.starts_with(b"CLIENT_ERROR")
        || line.starts_with(b"SERVER_ERROR")
    {
        return TagCheck::ErrorLine;
    }
    let mut pos = 0;
    // Bounded by the line: each step moves past one token.
    while pos < line.len() {
        let start = pos;
        while pos < line.len() && line[pos] != b' ' {
            pos += 1;
        }
        let word = &line[start..pos];
        if start > 0 && word.first() == Some(&b'O') && is_tag(&word[1..], tag) {
            return TagCheck::Echoed(start - 1..pos);
        }
        pos += 1;
    }
    TagCheck::Mismatch
}

/// Whether `digits` spell `tag` in decimal, without a sign or leading zero.
fn is_tag(digits: &[u8], tag: u32) -> bool {
    if digits.is_empty() || digits.len() > 10 || (digits.len() > 1 && digits[0] == b'0') {
        return false;
    }
    let mut v: u64 = 0;
    for &d in digits {
        if !d.is_ascii_digit() {
            return false;
        }
        v = v * 10 + u64::from(d - b'0');
    }
    v == u64::from(tag)
}

/// Take `r` (within the first line of `buf`) out of `buf` without touching
/// what follows the line: the bytes before `r` move right over it and the
/// buffer's front advances, so a large data block is never copied.
pub fn strip_token(buf: &mut BytesMut, r: Range<usize>) {
    if r.start > r.end || r.end > buf.len() {
        return;
    }
    buf.copy_within(0..r.start, r.end - r.start);
    buf.advance(r.end - r.start);
}

/// Whether every `VALUE` item of a retrieval reply (`items`, ranges into
/// `frame`) names a key the request `req` asked for, in the request's
/// order: memcached answers a `get` with its hits in the order of the keys,
/// and a key asked twice is answered twice. A `gat`/`gats` request's first
/// argument is its exptime, not a key.
pub fn values_match(req: &[u8], frame: &[u8], items: &[ValueItem]) -> bool {
    if items.is_empty() {
        return true;
    }
    let Some((line, _)) = first_line(req) else {
        return false;
    };
    let mut words = tokens(line);
    match words.next() {
        Some(b"get" | b"gets") => {}
        Some(b"gat" | b"gats") => {
            words.next();
        }
        _ => return false,
    }
    let mut keys = words;
    items.iter().all(|item| {
        let Some(got) = frame.get(item.key.clone()) else {
            return false;
        };
        // Bounded by the request's keys: each step consumes one.
        keys.by_ref().any(|k| k == got)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{frame_response, Expect, Framed};

    #[test]
    fn tags_go_at_the_end_of_meta_lines_that_have_none() {
        let cases: &[(&[u8], Option<usize>)] = &[
            (b"mg foo v\r\n", Some(8)),
            (b"mg foo v\n", Some(8)),
            (b"mg foo\r\n", Some(6)),
            (b"ms foo 2 T0\r\nhi\r\n", Some(11)),
            (b"md foo\r\n", Some(6)),
            (b"ma foo N0 J1\r\n", Some(12)),
            // The client's own opaque is echoed as given.
            (b"mg foo v O123\r\n", None),
            // No key: memcached's error answers it, and a tag would be
            // taken for the key.
            (b"mg\r\n", None),
            (b"mn\r\n", None),
            (b"me foo\r\n", None),
            (b"get foo\r\n", None),
            (b"mg foo v", None),
        ];
        for (req, want) in cases {
            assert_eq!(
                meta_tag_point(req),
                *want,
                "{}",
                String::from_utf8_lossy(req)
            );
        }
        let many = format!("mg k {}\r\n", "v ".repeat(TAG_MAX_TOKENS));
        assert_eq!(
            meta_tag_point(many.as_bytes()),
            None,
            "near the token limit"
        );
        let long = format!("mg {}\r\n", "k".repeat(TAG_MAX_LINE));
        assert_eq!(meta_tag_point(long.as_bytes()), None, "near the line limit");
    }

    #[test]
    fn tags_are_composed_in_decimal() {
        for (tag, want) in [(0u32, " O0"), (7, " O7"), (4_294_967_295, " O4294967295")] {
            let mut out = BytesMut::new();
            compose_meta_tag(&mut out, tag);
            assert_eq!(&out[..], want.as_bytes());
        }
    }

    #[test]
    fn echoed_tags_are_found_and_others_are_a_mismatch() {
        let cases: &[(&[u8], u32, TagCheck)] = &[
            (b"HD O7\r\n", 7, TagCheck::Echoed(2..5)),
            (b"EN O12\r\n", 12, TagCheck::Echoed(2..6)),
            (b"VA 2 f0 O9\r\nhi\r\n", 9, TagCheck::Echoed(7..10)),
            (b"VA 2 O9 f0\r\nhi\r\n", 9, TagCheck::Echoed(4..7)),
            (b"HD O7\r\n", 8, TagCheck::Mismatch),
            (b"HD O70\r\n", 7, TagCheck::Mismatch),
            (b"HD O07\r\n", 7, TagCheck::Mismatch),
            (b"HD\r\n", 7, TagCheck::Mismatch),
            (b"O7\r\n", 7, TagCheck::Mismatch),
            (b"VA 2 f0\r\nO7\r\n", 7, TagCheck::Mismatch),
            (b"SERVER_ERROR out of memory\r\n", 7, TagCheck::ErrorLine),
            (b"CLIENT_ERROR bad data chunk\r\n", 7, TagCheck::ErrorLine),
            (b"ERROR\r\n", 7, TagCheck::ErrorLine),
            (b"HD O7", 7, TagCheck::Incomplete),
            (b"", 7, TagCheck::Incomplete),
        ];
        for (buf, tag, want) in cases {
            assert_eq!(
                check_meta_tag(buf, *tag, 8192),
                *want,
                "{}",
                String::from_utf8_lossy(buf)
            );
        }
        assert_eq!(check_meta_tag(b"HD O7\r\n", 7, 4), TagCheck::Incomplete);
    }

    #[test]
    fn stripping_moves_only_the_line_before_the_token() {
        let mut b = BytesMut::from(&b"VA 2 f0 O9\r\nhi\r\nnext"[..]);
        let TagCheck::Echoed(r) = check_meta_tag(&b, 9, 8192) else {
            panic!("tag not found");
        };
        strip_token(&mut b, r);
        assert_eq!(&b[..], b"VA 2 f0\r\nhi\r\nnext");
        let mut b = BytesMut::from(&b"HD O1 c5\r\n"[..]);
        strip_token(&mut b, 2..5);
        assert_eq!(&b[..], b"HD c5\r\n");
        let mut b = BytesMut::from(&b"HD\r\n"[..]);
        strip_token(&mut b, 3..9);
        assert_eq!(&b[..], b"HD\r\n", "out of range: untouched");
    }

    fn items_of(reply: &[u8]) -> Vec<ValueItem> {
        let mut items = Vec::new();
        let framed = frame_response(Expect::Values, reply, 1 << 20, &mut items);
        assert!(matches!(framed, Ok(Framed::Complete { .. })), "{framed:?}");
        items
    }

    #[test]
    fn values_must_name_requested_keys_in_order() {
        let ab = b"VALUE a 0 1\r\nx\r\nVALUE b 0 1\r\ny\r\nEND\r\n";
        let b_only = b"VALUE b 0 1\r\ny\r\nEND\r\n";
        let twice = b"VALUE a 0 1\r\nx\r\nVALUE a 0 1\r\nx\r\nEND\r\n";
        let cases: &[(&[u8], &[u8], bool)] = &[
            (b"get a b\r\n", ab, true),
            (b"gets a b\r\n", ab, true),
            (b"get a c b\r\n", ab, true),
            (b"get b a\r\n", ab, false),
            (b"get a\r\n", ab, false),
            (b"get c\r\n", b_only, false),
            (b"get a\r\n", b"END\r\n", true),
            (b"get a a\r\n", twice, true),
            (b"get a\r\n", twice, false),
            (b"gat 10 b\r\n", b_only, true),
            (b"gats 10 b\r\n", b_only, true),
            // A gat's exptime is not a key.
            (b"gat b c\r\n", b_only, false),
            (b"set b 0 0 1\r\n", b_only, false),
        ];
        for (req, reply, want) in cases {
            assert_eq!(
                values_match(req, reply, &items_of(reply)),
                *want,
                "{} answered by {}",
                String::from_utf8_lossy(req),
                String::from_utf8_lossy(reply)
            );
        }
    }
}
