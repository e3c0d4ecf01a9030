//! Byte formats of the journal: segment header, records, sealed-segment index,
//! and the state file. Specified in docs/FORMATS.md ("Retention journal");
//! the tests below pin the documented offsets.
//!
//! All integers are little-endian. Every structure carries a CRC-32C
//! (Castagnoli); record payloads carry one CRC per 4 KiB so a random 4 KiB
//! point-in-time read verifies only what it reads.

use std::fmt;

use crate::engine::crc;

pub const SEGMENT_MAGIC: [u8; 8] = *b"TERNJSEG";
pub const INDEX_MAGIC: [u8; 8] = *b"TERNJIDX";
pub const STATE_MAGIC: [u8; 8] = *b"TERNJSTA";
pub const FORMAT_VERSION: u16 = 1;
pub const SEGMENT_HEADER_LEN: usize = 64;
pub const RECORD_MAGIC: u32 = u32::from_le_bytes(*b"TRJ1");
pub const RECORD_HEADER_LEN: usize = 48;
/// Payload bytes covered by one CRC.
pub const CRC_BLOCK: usize = 4096;
/// Largest payload of one record (a sender splits larger writes).
pub const MAX_RECORD_PAYLOAD: u32 = 16 << 20;
pub const INDEX_HEADER_LEN: usize = 64;
pub const INDEX_ENTRY_LEN: usize = 48;
pub const STATE_LEN: usize = 96;
/// Largest bookmark name, in bytes.
pub const MAX_BOOKMARK_NAME: usize = 255;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    /// New data for `[offset, offset+len)`.
    Write = 1,
    /// `[offset, offset+len)` reads as zeros from here on (trim / write-zeroes); no payload.
    Zero = 2,
    /// A consistency point; payload is [`BookmarkPayload`].
    Bookmark = 3,
    /// Seals a chunk: payload is [`CommitPayload`].
    Commit = 4,
    /// In a compacted segment: a point that the sparse policy kept. No payload.
    Point = 5,
}

impl Kind {
    pub fn from_u8(b: u8) -> Option<Kind> {
        Some(match b {
            1 => Kind::Write,
            2 => Kind::Zero,
            3 => Kind::Bookmark,
            4 => Kind::Commit,
            5 => Kind::Point,
            _ => return None,
        })
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("truncated: need {need} bytes, have {have}")]
    Truncated { need: usize, have: usize },
    #[error("bad magic")]
    BadMagic,
    #[error("unsupported format version {0}")]
    Version(u16),
    #[error("header checksum mismatch")]
    HeaderChecksum,
    #[error("payload checksum mismatch in 4 KiB block {0}")]
    PayloadChecksum(usize),
    #[error("invalid field: {0}")]
    Invalid(&'static str),
}

/// Little-endian integers at a byte offset (the caller checked the length);
/// shared by every binary format in the crate.
pub(crate) fn u16_at(b: &[u8], o: usize) -> u16 {
    u16::from_le_bytes(b[o..o + 2].try_into().unwrap())
}
pub(crate) fn u32_at(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes(b[o..o + 4].try_into().unwrap())
}
pub(crate) fn u64_at(b: &[u8], o: usize) -> u64 {
    u64::from_le_bytes(b[o..o + 8].try_into().unwrap())
}

fn need(b: &[u8], n: usize) -> Result<(), DecodeError> {
    if b.len() < n {
        Err(DecodeError::Truncated {
            need: n,
            have: b.len(),
        })
    } else {
        Ok(())
    }
}

/// Check the common prefix of every fixed header: magic at 0..8, version at
/// 8..10, and a CRC of bytes `0..crc_at` stored at `crc_at`.
fn check_header(b: &[u8], magic: &[u8; 8], crc_at: usize) -> Result<(), DecodeError> {
    need(b, crc_at + 4)?;
    if b[0..8] != *magic {
        return Err(DecodeError::BadMagic);
    }
    if crc::crc32c(&b[0..crc_at]) != u32_at(b, crc_at) {
        return Err(DecodeError::HeaderChecksum);
    }
    let v = u16_at(b, 8);
    if v != FORMAT_VERSION {
        return Err(DecodeError::Version(v));
    }
    Ok(())
}

/// Write the magic and version of a fixed header.
fn start_header(b: &mut [u8], magic: &[u8; 8]) {
    b[0..8].copy_from_slice(magic);
    b[8..10].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
}

/// Store the CRC of bytes `0..crc_at` at `crc_at` (call once the rest is written).
fn seal_header(b: &mut [u8], crc_at: usize) {
    let c = crc::crc32c(&b[0..crc_at]);
    b[crc_at..crc_at + 4].copy_from_slice(&c.to_le_bytes());
}

// --- segment header --------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentHeader {
    pub segno: u64,
    pub journal_id: u64,
    pub volume_size: u64,
    pub created_us: u64,
    /// 0: as written by apply; k: compacted by sparse tier k.
    pub level: u8,
}

