//! Criterion view of the `compare` binary's round-trip table: Ping (echo), Solve (plan-cache
//! hit) and Allocate + Free of a 1080p NV12 frame in the window (recycled, cold) through the
//! vhost-user device and the real session, 1 and 64 in flight.
//! `cargo bench -p bufbroker-bench --bench roundtrip`

// Bench code: a panic aborts the bench, which is what these lints would otherwise forbid.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::time::Duration;

use bufbroker_bench::roundtrip::{Guest, broker, device};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

fn roundtrip(c: &mut Criterion) {
    let recycling = broker(64);
    let cold = broker(0);
    let warm_device = device(&recycling, 256 << 20);
    let cold_device = device(&cold, 256 << 20);
    let mut warm = Guest::connect(&warm_device, 32 << 20);
    let mut fresh = Guest::connect(&cold_device, 32 << 20);

    let mut g = c.benchmark_group("round trip, 1 in flight");
    g.throughput(Throughput::Elements(1));
    g.bench_function("ping", |b| b.iter(|| warm.ping()));
    g.bench_function("solve (cache hit)", |b| b.iter(|| warm.solve()));
    g.bench_function("allocate+free recycled", |b| {
        b.iter(|| warm.allocate_free())
    });
    g.bench_function("allocate+free cold", |b| b.iter(|| fresh.allocate_free()));
    g.finish();

    let mut g = c.benchmark_group("round trip, 64 in flight");
    g.throughput(Throughput::Elements(64));
    g.bench_function("ping", |b| b.iter(|| warm.ping_batch(64)));
    g.bench_function("solve (cache hit)", |b| b.iter(|| warm.solve_batch(64)));
    g.bench_function("allocate+free recycled", |b| {
        b.iter(|| warm.allocate_free_batch(64))
    });
    g.sample_size(10);
    g.bench_function("allocate+free cold", |b| {
        b.iter(|| fresh.allocate_free_batch(64))
    });
    g.finish();
    // The guests disconnect before their devices stop.
    drop((warm, fresh));
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(20);
    targets = roundtrip
}
criterion_main!(benches);
