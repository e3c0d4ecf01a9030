//! Issue 4 acceptance: the replication pipeline with real roles on loopback,
//! written to by qemu-io over the agent's NBD export.

mod util;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use util::*;

const MIB: u64 = 1 << 20;

fn config(dir: &Path, vol_size: u64, buffer_cap: &str) -> PathBuf {
    aio_config(
        dir,
        "aio.toml",
        &format!(
            "[agent]\nbuffer_cap = \"{buffer_cap}\"\nchunk_max = \"4MiB\"\nauto_resync_delay = \"0s\"\n{}",
            volume(dir, vol_size, "nbd")
        ),
    )
}

impl Site {
    fn start(dir: &Path, vol_size: u64, prefill: bool) -> Site {
        let src = dir.join("src.img");
        if prefill {
            // Random data, with holes: fast resync must copy most of it.
            let mut rng = StdRng::seed_from_u64(5);
            let f = std::fs::File::create(&src).unwrap();
            f.set_len(vol_size).unwrap();
            let mut buf = vec![0u8; MIB as usize];
            for i in 0..vol_size / MIB {
                if i % 4 == 3 {
                    continue;
                }
                rng.fill(&mut buf[..]);
                std::os::unix::fs::FileExt::write_all_at(&f, &buf, i * MIB).unwrap();
            }
        }
        let cfg = config(dir, vol_size, "32MiB");
        Site::start_cfg(dir, &cfg)
    }
}

/// Random writes (512 B .. 1 MiB, sector aligned) and some zeroes.
fn random_writes(rng: &mut StdRng, vol: u64, n: usize) -> Vec<String> {
    (0..n)
        .map(|_| {
            let len = rng.random_range(1..=2048u64) * 512;
            let off = rng.random_range(0..(vol - len) / 512) * 512;
            if rng.random_bool(0.1) {
                format!("write -z {off} {len}")
            } else {
                format!("write -P {} {off} {len}", rng.random_range(1..=255u8))
            }
        })
        .collect()
}

fn file_hash(p: &Path) -> String {
    blake3::hash(&std::fs::read(p).unwrap())
        .to_hex()
        .to_string()
}

/// Acceptance 1: writes during step I, step II and differential sync; the
/// replica ends identical and images at 10 bookmarks equal the source then.
#[test]
fn writes_through_resync_and_differential_sync_arrive_exactly() {
    let tmp = tempfile::tempdir().unwrap();
    let vol = 256 * MIB;
    let site = Site::start(tmp.path(), vol, true);
    let url = site.nbd_url();
    let mut rng = StdRng::seed_from_u64(42);

    site.create_pair("p1", &[]);
    // Write while step I runs (qemu-io connections back to back).
    let mut saw = std::collections::BTreeSet::new();
    let mut modes = std::collections::BTreeSet::new();
    let t0 = Instant::now();
    loop {
        assert!(
            t0.elapsed() < Duration::from_secs(180),
            "no differential sync; saw {saw:?}\n{}",
            tail(&site.up.log())
        );
        let v = site.pair("p1");
        modes.extend(pair_events(&v, "agent"));
        let st = v["state"].as_str().unwrap_or("").to_owned();
        saw.insert(st.clone());
        match st.as_str() {
            "differential-sync" if saw.len() > 1 => break,
            // Heavy writes while step I copies; light ones while step II drains.
            "resync-step-1" | "connecting" | "unknown" => {
                qemu_io(&url, &random_writes(&mut rng, vol, 40))
            }
            _ => {
                qemu_io(&url, &random_writes(&mut rng, vol, 3));
                std::thread::sleep(Duration::from_millis(300));
            }
        }
    }
    // 10 recorded points in differential sync.
    let mut points = Vec::new();
    for i in 0..10 {
        qemu_io(&url, &random_writes(&mut rng, vol, 30));
        let name = format!("r{i}");
        site.tern(&["bookmark", "p1", "--name", &name]);
        points.push((name, file_hash(&site.src)));
    }
    qemu_io(&url, &random_writes(&mut rng, vol, 30));
    wait_caught_up(&site, "p1", 120);
    modes.extend(pair_events(&site.pair("p1"), "agent"));
    assert!(
        modes.contains("mode:resync-step1") && modes.contains("mode:differential"),
        "mode changes: {modes:?} (states seen {saw:?})"
    );
    assert!(
        modes.contains("mode:resync-step2"),
        "writes behind the step I cursor must make a step II: {modes:?}"
    );

    // The replica's latest image equals the source, byte for byte.
    let out = tmp.path().join("replica-latest.img");
    site.tern(&[
        "pair",
        "image",
        "--wait",
        "p1",
        "--to",
        out.to_str().unwrap(),
    ]);
    if let Err(e) = qemu_img_compare(&site.src, &out) {
        panic!("qemu-img compare: {e}");
    }
    for (name, want) in &points {
        let v = site.tern(&[
            "pair",
            "hash",
            "--wait",
            "p1",
            "--at",
            &format!("tag:{name}"),
        ]);
        assert_eq!(
            v["result"]["blake3"].as_str(),
            Some(want.as_str()),
            "image at bookmark {name}"
        );
    }
    // The pair reports what an operator needs.
    let v = site.pair("p1");
    assert_eq!(v["rpo_s"], 0.0);
    assert!(
        v["fast_resync_unmatched_pct"].as_f64().unwrap() > 50.0,
        "{v}"
    );
    assert!(v["bytes_raw_ps"].as_u64().unwrap() > 0);
}

