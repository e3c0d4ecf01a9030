//! Fuzz the replication chunk decoder, the unrecoverable-ranges file and the
//! agent's pair state: never panic; a chunk that decodes re-encodes to the
//! same bytes (uncompressed chunks) and carries consecutive seqs.
#![no_main]
use libfuzzer_sys::fuzz_target;
use tern::engine::chunk::{self, Codec};

fuzz_target!(|data: &[u8]| {
    let _ = tern::engine::journal::format::decode_ranges(data);
    let pair = data.get(8..24).and_then(|p| <[u8; 16]>::try_from(p).ok()).unwrap_or([0; 16]);
    if let Ok((h, recs)) = chunk::decode(data, &pair) {
        assert_eq!(recs.len() as u32, h.count);
        for (i, r) in recs.iter().enumerate() {
            assert_eq!(r.record.seq, h.first_seq + i as u64);
        }
        if !h.compressed {
            assert_eq!(chunk::encode(pair, &recs, Codec::None), data);
        }
    }
});
