//! The master target's replica pairs on disk.
//!
//! `DATA/mt/pairs/PAIR/` holds `pair.json` (the pair's volume size, replica
//! path and retention policy), `journal/` (the retention engine's segments
//! and state) and, unless the replica is a device elsewhere, `replica.img`.
//! A pair is opened by one process at a time: `lock` is held with `flock`
//! while it is open, so the CLI cannot write a pair the running MT is applying to.

pub mod service;
pub mod tasks;

use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};

use crate::engine::journal::policy::RetentionPolicy;
use crate::engine::journal::storage::FsStorage;
use crate::engine::journal::{Journal, JournalOptions};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PairConfig {
    /// Pair name (letters, digits, `-`, `_`, `.`).
    pub pair: String,
    pub volume_size: u64,
    /// The replica volume: a regular file or a block device.
    pub replica: PathBuf,
    pub policy: RetentionPolicy,
    pub created_ms: u64,
    /// The replication pair this replica belongs to (absent for pairs made
    /// with `tern mt pair-create`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uuid: Option<String>,
    /// Made without preallocating the replica (`mt.preallocate_replica =
    /// false`): opening it never allocates it either.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub thin: bool,
}

pub fn pairs_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("mt").join("pairs")
}

pub use crate::engine::control::valid_name;

/// An open pair: its config, journal, and the lock that makes it ours.
pub struct ReplicaPair {
    pub config: PairConfig,
    pub dir: PathBuf,
    pub journal: Arc<Journal>,
    _lock: std::fs::File,
}

fn lock(dir: &Path, pair: &str) -> anyhow::Result<std::fs::File> {
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join("lock"))
        .with_context(|| format!("pair {pair}: cannot open its lock file"))?;
    // SAFETY: flock on a valid open descriptor.
    let r = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if r != 0 {
        return Err(PairBusy(pair.to_owned()).into());
    }
    Ok(f)
}

/// The pair's lock is held by another process (the running MT, an open
/// vsnap or image export).
#[derive(Debug)]
pub struct PairBusy(pub String);

impl std::fmt::Display for PairBusy {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(
            f,
            "pair {} is in use by another process (the running MT?); stop it or go through the CX",
            self.0
        )
    }
}

impl std::error::Error for PairBusy {}

impl ReplicaPair {
    pub fn create(
        data_dir: &Path,
        pair: &str,
        volume_size: u64,
        replica: Option<PathBuf>,
        policy: RetentionPolicy,
    ) -> anyhow::Result<ReplicaPair> {
        Self::create_with(
            data_dir,
            pair,
            volume_size,
            replica,
            policy,
            JournalOptions::default(),
        )
    }

    /// [`ReplicaPair::create`] with journal options of the caller's.
    pub fn create_with(
        data_dir: &Path,
        pair: &str,
        volume_size: u64,
        replica: Option<PathBuf>,
        policy: RetentionPolicy,
        opts: JournalOptions,
    ) -> anyhow::Result<ReplicaPair> {
        if !valid_name(pair) {
            bail!("pair name `{pair}` must be 1-64 letters, digits, `-`, `_` or `.`");
        }
        let dir = pairs_dir(data_dir).join(pair);
        if dir.join("pair.json").exists() {
            bail!("pair {pair} already exists in {}", dir.display());
        }
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        let l = lock(&dir, pair)?;
        let replica = replica.unwrap_or_else(|| dir.join("replica.img"));
        let thin = !opts.preallocate;
        let journal = Journal::create(
            Arc::new(FsStorage),
            &dir.join("journal"),
            &replica,
            volume_size,
            opts,
        )
        .with_context(|| format!("pair {pair}"))?;
        let config = PairConfig {
            pair: pair.to_owned(),
            volume_size,
            replica,
            policy,
            created_ms: crate::util::now_ms(),
            uuid: None,
            thin,
        };
        crate::engine::fsutil::write_durable(
            &dir.join("pair.json"),
            &serde_json::to_vec_pretty(&config)?,
            0o644,
        )?;
        Ok(ReplicaPair {
            config,
            dir,
            journal: Arc::new(journal),
            _lock: l,
        })
    }

