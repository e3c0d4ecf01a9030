//! Jobs with real roles on loopback: an image of a large sparse volume runs
//! as a job with progress and the hash of its point; a cancel stops it and
//! leaves no image; a CX killed with -9, or an MT restarted, while a job
//! runs leaves a job that finishes or says why not; bad input changes
//! nothing.

mod util;

use std::path::Path;
use std::time::{Duration, Instant};

use util::cluster::Cluster;
use util::*;

const GIB: u64 = 1 << 30;

/// Write `data` at `off` of the source volume through its NBD export.
fn write_at(c: &Cluster, off: u64, data: &[u8]) {
    let f = c.dir.join("piece.bin");
    std::fs::write(&f, data).unwrap();
    let o = std::process::Command::new("qemu-io")
        .args(["-f", "raw", "-c"])
        .arg(format!("write -s {} {off} {}", f.display(), data.len()))
        .arg(c.url())
        .output()
        .expect("qemu-io");
    assert!(o.status.success(), "qemu-io: {}", stderr(&o));
}

/// Start a job with `args` (no --wait): the job as the CX created it.
fn start(c: &Cluster, args: &[&str]) -> serde_json::Value {
    let v = c.tern(args);
    assert!(v["id"].is_u64(), "not a job: {v}");
    v
}

fn job(c: &Cluster, id: u64) -> Option<serde_json::Value> {
    c.try_tern(&["job", "show", &id.to_string()])
}

fn wait_job(c: &Cluster, id: u64, secs: u64) -> serde_json::Value {
    wait_for(secs, &format!("job {id} to end"), || {
        job(c, id).filter(|j| {
            ["succeeded", "failed", "cancelled"].contains(&j["state"].as_str().unwrap_or(""))
        })
    })
}

fn no_partials(dir: &Path) {
    let left: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".tern-partial"))
        .map(|e| e.path())
        .collect();
    assert!(left.is_empty(), "partial images left: {left:?}");
}

