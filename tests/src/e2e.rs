//! Helpers of the host-side binaries of `tests/e2e/qemu-scenarios.sh`
//! (`bufbroker-e2e-host`, `bufbroker-e2e-consumer`).

use std::path::Path;
use std::time::Instant;

use bufbroker_guest::bufbroker_proto::wire::ImportView;
use bufbroker_guest::local::LocalTransport;
use bufbroker_guest::{Client, ClientOptions};
use uuid::Uuid;

/// The guest self-test's pattern: byte `i` is `(i * 7 + 3) mod 256`.
pub fn pattern_byte(i: usize) -> u8 {
    (i.wrapping_mul(7).wrapping_add(3)) as u8
}

fn chain(e: &dyn std::error::Error) -> String {
    bufbroker_guest::bufbroker_proto::wire::error_chain(e)
}

/// A client of the broker's local socket at `socket` (owner `uid:N` of this process).
pub fn connect(socket: &Path) -> Result<Client<LocalTransport>, String> {
    let transport = LocalTransport::connect(socket).map_err(|e| chain(&e))?;
    Client::connect(transport, &ClientOptions::default()).map_err(|e| chain(&e))
}

/// Imports `uuid` (exported by a guest and granted to this process's owner) through the local
/// socket, maps the fd received and checks that its `size` bytes carry the guest's pattern.
/// Returns a line describing what was checked.
pub fn import_and_check(socket: &Path, uuid: Uuid, size: u64) -> Result<String, String> {
    let mut client = connect(socket)?;
    let t = Instant::now();
    let imported = client
        .import(uuid, ImportView::HostClient)
        .map_err(|e| chain(&e))?;
    let took = t.elapsed();
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
    if let Some((i, b)) = bytes
        .iter()
        .enumerate()
        .find(|&(i, &b)| b != pattern_byte(i))
    {
        return Err(format!("byte {i} is {b:#04x}, not the guest's pattern"));
    }
    Ok(format!(
        "imported {uuid} as {} ({:?}, {} planes) in {took:?}; all {} bytes carry the guest's pattern",
        imported.buffer.id(),
        imported.access,
        imported.plan.planes.len(),
        bytes.len()
    ))
}
