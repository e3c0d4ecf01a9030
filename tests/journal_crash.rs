//! Issue 3 acceptance 2: crash safety.
//!
//! - Simulated: the journal runs on `SimStorage`, an fsync fails at a random
//!   moment (apply, segment roll, checkpoint of the replica, state update),
//!   the "disk" then keeps a random prefix of unsynced writes, the last one
//!   torn; the reopened journal must hold every acknowledged chunk and every
//!   point it offers must equal the model.
//! - Real: `tern debug journal-load` applies under load in a child process
//!   and is SIGKILLed at random moments 50 times; after each, every listed
//!   point is checked the same way, and the child resumes.

mod util;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tern::engine::journal::policy::{self, OnFull, RetentionPolicy};
use tern::engine::journal::storage::{FsStorage, SimStorage, Storage};
use tern::engine::journal::testkit::{Model, Workload, image_hash};
use tern::engine::journal::{Journal, JournalOptions, PointSpec};

/// Check every point the journal offers against a model that is at or before
/// its oldest point; returns the model advanced to the oldest point.
fn verify_points(
    j: &Arc<Journal>,
    w: &Workload,
    mut model: Model,
    rng: &mut StdRng,
    max_bookmarks: usize,
) -> Model {
    let (oldest, latest) = j.window();
    let chunk_of = |m: &mut Model, upto: u64| {
        while m.seq < upto {
            let i = m.seq / w.records_per_chunk;
            for r in w.chunk(i) {
                if r.seq > m.seq && r.seq <= upto {
                    m.apply(&r);
                }
            }
        }
    };
    chunk_of(&mut model, oldest.seq);
    let check = |m: &Model, spec: PointSpec| {
        let pin = j.pin(&spec).unwrap();
        assert_eq!(pin.point.seq, m.seq, "{spec:?}");
        let h = image_hash(j.volume_size(), |o, b| pin.read_at(o, b)).unwrap();
        assert_eq!(
            h,
            m.hash(),
            "image at {spec:?} (seq {}) differs from the model",
            m.seq
        );
    };
    check(&model, PointSpec::Oldest);
    let mut m2 = Model {
        image: model.image.clone(),
        seq: model.seq,
    };
    let mut bms = j.bookmarks();
    // A sample of the bookmarks (all of them would be slow), in order.
    while bms.len() > max_bookmarks {
        bms.remove(rng.random_range(0..bms.len()));
    }
    for b in bms {
        chunk_of(&mut m2, b.seq);
        check(&m2, PointSpec::Seq(b.seq));
    }
    chunk_of(&mut m2, latest.seq);
    check(&m2, PointSpec::Latest);
    model
}

/// After a crash: every acknowledged chunk is there, every offered point exact.
fn verify_after_crash(
    j: &Arc<Journal>,
    acked: u64,
    round: u32,
    w: &Workload,
    model: Model,
    rng: &mut StdRng,
) -> Model {
    assert!(
        j.last_seq() >= acked,
        "round {round}: acknowledged seq {acked} lost (journal ends at {})",
        j.last_seq()
    );
    verify_points(j, w, model, rng, 2)
}

#[test]
fn simulated_power_loss_at_every_kind_of_fsync_keeps_acknowledged_data() {
    power_loss(21, 128 << 10, 256 << 10, 300);
}

/// Chunks of a MiB and more are written O_DIRECT, aligned and padded: the
/// same crashes over them (the simulator keeps a torn prefix of the write).
#[test]
fn simulated_power_loss_with_large_padded_chunks_keeps_acknowledged_data() {
    power_loss(22, 1 << 20, 4 << 20, 120);
}

