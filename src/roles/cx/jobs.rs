//! Jobs: long operations the CX runs and keeps (table `jobs`), so an image
//! of a 120 GiB volume is a thing a user starts, watches, cancels and reads
//! the result of, not an HTTP call that times out.
//!
//! A job's work runs on a node as a task (the MT's `tasks` module), started by an
//! id the job fixes at creation; the CX's runner polls it every
//! [`POLL`] and keeps the job's progress, steps, log and result.
//!
//! Invariants:
//! - Every change of state is in the store before anyone is told of it;
//!   progress is held in memory (what the API shows) and written at most
//!   every [`SAVE_EVERY`].
//! - A job is never `running` with no runner: at start-up the CX gives every
//!   queued or running job a runner again. That runner starts the task by
//!   its id, which the node answers with the task's status if it has it (the
//!   work went on while the CX was down) or starts afresh if it restarted
//!   (another attempt, at most [`MAX_ATTEMPTS`]).
//! - A node out of reach for `cx.job_node_timeout` fails the job saying
//!   where it stopped; a cancel reaches the node within one poll.
//! - Finished jobs are kept `cx.jobs_keep` deep and `cx.jobs_max_age` long.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use warp::http::StatusCode;
use warp::{Rejection, Reply};

use super::CxState;
use super::api::{ApiError, ApiErrorWrap, blocking};
use super::auth::Principal;
use crate::api::jobs::{
    HashRequest, ImageRequest, Job, JobError, JobKind, JobPage, JobParams, JobState, LogLine,
    MAX_LOG_LINES, Progress, Step,
};
use crate::engine::control::{TaskKind, TaskRequest, TaskState, TaskStatus};
use crate::engine::store::{self, JOBS, META};
use crate::util::{now_ms, rfc3339_ms};

/// How often a runner asks the node.
pub const POLL: Duration = Duration::from_millis(500);
/// Progress is written to the store at most this often.
pub const SAVE_EVERY: Duration = Duration::from_secs(5);
/// Times a node is asked to (re)start a job's work.
pub const MAX_ATTEMPTS: u32 = 3;
/// The longest page of jobs.
pub const MAX_PAGE: usize = 500;
/// How long a node may answer "busy" (all its task slots taken, or the
/// pair not open there) before the job fails.
pub const BUSY_LIMIT: Duration = Duration::from_secs(30 * 60);
/// Unfinished jobs at most; more are refused (503).
pub const MAX_UNFINISHED: usize = 1000;

/// What the `jobs` table holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobRecord {
    pub job: Job,
    /// The node task's id.
    pub task_id: String,
    /// The pair's UUID at creation: a pair re-created under the name is
    /// another pair.
    pub pair_uuid: String,
    pub created_ms: u64,
    pub finished_ms: Option<u64>,
    /// When the node last started the task (its clock): a start answered
    /// with another time is another attempt.
    #[serde(default)]
    pub task_started_ms: Option<u64>,
}

pub fn key(id: u64) -> String {
    format!("{id:016}")
}

/// A job with a runner in this process.
struct Live {
    rec: Mutex<JobRecord>,
    cancel: tokio::sync::Notify,
}

pub struct Jobs {
    live: Mutex<HashMap<u64, Arc<Live>>>,
    /// Bumped on every change of any job (watchers wait on it).
    changed: tokio::sync::watch::Sender<u64>,
    slots: Arc<tokio::sync::Semaphore>,
    last_prune: Mutex<Option<Instant>>,
}

impl Jobs {
    pub fn new(running: usize) -> Jobs {
        Jobs {
            live: Mutex::default(),
            changed: tokio::sync::watch::Sender::new(0),
            slots: Arc::new(tokio::sync::Semaphore::new(running.max(1))),
            last_prune: Mutex::new(None),
        }
    }

    fn live(&self, id: u64) -> Option<Arc<Live>> {
        self.live.lock().unwrap().get(&id).cloned()
    }

    /// The job as it is now: the runner's copy if it has one, else the store's.
    fn current(&self, s: &CxState, id: u64) -> Result<Option<JobRecord>, Rejection> {
        if let Some(l) = self.live(id) {
            return Ok(Some(l.rec.lock().unwrap().clone()));
        }
        s.store.get(JOBS, &key(id)).map_err(ApiError::internal)
    }
}

