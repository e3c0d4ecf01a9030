//! Retention policies and the pruning step that enforces them.
//!
//! A policy keeps a time window (`window`), a space budget (`max_bytes`), or
//! both (whichever is hit first). Every journal also keeps a margin free on
//! its filesystem (`mt.keep_free`), so without `max_bytes` the budget is
//! what the disk holds. When the budget is reached, `on_full` decides:
//! `prune` drops the oldest points even inside the time window (a
//! "retention log reset", counted and reported), `stop` refuses new chunks
//! (the agent falls back to its bitmap) until space returns: pruning by
//! time, or an operator freeing space or raising the limit. The journal
//! enforces both as it appends ([`super::SpaceLimit`]); the pruner only
//! catches up with a limit that was lowered.
//!
//! [`prune_step`] does at most one segment's worth of checkpointing per call,
//! so a background pruner never holds the journal for longer than that; it
//! never passes a pinned point (an open vsnap or image export).

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{Journal, JournalError, JournalStats};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum OnFull {
    /// Drop the oldest points to make room ("retention log reset").
    #[default]
    Prune,
    /// Stop applying; raise an alert; the PS keeps caching.
    Stop,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default, utoipa::ToSchema)]
pub struct RetentionPolicy {
    /// Keep every point for this long (time-based).
    #[serde(default, with = "opt_dur")]
    #[schema(value_type = Option<String>, example = "24h")]
    pub window: Option<Duration>,
    /// Journal space budget in bytes (space-based).
    #[serde(default)]
    pub max_bytes: Option<u64>,
    #[serde(default)]
    pub on_full: OnFull,
    /// Sparse retention: older points are thinned tier by tier (seed line 1252:
    /// all writes for 24 h, one point every 4 h up to 48 h, then only
    /// application bookmarks, nothing after `window`).
    #[serde(default)]
    pub tiers: Vec<SparseTier>,
}

/// Points older than `after` keep only one point per `every` (the last in
/// each aligned interval), or only bookmarks (`"any"`, `"app"`, `"fs"`, `"user"`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SparseTier {
    #[serde(with = "req_dur")]
    #[schema(value_type = String, example = "24h")]
    pub after: Duration,
    #[serde(default, with = "opt_dur", skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, example = "4h")]
    pub every: Option<Duration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bookmarks: Option<String>,
}

impl SparseTier {
    fn keeps(&self, p: &super::PointInfo) -> bool {
        if let Some(d) = self.every {
            let d = d.as_micros().max(1) as u64;
            return p.next_ts_us.is_none_or(|n| n / d != p.ts_us / d);
        }
        match (&self.bookmarks, p.bookmark) {
            (Some(k), Some(b)) => {
                k == "any" || k.parse::<super::BookmarkKind>().is_ok_and(|k| k == b.kind)
            }
            _ => false,
        }
    }
}

impl RetentionPolicy {
    /// The journal's space limit under this policy, keeping `keep_free`
    /// bytes free on its filesystem (None: the journal's default margin).
    pub fn space_limit(&self, keep_free: Option<u64>) -> super::SpaceLimit {
        super::SpaceLimit {
            max_bytes: self.max_bytes,
            keep_free,
            on_full: self.on_full,
            window_us: self.window.map(|w| w.as_micros() as u64),
        }
    }

    /// Rules serde cannot express.
    pub fn validate(&self) -> Result<(), String> {
        for t in &self.tiers {
            match (&t.every, &t.bookmarks) {
                (Some(_), None) => {}
                (None, Some(k)) if k == "any" || k.parse::<super::BookmarkKind>().is_ok() => {}
                _ => {
                    return Err(format!(
                        "sparse tier after {:?}: give exactly one of `every` or `bookmarks` (any, app, fs, user)",
                        t.after
                    ));
                }
            }
        }
        Ok(())
    }
}

mod req_dur {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;
    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        humantime::parse_duration(&String::deserialize(d)?).map_err(serde::de::Error::custom)
    }
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
    /// A segment was thinned by a sparse tier.
    Compacted { segno: u64 },
}

/// Where the policy wants the oldest point to be now; `reset` when space
/// forces it past what the time window would keep.
fn target(
    j: &Journal,
    p: &RetentionPolicy,
    st: &JournalStats,
    now_us: u64,
) -> Result<(u64, bool), JournalError> {
    let oldest = st.oldest.seq;
    let by_time = match p
        .window
        .and_then(|w| now_us.checked_sub(w.as_micros() as u64))
    {
        Some(cutoff) => j.seq_at_or_before(cutoff)?.unwrap_or(oldest),
        None => oldest,
    };
    let mut by_space = oldest;
    if let (Some(max), OnFull::Prune) = (p.max_bytes, p.on_full)
        && st.bytes > max
    {
        // Release the oldest segment that holds live records.
        if let Some(s) = st.segments.iter().find(|s| s.last_seq > oldest) {
            by_space = s.last_seq;
        }
    }
    // Records before the first consistent point (an initial sync, a resync
    // that started at the oldest point) can never be recovered to: fold
    // them into the replica as soon as they are applied.
    let by_resync = j
        .unrecoverable_range(oldest)
        .map(|(_, to)| to.min(st.latest.seq))
        .unwrap_or(oldest);
    let t = by_time.max(by_space).max(by_resync);
    Ok((t, by_space > by_time.max(by_resync) && t > oldest))
}

