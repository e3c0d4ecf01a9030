//! The I/O the journal does, behind a trait, so tests can crash it.
//!
//! [`FsStorage`] is the real thing (positional reads and writes, `fdatasync`).
//! [`SimStorage`] keeps files in memory and models a disk with a volatile
//! cache: writes are visible at once but only durable after `sync`; a
//! simulated crash keeps the durable bytes plus a random prefix of the
//! unsynced writes (the last one possibly torn), and it can fail an fsync on
//! demand. The crash tests run the engine against it thousands of times.

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
    /// Make every completed write durable.
    fn sync(&self) -> io::Result<()>;
    fn len(&self) -> io::Result<u64>;
    fn set_len(&self, len: u64) -> io::Result<()>;
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
}

/// Real files.
pub struct FsStorage;

struct FsFile(File);

impl BlockFile for FsFile {
    fn read_at(&self, buf: &mut [u8], off: u64) -> io::Result<()> {
        self.0.read_exact_at(buf, off)
    }
    fn write_at(&self, buf: &[u8], off: u64) -> io::Result<()> {
        self.0.write_all_at(buf, off)
    }
    fn sync(&self) -> io::Result<()> {
        self.0.sync_data()
    }
    fn len(&self) -> io::Result<u64> {
        // Works for block devices too (metadata().len() is 0 for them).
        use std::io::{Seek, SeekFrom};
        let mut f = &self.0;
        f.seek(SeekFrom::End(0))
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.0.set_len(len)
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
        Ok(Arc::new(FsFile(f)))
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

    /// What a disk would hold after power loss now: for each file, its durable
    /// bytes plus a prefix of its unsynced writes, the last one possibly torn.
    /// `rand` picks the prefix lengths. Returns a fresh storage (the old one
    /// should be dropped with everything that holds it).
    pub fn crash(&self, mut rand: impl FnMut(u64) -> u64) -> SimStorage {
        let inner = self.inner.lock().unwrap();
        let mut files = BTreeMap::new();
        for (p, f) in &inner.files {
            let f = f.lock().unwrap();
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
                })),
            );
        }
        SimStorage {
            inner: Arc::new(Mutex::new(SimInner {
                files,
                dirs: inner.dirs.clone(),
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
        let p = Pending::SetLen(len);
        apply(&mut s.visible, &p);
        s.pending.push(p);
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
        self.inner
            .lock()
            .unwrap()
            .files
            .remove(path)
            .map(|_| ())
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no such file"))
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
        inner.sync_point()?;
        inner.files.insert(
            path.to_owned(),
            Arc::new(Mutex::new(SimFileState {
                durable: bytes.to_vec(),
                visible: bytes.to_vec(),
                pending: Vec::new(),
            })),
        );
        Ok(())
    }
    fn sync_dir(&self, _dir: &Path) -> io::Result<()> {
        Ok(())
    }
}
