//! The replication chunk: the unit the agent sends, the PS caches and
//! forwards, and the MT applies. Layout in docs/FORMATS.md ("Chunk").
//!
//! A chunk carries consecutive records of one pair (`first_seq..=last_seq`),
//! optionally zstd-compressed. Two checksums: `payload_crc` (CRC-32C of the
//! payload as sent) catches damage on one hop; `raw_hash` (BLAKE3 of the
//! uncompressed records) is checked end to end, agent to MT, so a PS that
//! recompresses cannot change the data unnoticed. The header names the pair
//! by its UUID: a chunk cannot be applied to another pair, or to a pair that
//! was deleted and re-created under the same name.
//!
//! Invariants: `decode` accepts only what `encode` produces (exact lengths,
//! consecutive seqs, zero reserved bytes); nothing is returned from a chunk
//! that fails a check.

use crate::engine::bufpool;
use crate::engine::compressor::Compressor;
use crate::engine::crc;
use crate::engine::journal::format::{BookmarkKind, MAX_BOOKMARK_NAME, u16_at, u32_at, u64_at};
use crate::engine::journal::{Record, RecordBody};

pub const MAGIC: [u8; 4] = *b"TCHK";
pub const VERSION: u16 = 1;
pub const HEADER_LEN: usize = 112;
const REC_HEADER_LEN: usize = 32;
/// Largest uncompressed payload a chunk may carry.
pub const MAX_RAW: usize = 64 << 20;

const KIND_WRITE: u8 = 1;
const KIND_ZERO: u8 = 2;
const KIND_BOOKMARK: u8 = 3;
const FLAG_INCONSISTENT: u8 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    None,
    Zstd(i32),
}

/// One record and whether the image after it is a consistent point.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WireRecord {
    pub record: Record,
    /// A resync or bitmap drain was under way: the image after this record
    /// is not a point-in-time image of the source.
    pub inconsistent: bool,
}

