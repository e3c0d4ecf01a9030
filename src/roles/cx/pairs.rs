//! Replication pairs and agent volumes on the CX: the durable definitions
//! (redb tables `pairs`, `volumes`), the node sync long-poll that hands each
//! node its part, the reports nodes send back, and the pair status the API
//! shows (state, progress, RPO, data in transit per stage).
//!
//! Invariants: a pair's UUID is fixed at creation (chunks carry it, so data
//! for a deleted pair can never land in a new one of the same name); every
//! change to pairs, volumes or commands bumps `version`, which wakes every
//! waiting sync at once.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use warp::http::StatusCode;
use warp::{Rejection, Reply};

use super::api::{ApiError, ApiErrorWrap, blocking};
use super::{CxState, HostRecord};
use crate::engine::control::{
    AgentMode, AgentPairStatus, Command, CommandResult, Compression, MtPairStatus, NodeReport,
    PairSpec, PsPairStatus, SyncRequest, SyncResponse, VolumeSpec, VolumeStatus,
};
use crate::engine::journal::format::BookmarkKind;
use crate::engine::journal::policy::RetentionPolicy;
use crate::engine::store::{self, COMMANDS, HOSTS, PAIRS, Store, VOLUMES};
use crate::engine::transport::PeerIdentity;
use crate::util::{now_ms, rfc3339_ms};

/// Control state: reports (in memory), commands to nodes (in the store,
/// with the pending ones mirrored here), their results.
///
/// A command is handed to its node in every sync answer until the node's
/// report carries its result; only then is it done (in the store first).
/// So a CX restart or a lost answer never loses a command, and the node,
/// which remembers the ids it has run, never runs one twice.
pub struct Control {
    version: tokio::sync::watch::Sender<u64>,
    reports: Mutex<HashMap<String, (u64, NodeReport)>>,
    /// Pending commands by host (what the `commands` table holds undone).
    commands: Mutex<HashMap<String, Vec<Command>>>,
    /// Results not yet read by the request that waits for them (at most
    /// [`MAX_WAITING_RESULTS`], the oldest dropped first).
    results: Mutex<std::collections::VecDeque<CommandResult>>,
    result_tx: tokio::sync::watch::Sender<u64>,
    /// Held by one submission at a time (never by a sync): the check for a
    /// like pending command and the insert are one step.
    submit_mu: Mutex<()>,
}

/// Results kept for waiting requests.
const MAX_WAITING_RESULTS: usize = 1024;
/// Commands pending for one host at most; more are refused (503).
pub const MAX_PENDING_COMMANDS: usize = 256;
/// Done commands are kept this long (then removed at start-up or by the
/// next command).
const KEEP_DONE_MS: u64 = 7 * 24 * 3600 * 1000;

/// What the `commands` table holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CommandRecord {
    pub host: String,
    pub command: Command,
    pub created_ms: u64,
    pub result: Option<CommandResult>,
    pub done_ms: Option<u64>,
}

impl Default for Control {
    fn default() -> Self {
        Control {
            // Start from the clock so a restarted CX never repeats a version.
            version: tokio::sync::watch::Sender::new(now_ms()),
            reports: Mutex::default(),
            commands: Mutex::default(),
            results: Mutex::default(),
            result_tx: tokio::sync::watch::Sender::new(0),
            submit_mu: Mutex::default(),
        }
    }
}

impl Control {
    /// The control state of a CX whose store is `store`: pending commands
    /// are handed out again; done ones past [`KEEP_DONE_MS`] are removed.
    pub fn load(store: &Store) -> Result<Control, crate::engine::store::StoreError> {
        let c = Control::default();
        let now = now_ms();
        let mut old = vec![];
        {
            let mut pending = c.commands.lock().unwrap();
            for (k, r) in store.list::<CommandRecord>(COMMANDS)? {
                match r.done_ms {
                    None => pending.entry(r.host).or_default().push(r.command),
                    Some(d) if now.saturating_sub(d) > KEEP_DONE_MS => old.push(k),
                    Some(_) => {}
                }
            }
        }
        if !old.is_empty() {
            store.update(|tx| -> Result<(), crate::engine::store::StoreError> {
                for k in &old {
                    store::remove_in(tx, COMMANDS, k)?;
                }
                Ok(())
            })?;
        }
        Ok(c)
    }

