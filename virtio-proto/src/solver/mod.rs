//! The solver: intersects the participants of a request into ranked plans, or explains why no
//! buffer satisfies them all.
//!
//! Merge rules (see `docs/constraints.md`): formats and modifiers intersect; alignments take the
//! least common multiple; maxima take the minimum; contiguity, coherency, protection and the
//! need for a dmabuf OR together; address widths take the minimum; heaps and CPU cache modes
//! intersect. For every candidate (format, modifier) the solver picks one alternative per
//! participant, preferring earlier alternatives, and lays the image out with the merged rules.
//!
//! Properties (tested in `tests/solver_props.rs`): every plan satisfies every participant as
//! judged by the independent [`check`](crate::check) module; if any choice of alternatives and
//! candidate works, a plan is found; the result does not depend on participant order; a failed
//! solve names a minimal set of conflicting constraints.

mod diagnose;
mod layout;
mod search;

use std::fmt;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::heap::HeapInfo;
use crate::limits::LimitError;
use crate::plan::Plan;
use crate::request::Request;

pub use layout::{LayoutError, LayoutRules, compute_layout};

/// Solver errors.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SolveError {
    /// The request breaks a limit.
    #[error("invalid request")]
    InvalidRequest(#[from] LimitError),
    /// A participant has an alternative with a required extension that this solver does not
    /// understand, and no alternative without one.
    #[error(
        "participant {participant:?} requires extension (vendor {vendor:#x}, code {code:#x}), which this solver does not understand"
    )]
    UnknownRequiredExtension {
        /// Label of the participant.
        participant: String,
        /// Extension vendor.
        vendor: u32,
        /// Extension code.
        code: u32,
    },
    /// No buffer satisfies every participant.
    #[error("no buffer satisfies every participant: {0}")]
    Unsatisfiable(Box<Diagnostic>),
    /// The search for alternatives took more steps than allowed.
    #[error("the search exceeded {0} steps; reduce alternatives or participants")]
    BudgetExceeded(u64),
}

/// Tuning of one solve.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SolveOptions {
    /// Most plans returned.
    pub max_plans: usize,
    /// Most search steps (alternative choices tried) before giving up.
    pub budget: u64,
    /// Whether a failure computes a minimal explanation and a split proposal.
    pub explain: bool,
}

impl Default for SolveOptions {
    fn default() -> Self {
        SolveOptions {
            max_plans: 8,
            budget: 200_000,
            explain: true,
        }
    }
}

/// An extension the solver ignored because it is optional and not understood.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct IgnoredExtension {
    /// Index of the participant in the request.
    pub participant: u32,
    /// Index of the alternative.
    pub alternative: u32,
    /// Extension vendor.
    pub vendor: u32,
    /// Extension code.
    pub code: u32,
    /// Whether it was required (its alternative was then skipped).
    pub required: bool,
}

/// The outcome of a successful solve.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Solution {
    /// Plans, best first.
    pub plans: Vec<Plan>,
    /// Extensions ignored (optional ones) or whose alternatives were skipped (required ones).
    pub ignored_extensions: Vec<IgnoredExtension>,
}

/// Which rule of a participant (or of the request) takes part in a conflict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ConstraintKind {
    /// The formats and modifiers the participant accepts (for the request: the formats asked for).
    Formats,
    /// The usages its alternatives cover.
    Usage,
    /// `layout.stride_alignment`.
    StrideAlignment,
    /// `layout.offset_alignment`.
    OffsetAlignment,
    /// `layout.size_alignment`.
    SizeAlignment,
    /// `layout.height_alignment`.
    HeightAlignment,
    /// `layout.width_alignment`.
    WidthAlignment,
    /// `layout.plane_row_alignment`.
    PlaneRowAlignment,
    /// `layout.exact_stride`.
    ExactStride,
    /// `layout.planes_back_to_back`.
    PlanesBackToBack,
    /// `layout.plane_base_alignment`.
    PlaneBaseAlignment,
    /// `layout.max_width`.
    MaxWidth,
    /// `layout.max_height`.
    MaxHeight,
    /// `layout.max_stride`.
    MaxStride,
    /// `layout.max_size`.
    MaxSize,
    /// `layout.max_planes`.
    MaxPlanes,
    /// `memory.heaps`.
    Heaps,
    /// `memory.contiguous`.
    Contiguous,
    /// `memory.address_bits` (with `behind_iommu`).
    AddressBits,
    /// `memory.iova_ranges`.
    IovaRanges,
    /// `memory.coherent`.
    Coherent,
    /// `memory.cache_modes`.
    CacheModes,
    /// `memory.protected` (or the `protected` usage).
    Protected,
    /// `memory.dmabuf`.
    Dmabuf,
}

