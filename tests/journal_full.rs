//! Issue 15 part 2, at the engine: a full retention disk never costs a
//! recovery point. The journal runs on simulated storage with a capacity
//! (writes past it fail with ENOSPC, as a full filesystem's do), under a
//! random workload checked against a model of the source.

use std::path::Path;
use std::sync::Arc;

use tern::engine::journal::policy::{OnFull, RetentionPolicy};
use tern::engine::journal::storage::{SimStorage, Storage};
use tern::engine::journal::testkit::{Model, Workload, image_hash};
use tern::engine::journal::{Journal, JournalError, JournalOptions, PointSpec, SpaceLimit};

const VOL: u64 = 2 << 20;
const KEEP: u64 = 1 << 20;

fn dir() -> &'static Path {
    Path::new("/j/journal")
}
fn replica() -> &'static Path {
    Path::new("/j/replica.img")
}

fn opts() -> JournalOptions {
    JournalOptions {
        segment_bytes: 1 << 20,
        ..Default::default()
    }
}

fn create(s: &SimStorage) -> Arc<Journal> {
    Arc::new(Journal::create(Arc::new(s.clone()), dir(), replica(), VOL, opts()).unwrap())
}

fn reopen(s: &SimStorage) -> Arc<Journal> {
    Arc::new(Journal::open(Arc::new(s.clone()), dir(), replica(), opts()).unwrap())
}

fn limit(on_full: OnFull) -> SpaceLimit {
    RetentionPolicy {
        window: Some(std::time::Duration::from_secs(365 * 86400)),
        max_bytes: None,
        on_full,
        tiers: vec![],
    }
    .space_limit(Some(KEEP))
}

/// The journal holds the first `chunks` chunks, all of them, and its latest
/// point equals the source after them.
fn assert_latest(j: &Arc<Journal>, w: &Workload, chunks: u64) {
    let latest = chunks * w.records_per_chunk;
    assert_eq!(j.window().1.seq, latest, "every accepted record is there");
    assert_eq!(hash_at(j, &PointSpec::Latest), model_at(w, chunks, latest));
}

fn hash_at(j: &Arc<Journal>, at: &PointSpec) -> blake3::Hash {
    let pin = j.pin(at).unwrap();
    image_hash(j.volume_size(), |o, b| pin.read_at(o, b)).unwrap()
}

/// The model of the source after every record up to `seq`.
fn model_at(w: &Workload, chunks: u64, seq: u64) -> blake3::Hash {
    let mut m = Model::new(VOL);
    for i in 0..chunks {
        for r in w.chunk(i) {
            if r.seq <= seq {
                m.apply(&r);
            }
        }
    }
    m.hash()
}

/// Fill what is left of the simulated disk with a file nobody prunes.
fn fill(s: &SimStorage) {
    let f = s.open(Path::new("/j/filler"), true).unwrap();
    let block = vec![0xffu8; 4096];
    let mut off = 0;
    while f.write_at(&block, off).is_ok() {
        off += 4096;
    }
    assert_eq!(s.space(dir()).unwrap().avail, 0);
}

fn workload() -> Workload {
    let mut w = Workload::new(21, VOL);
    w.max_write = 64 << 10;
    w
}

#[test]
fn prune_keeps_the_margin_free_drops_oldest_first_and_survives_a_full_disk() {
    let s = SimStorage::new();
    s.set_capacity(Some(12 << 20));
    let j = create(&s);
    j.set_space_limit(limit(OnFull::Prune));
    let w = workload();
    let chunks = 400;
    let mut oldest = 0;
    for i in 0..chunks {
        j.apply(&w.chunk(i))
            .unwrap_or_else(|e| panic!("chunk {i}: {e}"));
        let sp = s.space(dir()).unwrap();
        // What the journal writes besides appends (state slot rewrites, an
        // index) is small and never grows the disk past the margin by more.
        assert!(
            sp.avail + (64 << 10) >= KEEP,
            "chunk {i}: {} free",
            sp.avail
        );
        let o = j.window().0.seq;
        assert!(o >= oldest, "the oldest point only moves forward");
        oldest = o;
    }
    let st = j.stats();
    assert!(oldest > 0, "the disk filled, so history was pruned");
    assert!(st.resets > 0, "pruning inside the window counts as a reset");
    let r = st.last_reset.expect("the last reset is reported");
    assert!(r.to_ts_us > r.from_ts_us);
    assert!(st.stopped.is_none(), "prune never stops: {:?}", st.stopped);
    assert_latest(&j, &w, chunks);
    let bms = j.bookmarks();
    let newest_bm = bms.last().expect("bookmarks in the window").clone();
    let want_bm = model_at(&w, chunks, newest_bm.seq);
    assert_eq!(hash_at(&j, &PointSpec::Seq(newest_bm.seq)), want_bm);

    // Someone else fills the disk to the last block: checkpointing (the
    // whole of pruning) needs no new space, and nothing is lost.
    fill(&s);
    let mid = (j.window().0.seq + j.window().1.seq) / 2;
    j.checkpoint(mid).expect("a checkpoint on a full disk");
    assert_latest(&j, &w, chunks);
    assert_eq!(hash_at(&j, &PointSpec::Seq(newest_bm.seq)), want_bm);

    // Restart on the full disk: every point is still there, exact.
    let before = j.bookmarks();
    drop(j);
    let j = reopen(&s);
    j.set_space_limit(limit(OnFull::Prune));
    assert_eq!(j.bookmarks(), before);
    assert_eq!(hash_at(&j, &PointSpec::Seq(newest_bm.seq)), want_bm);
    assert_latest(&j, &w, chunks);

    // New chunks make their own room by pruning the oldest segments.
    for i in chunks..chunks + 20 {
        j.apply(&w.chunk(i))
            .unwrap_or_else(|e| panic!("chunk {i}: {e}"));
    }
    assert_latest(&j, &w, chunks + 20);
}

