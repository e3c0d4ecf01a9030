//! In-memory index of the journal: which records touch which 64 KiB block,
//! and the read plan for a range of a point-in-time image.
//!
//! Records are keyed by `(seq, sub)`: `sub` is 0 for a source record and
//! numbers the extents of a compacted interval, which all carry the seq of
//! the interval's end (they are disjoint, so their order does not matter).
//!
//! Invariant: for every block, the key list is ascending and holds exactly the
//! Write/Zero records with `base_seq < seq` that overlap the block.

use std::collections::{BTreeMap, HashMap};

use super::format::Kind;

pub const BLOCK_SHIFT: u32 = 16;

/// `(seq, sub)`.
pub type Key = (u64, u32);

#[derive(Debug, Clone, Copy)]
pub struct RecMeta {
    pub kind: Kind,
    pub segno: u64,
    /// Record start in the segment file.
    pub pos: u64,
    pub offset: u64,
    pub len: u32,
}

impl RecMeta {
    /// The index's view of a record listed in segment `segno`.
    pub fn of(segno: u64, e: &super::format::IndexEntry) -> RecMeta {
        RecMeta {
            kind: e.kind,
            segno,
            pos: e.pos,
            offset: e.offset,
            len: e.len,
        }
    }

    pub fn end(&self) -> u64 {
        self.offset + self.len as u64
    }
}

/// Where the bytes of one piece of an image come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// From the record with this key (Write payload).
    Record(Key),
    Zeros,
    Replica,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Piece {
    pub off: u64,
    pub len: u64,
    pub src: Source,
}

#[derive(Default)]
pub struct Index {
    blocks: HashMap<u64, Vec<Key>>,
    recs: BTreeMap<Key, RecMeta>,
}

fn blocks_of(off: u64, len: u64) -> std::ops::RangeInclusive<u64> {
    (off >> BLOCK_SHIFT)..=((off + len.max(1) - 1) >> BLOCK_SHIFT)
}

impl Index {
    /// Insert; keys must come in ascending order (appends and compaction installs do).
    pub fn insert(&mut self, key: Key, m: RecMeta) {
        if m.len == 0 {
            return;
        }
        for b in blocks_of(m.offset, m.len as u64) {
            let v = self.blocks.entry(b).or_default();
            let at = v.partition_point(|k| *k < key);
            v.insert(at, key);
        }
        self.recs.insert(key, m);
    }

    pub fn get(&self, key: Key) -> Option<&RecMeta> {
        self.recs.get(&key)
    }

    pub fn len(&self) -> usize {
        self.recs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.recs.is_empty()
    }

    /// Records with `from < seq <= to`, ascending.
    pub fn range(&self, from: u64, to: u64) -> impl Iterator<Item = (Key, &RecMeta)> {
        let lo = (from.saturating_add(1), 0);
        let hi = (to, u32::MAX);
        let r = if lo <= hi {
            Some(self.recs.range(lo..=hi))
        } else {
            None
        };
        r.into_iter().flatten().map(|(k, m)| (*k, m))
    }

    /// Forget every record with `seq <= upto` (they are in the replica now).
    pub fn remove_upto(&mut self, upto: u64) {
        self.remove_range(0, upto);
    }

    /// Forget every record with `from <= seq <= to`.
    pub fn remove_range(&mut self, from: u64, to: u64) {
        if from > to {
            return;
        }
        let mut mid = self.recs.split_off(&(from, 0));
        let mut after = match to.checked_add(1) {
            Some(n) => mid.split_off(&(n, 0)),
            None => BTreeMap::new(),
        };
        self.recs.append(&mut after);
        for (_, m) in mid {
            for b in blocks_of(m.offset, m.len as u64) {
                if let Some(v) = self.blocks.get_mut(&b) {
                    v.retain(|k| k.0 < from || k.0 > to);
                    if v.is_empty() {
                        self.blocks.remove(&b);
                    }
                }
            }
        }
    }

    /// Where each byte of `[off, off+len)` of the image at `at` comes from,
    /// considering only records in `(base, at]`. Pieces are sorted and cover
    /// the range exactly.
    pub fn plan(&self, base: u64, at: u64, off: u64, len: u64) -> Vec<Piece> {
        let mut out = Vec::new();
        if len == 0 {
            return out;
        }
        let end = off + len;
        let mut unfilled: Vec<(u64, u64)> = Vec::with_capacity(4);
        for b in blocks_of(off, len) {
            let bs = (b << BLOCK_SHIFT).max(off);
            let be = ((b + 1) << BLOCK_SHIFT).min(end);
            unfilled.clear();
            unfilled.push((bs, be));
            if let Some(seqs) = self.blocks.get(&b) {
                let top = seqs.partition_point(|k| k.0 <= at);
                for &key in seqs[..top].iter().rev() {
                    if key.0 <= base || unfilled.is_empty() {
                        break;
                    }
                    let Some(m) = self.recs.get(&key) else {
                        continue;
                    };
                    let (ra, rb) = (m.offset.max(bs), m.end().min(be));
                    if ra >= rb {
                        continue;
                    }
                    let src = match m.kind {
                        Kind::Zero => Source::Zeros,
                        _ => Source::Record(key),
                    };
                    let mut next = Vec::with_capacity(unfilled.len() + 1);
                    for &(ua, ub) in &unfilled {
                        let (ia, ib) = (ua.max(ra), ub.min(rb));
                        if ia >= ib {
                            next.push((ua, ub));
                            continue;
                        }
                        out.push(Piece {
                            off: ia,
                            len: ib - ia,
                            src,
                        });
                        if ua < ia {
                            next.push((ua, ia));
                        }
                        if ib < ub {
                            next.push((ib, ub));
                        }
                    }
                    unfilled = next;
                }
            }
            for &(ua, ub) in &unfilled {
                out.push(Piece {
                    off: ua,
                    len: ub - ua,
                    src: Source::Replica,
                });
            }
        }
        out.sort_by_key(|p| p.off);
        // Merge neighbours from the same source so I/O is done in large pieces.
        let mut merged: Vec<Piece> = Vec::with_capacity(out.len());
        for p in out {
            if let Some(l) = merged.last_mut()
                && l.src == p.src
                && l.off + l.len == p.off
            {
                l.len += p.len;
                continue;
            }
            merged.push(p);
        }
        merged
    }