/// A 120 GiB sparse volume with a few changes: the image job reports
/// progress, finishes, and its BLAKE3 is the hash job's at that point; the
/// image file is the one the hash names. A cancelled image job stops
/// within 2 s and leaves no file, partial or whole.
#[test]
fn an_image_of_a_large_volume_is_a_job_and_a_cancel_leaves_nothing() {
    let d = tempfile::tempdir().unwrap();
    // Thin replica: this disk need not hold 120 GiB.
    let c = Cluster::with_pair(
        d.path(),
        120 * GIB,
        "",
        "[mt]\npreallocate_replica = false\n",
        600,
    );
    let mut seed = 1u64;
    let mut pieces = vec![];
    for off in [0, 7 * GIB + 4096, 64 * GIB, 120 * GIB - (1 << 20)] {
        let piece: Vec<u8> = (0..(1 << 20))
            .map(|_| {
                seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
                (seed >> 56) as u8
            })
            .collect();
        write_at(&c, off, &piece);
        pieces.push((off, piece));
    }
    let since = unix_ms();
    wait_for(120, "the writes to reach the replica", || {
        c.caught_up(since)
    });
    let points = c.tern(&["pair", "points", "p"]);
    let seq = points["latest"]["seq"].as_u64().expect("a latest point");
    let at = format!("seq:{seq}");

    let out = d.path().join("big.img");
    let started = start(
        &c,
        &[
            "pair",
            "image",
            "p",
            "--at",
            &at,
            "--to",
            out.to_str().unwrap(),
        ],
    );
    let id = started["id"].as_u64().unwrap();
    assert_eq!(started["kind"], "image");
    assert_eq!(started["target"], "pair/p");
    // Progress shows while it runs.
    let mid = wait_for(600, "the image job's progress", || {
        let j = job(&c, id)?;
        let p = &j["progress"];
        ((p["done_bytes"].as_u64()? > 0 && p["total_bytes"].as_u64()? == 120 * GIB)
            || j["state"] == "succeeded")
            .then_some(j)
    });
    eprintln!("image job mid-way: {}", mid["progress"]);
    let done = wait_job(&c, id, 900);
    assert_eq!(done["state"], "succeeded", "{done:#}\n{}", c.logs());
    let img_hash = done["result"]["blake3"].as_str().unwrap().to_owned();
    assert_eq!(done["result"]["point"]["seq"].as_u64(), Some(seq));
    assert_eq!(done["result"]["size"].as_u64(), Some(120 * GIB));
    assert_eq!(done["progress"]["done_bytes"].as_u64(), Some(120 * GIB));
    assert!(out.exists());
    no_partials(d.path());

    // The hash job of that point agrees; the file holds the pieces where
    // they were written, its size is the volume's, and it stayed sparse.
    let h = c.tern(&["pair", "hash", "--wait", "p", "--at", &at]);
    assert_eq!(h["state"], "succeeded", "{h:#}");
    assert_eq!(h["result"]["blake3"].as_str(), Some(img_hash.as_str()));
    let f = std::fs::File::open(&out).unwrap();
    let meta = f.metadata().unwrap();
    assert_eq!(meta.len(), 120 * GIB);
    use std::os::unix::fs::{FileExt, MetadataExt};
    assert!(
        meta.blocks() * 512 < GIB,
        "the image is not sparse: {} blocks",
        meta.blocks()
    );
    for (off, piece) in &pieces {
        let mut got = vec![0u8; piece.len()];
        f.read_exact_at(&mut got, *off).unwrap();
        assert!(&got == piece, "the image differs at {off}");
    }
    drop(f);
    std::fs::remove_file(&out).unwrap();

    // Cancel mid-way: stops within 2 s, no file, no result.
    let out2 = d.path().join("cancelled.img");
    let j = start(&c, &["pair", "image", "p", "--to", out2.to_str().unwrap()]);
    let id2 = j["id"].as_u64().unwrap();
    wait_for(60, "the second image job to be under way", || {
        let j = job(&c, id2)?;
        (j["progress"]["done_bytes"].as_u64()? > 0).then_some(())
    });
    let t = Instant::now();
    c.tern(&["job", "cancel", &id2.to_string()]);
    let end = wait_job(&c, id2, 30);
    let took = t.elapsed();
    assert_eq!(end["state"], "cancelled", "{end:#}");
    assert!(took < Duration::from_secs(2), "cancel took {took:?}");
    assert!(end["result"].is_null(), "{end:#}");
    assert!(!out2.exists(), "a cancelled image left {}", out2.display());
    no_partials(d.path());
    // Cancelling a finished job is refused and changes nothing.
    let o = tern(
        d.path(),
        &[
            "--data",
            c.cx_data.to_str().unwrap(),
            "job",
            "cancel",
            &id.to_string(),
        ],
    );
    assert!(!o.status.success());
    assert!(stderr(&o).contains("already succeeded"), "{}", stderr(&o));

    // Listing pages newest first and filters by state.
    let l = c.tern(&["job", "list", "--limit", "1"]);
    assert_eq!(l["jobs"][0]["id"].as_u64(), Some(id2));
    assert_eq!(l["next"].as_u64(), Some(id2));
    let l = c.tern(&["job", "list", "--before", &id2.to_string()]);
    assert_eq!(l["jobs"].as_array().unwrap().len(), 2);
    let l = c.tern(&["job", "list", "--state", "cancelled"]);
    assert_eq!(l["jobs"].as_array().unwrap().len(), 1);
}

/// kill -9 of the CX while an image job runs: after the restart the job is
/// picked up again and ends with the image written, its log saying what
/// happened. Then the MT restarts under a running job: the job starts the
/// work again and succeeds.
#[test]
fn a_job_survives_a_cx_killed_and_an_mt_restarted() {
    let d = tempfile::tempdir().unwrap();
    let mut c = Cluster::with_pair(
        d.path(),
        16 * GIB,
        "",
        "[mt]\npreallocate_replica = false\n",
        300,
    );
    write_at(&c, 5 * GIB, &[0x5a; 65536]);
    let since = unix_ms();
    wait_for(60, "the write to reach the replica", || c.caught_up(since));
    let want = c.tern(&["pair", "hash", "--wait", "p"]);
    let want = want["result"]["blake3"].as_str().unwrap().to_owned();

    let out = d.path().join("after-cx-kill.img");
    let j = start(&c, &["pair", "image", "p", "--to", out.to_str().unwrap()]);
    let id = j["id"].as_u64().unwrap();
    wait_for(60, "the job to run", || {
        (job(&c, id)?["progress"]["done_bytes"].as_u64()? > 0).then_some(())
    });
    c.cx_down(true);
    std::thread::sleep(Duration::from_secs(1));
    c.cx_up();
    let end = wait_job(&c, id, 300);
    assert_eq!(end["state"], "succeeded", "{end:#}\n{}", c.logs());
    assert_eq!(end["result"]["blake3"].as_str(), Some(want.as_str()));
    let log = end["log"].to_string();
    assert!(log.contains("the CX restarted"), "{log}");
    assert!(out.exists());

    // The MT restarts while a job runs: another attempt, same result.
    let out = d.path().join("after-mt-restart.img");
    let j = start(&c, &["pair", "image", "p", "--to", out.to_str().unwrap()]);
    let id = j["id"].as_u64().unwrap();
    wait_for(60, "the job to run", || {
        (job(&c, id)?["progress"]["done_bytes"].as_u64()? > 0).then_some(())
    });
    c.kill9(2);
    c.up(2);
    let end = wait_job(&c, id, 300);
    assert_eq!(end["state"], "succeeded", "{end:#}\n{}", c.logs());
    assert_eq!(end["attempts"].as_u64(), Some(2), "{end:#}");
    assert_eq!(end["result"]["blake3"].as_str(), Some(want.as_str()));
    assert!(end["log"].to_string().contains("no longer has the task"));
    no_partials(d.path());
}