    /// Keep `cmd` for `host` (in the store, then here) and wake its sync;
    /// or, when a command for the same bookmark of the same pair is pending
    /// (a retried request), join it. Returns the id to wait for.
    fn submit(&self, store: &Store, host: &str, cmd: Command) -> Result<String, Rejection> {
        let _one = self.submit_mu.lock().unwrap();
        if let Some(id) = self.pending_like(host, &cmd) {
            return Ok(id);
        }
        if self
            .commands
            .lock()
            .unwrap()
            .get(host)
            .is_some_and(|v| v.len() >= MAX_PENDING_COMMANDS)
        {
            return Err(ApiError::reject(
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "{MAX_PENDING_COMMANDS} commands already wait for this host; is its agent running (`tern host list`)?"
                ),
            ));
        }
        let rec = CommandRecord {
            host: host.to_owned(),
            command: cmd.clone(),
            created_ms: now_ms(),
            result: None,
            done_ms: None,
        };
        store
            .put(COMMANDS, &cmd.id, &rec)
            .map_err(ApiError::internal)?;
        tracing::info!(command = %cmd.id, host = %host, pair = %cmd.pair, bookmark = %cmd.bookmark, "bookmark requested: kept until the agent answers");
        self.commands
            .lock()
            .unwrap()
            .entry(host.to_owned())
            .or_default()
            .push(cmd.clone());
        self.bump();
        Ok(cmd.id)
    }

    /// A pending command of `host` for the same bookmark of the same pair
    /// (a retried request joins it instead of inserting a second one).
    fn pending_like(&self, host: &str, like: &Command) -> Option<String> {
        self.commands
            .lock()
            .unwrap()
            .get(host)?
            .iter()
            .find(|c| c.pair == like.pair && c.bookmark == like.bookmark && c.kind == like.kind)
            .map(|c| c.id.clone())
    }

    /// Results from `host`'s report: each pending command it names is done
    /// (in the store first), and its waiter woken. Results for commands
    /// not pending (already done, or another host's) change nothing.
    fn take_results(
        &self,
        store: &Store,
        host: &str,
        results: &[CommandResult],
    ) -> Result<(), Rejection> {
        let done: Vec<CommandResult> = {
            let pending = self.commands.lock().unwrap();
            let mine = pending.get(host);
            results
                .iter()
                .filter(|r| mine.is_some_and(|v| v.iter().any(|c| c.id == r.id)))
                .cloned()
                .collect()
        };
        if done.is_empty() {
            return Ok(());
        }
        let now = now_ms();
        store
            .update(|tx| -> Result<(), ApiErrorWrap> {
                for r in &done {
                    if let Some(mut rec) = store::get_in::<CommandRecord>(tx, COMMANDS, &r.id)? {
                        rec.result = Some(r.clone());
                        rec.done_ms = Some(now);
                        store::put_in(tx, COMMANDS, &r.id, &rec)?;
                    }
                }
                Ok(())
            })
            .map_err(|e| e.0)?;
        if let Some(v) = self.commands.lock().unwrap().get_mut(host) {
            v.retain(|c| !done.iter().any(|r| r.id == c.id));
        }
        {
            let mut w = self.results.lock().unwrap();
            for r in done {
                if w.len() >= MAX_WAITING_RESULTS {
                    w.pop_front();
                }
                w.push_back(r);
            }
        }
        self.result_tx.send_modify(|v| *v += 1);
        Ok(())
    }

    /// The result of command `id` if it has come (taken: read once), else
    /// whether it is still pending.
    fn result_of(&self, store: &Store, id: &str) -> Result<Option<CommandResult>, Rejection> {
        let mut w = self.results.lock().unwrap();
        if let Some(i) = w.iter().position(|r| r.id == id) {
            return Ok(w.remove(i));
        }
        drop(w);
        // Done before this request waited (a joined retry): from the store.
        Ok(store
            .get::<CommandRecord>(COMMANDS, id)
            .map_err(ApiError::internal)?
            .and_then(|r| r.result))
    }
}

/// A node report older than this is stale: the node is down or cut off.
pub const REPORT_FRESH_MS: u64 = 30_000;

impl Control {
    /// The report of `host` if it is fresh at `now`.
    pub fn fresh_report(&self, host: &str, now: u64) -> Option<NodeReport> {
        self.reports
            .lock()
            .unwrap()
            .get(host)
            .filter(|(t, _)| now.saturating_sub(*t) < REPORT_FRESH_MS)
            .map(|(_, r)| r.clone())
    }

    pub fn bump(&self) {
        self.version.send_modify(|v| *v += 1);
    }

    /// The latest report of every node (host id → (received at, report)).
    pub fn reports(&self) -> HashMap<String, (u64, NodeReport)> {
        self.reports.lock().unwrap().clone()
    }
}

fn bad(m: impl Into<String>) -> Rejection {
    ApiError::reject(StatusCode::BAD_REQUEST, m)
}

/// A host by name or id; names must be unambiguous.
pub fn find_host(store: &Store, name: &str) -> Result<HostRecord, Rejection> {
    let hosts = store
        .list::<HostRecord>(HOSTS)
        .map_err(ApiError::internal)?;
    if let Some((_, h)) = hosts.iter().find(|(id, _)| id == name) {
        return Ok(h.clone());
    }
    let m: Vec<&HostRecord> = hosts
        .iter()
        .map(|(_, h)| h)
        .filter(|h| h.name == name)
        .collect();
    match m.len() {
        1 => Ok(m[0].clone()),
        0 => Err(ApiError::reject(
            StatusCode::NOT_FOUND,
            format!("no host named `{name}`; `tern host list` shows the enrolled hosts"),
        )),
        _ => Err(bad(format!(
            "{} hosts are named `{name}`; use the host id",
            m.len()
        ))),
    }
}

