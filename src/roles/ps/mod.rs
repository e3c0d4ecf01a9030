//! The process server: takes chunks from agents, compresses them (pairs with
//! `compression = ps`), and forwards them to the MT in order.
//!
//! Cut-through with spill: while a pair's cache is empty and the MT answers,
//! a chunk is forwarded inside the agent's request and acknowledged once the
//! MT has it durably in the journal, so it is written once, on the MT. When
//! the MT is slow, down or cut off, chunks are written to the PS's cache
//! (`DATA/ps/cache/PAIR/`, fsync'd before the agent hears "ok") and a
//! forwarder drains them in order. Above the pair's threshold (resync or
//! differential), the PS answers "throttled" and the agent falls back to
//! its bitmap: the seed's "data flow controlled". A pair whose MT journal
//! is full (policy `stop`, or read-only on a full disk; HTTP 507) is answered
//! "throttled" at once, with the MT's reason: caching what the MT cannot
//! take would only move the full disk here; the agent keeps the changes in
//! its buffer and bitmap and sends them once the MT takes chunks again.
//!
//! Invariants: a chunk is acknowledged only once durable on the PS or the MT;
//! chunks of a pair reach the MT in sequence order; a repeated chunk is
//! acknowledged without being stored twice.

pub mod bandwidth;
pub mod slots;

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use warp::http::StatusCode;
use warp::{Filter, Rejection};

use crate::config::Config;
use crate::engine::bufpool;
use crate::engine::chunk::{self, Codec, GIVE_UP_AFTER};
use crate::engine::control::{Compression, NodeReport, PairSpec, PsPairStatus, SyncResponse};
use crate::engine::shutdown::Shutdown;
use crate::engine::sysstats;
use crate::engine::transport::ApiError;
use crate::engine::transport::{self, PeerIdentity, json_reply};

struct Cached {
    first: u64,
    last: u64,
    first_ts_us: u64,
    bytes: u64,
    path: PathBuf,
}

#[derive(Default)]
struct Intake {
    /// The next seq this PS expects from the agent (None: ask the MT).
    next_seq: Option<u64>,
    /// The agent's current session (from its last cursor call): chunks of
    /// an older session are refused, so the position a cursor call returns
    /// stays exact even when older requests are still on their way.
    session: Option<u64>,
    cached: VecDeque<Cached>,
    cache_bytes: u64,
}

struct PsPair {
    spec: Mutex<PairSpec>,
    dir: PathBuf,
    intake: tokio::sync::Mutex<Intake>,
    /// Mirrors of the intake for reports (no await on the report path).
    cache_bytes: AtomicU64,
    cache_chunks: AtomicU64,
    oldest_cached_us: AtomicU64,
    forwarded_seq: AtomicU64,
    bytes_in: AtomicU64,
    bytes_raw: AtomicU64,
    bytes_out: AtomicU64,
    /// CPU µs spent checking and compressing this pair's chunks: the PS's
    /// own work, apart from moving bytes over TLS.
    codec_cpu_us: AtomicU64,
    throttled_at: Mutex<Option<Instant>>,
    /// The MT's last word on this pair was "journal full" (HTTP 507), and
    /// what it said: new chunks are answered "throttled", not cached.
    mt_full: Mutex<Option<String>>,
    error: Mutex<Option<String>>,
    /// Recent events (bounded: [`crate::engine::control::PAIR_EVENTS`]).
    events: Mutex<std::collections::VecDeque<crate::engine::control::PairEvent>>,
    wake: tokio::sync::Notify,
    /// The intake's `next_seq` (0 = unknown), for chunks that arrive
    /// before their predecessor and wait for it.
    next_tx: tokio::sync::watch::Sender<u64>,
    /// The first seq of the pair's chunk last answered "throttled": the
    /// chunks after it that wait for their turn give up too.
    throttle_tx: tokio::sync::watch::Sender<u64>,
    stop: crate::engine::shutdown::ShutdownTrigger,
}

impl PsPair {
    fn spec(&self) -> PairSpec {
        self.spec.lock().unwrap().clone()
    }
    fn event(&self, kind: crate::engine::control::PairEventKind) {
        crate::engine::control::push_event(&mut self.events.lock().unwrap(), kind);
    }
    /// Set where the agent's stream continues, and wake waiting chunks.
    fn set_next(&self, i: &mut Intake, n: Option<u64>) {
        i.next_seq = n;
        self.next_tx.send_replace(n.unwrap_or(0));
    }

    /// Drop every cached chunk and forget where the stream stands: the
    /// agent's next chunk learns the MT's position, and the agent resyncs.
    async fn drop_cache(&self) {
        let mut i = self.intake.lock().await;
        for c in i.cached.drain(..) {
            let _ = std::fs::remove_file(&c.path);
        }
        i.cache_bytes = 0;
        self.set_next(&mut i, None);
        self.mirror(&i);
    }

