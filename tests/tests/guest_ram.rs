//! Guest-RAM placement through the whole stack: the guest offers its own pages, the broker
//! checks the list against the memory table and makes buffers of them; a host client imports
//! one (a udmabuf where /dev/udmabuf exists, else the import is refused); bad lists get
//! `INVALID_ARGUMENT` and the device keeps serving.

// Test code: a panic is a test failure, which is what these lints would otherwise forbid.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use bufbroker::config::Config;
use bufbroker::heap::Mapping;
use bufbroker_proto::wire::{
    Access, Allocate, ErrorCode, Features, GuestRange, Location, Message, Ping, Placement,
};
use bufbroker_tests::session::{
    FullBroker, XRGB8888, ask, cpu_request, grant_to_host, host_import,
};
use bufbroker_tests::vmm::{Vmm, VmmOptions};
use vm_memory::{Bytes, GuestAddress};

const MIB: u64 = 1 << 20;
/// Guest RAM the tests use: far above the harness's rings and the data slots it hands out.
const FREE_RAM: u64 = 24 * MIB;

fn setup() -> FullBroker {
    FullBroker::start(Config::default(), 16 * MIB).unwrap()
}

fn guest(s: &FullBroker) -> Vmm {
    let (vmm, hello) = s.guest("guest-ram test").unwrap();
    assert!(hello.features.contains(Features::GUEST_RAM));
    vmm
}

/// 64×64 XRGB8888: 16 KiB.
fn allocate_in(ranges: Vec<GuestRange>) -> Message {
    Message::Allocate(Allocate {
        request: cpu_request(XRGB8888, 64, 64, 1, "cpu"),
        placement: Placement::GuestRam { ranges },
    })
}

fn range(addr: u64, len: u64) -> GuestRange {
    GuestRange { addr, len }
}

#[test]
fn guest_pages_become_a_buffer_a_host_client_can_import_where_udmabuf_exists() {
    let s = setup();
    let mut vmm = guest(&s);
    // Two pieces of 8 KiB, out of order in guest memory.
    let (a, b) = (FREE_RAM + 2 * MIB, FREE_RAM);
    let pattern: Vec<u8> = (0..16384u32).map(|i| (i * 13 + 5) as u8).collect();
    vmm.memory()
        .write_slice(&pattern[..8192], GuestAddress(a))
        .unwrap();
    vmm.memory()
        .write_slice(&pattern[8192..], GuestAddress(b))
        .unwrap();

    let reply = ask(
        &mut vmm,
        2,
        &allocate_in(vec![range(a, 8192), range(b, 8192)]),
    )
    .unwrap();
    let Message::AllocateReply(alloc) = reply else {
        panic!("expected AllocateReply, got {reply:?}")
    };
    let buffer = alloc.buffers[0];
    assert_eq!(buffer.location, Location::GuestRam);
    let reply = grant_to_host(&mut vmm, 3, buffer.id, Access::ReadOnly).unwrap();
    assert!(matches!(reply, Message::GrantReply(_)), "{reply:?}");

    let (reply, fds) = host_import(&s.local, buffer.uuid).unwrap();
    if std::path::Path::new("/dev/udmabuf").exists() {
        let Message::ImportReply(_) = reply else {
            panic!("expected ImportReply, got {reply:?}")
        };
        let map = Mapping::new(std::os::fd::AsFd::as_fd(&fds[0]), 0, 16384, false).unwrap();
        let mut back = vec![0u8; 16384];
        map.read_at(0, &mut back).unwrap();
        assert_eq!(back, pattern);
    } else {
        // Without udmabuf the only descriptor would be the guest's whole memory.
        let Message::ErrorReply(e) = reply else {
            panic!("expected ErrorReply, got {reply:?}")
        };
        assert_eq!(e.code, ErrorCode::UNSUPPORTED, "{}", e.message);
        assert!(fds.is_empty());
    }
}

#[test]
fn bad_scatter_gather_lists_get_invalid_argument_and_the_device_keeps_serving() {
    let s = setup();
    let mut vmm = guest(&s);
    let ram_end = VmmOptions::default().mem_size as u64;
    let cases = [
        ("outside guest RAM", vec![range(ram_end, 16384)]),
        ("straddling its end", vec![range(ram_end - 8192, 16384)]),
        ("unaligned", vec![range(FREE_RAM + 1, 16384)]),
        ("overflowing", vec![range(u64::MAX - 4095, 16384)]),
        (
            "overlapping",
            vec![range(FREE_RAM, 12288), range(FREE_RAM + 8192, 8192)],
        ),
        ("too short", vec![range(FREE_RAM, 8192)]),
        ("empty", vec![]),
    ];
    for (n, (what, ranges)) in cases.into_iter().enumerate() {
        let reply = ask(&mut vmm, 10 + n as u32, &allocate_in(ranges)).unwrap();
        let Message::ErrorReply(e) = reply else {
            panic!("{what}: expected ErrorReply, got {reply:?}")
        };
        assert_eq!(e.code, ErrorCode::INVALID_ARGUMENT, "{what}: {}", e.message);
    }

    let reply = ask(&mut vmm, 30, &Message::Ping(Ping { payload: vec![] })).unwrap();
    assert!(matches!(reply, Message::Pong(_)), "{reply:?}");
    let reply = ask(&mut vmm, 31, &allocate_in(vec![range(FREE_RAM, 16384)])).unwrap();
    assert!(matches!(reply, Message::AllocateReply(_)), "{reply:?}");
}
