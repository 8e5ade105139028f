//! Property tests of the solver: soundness against the independent checker, completeness
//! against brute force on small domains, determinism, independence from participant order,
//! minimal diagnostics, and no panic on arbitrary input.

// Test code: a panic is a test failure, which is what these lints would otherwise forbid.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use bufbroker_proto::check::verify_plan;
use bufbroker_proto::fuzzing::solve_heaps as heaps;
use bufbroker_proto::solver::LayoutRules;
use bufbroker_proto::solver::{ConstraintKind as K, ConstraintOwner, SolveOptions, compute_layout};
use bufbroker_proto::{
    AddressRange, CacheMode, ConstraintSet, FormatModifiers, Fourcc, HeapInfo, LayoutConstraints,
    MemoryConstraints, Modifier, Participant, ParticipantId, Plan, Request, SolveError, Usage,
    solve_with,
};
use proptest::prelude::*;

fn fourcc(n: &str) -> Fourcc {
    n.parse().unwrap()
}

fn arb_format() -> impl Strategy<Value = FormatModifiers> {
    (
        prop::sample::select(vec!["NV12", "XRGB8888", "R8", "YUYV"]),
        prop::collection::vec(
            prop::sample::select(vec![
                Modifier::LINEAR,
                Modifier::I915_X_TILED,
                Modifier::I915_Y_TILED,
            ]),
            0..3,
        ),
    )
        .prop_map(|(f, mut m)| {
            m.dedup();
            FormatModifiers {
                fourcc: fourcc(f),
                modifiers: m,
            }
        })
}

fn arb_align() -> impl Strategy<Value = u32> {
    prop::sample::select(vec![0u32, 0, 0, 1, 2, 3, 4, 16, 64, 256, 4096])
}

fn arb_set() -> impl Strategy<Value = ConstraintSet> {
    let layout = (
        (
            arb_align(),
            arb_align(),
            arb_align(),
            arb_align(),
            arb_align(),
        ),
        (
            prop::collection::vec(arb_align(), 0..3),
            prop::bool::weighted(0.15),
            prop::bool::weighted(0.15),
            prop::sample::select(vec![0u64, 0, 0, 4096, 65536]),
        ),
        (
            prop::sample::select(vec![0u32, 0, 640, 1920]),
            prop::sample::select(vec![0u32, 0, 480, 1080]),
            prop::sample::select(vec![0u32, 0, 2048, 8192]),
            prop::sample::select(vec![0u64, 0, 1 << 20, 8 << 20]),
            prop::sample::select(vec![0u32, 0, 1, 2]),
        ),
    )
        .prop_map(
            |((sa, oa, za, ha, wa), (rows, exact, b2b, base), (mw, mh, ms, msz, mp))| {
                LayoutConstraints {
                    stride_alignment: sa,
                    offset_alignment: oa,
                    size_alignment: za,
                    height_alignment: ha,
                    width_alignment: wa,
                    plane_row_alignment: rows,
                    exact_stride: exact,
                    planes_back_to_back: b2b,
                    plane_base_alignment: base,
                    max_width: mw,
                    max_height: mh,
                    max_stride: ms,
                    max_size: msz,
                    max_planes: mp,
                    separate_planes: false,
                }
            },
        );
    let memory = (
        prop::collection::vec(
            prop::sample::select(vec!["memfd", "system", "cma", "nope"]),
            0..3,
        ),
        prop::bool::weighted(0.2),
        prop::sample::select(vec![0u8, 0, 20, 28, 32]),
        prop::bool::weighted(0.3),
        prop::sample::select(vec![
            vec![],
            vec![AddressRange {
                start: 0x1000,
                end: 0xf_ffff,
            }],
        ]),
        prop::bool::weighted(0.1),
        prop::collection::vec(
            prop::sample::select(vec![
                CacheMode::Cached,
                CacheMode::WriteCombined,
                CacheMode::Uncached,
            ]),
            0..2,
        ),
        prop::bool::weighted(0.2),
    )
        .prop_map(
            |(heaps, contiguous, bits, iommu, iova, coherent, cache, dmabuf)| MemoryConstraints {
                heaps: heaps.into_iter().map(String::from).collect(),
                contiguous,
                address_bits: bits,
                behind_iommu: iommu,
                iova_ranges: iova,
                coherent,
                cache_modes: cache,
                protected: false,
                dmabuf,
            },
        );
    (
        prop::collection::vec(arb_format(), 0..3),
        layout,
        memory,
        prop::sample::select(vec![
            Usage::empty(),
            Usage::empty(),
            Usage::SCANOUT,
            Usage::CPU_READ | Usage::CPU_WRITE,
        ]),
    )
        .prop_map(|(formats, layout, memory, usage)| ConstraintSet {
            usage,
            formats,
            layout,
            memory,
            extensions: vec![],
        })
}

