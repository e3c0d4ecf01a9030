//! The index of a sealed segment, kept on disk beside it (`seg-N.bix`):
//! which records touch which block nodes, and the segment's points (seq and
//! time). Memory holds only a summary per segment: a Bloom filter of the
//! nodes the segment touches, one fence key per 4 KiB page, and the header.
//! Lookups read the pages they need (the kernel's page cache keeps hot ones).
//!
//! Bound: about 1.3 bytes of memory per node entry plus 24 bytes per 4 KiB
//! page (10 Bloom bits per entry, a fence per page), against 48 bytes per
//! entry on disk: 20 M records of 4 KiB cost about 27 MiB, not 2 GB.
//!
//! A `.bix` is bound to the segment it describes (segment number, journal
//! id, creation time, level, length): one that does not match, or fails a
//! checksum, is rebuilt from the segment. It needs no fsync for the same
//! reason. Format: docs/FORMATS.md ("Sealed segment block index").

use std::sync::Arc;

use super::format::{IndexEntry, Kind, RecordHeader, u16_at, u32_at, u64_at};
use super::index::{BLOCK_SHIFT, Key, RecMeta, node_blocks, node_key};
use super::storage::BlockFile;
use crate::engine::crc;

pub const BIX_MAGIC: [u8; 8] = *b"TERNJBIX";
pub const BIX_VERSION: u16 = 1;
pub const PAGE: usize = 4096;
pub const NODE_ENTRY_LEN: usize = 48;
pub const NODES_PER_PAGE: usize = 85;
pub const POINT_ENTRY_LEN: usize = 16;
pub const POINTS_PER_PAGE: usize = 255;
pub const BOOKMARK_ENTRY_LEN: usize = 32;
/// Bloom filter bits per node entry, and probes per lookup (~1% false positives).
const BLOOM_BITS: u64 = 10;
const BLOOM_K: u64 = 7;
const FLAG_PRIMARY: u8 = 1;

/// The segment file a `.bix` describes, as it stands on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentId {
    pub segno: u64,
    pub journal_id: u64,
    pub created_us: u64,
    pub level: u8,
    pub len: u64,
}

#[derive(Debug)]
pub enum BixError {
    Io(std::io::Error),
    Corrupt(String),
}

impl std::fmt::Display for BixError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BixError::Io(e) => write!(f, "{e}"),
            BixError::Corrupt(s) => f.write_str(s),
        }
    }
}

fn bad(s: impl Into<String>) -> BixError {
    BixError::Corrupt(s.into())
}

fn pages(bytes: u64) -> u64 {
    bytes.div_ceil(PAGE as u64)
}

fn bloom_words(keys: u64) -> u64 {
    keys.saturating_mul(BLOOM_BITS).div_ceil(64).max(1)
}

/// The filter's key for the 4 KiB unit at byte `off`: level-0 nodes are
/// filtered per 4 KiB, so a 4 KiB read skips a segment that wrote
/// elsewhere in the same 64 KiB block. (Level 63 is no node's.)
fn unit_key(off: u64) -> u64 {
    (63 << 58) | (off >> 12)
}

/// The 4 KiB units of `[a, b)`.
fn units(a: u64, b: u64) -> std::ops::RangeInclusive<u64> {
    (a >> 12)..=((b.max(a + 1) - 1) >> 12)
}

