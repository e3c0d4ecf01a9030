//! The control plane's messages: what the CX tells each node about the pairs
//! and volumes it has a part in, and what each node reports back.
//!
//! Every node runs one sync loop (`POST /api/v1/node/sync`, mutual TLS): it
//! sends its report and the config version it knows; the CX answers at once
//! when its version is newer, else holds the request up to `wait_ms` (a long
//! poll), so a new pair or a bookmark request reaches a node in milliseconds
//! while reports still arrive every `wait_ms`.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::engine::journal::format::BookmarkKind;
use crate::engine::journal::policy::RetentionPolicy;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    None,
    /// zstd on the process server (the seed's default).
    #[default]
    Ps,
    /// zstd on the agent, before the data leaves the source host.
    Source,
}

impl std::str::FromStr for Compression {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "none" => Ok(Compression::None),
            "ps" => Ok(Compression::Ps),
            "source" => Ok(Compression::Source),
            _ => Err(format!("bad compression `{s}`: use none, ps or source")),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Capture {
    /// The agent serves the volume over NBD and captures every write.
    #[default]
    Nbd,
    /// The agent exposes the volume as a file on a FUSE mount.
    Fuse,
    /// No tap: periodic block-hash comparison (crash-inconsistent).
    Scan,
}

impl std::str::FromStr for Capture {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "nbd" => Ok(Capture::Nbd),
            "fuse" => Ok(Capture::Fuse),
            "scan" => Ok(Capture::Scan),
            _ => Err(format!("bad capture `{s}`: use nbd, fuse or scan")),
        }
    }
}

/// A protected volume on an agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VolumeSpec {
    pub name: String,
    /// Backing file or block device holding the volume's data.
    #[schema(value_type = String)]
    pub path: PathBuf,
    #[serde(default)]
    pub capture: Capture,
    /// NBD listen address (capture `nbd`).
    #[serde(default)]
    pub listen: Option<String>,
    /// FUSE mount point (capture `fuse`); the volume appears as `MOUNT/NAME`.
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    pub mount: Option<PathBuf>,
    /// Create the backing file with this size if it does not exist.
    #[serde(default)]
    pub size: Option<u64>,
    /// The filesystem mounted from this volume, frozen for `fs` bookmarks.
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    pub fs_mount: Option<PathBuf>,
    /// Commands run around an `app` bookmark (before, after).
    #[serde(default)]
    pub app_pre: Option<String>,
    #[serde(default)]
    pub app_post: Option<String>,
}

/// A pair as every node involved sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PairSpec {
    pub name: String,
    /// 32 hex digits; chunks carry it.
    pub uuid: String,
    pub source_host: String,
    pub source_volume: String,
    pub ps_host: String,
    /// The PS data port, as its heartbeat reported it.
    pub ps_addr: Option<String>,
    pub target_host: String,
    pub target_addr: Option<String>,
    /// Replica volume on the MT (default: a file in the MT's data dir).
    #[schema(value_type = Option<String>)]
    pub target_path: Option<PathBuf>,
    pub volume_size: u64,
    pub compression: Compression,
    pub zstd_level: i32,
    pub retention: RetentionPolicy,
    pub rpo_threshold_s: u64,
    /// Higher first when the PS's bandwidth is short.
    pub priority: u8,
    pub paused: bool,
    /// Bumped by `tern pair resync`: the agent starts a resync.
    pub resync_gen: u64,
    pub created_ms: u64,
}

impl PairSpec {
    /// A pair whose every role is on `host`, with a uuid made from its
    /// name, for the roles' unit tests.
    #[cfg(test)]
    pub fn for_test(name: &str, host: &str, volume_size: u64) -> PairSpec {
        PairSpec {
            name: name.into(),
            uuid: hex::encode(*blake3::hash(name.as_bytes()).as_bytes())[..32].into(),
            source_host: host.into(),
            source_volume: name.into(),
            ps_host: host.into(),
            ps_addr: None,
            target_host: host.into(),
            target_addr: None,
            target_path: None,
            volume_size,
            compression: Compression::None,
            zstd_level: 1,
            retention: RetentionPolicy::default(),
            rpo_threshold_s: 0,
            priority: 0,
            paused: false,
            resync_gen: 0,
            created_ms: 0,
        }
    }

    pub fn uuid_bytes(&self) -> [u8; 16] {
        let mut b = [0u8; 16];
        if let Ok(v) = hex::decode(&self.uuid)
            && v.len() == 16
        {
            b.copy_from_slice(&v);
        }
        b
    }
}

/// Something a node must do once (bookmarks).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Command {
    pub id: String,
    pub pair: String,
    pub bookmark: String,
    pub kind: BookmarkKind,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CommandResult {
    pub id: String,
    pub ok: bool,
    /// The bookmark's seq on success; the reason on failure.
    pub seq: Option<u64>,
    pub error: Option<String>,
}

