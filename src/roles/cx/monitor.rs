//! The CX's monitor: every `cx.trends_step` it samples what the nodes
//! report (pair views, machine figures) into the trends store and the
//! health report; every second (and at each host's heartbeat deadline) it
//! evaluates the alert rules. Also the read side: trends fetch and
//! `/metrics`.
//!
//! Invariants: a rate is a counter's difference between two samples over
//! the nominal step, so the points of a series add up, step by step, to
//! exactly what the counter counted; samples are stamped with the aligned
//! tick time (a multiple of the step).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use warp::http::StatusCode;
use warp::{Rejection, Reply};

use super::api::{ApiError, blocking};
use super::pairs::{PairView, host_names, pair_specs, pair_view};
use super::{CxState, HostRecord};
use crate::engine::shutdown::Shutdown;
use crate::engine::store::HOSTS;
use crate::engine::trends::{Cf, Sample, Trends};
use crate::util::now_ms;

/// Counter values of the previous sample.
#[derive(Default)]
struct Prev {
    at_ms: u64,
    /// The first sample of this CX process (0: none yet). A pair created
    /// after it has had its counters watched since they began at zero.
    first_ms: u64,
    /// pair → [captured, ps in, ps raw, ps out, applied, retention resets]
    pairs: HashMap<String, [Option<u64>; 6]>,
    /// host → [disk read, disk written, net rx, net tx] (data disk for disks)
    hosts: HashMap<String, [Option<u64>; 4]>,
}

pub struct Monitor {
    pub trends: Arc<Trends>,
    prev: Mutex<Prev>,
}

impl Monitor {
    pub fn new(trends: Trends) -> Monitor {
        Monitor {
            trends: Arc::new(trends),
            prev: Mutex::default(),
        }
    }
}

/// A counter since the last sample, for a counter known to have begun at
/// zero while the monitor watched (a pair created after the monitor's first
/// sample): seen for the first time, all of it counts, or a new pair's
/// first bytes, written before its agent's first report reached the CX,
/// would be missing from its trends and health report. Any other counter
/// seen for the first time (a host's totals since boot, a pair that existed
/// before this CX started) may hold bytes from before anyone watched, so
/// [`delta`] skips it rather than show them as one spike.
fn delta_from_zero(cur: Option<u64>, prev: Option<u64>) -> Option<u64> {
    match (cur, prev) {
        (Some(c), None) => Some(c),
        _ => delta(cur, prev),
    }
}

fn delta(cur: Option<u64>, prev: Option<u64>) -> Option<u64> {
    match (cur, prev) {
        (Some(c), Some(p)) if c >= p => Some(c - p),
        // The node restarted: its counter began again from zero.
        (Some(c), Some(_)) => Some(c),
        _ => None,
    }
}

/// "Mostly on the primary / PS / target / PS and target" (seed line 5414):
/// where the data in transit sits, if there is enough to matter.
pub fn bottleneck(agent: u64, ps: u64, mt: u64) -> Option<&'static str> {
    let total = agent + ps + mt;
    if total < 1 << 20 {
        return None;
    }
    let f = |x: u64| x as f64 / total as f64;
    Some(if f(agent) >= 0.6 {
        "primary"
    } else if f(ps) >= 0.6 {
        "ps"
    } else if f(mt) >= 0.6 {
        "target"
    } else if f(ps) + f(mt) >= 0.8 {
        "ps+target"
    } else {
        "spread"
    })
}

/// Is the pair protected right now (health report coverage)?
pub fn protected(v: &PairView) -> bool {
    matches!(v.state.as_str(), "differential-sync" | "bitmap") && v.latest_point.is_some()
}