impl WireRecord {
    pub fn data_len(&self) -> usize {
        match &self.record.body {
            RecordBody::Write { data, .. } => data.len(),
            RecordBody::Zero { .. } => 0,
            RecordBody::Bookmark { name, .. } => name.len(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkHeader {
    pub pair: [u8; 16],
    pub compressed: bool,
    /// Some record leaves the image inconsistent (a resync or drain): the PS
    /// applies its resync threshold to such chunks.
    pub resync: bool,
    pub first_seq: u64,
    pub last_seq: u64,
    pub first_ts_us: u64,
    pub last_ts_us: u64,
    pub count: u32,
    pub raw_len: u32,
    pub payload_len: u32,
    pub payload_crc: u32,
    pub raw_hash: [u8; 32],
}

impl ChunkHeader {
    /// Bytes on the wire.
    pub fn wire_len(&self) -> usize {
        HEADER_LEN + self.payload_len as usize
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ChunkError {
    #[error("not a Tern chunk (bad magic)")]
    Magic,
    #[error(
        "chunk format version {0} is not supported by this Tern (expects {VERSION}); upgrade the older side"
    )]
    Version(u16),
    #[error("chunk header checksum mismatch (damaged in transit)")]
    HeaderCrc,
    #[error("chunk truncated: {have} of {need} bytes")]
    Truncated { need: usize, have: usize },
    #[error("chunk payload checksum mismatch (damaged in transit)")]
    PayloadCrc,
    #[error("chunk content hash mismatch: the records differ from what the agent sent")]
    RawHash,
    #[error("chunk is for another pair")]
    WrongPair,
    #[error("chunk malformed: {0}")]
    Malformed(String),
}

fn bad(m: impl Into<String>) -> ChunkError {
    ChunkError::Malformed(m.into())
}

/// `records`' payload after `room` zero bytes (where a header goes, so the
/// payload is never copied to make a chunk).
fn encode_raw(records: &[WireRecord], room: usize) -> Vec<u8> {
    let n: usize = records.iter().map(|r| REC_HEADER_LEN + r.data_len()).sum();
    let mut out = bufpool::take(room + n);
    out.resize(room, 0);
    for w in records {
        let r = &w.record;
        let (kind, len, off, data): (u8, u32, u64, &[u8]) = match &r.body {
            RecordBody::Write { offset, data } => (KIND_WRITE, data.len() as u32, *offset, data),
            RecordBody::Zero { offset, len } => (KIND_ZERO, *len, *offset, &[]),
            RecordBody::Bookmark { kind, name } => (
                KIND_BOOKMARK,
                name.len() as u32,
                kind.code() as u64,
                name.as_bytes(),
            ),
        };
        out.push(kind);
        out.push(if w.inconsistent { FLAG_INCONSISTENT } else { 0 });
        out.extend_from_slice(&[0, 0]);
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&r.seq.to_le_bytes());
        out.extend_from_slice(&r.ts_us.to_le_bytes());
        out.extend_from_slice(&off.to_le_bytes());
        out.extend_from_slice(data);
    }
    out
}

/// Encode a chunk for `pair`. `records` must be non-empty, with consecutive seqs.
pub fn encode(pair: [u8; 16], records: &[WireRecord], codec: Codec) -> Vec<u8> {
    let first = &records.first().expect("a chunk has records").record;
    let last = &records.last().expect("a chunk has records").record;
    let mut buf = encode_raw(records, HEADER_LEN);
    let raw = &buf[HEADER_LEN..];
    let raw_hash = *blake3::hash(raw).as_bytes();
    let h = ChunkHeader {
        pair,
        compressed: false,
        resync: records.iter().any(|r| r.inconsistent),
        first_seq: first.seq,
        last_seq: last.seq,
        first_ts_us: first.ts_us,
        last_ts_us: last.ts_us,
        count: records.len() as u32,
        raw_len: raw.len() as u32,
        payload_len: 0,
        payload_crc: 0,
        raw_hash,
    };
    if let Some(out) = compress_behind_header(raw, codec) {
        bufpool::give(buf);
        return sealed(&h, out, true);
    }
    // Sent as is: the header goes in front of the payload in place.
    let hdr = header_bytes(&h, raw, false);
    buf[..HEADER_LEN].copy_from_slice(&hdr);
    buf
}

/// `raw` compressed with `codec` behind [`HEADER_LEN`] bytes of room (for
/// [`sealed`]), in a buffer from the pool; None when that would not make
/// it smaller, so incompressible data travels as is and the receiver pays
/// nothing.
fn compress_behind_header(raw: &[u8], codec: Codec) -> Option<Vec<u8>> {
    let Codec::Zstd(level) = codec else {
        return None;
    };
    ZSTD.with(|z| {
        let c = &mut z.borrow_mut().0;
        c.set_level(level);
        if looks_incompressible(c, raw) {
            return None;
        }
        let mut out = bufpool::take(HEADER_LEN + zstd::zstd_safe::compress_bound(raw.len()));
        out.resize(HEADER_LEN, 0);
        c.compress_append(raw, &mut out)
            .expect("in-memory zstd with a compress_bound buffer cannot fail");
        if out.len() - HEADER_LEN < raw.len() {
            Some(out)
        } else {
            bufpool::give(out);
            None
        }
    })
}

/// Payloads shorter than this are always tried whole.
const SAMPLE_ABOVE: usize = 256 << 10;
const SAMPLES: usize = 4;
const SAMPLE_LEN: usize = 16 << 10;

/// Whether `raw` is not worth compressing, judged from [`SAMPLES`] pieces
/// of [`SAMPLE_LEN`] bytes spread across it: true only when none of them
/// shrinks by 1/32 or more. Trying a whole incompressible chunk cost a PS
/// 0.15 CPU-seconds per GB for nothing; the samples cost 1/16 of that on a
/// 1 MiB chunk. A chunk mixing compressible and random data is tried
/// unless every sample lands in the random part.
fn looks_incompressible(c: &mut Compressor, raw: &[u8]) -> bool {
    if raw.len() < SAMPLE_ABOVE {
        return false;
    }
    let mut out = [0u8; SAMPLE_LEN + SAMPLE_LEN / 16];
    let step = (raw.len() - SAMPLE_LEN) / (SAMPLES - 1);
    (0..SAMPLES).all(|i| {
        let piece = &raw[i * step..i * step + SAMPLE_LEN];
        match c.compress_to(piece, &mut out[..]) {
            Ok(n) => n > SAMPLE_LEN - SAMPLE_LEN / 32,
            Err(_) => true,
        }
    })
}

/// The fixed header of a chunk of `h` carrying `payload`: codec, payload
/// length and payload CRC come from `compressed` and `payload`, the rest
/// from `h`.
fn header_bytes(h: &ChunkHeader, payload: &[u8], compressed: bool) -> [u8; HEADER_LEN] {
    let mut out = [0u8; HEADER_LEN];
    out[0..4].copy_from_slice(&MAGIC);
    out[4..6].copy_from_slice(&VERSION.to_le_bytes());
    out[6] = compressed as u8;
    out[7] = h.resync as u8;
    out[8..24].copy_from_slice(&h.pair);
    out[24..32].copy_from_slice(&h.first_seq.to_le_bytes());
    out[32..40].copy_from_slice(&h.last_seq.to_le_bytes());
    out[40..48].copy_from_slice(&h.first_ts_us.to_le_bytes());
    out[48..56].copy_from_slice(&h.last_ts_us.to_le_bytes());
    out[56..60].copy_from_slice(&h.count.to_le_bytes());
    out[60..64].copy_from_slice(&h.raw_len.to_le_bytes());
    out[64..68].copy_from_slice(&(payload.len() as u32).to_le_bytes());
    out[68..72].copy_from_slice(&crc::crc32c(payload).to_le_bytes());
    out[72..104].copy_from_slice(&h.raw_hash);
    // 104..108 reserved, zero.
    let crc = crc::crc32c(&out[..108]);
    out[108..112].copy_from_slice(&crc.to_le_bytes());
    out
}

/// `out` (a payload behind [`HEADER_LEN`] bytes of room) with the header of
/// `h` written into that room.
fn sealed(h: &ChunkHeader, mut out: Vec<u8>, compressed: bool) -> Vec<u8> {
    let hdr = header_bytes(h, &out[HEADER_LEN..], compressed);
    out[..HEADER_LEN].copy_from_slice(&hdr);
    out
}

/// Check and decode the fixed header (not the payload).
pub fn decode_header(b: &[u8]) -> Result<ChunkHeader, ChunkError> {
    if b.len() < HEADER_LEN {
        return Err(ChunkError::Truncated {
            need: HEADER_LEN,
            have: b.len(),
        });
    }
    if b[0..4] != MAGIC {
        return Err(ChunkError::Magic);
    }
    if crc::crc32c(&b[0..108]) != u32_at(b, 108) {
        return Err(ChunkError::HeaderCrc);
    }
    let v = u16_at(b, 4);
    if v != VERSION {
        return Err(ChunkError::Version(v));
    }
    if b[6] > 1 || b[7] > 1 || b[104..108] != [0; 4] {
        return Err(bad("unknown codec or reserved bytes set"));
    }
    let h = ChunkHeader {
        compressed: b[6] == 1,
        resync: b[7] == 1,
        pair: b[8..24].try_into().unwrap(),
        first_seq: u64_at(b, 24),
        last_seq: u64_at(b, 32),
        first_ts_us: u64_at(b, 40),
        last_ts_us: u64_at(b, 48),
        count: u32_at(b, 56),
        raw_len: u32_at(b, 60),
        payload_len: u32_at(b, 64),
        payload_crc: u32_at(b, 68),
        raw_hash: b[72..104].try_into().unwrap(),
    };
    if h.count == 0
        || h.first_seq == 0
        || h.last_seq.checked_sub(h.first_seq) != Some(h.count as u64 - 1)
    {
        return Err(bad(format!(
            "seqs {}..{} do not match {} records",
            h.first_seq, h.last_seq, h.count
        )));
    }
    if h.raw_len as usize > MAX_RAW || h.payload_len as usize > MAX_RAW {
        return Err(bad(format!("payload of {} bytes is too large", h.raw_len)));
    }
    // Every record takes at least its header: the count is bounded by the
    // bytes that carry it before anything is sized by it.
    if h.count as u64 * REC_HEADER_LEN as u64 > h.raw_len as u64 {
        return Err(bad(format!(
            "{} records cannot fit in {} bytes",
            h.count, h.raw_len
        )));
    }
    if h.last_ts_us < h.first_ts_us {
        return Err(bad("times go backwards"));
    }
    Ok(h)
}

/// Check the header, the length and the payload CRC of a whole chunk (what
/// one hop can damage); return the header and the payload as sent. The
/// end-to-end hash is not checked: [`decode_shared`] does that.
/// `payload_crc` is the CRC-32C of what follows the header: summed as the
/// body arrived (`transport::chunk_body`), or by [`payload_crc`].
pub fn check_hop(b: &[u8], payload_crc: u32) -> Result<(ChunkHeader, &[u8]), ChunkError> {
    let h = decode_header(b)?;
    if b.len() != h.wire_len() {
        return Err(if b.len() < h.wire_len() {
            ChunkError::Truncated {
                need: h.wire_len(),
                have: b.len(),
            }
        } else {
            bad(format!(
                "{} trailing bytes after the payload",
                b.len() - h.wire_len()
            ))
        });
    }
    let payload = &b[HEADER_LEN..];
    if payload_crc != h.payload_crc {
        return Err(ChunkError::PayloadCrc);
    }
    if !h.compressed && h.payload_len != h.raw_len {
        return Err(bad("uncompressed length differs from the header"));
    }
    Ok((h, payload))
}

/// The CRC-32C of what follows a chunk's header (for a chunk whose body was
/// not summed as it arrived).
pub fn payload_crc(b: &[u8]) -> u32 {
    crc::crc32c(b.get(HEADER_LEN..).unwrap_or_default())
}

/// [`check_hop`], then the uncompressed payload, its BLAKE3 verified.
fn verify(
    b: &[u8],
    payload_crc: u32,
) -> Result<(ChunkHeader, std::borrow::Cow<'_, [u8]>), ChunkError> {
    let (h, payload) = check_hop(b, payload_crc)?;
    let raw: std::borrow::Cow<[u8]> = if h.compressed {
        // Into a pooled buffer: see `bufpool` (a fresh one per chunk cost
        // page faults on every byte).
        let mut v = bufpool::take(h.raw_len as usize);
        let r = ZSTD.with(|z| {
            z.borrow_mut()
                .1
                .decompress_to_buffer(payload, &mut v)
                .map_err(|e| bad(format!("zstd: {e}")))
        });
        if let Err(e) = r {
            bufpool::give(v);
            return Err(e);
        }
        v.into()
    } else {
        payload.into()
    };
    if raw.len() != h.raw_len as usize {
        return Err(bad("uncompressed length differs from the header"));
    }
    if *blake3::hash(&raw).as_bytes() != h.raw_hash {
        return Err(ChunkError::RawHash);
    }
    Ok((h, raw))
}

thread_local! {
    /// One zstd context pair per thread: creating them per chunk cost a
    /// fresh workspace (allocation and page faults) every time.
    static ZSTD: std::cell::RefCell<(Compressor, zstd::bulk::Decompressor<'static>)> =
        std::cell::RefCell::new((
            Compressor::new(1),
            zstd::bulk::Decompressor::new().expect("zstd context"),
        ));
}

/// Verify and decode a whole chunk for `pair` (a copy of `b`; see
/// [`decode_shared`]).
pub fn decode(b: &[u8], pair: &[u8; 16]) -> Result<(ChunkHeader, Vec<WireRecord>), ChunkError> {
    decode_shared(&bytes::Bytes::copy_from_slice(b), pair, payload_crc(b))
}

/// Verify and decode a whole chunk for `pair`; the records' data are
/// slices of `b` (or of the decompressed payload), not copies.
/// `payload_crc` as for [`check_hop`].
pub fn decode_shared(
    b: &bytes::Bytes,
    pair: &[u8; 16],
    payload_crc: u32,
) -> Result<(ChunkHeader, Vec<WireRecord>), ChunkError> {
    let (h, raw) = verify(b, payload_crc)?;
    if &h.pair != pair {
        return Err(ChunkError::WrongPair);
    }
    let raw = match raw {
        std::borrow::Cow::Borrowed(_) => b.slice(HEADER_LEN..),
        std::borrow::Cow::Owned(v) => bufpool::shared(v),
    };
    let mut out = Vec::with_capacity(h.count as usize);
    let mut p = 0usize;
    let mut prev_ts = h.first_ts_us;
    for i in 0..h.count as u64 {
        if raw.len() - p < REC_HEADER_LEN {
            return Err(bad("record header past the end"));
        }
        let r = &raw[p..p + REC_HEADER_LEN];
        let (kind, flags, len) = (r[0], r[1], u32_at(r, 4) as usize);
        let (seq, ts_us, off) = (u64_at(r, 8), u64_at(r, 16), u64_at(r, 24));
        if flags & !FLAG_INCONSISTENT != 0 || r[2..4] != [0, 0] {
            return Err(bad("unknown record flags"));
        }
        if seq != h.first_seq + i {
            return Err(bad(format!(
                "record {i} has seq {seq}, expected {}",
                h.first_seq + i
            )));
        }
        if ts_us < prev_ts || ts_us > h.last_ts_us || (i == 0 && ts_us != h.first_ts_us) {
            return Err(bad("record times out of order or not the header's"));
        }
        prev_ts = ts_us;
        p += REC_HEADER_LEN;
        let data_len = if kind == KIND_ZERO { 0 } else { len };
        if raw.len() - p < data_len {
            return Err(bad("record data past the end"));
        }
        let data = &raw[p..p + data_len];
        p += data_len;
        let body = match kind {
            KIND_WRITE if len > 0 => RecordBody::Write {
                offset: off,
                data: raw.slice(p - data_len..p),
            },
            KIND_ZERO if len > 0 => RecordBody::Zero {
                offset: off,
                len: len as u32,
            },
            KIND_BOOKMARK if (1..=MAX_BOOKMARK_NAME).contains(&len) => RecordBody::Bookmark {
                kind: u8::try_from(off)
                    .ok()
                    .and_then(BookmarkKind::from_code)
                    .ok_or_else(|| bad("unknown bookmark type"))?,
                name: String::from_utf8(data.to_vec())
                    .map_err(|_| bad("bookmark name is not UTF-8"))?,
            },
            _ => {
                return Err(bad(format!(
                    "unknown record kind {kind}, an empty record or a bookmark name of {len} bytes"
                )));
            }
        };
        out.push(WireRecord {
            record: Record { seq, ts_us, body },
            inconsistent: flags & FLAG_INCONSISTENT != 0,
        });
    }
    if p != raw.len() {
        return Err(bad("bytes left after the last record"));
    }
    if prev_ts != h.last_ts_us {
        return Err(bad("the last record's time is not the header's"));
    }
    if out.iter().any(|r| r.inconsistent) != h.resync {
        return Err(bad("resync flag does not match the records"));
    }
    if out.last().map(|r| r.record.ts_us) != Some(h.last_ts_us) {
        return Err(bad("last record time differs from the header"));
    }
    Ok((h, out))
}

/// The records of an uncompressed chunk already checked ([`check_hop`]:
/// its header and raw payload) compressed with `codec`, keeping its
/// end-to-end hash;
/// None when compressing does not make it smaller (send it as it is).
pub fn reseal(h: &ChunkHeader, raw: &[u8], codec: Codec) -> Option<Vec<u8>> {
    compress_behind_header(raw, codec).map(|out| sealed(h, out, true))
}

/// A chunk refused this many times in a row (400: damaged, malformed) is
/// given up rather than sent again: by the agent, which resyncs instead, and
/// by the PS for a cached chunk, which drops its cache so the agent resyncs.
pub const GIVE_UP_AFTER: u32 = 3;

/// Refusals of the same chunk in a row, by its first seq.
#[derive(Debug, Default)]
pub struct Refusals {
    first: u64,
    count: u32,
}

impl Refusals {
    /// Count a refusal of the chunk starting at `first`; true when it is to
    /// be given up (the count then starts over).
    pub fn give_up(&mut self, first: u64) -> bool {
        if self.first == first {
            self.count += 1;
        } else {
            *self = Refusals { first, count: 1 };
        }
        let done = self.count >= GIVE_UP_AFTER;
        if done {
            *self = Refusals::default();
        }
        done
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<WireRecord> {
        vec![
            WireRecord {
                record: Record {
                    seq: 7,
                    ts_us: 1000,
                    body: RecordBody::Write {
                        offset: 4096,
                        data: vec![0xAB; 5000].into(),
                    },
                },
                inconsistent: true,
            },
            WireRecord {
                record: Record {
                    seq: 8,
                    ts_us: 1001,
                    body: RecordBody::Zero {
                        offset: 1 << 20,
                        len: 8192,
                    },
                },
                inconsistent: false,
            },
            WireRecord {
                record: Record {
                    seq: 9,
                    ts_us: 1002,
                    body: RecordBody::Bookmark {
                        kind: BookmarkKind::Fs,
                        name: "before-upgrade".into(),
                    },
                },
                inconsistent: false,
            },
        ]
    }

    #[test]
    fn a_chunk_is_given_up_after_refusals_in_a_row_only() {
        let mut r = Refusals::default();
        assert!(!r.give_up(5));
        assert!(!r.give_up(5));
        assert!(!r.give_up(9), "another chunk starts the count over");
        assert!(!r.give_up(5));
        assert!(!r.give_up(5));
        assert!(r.give_up(5));
        assert!(!r.give_up(5), "the count starts over once given up");
    }

    #[test]
    fn layout_matches_formats_md() {
        let pair = [5u8; 16];
        let b = encode(pair, &sample(), Codec::None);
        assert_eq!(&b[0..4], b"TCHK");
        assert_eq!(u16_at(&b, 4), 1);
        assert_eq!(
            (b[6], b[7]),
            (0, 1),
            "not compressed; has an inconsistent record"
        );
        assert_eq!(&b[8..24], &pair);
        assert_eq!((u64_at(&b, 24), u64_at(&b, 32)), (7, 9));
        assert_eq!((u64_at(&b, 40), u64_at(&b, 48)), (1000, 1002));
        assert_eq!(u32_at(&b, 56), 3);
        let raw_len = 3 * 32 + 5000 + 14;
        assert_eq!(u32_at(&b, 60) as usize, raw_len);
        assert_eq!(u32_at(&b, 64) as usize, raw_len);
        assert_eq!(u32_at(&b, 68), crc::crc32c(&b[112..]));
        assert_eq!(&b[72..104], blake3::hash(&b[112..]).as_bytes());
        assert_eq!(u32_at(&b, 108), crc::crc32c(&b[..108]));
        // First record header.
        let r = &b[112..144];
        assert_eq!((r[0], r[1], u32_at(r, 4)), (1, 1, 5000));
        assert_eq!(
            (u64_at(r, 8), u64_at(r, 16), u64_at(r, 24)),
            (7, 1000, 4096)
        );
        let (h, recs) = decode(&b, &pair).unwrap();
        assert_eq!(recs, sample());
        assert!(!h.compressed);
    }

    #[test]
    fn zstd_round_trips_and_reseal_keeps_the_hash() {
        let pair = [1u8; 16];
        let plain = encode(pair, &sample(), Codec::None);
        // What the PS does for `compression = ps`.
        let (h, payload) = check_hop(&plain, payload_crc(&plain)).unwrap();
        let z = reseal(&h, payload, Codec::Zstd(3)).unwrap();
        assert!(z.len() < plain.len());
        assert_eq!(z[6], 1);
        assert_eq!(&z[72..104], &plain[72..104]);
        assert_eq!(decode(&z, &pair).unwrap().1, sample());
        // Decompressed and sealed plain again, it is the agent's chunk.
        let (h, raw) = verify(&z, payload_crc(&z)).unwrap();
        let mut again = vec![0u8; HEADER_LEN];
        again.extend_from_slice(&raw);
        assert_eq!(sealed(&h, again, false), plain);
        // Incompressible records are not resealed: the PS forwards them as sent.
        let n = chunk_of(8192, 0.0);
        let (h, payload) = check_hop(&n, payload_crc(&n)).unwrap();
        assert_eq!(reseal(&h, payload, Codec::Zstd(1)), None);
    }

    /// One write of `len` bytes filled by `workload::fill` (4 KiB pieces,
    /// each zero with probability `c`, else random).
    fn chunk_of(len: usize, c: f64) -> Vec<u8> {
        use rand::SeedableRng;
        let mut data = vec![0u8; len];
        crate::engine::workload::fill(&mut rand::rngs::StdRng::seed_from_u64(9), &mut data, c);
        let mut recs = sample();
        recs[0].record.body = RecordBody::Write {
            offset: 0,
            data: data.into(),
        };
        encode([5u8; 16], &recs[..1], Codec::None)
    }

    #[test]
    fn large_chunks_are_judged_by_samples() {
        // Random: the samples say no, and it is forwarded as sent.
        let n = chunk_of(2 << 20, 0.0);
        let (h, payload) = check_hop(&n, payload_crc(&n)).unwrap();
        assert!(ZSTD.with(|z| looks_incompressible(&mut z.borrow_mut().0, payload)));
        assert_eq!(reseal(&h, payload, Codec::Zstd(1)), None);
        // Half zero pieces: compressed, and it decodes to the same records.
        let n = chunk_of(2 << 20, 0.5);
        let (h, payload) = check_hop(&n, payload_crc(&n)).unwrap();
        let z = reseal(&h, payload, Codec::Zstd(1)).expect("compressible");
        assert!(z.len() < n.len() * 6 / 10, "{} of {}", z.len(), n.len());
        assert_eq!(
            decode(&z, &[5u8; 16]).unwrap().1,
            decode(&n, &[5u8; 16]).unwrap().1
        );
        // Below the sampling size a chunk is tried whole.
        let n = chunk_of(SAMPLE_ABOVE - 4096, 0.1);
        let (h, payload) = check_hop(&n, payload_crc(&n)).unwrap();
        assert!(reseal(&h, payload, Codec::Zstd(1)).is_some());
    }

    #[test]
    fn every_damage_is_refused() {
        let pair = [2u8; 16];
        for codec in [Codec::None, Codec::Zstd(1)] {
            let b = encode(pair, &sample(), codec);
            for i in 0..b.len() {
                let mut c = b.clone();
                c[i] ^= 0x04;
                assert!(decode(&c, &pair).is_err(), "flip at {i} accepted");
            }
            for n in [0, 50, HEADER_LEN, b.len() - 1] {
                assert!(decode(&b[..n], &pair).is_err());
            }
            let mut longer = b.clone();
            longer.push(0);
            assert!(decode(&longer, &pair).is_err());
            assert_eq!(decode(&b, &[3u8; 16]).unwrap_err(), ChunkError::WrongPair);
        }
    }

    #[test]
    fn a_count_the_payload_cannot_carry_is_refused_with_valid_checksums() {
        // A peer that signs its lies: 4 G records in 14 bytes. The count
        // must be refused from the header alone, before anything is sized by it.
        let pair = [4u8; 16];
        let mut b = encode(pair, &sample()[..1], Codec::None);
        let count = u32::MAX;
        b[56..60].copy_from_slice(&count.to_le_bytes());
        let last = u64_at(&b, 24) + count as u64 - 1;
        b[32..40].copy_from_slice(&last.to_le_bytes());
        let crc = crc::crc32c(&b[..108]);
        b[108..112].copy_from_slice(&crc.to_le_bytes());
        let e = decode_header(&b).unwrap_err().to_string();
        assert!(e.contains("cannot fit"), "{e}");
        assert!(decode(&b, &pair).is_err());
    }

    /// Found by `fuzz/chunk`: a header whose times are not its records'
    /// decoded, and re-encoded to other bytes (the PS reports RPO from them).
    #[test]
    fn header_times_must_be_the_records_and_bookmark_names_fit_the_journal() {
        let pair = [6u8; 16];
        let reseal = |b: &mut Vec<u8>| {
            let crc = crc::crc32c(&b[..108]);
            b[108..112].copy_from_slice(&crc.to_le_bytes());
        };
        let good = encode(pair, &sample(), Codec::None);
        for (at, delta) in [(40usize, -1i64), (48, 1)] {
            let mut b = good.clone();
            let t = (u64_at(&b, at) as i64 + delta) as u64;
            b[at..at + 8].copy_from_slice(&t.to_le_bytes());
            reseal(&mut b);
            assert!(decode(&b, &pair).is_err(), "time at {at} moved by {delta}");
        }
        for name in ["", &"x".repeat(256)] {
            let recs = vec![WireRecord {
                record: Record {
                    seq: 1,
                    ts_us: 5,
                    body: RecordBody::Bookmark {
                        kind: BookmarkKind::User,
                        name: name.into(),
                    },
                },
                inconsistent: false,
            }];
            let b = encode(pair, &recs, Codec::None);
            assert!(decode(&b, &pair).is_err(), "name of {} bytes", name.len());
        }
    }
}
