//! Fuzz the binary protocol front end: the frame parser never panics, its
//! ranges stay inside the frame, a frame is never shorter than its header,
//! and the adapter turns any bytes into a step that consumes at most what is
//! buffered; translating any reply bytes with any plan never panics.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use memring::protocol::binary::{parse_request, BadFrame, ParsedFrame, HEADER_LEN};
use memring::proxy::binary::{next_step, Step};

fuzz_target!(|data: &[u8]| {
    // The reply half of the input is fed to whatever plan the request half makes.
    let split = data.first().map_or(0, |&b| usize::from(b)).min(data.len());
    let (reqs, reply) = data.split_at(split);
    let mut rest = reqs;
    while !rest.is_empty() {
        let step = match parse_request(rest, 4096) {
            ParsedFrame::Complete(f) => {
                assert!(f.consumed >= HEADER_LEN && f.consumed <= rest.len());
                for r in [&f.extras, &f.key, &f.value] {
                    assert!(r.start <= r.end && r.end <= f.consumed);
                }
                f.consumed
            }
            ParsedFrame::Error(BadFrame::Reject { skip, close: false, .. }) => {
                assert!(skip >= HEADER_LEN);
                skip.min(rest.len())
            }
            ParsedFrame::Error(_) | ParsedFrame::Incomplete => break,
        };
        rest = &rest[step..];
    }
    let mut rest = reqs;
    for _ in 0..64 {
        match next_step(rest, 4096) {
            Step::Forward { consumed, plan, .. } => {
                assert!(consumed >= HEADER_LEN && consumed <= rest.len());
                let _ = plan.translate(&[Bytes::copy_from_slice(reply)]);
                rest = &rest[consumed..];
            }
            Step::Answer { consumed, close, .. } => {
                assert!(consumed <= rest.len());
                if close || consumed == 0 {
                    break;
                }
                rest = &rest[consumed..];
            }
            Step::Incomplete | Step::Close => break,
        }
    }
});