/// One sampling step at tick `t_ms` (aligned to the step).
pub fn sample(s: &CxState, t_ms: u64) -> anyhow::Result<()> {
    let step_s = s.cfg.cx.trends_step.0.as_secs().max(1);
    let names = host_names(&s.store).map_err(|_| anyhow::anyhow!("cannot read hosts"))?;
    let specs = pair_specs(&s.store).map_err(|_| anyhow::anyhow!("cannot read pairs"))?;
    let mut prev = s.monitor.prev.lock().unwrap();
    if prev.first_ms == 0 {
        prev.first_ms = t_ms;
    }
    let dt_s = if prev.at_ms == 0 || t_ms <= prev.at_ms {
        None
    } else {
        Some((t_ms - prev.at_ms) as f64 / 1000.0)
    };
    let mut samples = Vec::new();
    let mut obs = Vec::new();
    let mut next_pairs = HashMap::new();
    for p in &specs {
        let v = pair_view(s, p, &names);
        let src = names
            .get(&p.source_host)
            .cloned()
            .unwrap_or_else(|| p.source_host.clone());
        let l = [("pair", p.name.as_str()), ("host", src.as_str())];
        let cur = [
            v.agent.as_ref().map(|a| a.bytes_captured),
            v.ps_status.as_ref().map(|x| x.bytes_in),
            v.ps_status.as_ref().map(|x| x.bytes_raw),
            v.ps_status.as_ref().map(|x| x.bytes_out),
            v.mt.as_ref().map(|m| m.bytes_applied),
            v.mt.as_ref().map(|m| m.retention_resets),
        ];
        let old = prev.pairs.get(&p.name).copied().unwrap_or_default();
        // Keep the last known counter while a node is silent: its bytes count
        // at the next sample that sees it.
        let mut keep = cur;
        for i in 0..6 {
            if keep[i].is_none() {
                keep[i] = old[i];
            }
        }
        next_pairs.insert(p.name.clone(), keep);
        let d: Vec<Option<u64>> = match p.created_ms > prev.first_ms {
            true => (0..6).map(|i| delta_from_zero(cur[i], old[i])).collect(),
            false => (0..6).map(|i| delta(cur[i], old[i])).collect(),
        };
        if let Some(r) = v.rpo_s {
            samples.push(Sample::new("pair_rpo_seconds", &l, r));
        }
        if dt_s.is_some() {
            for (i, m) in [
                (0, "pair_change_bytes_per_s"),
                (1, "pair_ps_in_bytes_per_s"),
                (2, "pair_ps_uncompressed_bytes_per_s"),
                (3, "pair_ps_out_bytes_per_s"),
                (4, "pair_apply_bytes_per_s"),
            ] {
                if let Some(x) = d[i] {
                    samples.push(Sample::new(m, &l, x as f64 / step_s as f64));
                }
            }
        }
        samples.push(Sample::new(
            "pair_transit_agent_bytes",
            &l,
            v.transit_agent_bytes as f64,
        ));
        samples.push(Sample::new(
            "pair_transit_ps_bytes",
            &l,
            v.transit_ps_bytes as f64,
        ));
        samples.push(Sample::new(
            "pair_transit_mt_bytes",
            &l,
            v.transit_mt_bytes as f64,
        ));
        if let Some(j) = v.journal_bytes {
            samples.push(Sample::new("pair_journal_bytes", &l, j as f64));
        }
        let available = v.retention_available_s();
        if let Some(a) = available {
            samples.push(Sample::new(
                "pair_retention_available_seconds",
                &l,
                a as f64,
            ));
        }
        if let Some(dt) = dt_s {
            obs.push((
                p.name.clone(),
                v.source.clone(),
                super::health::Observation {
                    dt_s: dt,
                    changed_bytes: d[0].unwrap_or(0),
                    changed_bytes_compressed: d[3].unwrap_or(0),
                    rpo_s: v.rpo_s,
                    rpo_threshold_s: p.rpo_threshold_s,
                    flow_controlled: v.flow_controlled,
                    protected: protected(&v),
                    retention_policy_s: p.retention.window.map_or(0, |w| w.as_secs()),
                    retention_available_s: available,
                    consistency_points: v.mt.as_ref().map(|m| m.bookmarks),
                    retention_reset: d[5].is_some_and(|x| x > 0) && old[5].is_some(),
                },
            ));
        }
    }
    // Hosts: their machines, and whether they are alive.
    let hosts = s
        .store
        .list::<HostRecord>(HOSTS)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut next_hosts = HashMap::new();
    for (id, h) in &hosts {
        let l = [("host", h.name.as_str())];
        let up = h
            .heartbeat_age_ms(t_ms)
            .is_some_and(|a| a <= h.overdue_ms(&s.cfg.cx));
        samples.push(Sample::new("host_up", &l, if up { 1.0 } else { 0.0 }));
        let Some(sys) = s.control.fresh_report(id, t_ms).and_then(|r| r.system) else {
            continue;
        };
        samples.push(Sample::new("host_load1", &l, sys.load1));
        samples.push(Sample::new("host_cpu_percent", &l, sys.cpu_pct));
        samples.push(Sample::new(
            "host_memory_used_bytes",
            &l,
            sys.mem_used_bytes as f64,
        ));
        samples.push(Sample::new(
            "host_process_rss_bytes",
            &l,
            sys.process_rss_bytes as f64,
        ));
        for d in &sys.disks {
            let m = d.mount.to_string_lossy();
            samples.push(Sample::new(
                "host_disk_free_bytes",
                &[("host", h.name.as_str()), ("disk", &m)],
                d.free_bytes as f64,
            ));
        }
        let dd = sys.data_disk();
        let cur = [
            dd.map(|d| d.read_bytes),
            dd.map(|d| d.written_bytes),
            Some(sys.net_rx_bytes),
            Some(sys.net_tx_bytes),
        ];
        let old = prev.hosts.get(id).copied().unwrap_or_default();
        next_hosts.insert(id.clone(), cur);
        if dt_s.is_some() {
            for (i, m) in [
                (0, "host_disk_read_bytes_per_s"),
                (1, "host_disk_write_bytes_per_s"),
                (2, "host_net_rx_bytes_per_s"),
                (3, "host_net_tx_bytes_per_s"),
            ] {
                if let Some(x) = delta(cur[i], old[i]) {
                    samples.push(Sample::new(m, &l, x as f64 / step_s as f64));
                }
            }
        }
    }
    prev.at_ms = t_ms;
    prev.pairs = next_pairs;
    prev.hosts = next_hosts;
    drop(prev);
    if !obs.is_empty() {
        s.store
            .update(|tx| -> Result<(), crate::engine::store::StoreError> {
                for (pair, source, o) in &obs {
                    super::health::record_in(tx, pair, source, t_ms, o)?;
                }
                Ok(())
            })
            .map_err(|e| anyhow::anyhow!("health report: {e}"))?;
    }
    s.monitor
        .trends
        .record((t_ms / 1000) as i64, &samples)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(())
}

