//! The CX's certificate authority and every node's identity.
//!
//! The CX creates a CA on first start (`pki/ca.crt`, `pki/ca.key`). Every process
//! (CX included) has a node identity: a key generated locally that never leaves
//! the host, and a certificate the CA signed from its CSR. The certificate's
//! common name is the host id the CX assigned; its SANs are the names the node
//! asked for, so the same certificate serves the data port and authenticates the
//! node as a client.
//!
//! Invariants: private keys are written mode 0600 and refused if readable by
//! others; the CA key exists only on the CX; a certificate is issued only by
//! [`Ca::sign_csr`], which overrides the subject with the assigned host id.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SerialNumber,
};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::engine::fsutil::{read_secret, write_durable};

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("bad certificate signing request: {0}")]
    BadCsr(String),
    #[error("{path}: not a valid PEM certificate or key")]
    BadPem { path: PathBuf },
    #[error(
        "this node is not enrolled ({0} missing); run `tern enroll --cx https://CX:8443 --token TOKEN` first"
    )]
    NotEnrolled(PathBuf),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> PkiError + '_ {
    move |source| PkiError::Io {
        path: path.to_owned(),
        source,
    }
}

/// How long certificates issued to nodes stay valid (`cx.node_cert_validity`).
pub const NODE_CERT_VALIDITY: Duration = Duration::from_secs(365 * 24 * 3600);
/// How long the CA stays valid.
pub const CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// `SHA256:AA:BB:…` over the DER bytes: the form an operator compares by eye.
pub fn fingerprint(der: &[u8]) -> String {
    let d = Sha256::digest(der);
    let hex: Vec<String> = d.iter().map(|b| format!("{b:02X}")).collect();
    format!("SHA256:{}", hex.join(":"))
}

/// Normalise a fingerprint typed by an operator (case, colons, prefix).
pub fn normalize_fingerprint(s: &str) -> String {
    s.trim()
        .trim_start_matches("SHA256:")
        .trim_start_matches("sha256:")
        .chars()
        .filter(|c| c.is_ascii_hexdigit())
        .map(|c| c.to_ascii_uppercase())
        .collect()
}

pub fn pem_to_der(pem: &str) -> Option<Vec<u8>> {
    use rustls_pki_types::pem::PemObject;
    rustls_pki_types::CertificateDer::from_pem_slice(pem.as_bytes())
        .ok()
        .map(|c| c.to_vec())
}

/// The common name of a certificate: for node certificates, the host id.
pub fn common_name(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    cert.subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .map(str::to_owned)
}

/// Expiry of a certificate, as seconds since the Unix epoch.
pub fn not_after_unix(der: &[u8]) -> Option<i64> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    Some(cert.validity().not_after.timestamp())
}

/// A certificate's `notBefore` and `notAfter`, Unix seconds.
pub fn validity_unix(der: &[u8]) -> Option<(i64, i64)> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let v = cert.validity();
    Some((v.not_before.timestamp(), v.not_after.timestamp()))
}

/// Whether a node certificate is due for renewal at `now_s` (Unix
/// seconds): two thirds of its life, counted from when it was signed (its
/// `notBefore` plus the clock slack [`validity`] gives), have passed.
pub fn renewal_due(cert_pem: &str, now_s: i64) -> bool {
    match signed_and_expires(cert_pem) {
        Some((signed, until)) => now_s >= signed + (until - signed) * 2 / 3,
        None => true,
    }
}

/// When a certificate was signed (its `notBefore` plus the clock slack) and
/// when it expires, Unix seconds.
pub fn signed_and_expires(cert_pem: &str) -> Option<(i64, i64)> {
    let (from, until) = validity_unix(&pem_to_der(cert_pem)?)?;
    Some((from + CLOCK_SLACK_S, until))
}

/// Clock slack before "now" in every certificate's `notBefore`.
const CLOCK_SLACK_S: i64 = 300;

fn validity(params: &mut CertificateParams, valid_for: Duration) {
    let now = time_now();
    // Five minutes of slack for clocks that disagree a little.
    params.not_before = now - time::Duration::seconds(CLOCK_SLACK_S);
    params.not_after = now + time::Duration::seconds(valid_for.as_secs() as i64);
}

