//! `tern job list|show|watch|cancel`, and waiting for a job a command started.

use std::io::IsTerminal;

use anyhow::bail;
use clap::Subcommand;

use super::client::Api;
use super::{Global, print_table};
use crate::api::jobs::{Job, JobPage, JobState};

#[derive(Subcommand, Debug)]
pub enum JobCmd {
    /// Jobs, newest first.
    List {
        /// Only jobs in this state (queued, running, succeeded, failed, cancelled).
        #[arg(long)]
        state: Option<String>,
        /// Only jobs of this kind (image, hash).
        #[arg(long)]
        kind: Option<String>,
        /// Only jobs on this target, e.g. pair/big.
        #[arg(long)]
        target: Option<String>,
        /// At most this many (the CX's default when unset).
        #[arg(long)]
        limit: Option<usize>,
        /// Jobs older than this id (the `next` of the previous page).
        #[arg(long)]
        before: Option<u64>,
    },
    /// One job in full: progress, steps, log, result.
    Show { id: u64 },
    /// Follow a job until it ends (exit status 1 unless it succeeded).
    Watch { id: u64 },
    /// Ask a job to stop.
    Cancel { id: u64 },
}

pub async fn run(cmd: JobCmd, g: &Global) -> anyhow::Result<()> {
    let api = Api::resolve(g.cx.as_deref(), g.data.as_deref())?;
    match cmd {
        JobCmd::List {
            state,
            kind,
            target,
            limit,
            before,
        } => {
            let q = [
                ("state", state),
                ("kind", kind),
                ("target", target),
                ("limit", limit.map(|l| l.to_string())),
                ("before", before.map(|b| b.to_string())),
            ];
            let q: Vec<(&str, String)> = q
                .into_iter()
                .filter_map(|(k, v)| v.map(|v| (k, v)))
                .collect();
            let page: JobPage = api.get_query_as("/api/v1/jobs", &q).await?;
            if g.json {
                println!("{}", serde_json::to_string_pretty(&page)?);
                return Ok(());
            }
            let mut rows = vec![vec![
                "ID".into(),
                "KIND".into(),
                "TARGET".into(),
                "STATE".into(),
                "PROGRESS".into(),
                "ACTOR".into(),
                "CREATED".into(),
            ]];
            for j in &page.jobs {
                rows.push(vec![
                    j.id.to_string(),
                    j.kind.to_string(),
                    j.target.clone(),
                    j.state.to_string(),
                    pct(j),
                    j.actor.clone(),
                    j.created.clone(),
                ]);
            }
            print_table(&rows);
            if let Some(n) = page.next {
                println!("(more: --before {n})");
            }
        }
        JobCmd::Show { id } => {
            let j: Job = api.get_as(&format!("/api/v1/jobs/{id}")).await?;
            if g.json {
                println!("{}", serde_json::to_string_pretty(&j)?);
            } else {
                print_job(&j);
            }
        }
        JobCmd::Watch { id } => {
            let j = wait(&api, id, true).await?;
            end(&j, g)?;
        }
        JobCmd::Cancel { id } => {
            let j: Job = api
                .post_as(&format!("/api/v1/jobs/{id}/cancel"), &serde_json::json!({}))
                .await?;
            if g.json {
                println!("{}", serde_json::to_string_pretty(&j)?);
            } else {
                println!("job {id}: cancel requested (it was {})", j.state);
            }
        }
    }
    Ok(())
}

fn pct(j: &Job) -> String {
    let p = &j.progress;
    if p.total_bytes == 0 {
        return "-".into();
    }
    format!("{:.1}%", p.done_bytes as f64 * 100.0 / p.total_bytes as f64)
}

fn print_job(j: &Job) {
    println!("job {} ({}) on {}: {}", j.id, j.kind, j.target, j.state);
    println!("  started by {} at {}", j.actor, j.created);
    let p = &j.progress;
    if p.total_bytes > 0 {
        print!(
            "  progress {} of {} bytes ({})",
            p.done_bytes,
            p.total_bytes,
            pct(j)
        );
        if let Some(r) = p.rate_bps {
            print!(", {:.0} MB/s", r / 1e6);
        }
        if let Some(e) = p.eta_s {
            print!(", {:.0} s left", e);
        }
        println!();
    }
    for s in &j.steps {
        println!("  step: {} [{}]", s.name, s.state);
    }
    for l in &j.log {
        println!("  {} {:5} {}", l.time, l.level, l.message);
    }
    if let Some(r) = &j.result {
        println!(
            "  result: point seq {} ({}), {} bytes, blake3 {}",
            r.point.seq, r.point.time, r.size, r.blake3
        );
        if let Some(to) = &r.to {
            println!("  written to {} on the MT", to.display());
        }
    }
    if let Some(e) = &j.error {
        println!("  error [{}]: {}", e.code, e.message);
        println!("  what to do: {}", e.action);
    }
}

/// Follow job `id` until it ends; a progress bar when `bar` and stderr is
/// a terminal.
pub async fn wait(api: &Api, id: u64, bar: bool) -> anyhow::Result<Job> {
    let pb = (bar && std::io::stderr().is_terminal()).then(|| {
        let pb = indicatif::ProgressBar::new(0);
        pb.set_style(
            indicatif::ProgressStyle::with_template(
                "{msg} [{bar:40}] {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}",
            )
            .expect("valid template")
            .progress_chars("=> "),
        );
        pb.set_message(format!("job {id}"));
        pb
    });
    let mut rev = 0u64;
    loop {
        let j: Job = api
            .get_as(&format!("/api/v1/jobs/{id}?rev={rev}&wait_ms=20000"))
            .await?;
        rev = j.rev;
        if let Some(pb) = &pb {
            pb.set_length(j.progress.total_bytes);
            pb.set_position(j.progress.done_bytes);
            pb.set_message(format!("job {id} {}", j.state));
        }
        if j.state.is_final() {
            if let Some(pb) = pb {
                pb.finish_and_clear();
            }
            return Ok(j);
        }
    }
}

/// Print how a job ended; an error unless it succeeded.
pub fn end(j: &Job, g: &Global) -> anyhow::Result<()> {
    if g.json {
        println!("{}", serde_json::to_string_pretty(j)?);
    } else {
        print_job(j);
    }
    match (&j.state, &j.error) {
        (JobState::Succeeded, _) => Ok(()),
        (_, Some(e)) => bail!("job {} failed: {}; {}", j.id, e.message, e.action),
        (s, None) => bail!("job {} {s}", j.id),
    }
}

/// A command started job `j`: print its id, and follow it to its end when
/// `wait` or on a terminal.
pub async fn started(api: &Api, j: Job, wait_flag: bool, g: &Global) -> anyhow::Result<()> {
    if !(wait_flag || (std::io::stdout().is_terminal() && !g.json)) {
        if g.json {
            println!("{}", serde_json::to_string_pretty(&j)?);
        } else {
            println!(
                "job {} started ({} of {}); follow it with `tern job watch {}`",
                j.id, j.kind, j.target, j.id
            );
        }
        return Ok(());
    }
    if !g.json {
        eprintln!("job {} started ({} of {})", j.id, j.kind, j.target);
    }
    let done = wait(api, j.id, true).await?;
    end(&done, g)
}