    pub fn open(data_dir: &Path, pair: &str) -> anyhow::Result<ReplicaPair> {
        let dir = pairs_dir(data_dir).join(pair);
        let cfg_path = dir.join("pair.json");
        if !valid_name(pair) || !cfg_path.exists() {
            bail!(
                "no pair `{pair}` on this MT ({}); `tern mt pairs --data {}` lists them",
                pairs_dir(data_dir).display(),
                data_dir.display()
            );
        }
        let l = lock(&dir, pair)?;
        // Overlays of vsnaps whose process died: nobody else can hold them now.
        for e in std::fs::read_dir(&dir)?.flatten() {
            let n = e.file_name();
            let n = n.to_string_lossy();
            if n.starts_with("vsnap-") && n.ends_with(".overlay") {
                let _ = std::fs::remove_file(e.path());
            }
        }
        let config: PairConfig = serde_json::from_slice(&std::fs::read(&cfg_path)?)
            .with_context(|| format!("{}", cfg_path.display()))?;
        let journal = Journal::open(
            Arc::new(FsStorage),
            &dir.join("journal"),
            &config.replica,
            JournalOptions {
                preallocate: !config.thin,
                ..Default::default()
            },
        )
        .with_context(|| format!("pair {pair}"))?;
        Ok(ReplicaPair {
            config,
            dir,
            journal: Arc::new(journal),
            _lock: l,
        })
    }

    /// Every pair directory under `data_dir`, by name, each with its
    /// configuration or why it cannot be read: one bad `pair.json` is that
    /// pair's error, never a failure to list the others.
    pub fn list(data_dir: &Path) -> std::io::Result<Vec<(String, Result<PairConfig, String>)>> {
        let d = pairs_dir(data_dir);
        let mut v = Vec::new();
        if !d.exists() {
            return Ok(v);
        }
        for e in std::fs::read_dir(&d)? {
            let e = e?;
            let name = e.file_name().to_string_lossy().into_owned();
            let p = e.path().join("pair.json");
            if !p.exists() {
                continue;
            }
            let cfg = std::fs::read(&p)
                .map_err(|e| format!("cannot read {}: {e}", p.display()))
                .and_then(|b| {
                    serde_json::from_slice::<PairConfig>(&b)
                        .map_err(|e| format!("{} is not a pair configuration: {e}", p.display()))
                });
            v.push((name, cfg));
        }
        v.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(v)
    }
}

/// The MT's background pruner: every `interval`, open each pair in turn,
/// enforce its retention policy, and let it go. A pair held by another process
/// (an open vsnap, an image export) is skipped until the next pass, which is
/// also what keeps its pinned point alive.
pub async fn pruner(
    data_dir: PathBuf,
    open: OpenPairs,
    errors: PruneErrors,
    interval: std::time::Duration,
    keep_free: Option<u64>,
    mut shutdown: crate::engine::shutdown::Shutdown,
) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.wait() => break,
        }
        let d = data_dir.clone();
        let (o, errs) = (open.clone(), errors.clone());
        // Disk work off the reactor; one pass at a time.
        let r = tokio::task::spawn_blocking(move || prune_pass(&d, &o, &errs, keep_free)).await;
        if let Ok(Err(e)) = r {
            tracing::warn!(error = %crate::util::error_chain(&e), "retention pruning pass failed");
        }
    }
    tracing::info!("retention pruner stopped");
}

/// Pairs this process holds open (the replication service's), by name.
pub type OpenPairs = Arc<std::sync::Mutex<std::collections::HashMap<String, Arc<ReplicaPair>>>>;

