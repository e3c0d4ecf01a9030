//! Issue 5 acceptance: alerts reach real NOC peers (Net-SNMP snmptrapd with
//! our MIB, an aiosmtpd SMTP server over STARTTLS with a login), heartbeat
//! loss alerts in time, trends and the health report add up to what a
//! workload wrote, and `/metrics` parses with the reference Prometheus parser.

mod util;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use util::*;

const MIB: u64 = 1 << 20;

/// Debian's python3 (the Debian packages install its modules), not a shim.
const PY: &str = "/usr/bin/python3";

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A child process killed when dropped.
struct Peer(Child);
impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Net-SNMP's trap receiver on a loopback port, loaded with TERN-MIB.
struct TrapReceiver {
    _p: Peer,
    log: PathBuf,
    port: u16,
}

impl TrapReceiver {
    fn start(dir: &Path) -> TrapReceiver {
        let base = repo().join(".test-deps/node_modules/net-snmp/lib/mibs");
        assert!(
            base.join("SNMPv2-SMI.mib").exists(),
            "the IETF base MIBs are missing at {}: run scripts/install-test-deps",
            base.display()
        );
        let conf = dir.join("snmptrapd.conf");
        write(&conf, "authCommunity log public\n");
        let log = dir.join("traps.log");
        let port = free_udp_port();
        let persist = dir.join("snmp-persist");
        std::fs::create_dir_all(&persist).unwrap();
        let child = Command::new("snmptrapd")
            .args(["-f", "-C", "-n", "-c"])
            .arg(&conf)
            .arg("-Lf")
            .arg(&log)
            .arg("-M")
            .arg(format!(
                "{}:{}",
                base.display(),
                repo().join("docs").display()
            ))
            .args(["-m", "SNMPv2-MIB:TERN-MIB"])
            .arg(format!("udp:127.0.0.1:{port}"))
            .env("SNMP_PERSISTENT_DIR", &persist)
            .env_remove("MIBS")
            .env_remove("MIBDIRS")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("snmptrapd (apt install snmptrapd; scripts/install-test-deps)");
        let t = TrapReceiver {
            _p: Peer(child),
            log,
            port,
        };
        wait_for(20, "snmptrapd to start", || {
            std::fs::read_to_string(&t.log)
                .ok()
                .filter(|s| s.contains("NET-SNMP version"))
        });
        t
    }

    /// The traps received so far, one string each.
    fn traps(&self) -> Vec<String> {
        let s = std::fs::read_to_string(&self.log).unwrap_or_default();
        s.split("\n20")
            .filter(|t| t.contains("snmpTrapOID"))
            .map(str::to_owned)
            .collect()
    }

