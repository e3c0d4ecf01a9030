//! `tern enroll` and `tern login`: the two commands that meet a CX before
//! this machine trusts its CA.

use std::path::PathBuf;

use anyhow::{Context, anyhow, bail};
use base64::Engine;
use clap::Args;

use super::Global;
use super::client::{SavedLogin, decode, login_file};
use crate::config::Role;
use crate::engine::enroll::{self, CaResponse, EnrollRequest, EnrollResponse, EnrollToken};
use crate::engine::pki::{self, Identity, NodeInfo};
use crate::engine::{fsutil, transport};

#[derive(Args, Debug)]
pub struct EnrollArgs {
    /// The one-time token printed by `tern token create`.
    #[arg(long, env = "TERN_ENROLL_TOKEN")]
    pub token: String,
    /// This node's config (its data_dir, name, roles and tls_names are used).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Roles this node will run (default: the config's `roles`).
    #[arg(long, value_delimiter = ',', value_name = "ROLES")]
    pub role: Vec<Role>,
    /// Name shown in host lists (default: node.name, else the host name).
    #[arg(long)]
    pub name: Option<String>,
    /// Also require the CA to have this fingerprint (as `tern token create` shows).
    #[arg(long, value_name = "SHA256")]
    pub ca_fingerprint: Option<String>,
    /// Replace an existing identity in the data directory.
    #[arg(long)]
    pub force: bool,
}

pub async fn run(a: EnrollArgs, g: &Global) -> anyhow::Result<()> {
    let cfg = super::config_or_default(a.config.as_deref(), g.data.as_deref())?;
    let cx =
        g.cx.clone()
            .ok_or_else(|| anyhow!("enroll needs --cx https://CX-HOST:8443"))?;
    let cx = cx.trim_end_matches('/').to_owned();
    let roles = if a.role.is_empty() {
        cfg.roles.clone()
    } else {
        a.role.clone()
    };
    if roles.is_empty() {
        bail!("say which roles this node runs: --role ps,mt (or `roles = [...]` in its config)");
    }
    let pki_dir = cfg.data_dir.join("pki");
    if Identity::exists(&pki_dir) && !a.force {
        bail!(
            "{} already holds an enrolled identity; pass --force to replace it",
            pki_dir.display()
        );
    }
    let token = EnrollToken::parse(&a.token).map_err(|e| anyhow!(e))?;

    // Step 1: learn the CA, authenticated by the token (no secret sent).
    let nonce_bytes: [u8; 24] = rand::random();
    let nonce = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(nonce_bytes);
    let r = transport::unverified_client()?
        .get(format!("{cx}/api/v1/enroll/ca"))
        .query(&[("token_id", token.id.as_str()), ("nonce", nonce.as_str())])
        .send()
        .await
        .map_err(|e| anyhow!("cannot reach the CX at {cx}: {}", super::reqwest_chain(&e)))?;
    let ca: CaResponse = serde_json::from_value(decode(r).await.context("enrollment refused")?)?;
    let ca_der = pki::pem_to_der(&ca.ca_pem)
        .ok_or_else(|| anyhow!("the CX sent an unreadable CA certificate"))?;
    if !enroll::verify_ca_mac(&token.key(), &nonce, &ca_der, &ca.mac) {
        bail!(
            "the server at {cx} could not prove it issued this token (CA authentication failed); check the URL and the token — do not enroll with this server"
        );
    }
    let fp = pki::fingerprint(&ca_der);
    if let Some(want) = &a.ca_fingerprint
        && pki::normalize_fingerprint(want) != pki::normalize_fingerprint(&fp)
    {
        bail!("CA fingerprint mismatch: the CX has {fp}, you expected {want}; refusing to enroll");
    }

    // Step 2: key and CSR here; the key never leaves this machine.
    let (key, csr) = pki::new_key_and_csr(&pki::default_sans(&cfg.cert_names()))?;
    let name = a.name.clone().unwrap_or_else(|| cfg.node_name());
    let client = transport::client(&ca.ca_pem, None)?;
    let r = client
        .post(format!("{cx}/api/v1/enroll"))
        .json(&EnrollRequest {
            token: token.to_string(),
            csr_pem: csr,
            name: name.clone(),
            roles: roles.clone(),
        })
        .send()
        .await
        .map_err(|e| anyhow!("cannot reach the CX at {cx}: {}", super::reqwest_chain(&e)))?;
    let resp: EnrollResponse =
        serde_json::from_value(decode(r).await.context("enrollment refused")?)?;
    let id = Identity {
        info: NodeInfo {
            host_id: resp.host_id.clone(),
            cx_url: cx.clone(),
        },
        cert_pem: resp.cert_pem,
        key_pem: key.serialize_pem(),
        ca_pem: resp.ca_pem,
    };
    id.save(&pki_dir)?;
    println!(
        "enrolled {name} as host {} with the CX at {cx}",
        resp.host_id
    );
    println!("CA fingerprint: {fp} (verified with the token)");
    println!("identity saved in {}", pki_dir.display());
    Ok(())
}

