//! The source agent: serves protected volumes (NBD, FUSE), captures every
//! write into the pair's ordered stream, and moves the stream to the PS.
//!
//! Per pair three things run: the capture (in the NBD/FUSE handlers, see
//! [`stream`]), the sender (chunks to the PS, up to [`SEND_WINDOW`] in
//! flight, their outcomes taken in order, each acknowledged before its
//! records leave memory) and the resync driver (step I copies, bitmap
//! drains). The sync loop of the node hands us pairs, volumes and bookmark
//! commands; [`AgentRole::report`] tells the CX how each pair is doing.
//!
//! Invariants: a chunk leaves the buffer only after the PS acknowledged it
//! (the PS acknowledges only what is durable on it or on the MT); every
//! write the agent acknowledges is in the pair's stream or dirty bitmap and
//! inside an extent of the volume's durable [`activity`] log, even while no
//! pair exists yet; after a restart the pair takes the clean-stop bitmap
//! plus the logged extents, after a crash the logged extents (a drain that
//! starts at once), and with no trustworthy log it is "resync required".
//! A volume replaced under a pair (its spec changed) is released by the
//! pair first, with the same clean stop as the process's.

pub mod activity;
pub mod fuse;
pub mod state;
pub mod stream;

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::sync::watch;

use crate::config::Config;
use crate::engine::chunk::{self, Codec, GIVE_UP_AFTER};
use crate::engine::control::{
    AgentPairStatus, Capture, Command, CommandResult, Compression, NodeReport, PairSpec,
    SyncResponse, VolumeSpec, VolumeStatus,
};
use crate::engine::journal::format::BookmarkKind;
use crate::engine::shutdown::Shutdown;
use crate::engine::transport;
use stream::{RESYNC_BLOCK, Step, Stream, Volume};

struct VolumeRt {
    spec: VolumeSpec,
    vol: Arc<Volume>,
    export: Option<String>,
    /// Stops this volume's NBD server / FUSE mount.
    stop: Option<crate::engine::shutdown::ShutdownTrigger>,
}

struct PairRt {
    spec_tx: watch::Sender<PairSpec>,
    stop: crate::engine::shutdown::ShutdownTrigger,
    volume: String,
}

pub struct AgentRole {
    cfg: Config,
    host_id: String,
    client: reqwest::Client,
    volumes: Mutex<HashMap<String, VolumeRt>>,
    pairs: Mutex<HashMap<String, PairRt>>,
    results: Mutex<Vec<CommandResult>>,
    /// Commands run (or running: `None`) since start, by id, while the CX
    /// still lists them: none runs twice.
    commands_seen: Mutex<HashMap<String, Option<CommandResult>>>,
    /// One filesystem freeze at a time (a second FIFREEZE would fail).
    freeze_lock: Mutex<()>,
    /// Asks the node's sync loop to report now (a command finished).
    pub report_now: Arc<tokio::sync::Notify>,
    shutdown: Shutdown,
}

fn state_dir(cfg: &Config) -> PathBuf {
    cfg.data_dir.join("agent").join("pairs")
}

fn activity_path(cfg: &Config, volume: &str) -> PathBuf {
    cfg.data_dir
        .join("agent")
        .join("volumes")
        .join(format!("{volume}.al"))
}

/// How often each pair's activity log drops the extents that are safe at
/// the PS (and `PAIR.state` takes the resync's progress).
const ACTIVITY_COMPACT: Duration = Duration::from_secs(2);