    fn wait(&self, secs: u64, what: &str, f: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            if let Some(t) = self.traps().into_iter().find(|t| f(t)) {
                return t;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; snmptrapd logged:\n{}",
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// aiosmtpd with STARTTLS required and a login (ops / s3cret); each message
/// is saved as a file.
struct MailServer {
    _p: Peer,
    port: u16,
    dir: PathBuf,
    ca: PathBuf,
}

const SMTP_PY: &str = r#"
import os, ssl, sys, time
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword
port, cert, key, out = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
class Save:
    async def handle_DATA(self, server, session, envelope):
        n = len([f for f in os.listdir(out) if f.endswith(".eml")])
        p = os.path.join(out, "%04d.eml" % n)
        with open(p + ".tmp", "wb") as f:
            f.write(b"X-Rcpt: " + ",".join(envelope.rcpt_tos).encode() + b"\r\n")
            f.write(envelope.content)
        os.rename(p + ".tmp", p)
        return "250 OK"
def auth(server, session, envelope, mechanism, data):
    ok = isinstance(data, LoginPassword) and data.login == b"ops" and data.password == b"s3cret"
    return AuthResult(success=ok)
ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
ctx.load_cert_chain(cert, key)
c = Controller(Save(), hostname="127.0.0.1", port=port, tls_context=ctx,
               require_starttls=True, authenticator=auth, auth_require_tls=True)
c.start()
print("ready", flush=True)
while True:
    time.sleep(3600)
"#;

impl MailServer {
    fn start(dir: &Path) -> MailServer {
        // A CA and a server certificate for 127.0.0.1, from Tern's own PKI code.
        let pki = dir.join("smtp-pki");
        let ca = tern::engine::pki::Ca::load_or_create(&pki, "smtp test").unwrap();
        let (key, csr) =
            tern::engine::pki::new_key_and_csr(&tern::engine::pki::default_sans(&[])).unwrap();
        let cert = ca
            .sign_csr(&csr, "smtp", tern::engine::pki::NODE_CERT_VALIDITY)
            .unwrap();
        let (cert_p, key_p, ca_p) = (pki.join("s.crt"), pki.join("s.key"), pki.join("ca.pem"));
        write(&cert_p, &cert);
        write(&key_p, &key.serialize_pem());
        write(&ca_p, &ca.cert_pem);
        let script = dir.join("smtp.py");
        write(&script, SMTP_PY);
        let out = dir.join("mail");
        std::fs::create_dir_all(&out).unwrap();
        let port = free_port();
        let ready = dir.join("smtp.out");
        let child = Command::new(PY)
            .arg(&script)
            .arg(port.to_string())
            .arg(&cert_p)
            .arg(&key_p)
            .arg(&out)
            .stdout(std::fs::File::create(&ready).unwrap())
            .stderr(std::fs::File::create(dir.join("smtp.err")).unwrap())
            .spawn()
            .expect("python3 with aiosmtpd (scripts/install-test-deps)");
        let m = MailServer {
            _p: Peer(child),
            port,
            dir: out,
            ca: ca_p,
        };
        wait_for(20, "the SMTP server to start", || {
            std::fs::read_to_string(&ready)
                .ok()
                .filter(|s| s.contains("ready"))
        });
        m
    }

    fn messages(&self) -> Vec<String> {
        files_with_ext(&self.dir, "eml")
            .iter()
            .map(|p| std::fs::read_to_string(p).unwrap_or_default())
            .collect()
    }

    fn wait(&self, secs: u64, what: &str, f: impl Fn(&str) -> bool) -> String {
        wait_for(secs, what, || self.messages().into_iter().find(|m| f(m)))
    }
}

fn subject(m: &str) -> String {
    m.lines()
        .find_map(|l| l.strip_prefix("Subject: "))
        .unwrap_or("")
        .to_owned()
}

/// Acceptance 1: a throttled link makes a pair miss its RPO; the trap
/// arrives at snmptrapd and decodes with TERN-MIB, an e-mail arrives; when
/// the backlog drains, the clear trap and e-mail arrive.
#[test]
fn rpo_violation_reaches_the_noc_by_trap_and_mail_and_clears() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let traps = TrapReceiver::start(dir);
    let mail = MailServer::start(dir);
    let cfg = aio_config(
        dir,
        "aio.toml",
        &format!(
            "trends_step = \"1s\"\n[ps]\nbandwidth = [\"*=400KB/s\"]\n[agent]\nchunk_max = \"256KiB\"\n{}",
            volume(dir, 16 * MIB, "nbd")
        ),
    );
    let site = Site::start_cfg(dir, &cfg);
    let url = site.nbd_url();
    site.tern(&[
        "alert",
        "receiver",
        "add",
        &format!("snmp://public@127.0.0.1:{}", traps.port),
    ]);
    // The same station as an acknowledged inform (retried until answered).
    site.tern(&[
        "alert",
        "receiver",
        "add",
        &format!("snmp://public@127.0.0.1:{}?inform=1", traps.port),
    ]);
    let pw = dir.join("smtp-password");
    write(&pw, "s3cret\n");
    let added = site.tern(&[
        "alert",
        "receiver",
        "add",
        &format!(
            "smtp://ops@127.0.0.1:{}?to=noc@example.net&from=tern@example.net&tls=starttls&ca={}",
            mail.port,
            mail.ca.display()
        ),
        "--password-file",
        pw.to_str().unwrap(),
    ]);
    assert!(
        !added.to_string().contains("s3cret"),
        "the password is never shown: {added}"
    );
    // A daily digest instead of a message per alert.
    site.tern(&[
        "alert",
        "receiver",
        "add",
        &format!(
            "smtp://ops@127.0.0.1:{}?to=digest@example.net&tls=starttls&ca={}&digest=daily",
            mail.port,
            mail.ca.display()
        ),
        "--password-file",
        pw.to_str().unwrap(),
    ]);

    // The path to the NOC works: a test trap and a test e-mail.
    let r = site.tern(&["alert", "test"]);
    assert!(
        r["results"]
            .as_array()
            .unwrap()
            .iter()
            .all(|x| x["ok"] == true),
        "{r}"
    );
    let t = traps.wait(20, "the test trap", |t| {
        t.contains("TERN-MIB::ternAlertTest")
    });
    assert!(
        t.contains("TERN-MIB::ternAlertSeverity.0 = INTEGER: info(5)"),
        "{t}"
    );
    // Every receiver gets the test, the digest one included.
    for rcpt in ["noc@example.net", "digest@example.net"] {
        let m = mail.wait(20, "the test e-mail", |m| {
            subject(m).contains("TEST") && m.contains(&format!("X-Rcpt: {rcpt}"))
        });
        assert!(m.contains("test notification from the Tern CX"), "{m}");
    }

    // A pair with a 3 s RPO threshold behind a 400 KB/s link.
    site.create_pair("slow", &["--compression", "none", "--rpo-threshold", "3s"]);
    wait_caught_up(&site, "slow", 120);
    // 6 MB takes about 15 s to cross the link: the RPO climbs past 3 s.
    qemu_io(
        &url,
        &(0..6)
            .map(|i| format!("write -P {} {} 1M", i + 1, i * MIB))
            .collect::<Vec<_>>(),
    );
    let raised = traps.wait(60, "the RPO trap", |t| {
        t.contains("TERN-MIB::ternAlertRaised") && t.contains("ternAlertRule.0 = STRING: rpo")
    });
    for want in [
        "SNMPv2-MIB::snmpTrapOID.0 = OID: TERN-MIB::ternAlertRaised",
        "TERN-MIB::ternAlertSeverity.0 = INTEGER: major(2)",
        "TERN-MIB::ternAlertPair.0 = STRING: slow",
        "TERN-MIB::ternAlertHost.0 = STRING: aio",
        "TERN-MIB::ternAlertCount.0 = Gauge32: 1",
        "TERN-MIB::ternAlertMessage.0 = STRING: RPO",
        "exceeds the threshold 3 s",
    ] {
        assert!(raised.contains(want), "missing `{want}` in:\n{raised}");
    }
    let m = mail.wait(30, "the RPO e-mail", |m| {
        subject(m).contains("ALERT rpo pair slow")
    });
    assert!(m.contains("What to do:"), "{m}");
    let id = wait_for(10, "the alert in the list", || {
        let v = site.tern(&["alert", "list"]);
        v.as_array()?
            .iter()
            .find(|a| a["rule"] == "rpo" && a["pair"] == "slow")
            .and_then(|a| a["id"].as_u64())
    });

    // The backlog drains: the clear comes by both ways.
    let cleared = traps.wait(120, "the clear trap", |t| {
        t.contains("TERN-MIB::ternAlertCleared") && t.contains("ternAlertRule.0 = STRING: rpo")
    });
    assert!(
        cleared.contains(&format!("TERN-MIB::ternAlertId.0 = Gauge32: {id}")),
        "{cleared}"
    );
    mail.wait(30, "the clear e-mail", |m| {
        subject(m).contains("CLEARED rpo pair slow")
    });
    let all = site.tern(&["alert", "list", "--all"]);
    let a = all
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["id"].as_u64() == Some(id))
        .unwrap();
    assert_eq!(a["state"], "cleared", "{a}");
    assert_eq!(a["count"], 2, "raised once, cleared once: {a}");
    // The digest lists the day's alert; its receiver got no per-alert mail.
    let r = site.tern(&["alert", "digest"]);
    assert_eq!(r["results"].as_array().unwrap().len(), 1, "{r}");
    assert_eq!(r["results"][0]["ok"], true, "{r}");
    let d = mail.wait(30, "the digest", |m| subject(m).contains("daily digest"));
    assert!(d.contains("X-Rcpt: digest@example.net"), "{d}");
    assert!(d.contains("rpo") && d.contains("cleared"), "{d}");
    assert!(
        !mail
            .messages()
            .iter()
            .any(|m| m.contains("X-Rcpt: digest@example.net") && subject(m).contains("rpo")),
        "a digest receiver gets digests only"
    );
    let recv = site.tern(&["alert", "receiver", "list"]);
    assert_eq!(recv.as_array().unwrap().len(), 4, "{recv}");
    for r in recv.as_array().unwrap() {
        // test + raise + clear, or test + digest; informs were acknowledged.
        let want = if r["digest"] == true { 2 } else { 3 };
        assert!(r["sent"].as_u64().unwrap() >= want, "{r}");
        assert!(r["last_error"].is_null(), "{r}");
    }
}

/// Acceptance 2: an agent that stops alerts within two heartbeat intervals.
#[test]
fn heartbeat_loss_alerts_within_two_intervals() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let cx_data = dir.join("cx-data");
    let cx_cfg = config_file(
        dir,
        "cx.toml",
        "cx-data",
        "roles = [\"cx\"]\n[node]\nname = \"cx\"\nheartbeat_interval = \"2s\"\n[cx]\napi_listen = \"127.0.0.1:0\"\n",
    );
    let cx = Daemon::spawn(dir, "cx", &["serve", "--config", cx_cfg.to_str().unwrap()]);
    let url = wait_file(&cx_data.join("cx.url"), 30, &cx);
    let agent_cfg = config_file(
        dir,
        "agent.toml",
        "agent-data",
        &format!(
            "roles = [\"agent\"]\n[node]\nname = \"src01\"\ncx_url = \"{url}\"\nheartbeat_interval = \"2s\"\n"
        ),
    );
    let cx_tern = |args: &[&str]| -> serde_json::Value {
        let mut a = vec!["--data", cx_data.to_str().unwrap(), "--json"];
        a.extend_from_slice(args);
        let o = tern(dir, &a);
        assert!(o.status.success(), "{args:?}: {}", stderr(&o));
        serde_json::from_slice(&o.stdout).unwrap_or(serde_json::Value::Null)
    };
    enroll(dir, &cx_data, &url, &agent_cfg);
    let spawn_agent = || {
        Daemon::spawn(
            dir,
            "agent",
            &["serve", "--config", agent_cfg.to_str().unwrap()],
        )
    };
    let mut agent = spawn_agent();
    wait_for(30, "the agent's heartbeats", || {
        let h = cx_tern(&["host", "list"]);
        h.as_array()?
            .iter()
            .find(|h| h["name"] == "src01" && h["overdue"] == false)
            .cloned()
    });
    // Beyond the CX's start-up grace (1.5 intervals), with the agent beating.
    std::thread::sleep(Duration::from_secs(4));
    assert!(
        cx_tern(&["alert", "list"]).as_array().unwrap().is_empty(),
        "no alert while all is well"
    );