// --- node sync ----------------------------------------------------------------

pub async fn node_sync(
    peer: PeerIdentity,
    req: SyncRequest,
    s: Arc<CxState>,
) -> Result<impl Reply, Rejection> {
    let host_id = super::api::node_host(peer, "node sync")?;
    if !req.report.results.is_empty() {
        let s2 = s.clone();
        let hid = host_id.clone();
        let results = req.report.results.clone();
        // Not taken now (the store refused): the node says them again.
        if let Err(e) = blocking(move || s2.control.take_results(&s2.store, &hid, &results)).await {
            tracing::warn!(host = %host_id, error = ?e, "command results not recorded; the node sends them again");
        }
    }
    s.control
        .reports
        .lock()
        .unwrap()
        .insert(host_id.clone(), (now_ms(), req.report));
    let mut rx = s.control.version.subscribe();
    // A new command bumps the version, so it answers at once; commands
    // already handed out wait for the next answer like everything else.
    if *rx.borrow_and_update() == req.known_version {
        let wait = Duration::from_millis(req.wait_ms.min(30_000));
        let _ = tokio::time::timeout(wait, rx.changed()).await;
    }
    let version = *s.control.version.borrow();
    // Every pending command, each time, until its result comes back.
    let commands = s
        .control
        .commands
        .lock()
        .unwrap()
        .get(&host_id)
        .cloned()
        .unwrap_or_default();
    let s2 = s.clone();
    let hid = host_id.clone();
    let (pairs, volumes) = blocking(move || {
        let pairs = pair_specs(&s2.store)?
            .into_iter()
            .filter(|p| p.source_host == hid || p.ps_host == hid || p.target_host == hid)
            .collect::<Vec<_>>();
        let volumes = s2
            .store
            .list::<VolumeSpec>(VOLUMES)
            .map_err(ApiError::internal)?
            .into_iter()
            .filter(|(k, _)| k.split_once('/').is_some_and(|(h, _)| h == hid))
            .map(|(_, v)| v)
            .collect();
        Ok((pairs, volumes))
    })
    .await?;
    Ok(warp::reply::json(&SyncResponse {
        version,
        cx_host: s.host_id.clone(),
        pairs,
        volumes,
        commands,
    }))
}

/// Stored pairs, with their hosts' current data addresses filled in.
pub(crate) fn pair_specs(store: &Store) -> Result<Vec<PairSpec>, Rejection> {
    let hosts: HashMap<String, HostRecord> = store
        .list::<HostRecord>(HOSTS)
        .map_err(ApiError::internal)?
        .into_iter()
        .collect();
    let mut v: Vec<PairSpec> = store
        .list::<PairSpec>(PAIRS)
        .map_err(ApiError::internal)?
        .into_iter()
        .map(|(_, mut p)| {
            p.ps_addr = hosts.get(&p.ps_host).and_then(|h| h.data_addr.clone());
            p.target_addr = hosts.get(&p.target_host).and_then(|h| h.data_addr.clone());
            p
        })
        .collect();
    v.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(v)
}

/// One stored pair with its hosts' current data addresses filled in (as
/// [`pair_specs`] gives it), reading only that pair and its two hosts.
pub(crate) fn pair_spec(store: &Store, name: &str) -> Result<Option<PairSpec>, Rejection> {
    let Some(mut p) = store
        .get::<PairSpec>(PAIRS, name)
        .map_err(ApiError::internal)?
    else {
        return Ok(None);
    };
    let addr = |host: &str| -> Result<Option<String>, Rejection> {
        Ok(store
            .get::<HostRecord>(HOSTS, host)
            .map_err(ApiError::internal)?
            .and_then(|h| h.data_addr))
    };
    p.ps_addr = addr(&p.ps_host)?;
    p.target_addr = addr(&p.target_host)?;
    Ok(Some(p))
}

// --- pairs --------------------------------------------------------------------

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreatePair {
    pub name: String,
    /// `AGENTHOST:VOLUME`
    pub source: String,
    /// PS host name or id.
    pub ps: String,
    /// `MTHOST` or `MTHOST:PATH` (the replica volume on the MT).
    pub target: String,
    #[serde(default)]
    pub compression: Option<Compression>,
    #[serde(default)]
    pub zstd_level: Option<i32>,
    /// Keep every point this long, e.g. "24h".
    #[serde(default)]
    pub retention: Option<String>,
    #[serde(default)]
    pub max_bytes: Option<u64>,
    /// At the space limit: `prune` (default) or `stop`.
    #[serde(default)]
    pub on_full: Option<crate::engine::journal::policy::OnFull>,
    /// e.g. "30m"
    #[serde(default)]
    pub rpo_threshold: Option<String>,
    #[serde(default)]
    pub priority: Option<u8>,
}

