//! The CX API with a full store: 1,000 pairs and 10,000 jobs.
//!
//! `cargo bench --bench api [PAIRS JOBS]` bootstraps a CX, fills its store
//! (stopped) with pairs and finished jobs, starts it again and times, over
//! the typed client the CLI uses, `pair list`, `pair show`, `job list`
//! (newest page, a filtered page, a page deep in the past) and `job show`.
//! It prints p50 and p99 of each; the goal is p99 ≤ 50 ms.

use std::path::Path;
use std::time::{Duration, Instant};

#[path = "../tests/util/mod.rs"]
mod util;
use util::{Daemon, free_port, wait_file, write};

use tern::api::jobs::{Job, JobKind, JobPage, JobParams, JobState, Progress, TaskResult};
use tern::engine::control::{Compression, PairSpec, PointRef};
use tern::engine::store::{JOBS, META, PAIRS, Store, put_in};
use tern::roles::cx::jobs::{JobRecord, key};

fn fill(data: &Path, pairs: usize, jobs: u64) {
    let store = Store::open(data).unwrap();
    let now = tern::util::now_ms();
    store
        .update(|tx| -> Result<(), tern::engine::store::StoreError> {
            for i in 0..pairs {
                let name = format!("p{i:04}");
                let p = PairSpec {
                    name: name.clone(),
                    uuid: format!("{i:032x}"),
                    source_host: "h-agent".into(),
                    source_volume: name.clone(),
                    ps_host: "h-ps".into(),
                    ps_addr: None,
                    target_host: "h-mt".into(),
                    target_addr: None,
                    target_path: None,
                    volume_size: 64 << 30,
                    compression: Compression::Ps,
                    zstd_level: 1,
                    retention: Default::default(),
                    rpo_threshold_s: 1800,
                    priority: 0,
                    paused: false,
                    resync_gen: 0,
                    created_ms: now,
                };
                put_in(tx, PAIRS, &name, &p)?;
            }
            for id in 1..=jobs {
                let pair = format!("p{:04}", id as usize % pairs);
                let state = match id % 10 {
                    0 => JobState::Failed,
                    1 => JobState::Cancelled,
                    _ => JobState::Succeeded,
                };
                let t = tern::util::rfc3339_ms(now);
                let rec = JobRecord {
                    job: Job {
                        id,
                        kind: if id % 2 == 0 {
                            JobKind::Image
                        } else {
                            JobKind::Hash
                        },
                        target: format!("pair/{pair}"),
                        actor: "admin".into(),
                        state,
                        created: t.clone(),
                        started: Some(t.clone()),
                        finished: Some(t.clone()),
                        progress: Progress {
                            done_bytes: 64 << 30,
                            total_bytes: 64 << 30,
                            rate_bps: None,
                            eta_s: None,
                        },
                        params: JobParams {
                            pair,
                            at: "latest".into(),
                            to: None,
                        },
                        steps: vec![],
                        log: vec![],
                        result: (state == JobState::Succeeded).then(|| TaskResult {
                            point: PointRef {
                                seq: id,
                                ts_us: now * 1000,
                                time: t.clone(),
                            },
                            blake3: "0".repeat(64),
                            size: 64 << 30,
                            to: None,
                        }),
                        error: None,
                        cancel_requested: false,
                        attempts: 1,
                        rev: 3,
                    },
                    task_id: format!("t{id}"),
                    pair_uuid: String::new(),
                    created_ms: now,
                    finished_ms: Some(now),
                    task_started_ms: Some(now),
                };
                put_in(tx, JOBS, &key(id), &rec)?;
            }
            put_in(tx, META, "job_seq", &jobs)?;
            Ok(())
        })
        .unwrap();
}

fn pct(v: &mut [Duration], p: f64) -> f64 {
    v.sort();
    let i = ((v.len() as f64 * p).ceil() as usize).clamp(1, v.len()) - 1;
    v[i].as_secs_f64() * 1000.0
}

fn main() {
    let args: Vec<u64> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let pairs = args.first().copied().unwrap_or(1000) as usize;
    let jobs = args.get(1).copied().unwrap_or(10_000);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let data = dir.join("cx-data");
    let cfg = dir.join("cx.toml");
    write(
        &cfg,
        &format!(
            "data_dir = \"{}\"\nroles = [\"cx\"]\n[log]\nlevel = \"warn\"\n[cx]\napi_listen = \"127.0.0.1:{}\"\n",
            data.display(),
            free_port()
        ),
    );
    let args = ["serve", "--config", cfg.to_str().unwrap()];
    let mut cx = Daemon::spawn(dir, "cx", &args);
    wait_file(&data.join("cx.url"), 30, &cx);
    cx.terminate();
    let t = Instant::now();
    fill(&data, pairs, jobs);
    println!(
        "api: store filled with {pairs} pairs and {jobs} jobs in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    std::fs::remove_file(data.join("cx.url")).unwrap();
    let cx = Daemon::spawn(dir, "cx-2", &args);
    wait_file(&data.join("cx.url"), 60, &cx);

    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let api = tern::cli::client::Api::resolve(None, Some(&data)).unwrap();
        let mid = jobs / 2;
        let cases: Vec<(&str, String)> = vec![
            ("pair list", "/api/v1/pairs".into()),
            ("pair show", format!("/api/v1/pairs/p{:04}", pairs / 2)),
            ("job list (newest 50)", "/api/v1/jobs".into()),
            ("job list --state failed", "/api/v1/jobs?state=failed".into()),
            ("job list --before N/2", format!("/api/v1/jobs?before={mid}")),
            ("job show", format!("/api/v1/jobs/{mid}")),
        ];
        // Warm up (TLS session, caches), and check the answers.
        let page: JobPage = api.get_as("/api/v1/jobs").await.unwrap();
        assert_eq!(page.jobs.len(), 50);
        assert_eq!(page.jobs[0].id, jobs);
        let v = api.get("/api/v1/pairs").await.unwrap();
        assert_eq!(v["pairs"].as_array().unwrap().len(), pairs);
        println!(
            "api: pair list answer: {} bytes of JSON for {pairs} pairs",
            serde_json::to_vec(&v).unwrap().len()
        );
        for (what, path) in &cases {
            let mut times = Vec::new();
            for _ in 0..200 {
                let t = Instant::now();
                api.get(path).await.unwrap();
                times.push(t.elapsed());
            }
            println!(
                "api: {what:<26} p50 {:6.2} ms  p90 {:6.2} ms  p99 {:6.2} ms  max {:6.2} ms  (goal p99 <= 50 ms; {pairs} pairs, {jobs} jobs)",
                pct(&mut times, 0.50),
                pct(&mut times, 0.90),
                pct(&mut times, 0.99),
                pct(&mut times, 1.0)
            );
        }
    });
    drop(cx);
}