fn arb_participant() -> impl Strategy<Value = Participant> {
    (
        0u32..1000,
        prop::collection::vec(arb_set(), 1..4),
        prop::sample::select(vec![Usage::empty(), Usage::SCANOUT, Usage::CPU_READ]),
    )
        .prop_map(|(n, alternatives, usage)| Participant {
            id: ParticipantId::GuestLocal(n),
            label: format!("dev{n}"),
            usage,
            alternatives,
        })
}

fn arb_request() -> impl Strategy<Value = Request> {
    (
        1u32..2000,
        1u32..1200,
        prop::collection::vec(
            prop::sample::select(vec!["NV12", "XRGB8888", "R8", "YUYV"]),
            0..3,
        ),
        prop::collection::vec(arb_participant(), 1..4),
        1u32..4,
    )
        .prop_map(|(width, height, formats, participants, count)| {
            let mut formats: Vec<Fourcc> = formats.into_iter().map(fourcc).collect();
            formats.dedup();
            Request {
                width,
                height,
                formats,
                usage: Usage::empty(),
                participants,
                count,
            }
        })
}

fn lcm(a: u64, b: u64) -> u64 {
    fn gcd(a: u64, b: u64) -> u64 {
        if b == 0 { a } else { gcd(b, a % b) }
    }
    let (a, b) = (a.max(1), b.max(1));
    a / gcd(a, b) * b
}