impl ConstraintKind {
    /// Every kind, in a fixed order.
    pub const ALL: [ConstraintKind; 24] = [
        ConstraintKind::Formats,
        ConstraintKind::Usage,
        ConstraintKind::StrideAlignment,
        ConstraintKind::OffsetAlignment,
        ConstraintKind::SizeAlignment,
        ConstraintKind::HeightAlignment,
        ConstraintKind::WidthAlignment,
        ConstraintKind::PlaneRowAlignment,
        ConstraintKind::ExactStride,
        ConstraintKind::PlanesBackToBack,
        ConstraintKind::PlaneBaseAlignment,
        ConstraintKind::MaxWidth,
        ConstraintKind::MaxHeight,
        ConstraintKind::MaxStride,
        ConstraintKind::MaxSize,
        ConstraintKind::MaxPlanes,
        ConstraintKind::Heaps,
        ConstraintKind::Contiguous,
        ConstraintKind::AddressBits,
        ConstraintKind::IovaRanges,
        ConstraintKind::Coherent,
        ConstraintKind::CacheModes,
        ConstraintKind::Protected,
        ConstraintKind::Dmabuf,
    ];

    /// The bit of this kind in a relaxation mask.
    pub(crate) fn bit(self) -> u32 {
        1 << (self as u32)
    }

    /// The field name as written in constraint files.
    pub fn field(self) -> &'static str {
        match self {
            ConstraintKind::Formats => "formats",
            ConstraintKind::Usage => "usage",
            ConstraintKind::StrideAlignment => "layout.stride_alignment",
            ConstraintKind::OffsetAlignment => "layout.offset_alignment",
            ConstraintKind::SizeAlignment => "layout.size_alignment",
            ConstraintKind::HeightAlignment => "layout.height_alignment",
            ConstraintKind::WidthAlignment => "layout.width_alignment",
            ConstraintKind::PlaneRowAlignment => "layout.plane_row_alignment",
            ConstraintKind::ExactStride => "layout.exact_stride",
            ConstraintKind::PlanesBackToBack => "layout.planes_back_to_back",
            ConstraintKind::PlaneBaseAlignment => "layout.plane_base_alignment",
            ConstraintKind::MaxWidth => "layout.max_width",
            ConstraintKind::MaxHeight => "layout.max_height",
            ConstraintKind::MaxStride => "layout.max_stride",
            ConstraintKind::MaxSize => "layout.max_size",
            ConstraintKind::MaxPlanes => "layout.max_planes",
            ConstraintKind::Heaps => "memory.heaps",
            ConstraintKind::Contiguous => "memory.contiguous",
            ConstraintKind::AddressBits => "memory.address_bits",
            ConstraintKind::IovaRanges => "memory.iova_ranges",
            ConstraintKind::Coherent => "memory.coherent",
            ConstraintKind::CacheModes => "memory.cache_modes",
            ConstraintKind::Protected => "memory.protected",
            ConstraintKind::Dmabuf => "memory.dmabuf",
        }
    }
}

impl fmt::Display for ConstraintKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.field())
    }
}

