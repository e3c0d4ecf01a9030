//! Fuzz the journal record decoder and the payload decoders behind it:
//! never panic, and whatever decodes must re-encode to the same bytes.
#![no_main]
use libfuzzer_sys::fuzz_target;
use tern::engine::journal::format::{self, Kind};

fuzz_target!(|data: &[u8]| {
    let _ = format::SegmentHeader::decode(data);
    let _ = format::State::decode(data);
    if let Ok((h, payload, n)) = format::decode_record(data) {
        assert!(n <= data.len());
        let mut again = Vec::new();
        format::encode_record(&mut again, &h, payload);
        assert_eq!(&again[..], &data[..n]);
        match h.kind {
            Kind::Bookmark => {
                let _ = format::decode_bookmark(payload);
            }
            Kind::Commit => {
                let _ = format::decode_commit(payload);
            }
            _ => {}
        }
    }
});
