//! Request-queue round trips through the real device: Hello, Ping, and malformed chains.

// Test code: a panic is a test failure, which is what these lints would otherwise forbid.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::time::Duration;

use bufbroker_proto::config_space::{CONFIG_SPACE_SIZE, ConfigSpace};
use bufbroker_proto::wire::{
    self, ErrorCode, Features, Hello, Message, MessageType, PROTOCOL_VERSION, Ping,
};
use bufbroker_tests::broker::TestBroker;
use bufbroker_tests::ring::Buf;
use bufbroker_tests::vmm::{Vmm, VmmOptions, buf_outside_memory};
use vm_memory::Bytes;

const REPLY_CAP: u32 = 4096;

fn hello() -> Vec<u8> {
    wire::encode(
        &Message::Hello(Hello {
            min_version: 1,
            max_version: PROTOCOL_VERSION,
            features: Features::all(),
            client: "harness".into(),
        }),
        7,
    )
    .unwrap()
}

fn ping(id: u32, payload: &[u8]) -> Vec<u8> {
    wire::encode(
        &Message::Ping(Ping {
            payload: payload.to_vec(),
        }),
        id,
    )
    .unwrap()
}

fn error_code(reply: &[u8]) -> ErrorCode {
    match wire::decode(reply).unwrap().1 {
        Message::ErrorReply(e) => e.code,
        other => panic!("expected an ErrorReply, got {other:?}"),
    }
}

fn started(broker: &TestBroker) -> Vmm {
    Vmm::connect_and_start(broker.socket(), VmmOptions::default()).unwrap()
}

#[test]
fn hello_gets_a_hello_reply_with_the_request_id() {
    let broker = TestBroker::minimal(1 << 20).unwrap();
    let mut vmm = started(&broker);

    let reply = vmm.request(&hello(), REPLY_CAP).unwrap();

    let (header, message) = wire::decode(&reply).unwrap();
    assert_eq!(header.request_id, 7);
    let Message::HelloReply(r) = message else {
        panic!("{message:?}")
    };
    assert_eq!(r.version, PROTOCOL_VERSION);
    assert_eq!(r.features, Features::empty());
}

#[test]
fn ping_echoes_its_payload_many_times_across_ring_wraps() {
    let broker = TestBroker::minimal(1 << 20).unwrap();
    let mut vmm = started(&broker);

    for i in 0..1000u32 {
        let reply = vmm.request(&ping(i, &i.to_le_bytes()), REPLY_CAP).unwrap();
        let (header, message) = wire::decode(&reply).unwrap();
        assert_eq!(header.request_id, i);
        assert_eq!(
            message,
            Message::Pong(wire::Pong {
                payload: i.to_le_bytes().to_vec()
            })
        );
    }
}

#[test]
fn ping_without_event_idx_round_trips() {
    let broker = TestBroker::minimal(1 << 20).unwrap();
    let options = VmmOptions {
        event_idx: false,
        ..VmmOptions::default()
    };
    let mut vmm = Vmm::connect_and_start(broker.socket(), options).unwrap();

    for i in 0..300u32 {
        let reply = vmm.request(&ping(i, b"x"), REPLY_CAP).unwrap();
        assert_eq!(wire::decode(&reply).unwrap().0.request_id, i);
    }
}

#[test]
fn sixty_four_requests_in_flight_all_get_their_replies() {
    let broker = TestBroker::minimal(1 << 20).unwrap();
    let mut vmm = started(&broker);
    let mut heads = std::collections::HashMap::new();
    for i in 0..64u32 {
        heads.insert(vmm.submit(&ping(i, &[i as u8; 32]), REPLY_CAP).unwrap(), i);
    }
    vmm.kick(0).unwrap();

    for _ in 0..64 {
        let (head, reply) = vmm.wait_used(0, Duration::from_secs(5)).unwrap();
        let id = heads.remove(&head).unwrap();
        assert_eq!(wire::decode(&reply).unwrap().0.request_id, id);
    }
    assert!(heads.is_empty());
}

#[test]
fn config_space_carries_the_window_size_and_limits() {
    let broker = TestBroker::minimal(8 << 20).unwrap();
    let mut vmm = Vmm::connect(broker.socket(), VmmOptions::default()).unwrap();

    let bytes = vmm.config_space(CONFIG_SPACE_SIZE as u32).unwrap();

    let cs = ConfigSpace::from_bytes(&bytes).unwrap();
    assert_eq!(cs.shm_window_size, 8 << 20);
    assert_eq!(cs.max_message_size as usize, wire::MAX_MESSAGE_SIZE);
    assert_eq!(vmm.shmem_size(), 8 << 20);
}

#[test]
fn request_before_hello_gets_not_negotiated_and_hello_still_works() {
    let broker = TestBroker::minimal(1 << 20).unwrap();
    let mut vmm = started(&broker);
    let stats = wire::encode(&Message::QueryStats(wire::QueryStats), 3).unwrap();

    let reply = vmm.request(&stats, REPLY_CAP).unwrap();

    assert_eq!(error_code(&reply), ErrorCode::NOT_NEGOTIATED);
    assert_eq!(wire::decode(&reply).unwrap().0.request_id, 3);
    let reply = vmm.request(&hello(), REPLY_CAP).unwrap();
    assert_eq!(
        wire::decode(&reply).unwrap().1.message_type(),
        MessageType::HelloReply
    );
}

#[test]
fn unknown_message_type_gets_unknown_message_type() {
    let broker = TestBroker::minimal(1 << 20).unwrap();
    let mut vmm = started(&broker);
    let mut request = ping(9, b"");
    request[6..8].copy_from_slice(&0x3fffu16.to_le_bytes());

    let reply = vmm.request(&request, REPLY_CAP).unwrap();

    assert_eq!(error_code(&reply), ErrorCode::UNKNOWN_MESSAGE_TYPE);
    assert_eq!(wire::decode(&reply).unwrap().0.request_id, 9);
}