    /// Answer "throttled" (the agent keeps the chunk and backs off), and
    /// tell this pair's chunks waiting for their turn that it is not coming.
    fn throttled(&self, first: u64, mut body: serde_json::Value) -> warp::reply::Response {
        *self.throttled_at.lock().unwrap() = Some(Instant::now());
        self.throttle_tx.send_replace(first);
        body["throttled"] = true.into();
        json_reply(StatusCode::SERVICE_UNAVAILABLE, body)
    }

    fn mirror(&self, i: &Intake) {
        self.cache_bytes.store(i.cache_bytes, Ordering::Relaxed);
        self.cache_chunks
            .store(i.cached.len() as u64, Ordering::Relaxed);
        self.oldest_cached_us.store(
            i.cached.front().map(|c| c.first_ts_us).unwrap_or(0),
            Ordering::Relaxed,
        );
    }
    fn mt_url(&self, rest: &str) -> Result<String, String> {
        let s = self.spec();
        let addr = s
            .target_addr
            .ok_or_else(|| format!("pair {}: the MT has not reported its data address", s.name))?;
        Ok(format!("https://{addr}/data/v1/mt/{}/{rest}", s.name))
    }
}

pub struct PsRole {
    cfg: Config,
    host_id: String,
    client: reqwest::Client,
    pairs: Mutex<HashMap<String, Arc<PsPair>>>,
    /// Held by one [`PsRole::apply`] at a time (not by requests).
    applying: Mutex<()>,
    /// One bandwidth budget per MT host (`ps.bandwidth`).
    limiters: Mutex<HashMap<String, Arc<bandwidth::Limiter>>>,
    schedule: Vec<bandwidth::Entry>,
    /// Resync admission (`ps.resync_batch`).
    slots: Mutex<slots::Slots>,
    /// Chunk bodies in memory, across all pairs (`ps.chunk_memory`).
    admission: transport::Admission,
    shutdown: Shutdown,
}

fn cache_dir(cfg: &Config, pair: &str) -> PathBuf {
    cfg.data_dir.join("ps").join("cache").join(pair)
}

/// A cached chunk's header (fewer bytes if the file is shorter) and length.
fn read_head(path: &std::path::Path) -> std::io::Result<(Vec<u8>, u64)> {
    use std::io::Read;
    let f = std::fs::File::open(path)?;
    let len = f.metadata()?.len();
    let mut head = Vec::with_capacity(chunk::HEADER_LEN);
    f.take(chunk::HEADER_LEN as u64).read_to_end(&mut head)?;
    Ok((head, len))
}

fn chunk_name(first: u64, last: u64) -> String {
    format!("{first:020}-{last:020}.tchk")
}

impl PsRole {
    pub fn new(
        cfg: Config,
        host_id: String,
        client: reqwest::Client,
        shutdown: Shutdown,
    ) -> Arc<PsRole> {
        // Validated with the config; an entry that does not parse means no cap.
        let schedule = bandwidth::parse_schedule(&cfg.ps.bandwidth).unwrap_or_default();
        let batch = cfg.ps.resync_batch as usize;
        let admission = transport::Admission::new(cfg.ps.chunk_memory.0);
        Arc::new(PsRole {
            cfg,
            host_id,
            client,
            pairs: Mutex::default(),
            applying: Mutex::default(),
            limiters: Mutex::default(),
            schedule,
            slots: Mutex::new(slots::Slots::new(batch)),
            admission,
            shutdown,
        })
    }

    /// Take the CX's pair list: drop the pairs that left this PS, open the
    /// new ones. Runs off the reactor; the pairs lock (which every chunk
    /// takes) is held only to look up and insert, never while a cache
    /// directory is read or removed.
    pub fn apply(self: &Arc<Self>, resp: &SyncResponse) {
        let _one = self.applying.lock().unwrap();
        let mine: Vec<&PairSpec> = resp
            .pairs
            .iter()
            .filter(|p| p.ps_host == self.host_id)
            .collect();
        let mut gone = Vec::new();
        let mut new = Vec::new();
        {
            let mut pairs = self.pairs.lock().unwrap();
            pairs.retain(|name, p| {
                let keep = mine
                    .iter()
                    .any(|s| &s.name == name && s.uuid == p.spec().uuid);
                if !keep {
                    p.stop.fire();
                    gone.push((name.clone(), p.dir.clone()));
                }
                keep
            });
            for spec in &mine {
                match pairs.get(&spec.name) {
                    Some(p) => {
                        *p.spec.lock().unwrap() = (*spec).clone();
                        p.wake.notify_one();
                    }
                    None => new.push(*spec),
                }
            }
        }
        for (name, dir) in gone {
            tracing::info!(pair = %name, "pair left this PS; its cache is dropped");
            let _ = std::fs::remove_dir_all(&dir);
        }
        for spec in new {
            match self.open_pair(spec) {
                Ok(p) => {
                    let me = self.clone();
                    let p2 = p.clone();
                    tokio::spawn(async move { me.forwarder(p2).await });
                    self.pairs.lock().unwrap().insert(spec.name.clone(), p);
                }
                Err(e) => {
                    tracing::error!(pair = %spec.name, error = %format!("{e:#}"), "cannot open the pair's PS cache")
                }
            }
        }
    }

