//! Fuzz the sealed-segment index decoder: never panic, round-trip what decodes.
#![no_main]
use libfuzzer_sys::fuzz_target;
use tern::engine::journal::format;

fuzz_target!(|data: &[u8]| {
    if let Ok((segno, jid, len, entries)) = format::decode_index(data) {
        assert_eq!(format::encode_index(segno, jid, len, &entries), data);
    }
});
