//! A protected volume and the ordered stream of its changes.
//!
//! Every write to the volume goes through [`Volume::write`]: under one lock
//! it changes the backing file and then either appends a record to the
//! buffer (differential mode, room in the buffer) or marks the blocks dirty in
//! the bitmap. Resync reads ([`Volume::copy_block`]) take the same lock, so a
//! block read for the stream is ordered exactly against the writes around it:
//! the replica ends equal to the source whatever interleaving happened.
//!
//! Invariants:
//! - memory: `buffered` never exceeds `cap` — a write that does not fit is
//!   marked in the bitmap instead (bitmap mode);
//! - a record's `inconsistent` flag is set iff, after it, dirty blocks remain
//!   or step I has not finished: the MT never offers such a point;
//! - **no acknowledged write is lost to replication**: every write the agent
//!   acknowledges (NBD, FUSE) is in the pair's stream (buffered until the PS
//!   acknowledges it), or in its dirty bitmap, and in both cases inside an
//!   extent of the volume's persisted [`ActivityLog`], made durable before
//!   the write is acknowledged — also while no pair stream exists at all
//!   (the agent has not heard of its pair yet). At the next start the pair
//!   takes the clean-stop bitmap (if the stop was clean) plus every logged
//!   extent; after a crash, the logged extents alone: a drain of what can
//!   differ, not of the volume. Where neither can be trusted (the log is
//!   damaged or missing after a crash) the pair is resync-required and says
//!   so; nothing is guessed.

use std::collections::VecDeque;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use super::activity::{self, ActivityLog};
use crate::engine::bufpool;
use crate::engine::chunk::WireRecord;
use crate::engine::control::AgentMode;
use crate::engine::journal::format::BookmarkKind;
use crate::engine::journal::{Record, RecordBody};

/// Dirty-tracking granularity.
pub const BITMAP_BLOCK: u64 = 64 << 10;
/// Largest zeroed range one record carries (the journal's record limit).
pub const MAX_ZERO: u64 = 16 << 20;
/// Unit of resync reads and of fast-resync hashes.
pub const RESYNC_BLOCK: u64 = 1 << 20;

fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// Dirty blocks of `BITMAP_BLOCK` bytes.
#[derive(Debug, Clone, Default)]
pub struct Bitmap {
    words: Vec<u64>,
    count: u64,
}

impl Bitmap {
    pub fn new(volume_size: u64) -> Bitmap {
        let blocks = volume_size.div_ceil(BITMAP_BLOCK);
        Bitmap {
            words: vec![0; blocks.div_ceil(64) as usize],
            count: 0,
        }
    }
    pub fn blocks(&self) -> u64 {
        self.words.len() as u64 * 64
    }
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }
    pub fn count(&self) -> u64 {
        self.count
    }
    pub fn get(&self, b: u64) -> bool {
        self.words
            .get((b / 64) as usize)
            .is_some_and(|w| w >> (b % 64) & 1 == 1)
    }
    pub fn set(&mut self, b: u64) {
        if let Some(w) = self.words.get_mut((b / 64) as usize) {
            let m = 1u64 << (b % 64);
            if *w & m == 0 {
                *w |= m;
                self.count += 1;
            }
        }
    }
    pub fn clear(&mut self, b: u64) {
        if let Some(w) = self.words.get_mut((b / 64) as usize) {
            let m = 1u64 << (b % 64);
            if *w & m != 0 {
                *w &= !m;
                self.count -= 1;
            }
        }
    }
    pub fn mark(&mut self, off: u64, len: u64) {
        if len == 0 {
            return;
        }
        for b in off / BITMAP_BLOCK..=(off + len - 1) / BITMAP_BLOCK {
            self.set(b);
        }
    }
    pub fn set_all(&mut self, volume_size: u64) {
        self.mark(0, volume_size);
    }
    /// The first dirty block at or after `from`.
    pub fn next_dirty(&self, from: u64) -> Option<u64> {
        let mut i = (from / 64) as usize;
        let mut w = *self.words.get(i)? & (!0u64 << (from % 64));
        loop {
            if w != 0 {
                return Some(i as u64 * 64 + w.trailing_zeros() as u64);
            }
            i += 1;
            w = *self.words.get(i)?;
        }
    }
    /// The bitmap's words: word i covers activity-log extent i.
    pub fn words(&self) -> &[u64] {
        &self.words
    }
    /// Set every bit of `other` too.
    pub fn union(&mut self, other: &Bitmap) {
        for (a, b) in self.words.iter_mut().zip(&other.words) {
            *a |= b;
        }
        self.count = self.words.iter().map(|w| w.count_ones() as u64).sum();
    }
    pub fn to_bytes(&self) -> Vec<u8> {
        self.words.iter().flat_map(|w| w.to_le_bytes()).collect()
    }
    pub fn from_bytes(b: &[u8], volume_size: u64) -> Option<Bitmap> {
        let mut bm = Bitmap::new(volume_size);
        if b.len() != bm.words.len() * 8 {
            return None;
        }
        for (i, c) in b.chunks_exact(8).enumerate() {
            bm.words[i] = u64::from_le_bytes(c.try_into().unwrap());
        }
        bm.count = bm.words.iter().map(|w| w.count_ones() as u64).sum();
        Some(bm)
    }
}

