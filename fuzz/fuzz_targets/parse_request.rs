//! Fuzz the client request parser: never panics, ranges stay inside the
//! buffer, `consumed` never exceeds it, and parsing a whole buffer request by
//! request always makes progress.
#![no_main]

use libfuzzer_sys::fuzz_target;
use memring::protocol::{parse_request, ParseError, Parsed};

fuzz_target!(|data: &[u8]| {
    let mut keys = Vec::new();
    let mut rest = data;
    while !rest.is_empty() {
        let step = match parse_request(rest, 4096, &mut keys) {
            Parsed::Complete(r) => {
                assert!(r.line_len <= r.consumed && r.consumed <= rest.len());
                for k in keys.iter().chain([&r.key, &r.data, &r.meta_flags]) {
                    assert!(k.start <= k.end && k.end <= r.consumed);
                }
                r.consumed
            }
            // A refused storage command's data block may reach beyond the
            // buffer (its line named a length): the rest is swallowed as it
            // arrives.
            Parsed::Error(ParseError::UnknownCommand { consumed })
            | Parsed::Error(ParseError::Client { consumed, .. }) => {
                assert!(consumed > 0);
                if consumed > rest.len() {
                    break;
                }
                consumed
            }
            Parsed::Error(ParseError::TooLarge { skip }) => {
                assert!(skip > 4096);
                skip.min(rest.len())
            }
            // Not a memcached client: the connection closes.
            Parsed::Error(ParseError::LineTooLong | ParseError::Close) | Parsed::Incomplete => break,
        };
        assert!(step > 0);
        rest = &rest[step..];
    }
});
