//! The protocol's lexer: the one tokenizer and the one pair of decimal
//! parsers every module uses.
//!
//! Tokens are split on `' '` only, as memcached's tokenizer does (a tab is
//! part of a token), and runs of spaces count as one. Numbers follow
//! memcached's `strtoull`/`strtol` as its `safe_strtoull`/`safe_strtol`
//! apply them: a whole token, an optional sign, no overflow, nothing
//! trailing.
//!
//! Must not import `server`, an I/O runtime or the clock.

use std::ops::Range;

/// The space-separated words of `line`.
pub fn words(line: &[u8]) -> impl Iterator<Item = &[u8]> {
    line.split(|&b| b == b' ').filter(|w| !w.is_empty())
}

/// `buf[r]`, or nothing for a range outside it (no panic path on input).
pub fn slice(buf: &[u8], r: Range<usize>) -> &[u8] {
    buf.get(r).unwrap_or_default()
}

/// The space-separated tokens of `buf[..end]` (or of a range of it), as
/// ranges into `buf`: the parsers keep ranges, never copies.
#[derive(Clone, Debug)]
pub struct Tokens {
    pos: usize,
    end: usize,
}

impl Tokens {
    /// The tokens of `buf[..end]`.
    pub fn new(end: usize) -> Tokens {
        Tokens { pos: 0, end }
    }

    /// The tokens of `buf[r]`.
    pub fn within(r: Range<usize>) -> Tokens {
        Tokens {
            pos: r.start,
            end: r.end,
        }
    }

    /// Where the next token is looked for.
    pub fn pos(&self) -> usize {
        self.pos
    }

    /// The next token of `buf`.
    pub fn next(&mut self, buf: &[u8]) -> Option<Range<usize>> {
        let line = buf.get(..self.end)?;
        while line.get(self.pos) == Some(&b' ') {
            self.pos += 1;
        }
        if self.pos >= self.end {
            return None;
        }
        let start = self.pos;
        while matches!(line.get(self.pos), Some(&b) if b != b' ') {
            self.pos += 1;
        }
        Some(start..self.pos)
    }

    /// The last remaining token, consuming the tokens.
    pub fn last(mut self, buf: &[u8]) -> Option<Range<usize>> {
        let mut last = None;
        // Bounded by the line: each pass consumes a token.
        while let Some(t) = self.next(buf) {
            last = Some(t);
        }
        last
    }

    /// The remaining tokens as an iterator over `buf`.
    pub fn iter(self, buf: &[u8]) -> impl Iterator<Item = Range<usize>> + '_ {
        let mut t = self;
        std::iter::from_fn(move || t.next(buf))
    }
}

/// An unsigned decimal as `strtoull` takes it: optional `+`, digits, no
/// overflow. (memcached's `safe_strtoull` also refuses a `-`, as here.)
pub fn parse_u64(tok: &[u8]) -> Option<u64> {
    let digits = tok.strip_prefix(b"+").unwrap_or(tok);
    if digits.is_empty() {
        return None;
    }
    digits.iter().try_fold(0u64, |acc, &b| {
        if b.is_ascii_digit() {
            acc.checked_mul(10)?.checked_add(u64::from(b - b'0'))
        } else {
            None
        }
    })
}

/// A signed decimal as `strtol` takes it: optional sign, digits, no
/// overflow; `i64::MIN` parses.
pub fn parse_i64(tok: &[u8]) -> Option<i64> {
    let (neg, digits) = match tok.split_first() {
        Some((b'-', rest)) => (true, rest),
        Some((b'+', rest)) => (false, rest),
        _ => (false, tok),
    };
    if digits.is_empty() {
        return None;
    }
    // Accumulate negatively so that i64::MIN parses.
    let v = digits.iter().try_fold(0i64, |acc, &b| {
        if b.is_ascii_digit() {
            acc.checked_mul(10)?.checked_sub(i64::from(b - b'0'))
        } else {
            None
        }
    })?;
    if neg {
        Some(v)
    } else {
        v.checked_neg()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// memcached's edge cases, as its `safe_strto*` answer them.
    #[test]
    fn decimals_take_what_memcached_takes() {
        let unsigned: &[(&[u8], Option<u64>)] = &[
            (b"0", Some(0)),
            (b"+7", Some(7)),
            (b"007", Some(7)),
            (b"18446744073709551615", Some(u64::MAX)),
            (b"18446744073709551616", None),
            (b"-0", None),
            (b"-1", None),
            (b"", None),
            (b"+", None),
            (b"1x", None),
            (b" 1", None),
            (b"1 ", None),
        ];
        check(parse_u64, unsigned);
        let signed: &[(&[u8], Option<i64>)] = &[
            (b"-9223372036854775808", Some(i64::MIN)),
            (b"9223372036854775807", Some(i64::MAX)),
            (b"9223372036854775808", None),
            (b"-9223372036854775809", None),
            (b"-0", Some(0)),
            (b"+5", Some(5)),
            (b"-1", Some(-1)),
            (b"-", None),
            (b"", None),
            (b"--1", None),
            (b"1.5", None),
        ];
        check(parse_i64, signed);
    }

    fn check<T: PartialEq + std::fmt::Debug>(
        parse: fn(&[u8]) -> Option<T>,
        table: &[(&[u8], Option<T>)],
    ) {
        for (tok, want) in table {
            let shown = String::from_utf8_lossy(tok);
            assert_eq!(parse(tok), *want, "{shown:?}");
        }
    }

    #[test]
    fn tokens_split_on_spaces_only() {
        let line = b"  mg\tkey  v  t ";
        let t: Vec<&[u8]> = Tokens::new(line.len())
            .iter(line)
            .map(|r| slice(line, r))
            .collect();
        assert_eq!(t, vec![&b"mg\tkey"[..], b"v", b"t"]);
        assert_eq!(words(line).collect::<Vec<_>>(), t);
        assert_eq!(Tokens::new(line.len()).last(line), Some(13..14));
        // A range of the line, and a line shorter than its end.
        let t: Vec<_> = Tokens::within(8..12).iter(line).collect();
        assert_eq!(t, vec![10..11]);
        assert_eq!(Tokens::new(99).next(line), None);
        assert_eq!(slice(line, 3..99), b"");
    }

    proptest::proptest! {
        /// Exactly what the standard library's parsers take, for any
        /// short token over the characters that matter.
        #[test]
        fn agrees_with_the_standard_parsers(tok in "[-+0-9a ]{0,22}") {
            proptest::prop_assert_eq!(parse_u64(tok.as_bytes()), tok.parse::<u64>().ok());
            proptest::prop_assert_eq!(parse_i64(tok.as_bytes()), tok.parse::<i64>().ok());
        }
    }
}
