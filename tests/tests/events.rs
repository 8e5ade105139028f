//! The event queue: a guest that imported a host client's buffer hears `BufferRevoked` when
//! the owner frees it, in a buffer it posted on queue 1 (held until it posts one).

// Test code: a panic is a test failure, which is what these lints would otherwise forbid.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::time::Duration;

use bufbroker::config::Config;
use bufbroker::local::Client;
use bufbroker_proto::wire::{
    self, Access, Allocate, BufferId, Event, Features, Free, Grant, Import, ImportView, Message,
    Placement,
};
use bufbroker_tests::session::{FullBroker, XRGB8888, ask, cpu_request};
use bufbroker_tests::vmm::{ChannelEvent, Vmm};

const WAIT: Duration = Duration::from_secs(10);

fn setup() -> FullBroker {
    FullBroker::start(Config::default(), 16 << 20).unwrap()
}

fn guest(s: &FullBroker) -> Vmm {
    let (vmm, hello) = s.guest("event test").unwrap();
    assert!(hello.features.contains(Features::EVENTS));
    vmm
}

/// A host client's buffer, granted to the guest ("test") and imported into its window.
fn host_buffer_imported_by_the_guest(s: &FullBroker, vmm: &mut Vmm) -> (Client, BufferId) {
    let (mut client, _) = Client::connect_hello(s.local(), Features::all()).unwrap();
    let (reply, _fds) = client
        .request(&Message::Allocate(Allocate {
            request: cpu_request(XRGB8888, 64, 64, 1, "cpu"),
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
    )
    .unwrap();
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

    // The owner goes away (its connection closes): its buffers are freed and the guest's
    // revocation is held, as no buffer is posted.
    drop(client);
    let exposure = s.recorder.vhost_exposure(0, WAIT).unwrap();
    assert!(
        exposure.wait_event_stats(WAIT, |e| e.pending == 1),
        "no event held: {:?}",
        exposure.event_stats()
    );
    assert_eq!(exposure.event_stats().delivered, 0);
    assert!(
        vmm.wait_event(Duration::ZERO).is_err(),
        "an event was delivered without a buffer to hold it"
    );
    vmm.post_event_buffers(1).unwrap();

    assert_eq!(revoked(&vmm.wait_event(WAIT).unwrap()), id);
}