fn parse_dur(what: &str, s: &str) -> Result<Duration, Rejection> {
    humantime::parse_duration(s).map_err(|e| bad(format!("bad {what} `{s}`: {e} (e.g. 30m, 24h)")))
}

pub async fn create_pair(
    _p: super::auth::Principal,
    req: CreatePair,
    s: Arc<CxState>,
) -> Result<impl Reply, Rejection> {
    let s2 = s.clone();
    let spec = blocking(move || {
        let s = s2;
        if !crate::engine::control::valid_name(&req.name) {
            return Err(bad(format!(
                "pair name `{}` must be 1-64 letters, digits, `-`, `_` or `.`",
                req.name
            )));
        }
        let (src_host, src_vol) = req.source.rsplit_once(':').ok_or_else(|| {
            bad(format!(
                "source `{}` must be AGENTHOST:VOLUME",
                req.source
            ))
        })?;
        let src = find_host(&s.store, src_host)?;
        let ps = find_host(&s.store, &req.ps)?;
        let (tgt_host, tgt_path) = match req.target.split_once(':') {
            Some((h, p)) if !p.is_empty() => (h, Some(std::path::PathBuf::from(p))),
            Some((h, _)) => (h, None),
            None => (req.target.as_str(), None),
        };
        let tgt = find_host(&s.store, tgt_host)?;
        for (h, role, what) in [
            (&src, crate::config::Role::Agent, "source"),
            (&ps, crate::config::Role::Ps, "process server"),
            (&tgt, crate::config::Role::Mt, "target"),
        ] {
            if !h.roles.contains(&role) {
                return Err(bad(format!(
                    "{what} host `{}` does not run the {role} role (it runs {:?})",
                    h.name, h.roles
                )));
            }
        }
        let size = volume_size(&s, &src.host_id, src_vol)?.ok_or_else(|| {
            bad(format!(
                "agent `{}` has not reported a volume `{src_vol}`; add it with `tern agent volume add` and check `tern agent volume list`",
                src.name
            ))
        })?;
        let retention = RetentionPolicy {
            window: match &req.retention {
                Some(r) => Some(parse_dur("retention", r)?),
                None => Some(Duration::from_secs(24 * 3600)),
            },
            max_bytes: req.max_bytes,
            on_full: req.on_full.unwrap_or_default(),
            ..Default::default()
        };
        let rpo = parse_dur("rpo threshold", req.rpo_threshold.as_deref().unwrap_or("30m"))?;
        let spec = PairSpec {
            name: req.name.clone(),
            uuid: hex::encode(uuid::Uuid::new_v4().as_bytes()),
            source_host: src.host_id.clone(),
            source_volume: src_vol.to_owned(),
            ps_host: ps.host_id.clone(),
            ps_addr: None,
            target_host: tgt.host_id.clone(),
            target_addr: None,
            target_path: tgt_path,
            volume_size: size,
            compression: req.compression.unwrap_or_default(),
            zstd_level: req.zstd_level.unwrap_or(1).clamp(-7, 19),
            retention,
            rpo_threshold_s: rpo.as_secs(),
            priority: req.priority.unwrap_or(5),
            paused: false,
            resync_gen: 0,
            created_ms: now_ms(),
        };
        s.store
            .update(|tx| -> Result<(), ApiErrorWrap> {
                if store::get_in::<PairSpec>(tx, PAIRS, &spec.name)?.is_some() {
                    return Err(ApiErrorWrap(ApiError::reject(
                        StatusCode::CONFLICT,
                        format!("pair `{}` already exists", spec.name),
                    )));
                }
                for (_, p) in list_in(tx)? {
                    if p.source_host == spec.source_host && p.source_volume == spec.source_volume {
                        return Err(ApiErrorWrap(ApiError::reject(
                            StatusCode::CONFLICT,
                            format!(
                                "volume `{}` is already protected by pair `{}`",
                                spec.source_volume, p.name
                            ),
                        )));
                    }
                }
                store::put_in(tx, PAIRS, &spec.name, &spec)?;
                Ok(())
            })
            .map_err(|e| e.0)?;
        Ok(spec)
    })
    .await?;
    s.control.bump();
    tracing::info!(pair = %spec.name, uuid = %spec.uuid, "pair created");
    Ok(warp::reply::with_status(
        warp::reply::json(&spec),
        StatusCode::CREATED,
    ))
}

fn list_in(tx: &redb::WriteTransaction) -> Result<Vec<(String, PairSpec)>, ApiErrorWrap> {
    use redb::ReadableTable;
    let t = tx
        .open_table(PAIRS)
        .map_err(|e| ApiErrorWrap(ApiError::internal(e)))?;
    let mut v = Vec::new();
    for e in t.iter().map_err(|e| ApiErrorWrap(ApiError::internal(e)))? {
        let (k, val) = e.map_err(|e| ApiErrorWrap(ApiError::internal(e)))?;
        let p: PairSpec =
            serde_json::from_slice(val.value()).map_err(|e| ApiErrorWrap(ApiError::internal(e)))?;
        v.push((k.value().to_owned(), p));
    }
    Ok(v)
}