#[test]
fn wrong_payload_length_gets_length_mismatch() {
    let broker = TestBroker::minimal(1 << 20).unwrap();
    let mut vmm = started(&broker);
    let mut request = ping(4, b"abc");
    request[12..16].copy_from_slice(&100u32.to_le_bytes());

    let reply = vmm.request(&request, REPLY_CAP).unwrap();

    assert_eq!(error_code(&reply), ErrorCode::LENGTH_MISMATCH);
}

#[test]
fn truncated_header_gets_short_message() {
    let broker = TestBroker::minimal(1 << 20).unwrap();
    let mut vmm = started(&broker);

    let reply = vmm.request(&ping(1, b"")[..10], REPLY_CAP).unwrap();

    assert_eq!(error_code(&reply), ErrorCode::SHORT_MESSAGE);
}

#[test]
fn empty_readable_part_gets_short_message() {
    let broker = TestBroker::minimal(1 << 20).unwrap();
    let mut vmm = started(&broker);

    let reply = vmm.request(&[], REPLY_CAP).unwrap();

    assert_eq!(error_code(&reply), ErrorCode::SHORT_MESSAGE);
}

#[test]
fn garbage_gets_bad_magic() {
    let broker = TestBroker::minimal(1 << 20).unwrap();
    let mut vmm = started(&broker);

    let reply = vmm.request(&[0xa5; 100], REPLY_CAP).unwrap();

    assert_eq!(error_code(&reply), ErrorCode::BAD_MAGIC);
}

#[test]
fn oversized_chain_gets_message_too_large_with_its_request_id() {
    let broker = TestBroker::minimal(1 << 20).unwrap();
    let mut vmm = started(&broker);
    let mut request = ping(77, b"");
    request.resize(wire::MAX_MESSAGE_SIZE + 1, 0);

    let reply = vmm.request(&request, REPLY_CAP).unwrap();

    assert_eq!(error_code(&reply), ErrorCode::MESSAGE_TOO_LARGE);
    assert_eq!(wire::decode(&reply).unwrap().0.request_id, 77);
}

#[test]
fn reply_larger_than_the_writable_part_becomes_message_too_large_not_a_truncation() {
    let broker = TestBroker::minimal(1 << 20).unwrap();
    let mut vmm = started(&broker);
    let request = ping(5, &[1; 1000]);

    let reply = vmm.request(&request, 200).unwrap();

    assert!(reply.len() <= 200);
    assert_eq!(error_code(&reply), ErrorCode::MESSAGE_TOO_LARGE);
}

#[test]
fn writable_part_too_small_for_any_message_gets_an_empty_used_element() {
    let broker = TestBroker::minimal(1 << 20).unwrap();
    let mut vmm = started(&broker);

    let reply = vmm.request(&ping(5, b"hi"), 8).unwrap();

    assert!(reply.is_empty());
}

#[test]
fn chain_without_writable_part_is_returned_and_the_device_keeps_serving() {
    let broker = TestBroker::minimal(1 << 20).unwrap();
    let mut vmm = started(&broker);

    let reply = vmm.request(&ping(5, b"hi"), 0).unwrap();

    assert!(reply.is_empty());
    assert!(vmm.request(&ping(6, b"ok"), REPLY_CAP).is_ok());
}

#[test]
fn readable_descriptor_outside_guest_memory_gets_an_error_and_the_device_keeps_serving() {
    let broker = TestBroker::minimal(1 << 20).unwrap();
    let mut vmm = started(&broker);
    let bad = buf_outside_memory(vmm.memory(), 64, false);
    let reply_area = Buf {
        addr: 0x80_0000,
        len: REPLY_CAP,
        writable: true,
    };

    vmm.add_raw(0, &[bad, reply_area]).unwrap();
    vmm.kick(0).unwrap();
    let (_, len_only) = vmm.wait_used(0, Duration::from_secs(5)).unwrap();

    assert!(!len_only.is_empty());
    let reply = vmm.request(&ping(6, b"ok"), REPLY_CAP).unwrap();
    assert_eq!(wire::decode(&reply).unwrap().0.request_id, 6);
}

#[test]
fn request_split_over_several_descriptors_is_reassembled() {
    let broker = TestBroker::minimal(1 << 20).unwrap();
    let mut vmm = started(&broker);
    let request = ping(12, b"split across three descriptors");
    let (a, rest) = request.split_at(5);
    let (b, c) = rest.split_at(11);
    let base = 0x90_0000u64;
    let mut addr = base;
    let mut bufs = Vec::new();
    for part in [a, b, c] {
        vmm.memory()
            .write_slice(part, vm_memory::GuestAddress(addr))
            .unwrap();
        bufs.push(Buf {
            addr,
            len: part.len() as u32,
            writable: false,
        });
        addr += 0x1000;
    }
    bufs.push(Buf {
        addr,
        len: REPLY_CAP,
        writable: true,
    });

    vmm.add_raw(0, &bufs).unwrap();
    vmm.kick(0).unwrap();
    let (_, _) = vmm.wait_used(0, Duration::from_secs(5)).unwrap();

    let mut reply = vec![0u8; 64];
    vmm.memory()
        .read_slice(&mut reply, vm_memory::GuestAddress(addr))
        .unwrap();
    let header = wire::decode_header(&reply).unwrap();
    assert_eq!(header.request_id, 12);
    assert_eq!(header.message_type(), Some(MessageType::Pong));
}
