//! REST API of the configuration server (`/api/v1/...`) and its error mapping.
//!
//! Every handler returns `Result<_, Rejection>`; [`ApiError`] carries the HTTP
//! status and a message for the operator, and [`recover`] is the one place
//! where rejections become JSON responses: `{"error": "..."}`.

use std::convert::Infallible;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use warp::http::StatusCode;
use warp::{Filter, Rejection, Reply};

use utoipa::{IntoParams, ToSchema};

use super::auth::{self, Principal};
use super::routes::principal;
use super::{CxState, HostRecord, users};
use crate::api::auth::{self as a, TokenKind};
use crate::config::Role;
use crate::engine::enroll::{self, CaResponse, EnrollRequest, EnrollResponse, EnrollToken};
use crate::engine::store::{self, ENROLL_TOKENS, HOSTS, StoreError};
use crate::engine::transport::{Caller, PeerIdentity};
use crate::util::{now_ms, rfc3339_ms};

pub use crate::engine::transport::ApiError;

impl From<StoreError> for ApiErrorWrap {
    fn from(e: StoreError) -> Self {
        ApiErrorWrap(ApiError::internal(e))
    }
}

/// Lets `?` turn store errors into rejections inside `store.update` closures.
pub struct ApiErrorWrap(pub Rejection);

pub use crate::engine::transport::recover;

pub(super) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, Rejection> + Send + 'static,
) -> Result<T, Rejection> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(ApiError::internal)?
}

pub(super) fn with_state(
    s: Arc<CxState>,
) -> impl Filter<Extract = (Arc<CxState>,), Error = Infallible> + Clone {
    warp::any().map(move || s.clone())
}

pub(super) fn json_body<T: serde::de::DeserializeOwned + Send>()
-> impl Filter<Extract = (T,), Error = Rejection> + Clone {
    warp::body::content_length_limit(1 << 20).and(warp::body::json())
}

