//! Trends: time series kept at day / week / month / year resolutions, like
//! the seed's RRD files (seed line 5284), on the embedded tsink store.
//!
//! Owns `DATA/trends/`: `meta.json` (format name, version, the tiers) and one
//! directory per tier, holding one tsink store per *epoch* (a fixed slice of
//! time): `DATA/trends/<tier>/<epoch start, Unix s>/`.
//!
//! Samples enter the `raw` tier as they come (one per series per step);
//! every coarser tier gets one point per bucket, the average (`cf="avg"`)
//! and the maximum (`cf="max"`) of the raw samples inside it, written when
//! the bucket closes. After a restart the open buckets are rebuilt from the
//! raw tier, so a downsampled point always agrees with the raw points it
//! summarises.
//!
//! Invariants:
//! - Size is bounded whatever the run time: a tier never holds more than
//!   `retention / epoch + 2` epochs; an epoch that ended before
//!   `now - retention` is deleted whole (tsink's own retention follows the
//!   wall clock, which a time-compressed test cannot move, and its deletes
//!   leave tombstones; a directory removal returns the space at once).
//! - An epoch is a whole number of buckets of its tier, so a bucket never
//!   spans two stores.
//! - Only the newest epoch of a tier is written; an epoch is closed (flushed,
//!   its WAL emptied) when the next one opens.
//! - Time is whatever the caller passes (Unix seconds): the CX passes the
//!   wall clock, tests pass a simulated one.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tsink::{DataPoint, Label, Row, Storage, StorageBuilder, TimestampPrecision, WalSyncMode};

/// One resolution: what the operator asks for by `view` (day, week, month,
/// year) or by `name` (raw, 1m, 10m, 1h).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Tier {
    pub name: &'static str,
    pub view: &'static str,
    /// Bucket width, seconds (for `raw`: the sampling step).
    pub res_s: i64,
    pub retention_s: i64,
    /// One tsink store per this many seconds.
    pub epoch_s: i64,
}

const DAY: i64 = 86_400;

/// The tiers for a raw sampling step of `step_s` seconds.
pub fn tiers(step_s: i64) -> [Tier; 4] {
    [
        Tier {
            name: "raw",
            view: "day",
            res_s: step_s,
            retention_s: 2 * DAY,
            epoch_s: DAY / 2,
        },
        Tier {
            name: "1m",
            view: "week",
            res_s: 60,
            retention_s: 9 * DAY,
            epoch_s: 3 * DAY,
        },
        Tier {
            name: "10m",
            view: "month",
            res_s: 600,
            retention_s: 35 * DAY,
            epoch_s: 7 * DAY,
        },
        Tier {
            name: "1h",
            view: "year",
            res_s: 3600,
            retention_s: 400 * DAY,
            epoch_s: 50 * DAY,
        },
    ]
}

/// The steps the tiers can sit on: each must divide a minute.
pub fn valid_step(step_s: i64) -> bool {
    step_s > 0 && 60 % step_s == 0
}

#[derive(Debug, thiserror::Error)]
pub enum TrendsError {
    #[error("trends store {path}: {message}")]
    Store { path: PathBuf, message: String },
    #[error(
        "trends store {path}: written with another layout ({found}); move it away to start new trends"
    )]
    Layout { path: PathBuf, found: String },
    #[error("unknown resolution `{0}`: use raw|1m|10m|1h or day|week|month|year")]
    Resolution(String),
    #[error("bad time range: start {start} is not before end {end}")]
    Range { start: i64, end: i64 },
}

fn store_err(path: &Path, e: impl std::fmt::Display) -> TrendsError {
    TrendsError::Store {
        path: path.to_owned(),
        message: e.to_string(),
    }
}

/// A value of one series at one time.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub metric: String,
    /// Sorted by name (see [`Sample::new`]).
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

impl Sample {
    pub fn new(metric: &str, labels: &[(&str, &str)], value: f64) -> Sample {
        let mut l: Vec<(String, String)> = labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        l.sort();
        Sample {
            metric: metric.to_owned(),
            labels: l,
            value,
        }
    }

    fn key(&self) -> SeriesKey {
        (self.metric.clone(), self.labels.clone())
    }
}

type SeriesKey = (String, Vec<(String, String)>);

/// Consolidation function, as rrdtool calls it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Cf {
    #[default]
    Avg,
    Max,
}

