//! Issue 4 acceptance 3 and 4: outages and kill -9 of agent, PS and MT,
//! each in its own process on loopback; every pair ends identical to its
//! source.

mod util;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use util::*;

const MIB: u64 = 1 << 20;

struct Node {
    name: String,
    cfg: PathBuf,
    daemon: Option<Daemon>,
    starts: u32,
}

struct Cluster {
    dir: PathBuf,
    cx_data: PathBuf,
    _cx: Daemon,
    nodes: Vec<Node>,
    src: PathBuf,
    nbd_port: u16,
}

impl Cluster {
    /// A CX, and an agent, a PS and an MT in their own processes.
    fn start(dir: &Path, vol: u64, buffer_cap: &str) -> Cluster {
        let cx_data = dir.join("cx-data");
        let cx_cfg = dir.join("cx.toml");
        write(
            &cx_cfg,
            &format!(
                "data_dir = \"{}\"\nroles = [\"cx\"]\n[node]\nname = \"cx\"\nheartbeat_interval = \"300ms\"\nreport_interval = \"200ms\"\n[cx]\napi_listen = \"127.0.0.1:0\"\nheartbeat_overdue = \"2s\"\n",
                cx_data.display()
            ),
        );
        let cx = Daemon::spawn(dir, "cx", &["serve", "--config", cx_cfg.to_str().unwrap()]);
        let url = wait_file(&cx_data.join("cx.url"), 30, &cx);
        let src = dir.join("src.img");
        let nbd_port = free_port();
        let mut nodes = Vec::new();
        for role in ["agent", "ps", "mt"] {
            let data = dir.join(format!("{role}-data"));
            let cfg = dir.join(format!("{role}.toml"));
            let mut text = format!(
                "data_dir = \"{}\"\nroles = [\"{role}\"]\n[node]\nname = \"{role}\"\ncx_url = \"{url}\"\ndata_listen = \"127.0.0.1:{}\"\nheartbeat_interval = \"300ms\"\nreport_interval = \"200ms\"\n",
                data.display(),
                free_port()
            );
            if role == "agent" {
                text.push_str(&format!(
                    "[agent]\nbuffer_cap = \"{buffer_cap}\"\nchunk_max = \"1MiB\"\nauto_resync_delay = \"0s\"\n[[agent.volumes]]\nname = \"vol\"\npath = \"{}\"\nsize = {vol}\nlisten = \"127.0.0.1:{nbd_port}\"\n",
                    src.display()
                ));
            }
            write(&cfg, &text);
            enroll(dir, &cx_data, &url, &cfg);
            nodes.push(Node {
                name: role.to_owned(),
                cfg,
                daemon: None,
                starts: 0,
            });
        }
        let mut c = Cluster {
            dir: dir.to_owned(),
            cx_data,
            _cx: cx,
            nodes,
            src,
            nbd_port,
        };
        for i in 0..3 {
            c.up(i);
        }
        c
    }

    fn up(&mut self, i: usize) {
        let n = &mut self.nodes[i];
        n.starts += 1;
        n.daemon = Some(Daemon::spawn(
            &self.dir,
            &format!("{}-{}", n.name, n.starts),
            &["serve", "--config", n.cfg.to_str().unwrap()],
        ));
    }

    fn kill9(&mut self, i: usize) {
        if let Some(mut d) = self.nodes[i].daemon.take() {
            let _ = d.child.kill();
            let _ = d.child.wait();
        }
    }

    fn stop(&mut self, i: usize) {
        if let Some(mut d) = self.nodes[i].daemon.take() {
            d.terminate();
        }
    }

    fn pid(&self, i: usize) -> u32 {
        self.nodes[i].daemon.as_ref().unwrap().child.id()
    }

    fn logs(&self) -> String {
        let mut s = String::new();
        for e in std::fs::read_dir(&self.dir).unwrap().flatten() {
            let p = e.path();
            if p.extension().is_some_and(|x| x == "log") {
                let t = std::fs::read_to_string(&p).unwrap_or_default();
                let lines: Vec<&str> = t.lines().collect();
                s.push_str(&format!("==> {} <==\n", p.display()));
                s.push_str(&lines[lines.len().saturating_sub(25)..].join("\n"));
                s.push('\n');
            }
        }
        s
    }

