//! Users, API tokens, enrollment tokens and the audit log, through the API.
//! Who may call what is the operation table's (`routes.rs`); these handlers
//! add only what a table row cannot say: a user revokes their own tokens,
//! an admin anyone's; the last admin keeps the admin role.

use std::sync::Arc;

use warp::http::StatusCode;
use warp::{Filter, Rejection, Reply};

use super::CxState;
use super::api::{ApiError, ApiErrorWrap, EnrollTokenRecord, blocking, json_body, with_state};
use super::auth::{self, ApiToken, User};
use super::routes::principal;
use crate::api::ErrorCode;
use crate::api::auth::{
    ApiTokenList, ApiTokenView, AuditQuery, ChangePassword, CreateApiToken, CreateUser,
    EnrollmentTokenList, EnrollmentTokenState, EnrollmentTokenView, NewApiToken, OkBody, Principal,
    TokenKind, TokenListQuery, UpdateUser, UserList, UserRole, UserView,
};
use crate::engine::store::{self, ENROLL_TOKENS, StoreError, USERS};
use crate::util::{now_ms, rfc3339_ms};

pub fn routes(s: Arc<CxState>) -> impl Filter<Extract = (impl Reply,), Error = Rejection> + Clone {
    let users_list = warp::path!("api" / "v1" / "users")
        .and(warp::get())
        .and(with_state(s.clone()))
        .and_then(list_users);
    let users_create = warp::path!("api" / "v1" / "users")
        .and(warp::post())
        .and(json_body::<CreateUser>())
        .and(with_state(s.clone()))
        .and_then(create_user);
    let user_update = warp::path!("api" / "v1" / "users" / String)
        .and(warp::patch())
        .and(json_body::<UpdateUser>())
        .and(with_state(s.clone()))
        .and_then(update_user);
    let user_delete = warp::path!("api" / "v1" / "users" / String)
        .and(warp::delete())
        .and(principal())
        .and(with_state(s.clone()))
        .and_then(delete_user);
    let me_password = warp::path!("api" / "v1" / "me" / "password")
        .and(warp::post())
        .and(principal())
        .and(json_body::<ChangePassword>())
        .and(with_state(s.clone()))
        .and_then(change_own_password);
    let tokens_list = warp::path!("api" / "v1" / "tokens")
        .and(warp::get())
        .and(principal())
        .and(warp::query::<TokenListQuery>())
        .and(with_state(s.clone()))
        .and_then(list_tokens);
    let tokens_create = warp::path!("api" / "v1" / "tokens")
        .and(warp::post())
        .and(principal())
        .and(json_body::<CreateApiToken>())
        .and(with_state(s.clone()))
        .and_then(create_token);
    let token_revoke = warp::path!("api" / "v1" / "tokens" / String)
        .and(warp::delete())
        .and(principal())
        .and(with_state(s.clone()))
        .and_then(revoke_token);
    let audit = warp::path!("api" / "v1" / "audit")
        .and(warp::get())
        .and(warp::query::<AuditQuery>())
        .and(with_state(s))
        .and_then(list_audit);
    users_list
        .or(users_create)
        .or(user_update)
        .or(user_delete)
        .or(me_password)
        .or(tokens_list)
        .or(tokens_create)
        .or(token_revoke)
        .or(audit)
}

fn view(u: &User) -> UserView {
    UserView {
        name: u.name.clone(),
        role: u.role,
        created: rfc3339_ms(u.created_ms),
    }
}

fn bad(m: impl Into<String>) -> Rejection {
    ApiError::reject(StatusCode::BAD_REQUEST, m)
}

fn check_password(pw: &str) -> Result<(), Rejection> {
    if pw.chars().count() < auth::MIN_PASSWORD || pw.len() > 1024 {
        return Err(bad(format!(
            "a password is {} to 1024 characters; choose a longer one",
            auth::MIN_PASSWORD
        )));
    }
    Ok(())
}