impl std::str::FromStr for Cf {
    type Err = String;
    fn from_str(s: &str) -> Result<Cf, String> {
        match s.to_ascii_lowercase().as_str() {
            "avg" | "average" => Ok(Cf::Avg),
            "max" => Ok(Cf::Max),
            _ => Err(format!("unknown consolidation `{s}`: use avg or max")),
        }
    }
}

/// One series of a fetch.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Series {
    pub metric: String,
    pub labels: BTreeMap<String, String>,
    /// (bucket start, Unix s; value), oldest first.
    pub points: Vec<(i64, f64)>,
}

/// What a fetch returns.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Fetch {
    pub metric: String,
    pub resolution: String,
    pub step_s: i64,
    pub cf: Cf,
    pub start: i64,
    pub end: i64,
    pub series: Vec<Series>,
}

#[derive(Debug, Clone)]
struct Acc {
    bucket: i64,
    sum: f64,
    n: u32,
    max: f64,
}

struct TierState {
    tier: Tier,
    dir: PathBuf,
    /// The epoch being written and its store.
    current: Option<(i64, Arc<dyn Storage>)>,
    /// Open buckets (downsampled tiers only).
    acc: HashMap<SeriesKey, Acc>,
}

#[derive(Debug, Serialize, Deserialize, PartialEq)]
struct Meta {
    format: String,
    version: u32,
    step_s: i64,
    tiers: Vec<(String, i64, i64, i64)>,
}

const FORMAT: &str = "tern-trends";
const VERSION: u32 = 1;

/// The trends store. Calls are blocking (tsink does file I/O): from async
/// code use `spawn_blocking`.
pub struct Trends {
    dir: PathBuf,
    step_s: i64,
    inner: Mutex<Vec<TierState>>,
    /// Records since the open stores were last checkpointed.
    since_checkpoint: Mutex<u32>,
}

/// Every this many records (10 minutes at the default step) the open
/// stores are closed and reopened: tsink empties a store's WAL only when
/// every series' open chunk is flushed, which never happens to a store
/// written every step, so without this the WAL would grow for the whole
/// epoch. A crash loses at most this many samples' worth of WAL replay.
const CHECKPOINT_RECORDS: u32 = 60;

fn bucket(t: i64, res: i64) -> i64 {
    t.div_euclid(res) * res
}

fn open_store(dir: &Path) -> Result<Arc<dyn Storage>, TrendsError> {
    std::fs::create_dir_all(dir).map_err(|e| store_err(dir, e))?;
    StorageBuilder::new()
        .with_data_path(dir)
        .with_timestamp_precision(TimestampPrecision::Seconds)
        // Retention is ours (whole epochs), not tsink's wall clock.
        .with_retention_enforced(false)
        .with_partition_duration(Duration::from_secs(DAY as u64))
        .with_wal_sync_mode(WalSyncMode::Periodic(Duration::from_secs(1)))
        .with_background_fail_fast(false)
        .with_max_writers(1)
        .build()
        .map_err(|e| store_err(dir, e))
}

fn labels_of(l: &[(String, String)], cf: Option<Cf>) -> Vec<Label> {
    let mut v: Vec<Label> = l.iter().map(|(k, v)| Label::new(k, v)).collect();
    if let Some(cf) = cf {
        v.push(Label::new(
            "cf",
            match cf {
                Cf::Avg => "avg",
                Cf::Max => "max",
            },
        ));
    }
    v
}

impl Trends {
    /// Open (creating) `dir` for a raw step of `step_s` seconds.
    pub fn open(dir: &Path, step_s: i64) -> Result<Trends, TrendsError> {
        assert!(valid_step(step_s), "trends step must divide 60 s");
        std::fs::create_dir_all(dir).map_err(|e| store_err(dir, e))?;
        let ts = tiers(step_s);
        let meta = Meta {
            format: FORMAT.into(),
            version: VERSION,
            step_s,
            tiers: ts
                .iter()
                .map(|t| (t.name.to_owned(), t.res_s, t.retention_s, t.epoch_s))
                .collect(),
        };
        let mp = dir.join("meta.json");
        match std::fs::read(&mp) {
            Ok(b) => {
                let found: serde_json::Value = serde_json::from_slice(&b).unwrap_or_default();
                let ok = serde_json::from_value::<Meta>(found.clone()).is_ok_and(|m| {
                    m.format == FORMAT && m.version == VERSION && m.step_s == step_s
                });
                if !ok {
                    return Err(TrendsError::Layout {
                        path: dir.to_owned(),
                        found: format!(
                            "format {} version {} step {}s; this build writes {FORMAT} version {VERSION} step {step_s}s",
                            found["format"], found["version"], found["step_s"]
                        ),
                    });
                }
            }
            Err(_) => crate::engine::fsutil::write_durable(
                &mp,
                serde_json::to_string_pretty(&meta)
                    .expect("meta serialises")
                    .as_bytes(),
                0o644,
            )
            .map_err(|e| store_err(dir, e))?,
        }
        let states = ts
            .iter()
            .map(|t| TierState {
                tier: *t,
                dir: dir.join(t.name),
                current: None,
                acc: HashMap::new(),
            })
            .collect();
        let me = Trends {
            dir: dir.to_owned(),
            step_s,
            inner: Mutex::new(states),
            since_checkpoint: Mutex::new(0),
        };
        me.recover()?;
        Ok(me)
    }