/// All CX routes, with rejections recovered into JSON.
pub fn routes(s: Arc<CxState>) -> impl Filter<Extract = (impl Reply,), Error = Infallible> + Clone {
    let health = warp::path!("api" / "v1" / "health")
        .and(warp::get())
        .and(with_state(s.clone()))
        .map(|s: Arc<CxState>| warp::reply::json(&s.health()));

    let openapi = warp::path!("api" / "v1" / "openapi.json")
        .and(warp::get())
        .map(|| warp::reply::json(super::routes::document()));

    let login = warp::path!("api" / "v1" / "login")
        .and(warp::post())
        .and(json_body::<a::LoginRequest>())
        .and(warp::ext::get::<Caller>())
        .and(warp::ext::get::<PeerIdentity>())
        .and(with_state(s.clone()))
        .and_then(login);

    let logout = warp::path!("api" / "v1" / "logout")
        .and(warp::post())
        .and(warp::header::optional::<String>("authorization"))
        .and(warp::cookie::optional::<String>("tern_session"))
        .and(with_state(s.clone()))
        .and_then(logout);

    let whoami = warp::path!("api" / "v1" / "whoami")
        .and(warp::get())
        .and(principal())
        .map(|p: Principal| {
            warp::reply::json(&crate::api::auth::WhoAmI {
                user: p.user,
                role: p.role,
            })
        });

    let hosts = warp::path!("api" / "v1" / "hosts")
        .and(warp::get())
        .and(principal())
        .and(with_state(s.clone()))
        .and_then(list_hosts);

    let enroll_tokens = warp::path!("api" / "v1" / "enrollment-tokens")
        .and(warp::post())
        .and(principal())
        .and(json_body::<a::CreateEnrollmentToken>())
        .and(with_state(s.clone()))
        .and_then(create_token)
        .or(warp::path!("api" / "v1" / "enrollment-tokens")
            .and(warp::get())
            .and(with_state(s.clone()))
            .and_then(users::list_enrollment_tokens))
        .or(warp::path!("api" / "v1" / "enrollment-tokens" / String)
            .and(warp::delete())
            .and(with_state(s.clone()))
            .and_then(users::revoke_enrollment_token));
    let users = users::routes(s.clone());

    let ca = warp::path!("api" / "v1" / "pki" / "ca")
        .and(warp::get())
        .and(with_state(s.clone()))
        .map(|s: Arc<CxState>| {
            warp::reply::json(&CaInfo {
                ca_pem: s.ca.cert_pem.clone(),
                fingerprint: s.ca.fingerprint(),
            })
        });

    let enroll_ca = warp::path!("api" / "v1" / "enroll" / "ca")
        .and(warp::get())
        .and(warp::query::<EnrollCaQuery>())
        .and(with_state(s.clone()))
        .and_then(enroll_ca);

    let enroll = warp::path!("api" / "v1" / "enroll")
        .and(warp::post())
        .and(json_body::<EnrollRequest>())
        .and(with_state(s.clone()))
        .and_then(enroll);

    let heartbeat = warp::path!("api" / "v1" / "heartbeat")
        .and(warp::post())
        .and(warp::ext::get::<PeerIdentity>())
        .and(json_body::<Heartbeat>())
        .and(with_state(s.clone()))
        .and_then(heartbeat);

    let renew = warp::path!("api" / "v1" / "node" / "renew")
        .and(warp::post())
        .and(warp::ext::get::<PeerIdentity>())
        .and(json_body::<crate::engine::enroll::RenewRequest>())
        .and(with_state(s.clone()))
        .and_then(renew);

    use super::pairs;
    let node_sync = warp::path!("api" / "v1" / "node" / "sync")
        .and(warp::post())
        .and(warp::ext::get::<PeerIdentity>())
        .and(json_body::<crate::engine::control::SyncRequest>())
        .and(with_state(s.clone()))
        .and_then(pairs::node_sync);
    let pairs_list = warp::path!("api" / "v1" / "pairs")
        .and(warp::get())
        .and(principal())
        .and(with_state(s.clone()))
        .and_then(pairs::list_pairs);
    let pairs_create = warp::path!("api" / "v1" / "pairs")
        .and(warp::post())
        .and(principal())
        .and(json_body::<pairs::CreatePair>())
        .and(with_state(s.clone()))
        .and_then(pairs::create_pair);
    let pair_get = warp::path!("api" / "v1" / "pairs" / String)
        .and(warp::get())
        .and(principal())
        .and(with_state(s.clone()))
        .and_then(pairs::get_pair);
    let pair_delete = warp::path!("api" / "v1" / "pairs" / String)
        .and(warp::delete())
        .and(principal())
        .and(with_state(s.clone()))
        .and_then(pairs::delete_pair);
    let pair_bookmark = warp::path!("api" / "v1" / "pairs" / String / "bookmark")
        .and(warp::post())
        .and(principal())
        .and(json_body::<pairs::BookmarkRequest>())
        .and(with_state(s.clone()))
        .and_then(pairs::bookmark);
    let pair_points = warp::path!("api" / "v1" / "pairs" / String / "points")
        .and(warp::get())
        .and(principal())
        .and(with_state(s.clone()))
        .and_then(pairs::points);
    use super::jobs;
    let pair_image = warp::path!("api" / "v1" / "pairs" / String / "image")
        .and(warp::post())
        .and(principal())
        .and(json_body::<crate::api::jobs::ImageRequest>())
        .and(with_state(s.clone()))
        .and_then(jobs::start_image);
    let pair_hash = warp::path!("api" / "v1" / "pairs" / String / "hash")
        .and(warp::post())
        .and(principal())
        .and(json_body::<crate::api::jobs::HashRequest>())
        .and(with_state(s.clone()))
        .and_then(jobs::start_hash);
    let jobs_list = warp::path!("api" / "v1" / "jobs")
        .and(warp::get())
        .and(principal())
        .and(warp::query::<jobs::ListQuery>())
        .and(with_state(s.clone()))
        .and_then(jobs::list);
    let job_get = warp::path!("api" / "v1" / "jobs" / String)
        .and(warp::get())
        .and(principal())
        .and(warp::query::<jobs::GetQuery>())
        .and(with_state(s.clone()))
        .and_then(jobs::get);
    let job_cancel = warp::path!("api" / "v1" / "jobs" / String / "cancel")
        .and(warp::post())
        .and(principal())
        .and(with_state(s.clone()))
        .and_then(jobs::cancel);
    let job_routes = pair_points
        .or(pair_image)
        .or(pair_hash)
        .or(jobs_list)
        .or(job_get)
        .or(job_cancel)
        .boxed();
    let pair_action = warp::path!("api" / "v1" / "pairs" / String / String)
        .and(warp::post())
        .and_then(|n: String, a: String| async move {
            // Only these: other sub-paths must keep their own errors.
            if ["pause", "resume", "resync"].contains(&a.as_str()) {
                Ok((n, a))
            } else {
                Err(warp::reject::not_found())
            }
        })
        .untuple_one()
        .and(principal())
        .and(with_state(s.clone()))
        .and_then(pairs::pair_action);
    let volumes_list = warp::path!("api" / "v1" / "volumes")
        .and(warp::get())
        .and(principal())
        .and(with_state(s.clone()))
        .and_then(pairs::list_volumes);
    let volumes_add = warp::path!("api" / "v1" / "volumes")
        .and(warp::post())
        .and(principal())
        .and(json_body::<pairs::AddVolume>())
        .and(with_state(s.clone()))
        .and_then(pairs::add_volume);

    use super::{alerts, health, monitor};
    let alerts_list = warp::path!("api" / "v1" / "alerts")
        .and(warp::get())
        .and(principal())
        .and(warp::query::<alerts::ListQuery>())
        .and(with_state(s.clone()))
        .and_then(alerts::list);
    let alert_ack = warp::path!("api" / "v1" / "alerts" / String / "ack")
        .and(warp::post())
        .and(principal())
        .and(with_state(s.clone()))
        .and_then(alerts::ack);
    let alerts_test = warp::path!("api" / "v1" / "alerts" / "test")
        .and(warp::post())
        .and(principal())
        .and(with_state(s.clone()))
        .and_then(alerts::test);
    let alerts_digest = warp::path!("api" / "v1" / "alerts" / "digest")
        .and(warp::post())
        .and(principal())
        .and(with_state(s.clone()))
        .and_then(alerts::digest_now);
    let receivers_list = warp::path!("api" / "v1" / "alerts" / "receivers")
        .and(warp::get())
        .and(principal())
        .and(with_state(s.clone()))
        .and_then(alerts::receivers_list);
    let receivers_add = warp::path!("api" / "v1" / "alerts" / "receivers")
        .and(warp::post())
        .and(principal())
        .and(json_body::<alerts::AddReceiver>())
        .and(with_state(s.clone()))
        .and_then(alerts::receivers_add);
    let receivers_remove = warp::path!("api" / "v1" / "alerts" / "receivers" / String)
        .and(warp::delete())
        .and(principal())
        .and(with_state(s.clone()))
        .and_then(alerts::receivers_remove);
    let trends_list = warp::path!("api" / "v1" / "trends")
        .and(warp::get())
        .and(principal())
        .and(with_state(s.clone()))
        .and_then(monitor::trends_list);
    let trends_fetch = warp::path!("api" / "v1" / "trends" / String)
        .and(warp::get())
        .and(principal())
        .and(warp::query::<monitor::TrendsQuery>())
        .and(with_state(s.clone()))
        .and_then(monitor::trends_fetch);
    let health_report = warp::path!("api" / "v1" / "reports" / "health")
        .and(warp::get())
        .and(principal())
        .and(warp::query::<health::ReportQuery>())
        .and(with_state(s.clone()))
        .and_then(health::report);
    let metrics = warp::path!("metrics")
        .and(warp::get())
        .and(principal())
        .and(with_state(s.clone()))
        .and_then(monitor::metrics);
    let monitoring = alerts_list
        .or(alert_ack)
        .or(alerts_test)
        .or(alerts_digest)
        .or(receivers_list)
        .or(receivers_add)
        .or(receivers_remove)
        .or(trends_list)
        .or(trends_fetch)
        .or(health_report)
        .or(metrics)
        .boxed();

    let ui = super::ui::routes();

    let all = health
        .or(openapi)
        .or(login)
        .or(logout)
        .or(whoami)
        .or(hosts)
        .or(enroll_tokens)
        .or(users)
        .or(ca)
        .or(enroll_ca)
        .or(enroll)
        .or(heartbeat)
        .or(renew)
        .or(node_sync)
        .or(pairs_list)
        .or(pairs_create)
        .or(pair_get)
        .or(pair_delete)
        .or(pair_bookmark)
        .or(job_routes)
        .or(pair_action)
        .or(volumes_list)
        .or(volumes_add)
        .or(monitoring)
        .or(ui)
        .recover(recover);
    super::routes::gate(s, all)
        .recover(recover)
        .with(warp::log::custom(|info| {
            tracing::debug!(method = %info.method(), path = info.path(), status = info.status().as_u16(), "api");
        }))
}

