//! What every process does, whatever its roles: identity, data listener,
//! heartbeat, ordered shutdown.
//!
//! Shutdown: when the trigger fires, every task sees it at once and they
//! stop side by side, not in a sequence: listeners stop accepting and give
//! open connections a graceful close (dropped after the transport's drain
//! deadline); the heartbeat, pruner, renewal loops and PS forwarders exit;
//! the control-plane sync loop, once out of its loop, stops the agent (each
//! pair's clean stop: buffer to bitmap, state saved). [`wait_and_stop`]
//! gives them all [`STOP_DEADLINE`] together, then the process exits;
//! blocking tasks still parked get half a second more. Every step logs.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use warp::Filter;

use crate::config::{Config, Role};
use crate::engine::pki::Identity;
use crate::engine::shutdown::{Shutdown, ShutdownTrigger};
use crate::engine::store::Store;
use crate::engine::transport::{self, ClientAuth, PeerIdentity};
use crate::roles::cx::{self, CxState, api::Heartbeat};
use crate::util::now_ms;

/// Addresses a started node is listening on.
#[derive(Debug, Clone)]
pub struct RunningNode {
    pub host_id: String,
    pub api_addr: Option<SocketAddr>,
    pub data_addr: Option<SocketAddr>,
    /// Created on this start (first start of a CX).
    pub admin_password_file: Option<std::path::PathBuf>,
}