    fn open_pair(&self, spec: &PairSpec) -> anyhow::Result<Arc<PsPair>> {
        let dir = cache_dir(&self.cfg, &spec.name);
        std::fs::create_dir_all(&dir)?;
        // Chunks cached before a restart, in order; a torn temp file is dropped.
        let mut intake = Intake::default();
        let mut names: Vec<String> = std::fs::read_dir(&dir)?
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        for n in names {
            let path = dir.join(&n);
            if !n.ends_with(".tchk") {
                let _ = std::fs::remove_file(&path);
                continue;
            }
            // The header only: a restart with GiBs cached reads KiBs.
            let (head, len) = read_head(&path)?;
            match chunk::decode_header(&head) {
                Ok(h) if h.pair == spec.uuid_bytes() && len == h.wire_len() as u64 => {
                    intake.cache_bytes += len;
                    intake.next_seq = Some(h.last_seq + 1);
                    intake.cached.push_back(Cached {
                        first: h.first_seq,
                        last: h.last_seq,
                        first_ts_us: h.first_ts_us,
                        bytes: len,
                        path,
                    });
                }
                _ => {
                    tracing::warn!(file = %path.display(), "dropping a cached chunk that is damaged or of another pair");
                    let _ = std::fs::remove_file(&path);
                }
            }
        }
        if !intake.cached.is_empty() {
            tracing::info!(pair = %spec.name, chunks = intake.cached.len(), bytes = intake.cache_bytes, "PS cache reloaded; forwarding to the MT");
        }
        let p = Arc::new(PsPair {
            spec: Mutex::new(spec.clone()),
            dir,
            cache_bytes: AtomicU64::new(0),
            cache_chunks: AtomicU64::new(0),
            oldest_cached_us: AtomicU64::new(0),
            forwarded_seq: AtomicU64::new(0),
            bytes_in: AtomicU64::new(0),
            bytes_raw: AtomicU64::new(0),
            codec_cpu_us: AtomicU64::new(0),
            bytes_out: AtomicU64::new(0),
            throttled_at: Mutex::new(None),
            mt_full: Mutex::new(None),
            error: Mutex::new(None),
            events: Default::default(),
            wake: tokio::sync::Notify::new(),
            next_tx: tokio::sync::watch::Sender::new(intake.next_seq.unwrap_or(0)),
            throttle_tx: tokio::sync::watch::Sender::new(0),
            stop: crate::engine::shutdown::ShutdownTrigger::new(),
            intake: tokio::sync::Mutex::new(Intake::default()),
        });
        p.mirror(&intake);
        *p.intake.try_lock().expect("new") = intake;
        Ok(p)
    }

    pub fn report(&self, r: &mut NodeReport) {
        for (name, p) in self.pairs.lock().unwrap().iter() {
            let oldest = p.oldest_cached_us.load(Ordering::Relaxed);
            r.ps_pairs.push(PsPairStatus {
                pair: name.clone(),
                cache_bytes: p.cache_bytes.load(Ordering::Relaxed),
                cache_chunks: p.cache_chunks.load(Ordering::Relaxed),
                oldest_cached_us: (oldest > 0).then_some(oldest),
                throttled: p
                    .throttled_at
                    .lock()
                    .unwrap()
                    .is_some_and(|t| t.elapsed() < Duration::from_secs(5)),
                bytes_in: p.bytes_in.load(Ordering::Relaxed),
                bytes_raw: p.bytes_raw.load(Ordering::Relaxed),
                bytes_out: p.bytes_out.load(Ordering::Relaxed),
                codec_cpu_us: p.codec_cpu_us.load(Ordering::Relaxed),
                forwarded_seq: p.forwarded_seq.load(Ordering::Relaxed),
                error: p.error.lock().unwrap().clone(),
                events: p.events.lock().unwrap().iter().cloned().collect(),
            });
        }
    }

    fn pair(&self, name: &str) -> Result<Arc<PsPair>, Rejection> {
        self.pairs
            .lock()
            .unwrap()
            .get(name)
            .cloned()
            .ok_or_else(|| {
                ApiError::reject(
                    StatusCode::NOT_FOUND,
                    format!("pair {name} is not assigned to this PS (yet)"),
                )
            })
    }

    /// PUT the chunk to the MT once the MT's bandwidth budget allows.
    /// `Ok`: applied; `Err(Gap)`: the MT is behind or ahead (the error
    /// carries its next seq); the other errors say why it was not.
    async fn to_mt(&self, p: &PsPair, first: u64, bytes: Bytes) -> Result<(), MtError> {
        self.budget(p, bytes.len() as u64).await;
        self.put_mt(p, first, bytes).await
    }