fn time_now() -> time::OffsetDateTime {
    time::OffsetDateTime::now_utc()
}

fn random_serial() -> SerialNumber {
    let mut b: [u8; 16] = rand::random();
    b[0] &= 0x7f; // positive INTEGER
    SerialNumber::from_slice(&b)
}

/// The certificate authority held by the CX.
pub struct Ca {
    pub cert_pem: String,
    pub cert_der: Vec<u8>,
    issuer: Issuer<'static, KeyPair>,
}

impl Ca {
    pub fn cert_path(dir: &Path) -> PathBuf {
        dir.join("ca.crt")
    }

    /// Load the CA from `dir`, or create it if this is the first start.
    pub fn load_or_create(dir: &Path, org: &str) -> Result<Ca, PkiError> {
        let cert_path = Self::cert_path(dir);
        let key_path = dir.join("ca.key");
        if cert_path.exists() {
            let cert_pem = std::fs::read_to_string(&cert_path).map_err(io_err(&cert_path))?;
            let key_pem = read_secret(&key_path).map_err(io_err(&key_path))?;
            let key_pem = String::from_utf8(key_pem).map_err(|_| PkiError::BadPem {
                path: key_path.clone(),
            })?;
            let key = KeyPair::from_pem(&key_pem).map_err(|_| PkiError::BadPem {
                path: key_path.clone(),
            })?;
            let cert_der = pem_to_der(&cert_pem).ok_or(PkiError::BadPem {
                path: cert_path.clone(),
            })?;
            let issuer = Issuer::from_ca_cert_pem(&cert_pem, key)?;
            return Ok(Ca {
                cert_pem,
                cert_der,
                issuer,
            });
        }
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, format!("Tern CA ({org})"));
        dn.push(DnType::OrganizationName, org.to_owned());
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.serial_number = Some(random_serial());
        validity(&mut params, CA_VALIDITY);
        let cert = params.self_signed(&key)?;
        let cert_pem = cert.pem();
        write_durable(&key_path, key.serialize_pem().as_bytes(), 0o600)
            .map_err(io_err(&key_path))?;
        write_durable(&cert_path, cert_pem.as_bytes(), 0o644).map_err(io_err(&cert_path))?;
        let issuer = Issuer::new(params, key);
        Ok(Ca {
            cert_der: cert.der().to_vec(),
            cert_pem,
            issuer,
        })
    }

    pub fn fingerprint(&self) -> String {
        fingerprint(&self.cert_der)
    }

    /// Sign a node's CSR, valid for `valid_for`. The subject is replaced by
    /// `host_id`; the SANs the node asked for are kept (they name the node's
    /// listeners).
    pub fn sign_csr(
        &self,
        csr_pem: &str,
        host_id: &str,
        valid_for: Duration,
    ) -> Result<String, PkiError> {
        let mut csr = CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(|e| PkiError::BadCsr(e.to_string()))?;
        let p = &mut csr.params;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, host_id.to_owned());
        p.distinguished_name = dn;
        p.is_ca = IsCa::ExplicitNoCa;
        p.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        p.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        p.serial_number = Some(random_serial());
        p.use_authority_key_identifier_extension = true;
        validity(p, valid_for);
        Ok(csr.signed_by(&self.issuer)?.pem())
    }
}

/// What a node knows about itself after enrollment (`pki/node.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeInfo {
    pub host_id: String,
    /// The CX this node enrolled with.
    pub cx_url: String,
}

/// A node's certificate, key and the CA that signed it.
#[derive(Clone)]
pub struct Identity {
    pub info: NodeInfo,
    pub cert_pem: String,
    pub key_pem: String,
    pub ca_pem: String,
}

/// A fresh key and a CSR naming `sans`. The key stays with the caller.
pub fn new_key_and_csr(sans: &[String]) -> Result<(KeyPair, String), PkiError> {
    let key = KeyPair::generate()?;
    let params = CertificateParams::new(sans.to_vec())?;
    let csr = params.serialize_request(&key)?;
    Ok((key, csr.pem()?))
}

impl Identity {
    pub fn exists(dir: &Path) -> bool {
        dir.join("node.json").exists() && dir.join("node.crt").exists()
    }

