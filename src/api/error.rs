//! The one error body of the REST API: `{code, message, action}`.
//!
//! `code` is stable (clients branch on it; the OpenAPI document lists every
//! value), `message` says what happened, `action` what the caller can do
//! about it. Every role answers errors in this shape.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Stable error codes. New codes may be added; existing ones keep their meaning.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The request is malformed or names something invalid.
    BadRequest,
    /// No credentials, or credentials that are unknown or expired.
    Unauthorized,
    /// The caller's role does not carry the permission this operation needs.
    Forbidden,
    /// No such resource (or endpoint).
    NotFound,
    MethodNotAllowed,
    /// The resource exists already, or its state forbids the change.
    Conflict,
    /// The resource existed and is gone (e.g. an expired enrollment token).
    Gone,
    PayloadTooLarge,
    /// Too many attempts; wait and retry.
    RateLimited,
    /// A path outside the roots the node was configured to serve.
    PathNotAllowed,
    /// The one admin left cannot lose the admin role.
    LastAdmin,
    /// A node this needs did not answer in time.
    Timeout,
    /// A node this needs is not reachable now.
    Unavailable,
    /// A fault of the server: a bug or a broken store; the log has details.
    Internal,
}

impl ErrorCode {
    /// The code a status gets when the handler named none.
    pub fn for_status(status: u16) -> Self {
        match status {
            401 => Self::Unauthorized,
            403 => Self::Forbidden,
            404 => Self::NotFound,
            405 => Self::MethodNotAllowed,
            409 => Self::Conflict,
            410 => Self::Gone,
            413 => Self::PayloadTooLarge,
            429 => Self::RateLimited,
            503 => Self::Unavailable,
            504 => Self::Timeout,
            500..=599 => Self::Internal,
            _ => Self::BadRequest,
        }
    }

    pub fn as_str(self) -> &'static str {
        ALL.iter()
            .find(|(c, _)| *c == self)
            .map(|(_, n)| *n)
            .unwrap_or("internal")
    }
}

const ALL: &[(ErrorCode, &str)] = &[
    (ErrorCode::BadRequest, "bad_request"),
    (ErrorCode::Unauthorized, "unauthorized"),
    (ErrorCode::Forbidden, "forbidden"),
    (ErrorCode::NotFound, "not_found"),
    (ErrorCode::MethodNotAllowed, "method_not_allowed"),
    (ErrorCode::Conflict, "conflict"),
    (ErrorCode::Gone, "gone"),
    (ErrorCode::PayloadTooLarge, "payload_too_large"),
    (ErrorCode::RateLimited, "rate_limited"),
    (ErrorCode::PathNotAllowed, "path_not_allowed"),
    (ErrorCode::LastAdmin, "last_admin"),
    (ErrorCode::Timeout, "timeout"),
    (ErrorCode::Unavailable, "unavailable"),
    (ErrorCode::Internal, "internal"),
];

/// What every failed call answers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    pub code: ErrorCode,
    /// What happened, for a person.
    pub message: String,
    /// What the caller can do about it; empty when there is nothing to do
    /// but report the fault.
    pub action: String,
}

impl ErrorBody {
    /// Split a `what happened; what to do` message into its two parts.
    pub fn from_message(code: ErrorCode, text: &str) -> Self {
        let (message, action) = match text.split_once("; ") {
            Some((m, a)) => (m.to_owned(), a.to_owned()),
            None => (text.to_owned(), String::new()),
        };
        ErrorBody {
            code,
            message,
            action,
        }
    }
}

impl std::fmt::Display for ErrorBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.action.is_empty() {
            write!(f, "{}", self.message)
        } else {
            write!(f, "{}; {}", self.message, self.action)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_has_its_serde_spelling() {
        for (c, n) in ALL {
            assert_eq!(serde_json::to_value(c).unwrap(), *n);
            assert_eq!(c.as_str(), *n);
        }
    }

    #[test]
    fn a_message_splits_at_its_first_semicolon() {
        let b = ErrorBody::from_message(
            ErrorCode::Unauthorized,
            "token expired; run `tern login`; or ask",
        );
        assert_eq!(b.message, "token expired");
        assert_eq!(b.action, "run `tern login`; or ask");
        assert_eq!(b.to_string(), "token expired; run `tern login`; or ask");
    }
}
