//! The health report: one row per protected volume per UTC day, with the
//! seed's columns (seed line 5425): data changes with and without
//! compression, retention window policy vs available, RPO threshold vs max,
//! hours RPO not met, hours data flow controlled, retention log reset,
//! available consistency points, protection coverage.
//!
//! Rows live in the CX's redb (`health_days`, key `PAIR/YYYY-MM-DD`) and are
//! accumulated by the monitor at every trends step from the same pair views
//! the API shows, so the report and `pair list` never disagree. Counters are
//! differences of the nodes' byte counters between two samples (a restarted
//! node's counter starting again from zero is taken as new bytes).
//!
//! Definitions (also in the README):
//! - *data changes without compression*: bytes written to the source
//!   volume (captured by the agent); *with compression*: bytes the PS sent
//!   on to the MT, i.e. what crossed the WAN.
//! - *protection coverage*: the share of the observed time in which the
//!   pair was replicating normally (differential sync or bitmap drain, not
//!   resyncing, paused or waiting for a resync) with a recoverable point.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use warp::http::StatusCode;
use warp::{Rejection, Reply};

use super::CxState;
use super::api::{ApiError, blocking};
use crate::engine::store::HEALTH;
use crate::util::{now_ms, parse_date, utc_date};

/// One pair, one UTC day.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct HealthDay {
    pub pair: String,
    pub date: String,
    pub source: String,
    /// Bytes written at the source (without compression).
    pub changed_bytes: u64,
    /// Bytes sent to the MT after compression.
    pub changed_bytes_compressed: u64,
    pub retention_policy_s: u64,
    /// Window between the oldest and latest recoverable points, as last seen.
    pub retention_available_s: u64,
    pub rpo_threshold_s: u64,
    pub rpo_max_s: f64,
    pub rpo_not_met_s: f64,
    pub flow_controlled_s: f64,
    pub retention_reset: bool,
    /// Bookmarks inside the retention window, as last seen.
    pub consistency_points: u64,
    /// Seconds the CX watched this pair this day.
    pub observed_s: f64,
    /// Seconds of that in which it was protected (see the module doc).
    pub protected_s: f64,
}

/// What the monitor saw of a pair over one step.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Observation {
    pub dt_s: f64,
    pub changed_bytes: u64,
    pub changed_bytes_compressed: u64,
    pub rpo_s: Option<f64>,
    pub rpo_threshold_s: u64,
    pub flow_controlled: bool,
    pub protected: bool,
    pub retention_policy_s: u64,
    pub retention_available_s: Option<u64>,
    pub consistency_points: Option<u64>,
    pub retention_reset: bool,
}

impl HealthDay {
    pub fn observe(&mut self, o: &Observation) {
        self.changed_bytes += o.changed_bytes;
        self.changed_bytes_compressed += o.changed_bytes_compressed;
        self.observed_s += o.dt_s;
        self.rpo_threshold_s = o.rpo_threshold_s;
        self.retention_policy_s = o.retention_policy_s;
        if let Some(r) = o.rpo_s {
            self.rpo_max_s = self.rpo_max_s.max(r);
            if r > o.rpo_threshold_s as f64 {
                self.rpo_not_met_s += o.dt_s;
            }
        }
        if o.flow_controlled {
            self.flow_controlled_s += o.dt_s;
        }
        if o.protected {
            self.protected_s += o.dt_s;
        }
        if let Some(a) = o.retention_available_s {
            self.retention_available_s = a;
        }
        if let Some(c) = o.consistency_points {
            self.consistency_points = c;
        }
        self.retention_reset |= o.retention_reset;
    }

    /// The row as the report shows it (the seed's units).
    pub fn row(&self) -> ReportRow {
        ReportRow {
            date: self.date.clone(),
            pair: self.pair.clone(),
            source: self.source.clone(),
            changes_mb_compressed: round2(self.changed_bytes_compressed as f64 / 1e6),
            changes_mb: round2(self.changed_bytes as f64 / 1e6),
            retention_policy_days: round2(self.retention_policy_s as f64 / 86_400.0),
            retention_available_days: round2(self.retention_available_s as f64 / 86_400.0),
            rpo_threshold_min: round2(self.rpo_threshold_s as f64 / 60.0),
            rpo_max_min: round2(self.rpo_max_s / 60.0),
            rpo_not_met_hours: round2(self.rpo_not_met_s / 3600.0),
            flow_controlled_hours: round2(self.flow_controlled_s / 3600.0),
            retention_log_reset: self.retention_reset,
            consistency_points: self.consistency_points,
            protection_coverage_pct: if self.observed_s > 0.0 {
                round2(100.0 * self.protected_s / self.observed_s)
            } else {
                0.0
            },
            observed_hours: round2(self.observed_s / 3600.0),
        }
    }
}

