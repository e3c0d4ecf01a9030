//! Reused byte buffers for chunk bodies on the PS and the MT.
//!
//! A chunk is 1–64 MiB. Allocated fresh for every chunk, glibc hands each
//! buffer back to the kernel when it is freed and faults its pages in again
//! for the next one: on the PS that was a fifth of its CPU time on
//! incompressible data (`perf`, `cargo bench --bench pipeline`). Buffers
//! taken from here come back when their last user drops them (a
//! [`Bytes`] made by [`shared`] returns its buffer when the last clone goes),
//! so their pages stay mapped and warm.
//!
//! The pool holds only buffers that were in use at once before, so it
//! never grows past the peak of chunks in flight.
//!
//! Invariants: the pool never holds more than [`MAX_POOLED`] bytes of
//! capacity (the rest is freed as usual); a buffer taken is empty (`len` 0),
//! its old contents never visible; nothing here ever blocks for long (one
//! mutex around a short list).

use std::sync::Mutex;

use bytes::Bytes;

/// The most capacity kept for reuse, in bytes.
pub const MAX_POOLED: usize = 128 << 20;
/// The most buffers kept for reuse.
const MAX_BUFFERS: usize = 64;

struct Pool {
    free: Vec<Vec<u8>>,
    bytes: usize,
}

static POOL: Mutex<Pool> = Mutex::new(Pool {
    free: Vec::new(),
    bytes: 0,
});

/// An empty buffer with room for at least `cap` bytes: a pooled one when
/// one is big enough, otherwise a new one.
pub fn take(cap: usize) -> Vec<u8> {
    let mut p = POOL.lock().unwrap();
    // The smallest buffer that fits, so big ones stay for big chunks.
    let best = p
        .free
        .iter()
        .enumerate()
        .filter(|(_, v)| v.capacity() >= cap)
        .min_by_key(|(_, v)| v.capacity())
        .map(|(i, _)| i);
    match best {
        Some(i) => {
            let v = p.free.swap_remove(i);
            p.bytes -= v.capacity();
            v
        }
        None => {
            drop(p);
            Vec::with_capacity(class(cap))
        }
    }
}

/// The capacity a new buffer for `cap` bytes gets: rounded up to a whole
/// MiB (a power of two below that), so a chunk's body, 7.8 MB say, and a
/// zstd output bound for it, 8.0 MB, can use each other's buffers.
fn class(cap: usize) -> usize {
    const MIB: usize = 1 << 20;
    if cap <= MIB {
        cap.next_power_of_two()
    } else {
        cap.div_ceil(MIB) * MIB
    }
}

/// Hand `v` back for reuse (or free it when the pool is full).
pub fn give(mut v: Vec<u8>) {
    let cap = v.capacity();
    if cap == 0 {
        return;
    }
    v.clear();
    let mut p = POOL.lock().unwrap();
    if p.bytes + cap <= MAX_POOLED && p.free.len() < MAX_BUFFERS {
        p.bytes += cap;
        p.free.push(v);
    }
}

/// A buffer that goes back to the pool when dropped.
struct Returning(Vec<u8>);

impl AsRef<[u8]> for Returning {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl Drop for Returning {
    fn drop(&mut self) {
        give(std::mem::take(&mut self.0));
    }
}

/// `v` as shared [`Bytes`] whose buffer returns to the pool when the last
/// clone (or slice) of it is dropped.
pub fn shared(v: Vec<u8>) -> Bytes {
    Bytes::from_owner(Returning(v))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_come_back_empty_and_the_pool_stays_bounded() {
        let mut v = take(1 << 20);
        assert!(v.capacity() >= 1 << 20);
        v.extend_from_slice(&[7u8; 1000]);
        let b = shared(v);
        let part = b.slice(10..20);
        drop(b);
        // A slice still holds the buffer: it is not back yet.
        assert_eq!(&part[..], &[7u8; 10]);
        drop(part);
        let again = take(1 << 20);
        assert!(again.is_empty(), "old contents are never visible");
        // Sizes round up to a class, so near sizes share buffers.
        assert_eq!(class(7_800_000), 8 << 20);
        assert_eq!(class(8 << 20), 8 << 20);
        assert_eq!(class(3000), 4096);
        assert!(take(7_800_000).capacity() >= 8 << 20);
        give(again);
        // Far more than the bound: the pool keeps at most MAX_POOLED.
        for _ in 0..(MAX_POOLED / (8 << 20) + 4) {
            give(Vec::with_capacity(8 << 20));
        }
        assert!(POOL.lock().unwrap().bytes <= MAX_POOLED);
    }
}