impl AgentRole {
    pub fn new(
        cfg: Config,
        host_id: String,
        client: reqwest::Client,
        shutdown: Shutdown,
    ) -> Arc<AgentRole> {
        let a = Arc::new(AgentRole {
            cfg,
            host_id,
            client,
            volumes: Mutex::default(),
            pairs: Mutex::default(),
            results: Mutex::default(),
            commands_seen: Mutex::default(),
            freeze_lock: Mutex::default(),
            report_now: Arc::new(tokio::sync::Notify::new()),
            shutdown,
        });
        // Volumes from the config file are served at once, before any pair.
        let specs = a.cfg.agent.volumes.clone();
        a.ensure_volumes(&specs);
        if a.cfg.roles == [crate::config::Role::Agent] {
            let me = a.clone();
            tokio::spawn(async move {
                let mut sd = me.shutdown.clone();
                loop {
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_millis(100)) => me.trim_memory(),
                        _ = sd.wait() => break,
                    }
                }
            });
        }
        a
    }

    fn ensure_volumes(&self, specs: &[VolumeSpec]) {
        // A volume whose spec changed is opened anew; a pair on the old one
        // stops first, as at a clean stop, and starts again on the new one
        // (the next `apply`): no write reaches either uncaptured.
        let changed: Vec<(String, bool)> = {
            let vols = self.volumes.lock().unwrap();
            specs
                .iter()
                .filter_map(|s| {
                    let old = vols.get(&s.name).filter(|v| &v.spec != s)?;
                    Some((s.name.clone(), old.spec.path != s.path))
                })
                .collect()
        };
        for (volume, other_device) in changed {
            self.release_pairs_on(&volume, other_device);
        }
        let todo: Vec<&VolumeSpec> = {
            let mut vols = self.volumes.lock().unwrap();
            let mut todo = Vec::new();
            for spec in specs {
                if vols.get(&spec.name).is_some_and(|v| &v.spec == spec) {
                    continue;
                }
                if let Some(old) = vols.remove(&spec.name)
                    && let Some(t) = old.stop
                {
                    t.fire();
                }
                todo.push(spec);
            }
            todo
        };
        // Opening reads the activity log, binds the NBD port and mounts
        // FUSE: outside the lock every report and command takes. (Only the
        // one configuration thread opens volumes.)
        for spec in todo {
            match self.open_volume(spec) {
                Ok(rt) => {
                    tracing::info!(volume = %spec.name, path = %spec.path.display(), capture = ?spec.capture, export = ?rt.export, size = rt.vol.size, "volume protected");
                    self.volumes.lock().unwrap().insert(spec.name.clone(), rt);
                }
                Err(e) => {
                    tracing::error!(volume = %spec.name, error = %format!("{e:#}"), "cannot serve volume");
                }
            }
        }
    }

    fn open_volume(&self, spec: &VolumeSpec) -> anyhow::Result<VolumeRt> {
        let vol = Arc::new(Volume::open(
            &spec.name,
            &spec.path,
            spec.size,
            &activity_path(&self.cfg, &spec.name),
        )?);
        match &vol.activity.lock().unwrap().found {
            activity::Found::Damaged(e) => {
                tracing::error!(volume = %spec.name, error = %e, "activity log unreadable: a pair on this volume that did not stop cleanly needs a full resync")
            }
            activity::Found::Created | activity::Found::Loaded => {}
        }
        let trig = crate::engine::shutdown::ShutdownTrigger::new();
        let export = match spec.capture {
            Capture::Nbd => {
                let listen = spec
                    .listen
                    .clone()
                    .unwrap_or_else(|| "127.0.0.1:10809".into());
                let std_l = std::net::TcpListener::bind(&listen).with_context(|| {
                    format!("volume {}: cannot listen on {listen} for NBD", spec.name)
                })?;
                std_l.set_nonblocking(true)?;
                let l = tokio::net::TcpListener::from_std(std_l)?;
                let addr = l.local_addr()?;
                let mut m: std::collections::BTreeMap<String, Arc<dyn crate::engine::nbd::Export>> =
                    Default::default();
                m.insert(spec.name.clone(), Arc::new(CaptureExport(vol.clone())));
                let sd = self.shutdown.clone();
                let own = trig.subscribe();
                tokio::spawn(async move {
                    let both = crate::engine::shutdown::either(sd, own);
                    crate::engine::nbd::serve(l, Arc::new(m), both).await
                });
                Some(format!("nbd://{addr}/{}", spec.name))
            }
            Capture::Fuse => {
                let mount = spec.mount.clone().ok_or_else(|| {
                    anyhow::anyhow!(
                        "volume {}: capture fuse needs `mount` (a directory)",
                        spec.name
                    )
                })?;
                let file =
                    fuse::mount(vol.clone(), &mount, trig.subscribe(), self.shutdown.clone())?;
                Some(file.display().to_string())
            }
            Capture::Scan => None,
        };
        Ok(VolumeRt {
            spec: spec.clone(),
            vol,
            export,
            stop: Some(trig),
        })
    }

    /// Take the CX's view: volumes, pairs we are the source of, commands.
    pub fn apply(self: &Arc<Self>, resp: &SyncResponse) {
        let mut specs = self.cfg.agent.volumes.clone();
        for v in &resp.volumes {
            if !specs.iter().any(|s| s.name == v.name) {
                specs.push(v.clone());
            }
        }
        self.ensure_volumes(&specs);
        let mine: Vec<&PairSpec> = resp
            .pairs
            .iter()
            .filter(|p| p.source_host == self.host_id)
            .collect();
        let mut pairs = self.pairs.lock().unwrap();
        pairs.retain(|name, rt| {
            let keep = mine.iter().any(|p| &p.name == name);
            if !keep {
                tracing::info!(pair = %name, "pair removed: capture stopped");
                rt.stop.fire();
                if let Some(v) = self.volumes.lock().unwrap().get(&rt.volume) {
                    *v.vol.stream.lock().unwrap() = None;
                }
                let _ = std::fs::remove_file(state_dir(&self.cfg).join(format!("{name}.state")));
            }
            keep
        });
        for p in mine {
            if let Some(rt) = pairs.get(&p.name) {
                rt.spec_tx.send_if_modified(|old| {
                    let ch = old != p;
                    *old = p.clone();
                    ch
                });
                continue;
            }
            let vol = self
                .volumes
                .lock()
                .unwrap()
                .get(&p.source_volume)
                .map(|v| (v.vol.clone(), v.spec.capture));
            let Some((vol, capture)) = vol else {
                tracing::warn!(pair = %p.name, volume = %p.source_volume, "pair's volume is not served here yet");
                continue;
            };
            match self.start_pair(p.clone(), vol, capture) {
                Ok(rt) => {
                    pairs.insert(p.name.clone(), rt);
                }
                Err(e) => {
                    tracing::error!(pair = %p.name, error = %format!("{e:#}"), "cannot start pair")
                }
            }
        }
        drop(pairs);
        // The CX hands out every pending command each time until it has
        // its result: run each id once, and say its result again if the
        // CX still asks (the report that carried it was lost).
        let mut seen = self.commands_seen.lock().unwrap();
        seen.retain(|id, r| r.is_none() || resp.commands.iter().any(|c| &c.id == id));
        for c in &resp.commands {
            match seen.get(&c.id) {
                None => {
                    seen.insert(c.id.clone(), None);
                    let me = self.clone();
                    let c = c.clone();
                    tokio::task::spawn_blocking(move || {
                        let r = me.run_command(&c);
                        me.commands_seen
                            .lock()
                            .unwrap()
                            .insert(c.id.clone(), Some(r.clone()));
                        me.results.lock().unwrap().push(r);
                        me.report_now.notify_one();
                    });
                }
                Some(None) => {} // still running
                Some(Some(r)) => {
                    let mut q = self.results.lock().unwrap();
                    if !q.iter().any(|x| x.id == r.id) {
                        q.push(r.clone());
                    }
                }
            }
        }
    }

    fn start_pair(
        self: &Arc<Self>,
        spec: PairSpec,
        vol: Arc<Volume>,
        capture: Capture,
    ) -> anyhow::Result<PairRt> {
        let dir = state_dir(&self.cfg);
        std::fs::create_dir_all(&dir)?;
        let path = dir.join(format!("{}.state", spec.name));
        let (cap, _) = buffer_split(&self.cfg.agent);
        let loaded = state::load(&path, Some(&spec.uuid_bytes()), vol.size);
        // Under the volume's lock from here to the stream's installation:
        // every write before it is in the activity log, every write after
        // it is captured.
        let mut g = vol.stream.lock().unwrap();
        if vol.closed.load(std::sync::atomic::Ordering::Relaxed) {
            anyhow::bail!("volume {} is closing", vol.name);
        }
        let mut al = vol.activity.lock().unwrap();
        let mut st = Stream::new(&spec.name, vol.size, cap);
        let logged = al.as_bitmap();
        let al_state = al.found.clone();
        let resync_gen = match loaded {
            Ok(Some(s)) if s.resync_required => {
                st.resync_required = true;
                tracing::warn!(pair = %spec.name, "pair still needs the full resync it needed before the restart (auto resync after {:?})", self.cfg.agent.auto_resync_delay.0);
                s.resync_gen
            }
            Ok(Some(s)) if s.clean && !matches!(al_state, activity::Found::Damaged(_)) => {
                st.bitmap = s.bitmap;
                // Writes made since (no pair stream yet) are in the log.
                st.bitmap.union(&logged);
                st.step1 = s.step1;
                st.resyncing = s.resyncing;
                tracing::info!(pair = %spec.name, dirty_blocks = st.bitmap.count(), logged_extents = al.count(), step1 = ?st.step1, "pair resumed after a clean stop");
                s.resync_gen
            }
            Ok(Some(s)) if al_state == activity::Found::Loaded => {
                // A crash: the buffer is gone, but every extent it (or the
                // bitmap) touched is logged. Drain those now.
                st.bitmap = logged;
                st.step1 = s.step1;
                st.resyncing = s.resyncing;
                st.last_inconsistent = true;
                tracing::warn!(pair = %spec.name, extents = al.count(), bytes = st.bitmap.count() * stream::BITMAP_BLOCK, step1 = ?st.step1, "the agent did not stop cleanly: the extents in the activity log are resynced now (nothing else can differ)");
                crate::engine::control::push_event(
                    &mut st.events,
                    crate::engine::control::PairEventKind::ActivityLogResync {
                        extents: al.count(),
                        bytes: st.bitmap.count() * stream::BITMAP_BLOCK,
                    },
                );
                s.resync_gen
            }
            Ok(Some(s)) => {
                st.resync_required = true;
                let why = match &al_state {
                    activity::Found::Damaged(e) => format!("the activity log is unreadable ({e})"),
                    _ => "no activity log was kept (an older agent)".into(),
                };
                tracing::warn!(pair = %spec.name, "the agent did not stop cleanly and {why}: writes may have been lost in memory; pair needs a full resync (auto resync after {:?})", self.cfg.agent.auto_resync_delay.0);
                s.resync_gen
            }
            Ok(None) => {
                tracing::info!(pair = %spec.name, "new pair: initial sync (step I) starts");
                st.start_resync();
                spec.resync_gen
            }
            Err(e) => {
                tracing::warn!(pair = %spec.name, error = %e, "agent pair state unreadable; resync required");
                st.resync_required = true;
                spec.resync_gen
            }
        };
        if !st.bitmap.is_empty() {
            st.dirty_since_us = Some(crate::util::now_ms() * 1000);
        }
        if st.step1.is_some() {
            st.resume_step1();
        }
        // Every pending block is in the log before the state on disk says
        // "unclean" (a clean-stop bitmap's blocks are not, yet).
        let mut pending = al.empty_set();
        st.pending_extents(&mut pending);
        al.add(&pending)?;
        let key = st.persist_key(resync_gen);
        state::save(
            &path,
            &state::PairState {
                uuid: spec.uuid_bytes(),
                clean: false,
                resync_gen,
                step1: st.step1,
                resyncing: st.resyncing,
                resync_required: st.resync_required,
                bitmap: stream::Bitmap::new(vol.size),
            },
            vol.size,
        )?;
        st.persisted = Some(key);
        // The state now says what the log's verdict meant: the log's
        // history is complete from here.
        al.settle()?;
        st.uuid = spec.uuid_bytes();
        drop(al);
        st.mode_paused = spec.paused;
        st.scan = capture == Capture::Scan;
        *g = Some(st);
        drop(g);
        let (spec_tx, spec_rx) = watch::channel(spec.clone());
        let stop = crate::engine::shutdown::ShutdownTrigger::new();
        let ctx = PairCtx {
            agent: self.clone(),
            vol,
            spec: spec_rx,
            state_path: path,
            resync_gen: resync_gen.into(),
            since_unclean: Instant::now(),
            session: 0.into(),
            scan: capture == Capture::Scan,
            last_scan: Mutex::new(Instant::now()),
            last_periodic: Mutex::new(Instant::now()),
        };
        let sd = crate::engine::shutdown::either(self.shutdown.clone(), stop.subscribe());
        let ctx = Arc::new(ctx);
        tokio::spawn(ctx.clone().resync_driver(sd.clone()));
        tokio::spawn(ctx.clone().compactor(sd.clone()));
        tokio::spawn(ctx.run(sd));
        Ok(PairRt {
            spec_tx,
            stop,
            volume: spec.source_volume,
        })
    }

    fn run_command(&self, c: &Command) -> CommandResult {
        let fail = |e: String| CommandResult {
            id: c.id.clone(),
            ok: false,
            seq: None,
            error: Some(e),
        };
        let volume = match self.pairs.lock().unwrap().get(&c.pair) {
            Some(p) => p.volume.clone(),
            None => return fail(format!("pair {} is not active on this agent", c.pair)),
        };
        let (vol, spec) = match self.volumes.lock().unwrap().get(&volume) {
            Some(v) => (v.vol.clone(), v.spec.clone()),
            None => return fail(format!("volume {volume} is not served")),
        };
        let r = match c.kind {
            BookmarkKind::User => vol.bookmark(c.kind, &c.bookmark),
            BookmarkKind::Fs => match &spec.fs_mount {
                None => Err(format!(
                    "volume {volume} has no `fs_mount`: the agent does not know which filesystem to freeze"
                )),
                Some(m) => {
                    let _one = self.freeze_lock.lock().unwrap();
                    freeze_and(m, || vol.bookmark(c.kind, &c.bookmark))
                }
            },
            BookmarkKind::App => {
                let run = |cmd: &Option<String>, what: &str| -> Result<(), String> {
                    if let Some(cmd) = cmd {
                        let o = std::process::Command::new("sh")
                            .arg("-c")
                            .arg(cmd)
                            .output()
                            .map_err(|e| format!("{what} hook: {e}"))?;
                        if !o.status.success() {
                            return Err(format!(
                                "{what} hook `{cmd}` failed ({}): {}",
                                o.status,
                                String::from_utf8_lossy(&o.stderr).trim()
                            ));
                        }
                    }
                    Ok(())
                };
                run(&spec.app_pre, "pre").and_then(|_| {
                    let r = vol.bookmark(c.kind, &c.bookmark);
                    run(&spec.app_post, "post").and(r)
                })
            }
        };
        match r {
            Ok(seq) => {
                tracing::info!(pair = %c.pair, bookmark = %c.bookmark, kind = %c.kind, seq, "bookmark inserted");
                CommandResult {
                    id: c.id.clone(),
                    ok: true,
                    seq: Some(seq),
                    error: None,
                }
            }
            Err(e) => {
                tracing::warn!(pair = %c.pair, bookmark = %c.bookmark, error = %e, "bookmark failed");
                fail(e)
            }
        }
    }

    /// Keep resident memory near the buffers' caps: freed capture buffers
    /// go back to the kernel when the process holds more than the caps plus
    /// [`MEMORY_MARGIN`]. Run every 100 ms in a process that is only an
    /// agent (with other roles in it, the caps say nothing of its size).
    fn trim_memory(&self) {
        let (records, chunk) = buffer_split(&self.cfg.agent);
        let per_pair = records + (SEND_WINDOW as u64 + 1) * chunk;
        let streams = self
            .pair_volumes()
            .iter()
            .filter(|(_, v)| v.stream.lock().unwrap().is_some())
            .count() as u64;
        crate::engine::memory::trim_above(streams * per_pair + MEMORY_MARGIN);
    }

    /// Each active pair with its volume.
    fn pair_volumes(&self) -> Vec<(String, Arc<Volume>)> {
        let pairs: Vec<(String, String)> = self
            .pairs
            .lock()
            .unwrap()
            .iter()
            .map(|(n, p)| (n.clone(), p.volume.clone()))
            .collect();
        let vols = self.volumes.lock().unwrap();
        pairs
            .into_iter()
            .filter_map(|(n, v)| vols.get(&v).map(|v| (n, v.vol.clone())))
            .collect()
    }

    /// Results a failed sync did not deliver go out with the next one.
    pub fn requeue_results(&self, mut results: Vec<CommandResult>) {
        let mut r = self.results.lock().unwrap();
        results.append(&mut r);
        *r = results;
    }

    pub fn report(&self, r: &mut NodeReport) {
        for v in self.volumes.lock().unwrap().values() {
            r.volumes.push(VolumeStatus {
                name: v.spec.name.clone(),
                path: v.spec.path.clone(),
                capture: v.spec.capture,
                size: v.vol.size,
                export: v.export.clone(),
                error: None,
            });
        }
        for (name, vol) in self.pair_volumes() {
            let g = vol.stream.lock().unwrap();
            let Some(st) = g.as_ref() else { continue };
            r.agent_pairs.push(AgentPairStatus {
                pair: name,
                mode: st.mode(),
                progress_pct: st
                    .step1
                    .map(|c| c as f64 * 100.0 / vol.size as f64)
                    .unwrap_or(100.0),
                buffered_bytes: st.buffered,
                buffer_cap: st.cap,
                dirty_bytes: st.bitmap.count() * stream::BITMAP_BLOCK,
                oldest_pending_us: st.oldest_pending_us(),
                last_seq: st.next_seq.map(|s| s - 1).unwrap_or(0),
                flow_controlled: st.flow_controlled,
                fast_resync_unmatched_pct: (st.fast_compared > 0).then(|| {
                    (st.fast_compared - st.fast_matched) as f64 * 100.0 / st.fast_compared as f64
                }),
                bytes_captured: st.bytes_captured,
                bytes_sent: st.bytes_sent,
                resyncs: st.resyncs,
                last_step1_s: st.last_step1.map(|d| d.as_secs_f64()),
                error: st.error.clone(),
                events: st.events.iter().cloned().collect(),
            });
        }
        r.results.append(&mut self.results.lock().unwrap());
    }

    /// Clean stop: every pair's unacknowledged data goes into its bitmap,
    /// which is saved with the clean flag.
    pub fn stop(&self) {
        for (name, vol) in self.pair_volumes() {
            self.save_clean(&name, &vol, false);
        }
    }

    /// Stop the pairs on `volume` as at a clean stop (its spec changed);
    /// `other_device`: it now names another file or device, which only a
    /// full resync can compare.
    fn release_pairs_on(&self, volume: &str, other_device: bool) {
        let released: Vec<String> = {
            let mut pairs = self.pairs.lock().unwrap();
            let names: Vec<String> = pairs
                .iter()
                .filter(|(_, p)| p.volume == volume)
                .map(|(n, _)| n.clone())
                .collect();
            for n in &names {
                if let Some(rt) = pairs.remove(n) {
                    rt.stop.fire();
                }
            }
            names
        };
        let vol = self
            .volumes
            .lock()
            .unwrap()
            .get(volume)
            .map(|v| v.vol.clone());
        if let Some(vol) = vol {
            for n in &released {
                tracing::info!(pair = %n, volume, other_device, "volume reconfigured: pair restarts on it");
                self.save_clean(n, &vol, other_device);
            }
            // No write reaches the old volume from here on.
            let _g = vol.stream.lock().unwrap();
            vol.closed.store(true, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// Save pair `name`'s state with every unacknowledged write in its
    /// bitmap (clean, or resync-required with `needs_resync`), then stop
    /// the volume taking writes and empty its activity log (the state now
    /// holds everything pending).
    fn save_clean(&self, name: &str, vol: &Volume, needs_resync: bool) {
        let mut g = vol.stream.lock().unwrap();
        vol.closed.store(true, std::sync::atomic::Ordering::Relaxed);
        // No write from here on; the source's blocks are durable before
        // the state that says which of them the replica lacks.
        if let Err(e) = vol.flush() {
            tracing::error!(pair = %name, error = %e, "cannot flush the volume; the pair state stays unclean");
            return;
        }
        let Some(st) = g.as_mut() else { return };
        let path = state_dir(&self.cfg).join(format!("{name}.state"));
        let Ok(Some(mut ps)) = state::load(&path, None, vol.size) else {
            return;
        };
        if st.resync_required && !needs_resync {
            // Nothing trustworthy to save: the state on disk says
            // resync-required already.
            *g = None;
            return;
        }
        st.spill_buffer_to_bitmap();
        ps.clean = !needs_resync;
        ps.resync_required = needs_resync;
        ps.step1 = st.step1;
        ps.resyncing = st.resyncing;
        ps.bitmap = st.bitmap.clone();
        match state::save(&path, &ps, vol.size) {
            Ok(()) => {
                tracing::info!(pair = %name, dirty_blocks = st.bitmap.count(), "pair state saved (clean stop)");
                if let Err(e) = vol.activity.lock().unwrap().clear() {
                    // Harmless: the next start drains the logged extents too.
                    tracing::warn!(pair = %name, error = %e, "cannot empty the activity log");
                }
            }
            Err(e) => {
                tracing::error!(pair = %name, error = %e, "cannot save pair state; the pair will resync what its activity log holds")
            }
        }
        // No write may slip in after the save.
        *g = None;
    }
}

/// `nbd::Export` over a captured volume.
pub struct CaptureExport(pub Arc<Volume>);

impl crate::engine::nbd::Export for CaptureExport {
    fn size(&self) -> u64 {
        self.0.size
    }
    fn read_only(&self) -> bool {
        false
    }
    fn read(&self, off: u64, buf: &mut [u8]) -> std::io::Result<()> {
        self.0.read(off, buf)
    }
    fn write(&self, off: u64, data: Vec<u8>, fua: bool) -> std::io::Result<()> {
        self.0.write(off, data)?;
        if fua {
            self.0.flush()?;
        }
        Ok(())
    }
    fn flush(&self) -> std::io::Result<()> {
        self.0.flush()
    }
    fn write_zeroes(&self, off: u64, len: u64, fua: bool) -> std::io::Result<()> {
        self.0.write_zeroes(off, len)?;
        if fua {
            self.0.flush()?;
        }
        Ok(())
    }
    fn trim(&self, off: u64, len: u64) -> std::io::Result<()> {
        self.0.write_zeroes(off, len)
    }
}

/// Freeze the filesystem mounted at `mount` (FIFREEZE), run `f`, thaw.
fn freeze_and<T>(
    mount: &std::path::Path,
    f: impl FnOnce() -> Result<T, String>,
) -> Result<T, String> {
    use std::os::fd::AsRawFd;
    const FIFREEZE: libc::c_ulong = 0xC004_5877;
    const FITHAW: libc::c_ulong = 0xC004_5878;
    // FIFREEZE freezes the filesystem holding the path: on a directory that
    // is not (yet) a mount point, that would be the host's own filesystem.
    use std::os::unix::fs::MetadataExt;
    let dev = |p: &std::path::Path| std::fs::metadata(p).map(|m| m.dev());
    match (dev(mount), dev(&mount.join(".."))) {
        (Ok(a), Ok(b)) if a != b => {}
        (Ok(_), Ok(_)) => {
            return Err(format!(
                "{} is not a mount point (is the volume's filesystem mounted?); refusing to freeze the filesystem that holds it",
                mount.display()
            ));
        }
        (Err(e), _) | (_, Err(e)) => return Err(format!("cannot stat {}: {e}", mount.display())),
    }
    let d =
        std::fs::File::open(mount).map_err(|e| format!("cannot open {}: {e}", mount.display()))?;
    // SAFETY: ioctl on an open directory descriptor with an int argument.
    let r = unsafe { libc::ioctl(d.as_raw_fd(), FIFREEZE as _, 0) };
    if r != 0 {
        return Err(format!(
            "cannot freeze {}: {}",
            mount.display(),
            std::io::Error::last_os_error()
        ));
    }
    let out = f();
    // SAFETY: as above.
    let t = unsafe { libc::ioctl(d.as_raw_fd(), FITHAW as _, 0) };
    if t != 0 {
        tracing::error!(mount = %mount.display(), error = %std::io::Error::last_os_error(), "cannot thaw the filesystem; run `fsfreeze -u` by hand");
    }
    out
}

/// Everything one pair's tasks share.
struct PairCtx {
    agent: Arc<AgentRole>,
    vol: Arc<Volume>,
    spec: watch::Receiver<PairSpec>,
    state_path: PathBuf,
    resync_gen: std::sync::atomic::AtomicU64,
    since_unclean: Instant,
    /// The session started by the last cursor call (0: none yet); chunks
    /// carry it, and the PS refuses those of older sessions.
    session: std::sync::atomic::AtomicU64,
    /// Capture `scan`: nothing is tapped; every `agent.scan_interval` a
    /// fast-resync pass compares every block with the MT's and sends the
    /// differing ones.
    scan: bool,
    last_scan: Mutex<Instant>,
    last_periodic: Mutex<Instant>,
}

/// What an agent process may hold beyond its buffers' caps before it hands
/// free memory back: chunks in flight, the runtime, TLS.
const MEMORY_MARGIN: u64 = 16 << 20;

/// Chunks a pair may have in flight to its PS at once.
const SEND_WINDOW: usize = 3;

/// How a pair's `agent.buffer_cap` is shared: (what its buffered records
/// may hold, the largest chunk). A chunk's encoded copy lives beside its
/// records until the PS acknowledges it, so [`SEND_WINDOW`] chunks and one
/// being encoded are taken off the cap first, and records plus chunks in
/// flight never pass it. The chunk is `agent.chunk_max`, at most an eighth
/// of the cap, and at least a resync block; a cap too small for that gives
/// the records two resync blocks, and passes the cap by the chunks.
pub fn buffer_split(cfg: &crate::config::AgentConfig) -> (u64, u64) {
    let cap = cfg.buffer_cap.0;
    let chunk = cfg.chunk_max.0.min(cap / 8).max(RESYNC_BLOCK + 4096);
    let records = cap
        .saturating_sub((SEND_WINDOW as u64 + 1) * chunk)
        .max(2 * RESYNC_BLOCK + 4096);
    (records, chunk)
}

/// Records taken for one chunk, encoded off the reactor.
struct Outgoing {
    uuid: [u8; 16],
    codec: Codec,
    first: u64,
    last: u64,
    raw: u64,
    recs: Vec<chunk::WireRecord>,
}

impl Outgoing {
    fn encode(self) -> Vec<u8> {
        chunk::encode(self.uuid, &self.recs, self.codec)
    }
}

/// A chunk being sent; its outcome is taken in sequence order.
struct InFlight {
    first: u64,
    last: u64,
    raw: u64,
    handle: tokio::task::JoinHandle<SendOutcome>,
}

fn abort_all(inflight: &mut VecDeque<InFlight>) {
    for f in inflight.drain(..) {
        f.handle.abort();
    }
}

enum SendOutcome {
    Acked,
    Throttled,
    Gap(u64),
    /// 400: the PS or the MT refused the chunk itself (damaged, malformed).
    Refused(String),
    Failed(String),
}

/// How often an idle pair checks that the PS still stands where it does.
const IDLE_CHECK: Duration = Duration::from_secs(10);

impl PairCtx {
    fn with_stream<R>(&self, f: impl FnOnce(&mut Stream) -> R) -> Option<R> {
        self.vol.stream.lock().unwrap().as_mut().map(f)
    }

    fn spec(&self) -> PairSpec {
        self.spec.borrow().clone()
    }

    async fn run(self: Arc<Self>, mut sd: Shutdown) {
        let name = self.spec().name;
        let mut spec_rx = self.spec.clone();
        let mut backoff = Duration::from_millis(100);
        let mut last_mode = None;
        let mut inflight: VecDeque<InFlight> = VecDeque::new();
        let mut resession = false;
        let mut refusals = chunk::Refusals::default();
        let mut last_check = Instant::now();
        loop {
            if sd.is_fired() {
                break;
            }
            if let Some((mode, dirty, unmatched)) = self.with_stream(|st| {
                (
                    st.mode(),
                    st.bitmap.count(),
                    (st.fast_compared > 0).then(|| {
                        (st.fast_compared - st.fast_matched) as f64 * 100.0
                            / st.fast_compared as f64
                    }),
                )
            }) && last_mode != Some(mode)
            {
                tracing::info!(pair = %name, mode = ?mode, dirty_blocks = dirty, fast_resync_unmatched_pct = ?unmatched, "pair mode changed");
                self.with_stream(|st| {
                    crate::engine::control::push_event(
                        &mut st.events,
                        crate::engine::control::PairEventKind::Mode { mode },
                    )
                });
                last_mode = Some(mode);
            }
            let spec = self.spec();
            // Pause / resume / resync requests.
            self.with_stream(|st| st.mode_paused = spec.paused);
            if spec.resync_gen > self.resync_gen.load(std::sync::atomic::Ordering::Relaxed) {
                // `PAIR.state` takes the new generation at the next
                // compaction, before the log drops anything.
                self.with_stream(|st| {
                    // Under the lock with the resync's start: a compaction
                    // never saves the new generation without step I.
                    self.resync_gen
                        .store(spec.resync_gen, std::sync::atomic::Ordering::Relaxed);
                    // Buffered records stay: they are in order before the copy.
                    st.bitmap = stream::Bitmap::new(self.vol.size);
                    st.start_resync();
                });
                tracing::info!(pair = %name, "resync requested: step I starts");
            }
            if spec.paused {
                abort_all(&mut inflight);
                tokio::select! {
                    _ = spec_rx.changed() => {}
                    _ = sd.wait() => break,
                }
                continue;
            }
            let Some(ps) = spec.ps_addr.clone() else {
                self.set_error(Some("the PS has not reported its data address yet".into()));
                tokio::select! {
                    _ = spec_rx.changed() => {}
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = sd.wait() => break,
                }
                continue;
            };
            let base = format!("https://{ps}/data/v1/ps/{name}");
            // A session: learn where the PS stands. Again after a gap: the
            // position a later chunk was refused with may predate an earlier
            // chunk that has since been applied; a new session's is exact.
            if resession || self.with_stream(|st| st.next_seq.is_none()) == Some(true) {
                abort_all(&mut inflight);
                match self.cursor(&base).await {
                    Ok(n) => {
                        self.reconcile(n);
                        // A full resync decided there is on disk before
                        // anything else happens.
                        self.save_now().await;
                        resession = false;
                    }
                    Err(e) => {
                        self.set_error(Some(format!("cannot reach the PS at {ps}: {e}")));
                        self.sleep(&mut sd, &mut backoff).await;
                        continue;
                    }
                }
            }
            self.maybe_auto_resync();
            self.maybe_scan();
            self.maybe_periodic_bookmark();
            // Send what is buffered: up to SEND_WINDOW chunks in flight, so
            // the agent, the PS and the MT work on different chunks at once.
            // The PS applies them in order; outcomes are taken in order.
            while inflight.len() < SEND_WINDOW {
                let after = inflight.back().map(|f| f.last);
                let Some(c) = self.take_chunk(after) else {
                    break;
                };
                let me = self.clone();
                let base = base.clone();
                let session = self.session.load(std::sync::atomic::Ordering::Relaxed);
                let (first, last, raw) = (c.first, c.last, c.raw);
                let handle = tokio::spawn(async move {
                    let bytes = match tokio::task::spawn_blocking(move || c.encode()).await {
                        Ok(b) => b,
                        Err(e) => return SendOutcome::Failed(e.to_string()),
                    };
                    me.send(&base, bytes, first, session).await
                });
                inflight.push_back(InFlight {
                    first,
                    last,
                    raw,
                    handle,
                });
            }
            let room = inflight.len() < SEND_WINDOW;
            let Some(front) = inflight.front_mut() else {
                // Idle. Every IDLE_CHECK, make sure the PS still stands where
                // we do: a PS that gave up its cache (a poison chunk, a lost
                // disk) no longer has what it acknowledged, and an idle
                // agent would otherwise never learn it.
                if last_check.elapsed() >= IDLE_CHECK {
                    last_check = Instant::now();
                    if let Ok(n) = self.cursor_at(&base, None).await
                        && self.with_stream(|st| st.buffer.is_empty() && st.next_seq != Some(n))
                            == Some(true)
                    {
                        tracing::warn!(pair = %name, ps_next = n, "the PS no longer holds what it acknowledged; starting a new session");
                        resession = true;
                        continue;
                    }
                }
                // Wait for a write, a spec change or a tick.
                tokio::select! {
                    _ = self.vol.notify.notified() => {}
                    _ = spec_rx.changed() => {}
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = sd.wait() => break,
                }
                continue;
            };
            let outcome = tokio::select! {
                r = &mut front.handle => r.unwrap_or_else(|e| SendOutcome::Failed(e.to_string())),
                _ = self.vol.notify.notified(), if room => continue,
                _ = spec_rx.changed() => continue,
                _ = sd.wait() => break,
            };
            let done = inflight.pop_front().expect("front exists");
            if !matches!(outcome, SendOutcome::Acked) {
                // Later chunks are resent after this one: the PS takes a
                // chunk again without storing it twice.
                abort_all(&mut inflight);
            }
            match outcome {
                SendOutcome::Acked => {
                    backoff = Duration::from_millis(100);
                    self.with_stream(|st| {
                        st.flow_controlled = false;
                        st.error = None;
                        st.bytes_sent += done.raw;
                        ack(st, done.last);
                    });
                    self.vol.room.notify_one();
                }
                SendOutcome::Throttled => {
                    self.with_stream(|st| st.flow_controlled = true);
                    self.sleep(&mut sd, &mut backoff).await;
                }
                SendOutcome::Gap(next) => {
                    tracing::info!(pair = %name, next, first = done.first, "PS expects another sequence; asking where to resume");
                    resession = true;
                }
                SendOutcome::Refused(e) => {
                    if refusals.give_up(done.first) {
                        // Sending the same records again cannot help (a
                        // damage in transit would not repeat): drop them and
                        // read the volume again, skipping what the MT holds.
                        tracing::error!(pair = %name, first = done.first, error = %e, "chunk refused {GIVE_UP_AFTER} times; dropping the buffer and resyncing");
                        self.with_stream(|st| {
                            restart_with_resync(st, self.vol.size, None);
                            crate::engine::control::push_event(
                                &mut st.events,
                                crate::engine::control::PairEventKind::ChunkGivenUp {
                                    first: done.first,
                                    error: e.clone(),
                                },
                            );
                        });
                        self.save_now().await;
                        self.set_error(Some(format!(
                            "{e} ({GIVE_UP_AFTER} times); the buffered changes were dropped and a fast resync started"
                        )));
                        resession = true;
                    } else {
                        self.set_error(Some(e));
                    }
                    self.sleep(&mut sd, &mut backoff).await;
                }
                SendOutcome::Failed(e) => {
                    self.set_error(Some(e));
                    self.sleep(&mut sd, &mut backoff).await;
                }
            }
        }
        abort_all(&mut inflight);
        tracing::debug!(pair = %name, "pair tasks stopped");
    }

    async fn sleep(&self, sd: &mut Shutdown, backoff: &mut Duration) {
        tokio::select! {
            _ = tokio::time::sleep(*backoff) => {}
            _ = sd.wait() => {}
        }
        *backoff = (*backoff * 2).min(Duration::from_secs(2));
    }

    fn set_error(&self, e: Option<String>) {
        if let Some(m) = &e {
            let changed = self.with_stream(|st| st.error.as_ref() != Some(m)) == Some(true);
            if changed {
                tracing::warn!(pair = %self.spec().name, error = %m, "replication problem");
            }
        }
        self.with_stream(|st| st.error = e);
    }

    /// Every [`ACTIVITY_COMPACT`]: drop from the activity log the extents
    /// that are safe at the PS, after saving what `PAIR.state` must say.
    async fn compactor(self: Arc<Self>, mut sd: Shutdown) {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(ACTIVITY_COMPACT) => {}
                _ = sd.wait() => break,
            }
            let me = self.clone();
            match tokio::task::spawn_blocking(move || me.compact()).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    tracing::warn!(pair = %self.spec().name, error = %e, "activity log compaction failed (the log keeps its extents)")
                }
                Err(e) => tracing::warn!(error = %e, "activity log compaction task"),
            }
        }
    }

    /// A compaction now (awaited): `PAIR.state` takes a resync just decided.
    async fn save_now(self: &Arc<Self>) {
        let me = self.clone();
        if let Ok(Err(e)) = tokio::task::spawn_blocking(move || me.compact()).await {
            tracing::warn!(pair = %self.spec().name, error = %e, "cannot save the pair state");
        }
    }

    /// One compaction (blocking). Order matters, see [`activity`]: the
    /// volume is synced after the extents written before it were taken, the
    /// log becomes (pending ∪ recently written) before the state's cursor
    /// moves past a copy, and both happen under the volume's lock.
    fn compact(&self) -> std::io::Result<()> {
        let vol = &self.vol;
        let closed = || vol.closed.load(std::sync::atomic::Ordering::Relaxed);
        let earlier = {
            let g = vol.stream.lock().unwrap();
            if closed() || g.is_none() {
                return Ok(());
            }
            vol.activity.lock().unwrap().take_touched()
        };
        if let Err(e) = vol.flush() {
            let _g = vol.stream.lock().unwrap();
            vol.activity.lock().unwrap().restore_touched(&earlier);
            return Err(e);
        }
        let mut g = vol.stream.lock().unwrap();
        if closed() {
            return Ok(());
        }
        let Some(st) = g.as_mut() else { return Ok(()) };
        if st.uuid != self.spec().uuid_bytes() {
            // Another pair's stream (this one was removed meanwhile).
            return Ok(());
        }
        let gen_ = self.resync_gen.load(std::sync::atomic::Ordering::Relaxed);
        let key = st.persist_key(gen_);
        let mut al = vol.activity.lock().unwrap();
        // 1. What is pending now is logged (a step-I copy of a block never
        //    written, before the state's cursor passes it) ...
        let mut pending = al.empty_set();
        st.pending_extents(&mut pending);
        al.add(&pending)?;
        // 2. ... the state on disk says what the stream does (a resync
        //    started since the last save is not forgotten) ...
        if st.persisted != Some(key) {
            let spec = self.spec();
            state::save(
                &self.state_path,
                &state::PairState {
                    uuid: spec.uuid_bytes(),
                    clean: false,
                    resync_gen: gen_,
                    step1: key.step1,
                    resyncing: key.resyncing,
                    resync_required: key.resync_required,
                    bitmap: stream::Bitmap::new(vol.size),
                },
                vol.size,
            )?;
            st.persisted = Some(key);
        }
        // 3. ... and only then the log drops what is neither pending nor
        //    written in this period or the last (synced above).
        if !st.resync_required {
            let mut keep = earlier;
            for ((k, t), p) in keep.iter_mut().zip(al.touched()).zip(&pending) {
                *k |= t | p;
            }
            al.set(&keep)?;
        }
        Ok(())
    }

    fn maybe_auto_resync(&self) {
        let cfg = &self.agent.cfg.agent;
        let due = self.since_unclean.elapsed() >= cfg.auto_resync_delay.0
            && crate::util::parse_window(&cfg.resync_window)
                .is_ok_and(|w| crate::util::in_window(w, crate::util::now_ms()));
        if due {
            self.with_stream(|st| {
                if st.resync_required && st.next_seq.is_some() {
                    tracing::info!(pair = %st.pair, "automatic resync starts (step I, fast)");
                    st.bitmap = stream::Bitmap::new(self.vol.size);
                    st.start_resync();
                }
            });
        }
    }

    /// The seed's periodic consistency points: a bookmark every
    /// `agent.consistency_interval` while the pair is in differential sync.
    fn maybe_periodic_bookmark(self: &Arc<Self>) {
        let every = self.agent.cfg.agent.consistency_interval.0;
        if every.is_zero() || self.scan {
            return;
        }
        let mut last = self.last_periodic.lock().unwrap();
        if last.elapsed() < every
            || self.with_stream(|st| st.mode())
                != Some(crate::engine::control::AgentMode::Differential)
        {
            return;
        }
        *last = Instant::now();
        let spec = self.spec();
        let fs = self
            .agent
            .volumes
            .lock()
            .unwrap()
            .get(&spec.source_volume)
            .is_some_and(|v| v.spec.fs_mount.is_some());
        let cmd = Command {
            id: format!("periodic-{}", crate::util::now_ms()),
            pair: spec.name.clone(),
            bookmark: format!(
                "tern:periodic-{}",
                crate::util::rfc3339_ms(crate::util::now_ms())
            ),
            kind: if fs {
                BookmarkKind::Fs
            } else {
                BookmarkKind::User
            },
        };
        let agent = self.agent.clone();
        tokio::task::spawn_blocking(move || {
            let r = agent.run_command(&cmd);
            if !r.ok {
                tracing::warn!(pair = %cmd.pair, error = ?r.error, "periodic consistency bookmark failed");
            }
        });
    }

    fn maybe_scan(&self) {
        if !self.scan {
            return;
        }
        let mut last = self.last_scan.lock().unwrap();
        if last.elapsed() < self.agent.cfg.agent.scan_interval.0 {
            return;
        }
        let started = self.with_stream(|st| {
            let idle = st.next_seq.is_some()
                && st.step1.is_none()
                && !st.resyncing
                && st.bitmap.is_empty()
                && !st.mode_paused;
            if idle {
                st.start_resync();
            }
            idle
        });
        if started == Some(true) {
            *last = Instant::now();
            tracing::debug!(pair = %self.spec().name, "scan pass started");
        }
    }

    /// Start a new session with the PS and learn where the stream continues.
    async fn cursor(&self, base: &str) -> Result<u64, String> {
        let session = rand::random::<u64>() | 1;
        let next = self.cursor_at(base, Some(session)).await?;
        self.session
            .store(session, std::sync::atomic::Ordering::Relaxed);
        Ok(next)
    }

    /// Where the PS says the stream continues; with a session, that session
    /// starts (without, nothing changes on the PS).
    async fn cursor_at(&self, base: &str, session: Option<u64>) -> Result<u64, String> {
        let url = match session {
            Some(s) => format!("{base}/cursor?session={s}"),
            None => format!("{base}/cursor"),
        };
        let v = transport::call(self.agent.client.get(url).timeout(Duration::from_secs(30)))
            .await
            .map_err(|e| e.to_string())?
            .ok()?;
        v["next_seq"]
            .as_u64()
            .filter(|&n| n > 0)
            .ok_or_else(|| "PS cursor answer without a next_seq of 1 or more".to_owned())
    }

    /// The PS expects `next` next: line our stream up with it.
    fn reconcile(&self, next: u64) {
        self.with_stream(|st| {
            let front = st.buffer.front().map(|r| r.record.seq);
            let ours = st.next_seq;
            match (ours, front) {
                (None, None) => {
                    st.next_seq = Some(next);
                    if st.step1.is_some() && st.resync_base.is_none() {
                        st.resync_base = Some(next - 1);
                    }
                }
                (Some(n), None) if n == next => {}
                (Some(n), Some(f)) if f <= next && next <= n => {
                    ack(st, next - 1);
                }
                _ => {
                    // Records are missing between the PS and us: what they
                    // changed is unknown, so only a full resync is safe.
                    tracing::warn!(pair = %st.pair, ours = ?ours, front = ?front, ps_next = next, "stream and PS disagree; full resync");
                    restart_with_resync(st, self.vol.size, Some(next));
                }
            }
        });
        self.vol.notify.notify_one();
    }

    /// The next chunk to send: the buffered records after seq `after`
    /// (from the front when None), up to `agent.chunk_max`.
    fn take_chunk(&self, after: Option<u64>) -> Option<Outgoing> {
        let spec = self.spec();
        let (_, max) = buffer_split(&self.agent.cfg.agent);
        let recs = self.with_stream(|st| {
            let mut v = Vec::new();
            let mut n = 0u64;
            let skip = after.map_or(0, |a| {
                st.buffer
                    .front()
                    .map_or(0, |f| (a + 1).saturating_sub(f.record.seq) as usize)
            });
            for r in st.buffer.iter().skip(skip) {
                let l = r.data_len() as u64 + 32;
                if !v.is_empty() && n + l > max {
                    break;
                }
                n += l;
                v.push(r.clone());
            }
            v
        })?;
        let first = recs.first()?.record.seq;
        Some(Outgoing {
            uuid: spec.uuid_bytes(),
            codec: match spec.compression {
                Compression::Source => Codec::Zstd(spec.zstd_level),
                _ => Codec::None,
            },
            first,
            last: recs.last().unwrap().record.seq,
            raw: recs.iter().map(|r| r.data_len() as u64).sum(),
            recs,
        })
    }

    async fn send(&self, base: &str, bytes: Vec<u8>, first: u64, session: u64) -> SendOutcome {
        let r = transport::call(
            self.agent
                .client
                .put(format!("{base}/chunk/{first}?session={session}"))
                // The buffer goes back to the pool once reqwest has sent it.
                .body(crate::engine::bufpool::shared(bytes))
                .timeout(Duration::from_secs(120)),
        )
        .await;
        let a = match r {
            Ok(a) => a,
            Err(e) => return SendOutcome::Failed(format!("sending to the PS: {e}")),
        };
        let (status, v) = (a.status.as_u16(), &a.body);
        match status {
            200 => SendOutcome::Acked,
            503 if v["throttled"].as_bool() == Some(true) => SendOutcome::Throttled,
            409 if v["next_seq"].as_u64().is_some_and(|n| n > 0) => {
                SendOutcome::Gap(v["next_seq"].as_u64().unwrap())
            }
            400 => SendOutcome::Refused(format!("PS refused the chunk: {}", a.error())),
            _ => SendOutcome::Failed(format!("PS refused the chunk ({status}): {}", a.error())),
        }
    }

    /// Step I copies and bitmap drains, beside the sender: whenever the
    /// buffer has room, copy the next blocks (skipping, in step I, those the
    /// MT already holds: fast resync) under the volume's write lock.
    async fn resync_driver(self: Arc<Self>, mut sd: Shutdown) {
        let mut last_hash_fail: Option<Instant> = None;
        // When the PS last granted (or renewed) this pair's resync slot.
        let mut slot: Option<Instant> = None;
        // Hashes of the next step-I batch, asked for ahead: (offset, min_seq, task).
        #[allow(clippy::type_complexity)]
        let mut prefetch: Option<(
            u64,
            u64,
            tokio::task::JoinHandle<Result<Vec<[u8; 32]>, String>>,
        )> = None;
        loop {
            if sd.is_fired() {
                break;
            }
            let Some((step1, min_seq, streaming, room, dirty, cap, resyncing)) =
                self.with_stream(|st| {
                    (
                        st.step1,
                        st.resync_base.or(st.next_seq.map(|n| n - 1)).unwrap_or(0),
                        st.next_seq.is_some() && !st.mode_paused && !st.resync_required,
                        st.cap.saturating_sub(st.buffered),
                        !st.bitmap.is_empty(),
                        st.cap,
                        st.resyncing,
                    )
                })
            else {
                break;
            };
            // A resync copies only while it holds one of the PS's slots.
            if !(streaming && resyncing) && slot.take().is_some() {
                self.with_stream(|st| st.resync_granted = false);
                let _ = self.resync_slot(true).await;
            }
            if streaming && resyncing && slot.is_none_or(|t| t.elapsed() >= SLOT_RENEW) {
                let r = self.resync_slot(false).await;
                match &r {
                    Ok(None) => slot = Some(Instant::now()),
                    Ok(Some(place)) => {
                        let place = *place;
                        if slot.take().is_some() || place == 1 {
                            tracing::info!(pair = %self.spec().name, place, "resync waits for a slot on the PS");
                        }
                    }
                    // The sender reports an unreachable PS; a held slot
                    // lasts its lease, so keep copying until it would end.
                    Err(_) => {
                        if slot.is_some_and(|t| t.elapsed() >= SLOT_GIVE_UP) {
                            slot = None;
                        }
                    }
                }
                self.with_stream(|st| st.resync_granted = slot.is_some());
                if slot.is_none() || r.is_err() {
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(2)) => {}
                        _ = sd.wait() => break,
                    }
                }
                if slot.is_none() {
                    continue;
                }
            }
            // Work once half the buffer (at most half a batch) is free.
            let idle = !streaming
                || (step1.is_none() && !dirty)
                || room < (STEP1_BATCH * RESYNC_BLOCK / 2).min(cap / 2);
            if streaming && self.with_stream(|st| st.mark_consistent_if_due()) == Some(true) {
                self.vol.notify.notify_one();
            }
            if idle {
                tokio::select! {
                    _ = self.vol.room.notified() => {}
                    _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                    _ = sd.wait() => break,
                }
                continue;
            }
            let r = if let Some(c) = step1 {
                let n = (self.vol.size - c).div_ceil(RESYNC_BLOCK).min(STEP1_BATCH);
                let spec = self.spec();
                let base = spec
                    .ps_addr
                    .map(|ps| format!("https://{ps}/data/v1/ps/{}", spec.name));
                let hashes = match base {
                    Some(b)
                        if last_hash_fail
                            .is_none_or(|t| t.elapsed() >= Duration::from_secs(10)) =>
                    {
                        // The MT hashes the next batch while this one is
                        // read and compared here.
                        let ready = match prefetch.take() {
                            Some((at, seq, task)) if at == c && seq == min_seq => task.await.ok(),
                            Some((_, _, task)) => {
                                task.abort();
                                None
                            }
                            None => None,
                        };
                        let got = match ready {
                            Some(r) => r,
                            None => self.target_hashes(&b, c, n, min_seq).await,
                        };
                        match got {
                            Ok(h) => {
                                let next = c + n * RESYNC_BLOCK;
                                if next < self.vol.size {
                                    let me = self.clone();
                                    let m = (self.vol.size - next)
                                        .div_ceil(RESYNC_BLOCK)
                                        .min(STEP1_BATCH);
                                    prefetch = Some((
                                        next,
                                        min_seq,
                                        tokio::spawn(async move {
                                            me.target_hashes(&b, next, m, min_seq).await
                                        }),
                                    ));
                                }
                                Some(h)
                            }
                            Err(e) => {
                                tracing::debug!(error = %e, "fast resync hashes unavailable; copying");
                                last_hash_fail = Some(Instant::now());
                                None
                            }
                        }
                    }
                    _ => None,
                };
                let vol = self.vol.clone();
                tokio::task::spawn_blocking(move || step1_blocks(&vol, c, n, hashes)).await
            } else {
                let vol = self.vol.clone();
                tokio::task::spawn_blocking(move || {
                    for _ in 0..64 {
                        let mut g = vol.stream.lock().unwrap();
                        let Some(st) = g.as_mut() else { return Ok(()) };
                        match stream::drain_step(&vol, st)? {
                            Step::Progress => {}
                            Step::Full | Step::Done => return Ok(()),
                        }
                    }
                    Ok::<(), std::io::Error>(())
                })
                .await
            };
            self.vol.notify.notify_one();
            match r {
                Ok(Ok(())) => {}
                Ok(Err(e)) => self.set_error(Some(format!("reading the volume: {e}"))),
                Err(e) => self.set_error(Some(e.to_string())),
            }
        }
    }

    /// Ask for (`release` = false) or give back the pair's resync slot on
    /// the PS: `Ok(None)` granted, `Ok(Some(n))` queued at place `n`.
    async fn resync_slot(&self, release: bool) -> Result<Option<u64>, String> {
        let spec = self.spec();
        let ps = spec.ps_addr.ok_or("the PS has no data address yet")?;
        let v = transport::call(
            self.agent
                .client
                .post(format!("https://{ps}/data/v1/ps/{}/resync-slot", spec.name))
                .json(&serde_json::json!({ "release": release }))
                .timeout(Duration::from_secs(30)),
        )
        .await
        .map_err(|e| e.to_string())?
        .ok()?;
        if release || v["granted"].as_bool() == Some(true) {
            Ok(None)
        } else {
            Ok(Some(v["position"].as_u64().unwrap_or(1)))
        }
    }

    async fn target_hashes(
        &self,
        base: &str,
        offset: u64,
        count: u64,
        min_seq: u64,
    ) -> Result<Vec<[u8; 32]>, String> {
        let v = transport::call(
            self.agent
                .client
                .post(format!("{base}/hashes"))
                .json(&serde_json::json!({
                    "offset": offset, "block": RESYNC_BLOCK, "count": count, "min_seq": min_seq,
                }))
                .timeout(Duration::from_secs(60)),
        )
        .await
        .map_err(|e| e.to_string())?
        .ok()?;
        let hs = v["hashes"].as_array().ok_or("no hashes")?;
        hs.iter()
            .map(|h| {
                let b = hex::decode(h.as_str().unwrap_or("")).map_err(|e| e.to_string())?;
                b.try_into().map_err(|_| "bad hash length".to_owned())
            })
            .collect()
    }
}

