//! Solver benchmarks: participants × format/modifier candidates × alternatives, and the
//! single-participant layout query.

#![allow(
    missing_docs,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing
)]

use std::hint::black_box;

use bufbroker_proto::bench_support::{heaps, request};
use bufbroker_proto::{
    ConstraintSet, HeapInfo, Participant, ParticipantId, Request, SolveOptions, Usage, solve_with,
};
use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};

fn bench_scaling(c: &mut Criterion) {
    let heaps = heaps();
    let options = SolveOptions::default();
    let mut group = c.benchmark_group("solve");
    for participants in [2usize, 4, 8] {
        for candidates in [8usize, 16, 32, 64] {
            let r = request(participants, candidates);
            assert!(solve_with(&r, &heaps, &options).is_ok());
            group.bench_with_input(
                BenchmarkId::new(format!("{participants}p_x3alt"), candidates),
                &r,
                |b, r| b.iter(|| solve_with(black_box(r), &heaps, &options)),
            );
        }
    }
    group.finish();
}

fn bench_cpu_query(c: &mut Criterion) {
    let heaps = [HeapInfo::memfd()];
    let options = SolveOptions {
        max_plans: 1,
        ..SolveOptions::default()
    };
    let mut group = c.benchmark_group("cpu_linear_query");
    for (name, w, h) in [
        ("NV12", 1920, 1080),
        ("XRGB8888", 1920, 1080),
        ("P010", 3840, 2160),
    ] {
        let r = Request {
            width: w,
            height: h,
            formats: vec![name.parse().unwrap()],
            usage: Usage::CPU_READ | Usage::CPU_WRITE,
            participants: vec![Participant::new(
                ParticipantId::Cpu,
                "cpu",
                Usage::CPU_READ | Usage::CPU_WRITE,
                ConstraintSet::default(),
            )],
            count: 1,
        };
        group.bench_function(format!("{name}_{w}x{h}"), |b| {
            b.iter(|| solve_with(black_box(&r), &heaps, &options))
        });
    }
    group.finish();
}

fn bench_unsatisfiable(c: &mut Criterion) {
    let heaps = heaps();
    let mut r = request(4, 16);
    r.participants[0]
        .alternatives
        .iter_mut()
        .for_each(|a| a.layout.max_width = 1280);
    let options = SolveOptions::default();
    assert!(solve_with(&r, &heaps, &options).is_err());
    c.bench_function("explain/4p_16c_x3alt", |b| {
        b.iter(|| solve_with(black_box(&r), &heaps, &options))
    });
}

criterion_group!(benches, bench_scaling, bench_cpu_query, bench_unsatisfiable);
criterion_main!(benches);
