//! Arenas through the whole stack: a guest's host-window buffers are carved from memfds mapped
//! into its window once (one SHMEM_MAP per arena), an arena is unmapped with its last buffer,
//! buffers that cannot come from an arena get a map of their own, and a full window is a clear
//! error after which the device keeps serving.

// Test code: a panic is a test failure, which is what these lints would otherwise forbid.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::time::Duration;

use bufbroker::config::{ArenaConfig, ArenaMode, Config};
use bufbroker::heap::Mapping;
use bufbroker::local::Client;
use bufbroker_proto::Request;
use bufbroker_proto::wire::{
    Access, Allocate, AllocateReply, BufferInfo, ErrorCode, Export, Features, Free, Grant, Import,
    ImportView, Location, Message, Ping, Placement,
};
use bufbroker_tests::session::{
    FullBroker, XRGB8888, allocate_host_window, ask, cpu_request, grant_to_host, host_import,
};
use bufbroker_tests::vmm::{ChannelEvent, Vmm};

const WAIT: Duration = Duration::from_secs(10);
const MIB: u64 = 1 << 20;

fn setup(arenas: ArenaConfig, window: u64) -> FullBroker {
    let config = Config {
        arenas,
        ..Config::default()
    };
    FullBroker::start(config, window).unwrap()
}

fn guest(s: &FullBroker) -> Vmm {
    s.guest("arena test").unwrap().0
}

/// `width`×`height` XR24 (4 bytes per pixel) for the CPU.
fn xr24(width: u32, height: u32, count: u32) -> Request {
    cpu_request(XRGB8888, width, height, count, "guest cpu")
}

fn allocate(vmm: &mut Vmm, id: u32, request: Request) -> Message {
    allocate_host_window(vmm, id, request).unwrap()
}

fn arenas(size: u64) -> ArenaConfig {
    ArenaConfig {
        mode: ArenaMode::Always,
        size,
        keep_warm: false,
    }
}

fn allocated(reply: Message) -> AllocateReply {
    match reply {
        Message::AllocateReply(r) => r,
        other => panic!("expected AllocateReply, got {other:?}"),
    }
}

fn window_range(b: &BufferInfo) -> (u64, u64) {
    match b.location {
        Location::HostWindow { offset, len, .. } => (offset, len),
        other => panic!("not in the window: {other:?}"),
    }
}

fn maps(events: &[ChannelEvent]) -> Vec<(u64, u64)> {
    events
        .iter()
        .filter_map(|e| match e {
            ChannelEvent::ShmemMap {
                shm_offset, len, ..
            } => Some((*shm_offset, *len)),
            _ => None,
        })
        .collect()
}

fn unmaps(events: &[ChannelEvent]) -> usize {
    events
        .iter()
        .filter(|e| matches!(e, ChannelEvent::ShmemUnmap { .. }))
        .count()
}

#[test]
fn many_allocations_share_one_shmem_map_and_the_last_free_unmaps_it() {
    let s = setup(arenas(16 * MIB), 64 * MIB);
    let mut vmm = guest(&s);

    // 8 buffers of 256 KiB, in two requests.
    let mut buffers = allocated(allocate(&mut vmm, 2, xr24(256, 256, 4))).buffers;
    buffers.extend(allocated(allocate(&mut vmm, 3, xr24(256, 256, 4))).buffers);

    let events = vmm.channel.events();
    assert_eq!(maps(&events), [(0, 16 * MIB)], "{events:?}");
    let mut ranges: Vec<(u64, u64)> = buffers.iter().map(window_range).collect();
    ranges.sort_unstable();
    for pair in ranges.windows(2) {
        assert!(pair[0].0 + pair[0].1 <= pair[1].0, "overlap: {ranges:?}");
    }
    assert!(ranges.iter().all(|&(o, l)| o + l <= 16 * MIB));
    for &(offset, _) in &ranges {
        assert_eq!(
            vmm.channel.read_window(offset, 4096).unwrap(),
            vec![0; 4096]
        );
    }

    for (n, b) in buffers.iter().enumerate() {
        let reply = ask(
            &mut vmm,
            10 + n as u32,
            &Message::Free(Free { buffer: b.id }),
        )
        .unwrap();
        assert!(matches!(reply, Message::FreeReply(_)), "{reply:?}");
        let expected = usize::from(n + 1 == buffers.len());
        assert!(
            vmm.channel.wait_for(WAIT, |e| unmaps(e) == expected),
            "after {} frees: {:?}",
            n + 1,
            vmm.channel.events()
        );
    }
    assert_eq!(maps(&vmm.channel.events()).len(), 1);
    assert_eq!(s.broker.registry().total_bytes(), 0);

    // The next allocation maps a fresh arena.
    allocated(allocate(&mut vmm, 30, xr24(256, 256, 1)));
    assert_eq!(maps(&vmm.channel.events()).len(), 2);
}

#[test]
fn a_buffer_larger_than_the_arena_size_gets_an_arena_of_its_own_size() {
    let s = setup(arenas(MIB), 64 * MIB);
    let mut vmm = guest(&s);

    let small = allocated(allocate(&mut vmm, 2, xr24(64, 64, 1)));
    let large = allocated(allocate(&mut vmm, 3, xr24(1024, 1024, 1)));

    let (large_offset, large_len) = window_range(&large.buffers[0]);
    assert_eq!(large_len, 4 * MIB);
    assert_eq!(
        maps(&vmm.channel.events()),
        [(0, MIB), (large_offset, 4 * MIB)]
    );
    assert_eq!(window_range(&small.buffers[0]).0, 0);
}

