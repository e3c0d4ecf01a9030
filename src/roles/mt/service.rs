//! The MT's replication service on the data port: chunks from the PS are
//! verified and applied to the pair's journal; the PS and agent ask for the
//! cursor and for fast-resync hashes; the CX asks for points and runs image
//! and hash tasks ([`super::tasks`]).
//!
//! Why no MT cache directory: the journal is itself an append-only,
//! checksummed, fsync'd log on the MT's disk, so a chunk is applied straight
//! into it and acknowledged once durable there. A separate cache would cost
//! a second write of every byte for no extra safety. When the journal cannot
//! take a chunk (retention space full with policy=stop), the MT refuses it
//! and the PS keeps it in its cache.
//!
//! Invariants: only the pair's PS may push chunks (its certificate's host id),
//! only the CX may run admin operations; a chunk's unrecoverable ranges are
//! recorded before its records are applied.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Deserialize;
use warp::http::StatusCode;
use warp::{Filter, Rejection, Reply};

use super::{OpenPairs, PruneErrors, ReplicaPair, tasks};
use crate::config::Config;
use crate::engine::chunk;
use crate::engine::control::{
    MtPairStatus, NodeReport, PairSpec, PointRef, SyncResponse, TaskRequest,
};
use crate::engine::journal::{JournalError, PointSpec};
use crate::engine::transport::ApiError;
use crate::engine::transport::{self, PeerIdentity, json_reply};

struct MtPair {
    spec: PairSpec,
    rp: Arc<ReplicaPair>,
    applied_bytes: AtomicU64,
    /// Held from before a chunk's apply starts until it ends (even if the
    /// PS hangs up meanwhile); the cursor takes it too, so the position it
    /// answers is never overtaken by an apply already under way.
    applying: Arc<tokio::sync::Mutex<()>>,
}

/// How long a chunk may wait for room in `mt.chunk_memory` before the PS
/// is told to send it again later.
const ADMIT_WAIT: Duration = Duration::from_secs(5);

pub struct MtRole {
    cfg: Config,
    /// Chunk bodies (and decompressed payloads) in memory, all pairs.
    admission: transport::Admission,
    host_id: String,
    pub open: OpenPairs,
    /// The pruner's per-pair failures, reported as those pairs' errors.
    pub prune_errors: PruneErrors,
    pairs: Mutex<HashMap<String, Arc<MtPair>>>,
    /// Held by one [`MtRole::apply`] at a time (not by requests).
    applying: Mutex<()>,
    errors: Mutex<HashMap<String, String>>,
    cx_host: Mutex<Option<String>>,
    /// Image and hash tasks the CX's jobs run here.
    pub tasks: Arc<tasks::Tasks>,
}

impl MtRole {
    pub fn new(cfg: Config, host_id: String) -> Arc<MtRole> {
        let tasks = Arc::new(tasks::Tasks::new(&cfg.data_dir));
        Arc::new(MtRole {
            admission: transport::Admission::new(cfg.mt.chunk_memory.0),
            cfg,
            host_id,
            open: Default::default(),
            prune_errors: Default::default(),
            pairs: Mutex::default(),
            applying: Mutex::default(),
            errors: Mutex::default(),
            cx_host: Mutex::new(None),
            tasks,
        })
    }