/// Capture state of a volume protected by a pair.
pub struct Stream {
    pub pair: String,
    pub mode_paused: bool,
    /// Set once the PS told us where the pair's sequence stands.
    pub next_seq: Option<u64>,
    pub buffer: VecDeque<WireRecord>,
    pub buffered: u64,
    pub cap: u64,
    pub bitmap: Bitmap,
    /// Time the bitmap last went from empty to dirty.
    pub dirty_since_us: Option<u64>,
    /// Step I: the next offset to copy (None: not in step I).
    pub step1: Option<u64>,
    /// Step I or II is running (a resync), as opposed to a bitmap drain.
    pub resyncing: bool,
    pub resync_required: bool,
    pub flow_controlled: bool,
    pub fast_matched: u64,
    pub fast_compared: u64,
    pub bytes_captured: u64,
    pub bytes_sent: u64,
    pub resyncs: u64,
    pub error: Option<String>,
    /// Recent events (bounded: [`crate::engine::control::PAIR_EVENTS`]).
    pub events: VecDeque<crate::engine::control::PairEvent>,
    /// The last record pushed left the image inconsistent: once the resync
    /// or drain is over, a marker record makes the end a consistent point.
    pub last_inconsistent: bool,
    last_ts_us: u64,
    /// Fast resync compares against the MT's image once it holds every
    /// record sent before the resync began (this seq).
    pub resync_base: Option<u64>,
    /// Capture `scan`: end-of-pass markers are named `tern:scan-pass`.
    pub scan: bool,
    /// The PS granted this pair a resync slot (`ps.resync_batch`); a
    /// resync without one waits in `ResyncQueued` and copies nothing.
    pub resync_granted: bool,
    /// When the running step I began, and how long the last finished one
    /// took (the figure a fast resync is judged by).
    step1_started: Option<std::time::Instant>,
    pub last_step1: Option<std::time::Duration>,
    /// Seq of the last resync or drain copy pushed: the resync lasts (step
    /// II) until the PS has acknowledged it, so its slot is held, and the
    /// pair shown resyncing, until the data has really left the agent.
    last_copy_seq: u64,
    /// What `PAIR.state` last said of the resync (step I cursor, resyncing,
    /// resync required, resync generation); see [`PersistedState`].
    pub persisted: Option<PersistedState>,
    /// The pair's UUID (set when the pair starts).
    pub uuid: [u8; 16],
}

/// The fields of `PAIR.state` that change while a pair runs. The activity
/// log may drop an extent only while the state on disk says what the
/// stream does (a step I started since would otherwise be forgotten).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PersistedState {
    pub step1: Option<u64>,
    pub resyncing: bool,
    pub resync_required: bool,
    pub resync_gen: u64,
}

