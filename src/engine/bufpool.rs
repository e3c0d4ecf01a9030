//! Reused large byte buffers: chunk bodies and zstd output on the PS and
//! the MT, and on the agent NBD requests, resync reads and encoded chunks.
//!
//! A chunk is 1–64 MiB. Allocated fresh for every chunk, glibc hands each
//! buffer back to the kernel when it is freed and faults its pages in again
//! for the next one: on the PS that was a fifth of its CPU time on
//! incompressible data (`perf`, `cargo bench --bench pipeline`); musl maps
//! every large block afresh, which was half the static agent's CPU. Buffers
//! taken from here come back when their last user drops them (a
//! [`Bytes`] made by [`shared`] returns its buffer when the last clone goes),
//! so their pages stay mapped and warm.
//!
//! The pool holds only buffers that were in use at once before, so it
//! never grows past the peak of chunks in flight.
//!
//! Invariants: the pool never holds more than [`MAX_POOLED`] bytes of
//! capacity (the rest is freed as usual), and [`release`] (the agent's
//! memory trim) empties it; a buffer taken is empty (`len` 0),
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

/// Buffers smaller than this are left to the allocator (its small-size
/// classes reuse memory well); only large ones, which both glibc and musl
/// map fresh and fault in, are pooled.
pub const POOL_FROM: usize = 64 << 10;

/// An empty buffer with room for at least `cap` bytes: a pooled one when
/// one fits without wasting more than a quarter of itself, otherwise a new
/// one.
pub fn take(cap: usize) -> Vec<u8> {
    if cap < POOL_FROM {
        return Vec::with_capacity(cap);
    }
    let found = POOL.lock().unwrap().take(cap);
    found.unwrap_or_else(|| Vec::with_capacity(class(cap)))
}

impl Pool {
    /// The smallest pooled buffer with room for `cap` bytes and at most a
    /// quarter more (so big ones stay for big chunks).
    fn take(&mut self, cap: usize) -> Option<Vec<u8>> {
        let i = self
            .free
            .iter()
            .enumerate()
            .filter(|(_, v)| v.capacity() >= cap && v.capacity() <= cap + cap / 4)
            .min_by_key(|(_, v)| v.capacity())
            .map(|(i, _)| i)?;
        let v = self.free.swap_remove(i);
        self.bytes -= v.capacity();
        Some(v)
    }

    /// Keep `v` (emptied) unless it is small or the pool is full.
    fn give(&mut self, mut v: Vec<u8>) {
        let cap = v.capacity();
        if cap >= POOL_FROM && self.bytes + cap <= MAX_POOLED && self.free.len() < MAX_BUFFERS {
            v.clear();
            self.bytes += cap;
            self.free.push(v);
        }
    }
}

/// The capacity a new buffer for `cap` bytes gets: above 1 MiB, rounded up
/// to a sixteenth of the next power of two (so near sizes share buffers, and
/// a 1.05 MiB chunk no longer takes 2 MiB), to a 4 KiB page below (an
/// agent's buffered write then holds next to nothing beyond its data).
fn class(cap: usize) -> usize {
    const MIB: usize = 1 << 20;
    const PAGE: usize = 4096;
    if cap < POOL_FROM {
        cap
    } else if cap <= MIB {
        cap.div_ceil(PAGE) * PAGE
    } else {
        let step = cap.next_power_of_two() / 16;
        cap.div_ceil(step) * step
    }
}

/// The most capacity a buffer taken for `cap` bytes can have: a quarter
/// more (a pooled one), or its class (a new one). What a memory bound that
/// admits bodies before they are read must count.
pub fn most_for(cap: usize) -> usize {
    (cap + cap / 4).max(class(cap))
}

/// Free every pooled buffer (the agent's memory trim: resident memory
/// above what its buffers should hold).
pub fn release() {
    let mut p = POOL.lock().unwrap();
    p.free.clear();
    p.free.shrink_to_fit();
    p.bytes = 0;
}

/// Hand `v` back for reuse (or free it when the pool is full).
pub fn give(v: Vec<u8>) {
    if v.capacity() >= POOL_FROM {
        POOL.lock().unwrap().give(v);
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
        assert_eq!(class(7_800_000), 15 << 19);
        assert_eq!(class(8 << 20), 8 << 20);
        assert_eq!(class((1 << 20) + 112), 9 << 17);
        for n in [
            3000,
            70_000,
            600_001,
            1 << 20,
            (1 << 20) + 1,
            7_800_000,
            64 << 20,
        ] {
            assert!(most_for(n) >= class(n) && most_for(n) >= n + n / 4);
            assert!(most_for(n) <= n + n / 4 + 4096, "{n}: {}", most_for(n));
        }
        assert_eq!(class(600 << 10), 600 << 10);
        assert_eq!(class(600_001), 602_112);
        assert_eq!(class(3000), 3000);
        assert!(take(7_800_000).capacity() >= 15 << 19);
        give(again);
    }

    #[test]
    fn a_buffer_serves_requests_it_is_at_most_a_quarter_bigger_than() {
        // A private pool: other tests use the global one meanwhile.
        let mut p = Pool {
            free: Vec::new(),
            bytes: 0,
        };
        p.give(Vec::with_capacity(1 << 20));
        assert!(p.take(600 << 10).is_none(), "1 MiB is too big for 600 KiB");
        assert!(p.take(2 << 20).is_none());
        assert_eq!(p.take(900 << 10).unwrap().capacity(), 1 << 20);
        assert_eq!(p.bytes, 0);
        // Small buffers are not kept.
        p.give(Vec::with_capacity(4096));
        assert!(p.free.is_empty());
        // Far more than the bound: the pool keeps at most MAX_POOLED.
        for _ in 0..(MAX_POOLED / (8 << 20) + 4) {
            p.give(Vec::with_capacity(8 << 20));
        }
        assert!(p.bytes <= MAX_POOLED && p.bytes >= MAX_POOLED - (8 << 20));
    }
}
