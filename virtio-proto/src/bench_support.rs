//! The solver benchmarks' requests, shared by `virtio-proto/benches/solver.rs` (criterion) and
//! the `bufbroker-bench` comparisons, so that their figures compare: participants × format /
//! modifier candidates, each participant with three alternatives (tiled with large
//! alignments, tiled with small ones, linear).

use crate::{
    ConstraintSet, FormatInfo, FormatModifiers, HeapInfo, LayoutConstraints, MemoryConstraints,
    Modifier, Participant, ParticipantId, Request, Usage,
};

const MODIFIERS: [Modifier; 4] = [
    Modifier::I915_Y_TILED,
    Modifier::I915_X_TILED,
    Modifier::I915_4_TILED,
    Modifier::LINEAR,
];

/// `candidates` (format, modifier) pairs: RGB/YUV formats from the table, four modifiers each.
fn formats(candidates: usize, rotate: usize) -> Vec<FormatModifiers> {
    let table = FormatInfo::all();
    let n_formats = candidates.div_ceil(MODIFIERS.len());
    (0..n_formats)
        .filter_map(|i| {
            let info = table.get((i + rotate) % n_formats % table.len())?;
            let take = MODIFIERS.len().min(candidates - i * MODIFIERS.len());
            Some(FormatModifiers {
                fourcc: info.fourcc,
                modifiers: MODIFIERS.get(..take)?.to_vec(),
            })
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
        id: ParticipantId::GuestLocal(u32::try_from(i).unwrap_or(u32::MAX)),
        label: format!("device{i}"),
        usage: Usage::RENDER,
        alternatives: vec![
            alt(256 << (i % 3), 32, vec!["system".into(), "memfd".into()]),
            alt(128, 16, vec![]),
            alt(64, 2, vec![]),
        ],
    }
}

/// 1080p for `participants` participants × `candidates` (format, modifier) pairs × 3
/// alternatives.
pub fn request(participants: usize, candidates: usize) -> Request {
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

/// The heaps of the solver bench: memfd, udmabuf, system, linux,cma.
pub fn heaps() -> Vec<HeapInfo> {
    ["memfd", "udmabuf", "system", "linux,cma"]
        .iter()
        .filter_map(|n| HeapInfo::well_known(n))
        .collect()
}
