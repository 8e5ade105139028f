//! The wire codec: round trips of every message type, and every malformed input rejected
//! with the right error (and error code).

// Test code: a panic is how a test reports failure (as clippy.toml allows inside #[test]).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod common;

use bufbroker_proto::limits::{LimitError, MAX_PARTICIPANTS};
use bufbroker_proto::wire::*;
use bufbroker_proto::{Participant, ParticipantId, Usage};
use common::{arb_message, small_request};
use proptest::prelude::*;

fn ping_bytes() -> Vec<u8> {
    encode(
        &Ping {
            payload: vec![1, 2, 3],
        }
        .into(),
        7,
    )
    .unwrap()
}

/// `bytes` with the header's payload length set to the bytes present.
fn fix_length(mut bytes: Vec<u8>) -> Vec<u8> {
    let len = (bytes.len() - HEADER_SIZE) as u32;
    bytes[12..16].copy_from_slice(&len.to_le_bytes());
    bytes
}

/// A message of type `ty` with exactly `payload`.
fn raw(ty: u16, request_id: u32, payload: &[u8]) -> Vec<u8> {
    let header = Header {
        version: PROTOCOL_VERSION,
        type_code: ty,
        request_id,
        payload_len: payload.len() as u32,
    };
    let mut bytes = header.to_bytes().to_vec();
    bytes.extend_from_slice(payload);
    bytes
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn every_message_round_trips(message in arb_message(), request_id in any::<u32>()) {
        let bytes = encode(&message, request_id).unwrap();

        let (header, decoded) = decode(&bytes).unwrap();

        prop_assert_eq!(decoded, message.clone());
        prop_assert_eq!(header.request_id, request_id);
        prop_assert_eq!(header.version, PROTOCOL_VERSION);
        prop_assert_eq!(header.type_code, message.message_type().code());
        prop_assert_eq!(header.payload_len as usize, bytes.len() - HEADER_SIZE);
    }

    #[test]
    fn decode_never_panics_on_arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        let _ = decode(&bytes);
    }

    #[test]
    fn decode_never_panics_on_arbitrary_payloads(
        ty in prop::sample::select(MessageType::ALL.to_vec()),
        payload in prop::collection::vec(any::<u8>(), 0..256),
    ) {
        let _ = decode(&raw(ty.code(), 1, &payload));
    }

    #[test]
    fn every_truncation_of_a_valid_message_is_rejected(
        message in arb_message(),
        cut in any::<prop::sample::Index>(),
    ) {
        let bytes = encode(&message, 1).unwrap();
        let cut = cut.index(bytes.len());

        prop_assert!(decode(&bytes[..cut]).is_err());
    }
}

#[test]
fn header_is_little_endian_at_fixed_offsets() {
    let bytes = ping_bytes();

    assert_eq!(&bytes[0..4], b"BBRK");
    assert_eq!(&bytes[4..6], &[1, 0]);
    assert_eq!(&bytes[6..8], &[0x02, 0x00]);
    assert_eq!(&bytes[8..12], &[7, 0, 0, 0]);
    assert_eq!(&bytes[12..16], &[4, 0, 0, 0]);
    assert_eq!(&bytes[16..], &[3, 1, 2, 3]);
}

#[test]
fn decode_short_header_returns_short_message() {
    let bytes = ping_bytes();

    let err = decode(&bytes[..HEADER_SIZE - 1]).unwrap_err();

    assert_eq!(
        err,
        WireError::ShortMessage {
            len: HEADER_SIZE - 1
        }
    );
    assert_eq!(err.code(), ErrorCode::SHORT_MESSAGE);
}

#[test]
fn decode_empty_input_returns_short_message() {
    assert_eq!(decode(&[]), Err(WireError::ShortMessage { len: 0 }));
}

#[test]
fn decode_bad_magic_returns_bad_magic() {
    let mut bytes = ping_bytes();
    bytes[0] = b'X';

    let err = decode(&bytes).unwrap_err();

    assert_eq!(
        err,
        WireError::BadMagic {
            found: u32::from_le_bytes(*b"XBRK")
        }
    );
    assert_eq!(err.code(), ErrorCode::BAD_MAGIC);
}

#[test]
fn decode_unsupported_version_returns_unsupported_version() {
    let mut bytes = ping_bytes();
    bytes[4..6].copy_from_slice(&2u16.to_le_bytes());

    let err = decode(&bytes).unwrap_err();

    assert_eq!(err, WireError::UnsupportedVersion { version: 2 });
    assert_eq!(err.code(), ErrorCode::UNSUPPORTED_VERSION);
}

