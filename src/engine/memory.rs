//! Keeping a process's resident memory near what it really holds.
//!
//! The agent's buffer churns at the source's write rate (a 1 MiB write is
//! allocated, buffered, sent and freed); glibc's malloc keeps freed blocks
//! in its arenas, and the benchmark saw an agent with a 256 MiB buffer cap
//! at 700 MiB resident. Returning every free page at once (a fixed mmap
//! threshold) cost the pipeline a quarter of its throughput in page faults,
//! and mimalloc and jemalloc kept even more. So the agent asks glibc to
//! return free pages only when resident memory passes what it should hold:
//! its buffers' caps plus a margin. The same goes for the buffers kept in
//! [`bufpool`](crate::engine::bufpool), which spare both glibc and musl the
//! page faults of a fresh mapping for every large request and chunk.

/// Resident bytes of this process (0 if unknown).
pub fn resident_bytes() -> u64 {
    let s = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = s
        .split_whitespace()
        .nth(1)
        .and_then(|x| x.parse().ok())
        .unwrap_or(0);
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(4096) as u64;
    pages * page
}

/// Hand free heap pages back to the kernel, the buffer pool's included, if
/// resident memory is above `limit` bytes. Returns whether it trimmed.
pub fn trim_above(limit: u64) -> bool {
    if resident_bytes() <= limit {
        return false;
    }
    crate::engine::bufpool::release();
    trim();
    true
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn trim() {
    // SAFETY: malloc_trim only walks the allocator's own free lists.
    unsafe { libc::malloc_trim(0) };
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trim() {
    // musl's allocator returns large blocks to the kernel when freed.
}

#[cfg(test)]
mod tests {
    #[test]
    fn resident_memory_is_read_and_a_trim_below_it_happens() {
        let r = super::resident_bytes();
        assert!(r > 1 << 20, "{r}");
        assert!(super::trim_above(0));
        assert!(!super::trim_above(u64::MAX));
    }
}