    pub fn step_s(&self) -> i64 {
        self.step_s
    }

    pub fn tiers(&self) -> [Tier; 4] {
        tiers(self.step_s)
    }

    /// Epoch starts present on disk for a tier, oldest first.
    fn epochs(dir: &Path) -> Vec<i64> {
        let mut v: Vec<i64> = std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse().ok())
            .collect();
        v.sort();
        v
    }

    /// Rebuild open buckets from the raw tier: every raw sample newer than
    /// the last point a coarser tier holds goes through its accumulator again.
    fn recover(&self) -> Result<(), TrendsError> {
        let mut g = self.inner.lock().unwrap();
        let raw_dir = g[0].dir.clone();
        let raw_epochs = Self::epochs(&raw_dir);
        if raw_epochs.is_empty() {
            return Ok(());
        }
        // Open the newest raw epoch as the writer.
        let newest = *raw_epochs.last().expect("non-empty");
        g[0].current = Some((newest, open_store(&raw_dir.join(newest.to_string()))?));
        for k in 1..g.len() {
            let (dir, res) = (g[k].dir.clone(), g[k].tier.res_s);
            let mut last: Option<i64> = None;
            if let Some(&e) = Self::epochs(&dir).last() {
                let st = open_store(&dir.join(e.to_string()))?;
                for m in st.list_metrics().map_err(|x| store_err(&dir, x))? {
                    let pts = st
                        .select(&m.name, &m.labels, i64::MIN / 2, i64::MAX / 2)
                        .map_err(|x| store_err(&dir, x))?;
                    if let Some(p) = pts.last() {
                        last = Some(last.map_or(p.timestamp, |l: i64| l.max(p.timestamp)));
                    }
                }
                g[k].current = Some((e, st));
            }
            let from = last.map_or(i64::MIN / 2, |l| l + res);
            let raw = self.read_raw_all(&g[0], &raw_epochs, from)?;
            let st = &mut g[k];
            for (key, pts) in raw {
                for (t, v) in pts {
                    let b = bucket(t, res);
                    let a = st.acc.entry(key.clone()).or_insert(Acc {
                        bucket: b,
                        sum: 0.0,
                        n: 0,
                        max: f64::MIN,
                    });
                    if a.bucket != b {
                        // A bucket that closed while the process was down.
                        let done = std::mem::replace(
                            a,
                            Acc {
                                bucket: b,
                                sum: 0.0,
                                n: 0,
                                max: f64::MIN,
                            },
                        );
                        Self::write_acc(st, &key, &done)?;
                    }
                    let a = st.acc.get_mut(&key).expect("inserted");
                    a.sum += v;
                    a.n += 1;
                    a.max = a.max.max(v);
                }
            }
        }
        Ok(())
    }

    /// Every raw series from `from` on, across the raw epochs on disk.
    fn read_raw_all(
        &self,
        raw: &TierState,
        epochs: &[i64],
        from: i64,
    ) -> Result<BTreeMap<SeriesKey, Vec<(i64, f64)>>, TrendsError> {
        let mut out: BTreeMap<SeriesKey, Vec<(i64, f64)>> = BTreeMap::new();
        for &e in epochs {
            if e + raw.tier.epoch_s <= from {
                continue;
            }
            let (st, _owned) = match &raw.current {
                Some((ce, s)) if *ce == e => (s.clone(), false),
                _ => (open_store(&raw.dir.join(e.to_string()))?, true),
            };
            for m in st.list_metrics().map_err(|x| store_err(&raw.dir, x))? {
                let pts = st
                    .select(&m.name, &m.labels, from, i64::MAX / 2)
                    .map_err(|x| store_err(&raw.dir, x))?;
                let mut l: Vec<(String, String)> =
                    m.labels.into_iter().map(|l| (l.name, l.value)).collect();
                l.sort();
                let v = out.entry((m.name, l)).or_default();
                v.extend(
                    pts.iter()
                        .filter_map(|p| Some((p.timestamp, p.value_as_f64()?))),
                );
            }
            if _owned {
                let _ = st.close();
            }
        }
        for v in out.values_mut() {
            v.sort_by_key(|p| p.0);
            v.dedup_by_key(|p| p.0);
        }
        Ok(out)
    }

    fn write_acc(st: &mut TierState, key: &SeriesKey, a: &Acc) -> Result<(), TrendsError> {
        if a.n == 0 {
            return Ok(());
        }
        let (store, owned) = Self::store_for(st, a.bucket)?;
        let r = store
            .insert_rows(&[
                Row::with_labels(
                    &key.0,
                    labels_of(&key.1, Some(Cf::Avg)),
                    DataPoint::new(a.bucket, a.sum / a.n as f64),
                ),
                Row::with_labels(
                    &key.0,
                    labels_of(&key.1, Some(Cf::Max)),
                    DataPoint::new(a.bucket, a.max),
                ),
            ])
            .map_err(|e| store_err(&st.dir, e));
        if owned {
            let _ = store.close();
        }
        r
    }

    /// The store for time `t` of a tier: the current epoch, or (rolling
    /// forward) a new one, closing the old. `true`: a store opened for this
    /// write only (an older epoch), to be closed by the caller.
    fn store_for(st: &mut TierState, t: i64) -> Result<(Arc<dyn Storage>, bool), TrendsError> {
        let e = bucket(t, st.tier.epoch_s);
        match &st.current {
            Some((ce, s)) if *ce == e => return Ok((s.clone(), false)),
            Some((ce, _)) if *ce > e => {
                // Late point for an older epoch (clock stepped back).
                return Ok((open_store(&st.dir.join(e.to_string()))?, true));
            }
            _ => {}
        }
        if let Some((_, old)) = st.current.take() {
            old.close().map_err(|x| store_err(&st.dir, x))?;
        }
        let s = open_store(&st.dir.join(e.to_string()))?;
        st.current = Some((e, s.clone()));
        Ok((s, false))
    }

    /// Delete the epochs of a tier that ended before `now - retention`.
    fn prune(st: &mut TierState, now: i64) -> Result<(), TrendsError> {
        let cutoff = now - st.tier.retention_s;
        for e in Self::epochs(&st.dir) {
            if e + st.tier.epoch_s <= cutoff {
                if let Some((ce, s)) = &st.current
                    && *ce == e
                {
                    let _ = s.close();
                    st.current = None;
                }
                let p = st.dir.join(e.to_string());
                std::fs::remove_dir_all(&p).map_err(|x| store_err(&p, x))?;
                tracing::debug!(tier = st.tier.name, epoch = e, "trends epoch expired");
            }
        }
        Ok(())
    }

    /// Record samples taken at `t` (Unix s).
    pub fn record(&self, t: i64, samples: &[Sample]) -> Result<(), TrendsError> {
        let t = bucket(t, self.step_s);
        let mut g = self.inner.lock().unwrap();
        // Raw tier.
        {
            let st = &mut g[0];
            let (store, owned) = Self::store_for(st, t)?;
            let rows: Vec<Row> = samples
                .iter()
                .filter(|s| s.value.is_finite())
                .map(|s| {
                    Row::with_labels(
                        &s.metric,
                        labels_of(&s.labels, None),
                        DataPoint::new(t, s.value),
                    )
                })
                .collect();
            let r = if rows.is_empty() {
                Ok(())
            } else {
                store.insert_rows(&rows).map_err(|e| store_err(&st.dir, e))
            };
            if owned {
                let _ = store.close();
            }
            r?;
            Self::prune(st, t)?;
        }
        // Downsampled tiers: close the buckets that ended, then add.
        for st in g.iter_mut().skip(1) {
            let res = st.tier.res_s;
            let b = bucket(t, res);
            let closed: Vec<SeriesKey> = st
                .acc
                .iter()
                .filter(|(_, a)| a.bucket < b)
                .map(|(k, _)| k.clone())
                .collect();
            for k in closed {
                let a = st.acc.remove(&k).expect("listed");
                Self::write_acc(st, &k, &a)?;
            }
            for s in samples.iter().filter(|s| s.value.is_finite()) {
                let a = st.acc.entry(s.key()).or_insert(Acc {
                    bucket: b,
                    sum: 0.0,
                    n: 0,
                    max: f64::MIN,
                });
                a.sum += s.value;
                a.n += 1;
                a.max = a.max.max(s.value);
            }
            Self::prune(st, t)?;
        }
        let mut n = self.since_checkpoint.lock().unwrap();
        *n += 1;
        if *n >= CHECKPOINT_RECORDS {
            *n = 0;
            for st in g.iter_mut() {
                if let Some((e, s)) = st.current.take() {
                    s.close().map_err(|x| store_err(&st.dir, x))?;
                    st.current = Some((e, open_store(&st.dir.join(e.to_string()))?));
                }
            }
        }
        Ok(())
    }

    /// Resolve a resolution name; `None`: the finest tier whose retention
    /// still covers `start` as seen from `now`.
    pub fn tier(&self, name: Option<&str>, start: i64, now: i64) -> Result<Tier, TrendsError> {
        let ts = self.tiers();
        match name {
            Some(n) => ts
                .iter()
                .find(|t| t.name == n || t.view == n)
                .copied()
                .ok_or_else(|| TrendsError::Resolution(n.to_owned())),
            None => Ok(*ts
                .iter()
                .find(|t| start >= now - t.retention_s)
                .unwrap_or(&ts[3])),
        }
    }

    /// Points of `metric` in `[start, end]` at `tier`, for the series whose
    /// labels include every `(name, value)` of `filter`.
    pub fn fetch(
        &self,
        metric: &str,
        filter: &[(String, String)],
        start: i64,
        end: i64,
        tier: Tier,
        cf: Cf,
    ) -> Result<Fetch, TrendsError> {
        // Times come from operators: far ends would overflow the sums below.
        const FAR: i64 = 1 << 40;
        if start >= end || start < -FAR || end > FAR {
            return Err(TrendsError::Range { start, end });
        }
        let g = self.inner.lock().unwrap();
        let st = g
            .iter()
            .find(|s| s.tier.name == tier.name)
            .expect("known tier");
        let mut out: BTreeMap<BTreeMap<String, String>, Vec<(i64, f64)>> = BTreeMap::new();
        let from = bucket(start, tier.res_s);
        for e in Self::epochs(&st.dir) {
            if e + tier.epoch_s <= from || e > end {
                continue;
            }
            let (store, owned) = match &st.current {
                Some((ce, s)) if *ce == e => (s.clone(), false),
                _ => (open_store(&st.dir.join(e.to_string()))?, true),
            };
            let rows = store
                .select_all(metric, from, end + 1)
                .map_err(|x| store_err(&st.dir, x));
            if owned {
                let _ = store.close();
            }
            for (labels, pts) in rows? {
                let mut l: BTreeMap<String, String> =
                    labels.into_iter().map(|l| (l.name, l.value)).collect();
                if st.tier.name != "raw" {
                    let want = match cf {
                        Cf::Avg => "avg",
                        Cf::Max => "max",
                    };
                    if l.remove("cf").as_deref() != Some(want) {
                        continue;
                    }
                }
                if !filter.iter().all(|(k, v)| l.get(k) == Some(v)) {
                    continue;
                }
                out.entry(l).or_default().extend(
                    pts.iter()
                        .filter_map(|p| Some((p.timestamp, p.value_as_f64()?))),
                );
            }
        }
        Ok(Fetch {
            metric: metric.to_owned(),
            resolution: tier.name.to_owned(),
            step_s: tier.res_s,
            cf,
            start: from,
            end,
            series: out
                .into_iter()
                .map(|(labels, mut points)| {
                    points.sort_by_key(|p| p.0);
                    points.dedup_by_key(|p| p.0);
                    Series {
                        metric: metric.to_owned(),
                        labels,
                        points,
                    }
                })
                .collect(),
        })
    }

    /// Bytes on disk (for the bounded-size test and the health view).
    pub fn disk_bytes(&self) -> u64 {
        fn du(p: &Path) -> u64 {
            std::fs::read_dir(p)
                .into_iter()
                .flatten()
                .flatten()
                .map(|e| match e.metadata() {
                    Ok(m) if m.is_dir() => du(&e.path()),
                    Ok(m) => m.len(),
                    Err(_) => 0,
                })
                .sum()
        }
        du(&self.dir)
    }

    /// Epoch directories per tier (name, count).
    pub fn epoch_counts(&self) -> Vec<(&'static str, usize)> {
        let g = self.inner.lock().unwrap();
        g.iter()
            .map(|s| (s.tier.name, Self::epochs(&s.dir).len()))
            .collect()
    }

    /// Flush what can be flushed and close every store (clean stop). Open
    /// buckets are rebuilt from the raw tier on the next open.
    pub fn close(&self) {
        let mut g = self.inner.lock().unwrap();
        for st in g.iter_mut() {
            if let Some((_, s)) = st.current.take()
                && let Err(e) = s.close()
            {
                tracing::warn!(tier = st.tier.name, error = %e, "trends store did not close cleanly");
            }
        }
    }
}