fn mix(mut x: u64) -> u64 {
    // splitmix64's finaliser: fixed here, as the filter is stored on disk.
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

fn bloom_bits(node: u64, m: u64) -> impl Iterator<Item = u64> {
    let h = mix(node);
    let (h1, h2) = (h & 0xffff_ffff, (h >> 32) | 1);
    (0..BLOOM_K).map(move |i| h1.wrapping_add(i.wrapping_mul(h2)) % m)
}

/// The section sizes a header implies, in pages after the header page.
struct Layout {
    bloom: u64,
    fences: u64,
    bookmarks: u64,
    nodes: u64,
    points: u64,
}

impl Layout {
    fn of(h: &Header) -> Option<Layout> {
        let node_pages = h.nodes.div_ceil(NODES_PER_PAGE as u64);
        let point_pages = h.points.div_ceil(POINTS_PER_PAGE as u64);
        Some(Layout {
            bloom: pages(h.bloom_words.checked_mul(8)?),
            fences: pages(
                node_pages
                    .checked_mul(8)?
                    .checked_add(point_pages.checked_mul(16)?)?,
            ),
            bookmarks: pages(h.bookmarks.checked_mul(BOOKMARK_ENTRY_LEN as u64)?),
            nodes: node_pages,
            points: point_pages,
        })
    }
    fn total(&self) -> Option<u64> {
        let n = 1u64
            .checked_add(self.bloom)?
            .checked_add(self.fences)?
            .checked_add(self.bookmarks)?
            .checked_add(self.nodes)?
            .checked_add(self.points)?;
        n.checked_mul(PAGE as u64)
    }
    fn bloom_at(&self) -> u64 {
        PAGE as u64
    }
    fn fences_at(&self) -> u64 {
        self.bloom_at() + self.bloom * PAGE as u64
    }
    fn bookmarks_at(&self) -> u64 {
        self.fences_at() + self.fences * PAGE as u64
    }
    fn nodes_at(&self) -> u64 {
        self.bookmarks_at() + self.bookmarks * PAGE as u64
    }
    fn points_at(&self) -> u64 {
        self.nodes_at() + self.nodes * PAGE as u64
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Header {
    id: SegmentId,
    first_seq: u64,
    last_seq: u64,
    records: u64,
    nodes: u64,
    points: u64,
    bookmarks: u64,
    levels: u64,
    bloom_words: u64,
    /// Keys the filter was built from (sizes it).
    bloom_keys: u64,
    bloom_crc: u32,
    fence_crc: u32,
    bookmark_crc: u32,
    last_point: (u64, u64),
}

impl Header {
    fn encode(&self) -> Vec<u8> {
        let mut b = vec![0u8; PAGE];
        b[0..8].copy_from_slice(&BIX_MAGIC);
        b[8..10].copy_from_slice(&BIX_VERSION.to_le_bytes());
        b[10] = self.id.level;
        let put = |b: &mut [u8], at: usize, v: u64| b[at..at + 8].copy_from_slice(&v.to_le_bytes());
        put(&mut b, 16, self.id.segno);
        put(&mut b, 24, self.id.journal_id);
        put(&mut b, 32, self.id.created_us);
        put(&mut b, 40, self.id.len);
        put(&mut b, 48, self.first_seq);
        put(&mut b, 56, self.last_seq);
        put(&mut b, 64, self.records);
        put(&mut b, 72, self.nodes);
        put(&mut b, 80, self.points);
        put(&mut b, 88, self.bookmarks);
        put(&mut b, 96, self.levels);
        put(&mut b, 104, self.bloom_words);
        b[112..116].copy_from_slice(&self.bloom_crc.to_le_bytes());
        b[116..120].copy_from_slice(&self.fence_crc.to_le_bytes());
        b[120..124].copy_from_slice(&self.bookmark_crc.to_le_bytes());
        put(&mut b, 128, self.last_point.0);
        put(&mut b, 136, self.last_point.1);
        put(&mut b, 144, self.bloom_keys);
        let c = crc::crc32c(&b[..PAGE - 4]);
        b[PAGE - 4..].copy_from_slice(&c.to_le_bytes());
        b
    }

    fn decode(b: &[u8]) -> Result<Header, BixError> {
        if b.len() != PAGE {
            return Err(bad("short header"));
        }
        if b[0..8] != BIX_MAGIC {
            return Err(bad("bad magic"));
        }
        if crc::crc32c(&b[..PAGE - 4]) != u32_at(b, PAGE - 4) {
            return Err(bad("header checksum mismatch"));
        }
        let v = u16_at(b, 8);
        if v != BIX_VERSION {
            return Err(bad(format!("unsupported version {v}")));
        }
        if b[11..16] != [0; 5] || b[124..128] != [0; 4] || b[152..PAGE - 4].iter().any(|x| *x != 0)
        {
            return Err(bad("reserved bytes must be zero"));
        }
        Self::decode_unchecked(b)
    }

    /// The fields, whatever the checksum and reserved bytes say.
    fn decode_unchecked(b: &[u8]) -> Result<Header, BixError> {
        if b.len() != PAGE {
            return Err(bad("short header"));
        }
        Ok(Header {
            id: SegmentId {
                segno: u64_at(b, 16),
                journal_id: u64_at(b, 24),
                created_us: u64_at(b, 32),
                level: b[10],
                len: u64_at(b, 40),
            },
            first_seq: u64_at(b, 48),
            last_seq: u64_at(b, 56),
            records: u64_at(b, 64),
            nodes: u64_at(b, 72),
            points: u64_at(b, 80),
            bookmarks: u64_at(b, 88),
            levels: u64_at(b, 96),
            bloom_words: u64_at(b, 104),
            bloom_keys: u64_at(b, 144),
            bloom_crc: u32_at(b, 112),
            fence_crc: u32_at(b, 116),
            bookmark_crc: u32_at(b, 120),
            last_point: (u64_at(b, 128), u64_at(b, 136)),
        })
    }
}

fn seal_page(p: &mut [u8]) {
    let c = crc::crc32c(&p[..PAGE - 4]);
    p[PAGE - 4..].copy_from_slice(&c.to_le_bytes());
}

fn pad_to_page(b: &mut Vec<u8>) {
    let n = b.len().div_ceil(PAGE) * PAGE;
    b.resize(n, 0);
}

/// What one segment holds, for [`build`].
pub struct Contents<'a> {
    pub id: SegmentId,
    /// First and last original seq the segment stands for.
    pub first_seq: u64,
    pub last_seq: u64,
    /// Its Write and Zero records, ascending by key.
    pub records: &'a [(Key, RecMeta)],
    /// Its points (seq, time in the journal's monotonic view), ascending.
    pub points: &'a [(u64, u64)],
    /// Its Bookmark records.
    pub bookmarks: &'a [IndexEntry],
}

/// The bytes of the `.bix` describing `c`.
pub fn build(c: &Contents) -> Vec<u8> {
    let mut nodes: Vec<(u64, Key, RecMeta, bool)> = Vec::with_capacity(c.records.len());
    let mut levels = 0u64;
    for (key, m) in c.records {
        for (i, node) in super::index::nodes_of(m.offset, m.len as u64).enumerate() {
            levels |= 1 << (node >> 58);
            nodes.push((node, *key, *m, i == 0));
        }
    }
    nodes.sort_unstable_by_key(|n| (n.0, n.1));
    // Filter keys: level-0 nodes by the 4 KiB units their record covers
    // in the block, wider nodes by themselves.
    let keys_of = |n: &(u64, Key, RecMeta, bool)| -> Vec<u64> {
        if n.0 >> 58 != 0 {
            return vec![n.0];
        }
        let (b0, b1) = node_blocks(n.0);
        let (a, b) = (
            n.2.offset.max(b0 << BLOCK_SHIFT),
            n.2.end().min((b1 + 1) << BLOCK_SHIFT),
        );
        units(a, b).map(|u| unit_key(u << 12)).collect()
    };
    let keys: u64 = nodes.iter().map(|n| keys_of(n).len() as u64).sum();
    let words = bloom_words(keys);
    let mut bloom = vec![0u64; words as usize];
    for n in &nodes {
        for k in keys_of(n) {
            for bit in bloom_bits(k, words * 64) {
                bloom[(bit / 64) as usize] |= 1 << (bit % 64);
            }
        }
    }
    let bloom_bytes: Vec<u8> = bloom.iter().flat_map(|w| w.to_le_bytes()).collect();
    let mut fences = Vec::new();
    for page in nodes.chunks(NODES_PER_PAGE) {
        fences.extend_from_slice(&page[0].0.to_le_bytes());
    }
    for page in c.points.chunks(POINTS_PER_PAGE) {
        fences.extend_from_slice(&page[0].0.to_le_bytes());
        fences.extend_from_slice(&page[0].1.to_le_bytes());
    }
    let mut bms = Vec::new();
    for e in c.bookmarks {
        let mut x = [0u8; BOOKMARK_ENTRY_LEN];
        x[0..8].copy_from_slice(&e.seq.to_le_bytes());
        x[8..16].copy_from_slice(&e.ts_us.to_le_bytes());
        x[16..24].copy_from_slice(&e.pos.to_le_bytes());
        x[24..28].copy_from_slice(&e.len.to_le_bytes());
        bms.extend_from_slice(&x);
    }
    let h = Header {
        id: c.id,
        first_seq: c.first_seq,
        last_seq: c.last_seq,
        records: c.records.len() as u64,
        nodes: nodes.len() as u64,
        points: c.points.len() as u64,
        bookmarks: c.bookmarks.len() as u64,
        levels,
        bloom_words: words,
        bloom_keys: keys,
        bloom_crc: crc::crc32c(&bloom_bytes),
        fence_crc: crc::crc32c(&fences),
        bookmark_crc: crc::crc32c(&bms),
        last_point: c.points.last().copied().unwrap_or((0, 0)),
    };
    let mut b = h.encode();
    for section in [&bloom_bytes, &fences, &bms] {
        b.extend_from_slice(section);
        pad_to_page(&mut b);
    }
    for page in nodes.chunks(NODES_PER_PAGE) {
        let mut p = vec![0u8; PAGE];
        for (i, (node, key, m, primary)) in page.iter().enumerate() {
            let x = &mut p[i * NODE_ENTRY_LEN..(i + 1) * NODE_ENTRY_LEN];
            x[0..8].copy_from_slice(&node.to_le_bytes());
            x[8..16].copy_from_slice(&key.0.to_le_bytes());
            x[16..24].copy_from_slice(&m.offset.to_le_bytes());
            x[24..32].copy_from_slice(&m.pos.to_le_bytes());
            x[32..36].copy_from_slice(&key.1.to_le_bytes());
            x[36..40].copy_from_slice(&m.len.to_le_bytes());
            x[40] = m.kind as u8;
            x[41] = if *primary { FLAG_PRIMARY } else { 0 };
        }
        seal_page(&mut p);
        b.extend_from_slice(&p);
    }
    for page in c.points.chunks(POINTS_PER_PAGE) {
        let mut p = vec![0u8; PAGE];
        for (i, (seq, ts)) in page.iter().enumerate() {
            p[i * 16..i * 16 + 8].copy_from_slice(&seq.to_le_bytes());
            p[i * 16 + 8..i * 16 + 16].copy_from_slice(&ts.to_le_bytes());
        }
        seal_page(&mut p);
        b.extend_from_slice(&p);
    }
    b
}

/// A sealed segment's index: its summary in memory, its pages on disk.
pub struct SealedIndex {
    pub id: SegmentId,
    /// First and last original seq the segment stands for.
    pub first_seq: u64,
    pub last_seq: u64,
    /// Write and Zero records.
    pub records: u64,
    nodes: u64,
    points: u64,
    /// Node levels used (bit `l` for level `l`).
    levels: u64,
    bloom: Vec<u64>,
    node_fence: Vec<u64>,
    point_fence: Vec<(u64, u64)>,
    last_point: (u64, u64),
    volume_size: u64,
    layout: Layout,
    file: Arc<dyn BlockFile>,
}

impl std::fmt::Debug for SealedIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SealedIndex")
            .field("id", &self.id)
            .field("first_seq", &self.first_seq)
            .field("last_seq", &self.last_seq)
            .field("records", &self.records)
            .finish()
    }
}

