//! The guest agent over the in-process fake device: several `Client<LocalTransport>`s through
//! one `Agent<FakeTransport>` on a Unix socket.

// Test code: a panic is how a test reports failure (as clippy.toml allows inside #[test]).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bufbroker_guest::agent::{Agent, AgentOptions};
use bufbroker_guest::bufbroker_proto::wire::{
    Access, BufferId, ErrorCode, Event, Location, Placement,
};
use bufbroker_guest::bufbroker_proto::{Fourcc, Request};
use bufbroker_guest::fake::{FakeBroker, FakeTransport};
use bufbroker_guest::local::LocalTransport;
use bufbroker_guest::{Client, ClientError, ClientOptions, Transport, participants};

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

struct Setup {
    agent: Agent<FakeTransport>,
    path: PathBuf,
    _dir: tempfile::TempDir,
}

fn start(max_clients: usize) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("guestd.sock");
    let device = FakeTransport::new(FakeBroker::new(), 64 << 20).unwrap();
    let options = AgentOptions {
        max_clients,
        ..AgentOptions::default()
    };
    let agent = Agent::new(device, options).unwrap();
    let listener = Agent::<FakeTransport>::bind(&path).unwrap();
    agent.spawn(listener);
    Setup {
        agent,
        path,
        _dir: dir,
    }
}

fn client(path: &Path) -> Client<LocalTransport> {
    let t = LocalTransport::connect(path).unwrap();
    Client::connect(t, &ClientOptions::default()).unwrap()
}

fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn broker_code(e: ClientError) -> ErrorCode {
    match e {
        ClientError::Broker { code, .. } => code,
        other => panic!("expected a broker error, got {other:?}"),
    }
}

/// Buffers the fake device holds (its `QueryStats` counts every buffer).
fn device_buffers(c: &mut Client<LocalTransport>) -> u32 {
    c.stats().unwrap()[0].buffers
}

#[test]
fn hello_is_answered_from_the_device_session_with_the_window() {
    let s = start(8);
    let a = client(&s.path);
    assert!(a.session().broker.contains("via bufbroker-guestd"));
    assert_eq!(a.session().version, s.agent.session().version);
    let window = a.transport().window().expect("window fd with HelloReply");
    assert_eq!(window.len(), 64 << 20);
}

#[test]
fn two_clients_allocate_map_and_free_with_distinct_ids_through_one_device() {
    let s = start(8);
    let mut a = client(&s.path);
    let mut b = client(&s.path);
    // Both clients start their request ids at 1; each sees its own replies.
    a.ping(b"a").unwrap();
    b.ping(b"b").unwrap();

    let alloc_a = a.allocate(&nv12_request(2), Placement::HostWindow).unwrap();
    let alloc_b = b.allocate(&nv12_request(1), Placement::HostWindow).unwrap();
    let mut ids: Vec<BufferId> = alloc_a.buffers.iter().map(|x| x.id()).collect();
    ids.extend(alloc_b.buffers.iter().map(|x| x.id()));
    let mut unique = ids.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), 3, "ids collide: {ids:?}");
    assert_eq!(s.agent.tracked_buffers(), 3);

    // A writes through its mapping of the window; B and the device see the same bytes at
    // the same offset.
    let map_a = a.map(&alloc_a.buffers[0], &alloc_a.plan).unwrap();
    map_a.write_at(0, b"from client a").unwrap();
    let Location::HostWindow { offset, .. } = alloc_a.buffers[0].info.location else {
        panic!("not in the window");
    };
    let device_window = s.agent.with_device(|t| t.window()).unwrap();
    let mut seen = [0u8; 13];
    bufbroker_guest::BufferMap::new(device_window, offset, 13)
        .unwrap()
        .read_at(0, &mut seen)
        .unwrap();
    assert_eq!(&seen, b"from client a");
    let map_b = b.map(&alloc_b.buffers[0], &alloc_b.plan).unwrap();
    map_b.write_at(0, b"b").unwrap();
    drop((map_a, map_b));

    for buf in &alloc_a.buffers {
        a.free(buf.id()).unwrap();
    }
    b.free(alloc_b.buffers[0].id()).unwrap();
    assert_eq!(s.agent.tracked_buffers(), 0);
    assert_eq!(device_buffers(&mut a), 0);
}

#[test]
fn a_client_cannot_touch_another_clients_buffer() {
    let s = start(8);
    let mut a = client(&s.path);
    let mut b = client(&s.path);
    let mut alloc = a.allocate(&nv12_request(1), Placement::HostWindow).unwrap();
    let id = alloc.buffers[0].id();

    assert_eq!(broker_code(b.free(id).unwrap_err()), ErrorCode::NOT_FOUND);
    assert_eq!(broker_code(b.export(id).unwrap_err()), ErrorCode::NOT_FOUND);
    let grant = b.grant(id, "someone", Access::ReadWrite).unwrap_err();
    assert_eq!(broker_code(grant), ErrorCode::NOT_FOUND);
    let buf = &mut alloc.buffers[0];
    assert_eq!(
        broker_code(b.map_window(buf, &alloc.plan).unwrap_err()),
        ErrorCode::NOT_FOUND
    );
    assert_eq!(device_buffers(&mut b), 1, "B's attempts freed A's buffer");
    // The owner still can.
    a.export(id).unwrap();
    a.free(id).unwrap();
}

#[test]
fn a_disconnecting_client_has_its_buffers_freed() {
    let s = start(8);
    let mut a = client(&s.path);
    let mut b = client(&s.path);
    a.allocate(&nv12_request(3), Placement::HostWindow).unwrap();
    let kept = b.allocate(&nv12_request(1), Placement::HostClient).unwrap();
    assert_eq!(device_buffers(&mut b), 4);
    drop(a);
    wait_for("A's cleanup", || s.agent.clients() == 1);
    assert_eq!(device_buffers(&mut b), 1);
    assert_eq!(s.agent.tracked_buffers(), 1);
    b.free(kept.buffers[0].id()).unwrap();
}

#[test]
fn events_go_to_the_buffers_owner_or_to_everyone() {
    let s = start(8);
    let mut a = client(&s.path);
    let mut b = client(&s.path);
    let alloc = a.allocate(&nv12_request(1), Placement::HostWindow).unwrap();
    let id = alloc.buffers[0].id();
    let revoked = Event::BufferRevoked {
        buffer: id,
        reason: "test".into(),
    };
    s.agent
        .with_device(|t| t.broker_mut().push_event(revoked.clone()));
    let got = a.next_event(Some(Duration::from_secs(5))).unwrap();
    assert_eq!(got, Some(revoked));
    assert_eq!(
        b.next_event(Some(Duration::from_millis(200))).unwrap(),
        None
    );

    let quota = Event::QuotaChanged {
        quota_bytes: 1 << 30,
        quota_buffers: 10,
    };
    s.agent
        .with_device(|t| t.broker_mut().push_event(quota.clone()));
    assert_eq!(
        a.next_event(Some(Duration::from_secs(5))).unwrap(),
        Some(quota.clone())
    );
    assert_eq!(
        b.next_event(Some(Duration::from_secs(5))).unwrap(),
        Some(quota)
    );
}

#[test]
fn clients_beyond_the_limit_are_refused() {
    let s = start(1);
    let mut a = client(&s.path);
    let t = LocalTransport::connect(&s.path).unwrap();
    assert!(Client::connect(t, &ClientOptions::default()).is_err());
    a.ping(b"still served").unwrap();
}
