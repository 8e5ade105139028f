//! `bufbroker-e2e-host`: the host side of `tests/e2e/qemu-scenarios.sh`, a client of the
//! broker's local socket (guest-lib's `LocalTransport`).
//!
//! ```text
//! bufbroker-e2e-host import --socket PATH --uuid UUID --size BYTES
//! bufbroker-e2e-host stats --socket PATH
//! ```
//!
//! `import` imports a buffer a guest exported and granted to this process's owner
//! (`uid:N`), maps the fd it receives and checks that the buffer holds the guest self-test's
//! pattern (byte `i` = `(i * 7 + 3) mod 256`); exit status 0 only if every byte matches.
//! `stats` prints one line per owner the broker reports (`OWNER bytes=B buffers=N`; every owner
//! needs an `admin = true` owner).

use std::path::Path;
use std::process::ExitCode;

use bufbroker_tests::e2e;
use uuid::Uuid;

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bufbroker-e2e-host: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), String> {
    let mut args = std::env::args().skip(1);
    let command = args.next().ok_or("no command (import or stats)")?;
    let (mut socket, mut uuid, mut size) = (None, None, None);
    while let Some(a) = args.next() {
        let value = args.next().ok_or(format!("{a} needs a value"))?;
        match a.as_str() {
            "--socket" => socket = Some(value),
            "--uuid" => uuid = Some(Uuid::parse_str(&value).map_err(|e| e.to_string())?),
            "--size" => size = Some(value.parse::<u64>().map_err(|e| e.to_string())?),
            other => return Err(format!("unknown argument {other}")),
        }
    }
    let socket = socket.ok_or("--socket is required")?;
    match command.as_str() {
        "import" => {
            let line = e2e::import_and_check(
                Path::new(&socket),
                uuid.ok_or("--uuid is required")?,
                size.ok_or("--size is required")?,
            )?;
            println!("{line} (zero copy: the guest's window memory)");
            Ok(())
        }
        "stats" => {
            let mut client = e2e::connect(Path::new(&socket))?;
            let stats = client
                .stats()
                .map_err(|e| bufbroker_proto::wire::error_chain(&e))?;
            for o in stats {
                println!("{} bytes={} buffers={}", o.owner, o.bytes, o.buffers);
            }
            Ok(())
        }
        other => Err(format!("unknown command {other}")),
    }
}
