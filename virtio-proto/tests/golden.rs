//! Golden vectors: `tests/golden/<name>.bin` holds the exact bytes of each sample message in
//! `common::golden_messages()`. The encoder must reproduce them byte for byte and the decoder
//! must accept them and give the same message back.
//!
//! Regenerate (only after a deliberate protocol change, with a version bump) with
//! `cargo test -p bufbroker-proto --test golden -- --ignored regenerate`; this also refreshes
//! the fuzz seed corpora under `fuzz/corpus/`.

// Test code: a panic is how a test reports failure (as clippy.toml allows inside #[test]).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod common;

use std::collections::BTreeSet;
use std::fs;

use bufbroker_proto::wire::{self, MessageType};
use common::{corpus_dir, golden_dir, golden_messages, solve_seed_requests};

#[test]
fn encoder_reproduces_every_golden_vector() {
    for (name, message, request_id) in golden_messages() {
        let path = golden_dir().join(format!("{name}.bin"));
        let expected = fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));

        let bytes = wire::encode(&message, request_id).unwrap();

        assert_eq!(
            bytes, expected,
            "{name}: encoder output differs from the golden vector"
        );
    }
}

#[test]
fn decoder_accepts_every_golden_vector_and_round_trips() {
    for (name, message, request_id) in golden_messages() {
        let bytes = fs::read(golden_dir().join(format!("{name}.bin"))).unwrap();

        let (header, decoded) = wire::decode(&bytes).unwrap();

        assert_eq!(decoded, message, "{name}");
        assert_eq!(header.request_id, request_id, "{name}");
        assert_eq!(header.type_code, message.message_type().code(), "{name}");
        assert_eq!(
            header.payload_len as usize,
            bytes.len() - wire::HEADER_SIZE,
            "{name}"
        );
    }
}

#[test]
fn every_message_type_has_a_golden_vector() {
    let covered: BTreeSet<MessageType> = golden_messages()
        .iter()
        .map(|(_, m, _)| m.message_type())
        .collect();

    let missing: Vec<_> = MessageType::ALL
        .iter()
        .filter(|t| !covered.contains(t))
        .collect();

    assert!(missing.is_empty(), "no golden vector for {missing:?}");
}

#[test]
fn golden_directory_holds_no_stale_vectors() {
    let expected: BTreeSet<String> = golden_messages()
        .iter()
        .map(|(n, _, _)| format!("{n}.bin"))
        .collect();

    let present: BTreeSet<String> = fs::read_dir(golden_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".bin"))
        .collect();

    assert_eq!(present, expected);
}

/// Writes the golden vectors and the fuzz seed corpora. Ignored: run it on purpose.
#[test]
#[ignore = "writes tests/golden and fuzz/corpus; run only after a deliberate protocol change"]
fn regenerate() {
    fs::create_dir_all(golden_dir()).unwrap();
    let decode_corpus = corpus_dir("decode");
    let solve_corpus = corpus_dir("solve");
    fs::create_dir_all(&decode_corpus).unwrap();
    fs::create_dir_all(&solve_corpus).unwrap();
    for (name, message, request_id) in golden_messages() {
        let bytes = wire::encode(&message, request_id).unwrap();
        fs::write(golden_dir().join(format!("{name}.bin")), &bytes).unwrap();
        fs::write(decode_corpus.join(format!("golden-{name}")), &bytes).unwrap();
    }
    for (name, request) in solve_seed_requests() {
        let bytes = postcard::to_stdvec(&request).unwrap();
        fs::write(solve_corpus.join(format!("request-{name}")), bytes).unwrap();
    }
}

/// `xxd -g1` style: offset, 16 bytes in hex, the printable ASCII.
fn hex_dump(bytes: &[u8]) -> String {
    let mut out = String::new();
    for (i, chunk) in bytes.chunks(16).enumerate() {
        let hex: Vec<String> = chunk.iter().map(|b| format!("{b:02x}")).collect();
        let ascii: String = chunk
            .iter()
            .map(|&b| {
                if b.is_ascii_graphic() || b == b' ' {
                    b as char
                } else {
                    '.'
                }
            })
            .collect();
        out.push_str(&format!("{:08x}: {:<47}  {ascii}\n", i * 16, hex.join(" ")));
    }
    out
}

#[test]
fn protocol_md_hex_dumps_match_the_golden_vectors() {
    let doc = fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/PROTOCOL.md")).unwrap();

    for name in [
        "hello",
        "ping",
        "pong",
        "hello_reply",
        "solve_small",
        "error_reply",
    ] {
        let bytes = fs::read(golden_dir().join(format!("{name}.bin"))).unwrap();
        let dump = hex_dump(&bytes);

        assert!(
            doc.contains(&dump),
            "PROTOCOL.md lacks the dump of {name}:\n{dump}"
        );
    }
}
