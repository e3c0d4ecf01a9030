//! End-to-end replication figures: agent → PS → MT with the journal on, zstd
//! at the PS. A CX, the agent, the PS and the MT each run in their own
//! `tern serve` process on loopback, so each role's CPU and memory are its
//! own; the writer (`tern workload` over the agent's NBD export) shares the
//! same 2 cores.
//!
//! `cargo bench --bench pipeline [50|incompressible|resync]` prints:
//! - drain throughput: 20 s of writes as fast as the export takes them,
//!   bytes through the PS until the MT has applied everything (overwrites
//!   coalesced in bitmap mode cross once), for 50%-compressible and
//!   incompressible data;
//! - CPU seconds per GB of each role, and the PS's GB per CPU-second beside
//!   `zstd -1` compressing the source volume (the same data) in the same run
//!   (page cache warm, fastest of three);
//! - the PS's CPU split into its own work on the chunks (hop checks and
//!   zstd, timed on the threads that do it) and moving the bytes (TLS in
//!   and out, HTTP, TCP), whose floor `benches/tls_relay.rs` measures;
//! - the agent's peak RSS against its buffer cap;
//! - the sustained rate in data mode: from the drain figure down in 10%
//!   steps, the first paced rate that leaves the pair in differential sync
//!   for 15 s (an unbounded writer sends the agent to bitmap mode, where
//!   overwrites coalesce, so the drain figure can exceed it);
//! - RPO p50/p99 (from `pair show` every 100 ms) at 50% and 90% of the
//!   sustained rate;
//! - fast resync of an unchanged volume against reading it raw, both from a
//!   cold page cache.
//!
//! `TERN_BENCH_QUICK=1` stops after the drain figures (no paced runs);
//! `TERN_BENCH_PAUSE=1` prints the roles' pids before each measured phase
//! and waits 10 s, to attach `perf record -p`.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod common;
#[path = "../tests/util/mod.rs"]
mod util;
use util::{Cluster, bin, rss_kib};

const VOL: u64 = 2 << 30;
const CAP: &str = "256MiB";
/// The fast-resync volume (filled with random data first).
const RESYNC_VOL: u64 = 4 << 30;
const ROLES: [&str; 3] = ["agent", "PS", "MT"];

/// With `TERN_BENCH_PAUSE` set: print the roles' pids and wait 10 s before
/// a measured phase, for `perf record -p`.
fn pause_for_profiler(c: &Cluster) {
    if std::env::var_os("TERN_BENCH_PAUSE").is_some() {
        println!("pids agent {} ps {} mt {}", c.pid(0), c.pid(1), c.pid(2));
        std::thread::sleep(Duration::from_secs(10));
    }
}

fn workload(u: &str, rate: &str, secs: u64, c: f64, seed: u64) -> std::process::Child {
    Command::new(bin())
        .args([
            "--json",
            "workload",
            "--nbd",
            u,
            "--rate",
            rate,
            "--duration",
            &format!("{secs}s"),
            "--block",
            "1M..1M",
            "--compressibility",
            &c.to_string(),
            "--seed",
            &seed.to_string(),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

/// User + system CPU seconds a process has used so far.
fn cpu_s(pid: u32) -> f64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) in parentheses.
    let rest = s.rsplit_once(')').map(|x| x.1).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|x| x.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are fields 14 and 15 of stat; 12 and 13 after ')'.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    (ticks(11) + ticks(12)) / hz
}

fn cpus(c: &Cluster) -> [f64; 3] {
    [cpu_s(c.pid(0)), cpu_s(c.pid(1)), cpu_s(c.pid(2))]
}

fn drop_caches() -> bool {
    let _ = Command::new("sync").status();
    std::fs::write("/proc/sys/vm/drop_caches", "3").is_ok()
}

/// Read `files` sequentially in 1 MiB pieces: bytes per second.
fn raw_read(files: &[std::path::PathBuf]) -> f64 {
    use std::io::Read;
    let mut buf = vec![0u8; 1 << 20];
    let t = Instant::now();
    let mut n = 0u64;
    for file in files {
        let mut f = std::fs::File::open(file).unwrap();
        loop {
            let k = f.read(&mut buf).unwrap();
            if k == 0 {
                break;
            }
            n += k as u64;
        }
    }
    n as f64 / t.elapsed().as_secs_f64()
}

/// Every regular file under `dir`.
fn files_under(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(files_under(&p));
        } else {
            out.push(p);
        }
    }
    out.sort();
    out
}

