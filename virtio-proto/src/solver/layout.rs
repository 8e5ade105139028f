//! Lays an image out under merged layout rules: strides, plane offsets and sizes.

use thiserror::Error;

use crate::format::{FormatError, FormatInfo, Fourcc, Modifier, ModifierInfo};
use crate::limits::MAX_PLANES;
use crate::plan::PlaneLayout;

/// Merged layout rules: alignments already combined by least common multiple, maxima by
/// minimum (`u64::MAX` for none). Alignments of 0 or 1 mean none.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LayoutRules {
    /// Stride alignment in bytes.
    pub stride_alignment: u64,
    /// Plane offset alignment in bytes.
    pub offset_alignment: u64,
    /// Total size alignment in bytes.
    pub size_alignment: u64,
    /// Image height alignment in rows.
    pub height_alignment: u64,
    /// Image width alignment in pixels.
    pub width_alignment: u64,
    /// Row alignment of each plane.
    pub plane_row_alignment: [u64; MAX_PLANES],
    /// Stride must equal the row size of the image width rounded up to
    /// `exact_width_alignment` (the width alignment of the participant that derives its stride
    /// from the width).
    pub exact_stride: bool,
    /// Width alignment under which the exact stride is computed.
    pub exact_width_alignment: u64,
    /// Planes back to back.
    pub planes_back_to_back: bool,
    /// Plane base-address alignment.
    pub plane_base_alignment: u64,
    /// Largest stride.
    pub max_stride: u64,
    /// Largest total size.
    pub max_size: u64,
    /// Most planes.
    pub max_planes: u64,
}

impl Default for LayoutRules {
    fn default() -> Self {
        LayoutRules {
            stride_alignment: 1,
            offset_alignment: 1,
            size_alignment: 1,
            height_alignment: 1,
            width_alignment: 1,
            plane_row_alignment: [1; MAX_PLANES],
            exact_stride: false,
            exact_width_alignment: 1,
            planes_back_to_back: false,
            plane_base_alignment: 1,
            max_stride: u64::MAX,
            max_size: u64::MAX,
            max_planes: u64::MAX,
        }
    }
}

/// Why an image cannot be laid out under the rules.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum LayoutError {
    /// Unknown format or modifier, or a modifier not defined for the format.
    #[error("no layout for this format and modifier")]
    Format(#[from] FormatError),
    /// The modifier's layout is not defined for the format.
    #[error("modifier {modifier} is not defined for {fourcc}")]
    ModifierNotForFormat {
        /// The format.
        fourcc: Fourcc,
        /// The modifier.
        modifier: Modifier,
    },
    /// Arithmetic overflowed.
    #[error("sizes overflow")]
    Overflow,
    /// An exact stride cannot meet the stride alignment.
    #[error("exact stride {stride} of plane {plane} is not a multiple of {alignment}")]
    ExactStride {
        /// Plane index.
        plane: usize,
        /// The exact stride.
        stride: u64,
        /// The alignment it misses.
        alignment: u64,
    },
    /// A back-to-back plane offset misses the offset or base alignment.
    #[error("plane {plane} must start at {offset}, which is not a multiple of {alignment}")]
    BackToBack {
        /// Plane index.
        plane: usize,
        /// The forced offset.
        offset: u64,
        /// The alignment it misses.
        alignment: u64,
    },
    /// A stride exceeds the maximum.
    #[error("stride {stride} exceeds the maximum {max}")]
    StrideTooLarge {
        /// The stride.
        stride: u64,
        /// The maximum.
        max: u64,
    },
    /// The size exceeds the maximum.
    #[error("size {size} exceeds the maximum {max}")]
    SizeTooLarge {
        /// The size.
        size: u64,
        /// The maximum.
        max: u64,
    },
    /// Too many planes.
    #[error("{planes} planes exceed the maximum {max}")]
    TooManyPlanes {
        /// The format's planes.
        planes: u64,
        /// The maximum.
        max: u64,
    },
}

/// Rounds `v` up to a multiple of `a` (no-op for `a <= 1`), or `None` on overflow.
pub(crate) fn align_up(v: u64, a: u64) -> Option<u64> {
    if a <= 1 {
        return Some(v);
    }
    let r = v % a;
    if r == 0 {
        Some(v)
    } else {
        v.checked_add(a - r)
    }
}

fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

/// Least common multiple (0 and 1 are neutral), or `None` on overflow.
pub(crate) fn lcm(a: u64, b: u64) -> Option<u64> {
    let (a, b) = (a.max(1), b.max(1));
    // Alignments are nearly always powers of two: the larger one is the answer.
    if a.is_power_of_two() && b.is_power_of_two() {
        return Some(a.max(b));
    }
    (a / gcd(a, b)).checked_mul(b)
}

