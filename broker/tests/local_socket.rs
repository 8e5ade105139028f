//! The local socket end to end: a real server thread, the minimal client, fds over SCM_RIGHTS.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bufbroker::config::Config;
use bufbroker::heap::{Heap, MemfdHeap};
use bufbroker::local::{Client, LocalServer};
use bufbroker::session::Broker;
use bufbroker_proto::wire::{
    self, Allocate, ErrorCode, Features, Free, Message, Placement, QueryStats,
};
use bufbroker_proto::{ConstraintSet, Participant, ParticipantId, Request, Usage};

struct Fixture {
    _dir: tempfile::TempDir,
    path: PathBuf,
    broker: Arc<Broker>,
}

fn start(config: Config) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bufbroker.sock");
    let heaps: Vec<Arc<dyn Heap>> = vec![Arc::new(MemfdHeap::new())];
    let broker = Arc::new(Broker::new(config, heaps).unwrap());
    let server = LocalServer::bind(&path, broker.clone()).unwrap();
    std::thread::spawn(move || server.serve());
    Fixture {
        _dir: dir,
        path,
        broker,
    }
}

fn cpu_request(width: u32, height: u32, count: u32) -> Request {
    Request {
        width,
        height,
        formats: vec!["XRGB8888".parse().unwrap()],
        usage: Usage::empty(),
        participants: vec![Participant::new(
            ParticipantId::Cpu,
            "cpu",
            Usage::CPU_READ | Usage::CPU_WRITE,
            ConstraintSet::default(),
        )],
        count,
    }
}

fn allocate(width: u32, height: u32, count: u32) -> Message {
    Message::Allocate(Allocate {
        request: cpu_request(width, height, count),
        placement: Placement::HostClient,
    })
}

/// Waits until the broker holds no memory (a client's session ends on its own thread);
/// returns what it holds then.
fn wait_until_empty(broker: &Broker) -> u64 {
    broker
        .registry()
        .wait_until(Duration::from_secs(5), |r| r.total_bytes() == 0);
    broker.registry().total_bytes()
}

#[test]
fn allocate_returns_fds_that_map_the_buffers() {
    let f = start(Config::default());
    let (mut client, hello) = Client::connect_hello(&f.path, Features::all()).unwrap();

    let (reply, fds) = client.request(&allocate(256, 256, 2)).unwrap();

    assert!(hello.features.contains(Features::HOST_CLIENT_FD));
    let Message::AllocateReply(r) = reply else {
        panic!("{reply:?}")
    };
    assert_eq!((r.buffers.len(), fds.len()), (2, 2));
    let size = r.plan.size;
    // SAFETY-free check of the memory: write through one fd, read back through pread.
    let written = rustix::io::pwrite(&fds[1], b"pixels", 0).unwrap();
    let mut back = [0u8; 6];
    rustix::io::pread(&fds[1], &mut back, 0).unwrap();
    assert_eq!((written, &back), (6, b"pixels"));
    assert!(rustix::fs::fstat(&fds[0]).unwrap().st_size as u64 >= size);
}

#[test]
fn owner_is_named_by_peer_uid() {
    let f = start(Config::default());
    let (mut client, _) = Client::connect_hello(&f.path, Features::all()).unwrap();

    let (reply, _) = client.request(&Message::QueryStats(QueryStats)).unwrap();

    let Message::StatsReply(stats) = reply else {
        panic!()
    };
    let uid = rustix::process::getuid().as_raw();
    assert_eq!(stats.owners[0].owner, format!("uid:{uid}"));
}

#[test]
fn bad_requests_get_error_replies_and_the_connection_keeps_serving() {
    let f = start(Config::default());
    let (mut client, _) = Client::connect_hello(&f.path, Features::all()).unwrap();

    // The client refuses to encode what the broker must reject, so patch valid encodings:
    // the payload starts with the width as a varint.
    let mut zero = wire::encode(&allocate(16, 16, 1), 100).unwrap();
    zero[wire::HEADER_SIZE] = 0;
    client.send_raw(&zero).unwrap();
    let (zero, _) = client.receive(100).unwrap();
    let mut absurd = wire::encode(&allocate(20000, 16, 1), 101).unwrap();
    absurd[wire::HEADER_SIZE..wire::HEADER_SIZE + 3].copy_from_slice(&[0xff, 0xff, 0x7f]);
    client.send_raw(&absurd).unwrap();
    let (absurd, _) = client.receive(101).unwrap();
    let (missing, _) = client
        .request(&Message::Free(Free {
            buffer: wire::BufferId(999),
        }))
        .unwrap();
    let (fine, _) = client.request(&allocate(16, 16, 1)).unwrap();

    for (reply, code) in [
        (zero, ErrorCode::LIMIT_EXCEEDED),
        (absurd, ErrorCode::LIMIT_EXCEEDED),
        (missing, ErrorCode::NOT_FOUND),
    ] {
        let Message::ErrorReply(e) = reply else {
            panic!("{reply:?}")
        };
        assert_eq!(e.code, code, "{}", e.message);
        assert!(!e.message.is_empty());
    }
    assert!(matches!(fine, Message::AllocateReply(_)));
}

#[test]
fn over_quota_names_the_limit_and_another_client_is_unaffected() {
    let mut config = Config::default();
    config.defaults.bytes = Some(1 << 20);
    let f = start(config);
    let (mut greedy, _) = Client::connect_hello(&f.path, Features::all()).unwrap();
    let (mut modest, _) = Client::connect_hello(&f.path, Features::all()).unwrap();

    let (over, _) = greedy.request(&allocate(1024, 512, 1)).unwrap();
    let (fits, fds) = modest.request(&allocate(256, 256, 1)).unwrap();

    let Message::ErrorReply(e) = over else {
        panic!("{over:?}")
    };
    assert_eq!(e.code, ErrorCode::QUOTA_EXCEEDED);
    assert!(e.message.contains("byte quota"), "{}", e.message);
    assert!(matches!(fits, Message::AllocateReply(_)));
    assert_eq!(fds.len(), 1);
}

