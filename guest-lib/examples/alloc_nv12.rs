//! Allocates one NV12 1920x1080 buffer that this process's CPU and a named host participant
//! can both use, writes a test pattern into it, and exports its UUID for other devices.
//!
//! ```text
//! alloc_nv12 --socket PATH [--participant NAME]   host process, broker's local socket
//! alloc_nv12 --device [--participant NAME]        inside a guest, the virtio device (root)
//! alloc_nv12 --fake [--participant NAME]          in-process fake broker (tests)
//! ```
//!
//! Prints the plan, then `uuid <UUID>`.

use std::error::Error;
use std::path::PathBuf;

use bufbroker_guest::bufbroker_proto::constraint::{ConstraintSet, LayoutConstraints, Usage};
use bufbroker_guest::bufbroker_proto::wire::Placement;
use bufbroker_guest::bufbroker_proto::{Fourcc, Participant, ParticipantId, Plan, Request};
use bufbroker_guest::fake::{FakeBroker, FakeTransport};
use bufbroker_guest::local::LocalTransport;
use bufbroker_guest::virtio_pci::{VirtioPciOptions, VirtioPciTransport};
use bufbroker_guest::{Client, ClientOptions, Transport, participants};
use uuid::Uuid;

/// Allocates, fills and exports the buffer; returns its plan and UUID.
pub fn run<T: Transport>(
    transport: T,
    placement: Placement,
    host: &str,
) -> Result<(Plan, Uuid), Box<dyn Error>> {
    let mut client = Client::connect(transport, &ClientOptions::default())?;
    let request = Request {
        width: 1920,
        height: 1080,
        formats: vec![Fourcc::from_chars(*b"NV12")],
        usage: Usage::CPU_WRITE,
        participants: vec![
            participants::cpu(),
            participants::named(host, Usage::SCANOUT),
        ],
        count: 1,
    };
    let alloc = client.allocate(&request, placement)?;
    let plan = &alloc.plan;
    let buffer = alloc.buffers.first().ok_or("no buffer")?;
    println!(
        "plan {} {}x{} size {} heap {}",
        plan.fourcc, plan.width, plan.height, plan.size, plan.heap
    );
    for (i, p) in plan.planes.iter().enumerate() {
        println!(
            "plane {i} offset {} stride {} size {}",
            p.offset, p.stride, p.size
        );
    }

    // Luma: a horizontal ramp; chroma: neutral grey.
    let map = client.map(buffer, plan)?;
    let (y, uv) = match plan.planes.as_slice() {
        [y, uv, ..] => (y, uv),
        _ => return Err("NV12 plan without two planes".into()),
    };
    let row: Vec<u8> = (0..plan.width).map(|x| (x % 256) as u8).collect();
    for line in 0..u64::from(plan.height) {
        map.write_at(
            usize::try_from(y.offset + line * u64::from(y.stride))?,
            &row,
        )?;
    }
    map.fill(usize::try_from(uv.offset)?, usize::try_from(uv.size)?, 128)?;

    let uuid = client.export(buffer.id())?;
    println!("uuid {uuid}");
    Ok((alloc.plan.clone(), uuid))
}

/// The fake broker's stand-in for a host display: linear NV12 with 256-byte stride alignment.
pub fn fake_display() -> Participant {
    let set = ConstraintSet {
        layout: LayoutConstraints {
            stride_alignment: 256,
            ..LayoutConstraints::default()
        },
        ..ConstraintSet::default()
    };
    Participant::new(
        ParticipantId::Named("host-display".into()),
        "host display",
        Usage::SCANOUT,
        set,
    )
}

#[allow(dead_code)] // compiled into tests/binaries.rs too, where main is unused
fn main() -> Result<(), Box<dyn Error>> {
    let mut args = std::env::args().skip(1);
    let mut mode = None;
    let mut host = "host-display".to_owned();
    while let Some(a) = args.next() {
        match a.as_str() {
            "--socket" => mode = Some(("socket", args.next().map(PathBuf::from))),
            "--device" => mode = Some(("device", None)),
            "--fake" => mode = Some(("fake", None)),
            "--participant" => host = args.next().ok_or("--participant needs a name")?,
            _ => return Err(format!("unknown argument {a}").into()),
        }
    }
    match mode {
        Some(("socket", Some(path))) => {
            let t = LocalTransport::connect(&path)?;
            run(t, Placement::HostClient, &host)?;
        }
        Some(("device", _)) => {
            let t = VirtioPciTransport::open(&VirtioPciOptions::default())?;
            run(t, Placement::HostWindow, &host)?;
        }
        Some(("fake", _)) => {
            let broker = FakeBroker::new().with_named(&host, fake_display());
            run(
                FakeTransport::new(broker, 64 << 20)?,
                Placement::HostWindow,
                &host,
            )?;
        }
        _ => {
            return Err(
                "usage: alloc_nv12 --socket PATH | --device | --fake [--participant NAME]".into(),
            );
        }
    }
    Ok(())
}
