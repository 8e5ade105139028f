//! Explaining failure: a minimal set of conflicting constraints, and a split proposal.
//!
//! Each participant's rule of one kind (all its alternatives' values for that field) is one
//! *constraint*; the request's format list is another. Starting from every constraint that
//! is not neutral, the explanation drops constraints one by one while the request stays
//! unsolvable (deletion-based minimal unsatisfiable subset), repeating the passes until none
//! drops anything, so the result is minimal: dropping any one of the named constraints makes
//! the request solvable.

use std::collections::BTreeSet;

use crate::constraint::{CacheMode, ConstraintSet, Usage};
use crate::heap::HeapInfo;
use crate::request::Request;

use super::search::Problem;
use super::{Conflict, ConstraintKind, ConstraintOwner, Diagnostic, SolveError, SplitProposal};

/// A constraint that can be dropped: the request's formats, or one kind of one participant
/// (canonical position).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Atom {
    RequestFormats,
    Participant(usize, ConstraintKind),
}

/// Most deletion passes over the kept constraints.
const MAX_PASSES: usize = 6;

/// Participants up to this many get an exhaustive split search; more get a greedy one.
const EXHAUSTIVE_SPLIT: usize = 10;

struct Explainer<'p, 'a> {
    problem: &'p Problem<'a>,
    budget: u64,
    exhausted: bool,
}

impl Explainer<'_, '_> {
    /// Whether the request is unsolvable with only `kept` constraints; `None` when the budget
    /// ran out.
    fn unsat(&mut self, kept: &BTreeSet<Atom>, subset: Option<u32>) -> Option<bool> {
        let n = self.problem.participants.len();
        let all = ConstraintKind::ALL
            .iter()
            .fold(0u32, |acc, k| acc | k.bit());
        let mut relax = vec![all; n];
        let mut relax_request_formats = true;
        for atom in kept {
            match *atom {
                Atom::RequestFormats => relax_request_formats = false,
                Atom::Participant(k, kind) => {
                    if let Some(m) = relax.get_mut(k) {
                        *m &= !kind.bit();
                    }
                }
            }
        }
        self.solve(&relax, relax_request_formats, subset)
            .map(|found| !found)
    }

    fn solve(
        &mut self,
        relax: &[u32],
        relax_request_formats: bool,
        subset: Option<u32>,
    ) -> Option<bool> {
        if self.exhausted {
            return None;
        }
        match self
            .problem
            .solve_subset(relax, relax_request_formats, subset, 1, &mut self.budget)
        {
            Ok(plans) => Some(!plans.is_empty()),
            Err(SolveError::BudgetExceeded(_)) | Err(_) => {
                self.exhausted = true;
                None
            }
        }
    }
}

/// Builds the diagnostic for an unsolvable `problem`.
pub(crate) fn explain(
    problem: &Problem<'_>,
    request: &Request,
    heaps: &[HeapInfo],
    budget: u64,
) -> Diagnostic {
    let mut ex = Explainer {
        problem,
        budget: budget.saturating_mul(20),
        exhausted: false,
    };
    let mut notes = problem.notes();
    let active = active_atoms(problem, request);
    let mut kept: BTreeSet<Atom> = active.iter().copied().collect();
    // Deletion passes until nothing more can be dropped. One pass suffices when dropping a
    // constraint only ever helps; a width alignment can also make an exact stride come out
    // aligned, so later passes re-check what an earlier pass kept.
    let mut converged = false;
    for _ in 0..MAX_PASSES {
        let mut changed = false;
        for atom in kept.clone() {
            kept.remove(&atom);
            match ex.unsat(&kept, None) {
                Some(true) => changed = true,
                Some(false) | None => {
                    kept.insert(atom);
                }
            }
            if ex.exhausted {
                break;
            }
        }
        if !changed || ex.exhausted {
            converged = !changed;
            break;
        }
    }
    let minimal = converged && !ex.exhausted;
    let mut conflicts: Vec<Conflict> = kept
        .iter()
        .map(|a| describe(problem, request, *a))
        .collect();
    // The heaps take part when a rule that only a heap can meet is named. An address width
    // behind an IOMMU limits the IOVA window, which no heap can widen.
    let memory_involved = kept.iter().any(|a| match *a {
        Atom::Participant(_, ConstraintKind::Heaps | ConstraintKind::Contiguous)
        | Atom::Participant(_, ConstraintKind::Coherent | ConstraintKind::CacheModes)
        | Atom::Participant(_, ConstraintKind::Protected | ConstraintKind::Dmabuf) => true,
        Atom::Participant(k, ConstraintKind::AddressBits) => problem
            .participants
            .get(k)
            .is_some_and(|p| p.alts.iter().any(|alt| !alt.set.memory.behind_iommu)),
        _ => false,
    });
    if memory_involved || kept.is_empty() {
        conflicts.push(Conflict {
            owner: ConstraintOwner::Heaps,
            kind: ConstraintKind::Heaps,
            value: describe_heaps(heaps),
        });
    }
    if !minimal {
        notes.push(
            "the explanation ran out of search budget; the conflict list may not be minimal".into(),
        );
    }
    let split = if ex.exhausted {
        None
    } else {
        propose_split(&mut ex)
    };
    Diagnostic {
        conflicts,
        minimal,
        split,
        notes,
    }
}

