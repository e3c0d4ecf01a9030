//! The `tern` command line. Server commands start roles in this process;
//! client commands call the CX REST API (see [`client`]).
//!
//! `--cx`, `--data`, `--json` and `--log-json` are global: accepted before or
//! after the subcommand.

pub mod client;
pub mod debug;
pub mod enroll;
pub mod job;
pub mod monitor;
pub mod mt;
pub mod pair;
pub mod users;

use std::path::{Path, PathBuf};

use anyhow::{Context, anyhow, bail};
use clap::{Args, Parser, Subcommand};

use crate::config::{Config, LogFormat, Role};
use crate::engine::shutdown;
use client::Api;

#[derive(Parser, Debug)]
#[command(name = "tern", version, about = "Tern: continuous data protection and disaster recovery", long_about = None)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub cmd: Command,
}

#[derive(Args, Debug, Clone)]
pub struct Global {
    /// URL of the configuration server (CX) for client commands.
    #[arg(long, global = true, env = "TERN_CX", value_name = "URL")]
    pub cx: Option<String>,
    /// Data directory: where `up`/`enroll` keep state; for client commands on the
    /// CX host, where the CA, the CX URL and the admin CLI token are read from.
    #[arg(long, global = true, value_name = "DIR")]
    pub data: Option<PathBuf>,
    /// Print listings as JSON.
    #[arg(long, global = true)]
    pub json: bool,
    /// Log as JSON lines instead of human-readable text.
    #[arg(long, global = true)]
    pub log_json: bool,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run roles in this process from a config file.
    Serve {
        /// Comma-separated roles: cx, ps, mt, agent (default: the config's `roles`).
        #[arg(long, value_delimiter = ',', value_name = "ROLES")]
        role: Vec<Role>,
        /// TOML configuration (see configs/).
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Run cx+ps+mt+agent on this host with embedded defaults.
    Up {
        /// Optional config; its roles are ignored (up runs all four).
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// Override cx.api_listen (default 0.0.0.0:8443).
        #[arg(long, value_name = "ADDR")]
        api_listen: Option<std::net::SocketAddr>,
        /// Override node.data_listen (default 0.0.0.0:9443).
        #[arg(long, value_name = "ADDR")]
        data_listen: Option<std::net::SocketAddr>,
        /// Also create a demo volume (NBD on 127.0.0.1:10809), a pair
        /// protecting it, and a workload writing to it.
        #[arg(long)]
        demo: bool,
    },
    /// Write a workload to an NBD export (e.g. an agent's volume).
    Workload {
        /// nbd://HOST:PORT/EXPORT
        #[arg(long)]
        nbd: String,
        /// Target rate, e.g. 20MB/s (0 = unlimited).
        #[arg(long, default_value = "20MB/s")]
        rate: String,
        /// How long, e.g. 60s (default: until Ctrl-C).
        #[arg(long)]
        duration: Option<humantime::Duration>,
        /// Block sizes, e.g. 4k..1M.
        #[arg(long, default_value = "4k..1M")]
        block: String,
        /// Fraction of each block that compresses away, 0..1.
        #[arg(long, default_value_t = 0.5)]
        compressibility: f64,
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
    /// Configuration files.
    #[command(subcommand)]
    Config(ConfigCmd),
    /// Join this node (PS, MT or agent) to a CX with a one-time token.
    Enroll(enroll::EnrollArgs),
    /// Enrollment tokens: create, list, revoke.
    #[command(subcommand)]
    Token(users::TokenCmd),
    /// Users and roles (admin, operator, monitor).
    #[command(subcommand)]
    User(users::UserCmd),
    /// Change your own password.
    Passwd {
        #[arg(long, value_name = "FILE")]
        old_password_file: Option<PathBuf>,
        #[arg(long, value_name = "FILE")]
        new_password_file: Option<PathBuf>,
    },
    /// API tokens of your user, for scripts and integrations.
    #[command(subcommand)]
    ApiToken(users::ApiTokenCmd),
    /// The audit log of state-changing calls (admins).
    Audit(users::AuditArgs),
    /// Log in to a CX and save a token for client commands.
    Login {
        #[arg(long, default_value = "admin")]
        user: String,
        /// Read the password from this file (else TERN_PASSWORD, else a prompt).
        #[arg(long, value_name = "FILE")]
        password_file: Option<PathBuf>,
        /// Expected CA fingerprint (as shown on the CX); refuse on mismatch.
        #[arg(long, value_name = "SHA256")]
        ca_fingerprint: Option<String>,
    },
    /// Revoke and forget the saved login.
    Logout,
    /// Hosts registered with the CX.
    #[command(subcommand)]
    Host(HostCmd),
    /// Health of the CX (no login needed).
    Health,
    /// Master target: replica pairs, bookmarks, images, vsnaps, retention.
    #[command(subcommand)]
    Mt(mt::MtCmd),
    /// Replication pairs: create, list, pause, resume, resync, points, images.
    #[command(subcommand)]
    Pair(pair::PairCmd),
    /// Long operations (images, hashes): list, show, watch, cancel.
    #[command(subcommand)]
    Job(job::JobCmd),
    /// Insert a bookmark (consistency point) into a pair's stream.
    Bookmark(pair::BookmarkArgs),
    /// Agent volumes.
    #[command(subcommand)]
    Agent(pair::AgentCmd),
    /// Trends (day/week/month/year): fetch as text, CSV or JSON.
    #[command(subcommand)]
    Trends(monitor::TrendsCmd),
    /// Alerts and where they are sent (SNMP traps, e-mail).
    #[command(subcommand)]
    Alert(monitor::AlertCmd),
    /// Reports: the per-volume daily health report.
    #[command(subcommand)]
    Report(monitor::ReportCmd),
    /// Test helpers (hidden).
    #[command(subcommand, hide = true)]
    Debug(debug::DebugCmd),
}

#[derive(Subcommand, Debug)]
pub enum ConfigCmd {
    /// Parse a config file; report the first bad field with file and line.
    Check { file: PathBuf },
    /// Print the defaults as TOML.
    Defaults,
}

#[derive(Subcommand, Debug)]
pub enum HostCmd {
    /// List hosts, their roles, version and heartbeat state.
    List,
}

/// `a: b: c` — the whole cause chain on one line, as `tern: …` prints it.
pub use crate::util::error_chain;

pub fn reqwest_chain(e: &reqwest::Error) -> String {
    crate::util::source_chain(e)
}

fn init_logging(format: LogFormat, level: &str) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let _ = match format {
        LogFormat::Json => b.json().try_init(),
        LogFormat::Human => b.try_init(),
    };
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

pub fn main(cli: Cli) -> anyhow::Result<()> {
    let g = cli.global;
    match cli.cmd {
        Command::Config(ConfigCmd::Check { file }) => {
            Config::load(&file)?;
            println!("{}: ok", file.display());
            Ok(())
        }
        Command::Config(ConfigCmd::Defaults) => {
            print!("{}", toml::to_string_pretty(&Config::default())?);
            Ok(())
        }
        Command::Serve { role, config } => {
            let cfg = Config::load(&config)?;
            let roles = if role.is_empty() {
                cfg.roles.clone()
            } else {
                role
            };
            serve(cfg, roles, &g, false)
        }
        Command::Up {
            config,
            api_listen,
            data_listen,
            demo,
        } => {
            let mut cfg = match &config {
                Some(p) => Config::load(p)?,
                None => Config::default(),
            };
            if let Some(d) = &g.data {
                cfg.data_dir = d.clone();
            }
            if let Some(a) = api_listen {
                cfg.cx.api_listen = a;
            }
            if let Some(a) = data_listen {
                cfg.node.data_listen = a;
            }
            if demo && !cfg.agent.volumes.iter().any(|v| v.name == "demo") {
                cfg.agent.volumes.push(crate::engine::control::VolumeSpec {
                    name: "demo".into(),
                    path: std::path::absolute(cfg.data_dir.join("agent").join("demo.img"))?,
                    capture: crate::engine::control::Capture::Nbd,
                    listen: Some(DEMO_NBD.into()),
                    mount: None,
                    size: Some(256 << 20),
                    fs_mount: None,
                    app_pre: None,
                    app_post: None,
                });
            }
            serve_opts(
                cfg,
                vec![Role::Cx, Role::Ps, Role::Mt, Role::Agent],
                &g,
                true,
                demo,
            )
        }
        Command::Workload {
            nbd,
            rate,
            duration,
            block,
            compressibility,
            seed,
        } => {
            let rate = crate::util::parse_rate(&rate).map_err(|e| anyhow!(e))?;
            let (block_min, block_max) =
                crate::engine::workload::parse_blocks(&block).map_err(|e| anyhow!(e))?;
            let w = crate::engine::workload::Workload {
                url: nbd,
                rate,
                duration: duration.map(Into::into),
                block_min,
                block_max,
                compressibility,
                seed,
            };
            runtime()?.block_on(async move {
                let (trigger, sd) = shutdown::channel();
                tokio::spawn(async move {
                    wait_for_signal().await;
                    trigger.fire();
                });
                let json = g.json;
                let st = crate::engine::workload::run(&w, sd, |s| {
                    if !json {
                        eprintln!(
                            "{:>5.0}s  {} writes  {:.1} MiB  {:.1} MB/s",
                            s.elapsed.as_secs_f64(),
                            s.writes,
                            s.bytes as f64 / 1048576.0,
                            s.bytes as f64 / s.elapsed.as_secs_f64().max(1e-9) / 1e6
                        );
                    }
                })
                .await
                .with_context(|| format!("workload on {}", w.url))?;
                let mbps = st.bytes as f64 / st.elapsed.as_secs_f64().max(1e-9) / 1e6;
                if json {
                    println!(
                        "{}",
                        serde_json::json!({"writes": st.writes, "bytes": st.bytes,
                            "seconds": st.elapsed.as_secs_f64(), "mb_per_s": mbps})
                    );
                } else {
                    println!(
                        "workload done: {} writes, {} bytes in {:.1}s ({mbps:.1} MB/s)",
                        st.writes,
                        st.bytes,
                        st.elapsed.as_secs_f64()
                    );
                }
                Ok(())
            })
        }
        Command::Enroll(args) => runtime()?.block_on(enroll::run(args, &g)),
        Command::Token(cmd) => runtime()?.block_on(users::enrollment_token(cmd, &g)),
        Command::User(cmd) => runtime()?.block_on(users::user(cmd, &g)),
        Command::ApiToken(cmd) => runtime()?.block_on(users::api_token(cmd, &g)),
        Command::Passwd {
            old_password_file,
            new_password_file,
        } => runtime()?.block_on(users::passwd(&g, old_password_file, new_password_file)),
        Command::Audit(a) => runtime()?.block_on(users::audit(a, &g)),
        Command::Login {
            user,
            password_file,
            ca_fingerprint,
        } => runtime()?.block_on(enroll::login(&g, user, password_file, ca_fingerprint)),
        Command::Logout => runtime()?.block_on(async {
            if let Ok(api) = Api::resolve(g.cx.as_deref(), g.data.as_deref()) {
                let _ = api.post("/api/v1/logout", &serde_json::json!({})).await;
            }
            let p = client::login_file();
            if p.exists() {
                std::fs::remove_file(&p)?;
                println!("logged out ({} removed)", p.display());
            }
            Ok(())
        }),
        Command::Host(HostCmd::List) => runtime()?.block_on(async {
            let api = Api::resolve(g.cx.as_deref(), g.data.as_deref())?;
            let v = api.get("/api/v1/hosts").await?;
            if g.json {
                println!("{}", serde_json::to_string_pretty(&v["hosts"])?);
                return Ok(());
            }
            let mut rows = vec![vec![
                "HOST ID".to_owned(),
                "NAME".into(),
                "ROLES".into(),
                "VERSION".into(),
                "LAST HEARTBEAT".into(),
                "STATUS".into(),
            ]];
            for h in v["hosts"].as_array().into_iter().flatten() {
                let roles: Vec<&str> = h["roles"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|r| r.as_str())
                    .collect();
                let age = h["heartbeat_age_s"]
                    .as_f64()
                    .map(|a| format!("{a:.0}s ago"))
                    .unwrap_or_else(|| "never".into());
                rows.push(vec![
                    h["host_id"].as_str().unwrap_or("").to_owned(),
                    h["name"].as_str().unwrap_or("").to_owned(),
                    roles.join(","),
                    h["version"].as_str().unwrap_or("-").to_owned(),
                    age,
                    if h["overdue"].as_bool().unwrap_or(true) {
                        "OVERDUE".into()
                    } else {
                        "ok".into()
                    },
                ]);
            }
            print_table(&rows);
            Ok(())
        }),
        Command::Debug(cmd) => debug::run(cmd),
        Command::Pair(cmd) => runtime()?.block_on(pair::pair(cmd, &g)),
        Command::Job(cmd) => runtime()?.block_on(job::run(cmd, &g)),
        Command::Bookmark(a) => runtime()?.block_on(pair::bookmark(a, &g)),
        Command::Agent(cmd) => runtime()?.block_on(pair::agent(cmd, &g)),
        Command::Trends(cmd) => runtime()?.block_on(monitor::trends(cmd, &g)),
        Command::Alert(cmd) => runtime()?.block_on(monitor::alert(cmd, &g)),
        Command::Report(cmd) => runtime()?.block_on(monitor::report(cmd, &g)),
        Command::Mt(cmd) => mt::run(cmd, &g),
        Command::Health => runtime()?.block_on(async {
            let api = Api::resolve(g.cx.as_deref(), g.data.as_deref())?;
            let v = api.get("/api/v1/health").await?;
            if g.json {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                println!(
                    "{} {} roles={} up {}s",
                    v["status"].as_str().unwrap_or("?"),
                    v["version"].as_str().unwrap_or("?"),
                    v["roles"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|r| r.as_str())
                        .collect::<Vec<_>>()
                        .join(","),
                    v["uptime_s"]
                );
            }
            Ok(())
        }),
    }
}

pub fn print_table(rows: &[Vec<String>]) {
    let cols = rows.iter().map(|r| r.len()).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|c| {
            rows.iter()
                .map(|r| r.get(c).map_or(0, |s| s.len()))
                .max()
                .unwrap_or(0)
        })
        .collect();
    for r in rows {
        let line: Vec<String> = r
            .iter()
            .enumerate()
            .map(|(i, s)| format!("{:w$}", s, w = widths[i]))
            .collect();
        println!("{}", line.join("  ").trim_end());
    }
}

const DEMO_NBD: &str = "127.0.0.1:10809";

fn serve(cfg: Config, roles: Vec<Role>, g: &Global, banner: bool) -> anyhow::Result<()> {
    serve_opts(cfg, roles, g, banner, false)
}

/// The demo: a pair protecting the demo volume, and a workload writing to it.
async fn demo(data_dir: PathBuf, host_id: String, mut sd: shutdown::Shutdown) {
    let api = loop {
        match Api::resolve(None, Some(&data_dir)) {
            Ok(a) => break a,
            Err(_) => tokio::time::sleep(std::time::Duration::from_millis(200)).await,
        }
    };
    let body = serde_json::json!({
        "name": "demo", "source": format!("{host_id}:demo"), "ps": host_id, "target": host_id,
        "retention": "2h",
    });
    loop {
        match api.post("/api/v1/pairs", &body).await {
            Ok(_) => {
                tracing::info!("demo: pair `demo` created");
                break;
            }
            Err(e) if e.to_string().contains("already exists") => break,
            Err(_) => {}
        }
        tokio::select! {
            _ = tokio::time::sleep(std::time::Duration::from_millis(500)) => {}
            _ = sd.wait() => return,
        }
    }
    let w = crate::engine::workload::Workload {
        url: format!("nbd://{DEMO_NBD}/demo"),
        rate: 4_000_000,
        duration: None,
        block_min: 4096,
        block_max: 256 << 10,
        compressibility: 0.5,
        seed: crate::util::now_ms(),
    };
    tracing::info!(url = %w.url, rate = "4 MB/s", "demo: workload writing to the demo volume");
    while !sd.is_fired() {
        if let Err(e) = crate::engine::workload::run(&w, sd.clone(), |_| {}).await {
            tracing::debug!(error = %e, "demo workload restarting");
            tokio::select! {
                _ = tokio::time::sleep(std::time::Duration::from_secs(2)) => {}
                _ = sd.wait() => return,
            }
        }
    }
}

fn serve_opts(
    mut cfg: Config,
    roles: Vec<Role>,
    g: &Global,
    banner: bool,
    with_demo: bool,
) -> anyhow::Result<()> {
    if g.log_json {
        cfg.log.format = LogFormat::Json;
    }
    init_logging(cfg.log.format, &cfg.log.level);
    let rt = runtime()?;
    rt.block_on(async move {
        let (trigger, _) = shutdown::channel();
        let t = trigger.clone();
        tokio::spawn(async move {
            wait_for_signal().await;
            t.fire();
        });
        let data_dir = cfg.data_dir.clone();
        let (node, tasks) = crate::roles::start(cfg, roles.clone(), &trigger)
            .await
            .context("cannot start")?;
        if banner {
            print_banner(&data_dir, &node, &roles);
        }
        if with_demo {
            println!(
                "  demo:            volume nbd://{DEMO_NBD}/demo, pair `demo`, a 4 MB/s workload; watch it with `tern --data {} pair list`",
                data_dir.display()
            );
            tokio::spawn(demo(
                data_dir.clone(),
                node.host_id.clone(),
                trigger.subscribe(),
            ));
        }
        crate::roles::node::wait_and_stop(&trigger, tasks, &roles).await;
        tracing::info!("tern stopped");
        Ok::<_, anyhow::Error>(())
    })?;
    // Don't wait for blocking tasks that may still be parked.
    rt.shutdown_timeout(std::time::Duration::from_millis(500));
    Ok(())
}

fn print_banner(data_dir: &Path, node: &crate::roles::RunningNode, roles: &[Role]) {
    let roles: Vec<&str> = roles.iter().map(|r| r.as_str()).collect();
    println!("Tern {} is up: roles {}", crate::VERSION, roles.join(", "));
    if let Some(a) = node.api_addr {
        let host = if a.ip().is_unspecified() {
            "127.0.0.1".to_owned()
        } else {
            a.ip().to_string()
        };
        println!("  UI and API:      https://{host}:{}/", a.port());
    }
    if let Some(a) = node.data_addr {
        println!("  replication:     {a} (HTTPS, mutual TLS)");
    }
    let pw = data_dir.join("admin-password");
    if node.admin_password_file.is_some() {
        println!(
            "  admin password:  {} (user admin; created now)",
            pw.display()
        );
    } else {
        println!("  admin password:  {} (user admin)", pw.display());
    }
    println!(
        "  CA certificate:  {}",
        data_dir.join("pki/ca.crt").display()
    );
    println!(
        "  try:             tern --data {} host list",
        data_dir.display()
    );
    println!("Stop with Ctrl-C (or SIGTERM).");
}

pub(crate) async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = int.recv() => tracing::info!("SIGINT received"),
    }
}

/// Read a config if given, else defaults with `--data` applied.
pub fn config_or_default(config: Option<&Path>, data: Option<&Path>) -> anyhow::Result<Config> {
    let mut cfg = match config {
        Some(p) => Config::load(p)?,
        None => Config::default(),
    };
    if let Some(d) = data {
        if config.is_some() && d != cfg.data_dir {
            bail!(
                "--data {} disagrees with data_dir {} in the config; give one of them",
                d.display(),
                cfg.data_dir.display()
            );
        }
        cfg.data_dir = d.to_owned();
    }
    Ok(cfg)
}

pub(crate) fn read_password(file: Option<&Path>) -> anyhow::Result<String> {
    if let Some(f) = file {
        let s =
            std::fs::read_to_string(f).with_context(|| format!("cannot read {}", f.display()))?;
        return Ok(s.trim_end_matches(['\n', '\r']).to_owned());
    }
    if let Ok(p) = std::env::var("TERN_PASSWORD") {
        return Ok(p);
    }
    rpassword::prompt_password("password: ").map_err(|e| {
        anyhow!("cannot read the password ({e}); use --password-file or TERN_PASSWORD")
    })
}
