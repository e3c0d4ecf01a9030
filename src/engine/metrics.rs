//! Prometheus text exposition (format 0.0.4) of what a node reports.
//!
//! Written here rather than with a client library: Tern's figures are not
//! instrumented counters living in the process but snapshots of node
//! reports (and, on the CX, of many nodes' reports), rendered on request.
//! The format is a few lines per family; escaping and family grouping are
//! the parts that matter, and a test feeds the output to the reference
//! Python parser.
//!
//! Invariant: all samples of a family are contiguous, under one `# HELP`
//! and one `# TYPE` line.

use std::collections::BTreeMap;

use crate::engine::control::NodeReport;

#[derive(Default)]
pub struct Exposition {
    families: BTreeMap<String, Family>,
}

struct Family {
    help: String,
    kind: &'static str,
    lines: Vec<String>,
}

fn escape_label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn fmt_value(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 {
            "+Inf".into()
        } else {
            "-Inf".into()
        }
    } else if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v}")
    }
}

impl Exposition {
    pub fn new() -> Exposition {
        Exposition::default()
    }

    /// One sample of family `name` (`gauge` or `counter`; a counter's name
    /// ends in `_total`).
    pub fn sample(
        &mut self,
        name: &str,
        kind: &'static str,
        help: &str,
        labels: &[(&str, &str)],
        v: f64,
    ) {
        let f = self
            .families
            .entry(name.to_owned())
            .or_insert_with(|| Family {
                help: help.replace('\\', "\\\\").replace('\n', "\\n"),
                kind,
                lines: Vec::new(),
            });
        let l = if labels.is_empty() {
            String::new()
        } else {
            let parts: Vec<String> = labels
                .iter()
                .map(|(k, v)| format!("{k}=\"{}\"", escape_label(v)))
                .collect();
            format!("{{{}}}", parts.join(","))
        };
        f.lines.push(format!("{name}{l} {}", fmt_value(v)));
    }

    pub fn gauge(&mut self, name: &str, help: &str, labels: &[(&str, &str)], v: f64) {
        self.sample(name, "gauge", help, labels, v)
    }

    pub fn counter(&mut self, name: &str, help: &str, labels: &[(&str, &str)], v: f64) {
        self.sample(name, "counter", help, labels, v)
    }

    pub fn render(&self) -> String {
        let mut s = String::new();
        for (name, f) in &self.families {
            s.push_str(&format!(
                "# HELP {name} {}\n# TYPE {name} {}\n",
                f.help, f.kind
            ));
            for l in &f.lines {
                s.push_str(l);
                s.push('\n');
            }
        }
        s
    }
}