/// Acceptance 5: corrupted, truncated, replayed, foreign and unauthenticated
/// chunks are refused with a clear error and nothing is applied.
#[test]
fn bad_chunks_are_refused_and_nothing_is_applied() {
    let tmp = tempfile::tempdir().unwrap();
    let vol = 16 * MIB;
    let site = Site::start(tmp.path(), vol, false);
    let url = site.nbd_url();
    site.create_pair("p2", &["--compression", "none"]);
    qemu_io(&url, &["write -P 7 0 65536".to_owned()]);
    let before = wait_caught_up(&site, "p2", 60);
    let last = before["mt"]["last_seq"].as_u64().unwrap();
    let uuid: [u8; 16] = hex::decode(before["uuid"].as_str().unwrap())
        .unwrap()
        .try_into()
        .unwrap();

    // Chunks signed by the node's own certificate (the agent's identity).
    let id = tern::engine::pki::Identity::load(&site.data.join("pki")).unwrap();
    let client = tern::engine::transport::client(&id.ca_pem, Some(&id)).unwrap();
    let anon = tern::engine::transport::client(&id.ca_pem, None).unwrap();
    let data_addr = std::fs::read_to_string(site.data.join("data.addr")).unwrap();
    let base = format!("https://{}/data/v1/ps/p2", data_addr.trim());
    use tern::engine::chunk::{Codec, WireRecord, encode};
    use tern::engine::journal::{Record, RecordBody};
    let rec = |seq: u64| WireRecord {
        record: Record {
            seq,
            ts_us: 1,
            body: RecordBody::Write {
                offset: 0,
                data: vec![0xEE; 4096].into(),
            },
        },
        inconsistent: false,
    };
    let good = encode(uuid, &[rec(last + 1)], Codec::None);
    let mut corrupt = good.clone();
    *corrupt.last_mut().unwrap() ^= 1;
    let truncated = good[..good.len() - 10].to_vec();
    let foreign = encode([9; 16], &[rec(last + 1)], Codec::None);
    let replayed_old = encode(uuid, &[rec(last)], Codec::None);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let put_q = |c: &reqwest::Client, body: Vec<u8>, first: u64, q: &str| {
        rt.block_on(async {
            match c
                .put(format!("{base}/chunk/{first}{q}"))
                .body(body)
                .send()
                .await
            {
                Ok(r) => {
                    let s = r.status().as_u16();
                    (s, r.json::<serde_json::Value>().await.unwrap_or_default())
                }
                Err(e) => (0, serde_json::json!({"error": e.to_string()})),
            }
        })
    };
    let put = |c: &reqwest::Client, body: Vec<u8>, first: u64| put_q(c, body, first, "");
    // A chunk of a session the agent has since replaced (the agent opened
    // its own with its cursor call) is dropped, however valid.
    let (s, v) = put_q(&client, good.clone(), last + 1, "?session=3");
    assert_eq!(s, 409, "{v}");
    assert_eq!(v["stale_session"], true, "{v}");
    for (what, body, want) in [
        ("corrupted", corrupt, "checksum"),
        ("truncated", truncated, "truncated"),
        ("foreign", foreign, "another pair"),
    ] {
        let (s, v) = put(&client, body, last + 1);
        assert_eq!(s, 400, "{what}: {v}");
        let e = v["error"].as_str().unwrap();
        assert!(e.contains(want) && e.contains("refused"), "{what}: {e}");
    }
    // A replay of an applied seq is acknowledged as a duplicate, not applied.
    let (s, v) = put(&client, replayed_old, last);
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["duplicate"], true, "{v}");
    // No client certificate: the TLS handshake itself is refused.
    let (s, _) = put(&anon, good.clone(), last + 1);
    assert_eq!(
        s, 0,
        "a request without a client certificate must not get an answer"
    );
    std::thread::sleep(Duration::from_millis(800));
    let after = site.pair("p2");
    assert_eq!(after["mt"]["last_seq"].as_u64(), Some(last), "{after}");
    let v = site.tern(&["pair", "hash", "--wait", "p2"]);
    let mut want = vec![0u8; vol as usize];
    want[..65536].fill(7);
    assert_eq!(
        v["result"]["blake3"].as_str().unwrap(),
        blake3::hash(&want).to_hex().as_str()
    );
}

