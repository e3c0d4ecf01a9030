//! Fuzz the sealed-segment index decoder: never panic, round-trip what
//! decodes. Half the inputs have their magic, count and CRCs made right
//! first (header CRC at 60, the entries' CRC after them: docs/FORMATS.md),
//! so the entry checks are reached.
#![no_main]
use libfuzzer_sys::fuzz_target;
use tern::engine::crc::crc32c;
use tern::engine::journal::format;

fn seal(b: &mut Vec<u8>) {
    b[0..8].copy_from_slice(b"TERNJIDX");
    b[8..10].copy_from_slice(&1u16.to_le_bytes());
    let n = (b.len() - 64) / 48;
    b.truncate(64 + 48 * n);
    b[12..16].copy_from_slice(&(n as u32).to_le_bytes());
    let c = crc32c(&b[..60]);
    b[60..64].copy_from_slice(&c.to_le_bytes());
    let c = crc32c(&b[64..]);
    b.extend_from_slice(&c.to_le_bytes());
}

fn check(data: &[u8]) {
    if let Ok((segno, jid, len, entries)) = format::decode_index(data) {
        assert_eq!(format::encode_index(segno, jid, len, &entries), data);
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    if mode & 1 == 0 || rest.len() < 64 {
        check(rest);
        return;
    }
    let mut b = rest.to_vec();
    seal(&mut b);
    check(&b);
});
