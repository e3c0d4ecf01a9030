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

pub use crate::api::auth::Principal;
use crate::api::auth::{TokenKind, UserRole};
use crate::engine::store::{self, API_TOKENS, Store, StoreError, USERS};
use crate::util::now_ms;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct User {
    pub name: String,
    /// argon2id PHC string.
    pub password_hash: String,
    pub role: UserRole,
    pub created_ms: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ApiToken {
    pub user: String,
    pub kind: TokenKind,
    pub label: String,
    pub created_ms: u64,
    pub expires_ms: Option<u64>,
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

/// A token's public id: the first 16 hex digits of its key (its SHA-256).
/// Listing and revoking go by it; it does not let anyone call the API.
pub fn token_id(token: &str) -> String {
    id_of_key(&token_key(token))
}

fn id_of_key(key: &str) -> String {
    key[..16.min(key.len())].to_owned()
}

/// Create an API token for `user`; returns the token (shown once).
pub fn issue_token(
    store: &Store,
    user: &str,
    kind: TokenKind,
    label: &str,
    ttl_ms: Option<u64>,
) -> Result<String, StoreError> {
    let token = format!("tern_{}", random_secret());
    let now = now_ms();
    let rec = ApiToken {
        user: user.to_owned(),
        kind,
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
        token_id: id_of_key(&key),
    }))
}

/// Every token (of `user`, or of everyone): `(id, record)`, newest first.
pub fn list_tokens(
    store: &Store,
    user: Option<&str>,
) -> Result<Vec<(String, ApiToken)>, StoreError> {
    let now = now_ms();
    let mut v: Vec<(String, ApiToken)> = store
        .list::<ApiToken>(API_TOKENS)?
        .into_iter()
        .filter(|(_, t)| user.is_none_or(|u| t.user == u))
        .filter(|(_, t)| t.expires_ms.is_none_or(|e| e > now))
        .map(|(k, t)| (id_of_key(&k), t))
        .collect();
    v.sort_by_key(|t| std::cmp::Reverse(t.1.created_ms));
    Ok(v)
}

/// Revoke the token with this id, if `user` (None: anyone's) owns it.
pub fn revoke_token_id(store: &Store, id: &str, user: Option<&str>) -> Result<bool, StoreError> {
    if id.len() != 16 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Ok(false);
    }
    store.update(|tx| {
        let keys: Vec<String> = store::list_in::<ApiToken>(tx, API_TOKENS)?
            .into_iter()
            .filter(|(k, t)| k.starts_with(id) && user.is_none_or(|u| t.user == u))
            .map(|(k, _)| k)
            .collect();
        for k in &keys {
            store::remove_in(tx, API_TOKENS, k)?;
        }
        Ok(!keys.is_empty())
    })
}

/// Revoke every token of `user` but the one with id `keep`.
pub fn revoke_user_tokens_in(
    tx: &redb::WriteTransaction,
    user: &str,
    keep: Option<&str>,
) -> Result<usize, StoreError> {
    let keys: Vec<String> = store::list_in::<ApiToken>(tx, API_TOKENS)?
        .into_iter()
        .filter(|(k, t)| t.user == user && keep.is_none_or(|id| id_of_key(k) != id))
        .map(|(k, _)| k)
        .collect();
    for k in &keys {
        store::remove_in(tx, API_TOKENS, k)?;
    }
    Ok(keys.len())
}

/// 1-64 letters, digits, `-`, `_`, `.` or `@`.
pub fn valid_user_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 64
        && n.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.@".contains(&b))
}

pub const MIN_PASSWORD: usize = 8;

/// Failed logins, per user name and per address, in a sliding window.
/// Bounded: at most [`LoginLimiter::MAX_KEYS`] names and addresses are
/// tracked; past that the oldest windows are forgotten first.
pub struct LoginLimiter {
    inner: std::sync::Mutex<std::collections::HashMap<String, (u64, u32)>>,
}

impl Default for LoginLimiter {
    fn default() -> Self {
        LoginLimiter {
            inner: std::sync::Mutex::new(std::collections::HashMap::new()),
        }
    }
}

impl LoginLimiter {
    pub const MAX_KEYS: usize = 10_000;

    /// `Err(seconds to wait)` when `key` has `max` failures in the window.
    pub fn check(&self, key: &str, max: u32, window_ms: u64) -> Result<(), u64> {
        let now = now_ms();
        let m = self.inner.lock().unwrap();
        match m.get(key) {
            Some(&(start, n)) if n >= max && now < start + window_ms => {
                Err((start + window_ms - now).div_ceil(1000))
            }
            _ => Ok(()),
        }
    }

    pub fn fail(&self, key: &str, window_ms: u64) {
        let now = now_ms();
        let mut m = self.inner.lock().unwrap();
        if m.len() >= Self::MAX_KEYS && !m.contains_key(key) {
            m.retain(|_, (start, _)| now < *start + window_ms);
            if m.len() >= Self::MAX_KEYS {
                let oldest = m
                    .iter()
                    .min_by_key(|(_, (s, _))| *s)
                    .map(|(k, _)| k.clone());
                if let Some(k) = oldest {
                    m.remove(&k);
                }
            }
        }
        let e = m.entry(key.to_owned()).or_insert((now, 0));
        if now >= e.0 + window_ms {
            *e = (now, 0);
        }
        e.1 += 1;
    }

    pub fn clear(&self, key: &str) {
        self.inner.lock().unwrap().remove(key);
    }
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
            role: UserRole::Admin,
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
        TokenKind::Local,
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
        let t = issue_token(&s, "admin", TokenKind::Cli, "t", None).unwrap();
        assert_eq!(lookup_token(&s, &t).unwrap().unwrap().user, "admin");
        assert!(lookup_token(&s, "tern_bogus").unwrap().is_none());
        let expired = issue_token(&s, "admin", TokenKind::Session, "t", Some(0)).unwrap();
        assert!(lookup_token(&s, &expired).unwrap().is_none());
        let t2 = issue_token(&s, "admin", TokenKind::Cli, "t2", None).unwrap();
        let ids: Vec<String> = list_tokens(&s, Some("admin"))
            .unwrap()
            .into_iter()
            .map(|(i, _)| i)
            .collect();
        assert!(ids.contains(&token_id(&t2)) && ids.contains(&token_id(&t)));
        assert!(!revoke_token_id(&s, &token_id(&t2), Some("someone-else")).unwrap());
        assert!(revoke_token_id(&s, &token_id(&t2), Some("admin")).unwrap());
        assert!(lookup_token(&s, &t2).unwrap().is_none());
        assert!(revoke_token(&s, &t).unwrap());
        assert!(lookup_token(&s, &t).unwrap().is_none());
    }

    #[test]
    fn the_login_limiter_refuses_after_max_failures_until_the_window_passes() {
        let l = LoginLimiter::default();
        for _ in 0..3 {
            assert!(l.check("u:a", 3, 60_000).is_ok());
            l.fail("u:a", 60_000);
        }
        let wait = l.check("u:a", 3, 60_000).unwrap_err();
        assert!((1..=60).contains(&wait), "{wait}");
        assert!(l.check("u:b", 3, 60_000).is_ok(), "per key");
        // A window that has passed starts again.
        for _ in 0..3 {
            l.fail("u:c", 0);
        }
        assert!(l.check("u:c", 3, 0).is_ok());
        l.clear("u:a");
        assert!(l.check("u:a", 3, 60_000).is_ok());
    }
}