impl Drop for Trends {
    fn drop(&mut self) {
        self.close();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: f64) -> Vec<Sample> {
        vec![
            Sample::new("pair_rpo_seconds", &[("pair", "a")], v),
            Sample::new("pair_rpo_seconds", &[("pair", "b")], 2.0 * v),
        ]
    }

    #[test]
    fn downsampled_buckets_are_the_average_and_max_of_raw() {
        let d = tempfile::tempdir().unwrap();
        let tr = Trends::open(d.path(), 10).unwrap();
        let t0 = 1_800_000_000 / 3600 * 3600;
        for i in 0..(3 * 360) {
            tr.record(t0 + i * 10, &s((i % 7) as f64)).unwrap();
        }
        let tier = tr.tier(Some("raw"), t0, t0).unwrap();
        let f = [("pair".to_owned(), "a".to_owned())];
        let raw = tr
            .fetch("pair_rpo_seconds", &f, t0, t0 + 3 * 3600, tier, Cf::Avg)
            .unwrap();
        assert_eq!(raw.series.len(), 1);
        assert_eq!(raw.series[0].points.len(), 3 * 360);
        let m1 = tr.tier(Some("week"), t0, t0).unwrap();
        let avg = tr
            .fetch("pair_rpo_seconds", &f, t0, t0 + 3 * 3600, m1, Cf::Avg)
            .unwrap();
        let max = tr
            .fetch("pair_rpo_seconds", &f, t0, t0 + 3 * 3600, m1, Cf::Max)
            .unwrap();
        // The last minute is still open.
        assert_eq!(avg.series[0].points.len(), 3 * 60 - 1);
        for ((b, a), (_, m)) in avg.series[0].points.iter().zip(&max.series[0].points) {
            let inside: Vec<f64> = raw.series[0]
                .points
                .iter()
                .filter(|(t, _)| *t >= *b && *t < b + 60)
                .map(|p| p.1)
                .collect();
            let mean = inside.iter().sum::<f64>() / inside.len() as f64;
            assert!((mean - a).abs() < 1e-9, "bucket {b}: {mean} vs {a}");
            let mx = inside.iter().cloned().fold(f64::MIN, f64::max);
            assert_eq!(mx, *m);
        }
    }

