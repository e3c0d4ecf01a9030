//! Retention policies and the pruning step that enforces them.
//!
//! A policy keeps a time window (`window`), a space budget (`max_bytes`), or
//! both (whichever is hit first). When the space budget is reached, `on_full`
//! decides: `prune` drops the oldest points even inside the time window (a
//! "retention log reset", counted and reported), `stop` refuses new chunks
//! (the PS keeps caching) until pruning by time frees space.
//!
//! [`prune_step`] does at most one segment's worth of checkpointing per call,
//! so a background pruner never holds the journal for longer than that; it
//! never passes a pinned point (an open vsnap or image export).

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{Journal, JournalError, JournalStats};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum OnFull {
    /// Drop the oldest points to make room ("retention log reset").
    #[default]
    Prune,
    /// Stop applying; raise an alert; the PS keeps caching.
    Stop,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct RetentionPolicy {
    /// Keep every point for this long (time-based).
    #[serde(default, with = "opt_dur")]
    pub window: Option<Duration>,
    /// Journal space budget in bytes (space-based).
    #[serde(default)]
    pub max_bytes: Option<u64>,
    #[serde(default)]
    pub on_full: OnFull,
}

mod opt_dur {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;
    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_str(&humantime::format_duration(*d).to_string()),
            None => s.serialize_none(),
        }
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        let s: Option<String> = Option::deserialize(d)?;
        s.map(|s| humantime::parse_duration(&s).map_err(serde::de::Error::custom))
            .transpose()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PruneOutcome {
    /// Nothing to do.
    Idle,
    /// The oldest point moved to this seq.
    Advanced { to: u64, reset: bool },
    /// Pruning is due but an open snapshot holds this seq.
    Held { pinned: u64 },
}

/// Where the policy wants the oldest point to be now; `reset` when space
/// forces it past what the time window would keep.
fn target(j: &Journal, p: &RetentionPolicy, st: &JournalStats, now_us: u64) -> (u64, bool) {
    let oldest = st.oldest.seq;
    let by_time = p
        .window
        .and_then(|w| now_us.checked_sub(w.as_micros() as u64))
        .and_then(|cutoff| j.seq_at_or_before(cutoff))
        .unwrap_or(oldest);
    let mut by_space = oldest;
    if let (Some(max), OnFull::Prune) = (p.max_bytes, p.on_full)
        && st.bytes > max
    {
        // Release the oldest segment that holds live records.
        if let Some(s) = st.segments.iter().find(|s| s.last_seq > oldest) {
            by_space = s.last_seq;
        }
    }
    let t = by_time.max(by_space);
    (t, by_space > by_time && t > oldest)
}

/// One bounded pruning step.
pub fn prune_step(
    j: &Journal,
    p: &RetentionPolicy,
    now_us: u64,
) -> Result<PruneOutcome, JournalError> {
    j.set_stop_at_bytes(match p.on_full {
        OnFull::Stop => p.max_bytes,
        OnFull::Prune => None,
    });
    let mut st = j.stats();
    // The only segment with data is the active one and space says go: seal it first.
    if let (Some(max), OnFull::Prune) = (p.max_bytes, p.on_full)
        && st.bytes > max
        && st
            .segments
            .iter()
            .filter(|s| s.last_seq > st.oldest.seq)
            .count()
            <= 1
    {
        j.seal_active()?;
        st = j.stats();
    }
    let (mut to, reset) = target(j, p, &st, now_us);
    if to <= st.oldest.seq {
        return Ok(PruneOutcome::Idle);
    }
    // Bound the step to the end of the oldest live segment.
    if let Some(s) = st.segments.iter().find(|s| s.last_seq > st.oldest.seq) {
        to = to.min(s.last_seq);
    }
    if let Some(pin) = st.min_pin
        && pin < to
    {
        if pin <= st.oldest.seq {
            return Ok(PruneOutcome::Held { pinned: pin });
        }
        to = pin;
    }
    j.checkpoint(to)?;
    if reset {
        j.note_reset()?;
        tracing::warn!(journal = %j.dir().display(), to, "retention space full: oldest points dropped inside the time window (retention log reset)");
    }
    Ok(PruneOutcome::Advanced { to, reset })
}

/// Prune until the policy holds (or a pin stops it).
pub fn prune_all(
    j: &Journal,
    p: &RetentionPolicy,
    now_us: u64,
) -> Result<Option<u64>, JournalError> {
    let mut held = None;
    loop {
        match prune_step(j, p, now_us)? {
            PruneOutcome::Idle => return Ok(held),
            PruneOutcome::Held { pinned } => return Ok(Some(pinned)),
            PruneOutcome::Advanced { .. } => held = None,
        }
    }
}

/// What the operator sees per pair (seed health report columns).
#[derive(Debug, Clone, Serialize)]
pub struct RetentionReport {
    pub policy: RetentionPolicy,
    /// Policy window in seconds (None if only space-based).
    pub window_policy_s: Option<u64>,
    /// Time between the oldest and latest recoverable points.
    pub window_available_s: u64,
    pub oldest: super::Point,
    pub latest: super::Point,
    pub space_used_bytes: u64,
    pub space_limit_bytes: Option<u64>,
    pub consistency_points: u64,
    pub retention_log_resets: u64,
    /// True when the policy's time window is not (yet) covered.
    pub window_shortfall: bool,
    pub held_by_snapshot: Option<u64>,
}

pub fn report(j: &Journal, p: &RetentionPolicy, now_us: u64) -> RetentionReport {
    let st = j.stats();
    // An untouched initial replica (seq 0) dates from the first record.
    let oldest_ts = if st.oldest.seq == 0 {
        j.ts_of(1).min(st.latest.ts_us)
    } else {
        st.oldest.ts_us
    };
    let avail = st.latest.ts_us.saturating_sub(oldest_ts) / 1_000_000;
    let window_shortfall = p.window.is_some_and(|w| {
        // Short only if history older than what we have existed (a reset) or we
        // were pruned by space: i.e. the oldest point is younger than the window.
        st.resets > 0 && now_us.saturating_sub(st.oldest.ts_us) < w.as_micros() as u64
    });
    RetentionReport {
        policy: p.clone(),
        window_policy_s: p.window.map(|w| w.as_secs()),
        window_available_s: avail,
        oldest: st.oldest,
        latest: st.latest,
        space_used_bytes: st.bytes,
        space_limit_bytes: p.max_bytes,
        consistency_points: st.bookmarks,
        retention_log_resets: st.resets,
        window_shortfall,
        held_by_snapshot: st.min_pin,
    }
}
