//! Alerts: rules over what the CX knows (pair views, heartbeats, node
//! machine figures, certificates), their life cycle, and their delivery to
//! the NOC through the receivers (SNMP traps/informs, e-mail).
//!
//! Life cycle: a rule that holds raises an alert (one record in `alerts`,
//! notified once); while it holds the alert's `last_seen` moves and it is
//! notified again every `cx.alert_repeat` unless acknowledged; when the rule
//! no longer holds the alert is cleared and a clear notification goes out.
//!
//! Invariants:
//! - At most one active alert per key (rule + subject).
//! - A rule whose inputs are unknown (the CX has no fresh report for a pair)
//!   neither raises nor clears: an alert is cleared only by evidence.
//! - Heartbeat loss is judged only after the CX has been up long enough to
//!   have heard from every live node (its own restart is no evidence).
//! - Notifications leave through one bounded queue to one dispatcher task; a
//!   full queue drops (and logs) rather than blocking evaluation.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use warp::http::StatusCode;
use warp::{Rejection, Reply};

use super::api::{ApiError, ApiErrorWrap, blocking};
use super::monitor::bottleneck;
use super::pairs::{host_names, pair_specs, pair_view};
use super::{CxState, HostRecord};
use crate::engine::notify::{self, Event, Kind, Severity, Target};
use crate::engine::shutdown::Shutdown;
use crate::engine::store::{self, ALERTS, HOSTS, META, RECEIVERS, Store, StoreError};
use crate::util::{now_ms, rfc3339_ms};

/// An alert as stored and shown.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AlertRecord {
    pub id: u64,
    pub key: String,
    pub rule: String,
    pub severity: Severity,
    pub host: String,
    pub pair: String,
    pub message: String,
    pub action: String,
    /// active | cleared
    pub state: String,
    pub first_seen_ms: u64,
    pub last_seen_ms: u64,
    pub cleared_ms: Option<u64>,
    /// Notifications sent (raise, repeats, clear).
    pub count: u32,
    pub last_notified_ms: u64,
    pub acked_by: Option<String>,
    pub acked_ms: Option<u64>,
}

impl AlertRecord {
    fn event(&self, kind: Kind, source: &str) -> Event {
        Event {
            kind,
            alert_id: self.id,
            rule: self.rule.clone(),
            severity: self.severity,
            host: self.host.clone(),
            pair: self.pair.clone(),
            message: self.message.clone(),
            action: self.action.clone(),
            first_seen_ms: self.first_seen_ms,
            count: self.count,
            source: source.to_owned(),
        }
    }
}

/// A rule that holds now.
#[derive(Debug, Clone, PartialEq)]
pub struct Condition {
    pub key: String,
    pub rule: &'static str,
    pub severity: Severity,
    pub host: String,
    pub pair: String,
    pub message: String,
    pub action: String,
}

/// A notification receiver as stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Receiver {
    pub id: String,
    pub target: Target,
    /// SMTP password (never shown by the API).
    pub password: Option<String>,
    pub created_ms: u64,
    pub sent: u64,
    pub last_ok_ms: Option<u64>,
    pub last_error: Option<String>,
    pub last_digest_ms: Option<u64>,
}

