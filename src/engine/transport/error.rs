//! The error every HTTP route of every role answers with: an HTTP status
//! and a message for the operator. Each role's `recover` turns it into
//! `{"error": "..."}`; it lives here so roles share it without depending
//! on one another.

use warp::Rejection;
use warp::http::StatusCode;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
}

impl warp::reject::Reject for ApiError {}

impl ApiError {
    pub fn reject(status: StatusCode, message: impl Into<String>) -> Rejection {
        warp::reject::custom(ApiError {
            status,
            message: message.into(),
        })
    }
    pub fn unauthorized() -> Rejection {
        Self::reject(
            StatusCode::UNAUTHORIZED,
            "authentication required: send `Authorization: Bearer TOKEN` (see `tern login`) or log in through the UI",
        )
    }
    pub fn internal(e: impl std::fmt::Display) -> Rejection {
        tracing::error!(error = %e, "internal error");
        Self::reject(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("internal error: {e}"),
        )
    }
}