    /// Open or create the replicas of pairs that target this host. Runs off
    /// the reactor; the pairs lock (which every chunk and cursor call takes)
    /// is held only to look up and insert, never while a journal opens
    /// (index rebuild, pending checkpoint, `fallocate`).
    pub fn apply(&self, resp: &SyncResponse) {
        let _one = self.applying.lock().unwrap();
        *self.cx_host.lock().unwrap() = Some(resp.cx_host.clone());
        let mine: Vec<&PairSpec> = resp
            .pairs
            .iter()
            .filter(|p| p.target_host == self.host_id)
            .collect();
        let new: Vec<&PairSpec> = {
            let mut pairs = self.pairs.lock().unwrap();
            pairs.retain(|name, _| {
                let keep = mine.iter().any(|p| &p.name == name);
                if !keep {
                    tracing::info!(pair = %name, "pair removed from this MT; its replica and journal stay on disk");
                    self.open.lock().unwrap().remove(name);
                }
                keep
            });
            mine.iter()
                .filter(|spec| {
                    pairs
                        .get(&spec.name)
                        .is_none_or(|p| p.spec.uuid != spec.uuid)
                })
                .copied()
                .collect()
        };
        for spec in new {
            // A pair re-created under its name: the old one lets go first.
            if let Some(old) = self.pairs.lock().unwrap().remove(&spec.name) {
                self.open.lock().unwrap().remove(&spec.name);
                drop(old);
            }
            match self.open_pair(spec) {
                Ok(p) => {
                    self.errors.lock().unwrap().remove(&spec.name);
                    self.open
                        .lock()
                        .unwrap()
                        .insert(spec.name.clone(), p.rp.clone());
                    self.pairs
                        .lock()
                        .unwrap()
                        .insert(spec.name.clone(), Arc::new(p));
                }
                Err(e) => {
                    let msg = format!("{e:#}");
                    let mut errs = self.errors.lock().unwrap();
                    if errs.get(&spec.name) != Some(&msg) {
                        tracing::error!(pair = %spec.name, error = %msg, "cannot open the pair's replica");
                    }
                    errs.insert(spec.name.clone(), msg);
                }
            }
        }
    }

    fn open_pair(&self, spec: &PairSpec) -> anyhow::Result<MtPair> {
        let dir = super::pairs_dir(&self.cfg.data_dir).join(&spec.name);
        let rp = if dir.join("pair.json").exists() {
            let rp = ReplicaPair::open(&self.cfg.data_dir, &spec.name)?;
            if rp.config.uuid.as_deref() != Some(spec.uuid.as_str()) {
                anyhow::bail!(
                    "pair {}: {} holds the replica of another pair of that name (uuid {:?}); move it away or delete it, then the new pair starts",
                    spec.name,
                    dir.display(),
                    rp.config.uuid
                );
            }
            if rp.config.volume_size != spec.volume_size {
                anyhow::bail!(
                    "pair {}: the replica is {} bytes, the source volume {}",
                    spec.name,
                    rp.config.volume_size,
                    spec.volume_size
                );
            }
            rp
        } else {
            let mut rp = ReplicaPair::create_with(
                &self.cfg.data_dir,
                &spec.name,
                spec.volume_size,
                spec.target_path.clone(),
                spec.retention.clone(),
                crate::engine::journal::JournalOptions {
                    preallocate: self.cfg.mt.preallocate_replica,
                    ..Default::default()
                },
            )?;
            // Nothing on the replica is an image of the source yet.
            rp.journal.mark_unrecoverable(0, 0)?;
            rp.config.uuid = Some(spec.uuid.clone());
            crate::engine::fsutil::write_durable(
                &rp.dir.join("pair.json"),
                &serde_json::to_vec_pretty(&rp.config)?,
                0o644,
            )?;
            tracing::info!(pair = %spec.name, replica = %rp.config.replica.display(), size = spec.volume_size, "replica created");
            rp
        };
        let mut rp = rp;
        if rp.config.policy != spec.retention {
            rp.config.policy = spec.retention.clone();
            // The policy in force is the CX's; pair.json only remembers it
            // for the pruner and the CLI. A full disk must not keep the
            // pair's points from being served, so failing to record it waits.
            if let Err(e) = crate::engine::fsutil::write_durable(
                &rp.dir.join("pair.json"),
                &serde_json::to_vec_pretty(&rp.config)?,
                0o644,
            ) {
                tracing::warn!(pair = %spec.name, error = %e, "cannot record the new retention policy in pair.json (it applies anyway); retried at the next open");
            }
        }
        rp.journal
            .set_space_limit(spec.retention.space_limit(self.keep_free()));
        Ok(MtPair {
            spec: spec.clone(),
            rp: Arc::new(rp),
            applied_bytes: AtomicU64::new(0),
            applying: Default::default(),
        })
    }

    fn keep_free(&self) -> Option<u64> {
        self.cfg.mt.keep_free.map(|s| s.0)
    }

