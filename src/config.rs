//! Configuration: one TOML file per process, every field with a default in code.
//!
//! Raw TOML is parsed with unknown fields refused; a parse error is reported as
//! `FILE:LINE:COL: what is wrong` from the span the TOML parser gives. Durations
//! are written as `30s`, `5m`, `1h`, `7d`. The commented examples in `configs/`
//! are parsed by a test, so they cannot drift from this file.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A role this binary can run.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Configuration server: control plane, UI, API, PKI.
    Cx,
    /// Process server: receives, caches, compresses and forwards change data.
    Ps,
    /// Master target: applies changes to replicas and keeps the retention journal.
    Mt,
    /// Agent on the protected server: captures writes.
    Agent,
    /// Multi-tenant portal over many CX servers (not built yet).
    Rx,
}

impl Role {
    pub const ALL: [Role; 5] = [Role::Cx, Role::Ps, Role::Mt, Role::Agent, Role::Rx];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Cx => "cx",
            Role::Ps => "ps",
            Role::Mt => "mt",
            Role::Agent => "agent",
            Role::Rx => "rx",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Role, String> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == s.trim())
            .ok_or_else(|| format!("unknown role `{s}`; expected one of cx, ps, mt, agent, rx"))
    }
}

/// A duration written like `30s`, `5m`, `1h 30m`, `7d`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dur(pub Duration);

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Dur, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(&s).map(Dur).map_err(|e| {
            serde::de::Error::custom(format!(
                "invalid duration `{s}` ({e}); expected e.g. \"30s\", \"5m\", \"1h\", \"7d\""
            ))
        })
    }
}

impl Serialize for Dur {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(self.0).to_string())
    }
}

/// The whole file.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Directory holding this node's state: `tern.redb`, `pki/`, caches, journals.
    pub data_dir: PathBuf,
    /// Roles this process runs when `tern serve` is given no `--role`.
    pub roles: Vec<Role>,
    pub node: NodeConfig,
    pub log: LogConfig,
    pub cx: CxConfig,
    pub mt: MtConfig,
    pub ps: PsConfig,
    pub agent: AgentConfig,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            data_dir: PathBuf::from("./tern-data"),
            roles: Vec::new(),
            node: NodeConfig::default(),
            log: LogConfig::default(),
            cx: CxConfig::default(),
            mt: MtConfig::default(),
            ps: PsConfig::default(),
            agent: AgentConfig::default(),
        }
    }
}

/// The master target.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MtConfig {
    /// How often the background pruner enforces each pair's retention policy
    /// (time and space limits, sparse tiers). A pass takes each pair's lock
    /// briefly and skips pairs that another process (a vsnap) holds.
    pub prune_interval: Dur,
    /// Bytes every journal leaves free on the filesystem it lives on: its
    /// space budget, unless a pair's `max_bytes` is lower. Unset: 2% of the
    /// filesystem, at least 32 MiB and at most 4 GiB.
    pub keep_free: Option<Size>,
    /// Chunk bodies held in memory at once, across all pairs, with the
    /// decompressed payloads of compressed ones. A chunk that finds no room
    /// within 5 s (or no room to decompress at once) is answered 503; its PS
    /// keeps it and sends it again. One chunk alone always fits.
    pub chunk_memory: Size,
    /// Allocate a new pair's whole replica on the retention disk at once, so
    /// that applying the journal into it (which is what frees journal space)
    /// never fails for want of room. `false`: thin replicas, for storage
    /// that is thin already; a full disk then stops the journal (read-only)
    /// until space returns.
    pub preallocate_replica: bool,
}

impl Default for MtConfig {
    fn default() -> Self {
        MtConfig {
            prune_interval: Dur(Duration::from_secs(60)),
            keep_free: None,
            chunk_memory: Size(256 << 20),
            preallocate_replica: true,
        }
    }
}