#[test]
fn client_that_disconnects_is_freed() {
    let f = start(Config::default());
    let (mut client, _) = Client::connect_hello(&f.path, Features::all()).unwrap();
    let (_, fds) = client.request(&allocate(512, 512, 4)).unwrap();
    drop(fds);
    assert!(f.broker.registry().total_bytes() >= 4 * 512 * 512 * 4);

    drop(client);

    assert_eq!(wait_until_empty(&f.broker), 0);
}

#[test]
fn client_that_disconnects_before_its_reply_is_freed() {
    let f = start(Config::default());
    let (client, _) = Client::connect_hello(&f.path, Features::all()).unwrap();
    let mut stream = client.stream().try_clone().unwrap();
    let bytes = wire::encode(&allocate(1024, 1024, 8), 7).unwrap();

    stream.write_all(&bytes).unwrap();
    drop(stream);
    drop(client);

    assert_eq!(wait_until_empty(&f.broker), 0);
}

#[test]
fn client_that_disconnects_inside_a_message_is_freed() {
    let f = start(Config::default());
    let (mut client, _) = Client::connect_hello(&f.path, Features::all()).unwrap();
    client.request(&allocate(256, 256, 1)).unwrap();
    let bytes = wire::encode(&allocate(16, 16, 1), 9).unwrap();
    let mut stream = client.stream().try_clone().unwrap();

    stream.write_all(&bytes[..20]).unwrap();
    drop(stream);
    drop(client);

    assert_eq!(wait_until_empty(&f.broker), 0);
}

#[test]
fn bad_magic_gets_an_error_reply_then_the_connection_closes() {
    let f = start(Config::default());
    let mut client = Client::connect(&f.path).unwrap();
    let mut bytes = wire::encode(&Message::QueryStats(QueryStats), 5).unwrap();
    bytes[0] = b'X';

    client.send_raw(&bytes).unwrap();
    let (reply, _) = client.receive(5).unwrap();
    let after = client.receive(6);

    let Message::ErrorReply(e) = reply else {
        panic!()
    };
    assert_eq!(e.code, ErrorCode::BAD_MAGIC);
    assert!(after.is_err());
}

#[test]
fn binding_over_a_live_socket_fails() {
    let f = start(Config::default());
    let err = LocalServer::bind(&f.path, f.broker.clone()).unwrap_err();
    assert!(err.to_string().contains("in use"), "{err}");
}

#[test]
fn clients_over_the_limit_are_closed_and_the_connected_ones_keep_being_served() {
    let config = Config::parse(
        std::path::Path::new("test.toml"),
        "[global]\nlocal_clients = 1\n",
    )
    .unwrap();
    let f = start(config);
    let (mut first, _) = Client::connect_hello(&f.path, Features::all()).unwrap();

    let refused = Client::connect_hello(&f.path, Features::all());
    assert!(refused.is_err(), "a second client was served");

    let (reply, fds) = first.request(&allocate(64, 64, 1)).unwrap();
    assert!(matches!(reply, Message::AllocateReply(_)), "{reply:?}");
    assert_eq!(fds.len(), 1);
}

#[test]
fn a_read_only_grant_gives_an_fd_that_cannot_be_mapped_writable() {
    use bufbroker::heap::Mapping;
    use bufbroker_proto::wire::{Access, Export, Grant, Import, ImportView};
    let f = start(Config::default());
    let (mut owner, _) = Client::connect_hello(&f.path, Features::all()).unwrap();
    let (mut reader, _) = Client::connect_hello(&f.path, Features::all()).unwrap();
    let (reply, fds) = owner.request(&allocate(64, 64, 1)).unwrap();
    let Message::AllocateReply(alloc) = reply else {
        panic!("expected AllocateReply, got {reply:?}")
    };
    let id = alloc.buffers[0].id;
    let size = alloc.plan.size;
    Mapping::new(std::os::fd::AsFd::as_fd(&fds[0]), 0, size, true)
        .unwrap()
        .write_at(0, b"owner")
        .unwrap();
    let (reply, _) = owner
        .request(&Message::Export(Export { buffer: id }))
        .unwrap();
    let Message::ExportReply(export) = reply else {
        panic!("expected ExportReply, got {reply:?}")
    };
    let uid = rustix::process::getuid().as_raw();
    let (reply, _) = owner
        .request(&Message::Grant(Grant {
            buffer: id,
            grantee: format!("uid:{uid}"),
            access: Access::ReadOnly,
        }))
        .unwrap();
    assert!(matches!(reply, Message::GrantReply(_)), "{reply:?}");

    let (reply, fds) = reader
        .request(&Message::Import(Import {
            uuid: export.uuid,
            view: ImportView::HostClient,
        }))
        .unwrap();
    let Message::ImportReply(import) = reply else {
        panic!("expected ImportReply, got {reply:?}")
    };
    assert_eq!(import.access, Access::ReadOnly);
    let fd = std::os::fd::AsFd::as_fd(&fds[0]);
    assert!(
        Mapping::new(fd, 0, size, true).is_err(),
        "a read-only grant mapped writable"
    );
    let mut seen = [0u8; 5];
    Mapping::new(fd, 0, size, false)
        .unwrap()
        .read_at(0, &mut seen)
        .unwrap();
    assert_eq!(&seen, b"owner");
}
