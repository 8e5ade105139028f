//! Echo (Ping) round trips through the in-process harness and the real device: one request in
//! flight, and batches of 64 in flight.

// Bench code: a panic aborts the bench, which is what these lints would otherwise forbid.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use bufbroker_proto::wire::{self, Message, Ping};
use bufbroker_tests::broker::TestBroker;
use bufbroker_tests::vmm::{Vmm, VmmOptions};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

fn ping(id: u32) -> Vec<u8> {
    wire::encode(
        &Message::Ping(Ping {
            payload: vec![0xab; 64],
        }),
        id,
    )
    .unwrap()
}

fn roundtrip(c: &mut Criterion) {
    let broker = TestBroker::minimal(1 << 20).unwrap();
    let mut vmm = Vmm::connect_and_start(broker.socket(), VmmOptions::default()).unwrap();
    let request = ping(1);
    let mut group = c.benchmark_group("ping");

    group.throughput(Throughput::Elements(1));
    group.bench_function("1 in flight", |b| {
        b.iter(|| vmm.request(&request, 4096).unwrap())
    });

    group.throughput(Throughput::Elements(64));
    group.bench_function("64 in flight", |b| {
        b.iter(|| {
            for _ in 0..64 {
                vmm.submit(&request, 4096).unwrap();
            }
            vmm.kick(0).unwrap();
            for _ in 0..64 {
                vmm.wait_used(0, Duration::from_secs(5)).unwrap();
            }
        })
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = roundtrip
}
criterion_main!(benches);
