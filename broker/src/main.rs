//! `bufbroker`: parse the command line, set up logging, run the command.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    bufbroker::cli::run(bufbroker::args::Cli::parse())
}
