//! Every public call of the guest library's `Client`, against the real broker: as a guest
//! through the vhost-user device ([`HarnessTransport`] over the harness VMM) and as a host
//! process through `LocalTransport` on the broker's local socket. Buffers cross between the
//! two without a copy: what one side writes through its mapping, the other reads through its
//! own.

// Test code: a panic is a test failure, which is what these lints would otherwise forbid.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::time::Duration;

use bufbroker::config::Config;
use bufbroker_guest::local::LocalTransport;
use bufbroker_guest::participants;
use bufbroker_guest::{BufferMap, Client, ClientError, ClientOptions, TransportError};
use bufbroker_proto::wire::{
    Access, ErrorCode, Event, Features, ImportView, Location, MessageType, Placement, SolveReply,
};
use bufbroker_proto::{ConstraintSet, Participant, ParticipantId, Request, Usage};
use bufbroker_tests::session::{FullBroker, NV12, XRGB8888, cpu_request};
use bufbroker_tests::transport::HarnessTransport;
use bufbroker_tests::vmm::{ChannelEvent, Vmm, VmmOptions};

const WAIT: Duration = Duration::from_secs(10);

fn setup() -> FullBroker {
    FullBroker::start(Config::default(), 64 << 20).unwrap()
}

/// The guest: the library's client through the device (its owner is "test").
fn guest(s: &FullBroker) -> Client<HarnessTransport> {
    let vmm = Vmm::connect_and_start(s.device.socket(), VmmOptions::default()).unwrap();
    Client::connect(
        HarnessTransport::new(vmm).unwrap(),
        &ClientOptions::default(),
    )
    .unwrap()
}

/// A host process on the local socket (its owner is `uid:UID`).
fn host(s: &FullBroker) -> Client<LocalTransport> {
    let transport = LocalTransport::connect(s.local()).unwrap();
    Client::connect(transport, &ClientOptions::default()).unwrap()
}

fn host_owner() -> String {
    format!("uid:{}", rustix::process::getuid().as_raw())
}

fn nv12_1080p() -> Request {
    cpu_request(NV12, 1920, 1080, 1, "guest cpu")
}

fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

fn read(map: &BufferMap, at: usize, len: usize) -> Vec<u8> {
    let mut out = vec![0u8; len];
    map.read_at(at, &mut out).unwrap();
    out
}

fn broker_code(e: &ClientError) -> (MessageType, ErrorCode) {
    match e {
        ClientError::Broker { request, code, .. } => (*request, *code),
        other => panic!("expected a broker error, got {other:?}"),
    }
}

#[test]
fn hello_ping_limits_stats_and_registered_participants_through_the_device() {
    let s = setup();
    let mut g = guest(&s);

    let session = g.session().clone();
    for f in [
        Features::HOST_WINDOW,
        Features::SHARED_OBJECTS,
        Features::EVENTS,
        Features::REGISTERED_PARTICIPANTS,
    ] {
        assert!(session.features.contains(f), "{session:?}");
    }
    assert!(!session.broker.is_empty());
    assert_eq!(g.limits().unwrap(), session.limits);

    g.ping(b"").unwrap();
    g.ping(&pattern(1, 1024)).unwrap();
    // Beyond the protocol's 1024-byte ping payload the library refuses to encode it.
    assert!(matches!(
        g.ping(&pattern(1, 1025)).unwrap_err(),
        ClientError::Encode(MessageType::Ping, _)
    ));

    // Nothing allocated yet: the guest's owner shows no bytes.
    let stats = g.stats().unwrap();
    assert_eq!(stats.len(), 1, "{stats:?}");
    assert_eq!(stats[0].owner, "test");
    assert_eq!((stats[0].bytes, stats[0].buffers), (0, 0));

    // A registered participant is usable by name until it is unregistered.
    let display = participants::cpu();
    let handle = g.register_participant("scanout", display).unwrap();
    let mut request = cpu_request(XRGB8888, 640, 480, 1, "cpu");
    request
        .participants
        .push(participants::named("scanout", Usage::CPU_READ));
    let SolveReply::Solved(solved) = g.solve(&request).unwrap() else {
        panic!("a registered participant did not solve")
    };
    assert!(solved.plans[0].size >= 640 * 480 * 4);
    let again = g
        .register_participant("scanout", participants::cpu())
        .unwrap_err();
    assert_eq!(
        broker_code(&again),
        (MessageType::RegisterParticipant, ErrorCode::ALREADY_EXISTS)
    );
    g.unregister_participant(handle).unwrap();
    assert_eq!(
        broker_code(&g.solve(&request).unwrap_err()),
        (MessageType::Solve, ErrorCode::NOT_FOUND)
    );
    assert_eq!(
        broker_code(&g.unregister_participant(handle).unwrap_err()).0,
        MessageType::UnregisterParticipant
    );
    // The session still serves after the refusals.
    g.ping(b"still there").unwrap();
}

