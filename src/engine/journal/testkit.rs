//! A deterministic workload and a model of the volume, for the journal's
//! model-based and crash tests (and the `tern debug journal-load` helper
//! that the kill -9 test runs as a child process).
//!
//! Chunk `i` holds records `i*R+1 ..= (i+1)*R`; its content depends only on
//! `(seed, i)`, so a restarted writer regenerates exactly what it sent before.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::format::BookmarkKind;
use super::{Record, RecordBody};

#[derive(Debug, Clone, Copy)]
pub struct Workload {
    pub seed: u64,
    pub volume_size: u64,
    pub records_per_chunk: u64,
    /// Largest write (bytes); sizes are 512 B × 2^k up to this.
    pub max_write: u64,
    pub start_us: u64,
}

impl Workload {
    pub fn new(seed: u64, volume_size: u64) -> Workload {
        Workload {
            seed,
            volume_size,
            records_per_chunk: 8,
            max_write: 1 << 20,
            start_us: 1_700_000_000_000_000,
        }
    }

    /// Source time of a record: 1 ms apart.
    pub fn ts_of(&self, seq: u64) -> u64 {
        self.start_us + seq * 1000
    }

    pub fn chunk(&self, i: u64) -> Vec<Record> {
        let mut rng = StdRng::seed_from_u64(self.seed ^ i.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let r = self.records_per_chunk;
        (i * r + 1..=(i + 1) * r)
            .map(|seq| {
                let roll: u32 = rng.random_range(0..100);
                let body = if roll < 8 {
                    let kind = [BookmarkKind::App, BookmarkKind::Fs, BookmarkKind::User]
                        [rng.random_range(0..3)];
                    RecordBody::Bookmark {
                        kind,
                        name: format!("bm-{seq}"),
                    }
                } else {
                    let max_k = (self.max_write / 512).ilog2();
                    // Mostly small writes, sometimes large: the shape of real I/O.
                    let k = if rng.random_bool(0.7) {
                        rng.random_range(0..=3.min(max_k))
                    } else {
                        rng.random_range(0..=max_k)
                    };
                    let len = (512u64 << k).min(self.volume_size);
                    let offset = rng.random_range(0..=(self.volume_size - len) / 512) * 512;
                    if roll < 13 {
                        RecordBody::Zero {
                            offset,
                            len: len as u32,
                        }
                    } else {
                        let mut data = vec![0u8; len as usize];
                        let fill: u8 = rng.random();
                        // Cheap but position-dependent content: catches misplaced bytes.
                        for (j, b) in data.iter_mut().enumerate() {
                            *b = fill ^ (j as u8).wrapping_mul(31) ^ (seq as u8);
                        }
                        RecordBody::Write {
                            offset,
                            data: data.into(),
                        }
                    }
                };
                Record {
                    seq,
                    ts_us: self.ts_of(seq),
                    body,
                }
            })
            .collect()
    }
}

/// The volume as the source had it, record by record.
pub struct Model {
    pub image: Vec<u8>,
    pub seq: u64,
}

impl Model {
    pub fn new(volume_size: u64) -> Model {
        Model {
            image: vec![0u8; volume_size as usize],
            seq: 0,
        }
    }

    pub fn apply(&mut self, r: &Record) {
        assert_eq!(r.seq, self.seq + 1, "model replays in order");
        match &r.body {
            RecordBody::Write { offset, data } => {
                self.image[*offset as usize..*offset as usize + data.len()].copy_from_slice(data)
            }
            RecordBody::Zero { offset, len } => {
                self.image[*offset as usize..*offset as usize + *len as usize].fill(0)
            }
            RecordBody::Bookmark { .. } => {}
        }
        self.seq = r.seq;
    }

    pub fn hash(&self) -> blake3::Hash {
        blake3::hash(&self.image)
    }
}

/// BLAKE3 of a whole image read through `read(off, buf)` in 4 MiB steps.
pub fn image_hash(
    size: u64,
    mut read: impl FnMut(u64, &mut [u8]) -> Result<(), super::JournalError>,
) -> Result<blake3::Hash, super::JournalError> {
    let mut h = blake3::Hasher::new();
    let mut buf = vec![0u8; 4 << 20];
    let mut off = 0;
    while off < size {
        let n = (size - off).min(buf.len() as u64) as usize;
        read(off, &mut buf[..n])?;
        h.update(&buf[..n]);
        off += n as u64;
    }
    Ok(h.finalize())
}