/// The laid-out image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    /// Planes.
    pub planes: Vec<PlaneLayout>,
    /// Total size.
    pub size: u64,
    /// Base alignment the allocation needs.
    pub alignment: u64,
}

/// Lays out a `width` x `height` image of `fourcc` with `modifier` under `rules`.
pub fn compute_layout(
    fourcc: Fourcc,
    modifier: Modifier,
    width: u32,
    height: u32,
    rules: &LayoutRules,
) -> Result<Layout, LayoutError> {
    let info = FormatInfo::lookup(fourcc)?;
    let modifier_info = ModifierInfo::lookup(modifier)?;
    compute_layout_with(info, &modifier_info, width, height, rules)
}

/// A [`Layout`] whose planes live in a fixed array, so that the search can compute and keep
/// layouts without allocating; turned into a [`Layout`] only for the plans it returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FixedLayout {
    /// Planes; only the first `plane_count` are meaningful.
    planes: [PlaneLayout; MAX_PLANES],
    /// Number of planes.
    plane_count: usize,
    /// Total size.
    pub size: u64,
    /// Base alignment the allocation needs.
    pub alignment: u64,
}

impl FixedLayout {
    /// The meaningful planes.
    pub(crate) fn planes(&self) -> &[PlaneLayout] {
        self.planes.get(..self.plane_count).unwrap_or(&self.planes)
    }

    /// The allocating form.
    pub(crate) fn to_layout(self) -> Layout {
        Layout {
            planes: self.planes().to_vec(),
            size: self.size,
            alignment: self.alignment,
        }
    }
}

/// [`compute_layout`] with the table entries already looked up.
pub(crate) fn compute_layout_with(
    info: &FormatInfo,
    modifier: &ModifierInfo,
    width: u32,
    height: u32,
    rules: &LayoutRules,
) -> Result<Layout, LayoutError> {
    compute_layout_fixed(info, modifier, width, height, rules).map(|l| l.to_layout())
}