#[test]
fn stop_refuses_at_the_limit_changes_nothing_and_resumes_when_space_returns() {
    let s = SimStorage::new();
    s.set_capacity(Some(12 << 20));
    let j = create(&s);
    j.set_space_limit(limit(OnFull::Stop));
    let w = workload();
    let mut accepted = 0;
    let mut refused = None;
    for i in 0..400 {
        match j.apply(&w.chunk(i)) {
            Ok(_) => accepted = i + 1,
            Err(JournalError::RetentionFull(msg)) => {
                assert!(
                    msg.contains("policy=stop") && msg.contains("free space"),
                    "{msg}"
                );
                refused = Some(i);
                break;
            }
            Err(e) => panic!("chunk {i}: {e}"),
        }
    }
    let i = refused.expect("the disk filled");
    assert_eq!(j.window().0.seq, 0, "stop never drops a point");
    let st = j.stats();
    assert!(
        st.stopped
            .as_deref()
            .is_some_and(|m| m.contains("retention disk full"))
    );
    assert_latest(&j, &w, accepted);
    // Refused again, nothing changed; a restart keeps every point.
    assert!(j.apply(&w.chunk(i)).is_err());
    let before = j.bookmarks();
    drop(j);
    let j = reopen(&s);
    j.set_space_limit(limit(OnFull::Stop));
    assert_eq!(j.bookmarks(), before);
    assert_latest(&j, &w, accepted);
    // Space returns (the disk grows, or someone frees it): it resumes where it stopped.
    s.set_capacity(Some(64 << 20));
    j.apply(&w.chunk(i)).unwrap();
    assert!(j.stats().stopped.is_none());
    assert_latest(&j, &w, i + 1);
}

#[test]
fn a_journal_whose_recovery_needs_space_opens_read_only_and_resumes() {
    let s = SimStorage::new();
    s.set_capacity(Some(16 << 20));
    let j = create(&s);
    let w = workload();
    let chunks = 60;
    for i in 0..chunks {
        j.apply(&w.chunk(i)).unwrap();
    }
    let before = j.bookmarks();
    drop(j);
    // A replica made sparse (as journals before this version left it; still
    // all zeros, nothing was checkpointed), then a disk filled by others.
    let r = s.open(replica(), false).unwrap();
    r.set_len(0).unwrap();
    r.set_len(VOL).unwrap();
    drop(r);
    fill(&s);
    let j = reopen(&s);
    let st = j.stats();
    let why = st.stopped.clone().expect("read-only");
    assert!(
        why.contains("retention disk full") && why.contains("free space"),
        "{why}"
    );
    assert_eq!(j.bookmarks(), before, "every point still listed");
    assert_latest(&j, &w, chunks);
    let bm = before.last().unwrap();
    assert_eq!(
        hash_at(&j, &PointSpec::Seq(bm.seq)),
        model_at(&w, chunks, bm.seq)
    );
    assert!(matches!(
        j.apply(&w.chunk(chunks)),
        Err(JournalError::ReadOnly(_))
    ));
    assert!(!j.try_resume().unwrap(), "still full");
    s.remove(Path::new("/j/filler")).unwrap();
    assert!(j.try_resume().unwrap());
    assert!(j.stats().stopped.is_none());
    j.apply(&w.chunk(chunks)).unwrap();
    assert_latest(&j, &w, chunks + 1);
}

/// A journal written before `journal.state` had two slots (version 1: one
/// record, replaced by rename) upgrades with its first write, in place:
/// checkpoints after the upgrade are what a restart finds.
#[test]
fn a_version_1_state_upgrades_in_place_and_later_checkpoints_survive_a_restart() {
    let s = SimStorage::new();
    let j = create(&s);
    let w = workload();
    let chunks = 60;
    for i in 0..chunks {
        j.apply(&w.chunk(i)).unwrap();
    }
    let latest = j.window().1.seq;
    drop(j);
    // Rewrite journal.state as version 1 would have left it.
    let path = dir().join("journal.state");
    let f = s.open(&path, false).unwrap();
    let mut b = vec![0u8; f.len().unwrap() as usize];
    f.read_at(&mut b, 0).unwrap();
    drop(f);
    let st = tern::engine::journal::format::State::decode_file(&b).unwrap();
    let mut v1 = st.encode();
    v1[8..10].copy_from_slice(&1u16.to_le_bytes());
    v1[72..80].fill(0);
    let c = tern::engine::crc::crc32c(&v1[..92]);
    v1[92..96].copy_from_slice(&c.to_le_bytes());
    s.write_atomic(&path, &v1).unwrap();

    let j = reopen(&s);
    let mid = latest / 2;
    j.checkpoint(mid).unwrap();
    j.checkpoint(mid + 10).unwrap();
    assert_eq!(j.window().0.seq, mid + 10);
    drop(j);
    let j = reopen(&s);
    assert_eq!(
        j.window().0.seq,
        mid + 10,
        "the checkpoint is what the restart finds"
    );
    assert_eq!(
        hash_at(&j, &PointSpec::Oldest),
        model_at(&w, chunks, mid + 10)
    );
    assert_latest(&j, &w, chunks);
}