/// How the agent is moving a pair's data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum AgentMode {
    /// No session with the PS yet.
    Connecting,
    /// A resync waits for one of the PS's resync slots (`ps.resync_batch`).
    ResyncQueued,
    /// Step I: the whole volume is read and sent (fast resync skips equal blocks).
    ResyncStep1,
    /// Step II: the blocks written during step I are sent.
    ResyncStep2,
    /// Every write streams as it happens.
    Differential,
    /// The buffer is full or the PS refuses: only dirty blocks are marked.
    Bitmap,
    /// Writes were lost (agent crash); a resync will start.
    ResyncRequired,
    Paused,
}

/// Events a role keeps per pair (the newest; older ones drop off).
pub const PAIR_EVENTS: usize = 32;

/// Something that happened to a pair, kept in its status so an operator,
/// a screen or a test sees the pair's recent history without reading logs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PairEvent {
    /// Unix ms.
    pub at_ms: u64,
    #[serde(flatten)]
    pub kind: PairEventKind,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum PairEventKind {
    /// (agent) The replication mode changed.
    Mode { mode: AgentMode },
    /// (agent) Started after a crash: the extents its activity log names
    /// are read again, and nothing else.
    ActivityLogResync { extents: u64, bytes: u64 },
    /// (agent) A chunk was refused repeatedly: the buffer was dropped and a
    /// fast resync started.
    ChunkGivenUp { first: u64, error: String },
    /// (PS) A chunk from the agent was refused.
    ChunkRefused { first: u64, error: String },
    /// (PS) The MT refused a cached chunk repeatedly (or is behind the
    /// cache): the cache was dropped and the agent resyncs.
    CacheDropped { first: u64, error: String },
}

