//! Durable file writes and secret-file checks, shared by every engine.
//!
//! Invariant: a file written with [`write_durable`] is either the old content or
//! the new content after a crash, never a mix: tmp file → fsync → rename → fsync dir.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// Write `bytes` to `path` atomically and durably with the given Unix mode.
pub fn write_durable(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(
        ".{}.tmp{}",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("file"),
        std::process::id()
    ));
    let written = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)?;
        // The mode given to open() is filtered by the umask; set it exactly.
        f.set_permissions(fs::Permissions::from_mode(mode))?;
        f.write_all(bytes)?;
        f.sync_all()
    })();
    if let Err(e) = written {
        // A full disk must not also keep the half-written copy.
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    fs::rename(&tmp, path)?;
    File::open(dir)?.sync_all()?;
    Ok(())
}

/// Make renames and removals in `dir` durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Read a secret file, refusing one that group or others can read
/// (a world-readable key or password is a configuration error, not a warning).
pub fn read_secret(path: &Path) -> io::Result<Vec<u8>> {
    let meta = fs::metadata(path)?;
    if meta.permissions().mode() & 0o077 != 0 {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "{} is readable by group or others (mode {:o}); run `chmod 600 {}`",
                path.display(),
                meta.permissions().mode() & 0o777,
                path.display()
            ),
        ));
    }
    fs::read(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durable_write_sets_exact_mode_and_content() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("secret");
        write_durable(&p, b"abc", 0o600).unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"abc");
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(read_secret(&p).unwrap(), b"abc");
    }

    #[test]
    fn world_readable_secret_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("secret");
        write_durable(&p, b"abc", 0o644).unwrap();
        let e = read_secret(&p).unwrap_err();
        assert!(e.to_string().contains("chmod 600"), "{e}");
    }
}