    let _ = agent.child.kill();
    let _ = agent.child.wait();
    let t0 = Instant::now();
    let alert = wait_for(15, "the heartbeat-lost alert", || {
        let v = cx_tern(&["alert", "list"]);
        v.as_array()?
            .iter()
            .find(|a| a["rule"] == "heartbeat-lost" && a["host"] == "src01")
            .cloned()
    });
    let took = t0.elapsed();
    // Detection is due 1.5 intervals after the last heartbeat, which came at
    // most one interval before the kill: 2 intervals is the promise.
    assert!(
        took <= Duration::from_secs(4),
        "heartbeat loss took {took:?} to alert (2 intervals = 4 s): {alert}"
    );
    assert_eq!(alert["severity"], "critical");
    assert!(
        alert["message"]
            .as_str()
            .unwrap()
            .contains("sent no heartbeat"),
        "{alert}"
    );

    // Back: the alert clears.
    let _agent = spawn_agent();
    wait_for(20, "the alert to clear", || {
        let v = cx_tern(&["alert", "list", "--all"]);
        v.as_array()?
            .iter()
            .find(|a| a["rule"] == "heartbeat-lost" && a["state"] == "cleared")
            .cloned()
    });
}

fn prom_parse(text: &str) -> serde_json::Value {
    let script = r#"
import json, sys
from prometheus_client.parser import text_string_to_metric_families
out = {}
for fam in text_string_to_metric_families(sys.stdin.read()):
    for s in fam.samples:
        out.setdefault(s.name, []).append({"labels": s.labels, "value": s.value})
print(json.dumps(out))
"#;
    let mut c = Command::new(PY)
        .args(["-c", script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 with prometheus_client (scripts/install-test-deps)");
    use std::io::Write;
    c.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let o = c.wait_with_output().unwrap();
    assert!(
        o.status.success(),
        "the Prometheus parser refused the exposition: {}\n{text}",
        String::from_utf8_lossy(&o.stderr)
    );
    serde_json::from_slice(&o.stdout).unwrap()
}

fn http_get(url: &str, ca: Option<&Path>, token: Option<&str>) -> String {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut b = reqwest::Client::builder();
        if let Some(ca) = ca {
            let pem = std::fs::read(ca).unwrap();
            b = b.add_root_certificate(reqwest::Certificate::from_pem(&pem).unwrap());
        }
        let c = b.build().unwrap();
        let mut r = c.get(url);
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        let resp = r.send().await.unwrap();
        assert!(resp.status().is_success(), "GET {url}: {}", resp.status());
        resp.text().await.unwrap()
    })
}

