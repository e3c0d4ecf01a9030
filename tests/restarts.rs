//! Issue 15: restarts of agent, PS, MT and CX in any order, clean stops and
//! kill -9, with the CX down for part of the time and writes in every
//! window, lose no acknowledged write: the latest point ends equal to the
//! source, every bookmark's image equals the checksum taken through the
//! export when it was made, and the pair never claims a differential sync
//! it cannot prove.

mod util;

use std::process::Command;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use util::*;

const MIB: u64 = 1 << 20;
const VOL: u64 = 32 * MIB;
const AGENT: usize = 0;
const CX: usize = 3;

/// A batch of `n` writes through the export, retried (bounded) while the
/// agent is still starting. Returns once qemu-io has had every write
/// acknowledged.
fn write_batch(c: &Cluster, rng: &mut StdRng, n: usize) {
    let cmds: Vec<String> = (0..n)
        .map(|_| {
            let len = rng.random_range(1..=64u64) * 4096;
            let off = rng.random_range(0..(VOL - len) / 4096) * 4096;
            format!("write -P {} {off} {len}", rng.random_range(1..=255u8))
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut q = Command::new("qemu-io");
        q.args(["-f", "raw", &c.url()]);
        for x in &cmds {
            q.args(["-c", x]);
        }
        let o = q.output().expect("qemu-io (apt install qemu-utils)");
        let out = String::from_utf8_lossy(&o.stdout);
        if o.status.success() && !out.contains("failed") {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "writes through {} kept failing: {out}{}\n{}",
            c.url(),
            String::from_utf8_lossy(&o.stderr),
            c.logs()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// With no write running since `since` (Unix ms): a pair that claims to
/// be caught up (differential sync, nothing in transit, the MT at the
/// agent's last record, fresh reports) must hold exactly what the export
/// serves. Returns whether it made the claim.
fn check_claim(c: &Cluster, since: u64) -> bool {
    let Some(v) = c.try_pair("p") else {
        return false;
    };
    if !is_caught_up(&v, since) {
        return false;
    }
    let want = c.export_hash();
    let got = c.tern(&["pair", "hash", "--wait", "p", "--at", "latest"]);
    assert_eq!(
        got["result"]["blake3"].as_str(),
        Some(want.as_str()),
        "the pair claims to be caught up but its latest point differs from the source: {v}\n{}",
        c.logs()
    );
    true
}

#[test]
fn fifty_restarts_in_any_order_lose_no_acknowledged_write() {
    let tmp = tempfile::tempdir().unwrap();
    let mut c = Cluster::with_pair(
        tmp.path(),
        VOL,
        "buffer_cap = \"8MiB\"\nchunk_max = \"1MiB\"\nconsistency_interval = \"0s\"",
        "",
        120,
    );
    let seed = std::env::var("TERN_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(15);
    eprintln!("seed {seed} (TERN_TEST_SEED)");
    let mut rng = StdRng::seed_from_u64(seed);
    let t0 = Instant::now();
    let mut restarts = [0u32; 4];
    let mut kills = 0;
    let mut cx_down_rounds = 0u32;
    let mut agent_restarts_without_cx = 0;
    let mut bookmarks: Vec<(String, String)> = Vec::new();
    let mut round = 0;
    // Times the pair claimed to be caught up, each checked against the source.
    let mut claims = 0u32;
    while restarts.iter().sum::<u32>() < 52 {
        round += 1;
        assert!(
            t0.elapsed() < Duration::from_secs(600),
            "52 restarts took over 10 minutes ({restarts:?})"
        );
        let i = rng.random_range(0..4usize);
        let kill9 = rng.random_bool(0.5);
        if i == CX {
            if !c.cx_is_up() {
                continue;
            }
            c.cx_down(kill9);
            // Stay down for the next few rounds: agents, PSs and MTs
            // restart and the source is written while nobody can ask the CX.
            cx_down_rounds = rng.random_range(1..=4);
        } else if kill9 {
            c.kill9(i);
        } else {
            c.stop(i);
        }
        kills += kill9 as u32;
        restarts[i] += 1;
        // Writes while it is down (the source is down with the agent).
        if i != AGENT {
            write_batch(&c, &mut rng, 8);
        }
        std::thread::sleep(Duration::from_millis(rng.random_range(0..400)));
        if i != CX {
            c.up(i);
            if i == AGENT && !c.cx_is_up() {
                agent_restarts_without_cx += 1;
            }
        }
        // Writes at once after the restart (the agent serves its volume
        // before it has heard of any pair).
        write_batch(&c, &mut rng, 8);
        if !c.cx_is_up() {
            cx_down_rounds = cx_down_rounds.saturating_sub(1);
            if cx_down_rounds == 0 {
                c.cx_up();
                write_batch(&c, &mut rng, 4);
            }
            continue;
        }
        let quiet = unix_ms();
        std::thread::sleep(Duration::from_millis(rng.random_range(0..1500)));
        claims += check_claim(&c, quiet) as u32;
        // Now and then a bookmark at a point whose content is known: no
        // write runs between the checksum and the bookmark.
        if round % 6 == 0 {
            let want = c.export_hash();
            let name = format!("b{round}");
            let o = tern(
                &c.dir,
                &[
                    "--data",
                    c.cx_data.to_str().unwrap(),
                    "--json",
                    "bookmark",
                    "p",
                    "--name",
                    &name,
                ],
            );
            if o.status.success() {
                bookmarks.push((name, want));
            } else {
                eprintln!("bookmark {name} not taken: {}", stderr(&o));
            }
        }
    }
    eprintln!(
        "{} restarts (agent, PS, MT, CX: {restarts:?}; {kills} by kill -9; {agent_restarts_without_cx} agent starts with the CX down; {claims} caught-up claims checked) in {:.0?}",
        restarts.iter().sum::<u32>(),
        t0.elapsed()
    );
    assert!(restarts.iter().all(|n| *n > 0), "{restarts:?}");
    assert!(
        agent_restarts_without_cx > 0,
        "the agent never restarted while the CX was down; change the seed"
    );
    c.cx_up();
    for n in 0..3 {
        if c.nodes[n].daemon.is_none() {
            c.up(n);
        }
    }
    write_batch(&c, &mut rng, 8);
    let want = c.export_hash();
    c.wait_caught_up(240);
    c.assert_identical();
    let latest = c.tern(&["pair", "hash", "--wait", "p", "--at", "latest"]);
    assert_eq!(
        latest["result"]["blake3"].as_str(),
        Some(want.as_str()),
        "latest point"
    );
    assert!(
        bookmarks.len() >= 4,
        "only {} bookmarks were taken",
        bookmarks.len()
    );
    for (name, want) in &bookmarks {
        let v = c.tern(&[
            "pair",
            "hash",
            "--wait",
            "p",
            "--at",
            &format!("tag:{name}"),
        ]);
        assert_eq!(
            v["result"]["blake3"].as_str(),
            Some(want.as_str()),
            "image at bookmark {name}\n{}",
            c.logs()
        );
    }
    eprintln!("{} bookmarks exact", bookmarks.len());
}

/// The reported bug: an agent stopped cleanly and started again while the
/// CX is unreachable serves its volume at once; what is written then must
/// reach the replica once the CX is back, and until it has, the pair must
/// not say "differential sync, RPO 0".
#[test]
fn writes_made_before_the_agent_hears_of_its_pair_are_replicated() {
    let tmp = tempfile::tempdir().unwrap();
    let mut c = Cluster::with_pair(tmp.path(), VOL, "buffer_cap = \"8MiB\"", "", 120);
    c.cx_down(false);
    c.stop(AGENT);
    c.up(AGENT);
    let mut rng = StdRng::seed_from_u64(1);
    // 30 writes of 64 KiB, as in the report.
    let cmds: Vec<String> = (0..30)
        .map(|i| {
            let off = rng.random_range(0..VOL / (64 << 10)) * (64 << 10);
            format!("write -P {} {off} 64k", 1 + i)
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    while Command::new("qemu-io")
        .args(["-f", "raw", &c.url(), "-c", "read 0 512"])
        .output()
        .map(|o| !o.status.success())
        .unwrap_or(true)
    {
        assert!(
            Instant::now() < deadline,
            "the agent never served its volume"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    qemu_io(&c.url(), &cmds);
    let want = c.export_hash();
    c.cx_up();
    // From the first report on, the pair may not claim to be in sync.
    let v = wait_for(60, "the agent's report of the pair", || {
        c.try_pair("p").filter(|v| !v["agent"].is_null())
    });
    assert!(
        v["state"] != "differential-sync" || v["transit_agent_bytes"].as_u64() > Some(0),
        "claims differential sync with 30 writes not replicated: {v}"
    );
    c.wait_caught_up(120);
    let latest = c.tern(&["pair", "hash", "--wait", "p", "--at", "latest"]);
    assert_eq!(latest["result"]["blake3"].as_str(), Some(want.as_str()));
    c.assert_identical();
}