/// Give every unfinished job a runner again (CX start-up).
pub fn recover(s: &Arc<CxState>) -> anyhow::Result<usize> {
    let mut n = 0;
    for (_, rec) in s.store.list::<JobRecord>(JOBS)? {
        if !rec.job.state.is_final() {
            spawn_runner(s.clone(), rec, true);
            n += 1;
        }
    }
    prune(s)?;
    Ok(n)
}

fn new_job(
    s: &CxState,
    p: &Principal,
    kind: JobKind,
    params: JobParams,
    pair_uuid: String,
) -> Result<JobRecord, Rejection> {
    let now = now_ms();
    s.store
        .update(|tx| -> Result<JobRecord, ApiErrorWrap> {
            let id = store::get_in::<u64>(tx, META, "job_seq")?.unwrap_or(0) + 1;
            store::put_in(tx, META, "job_seq", &id)?;
            let rec = JobRecord {
                job: Job {
                    id,
                    kind,
                    target: format!("pair/{}", params.pair),
                    actor: p.user.clone(),
                    state: JobState::Queued,
                    created: rfc3339_ms(now),
                    started: None,
                    finished: None,
                    progress: Progress::default(),
                    params,
                    steps: vec![Step {
                        name: match kind {
                            JobKind::Image => "write the image on the MT".into(),
                            JobKind::Hash => "hash the image on the MT".into(),
                        },
                        state: JobState::Queued,
                        started: None,
                        finished: None,
                    }],
                    log: vec![],
                    result: None,
                    error: None,
                    cancel_requested: false,
                    attempts: 0,
                    rev: 1,
                },
                task_id: format!("{}-job-{id}", uuid::Uuid::new_v4().simple()),
                pair_uuid,
                created_ms: now,
                finished_ms: None,
                task_started_ms: None,
            };
            store::put_in(tx, JOBS, &key(id), &rec)?;
            Ok(rec)
        })
        .map_err(|e| e.0)
}

/// Start a job of `kind` on a pair's replica: 202 with the job.
async fn start(
    s: Arc<CxState>,
    p: Principal,
    kind: JobKind,
    pair: String,
    at: Option<String>,
    to: Option<std::path::PathBuf>,
) -> Result<warp::reply::Response, Rejection> {
    let at = at.unwrap_or_else(|| "latest".into());
    // Refuse what the node would refuse before anything is kept.
    at.parse::<crate::engine::journal::PointSpec>()
        .map_err(|e| ApiError::reject(StatusCode::BAD_REQUEST, e))?;
    if let Some(t) = &to
        && !t.is_absolute()
    {
        return Err(ApiError::reject(
            StatusCode::BAD_REQUEST,
            format!(
                "image destination {} must be an absolute path on the MT host",
                t.display()
            ),
        ));
    }
    if s.jobs.live.lock().unwrap().len() >= MAX_UNFINISHED {
        return Err(ApiError::reject(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "{MAX_UNFINISHED} jobs are unfinished already; wait for some to end or cancel them"
            ),
        ));
    }
    let s2 = s.clone();
    let rec = blocking(move || {
        let spec = super::pairs::load_pair(&s2.store, &pair)?;
        let params = JobParams { pair, at, to };
        new_job(&s2, &p, kind, params, spec.uuid)
    })
    .await?;
    tracing::info!(job = rec.job.id, kind = ?kind, target = %rec.job.target, actor = %rec.job.actor, "job created");
    let job = rec.job.clone();
    spawn_runner(s.clone(), rec, false);
    s.jobs.changed.send_modify(|v| *v += 1);
    Ok(warp::reply::with_status(warp::reply::json(&job), StatusCode::ACCEPTED).into_response())
}

pub async fn start_image(
    pair: String,
    p: Principal,
    req: ImageRequest,
    s: Arc<CxState>,
) -> Result<warp::reply::Response, Rejection> {
    start(s, p, JobKind::Image, pair, req.at, Some(req.to)).await
}

pub async fn start_hash(
    pair: String,
    p: Principal,
    req: HashRequest,
    s: Arc<CxState>,
) -> Result<warp::reply::Response, Rejection> {
    start(s, p, JobKind::Hash, pair, req.at, None).await
}

#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    pub limit: Option<usize>,
    /// Jobs with ids below this (the `next` of the previous page).
    pub before: Option<u64>,
    pub state: Option<String>,
    pub kind: Option<String>,
    pub target: Option<String>,
}

