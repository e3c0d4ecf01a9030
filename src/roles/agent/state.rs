//! `DATA/agent/pairs/PAIR.state`: what an agent keeps of a pair across
//! restarts (layout in docs/FORMATS.md, "Agent pair state").
//!
//! Written with `clean = false` when the pair starts, again whenever the
//! resync fields change (step I cursor, resyncing, resync required,
//! generation) before the activity log may drop an extent, and with
//! `clean = true` (and the dirty bitmap, which by then includes every
//! unacknowledged write) on a clean stop. A state found unclean at start
//! means the buffer was lost from memory: the volume's activity log says
//! which extents to drain (see [`super::activity`]); without a readable log
//! the pair is resync-required.

use std::path::Path;

use super::stream::Bitmap;
use crate::engine::crc;
use crate::engine::journal::format;

pub const MAGIC: [u8; 8] = *b"TERNAPST";
/// 2 added flag bit 2 (resync required); version 1 files are read as well.
pub const VERSION: u16 = 2;
const HEADER: usize = 64;

#[derive(Debug, Clone)]
pub struct PairState {
    pub uuid: [u8; 16],
    pub clean: bool,
    pub resync_gen: u64,
    pub step1: Option<u64>,
    pub resyncing: bool,
    /// Only a full resync can make the replica whole again.
    pub resync_required: bool,
    pub bitmap: Bitmap,
}

pub fn encode(s: &PairState, volume_size: u64) -> Vec<u8> {
    let bm = s.bitmap.to_bytes();
    let mut b = vec![0u8; HEADER];
    b[0..8].copy_from_slice(&MAGIC);
    b[8..10].copy_from_slice(&VERSION.to_le_bytes());
    b[10] = s.clean as u8 | (s.resyncing as u8) << 1 | (s.resync_required as u8) << 2;
    b[16..32].copy_from_slice(&s.uuid);
    b[32..40].copy_from_slice(&volume_size.to_le_bytes());
    b[40..48].copy_from_slice(&s.resync_gen.to_le_bytes());
    b[48..56].copy_from_slice(&s.step1.unwrap_or(u64::MAX).to_le_bytes());
    b[56..60].copy_from_slice(&(bm.len() as u32).to_le_bytes());
    let c = crc::crc32c(&b[..60]);
    b[60..64].copy_from_slice(&c.to_le_bytes());
    b.extend_from_slice(&bm);
    b.extend_from_slice(&crc::crc32c(&bm).to_le_bytes());
    b
}

/// Decode; `uuid` None accepts any pair.
pub fn decode(
    b: &[u8],
    uuid: Option<&[u8; 16]>,
    volume_size: u64,
) -> Result<Option<PairState>, String> {
    let u32_at = |o: usize| format::u32_at(b, o);
    let u64_at = |o: usize| format::u64_at(b, o);
    if b.len() < HEADER + 4 || b[0..8] != MAGIC {
        return Err("not an agent pair state (bad magic or too short)".into());
    }
    if crc::crc32c(&b[..60]) != u32_at(60) {
        return Err("header checksum mismatch".into());
    }
    let v = format::u16_at(b, 8);
    if v != VERSION && v != 1 {
        return Err(format!("unsupported version {v}"));
    }
    let flags = if v == 1 { 3 } else { 7 };
    if b[10] & !flags != 0 || b[11..16] != [0; 5] {
        return Err("reserved bits set".into());
    }
    let n = u32_at(56) as usize;
    if b.len() != HEADER + n + 4 {
        return Err("length does not match the bitmap size".into());
    }
    if crc::crc32c(&b[HEADER..HEADER + n]) != u32_at(HEADER + n) {
        return Err("bitmap checksum mismatch".into());
    }
    let id: [u8; 16] = b[16..32].try_into().unwrap();
    if uuid.is_some_and(|u| u != &id) {
        return Ok(None);
    }
    if u64_at(32) != volume_size {
        return Err(format!(
            "volume size changed from {} to {volume_size} bytes",
            u64_at(32)
        ));
    }
    let bitmap = Bitmap::from_bytes(&b[HEADER..HEADER + n], volume_size)
        .ok_or("bitmap size does not fit the volume")?;
    let step1 = u64_at(48);
    Ok(Some(PairState {
        uuid: id,
        clean: b[10] & 1 == 1,
        resyncing: b[10] & 2 == 2,
        resync_required: b[10] & 4 == 4,
        resync_gen: u64_at(40),
        step1: (step1 != u64::MAX).then_some(step1),
        bitmap,
    }))
}