fn round2(v: f64) -> f64 {
    (v * 100.0).round() / 100.0
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReportRow {
    pub date: String,
    pub pair: String,
    pub source: String,
    pub changes_mb_compressed: f64,
    pub changes_mb: f64,
    pub retention_policy_days: f64,
    pub retention_available_days: f64,
    pub rpo_threshold_min: f64,
    pub rpo_max_min: f64,
    pub rpo_not_met_hours: f64,
    pub flow_controlled_hours: f64,
    pub retention_log_reset: bool,
    pub consistency_points: u64,
    pub protection_coverage_pct: f64,
    pub observed_hours: f64,
}

/// The CSV header, in the seed's column order.
pub const CSV_HEADER: &str = "date,pair,source,changes_mb_compressed,changes_mb,retention_policy_days,retention_available_days,rpo_threshold_min,rpo_max_min,rpo_not_met_hours,flow_controlled_hours,retention_log_reset,consistency_points,protection_coverage_pct,observed_hours";

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_owned()
    }
}

impl ReportRow {
    pub fn csv(&self) -> String {
        format!(
            "{},{},{},{},{},{},{},{},{},{},{},{},{},{},{}",
            self.date,
            csv_field(&self.pair),
            csv_field(&self.source),
            self.changes_mb_compressed,
            self.changes_mb,
            self.retention_policy_days,
            self.retention_available_days,
            self.rpo_threshold_min,
            self.rpo_max_min,
            self.rpo_not_met_hours,
            self.flow_controlled_hours,
            if self.retention_log_reset {
                "yes"
            } else {
                "no"
            },
            self.consistency_points,
            self.protection_coverage_pct,
            self.observed_hours
        )
    }
}

pub fn key(pair: &str, date: &str) -> String {
    format!("{pair}/{date}")
}

