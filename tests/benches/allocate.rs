//! Allocate + free of one host-window buffer through the in-process harness and the real
//! session: carved from an arena versus a SHMEM_MAP of its own, each recycled (a warm arena;
//! the owner's buffer pool) and cold (a new arena mapped and unmapped; a new memfd).

// Bench code: a panic aborts the bench, which is what these lints would otherwise forbid.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::sync::Arc;
use std::time::Duration;

use bufbroker::config::{ArenaConfig, ArenaMode, Config, PoolConfig};
use bufbroker::session::{Broker, guest_factory};
use bufbroker::vhost::DeviceConfig;
use bufbroker_proto::wire::{self, Allocate, Features, Free, Hello, Message, Placement};
use bufbroker_proto::{ConstraintSet, Participant, ParticipantId, Request, Usage};
use bufbroker_tests::broker::TestBroker;
use bufbroker_tests::vmm::{Vmm, VmmOptions};
use criterion::{Criterion, criterion_group, criterion_main};

fn ask(vmm: &mut Vmm, message: &Message) -> Message {
    let bytes = vmm
        .request(&wire::encode(message, 7).unwrap(), 64 * 1024)
        .unwrap();
    wire::decode(&bytes).unwrap().1
}

/// A guest connected to a broker configured with `arenas` and `pool`.
fn guest(arenas: ArenaConfig, pool: PoolConfig) -> (TestBroker, Vmm) {
    let config = Config {
        arenas,
        pool,
        ..Config::default()
    };
    let broker = Arc::new(Broker::from_config(config).unwrap());
    let device = TestBroker::start(
        guest_factory(broker),
        DeviceConfig {
            shmem_size: 64 << 20,
            ..DeviceConfig::default()
        },
    )
    .unwrap();
    let mut vmm = Vmm::connect_and_start(device.socket(), VmmOptions::default()).unwrap();
    let hello = Message::Hello(Hello {
        min_version: wire::MIN_PROTOCOL_VERSION,
        max_version: wire::PROTOCOL_VERSION,
        features: Features::all(),
        client: "bench".into(),
    });
    assert!(matches!(ask(&mut vmm, &hello), Message::HelloReply(_)));
    (device, vmm)
}

fn allocate_256k() -> Message {
    let usage = Usage::CPU_READ | Usage::CPU_WRITE;
    Message::Allocate(Allocate {
        request: Request {
            width: 256,
            height: 256,
            formats: vec!["XRGB8888".parse().unwrap()],
            usage,
            participants: vec![Participant::new(
                ParticipantId::Cpu,
                "cpu",
                usage,
                ConstraintSet::default(),
            )],
            count: 1,
        },
        placement: Placement::HostWindow,
    })
}

fn allocate(c: &mut Criterion) {
    let request = allocate_256k();
    let no_pool = PoolConfig {
        max_buffers_per_owner: 0,
        ..PoolConfig::default()
    };
    let arena = |keep_warm| ArenaConfig {
        mode: ArenaMode::Always,
        size: 16 << 20,
        keep_warm,
    };
    let own_map = ArenaConfig {
        mode: ArenaMode::Never,
        ..ArenaConfig::default()
    };
    let cases = [
        (
            "arena, recycled (warm arena)",
            arena(true),
            PoolConfig::default(),
        ),
        ("arena, cold (map + unmap an arena)", arena(false), no_pool),
        (
            "own SHMEM_MAP, recycled (pooled memfd)",
            own_map,
            PoolConfig::default(),
        ),
        ("own SHMEM_MAP, cold (new memfd)", own_map, no_pool),
    ];
    let mut group = c.benchmark_group("allocate+free 256 KiB host window");
    for (name, arenas, pool) in cases {
        let (_device, mut vmm) = guest(arenas, pool);
        group.bench_function(name, |b| {
            b.iter(|| {
                let Message::AllocateReply(r) = ask(&mut vmm, &request) else {
                    panic!("allocation failed")
                };
                let free = Message::Free(Free {
                    buffer: r.buffers[0].id,
                });
                assert!(matches!(ask(&mut vmm, &free), Message::FreeReply(_)));
            })
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = allocate
}
criterion_main!(benches);
