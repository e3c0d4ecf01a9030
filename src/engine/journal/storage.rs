//! The I/O the journal does, behind a trait, so tests can crash it.
//!
//! [`FsStorage`] is the real thing (positional reads and writes, `fdatasync`).
//! [`SimStorage`] keeps files in memory and models a disk with a volatile
//! cache: writes are visible at once but only durable after `sync`; a
//! simulated crash keeps the durable bytes plus a random prefix of the
//! unsynced writes (the last one possibly torn), and it can fail an fsync on
//! demand. The crash tests run the engine against it thousands of times.
//! It can also be given a capacity: writes that need blocks past it fail
//! with `ENOSPC`, as a full filesystem does, so the full-disk paths are
//! tested the same way.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// One open file.
#[allow(clippy::len_without_is_empty)]
pub trait BlockFile: Send + Sync {
    /// Fill `buf` from `off`; reading past the end is an error.
    fn read_at(&self, buf: &mut [u8], off: u64) -> io::Result<()>;
    fn write_at(&self, buf: &[u8], off: u64) -> io::Result<()>;
    /// [`BlockFile::write_at`] bypassing the page cache where the file
    /// allows it (`O_DIRECT`): `buf`'s address, its length and `off` are
    /// multiples of [`DIRECT_ALIGN`]. Falls back to `write_at` otherwise.
    fn write_direct(&self, buf: &[u8], off: u64) -> io::Result<()> {
        self.write_at(buf, off)
    }
    /// No more direct writes will come (a sealed segment): let go of what
    /// they needed.
    fn end_direct(&self) {}
    /// Make every completed write durable.
    fn sync(&self) -> io::Result<()>;
    fn len(&self) -> io::Result<u64>;
    fn set_len(&self, len: u64) -> io::Result<()>;
    /// Make the file at least `len` bytes long with every block allocated,
    /// so later writes below `len` never need new space (a no-op for block
    /// devices, which are allocated by nature).
    fn allocate(&self, len: u64) -> io::Result<()>;
}

/// Free and total bytes of the filesystem holding a path (`statvfs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Space {
    /// Bytes an unprivileged writer may still allocate (`f_bavail`).
    pub avail: u64,
    pub total: u64,
}

/// Is this the filesystem saying it is full (`ENOSPC`, or a quota's `EDQUOT`)?
pub fn is_no_space(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT))
}

/// A directory of files.
pub trait Storage: Send + Sync {
    fn open(&self, path: &Path, create: bool) -> io::Result<Arc<dyn BlockFile>>;
    fn exists(&self, path: &Path) -> bool;
    fn remove(&self, path: &Path) -> io::Result<()>;
    /// File names (not paths) in `dir`.
    fn list(&self, dir: &Path) -> io::Result<Vec<String>>;
    fn create_dir_all(&self, dir: &Path) -> io::Result<()>;
    /// Replace `path` with `bytes` atomically and durably.
    fn write_atomic(&self, path: &Path, bytes: &[u8]) -> io::Result<()>;
    /// Make creations and removals in `dir` durable.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
    /// Space on the filesystem holding `dir`.
    fn space(&self, dir: &Path) -> io::Result<Space>;
}

/// Alignment of [`BlockFile::write_direct`]'s buffer, length and offset.
pub const DIRECT_ALIGN: usize = 4096;

/// Real files.
pub struct FsStorage;

struct FsFile {
    f: File,
    /// A second descriptor on the same file (reopened through
    /// `/proc/self/fd`, so a rename or replacement of the path cannot
    /// redirect it), opened `O_DIRECT` on first use; `None` once the
    /// filesystem refused it (tmpfs, some FUSE): writes go buffered then.
    direct: Mutex<Option<File>>,
    direct_refused: std::sync::atomic::AtomicBool,
}