/// Every constraint that is not neutral in some alternative, in a fixed order.
fn active_atoms(problem: &Problem<'_>, request: &Request) -> Vec<Atom> {
    let mut atoms = Vec::new();
    if !request.formats.is_empty() {
        atoms.push(Atom::RequestFormats);
    }
    for (k, p) in problem.participants.iter().enumerate() {
        let participant = request.participants.get(p.index);
        let protected_usage = participant.is_some_and(|p| p.usage.contains(Usage::PROTECTED));
        for kind in ConstraintKind::ALL {
            let active = match kind {
                ConstraintKind::Formats => true,
                ConstraintKind::Usage => p.alts.iter().any(|a| !a.covers_usage),
                ConstraintKind::Protected => {
                    protected_usage || p.alts.iter().any(|a| a.set.memory.protected)
                }
                _ => p.alts.iter().any(|a| !is_neutral(a.set, kind)),
            };
            if active {
                atoms.push(Atom::Participant(k, kind));
            }
        }
    }
    atoms
}

fn is_neutral(set: &ConstraintSet, kind: ConstraintKind) -> bool {
    let l = &set.layout;
    let m = &set.memory;
    match kind {
        ConstraintKind::Formats | ConstraintKind::Usage => false,
        ConstraintKind::StrideAlignment => l.stride_alignment <= 1,
        ConstraintKind::OffsetAlignment => l.offset_alignment <= 1,
        ConstraintKind::SizeAlignment => l.size_alignment <= 1,
        ConstraintKind::HeightAlignment => l.height_alignment <= 1,
        ConstraintKind::WidthAlignment => l.width_alignment <= 1,
        ConstraintKind::PlaneRowAlignment => l.plane_row_alignment.iter().all(|&a| a <= 1),
        ConstraintKind::ExactStride => !l.exact_stride,
        ConstraintKind::PlanesBackToBack => !l.planes_back_to_back,
        ConstraintKind::PlaneBaseAlignment => l.plane_base_alignment <= 1,
        ConstraintKind::MaxWidth => l.max_width == 0,
        ConstraintKind::MaxHeight => l.max_height == 0,
        ConstraintKind::MaxStride => l.max_stride == 0,
        ConstraintKind::MaxSize => l.max_size == 0,
        ConstraintKind::MaxPlanes => l.max_planes == 0,
        ConstraintKind::Heaps => m.heaps.is_empty(),
        ConstraintKind::Contiguous => !m.contiguous,
        ConstraintKind::AddressBits => m.effective_address_bits() >= 64,
        ConstraintKind::IovaRanges => m.iova_ranges.is_empty() || !m.behind_iommu,
        ConstraintKind::Coherent => !m.coherent,
        ConstraintKind::CacheModes => m.cache_modes.is_empty(),
        ConstraintKind::Protected => !m.protected,
        ConstraintKind::Dmabuf => !m.dmabuf,
    }
}

