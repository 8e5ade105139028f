//! Command-line arguments (clap derive). `main.rs` parses them and hands them to [`crate::cli`].

use std::path::PathBuf;

use clap::{ArgGroup, Args, Parser, Subcommand};

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
    /// Serve guests as a vhost-user device (one VMM connection per socket at a time).
    Serve(ServeArgs),
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

    /// A host VFIO device to open at start-up as named participant NAME (default: the
    /// address), e.g. `edu=0000:00:04.0`; repeatable. It must be bound to vfio-pci already
    /// (`[vfio.NAME] bind = true` in the configuration binds it). Owners use it when their
    /// `participants` allow-list names it.
    #[arg(long = "vfio-device", value_name = "[NAME=]ADDRESS")]
    pub vfio_devices: Vec<String>,
}

/// Arguments of `bufbroker serve`.
#[derive(Debug, Args)]
#[command(version)]
#[command(group(ArgGroup::new("listen").args(["socket_path", "fd"]).multiple(false)))]
pub struct ServeArgs {
    /// Listen on this unix socket (a stale socket file is replaced). With `--socket-count N`,
    /// listen on PATH0 .. PATH{N-1}, one guest each.
    #[arg(long, value_name = "PATH", required_unless_present_any = ["fd", "print_capabilities"])]
    pub socket_path: Option<PathBuf>,

    /// Number of sockets (guests) to serve when listening on `--socket-path`.
    #[arg(long, value_name = "N", default_value_t = 1, requires = "socket_path",
          value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub socket_count: u32,

    /// Serve the listening unix socket already open as file descriptor N (from systemd
    /// socket activation or libvirt).
    #[arg(long, value_name = "N")]
    pub fd: Option<i32>,

    /// Print the vhost-user backend capabilities as JSON and exit.
    #[arg(long)]
    pub print_capabilities: bool,

    /// Configuration file (TOML; see docs/configuration.md). Guests are matched by their
    /// socket's file name. Without it: every discovered heap, default quotas.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// A host VFIO device to open at start-up as named participant NAME (default: the
    /// address), e.g. `edu=0000:00:04.0`; repeatable. It must be bound to vfio-pci already
    /// (`[vfio.NAME] bind = true` in the configuration binds it). Owners use it when their
    /// `participants` allow-list names it.
    #[arg(long = "vfio-device", value_name = "[NAME=]ADDRESS")]
    pub vfio_devices: Vec<String>,

    /// Also serve host processes on this unix socket, with the same buffers and grants.
    #[arg(long, value_name = "PATH")]
    pub local_socket: Option<PathBuf>,

    /// Size of the shared-memory window (virtio shared-memory region 0) each guest gets: a
    /// power of two of at least 4 KiB; K, M and G suffixes (powers of 1024) are accepted.
    #[arg(long, value_name = "BYTES", default_value = "64M", value_parser = parse_window_size)]
    pub shmem_size: u64,
}

/// Parses a window size: a power of two >= 4096, with an optional K/M/G suffix.
fn parse_window_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (digits, shift) = [('K', 10), ('M', 20), ('G', 30)]
        .into_iter()
        .find_map(|(suffix, shift)| {
            s.strip_suffix(suffix)
                .or_else(|| s.strip_suffix(suffix.to_ascii_lowercase()))
                .map(|d| (d, shift))
        })
        .unwrap_or((s, 0));
    let n: u64 = digits
        .parse()
        .map_err(|e| format!("{s:?} is not a size: {e}"))?;
    let size = n
        .checked_mul(1 << shift)
        .ok_or_else(|| format!("{s} is too large"))?;
    if size < 4096 || !size.is_power_of_two() {
        return Err(format!(
            "{s} is not a power of two of at least 4096 bytes (it becomes a PCI BAR)"
        ));
    }
    Ok(size)
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
