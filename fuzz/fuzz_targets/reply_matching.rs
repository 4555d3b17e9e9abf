//! Fuzz reply matching (`protocol::matching`): never panics; an opaque it
//! finds is a token of the reply's first line that spells the tag, and
//! taking it out leaves everything after that line untouched; a request
//! line that carries no tag is never given one.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use memring::protocol::matching::{check_meta_tag, meta_tag_point, strip_token, values_match, TagCheck};
use memring::protocol::{frame_response, Expect};

fuzz_target!(|data: &[u8]| {
    let Some((&tag_byte, rest)) = data.split_first() else {
        return;
    };
    let tag = u32::from(tag_byte);
    if let Some(at) = meta_tag_point(rest) {
        assert!(at <= rest.len());
        assert!(rest[..at].iter().all(|&b| b != b'\n'));
    }
    match check_meta_tag(rest, tag, 8192) {
        TagCheck::Echoed(r) => {
            assert!(r.start < r.end && r.end <= rest.len());
            assert_eq!(&rest[r.start..r.start + 2], b" O");
            assert_eq!(rest[r.start + 2..r.end], *tag.to_string().as_bytes());
            let nl = rest.iter().position(|&b| b == b'\n').expect("a whole line");
            let mut buf = BytesMut::from(rest);
            strip_token(&mut buf, r.clone());
            assert_eq!(buf.len(), rest.len() - r.len());
            assert_eq!(&buf[nl + 1 - r.len()..], &rest[nl + 1..]);
        }
        TagCheck::Incomplete => assert!(!rest[..rest.len().min(8192)].contains(&b'\n')),
        TagCheck::ErrorLine | TagCheck::Mismatch => {}
    }
    // Any reply against any request: a verdict, never a panic.
    let mut items = Vec::new();
    let (req, reply) = rest.split_at(rest.len() / 2);
    if frame_response(Expect::Values, reply, 1 << 20, &mut items).is_ok() {
        let _ = values_match(req, reply, &items);
    }
});