impl SegmentHeader {
    pub fn encode(&self) -> [u8; SEGMENT_HEADER_LEN] {
        let mut b = [0u8; SEGMENT_HEADER_LEN];
        start_header(&mut b, &SEGMENT_MAGIC);
        b[10] = self.level;
        b[12..16].copy_from_slice(&(SEGMENT_HEADER_LEN as u32).to_le_bytes());
        b[16..24].copy_from_slice(&self.segno.to_le_bytes());
        b[24..32].copy_from_slice(&self.journal_id.to_le_bytes());
        b[32..40].copy_from_slice(&self.volume_size.to_le_bytes());
        b[40..48].copy_from_slice(&self.created_us.to_le_bytes());
        seal_header(&mut b, 60);
        b
    }

    pub fn decode(b: &[u8]) -> Result<SegmentHeader, DecodeError> {
        check_header(b, &SEGMENT_MAGIC, 60)?;
        Ok(SegmentHeader {
            segno: u64_at(b, 16),
            journal_id: u64_at(b, 24),
            volume_size: u64_at(b, 32),
            created_us: u64_at(b, 40),
            level: b[10],
        })
    }
}

// --- records ---------------------------------------------------------------

/// The fixed part of a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordHeader {
    pub kind: Kind,
    pub seq: u64,
    /// Source time, microseconds since the Unix epoch.
    pub ts_us: u64,
    pub offset: u64,
    /// Payload length (Write, Bookmark, Commit) or range length (Zero).
    pub len: u32,
}

impl RecordHeader {
    /// Bytes of payload that follow the CRC array.
    pub fn payload_len(&self) -> usize {
        match self.kind {
            Kind::Zero | Kind::Point => 0,
            _ => self.len as usize,
        }
    }
    pub fn ncrc(&self) -> usize {
        self.payload_len().div_ceil(CRC_BLOCK)
    }
    /// Header + CRC array + payload.
    pub fn total_len(&self) -> usize {
        RECORD_HEADER_LEN + 4 * self.ncrc() + self.payload_len()
    }
    /// Offset of the payload from the start of the record.
    pub fn payload_pos(&self) -> usize {
        RECORD_HEADER_LEN + 4 * self.ncrc()
    }

    pub fn encode_header(&self) -> [u8; RECORD_HEADER_LEN] {
        let mut b = [0u8; RECORD_HEADER_LEN];
        b[0..4].copy_from_slice(&RECORD_MAGIC.to_le_bytes());
        b[4] = self.kind as u8;
        b[8..16].copy_from_slice(&self.seq.to_le_bytes());
        b[16..24].copy_from_slice(&self.ts_us.to_le_bytes());
        b[24..32].copy_from_slice(&self.offset.to_le_bytes());
        b[32..36].copy_from_slice(&self.len.to_le_bytes());
        b[36..40].copy_from_slice(&(self.ncrc() as u32).to_le_bytes());
        seal_header(&mut b, 44);
        b
    }

    /// Decode and check a record header (not its payload).
    pub fn decode(b: &[u8]) -> Result<RecordHeader, DecodeError> {
        need(b, RECORD_HEADER_LEN)?;
        if u32_at(b, 0) != RECORD_MAGIC {
            return Err(DecodeError::BadMagic);
        }
        if crc::crc32c(&b[0..44]) != u32_at(b, 44) {
            return Err(DecodeError::HeaderChecksum);
        }
        let kind = Kind::from_u8(b[4]).ok_or(DecodeError::Invalid("record kind"))?;
        if b[5..8] != [0; 3] || b[40..44] != [0; 4] {
            return Err(DecodeError::Invalid("reserved bytes must be zero"));
        }
        let h = RecordHeader {
            kind,
            seq: u64_at(b, 8),
            ts_us: u64_at(b, 16),
            offset: u64_at(b, 24),
            len: u32_at(b, 32),
        };
        if u32_at(b, 36) as usize != h.ncrc() {
            return Err(DecodeError::Invalid("crc count"));
        }
        // Zero ranges too: the journal never writes one longer (`validate`,
        // and compaction only cuts records), and each costs index entries.
        if h.len > MAX_RECORD_PAYLOAD {
            return Err(DecodeError::Invalid("record too large"));
        }
        if h.offset.checked_add(h.len as u64).is_none() {
            return Err(DecodeError::Invalid("offset overflow"));
        }
        Ok(h)
    }
}

/// Append a whole record (header, CRCs, payload) to `out`.
pub fn encode_record(out: &mut Vec<u8>, h: &RecordHeader, payload: &[u8]) {
    debug_assert_eq!(payload.len(), h.payload_len());
    out.extend_from_slice(&h.encode_header());
    for block in payload.chunks(CRC_BLOCK) {
        out.extend_from_slice(&crc::crc32c(block).to_le_bytes());
    }
    out.extend_from_slice(payload);
}