fn read(file: &dyn BlockFile, at: u64, len: u64) -> Result<Vec<u8>, BixError> {
    let mut b = vec![0u8; len as usize];
    file.read_at(&mut b, at).map_err(BixError::Io)?;
    Ok(b)
}

impl SealedIndex {
    /// Open the `.bix` in `file` if it describes segment `id` of a
    /// `volume_size`-byte volume, returning its summary and the segment's
    /// bookmark records. Reads the header, the filter, the fences and the
    /// bookmarks; pages are read (and checked) when a lookup needs them.
    pub fn open(
        file: Arc<dyn BlockFile>,
        id: SegmentId,
        volume_size: u64,
    ) -> Result<(SealedIndex, Vec<IndexEntry>), BixError> {
        let len = file.len().map_err(BixError::Io)?;
        if len < PAGE as u64 {
            return Err(bad("shorter than its header"));
        }
        let h = Header::decode(&read(&*file, 0, PAGE as u64)?)?;
        if h.id != id {
            return Err(bad(format!(
                "describes another segment ({:?}, not {:?})",
                h.id, id
            )));
        }
        // Every record is at least a record header long: what the segment's
        // length allows bounds every count before it sizes anything.
        let most = id.len / super::format::RECORD_HEADER_LEN as u64;
        if h.records > most
            || h.points > most
            || h.bookmarks > most
            || h.nodes > most.saturating_mul(2 * 64)
            || h.nodes < h.records
            || h.bloom_keys > h.nodes.saturating_mul(16)
            || h.bloom_words != bloom_words(h.bloom_keys)
            || h.first_seq > h.last_seq
            || h.levels >> 40 != 0
        {
            return Err(bad("counts the segment cannot hold"));
        }
        let layout = Layout::of(&h).ok_or_else(|| bad("section sizes overflow"))?;
        if layout.total() != Some(len) {
            return Err(bad(format!("{len} bytes, not what its header says")));
        }
        let bloom_b = read(&*file, layout.bloom_at(), h.bloom_words * 8)?;
        if crc::crc32c(&bloom_b) != h.bloom_crc {
            return Err(bad("filter checksum mismatch"));
        }
        let (np, pp) = (layout.nodes, layout.points);
        let fence_b = read(&*file, layout.fences_at(), np * 8 + pp * 16)?;
        if crc::crc32c(&fence_b) != h.fence_crc {
            return Err(bad("fence checksum mismatch"));
        }
        let bm_b = read(
            &*file,
            layout.bookmarks_at(),
            h.bookmarks * BOOKMARK_ENTRY_LEN as u64,
        )?;
        if crc::crc32c(&bm_b) != h.bookmark_crc {
            return Err(bad("bookmark checksum mismatch"));
        }
        let bloom = bloom_b.chunks_exact(8).map(|w| u64_at(w, 0)).collect();
        let node_fence: Vec<u64> = fence_b[..np as usize * 8]
            .chunks_exact(8)
            .map(|w| u64_at(w, 0))
            .collect();
        let point_fence: Vec<(u64, u64)> = fence_b[np as usize * 8..]
            .chunks_exact(16)
            .map(|w| (u64_at(w, 0), u64_at(w, 8)))
            .collect();
        if node_fence.windows(2).any(|w| w[0] > w[1])
            || point_fence
                .windows(2)
                .any(|w| w[0].0 >= w[1].0 || w[0].1 > w[1].1)
        {
            return Err(bad("fences out of order"));
        }
        let mut bookmarks = Vec::with_capacity(h.bookmarks as usize);
        for x in bm_b.chunks_exact(BOOKMARK_ENTRY_LEN) {
            let e = IndexEntry {
                kind: Kind::Bookmark,
                seq: u64_at(x, 0),
                ts_us: u64_at(x, 8),
                pos: u64_at(x, 16),
                len: u32_at(x, 24),
                offset: 0,
            };
            if x[28..32] != [0; 4]
                || !(4..=4 + super::format::MAX_BOOKMARK_NAME as u32).contains(&e.len)
                || e.pos
                    .checked_add(e.record_len())
                    .is_none_or(|end| end > id.len)
                || e.seq < h.first_seq
                || e.seq > h.last_seq
            {
                return Err(bad("a bookmark entry outside the segment"));
            }
            bookmarks.push(e);
        }
        Ok((
            SealedIndex {
                id,
                first_seq: h.first_seq,
                last_seq: h.last_seq,
                records: h.records,
                nodes: h.nodes,
                points: h.points,
                levels: h.levels,
                bloom,
                node_fence,
                point_fence,
                last_point: h.last_point,
                volume_size,
                layout,
                file,
            },
            bookmarks,
        ))
    }