/// Brute force: every candidate pair × every choice of alternatives × every heap, judged by the
/// independent checker. Returns the feasible (fourcc, modifier) pairs.
fn brute_force(request: &Request, heaps: &[HeapInfo]) -> Vec<(Fourcc, Modifier)> {
    let mut pairs = Vec::new();
    for p in &request.participants {
        for a in &p.alternatives {
            for f in &a.formats {
                pairs.extend(f.effective_modifiers().iter().map(|&m| (f.fourcc, m)));
            }
            if a.formats.is_empty() {
                for f in bufbroker_proto::FormatInfo::all() {
                    pairs.push((f.fourcc, Modifier::LINEAR));
                }
            }
        }
    }
    pairs.retain(|(f, _)| request.formats.is_empty() || request.formats.contains(f));
    pairs.sort();
    pairs.dedup();
    let mut feasible = Vec::new();
    let sizes: Vec<usize> = request
        .participants
        .iter()
        .map(|p| p.alternatives.len())
        .collect();
    for &(f, m) in &pairs {
        let mut choice = vec![0usize; sizes.len()];
        'combos: loop {
            let sets: Vec<&ConstraintSet> = choice
                .iter()
                .zip(&request.participants)
                .map(|(&c, p)| &p.alternatives[c])
                .collect();
            let mut rules = LayoutRules::default();
            for s in &sets {
                let l = &s.layout;
                rules.stride_alignment = lcm(rules.stride_alignment, l.stride_alignment.into());
                rules.offset_alignment = lcm(rules.offset_alignment, l.offset_alignment.into());
                rules.size_alignment = lcm(rules.size_alignment, l.size_alignment.into());
                rules.height_alignment = lcm(rules.height_alignment, l.height_alignment.into());
                rules.width_alignment = lcm(rules.width_alignment, l.width_alignment.into());
                rules.plane_base_alignment =
                    lcm(rules.plane_base_alignment, l.plane_base_alignment);
                for (i, &a) in l.plane_row_alignment.iter().enumerate() {
                    rules.plane_row_alignment[i] = lcm(rules.plane_row_alignment[i], a.into());
                }
                if l.exact_stride {
                    rules.exact_stride = true;
                    rules.exact_width_alignment = u64::from(l.width_alignment).max(1);
                }
                rules.planes_back_to_back |= l.planes_back_to_back;
            }
            if let Ok(layout) = compute_layout(f, m, request.width, request.height, &rules) {
                let usage = request
                    .participants
                    .iter()
                    .fold(request.usage, |u, p| u | p.usage);
                let bits = sets
                    .iter()
                    .map(|s| s.memory.effective_address_bits())
                    .min()
                    .unwrap_or(64);
                for heap in heaps {
                    let plan = Plan {
                        fourcc: f,
                        modifier: m,
                        width: request.width,
                        height: request.height,
                        planes: layout.planes.clone(),
                        size: layout.size,
                        alignment: layout.alignment,
                        heap: heap.name.clone(),
                        cache_mode: heap.cache_mode,
                        contiguous: heap.contiguous,
                        address_bits: bits,
                        coherent: false,
                        usage,
                        alternatives: choice.iter().map(|&c| c as u32).collect(),
                    };
                    if verify_plan(request, heaps, &plan).is_ok() {
                        feasible.push((f, m));
                        break 'combos;
                    }
                }
            }
            // Next combination.
            let mut i = 0;
            loop {
                if i == choice.len() {
                    break 'combos;
                }
                choice[i] += 1;
                if choice[i] < sizes[i] {
                    break;
                }
                choice[i] = 0;
                i += 1;
            }
        }
    }
    feasible
}

