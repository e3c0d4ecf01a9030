//! The enrollment protocol, shared by the CX (issuer) and `tern enroll` (client).
//!
//! A token is `ID.SECRET`: `ID` names the token in the CX's store, `SECRET` is
//! 32 random bytes (base64url). Both sides derive `key = SHA-256("tern-enroll-v1:" || SECRET)`;
//! the CX stores only `key`.
//!
//! 1. The client, which does not know the CA yet, asks `GET /api/v1/enroll/ca?token_id=ID&nonce=N`
//!    over an unverified connection. The CX answers the CA certificate and
//!    `HMAC-SHA256(key, nonce || ca_der)`. Only a holder of the token can
//!    produce that MAC, so the client now trusts the CA without having sent
//!    the secret anywhere (a man in the middle learns nothing usable).
//! 2. The client connects again, verifying the CX against that CA, and sends the
//!    token and a CSR (`POST /api/v1/enroll`); the CX marks the token used in the
//!    same transaction that records the new host, and returns the certificate.

use base64::Engine;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub const TOKEN_ID_LEN: usize = 12;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnrollToken {
    pub id: String,
    pub secret: String,
}

impl EnrollToken {
    pub fn generate() -> EnrollToken {
        let id: [u8; TOKEN_ID_LEN / 2] = rand::random();
        let secret: [u8; 32] = rand::random();
        EnrollToken {
            id: hex::encode(id),
            secret: base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret),
        }
    }

    pub fn parse(s: &str) -> Result<EnrollToken, String> {
        let (id, secret) = s.trim().split_once('.').ok_or(
            "malformed enrollment token: expected ID.SECRET as printed by `tern token create`",
        )?;
        if id.len() != TOKEN_ID_LEN
            || !id.chars().all(|c| c.is_ascii_hexdigit())
            || secret.len() < 32
        {
            return Err(
                "malformed enrollment token: expected ID.SECRET as printed by `tern token create`"
                    .into(),
            );
        }
        Ok(EnrollToken {
            id: id.to_owned(),
            secret: secret.to_owned(),
        })
    }

    /// The derived key: MAC key and the verifier the CX stores.
    pub fn key(&self) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(b"tern-enroll-v1:");
        h.update(self.secret.as_bytes());
        h.finalize().into()
    }
}

impl std::fmt::Display for EnrollToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.id, self.secret)
    }
}

pub fn ca_mac(key: &[u8], nonce: &str, ca_der: &[u8]) -> String {
    let mut m = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("any key length");
    m.update(nonce.as_bytes());
    m.update(ca_der);
    hex::encode(m.finalize().into_bytes())
}

pub fn verify_ca_mac(key: &[u8], nonce: &str, ca_der: &[u8], mac_hex: &str) -> bool {
    let Ok(tag) = hex::decode(mac_hex) else {
        return false;
    };
    let mut m = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("any key length");
    m.update(nonce.as_bytes());
    m.update(ca_der);
    m.verify_slice(&tag).is_ok()
}

/// Constant-time comparison of two keys.
pub fn keys_equal(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CaResponse {
    pub ca_pem: String,
    pub fingerprint: String,
    pub mac: String,
}

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct EnrollRequest {
    pub token: String,
    pub csr_pem: String,
    pub name: String,
    pub roles: Vec<crate::config::Role>,
}

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct EnrollResponse {
    pub host_id: String,
    pub cert_pem: String,
    pub ca_pem: String,
}

/// A node asks for a new certificate for a new key, authenticated by its
/// current certificate (`POST /api/v1/node/renew`); it keeps its host id.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RenewRequest {
    pub csr_pem: String,
}

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RenewResponse {
    pub cert_pem: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_round_trips_and_rejects_garbage() {
        let t = EnrollToken::generate();
        assert_eq!(EnrollToken::parse(&t.to_string()).unwrap(), t);
        assert!(EnrollToken::parse("nope").is_err());
        assert!(EnrollToken::parse("zz.short").is_err());
    }

    #[test]
    fn mac_binds_nonce_and_ca() {
        let t = EnrollToken::generate();
        let k = t.key();
        let mac = ca_mac(&k, "n1", b"ca");
        assert!(verify_ca_mac(&k, "n1", b"ca", &mac));
        assert!(!verify_ca_mac(&k, "n2", b"ca", &mac));
        assert!(!verify_ca_mac(&k, "n1", b"other-ca", &mac));
        let other = EnrollToken::generate().key();
        assert!(!verify_ca_mac(&other, "n1", b"ca", &mac));
    }
}
