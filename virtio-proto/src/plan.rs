//! Plans: one concrete buffer layout and placement that satisfies every participant.

use serde::{Deserialize, Serialize};

use crate::constraint::{CacheMode, Usage, usage_serde};
use crate::format::{Fourcc, Modifier};

/// Where one plane lives in the buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlaneLayout {
    /// Offset of the plane from the start of the buffer, in bytes.
    pub offset: u64,
    /// Bytes from one row (or tile row) to the next.
    pub stride: u32,
    /// Bytes the plane occupies.
    pub size: u64,
}

/// A solved layout and placement.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Plan {
    /// Pixel format.
    pub fourcc: Fourcc,
    /// Format modifier.
    pub modifier: Modifier,
    /// Image width.
    pub width: u32,
    /// Image height.
    pub height: u32,
    /// Planes in order.
    pub planes: Vec<PlaneLayout>,
    /// Total bytes of one buffer.
    pub size: u64,
    /// Required alignment of the allocation's base address.
    pub alignment: u64,
    /// Heap to allocate from (a [`crate::heap::HeapInfo::name`]).
    pub heap: String,
    /// CPU mapping mode.
    pub cache_mode: CacheMode,
    /// Physically contiguous.
    pub contiguous: bool,
    /// Narrowest DMA address width among participants (64 when none limits it).
    pub address_bits: u8,
    /// Needs cache-coherent memory.
    pub coherent: bool,
    /// Merged usage.
    #[serde(with = "usage_serde")]
    pub usage: Usage,
    /// Index of the alternative chosen for each participant, in request order.
    pub alternatives: Vec<u32>,
}