fn no_user(name: &str) -> Rejection {
    ApiError::reject(
        StatusCode::NOT_FOUND,
        format!("no user `{name}`; `tern user list` shows them"),
    )
}

async fn list_users(s: Arc<CxState>) -> Result<impl Reply, Rejection> {
    let users = blocking(move || s.store.list::<User>(USERS).map_err(ApiError::internal)).await?;
    Ok(warp::reply::json(&UserList {
        users: users.iter().map(|(_, u)| view(u)).collect(),
    }))
}

async fn create_user(req: CreateUser, s: Arc<CxState>) -> Result<impl Reply, Rejection> {
    if !auth::valid_user_name(&req.name) {
        return Err(bad(format!(
            "user name `{}` must be 1-64 letters, digits, `-`, `_`, `.` or `@`",
            req.name
        )));
    }
    check_password(&req.password)?;
    let hash = tokio::task::spawn_blocking({
        let pw = req.password.clone();
        move || auth::hash_password(&pw)
    })
    .await
    .map_err(ApiError::internal)?;
    let u = blocking(move || {
        s.store
            .update(|tx| -> Result<User, ApiErrorWrap> {
                if store::get_in::<User>(tx, USERS, &req.name)?.is_some() {
                    return Err(ApiErrorWrap(ApiError::reject(
                        StatusCode::CONFLICT,
                        format!(
                            "user `{}` exists already; change it with `tern user set`",
                            req.name
                        ),
                    )));
                }
                let u = User {
                    name: req.name.clone(),
                    password_hash: hash,
                    role: req.role,
                    created_ms: now_ms(),
                };
                store::put_in(tx, USERS, &u.name, &u)?;
                Ok(u)
            })
            .map_err(|e| e.0)
    })
    .await?;
    tracing::info!(user = %u.name, role = %u.role, "user created");
    Ok(warp::reply::with_status(
        warp::reply::json(&view(&u)),
        StatusCode::CREATED,
    ))
}

/// Would this change leave no admin?
fn last_admin(tx: &redb::WriteTransaction, name: &str) -> Result<bool, StoreError> {
    Ok(!store::list_in::<User>(tx, USERS)?
        .iter()
        .any(|(_, u)| u.role == UserRole::Admin && u.name != name))
}

fn last_admin_refusal(name: &str) -> ApiErrorWrap {
    ApiErrorWrap(ApiError::coded(
        StatusCode::CONFLICT,
        ErrorCode::LastAdmin,
        format!("`{name}` is the last admin; make another user admin first"),
    ))
}

async fn update_user(
    name: String,
    req: UpdateUser,
    s: Arc<CxState>,
) -> Result<impl Reply, Rejection> {
    if req.role.is_none() && req.password.is_none() {
        return Err(bad("nothing to change; give a role, a password or both"));
    }
    let hash = match &req.password {
        Some(pw) => {
            check_password(pw)?;
            let pw = pw.clone();
            Some(
                tokio::task::spawn_blocking(move || auth::hash_password(&pw))
                    .await
                    .map_err(ApiError::internal)?,
            )
        }
        None => None,
    };
    let u = blocking(move || {
        s.store
            .update(|tx| -> Result<User, ApiErrorWrap> {
                let Some(mut u) = store::get_in::<User>(tx, USERS, &name)? else {
                    return Err(ApiErrorWrap(no_user(&name)));
                };
                if let Some(r) = req.role {
                    if u.role == UserRole::Admin && r != UserRole::Admin && last_admin(tx, &name)? {
                        return Err(last_admin_refusal(&name));
                    }
                    u.role = r;
                }
                if let Some(h) = hash {
                    u.password_hash = h;
                    // A reset password ends every session the old one opened.
                    auth::revoke_user_tokens_in(tx, &name, None)?;
                }
                store::put_in(tx, USERS, &name, &u)?;
                Ok(u)
            })
            .map_err(|e| e.0)
    })
    .await?;
    tracing::info!(user = %u.name, role = %u.role, "user changed");
    Ok(warp::reply::json(&view(&u)))
}