/// The size of `volume` on `host`: as the agent reported it, else as added.
fn volume_size(s: &CxState, host: &str, volume: &str) -> Result<Option<u64>, Rejection> {
    if let Some((_, r)) = s.control.reports.lock().unwrap().get(host)
        && let Some(v) = r.volumes.iter().find(|v| v.name == volume && v.size > 0)
    {
        return Ok(Some(v.size));
    }
    Ok(s.store
        .get::<VolumeSpec>(VOLUMES, &format!("{host}/{volume}"))
        .map_err(ApiError::internal)?
        .and_then(|v| v.size))
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PairList {
    pub pairs: Vec<PairView>,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Deleted {
    pub deleted: String,
}

/// A bookmark the agent inserted: the journal sequence number it got.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct BookmarkResult {
    pub pair: String,
    pub bookmark: String,
    pub seq: Option<u64>,
}

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct VolumeList {
    pub volumes: Vec<VolumeView>,
}

/// A pair as the API shows it: definition, state and health.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PairView {
    pub name: String,
    pub uuid: String,
    pub source: String,
    pub ps: String,
    pub target: String,
    pub volume_size: u64,
    pub compression: Compression,
    pub paused: bool,
    /// differential-sync, resync-queued, resync-step-1, resync-step-2, bitmap,
    /// resync-required, stopped (the MT's journal takes no chunks: see
    /// `stopped`), connecting, paused, unknown.
    pub state: String,
    /// Why the pair makes no new recovery points though its agent runs:
    /// the retention disk is full (policy=stop, or the journal opened
    /// read-only), and what to do. Its points stay listed and recoverable.
    #[serde(default)]
    pub stopped: Option<String>,
    pub progress_pct: Option<f64>,
    pub flow_controlled: bool,
    /// Seconds of source writes not yet recoverable on the MT.
    pub rpo_s: Option<f64>,
    pub rpo_threshold_s: u64,
    pub rpo_ok: Option<bool>,
    /// Data in transit: captured on the agent (buffer + dirty blocks), cached on the PS.
    pub transit_agent_bytes: u64,
    pub transit_ps_bytes: u64,
    pub transit_mt_bytes: u64,
    /// Where most data in transit waits (seed line 5414): primary, ps,
    /// target, ps+target or spread; None when little is in transit.
    pub bottleneck: Option<String>,
    pub fast_resync_unmatched_pct: Option<f64>,
    pub latest_point: Option<PointView>,
    pub oldest_point: Option<PointView>,
    pub last_applied_seq: Option<u64>,
    pub journal_bytes: Option<u64>,
    pub bytes_captured: Option<u64>,
    pub bytes_in_ps: Option<u64>,
    pub bytes_raw_ps: Option<u64>,
    pub errors: Vec<String>,
    /// The node reports this view is made of were all taken at or after
    /// this time (Unix ms; None: no fresh report).
    pub status_as_of_ms: Option<u64>,
    pub agent: Option<AgentPairStatus>,
    pub ps_status: Option<PsPairStatus>,
    pub mt: Option<MtPairStatus>,
}

