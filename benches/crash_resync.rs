//! What an agent crash costs (issue 15.3): a 16 GiB volume with a small hot
//! set, kill -9 of the agent right after a burst of writes, and the time
//! from its restart to differential sync (it drains only the extents of its
//! activity log), against a full fast resync of the same volume in the same
//! run (which reads the whole volume on both sides).
//!
//! `cargo bench --bench crash_resync` prints, for each of three crashes,
//! the extents drained and the seconds from the restart to caught up, then
//! the full fast resync's seconds and the ratio. The volume is sparse
//! outside what the bench writes, which makes the full resync cheaper than
//! on a full disk: the ratio understates the gain.

use std::time::{Duration, Instant};

#[path = "../tests/util/mod.rs"]
mod util;
use util::{Cluster, qemu_io, unix_ms};

const GIB: u64 = 1 << 30;
const VOL: u64 = 16 * GIB;

/// 48 writes of 256 KiB over a 64 MiB hot region (16 extents) starting at
/// `base`, patterns from `seed`.
fn burst(c: &Cluster, base: u64, seed: u64) {
    let w: Vec<String> = (0..48u64)
        .map(|i| {
            let off = base + ((i * 7919 + seed * 31) % 256) * (256 << 10);
            format!("write -P {} {off} 256k", 1 + (seed + i) % 250)
        })
        .collect();
    qemu_io(&c.url(), &w);
}

fn wait_caught_up(c: &Cluster, since: u64, what: &str) -> serde_json::Value {
    let t = Instant::now();
    loop {
        assert!(
            t.elapsed() < Duration::from_secs(900),
            "{what}: never caught up"
        );
        if let Some(v) = c.caught_up(since) {
            return v;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn main() {
    let tmp =
        tempfile::tempdir_in(std::env::var("TERN_BENCH_DIR").unwrap_or("/var/tmp".into())).unwrap();
    let t = Instant::now();
    let mut c = Cluster::with_pair(
        tmp.path(),
        VOL,
        "buffer_cap = \"64MiB\"",
        "[log]\nlevel = \"info\"\n",
        900,
    );
    println!(
        "16 GiB volume protected, initial fast resync done in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    // Some data spread over the volume, so a full resync has more than
    // holes to read: 64 MiB at each of 16 places.
    for i in 0..16 {
        burst(&c, i * GIB, 100 + i);
    }
    wait_caught_up(&c, unix_ms(), "after the spread writes");
    let hot = 5 * GIB;
    let mut crash_s = Vec::new();
    for run in 0..3u64 {
        // A steady hot set: what was written before it has left the log
        // (two compaction periods).
        std::thread::sleep(Duration::from_secs(5));
        burst(&c, hot, run);
        c.kill9(0);
        let since = unix_ms();
        let t = Instant::now();
        c.up(0);
        wait_caught_up(&c, since, "after the crash");
        let s = t.elapsed().as_secs_f64();
        let log =
            std::fs::read_to_string(tmp.path().join(format!("agent-{}.log", c.nodes[0].starts)))
                .unwrap_or_default();
        let extents = log
            .lines()
            .find(|l| l.contains("extents in the activity log are resynced now"))
            .and_then(|l| l.split("extents=").nth(1))
            .and_then(|x| x.split_whitespace().next())
            .unwrap_or("?")
            .to_owned();
        println!(
            "crash {}: {extents} extents (4 MiB) drained; {s:.2} s from the restart to differential sync",
            run + 1
        );
        crash_s.push(s);
    }
    c.assert_identical();
    let resyncs = |v: &serde_json::Value| v["agent"]["resyncs"].as_u64().unwrap_or(0);
    let before = resyncs(&c.tern(&["pair", "show", "p"]));
    let t = Instant::now();
    c.tern(&["pair", "resync", "p"]);
    let v = loop {
        let v = wait_caught_up(&c, unix_ms(), "after the full resync");
        if resyncs(&v) > before {
            break v;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let full = t.elapsed().as_secs_f64();
    println!(
        "full fast resync of the same volume: {full:.2} s from the command to differential sync (step I {:.2} s, unmatched {}%)",
        v["agent"]["last_step1_s"].as_f64().unwrap_or(f64::NAN),
        v["fast_resync_unmatched_pct"]
    );
    let worst = crash_s.iter().cloned().fold(0.0, f64::max);
    println!(
        "crash resync: worst {worst:.2} s (goal <= 2 s), {:.0}x faster than the full fast resync",
        full / worst
    );
}