    /// Wait until `n` bytes of the pair's MT's bandwidth budget are ours.
    async fn budget(&self, p: &PsPair, n: u64) {
        let spec = p.spec();
        let limiter = self
            .limiters
            .lock()
            .unwrap()
            .entry(spec.target_host.clone())
            .or_insert_with(|| Arc::new(bandwidth::Limiter::new(self.schedule.clone())))
            .clone();
        limiter.acquire(n, spec.priority).await;
    }

    /// PUT the chunk to the MT now (the budget already taken).
    async fn put_mt(&self, p: &PsPair, first: u64, bytes: Bytes) -> Result<(), MtError> {
        let url = p.mt_url(&format!("chunk/{first}")).map_err(MtError::Down)?;
        let n = bytes.len() as u64;
        let a = transport::call(
            self.client
                .put(url)
                .body(bytes)
                .timeout(Duration::from_secs(120)),
        )
        .await
        .map_err(|e| MtError::Down(format!("MT unreachable: {e}")))?;
        let status = a.status;
        if status.is_success() {
            p.bytes_out.fetch_add(n, Ordering::Relaxed);
            return Ok(());
        }
        let msg = a.error().to_owned();
        match (status.as_u16(), a.body["next_seq"].as_u64()) {
            (409, Some(next)) => Err(MtError::Gap(next, msg)),
            (400, _) => Err(MtError::Refused(msg)),
            (507, _) => Err(MtError::Full(msg)),
            _ => Err(MtError::Down(format!("MT answered {status}: {msg}"))),
        }
    }

    async fn mt_cursor(&self, p: &PsPair) -> Result<u64, String> {
        let v = transport::call(
            self.client
                .get(p.mt_url("cursor")?)
                .timeout(Duration::from_secs(30)),
        )
        .await
        .map_err(|e| format!("MT unreachable: {e}"))?
        .ok()?;
        v["next_seq"].as_u64().ok_or_else(|| "no next_seq".into())
    }

    /// Drain the pair's cache to the MT, in order, until stopped.
    async fn forwarder(self: Arc<Self>, p: Arc<PsPair>) {
        let mut sd = crate::engine::shutdown::either(self.shutdown.clone(), p.stop.subscribe());
        let mut backoff = Duration::from_millis(100);
        let mut refusals = chunk::Refusals::default();
        loop {
            let front = {
                let i = p.intake.lock().await;
                i.cached
                    .front()
                    .map(|c| (c.first, c.last, c.bytes, c.path.clone()))
            };
            let Some((first, last, size, path)) = front else {
                tokio::select! {
                    _ = p.wake.notified() => {}
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = sd.wait() => break,
                }
                continue;
            };
            // The bandwidth budget first, then the chunk read back, which
            // counts against `ps.chunk_memory` only while it is read and
            // sent (never through a wait or a backoff).
            tokio::select! {
                _ = self.budget(&p, size) => {}
                _ = sd.wait() => break,
            }
            let mem = tokio::select! {
                m = self.admission.admit(size, Duration::from_secs(3600)) => match m {
                    Some(m) => m,
                    None => continue,
                },
                _ = sd.wait() => break,
            };
            let bytes = match tokio::fs::read(&path).await {
                Ok(b) => Bytes::from(b),
                Err(e) => {
                    drop(mem);
                    *p.error.lock().unwrap() =
                        Some(format!("cannot read cached chunk {}: {e}", path.display()));
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            let r = tokio::select! {
                r = self.put_mt(&p, first, bytes) => r,
                _ = sd.wait() => break,
            };
            drop(mem);
            let done = match r {
                Ok(()) => true,
                Err(MtError::Gap(next, _)) if next > last => true,
                Err(MtError::Gap(next, msg)) => {
                    // The MT lost data the PS no longer has: only a resync
                    // from the agent can repair it. Drop the cache and let the
                    // agent's next chunk learn the MT's position.
                    tracing::error!(pair = %p.spec().name, mt_next = next, first, error = %msg, "the MT is behind the PS cache; dropping the cache so the agent resyncs");
                    p.event(crate::engine::control::PairEventKind::CacheDropped {
                        first,
                        error: msg.clone(),
                    });
                    p.drop_cache().await;
                    continue;
                }
                Err(MtError::Refused(msg)) => {
                    if refusals.give_up(first) {
                        // A poison chunk (damaged on this disk, say): it and
                        // everything queued behind it can never be applied.
                        // Drop the cache; the agent, finding the PS at the
                        // MT's position, resyncs what it changed.
                        tracing::error!(pair = %p.spec().name, first, last, error = %msg, "the MT refused a cached chunk {GIVE_UP_AFTER} times; dropping the cache so the agent resyncs");
                        p.event(crate::engine::control::PairEventKind::CacheDropped {
                            first,
                            error: msg.clone(),
                        });
                        *p.error.lock().unwrap() = Some(format!(
                            "the MT refused cached chunk {first}..{last} {GIVE_UP_AFTER} times ({msg}); the PS dropped its cache and the agent resyncs"
                        ));
                        p.drop_cache().await;
                        continue;
                    }
                    *p.error.lock().unwrap() =
                        Some(format!("MT refused cached chunk {first}: {msg}"));
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(5)) => {}
                        _ = sd.wait() => break,
                    }
                    continue;
                }
                Err(MtError::Down(msg)) => {
                    *p.error.lock().unwrap() = Some(msg);
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = sd.wait() => break,
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                    continue;
                }
                Err(MtError::Full(msg)) => {
                    // Kept, in order, until the journal has room again.
                    *p.mt_full.lock().unwrap() = Some(msg.clone());
                    *p.error.lock().unwrap() = Some(msg);
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(2)) => {}
                        _ = sd.wait() => break,
                    }
                    continue;
                }
            };
            if done {
                backoff = Duration::from_millis(100);
                *p.error.lock().unwrap() = None;
                *p.mt_full.lock().unwrap() = None;
                let mut i = p.intake.lock().await;
                if i.cached.front().is_some_and(|c| c.first == first) {
                    let c = i.cached.pop_front().unwrap();
                    i.cache_bytes -= c.bytes;
                    let _ = std::fs::remove_file(&c.path);
                    p.forwarded_seq.store(c.last, Ordering::Relaxed);
                }
                p.mirror(&i);
            }
        }
    }
}

