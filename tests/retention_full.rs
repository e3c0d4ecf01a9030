//! Issue 15 part 2, end to end: the MT's pairs directory on a small
//! loop-mounted ext4, filled under a steady workload through the agent's
//! NBD export, for both policies. The newest bookmark's image equals the
//! checksum taken through the export at that bookmark, before and after the
//! MT restarts on the full disk; `prune` drops the oldest points and says
//! so, `stop` stops and says so; replication resumes by itself once space
//! is freed. Needs root (mount) and qemu-utils.

mod util;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use util::*;

const MIB: u64 = 1 << 20;
const VOL: u64 = 32 * MIB;
const FS: u64 = 192 * MIB;
/// Data of the MT host's own on the retention filesystem, which the
/// operator deletes to make room.
const OTHER: u64 = 48 * MIB;

/// A loop-mounted ext4 that unmounts itself when dropped (after the daemons
/// using it are gone: declare it before the cluster).
struct LoopFs {
    mount: PathBuf,
}

impl LoopFs {
    fn new(image: &Path, mount: &Path) -> LoopFs {
        std::fs::create_dir_all(mount).unwrap();
        let f = std::fs::File::create(image).unwrap();
        f.set_len(FS).unwrap();
        let run = |cmd: &mut Command| {
            let o = cmd.output().expect("mkfs.ext4 / mount");
            assert!(
                o.status.success(),
                "{cmd:?}: {} (this test needs root and loop devices)",
                stderr(&o)
            );
        };
        run(Command::new("mkfs.ext4")
            .args(["-q", "-F", "-m", "0"])
            .arg(image));
        run(Command::new("mount")
            .args(["-o", "loop"])
            .arg(image)
            .arg(mount));
        LoopFs {
            mount: mount.to_owned(),
        }
    }

    fn free(&self) -> u64 {
        let o = Command::new("df")
            .args(["-B1", "--output=avail"])
            .arg(&self.mount)
            .output()
            .unwrap();
        stdout(&o)
            .lines()
            .nth(1)
            .and_then(|l| l.trim().parse().ok())
            .unwrap()
    }

    /// Write a file of `bytes` (or until the disk is full); returns its size.
    fn put(&self, name: &str, bytes: u64) -> u64 {
        let mut f = std::fs::File::create(self.mount.join(name)).unwrap();
        let block = vec![0x5au8; 1 << 16];
        let mut n = 0;
        while n < bytes {
            match f.write(&block[..(bytes - n).min(block.len() as u64) as usize]) {
                Ok(0) | Err(_) => break,
                Ok(k) => n += k as u64,
            }
        }
        let _ = f.sync_all();
        n
    }

    fn rm(&self, name: &str) {
        std::fs::remove_file(self.mount.join(name)).unwrap();
    }
}

impl Drop for LoopFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.mount).status();
    }
}

/// `n` writes of random data (incompressible: what the journal stores)
/// through the export, each up to 1 MiB.
fn write_batch(c: &Cluster, rng: &mut StdRng, n: usize) {
    let mut buf = vec![0u8; MIB as usize];
    let cmds: Vec<String> = (0..n)
        .map(|i| {
            // -s: the data comes from a file (its first `len` bytes).
            let data = c.dir.join(format!("batch-{i}.bin"));
            rng.fill(&mut buf[..]);
            std::fs::write(&data, &buf).unwrap();
            let len = rng.random_range(16..=256u64) * 4096;
            let off = rng.random_range(0..(VOL - len) / 4096) * 4096;
            format!("write -s {} {off} {len}", data.display())
        })
        .collect();
    qemu_io(&c.url(), &cmds);
}

