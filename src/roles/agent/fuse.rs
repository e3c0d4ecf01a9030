//! FUSE capture: the volume appears as the one file `MOUNT/NAME`. Attached
//! to a loop device it carries a real filesystem (mkfs, mount, fsfreeze);
//! every write reaching the file goes through [`Volume::write`] and is
//! captured before it is acknowledged.
//!
//! The file is opened in direct-I/O mode, so the kernel's page cache never
//! holds writes back from us: what the loop device writes, we see at once.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, INodeNo, LockOwner, MountOption,
    OpenFlags, ReplyAttr, ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyWrite,
    Request, WriteFlags,
};

use super::stream::Volume;
use crate::engine::shutdown::Shutdown;

const TTL: Duration = Duration::from_secs(1);
const FILE_INO: u64 = 2;

struct VolumeFs {
    vol: Arc<Volume>,
    started: SystemTime,
}

impl VolumeFs {
    fn attr(&self, ino: u64) -> FileAttr {
        let dir = ino == 1;
        FileAttr {
            ino: INodeNo(ino),
            size: if dir { 0 } else { self.vol.size },
            blocks: if dir { 0 } else { self.vol.size / 512 },
            atime: self.started,
            mtime: self.started,
            ctime: self.started,
            crtime: self.started,
            kind: if dir {
                FileType::Directory
            } else {
                FileType::RegularFile
            },
            perm: if dir { 0o755 } else { 0o600 },
            nlink: if dir { 2 } else { 1 },
            uid: 0,
            gid: 0,
            rdev: 0,
            flags: 0,
            blksize: 4096,
        }
    }
}

fn errno(e: &std::io::Error) -> Errno {
    match e.kind() {
        std::io::ErrorKind::InvalidInput => Errno::EINVAL,
        _ => Errno::EIO,
    }
}

impl Filesystem for VolumeFs {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        if u64::from(parent) == 1 && name.to_str() == Some(self.vol.name.as_str()) {
            reply.entry(&TTL, &self.attr(FILE_INO), fuser::Generation(0));
        } else {
            reply.error(Errno::ENOENT);
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match u64::from(ino) {
            1 | FILE_INO => reply.attr(&TTL, &self.attr(u64::from(ino))),
            _ => reply.error(Errno::ENOENT),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        _mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<fuser::TimeOrNow>,
        _mtime: Option<fuser::TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        // A volume has a fixed size; everything else is accepted and ignored.
        if size.is_some_and(|s| s != self.vol.size) {
            reply.error(Errno::EPERM);
            return;
        }
        reply.attr(&TTL, &self.attr(u64::from(ino)));
    }

    fn open(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        if u64::from(ino) != FILE_INO {
            reply.error(Errno::EISDIR);
            return;
        }
        reply.opened(FileHandle(0), FopenFlags::FOPEN_DIRECT_IO);
    }

    #[allow(clippy::too_many_arguments)]
    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let end = (offset + size as u64).min(self.vol.size);
        if offset >= end {
            reply.data(&[]);
            return;
        }
        let mut buf = vec![0u8; (end - offset) as usize];
        match self.vol.read(offset, &mut buf) {
            Ok(()) => reply.data(&buf),
            Err(e) => reply.error(errno(&e)),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        if offset + data.len() as u64 > self.vol.size {
            reply.error(Errno::ENOSPC);
            return;
        }
        match self.vol.write(offset, data.to_vec()) {
            Ok(()) => reply.written(data.len() as u32),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        match self.vol.flush() {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn fallocate(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        // Punch hole / zero range (loop devices send these for discard).
        if mode & (libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_ZERO_RANGE) != 0 {
            let end = (offset + length).min(self.vol.size);
            if offset < end
                && let Err(e) = self.vol.write_zeroes(offset, end - offset)
            {
                reply.error(errno(&e));
                return;
            }
            reply.ok();
        } else if mode == 0 && offset + length <= self.vol.size {
            reply.ok();
        } else {
            reply.error(Errno::EOPNOTSUPP);
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        if u64::from(ino) != 1 {
            reply.error(Errno::ENOTDIR);
            return;
        }
        let entries = [
            (1u64, FileType::Directory, "."),
            (1, FileType::Directory, ".."),
            (FILE_INO, FileType::RegularFile, self.vol.name.as_str()),
        ];
        for (i, (ino, kind, name)) in entries.into_iter().enumerate().skip(offset as usize) {
            if reply.add(INodeNo(ino), (i + 1) as u64, kind, name) {
                break;
            }
        }
        reply.ok();
    }
}

/// Mount `vol` at `mount` until either shutdown fires; returns the file's path.
pub fn mount(
    vol: Arc<Volume>,
    mount: &Path,
    mut own: Shutdown,
    mut all: Shutdown,
) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(mount)?;
    let mut cfg = fuser::Config::default();
    cfg.mount_options = vec![
        MountOption::FSName(format!("tern-{}", vol.name)),
        MountOption::Subtype("tern".into()),
        MountOption::CUSTOM("allow_other".into()),
    ];
    cfg.n_threads = Some(2);
    let file = mount.join(&vol.name);
    let fs = VolumeFs {
        vol: vol.clone(),
        started: SystemTime::now().max(UNIX_EPOCH),
    };
    let session = fuser::spawn_mount(fs, mount, &cfg).map_err(|e| {
        anyhow::anyhow!(
            "volume {}: cannot mount FUSE at {}: {e} (is /dev/fuse available? is the directory already a mount point?)",
            vol.name,
            mount.display()
        )
    })?;
    let m = mount.to_owned();
    tokio::spawn(async move {
        tokio::select! {
            _ = own.wait() => {}
            _ = all.wait() => {}
        }
        let r = tokio::task::spawn_blocking(move || session.umount_and_join()).await;
        match r {
            Ok(Ok(())) => tracing::info!(mount = %m.display(), "FUSE volume unmounted"),
            Ok(Err(e)) => {
                tracing::warn!(mount = %m.display(), error = %e, "FUSE unmount failed (a loop device still attached?)")
            }
            Err(e) => tracing::warn!(error = %e, "FUSE unmount task"),
        }
    });
    Ok(file)
}
