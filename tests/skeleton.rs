//! Issue 2 acceptance: the real binary, real TLS, real processes on loopback.

mod util;

use std::time::Duration;

use tern::engine::pki::{self, Ca, Identity, NodeInfo};
use tern::engine::transport;
use util::*;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// GET `url` with `client`: the JSON answer.
fn get_json(
    rt: &tokio::runtime::Runtime,
    client: &reqwest::Client,
    url: &str,
) -> serde_json::Value {
    rt.block_on(async { client.get(url).send().await.unwrap().json().await.unwrap() })
}

fn cx_config(dir: &std::path::Path) -> std::path::PathBuf {
    config_file(
        dir,
        "cx.toml",
        "cx-data",
        "roles = [\"cx\"]\n[node]\nname = \"cx-host\"\nheartbeat_interval = \"300ms\"\n[cx]\napi_listen = \"127.0.0.1:0\"\nheartbeat_overdue = \"2s\"\n",
    )
}

/// A PS+MT node named `psmt-host` with its data in `dir/node-data`.
fn psmt_config(dir: &std::path::Path, url: &str) -> std::path::PathBuf {
    config_file(
        dir,
        "psmt.toml",
        "node-data",
        &format!(
            "roles = [\"ps\", \"mt\"]\n[node]\nname = \"psmt-host\"\ncx_url = \"{url}\"\ndata_listen = \"127.0.0.1:0\"\nheartbeat_interval = \"300ms\"\n"
        ),
    )
}

