//! `DATA/agent/volumes/VOLUME.al`: the activity log of a served volume —
//! the 4 MiB extents that may hold writes the replica does not have yet
//! (layout in docs/FORMATS.md, "Agent activity log").
//!
//! It is what lets the agent promise, across any stop or crash, that no
//! acknowledged write is lost to replication (DRBD's activity log, with the
//! PS as the peer):
//!
//! - an extent is made durable here *before* a write to it is acknowledged
//!   (NBD, FUSE), whether or not a pair stream exists yet — a write made
//!   while the agent does not know its pair (the CX is down) is recorded;
//! - an extent leaves the log only when nothing of it is pending (no
//!   buffered record, no dirty bit), the volume's backing file has been
//!   synced since its last write, and it has been idle for one compaction
//!   period ([`Volume::compact_activity`](super::stream::Volume::compact_activity)).
//!
//! So after a crash the extents in the log are a superset of every block
//! that can differ between source and replica: the pair drains just those
//! (a bitmap drain, at once), not the whole volume. A log that cannot be
//! read is never guessed at: the pair is marked resync-required.
//!
//! Two slots, written alternately, each with a generation and checksums: a
//! torn write leaves the other slot, the last one completed, valid; memory
//! takes a change only once it is on disk. The verdict of an open (created,
//! damaged) stays in the slots until a pair has saved its meaning
//! ([`ActivityLog::settle`]), so a second crash cannot lose it.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::stream::{BITMAP_BLOCK, Bitmap};
use crate::engine::crc;
use crate::engine::journal::format;

pub const MAGIC: [u8; 8] = *b"TERNACTL";
pub const VERSION: u16 = 1;
/// One extent = one 64-bit word of the pair's dirty bitmap.
pub const EXTENT: u64 = 64 * BITMAP_BLOCK;
const HEADER: usize = 64;

/// How the log was found when the volume was opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found {
    /// Read from disk: every extent that may differ is in it.
    Loaded,
    /// No log existed: nothing is known of writes before this process.
    Created,
    /// The log could not be read (both slots damaged, another volume's):
    /// it was started anew, and what it held is lost.
    Damaged(String),
}

pub struct ActivityLog {
    file: File,
    path: PathBuf,
    volume_size: u64,
    /// One bit per extent: what is on disk (a superset, while a persist
    /// that adds extents is under way, of nothing less).
    extents: Vec<u64>,
    count: u64,
    generation: u64,
    /// [`ORIGIN_COMPLETE`], [`ORIGIN_CREATED`] or [`ORIGIN_DAMAGED`], as on disk.
    origin: u8,
    /// Extents written since the last [`ActivityLog::take_touched`]: kept
    /// one more compaction period (hysteresis), so a hot extent is not
    /// dropped and added again on every write.
    touched: Vec<u64>,
    pub found: Found,
}

fn words_for(volume_size: u64) -> usize {
    volume_size.div_ceil(EXTENT).div_ceil(64) as usize
}

fn slot_len(volume_size: u64) -> u64 {
    ((HEADER + words_for(volume_size) * 8 + 4) as u64).next_multiple_of(4096)
}

/// Byte 10 of a slot: how complete the log's history is. Kept on disk so
/// that a verdict survives another crash before a pair has acted on it.
pub const ORIGIN_COMPLETE: u8 = 0;
/// Started where no log existed: it holds every write since then.
pub const ORIGIN_CREATED: u8 = 1;
/// Started over a damaged log: what it held is lost.
pub const ORIGIN_DAMAGED: u8 = 2;

/// One slot's bytes.
pub fn encode(generation: u64, origin: u8, volume_size: u64, extents: &[u64]) -> Vec<u8> {
    let mut b = vec![0u8; HEADER];
    b[0..8].copy_from_slice(&MAGIC);
    b[8..10].copy_from_slice(&VERSION.to_le_bytes());
    b[10] = origin;
    b[16..24].copy_from_slice(&generation.to_le_bytes());
    b[24..32].copy_from_slice(&volume_size.to_le_bytes());
    b[32..40].copy_from_slice(&EXTENT.to_le_bytes());
    b[40..44].copy_from_slice(&((extents.len() * 8) as u32).to_le_bytes());
    let c = crc::crc32c(&b[..60]);
    b[60..64].copy_from_slice(&c.to_le_bytes());
    for w in extents {
        b.extend_from_slice(&w.to_le_bytes());
    }
    let c = crc::crc32c(&b[HEADER..]);
    b.extend_from_slice(&c.to_le_bytes());
    b
}

