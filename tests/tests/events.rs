//! The event queue: a guest that imported a host client's buffer hears `BufferRevoked` when
//! the owner frees it, in a buffer it posted on queue 1 (held until it posts one).

// Test code: a panic is a test failure, which is what these lints would otherwise forbid.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::sync::Arc;
use std::time::Duration;

use bufbroker::config::Config;
use bufbroker::local::{Client, LocalServer};
use bufbroker::session::{Broker, guest_factory};
use bufbroker::vhost::DeviceConfig;
use bufbroker_proto::wire::{
    self, Access, Allocate, BufferId, Event, Features, Free, Grant, Hello, Import, ImportView,
    Message, Placement,
};
use bufbroker_proto::{ConstraintSet, Participant, ParticipantId, Request, Usage};
use bufbroker_tests::broker::TestBroker;
use bufbroker_tests::vmm::{ChannelEvent, Vmm, VmmOptions};

const WAIT: Duration = Duration::from_secs(10);

struct Setup {
    device: TestBroker,
    local: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

fn setup() -> Setup {
    let broker = Arc::new(Broker::from_config(Config::default()).unwrap());
    let device = TestBroker::start(
        guest_factory(broker.clone()),
        DeviceConfig {
            shmem_size: 16 << 20,
            ..DeviceConfig::default()
        },
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let local = dir.path().join("local.sock");
    let server = LocalServer::bind(&local, broker).unwrap();
    std::thread::spawn(move || server.serve());
    Setup {
        device,
        local,
        _dir: dir,
    }
}

fn ask(vmm: &mut Vmm, id: u32, message: &Message) -> Message {
    let bytes = vmm
        .request(&wire::encode(message, id).unwrap(), 64 * 1024)
        .unwrap();
    wire::decode(&bytes).unwrap().1
}

fn guest(s: &Setup) -> Vmm {
    let mut vmm = Vmm::connect_and_start(s.device.socket(), VmmOptions::default()).unwrap();
    let reply = ask(
        &mut vmm,
        1,
        &Message::Hello(Hello {
            min_version: wire::MIN_PROTOCOL_VERSION,
            max_version: wire::PROTOCOL_VERSION,
            features: Features::all(),
            client: "event test".into(),
        }),
    );
    let Message::HelloReply(r) = reply else {
        panic!("expected HelloReply, got {reply:?}")
    };
    assert!(r.features.contains(Features::EVENTS));
    vmm
}

/// A host client's buffer, granted to the guest ("test") and imported into its window.
fn host_buffer_imported_by_the_guest(s: &Setup, vmm: &mut Vmm) -> (Client, BufferId) {
    let usage = Usage::CPU_READ | Usage::CPU_WRITE;
    let request = Request {
        width: 64,
        height: 64,
        formats: vec!["XRGB8888".parse().unwrap()],
        usage,
        participants: vec![Participant::new(
            ParticipantId::Cpu,
            "cpu",
            usage,
            ConstraintSet::default(),
        )],
        count: 1,
    };
    let (mut client, _) = Client::connect_hello(&s.local, Features::all()).unwrap();
    let (reply, _fds) = client
        .request(&Message::Allocate(Allocate {
            request,
            placement: Placement::HostClient,
        }))
        .unwrap();
    let Message::AllocateReply(alloc) = reply else {
        panic!("expected AllocateReply, got {reply:?}")
    };
    let buffer = alloc.buffers[0];
    let (reply, _) = client
        .request(&Message::Grant(Grant {
            buffer: buffer.id,
            grantee: "test".into(),
            access: Access::ReadOnly,
        }))
        .unwrap();
    assert!(matches!(reply, Message::GrantReply(_)), "{reply:?}");
    let reply = ask(
        vmm,
        2,
        &Message::Import(Import {
            uuid: buffer.uuid,
            view: ImportView::HostWindow,
        }),
    );
    assert!(matches!(reply, Message::ImportReply(_)), "{reply:?}");
    (client, buffer.id)
}

fn revoked(bytes: &[u8]) -> BufferId {
    let (header, message) = wire::decode(bytes).unwrap();
    assert_eq!(header.request_id, 0);
    match message {
        Message::Event(Event::BufferRevoked { buffer, reason }) => {
            assert!(!reason.is_empty());
            buffer
        }
        other => panic!("expected BufferRevoked, got {other:?}"),
    }
}

#[test]
fn owner_freeing_an_imported_buffer_sends_buffer_revoked_on_the_event_queue() {
    let s = setup();
    let mut vmm = guest(&s);
    vmm.post_event_buffers(4).unwrap();
    let (mut client, id) = host_buffer_imported_by_the_guest(&s, &mut vmm);

    let (reply, _) = client.request(&Message::Free(Free { buffer: id })).unwrap();
    assert!(matches!(reply, Message::FreeReply(_)), "{reply:?}");

    assert_eq!(revoked(&vmm.wait_event(WAIT).unwrap()), id);
    // The guest's window mapping of it is gone too.
    assert!(vmm.channel.wait_for(WAIT, |e| {
        e.iter()
            .any(|e| matches!(e, ChannelEvent::ShmemUnmap { .. }))
    }));
}

#[test]
fn an_event_without_a_posted_buffer_waits_for_one() {
    let s = setup();
    let mut vmm = guest(&s);
    let (client, id) = host_buffer_imported_by_the_guest(&s, &mut vmm);

    // The owner goes away (its connection closes): its buffers are freed.
    drop(client);
    std::thread::sleep(Duration::from_millis(200));
    assert!(vmm.wait_event(Duration::from_millis(100)).is_err());
    vmm.post_event_buffers(1).unwrap();

    assert_eq!(revoked(&vmm.wait_event(WAIT).unwrap()), id);
}
