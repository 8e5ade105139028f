//! Command-line arguments (clap derive). `main.rs` parses them and hands them to [`crate::cli`].

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// bufbroker: a buffer-allocation broker for virtual machines.
#[derive(Debug, Parser)]
#[command(name = "bufbroker", version, about, long_about = None)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Solve participants' constraints for an image and print ranked plans or the conflict.
    Solve(SolveArgs),
    /// List the heaps this host offers, and why the others are absent.
    Heaps(HeapsArgs),
    /// Serve host processes on a local Unix socket (buffers are passed as fds).
    ServeLocal(ServeLocalArgs),
}

/// Arguments of `bufbroker serve-local`.
#[derive(Debug, Args)]
pub struct ServeLocalArgs {
    /// Path of the Unix socket to listen on.
    #[arg(long, value_name = "PATH")]
    pub socket: PathBuf,

    /// Configuration file (TOML; see docs/configuration.md). Without it: every discovered
    /// heap, default quotas, no named host participants.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
}

/// Arguments of `bufbroker heaps`.
#[derive(Debug, Args)]
pub struct HeapsArgs {
    /// Print the available heaps as JSON (the solver's descriptions) instead of the report.
    #[arg(long)]
    pub json: bool,
}

/// Arguments of `bufbroker solve`.
#[derive(Debug, Args)]
pub struct SolveArgs {
    /// Participant files (TOML, see docs/constraints.md).
    #[arg(required = true, value_name = "FILE")]
    pub files: Vec<PathBuf>,

    /// Request file (TOML with a `[request]` table); flags below override its fields.
    #[arg(long, value_name = "FILE")]
    pub request: Option<PathBuf>,

    /// Image width in pixels.
    #[arg(long)]
    pub width: Option<u32>,

    /// Image height in rows.
    #[arg(long)]
    pub height: Option<u32>,

    /// Acceptable formats, best first (repeat or separate with commas), e.g. `NV12,P010`.
    #[arg(long = "format", value_delimiter = ',')]
    pub formats: Vec<String>,

    /// Usage added by the requester (comma list), e.g. `cpu-write,scanout`.
    #[arg(long)]
    pub usage: Option<String>,

    /// Number of buffers.
    #[arg(long)]
    pub count: Option<u32>,

    /// Heaps the broker would allocate from, by well-known name (repeatable): memfd, udmabuf,
    /// system, system-uncached, linux,cma, reserved, default_cma_region.
    /// Default: memfd, udmabuf, system, linux,cma.
    #[arg(long = "heap", value_name = "NAME")]
    pub heaps: Vec<String>,

    /// Most plans to print.
    #[arg(long, default_value_t = 5)]
    pub max_plans: usize,

    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}