impl Stream {
    pub fn new(pair: &str, volume_size: u64, cap: u64) -> Stream {
        Stream {
            pair: pair.to_owned(),
            mode_paused: false,
            next_seq: None,
            buffer: VecDeque::new(),
            buffered: 0,
            cap,
            bitmap: Bitmap::new(volume_size),
            dirty_since_us: None,
            step1: None,
            resyncing: false,
            resync_required: false,
            flow_controlled: false,
            fast_matched: 0,
            fast_compared: 0,
            bytes_captured: 0,
            bytes_sent: 0,
            resyncs: 0,
            error: None,
            events: VecDeque::new(),
            last_inconsistent: false,
            last_ts_us: 0,
            resync_base: None,
            scan: false,
            resync_granted: false,
            step1_started: None,
            last_step1: None,
            last_copy_seq: 0,
            persisted: None,
            uuid: [0; 16],
        }
    }

    /// The resync fields as they are now (for `PAIR.state`).
    pub fn persist_key(&self, resync_gen: u64) -> PersistedState {
        PersistedState {
            step1: self.step1,
            resyncing: self.resyncing,
            resync_required: self.resync_required,
            resync_gen,
        }
    }

    /// Add to `set` the extents of everything not yet safe at the PS:
    /// buffered records (writes and resync copies) and dirty blocks.
    pub fn pending_extents(&self, set: &mut [u64]) {
        for r in &self.buffer {
            match &r.record.body {
                RecordBody::Write { offset, data } => {
                    activity::mark_extents(set, *offset, data.len() as u64)
                }
                RecordBody::Zero { offset, len } => {
                    activity::mark_extents(set, *offset, *len as u64)
                }
                RecordBody::Bookmark { .. } => {}
            }
        }
        for (i, w) in self.bitmap.words().iter().enumerate() {
            if *w != 0
                && let Some(s) = set.get_mut(i / 64)
            {
                *s |= 1 << (i % 64);
            }
        }
    }

    pub fn mode(&self) -> AgentMode {
        if self.mode_paused {
            AgentMode::Paused
        } else if self.resync_required {
            AgentMode::ResyncRequired
        } else if self.next_seq.is_none() {
            AgentMode::Connecting
        } else if self.resyncing && !self.resync_granted {
            AgentMode::ResyncQueued
        } else if self.step1.is_some() {
            AgentMode::ResyncStep1
        } else if self.resyncing {
            AgentMode::ResyncStep2
        } else if !self.bitmap.is_empty() {
            AgentMode::Bitmap
        } else {
            AgentMode::Differential
        }
    }

    /// Room for a record carrying `len` bytes (an empty buffer always takes
    /// one, so a record larger than the cap cannot stall the stream).
    pub fn has_room(&self, len: u64) -> bool {
        self.buffered == 0 || self.buffered + len + 32 <= self.cap
    }

    /// Append a copy of `data`, read from the volume at `off` under the lock.
    pub fn push_copy(&mut self, off: u64, data: Vec<u8>) {
        self.last_copy_seq = self.push(RecordBody::Write {
            offset: off,
            data: bufpool::shared(data),
        });
    }

    /// End the resync once nothing is left to copy and the PS holds every
    /// copy (called after copies and acknowledgements).
    pub fn end_resync_if_done(&mut self) {
        if self.resyncing
            && self.step1.is_none()
            && self.bitmap.is_empty()
            && self
                .buffer
                .front()
                .is_none_or(|r| r.record.seq > self.last_copy_seq)
        {
            self.resyncing = false;
        }
    }

    /// Can records be appended now (a session exists, not paused)?
    fn streaming(&self) -> bool {
        self.next_seq.is_some() && !self.mode_paused && !self.resync_required
    }

    fn consistent_after(&self) -> bool {
        self.bitmap.is_empty() && self.step1.is_none()
    }

    fn mark_dirty(&mut self, off: u64, len: u64) {
        if self.bitmap.is_empty() {
            self.dirty_since_us = Some(now_us());
        }
        self.bitmap.mark(off, len);
    }

    /// Append a record (the caller checked room and `streaming`).
    fn push(&mut self, body: RecordBody) -> u64 {
        let seq = self.next_seq.expect("streaming");
        self.next_seq = Some(seq + 1);
        let inconsistent = !self.consistent_after();
        self.last_inconsistent = inconsistent;
        let ts_us = now_us().max(self.last_ts_us);
        self.last_ts_us = ts_us;
        let r = WireRecord {
            record: Record { seq, ts_us, body },
            inconsistent,
        };
        self.buffered += r.data_len() as u64 + 32;
        self.buffer.push_back(r);
        seq
    }