enum MtError {
    Down(String),
    /// The pair's journal has no room (HTTP 507): nothing was applied.
    Full(String),
    Gap(u64, String),
    Refused(String),
}

#[derive(serde::Deserialize, Default)]
struct SessionQuery {
    session: Option<u64>,
}

/// How long a chunk may wait for room in `ps.chunk_memory` before the
/// agent is told "throttled" (it keeps the chunk and sends it again).
const ADMIT_WAIT: Duration = Duration::from_secs(1);

/// How long a chunk that overtook its predecessor waits for it.
const ORDER_WAIT: Duration = Duration::from_secs(60);

async fn take_chunk(
    pair: String,
    first: u64,
    peer: PeerIdentity,
    q: SessionQuery,
    body: transport::ChunkBody,
    ps: Arc<PsRole>,
) -> Result<warp::reply::Response, Rejection> {
    let p = ps.pair(&pair)?;
    let spec = p.spec();
    if peer.host_id.as_deref() != Some(spec.source_host.as_str()) {
        return Err(ApiError::reject(
            StatusCode::FORBIDDEN,
            format!("pair {pair}: only its source agent may send chunks"),
        ));
    }
    let uuid = spec.uuid_bytes();
    let recode = spec.compression == Compression::Ps;
    let level = spec.zstd_level;
    // Memory first: the body is read only once its bytes (and, for
    // `compression = ps`, room for the compressed copy) are admitted.
    let need = body.len * if recode { 2 } else { 1 };
    let mut throttles = p.throttle_tx.subscribe();
    let mut waiting = p.next_tx.subscribe();
    let mem = match ps.admission.try_admit(need) {
        Some(m) => m,
        None => {
            // Short of memory, a chunk ahead of its turn waits for its
            // predecessor holding nothing, so those that are next get the room.
            let _ = wait_turn(&mut waiting, &mut throttles, first).await;
            match ps.admission.admit(need, ADMIT_WAIT).await {
                Some(m) => m,
                None => {
                    let msg = format!(
                        "pair {pair}: the PS holds {} of chunks in memory, its limit (ps.chunk_memory); back off",
                        crate::util::human_bytes(ps.admission.in_use())
                    );
                    let r = p.throttled(first, serde_json::json!({"error": msg}));
                    body.discard().await;
                    return Ok(r);
                }
            }
        }
    };
    let (body, payload_crc) = match body.gather().await {
        Ok(b) => b,
        Err(e) => {
            return Ok(json_reply(
                StatusCode::BAD_REQUEST,
                serde_json::json!({"error": format!("pair {pair}: chunk {first}: {e}")}),
            ));
        }
    };
    p.bytes_in.fetch_add(body.len() as u64, Ordering::Relaxed);
    // Check (CRCs, lengths, pair) off the reactor; compress if ours to do.
    let p2 = p.clone();
    let checked =
        tokio::task::spawn_blocking(move || -> Result<(chunk::ChunkHeader, Bytes), String> {
            let cpu0 = sysstats::thread_cpu_us();
            let checked = (|| {
                // The hop's checks only: the MT verifies the end-to-end hash
                // before it applies anything, so hashing here too bought no
                // safety for 0.14 CPU-seconds per GB.
                let (h, payload) =
                    chunk::check_hop(&body, payload_crc).map_err(|e| e.to_string())?;
                if h.pair != uuid {
                    return Err(chunk::ChunkError::WrongPair.to_string());
                }
                let out = match recode && !h.compressed {
                    true => chunk::reseal(&h, payload, Codec::Zstd(level)).map(bufpool::shared),
                    false => None,
                };
                Ok((h, out.unwrap_or_else(|| body.clone())))
            })();
            // Refused chunks cost checking too.
            let spent = sysstats::thread_cpu_us().saturating_sub(cpu0);
            p2.codec_cpu_us.fetch_add(spent, Ordering::Relaxed);
            checked
        })
        .await
        .map_err(ApiError::internal)?;
    let (h, bytes) = match checked {
        Ok(x) => x,
        Err(e) => {
            tracing::warn!(pair = %pair, first, error = %e, "chunk refused");
            p.event(crate::engine::control::PairEventKind::ChunkRefused {
                first,
                error: e.to_string(),
            });
            return Ok(json_reply(
                StatusCode::BAD_REQUEST,
                serde_json::json!({"error": format!("pair {pair}: chunk {first}: refused: {e}")}),
            ));
        }
    };
    if h.first_seq != first {
        return Ok(json_reply(
            StatusCode::BAD_REQUEST,
            serde_json::json!({"error": format!("pair {pair}: URL says chunk {first}, header says {}", h.first_seq)}),
        ));
    }
    // In order: a chunk that overtook its predecessor (the agent keeps a
    // few in flight) waits for it, bounded; then it is a gap as before. If
    // the pair is throttled meanwhile, its predecessor is not coming soon:
    // this one is throttled too rather than hold its memory for nothing.
    if !wait_turn(&mut waiting, &mut throttles, first).await {
        return Ok(p.throttled(
            first,
            serde_json::json!({
                "error": format!("pair {pair}: an earlier chunk was throttled; back off")
            }),
        ));
    }
    // Admitted in a task of its own: once it holds the intake, it runs to
    // the end (forwarded or cached, `next_seq` moved) even if the agent
    // hangs up, so a later cursor call sees where it really ended. Its
    // memory is held until then.
    tokio::spawn(async move {
        let r = admit(ps, p, pair, first, q.session, h, bytes).await;
        drop(mem);
        r
    })
    .await
    .map_err(ApiError::internal)?
}