    pub fn load(dir: &Path) -> Result<Identity, PkiError> {
        finish_renewal(dir)?;
        let info_path = dir.join("node.json");
        if !info_path.exists() {
            return Err(PkiError::NotEnrolled(info_path));
        }
        let info: NodeInfo =
            serde_json::from_slice(&std::fs::read(&info_path).map_err(io_err(&info_path))?)
                .map_err(|_| PkiError::BadPem {
                    path: info_path.clone(),
                })?;
        let read = |name: &str| -> Result<String, PkiError> {
            let p = dir.join(name);
            std::fs::read_to_string(&p).map_err(io_err(&p))
        };
        let key_path = dir.join("node.key");
        let key_pem = String::from_utf8(read_secret(&key_path).map_err(io_err(&key_path))?)
            .map_err(|_| PkiError::BadPem { path: key_path })?;
        Ok(Identity {
            info,
            cert_pem: read("node.crt")?,
            key_pem,
            ca_pem: read("ca.crt")?,
        })
    }

    /// Write this identity's key and certificate over the ones on disk
    /// (a renewal), so that a crash at any point leaves either the old pair
    /// or this one, never a key with the other's certificate: both go to
    /// `.new` files first (the certificate last, so its presence means the
    /// key is complete), then are renamed, key first; [`Identity::load`]
    /// finishes a renewal a crash interrupted.
    pub fn save_cert(&self, dir: &Path) -> Result<(), PkiError> {
        let w = |name: &str, bytes: &[u8], mode: u32| write_in(dir, name, bytes, mode);
        w("node.key.new", self.key_pem.as_bytes(), 0o600)?;
        w("node.crt.new", self.cert_pem.as_bytes(), 0o644)?;
        finish_renewal(dir)
    }

    /// Persist: key first (0600), then certificates, then node.json last, so
    /// `exists()` is true only for a complete identity.
    pub fn save(&self, dir: &Path) -> Result<(), PkiError> {
        let w = |name: &str, bytes: &[u8], mode: u32| write_in(dir, name, bytes, mode);
        w("node.key", self.key_pem.as_bytes(), 0o600)?;
        w("node.crt", self.cert_pem.as_bytes(), 0o644)?;
        w("ca.crt", self.ca_pem.as_bytes(), 0o644)?;
        let info = serde_json::to_vec_pretty(&self.info).expect("NodeInfo serializes");
        w("node.json", &info, 0o644)
    }
}

/// `dir/name`, durably (see [`write_durable`]).
fn write_in(dir: &Path, name: &str, bytes: &[u8], mode: u32) -> Result<(), PkiError> {
    let p = dir.join(name);
    write_durable(&p, bytes, mode).map_err(io_err(&p))
}

/// Completes a renewal [`Identity::save_cert`] began: with
/// `node.crt.new` present, both halves were written, so rename them into
/// place (the key may already be); with only `node.key.new`, the
/// certificate never arrived, so drop it and keep the old pair.
fn finish_renewal(dir: &Path) -> Result<(), PkiError> {
    let (key_new, crt_new) = (dir.join("node.key.new"), dir.join("node.crt.new"));
    let rename = |from: &Path, to: &str| std::fs::rename(from, dir.join(to)).map_err(io_err(from));
    if crt_new.exists() {
        if key_new.exists() {
            rename(&key_new, "node.key")?;
        }
        rename(&crt_new, "node.crt")?;
    } else if key_new.exists() {
        std::fs::remove_file(&key_new).map_err(io_err(&key_new))?;
    } else {
        return Ok(());
    }
    crate::engine::fsutil::sync_dir(dir).map_err(io_err(dir))
}

/// The SANs a node asks for: configured names, this host's name, the
/// addresses of its interfaces (so a peer that dials any of them, as the CX
/// tells it to when a wildcard data port is advertised, finds it named) and
/// loopback.
pub fn default_sans(extra: &[String]) -> Vec<String> {
    let mut v: Vec<String> = extra.to_vec();
    if let Ok(h) = hostname() {
        v.push(h);
    }
    v.extend(
        crate::engine::sysstats::interface_ips()
            .iter()
            .map(|ip| ip.to_string()),
    );
    for s in ["localhost", "127.0.0.1", "::1"] {
        v.push(s.to_owned());
    }
    let mut seen = std::collections::HashSet::new();
    v.retain(|s| !s.is_empty() && seen.insert(s.clone()));
    v
}