/// Undo mounts and loop devices even when the test fails.
struct Cleanup(Vec<Vec<String>>);
impl Drop for Cleanup {
    fn drop(&mut self) {
        for c in self.0.iter().rev() {
            let _ = Command::new(&c[0]).args(&c[1..]).output();
        }
    }
}

fn sh(args: &[&str]) -> String {
    let o = Command::new(args[0]).args(&args[1..]).output().unwrap();
    assert!(
        o.status.success(),
        "{args:?}: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).trim().to_owned()
}

/// Acceptance 2: ext4 on a loop device over the FUSE capture; an `fs`
/// bookmark (FIFREEZE) gives an image that passes fsck and holds exactly the
/// files written before it.
#[test]
fn ext4_over_fuse_capture_fs_bookmark_is_consistent() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let fusemnt = dir.join("fuse");
    let mnt = dir.join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    let cfg = aio_config(
        dir,
        "fuse.toml",
        &format!(
            "[agent]\nbuffer_cap = \"32MiB\"\nconsistency_interval = \"1s\"\n{}mount = \"{}\"\nfs_mount = \"{}\"\n",
            volume(dir, 64 * MIB, "fuse"),
            fusemnt.display(),
            mnt.display(),
        ),
    );
    let site = Site::start_cfg(dir, &cfg);
    let v = site.volume("vol", |x| x["export"].is_string());
    let file = PathBuf::from(v["export"].as_str().unwrap());
    assert_eq!(file, fusemnt.join("vol"));
    site.create_pair("fs", &[]);
    wait_caught_up(&site, "fs", 60);
    let mut guard = Cleanup(Vec::new());
    let loopdev = sh(&[
        "losetup",
        "--find",
        "--show",
        "--direct-io=on",
        file.to_str().unwrap(),
    ]);
    guard
        .0
        .push(vec!["losetup".into(), "-d".into(), loopdev.clone()]);
    sh(&["mkfs.ext4", "-q", "-F", &loopdev]);
    sh(&["mount", &loopdev, mnt.to_str().unwrap()]);
    guard
        .0
        .push(vec!["umount".into(), mnt.to_str().unwrap().into()]);
    let mut rng = StdRng::seed_from_u64(9);
    let mut before = std::collections::BTreeMap::new();
    for i in 0..6 {
        let mut b = vec![0u8; rng.random_range(1..2_000_000)];
        rng.fill(&mut b[..]);
        std::fs::write(mnt.join(format!("a{i}")), &b).unwrap();
        before.insert(format!("a{i}"), blake3::hash(&b));
    }
    // No sync: the freeze must flush what the page cache holds.
    site.tern(&["bookmark", "fs", "--name", "before", "--type", "fs"]);
    for i in 0..4 {
        let mut b = vec![0u8; 500_000];
        rng.fill(&mut b[..]);
        std::fs::write(mnt.join(format!("b{i}")), &b).unwrap();
    }
    std::fs::remove_file(mnt.join("a0")).unwrap();
    sh(&["sync"]);
    wait_caught_up(&site, "fs", 60);

    let img = dir.join("before.img");
    site.tern(&[
        "pair",
        "image",
        "--wait",
        "fs",
        "--at",
        "tag:before",
        "--to",
        img.to_str().unwrap(),
    ]);
    sh(&["e2fsck", "-fn", img.to_str().unwrap()]);
    let check = dir.join("check");
    std::fs::create_dir_all(&check).unwrap();
    sh(&[
        "mount",
        "-o",
        "ro,loop",
        img.to_str().unwrap(),
        check.to_str().unwrap(),
    ]);
    guard
        .0
        .push(vec!["umount".into(), check.to_str().unwrap().into()]);
    let mut found = std::collections::BTreeMap::new();
    for e in std::fs::read_dir(&check).unwrap().flatten() {
        let n = e.file_name().to_string_lossy().into_owned();
        if n == "lost+found" {
            continue;
        }
        found.insert(n, blake3::hash(&std::fs::read(e.path()).unwrap()));
    }
    assert_eq!(
        found, before,
        "the image at the fs bookmark holds exactly the files written before it"
    );
    // Periodic consistency bookmarks (fs, once the filesystem is mounted):
    // one every second in differential sync; wait (bounded) for the first.
    wait_for(30, "a periodic consistency bookmark", || {
        let v = site.tern(&["pair", "points", "fs"]);
        v["bookmarks"]
            .as_array()?
            .iter()
            .any(|b| {
                b["name"]
                    .as_str()
                    .unwrap_or("")
                    .starts_with("tern:periodic-")
            })
            .then_some(())
    });
    drop(guard);
}