fn describe(problem: &Problem<'_>, request: &Request, atom: Atom) -> Conflict {
    match atom {
        Atom::RequestFormats => Conflict {
            owner: ConstraintOwner::Request,
            kind: ConstraintKind::Formats,
            value: request
                .formats
                .iter()
                .map(|f| f.to_string())
                .collect::<Vec<_>>()
                .join(", "),
        },
        Atom::Participant(k, kind) => {
            let Some(p) = problem.participants.get(k) else {
                return Conflict {
                    owner: ConstraintOwner::Request,
                    kind,
                    value: String::new(),
                };
            };
            let mut values: Vec<String> = Vec::new();
            for alt in &p.alts {
                let v = value_of(alt.set, kind, request, alt.covers_usage);
                if !values.contains(&v) {
                    values.push(v);
                }
            }
            if kind == ConstraintKind::Usage {
                if let Some(part) = request.participants.get(p.index) {
                    values.push(format!("(needs {})", part.usage));
                }
            }
            Conflict {
                owner: ConstraintOwner::Participant {
                    index: p.index as u32,
                    label: p.label.to_owned(),
                },
                kind,
                value: values.join(" | "),
            }
        }
    }
}

fn value_of(set: &ConstraintSet, kind: ConstraintKind, request: &Request, covers: bool) -> String {
    let l = &set.layout;
    let m = &set.memory;
    let limit = |what: &str, v: u64, req: u64| format!("{v} ({what} {req})");
    match kind {
        ConstraintKind::Formats => {
            if set.formats.is_empty() {
                return "any format, LINEAR only".into();
            }
            let mut items: Vec<String> = set
                .formats
                .iter()
                .flat_map(|f| {
                    f.effective_modifiers()
                        .iter()
                        .map(move |m| format!("{}:{m}", f.fourcc))
                })
                .collect();
            let more = items.len().saturating_sub(8);
            items.truncate(8);
            if more > 0 {
                items.push(format!("and {more} more"));
            }
            items.join(", ")
        }
        ConstraintKind::Usage => {
            if covers {
                format!("{}", set.usage)
            } else {
                format!("supports only {}", set.usage)
            }
        }
        ConstraintKind::StrideAlignment => l.stride_alignment.to_string(),
        ConstraintKind::OffsetAlignment => l.offset_alignment.to_string(),
        ConstraintKind::SizeAlignment => l.size_alignment.to_string(),
        ConstraintKind::HeightAlignment => l.height_alignment.to_string(),
        ConstraintKind::WidthAlignment => l.width_alignment.to_string(),
        ConstraintKind::PlaneRowAlignment => format!("{:?}", l.plane_row_alignment),
        ConstraintKind::ExactStride => l.exact_stride.to_string(),
        ConstraintKind::PlanesBackToBack => l.planes_back_to_back.to_string(),
        ConstraintKind::PlaneBaseAlignment => l.plane_base_alignment.to_string(),
        ConstraintKind::MaxWidth => {
            limit("request width", l.max_width.into(), request.width.into())
        }
        ConstraintKind::MaxHeight => {
            limit("request height", l.max_height.into(), request.height.into())
        }
        ConstraintKind::MaxStride => l.max_stride.to_string(),
        ConstraintKind::MaxSize => l.max_size.to_string(),
        ConstraintKind::MaxPlanes => l.max_planes.to_string(),
        ConstraintKind::Heaps => format!("[{}]", m.heaps.join(", ")),
        ConstraintKind::Contiguous => m.contiguous.to_string(),
        ConstraintKind::AddressBits => {
            let window = if m.behind_iommu {
                "IOVA"
            } else {
                "physical address"
            };
            format!(
                "{} bits ({window} below {:#x})",
                m.effective_address_bits(),
                1u128 << m.effective_address_bits()
            )
        }
        ConstraintKind::IovaRanges => m
            .iova_ranges
            .iter()
            .map(|r| format!("{:#x}..={:#x}", r.start, r.end))
            .collect::<Vec<_>>()
            .join(", "),
        ConstraintKind::Coherent => m.coherent.to_string(),
        ConstraintKind::CacheModes => m
            .cache_modes
            .iter()
            .map(|c: &CacheMode| c.name())
            .collect::<Vec<_>>()
            .join(", "),
        ConstraintKind::Protected => "true".into(),
        ConstraintKind::Dmabuf => m.dmabuf.to_string(),
    }
}