async fn login(
    req: a::LoginRequest,
    caller: Caller,
    peer: PeerIdentity,
    s: Arc<CxState>,
) -> Result<warp::reply::Response, Rejection> {
    let session_ttl = s.cfg.cx.session_ttl.0.as_millis() as u64;
    caller.set_actor(req.user.clone());
    // Refused before any password is checked: no CPU to burn, no oracle.
    let max = s.cfg.cx.login_max_failures;
    let window = s.cfg.cx.login_window.0.as_millis() as u64;
    let ukey = format!("user:{}", req.user);
    let akey = format!(
        "addr:{}",
        peer.addr
            .map(|a| a.ip().to_canonical().to_string())
            .unwrap_or_default()
    );
    if let Err(wait) = s
        .logins
        .check(&ukey, max, window)
        .and_then(|()| s.logins.check(&akey, max.saturating_mul(4), window))
    {
        tracing::warn!(user = %req.user, from = ?peer.addr, "login refused: too many failures");
        return Err(ApiError::coded(
            StatusCode::TOO_MANY_REQUESTS,
            crate::api::ErrorCode::RateLimited,
            format!(
                "too many failed logins for this user or from this address; wait {wait} s and try again, or ask an admin to reset the password"
            ),
        ));
    }
    let kind = req.kind.unwrap_or(TokenKind::Session);
    let ttl = match kind {
        TokenKind::Session => session_ttl,
        TokenKind::Cli => 30 * 24 * 3600 * 1000,
        TokenKind::Local => {
            return Err(ApiError::reject(
                StatusCode::BAD_REQUEST,
                "a local token is made by the CX for its own host; use session or cli",
            ));
        }
    };
    let s2 = s.clone();
    let resp = blocking(move || {
        let s = s2;
        let user: Option<auth::User> = s
            .store
            .get(store::USERS, &req.user)
            .map_err(ApiError::internal)?;
        // Verify against a dummy hash for unknown users so timing does not tell which names exist.
        let ok = match &user {
            Some(u) => auth::verify_password(&req.password, &u.password_hash),
            None => {
                let _ = auth::verify_password(
                    &req.password,
                    DUMMY_HASH.get_or_init(|| auth::hash_password("x")),
                );
                false
            }
        };
        let Some(user) = user.filter(|_| ok) else {
            s.logins.fail(&ukey, window);
            s.logins.fail(&akey, window);
            tracing::warn!(user = %req.user, "failed login");
            return Err(ApiError::reject(
                StatusCode::UNAUTHORIZED,
                "wrong user name or password",
            ));
        };
        s.logins.clear(&ukey);
        let token = auth::issue_token(&s.store, &user.name, kind, "login", Some(ttl))
            .map_err(ApiError::internal)?;
        tracing::info!(user = %user.name, kind = ?kind, "login");
        Ok(a::LoginResponse {
            token,
            user: user.name,
            role: user.role,
            expires: rfc3339_ms(now_ms() + ttl),
        })
    })
    .await?;
    let reply = warp::reply::json(&resp);
    Ok(if kind == TokenKind::Session {
        let cookie = format!(
            "tern_session={}; HttpOnly; Secure; SameSite=Strict; Path=/; Max-Age={}",
            resp.token,
            session_ttl / 1000
        );
        warp::reply::with_header(reply, "set-cookie", cookie).into_response()
    } else {
        reply.into_response()
    })
}