impl FsFile {
    fn refused(&self) -> bool {
        self.direct_refused
            .load(std::sync::atomic::Ordering::Relaxed)
    }
    fn refuse(&self) {
        self.direct_refused
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

impl BlockFile for FsFile {
    fn read_at(&self, buf: &mut [u8], off: u64) -> io::Result<()> {
        self.f.read_exact_at(buf, off)
    }
    fn write_at(&self, buf: &[u8], off: u64) -> io::Result<()> {
        self.f.write_all_at(buf, off)
    }
    fn write_direct(&self, buf: &[u8], off: u64) -> io::Result<()> {
        let aligned = (buf.as_ptr() as usize).is_multiple_of(DIRECT_ALIGN)
            && buf.len().is_multiple_of(DIRECT_ALIGN)
            && off.is_multiple_of(DIRECT_ALIGN as u64);
        if !aligned || self.refused() {
            return self.f.write_all_at(buf, off);
        }
        let mut g = self.direct.lock().unwrap();
        if g.is_none() {
            use std::os::fd::AsRawFd;
            use std::os::unix::fs::OpenOptionsExt;
            *g = OpenOptions::new()
                .write(true)
                .custom_flags(libc::O_DIRECT)
                .open(format!("/proc/self/fd/{}", self.f.as_raw_fd()))
                .ok();
        }
        let Some(d) = g.as_ref() else {
            self.refuse();
            return self.f.write_all_at(buf, off);
        };
        match d.write_all_at(buf, off) {
            // The filesystem takes O_DIRECT opens but not the writes.
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                self.refuse();
                self.f.write_all_at(buf, off)
            }
            r => r,
        }
    }
    fn end_direct(&self) {
        self.direct.lock().unwrap().take();
    }
    fn sync(&self) -> io::Result<()> {
        self.f.sync_data()
    }
    fn len(&self) -> io::Result<u64> {
        // Works for block devices too (metadata().len() is 0 for them).
        use std::io::{Seek, SeekFrom};
        let mut f = &self.f;
        f.seek(SeekFrom::End(0))
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.f.set_len(len)
    }
    fn allocate(&self, len: u64) -> io::Result<()> {
        use std::os::fd::AsRawFd;
        if !self.f.metadata()?.file_type().is_file() {
            return Ok(());
        }
        let len = i64::try_from(len).map_err(|_| io::Error::other("length too large"))?;
        // SAFETY: fallocate on a valid open descriptor; mode 0 allocates
        // (and extends) without touching the bytes already there.
        let r = unsafe { libc::fallocate(self.f.as_raw_fd(), 0, 0, len) };
        if r != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

impl Storage for FsStorage {
    fn open(&self, path: &Path, create: bool) -> io::Result<Arc<dyn BlockFile>> {
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(create)
            .truncate(false)
            .open(path)?;
        Ok(Arc::new(FsFile {
            f,
            direct: Default::default(),
            direct_refused: Default::default(),
        }))
    }
    fn exists(&self, path: &Path) -> bool {
        path.exists()
    }
    fn remove(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_file(path)
    }
    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let mut v = Vec::new();
        for e in std::fs::read_dir(dir)? {
            if let Some(n) = e?.file_name().to_str() {
                v.push(n.to_owned());
            }
        }
        Ok(v)
    }
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        std::fs::create_dir_all(dir)
    }
    fn write_atomic(&self, path: &Path, bytes: &[u8]) -> io::Result<()> {
        crate::engine::fsutil::write_durable(path, bytes, 0o644)
    }
    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        File::open(dir)?.sync_all()
    }
    fn space(&self, dir: &Path) -> io::Result<Space> {
        use std::os::unix::ffi::OsStrExt;
        let c = std::ffi::CString::new(dir.as_os_str().as_bytes())
            .map_err(|_| io::Error::other("path holds a NUL byte"))?;
        // SAFETY: statvfs fills the zeroed struct we pass; `c` is a valid C string.
        let mut v: libc::statvfs = unsafe { std::mem::zeroed() };
        if unsafe { libc::statvfs(c.as_ptr(), &mut v) } != 0 {
            return Err(io::Error::last_os_error());
        }
        let f = v.f_frsize as u64;
        Ok(Space {
            avail: v.f_bavail as u64 * f,
            total: v.f_blocks as u64 * f,
        })
    }
}

