//! QEMU 11.1.3's payload-less VHOST_USER_GET_SHARED_OBJECT gets an error reply and the
//! connection survives (the fix carried in `third_party/vhost`).

// Test code: a panic is a test failure, which is what these lints would otherwise forbid.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use bufbroker_tests::broker::TestBroker;
use bufbroker_tests::vmm::{Vmm, VmmOptions};
use uuid::Uuid;

const GET_FEATURES: u32 = 1;
const SET_FEATURES: u32 = 2;
const GET_PROTOCOL_FEATURES: u32 = 15;
const SET_PROTOCOL_FEATURES: u32 = 16;
const GET_SHARED_OBJECT: u32 = 41;
const PROTOCOL_FEATURES: u64 = 1 << 30;
const SHARED_OBJECT: u64 = 1 << 18;

fn send(s: &mut UnixStream, request: u32, payload: &[u8]) {
    let mut m = Vec::new();
    m.extend_from_slice(&request.to_le_bytes());
    m.extend_from_slice(&1u32.to_le_bytes());
    m.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    m.extend_from_slice(payload);
    s.write_all(&m).unwrap();
}

fn recv(s: &mut UnixStream) -> (u32, u32, Vec<u8>) {
    let mut h = [0u8; 12];
    s.read_exact(&mut h).unwrap();
    let size = u32::from_le_bytes(h[8..12].try_into().unwrap());
    let mut body = vec![0u8; size as usize];
    s.read_exact(&mut body).unwrap();
    (
        u32::from_le_bytes(h[0..4].try_into().unwrap()),
        u32::from_le_bytes(h[4..8].try_into().unwrap()),
        body,
    )
}

fn get_u64(s: &mut UnixStream, request: u32) -> u64 {
    send(s, request, &[]);
    let (code, _, body) = recv(s);
    assert_eq!(code, request);
    u64::from_le_bytes(body[..8].try_into().unwrap())
}

#[test]
fn get_shared_object_without_uuid_gets_an_error_reply_and_the_connection_survives() {
    let broker = TestBroker::minimal(1 << 20).unwrap();
    let mut s = UnixStream::connect(broker.socket()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let features = get_u64(&mut s, GET_FEATURES);
    send(
        &mut s,
        SET_FEATURES,
        &(features & PROTOCOL_FEATURES).to_le_bytes(),
    );
    let protocol = get_u64(&mut s, GET_PROTOCOL_FEATURES);
    assert_ne!(protocol & SHARED_OBJECT, 0);
    send(&mut s, SET_PROTOCOL_FEATURES, &SHARED_OBJECT.to_le_bytes());

    // Exactly what QEMU 11.1.3 sends: 29000000 01000000 00000000.
    send(&mut s, GET_SHARED_OBJECT, &[]);
    let (code, flags, body) = recv(&mut s);

    assert_eq!(code, GET_SHARED_OBJECT);
    assert_eq!(flags & 0x4, 0x4, "not a reply");
    assert!(body.is_empty());
    assert_eq!(get_u64(&mut s, GET_FEATURES), features);
}

#[test]
fn get_shared_object_of_an_unknown_uuid_fails_without_killing_the_connection() {
    let broker = TestBroker::minimal(1 << 20).unwrap();
    let mut vmm = Vmm::connect(broker.socket(), VmmOptions::default()).unwrap();

    let r = vmm.get_shared_object(Uuid::new_v4());

    assert!(r.is_err());
    vmm.start().unwrap();
}