    /// Memory this summary holds.
    pub fn heap_bytes(&self) -> usize {
        std::mem::size_of::<Self>()
            + self.bloom.capacity() * 8
            + self.node_fence.capacity() * 8
            + self.point_fence.capacity() * 16
    }

    fn may_hold(&self, node: u64) -> bool {
        let m = self.bloom.len() as u64 * 64;
        bloom_bits(node, m).all(|bit| self.bloom[(bit / 64) as usize] & (1 << (bit % 64)) != 0)
    }

    fn page(&self, at: u64, i: u64) -> Result<Vec<u8>, BixError> {
        let p = read(&*self.file, at + i * PAGE as u64, PAGE as u64)?;
        if crc::crc32c(&p[..PAGE - 4]) != u32_at(&p, PAGE - 4) {
            return Err(bad(format!(
                "page checksum mismatch at {}",
                at + i * PAGE as u64
            )));
        }
        Ok(p)
    }

    /// Node page `i`, its entries checked against the segment and the fence.
    fn node_page(&self, i: u64) -> Result<Vec<(u64, Key, RecMeta, bool)>, BixError> {
        let p = self.page(self.layout.nodes_at(), i)?;
        let n = (self.nodes - i * NODES_PER_PAGE as u64).min(NODES_PER_PAGE as u64) as usize;
        if p[n * NODE_ENTRY_LEN..PAGE - 4].iter().any(|x| *x != 0) {
            return Err(bad("node page: reserved bytes must be zero"));
        }
        let mut out = Vec::with_capacity(n);
        for x in p[..n * NODE_ENTRY_LEN].chunks_exact(NODE_ENTRY_LEN) {
            let node = u64_at(x, 0);
            let key = (u64_at(x, 8), u32_at(x, 32));
            let kind = match x[40] {
                1 => Kind::Write,
                2 => Kind::Zero,
                _ => return Err(bad("node entry: not a write or zero")),
            };
            let m = RecMeta {
                kind,
                segno: self.id.segno,
                pos: u64_at(x, 24),
                offset: u64_at(x, 16),
                len: u32_at(x, 36),
            };
            let head = RecordHeader {
                kind,
                seq: key.0,
                ts_us: 0,
                offset: m.offset,
                len: m.len,
            };
            let (nb, rb) = (node_blocks(node), blocks(m.offset, m.len as u64));
            if x[41] > FLAG_PRIMARY
                || x[42..48] != [0; 6]
                || m.len == 0
                || m.len > super::format::MAX_RECORD_PAYLOAD
                || m.offset
                    .checked_add(m.len as u64)
                    .is_none_or(|e| e > self.volume_size)
                || m.pos
                    .checked_add(head.total_len() as u64)
                    .is_none_or(|e| e > self.id.len)
                || key.0 < self.first_seq
                || key.0 > self.last_seq
                || nb.0 < rb.0
                || nb.1 > rb.1
                || out
                    .last()
                    .is_some_and(|l: &(u64, Key, RecMeta, bool)| (l.0, l.1) >= (node, key))
            {
                return Err(bad(format!(
                    "node entry for seq {} does not fit the segment",
                    key.0
                )));
            }
            out.push((node, key, m, x[41] == FLAG_PRIMARY));
        }
        if out.first().map(|e| e.0) != self.node_fence.get(i as usize).copied() {
            return Err(bad("node page does not match its fence"));
        }
        Ok(out)
    }

