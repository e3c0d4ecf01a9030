//! `tern mt …`: the master target's pairs, operated directly on its data
//! directory (until the workflows bring them behind the CX API).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, bail};
use clap::Subcommand;

use super::Global;
use crate::engine::journal::PointSpec;
use crate::engine::journal::policy::{self, OnFull, RetentionPolicy};
use crate::engine::journal::storage::FsStorage;
use crate::engine::journal::vsnap::{Vsnap, VsnapMode};
use crate::engine::nbd;
use crate::roles::mt::ReplicaPair;
use crate::util::{now_ms, rfc3339_ms};

#[derive(Subcommand, Debug)]
pub enum MtCmd {
    /// Create a replica pair (volume, journal, retention policy).
    PairCreate {
        pair: String,
        /// Volume size, e.g. 64MiB, 100GiB.
        #[arg(long, value_parser = crate::util::parse_size)]
        size: u64,
        /// Replica file or block device (default: inside the pair's directory).
        #[arg(long)]
        replica: Option<PathBuf>,
        /// Keep every point for this long, e.g. 24h, 7d.
        #[arg(long, value_parser = humantime::parse_duration)]
        retention: Option<std::time::Duration>,
        /// Journal space budget, e.g. 50GiB.
        #[arg(long, value_parser = crate::util::parse_size)]
        max_bytes: Option<u64>,
        /// When the space budget is reached: prune (drop oldest) or stop (stop applying).
        #[arg(long, default_value = "prune", value_parser = parse_on_full)]
        on_full: OnFull,
        /// Sparse tier, repeatable: `24h:every=4h` (one point per 4 h once
        /// older than 24 h) or `48h:bookmarks=app` (only app bookmarks; any|app|fs|user).
        #[arg(long, value_parser = parse_tier)]
        tier: Vec<policy::SparseTier>,
    },
    /// List the pairs on this MT.
    Pairs,
    /// Bookmarks (consistency points) of a pair.
    Bookmarks { pair: String },
    /// Write the image at a point to a file or device (a physical snapshot).
    Image {
        pair: String,
        /// latest | oldest | seq:N | tag:NAME | time:RFC3339
        #[arg(long, default_value = "latest")]
        at: PointSpec,
        #[arg(long, value_name = "FILE")]
        to: PathBuf,
        /// No progress bar.
        #[arg(long)]
        quiet: bool,
    },
    /// Serve a virtual snapshot over NBD until interrupted.
    Vsnap {
        pair: String,
        #[arg(long, default_value = "latest")]
        at: PointSpec,
        /// Writable: writes go to a private overlay, discarded at exit.
        #[arg(long)]
        rw: bool,
        /// Writable and remember written ranges (replayable).
        #[arg(long, conflicts_with = "rw")]
        rw_tracking: bool,
        /// Listen address, e.g. 127.0.0.1:10809.
        #[arg(long, value_name = "ADDR")]
        nbd: std::net::SocketAddr,
    },
    /// Retention report: policy vs available window, space, points.
    Retention { pair: String },
    /// Enforce the retention policy now.
    Prune { pair: String },
    /// Make the replica itself equal to a point (recovery). Points before it are consumed.
    Rollback {
        pair: String,
        #[arg(long)]
        at: PointSpec,
        /// Confirm: this rewrites the replica.
        #[arg(long)]
        yes: bool,
    },
}

fn parse_tier(s: &str) -> Result<policy::SparseTier, String> {
    let bad = || format!("`{s}`: use AFTER:every=DURATION or AFTER:bookmarks=any|app|fs|user");
    let (after, rule) = s.split_once(':').ok_or_else(bad)?;
    let after = humantime::parse_duration(after).map_err(|e| format!("{}: {e}", bad()))?;
    let (k, v) = rule.split_once('=').ok_or_else(bad)?;
    let t = match k {
        "every" => policy::SparseTier {
            after,
            every: Some(humantime::parse_duration(v).map_err(|e| format!("{}: {e}", bad()))?),
            bookmarks: None,
        },
        "bookmarks" => policy::SparseTier {
            after,
            every: None,
            bookmarks: Some(v.to_owned()),
        },
        _ => return Err(bad()),
    };
    RetentionPolicy {
        tiers: vec![t.clone()],
        ..Default::default()
    }
    .validate()?;
    Ok(t)
}