/// The process server.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PsConfig {
    /// Per pair: above this many cached bytes during a resync, the PS answers
    /// "throttled" and the agent backs off (seed: 2 GiB).
    pub resync_threshold: Size,
    /// Per pair: the same for differential sync (seed: 8 GiB).
    pub differential_threshold: Size,
    /// Bandwidth towards each MT, shared by its pairs (higher `priority`
    /// first): `["08:00-18:00=20MB/s", "*=0"]` — UTC windows, first match
    /// wins, 0 = unlimited. Empty: unlimited.
    pub bandwidth: Vec<String>,
    /// At most this many of the PS's pairs resync (step I/II) at once;
    /// the others wait in "resync-queued" (seed: batch resync, 3). 0 = no limit.
    pub resync_batch: u32,
    /// Chunk bodies held in memory at once, across all pairs (twice a
    /// chunk's size for `compression = ps` pairs). A chunk that finds no
    /// room within a second is answered "throttled"; its agent keeps it and
    /// sends it again. At least one chunk (`agent.chunk_max`) always fits.
    pub chunk_memory: Size,
}

impl Default for PsConfig {
    fn default() -> Self {
        PsConfig {
            resync_threshold: Size(2 << 30),
            differential_threshold: Size(8 << 30),
            bandwidth: Vec::new(),
            resync_batch: 3,
            chunk_memory: Size(128 << 20),
        }
    }
}

/// The source agent.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AgentConfig {
    /// Hard cap on captured data held in memory per pair; beyond it the agent
    /// only marks dirty blocks (bitmap mode). Seed: 250 MB.
    pub buffer_cap: Size,
    /// Largest chunk sent to the PS.
    pub chunk_max: Size,
    /// After an unclean stop, wait this long before the automatic resync.
    pub auto_resync_delay: Dur,
    /// Hours in which automatic resyncs may start, e.g. "22:00-06:00".
    pub resync_window: String,
    /// Capture `scan`: how often every block is compared with the replica
    /// and the differing ones sent.
    pub scan_interval: Dur,
    /// A consistency bookmark every this often (seed: 30 min): `fs` (the
    /// filesystem frozen) when the volume names its `fs_mount`, else `user`.
    /// "0s" turns them off.
    pub consistency_interval: Dur,
    /// Volumes protected by this agent (more can be added with
    /// `tern agent volume add`).
    pub volumes: Vec<crate::engine::control::VolumeSpec>,
}

impl Default for AgentConfig {
    fn default() -> Self {
        AgentConfig {
            buffer_cap: Size(250_000_000),
            chunk_max: Size(8 << 20),
            auto_resync_delay: Dur(Duration::from_secs(30 * 60)),
            resync_window: "00:00-24:00".into(),
            scan_interval: Dur(Duration::from_secs(15 * 60)),
            consistency_interval: Dur(Duration::from_secs(30 * 60)),
            volumes: Vec::new(),
        }
    }
}

/// A byte size written like "250MB", "2GiB" or a plain number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Size(pub u64);

impl Serialize for Size {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(self.0)
    }
}

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum V {
            N(u64),
            S(String),
        }
        match V::deserialize(d)? {
            V::N(n) => Ok(Size(n)),
            V::S(s) => crate::util::parse_size(&s).map(Size).map_err(|e| {
                serde::de::Error::custom(format!("{e} (expected e.g. \"250MB\" or \"2GiB\")"))
            }),
        }
    }
}

/// Settings every process has, whatever its roles.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NodeConfig {
    /// Name shown in host lists; defaults to the system host name.
    pub name: Option<String>,
    /// The configuration server this node reports to (set by `tern enroll` too).
    pub cx_url: String,
    /// Replication data port (PS and MT): HTTPS with mutual TLS only.
    pub data_listen: SocketAddr,
    /// Where peers dial this node's data port, as `host:port` (a DNS name or
    /// an IP), when that is not `data_listen`: behind NAT, a port forward or
    /// a proxy. Unset: `data_listen`, where a wildcard bind (`0.0.0.0`, `::`)
    /// is reached at the address the CX sees this node's heartbeats come
    /// from. Its host goes into this node's certificate at enrollment.
    pub data_advertise: Option<String>,
    /// Extra DNS names or IP addresses put in this node's certificate, so peers
    /// can reach it by those names (its host name and loopback are always in).
    pub tls_names: Vec<String>,
    /// How often this node reports to the CX.
    pub heartbeat_interval: Dur,
    /// How often pair status (RPO, progress, caches) is reported to the CX;
    /// configuration changes arrive at once whatever this is.
    pub report_interval: Dur,
    /// A plain-HTTP listener serving this process's `/metrics` (Prometheus
    /// text format) for scrapers. Off unless set; bind it to a management
    /// address (the CX also serves `/metrics` on its API, with a token).
    pub metrics_listen: Option<SocketAddr>,
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            name: None,
            cx_url: "https://127.0.0.1:8443".into(),
            data_listen: "0.0.0.0:9443".parse().expect("valid"),
            data_advertise: None,
            tls_names: Vec::new(),
            heartbeat_interval: Dur(Duration::from_secs(10)),
            report_interval: Dur(Duration::from_secs(2)),
            metrics_listen: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One readable line per event.
    #[default]
    Human,
    /// One JSON object per line, for log shippers.
    Json,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `human` or `json` (the `--log-json` flag overrides).
    pub format: LogFormat,
    /// A tracing filter: `info`, `debug`, `tern=debug,warn`, … (`RUST_LOG` overrides).
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: LogFormat::Human,
            level: "info".into(),
        }
    }
}