    /// Put every unacknowledged record back into the bitmap and drop the
    /// buffer (the PS lost the session, or we stop cleanly).
    pub fn spill_buffer_to_bitmap(&mut self) {
        let recs: Vec<WireRecord> = self.buffer.drain(..).collect();
        for r in recs {
            match &r.record.body {
                RecordBody::Write { offset, data } => self.mark_dirty(*offset, data.len() as u64),
                RecordBody::Zero { offset, len } => self.mark_dirty(*offset, *len as u64),
                RecordBody::Bookmark { .. } => {}
            }
        }
        self.buffered = 0;
    }

    /// Source time of the oldest change not yet safe at the PS.
    pub fn oldest_pending_us(&self) -> Option<u64> {
        let b = self.buffer.front().map(|r| r.record.ts_us);
        match (b, self.dirty_since_us.filter(|_| !self.bitmap.is_empty())) {
            (Some(a), Some(c)) => Some(a.min(c)),
            (a, c) => a.or(c),
        }
    }

    /// If a resync or drain just ended with an inconsistent record, append
    /// a marker so the present becomes a consistent point even when the
    /// source is idle. Returns whether one was added.
    pub fn mark_consistent_if_due(&mut self) -> bool {
        if self.last_inconsistent
            && self.consistent_after()
            && self.streaming()
            && self.buffered + 64 <= self.cap
        {
            let name = if self.scan {
                "tern:scan-pass"
            } else {
                "tern:consistent"
            };
            self.push(RecordBody::Bookmark {
                kind: BookmarkKind::User,
                name: name.into(),
            });
            return true;
        }
        false
    }

    /// Start a full resync: step I over the whole volume.
    pub fn start_resync(&mut self) {
        self.step1 = Some(0);
        self.resync_base = self.next_seq.map(|n| n - 1);
        self.resyncing = true;
        self.last_inconsistent = true;
        self.resync_required = false;
        self.fast_matched = 0;
        self.fast_compared = 0;
        self.resyncs += 1;
        self.step1_started = Some(std::time::Instant::now());
    }

    /// Step I goes on from a cursor saved before a restart.
    pub fn resume_step1(&mut self) {
        self.resyncing = true;
        self.last_inconsistent = true;
        self.step1_started = Some(std::time::Instant::now());
    }

    /// Step I has copied (or matched) everything before `next`.
    pub fn advance_step1(&mut self, next: u64, volume_size: u64) {
        self.step1 = (next < volume_size).then_some(next);
        if self.step1.is_none() {
            self.last_step1 = self.step1_started.take().map(|t| t.elapsed());
            self.end_resync_if_done();
        }
    }
}

/// A protected volume: its backing file and, once a pair protects it, the stream.
pub struct Volume {
    pub name: String,
    pub path: PathBuf,
    pub size: u64,
    file: File,
    pub stream: Mutex<Option<Stream>>,
    /// Extents that may hold writes the replica lacks, durable before a
    /// write is acknowledged. Lock order: `stream`, then `activity`.
    pub activity: Mutex<ActivityLog>,
    /// Set (under the stream lock) by a clean stop: from then on writes are
    /// refused, so none can reach the volume without being captured.
    pub closed: std::sync::atomic::AtomicBool,
    /// Wakes the resync driver: the sender freed buffer space.
    pub room: Arc<tokio::sync::Notify>,
    /// Wakes the async sender.
    pub notify: Arc<tokio::sync::Notify>,
}

