//! Issue 3 acceptance 1 and 3: model-based checks of the retention engine on
//! real files: random writes (512 B to 1 MiB, overlapping) and bookmarks on a
//! 64 MiB volume; images at random points, times and bookmarks equal the model.

use std::collections::BTreeMap;
use std::sync::Arc;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tern::engine::journal::policy::{self, OnFull, RetentionPolicy};
use tern::engine::journal::storage::FsStorage;
use tern::engine::journal::testkit::{Model, Workload, image_hash};
use tern::engine::journal::{Journal, JournalError, JournalOptions, PointSpec, RecordBody};

const VOL: u64 = 64 << 20;

fn open_new(dir: &std::path::Path, seg: u64) -> Arc<Journal> {
    Arc::new(
        Journal::create(
            Arc::new(FsStorage),
            &dir.join("journal"),
            &dir.join("replica.img"),
            VOL,
            JournalOptions {
                segment_bytes: seg,
                ..Default::default()
            },
        )
        .unwrap(),
    )
}

fn reopen(dir: &std::path::Path, seg: u64) -> Arc<Journal> {
    Arc::new(
        Journal::open(
            Arc::new(FsStorage),
            &dir.join("journal"),
            &dir.join("replica.img"),
            JournalOptions {
                segment_bytes: seg,
                ..Default::default()
            },
        )
        .unwrap(),
    )
}

fn engine_hash(j: &Arc<Journal>, at: &PointSpec) -> blake3::Hash {
    let pin = j.pin(at).unwrap();
    image_hash(j.volume_size(), |o, b| pin.read_at(o, b)).unwrap()
}

#[test]
fn images_at_random_points_times_and_bookmarks_equal_the_model() {
    let tmp = tempfile::tempdir().unwrap();
    let j = open_new(tmp.path(), 16 << 20);
    let w = Workload::new(7, VOL);
    let chunks = 120u64;
    let last = chunks * w.records_per_chunk;
    let mut rng = StdRng::seed_from_u64(99);

    // Points to check: random seqs, random times, every 5th bookmark.
    let mut want: BTreeMap<u64, Vec<PointSpec>> = BTreeMap::new();
    for _ in 0..12 {
        let s = rng.random_range(0..=last);
        want.entry(s).or_default().push(PointSpec::Seq(s));
    }
    for _ in 0..6 {
        // A time between two records resolves to the earlier one.
        let s = rng.random_range(1..=last);
        want.entry(s)
            .or_default()
            .push(PointSpec::Time(w.ts_of(s) + 500));
    }
    let mut bookmarks = 0;
    let mut model = Model::new(VOL);
    let mut hashes = BTreeMap::new();
    hashes.insert(0, model.hash());
    for i in 0..chunks {
        let c = w.chunk(i);
        j.apply(&c).unwrap();
        // Applying the same chunk again changes nothing, nor does an older one
        // (a PS resending its cache after a restart).
        assert_eq!(
            j.apply(&c).unwrap(),
            tern::engine::journal::ApplyOutcome::AlreadyApplied
        );
        if i > 0 {
            assert_eq!(
                j.apply(&w.chunk(i - 1)[..1]).unwrap(),
                tern::engine::journal::ApplyOutcome::AlreadyApplied
            );
        }
        for r in &c {
            model.apply(r);
            if let RecordBody::Bookmark { name, .. } = &r.body {
                bookmarks += 1;
                if bookmarks % 5 == 0 {
                    want.entry(r.seq)
                        .or_default()
                        .push(PointSpec::Bookmark(name.clone()));
                }
            }
            if want.contains_key(&r.seq) {
                hashes.insert(r.seq, model.hash());
            }
        }
    }
    want.entry(last).or_default().push(PointSpec::Latest);
    hashes.insert(last, model.hash());
    let n_points: usize = want.values().map(|v| v.len()).sum();
    assert!(n_points >= 20, "only {n_points} points");
    for (seq, specs) in &want {
        for spec in specs {
            let p = j.resolve(spec).unwrap();
            assert_eq!(p.seq, *seq, "{spec:?} resolves to the right record");
            assert_eq!(
                engine_hash(&j, spec),
                hashes[seq],
                "image at {spec:?} (seq {seq})"
            );
        }
    }
    assert_eq!(j.bookmarks().len(), bookmarks);

    // Prune half the window: later points are unchanged, earlier ones refused.
    let mid = last / 2;
    j.checkpoint(mid).unwrap();
    for (seq, specs) in want.range(mid..) {
        assert_eq!(
            engine_hash(&j, &specs[0]),
            hashes[seq],
            "after checkpoint, seq {seq}"
        );
    }
    if let Some((seq, _)) = want.range(..mid).next() {
        assert!(matches!(
            j.resolve(&PointSpec::Seq(*seq)),
            Err(JournalError::OutsideWindow(_))
        ));
    }
    // Reopen: the same answers from disk.
    drop(j);
    let j = reopen(tmp.path(), 16 << 20);
    assert_eq!(j.last_seq(), last);
    for (seq, specs) in want.range(mid..) {
        assert_eq!(
            engine_hash(&j, &specs[0]),
            hashes[seq],
            "after reopen, seq {seq}"
        );
    }
    // Rollback to the latest makes the replica file itself the latest image.
    j.rollback(&PointSpec::Latest).unwrap();
    let replica = std::fs::read(tmp.path().join("replica.img")).unwrap();
    assert_eq!(blake3::hash(&replica), hashes[&last]);
}

