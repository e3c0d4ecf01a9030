//! Index of the journal: which records touch which 64 KiB block, the
//! points (seq and time), and the read plan for a range of a point-in-time
//! image.
//!
//! Two tiers. Records and points of segments not yet sealed (the active
//! one, and any whose on-disk index could not be written) are in memory;
//! each sealed segment's are on disk in its `.bix` ([`super::sealed`]), with
//! a summary in memory. Memory therefore grows with the active segment and
//! with the number of segments, not with the records held.
//!
//! Records are keyed by `(seq, sub)`: `sub` is 0 for a source record and
//! numbers the extents of a compacted interval, which all carry the seq of
//! the interval's end (they are disjoint, so their order does not matter).
//!
//! A record is listed under the nodes of the canonical decomposition of the
//! blocks it touches into aligned power-of-two runs (a node is a level and
//! the block number shifted by it): a 4 KiB write is one node, a discard of a
//! whole 2 TiB volume at most 2 per level, never one entry per block. The
//! nodes holding a block are one per level, so a lookup visits the levels in
//! use.
//!
//! Invariant: every Write/Zero record with `base_seq < seq` is listed, in
//! memory or in exactly one sealed segment's index; lookups ignore records
//! at or below the base they are given.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;

use super::format::Kind;
use super::sealed::{BixError, SealedIndex};

pub const BLOCK_SHIFT: u32 = 16;
/// Levels above this never occur: volumes are at most 2^32 blocks.
const MAX_LEVEL: u32 = 40;

/// `(seq, sub)`.
pub type Key = (u64, u32);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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
    Record(Key, RecMeta),
    Zeros,
    Replica,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Piece {
    pub off: u64,
    pub len: u64,
    pub src: Source,
}

/// The node of `level` holding block `b`.
pub fn node_key(level: u32, b: u64) -> u64 {
    ((level as u64) << 58) | (b >> level)
}

/// The first and last block of a node.
pub fn node_blocks(node: u64) -> (u64, u64) {
    let level = (node >> 58) as u32;
    let first = (node & ((1 << 58) - 1)) << level.min(MAX_LEVEL);
    (first, first + (1u64 << level.min(MAX_LEVEL)) - 1)
}

/// The canonical decomposition of the blocks `[off, off+len)` touches:
/// maximal aligned power-of-two runs, at most two per level.
pub fn nodes_of(off: u64, len: u64) -> impl Iterator<Item = u64> {
    let (mut lo, end) = (
        off >> BLOCK_SHIFT,
        ((off + len.max(1) - 1) >> BLOCK_SHIFT) + 1,
    );
    std::iter::from_fn(move || {
        if lo >= end {
            return None;
        }
        let mut level = if lo == 0 {
            MAX_LEVEL
        } else {
            lo.trailing_zeros().min(MAX_LEVEL)
        };
        while (1u64 << level) > end - lo {
            level -= 1;
        }
        let n = node_key(level, lo);
        lo += 1 << level;
        Some(n)
    })
}

fn blocks_of(off: u64, len: u64) -> std::ops::RangeInclusive<u64> {
    (off >> BLOCK_SHIFT)..=((off + len.max(1) - 1) >> BLOCK_SHIFT)
}

/// The in-memory tier: records by node and by key.
#[derive(Default)]
struct MemIndex {
    nodes: HashMap<u64, Vec<Key>>,
    recs: BTreeMap<Key, RecMeta>,
    /// Levels ever used (bit `l` for level `l`).
    levels: u64,
}

impl MemIndex {
    fn insert(&mut self, key: Key, m: RecMeta) {
        for n in nodes_of(m.offset, m.len as u64) {
            self.levels |= 1 << (n >> 58);
            let v = self.nodes.entry(n).or_default();
            let at = v.partition_point(|k| *k < key);
            v.insert(at, key);
        }
        self.recs.insert(key, m);
    }

