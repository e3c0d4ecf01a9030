//! Fuzz `journal.state` (v2: two slots; v1: one record) past its
//! checksums: the input becomes one or both slots with their CRCs fixed, so
//! the decoder's field checks (version, reserved bytes, slot placement,
//! generation order) are what is exercised. Never panic; whatever decodes
//! re-encodes to the slot it came from.
#![no_main]
use libfuzzer_sys::fuzz_target;
use tern::engine::crc;
use tern::engine::journal::format::{self, State, STATE_FILE_LEN, STATE_LEN, STATE_SLOT};

fn seal(rec: &mut [u8]) {
    let c = crc::crc32c(&rec[..92]);
    rec[92..96].copy_from_slice(&c.to_le_bytes());
}

fuzz_target!(|data: &[u8]| {
    let _ = State::decode_file(data);
    // A version-1 file with a valid CRC.
    if data.len() >= STATE_LEN {
        let mut v1 = data[..STATE_LEN].to_vec();
        v1[0..8].copy_from_slice(&format::STATE_MAGIC);
        seal(&mut v1);
        let _ = State::decode_file(&v1);
    }
    // Two slots built from the input, magic and CRCs fixed.
    let mut f = vec![0u8; STATE_FILE_LEN];
    let n = data.len().min(STATE_FILE_LEN);
    f[..n].copy_from_slice(&data[..n]);
    for k in 0..2 {
        let at = k * STATE_SLOT;
        if data.get(at).is_some_and(|b| b & 1 == 1) {
            f[at..at + 8].copy_from_slice(&format::STATE_MAGIC);
            seal(&mut f[at..at + STATE_LEN]);
        }
    }
    if let Ok(s) = State::decode_file(&f) {
        let at = s.slot_offset() as usize;
        assert_eq!(&s.encode_slot()[..], &f[at..at + STATE_SLOT]);
    }
});