#[test]
fn space_policy_prunes_whole_segments_and_counts_resets() {
    let tmp = tempfile::tempdir().unwrap();
    let j = open_new(tmp.path(), 4 << 20);
    let mut w = Workload::new(3, VOL);
    w.max_write = 64 << 10;
    let mut model = Model::new(VOL);
    let p = RetentionPolicy {
        window: Some(std::time::Duration::from_secs(365 * 86400)),
        max_bytes: Some(12 << 20),
        on_full: OnFull::Prune,
        tiers: vec![],
    };
    let now = w.ts_of(10_000_000);
    let mut checkpoints = Vec::new();
    // The journal enforces the limit as it appends: it never passes it.
    j.set_space_limit(p.space_limit(None));
    for i in 0..600 {
        let c = w.chunk(i);
        let before = j.stats();
        j.apply(&c).unwrap();
        c.iter().for_each(|r| model.apply(r));
        policy::prune_all(&j, &p, now).unwrap();
        let after = j.stats();
        assert!(after.bytes <= 12 << 20, "space bounded: {}", after.bytes);
        if after.oldest.seq != before.oldest.seq {
            // Exactly whole segments went, and the new oldest is a segment end.
            assert!(
                before
                    .segments
                    .iter()
                    .any(|s| s.last_seq == after.oldest.seq)
            );
            checkpoints.push(after.oldest.seq);
        }
    }
    assert!(
        !checkpoints.is_empty(),
        "the space limit was exceeded, so pruning happened"
    );
    let r = policy::report(&j, &p, now);
    assert!(
        r.retention_log_resets > 0,
        "space pruning inside the time window is a reset"
    );
    assert!(r.window_shortfall);
    assert_eq!(engine_hash(&j, &PointSpec::Latest), model.hash());
    assert_eq!(engine_hash(&j, &PointSpec::Oldest), {
        // Rebuild the model at the oldest point.
        let mut m = Model::new(VOL);
        let oldest = j.stats().oldest.seq;
        for i in 0..600 {
            for r in w.chunk(i) {
                if r.seq <= oldest {
                    m.apply(&r);
                }
            }
        }
        m.hash()
    });
}

