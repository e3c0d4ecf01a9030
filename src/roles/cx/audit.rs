//! The audit log: one record per state-changing API call (who, what, when,
//! from where, with what result), in table `audit`, keyed by a sequence
//! number (`META audit_seq`). The gate (`routes.rs`) writes it, after the
//! handler answered or after it refused the call itself. Request bodies are
//! never kept: they may hold passwords and tokens.
//!
//! Bound: the newest `cx.audit_keep` records; older ones are dropped in
//! batches as new ones come.

use std::sync::Arc;

use super::CxState;
use crate::api::auth::{AuditEntry, AuditPage, AuditQuery};
use crate::engine::store::{self, AUDIT, META, StoreError};
use crate::util::{now_ms, rfc3339_ms};

fn key(seq: u64) -> String {
    format!("{seq:016}")
}

/// Records are dropped this many at a time once past the bound.
const PRUNE_BATCH: u64 = 256;

/// Append `e`, giving it the next seq and the time now.
pub fn append(s: &Arc<CxState>, mut e: AuditEntry) -> Result<(), StoreError> {
    let keep = s.cfg.cx.audit_keep.max(1);
    s.store.update(|tx| -> Result<(), StoreError> {
        let seq = store::get_in::<u64>(tx, META, "audit_seq")?.unwrap_or(0) + 1;
        store::put_in(tx, META, "audit_seq", &seq)?;
        e.seq = seq;
        e.time = rfc3339_ms(now_ms());
        store::put_in(tx, AUDIT, &key(seq), &e)?;
        if seq > keep && (seq - keep).is_multiple_of(PRUNE_BATCH) {
            let mut t = tx.open_table(AUDIT)?;
            let end = key(seq - keep + 1);
            t.retain_in::<&str, _>(..end.as_str(), |_, _| false)?;
        }
        Ok(())
    })
}

pub fn page(s: &CxState, q: &AuditQuery) -> Result<AuditPage, StoreError> {
    let limit = q.limit.unwrap_or(100).clamp(1, 1000) as usize;
    let before = q.before.map(key);
    let (rows, more) = s
        .store
        .page_rev::<AuditEntry>(AUDIT, before.as_deref(), limit, |e| {
            q.actor.as_ref().is_none_or(|a| &e.actor == a)
        })?;
    let entries: Vec<AuditEntry> = rows.into_iter().map(|(_, e)| e).collect();
    Ok(AuditPage {
        next_before: if more {
            entries.last().map(|e| e.seq)
        } else {
            None
        },
        entries,
    })
}
