//! The master target's retention engine: replica + redo journal.
//!
//! A pair's journal is a directory of append-only segment files holding every
//! write the source made (new data), plus `journal.state`. The replica volume
//! holds the image at `base_seq`, the oldest recoverable point. The image at
//! any point `t` in `[base_seq, last_seq]` is: for each byte, the newest
//! Write/Zero record with `base_seq < seq <= t` that covers it, else the
//! replica. Pruning ("checkpoint") moves `base_seq` forward by writing the
//! newest version of each byte written in `(base_seq, new_base]` into the
//! replica — writes overwritten within that interval never reach it.
//!
//! Why redo (see docs/ARCHITECTURE.md for the arithmetic): a source write
//! costs one sequential append (and fsync per chunk) on the apply path, where
//! the seed's undo journal paid a random read and two writes. The replica is
//! written later, in the background, once per surviving byte.
//!
//! Invariants:
//! - A chunk is durable (fsync'd, commit record written) before any of its
//!   records becomes visible; a chunk without a valid commit is discarded on
//!   open. Applying a chunk whose records are already applied changes nothing.
//! - The replica is written only by a checkpoint, and only after
//!   `journal.state` durably records `pending_base`; points before
//!   `pending_base` are no longer offered from that moment. A checkpoint never
//!   advances past a pinned point (an open vsnap or export).
//! - Every record carries CRCs (header, each 4 KiB of payload); every read
//!   from the journal verifies what it reads.
//! - Segment files are deleted only after the state file says their records
//!   are in the replica.
//! - A full disk never costs a recovery point. The journal stays inside its
//!   space limit ([`SpaceLimit`]: the pair's `max_bytes`, and a margin it
//!   leaves free on its filesystem) by checking before each append; at the
//!   limit `prune` checkpoints the oldest segment first and `stop` refuses the
//!   chunk (nothing changes; it is taken once space returns). Pruning itself
//!   needs no new space: the replica is allocated when the journal is created
//!   or opened, `journal.state` is rewritten in place (two slots), and
//!   pruning only removes segments. `ENOSPC` from an append is undone (the
//!   segment is cut back) and answered as "full", never a permanent stop. A
//!   journal opened on a disk too full to finish its own recovery opens
//!   read-only: every point stays listed and readable, and
//!   [`Journal::try_resume`] completes the recovery once space returns.

pub mod format;
pub mod index;
pub mod policy;
pub mod sealed;
pub mod storage;
#[doc(hidden)]
pub mod testkit;
pub mod vsnap;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use format::{
    BookmarkKind, DecodeError, IndexEntry, Kind, RECORD_HEADER_LEN, RecordHeader,
    SEGMENT_HEADER_LEN, SegmentHeader, State,
};
use index::{Index, RecMeta, Source};
use policy::OnFull;
use sealed::{BixError, SealedIndex, SegmentId};
use serde::Serialize;
use storage::{BlockFile, DIRECT_ALIGN, Storage, is_no_space};

/// Chunks at least this large are written `O_DIRECT` ([`BlockFile::write_direct`]).
const DIRECT_MIN: usize = 1 << 20;

use crate::engine::crc;

/// One change from the source, in the pair's sequence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub seq: u64,
    /// Source time, microseconds since the Unix epoch.
    pub ts_us: u64,
    pub body: RecordBody,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordBody {
    /// `data` is shared, not copied, between the agent's buffer and the
    /// chunks that carry it, and between a received chunk and its records.
    Write {
        offset: u64,
        data: bytes::Bytes,
    },
    Zero {
        offset: u64,
        len: u32,
    },
    Bookmark {
        kind: BookmarkKind,
        name: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Bookmark {
    pub seq: u64,
    pub ts_us: u64,
    pub kind: BookmarkKind,
    pub name: String,
}

/// A recoverable point: the image after the record `seq`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Point {
    pub seq: u64,
    pub ts_us: u64,
}

/// How a caller names a point.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PointSpec {
    Latest,
    Oldest,
    Seq(u64),
    /// The last write at or before this time (µs).
    Time(u64),
    Bookmark(String),
}

impl std::str::FromStr for PointSpec {
    type Err = String;
    /// `latest`, `oldest`, `seq:N`, `tag:NAME`, `time:RFC3339`.
    fn from_str(s: &str) -> Result<PointSpec, String> {
        let s = s.trim();
        if s == "latest" {
            return Ok(PointSpec::Latest);
        }
        if s == "oldest" {
            return Ok(PointSpec::Oldest);
        }
        if let Some(n) = s.strip_prefix("seq:") {
            return n
                .parse()
                .map(PointSpec::Seq)
                .map_err(|_| format!("bad sequence number `{n}`"));
        }
        if let Some(n) = s
            .strip_prefix("tag:")
            .or_else(|| s.strip_prefix("bookmark:"))
        {
            return Ok(PointSpec::Bookmark(n.to_owned()));
        }
        if let Some(t) = s.strip_prefix("time:") {
            let st = humantime::parse_rfc3339_weak(t).map_err(|e| {
                format!("bad time `{t}` ({e}); use RFC 3339, e.g. 2026-11-25T10:00:00Z")
            })?;
            let us = st
                .duration_since(std::time::UNIX_EPOCH)
                .map_err(|_| "time before 1970".to_string())?
                .as_micros() as u64;
            return Ok(PointSpec::Time(us));
        }
        Err(format!(
            "bad point `{s}`; use latest, oldest, seq:N, tag:NAME or time:RFC3339"
        ))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("journal corrupt: {0}")]
    Corrupt(String),
    #[error(
        "sequence gap: the journal ends at seq {last}, the chunk starts at seq {first}; the pair needs a resync"
    )]
    Gap { last: u64, first: u64 },
    #[error("bad record: {0}")]
    BadRecord(String),
    #[error("{0}")]
    OutsideWindow(String),
    #[error("no bookmark named `{0}` in the retention window")]
    NoSuchBookmark(String),
    #[error(
        "cannot move the oldest point past seq {pinned}: it is held by an open snapshot; close it first"
    )]
    Pinned { pinned: u64 },
    /// The journal is at its space limit and cannot take the chunk (policy
    /// `stop`, or `prune` with nothing left to prune). Nothing changed.
    #[error("{0}")]
    RetentionFull(String),
    /// Opened on a disk too full to finish recovery: points are readable,
    /// nothing is written until [`Journal::try_resume`] succeeds.
    #[error("{0}")]
    ReadOnly(String),
    #[error("journal stopped after an I/O failure ({0}); fix the disk and restart the MT")]
    Failed(String),
    #[error("{0} is not a Tern journal (no journal.state); create it first")]
    NotAJournal(PathBuf),
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> JournalError {
    let what = what.into();
    move |source| JournalError::Io { what, source }
}

/// Tunables.
#[derive(Debug, Clone)]
pub struct JournalOptions {
    /// A new segment is started once the active one passes this size.
    pub segment_bytes: u64,
    /// Allocate the whole replica at creation (`fallocate`), so that
    /// checkpointing into it, which is what frees journal space, can never
    /// fail for want of room. Off: a thin replica; on a full disk a
    /// checkpoint into a never-written region fails and the journal turns
    /// read-only until space returns.
    pub preallocate: bool,
}

/// Separate inconsistent runs one chunk may mark; see
/// [`Journal::mark_unrecoverable_runs`].
pub const MAX_RUNS_PER_CHUNK: usize = 64;

/// Separate unrecoverable ranges a journal keeps (`unrecoverable.state`
/// is at most 1 MiB); past it the oldest are merged.
pub const MAX_UNREC_RANGES: usize = 65536;

/// Past [`MAX_UNREC_RANGES`], the oldest two ranges become one (points
/// lost between them, never data).
fn merge_oldest(m: &mut BTreeMap<u64, u64>) {
    while m.len() > MAX_UNREC_RANGES {
        let (a, _) = m.pop_first().unwrap();
        let (_, d) = m.pop_first().unwrap();
        m.insert(a, d);
    }
}

impl Default for JournalOptions {
    fn default() -> Self {
        JournalOptions {
            segment_bytes: 64 << 20,
            preallocate: true,
        }
    }
}

/// How much space the journal may take; see the module docs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpaceLimit {
    /// Journal bytes never pass this (the pair's `max_bytes`).
    pub max_bytes: Option<u64>,
    /// Bytes left free on the journal's filesystem; `None`: 2% of it, at
    /// least 32 MiB (a quarter of a tiny one) and at most 4 GiB.
    pub keep_free: Option<u64>,
    pub on_full: OnFull,
    /// The policy's time window: points dropped for space while younger
    /// than this count as a "retention log reset".
    pub window_us: Option<u64>,
}

impl Default for SpaceLimit {
    fn default() -> Self {
        SpaceLimit {
            max_bytes: None,
            keep_free: None,
            on_full: OnFull::Prune,
            window_us: None,
        }
    }
}

impl SpaceLimit {
    /// The margin kept free on a filesystem of `total` bytes.
    pub fn keep_free_of(&self, total: u64) -> u64 {
        self.keep_free
            .unwrap_or_else(|| (total / 50).clamp((32 << 20).min(total / 4), 4 << 30))
    }
}

/// What a journal holds and may hold, at one look at its filesystem.
#[derive(Debug, Clone, Copy)]
struct Room {
    limit: SpaceLimit,
    used: u64,
    /// The margin kept free (0 if the filesystem cannot be asked).
    keep: u64,
    space: Option<storage::Space>,
}