/// Decode one slot: `(generation, origin, extent words)`.
pub fn decode(b: &[u8], volume_size: u64) -> Result<(u64, u8, Vec<u64>), String> {
    if b.len() < HEADER + 4 || b[0..8] != MAGIC {
        return Err("not an activity log slot (bad magic or too short)".into());
    }
    if crc::crc32c(&b[..60]) != format::u32_at(b, 60) {
        return Err("header checksum mismatch".into());
    }
    let v = format::u16_at(b, 8);
    if v != VERSION {
        return Err(format!("unsupported version {v}"));
    }
    if b[10] > ORIGIN_DAMAGED || b[11..16] != [0; 5] || b[44..60] != [0; 16] {
        return Err("reserved bytes set".into());
    }
    if format::u64_at(b, 24) != volume_size {
        return Err(format!(
            "written for a volume of {} bytes, this one has {volume_size}",
            format::u64_at(b, 24)
        ));
    }
    if format::u64_at(b, 32) != EXTENT {
        return Err(format!("extent size {}", format::u64_at(b, 32)));
    }
    let n = format::u32_at(b, 40) as usize;
    if n != words_for(volume_size) * 8 || b.len() < HEADER + n + 4 {
        return Err("extent map length does not fit the volume".into());
    }
    if crc::crc32c(&b[HEADER..HEADER + n]) != format::u32_at(b, HEADER + n) {
        return Err("extent map checksum mismatch".into());
    }
    let words = b[HEADER..HEADER + n]
        .chunks_exact(8)
        .map(|c| u64::from_le_bytes(c.try_into().unwrap()))
        .collect();
    Ok((format::u64_at(b, 16), b[10], words))
}

impl ActivityLog {
    /// Open (or create) the log of a volume of `volume_size` bytes.
    pub fn open(path: &Path, volume_size: u64) -> io::Result<ActivityLog> {
        if let Some(d) = path.parent() {
            std::fs::create_dir_all(d)?;
        }
        let existed = path.exists();
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        let slot = slot_len(volume_size);
        let mut best: Option<(u64, u8, Vec<u64>)> = None;
        let mut errors = Vec::new();
        if existed {
            let len = file.metadata()?.len();
            for i in 0..2u64 {
                if len < (i + 1) * slot {
                    errors.push(format!("slot {i}: missing"));
                    continue;
                }
                let mut b = vec![0u8; slot as usize];
                file.read_exact_at(&mut b, i * slot)?;
                match decode(&b, volume_size) {
                    Ok((g, o, w)) if best.as_ref().is_none_or(|(bg, _, _)| g > *bg) => {
                        best = Some((g, o, w))
                    }
                    Ok(_) => {}
                    Err(e) => errors.push(format!("slot {i}: {e}")),
                }
            }
        }
        let (generation, origin, extents, fresh) = match best {
            Some((g, o, w)) => (g, o, w, false),
            None => {
                let o = if existed {
                    ORIGIN_DAMAGED
                } else {
                    ORIGIN_CREATED
                };
                (0, o, vec![0; words_for(volume_size)], true)
            }
        };
        let found = match origin {
            ORIGIN_COMPLETE => Found::Loaded,
            ORIGIN_CREATED => Found::Created,
            _ if fresh => Found::Damaged(format!("{}: {}", path.display(), errors.join("; "))),
            _ => Found::Damaged(format!(
                "{}: found damaged at an earlier start, not yet acted on",
                path.display()
            )),
        };
        let count = extents.iter().map(|w| w.count_ones() as u64).sum();
        let mut al = ActivityLog {
            file,
            path: path.to_owned(),
            volume_size,
            touched: vec![0; extents.len()],
            extents,
            count,
            generation,
            origin,
            found,
        };
        if fresh {
            // Both slots valid from here on, with the verdict in them.
            let w = al.extents.clone();
            al.persist(w.clone())?;
            al.persist(w)?;
        }
        Ok(al)
    }