/// A receiver as the API shows it (never its password).
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ReceiverView {
    pub id: String,
    pub url: String,
    /// snmp, snmp-inform or smtp
    pub kind: String,
    pub digest: bool,
    pub has_password: bool,
    pub created: String,
    pub sent: u64,
    pub last_ok: Option<String>,
    pub last_error: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ReceiverList {
    pub receivers: Vec<ReceiverView>,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Removed {
    pub removed: String,
}

/// What sending to one receiver did.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Outcome {
    pub id: String,
    pub url: String,
    pub ok: bool,
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Outcomes {
    pub results: Vec<Outcome>,
}

/// An alert with its times as RFC 3339 beside the Unix ms.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AlertView {
    #[serde(flatten)]
    pub alert: AlertRecord,
    pub first_seen: String,
    pub last_seen: String,
    pub cleared: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AlertList {
    pub alerts: Vec<AlertView>,
}

impl Receiver {
    fn view(&self) -> ReceiverView {
        let (kind, digest) = match &self.target {
            Target::Snmp { inform, .. } => (if *inform { "snmp-inform" } else { "snmp" }, false),
            Target::Smtp { digest, .. } => ("smtp", *digest),
        };
        ReceiverView {
            id: self.id.clone(),
            url: self.target.url(),
            kind: kind.into(),
            digest,
            has_password: self.password.is_some(),
            created: rfc3339_ms(self.created_ms),
            sent: self.sent,
            last_ok: self.last_ok_ms.map(rfc3339_ms),
            last_error: self.last_error.clone(),
        }
    }
}

/// The sending side, held by the CX state.
pub struct Alerts {
    tx: mpsc::Sender<Event>,
}

impl Alerts {
    /// The queue and its receiving end (for [`dispatcher`]).
    pub fn new() -> (Alerts, mpsc::Receiver<Event>) {
        let (tx, rx) = mpsc::channel(256);
        (Alerts { tx }, rx)
    }

    fn queue(&self, ev: Event) {
        if let Err(e) = self.tx.try_send(ev) {
            tracing::warn!(error = %e, "notification queue full or closed; a notification was dropped");
        }
    }
}

fn alert_key(id: u64) -> String {
    format!("{id:012}")
}

/// Active alerts, oldest first.
pub fn active(store: &Store) -> Result<Vec<AlertRecord>, Rejection> {
    Ok(store
        .list::<AlertRecord>(ALERTS)
        .map_err(ApiError::internal)?
        .into_iter()
        .map(|(_, a)| a)
        .filter(|a| a.state == "active")
        .collect())
}

use crate::util::human_bytes as human;

/// The rules: what holds now, which subjects are unknown (their alerts
/// stay as they are), and the earliest heartbeat deadline still ahead.
pub fn rules(
    s: &CxState,
    now: u64,
) -> anyhow::Result<(Vec<Condition>, HashSet<String>, Option<u64>)> {
    let cfg = &s.cfg;
    let mut out = Vec::new();
    let mut unknown = HashSet::new();
    let mut next_deadline: Option<u64> = None;
    let names = host_names(&s.store).map_err(|_| anyhow::anyhow!("cannot read hosts"))?;
    let hosts = s.store.list::<HostRecord>(HOSTS)?;
    let up_ms = now.saturating_sub(s.started_ms);
    for (id, h) in &hosts {
        let overdue = h.overdue_ms(&cfg.cx);
        let roles: Vec<&str> = h.roles.iter().map(|r| r.as_str()).collect();
        match h.heartbeat_age_ms(now) {
            Some(age) if age > overdue && up_ms > overdue && *id != s.host_id => {
                out.push(Condition {
                    key: format!("heartbeat-lost/{id}"),
                    rule: "heartbeat-lost",
                    severity: Severity::Critical,
                    host: h.name.clone(),
                    pair: String::new(),
                    message: format!(
                        "host {} ({}) sent no heartbeat for {:.0} s (expected every {:.0} s); its pairs are not protected meanwhile",
                        h.name,
                        roles.join(","),
                        age as f64 / 1000.0,
                        h.heartbeat_interval_ms.unwrap_or(10_000) as f64 / 1000.0
                    ),
                    action: format!(
                        "check that tern runs on {} (systemctl status tern) and reaches this CX on its API port",
                        h.name
                    ),
                });
            }
            Some(age) if age <= overdue => {
                let d = now + (overdue - age);
                next_deadline = Some(next_deadline.map_or(d, |x: u64| x.min(d)));
            }
            _ => {
                if up_ms <= overdue {
                    unknown.insert(format!("heartbeat-lost/{id}"));
                }
            }
        }
        if let Some(na) = h.cert_not_after {
            let left_s = na - (now / 1000) as i64;
            if left_s < cfg.cx.alert_cert_expiry.0.as_secs() as i64 {
                out.push(Condition {
                    key: format!("cert-expiry/{id}"),
                    rule: "cert-expiry",
                    severity: if left_s < 7 * 86_400 {
                        Severity::Major
                    } else {
                        Severity::Warning
                    },
                    host: h.name.clone(),
                    pair: String::new(),
                    message: format!(
                        "the certificate of host {} expires {} ({} days)",
                        h.name,
                        rfc3339_ms((na.max(0) as u64) * 1000),
                        left_s / 86_400
                    ),
                    action: format!(
                        "re-enroll {} with a new token (`tern token create`, then `tern enroll` on it) before then",
                        h.name
                    ),
                });
            }
        }
        match s.control.fresh_report(id, now) {
            Some(r) => {
                if let Some(d) = r.system.as_ref().and_then(|x| x.data_disk())
                    && d.total_bytes > 0
                {
                    let pct = 100.0 * d.free_bytes as f64 / d.total_bytes as f64;
                    if pct < cfg.cx.alert_disk_free_pct {
                        out.push(Condition {
                            key: format!("disk-free/{id}"),
                            rule: "disk-free",
                            severity: if pct < cfg.cx.alert_disk_free_pct / 2.0 {
                                Severity::Critical
                            } else {
                                Severity::Major
                            },
                            host: h.name.clone(),
                            pair: String::new(),
                            message: format!(
                                "{} has {:.1}% free on {} ({} of {}), which holds its caches and journals",
                                h.name,
                                pct,
                                d.mount.display(),
                                human(d.free_bytes),
                                human(d.total_bytes)
                            ),
                            action: "free space or grow the disk; journals stop or drop history (per policy) and PS caches throttle agents when it fills".into(),
                        });
                    }
                }
            }
            None => {
                unknown.insert(format!("disk-free/{id}"));
            }
        }
    }
    if let Some(na) = crate::engine::pki::not_after_unix(&s.ca.cert_der) {
        let left_s = na - (now / 1000) as i64;
        if left_s < cfg.cx.alert_cert_expiry.0.as_secs() as i64 {
            out.push(Condition {
                key: "ca-expiry".into(),
                rule: "cert-expiry",
                severity: Severity::Critical,
                host: cfg.node_name(),
                pair: String::new(),
                message: format!(
                    "the CX's certificate authority expires {}: every node certificate stops working then",
                    rfc3339_ms((na.max(0) as u64) * 1000)
                ),
                action: "plan a new CA and re-enroll every node before then".into(),
            });
        }
    }
    for p in pair_specs(&s.store).map_err(|_| anyhow::anyhow!("cannot read pairs"))? {
        let v = pair_view(s, &p, &names);
        let src_name = names
            .get(&p.source_host)
            .cloned()
            .unwrap_or_else(|| p.source_host.clone());
        let mk =
            |rule: &'static str, severity: Severity, message: String, action: String| Condition {
                key: format!("{rule}/{}", p.name),
                rule,
                severity,
                host: src_name.clone(),
                pair: p.name.clone(),
                message,
                action,
            };
        if v.status_as_of_ms.is_none() || v.mt.is_none() || v.agent.is_none() {
            // No fresh word from some of its nodes: their heartbeat alerts
            // speak; this pair's alerts stay as they are.
            for r in [
                "rpo",
                "bitmap-mode",
                "resync-required",
                "flow-controlled",
                "retention-window",
                "retention-space",
                "retention-stopped",
                "retention-reset",
                "pair-error",
            ] {
                unknown.insert(format!("{r}/{}", p.name));
            }
            continue;
        }
        if p.paused {
            continue;
        }
        if let (Some(r), Some(false)) = (v.rpo_s, v.rpo_ok) {
            let hint = match bottleneck(
                v.transit_agent_bytes,
                v.transit_ps_bytes,
                v.transit_mt_bytes,
            ) {
                Some("primary") => {
                    "most data in transit is on the source: check the source host, its LAN and the PS's health"
                }
                Some("ps") => {
                    "most data in transit is on the PS: check the WAN link, the PS's bandwidth schedule and its CPU"
                }
                Some("target") => {
                    "most data in transit is on the MT: check the MT's storage and CPU"
                }
                Some("ps+target") => {
                    "data waits on the PS and the MT: small writes, poor compression or slow draining at the target"
                }
                _ => {
                    "check the link between agent, PS and MT (`tern pair show` tells where the data waits)"
                }
            };
            out.push(mk(
                "rpo",
                Severity::Major,
                format!(
                    "RPO {:.0} s exceeds the threshold {} s (in transit: agent {}, PS {}, MT {})",
                    r,
                    p.rpo_threshold_s,
                    human(v.transit_agent_bytes),
                    human(v.transit_ps_bytes),
                    human(v.transit_mt_bytes)
                ),
                hint.to_owned(),
            ));
        }
        match v.state.as_str() {
            "bitmap" => out.push(mk(
                "bitmap-mode",
                Severity::Warning,
                format!(
                    "the agent's buffer is full: it only marks changed blocks ({} dirty); recovery points stop until it drains",
                    human(v.agent.as_ref().map_or(0, |a| a.dirty_bytes))
                ),
                "check the PS and the link to it; the pair drains back to differential sync by itself once it can send".into(),
            )),
            "resync-required" => out.push(mk(
                "resync-required",
                Severity::Major,
                "changes were lost on the source (agent crash or unclean stop): the replica needs a resync".into(),
                format!(
                    "it starts after agent.auto_resync_delay inside agent.resync_window; or run `tern pair resync {}` now",
                    p.name
                ),
            )),
            _ => {}
        }
        if v.flow_controlled {
            out.push(mk(
                "flow-controlled",
                Severity::Warning,
                format!(
                    "the PS throttles this pair: its cache ({}) is over its threshold (data flow controlled)",
                    human(v.transit_ps_bytes)
                ),
                "the PS cannot forward fast enough: check the WAN bandwidth schedule and the MT; or raise ps.differential_threshold if the PS disk allows".into(),
            ));
        }
        if let Some(w) = p.retention.window
            && let Some(avail) = v.retention_available_s()
        {
            let age_s = now.saturating_sub(p.created_ms) / 1000;
            if age_s > w.as_secs() + 3600 && (avail as f64) < 0.9 * w.as_secs() as f64 {
                out.push(mk(
                    "retention-window",
                    Severity::Warning,
                    format!(
                        "the journal holds {:.1} h of history; the policy asks for {:.1} h",
                        avail as f64 / 3600.0,
                        w.as_secs() as f64 / 3600.0
                    ),
                    "the space limit cut the window: give the journal more space (max_bytes) or shorten the policy".into(),
                ));
            }
        }
        if let Some(why) = &v.stopped {
            out.push(mk(
                "retention-stopped",
                Severity::Critical,
                format!("no new recovery points: {why}"),
                format!(
                    "free space on {}'s retention disk, or raise the pair's limit (mt.keep_free, the policy's max_bytes); replication resumes by itself, and every point listed by `tern pair points {}` stays recoverable meanwhile",
                    names.get(&p.target_host).map(String::as_str).unwrap_or(p.target_host.as_str()),
                    p.name
                ),
            ));
        }
        if let Some(m) = &v.mt
            && let Some(r) = m.last_reset
            && p.retention
                .window
                .is_some_and(|w| now * 1000 < r.at_us + w.as_micros() as u64)
        {
            out.push(mk(
                "retention-reset",
                Severity::Major,
                format!(
                    "the retention disk filled (last at {}): the oldest points were dropped inside the {} window; history now starts at {} ({} of history lost, {} resets so far)",
                    rfc3339_ms(r.at_us / 1000),
                    humantime::format_duration(p.retention.window.unwrap_or_default()),
                    rfc3339_ms(r.to_ts_us / 1000),
                    humantime::format_duration(Duration::from_millis(
                        r.to_ts_us.saturating_sub(r.from_ts_us) / 1000
                    )),
                    m.retention_resets
                ),
                "give the journal more space (a bigger retention disk, or lower mt.keep_free) or shorten the policy's window".into(),
            ));
        }
        if let (Some(max), Some(j)) = (
            v.mt.as_ref()
                .and_then(|m| m.space_limit_bytes)
                .or(p.retention.max_bytes),
            v.journal_bytes,
        ) && max > 0
            && 100.0 * j as f64 / max as f64 > s.cfg.cx.alert_retention_space_pct
        {
            out.push(mk(
                "retention-space",
                Severity::Warning,
                format!(
                    "the journal uses {} of its {} limit",
                    human(j),
                    human(max)
                ),
                "give the journal more room (a bigger retention disk, a higher max_bytes if the pair sets one, a lower mt.keep_free) or shorten its retention; at the limit the policy drops history or stops".into(),
            ));
        }
        if let Some(e) = v.errors.first() {
            out.push(mk(
                "pair-error",
                Severity::Major,
                e.clone(),
                "see the log of the host named in the message".into(),
            ));
        }
    }
    Ok((out, unknown, next_deadline))
}

/// An active alert's `last_seen` (and message) is stored at most this often.
const LAST_SEEN_EVERY_MS: u64 = 10_000;
/// Cleared alerts are kept this long.
const HISTORY_MS: u64 = 30 * 86_400_000;

/// Evaluate the rules now, update the alerts, queue the notifications.
/// Returns the next heartbeat deadline, when the monitor should look again.
pub fn evaluate(s: &CxState, now: u64) -> anyhow::Result<Option<u64>> {
    let (conds, unknown, deadline) = rules(s, now)?;
    let repeat = s.cfg.cx.alert_repeat.0.as_millis() as u64;
    let source = s.cfg.node_name();
    // Most evaluations change nothing worth a commit (an fsync): look first.
    let all: Vec<AlertRecord> = s
        .store
        .list::<AlertRecord>(ALERTS)?
        .into_iter()
        .map(|(_, a)| a)
        .collect();
    let active: HashMap<&str, &AlertRecord> = all
        .iter()
        .filter(|a| a.state == "active")
        .map(|a| (a.key.as_str(), a))
        .collect();
    let holding: HashSet<&str> = conds.iter().map(|c| c.key.as_str()).collect();
    let need_write = conds.iter().any(|c| match active.get(c.key.as_str()) {
        None => true,
        Some(a) => {
            a.severity != c.severity
                || now.saturating_sub(a.last_seen_ms) >= LAST_SEEN_EVERY_MS
                || (repeat > 0
                    && a.acked_ms.is_none()
                    && now.saturating_sub(a.last_notified_ms) >= repeat)
        }
    }) || active
        .keys()
        .any(|k| !holding.contains(k) && !unknown.contains(*k))
        || all.iter().any(|a| {
            a.cleared_ms
                .is_some_and(|c| now.saturating_sub(c) > HISTORY_MS)
        });
    if !need_write {
        return Ok(deadline);
    }
    let events = s.store.update(|tx| -> Result<Vec<Event>, StoreError> {
        let mut events = Vec::new();
        let mut by_key: HashMap<String, AlertRecord> = store::list_in::<AlertRecord>(tx, ALERTS)?
            .into_iter()
            .filter(|(_, a)| a.state == "active")
            .map(|(_, a)| (a.key.clone(), a))
            .collect();
        let mut seen = HashSet::new();
        for c in conds {
            seen.insert(c.key.clone());
            match by_key.remove(&c.key) {
                Some(mut a) => {
                    a.last_seen_ms = now;
                    a.message = c.message;
                    a.severity = c.severity;
                    let due = repeat > 0
                        && a.acked_ms.is_none()
                        && now.saturating_sub(a.last_notified_ms) >= repeat;
                    if due {
                        a.count += 1;
                        a.last_notified_ms = now;
                        events.push(a.event(Kind::Repeat, &source));
                    }
                    store::put_in(tx, ALERTS, &alert_key(a.id), &a)?;
                }
                None => {
                    let id = store::get_in::<u64>(tx, META, "alert_seq")?.unwrap_or(0) + 1;
                    store::put_in(tx, META, "alert_seq", &id)?;
                    let a = AlertRecord {
                        id,
                        key: c.key,
                        rule: c.rule.to_owned(),
                        severity: c.severity,
                        host: c.host,
                        pair: c.pair,
                        message: c.message,
                        action: c.action,
                        state: "active".into(),
                        first_seen_ms: now,
                        last_seen_ms: now,
                        cleared_ms: None,
                        count: 1,
                        last_notified_ms: now,
                        acked_by: None,
                        acked_ms: None,
                    };
                    tracing::warn!(alert = a.id, rule = %a.rule, host = %a.host, pair = %a.pair, message = %a.message, "alert raised");
                    events.push(a.event(Kind::Raised, &source));
                    store::put_in(tx, ALERTS, &alert_key(a.id), &a)?;
                }
            }
        }
        for (k, mut a) in by_key {
            if seen.contains(&k) || unknown.contains(&k) {
                continue;
            }
            a.state = "cleared".into();
            a.cleared_ms = Some(now);
            a.count += 1;
            a.last_notified_ms = now;
            tracing::info!(alert = a.id, rule = %a.rule, host = %a.host, pair = %a.pair, "alert cleared");
            events.push(a.event(Kind::Cleared, &source));
            store::put_in(tx, ALERTS, &alert_key(a.id), &a)?;
        }
        // History: cleared alerts older than 30 days go.
        let old: Vec<String> = store::list_in::<AlertRecord>(tx, ALERTS)?
            .into_iter()
            .filter(|(_, a)| {
                a.cleared_ms
                    .is_some_and(|c| now.saturating_sub(c) > HISTORY_MS)
            })
            .map(|(k, _)| k)
            .collect();
        for k in old {
            store::remove_in(tx, ALERTS, &k)?;
        }
        Ok(events)
    })?;
    for e in events {
        s.alerts.queue(e);
    }
    Ok(deadline)
}

/// Deliver `ev` to `receivers` concurrently; record each outcome.
async fn deliver_all(
    s: &Arc<CxState>,
    receivers: Vec<Receiver>,
    ev: &Event,
) -> Vec<(String, String, Result<(), String>)> {
    let uptime_cs = ((now_ms().saturating_sub(s.started_ms)) / 10).min(u32::MAX as u64) as u32;
    let futs = receivers.iter().map(|r| async move {
        let res = tokio::time::timeout(
            Duration::from_secs(30),
            notify::deliver(&r.target, r.password.as_deref(), ev, uptime_cs),
        )
        .await
        .unwrap_or_else(|_| Err("timed out after 30 s".into()));
        (r.id.clone(), r.target.url(), res)
    });
    let results = futures_util::future::join_all(futs).await;
    record_outcomes(s, &results).await;
    results
}

async fn record_outcomes(s: &Arc<CxState>, results: &[(String, String, Result<(), String>)]) {
    let s2 = s.clone();
    let res: Vec<(String, Result<(), String>)> = results
        .iter()
        .map(|(i, _, r)| (i.clone(), r.clone()))
        .collect();
    for (id, r) in &res {
        if let Err(e) = r {
            tracing::warn!(receiver = %id, error = %e, "notification not delivered");
        }
    }
    let _ = tokio::task::spawn_blocking(move || {
        s2.store.update(|tx| -> Result<(), StoreError> {
            let now = now_ms();
            for (id, r) in &res {
                if let Some(mut rc) = store::get_in::<Receiver>(tx, RECEIVERS, id)? {
                    match r {
                        Ok(()) => {
                            rc.sent += 1;
                            rc.last_ok_ms = Some(now);
                            rc.last_error = None;
                        }
                        Err(e) => rc.last_error = Some(format!("{}: {e}", rfc3339_ms(now))),
                    }
                    store::put_in(tx, RECEIVERS, id, &rc)?;
                }
            }
            Ok(())
        })
    })
    .await;
}

fn receivers(s: &CxState) -> Vec<Receiver> {
    s.store
        .list::<Receiver>(RECEIVERS)
        .map(|v| v.into_iter().map(|(_, r)| r).collect())
        .unwrap_or_default()
}

/// Send the daily digests that are due (all digest receivers if `force`).
async fn digests(s: &Arc<CxState>, force: bool) -> Vec<(String, String, Result<(), String>)> {
    let now = now_ms();
    let at_min = crate::util::parse_hhmm(&s.cfg.cx.digest_at).unwrap_or(8 * 60) as u64;
    let today_at = now / 86_400_000 * 86_400_000 + at_min * 60_000;
    let last_due = if now >= today_at {
        today_at
    } else {
        today_at - 86_400_000
    };
    let s2 = s.clone();
    let (due, alerts): (Vec<Receiver>, Vec<AlertRecord>) = tokio::task::spawn_blocking(move || {
        let due = receivers(&s2)
            .into_iter()
            .filter(|r| matches!(r.target, Target::Smtp { digest: true, .. }))
            .filter(|r| force || r.last_digest_ms.unwrap_or(r.created_ms) < last_due)
            .collect();
        let alerts = s2
            .store
            .list::<AlertRecord>(ALERTS)
            .map(|v| v.into_iter().map(|(_, a)| a).collect())
            .unwrap_or_default();
        (due, alerts)
    })
    .await
    .unwrap_or_default();
    let source = s.cfg.node_name();
    let mut results = Vec::new();
    for r in due {
        let from = r
            .last_digest_ms
            .unwrap_or_else(|| now.saturating_sub(86_400_000));
        let lines: Vec<notify::mail::DigestLine> = alerts
            .iter()
            .filter(|a| a.state == "active" || a.last_seen_ms >= from)
            .map(|a| notify::mail::DigestLine {
                event: a.event(Kind::Raised, &source),
                state: a.state.clone(),
                last_seen_ms: a.last_seen_ms,
            })
            .collect();
        let res = notify::mail::send_digest(
            &r.target,
            r.password.as_deref(),
            &source,
            (from, now),
            &lines,
        )
        .await;
        if res.is_ok() {
            let s2 = s.clone();
            let id = r.id.clone();
            let _ = tokio::task::spawn_blocking(move || {
                s2.store.update(|tx| -> Result<(), StoreError> {
                    if let Some(mut rc) = store::get_in::<Receiver>(tx, RECEIVERS, &id)? {
                        rc.last_digest_ms = Some(now);
                        store::put_in(tx, RECEIVERS, &id, &rc)?;
                    }
                    Ok(())
                })
            })
            .await;
        }
        results.push((r.id.clone(), r.target.url(), res));
    }
    record_outcomes(s, &results).await;
    results
}

/// The one task that talks to the NOC: drains the queue in order; sends
/// daily digests when due.
pub async fn dispatcher(s: Arc<CxState>, mut rx: mpsc::Receiver<Event>, mut sd: Shutdown) {
    let mut tick = tokio::time::interval(Duration::from_secs(60));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            ev = rx.recv() => {
                let Some(ev) = ev else { break };
                let s2 = s.clone();
                let rs: Vec<Receiver> = tokio::task::spawn_blocking(move || receivers(&s2))
                    .await
                    .unwrap_or_default()
                    .into_iter()
                    .filter(|r| !matches!(r.target, Target::Smtp { digest: true, .. }))
                    .collect();
                if !rs.is_empty() {
                    deliver_all(&s, rs, &ev).await;
                }
            }
            _ = tick.tick() => {
                digests(&s, false).await;
            }
            _ = sd.wait() => break,
        }
    }
    tracing::info!("alert dispatcher stopped");
}

