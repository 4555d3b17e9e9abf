//! A meta request's flags, typed: parsed once with the request, read by
//! every module as values instead of scanning the flag bytes again.
//!
//! Must not import `server`, an I/O runtime or the clock.

use super::lex::{parse_i64, parse_u64, words};

/// Which flag letters a meta request carries (`mg key v t q` has `v`, `t`
/// and `q`), and the mode of an `ms` (its `M` token's letter).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MetaFlags {
    /// Bit `i` for letter `A + i` (0..26) and `a + i` (26..52).
    letters: u64,
    /// The `M` flag's mode letter, uppercased; 0 when not given.
    mode: u8,
}

/// A letter's bit, or None for bytes that are not flag letters.
fn bit(c: u8) -> Option<u32> {
    match c {
        b'A'..=b'Z' => Some(u32::from(c - b'A')),
        b'a'..=b'z' => Some(26 + u32::from(c - b'a')),
        _ => None,
    }
}

impl MetaFlags {
    /// The flags part of a meta request line (`v t q O123 MS`). A token's
    /// first byte is its flag, as memcached reads it.
    pub fn parse(flags: &[u8]) -> MetaFlags {
        let mut m = MetaFlags::default();
        for w in words(flags) {
            let Some((&c, rest)) = w.split_first() else {
                continue;
            };
            if let Some(b) = bit(c) {
                m.letters |= 1 << b;
            }
            if c == b'M' {
                m.mode = rest.first().map_or(0, u8::to_ascii_uppercase);
            }
        }
        m
    }

    /// Whether flag letter `flag` was given.
    pub fn has(self, flag: u8) -> bool {
        bit(flag).is_some_and(|b| self.letters & (1 << b) != 0)
    }

    /// `q`: quiet mode (the expected answer is left out).
    pub fn quiet(self) -> bool {
        self.has(b'q')
    }

    /// `b`: the key is base64 (a binary key).
    pub fn base64_key(self) -> bool {
        self.has(b'b')
    }

    /// `C`: a compare-and-swap token was given.
    pub fn cas(self) -> bool {
        self.has(b'C')
    }

    /// `I`: invalidate mode.
    pub fn invalidate(self) -> bool {
        self.has(b'I')
    }

    /// The `ms` mode letter, uppercased: `S` (set) when no `M` was given.
    pub fn mode(self) -> u8 {
        if self.mode == 0 {
            b'S'
        } else {
            self.mode
        }
    }
}

/// The values a meta reply carries in its flags (`VA 2 f30 t-1 c99`),
/// parsed once: client flags, remaining TTL, CAS. A flag given twice counts
/// once, its first time.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReplyValues {
    /// `f`: the client flags.
    pub client_flags: Option<u64>,
    /// `t`: the remaining TTL in seconds (`-1`: none).
    pub ttl: Option<i64>,
    /// `c`: the CAS value.
    pub cas: Option<u64>,
}

impl ReplyValues {
    /// The flags part of a meta reply line (after its code, e.g. `2 f30 c9`
    /// of `VA 2 f30 c9`; a leading size token is not a flag and is skipped).
    pub fn parse(flags: &[u8]) -> ReplyValues {
        let mut v = ReplyValues::default();
        for w in words(flags) {
            match w.split_first() {
                Some((b'f', n)) if v.client_flags.is_none() => v.client_flags = parse_u64(n),
                Some((b't', n)) if v.ttl.is_none() => v.ttl = parse_i64(n),
                Some((b'c', n)) if v.cas.is_none() => v.cas = parse_u64(n),
                _ => {}
            }
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reply_values_are_read_once() {
        let v = ReplyValues::parse(b"2 f30 t-1 c99 k b c7");
        assert_eq!(
            v,
            ReplyValues {
                client_flags: Some(30),
                ttl: Some(-1),
                cas: Some(99),
            }
        );
        assert_eq!(ReplyValues::parse(b""), ReplyValues::default());
        assert_eq!(ReplyValues::parse(b"fx c-1").client_flags, None);
        assert_eq!(ReplyValues::parse(b"fx c-1").cas, None);
    }

    #[test]
    fn flags_are_read_once_as_memcached_reads_them() {
        let m = MetaFlags::parse(b"v t q O123 b Ma C99 ");
        for f in *b"vtqObMC" {
            assert!(m.has(f), "{}", f as char);
        }
        for f in *b"kIsfNTEx1 " {
            assert!(!m.has(f), "{}", f as char);
        }
        assert!(m.quiet() && m.base64_key() && m.cas() && !m.invalidate());
        assert_eq!(m.mode(), b'A');
        assert_eq!(MetaFlags::parse(b"").mode(), b'S');
        assert_eq!(MetaFlags::parse(b"I T30"), MetaFlags::parse(b"  T30   I"));
        assert!(!MetaFlags::parse(b"").has(b'q'));
    }
}
