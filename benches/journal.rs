//! Retention engine benchmarks (issue 3). Prints figures; asserts nothing.
//!
//!   cargo bench --bench journal            # all
//!   cargo bench --bench journal -- apply   # one of: apply, pit, vsnap
//!
//! Runs in `TERN_BENCH_DIR` (default `target/bench-tmp`, i.e. the disk the
//! repository is on), so the dd baseline and the journal share a disk.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tern::engine::journal::storage::FsStorage;
use tern::engine::journal::vsnap::{Vsnap, VsnapMode};
use tern::engine::journal::{Journal, JournalOptions, PointSpec, Record, RecordBody};

fn bench_dir() -> PathBuf {
    let d = std::env::var("TERN_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/bench-tmp"));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn new_journal(dir: &Path, size: u64) -> Arc<Journal> {
    Arc::new(
        Journal::create(
            Arc::new(FsStorage),
            &dir.join("journal"),
            &dir.join("replica.img"),
            size,
            JournalOptions::default(),
        )
        .unwrap(),
    )
}

fn mbps(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / d.as_secs_f64() / 1e6
}

fn dd(dir: &Path, bytes: u64, bs: u64) -> Duration {
    let out = dir.join("dd.out");
    let t = Instant::now();
    let st = std::process::Command::new("dd")
        .arg("if=/dev/zero")
        .arg(format!("of={}", out.display()))
        .arg(format!("bs={bs}"))
        .arg(format!("count={}", bytes / bs))
        .args(["oflag=direct", "conv=fsync", "status=none"])
        .status()
        .expect("dd");
    assert!(st.success());
    let d = t.elapsed();
    std::fs::remove_file(out).unwrap();
    d
}

