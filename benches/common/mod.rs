//! What more than one benchmark measures with: child processes' CPU time,
//! and `zstd -1`, the reference the PS's CPU goal is set against.

use std::path::Path;
use std::process::{Command, Stdio};

/// CPU seconds (user and system) of the children waited for so far.
pub fn children_cpu_s() -> f64 {
    // SAFETY: rusage is plain data; getrusage fills the one we own.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut ru) };
    let t = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
    t(ru.ru_utime) + t(ru.ru_stime)
}

/// `zstd -1` (one thread) over `file` to /dev/null: (bytes, CPU seconds of
/// the zstd process); None without a `zstd` command. The file is read once
/// first and the fastest of three runs counts, so the reference pays no
/// disk reads (the PS gets its data from the network, not a disk) and is
/// the hardest one to meet: a single cold run gave 1.36 to 1.74 GB per
/// CPU-second on the pipeline's half-compressible data.
pub fn zstd_1(file: &Path) -> Option<(u64, f64)> {
    let _ = Command::new("cat").arg(file).stdout(Stdio::null()).status();
    let mut best = f64::INFINITY;
    for _ in 0..3 {
        let before = children_cpu_s();
        let st = Command::new("zstd")
            .args(["-1", "-q", "-c", "--single-thread"])
            .arg(file)
            .stdout(Stdio::null())
            .status()
            .ok()?;
        assert!(st.success(), "zstd -1 {}: {st}", file.display());
        best = best.min(children_cpu_s() - before);
    }
    Some((std::fs::metadata(file).unwrap().len(), best))
}