/// The monitor task: samples every step, evaluates alerts every second and
/// at heartbeat deadlines, until shutdown.
pub async fn run(s: Arc<CxState>, mut sd: Shutdown) {
    let step_ms = s.cfg.cx.trends_step.0.as_millis().max(1000) as u64;
    let mut next_sample = (now_ms() / step_ms + 1) * step_ms;
    let mut failing = false;
    loop {
        let s2 = s.clone();
        let deadline =
            match tokio::task::spawn_blocking(move || super::alerts::evaluate(&s2, now_ms())).await
            {
                Ok(Ok(d)) => d,
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "alert evaluation failed");
                    None
                }
                Err(_) => None,
            };
        let now = now_ms();
        if now >= next_sample {
            let t = next_sample;
            // A late tick is taken once, at its own time; missed ones are skipped.
            next_sample = (now / step_ms + 1) * step_ms;
            let s2 = s.clone();
            match tokio::task::spawn_blocking(move || sample(&s2, t)).await {
                Ok(Ok(())) if failing => {
                    tracing::info!("trends sampling restored");
                    failing = false;
                }
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    if !failing {
                        tracing::warn!(error = %e, "trends sampling failed; retrying every step");
                        failing = true;
                    }
                }
                Err(e) => tracing::warn!(error = %e, "trends sampling panicked"),
            }
        }
        let now = now_ms();
        let mut wake = (now + 1000).min(next_sample);
        if let Some(d) = deadline
            && d > now
        {
            wake = wake.min(d + 1);
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(wake.saturating_sub(now_ms()).max(10))) => {}
            _ = sd.wait() => break,
        }
    }
    let t = s.monitor.trends.clone();
    let _ = tokio::task::spawn_blocking(move || t.close()).await;
    tracing::info!("monitor stopped");
}

