//! The client against the fake broker: in-process, and over a Unix socket pair (seqpacket and
//! stream framing), plus hostile replies.

// Test code: a panic is how a test reports failure (as clippy.toml allows inside #[test]).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::os::fd::OwnedFd;
use std::time::Duration;

use bufbroker_guest::bufbroker_proto::wire::{
    self, AllocateReply, BufferId, BufferInfo, ErrorCode, Event, HelloReply, ImportView, Location,
    Message, Placement, SolveReply, WireLimits,
};
use bufbroker_guest::bufbroker_proto::{Fourcc, Request};
use bufbroker_guest::fake::{FakeBroker, FakeTransport};
use bufbroker_guest::local::{Framing, LocalTransport};
use bufbroker_guest::{
    Client, ClientError, ClientOptions, Transport, TransportError, participants,
};
use rustix::net::{AddressFamily, SocketFlags, SocketType};

const NV12: Fourcc = Fourcc::from_chars(*b"NV12");

fn nv12_request(count: u32) -> Request {
    Request {
        width: 1920,
        height: 1080,
        formats: vec![NV12],
        usage: Default::default(),
        participants: vec![participants::cpu()],
        count,
    }
}

fn socket_client(ty: SocketType) -> Client<LocalTransport> {
    let (a, b) =
        rustix::net::socketpair(AddressFamily::UNIX, ty, SocketFlags::CLOEXEC, None).unwrap();
    FakeBroker::new().serve(b);
    let mut t = LocalTransport::from_fd(a).unwrap();
    t.set_timeout(Duration::from_secs(10));
    Client::connect(t, &ClientOptions::default()).unwrap()
}

#[test]
fn connect_negotiates_version_and_features() {
    let t = FakeTransport::new(FakeBroker::new(), 1 << 24).unwrap();

    let client = Client::connect(t, &ClientOptions::default()).unwrap();

    assert_eq!(client.session().version, 1);
    assert_eq!(client.session().features, ClientOptions::default().features);
    assert_eq!(client.session().broker, "bufbroker fake");
}

#[test]
fn allocate_host_window_maps_through_window_and_pattern_reads_back() {
    let t = FakeTransport::new(FakeBroker::new(), 1 << 24).unwrap();
    let mut client = Client::connect(t, &ClientOptions::default()).unwrap();

    let alloc = client
        .allocate(&nv12_request(2), Placement::HostWindow)
        .unwrap();
    let map = client.map(&alloc.buffers[1], &alloc.plan).unwrap();
    map.write_at(0, b"pattern").unwrap();
    let again = client.map(&alloc.buffers[1], &alloc.plan).unwrap();
    let mut out = [0u8; 7];
    again.read_at(0, &mut out).unwrap();

    assert_eq!(alloc.plan.fourcc, NV12);
    assert_eq!(alloc.buffers.len(), 2);
    assert!(alloc.plan.size >= 1920 * 1080 * 3 / 2);
    assert_eq!(&out, b"pattern");
}

#[test]
fn export_import_free_and_stats_round_trip() {
    let t = FakeTransport::new(FakeBroker::new(), 1 << 24).unwrap();
    let mut client = Client::connect(t, &ClientOptions::default()).unwrap();
    let alloc = client
        .allocate(&nv12_request(1), Placement::HostWindow)
        .unwrap();
    let id = alloc.buffers[0].id();

    let uuid = client.export(id).unwrap();
    let granted = client
        .grant(id, "other-vm", wire::Access::ReadOnly)
        .unwrap();
    let imported = client.import(uuid, ImportView::HostWindow).unwrap();
    let stats = client.stats().unwrap();
    client.free(id).unwrap();
    let after = client.stats().unwrap();

    assert_eq!(uuid, alloc.buffers[0].info.uuid);
    assert_eq!(granted, uuid);
    assert_eq!(imported.plan, alloc.plan);
    assert_eq!(stats[0].buffers, 1);
    assert_eq!(after[0].buffers, 0);
}

#[test]
fn free_of_unknown_buffer_is_a_typed_broker_error() {
    let t = FakeTransport::new(FakeBroker::new(), 1 << 24).unwrap();
    let mut client = Client::connect(t, &ClientOptions::default()).unwrap();

    let err = client.free(BufferId(99)).unwrap_err();

    assert!(matches!(
        err,
        ClientError::Broker {
            code: ErrorCode::NOT_FOUND,
            ..
        }
    ));
}

#[test]
fn solve_returns_plans_without_allocating() {
    let t = FakeTransport::new(FakeBroker::new(), 1 << 24).unwrap();
    let mut client = Client::connect(t, &ClientOptions::default()).unwrap();

    let reply = client.solve(&nv12_request(1)).unwrap();

    let SolveReply::Solved(s) = reply else {
        panic!("unsatisfiable")
    };
    assert_eq!(s.plans[0].fourcc, NV12);
    assert_eq!(client.stats().unwrap()[0].buffers, 0);
}

