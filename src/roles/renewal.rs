//! Certificate renewal: every process renews its own node certificate
//! before it expires, keeps its host id (so its pairs, plans and history
//! stay its own), and does not restart (an agent's NBD clients never see it).
//!
//! When two thirds of the certificate's life have passed
//! ([`pki::renewal_due`]), the node makes a new key and a CSR for the names
//! it would enroll with now, asks the CX (`POST /api/v1/node/renew`,
//! authenticated by the certificate it is replacing), writes the new pair
//! ([`Identity::save_cert`]) and puts it in the process's [`CertSlot`],
//! which every listener and client presents from their next handshake. A
//! CX renews its own the same way, through its own API.
//!
//! Invariants: the new pair is on disk before it is presented, so a restart
//! never goes back to an older certificate than peers have seen; a renewal
//! that fails changes nothing and is tried again at the next check; a node
//! that cannot renew is what the CX's `cert-expiry` alert is for.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};

use crate::engine::enroll::{RenewRequest, RenewResponse};
use crate::engine::pki::{self, Identity};
use crate::engine::shutdown::Shutdown;
use crate::engine::transport::{self, CertSlot};

pub struct Renewal {
    /// Where the identity lives (`DATA/pki`).
    pub dir: PathBuf,
    pub identity: Identity,
    pub slot: Arc<CertSlot>,
    /// Presents the slot's certificate.
    pub client: reqwest::Client,
    /// Names for the new certificate's SANs (`Config::cert_names`).
    pub names: Vec<String>,
}

impl Renewal {
    pub async fn run(mut self, mut shutdown: Shutdown) {
        let mut failing = false;
        loop {
            let every = check_interval(&self.identity.cert_pem);
            if pki::renewal_due(&self.identity.cert_pem, now_s()) {
                let r = tokio::select! {
                    r = self.renew() => r,
                    _ = shutdown.wait() => break,
                };
                match r {
                    Ok(expires) => {
                        tracing::info!(host_id = %self.identity.info.host_id, expires = %expires, "node certificate renewed");
                        failing = false;
                    }
                    Err(e) if !failing => {
                        tracing::warn!(host_id = %self.identity.info.host_id, error = %format!("{e:#}"), "cannot renew the node certificate; retrying");
                        failing = true;
                    }
                    Err(_) => {}
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = shutdown.wait() => break,
            }
        }
    }

    /// One renewal; returns when the new certificate expires.
    async fn renew(&mut self) -> anyhow::Result<String> {
        let (key, csr_pem) = pki::new_key_and_csr(&pki::default_sans(&self.names))?;
        let url = format!(
            "{}/api/v1/node/renew",
            self.identity.info.cx_url.trim_end_matches('/')
        );
        let a = transport::call(self.client.post(&url).json(&RenewRequest { csr_pem }))
            .await
            .with_context(|| format!("cannot reach the CX at {url}"))?;
        if !a.status.is_success() {
            bail!("the CX refused ({}): {}", a.status, a.error());
        }
        let r: RenewResponse = serde_json::from_value(a.body)
            .context("the CX's answer to a renewal is not a certificate")?;
        let der = pki::pem_to_der(&r.cert_pem).context("the renewed certificate is not PEM")?;
        if pki::common_name(&der).as_deref() != Some(self.identity.info.host_id.as_str()) {
            bail!("the CX renewed the certificate for another host id; keeping the current one");
        }
        let mut next = self.identity.clone();
        next.key_pem = key.serialize_pem();
        next.cert_pem = r.cert_pem;
        // The pair must be usable before it is written over the old one.
        CertSlot::new(&next).context("the renewed certificate does not match its key")?;
        let dir = self.dir.clone();
        let next =
            tokio::task::spawn_blocking(move || next.save_cert(&dir).map(|()| next)).await??;
        self.slot.set(&next)?;
        self.identity = next;
        Ok(pki::not_after_unix(&der)
            .map(|t| crate::util::rfc3339_ms(t.max(0) as u64 * 1000))
            .unwrap_or_default())
    }
}

/// How often to look: a twentieth of the certificate's life, between 1 s
/// and an hour (a year's certificate is looked at hourly; a test's
/// one-minute certificate every few seconds).
fn check_interval(cert_pem: &str) -> Duration {
    let life = pki::signed_and_expires(cert_pem)
        .map(|(from, until)| (until - from).max(0) as u64)
        .unwrap_or(3600);
    Duration::from_secs((life / 20).clamp(1, 3600))
}

fn now_s() -> i64 {
    (crate::util::now_ms() / 1000) as i64
}
