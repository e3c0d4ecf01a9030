//! Fuzz the replication chunk decoder, the unrecoverable-ranges file and the
//! agent's pair state: never panic; a chunk that decodes re-encodes to the
//! same bytes (uncompressed chunks) and carries consecutive seqs.
//!
//! Half the inputs go in as they are; the other half have their checksums
//! made right first (magic, version, payload length and CRC, BLAKE3 of the
//! raw payload, header CRC: the offsets of docs/FORMATS.md), so the record
//! parser behind them is what the fuzzer explores.
#![no_main]
use libfuzzer_sys::fuzz_target;
use tern::engine::chunk::{self, Codec, HEADER_LEN};
use tern::engine::crc::crc32c;

fn seal(b: &mut [u8]) {
    b[0..4].copy_from_slice(b"TCHK");
    b[4..6].copy_from_slice(&1u16.to_le_bytes());
    b[6] &= 1;
    b[7] &= 1;
    let n = (b.len() - HEADER_LEN) as u32;
    b[64..68].copy_from_slice(&n.to_le_bytes());
    if b[6] == 0 {
        // Uncompressed: the raw payload is what follows the header.
        b[60..64].copy_from_slice(&n.to_le_bytes());
        let h = *blake3::hash(&b[HEADER_LEN..]).as_bytes();
        b[72..104].copy_from_slice(&h);
    } else if let Ok(raw) = zstd::bulk::decompress(&b[HEADER_LEN..], 1 << 20) {
        b[60..64].copy_from_slice(&(raw.len() as u32).to_le_bytes());
        b[72..104].copy_from_slice(blake3::hash(&raw).as_bytes());
    }
    let c = crc32c(&b[HEADER_LEN..]);
    b[68..72].copy_from_slice(&c.to_le_bytes());
    b[104..108].fill(0);
    let c = crc32c(&b[..108]);
    b[108..112].copy_from_slice(&c.to_le_bytes());
}

fn check(data: &[u8]) {
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
}

fuzz_target!(|data: &[u8]| {
    let _ = tern::engine::journal::format::decode_ranges(data);
    let Some((&mode, rest)) = data.split_first() else { return };
    if mode & 1 == 0 || rest.len() < HEADER_LEN {
        check(rest);
        return;
    }
    let mut b = rest.to_vec();
    seal(&mut b);
    check(&b);
});