pub async fn list(_p: Principal, q: ListQuery, s: Arc<CxState>) -> Result<impl Reply, Rejection> {
    let bad = |e: String| ApiError::reject(StatusCode::BAD_REQUEST, e);
    let state: Option<JobState> = q
        .state
        .as_deref()
        .map(str::parse)
        .transpose()
        .map_err(bad)?;
    let kind: Option<JobKind> = q.kind.as_deref().map(str::parse).transpose().map_err(bad)?;
    let limit = q.limit.unwrap_or(50);
    if limit == 0 || limit > MAX_PAGE {
        return Err(bad(format!("limit must be 1 to {MAX_PAGE}")));
    }
    let s2 = s.clone();
    let page = blocking(move || {
        let before = q.before.map(key);
        let (rows, more) = s2
            .store
            .page_rev::<JobRecord>(JOBS, before.as_deref(), limit, |r| {
                state.is_none_or(|st| r.job.state == st)
                    && kind.is_none_or(|k| r.job.kind == k)
                    && q.target.as_deref().is_none_or(|t| r.job.target == t)
            })
            .map_err(ApiError::internal)?;
        let jobs: Vec<Job> = rows
            .into_iter()
            .map(|(_, r)| match s2.jobs.live(r.job.id) {
                Some(l) => l.rec.lock().unwrap().job.clone(),
                None => r.job,
            })
            .collect();
        let next = if more {
            jobs.last().map(|j| j.id)
        } else {
            None
        };
        Ok(JobPage { jobs, next })
    })
    .await?;
    Ok(warp::reply::json(&page))
}

#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct GetQuery {
    /// Answer when the job's `rev` differs from this (a long poll)…
    pub rev: Option<u64>,
    /// …or after this many milliseconds (at most 30 000).
    pub wait_ms: Option<u64>,
}

/// A job id from a path: a number, or 404 naming it.
fn parse_id(id: &str) -> Result<u64, Rejection> {
    id.parse().map_err(|_| {
        ApiError::reject(
            StatusCode::NOT_FOUND,
            format!("no job {id}: job ids are numbers; `tern job list` shows them"),
        )
    })
}

fn not_found(id: u64) -> Rejection {
    ApiError::reject(
        StatusCode::NOT_FOUND,
        format!("no job {id}; `tern job list` shows them"),
    )
}

pub async fn get(
    id: String,
    _p: Principal,
    q: GetQuery,
    s: Arc<CxState>,
) -> Result<impl Reply, Rejection> {
    let id = parse_id(&id)?;
    let deadline =
        tokio::time::Instant::now() + Duration::from_millis(q.wait_ms.unwrap_or(0).min(30_000));
    let mut rx = s.jobs.changed.subscribe();
    loop {
        rx.borrow_and_update();
        let s2 = s.clone();
        let rec = blocking(move || s2.jobs.current(&s2, id)).await?;
        let Some(rec) = rec else {
            return Err(not_found(id));
        };
        if q.rev.is_none_or(|r| r != rec.job.rev) || rec.job.state.is_final() {
            return Ok(warp::reply::json(&rec.job));
        }
        if tokio::time::timeout_at(deadline, rx.changed())
            .await
            .is_err()
        {
            return Ok(warp::reply::json(&rec.job));
        }
    }
}

pub async fn cancel(id: String, p: Principal, s: Arc<CxState>) -> Result<impl Reply, Rejection> {
    let id = parse_id(&id)?;
    let Some(live) = s.jobs.live(id) else {
        let s2 = s.clone();
        let rec = blocking(move || s2.jobs.current(&s2, id)).await?;
        return Err(match rec {
            None => not_found(id),
            Some(r) => ApiError::reject(
                StatusCode::CONFLICT,
                format!("job {id} already {}; nothing to cancel", r.job.state),
            ),
        });
    };
    let job = {
        let mut r = live.rec.lock().unwrap();
        if !r.job.cancel_requested {
            r.job.cancel_requested = true;
            push_log(
                &mut r.job,
                "info",
                format!("cancel asked for by {}", p.user),
            );
        }
        r.job.clone()
    };
    tracing::info!(job = id, by = %p.user, "job cancel requested");
    live.cancel.notify_one();
    s.jobs.changed.send_modify(|v| *v += 1);
    Ok(warp::reply::with_status(
        warp::reply::json(&job),
        StatusCode::ACCEPTED,
    ))
}