#[test]
fn solve_ranks_plans_and_an_unsatisfiable_request_is_a_diagnostic() {
    let s = setup();
    let mut g = guest(&s);

    let SolveReply::Solved(solved) = g.solve(&nv12_1080p()).unwrap() else {
        panic!("NV12 1080p for the CPU did not solve")
    };
    assert_eq!(solved.plans[0].size, 1920 * 1080 * 3 / 2);
    assert_eq!(solved.plans[0].planes.len(), 2);

    // A participant that only takes the CMA heap, which the default broker does not offer.
    let mut request = nv12_1080p();
    let mut only_cma = ConstraintSet::default();
    only_cma.memory.heaps = vec!["linux,cma".into()];
    request.participants.push(Participant::new(
        ParticipantId::GuestLocal(1),
        "needs cma",
        Usage::empty(),
        only_cma,
    ));
    let SolveReply::Unsatisfiable(diagnostic) = g.solve(&request).unwrap() else {
        panic!("a CMA-only participant solved")
    };
    assert!(
        format!("{diagnostic:?}").contains("needs cma"),
        "{diagnostic:?}"
    );
    let err = g.allocate(&request, Placement::HostWindow).unwrap_err();
    assert_eq!(
        broker_code(&err),
        (MessageType::Allocate, ErrorCode::UNSATISFIABLE)
    );
}

#[test]
fn host_window_buffer_is_written_read_unmapped_remapped_and_freed() {
    let s = setup();
    let mut g = guest(&s);

    let alloc = g.allocate(&nv12_1080p(), Placement::HostWindow).unwrap();
    let plan = alloc.plan.clone();
    assert_eq!(plan.size, 1920 * 1080 * 3 / 2);
    let mut buffer = alloc.buffers.into_iter().next().unwrap();
    let Location::HostWindow { offset, len, .. } = buffer.info.location else {
        panic!("not in the window: {:?}", buffer.info.location)
    };
    assert!(len >= plan.size);
    // The VMM saw the SHMEM_MAP of that range before the reply came.
    assert!(
        g.transport()
            .vmm()
            .channel
            .events()
            .iter()
            .any(|e| matches!(
                e,
                ChannelEvent::ShmemMap { shm_offset, .. } if *shm_offset == offset
            ))
    );
    let stats = g.stats().unwrap();
    assert_eq!((stats[0].buffers, stats[0].bytes >= plan.size), (1, true));

    // A pattern through the library's mapping of the window, at both ends of the buffer, is
    // what the VMM's window holds.
    let map = g.map(&buffer, &plan).unwrap();
    assert_eq!(map.len() as u64, plan.size);
    let head = pattern(7, 4096);
    let tail_at = plan.size as usize - 4096;
    map.write_at(0, &head).unwrap();
    map.write_at(tail_at, &head).unwrap();
    assert_eq!(read(&map, 0, 4096), head);
    assert_eq!(
        g.transport()
            .vmm()
            .channel
            .read_window(offset, 4096)
            .unwrap(),
        head
    );
    assert!(map.write_at(plan.size as usize - 1, b"xx").is_err());
    drop(map);

    // Unmapped: the range goes away, the buffer stays.
    g.unmap_window(&mut buffer).unwrap();
    assert_eq!(buffer.info.location, Location::Unmapped);
    assert!(
        g.transport()
            .vmm()
            .channel
            .events()
            .iter()
            .any(|e| matches!(
                e,
                ChannelEvent::ShmemUnmap { shm_offset, .. } if *shm_offset == offset
            ))
    );
    assert!(matches!(
        g.map(&buffer, &plan),
        Err(ClientError::NotMappable(_, Location::Unmapped))
    ));
    assert_eq!(g.stats().unwrap()[0].buffers, 1);

    // Mapped again: the same bytes.
    g.map_window(&mut buffer, &plan).unwrap();
    assert!(matches!(buffer.info.location, Location::HostWindow { .. }));
    let map = g.map(&buffer, &plan).unwrap();
    assert_eq!(read(&map, 0, 4096), head);
    assert_eq!(read(&map, tail_at, 4096), head);
    drop(map);

    let id = buffer.id();
    let held = g.stats().unwrap()[0].bytes;
    g.free(id).unwrap();
    // No buffer left; the owner's bytes may still count what the recycling pool keeps of it.
    let stats = g.stats().unwrap();
    assert_eq!(stats[0].buffers, 0);
    assert!(stats[0].bytes <= held, "{stats:?}");
    assert_eq!(
        broker_code(&g.free(id).unwrap_err()),
        (MessageType::Free, ErrorCode::NOT_FOUND)
    );
}