/// The configuration server.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CxConfig {
    /// UI and REST API (HTTPS; client certificates optional, used by roles).
    pub api_listen: SocketAddr,
    /// A plaintext HTTP listener for the UI/API. Off unless set: only for a
    /// TLS-terminating proxy on the same host.
    pub plaintext_api_listen: Option<SocketAddr>,
    /// A host whose last heartbeat is older than this is overdue, and its
    /// heartbeat-lost alert fires. Unset: 1.5 of the host's own heartbeat
    /// interval (so a stopped node alerts within two intervals).
    pub heartbeat_overdue: Option<Dur>,
    /// Default lifetime of an enrollment token.
    pub enroll_token_ttl: Dur,
    /// Lifetime of a browser session or `tern login` token.
    pub session_ttl: Dur,
    /// Organisation name written into the CA certificate.
    pub organization: String,
    /// Trends: one raw sample per series this often (must divide a minute);
    /// kept 2 days, then 1-minute, 10-minute and 1-hour averages and maxima
    /// for 9, 35 and 400 days (the day, week, month and year views).
    pub trends_step: Dur,
    /// An active alert is notified again this often (0s: never).
    pub alert_repeat: Dur,
    /// Alert when the disk holding a node's data directory has less free
    /// space than this percentage.
    pub alert_disk_free_pct: f64,
    /// Alert when a pair's journal uses more than this percentage of its
    /// space limit (`max_bytes`).
    pub alert_retention_space_pct: f64,
    /// Alert when a node certificate or the CA expires within this.
    pub alert_cert_expiry: Dur,
    /// How long the certificates this CX signs for nodes stay valid. A
    /// node renews its own when two thirds of this have passed, keeping its
    /// host id.
    pub node_cert_validity: Dur,
    /// When daily e-mail digests go out (UTC, HH:MM).
    pub digest_at: String,
    /// Jobs (images, hashes, …) running at once; more wait, queued.
    pub jobs_running: usize,
    /// Finished jobs kept (the oldest go first)…
    pub jobs_keep: usize,
    /// …and for at most this long.
    pub jobs_max_age: Dur,
    /// A job whose node does not answer for this long fails, saying where
    /// it stopped.
    pub job_node_timeout: Dur,
    /// Default lifetime of an API token made with `tern api-token create`.
    pub api_token_ttl: Dur,
    /// Failed logins allowed per user name within `login_window`; more are
    /// refused (429) until the window has passed. An address gets four
    /// times as many, over all the names it tries.
    pub login_max_failures: u32,
    pub login_window: Dur,
    /// Audit records kept (the oldest go first).
    pub audit_keep: u64,
}

impl Default for CxConfig {
    fn default() -> Self {
        CxConfig {
            api_listen: "0.0.0.0:8443".parse().expect("valid"),
            plaintext_api_listen: None,
            heartbeat_overdue: None,
            enroll_token_ttl: Dur(Duration::from_secs(3600)),
            session_ttl: Dur(Duration::from_secs(12 * 3600)),
            organization: "Tern".into(),
            trends_step: Dur(Duration::from_secs(10)),
            alert_repeat: Dur(Duration::from_secs(3600)),
            alert_disk_free_pct: 10.0,
            alert_retention_space_pct: 90.0,
            alert_cert_expiry: Dur(Duration::from_secs(30 * 24 * 3600)),
            node_cert_validity: Dur(crate::engine::pki::NODE_CERT_VALIDITY),
            digest_at: "08:00".into(),
            jobs_running: 4,
            jobs_keep: 10_000,
            jobs_max_age: Dur(Duration::from_secs(90 * 24 * 3600)),
            job_node_timeout: Dur(Duration::from_secs(120)),
            api_token_ttl: Dur(Duration::from_secs(90 * 24 * 3600)),
            login_max_failures: 5,
            login_window: Dur(Duration::from_secs(300)),
            audit_keep: 100_000,
        }
    }
}