    /// Append to `out` this segment's records with `base < seq <= at` that
    /// may touch bytes `[from, to)` of block `b` (all inside it), in no
    /// particular order.
    pub fn candidates(
        &self,
        b: u64,
        (from, to): (u64, u64),
        base: u64,
        at: u64,
        out: &mut Vec<(Key, RecMeta)>,
    ) -> Result<(), BixError> {
        if self.first_seq > at || self.last_seq <= base {
            return Ok(());
        }
        let mut levels = self.levels;
        while levels != 0 {
            let level = levels.trailing_zeros();
            levels &= levels - 1;
            let node = node_key(level, b);
            let maybe = match level {
                0 => units(from, to).any(|u| self.may_hold(unit_key(u << 12))),
                _ => self.may_hold(node),
            };
            if !maybe {
                continue;
            }
            let mut i = self
                .node_fence
                .partition_point(|f| *f < node)
                .saturating_sub(1) as u64;
            'pages: while (i as usize) < self.node_fence.len() {
                if self.node_fence[i as usize] > node {
                    break;
                }
                for (n, key, m, _) in self.node_page(i)? {
                    if n > node {
                        break 'pages;
                    }
                    if n == node && key.0 > base && key.0 <= at {
                        out.push((key, m));
                    }
                }
                i += 1;
            }
        }
        Ok(())
    }

    /// Every record of the segment, ascending by key.
    pub fn all_records(&self) -> Result<Vec<(Key, RecMeta)>, BixError> {
        let mut out = Vec::with_capacity(self.records as usize);
        for i in 0..self.node_fence.len() as u64 {
            out.extend(
                self.node_page(i)?
                    .into_iter()
                    .filter(|e| e.3)
                    .map(|e| (e.1, e.2)),
            );
        }
        out.sort_unstable_by_key(|e| e.0);
        if out.len() as u64 != self.records || out.windows(2).any(|w| w[0].0 == w[1].0) {
            return Err(bad("records do not match the header's count"));
        }
        Ok(out)
    }

    fn point_page(&self, i: u64) -> Result<Vec<(u64, u64)>, BixError> {
        let p = self.page(self.layout.points_at(), i)?;
        let n = (self.points - i * POINTS_PER_PAGE as u64).min(POINTS_PER_PAGE as u64) as usize;
        if p[n * POINT_ENTRY_LEN..PAGE - 4].iter().any(|x| *x != 0) {
            return Err(bad("point page: reserved bytes must be zero"));
        }
        let pts: Vec<(u64, u64)> = p[..n * POINT_ENTRY_LEN]
            .chunks_exact(POINT_ENTRY_LEN)
            .map(|x| (u64_at(x, 0), u64_at(x, 8)))
            .collect();
        if pts.first() != self.point_fence.get(i as usize)
            || pts.windows(2).any(|w| w[0].0 >= w[1].0 || w[0].1 > w[1].1)
            || pts
                .iter()
                .any(|p| p.0 < self.first_seq || p.0 > self.last_seq)
        {
            return Err(bad("point page out of order or outside the segment"));
        }
        if let Some(next) = self.point_fence.get(i as usize + 1)
            && pts.last().is_some_and(|l| l.0 >= next.0 || l.1 > next.1)
        {
            return Err(bad("point page overlaps the next"));
        }
        if i + 1 == self.point_fence.len() as u64 && pts.last() != Some(&self.last_point) {
            return Err(bad("last point does not match the header"));
        }
        Ok(pts)
    }

    /// The segment's first and last points.
    pub fn point_bounds(&self) -> Option<((u64, u64), (u64, u64))> {
        Some((*self.point_fence.first()?, self.last_point))
    }

    /// The first point with seq at or after `seq`.
    pub fn point_at_or_after(&self, seq: u64) -> Result<Option<(u64, u64)>, BixError> {
        if self.points == 0 || self.last_point.0 < seq {
            return Ok(None);
        }
        let i = self
            .point_fence
            .partition_point(|f| f.0 <= seq)
            .saturating_sub(1);
        for i in i..self.point_fence.len() {
            if let Some(p) = self.point_page(i as u64)?.into_iter().find(|p| p.0 >= seq) {
                return Ok(Some(p));
            }
        }
        Ok(None)
    }

    /// The last point with time at or before `ts`.
    pub fn point_at_or_before_ts(&self, ts: u64) -> Result<Option<(u64, u64)>, BixError> {
        let i = self.point_fence.partition_point(|f| f.1 <= ts);
        if i == 0 {
            return Ok(None);
        }
        let pts = self.point_page(i as u64 - 1)?;
        Ok(pts.into_iter().rev().find(|p| p.1 <= ts))
    }

    /// The points with `lo <= seq <= hi`, ascending.
    pub fn points_in(&self, lo: u64, hi: u64) -> Result<Vec<(u64, u64)>, BixError> {
        let mut out = Vec::new();
        let i = self
            .point_fence
            .partition_point(|f| f.0 <= lo)
            .saturating_sub(1);
        for i in i..self.point_fence.len() {
            if self.point_fence[i].0 > hi {
                break;
            }
            out.extend(
                self.point_page(i as u64)?
                    .into_iter()
                    .filter(|p| p.0 >= lo && p.0 <= hi),
            );
        }
        Ok(out)
    }
}

