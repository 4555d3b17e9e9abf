//! Fuzz the upstream response framer: never panics for any expected shape,
//! and a complete reply and every range in it lie inside the buffer.
#![no_main]

use libfuzzer_sys::fuzz_target;
use memring::protocol::{frame_response, Expect, Framed};

fuzz_target!(|data: &[u8]| {
    let Some((&selector, buf)) = data.split_first() else {
        return;
    };
    let expect = match selector % 4 {
        0 => Expect::Values,
        1 => Expect::Line,
        2 => Expect::Stats,
        _ => Expect::Meta,
    };
    let mut items = Vec::new();
    match frame_response(expect, buf, 4096, &mut items) {
        Ok(Framed::Complete {
            len, line, data, ..
        }) => {
            assert!(len > 0 && len <= buf.len());
            for r in [&line, &data] {
                assert!(r.start <= r.end && r.end <= len);
            }
            for it in &items {
                for r in [&it.key, &it.item, &it.data] {
                    assert!(r.start <= r.end && r.end <= len);
                }
                assert!(it.data.len() <= 4096);
            }
        }
        Ok(Framed::Incomplete) | Err(_) => assert!(items.is_empty()),
    }
});