/// `tern up --demo`: a demo volume, a pair and a workload, replicating at
/// once; `tern workload` writes compressible data the PS compresses.
#[test]
fn up_demo_replicates_at_once_and_workload_compresses() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let data = dir.join("tern-data");
    let d = data.to_str().unwrap();
    let mut up = Daemon::spawn(
        dir,
        "up",
        &[
            "up",
            "--demo",
            "--data",
            d,
            "--api-listen",
            "127.0.0.1:0",
            "--data-listen",
            "127.0.0.1:0",
        ],
    );
    wait_file(&data.join("cx.url"), 30, &up);
    let show = || {
        let o = tern(dir, &["--data", d, "--json", "pair", "show", "demo"]);
        o.status
            .success()
            .then(|| serde_json::from_slice::<serde_json::Value>(&o.stdout).unwrap())
    };
    let v = wait_for(90, "the demo pair to replicate", || {
        let v = show()?;
        (v["state"] == "differential-sync"
            && v["bytes_captured"].as_u64()? > 0
            && v["latest_point"]["seq"].as_u64()? > 0)
            .then_some(v)
    });
    assert!(v["rpo_s"].as_f64().unwrap() < 60.0, "{v}");
    let o = tern(
        dir,
        &[
            "--json",
            "workload",
            "--nbd",
            "nbd://127.0.0.1:10809/demo",
            "--rate",
            "0",
            "--duration",
            "2s",
            "--block",
            "64k..256k",
            "--compressibility",
            "0.5",
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let w: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(w["bytes"].as_u64().unwrap() > 1 << 20, "{w}");
    let v = wait_for(60, "PS statistics", || {
        let v = show()?;
        (v["bytes_raw_ps"].as_u64()? > w["bytes"].as_u64()?).then_some(v)
    });
    let ratio = v["bytes_in_ps"].as_f64().unwrap() / v["bytes_raw_ps"].as_f64().unwrap();
    assert!(
        ratio > 0.9,
        "agent sends uncompressed for compression=ps: {ratio}"
    );
    let out_ratio =
        v["ps_status"]["bytes_out"].as_f64().unwrap() / v["bytes_raw_ps"].as_f64().unwrap();
    assert!(
        out_ratio < 0.8,
        "the PS compresses half-zero data: {out_ratio}"
    );
    let out = std::fs::read_to_string(&up.log).unwrap();
    assert!(out.contains("demo:"), "{out}");
    up.terminate();
}

/// Capture `scan`: writes made behind the agent's back (straight to the
/// backing file) reach the replica at the next scan pass.
#[test]
fn scan_capture_sends_what_changed_at_each_pass() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let src = dir.join("src.img");
    let cfg = aio_config(
        dir,
        "scan.toml",
        &format!(
            "[agent]\nscan_interval = \"1s\"\n{}",
            volume(dir, 16 * MIB, "scan")
        ),
    );
    let site = Site::start_cfg(dir, &cfg);
    site.volume("vol", |_| true);
    site.create_pair("s", &[]);
    let f = std::fs::OpenOptions::new().write(true).open(&src).unwrap();
    for round in 0..3u8 {
        let off = round as u64 * 3 * MIB + 12345;
        std::os::unix::fs::FileExt::write_all_at(&f, &vec![round + 1; 700_000], off).unwrap();
        f.sync_all().unwrap();
        let want = file_hash(&src);
        wait_for(60, "a scan pass to carry the change", || {
            let v = site.try_tern(&["pair", "hash", "--wait", "s"])?;
            (v["result"]["blake3"].as_str()? == want).then_some(())
        });
    }
    let v = site.tern(&["pair", "points", "s"]);
    let names: Vec<&str> = v["bookmarks"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|b| b["name"].as_str())
        .collect();
    assert!(names.contains(&"tern:scan-pass"), "{v}");
}