// --- API: trends ---------------------------------------------------------------

#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct TrendsQuery {
    pub host: Option<String>,
    pub pair: Option<String>,
    /// now, -1h, Unix seconds, YYYY-MM-DD or RFC 3339 (default -1d).
    pub start: Option<String>,
    pub end: Option<String>,
    /// raw|1m|10m|1h or day|week|month|year (default: the finest covering start).
    pub resolution: Option<String>,
    /// avg (default) or max.
    pub cf: Option<String>,
}

/// What the trends store keeps.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TrendsIndex {
    pub metrics: Vec<String>,
    /// The tiers: resolution, how long each is kept.
    pub tiers: serde_json::Value,
}

/// Metric names the monitor records (for listings and clear errors).
pub const METRICS: &[&str] = &[
    "pair_rpo_seconds",
    "pair_change_bytes_per_s",
    "pair_ps_in_bytes_per_s",
    "pair_ps_uncompressed_bytes_per_s",
    "pair_ps_out_bytes_per_s",
    "pair_apply_bytes_per_s",
    "pair_transit_agent_bytes",
    "pair_transit_ps_bytes",
    "pair_transit_mt_bytes",
    "pair_journal_bytes",
    "pair_retention_available_seconds",
    "host_up",
    "host_load1",
    "host_cpu_percent",
    "host_memory_used_bytes",
    "host_process_rss_bytes",
    "host_disk_free_bytes",
    "host_disk_read_bytes_per_s",
    "host_disk_write_bytes_per_s",
    "host_net_rx_bytes_per_s",
    "host_net_tx_bytes_per_s",
];

pub async fn trends_list(
    _p: super::auth::Principal,
    s: Arc<CxState>,
) -> Result<impl Reply, Rejection> {
    Ok(warp::reply::json(&TrendsIndex {
        metrics: METRICS.iter().map(|m| m.to_string()).collect(),
        tiers: serde_json::to_value(s.monitor.trends.tiers()).unwrap_or_default(),
    }))
}

pub async fn trends_fetch(
    metric: String,
    _p: super::auth::Principal,
    q: TrendsQuery,
    s: Arc<CxState>,
) -> Result<impl Reply, Rejection> {
    let bad = |m: String| ApiError::reject(StatusCode::BAD_REQUEST, m);
    if !METRICS.contains(&metric.as_str()) {
        return Err(ApiError::reject(
            StatusCode::NOT_FOUND,
            format!(
                "no metric `{metric}`; known: {} (GET /api/v1/trends lists them)",
                METRICS.join(", ")
            ),
        ));
    }
    let now = (now_ms() / 1000) as i64;
    let start = crate::util::parse_time(q.start.as_deref().unwrap_or("-1d"), now).map_err(bad)?;
    let end = crate::util::parse_time(q.end.as_deref().unwrap_or("now"), now).map_err(bad)?;
    let cf: Cf = q.cf.as_deref().unwrap_or("avg").parse().map_err(bad)?;
    let v = blocking(move || {
        let mut filter = Vec::new();
        if let Some(h) = &q.host {
            // A host id is accepted for its name.
            let name = super::pairs::find_host(&s.store, h)
                .map(|r| r.name)
                .unwrap_or_else(|_| h.clone());
            filter.push(("host".to_owned(), name));
        }
        if let Some(p) = &q.pair {
            filter.push(("pair".to_owned(), p.clone()));
        }
        let tier = s
            .monitor
            .trends
            .tier(q.resolution.as_deref(), start, now)
            .map_err(|e| bad(e.to_string()))?;
        s.monitor
            .trends
            .fetch(&metric, &filter, start, end, tier, cf)
            .map_err(|e| match e {
                crate::engine::trends::TrendsError::Range { .. } => bad(e.to_string()),
                e => ApiError::internal(e),
            })
    })
    .await?;
    Ok(warp::reply::json(&v))
}