fn all_plans() -> SolveOptions {
    SolveOptions {
        max_plans: 1000,
        ..SolveOptions::default()
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(300), ..ProptestConfig::default() })]

    #[test]
    fn every_plan_satisfies_every_participant(request in arb_request()) {
        let heaps = heaps();
        if let Ok(solution) = solve_with(&request, &heaps, &all_plans()) {
            prop_assert!(!solution.plans.is_empty());
            for plan in &solution.plans {
                prop_assert_eq!(verify_plan(&request, &heaps, plan), Ok(()), "plan {:?}", plan);
            }
        }
    }

    #[test]
    fn solver_finds_exactly_the_brute_force_candidates(request in arb_request()) {
        let heaps = heaps();
        let mut expected = brute_force(&request, &heaps);
        expected.sort();
        let mut got: Vec<(Fourcc, Modifier)> = match solve_with(&request, &heaps, &all_plans()) {
            Ok(s) => s.plans.iter().map(|p| (p.fourcc, p.modifier)).collect(),
            Err(SolveError::Unsatisfiable(_)) => vec![],
            Err(e) => return Err(TestCaseError::fail(format!("unexpected error {e}"))),
        };
        got.sort();
        prop_assert_eq!(got, expected, "request {}", serde_json::to_string(&request).unwrap());
    }

    #[test]
    fn result_is_deterministic_and_independent_of_participant_order(
        request in arb_request(),
        seed in any::<u64>(),
    ) {
        let heaps = heaps();
        let first = solve_with(&request, &heaps, &all_plans());
        let again = solve_with(&request, &heaps, &all_plans());
        prop_assert_eq!(&first, &again);
        let mut shuffled = request.clone();
        let n = shuffled.participants.len();
        let mut perm: Vec<usize> = (0..n).collect();
        let mut s = seed;
        for i in (1..n).rev() {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            perm.swap(i, (s >> 33) as usize % (i + 1));
        }
        shuffled.participants = perm.iter().map(|&i| request.participants[i].clone()).collect();
        let other = solve_with(&shuffled, &heaps, &all_plans());
        match (first, other) {
            (Ok(a), Ok(b)) => {
                prop_assert_eq!(a.plans.len(), b.plans.len());
                for (pa, pb) in a.plans.iter().zip(&b.plans) {
                    let mut pb = pb.clone();
                    // Alternatives are listed in request order: map back.
                    let mut alts = vec![0; n];
                    for (new, &old) in perm.iter().enumerate() {
                        alts[old] = pb.alternatives[new];
                    }
                    pb.alternatives = alts;
                    prop_assert_eq!(pa, &pb);
                }
            }
            (Err(SolveError::Unsatisfiable(a)), Err(SolveError::Unsatisfiable(b))) => {
                let key = |d: &bufbroker_proto::Diagnostic| {
                    let mut v: Vec<String> = d.conflicts.iter().map(|c| match &c.owner {
                        ConstraintOwner::Participant { label, .. } => format!("{label}/{}/{}", c.kind, c.value),
                        other => format!("{other}/{}/{}", c.kind, c.value),
                    }).collect();
                    v.sort();
                    v
                };
                prop_assert_eq!(key(&a), key(&b));
            }
            (a, b) => prop_assert!(false, "outcomes differ: {:?} vs {:?}", a.is_ok(), b.is_ok()),
        }
    }

    #[test]
    fn diagnostic_is_minimal(request in arb_request()) {
        let heaps = heaps();
        if let Err(SolveError::Unsatisfiable(d)) = solve_with(&request, &heaps, &SolveOptions::default()) {
            prop_assert!(d.minimal);
            // The named constraints alone (everything else dropped) are unsolvable, and
            // dropping any one of them makes them solvable.
            let named: Vec<(Option<usize>, K)> = d
                .conflicts
                .iter()
                .filter_map(|c| match &c.owner {
                    ConstraintOwner::Participant { index, .. } => Some((Some(*index as usize), c.kind)),
                    ConstraintOwner::Request => Some((None, c.kind)),
                    ConstraintOwner::Heaps => None,
                })
                .collect();
            let core = keep_only(&request, &named);
            prop_assert!(
                solve_with(&core, &heaps, &SolveOptions::default()).is_err(),
                "core {} of request {}", serde_json::to_string(&core).unwrap(), serde_json::to_string(&request).unwrap()
            );
            for (i, atom) in named.iter().enumerate() {
                let mut fewer = named.clone();
                fewer.remove(i);
                let relaxed = keep_only(&request, &fewer);
                prop_assert!(
                    solve_with(&relaxed, &heaps, &SolveOptions::default()).is_ok(),
                    "dropping {:?} keeps the core unsolvable: original {} diag {:?}", atom, serde_json::to_string(&request).unwrap(), d
                );
            }
            if let Some(split) = &d.split {
                for (group, plan) in [(&split.first, &split.first_plan), (&split.second, &split.second_plan)] {
                    let mut sub = request.clone();
                    sub.participants = group.iter().map(|&i| request.participants[i as usize].clone()).collect();
                    let mut plan = plan.clone();
                    plan.usage = sub.participants.iter().fold(sub.usage, |u, p| u | p.usage);
                    prop_assert_eq!(verify_plan(&sub, &heaps, &plan), Ok(()));
                }
            }
        }
    }
}

/// Every (format, modifier) pair the request lists anywhere, plus every known format linear:
/// the candidates a participant without format constraints accepts.
fn every_pair(request: &Request) -> Vec<FormatModifiers> {
    let mut all: Vec<FormatModifiers> = bufbroker_proto::FormatInfo::all()
        .iter()
        .map(|f| FormatModifiers {
            fourcc: f.fourcc,
            modifiers: vec![Modifier::LINEAR],
        })
        .collect();
    for p in &request.participants {
        for a in &p.alternatives {
            for f in &a.formats {
                if let Some(e) = all.iter_mut().find(|e| e.fourcc == f.fourcc) {
                    for m in f.effective_modifiers() {
                        if !e.modifiers.contains(m) {
                            e.modifiers.push(*m);
                        }
                    }
                }
            }
        }
    }
    all
}

