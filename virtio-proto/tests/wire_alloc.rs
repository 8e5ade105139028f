//! Measures the peak heap use of decoding adversarial messages: the worst-case allocation
//! blow-up documented in `PROTOCOL.md` ("Resource bounds of decoding").
//!
//! One test only: the counting allocator is process-wide, so nothing may run beside it.

// Test code: a panic is how a test reports failure (as clippy.toml allows inside #[test]).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use bufbroker_proto::wire::{
    self, HEADER_SIZE, Header, MAX_PAYLOAD_SIZE, MessageType, PROTOCOL_VERSION,
};

struct Counting;

static CURRENT: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every method forwards to `System` with the caller's arguments unchanged and only
// adds bookkeeping on atomics, so `System`'s guarantees carry over.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller upholds `alloc`'s contract, which `System.alloc` shares.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            let now = CURRENT.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
            PEAK.fetch_max(now, Ordering::Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` was allocated by `alloc` above, i.e. by `System`, with `layout`.
        unsafe { System.dealloc(ptr, layout) };
        CURRENT.fetch_sub(layout.size(), Ordering::Relaxed);
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// The bound `PROTOCOL.md` promises for one decode.
const BOUND: usize = 16 << 20;

fn varint(mut v: u64, out: &mut Vec<u8>) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn message(ty: MessageType, payload: &[u8]) -> Vec<u8> {
    let header = Header {
        version: PROTOCOL_VERSION,
        type_code: ty.code(),
        request_id: 1,
        payload_len: payload.len() as u32,
    };
    let mut bytes = header.to_bytes().to_vec();
    bytes.extend_from_slice(payload);
    bytes
}

/// `prefix`, then a list claiming to hold as many `element`s as fit in the rest of the
/// payload, then those elements.
fn fill_list(ty: MessageType, prefix: &[u8], element: &[u8]) -> Vec<u8> {
    let room = MAX_PAYLOAD_SIZE - prefix.len() - 3;
    let n = room / element.len();
    let mut payload = prefix.to_vec();
    varint(n as u64, &mut payload);
    for _ in 0..n {
        payload.extend_from_slice(element);
    }
    message(ty, &payload)
}

/// A request prefix up to its participants list: width 1, height 1, no formats, no usage.
const REQUEST_HEAD: &[u8] = &[1, 1, 0, 0];
/// One participant up to its constraint set: a count of 1, Cpu, empty label, no usage, one alternative.
const ONE_CPU_WITH_ONE_SET: &[u8] = &[1, 0, 0, 0, 1];
/// A constraint set's usage, formats and layout, all empty: up to `memory.heaps`.
const SET_UP_TO_HEAPS: &[u8] = &[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];

fn peak_of(bytes: &[u8]) -> usize {
    let base = CURRENT.load(Ordering::Relaxed);
    PEAK.store(base, Ordering::Relaxed);
    let result = wire::decode(bytes);
    let peak = PEAK.load(Ordering::Relaxed) - base;
    drop(result);
    peak
}

#[test]
fn decoding_adversarial_messages_stays_under_the_documented_bound() {
    let mut set_prefix = REQUEST_HEAD.to_vec();
    set_prefix.extend_from_slice(ONE_CPU_WITH_ONE_SET);
    set_prefix.push(0); // set usage
    let mut heaps_prefix = set_prefix.clone();
    heaps_prefix.extend_from_slice(&SET_UP_TO_HEAPS[1..]);

    // Every list claims a length that fits the bytes left, nested four deep, then stops.
    let mut nested = REQUEST_HEAD.to_vec();
    varint(60_000, &mut nested); // participants
    nested.extend_from_slice(&[0, 0, 0]);
    varint(60_000, &mut nested); // alternatives
    nested.push(0);
    varint(60_000, &mut nested); // formats
    nested.push(0);
    varint(60_000, &mut nested); // modifiers
    nested.resize(MAX_PAYLOAD_SIZE, 0);

    let cases: Vec<(&str, Vec<u8>)> = vec![
        // 4-byte participants (Cpu, "", no usage, no alternatives).
        (
            "participants",
            fill_list(MessageType::Solve, REQUEST_HEAD, &[0, 0, 0, 0]),
        ),
        // 2-byte formats (fourcc 0, no modifiers).
        (
            "formats",
            fill_list(MessageType::Solve, &set_prefix, &[0, 0]),
        ),
        // 1-byte heap names (empty strings): 24 bytes of memory per input byte.
        (
            "heap names",
            fill_list(MessageType::Solve, &heaps_prefix, &[0]),
        ),
        // 3-byte conflicts (owner Request, kind Formats, empty value).
        (
            "conflicts",
            fill_list(MessageType::SolveReply, &[1], &[0, 0, 0]),
        ),
        // 1-byte notes after an empty conflict list and no split.
        (
            "notes",
            fill_list(MessageType::SolveReply, &[1, 0, 0, 0], &[0]),
        ),
        // 6-byte owner entries (empty name, zero counters).
        (
            "owners",
            fill_list(MessageType::StatsReply, &[], &[0, 0, 0, 0, 0, 0]),
        ),
        ("nested claims", message(MessageType::Solve, &nested)),
        (
            "u64::MAX claim",
            message(
                MessageType::Ping,
                &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01],
            ),
        ),
    ];

    let mut worst = 0;
    for (name, bytes) in &cases {
        assert!(bytes.len() <= HEADER_SIZE + MAX_PAYLOAD_SIZE, "{name}");
        let peak = peak_of(bytes);
        println!(
            "{name:>16}: {} bytes in, peak {} KiB",
            bytes.len(),
            peak / 1024
        );
        worst = worst.max(peak);
    }

    println!(
        "worst peak: {} KiB (bound {} KiB)",
        worst / 1024,
        BOUND / 1024
    );
    assert!(
        worst < BOUND,
        "peak {worst} bytes exceeds the documented bound"
    );
}
