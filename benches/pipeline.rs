//! End-to-end replication figures: agent → PS → MT with the journal on, zstd
//! at the PS, all roles of the real binary on loopback.
//!
//! `cargo bench --bench pipeline` prints:
//! - sustained throughput (writes through the agent's NBD export as fast as
//!   they are taken, until the MT has applied everything) for 50%-compressible
//!   and incompressible data;
//! - RPO p50/p99 (sampled from `pair show` every 100 ms) with the workload at
//!   50% and 90% of that rate;
//! - the agent process's peak RSS against its buffer cap.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

#[path = "../tests/util/mod.rs"]
mod util;
use util::{aio_config, bin, rss_kib, volume};

struct Up {
    child: Child,
}

impl Drop for Up {
    fn drop(&mut self) {
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}

fn tern_json(dir: &Path, args: &[&str]) -> serde_json::Value {
    let data = dir.join("tern-data");
    let mut a = vec!["--data", data.to_str().unwrap(), "--json"];
    a.extend_from_slice(args);
    let o = Command::new(bin())
        .args(&a)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "tern {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    serde_json::from_slice(&o.stdout).unwrap_or_default()
}

const VOL: u64 = 2 << 30;
const CAP: &str = "256MiB";

fn start(dir: &Path) -> Up {
    let cfg = aio_config(
        dir,
        "bench.toml",
        &format!(
            "[log]\nlevel = \"warn\"\n[agent]\nbuffer_cap = \"{CAP}\"\n{}",
            volume(dir, VOL, "nbd")
        ),
    );
    let log = std::fs::File::create(dir.join("up.log")).unwrap();
    let child = Command::new(bin())
        .args([
            "serve",
            "--role",
            "cx,ps,mt,agent",
            "--config",
            cfg.to_str().unwrap(),
        ])
        .stdout(Stdio::from(log.try_clone().unwrap()))
        .stderr(Stdio::from(log))
        .spawn()
        .unwrap();
    let up = Up { child };
    let t0 = Instant::now();
    while !dir.join("tern-data/cx.url").exists() {
        assert!(t0.elapsed() < Duration::from_secs(30));
        std::thread::sleep(Duration::from_millis(50));
    }
    up
}

fn url(dir: &Path) -> String {
    let t0 = Instant::now();
    loop {
        let v = tern_json(dir, &["agent", "volume", "list"]);
        if let Some(u) = v
            .as_array()
            .and_then(|a| a.first())
            .and_then(|x| x["export"].as_str())
        {
            return u.to_owned();
        }
        assert!(t0.elapsed() < Duration::from_secs(30));
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Caught up as of a report taken at or after `since` (Unix ms).
fn caught_up(dir: &Path, pair: &str, since: u64) -> bool {
    let v = tern_json(dir, &["pair", "show", pair]);
    v["status_as_of_ms"].as_u64().is_some_and(|t| t >= since)
        && v["state"] == "differential-sync"
        && v["transit_agent_bytes"] == 0
        && v["transit_ps_bytes"] == 0
        && v["agent"]["last_seq"].as_u64().is_some()
        && v["agent"]["last_seq"] == v["mt"]["last_seq"]
}

fn wait_caught_up(dir: &Path, pair: &str) {
    let t0 = Instant::now();
    let since = util::unix_ms();
    while !caught_up(dir, pair, since) {
        assert!(
            t0.elapsed() < Duration::from_secs(600),
            "pair never caught up"
        );
        std::thread::sleep(Duration::from_millis(50));
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

fn main() {
    let only: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    for (label, c) in [("50% compressible", 0.5), ("incompressible", 0.0)] {
        if !only.is_empty() && !only.iter().any(|o| label.starts_with(o.as_str())) {
            continue;
        }
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let up = start(dir);
        let u = url(dir);
        tern_json(
            dir,
            &[
                "pair", "create", "p", "--source", "aio:vol", "--ps", "aio", "--target", "aio",
            ],
        );
        wait_caught_up(dir, "p");
        // Sustained: 20 s of writes as fast as they are taken, then drain.
        let secs = 20;
        let raw0 = tern_json(dir, &["pair", "show", "p"])["bytes_raw_ps"]
            .as_u64()
            .unwrap_or(0);
        let t0 = Instant::now();
        let mut w = workload(&u, "0", secs, c, 1);
        let mut peak = 0;
        while w.try_wait().unwrap().is_none() {
            peak = peak.max(rss_kib(up.child.id()));
            std::thread::sleep(Duration::from_millis(100));
        }
        let out: serde_json::Value =
            serde_json::from_slice(&w.wait_with_output().unwrap().stdout).unwrap();
        let bytes = out["bytes"].as_u64().unwrap();
        wait_caught_up(dir, "p");
        let took = t0.elapsed().as_secs_f64();
        let captured = out["mb_per_s"].as_f64().unwrap();
        let v = tern_json(dir, &["pair", "show", "p"]);
        // What crossed agent → PS → MT (overwrites coalesced in bitmap
        // mode cross once), over the time until the MT had all of it.
        let moved = v["bytes_raw_ps"].as_u64().unwrap() - raw0;
        let e2e = moved as f64 / took / 1e6;
        let ratio =
            v["ps_status"]["bytes_out"].as_f64().unwrap() / v["bytes_raw_ps"].as_f64().unwrap();
        println!(
            "pipeline {label}: {e2e:.1} MB/s end to end ({moved} bytes through the PS in {took:.1} s, until the MT had all; the workload wrote {bytes} bytes at {captured:.1} MB/s); PS out/in {ratio:.2}; peak RSS of the all-in-one process {} MiB with a {CAP} agent buffer",
            peak / 1024
        );
        // RPO at 50% and 90% of that rate.
        for frac in [0.5, 0.9] {
            let rate = format!("{}", (e2e * frac * 1e6) as u64);
            let mut w = workload(&u, &rate, 15, c, 2);
            let mut rpo = Vec::new();
            let t = Instant::now();
            while w.try_wait().unwrap().is_none() {
                if t.elapsed() > Duration::from_secs(2) {
                    let v = tern_json(dir, &["pair", "show", "p"]);
                    if let Some(r) = v["rpo_s"].as_f64() {
                        rpo.push(r);
                    }
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = w.wait();
            wait_caught_up(dir, "p");
            println!(
                "pipeline {label}: at {:.0}% ({:.1} MB/s) RPO p50 {:.2} s, p99 {:.2} s ({} samples)",
                frac * 100.0,
                e2e * frac,
                pct(&mut rpo, 0.5),
                pct(&mut rpo, 0.99),
                rpo.len()
            );
        }
        drop(up);
    }
}
