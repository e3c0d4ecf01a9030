//! The `tern` binary: parse, dispatch, map errors to exit codes.
//!
//! Exit codes: 0 success; 1 the command failed (message on stderr as
//! `tern: …`); 2 bad usage (from the argument parser).

use clap::Parser;

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
