//! `bufbroker heaps`: what this host can allocate from.

use std::process::ExitCode;

use crate::args::HeapsArgs;
use crate::heap::{DiscoveryConfig, discover};

/// Discovers the heaps and prints the report (or the available heaps as JSON).
pub fn run(args: &HeapsArgs) -> ExitCode {
    let heaps = discover(&DiscoveryConfig::default());
    if args.json {
        match serde_json::to_string_pretty(&heaps.infos()) {
            Ok(s) => println!("{s}"),
            Err(e) => {
                eprintln!("bufbroker heaps: cannot encode JSON: {e}");
                return ExitCode::FAILURE;
            }
        }
    } else {
        print!("{}", heaps.report());
    }
    ExitCode::SUCCESS
}