async fn delete_user(name: String, p: Principal, s: Arc<CxState>) -> Result<impl Reply, Rejection> {
    if name == p.user {
        return Err(ApiError::reject(
            StatusCode::CONFLICT,
            "you cannot remove yourself; log in as another admin to do it",
        ));
    }
    blocking(move || {
        s.store
            .update(|tx| -> Result<(), ApiErrorWrap> {
                let Some(u) = store::get_in::<User>(tx, USERS, &name)? else {
                    return Err(ApiErrorWrap(no_user(&name)));
                };
                if u.role == UserRole::Admin && last_admin(tx, &name)? {
                    return Err(last_admin_refusal(&name));
                }
                store::remove_in(tx, USERS, &name)?;
                auth::revoke_user_tokens_in(tx, &name, None)?;
                Ok(())
            })
            .map_err(|e| e.0)
    })
    .await?;
    Ok(warp::reply::json(&OkBody { ok: true }))
}

async fn change_own_password(
    p: Principal,
    req: ChangePassword,
    s: Arc<CxState>,
) -> Result<impl Reply, Rejection> {
    check_password(&req.new_password)?;
    blocking(move || {
        let u = s
            .store
            .get::<User>(USERS, &p.user)
            .map_err(ApiError::internal)?
            .ok_or_else(|| no_user(&p.user))?;
        if !auth::verify_password(&req.old_password, &u.password_hash) {
            return Err(ApiError::reject(
                StatusCode::FORBIDDEN,
                "the old password is wrong; nothing was changed",
            ));
        }
        let hash = auth::hash_password(&req.new_password);
        s.store
            .update(|tx| -> Result<(), StoreError> {
                let Some(mut u) = store::get_in::<User>(tx, USERS, &p.user)? else {
                    return Ok(());
                };
                u.password_hash = hash;
                store::put_in(tx, USERS, &p.user, &u)?;
                auth::revoke_user_tokens_in(tx, &p.user, Some(&p.token_id))?;
                Ok(())
            })
            .map_err(ApiError::internal)
    })
    .await?;
    Ok(warp::reply::json(&OkBody { ok: true }))
}

fn token_view(id: String, t: ApiToken, current: &str) -> ApiTokenView {
    ApiTokenView {
        current: id == current,
        id,
        user: t.user,
        kind: t.kind,
        label: t.label,
        created: rfc3339_ms(t.created_ms),
        expires: t.expires_ms.map(rfc3339_ms),
    }
}

async fn list_tokens(
    p: Principal,
    q: TokenListQuery,
    s: Arc<CxState>,
) -> Result<impl Reply, Rejection> {
    let all = q.all.unwrap_or(false);
    if all && p.role != UserRole::Admin {
        return Err(ApiError::reject(
            StatusCode::FORBIDDEN,
            "only an admin lists every user's tokens; leave out `all` for your own",
        ));
    }
    let user = (!all).then(|| p.user.clone());
    let v =
        blocking(move || auth::list_tokens(&s.store, user.as_deref()).map_err(ApiError::internal))
            .await?;
    Ok(warp::reply::json(&ApiTokenList {
        tokens: v
            .into_iter()
            .map(|(id, t)| token_view(id, t, &p.token_id))
            .collect(),
    }))
}

async fn create_token(
    p: Principal,
    req: CreateApiToken,
    s: Arc<CxState>,
) -> Result<impl Reply, Rejection> {
    if req.label.trim().is_empty() || req.label.len() > 200 {
        return Err(bad(
            "a token label is 1-200 characters; say what the token is for",
        ));
    }
    let ttl = match &req.ttl {
        Some(t) => humantime::parse_duration(t)
            .map_err(|e| bad(format!("bad ttl `{t}`: {e}; use e.g. 30d, 12h")))?,
        None => s.cfg.cx.api_token_ttl.0,
    };
    if ttl.is_zero() || ttl > std::time::Duration::from_secs(5 * 365 * 86_400) {
        return Err(bad(
            "a token lives from 1 s to 5 years; give a ttl in that range",
        ));
    }
    let ttl_ms = ttl.as_millis() as u64;
    let out = blocking(move || {
        let token = auth::issue_token(
            &s.store,
            &p.user,
            TokenKind::Cli,
            req.label.trim(),
            Some(ttl_ms),
        )
        .map_err(ApiError::internal)?;
        Ok(NewApiToken {
            id: auth::token_id(&token),
            token,
            expires: rfc3339_ms(now_ms() + ttl_ms),
        })
    })
    .await?;
    Ok(warp::reply::with_status(
        warp::reply::json(&out),
        StatusCode::CREATED,
    ))
}