#[test]
fn time_policy_prunes_exactly_the_points_older_than_the_window() {
    let tmp = tempfile::tempdir().unwrap();
    let j = open_new(tmp.path(), 1 << 20);
    let mut w = Workload::new(5, VOL);
    w.max_write = 16 << 10;
    for i in 0..100 {
        j.apply(&w.chunk(i)).unwrap();
    }
    // Window 300 ms, "now" at record 800's time: keep records whose time >= now - 300 ms.
    let p = RetentionPolicy {
        window: Some(std::time::Duration::from_millis(300)),
        max_bytes: None,
        on_full: OnFull::Prune,
        tiers: vec![],
    };
    let now = w.ts_of(800);
    policy::prune_all(&j, &p, now).unwrap();
    let st = j.stats();
    // The oldest point is the last record at or before the cutoff: seq 500.
    assert_eq!(st.oldest.seq, 500);
    assert!(j.resolve(&PointSpec::Seq(499)).is_err());
    assert!(j.resolve(&PointSpec::Seq(500)).is_ok());
    assert!(j.bookmarks().iter().all(|b| b.seq >= 500));
}

#[test]
fn stop_policy_refuses_chunks_without_touching_the_replica() {
    let tmp = tempfile::tempdir().unwrap();
    let j = open_new(tmp.path(), 1 << 20);
    let mut w = Workload::new(11, VOL);
    w.max_write = 64 << 10;
    let p = RetentionPolicy {
        window: None,
        max_bytes: Some(2 << 20),
        on_full: OnFull::Stop,
        tiers: vec![],
    };
    let mut model = Model::new(VOL);
    let mut refused = None;
    for i in 0..200 {
        policy::prune_all(&j, &p, 0).unwrap();
        let c = w.chunk(i);
        match j.apply(&c) {
            Ok(_) => c.iter().for_each(|r| model.apply(r)),
            Err(e @ JournalError::RetentionFull(_)) => {
                let msg = e.to_string();
                assert!(
                    msg.contains("policy=stop") && msg.contains("raise the limit"),
                    "{msg}"
                );
                refused = Some(i);
                break;
            }
            Err(e) => panic!("{e}"),
        }
    }
    let i = refused.expect("the limit is reached");
    let replica_before = std::fs::read(tmp.path().join("replica.img")).unwrap();
    assert!(
        replica_before.iter().all(|b| *b == 0),
        "apply never writes the replica"
    );
    // Still refusing, still intact, and the latest image is what was accepted.
    assert!(j.apply(&w.chunk(i)).is_err());
    assert_eq!(engine_hash(&j, &PointSpec::Latest), model.hash());
    // Raising the limit resumes exactly where it stopped.
    let p2 = RetentionPolicy {
        max_bytes: Some(1 << 30),
        ..p
    };
    policy::prune_all(&j, &p2, 0).unwrap();
    let c = w.chunk(i);
    j.apply(&c).unwrap();
    c.iter().for_each(|r| model.apply(r));
    assert_eq!(engine_hash(&j, &PointSpec::Latest), model.hash());
}

#[test]
fn a_pinned_point_holds_pruning_back() {
    let tmp = tempfile::tempdir().unwrap();
    let j = open_new(tmp.path(), 1 << 20);
    let mut w = Workload::new(13, VOL);
    w.max_write = 16 << 10;
    for i in 0..50 {
        j.apply(&w.chunk(i)).unwrap();
    }
    let pin = j.pin(&PointSpec::Seq(100)).unwrap();
    let h = image_hash(VOL, |o, b| pin.read_at(o, b)).unwrap();
    assert!(matches!(
        j.checkpoint(300),
        Err(JournalError::Pinned { pinned: 100 })
    ));
    let p = RetentionPolicy {
        window: Some(std::time::Duration::from_millis(1)),
        max_bytes: None,
        on_full: OnFull::Prune,
        tiers: vec![],
    };
    assert_eq!(policy::prune_all(&j, &p, w.ts_of(400)).unwrap(), Some(100));
    assert_eq!(j.stats().oldest.seq, 100);
    assert_eq!(
        image_hash(VOL, |o, b| pin.read_at(o, b)).unwrap(),
        h,
        "the pinned image is intact"
    );
    drop(pin);
    policy::prune_all(&j, &p, w.ts_of(400)).unwrap();
    assert_eq!(j.stats().oldest.seq, 399);
}