static DUMMY_HASH: std::sync::OnceLock<String> = std::sync::OnceLock::new();

async fn logout(
    h: Option<String>,
    c: Option<String>,
    s: Arc<CxState>,
) -> Result<impl Reply, Rejection> {
    if let Some(t) = super::routes::bearer(h, c) {
        blocking(move || auth::revoke_token(&s.store, &t).map_err(ApiError::internal)).await?;
    }
    Ok(warp::reply::with_header(
        warp::reply::json(&a::OkBody { ok: true }),
        "set-cookie",
        "tern_session=; HttpOnly; Secure; SameSite=Strict; Path=/; Max-Age=0",
    ))
}

/// The CX's CA, as `GET /api/v1/pki/ca` shows it.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct CaInfo {
    pub ca_pem: String,
    /// SHA-256 of the CA certificate (DER), hex with colons.
    pub fingerprint: String,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct HostList {
    pub hosts: Vec<HostView>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct HeartbeatAck {
    /// How often the CX wants heartbeats.
    pub interval_ms: u64,
}

/// A host as the API shows it.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct HostView {
    pub host_id: String,
    pub name: String,
    pub roles: Vec<Role>,
    pub version: Option<String>,
    pub enrolled: String,
    pub last_heartbeat: Option<String>,
    /// Seconds since the last heartbeat.
    pub heartbeat_age_s: Option<f64>,
    pub overdue: bool,
    pub data_addr: Option<String>,
    /// When the node's current certificate expires (it renews it itself).
    pub cert_expires: Option<String>,
}

