//! `tern trends …`, `tern alert …`, `tern report health`: monitoring through
//! the CX API.

use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::Subcommand;
use serde_json::{Value, json};

use super::client::Api;
use super::{Global, print_table};

#[derive(Subcommand, Debug)]
pub enum TrendsCmd {
    /// Print a metric's points, like `rrdtool fetch` (text), or as CSV/JSON.
    Fetch {
        /// e.g. pair_rpo_seconds, pair_change_bytes_per_s, host_cpu_percent
        /// (`tern trends list` shows them).
        metric: String,
        /// Only series of this host (name or id).
        #[arg(long)]
        host: Option<String>,
        /// Only series of this pair.
        #[arg(long)]
        pair: Option<String>,
        /// now, -1h, Unix seconds, YYYY-MM-DD or RFC 3339.
        #[arg(long, default_value = "-1d", allow_hyphen_values = true)]
        start: String,
        #[arg(long, default_value = "now", allow_hyphen_values = true)]
        end: String,
        /// raw|1m|10m|1h or day|week|month|year (default: the finest that covers --start).
        #[arg(long)]
        resolution: Option<String>,
        /// Consolidation of downsampled points: avg or max.
        #[arg(long, default_value = "avg")]
        cf: String,
        /// text (rrdtool fetch style), csv or json.
        #[arg(long, default_value = "text")]
        format: String,
    },
    /// Metrics and resolutions kept.
    List,
}

#[derive(Subcommand, Debug)]
pub enum AlertCmd {
    /// Active alerts (--all: cleared ones too).
    List {
        #[arg(long)]
        all: bool,
    },
    /// Acknowledge an alert: it is not repeated (it still clears).
    Ack { id: u64 },
    /// Send a test notification to every receiver now.
    Test,
    /// Send the daily digest to every digest receiver now.
    Digest,
    /// Where notifications go.
    #[command(subcommand)]
    Receiver(ReceiverCmd),
}

#[derive(Subcommand, Debug)]
pub enum ReceiverCmd {
    /// snmp://COMMUNITY@HOST:PORT[?inform=1] or
    /// smtp://[USER@]HOST:PORT?to=ADDR[,ADDR][&from=ADDR][&tls=none|starttls|tls][&ca=PEM][&digest=daily]
    Add {
        url: String,
        /// SMTP password, read from this file (never put it in the URL).
        #[arg(long, value_name = "FILE")]
        password_file: Option<PathBuf>,
    },
    List,
    Remove {
        id: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum ReportCmd {
    /// Per volume per day: changes with/without compression, retention,
    /// RPO, hours RPO not met, flow control, consistency points, coverage.
    Health {
        #[arg(long)]
        pair: Option<String>,
        /// First day, YYYY-MM-DD (default: six days before --end).
        #[arg(long)]
        start: Option<String>,
        /// Last day, YYYY-MM-DD (default: today, UTC).
        #[arg(long)]
        end: Option<String>,
        /// text, csv or json.
        #[arg(long, default_value = "text")]
        format: String,
    },
}

fn enc(s: &str) -> String {
    let mut o = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~:".contains(&b) {
            o.push(b as char);
        } else {
            o.push_str(&format!("%{b:02X}"));
        }
    }
    o
}

fn query(parts: &[(&str, Option<&str>)]) -> String {
    let q: Vec<String> = parts
        .iter()
        .filter_map(|(k, v)| v.map(|v| format!("{k}={}", enc(v))))
        .collect();
    if q.is_empty() {
        String::new()
    } else {
        format!("?{}", q.join("&"))
    }
}

/// rrdtool-style number: `8.1258306408e+08`, `nan` for a gap.
fn rrd_num(v: Option<f64>) -> String {
    match v {
        None => "nan".into(),
        Some(v) => {
            let s = format!("{v:.10e}");
            // Rust writes e8 / e-3; rrdtool writes e+08 / e-03.
            match s.split_once('e') {
                Some((m, e)) => {
                    let (sign, digits) = match e.strip_prefix('-') {
                        Some(d) => ('-', d),
                        None => ('+', e),
                    };
                    format!("{m}e{sign}{digits:0>2}")
                }
                None => s,
            }
        }
    }
}

