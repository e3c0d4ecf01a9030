//! The REST API's request and response bodies, shared by the CX (which
//! serves them) and every client of it (the CLI, the tests, later the UI
//! and the portal). Nothing here does I/O.

pub mod auth;
pub mod error;
pub mod jobs;

pub use error::{ErrorBody, ErrorCode};