    /// A pair has taken the verdict of [`ActivityLog::found`] into its
    /// durable state: from now on the log's history is complete.
    pub fn settle(&mut self) -> io::Result<()> {
        if self.origin == ORIGIN_COMPLETE {
            return Ok(());
        }
        let old = self.origin;
        self.origin = ORIGIN_COMPLETE;
        let w = self.extents.clone();
        self.persist(w).inspect_err(|_| self.origin = old)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Extents in the log.
    pub fn count(&self) -> u64 {
        self.count
    }

    pub fn contains(&self, e: u64) -> bool {
        self.extents
            .get((e / 64) as usize)
            .is_some_and(|w| w >> (e % 64) & 1 == 1)
    }

    /// Make the extents under `[off, off + len)` durable in the log.
    /// Returns at once (no I/O) when they all are already.
    pub fn note(&mut self, off: u64, len: u64) -> io::Result<()> {
        if len == 0 {
            return Ok(());
        }
        mark_extents(&mut self.touched, off, len);
        let mut w = self.extents.clone();
        mark_extents(&mut w, off, len);
        if w == self.extents {
            return Ok(());
        }
        self.persist(w)
    }

    /// Make the log exactly `keep`: the extents pending (buffered, dirty,
    /// copied but unacknowledged) or written since the caller last synced
    /// the volume. Extents are added as well as dropped: a step-I copy of
    /// a block never written still has to be covered before the persisted
    /// cursor passes it.
    pub fn set(&mut self, keep: &[u64]) -> io::Result<()> {
        if self.extents.as_slice() == keep {
            return Ok(());
        }
        self.persist(keep[..self.extents.len()].to_vec())
    }

    /// Add `more` (an extent set) to the log.
    pub fn add(&mut self, more: &[u64]) -> io::Result<()> {
        let mut u = self.extents.clone();
        for (a, b) in u.iter_mut().zip(more) {
            *a |= b;
        }
        self.set(&u)
    }

    /// Forget every extent (everything pending is saved elsewhere: the
    /// pair's clean-stop bitmap).
    pub fn clear(&mut self) -> io::Result<()> {
        let none = vec![0u64; self.extents.len()];
        self.set(&none)
    }

    /// The log as a pair's dirty bitmap: every 64 KiB block of each extent.
    pub fn as_bitmap(&self) -> Bitmap {
        let mut bm = Bitmap::new(self.volume_size);
        for (i, w) in self.extents.iter().enumerate() {
            let mut w = *w;
            while w != 0 {
                let e = i as u64 * 64 + w.trailing_zeros() as u64;
                w &= w - 1;
                let off = e * EXTENT;
                if off < self.volume_size {
                    bm.mark(off, EXTENT.min(self.volume_size - off));
                }
            }
        }
        bm
    }

    /// The extents written since the last call; the set starts anew.
    pub fn take_touched(&mut self) -> Vec<u64> {
        std::mem::replace(&mut self.touched, vec![0; self.extents.len()])
    }

    /// Put extents taken by [`ActivityLog::take_touched`] back (the sync
    /// they waited for failed).
    pub fn restore_touched(&mut self, t: &[u64]) {
        for (a, b) in self.touched.iter_mut().zip(t) {
            *a |= b;
        }
    }

    /// The extents written since the last [`ActivityLog::take_touched`].
    pub fn touched(&self) -> &[u64] {
        &self.touched
    }

    /// An empty extent set the size of this log's (for [`ActivityLog::set`]).
    pub fn empty_set(&self) -> Vec<u64> {
        vec![0; self.extents.len()]
    }

    /// Write `words` as the next generation, then take them: memory never
    /// runs ahead of the disk (a failed write changes nothing, and the slot
    /// it tore is the older one).
    fn persist(&mut self, words: Vec<u64>) -> io::Result<()> {
        let g = self.generation + 1;
        let slot = slot_len(self.volume_size);
        let mut b = encode(g, self.origin, self.volume_size, &words);
        b.resize(slot as usize, 0);
        self.file
            .write_all_at(&b, (g % 2) * slot)
            .and_then(|_| self.file.sync_data())
            .map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("activity log {}: {e}", self.path.display()),
                )
            })?;
        self.generation = g;
        self.count = words.iter().map(|w| w.count_ones() as u64).sum();
        self.extents = words;
        Ok(())
    }
}