/// Column name of a series: its labels other than the ones filtered on.
fn column(labels: &serde_json::Map<String, Value>) -> String {
    let v: Vec<String> = labels
        .iter()
        .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
        .collect();
    v.join(",")
}

pub fn print_fetch(v: &Value, format: &str) -> anyhow::Result<()> {
    let series = v["series"].as_array().cloned().unwrap_or_default();
    let cols: Vec<String> = series
        .iter()
        .map(|s| column(s["labels"].as_object().unwrap_or(&Default::default())))
        .collect();
    let mut times: Vec<i64> = series
        .iter()
        .flat_map(|s| {
            s["points"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|p| p[0].as_i64())
        })
        .collect();
    times.sort();
    times.dedup();
    let val = |i: usize, t: i64| -> Option<f64> {
        series[i]["points"]
            .as_array()?
            .iter()
            .find(|p| p[0].as_i64() == Some(t))
            .and_then(|p| p[1].as_f64())
    };
    match format {
        "json" => println!("{}", serde_json::to_string_pretty(v)?),
        "csv" => {
            println!(
                "time,{}",
                cols.iter()
                    .map(|c| format!("\"{}\"", c.replace('"', "\"\"")))
                    .collect::<Vec<_>>()
                    .join(",")
            );
            for t in times {
                let row: Vec<String> = (0..series.len())
                    .map(|i| val(i, t).map(|x| x.to_string()).unwrap_or_default())
                    .collect();
                println!("{t},{}", row.join(","));
            }
        }
        "text" => {
            // As `rrdtool fetch`: a header of column names, a blank line,
            // then `TIME: value value …`.
            println!(
                "{:>12} {}",
                "",
                cols.iter()
                    .map(|c| format!("{c:>20}"))
                    .collect::<Vec<_>>()
                    .join(" ")
            );
            println!();
            for t in times {
                let row: Vec<String> = (0..series.len())
                    .map(|i| format!("{:>20}", rrd_num(val(i, t))))
                    .collect();
                println!("{t}: {}", row.join(" "));
            }
        }
        f => bail!("unknown format `{f}`: use text, csv or json"),
    }
    Ok(())
}

pub async fn trends(cmd: TrendsCmd, g: &Global) -> anyhow::Result<()> {
    let api = Api::resolve(g.cx.as_deref(), g.data.as_deref())?;
    match cmd {
        TrendsCmd::List => {
            let v = api.get("/api/v1/trends").await?;
            if g.json {
                println!("{}", serde_json::to_string_pretty(&v)?);
                return Ok(());
            }
            println!("metrics:");
            for m in v["metrics"].as_array().into_iter().flatten() {
                println!("  {}", m.as_str().unwrap_or(""));
            }
            let mut rows = vec![vec![
                "RESOLUTION".to_owned(),
                "VIEW".into(),
                "STEP".into(),
                "KEPT".into(),
            ]];
            for t in v["tiers"].as_array().into_iter().flatten() {
                rows.push(vec![
                    t["name"].as_str().unwrap_or("").to_owned(),
                    t["view"].as_str().unwrap_or("").to_owned(),
                    format!("{}s", t["res_s"]),
                    format!("{}d", t["retention_s"].as_i64().unwrap_or(0) / 86_400),
                ]);
            }
            print_table(&rows);
            Ok(())
        }
        TrendsCmd::Fetch {
            metric,
            host,
            pair,
            start,
            end,
            resolution,
            cf,
            format,
        } => {
            let format = if g.json { "json".to_owned() } else { format };
            let q = query(&[
                ("host", host.as_deref()),
                ("pair", pair.as_deref()),
                ("start", Some(&start)),
                ("end", Some(&end)),
                ("resolution", resolution.as_deref()),
                ("cf", Some(&cf)),
            ]);
            let v = api
                .get(&format!("/api/v1/trends/{}{q}", enc(&metric)))
                .await?;
            print_fetch(&v, &format)
        }
    }
}

