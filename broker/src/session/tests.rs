use std::os::fd::BorrowedFd;
use std::path::PathBuf;

use bufbroker_proto::wire::{Free, Ping, QueryLimits, QueryStats, Solve};
use bufbroker_proto::{ConstraintSet, Usage};
use uuid::Uuid;

use super::*;
use crate::config::{Config, OwnerPolicy, ParticipantSource};
use crate::exposure::GuestRegion;
use crate::heap::{Heap, MemfdHeap};

/// A guest transport that records what the session asked of it.
#[derive(Default)]
struct FakeGuest {
    window: u64,
    calls: Mutex<Vec<String>>,
}

impl GuestExposure for FakeGuest {
    fn window_size(&self) -> u64 {
        self.window
    }
    fn map_window(
        &self,
        _fd: BorrowedFd<'_>,
        _fd_offset: u64,
        window_offset: u64,
        len: u64,
        writable: bool,
    ) -> Result<(), ExposureError> {
        let call = format!("map {window_offset:#x}+{len:#x} rw={writable}");
        self.calls.lock().unwrap().push(call);
        Ok(())
    }
    fn unmap_window(&self, window_offset: u64, len: u64) -> Result<(), ExposureError> {
        let call = format!("unmap {window_offset:#x}+{len:#x}");
        self.calls.lock().unwrap().push(call);
        Ok(())
    }
    fn add_shared_object(&self, uuid: Uuid) -> Result<(), ExposureError> {
        self.calls.lock().unwrap().push(format!("add {uuid}"));
        Ok(())
    }
    fn remove_shared_object(&self, uuid: Uuid) -> Result<(), ExposureError> {
        self.calls.lock().unwrap().push(format!("remove {uuid}"));
        Ok(())
    }
    fn with_guest_memory(&self, f: &mut dyn FnMut(&[GuestRegion<'_>])) {
        f(&[]);
    }
}

fn examples() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/participants")
}

/// A broker on the memfd heap with the example CPU as participant `cpu`, which only
/// `vm-allowed` may use, and a 4-buffer quota for everyone.
fn broker() -> Arc<Broker> {
    let mut config = Config::default();
    config.defaults.buffers = Some(4);
    config.participants.insert(
        "cpu".into(),
        ParticipantSource {
            file: examples().join("cpu.toml"),
            label: None,
        },
    );
    config.owners.insert(
        "vm-allowed".into(),
        OwnerPolicy {
            participants: Some(vec!["cpu".into()]),
            admin: Some(true),
            ..OwnerPolicy::default()
        },
    );
    let heaps: Vec<Arc<dyn Heap>> = vec![Arc::new(MemfdHeap::new())];
    Arc::new(Broker::new(config, heaps).unwrap())
}

fn hello(features: Features) -> Message {
    Message::Hello(Hello {
        min_version: 1,
        max_version: 1,
        features,
        client: "test".into(),
    })
}

fn negotiated(broker: &Arc<Broker>, name: &str, guest: Option<Arc<FakeGuest>>) -> Session {
    let exposure = guest.map(|g| g as Arc<dyn GuestExposure>);
    let mut s = Session::new(broker.clone(), name, exposure);
    let reply = s.handle(hello(Features::all()));
    assert!(matches!(reply.message, Message::HelloReply(_)), "{reply:?}");
    s
}

/// A request for `count` `width`x`height` buffers used by the named participant `cpu`.
fn named_request(width: u32, height: u32, count: u32) -> Request {
    Request {
        width,
        height,
        formats: vec!["XRGB8888".parse().unwrap()],
        usage: Usage::empty(),
        participants: vec![Participant::new(
            ParticipantId::Named("cpu".into()),
            "cpu",
            Usage::empty(),
            ConstraintSet::default(),
        )],
        count,
    }
}

fn allocate(request: Request, placement: Placement) -> Message {
    Message::Allocate(Allocate { request, placement })
}

fn code(reply: &Reply) -> ErrorCode {
    reply
        .error_code()
        .unwrap_or_else(|| panic!("not an error: {reply:?}"))
}

#[test]
fn requests_before_hello_get_not_negotiated_and_ping_works() {
    let mut s = Session::new(broker(), "vm-allowed", None);

    let stats = s.handle(Message::QueryStats(QueryStats));
    let pong = s.handle(Message::Ping(Ping { payload: vec![7] }));

    assert_eq!(code(&stats), ErrorCode::NOT_NEGOTIATED);
    assert_eq!(pong.message, Message::Pong(Pong { payload: vec![7] }));
}

#[test]
fn hello_intersects_features_and_a_second_hello_is_unexpected() {
    let mut s = Session::new(broker(), "vm-allowed", None);

    let first = s.handle(hello(Features::all()));
    let second = s.handle(hello(Features::all()));

    let Message::HelloReply(r) = first.message else {
        panic!()
    };
    assert_eq!(r.features, s.offered_features());
    assert!(r.features.contains(Features::HOST_CLIENT_FD));
    assert!(!r.features.contains(Features::HOST_WINDOW));
    assert_eq!(code(&second), ErrorCode::UNEXPECTED_MESSAGE);
}

#[test]
fn hello_without_a_common_version_is_unsupported_version() {
    let mut s = Session::new(broker(), "x", None);
    let reply = s.handle(Message::Hello(Hello {
        min_version: 7,
        max_version: 9,
        features: Features::empty(),
        client: String::new(),
    }));
    assert_eq!(code(&reply), ErrorCode::UNSUPPORTED_VERSION);
}

#[test]
fn undecodable_bytes_get_an_error_reply_with_the_request_id() {
    let mut s = Session::new(broker(), "x", None);
    let mut bytes = wire::encode(&Message::QueryLimits(QueryLimits), 42).unwrap();
    bytes.push(0);

    let (id, reply) = s.handle_bytes(&bytes);

    assert_eq!((id, code(&reply)), (42, ErrorCode::LENGTH_MISMATCH));
}

#[test]
fn replies_sent_as_requests_are_unexpected() {
    let mut s = negotiated(&broker(), "x", None);
    let reply = s.handle(Message::Pong(Pong { payload: vec![] }));
    assert_eq!(code(&reply), ErrorCode::UNEXPECTED_MESSAGE);
}

#[test]
fn allocate_for_a_local_client_returns_one_fd_per_buffer() {
    let broker = broker();
    let mut s = negotiated(&broker, "vm-allowed", None);

    let reply = s.handle(allocate(named_request(64, 64, 2), Placement::HostClient));

    let Message::AllocateReply(r) = &reply.message else {
        panic!("{reply:?}")
    };
    assert_eq!(reply.fds.len(), 2);
    assert_eq!(r.buffers[1].location, Location::HostClient { fd_index: 1 });
    assert_eq!(r.plan.heap, "memfd");
    let size = rustix::fs::fstat(&reply.fds[0]).unwrap().st_size as u64;
    assert!(size >= r.plan.size);
    assert_eq!(broker.registry().owner_stats(s.owner()).unwrap().buffers, 2);
}

#[test]
fn named_participant_not_allowed_for_this_owner_is_permission_denied() {
    let mut s = negotiated(&broker(), "someone-else", None);
    let reply = s.handle(allocate(named_request(64, 64, 1), Placement::HostClient));
    assert_eq!(code(&reply), ErrorCode::PERMISSION_DENIED);
}

#[test]
fn unknown_named_participant_is_not_found() {
    let mut s = negotiated(&broker(), "vm-allowed", None);
    let mut request = named_request(64, 64, 1);
    request.participants[0].id = ParticipantId::Named("nobody".into());
    let reply = s.handle(Message::Solve(Solve { request }));
    assert_eq!(code(&reply), ErrorCode::NOT_FOUND);
}

#[test]
fn registered_participant_shadows_the_configured_one_for_anyone() {
    let mut s = negotiated(&broker(), "someone-else", None);
    let cpu = crate::constraints_file::load(&examples().join("cpu.toml")).unwrap();
    let register = RegisterParticipant {
        name: "cpu".into(),
        participant: cpu.participant[0].clone(),
    };

    let first = s.handle(Message::RegisterParticipant(register.clone()));
    let again = s.handle(Message::RegisterParticipant(register));
    let solved = s.handle(Message::Solve(Solve {
        request: named_request(64, 64, 1),
    }));

    assert!(matches!(
        first.message,
        Message::RegisterParticipantReply(_)
    ));
    assert_eq!(code(&again), ErrorCode::ALREADY_EXISTS);
    assert!(
        matches!(solved.message, Message::SolveReply(SolveReply::Solved(_))),
        "{solved:?}"
    );
}

#[test]
fn solve_then_allocate_uses_the_plan_cache() {
    let broker = broker();
    let mut s = negotiated(&broker, "vm-allowed", None);
    let (hits_before, _) = broker.plans().counters();

    s.handle(Message::Solve(Solve {
        request: named_request(128, 32, 1),
    }));
    s.handle(allocate(named_request(128, 32, 1), Placement::HostClient));

    assert_eq!(broker.plans().counters().0, hits_before + 1);
}

#[test]
fn unsatisfiable_solve_is_a_diagnostic_and_allocate_an_error() {
    let mut s = negotiated(&broker(), "vm-allowed", None);
    let mut request = named_request(64, 64, 1);
    let mut only_cma = ConstraintSet::default();
    only_cma.memory.heaps = vec!["linux,cma".into()];
    request.participants.push(Participant::new(
        ParticipantId::GuestLocal(1),
        "needs cma",
        Usage::empty(),
        only_cma,
    ));

    let solved = s.handle(Message::Solve(Solve {
        request: request.clone(),
    }));
    let allocated = s.handle(allocate(request, Placement::HostClient));

    assert!(matches!(
        solved.message,
        Message::SolveReply(SolveReply::Unsatisfiable(_))
    ));
    assert_eq!(code(&allocated), ErrorCode::UNSATISFIABLE);
}

#[test]
fn over_quota_is_quota_exceeded_and_the_session_keeps_serving() {
    let mut s = negotiated(&broker(), "vm-allowed", None);
    s.handle(allocate(named_request(64, 64, 4), Placement::HostClient));

    let over = s.handle(allocate(named_request(64, 64, 1), Placement::HostClient));
    let ping = s.handle(Message::Ping(Ping { payload: vec![] }));

    assert_eq!(code(&over), ErrorCode::QUOTA_EXCEEDED);
    let Message::ErrorReply(e) = over.message else {
        panic!()
    };
    assert!(e.message.contains("buffer quota"), "{}", e.message);
    assert!(matches!(ping.message, Message::Pong(_)));
}

#[test]
fn host_window_needs_a_guest_transport() {
    let mut s = negotiated(&broker(), "vm-allowed", None);
    let reply = s.handle(allocate(named_request(64, 64, 1), Placement::HostWindow));
    assert_eq!(code(&reply), ErrorCode::UNSUPPORTED);
}

#[test]
fn guest_allocation_maps_into_the_window_and_free_unmaps() {
    let guest = Arc::new(FakeGuest {
        window: 1 << 30,
        ..FakeGuest::default()
    });
    let mut s = negotiated(&broker(), "vm-allowed", Some(guest.clone()));

    let reply = s.handle(allocate(named_request(64, 64, 2), Placement::HostWindow));
    let Message::AllocateReply(r) = reply.message else {
        panic!("{reply:?}")
    };
    let (a, b) = (r.buffers[0], r.buffers[1]);
    let free = s.handle(Message::Free(Free { buffer: a.id }));

    assert!(matches!(free.message, Message::FreeReply(_)));
    assert_eq!(
        a.location,
        Location::HostWindow {
            shmid: 0,
            offset: 0,
            len: 16384
        }
    );
    assert_eq!(
        b.location,
        Location::HostWindow {
            shmid: 0,
            offset: 16384,
            len: 16384
        }
    );
    assert_eq!(
        *guest.calls.lock().unwrap(),
        [
            "map 0x0+0x4000 rw=true",
            "map 0x4000+0x4000 rw=true",
            "unmap 0x0+0x4000"
        ]
    );
}

#[test]
fn unmap_then_map_again_and_unmap_of_an_unmapped_buffer_is_invalid() {
    let guest = Arc::new(FakeGuest {
        window: 1 << 20,
        ..FakeGuest::default()
    });
    let mut s = negotiated(&broker(), "vm-allowed", Some(guest.clone()));
    let reply = s.handle(allocate(named_request(64, 64, 1), Placement::HostWindow));
    let Message::AllocateReply(r) = reply.message else {
        panic!()
    };
    let id = r.buffers[0].id;

    let unmapped = s.handle(Message::Unmap(Unmap { buffer: id }));
    let twice = s.handle(Message::Unmap(Unmap { buffer: id }));
    let mapped = s.handle(Message::Map(Map { buffer: id }));

    assert!(matches!(unmapped.message, Message::UnmapReply(_)));
    assert_eq!(code(&twice), ErrorCode::INVALID_ARGUMENT);
    assert!(matches!(
        mapped.message,
        Message::MapReply(MapReply { offset: 0, .. })
    ));
}

#[test]
fn full_window_is_out_of_memory_and_frees_the_buffers() {
    let guest = Arc::new(FakeGuest {
        window: 16384,
        ..FakeGuest::default()
    });
    let broker = broker();
    let mut s = negotiated(&broker, "vm-allowed", Some(guest.clone()));

    let reply = s.handle(allocate(named_request(64, 64, 2), Placement::HostWindow));

    assert_eq!(code(&reply), ErrorCode::OUT_OF_MEMORY);
    assert_eq!(broker.registry().owner_stats(s.owner()).unwrap().buffers, 0);
    assert_eq!(
        *guest.calls.lock().unwrap(),
        ["map 0x0+0x4000 rw=true", "unmap 0x0+0x4000"]
    );
}

#[test]
fn export_grant_import_across_owners_and_teardown_on_session_end() {
    let guest = Arc::new(FakeGuest::default());
    let broker = broker();
    let mut owner = negotiated(&broker, "vm-allowed", Some(guest.clone()));
    let mut other = negotiated(&broker, "host-app", None);
    let reply = owner.handle(allocate(named_request(64, 64, 1), Placement::HostWindow));
    assert_eq!(
        code(&reply),
        ErrorCode::UNSUPPORTED,
        "window size 0: no HOST_WINDOW"
    );
    let reply = owner.handle(allocate(named_request(64, 64, 1), Placement::HostClient));
    assert_eq!(code(&reply), ErrorCode::UNSUPPORTED, "a guest gets no fds");
    let mut local = negotiated(&broker, "vm-allowed", None);
    let reply = local.handle(allocate(named_request(64, 64, 1), Placement::HostClient));
    let Message::AllocateReply(r) = reply.message else {
        panic!()
    };
    let buffer = r.buffers[0];

    let denied = other.handle(Message::Import(Import {
        uuid: buffer.uuid,
        view: ImportView::HostClient,
    }));
    let exported = local.handle(Message::Export(Export { buffer: buffer.id }));
    let granted = local.handle(Message::Grant(Grant {
        buffer: buffer.id,
        grantee: "host-app".into(),
        access: Access::ReadOnly,
    }));
    let imported = other.handle(Message::Import(Import {
        uuid: buffer.uuid,
        view: ImportView::HostClient,
    }));

    assert_eq!(code(&denied), ErrorCode::PERMISSION_DENIED);
    assert_eq!(
        exported.message,
        Message::ExportReply(ExportReply {
            buffer: buffer.id,
            uuid: buffer.uuid
        })
    );
    assert!(matches!(granted.message, Message::GrantReply(_)));
    let Message::ImportReply(i) = &imported.message else {
        panic!("{imported:?}")
    };
    assert_eq!((i.access, i.buffer.id), (Access::ReadOnly, buffer.id));
    assert_eq!(imported.fds.len(), 1);
    drop(local);
    let gone = other.handle(Message::Free(Free { buffer: buffer.id }));
    assert_eq!(code(&gone), ErrorCode::NOT_FOUND);
    drop(owner);
    assert!(guest.calls.lock().unwrap().is_empty());
}

#[test]
fn guest_export_adds_a_shared_object_once_and_free_removes_it() {
    let guest = Arc::new(FakeGuest {
        window: 1 << 20,
        ..FakeGuest::default()
    });
    let mut s = negotiated(&broker(), "vm-allowed", Some(guest.clone()));
    let reply = s.handle(allocate(named_request(64, 64, 1), Placement::HostWindow));
    let Message::AllocateReply(r) = reply.message else {
        panic!()
    };
    let b = r.buffers[0];

    s.handle(Message::Export(Export { buffer: b.id }));
    s.handle(Message::Export(Export { buffer: b.id }));
    drop(s);

    assert_eq!(
        *guest.calls.lock().unwrap(),
        [
            "map 0x0+0x4000 rw=true".to_owned(),
            format!("add {}", b.uuid),
            format!("remove {}", b.uuid),
            "unmap 0x0+0x4000".to_owned(),
        ]
    );
}

#[test]
fn stats_show_own_entry_or_all_for_an_admin() {
    let broker = broker();
    let mut admin = negotiated(&broker, "vm-allowed", None);
    let mut plain = negotiated(&broker, "plain", None);

    let all = admin.handle(Message::QueryStats(QueryStats));
    let own = plain.handle(Message::QueryStats(QueryStats));

    let (Message::StatsReply(all), Message::StatsReply(own)) = (all.message, own.message) else {
        panic!()
    };
    assert_eq!(all.owners.len(), 2);
    assert_eq!(own.owners.len(), 1);
    assert_eq!(own.owners[0].owner, "plain");
    assert_eq!(own.owners[0].quota_buffers, 4);
}

#[test]
fn absurd_dimensions_are_invalid_request() {
    let mut s = negotiated(&broker(), "vm-allowed", None);
    let reply = s.handle(allocate(
        named_request(1 << 20, 64, 1),
        Placement::HostClient,
    ));
    assert_eq!(code(&reply), ErrorCode::INVALID_REQUEST);
}

crate::heap::test_util::isolated_test!(
    /// Running out of descriptors is a clear error; ending the session leaks nothing.
    fn fd_exhaustion_is_out_of_memory_and_nothing_leaks() {
        use crate::heap::test_util::{open_fds, rlimit_leaving_free};
        use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
        let broker = broker();
        let before = open_fds();
        let mut s = negotiated(&broker, "vm-allowed", None);
        let old = getrlimit(Resource::Nofile);
        let limit = rlimit_leaving_free(&before, 3);
        setrlimit(
            Resource::Nofile,
            Rlimit {
                current: Some(limit),
                maximum: old.maximum,
            },
        )
        .unwrap();
        let mut kept = Vec::new();
        let mut failure = None;
        for _ in 0..8 {
            let mut reply = s.handle(allocate(named_request(64, 64, 1), Placement::HostClient));
            match reply.error_code() {
                None => kept.append(&mut reply.fds),
                Some(_) => {
                    failure = Some(reply);
                    break;
                }
            }
        }
        setrlimit(Resource::Nofile, old).unwrap();

        let failure = failure.expect("the descriptor limit was never reached");
        assert_eq!(code(&failure), ErrorCode::OUT_OF_MEMORY);
        let Message::ErrorReply(e) = &failure.message else {
            panic!()
        };
        assert!(
            e.message.contains("memfd") || e.message.contains("descriptor"),
            "{}",
            e.message
        );
        let held = broker.registry().owner_stats(s.owner()).unwrap().buffers as usize;
        assert_eq!(held, kept.len(), "the failed request left no buffer behind");
        drop(kept);
        drop(s);
        assert_eq!(open_fds(), before);
        assert_eq!(broker.registry().total_bytes(), 0);
    }
);
