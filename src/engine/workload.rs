//! A write workload against an NBD export (the seed's GenerateTestTree,
//! appendix A, for block volumes): random offsets, block sizes in a range,
//! a target rate and a chosen compressibility. Used by `tern workload` and
//! by `tern up --demo`.

use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::engine::nbd::client::Client;
use crate::engine::shutdown::Shutdown;

#[derive(Debug, Clone)]
pub struct Workload {
    pub url: String,
    /// Bytes per second; 0 = as fast as the export takes them.
    pub rate: u64,
    pub duration: Option<Duration>,
    pub block_min: u64,
    pub block_max: u64,
    /// Fraction (0..=1) of each block that compresses away (zeros).
    pub compressibility: f64,
    pub seed: u64,
}

#[derive(Debug, Clone, Copy, Default)]
pub struct Stats {
    pub writes: u64,
    pub bytes: u64,
    pub elapsed: Duration,
}

/// Parse `4k..1M` (or a single size).
pub fn parse_blocks(s: &str) -> Result<(u64, u64), String> {
    let (a, b) = s.split_once("..").unwrap_or((s, s));
    let a = crate::util::parse_size(a)?;
    let b = crate::util::parse_size(b)?;
    if a == 0 || a > b || a % 512 != 0 || b % 512 != 0 || b > 32 << 20 {
        return Err(format!(
            "bad block range `{s}`: sizes are multiples of 512, min ≤ max ≤ 32MiB"
        ));
    }
    Ok((a, b))
}

/// Fill `buf` so that about `c` of it is zeros (in 4 KiB pieces).
pub fn fill(rng: &mut StdRng, buf: &mut [u8], c: f64) {
    for piece in buf.chunks_mut(4096) {
        if rng.random_bool(c.clamp(0.0, 1.0)) {
            piece.fill(0);
        } else {
            rng.fill(piece);
        }
    }
}

/// Run until the duration passes or `stop` fires; `tick` gets the running
/// totals about once a second.
pub async fn run(
    w: &Workload,
    mut stop: Shutdown,
    mut tick: impl FnMut(&Stats),
) -> std::io::Result<Stats> {
    let mut c = Client::connect(&w.url).await?;
    let size = c.size;
    if size < w.block_max {
        return Err(std::io::Error::other(format!(
            "the export is {size} bytes, smaller than the largest block"
        )));
    }
    let mut rng = StdRng::seed_from_u64(w.seed);
    let mut buf = vec![0u8; w.block_max as usize];
    let t0 = Instant::now();
    let mut st = Stats::default();
    let mut last_tick = t0;
    loop {
        if w.duration.is_some_and(|d| t0.elapsed() >= d) || stop.is_fired() {
            break;
        }
        let len = rng.random_range(w.block_min / 512..=w.block_max / 512) * 512;
        let off = rng.random_range(0..=(size - len) / 512) * 512;
        fill(&mut rng, &mut buf[..len as usize], w.compressibility);
        c.write(off, &buf[..len as usize]).await?;
        st.writes += 1;
        st.bytes += len;
        st.elapsed = t0.elapsed();
        if last_tick.elapsed() >= Duration::from_secs(1) {
            last_tick = Instant::now();
            tick(&st);
        }
        if w.rate > 0 {
            let due = Duration::from_secs_f64(st.bytes as f64 / w.rate as f64);
            if let Some(wait) = due.checked_sub(t0.elapsed()) {
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = stop.wait() => break,
                }
            }
        }
    }
    c.flush().await?;
    let _ = c.disconnect().await;
    st.elapsed = t0.elapsed();
    Ok(st)
}
