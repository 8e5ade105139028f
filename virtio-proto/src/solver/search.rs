//! The search: candidate (format, modifier) pairs × one alternative per participant.
//!
//! Adding a constraint never makes an infeasible choice feasible (alignments only grow, maxima
//! only shrink, flags only turn on, sets only shrink), so a partial choice that is already
//! infeasible is pruned with all its extensions. Participants are searched in a canonical
//! order (sorted by value), which makes the result independent of the order in the request.

use std::collections::BTreeSet;

use crate::constraint::{CacheMode, ConstraintSet, Usage};
use crate::format::{FormatInfo, Fourcc, Modifier, ModifierInfo};
use crate::heap::HeapInfo;
use crate::limits::MAX_PLANES;
use crate::plan::Plan;
use crate::request::Request;

use super::layout::{LayoutRules, align_up, compute_layout_with, lcm};
use super::{ConstraintKind, IgnoredExtension, SolveError};

/// Extensions this solver understands: `(vendor, code)`. None yet; the list exists so that
/// new vocabulary can be taught here without a wire change.
const KNOWN_EXTENSIONS: &[(u32, u32)] = &[];

const NO_RANK: u16 = u16::MAX;

/// One alternative, prepared for fast lookups.
#[derive(Debug)]
pub(crate) struct Alt<'a> {
    /// Index in the participant's list.
    pub index: u32,
    /// The constraint set.
    pub set: &'a ConstraintSet,
    /// Covers the participant's usage.
    pub covers_usage: bool,
    /// The participant's usage includes protected content.
    pub protected_usage: bool,
    /// Bit `h` set when heap `h` is allowed (all bits when the list is empty).
    heap_mask: u32,
    /// Rank of each allowed heap in this alternative's list.
    heap_rank: Vec<(usize, u16)>,
}

/// One participant, prepared.
#[derive(Debug)]
pub(crate) struct Prepared<'a> {
    /// Index in the request.
    pub index: usize,
    /// Label.
    pub label: &'a str,
    /// Its usable alternatives (required unknown extensions removed).
    pub alts: Vec<Alt<'a>>,
}

/// A candidate (format, modifier) with its table entries.
#[derive(Debug, Clone)]
struct Candidate {
    fourcc: Fourcc,
    modifier: Modifier,
    info: &'static FormatInfo,
    modifier_info: ModifierInfo,
}

/// A prepared request.
#[derive(Debug)]
pub(crate) struct Problem<'a> {
    pub request: &'a Request,
    pub heaps: &'a [HeapInfo],
    /// Participants in canonical order.
    pub participants: Vec<Prepared<'a>>,
    ignored: Vec<IgnoredExtension>,
    notes: Vec<String>,
    usage: Usage,
}

/// Everything merged along one path of the search.
#[derive(Debug, Clone)]
struct Merged {
    rules: LayoutRules,
    max_width: u64,
    max_height: u64,
    heap_mask: u32,
    heap_rank: [u32; crate::limits::MAX_SOLVER_HEAPS],
    contiguous: bool,
    coherent: bool,
    protected: bool,
    dmabuf: bool,
    cache_modes: u8,
    phys_bits: u8,
    min_bits: u8,
    iova_capacity: u64,
    alt_sum: u32,
    rank_sum: u32,
}

fn cache_bit(m: CacheMode) -> u8 {
    match m {
        CacheMode::Cached => 1,
        CacheMode::Uncached => 2,
        CacheMode::WriteCombined => 4,
    }
}

fn is_relaxed(mask: u32, kind: ConstraintKind) -> bool {
    mask & kind.bit() != 0
}