// ---------------------------------------------------------------------------
// Simulated storage for crash tests.

#[derive(Default)]
struct SimFileState {
    durable: Vec<u8>,
    /// Writes since the last sync, in order: (offset, bytes) or a truncation.
    pending: Vec<Pending>,
    /// The file as readers see it (durable + pending).
    visible: Vec<u8>,
    /// 4 KiB blocks holding data (written or allocated), for the capacity model.
    blocks: std::collections::BTreeSet<u64>,
}

const SIM_BLOCK: u64 = 4096;

fn blocks_of(off: u64, len: u64) -> std::ops::Range<u64> {
    if len == 0 {
        return 0..0;
    }
    off / SIM_BLOCK..(off + len).div_ceil(SIM_BLOCK)
}

#[derive(Clone)]
enum Pending {
    Write(u64, Vec<u8>),
    SetLen(u64),
}

fn apply(buf: &mut Vec<u8>, p: &Pending) {
    match p {
        Pending::Write(off, data) => {
            let end = *off as usize + data.len();
            if buf.len() < end {
                buf.resize(end, 0);
            }
            buf[*off as usize..end].copy_from_slice(data);
        }
        Pending::SetLen(n) => buf.resize(*n as usize, 0),
    }
}

#[derive(Default)]
struct SimInner {
    files: BTreeMap<PathBuf, Arc<Mutex<SimFileState>>>,
    dirs: std::collections::BTreeSet<PathBuf>,
    /// Fail the n-th sync from now (0 = the next one).
    fail_sync_in: Option<u64>,
    /// Once a sync failed, every later sync fails too (as on Linux after EIO).
    poisoned: bool,
    /// Capacity in bytes (None: unbounded) and blocks in use.
    capacity: Option<u64>,
    used_blocks: u64,
}

impl SimInner {
    /// Every durability point (fsync, atomic replace) goes through here: it
    /// fails on demand, and once failed keeps failing, as Linux does after EIO.
    fn sync_point(&mut self) -> io::Result<()> {
        if self.poisoned {
            return Err(io::Error::other(
                "simulated fsync failure (device poisoned)",
            ));
        }
        match self.fail_sync_in {
            Some(0) => {
                self.poisoned = true;
                self.fail_sync_in = None;
                Err(io::Error::other("simulated fsync failure"))
            }
            Some(n) => {
                self.fail_sync_in = Some(n - 1);
                Ok(())
            }
            None => Ok(()),
        }
    }

    /// Take `n` more blocks, or fail as a full filesystem does.
    fn charge(&mut self, n: u64) -> io::Result<()> {
        if let Some(cap) = self.capacity
            && (self.used_blocks + n) * SIM_BLOCK > cap
        {
            return Err(enospc());
        }
        self.used_blocks += n;
        Ok(())
    }
}

fn enospc() -> io::Error {
    io::Error::from_raw_os_error(libc::ENOSPC)
}

/// In-memory files with a volatile write cache; see the module docs.
#[derive(Clone, Default)]
pub struct SimStorage {
    inner: Arc<Mutex<SimInner>>,
}

struct SimFile {
    state: Arc<Mutex<SimFileState>>,
    storage: SimStorage,
}

impl SimStorage {
    pub fn new() -> SimStorage {
        SimStorage::default()
    }

    /// Make the n-th sync from now fail (0 = the next).
    pub fn fail_sync_after(&self, n: u64) {
        self.inner.lock().unwrap().fail_sync_in = Some(n);
    }

    /// Bound the bytes all files may hold (None: unbounded); a write that
    /// needs blocks past it fails with `ENOSPC`.
    pub fn set_capacity(&self, bytes: Option<u64>) {
        self.inner.lock().unwrap().capacity = bytes;
    }

