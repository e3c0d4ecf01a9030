//! The configuration server (CX): control plane, PKI, UI and REST API.
//!
//! Owns: the CA, users and tokens, the host registry (enrollment and
//! heartbeats), pairs and volumes, monitoring (trends, health report,
//! alerts and their notification), jobs (long operations on nodes). Later:
//! plans, policies, workflows.
//!
//! Invariants: the CA key never leaves this node; a host appears in the
//! registry only through enrollment (or as the CX's own node); a heartbeat is
//! accepted only over a connection whose client certificate names a
//! registered host.

pub mod alerts;
pub mod api;
pub mod audit;
pub mod auth;
pub mod health;
pub mod jobs;
pub mod monitor;
pub mod pairs;
pub mod routes;
pub mod ui;
pub mod users;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::config::{Config, Role};
use crate::engine::pki::{self, Ca, Identity, NodeInfo};
use crate::engine::store::{HOSTS, Store};
use crate::util::now_ms;

/// A registered host (`hosts` table).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HostRecord {
    pub host_id: String,
    pub name: String,
    pub roles: Vec<Role>,
    pub version: Option<String>,
    pub enrolled_ms: u64,
    pub last_heartbeat_ms: Option<u64>,
    pub data_addr: Option<String>,
    /// Expiry of the certificate issued at enrollment (Unix seconds).
    pub cert_not_after: Option<i64>,
    /// The interval the node says it heartbeats at.
    #[serde(default)]
    pub heartbeat_interval_ms: Option<u64>,
}

impl HostRecord {
    /// A silence longer than this means the host is lost: `cx.heartbeat_overdue`
    /// if set, else 1.5 of the host's own interval (10 s if it never said).
    pub fn overdue_ms(&self, cx: &crate::config::CxConfig) -> u64 {
        match cx.heartbeat_overdue {
            Some(d) => d.0.as_millis() as u64,
            None => self.heartbeat_interval_ms.unwrap_or(10_000) * 3 / 2,
        }
    }

    /// Milliseconds since the last heartbeat (None: never).
    pub fn heartbeat_age_ms(&self, now_ms: u64) -> Option<u64> {
        self.last_heartbeat_ms.map(|t| now_ms.saturating_sub(t))
    }
}

/// Shared by every CX handler.
pub struct CxState {
    pub cfg: Config,
    pub store: Store,
    pub ca: Ca,
    /// Roles running in this process (reported by /health).
    pub roles: Vec<Role>,
    pub host_id: String,
    pub started_ms: u64,
    pub control: pairs::Control,
    /// Calls the data ports of nodes as the CX (mutual TLS).
    pub client: reqwest::Client,
    /// Trends and the sampling state.
    pub monitor: monitor::Monitor,
    /// The notification queue.
    pub alerts: alerts::Alerts,
    /// Long operations and their runners.
    pub jobs: jobs::Jobs,
    /// Failed logins per user and address (the rate limit).
    pub logins: auth::LoginLimiter,
}

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Health {
    pub status: String,
    pub version: String,
    pub roles: Vec<Role>,
    pub host_id: String,
    pub uptime_s: u64,
}

impl CxState {
    pub fn health(&self) -> Health {
        Health {
            status: "ok".into(),
            version: crate::VERSION.into(),
            roles: self.roles.clone(),
            host_id: self.host_id.clone(),
            uptime_s: (now_ms() - self.started_ms) / 1000,
        }
    }
}

/// What first start leaves for the operator.
pub struct Bootstrap {
    pub ca: Ca,
    pub identity: Identity,
    /// Set when the admin user was created by this start.
    pub admin_password_file: Option<PathBuf>,
}

pub fn pki_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("pki")
}

/// Create or load the CA, the admin user, the local CLI token and this node's
/// own identity (signed directly by the local CA).
pub fn bootstrap(
    cfg: &Config,
    store: &Store,
    roles: &[Role],
    api_url: &str,
) -> anyhow::Result<Bootstrap> {
    let dir = pki_dir(&cfg.data_dir);
    let ca = Ca::load_or_create(&dir, &cfg.cx.organization)?;
    let admin_password_file = auth::ensure_admin(store, &cfg.data_dir)?;
    auth::ensure_local_cli_token(store, &cfg.data_dir)?;
    let identity = if Identity::exists(&dir) {
        let mut id = Identity::load(&dir)?;
        if id.info.cx_url != api_url {
            id.info.cx_url = api_url.to_owned();
            id.save(&dir)?;
        }
        id
    } else {
        let host_id = uuid::Uuid::new_v4().to_string();
        let (key, csr) = pki::new_key_and_csr(&pki::default_sans(&cfg.cert_names()))?;
        let cert_pem = ca.sign_csr(&csr, &host_id, cfg.cx.node_cert_validity.0)?;
        let id = Identity {
            info: NodeInfo {
                host_id: host_id.clone(),
                cx_url: api_url.to_owned(),
            },
            cert_pem,
            key_pem: key.serialize_pem(),
            ca_pem: ca.cert_pem.clone(),
        };
        id.save(&dir)?;
        id
    };
    // The CX's own node is registered like any other (its heartbeats need it).
    let hid = identity.info.host_id.clone();
    if store.get::<HostRecord>(HOSTS, &hid)?.is_none() {
        store.put(
            HOSTS,
            &hid,
            &HostRecord {
                host_id: hid.clone(),
                name: cfg.node_name(),
                roles: roles.to_vec(),
                version: Some(crate::VERSION.into()),
                enrolled_ms: now_ms(),
                last_heartbeat_ms: None,
                data_addr: None,
                cert_not_after: pki::pem_to_der(&identity.cert_pem)
                    .and_then(|d| pki::not_after_unix(&d)),
                heartbeat_interval_ms: Some(cfg.node.heartbeat_interval.0.as_millis() as u64),
            },
        )?;
    }
    Ok(Bootstrap {
        ca,
        identity,
        admin_password_file,
    })
}