#[test]
fn named_participant_registered_in_session_is_used_by_allocate() {
    let t = FakeTransport::new(FakeBroker::new(), 1 << 24).unwrap();
    let mut client = Client::connect(t, &ClientOptions::default()).unwrap();
    let handle = client
        .register_participant("my-cpu", participants::cpu())
        .unwrap();
    let mut request = nv12_request(1);
    request
        .participants
        .push(participants::named("my-cpu", Default::default()));

    let alloc = client.allocate(&request, Placement::HostWindow);
    client.unregister_participant(handle).unwrap();

    assert!(alloc.is_ok());
}

#[test]
fn events_are_delivered_through_next_event() {
    let mut t = FakeTransport::new(FakeBroker::new(), 1 << 24).unwrap();
    t.broker_mut().push_event(Event::QuotaChanged {
        quota_bytes: 7,
        quota_buffers: 1,
    });
    let mut client = Client::connect(t, &ClientOptions::default()).unwrap();

    let event = client.next_event(None).unwrap();
    let none = client.next_event(None).unwrap();

    assert_eq!(
        event,
        Some(Event::QuotaChanged {
            quota_bytes: 7,
            quota_buffers: 1
        })
    );
    assert_eq!(none, None);
}

#[test]
fn seqpacket_socket_ping_and_host_client_allocate_pass_fds() {
    let mut client = socket_client(SocketType::SEQPACKET);

    let rtt = client.ping(b"hello").unwrap();
    let alloc = client
        .allocate(&nv12_request(3), Placement::HostClient)
        .unwrap();
    let maps: Vec<_> = alloc
        .buffers
        .iter()
        .map(|b| client.map(b, &alloc.plan).unwrap())
        .collect();
    maps[2].write_at(100, b"xyz").unwrap();

    assert!(rtt < Duration::from_secs(10));
    assert_eq!(client.transport().framing(), Framing::Seqpacket);
    assert!(alloc.buffers.iter().all(|b| b.fd.is_some()));
    assert_eq!(maps[2].len() as u64, alloc.plan.size);
}

#[test]
fn stream_socket_carries_large_solve_replies_and_fds() {
    let mut client = socket_client(SocketType::STREAM);

    let solved = client.solve(&nv12_request(1)).unwrap();
    let alloc = client
        .allocate(&nv12_request(2), Placement::HostClient)
        .unwrap();
    let imported = client
        .import(alloc.buffers[0].info.uuid, ImportView::HostClient)
        .unwrap();

    assert_eq!(client.transport().framing(), Framing::Stream);
    assert!(matches!(solved, SolveReply::Solved(_)));
    assert!(imported.buffer.fd.is_some());
}

#[test]
fn socket_events_interleaved_with_replies_are_queued() {
    let (a, b) = rustix::net::socketpair(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC,
        None,
    )
    .unwrap();
    let mut broker = FakeBroker::new();
    broker.push_event(Event::ParticipantGone {
        name: "display".into(),
    });
    broker.serve(b);
    let t = LocalTransport::from_fd(a).unwrap();
    let mut client = Client::connect(t, &ClientOptions::default()).unwrap();

    let event = client.next_event(Some(Duration::from_secs(1))).unwrap();

    assert_eq!(
        event,
        Some(Event::ParticipantGone {
            name: "display".into()
        })
    );
}

#[test]
fn connect_by_path_falls_back_to_a_stream_listener() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("broker.sock");
    let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
    std::thread::spawn(move || {
        let (s, _) = listener.accept().unwrap();
        FakeBroker::new().serve(OwnedFd::from(s)).join().unwrap();
    });

    let t = LocalTransport::connect(&path).unwrap();
    let mut client = Client::connect(t, &ClientOptions::default()).unwrap();

    assert_eq!(client.transport().framing(), Framing::Stream);
    assert!(client.ping(&[1, 2, 3]).is_ok());
}

/// A transport whose replies are scripted: each request gets the next canned reply.
struct Scripted {
    replies: Vec<Message>,
    window: Option<std::sync::Arc<bufbroker_guest::MappedRegion>>,
}

impl Transport for Scripted {
    fn round_trip(&mut self, request: &[u8]) -> Result<(Vec<u8>, Vec<OwnedFd>), TransportError> {
        let id = wire::peek_request_id(request).unwrap();
        let reply = self.replies.remove(0);
        Ok((wire::encode(&reply, id).unwrap(), Vec::new()))
    }

    fn recv_event(&mut self, _: Option<Duration>) -> Result<Option<Vec<u8>>, TransportError> {
        Ok(None)
    }

    fn window(&self) -> Option<std::sync::Arc<bufbroker_guest::MappedRegion>> {
        self.window.clone()
    }
}

fn hello_reply() -> Message {
    HelloReply {
        version: 1,
        features: wire::Features::HOST_WINDOW | wire::Features::HOST_CLIENT_FD,
        limits: WireLimits::CURRENT,
        broker: "hostile".into(),
    }
    .into()
}

fn good_plan() -> bufbroker_guest::bufbroker_proto::Plan {
    let t = FakeTransport::new(FakeBroker::new(), 1 << 24).unwrap();
    let mut client = Client::connect(t, &ClientOptions::default()).unwrap();
    client
        .allocate(&nv12_request(1), Placement::HostWindow)
        .unwrap()
        .plan
}

