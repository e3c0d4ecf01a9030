//! Reaching the CX from the command line: which URL, which CA, which token.
//!
//! Resolution order (first found wins):
//! - URL: `--cx` / `TERN_CX`; `DATA/cx.url` when `--data` is given; the saved
//!   login; `https://127.0.0.1:8443`.
//! - CA: `DATA/pki/ca.crt`; the CA saved by `tern login`.
//! - token: `TERN_TOKEN`; `DATA/cli-token`; the saved login.

use std::path::{Path, PathBuf};

use anyhow::{Context, anyhow, bail};
use serde::{Deserialize, Serialize};

use crate::engine::fsutil;
use crate::engine::transport;

pub const DEFAULT_CX: &str = "https://127.0.0.1:8443";

/// What `tern login` saves (mode 0600).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SavedLogin {
    pub cx_url: String,
    pub user: String,
    pub token: String,
    pub ca_pem: String,
    pub expires: String,
}

pub fn login_file() -> PathBuf {
    if let Ok(p) = std::env::var("TERN_LOGIN_FILE") {
        return PathBuf::from(p);
    }
    let base = std::env::var("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            PathBuf::from(std::env::var("HOME").unwrap_or_else(|_| ".".into())).join(".config")
        });
    base.join("tern").join("login.json")
}

pub fn load_login() -> Option<SavedLogin> {
    let p = login_file();
    let bytes = fsutil::read_secret(&p).ok()?;
    serde_json::from_slice(&bytes).ok()
}

pub struct Api {
    pub base: String,
    pub http: reqwest::Client,
    pub token: Option<String>,
}

fn read_trim(p: &Path) -> Option<String> {
    std::fs::read_to_string(p).ok().map(|s| s.trim().to_owned())
}

impl Api {
    pub fn resolve(cx: Option<&str>, data: Option<&Path>) -> anyhow::Result<Api> {
        let saved = load_login();
        let base = cx
            .map(str::to_owned)
            .or_else(|| data.and_then(|d| read_trim(&d.join("cx.url"))))
            .or_else(|| saved.as_ref().map(|s| s.cx_url.clone()))
            .unwrap_or_else(|| DEFAULT_CX.to_owned());
        let base = base.trim_end_matches('/').to_owned();
        let ca = data
            .and_then(|d| std::fs::read_to_string(d.join("pki").join("ca.crt")).ok())
            .or_else(|| {
                saved
                    .as_ref()
                    .filter(|s| s.cx_url == base)
                    .map(|s| s.ca_pem.clone())
            })
            .ok_or_else(|| {
                anyhow!(
                    "don't know the CA of the CX at {base}: run `tern login --cx {base} --user admin` (it shows the CA fingerprint to check), or on the CX host pass --data DIR"
                )
            })?;
        let token = match std::env::var("TERN_TOKEN") {
            Ok(t) if !t.trim().is_empty() => Some(t.trim().to_owned()),
            _ => data
                .map(|d| d.join("cli-token"))
                .filter(|p| p.exists())
                .map(|p| -> anyhow::Result<String> {
                    let b = fsutil::read_secret(&p)
                        .with_context(|| format!("cannot read {}", p.display()))?;
                    Ok(String::from_utf8(b)?.trim().to_owned())
                })
                .transpose()?
                .or_else(|| {
                    saved
                        .as_ref()
                        .filter(|s| s.cx_url == base)
                        .map(|s| s.token.clone())
                }),
        };
        Ok(Api {
            base,
            http: transport::client(&ca, None)?,
            token,
        })
    }

    fn req(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let mut r = self.http.request(method, format!("{}{}", self.base, path));
        if let Some(t) = &self.token {
            r = r.bearer_auth(t);
        }
        r
    }

    pub async fn get(&self, path: &str) -> anyhow::Result<serde_json::Value> {
        self.send(self.req(reqwest::Method::GET, path)).await
    }

    pub async fn post(
        &self,
        path: &str,
        body: &impl Serialize,
    ) -> anyhow::Result<serde_json::Value> {
        self.send(self.req(reqwest::Method::POST, path).json(body))
            .await
    }

    pub async fn delete(&self, path: &str) -> anyhow::Result<serde_json::Value> {
        self.send(self.req(reqwest::Method::DELETE, path)).await
    }

    /// PATCH and decode into `T`.
    pub async fn patch_as<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        body: &impl Serialize,
    ) -> anyhow::Result<T> {
        let v = self
            .send(self.req(reqwest::Method::PATCH, path).json(body))
            .await?;
        serde_json::from_value(v)
            .with_context(|| format!("the CX answered {path} with what this client cannot read"))
    }

    /// GET and decode into `T`.
    pub async fn get_as<T: serde::de::DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        let v = self.get(path).await?;
        serde_json::from_value(v)
            .with_context(|| format!("the CX answered {path} with what this client cannot read"))
    }

    /// GET with query parameters (encoded by reqwest) and decode into `T`.
    pub async fn get_query_as<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        query: &impl Serialize,
    ) -> anyhow::Result<T> {
        let v = self
            .send(self.req(reqwest::Method::GET, path).query(query))
            .await?;
        serde_json::from_value(v)
            .with_context(|| format!("the CX answered {path} with what this client cannot read"))
    }

    /// POST and decode into `T`.
    pub async fn post_as<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        body: &impl Serialize,
    ) -> anyhow::Result<T> {
        let v = self.post(path, body).await?;
        serde_json::from_value(v)
            .with_context(|| format!("the CX answered {path} with what this client cannot read"))
    }

    async fn send(&self, r: reqwest::RequestBuilder) -> anyhow::Result<serde_json::Value> {
        let resp = r.send().await.map_err(|e| {
            anyhow!(
                "cannot reach the CX at {}: {}",
                self.base,
                crate::cli::reqwest_chain(&e)
            )
        })?;
        decode(resp).await
    }
}

/// Turn an API response into JSON or an error carrying the CX's message.
pub async fn decode(resp: reqwest::Response) -> anyhow::Result<serde_json::Value> {
    let status = resp.status();
    let v: serde_json::Value = resp.json().await.unwrap_or(serde_json::Value::Null);
    if status.is_success() {
        return Ok(v);
    }
    let msg = match serde_json::from_value::<crate::api::ErrorBody>(v.clone()) {
        Ok(b) => b.to_string(),
        Err(_) => v["error"].as_str().unwrap_or("no message").to_owned(),
    };
    if status == reqwest::StatusCode::UNAUTHORIZED {
        bail!("{msg} (HTTP 401)");
    }
    bail!("{msg} (HTTP {})", status.as_u16())
}