#[test]
fn guest_buffer_exported_and_granted_is_imported_by_a_host_client_without_a_copy() {
    let s = setup();
    let mut g = guest(&s);
    let mut h = host(&s);
    assert!(h.session().features.contains(Features::HOST_CLIENT_FD));

    // The host client's own buffer comes with an fd it maps.
    let own = h
        .allocate(
            &cpu_request(XRGB8888, 64, 64, 2, "host cpu"),
            Placement::HostClient,
        )
        .unwrap();
    assert_eq!(own.buffers.len(), 2);
    for (i, b) in own.buffers.iter().enumerate() {
        assert!(b.fd.is_some());
        let map = h.map(b, &own.plan).unwrap();
        map.write_at(0, &pattern(i as u8, 256)).unwrap();
        assert_eq!(read(&map, 0, 256), pattern(i as u8, 256));
    }

    // The guest writes into its window buffer, exports it and grants it to the host client.
    let alloc = g.allocate(&nv12_1080p(), Placement::HostWindow).unwrap();
    let buffer = &alloc.buffers[0];
    let guest_map = g.map(buffer, &alloc.plan).unwrap();
    let written = pattern(42, 8192);
    guest_map.write_at(0, &written).unwrap();
    let uuid = g.export(buffer.id()).unwrap();
    assert_eq!(uuid, buffer.info.uuid);
    let granted = g
        .grant(buffer.id(), &host_owner(), Access::ReadWrite)
        .unwrap();
    assert_eq!(granted, uuid);

    // The host client imports it as an fd: the guest's bytes, the same plan.
    let imported = h.import(uuid, ImportView::HostClient).unwrap();
    assert_eq!(imported.plan, alloc.plan);
    assert_eq!(imported.access, Access::ReadWrite);
    assert_eq!(imported.buffer.info.uuid, uuid);
    let host_map = h.map(&imported.buffer, &imported.plan).unwrap();
    assert_eq!(read(&host_map, 0, written.len()), written);

    // And the other way: the host's write shows in the guest's window.
    let answer = pattern(99, 4096);
    let at = alloc.plan.size as usize - 4096;
    host_map.write_at(at, &answer).unwrap();
    assert_eq!(read(&guest_map, at, 4096), answer);

    // Importing an unknown UUID is refused.
    let err = h
        .import(uuid::Uuid::from_u128(1), ImportView::HostClient)
        .unwrap_err();
    assert_eq!(broker_code(&err).0, MessageType::Import);

    // The owner frees it. Local sessions do not negotiate EVENTS (PROTOCOL.md: only a guest
    // device offers them), so the host client hears nothing; its import is gone, while its
    // mapping keeps the memory alive.
    assert!(!h.session().features.contains(Features::EVENTS));
    drop(guest_map);
    g.free(buffer.id()).unwrap();
    assert!(h.next_event(None).unwrap().is_none());
    assert_eq!(
        broker_code(&h.free(imported.buffer.id()).unwrap_err()),
        (MessageType::Free, ErrorCode::NOT_FOUND)
    );
    assert_eq!(read(&host_map, at, 4096), answer);
}

