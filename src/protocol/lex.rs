//! The protocol's number lexer: the one pair of decimal parsers every
//! module uses, with memcached's `strtoull`/`strtol` semantics as its
//! `safe_strtoull`/`safe_strtol` apply them (a whole token, an optional
//! sign, no overflow, nothing trailing).
//!
//! Must not import `server`, an I/O runtime or the clock.

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
        for (tok, want) in unsigned {
            assert_eq!(parse_u64(tok), *want, "{:?}", String::from_utf8_lossy(tok));
        }
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
        for (tok, want) in signed {
            assert_eq!(parse_i64(tok), *want, "{:?}", String::from_utf8_lossy(tok));
        }
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
