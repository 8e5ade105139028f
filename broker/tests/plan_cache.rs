//! The plan cache behind sessions: a repeated request is answered from the cache, and never
//! with a plan solved for what a participant name meant before a registration changed it.

// Test code: a panic is a test failure, which is what these lints would otherwise forbid.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::sync::Arc;

use bufbroker::config::{Config, OwnerPolicy};
use bufbroker::heap::{Heap, MemfdHeap};
use bufbroker::session::{Broker, Reply, Session};
use bufbroker_proto::wire::{
    self, ErrorCode, Features, Hello, Message, ParticipantHandle, RegisterParticipant, Solve,
    SolveReply, UnregisterParticipant,
};
use bufbroker_proto::{ConstraintSet, Participant, ParticipantId, Request, Usage};

fn broker() -> Arc<Broker> {
    let mut config = Config::default();
    config.owners.insert(
        "vm".into(),
        OwnerPolicy {
            admin: Some(true),
            ..OwnerPolicy::default()
        },
    );
    let heaps: Vec<Arc<dyn Heap>> = vec![Arc::new(MemfdHeap::new())];
    Arc::new(Broker::new(config, heaps).unwrap())
}

fn session(broker: &Arc<Broker>) -> Session {
    let mut s = Session::new(broker.clone(), "vm", None);
    let reply = s.handle(Message::Hello(Hello {
        min_version: 1,
        max_version: 1,
        features: Features::all(),
        client: "test".into(),
    }));
    assert!(matches!(reply.message, Message::HelloReply(_)), "{reply:?}");
    s
}

/// A participant whose rows must be `stride_alignment`-aligned.
fn device(stride_alignment: u32) -> Participant {
    let mut constraints = ConstraintSet::default();
    constraints.layout.stride_alignment = stride_alignment;
    Participant::new(
        ParticipantId::GuestLocal(0),
        "device",
        Usage::CPU_READ,
        constraints,
    )
}

fn register(s: &mut Session, name: &str, participant: Participant) -> ParticipantHandle {
    let reply = s.handle(Message::RegisterParticipant(RegisterParticipant {
        name: name.into(),
        participant,
    }));
    match reply.message {
        Message::RegisterParticipantReply(r) => r.handle,
        other => panic!("expected RegisterParticipantReply, got {other:?}"),
    }
}

fn unregister(s: &mut Session, handle: ParticipantHandle) {
    let reply = s.handle(Message::UnregisterParticipant(UnregisterParticipant {
        handle,
    }));
    assert!(
        matches!(reply.message, Message::UnregisterParticipantReply(_)),
        "{reply:?}"
    );
}

/// 100 pixels of XRGB8888 (400 bytes a row) for the participant called `name`, or for an
/// inline CPU participant when `name` is `None`.
fn request(name: Option<&str>) -> Request {
    let id = name.map_or(ParticipantId::Cpu, |n| ParticipantId::Named(n.into()));
    Request {
        width: 100,
        height: 16,
        formats: vec!["XRGB8888".parse().unwrap()],
        usage: Usage::empty(),
        participants: vec![Participant::new(
            id,
            "p",
            Usage::CPU_READ,
            ConstraintSet::default(),
        )],
        count: 1,
    }
}

fn solve(s: &mut Session, request: Request) -> Reply {
    s.handle(Message::Solve(Solve { request }))
}

/// The first plane's stride of a solved reply.
fn stride(reply: &Reply) -> u32 {
    match &reply.message {
        Message::SolveReply(SolveReply::Solved(solution)) => solution.plans[0].planes[0].stride,
        other => panic!("expected a solution, got {other:?}"),
    }
}

fn hits(broker: &Broker) -> u64 {
    broker.plans().counters().0
}

#[test]
fn repeated_named_request_is_a_cache_hit() {
    let broker = broker();
    let mut s = session(&broker);
    register(&mut s, "dev", device(512));
    let first = solve(&mut s, request(Some("dev")));
    let before = hits(&broker);

    let again = solve(&mut s, request(Some("dev")));

    assert_eq!(stride(&again), stride(&first));
    assert_eq!(hits(&broker), before + 1);
}

#[test]
fn reregistered_name_is_solved_for_its_new_description() {
    let broker = broker();
    let mut s = session(&broker);
    let handle = register(&mut s, "dev", device(512));
    let before = solve(&mut s, request(Some("dev")));

    unregister(&mut s, handle);
    register(&mut s, "dev", device(1024));
    let after = solve(&mut s, request(Some("dev")));

    assert_eq!(stride(&before), 512);
    assert_eq!(stride(&after), 1024);
}

#[test]
fn registering_another_participant_invalidates_the_sessions_named_plans() {
    let broker = broker();
    let mut s = session(&broker);
    register(&mut s, "dev", device(512));
    solve(&mut s, request(Some("dev")));
    let before = hits(&broker);

    register(&mut s, "other", device(64));
    solve(&mut s, request(Some("dev")));

    assert_eq!(hits(&broker), before);
}

#[test]
fn unregistered_name_is_not_found_although_it_was_cached() {
    let broker = broker();
    let mut s = session(&broker);
    let handle = register(&mut s, "dev", device(512));
    solve(&mut s, request(Some("dev")));

    unregister(&mut s, handle);
    let reply = solve(&mut s, request(Some("dev")));

    assert_eq!(reply.error_code(), Some(ErrorCode::NOT_FOUND));
}

#[test]
fn same_name_in_two_sessions_resolves_per_session() {
    let broker = broker();
    let mut a = session(&broker);
    let mut b = session(&broker);
    register(&mut a, "dev", device(512));
    register(&mut b, "dev", device(1024));

    let from_a = solve(&mut a, request(Some("dev")));
    let from_b = solve(&mut b, request(Some("dev")));

    assert_eq!(stride(&from_a), 512);
    assert_eq!(stride(&from_b), 1024);
}

#[test]
fn request_without_names_is_shared_between_sessions() {
    let broker = broker();
    let mut a = session(&broker);
    let mut b = session(&broker);
    solve(&mut a, request(None));
    let before = hits(&broker);

    solve(&mut b, request(None));

    assert_eq!(hits(&broker), before + 1);
}

#[test]
fn ended_session_leaves_no_named_plans_behind() {
    let broker = broker();
    let mut s = session(&broker);
    register(&mut s, "dev", device(512));
    solve(&mut s, request(Some("dev")));
    assert_eq!(broker.plans().len(), 1);

    drop(s);

    assert!(broker.plans().is_empty());
}

#[test]
fn request_received_as_bytes_shares_the_entry_of_the_decoded_request() {
    let broker = broker();
    let mut s = session(&broker);
    let message = Message::Solve(Solve {
        request: request(None),
    });
    let (_, first) = s.handle_bytes(&wire::encode(&message, 9).unwrap());
    let before = hits(&broker);

    let again = solve(&mut s, request(None));

    assert_eq!(stride(&again), stride(&first));
    assert_eq!(hits(&broker), before + 1);
}

#[test]
fn repeated_request_as_bytes_is_a_cache_hit() {
    let broker = broker();
    let mut s = session(&broker);
    register(&mut s, "dev", device(512));
    let message = Message::Solve(Solve {
        request: request(Some("dev")),
    });
    let bytes = wire::encode(&message, 9).unwrap();
    s.handle_bytes(&bytes);
    let before = hits(&broker);

    let (id, again) = s.handle_bytes(&bytes);

    assert_eq!(id, 9);
    assert_eq!(stride(&again), 512);
    assert_eq!(hits(&broker), before + 1);
}
