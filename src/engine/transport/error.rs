//! The error every HTTP route of every role answers with, and the one
//! place rejections become responses: `{code, message, action}`
//! ([`crate::api::ErrorBody`]). It lives here so roles share it without
//! depending on one another.

use std::convert::Infallible;

use warp::http::StatusCode;
use warp::{Rejection, Reply};

use crate::api::{ErrorBody, ErrorCode};

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: ErrorCode,
    /// `what happened; what to do`: split at the first `; ` into the body's
    /// `message` and `action`.
    pub message: String,
}

impl warp::reject::Reject for ApiError {}

impl ApiError {
    /// A rejection whose code follows from its status.
    pub fn reject(status: StatusCode, message: impl Into<String>) -> Rejection {
        Self::coded(status, ErrorCode::for_status(status.as_u16()), message)
    }
    pub fn coded(status: StatusCode, code: ErrorCode, message: impl Into<String>) -> Rejection {
        warp::reject::custom(ApiError {
            status,
            code,
            message: message.into(),
        })
    }
    pub fn unauthorized() -> Rejection {
        Self::reject(
            StatusCode::UNAUTHORIZED,
            "authentication required; send `Authorization: Bearer TOKEN` (see `tern login`) or log in through the UI",
        )
    }
    pub fn internal(e: impl std::fmt::Display) -> Rejection {
        tracing::error!(error = %e, "internal error");
        Self::reject(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("internal error: {e}"),
        )
    }
    pub fn body(&self) -> ErrorBody {
        ErrorBody::from_message(self.code, &self.message)
    }
}

/// The status and body a rejection answers with.
pub fn rejection_body(r: &Rejection) -> (StatusCode, ErrorBody) {
    let (status, message) = if let Some(e) = r.find::<ApiError>() {
        return (e.status, e.body());
    } else if r.is_not_found() {
        (
            StatusCode::NOT_FOUND,
            "no such endpoint; see /api/v1/openapi.json".to_owned(),
        )
    } else if let Some(e) = r.find::<warp::filters::body::BodyDeserializeError>() {
        (
            StatusCode::BAD_REQUEST,
            format!("bad request body: {e}; see the operation's schema in /api/v1/openapi.json"),
        )
    } else if let Some(e) = r.find::<warp::reject::InvalidQuery>() {
        (
            StatusCode::BAD_REQUEST,
            format!(
                "bad query string: {e}; see the operation's parameters in /api/v1/openapi.json"
            ),
        )
    } else if r.find::<warp::reject::MethodNotAllowed>().is_some() {
        (
            StatusCode::METHOD_NOT_ALLOWED,
            "method not allowed on this path; see /api/v1/openapi.json".to_owned(),
        )
    } else if r.find::<warp::reject::PayloadTooLarge>().is_some() {
        (
            StatusCode::PAYLOAD_TOO_LARGE,
            "request body too large".to_owned(),
        )
    } else if r.find::<warp::reject::LengthRequired>().is_some() {
        (
            StatusCode::LENGTH_REQUIRED,
            "request body needs a Content-Length".to_owned(),
        )
    } else if r.find::<warp::reject::UnsupportedMediaType>().is_some() {
        (
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported content type; send application/json".to_owned(),
        )
    } else if let Some(e) = r.find::<warp::reject::MissingHeader>() {
        (StatusCode::BAD_REQUEST, e.to_string())
    } else if let Some(e) = r.find::<warp::reject::InvalidHeader>() {
        (StatusCode::BAD_REQUEST, e.to_string())
    } else if let Some(e) = r.find::<warp::reject::MissingCookie>() {
        (StatusCode::BAD_REQUEST, e.to_string())
    } else {
        tracing::error!(rejection = ?r, "unhandled rejection");
        (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("unhandled: {r:?}"),
        )
    };
    let code = ErrorCode::for_status(status.as_u16());
    (status, ErrorBody::from_message(code, &message))
}

/// Turn any rejection into its JSON answer.
pub async fn recover(r: Rejection) -> Result<warp::reply::Response, Infallible> {
    let (status, body) = rejection_body(&r);
    Ok(warp::reply::with_status(warp::reply::json(&body), status).into_response())
}