async fn revoke_token(id: String, p: Principal, s: Arc<CxState>) -> Result<impl Reply, Rejection> {
    let owner = (p.role != UserRole::Admin).then(|| p.user.clone());
    let i2 = id.clone();
    let done = blocking(move || {
        auth::revoke_token_id(&s.store, &i2, owner.as_deref()).map_err(ApiError::internal)
    })
    .await?;
    if !done {
        return Err(ApiError::reject(
            StatusCode::NOT_FOUND,
            format!("no token `{id}` of yours; `tern api-token list` shows their ids"),
        ));
    }
    Ok(warp::reply::json(&OkBody { ok: true }))
}

async fn list_audit(q: AuditQuery, s: Arc<CxState>) -> Result<impl Reply, Rejection> {
    let page = blocking(move || super::audit::page(&s, &q).map_err(ApiError::internal)).await?;
    Ok(warp::reply::json(&page))
}

pub async fn list_enrollment_tokens(s: Arc<CxState>) -> Result<impl Reply, Rejection> {
    let v = blocking(move || {
        s.store
            .list::<EnrollTokenRecord>(ENROLL_TOKENS)
            .map_err(ApiError::internal)
    })
    .await?;
    let now = now_ms();
    let mut tokens: Vec<EnrollmentTokenView> = v
        .into_iter()
        .map(|(id, r)| EnrollmentTokenView {
            id,
            state: if r.used_ms.is_some() {
                EnrollmentTokenState::Used
            } else if r.expires_ms <= now {
                EnrollmentTokenState::Expired
            } else {
                EnrollmentTokenState::Usable
            },
            created_by: r.created_by,
            created: rfc3339_ms(r.created_ms),
            expires: rfc3339_ms(r.expires_ms),
            used: r.used_ms.map(rfc3339_ms),
            used_by_host: r.used_by_host,
        })
        .collect();
    tokens.sort_by(|a, b| b.created.cmp(&a.created));
    Ok(warp::reply::json(&EnrollmentTokenList { tokens }))
}

/// Revoke an enrollment token: it is removed, and a node that tries it is
/// told the token is unknown. A used token is kept (it records who enrolled).
pub async fn revoke_enrollment_token(id: String, s: Arc<CxState>) -> Result<impl Reply, Rejection> {
    let i2 = id.clone();
    blocking(move || {
        s.store
            .update(|tx| -> Result<(), ApiErrorWrap> {
                let Some(r) = store::get_in::<EnrollTokenRecord>(tx, ENROLL_TOKENS, &i2)? else {
                    return Err(ApiErrorWrap(ApiError::reject(
                        StatusCode::NOT_FOUND,
                        format!("no enrollment token `{i2}`; `tern token list` shows them"),
                    )));
                };
                if r.used_ms.is_some() {
                    return Err(ApiErrorWrap(ApiError::reject(
                        StatusCode::CONFLICT,
                        format!(
                            "enrollment token `{i2}` was used already (by host {}); remove the host instead",
                            r.used_by_host.as_deref().unwrap_or("?")
                        ),
                    )));
                }
                store::remove_in(tx, ENROLL_TOKENS, &i2)?;
                Ok(())
            })
            .map_err(|e| e.0)
    })
    .await?;
    tracing::info!(token_id = %id, "enrollment token revoked");
    Ok(warp::reply::json(&OkBody { ok: true }))
}