    /// The newest version of every byte written in `(from, to]`, as disjoint
    /// extents sorted by offset: what a checkpoint writes to the replica.
    pub fn top_extents(&self, from: u64, to: u64) -> Vec<Piece> {
        // Paint in ascending seq order; later records overwrite earlier ones.
        let mut map: BTreeMap<u64, (u64, Source)> = BTreeMap::new(); // start -> (end, src)
        for (key, m) in self.range(from, to) {
            let (a, b) = (m.offset, m.end());
            if a >= b {
                continue;
            }
            let src = match m.kind {
                Kind::Zero => Source::Zeros,
                _ => Source::Record(key),
            };
            // Cut existing extents that overlap [a, b).
            let mut overlapping: Vec<(u64, (u64, Source))> = Vec::new();
            if let Some((&s, &(e, src0))) = map.range(..a).next_back()
                && e > a
            {
                overlapping.push((s, (e, src0)));
            }
            overlapping.extend(map.range(a..b).map(|(s, v)| (*s, *v)));
            for (s, (e, src0)) in overlapping {
                map.remove(&s);
                if s < a {
                    map.insert(s, (a, src0));
                }
                if e > b {
                    map.insert(b, (e, src0));
                }
            }
            map.insert(a, (b, src));
        }
        map.into_iter()
            .map(|(s, (e, src))| Piece {
                off: s,
                len: e - s,
                src,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(seg: u64, off: u64, len: u32) -> RecMeta {
        RecMeta {
            kind: Kind::Write,
            segno: seg,
            pos: 0,
            offset: off,
            len,
        }
    }

    #[test]
    fn plan_takes_newest_version_at_the_point() {
        let mut ix = Index::default();
        ix.insert((1, 0), w(0, 0, 8192));
        ix.insert((2, 0), w(0, 4096, 100));
        ix.insert(
            (3, 0),
            RecMeta {
                kind: Kind::Zero,
                ..w(0, 0, 10)
            },
        );
        let p = ix.plan(0, 2, 0, 8192);
        assert_eq!(
            p,
            vec![
                Piece {
                    off: 0,
                    len: 4096,
                    src: Source::Record((1, 0))
                },
                Piece {
                    off: 4096,
                    len: 100,
                    src: Source::Record((2, 0))
                },
                Piece {
                    off: 4196,
                    len: 3996,
                    src: Source::Record((1, 0))
                },
            ]
        );
        let p = ix.plan(0, 3, 0, 20);
        assert_eq!(
            p[0],
            Piece {
                off: 0,
                len: 10,
                src: Source::Zeros
            }
        );
        assert_eq!(
            p[1],
            Piece {
                off: 10,
                len: 10,
                src: Source::Record((1, 0))
            }
        );
        // Before any record, and beyond them, it is the replica.
        assert_eq!(
            ix.plan(0, 0, 0, 10),
            vec![Piece {
                off: 0,
                len: 10,
                src: Source::Replica
            }]
        );
        assert_eq!(
            ix.plan(1, 1, 0, 10),
            vec![Piece {
                off: 0,
                len: 10,
                src: Source::Replica
            }]
        );
    }

    #[test]
    fn top_extents_keep_only_the_newest_bytes() {
        let mut ix = Index::default();
        ix.insert((1, 0), w(0, 0, 100));
        ix.insert((2, 0), w(0, 50, 100));
        ix.insert((3, 0), w(0, 60, 10));
        let t = ix.top_extents(0, 3);
        assert_eq!(
            t,
            vec![
                Piece {
                    off: 0,
                    len: 50,
                    src: Source::Record((1, 0))
                },
                Piece {
                    off: 50,
                    len: 10,
                    src: Source::Record((2, 0))
                },
                Piece {
                    off: 60,
                    len: 10,
                    src: Source::Record((3, 0))
                },
                Piece {
                    off: 70,
                    len: 80,
                    src: Source::Record((2, 0))
                },
            ]
        );
        ix.remove_upto(2);
        assert_eq!(ix.len(), 1);
        assert_eq!(ix.plan(2, 3, 0, 100).len(), 3);
    }
}