fn push_log(job: &mut Job, level: &str, message: String) {
    if job.log.len() >= MAX_LOG_LINES {
        job.log.remove(0);
    }
    job.log.push(LogLine {
        time: rfc3339_ms(now_ms()),
        level: level.into(),
        message,
    });
    job.rev += 1;
}

fn spawn_runner(s: Arc<CxState>, rec: JobRecord, resumed: bool) {
    let id = rec.job.id;
    let live = Arc::new(Live {
        rec: Mutex::new(rec),
        cancel: tokio::sync::Notify::new(),
    });
    s.jobs.live.lock().unwrap().insert(id, live.clone());
    tokio::spawn(async move {
        let r = Runner {
            s: s.clone(),
            live,
            last_save: Instant::now(),
            samples: VecDeque::new(),
        }
        .run(resumed)
        .await;
        if let Err(e) = r {
            // Never leave a job "running" with no runner: fail it, saying why.
            tracing::error!(job = id, error = %format!("{e:#}"), "job runner stopped");
            let rec = s.jobs.live(id).map(|l| {
                let mut r = l.rec.lock().unwrap();
                if !r.job.state.is_final() {
                    r.job.state = JobState::Failed;
                    r.job.finished = Some(rfc3339_ms(now_ms()));
                    r.finished_ms = Some(now_ms());
                    r.job.error = Some(JobError {
                        code: "cx_error".into(),
                        message: format!("the CX could not go on with the job: {e:#}"),
                        action: "check the CX's log and disk, then start the job again".into(),
                    });
                    r.job.rev += 1;
                }
                r.clone()
            });
            if let Some(rec) = rec {
                let s2 = s.clone();
                let _ =
                    tokio::task::spawn_blocking(move || s2.store.put(JOBS, &key(id), &rec)).await;
            }
        }
        s.jobs.live.lock().unwrap().remove(&id);
        s.jobs.changed.send_modify(|v| *v += 1);
        let _ = blocking(move || {
            prune(&s).map_err(ApiError::internal)?;
            Ok(())
        })
        .await;
    });
}

struct Runner {
    s: Arc<CxState>,
    live: Arc<Live>,
    last_save: Instant,
    /// (when, bytes done) over the last seconds, for the rate.
    samples: VecDeque<(Instant, u64)>,
}

/// How a node answered.
enum Asked {
    Status(TaskStatus),
    /// It does not have the task.
    Unknown,
    /// It is busy; try later.
    Busy(String),
    /// It refused (bad point, no such pair there, …).
    Refused(String),
    /// No answer.
    Unreachable(String),
}

impl Runner {
    fn id(&self) -> u64 {
        self.live.rec.lock().unwrap().job.id
    }

    fn snapshot(&self) -> JobRecord {
        self.live.rec.lock().unwrap().clone()
    }

    /// Change the job; saved at once when `durable`, else within SAVE_EVERY.
    async fn update(&mut self, durable: bool, f: impl FnOnce(&mut Job)) -> anyhow::Result<()> {
        let rec = {
            let mut r = self.live.rec.lock().unwrap();
            f(&mut r.job);
            r.job.rev += 1;
            if r.job.state.is_final() && r.finished_ms.is_none() {
                r.finished_ms = Some(now_ms());
            }
            r.clone()
        };
        self.s.jobs.changed.send_modify(|v| *v += 1);
        if durable || self.last_save.elapsed() >= SAVE_EVERY {
            self.last_save = Instant::now();
            let s = self.s.clone();
            tokio::task::spawn_blocking(move || s.store.put(JOBS, &key(rec.job.id), &rec))
                .await??;
        }
        Ok(())
    }

    async fn log(&mut self, level: &'static str, msg: String) -> anyhow::Result<()> {
        let id = self.id();
        match level {
            "warn" => tracing::warn!(job = id, "{msg}"),
            "error" => tracing::error!(job = id, "{msg}"),
            _ => tracing::info!(job = id, "{msg}"),
        }
        self.update(true, |j| {
            push_log(j, level, msg);
        })
        .await
    }