fn power_loss(seed: u64, max_write: u64, segment_bytes: u64, rounds: u32) {
    let vol = 8u64 << 20;
    let dir = std::path::Path::new("/sim/journal");
    let replica = std::path::Path::new("/sim/replica");
    let mut w = Workload::new(seed, vol);
    w.max_write = max_write;
    let opts = || JournalOptions {
        segment_bytes,
        ..Default::default()
    };
    let policy = RetentionPolicy {
        window: None,
        max_bytes: Some(4 * segment_bytes),
        on_full: OnFull::Prune,
        // Sparse tiers too, so crashes also land inside segment compaction.
        tiers: vec![
            policy::SparseTier {
                after: Duration::from_millis(60),
                every: Some(Duration::from_millis(20)),
                bookmarks: None,
            },
            policy::SparseTier {
                after: Duration::from_millis(200),
                every: None,
                bookmarks: Some("any".into()),
            },
        ],
    };
    let mut rng = StdRng::seed_from_u64(5);
    let mut storage = SimStorage::new();
    Journal::create(Arc::new(storage.clone()), dir, replica, vol, opts()).unwrap();
    let mut model = Model::new(vol);
    let mut acked = 0u64;
    let mut crashes = 0;
    let mut failed_ops = std::collections::BTreeMap::<&str, u32>::new();
    let mut compactions = 0;
    for round in 0..rounds {
        let j = Arc::new(
            Journal::open(
                Arc::new(storage.clone()) as Arc<dyn Storage>,
                dir,
                replica,
                opts(),
            )
            .unwrap(),
        );
        model = verify_after_crash(&j, acked, round, &w, model, &mut rng);
        // Run until an injected fsync failure, then lose power.
        storage.fail_sync_after(rng.random_range(0..12));
        loop {
            let next = j.last_seq() / w.records_per_chunk;
            match j.apply(&w.chunk(next)) {
                Ok(_) => acked = j.last_seq(),
                Err(e) => {
                    *failed_ops.entry("apply").or_default() += 1;
                    assert!(e.to_string().contains("fsync"), "{e}");
                    // Once failed, the journal refuses everything until reopened.
                    assert!(
                        j.apply(&w.chunk(next))
                            .unwrap_err()
                            .to_string()
                            .contains("journal stopped")
                    );
                    break;
                }
            }
            let r = policy::prune_step(&j, &policy, w.ts_of(j.last_seq()));
            if let Ok(policy::PruneOutcome::Compacted { .. }) = r {
                compactions += 1;
            }
            if let Err(e) = r {
                *failed_ops.entry("prune").or_default() += 1;
                assert!(
                    e.to_string().contains("fsync") || e.to_string().contains("journal stopped"),
                    "{e}"
                );
                break;
            }
        }
        drop(j);
        storage = storage.crash(|n| rng.random_range(0..n));
        crashes += 1;
    }
    assert_eq!(crashes, rounds);
    assert!(
        failed_ops.len() == 2,
        "crashes hit both apply and prune: {failed_ops:?}"
    );
    assert!(compactions > 0, "segments were compacted between crashes");
}

#[test]
fn sigkill_under_load_fifty_times_leaves_every_listed_point_exact() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let vol: u64 = 64 << 20;
    let seed = 77u64;
    let mut w = Workload::new(seed, vol);
    w.max_write = 64 << 10;
    let mut rng = StdRng::seed_from_u64(1234);
    let mut model = Model::new(vol);
    let mut acked = 0u64;
    for round in 0..50 {
        let mut child = Command::new(util::bin())
            .args(["debug", "journal-load", "--dir"])
            .arg(dir)
            .args([
                "--seed",
                &seed.to_string(),
                "--volume-size",
                &vol.to_string(),
                "--max-write",
                &w.max_write.to_string(),
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let out = BufReader::new(child.stdout.take().unwrap());
        let (tx, rx) = std::sync::mpsc::channel();
        let reader = std::thread::spawn(move || {
            for line in out.lines().map_while(Result::ok) {
                if let Some(s) = line.strip_prefix("acked ") {
                    let _ = tx.send(s.parse::<u64>().unwrap());
                }
            }
        });
        // Wait for the child to be applying, then kill it at a random moment.
        let first = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("child applies");
        assert!(
            first >= acked,
            "round {round}: child resumed at {first}, below acknowledged {acked}"
        );
        std::thread::sleep(Duration::from_millis(rng.random_range(0..150)));
        unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
        child.wait().unwrap();
        reader.join().unwrap();
        while let Ok(s) = rx.try_recv() {
            acked = acked.max(s);
        }
        acked = acked.max(first);
        let j = Arc::new(
            Journal::open(
                Arc::new(FsStorage),
                &dir.join("journal"),
                &dir.join("replica.img"),
                JournalOptions {
                    segment_bytes: 2 << 20,
                    ..Default::default()
                },
            )
            .unwrap(),
        );
        model = verify_after_crash(&j, acked, round, &w, model, &mut rng);
    }
    assert!(acked > 0);
}