impl<'a> Problem<'a> {
    /// Prepares `request` (already checked against the limits).
    pub fn new(request: &'a Request, heaps: &'a [HeapInfo]) -> Result<Self, SolveError> {
        let mut order: Vec<usize> = (0..request.participants.len()).collect();
        order.sort_by(|&a, &b| request.participants.get(a).cmp(&request.participants.get(b)));
        let mut ignored = Vec::new();
        let mut participants = Vec::with_capacity(order.len());
        let mut usage = request.usage;
        for &index in &order {
            let Some(p) = request.participants.get(index) else {
                continue;
            };
            usage |= p.usage;
            let mut alts = Vec::with_capacity(p.alternatives.len());
            let mut unknown_required = None;
            for (ai, set) in p.alternatives.iter().enumerate() {
                let mut usable = true;
                for e in &set.extensions {
                    if KNOWN_EXTENSIONS.contains(&(e.vendor, e.code)) {
                        continue;
                    }
                    ignored.push(IgnoredExtension {
                        participant: index as u32,
                        alternative: ai as u32,
                        vendor: e.vendor,
                        code: e.code,
                        required: e.required,
                    });
                    if e.required {
                        usable = false;
                        unknown_required.get_or_insert((e.vendor, e.code));
                    }
                }
                if !usable {
                    continue;
                }
                let (heap_mask, heap_rank) = heap_prefs(set, heaps);
                alts.push(Alt {
                    index: ai as u32,
                    set,
                    covers_usage: p.alternative_applies(set),
                    protected_usage: p.usage.contains(Usage::PROTECTED),
                    heap_mask,
                    heap_rank,
                });
            }
            if alts.is_empty() {
                if let Some((vendor, code)) = unknown_required {
                    return Err(SolveError::UnknownRequiredExtension {
                        participant: p.label.clone(),
                        vendor,
                        code,
                    });
                }
            }
            participants.push(Prepared {
                index,
                label: &p.label,
                alts,
            });
        }
        ignored.sort_by_key(|e| (e.participant, e.alternative, e.vendor, e.code));
        Ok(Problem {
            request,
            heaps,
            participants,
            ignored,
            notes: Vec::new(),
            usage,
        })
    }

    /// Whether the participant owning `alt` says it handles protected content.
    fn participant_protected(&self, alt: &Alt<'_>) -> bool {
        alt.protected_usage
    }

    /// Extensions that were ignored or whose alternatives were skipped.
    pub fn ignored_extensions(&self) -> Vec<IgnoredExtension> {
        self.ignored.clone()
    }

    /// Notes about the problem for a diagnostic.
    pub fn notes(&self) -> Vec<String> {
        let mut notes = self.notes.clone();
        let mut seen = BTreeSet::new();
        for p in &self.participants {
            for alt in &p.alts {
                for fm in &alt.set.formats {
                    if FormatInfo::lookup(fm.fourcc).is_err() && seen.insert((fm.fourcc.0, 0u64)) {
                        notes.push(format!("{} lists unknown format {}; skipped", p.label, fm.fourcc));
                    }
                    for &m in fm.effective_modifiers() {
                        if ModifierInfo::lookup(m).is_err() && seen.insert((0, m.0)) {
                            notes.push(format!(
                                "{} lists modifier {m}, whose layout is unknown; skipped",
                                p.label
                            ));
                        }
                    }
                }
            }
        }
        for e in &self.ignored {
            if e.required {
                notes.push(format!(
                    "participant {} alternative {} requires unknown extension (vendor {:#x}, code {:#x}); alternative skipped",
                    e.participant, e.alternative, e.vendor, e.code
                ));
            }
        }
        notes
    }