pub fn hostname() -> std::io::Result<String> {
    let s = std::fs::read_to_string("/proc/sys/kernel/hostname")?;
    Ok(s.trim().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ca_signs_a_csr_with_the_assigned_host_id() {
        let d = tempfile::tempdir().unwrap();
        let ca = Ca::load_or_create(d.path(), "test").unwrap();
        let (_key, csr) = new_key_and_csr(&default_sans(&["cx.example".into()])).unwrap();
        let cert = ca.sign_csr(&csr, "host-42", NODE_CERT_VALIDITY).unwrap();
        let der = pem_to_der(&cert).unwrap();
        assert_eq!(common_name(&der).as_deref(), Some("host-42"));
        // The CA reloads from disk with the same fingerprint.
        let again = Ca::load_or_create(d.path(), "test").unwrap();
        assert_eq!(again.fingerprint(), ca.fingerprint());
    }

    #[test]
    fn garbage_csr_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let ca = Ca::load_or_create(d.path(), "test").unwrap();
        assert!(matches!(
            ca.sign_csr("not a csr", "h", NODE_CERT_VALIDITY),
            Err(PkiError::BadCsr(_))
        ));
    }

    #[test]
    fn a_certificate_is_due_for_renewal_after_two_thirds_of_its_life() {
        let d = tempfile::tempdir().unwrap();
        let ca = Ca::load_or_create(d.path(), "test").unwrap();
        let (_key, csr) = new_key_and_csr(&["n".into()]).unwrap();
        let cert = ca.sign_csr(&csr, "h", Duration::from_secs(3000)).unwrap();
        let now = time_now().unix_timestamp();
        assert!(!renewal_due(&cert, now));
        assert!(!renewal_due(&cert, now + 1900));
        assert!(renewal_due(&cert, now + 2100));
        assert!(renewal_due("not a certificate", now));
    }

    #[test]
    fn a_renewal_is_all_or_nothing_across_a_crash() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path();
        let ca = Ca::load_or_create(dir, "test").unwrap();
        let pair = || {
            let (key, csr) = new_key_and_csr(&["n".into()]).unwrap();
            (
                key.serialize_pem(),
                ca.sign_csr(&csr, "h", NODE_CERT_VALIDITY).unwrap(),
            )
        };
        let (k1, c1) = pair();
        let mut id = Identity {
            info: NodeInfo {
                host_id: "h".into(),
                cx_url: "https://cx".into(),
            },
            cert_pem: c1.clone(),
            key_pem: k1.clone(),
            ca_pem: ca.cert_pem.clone(),
        };
        id.save(dir).unwrap();
        let (k2, c2) = pair();
        // Crash after the new key only: the old pair stays.
        write_durable(&dir.join("node.key.new"), k2.as_bytes(), 0o600).unwrap();
        let got = Identity::load(dir).unwrap();
        assert_eq!((got.key_pem, got.cert_pem), (k1.clone(), c1.clone()));
        // Crash after both were written and the key renamed: the new pair.
        write_durable(&dir.join("node.key.new"), k2.as_bytes(), 0o600).unwrap();
        write_durable(&dir.join("node.crt.new"), c2.as_bytes(), 0o644).unwrap();
        std::fs::rename(dir.join("node.key.new"), dir.join("node.key")).unwrap();
        let got = Identity::load(dir).unwrap();
        assert_eq!((got.key_pem, got.cert_pem), (k2.clone(), c2.clone()));
        // A whole renewal.
        let (k3, c3) = pair();
        (id.key_pem, id.cert_pem) = (k3.clone(), c3.clone());
        id.save_cert(dir).unwrap();
        let got = Identity::load(dir).unwrap();
        assert_eq!((got.key_pem, got.cert_pem), (k3, c3));
        assert_eq!(got.info.host_id, "h");
        assert!(!dir.join("node.key.new").exists() && !dir.join("node.crt.new").exists());
    }

    #[test]
    fn fingerprints_normalize() {
        assert_eq!(normalize_fingerprint("SHA256:ab:Cd"), "ABCD");
        assert_eq!(normalize_fingerprint("abcd"), "ABCD");
    }
}