/// Decode a whole record from the front of `b`, verifying every checksum.
/// Returns the header, the payload and the bytes consumed. This is the
/// function the fuzzer drives.
pub fn decode_record(b: &[u8]) -> Result<(RecordHeader, &[u8], usize), DecodeError> {
    let h = RecordHeader::decode(b)?;
    let total = h.total_len();
    need(b, total)?;
    let crcs = &b[RECORD_HEADER_LEN..h.payload_pos()];
    let payload = &b[h.payload_pos()..total];
    verify_blocks(crcs, payload, 0)?;
    Ok((h, payload, total))
}

/// Check `payload` (which starts at 4 KiB block `first_block` of a record)
/// against the CRCs for those blocks.
pub fn verify_blocks(crcs: &[u8], payload: &[u8], first_block: usize) -> Result<(), DecodeError> {
    for (i, block) in payload.chunks(CRC_BLOCK).enumerate() {
        let o = 4 * i;
        if o + 4 > crcs.len() || crc::crc32c(block) != u32_at(crcs, o) {
            return Err(DecodeError::PayloadChecksum(first_block + i));
        }
    }
    Ok(())
}

/// Bookmark types (seed: application, filesystem, user tags).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum BookmarkKind {
    App,
    Fs,
    User,
}

impl BookmarkKind {
    pub fn code(self) -> u8 {
        match self {
            BookmarkKind::App => 1,
            BookmarkKind::Fs => 2,
            BookmarkKind::User => 3,
        }
    }
    pub fn from_code(c: u8) -> Option<BookmarkKind> {
        Some(match c {
            1 => BookmarkKind::App,
            2 => BookmarkKind::Fs,
            3 => BookmarkKind::User,
            _ => return None,
        })
    }
}

impl fmt::Display for BookmarkKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BookmarkKind::App => "app",
            BookmarkKind::Fs => "fs",
            BookmarkKind::User => "user",
        })
    }
}

impl std::str::FromStr for BookmarkKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "app" | "application" => Ok(BookmarkKind::App),
            "fs" | "filesystem" => Ok(BookmarkKind::Fs),
            "user" => Ok(BookmarkKind::User),
            _ => Err(format!("unknown bookmark type `{s}`; use app, fs or user")),
        }
    }
}

/// Bookmark payload: `kind u8, reserved u8, name_len u16, name`.
pub fn encode_bookmark(kind: BookmarkKind, name: &str) -> Vec<u8> {
    let n = name.as_bytes();
    let mut v = Vec::with_capacity(4 + n.len());
    v.push(kind.code());
    v.push(0);
    v.extend_from_slice(&(n.len() as u16).to_le_bytes());
    v.extend_from_slice(n);
    v
}

pub fn decode_bookmark(p: &[u8]) -> Result<(BookmarkKind, String), DecodeError> {
    need(p, 4)?;
    let kind = BookmarkKind::from_code(p[0]).ok_or(DecodeError::Invalid("bookmark kind"))?;
    let n = u16_at(p, 2) as usize;
    if n > MAX_BOOKMARK_NAME || p.len() != 4 + n {
        return Err(DecodeError::Invalid("bookmark name length"));
    }
    let name = std::str::from_utf8(&p[4..])
        .map_err(|_| DecodeError::Invalid("bookmark name utf-8"))?
        .to_owned();
    Ok((kind, name))
}

/// Commit payload: `first_seq u64, count u32, chunk_crc u32` where chunk_crc
/// is the CRC-32C of every byte of the chunk's records before the commit.
pub const COMMIT_PAYLOAD_LEN: usize = 16;

pub fn encode_commit(first_seq: u64, count: u32, chunk_crc: u32) -> [u8; COMMIT_PAYLOAD_LEN] {
    let mut b = [0u8; COMMIT_PAYLOAD_LEN];
    b[0..8].copy_from_slice(&first_seq.to_le_bytes());
    b[8..12].copy_from_slice(&count.to_le_bytes());
    b[12..16].copy_from_slice(&chunk_crc.to_le_bytes());
    b
}

pub fn decode_commit(p: &[u8]) -> Result<(u64, u32, u32), DecodeError> {
    if p.len() != COMMIT_PAYLOAD_LEN {
        return Err(DecodeError::Invalid("commit payload length"));
    }
    Ok((u64_at(p, 0), u32_at(p, 8), u32_at(p, 12)))
}

// --- sealed segment index --------------------------------------------------

/// One record of a sealed segment, as its index lists it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexEntry {
    pub kind: Kind,
    pub len: u32,
    pub seq: u64,
    pub ts_us: u64,
    pub offset: u64,
    /// Position of the record's first byte in the segment file.
    pub pos: u64,
}

impl IndexEntry {
    /// The record this entry describes: header, CRCs and payload bytes.
    pub fn record_len(&self) -> u64 {
        RecordHeader {
            kind: self.kind,
            seq: self.seq,
            ts_us: self.ts_us,
            offset: self.offset,
            len: self.len,
        }
        .total_len() as u64
    }
}