    async fn finish(
        &mut self,
        state: JobState,
        error: Option<JobError>,
        result: Option<crate::api::jobs::TaskResult>,
    ) -> anyhow::Result<()> {
        let msg = match (&state, &error) {
            (JobState::Succeeded, _) => "job succeeded".to_owned(),
            (JobState::Cancelled, _) => "job cancelled".to_owned(),
            (_, Some(e)) => format!("job failed: {}", e.message),
            _ => format!("job {state}"),
        };
        let now = rfc3339_ms(now_ms());
        self.update(true, |j| {
            j.state = state;
            j.finished = Some(now.clone());
            j.error = error;
            j.result = result;
            j.progress.rate_bps = None;
            j.progress.eta_s = None;
            for st in &mut j.steps {
                if !st.state.is_final() {
                    st.state = state;
                    st.finished = Some(now.clone());
                }
            }
            push_log(
                j,
                if state == JobState::Failed {
                    "error"
                } else {
                    "info"
                },
                msg,
            );
        })
        .await
    }

    async fn fail(&mut self, code: &str, message: String, action: &str) -> anyhow::Result<()> {
        let e = JobError {
            code: code.into(),
            message,
            action: action.into(),
        };
        self.finish(JobState::Failed, Some(e), None).await
    }

    /// Where the job got to, for messages.
    fn at_pct(&self) -> String {
        let p = self.live.rec.lock().unwrap().job.progress.clone();
        if p.total_bytes == 0 {
            return "before it began".into();
        }
        format!(
            "at {:.1}% ({} of {} bytes)",
            p.done_bytes as f64 * 100.0 / p.total_bytes as f64,
            p.done_bytes,
            p.total_bytes
        )
    }

