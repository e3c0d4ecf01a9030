//! The zstd compressor the PS (and an agent with `compression = source`)
//! seals chunks with.
//!
//! It is `zstd-sys` called directly, not the `zstd` crate's
//! `bulk::Compressor`, for one setting that `zstd-safe` 7.4 does not
//! expose: zstd 1.5.7's pre-block splitter (`ZSTD_c_blockSplitterLevel`) is
//! turned off. On this project's 2-core bench host the splitter cost level 1
//! 12% of its CPU on half-compressible volume data and bought no ratio
//! there; on a 300 MB tar of /usr it cost 5% of the CPU and saved 0.6% of
//! the output. The `zstd -1` CLI the PS is measured against (1.5.4) has no
//! such stage. Decompression is untouched (`zstd::bulk::Decompressor`), and
//! the frames are ordinary zstd frames either way.
//!
//! Invariants:
//! - Output goes into a `Vec`'s spare capacity, after the bytes already in
//!   it (a chunk header's room), and `set_len` covers only bytes zstd says
//!   it wrote; too little room is an error that leaves the `Vec` as it was.
//! - One context per thread that uses it (it is `Send`, not `Sync`).

use std::ptr::NonNull;

use zstd::zstd_safe::zstd_sys as sys;

/// What zstd reported when it could not compress (too little room).
#[derive(Debug, thiserror::Error)]
#[error("zstd: {0}")]
pub struct ZstdError(String);

pub struct Compressor {
    ctx: NonNull<sys::ZSTD_CCtx>,
}

// SAFETY: a ZSTD_CCtx has no thread affinity; it must only not be used by
// two threads at once, which `&mut self` on every use ensures.
unsafe impl Send for Compressor {}

fn check(r: usize) -> Result<usize, ZstdError> {
    // SAFETY: plain FFI on a return code; ZSTD_getErrorName returns a
    // static NUL-terminated string.
    unsafe {
        if sys::ZSTD_isError(r) != 0 {
            let name = std::ffi::CStr::from_ptr(sys::ZSTD_getErrorName(r));
            return Err(ZstdError(name.to_string_lossy().into_owned()));
        }
    }
    Ok(r)
}

impl Compressor {
    /// A context at `level` with the pre-block splitter off.
    pub fn new(level: i32) -> Self {
        // SAFETY: FFI; a NULL return (out of memory) is turned into a panic
        // like any other failed allocation.
        let ctx = NonNull::new(unsafe { sys::ZSTD_createCCtx() }).expect("zstd context");
        let mut c = Compressor { ctx };
        c.set_level(level);
        // SAFETY: a valid context; 1 means "no splitting" (zstd.h).
        check(unsafe {
            sys::ZSTD_CCtx_setParameter(
                c.ctx.as_ptr(),
                sys::ZSTD_cParameter::ZSTD_c_experimentalParam20,
                1,
            )
        })
        .expect("zstd 1.5.7 knows ZSTD_c_blockSplitterLevel");
        c
    }

    /// Set the level (clamped by zstd to its own range).
    pub fn set_level(&mut self, level: i32) {
        // SAFETY: a valid context; an out-of-range level is clamped by zstd.
        let _ = check(unsafe {
            sys::ZSTD_CCtx_setParameter(
                self.ctx.as_ptr(),
                sys::ZSTD_cParameter::ZSTD_c_compressionLevel,
                level,
            )
        });
    }

    /// Compress `src` as one frame into `dst[..]`: its length.
    pub fn compress_to(&mut self, src: &[u8], dst: &mut [u8]) -> Result<usize, ZstdError> {
        // SAFETY: both pointers and lengths come from live slices.
        check(unsafe {
            sys::ZSTD_compress2(
                self.ctx.as_ptr(),
                dst.as_mut_ptr().cast(),
                dst.len(),
                src.as_ptr().cast(),
                src.len(),
            )
        })
    }

    /// Compress `src` as one frame appended to `out`, into its spare
    /// capacity (never grown): the frame's length.
    pub fn compress_append(&mut self, src: &[u8], out: &mut Vec<u8>) -> Result<usize, ZstdError> {
        let len = out.len();
        let room = out.capacity() - len;
        // SAFETY: the destination is the Vec's spare capacity, `room` bytes
        // from `len`; zstd writes at most `room` bytes there and returns how
        // many it wrote, and only those are added to the length.
        let n = check(unsafe {
            sys::ZSTD_compress2(
                self.ctx.as_ptr(),
                out.as_mut_ptr().add(len).cast(),
                room,
                src.as_ptr().cast(),
                src.len(),
            )
        })?;
        // SAFETY: see above; n <= room.
        unsafe { out.set_len(len + n) };
        Ok(n)
    }
}

impl Drop for Compressor {
    fn drop(&mut self) {
        // SAFETY: the context was made by ZSTD_createCCtx and is freed once.
        unsafe { sys::ZSTD_freeCCtx(self.ctx.as_ptr()) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_behind_what_is_already_there_and_never_past_capacity() {
        let src = vec![3u8; 100_000];
        let mut out = Vec::with_capacity(16 + src.len());
        out.extend_from_slice(b"header-bytes-16b");
        let n = Compressor::new(1).compress_append(&src, &mut out).unwrap();
        assert_eq!(out.len(), 16 + n);
        assert_eq!(&out[..16], b"header-bytes-16b");
        assert_eq!(zstd::bulk::decompress(&out[16..], src.len()).unwrap(), src);
        // Too little room is an error, not an overrun.
        let mut small = Vec::with_capacity(20);
        small.extend_from_slice(b"0123456789");
        let noise: Vec<u8> = (0..5000u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
            .collect();
        let e = Compressor::new(1).compress_append(&noise, &mut small);
        assert!(
            e.unwrap_err()
                .to_string()
                .contains("Destination buffer is too small")
        );
        assert_eq!(&small[..], b"0123456789");
    }

    #[test]
    fn frames_decode_with_the_stock_decoder_at_every_level() {
        let mut src = Vec::new();
        for i in 0..200_000u32 {
            src.extend_from_slice(format!("line {} of {}\n", i % 977, i % 13).as_bytes());
        }
        let mut c = Compressor::new(1);
        for level in [1, 3, 9, 19] {
            c.set_level(level);
            let mut out = vec![0u8; zstd::zstd_safe::compress_bound(src.len())];
            let n = c.compress_to(&src, &mut out).unwrap();
            assert!(n < src.len() / 4, "level {level}: {n}");
            assert_eq!(zstd::bulk::decompress(&out[..n], src.len()).unwrap(), src);
        }
    }
}