#[test]
fn gaps_and_bad_records_are_refused_and_nothing_is_applied() {
    let tmp = tempfile::tempdir().unwrap();
    let j = open_new(tmp.path(), 1 << 20);
    let w = Workload::new(1, VOL);
    j.apply(&w.chunk(0)).unwrap();
    let e = j.apply(&w.chunk(2)).unwrap_err();
    assert!(e.to_string().contains("needs a resync"), "{e}");
    let mut bad = w.chunk(1);
    bad[3].body = RecordBody::Write {
        offset: VOL - 512,
        data: vec![1; 1024].into(),
    };
    let e = j.apply(&bad).unwrap_err();
    assert!(e.to_string().contains("past the end"), "{e}");
    assert_eq!(j.last_seq(), 8, "a refused chunk applies nothing");
    j.apply(&w.chunk(1)).unwrap();
    assert_eq!(j.last_seq(), 16);
}

#[test]
fn latest_common_bookmark_and_time_across_pairs() {
    use tern::engine::journal::format::BookmarkKind;
    use tern::engine::journal::{Record, latest_common_bookmark, latest_common_time};
    let tmp = tempfile::tempdir().unwrap();
    let a = open_new(&tmp.path().join("a"), 1 << 20);
    let b = open_new(&tmp.path().join("b"), 1 << 20);
    let rec = |seq: u64, ts: u64, body: RecordBody| Record {
        seq,
        ts_us: ts,
        body,
    };
    let w = |o: u64| RecordBody::Write {
        offset: o,
        data: vec![1; 512].into(),
    };
    let bm = |k: BookmarkKind, n: &str| RecordBody::Bookmark {
        kind: k,
        name: n.into(),
    };
    a.apply(&[
        rec(1, 10, w(0)),
        rec(2, 20, bm(BookmarkKind::App, "t1")),
        rec(3, 30, bm(BookmarkKind::Fs, "t2")),
        rec(4, 40, w(512)),
    ])
    .unwrap();
    b.apply(&[
        rec(1, 12, bm(BookmarkKind::App, "t1")),
        rec(2, 25, bm(BookmarkKind::Fs, "t2")),
        rec(3, 35, w(0)),
    ])
    .unwrap();
    assert_eq!(
        latest_common_bookmark(&[&a, &b], None).as_deref(),
        Some("t2")
    );
    assert_eq!(
        latest_common_bookmark(&[&a, &b], Some(BookmarkKind::App)).as_deref(),
        Some("t1")
    );
    b.apply(&[rec(4, 50, bm(BookmarkKind::User, "only-b"))])
        .unwrap();
    assert_eq!(
        latest_common_bookmark(&[&a, &b], None).as_deref(),
        Some("t2")
    );
    assert_eq!(latest_common_time(&[&a, &b]), Some(40));
    // Each pair resolves that time to its own last write at or before it.
    assert_eq!(a.resolve(&PointSpec::Time(40)).unwrap().seq, 4);
    assert_eq!(b.resolve(&PointSpec::Time(40)).unwrap().seq, 3);
}