/// Who a conflicting constraint belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ConstraintOwner {
    /// The request itself (its formats or usage).
    Request,
    /// A participant: index in the request and label.
    Participant {
        /// Index in the request.
        index: u32,
        /// Its label.
        label: String,
    },
    /// The broker's heaps (none offers what the others need).
    Heaps,
}

impl fmt::Display for ConstraintOwner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConstraintOwner::Request => f.write_str("the request"),
            ConstraintOwner::Participant { label, .. } => write!(f, "{label}"),
            ConstraintOwner::Heaps => f.write_str("the available heaps"),
        }
    }
}

/// One constraint that takes part in a conflict.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Conflict {
    /// Whose constraint it is.
    pub owner: ConstraintOwner,
    /// Which constraint.
    pub kind: ConstraintKind,
    /// Its value, as text (all alternatives where they differ).
    pub value: String,
}

impl fmt::Display for Conflict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {} = {}", self.owner, self.kind, self.value)
    }
}

/// A proposal to split the participants into two groups that each get their own buffer, with a
/// copy (shadow buffer) between them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SplitProposal {
    /// Participant indices of the first group (holding the first participant).
    pub first: Vec<u32>,
    /// Participant indices of the second group.
    pub second: Vec<u32>,
    /// The best plan for the first group; its `alternatives` list the members of `first`, in
    /// that order.
    pub first_plan: Plan,
    /// The best plan for the second group; its `alternatives` follow `second`.
    pub second_plan: Plan,
}

/// Why a request cannot be satisfied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Diagnostic {
    /// A set of constraints that cannot hold together. When `minimal` is true, dropping any
    /// one of them makes the request solvable.
    pub conflicts: Vec<Conflict>,
    /// Whether `conflicts` was proven minimal (false when the explanation ran out of budget).
    pub minimal: bool,
    /// A split into two solvable groups joined by a copy, where one exists.
    pub split: Option<SplitProposal>,
    /// Further facts (candidates skipped for unknown modifiers, and so on).
    pub notes: Vec<String>,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.conflicts.is_empty() {
            f.write_str("no candidate format satisfies the participants")?;
        } else {
            f.write_str("these constraints conflict: ")?;
            for (i, c) in self.conflicts.iter().enumerate() {
                if i > 0 {
                    f.write_str("; ")?;
                }
                write!(f, "{c}")?;
            }
        }
        if let Some(split) = &self.split {
            write!(
                f,
                ". Split proposal: one {} buffer for participants {:?} and one {} buffer for {:?}, with a copy between them",
                split.first_plan.fourcc, split.first, split.second_plan.fourcc, split.second
            )?;
        }
        Ok(())
    }
}

/// Solves `request` against the broker's `heaps` with default options.
pub fn solve(request: &Request, heaps: &[HeapInfo]) -> Result<Solution, SolveError> {
    solve_with(request, heaps, &SolveOptions::default())
}

/// Solves `request` against `heaps`.
pub fn solve_with(
    request: &Request,
    heaps: &[HeapInfo],
    options: &SolveOptions,
) -> Result<Solution, SolveError> {
    crate::limits::check_request(request)?;
    let heaps = heaps
        .get(..heaps.len().min(crate::limits::MAX_SOLVER_HEAPS))
        .unwrap_or(heaps);
    let problem = search::Problem::new(request, heaps)?;
    let mut budget = options.budget;
    let none = vec![0u32; request.participants.len()];
    let plans = problem.solve(&none, false, options.max_plans.max(1), &mut budget)?;
    if !plans.is_empty() {
        return Ok(Solution {
            plans,
            ignored_extensions: problem.ignored_extensions(),
        });
    }
    let diagnostic = if options.explain {
        diagnose::explain(&problem, request, heaps, options.budget)
    } else {
        Diagnostic {
            conflicts: Vec::new(),
            minimal: false,
            split: None,
            notes: problem.notes(),
        }
    };
    Err(SolveError::Unsatisfiable(Box::new(diagnostic)))
}