    /// Bytes in use (4 KiB blocks holding data).
    pub fn used_bytes(&self) -> u64 {
        self.inner.lock().unwrap().used_blocks * SIM_BLOCK
    }

    /// What a disk would hold after power loss now: for each file, its durable
    /// bytes plus a prefix of its unsynced writes, the last one possibly torn.
    /// `rand` picks the prefix lengths. Returns a fresh storage (the old one
    /// should be dropped with everything that holds it).
    pub fn crash(&self, mut rand: impl FnMut(u64) -> u64) -> SimStorage {
        let inner = self.inner.lock().unwrap();
        let mut files = BTreeMap::new();
        let mut used_blocks = 0;
        for (p, f) in &inner.files {
            let f = f.lock().unwrap();
            // Allocation survives a crash as the filesystem journaled it: keep
            // the blocks, which can only over-count what the disk holds.
            used_blocks += f.blocks.len() as u64;
            let mut disk = f.durable.clone();
            let keep = rand(f.pending.len() as u64 + 1) as usize;
            for (i, w) in f.pending.iter().take(keep).enumerate() {
                if i + 1 == keep
                    && let Pending::Write(off, data) = w
                    && !data.is_empty()
                {
                    // The last surviving write may be torn at a 512-byte boundary.
                    let sectors = data.len().div_ceil(512) as u64;
                    let cut = (rand(sectors + 1) as usize * 512).min(data.len());
                    apply(&mut disk, &Pending::Write(*off, data[..cut].to_vec()));
                    continue;
                }
                apply(&mut disk, w);
            }
            files.insert(
                p.clone(),
                Arc::new(Mutex::new(SimFileState {
                    visible: disk.clone(),
                    durable: disk,
                    pending: Vec::new(),
                    blocks: f.blocks.clone(),
                })),
            );
        }
        SimStorage {
            inner: Arc::new(Mutex::new(SimInner {
                files,
                dirs: inner.dirs.clone(),
                capacity: inner.capacity,
                used_blocks,
                ..Default::default()
            })),
        }
    }
}

impl BlockFile for SimFile {
    fn read_at(&self, buf: &mut [u8], off: u64) -> io::Result<()> {
        let s = self.state.lock().unwrap();
        let end = off as usize + buf.len();
        if end > s.visible.len() {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "read past end",
            ));
        }
        buf.copy_from_slice(&s.visible[off as usize..end]);
        Ok(())
    }
    fn write_at(&self, buf: &[u8], off: u64) -> io::Result<()> {
        let mut s = self.state.lock().unwrap();
        let new: Vec<u64> = blocks_of(off, buf.len() as u64)
            .filter(|b| !s.blocks.contains(b))
            .collect();
        if !new.is_empty() {
            let mut st = self.storage.inner.lock().unwrap();
            if st.charge(new.len() as u64).is_err() {
                // A full filesystem writes what fits: the blocks it already
                // holds, in order, up to the first that needs new space.
                let fit = ((new[0] * SIM_BLOCK).saturating_sub(off) as usize).min(buf.len());
                if fit > 0 {
                    let p = Pending::Write(off, buf[..fit].to_vec());
                    apply(&mut s.visible, &p);
                    s.pending.push(p);
                }
                return Err(enospc());
            }
            s.blocks.extend(new);
        }
        let p = Pending::Write(off, buf.to_vec());
        apply(&mut s.visible, &p);
        s.pending.push(p);
        Ok(())
    }
    fn sync(&self) -> io::Result<()> {
        {
            let mut st = self.storage.inner.lock().unwrap();
            st.sync_point()?;
        }
        let mut s = self.state.lock().unwrap();
        let pending = std::mem::take(&mut s.pending);
        for p in &pending {
            apply(&mut s.durable, p);
        }
        Ok(())
    }
    fn len(&self) -> io::Result<u64> {
        Ok(self.state.lock().unwrap().visible.len() as u64)
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        let mut s = self.state.lock().unwrap();
        // Growing makes a hole (no blocks); shrinking frees the blocks past the end.
        let gone: Vec<u64> = s.blocks.range(len.div_ceil(SIM_BLOCK)..).copied().collect();
        for b in &gone {
            s.blocks.remove(b);
        }
        self.storage.inner.lock().unwrap().used_blocks -= gone.len() as u64;
        let p = Pending::SetLen(len);
        apply(&mut s.visible, &p);
        s.pending.push(p);
        Ok(())
    }
    fn allocate(&self, len: u64) -> io::Result<()> {
        let mut s = self.state.lock().unwrap();
        let new: Vec<u64> = blocks_of(0, len)
            .filter(|b| !s.blocks.contains(b))
            .collect();
        self.storage
            .inner
            .lock()
            .unwrap()
            .charge(new.len() as u64)?;
        s.blocks.extend(new);
        if (s.visible.len() as u64) < len {
            let p = Pending::SetLen(len);
            apply(&mut s.visible, &p);
            s.pending.push(p);
        }
        Ok(())
    }
}

