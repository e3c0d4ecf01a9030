//! Long replica operations the CX runs as jobs (image, hash): started by
//! id, polled, cancelled; the CX keeps the job, the MT only the work.
//!
//! Invariants:
//! - A task id is started at most once while this process lives: a second
//!   start with the same id answers the first one's status. After a
//!   restart the id is unknown and a start runs the work afresh (the CX
//!   counts that as another attempt).
//! - An image is written beside its destination (`NAME.ID.tern-partial`,
//!   created new, never through a symlink) and renamed into place only
//!   when whole and synced, so a destination never holds a partial image
//!   that looks finished; two running tasks never write one destination. A partial left by a crash
//!   is removed when the MT next starts (its path is recorded in
//!   `DATA/mt-tasks/` before the first byte is written).
//! - A cancel is seen within one 4 MiB piece of work; the task then ends
//!   `cancelled` and its partial file is gone.
//! - At most [`MAX_RUNNING`] tasks run at once (each holds a blocking
//!   thread and a journal pin); finished ones are kept [`KEEP_FINISHED`]
//!   deep so the CX can read how they ended.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::Context;
use serde::{Deserialize, Serialize};

use crate::engine::control::{
    MAX_TASK_ID, PointRef, TaskKind, TaskRequest, TaskResult, TaskState, TaskStatus,
};
use crate::engine::fsutil;
use crate::engine::journal::{Journal, PointSpec};
use crate::util::{now_ms, rfc3339_ms};

/// Tasks running at once on one MT.
pub const MAX_RUNNING: usize = 4;
/// Finished tasks remembered.
pub const KEEP_FINISHED: usize = 256;

struct Task {
    req: TaskRequest,
    pair: String,
    started_ms: u64,
    done: AtomicU64,
    total: AtomicU64,
    cancel: AtomicBool,
    end: Mutex<Option<End>>,
}

struct End {
    state: TaskState,
    at_ms: u64,
    result: Option<TaskResult>,
    error: Option<String>,
}

impl Task {
    fn status(&self) -> TaskStatus {
        let end = self.end.lock().unwrap();
        TaskStatus {
            id: self.req.id.clone(),
            pair: self.pair.clone(),
            kind: self.req.kind,
            state: end.as_ref().map_or(TaskState::Running, |e| e.state),
            done: self.done.load(Ordering::Relaxed),
            total: self.total.load(Ordering::Relaxed),
            started_ms: self.started_ms,
            finished_ms: end.as_ref().map(|e| e.at_ms),
            result: end.as_ref().and_then(|e| e.result.clone()),
            error: end.as_ref().and_then(|e| e.error.clone()),
        }
    }
}

/// Why a start was refused.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0}")]
    Bad(String),
    #[error("this MT already runs {MAX_RUNNING} tasks; the CX tries again when one ends")]
    Busy,
}

/// What `DATA/mt-tasks/ID.json` holds while an image is being written.
#[derive(Serialize, Deserialize)]
struct PartialRecord {
    partial: PathBuf,
}

pub struct Tasks {
    dir: PathBuf,
    tasks: Mutex<HashMap<String, Arc<Task>>>,
    /// Set at shutdown: running tasks stop and are not reported as ended.
    aborting: Arc<AtomicBool>,
}

/// A file name for a task id (ids come from the CX: keep it to one path
/// component whatever they hold).
fn record_name(id: &str) -> String {
    format!(
        "{}.json",
        hex::encode(blake3::hash(id.as_bytes()).as_bytes())
    )
}