fn percentile(v: &mut [Duration], p: f64) -> Duration {
    v.sort_unstable();
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

/// Apply throughput: 1 GiB of 256 KiB writes in 4 MiB chunks (fsync per
/// chunk), against dd oflag=direct of the same bytes in 4 MiB blocks.
fn apply() {
    let dir = bench_dir();
    let total: u64 = 1 << 30;
    let wsize = 256 << 10;
    let per_chunk = 16;
    let vol: u64 = 16 << 30;
    let mut rng = StdRng::seed_from_u64(1);
    let mut data = vec![0u8; wsize];
    rng.fill(&mut data[..]);
    let mut rounds = Vec::new();
    for round in 0..3 {
        let jd = dir.join(format!("apply{round}"));
        let j = new_journal(&jd, vol);
        let mut seq = 0;
        let chunks = total / (wsize as u64 * per_chunk);
        let t = Instant::now();
        for _ in 0..chunks {
            let recs: Vec<Record> = (0..per_chunk)
                .map(|_| {
                    seq += 1;
                    let off = rng.random_range(0..vol / wsize as u64) * wsize as u64;
                    Record {
                        seq,
                        ts_us: seq,
                        body: RecordBody::Write {
                            offset: off,
                            data: data.clone().into(),
                        },
                    }
                })
                .collect();
            j.apply(&recs).unwrap();
        }
        let ta = t.elapsed();
        drop(j);
        let _ = std::fs::remove_dir_all(&jd);
        let td = dd(&dir, total, 4 << 20);
        println!(
            "apply round {round}: journal {:.0} MB/s, dd oflag=direct {:.0} MB/s, ratio {:.2}",
            mbps(total, ta),
            mbps(total, td),
            td.as_secs_f64() / ta.as_secs_f64()
        );
        rounds.push(td.as_secs_f64() / ta.as_secs_f64());
    }
    rounds.sort_by(|a, b| a.partial_cmp(b).unwrap());
    println!(
        "apply: median ratio journal/dd = {:.2} (goal >= 0.4)",
        rounds[1]
    );
}

/// Point-in-time reads: 1,048,576 journaled 4 KiB writes spread over 24 h on a
/// 16 GiB volume, then random 4 KiB reads at random times in the window.
fn pit() {
    let dir = bench_dir();
    let vol: u64 = 16 << 30;
    let n: u64 = 1 << 20;
    let per_chunk = 256;
    let day_us: u64 = 86_400_000_000;
    let start: u64 = 1_700_000_000_000_000;
    let j = new_journal(&dir, vol);
    let mut rng = StdRng::seed_from_u64(2);
    let mut block = vec![0u8; 4096];
    let t = Instant::now();
    let mut seq = 0u64;
    while seq < n {
        let recs: Vec<Record> = (0..per_chunk)
            .map(|_| {
                seq += 1;
                rng.fill(&mut block[..64]);
                // Hot and cold: half the writes land in the first 256 MiB.
                let blocks = if rng.random_bool(0.5) {
                    (256 << 20) / 4096
                } else {
                    vol / 4096
                };
                let off = rng.random_range(0..blocks) * 4096;
                Record {
                    seq,
                    ts_us: start + seq * day_us / n,
                    body: RecordBody::Write {
                        offset: off,
                        data: block.clone().into(),
                    },
                }
            })
            .collect();
        j.apply(&recs).unwrap();
    }
    let load = t.elapsed();
    let st = j.stats();
    println!(
        "pit: {} writes journaled in {:.1} s ({:.0} MB/s), journal {} MiB, {} segments",
        st.records,
        load.as_secs_f64(),
        mbps(n * 4096, load),
        st.bytes >> 20,
        st.segments.len()
    );
    for (label, drop_caches) in [
        ("warm (page cache)", false),
        ("cold (caches dropped)", true),
    ] {
        if drop_caches && std::fs::write("/proc/sys/vm/drop_caches", "3").is_err() {
            println!("pit: cannot drop caches (not root); skipping the cold run");
            continue;
        }
        let mut lat = Vec::with_capacity(100_000);
        let mut buf = vec![0u8; 4096];
        let reads = 100_000;
        let t = Instant::now();
        for _ in 0..reads {
            let at = rng.random_range(0..=n);
            let pin = j.pin(&PointSpec::Seq(at)).unwrap();
            let blocks = if rng.random_bool(0.5) {
                (256 << 20) / 4096
            } else {
                vol / 4096
            };
            let off = rng.random_range(0..blocks) * 4096;
            let t0 = Instant::now();
            pin.read_at(off, &mut buf).unwrap();
            lat.push(t0.elapsed());
        }
        let all = t.elapsed();
        println!(
            "pit {label}: {reads} random 4 KiB reads at random points: p50 {:?} p99 {:?} p99.9 {:?} max {:?} ({:.0} reads/s)",
            percentile(&mut lat, 0.5),
            percentile(&mut lat, 0.99),
            percentile(&mut lat, 0.999),
            percentile(&mut lat, 1.0),
            reads as f64 / all.as_secs_f64()
        );
    }
}

/// vsnap creation time on 1 GiB and 16 GiB sparse volumes (with history).
fn vsnap() {
    for size in [1u64 << 30, 16 << 30] {
        let dir = bench_dir();
        let j = new_journal(&dir, size);
        let mut seq = 0;
        for _ in 0..64 {
            let recs: Vec<Record> = (0..64)
                .map(|i| {
                    seq += 1;
                    Record {
                        seq,
                        ts_us: seq,
                        body: RecordBody::Write {
                            offset: (i * 7919 * 4096) % (size - 4096),
                            data: vec![1; 4096].into(),
                        },
                    }
                })
                .collect();
            j.apply(&recs).unwrap();
        }
        for mode in [VsnapMode::ReadOnly, VsnapMode::ReadWrite] {
            let mut times = Vec::new();
            for k in 0..200 {
                let ov = dir.join(format!("ov{k}"));
                let t = Instant::now();
                let v = Vsnap::create(
                    &j,
                    &PointSpec::Seq(k * 10),
                    mode,
                    Arc::new(FsStorage),
                    Some(ov),
                )
                .unwrap();
                times.push(t.elapsed());
                drop(v);
            }
            println!(
                "vsnap {} GiB {:?}: create p50 {:?} max {:?} (goal <= 100 ms, flat)",
                size >> 30,
                mode,
                percentile(&mut times, 0.5),
                percentile(&mut times, 1.0)
            );
        }
    }
}

fn main() {
    let which: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let run = |name: &str| which.is_empty() || which.iter().any(|w| w == name);
    if run("vsnap") {
        vsnap();
    }
    if run("apply") {
        apply();
    }
    if run("pit") {
        pit();
    }
    let _ = std::fs::remove_dir_all(bench_dir());
}
