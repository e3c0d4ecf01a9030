//! Users, passwords and API tokens of the configuration server.
//!
//! Passwords are stored as argon2id PHC strings. API tokens (browser sessions,
//! `tern login` tokens, the local admin CLI token) are random 256-bit values
//! shown once; the store keeps only their SHA-256, so a copy of the database
//! does not let anyone call the API.

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use base64::Engine;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::engine::store::{self, API_TOKENS, Store, StoreError, USERS};
use crate::util::now_ms;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct User {
    pub name: String,
    /// argon2id PHC string.
    pub password_hash: String,
    /// `admin` may change everything; later issues add `operator` and `viewer`.
    pub role: String,
    pub created_ms: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ApiToken {
    pub user: String,
    /// `session` (browser / login), `cli` (long-lived), `local` (the CX host's own CLI token).
    pub kind: String,
    pub label: String,
    pub created_ms: u64,
    pub expires_ms: Option<u64>,
}

/// Who is calling the API.
#[derive(Debug, Clone)]
pub struct Principal {
    pub user: String,
    pub role: String,
}

pub fn hash_password(pw: &str) -> String {
    let salt_bytes: [u8; 16] = rand::random();
    let salt = SaltString::encode_b64(&salt_bytes).expect("16 bytes is a valid salt");
    Argon2::default()
        .hash_password(pw.as_bytes(), &salt)
        .expect("argon2 with default params cannot fail")
        .to_string()
}

pub fn verify_password(pw: &str, phc: &str) -> bool {
    PasswordHash::new(phc)
        .map(|h| Argon2::default().verify_password(pw.as_bytes(), &h).is_ok())
        .unwrap_or(false)
}

pub fn random_secret() -> String {
    let b: [u8; 32] = rand::random();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

fn token_key(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// Create an API token for `user`; returns the token (shown once).
pub fn issue_token(
    store: &Store,
    user: &str,
    kind: &str,
    label: &str,
    ttl_ms: Option<u64>,
) -> Result<String, StoreError> {
    let token = format!("tern_{}", random_secret());
    let now = now_ms();
    let rec = ApiToken {
        user: user.to_owned(),
        kind: kind.to_owned(),
        label: label.to_owned(),
        created_ms: now,
        expires_ms: ttl_ms.map(|t| now + t),
    };
    store.put(API_TOKENS, &token_key(&token), &rec)?;
    Ok(token)
}

/// The principal behind a token, if the token is known and unexpired.
pub fn lookup_token(store: &Store, token: &str) -> Result<Option<Principal>, StoreError> {
    let key = token_key(token);
    let Some(t) = store.get::<ApiToken>(API_TOKENS, &key)? else {
        return Ok(None);
    };
    if t.expires_ms.is_some_and(|e| e <= now_ms()) {
        store.remove(API_TOKENS, &key)?;
        return Ok(None);
    }
    let Some(u) = store.get::<User>(USERS, &t.user)? else {
        return Ok(None);
    };
    Ok(Some(Principal {
        user: u.name,
        role: u.role,
    }))
}

pub fn revoke_token(store: &Store, token: &str) -> Result<bool, StoreError> {
    store.remove(API_TOKENS, &token_key(token))
}

/// First start: the admin user, with a random password written next to the
/// state (mode 0600). Returns the password file path when it was created now.
pub fn ensure_admin(
    store: &Store,
    data_dir: &std::path::Path,
) -> anyhow::Result<Option<std::path::PathBuf>> {
    let pw_path = data_dir.join("admin-password");
    // An installer (the appliance's first boot, from its OVF property) may
    // leave the first password here, mode 0600; else one is made up.
    let preset = if pw_path.exists() {
        let b = crate::engine::fsutil::read_secret(&pw_path)?;
        Some(String::from_utf8_lossy(&b).trim().to_owned()).filter(|p| p.len() >= 8)
    } else {
        None
    };
    let created = store.update(|tx| -> Result<Option<String>, StoreError> {
        if store::get_in::<User>(tx, USERS, "admin")?.is_some() {
            return Ok(None);
        }
        let pw = preset.unwrap_or_else(|| random_secret()[..24].to_owned());
        let user = User {
            name: "admin".into(),
            password_hash: hash_password(&pw),
            role: "admin".into(),
            created_ms: now_ms(),
        };
        store::put_in(tx, USERS, "admin", &user)?;
        Ok(Some(pw))
    })?;
    match created {
        Some(pw) => {
            crate::engine::fsutil::write_durable(&pw_path, format!("{pw}\n").as_bytes(), 0o600)?;
            Ok(Some(pw_path))
        }
        None => Ok(None),
    }
}

/// The CX host's own admin CLI token, at `DATA/cli-token` (mode 0600).
pub fn ensure_local_cli_token(store: &Store, data_dir: &std::path::Path) -> anyhow::Result<()> {
    let p = data_dir.join("cli-token");
    if p.exists() {
        let tok = String::from_utf8(crate::engine::fsutil::read_secret(&p)?)?;
        if lookup_token(store, tok.trim())?.is_some() {
            return Ok(());
        }
    }
    let tok = issue_token(
        store,
        "admin",
        "local",
        "CX host CLI token (DATA/cli-token)",
        None,
    )?;
    crate::engine::fsutil::write_durable(&p, format!("{tok}\n").as_bytes(), 0o600)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn password_hash_verifies_only_the_right_password() {
        let h = hash_password("correct horse");
        assert!(h.starts_with("$argon2id$"));
        assert!(verify_password("correct horse", &h));
        assert!(!verify_password("wrong", &h));
    }

    #[test]
    fn tokens_resolve_until_revoked_or_expired() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(d.path()).unwrap();
        ensure_admin(&s, d.path())
            .unwrap()
            .expect("created on first start");
        assert!(
            ensure_admin(&s, d.path()).unwrap().is_none(),
            "created once"
        );
        let t = issue_token(&s, "admin", "cli", "t", None).unwrap();
        assert_eq!(lookup_token(&s, &t).unwrap().unwrap().user, "admin");
        assert!(lookup_token(&s, "tern_bogus").unwrap().is_none());
        let expired = issue_token(&s, "admin", "session", "t", Some(0)).unwrap();
        assert!(lookup_token(&s, &expired).unwrap().is_none());
        assert!(revoke_token(&s, &t).unwrap());
        assert!(lookup_token(&s, &t).unwrap().is_none());
    }
}