#[test]
fn host_buffer_imported_into_the_guest_window_and_revoked_by_its_owner() {
    let s = setup();
    let mut g = guest(&s);
    let mut h = host(&s);
    assert!(g.next_event(None).unwrap().is_none());

    let alloc = h
        .allocate(
            &cpu_request(XRGB8888, 256, 64, 1, "host cpu"),
            Placement::HostClient,
        )
        .unwrap();
    let buffer = &alloc.buffers[0];
    let host_map = h.map(buffer, &alloc.plan).unwrap();
    let written = pattern(5, 4096);
    host_map.write_at(0, &written).unwrap();
    h.export(buffer.id()).unwrap();
    let uuid = h.grant(buffer.id(), "test", Access::ReadWrite).unwrap();

    // Imported without a view, then mapped into the window: the host's bytes.
    let mut imported = g.import(uuid, ImportView::None).unwrap();
    assert_eq!(imported.plan, alloc.plan);
    assert_eq!(imported.buffer.info.location, Location::Unmapped);
    g.map_window(&mut imported.buffer, &imported.plan).unwrap();
    let guest_map = g.map(&imported.buffer, &imported.plan).unwrap();
    assert_eq!(read(&guest_map, 0, 4096), written);
    drop(guest_map);

    // The owner frees it: the guest hears it on the event queue.
    h.free(buffer.id()).unwrap();
    let event = g.next_event(Some(WAIT)).unwrap();
    assert!(
        matches!(event, Some(Event::BufferRevoked { buffer, .. }) if buffer == imported.buffer.id()),
        "{event:?}"
    );
    assert!(g.next_event(None).unwrap().is_none());
    // The revoked import is gone for the guest too.
    assert_eq!(
        broker_code(&g.free(imported.buffer.id()).unwrap_err()),
        (MessageType::Free, ErrorCode::NOT_FOUND)
    );
}

#[test]
fn harness_transport_times_out_once_and_is_broken_afterwards() {
    let s = setup();
    let mut g = guest(&s);
    g.ping(b"before").unwrap();

    // The guest resets the device (rings disabled): nothing answers the next request.
    g.transport_mut().vmm_mut().reset().unwrap();
    g.transport_mut().set_timeout(Duration::from_millis(200));
    let err = g.ping(b"lost").unwrap_err();
    assert!(
        matches!(
            err,
            ClientError::Transport(TransportError::Timeout(t)) if t == Duration::from_millis(200)
        ),
        "{err:?}"
    );
    assert!(g.transport().is_broken());
    assert!(matches!(
        g.ping(b"after").unwrap_err(),
        ClientError::Transport(TransportError::Broken)
    ));
    assert!(matches!(
        g.next_event(None).unwrap_err(),
        ClientError::Transport(TransportError::Broken)
    ));
}

#[test]
fn host_client_maps_a_guest_arena_buffer_it_imported() {
    // With arenas the guest's buffers are carved from one memfd: a host client's import comes
    // as that memfd, with plane offsets relative to it (the buffer starts inside it).
    let config = Config {
        arenas: bufbroker::config::ArenaConfig {
            mode: bufbroker::config::ArenaMode::Always,
            size: 16 << 20,
            keep_warm: false,
        },
        ..Config::default()
    };
    let s = FullBroker::start(config, 64 << 20).unwrap();
    let mut g = guest(&s);
    let mut h = host(&s);

    // The second buffer of the arena starts past its beginning.
    let request = cpu_request(XRGB8888, 256, 64, 2, "guest cpu");
    let alloc = g.allocate(&request, Placement::HostWindow).unwrap();
    let buffer = &alloc.buffers[1];
    let Location::HostWindow { offset, .. } = buffer.info.location else {
        panic!("not in the window: {:?}", buffer.info.location)
    };
    assert!(offset > 0);
    let written = pattern(11, 4096);
    g.map(buffer, &alloc.plan)
        .unwrap()
        .write_at(0, &written)
        .unwrap();
    g.map(&alloc.buffers[0], &alloc.plan)
        .unwrap()
        .fill(0, 4096, 0xee)
        .unwrap();
    let uuid = g.export(buffer.id()).unwrap();
    g.grant(buffer.id(), &host_owner(), Access::ReadWrite)
        .unwrap();

    let imported = h.import(uuid, ImportView::HostClient).unwrap();
    let start = imported.plan.planes[0].offset;
    assert!(start == 0 || start == offset, "plane offset {start:#x}");
    let map = h.map(&imported.buffer, &imported.plan).unwrap();
    assert_eq!(read(&map, start as usize, 4096), written);
}
