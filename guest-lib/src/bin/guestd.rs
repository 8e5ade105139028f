//! `bufbroker-guestd`: the guest agent. Owns the bufbroker virtio device (the userspace
//! virtio-pci driver) and serves guest processes over a Unix socket with the broker's
//! protocol; see `bufbroker_guest::agent`.
//!
//! ```text
//! bufbroker-guestd [--socket PATH] [--max-clients N] [--bdf BDF] [--virtio-id N]
//!                  [--timeout SECONDS] [--fake]
//! ```
//!
//! `--socket` defaults to `/run/bufbroker-guestd.sock`. `--fake` serves the in-process fake
//! broker instead of the device (for trying clients without a VM). Prints
//! `bufbroker-guestd: listening on PATH` once the socket accepts connections, then runs until
//! killed.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use bufbroker_guest::Transport;
use bufbroker_guest::agent::{Agent, AgentOptions, DEFAULT_SOCKET};
use bufbroker_guest::bufbroker_proto::wire::error_chain;
use bufbroker_guest::fake::{FakeBroker, FakeTransport};
use bufbroker_guest::virtio_pci::{VirtioPciOptions, VirtioPciTransport};

fn run<T: Transport + Send + 'static>(
    transport: T,
    options: AgentOptions,
    socket: &Path,
) -> Result<(), String> {
    let agent = Agent::new(transport, options).map_err(|e| error_chain(&e))?;
    let s = agent.session();
    println!(
        "bufbroker-guestd: device session version {} features {:#x} broker {:?}",
        s.version,
        s.features.bits(),
        s.broker
    );
    let listener = Agent::<T>::bind(socket).map_err(|e| error_chain(&e))?;
    println!("bufbroker-guestd: listening on {}", socket.display());
    agent.serve(&listener).map_err(|e| error_chain(&e))
}

fn main() -> ExitCode {
    let mut device = VirtioPciOptions::default();
    let mut options = AgentOptions::default();
    let mut socket = PathBuf::from(DEFAULT_SOCKET);
    let mut fake = false;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = || args.next().unwrap_or_default();
        match a.as_str() {
            "--socket" => socket = PathBuf::from(value()),
            "--max-clients" => {
                options.max_clients = value().parse().unwrap_or(options.max_clients);
            }
            "--bdf" => device.bdf = Some(value()),
            "--virtio-id" => {
                let id = value().parse().unwrap_or(37);
                device = VirtioPciOptions {
                    bdf: device.bdf,
                    ..VirtioPciOptions::for_virtio_id(id)
                };
            }
            "--timeout" => device.timeout = Duration::from_secs(value().parse().unwrap_or(10)),
            "--fake" => fake = true,
            other => {
                eprintln!("unknown argument {other}; see the binary's documentation");
                return ExitCode::from(2);
            }
        }
    }
    let result = if fake {
        FakeTransport::new(FakeBroker::new(), 64 << 20)
            .map_err(|e| error_chain(&e))
            .and_then(|t| run(t, options, &socket))
    } else {
        VirtioPciTransport::open(&device)
            .map_err(|e| error_chain(&e))
            .and_then(|t| {
                println!("bufbroker-guestd: device {}", t.bdf());
                run(t, options, &socket)
            })
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bufbroker-guestd: {e}");
            ExitCode::FAILURE
        }
    }
}