    /// Candidate pairs: the (format, modifier) pairs of the participant with the fewest,
    /// unless someone accepts anything.
    fn candidates(&self, relax: &[u32], relax_request_formats: bool) -> Vec<Candidate> {
        let req_formats = &self.request.formats;
        let format_allowed =
            |f: Fourcc| relax_request_formats || req_formats.is_empty() || req_formats.contains(&f);
        let mut pairs: Vec<(Fourcc, Modifier)> = Vec::new();
        let pivot = self
            .participants
            .iter()
            .enumerate()
            .filter(|(k, p)| {
                !is_relaxed(relax.get(*k).copied().unwrap_or(0), ConstraintKind::Formats)
                    && p.alts.iter().all(|a| !a.set.formats.is_empty())
            })
            .min_by_key(|(_, p)| p.alts.iter().map(|a| a.set.formats.len()).sum::<usize>());
        let sources: Vec<&Prepared<'_>> = match pivot {
            Some((_, p)) => vec![p],
            None => self.participants.iter().collect(),
        };
        let mut any = pivot.is_none();
        for p in sources {
            for alt in &p.alts {
                if alt.set.formats.is_empty() {
                    any = true;
                }
                for fm in &alt.set.formats {
                    if format_allowed(fm.fourcc) {
                        pairs.extend(fm.effective_modifiers().iter().map(|&m| (fm.fourcc, m)));
                    }
                }
            }
        }
        if any {
            if req_formats.is_empty() || relax_request_formats {
                pairs.extend(FormatInfo::all().iter().map(|i| (i.fourcc, Modifier::LINEAR)));
            }
            pairs.extend(req_formats.iter().map(|&f| (f, Modifier::LINEAR)));
        }
        pairs.sort_unstable();
        pairs.dedup();
        pairs
            .into_iter()
            .filter(|&(f, _)| format_allowed(f))
            .filter_map(|(fourcc, modifier)| {
                let info = FormatInfo::lookup(fourcc).ok()?;
                let modifier_info = ModifierInfo::lookup(modifier).ok()?;
                modifier_info.supports(fourcc).then_some(Candidate {
                    fourcc,
                    modifier,
                    info,
                    modifier_info,
                })
            })
            .collect()
    }

    /// Solves with the constraints in `relax` (a [`ConstraintKind`] bit mask per participant,
    /// in canonical order) dropped. Returns up to `max_plans` plans, best first.
    pub fn solve(
        &self,
        relax: &[u32],
        relax_request_formats: bool,
        max_plans: usize,
        budget: &mut u64,
    ) -> Result<Vec<Plan>, SolveError> {
        self.solve_subset(relax, relax_request_formats, None, max_plans, budget)
    }

    /// [`Self::solve`] over the participants whose canonical positions are set in `subset`
    /// (all when `None`).
    pub fn solve_subset(
        &self,
        relax: &[u32],
        relax_request_formats: bool,
        subset: Option<u32>,
        max_plans: usize,
        budget: &mut u64,
    ) -> Result<Vec<Plan>, SolveError> {
        let mut found: Vec<(PlanKey, Plan)> = Vec::new();
        for cand in self.candidates(relax, relax_request_formats) {
            if let Some(found_one) =
                self.best_for_candidate(&cand, relax, relax_request_formats, subset, budget)?
            {
                found.push(found_one);
            }
        }
        found.sort_by(|a, b| a.0.cmp(&b.0));
        found.truncate(max_plans);
        Ok(found.into_iter().map(|(_, p)| p).collect())
    }

    fn best_for_candidate(
        &self,
        cand: &Candidate,
        relax: &[u32],
        relax_request_formats: bool,
        subset: Option<u32>,
        budget: &mut u64,
    ) -> Result<Option<(PlanKey, Plan)>, SolveError> {
        // For each participant, its alternatives that accept the candidate, with the rank of
        // the candidate in that alternative's list.
        let mut choices: Vec<(usize, Vec<(&Alt<'_>, u16)>)> = Vec::with_capacity(self.participants.len());
        for (k, p) in self.participants.iter().enumerate() {
            if subset.is_some_and(|s| s & (1 << k) == 0) {
                continue;
            }
            let mask = relax.get(k).copied().unwrap_or(0);
            let mut list = Vec::with_capacity(p.alts.len());
            for alt in &p.alts {
                if !alt.covers_usage && !is_relaxed(mask, ConstraintKind::Usage) {
                    continue;
                }
                let rank = if is_relaxed(mask, ConstraintKind::Formats) {
                    0
                } else {
                    accept_rank(alt.set, cand.fourcc, cand.modifier)
                };
                if rank != NO_RANK {
                    list.push((alt, rank));
                }
            }
            if list.is_empty() {
                return Ok(None);
            }
            choices.push((k, list));
        }
        let request_rank = if self.request.formats.is_empty() {
            0
        } else {
            self.request
                .formats
                .iter()
                .position(|&f| f == cand.fourcc)
                .unwrap_or(self.request.formats.len()) as u32
        };
        let _ = relax_request_formats;
        // Lower bounds of the remaining choices, for pruning.
        let mut min_rest = vec![(0u32, 0u32); choices.len() + 1];
        for i in (0..choices.len()).rev() {
            let (a, r) = choices
                .get(i)
                .and_then(|(_, l)| l.iter().map(|(alt, rank)| (alt.index, u32::from(*rank))).min())
                .unwrap_or((0, 0));
            let (ra, rr) = min_rest.get(i + 1).copied().unwrap_or((0, 0));
            if let Some(slot) = min_rest.get_mut(i) {
                *slot = (a + ra, r + rr);
            }
        }
        let mut search = Search {
            problem: self,
            cand,
            relax,
            choices: &choices,
            min_rest: &min_rest,
            picked: vec![0u32; self.participants.len()],
            best: None,
            prune_layout: false,
            budget,
        };
        let mut merged = Merged::start(self.heaps.len());
        merged.protected = self.request.usage.contains(Usage::PROTECTED);
        search.dfs(0, merged)?;
        Ok(search.best.map(|(key, plan)| {
            let key = PlanKey {
                request_rank,
                ..key
            };
            (key, plan)
        }))
    }
}

/// Ordering of plans: request's format order, participants' alternative order, their
/// format/modifier order, fewer bytes, then the codes for determinism.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct PlanKey {
    request_rank: u32,
    alt_sum: u32,
    rank_sum: u32,
    size: u64,
    fourcc: u32,
    modifier: u64,
}