fn parse_on_full(s: &str) -> Result<OnFull, String> {
    match s {
        "prune" => Ok(OnFull::Prune),
        "stop" => Ok(OnFull::Stop),
        _ => Err(format!("`{s}`: use prune or stop")),
    }
}

fn data_dir(g: &Global) -> PathBuf {
    g.data
        .clone()
        .unwrap_or_else(|| PathBuf::from("./tern-data"))
}

fn t(us: u64) -> String {
    rfc3339_ms(us / 1000)
}

pub fn run(cmd: MtCmd, g: &Global) -> anyhow::Result<()> {
    let data = data_dir(g);
    match cmd {
        MtCmd::PairCreate {
            pair,
            size,
            replica,
            retention,
            max_bytes,
            on_full,
            tier,
        } => {
            let p = ReplicaPair::create(&data, &pair, size, replica, {
                let p = RetentionPolicy {
                    window: retention,
                    max_bytes,
                    on_full,
                    tiers: tier,
                };
                p.validate().map_err(anyhow::Error::msg)?;
                p
            })?;
            println!(
                "pair {pair}: {} bytes, replica {}",
                size,
                p.config.replica.display()
            );
            Ok(())
        }
        MtCmd::Pairs => {
            let listed = ReplicaPair::list(&data)?;
            if g.json {
                let v: Vec<serde_json::Value> = listed
                    .iter()
                    .map(|(name, c)| match c {
                        Ok(c) => serde_json::to_value(c).unwrap_or_default(),
                        Err(e) => serde_json::json!({"pair": name, "error": e}),
                    })
                    .collect();
                println!("{}", serde_json::to_string_pretty(&v)?);
                return Ok(());
            }
            let mut rows = vec![vec![
                "PAIR".into(),
                "SIZE".into(),
                "REPLICA".into(),
                "RETENTION".into(),
            ]];
            for (name, c) in listed {
                rows.push(match c {
                    Ok(p) => vec![
                        p.pair,
                        p.volume_size.to_string(),
                        p.replica.display().to_string(),
                        serde_json::to_string(&p.policy)?,
                    ],
                    Err(e) => vec![name, "-".into(), "-".into(), format!("error: {e}")],
                });
            }
            super::print_table(&rows);
            Ok(())
        }
        MtCmd::Bookmarks { pair } => {
            let p = ReplicaPair::open(&data, &pair)?;
            let bms = p.journal.bookmarks();
            if g.json {
                println!("{}", serde_json::to_string_pretty(&bms)?);
                return Ok(());
            }
            let mut rows = vec![vec![
                "SEQ".into(),
                "TIME".into(),
                "TYPE".into(),
                "NAME".into(),
            ]];
            for b in bms {
                rows.push(vec![
                    b.seq.to_string(),
                    t(b.ts_us),
                    b.kind.to_string(),
                    b.name,
                ]);
            }
            super::print_table(&rows);
            Ok(())
        }
        MtCmd::Image {
            pair,
            at,
            to,
            quiet,
        } => image(&data, &pair, &at, &to, quiet || g.json),
        MtCmd::Vsnap {
            pair,
            at,
            rw,
            rw_tracking,
            nbd,
        } => {
            let mode = if rw_tracking {
                VsnapMode::ReadWriteTracking
            } else if rw {
                VsnapMode::ReadWrite
            } else {
                VsnapMode::ReadOnly
            };
            vsnap(&data, &pair, &at, mode, nbd)
        }
        MtCmd::Retention { pair } => {
            let p = ReplicaPair::open(&data, &pair)?;
            let r = policy::report(&p.journal, &p.config.policy, now_ms() * 1000);
            if g.json {
                println!("{}", serde_json::to_string_pretty(&r)?);
                return Ok(());
            }
            let win = |s: Option<u64>| {
                s.map(|s| humantime::format_duration(std::time::Duration::from_secs(s)).to_string())
                    .unwrap_or_else(|| "-".into())
            };
            println!("pair:                 {pair}");
            println!("window policy:        {}", win(r.window_policy_s));
            println!(
                "window available:     {}{}",
                win(Some(r.window_available_s)),
                if r.window_shortfall {
                    " (SHORTFALL)"
                } else {
                    ""
                }
            );
            println!(
                "oldest point:         seq {} at {}",
                r.oldest.seq,
                t(r.oldest.ts_us)
            );
            println!(
                "latest point:         seq {} at {}",
                r.latest.seq,
                t(r.latest.ts_us)
            );
            println!(
                "space used:           {} bytes{}",
                r.space_used_bytes,
                r.space_limit_bytes
                    .map(|l| format!(" of {l} (on full: {:?})", r.policy.on_full).to_lowercase())
                    .unwrap_or_default()
            );
            println!("consistency points:   {}", r.consistency_points);
            println!("retention log resets: {}", r.retention_log_resets);
            Ok(())
        }
        MtCmd::Prune { pair } => {
            let p = ReplicaPair::open(&data, &pair)?;
            let held = policy::prune_all(&p.journal, &p.config.policy, now_ms() * 1000)?;
            let (o, _) = p.journal.window();
            println!(
                "pair {pair}: oldest point now seq {} at {}",
                o.seq,
                t(o.ts_us)
            );
            if let Some(h) = held {
                println!("pruning held at seq {h} by an open snapshot");
            }
            Ok(())
        }
        MtCmd::Rollback { pair, at, yes } => {
            if !yes {
                bail!(
                    "rollback rewrites the replica of pair {pair} and consumes every point before {at:?}; add --yes to go ahead (a vsnap recovers without that)"
                );
            }
            let p = ReplicaPair::open(&data, &pair)?;
            let pt = p.journal.rollback(&at)?;
            println!(
                "pair {pair}: replica {} now holds seq {} ({})",
                p.config.replica.display(),
                pt.seq,
                t(pt.ts_us)
            );
            Ok(())
        }
    }
}