#[test]
fn sparse_tiers_keep_exactly_the_points_they_promise() {
    use tern::engine::journal::policy::SparseTier;
    use tern::engine::journal::testkit::Workload;
    // A small, hot volume: writes overlap, so thinning has something to fold.
    const SMALL: u64 = 256 << 10;
    let tmp = tempfile::tempdir().unwrap();
    let j = Arc::new(
        Journal::create(
            Arc::new(FsStorage),
            &tmp.path().join("journal"),
            &tmp.path().join("replica.img"),
            SMALL,
            JournalOptions {
                segment_bytes: 64 << 10,
                ..Default::default()
            },
        )
        .unwrap(),
    );
    let mut w = Workload::new(17, SMALL);
    w.max_write = 4 << 10;
    let chunks = 300u64;
    let last = chunks * w.records_per_chunk;
    let mut records = Vec::new();
    for i in 0..chunks {
        let c = w.chunk(i);
        j.apply(&c).unwrap();
        records.extend(c);
    }
    let before = j.stats();
    let now = w.ts_of(last);
    let ms = |n| std::time::Duration::from_millis(n);
    let p = RetentionPolicy {
        window: None,
        max_bytes: None,
        on_full: OnFull::Prune,
        tiers: vec![
            SparseTier {
                after: ms(800),
                every: Some(ms(100)),
                bookmarks: None,
            },
            SparseTier {
                after: ms(1600),
                every: None,
                bookmarks: Some("app".into()),
            },
        ],
    };
    // A pin on a point tier 2 would drop holds that one segment back.
    let victim_seg = before.segments[1].clone();
    let pinned_seq = (victim_seg.first_seq..=victim_seg.last_seq)
        .find(|s| {
            !matches!(
                records[(*s - 1) as usize].body,
                RecordBody::Bookmark {
                    kind: tern::engine::journal::format::BookmarkKind::App,
                    ..
                }
            )
        })
        .unwrap();
    let pin = j.pin(&PointSpec::Seq(pinned_seq)).unwrap();
    assert_eq!(policy::prune_all(&j, &p, now).unwrap(), Some(pinned_seq));
    drop(pin);
    policy::prune_all(&j, &p, now).unwrap();
    let after = j.stats();
    // How much folds depends on overlap between kept points; here about 10%.
    assert!(
        after.bytes < before.bytes * 95 / 100,
        "thinning frees space: {} -> {}",
        before.bytes,
        after.bytes
    );
    assert!(
        after.segments.len() < before.segments.len(),
        "runs of segments were merged"
    );

    // The promise, segment by segment (a segment is thinned once all of it is old enough).
    let ts = |s: u64| w.ts_of(s);
    let is_app = |s: u64| {
        matches!(
            &records[(s - 1) as usize].body,
            RecordBody::Bookmark {
                kind: tern::engine::journal::format::BookmarkKind::App,
                ..
            }
        )
    };
    let last_in_bucket = |s: u64| s == last || ts(s) / 100_000 != ts(s + 1) / 100_000;
    let active = before.segments.last().unwrap().first_seq;
    let mut expect = std::collections::BTreeSet::new();
    for seg in &before.segments {
        for s in seg.first_seq..=seg.last_seq {
            let newest = ts(seg.last_seq);
            let keep = if seg.first_seq >= active || newest >= now - 800_000 {
                true
            } else if newest >= now - 1_600_000 {
                last_in_bucket(s) || is_app(s)
            } else {
                is_app(s)
            };
            if keep {
                expect.insert(s);
            }
        }
    }
    let check = |j: &Arc<Journal>| {
        for s in 1..=last {
            assert_eq!(
                j.resolve(&PointSpec::Seq(s)).is_ok(),
                expect.contains(&s),
                "seq {s}"
            );
        }
    };
    check(&j);
    assert!(expect.len() < last as usize / 2);
    // Every kept point of the thinned zone rebuilds byte-exact (a sample of the rest).
    let mut model = Model::new(SMALL);
    let thinned_zone_end = before
        .segments
        .iter()
        .filter(|s| ts(s.last_seq) < now - 800_000)
        .map(|s| s.last_seq)
        .max()
        .unwrap();
    for r in &records {
        model.apply(r);
        if expect.contains(&r.seq) && (r.seq <= thinned_zone_end || r.seq % 97 == 0) {
            assert_eq!(
                engine_hash(&j, &PointSpec::Seq(r.seq)),
                model.hash(),
                "seq {}",
                r.seq
            );
        }
    }
    // Time resolves to the last kept point at or before it.
    let t = ts(200) + 10;
    let want = *expect.range(..=200).next_back().unwrap();
    assert_eq!(j.resolve(&PointSpec::Time(t)).unwrap().seq, want);
    // Thinned points say why.
    let dropped = (1..=last).find(|s| !expect.contains(s)).unwrap();
    let e = j.resolve(&PointSpec::Seq(dropped)).unwrap_err().to_string();
    assert!(e.contains("thinned by the sparse retention policy"), "{e}");
    // And it all survives a reopen.
    drop(j);
    let j = reopen(tmp.path(), 64 << 10);
    check(&j);
    assert_eq!(engine_hash(&j, &PointSpec::Latest), model.hash());
}

