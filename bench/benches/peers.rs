//! Criterion view of the `compare` binary's first two tables: layout queries (rutabaga's
//! requirements query, bufbroker's layout arithmetic, solve and plan-cache hit) and
//! allocate + free (raw syscalls, the memfd heap cold and recycled, rutabaga's system
//! allocation). `cargo bench -p bufbroker-bench --bench peers`

// Bench code: a panic aborts the bench, which is what these lints would otherwise forbid.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::time::Duration;

use bufbroker::heap::MemfdHeap;
use bufbroker_bench::{Case, alloc_cases, layout_cases, pool, rutabaga_system};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

fn run(c: &mut Criterion, group: &str, cases: &mut [Case<'_>]) {
    let mut g = c.benchmark_group(group);
    for case in cases {
        g.throughput(Throughput::Elements(case.per_run.into()));
        g.bench_function(case.name.as_str(), |b| b.iter(|| (case.run)()));
    }
    g.finish();
}

fn layout(c: &mut Criterion) {
    for name in ["NV12", "XRGB8888", "P010"] {
        for (w, h) in [(1280, 720), (1920, 1080), (3840, 2160)] {
            let mut gralloc = rutabaga_system();
            let mut cases = layout_cases(&mut gralloc, name, w, h);
            run(c, &format!("layout {name} {w}x{h}"), &mut cases);
        }
    }
}

fn allocation(c: &mut Criterion) {
    let heap = MemfdHeap::new();
    let pool = pool();
    for size in [4u64 << 10, 1 << 20, 8 << 20, 32 << 20] {
        let mut gralloc = rutabaga_system();
        let mut cases = alloc_cases(&mut gralloc, &heap, &pool, size);
        run(c, &format!("allocate+free {} KiB", size >> 10), &mut cases);
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1))
        .sample_size(20);
    targets = layout, allocation
}
criterion_main!(benches);
