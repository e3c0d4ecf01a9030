//! Roles: what a process does, chosen by `--role` or the config's `roles`.
//!
//! [`start`] is the one entry point: it opens the node's state, obtains its
//! identity (issued locally on a CX, by enrollment elsewhere), binds the
//! listeners its roles need, starts the heartbeat and certificate renewal; [`wait_and_stop`] then waits for the
//! shutdown trigger and stops everything in order. Roles depend on engines, never on each other.

pub mod agent;
pub mod cx;
pub mod mt;
pub mod node;
pub mod ps;
pub mod renewal;

pub use node::{RunningNode, start, wait_and_stop};
