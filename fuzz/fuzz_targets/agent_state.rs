//! Fuzz the agent's pair state and activity-log slot decoders. The input's
//! checksums are fixed up first (half the time), so the fuzzer reaches the
//! field checks behind them; whatever decodes must re-encode to the same bytes.
#![no_main]
use libfuzzer_sys::fuzz_target;
use tern::engine::crc::crc32c;
use tern::roles::agent::{activity, state};

/// Rewrite the header CRC at 60 and the trailing CRC of `[64, 64 + n)`,
/// with `n` read at `len_at`, where they fit.
fn fix_crcs(b: &mut [u8], len_at: usize) {
    if b.len() < 68 {
        return;
    }
    let c = crc32c(&b[..60]);
    b[60..64].copy_from_slice(&c.to_le_bytes());
    let n = u32::from_le_bytes(b[len_at..len_at + 4].try_into().unwrap()) as usize;
    if let Some(end) = 64usize.checked_add(n).filter(|e| e + 4 <= b.len()) {
        let c = crc32c(&b[64..end]);
        b[end..end + 4].copy_from_slice(&c.to_le_bytes());
    }
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 9 {
        return;
    }
    let size = (u64::from_le_bytes(data[..8].try_into().unwrap()) % (1 << 36)).max(512);
    let fix = data[8] & 1 == 1;
    let mut b = data[9..].to_vec();
    if fix {
        fix_crcs(&mut b, 56);
    }
    if let Ok(Some(s)) = state::decode(&b, None, size) {
        assert_eq!(state::encode(&s, size).len(), b.len());
    }
    let mut b = data[9..].to_vec();
    if fix {
        fix_crcs(&mut b, 40);
    }
    if let Ok((g, origin, words)) = activity::decode(&b, size) {
        let again = activity::encode(g, origin, size, &words);
        assert_eq!(&again[..], &b[..again.len()]);
    }
});