    pub fn report(&self, r: &mut NodeReport) {
        for (name, p) in self.pairs.lock().unwrap().iter() {
            let j = &p.rp.journal;
            let st = j.stats();
            let latest = j.resolve(&PointSpec::Latest).ok();
            let oldest = j.resolve(&PointSpec::Oldest).ok();
            r.mt_pairs.push(MtPairStatus {
                pair: name.clone(),
                last_seq: st.latest.seq,
                last_ts_us: st.latest.ts_us,
                latest_point: latest.map(|p| (p.seq, p.ts_us)),
                oldest_point: oldest.map(|p| (p.seq, p.ts_us)),
                journal_bytes: st.bytes,
                bytes_applied: p.applied_bytes.load(Ordering::Relaxed),
                bookmarks: st.bookmarks,
                retention_resets: st.resets,
                error: st.failed.clone().or_else(|| {
                    self.prune_errors
                        .lock()
                        .unwrap()
                        .get(&p.spec.name)
                        .map(|e| format!("retention: {e}"))
                }),
                stopped: st.stopped.clone(),
                space_limit_bytes: j.effective_limit(),
                last_reset: st.last_reset,
            });
        }
        for (name, e) in self.errors.lock().unwrap().iter() {
            r.mt_pairs.push(MtPairStatus {
                pair: name.clone(),
                last_seq: 0,
                last_ts_us: 0,
                latest_point: None,
                oldest_point: None,
                journal_bytes: 0,
                bytes_applied: 0,
                bookmarks: 0,
                retention_resets: 0,
                error: Some(e.clone()),
                stopped: None,
                space_limit_bytes: None,
                last_reset: None,
            });
        }
    }

    fn pair(&self, name: &str) -> Result<Arc<MtPair>, Rejection> {
        if let Some(p) = self.pairs.lock().unwrap().get(name) {
            return Ok(p.clone());
        }
        // Assigned but not open: say why, not "unknown".
        if let Some(e) = self.errors.lock().unwrap().get(name) {
            return Err(ApiError::reject(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("pair {name}: this MT cannot open its replica: {e}"),
            ));
        }
        Err(ApiError::reject(
            StatusCode::NOT_FOUND,
            format!("pair {name} is not assigned to this MT (yet)"),
        ))
    }
}

fn forbidden(what: &str) -> Rejection {
    ApiError::reject(StatusCode::FORBIDDEN, what.to_owned())
}

