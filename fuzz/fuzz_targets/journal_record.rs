//! Fuzz the journal record decoder and the payload decoders behind it:
//! never panic, and whatever decodes must re-encode to the same bytes.
//!
//! Half the inputs have their checksums made right first (the header CRC at
//! 44, the CRC of each 4 KiB of payload after it: docs/FORMATS.md), so the
//! field checks and the bookmark and commit payload parsers are reached.
#![no_main]
use libfuzzer_sys::fuzz_target;
use tern::engine::crc::crc32c;
use tern::engine::journal::format::{self, Kind};

const HDR: usize = 48;
const BLOCK: usize = 4096;

/// Make the CRC count and every CRC right for the payload the header's
/// length gives (cut to what the input holds).
fn seal(b: &mut Vec<u8>) {
    b[0..4].copy_from_slice(b"TRJ1");
    let len = u32::from_le_bytes(b[32..36].try_into().unwrap()) as usize;
    let kind = b[4];
    // A Zero record's length is a range, not a payload.
    let payload = if kind == 2 { 0 } else { len.min(1 << 16) };
    if kind != 2 {
        b[32..36].copy_from_slice(&(payload as u32).to_le_bytes());
    }
    let n = payload.div_ceil(BLOCK);
    b[36..40].copy_from_slice(&(n as u32).to_le_bytes());
    let c = crc32c(&b[..44]);
    b[44..48].copy_from_slice(&c.to_le_bytes());
    let body: Vec<u8> = b[HDR..].iter().copied().chain(std::iter::repeat(0)).take(payload).collect();
    b.truncate(HDR);
    for block in body.chunks(BLOCK) {
        b.extend_from_slice(&crc32c(block).to_le_bytes());
    }
    b.extend_from_slice(&body);
}

fn check(data: &[u8]) {
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
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    if mode & 1 == 0 || rest.len() < HDR {
        check(rest);
        return;
    }
    let mut b = rest.to_vec();
    seal(&mut b);
    check(&b);
});
