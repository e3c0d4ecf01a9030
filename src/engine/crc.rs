//! CRC-32C (Castagnoli, the iSCSI polynomial): the checksum in every tern
//! format (chunk payloads, journal records and indexes, the agent's state
//! files; docs/FORMATS.md).
//!
//! Computed by `crc-fast`, which folds with VPCLMULQDQ/AVX-512 where the CPU
//! has them and with PCLMULQDQ plus the SSE4.2 `crc32` instruction
//! elsewhere; on this project's bench host it ran 28 GB/s on 16-64 KiB
//! pieces against 14 GB/s for the `crc32c` crate's SSE4.2 loop. The PS sums
//! every byte it receives and every byte it seals, so this was 6% of its
//! CPU (`perf`, `cargo bench --bench pipeline`).

/// The CRC-32C of `b`.
pub fn crc32c(b: &[u8]) -> u32 {
    crc_fast::crc32_iscsi(b)
}

/// The CRC-32C of the bytes summed into `crc` followed by `b`:
/// `crc32c_append(crc32c(a), b) == crc32c(a ++ b)`.
pub fn crc32c_append(crc: u32, b: &[u8]) -> u32 {
    let mut d =
        crc_fast::Digest::new_with_init_state(crc_fast::CrcAlgorithm::Crc32Iscsi, u64::from(!crc));
    d.update(b);
    d.finalize() as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Bit at a time, straight from the definition (reflected 0x1EDC6F41).
    fn reference(b: &[u8]) -> u32 {
        let mut c = !0u32;
        for &x in b {
            c ^= u32::from(x);
            for _ in 0..8 {
                c = if c & 1 == 1 {
                    (c >> 1) ^ 0x82F6_3B78
                } else {
                    c >> 1
                };
            }
        }
        !c
    }

    #[test]
    fn matches_the_definition_at_every_length_and_alignment() {
        assert_eq!(
            crc32c(b"123456789"),
            0xE306_9283,
            "the catalogue's check value"
        );
        assert_eq!(crc32c(b""), 0);
        let data: Vec<u8> = (0..9000u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 11) as u8)
            .collect();
        // Every length up to past the SIMD fold widths, at odd offsets.
        for start in [0, 1, 7, 63] {
            for len in (0..600).chain([1023, 1024, 4095, 4096, 8191, 8937 - start]) {
                let b = &data[start..start + len];
                assert_eq!(crc32c(b), reference(b), "start {start} len {len}");
            }
        }
    }

    #[test]
    fn appending_equals_summing_the_whole() {
        let data: Vec<u8> = (0..70_000u32).map(|i| (i * 31 % 251) as u8).collect();
        for cut in [0, 1, 15, 16, 17, 255, 4096, 65_537, 70_000] {
            let (a, b) = data.split_at(cut);
            assert_eq!(crc32c_append(crc32c(a), b), crc32c(&data), "cut {cut}");
        }
        // Many small pieces, as the PS sums a body as it arrives.
        let mut c = crc32c(&[]);
        for p in data.chunks(999) {
            c = crc32c_append(c, p);
        }
        assert_eq!(c, crc32c(&data));
    }
}
