//! Side-by-side measurements of bufbroker against rutabaga_gfx's `RutabagaGralloc` (its
//! system/memfd backend, what a crosvm-style VMM uses instead) and the raw syscalls.
//!
//! Each case is a closure doing one operation. [`compare`] runs all cases of a table in
//! interleaved rounds (case A, case B, ..., then again), so that machine noise hits every
//! case alike, and reports the median time per operation of each case and its ratio to the
//! table's baseline. Used by the `compare` binary and by the criterion benches.
//!
//! [`roundtrip`] drives the real session through the vhost-user device; [`solver`] holds the
//! solver bench's requests.

// Bench code: a failed setup or operation aborts the measurement, which is what these lints
// would otherwise forbid.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod roundtrip;
pub mod solver;

use std::hint::black_box;
use std::time::{Duration, Instant};

use bufbroker::heap::{BufferPool, Heap, MemfdHeap, PoolLimits};
use bufbroker::session::{Lookup, PlanCache, Resolution, wire_request};
use bufbroker_proto::solver::{LayoutRules, SolveOptions, compute_layout};
use bufbroker_proto::wire::{self, Message, Solve};
use bufbroker_proto::{Fourcc, HeapInfo, Modifier, Request, solve_with};
use rustix::fs::{FallocateFlags, MemfdFlags, SealFlags};
use rutabaga_gfx::{
    DrmFormat, ImageAllocationInfo, RutabagaGralloc, RutabagaGrallocBackendFlags,
    RutabagaGrallocFlags,
};

/// One measured operation.
pub struct Case<'a> {
    /// Name printed in the table.
    pub name: String,
    /// Runs the operation once.
    pub run: Box<dyn FnMut() + 'a>,
    /// Operations one run does (reported times are per operation).
    pub per_run: u32,
}

impl<'a> Case<'a> {
    /// A case from a closure.
    pub fn new(name: impl Into<String>, run: impl FnMut() + 'a) -> Self {
        Case {
            name: name.into(),
            run: Box::new(run),
            per_run: 1,
        }
    }

    /// A case whose one run does `n` operations.
    pub fn batch(name: impl Into<String>, n: u32, run: impl FnMut() + 'a) -> Self {
        Case {
            per_run: n.max(1),
            ..Case::new(name, run)
        }
    }
}

/// The median time per operation of each case, in case order (a case's run divided by its
/// [`Case::per_run`]).
pub fn compare(cases: &mut [Case<'_>], rounds: usize, round_time: Duration) -> Vec<Duration> {
    // Calibrate: iterations per round so that one round of a case takes about `round_time`.
    let iters: Vec<u64> = cases
        .iter_mut()
        .map(|c| {
            let mut n = 1u64;
            loop {
                let t = Instant::now();
                for _ in 0..n {
                    (c.run)();
                }
                let e = t.elapsed();
                if e >= round_time / 4 || n >= 1 << 24 {
                    let per = e.as_secs_f64() / n as f64;
                    break ((round_time.as_secs_f64() / per.max(1e-9)) as u64).max(1);
                }
                n *= 4;
            }
        })
        .collect();
    let mut samples: Vec<Vec<f64>> = vec![Vec::with_capacity(rounds); cases.len()];
    for _ in 0..rounds {
        for ((c, &n), s) in cases.iter_mut().zip(&iters).zip(samples.iter_mut()) {
            let t = Instant::now();
            for _ in 0..n {
                (c.run)();
            }
            s.push(t.elapsed().as_secs_f64() / n as f64 / f64::from(c.per_run));
        }
    }
    samples
        .into_iter()
        .map(|mut s| {
            s.sort_by(f64::total_cmp);
            Duration::from_secs_f64(s.get(s.len() / 2).copied().unwrap_or(0.0))
        })
        .collect()
}

/// Formats a duration for a table.
pub fn human(d: Duration) -> String {
    let ns = d.as_secs_f64() * 1e9;
    if ns < 1e3 {
        format!("{ns:.0} ns")
    } else if ns < 1e6 {
        format!("{:.2} µs", ns / 1e3)
    } else {
        format!("{:.2} ms", ns / 1e6)
    }
}

/// A request from the CPU alone for a linear image, as a layout query.
pub fn cpu_request(fourcc: Fourcc, width: u32, height: u32) -> Request {
    bufbroker_tests::session::cpu_request(fourcc, width, height, 1, "cpu")
}

/// Percentiles (`ps`, each 0..=100) of single calls of `f`, over `calls` calls after a
/// warm-up of a tenth of them.
pub fn percentiles(calls: usize, ps: &[usize], mut f: impl FnMut()) -> Vec<Duration> {
    for _ in 0..calls / 10 {
        f();
    }
    let mut times: Vec<Duration> = (0..calls)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed()
        })
        .collect();
    times.sort();
    ps.iter()
        .map(|p| {
            let i = (times.len() * p / 100).min(times.len().saturating_sub(1));
            times.get(i).copied().unwrap_or_default()
        })
        .collect()
}