/// Whether a decoded index can describe a segment of `segment_len` bytes of
/// a `volume_size`-byte volume: records in order inside the segment, none
/// overlapping, each no longer than a record can be, and every write or
/// zero range inside the volume. The CRCs say the file is as written; this
/// says nothing in it sizes a read or an allocation past what is there.
pub fn index_fits(entries: &[IndexEntry], segment_len: u64, volume_size: u64) -> bool {
    let mut at = SEGMENT_HEADER_LEN as u64;
    entries.iter().all(|e| {
        let fits = e.pos >= at
            && e.len <= MAX_RECORD_PAYLOAD
            && e.pos
                .checked_add(e.record_len())
                .is_some_and(|end| end <= segment_len)
            && match e.kind {
                Kind::Write | Kind::Zero => {
                    e.len > 0
                        && e.offset
                            .checked_add(e.len as u64)
                            .is_some_and(|end| end <= volume_size)
                }
                Kind::Bookmark => (4..=4 + MAX_BOOKMARK_NAME as u32).contains(&e.len),
                Kind::Commit => e.len == 16,
                Kind::Point => e.len == 0,
            };
        at = e.pos + e.record_len();
        fits
    })
}

pub fn encode_index(
    segno: u64,
    journal_id: u64,
    segment_len: u64,
    entries: &[IndexEntry],
) -> Vec<u8> {
    let mut b = vec![0u8; INDEX_HEADER_LEN];
    start_header(&mut b, &INDEX_MAGIC);
    b[12..16].copy_from_slice(&(entries.len() as u32).to_le_bytes());
    b[16..24].copy_from_slice(&segno.to_le_bytes());
    b[24..32].copy_from_slice(&journal_id.to_le_bytes());
    b[32..40].copy_from_slice(&segment_len.to_le_bytes());
    seal_header(&mut b, 60);
    let start = b.len();
    for e in entries {
        let mut x = [0u8; INDEX_ENTRY_LEN];
        x[0] = e.kind as u8;
        x[4..8].copy_from_slice(&e.len.to_le_bytes());
        x[8..16].copy_from_slice(&e.seq.to_le_bytes());
        x[16..24].copy_from_slice(&e.ts_us.to_le_bytes());
        x[24..32].copy_from_slice(&e.offset.to_le_bytes());
        x[32..40].copy_from_slice(&e.pos.to_le_bytes());
        b.extend_from_slice(&x);
    }
    let c = crc::crc32c(&b[start..]);
    b.extend_from_slice(&c.to_le_bytes());
    b
}

/// Returns (segno, journal_id, segment_len, entries).
pub fn decode_index(b: &[u8]) -> Result<(u64, u64, u64, Vec<IndexEntry>), DecodeError> {
    check_header(b, &INDEX_MAGIC, 60)?;
    if b[10..12] != [0; 2] || b[40..60] != [0; 20] {
        return Err(DecodeError::Invalid("reserved bytes must be zero"));
    }
    let n = u32_at(b, 12) as usize;
    let body = n
        .checked_mul(INDEX_ENTRY_LEN)
        .ok_or(DecodeError::Invalid("entry count"))?;
    need(b, INDEX_HEADER_LEN + body + 4)?;
    if b.len() != INDEX_HEADER_LEN + body + 4 {
        return Err(DecodeError::Invalid("index length"));
    }
    let entries_bytes = &b[INDEX_HEADER_LEN..INDEX_HEADER_LEN + body];
    if crc::crc32c(entries_bytes) != u32_at(b, INDEX_HEADER_LEN + body) {
        return Err(DecodeError::PayloadChecksum(0));
    }
    let mut entries = Vec::with_capacity(n);
    for x in entries_bytes.chunks_exact(INDEX_ENTRY_LEN) {
        if x[1..4] != [0; 3] || x[40..48] != [0; 8] {
            return Err(DecodeError::Invalid("reserved bytes must be zero"));
        }
        entries.push(IndexEntry {
            kind: Kind::from_u8(x[0]).ok_or(DecodeError::Invalid("entry kind"))?,
            len: u32_at(x, 4),
            seq: u64_at(x, 8),
            ts_us: u64_at(x, 16),
            offset: u64_at(x, 24),
            pos: u64_at(x, 32),
        });
    }
    Ok((u64_at(b, 16), u64_at(b, 24), u64_at(b, 32), entries))
}

// --- state file ------------------------------------------------------------

/// `journal.state` version 2: two slots written in place (see
/// [`State::encode_file`]); version 1 was one record replaced by rename.
pub const STATE_VERSION: u16 = 2;
/// Each slot of `journal.state` v2 (sector-aligned, so a torn write spoils one).
pub const STATE_SLOT: usize = 512;
pub const STATE_FILE_LEN: usize = 2 * STATE_SLOT;

/// `journal.state`: what is true of the replica.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct State {
    pub journal_id: u64,
    pub volume_size: u64,
    /// The replica holds the image at this sequence number.
    pub base_seq: u64,
    /// Source time of `base_seq` (µs).
    pub base_ts_us: u64,
    /// A checkpoint to this sequence number was started and may be half done:
    /// points before it are gone, and it must be redone on open.
    pub pending_base: Option<(u64, u64)>,
    /// Times the window was cut short by the space policy ("retention log reset").
    pub resets: u64,
    /// Write generation: each write goes to slot `gen % 2`; the valid slot
    /// with the higher generation is the state.
    pub generation: u64,
}