/// Drops every constraint except `named` (participant index or `None` for the request).
fn keep_only(request: &Request, named: &[(Option<usize>, K)]) -> Request {
    let mut r = request.clone();
    if !named.contains(&(None, K::Formats)) {
        r.formats.clear();
    }
    for i in 0..r.participants.len() {
        for kind in K::ALL {
            if !named.contains(&(Some(i), kind)) {
                r = relax_from(request, &r, i, kind);
            }
        }
    }
    r
}

/// Drops one kind of constraint from every alternative of participant `index`, by writing its
/// neutral value. Formats cannot be written as "anything" in a file, so for formats the test
/// lists every candidate pair the brute force uses.
fn relax_from(original: &Request, request: &Request, index: usize, kind: K) -> Request {
    let mut r = request.clone();
    let pairs = every_pair(original);
    let p = &mut r.participants[index];
    if kind == K::Usage {
        p.usage = Usage::empty();
    }
    for s in &mut p.alternatives {
        let l = &mut s.layout;
        let m = &mut s.memory;
        match kind {
            K::Formats => s.formats = pairs.clone(),
            K::Usage => s.usage = Usage::empty(),
            K::StrideAlignment => l.stride_alignment = 0,
            K::OffsetAlignment => l.offset_alignment = 0,
            K::SizeAlignment => l.size_alignment = 0,
            K::HeightAlignment => l.height_alignment = 0,
            K::WidthAlignment => l.width_alignment = 0,
            K::PlaneRowAlignment => l.plane_row_alignment.clear(),
            K::ExactStride => l.exact_stride = false,
            K::PlanesBackToBack => l.planes_back_to_back = false,
            K::PlaneBaseAlignment => l.plane_base_alignment = 0,
            K::MaxWidth => l.max_width = 0,
            K::MaxHeight => l.max_height = 0,
            K::MaxStride => l.max_stride = 0,
            K::MaxSize => l.max_size = 0,
            K::MaxPlanes => l.max_planes = 0,
            K::Heaps => m.heaps.clear(),
            K::Contiguous => m.contiguous = false,
            K::AddressBits => m.address_bits = 0,
            K::IovaRanges => m.iova_ranges.clear(),
            K::Coherent => m.coherent = false,
            K::CacheModes => m.cache_modes.clear(),
            K::Protected => m.protected = false,
            K::Dmabuf => m.dmabuf = false,
        }
    }
    r
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(300), ..ProptestConfig::default() })]

    /// Arbitrary values everywhere (not only realistic ones): the solver returns, never panics.
    #[test]
    fn solver_never_panics(
        width in any::<u32>(),
        height in any::<u32>(),
        sa in any::<u32>(), ha in any::<u32>(), wa in any::<u32>(), base in any::<u64>(),
        bits in any::<u8>(),
        start in any::<u64>(), end in any::<u64>(),
        code in any::<u32>(), modifier in any::<u64>(),
        count in any::<u32>(),
    ) {
        let set = ConstraintSet {
            formats: vec![
                FormatModifiers { fourcc: Fourcc(code), modifiers: vec![Modifier(modifier)] },
                FormatModifiers { fourcc: fourcc("NV12"), modifiers: vec![] },
            ],
            layout: LayoutConstraints {
                stride_alignment: sa,
                height_alignment: ha,
                width_alignment: wa,
                plane_base_alignment: base,
                ..LayoutConstraints::default()
            },
            memory: MemoryConstraints {
                address_bits: bits,
                behind_iommu: true,
                iova_ranges: vec![AddressRange { start, end }],
                ..MemoryConstraints::default()
            },
            ..ConstraintSet::default()
        };
        let request = Request {
            width,
            height,
            formats: vec![],
            usage: Usage::empty(),
            participants: vec![Participant::new(ParticipantId::Cpu, "x", Usage::empty(), set)],
            count,
        };
        let _ = solve_with(&request, &heaps(), &SolveOptions::default());
    }
}

/// Cases per property: `default`, or `PROPTEST_CASES` for longer runs.
fn cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}
