//! Virtual snapshots: a point-in-time image that costs O(1) to create.
//!
//! A vsnap is a [`Pin`] on the journal (pruning stops before its point) plus,
//! when writable, an overlay of 4 KiB blocks kept in its own file. Reads take
//! overlay blocks first, then the pinned image. Dropping the vsnap discards
//! the overlay; the pair is never written. In tracking mode the vsnap also
//! remembers which ranges were written so they can be replayed elsewhere.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use super::storage::{BlockFile, Storage};
use super::{Journal, JournalError, Pin, PointSpec};

const OB: u64 = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum VsnapMode {
    ReadOnly,
    ReadWrite,
    /// Read-write, remembering written ranges for [`Vsnap::replay_onto`].
    ReadWriteTracking,
}

struct Overlay {
    file: Arc<dyn BlockFile>,
    path: PathBuf,
    /// Volume block number → position in the overlay file.
    blocks: BTreeMap<u64, u64>,
    next: u64,
    /// Written ranges, in order (tracking mode).
    log: Vec<(u64, u64)>,
}

pub struct Vsnap {
    pin: Pin,
    mode: VsnapMode,
    overlay: Option<Mutex<Overlay>>,
    storage: Arc<dyn Storage>,
}

impl Vsnap {
    /// Create a vsnap of `journal` at `at`. `overlay_path` is needed for writable modes.
    pub fn create(
        journal: &Arc<Journal>,
        at: &PointSpec,
        mode: VsnapMode,
        storage: Arc<dyn Storage>,
        overlay_path: Option<PathBuf>,
    ) -> Result<Vsnap, JournalError> {
        let pin = journal.pin(at)?;
        let overlay = match mode {
            VsnapMode::ReadOnly => None,
            _ => {
                let path = overlay_path.ok_or_else(|| {
                    JournalError::BadRecord("a writable vsnap needs an overlay file".into())
                })?;
                let file = storage
                    .open(&path, true)
                    .map_err(super::io(format!("vsnap overlay {}", path.display())))?;
                file.set_len(0).map_err(super::io("vsnap overlay"))?;
                Some(Mutex::new(Overlay {
                    file,
                    path,
                    blocks: BTreeMap::new(),
                    next: 0,
                    log: Vec::new(),
                }))
            }
        };
        Ok(Vsnap {
            pin,
            mode,
            overlay,
            storage,
        })
    }

    pub fn point(&self) -> super::Point {
        self.pin.point
    }
    pub fn mode(&self) -> VsnapMode {
        self.mode
    }
    pub fn size(&self) -> u64 {
        self.pin.journal().volume_size()
    }
    pub fn writable(&self) -> bool {
        self.overlay.is_some()
    }

    pub fn read_at(&self, off: u64, buf: &mut [u8]) -> Result<(), JournalError> {
        self.pin.read_at(off, buf)?;
        let Some(ov) = &self.overlay else {
            return Ok(());
        };
        let ov = ov.lock().unwrap();
        if ov.blocks.is_empty() || buf.is_empty() {
            return Ok(());
        }
        let end = off + buf.len() as u64;
        let mut tmp = [0u8; OB as usize];
        for (&blk, &pos) in ov.blocks.range(off / OB..end.div_ceil(OB)) {
            let bs = blk * OB;
            ov.file
                .read_at(&mut tmp, pos)
                .map_err(super::io("vsnap overlay read"))?;
            let a = bs.max(off);
            let b = (bs + OB).min(end);
            buf[(a - off) as usize..(b - off) as usize]
                .copy_from_slice(&tmp[(a - bs) as usize..(b - bs) as usize]);
        }
        Ok(())
    }

    pub fn write_at(&self, off: u64, data: &[u8]) -> Result<(), JournalError> {
        let Some(ov) = &self.overlay else {
            return Err(JournalError::BadRecord("this vsnap is read-only".into()));
        };
        let end = off
            .checked_add(data.len() as u64)
            .filter(|e| *e <= self.size())
            .ok_or_else(|| JournalError::BadRecord("write past the end of the vsnap".into()))?;
        let mut ov = ov.lock().unwrap();
        let mut blk = [0u8; OB as usize];
        for b in off / OB..end.div_ceil(OB) {
            let bs = b * OB;
            let a = bs.max(off);
            let e = (bs + OB).min(end);
            let pos = match ov.blocks.get(&b) {
                Some(p) => *p,
                None => {
                    let p = ov.next;
                    ov.next += OB;
                    p
                }
            };
            if e - a < OB {
                // Partial block: start from what the vsnap shows now.
                if ov.blocks.contains_key(&b) {
                    ov.file
                        .read_at(&mut blk, pos)
                        .map_err(super::io("vsnap overlay read"))?;
                } else {
                    let n = OB.min(self.size() - bs) as usize;
                    blk.fill(0);
                    self.pin.read_at(bs, &mut blk[..n])?;
                }
            }
            blk[(a - bs) as usize..(e - bs) as usize]
                .copy_from_slice(&data[(a - off) as usize..(e - off) as usize]);
            ov.file
                .write_at(&blk, pos)
                .map_err(super::io("vsnap overlay write"))?;
            ov.blocks.insert(b, pos);
        }
        if self.mode == VsnapMode::ReadWriteTracking {
            ov.log.push((off, data.len() as u64));
        }
        Ok(())
    }

    /// Ranges written so far (tracking mode), in order.
    pub fn tracked(&self) -> Vec<(u64, u64)> {
        self.overlay
            .as_ref()
            .map(|o| o.lock().unwrap().log.clone())
            .unwrap_or_default()
    }

    /// Replay this vsnap's writes onto another target, in the order written
    /// (the data is the vsnap's current content of each range).
    pub fn replay_onto(
        &self,
        mut write: impl FnMut(u64, &[u8]) -> Result<(), JournalError>,
    ) -> Result<u64, JournalError> {
        let mut n = 0;
        for (off, len) in self.tracked() {
            let mut buf = vec![0u8; len as usize];
            self.read_at(off, &mut buf)?;
            write(off, &buf)?;
            n += len;
        }
        Ok(n)
    }
}

impl Drop for Vsnap {
    fn drop(&mut self) {
        if let Some(ov) = &self.overlay {
            let p = ov.lock().unwrap().path.clone();
            let _ = self.storage.remove(&p);
        }
    }
}

/// A vsnap served over NBD: reads and (when writable) writes go to the vsnap;
/// flush is a no-op because the overlay is discarded with the vsnap.
impl crate::engine::nbd::Export for Vsnap {
    fn size(&self) -> u64 {
        Vsnap::size(self)
    }
    fn read_only(&self) -> bool {
        !self.writable()
    }
    fn read(&self, off: u64, buf: &mut [u8]) -> std::io::Result<()> {
        self.read_at(off, buf).map_err(std::io::Error::other)
    }
    fn write(&self, off: u64, data: Vec<u8>, _fua: bool) -> std::io::Result<()> {
        self.write_at(off, &data).map_err(std::io::Error::other)
    }
    fn flush(&self) -> std::io::Result<()> {
        Ok(())
    }
}
