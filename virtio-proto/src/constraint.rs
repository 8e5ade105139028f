//! Constraint sets: what one participant needs of a shared buffer.
//!
//! Every field has a neutral value (the `Default`) that constrains nothing, so a participant
//! states only what it cares about. The merge rules live in [`crate::solver`].

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::format::{Fourcc, Modifier};

bitflags::bitflags! {
    /// What a participant does with the buffer.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
    pub struct Usage: u32 {
        /// The CPU reads it.
        const CPU_READ = 1 << 0;
        /// The CPU writes it.
        const CPU_WRITE = 1 << 1;
        /// The CPU touches it often (prefer cached memory).
        const CPU_OFTEN = 1 << 2;
        /// A GPU renders into it.
        const RENDER = 1 << 3;
        /// A GPU samples from it.
        const TEXTURE = 1 << 4;
        /// A display engine scans it out.
        const SCANOUT = 1 << 5;
        /// A video decoder writes it.
        const VIDEO_DECODE = 1 << 6;
        /// A video encoder reads it.
        const VIDEO_ENCODE = 1 << 7;
        /// A camera or ISP writes it.
        const CAMERA_CAPTURE = 1 << 8;
        /// A device reads it by DMA.
        const DMA_READ = 1 << 9;
        /// A device writes it by DMA.
        const DMA_WRITE = 1 << 10;
        /// Protected (secure) content.
        const PROTECTED = 1 << 11;
    }
}

const USAGE_NAMES: &[(&str, Usage)] = &[
    ("cpu-read", Usage::CPU_READ),
    ("cpu-write", Usage::CPU_WRITE),
    ("cpu-often", Usage::CPU_OFTEN),
    ("render", Usage::RENDER),
    ("texture", Usage::TEXTURE),
    ("scanout", Usage::SCANOUT),
    ("video-decode", Usage::VIDEO_DECODE),
    ("video-encode", Usage::VIDEO_ENCODE),
    ("camera-capture", Usage::CAMERA_CAPTURE),
    ("dma-read", Usage::DMA_READ),
    ("dma-write", Usage::DMA_WRITE),
    ("protected", Usage::PROTECTED),
];

impl Usage {
    /// Parses one usage name (`cpu-read`, `scanout`, ...).
    pub fn from_usage_name(name: &str) -> Option<Usage> {
        let n = name.trim().to_ascii_lowercase().replace('_', "-");
        USAGE_NAMES.iter().find(|(k, _)| *k == n).map(|(_, u)| *u)
    }

    /// Parses a comma-separated list of usage names.
    pub fn parse_list(list: &str) -> Result<Usage, String> {
        list.split(',')
            .filter(|s| !s.trim().is_empty())
            .try_fold(Usage::empty(), |acc, s| {
                Usage::from_usage_name(s)
                    .map(|u| acc | u)
                    .ok_or_else(|| format!("unknown usage {:?}", s.trim()))
            })
    }

    /// The names of the set flags, in table order.
    pub fn names(self) -> Vec<&'static str> {
        USAGE_NAMES
            .iter()
            .filter(|(_, u)| self.contains(*u))
            .map(|(n, _)| *n)
            .collect()
    }
}

impl fmt::Display for Usage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_empty() {
            return f.write_str("none");
        }
        f.write_str(&self.names().join(","))
    }
}

/// Serializes as a list of names in human-readable formats, as bits otherwise.
pub(crate) mod usage_serde {
    use super::*;

    pub fn serialize<S: Serializer>(u: &Usage, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            u.names().serialize(s)
        } else {
            s.serialize_u32(u.bits())
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Usage, D::Error> {
        if d.is_human_readable() {
            let names = Vec::<String>::deserialize(d)?;
            names.iter().try_fold(Usage::empty(), |acc, n| {
                Usage::from_usage_name(n)
                    .map(|u| acc | u)
                    .ok_or_else(|| serde::de::Error::custom(format!("unknown usage {n:?}")))
            })
        } else {
            let bits = u32::deserialize(d)?;
            Usage::from_bits(bits)
                .ok_or_else(|| serde::de::Error::custom(format!("unknown usage bits 0x{bits:x}")))
        }
    }
}

/// How the CPU maps the memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CacheMode {
    /// Normal cached mapping; needs explicit sync with non-coherent devices.
    Cached,
    /// Uncached mapping.
    Uncached,
    /// Write-combined mapping.
    WriteCombined,
}

impl CacheMode {
    /// All modes, in the broker's default preference order.
    pub const ALL: [CacheMode; 3] = [
        CacheMode::Cached,
        CacheMode::WriteCombined,
        CacheMode::Uncached,
    ];

    /// The name used in files and messages.
    pub fn name(self) -> &'static str {
        match self {
            CacheMode::Cached => "cached",
            CacheMode::Uncached => "uncached",
            CacheMode::WriteCombined => "write-combined",
        }
    }
}

impl fmt::Display for CacheMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One acceptable format with the modifiers this participant can use for it, best first.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FormatModifiers {
    /// The pixel format.
    pub fourcc: Fourcc,
    /// Acceptable modifiers, best first. Empty means linear only.
    #[serde(default)]
    pub modifiers: Vec<Modifier>,
}