/// Everything one node's report says, labelled with its `host` name.
pub fn node_report(e: &mut Exposition, host: &str, r: &NodeReport) {
    for a in &r.agent_pairs {
        let l = [("host", host), ("pair", a.pair.as_str())];
        e.gauge(
            "tern_agent_buffered_bytes",
            "Captured bytes not yet acknowledged by the process server",
            &l,
            a.buffered_bytes as f64,
        );
        e.gauge(
            "tern_agent_buffer_cap_bytes",
            "The agent's memory buffer cap per pair",
            &l,
            a.buffer_cap as f64,
        );
        e.gauge(
            "tern_agent_dirty_bytes",
            "Bytes marked in the changed-block bitmap",
            &l,
            a.dirty_bytes as f64,
        );
        e.counter(
            "tern_agent_captured_bytes_total",
            "Bytes written to the protected volume and captured",
            &l,
            a.bytes_captured as f64,
        );
        e.counter(
            "tern_agent_sent_bytes_total",
            "Bytes sent to the process server",
            &l,
            a.bytes_sent as f64,
        );
        e.counter(
            "tern_agent_resyncs_total",
            "Resyncs started",
            &l,
            a.resyncs as f64,
        );
        let mode = serde_json::to_value(a.mode)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        e.gauge(
            "tern_agent_mode",
            "1 for the mode the agent is in (label mode)",
            &[("host", host), ("pair", a.pair.as_str()), ("mode", &mode)],
            1.0,
        );
        e.gauge(
            "tern_agent_resync_progress_percent",
            "Resync step I progress",
            &l,
            a.progress_pct,
        );
    }
    for p in &r.ps_pairs {
        let l = [("host", host), ("pair", p.pair.as_str())];
        e.gauge(
            "tern_ps_cache_bytes",
            "Chunks cached on the process server's disk for the MT",
            &l,
            p.cache_bytes as f64,
        );
        e.gauge(
            "tern_ps_throttled",
            "1 while the process server throttles the agent (data flow controlled)",
            &l,
            if p.throttled { 1.0 } else { 0.0 },
        );
        e.counter(
            "tern_ps_in_bytes_total",
            "Bytes received from the agent (as sent)",
            &l,
            p.bytes_in as f64,
        );
        e.counter(
            "tern_ps_uncompressed_bytes_total",
            "Bytes received, uncompressed",
            &l,
            p.bytes_raw as f64,
        );
        e.counter(
            "tern_ps_out_bytes_total",
            "Bytes forwarded to the MT (after compression)",
            &l,
            p.bytes_out as f64,
        );
        e.counter(
            "tern_ps_codec_cpu_seconds_total",
            "CPU seconds spent checking and compressing chunks",
            &l,
            p.codec_cpu_us as f64 / 1e6,
        );
    }
    for m in &r.mt_pairs {
        let l = [("host", host), ("pair", m.pair.as_str())];
        e.gauge(
            "tern_mt_last_seq",
            "Last sequence number applied to the journal",
            &l,
            m.last_seq as f64,
        );
        e.gauge(
            "tern_mt_journal_bytes",
            "Bytes in the retention journal",
            &l,
            m.journal_bytes as f64,
        );
        e.counter(
            "tern_mt_applied_bytes_total",
            "Bytes applied to the journal",
            &l,
            m.bytes_applied as f64,
        );
        e.gauge(
            "tern_mt_consistency_points",
            "Bookmarks inside the retention window",
            &l,
            m.bookmarks as f64,
        );
        e.counter(
            "tern_mt_retention_resets_total",
            "Times history was dropped to stay inside the space limit",
            &l,
            m.retention_resets as f64,
        );
        if let (Some(o), Some(n)) = (m.oldest_point, m.latest_point) {
            e.gauge(
                "tern_mt_retention_window_seconds",
                "Source time between the oldest and the latest recoverable point",
                &l,
                n.1.saturating_sub(o.1) as f64 / 1e6,
            );
        }
    }
    if let Some(s) = &r.system {
        let l = [("host", host)];
        e.gauge("tern_host_load1", "1-minute load average", &l, s.load1);
        e.gauge("tern_host_load5", "5-minute load average", &l, s.load5);
        e.gauge("tern_host_load15", "15-minute load average", &l, s.load15);
        e.gauge("tern_host_cpus", "CPUs", &l, s.cpus as f64);
        e.gauge("tern_host_cpu_percent", "CPU busy, all CPUs", &l, s.cpu_pct);
        e.gauge(
            "tern_host_memory_total_bytes",
            "Memory",
            &l,
            s.mem_total_bytes as f64,
        );
        e.gauge(
            "tern_host_memory_used_bytes",
            "Memory used",
            &l,
            s.mem_used_bytes as f64,
        );
        e.gauge(
            "tern_host_swap_used_bytes",
            "Swap used",
            &l,
            s.swap_used_bytes as f64,
        );
        e.counter(
            "tern_host_network_receive_bytes_total",
            "Bytes received, all interfaces but loopback",
            &l,
            s.net_rx_bytes as f64,
        );
        e.counter(
            "tern_host_network_transmit_bytes_total",
            "Bytes sent, all interfaces but loopback",
            &l,
            s.net_tx_bytes as f64,
        );
        e.gauge(
            "tern_process_resident_bytes",
            "Resident memory of the tern process",
            &l,
            s.process_rss_bytes as f64,
        );
        e.gauge(
            "tern_process_cpu_percent",
            "CPU used by the tern process (100 = one CPU)",
            &l,
            s.process_cpu_pct,
        );
        for d in &s.disks {
            let m = d.mount.to_string_lossy();
            let dl = [
                ("host", host),
                ("mount", &*m),
                ("data", if d.holds_data { "1" } else { "0" }),
            ];
            e.gauge(
                "tern_host_disk_free_bytes",
                "Free space",
                &dl,
                d.free_bytes as f64,
            );
            e.gauge(
                "tern_host_disk_size_bytes",
                "Size",
                &dl,
                d.total_bytes as f64,
            );
            e.counter(
                "tern_host_disk_read_bytes_total",
                "Bytes read from the disk's device",
                &dl,
                d.read_bytes as f64,
            );
            e.counter(
                "tern_host_disk_written_bytes_total",
                "Bytes written to the disk's device",
                &dl,
                d.written_bytes as f64,
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_are_grouped_and_labels_escaped() {
        let mut e = Exposition::new();
        e.gauge("b_metric", "help", &[("x", "1")], 1.0);
        e.counter("a_total", "counts", &[], 3.0);
        e.gauge("b_metric", "help", &[("x", "a\"b\\c\nd")], 0.5);
        let s = e.render();
        assert_eq!(
            s,
            "# HELP a_total counts\n# TYPE a_total counter\na_total 3\n\
             # HELP b_metric help\n# TYPE b_metric gauge\nb_metric{x=\"1\"} 1\nb_metric{x=\"a\\\"b\\\\c\\nd\"} 0.5\n"
        );
    }
}