struct Search<'s, 'a> {
    problem: &'s Problem<'a>,
    cand: &'s Candidate,
    relax: &'s [u32],
    choices: &'s [(usize, Vec<(&'s Alt<'a>, u16)>)],
    min_rest: &'s [(u32, u32)],
    picked: Vec<u32>,
    best: Option<(PlanKey, Plan)>,
    prune_layout: bool,
    budget: &'s mut u64,
}

impl Search<'_, '_> {
    fn dfs(&mut self, depth: usize, merged: Merged) -> Result<(), SolveError> {
        let Some((k, list)) = self.choices.get(depth) else {
            self.leaf(&merged);
            return Ok(());
        };
        let mask = self.relax.get(*k).copied().unwrap_or(0);
        for &(alt, rank) in list {
            if *self.budget == 0 {
                return Err(SolveError::BudgetExceeded(0));
            }
            *self.budget -= 1;
            let (rest_a, rest_r) = self.min_rest.get(depth + 1).copied().unwrap_or((0, 0));
            let bound = (
                merged.alt_sum + alt.index + rest_a,
                merged.rank_sum + u32::from(rank) + rest_r,
            );
            if let Some((best, _)) = &self.best {
                if bound > (best.alt_sum, best.rank_sum) {
                    continue;
                }
            }
            let mut next = merged.clone();
            if !next.add(alt, rank, mask, self.problem, self.cand) {
                continue;
            }
            if self.prune_layout && depth + 1 < self.choices.len() && self.layout(&next).is_none() {
                continue;
            }
            if let Some(slot) = self.picked.get_mut(*k) {
                *slot = alt.index;
            }
            self.dfs(depth + 1, next)?;
        }
        Ok(())
    }

    fn layout(&self, merged: &Merged) -> Option<super::layout::Layout> {
        let r = self.problem.request;
        if u64::from(r.width) > merged.max_width || u64::from(r.height) > merged.max_height {
            return None;
        }
        compute_layout_with(self.cand.info, &self.cand.modifier_info, r.width, r.height, &merged.rules).ok()
    }

    fn leaf(&mut self, merged: &Merged) {
        let Some(layout) = self.layout(merged) else {
            self.prune_layout = true;
            return;
        };
        let request = self.problem.request;
        let count = u64::from(request.count.max(1));
        let Some(total) = layout.size.checked_mul(count) else {
            return;
        };
        if total > merged.iova_capacity {
            self.prune_layout = true;
            return;
        }
        if merged.phys_bits < 64 && layout.size > 1u64 << merged.phys_bits {
            return;
        }
        let Some((heap, cache_mode)) = merged.pick_heap(self.problem.heaps, layout.size) else {
            self.prune_layout = true;
            return;
        };
        let key = PlanKey {
            request_rank: 0,
            alt_sum: merged.alt_sum,
            rank_sum: merged.rank_sum,
            size: layout.size,
            fourcc: self.cand.fourcc.0,
            modifier: self.cand.modifier.0,
        };
        if self.best.as_ref().is_some_and(|(b, _)| *b <= key) {
            return;
        }
        let mut alternatives = vec![0u32; request.participants.len()];
        for (k, p) in self.problem.participants.iter().enumerate() {
            if let (Some(slot), Some(&a)) = (alternatives.get_mut(p.index), self.picked.get(k)) {
                *slot = a;
            }
        }
        let plan = Plan {
            fourcc: self.cand.fourcc,
            modifier: self.cand.modifier,
            width: request.width,
            height: request.height,
            planes: layout.planes,
            size: layout.size,
            alignment: layout.alignment,
            heap: heap.name.clone(),
            cache_mode,
            contiguous: merged.contiguous || heap.contiguous,
            address_bits: merged.min_bits,
            coherent: merged.coherent,
            usage: self.problem.usage,
            alternatives,
        };
        self.best = Some((key, plan));
    }
}