/// Wait until the pair has sent what was written, checksum the export and
/// take a bookmark there. None if the pair cannot catch up now (stopped).
fn bookmark(c: &Cluster, name: &str, secs: u64) -> Option<(String, String)> {
    let since = unix_ms();
    let deadline = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < deadline {
        let v = c.try_pair("p").unwrap_or_default();
        if v["state"] == "stopped" {
            return None;
        }
        if is_caught_up(&v, since) {
            let want = c.export_hash();
            c.tern(&["bookmark", "p", "--name", name]);
            return Some((name.to_owned(), want));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    None
}

fn hash_at(c: &Cluster, at: &str) -> Option<String> {
    let v = c.try_tern(&["pair", "hash", "--wait", "p", "--at", at])?;
    v["result"]["blake3"].as_str().map(str::to_owned)
}

/// Bookmark names the MT lists (None while it cannot answer yet).
fn points(c: &Cluster) -> Option<Vec<String>> {
    let v = c.try_tern(&["pair", "points", "p"])?;
    Some(
        v["bookmarks"]
            .as_array()?
            .iter()
            .filter_map(|b| b["name"].as_str().map(str::to_owned))
            .collect(),
    )
}

fn alert_active(c: &Cluster, rule: &str, secs: u64) -> serde_json::Value {
    wait_for(secs, &format!("alert {rule}"), || {
        c.tern(&["alert", "list"])
            .as_array()?
            .iter()
            .find(|a| a["rule"] == rule)
            .cloned()
    })
}

fn setup(tmp: &Path, on_full: &str) -> (LoopFs, Cluster) {
    let mut c = Cluster::start(
        tmp,
        VOL,
        "buffer_cap = \"8MiB\"\nchunk_max = \"1MiB\"\nconsistency_interval = \"0s\"",
        "",
    );
    // The retention disk goes under the MT's pairs directory before any pair exists.
    c.kill9(2);
    let fs = LoopFs::new(&tmp.join("retention.img"), &tmp.join("mt-data/mt/pairs"));
    assert_eq!(fs.put("other-data", OTHER), OTHER);
    c.up(2);
    c.create_pair_with(&["--on-full", on_full]);
    c.wait_caught_up(120);
    (fs, c)
}

/// Both policies, to the point where the disk is full and the MT restarts on it.
fn fill_restart_and_resume(on_full: &str, seed: u64) {
    let tmp = tempfile::tempdir().unwrap();
    let (fs, mut c) = setup(tmp.path(), on_full);
    let mut rng = StdRng::seed_from_u64(seed);
    let t0 = Instant::now();
    let mut marks: Vec<(String, String)> = Vec::new();
    let mut round = 0;
    // Steady writes, a bookmark at a known checksum after each batch, until
    // the journal meets the disk's limit (prune: points dropped; stop: stopped).
    let full = loop {
        round += 1;
        assert!(
            t0.elapsed() < Duration::from_secs(300),
            "the retention disk never filled ({} free)\n{}",
            fs.free(),
            c.logs()
        );
        write_batch(&c, &mut rng, 24);
        let v = c.try_pair("p").unwrap_or_default();
        match on_full {
            "stop" if v["state"] == "stopped" => break v,
            "prune" if v["mt"]["retention_resets"].as_u64() > Some(1) => break v,
            _ => {}
        }
        if let Some(m) = bookmark(&c, &format!("b{round}"), 60) {
            marks.push(m);
        }
    };
    eprintln!(
        "{on_full}: full after {round} batches in {:.0?}: {} free; {}",
        t0.elapsed(),
        fs.free(),
        serde_json::to_string(&full["mt"]).unwrap()
    );
    let (newest, want) = marks
        .last()
        .cloned()
        .expect("bookmarks before the disk filled");
    match on_full {
        "stop" => {
            let why = full["stopped"].as_str().unwrap_or_default();
            assert!(
                why.contains("retention disk full") && why.contains("policy=stop"),
                "{full}"
            );
            assert_eq!(
                full["mt"]["retention_resets"].as_u64(),
                Some(0),
                "stop never drops a point: {full}"
            );
            let a = alert_active(&c, "retention-stopped", 30);
            eprintln!("alert: {}", a["message"]);
            // The agent keeps what it cannot send: in its buffer, then its bitmap.
            write_batch(&c, &mut rng, 16);
            wait_for(30, "the agent in bitmap mode", || {
                let v = c.try_pair("p")?;
                (v["agent"]["mode"] == "bitmap" || v["agent"]["dirty_bytes"].as_u64() > Some(0))
                    .then_some(())
            });
        }
        _ => {
            assert_ne!(full["state"], "stopped", "prune never stops: {full}");
            let a = alert_active(&c, "retention-reset", 30);
            let msg = a["message"].as_str().unwrap_or_default().to_owned();
            assert!(
                msg.contains("lost") && msg.contains("history now starts"),
                "{msg}"
            );
            eprintln!("alert: {msg}");
            // The budget held: the margin stayed free.
            let limit = full["mt"]["space_limit_bytes"].as_u64().unwrap();
            assert!(full["journal_bytes"].as_u64().unwrap() <= limit, "{full}");
        }
    }
    // Every point still listed is exact: the newest bookmark, now.
    let listed = points(&c).expect("points listed");
    assert!(listed.contains(&newest), "{newest} not in {listed:?}");
    assert_eq!(hash_at(&c, &format!("tag:{newest}")), Some(want.clone()));

    // Someone fills what is left; the MT restarts on the full disk.
    let filler = fs.put("filler", u64::MAX);
    eprintln!("{on_full}: filler of {filler} bytes; {} free", fs.free());
    if on_full == "stop" {
        c.kill9(2);
    } else {
        c.stop(2);
    }
    c.up(2);
    let after = wait_for(60, "the pair's points after the MT restart", || {
        let v = c.try_pair("p")?;
        v["latest_point"]["seq"].as_u64()?;
        let l = points(&c)?;
        l.contains(&newest).then_some(l)
    });
    assert!(
        marks
            .iter()
            .all(|(n, _)| after.contains(n) || on_full == "prune"),
        "stop keeps every bookmark: {after:?}"
    );
    assert_eq!(
        hash_at(&c, &format!("tag:{newest}")),
        Some(want.clone()),
        "the newest bookmark after the restart on a full disk\n{}",
        c.logs()
    );
    if on_full == "stop" {
        let v = wait_for(60, "the pair shown stopped after the restart", || {
            let v = c.try_pair("p")?;
            (v["state"] == "stopped").then_some(v)
        });
        assert!(
            v["stopped"]
                .as_str()
                .unwrap()
                .contains("retention disk full")
        );
    }

    // Space is freed: replication resumes by itself, no restart.
    fs.rm("filler");
    fs.rm("other-data");
    write_batch(&c, &mut rng, 8);
    let since = unix_ms();
    let v = wait_for(180, "replication to resume and catch up", || {
        c.caught_up(since)
    });
    assert_eq!(v["state"], "differential-sync");
    assert!(v["stopped"].is_null(), "{v}");
    let want_now = c.export_hash();
    assert_eq!(
        hash_at(&c, "latest"),
        Some(want_now),
        "after space returned, the latest point equals the source\n{}",
        c.logs()
    );
    // And the old bookmark is still exact.
    assert_eq!(hash_at(&c, &format!("tag:{newest}")), Some(want));
    eprintln!(
        "{on_full}: {} bookmarks, {} listed after the restart, resumed; {:.0?} in all",
        marks.len(),
        after.len(),
        t0.elapsed()
    );
    drop(c);
    drop(fs);
}

#[test]
fn a_full_retention_disk_under_prune_drops_oldest_points_and_keeps_the_rest_exact() {
    fill_restart_and_resume("prune", 1);
}

#[test]
fn a_full_retention_disk_under_stop_stops_keeps_every_point_and_resumes() {
    fill_restart_and_resume("stop", 2);
}