#[test]
fn ps_mt_enrolls_heartbeats_and_foreign_certificates_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let cx = Daemon::spawn(
        dir,
        "cx",
        &["serve", "--config", cx_config(dir).to_str().unwrap()],
    );
    let cx_data = dir.join("cx-data");
    let url = wait_file(&cx_data.join("cx.url"), 30, &cx);
    let d = cx_data.to_str().unwrap();

    // A token, created on the CX with the local admin CLI token.
    let o = tern(dir, &["--data", d, "token", "create", "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let token = v["token"].as_str().unwrap().to_owned();
    let ca_fp = v["ca_fingerprint"].as_str().unwrap().to_owned();

    // The PS+MT node enrolls from its own config and data directory.
    let node_cfg = psmt_config(dir, &url);
    let o = tern(
        dir,
        &[
            "enroll",
            "--cx",
            &url,
            "--token",
            &token,
            "--config",
            node_cfg.to_str().unwrap(),
            "--ca-fingerprint",
            &ca_fp,
        ],
    );
    assert!(o.status.success(), "enroll failed: {}", stderr(&o));
    let out = stdout(&o);
    assert!(
        out.contains(&ca_fp),
        "enrollment shows the CA fingerprint: {out}"
    );
    assert!(out.contains("verified with the token"), "{out}");

    // The token is single use: a second enrollment is refused, clearly.
    let other = dir.join("other.toml");
    write(
        &other,
        &format!(
            "data_dir = \"{}\"\nroles = [\"agent\"]\n",
            dir.join("other-data").display()
        ),
    );
    let o = tern(
        dir,
        &[
            "enroll",
            "--cx",
            &url,
            "--token",
            &token,
            "--config",
            other.to_str().unwrap(),
        ],
    );
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(err.starts_with("tern: enrollment refused: "), "{err}");
    assert!(
        err.contains("already used") && err.contains("tern token create"),
        "{err}"
    );
    assert!(
        !dir.join("other-data/pki/node.json").exists(),
        "nothing saved on refusal"
    );

    // A token from nowhere cannot authenticate a CA.
    let o = tern(
        dir,
        &[
            "enroll",
            "--cx",
            &url,
            "--token",
            "0123456789ab.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
            "--config",
            other.to_str().unwrap(),
        ],
    );
    assert!(!o.status.success());
    assert!(stderr(&o).contains("unknown to this CX"), "{}", stderr(&o));

    let mut node = Daemon::spawn(
        dir,
        "psmt",
        &["serve", "--config", node_cfg.to_str().unwrap()],
    );
    let data_addr = wait_file(&dir.join("node-data/data.addr"), 30, &node);

    // Both hosts appear, with fresh heartbeats.
    let hosts = wait_for(20, "both hosts heartbeating", || {
        let o = tern(dir, &["--data", d, "host", "list", "--json"]);
        assert!(o.status.success(), "{}", stderr(&o));
        let hosts: Vec<serde_json::Value> = serde_json::from_slice(&o.stdout).unwrap();
        let fresh = hosts.iter().filter(|h| h["overdue"] == false).count();
        (hosts.len() == 2 && fresh == 2).then_some(hosts)
    });
    let psmt = hosts
        .iter()
        .find(|h| h["name"] == "psmt-host")
        .expect("node listed");
    assert_eq!(psmt["roles"], serde_json::json!(["ps", "mt"]));
    assert_eq!(psmt["version"], env!("CARGO_PKG_VERSION"));
    assert!(psmt["heartbeat_age_s"].as_f64().unwrap() < 2.0);
    // The human listing says the same (flag after the subcommand this time).
    let o = tern(dir, &["host", "list", "--data", d]);
    let table = stdout(&o);
    assert!(
        table.contains("psmt-host") && table.contains("ps,mt") && table.contains("ok"),
        "{table}"
    );

    // On the data port: our CA's certificate is accepted, another CA's refused.
    let node_id = Identity::load(&dir.join("node-data/pki")).unwrap();
    let rt = runtime();
    let hello = format!(
        "https://127.0.0.1:{}/data/v1/hello",
        data_addr.rsplit(':').next().unwrap()
    );
    let cx_id = Identity::load(&cx_data.join("pki")).unwrap();
    let good = transport::client(&node_id.ca_pem, Some(&cx_id)).unwrap();
    let v: serde_json::Value = get_json(&rt, &good, &hello);
    assert_eq!(v["host_id"], node_id.info.host_id);
    assert_eq!(
        v["peer"], cx_id.info.host_id,
        "the data port knows who called"
    );

    let foreign_dir = tempfile::tempdir().unwrap();
    let foreign_ca = Ca::load_or_create(foreign_dir.path(), "mallory").unwrap();
    let (key, csr) = pki::new_key_and_csr(&pki::default_sans(&[])).unwrap();
    let foreign = Identity {
        info: NodeInfo {
            host_id: "mallory".into(),
            cx_url: url.clone(),
        },
        cert_pem: foreign_ca
            .sign_csr(
                &csr,
                &cx_id.info.host_id,
                tern::engine::pki::NODE_CERT_VALIDITY,
            )
            .unwrap(),
        key_pem: key.serialize_pem(),
        ca_pem: foreign_ca.cert_pem.clone(),
    };
    let bad = transport::client(&node_id.ca_pem, Some(&foreign)).unwrap();
    let r = rt.block_on(async { bad.get(&hello).send().await });
    assert!(
        r.is_err(),
        "a certificate from another CA must be refused, got {r:?}"
    );
    // And no certificate at all is refused too.
    let none = transport::client(&node_id.ca_pem, None).unwrap();
    assert!(
        rt.block_on(async { none.get(&hello).send().await })
            .is_err()
    );

    // Stopping the node makes it overdue.
    node.terminate();
    wait_for(20, "node overdue after stop", || {
        let o = tern(dir, &["--data", d, "host", "list", "--json"]);
        let hosts: Vec<serde_json::Value> = serde_json::from_slice(&o.stdout).unwrap();
        hosts
            .iter()
            .any(|h| h["name"] == "psmt-host" && h["overdue"] == true)
            .then_some(())
    });
}

/// The not-after (Unix s) of the certificate in `pki/node.crt` under `data`.
fn cert_expiry(data: &std::path::Path) -> (String, i64) {
    let pem = std::fs::read_to_string(data.join("pki/node.crt")).unwrap();
    let der = pki::pem_to_der(&pem).unwrap();
    (pem, pki::not_after_unix(&der).unwrap())
}

#[test]
fn nodes_renew_their_certificates_and_keep_working_after_the_old_ones_expire() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let cfg = cx_config(dir);
    let text = std::fs::read_to_string(&cfg).unwrap();
    write(&cfg, &format!("{text}node_cert_validity = \"40s\"\n"));
    let cx = Daemon::spawn(dir, "cx", &["serve", "--config", cfg.to_str().unwrap()]);
    let cx_data = dir.join("cx-data");
    let url = wait_file(&cx_data.join("cx.url"), 30, &cx);
    let d = cx_data.to_str().unwrap();
    let node_cfg = psmt_config(dir, &url);
    enroll(dir, &cx_data, &url, &node_cfg);
    let node_data = dir.join("node-data");
    let (cx_pem0, cx_exp0) = cert_expiry(&cx_data);
    let (node_pem0, node_exp0) = cert_expiry(&node_data);
    let host_id = Identity::load(&node_data.join("pki")).unwrap().info.host_id;
    let node = Daemon::spawn(
        dir,
        "psmt",
        &["serve", "--config", node_cfg.to_str().unwrap()],
    );
    let data_addr = wait_file(&node_data.join("data.addr"), 30, &node);

    // Two thirds into their 40 s, both renew: a new key and certificate
    // on disk, the same host id, a later expiry the CX knows of.
    wait_for(60, "both certificates renewed", || {
        let (cx_pem, _) = cert_expiry(&cx_data);
        let (node_pem, _) = cert_expiry(&node_data);
        (cx_pem != cx_pem0 && node_pem != node_pem0).then_some(())
    });
    let (_, node_exp1) = cert_expiry(&node_data);
    assert!(node_exp1 > node_exp0);
    let renewed = Identity::load(&node_data.join("pki")).unwrap();
    assert_eq!(renewed.info.host_id, host_id, "the host id stays");
    let o = tern(dir, &["--data", d, "host", "list", "--json"]);
    let hosts: Vec<serde_json::Value> = serde_json::from_slice(&o.stdout).unwrap();
    let h = hosts
        .iter()
        .find(|h| h["host_id"] == host_id.as_str())
        .unwrap();
    assert!(h["cert_expires"].as_str().is_some(), "{h}");

    // Past the old certificates' expiry, nothing was restarted, and new
    // connections (fresh clients, full handshakes) still work: the CX's API
    // and the node's data port present the renewed certificates, the
    // renewed ones on disk authenticate as clients.
    let old_expiry = cx_exp0.max(node_exp0);
    wait_for(60, "the old certificates expired", || {
        ((unix_ms() / 1000) as i64 > old_expiry + 1).then_some(())
    });
    let rt = runtime();
    let cx_id = Identity::load(&cx_data.join("pki")).unwrap();
    let anon = transport::client(&cx_id.ca_pem, None).unwrap();
    let health = rt.block_on(async { anon.get(format!("{url}/api/v1/health")).send().await });
    assert!(
        health.is_ok_and(|r| r.status().is_success()),
        "the CX's API after renewal"
    );
    let hello = format!(
        "https://127.0.0.1:{}/data/v1/hello",
        data_addr.rsplit(':').next().unwrap()
    );
    let client = transport::client(&cx_id.ca_pem, Some(&cx_id)).unwrap();
    let v = get_json(&rt, &client, &hello);
    assert_eq!(v["host_id"], host_id.as_str());
    assert_eq!(v["peer"], cx_id.info.host_id);
    // The node keeps reporting in.
    wait_for(10, "fresh heartbeats after the old expiry", || {
        let o = tern(dir, &["--data", d, "host", "list", "--json"]);
        let hosts: Vec<serde_json::Value> = serde_json::from_slice(&o.stdout).unwrap();
        hosts
            .iter()
            .all(|h| h["heartbeat_age_s"].as_f64().is_some_and(|a| a < 1.0))
            .then_some(())
    });
}