fn print_alerts(v: &Value) {
    if v["alerts"].as_array().is_none_or(|a| a.is_empty()) {
        println!("no alerts");
        return;
    }
    let mut rows = vec![vec![
        "ID".to_owned(),
        "STATE".into(),
        "SEVERITY".into(),
        "RULE".into(),
        "HOST".into(),
        "PAIR".into(),
        "FIRST SEEN".into(),
        "LAST SEEN".into(),
        "SENT".into(),
        "ACK".into(),
        "MESSAGE".into(),
    ]];
    for a in v["alerts"].as_array().into_iter().flatten() {
        let s = |k: &str| a[k].as_str().unwrap_or("").to_owned();
        rows.push(vec![
            a["id"].to_string(),
            s("state"),
            s("severity"),
            s("rule"),
            s("host"),
            s("pair"),
            s("first_seen"),
            s("last_seen"),
            a["count"].to_string(),
            a["acked_by"].as_str().unwrap_or("-").to_owned(),
            s("message"),
        ]);
    }
    print_table(&rows);
    for a in v["alerts"].as_array().into_iter().flatten() {
        if a["state"] == "active" {
            println!(
                "#{} what to do: {}",
                a["id"],
                a["action"].as_str().unwrap_or("")
            );
        }
    }
}

fn print_outcomes(v: &Value) -> anyhow::Result<()> {
    let rs = v["results"].as_array().cloned().unwrap_or_default();
    if rs.is_empty() {
        println!("no receivers: add one with `tern alert receiver add URL`");
        return Ok(());
    }
    let mut failed = 0;
    for r in &rs {
        if r["ok"].as_bool() == Some(true) {
            println!(
                "ok      {}  {}",
                r["id"].as_str().unwrap_or(""),
                r["url"].as_str().unwrap_or("")
            );
        } else {
            failed += 1;
            println!(
                "FAILED  {}  {}: {}",
                r["id"].as_str().unwrap_or(""),
                r["url"].as_str().unwrap_or(""),
                r["error"].as_str().unwrap_or("")
            );
        }
    }
    if failed > 0 {
        bail!("{failed} of {} receivers failed", rs.len());
    }
    Ok(())
}

pub async fn alert(cmd: AlertCmd, g: &Global) -> anyhow::Result<()> {
    let api = Api::resolve(g.cx.as_deref(), g.data.as_deref())?;
    let out = |v: &Value| -> anyhow::Result<bool> {
        if g.json {
            println!("{}", serde_json::to_string_pretty(v)?);
        }
        Ok(g.json)
    };
    match cmd {
        AlertCmd::List { all } => {
            let v = api
                .get(&format!(
                    "/api/v1/alerts{}",
                    if all { "?all=true" } else { "" }
                ))
                .await?;
            if !out(&v["alerts"])? {
                print_alerts(&v);
            }
        }
        AlertCmd::Ack { id } => {
            let v = api
                .post(&format!("/api/v1/alerts/{id}/ack"), &json!({}))
                .await?;
            if !out(&v)? {
                println!(
                    "alert {id} acknowledged by {}",
                    v["acked_by"].as_str().unwrap_or("?")
                );
            }
        }
        AlertCmd::Test => {
            let v = api.post("/api/v1/alerts/test", &json!({})).await?;
            if !out(&v)? {
                print_outcomes(&v)?;
            }
        }
        AlertCmd::Digest => {
            let v = api.post("/api/v1/alerts/digest", &json!({})).await?;
            if !out(&v)? {
                print_outcomes(&v)?;
            }
        }
        AlertCmd::Receiver(ReceiverCmd::Add { url, password_file }) => {
            let password = match password_file {
                Some(f) => Some(
                    std::fs::read_to_string(&f)
                        .with_context(|| format!("cannot read {}", f.display()))?
                        .trim_end_matches(['\n', '\r'])
                        .to_owned(),
                ),
                None => None,
            };
            let v = api
                .post(
                    "/api/v1/alerts/receivers",
                    &json!({"url": url, "password": password}),
                )
                .await?;
            if !out(&v)? {
                println!(
                    "receiver {} added: {} (try it: tern alert test)",
                    v["id"].as_str().unwrap_or(""),
                    v["url"].as_str().unwrap_or("")
                );
            }
        }
        AlertCmd::Receiver(ReceiverCmd::List) => {
            let v = api.get("/api/v1/alerts/receivers").await?;
            if !out(&v["receivers"])? {
                let mut rows = vec![vec![
                    "ID".to_owned(),
                    "KIND".into(),
                    "URL".into(),
                    "SENT".into(),
                    "LAST OK".into(),
                    "LAST ERROR".into(),
                ]];
                for r in v["receivers"].as_array().into_iter().flatten() {
                    rows.push(vec![
                        r["id"].as_str().unwrap_or("").to_owned(),
                        r["kind"].as_str().unwrap_or("").to_owned(),
                        r["url"].as_str().unwrap_or("").to_owned(),
                        r["sent"].to_string(),
                        r["last_ok"].as_str().unwrap_or("-").to_owned(),
                        r["last_error"].as_str().unwrap_or("-").to_owned(),
                    ]);
                }
                print_table(&rows);
            }
        }
        AlertCmd::Receiver(ReceiverCmd::Remove { id }) => {
            let v = api
                .delete(&format!("/api/v1/alerts/receivers/{}", enc(&id)))
                .await?;
            if !out(&v)? {
                println!("receiver {id} removed");
            }
        }
    }
    Ok(())
}