/// Start all roles; returns once listeners are bound, with the tasks to await.
pub async fn start(
    cfg: Config,
    mut roles: Vec<Role>,
    trigger: &ShutdownTrigger,
) -> anyhow::Result<(RunningNode, JoinSet<()>)> {
    roles.sort();
    roles.dedup();
    if roles.is_empty() {
        bail!("no roles to run: pass --role cx,ps,mt,agent or set `roles = [...]` in the config");
    }
    if roles.contains(&Role::Rx) {
        bail!(
            "the rx (multi-tenant portal) role is not built yet in this version; run cx, ps, mt or agent"
        );
    }
    std::fs::create_dir_all(&cfg.data_dir)
        .with_context(|| format!("cannot create data directory {}", cfg.data_dir.display()))?;
    let store = Store::open(&cfg.data_dir)?;
    let pki_dir = cx::pki_dir(&cfg.data_dir);
    let mut tasks = JoinSet::new();

    // The CX binds first: its URL goes into its own identity.
    let mut api_addr = None;
    let mut admin_password_file = None;
    let (identity, slot) = if roles.contains(&Role::Cx) {
        let listener = TcpListener::bind(cfg.cx.api_listen)
            .await
            .with_context(|| {
                format!("cx: cannot listen on {} (cx.api_listen)", cfg.cx.api_listen)
            })?;
        let addr = listener.local_addr()?;
        let url = local_url(addr);
        let boot = cx::bootstrap(&cfg, &store, &roles, &url)?;
        admin_password_file = boot.admin_password_file.clone();
        crate::engine::fsutil::write_durable(
            &cfg.data_dir.join("cx.url"),
            format!("{url}\n").as_bytes(),
            0o644,
        )?;
        let trends_dir = cfg.data_dir.join("trends");
        let trends = {
            let step = cfg.cx.trends_step.0.as_secs() as i64;
            tokio::task::spawn_blocking(move || {
                crate::engine::trends::Trends::open(&trends_dir, step)
            })
            .await??
        };
        let slot = transport::CertSlot::new(&boot.identity)?;
        let (alerts, alert_rx) = cx::alerts::Alerts::new();
        let state = Arc::new(CxState {
            cfg: cfg.clone(),
            store: store.clone(),
            ca: boot.ca,
            roles: roles.clone(),
            host_id: boot.identity.info.host_id.clone(),
            started_ms: now_ms(),
            control: cx::pairs::Control::load(&store)?,
            client: transport::client_with(&boot.identity.ca_pem, Some(slot.clone()))?,
            monitor: cx::monitor::Monitor::new(trends),
            alerts,
            jobs: cx::jobs::Jobs::new(cfg.cx.jobs_running),
            logins: Default::default(),
        });
        {
            let s = state.clone();
            let n = tokio::task::spawn_blocking(move || cx::jobs::recover(&s)).await??;
            if n > 0 {
                tracing::info!(jobs = n, "unfinished jobs picked up again");
            }
        }
        tasks.spawn(cx::monitor::run(state.clone(), trigger.subscribe()));
        tasks.spawn(cx::alerts::dispatcher(
            state.clone(),
            alert_rx,
            trigger.subscribe(),
        ));
        let tls = transport::server_config_with(
            &boot.identity.ca_pem,
            slot.clone(),
            ClientAuth::Optional,
        )?;
        tracing::info!(role = "cx", listen = %addr, url = %url, ca = %state.ca.fingerprint(), "role started: UI and API listening (HTTPS)");
        tasks.spawn(transport::serve(
            "cx-api",
            listener,
            Some(tls),
            cx::api::routes(state.clone()),
            trigger.subscribe(),
        ));
        if let Some(plain) = cfg.cx.plaintext_api_listen {
            let l = TcpListener::bind(plain).await.with_context(|| {
                format!("cx: cannot listen on {plain} (cx.plaintext_api_listen)")
            })?;
            tracing::warn!(role = "cx", listen = %l.local_addr()?, "plaintext HTTP API listener enabled by cx.plaintext_api_listen");
            tasks.spawn(transport::serve(
                "cx-api-plaintext",
                l,
                None,
                cx::api::routes(state),
                trigger.subscribe(),
            ));
        }
        api_addr = Some(addr);
        (boot.identity, slot)
    } else {
        let id = Identity::load(&pki_dir)?;
        let slot = transport::CertSlot::new(&id)?;
        (id, slot)
    };

    // Replication parts of this process.
    let node_client = transport::client_with(&identity.ca_pem, Some(slot.clone()))?;
    let host_id = identity.info.host_id.clone();
    let agent = roles.contains(&Role::Agent).then(|| {
        crate::roles::agent::AgentRole::new(
            cfg.clone(),
            host_id.clone(),
            node_client.clone(),
            trigger.subscribe(),
        )
    });
    let ps = roles.contains(&Role::Ps).then(|| {
        crate::roles::ps::PsRole::new(
            cfg.clone(),
            host_id.clone(),
            node_client.clone(),
            trigger.subscribe(),
        )
    });
    let mt = roles
        .contains(&Role::Mt)
        .then(|| crate::roles::mt::service::MtRole::new(cfg.clone(), host_id.clone()));

    // The data port, shared by the PS and MT roles of this process.
    let mut data_addr = None;
    if roles.iter().any(|r| matches!(r, Role::Ps | Role::Mt)) {
        let listener = TcpListener::bind(cfg.node.data_listen)
            .await
            .with_context(|| {
                format!(
                    "cannot listen on {} (node.data_listen)",
                    cfg.node.data_listen
                )
            })?;
        let addr = listener.local_addr()?;
        crate::engine::fsutil::write_durable(
            &cfg.data_dir.join("data.addr"),
            format!("{addr}\n").as_bytes(),
            0o644,
        )?;
        let tls =
            transport::server_config_with(&identity.ca_pem, slot.clone(), ClientAuth::Required)?;
        let routes = data_routes(
            identity.info.host_id.clone(),
            roles.clone(),
            ps.clone(),
            mt.clone(),
        );
        let names: Vec<&str> = roles.iter().map(|r| r.as_str()).collect();
        tracing::info!(listen = %addr, roles = %names.join(","), "data port listening (HTTPS, mutual TLS required)");
        tasks.spawn(transport::serve(
            "data",
            listener,
            Some(tls),
            routes,
            trigger.subscribe(),
        ));
        data_addr = Some(addr);
    }
    if roles.contains(&Role::Mt) {
        tracing::info!(role = "mt", pairs = %crate::roles::mt::pairs_dir(&cfg.data_dir).display(), interval = ?cfg.mt.prune_interval.0, "retention pruner started");
        tasks.spawn(crate::roles::mt::pruner(
            cfg.data_dir.clone(),
            mt.as_ref().map(|m| m.open.clone()).unwrap_or_default(),
            mt.as_ref()
                .map(|m| m.prune_errors.clone())
                .unwrap_or_default(),
            cfg.mt.prune_interval.0,
            cfg.mt.keep_free.map(|s| s.0),
            trigger.subscribe(),
        ));
        if let Some(m) = &mt {
            // Running image and hash tasks stop at shutdown (their jobs
            // start them again when this MT is back).
            let tasks_ = m.tasks.clone();
            let mut stop = trigger.subscribe();
            tasks.spawn(async move {
                stop.wait().await;
                tasks_.abort_all();
            });
        }
    }
    for r in &roles {
        if *r != Role::Cx {
            tracing::info!(role = %r, host_id = %identity.info.host_id, "role started");
        }
    }

    let hb = HeartbeatLoop {
        client: transport::client_with(&identity.ca_pem, Some(slot.clone()))?,
        url: format!(
            "{}/api/v1/heartbeat",
            identity.info.cx_url.trim_end_matches('/')
        ),
        body: Heartbeat {
            name: cfg.node_name(),
            roles: roles.clone(),
            version: crate::VERSION.into(),
            // A wildcard bind goes as it is: the CX puts in the address
            // these heartbeats come from (see `cx::api::reachable_at`).
            data_addr: data_addr.map(|a| {
                cfg.node
                    .data_advertise
                    .clone()
                    .unwrap_or_else(|| a.to_string())
            }),
            interval_ms: Some(cfg.node.heartbeat_interval.0.as_millis() as u64),
        },
        interval: cfg.node.heartbeat_interval.0,
    };
    tasks.spawn(hb.run(trigger.subscribe()));
    tasks.spawn(
        crate::roles::renewal::Renewal {
            dir: pki_dir.clone(),
            identity: identity.clone(),
            slot: slot.clone(),
            client: node_client.clone(),
            names: cfg.cert_names(),
        }
        .run(trigger.subscribe()),
    );

    let last_report: Arc<std::sync::Mutex<Option<crate::engine::control::NodeReport>>> =
        Arc::default();
    if let Some(addr) = cfg.node.metrics_listen {
        let l = TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on {addr} (node.metrics_listen)"))?;
        tracing::info!(listen = %l.local_addr()?, "metrics listening (plain HTTP, GET /metrics)");
        crate::engine::fsutil::write_durable(
            &cfg.data_dir.join("metrics.addr"),
            format!("{}\n", l.local_addr()?).as_bytes(),
            0o644,
        )?;
        tasks.spawn(transport::serve(
            "metrics",
            l,
            None,
            metrics_routes(cfg.node_name(), roles.clone(), last_report.clone()),
            trigger.subscribe(),
        ));
    }

    let sync = SyncLoop {
        stats: Arc::new(std::sync::Mutex::new(
            crate::engine::sysstats::Collector::new(&cfg.data_dir),
        )),
        last_report: last_report.clone(),
        client: node_client,
        url: format!(
            "{}/api/v1/node/sync",
            identity.info.cx_url.trim_end_matches('/')
        ),
        interval: cfg.node.report_interval.0,
        agent,
        ps,
        mt,
    };
    tasks.spawn(sync.run(trigger.subscribe()));

    Ok((
        RunningNode {
            host_id: identity.info.host_id.clone(),
            api_addr,
            data_addr,
            admin_password_file,
        },
        tasks,
    ))
}