/// Why the pruner could not enforce a pair's policy on its last pass, by
/// pair name; cleared when a pass succeeds. The MT reports it as the pair's
/// error, so it becomes that pair's alert and no other's.
pub type PruneErrors = Arc<std::sync::Mutex<std::collections::HashMap<String, String>>>;

/// One pass over every pair; returns how many pairs were pruned. Pairs in
/// `open` are pruned through their open handle, others are opened (and
/// skipped if another process holds them). A journal that opened read-only
/// on a full disk is offered the chance to resume first. A pair that fails
/// (unreadable configuration, failed pruning) is recorded in `errors` and
/// the pass goes on to the next.
pub fn prune_pass(
    data_dir: &Path,
    open: &OpenPairs,
    errors: &PruneErrors,
    keep_free: Option<u64>,
) -> anyhow::Result<usize> {
    let mut n = 0;
    let listed = ReplicaPair::list(data_dir)
        .with_context(|| format!("cannot list {}", pairs_dir(data_dir).display()))?;
    let names: std::collections::HashSet<&String> = listed.iter().map(|(n, _)| n).collect();
    errors.lock().unwrap().retain(|k, _| names.contains(k));
    for (name, cfg) in &listed {
        let set_error = |e: Option<String>| {
            let mut errs = errors.lock().unwrap();
            match e {
                Some(e) => {
                    if errs.get(name) != Some(&e) {
                        tracing::warn!(pair = %name, error = %e, "retention pruning cannot run for this pair");
                    }
                    errs.insert(name.clone(), e);
                }
                None => {
                    errs.remove(name);
                }
            }
        };
        let held = open.lock().unwrap().get(name).cloned();
        let p = match held {
            Some(p) => p,
            None => {
                if let Err(e) = cfg {
                    set_error(Some(e.clone()));
                    continue;
                }
                match ReplicaPair::open(data_dir, name) {
                    Ok(p) => {
                        p.journal
                            .set_space_limit(p.config.policy.space_limit(keep_free));
                        Arc::new(p)
                    }
                    Err(e) if e.is::<PairBusy>() => {
                        tracing::debug!(pair = %name, error = %e, "pair busy; pruning it next pass");
                        continue;
                    }
                    Err(e) => {
                        set_error(Some(format!(
                            "cannot open for pruning: {}",
                            crate::util::error_chain(&e)
                        )));
                        continue;
                    }
                }
            }
        };
        match p.journal.try_resume() {
            Ok(true) => {}
            Ok(false) => {
                tracing::debug!(pair = %name, "journal still read-only (retention disk full)");
                continue;
            }
            Err(e) => {
                set_error(Some(format!("cannot resume the journal: {e}")));
                continue;
            }
        }
        let before = p.journal.window().0;
        let policy = p.config.policy.clone();
        let held = match crate::engine::journal::policy::prune_all(
            &p.journal,
            &policy,
            crate::util::now_ms() * 1000,
        ) {
            Ok(h) => h,
            Err(e) => {
                set_error(Some(format!("retention pruning failed: {e}")));
                continue;
            }
        };
        set_error(None);
        let after = p.journal.window().0;
        if after != before {
            tracing::info!(pair = %name, oldest_seq = after.seq, "retention pruned");
            n += 1;
        }
        if let Some(pin) = held {
            tracing::info!(pair = %name, pinned = pin, "retention pruning held by an open snapshot");
        }
    }
    Ok(n)
}