async fn list_hosts(_p: Principal, s: Arc<CxState>) -> Result<impl Reply, Rejection> {
    let s2 = s.clone();
    let hosts = blocking(move || {
        s2.store
            .list::<HostRecord>(HOSTS)
            .map_err(ApiError::internal)
    })
    .await?;
    let now = now_ms();
    let mut views: Vec<HostView> = hosts
        .into_iter()
        .map(|(_, h)| {
            let age = h.heartbeat_age_ms(now);
            let overdue_ms = h.overdue_ms(&s.cfg.cx);
            HostView {
                overdue: age.is_none_or(|a| a > overdue_ms),
                heartbeat_age_s: age.map(|a| a as f64 / 1000.0),
                last_heartbeat: h.last_heartbeat_ms.map(rfc3339_ms),
                enrolled: rfc3339_ms(h.enrolled_ms),
                host_id: h.host_id,
                name: h.name,
                roles: h.roles,
                version: h.version,
                data_addr: h.data_addr,
                cert_expires: h.cert_not_after.map(|t| rfc3339_ms(t.max(0) as u64 * 1000)),
            }
        })
        .collect();
    views.sort_by(|a, b| a.name.cmp(&b.name).then(a.host_id.cmp(&b.host_id)));
    Ok(warp::reply::json(&HostList { hosts: views }))
}

/// What the CX keeps of an enrollment token: its derived key, never the secret.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EnrollTokenRecord {
    pub key_hex: String,
    pub created_by: String,
    pub created_ms: u64,
    pub expires_ms: u64,
    pub used_ms: Option<u64>,
    pub used_by_host: Option<String>,
}

