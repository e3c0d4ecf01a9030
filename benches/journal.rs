//! Retention engine benchmarks (issue 3). Prints figures; asserts nothing.
//!
//!   cargo bench --bench journal            # all
//!   cargo bench --bench journal -- apply   # one of: apply, pit, vsnap, index
//!
//! `index` holds 1 M, then 20 M small records in one journal and, in a fresh
//! process each time, reopens it and prints the reopen time, the process's
//! RSS beside an empty pair's, and random 4 KiB point-in-time read latency
//! warm and with caches dropped (`TERN_BENCH_RECORDS=a,b` for other sizes).
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
    // Shared, as the MT's records share the received chunk's bytes.
    let data = bytes::Bytes::from(data);
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
                            data: data.clone(),
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

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

const INDEX_VOL: u64 = 32 << 30;

/// Grow the journal in `dir` to `n` records of 512 bytes at random 4 KiB
/// offsets (1,024 a chunk); seqs continue from where it ends.
fn index_fill(j: &Journal, n: u64) {
    let start: u64 = 1_700_000_000_000_000;
    let mut seq = j.window().1.seq;
    let mut rng = StdRng::seed_from_u64(seq);
    let mut data = vec![0u8; 512];
    let t = Instant::now();
    let from = seq;
    while seq < n {
        let recs: Vec<Record> = (0..1024.min(n - seq))
            .map(|_| {
                seq += 1;
                rng.fill(&mut data[..16]);
                Record {
                    seq,
                    // 1,000 writes a second.
                    ts_us: start + seq * 1000,
                    body: RecordBody::Write {
                        offset: rng.random_range(0..INDEX_VOL / 4096) * 4096,
                        data: data.clone().into(),
                    },
                }
            })
            .collect();
        j.apply(&recs).unwrap();
    }
    let d = t.elapsed();
    println!(
        "index: {} records applied in {:.1} s ({:.0} records/s)",
        seq - from,
        d.as_secs_f64(),
        (seq - from) as f64 / d.as_secs_f64()
    );
}

/// In a fresh process: reopen the journal, report RSS and read latency.
fn index_probe(dir: &Path) {
    let empty_dir = dir.join("empty");
    let _ = std::fs::remove_dir_all(&empty_dir);
    std::fs::create_dir_all(&empty_dir).unwrap();
    let e = new_journal(&empty_dir, 1 << 30);
    let rss_empty = rss_kib();
    drop(e);
    let t = Instant::now();
    let j = Arc::new(
        Journal::open(
            Arc::new(FsStorage),
            &dir.join("journal"),
            &dir.join("replica.img"),
            JournalOptions::default(),
        )
        .unwrap(),
    );
    let reopen = t.elapsed();
    let st = j.stats();
    let rss_open = rss_kib();
    let n = st.latest.seq;
    let mut rng = StdRng::seed_from_u64(n ^ 7);
    let mut buf = vec![0u8; 4096];
    let mut run = |reads: usize, rng: &mut StdRng| {
        let mut lat = Vec::with_capacity(reads);
        for _ in 0..reads {
            let pin = j.pin(&PointSpec::Seq(rng.random_range(1..=n))).unwrap();
            let off = rng.random_range(0..INDEX_VOL / 4096) * 4096;
            let t0 = Instant::now();
            pin.read_at(off, &mut buf).unwrap();
            lat.push(t0.elapsed());
        }
        lat
    };
    // Warm: the index pages and records a first pass touched are cached.
    let _ = run(20_000, &mut rng);
    let mut warm = run(20_000, &mut rng);
    let mut cold = Vec::new();
    for _ in 0..5 {
        if std::fs::write("/proc/sys/vm/drop_caches", "3").is_err() {
            break;
        }
        cold.extend(run(400, &mut rng));
    }
    let rss_after = rss_kib();
    println!(
        "index {n} records ({} segments, journal {} MiB): reopen {:.2} s; RSS empty pair {} MiB, \
         after open {} MiB, after reads {} MiB (+{} MiB); index memory {:.1} MiB",
        st.segments.len(),
        st.bytes >> 20,
        reopen.as_secs_f64(),
        rss_empty >> 10,
        rss_open >> 10,
        rss_after >> 10,
        rss_after.saturating_sub(rss_empty) >> 10,
        st.index_bytes as f64 / (1 << 20) as f64,
    );
    println!(
        "index {n} records: PIT 4 KiB read warm p50 {:?} p99 {:?}; caches dropped p50 {:?} p99 {:?} ({} reads){}",
        percentile(&mut warm, 0.5),
        percentile(&mut warm, 0.99),
        if cold.is_empty() {
            Duration::ZERO
        } else {
            percentile(&mut cold, 0.5)
        },
        if cold.is_empty() {
            Duration::ZERO
        } else {
            percentile(&mut cold, 0.99)
        },
        cold.len(),
        if cold.is_empty() {
            " (cannot drop caches: not root)"
        } else {
            ""
        }
    );
}

fn index() {
    let dir = bench_dir();
    let sizes: Vec<u64> = std::env::var("TERN_BENCH_RECORDS")
        .ok()
        .map(|v| v.split(',').map(|x| x.trim().parse().unwrap()).collect())
        .unwrap_or_else(|| vec![1_000_000, 20_000_000]);
    let j = new_journal(&dir, INDEX_VOL);
    drop(j);
    for n in sizes {
        {
            let j = Journal::open(
                Arc::new(FsStorage),
                &dir.join("journal"),
                &dir.join("replica.img"),
                JournalOptions::default(),
            )
            .unwrap();
            index_fill(&j, n);
        }
        let st = std::process::Command::new(std::env::current_exe().unwrap())
            .arg("index-probe")
            .env("TERN_BENCH_PROBE_DIR", &dir)
            .status()
            .unwrap();
        assert!(st.success(), "probe failed");
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
    if which.iter().any(|w| w == "index-probe") {
        let d = PathBuf::from(std::env::var("TERN_BENCH_PROBE_DIR").unwrap());
        index_probe(&d);
        return;
    }
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
    if run("index") {
        index();
    }
    let _ = std::fs::remove_dir_all(bench_dir());
}