/// The PS's bandwidth cap towards an MT holds: ~6 MB of incompressible
/// writes through a 2 MB/s cap cannot all be applied in under ~2.4 s.
#[test]
fn ps_bandwidth_cap_holds() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let cfg = aio_config(
        dir,
        "bw.toml",
        &format!(
            "[ps]\nbandwidth = [\"*=2MB/s\"]\n[agent]\nchunk_max = \"1MiB\"\n{}",
            volume(dir, 16 * MIB, "nbd")
        ),
    );
    let site = Site::start_cfg(dir, &cfg);
    let url = site.nbd_url();
    site.create_pair("bw", &["--compression", "none"]);
    wait_caught_up(&site, "bw", 60);
    let t0 = Instant::now();
    let o = tern(
        dir,
        &[
            "--json",
            "workload",
            "--nbd",
            &url,
            "--rate",
            "3MB/s",
            "--duration",
            "2s",
            "--block",
            "1M..1M",
            "--compressibility",
            "0",
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let w: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let bytes = w["bytes"].as_u64().unwrap();
    wait_caught_up(&site, "bw", 120);
    // A lower bound only: the cap cannot be beaten, however fast the machine.
    // The limiter lets one second of budget and one chunk go at once.
    let floor = Duration::from_secs_f64((bytes as f64 - 2e6 - 1048576.0).max(0.0) / 2e6);
    assert!(
        t0.elapsed() >= floor,
        "{bytes} bytes applied in {:?} through a 2 MB/s cap",
        t0.elapsed()
    );
}

/// The PS's resync batch limit: with `ps.resync_batch = 1`, three new pairs
/// resync one at a time (the others show `resync-queued`), and each ends
/// identical to its source.
#[test]
fn resyncs_queue_behind_the_ps_batch_limit() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let size = 24 * MIB;
    let mut vols = String::new();
    let mut rng = StdRng::seed_from_u64(9);
    for v in ["v1", "v2", "v3"] {
        let mut data = vec![0u8; size as usize];
        rng.fill(&mut data[..]);
        std::fs::write(dir.join(format!("{v}.img")), &data).unwrap();
        vols += &volume_named(dir, v, &format!("{v}.img"), size, "nbd");
    }
    let cfg = aio_config(
        dir,
        "batch.toml",
        &format!(
            "[ps]\nresync_batch = 1\nbandwidth = [\"*=12MB/s\"]\n[agent]\nchunk_max = \"1MiB\"\n{vols}"
        ),
    );
    let site = Site::start_cfg(dir, &cfg);
    for v in ["v1", "v2", "v3"] {
        site.volume(v, |_| true);
    }
    for v in ["v1", "v2", "v3"] {
        let src = format!("aio:{v}");
        site.tern(&[
            "pair", "create", v, "--source", &src, "--ps", "aio", "--target", "aio",
        ]);
    }
    let mut saw_queued = false;
    let mut most = 0;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let l = site.tern(&["pair", "list"]);
        let states: Vec<String> = l
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["state"].as_str().unwrap_or("").to_owned())
            .collect();
        let copying = states
            .iter()
            .filter(|s| s.starts_with("resync-step"))
            .count();
        most = most.max(copying);
        saw_queued |= states.iter().any(|s| s == "resync-queued");
        assert!(copying <= 1, "more than one resync at once: {states:?}");
        if states.iter().all(|s| s == "differential-sync") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "resyncs did not finish: {states:?}\nlog:\n{}",
            tail(&site.up.log())
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(saw_queued, "no pair was ever queued");
    assert_eq!(most, 1);
    for v in ["v1", "v2", "v3"] {
        wait_caught_up(&site, v, 60);
        let want = file_hash(&dir.join(format!("{v}.img")));
        let got = site.tern(&["pair", "hash", "--wait", v]);
        assert_eq!(
            got["result"]["blake3"].as_str(),
            Some(want.as_str()),
            "pair {v}"
        );
    }
}