/// Append `kind` to a pair's bounded event list. When it is full the
/// oldest mode change goes first: the rarer events (a crash's activity-log
/// drain, a chunk given up) outlive a run of mode flips.
pub fn push_event(q: &mut std::collections::VecDeque<PairEvent>, kind: PairEventKind) {
    if q.len() >= PAIR_EVENTS {
        match q
            .iter()
            .position(|e| matches!(e.kind, PairEventKind::Mode { .. }))
        {
            Some(i) => {
                q.remove(i);
            }
            None => {
                q.pop_front();
            }
        }
    }
    q.push_back(PairEvent {
        at_ms: crate::util::now_ms(),
        kind,
    });
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AgentPairStatus {
    pub pair: String,
    pub mode: AgentMode,
    /// Step I progress, 0..=100.
    pub progress_pct: f64,
    /// Bytes captured and not yet acknowledged by the PS.
    pub buffered_bytes: u64,
    pub buffer_cap: u64,
    /// Bytes marked dirty in the bitmap (sent later by reading the volume).
    pub dirty_bytes: u64,
    /// Source time (µs) of the oldest write not yet safe at the PS.
    pub oldest_pending_us: Option<u64>,
    pub last_seq: u64,
    /// The PS answered "throttled" within the last report interval.
    pub flow_controlled: bool,
    /// Of the blocks compared in the last fast resync, the % that differed.
    pub fast_resync_unmatched_pct: Option<f64>,
    pub bytes_captured: u64,
    pub bytes_sent: u64,
    pub resyncs: u64,
    /// How long the last finished step I took, in seconds.
    #[serde(default)]
    pub last_step1_s: Option<f64>,
    pub error: Option<String>,
    /// Recent events, oldest first (at most [`PAIR_EVENTS`]).
    #[serde(default)]
    pub events: Vec<PairEvent>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PsPairStatus {
    pub pair: String,
    /// Chunks held on the PS's disk waiting for the MT.
    pub cache_bytes: u64,
    pub cache_chunks: u64,
    pub oldest_cached_us: Option<u64>,
    pub throttled: bool,
    pub bytes_in: u64,
    pub bytes_raw: u64,
    pub bytes_out: u64,
    /// CPU µs the PS spent checking and compressing this pair's chunks
    /// (its own work, apart from TLS and HTTP).
    #[serde(default)]
    pub codec_cpu_us: u64,
    pub forwarded_seq: u64,
    pub error: Option<String>,
    /// Recent events, oldest first (at most [`PAIR_EVENTS`]).
    #[serde(default)]
    pub events: Vec<PairEvent>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct MtPairStatus {
    pub pair: String,
    pub last_seq: u64,
    pub last_ts_us: u64,
    /// The newest consistent point, if any.
    pub latest_point: Option<(u64, u64)>,
    pub oldest_point: Option<(u64, u64)>,
    pub journal_bytes: u64,
    pub bytes_applied: u64,
    /// Bookmarks inside the retention window (available consistency points).
    #[serde(default)]
    pub bookmarks: u64,
    /// Times the journal dropped history to stay inside its space limit
    /// ("retention log reset", seed line 5425).
    #[serde(default)]
    pub retention_resets: u64,
    pub error: Option<String>,
    /// Why the journal takes no chunks for want of space (retention disk
    /// full with policy=stop, or opened read-only on a full disk).
    #[serde(default)]
    pub stopped: Option<String>,
    /// The journal's space budget now: `max_bytes`, or what its disk holds
    /// beyond the margin it keeps free.
    #[serde(default)]
    pub space_limit_bytes: Option<u64>,
    /// Space forcing points out of the time window: when it last did, and
    /// the source times (µs) the oldest point moved from and to.
    #[serde(default)]
    pub last_reset: Option<crate::engine::journal::ResetInfo>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct VolumeStatus {
    pub name: String,
    #[schema(value_type = String)]
    pub path: PathBuf,
    pub capture: Capture,
    pub size: u64,
    /// Where it is served (NBD URL, FUSE file).
    pub export: Option<String>,
    pub error: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct NodeReport {
    /// When the node took this report (its clock, Unix ms).
    #[serde(default)]
    pub at_ms: u64,
    #[serde(default)]
    pub volumes: Vec<VolumeStatus>,
    #[serde(default)]
    pub agent_pairs: Vec<AgentPairStatus>,
    #[serde(default)]
    pub ps_pairs: Vec<PsPairStatus>,
    #[serde(default)]
    pub mt_pairs: Vec<MtPairStatus>,
    #[serde(default)]
    pub results: Vec<CommandResult>,
    /// The machine: load, CPU, memory, disks, network (seed table 5-1).
    #[serde(default)]
    pub system: Option<crate::engine::sysstats::SystemStats>,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SyncRequest {
    pub known_version: u64,
    pub wait_ms: u64,
    pub report: NodeReport,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SyncResponse {
    pub version: u64,
    /// The CX's own host id: the data ports accept admin requests from it.
    pub cx_host: String,
    /// Pairs this node is source, PS or target of.
    pub pairs: Vec<PairSpec>,
    /// Volumes added through the API for this node (agent).
    pub volumes: Vec<VolumeSpec>,
    pub commands: Vec<Command>,
}

/// The largest volume Tern protects (256 TiB): every per-volume structure
/// sized by a volume (the agent's bitmaps and activity log, the MT's
/// replica) is bounded by it before it is allocated.
pub const MAX_VOLUME_SIZE: u64 = 256 << 40;

/// A pair name every role accepts: it names the MT's pair directory and
/// the agent's state file, so no path separators, no leading dot.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
}

/// How long a PS keeps a pair's resync slot without a renewal; the agent
/// renews well inside it (roles::agent) and the PS expires it (roles::ps::slots).
pub const RESYNC_SLOT_LEASE: std::time::Duration = std::time::Duration::from_secs(90);

/// What a node task does (the CX's jobs that run on a node).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum TaskKind {
    /// Write the image at a point to a file or device on the MT host.
    Image,
    /// BLAKE3 of the image at a point.
    Hash,
}

/// `POST /data/v1/mt/{pair}/tasks` (CX → MT): start a task. Idempotent by
/// `id`: a task the MT already has is answered with its status, never
/// started twice; an id it no longer knows (it restarted) starts afresh.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TaskRequest {
    /// Chosen by the CX, unique for the job (at most [`MAX_TASK_ID`] bytes).
    pub id: String,
    pub kind: TaskKind,
    /// A point spec (`latest`, `seq:N`, `tag:NAME`, `time:RFC3339`, …).
    pub at: String,
    /// The image's destination on the MT host (image only).
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    pub to: Option<PathBuf>,
}

/// The longest task id a node accepts.
pub const MAX_TASK_ID: usize = 128;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum TaskState {
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

impl TaskState {
    pub fn is_final(self) -> bool {
        self != TaskState::Running
    }
}

/// A recovery point as a task result names it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PointRef {
    pub seq: u64,
    pub ts_us: u64,
    /// RFC 3339 (milliseconds) of `ts_us`.
    pub time: String,
}

/// What a finished image or hash task produced.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TaskResult {
    pub point: PointRef,
    /// Hex BLAKE3 of the whole image (`size` bytes).
    pub blake3: String,
    pub size: u64,
    /// Where the image was written (image only).
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    pub to: Option<PathBuf>,
}

/// `GET /data/v1/mt/tasks/{id}`: a task as the node sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TaskStatus {
    pub id: String,
    pub pair: String,
    pub kind: TaskKind,
    pub state: TaskState,
    /// Bytes done and to do.
    pub done: u64,
    pub total: u64,
    pub started_ms: u64,
    pub finished_ms: Option<u64>,
    pub result: Option<TaskResult>,
    /// Why it failed (state `failed`).
    pub error: Option<String>,
}