/// Layout-query cases for one image: rutabaga's requirements query, bufbroker's layout
/// arithmetic, bufbroker's full solve for the CPU alone, and the plan-cache hit that answers
/// the same query when it repeats (as a session does it: the request's bytes as received,
/// looked up).
pub fn layout_cases<'a>(
    gralloc: &'a mut RutabagaGralloc,
    name: &str,
    width: u32,
    height: u32,
) -> Vec<Case<'a>> {
    let fourcc: Fourcc = name.parse().expect("known format");
    let info = ImageAllocationInfo {
        width,
        height,
        drm_format: DrmFormat::new(
            fourcc.chars()[0],
            fourcc.chars()[1],
            fourcc.chars()[2],
            fourcc.chars()[3],
        ),
        flags: RutabagaGrallocFlags::empty().use_linear(true),
    };
    let mut cases = Vec::new();
    if gralloc.get_image_memory_requirements(info).is_ok() {
        cases.push(Case::new(
            "rutabaga get_image_memory_requirements",
            move || {
                black_box(gralloc.get_image_memory_requirements(black_box(info)).ok());
            },
        ));
    }
    let rules = LayoutRules::default();
    cases.push(Case::new("bufbroker compute_layout", move || {
        black_box(compute_layout(black_box(fourcc), Modifier::LINEAR, width, height, &rules).ok());
    }));
    let request = cpu_request(fourcc, width, height);
    let heaps = [HeapInfo::memfd()];
    let options = SolveOptions {
        max_plans: 1,
        ..SolveOptions::default()
    };
    let cache = PlanCache::new(16);
    let warm = cache.solve(
        Lookup::new(&request, None, Resolution::UNNAMED),
        |r| Ok::<_, ()>(r.clone()),
        &heaps,
        &options,
    );
    assert!(warm.is_ok_and(|o| o.is_ok()), "{name} {width}x{height}");
    let message = Message::Solve(Solve {
        request: request.clone(),
    });
    let received = wire::encode(&message, 1).unwrap();
    cases.push(Case::new("bufbroker solve (cpu, linear)", move || {
        black_box(solve_with(black_box(&request), &heaps, &options).ok());
    }));
    cases.push(Case::new("bufbroker plan-cache hit (repeat)", move || {
        let key = wire_request(&message, black_box(&received)).unwrap();
        black_box(cache.get_encoded(Resolution::UNNAMED, key).unwrap());
    }));
    cases
}

/// The syscalls the memfd heap makes, without the heap around them: memfd_create, ftruncate,
/// fallocate, the seals, close.
pub fn raw_sealed_memfd(size: u64) {
    let fd =
        rustix::fs::memfd_create("raw", MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING).unwrap();
    rustix::fs::ftruncate(&fd, size).unwrap();
    rustix::fs::fallocate(&fd, FallocateFlags::empty(), 0, size).unwrap();
    rustix::fs::fcntl_add_seals(&fd, SealFlags::SHRINK | SealFlags::GROW | SealFlags::SEAL)
        .unwrap();
    drop(black_box(fd));
}

/// What rutabaga's system allocation does: memfd_create and ftruncate, no preallocation.
pub fn raw_unbacked_memfd(size: u64) {
    let fd =
        rustix::fs::memfd_create("raw", MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING).unwrap();
    rustix::fs::ftruncate(&fd, size).unwrap();
    drop(black_box(fd));
}

/// Allocation cases for one size: raw syscalls, the memfd heap cold and recycled, rutabaga.
pub fn alloc_cases<'a>(
    gralloc: &'a mut RutabagaGralloc,
    heap: &'a MemfdHeap,
    pool: &'a BufferPool<u32>,
    size: u64,
) -> Vec<Case<'a>> {
    let mut reqs = gralloc
        .get_image_memory_requirements(ImageAllocationInfo {
            width: 1024,
            height: 1024,
            drm_format: DrmFormat::new(b'R', b'8', b' ', b' '),
            flags: RutabagaGrallocFlags::empty().use_linear(true),
        })
        .expect("R8 is supported");
    reqs.size = size;
    vec![
        Case::new("raw memfd+ftruncate+fallocate+seals", move || {
            raw_sealed_memfd(size)
        }),
        Case::new("bufbroker memfd heap, cold", move || {
            drop(black_box(heap.allocate(size).unwrap()));
        }),
        Case::new("bufbroker memfd heap, recycled", move || {
            let b = pool.allocate(&1, heap, size).unwrap();
            pool.release(&1, black_box(b));
        }),
        Case::new("raw memfd+ftruncate (no preallocation)", move || {
            raw_unbacked_memfd(size)
        }),
        Case::new("rutabaga allocate_memory (system)", move || {
            drop(black_box(gralloc.allocate_memory(reqs).unwrap()));
        }),
    ]
}

/// A rutabaga gralloc with only its system (memfd) backend.
pub fn rutabaga_system() -> RutabagaGralloc {
    // gbm and vulkano are compiled out (no features), so only the system backend exists.
    RutabagaGralloc::new(RutabagaGrallocBackendFlags::new().disable_vulkano())
        .expect("the system backend needs no device")
}

/// A pool that keeps a few buffers for one owner.
pub fn pool() -> BufferPool<u32> {
    BufferPool::new(PoolLimits {
        max_buffers_per_owner: 8,
        max_bytes_per_owner: 256 << 20,
        max_bytes: 256 << 20,
    })
}
