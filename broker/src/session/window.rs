//! Sub-allocation of a device's shared-memory window: first fit over page-aligned ranges.

use std::collections::BTreeMap;

/// Free and used ranges of one window.
#[derive(Debug)]
pub struct WindowAllocator {
    size: u64,
    align: u64,
    /// Used ranges: offset → length.
    used: BTreeMap<u64, u64>,
}

impl WindowAllocator {
    /// A window of `size` bytes handing out ranges aligned to `align` (a power of two).
    pub fn new(size: u64, align: u64) -> Self {
        WindowAllocator {
            size,
            align: align.max(1),
            used: BTreeMap::new(),
        }
    }

    /// `len` rounded up to the alignment; `None` on overflow.
    pub fn rounded(&self, len: u64) -> Option<u64> {
        let mask = self.align - 1;
        len.checked_add(mask).map(|l| l & !mask)
    }

    /// The lowest free range of `len` bytes (rounded up to the alignment); `None` when the
    /// window has no such gap.
    pub fn allocate(&mut self, len: u64) -> Option<(u64, u64)> {
        let len = self.rounded(len).filter(|l| *l > 0)?;
        let mut start = 0u64;
        for (&offset, &used) in &self.used {
            if offset.checked_sub(start).is_some_and(|gap| gap >= len) {
                break;
            }
            start = offset.checked_add(used)?;
        }
        let end = start.checked_add(len)?;
        if end > self.size {
            return None;
        }
        self.used.insert(start, len);
        Some((start, len))
    }

    /// Returns the range at `offset`.
    pub fn release(&mut self, offset: u64) {
        self.used.remove(&offset);
    }

    /// Bytes in use.
    pub fn used_bytes(&self) -> u64 {
        self.used.values().sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocate_first_fit_reuses_released_gaps() {
        let mut w = WindowAllocator::new(16 << 12, 4096);
        let a = w.allocate(1).unwrap();
        let b = w.allocate(8192).unwrap();
        w.release(a.0);
        let c = w.allocate(4096).unwrap();
        assert_eq!((a, b, c), ((0, 4096), (4096, 8192), (0, 4096)));
        assert_eq!(w.used_bytes(), 12288);
    }

    #[test]
    fn allocate_beyond_the_window_returns_none() {
        let mut w = WindowAllocator::new(8192, 4096);
        assert!(w.allocate(8192).is_some());
        assert!(w.allocate(1).is_none());
        assert!(w.allocate(u64::MAX).is_none());
        assert!(w.allocate(0).is_none());
    }
}