#[test]
fn arena_buffers_and_an_imported_buffer_with_its_own_map_coexist() {
    let s = setup(arenas(16 * MIB), 64 * MIB);
    let mut vmm = guest(&s);
    let own = allocated(allocate(&mut vmm, 2, xr24(256, 256, 2)));

    // A host client allocates a buffer and grants it to the guest ("test", the socket name).
    let (mut client, _) = Client::connect_hello(&s.local, Features::all()).unwrap();
    let (reply, fds) = client
        .request(&Message::Allocate(Allocate {
            request: xr24(128, 128, 1),
            placement: Placement::HostClient,
        }))
        .unwrap();
    let host = allocated(reply);
    let host_map = Mapping::new(std::os::fd::AsFd::as_fd(&fds[0]), 0, 4096, true).unwrap();
    host_map.write_at(0, b"from the host").unwrap();
    let (reply, _) = client
        .request(&Message::Grant(Grant {
            buffer: host.buffers[0].id,
            grantee: "test".into(),
            access: Access::ReadWrite,
        }))
        .unwrap();
    assert!(matches!(reply, Message::GrantReply(_)), "{reply:?}");

    // The guest imports it into its window: a map of its own, next to the arena.
    let reply = ask(
        &mut vmm,
        3,
        &Message::Import(Import {
            uuid: host.buffers[0].uuid,
            view: ImportView::HostWindow,
        }),
    )
    .unwrap();
    let Message::ImportReply(import) = reply else {
        panic!("expected ImportReply, got {reply:?}")
    };
    let (offset, len) = window_range(&import.buffer);
    assert_eq!(maps(&vmm.channel.events()), [(0, 16 * MIB), (offset, len)]);
    assert_eq!(
        vmm.channel.read_window(offset, 13).unwrap(),
        b"from the host"
    );

    // Freeing the guest's own buffers unmaps the arena only; the import stays.
    for (n, b) in own.buffers.iter().enumerate() {
        ask(
            &mut vmm,
            4 + n as u32,
            &Message::Free(Free { buffer: b.id }),
        )
        .unwrap();
    }
    assert!(vmm.channel.wait_for(WAIT, |e| unmaps(e) == 1));
    assert!(vmm.channel.events().contains(&ChannelEvent::ShmemUnmap {
        shm_offset: 0,
        len: 16 * MIB
    }));
    assert_eq!(
        vmm.channel.read_window(offset, 13).unwrap(),
        b"from the host"
    );
}

#[test]
fn a_host_client_importing_an_arena_buffer_sees_the_guests_bytes() {
    let s = setup(arenas(16 * MIB), 64 * MIB);
    let mut vmm = guest(&s);
    // A first buffer, so the second one starts inside the arena.
    allocated(allocate(&mut vmm, 2, xr24(256, 256, 1)));
    let alloc = allocated(allocate(&mut vmm, 3, xr24(256, 256, 1)));
    let buffer = alloc.buffers[0];
    let (offset, _) = window_range(&buffer);
    assert!(offset > 0);
    ask(&mut vmm, 4, &Message::Export(Export { buffer: buffer.id })).unwrap();
    grant_to_host(&mut vmm, 5, buffer.id, Access::ReadWrite).unwrap();

    let (reply, fds) = host_import(&s.local, buffer.uuid).unwrap();
    let Message::ImportReply(import) = reply else {
        panic!("expected ImportReply, got {reply:?}")
    };
    // The plane offsets say where the buffer starts in the descriptor it came with: 0 for its
    // own dmabuf (udmabuf), its offset in the arena memfd otherwise.
    let start = import.plan.planes[0].offset;
    assert!(start == 0 || start == offset, "plane offset {start:#x}");
    let host = Mapping::new(std::os::fd::AsFd::as_fd(&fds[0]), start, 4096, true).unwrap();
    host.write_at(0, b"written by the host").unwrap();

    assert_eq!(
        vmm.channel.read_window(offset, 19).unwrap(),
        b"written by the host"
    );
}

#[test]
fn a_full_window_is_an_out_of_memory_reply_and_the_device_keeps_serving() {
    let s = setup(arenas(4 * MIB), 8 * MIB);
    let mut vmm = guest(&s);
    // 2 MiB buffers: two arenas of two buffers fill the window.
    let mut held = Vec::new();
    for id in 2..6 {
        held.extend(allocated(allocate(&mut vmm, id, xr24(512, 1024, 1))).buffers);
    }

    let reply = allocate(&mut vmm, 6, xr24(512, 1024, 1));

    let Message::ErrorReply(e) = reply else {
        panic!("expected ErrorReply, got {reply:?}")
    };
    assert_eq!(e.code, ErrorCode::OUT_OF_MEMORY);
    assert!(e.message.contains("shared-memory window"), "{}", e.message);
    assert_eq!(maps(&vmm.channel.events()).len(), 2);
    let reply = ask(&mut vmm, 7, &Message::Ping(Ping { payload: vec![1] })).unwrap();
    assert!(matches!(reply, Message::Pong(_)), "{reply:?}");
    ask(&mut vmm, 8, &Message::Free(Free { buffer: held[0].id })).unwrap();
    allocated(allocate(&mut vmm, 9, xr24(512, 1024, 1)));
}