impl State {
    /// One version-2 record (96 bytes).
    pub fn encode(&self) -> [u8; STATE_LEN] {
        let mut b = [0u8; STATE_LEN];
        b[0..8].copy_from_slice(&STATE_MAGIC);
        b[8..10].copy_from_slice(&STATE_VERSION.to_le_bytes());
        b[16..24].copy_from_slice(&self.journal_id.to_le_bytes());
        b[24..32].copy_from_slice(&self.volume_size.to_le_bytes());
        b[32..40].copy_from_slice(&self.base_seq.to_le_bytes());
        b[40..48].copy_from_slice(&self.base_ts_us.to_le_bytes());
        let (ps, pt) = self.pending_base.unwrap_or((u64::MAX, u64::MAX));
        b[48..56].copy_from_slice(&ps.to_le_bytes());
        b[56..64].copy_from_slice(&pt.to_le_bytes());
        b[64..72].copy_from_slice(&self.resets.to_le_bytes());
        b[72..80].copy_from_slice(&self.generation.to_le_bytes());
        seal_header(&mut b, 92);
        b
    }

    /// One record: version 2, or version 1 (no generation; read as 0).
    pub fn decode(b: &[u8]) -> Result<State, DecodeError> {
        need(b, STATE_LEN)?;
        if b[0..8] != STATE_MAGIC {
            return Err(DecodeError::BadMagic);
        }
        if crc::crc32c(&b[0..92]) != u32_at(b, 92) {
            return Err(DecodeError::HeaderChecksum);
        }
        let v = u16_at(b, 8);
        let reserved = match v {
            1 => &b[72..92],
            STATE_VERSION => &b[80..92],
            _ => return Err(DecodeError::Version(v)),
        };
        if b[10..16].iter().chain(reserved).any(|x| *x != 0) {
            return Err(DecodeError::Invalid("reserved bytes set"));
        }
        let ps = u64_at(b, 48);
        Ok(State {
            journal_id: u64_at(b, 16),
            volume_size: u64_at(b, 24),
            base_seq: u64_at(b, 32),
            base_ts_us: u64_at(b, 40),
            pending_base: (ps != u64::MAX).then(|| (ps, u64_at(b, 56))),
            resets: u64_at(b, 64),
            generation: if v == 1 { 0 } else { u64_at(b, 72) },
        })
    }

    /// The slot this state is written to, zero-padded.
    pub fn encode_slot(&self) -> [u8; STATE_SLOT] {
        let mut b = [0u8; STATE_SLOT];
        b[..STATE_LEN].copy_from_slice(&self.encode());
        b
    }

    /// A whole version-2 file holding this state in its slot (the other empty).
    pub fn encode_file(&self) -> Vec<u8> {
        let mut b = vec![0u8; STATE_FILE_LEN];
        let at = self.slot_offset() as usize;
        b[at..at + STATE_SLOT].copy_from_slice(&self.encode_slot());
        b
    }

    pub fn slot_offset(&self) -> u64 {
        (self.generation % 2) * STATE_SLOT as u64
    }

    /// A `journal.state` file: two slots, of which the valid one with the
    /// higher generation wins (the other may be empty or torn). A version-1
    /// file is its 96-byte record alone: it reads as slot 0 holding
    /// generation 0, so the first write (generation 1, slot 1 at offset
    /// 512) upgrades it in place, and a torn first write leaves it as it was.
    /// A file shorter than 1024 bytes (that first write not yet durable)
    /// reads as if padded with zeros.
    pub fn decode_file(b: &[u8]) -> Result<State, DecodeError> {
        if b.len() < STATE_LEN || b.len() > STATE_FILE_LEN {
            return Err(DecodeError::Invalid(
                "state file length must be 96 to 1024 bytes",
            ));
        }
        let mut f = [0u8; STATE_FILE_LEN];
        f[..b.len()].copy_from_slice(b);
        let mut best: Option<State> = None;
        let mut first_err = None;
        for k in 0..2 {
            let slot = &f[k * STATE_SLOT..(k + 1) * STATE_SLOT];
            if slot.iter().all(|x| *x == 0) {
                continue;
            }
            let r = State::decode(slot).and_then(|s| {
                let v = u16_at(slot, 8);
                if v != STATE_VERSION && !(v == 1 && k == 0) {
                    Err(DecodeError::Invalid(
                        "a state slot must be version 2 (or version 1 in slot 0)",
                    ))
                } else if slot[STATE_LEN..].iter().any(|x| *x != 0) {
                    Err(DecodeError::Invalid(
                        "bytes after the record in a state slot",
                    ))
                } else if s.slot_offset() != (k * STATE_SLOT) as u64 {
                    Err(DecodeError::Invalid(
                        "state record in the wrong slot for its generation",
                    ))
                } else {
                    Ok(s)
                }
            });
            match r {
                Ok(s) if best.is_none_or(|b| s.generation > b.generation) => best = Some(s),
                Ok(_) => {}
                Err(e) => first_err = first_err.or(Some(e)),
            }
        }
        best.ok_or(first_err.unwrap_or(DecodeError::Invalid("both state slots are empty")))
    }
}

