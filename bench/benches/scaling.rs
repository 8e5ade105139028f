//! Criterion view of the `compare` binary's scaling tables: Allocate + Free (recycled) with
//! 1, 4, 16 and 64 guests allocating at once, each on its own socket (the `compare` binary
//! goes to 256), and solver time against participants × candidates × 3 alternatives.
//! `cargo bench -p bufbroker-bench --bench scaling`

// Bench code: a panic aborts the bench, which is what these lints would otherwise forbid.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::hint::black_box;
use std::time::{Duration, Instant};

use bufbroker_bench::roundtrip::{Fleet, broker};
use bufbroker_bench::solver;
use bufbroker_proto::{SolveOptions, solve_with};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};

fn guests(c: &mut Criterion) {
    let broker = broker(16);
    let mut fleet = Fleet::new(&broker, 64);
    let mut g = c.benchmark_group("allocate+free against guests");
    for n in [1usize, 4, 16, 64] {
        g.throughput(Throughput::Elements(1));
        g.bench_function(BenchmarkId::from_parameter(n), |b| {
            // One "iteration" is one allocation by any guest: run the fleet long enough for
            // `iters` of them and report the wall time.
            b.iter_custom(|iters| {
                let start = Instant::now();
                let mut done = 0.0;
                let mut spent = Duration::ZERO;
                while done < iters as f64 {
                    let slice = Duration::from_millis(20);
                    let (rate, _) = fleet.throughput(n, slice);
                    done += rate * slice.as_secs_f64();
                    spent = start.elapsed();
                }
                spent.mul_f64(iters as f64 / done.max(1.0))
            })
        });
    }
    g.finish();
}

fn solve(c: &mut Criterion) {
    let heaps = solver::heaps();
    let options = SolveOptions::default();
    let mut g = c.benchmark_group("solve against participants and candidates");
    for participants in [2usize, 4, 8] {
        for candidates in [8usize, 16, 32, 64] {
            let r = solver::request(participants, candidates);
            g.bench_with_input(
                BenchmarkId::new(format!("{participants}p_x3alt"), candidates),
                &r,
                |b, r| b.iter(|| solve_with(black_box(r), &heaps, &options).is_ok()),
            );
        }
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(2))
        .sample_size(10);
    targets = guests, solve
}
criterion_main!(benches);
