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
use std::time::Instant;

use bufbroker_guest::bufbroker_proto::wire::ImportView;
use bufbroker_guest::local::LocalTransport;
use bufbroker_guest::{Client, ClientOptions};
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

fn chain(e: &dyn std::error::Error) -> String {
    bufbroker_guest::bufbroker_proto::wire::error_chain(e)
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
    let transport = LocalTransport::connect(Path::new(&socket)).map_err(|e| chain(&e))?;
    println!("connected to {socket} ({:?} framing)", transport.framing());
    let mut client =
        Client::connect(transport, &ClientOptions::default()).map_err(|e| chain(&e))?;
    match command.as_str() {
        "import" => import(
            &mut client,
            uuid.ok_or("--uuid is required")?,
            size.ok_or("--size is required")?,
        ),
        "stats" => {
            for o in client.stats().map_err(|e| chain(&e))? {
                println!("{} bytes={} buffers={}", o.owner, o.bytes, o.buffers);
            }
            Ok(())
        }
        other => Err(format!("unknown command {other}")),
    }
}

fn import(client: &mut Client<LocalTransport>, uuid: Uuid, size: u64) -> Result<(), String> {
    let t = Instant::now();
    let imported = client
        .import(uuid, ImportView::HostClient)
        .map_err(|e| chain(&e))?;
    println!(
        "imported {uuid} as {} ({:?}, {} bytes, {} planes) in {:?}",
        imported.buffer.id(),
        imported.access,
        imported.plan.size,
        imported.plan.planes.len(),
        t.elapsed()
    );
    if imported.plan.size != size {
        return Err(format!(
            "the import's plan has {} bytes, the guest said {size}",
            imported.plan.size
        ));
    }
    let map = client
        .map(&imported.buffer, &imported.plan)
        .map_err(|e| chain(&e))?;
    let mut bytes = vec![0u8; map.len()];
    map.read_at(0, &mut bytes).map_err(|e| e.to_string())?;
    let bad = bytes
        .iter()
        .enumerate()
        .find(|&(i, &b)| b != (i.wrapping_mul(7).wrapping_add(3)) as u8);
    if let Some((i, b)) = bad {
        return Err(format!("byte {i} is {b:#04x}, not the guest's pattern"));
    }
    println!(
        "all {} bytes carry the guest's pattern (zero copy: the guest's window memory)",
        bytes.len()
    );
    Ok(())
}