impl Room {
    /// The byte limit: `max_bytes`, and what the disk holds beyond the margin.
    fn bytes(&self) -> Option<u64> {
        let fs = self
            .space
            .map(|s| self.used + s.avail.saturating_sub(self.keep));
        match (self.limit.max_bytes, fs) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

/// Space forcing points out of the policy's window: the last time it did,
/// and the source times the oldest point moved from (at the first of the
/// resets within one window of each other) and to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct ResetInfo {
    pub at_us: u64,
    pub from_ts_us: u64,
    pub to_ts_us: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApplyOutcome {
    /// Records newly made durable.
    Applied(usize),
    /// Every record was already in the journal (a resent chunk).
    AlreadyApplied,
}

struct Segment {
    file: Arc<dyn BlockFile>,
    path: PathBuf,
    /// First and last original seq this segment stands for.
    first_seq: u64,
    last_seq: u64,
    bytes: u64,
    /// 0 as applied; k once compacted by sparse tier k.
    level: u8,
}

struct Active {
    segno: u64,
    file: Arc<dyn BlockFile>,
    len: u64,
    /// As its header says: what its block index is bound to.
    created_us: u64,
    entries: Vec<IndexEntry>,
}

struct Inner {
    state: State,
    last_seq: u64,
    last_ts_us: u64,
    /// Records and points (seq, monotonic time) after base.
    index: Index,
    bookmarks: BTreeMap<u64, Bookmark>,
    segments: BTreeMap<u64, Segment>,
    pins: BTreeMap<u64, u64>,
    next_pin: u64,
    failed: Option<String>,
    limit: SpaceLimit,
    /// Why the last chunk was refused for space (cleared by the next apply).
    full: Option<String>,
    /// Why the journal opened read-only (cleared by `try_resume`).
    read_only: Option<String>,
    last_reset: Option<ResetInfo>,
    /// Seq ranges thinned by sparse retention (from → to, inclusive): inside
    /// them only the seqs in `retained` are points.
    thinned: BTreeMap<u64, u64>,
    retained: std::collections::BTreeSet<u64>,
    /// Seq ranges (from → to, inclusive) whose points are not consistent
    /// images of the source: a resync or bitmap drain was under way. Never
    /// offered as recovery points. Persisted in `unrecoverable.state` before
    /// the records they cover are applied.
    unrec: BTreeMap<u64, u64>,
}

impl Inner {
    fn total_bytes(&self) -> u64 {
        self.segments.values().map(|s| s.bytes).sum()
    }
    /// The oldest point still offered (a pending checkpoint already hides older ones).
    fn oldest(&self) -> Point {
        match self.state.pending_base {
            Some((seq, ts)) => Point { seq, ts_us: ts },
            None => Point {
                seq: self.state.base_seq,
                ts_us: self.state.base_ts_us,
            },
        }
    }
    /// The range holding `seq`, if its point is unrecoverable.
    fn unrec_range(&self, seq: u64) -> Option<(u64, u64)> {
        self.unrec
            .range(..=seq)
            .next_back()
            .filter(|(_, to)| seq <= **to)
            .map(|(a, b)| (*a, *b))
    }
    /// The newest recoverable point at or before `seq`, not below `floor`.
    fn recoverable_at_or_before(&self, seq: u64, floor: u64) -> Option<u64> {
        let s = match self.unrec_range(seq) {
            None => seq,
            Some((0, _)) => return None,
            Some((a, _)) => a - 1,
        };
        (s >= floor).then_some(s)
    }
    /// The oldest recoverable point at or after `seq`, not above `ceil`.
    fn recoverable_at_or_after(&self, seq: u64, ceil: u64) -> Option<u64> {
        let s = match self.unrec_range(seq) {
            None => seq,
            Some((_, b)) => b.checked_add(1)?,
        };
        (s <= ceil).then_some(s)
    }
    fn ts_of(&self, seq: u64) -> Result<u64, JournalError> {
        if seq <= self.state.base_seq {
            return Ok(self.state.base_ts_us);
        }
        Ok(self
            .index
            .point_at_or_after(seq)
            .map_err(lookup_error)?
            .map(|p| p.1)
            .unwrap_or(self.last_ts_us))
    }
    /// The last point at or before time `t`, not before the oldest.
    fn seq_at_or_before_ts(&self, t: u64) -> Result<u64, JournalError> {
        let oldest = self.oldest().seq;
        Ok(self
            .index
            .point_at_or_before_ts(t)
            .map_err(lookup_error)?
            .map(|p| p.0.max(oldest))
            .unwrap_or(oldest))
    }
}

/// The retention engine of one pair. Cheap to share (`Arc<Journal>`).
pub struct Journal {
    dir: PathBuf,
    storage: Arc<dyn Storage>,
    replica: Arc<dyn BlockFile>,
    /// `journal.state`, written in place under `inner`'s write lock.
    state_file: Arc<dyn BlockFile>,
    volume_size: u64,
    opts: JournalOptions,
    /// Serialises appliers and owns the active segment.
    active: Mutex<Option<Active>>,
    inner: RwLock<Inner>,
    /// One checkpoint at a time.
    checkpoint_mu: Mutex<()>,
}

const STATE_FILE: &str = "journal.state";
const UNREC_FILE: &str = "unrecoverable.state";

fn seg_name(segno: u64) -> String {
    format!("seg-{segno:012}.tj")
}
fn idx_name(segno: u64) -> String {
    format!("seg-{segno:012}.idx")
}
fn bix_name(segno: u64) -> String {
    format!("seg-{segno:012}.bix")
}

/// A sealed segment's on-disk index failed a read or a check.
fn bix_error(segno: u64) -> impl Fn(BixError) -> JournalError {
    move |e| match e {
        BixError::Io(source) => JournalError::Io {
            what: format!("segment {segno} block index"),
            source,
        },
        BixError::Corrupt(s) => JournalError::Corrupt(format!(
            "segment {segno} block index (seg-{segno:012}.bix): {s}; stop the pair and remove the file to rebuild it from the segment"
        )),
    }
}

/// Where a lookup failed: the error of whichever sealed index it read.
fn lookup_error(e: BixError) -> JournalError {
    match e {
        BixError::Io(source) => JournalError::Io {
            what: "segment block index".into(),
            source,
        },
        BixError::Corrupt(s) => JournalError::Corrupt(format!(
            "a segment block index (.bix): {s}; stop the pair and remove the damaged .bix to rebuild it from its segment"
        )),
    }
}
fn parse_seg_name(n: &str) -> Option<u64> {
    n.strip_prefix("seg-")?.strip_suffix(".tj")?.parse().ok()
}

fn now_us() -> u64 {
    crate::util::now_ms() * 1000
}

impl Journal {
    /// Create a new journal in `dir` for a replica at `replica_path` of
    /// `volume_size` bytes (a regular file is created or extended, and its
    /// blocks allocated, so pruning never needs space; a device must be at
    /// least that large).
    pub fn create(
        storage: Arc<dyn Storage>,
        dir: &Path,
        replica_path: &Path,
        volume_size: u64,
        opts: JournalOptions,
    ) -> Result<Journal, JournalError> {
        if volume_size == 0
            || !volume_size.is_multiple_of(512)
            || volume_size > crate::engine::control::MAX_VOLUME_SIZE
        {
            return Err(JournalError::BadRecord(format!(
                "volume size {volume_size} must be a positive multiple of 512, at most 256 TiB"
            )));
        }
        storage
            .create_dir_all(dir)
            .map_err(io(format!("cannot create {}", dir.display())))?;
        if storage.exists(&dir.join(STATE_FILE)) {
            return Err(JournalError::Corrupt(format!(
                "{} already holds a journal",
                dir.display()
            )));
        }
        let replica = storage.open(replica_path, true).map_err(io(format!(
            "cannot open replica {}",
            replica_path.display()
        )))?;
        let len = replica.len().map_err(io("replica size"))?;
        if len < volume_size {
            replica.set_len(volume_size).map_err(io(format!(
                "cannot size replica {} to {volume_size} bytes",
                replica_path.display()
            )))?;
        }
        if opts.preallocate {
            allocate_replica(&*replica, volume_size).map_err(|e| JournalError::Io {
                what: format!(
                    "cannot allocate the replica {} ({volume_size} bytes): the retention disk needs room for the whole volume (or set mt.preallocate_replica = false for a thin replica)",
                    replica_path.display()
                ),
                source: e,
            })?;
        }
        replica.sync().map_err(io("replica sync"))?;
        let state = State {
            journal_id: rand::random(),
            volume_size,
            base_seq: 0,
            // The initial replica is the image "since forever" until records come.
            base_ts_us: 0,
            pending_base: None,
            resets: 0,
            generation: 1,
        };
        storage
            .write_atomic(&dir.join(STATE_FILE), &state.encode_file())
            .map_err(io("cannot write journal.state"))?;
        Self::open(storage, dir, replica_path, opts)
    }

    /// Open an existing journal, recovering from any crash.
    pub fn open(
        storage: Arc<dyn Storage>,
        dir: &Path,
        replica_path: &Path,
        opts: JournalOptions,
    ) -> Result<Journal, JournalError> {
        let state_path = dir.join(STATE_FILE);
        if !storage.exists(&state_path) {
            return Err(JournalError::NotAJournal(dir.to_owned()));
        }
        let sf = storage
            .open(&state_path, false)
            .map_err(io("journal.state"))?;
        let sl = sf.len().map_err(io("journal.state"))?;
        if sl > format::STATE_FILE_LEN as u64 {
            return Err(JournalError::Corrupt(format!(
                "{}: {sl} bytes, longer than any state file",
                state_path.display()
            )));
        }
        let mut sb = vec![0u8; sl as usize];
        sf.read_at(&mut sb, 0).map_err(io("journal.state"))?;
        let state = State::decode_file(&sb)
            .map_err(|e| JournalError::Corrupt(format!("{}: {e}", state_path.display())))?;
        let replica = storage.open(replica_path, false).map_err(io(format!(
            "cannot open replica {}",
            replica_path.display()
        )))?;
        if replica.len().map_err(io("replica size"))? < state.volume_size {
            return Err(JournalError::Corrupt(format!(
                "replica {} is smaller than the volume ({} bytes)",
                replica_path.display(),
                state.volume_size
            )));
        }

        let mut segnos: Vec<u64> = storage
            .list(dir)
            .map_err(io(format!("cannot list {}", dir.display())))?
            .iter()
            .filter_map(|n| parse_seg_name(n))
            .collect();
        segnos.sort_unstable();

        let mut inner = Inner {
            state,
            last_seq: state.base_seq,
            last_ts_us: state.base_ts_us,
            index: Index::default(),
            bookmarks: BTreeMap::new(),
            segments: BTreeMap::new(),
            pins: BTreeMap::new(),
            next_pin: 1,
            failed: None,
            limit: SpaceLimit::default(),
            full: None,
            read_only: None,
            last_reset: None,
            thinned: BTreeMap::new(),
            retained: Default::default(),
            unrec: BTreeMap::new(),
        };
        let unrec_path = dir.join(UNREC_FILE);
        if storage.exists(&unrec_path) {
            let f = storage.open(&unrec_path, false).map_err(io(UNREC_FILE))?;
            // Older versions kept any number of ranges: more than the bound
            // are merged (below) rather than refused, up to 64 MiB of them.
            let n = f.len().map_err(io(UNREC_FILE))?;
            if n > 64 << 20 {
                return Err(JournalError::Corrupt(format!(
                    "{}: {n} bytes, far more than {MAX_UNREC_RANGES} ranges",
                    unrec_path.display()
                )));
            }
            let mut b = vec![0u8; n as usize];
            f.read_at(&mut b, 0).map_err(io(UNREC_FILE))?;
            inner.unrec = format::decode_ranges(&b)
                .map_err(|e| JournalError::Corrupt(format!("{}: {e}", unrec_path.display())))?;
            merge_oldest(&mut inner.unrec);
        }
        let mut active = None;
        let floor = state.base_seq;
        for (i, &segno) in segnos.iter().enumerate() {
            let is_last = i + 1 == segnos.len();
            let path = dir.join(seg_name(segno));
            let file = storage
                .open(&path, false)
                .map_err(io(path.display().to_string()))?;
            // A sealed segment with a valid block index: its summary is all
            // memory takes; the records stay on disk.
            if !is_last
                && let Some((s, bms, kept)) = open_bix(&*storage, dir, segno, &file, state, floor)?
            {
                let (level, covers) = (s.id.level, (s.first_seq, s.last_seq));
                if drop_if_superseded(&*storage, dir, segno, covers, floor, inner.last_seq)? {
                    continue;
                }
                if covers.1 > floor {
                    let from = covers.0.max(floor + 1);
                    if from != inner.last_seq + 1 {
                        return Err(JournalError::Corrupt(format!(
                            "segment {segno}: expected seq {}, found {from} (a segment is missing)",
                            inner.last_seq + 1,
                        )));
                    }
                    inner.last_seq = covers.1;
                    if let Some((_, last)) = s.point_bounds() {
                        inner.last_ts_us = inner.last_ts_us.max(last.1);
                    }
                    for b in bms {
                        inner.bookmarks.insert(b.seq, b);
                    }
                    if level > 0 {
                        inner.retained.extend(kept);
                        inner.thinned.insert(covers.0.max(floor + 1), covers.1);
                    }
                }
                let bytes = s.id.len;
                inner.index.seal(s);
                inner.segments.insert(
                    segno,
                    Segment {
                        file,
                        path,
                        first_seq: covers.0,
                        last_seq: covers.1,
                        bytes,
                        level,
                    },
                );
                continue;
            }
            let (level, entries, good_len) =
                load_segment(&*storage, dir, segno, &file, state, is_last)?;
            let Some(good_len) = good_len else {
                // A segment torn at creation (no valid header): it held nothing.
                storage.remove(&path).map_err(io("remove torn segment"))?;
                continue;
            };
            // What original seqs this segment stands for.
            let covers = match (level, entries.last()) {
                (0, _) => (
                    entries.first().map(|e| e.seq).unwrap_or(0),
                    entries.last().map(|e| e.seq).unwrap_or(0),
                ),
                (_, Some(c)) if c.kind == Kind::Commit => (c.offset, c.seq),
                _ => {
                    return Err(JournalError::Corrupt(format!(
                        "compacted segment {segno} has no commit"
                    )));
                }
            };
            if drop_if_superseded(&*storage, dir, segno, covers, floor, inner.last_seq)? {
                continue;
            }
            if level > 0 && covers.1 > floor && covers.0 > floor && covers.0 != inner.last_seq + 1 {
                return Err(JournalError::Corrupt(format!(
                    "segment {segno}: expected seq {}, found {} (a segment is missing)",
                    inner.last_seq + 1,
                    covers.0
                )));
            }
            // Applied segments hold consecutive seqs; a compacted one holds
            // extents numbered (seq, sub) by the interval they close, and the
            // points it kept (Point or Bookmark records).
            let (mut prev, mut sub) = (0, 0u32);
            let (mut recs, mut points) = (Vec::new(), Vec::new());
            for e in entries
                .iter()
                .filter(|e| e.seq > floor && e.kind != Kind::Commit)
            {
                if level == 0 {
                    if e.seq != inner.last_seq + 1 {
                        return Err(JournalError::Corrupt(format!(
                            "segment {segno}: expected seq {}, found {} (a segment is missing)",
                            inner.last_seq + 1,
                            e.seq
                        )));
                    }
                    inner.last_seq = e.seq;
                }
                if e.seq != prev {
                    (prev, sub) = (e.seq, 0);
                }
                let ts = e.ts_us.max(inner.last_ts_us);
                inner.last_ts_us = ts;
                let is_point = match e.kind {
                    Kind::Write | Kind::Zero => {
                        let m = RecMeta::of(segno, e);
                        inner.index.insert((e.seq, sub), m);
                        if e.len > 0 {
                            recs.push(((e.seq, sub), m));
                        }
                        sub += 1;
                        level == 0
                    }
                    Kind::Bookmark => {
                        let (kind, name) = read_bookmark(&file, e)?;
                        inner.bookmarks.insert(
                            e.seq,
                            Bookmark {
                                seq: e.seq,
                                ts_us: ts,
                                kind,
                                name,
                            },
                        );
                        true
                    }
                    Kind::Point if level > 0 => true,
                    Kind::Point => {
                        return Err(JournalError::Corrupt(format!(
                            "segment {segno}: point marker outside a compacted segment"
                        )));
                    }
                    Kind::Commit => false,
                };
                if is_point {
                    inner.index.push_point(e.seq, ts);
                    points.push((e.seq, ts));
                    if level > 0 {
                        inner.retained.insert(e.seq);
                    }
                }
            }
            if level > 0 && covers.1 > floor {
                inner.last_seq = covers.1;
                inner.thinned.insert(covers.0.max(floor + 1), covers.1);
            }
            // Sealed but without a (valid) block index: write it now, so
            // the records leave memory and the next open is quick.
            if !is_last && covers.1 > floor {
                let mut hb = [0u8; SEGMENT_HEADER_LEN];
                file.read_at(&mut hb, 0).map_err(io("segment header"))?;
                let created_us = SegmentHeader::decode(&hb)
                    .map_err(|e| JournalError::Corrupt(format!("segment {segno} header: {e}")))?
                    .created_us;
                let bms: Vec<IndexEntry> = entries
                    .iter()
                    .filter(|e| e.kind == Kind::Bookmark && e.seq > floor)
                    .copied()
                    .collect();
                let c = sealed::Contents {
                    id: SegmentId {
                        segno,
                        journal_id: state.journal_id,
                        created_us,
                        level,
                        len: good_len,
                    },
                    first_seq: covers.0,
                    last_seq: covers.1,
                    records: &recs,
                    points: &points,
                    bookmarks: &bms,
                };
                if let Some(s) = write_bix(&*storage, dir, state.volume_size, &c)? {
                    inner.index.seal(s);
                }
            }
            inner.segments.insert(
                segno,
                Segment {
                    file: file.clone(),
                    path: path.clone(),
                    first_seq: covers.0,
                    last_seq: covers.1,
                    bytes: good_len,
                    level,
                },
            );
            if is_last {
                let mut hb = [0u8; SEGMENT_HEADER_LEN];
                file.read_at(&mut hb, 0).map_err(io("segment header"))?;
                let created_us = SegmentHeader::decode(&hb)
                    .map(|h| h.created_us)
                    .unwrap_or(0);
                active = Some(Active {
                    segno,
                    file,
                    len: good_len,
                    created_us,
                    entries,
                });
            }
        }
        if inner.last_seq < floor {
            inner.last_seq = floor;
        }
        let j = Journal {
            dir: dir.to_owned(),
            storage,
            replica,
            state_file: sf,
            volume_size: state.volume_size,
            opts,
            active: Mutex::new(active),
            inner: RwLock::new(inner),
            checkpoint_mu: Mutex::new(()),
        };
        // Finish recovery: what cannot be written for want of space leaves
        // the journal read-only, every point readable, until space returns.
        match j.recover() {
            Ok(()) | Err(JournalError::ReadOnly(_)) => Ok(j),
            Err(e) => Err(e),
        }
    }

    /// The writes recovery needs: allocate the replica (journals made
    /// before it was allocated) and finish an interrupted checkpoint (a
    /// version-1 state becomes version 2 with its first write, in place). Points past a pending
    /// checkpoint read correctly before it is finished: the bytes it has
    /// not yet written to the replica are still served from the journal.
    fn recover(&self) -> Result<(), JournalError> {
        if self.opts.preallocate {
            allocate_replica(&*self.replica, self.volume_size).map_err(|e| {
                let what = "the replica cannot be allocated";
                match is_no_space(&e) {
                    true => read_only_locked(&mut self.inner.write().unwrap(), &self.dir, what, &e),
                    false => io(what)(e),
                }
            })?;
        }
        let state = self.inner.read().unwrap().state;
        if let Some((seq, ts)) = state.pending_base {
            // A checkpoint was interrupted: finish it before anything reads the replica.
            self.finish_checkpoint(seq, ts)?;
        }
        Ok(())
    }

    /// If the journal opened read-only (its disk was full), try to finish
    /// its recovery now. `Ok(true)`: it takes chunks (again, or had never
    /// stopped); `Ok(false)`: still no room to recover.
    pub fn try_resume(&self) -> Result<bool, JournalError> {
        let _g = self.checkpoint_mu.lock().unwrap();
        if self.inner.read().unwrap().read_only.is_none() {
            return Ok(true);
        }
        match self.recover() {
            Ok(()) => {
                self.inner.write().unwrap().read_only = None;
                tracing::info!(journal = %self.dir.display(), "space is back: the journal takes chunks again");
                Ok(true)
            }
            Err(JournalError::ReadOnly(_)) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Write `st` to `journal.state` in place (the slot its next generation
    /// names) and make it durable. Needs no new space. Call with `inner`
    /// write-locked (`i`); on success `i.state` is the new state.
    fn write_state(&self, i: &mut Inner, mut st: State) -> Result<(), JournalError> {
        st.generation = i.state.generation + 1;
        let r = self
            .state_file
            .write_at(&st.encode_slot(), st.slot_offset())
            .and_then(|_| self.state_file.sync());
        if let Err(e) = r {
            if is_no_space(&e) {
                // A filesystem that needs space to overwrite (copy-on-write):
                // the old slot stands; a pending checkpoint is redone later.
                return Err(read_only_locked(
                    i,
                    &self.dir,
                    "journal.state cannot be rewritten",
                    &e,
                ));
            }
            return Err(fail_locked(i, &self.dir, io("journal.state")(e)));
        }
        i.state = st;
        Ok(())
    }

    pub fn segment_bytes(&self) -> u64 {
        self.opts.segment_bytes
    }

    pub fn volume_size(&self) -> u64 {
        self.volume_size
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn last_seq(&self) -> u64 {
        self.inner.read().unwrap().last_seq
    }

    /// The space the journal may take (from the pair's policy).
    pub fn set_space_limit(&self, limit: SpaceLimit) {
        self.inner.write().unwrap().limit = limit;
    }

    pub fn space_limit(&self) -> SpaceLimit {
        self.inner.read().unwrap().limit
    }

    fn check_failed(&self) -> Result<(), JournalError> {
        let i = self.inner.read().unwrap();
        if let Some(f) = &i.failed {
            return Err(JournalError::Failed(f.clone()));
        }
        if let Some(r) = &i.read_only {
            return Err(JournalError::ReadOnly(r.clone()));
        }
        Ok(())
    }

    /// What the journal holds and may hold now.
    fn room(&self) -> Room {
        let (limit, used) = {
            let i = self.inner.read().unwrap();
            (i.limit, i.total_bytes())
        };
        let space = self.storage.space(&self.dir).ok();
        Room {
            limit,
            used,
            keep: space.map(|s| limit.keep_free_of(s.total)).unwrap_or(0),
            space,
        }
    }

    /// The journal's byte limit now: `max_bytes`, and what the filesystem
    /// has free beyond its margin (None if neither bounds it).
    pub fn effective_limit(&self) -> Option<u64> {
        self.room().bytes()
    }

    /// Make room for `need` more bytes, or say why there is none. Under
    /// policy `prune` this checkpoints the oldest segment (oldest points
    /// first) until the chunk fits; under `stop` it refuses. Called with the
    /// active segment held (`active`), which it may seal. Returns the size
    /// the active segment may grow to: at most `opts.segment_bytes`, and
    /// 1/16 of the room (but at least 4 MiB), so pruning one segment frees
    /// a fair share of it.
    fn make_room(&self, active: &mut Option<Active>, need: u64) -> Result<u64, JournalError> {
        loop {
            let room = self.room();
            let Room {
                limit, used, keep, ..
            } = room;
            let over_max = limit.max_bytes.filter(|m| used + need > *m);
            let over_fs = room.space.filter(|s| s.avail < need + keep);
            if over_max.is_none() && over_fs.is_none() {
                let share = room.bytes().unwrap_or(u64::MAX) / 16;
                return Ok(share.max(4 << 20).min(self.opts.segment_bytes));
            }
            let why = match (over_max, over_fs) {
                (Some(m), _) => format!(
                    "the journal holds {} of its {} limit (max_bytes)",
                    crate::util::human_bytes(used),
                    crate::util::human_bytes(m)
                ),
                (None, Some(s)) => format!(
                    "retention disk full: {} free of {} on {} (the replica takes {}, the journal {}), {} kept free",
                    crate::util::human_bytes(s.avail),
                    crate::util::human_bytes(s.total),
                    self.dir.display(),
                    crate::util::human_bytes(self.volume_size),
                    crate::util::human_bytes(used),
                    crate::util::human_bytes(keep)
                ),
                (None, None) => unreachable!(),
            };
            let refuse = |msg: String| Err(full_locked(&mut self.inner.write().unwrap(), msg));
            // Pruning all history would not make room: keep it and say so.
            let hopeless = over_max.is_some_and(|m| need > m)
                || over_fs.is_some_and(|s| s.avail + used < need + keep);
            if hopeless {
                return refuse(format!(
                    "{why}: even with no history the chunk would not fit; give the MT a bigger retention disk, lower mt.keep_free or raise max_bytes"
                ));
            }
            if limit.on_full == OnFull::Stop {
                return refuse(format!(
                    "{why} (policy=stop): replication stops and resumes by itself when space returns; free space or raise the limit"
                ));
            }
            match self.prune_for_space(active, limit)? {
                Ok(()) => continue,
                Err(blocker) => {
                    return refuse(format!(
                        "{why} (policy=prune) and {blocker}; free space or raise the limit"
                    ));
                }
            }
        }
    }

    /// Free the oldest segment for space (policy `prune`). The inner
    /// `Err` says why nothing could be freed.
    fn prune_for_space(
        &self,
        active: &mut Option<Active>,
        limit: SpaceLimit,
    ) -> Result<Result<(), String>, JournalError> {
        let st = self.stats();
        let oldest = st.oldest;
        let live: Vec<&SegmentStats> = st
            .segments
            .iter()
            .filter(|s| s.last_seq > oldest.seq)
            .collect();
        let active_segno = active.as_ref().map(|a| a.segno);
        let target = match live.first() {
            None => {
                return Ok(Err(
                    "the journal holds no history left to prune: the disk is too small for the replica, the margin and any history (give the MT a bigger retention disk or lower mt.keep_free)"
                        .into(),
                ));
            }
            // All that is live sits in the active segment: seal it first.
            Some(s) if Some(s.segno) == active_segno => {
                if live.len() == 1 {
                    match self.roll(active) {
                        Ok(()) => {}
                        Err(JournalError::RetentionFull(m)) => return Ok(Err(m)),
                        Err(e) => return Err(e),
                    }
                }
                s.last_seq
            }
            Some(s) => s.last_seq,
        };
        let held = |pin: u64| {
            Ok(Err(format!(
                "an open snapshot or export holds seq {pin}; close it"
            )))
        };
        let to = st.min_pin.map_or(target, |pin| target.min(pin));
        if to <= oldest.seq {
            return held(to);
        }
        // The untouched initial replica dates from the first record.
        let oldest_ts = match oldest.seq {
            0 => self.ts_of(1)?,
            _ => oldest.ts_us,
        };
        match self.checkpoint(to) {
            Ok(()) => {}
            Err(JournalError::Pinned { pinned }) => return held(pinned),
            Err(e) => return Err(e),
        }
        let (new_oldest, latest) = self.window();
        if new_oldest.seq <= oldest.seq {
            return Ok(Err("pruning could not move the oldest point".into()));
        }
        let now = now_us();
        // History now spans less than the window asks (measured back from
        // the newest point, which is the source's present while it replicates).
        let inside_window = limit
            .window_us
            .is_some_and(|w| new_oldest.ts_us > latest.ts_us.saturating_sub(w));
        if inside_window {
            self.note_reset()?;
            let mut i = self.inner.write().unwrap();
            // Resets inside one window add up: report what was lost since the first.
            let from_ts_us = match i.last_reset {
                Some(r) if limit.window_us.is_some_and(|w| now < r.at_us + w) => r.from_ts_us,
                _ => oldest_ts,
            };
            i.last_reset = Some(ResetInfo {
                at_us: now,
                from_ts_us,
                to_ts_us: new_oldest.ts_us,
            });
            drop(i);
            tracing::warn!(journal = %self.dir.display(), from_seq = oldest.seq, to_seq = new_oldest.seq,
                lost_s = new_oldest.ts_us.saturating_sub(oldest.ts_us) / 1_000_000,
                "retention space full: the oldest points were dropped inside the time window (retention log reset)");
        }
        Ok(Ok(()))
    }

    /// Stop the journal after an I/O failure (must not be called with `inner` held).
    fn fail(&self, e: JournalError) -> JournalError {
        fail_locked(&mut self.inner.write().unwrap(), &self.dir, e)
    }

    /// Apply one chunk: all of it becomes durable and visible, or none of it.
    pub fn apply(&self, records: &[Record]) -> Result<ApplyOutcome, JournalError> {
        let mut active = self.active.lock().unwrap();
        self.check_failed()?;
        let last_seq = self.inner.read().unwrap().last_seq;
        let Some(first) = records.first() else {
            return Ok(ApplyOutcome::AlreadyApplied);
        };
        for w in records.windows(2) {
            if w[1].seq != w[0].seq + 1 {
                return Err(JournalError::BadRecord(format!(
                    "sequence numbers in a chunk must be consecutive ({} then {})",
                    w[0].seq, w[1].seq
                )));
            }
        }
        if first.seq > last_seq + 1 {
            return Err(JournalError::Gap {
                last: last_seq,
                first: first.seq,
            });
        }
        // Wholly older than the journal's end: a resent chunk, already here.
        if records.last().is_some_and(|r| r.seq <= last_seq) {
            return Ok(ApplyOutcome::AlreadyApplied);
        }
        let new: &[Record] = &records[(last_seq + 1 - first.seq) as usize..];
        if new.is_empty() {
            return Ok(ApplyOutcome::AlreadyApplied);
        }
        for r in new {
            self.validate(r)?;
        }
        // Encode the chunk: records, then the commit that seals them.
        // Sized exactly: header, a CRC per 4 KiB, payload; then the commit
        // (and room to align a large chunk for a direct write).
        let mut buf: Vec<u8> = Vec::with_capacity(
            2 * DIRECT_ALIGN
                + new
                    .iter()
                    .map(|r| {
                        let payload = match &r.body {
                            RecordBody::Write { data, .. } => data.len(),
                            RecordBody::Zero { .. } => 0,
                            RecordBody::Bookmark { name, .. } => 4 + name.len(),
                        };
                        format::RECORD_HEADER_LEN + 4 * payload.div_ceil(4096) + payload
                    })
                    .sum::<usize>()
                + format::RECORD_HEADER_LEN
                + 4
                + 16,
        );
        // The chunk starts at `lead`, the first 4 KiB-aligned address.
        let lead = match buf.as_ptr().align_offset(DIRECT_ALIGN) {
            n if n < DIRECT_ALIGN => n,
            _ => 0,
        };
        buf.resize(lead, 0);
        let mut entries = Vec::with_capacity(new.len() + 1);
        for r in new {
            let (kind, offset, len, payload): (Kind, u64, u32, std::borrow::Cow<[u8]>) = match &r
                .body
            {
                RecordBody::Write { offset, data } => {
                    (Kind::Write, *offset, data.len() as u32, (&data[..]).into())
                }
                RecordBody::Zero { offset, len } => (Kind::Zero, *offset, *len, (&[][..]).into()),
                RecordBody::Bookmark { kind, name } => {
                    let p = format::encode_bookmark(*kind, name);
                    (Kind::Bookmark, 0, p.len() as u32, p.into())
                }
            };
            let h = RecordHeader {
                kind,
                seq: r.seq,
                ts_us: r.ts_us,
                offset,
                len,
            };
            entries.push(IndexEntry {
                kind,
                len,
                seq: r.seq,
                ts_us: r.ts_us,
                offset,
                pos: (buf.len() - lead) as u64,
            });
            format::encode_record(&mut buf, &h, &payload);
        }
        let chunk_crc = crc::crc32c(&buf[lead..]);
        let last = new.last().unwrap();
        let commit = format::encode_commit(new[0].seq, new.len() as u32, chunk_crc);
        let ch = RecordHeader {
            kind: Kind::Commit,
            seq: last.seq,
            ts_us: last.ts_us,
            offset: 0,
            len: commit.len() as u32,
        };
        entries.push(IndexEntry {
            kind: Kind::Commit,
            len: ch.len,
            seq: last.seq,
            ts_us: last.ts_us,
            offset: new[0].seq,
            pos: (buf.len() - lead) as u64,
        });
        format::encode_record(&mut buf, &ch, &commit);
        // A large chunk goes to disk bypassing the page cache (copying it
        // there and writing it back cost more than half the time): it
        // starts on a 4 KiB boundary and is padded with zeros to one, the
        // padding FORMATS.md allows after a segment header or a commit.
        let chunk_len = buf.len() - lead;
        let direct = chunk_len >= DIRECT_MIN;
        if direct {
            buf.resize(lead + chunk_len.next_multiple_of(DIRECT_ALIGN), 0);
        }
        let room = (buf.len() - lead + DIRECT_ALIGN) as u64;

        // Inside the space limit, or prune to get there, or refuse.
        let target = self.make_room(&mut active, room + SEGMENT_HEADER_LEN as u64)?;

        // Roll to a new segment when the active one is full.
        let need_new = match &*active {
            None => true,
            Some(a) => a.len > SEGMENT_HEADER_LEN as u64 && a.len + room > target,
        };
        if need_new {
            self.roll(&mut active)?;
        }
        let a = active.as_mut().unwrap();
        let old_len = a.len;
        let base_pos = match direct {
            true => old_len.next_multiple_of(DIRECT_ALIGN as u64),
            false => old_len,
        };
        let body = &buf[lead..];
        let written = match direct {
            true => a.file.write_direct(body, base_pos),
            false => a.file.write_at(body, base_pos),
        };
        if let Err(e) = written {
            if is_no_space(&e) {
                // Nothing is committed: cut off what part of it was written,
                // so the segment ends where its index says.
                a.file
                    .set_len(old_len)
                    .map_err(io(format!("journal truncate (segment {})", a.segno)))
                    .map_err(|e| self.fail(e))?;
                let msg = format!(
                    "retention disk full: {} ({e}); the chunk is taken once space returns",
                    self.dir.display()
                );
                return Err(full_locked(&mut self.inner.write().unwrap(), msg));
            }
            return Err(self.fail(io(format!("journal write (segment {})", a.segno))(e)));
        }
        a.file
            .sync()
            .map_err(io(format!("journal fsync (segment {})", a.segno)))
            .map_err(|e| self.fail(e))?;
        a.len = base_pos + body.len() as u64;
        for e in &mut entries {
            e.pos += base_pos;
        }
        a.entries.extend_from_slice(&entries);

        // Durable: now make it visible.
        let (segno, a_len) = (a.segno, a.len);
        let mut i = self.inner.write().unwrap();
        i.full = None;
        for (r, e) in new.iter().zip(&entries) {
            let ts = r.ts_us.max(i.last_ts_us);
            i.last_ts_us = ts;
            i.last_seq = r.seq;
            i.index.push_point(r.seq, ts);
            match &r.body {
                RecordBody::Write { .. } | RecordBody::Zero { .. } => {
                    i.index.insert((r.seq, 0), RecMeta::of(segno, e))
                }
                RecordBody::Bookmark { kind, name } => {
                    i.bookmarks.insert(
                        r.seq,
                        Bookmark {
                            seq: r.seq,
                            ts_us: ts,
                            kind: *kind,
                            name: name.clone(),
                        },
                    );
                }
            }
        }
        let seg = i
            .segments
            .get_mut(&segno)
            .expect("active segment registered");
        if seg.first_seq == 0 {
            seg.first_seq = new[0].seq;
        }
        seg.last_seq = last.seq;
        seg.bytes = a_len;
        Ok(ApplyOutcome::Applied(new.len()))
    }

    fn validate(&self, r: &Record) -> Result<(), JournalError> {
        let check_range = |offset: u64, len: u64| {
            if len == 0 || len > format::MAX_RECORD_PAYLOAD as u64 {
                return Err(JournalError::BadRecord(format!(
                    "seq {}: length {len} must be 1 to {} bytes",
                    r.seq,
                    format::MAX_RECORD_PAYLOAD
                )));
            }
            if offset.checked_add(len).is_none_or(|e| e > self.volume_size) {
                return Err(JournalError::BadRecord(format!(
                    "seq {}: write at {offset}+{len} goes past the end of the {}-byte volume",
                    r.seq, self.volume_size
                )));
            }
            Ok(())
        };
        match &r.body {
            RecordBody::Write { offset, data } => check_range(*offset, data.len() as u64),
            RecordBody::Zero { offset, len } => check_range(*offset, *len as u64),
            RecordBody::Bookmark { name, .. } => {
                if name.is_empty() || name.len() > format::MAX_BOOKMARK_NAME {
                    return Err(JournalError::BadRecord(format!(
                        "seq {}: bookmark name must be 1 to {} bytes",
                        r.seq,
                        format::MAX_BOOKMARK_NAME
                    )));
                }
                Ok(())
            }
        }
    }

    /// Seal the active segment (write its index) and start the next one.
    /// No room for the new segment is `RetentionFull` and leaves the active
    /// segment as it was (its index, if written, is superseded by the next
    /// seal or ignored by its length); any other failure stops the journal.
    fn roll(&self, active: &mut Option<Active>) -> Result<(), JournalError> {
        match self.start_segment(active) {
            Ok(next) => {
                *active = Some(next);
                Ok(())
            }
            Err(e @ JournalError::RetentionFull(_)) => Err(e),
            Err(e) => Err(self.fail(e)),
        }
    }

    fn start_segment(&self, active: &Option<Active>) -> Result<Active, JournalError> {
        let state = self.inner.read().unwrap().state;
        let next_segno = match active.as_ref() {
            Some(a) => {
                let idx = format::encode_index(a.segno, state.journal_id, a.len, &a.entries);
                match self
                    .storage
                    .write_atomic(&self.dir.join(idx_name(a.segno)), &idx)
                {
                    Ok(()) => {}
                    // The index only spares a scan on open: go on without it.
                    Err(e) if is_no_space(&e) => {
                        tracing::warn!(segment = a.segno, error = %e, "no space for the segment's index; it is rebuilt by a scan on open")
                    }
                    Err(e) => return Err(io(format!("cannot seal segment {}", a.segno))(e)),
                }
                self.seal_index(a, state)?;
                a.file.end_direct();
                a.segno + 1
            }
            None => self
                .inner
                .read()
                .unwrap()
                .segments
                .keys()
                .next_back()
                .map(|s| s + 1)
                .unwrap_or(1),
        };
        let path = self.dir.join(seg_name(next_segno));
        let file = self
            .storage
            .open(&path, true)
            .map_err(io(path.display().to_string()))?;
        let hdr = SegmentHeader {
            segno: next_segno,
            journal_id: state.journal_id,
            volume_size: self.volume_size,
            created_us: now_us(),
            level: 0,
        };
        file.set_len(0).map_err(io("new segment"))?;
        if let Err(e) = file.write_at(&hdr.encode(), 0) {
            if is_no_space(&e) {
                drop(file);
                let _ = self.storage.remove(&path);
                return Err(JournalError::RetentionFull(format!(
                    "retention disk full: no room for a new segment in {} ({e}); free space",
                    self.dir.display()
                )));
            }
            return Err(io("new segment header")(e));
        }
        file.sync().map_err(io("new segment fsync"))?;
        self.storage
            .sync_dir(&self.dir)
            .map_err(io("journal directory fsync"))?;
        self.inner.write().unwrap().segments.insert(
            next_segno,
            Segment {
                file: file.clone(),
                path,
                first_seq: 0,
                last_seq: 0,
                bytes: SEGMENT_HEADER_LEN as u64,
                level: 0,
            },
        );
        Ok(Active {
            segno: next_segno,
            file,
            len: SEGMENT_HEADER_LEN as u64,
            created_us: hdr.created_us,
            entries: Vec::new(),
        })
    }

    /// Write the block index of `a`, just sealed, and move its records and
    /// points from memory to it. Without room for it they stay in memory.
    fn seal_index(&self, a: &Active, state: State) -> Result<(), JournalError> {
        let (first, last, points) = {
            let i = self.inner.read().unwrap();
            let Some(seg) = i.segments.get(&a.segno).filter(|s| s.first_seq != 0) else {
                return Ok(());
            };
            let (f, l) = (seg.first_seq, seg.last_seq);
            // Both tiers: a roll that failed after this segment was sealed
            // once (no room for the next) leaves its earlier points on disk.
            (f, l, i.index.points_in(f, l).map_err(lookup_error)?)
        };
        let recs: Vec<(index::Key, RecMeta)> = a
            .entries
            .iter()
            .filter(|e| matches!(e.kind, Kind::Write | Kind::Zero) && e.len > 0)
            .map(|e| ((e.seq, 0), RecMeta::of(a.segno, e)))
            .collect();
        let bms: Vec<IndexEntry> = a
            .entries
            .iter()
            .filter(|e| e.kind == Kind::Bookmark)
            .copied()
            .collect();
        let c = sealed::Contents {
            id: SegmentId {
                segno: a.segno,
                journal_id: state.journal_id,
                created_us: a.created_us,
                level: 0,
                len: a.len,
            },
            first_seq: first,
            last_seq: last,
            records: &recs,
            points: &points,
            bookmarks: &bms,
        };
        if let Some(s) = write_bix(&*self.storage, &self.dir, self.volume_size, &c)? {
            let mut i = self.inner.write().unwrap();
            if i.segments.contains_key(&a.segno) {
                i.index.seal(s);
            }
        }
        Ok(())
    }

    // --- points -----------------------------------------------------------

    pub fn window(&self) -> (Point, Point) {
        let i = self.inner.read().unwrap();
        (
            i.oldest(),
            Point {
                seq: i.last_seq,
                ts_us: i.last_ts_us,
            },
        )
    }

    /// Bookmarks inside the window, oldest first.
    pub fn bookmarks(&self) -> Vec<Bookmark> {
        let i = self.inner.read().unwrap();
        let oldest = i.oldest().seq;
        i.bookmarks
            .range(oldest..)
            .map(|(_, b)| b.clone())
            .collect()
    }

    /// Turn a point spec into a point inside the window, or say why not.
    pub fn resolve(&self, spec: &PointSpec) -> Result<Point, JournalError> {
        let i = self.inner.read().unwrap();
        let oldest = i.oldest();
        let latest = Point {
            seq: i.last_seq,
            ts_us: i.last_ts_us,
        };
        let outside = |what: String| {
            JournalError::OutsideWindow(format!(
                "{what} is outside the retention window (seq {}..{}, {} .. {})",
                oldest.seq,
                latest.seq,
                crate::util::rfc3339_ms(oldest.ts_us / 1000),
                crate::util::rfc3339_ms(latest.ts_us / 1000)
            ))
        };
        let none_yet = || {
            JournalError::OutsideWindow(
                "no consistent point yet: every point in the window lies inside a resync \
                 (step I/II or a bitmap drain); wait until the pair reaches differential sync"
                    .into(),
            )
        };
        let point = |seq: u64| -> Result<Point, JournalError> {
            Ok(Point {
                seq,
                ts_us: i.ts_of(seq)?,
            })
        };
        match spec {
            PointSpec::Latest => point(
                i.recoverable_at_or_before(latest.seq, oldest.seq)
                    .ok_or_else(none_yet)?,
            ),
            PointSpec::Oldest => point(
                i.recoverable_at_or_after(oldest.seq, latest.seq)
                    .ok_or_else(none_yet)?,
            ),
            PointSpec::Seq(s) => {
                if *s < oldest.seq || *s > latest.seq {
                    return Err(outside(format!("seq {s}")));
                }
                if let Some((a, b)) = i.unrec_range(*s) {
                    let before = i
                        .recoverable_at_or_before(*s, oldest.seq)
                        .map(|n| format!("seq {n}"))
                        .unwrap_or_else(|| "none".into());
                    let after = i
                        .recoverable_at_or_after(*s, latest.seq)
                        .map(|n| format!("seq {n}"))
                        .unwrap_or_else(|| "none yet".into());
                    return Err(JournalError::OutsideWindow(format!(
                        "seq {s} lies inside a resync (seqs {a}..{b}) and is not a consistent image of the source; the nearest consistent points are {before} and {after}"
                    )));
                }
                if *s != oldest.seq
                    && let Some((_, &to)) = i.thinned.range(..=*s).next_back()
                    && *s <= to
                    && !i.retained.contains(s)
                {
                    let before = i
                        .retained
                        .range(..*s)
                        .next_back()
                        .copied()
                        .unwrap_or(oldest.seq);
                    let after = i
                        .retained
                        .range(*s..)
                        .next()
                        .map(|n| format!("seq {n}"))
                        .unwrap_or_else(|| "none".into());
                    return Err(JournalError::OutsideWindow(format!(
                        "seq {s} was thinned by the sparse retention policy; the nearest kept points are seq {before} and {after}"
                    )));
                }
                point(*s)
            }
            PointSpec::Time(t) => {
                if *t < oldest.ts_us {
                    return Err(outside(format!(
                        "time {}",
                        crate::util::rfc3339_ms(t / 1000)
                    )));
                }
                let seq = i.seq_at_or_before_ts(*t)?;
                point(i.recoverable_at_or_before(seq, oldest.seq).ok_or_else(|| {
                    JournalError::OutsideWindow(format!(
                        "no consistent point at or before {}: the pair was resyncing then",
                        crate::util::rfc3339_ms(t / 1000)
                    ))
                })?)
            }
            PointSpec::Bookmark(name) => i
                .bookmarks
                .range(oldest.seq..)
                .rev()
                .find(|(s, b)| &b.name == name && i.unrec_range(**s).is_none())
                .map(|(s, b)| Point {
                    seq: *s,
                    ts_us: b.ts_us,
                })
                .ok_or_else(|| JournalError::NoSuchBookmark(name.clone())),
        }
    }

    /// Pin the newest record whether or not its point is consistent: what
    /// the replica will hold once everything applied so far is in it (fast
    /// resync compares the source against this).
    pub fn pin_last_applied(self: &Arc<Self>) -> Result<Pin, JournalError> {
        let p = {
            let i = self.inner.read().unwrap();
            Point {
                seq: i.last_seq,
                ts_us: i.last_ts_us,
            }
        };
        self.pin_point(p)
    }

    /// Hold `point` recoverable until the returned pin is dropped.
    pub fn pin(self: &Arc<Self>, spec: &PointSpec) -> Result<Pin, JournalError> {
        let p = self.resolve(spec)?;
        self.pin_point(p)
    }

    fn pin_point(self: &Arc<Self>, p: Point) -> Result<Pin, JournalError> {
        let mut i = self.inner.write().unwrap();
        if p.seq < i.oldest().seq {
            return Err(JournalError::OutsideWindow(format!(
                "seq {} was just pruned",
                p.seq
            )));
        }
        let id = i.next_pin;
        i.next_pin += 1;
        i.pins.insert(id, p.seq);
        Ok(Pin {
            journal: self.clone(),
            id,
            point: p,
        })
    }

    // --- reads ------------------------------------------------------------

    /// Read `buf.len()` bytes at `off` of the image at `seq`. The caller must
    /// hold a [`Pin`] at or before `seq` (use [`Pin::read_at`]).
    fn read_image(&self, seq: u64, off: u64, buf: &mut [u8]) -> Result<(), JournalError> {
        if off
            .checked_add(buf.len() as u64)
            .is_none_or(|e| e > self.volume_size)
        {
            return Err(JournalError::BadRecord(format!(
                "read at {off}+{} goes past the end of the {}-byte volume",
                buf.len(),
                self.volume_size
            )));
        }
        let (pieces, files) = {
            let i = self.inner.read().unwrap();
            let base = i.state.base_seq;
            let pieces = i
                .index
                .plan(base, seq, off, buf.len() as u64)
                .map_err(lookup_error)?;
            let mut files = Vec::new();
            for p in &pieces {
                if let Source::Record(_, m) = p.src {
                    let f = i
                        .segments
                        .get(&m.segno)
                        .expect("segment of a live record")
                        .file
                        .clone();
                    files.push((m, f));
                }
            }
            (pieces, files)
        };
        let mut files = files.into_iter();
        for p in pieces {
            let dst = &mut buf[(p.off - off) as usize..(p.off - off + p.len) as usize];
            match p.src {
                Source::Replica => self
                    .replica
                    .read_at(dst, p.off)
                    .map_err(io("replica read"))?,
                Source::Zeros => dst.fill(0),
                Source::Record(key, _) => {
                    let (m, f) = files.next().expect("one file per record piece");
                    read_payload(&*f, &m, key.0, p.off - m.offset, dst)?;
                }
            }
        }
        Ok(())
    }

    // --- checkpoint / prune -------------------------------------------------

    /// Move the oldest point to `seq`: write the newest version of every byte
    /// written up to `seq` into the replica, then drop those records.
    /// Points before `seq` are gone afterwards. Used by pruning and rollback.
    pub fn checkpoint(&self, seq: u64) -> Result<(), JournalError> {
        let _g = self.checkpoint_mu.lock().unwrap();
        self.check_failed()?;
        let ts = {
            let mut i = self.inner.write().unwrap();
            let oldest = i.oldest().seq;
            if seq <= oldest {
                return Ok(());
            }
            if seq > i.last_seq {
                return Err(JournalError::OutsideWindow(format!(
                    "cannot checkpoint to seq {seq}: the journal ends at {}",
                    i.last_seq
                )));
            }
            // A seq that sparse retention thinned is no image the replica
            // can hold (a compacted segment's intervals end at its kept
            // points and at its last seq): go to the kept point before it.
            let seq = match i.thinned.range(..=seq).next_back() {
                Some((&from, &to)) if seq >= from && seq < to && !i.retained.contains(&seq) => i
                    .retained
                    .range(from..seq)
                    .next_back()
                    .copied()
                    .unwrap_or(from - 1),
                _ => seq,
            };
            if seq <= oldest {
                return Ok(());
            }
            if let Some(&pinned) = i.pins.values().min()
                && pinned < seq
            {
                return Err(JournalError::Pinned { pinned });
            }
            let ts = i.ts_of(seq)?;
            let mut st = i.state;
            st.pending_base = Some((seq, ts));
            self.write_state(&mut i, st)?;
            ts
        };
        self.finish_checkpoint(seq, ts)
    }

    fn finish_checkpoint(&self, seq: u64, ts: u64) -> Result<(), JournalError> {
        // One sealed segment's records at a time, oldest first, so memory
        // holds one segment's extents, not the whole range's: each step
        // leaves the replica at a later image, and the last at `seq`'s.
        // (Readers meanwhile take every byte written after the base from
        // the journal, so they never see the replica in between.)
        let steps = {
            let i = self.inner.read().unwrap();
            i.index.step_ends(i.state.base_seq, seq)
        };
        let mut from = self.inner.read().unwrap().state.base_seq;
        for to in steps {
            self.checkpoint_step(from, to)?;
            from = to;
        }
        self.replica
            .sync()
            .map_err(|e| self.replica_error("replica fsync", e))?;
        self.finish_checkpoint_state(seq, ts)
    }

    /// Write the newest version of every byte written in `(from, to]` into
    /// the replica.
    fn checkpoint_step(&self, from: u64, to: u64) -> Result<(), JournalError> {
        let (extents, files) = {
            let i = self.inner.read().unwrap();
            let ext = i.index.top_extents(from, to).map_err(lookup_error)?;
            let mut files = Vec::new();
            for p in &ext {
                if let Source::Record(_, m) = p.src {
                    files.push((m, i.segments[&m.segno].file.clone()));
                }
            }
            (ext, files)
        };
        let mut files = files.into_iter();
        let mut buf = Vec::new();
        for p in &extents {
            // Bounded buffer: large extents are copied in 4 MiB steps.
            let mut done = 0u64;
            let rec = if let Source::Record(..) = p.src {
                files.next()
            } else {
                None
            };
            while done < p.len {
                let n = (p.len - done).min(4 << 20) as usize;
                buf.resize(n, 0);
                match (&p.src, &rec) {
                    (Source::Zeros, _) => buf.fill(0),
                    (Source::Record(s, _), Some((m, f))) => {
                        read_payload(&**f, m, s.0, p.off + done - m.offset, &mut buf)?
                    }
                    _ => unreachable!("top extents are records or zeros"),
                }
                self.replica
                    .write_at(&buf, p.off + done)
                    .map_err(|e| self.replica_error("replica write", e))?;
                done += n as u64;
            }
        }
        Ok(())
    }

    /// The replica holds `seq`'s image: make it the base, drop what is in it.
    fn finish_checkpoint_state(&self, seq: u64, ts: u64) -> Result<(), JournalError> {
        let mut i = self.inner.write().unwrap();
        let mut st = i.state;
        st.base_seq = seq;
        st.base_ts_us = ts;
        st.pending_base = None;
        self.write_state(&mut i, st)?;
        i.index.remove_upto(seq);
        i.bookmarks = i.bookmarks.split_off(&seq);
        if i.last_seq < seq {
            i.last_seq = seq;
        }
        // Drop segments wholly inside the replica now (never the active one).
        let active_segno = i.segments.keys().next_back().copied();
        let dead: Vec<u64> = i
            .segments
            .iter()
            .filter(|(n, s)| Some(**n) != active_segno && s.last_seq <= seq)
            .map(|(n, _)| *n)
            .collect();
        for n in dead {
            let s = i.segments.remove(&n).unwrap();
            i.index.drop_sealed(n);
            let _ = self.storage.remove(&self.dir.join(idx_name(n)));
            let _ = self.storage.remove(&self.dir.join(bix_name(n)));
            self.storage
                .remove(&s.path)
                .map_err(io("remove pruned segment"))?;
        }
        drop(i);
        self.storage
            .sync_dir(&self.dir)
            .map_err(io("journal directory fsync"))?;
        Ok(())
    }

    /// A replica write failed during a checkpoint. For want of space (a
    /// replica the filesystem could not preallocate, a thin device) the
    /// journal goes read-only: the checkpoint is redone whole, so it is safe
    /// to retry once space returns. Anything else stops the journal.
    fn replica_error(&self, what: &str, e: std::io::Error) -> JournalError {
        if is_no_space(&e) {
            return read_only_locked(&mut self.inner.write().unwrap(), &self.dir, what, &e);
        }
        self.fail(io(what)(e))
    }

    /// Make the replica itself equal to `point` (recovery). Points after it
    /// stay recoverable; points before it are consumed (use a vsnap to recover
    /// without giving up earlier points).
    pub fn rollback(&self, spec: &PointSpec) -> Result<Point, JournalError> {
        let p = self.resolve(spec)?;
        self.checkpoint(p.seq)?;
        Ok(p)
    }

    /// Seal the active segment so a space-based prune can release it.
    pub fn seal_active(&self) -> Result<(), JournalError> {
        let mut active = self.active.lock().unwrap();
        if active.as_ref().is_some_and(|a| !a.entries.is_empty()) {
            self.roll(&mut active)?;
        }
        Ok(())
    }

    /// Facts for reports and pruning decisions.
    pub fn stats(&self) -> JournalStats {
        let i = self.inner.read().unwrap();
        let oldest = i.oldest();
        JournalStats {
            oldest,
            latest: Point {
                seq: i.last_seq,
                ts_us: i.last_ts_us,
            },
            bytes: i.total_bytes(),
            records: i.index.len() as u64,
            index_bytes: i.index.heap_bytes() as u64,
            bookmarks: i.bookmarks.range(oldest.seq..).count() as u64,
            segments: i
                .segments
                .iter()
                .map(|(n, s)| SegmentStats {
                    segno: *n,
                    first_seq: s.first_seq,
                    last_seq: s.last_seq,
                    bytes: s.bytes,
                    level: s.level,
                })
                .collect(),
            min_pin: i.pins.values().min().copied(),
            resets: i.state.resets,
            failed: i.failed.clone(),
            stopped: i.read_only.clone().or_else(|| i.full.clone()),
            last_reset: i.last_reset,
        }
    }

    /// Time (µs) of the record at `seq` (monotonic view).
    pub fn ts_of(&self, seq: u64) -> Result<u64, JournalError> {
        self.inner.read().unwrap().ts_of(seq)
    }

    /// Latest point whose source time is at or before `ts_us`.
    pub fn seq_at_or_before(&self, ts_us: u64) -> Result<Option<u64>, JournalError> {
        let i = self.inner.read().unwrap();
        if ts_us < i.oldest().ts_us {
            return Ok(None);
        }
        i.seq_at_or_before_ts(ts_us).map(Some)
    }

    /// Record, durably and before the records are applied, that the points
    /// `from..=to` are not consistent images of the source. Idempotent;
    /// adjacent and overlapping ranges merge.
    pub fn mark_unrecoverable(&self, from: u64, to: u64) -> Result<(), JournalError> {
        self.mark_unrecoverable_runs(&[(from, to)])
    }

    /// [`Journal::mark_unrecoverable`] for several runs (one chunk's), with
    /// one write of the ranges file. More than [`MAX_RUNS_PER_CHUNK`] runs
    /// are merged from the last ones on: only a peer that alternates the
    /// flag record by record sends that many, and marking more than it
    /// asked costs recovery points, never data.
    pub fn mark_unrecoverable_runs(&self, runs: &[(u64, u64)]) -> Result<(), JournalError> {
        let mut runs: Vec<(u64, u64)> = runs.iter().copied().filter(|(a, b)| a <= b).collect();
        if runs.len() > MAX_RUNS_PER_CHUNK {
            let tail = runs.split_off(MAX_RUNS_PER_CHUNK - 1);
            let lo = tail.iter().map(|r| r.0).min().unwrap();
            let hi = tail.iter().map(|r| r.1).max().unwrap();
            runs.push((lo, hi));
        }
        let mut i = self.inner.write().unwrap();
        runs.retain(|&(from, to)| i.unrec_range(from).is_none_or(|(_, b)| b < to));
        if runs.is_empty() {
            return Ok(());
        }
        let mut m = i.unrec.clone();
        for (from, to) in runs {
            let (mut lo, mut hi) = (from, to);
            let touching: Vec<(u64, u64)> = m
                .range(..=hi.saturating_add(1))
                .filter(|(_, b)| b.saturating_add(1) >= lo)
                .map(|(a, b)| (*a, *b))
                .collect();
            for (a, b) in touching {
                m.remove(&a);
                lo = lo.min(a);
                hi = hi.max(b);
            }
            m.insert(lo, hi);
        }
        // Ranges wholly before the oldest point no longer matter.
        let base = i.state.base_seq;
        m.retain(|_, b| *b >= base);
        merge_oldest(&mut m);
        if let Err(e) = self
            .storage
            .write_atomic(&self.dir.join(UNREC_FILE), &format::encode_ranges(&m))
        {
            // The old file stands; nothing changed: refuse the chunk.
            if is_no_space(&e) {
                let msg = format!(
                    "retention disk full: cannot record a resync range in {} ({e}); the chunk is taken once space returns",
                    self.dir.display()
                );
                return Err(full_locked(&mut i, msg));
            }
            return Err(fail_locked(&mut i, &self.dir, io(UNREC_FILE)(e)));
        }
        i.unrec = m;
        Ok(())
    }

    /// The unrecoverable range holding `seq`, if any.
    pub fn unrecoverable_range(&self, seq: u64) -> Option<(u64, u64)> {
        self.inner.read().unwrap().unrec_range(seq)
    }

    pub(crate) fn note_reset(&self) -> Result<(), JournalError> {
        let mut i = self.inner.write().unwrap();
        let mut st = i.state;
        st.resets += 1;
        self.write_state(&mut i, st)
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct SegmentStats {
    pub segno: u64,
    /// 0 as applied, k once compacted by sparse tier k.
    pub level: u8,
    pub first_seq: u64,
    pub last_seq: u64,
    pub bytes: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct JournalStats {
    pub oldest: Point,
    pub latest: Point,
    pub bytes: u64,
    /// Memory the record index holds (the active segment's records, and a
    /// summary per sealed segment).
    pub index_bytes: u64,
    pub records: u64,
    pub bookmarks: u64,
    pub segments: Vec<SegmentStats>,
    pub min_pin: Option<u64>,
    pub resets: u64,
    pub failed: Option<String>,
    /// Why the journal takes no chunks now for want of space (read-only
    /// since open, or the last chunk refused at its limit).
    pub stopped: Option<String>,
    pub last_reset: Option<ResetInfo>,
}

/// Keeps a point recoverable (pruning stops before it) while held.
pub struct Pin {
    journal: Arc<Journal>,
    id: u64,
    pub point: Point,
}

impl Pin {
    pub fn journal(&self) -> &Arc<Journal> {
        &self.journal
    }
    /// Read the pinned image.
    pub fn read_at(&self, off: u64, buf: &mut [u8]) -> Result<(), JournalError> {
        self.journal.read_image(self.point.seq, off, buf)
    }
}

impl Drop for Pin {
    fn drop(&mut self) {
        self.journal.inner.write().unwrap().pins.remove(&self.id);
    }
}

/// Allocate a replica's blocks (a no-op where already allocated; a
/// filesystem without `fallocate` leaves it sparse, with a warning).
fn allocate_replica(f: &dyn BlockFile, size: u64) -> std::io::Result<()> {
    match f.allocate(size) {
        Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => {
            tracing::warn!(error = %e, "the replica's filesystem cannot preallocate: pruning on a full disk may fail");
            Ok(())
        }
        r => r,
    }
}

/// Make the journal read-only for want of space (`what` could not be
/// written): its points stay readable until [`Journal::try_resume`].
fn read_only_locked(i: &mut Inner, dir: &Path, what: &str, e: &std::io::Error) -> JournalError {
    let msg = format!(
        "retention disk full: {what} ({e}); every point stays readable; free space on {} and the journal resumes by itself",
        dir.display()
    );
    tracing::error!(journal = %dir.display(), error = %msg, "journal read-only");
    i.read_only = Some(msg.clone());
    JournalError::ReadOnly(msg)
}

/// Refuse a chunk for want of space (nothing of it applied): `msg` is shown
/// as the pair's `stopped` reason until a chunk is taken again.
fn full_locked(i: &mut Inner, msg: String) -> JournalError {
    i.full = Some(msg.clone());
    JournalError::RetentionFull(msg)
}

fn fail_locked(i: &mut Inner, dir: &Path, e: JournalError) -> JournalError {
    let msg = e.to_string();
    tracing::error!(journal = %dir.display(), error = %msg, "journal stopped");
    i.failed = Some(msg);
    e
}

/// Read part of a Write record's payload, verifying the CRC of every 4 KiB
/// block it touches.
fn read_payload(
    f: &dyn BlockFile,
    m: &RecMeta,
    seq: u64,
    payload_off: u64,
    dst: &mut [u8],
) -> Result<(), JournalError> {
    let ncrc = (m.len as usize).div_ceil(format::CRC_BLOCK);
    let b0 = payload_off as usize / format::CRC_BLOCK;
    let b1 = (payload_off as usize + dst.len()).div_ceil(format::CRC_BLOCK);
    let crc_pos = m.pos + RECORD_HEADER_LEN as u64 + 4 * b0 as u64;
    let data_start = b0 * format::CRC_BLOCK;
    let data_end = (b1 * format::CRC_BLOCK).min(m.len as usize);
    let payload_pos = m.pos + RECORD_HEADER_LEN as u64 + 4 * ncrc as u64;
    // One read when the CRCs and the data are close together, two otherwise.
    let span_end = payload_pos + data_end as u64;
    let one: Vec<u8>;
    let crc_buf: Vec<u8>;
    let data_buf: Vec<u8>;
    let (crcs, data): (&[u8], &[u8]) = if span_end - crc_pos <= 256 << 10 {
        let mut b = vec![0u8; (span_end - crc_pos) as usize];
        f.read_at(&mut b, crc_pos).map_err(io("journal read"))?;
        one = b;
        let c = 4 * (b1 - b0);
        let d0 = (payload_pos + data_start as u64 - crc_pos) as usize;
        (&one[..c], &one[d0..])
    } else {
        let mut c = vec![0u8; 4 * (b1 - b0)];
        f.read_at(&mut c, crc_pos).map_err(io("journal read"))?;
        let mut d = vec![0u8; data_end - data_start];
        f.read_at(&mut d, payload_pos + data_start as u64)
            .map_err(io("journal read"))?;
        crc_buf = c;
        data_buf = d;
        (&crc_buf[..], &data_buf[..])
    };
    format::verify_blocks(crcs, data, b0).map_err(|e| {
        JournalError::Corrupt(format!(
            "segment {} record seq {seq} at offset {}: {e}",
            m.segno, m.pos
        ))
    })?;
    let s = payload_off as usize - data_start;
    dst.copy_from_slice(&data[s..s + dst.len()]);
    Ok(())
}

fn read_bookmark(
    f: &Arc<dyn BlockFile>,
    e: &IndexEntry,
) -> Result<(BookmarkKind, String), JournalError> {
    let h = RecordHeader {
        kind: Kind::Bookmark,
        seq: e.seq,
        ts_us: e.ts_us,
        offset: 0,
        len: e.len,
    };
    let mut b = vec![0u8; h.total_len()];
    f.read_at(&mut b, e.pos).map_err(io("journal read"))?;
    let (_, payload, _) = format::decode_record(&b)
        .map_err(|x| JournalError::Corrupt(format!("bookmark seq {}: {x}", e.seq)))?;
    format::decode_bookmark(payload)
        .map_err(|x| JournalError::Corrupt(format!("bookmark seq {}: {x}", e.seq)))
}

/// Write the block index `c` describes beside its segment and open it.
/// `None` without room for it: the records then stay in memory (and the
/// index is written on a later open).
fn write_bix(
    storage: &dyn Storage,
    dir: &Path,
    volume_size: u64,
    c: &sealed::Contents,
) -> Result<Option<SealedIndex>, JournalError> {
    let segno = c.id.segno;
    let path = dir.join(bix_name(segno));
    match storage.write_atomic(&path, &sealed::build(c)) {
        Ok(()) => {}
        Err(e) if is_no_space(&e) => {
            tracing::warn!(segment = segno, error = %e, "no space for the segment's block index; its records stay in memory until it can be written");
            return Ok(None);
        }
        Err(e) => return Err(io(format!("cannot write {}", path.display()))(e)),
    }
    let f = storage
        .open(&path, false)
        .map_err(io(format!("cannot open {}", path.display())))?;
    let (s, _) = SealedIndex::open(f, c.id, volume_size).map_err(bix_error(segno))?;
    Ok(Some(s))
}

/// A segment wholly covered by an earlier compacted one (it stands for
/// seqs `covers`, the journal already reaches `last_seq`) is what a merge
/// left behind when it was interrupted: remove it and its indexes.
fn drop_if_superseded(
    storage: &dyn Storage,
    dir: &Path,
    segno: u64,
    covers: (u64, u64),
    floor: u64,
    last_seq: u64,
) -> Result<bool, JournalError> {
    let superseded =
        covers.1 > floor && covers.1 <= last_seq && last_seq > floor && covers.0 <= last_seq;
    if superseded {
        tracing::info!(
            segment = segno,
            "removing a segment superseded by a compacted one"
        );
        let _ = storage.remove(&dir.join(idx_name(segno)));
        let _ = storage.remove(&dir.join(bix_name(segno)));
        storage
            .remove(&dir.join(seg_name(segno)))
            .map_err(io("remove superseded segment"))?;
    }
    Ok(superseded)
}

/// A sealed segment's block index, its bookmarks above the floor, and (if
/// compacted) the points it kept above it.
type OpenedBix = (SealedIndex, Vec<Bookmark>, Vec<u64>);

/// Open sealed segment `segno`'s block index if it is there, describes
/// the segment as it stands and agrees with it (its bookmarks are points,
/// read back from the segment); `None` (and the segment is loaded whole,
/// and its index rebuilt) if not.
fn open_bix(
    storage: &dyn Storage,
    dir: &Path,
    segno: u64,
    file: &Arc<dyn BlockFile>,
    state: State,
    floor: u64,
) -> Result<Option<OpenedBix>, JournalError> {
    let path = dir.join(bix_name(segno));
    if !storage.exists(&path) {
        return Ok(None);
    }
    let len = file.len().map_err(io("segment size"))?;
    if len < SEGMENT_HEADER_LEN as u64 {
        return Ok(None);
    }
    let mut hb = [0u8; SEGMENT_HEADER_LEN];
    file.read_at(&mut hb, 0).map_err(io("segment header"))?;
    let Ok(h) = SegmentHeader::decode(&hb) else {
        return Ok(None);
    };
    if h.journal_id != state.journal_id || h.segno != segno {
        return Ok(None);
    }
    let id = SegmentId {
        segno,
        journal_id: state.journal_id,
        created_us: h.created_us,
        level: h.level,
        len,
    };
    let f = storage
        .open(&path, false)
        .map_err(io("segment block index"))?;
    let opened = SealedIndex::open(f, id, state.volume_size)
        .map_err(|e| e.to_string())
        .and_then(|(s, entries)| {
            let mut bms = Vec::new();
            for e in entries.iter().filter(|e| e.seq > floor) {
                let (kind, name) = read_bookmark(file, e).map_err(|e| e.to_string())?;
                let ts = s
                    .point_at_or_after(e.seq)
                    .map_err(|e| e.to_string())?
                    .filter(|p| p.0 == e.seq)
                    .ok_or_else(|| format!("bookmark seq {} is not one of its points", e.seq))?
                    .1;
                bms.push(Bookmark {
                    seq: e.seq,
                    ts_us: ts,
                    kind,
                    name,
                });
            }
            let kept = match h.level > 0 && s.last_seq > floor {
                true => s
                    .points_in(floor + 1, s.last_seq)
                    .map_err(|e| e.to_string())?
                    .into_iter()
                    .map(|p| p.0)
                    .collect(),
                false => Vec::new(),
            };
            Ok((s, bms, kept))
        });
    match opened {
        Ok(x) => Ok(Some(x)),
        Err(e) => {
            tracing::warn!(segment = segno, error = %e, "segment block index invalid; rebuilding it from the segment");
            Ok(None)
        }
    }
}

/// Load a segment's entries: from its sealed index if valid, else by scanning.
/// Returns `None` for the length when the segment has no valid header (torn
/// at creation; only possible for the last one).
fn load_segment(
    storage: &dyn Storage,
    dir: &Path,
    segno: u64,
    file: &Arc<dyn BlockFile>,
    state: State,
    is_last: bool,
) -> Result<(u8, Vec<IndexEntry>, Option<u64>), JournalError> {
    let len = file.len().map_err(io("segment size"))?;
    let mut hb = [0u8; SEGMENT_HEADER_LEN];
    if len < SEGMENT_HEADER_LEN as u64 {
        if is_last {
            return Ok((0, Vec::new(), None));
        }
        return Err(JournalError::Corrupt(format!(
            "segment {segno} is shorter than its header"
        )));
    }
    file.read_at(&mut hb, 0).map_err(io("segment header"))?;
    let level = match SegmentHeader::decode(&hb) {
        Ok(h) if h.journal_id == state.journal_id && h.segno == segno => h.level,
        Ok(_) => {
            return Err(JournalError::Corrupt(format!(
                "segment {segno} belongs to another journal"
            )));
        }
        Err(_) if is_last => return Ok((0, Vec::new(), None)),
        Err(e) => {
            return Err(JournalError::Corrupt(format!(
                "segment {segno} header: {e}"
            )));
        }
    };
    let idx_path = dir.join(idx_name(segno));
    if !is_last && storage.exists(&idx_path) {
        let f = storage
            .open(&idx_path, false)
            .map_err(io("segment index"))?;
        // An index has an entry per record of at least a record header.
        let ilen = f.len().map_err(io("segment index"))?;
        let mut b = vec![0u8; ilen.min(len + 68) as usize];
        f.read_at(&mut b, 0).map_err(io("segment index"))?;
        match format::decode_index(&b) {
            Ok((n, jid, slen, entries))
                if ilen <= len + 68
                    && n == segno
                    && jid == state.journal_id
                    && slen == len
                    && format::index_fits(&entries, len, state.volume_size) =>
            {
                return Ok((level, entries, Some(len)));
            }
            _ => tracing::warn!(
                segment = segno,
                "segment index invalid; rescanning the segment"
            ),
        }
    }
    // Scan, in bounded reads, keeping only chunks sealed by a valid commit.
    let mut entries = Vec::new();
    let mut pending: Vec<IndexEntry> = Vec::new();
    let mut chunk_crc = crc::crc32c(&[]);
    let mut pos = skip_padding(&**file, SEGMENT_HEADER_LEN as u64, len)?;
    let mut good = pos;
    let mut hdr = [0u8; RECORD_HEADER_LEN];
    loop {
        if pos + RECORD_HEADER_LEN as u64 > len {
            break;
        }
        file.read_at(&mut hdr, pos).map_err(io("segment scan"))?;
        let Ok(h) = RecordHeader::decode(&hdr) else {
            break;
        };
        let total = h.total_len() as u64;
        if pos + total > len {
            break;
        }
        let mut rec = vec![0u8; total as usize];
        file.read_at(&mut rec, pos).map_err(io("segment scan"))?;
        let Ok((h, payload, _)) = format::decode_record(&rec) else {
            break;
        };
        if h.kind == Kind::Commit {
            let Ok((first, count, crc)) = format::decode_commit(payload) else {
                break;
            };
            // A compacted segment is one chunk whose records carry the seqs of
            // the intervals they stand for; an applied chunk is consecutive.
            let seqs_ok = if level > 0 {
                pending.iter().all(|e| e.seq >= first && e.seq <= h.seq)
            } else {
                pending.first().is_some_and(|e| e.seq == first)
                    && pending.last().is_some_and(|e| e.seq == h.seq)
            };
            let ok = count as usize == pending.len() && seqs_ok && crc == chunk_crc;
            if !ok {
                break;
            }
            entries.append(&mut pending);
            entries.push(IndexEntry {
                kind: Kind::Commit,
                len: h.len,
                seq: h.seq,
                ts_us: h.ts_us,
                // For commits the index keeps the chunk's first seq here.
                offset: first,
                pos,
            });
            pos = skip_padding(&**file, pos + total, len)?;
            good = pos;
            chunk_crc = crc::crc32c(&[]);
            continue;
        }
        pending.push(IndexEntry {
            kind: h.kind,
            len: h.len,
            seq: h.seq,
            ts_us: h.ts_us,
            offset: h.offset,
            pos,
        });
        chunk_crc = crc::crc32c_append(chunk_crc, &rec);
        pos += total;
    }
    if good < len {
        if !is_last {
            return Err(JournalError::Corrupt(format!(
                "sealed segment {segno} is damaged at offset {good} (of {len}); restore it or resync the pair"
            )));
        }
        tracing::warn!(
            segment = segno,
            kept = good,
            discarded = len - good,
            "discarding an uncommitted journal tail"
        );
        file.set_len(good).map_err(io("truncate segment"))?;
        file.sync().map_err(io("truncate segment"))?;
    }
    Ok((level, entries, Some(good)))
}

/// Where the next chunk starts after a segment header or a commit ending
/// at `pos`: a chunk written `O_DIRECT` starts on the next 4 KiB boundary,
/// and the bytes up to it are zeros (a file shorter than the boundary ends
/// in them). Anything else there is no padding: the scan goes on at `pos`.
fn skip_padding(file: &dyn BlockFile, pos: u64, len: u64) -> Result<u64, JournalError> {
    let next = pos.next_multiple_of(DIRECT_ALIGN as u64).min(len);
    if next <= pos {
        return Ok(pos);
    }
    let mut b = vec![0u8; (next - pos) as usize];
    file.read_at(&mut b, pos).map_err(io("segment scan"))?;
    Ok(if b.iter().all(|x| *x == 0) { next } else { pos })
}

impl From<DecodeError> for JournalError {
    fn from(e: DecodeError) -> Self {
        JournalError::Corrupt(e.to_string())
    }
}

#[allow(dead_code)]
fn assert_send_sync() {
    fn f<T: Send + Sync>() {}
    f::<Journal>();
}

/// Recovery across the volumes of one host or plan: the newest bookmark name
/// (optionally of one type) present in every journal's window. A plan-wide
/// bookmark is issued with the same name on every pair.
pub fn latest_common_bookmark(journals: &[&Journal], kind: Option<BookmarkKind>) -> Option<String> {
    let mut lists = journals.iter().map(|j| j.bookmarks());
    let first = lists.next()?;
    let others: Vec<std::collections::HashSet<String>> = lists
        .map(|l| {
            l.into_iter()
                .filter(|b| kind.is_none_or(|k| b.kind == k))
                .map(|b| b.name)
                .collect()
        })
        .collect();
    first
        .into_iter()
        .rev()
        .filter(|b| kind.is_none_or(|k| b.kind == k))
        .find(|b| others.iter().all(|o| o.contains(&b.name)))
        .map(|b| b.name)
}

/// The latest time every journal has reached (µs), if that time lies inside
/// every journal's window.
pub fn latest_common_time(journals: &[&Journal]) -> Option<u64> {
    let windows: Vec<(Point, Point)> = journals.iter().map(|j| j.window()).collect();
    let t = windows.iter().map(|(_, l)| l.ts_us).min()?;
    windows.iter().all(|(o, _)| o.ts_us <= t).then_some(t)
}

/// What a compaction did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompactOutcome {
    Compacted {
        segno: u64,
        points_kept: usize,
        points_dropped: usize,
        bytes_before: u64,
        bytes_after: u64,
    },
    /// An open snapshot holds a point the compaction would drop.
    Held { pinned: u64 },
    /// Nothing to do (already compacted at this level, active, or pruned).
    Skipped,
}

/// A point as a sparse rule sees it.
pub struct PointInfo<'a> {
    pub seq: u64,
    pub ts_us: u64,
    /// Time of the next point (None if this is the newest).
    pub next_ts_us: Option<u64>,
    pub bookmark: Option<&'a Bookmark>,
}

impl Journal {
    /// Thin one sealed segment: keep only the points `keep` accepts, and for
    /// each interval between kept points only the newest version of each byte.
    /// The segment is rewritten whole and replaces the old one atomically.
    ///
    /// `segnos` are consecutive sealed segments; they are merged into one
    /// segment numbered like the first, so intervals between kept points that
    /// span segments fold too. Crash safety: the merged segment replaces the
    /// first atomically; the others, now covered by it, are deleted after it
    /// (and on open if a crash came first).
    pub fn compact_segments(
        &self,
        segnos: &[u64],
        level: u8,
        keep: impl Fn(&PointInfo) -> bool,
    ) -> Result<CompactOutcome, JournalError> {
        let _g = self.checkpoint_mu.lock().unwrap();
        self.check_failed()?;
        let state;
        let Some(&segno) = segnos.first() else {
            return Ok(CompactOutcome::Skipped);
        };
        let (lo, hi, kept, dropped, plan, bytes_before) = {
            let i = self.inner.read().unwrap();
            state = i.state;
            let active = i.segments.keys().next_back().copied();
            let floor = i.oldest().seq;
            let mut segs = Vec::new();
            for n in segnos {
                match i.segments.get(n) {
                    Some(seg) if Some(*n) != active && seg.first_seq != 0 => segs.push(seg),
                    _ => return Ok(CompactOutcome::Skipped),
                }
            }
            for w in segs.windows(2) {
                if w[1].first_seq != w[0].last_seq + 1 {
                    return Ok(CompactOutcome::Skipped);
                }
            }
            let last = segs.last().unwrap();
            if last.last_seq <= floor || segs.iter().all(|s| s.level >= level) && segs.len() == 1 {
                return Ok(CompactOutcome::Skipped);
            }
            let (lo, hi) = (segs[0].first_seq.max(floor + 1), last.last_seq);
            let bytes_before: u64 = segs.iter().map(|s| s.bytes).sum();
            // Current points in [lo, hi] and the rule's verdict on each.
            let points = i.index.points_in(lo, hi).map_err(lookup_error)?;
            let after = i
                .index
                .point_at_or_after(hi.saturating_add(1))
                .map_err(lookup_error)?;
            let mut kept = Vec::new();
            let mut dropped = 0;
            for (k, &(seq, ts)) in points.iter().enumerate() {
                let info = PointInfo {
                    seq,
                    ts_us: ts,
                    next_ts_us: points.get(k + 1).or(after.as_ref()).map(|t| t.1),
                    bookmark: i.bookmarks.get(&seq),
                };
                if keep(&info) {
                    kept.push((seq, ts, info.bookmark.cloned()));
                } else {
                    dropped += 1;
                }
            }
            if let Some(&p) = i
                .pins
                .values()
                .find(|p| **p >= lo && **p <= hi && !kept.iter().any(|k| k.0 == **p))
            {
                return Ok(CompactOutcome::Held { pinned: p });
            }
            // Intervals end at every kept point and at `hi`.
            let mut ends: Vec<u64> = kept.iter().map(|k| k.0).collect();
            if ends.last() != Some(&hi) {
                ends.push(hi);
            }
            let mut plan = Vec::new();
            let mut start = lo - 1;
            for e in ends {
                let ext: Vec<(index::Piece, Option<RecordSource>)> = i
                    .index
                    .top_extents(start, e)
                    .map_err(lookup_error)?
                    .into_iter()
                    .map(|p| {
                        let src = match p.src {
                            Source::Record(_, m) => Some((m, i.segments[&m.segno].file.clone())),
                            _ => None,
                        };
                        (p, src)
                    })
                    .collect();
                plan.push((e, i.ts_of(e)?, ext));
                start = e;
            }
            (lo, hi, kept, dropped, plan, bytes_before)
        };

        // Build the new segment: one chunk, sealed by a commit covering [lo, hi].
        let hdr = SegmentHeader {
            segno,
            journal_id: state.journal_id,
            volume_size: self.volume_size,
            created_us: now_us(),
            level,
        };
        let mut buf = hdr.encode().to_vec();
        let mut entries = Vec::new();
        let chunk_start = buf.len();
        let kept_set: std::collections::BTreeMap<u64, Option<Bookmark>> =
            kept.iter().map(|k| (k.0, k.2.clone())).collect();
        let mut data = Vec::new();
        for (end, ts, ext) in &plan {
            for (p, src) in ext {
                let pos = buf.len() as u64;
                let (kind, len) = match src {
                    None => (Kind::Zero, p.len as u32),
                    Some((m, f)) => {
                        data.resize(p.len as usize, 0);
                        read_payload(&**f, m, *end, p.off - m.offset, &mut data)?;
                        (Kind::Write, p.len as u32)
                    }
                };
                let h = RecordHeader {
                    kind,
                    seq: *end,
                    ts_us: *ts,
                    offset: p.off,
                    len,
                };
                let payload: &[u8] = if kind == Kind::Write { &data } else { &[] };
                format::encode_record(&mut buf, &h, payload);
                entries.push(IndexEntry {
                    kind,
                    len,
                    seq: *end,
                    ts_us: *ts,
                    offset: p.off,
                    pos,
                });
            }
            if let Some(bm) = kept_set.get(end) {
                let pos = buf.len() as u64;
                let (kind, payload) = match bm {
                    Some(b) => (Kind::Bookmark, format::encode_bookmark(b.kind, &b.name)),
                    None => (Kind::Point, Vec::new()),
                };
                let len = payload.len() as u32;
                format::encode_record(
                    &mut buf,
                    &RecordHeader {
                        kind,
                        seq: *end,
                        ts_us: *ts,
                        offset: 0,
                        len,
                    },
                    &payload,
                );
                entries.push(IndexEntry {
                    kind,
                    len,
                    seq: *end,
                    ts_us: *ts,
                    offset: 0,
                    pos,
                });
            }
        }
        let chunk_crc = crc::crc32c(&buf[chunk_start..]);
        let commit = format::encode_commit(lo, entries.len() as u32, chunk_crc);
        let hi_ts = plan.last().map(|p| p.1).unwrap_or(0);
        let pos = buf.len() as u64;
        format::encode_record(
            &mut buf,
            &RecordHeader {
                kind: Kind::Commit,
                seq: hi,
                ts_us: hi_ts,
                offset: 0,
                len: commit.len() as u32,
            },
            &commit,
        );
        entries.push(IndexEntry {
            kind: Kind::Commit,
            len: commit.len() as u32,
            seq: hi,
            ts_us: hi_ts,
            offset: lo,
            pos,
        });

        // Install: stale index out, new segment in atomically, new index.
        let path = self.dir.join(seg_name(segno));
        let idx = self.dir.join(idx_name(segno));
        let bix = self.dir.join(bix_name(segno));
        let fail = |e| self.fail(e);
        // Both indexes of the old segment go first: neither may outlive it.
        // (The block index is also bound to the segment's creation time.)
        let stale: Vec<&PathBuf> = [&idx, &bix]
            .into_iter()
            .filter(|p| self.storage.exists(p))
            .collect();
        for p in &stale {
            self.storage
                .remove(p)
                .map_err(io("remove segment index"))
                .map_err(fail)?;
        }
        if !stale.is_empty() {
            self.storage
                .sync_dir(&self.dir)
                .map_err(io("journal directory fsync"))
                .map_err(fail)?;
        }
        match self.storage.write_atomic(&path, &buf) {
            Ok(()) => {}
            // The old segment stands (rescanned on open): try again later.
            Err(e) if is_no_space(&e) => {
                tracing::info!(journal = %self.dir.display(), segment = segno, error = %e, "sparse retention deferred: no room to rewrite the segment");
                return Ok(CompactOutcome::Skipped);
            }
            Err(e) => return Err(fail(io(format!("rewrite segment {segno}"))(e))),
        }
        match self.storage.write_atomic(
            &idx,
            &format::encode_index(segno, state.journal_id, buf.len() as u64, &entries),
        ) {
            Ok(()) => {}
            Err(e) if is_no_space(&e) => {
                tracing::warn!(segment = segno, error = %e, "no space for the segment's index; it is rebuilt by a scan on open")
            }
            Err(e) => return Err(fail(io("segment index")(e))),
        }
        let file = self
            .storage
            .open(&path, false)
            .map_err(io("reopen segment"))
            .map_err(fail)?;
        let recs: Vec<(index::Key, RecMeta)> = {
            let (mut prev, mut sub) = (0, 0u32);
            let mut v = Vec::new();
            for e in entries
                .iter()
                .filter(|e| matches!(e.kind, Kind::Write | Kind::Zero))
            {
                if e.seq != prev {
                    (prev, sub) = (e.seq, 0);
                }
                if e.len > 0 {
                    v.push(((e.seq, sub), RecMeta::of(segno, e)));
                }
                sub += 1;
            }
            v
        };
        let points: Vec<(u64, u64)> = kept.iter().map(|k| (k.0, k.1)).collect();
        let bms: Vec<IndexEntry> = entries
            .iter()
            .filter(|e| e.kind == Kind::Bookmark)
            .copied()
            .collect();
        let sealed_ix = write_bix(
            &*self.storage,
            &self.dir,
            self.volume_size,
            &sealed::Contents {
                id: SegmentId {
                    segno,
                    journal_id: state.journal_id,
                    created_us: hdr.created_us,
                    level,
                    len: buf.len() as u64,
                },
                first_seq: lo,
                last_seq: hi,
                records: &recs,
                points: &points,
                bookmarks: &bms,
            },
        )
        .map_err(fail)?;
        for n in &segnos[1..] {
            let _ = self.storage.remove(&self.dir.join(idx_name(*n)));
            let _ = self.storage.remove(&self.dir.join(bix_name(*n)));
            self.storage
                .remove(&self.dir.join(seg_name(*n)))
                .map_err(io("remove merged segment"))
                .map_err(fail)?;
        }
        self.storage
            .sync_dir(&self.dir)
            .map_err(io("journal directory fsync"))
            .map_err(fail)?;

        let mut i = self.inner.write().unwrap();
        for n in &segnos[1..] {
            i.segments.remove(n);
        }
        for n in segnos {
            i.index.drop_sealed(*n);
        }
        i.index.remove_range(lo, hi);
        match sealed_ix {
            Some(s) => i.index.seal(s),
            None => {
                for (k, m) in recs {
                    i.index.insert(k, m);
                }
                for (seq, ts) in points {
                    i.index.push_point(seq, ts);
                }
            }
        }
        let gone: Vec<u64> = i
            .bookmarks
            .range(lo..=hi)
            .map(|(s, _)| *s)
            .filter(|s| !kept_set.contains_key(s))
            .collect();
        for s in gone {
            i.bookmarks.remove(&s);
        }
        let stale: Vec<u64> = i.retained.range(lo..=hi).copied().collect();
        for s in stale {
            i.retained.remove(&s);
        }
        i.retained.extend(kept.iter().map(|k| k.0));
        i.thinned.insert(lo, hi);
        let seg = i.segments.get_mut(&segno).expect("segment still there");
        *seg = Segment {
            file,
            path,
            first_seq: lo,
            last_seq: hi,
            bytes: buf.len() as u64,
            level,
        };
        Ok(CompactOutcome::Compacted {
            segno,
            points_kept: kept.len(),
            points_dropped: dropped,
            bytes_before,
            bytes_after: buf.len() as u64,
        })
    }
}

/// A record and the segment file holding it.
type RecordSource = (RecMeta, Arc<dyn BlockFile>);