/// The PS and the MT on a second host (a network namespace over a veth
/// link), their data ports on the shipped wildcard bind: the CX tells the
/// agent and the PS the address their heartbeats come from, each dials it
/// and verifies the certificate enrollment gave that address, and writes
/// arrive. (With the wildcard advertised as loopback, as before, the agent
/// dialled its own host and nothing moved.)
#[test]
fn ps_and_mt_on_another_host_are_reached_at_their_link_address() {
    let tmp = tempfile::tempdir().unwrap();
    let vol = 32 * MIB;
    let c = Cluster::start_two_hosts(tmp.path(), vol, "", "");
    let ns_ip = c.netns.as_ref().unwrap().ns_ip.clone();
    let hosts = wait_for(30, "the PS and MT heartbeats", || {
        let v = c.tern(&["host", "list"]);
        let addr = |name: &str| {
            v.as_array()?.iter().find(|h| h["name"] == name)?["data_addr"]
                .as_str()
                .map(str::to_owned)
        };
        Some((addr("ps")?, addr("mt")?))
    });
    for a in [&hosts.0, &hosts.1] {
        assert!(a.starts_with(&format!("{ns_ip}:")), "{hosts:?}");
    }
    c.create_pair();
    c.wait_caught_up(120);
    let mut rng = StdRng::seed_from_u64(11);
    let mut cmd = Command::new("qemu-io");
    cmd.args(["-f", "raw", &c.url()]);
    for w in random_writes(&mut rng, vol, 40) {
        cmd.args(["-c", &w]);
    }
    let o = cmd.output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    c.wait_caught_up(120);
    c.assert_identical();
}