/// A config file that did not parse: where and why.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: cannot read: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}:{line}:{col}: {message}")]
    Invalid {
        path: PathBuf,
        line: usize,
        col: usize,
        message: String,
    },
    #[error("{path}: {message}")]
    Semantic { path: PathBuf, message: String },
}

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(path, &text)
    }

    pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
        let cfg: Config = toml::from_str(text).map_err(|e| {
            let (line, col) = e.span().map(|s| line_col(text, s.start)).unwrap_or((1, 1));
            ConfigError::Invalid {
                path: path.to_owned(),
                line,
                col,
                message: e.message().trim().to_owned(),
            }
        })?;
        cfg.validate().map_err(|message| ConfigError::Semantic {
            path: path.to_owned(),
            message,
        })?;
        Ok(cfg)
    }

    /// Rules serde cannot express.
    pub fn validate(&self) -> Result<(), String> {
        if self.node.heartbeat_interval.0 < Duration::from_millis(100) {
            return Err("node.heartbeat_interval must be at least 100ms".into());
        }
        if let Some(o) = self.cx.heartbeat_overdue
            && o.0 < self.node.heartbeat_interval.0
        {
            return Err("cx.heartbeat_overdue must be at least node.heartbeat_interval".into());
        }
        let step = self.cx.trends_step.0;
        if step.subsec_nanos() != 0 || !crate::engine::trends::valid_step(step.as_secs() as i64) {
            return Err(format!(
                "cx.trends_step `{}` must be whole seconds dividing a minute (1s, 2s, 5s, 10s, 15s, 30s, 60s)",
                humantime::format_duration(step)
            ));
        }
        if self.cx.node_cert_validity.0 < Duration::from_secs(30) {
            return Err("cx.node_cert_validity must be at least 30s".into());
        }
        if let Err(e) = crate::util::parse_hhmm(&self.cx.digest_at) {
            return Err(format!("cx.digest_at: {e}"));
        }
        if !(1..=64).contains(&self.cx.jobs_running) {
            return Err("cx.jobs_running must be 1 to 64".into());
        }
        if self.cx.login_max_failures == 0 {
            return Err("cx.login_max_failures must be at least 1".into());
        }
        if self.cx.audit_keep == 0 {
            return Err("cx.audit_keep must be at least 1".into());
        }
        if self.cx.jobs_keep == 0 {
            return Err("cx.jobs_keep must be at least 1".into());
        }
        if self.cx.job_node_timeout.0 < Duration::from_secs(1) {
            return Err("cx.job_node_timeout must be at least 1s".into());
        }
        for (what, v) in [
            ("cx.alert_disk_free_pct", self.cx.alert_disk_free_pct),
            (
                "cx.alert_retention_space_pct",
                self.cx.alert_retention_space_pct,
            ),
        ] {
            if !(0.0..=100.0).contains(&v) {
                return Err(format!("{what} must be between 0 and 100"));
            }
        }
        if let Err(e) = crate::roles::ps::bandwidth::parse_schedule(&self.ps.bandwidth) {
            return Err(format!("ps.bandwidth: {e}"));
        }
        if let Err(e) = crate::util::parse_window(&self.agent.resync_window) {
            return Err(format!("agent.resync_window: {e}"));
        }
        if let Some(a) = &self.node.data_advertise
            && let Err(e) = crate::util::host_port(a)
        {
            return Err(format!("node.data_advertise: {e}"));
        }
        // A chunk's raw payload is at most chunk::MAX_RAW; a larger one is
        // refused by every PS, so it is refused here.
        let max_chunk = (crate::engine::chunk::MAX_RAW / 2) as u64;
        if self.agent.chunk_max.0 > max_chunk {
            return Err(format!(
                "agent.chunk_max must be at most {}",
                crate::util::human_bytes(max_chunk)
            ));
        }
        if !self.node.cx_url.starts_with("https://") {
            return Err(format!(
                "node.cx_url `{}` must start with https:// (Tern has no plaintext role-to-role traffic)",
                self.node.cx_url
            ));
        }
        Ok(())
    }

    pub fn node_name(&self) -> String {
        self.node
            .name
            .clone()
            .or_else(|| crate::engine::pki::hostname().ok())
            .unwrap_or_else(|| "tern".into())
    }

    /// The names this node's certificate must carry beyond the defaults
    /// (`pki::default_sans`): `tls_names` and the host of `data_advertise`,
    /// so peers that dial the advertised address verify this node.
    pub fn cert_names(&self) -> Vec<String> {
        let mut names = self.node.tls_names.clone();
        if let Some(a) = &self.node.data_advertise
            && let Ok((host, _)) = crate::util::host_port(a)
        {
            names.push(host.to_owned());
        }
        names
    }
}