impl Tasks {
    /// The registry of an MT whose data directory is `data_dir`; removes
    /// partial images a previous run left.
    pub fn new(data_dir: &Path) -> Tasks {
        let dir = data_dir.join("mt-tasks");
        if let Ok(rd) = std::fs::read_dir(&dir) {
            for e in rd.flatten() {
                let p = e.path();
                if let Ok(b) = std::fs::read(&p)
                    && let Ok(r) = serde_json::from_slice::<PartialRecord>(&b)
                {
                    match std::fs::remove_file(&r.partial) {
                        Ok(()) => {
                            tracing::info!(partial = %r.partial.display(), "removed the partial image of a task cut short by a restart")
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                        Err(e) => {
                            tracing::warn!(partial = %r.partial.display(), error = %e, "cannot remove a partial image")
                        }
                    }
                }
                let _ = std::fs::remove_file(&p);
            }
        }
        Tasks {
            dir,
            tasks: Mutex::default(),
            aborting: Arc::default(),
        }
    }

    /// Stop every running task at once (shutdown): each leaves its partial
    /// removed and stays `running` in this dying process, so its job sees
    /// an MT that restarted, never a cancel or a failure.
    pub fn abort_all(&self) {
        self.aborting.store(true, Ordering::Relaxed);
    }

    pub fn status(&self, id: &str) -> Option<TaskStatus> {
        self.tasks.lock().unwrap().get(id).map(|t| t.status())
    }

    /// Ask a task to stop; `None` if unknown.
    pub fn cancel(&self, id: &str) -> Option<TaskStatus> {
        let t = self.tasks.lock().unwrap().get(id).cloned()?;
        t.cancel.store(true, Ordering::Relaxed);
        Some(t.status())
    }

    /// Start `req` on `journal` (the replica of `pair`), or answer the
    /// status of the task already started under its id.
    pub fn start(
        self: &Arc<Self>,
        pair: &str,
        journal: Arc<Journal>,
        req: TaskRequest,
    ) -> Result<TaskStatus, StartError> {
        if req.id.is_empty() || req.id.len() > MAX_TASK_ID {
            return Err(StartError::Bad(format!(
                "task id must be 1 to {MAX_TASK_ID} bytes"
            )));
        }
        let at: PointSpec = req.at.parse().map_err(StartError::Bad)?;
        let to = match (req.kind, &req.to) {
            (TaskKind::Image, None) => {
                return Err(StartError::Bad(
                    "image needs `to` (a path on the MT host)".into(),
                ));
            }
            (TaskKind::Image, Some(to)) if !to.is_absolute() => {
                return Err(StartError::Bad(format!(
                    "image destination {} must be an absolute path on the MT host",
                    to.display()
                )));
            }
            (TaskKind::Hash, Some(_)) => {
                return Err(StartError::Bad("a hash task takes no `to`".into()));
            }
            (_, to) => to.clone(),
        };
        let task = {
            let mut map = self.tasks.lock().unwrap();
            if let Some(t) = map.get(&req.id) {
                if t.pair != pair {
                    return Err(StartError::Bad(format!(
                        "task {} belongs to pair {}",
                        req.id, t.pair
                    )));
                }
                return Ok(t.status());
            }
            let running = map
                .values()
                .filter(|t| t.end.lock().unwrap().is_none())
                .count();
            if running >= MAX_RUNNING {
                return Err(StartError::Busy);
            }
            if self.aborting.load(Ordering::Relaxed) {
                return Err(StartError::Busy);
            }
            if let Some(to) = &to
                && map.values().any(|t| {
                    t.end.lock().unwrap().is_none() && t.req.to.as_deref() == Some(to.as_path())
                })
            {
                return Err(StartError::Bad(format!(
                    "another task is writing {} now; wait for it or choose another destination",
                    to.display()
                )));
            }
            forget_finished(&mut map);
            let t = Arc::new(Task {
                req: req.clone(),
                pair: pair.to_owned(),
                started_ms: now_ms(),
                done: AtomicU64::new(0),
                total: AtomicU64::new(journal.volume_size()),
                cancel: AtomicBool::new(false),
                end: Mutex::new(None),
            });
            map.insert(req.id.clone(), t.clone());
            t
        };
        let me = self.clone();
        let t = task.clone();
        tokio::task::spawn_blocking(move || {
            let r = me.run(&t, &journal, &at, to.as_deref());
            if me.aborting.load(Ordering::Relaxed) && r.is_err() {
                tracing::info!(pair = %t.pair, task = %t.req.id, "task stopped by shutdown");
                return;
            }
            let end = match r {
                Ok(result) => {
                    tracing::info!(pair = %t.pair, task = %t.req.id, kind = ?t.req.kind, seq = result.point.seq, "task done");
                    End {
                        state: TaskState::Succeeded,
                        at_ms: now_ms(),
                        result: Some(result),
                        error: None,
                    }
                }
                Err(_) if t.cancel.load(Ordering::Relaxed) => {
                    tracing::info!(pair = %t.pair, task = %t.req.id, "task cancelled");
                    End {
                        state: TaskState::Cancelled,
                        at_ms: now_ms(),
                        result: None,
                        error: None,
                    }
                }
                Err(e) => {
                    let msg = format!("pair {}: {e:#}", t.pair);
                    tracing::warn!(task = %t.req.id, error = %msg, "task failed");
                    End {
                        state: TaskState::Failed,
                        at_ms: now_ms(),
                        result: None,
                        error: Some(msg),
                    }
                }
            };
            *t.end.lock().unwrap() = Some(end);
        });
        Ok(task.status())
    }

    fn run(
        &self,
        t: &Task,
        journal: &Arc<Journal>,
        at: &PointSpec,
        to: Option<&Path>,
    ) -> anyhow::Result<TaskResult> {
        let pin = journal.pin(at)?;
        let point = PointRef {
            seq: pin.point.seq,
            ts_us: pin.point.ts_us,
            time: rfc3339_ms(pin.point.ts_us / 1000),
        };
        let progress = |done: u64, total: u64| {
            t.done.store(done, Ordering::Relaxed);
            t.total.store(total, Ordering::Relaxed);
            if t.cancel.load(Ordering::Relaxed) {
                anyhow::bail!("cancelled");
            }
            if self.aborting.load(Ordering::Relaxed) {
                anyhow::bail!("the MT is shutting down");
            }
            Ok(())
        };
        let size = journal.volume_size();
        let Some(to) = to else {
            let h = super::hash_image(&pin, progress)?;
            return Ok(TaskResult {
                point,
                blake3: h.to_hex().to_string(),
                size,
                to: None,
            });
        };
        // A device (or anything not a regular file) is written in place;
        // a file through a partial beside it.
        let in_place = std::fs::metadata(to).is_ok_and(|m| !m.file_type().is_file());
        if in_place {
            let h = super::write_image(&pin, to, progress)?;
            return Ok(TaskResult {
                point,
                blake3: h.to_hex().to_string(),
                size,
                to: Some(to.to_owned()),
            });
        }
        let name = to
            .file_name()
            .with_context(|| format!("{} names no file", to.display()))?;
        let parent = to.parent().unwrap_or(Path::new("/"));
        if !parent.is_dir() {
            anyhow::bail!(
                "{} is not a directory on the MT host; create it or choose another destination",
                parent.display()
            );
        }
        // One partial per task (two jobs to one destination never share
        // a file), made new and never through a symlink planted there.
        let mut pname = name.to_owned();
        pname.push(format!(".{}.tern-partial", &record_name(&t.req.id)[..12]));
        let partial = parent.join(pname);
        let _ = std::fs::remove_file(&partial);
        {
            use std::os::unix::fs::OpenOptionsExt;
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .custom_flags(libc::O_NOFOLLOW)
                .mode(0o600)
                .open(&partial)
                .with_context(|| format!("cannot create {}", partial.display()))?;
        }
        let record = self.dir.join(record_name(&t.req.id));
        std::fs::create_dir_all(&self.dir)?;
        fsutil::write_durable(
            &record,
            &serde_json::to_vec(&PartialRecord {
                partial: partial.clone(),
            })?,
            0o600,
        )?;
        let r = super::write_image(&pin, &partial, progress).and_then(|h| {
            std::fs::rename(&partial, to)
                .with_context(|| format!("cannot rename the image into {}", to.display()))?;
            fsutil::sync_dir(parent)?;
            Ok(h)
        });
        if r.is_err() {
            let _ = std::fs::remove_file(&partial);
        }
        let _ = std::fs::remove_file(&record);
        let h = r?;
        Ok(TaskResult {
            point,
            blake3: h.to_hex().to_string(),
            size,
            to: Some(to.to_owned()),
        })
    }
}

/// Keep at most [`KEEP_FINISHED`] finished tasks: the oldest go first.
fn forget_finished(map: &mut HashMap<String, Arc<Task>>) {
    let mut done: Vec<(u64, String)> = map
        .iter()
        .filter_map(|(id, t)| {
            t.end
                .lock()
                .unwrap()
                .as_ref()
                .map(|e| (e.at_ms, id.clone()))
        })
        .collect();
    if done.len() < KEEP_FINISHED {
        return;
    }
    done.sort();
    for (_, id) in done.iter().take(done.len() + 1 - KEEP_FINISHED) {
        map.remove(id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::journal::testkit::Workload;
    use crate::roles::mt::ReplicaPair;

    fn wait_end(t: &Tasks, id: &str) -> TaskStatus {
        for _ in 0..500 {
            let st = t.status(id).unwrap();
            if st.state.is_final() {
                return st;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        panic!("task {id} did not end");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_image_task_renames_a_whole_image_and_a_start_is_idempotent() {
        let d = tempfile::tempdir().unwrap();
        let p = ReplicaPair::create(d.path(), "p", 8 << 20, None, Default::default()).unwrap();
        let w = Workload::new(3, 8 << 20);
        for i in 0..4 {
            p.journal.apply(&w.chunk(i)).unwrap();
        }
        let tasks = Arc::new(Tasks::new(d.path()));
        let to = d.path().join("out.img");
        let req = TaskRequest {
            id: "t1".into(),
            kind: TaskKind::Image,
            at: "latest".into(),
            to: Some(to.clone()),
        };
        let a = tasks.start("p", p.journal.clone(), req.clone()).unwrap();
        let end = wait_end(&tasks, "t1");
        assert_eq!(end.state, TaskState::Succeeded, "{end:?}");
        // Started again under its id: the same task, not a second one.
        let b = tasks.start("p", p.journal.clone(), req).unwrap();
        assert_eq!(a.started_ms, b.started_ms);
        assert_eq!(b.state, TaskState::Succeeded);
        let want = blake3::hash(&std::fs::read(&to).unwrap());
        assert_eq!(end.result.unwrap().blake3, want.to_hex().to_string());
        let partials = std::fs::read_dir(d.path())
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().ends_with(".tern-partial"))
            .count();
        assert_eq!(partials, 0);
        // Bad requests are refused before anything starts.
        for (kind, to, at) in [
            (TaskKind::Image, None, "latest"),
            (TaskKind::Image, Some(PathBuf::from("rel.img")), "latest"),
            (TaskKind::Hash, Some(to.clone()), "latest"),
            (TaskKind::Hash, None, "someday"),
        ] {
            let r = tasks.start(
                "p",
                p.journal.clone(),
                TaskRequest {
                    id: "bad".into(),
                    kind,
                    at: at.into(),
                    to,
                },
            );
            assert!(matches!(r, Err(StartError::Bad(_))), "{r:?}");
        }
        assert!(tasks.status("bad").is_none());
    }

    #[test]
    fn a_partial_left_by_a_crash_is_removed_at_start() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("mt-tasks");
        std::fs::create_dir_all(&dir).unwrap();
        let partial = d.path().join("x.img.tern-partial");
        std::fs::write(&partial, b"half an image").unwrap();
        std::fs::write(
            dir.join(record_name("job-1")),
            serde_json::to_vec(&PartialRecord {
                partial: partial.clone(),
            })
            .unwrap(),
        )
        .unwrap();
        let _t = Tasks::new(d.path());
        assert!(!partial.exists());
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0);
    }
}