/// Write the image of `pin` to `to` (sparse for regular files); `progress`
/// is called with (bytes done, total) after every 4 MiB, and an error it
/// returns (a cancel) stops the work. Returns the image's BLAKE3.
pub fn write_image(
    pin: &crate::engine::journal::Pin,
    to: &Path,
    mut progress: impl FnMut(u64, u64) -> anyhow::Result<()>,
) -> anyhow::Result<blake3::Hash> {
    let size = pin.journal().volume_size();
    let out = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(to)
        .with_context(|| format!("cannot open {}", to.display()))?;
    let is_file = out.metadata()?.file_type().is_file();
    if is_file {
        // Truncate then extend: all holes, so zero runs need not be written.
        out.set_len(0)?;
        out.set_len(size)?;
    } else {
        use std::io::{Seek, SeekFrom};
        let dev = (&out).seek(SeekFrom::End(0))?;
        if dev < size {
            bail!(
                "{} holds {dev} bytes; the volume needs {size}",
                to.display()
            );
        }
    }
    let h = read_image(pin, |off, data| {
        if !(is_file && data.iter().all(|b| *b == 0)) {
            std::os::unix::fs::FileExt::write_all_at(&out, data, off)?;
        }
        progress(off + data.len() as u64, size)
    })?;
    out.sync_all()?;
    Ok(h)
}

/// BLAKE3 of the image of `pin`, without writing it anywhere; `progress`
/// as for [`write_image`] (an error from it stops the work).
pub fn hash_image(
    pin: &crate::engine::journal::Pin,
    mut progress: impl FnMut(u64, u64) -> anyhow::Result<()>,
) -> anyhow::Result<blake3::Hash> {
    let size = pin.journal().volume_size();
    read_image(pin, |off, data| progress(off + data.len() as u64, size))
}

/// Read the image of `pin` in 4 MiB pieces, handing each to `each`; returns its BLAKE3.
fn read_image(
    pin: &crate::engine::journal::Pin,
    mut each: impl FnMut(u64, &[u8]) -> anyhow::Result<()>,
) -> anyhow::Result<blake3::Hash> {
    let size = pin.journal().volume_size();
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0u8; 4 << 20];
    let mut off = 0u64;
    while off < size {
        let n = (size - off).min(buf.len() as u64) as usize;
        pin.read_at(off, &mut buf[..n])?;
        hasher.update(&buf[..n]);
        each(off, &buf[..n])?;
        off += n as u64;
    }
    Ok(hasher.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::journal::testkit::Workload;

    /// A pair with two sealed segments of 2023 history: any window prunes it.
    fn pair_with_history(data: &Path, name: &str, policy: &RetentionPolicy) {
        let p = ReplicaPair::create(data, name, 64 << 20, None, policy.clone()).unwrap();
        let w = Workload::new(7, 64 << 20);
        let mut i = 0;
        while p.journal.stats().segments.len() < 3 {
            p.journal.apply(&w.chunk(i)).unwrap();
            i += 1;
        }
    }

    #[test]
    fn one_broken_pair_does_not_stop_pruning_the_others() {
        let d = tempfile::tempdir().unwrap();
        let policy = RetentionPolicy {
            window: Some(std::time::Duration::from_secs(86400)),
            ..Default::default()
        };
        for name in ["a", "b", "c"] {
            pair_with_history(d.path(), name, &policy);
        }
        let b = pairs_dir(d.path()).join("b/pair.json");
        let good = std::fs::read(&b).unwrap();
        std::fs::write(&b, b"{ not json").unwrap();
        let (open, errors) = (OpenPairs::default(), PruneErrors::default());
        // "b" sorts between the two healthy pairs: both are still pruned.
        assert_eq!(prune_pass(d.path(), &open, &errors, None).unwrap(), 2);
        let errs = errors.lock().unwrap().clone();
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert!(errs["b"].contains("not a pair configuration"), "{errs:?}");
        let listed = ReplicaPair::list(d.path()).unwrap();
        assert_eq!(listed.len(), 3);
        assert!(listed[1].1.is_err() && listed[0].1.is_ok() && listed[2].1.is_ok());
        // Repaired, it is pruned on the next pass and its error is gone.
        std::fs::write(&b, good).unwrap();
        assert_eq!(prune_pass(d.path(), &open, &errors, None).unwrap(), 1);
        assert!(errors.lock().unwrap().is_empty());
    }
}