fn hostile(reply: Message) -> Result<(), ClientError> {
    let fd = rustix::fs::memfd_create("w", rustix::fs::MemfdFlags::CLOEXEC).unwrap();
    rustix::fs::ftruncate(&fd, 1 << 22).unwrap();
    let window = bufbroker_guest::MappedRegion::map_file(&fd, 1 << 22, true).unwrap();
    let t = Scripted {
        replies: vec![hello_reply(), reply],
        window: Some(std::sync::Arc::new(window)),
    };
    let mut client = Client::connect(t, &ClientOptions::default())?;
    let alloc = client.allocate(&nv12_request(1), Placement::HostWindow)?;
    client.map(&alloc.buffers[0], &alloc.plan)?;
    Ok(())
}

#[test]
fn hostile_window_offset_past_window_is_rejected() {
    let plan = good_plan();
    let reply = AllocateReply {
        buffers: vec![BufferInfo {
            id: BufferId(1),
            uuid: uuid::Uuid::nil(),
            location: Location::HostWindow {
                shmid: 0,
                offset: u64::MAX - 10,
                len: plan.size,
            },
        }],
        plan,
    };

    let err = hostile(reply.into()).unwrap_err();

    assert!(matches!(err, ClientError::InvalidReply { .. }), "{err}");
}

#[test]
fn hostile_plane_outside_buffer_is_rejected() {
    let mut plan = good_plan();
    plan.planes[1].offset = plan.size;
    let reply = AllocateReply {
        buffers: vec![BufferInfo {
            id: BufferId(1),
            uuid: uuid::Uuid::nil(),
            location: Location::HostWindow {
                shmid: 0,
                offset: 0,
                len: plan.size,
            },
        }],
        plan,
    };

    let err = hostile(reply.into()).unwrap_err();

    assert!(matches!(err, ClientError::InvalidReply { .. }), "{err}");
}

#[test]
fn hostile_fd_index_without_fd_is_rejected() {
    let plan = good_plan();
    let reply = AllocateReply {
        buffers: vec![BufferInfo {
            id: BufferId(1),
            uuid: uuid::Uuid::nil(),
            location: Location::HostClient { fd_index: 0 },
        }],
        plan,
    };

    let err = hostile(reply.into()).unwrap_err();

    assert!(matches!(err, ClientError::InvalidReply { .. }), "{err}");
}

#[test]
fn hostile_wrong_buffer_count_is_rejected() {
    let reply = AllocateReply {
        buffers: vec![],
        plan: good_plan(),
    };

    let err = hostile(reply.into()).unwrap_err();

    assert!(matches!(err, ClientError::InvalidReply { .. }), "{err}");
}

#[test]
fn hostile_wrong_reply_type_is_rejected() {
    let err = hostile(hello_reply()).unwrap_err();

    assert!(matches!(err, ClientError::UnexpectedReply { .. }), "{err}");
}

/// Garbage bytes of every length and mutations of a valid reply never panic the client.
#[test]
fn hostile_garbage_replies_never_panic() {
    struct Garbage(Vec<u8>);
    impl Transport for Garbage {
        fn round_trip(&mut self, _: &[u8]) -> Result<(Vec<u8>, Vec<OwnedFd>), TransportError> {
            Ok((self.0.clone(), Vec::new()))
        }
        fn recv_event(&mut self, _: Option<Duration>) -> Result<Option<Vec<u8>>, TransportError> {
            Ok(Some(self.0.clone()))
        }
    }
    let valid = wire::encode(&hello_reply(), 1).unwrap();
    let mut seed = 0x1234_5678_u64;
    for i in 0..2000 {
        let mut bytes = valid.clone();
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let at = (seed >> 33) as usize % bytes.len();
        bytes[at] ^= (seed >> 8) as u8 | 1;
        if i % 3 == 0 {
            bytes.truncate(at);
        }

        let result = Client::connect(Garbage(bytes), &ClientOptions::default());

        if let Ok(mut c) = result {
            let _ = c.next_event(None);
        }
    }
}

#[test]
fn a_reply_that_comes_after_the_timeout_never_answers_the_next_request() {
    let (a, b) = rustix::net::socketpair(
        AddressFamily::UNIX,
        SocketType::STREAM,
        SocketFlags::CLOEXEC,
        None,
    )
    .unwrap();
    let mut t = LocalTransport::from_fd(a).unwrap();
    t.set_timeout(Duration::from_millis(50));
    let ping = wire::encode(&Message::Ping(wire::Ping { payload: vec![1] }), 1).unwrap();

    let first = t.round_trip(&ping);
    assert!(
        matches!(first, Err(TransportError::Timeout(_))),
        "{first:?}"
    );

    // The broker answers late: the reply is in the socket when the next request goes out.
    let late = wire::encode(&Message::Pong(wire::Pong { payload: vec![1] }), 1).unwrap();
    rustix::io::write(&b, &late).unwrap();
    let second = t.round_trip(&ping);
    assert!(matches!(second, Err(TransportError::Broken)), "{second:?}");
}