async fn apply_chunk(
    pair: String,
    _first: u64,
    peer: PeerIdentity,
    body: transport::ChunkBody,
    mt: Arc<MtRole>,
) -> Result<warp::reply::Response, Rejection> {
    let p = mt.pair(&pair)?;
    if peer.host_id.as_deref() != Some(p.spec.ps_host.as_str()) {
        return Err(forbidden(&format!(
            "pair {pair}: only its process server may send chunks"
        )));
    }
    // Memory first (`mt.chunk_memory`): the body, then the decompressed
    // payload of a compressed chunk. Short of room, 503: the PS keeps the
    // chunk in its cache and sends it again.
    let busy = |what: &str| {
        json_reply(
            StatusCode::SERVICE_UNAVAILABLE,
            serde_json::json!({"error": format!(
                "pair {pair}: the MT holds {} of chunks in memory, its limit (mt.chunk_memory), {what}; try again",
                crate::util::human_bytes(mt.admission.in_use())
            )}),
        )
    };
    let Some(mem) = mt.admission.admit(body.len, ADMIT_WAIT).await else {
        let r = busy("before reading this one");
        body.discard().await;
        return Ok(r);
    };
    let (body, payload_crc) = match body.gather().await {
        Ok(b) => b,
        Err(e) => {
            return Ok(json_reply(
                StatusCode::BAD_REQUEST,
                serde_json::json!({"error": format!("pair {pair}: chunk {_first}: {e}")}),
            ));
        }
    };
    // Never held while waiting for more: room to decompress now, or this
    // chunk is the only one held (then it goes alone, as one chunk larger
    // than the bound does), or 503 and its body is let go.
    let unpacked = match chunk::decode_header(&body) {
        Ok(h) if h.compressed => match mt.admission.try_admit(h.raw_len as u64) {
            Some(m) => Some(m),
            None if mt.admission.held_only_by(&mem) => None,
            None => return Ok(busy("to decompress this one")),
        },
        _ => None,
    };
    let guard = p.applying.clone().lock_owned().await;
    let r = tokio::task::spawn_blocking(
        move || -> Result<(u64, u64), (StatusCode, String, Option<u64>)> {
            let _applying = guard;
            let _mem = (mem, unpacked);
            let (h, recs) = chunk::decode_shared(&body, &p.spec.uuid_bytes(), payload_crc)
                .map_err(|e| {
                    (
                        StatusCode::BAD_REQUEST,
                        format!("pair {}: chunk {}..: refused: {e}", p.spec.name, _first),
                        None,
                    )
                })?;
            let j = &p.rp.journal;
            // No room (507: the PS holds the chunk back and throttles the
            // agent) or an I/O failure (500).
            let refusal = |e: JournalError| match e {
                JournalError::RetentionFull(_) | JournalError::ReadOnly(_) => (
                    StatusCode::INSUFFICIENT_STORAGE,
                    format!("pair {}: {e}", p.spec.name),
                    None,
                ),
                e => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string(), None),
            };
            // Record the inconsistent runs first (write-ahead), in one write.
            let mut runs: Vec<(u64, u64)> = Vec::new();
            for r in recs.iter().filter(|r| r.inconsistent) {
                let seq = r.record.seq;
                match runs.last_mut() {
                    Some((_, b)) if *b + 1 == seq => *b = seq,
                    _ => runs.push((seq, seq)),
                }
            }
            j.mark_unrecoverable_runs(&runs).map_err(refusal)?;
            let records: Vec<_> = recs.into_iter().map(|r| r.record).collect();
            match j.apply(&records) {
                Ok(_) => {
                    p.applied_bytes
                        .fetch_add(h.raw_len as u64, Ordering::Relaxed);
                    Ok((j.last_seq(), h.raw_len as u64))
                }
                Err(JournalError::Gap { last, .. }) => Err((
                    StatusCode::CONFLICT,
                    format!(
                        "pair {}: sequence gap: the journal ends at seq {last}",
                        p.spec.name
                    ),
                    Some(last + 1),
                )),
                Err(e @ (JournalError::RetentionFull(_) | JournalError::ReadOnly(_))) => Err((
                    StatusCode::INSUFFICIENT_STORAGE,
                    format!("pair {}: {e}", p.spec.name),
                    None,
                )),
                Err(e @ JournalError::BadRecord(_)) => Err((
                    StatusCode::BAD_REQUEST,
                    format!("pair {}: {e}", p.spec.name),
                    None,
                )),
                Err(e) => Err((
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("pair {}: {e}", p.spec.name),
                    None,
                )),
            }
        },
    )
    .await
    .map_err(ApiError::internal)?;
    Ok(match r {
        Ok((last, _)) => warp::reply::json(&serde_json::json!({"last_seq": last})).into_response(),
        Err((status, msg, next)) => {
            if status != StatusCode::CONFLICT {
                tracing::warn!(pair = %pair, error = %msg, "chunk refused");
            }
            json_reply(status, serde_json::json!({"error": msg, "next_seq": next}))
        }
    })
}

#[derive(Debug, Deserialize)]
pub struct HashRequest {
    pub offset: u64,
    pub block: u64,
    pub count: u64,
    /// Wait until the journal holds at least this seq.
    #[serde(default)]
    pub min_seq: u64,
}