/// A held resync slot is renewed this often (well inside its lease).
const SLOT_RENEW: Duration = Duration::from_secs(20);

/// A slot that could not be renewed is given up this long after it was
/// last granted: before the PS would hand it to another pair.
const SLOT_GIVE_UP: Duration = Duration::from_secs(60);
const _: () = assert!(SLOT_GIVE_UP.as_secs() < crate::engine::control::RESYNC_SLOT_LEASE.as_secs());

/// Step I blocks per fast-resync hash request (the next batch's hashes are
/// asked for while this one is compared).
const STEP1_BATCH: u64 = 64;

/// Drop everything buffered and dirty and start a full (fast) resync: what
/// the dropped records changed is re-read from the volume. The stream goes
/// on at `next` (None: ask the PS in a new session).
fn restart_with_resync(st: &mut Stream, volume_size: u64, next: Option<u64>) {
    st.buffer.clear();
    st.buffered = 0;
    st.bitmap = stream::Bitmap::new(volume_size);
    st.next_seq = next;
    if !st.resync_required {
        st.start_resync();
    }
}

/// Remove acknowledged records (seq ≤ `last`) from the buffer.
fn ack(st: &mut Stream, last: u64) {
    while st.buffer.front().is_some_and(|r| r.record.seq <= last) {
        let r = st.buffer.pop_front().unwrap();
        st.buffered -= r.data_len() as u64 + 32;
    }
    st.end_resync_if_done();
}

