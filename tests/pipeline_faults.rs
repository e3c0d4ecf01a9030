//! Issue 4 acceptance 3 and 4: outages and kill -9 of agent, PS and MT,
//! each in its own process on loopback; every pair ends identical to its
//! source.

mod util;

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use util::*;

const MIB: u64 = 1 << 20;
const SMALL_CHUNKS_4M: &str = "buffer_cap = \"4MiB\"\nchunk_max = \"1MiB\"";
const SMALL_CHUNKS_16M: &str = "buffer_cap = \"16MiB\"\nchunk_max = \"1MiB\"";

/// Writes through the agent's NBD export until `stop`; connection errors
/// (the agent being killed) are expected and retried.
fn writer(url: String, vol: u64, seed: u64, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<u64> {
    std::thread::spawn(move || {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut ok = 0;
        while !stop.load(Ordering::Relaxed) {
            let mut c = Command::new("qemu-io");
            c.args(["-f", "raw", &url]);
            for _ in 0..20 {
                let len = rng.random_range(1..=256u64) * 4096;
                let off = rng.random_range(0..(vol - len) / 4096) * 4096;
                c.args([
                    "-c",
                    &format!("write -P {} {off} {len}", rng.random_range(1..=255u8)),
                ]);
            }
            match c.output() {
                Ok(o) if o.status.success() => ok += 1,
                _ => std::thread::sleep(Duration::from_millis(100)),
            }
        }
        ok
    })
}

/// Eight 1 MiB writes, 2 MiB apart, patterns `first`, `first + 1`, …
fn eight_writes(c: &Cluster, first: u64) {
    let w: Vec<String> = (0..8)
        .map(|i| format!("write -P {} {} 1M", first + i, i * 2 * MIB))
        .collect();
    qemu_io(&c.url(), &w);
}

/// Acceptance 3: the MT is cut off under load (the PS caches), then the PS
/// is stopped with a small agent buffer (bitmap mode, memory bounded); each
/// time the pair drains back and the replica ends identical.
#[test]
fn mt_and_ps_outages_lose_nothing_and_bitmap_mode_bounds_memory() {
    let tmp = tempfile::tempdir().unwrap();
    let vol = 64 * MIB;
    let mut c = Cluster::with_pair(tmp.path(), vol, SMALL_CHUNKS_4M, "", 120);

    // MT outage under load: the PS spills to its cache and keeps accepting.
    let stop = Arc::new(AtomicBool::new(false));
    let w = writer(c.url(), vol, 1, stop.clone());
    std::thread::sleep(Duration::from_secs(1));
    c.stop(2);
    let cached = wait_for(60, "the PS to cache chunks while the MT is down", || {
        let v = c.try_pair("p")?;
        (v["transit_ps_bytes"].as_u64()? > 0).then_some(v)
    });
    assert!(cached["rpo_s"].as_f64().unwrap() > 0.0, "{cached}");
    std::thread::sleep(Duration::from_secs(2));
    c.up(2);
    std::thread::sleep(Duration::from_secs(1));
    stop.store(true, Ordering::Relaxed);
    assert!(w.join().unwrap() > 0);
    let v = c.wait_caught_up(120);
    assert_eq!(v["rpo_s"], 0.0, "RPO back under its threshold: {v}");
    c.assert_identical();

    // PS outage with a 4 MiB agent buffer: bitmap mode, memory stays bounded.
    let rss0 = rss_kib(c.pid(0));
    c.stop(1);
    let stop = Arc::new(AtomicBool::new(false));
    let w = writer(c.url(), vol, 2, stop.clone());
    let v = wait_for(60, "bitmap mode", || {
        let v = c.try_pair("p")?;
        (v["state"] == "bitmap").then_some(v)
    });
    let cap = v["agent"]["buffer_cap"].as_u64().unwrap();
    let mut max_buffered = 0;
    let mut max_rss = 0;
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(4) {
        if let Some(v) = c.try_pair("p") {
            max_buffered = max_buffered.max(v["agent"]["buffered_bytes"].as_u64().unwrap_or(0));
        }
        max_rss = max_rss.max(rss_kib(c.pid(0)));
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        max_buffered <= cap,
        "buffer {max_buffered} over its cap {cap}"
    );
    // The agent holds at most its buffer plus one chunk in flight; allow
    // generous slack for the allocator, never the data written (tens of MiB).
    assert!(
        max_rss < rss0 + cap / 1024 + 24 * 1024,
        "agent RSS grew from {rss0} KiB to {max_rss} KiB with a {cap}-byte cap"
    );
    eprintln!("agent RSS {rss0} KiB before the PS outage, at most {max_rss} KiB during it");
    c.up(1);
    std::thread::sleep(Duration::from_secs(1));
    stop.store(true, Ordering::Relaxed);
    w.join().unwrap();
    c.wait_caught_up(120);
    c.assert_identical();
}

/// Acceptance 4: 30 kill -9 of agent, PS and MT at random moments under
/// load; after recovery (and the resync an agent crash requires) the replica
/// is identical to the source.
#[test]
fn thirty_kill_nines_of_agent_ps_and_mt_end_identical() {
    let tmp = tempfile::tempdir().unwrap();
    let vol = 32 * MIB;
    let mut c = Cluster::with_pair(tmp.path(), vol, SMALL_CHUNKS_16M, "", 120);
    let stop = Arc::new(AtomicBool::new(false));
    let w = writer(c.url(), vol, 3, stop.clone());
    let mut rng = StdRng::seed_from_u64(77);
    let mut kills = [0u32; 3];
    for _ in 0..30 {
        std::thread::sleep(Duration::from_millis(rng.random_range(300..1500)));
        let i = rng.random_range(0..3);
        c.kill9(i);
        kills[i] += 1;
        std::thread::sleep(Duration::from_millis(rng.random_range(0..500)));
        c.up(i);
    }
    std::thread::sleep(Duration::from_secs(1));
    stop.store(true, Ordering::Relaxed);
    w.join().unwrap();
    assert!(
        kills.iter().all(|k| *k > 0),
        "each role was killed: {kills:?}"
    );
    c.wait_caught_up(240);
    c.assert_identical();
    // An agent crash loses its memory: the activity log says which
    // extents to drain, and nothing more is read. (The agent running now
    // was started after a kill -9.)
    let v = c.tern(&["pair", "show", "p"]);
    let ev = pair_events(&v, "agent");
    assert!(
        ev.iter().any(|e| e == "activity_log_resync") || kills[0] == 0,
        "agent events {ev:?}\n{}",
        c.logs()
    );
}

/// A poison chunk: a chunk in the PS's cache damaged on its disk is refused
/// by the MT; after three refusals the PS drops its cache, the agent
/// resyncs (fast), and the replica ends identical. Nothing damaged is
/// applied, and the replication does not stall behind it.
#[test]
fn a_damaged_cached_chunk_is_given_up_and_the_pair_resyncs() {
    let tmp = tempfile::tempdir().unwrap();
    let vol = 16 * MIB;
    let mut c = Cluster::with_pair(tmp.path(), vol, SMALL_CHUNKS_16M, "", 120);
    // The MT away: the PS caches what the agent sends.
    c.stop(2);
    eight_writes(&c, 1);
    wait_for(60, "the PS to cache chunks", || {
        let v = c.try_pair("p")?;
        (v["transit_ps_bytes"].as_u64()? > 0 && v["transit_agent_bytes"] == 0).then_some(())
    });
    // Damage the first cached chunk's payload on the PS's disk.
    c.stop(1);
    let dir = c.dir.join("ps-data/ps/cache/p");
    let files = files_with_ext(&dir, "tchk");
    let first = files.first().expect("a cached chunk");
    let mut b = std::fs::read(first).unwrap();
    // In the payload (past the header): the header still checks, so the
    // PS reloads the file and forwards it.
    let h = tern::engine::chunk::HEADER_LEN;
    let i = h + (b.len() - h) / 2;
    b[i] ^= 0x5a;
    std::fs::write(first, &b).unwrap();
    c.up(1);
    c.up(2);
    c.wait_caught_up(180);
    c.assert_identical();
    // (Reports come every few seconds: wait for the one that says so.)
    wait_for(30, "the PS to report it gave the cached chunk up", || {
        let ev = pair_events(&c.try_pair("p")?, "ps_status");
        ev.iter().any(|e| e == "cache_dropped").then_some(())
    });
}

/// The agent's side of a refused chunk. A proxy between agent and PS
/// ([`tlsproxy::TlsProxy`], holding both identities) damages the payload of
/// the same chunk each time the agent sends it, as memory damage on the
/// agent's host would (TLS catches damage on the wire). The PS refuses each
/// copy; after three the agent stops resending it, drops its buffer and
/// resyncs (fast), and the replica ends identical: nothing damaged is
/// applied and nothing the damaged chunk carried is lost.
#[test]
fn a_chunk_the_ps_refuses_three_times_is_dropped_and_the_pair_resyncs() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let vol = 16 * MIB;
    let proxy = tlsproxy::TlsProxy::start(
        &dir.join("ps-data/data.addr"),
        &dir.join("ps-data/pki"),
        &dir.join("agent-data/pki"),
    );
    let c = Cluster::start_ps_advertising(dir, vol, SMALL_CHUNKS_16M, proxy.addr);
    c.create_pair();
    c.wait_caught_up(120);
    let resyncs = |c: &Cluster| c.tern(&["pair", "show", "p"])["agent"]["resyncs"].as_u64();
    let before = resyncs(&c).unwrap();
    // More than the agent will ever send of one chunk.
    proxy.poison.lock().unwrap().left = 10;
    eight_writes(&c, 11);
    wait_for(120, "the agent to give the chunk up and resync", || {
        (resyncs(&c)? > before).then_some(())
    });
    c.wait_caught_up(120);
    c.assert_identical();
    let damaged = proxy.poison.lock().unwrap().damaged;
    assert_eq!(
        damaged,
        tern::engine::chunk::GIVE_UP_AFTER,
        "the agent sent the damaged chunk {damaged} times\n{}",
        c.logs()
    );
    // (Reports come every few seconds: wait for the PS's third refusal.)
    let v = wait_for(30, "the PS to report every refusal", || {
        let v = c.try_pair("p")?;
        let n = v["ps_status"]["events"]
            .as_array()?
            .iter()
            .filter(|e| e["event"] == "chunk_refused")
            .count() as u32;
        (n >= tern::engine::chunk::GIVE_UP_AFTER).then_some(v)
    });
    let given_up: Vec<&serde_json::Value> = v["agent"]["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["event"] == "chunk_given_up")
        .collect();
    assert_eq!(
        given_up.len(),
        1,
        "agent events: {}\n{}",
        v["agent"]["events"],
        c.logs()
    );
    let refused: Vec<&serde_json::Value> = v["ps_status"]["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["event"] == "chunk_refused")
        .collect();
    // The PS said why, each time, and of the chunk the agent gave up.
    assert_eq!(
        refused.len() as u32,
        tern::engine::chunk::GIVE_UP_AFTER,
        "PS events: {}",
        v["ps_status"]["events"]
    );
    assert!(
        refused.iter().all(|e| e["first"] == given_up[0]["first"]
            && e["error"].as_str().is_some_and(|s| !s.is_empty())),
        "PS events: {}",
        v["ps_status"]["events"]
    );
}