/// Load the state of the pair with `uuid` (None: whatever pair it is).
/// `Ok(None)`: no state, or the state of another pair of that name.
pub fn load(
    path: &Path,
    uuid: Option<&[u8; 16]>,
    volume_size: u64,
) -> Result<Option<PairState>, String> {
    // No bigger than the state of this volume: a bitmap of 64 KiB blocks.
    let most = HEADER as u64 + (volume_size >> 16).div_ceil(8) + 4096;
    if let Ok(m) = std::fs::metadata(path)
        && m.len() > most
    {
        return Err(format!(
            "{}: {} bytes, more than the state of a {volume_size}-byte volume can be",
            path.display(),
            m.len()
        ));
    }
    match std::fs::read(path) {
        Ok(b) => decode(&b, uuid, volume_size).map_err(|e| format!("{}: {e}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("{}: {e}", path.display())),
    }
}

pub fn save(path: &Path, s: &PairState, volume_size: u64) -> std::io::Result<()> {
    crate::engine::fsutil::write_durable(path, &encode(s, volume_size), 0o600)
        .map_err(std::io::Error::other)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_round_trip_and_damage() {
        let size = 8 << 20;
        let mut bm = Bitmap::new(size);
        bm.mark(70_000, 10);
        let s = PairState {
            uuid: [9; 16],
            clean: true,
            resync_gen: 3,
            step1: Some(1 << 20),
            resyncing: true,
            resync_required: false,
            bitmap: bm,
        };
        let b = encode(&s, size);
        assert_eq!(&b[0..8], b"TERNAPST");
        assert_eq!(format::u16_at(&b, 8), 2);
        assert_eq!(b[10], 3);
        assert_eq!(b.len(), 64 + 16 + 4, "128 blocks = 2 words");
        let d = decode(&b, Some(&[9; 16]), size).unwrap().unwrap();
        assert!(d.clean && d.resyncing && d.step1 == Some(1 << 20) && d.resync_gen == 3);
        assert!(d.bitmap.get(1) && d.bitmap.count() == 1);
        assert!(decode(&b, Some(&[8; 16]), size).unwrap().is_none());
        assert!(decode(&b, None, size * 2).is_err());
        let r = encode(
            &PairState {
                resync_required: true,
                ..s.clone()
            },
            size,
        );
        assert_eq!(r[10], 7);
        assert!(decode(&r, None, size).unwrap().unwrap().resync_required);
        for i in 0..b.len() {
            let mut c = b.clone();
            c[i] ^= 0x40;
            let r = decode(&c, None, size);
            assert!(r.is_err() || (16..32).contains(&i), "flip at {i} accepted");
        }
    }

    #[test]
    fn a_version_1_state_is_still_read() {
        let size = 8 << 20;
        let s = PairState {
            uuid: [1; 16],
            clean: true,
            resync_gen: 0,
            step1: None,
            resyncing: false,
            resync_required: false,
            bitmap: Bitmap::new(size),
        };
        let mut b = encode(&s, size);
        b[8..10].copy_from_slice(&1u16.to_le_bytes());
        let c = crc::crc32c(&b[..60]);
        b[60..64].copy_from_slice(&c.to_le_bytes());
        let d = decode(&b, None, size).unwrap().unwrap();
        assert!(d.clean && !d.resync_required);
        // Bit 2 did not exist in version 1.
        b[10] = 4;
        let c = crc::crc32c(&b[..60]);
        b[60..64].copy_from_slice(&c.to_le_bytes());
        assert!(decode(&b, None, size).is_err());
    }
}