/// 1-based line and column of a byte offset.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.len() - before.rfind('\n').map(|i| i + 1).unwrap_or(0) + 1;
    (line, col)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shipped examples stay in step with the code: each parses and
    /// passes validation.
    #[test]
    fn shipped_configs_parse_and_validate() {
        for (name, text) in [
            ("agent.toml", include_str!("../configs/agent.toml")),
            (
                "all-in-one.toml",
                include_str!("../configs/all-in-one.toml"),
            ),
            ("cx.toml", include_str!("../configs/cx.toml")),
            ("mt.toml", include_str!("../configs/mt.toml")),
            ("ps-mt.toml", include_str!("../configs/ps-mt.toml")),
            ("ps.toml", include_str!("../configs/ps.toml")),
        ] {
            let c = Config::parse(Path::new(name), text).unwrap_or_else(|e| panic!("{e}"));
            c.validate().unwrap_or_else(|e| panic!("{name}: {e}"));
        }
    }

    #[test]
    fn typo_field_reports_file_line_and_expected_names() {
        let text = "data_dir = \"/x\"\n\n[node]\nhearbeat_interval = \"5s\"\n";
        let e = Config::parse(Path::new("ps.toml"), text).unwrap_err();
        let s = e.to_string();
        assert!(
            s.starts_with("ps.toml:4:1: unknown field `hearbeat_interval`"),
            "{s}"
        );
        assert!(
            s.contains("heartbeat_interval"),
            "must list what is expected: {s}"
        );
    }

    #[test]
    fn bad_duration_says_what_is_expected() {
        let text = "[cx]\nsession_ttl = \"forever\"\n";
        let s = Config::parse(Path::new("c.toml"), text)
            .unwrap_err()
            .to_string();
        assert!(s.starts_with("c.toml:2:"), "{s}");
        assert!(s.contains("expected e.g."), "{s}");
    }

    #[test]
    fn the_advertised_data_host_goes_into_the_certificate_names() {
        let cert_names = |text: &str| {
            Config::parse(Path::new("c.toml"), text)
                .unwrap()
                .cert_names()
        };
        assert!(cert_names("").is_empty());
        assert_eq!(
            cert_names(
                "[node]\ntls_names = [\"a.example\"]\ndata_advertise = \"ps.example.net:9443\"\n"
            ),
            ["a.example", "ps.example.net"]
        );
        assert_eq!(
            cert_names("[node]\ndata_advertise = \"[2001:db8::5]:9443\"\n"),
            ["2001:db8::5"]
        );
        let e = Config::parse(Path::new("c.toml"), "[node]\ndata_advertise = \"ps\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("node.data_advertise: `ps` is not host:port"),
            "{e}"
        );
    }

    #[test]
    fn empty_file_gives_all_defaults() {
        let c = Config::parse(Path::new("e.toml"), "").unwrap();
        assert_eq!(c.cx.api_listen.port(), 8443);
        assert_eq!(c.node.data_listen.port(), 9443);
        assert!(c.cx.plaintext_api_listen.is_none());
    }

    #[test]
    fn shipped_example_configs_parse() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs");
        let mut n = 0;
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|x| x == "toml") {
                Config::load(&p).unwrap_or_else(|e| panic!("{e}"));
                n += 1;
            }
        }
        assert!(n >= 5, "one example per role plus all-in-one, found {n}");
    }
}