async fn hashes(
    pair: String,
    peer: PeerIdentity,
    req: HashRequest,
    mt: Arc<MtRole>,
) -> Result<warp::reply::Response, Rejection> {
    let p = mt.pair(&pair)?;
    if peer.host_id.as_deref() != Some(p.spec.ps_host.as_str()) {
        return Err(forbidden(&format!(
            "pair {pair}: only its process server may ask"
        )));
    }
    if req.block == 0 || req.block > 16 << 20 || req.count > 1024 {
        return Err(ApiError::reject(
            StatusCode::BAD_REQUEST,
            "block must be 1..16 MiB, count at most 1024",
        ));
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while p.rp.journal.last_seq() < req.min_seq {
        if tokio::time::Instant::now() > deadline {
            return Ok(json_reply(
                StatusCode::CONFLICT,
                serde_json::json!({"error": format!("the journal has not reached seq {} yet", req.min_seq)}),
            ));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let r = tokio::task::spawn_blocking(move || -> Result<Vec<String>, String> {
        let j = &p.rp.journal;
        let pin = j.pin_last_applied().map_err(|e| e.to_string())?;
        let size = j.volume_size();
        let mut out = Vec::new();
        let mut buf = vec![0u8; req.block as usize];
        for i in 0..req.count {
            let Some(off) = i
                .checked_mul(req.block)
                .and_then(|d| req.offset.checked_add(d))
                .filter(|&o| o < size)
            else {
                break;
            };
            let n = (size - off).min(req.block) as usize;
            pin.read_at(off, &mut buf[..n]).map_err(|e| e.to_string())?;
            out.push(blake3::hash(&buf[..n]).to_hex().to_string());
        }
        Ok(out)
    })
    .await
    .map_err(ApiError::internal)?;
    match r {
        Ok(h) => Ok(warp::reply::json(&serde_json::json!({"hashes": h})).into_response()),
        Err(e) => Err(ApiError::reject(StatusCode::INTERNAL_SERVER_ERROR, e)),
    }
}

/// Only the CX this MT syncs with may run replica operations.
fn from_cx(mt: &MtRole, peer: &PeerIdentity) -> Result<(), Rejection> {
    let cx = mt.cx_host.lock().unwrap().clone();
    if cx.is_none() {
        return Err(ApiError::reject(
            StatusCode::SERVICE_UNAVAILABLE,
            "this MT has just started and not yet heard from its CX; try again in a moment",
        ));
    }
    if peer.host_id != cx {
        return Err(forbidden("replica operations are taken from the CX only"));
    }
    Ok(())
}

/// `GET /data/v1/mt/{pair}/points`: the recovery points of a replica.
async fn points(
    pair: String,
    peer: PeerIdentity,
    mt: Arc<MtRole>,
) -> Result<warp::reply::Response, Rejection> {
    from_cx(&mt, &peer)?;
    let p = mt.pair(&pair)?;
    let v = tokio::task::spawn_blocking(move || {
        let j = &p.rp.journal;
        let pt = |seq: u64, ts: u64| PointRef {
            seq,
            ts_us: ts,
            time: crate::util::rfc3339_ms(ts / 1000),
        };
        let latest = j.resolve(&PointSpec::Latest).ok();
        let oldest = j.resolve(&PointSpec::Oldest).ok();
        let bms: Vec<_> = j
            .bookmarks()
            .into_iter()
            .filter(|b| j.unrecoverable_range(b.seq).is_none())
            .collect();
        serde_json::json!({
            "pair": p.spec.name,
            "latest": latest.map(|x| pt(x.seq, x.ts_us)),
            "oldest": oldest.map(|x| pt(x.seq, x.ts_us)),
            "last_applied_seq": j.last_seq(),
            "bookmarks": bms,
        })
    })
    .await
    .map_err(ApiError::internal)?;
    Ok(warp::reply::json(&v).into_response())
}

/// `POST /data/v1/mt/{pair}/tasks`: start an image or hash task (idempotent by id).
async fn task_start(
    pair: String,
    peer: PeerIdentity,
    req: TaskRequest,
    mt: Arc<MtRole>,
) -> Result<warp::reply::Response, Rejection> {
    from_cx(&mt, &peer)?;
    let p = mt.pair(&pair)?;
    match mt.tasks.start(&pair, p.rp.journal.clone(), req) {
        Ok(st) => Ok(warp::reply::json(&st).into_response()),
        Err(e @ tasks::StartError::Bad(_)) => {
            Err(ApiError::reject(StatusCode::BAD_REQUEST, e.to_string()))
        }
        Err(e @ tasks::StartError::Busy) => Err(ApiError::reject(
            StatusCode::SERVICE_UNAVAILABLE,
            e.to_string(),
        )),
    }
}

/// `GET /data/v1/mt/tasks/{id}` and `POST /data/v1/mt/tasks/{id}/cancel`.
async fn task_status(
    id: String,
    cancel: bool,
    peer: PeerIdentity,
    mt: Arc<MtRole>,
) -> Result<warp::reply::Response, Rejection> {
    from_cx(&mt, &peer)?;
    let st = if cancel {
        mt.tasks.cancel(&id)
    } else {
        mt.tasks.status(&id)
    };
    match st {
        Some(st) => Ok(warp::reply::json(&st).into_response()),
        None => Err(ApiError::reject(
            StatusCode::NOT_FOUND,
            format!("this MT has no task {id} (it restarted since it was started?)"),
        )),
    }
}

/// MT routes on the data port (`/data/v1/mt/...`).
pub fn routes(
    mt: Arc<MtRole>,
) -> impl Filter<Extract = (warp::reply::Response,), Error = Rejection> + Clone {
    let with = move || {
        let mt = mt.clone();
        warp::any().map(move || mt.clone())
    };
    let chunk = warp::path!("data" / "v1" / "mt" / String / "chunk" / u64)
        .and(warp::put())
        .and(warp::ext::get::<PeerIdentity>())
        .and(transport::chunk_body())
        .and(with())
        .and_then(apply_chunk);
    let cursor = warp::path!("data" / "v1" / "mt" / String / "cursor")
        .and(warp::get())
        .and(warp::ext::get::<PeerIdentity>())
        .and(with())
        .and_then(
            |pair: String, peer: PeerIdentity, mt: Arc<MtRole>| async move {
                let p = mt.pair(&pair)?;
                if peer.host_id.as_deref() != Some(p.spec.ps_host.as_str()) {
                    return Err(forbidden(&format!(
                        "pair {pair}: only its process server may ask"
                    )));
                }
                let _quiet = p.applying.lock().await;
                Ok::<_, Rejection>(
                    warp::reply::json(
                        &serde_json::json!({"next_seq": p.rp.journal.last_seq() + 1}),
                    )
                    .into_response(),
                )
            },
        );
    let hashes = warp::path!("data" / "v1" / "mt" / String / "hashes")
        .and(warp::post())
        .and(warp::ext::get::<PeerIdentity>())
        .and(warp::body::content_length_limit(1 << 16))
        .and(warp::body::json())
        .and(with())
        .and_then(hashes);
    let points = warp::path!("data" / "v1" / "mt" / String / "points")
        .and(warp::get())
        .and(warp::ext::get::<PeerIdentity>())
        .and(with())
        .and_then(points);
    let start = warp::path!("data" / "v1" / "mt" / String / "tasks")
        .and(warp::post())
        .and(warp::ext::get::<PeerIdentity>())
        .and(warp::body::content_length_limit(1 << 16))
        .and(warp::body::json())
        .and(with())
        .and_then(task_start);
    let status = warp::path!("data" / "v1" / "mt" / "tasks" / String)
        .and(warp::get())
        .map(|id| (id, false))
        .untuple_one();
    let cancel = warp::path!("data" / "v1" / "mt" / "tasks" / String / "cancel")
        .and(warp::post())
        .map(|id| (id, true))
        .untuple_one();
    let task = status
        .or(cancel)
        .unify()
        .and(warp::ext::get::<PeerIdentity>())
        .and(with())
        .and_then(task_status);
    chunk
        .or(cursor)
        .unify()
        .or(hashes)
        .unify()
        .or(points)
        .unify()
        .or(start)
        .unify()
        .or(task)
        .unify()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn opening_a_journal_never_holds_the_lock_chunks_take() {
        let d = tempfile::tempdir().unwrap();
        let cfg = Config {
            data_dir: d.path().into(),
            ..Config::default()
        };
        let mt = MtRole::new(cfg.clone(), "h".into());
        let (a, b) = (
            PairSpec::for_test("a", "h", 1 << 20),
            PairSpec::for_test("b", "h", 1 << 20),
        );
        let apply = |pairs: Vec<PairSpec>| {
            let mt = mt.clone();
            tokio::task::spawn_blocking(move || {
                mt.apply(&SyncResponse {
                    pairs,
                    ..Default::default()
                })
            })
        };
        apply(vec![b.clone()]).await.unwrap();
        assert!(mt.pair("b").is_ok());
        // Pair a's configuration is a FIFO: opening it blocks until written.
        let dir = super::super::pairs_dir(&cfg.data_dir).join("a");
        std::fs::create_dir_all(&dir).unwrap();
        let fifo = dir.join("pair.json");
        crate::util::mkfifo(&fifo);
        let opening = apply(vec![a, b]);
        for _ in 0..50 {
            {
                let pairs = mt
                    .pairs
                    .try_lock()
                    .expect("pairs lock free while a journal opens");
                assert!(pairs.contains_key("b"));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(!opening.is_finished(), "still opening a");
        crate::util::feed_fifo(fifo, b"{ not json").await;
        opening.await.unwrap();
        // a failed to open: that is a's error, and b is untouched.
        assert!(mt.errors.lock().unwrap().contains_key("a"));
        assert!(mt.pair("b").is_ok());
    }
}