// --- /metrics ------------------------------------------------------------------

/// Everything the CX knows, in the Prometheus text format.
pub fn render_metrics(s: &CxState) -> Result<String, Rejection> {
    use crate::engine::metrics::{Exposition, node_report};
    let mut e = Exposition::new();
    let names = host_names(&s.store)?;
    e.gauge(
        "tern_build_info",
        "This CX's version",
        &[("version", crate::VERSION)],
        1.0,
    );
    let now = now_ms();
    for (id, h) in s
        .store
        .list::<HostRecord>(HOSTS)
        .map_err(ApiError::internal)?
    {
        let l = [("host", h.name.as_str()), ("host_id", id.as_str())];
        let age = h.heartbeat_age_ms(now);
        e.gauge(
            "tern_host_up",
            "1 while the host's heartbeats arrive in time",
            &l,
            if age.is_some_and(|a| a <= h.overdue_ms(&s.cfg.cx)) {
                1.0
            } else {
                0.0
            },
        );
        if let Some(a) = age {
            e.gauge(
                "tern_host_heartbeat_age_seconds",
                "Seconds since the host's last heartbeat",
                &l,
                a as f64 / 1000.0,
            );
        }
    }
    for (id, (_, r)) in s.control.reports() {
        let name = names.get(&id).cloned().unwrap_or(id);
        node_report(&mut e, &name, &r);
    }
    for p in pair_specs(&s.store)? {
        let v = pair_view(s, &p, &names);
        let l = [("pair", p.name.as_str())];
        if let Some(r) = v.rpo_s {
            e.gauge(
                "tern_pair_rpo_seconds",
                "Recovery point objective now",
                &l,
                r,
            );
        }
        e.gauge(
            "tern_pair_rpo_threshold_seconds",
            "The pair's RPO threshold",
            &l,
            p.rpo_threshold_s as f64,
        );
        e.gauge(
            "tern_pair_state",
            "1 for the pair's state (label state)",
            &[("pair", p.name.as_str()), ("state", v.state.as_str())],
            1.0,
        );
        for (stage, b) in [
            ("agent", v.transit_agent_bytes),
            ("ps", v.transit_ps_bytes),
            ("mt", v.transit_mt_bytes),
        ] {
            e.gauge(
                "tern_pair_transit_bytes",
                "Differential data in transit, per stage",
                &[("pair", p.name.as_str()), ("stage", stage)],
                b as f64,
            );
        }
    }
    let mut by_sev: HashMap<&'static str, u64> = HashMap::new();
    for a in super::alerts::active(&s.store)? {
        *by_sev.entry(a.severity.as_str()).or_default() += 1;
    }
    for sev in ["critical", "major", "minor", "warning", "info"] {
        e.gauge(
            "tern_alerts_active",
            "Active alerts, per severity",
            &[("severity", sev)],
            by_sev.get(sev).copied().unwrap_or(0) as f64,
        );
    }
    Ok(e.render())
}

pub async fn metrics(_p: super::auth::Principal, s: Arc<CxState>) -> Result<impl Reply, Rejection> {
    let body = blocking(move || render_metrics(&s)).await?;
    Ok(warp::reply::with_header(
        body,
        "content-type",
        "text/plain; version=0.0.4; charset=utf-8",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_counter_seen_first_counts_whole_only_if_it_began_while_watched() {
        assert_eq!(delta_from_zero(Some(5), None), Some(5));
        assert_eq!(delta(Some(5), None), None);
        for f in [delta_from_zero, delta] {
            assert_eq!(f(Some(9), Some(5)), Some(4));
            assert_eq!(f(Some(3), Some(5)), Some(3), "restarted from zero");
            assert_eq!(f(None, Some(5)), None, "silent: counted when it speaks");
            assert_eq!(f(None, None), None);
        }
    }
}
