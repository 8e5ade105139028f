//! An independent checker: does a plan satisfy every participant of a request?
//!
//! Written separately from the solver (it shares no layout or merge code with it), so tests
//! can use it to confirm the solver's plans, and the broker can use it to validate plans that
//! come from elsewhere (a cache, a peer).

use thiserror::Error;

use crate::constraint::{ConstraintSet, Usage};
use crate::format::{FormatInfo, ModifierInfo};
use crate::heap::HeapInfo;
use crate::plan::Plan;
use crate::request::Request;

/// The first rule a plan breaks.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum Violation {
    /// The plan's shape does not fit the request.
    #[error("plan does not match the request: {0}")]
    Shape(String),
    /// A participant's chosen alternative is not satisfied.
    #[error("participant {participant} (alternative {alternative}): {rule}")]
    Participant {
        /// Index in the request.
        participant: usize,
        /// Alternative index.
        alternative: u32,
        /// What is broken.
        rule: String,
    },
}

fn up(v: u64, a: u64) -> u64 {
    if a <= 1 {
        v
    } else {
        v.div_ceil(a).saturating_mul(a)
    }
}

fn multiple(v: u64, a: u64) -> bool {
    a <= 1 || v % a == 0
}

/// Checks `plan` against `request` and the broker's `heaps`.
pub fn verify_plan(request: &Request, heaps: &[HeapInfo], plan: &Plan) -> Result<(), Violation> {
    let shape = |s: String| Err(Violation::Shape(s));
    if plan.width != request.width || plan.height != request.height {
        return shape("dimensions differ".into());
    }
    if !request.formats.is_empty() && !request.formats.contains(&plan.fourcc) {
        return shape(format!("{} was not asked for", plan.fourcc));
    }
    let Ok(info) = FormatInfo::lookup(plan.fourcc) else {
        return shape(format!("unknown format {}", plan.fourcc));
    };
    let Ok(modifier) = ModifierInfo::lookup(plan.modifier) else {
        return shape(format!("unknown modifier {}", plan.modifier));
    };
    if plan.planes.len() != info.planes.len() {
        return shape("plane count differs from the format's".into());
    }
    let Some(heap) = heaps.iter().find(|h| h.name == plan.heap) else {
        return shape(format!("heap {} does not exist", plan.heap));
    };
    if plan.cache_mode != heap.cache_mode {
        return shape("cache mode differs from the heap's".into());
    }
    if heap.max_size != 0 && plan.size > heap.max_size {
        return shape("size exceeds the heap's maximum".into());
    }
    if plan.alternatives.len() != request.participants.len() {
        return shape("one alternative per participant expected".into());
    }
    // Geometry that any participant needs: planes in bounds, not overlapping, big enough.
    let mut prev_end = 0u64;
    for (i, (pl, pi)) in plan.planes.iter().zip(info.planes).enumerate() {
        let (tw, th) = modifier.tile_bytes(pi);
        let min_row = pi
            .width(plan.width)
            .div_ceil(pi.block_width)
            .saturating_mul(pi.bytes_per_block);
        if u64::from(pl.stride) < u64::from(min_row) || !multiple(pl.stride.into(), tw) {
            return shape(format!(
                "plane {i} stride {} too small or not whole tiles",
                pl.stride
            ));
        }
        let min_size = u64::from(pl.stride).saturating_mul(up(pi.height(plan.height).into(), th));
        if pl.size < min_size {
            return shape(format!("plane {i} smaller than its rows"));
        }
        if pl.offset < prev_end {
            return shape(format!("plane {i} overlaps the previous plane"));
        }
        prev_end = pl.offset.saturating_add(pl.size);
    }
    if prev_end > plan.size {
        return shape("planes extend past the buffer".into());
    }
    let mut usage = request.usage;
    for (i, (p, &alt)) in request
        .participants
        .iter()
        .zip(&plan.alternatives)
        .enumerate()
    {
        usage |= p.usage;
        let Some(set) = p.alternatives.get(alt as usize) else {
            return shape(format!("participant {i} has no alternative {alt}"));
        };
        let fail = |rule: String| {
            Err(Violation::Participant {
                participant: i,
                alternative: alt,
                rule,
            })
        };
        if !p.alternative_applies(set) {
            return fail(format!("alternative does not cover usage {}", p.usage));
        }
        if set.extensions.iter().any(|e| e.required) {
            return fail("alternative requires an extension".into());
        }
        if let Err(rule) = check_set(set, plan, info, &modifier, heap, request, p.usage) {
            return fail(rule);
        }
    }
    if usage != plan.usage {
        return shape("merged usage differs".into());
    }
    if usage.contains(Usage::PROTECTED) && !heap.protected {
        return shape("protected usage on an unprotected heap".into());
    }
    Ok(())
}