pub async fn login(
    g: &Global,
    user: String,
    password_file: Option<PathBuf>,
    ca_fingerprint: Option<String>,
) -> anyhow::Result<()> {
    let cx =
        g.cx.clone()
            .or_else(|| {
                g.data
                    .as_ref()
                    .and_then(|d| std::fs::read_to_string(d.join("cx.url")).ok())
                    .map(|s| s.trim().to_owned())
            })
            .unwrap_or_else(|| super::client::DEFAULT_CX.to_owned());
    let cx = cx.trim_end_matches('/').to_owned();
    // The CA: from the local data dir if we are on the CX, else fetched and
    // checked against the fingerprint the operator gives (or shown for them).
    let ca_pem = match g
        .data
        .as_ref()
        .map(|d| d.join("pki/ca.crt"))
        .filter(|p| p.exists())
    {
        Some(p) => std::fs::read_to_string(p)?,
        None => {
            let r = transport::unverified_client()?
                .get(format!("{cx}/api/v1/pki/ca"))
                .send()
                .await
                .map_err(|e| {
                    anyhow!("cannot reach the CX at {cx}: {}", super::reqwest_chain(&e))
                })?;
            let v = decode(r).await?;
            let pem = v["ca_pem"].as_str().unwrap_or_default().to_owned();
            let der =
                pki::pem_to_der(&pem).ok_or_else(|| anyhow!("the CX sent an unreadable CA"))?;
            let fp = pki::fingerprint(&der);
            match &ca_fingerprint {
                Some(want)
                    if pki::normalize_fingerprint(want) == pki::normalize_fingerprint(&fp) => {}
                Some(want) => {
                    bail!("CA fingerprint mismatch: the CX has {fp}, you expected {want}")
                }
                None => eprintln!(
                    "CA fingerprint: {fp}\n  (not verified: compare it with the CX's, or pass --ca-fingerprint)"
                ),
            }
            pem
        }
    };
    let password = super::read_password(password_file.as_deref())?;
    let client = transport::client(&ca_pem, None)?;
    let r = client
        .post(format!("{cx}/api/v1/login"))
        .json(&serde_json::json!({"user": user, "password": password, "kind": "cli"}))
        .send()
        .await
        .map_err(|e| anyhow!("cannot reach the CX at {cx}: {}", super::reqwest_chain(&e)))?;
    let v = decode(r).await.context("login refused")?;
    let saved = SavedLogin {
        cx_url: cx.clone(),
        user: user.clone(),
        token: v["token"].as_str().unwrap_or_default().to_owned(),
        ca_pem,
        expires: v["expires"].as_str().unwrap_or_default().to_owned(),
    };
    let p = login_file();
    fsutil::write_durable(&p, &serde_json::to_vec_pretty(&saved)?, 0o600)?;
    println!(
        "logged in to {cx} as {user} until {}; token saved in {}",
        saved.expires,
        p.display()
    );
    Ok(())
}
