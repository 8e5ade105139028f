//! Allocation cost: the registry's allocate + free, cold (a new memfd each time) and recycled
//! (the owner's pool), against the raw syscalls in the same run; and the plan cache.
//!
//! `cargo bench -p bufbroker --bench alloc`. After criterion's report a table of ratios is
//! printed (own timing loop, median of batches). Goals: recycled 8 MiB allocate+free
//! ≤ 10 µs; cold within 1.3× of the raw syscalls; a cached plan lookup ≤ 100 ns.
//!
//! Two raw baselines: `raw` is `memfd_create` + `ftruncate` + `mmap` + `munmap` + `close`
//! (no memory touched: the pages are not allocated), `raw+fallocate` replaces the mapping by
//! `fallocate`, which is the work a broker buffer needs (preallocated, so no peer can take
//! SIGBUS later).
//!
//! Figures on the development VM (2 shared cores, release build, medians):
//!
//! | size | raw | raw+fallocate | cold | recycled | cold/raw+fallocate |
//! |---|---|---|---|---|---|
//! | 4 KiB | 8.7 µs | 8.1 µs | 10.1 µs | 0.95 µs | 1.24× |
//! | 1 MiB | 8.7 µs | 348 µs | 394 µs | 0.92 µs | 1.13× |
//! | 8 MiB | 8.6 µs | 3.1 ms | 2.6 ms | 0.93 µs | 0.85× |
//! | 32 MiB | 8.8 µs | 11.8 ms | 12.5 ms | 0.90 µs | 1.06× |
//!
//! A plan-cache hit for the camera + display + CPU request, keyed by the request's bytes as
//! received, takes 63–68 ns (goal 100 ns: met); the previous cache, keyed by the whole resolved
//! request hashed and compared field by field, took 1.0 µs, about what the solver itself needs
//! for that request (1.1 µs). Encoding a decoded request again costs ~0.5 µs, which is why the
//! session hands the cache the received bytes. A table of these, measured in interleaved
//! rounds, follows the allocation table.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    missing_docs
)]

use std::collections::HashMap;
use std::hint::black_box;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bufbroker::config::{GlobalLimits, Quota};
use bufbroker::heap::{MemfdHeap, PoolLimits};
use bufbroker::registry::Registry;
use bufbroker::session::{FastHashState, Lookup, Outcome, PlanCache, Resolution, wire_request};
use bufbroker_proto::solver::SolveOptions;
use bufbroker_proto::wire::{self, Message, Solve};
use bufbroker_proto::{CacheMode, Fourcc, HeapInfo, Modifier, Plan, Request, Usage};
use criterion::{BenchmarkId, Criterion};
use rustix::fs::{FallocateFlags, MemfdFlags};
use rustix::mm::{MapFlags, ProtFlags};

const SIZES: [(u64, &str); 4] = [
    (4 << 10, "4KiB"),
    (1 << 20, "1MiB"),
    (8 << 20, "8MiB"),
    (32 << 20, "32MiB"),
];

fn plan(size: u64) -> Arc<Plan> {
    Arc::new(Plan {
        fourcc: Fourcc::from_chars(*b"R8  "),
        modifier: Modifier::LINEAR,
        width: 1,
        height: 1,
        planes: Vec::new(),
        size,
        alignment: 1,
        heap: "memfd".into(),
        cache_mode: CacheMode::Cached,
        contiguous: false,
        address_bits: 64,
        coherent: true,
        usage: Usage::CPU_READ,
        alternatives: Vec::new(),
    })
}

fn raw(size: u64) {
    let fd = rustix::fs::memfd_create("raw", MemfdFlags::CLOEXEC).unwrap();
    rustix::fs::ftruncate(&fd, size).unwrap();
    // SAFETY: a fresh mapping chosen by the kernel, unmapped right away, never accessed.
    unsafe {
        let p = rustix::mm::mmap(
            std::ptr::null_mut(),
            size as usize,
            ProtFlags::READ | ProtFlags::WRITE,
            MapFlags::SHARED,
            &fd,
            0,
        )
        .unwrap();
        rustix::mm::munmap(p, size as usize).unwrap();
    }
}

fn raw_fallocate(size: u64) {
    let fd = rustix::fs::memfd_create("raw", MemfdFlags::CLOEXEC).unwrap();
    rustix::fs::ftruncate(&fd, size).unwrap();
    rustix::fs::fallocate(&fd, FallocateFlags::empty(), 0, size).unwrap();
}