// --- API ------------------------------------------------------------------------

#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct ListQuery {
    /// Include cleared alerts (newest first, at most 500).
    pub all: Option<bool>,
}

pub async fn list(
    _p: super::auth::Principal,
    q: ListQuery,
    s: Arc<CxState>,
) -> Result<impl Reply, Rejection> {
    let v = blocking(move || {
        let mut v: Vec<AlertRecord> = s
            .store
            .list::<AlertRecord>(ALERTS)
            .map_err(ApiError::internal)?
            .into_iter()
            .map(|(_, a)| a)
            .filter(|a| q.all.unwrap_or(false) || a.state == "active")
            .collect();
        v.reverse();
        v.truncate(500);
        Ok(v)
    })
    .await?;
    let alerts: Vec<AlertView> = v
        .into_iter()
        .map(|a| AlertView {
            first_seen: rfc3339_ms(a.first_seen_ms),
            last_seen: rfc3339_ms(a.last_seen_ms),
            cleared: a.cleared_ms.map(rfc3339_ms),
            alert: a,
        })
        .collect();
    Ok(warp::reply::json(&AlertList { alerts }))
}

pub async fn ack(
    id: String,
    p: super::auth::Principal,
    s: Arc<CxState>,
) -> Result<impl Reply, Rejection> {
    let id: u64 = id.parse().map_err(|_| {
        ApiError::reject(
            StatusCode::NOT_FOUND,
            format!("no alert `{id}`: alert ids are numbers (`tern alert list`)"),
        )
    })?;
    let a = blocking(move || {
        s.store
            .update(|tx| -> Result<AlertRecord, ApiErrorWrap> {
                let Some(mut a) = store::get_in::<AlertRecord>(tx, ALERTS, &alert_key(id))? else {
                    return Err(ApiErrorWrap(ApiError::reject(
                        StatusCode::NOT_FOUND,
                        format!("no alert {id}; `tern alert list --all` shows them"),
                    )));
                };
                a.acked_by = Some(p.user.clone());
                a.acked_ms = Some(now_ms());
                store::put_in(tx, ALERTS, &alert_key(id), &a)?;
                Ok(a)
            })
            .map_err(|e| e.0)
    })
    .await?;
    Ok(warp::reply::json(&a))
}

