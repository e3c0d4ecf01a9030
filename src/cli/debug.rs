//! Hidden helpers for tests: `tern debug journal-load` applies a
//! deterministic workload to a journal until killed (the kill -9 test's child).

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

use clap::Subcommand;

use crate::engine::journal::policy::{self, OnFull, RetentionPolicy};
use crate::engine::journal::storage::FsStorage;
use crate::engine::journal::testkit::Workload;
use crate::engine::journal::{Journal, JournalOptions};

#[derive(Subcommand, Debug)]
pub enum DebugCmd {
    /// Apply a deterministic workload to DIR/journal (replica DIR/replica.img)
    /// forever, printing `acked SEQ` after each durable chunk.
    JournalLoad {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        #[arg(long, default_value_t = 64 << 20)]
        volume_size: u64,
        #[arg(long, default_value_t = 64 << 10)]
        max_write: u64,
        /// Journal space budget; pruning keeps it (policy prune).
        #[arg(long, default_value_t = 8 << 20)]
        max_bytes: u64,
    },
}

pub fn run(cmd: DebugCmd) -> anyhow::Result<()> {
    match cmd {
        DebugCmd::JournalLoad {
            dir,
            seed,
            volume_size,
            max_write,
            max_bytes,
        } => {
            let jdir = dir.join("journal");
            let replica = dir.join("replica.img");
            let opts = JournalOptions {
                segment_bytes: 2 << 20,
                ..Default::default()
            };
            let j = if jdir.join("journal.state").exists() {
                Journal::open(Arc::new(FsStorage), &jdir, &replica, opts)?
            } else {
                Journal::create(Arc::new(FsStorage), &jdir, &replica, volume_size, opts)?
            };
            let mut w = Workload::new(seed, volume_size);
            w.max_write = max_write;
            let p = RetentionPolicy {
                window: None,
                max_bytes: Some(max_bytes),
                on_full: OnFull::Prune,
                tiers: Vec::new(),
            };
            let mut out = std::io::stdout().lock();
            loop {
                let next = j.last_seq() / w.records_per_chunk;
                j.apply(&w.chunk(next))?;
                writeln!(out, "acked {}", j.last_seq())?;
                out.flush()?;
                policy::prune_step(&j, &p, 0)?;
            }
        }
    }
}