fn no_pool() -> PoolLimits {
    PoolLimits {
        max_buffers_per_owner: 0,
        max_bytes_per_owner: 0,
        max_bytes: 0,
    }
}

/// allocate + free through the registry.
struct Case {
    registry: Registry,
    owner: bufbroker::registry::OwnerId,
    heap: MemfdHeap,
}

impl Case {
    fn new(pool: PoolLimits) -> Self {
        let registry = Registry::new(GlobalLimits::default(), pool);
        let quota = Quota {
            bytes: 0,
            buffers: 0,
            in_flight: 0,
        };
        let owner = registry.add_owner("bench", quota);
        Case {
            registry,
            owner,
            heap: MemfdHeap::new(),
        }
    }

    fn cycle(&self, plan: &Arc<Plan>) {
        let b = self
            .registry
            .allocate(self.owner, &self.heap, plan, 1)
            .unwrap()
            .pop()
            .unwrap();
        let id = b.id;
        drop(b);
        self.registry.free(self.owner, id).unwrap();
    }
}

/// A realistic request: the example camera, display and CPU, 1080p NV12.
fn example_request() -> Request {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/participants");
    let participants = ["camera.toml", "gpu-display.toml", "cpu.toml"]
        .iter()
        .flat_map(|f| {
            bufbroker::constraints_file::load(&dir.join(f))
                .unwrap()
                .participant
        })
        .collect();
    Request {
        width: 1920,
        height: 1080,
        formats: vec!["NV12".parse().unwrap()],
        usage: Usage::empty(),
        participants,
        count: 4,
    }
}

fn heaps() -> Vec<HeapInfo> {
    ["memfd", "udmabuf", "system", "linux,cma"]
        .iter()
        .filter_map(|n| HeapInfo::well_known(n))
        .collect()
}

fn bench_alloc(c: &mut Criterion) {
    let mut g = c.benchmark_group("allocate+free");
    let cold = Case::new(no_pool());
    let recycled = Case::new(PoolLimits::default());
    for (size, label) in SIZES {
        let p = plan(size);
        g.bench_with_input(BenchmarkId::new("raw", label), &size, |b, &s| {
            b.iter(|| raw(black_box(s)))
        });
        g.bench_with_input(BenchmarkId::new("raw+fallocate", label), &size, |b, &s| {
            b.iter(|| raw_fallocate(black_box(s)))
        });
        g.bench_with_input(BenchmarkId::new("cold", label), &p, |b, p| {
            b.iter(|| cold.cycle(p))
        });
        g.bench_with_input(BenchmarkId::new("recycled", label), &p, |b, p| {
            b.iter(|| recycled.cycle(p))
        });
    }
    g.finish();
}

/// A plan cache holding the example request's outcome, the request and its encoding.
fn warm_cache() -> (PlanCache, Request, Vec<u8>) {
    let cache = PlanCache::new(1024);
    let request = example_request();
    let outcome = cache.solve(
        Lookup::new(&request, None, Resolution::UNNAMED),
        |r| Ok::<_, ()>(r.clone()),
        &heaps(),
        &SolveOptions::default(),
    );
    assert!(outcome.is_ok_and(|o| o.is_ok()));
    let encoded = postcard::to_stdvec(&request).unwrap();
    (cache, request, encoded)
}

/// The previous cache's lookup, for comparison: the whole request as the key, hashed and
/// compared field by field.
fn whole_request_map(request: &Request) -> HashMap<Request, Outcome, FastHashState> {
    let outcome = Arc::new(bufbroker_proto::solve_with(
        request,
        &heaps(),
        &SolveOptions::default(),
    ));
    let mut map = HashMap::with_hasher(FastHashState::default());
    map.insert(request.clone(), outcome);
    map
}