/// Wait (at most [`ORDER_WAIT`]) until chunk `first` is next in its pair's
/// stream; `false` if a chunk before it was throttled meanwhile (it is not
/// coming soon). Its own turn wins over a throttle seen at the same time.
async fn wait_turn(
    next: &mut tokio::sync::watch::Receiver<u64>,
    throttles: &mut tokio::sync::watch::Receiver<u64>,
    first: u64,
) -> bool {
    let deadline = tokio::time::sleep(ORDER_WAIT);
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            biased;
            _ = next.wait_for(|&n| n == 0 || first <= n) => return true,
            r = throttles.changed() => {
                if r.is_err() || *throttles.borrow_and_update() < first {
                    return false;
                }
            }
            _ = &mut deadline => return true,
        }
    }
}

async fn admit(
    ps: Arc<PsRole>,
    p: Arc<PsPair>,
    pair: String,
    first: u64,
    session: Option<u64>,
    h: chunk::ChunkHeader,
    bytes: Bytes,
) -> Result<warp::reply::Response, Rejection> {
    let mut i = p.intake.lock().await;
    match (i.session, session) {
        (Some(cur), Some(s)) if cur != s => {
            return Ok(json_reply(
                StatusCode::CONFLICT,
                serde_json::json!({"error": format!("pair {pair}: chunk {first} belongs to an earlier session of the agent; dropped"), "stale_session": true}),
            ));
        }
        (None, Some(s)) => i.session = Some(s),
        _ => {}
    }
    let next = match i.next_seq {
        Some(n) => n,
        None => match ps.mt_cursor(&p).await {
            Ok(n) => {
                p.set_next(&mut i, Some(n));
                n
            }
            Err(e) => {
                return Ok(json_reply(
                    StatusCode::SERVICE_UNAVAILABLE,
                    serde_json::json!({"error": format!("pair {pair}: the PS cannot learn the MT's position: {e}")}),
                ));
            }
        },
    };
    if h.last_seq < next {
        return Ok(json_reply(
            StatusCode::OK,
            serde_json::json!({"duplicate": true, "next_seq": next}),
        ));
    }
    if h.first_seq > next {
        return Ok(json_reply(
            StatusCode::CONFLICT,
            serde_json::json!({"error": format!("pair {pair}: expected seq {next}, got {}", h.first_seq), "next_seq": next}),
        ));
    }
    let limit = if h.resync {
        ps.cfg.ps.resync_threshold.0
    } else {
        ps.cfg.ps.differential_threshold.0
    };
    // The MT said its journal is full: caching would only fill this disk too.
    let full = p.mt_full.lock().unwrap().clone();
    if let Some(msg) = full.filter(|_| !i.cached.is_empty()) {
        return Ok(p.throttled(first, serde_json::json!({"mt_full": true, "error": msg})));
    }
    if i.cache_bytes + bytes.len() as u64 > limit && !i.cached.is_empty() {
        return Ok(p.throttled(first, serde_json::json!({
            "error": format!("pair {pair}: PS cache over its threshold ({} bytes); back off", limit)
        })));
    }
    p.bytes_raw.fetch_add(h.raw_len as u64, Ordering::Relaxed);
    // Cut-through: nothing queued ahead of it, so try the MT now.
    if i.cached.is_empty() {
        match ps.to_mt(&p, first, bytes.clone()).await {
            Ok(()) => {
                p.set_next(&mut i, Some(h.last_seq + 1));
                p.forwarded_seq.store(h.last_seq, Ordering::Relaxed);
                *p.error.lock().unwrap() = None;
                *p.mt_full.lock().unwrap() = None;
                return Ok(json_reply(
                    StatusCode::OK,
                    serde_json::json!({"next_seq": h.last_seq + 1}),
                ));
            }
            Err(MtError::Gap(mt_next, msg)) => {
                // The MT is elsewhere than we thought: tell the agent where.
                p.set_next(&mut i, Some(mt_next));
                if mt_next > h.last_seq {
                    return Ok(json_reply(
                        StatusCode::OK,
                        serde_json::json!({"duplicate": true, "next_seq": mt_next}),
                    ));
                }
                return Ok(json_reply(
                    StatusCode::CONFLICT,
                    serde_json::json!({"error": msg, "next_seq": mt_next}),
                ));
            }
            Err(MtError::Refused(msg)) => {
                return Ok(json_reply(
                    StatusCode::BAD_REQUEST,
                    serde_json::json!({"error": msg}),
                ));
            }
            Err(MtError::Full(msg)) => {
                *p.error.lock().unwrap() = Some(msg.clone());
                return Ok(p.throttled(first, serde_json::json!({"mt_full": true, "error": msg})));
            }
            Err(MtError::Down(msg)) => {
                *p.error.lock().unwrap() = Some(msg);
            }
        }
    }
    // Spill: durable on the PS before the agent hears "ok".
    let path = p.dir.join(chunk_name(h.first_seq, h.last_seq));
    let n = bytes.len() as u64;
    let path2 = path.clone();
    let w = tokio::task::spawn_blocking(move || {
        crate::engine::fsutil::write_durable(&path2, &bytes, 0o600)
    })
    .await
    .map_err(ApiError::internal)?;
    if let Err(e) = w {
        return Ok(json_reply(
            StatusCode::INSUFFICIENT_STORAGE,
            serde_json::json!({"error": format!("pair {pair}: cannot write the PS cache: {e}; free space on the PS")}),
        ));
    }
    i.cached.push_back(Cached {
        first: h.first_seq,
        last: h.last_seq,
        first_ts_us: h.first_ts_us,
        bytes: n,
        path,
    });
    i.cache_bytes += n;
    p.set_next(&mut i, Some(h.last_seq + 1));
    p.mirror(&i);
    drop(i);
    p.wake.notify_one();
    Ok(json_reply(
        StatusCode::OK,
        serde_json::json!({"next_seq": h.last_seq + 1, "cached": true}),
    ))
}