    /// Forget every record with `from <= seq <= to` held by `segno` (any
    /// segment if `None`).
    fn remove_range(&mut self, from: u64, to: u64, segno: Option<u64>) {
        if from > to {
            return;
        }
        let mut mid = self.recs.split_off(&(from, 0));
        let mut after = match to.checked_add(1) {
            Some(n) => mid.split_off(&(n, 0)),
            None => BTreeMap::new(),
        };
        if let Some(s) = segno {
            let (gone, stay): (BTreeMap<Key, RecMeta>, BTreeMap<Key, RecMeta>) =
                mid.into_iter().partition(|(_, m)| m.segno == s);
            self.recs.extend(stay);
            mid = gone;
        }
        self.recs.append(&mut after);
        for (key, m) in mid {
            for n in nodes_of(m.offset, m.len as u64) {
                if let Some(v) = self.nodes.get_mut(&n) {
                    v.retain(|k| *k != key);
                    if v.is_empty() {
                        self.nodes.remove(&n);
                    }
                }
            }
        }
    }

    fn candidates(&self, b: u64, base: u64, at: u64, out: &mut Vec<(Key, RecMeta)>) {
        let mut levels = self.levels;
        while levels != 0 {
            let level = levels.trailing_zeros();
            levels &= levels - 1;
            if let Some(keys) = self.nodes.get(&node_key(level, b)) {
                let top = keys.partition_point(|k| k.0 <= at);
                for k in keys[..top].iter().rev() {
                    if k.0 <= base {
                        break;
                    }
                    out.push((*k, self.recs[k]));
                }
            }
        }
    }
}

#[derive(Default)]
pub struct Index {
    mem: MemIndex,
    /// Points of the segments whose records are in `mem`, ascending by seq.
    mem_points: VecDeque<(u64, u64)>,
    /// By segment number (which orders them by seq, as their ranges are disjoint).
    sealed: BTreeMap<u64, Arc<SealedIndex>>,
}