    fn tern(&self, args: &[&str]) -> serde_json::Value {
        let mut a = vec!["--data", self.cx_data.to_str().unwrap(), "--json"];
        a.extend_from_slice(args);
        let o = tern(&self.dir, &a);
        assert!(
            o.status.success(),
            "tern {args:?}: {}\n{}",
            stderr(&o),
            self.logs()
        );
        serde_json::from_slice(&o.stdout).unwrap_or_default()
    }

    fn try_pair(&self, name: &str) -> Option<serde_json::Value> {
        let o = tern(
            &self.dir,
            &[
                "--data",
                self.cx_data.to_str().unwrap(),
                "--json",
                "pair",
                "show",
                name,
            ],
        );
        o.status
            .success()
            .then(|| serde_json::from_slice(&o.stdout).unwrap())
    }

    fn url(&self) -> String {
        format!("nbd://127.0.0.1:{}/vol", self.nbd_port)
    }

    fn create_pair(&self) {
        wait_for(30, "the agent's volume report", || {
            let v = self.tern(&["agent", "volume", "list"]);
            v.as_array()?
                .iter()
                .any(|x| x["name"] == "vol" && x["export"].is_string())
                .then_some(())
        });
        self.tern(&[
            "pair",
            "create",
            "p",
            "--source",
            "agent:vol",
            "--ps",
            "ps",
            "--target",
            "mt",
        ]);
    }

    fn wait_caught_up(&self, secs: u64) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(secs);
        let since = unix_ms();
        loop {
            if let Some(v) = self.try_pair("p") {
                let agent_last = v["agent"]["last_seq"].as_u64();
                if v["status_as_of_ms"].as_u64().is_some_and(|t| t >= since)
                    && v["state"] == "differential-sync"
                    && v["transit_agent_bytes"] == 0
                    && v["transit_ps_bytes"] == 0
                    && agent_last.is_some()
                    && agent_last == v["mt"]["last_seq"].as_u64()
                    && v["latest_point"]["seq"].as_u64() == agent_last
                {
                    return v;
                }
                assert!(
                    Instant::now() < deadline,
                    "pair did not catch up: {}\n{}",
                    serde_json::to_string_pretty(&v).unwrap(),
                    self.logs()
                );
            }
            assert!(
                Instant::now() < deadline,
                "pair did not catch up\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The replica's latest image equals the source, byte for byte.
    fn assert_identical(&self) {
        let out = self.dir.join("latest.img");
        self.tern(&["pair", "image", "p", "--to", out.to_str().unwrap()]);
        let o = Command::new("qemu-img")
            .args(["compare", "-f", "raw", "-F", "raw"])
            .arg(&self.src)
            .arg(&out)
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "replica differs from the source: {}{}\n{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr),
            self.logs()
        );
    }
}

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

/// Acceptance 3: the MT is cut off under load (the PS caches), then the PS
/// is stopped with a small agent buffer (bitmap mode, memory bounded); each
/// time the pair drains back and the replica ends identical.
#[test]
fn mt_and_ps_outages_lose_nothing_and_bitmap_mode_bounds_memory() {
    let tmp = tempfile::tempdir().unwrap();
    let vol = 64 * MIB;
    let mut c = Cluster::start(tmp.path(), vol, "4MiB");
    c.create_pair();
    c.wait_caught_up(120);

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
    c.up(1);
    std::thread::sleep(Duration::from_secs(1));
    stop.store(true, Ordering::Relaxed);
    w.join().unwrap();
    c.wait_caught_up(120);
    c.assert_identical();
    let log = c.logs();
    assert!(log.contains("Bitmap"), "{log}");
}

/// Acceptance 4: 30 kill -9 of agent, PS and MT at random moments under
/// load; after recovery (and the resync an agent crash requires) the replica
/// is identical to the source.
#[test]
fn thirty_kill_nines_of_agent_ps_and_mt_end_identical() {
    let tmp = tempfile::tempdir().unwrap();
    let vol = 32 * MIB;
    let mut c = Cluster::start(tmp.path(), vol, "16MiB");
    c.create_pair();
    c.wait_caught_up(120);
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
    // An agent crash loses its memory: the logs say so and a resync ran.
    let log = c.logs();
    assert!(log.contains("ResyncStep1") || kills[0] == 0, "{log}");
}