async fn create_token(
    p: Principal,
    req: a::CreateEnrollmentToken,
    s: Arc<CxState>,
) -> Result<impl Reply, Rejection> {
    let ttl = match req.ttl {
        Some(t) => humantime::parse_duration(&t).map_err(|e| {
            ApiError::reject(
                StatusCode::BAD_REQUEST,
                format!("bad ttl `{t}`: {e}; use e.g. 30m, 1h, 1d"),
            )
        })?,
        None => s.cfg.cx.enroll_token_ttl.0,
    };
    let tok = EnrollToken::generate();
    let now = now_ms();
    let rec = EnrollTokenRecord {
        key_hex: hex::encode(tok.key()),
        created_by: p.user.clone(),
        created_ms: now,
        expires_ms: now + ttl.as_millis() as u64,
        used_ms: None,
        used_by_host: None,
    };
    let id = tok.id.clone();
    let expires_ms = rec.expires_ms;
    let s2 = s.clone();
    blocking(move || {
        s2.store
            .put(ENROLL_TOKENS, &id, &rec)
            .map_err(ApiError::internal)
    })
    .await?;
    tracing::info!(token_id = %tok.id, by = %p.user, "enrollment token created");
    Ok(warp::reply::with_status(
        warp::reply::json(&a::NewEnrollmentToken {
            id: tok.id.clone(),
            token: tok.to_string(),
            expires: rfc3339_ms(expires_ms),
            ca_fingerprint: s.ca.fingerprint(),
        }),
        StatusCode::CREATED,
    ))
}

#[derive(Debug, Deserialize, ToSchema, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct EnrollCaQuery {
    pub token_id: String,
    pub nonce: String,
}

async fn enroll_ca(q: EnrollCaQuery, s: Arc<CxState>) -> Result<impl Reply, Rejection> {
    if q.nonce.len() < 16 || q.nonce.len() > 128 {
        return Err(ApiError::reject(
            StatusCode::BAD_REQUEST,
            "nonce must be 16 to 128 characters",
        ));
    }
    let s2 = s.clone();
    let id = q.token_id.clone();
    let rec: Option<EnrollTokenRecord> =
        blocking(move || s2.store.get(ENROLL_TOKENS, &id).map_err(ApiError::internal)).await?;
    let rec = usable_token(&q.token_id, rec)?;
    let key = hex::decode(&rec.key_hex).map_err(ApiError::internal)?;
    Ok(warp::reply::json(&CaResponse {
        ca_pem: s.ca.cert_pem.clone(),
        fingerprint: s.ca.fingerprint(),
        mac: enroll::ca_mac(&key, &q.nonce, &s.ca.cert_der),
    }))
}

/// The token exists, is unexpired and unused — or a precise refusal.
fn usable_token(id: &str, rec: Option<EnrollTokenRecord>) -> Result<EnrollTokenRecord, Rejection> {
    let rec = rec.ok_or_else(|| {
        ApiError::reject(
            StatusCode::FORBIDDEN,
            format!("enrollment token {id} is unknown to this CX; create one with `tern token create` on the CX"),
        )
    })?;
    if let Some(used) = rec.used_ms {
        return Err(ApiError::reject(
            StatusCode::CONFLICT,
            format!(
                "enrollment token {id} was already used (by host {} at {}); tokens are single use: create a new one with `tern token create`",
                rec.used_by_host.as_deref().unwrap_or("?"),
                rfc3339_ms(used)
            ),
        ));
    }
    if rec.expires_ms <= now_ms() {
        return Err(ApiError::reject(
            StatusCode::GONE,
            format!(
                "enrollment token {id} expired at {}; create a new one with `tern token create`",
                rfc3339_ms(rec.expires_ms)
            ),
        ));
    }
    Ok(rec)
}