    #[test]
    fn open_buckets_survive_a_restart() {
        let d = tempfile::tempdir().unwrap();
        let t0 = 1_800_000_000 / 3600 * 3600;
        {
            let tr = Trends::open(d.path(), 10).unwrap();
            for i in 0..3 {
                tr.record(t0 + i * 10, &s(i as f64 + 1.0)).unwrap();
            }
        }
        let tr = Trends::open(d.path(), 10).unwrap();
        for i in 3..6 {
            tr.record(t0 + i * 10, &s(i as f64 + 1.0)).unwrap();
        }
        tr.record(t0 + 60, &s(100.0)).unwrap();
        let m1 = tr.tier(Some("1m"), t0, t0).unwrap();
        let f = [("pair".to_owned(), "a".to_owned())];
        let avg = tr
            .fetch("pair_rpo_seconds", &f, t0, t0 + 120, m1, Cf::Avg)
            .unwrap();
        assert_eq!(avg.series[0].points, vec![(t0, 3.5)]);
    }

    #[test]
    fn another_layout_is_refused() {
        let d = tempfile::tempdir().unwrap();
        drop(Trends::open(d.path(), 10).unwrap());
        let e = Trends::open(d.path(), 5).err().unwrap().to_string();
        assert!(e.contains("another layout"), "{e}");
    }
}