impl Volume {
    /// Open (or create with `create_size`) the backing file or device, and
    /// its activity log at `activity_path`.
    pub fn open(
        name: &str,
        path: &Path,
        create_size: Option<u64>,
        activity_path: &Path,
    ) -> io::Result<Volume> {
        if !path.exists() {
            let Some(sz) = create_size else {
                return Err(io::Error::new(
                    io::ErrorKind::NotFound,
                    format!(
                        "volume {name}: {} does not exist (give a size to create it)",
                        path.display()
                    ),
                ));
            };
            if sz > crate::engine::control::MAX_VOLUME_SIZE {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("volume {name}: {sz} bytes is more than the 256 TiB a volume may be"),
                ));
            }
            if let Some(d) = path.parent() {
                std::fs::create_dir_all(d)?;
            }
            let f = File::create(path)?;
            f.set_len(sz)?;
        }
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)?;
        use std::io::{Seek, SeekFrom};
        let size = (&file).seek(SeekFrom::End(0))?;
        let max = crate::engine::control::MAX_VOLUME_SIZE;
        if size == 0 || size % 512 != 0 || size > max {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "volume {name}: {} is {size} bytes; a volume is a positive multiple of 512 bytes, at most {}",
                    path.display(),
                    crate::util::human_bytes(max)
                ),
            ));
        }
        let activity = ActivityLog::open(activity_path, size)?;
        Ok(Volume {
            name: name.to_owned(),
            path: path.to_owned(),
            size,
            file,
            stream: Mutex::new(None),
            activity: Mutex::new(activity),
            closed: Default::default(),
            room: Arc::new(tokio::sync::Notify::new()),
            notify: Arc::new(tokio::sync::Notify::new()),
        })
    }

    fn check(&self, off: u64, len: u64) -> io::Result<()> {
        if off.checked_add(len).is_none_or(|e| e > self.size) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "request past the end of the volume",
            ));
        }
        Ok(())
    }

    pub fn read(&self, off: u64, buf: &mut [u8]) -> io::Result<()> {
        self.check(off, buf.len() as u64)?;
        self.file.read_exact_at(buf, off)
    }

    /// Write and capture. `zero`: the range becomes zeroes (data ignored).
    pub fn write(&self, off: u64, data: Vec<u8>) -> io::Result<()> {
        self.check(off, data.len() as u64)?;
        // Back to the pool when the last record holding it is acknowledged
        // (or at once, if the write is only marked dirty).
        let data = bufpool::shared(data);
        let mut g = self.stream.lock().unwrap();
        if self.closed.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(io::Error::other("the agent is stopping; write refused"));
        }
        // Logged before it is written, so before it is acknowledged.
        self.activity.lock().unwrap().note(off, data.len() as u64)?;
        self.file.write_all_at(&data, off)?;
        if let Some(st) = g.as_mut() {
            st.bytes_captured += data.len() as u64;
            let len = data.len() as u64;
            let ahead_of_step1 = st.step1.is_some_and(|c| off >= c);
            if ahead_of_step1 {
                // Step I has not reached it: the copy will carry it.
            } else if st.step1.is_some() {
                st.mark_dirty(off, len);
            } else if st.streaming() && st.bitmap.is_empty() && st.buffered + len + 32 <= st.cap {
                st.push(RecordBody::Write { offset: off, data });
                drop(g);
                self.notify.notify_one();
                return Ok(());
            } else {
                st.mark_dirty(off, len);
            }
            drop(g);
            self.notify.notify_one();
        }
        Ok(())
    }

    pub fn write_zeroes(&self, off: u64, len: u64) -> io::Result<()> {
        self.check(off, len)?;
        let mut g = self.stream.lock().unwrap();
        if self.closed.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(io::Error::other("the agent is stopping; write refused"));
        }
        self.activity.lock().unwrap().note(off, len)?;
        // Zero the backing range (punching a hole where possible).
        zero_range(&self.file, off, len)?;
        if let Some(st) = g.as_mut() {
            let ahead = st.step1.is_some_and(|c| off >= c);
            if ahead {
            } else if st.step1.is_none()
                && st.streaming()
                && st.bitmap.is_empty()
                && st.buffered + 32 * (len / MAX_ZERO + 1) <= st.cap
            {
                // A record covers at most what the journal takes in one.
                let mut done = 0;
                while done < len {
                    let n = (len - done).min(MAX_ZERO);
                    st.push(RecordBody::Zero {
                        offset: off + done,
                        len: n as u32,
                    });
                    done += n;
                }
            } else {
                st.mark_dirty(off, len);
            }
            drop(g);
            self.notify.notify_one();
        }
        Ok(())
    }

    pub fn flush(&self) -> io::Result<()> {
        self.file.sync_data()
    }

    /// Insert a bookmark at exactly this point of the stream.
    pub fn bookmark(&self, kind: BookmarkKind, name: &str) -> Result<u64, String> {
        let max = crate::engine::journal::format::MAX_BOOKMARK_NAME;
        if name.is_empty() || name.len() > max {
            return Err(format!(
                "a bookmark name is 1 to {max} bytes; `{name}` is {}",
                name.len()
            ));
        }
        // A bookmark is only worth taking at a consistent point: while a
        // bitmap drain or step II runs, wait for it (bounded) instead of
        // inserting a point the MT would never offer.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        loop {
            let mut g = self.stream.lock().unwrap();
            let Some(st) = g.as_mut() else {
                return Err("the volume is not protected by a pair".into());
            };
            let mode = serde_json::to_value(st.mode())
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default();
            // Connecting (just started, or the PS is away a moment): a user
            // bookmark waits for the session like for a consistent point,
            // bounded. An fs or app one does not: its filesystem is frozen
            // (its application quiesced) while it waits.
            let connecting = st.mode() == crate::engine::control::AgentMode::Connecting
                && kind == BookmarkKind::User;
            let may_wait = connecting && std::time::Instant::now() < deadline;
            if !st.streaming() && !may_wait {
                return Err(format!(
                    "the pair is {mode} (no session with the PS); try again when it is replicating"
                ));
            }
            if st.streaming() && st.consistent_after() && st.buffered + 256 <= st.cap {
                let seq = st.push(RecordBody::Bookmark {
                    kind,
                    name: name.to_owned(),
                });
                drop(g);
                self.notify.notify_one();
                return Ok(seq);
            }
            drop(g);
            if std::time::Instant::now() > deadline {
                return Err(format!(
                    "the pair stayed in {mode} for 60 s (writes outpace the link); no consistent point to bookmark: try again when it is in differential sync"
                ));
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
}

fn zero_range(f: &File, off: u64, len: u64) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: fallocate on an open descriptor; failure falls back to writes.
    let r = unsafe {
        libc::fallocate(
            f.as_raw_fd(),
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            off as libc::off_t,
            len as libc::off_t,
        )
    };
    if r == 0 {
        return Ok(());
    }
    let z = vec![0u8; len.min(1 << 20) as usize];
    let mut done = 0;
    while done < len {
        let n = (len - done).min(z.len() as u64) as usize;
        f.write_all_at(&z[..n], off + done)?;
        done += n as u64;
    }
    Ok(())
}

