//! Volatile register access inside one capability's window of a mapped BAR.

use std::sync::Arc;

use crate::mapping::MappedRegion;

/// A register window: `len` bytes at `offset` of a mapped BAR. Accesses outside the window
/// (which the driver never makes: window lengths are checked at setup) read as all ones, as a
/// PCI master abort would, and writes there are dropped.
#[derive(Debug, Clone)]
pub struct Mmio {
    bar: Arc<MappedRegion>,
    offset: usize,
    len: usize,
}

macro_rules! accessors {
    ($read:ident, $write:ident, $t:ty) => {
        /// Volatile read at `at` (all ones outside the window or misaligned).
        pub fn $read(&self, at: usize) -> $t {
            match self.ptr::<$t>(at) {
                // SAFETY: `ptr` returns a pointer only for a naturally aligned access wholly
                // inside the window, which lies inside the live BAR mapping held by `self.bar`.
                Some(p) => unsafe { p.read_volatile() },
                None => <$t>::MAX,
            }
        }

        /// Volatile write at `at` (dropped outside the window or misaligned).
        pub fn $write(&self, at: usize, value: $t) {
            if let Some(p) = self.ptr::<$t>(at) {
                // SAFETY: as in the read: aligned, inside the window and the live mapping.
                unsafe { p.write_volatile(value) }
            } else {
                log::warn!(
                    "dropped a register write at {at:#x} outside a {:#x}-byte window",
                    self.len
                );
            }
        }
    };
}

impl Mmio {
    /// The window `offset..offset+len` of `bar`; `None` if it does not fit in the mapping.
    pub fn new(bar: Arc<MappedRegion>, offset: u64, len: u64) -> Option<Self> {
        bar.check_range(offset, len).ok()?;
        Some(Mmio {
            offset: usize::try_from(offset).ok()?,
            len: usize::try_from(len).ok()?,
            bar,
        })
    }

    /// Window length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the window is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn ptr<T>(&self, at: usize) -> Option<*mut T> {
        let size = std::mem::size_of::<T>();
        let end = at.checked_add(size)?;
        if end > self.len {
            return None;
        }
        let p = self.bar.as_ptr().wrapping_add(self.offset).wrapping_add(at);
        (p as usize % size == 0).then_some(p.cast::<T>())
    }

    accessors!(read8, write8, u8);
    accessors!(read16, write16, u16);
    accessors!(read32, write32, u32);

    /// A 64-bit register written as two 32-bit halves, low first (virtio 1.2 §4.1.3.1).
    pub fn write64_split(&self, at: usize, value: u64) {
        self.write32(at, value as u32);
        self.write32(at.saturating_add(4), (value >> 32) as u32);
    }
}