impl Merged {
    fn start(heaps: usize) -> Self {
        let heap_mask = if heaps >= 32 { u32::MAX } else { (1u32 << heaps) - 1 };
        Merged {
            rules: LayoutRules::default(),
            max_width: u64::MAX,
            max_height: u64::MAX,
            heap_mask,
            heap_rank: [0; crate::limits::MAX_SOLVER_HEAPS],
            contiguous: false,
            coherent: false,
            protected: false,
            dmabuf: false,
            cache_modes: 0b111,
            phys_bits: 64,
            min_bits: 64,
            iova_capacity: u64::MAX,
            alt_sum: 0,
            rank_sum: 0,
        }
    }

    /// Merges one alternative; false when the result is already infeasible.
    fn add(&mut self, alt: &Alt<'_>, rank: u16, mask: u32, problem: &Problem<'_>, cand: &Candidate) -> bool {
        use ConstraintKind as K;
        let on = |k: K| !is_relaxed(mask, k);
        let l = &alt.set.layout;
        let m = &alt.set.memory;
        self.alt_sum += alt.index;
        self.rank_sum += u32::from(rank);
        let r = &mut self.rules;
        let mut ok = true;
        let mut merge = |slot: &mut u64, v: u64| match lcm(*slot, v) {
            Some(x) => *slot = x,
            None => ok = false,
        };
        if on(K::StrideAlignment) {
            merge(&mut r.stride_alignment, l.stride_alignment.into());
        }
        if on(K::OffsetAlignment) {
            merge(&mut r.offset_alignment, l.offset_alignment.into());
        }
        if on(K::SizeAlignment) {
            merge(&mut r.size_alignment, l.size_alignment.into());
        }
        if on(K::HeightAlignment) {
            merge(&mut r.height_alignment, l.height_alignment.into());
        }
        if on(K::WidthAlignment) {
            merge(&mut r.width_alignment, l.width_alignment.into());
        }
        if on(K::PlaneRowAlignment) {
            for (slot, &a) in r.plane_row_alignment.iter_mut().zip(&l.plane_row_alignment) {
                merge(slot, a.into());
            }
        }
        if on(K::PlaneBaseAlignment) {
            merge(&mut r.plane_base_alignment, l.plane_base_alignment);
        }
        if !ok {
            return false;
        }
        let limit = |v: u64| if v == 0 { u64::MAX } else { v };
        if on(K::ExactStride) && l.exact_stride {
            // The stride this participant derives from its own view of the width.
            let own = if on(K::WidthAlignment) { u64::from(l.width_alignment).max(1) } else { 1 };
            let width = u64::from(problem.request.width);
            if r.exact_stride && align_up(width, own) != align_up(width, r.exact_width_alignment) {
                return false;
            }
            r.exact_stride = true;
            r.exact_width_alignment = own;
        }
        if on(K::PlanesBackToBack) {
            r.planes_back_to_back |= l.planes_back_to_back;
        }
        if on(K::MaxStride) {
            r.max_stride = r.max_stride.min(limit(l.max_stride.into()));
        }
        if on(K::MaxSize) {
            r.max_size = r.max_size.min(limit(l.max_size));
        }
        if on(K::MaxPlanes) {
            r.max_planes = r.max_planes.min(limit(l.max_planes.into()));
            if cand.info.planes.len() as u64 > r.max_planes {
                return false;
            }
        }
        if on(K::MaxWidth) {
            self.max_width = self.max_width.min(limit(l.max_width.into()));
            if u64::from(problem.request.width) > self.max_width {
                return false;
            }
        }
        if on(K::MaxHeight) {
            self.max_height = self.max_height.min(limit(l.max_height.into()));
            if u64::from(problem.request.height) > self.max_height {
                return false;
            }
        }
        if on(K::Heaps) {
            self.heap_mask &= alt.heap_mask;
            for &(h, rank) in &alt.heap_rank {
                if let Some(slot) = self.heap_rank.get_mut(h) {
                    *slot += u32::from(rank);
                }
            }
        }
        if on(K::Contiguous) {
            self.contiguous |= m.contiguous;
        }
        if on(K::Coherent) {
            self.coherent |= m.coherent;
        }
        if on(K::Protected) {
            self.protected |= m.protected || problem.participant_protected(alt);
        }
        if on(K::Dmabuf) {
            self.dmabuf |= m.dmabuf;
        }
        if on(K::CacheModes) && !m.cache_modes.is_empty() {
            self.cache_modes &= m.cache_modes.iter().fold(0, |acc, &c| acc | cache_bit(c));
        }
        if on(K::AddressBits) || on(K::IovaRanges) {
            let bits = if on(K::AddressBits) { m.effective_address_bits() } else { 64 };
            self.min_bits = self.min_bits.min(bits);
            if m.behind_iommu {
                let ranges = if on(K::IovaRanges) { &m.iova_ranges[..] } else { &[] };
                self.iova_capacity = self.iova_capacity.min(iova_capacity(bits, ranges));
            } else {
                self.phys_bits = self.phys_bits.min(bits);
            }
        }
        self.heap_mask != 0 && self.cache_modes != 0
    }

