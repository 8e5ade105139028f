//! The broker with a real VFIO device: QEMU's `edu` (1234:11e8) behind an emulated
//! intel-iommu, inside the Debian guest of `tests/e2e/vfio-tests.sh`.
//!
//! Each test starts a broker the way `bufbroker serve-local` does (configuration with a
//! `[vfio.edu]` table that binds edu to vfio-pci, `Broker::from_config`, `LocalServer`) and
//! talks to it as a host client over the socket. The broker holds the VFIO device, so the
//! test programs edu's DMA engine through the broker's handle (`Broker::vfio_device`).
//!
//! Without an edu device every test returns early (a host `cargo test`), unless
//! `BUFBROKER_REQUIRE_DEVICES=1` (set by the guest script), which makes that a failure.
//! `dma_limit_*` expects `vfio_iommu_type1`'s `dma_entry_limit` to be 4 (the guest script
//! sets it before running them alone).

// Test code: a panic is how a test reports failure.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bufbroker::config::Config;
use bufbroker::local::{Client, LocalServer};
use bufbroker::session::Broker;
use bufbroker_proto::wire::{
    Allocate, AllocateReply, BufferId, ErrorCode, Features, Free, IovasReply, Message, Placement,
    QueryIovas,
};
use bufbroker_proto::{ConstraintSet, Participant, ParticipantId, Request, Usage};
use bufbroker_vfio::edu::{self, Bar0};

/// edu's PCI address, or `None` (test skipped) without one when devices are not required.
fn edu_address() -> Option<String> {
    edu::address_or_skip().unwrap()
}

/// A running broker with edu as participant `edu` (every owner may use it), serving a local
/// socket from a thread. Buffers come from memfd with no size limit, so that edu's width is
/// what stands in the way of a 1 GiB buffer (the guest's half-of-RAM default would too).
struct Running {
    broker: Arc<Broker>,
    socket: PathBuf,
    _dir: tempfile::TempDir,
}

fn start(address: &str) -> Running {
    let dir = tempfile::tempdir().unwrap();
    let config_file = dir.path().join("bufbroker.toml");
    std::fs::write(
        &config_file,
        format!(
            "[heaps]\nallow = [\"memfd\"]\nmemfd_max_size = 0\n[defaults]\nparticipants = [\"edu\"]\n\
             [vfio.edu]\naddress = \"{address}\"\nbind = true\n"
        ),
    )
    .unwrap();
    let config = Config::load(&config_file).unwrap();
    let broker = Arc::new(Broker::from_config(config).unwrap());
    let socket = dir.path().join("broker.sock");
    let server = LocalServer::bind(&socket, broker.clone()).unwrap();
    std::thread::spawn(move || server.serve());
    Running {
        broker,
        socket,
        _dir: dir,
    }
}

fn connect(socket: &Path) -> Client {
    let (client, hello) =
        Client::connect_hello(socket, Features::HOST_CLIENT_FD | Features::IOVA).unwrap();
    assert!(hello.features.contains(Features::IOVA), "{hello:?}");
    client
}

fn named(name: &str) -> Participant {
    Participant::new(
        ParticipantId::Named(name.into()),
        name,
        Usage::empty(),
        ConstraintSet::default(),
    )
}

/// `count` buffers of 4096x4 pixels for the CPU and edu.
fn request(count: u32) -> Request {
    let cpu = Participant::new(
        ParticipantId::Cpu,
        "cpu",
        Usage::CPU_READ | Usage::CPU_WRITE,
        ConstraintSet::default(),
    );
    Request {
        width: 4096,
        height: 4,
        formats: vec![],
        usage: Usage::empty(),
        participants: vec![cpu, named("edu")],
        count,
    }
}

fn allocate(client: &mut Client, request: Request) -> (Message, Vec<std::os::fd::OwnedFd>) {
    client
        .request(&Message::Allocate(Allocate {
            request,
            placement: Placement::HostClient,
        }))
        .unwrap()
}

fn iovas(client: &mut Client, buffer: BufferId) -> IovasReply {
    match client
        .request(&Message::QueryIovas(QueryIovas { buffer }))
        .unwrap()
        .0
    {
        Message::IovasReply(r) => r,
        other => panic!("{other:?}"),
    }
}