pub async fn report(cmd: ReportCmd, g: &Global) -> anyhow::Result<()> {
    let api = Api::resolve(g.cx.as_deref(), g.data.as_deref())?;
    let ReportCmd::Health {
        pair,
        start,
        end,
        format,
    } = cmd;
    let format = if g.json { "json".to_owned() } else { format };
    let q = query(&[
        ("pair", pair.as_deref()),
        ("start", start.as_deref()),
        ("end", end.as_deref()),
    ]);
    let v = api.get(&format!("/api/v1/reports/health{q}")).await?;
    let rows: Vec<Value> = v["rows"].as_array().cloned().unwrap_or_default();
    let totals: Vec<Value> = v["totals"].as_array().cloned().unwrap_or_default();
    match format.as_str() {
        "json" => println!("{}", serde_json::to_string_pretty(&v)?),
        "csv" => {
            println!("{}", crate::roles::cx::health::CSV_HEADER);
            for r in &rows {
                let r: crate::roles::cx::health::ReportRow = serde_json::from_value(r.clone())?;
                println!("{}", r.csv());
            }
        }
        "text" => {
            println!(
                "Health report {} .. {} (UTC days; MB = 10^6 bytes)",
                v["start"].as_str().unwrap_or(""),
                v["end"].as_str().unwrap_or("")
            );
            let mut t = vec![vec![
                "DATE".to_owned(),
                "PAIR".into(),
                "CHANGES MB (COMPR)".into(),
                "CHANGES MB".into(),
                "RETENTION D POLICY/AVAIL".into(),
                "RPO MIN THRESH/MAX".into(),
                "H RPO NOT MET".into(),
                "H FLOW CTRL".into(),
                "LOG RESET".into(),
                "CONSIST. PTS".into(),
                "COVERAGE".into(),
            ]];
            for r in rows.iter().chain(totals.iter()) {
                let n = |k: &str| r[k].as_f64().map(|x| format!("{x}")).unwrap_or_default();
                let total = r["date"] == "total";
                t.push(vec![
                    r["date"].as_str().unwrap_or("").to_owned(),
                    r["pair"].as_str().unwrap_or("").to_owned(),
                    n("changes_mb_compressed"),
                    n("changes_mb"),
                    if total {
                        "-".into()
                    } else {
                        format!(
                            "{}/{}",
                            n("retention_policy_days"),
                            n("retention_available_days")
                        )
                    },
                    if total {
                        format!("-/{}", n("rpo_max_min"))
                    } else {
                        format!("{}/{}", n("rpo_threshold_min"), n("rpo_max_min"))
                    },
                    n("rpo_not_met_hours"),
                    n("flow_controlled_hours"),
                    if r["retention_log_reset"].as_bool() == Some(true) {
                        "YES".into()
                    } else {
                        "no".into()
                    },
                    if total {
                        "-".into()
                    } else {
                        r["consistency_points"].to_string()
                    },
                    format!("{}%", n("protection_coverage_pct")),
                ]);
            }
            print_table(&t);
        }
        f => bail!("unknown format `{f}`: use text, csv or json"),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_print_like_rrdtool() {
        assert_eq!(rrd_num(Some(812583064.08)), "8.1258306408e+08");
        assert_eq!(rrd_num(Some(0.0)), "0.0000000000e+00");
        assert_eq!(rrd_num(Some(0.00125)), "1.2500000000e-03");
        assert_eq!(rrd_num(None), "nan");
    }
}
