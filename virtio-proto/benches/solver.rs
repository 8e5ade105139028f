//! Solver benchmarks: participants × format/modifier candidates × alternatives, and the
//! single-participant layout query.

#![allow(
    missing_docs,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing
)]

use std::hint::black_box;

use bufbroker_proto::{
    ConstraintSet, FormatInfo, FormatModifiers, HeapInfo, LayoutConstraints, MemoryConstraints,
    Modifier, Participant, ParticipantId, Request, SolveOptions, Usage, solve_with,
};
use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};

const MODIFIERS: [Modifier; 4] = [
    Modifier::I915_Y_TILED,
    Modifier::I915_X_TILED,
    Modifier::I915_4_TILED,
    Modifier::LINEAR,
];

/// `candidates` (format, modifier) pairs: RGB/YUV formats from the table, four modifiers each.
fn formats(candidates: usize, rotate: usize) -> Vec<FormatModifiers> {
    let table = FormatInfo::all();
    let per_format = MODIFIERS.len();
    let n_formats = candidates.div_ceil(per_format);
    (0..n_formats)
        .map(|i| {
            let info = &table[(i + rotate) % n_formats % table.len()];
            let take = per_format.min(candidates - i * per_format);
            FormatModifiers {
                fourcc: info.fourcc,
                modifiers: MODIFIERS[..take].to_vec(),
            }
        })
        .collect()
}

/// A participant with three alternatives: tiled with large alignments, tiled with small ones,
/// and a linear fallback.
fn participant(i: usize, candidates: usize) -> Participant {
    let alt = |stride: u32, height: u32, heaps: Vec<String>| ConstraintSet {
        usage: Usage::empty(),
        formats: formats(candidates, i),
        layout: LayoutConstraints {
            stride_alignment: stride,
            height_alignment: height,
            offset_alignment: 4096,
            max_width: 8192,
            max_height: 8192,
            ..LayoutConstraints::default()
        },
        memory: MemoryConstraints {
            heaps,
            address_bits: if i % 3 == 0 { 40 } else { 0 },
            behind_iommu: true,
            ..MemoryConstraints::default()
        },
        extensions: vec![],
    };
    Participant {
        id: ParticipantId::GuestLocal(i as u32),
        label: format!("device{i}"),
        usage: Usage::RENDER,
        alternatives: vec![
            alt(256 << (i % 3), 32, vec!["system".into(), "memfd".into()]),
            alt(128, 16, vec![]),
            alt(64, 2, vec![]),
        ],
    }
}

fn request(participants: usize, candidates: usize) -> Request {
    Request {
        width: 1920,
        height: 1080,
        formats: vec![],
        usage: Usage::empty(),
        participants: (0..participants)
            .map(|i| participant(i, candidates))
            .collect(),
        count: 1,
    }
}

fn heaps() -> Vec<HeapInfo> {
    ["memfd", "udmabuf", "system", "linux,cma"]
        .iter()
        .map(|n| HeapInfo::well_known(n).unwrap())
        .collect()
}

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