/// [`compute_layout_with`] without allocating.
pub(crate) fn compute_layout_fixed(
    info: &FormatInfo,
    modifier: &ModifierInfo,
    width: u32,
    height: u32,
    rules: &LayoutRules,
) -> Result<FixedLayout, LayoutError> {
    if !modifier.supports(info.fourcc) {
        return Err(LayoutError::ModifierNotForFormat {
            fourcc: info.fourcc,
            modifier: modifier.modifier,
        });
    }
    let planes_n = info.planes.len() as u64;
    if planes_n > rules.max_planes {
        return Err(LayoutError::TooManyPlanes {
            planes: planes_n,
            max: rules.max_planes,
        });
    }
    let of = |v: Option<u64>| v.ok_or(LayoutError::Overflow);
    let w = of(align_up(u64::from(width), rules.width_alignment))?;
    let h = of(align_up(u64::from(height), rules.height_alignment))?;
    let w = u32::try_from(w).map_err(|_| LayoutError::Overflow)?;
    let exact_w = of(align_up(u64::from(width), rules.exact_width_alignment))?;
    let exact_w = u32::try_from(exact_w).map_err(|_| LayoutError::Overflow)?;
    let h = u32::try_from(h).map_err(|_| LayoutError::Overflow)?;
    let offset_step = of(lcm(rules.offset_alignment, rules.plane_base_alignment))?;
    let empty = PlaneLayout {
        offset: 0,
        stride: 0,
        size: 0,
    };
    let mut planes = [empty; MAX_PLANES];
    let mut plane_count = 0usize;
    let mut end = 0u64;
    for (i, plane) in info.planes.iter().enumerate() {
        let (tile_w, tile_h) = modifier.tile_bytes(plane);
        let row = of(plane.min_row_bytes(w))?;
        let row = of(align_up(row, tile_w))?;
        let stride = if rules.exact_stride {
            let exact = of(align_up(of(plane.min_row_bytes(exact_w))?, tile_w))?;
            if exact < row || exact % rules.stride_alignment.max(1) != 0 {
                return Err(LayoutError::ExactStride {
                    plane: i,
                    stride: exact,
                    alignment: rules.stride_alignment,
                });
            }
            exact
        } else {
            of(align_up(row, of(lcm(rules.stride_alignment, tile_w))?))?
        };
        if stride > rules.max_stride || stride > u64::from(u32::MAX) {
            return Err(LayoutError::StrideTooLarge {
                stride,
                max: rules.max_stride.min(u64::from(u32::MAX)),
            });
        }
        let row_align = rules.plane_row_alignment.get(i).copied().unwrap_or(1);
        let rows = of(align_up(
            u64::from(plane.height(h)),
            of(lcm(tile_h, row_align))?,
        ))?;
        let size = of(stride.checked_mul(rows))?;
        let offset = if i == 0 {
            0
        } else if rules.planes_back_to_back {
            if end % offset_step != 0 {
                return Err(LayoutError::BackToBack {
                    plane: i,
                    offset: end,
                    alignment: offset_step,
                });
            }
            end
        } else {
            of(align_up(end, offset_step))?
        };
        end = of(offset.checked_add(size))?;
        // The format table has at most MAX_PLANES planes; a longer one cannot be laid out.
        let slot = planes.get_mut(i).ok_or(LayoutError::TooManyPlanes {
            planes: planes_n,
            max: MAX_PLANES as u64,
        })?;
        *slot = PlaneLayout {
            offset,
            stride: stride as u32,
            size,
        };
        plane_count = i + 1;
    }
    let size = of(align_up(end, rules.size_alignment))?;
    if size > rules.max_size {
        return Err(LayoutError::SizeTooLarge {
            size,
            max: rules.max_size,
        });
    }
    Ok(FixedLayout {
        planes,
        plane_count,
        size,
        alignment: rules.plane_base_alignment.max(1),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nv12() -> Fourcc {
        "NV12".parse().unwrap()
    }

    #[test]
    fn nv12_1080p_linear_unaligned_is_tight() {
        let l = compute_layout(
            nv12(),
            Modifier::LINEAR,
            1920,
            1080,
            &LayoutRules::default(),
        )
        .unwrap();
        assert_eq!(
            l.planes[0],
            PlaneLayout {
                offset: 0,
                stride: 1920,
                size: 1920 * 1080
            }
        );
        assert_eq!(
            l.planes[1],
            PlaneLayout {
                offset: 1920 * 1080,
                stride: 1920,
                size: 1920 * 540
            }
        );
        assert_eq!(l.size, 1920 * 1080 * 3 / 2);
    }

    #[test]
    fn height_alignment_pads_both_planes() {
        let rules = LayoutRules {
            height_alignment: 16,
            stride_alignment: 256,
            ..LayoutRules::default()
        };
        let l = compute_layout(nv12(), Modifier::LINEAR, 1920, 1080, &rules).unwrap();
        assert_eq!(l.planes[0].size, 2048 * 1088);
        assert_eq!(l.planes[1].size, 2048 * 544);
    }

    #[test]
    fn x_tiled_rounds_stride_and_rows_to_tiles() {
        let xrgb: Fourcc = "XRGB8888".parse().unwrap();
        let l = compute_layout(
            xrgb,
            Modifier::I915_X_TILED,
            1366,
            768,
            &LayoutRules::default(),
        )
        .unwrap();
        assert_eq!(l.planes[0].stride, 5632); // 1366 * 4 = 5464 -> 11 tiles of 512
        assert_eq!(l.size, 5632 * 768);
    }

    #[test]
    fn exact_stride_conflicts_with_stride_alignment() {
        let rules = LayoutRules {
            exact_stride: true,
            stride_alignment: 64,
            ..LayoutRules::default()
        };
        let err = compute_layout(nv12(), Modifier::LINEAR, 1000, 100, &rules).unwrap_err();
        assert!(matches!(
            err,
            LayoutError::ExactStride {
                plane: 0,
                stride: 1000,
                alignment: 64
            }
        ));
    }

    #[test]
    fn back_to_back_planes_conflict_with_offset_alignment() {
        let rules = LayoutRules {
            planes_back_to_back: true,
            offset_alignment: 4096,
            ..LayoutRules::default()
        };
        assert!(compute_layout(nv12(), Modifier::LINEAR, 1920, 1080, &rules).is_err());
        assert!(compute_layout(nv12(), Modifier::LINEAR, 2048, 1024, &rules).is_ok());
    }

    #[test]
    fn huge_alignments_overflow_cleanly() {
        let rules = LayoutRules {
            stride_alignment: u64::MAX - 1,
            size_alignment: u64::MAX,
            ..LayoutRules::default()
        };
        assert!(compute_layout(nv12(), Modifier::LINEAR, 32768, 32768, &rules).is_err());
        assert_eq!(lcm(u64::MAX, u64::MAX - 1), None);
    }
}
