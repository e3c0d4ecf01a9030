//! Jobs: every long operation (image, hash; later resync, export,
//! workflows) runs as a job the CX keeps in its store, with progress,
//! steps, log lines and a result, that survives a CX restart and can be
//! cancelled.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

pub use crate::engine::control::{PointRef, TaskResult};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum JobKind {
    /// Write the image at a point to a file or device on the MT host.
    Image,
    /// BLAKE3 of the image at a point, computed on the MT.
    Hash,
}

/// The name serde gives a unit variant (`rename_all = "lowercase"`): one
/// spelling for JSON, query strings and the CLI.
fn wire_name<T: Serialize>(v: &T) -> String {
    serde_json::to_value(v)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

fn from_wire<T: serde::de::DeserializeOwned>(s: &str) -> Option<T> {
    serde_json::from_value(serde_json::Value::String(s.to_owned())).ok()
}

impl std::str::FromStr for JobKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        from_wire(s).ok_or_else(|| format!("unknown job kind `{s}` (image, hash)"))
    }
}

impl std::fmt::Display for JobKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&wire_name(self))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    Queued,
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

impl JobState {
    pub fn is_final(self) -> bool {
        matches!(
            self,
            JobState::Succeeded | JobState::Failed | JobState::Cancelled
        )
    }
}

impl std::str::FromStr for JobState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        from_wire(s).ok_or_else(|| {
            format!("unknown job state `{s}` (queued, running, succeeded, failed, cancelled)")
        })
    }
}

impl std::fmt::Display for JobState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&wire_name(self))
    }
}

/// How far a job is.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Progress {
    pub done_bytes: u64,
    pub total_bytes: u64,
    /// Bytes per second over the last few seconds.
    pub rate_bps: Option<f64>,
    /// Seconds left at that rate.
    pub eta_s: Option<f64>,
}

/// One step of a job, in order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Step {
    pub name: String,
    pub state: JobState,
    pub started: Option<String>,
    pub finished: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct LogLine {
    pub time: String,
    /// info, warn or error.
    pub level: String,
    pub message: String,
}

/// Why a job failed: what happened and what to do.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct JobError {
    /// Stable: `node_unreachable`, `node_busy`, `node_restarted`,
    /// `pair_gone`, `task_failed`, `rejected`, `cx_error`.
    pub code: String,
    pub message: String,
    pub action: String,
}

/// What the job works on and with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct JobParams {
    pub pair: String,
    /// The point spec asked for.
    pub at: String,
    /// Image destination on the MT host.
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    pub to: Option<PathBuf>,
}

/// A job as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Job {
    pub id: u64,
    pub kind: JobKind,
    /// What it works on, e.g. `pair/big`.
    pub target: String,
    /// The user who started it.
    pub actor: String,
    pub state: JobState,
    pub created: String,
    pub started: Option<String>,
    pub finished: Option<String>,
    pub progress: Progress,
    pub params: JobParams,
    pub steps: Vec<Step>,
    /// The last lines of its log (at most [`MAX_LOG_LINES`]).
    pub log: Vec<LogLine>,
    pub result: Option<TaskResult>,
    pub error: Option<JobError>,
    /// A cancel was asked for and is being carried out.
    pub cancel_requested: bool,
    /// Times the node was asked to do the work (a node restart re-runs it).
    pub attempts: u32,
    /// Changes with every update: a watcher passes it back as `rev`.
    pub rev: u64,
}

/// Log lines a job keeps (the oldest go first).
pub const MAX_LOG_LINES: usize = 100;

/// `GET /api/v1/jobs`: newest first.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct JobPage {
    pub jobs: Vec<Job>,
    /// Pass as `before` for the next page; absent on the last.
    pub next: Option<u64>,
}

/// `POST /api/v1/pairs/{name}/image`.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ImageRequest {
    /// latest, oldest, seq:N, tag:NAME, time:RFC3339 (default latest).
    #[serde(default)]
    pub at: Option<String>,
    /// Destination on the MT host: an absolute path of a file (written as
    /// `NAME.ID.tern-partial`, renamed when whole) or a device (in place).
    #[schema(value_type = String)]
    pub to: PathBuf,
}

/// `POST /api/v1/pairs/{name}/hash`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HashRequest {
    #[serde(default)]
    pub at: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_and_states_read_and_print_as_their_json_names() {
        for st in [
            JobState::Queued,
            JobState::Running,
            JobState::Succeeded,
            JobState::Failed,
            JobState::Cancelled,
        ] {
            let name = st.to_string();
            assert_eq!(serde_json::to_value(st).unwrap(), name.as_str());
            assert_eq!(name.parse::<JobState>(), Ok(st));
        }
        for k in [JobKind::Image, JobKind::Hash] {
            assert_eq!(k.to_string().parse::<JobKind>(), Ok(k));
        }
        assert!(
            "sleeping"
                .parse::<JobState>()
                .unwrap_err()
                .contains("unknown job state")
        );
        assert!("Image".parse::<JobKind>().is_err());
    }
}