fn check_set(
    set: &ConstraintSet,
    plan: &Plan,
    info: &FormatInfo,
    modifier: &ModifierInfo,
    heap: &HeapInfo,
    request: &Request,
    usage: Usage,
) -> Result<(), String> {
    let accepted = if set.formats.is_empty() {
        modifier.is_linear()
    } else {
        set.formats
            .iter()
            .any(|f| f.fourcc == plan.fourcc && f.effective_modifiers().contains(&plan.modifier))
    };
    if !accepted {
        return Err(format!("{}:{} not accepted", plan.fourcc, plan.modifier));
    }
    let l = &set.layout;
    let w = up(plan.width.into(), l.width_alignment.into());
    let h = up(plan.height.into(), l.height_alignment.into());
    if l.max_width != 0 && plan.width > l.max_width {
        return Err("width above max_width".into());
    }
    if l.max_height != 0 && plan.height > l.max_height {
        return Err("height above max_height".into());
    }
    if l.max_planes != 0 && plan.planes.len() as u64 > u64::from(l.max_planes) {
        return Err("too many planes".into());
    }
    if l.max_size != 0 && plan.size > l.max_size {
        return Err("size above max_size".into());
    }
    if !multiple(plan.size, l.size_alignment.into()) {
        return Err("size not aligned".into());
    }
    if !multiple(plan.alignment, l.plane_base_alignment) {
        return Err("base alignment too small".into());
    }
    let mut prev_end = 0u64;
    for (i, (pl, pi)) in plan.planes.iter().zip(info.planes).enumerate() {
        let (tw, th) = modifier.tile_bytes(pi);
        let row = up(
            u64::from(pi.width(w as u32).div_ceil(pi.block_width)) * u64::from(pi.bytes_per_block),
            tw,
        );
        let stride = u64::from(pl.stride);
        if stride < row {
            return Err(format!("plane {i} stride below the aligned width"));
        }
        if l.exact_stride && stride != row {
            return Err(format!("plane {i} stride {stride} is not exactly {row}"));
        }
        if !multiple(stride, l.stride_alignment.into()) {
            return Err(format!("plane {i} stride not aligned"));
        }
        if l.max_stride != 0 && stride > u64::from(l.max_stride) {
            return Err(format!("plane {i} stride above max_stride"));
        }
        let row_align = l.plane_row_alignment.get(i).copied().unwrap_or(1);
        let rows = up(up(u64::from(pi.height(h as u32)), u64::from(row_align)), th);
        if pl.size < stride.saturating_mul(rows) {
            return Err(format!("plane {i} has fewer rows than the aligned height"));
        }
        if !multiple(pl.offset, l.offset_alignment.into())
            || !multiple(pl.offset, l.plane_base_alignment)
        {
            return Err(format!("plane {i} offset not aligned"));
        }
        if l.planes_back_to_back && i > 0 && pl.offset != prev_end {
            return Err(format!(
                "plane {i} does not start where plane {} ends",
                i - 1
            ));
        }
        prev_end = pl.offset.saturating_add(pl.size);
    }
    let m = &set.memory;
    if !m.heaps.is_empty() && !m.heaps.contains(&heap.name) {
        return Err(format!("heap {} not allowed", heap.name));
    }
    if m.contiguous && !heap.contiguous {
        return Err("needs contiguous memory".into());
    }
    if m.coherent && !heap.coherent {
        return Err("needs coherent memory".into());
    }
    if (m.protected || usage.contains(Usage::PROTECTED)) && !heap.protected {
        return Err("needs protected memory".into());
    }
    if m.dmabuf && !heap.dmabuf {
        return Err("needs a dmabuf".into());
    }
    if !m.cache_modes.is_empty() && !m.cache_modes.contains(&plan.cache_mode) {
        return Err("cache mode not accepted".into());
    }
    let bits = m.effective_address_bits();
    if plan.address_bits > bits {
        return Err("plan address width wider than the device's".into());
    }
    let count = u64::from(request.count.max(1));
    if m.behind_iommu {
        let top: u128 = 1u128 << bits;
        let need = u128::from(plan.size) * u128::from(count);
        let fits = if m.iova_ranges.is_empty() {
            need <= top
        } else {
            m.iova_ranges.iter().any(|r| {
                let start = u128::from(r.start).div_ceil(4096) * 4096;
                let end = u128::from(r.end).min(top - 1);
                r.start <= r.end && start <= end && end - start + 1 >= need
            })
        };
        if !fits {
            return Err("buffers do not fit the device's IOVA window".into());
        }
    } else if bits < 64 {
        if heap.effective_address_bits() > bits {
            return Err(format!(
                "heap {} can hand out addresses above {bits} bits",
                heap.name
            ));
        }
        if u128::from(plan.size) > 1u128 << bits {
            return Err("buffer larger than the address space".into());
        }
    }
    Ok(())
}