/// `unrecoverable.state`: seq ranges whose points are not consistent images
/// of the source (a resync or a bitmap drain was under way). Layout in
/// docs/FORMATS.md: magic `TERNJUNR`, version, count, `count` pairs of
/// (from, to) inclusive, CRC32C of everything before it.
pub const UNREC_MAGIC: [u8; 8] = *b"TERNJUNR";

pub fn encode_ranges(ranges: &std::collections::BTreeMap<u64, u64>) -> Vec<u8> {
    let mut b = vec![0u8; 16 + 16 * ranges.len() + 4];
    start_header(&mut b, &UNREC_MAGIC);
    b[12..16].copy_from_slice(&(ranges.len() as u32).to_le_bytes());
    for (i, (from, to)) in ranges.iter().enumerate() {
        b[16 + 16 * i..24 + 16 * i].copy_from_slice(&from.to_le_bytes());
        b[24 + 16 * i..32 + 16 * i].copy_from_slice(&to.to_le_bytes());
    }
    let crc_at = b.len() - 4;
    seal_header(&mut b, crc_at);
    b
}

pub fn decode_ranges(b: &[u8]) -> Result<std::collections::BTreeMap<u64, u64>, DecodeError> {
    need(b, 20)?;
    let count = u32_at(b, 12) as usize;
    if count > (b.len() - 20) / 16 {
        return Err(DecodeError::Invalid("range count larger than the file"));
    }
    let crc_at = 16 + 16 * count;
    check_header(b, &UNREC_MAGIC, crc_at)?;
    if b.len() != crc_at + 4 || b[10..12] != [0, 0] {
        return Err(DecodeError::Invalid("trailing bytes or reserved bytes set"));
    }
    let mut m = std::collections::BTreeMap::new();
    let mut prev_to: Option<u64> = None;
    for i in 0..count {
        let (from, to) = (u64_at(b, 16 + 16 * i), u64_at(b, 24 + 16 * i));
        if from > to || prev_to.is_some_and(|p| from <= p.saturating_add(1)) {
            return Err(DecodeError::Invalid(
                "ranges must be ordered, disjoint and not adjacent",
            ));
        }
        prev_to = Some(to);
        m.insert(from, to);
    }
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unrecoverable_ranges_layout_and_rejections() {
        let mut m = std::collections::BTreeMap::new();
        m.insert(0u64, 0u64);
        m.insert(5, 9);
        let b = encode_ranges(&m);
        assert_eq!(&b[0..8], b"TERNJUNR");
        assert_eq!(u16_at(&b, 8), 1);
        assert_eq!(u32_at(&b, 12), 2);
        assert_eq!((u64_at(&b, 32), u64_at(&b, 40)), (5, 9));
        assert_eq!(b.len(), 16 + 32 + 4);
        assert_eq!(u32_at(&b, 48), crc::crc32c(&b[..48]));
        assert_eq!(decode_ranges(&b).unwrap(), m);
        for i in 0..b.len() {
            let mut c = b.clone();
            c[i] ^= 0x10;
            assert!(decode_ranges(&c).is_err(), "flip at byte {i} accepted");
        }
        assert!(decode_ranges(&b[..b.len() - 1]).is_err());
    }

    #[test]
    fn record_layout_matches_formats_md() {
        let h = RecordHeader {
            kind: Kind::Write,
            seq: 0x0102030405060708,
            ts_us: 0x1112131415161718,
            offset: 0x2122232425262728,
            len: 5000,
        };
        let mut out = Vec::new();
        encode_record(&mut out, &h, &[7u8; 5000]);
        assert_eq!(&out[0..4], b"TRJ1");
        assert_eq!(out[4], 1);
        assert_eq!(u64_at(&out, 8), 0x0102030405060708);
        assert_eq!(u64_at(&out, 16), 0x1112131415161718);
        assert_eq!(u64_at(&out, 24), 0x2122232425262728);
        assert_eq!(u32_at(&out, 32), 5000);
        assert_eq!(u32_at(&out, 36), 2, "two 4 KiB CRC blocks");
        assert_eq!(u32_at(&out, 44), crc::crc32c(&out[0..44]));
        assert_eq!(u32_at(&out, 48), crc::crc32c(&[7u8; 4096]));
        assert_eq!(u32_at(&out, 52), crc::crc32c(&[7u8; 904]));
        assert_eq!(out.len(), 48 + 8 + 5000);
        let (d, p, n) = decode_record(&out).unwrap();
        assert_eq!((d, p.len(), n), (h, 5000, out.len()));
    }

    #[test]
    fn any_flipped_bit_in_a_record_is_detected() {
        let h = RecordHeader {
            kind: Kind::Write,
            seq: 9,
            ts_us: 1,
            offset: 4096,
            len: 600,
        };
        let mut rec = Vec::new();
        encode_record(&mut rec, &h, &[0x5a; 600]);
        for i in 0..rec.len() {
            for bit in [0u8, 3, 7] {
                let mut r = rec.clone();
                r[i] ^= 1 << bit;
                assert!(
                    decode_record(&r).is_err(),
                    "flip at byte {i} bit {bit} undetected"
                );
            }
        }
    }

    #[test]
    fn decoders_survive_random_mutations() {
        // The in-suite cousin of fuzz/ (which needs cargo-fuzz): mutate valid
        // structures at random; decoding must never panic, and whatever
        // decodes must re-encode to the same bytes.
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let mut rec = Vec::new();
        encode_record(
            &mut rec,
            &RecordHeader {
                kind: Kind::Write,
                seq: 3,
                ts_us: 4,
                offset: 512,
                len: 9000,
            },
            &[3u8; 9000],
        );
        let bm = encode_bookmark(BookmarkKind::App, "x");
        encode_record(
            &mut rec,
            &RecordHeader {
                kind: Kind::Bookmark,
                seq: 4,
                ts_us: 4,
                offset: 0,
                len: bm.len() as u32,
            },
            &bm,
        );
        let idx = encode_index(
            1,
            2,
            3,
            &[IndexEntry {
                kind: Kind::Write,
                len: 1,
                seq: 2,
                ts_us: 3,
                offset: 4,
                pos: 5,
            }],
        );
        for _ in 0..20_000 {
            for base in [&rec, &idx] {
                let mut m = base.clone();
                for _ in 0..rng.random_range(1..4) {
                    match rng.random_range(0..3) {
                        0 => {
                            let i = rng.random_range(0..m.len());
                            m[i] = rng.random();
                        }
                        1 => m.truncate(rng.random_range(0..m.len())),
                        _ => m.extend_from_slice(&[rng.random(); 8]),
                    }
                    if m.is_empty() {
                        break;
                    }
                }
                if let Ok((h, p, n)) = decode_record(&m) {
                    let mut again = Vec::new();
                    encode_record(&mut again, &h, p);
                    assert_eq!(&again[..], &m[..n]);
                    let _ = decode_bookmark(p);
                    let _ = decode_commit(p);
                }
                if let Ok((a, b, c, e)) = decode_index(&m) {
                    assert_eq!(encode_index(a, b, c, &e), m);
                }
                let _ = SegmentHeader::decode(&m);
                let _ = State::decode(&m);
                let _ = State::decode_file(&m);
            }
        }
    }

    #[test]
    fn truncated_record_is_rejected() {
        let h = RecordHeader {
            kind: Kind::Write,
            seq: 1,
            ts_us: 1,
            offset: 0,
            len: 100,
        };
        let mut rec = Vec::new();
        encode_record(&mut rec, &h, &[1; 100]);
        for cut in 0..rec.len() {
            assert!(decode_record(&rec[..cut]).is_err());
        }
    }

    #[test]
    fn segment_header_state_and_index_round_trip_with_documented_offsets() {
        let s = SegmentHeader {
            segno: 3,
            journal_id: 0xabc,
            volume_size: 1 << 30,
            created_us: 5,
            level: 2,
        };
        let b = s.encode();
        assert_eq!(b[10], 2);
        assert_eq!(&b[0..8], b"TERNJSEG");
        assert_eq!(u16_at(&b, 8), 1);
        assert_eq!(u64_at(&b, 16), 3);
        assert_eq!(u64_at(&b, 24), 0xabc);
        assert_eq!(u64_at(&b, 32), 1 << 30);
        assert_eq!(SegmentHeader::decode(&b).unwrap(), s);

        let st = State {
            journal_id: 1,
            volume_size: 2,
            base_seq: 3,
            base_ts_us: 4,
            pending_base: Some((5, 6)),
            resets: 7,
            generation: 9,
        };
        let b = st.encode();
        assert_eq!(&b[0..8], b"TERNJSTA");
        assert_eq!(u16_at(&b, 8), 2);
        assert_eq!(u64_at(&b, 32), 3);
        assert_eq!(u64_at(&b, 48), 5);
        assert_eq!(u64_at(&b, 64), 7);
        assert_eq!(u64_at(&b, 72), 9);
        assert_eq!(u32_at(&b, 92), crc::crc32c(&b[..92]));
        assert_eq!(State::decode(&b).unwrap(), st);
        // The file: gen 9 lives in slot 1 (offset 512); slot 0 may be empty.
        let f = st.encode_file();
        assert_eq!(f.len(), 1024);
        assert_eq!(&f[512..520], b"TERNJSTA");
        assert!(f[..512].iter().all(|x| *x == 0));
        assert_eq!(State::decode_file(&f).unwrap(), st);
        // The newer of two valid slots wins; a torn newer slot leaves the older.
        let mut two = f.clone();
        let next = State {
            generation: 10,
            base_seq: 30,
            ..st
        };
        two[..512].copy_from_slice(&next.encode_slot());
        assert_eq!(State::decode_file(&two).unwrap(), next);
        let mut torn = two.clone();
        torn[40] ^= 1;
        assert_eq!(State::decode_file(&torn).unwrap(), st);
        // A record in the slot its generation does not name is refused.
        let mut wrong = vec![0u8; 1024];
        wrong[..512].copy_from_slice(&st.encode_slot());
        assert!(State::decode_file(&wrong).is_err());
        // Version 1 (96 bytes, no generation) still reads, as slot 0 at
        // generation 0; the first write (generation 1, slot 1) supersedes
        // it in place, and if that write is torn, version 1 stands.
        let mut v1 = st.encode();
        v1[8..10].copy_from_slice(&1u16.to_le_bytes());
        v1[72..80].fill(0);
        seal_header(&mut v1, 92);
        let old = State {
            generation: 0,
            ..st
        };
        assert_eq!(State::decode_file(&v1).unwrap(), old);
        let up = State {
            generation: 1,
            base_seq: 40,
            ..st
        };
        let mut grown = v1.to_vec();
        grown.resize(1024, 0);
        grown[512..1024].copy_from_slice(&up.encode_slot());
        assert_eq!(State::decode_file(&grown).unwrap(), up);
        let mut torn_up = grown.clone();
        torn_up[600] ^= 1;
        assert_eq!(State::decode_file(&torn_up).unwrap(), old);
        assert_eq!(State::decode_file(&grown[..560]).unwrap(), old);
        // A version-1 record is only ever slot 0.
        let mut v1_in_1 = vec![0u8; 1024];
        v1_in_1[512..608].copy_from_slice(&v1);
        assert!(State::decode_file(&v1_in_1).is_err());
        for i in 0..f.len() {
            let mut c = f.clone();
            c[i] ^= 0x10;
            if i < 512 {
                // Damage to the unused slot leaves the valid one.
                assert_eq!(State::decode_file(&c).unwrap(), st);
            } else {
                assert!(State::decode_file(&c).is_err(), "flip at byte {i} accepted");
            }
        }
        let none = State {
            pending_base: None,
            ..st
        };
        assert_eq!(u64_at(&none.encode(), 48), u64::MAX);
        assert_eq!(State::decode(&none.encode()).unwrap(), none);

        let e = IndexEntry {
            kind: Kind::Zero,
            len: 8192,
            seq: 10,
            ts_us: 11,
            offset: 12,
            pos: 64,
        };
        let b = encode_index(3, 0xabc, 1000, &[e, e]);
        assert_eq!(&b[0..8], b"TERNJIDX");
        assert_eq!(u32_at(&b, 12), 2);
        assert_eq!(b[64], 2);
        assert_eq!(u64_at(&b, 64 + 8), 10);
        assert_eq!(u64_at(&b, 64 + 32), 64);
        assert_eq!(b.len(), 64 + 96 + 4);
        assert_eq!(decode_index(&b).unwrap(), (3, 0xabc, 1000, vec![e, e]));
    }

    #[test]
    fn bookmark_and_commit_payloads_round_trip() {
        let p = encode_bookmark(BookmarkKind::Fs, "nightly");
        assert_eq!(
            decode_bookmark(&p).unwrap(),
            (BookmarkKind::Fs, "nightly".into())
        );
        assert!(decode_bookmark(&p[..p.len() - 1]).is_err());
        let c = encode_commit(5, 3, 0xdead);
        assert_eq!(decode_commit(&c).unwrap(), (5, 3, 0xdead));
    }

    /// An index's CRCs say it is as written; `index_fits` says nothing in
    /// it sizes a read or allocation past the segment or the volume.
    #[test]
    fn an_index_that_does_not_fit_its_segment_is_refused() {
        let e = |kind, len: u32, offset: u64, pos: u64| IndexEntry {
            kind,
            len,
            seq: 1,
            ts_us: 0,
            offset,
            pos,
        };
        let w = e(Kind::Write, 4096, 0, 64);
        let c = e(Kind::Commit, 16, 1, 64 + w.record_len());
        let seg = c.pos + c.record_len();
        assert!(index_fits(&[w, c], seg, 1 << 20));
        for (what, bad) in [
            ("a 4 GiB bookmark", vec![e(Kind::Bookmark, u32::MAX, 0, 64)]),
            (
                "a zero range past the volume",
                vec![e(Kind::Zero, 4096, (1 << 20) - 1, 64)],
            ),
            (
                "a zero range of 4 GiB",
                vec![e(Kind::Zero, u32::MAX, 0, 64)],
            ),
            (
                "a record past the segment",
                vec![e(Kind::Write, 4096, 0, seg)],
            ),
            ("overlapping records", vec![w, e(Kind::Commit, 16, 1, 100)]),
            (
                "a record inside the header",
                vec![e(Kind::Write, 4096, 0, 0)],
            ),
            ("a long commit", vec![e(Kind::Commit, 17, 1, 64)]),
        ] {
            assert!(!index_fits(&bad, seg, 1 << 20), "{what} accepted");
        }
    }
}