/// One bounded pruning step.
pub fn prune_step(
    j: &Journal,
    p: &RetentionPolicy,
    now_us: u64,
) -> Result<PruneOutcome, JournalError> {
    j.set_space_limit(p.space_limit(j.space_limit().keep_free));
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
    let (mut to, reset) = target(j, p, &st, now_us)?;
    if to <= st.oldest.seq {
        return compact_step(j, p, &st, now_us);
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

/// Thin the oldest segment that a sparse tier has become due for. Segments
/// held by an open snapshot are skipped (and reported if nothing else was done).
fn compact_step(
    j: &Journal,
    p: &RetentionPolicy,
    st: &JournalStats,
    now_us: u64,
) -> Result<PruneOutcome, JournalError> {
    if p.tiers.is_empty() {
        return Ok(PruneOutcome::Idle);
    }
    let mut tiers = p.tiers.clone();
    tiers.sort_by_key(|t| t.after);
    let active = st.segments.last().map(|s| s.segno);
    let tier_of = |seg: &super::SegmentStats| -> Result<Option<usize>, JournalError> {
        if Some(seg.segno) == active || seg.last_seq <= st.oldest.seq || seg.first_seq == 0 {
            return Ok(None);
        }
        let newest = j.ts_of(seg.last_seq)?;
        Ok(tiers
            .iter()
            .rposition(|t| newest < now_us.saturating_sub(t.after.as_micros() as u64)))
    };
    let due: Vec<Option<usize>> = st.segments.iter().map(tier_of).collect::<Result<_, _>>()?;
    let target = |k: usize| due[k];
    // Bound the work of one step: merge at most this many input bytes.
    let budget = 4 * j.segment_bytes();
    let mut held = None;
    let segs = &st.segments;
    let mut i = 0;
    while i < segs.len() {
        let Some(k) = target(i) else {
            i += 1;
            continue;
        };
        let level = (k + 1) as u8;
        if segs[i].level >= level {
            i += 1;
            continue;
        }
        // A run: this segment and the following ones due for the same tier.
        let mut run = vec![segs[i].segno];
        let mut bytes = segs[i].bytes;
        let mut n = i + 1;
        while n < segs.len() && target(n) == Some(k) && bytes + segs[n].bytes <= budget {
            run.push(segs[n].segno);
            bytes += segs[n].bytes;
            n += 1;
        }
        // The merged segment is written before the old ones go: only with room for it.
        if j.effective_limit()
            .is_some_and(|lim| st.bytes + bytes > lim)
        {
            tracing::info!(journal = %j.dir().display(), "sparse retention deferred: no room to rewrite segments");
            i = n;
            continue;
        }
        // A tier also keeps what every later tier keeps (bookmarks survive "every 4 h").
        let rules = &tiers[k..];
        match j.compact_segments(&run, level, |pt| rules.iter().any(|t| t.keeps(pt)))? {
            super::CompactOutcome::Compacted { segno, .. } => {
                return Ok(PruneOutcome::Compacted { segno });
            }
            super::CompactOutcome::Held { pinned } => held = Some(pinned),
            super::CompactOutcome::Skipped => {}
        }
        i = n;
    }
    Ok(match held {
        Some(pinned) => PruneOutcome::Held { pinned },
        None => PruneOutcome::Idle,
    })
}

/// Prune until the policy holds (or a pin stops it); returns the pin that held it.
pub fn prune_all(
    j: &Journal,
    p: &RetentionPolicy,
    now_us: u64,
) -> Result<Option<u64>, JournalError> {
    loop {
        match prune_step(j, p, now_us)? {
            PruneOutcome::Idle => return Ok(None),
            PruneOutcome::Held { pinned } => return Ok(Some(pinned)),
            PruneOutcome::Advanced { .. } | PruneOutcome::Compacted { .. } => {}
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
    /// The budget now: `max_bytes`, or what the disk holds beyond its margin.
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
        // (A report: an unreadable index shows as no history.)
        j.ts_of(1).unwrap_or(st.latest.ts_us).min(st.latest.ts_us)
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
        space_limit_bytes: j.effective_limit(),
        consistency_points: st.bookmarks,
        retention_log_resets: st.resets,
        window_shortfall,
        held_by_snapshot: st.min_pin,
    }
}