    /// The best heap that meets the merged memory rules, with the CPU cache mode it gives.
    fn pick_heap<'h>(&self, heaps: &'h [HeapInfo], size: u64) -> Option<(&'h HeapInfo, CacheMode)> {
        let mut best: Option<(u32, usize)> = None;
        for (i, h) in heaps.iter().enumerate() {
            if i >= 32 || self.heap_mask & (1 << i) == 0 {
                continue;
            }
            let fits = (!self.contiguous || h.contiguous)
                && (!self.coherent || h.coherent)
                && (!self.protected || h.protected)
                && (!self.dmabuf || h.dmabuf)
                && self.cache_modes & cache_bit(h.cache_mode) != 0
                && (h.max_size == 0 || size <= h.max_size)
                && h.effective_address_bits() <= self.phys_bits;
            if !fits {
                continue;
            }
            let rank = self.heap_rank.get(i).copied().unwrap_or(0);
            if best.is_none_or(|(r, _)| rank < r) {
                best = Some((rank, i));
            }
        }
        best.and_then(|(_, i)| heaps.get(i)).map(|h| (h, h.cache_mode))
    }
}

/// Largest buffer (in bytes) the IOVA space of a device can hold: the biggest usable range
/// below `2^bits`.
pub(crate) fn iova_capacity(bits: u8, ranges: &[crate::constraint::AddressRange]) -> u64 {
    let top = if bits >= 64 { u64::MAX } else { (1u64 << bits) - 1 };
    if ranges.is_empty() {
        return top.saturating_add(1).max(top);
    }
    ranges
        .iter()
        .filter(|r| !r.is_empty() && r.start <= top)
        .map(|r| {
            let start = align_up(r.start, 4096).unwrap_or(u64::MAX);
            let end = r.end.min(top);
            if start > end { 0 } else { end - start + 1 }
        })
        .max()
        .unwrap_or(0)
}

/// Heap preferences of a set: allowed mask and rank of each allowed heap.
fn heap_prefs(set: &ConstraintSet, heaps: &[HeapInfo]) -> (u32, Vec<(usize, u16)>) {
    if set.memory.heaps.is_empty() {
        return (u32::MAX, Vec::new());
    }
    let mut mask = 0u32;
    let mut ranks = Vec::new();
    for (rank, name) in set.memory.heaps.iter().enumerate() {
        if let Some(i) = heaps.iter().position(|h| &h.name == name) {
            if i < 32 && mask & (1 << i) == 0 {
                mask |= 1 << i;
                ranks.push((i, rank as u16));
            }
        }
    }
    (mask, ranks)
}

/// Rank of `(fourcc, modifier)` in `set`'s list (format order, then modifier order), or
/// [`NO_RANK`] when the set does not accept it. An empty list accepts any format, linear.
fn accept_rank(set: &ConstraintSet, fourcc: Fourcc, modifier: Modifier) -> u16 {
    if set.formats.is_empty() {
        return if modifier == Modifier::LINEAR { 0 } else { NO_RANK };
    }
    let mut rank = 0u16;
    for fm in &set.formats {
        let mods = fm.effective_modifiers();
        if fm.fourcc == fourcc {
            if let Some(pos) = mods.iter().position(|&m| m == modifier) {
                return rank.saturating_add(pos as u16);
            }
        }
        rank = rank.saturating_add(mods.len() as u16);
    }
    NO_RANK
}

/// Number of planes a format can have at most; used by the checker.
#[allow(dead_code)]
pub(crate) const PLANES: usize = MAX_PLANES;
