//! Fuzz the number lexer (`protocol::lex`): never panics, and takes exactly
//! what the standard library's decimal parsers take (an optional sign, only
//! digits, in range), which is what memcached's `safe_strtoull` and
//! `safe_strtol` take from a whole token.
#![no_main]

use libfuzzer_sys::fuzz_target;
use memring::protocol::{parse_i64, parse_u64};

fuzz_target!(|data: &[u8]| {
    let std_u64 = std::str::from_utf8(data).ok().and_then(|s| s.parse::<u64>().ok());
    let std_i64 = std::str::from_utf8(data).ok().and_then(|s| s.parse::<i64>().ok());
    assert_eq!(parse_u64(data), std_u64, "{data:?}");
    assert_eq!(parse_i64(data), std_i64, "{data:?}");
});