#[test]
fn decode_version_zero_returns_unsupported_version() {
    let mut bytes = ping_bytes();
    bytes[4..6].copy_from_slice(&0u16.to_le_bytes());

    assert_eq!(
        decode(&bytes),
        Err(WireError::UnsupportedVersion { version: 0 })
    );
}

#[test]
fn decode_payload_shorter_than_announced_returns_length_mismatch() {
    let bytes = ping_bytes();

    let err = decode(&bytes[..bytes.len() - 1]).unwrap_err();

    assert_eq!(
        err,
        WireError::LengthMismatch {
            announced: 4,
            present: 3
        }
    );
    assert_eq!(err.code(), ErrorCode::LENGTH_MISMATCH);
}

#[test]
fn decode_payload_longer_than_announced_returns_length_mismatch() {
    let mut bytes = ping_bytes();
    bytes.push(0);

    assert_eq!(
        decode(&bytes),
        Err(WireError::LengthMismatch {
            announced: 4,
            present: 5
        })
    );
}

#[test]
fn decode_announced_length_over_the_maximum_returns_message_too_large() {
    let mut bytes = ping_bytes();
    bytes[12..16].copy_from_slice(&(MAX_PAYLOAD_SIZE as u32 + 1).to_le_bytes());

    let err = decode(&bytes).unwrap_err();

    assert_eq!(
        err,
        WireError::MessageTooLarge {
            len: MAX_PAYLOAD_SIZE + 1,
            max: MAX_PAYLOAD_SIZE
        }
    );
    assert_eq!(err.code(), ErrorCode::MESSAGE_TOO_LARGE);
}

#[test]
fn decode_oversize_message_returns_message_too_large() {
    let payload = vec![0u8; MAX_PAYLOAD_SIZE + 1];

    let err = decode(&raw(MessageType::Ping.code(), 1, &payload)).unwrap_err();

    assert_eq!(err.code(), ErrorCode::MESSAGE_TOO_LARGE);
}

#[test]
fn decode_trailing_bytes_returns_trailing_bytes() {
    let mut bytes = ping_bytes();
    bytes.extend_from_slice(&[0xaa, 0xbb]);
    let bytes = fix_length(bytes);

    let err = decode(&bytes).unwrap_err();

    assert_eq!(
        err,
        WireError::TrailingBytes {
            ty: MessageType::Ping,
            trailing: 2
        }
    );
    assert_eq!(err.code(), ErrorCode::TRAILING_BYTES);
}

#[test]
fn decode_unknown_type_returns_unknown_message_type_with_the_request_id_readable() {
    let bytes = raw(0x0777, 42, &[]);

    let err = decode(&bytes).unwrap_err();

    assert_eq!(err, WireError::UnknownMessageType(0x0777));
    assert_eq!(err.code(), ErrorCode::UNKNOWN_MESSAGE_TYPE);
    assert_eq!(decode_header(&bytes).unwrap().request_id, 42);
}

