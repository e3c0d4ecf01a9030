//! The `tern` binary: parse, dispatch, map errors to exit codes.
//!
//! Exit codes: 0 success; 1 the command failed (message on stderr as
//! `tern: …`); 2 bad usage (from the argument parser).

use clap::Parser;

/// mimalloc instead of the C library's allocator: musl's (the static
/// appliance build) is slow under threads, and glibc's per-thread arenas
/// hold on to freed chunk buffers, so the agent's RSS drifted far above
/// its buffer cap (docs/ARCHITECTURE.md, "Memory").
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let cli = tern::cli::Cli::parse();
    match tern::cli::main(cli) {
        Ok(()) => {}
        Err(e) => {
            eprintln!("tern: {}", tern::cli::error_chain(&e));
            std::process::exit(1);
        }
    }
}