/// Points inside a resync are never offered, the marks survive a restart,
/// and pruning folds the records before the first consistent point into the
/// replica at once.
#[test]
fn points_inside_a_resync_are_never_offered() {
    let tmp = tempfile::tempdir().unwrap();
    let j = open_new(tmp.path(), 1 << 20);
    let w = Workload::new(11, VOL);
    // The initial sync: the base (seq 0) and chunks 0..3 are inconsistent.
    let n = w.records_per_chunk;
    j.mark_unrecoverable(0, 0).unwrap();
    assert!(
        matches!(j.resolve(&PointSpec::Latest), Err(JournalError::OutsideWindow(m)) if m.contains("no consistent point yet"))
    );
    j.mark_unrecoverable(1, 3 * n).unwrap();
    let mut model = Model::new(VOL);
    let mut hashes = BTreeMap::new();
    for i in 0..8 {
        if i == 5 {
            // A later resync (e.g. after an agent crash): chunk 5 only.
            j.mark_unrecoverable(5 * n + 1, 6 * n).unwrap();
        }
        for r in w.chunk(i) {
            model.apply(&r);
            hashes.insert(r.seq, model.hash());
        }
        j.apply(&w.chunk(i)).unwrap();
    }
    let j = {
        drop(j);
        reopen(tmp.path(), 1 << 20)
    };
    assert_eq!(j.unrecoverable_range(0), Some((0, 3 * n)), "merged");
    assert_eq!(j.resolve(&PointSpec::Oldest).unwrap().seq, 3 * n + 1);
    let err = j
        .resolve(&PointSpec::Seq(5 * n + 3))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("inside a resync")
            && err.contains(&format!("seq {}", 5 * n))
            && err.contains(&format!("seq {}", 6 * n + 1)),
        "{err}"
    );
    assert_eq!(
        j.resolve(&PointSpec::Time(w.ts_of(5 * n + 3))).unwrap().seq,
        5 * n
    );
    let latest = j.resolve(&PointSpec::Latest).unwrap().seq;
    assert_eq!(latest, 8 * n);
    assert_eq!(engine_hash(&j, &PointSpec::Latest), hashes[&latest]);
    // No time window: pruning still folds the initial sync away.
    let p = RetentionPolicy::default();
    policy::prune_all(&j, &p, u64::MAX / 2).unwrap();
    assert!(j.window().0.seq >= 3 * n, "{:?}", j.window());
    assert_eq!(j.resolve(&PointSpec::Oldest).unwrap().seq, 3 * n + 1);
    let s = 4 * n;
    assert_eq!(engine_hash(&j, &PointSpec::Seq(s)), hashes[&s]);
}