fn describe_heaps(heaps: &[HeapInfo]) -> String {
    if heaps.is_empty() {
        return "none available".into();
    }
    heaps
        .iter()
        .map(|h| {
            let mut props = vec![h.cache_mode.name().to_owned()];
            props.push(
                if h.contiguous {
                    "contiguous"
                } else {
                    "scattered"
                }
                .into(),
            );
            if h.dmabuf {
                props.push("dmabuf".into());
            }
            if !h.coherent {
                props.push("non-coherent".into());
            }
            if h.protected {
                props.push("protected".into());
            }
            if h.address_bits != 0 && h.address_bits < 64 {
                props.push(format!("below 2^{}", h.address_bits));
            }
            format!("{} ({})", h.name, props.join(", "))
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// Finds two groups that are each solvable, preferring the split that moves the fewest
/// participants to the copy side.
fn propose_split(ex: &mut Explainer<'_, '_>) -> Option<SplitProposal> {
    let n = ex.problem.participants.len();
    if n < 2 {
        return None;
    }
    let full: u32 = if n >= 32 { u32::MAX } else { (1u32 << n) - 1 };
    let none = vec![0u32; n];
    let mut best: Option<u32> = None;
    if n <= EXHAUSTIVE_SPLIT {
        let mut masks: Vec<u32> = (1..full).filter(|m| m & 1 == 1).collect();
        masks.sort_by_key(|m| (std::cmp::Reverse(m.count_ones()), *m));
        for mask in masks {
            let first = ex.solve(&none, false, Some(mask))?;
            if first && ex.solve(&none, false, Some(full & !mask))? {
                best = Some(mask);
                break;
            }
        }
    } else {
        let mut mask = 0u32;
        for k in 0..n {
            let trial = mask | (1 << k);
            if ex.solve(&none, false, Some(trial))? {
                mask = trial;
            }
        }
        if mask != 0 && mask != full && ex.solve(&none, false, Some(full & !mask))? {
            best = Some(mask);
        }
    }
    let mask = best?;
    let mut budget = ex.budget;
    let first_plan = ex
        .problem
        .solve_subset(&none, false, Some(mask), 1, &mut budget)
        .ok()?
        .into_iter()
        .next()?;
    let second_plan = ex
        .problem
        .solve_subset(&none, false, Some(full & !mask), 1, &mut budget)
        .ok()?
        .into_iter()
        .next()?;
    let group = |m: u32| -> Vec<u32> {
        let mut v: Vec<u32> = ex
            .problem
            .participants
            .iter()
            .enumerate()
            .filter(|(k, _)| m & (1 << k) != 0)
            .map(|(_, p)| p.index as u32)
            .collect();
        v.sort_unstable();
        v
    };
    let (mut first, mut second) = (group(mask), group(full & !mask));
    let (mut first_plan, mut second_plan) = (first_plan, second_plan);
    if second.first() < first.first() {
        std::mem::swap(&mut first, &mut second);
        std::mem::swap(&mut first_plan, &mut second_plan);
    }
    // A group's plan lists the alternatives of its own members only, in group order.
    let own = |plan: &mut crate::plan::Plan, members: &[u32]| {
        plan.alternatives = members
            .iter()
            .map(|&i| plan.alternatives.get(i as usize).copied().unwrap_or(0))
            .collect();
    };
    own(&mut first_plan, &first);
    own(&mut second_plan, &second);
    Some(SplitProposal {
        first,
        second,
        first_plan,
        second_plan,
    })
}