fn outcome_json(results: Vec<(String, String, Result<(), String>)>) -> Outcomes {
    Outcomes {
        results: results
            .into_iter()
            .map(|(id, url, r)| Outcome {
                id,
                url,
                ok: r.is_ok(),
                error: r.err(),
            })
            .collect(),
    }
}

/// Send a test notification to every receiver, now; say what happened.
pub async fn test(_p: super::auth::Principal, s: Arc<CxState>) -> Result<impl Reply, Rejection> {
    let s2 = s.clone();
    let rs = blocking(move || Ok(receivers(&s2))).await?;
    let ev = Event {
        kind: Kind::Test,
        alert_id: 0,
        rule: "test".into(),
        severity: Severity::Info,
        host: s.cfg.node_name(),
        pair: String::new(),
        message: format!(
            "test notification from the Tern CX on {}",
            s.cfg.node_name()
        ),
        action: String::new(),
        first_seen_ms: now_ms(),
        count: 1,
        source: s.cfg.node_name(),
    };
    let results = deliver_all(&s, rs, &ev).await;
    Ok(warp::reply::json(&outcome_json(results)))
}

/// Send every digest receiver its digest now.
pub async fn digest_now(
    _p: super::auth::Principal,
    s: Arc<CxState>,
) -> Result<impl Reply, Rejection> {
    let results = digests(&s, true).await;
    Ok(warp::reply::json(&outcome_json(results)))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AddReceiver {
    pub url: String,
    #[serde(default)]
    pub password: Option<String>,
}

pub async fn receivers_list(
    _p: super::auth::Principal,
    s: Arc<CxState>,
) -> Result<impl Reply, Rejection> {
    let v = blocking(move || Ok(receivers(&s))).await?;
    Ok(warp::reply::json(&ReceiverList {
        receivers: v.iter().map(Receiver::view).collect(),
    }))
}

pub async fn receivers_add(
    _p: super::auth::Principal,
    req: AddReceiver,
    s: Arc<CxState>,
) -> Result<impl Reply, Rejection> {
    let target =
        Target::parse(&req.url).map_err(|e| ApiError::reject(StatusCode::BAD_REQUEST, e))?;
    if let Target::Smtp { ca: Some(ca), .. } = &target
        && !ca.is_absolute()
    {
        return Err(ApiError::reject(
            StatusCode::BAD_REQUEST,
            format!("ca={}: give an absolute path on the CX host", ca.display()),
        ));
    }
    let r = Receiver {
        id: uuid::Uuid::new_v4().simple().to_string()[..8].to_owned(),
        target,
        password: req.password.filter(|p| !p.is_empty()),
        created_ms: now_ms(),
        sent: 0,
        last_ok_ms: None,
        last_error: None,
        last_digest_ms: None,
    };
    let r2 = r.clone();
    blocking(move || {
        s.store
            .put(RECEIVERS, &r2.id, &r2)
            .map_err(ApiError::internal)
    })
    .await?;
    tracing::info!(receiver = %r.id, url = %r.target.url(), "alert receiver added");
    Ok(warp::reply::with_status(
        warp::reply::json(&r.view()),
        StatusCode::CREATED,
    ))
}

pub async fn receivers_remove(
    id: String,
    _p: super::auth::Principal,
    s: Arc<CxState>,
) -> Result<impl Reply, Rejection> {
    let i2 = id.clone();
    let removed =
        blocking(move || s.store.remove(RECEIVERS, &i2).map_err(ApiError::internal)).await?;
    if !removed {
        return Err(ApiError::reject(
            StatusCode::NOT_FOUND,
            format!("no receiver `{id}`; `tern alert receiver list` shows them"),
        ));
    }
    Ok(warp::reply::json(&Removed { removed: id }))
}
