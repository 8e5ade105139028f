//! The search: candidate (format, modifier) pairs × one alternative per participant.
//!
//! Adding a constraint never makes an infeasible choice feasible (alignments only grow, maxima
//! only shrink, flags only turn on, sets only shrink), so a partial choice that is already
//! infeasible is pruned with all its extensions. Participants are searched in a canonical
//! order (sorted by value), which makes the result independent of the order in the request.

use std::collections::BTreeSet;
use std::rc::Rc;

use crate::constraint::{CacheMode, ConstraintSet, Usage};
use crate::format::{FormatInfo, Fourcc, Modifier, ModifierInfo};
use crate::heap::HeapInfo;
use crate::limits::{MAX_PARTICIPANTS, MAX_PLANES};
use crate::plan::Plan;
use crate::request::Request;

use super::layout::{FixedLayout, LayoutRules, align_up, compute_layout_fixed, lcm};
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
    /// Accepted `(fourcc, modifier)` keys with their rank, sorted by key; `None` when the set
    /// lists no formats (any format, linear).
    pairs: Option<Rc<Vec<(u128, u16)>>>,
}

/// A sortable key of a (format, modifier) pair.
fn pair_key(fourcc: Fourcc, modifier: Modifier) -> u128 {
    (u128::from(fourcc.0) << 64) | u128::from(modifier.0)
}