#[test]
fn config_check_names_the_typo_its_line_and_file() {
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path().join("bad.toml");
    write(
        &p,
        "data_dir = \"/x\"\n\n[cx]\napi_listen = \"0.0.0.0:8443\"\nsesion_ttl = \"1h\"\n",
    );
    let o = tern(tmp.path(), &["config", "check", p.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    let e = stderr(&o);
    assert!(
        e.starts_with(&format!(
            "tern: {}:5:1: unknown field `sesion_ttl`",
            p.display()
        )),
        "{e}"
    );
    assert!(e.contains("session_ttl"), "lists the expected fields: {e}");

    let good = tmp.path().join("good.toml");
    write(&good, "[cx]\nsession_ttl = \"1h\"\n");
    let o = tern(tmp.path(), &["config", "check", good.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
}

#[test]
fn up_answers_health_stops_on_sigterm_and_restarts_on_the_same_data() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let data = dir.join("tern-data");
    let d = data.to_str().unwrap();
    for round in 0..2 {
        let _ = std::fs::remove_file(data.join("cx.url"));
        let mut up = Daemon::spawn(
            dir,
            &format!("up{round}"),
            &[
                "up",
                "--data",
                d,
                "--api-listen",
                "127.0.0.1:0",
                "--data-listen",
                "127.0.0.1:0",
                "--log-json",
            ],
        );
        let url = wait_file(&data.join("cx.url"), 30, &up);
        let ca = std::fs::read_to_string(data.join("pki/ca.crt")).unwrap();
        let client = transport::client(&ca, None).unwrap();
        let rt = runtime();
        let h = get_json(&rt, &client, &format!("{url}/api/v1/health"));
        assert_eq!(h["status"], "ok");
        assert_eq!(h["version"], env!("CARGO_PKG_VERSION"));
        assert_eq!(h["roles"], serde_json::json!(["cx", "ps", "mt", "agent"]));
        if round == 0 {
            let banner = wait_for(10, "banner", || {
                let l = up.log();
                l.contains("Stop with Ctrl-C").then_some(l)
            });
            assert!(
                banner.contains("UI and API:") && banner.contains("admin-password"),
                "{banner}"
            );
            let pw = data.join("admin-password");
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(
                std::fs::metadata(&pw).unwrap().permissions().mode() & 0o777,
                0o600
            );
            assert_eq!(
                std::fs::metadata(data.join("cli-token"))
                    .unwrap()
                    .permissions()
                    .mode()
                    & 0o777,
                0o600
            );
        }
        // JSON logs: every line parses.
        let took = up.terminate();
        assert!(took < Duration::from_secs(5), "SIGTERM took {took:?}");
        for line in up.log().lines().filter(|l| l.starts_with('{')) {
            serde_json::from_str::<serde_json::Value>(line)
                .unwrap_or_else(|e| panic!("{e}: {line}"));
        }
        assert!(up.log().contains("tern stopped"));
    }
}

#[test]
fn api_needs_credentials_and_documents_itself() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let cx = Daemon::spawn(
        dir,
        "cx",
        &["serve", "--config", cx_config(dir).to_str().unwrap()],
    );
    let data = dir.join("cx-data");
    let url = wait_file(&data.join("cx.url"), 30, &cx);
    let ca = std::fs::read_to_string(data.join("pki/ca.crt")).unwrap();
    let client = transport::client(&ca, None).unwrap();
    let rt = runtime();
    rt.block_on(async {
        let r = client
            .get(format!("{url}/api/v1/hosts"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401);
        let body: serde_json::Value = r.json().await.unwrap();
        assert_eq!(body["code"], "unauthorized", "{body}");
        assert!(
            body["action"].as_str().unwrap().contains("tern login"),
            "{body}"
        );
        let r = client
            .get(format!("{url}/api/v1/hosts"))
            .bearer_auth("tern_wrong")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401);

        let token = std::fs::read_to_string(data.join("cli-token")).unwrap();
        let r = client
            .get(format!("{url}/api/v1/hosts"))
            .bearer_auth(token.trim())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);

        // Password login gives a working token and a session cookie; bad passwords don't.
        let pw = std::fs::read_to_string(data.join("admin-password")).unwrap();
        let r = client
            .post(format!("{url}/api/v1/login"))
            .json(&serde_json::json!({"user": "admin", "password": "nope"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401);
        let r = client
            .post(format!("{url}/api/v1/login"))
            .json(&serde_json::json!({"user": "admin", "password": pw.trim()}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let cookie = r
            .headers()
            .get("set-cookie")
            .unwrap()
            .to_str()
            .unwrap()
            .to_owned();
        assert!(
            cookie.contains("HttpOnly") && cookie.contains("Secure"),
            "{cookie}"
        );
        let session = cookie.split(';').next().unwrap().to_owned();
        let r = client
            .get(format!("{url}/api/v1/whoami"))
            .header("cookie", &session)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);

        // Every GET path the OpenAPI document lists exists (none answers 404).
        let doc: serde_json::Value = client
            .get(format!("{url}/api/v1/openapi.json"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(doc["openapi"], "3.1.0");
        let paths = doc["paths"].as_object().unwrap();
        assert!(paths.len() >= 10);
        for (p, ops) in paths {
            for method in ops.as_object().unwrap().keys() {
                let req = client
                    .request(method.parse().unwrap(), format!("{url}{p}"))
                    .bearer_auth(token.trim());
                let req = if method == "post" {
                    req.json(&serde_json::json!({}))
                } else {
                    req
                };
                let r = req.send().await.unwrap();
                if r.status() == 404 {
                    // A path with parameters may answer 404 for the made-up
                    // name, but from its handler, not as an unknown endpoint.
                    let v: serde_json::Value = r.json().await.unwrap();
                    let e = v["message"].as_str().unwrap_or("");
                    assert!(
                        p.contains('{') && !e.contains("no such endpoint"),
                        "{method} {p} is documented but missing: {e}"
                    );
                }
            }
        }
        // The UI is served (embedded in release builds, from ui/ in debug).
        let r = client.get(format!("{url}/")).send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert!(r.text().await.unwrap().contains("<title>Tern</title>"));
    });

    // tern login saves a token the CLI then uses without --data.
    let pw_file = data.join("admin-password");
    let fp = {
        let ca_der = pki::pem_to_der(&ca).unwrap();
        pki::fingerprint(&ca_der)
    };
    let o = tern(
        dir,
        &[
            "login",
            "--cx",
            &url,
            "--user",
            "admin",
            "--password-file",
            pw_file.to_str().unwrap(),
            "--ca-fingerprint",
            &fp,
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let o = tern(dir, &["host", "list", "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = tern(
        dir,
        &[
            "login",
            "--cx",
            &url,
            "--password-file",
            pw_file.to_str().unwrap(),
            "--ca-fingerprint",
            "SHA256:00",
        ],
    );
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("fingerprint mismatch"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn rx_role_says_it_is_not_built_yet() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tmp.path().join("rx.toml");
    write(
        &cfg,
        &format!("data_dir = \"{}\"\n", tmp.path().join("d").display()),
    );
    let o = tern(
        tmp.path(),
        &["serve", "--role", "rx", "--config", cfg.to_str().unwrap()],
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("not built yet"), "{}", stderr(&o));
}