/// First and last 64 KiB block `[off, off+len)` touches.
fn blocks(off: u64, len: u64) -> (u64, u64) {
    (off >> BLOCK_SHIFT, (off + len.max(1) - 1) >> BLOCK_SHIFT)
}

/// Recompute every checksum of a `.bix` from its header's counts, where
/// they fit `b`: lets the fuzz target reach the checks behind them.
#[doc(hidden)]
pub fn reseal(b: &mut [u8]) {
    if b.len() < PAGE {
        return;
    }
    let Ok(h) = Header::decode_unchecked(&b[..PAGE]) else {
        return;
    };
    let Some(l) = Layout::of(&h) else {
        return;
    };
    let span = |at: u64, len: u64| -> Option<std::ops::Range<usize>> {
        let end = at.checked_add(len)?;
        (end <= b.len() as u64).then_some(at as usize..end as usize)
    };
    let mut h = h;
    if let Some(r) = span(l.bloom_at(), h.bloom_words.saturating_mul(8)) {
        h.bloom_crc = crc::crc32c(&b[r]);
    }
    if let Some(r) = span(
        l.fences_at(),
        l.nodes
            .saturating_mul(8)
            .saturating_add(l.points.saturating_mul(16)),
    ) {
        h.fence_crc = crc::crc32c(&b[r]);
    }
    if let Some(r) = span(
        l.bookmarks_at(),
        h.bookmarks.saturating_mul(BOOKMARK_ENTRY_LEN as u64),
    ) {
        h.bookmark_crc = crc::crc32c(&b[r]);
    }
    let mut keep = b[..PAGE].to_vec();
    let enc = h.encode();
    keep[..152].copy_from_slice(&enc[..152]);
    let c = crc::crc32c(&keep[..PAGE - 4]);
    keep[PAGE - 4..].copy_from_slice(&c.to_le_bytes());
    b[..PAGE].copy_from_slice(&keep);
    let first = l.nodes_at() as usize;
    if first < b.len() {
        for p in b[first..].chunks_exact_mut(PAGE) {
            seal_page(p);
        }
    }
}