    async fn run(mut self, resumed: bool) -> anyhow::Result<()> {
        let rec = self.snapshot();
        if resumed {
            self.log(
                "warn",
                format!(
                    "the CX restarted while this job was {}; picking it up again",
                    rec.job.state
                ),
            )
            .await?;
        }
        // Queued: wait for a slot (or a cancel: it never reached a node).
        // A job that was running before a CX restart keeps running: its
        // task may be live on the MT, so it takes no slot and waits for none.
        let slots = self.s.jobs.slots.clone();
        let _permit = if rec.job.state == JobState::Queued {
            Some(tokio::select! {
                p = slots.acquire_owned() => p?,
                _ = self.live.cancel.notified() => {
                    return self.finish(JobState::Cancelled, None, None).await;
                }
            })
        } else {
            None
        };
        if rec.job.state == JobState::Queued {
            let now = rfc3339_ms(now_ms());
            self.update(true, |j| {
                j.state = JobState::Running;
                j.started = Some(now.clone());
                if let Some(st) = j.steps.first_mut() {
                    st.state = JobState::Running;
                    st.started = Some(now);
                }
            })
            .await?;
        }
        let timeout = self.s.cfg.cx.job_node_timeout.0;
        // Start: ask the node to start the task (it answers the status of
        // one it has). Poll: follow it; a node that then does not know it
        // has restarted.
        let mut polling = rec.task_started_ms.is_some();
        let mut followed = false;
        let mut cancel_sent = false;
        let mut unreachable_since: Option<Instant> = None;
        let mut busy_logged = false;
        let mut busy_since: Option<Instant> = None;
        let mut start_sent = false;
        loop {
            let rec = self.snapshot();
            let spec = {
                let s = self.s.clone();
                let pair = rec.job.params.pair.clone();
                tokio::task::spawn_blocking(move || super::pairs::pair_spec(&s.store, &pair))
                    .await?
                    .map_err(|_| anyhow::anyhow!("cannot read the pair"))?
            };
            let Some(spec) = spec.filter(|p| p.uuid == rec.pair_uuid) else {
                let msg = format!(
                    "pair {} was deleted while the job ran ({})",
                    rec.job.params.pair,
                    self.at_pct()
                );
                return self
                    .fail("pair_gone", msg, "nothing to do; the pair no longer exists")
                    .await;
            };
            let cancel = rec.job.cancel_requested;
            if cancel && !start_sent && rec.task_started_ms.is_none() && !resumed {
                // No start was ever sent: nothing runs on a node.
                return self.finish(JobState::Cancelled, None, None).await;
            }
            let asked = match &spec.target_addr {
                None => Asked::Unreachable("its MT has not reported a data address yet".into()),
                Some(addr) if cancel && !cancel_sent => {
                    self.ask(addr, &format!("tasks/{}/cancel", rec.task_id), None)
                        .await
                }
                Some(addr) if polling || cancel => {
                    self.ask(addr, &format!("tasks/{}", rec.task_id), None)
                        .await
                }
                Some(addr) => {
                    start_sent = true;
                    let req = TaskRequest {
                        id: rec.task_id.clone(),
                        kind: match rec.job.kind {
                            JobKind::Image => TaskKind::Image,
                            JobKind::Hash => TaskKind::Hash,
                        },
                        at: rec.job.params.at.clone(),
                        to: rec.job.params.to.clone(),
                    };
                    self.ask(addr, &format!("{}/tasks", spec.name), Some(&req))
                        .await
                }
            };
            if cancel && !matches!(asked, Asked::Unreachable(_)) {
                cancel_sent = true;
            }
            match asked {
                Asked::Status(st) => {
                    unreachable_since = None;
                    busy_since = None;
                    busy_logged = false;
                    if rec.task_started_ms != Some(st.started_ms) {
                        // The node started the work now.
                        let n = rec.job.attempts + 1;
                        self.live.rec.lock().unwrap().task_started_ms = Some(st.started_ms);
                        self.update(true, |j| j.attempts = n).await?;
                        self.log(
                            "info",
                            format!(
                                "task {} started on MT {} ({}), attempt {n}",
                                rec.task_id,
                                spec.target_host,
                                spec.target_addr.as_deref().unwrap_or("?")
                            ),
                        )
                        .await?;
                        followed = true;
                    } else if !followed {
                        followed = true;
                        self.log(
                            "info",
                            format!(
                                "following task {} on MT {}: it is {}",
                                rec.task_id,
                                spec.target_host,
                                match st.state {
                                    TaskState::Running => "still running",
                                    TaskState::Succeeded => "done",
                                    TaskState::Failed => "failed",
                                    TaskState::Cancelled => "cancelled",
                                }
                            ),
                        )
                        .await?;
                    }
                    polling = true;
                    self.progress(&st).await?;
                    if st.state.is_final() {
                        return match st.state {
                            TaskState::Succeeded => {
                                self.finish(JobState::Succeeded, None, st.result).await
                            }
                            TaskState::Cancelled => {
                                self.finish(JobState::Cancelled, None, None).await
                            }
                            _ => {
                                let msg = st.error.unwrap_or_else(|| "no reason given".into());
                                self.fail(
                                    "task_failed",
                                    msg,
                                    "see the MT's log; fix the cause and start the job again",
                                )
                                .await
                            }
                        };
                    }
                }
                Asked::Unknown if cancel => {
                    return self.finish(JobState::Cancelled, None, None).await;
                }
                Asked::Unknown => {
                    // The node lost the task: it restarted.
                    let attempts = rec.job.attempts;
                    let pct = self.at_pct();
                    if attempts >= MAX_ATTEMPTS {
                        let msg = format!(
                            "MT {} restarted while the job ran, {attempts} attempts in all; the last stopped {pct}",
                            spec.target_host,
                        );
                        return self
                            .fail(
                                "node_restarted",
                                msg,
                                "check the MT's log and start the job again",
                            )
                            .await;
                    }
                    self.update(true, |j| {
                        j.progress = Progress::default();
                        push_log(
                            j,
                            "warn",
                            format!(
                                "MT {} no longer has the task (it restarted; the job was {pct}); starting it again",
                                spec.target_host,
                            ),
                        );
                    })
                    .await?;
                    self.samples.clear();
                    polling = false;
                    continue;
                }
                Asked::Busy(m) => {
                    unreachable_since = None;
                    if !busy_logged {
                        busy_logged = true;
                        self.log("info", format!("waiting: {m}")).await?;
                    }
                    let since = *busy_since.get_or_insert_with(Instant::now);
                    if since.elapsed() >= BUSY_LIMIT {
                        let msg = format!(
                            "MT {} could not take the task for {}: {m}",
                            spec.target_host,
                            humantime::format_duration(BUSY_LIMIT)
                        );
                        return self
                            .fail(
                                "node_busy",
                                msg,
                                "see the MT's log (its replica may not open); start the job again when it is ready",
                            )
                            .await;
                    }
                }
                Asked::Refused(m) => {
                    return self
                        .fail("rejected", m, "correct the request and start the job again")
                        .await;
                }
                Asked::Unreachable(m) => {
                    let since = *unreachable_since.get_or_insert_with(Instant::now);
                    if cancel && since.elapsed() >= timeout {
                        self.log("warn", format!("the MT could not be told of the cancel for {} ({m}); if it still runs the task, its output is not this job's result", humantime::format_duration(timeout))).await?;
                        return self.finish(JobState::Cancelled, None, None).await;
                    }
                    if since.elapsed() >= timeout {
                        let msg = format!(
                            "lost contact with MT {} for {}: {m}; the job stopped {}",
                            spec.target_host,
                            humantime::format_duration(timeout),
                            self.at_pct()
                        );
                        return self
                            .fail(
                                "node_unreachable",
                                msg,
                                "bring the MT back (`tern host list` shows it) and start the job again",
                            )
                            .await;
                    }
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(POLL) => {}
                _ = self.live.cancel.notified() => {}
            }
        }
    }

    async fn ask(&self, addr: &str, path: &str, body: Option<&TaskRequest>) -> Asked {
        let url = format!("https://{addr}/data/v1/mt/{path}");
        let req = match body {
            Some(b) => self.s.client.post(url).json(b),
            None if path.ends_with("/cancel") => self.s.client.post(url),
            None => self.s.client.get(url),
        };
        let a = match crate::engine::transport::call(req.timeout(Duration::from_secs(10))).await {
            Ok(a) => a,
            Err(e) => return Asked::Unreachable(crate::util::source_chain(&e)),
        };
        match a.status {
            s if s.is_success() => match serde_json::from_value::<TaskStatus>(a.body) {
                Ok(st) => Asked::Status(st),
                Err(e) => Asked::Refused(format!("the MT answered what this CX cannot read: {e}")),
            },
            StatusCode::NOT_FOUND if body.is_none() => Asked::Unknown,
            // Busy, or the pair not open there yet (just restarted).
            StatusCode::SERVICE_UNAVAILABLE => Asked::Busy(a.error().to_owned()),
            StatusCode::NOT_FOUND => Asked::Unreachable(a.error().to_owned()),
            s if s.is_server_error() => {
                Asked::Unreachable(format!("HTTP {}: {}", s.as_u16(), a.error()))
            }
            _ => Asked::Refused(a.error().to_owned()),
        }
    }

    async fn progress(&mut self, st: &TaskStatus) -> anyhow::Result<()> {
        let now = Instant::now();
        self.samples.push_back((now, st.done));
        while self.samples.len() > 2
            && now.duration_since(self.samples[0].0) > Duration::from_secs(10)
        {
            self.samples.pop_front();
        }
        let (t0, d0) = self.samples[0];
        let dt = now.duration_since(t0).as_secs_f64();
        let rate = (dt >= 0.5 && st.done >= d0).then(|| (st.done - d0) as f64 / dt);
        let p = Progress {
            done_bytes: st.done,
            total_bytes: st.total,
            rate_bps: rate,
            eta_s: rate
                .filter(|r| *r > 0.0)
                .map(|r| st.total.saturating_sub(st.done) as f64 / r),
        };
        if self.live.rec.lock().unwrap().job.progress == p {
            return Ok(());
        }
        self.update(false, |j| j.progress = p).await
    }
}

/// Drop finished jobs past `cx.jobs_keep` (oldest first) or older than
/// `cx.jobs_max_age`; at most once a minute.
pub fn prune(s: &CxState) -> anyhow::Result<usize> {
    {
        let mut last = s.jobs.last_prune.lock().unwrap();
        if last.is_some_and(|t| t.elapsed() < Duration::from_secs(60)) {
            return Ok(0);
        }
        *last = Some(Instant::now());
    }
    let keep = s.cfg.cx.jobs_keep;
    let oldest = now_ms().saturating_sub(s.cfg.cx.jobs_max_age.0.as_millis() as u64);
    let finished: Vec<(String, u64)> = s
        .store
        .list::<JobRecord>(JOBS)?
        .into_iter()
        .filter_map(|(k, r)| r.finished_ms.map(|f| (k, f)))
        .collect();
    // Keys sort by id, oldest first.
    let excess = finished.len().saturating_sub(keep);
    let doomed: Vec<String> = finished
        .iter()
        .enumerate()
        .filter(|(i, (_, f))| *i < excess || *f < oldest)
        .map(|(_, (k, _))| k.clone())
        .collect();
    if doomed.is_empty() {
        return Ok(0);
    }
    s.store.update(|tx| -> Result<(), store::StoreError> {
        for k in &doomed {
            store::remove_in(tx, JOBS, k)?;
        }
        Ok(())
    })?;
    tracing::info!(removed = doomed.len(), "old jobs removed");
    Ok(doomed.len())
}
