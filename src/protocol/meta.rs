//! A meta request's flags, typed: parsed once with the request, read by
//! every module as values instead of scanning the flag bytes again.
//!
//! Must not import `server`, an I/O runtime or the clock.

use super::lex::words;

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

#[cfg(test)]
mod tests {
    use super::*;

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