/// How long the tasks of a stopping process get before it exits anyway.
pub const STOP_DEADLINE: Duration = Duration::from_secs(4);

/// Wait for the trigger, then stop everything in order: a stuck task cannot
/// hold the process past [`STOP_DEADLINE`].
pub async fn wait_and_stop(trigger: &ShutdownTrigger, mut tasks: JoinSet<()>, roles: &[Role]) {
    trigger.subscribe().wait().await;
    tracing::info!("shutdown requested");
    let drained = tokio::time::timeout(STOP_DEADLINE, async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!("some tasks did not stop within {STOP_DEADLINE:?}; exiting anyway");
    }
    for r in roles.iter().rev() {
        tracing::info!(role = %r, "role stopped");
    }
}

/// A wildcard bind is reached through loopback on this host.
fn advertised(addr: SocketAddr) -> SocketAddr {
    let mut a = addr;
    if a.ip().is_unspecified() {
        a.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    a
}

fn local_url(addr: SocketAddr) -> String {
    format!("https://{}", advertised(addr))
}

/// Routes on the data port. `hello` answers who this node is and who the
/// caller is (as its certificate says): a connectivity and trust check.
fn data_routes(
    host_id: String,
    roles: Vec<Role>,
    ps: Option<Arc<crate::roles::ps::PsRole>>,
    mt: Option<Arc<crate::roles::mt::service::MtRole>>,
) -> impl Filter<Extract = (impl warp::Reply,), Error = std::convert::Infallible> + Clone {
    use warp::Reply;
    let hello = warp::path!("data" / "v1" / "hello")
        .and(warp::get())
        .and(warp::ext::get::<PeerIdentity>())
        .map(move |peer: PeerIdentity| {
            warp::reply::json(&serde_json::json!({
                "host_id": host_id, "roles": roles, "peer": peer.host_id,
            }))
            .into_response()
        });
    fn absent(role: &'static str) -> warp::filters::BoxedFilter<(warp::reply::Response,)> {
        warp::path("data")
            .and(warp::path("v1"))
            .and(warp::path(role))
            .and_then(move || async move {
                Err::<warp::reply::Response, _>(cx::api::ApiError::reject(
                    warp::http::StatusCode::NOT_FOUND,
                    format!("this node does not run the {role} role"),
                ))
            })
            .boxed()
    }
    let ps_f = match ps {
        Some(ps) => crate::roles::ps::routes(ps).boxed(),
        None => absent("ps"),
    };
    let mt_f = match mt {
        Some(mt) => crate::roles::mt::service::routes(mt).boxed(),
        None => absent("mt"),
    };
    hello
        .or(ps_f)
        .unify()
        .or(mt_f)
        .unify()
        .recover(cx::api::recover)
}

/// `GET /metrics`: this process's last report in the Prometheus text format.
fn metrics_routes(
    name: String,
    roles: Vec<Role>,
    last: Arc<std::sync::Mutex<Option<crate::engine::control::NodeReport>>>,
) -> impl Filter<Extract = (impl warp::Reply,), Error = std::convert::Infallible> + Clone {
    warp::path!("metrics")
        .and(warp::get())
        .map(move || {
            let mut e = crate::engine::metrics::Exposition::new();
            let rs: Vec<&str> = roles.iter().map(|r| r.as_str()).collect();
            e.gauge(
                "tern_build_info",
                "This process's version and roles",
                &[("version", crate::VERSION), ("roles", &rs.join(","))],
                1.0,
            );
            if let Some(r) = last.lock().unwrap().as_ref() {
                crate::engine::metrics::node_report(&mut e, &name, r);
            }
            warp::reply::with_header(
                e.render(),
                "content-type",
                "text/plain; version=0.0.4; charset=utf-8",
            )
        })
        .recover(cx::api::recover)
}

/// The node's control-plane loop: report, receive pairs/volumes/commands.
struct SyncLoop {
    /// The machine's figures, sent with every report.
    stats: Arc<std::sync::Mutex<crate::engine::sysstats::Collector>>,
    /// The last report sent (served by `/metrics`).
    last_report: Arc<std::sync::Mutex<Option<crate::engine::control::NodeReport>>>,
    client: reqwest::Client,
    url: String,
    interval: Duration,
    agent: Option<Arc<crate::roles::agent::AgentRole>>,
    ps: Option<Arc<crate::roles::ps::PsRole>>,
    mt: Option<Arc<crate::roles::mt::service::MtRole>>,
}

impl SyncLoop {
    async fn run(self, mut shutdown: Shutdown) {
        use crate::engine::control::{NodeReport, SyncRequest, SyncResponse};
        let mut known = 0u64;
        let mut failing = false;
        let report_now = self
            .agent
            .as_ref()
            .map(|a| a.report_now.clone())
            .unwrap_or_default();
        loop {
            let mut report = NodeReport {
                at_ms: crate::util::now_ms(),
                ..NodeReport::default()
            };
            if let Some(a) = &self.agent {
                a.report(&mut report);
            }
            if let Some(p) = &self.ps {
                p.report(&mut report);
            }
            if let Some(m) = &self.mt {
                m.report(&mut report);
            }
            let stats = self.stats.clone();
            report.system = tokio::task::spawn_blocking(move || stats.lock().unwrap().collect())
                .await
                .ok();
            *self.last_report.lock().unwrap() = Some(report.clone());
            let results = report.results.clone();
            let req = SyncRequest {
                known_version: known,
                wait_ms: self.interval.as_millis() as u64,
                report,
            };
            let send = self
                .client
                .post(&self.url)
                .json(&req)
                .timeout(self.interval + Duration::from_secs(30))
                .send();
            let r = tokio::select! {
                r = send => Some(r),
                _ = report_now.notified() => None,
                _ = shutdown.wait() => break,
            };
            let Some(r) = r else {
                // A command finished: report it now (the results go again).
                if let Some(a) = &self.agent {
                    a.requeue_results(results);
                }
                continue;
            };
            let resp = match r {
                Ok(r) if r.status().is_success() => {
                    r.json::<SyncResponse>().await.map_err(|e| e.to_string())
                }
                Ok(r) => Err(format!("CX answered {}", r.status())),
                Err(e) => Err(e.to_string()),
            };
            match resp {
                Ok(resp) => {
                    if failing {
                        tracing::info!("control-plane sync with the CX restored");
                        failing = false;
                    }
                    known = resp.version;
                    // Applying opens journals and caches and saves agent
                    // state (fallocate, scans, fdatasync): off the reactor.
                    let (m, p, a) = (self.mt.clone(), self.ps.clone(), self.agent.clone());
                    let applied = tokio::task::spawn_blocking(move || {
                        if let Some(m) = &m {
                            m.apply(&resp);
                        }
                        if let Some(p) = &p {
                            p.apply(&resp);
                        }
                        if let Some(a) = &a {
                            a.apply(&resp);
                        }
                    })
                    .await;
                    if let Err(e) = applied {
                        tracing::error!(error = %e, "applying the CX's configuration panicked");
                    }
                }
                Err(e) => {
                    if !failing {
                        tracing::warn!(cx = %self.url, error = %e, "control-plane sync with the CX failed; retrying");
                        failing = true;
                    }
                    if let Some(a) = &self.agent {
                        a.requeue_results(results);
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                        _ = shutdown.wait() => break,
                    }
                }
            }
        }
        if let Some(a) = &self.agent {
            let a = a.clone();
            let _ = tokio::task::spawn_blocking(move || a.stop()).await;
        }
        tracing::info!("control-plane sync stopped");
    }
}

struct HeartbeatLoop {
    client: reqwest::Client,
    url: String,
    body: Heartbeat,
    interval: Duration,
}

impl HeartbeatLoop {
    async fn run(self, mut shutdown: Shutdown) {
        let mut failing = false;
        let mut tick = tokio::time::interval(self.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.wait() => break,
            }
            let r = tokio::select! {
                r = self.beat() => r,
                _ = shutdown.wait() => break,
            };
            match r {
                Ok(()) if failing => {
                    tracing::info!(cx = %self.url, "heartbeat to CX restored");
                    failing = false;
                }
                Ok(()) => {}
                Err(e) if !failing => {
                    tracing::warn!(cx = %self.url, error = %e, "heartbeat to CX failed; retrying every interval");
                    failing = true;
                }
                Err(_) => {}
            }
        }
        tracing::info!("heartbeat stopped");
    }

    async fn beat(&self) -> anyhow::Result<()> {
        let a = transport::call(self.client.post(&self.url).json(&self.body)).await?;
        if !a.status.is_success() {
            bail!("CX answered {}: {}", a.status, a.error());
        }
        Ok(())
    }
}
