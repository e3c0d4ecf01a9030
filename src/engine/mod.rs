//! Shared engines: the machinery roles are built from.

pub mod bufpool;
pub mod chunk;
pub mod compressor;
pub mod control;
pub mod crc;
pub mod enroll;
pub mod fsutil;
pub mod journal;
pub mod memory;
pub mod metrics;
pub mod nbd;
pub mod notify;
pub mod pki;
pub mod shutdown;
pub mod store;
pub mod sysstats;
pub mod transport;
pub mod trends;
pub mod workload;