async fn enroll(req: EnrollRequest, s: Arc<CxState>) -> Result<impl Reply, Rejection> {
    let tok =
        EnrollToken::parse(&req.token).map_err(|e| ApiError::reject(StatusCode::BAD_REQUEST, e))?;
    if req.roles.contains(&Role::Cx) || req.roles.contains(&Role::Rx) {
        return Err(ApiError::reject(
            StatusCode::BAD_REQUEST,
            "only ps, mt and agent roles enroll with a CX",
        ));
    }
    let name = req.name.trim().to_owned();
    if name.is_empty() || name.len() > 253 {
        return Err(ApiError::reject(
            StatusCode::BAD_REQUEST,
            "host name must be 1 to 253 characters",
        ));
    }
    let host_id = uuid::Uuid::new_v4().to_string();
    // Sign first (pure computation): the token is consumed only together with
    // the host record, in one transaction, and only if signing worked.
    let cert_pem =
        s.ca.sign_csr(&req.csr_pem, &host_id, s.cfg.cx.node_cert_validity.0)
            .map_err(|e| ApiError::reject(StatusCode::BAD_REQUEST, e.to_string()))?;
    let cert_not_after = crate::engine::pki::pem_to_der(&cert_pem)
        .and_then(|d| crate::engine::pki::not_after_unix(&d));
    let s2 = s.clone();
    let hid = host_id.clone();
    let roles = req.roles.clone();
    blocking(move || {
        s2.store
            .update(|tx| -> Result<(), ApiErrorWrap> {
                let rec = store::get_in::<EnrollTokenRecord>(tx, ENROLL_TOKENS, &tok.id)?;
                let mut rec = usable_token(&tok.id, rec).map_err(ApiErrorWrap)?;
                let key = hex::decode(&rec.key_hex).unwrap_or_default();
                if !enroll::keys_equal(&key, &tok.key()) {
                    return Err(ApiErrorWrap(ApiError::reject(
                        StatusCode::FORBIDDEN,
                        format!(
                            "enrollment token {} does not match; check that it was copied whole",
                            tok.id
                        ),
                    )));
                }
                rec.used_ms = Some(now_ms());
                rec.used_by_host = Some(hid.clone());
                store::put_in(tx, ENROLL_TOKENS, &tok.id, &rec)?;
                let host = HostRecord {
                    host_id: hid.clone(),
                    name,
                    roles,
                    version: None,
                    enrolled_ms: now_ms(),
                    last_heartbeat_ms: None,
                    data_addr: None,
                    cert_not_after,
                    heartbeat_interval_ms: None,
                };
                store::put_in(tx, HOSTS, &hid, &host)?;
                Ok(())
            })
            .map_err(|e| e.0)
    })
    .await?;
    tracing::info!(host_id = %host_id, roles = ?req.roles, "host enrolled");
    Ok(warp::reply::json(&EnrollResponse {
        host_id,
        cert_pem,
        ca_pem: s.ca.cert_pem.clone(),
    }))
}

/// What every node sends every `node.heartbeat_interval`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Heartbeat {
    pub name: String,
    pub roles: Vec<Role>,
    pub version: String,
    /// Where this node's data port answers (PS, MT), if it has one.
    pub data_addr: Option<String>,
    /// How often this node heartbeats: the CX calls it lost after 1.5 of it.
    #[serde(default)]
    pub interval_ms: Option<u64>,
}

/// A node's data address as its peers dial it. A wildcard IP (the node
/// listens on every address and set no `node.data_advertise`) becomes the
/// IP its heartbeat came from: on a flat network that is an address of the
/// node's own, which its certificate names (enrollment puts every
/// interface address in). Anything else is kept as the node sent it.
pub fn reachable_at(addr: &str, from: Option<std::net::SocketAddr>) -> String {
    match addr.parse::<std::net::SocketAddr>() {
        Ok(mut a) if a.ip().is_unspecified() => {
            let ip = from.map(|f| f.ip().to_canonical());
            a.set_ip(ip.unwrap_or(std::net::Ipv4Addr::LOCALHOST.into()));
            a.to_string()
        }
        _ => addr.to_owned(),
    }
}