#[test]
fn decode_malformed_payload_returns_malformed() {
    // A Ping claiming 3 payload bytes with only 1 present.
    let bytes = raw(MessageType::Ping.code(), 1, &[3, 1]);

    let err = decode(&bytes).unwrap_err();

    assert!(
        matches!(
            err,
            WireError::Malformed {
                ty: MessageType::Ping,
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(err.code(), ErrorCode::MALFORMED_PAYLOAD);
}

#[test]
fn decode_unknown_enum_tag_returns_malformed() {
    // Grant: buffer 1, grantee "", access tag 2 (no such variant).
    let bytes = raw(MessageType::Grant.code(), 1, &[1, 0, 2]);

    assert_eq!(
        decode(&bytes).unwrap_err().code(),
        ErrorCode::MALFORMED_PAYLOAD
    );
}

#[test]
fn decode_bool_other_than_zero_or_one_returns_malformed() {
    // SolveReply::Unsatisfiable: no conflicts, minimal = 2, no split, no notes.
    let bytes = raw(MessageType::SolveReply.code(), 1, &[1, 0, 2, 0, 0]);

    assert_eq!(
        decode(&bytes).unwrap_err().code(),
        ErrorCode::MALFORMED_PAYLOAD
    );
}

#[test]
fn decode_option_tag_other_than_zero_or_one_returns_malformed() {
    // SolveReply::Unsatisfiable: no conflicts, minimal = 1, split tag 2, no notes.
    let bytes = raw(MessageType::SolveReply.code(), 1, &[1, 0, 1, 2, 0]);

    assert_eq!(
        decode(&bytes).unwrap_err().code(),
        ErrorCode::MALFORMED_PAYLOAD
    );
}

#[test]
fn decode_invalid_utf8_returns_malformed() {
    // Grant: buffer 1, grantee of one byte 0xff, read-only.
    let bytes = raw(MessageType::Grant.code(), 1, &[1, 1, 0xff, 0]);

    assert_eq!(
        decode(&bytes).unwrap_err().code(),
        ErrorCode::MALFORMED_PAYLOAD
    );
}

#[test]
fn decode_overlong_varint_returns_malformed() {
    // Free with a buffer id varint of 11 bytes (a u64 takes at most 10).
    let mut payload = vec![0x80; 10];
    payload.push(0x00);

    let err = decode(&raw(MessageType::Free.code(), 1, &payload)).unwrap_err();

    assert_eq!(err.code(), ErrorCode::MALFORMED_PAYLOAD);
}

#[test]
fn decode_unknown_usage_bits_returns_malformed() {
    let mut request = small_request();
    request.usage = Usage::CPU_READ;
    let mut bytes = encode(&Solve { request }.into(), 1).unwrap();
    // The request's usage is the byte after width (64), height (32), formats (1, varint XR24).
    let at = HEADER_SIZE + 1 + 1 + 1 + 5;
    assert_eq!(bytes[at], Usage::CPU_READ.bits() as u8);
    bytes[at] = 0x80;
    bytes.insert(at + 1, 0x40);
    let bytes = fix_length(bytes);

    assert_eq!(
        decode(&bytes).unwrap_err().code(),
        ErrorCode::MALFORMED_PAYLOAD
    );
}

#[test]
fn decode_huge_list_length_with_no_elements_returns_malformed() {
    // Ping whose payload claims u64::MAX bytes.
    let payload = [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01];

    let err = decode(&raw(MessageType::Ping.code(), 1, &payload)).unwrap_err();

    assert_eq!(err.code(), ErrorCode::MALFORMED_PAYLOAD);
}

#[test]
fn decode_ping_over_the_payload_limit_returns_limit_exceeded() {
    let mut payload = vec![0x81, 0x08]; // varint 1025
    payload.extend(std::iter::repeat_n(0u8, MAX_PING_PAYLOAD + 1));

    let err = decode(&raw(MessageType::Ping.code(), 1, &payload)).unwrap_err();

    assert_eq!(
        err,
        WireError::Limit {
            ty: MessageType::Ping,
            source: LimitError::TooMany {
                what: "ping payload",
                len: MAX_PING_PAYLOAD + 1,
                max: MAX_PING_PAYLOAD
            }
        }
    );
    assert_eq!(err.code(), ErrorCode::LIMIT_EXCEEDED);
}

#[test]
fn decode_request_with_too_many_participants_returns_limit_exceeded() {
    let mut request = small_request();
    let cpu = request.participants[0].clone();
    request.participants = vec![cpu; MAX_PARTICIPANTS + 1];
    let payload = postcard::to_stdvec(&request).unwrap();

    let err = decode(&raw(MessageType::Solve.code(), 1, &payload)).unwrap_err();

    assert!(
        matches!(
            err,
            WireError::Limit {
                ty: MessageType::Solve,
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(err.code(), ErrorCode::LIMIT_EXCEEDED);
}

#[test]
fn decode_participant_without_alternatives_returns_limit_exceeded() {
    let participant = Participant {
        id: ParticipantId::Cpu,
        label: "cpu".into(),
        usage: Usage::empty(),
        alternatives: vec![],
    };
    let payload = postcard::to_stdvec(&RegisterParticipant {
        name: "x".into(),
        participant,
    })
    .unwrap();

    let err = decode(&raw(MessageType::RegisterParticipant.code(), 1, &payload)).unwrap_err();

    assert_eq!(err.code(), ErrorCode::LIMIT_EXCEEDED);
}

#[test]
fn decode_guest_ram_with_too_many_ranges_returns_limit_exceeded() {
    let message = Allocate {
        request: small_request(),
        placement: Placement::GuestRam {
            ranges: vec![GuestRange { addr: 0, len: 4096 }; MAX_GUEST_RANGES + 1],
        },
    };
    let payload = postcard::to_stdvec(&message).unwrap();

    let err = decode(&raw(MessageType::Allocate.code(), 1, &payload)).unwrap_err();

    assert_eq!(err.code(), ErrorCode::LIMIT_EXCEEDED);
}

#[test]
fn decode_long_name_returns_limit_exceeded() {
    let hello = Hello {
        min_version: 1,
        max_version: 1,
        features: Features::empty(),
        client: "x".repeat(bufbroker_proto::limits::MAX_STRING + 1),
    };
    let payload = postcard::to_stdvec(&hello).unwrap();

    let err = decode(&raw(MessageType::Hello.code(), 1, &payload)).unwrap_err();

    assert_eq!(err.code(), ErrorCode::LIMIT_EXCEEDED);
}

#[test]
fn encode_refuses_a_message_over_its_limits() {
    let ping = Ping {
        payload: vec![0; MAX_PING_PAYLOAD + 1],
    };

    let err = encode(&ping.into(), 1).unwrap_err();

    assert_eq!(err.code(), ErrorCode::LIMIT_EXCEEDED);
}

#[test]
fn encode_refuses_a_payload_over_the_maximum_size() {
    // 64 notes of 1024 bytes: within the per-list limits, over the message size.
    let diagnostic = bufbroker_proto::Diagnostic {
        conflicts: vec![],
        minimal: false,
        split: None,
        notes: vec!["n".repeat(MAX_TEXT); MAX_DIAGNOSTIC_ENTRIES],
    };

    let err = encode(&SolveReply::Unsatisfiable(Box::new(diagnostic)).into(), 1).unwrap_err();

    assert_eq!(err.code(), ErrorCode::MESSAGE_TOO_LARGE);
}

#[test]
fn decode_header_reads_a_stream_header_without_its_payload() {
    let bytes = ping_bytes();

    let header = decode_header(&bytes[..HEADER_SIZE]).unwrap();

    assert_eq!(
        header,
        Header {
            version: 1,
            type_code: MessageType::Ping.code(),
            request_id: 7,
            payload_len: 4
        }
    );
}

#[test]
fn peek_request_id_reads_the_id_of_a_message_with_a_bad_magic() {
    let mut bytes = ping_bytes();
    bytes[0] = 0;

    assert_eq!(peek_request_id(&bytes), Some(7));
    assert_eq!(peek_request_id(&bytes[..11]), None);
}

#[test]
fn error_reply_for_a_decode_error_carries_its_code_and_encodes() {
    let err = decode(&raw(0x0777, 9, &[])).unwrap_err();

    let reply = ErrorReply::from(&err);
    let bytes = encode(&reply.clone().into(), 9).unwrap();

    assert_eq!(reply.code, ErrorCode::UNKNOWN_MESSAGE_TYPE);
    assert_eq!(reply.message, "unknown message type 0x0777");
    assert!(decode(&bytes).is_ok());
}

#[test]
fn error_reply_new_cuts_long_messages_at_a_char_boundary() {
    let reply = ErrorReply::new(ErrorCode::INTERNAL, "é".repeat(MAX_ERROR_MESSAGE));

    assert!(reply.message.len() <= MAX_ERROR_MESSAGE);
    assert!(reply.message.len() >= MAX_ERROR_MESSAGE - 1);
    assert!(encode(&reply.into(), 1).is_ok());
}

#[test]
fn unknown_feature_bits_survive_decoding() {
    let hello = Hello {
        min_version: 1,
        max_version: 1,
        features: Features::from_bits_retain(1 << 63 | 1),
        client: String::new(),
    };

    let (_, decoded) = decode(&encode(&hello.clone().into(), 1).unwrap()).unwrap();

    assert_eq!(decoded, Message::Hello(hello));
}

#[test]
fn negotiate_picks_the_highest_common_version_and_intersects_features() {
    let hello = Hello {
        min_version: 1,
        max_version: 9,
        features: Features::HOST_WINDOW | Features::GUEST_RAM | Features::from_bits_retain(1 << 40),
        client: String::new(),
    };

    let n = negotiate(&hello, Features::HOST_WINDOW | Features::EVENTS).unwrap();

    assert_eq!(n.version, PROTOCOL_VERSION);
    assert_eq!(n.features, Features::HOST_WINDOW);
}

#[test]
fn negotiate_without_a_common_version_fails_with_unsupported_version() {
    let hello = Hello {
        min_version: 2,
        max_version: 3,
        features: Features::empty(),
        client: String::new(),
    };

    assert_eq!(
        negotiate(&hello, Features::all()),
        Err(ErrorCode::UNSUPPORTED_VERSION)
    );
}

#[test]
fn message_type_codes_are_unique_and_replies_answer_their_requests() {
    let mut codes: Vec<u16> = MessageType::ALL.iter().map(|t| t.code()).collect();
    codes.sort_unstable();
    codes.dedup();

    assert_eq!(codes.len(), MessageType::ALL.len());
    for ty in MessageType::ALL {
        assert_eq!(MessageType::from_code(ty.code()), Some(*ty));
        if ty.direction() == Direction::Request {
            let reply = ty.reply_type().unwrap();
            assert_eq!(reply.direction(), Direction::Reply, "{ty}");
            assert_eq!(reply.code(), ty.code() | 0x8000);
        }
    }
}

#[test]
fn error_codes_are_unique_and_named() {
    let mut codes: Vec<u16> = ErrorCode::ALL.iter().map(|c| c.0).collect();
    codes.sort_unstable();
    codes.dedup();

    assert_eq!(codes.len(), ErrorCode::ALL.len());
    assert!(ErrorCode::ALL.iter().all(|c| c.name().is_some()));
    assert_eq!(ErrorCode(0x7777).name(), None);
}

#[test]
fn solve_reply_from_the_outcome_of_a_maximal_unsatisfiable_request_fits_in_a_message() {
    use bufbroker_proto::limits::{MAX_ALTERNATIVES, MAX_FORMATS};
    use bufbroker_proto::{ConstraintSet, FormatModifiers, Fourcc, solve};
    // 16 participants × 8 alternatives × 64 formats, no two participants sharing a format.
    let participants: Vec<Participant> = (0..MAX_PARTICIPANTS as u32)
        .map(|p| Participant {
            id: ParticipantId::GuestLocal(p),
            label: format!("participant-{p:0>200}"),
            usage: Usage::empty(),
            alternatives: (0..MAX_ALTERNATIVES as u32)
                .map(|a| ConstraintSet {
                    formats: (0..MAX_FORMATS as u32)
                        .map(|f| FormatModifiers {
                            fourcc: Fourcc(0x1000_0000 + (p << 16) + (a << 8) + f),
                            modifiers: vec![],
                        })
                        .collect(),
                    ..ConstraintSet::default()
                })
                .collect(),
        })
        .collect();
    let request = bufbroker_proto::Request {
        participants,
        ..small_request()
    };
    let request = bufbroker_proto::Request {
        formats: vec![],
        ..request
    };
    let solve_bytes = encode(
        &Solve {
            request: request.clone(),
        }
        .into(),
        1,
    );
    let heaps = [bufbroker_proto::HeapInfo::memfd()];

    let outcome = solve(&request, &heaps);

    assert!(solve_bytes.is_ok(), "{solve_bytes:?}");
    let Err(bufbroker_proto::SolveError::Unsatisfiable(diagnostic)) = &outcome else {
        panic!("expected unsatisfiable, got {outcome:?}");
    };
    let untrimmed = encode(&SolveReply::Unsatisfiable(diagnostic.clone()).into(), 1);
    let reply = SolveReply::from_outcome(outcome).unwrap();
    let bytes = encode(&reply.into(), 1);
    assert!(
        untrimmed.is_err(),
        "the sample no longer needs trimming; make it larger"
    );
    assert!(bytes.is_ok(), "{:?}", bytes.map(|b| b.len()));
}

#[test]
fn fit_diagnostic_lists_at_most_the_limit_and_says_how_many_were_left_out() {
    use bufbroker_proto::solver::{Conflict, ConstraintKind, ConstraintOwner};
    let conflict = Conflict {
        owner: ConstraintOwner::Request,
        kind: ConstraintKind::Formats,
        value: "x".repeat(5000),
    };
    let diagnostic = bufbroker_proto::Diagnostic {
        conflicts: vec![conflict; MAX_DIAGNOSTIC_ENTRIES + 3],
        minimal: true,
        split: None,
        notes: vec!["n".into(); MAX_DIAGNOSTIC_ENTRIES + 10],
    };

    let fitted = fit_diagnostic(diagnostic);

    assert_eq!(fitted.conflicts.len(), MAX_DIAGNOSTIC_ENTRIES);
    assert!(!fitted.minimal);
    assert_eq!(fitted.notes.len(), MAX_DIAGNOSTIC_ENTRIES);
    assert_eq!(fitted.notes[0], "3 more conflicting constraints not listed");
    assert_eq!(
        fitted.notes[MAX_DIAGNOSTIC_ENTRIES - 1],
        "12 more notes not listed"
    );
    assert!(encode(&SolveReply::Unsatisfiable(Box::new(fitted)).into(), 1).is_ok());
}

#[test]
fn the_round_trip_strategy_generates_every_message_type() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    use std::collections::BTreeSet;
    let strategy = arb_message();
    let mut runner = TestRunner::deterministic();

    let seen: BTreeSet<MessageType> = (0..3000)
        .map(|_| {
            strategy
                .new_tree(&mut runner)
                .unwrap()
                .current()
                .message_type()
        })
        .collect();

    let missing: Vec<_> = MessageType::ALL
        .iter()
        .filter(|t| !seen.contains(t))
        .collect();
    assert!(missing.is_empty(), "never generated: {missing:?}");
}