fn bench_plan_cache(c: &mut Criterion) {
    let (cache, request, encoded) = warm_cache();
    let old = whole_request_map(&request);
    let heaps = heaps();
    let mut g = c.benchmark_group("plan cache (camera+display+cpu 1080p)");
    g.bench_function("hit, from the request", |b| {
        b.iter(|| cache.get(Resolution::UNNAMED, black_box(&request)).unwrap())
    });
    g.bench_function("hit, from the encoded request", |b| {
        b.iter(|| {
            cache
                .get_encoded(Resolution::UNNAMED, black_box(&encoded))
                .unwrap()
        })
    });
    let message = Message::Solve(Solve {
        request: request.clone(),
    });
    let received = wire::encode(&message, 1).unwrap();
    g.bench_function("hit, from the received message", |b| {
        b.iter(|| {
            let key = wire_request(&message, black_box(&received)).unwrap();
            cache.get_encoded(Resolution::UNNAMED, key).unwrap()
        })
    });
    g.bench_function("encode the request (postcard)", |b| {
        let mut buf = Vec::with_capacity(encoded.len());
        b.iter(|| {
            buf.clear();
            buf = postcard::to_extend(black_box(&request), std::mem::take(&mut buf)).unwrap();
        })
    });
    g.bench_function("before: whole-request key", |b| {
        b.iter(|| old.get(black_box(&request)).unwrap().clone())
    });
    g.bench_function("solver, uncached", |b| {
        b.iter(|| {
            bufbroker_proto::solve_with(black_box(&request), &heaps, &SolveOptions::default())
        })
    });
    g.finish();
}

/// Median time of one call of `f`, over batches of `per_batch` calls.
fn median(per_batch: u32, mut f: impl FnMut()) -> Duration {
    let mut times: Vec<Duration> = (0..15)
        .map(|_| {
            let start = Instant::now();
            for _ in 0..per_batch {
                f();
            }
            start.elapsed() / per_batch
        })
        .collect();
    times.sort();
    times[times.len() / 2]
}

fn ratios() {
    let cold = Case::new(no_pool());
    let recycled = Case::new(PoolLimits::default());
    println!();
    println!("size    raw        raw+falloc  cold       recycled   cold/raw  cold/raw+falloc");
    for (size, label) in SIZES {
        let p = plan(size);
        let n = if size >= 8 << 20 { 20 } else { 200 };
        let r = median(n, || raw(size));
        let rf = median(n, || raw_fallocate(size));
        let c = median(n, || cold.cycle(&p));
        let rc = median(n, || recycled.cycle(&p));
        println!(
            "{label:<7} {r:>9.1?}  {rf:>9.1?}  {c:>9.1?}  {rc:>9.1?}  {:>7.2}x  {:>7.2}x",
            c.as_secs_f64() / r.as_secs_f64(),
            c.as_secs_f64() / rf.as_secs_f64()
        );
    }
}

/// One timed operation.
type Timed<'a> = Box<dyn FnMut() + 'a>;

/// The plan cache side by side: one round of each case after the other, 15 rounds.
fn plan_cache_ratios() {
    let (cache, request, _) = warm_cache();
    let old = whole_request_map(&request);
    let message = Message::Solve(Solve {
        request: request.clone(),
    });
    let received = wire::encode(&message, 1).unwrap();
    let heaps = heaps();
    let mut cases: [(&str, Timed<'_>); 4] = [
        (
            "hit, received",
            Box::new(|| {
                let key = wire_request(&message, black_box(&received)).unwrap();
                black_box(cache.get_encoded(Resolution::UNNAMED, key).unwrap());
            }),
        ),
        (
            "hit, re-encoded",
            Box::new(|| {
                black_box(cache.get(Resolution::UNNAMED, black_box(&request)).unwrap());
            }),
        ),
        (
            "before",
            Box::new(|| {
                black_box(old.get(black_box(&request)).unwrap());
            }),
        ),
        (
            "solver",
            Box::new(|| {
                let _ = black_box(bufbroker_proto::solve_with(
                    black_box(&request),
                    &heaps,
                    &SolveOptions::default(),
                ));
            }),
        ),
    ];
    let mut samples = vec![Vec::new(); cases.len()];
    for _ in 0..15 {
        for ((_, f), s) in cases.iter_mut().zip(&mut samples) {
            let start = Instant::now();
            for _ in 0..20_000 {
                f();
            }
            s.push(start.elapsed() / 20_000);
        }
    }
    println!();
    println!("plan cache, camera+display+cpu 1080p (median of 15 interleaved rounds)");
    let base = {
        samples[0].sort();
        samples[0][7]
    };
    for ((name, _), s) in cases.iter().zip(&mut samples) {
        s.sort();
        let m = s[s.len() / 2];
        println!(
            "{name:<16} {m:>9.1?}  {:>6.1}x",
            m.as_secs_f64() / base.as_secs_f64()
        );
    }
}

fn main() {
    let mut c = Criterion::default()
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1))
        .sample_size(20)
        .configure_from_args();
    bench_alloc(&mut c);
    bench_plan_cache(&mut c);
    c.final_summary();
    ratios();
    plan_cache_ratios();
}