impl Storage for SimStorage {
    fn open(&self, path: &Path, create: bool) -> io::Result<Arc<dyn BlockFile>> {
        let mut inner = self.inner.lock().unwrap();
        let state = match inner.files.get(path) {
            Some(s) => s.clone(),
            None if create => {
                // Simplification: creation is durable at once (we always sync_dir after).
                let s = Arc::new(Mutex::new(SimFileState::default()));
                inner.files.insert(path.to_owned(), s.clone());
                s
            }
            None => {
                return Err(io::Error::new(
                    io::ErrorKind::NotFound,
                    format!("{}: no such file", path.display()),
                ));
            }
        };
        Ok(Arc::new(SimFile {
            state,
            storage: self.clone(),
        }))
    }
    fn exists(&self, path: &Path) -> bool {
        let i = self.inner.lock().unwrap();
        i.files.contains_key(path) || i.dirs.contains(path)
    }
    fn remove(&self, path: &Path) -> io::Result<()> {
        let mut i = self.inner.lock().unwrap();
        let f = i
            .files
            .remove(path)
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no such file"))?;
        i.used_blocks -= f.lock().unwrap().blocks.len() as u64;
        Ok(())
    }
    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let i = self.inner.lock().unwrap();
        Ok(i.files
            .keys()
            .filter(|p| p.parent() == Some(dir))
            .filter_map(|p| p.file_name().and_then(|n| n.to_str()).map(str::to_owned))
            .collect())
    }
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        self.inner.lock().unwrap().dirs.insert(dir.to_owned());
        Ok(())
    }
    fn write_atomic(&self, path: &Path, bytes: &[u8]) -> io::Result<()> {
        let mut inner = self.inner.lock().unwrap();
        // The new copy is written beside the old before it replaces it.
        let blocks: std::collections::BTreeSet<u64> = blocks_of(0, bytes.len() as u64).collect();
        inner.charge(blocks.len() as u64)?;
        if let Err(e) = inner.sync_point() {
            inner.used_blocks -= blocks.len() as u64;
            return Err(e);
        }
        let old = inner.files.insert(
            path.to_owned(),
            Arc::new(Mutex::new(SimFileState {
                durable: bytes.to_vec(),
                visible: bytes.to_vec(),
                pending: Vec::new(),
                blocks,
            })),
        );
        if let Some(o) = old {
            inner.used_blocks -= o.lock().unwrap().blocks.len() as u64;
        }
        Ok(())
    }
    fn sync_dir(&self, _dir: &Path) -> io::Result<()> {
        Ok(())
    }
    fn space(&self, _dir: &Path) -> io::Result<Space> {
        let i = self.inner.lock().unwrap();
        let used = i.used_blocks * SIM_BLOCK;
        let total = i.capacity.unwrap_or(1 << 50);
        Ok(Space {
            avail: total.saturating_sub(used),
            total,
        })
    }
}