/// Write the image at `at` to `to`, sparsely for regular files, with progress.
fn image(data: &Path, pair: &str, at: &PointSpec, to: &Path, quiet: bool) -> anyhow::Result<()> {
    let p = ReplicaPair::open(data, pair)?;
    let pin = p.journal.pin(at)?;
    let size = p.journal.volume_size();
    let bar = if quiet {
        indicatif::ProgressBar::hidden()
    } else {
        let b = indicatif::ProgressBar::new(size);
        b.set_style(
            indicatif::ProgressStyle::with_template(
                "{msg} [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
            )
            .unwrap()
            .progress_chars("=> "),
        );
        b.set_message(format!("pair {pair} seq {}", pin.point.seq));
        b
    };
    let hash = crate::roles::mt::write_image(&pin, to, |done, _| {
        bar.set_position(done);
        Ok(())
    })?;
    bar.finish_and_clear();
    println!(
        "pair {pair}: image at seq {} ({}) written to {}: {size} bytes, blake3 {hash}",
        pin.point.seq,
        t(pin.point.ts_us),
        to.display(),
    );
    Ok(())
}

fn vsnap(
    data: &Path,
    pair: &str,
    at: &PointSpec,
    mode: VsnapMode,
    addr: std::net::SocketAddr,
) -> anyhow::Result<()> {
    let p = ReplicaPair::open(data, pair)?;
    let overlay = (mode != VsnapMode::ReadOnly)
        .then(|| p.dir.join(format!("vsnap-{}.overlay", std::process::id())));
    let t0 = std::time::Instant::now();
    let v = Vsnap::create(&p.journal, at, mode, Arc::new(FsStorage), overlay)?;
    let created = t0.elapsed();
    let point = v.point();
    let v = Arc::new(v);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on {addr}"))?;
        let local = listener.local_addr()?;
        let mut exports: BTreeMap<String, Arc<dyn nbd::Export>> = BTreeMap::new();
        exports.insert(pair.to_owned(), v.clone());
        println!(
            "vsnap of pair {pair} at seq {} ({}), {:?}, created in {:.1} ms: nbd://{local}/{pair}",
            point.seq,
            t(point.ts_us),
            mode,
            created.as_secs_f64() * 1000.0
        );
        std::io::stdout().flush()?;
        let (trigger, sd) = crate::engine::shutdown::channel();
        tokio::spawn(async move {
            super::wait_for_signal().await;
            trigger.fire();
        });
        nbd::serve(listener, Arc::new(exports), sd).await;
        Ok::<_, anyhow::Error>(())
    })?;
    if mode == VsnapMode::ReadWriteTracking {
        println!("tracked writes: {} ranges", v.tracked().len());
    }
    drop(v);
    Ok(())
}