/// Acceptance 3, 4 (with the real roles) and 5: the trend points add up to
/// the bytes the workload wrote, the downsampled points are the averages of
/// the raw ones, the health report counts the same bytes, and `/metrics`
/// (the CX's, with a token, and a node's plain listener) parses.
#[test]
fn trends_health_report_and_metrics_agree_with_a_workload() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let mport = free_port();
    let cfg = aio_config(
        dir,
        "aio.toml",
        &format!(
            "trends_step = \"1s\"\n[agent]\nchunk_max = \"1MiB\"\n{}",
            volume(dir, 64 * MIB, "nbd")
        ),
    );
    // The node's own metrics listener.
    let text = std::fs::read_to_string(&cfg).unwrap().replace(
        "[node]\n",
        &format!("[node]\nmetrics_listen = \"127.0.0.1:{mport}\"\n"),
    );
    write(&cfg, &text);
    let site = Site::start_cfg(dir, &cfg);
    let url = site.nbd_url();
    site.create_pair("w", &[]);
    wait_caught_up(&site, "w", 120);
    let start = unix_ms() / 1000 - 2;
    let o = tern(
        dir,
        &[
            "--json",
            "workload",
            "--nbd",
            &url,
            "--rate",
            "4MB/s",
            "--duration",
            "12s",
            "--block",
            "4k..256k",
            "--compressibility",
            "0.5",
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let w: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let written = w["bytes"].as_u64().unwrap() as f64;
    let caught = wait_caught_up(&site, "w", 120);
    let captured = caught["agent"]["bytes_captured"].as_u64().unwrap() as f64;
    assert_eq!(captured, written, "the agent captured every byte written");
    // Let the samplers see the final counters.
    std::thread::sleep(Duration::from_secs(3));

    let fetch = |metric: &str, res: &str, cf: &str| -> serde_json::Value {
        site.tern(&[
            "trends",
            "fetch",
            metric,
            "--pair",
            "w",
            "--start",
            &start.to_string(),
            "--resolution",
            res,
            "--cf",
            cf,
        ])
    };
    let sum = |v: &serde_json::Value| -> f64 {
        let step = v["step_s"].as_f64().unwrap();
        v["series"][0]["points"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p[1].as_f64().unwrap() * step)
            .sum()
    };
    let raw = fetch("pair_change_bytes_per_s", "raw", "avg");
    let stored = sum(&raw);
    assert!(
        (stored - written).abs() <= 0.02 * written,
        "trend points add up to {stored} bytes; the workload wrote {written} from {start}: {}",
        raw["series"][0]["points"]
    );
    let out = sum(&fetch("pair_ps_out_bytes_per_s", "raw", "avg"));
    assert!(
        out > 0.0 && out < 0.8 * written,
        "compressed bytes to the MT: {out} of {written}"
    );

    // The text output looks like rrdtool fetch.
    let o = tern(
        dir,
        &[
            "--data",
            site.data.to_str().unwrap(),
            "trends",
            "fetch",
            "pair_rpo_seconds",
            "--pair",
            "w",
            "--start",
            "-1m",
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let txt = stdout(&o);
    let line = txt.lines().nth(2).unwrap_or("");
    assert!(
        line.split(':')
            .next()
            .unwrap()
            .trim()
            .parse::<u64>()
            .is_ok()
            && (line.contains("e+") || line.contains("e-")),
        "rrdtool-like lines `TIME: 1.0000000000e+00`: {txt}"
    );

    // Downsampled: once the minute after the workload has closed, each
    // 1-minute point is the mean (and max) of the raw points inside it.
    let last_min = (unix_ms() / 1000) / 60 * 60;
    wait_for(75, "the workload's last minute to close", || {
        (unix_ms() / 1000 >= last_min + 61).then_some(())
    });
    std::thread::sleep(Duration::from_secs(2));
    let raw = fetch("pair_change_bytes_per_s", "raw", "avg");
    let avg = fetch("pair_change_bytes_per_s", "1m", "avg");
    let max = fetch("pair_change_bytes_per_s", "1m", "max");
    let rp: Vec<(i64, f64)> = raw["series"][0]["points"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p[0].as_i64().unwrap(), p[1].as_f64().unwrap()))
        .collect();
    let ap = avg["series"][0]["points"].as_array().unwrap();
    let mp = max["series"][0]["points"].as_array().unwrap();
    assert!(!ap.is_empty(), "no 1-minute points: {avg}");
    for (a, m) in ap.iter().zip(mp) {
        let b = a[0].as_i64().unwrap();
        let inside: Vec<f64> = rp
            .iter()
            .filter(|(t, _)| *t >= b && *t < b + 60)
            .map(|p| p.1)
            .collect();
        if inside.is_empty() {
            continue;
        }
        let mean = inside.iter().sum::<f64>() / inside.len() as f64;
        let a = a[1].as_f64().unwrap();
        assert!(
            (a - mean).abs() <= 1e-6 * mean.max(1.0),
            "bucket {b}: {a} vs {mean}"
        );
        let mx = inside.iter().cloned().fold(f64::MIN, f64::max);
        assert_eq!(m[1].as_f64().unwrap(), mx, "bucket {b}");
    }

    // The health report counts the same bytes.
    let rep = site.tern(&["report", "health", "--pair", "w"]);
    let row = &rep["rows"].as_array().unwrap().last().unwrap().clone();
    let mb = row["changes_mb"].as_f64().unwrap();
    assert!(
        (mb - written / 1e6).abs() <= 0.02 * written / 1e6 + 0.01,
        "health report: {mb} MB changed; the workload wrote {}: {row}",
        written / 1e6
    );
    assert!(row["changes_mb_compressed"].as_f64().unwrap() < mb, "{row}");
    assert_eq!(row["rpo_not_met_hours"], 0.0, "{row}");
    assert_eq!(row["retention_log_reset"], false, "{row}");
    assert!(
        row["protection_coverage_pct"].as_f64().unwrap() > 50.0,
        "{row}"
    );
    let o = tern(
        dir,
        &[
            "--data",
            site.data.to_str().unwrap(),
            "report",
            "health",
            "--format",
            "csv",
        ],
    );
    assert!(stdout(&o).starts_with("date,pair,source,changes_mb_compressed,changes_mb,"));

    // /metrics on the CX (token) and on the node's plain listener.
    let api = std::fs::read_to_string(site.data.join("cx.url")).unwrap();
    let token = std::fs::read_to_string(site.data.join("cli-token")).unwrap();
    let cx_text = http_get(
        &format!("{}/metrics", api.trim()),
        Some(&site.data.join("pki/ca.crt")),
        Some(token.trim()),
    );
    let cx = prom_parse(&cx_text);
    let cap = cx["tern_agent_captured_bytes_total"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["labels"]["pair"] == "w")
        .unwrap();
    assert_eq!(cap["value"].as_f64().unwrap(), written, "{cap}");
    for fam in [
        "tern_pair_rpo_seconds",
        "tern_pair_state",
        "tern_host_up",
        "tern_alerts_active",
        "tern_host_cpu_percent",
        "tern_host_disk_free_bytes",
    ] {
        assert!(cx.get(fam).is_some(), "{fam} missing from CX /metrics");
    }
    let node_text = http_get(&format!("http://127.0.0.1:{mport}/metrics"), None, None);
    let node = prom_parse(&node_text);
    for fam in [
        "tern_build_info",
        "tern_ps_out_bytes_total",
        "tern_mt_journal_bytes",
        "tern_process_resident_bytes",
    ] {
        assert!(node.get(fam).is_some(), "{fam} missing from node /metrics");
    }
}
