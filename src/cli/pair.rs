//! `tern pair …`, `tern bookmark …`, `tern agent volume …`: replication
//! control through the CX API.

use std::path::PathBuf;

use clap::Subcommand;
use serde_json::{Value, json};

use super::client::Api;
use super::{Global, print_table};
use crate::engine::control::{Capture, Compression};
use crate::engine::journal::format::BookmarkKind;

#[derive(Subcommand, Debug)]
pub enum PairCmd {
    /// Protect a volume: source agent volume → PS → MT replica.
    Create {
        /// Pair name.
        name: String,
        /// AGENTHOST:VOLUME (host name or id, volume as `tern agent volume list` shows).
        #[arg(long)]
        source: String,
        /// The process server (host name or id).
        #[arg(long)]
        ps: String,
        /// MTHOST or MTHOST:PATH (replica file or device on the MT; default: in its data dir).
        #[arg(long)]
        target: String,
        /// none, ps (zstd on the PS) or source (zstd on the agent).
        #[arg(long, default_value = "ps")]
        compression: Compression,
        /// zstd level.
        #[arg(long)]
        zstd_level: Option<i32>,
        /// Keep every point this long.
        #[arg(long, default_value = "24h")]
        retention: String,
        /// Journal space budget, e.g. 50GiB.
        #[arg(long, value_parser = crate::util::parse_size)]
        max_bytes: Option<u64>,
        /// At the journal's space limit (max_bytes, or its disk less
        /// mt.keep_free): `prune` drops the oldest points, `stop` stops
        /// taking changes (the agent keeps them) until space returns.
        #[arg(long, default_value = "prune", value_parser = ["prune", "stop"])]
        on_full: String,
        /// Alert when the RPO exceeds this.
        #[arg(long, default_value = "30m")]
        rpo_threshold: String,
        /// Bandwidth priority on the PS (higher first).
        #[arg(long)]
        priority: Option<u8>,
    },
    /// Pairs with state, progress, RPO and data in transit.
    List,
    /// One pair in full (JSON).
    Show {
        name: String,
    },
    /// Stop sending (changes are tracked in the bitmap).
    Pause {
        name: String,
    },
    Resume {
        name: String,
    },
    /// Start a full resync (fast: equal blocks are skipped).
    Resync {
        name: String,
    },
    /// Delete the pair (replica and journal stay on the MT's disk).
    Delete {
        name: String,
        #[arg(long)]
        yes: bool,
    },
    /// Recovery points: latest/oldest consistent point and bookmarks.
    Points {
        name: String,
    },
    /// Write the image at a point to a file or device on the MT host, as a
    /// job (`tern job …`).
    Image {
        name: String,
        /// latest, oldest, seq:N, tag:NAME, time:RFC3339
        #[arg(long, default_value = "latest")]
        at: String,
        /// Destination path on the MT host (absolute).
        #[arg(long)]
        to: PathBuf,
        /// Follow the job to its end (the default on a terminal).
        #[arg(long)]
        wait: bool,
    },
    /// BLAKE3 of the image at a point (computed on the MT), as a job.
    Hash {
        name: String,
        #[arg(long, default_value = "latest")]
        at: String,
        /// Follow the job to its end (the default on a terminal).
        #[arg(long)]
        wait: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum AgentCmd {
    /// Protected volumes on agents.
    #[command(subcommand)]
    Volume(VolumeCmd),
}

#[derive(Subcommand, Debug)]
pub enum VolumeCmd {
    /// Add a volume to an agent (served at once, survives restarts).
    Add {
        name: String,
        /// Backing file or block device.
        #[arg(long)]
        path: PathBuf,
        #[arg(long, default_value = "nbd")]
        capture: Capture,
        /// NBD listen address (capture nbd).
        #[arg(long)]
        listen: Option<String>,
        /// FUSE mount point (capture fuse).
        #[arg(long)]
        mount: Option<PathBuf>,
        /// Create the backing file with this size if missing.
        #[arg(long, value_parser = crate::util::parse_size)]
        size: Option<u64>,
        /// Mounted filesystem to freeze for `fs` bookmarks.
        #[arg(long)]
        fs_mount: Option<PathBuf>,
        /// The agent host (name or id); default: this node.
        #[arg(long)]
        host: Option<String>,
    },
    List,
}

#[derive(clap::Args, Debug)]
pub struct BookmarkArgs {
    /// Pair name.
    pub pair: String,
    #[arg(long)]
    pub name: String,
    /// user (a marker), fs (freeze the filesystem first), app (run hooks).
    #[arg(long = "type", default_value = "user", value_parser = parse_kind)]
    pub kind: BookmarkKind,
}

fn parse_kind(s: &str) -> Result<BookmarkKind, String> {
    match s {
        "user" => Ok(BookmarkKind::User),
        "fs" => Ok(BookmarkKind::Fs),
        "app" => Ok(BookmarkKind::App),
        _ => Err(format!("`{s}`: use user, fs or app")),
    }
}

fn show(g: &Global, v: &Value) {
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
    let _ = g;
}

fn bytes(n: u64) -> String {
    const U: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut f = n as f64;
    let mut i = 0;
    while f >= 1024.0 && i < 4 {
        f /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{n} B")
    } else {
        format!("{f:.1} {}", U[i])
    }
}

pub async fn pair(cmd: PairCmd, g: &Global) -> anyhow::Result<()> {
    let api = Api::resolve(g.cx.as_deref(), g.data.as_deref())?;
    match cmd {
        PairCmd::Create {
            name,
            source,
            ps,
            target,
            compression,
            zstd_level,
            retention,
            max_bytes,
            on_full,
            rpo_threshold,
            priority,
        } => {
            let v = api
                .post(
                    "/api/v1/pairs",
                    &json!({
                        "name": name, "source": source, "ps": ps, "target": target,
                        "compression": compression, "zstd_level": zstd_level,
                        "retention": retention, "max_bytes": max_bytes, "on_full": on_full,
                        "rpo_threshold": rpo_threshold, "priority": priority,
                    }),
                )
                .await?;
            if g.json {
                show(g, &v);
            } else {
                println!(
                    "pair {name} created ({} bytes); initial sync starts as soon as the agent hears of it. `tern pair list` shows progress.",
                    v["volume_size"]
                );
            }
        }
        PairCmd::List => {
            let v = api.get("/api/v1/pairs").await?;
            if g.json {
                println!("{}", serde_json::to_string_pretty(&v["pairs"])?);
                return Ok(());
            }
            let mut rows = vec![
                [
                    "PAIR",
                    "SOURCE",
                    "TARGET",
                    "STATE",
                    "RPO",
                    "AGENT",
                    "PS",
                    "MT",
                    "MOSTLY ON",
                    "LATEST POINT",
                ]
                .iter()
                .map(|s| s.to_string())
                .collect::<Vec<_>>(),
            ];
            for p in v["pairs"].as_array().into_iter().flatten() {
                let mut state = p["state"].as_str().unwrap_or("?").to_owned();
                if let Some(pct) = p["progress_pct"].as_f64() {
                    state = format!("{state} {pct:.0}%");
                }
                if p["flow_controlled"].as_bool() == Some(true) {
                    state.push_str(" (flow controlled)");
                }
                let rpo = p["rpo_s"]
                    .as_f64()
                    .map(|r| {
                        let ok = if p["rpo_ok"].as_bool() == Some(false) {
                            " !"
                        } else {
                            ""
                        };
                        format!("{r:.1}s{ok}")
                    })
                    .unwrap_or_else(|| "-".into());
                rows.push(vec![
                    p["name"].as_str().unwrap_or("").to_owned(),
                    p["source"].as_str().unwrap_or("").to_owned(),
                    p["target"].as_str().unwrap_or("").to_owned(),
                    state,
                    rpo,
                    bytes(p["transit_agent_bytes"].as_u64().unwrap_or(0)),
                    bytes(p["transit_ps_bytes"].as_u64().unwrap_or(0)),
                    bytes(p["transit_mt_bytes"].as_u64().unwrap_or(0)),
                    p["bottleneck"].as_str().unwrap_or("-").to_owned(),
                    p["latest_point"]["time"]
                        .as_str()
                        .map(|t| format!("{t} (seq {})", p["latest_point"]["seq"]))
                        .unwrap_or_else(|| "none yet".into()),
                ]);
                if let Some(why) = p["stopped"].as_str() {
                    rows.push(vec![String::new(), format!("  stopped: {why}")]);
                }
                for e in p["errors"].as_array().into_iter().flatten() {
                    if let Some(e) = e.as_str() {
                        rows.push(vec![String::new(), format!("  error: {e}")]);
                    }
                }
            }
            print_table(&rows);
        }
        PairCmd::Show { name } => {
            let v = api.get(&format!("/api/v1/pairs/{name}")).await?;
            show(g, &v);
        }
        PairCmd::Pause { name } => action(&name, "pause", g).await?,
        PairCmd::Resume { name } => action(&name, "resume", g).await?,
        PairCmd::Resync { name } => action(&name, "resync", g).await?,
        PairCmd::Delete { name, yes } => {
            if !yes {
                anyhow::bail!(
                    "deleting pair {name} stops its replication; the replica and journal stay on the MT. Add --yes to confirm"
                );
            }
            let v = api.delete(&format!("/api/v1/pairs/{name}")).await?;
            if g.json {
                show(g, &v);
            } else {
                println!("pair {name} deleted");
            }
        }
        PairCmd::Points { name } => {
            let v = api.get(&format!("/api/v1/pairs/{name}/points")).await?;
            if g.json {
                show(g, &v);
            } else {
                let p = |k: &str| {
                    v[k]["time"]
                        .as_str()
                        .map(|t| format!("{t} (seq {})", v[k]["seq"]))
                        .unwrap_or_else(|| "none (still in initial sync?)".into())
                };
                println!("latest consistent point: {}", p("latest"));
                println!("oldest point:            {}", p("oldest"));
                for b in v["bookmarks"].as_array().into_iter().flatten() {
                    println!(
                        "bookmark {} [{}] seq {}",
                        b["name"].as_str().unwrap_or(""),
                        b["kind"].as_str().unwrap_or(""),
                        b["seq"]
                    );
                }
            }
        }
        PairCmd::Image { name, at, to, wait } => {
            let j: crate::api::jobs::Job = api
                .post_as(
                    &format!("/api/v1/pairs/{name}/image"),
                    &crate::api::jobs::ImageRequest { at: Some(at), to },
                )
                .await?;
            super::job::started(&api, j, wait, g).await?;
        }
        PairCmd::Hash { name, at, wait } => {
            let j: crate::api::jobs::Job = api
                .post_as(
                    &format!("/api/v1/pairs/{name}/hash"),
                    &crate::api::jobs::HashRequest { at: Some(at) },
                )
                .await?;
            super::job::started(&api, j, wait, g).await?;
        }
    }
    Ok(())
}

/// pause / resume / resync
async fn action(name: &str, action: &str, g: &Global) -> anyhow::Result<()> {
    let api = Api::resolve(g.cx.as_deref(), g.data.as_deref())?;
    let v = api
        .post(&format!("/api/v1/pairs/{name}/{action}"), &json!({}))
        .await?;
    if g.json {
        show(g, &v);
    } else {
        println!("pair {name}: {action} requested");
    }
    Ok(())
}

pub async fn bookmark(a: BookmarkArgs, g: &Global) -> anyhow::Result<()> {
    let api = Api::resolve(g.cx.as_deref(), g.data.as_deref())?;
    let v = api
        .post(
            &format!("/api/v1/pairs/{}/bookmark", a.pair),
            &json!({"name": a.name, "kind": a.kind}),
        )
        .await?;
    if g.json {
        show(g, &v);
    } else {
        println!(
            "pair {}: {} bookmark `{}` at seq {}",
            a.pair, a.kind, a.name, v["seq"]
        );
    }
    Ok(())
}

pub async fn agent(cmd: AgentCmd, g: &Global) -> anyhow::Result<()> {
    let api = Api::resolve(g.cx.as_deref(), g.data.as_deref())?;
    match cmd {
        AgentCmd::Volume(VolumeCmd::Add {
            name,
            path,
            capture,
            listen,
            mount,
            size,
            fs_mount,
            host,
        }) => {
            let host = match host {
                Some(h) => h,
                None => {
                    let d = g
                        .data
                        .clone()
                        .unwrap_or_else(|| PathBuf::from("./tern-data"));
                    crate::engine::pki::Identity::load(&crate::roles::cx::pki_dir(&d))
                        .map(|i| i.info.host_id)
                        .map_err(|_| {
                            anyhow::anyhow!(
                                "no node identity in {}: pass --host AGENT (name or id) or --data DIR of the agent",
                                d.display()
                            )
                        })?
                }
            };
            let path = std::path::absolute(&path)?;
            let v = api
                .post(
                    "/api/v1/volumes",
                    &json!({
                        "host": host, "name": name, "path": path, "capture": capture,
                        "listen": listen, "mount": mount, "size": size, "fs_mount": fs_mount,
                    }),
                )
                .await?;
            if g.json {
                show(g, &v);
            } else {
                println!(
                    "volume {name} added; the agent serves it within a second (`tern agent volume list`)"
                );
            }
        }
        AgentCmd::Volume(VolumeCmd::List) => {
            let v = api.get("/api/v1/volumes").await?;
            if g.json {
                println!("{}", serde_json::to_string_pretty(&v["volumes"])?);
                return Ok(());
            }
            let mut rows = vec![
                ["HOST", "VOLUME", "CAPTURE", "SIZE", "EXPORT", "PATH"]
                    .iter()
                    .map(|s| s.to_string())
                    .collect::<Vec<_>>(),
            ];
            for x in v["volumes"].as_array().into_iter().flatten() {
                rows.push(vec![
                    x["host"].as_str().unwrap_or("").to_owned(),
                    x["name"].as_str().unwrap_or("").to_owned(),
                    x["capture"].as_str().unwrap_or("").to_owned(),
                    bytes(x["size"].as_u64().unwrap_or(0)),
                    x["export"]
                        .as_str()
                        .map(str::to_owned)
                        .or_else(|| x["error"].as_str().map(|e| format!("({e})")))
                        .unwrap_or_else(|| "-".into()),
                    x["path"].as_str().unwrap_or("").to_owned(),
                ]);
            }
            print_table(&rows);
        }
    }
    Ok(())
}