/// Cut `[bs, be)`'s unfilled parts covered by record `m` into `out`.
fn paint(
    unfilled: &mut Vec<(u64, u64)>,
    out: &mut Vec<Piece>,
    key: Key,
    m: &RecMeta,
    bs: u64,
    be: u64,
) {
    let (ra, rb) = (m.offset.max(bs), m.end().min(be));
    if ra >= rb {
        return;
    }
    let src = match m.kind {
        Kind::Zero => Source::Zeros,
        _ => Source::Record(key, *m),
    };
    let mut next = Vec::with_capacity(unfilled.len() + 1);
    for &(ua, ub) in unfilled.iter() {
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
    *unfilled = next;
}

impl Index {
    /// Insert a record into the memory tier; keys must come in ascending
    /// order (appends and compaction installs do).
    pub fn insert(&mut self, key: Key, m: RecMeta) {
        if m.len == 0 {
            return;
        }
        self.mem.insert(key, m);
    }

    /// Add a point (seq, monotonic time) of a segment in the memory tier.
    pub fn push_point(&mut self, seq: u64, ts: u64) {
        let at = self.mem_points.partition_point(|p| p.0 < seq);
        if self.mem_points.get(at).is_some_and(|p| p.0 == seq) {
            return;
        }
        self.mem_points.insert(at, (seq, ts));
    }

    /// The points of the memory tier with `lo <= seq <= hi`.
    pub fn mem_points(&self, lo: u64, hi: u64) -> Vec<(u64, u64)> {
        let a = self.mem_points.partition_point(|p| p.0 < lo);
        let b = self.mem_points.partition_point(|p| p.0 <= hi);
        self.mem_points.range(a..b).copied().collect()
    }

    /// Segment `s`'s records and points move to disk: its index there
    /// replaces what memory held of it.
    pub fn seal(&mut self, s: SealedIndex) {
        self.mem
            .remove_range(s.first_seq, s.last_seq, Some(s.id.segno));
        let a = self.mem_points.partition_point(|p| p.0 < s.first_seq);
        let b = self.mem_points.partition_point(|p| p.0 <= s.last_seq);
        self.mem_points.drain(a..b);
        self.sealed.insert(s.id.segno, Arc::new(s));
    }

    /// Forget a sealed segment's index (its segment is gone or replaced).
    pub fn drop_sealed(&mut self, segno: u64) {
        self.sealed.remove(&segno);
    }

    /// Write and Zero records held (sealed segments count whole).
    pub fn len(&self) -> usize {
        self.mem.recs.len()
            + self
                .sealed
                .values()
                .map(|s| s.records as usize)
                .sum::<usize>()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Memory the index holds, roughly: what `/metrics` and the bench report.
    pub fn heap_bytes(&self) -> usize {
        let mem_nodes: usize = self
            .mem
            .nodes
            .values()
            .map(|v| 48 + v.capacity() * 16)
            .sum();
        mem_nodes
            + self.mem.recs.len() * 64
            + self.mem_points.capacity() * 16
            + self.sealed.values().map(|s| s.heap_bytes()).sum::<usize>()
    }

    /// Forget every record and point with `seq <= upto` (they are in the
    /// replica now). Sealed segments go once wholly below it.
    pub fn remove_upto(&mut self, upto: u64) {
        self.mem.remove_range(0, upto, None);
        let n = self.mem_points.partition_point(|p| p.0 <= upto);
        self.mem_points.drain(..n);
        self.sealed.retain(|_, s| s.last_seq > upto);
    }

    /// Forget every record and point with `from <= seq <= to` (a
    /// compaction's range), and the sealed indexes inside it.
    pub fn remove_range(&mut self, from: u64, to: u64) {
        self.mem.remove_range(from, to, None);
        let a = self.mem_points.partition_point(|p| p.0 < from);
        let b = self.mem_points.partition_point(|p| p.0 <= to);
        self.mem_points.drain(a..b);
        self.sealed
            .retain(|_, s| !(s.first_seq >= from && s.last_seq <= to));
    }

    /// The first point with seq at or after `seq`, from either tier.
    pub fn point_at_or_after(&self, seq: u64) -> Result<Option<(u64, u64)>, BixError> {
        let i = self.mem_points.partition_point(|p| p.0 < seq);
        let mut best = self.mem_points.get(i).copied();
        for s in self.sealed.values() {
            if s.last_seq < seq || best.is_some_and(|b| b.0 < s.first_seq) {
                continue;
            }
            if let Some(p) = s.point_at_or_after(seq)?
                && best.is_none_or(|b| p.0 < b.0)
            {
                best = Some(p);
                break;
            }
        }
        Ok(best)
    }

    /// The last point whose time is at or before `ts`, from either tier.
    pub fn point_at_or_before_ts(&self, ts: u64) -> Result<Option<(u64, u64)>, BixError> {
        let i = self.mem_points.partition_point(|p| p.1 <= ts);
        let mut best = i.checked_sub(1).map(|i| self.mem_points[i]);
        for s in self.sealed.values().rev() {
            let Some((first, _)) = s.point_bounds() else {
                continue;
            };
            if best.is_some_and(|b| b.0 > s.last_seq) || first.1 > ts {
                continue;
            }
            if let Some(p) = s.point_at_or_before_ts(ts)?
                && best.is_none_or(|b| p.0 > b.0)
            {
                best = Some(p);
            }
            break;
        }
        Ok(best)
    }

    /// Every point with `lo <= seq <= hi`, ascending, from either tier.
    pub fn points_in(&self, lo: u64, hi: u64) -> Result<Vec<(u64, u64)>, BixError> {
        let mut out = self.mem_points(lo, hi);
        for s in self.sealed.values() {
            if s.last_seq >= lo && s.first_seq <= hi {
                out.extend(s.points_in(lo, hi)?);
            }
        }
        out.sort_unstable();
        out.dedup_by_key(|p| p.0);
        Ok(out)
    }

    /// Where a checkpoint over `(from, to]` may stop between steps that
    /// each read one sealed segment: the ends of the sealed segments inside
    /// the range, then `to`.
    pub fn step_ends(&self, from: u64, to: u64) -> Vec<u64> {
        let mut v: Vec<u64> = self
            .sealed
            .values()
            .map(|s| s.last_seq)
            .filter(|&e| e > from && e < to)
            .collect();
        v.sort_unstable();
        v.dedup();
        v.push(to);
        v
    }

    /// Records with `from < seq <= to`, ascending, from either tier.
    fn records(&self, from: u64, to: u64) -> Result<Vec<(Key, RecMeta)>, BixError> {
        let mut out: Vec<(Key, RecMeta)> = Vec::new();
        let lo = (from.saturating_add(1), 0);
        let hi = (to, u32::MAX);
        if lo <= hi {
            out.extend(self.mem.recs.range(lo..=hi).map(|(k, m)| (*k, *m)));
        }
        for s in self.sealed.values() {
            if s.last_seq > from && s.first_seq <= to {
                out.extend(
                    s.all_records()?
                        .into_iter()
                        .filter(|(k, _)| k.0 > from && k.0 <= to),
                );
            }
        }
        out.sort_unstable_by_key(|e| e.0);
        Ok(out)
    }

    /// Where each byte of `[off, off+len)` of the image at `at` comes from,
    /// considering only records in `(base, at]`. Pieces are sorted and cover
    /// the range exactly.
    pub fn plan(&self, base: u64, at: u64, off: u64, len: u64) -> Result<Vec<Piece>, BixError> {
        let mut out = Vec::new();
        if len == 0 {
            return Ok(out);
        }
        let end = off + len;
        let mut unfilled: Vec<(u64, u64)> = Vec::with_capacity(4);
        let (mut mem, mut disk) = (Vec::new(), Vec::new());
        for b in blocks_of(off, len) {
            let bs = (b << BLOCK_SHIFT).max(off);
            let be = ((b + 1) << BLOCK_SHIFT).min(end);
            unfilled.clear();
            unfilled.push((bs, be));
            mem.clear();
            self.mem.candidates(b, base, at, &mut mem);
            mem.sort_unstable_by_key(|x| std::cmp::Reverse(x.0));
            let mut mi = 0;
            // Newest first: the memory tier's records newer than each sealed
            // segment, then that segment's.
            for s in self.sealed.values().rev() {
                if unfilled.is_empty() || s.last_seq <= base {
                    break;
                }
                if s.first_seq > at {
                    continue;
                }
                while mi < mem.len() && mem[mi].0.0 > s.last_seq && !unfilled.is_empty() {
                    paint(&mut unfilled, &mut out, mem[mi].0, &mem[mi].1, bs, be);
                    mi += 1;
                }
                disk.clear();
                s.candidates(b, (bs, be), base, at, &mut disk)?;
                disk.sort_unstable_by_key(|x: &(Key, RecMeta)| std::cmp::Reverse(x.0));
                for (k, m) in &disk {
                    if unfilled.is_empty() {
                        break;
                    }
                    paint(&mut unfilled, &mut out, *k, m, bs, be);
                }
            }
            while mi < mem.len() && !unfilled.is_empty() {
                paint(&mut unfilled, &mut out, mem[mi].0, &mem[mi].1, bs, be);
                mi += 1;
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
        Ok(merged)
    }

    /// The newest version of every byte written in `(from, to]`, as disjoint
    /// extents sorted by offset: what a checkpoint writes to the replica.
    pub fn top_extents(&self, from: u64, to: u64) -> Result<Vec<Piece>, BixError> {
        // Paint in ascending seq order; later records overwrite earlier ones.
        let mut map: BTreeMap<u64, (u64, Source)> = BTreeMap::new(); // start -> (end, src)
        for (key, m) in self.records(from, to)? {
            let (a, b) = (m.offset, m.end());
            if a >= b {
                continue;
            }
            let src = match m.kind {
                Kind::Zero => Source::Zeros,
                _ => Source::Record(key, m),
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
        Ok(map
            .into_iter()
            .map(|(s, (e, src))| Piece {
                off: s,
                len: e - s,
                src,
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::super::sealed::{Contents, SegmentId, build};
    use super::super::storage::{SimStorage, Storage};
    use super::*;

    fn w(seg: u64, off: u64, len: u32) -> RecMeta {
        RecMeta {
            kind: Kind::Write,
            segno: seg,
            pos: 64,
            offset: off,
            len,
        }
    }

    /// (offset, length, key of the record it comes from; None = zeros,
    /// Some((0, 0)) = replica).
    fn shape(p: &[Piece]) -> Vec<(u64, u64, Option<Key>)> {
        p.iter()
            .map(|p| {
                let k = match p.src {
                    Source::Record(k, _) => Some(k),
                    Source::Zeros => None,
                    Source::Replica => Some((0, 0)),
                };
                (p.off, p.len, k)
            })
            .collect()
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
        let p = ix.plan(0, 2, 0, 8192).unwrap();
        assert_eq!(
            shape(&p),
            vec![
                (0, 4096, Some((1, 0))),
                (4096, 100, Some((2, 0))),
                (4196, 3996, Some((1, 0)))
            ]
        );
        let p = ix.plan(0, 3, 0, 20).unwrap();
        assert_eq!(shape(&p)[..2], [(0, 10, None), (10, 10, Some((1, 0)))]);
        // Before any record, and beyond them, it is the replica.
        assert_eq!(
            shape(&ix.plan(0, 0, 0, 10).unwrap()),
            [(0, 10, Some((0, 0)))]
        );
        assert_eq!(
            shape(&ix.plan(1, 1, 0, 10).unwrap()),
            [(0, 10, Some((0, 0)))]
        );
    }

    #[test]
    fn top_extents_keep_only_the_newest_bytes() {
        let mut ix = Index::default();
        ix.insert((1, 0), w(0, 0, 100));
        ix.insert((2, 0), w(0, 50, 100));
        ix.insert((3, 0), w(0, 60, 10));
        let t = ix.top_extents(0, 3).unwrap();
        assert_eq!(
            shape(&t),
            vec![
                (0, 50, Some((1, 0))),
                (50, 10, Some((2, 0))),
                (60, 10, Some((3, 0))),
                (70, 80, Some((2, 0)))
            ]
        );
        ix.remove_upto(2);
        assert_eq!(ix.len(), 1);
        assert_eq!(ix.plan(2, 3, 0, 100).unwrap().len(), 3);
    }

    #[test]
    fn a_whole_volume_discard_is_a_few_nodes_not_one_per_block() {
        // 2 TiB from block 1 on: 2^25 - 1 blocks.
        let n = nodes_of(1 << 16, (2u64 << 40) - (1 << 16)).count();
        assert!(n <= 2 * 26, "{n} nodes");
        // The decomposition covers each block exactly once.
        for (off, len) in [(0u64, 1u64), (65535, 2), (3 << 16, 13 << 16), (7, 1 << 30)] {
            let mut covered: Vec<u64> = nodes_of(off, len)
                .flat_map(|n| {
                    let (a, b) = node_blocks(n);
                    a..=b
                })
                .collect();
            covered.sort_unstable();
            let want: Vec<u64> = blocks_of(off, len).collect();
            assert_eq!(covered, want, "{off}+{len}");
        }
        let mut ix = Index::default();
        ix.insert((1, 0), w(0, 0, 1 << 20));
        ix.insert(
            (2, 0),
            RecMeta {
                kind: Kind::Zero,
                ..w(0, 1 << 16, 15 << 16)
            },
        );
        assert!(ix.mem.nodes.len() <= 5, "{} nodes", ix.mem.nodes.len());
        let p = ix.plan(0, 2, 0, 1 << 20).unwrap();
        assert_eq!(
            shape(&p),
            [(0, 1 << 16, Some((1, 0))), (1 << 16, 15 << 16, None)]
        );
    }

    /// A deterministic mix of small, straddling and wide writes and zeros.
    fn workload(seed: u64, n: u64, volume: u64) -> Vec<(Key, RecMeta)> {
        let mut x = seed;
        let mut next = move || {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            x >> 11
        };
        (1..=n)
            .map(|seq| {
                let big = next() % 10 == 0;
                let len = if big {
                    next() % (4 << 20) + 1
                } else {
                    next() % 9000 + 1
                };
                let off = next() % (volume - len);
                let kind = if next() % 7 == 0 {
                    Kind::Zero
                } else {
                    Kind::Write
                };
                (
                    (seq, 0),
                    RecMeta {
                        kind,
                        ..w(1 + seq / 300, off, len as u32)
                    },
                )
            })
            .collect()
    }

    #[test]
    fn sealed_segments_answer_as_memory_does() {
        let volume = 64u64 << 20;
        let recs = workload(7, 1200, volume);
        let mut mem = Index::default();
        for (k, m) in &recs {
            mem.insert(*k, *m);
            mem.push_point(k.0, k.0 * 10);
        }
        // The same records, all but the last segment's on "disk".
        let st = SimStorage::new();
        let mut tiered = Index::default();
        for (k, m) in &recs {
            tiered.insert(*k, *m);
            tiered.push_point(k.0, k.0 * 10);
        }
        let mut segnos: Vec<u64> = recs.iter().map(|r| r.1.segno).collect();
        segnos.dedup();
        for &segno in &segnos[..segnos.len() - 1] {
            let mine: Vec<(Key, RecMeta)> = recs
                .iter()
                .filter(|r| r.1.segno == segno)
                .copied()
                .collect();
            let (lo, hi) = (mine[0].0.0, mine.last().unwrap().0.0);
            let points: Vec<(u64, u64)> = (lo..=hi).map(|s| (s, s * 10)).collect();
            let id = SegmentId {
                segno,
                journal_id: 9,
                created_us: 5,
                level: 0,
                len: 1 << 40,
            };
            let bytes = build(&Contents {
                id,
                first_seq: lo,
                last_seq: hi,
                records: &mine,
                points: &points,
                bookmarks: &[],
            });
            let path = std::path::PathBuf::from(format!("/j/{segno}.bix"));
            st.write_atomic(&path, &bytes).unwrap();
            let f = st.open(&path, false).unwrap();
            let (s, _) = SealedIndex::open(f, id, volume).unwrap();
            tiered.seal(s);
        }
        assert!(!tiered.sealed.is_empty() && tiered.mem.recs.len() < 300);
        assert_eq!(tiered.len(), mem.len());
        let mut x = 1u64;
        for _ in 0..400 {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
            let at = (x >> 20) % 1250;
            let base = ((x >> 40) % 1250).min(at);
            let len = (x >> 8) % (200 << 10) + 1;
            let off = (x >> 30) % (volume - len);
            assert_eq!(
                mem.plan(base, at, off, len).unwrap(),
                tiered.plan(base, at, off, len).unwrap(),
                "plan({base}, {at}, {off}, {len})"
            );
            assert_eq!(
                mem.point_at_or_after(at).unwrap(),
                tiered.point_at_or_after(at).unwrap()
            );
            assert_eq!(
                mem.point_at_or_before_ts(at * 10 + 5).unwrap(),
                tiered.point_at_or_before_ts(at * 10 + 5).unwrap()
            );
        }
        assert_eq!(
            mem.top_extents(100, 1000).unwrap(),
            tiered.top_extents(100, 1000).unwrap()
        );
        assert_eq!(
            mem.points_in(250, 700).unwrap(),
            tiered.points_in(250, 700).unwrap()
        );
        mem.remove_upto(650);
        tiered.remove_upto(650);
        assert_eq!(
            mem.plan(650, 1200, 0, 1 << 20).unwrap(),
            tiered.plan(650, 1200, 0, 1 << 20).unwrap()
        );
    }

    #[test]
    fn a_bix_for_another_segment_or_damaged_is_refused() {
        let recs = workload(3, 50, 1 << 30);
        let id = SegmentId {
            segno: 4,
            journal_id: 1,
            created_us: 2,
            level: 0,
            len: 1 << 30,
        };
        let bytes = build(&Contents {
            id,
            first_seq: 1,
            last_seq: 50,
            records: &recs,
            points: &[(1, 1), (50, 2)],
            bookmarks: &[],
        });
        let st = SimStorage::new();
        let p = std::path::Path::new("/b.bix");
        st.write_atomic(p, &bytes).unwrap();
        let ok = SealedIndex::open(st.open(p, false).unwrap(), id, 1 << 30);
        assert!(ok.is_ok());
        let other = SegmentId {
            created_us: 3,
            ..id
        };
        assert!(SealedIndex::open(st.open(p, false).unwrap(), other, 1 << 30).is_err());
        // A flipped byte in a node page is found when the page is read.
        let mut b = bytes.clone();
        let at = b.len() - 2 * super::super::sealed::PAGE + 10;
        b[at] ^= 1;
        st.write_atomic(p, &b).unwrap();
        let (s, _) = SealedIndex::open(st.open(p, false).unwrap(), id, 1 << 30).unwrap();
        assert!(s.all_records().is_err());
        // Truncated: refused at open.
        st.write_atomic(p, &bytes[..bytes.len() - 4096]).unwrap();
        assert!(SealedIndex::open(st.open(p, false).unwrap(), id, 1 << 30).is_err());
    }
}
