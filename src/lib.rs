#![recursion_limit = "256"]
//! Tern: a continuous-data-protection disaster-recovery appliance in one binary.
//!
//! Map of the crate (roles on top, shared engines below; roles never depend on
//! each other):
//!
//! - [`cli`]: the `tern` command line: server commands (`serve`, `up`, `enroll`)
//!   and client commands that call the CX REST API (`host list`, `token create`, …).
//! - [`config`]: the TOML configuration, its defaults and validation.
//! - [`roles`]: what a process runs.
//!   - [`roles::cx`]: configuration server: PKI, users, host registry, pairs,
//!     REST API, UI, monitoring (trends, health report, alerts).
//!   - [`roles::agent`], [`roles::ps`], [`roles::mt`]: the replication pipeline.
//!   - [`roles::node`]: what every process does: identity, data port,
//!     heartbeat, reports (with machine figures), `/metrics`.
//! - [`engine`]: shared machinery.
//!   - [`engine::pki`]: the CX's CA and node identities.
//!   - [`engine::enroll`]: the enrollment protocol (token, CA MAC).
//!   - [`engine::transport`]: HTTPS serving over rustls for warp; TLS clients.
//!   - [`engine::store`]: redb state with schema migrations.
//!   - [`engine::shutdown`]: the one shutdown signal.
//!   - [`engine::fsutil`]: durable writes, secret files.
//!   - [`engine::journal`], [`engine::chunk`], [`engine::nbd`], [`engine::control`]:
//!     retention journal, wire chunks, NBD, control-plane messages.
//!   - [`engine::trends`]: the time-series tiers (tsink).
//!   - [`engine::notify`]: SNMP traps/informs and e-mail.
//!   - [`engine::metrics`], [`engine::sysstats`]: Prometheus text, machine figures.
//!
//! The design is described in `docs/ARCHITECTURE.md`; every byte format in
//! `docs/FORMATS.md`.

pub mod api;
pub mod cli;
pub mod config;
pub mod engine;
pub mod roles;
pub mod util;

/// This build's version, reported in health and heartbeats.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