/// A client allocates a buffer for the CPU and edu; the broker maps it below edu's 2^28
/// window and tells the owner the IOVA; edu copies a pattern from the buffer into its own
/// memory and back to another offset; the client sees the bytes through its fd. Freeing the
/// buffer removes the kernel's mapping.
#[test]
fn broker_maps_buffer_for_edu_and_edu_dma_round_trips() {
    let Some(address) = edu_address() else { return };
    let running = start(&address);
    let mut client = connect(&running.socket);
    let edu = running.broker.vfio_device("edu").unwrap();
    let dev = edu.device().unwrap();
    let avail_before = dev.container().iommu_info().unwrap().dma_avail;

    let (reply, fds) = allocate(&mut client, request(1));
    let Message::AllocateReply(AllocateReply { plan, buffers }) = reply else {
        panic!("{reply:?}")
    };
    println!("plan: {} bytes on {}", plan.size, plan.heap);
    let id = buffers[0].id;
    let r = iovas(&mut client, id);
    println!("{r:?}");
    let [m] = r.iovas.as_slice() else {
        panic!("{r:?}")
    };
    assert_eq!(m.participant, "edu");
    assert!(m.iova + m.len <= 1 << 28, "IOVA {:#x}+{:#x}", m.iova, m.len);
    assert!(m.len >= 2 * edu::DMA_SIZE, "{m:?}");
    assert_eq!(
        dev.container().iommu_info().unwrap().dma_avail,
        avail_before.map(|a| a - 1),
        "one kernel mapping per buffer"
    );

    let buffer = File::from(fds.into_iter().next().unwrap());
    let pattern: Vec<u8> = (0..edu::DMA_SIZE).map(|i| (i * 13 + 5) as u8).collect();
    buffer.write_all_at(&pattern, 0).unwrap();
    dev.enable_bus_master().unwrap();
    let bar0 = Bar0::new(dev).unwrap();
    bar0.dma(m.iova, edu::DMA_BUF, edu::DMA_SIZE, false)
        .unwrap();
    bar0.dma(edu::DMA_BUF, m.iova + edu::DMA_SIZE, edu::DMA_SIZE, true)
        .unwrap();
    let mut back = vec![0u8; edu::DMA_SIZE as usize];
    buffer.read_exact_at(&mut back, edu::DMA_SIZE).unwrap();
    assert_eq!(
        back, pattern,
        "edu wrote the pattern into the broker's buffer"
    );

    let (freed, _) = client.request(&Message::Free(Free { buffer: id })).unwrap();
    assert!(matches!(freed, Message::FreeReply(_)), "{freed:?}");
    assert_eq!(
        dev.container().iommu_info().unwrap().dma_avail,
        avail_before,
        "Free unmapped the IOVA"
    );
}

/// A request whose other participant forces buffers edu cannot address (1 GiB multiples,
/// beyond its 28-bit window) is refused, naming edu's address width; nothing is mapped.
#[test]
fn broker_refuses_memory_edu_cannot_address() {
    let Some(address) = edu_address() else { return };
    let running = start(&address);
    let mut client = connect(&running.socket);
    let dev = running.broker.vfio_device("edu").unwrap().device().unwrap();
    let avail_before = dev.container().iommu_info().unwrap().dma_avail;
    let mut huge = ConstraintSet::default();
    huge.layout.size_alignment = 1 << 30;
    let mut req = request(1);
    req.participants.push(Participant::new(
        ParticipantId::Cpu,
        "1G huge-page mapper",
        Usage::CPU_READ,
        huge,
    ));

    let (reply, fds) = allocate(&mut client, req);

    let Message::ErrorReply(e) = reply else {
        panic!("{reply:?}")
    };
    println!("{}", e.message);
    assert_eq!(e.code, ErrorCode::UNSATISFIABLE);
    assert!(
        e.message
            .contains("qemu edu: memory.address_bits = 28 bits"),
        "{}",
        e.message
    );
    assert!(fds.is_empty());
    assert_eq!(
        dev.container().iommu_info().unwrap().dma_avail,
        avail_before
    );
}

/// With room for 4 mappings, an Allocate of 5 buffers for edu is refused as a whole with a
/// message naming the limit, and 4 fit afterwards.
#[test]
fn dma_limit_refuses_the_allocation_with_a_clear_error() {
    let Some(address) = edu_address() else { return };
    let running = start(&address);
    let mut client = connect(&running.socket);
    let dev = running.broker.vfio_device("edu").unwrap().device().unwrap();
    let limit = dev.container().iommu_info().unwrap().dma_avail.unwrap();
    assert_eq!(limit, 4, "run with vfio_iommu_type1 dma_entry_limit=4");

    let (reply, fds) = allocate(&mut client, request(5));

    let Message::ErrorReply(e) = reply else {
        panic!("{reply:?}")
    };
    println!("{}", e.message);
    assert_eq!(e.code, ErrorCode::QUOTA_EXCEEDED);
    assert!(e.message.contains("VFIO device \"edu\""), "{}", e.message);
    assert!(e.message.contains("dma_entry_limit"), "{}", e.message);
    assert!(fds.is_empty());
    assert_eq!(dev.container().iommu_info().unwrap().dma_avail, Some(4));
    let (fits, fds) = allocate(&mut client, request(4));
    assert!(matches!(fits, Message::AllocateReply(_)), "{fits:?}");
    assert_eq!(fds.len(), 4);
    assert_eq!(dev.container().iommu_info().unwrap().dma_avail, Some(0));
}