impl PairView {
    /// Source time between the oldest and the latest recoverable point, s.
    pub fn retention_available_s(&self) -> Option<u64> {
        match (&self.oldest_point, &self.latest_point) {
            (Some(o), Some(n)) => Some(n.ts_us.saturating_sub(o.ts_us) / 1_000_000),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PointView {
    pub seq: u64,
    pub time: String,
    pub ts_us: u64,
}

fn point(p: Option<(u64, u64)>) -> Option<PointView> {
    p.map(|(seq, ts_us)| PointView {
        seq,
        ts_us,
        time: rfc3339_ms(ts_us / 1000),
    })
}

pub fn pair_view(s: &CxState, p: &PairSpec, names: &HashMap<String, String>) -> PairView {
    let now_us = now_ms() * 1000;
    let reports = s.control.reports.lock().unwrap();
    // A report older than this is stale: the node is down or cut off.
    let fresh = |h: &str| {
        reports
            .get(h)
            .filter(|(t, _)| now_ms().saturating_sub(*t) < REPORT_FRESH_MS)
            .map(|(_, r)| r)
    };
    // The oldest of the reports this view is made of: nothing after it is known.
    let status_as_of_ms = [&p.source_host, &p.ps_host, &p.target_host]
        .into_iter()
        .filter_map(|h| fresh(h).map(|r| r.at_ms))
        .min();
    let agent = fresh(&p.source_host)
        .and_then(|r| r.agent_pairs.iter().find(|a| a.pair == p.name))
        .cloned();
    let ps = fresh(&p.ps_host)
        .and_then(|r| r.ps_pairs.iter().find(|a| a.pair == p.name))
        .cloned();
    let mt = fresh(&p.target_host)
        .and_then(|r| r.mt_pairs.iter().find(|a| a.pair == p.name))
        .cloned();
    drop(reports);
    let transit_agent_bytes = agent
        .as_ref()
        .map(|a| a.buffered_bytes + a.dirty_bytes)
        .unwrap_or(0);
    let transit_ps_bytes = ps.as_ref().map(|x| x.cache_bytes).unwrap_or(0);
    // The MT applies each chunk as it arrives: it holds nothing in transit.
    let transit_mt_bytes = 0;
    let name = |h: &str| names.get(h).cloned().unwrap_or_else(|| h.to_owned());
    let stopped = mt.as_ref().and_then(|m| m.stopped.clone());
    let state = if p.paused {
        "paused".to_owned()
    } else if stopped.is_some() && agent.is_some() {
        // The agent may believe it is in differential sync (its buffer is
        // not full yet): nothing it sends reaches the journal.
        "stopped".to_owned()
    } else {
        match &agent {
            None => "unknown".into(),
            Some(a) => match a.mode {
                AgentMode::Differential => "differential-sync",
                AgentMode::ResyncQueued => "resync-queued",
                AgentMode::ResyncStep1 => "resync-step-1",
                AgentMode::ResyncStep2 => "resync-step-2",
                AgentMode::Bitmap => "bitmap",
                AgentMode::ResyncRequired => "resync-required",
                AgentMode::Connecting => "connecting",
                AgentMode::Paused => "paused",
            }
            .into(),
        }
    };
    // RPO: how far back the newest recoverable image is from the source's
    // present, i.e. the source time of the oldest write not yet in it.
    let rpo_s = mt.as_ref().map(|m| {
        let mut oldest: Option<u64> = None;
        let mut note = |t: Option<u64>| {
            if let Some(t) = t {
                oldest = Some(oldest.map_or(t, |o: u64| o.min(t)));
            }
        };
        if let Some(a) = &agent {
            note(a.oldest_pending_us);
            // Dirty blocks (bitmap mode, a drain after a crash, a resync)
            // or a replica known to lack writes: nothing after the latest
            // recoverable point is proven to be on the MT, whenever the
            // agent first marked it.
            let unproven = a.dirty_bytes > 0
                || matches!(
                    a.mode,
                    AgentMode::ResyncRequired | AgentMode::ResyncStep1 | AgentMode::ResyncQueued
                );
            if unproven {
                note(Some(m.latest_point.map_or(p.created_ms * 1000, |x| x.1)));
            }
        }
        if let Some(ps) = &ps {
            note(ps.oldest_cached_us);
        }
        match m.latest_point {
            None => note(Some(p.created_ms * 1000)),
            Some((seq, ts)) if seq < m.last_seq => note(Some(ts)),
            _ => {}
        }
        if agent.is_none() {
            // The source is silent: nothing newer than what the MT has is known.
            note(m.latest_point.map(|x| x.1));
        }
        oldest.map_or(0.0, |t| now_us.saturating_sub(t) as f64 / 1e6)
    });
    let mut errors = Vec::new();
    for e in [
        agent.as_ref().and_then(|a| a.error.clone()),
        ps.as_ref().and_then(|a| a.error.clone()),
        mt.as_ref().and_then(|a| a.error.clone()),
    ]
    .into_iter()
    .flatten()
    {
        errors.push(e);
    }
    PairView {
        name: p.name.clone(),
        uuid: p.uuid.clone(),
        source: format!("{}:{}", name(&p.source_host), p.source_volume),
        ps: name(&p.ps_host),
        target: match &p.target_path {
            Some(t) => format!("{}:{}", name(&p.target_host), t.display()),
            None => name(&p.target_host),
        },
        volume_size: p.volume_size,
        compression: p.compression,
        paused: p.paused,
        state,
        stopped,
        progress_pct: agent
            .as_ref()
            .filter(|a| a.mode == AgentMode::ResyncStep1)
            .map(|a| a.progress_pct),
        flow_controlled: agent.as_ref().is_some_and(|a| a.flow_controlled)
            || ps.as_ref().is_some_and(|x| x.throttled),
        rpo_ok: rpo_s.map(|r| r <= p.rpo_threshold_s as f64),
        rpo_s,
        rpo_threshold_s: p.rpo_threshold_s,
        transit_agent_bytes,
        transit_ps_bytes,
        transit_mt_bytes,
        bottleneck: super::monitor::bottleneck(
            transit_agent_bytes,
            transit_ps_bytes,
            transit_mt_bytes,
        )
        .map(str::to_owned),
        fast_resync_unmatched_pct: agent.as_ref().and_then(|a| a.fast_resync_unmatched_pct),
        latest_point: point(mt.as_ref().and_then(|m| m.latest_point)),
        oldest_point: point(mt.as_ref().and_then(|m| m.oldest_point)),
        last_applied_seq: mt.as_ref().map(|m| m.last_seq),
        journal_bytes: mt.as_ref().map(|m| m.journal_bytes),
        bytes_captured: agent.as_ref().map(|a| a.bytes_captured),
        bytes_in_ps: ps.as_ref().map(|x| x.bytes_in),
        bytes_raw_ps: ps.as_ref().map(|x| x.bytes_raw),
        errors,
        status_as_of_ms,
        agent,
        ps_status: ps,
        mt,
    }
}

pub(crate) fn host_names(store: &Store) -> Result<HashMap<String, String>, Rejection> {
    Ok(store
        .list::<HostRecord>(HOSTS)
        .map_err(ApiError::internal)?
        .into_iter()
        .map(|(id, h)| (id, h.name))
        .collect())
}

pub async fn list_pairs(
    _p: super::auth::Principal,
    s: Arc<CxState>,
) -> Result<impl Reply, Rejection> {
    let views = blocking(move || {
        let names = host_names(&s.store)?;
        Ok(pair_specs(&s.store)?
            .iter()
            .map(|p| pair_view(&s, p, &names))
            .collect::<Vec<_>>())
    })
    .await?;
    Ok(warp::reply::json(&PairList { pairs: views }))
}

pub async fn get_pair(
    name: String,
    _p: super::auth::Principal,
    s: Arc<CxState>,
) -> Result<impl Reply, Rejection> {
    let v = blocking(move || {
        let p = load_pair(&s.store, &name)?;
        Ok(pair_view(&s, &p, &host_names(&s.store)?))
    })
    .await?;
    Ok(warp::reply::json(&v))
}

pub fn load_pair(store: &Store, name: &str) -> Result<PairSpec, Rejection> {
    store
        .get::<PairSpec>(PAIRS, name)
        .map_err(ApiError::internal)?
        .ok_or_else(|| {
            ApiError::reject(
                StatusCode::NOT_FOUND,
                format!("no pair named `{name}`; `tern pair list` shows them"),
            )
        })
}

/// pause | resume | resync
pub async fn pair_action(
    name: String,
    action: String,
    _p: super::auth::Principal,
    s: Arc<CxState>,
) -> Result<impl Reply, Rejection> {
    let s2 = s.clone();
    let spec = blocking(move || {
        s2.store
            .update(|tx| -> Result<PairSpec, ApiErrorWrap> {
                let Some(mut p) = store::get_in::<PairSpec>(tx, PAIRS, &name)? else {
                    return Err(ApiErrorWrap(ApiError::reject(
                        StatusCode::NOT_FOUND,
                        format!("no pair named `{name}`"),
                    )));
                };
                match action.as_str() {
                    "pause" => p.paused = true,
                    "resume" => p.paused = false,
                    "resync" => p.resync_gen += 1,
                    _ => {
                        return Err(ApiErrorWrap(ApiError::reject(
                            StatusCode::NOT_FOUND,
                            format!("unknown pair action `{action}` (pause, resume, resync)"),
                        )));
                    }
                }
                store::put_in(tx, PAIRS, &name, &p)?;
                Ok(p)
            })
            .map_err(|e| e.0)
    })
    .await?;
    s.control.bump();
    Ok(warp::reply::json(&spec))
}

pub async fn delete_pair(
    name: String,
    _p: super::auth::Principal,
    s: Arc<CxState>,
) -> Result<impl Reply, Rejection> {
    let s2 = s.clone();
    let n2 = name.clone();
    let removed = blocking(move || s2.store.remove(PAIRS, &n2).map_err(ApiError::internal)).await?;
    if !removed {
        return Err(ApiError::reject(
            StatusCode::NOT_FOUND,
            format!("no pair named `{name}`"),
        ));
    }
    s.control.bump();
    Ok(warp::reply::json(&Deleted { deleted: name }))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BookmarkRequest {
    pub name: String,
    #[serde(default)]
    pub kind: Option<BookmarkKind>,
}

/// Ask the pair's agent to insert a bookmark; wait (≤ 60 s) for its answer.
pub async fn bookmark(
    pair: String,
    _p: super::auth::Principal,
    req: BookmarkRequest,
    s: Arc<CxState>,
) -> Result<impl Reply, Rejection> {
    if req.name.is_empty() || req.name.len() > 200 {
        return Err(bad("a bookmark name is 1-200 characters"));
    }
    let s2 = s.clone();
    let p2 = pair.clone();
    let spec = blocking(move || load_pair(&s2.store, &p2)).await?;
    let mut rx = s.control.result_tx.subscribe();
    let kind = req.kind.unwrap_or(BookmarkKind::User);
    let cmd = Command {
        id: uuid::Uuid::new_v4().to_string(),
        pair: pair.clone(),
        bookmark: req.name.clone(),
        kind,
    };
    let s2 = s.clone();
    let host = spec.source_host.clone();
    let id = blocking(move || s2.control.submit(&s2.store, &host, cmd)).await?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        rx.borrow_and_update();
        let s2 = s.clone();
        let id2 = id.clone();
        let got = blocking(move || s2.control.result_of(&s2.store, &id2)).await?;
        if let Some(r) = got {
            if r.ok {
                return Ok(warp::reply::json(&BookmarkResult {
                    pair,
                    bookmark: req.name,
                    seq: r.seq,
                }));
            }
            return Err(ApiError::reject(
                StatusCode::CONFLICT,
                format!(
                    "pair {pair}: bookmark `{}` failed on the agent: {}",
                    req.name,
                    r.error.unwrap_or_default()
                ),
            ));
        }
        if tokio::time::timeout_at(deadline, rx.changed())
            .await
            .is_err()
        {
            return Err(ApiError::reject(
                StatusCode::GATEWAY_TIMEOUT,
                format!(
                    "pair {pair}: the agent did not answer the bookmark request within 60 s; is it running (`tern host list`)? The request stays pending and is carried out when the agent is back"
                ),
            ));
        }
    }
}

// --- volumes ------------------------------------------------------------------

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AddVolume {
    pub host: String,
    #[serde(flatten)]
    pub spec: VolumeSpec,
}

pub async fn add_volume(
    _p: super::auth::Principal,
    req: AddVolume,
    s: Arc<CxState>,
) -> Result<impl Reply, Rejection> {
    if !crate::engine::control::valid_name(&req.spec.name) {
        return Err(bad(format!(
            "volume name `{}` must be 1-64 letters, digits, `-`, `_` or `.`",
            req.spec.name
        )));
    }
    let s2 = s.clone();
    let spec = blocking(move || {
        let h = find_host(&s2.store, &req.host)?;
        if !h.roles.contains(&crate::config::Role::Agent) {
            return Err(bad(format!(
                "host `{}` does not run the agent role",
                h.name
            )));
        }
        s2.store
            .put(
                VOLUMES,
                &format!("{}/{}", h.host_id, req.spec.name),
                &req.spec,
            )
            .map_err(ApiError::internal)?;
        Ok(req.spec)
    })
    .await?;
    s.control.bump();
    Ok(warp::reply::with_status(
        warp::reply::json(&spec),
        StatusCode::CREATED,
    ))
}

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct VolumeView {
    pub host: String,
    pub host_id: String,
    #[serde(flatten)]
    pub status: VolumeStatus,
}

pub async fn list_volumes(
    _p: super::auth::Principal,
    s: Arc<CxState>,
) -> Result<impl Reply, Rejection> {
    let v = blocking(move || {
        let names = host_names(&s.store)?;
        let mut out = Vec::new();
        let reports = s.control.reports.lock().unwrap().clone();
        for (hid, (_, r)) in &reports {
            for v in &r.volumes {
                out.push(VolumeView {
                    host: names.get(hid).cloned().unwrap_or_else(|| hid.clone()),
                    host_id: hid.clone(),
                    status: v.clone(),
                });
            }
        }
        // Added but not (yet) reported by a running agent.
        for (k, spec) in s
            .store
            .list::<VolumeSpec>(VOLUMES)
            .map_err(ApiError::internal)?
        {
            let (hid, _) = k.split_once('/').unwrap_or((&k, ""));
            if !out
                .iter()
                .any(|o| o.host_id == hid && o.status.name == spec.name)
            {
                out.push(VolumeView {
                    host: names.get(hid).cloned().unwrap_or_else(|| hid.to_owned()),
                    host_id: hid.to_owned(),
                    status: VolumeStatus {
                        name: spec.name,
                        path: spec.path,
                        capture: spec.capture,
                        size: spec.size.unwrap_or(0),
                        export: None,
                        error: Some("not reported by the agent yet".into()),
                    },
                });
            }
        }
        out.sort_by(|a, b| (&a.host, &a.status.name).cmp(&(&b.host, &b.status.name)));
        Ok(out)
    })
    .await?;
    Ok(warp::reply::json(&VolumeList { volumes: v }))
}

// --- recovery operations on the MT ----------------------------------------------

/// `GET /api/v1/pairs/{name}/points`: the replica's recovery points, asked
/// of its MT over mutual TLS, as the CX. (Images and hashes are jobs:
/// `super::jobs`.)
pub async fn points(
    pair: String,
    _p: super::auth::Principal,
    s: Arc<CxState>,
) -> Result<impl Reply, Rejection> {
    let s2 = s.clone();
    let p2 = pair.clone();
    let spec = blocking(move || {
        pair_spec(&s2.store, &p2)?.ok_or_else(|| {
            ApiError::reject(
                StatusCode::NOT_FOUND,
                format!("no pair named `{p2}`; `tern pair list` shows them"),
            )
        })
    })
    .await?;
    let Some(addr) = spec.target_addr else {
        return Err(ApiError::reject(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("pair {pair}: its MT has not reported a data address yet; is it running?"),
        ));
    };
    let a = crate::engine::transport::call(
        s.client
            .get(format!("https://{addr}/data/v1/mt/{pair}/points"))
            .timeout(Duration::from_secs(30)),
    )
    .await
    .map_err(|e| {
        ApiError::reject(
            StatusCode::BAD_GATEWAY,
            format!(
                "pair {pair}: cannot reach its MT at {addr}: {}",
                crate::util::source_chain(&e)
            ),
        )
    })?;
    Ok(a.into_reply())
}