impl FormatModifiers {
    /// The modifiers, with the empty list read as `[LINEAR]`.
    pub fn effective_modifiers(&self) -> &[Modifier] {
        if self.modifiers.is_empty() {
            &[Modifier::LINEAR]
        } else {
            &self.modifiers
        }
    }
}

/// Layout rules. Alignments are in bytes (rows for `height_alignment`); 0 and 1 mean none.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LayoutConstraints {
    /// Every plane's stride is a multiple of this.
    pub stride_alignment: u32,
    /// Every plane's offset from the buffer start is a multiple of this.
    pub offset_alignment: u32,
    /// The total size is a multiple of this.
    pub size_alignment: u32,
    /// The image height is rounded up to a multiple of this before planes are sized.
    pub height_alignment: u32,
    /// The image width is rounded up to a multiple of this (in pixels) before strides are
    /// computed: hardware that processes whole pixel groups.
    pub width_alignment: u32,
    /// Per-plane row alignment (rows of that plane), e.g. a chroma plane padded to its own
    /// multiple. Entry `i` applies to plane `i`; missing entries mean none.
    pub plane_row_alignment: Vec<u32>,
    /// The stride must be exactly the bytes one row needs: the device derives it from the width.
    pub exact_stride: bool,
    /// Each plane must start exactly where the previous one ends.
    pub planes_back_to_back: bool,
    /// Alignment of each plane's base address (the memory address, not the offset); a
    /// requirement on the allocation's alignment as well as the offsets.
    pub plane_base_alignment: u64,
    /// Largest width in pixels; 0 means no limit.
    pub max_width: u32,
    /// Largest height in rows; 0 means no limit.
    pub max_height: u32,
    /// Largest stride in bytes; 0 means no limit.
    pub max_stride: u32,
    /// Largest total size in bytes; 0 means no limit.
    pub max_size: u64,
    /// Most planes; 0 means no limit.
    pub max_planes: u32,
    /// Whether planes may live in separate allocations.
    pub separate_planes: bool,
}

/// A physical or I/O virtual address range, `start..=end` inclusive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddressRange {
    /// First address.
    pub start: u64,
    /// Last address (inclusive).
    pub end: u64,
}

impl AddressRange {
    /// Number of bytes in the range (saturating at `u64::MAX`).
    pub fn len(&self) -> u64 {
        self.end.saturating_sub(self.start).saturating_add(1)
    }

    /// Whether the range is empty (end before start).
    pub fn is_empty(&self) -> bool {
        self.end < self.start
    }
}

/// Memory rules.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MemoryConstraints {
    /// Heaps this participant can use, best first; empty means any heap.
    pub heaps: Vec<String>,
    /// Needs physically contiguous memory.
    pub contiguous: bool,
    /// Device DMA address width in bits; 0 means 64. Behind an IOMMU it limits the IOVA,
    /// otherwise the physical address the heap hands out.
    pub address_bits: u8,
    /// The device reaches memory through an IOMMU (IOVA), so `address_bits` and
    /// `iova_ranges` constrain the mapping, not the heap.
    pub behind_iommu: bool,
    /// Usable IOVA ranges (from the IOMMU); empty means any address below `address_bits`.
    pub iova_ranges: Vec<AddressRange>,
    /// The device needs cache-coherent (snooped) memory.
    pub coherent: bool,
    /// CPU mapping modes this participant accepts; empty means any.
    pub cache_modes: Vec<CacheMode>,
    /// Needs protected memory.
    pub protected: bool,
    /// Needs a real dmabuf (a device importing through the kernel); a sealed memfd will not do.
    pub dmabuf: bool,
}

impl MemoryConstraints {
    /// The address width with 0 read as 64.
    pub fn effective_address_bits(&self) -> u8 {
        if self.address_bits == 0 || self.address_bits > 64 {
            64
        } else {
            self.address_bits
        }
    }
}

/// A vendor extension: `(vendor, code)` names it; `payload` is opaque to peers that do not
/// understand it. A required extension that the solver does not understand fails the solve.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Extension {
    /// Vendor id (the DRM modifier vendor ids are a good choice).
    pub vendor: u32,
    /// Vendor-defined code.
    pub code: u32,
    /// Whether a peer that does not understand it must refuse.
    #[serde(default)]
    pub required: bool,
    /// Opaque data.
    #[serde(default)]
    pub payload: Vec<u8>,
}

/// One complete alternative of a participant: if the buffer satisfies all of it, the
/// participant can use the buffer.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConstraintSet {
    /// What this participant will do with the buffer; a request whose usage asks for more is
    /// not satisfied by this alternative. Empty means it accepts any usage.
    #[serde(with = "usage_serde")]
    pub usage: Usage,
    /// Acceptable formats with their modifiers, best first; empty means any format, linear.
    pub formats: Vec<FormatModifiers>,
    /// Layout rules.
    pub layout: LayoutConstraints,
    /// Memory rules.
    pub memory: MemoryConstraints,
    /// Extensions.
    pub extensions: Vec<Extension>,
}