/// One resync step under the lock: copy the next step-I block or the next
/// dirty run. Returns what happened.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// A region went into the stream (or was skipped by fast resync).
    Progress,
    /// No room in the buffer: wait for the sender.
    Full,
    /// Nothing left to copy.
    Done,
}

/// Drain the bitmap: copy the next run of dirty blocks (≤ RESYNC_BLOCK).
pub fn drain_step(vol: &Volume, st: &mut Stream) -> io::Result<Step> {
    let Some(first) = st.bitmap.next_dirty(0) else {
        return Ok(Step::Done);
    };
    let mut last = first;
    while (last + 1 - first) * BITMAP_BLOCK < RESYNC_BLOCK && st.bitmap.get(last + 1) {
        last += 1;
    }
    let off = first * BITMAP_BLOCK;
    let end = ((last + 1) * BITMAP_BLOCK).min(vol.size);
    if off < vol.size && !st.has_room(end - off) {
        return Ok(Step::Full);
    }
    // Clear first: the copy's flag says whether the image after it is consistent.
    for b in first..=last {
        st.bitmap.clear(b);
    }
    if off < vol.size {
        let mut data = bufpool::take((end - off) as usize);
        data.resize((end - off) as usize, 0);
        vol.read(off, &mut data)?;
        st.push_copy(off, data);
    }
    // After the last dirty block, step II (or a bitmap drain) ends once
    // the PS has this copy.
    st.end_resync_if_done();
    Ok(Step::Progress)
}
