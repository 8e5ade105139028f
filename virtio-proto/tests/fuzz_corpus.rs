//! Replays every checked-in fuzz corpus file (`fuzz/corpus/<target>/`) through the same
//! functions the cargo-fuzz targets call, on stable Rust. A crash the fuzzer found and that
//! was added to the corpus stays fixed.

// Test code: a panic is how a test reports failure (as clippy.toml allows inside #[test]).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod common;

use std::fs;

use bufbroker_proto::fuzzing::{self, Outcome};
use common::corpus_dir;

fn replay(target: &str, run: fn(&[u8]) -> Outcome) -> (usize, usize) {
    let mut accepted = 0;
    let mut total = 0;
    for entry in fs::read_dir(corpus_dir(target)).unwrap() {
        let path = entry.unwrap().path();
        let data = fs::read(&path).unwrap();
        if run(&data) == Outcome::Accepted {
            accepted += 1;
        }
        total += 1;
    }
    (accepted, total)
}

#[test]
fn decode_corpus_replays_without_a_crash() {
    let (accepted, total) = replay("decode", fuzzing::decode);

    assert!(total > 0, "empty corpus");
    assert!(accepted > 0, "no corpus input decodes");
}

#[test]
fn solve_corpus_replays_without_a_crash() {
    let (accepted, total) = replay("solve", fuzzing::solve);

    assert!(total > 0, "empty corpus");
    assert!(accepted > 0, "no corpus input solves");
}

#[test]
fn every_golden_vector_is_in_the_decode_corpus() {
    for (name, _, _) in common::golden_messages() {
        let golden = fs::read(common::golden_dir().join(format!("{name}.bin"))).unwrap();
        let seed = fs::read(corpus_dir("decode").join(format!("golden-{name}"))).unwrap();

        assert_eq!(golden, seed, "{name}");
    }
}

/// Replays an outside corpus (a fuzzer's scratch directory) and prints how many inputs each
/// target accepted: `FUZZ_CORPUS=/tmp/fuzz-work/solve FUZZ_TARGET=solve cargo test -p
/// bufbroker-proto --test fuzz_corpus -- --ignored --nocapture`.
#[test]
#[ignore = "reads the directory named by FUZZ_CORPUS"]
fn replay_outside_corpus() {
    let dir = std::env::var("FUZZ_CORPUS").unwrap();
    let run = match std::env::var("FUZZ_TARGET").unwrap().as_str() {
        "decode" => fuzzing::decode,
        "solve" => fuzzing::solve,
        other => panic!("no fuzz target {other}"),
    };
    let mut accepted = 0;
    let mut total = 0;
    for entry in fs::read_dir(&dir).unwrap() {
        let data = fs::read(entry.unwrap().path()).unwrap();
        if run(&data) == Outcome::Accepted {
            accepted += 1;
        }
        total += 1;
    }
    println!("{dir}: {accepted} of {total} inputs accepted");
}