fn only_source(p: &PsPair, peer: &PeerIdentity) -> Result<(), Rejection> {
    let s = p.spec();
    if peer.host_id.as_deref() != Some(s.source_host.as_str()) {
        return Err(ApiError::reject(
            StatusCode::FORBIDDEN,
            format!("pair {}: only its source agent may do this", s.name),
        ));
    }
    Ok(())
}

/// `GET .../cursor?session=S`: where the pair's stream continues. With a
/// session, the agent starts session S: chunks of earlier ones are refused
/// from now on, so the answer cannot be overtaken by an older request.
async fn cursor(
    pair: String,
    peer: PeerIdentity,
    q: SessionQuery,
    ps: Arc<PsRole>,
) -> Result<warp::reply::Response, Rejection> {
    let p = ps.pair(&pair)?;
    only_source(&p, &peer)?;
    let mut i = p.intake.lock().await;
    if q.session.is_some() {
        i.session = q.session;
    }
    if i.next_seq.is_none() {
        match ps.mt_cursor(&p).await {
            Ok(n) => p.set_next(&mut i, Some(n)),
            Err(e) => {
                return Ok(json_reply(
                    StatusCode::SERVICE_UNAVAILABLE,
                    serde_json::json!({"error": format!("pair {pair}: {e}")}),
                ));
            }
        }
    }
    Ok(json_reply(
        StatusCode::OK,
        serde_json::json!({"next_seq": i.next_seq}),
    ))
}

#[derive(serde::Deserialize)]
struct SlotRequest {
    #[serde(default)]
    release: bool,
}