/// The host id in the caller's node certificate, or 401 saying what `what` needs.
pub fn node_host(peer: PeerIdentity, what: &str) -> Result<String, Rejection> {
    peer.host_id.ok_or_else(|| {
        ApiError::reject(
            StatusCode::UNAUTHORIZED,
            format!("{what} needs the node's client certificate (enroll first)"),
        )
    })
}

/// Change the record of a host that calls as itself; refused (403) for a
/// host this CX no longer has.
async fn update_host(
    s: Arc<CxState>,
    host_id: String,
    f: impl FnOnce(&mut HostRecord) + Send + 'static,
) -> Result<(), Rejection> {
    blocking(move || {
        s.store
            .update(|tx| -> Result<(), ApiErrorWrap> {
                let Some(mut h) = store::get_in::<HostRecord>(tx, HOSTS, &host_id)? else {
                    return Err(ApiErrorWrap(ApiError::reject(
                        StatusCode::FORBIDDEN,
                        format!("host {host_id} is not registered with this CX; enroll it again"),
                    )));
                };
                f(&mut h);
                store::put_in(tx, HOSTS, &host_id, &h)?;
                Ok(())
            })
            .map_err(|e| e.0)
    })
    .await
}

async fn heartbeat(
    peer: PeerIdentity,
    hb: Heartbeat,
    s: Arc<CxState>,
) -> Result<impl Reply, Rejection> {
    let from = peer.addr;
    let host_id = node_host(peer, "a heartbeat")?;
    let interval = s.cfg.node.heartbeat_interval.0;
    update_host(s, host_id, move |h| {
        h.name = hb.name;
        h.roles = hb.roles;
        h.version = Some(hb.version);
        h.data_addr = hb.data_addr.map(|a| reachable_at(&a, from));
        if hb.interval_ms.is_some() {
            h.heartbeat_interval_ms = hb.interval_ms;
        }
        h.last_heartbeat_ms = Some(now_ms());
    })
    .await?;
    Ok(warp::reply::json(&HeartbeatAck {
        interval_ms: interval.as_millis() as u64,
    }))
}

/// A node's new certificate for the key in its CSR, under the host id its
/// current certificate names; refused for a host this CX no longer has.
async fn renew(
    peer: PeerIdentity,
    req: crate::engine::enroll::RenewRequest,
    s: Arc<CxState>,
) -> Result<impl Reply, Rejection> {
    let host_id = node_host(peer, "a certificate renewal")?;
    let cert_pem =
        s.ca.sign_csr(&req.csr_pem, &host_id, s.cfg.cx.node_cert_validity.0)
            .map_err(|e| ApiError::reject(StatusCode::BAD_REQUEST, e.to_string()))?;
    let not_after = crate::engine::pki::pem_to_der(&cert_pem)
        .and_then(|d| crate::engine::pki::not_after_unix(&d));
    update_host(s, host_id.clone(), move |h| h.cert_not_after = not_after).await?;
    tracing::info!(host_id = %host_id, "node certificate renewed");
    Ok(warp::reply::json(&crate::engine::enroll::RenewResponse {
        cert_pem,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wildcard_data_address_becomes_the_heartbeats_source() {
        for (addr, from, want) in [
            ("0.0.0.0:9443", Some("10.0.0.5:40000"), "10.0.0.5:9443"),
            (
                "[::]:9443",
                Some("[2001:db8::7]:40000"),
                "[2001:db8::7]:9443",
            ),
            // A CX on a dual-stack socket sees IPv4 peers as mapped addresses.
            ("[::]:9443", Some("[::ffff:10.0.0.5]:1"), "10.0.0.5:9443"),
            ("0.0.0.0:9443", None, "127.0.0.1:9443"),
            // What the node chose is kept.
            ("10.1.1.1:9443", Some("10.0.0.5:1"), "10.1.1.1:9443"),
            (
                "ps.example.net:9443",
                Some("10.0.0.5:1"),
                "ps.example.net:9443",
            ),
        ] {
            let from = from.map(|f| f.parse().unwrap());
            assert_eq!(reachable_at(addr, from), want, "{addr} from {from:?}");
        }
    }
}
