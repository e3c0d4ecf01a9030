//! Shared engines: the machinery roles are built from.

pub mod chunk;
pub mod control;
pub mod enroll;
pub mod fsutil;
pub mod journal;
pub mod nbd;
pub mod pki;
pub mod shutdown;
pub mod store;
pub mod transport;
pub mod workload;