/// `POST .../resync-slot`: ask for, renew or give back the pair's resync
/// slot. Answers `{"granted": true}` or `{"granted": false, "position": N}`.
async fn resync_slot(
    pair: String,
    peer: PeerIdentity,
    req: SlotRequest,
    ps: Arc<PsRole>,
) -> Result<warp::reply::Response, Rejection> {
    let p = ps.pair(&pair)?;
    only_source(&p, &peer)?;
    let mut s = ps.slots.lock().unwrap();
    if req.release {
        s.release(&pair);
        return Ok(json_reply(
            StatusCode::OK,
            serde_json::json!({"released": true}),
        ));
    }
    let batch = ps.cfg.ps.resync_batch;
    Ok(json_reply(
        StatusCode::OK,
        match s.ask(&pair, p.spec().priority as i16, Instant::now()) {
            slots::Grant::Granted => serde_json::json!({"granted": true, "batch": batch}),
            slots::Grant::Queued(n) => {
                serde_json::json!({"granted": false, "position": n, "batch": batch})
            }
        },
    ))
}

async fn hashes(
    pair: String,
    peer: PeerIdentity,
    body: serde_json::Value,
    ps: Arc<PsRole>,
) -> Result<warp::reply::Response, Rejection> {
    let p = ps.pair(&pair)?;
    only_source(&p, &peer)?;
    let url = match p.mt_url("hashes") {
        Ok(u) => u,
        Err(e) => {
            return Ok(json_reply(
                StatusCode::SERVICE_UNAVAILABLE,
                serde_json::json!({"error": e}),
            ));
        }
    };
    let r = transport::call(
        ps.client
            .post(url)
            .json(&body)
            .timeout(Duration::from_secs(60)),
    )
    .await;
    match r {
        Ok(a) => Ok(a.into_reply()),
        Err(e) => Ok(json_reply(
            StatusCode::BAD_GATEWAY,
            serde_json::json!({"error": format!("MT unreachable: {e}")}),
        )),
    }
}

/// PS routes on the data port (`/data/v1/ps/...`).
pub fn routes(
    ps: Arc<PsRole>,
) -> impl Filter<Extract = (warp::reply::Response,), Error = Rejection> + Clone {
    let with = move || {
        let ps = ps.clone();
        warp::any().map(move || ps.clone())
    };
    let chunk = warp::path!("data" / "v1" / "ps" / String / "chunk" / u64)
        .and(warp::put())
        .and(warp::ext::get::<PeerIdentity>())
        .and(warp::query::<SessionQuery>())
        .and(transport::chunk_body())
        .and(with())
        .and_then(take_chunk);
    let cursor = warp::path!("data" / "v1" / "ps" / String / "cursor")
        .and(warp::get())
        .and(warp::ext::get::<PeerIdentity>())
        .and(warp::query::<SessionQuery>())
        .and(with())
        .and_then(cursor);
    let hashes = warp::path!("data" / "v1" / "ps" / String / "hashes")
        .and(warp::post())
        .and(warp::ext::get::<PeerIdentity>())
        .and(warp::body::content_length_limit(1 << 16))
        .and(warp::body::json())
        .and(with())
        .and_then(hashes);
    let slot = warp::path!("data" / "v1" / "ps" / String / "resync-slot")
        .and(warp::post())
        .and(warp::ext::get::<PeerIdentity>())
        .and(warp::body::content_length_limit(1 << 12))
        .and(warp::body::json())
        .and(with())
        .and_then(resync_slot);
    chunk.or(cursor).unify().or(hashes).unify().or(slot).unify()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn reading_a_pair_cache_never_holds_the_lock_chunks_take() {
        let d = tempfile::tempdir().unwrap();
        let cfg = Config {
            data_dir: d.path().into(),
            ..Config::default()
        };
        let trig = crate::engine::shutdown::ShutdownTrigger::new();
        let ps = PsRole::new(
            cfg.clone(),
            "h".into(),
            reqwest::Client::new(),
            trig.subscribe(),
        );
        let (a, b) = (
            PairSpec::for_test("a", "h", 1 << 20),
            PairSpec::for_test("b", "h", 1 << 20),
        );
        let apply = |pairs: Vec<PairSpec>| {
            let ps = ps.clone();
            tokio::task::spawn_blocking(move || {
                ps.apply(&SyncResponse {
                    pairs,
                    ..Default::default()
                })
            })
        };
        apply(vec![b.clone()]).await.unwrap();
        // Pair a's cache holds a FIFO: reading it blocks until a writer comes.
        let dir = cache_dir(&cfg, "a");
        std::fs::create_dir_all(&dir).unwrap();
        let fifo = dir.join(chunk_name(1, 1));
        crate::util::mkfifo(&fifo);
        let opening = apply(vec![a, b]);
        for _ in 0..50 {
            // What every chunk upload and report takes is free meanwhile.
            {
                let pairs = ps
                    .pairs
                    .try_lock()
                    .expect("pairs lock free while a cache is read");
                assert!(pairs.contains_key("b"));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(!opening.is_finished(), "still inside a's cache");
        crate::util::feed_fifo(fifo.clone(), b"not a chunk").await;
        opening.await.unwrap();
        assert!(ps.pair("a").is_ok());
        assert!(!fifo.exists(), "a damaged cached chunk is dropped");
        trig.fire();
    }
}