/// Set the extent bits of `[off, off + len)` in `set`.
pub fn mark_extents(set: &mut [u64], off: u64, len: u64) {
    if len == 0 {
        return;
    }
    for e in off / EXTENT..=(off + len - 1) / EXTENT {
        if let Some(w) = set.get_mut((e / 64) as usize) {
            *w |= 1 << (e % 64);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_round_trip_and_damage() {
        let size = 300 * EXTENT + 4096;
        let mut w = vec![0u64; words_for(size)];
        mark_extents(&mut w, 5 * EXTENT + 1, 1);
        mark_extents(&mut w, 299 * EXTENT, 2 * EXTENT);
        let b = encode(7, ORIGIN_COMPLETE, size, &w);
        assert_eq!(&b[0..8], b"TERNACTL");
        assert_eq!(format::u16_at(&b, 8), 1);
        assert_eq!(format::u64_at(&b, 16), 7);
        assert_eq!(format::u64_at(&b, 32), 4 << 20);
        assert_eq!(b.len(), 64 + 5 * 8 + 4, "301 extents = 5 words");
        let (g, o, d) = decode(&b, size).unwrap();
        assert_eq!((g, o, &d), (7, ORIGIN_COMPLETE, &w));
        assert!(decode(&b, size + 512).is_err(), "another volume's log");
        for i in 0..b.len() {
            let mut c = b.clone();
            c[i] ^= 0x10;
            assert!(decode(&c, size).is_err(), "flip at {i} accepted");
        }
    }

    #[test]
    fn a_torn_slot_leaves_the_last_completed_one() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("v.al");
        let size = 64 << 20;
        {
            let mut al = ActivityLog::open(&p, size).unwrap();
            assert_eq!(al.found, Found::Created);
            al.note(EXTENT * 3, 10).unwrap();
            al.note(EXTENT * 9, 10).unwrap();
        }
        // Tear the newest slot (generation 4 lives in slot 0). Created,
        // never settled: the verdict is still on disk.
        let f = std::fs::OpenOptions::new().write(true).open(&p).unwrap();
        f.write_all_at(&[0xff; 8], 70).unwrap();
        let mut al = ActivityLog::open(&p, size).unwrap();
        assert_eq!(al.found, Found::Created);
        assert!(al.contains(3) && !al.contains(9), "the older slot is taken");
        al.settle().unwrap();
        drop(al);
        let al = ActivityLog::open(&p, size).unwrap();
        assert_eq!(al.found, Found::Loaded);
        // Both torn: damaged, never an empty log taken for the truth.
        f.write_all_at(&[0xff; 8], 70).unwrap();
        f.write_all_at(&[0xff; 8], 4096 + 70).unwrap();
        drop(al);
        let al = ActivityLog::open(&p, size).unwrap();
        assert!(matches!(al.found, Found::Damaged(_)), "{:?}", al.found);
        // A crash before any pair acted on it: still damaged.
        drop(al);
        let al = ActivityLog::open(&p, size).unwrap();
        assert!(matches!(al.found, Found::Damaged(_)), "{:?}", al.found);
    }

    #[test]
    fn the_bitmap_covers_every_block_of_each_extent() {
        let d = tempfile::tempdir().unwrap();
        let size = 2 * EXTENT + 8192;
        let mut al = ActivityLog::open(&d.path().join("v.al"), size).unwrap();
        al.note(2 * EXTENT + 100, 1).unwrap();
        al.note(10, 1).unwrap();
        let bm = al.as_bitmap();
        assert_eq!(bm.count(), 64 + 1);
        assert!(bm.get(0) && bm.get(63) && !bm.get(64) && bm.get(128));
        let mut keep = al.empty_set();
        mark_extents(&mut keep, 0, 1);
        al.set(&keep).unwrap();
        assert_eq!(al.count(), 1);
        drop(al);
        let al = ActivityLog::open(&d.path().join("v.al"), size).unwrap();
        assert!(al.contains(0) && !al.contains(2));
    }
}