/// Bad requests get a 4xx that says what to do, and no job is kept.
#[test]
fn bad_job_requests_are_refused_and_keep_nothing() {
    let d = tempfile::tempdir().unwrap();
    let c = Cluster::with_pair(d.path(), 64 << 20, "", "", 60);
    let data = c.cx_data.to_str().unwrap().to_owned();
    for (args, want) in [
        (
            vec!["pair", "image", "nosuch", "--to", "/tmp/x.img"],
            "no pair named `nosuch`",
        ),
        (
            vec!["pair", "image", "p", "--to", "relative.img"],
            "must be an absolute path",
        ),
        (vec!["pair", "hash", "p", "--at", "someday"], "someday"),
        (vec!["job", "show", "999"], "no job 999"),
        (vec!["job", "cancel", "999"], "no job 999"),
        (
            vec!["job", "list", "--state", "sleeping"],
            "unknown job state",
        ),
        (vec!["job", "list", "--limit", "0"], "limit must be"),
    ] {
        let mut a = vec!["--data", data.as_str()];
        a.extend_from_slice(&args);
        let o = tern(d.path(), &a);
        assert!(!o.status.success(), "{args:?} was accepted");
        assert!(stderr(&o).contains(want), "{args:?}: {}", stderr(&o));
    }
    let l = c.tern(&["job", "list"]);
    assert_eq!(l["jobs"].as_array().unwrap().len(), 0, "{l}");
    // A destination directory that does not exist on the MT: the job
    // fails saying so.
    let j = start(
        &c,
        &["pair", "image", "p", "--to", "/nonexistent-dir/x.img"],
    );
    let end = wait_job(&c, j["id"].as_u64().unwrap(), 60);
    assert_eq!(end["state"], "failed");
    assert!(
        end["error"]["message"]
            .as_str()
            .unwrap()
            .contains("is not a directory"),
        "{end:#}"
    );
}

/// A bookmark asked for while the agent is down is kept by the CX: it
/// survives a kill -9 of the CX, reaches the agent when it is back, and
/// lands once, even though it was asked for twice.
#[test]
fn a_pending_bookmark_survives_a_cx_kill_and_lands_once() {
    let d = tempfile::tempdir().unwrap();
    let mut c = Cluster::with_pair(d.path(), 64 << 20, "", "", 60);
    c.stop(0);
    let data = c.cx_data.to_str().unwrap().to_owned();
    // Two requests for the same bookmark (a retry); neither can be
    // answered while the agent is away.
    let mut asks: Vec<std::process::Child> = (0..2)
        .map(|_| {
            std::process::Command::new(bin())
                .args(["--data", &data, "bookmark", "p", "--name", "while-away"])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    std::thread::sleep(Duration::from_secs(2));
    for a in &mut asks {
        let _ = a.kill();
        let _ = a.wait();
    }
    c.cx_down(true);
    c.cx_up();
    c.up(0);
    let named = |v: &serde_json::Value| -> usize {
        v["bookmarks"]
            .as_array()
            .map(|b| b.iter().filter(|b| b["name"] == "while-away").count())
            .unwrap_or(0)
    };
    let t = Instant::now();
    loop {
        if let Some(v) = c.try_tern(&["pair", "points", "p"])
            && named(&v) > 0
        {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(120),
            "the pending bookmark did not land\n{}",
            c.logs()
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    // Later syncs do not run it again.
    std::thread::sleep(Duration::from_secs(3));
    let v = c.tern(&["pair", "points", "p"]);
    assert_eq!(named(&v), 1, "{v:#}");
}
