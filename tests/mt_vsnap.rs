//! Issue 3 acceptance 4, and the MT CLI: a vsnap exported over NBD is read by
//! `qemu-img convert` and equals the model; a read-write vsnap takes writes
//! from `qemu-io` and leaves the pair untouched; physical images and reports.

mod util;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;

use tern::engine::journal::testkit::{Model, Workload, image_hash};
use tern::engine::journal::{PointSpec, RecordBody};
use tern::roles::mt::ReplicaPair;
use util::*;

const VOL: u64 = 64 << 20;

struct Vsnap {
    child: Child,
    url: String,
}

impl Drop for Vsnap {
    fn drop(&mut self) {
        // SIGTERM: the clean stop an operator's Ctrl-C gives.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let st = self.child.wait().unwrap();
        assert!(st.success(), "vsnap exited with {st}");
    }
}

fn vsnap(dir: &std::path::Path, data: &str, args: &[&str]) -> Vsnap {
    let mut child = Command::new(bin())
        .args(["mt", "vsnap", "p1", "--data", data, "--nbd", "127.0.0.1:0"])
        .args(args)
        .current_dir(dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let url = line.trim().rsplit(' ').next().unwrap().to_owned();
    assert!(url.starts_with("nbd://127.0.0.1:"), "{line}");
    Vsnap { child, url }
}

fn file_hash(p: &std::path::Path) -> blake3::Hash {
    blake3::hash(&std::fs::read(p).unwrap())
}

fn qemu(cmd: &str, args: &[&str]) -> String {
    let o = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{cmd}: {e} (scripts/install-test-deps installs it)"));
    assert!(
        o.status.success(),
        "{cmd} {args:?}: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn vsnaps_over_nbd_and_images_equal_the_model_and_never_touch_the_pair() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let data_p = dir.join("mt-data");
    let data = data_p.to_str().unwrap();
    let o = tern(
        dir,
        &[
            "mt",
            "pair-create",
            "p1",
            "--size",
            "64MiB",
            "--retention",
            "24h",
            "--data",
            data,
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));

    // Feed the pair (the pipeline's job later), remembering the model at a bookmark.
    let w = Workload::new(42, VOL);
    let mut model = Model::new(VOL);
    let (mut bm, mut bm_hash) = (String::new(), None);
    {
        let p = ReplicaPair::open(&data_p, "p1").unwrap();
        for i in 0..60 {
            let c = w.chunk(i);
            p.journal.apply(&c).unwrap();
            for r in &c {
                model.apply(r);
                if let RecordBody::Bookmark { name, .. } = &r.body
                    && i < 40
                {
                    bm = name.clone();
                    bm_hash = Some(model.hash());
                }
            }
        }
    }
    let bm_hash = bm_hash.expect("the workload has bookmarks");
    let latest = model.hash();

    // The CLI sees the pair and its bookmarks, and refuses a second opener.
    let o = tern(dir, &["mt", "bookmarks", "p1", "--data", data, "--json"]);
    let bms: Vec<serde_json::Value> = serde_json::from_slice(&o.stdout).unwrap();
    assert!(bms.iter().any(|b| b["name"] == bm.as_str()));

    // Read-only vsnap at the bookmark, read by qemu-img over NBD.
    let v = vsnap(dir, data, &["--at", &format!("tag:{bm}")]);
    let out = dir.join("bm.raw");
    qemu(
        "qemu-img",
        &[
            "convert",
            "-f",
            "raw",
            "-O",
            "raw",
            &v.url,
            out.to_str().unwrap(),
        ],
    );
    assert_eq!(
        file_hash(&out),
        bm_hash,
        "vsnap at tag:{bm} equals the model"
    );
    let info = qemu("qemu-img", &["info", "--output=json", &v.url]);
    assert!(info.contains(&format!("\"virtual-size\": {VOL}")), "{info}");
    // A read-only vsnap refuses writes.
    let o = Command::new("qemu-io")
        .args(["-f", "raw", "-c", "write -P 1 0 4k", &v.url])
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(
        !o.status.success()
            || text.contains("denied")
            || text.contains("read-only")
            || text.contains("failed"),
        "{text}"
    );
    assert!(
        !text.contains("wrote 4096/4096"),
        "a read-only vsnap took a write: {text}"
    );
    // While the vsnap is open, the pair is locked for other writers.
    let o = tern(dir, &["mt", "prune", "p1", "--data", data]);
    assert!(
        !o.status.success() && stderr(&o).contains("in use by another process"),
        "{}",
        stderr(&o)
    );
    drop(v);

    // Read-write vsnap at latest: qemu-io writes and reads back; the pair keeps its image.
    let v = vsnap(dir, data, &["--at", "latest", "--rw"]);
    qemu(
        "qemu-io",
        &[
            "-f",
            "raw",
            "-c",
            "write -P 0xab 1000 1M",
            "-c",
            "write -z 8M 64k",
            &v.url,
        ],
    );
    let r = qemu(
        "qemu-io",
        &[
            "-f",
            "raw",
            "-c",
            "read -P 0xab 1000 1M",
            "-c",
            "read -P 0 8M 64k",
            &v.url,
        ],
    );
    assert!(!r.contains("Pattern verification failed"), "{r}");
    let out2 = dir.join("rw.raw");
    qemu(
        "qemu-img",
        &[
            "convert",
            "-f",
            "raw",
            "-O",
            "raw",
            &v.url,
            out2.to_str().unwrap(),
        ],
    );
    let mut expect = model.image.clone();
    expect[1000..1000 + (1 << 20)].fill(0xab);
    expect[8 << 20..(8 << 20) + (64 << 10)].fill(0);
    assert_eq!(
        file_hash(&out2),
        blake3::hash(&expect),
        "vsnap shows its own writes over the image"
    );
    drop(v);
    {
        let p = ReplicaPair::open(&data_p, "p1").unwrap();
        let pin = p.journal.pin(&PointSpec::Latest).unwrap();
        assert_eq!(
            image_hash(VOL, |o, b| pin.read_at(o, b)).unwrap(),
            latest,
            "the pair is untouched"
        );
        assert!(
            std::fs::read_dir(&p.dir).unwrap().all(|e| !e
                .unwrap()
                .file_name()
                .to_string_lossy()
                .ends_with(".overlay")),
            "the overlay is gone"
        );
    }

    // A physical snapshot, sparse, with its hash printed.
    let img = dir.join("latest.raw");
    let o = tern(
        dir,
        &[
            "mt",
            "image",
            "p1",
            "--at",
            "latest",
            "--to",
            img.to_str().unwrap(),
            "--data",
            data,
            "--quiet",
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(file_hash(&img), latest);
    assert!(stdout(&o).contains(&latest.to_hex().to_string()));

    // Retention report.
    let o = tern(dir, &["mt", "retention", "p1", "--data", data, "--json"]);
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(r["window_policy_s"], 86400);
    assert_eq!(r["latest"]["seq"], 480);
    assert!(r["consistency_points"].as_u64().unwrap() > 0);

    // Outside the window: a clear error.
    let o = tern(
        dir,
        &[
            "mt",
            "image",
            "p1",
            "--at",
            "seq:999999",
            "--to",
            img.to_str().unwrap(),
            "--data",
            data,
        ],
    );
    assert!(
        stderr(&o).contains("outside the retention window"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn a_tracking_vsnap_replays_its_writes_onto_another_vsnap() {
    use tern::engine::journal::storage::FsStorage;
    use tern::engine::journal::vsnap::{Vsnap, VsnapMode};
    let tmp = tempfile::tempdir().unwrap();
    let p = ReplicaPair::create(tmp.path(), "p1", VOL, None, Default::default()).unwrap();
    let w = Workload::new(9, VOL);
    for i in 0..10 {
        p.journal.apply(&w.chunk(i)).unwrap();
    }
    let a = Vsnap::create(
        &p.journal,
        &PointSpec::Seq(40),
        VsnapMode::ReadWriteTracking,
        Arc::new(FsStorage),
        Some(tmp.path().join("a.ov")),
    )
    .unwrap();
    let b = Vsnap::create(
        &p.journal,
        &PointSpec::Seq(40),
        VsnapMode::ReadWrite,
        Arc::new(FsStorage),
        Some(tmp.path().join("b.ov")),
    )
    .unwrap();
    a.write_at(100, &[7u8; 5000]).unwrap();
    a.write_at(VOL - 512, &[9u8; 512]).unwrap();
    a.write_at(102, &[8u8; 3]).unwrap();
    assert_eq!(a.tracked(), vec![(100, 5000), (VOL - 512, 512), (102, 3)]);
    a.replay_onto(|o, d| b.write_at(o, d)).unwrap();
    let ha = image_hash(VOL, |o, buf| a.read_at(o, buf)).unwrap();
    let hb = image_hash(VOL, |o, buf| b.read_at(o, buf)).unwrap();
    assert_eq!(ha, hb);
    let mut x = [0u8; 8];
    a.read_at(100, &mut x).unwrap();
    assert_eq!(x, [7, 7, 8, 8, 8, 7, 7, 7]);
}

#[test]
fn the_running_mt_prunes_pairs_in_the_background() {
    use tern::engine::journal::policy::RetentionPolicy;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let data = dir.join("data");
    let w = Workload::new(3, VOL);
    let latest = {
        // Records from 2023 under a one-hour window: all but the last point are due.
        let policy = RetentionPolicy {
            window: Some(std::time::Duration::from_secs(3600)),
            ..Default::default()
        };
        let p = ReplicaPair::create(&data, "p1", VOL, None, policy).unwrap();
        for i in 0..20 {
            p.journal.apply(&w.chunk(i)).unwrap();
        }
        assert_eq!(p.journal.window().0.seq, 0);
        p.journal.last_seq()
    };
    let cfg = dir.join("up.toml");
    write(&cfg, "[mt]\nprune_interval = \"200ms\"\n");
    let mut up = Daemon::spawn(
        dir,
        "up",
        &[
            "up",
            "--config",
            cfg.to_str().unwrap(),
            "--data",
            data.to_str().unwrap(),
            "--api-listen",
            "127.0.0.1:0",
            "--data-listen",
            "127.0.0.1:0",
        ],
    );
    wait_for(30, "the pruner to move the oldest point", || {
        // The pruner holds the pair only briefly; retry when it is busy.
        let p = ReplicaPair::open(&data, "p1").ok()?;
        (p.journal.window().0.seq == latest).then_some(())
    });
    up.terminate();
    // The image is still the latest one, now entirely in the replica.
    let p = ReplicaPair::open(&data, "p1").unwrap();
    let mut model = Model::new(VOL);
    for i in 0..20 {
        w.chunk(i).iter().for_each(|r| model.apply(r));
    }
    assert_eq!(
        blake3::hash(&std::fs::read(&p.config.replica).unwrap()),
        model.hash()
    );
}
