//! `linker-bench`: the load generator's command line (`linker-bench --help`).
//!
//! Parses the flags, runs one benchmark on a multi-threaded runtime, prints the summary on
//! stdout (progress goes to stderr) and exits non-zero only if the run could not be made.

use std::process::ExitCode;

use clap::Parser;
use test_script::bench::{self, Options};

fn main() -> ExitCode {
    let options = Options::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("linker-bench: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(bench::run(options)) {
        Ok(summary) => {
            print!("{summary}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("linker-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}