fn start(dir: &Path, vol: u64) -> Cluster {
    Cluster::with_pair(
        dir,
        vol,
        &format!("buffer_cap = \"{CAP}\""),
        "[log]\nlevel = \"warn\"\n",
        600,
    )
}

/// One paced run: 15 s of writes at `mb_s`, then until caught up.
struct Paced {
    /// The writer got at least 95% of the rate asked, and the pair never
    /// left differential sync while it ran.
    kept_up: bool,
    /// What the writer achieved, MB/s.
    wrote: f64,
    /// RPO from `pair show` every 100 ms, after the first 2 s.
    rpo: Vec<f64>,
}

fn paced(c: &Cluster, u: &str, mb_s: f64, comp: f64) -> Paced {
    let rate = format!("{}", (mb_s * 1e6) as u64);
    let mut w = workload(u, &rate, 15, comp, 2);
    let mut run = Paced {
        kept_up: true,
        wrote: 0.0,
        rpo: Vec::new(),
    };
    let t = Instant::now();
    while w.try_wait().unwrap().is_none() {
        if let Some(v) = c.try_pair("p") {
            if v["state"] != "differential-sync" {
                run.kept_up = false;
            }
            if t.elapsed() > Duration::from_secs(2)
                && let Some(r) = v["rpo_s"].as_f64()
            {
                run.rpo.push(r);
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let out: serde_json::Value =
        serde_json::from_slice(&w.wait_with_output().unwrap().stdout).unwrap_or_default();
    run.wrote = out["mb_per_s"].as_f64().unwrap_or(0.0);
    if run.wrote < mb_s * 0.95 {
        run.kept_up = false;
    }
    c.wait_caught_up(600);
    run
}

fn throughput(label: &str, comp: f64) {
    let tmp = tempfile::tempdir().unwrap();
    let c = start(tmp.path(), VOL);
    let u = c.url();
    // Sustained: 20 s of writes as fast as they are taken, then drain.
    let secs = 20;
    let v0 = c.tern(&["pair", "show", "p"]);
    let raw0 = v0["bytes_raw_ps"].as_u64().unwrap_or(0);
    let codec0 = v0["ps_status"]["codec_cpu_us"].as_u64().unwrap_or(0);
    pause_for_profiler(&c);
    let cpu0 = cpus(&c);
    let t0 = Instant::now();
    let mut w = workload(&u, "0", secs, comp, 1);
    let mut peak = 0;
    let mut watch = || peak = peak.max(rss_kib(c.pid(0)));
    while w.try_wait().unwrap().is_none() {
        watch();
        std::thread::sleep(Duration::from_millis(100));
    }
    let out: serde_json::Value =
        serde_json::from_slice(&w.wait_with_output().unwrap().stdout).unwrap();
    let bytes = out["bytes"].as_u64().unwrap();
    let since = util::unix_ms();
    while c.caught_up(since).is_none() {
        watch();
        assert!(t0.elapsed() < Duration::from_secs(900), "never caught up");
        std::thread::sleep(Duration::from_millis(50));
    }
    let took = t0.elapsed().as_secs_f64();
    let cpu1 = cpus(&c);
    let captured = out["mb_per_s"].as_f64().unwrap();
    let v = c.tern(&["pair", "show", "p"]);
    let moved = v["bytes_raw_ps"].as_u64().unwrap() - raw0;
    let e2e = moved as f64 / took / 1e6;
    let ratio = v["ps_status"]["bytes_out"].as_f64().unwrap() / v["bytes_raw_ps"].as_f64().unwrap();
    println!(
        "pipeline {label}: {e2e:.1} MB/s end to end ({moved} bytes through the PS in {took:.1} s, until the MT had all; the workload wrote {bytes} bytes at {captured:.1} MB/s); PS out/in {ratio:.2}"
    );
    let gb = moved as f64 / 1e9;
    let per_gb: Vec<String> = (0..3)
        .map(|i| format!("{} {:.2}", ROLES[i], (cpu1[i] - cpu0[i]) / gb))
        .collect();
    println!(
        "pipeline {label}: CPU seconds per GB: {}",
        per_gb.join(", ")
    );
    let ps_cpu = cpu1[1] - cpu0[1];
    let ps_gbps = gb / ps_cpu;
    let codec_cpu = (v["ps_status"]["codec_cpu_us"].as_u64().unwrap() - codec0) as f64 / 1e6;
    println!(
        "pipeline {label}: agent peak RSS {} MiB with a {CAP} buffer cap (goal: cap + 32 MiB), data and bitmap mode",
        peak / 1024
    );
    // Sustained in data mode. The figure above is bytes through the PS
    // while an unbounded writer sent the agent to bitmap mode, where
    // overwrites coalesce; a paced writer at a rate the pipeline really
    // sustains never does. From that figure down in steps of 10%: the first
    // rate at which 15 s of writes left the pair in differential sync
    // throughout is the sustained rate; RPO is then taken at 50% and 90%
    // of it.
    let quick = std::env::var_os("TERN_BENCH_QUICK").is_some();
    if !quick {
        let mut sustained = None;
        for step in 0..6 {
            let rate = e2e * (1.0 - 0.1 * step as f64);
            let run = paced(&c, &u, rate, comp);
            println!(
                "pipeline {label}: paced at {rate:.1} MB/s: wrote {:.1} MB/s, {}",
                run.wrote,
                if run.kept_up {
                    "kept up in differential sync"
                } else {
                    "fell behind"
                }
            );
            if run.kept_up {
                sustained = Some(rate);
                break;
            }
        }
        let sustained = sustained.expect("keeps up at 50% of the drain rate");
        println!("pipeline {label}: sustained {sustained:.1} MB/s in data mode");
        for frac in [0.5, 0.9] {
            let mut run = paced(&c, &u, sustained * frac, comp);
            println!(
                "pipeline {label}: at {:.0}% ({:.1} MB/s) RPO p50 {:.2} s, p99 {:.2} s ({} samples){}",
                frac * 100.0,
                sustained * frac,
                pct(&mut run.rpo, 0.5),
                pct(&mut run.rpo, 0.99),
                run.rpo.len(),
                if run.kept_up { "" } else { "; fell behind" }
            );
        }
    }
    // The reference, on the data the PS carried, with every role stopped:
    // measured while the MT was still busy after the drain, it varied
    // from 1.42 to 1.74 GB per CPU-second on the same data.
    let src = c.src.clone();
    drop(c);
    let (zb, zs) = common::zstd_1(&src).expect("zstd (apt install zstd)");
    let z_gbps = zb as f64 / 1e9 / zs;
    println!(
        "pipeline {label}: PS {ps_gbps:.2} GB per CPU-second (hop checks, zstd, TLS in and out) vs zstd -1 {z_gbps:.2} GB per CPU-second on the source volume: {:.2}x",
        ps_gbps / z_gbps
    );
    // The same CPU split in two: the PS's own work on the chunks, timed on
    // the threads that do it, and everything else, which is moving the
    // bytes (TLS in and out, HTTP, TCP); `cargo bench --bench tls_relay`
    // measures the floor under the second part.
    println!(
        "pipeline {label}: of the PS's {:.2} CPU-s per GB, checks and zstd {:.2} ({:.2} GB per CPU-second, {:.2}x zstd -1), moving the bytes (TLS in and out, HTTP, TCP) {:.2}",
        ps_cpu / gb,
        codec_cpu / gb,
        gb / codec_cpu,
        gb / codec_cpu / z_gbps,
        (ps_cpu - codec_cpu) / gb
    );
}

/// Fast resync of a volume the replica already equals, against a plain
/// sequential read of the same volume. The volume is filled with random
/// data first (no holes: every block is really read and hashed).
fn fast_resync() {
    let tmp = tempfile::tempdir().unwrap();
    let size = RESYNC_VOL;
    {
        use rand::RngCore;
        use std::io::Write;
        let mut f = std::fs::File::create(tmp.path().join("src.img")).unwrap();
        let mut rng = rand::rng();
        let mut buf = vec![0u8; 1 << 20];
        for _ in 0..size >> 20 {
            rng.fill_bytes(&mut buf);
            f.write_all(&buf).unwrap();
        }
    }
    let c = start(tmp.path(), size);
    let resyncs = |v: &serde_json::Value| v["agent"]["resyncs"].as_u64().unwrap_or(0);
    let before = resyncs(&c.tern(&["pair", "show", "p"]));
    // What this host's disk gives one reader, and two readers at once: the
    // source volume, and the MT's journal segments (where the replica's
    // data sits), which is what a fast resync reads on its two sides.
    let cold = drop_caches();
    let raw = raw_read(std::slice::from_ref(&c.src));
    drop_caches();
    let segs: Vec<_> = files_under(&c.dir.join("mt-data").join("mt").join("pairs"))
        .into_iter()
        .filter(|p| p.extension().is_some_and(|x| x == "tj"))
        .collect();
    let t = Instant::now();
    let other = std::thread::spawn(move || raw_read(&segs));
    raw_read(std::slice::from_ref(&c.src));
    other.join().unwrap();
    let raw_shared = size as f64 / t.elapsed().as_secs_f64();
    if cold {
        drop_caches();
    }
    pause_for_profiler(&c);
    let t0 = Instant::now();
    c.tern(&["pair", "resync", "p"]);
    let since = util::unix_ms();
    let mut peak = 0;
    let v = loop {
        assert!(t0.elapsed() < Duration::from_secs(600), "never caught up");
        std::thread::sleep(Duration::from_millis(50));
        peak = peak.max(rss_kib(c.pid(0)));
        if let Some(v) = c.caught_up(since)
            && resyncs(&v) > before
        {
            break v;
        }
    };
    let step1 = v["agent"]["last_step1_s"].as_f64().expect("step I time");
    let speed = size as f64 / step1;
    println!(
        "fast resync of an unchanged {} GiB volume: step I {:.0} MB/s ({step1:.2} s; unmatched {}%; {:.2} s from the command to caught up)",
        size >> 30,
        speed / 1e6,
        v["fast_resync_unmatched_pct"],
        t0.elapsed().as_secs_f64(),
    );
    println!(
        "fast resync: raw sequential read ({} page cache) {:.0} MB/s with one reader, {:.0} MB/s each with the source and the MT's journal read at once: step I is {:.2}x the shared figure, {:.2}x the lone one (source and replica share this host's disk and 2 cores)",
        if cold { "cold" } else { "warm" },
        raw / 1e6,
        raw_shared / 1e6,
        speed / raw_shared,
        speed / raw,
    );
    println!(
        "fast resync: agent peak RSS {} MiB with a {CAP} buffer cap (goal: cap + 32 MiB)",
        peak / 1024
    );
}

fn main() {
    let only: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let want = |l: &str| only.is_empty() || only.iter().any(|o| l.starts_with(o.as_str()));
    for (label, c) in [("50% compressible", 0.5), ("incompressible", 0.0)] {
        if want(label) {
            throughput(label, c);
        }
    }
    if want("resync") {
        fast_resync();
    }
}