/// Copy up to `n` step-I blocks from `c`, skipping those whose hash equals
/// the MT's. Each block is read once, under the lock; stops early when the
/// buffer is full.
fn step1_blocks(
    vol: &Volume,
    c: u64,
    n: u64,
    hashes: Option<Vec<[u8; 32]>>,
) -> std::io::Result<()> {
    // One buffer for the batch: a block that matches is never copied.
    let mut buf = vec![0u8; RESYNC_BLOCK as usize];
    for i in 0..n {
        let off = c + i * RESYNC_BLOCK;
        let len = RESYNC_BLOCK.min(vol.size - off);
        let mut g = vol.stream.lock().unwrap();
        let Some(st) = g.as_mut() else { return Ok(()) };
        if st.step1 != Some(off) {
            // Restarted or finished meanwhile.
            return Ok(());
        }
        if !st.has_room(len) {
            return Ok(());
        }
        let data = &mut buf[..len as usize];
        vol.read(off, data)?;
        // Step I moves past the block before its copy is pushed, so the
        // copy's flag tells whether the image after it is consistent.
        st.advance_step1(off + len, vol.size);
        if let Some(h) = hashes.as_ref().and_then(|h| h.get(i as usize)) {
            st.fast_compared += 1;
            if blake3::hash(data).as_bytes() == h {
                st.fast_matched += 1;
                continue;
            }
        }
        st.push_copy(off, data.to_vec());
        drop(g);
        vol.notify.notify_one();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_directory_that_is_not_a_mount_point_is_never_frozen() {
        let d = tempfile::tempdir().unwrap();
        let r = super::freeze_and(d.path(), || Ok::<_, String>(()));
        let e = r.unwrap_err();
        assert!(e.contains("is not a mount point"), "{e}");
    }

    #[test]
    fn records_and_chunks_in_flight_share_the_buffer_cap() {
        use crate::config::{AgentConfig, Size};
        let cfg = |cap: u64, chunk: u64| AgentConfig {
            buffer_cap: Size(cap),
            chunk_max: Size(chunk),
            ..AgentConfig::default()
        };
        let whole = |c: &AgentConfig| {
            let (r, ch) = super::buffer_split(c);
            r + (super::SEND_WINDOW as u64 + 1) * ch
        };
        // The usual: 8 MiB chunks, four of them off a 256 MiB cap.
        let c = cfg(256 << 20, 8 << 20);
        assert_eq!(super::buffer_split(&c), (224 << 20, 8 << 20));
        assert_eq!(whole(&c), 256 << 20);
        // A chunk is at most an eighth of the cap.
        let c = cfg(64 << 20, 32 << 20);
        assert_eq!(super::buffer_split(&c), (32 << 20, 8 << 20));
        // Too small a cap for that: two resync blocks of records, one each.
        let c = cfg(4 << 20, 8 << 20);
        let (r, ch) = super::buffer_split(&c);
        assert_eq!(
            (r, ch),
            (2 * super::RESYNC_BLOCK + 4096, super::RESYNC_BLOCK + 4096)
        );
    }
}
