//! Subcommand implementations. Each returns the process exit code.

pub mod heaps;
pub mod serve;
pub mod serve_local;
pub mod solve;

use std::process::ExitCode;

use crate::args::{Cli, Command};

/// Runs the parsed command line.
pub fn run(cli: Cli) -> ExitCode {
    match cli.command {
        Command::Solve(args) => solve::run(&args),
        Command::Heaps(args) => heaps::run(&args),
        Command::ServeLocal(args) => serve_local::run(&args),
        Command::Serve(args) => serve::run(&args),
    }
}