fn sorted_pairs(set: &ConstraintSet) -> Option<Rc<Vec<(u128, u16)>>> {
    if set.formats.is_empty() {
        return None;
    }
    // The rank of a pair is its position in the flattened list. Sorting the formats and then
    // each format's few modifiers is much cheaper than sorting all pairs at once.
    let mut formats = Vec::with_capacity(set.formats.len());
    let mut base = 0usize;
    for fm in &set.formats {
        let mods = fm.effective_modifiers();
        formats.push((fm.fourcc, base, mods));
        base += mods.len();
    }
    // `(fourcc, base)` is unique, so the unstable sort keeps list order within a format.
    formats.sort_unstable_by_key(|&(f, b, _)| (f, b));
    let mut pairs = Vec::with_capacity(base);
    let mut mods: Vec<(Modifier, u16)> = Vec::new();
    let mut rest = &formats[..];
    while let Some(&(fourcc, _, _)) = rest.first() {
        let same = rest.iter().take_while(|e| e.0 == fourcc).count();
        let (group, tail) = rest.split_at(same);
        rest = tail;
        mods.clear();
        for &(_, b, ms) in group {
            for (j, &m) in ms.iter().enumerate() {
                mods.push((m, u16::try_from(b + j).unwrap_or(u16::MAX)));
            }
        }
        // Keep the best rank of a pair listed twice.
        mods.sort_unstable();
        mods.dedup_by_key(|&mut (m, _)| m);
        pairs.extend(mods.iter().map(|&(m, r)| (pair_key(fourcc, m), r)));
    }
    Some(Rc::new(pairs))
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
        order.sort_by(|&a, &b| {
            request
                .participants
                .get(a)
                .cmp(&request.participants.get(b))
        });
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
                // Alternatives usually differ in layout or memory rules but list the same
                // formats: reuse the sorted pairs of an earlier one instead of sorting again.
                let pairs = match alts
                    .iter()
                    .find(|a: &&Alt<'_>| a.set.formats == set.formats)
                {
                    Some(same) => same.pairs.clone(),
                    None => sorted_pairs(set),
                };
                alts.push(Alt {
                    index: ai as u32,
                    set,
                    covers_usage: p.alternative_applies(set),
                    protected_usage: p.usage.contains(Usage::PROTECTED),
                    heap_mask,
                    heap_rank,
                    pairs,
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

    /// The merge of no alternative yet.
    fn start_merged(&self) -> Merged {
        let mut merged = Merged::start(self.heaps.len());
        merged.protected = self.request.usage.contains(Usage::PROTECTED);
        merged
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
                        notes.push(format!(
                            "{} lists unknown format {}; skipped",
                            p.label, fm.fourcc
                        ));
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
            for (ai, alt) in p.alts.iter().enumerate() {
                if alt.set.formats.is_empty() {
                    any = true;
                }
                let earlier = p.alts.get(..ai).unwrap_or(&[]);
                if earlier.iter().any(|a| a.set.formats == alt.set.formats) {
                    // Same pairs as an earlier alternative.
                    continue;
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
                pairs.extend(
                    FormatInfo::all()
                        .iter()
                        .map(|i| (i.fourcc, Modifier::LINEAR)),
                );
            }
            pairs.extend(req_formats.iter().map(|&f| (f, Modifier::LINEAR)));
        }
        pairs.sort_unstable();
        pairs.dedup();
        // Sorted by format, so one format table lookup serves all of a format's modifiers.
        let mut last_info: Option<(Fourcc, Option<&'static FormatInfo>)> = None;
        let mut out = Vec::with_capacity(pairs.len());
        for (fourcc, modifier) in pairs {
            if !format_allowed(fourcc) {
                continue;
            }
            let info = match last_info {
                Some((f, info)) if f == fourcc => info,
                _ => {
                    let info = FormatInfo::lookup(fourcc).ok();
                    last_info = Some((fourcc, info));
                    info
                }
            };
            let Some(info) = info else {
                continue;
            };
            let Ok(modifier_info) = ModifierInfo::lookup(modifier) else {
                continue;
            };
            if modifier_info.supports(fourcc) {
                out.push(Candidate {
                    fourcc,
                    modifier,
                    info,
                    modifier_info,
                });
            }
        }
        out
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
        let cands = self.candidates(relax, relax_request_formats);
        let ranks = RankTable::new(self, &cands, relax);
        let mut scratch = Scratch::default();
        let mut found: Vec<Found> = Vec::with_capacity(cands.len());
        for (ci, cand) in cands.iter().enumerate() {
            if let Some(f) =
                self.best_for_candidate(ci, cand, &ranks, relax, subset, &mut scratch, budget)?
            {
                found.push(f);
            }
        }
        if max_plans == 0 {
            return Ok(Vec::new());
        }
        if max_plans == 1 || found.len() <= 1 {
            // The common single-plan query: no ranking buffer needed.
            return Ok(found
                .iter()
                .min_by_key(|f| f.key)
                .and_then(|f| self.materialize(f, &cands))
                .into_iter()
                .collect());
        }
        // Rank the small keys rather than moving the whole results around. Keys are unique
        // (each names its own candidate), so an unstable sort is deterministic.
        let mut order: Vec<(PlanKey, usize)> =
            found.iter().enumerate().map(|(i, f)| (f.key, i)).collect();
        if max_plans < order.len() {
            order.select_nth_unstable(max_plans);
            order.truncate(max_plans);
        }
        order.sort_unstable();
        Ok(order
            .into_iter()
            .filter_map(|(_, i)| self.materialize(found.get(i)?, &cands))
            .collect())
    }

    /// Turns a search result into a plan.
    fn materialize(&self, f: &Found, cands: &[Candidate]) -> Option<Plan> {
        let cand = cands.get(f.candidate)?;
        let heap = self.heaps.get(f.heap)?;
        let mut alternatives = vec![0u32; self.request.participants.len()];
        for (k, p) in self.participants.iter().enumerate() {
            if let (Some(slot), Some(&a)) = (alternatives.get_mut(p.index), f.picked.get(k)) {
                *slot = a;
            }
        }
        Some(Plan {
            fourcc: cand.fourcc,
            modifier: cand.modifier,
            width: self.request.width,
            height: self.request.height,
            planes: f.layout.planes().to_vec(),
            size: f.layout.size,
            alignment: f.layout.alignment,
            heap: heap.name.clone(),
            cache_mode: heap.cache_mode,
            contiguous: f.contiguous || heap.contiguous,
            address_bits: f.address_bits,
            coherent: f.coherent,
            usage: self.usage,
            alternatives,
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn best_for_candidate(
        &self,
        ci: usize,
        cand: &Candidate,
        ranks: &RankTable,
        relax: &[u32],
        subset: Option<u32>,
        scratch: &mut Scratch,
        budget: &mut u64,
    ) -> Result<Option<Found>, SolveError> {
        // For each participant, its alternatives that accept the candidate, with the rank of
        // the candidate in that alternative's list.
        scratch.choices.clear();
        scratch.spans.clear();
        for (k, p) in self.participants.iter().enumerate() {
            if subset.is_some_and(|s| s & (1 << k) == 0) {
                continue;
            }
            let mask = relax.get(k).copied().unwrap_or(0);
            let start = scratch.choices.len();
            for (ai, alt) in p.alts.iter().enumerate() {
                if !alt.covers_usage && !is_relaxed(mask, ConstraintKind::Usage) {
                    continue;
                }
                let rank = ranks.get(k, ai, ci);
                if rank != NO_RANK {
                    scratch.choices.push((ai, rank));
                }
            }
            if scratch.choices.len() == start {
                return Ok(None);
            }
            scratch.spans.push((k, start, scratch.choices.len()));
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
        scratch.picked = [0; MAX_PARTICIPANTS];
        // Fast path: every participant's first acceptable alternative. Its key is a lower
        // bound for every other choice, so if it works it is the best. The merged rules do
        // not depend on the candidate, so consecutive candidates with the same first choices
        // reuse them.
        scratch.first.clear();
        scratch.first.extend(
            scratch
                .spans
                .iter()
                .map(|&(k, start, _)| (k, scratch.choices.get(start).map_or(0, |c| c.0))),
        );
        if scratch.cached_first != scratch.first || scratch.cached_merged.is_none() {
            let mut m = self.start_merged();
            let mut ok = true;
            for &(k, ai) in &scratch.first {
                let mask = relax.get(k).copied().unwrap_or(0);
                match self.participants.get(k).and_then(|p| p.alts.get(ai)) {
                    Some(alt) if ok => ok = m.add(alt, 0, mask, self),
                    _ => ok = false,
                }
            }
            scratch.cached_first.clone_from(&scratch.first);
            scratch.cached_merged = Some(ok.then_some(m));
        }
        if let Some(Some(first)) = &scratch.cached_merged {
            // The first choices' sums (alternatives are in list order, so these are the
            // smallest); the cached merge is shared by candidates with different ranks, so
            // they are passed alongside, not stored in it.
            let mut sums = (0u32, 0u32);
            for &(k, start, _) in &scratch.spans {
                let (ai, rank) = scratch.choices.get(start).copied().unwrap_or((0, 0));
                let index = self
                    .participants
                    .get(k)
                    .and_then(|p| p.alts.get(ai))
                    .map_or(0, |a| a.index);
                sums = (sums.0 + index, sums.1 + u32::from(rank));
                if let Some(slot) = scratch.picked.get_mut(k) {
                    *slot = index;
                }
            }
            let mut search = Search {
                problem: self,
                cand,
                candidate: ci,
                relax,
                choices: &scratch.choices,
                spans: &scratch.spans,
                min_rest: &scratch.min_rest,
                picked: &mut scratch.picked,
                best: None,
                prune_layout: false,
                budget,
            };
            search.leaf(first, sums);
            if let Some(mut f) = search.best {
                f.key.request_rank = request_rank;
                return Ok(Some(f));
            }
        }
        // Lower bounds of the remaining choices, for pruning.
        scratch.min_rest.clear();
        scratch.min_rest.resize(scratch.spans.len() + 1, (0, 0));
        for i in (0..scratch.spans.len()).rev() {
            let (k, start, end) = scratch.spans.get(i).copied().unwrap_or((0, 0, 0));
            let alts = self.participants.get(k).map(|p| &p.alts[..]).unwrap_or(&[]);
            let (a, r) = scratch
                .choices
                .get(start..end)
                .unwrap_or(&[])
                .iter()
                .map(|&(ai, rank)| (alts.get(ai).map_or(0, |a| a.index), u32::from(rank)))
                .min()
                .unwrap_or((0, 0));
            let (ra, rr) = scratch.min_rest.get(i + 1).copied().unwrap_or((0, 0));
            if let Some(slot) = scratch.min_rest.get_mut(i) {
                *slot = (a + ra, r + rr);
            }
        }
        let mut search = Search {
            problem: self,
            cand,
            candidate: ci,
            relax,
            choices: &scratch.choices,
            spans: &scratch.spans,
            min_rest: &scratch.min_rest,
            picked: &mut scratch.picked,
            best: None,
            prune_layout: false,
            budget,
        };
        search.dfs(0, self.start_merged())?;
        Ok(search.best.map(|mut f| {
            f.key.request_rank = request_rank;
            f
        }))
    }
}

/// The alternative picked for each participant (canonical order); a fixed array so that
/// recording the best choice of a candidate does not allocate.
type Picked = [u32; MAX_PARTICIPANTS];

/// Reusable buffers of the per-candidate search.
#[derive(Default)]
struct Scratch {
    /// `(alternative position, rank)` of every participant, back to back.
    choices: Vec<(usize, u16)>,
    /// `(participant, start, end)` into `choices`.
    spans: Vec<(usize, usize, usize)>,
    min_rest: Vec<(u32, u32)>,
    picked: Picked,
    /// `(participant, alternative position)` of the first choices of this candidate.
    first: Vec<(usize, usize)>,
    /// The first choices whose merge is cached.
    cached_first: Vec<(usize, usize)>,
    /// Their merged rules (`Some(None)` when infeasible).
    cached_merged: Option<Option<Merged>>,
}

/// Rank of every candidate in every alternative, built by merging sorted lists.
///
/// Stored candidate-major: the per-candidate search reads all alternatives of one candidate,
/// which are then contiguous.
struct RankTable {
    /// First row (alternative) of each participant.
    rows: Vec<usize>,
    /// Rows (alternatives of all participants) per candidate.
    total: usize,
    ranks: Vec<u16>,
}

impl RankTable {
    fn new(problem: &Problem<'_>, cands: &[Candidate], relax: &[u32]) -> Self {
        let n = cands.len();
        let mut rows = Vec::with_capacity(problem.participants.len());
        let mut total = 0usize;
        for p in &problem.participants {
            rows.push(total);
            total += p.alts.len();
        }
        let mut ranks = vec![NO_RANK; total.saturating_mul(n)];
        // The ranks of one alternative over all candidates; reused as is by the following
        // alternatives that share its sorted pairs (see `Problem::new`).
        let mut column = vec![NO_RANK; n];
        let mut column_pairs: Option<&Rc<Vec<(u128, u16)>>> = None;
        for (k, p) in problem.participants.iter().enumerate() {
            let relaxed = is_relaxed(relax.get(k).copied().unwrap_or(0), ConstraintKind::Formats);
            for (ai, alt) in p.alts.iter().enumerate() {
                let row = rows.get(k).copied().unwrap_or(0) + ai;
                let reuse = !relaxed
                    && matches!((column_pairs, &alt.pairs), (Some(x), Some(y)) if Rc::ptr_eq(x, y));
                if !reuse {
                    column_pairs = None;
                    column.fill(NO_RANK);
                    match &alt.pairs {
                        _ if relaxed => column.fill(0),
                        None => {
                            for (slot, c) in column.iter_mut().zip(cands) {
                                if c.modifier == Modifier::LINEAR {
                                    *slot = 0;
                                }
                            }
                        }
                        Some(pairs) => {
                            // Both lists are sorted by key: one merge pass.
                            let mut pi = pairs.iter().peekable();
                            for (slot, c) in column.iter_mut().zip(cands) {
                                let key = pair_key(c.fourcc, c.modifier);
                                while pi.next_if(|&&(k, _)| k < key).is_some() {}
                                if let Some(&&(k, r)) = pi.peek() {
                                    if k == key {
                                        *slot = r;
                                    }
                                }
                            }
                            column_pairs = Some(pairs);
                        }
                    }
                }
                let slots = ranks.iter_mut().skip(row).step_by(total.max(1));
                for (slot, &r) in slots.zip(&column) {
                    *slot = r;
                }
            }
        }
        RankTable { rows, total, ranks }
    }

    fn get(&self, participant: usize, alt: usize, candidate: usize) -> u16 {
        let row = self.rows.get(participant).copied().unwrap_or(0) + alt;
        self.ranks
            .get(candidate * self.total + row)
            .copied()
            .unwrap_or(NO_RANK)
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

/// The best choice found for one candidate.
struct Found {
    key: PlanKey,
    candidate: usize,
    layout: FixedLayout,
    heap: usize,
    /// Alternative index of each participant, in canonical order.
    picked: Picked,
    contiguous: bool,
    coherent: bool,
    address_bits: u8,
}

struct Search<'s, 'a> {
    problem: &'s Problem<'a>,
    cand: &'s Candidate,
    candidate: usize,
    relax: &'s [u32],
    choices: &'s [(usize, u16)],
    spans: &'s [(usize, usize, usize)],
    min_rest: &'s [(u32, u32)],
    picked: &'s mut Picked,
    best: Option<Found>,
    prune_layout: bool,
    budget: &'s mut u64,
}

impl Search<'_, '_> {
    fn dfs(&mut self, depth: usize, merged: Merged) -> Result<(), SolveError> {
        let Some(&(k, start, end)) = self.spans.get(depth) else {
            self.leaf(&merged, (merged.alt_sum, merged.rank_sum));
            return Ok(());
        };
        let mask = self.relax.get(k).copied().unwrap_or(0);
        let Some(p) = self.problem.participants.get(k) else {
            return Ok(());
        };
        let choices = self.choices.get(start..end).unwrap_or(&[]);
        for &(ai, rank) in choices {
            let Some(alt) = p.alts.get(ai) else {
                continue;
            };
            if *self.budget == 0 {
                return Err(SolveError::BudgetExceeded(0));
            }
            *self.budget -= 1;
            let (rest_a, rest_r) = self.min_rest.get(depth + 1).copied().unwrap_or((0, 0));
            let bound = (
                merged.alt_sum + alt.index + rest_a,
                merged.rank_sum + u32::from(rank) + rest_r,
            );
            if let Some(best) = &self.best {
                if bound > (best.key.alt_sum, best.key.rank_sum) {
                    continue;
                }
            }
            let mut next = merged.clone();
            if !next.add(alt, rank, mask, self.problem) {
                continue;
            }
            if self.prune_layout && depth + 1 < self.spans.len() && self.layout(&next).is_none() {
                continue;
            }
            if let Some(slot) = self.picked.get_mut(k) {
                *slot = alt.index;
            }
            self.dfs(depth + 1, next)?;
        }
        Ok(())
    }

    fn layout(&self, merged: &Merged) -> Option<FixedLayout> {
        let r = self.problem.request;
        if u64::from(r.width) > merged.max_width || u64::from(r.height) > merged.max_height {
            return None;
        }
        compute_layout_fixed(
            self.cand.info,
            &self.cand.modifier_info,
            r.width,
            r.height,
            &merged.rules,
        )
        .ok()
    }

    /// Finishes a complete choice: `merged` rules with `(alt_sum, rank_sum)` for its key.
    fn leaf(&mut self, merged: &Merged, (alt_sum, rank_sum): (u32, u32)) {
        let Some(layout) = self.layout(merged) else {
            self.prune_layout = true;
            return;
        };
        let count = u64::from(self.problem.request.count.max(1));
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
        let Some(heap) = merged.pick_heap(self.problem.heaps, layout.size) else {
            self.prune_layout = true;
            return;
        };
        let key = PlanKey {
            request_rank: 0,
            alt_sum,
            rank_sum,
            size: layout.size,
            fourcc: self.cand.fourcc.0,
            modifier: self.cand.modifier.0,
        };
        if self.best.as_ref().is_some_and(|b| b.key <= key) {
            return;
        }
        self.best = Some(Found {
            key,
            candidate: self.candidate,
            layout,
            heap,
            picked: *self.picked,
            contiguous: merged.contiguous,
            coherent: merged.coherent,
            address_bits: merged.min_bits,
        });
    }
}

impl Merged {
    fn start(heaps: usize) -> Self {
        let heap_mask = if heaps >= 32 {
            u32::MAX
        } else {
            (1u32 << heaps) - 1
        };
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
    fn add(&mut self, alt: &Alt<'_>, rank: u16, mask: u32, problem: &Problem<'_>) -> bool {
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
            let own = if on(K::WidthAlignment) {
                u64::from(l.width_alignment).max(1)
            } else {
                1
            };
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
            let bits = if on(K::AddressBits) {
                m.effective_address_bits()
            } else {
                64
            };
            self.min_bits = self.min_bits.min(bits);
            if m.behind_iommu {
                let ranges = if on(K::IovaRanges) {
                    &m.iova_ranges[..]
                } else {
                    &[]
                };
                self.iova_capacity = self.iova_capacity.min(iova_capacity(bits, ranges));
            } else {
                self.phys_bits = self.phys_bits.min(bits);
            }
        }
        self.heap_mask != 0 && self.cache_modes != 0
    }

    /// The best heap that meets the merged memory rules, with the CPU cache mode it gives.
    fn pick_heap(&self, heaps: &[HeapInfo], size: u64) -> Option<usize> {
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
        best.map(|(_, i)| i)
    }
}

/// Largest buffer (in bytes) the IOVA space of a device can hold: the biggest usable range
/// below `2^bits`.
pub(crate) fn iova_capacity(bits: u8, ranges: &[crate::constraint::AddressRange]) -> u64 {
    let top = if bits >= 64 {
        u64::MAX
    } else {
        (1u64 << bits) - 1
    };
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

/// Number of planes a format can have at most; used by the checker.
#[allow(dead_code)]
pub(crate) const PLANES: usize = MAX_PLANES;
