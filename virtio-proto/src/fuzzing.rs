//! Fuzz target logic, shared by the cargo-fuzz targets in `fuzz/` and the stable test that
//! replays their corpora (`tests/fuzz_corpus.rs`). Each function panics when an oracle fails,
//! which is what a fuzzer reports as a crash.

#![allow(clippy::panic)]

use crate::check::verify_plan;
use crate::heap::{HeapInfo, HeapKind};
use crate::request::Request;
use crate::solver::{SolveOptions, solve_with};
use crate::wire;

/// What one input did, for the corpus replay test to count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The input was rejected (the expected fate of most fuzz inputs).
    Rejected,
    /// The input was accepted and every oracle held.
    Accepted,
}

/// Decodes `data` as a message. When it decodes, the message must encode again, and the
/// re-encoding must decode to the same message and header.
pub fn decode(data: &[u8]) -> Outcome {
    let Ok((header, message)) = wire::decode(data) else {
        return Outcome::Rejected;
    };
    let bytes = match wire::encode(&message, header.request_id) {
        Ok(b) => b,
        Err(e) => panic!("decoded {message:?} does not encode again: {e}"),
    };
    if bytes.len() > data.len() {
        panic!(
            "re-encoding grew from {} to {} bytes",
            data.len(),
            bytes.len()
        );
    }
    match wire::decode(&bytes) {
        Ok((h, m)) => {
            assert_eq!(h.request_id, header.request_id, "request id changed");
            assert_eq!(h.type_code, header.type_code, "type changed");
            assert_eq!(m, message, "message changed by a round trip");
        }
        Err(e) => panic!("re-encoded {message:?} does not decode: {e}"),
    }
    Outcome::Accepted
}

/// The heaps the `solve` target solves against: the memfd heap, a system dma-heap and a
/// small 32-bit contiguous write-combined one.
pub fn solve_heaps() -> Vec<HeapInfo> {
    vec![
        HeapInfo::memfd(),
        HeapInfo {
            name: "system".into(),
            kind: HeapKind::DmaHeap,
            dmabuf: true,
            ..HeapInfo::memfd()
        },
        HeapInfo {
            name: "cma".into(),
            kind: HeapKind::DmaHeap,
            contiguous: true,
            dmabuf: true,
            cache_mode: crate::CacheMode::WriteCombined,
            max_size: 16 << 20,
            address_bits: 32,
            ..HeapInfo::memfd()
        },
    ]
}

/// The solver options of the `solve` target: a small budget so each input stays fast.
pub const SOLVE_OPTIONS: SolveOptions = SolveOptions {
    max_plans: 4,
    budget: 2_000,
    explain: true,
};

/// Decodes `data` as a postcard [`Request`] and solves it against [`solve_heaps`]. Every plan
/// returned must pass the independent checker; solving again must give the same outcome; and
/// the outcome must fit in a `SolveReply` (else the broker could not send it).
pub fn solve(data: &[u8]) -> Outcome {
    let Ok((request, _)) = postcard::take_from_bytes::<Request>(data) else {
        return Outcome::Rejected;
    };
    let heaps = solve_heaps();
    let outcome = solve_with(&request, &heaps, &SOLVE_OPTIONS);
    assert_eq!(
        outcome,
        solve_with(&request, &heaps, &SOLVE_OPTIONS),
        "the solver is not deterministic"
    );
    if let Ok(solution) = &outcome {
        for plan in &solution.plans {
            if let Err(v) = verify_plan(&request, &heaps, plan) {
                panic!("solver returned a plan the checker rejects: {v}\n{plan:?}\n{request:?}");
            }
        }
    }
    let Ok(reply) = wire::SolveReply::from_outcome(outcome) else {
        return Outcome::Rejected;
    };
    if let Err(e) = wire::encode(&reply.into(), 1) {
        panic!(
            "the solver's outcome does not fit in a SolveReply: {}",
            wire::error_chain(&e)
        );
    }
    Outcome::Accepted
}
