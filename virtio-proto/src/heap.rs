//! Heaps as the solver sees them: where memory can come from and what it guarantees.

use serde::{Deserialize, Serialize};

use crate::constraint::CacheMode;

/// What backs a heap.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum HeapKind {
    /// Sealed memfd (always available; not a dmabuf).
    Memfd,
    /// memfd turned into a dmabuf by `/dev/udmabuf`.
    Udmabuf,
    /// A `/dev/dma_heap/*` heap.
    DmaHeap,
    /// Pages of the guest's own RAM (guest-RAM placement).
    GuestRam,
}

/// One heap the broker can allocate from, described in the solver's vocabulary.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeapInfo {
    /// Name participants use in `memory.heaps` (`memfd`, `udmabuf`, `system`, `linux,cma`).
    pub name: String,
    /// What backs it.
    pub kind: HeapKind,
    /// Physically contiguous allocations.
    pub contiguous: bool,
    /// Yields a dmabuf.
    pub dmabuf: bool,
    /// CPU mapping mode of its buffers.
    pub cache_mode: CacheMode,
    /// Memory is cache-coherent for devices.
    pub coherent: bool,
    /// Memory is protected.
    pub protected: bool,
    /// Largest single allocation in bytes; 0 means no limit.
    pub max_size: u64,
    /// Physical addresses stay below `2^address_bits`; 0 means anywhere (64).
    pub address_bits: u8,
}

impl HeapInfo {
    /// The built-in memfd heap: cached, coherent, anywhere in memory, not a dmabuf.
    pub fn memfd() -> Self {
        HeapInfo {
            name: "memfd".into(),
            kind: HeapKind::Memfd,
            contiguous: false,
            dmabuf: false,
            cache_mode: CacheMode::Cached,
            coherent: true,
            protected: false,
            max_size: 0,
            address_bits: 0,
        }
    }

    /// The address width with 0 read as 64.
    pub fn effective_address_bits(&self) -> u8 {
        if self.address_bits == 0 || self.address_bits > 64 {
            64
        } else {
            self.address_bits
        }
    }
}

/// Names of the CMA heaps that kernels and device trees commonly create.
pub const CMA_HEAP_NAMES: [&str; 3] = ["linux,cma", "reserved", "default_cma_region"];

impl HeapInfo {
    /// The description of a heap known by name: `memfd`, `udmabuf`, the dma-heaps `system`
    /// and `system-uncached`, and the CMA heaps of [`CMA_HEAP_NAMES`]. Properties follow the
    /// kernel's `drivers/dma-buf/heaps/{system_heap,cma_heap}.c`. `None` for other names,
    /// which need an explicit description.
    pub fn well_known(name: &str) -> Option<HeapInfo> {
        let base = HeapInfo {
            name: name.to_owned(),
            ..HeapInfo::memfd()
        };
        let info = match name {
            "memfd" => base,
            "udmabuf" => HeapInfo {
                kind: HeapKind::Udmabuf,
                dmabuf: true,
                ..base
            },
            "system" => HeapInfo {
                kind: HeapKind::DmaHeap,
                dmabuf: true,
                ..base
            },
            "system-uncached" => HeapInfo {
                kind: HeapKind::DmaHeap,
                dmabuf: true,
                cache_mode: CacheMode::WriteCombined,
                ..base
            },
            n if CMA_HEAP_NAMES.contains(&n) => HeapInfo {
                kind: HeapKind::DmaHeap,
                dmabuf: true,
                contiguous: true,
                ..base
            },
            _ => return None,
        };
        Some(info)
    }
}