/// Add one observation of `pair` at `now_ms` to its day row (in `tx`).
pub fn record_in(
    tx: &redb::WriteTransaction,
    pair: &str,
    source: &str,
    now_ms: u64,
    o: &Observation,
) -> Result<(), crate::engine::store::StoreError> {
    let date = utc_date(now_ms);
    let k = key(pair, &date);
    let mut d: HealthDay =
        crate::engine::store::get_in(tx, HEALTH, &k)?.unwrap_or_else(|| HealthDay {
            pair: pair.to_owned(),
            date: date.clone(),
            ..Default::default()
        });
    d.source = source.to_owned();
    d.observe(o);
    crate::engine::store::put_in(tx, HEALTH, &k, &d)
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct ReportQuery {
    pub pair: Option<String>,
    /// First day, `YYYY-MM-DD` (default: 6 days before `end`).
    pub start: Option<String>,
    /// Last day, included (default: today, UTC).
    pub end: Option<String>,
    /// json (default) or csv.
    pub format: Option<String>,
}

/// Rows for `[start, end]` (days, inclusive), oldest first, with totals.
pub fn build(s: &CxState, q: &ReportQuery) -> Result<serde_json::Value, Rejection> {
    let bad = |m: String| ApiError::reject(StatusCode::BAD_REQUEST, m);
    let end = match &q.end {
        Some(e) => parse_date(e).map_err(bad)?,
        None => parse_date(&utc_date(now_ms())).expect("valid"),
    };
    let start = match &q.start {
        Some(st) => parse_date(st).map_err(bad)?,
        None => end - 6 * 86_400_000,
    };
    if start > end {
        return Err(bad(format!(
            "start {} is after end {}",
            utc_date(start),
            utc_date(end)
        )));
    }
    let (from, to) = (utc_date(start), utc_date(end));
    let mut days: Vec<HealthDay> = s
        .store
        .list::<HealthDay>(HEALTH)
        .map_err(ApiError::internal)?
        .into_iter()
        .map(|(_, d)| d)
        .filter(|d| d.date >= from && d.date <= to)
        .filter(|d| q.pair.as_ref().is_none_or(|p| &d.pair == p))
        .collect();
    days.sort_by(|a, b| (&a.pair, &a.date).cmp(&(&b.pair, &b.date)));
    let rows: Vec<ReportRow> = days.iter().map(HealthDay::row).collect();
    // Totals per pair, as the seed's "Total:" line.
    let mut totals = Vec::new();
    let mut i = 0;
    while i < days.len() {
        let p = &days[i].pair;
        let mut t = HealthDay {
            pair: p.clone(),
            date: "total".into(),
            source: days[i].source.clone(),
            ..Default::default()
        };
        while i < days.len() && &days[i].pair == p {
            let d = &days[i];
            t.changed_bytes += d.changed_bytes;
            t.changed_bytes_compressed += d.changed_bytes_compressed;
            t.rpo_not_met_s += d.rpo_not_met_s;
            t.flow_controlled_s += d.flow_controlled_s;
            t.observed_s += d.observed_s;
            t.protected_s += d.protected_s;
            t.rpo_max_s = t.rpo_max_s.max(d.rpo_max_s);
            t.retention_reset |= d.retention_reset;
            i += 1;
        }
        totals.push(t.row());
    }
    Ok(serde_json::json!({
        "start": from, "end": to, "rows": rows, "totals": totals,
    }))
}

pub async fn report(
    _p: super::auth::Principal,
    q: ReportQuery,
    s: Arc<CxState>,
) -> Result<warp::reply::Response, Rejection> {
    let csv = match q.format.as_deref() {
        None | Some("json") => false,
        Some("csv") => true,
        Some(f) => {
            return Err(ApiError::reject(
                StatusCode::BAD_REQUEST,
                format!("unknown format `{f}`: use json or csv"),
            ));
        }
    };
    let v = blocking(move || build(&s, &q)).await?;
    if !csv {
        return Ok(warp::reply::json(&v).into_response());
    }
    let mut out = String::from(CSV_HEADER);
    out.push('\n');
    for r in v["rows"].as_array().into_iter().flatten() {
        let r: ReportRow = serde_json::from_value(r.clone()).map_err(ApiError::internal)?;
        out.push_str(&r.csv());
        out.push('\n');
    }
    Ok(warp::reply::with_header(out, "content-type", "text/csv; charset=utf-8").into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A scripted day, computed by hand: 10-second steps; the RPO goes over
    /// its 30 s threshold for 6 steps, flow control lasts 3 steps, a resync
    /// takes 12 steps, one retention reset.
    #[test]
    fn a_scripted_day_gives_the_hand_computed_row() {
        let mut d = HealthDay {
            pair: "db".into(),
            date: "2026-11-27".into(),
            ..Default::default()
        };
        for i in 0..360 {
            let o = Observation {
                dt_s: 10.0,
                changed_bytes: 1_000_000,
                changed_bytes_compressed: 400_000,
                rpo_s: Some(if (100..106).contains(&i) { 45.0 } else { 2.0 }),
                rpo_threshold_s: 30,
                flow_controlled: (200..203).contains(&i),
                protected: !(300..312).contains(&i),
                retention_policy_s: 86_400,
                retention_available_s: Some(3_600 + i * 10),
                consistency_points: Some(i / 60),
                retention_reset: i == 250,
            };
            d.observe(&o);
        }
        let r = d.row();
        assert_eq!(r.changes_mb, 360.0);
        assert_eq!(r.changes_mb_compressed, 144.0);
        assert_eq!(r.rpo_not_met_hours, round2(60.0 / 3600.0));
        assert_eq!(r.rpo_max_min, 0.75);
        assert_eq!(r.rpo_threshold_min, 0.5);
        assert_eq!(r.flow_controlled_hours, round2(30.0 / 3600.0));
        assert_eq!(r.protection_coverage_pct, round2(100.0 * 348.0 / 360.0));
        assert_eq!(r.retention_policy_days, 1.0);
        assert_eq!(
            r.retention_available_days,
            round2((3_600.0 + 3_590.0) / 86_400.0)
        );
        assert!(r.retention_log_reset);
        assert_eq!(r.consistency_points, 5);
        assert_eq!(r.observed_hours, 1.0);
        assert_eq!(
            r.csv(),
            "2026-11-27,db,,144,360,1,0.08,0.5,0.75,0.02,0.01,yes,5,96.67,1"
        );
    }
}
