//! The PS's memory with many pairs at once: 100 small volumes on one agent,
//! one PS, one MT, every pair resyncing at once (`resync_batch = 0`) and
//! then 100 writers in differential sync, each role in its own `tern serve`
//! process on loopback.
//!
//! `cargo bench --bench ps_many [PAIRS]` prints the PS's peak RSS through
//! the initial syncs and the writes beside `ps.chunk_memory`, and the bytes
//! through the PS; every pair must end caught up (RPO 0). The goal: a PS
//! with 100 pairs replicating stays under 200 MiB.

use std::time::{Duration, Instant};

#[path = "../tests/util/mod.rs"]
mod util;
use util::{Cluster, rss_kib, wait_for};

const VOL: u64 = 16 << 20;
const CHUNK_MEMORY: &str = "128MiB";

fn main() {
    let pairs: usize = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with("--"))
        .and_then(|a| a.parse().ok())
        .unwrap_or(100);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let mut agent = "buffer_cap = \"8MiB\"\nchunk_max = \"1MiB\"\n".to_owned();
    let mut ports = Vec::new();
    for i in 0..pairs {
        let port = util::free_port();
        ports.push(port);
        agent.push_str(&format!(
            "[[agent.volumes]]\nname = \"v{i}\"\npath = \"{}\"\nsize = {VOL}\nlisten = \"127.0.0.1:{port}\"\n",
            dir.join(format!("v{i}.img")).display()
        ));
    }
    let common = format!(
        "[log]\nlevel = \"warn\"\n[ps]\nresync_batch = 0\nchunk_memory = \"{CHUNK_MEMORY}\"\n"
    );
    let c = Cluster::start(dir, VOL, &agent, &common);
    let t = Instant::now();
    wait_for(300, "the agent's volume report", || {
        let v = c.tern(&["agent", "volume", "list"]);
        (v.as_array()?
            .iter()
            .filter(|x| x["export"].is_string())
            .count()
            > pairs)
            .then_some(())
    });
    println!(
        "ps_many: the agent reported its {} volumes {:.1} s after the start",
        pairs + 1,
        t.elapsed().as_secs_f64()
    );
    // Random data on every volume first, so the initial syncs carry bytes.
    for i in 0..pairs {
        use rand::RngCore;
        let mut b = vec![0u8; VOL as usize];
        rand::rng().fill_bytes(&mut b);
        std::fs::write(dir.join(format!("v{i}.img")), &b).unwrap();
    }
    let ps = c.pid(1);
    let rss0 = rss_kib(ps);
    let t0 = Instant::now();
    for i in 0..pairs {
        let (name, src) = (format!("p{i}"), format!("agent:v{i}"));
        c.tern(&[
            "pair", "create", &name, "--source", &src, "--ps", "ps", "--target", "mt",
        ]);
    }
    let mut peak = rss0;
    // One `pair list` holds every pair's view.
    let views = || {
        let v = c.tern(&["pair", "list"]);
        let list = if v.is_array() { v } else { v["pairs"].clone() };
        list.as_array().cloned().unwrap_or_default()
    };
    let all_caught_up = |since: u64| {
        let list = views();
        list.len() == pairs && list.iter().all(|p| util::is_caught_up(p, since))
    };
    let since = util::unix_ms();
    loop {
        peak = peak.max(rss_kib(ps));
        if t0.elapsed() > Duration::from_secs(900) {
            panic!("the initial syncs did not end in 15 minutes");
        }
        std::thread::sleep(Duration::from_millis(200));
        if all_caught_up(since) {
            break;
        }
    }
    let synced = t0.elapsed().as_secs_f64();
    let sync_peak = peak;
    // Then 100 writers at once for 30 s, 1 MB/s each.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let trigger = tern::engine::shutdown::ShutdownTrigger::new();
    let writers: Vec<_> = ports
        .iter()
        .enumerate()
        .map(|(i, port)| {
            let w = tern::engine::workload::Workload {
                url: format!("nbd://127.0.0.1:{port}/v{i}"),
                rate: 1_000_000,
                duration: Some(Duration::from_secs(30)),
                block_min: 4096,
                block_max: 256 << 10,
                compressibility: 0.5,
                seed: i as u64,
            };
            let sd = trigger.subscribe();
            rt.spawn(async move { tern::engine::workload::run(&w, sd, |_| {}).await })
        })
        .collect();
    let t1 = Instant::now();
    while writers.iter().any(|w| !w.is_finished()) {
        peak = peak.max(rss_kib(ps));
        std::thread::sleep(Duration::from_millis(100));
        assert!(
            t1.elapsed() < Duration::from_secs(120),
            "writers did not end"
        );
    }
    let mut written = 0;
    for w in writers {
        written += rt.block_on(w).unwrap().expect("a writer failed").bytes;
    }
    let since = util::unix_ms();
    wait_for(300, "every pair caught up after the writes", || {
        peak = peak.max(rss_kib(ps));
        all_caught_up(since).then_some(())
    });
    let through: u64 = views()
        .iter()
        .map(|p| p["bytes_raw_ps"].as_u64().unwrap_or(0))
        .sum();
    println!(
        "ps_many: {pairs} pairs of {} MiB, all resyncing at once: caught up in {synced:.1} s; PS peak RSS {} MiB (idle {} MiB) with ps.chunk_memory = {CHUNK_MEMORY}",
        VOL >> 20,
        sync_peak / 1024,
        rss0 / 1024
    );
    println!(
        "ps_many: then {pairs} writers at 1 MB/s each for 30 s ({:.1} MB written): PS peak RSS {} MiB over the whole run (goal: 200 MiB); {:.1} MB through the PS; every pair caught up, RPO 0",
        written as f64 / 1e6,
        peak / 1024,
        through as f64 / 1e6,
    );
}
