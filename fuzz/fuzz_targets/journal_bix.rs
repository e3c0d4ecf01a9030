//! Fuzz the sealed-segment block index (`.bix`): build a valid one from
//! records the input describes, flip the bytes the input names, and (for
//! half the inputs) make every checksum right again, so the checks behind
//! the CRCs are reached. Opening and every lookup must answer or refuse,
//! never panic, and never read past what the header's counts allow.
#![no_main]
use std::path::Path;

use libfuzzer_sys::fuzz_target;
use tern::engine::journal::format::Kind;
use tern::engine::journal::index::RecMeta;
use tern::engine::journal::sealed::{self, Contents, SealedIndex, SegmentId};
use tern::engine::journal::storage::{SimStorage, Storage};

const VOLUME: u64 = 1 << 34;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    let n = (rest.first().copied().unwrap_or(0) as usize).min(rest.len() / 8);
    let (spec, flips) = rest.split_at((n * 8).min(rest.len()));
    let mut recs = Vec::new();
    for (i, r) in spec.chunks_exact(8).enumerate() {
        let off = u32::from_le_bytes(r[0..4].try_into().unwrap()) as u64 * 512;
        let len = (u16::from_le_bytes(r[4..6].try_into().unwrap()) as u32 + 1) * if r[6] & 1 == 1 { 4096 } else { 1 };
        let kind = if r[7] & 1 == 1 { Kind::Zero } else { Kind::Write };
        recs.push((
            (i as u64 + 1, 0),
            RecMeta { kind, segno: 3, pos: 64, offset: off % (VOLUME - len as u64), len },
        ));
    }
    let points: Vec<(u64, u64)> = (1..=recs.len() as u64).map(|s| (s, s * 3)).collect();
    let id = SegmentId { segno: 3, journal_id: 5, created_us: 7, level: 0, len: 1 << 40 };
    let mut b = sealed::build(&Contents {
        id,
        first_seq: 1,
        last_seq: recs.len().max(1) as u64,
        records: &recs,
        points: &points,
        bookmarks: &[],
    });
    for f in flips.chunks_exact(3) {
        let at = u16::from_le_bytes([f[0], f[1]]) as usize * 7 % b.len();
        b[at] ^= f[2];
    }
    if mode & 1 == 1 {
        sealed::reseal(&mut b);
    }
    let st = SimStorage::new();
    let p = Path::new("/s.bix");
    st.write_atomic(p, &b).unwrap();
    let Ok((s, _)) = SealedIndex::open(st.open(p, false).unwrap(), id, VOLUME) else {
        return;
    };
    let _ = s.all_records();
    for (_, m) in recs.iter().take(16) {
        let mut out = Vec::new();
        let b = m.offset >> 16;
        let _ = s.candidates(b, (b << 16, (b + 1) << 16), 0, u64::MAX, &mut out);
    }
    let _ = s.points_in(0, u64::MAX);
    let _ = s.point_at_or_after(2);
    let _ = s.point_at_or_before_ts(10);
});