/// One chunk's inconsistent runs are recorded in one write and survive a
/// reopen; a chunk that alternates the flag record by record is capped at
/// `MAX_RUNS_PER_CHUNK` ranges, the rest merged (points lost, never data).
#[test]
fn a_chunks_inconsistent_runs_are_recorded_at_once_and_bounded() {
    use tern::engine::journal::MAX_RUNS_PER_CHUNK;
    let tmp = tempfile::tempdir().unwrap();
    let j = open_new(tmp.path(), 8 << 20);
    j.mark_unrecoverable_runs(&[(10, 12), (20, 20), (13, 14)])
        .unwrap();
    assert_eq!(
        j.unrecoverable_range(11),
        Some((10, 14)),
        "adjacent runs merge"
    );
    assert_eq!(j.unrecoverable_range(20), Some((20, 20)));
    assert_eq!(j.unrecoverable_range(16), None);
    let alternating: Vec<(u64, u64)> = (0..1000).map(|i| (100 + 2 * i, 100 + 2 * i)).collect();
    j.mark_unrecoverable_runs(&alternating).unwrap();
    let kept = (MAX_RUNS_PER_CHUNK - 1) as u64;
    assert_eq!(j.unrecoverable_range(100), Some((100, 100)));
    assert_eq!(
        j.unrecoverable_range(101),
        None,
        "the first runs stay exact"
    );
    let tail = 100 + 2 * kept;
    assert_eq!(
        j.unrecoverable_range(tail + 1),
        Some((tail, 100 + 2 * 999)),
        "the rest is one range"
    );
    drop(j);
    let j = reopen(tmp.path(), 8 << 20);
    assert_eq!(j.unrecoverable_range(11), Some((10, 14)));
    assert_eq!(j.unrecoverable_range(tail + 7), Some((tail, 2098)));
}

/// A bookmark with the longest name the wire allows survives its segment's
/// sealing (the on-disk block index keeps where it is) and a reopen, and
/// a reopen whose block indexes are all gone rebuilds them to the same
/// points, times and images.
#[test]
fn long_bookmark_names_and_lost_block_indexes_survive_a_reopen() {
    let tmp = tempfile::tempdir().unwrap();
    let seg = 256 << 10;
    let j = open_new(tmp.path(), seg);
    let name = "b".repeat(255);
    let mut seq = 0u64;
    let mut rng = StdRng::seed_from_u64(9);
    for round in 0..40u64 {
        let mut recs = Vec::new();
        for _ in 0..4 {
            seq += 1;
            let mut data = vec![0u8; 32 << 10];
            rng.fill(&mut data[..]);
            recs.push(tern::engine::journal::Record {
                seq,
                ts_us: 1_000_000 * seq,
                body: RecordBody::Write {
                    offset: rng.random_range(0..VOL / 4096 - 8) * 4096,
                    data: data.into(),
                },
            });
        }
        seq += 1;
        recs.push(tern::engine::journal::Record {
            seq,
            ts_us: 1_000_000 * seq,
            body: RecordBody::Bookmark {
                kind: tern::engine::journal::format::BookmarkKind::User,
                name: if round == 7 {
                    name.clone()
                } else {
                    format!("r{round}")
                },
            },
        });
        j.apply(&recs).unwrap();
    }
    let st = j.stats();
    assert!(st.segments.len() > 3, "{} segments", st.segments.len());
    let specs = [
        PointSpec::Bookmark(name.clone()),
        PointSpec::Bookmark("r30".into()),
        PointSpec::Time(1_000_000 * 77 + 1),
        PointSpec::Seq(123),
    ];
    let before: Vec<_> = specs
        .iter()
        .map(|s| (j.resolve(s).unwrap(), engine_hash(&j, s)))
        .collect();
    drop(j);
    let j = reopen(tmp.path(), seg);
    let after: Vec<_> = specs
        .iter()
        .map(|s| (j.resolve(s).unwrap(), engine_hash(&j, s)))
        .collect();
    assert_eq!(before, after);
    drop(j);
    let bix: Vec<_> = std::fs::read_dir(tmp.path().join("journal"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "bix"))
        .collect();
    assert!(bix.len() > 2, "sealed segments have block indexes: {bix:?}");
    for p in &bix {
        std::fs::remove_file(p).unwrap();
    }
    let j = reopen(tmp.path(), seg);
    let rebuilt: Vec<_> = specs
        .iter()
        .map(|s| (j.resolve(s).unwrap(), engine_hash(&j, s)))
        .collect();
    assert_eq!(before, rebuilt);
    assert!(
        tmp.path()
            .join("journal")
            .join(bix[0].file_name().unwrap())
            .exists()
    );
}
