//! The shared-memory window's range allocator.
//!
//! The device offers one shared-memory region (id 0) of a fixed size; every buffer shown to the
//! guest through it occupies one page-aligned range, mapped with one SHMEM_MAP. This module
//! hands out and takes back those ranges: first fit over a free list sorted by offset, with
//! neighbours coalesced on release so the list never holds two adjacent ranges.
//!
//! It is bookkeeping only (no I/O): [`super::VhostExposure`] uses it to refuse overlapping
//! mappings, and a session can use it to choose where a buffer goes.

use std::collections::BTreeMap;

use thiserror::Error;

/// The page size every range is aligned to.
pub const WINDOW_PAGE_SIZE: u64 = 4096;

/// A range of the window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WindowRange {
    /// Offset of the first byte in the window.
    pub offset: u64,
    /// Length in bytes (a multiple of the page size).
    pub len: u64,
}

impl WindowRange {
    /// The offset one past the last byte.
    pub fn end(&self) -> u64 {
        self.offset + self.len
    }
}

/// Allocation failures.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum WindowError {
    /// A zero-length range was asked for.
    #[error("a window range cannot be empty")]
    Empty,
    /// No free range is large enough.
    #[error("no free range of {len} bytes in the window ({free} bytes free in total)")]
    Exhausted {
        /// Bytes asked for, rounded up to the page size.
        len: u64,
        /// Free bytes, possibly fragmented.
        free: u64,
    },
    /// An offset or length is not page aligned.
    #[error("window range {offset:#x}+{len:#x} is not aligned to {WINDOW_PAGE_SIZE} bytes")]
    Unaligned {
        /// Offset given.
        offset: u64,
        /// Length given.
        len: u64,
    },
    /// The range reaches past the end of the window.
    #[error("window range {offset:#x}+{len:#x} exceeds the window of {size:#x} bytes")]
    OutOfBounds {
        /// Offset given.
        offset: u64,
        /// Length given.
        len: u64,
        /// The window size.
        size: u64,
    },
    /// Reserving: part of the range is in use. Releasing: part of the range is not in use.
    #[error("window range {offset:#x}+{len:#x} overlaps a range that is {state}")]
    Conflict {
        /// Offset given.
        offset: u64,
        /// Length given.
        len: u64,
        /// "in use" or "free".
        state: &'static str,
    },
}

/// First-fit allocator over `[0, size)`.
#[derive(Debug, Clone)]
pub struct WindowAllocator {
    size: u64,
    /// Free ranges: offset → length. Sorted, disjoint, never adjacent.
    free: BTreeMap<u64, u64>,
}

impl WindowAllocator {
    /// An allocator for a window of `size` bytes; a size that is not a multiple of the page
    /// size is rounded down (the tail cannot hold a page).
    pub fn new(size: u64) -> Self {
        let size = size - size % WINDOW_PAGE_SIZE;
        let mut free = BTreeMap::new();
        if size > 0 {
            free.insert(0, size);
        }
        WindowAllocator { size, free }
    }

    /// The usable window size.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Free bytes in total.
    pub fn free_bytes(&self) -> u64 {
        self.free.values().sum()
    }

    /// Allocates `len` bytes (rounded up to the page size) at the lowest offset that fits.
    pub fn allocate(&mut self, len: u64) -> Result<WindowRange, WindowError> {
        if len == 0 {
            return Err(WindowError::Empty);
        }
        let exhausted = || WindowError::Exhausted {
            len: len.saturating_add(WINDOW_PAGE_SIZE - 1) / WINDOW_PAGE_SIZE * WINDOW_PAGE_SIZE,
            free: self.free_bytes(),
        };
        let len = len
            .checked_next_multiple_of(WINDOW_PAGE_SIZE)
            .ok_or_else(exhausted)?;
        let (offset, free_len) = self
            .free
            .iter()
            .find(|&(_, &free_len)| free_len >= len)
            .map(|(&o, &l)| (o, l))
            .ok_or_else(exhausted)?;
        self.free.remove(&offset);
        if free_len > len {
            self.free.insert(offset + len, free_len - len);
        }
        Ok(WindowRange { offset, len })
    }

    /// Takes exactly `range` out of the free list (for a caller that chose the offset).
    pub fn reserve(&mut self, range: WindowRange) -> Result<(), WindowError> {
        self.check(range)?;
        let conflict = WindowError::Conflict {
            offset: range.offset,
            len: range.len,
            state: "in use",
        };
        let (free_off, free_len) = self
            .free
            .range(..=range.offset)
            .next_back()
            .map(|(&o, &l)| (o, l))
            .ok_or(conflict.clone())?;
        if free_off + free_len < range.end() {
            return Err(conflict);
        }
        self.free.remove(&free_off);
        if range.offset > free_off {
            self.free.insert(free_off, range.offset - free_off);
        }
        if free_off + free_len > range.end() {
            self.free
                .insert(range.end(), free_off + free_len - range.end());
        }
        Ok(())
    }

    /// Returns `range` to the free list, merging it with free neighbours. The whole range must
    /// be in use.
    pub fn release(&mut self, range: WindowRange) -> Result<(), WindowError> {
        self.check(range)?;
        let conflict = WindowError::Conflict {
            offset: range.offset,
            len: range.len,
            state: "free",
        };
        let before = self
            .free
            .range(..range.end())
            .next_back()
            .map(|(&o, &l)| (o, l));
        if let Some((o, l)) = before
            && o + l > range.offset
        {
            return Err(conflict);
        }
        let mut offset = range.offset;
        let mut len = range.len;
        if let Some((o, l)) = before
            && o + l == range.offset
        {
            self.free.remove(&o);
            offset = o;
            len += l;
        }
        if let Some(l) = self.free.remove(&range.end()) {
            len += l;
        }
        self.free.insert(offset, len);
        Ok(())
    }

    /// Whether all of `range` is allocated (a valid range no free range overlaps).
    pub fn is_in_use(&self, range: WindowRange) -> bool {
        self.check(range).is_ok()
            && self
                .free
                .range(..range.end())
                .next_back()
                .is_none_or(|(&o, &l)| o + l <= range.offset)
    }

    fn check(&self, range: WindowRange) -> Result<(), WindowError> {
        if range.len == 0 {
            return Err(WindowError::Empty);
        }
        if range.offset % WINDOW_PAGE_SIZE != 0 || range.len % WINDOW_PAGE_SIZE != 0 {
            return Err(WindowError::Unaligned {
                offset: range.offset,
                len: range.len,
            });
        }
        if range
            .offset
            .checked_add(range.len)
            .is_none_or(|end| end > self.size)
        {
            return Err(WindowError::OutOfBounds {
                offset: range.offset,
                len: range.len,
                size: self.size,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: u64 = WINDOW_PAGE_SIZE;

    fn range(offset: u64, len: u64) -> WindowRange {
        WindowRange { offset, len }
    }

    #[test]
    fn allocate_rounds_up_to_pages_and_fills_from_the_start() {
        let mut w = WindowAllocator::new(16 * P);

        let a = w.allocate(1).unwrap();
        let b = w.allocate(P + 1).unwrap();

        assert_eq!(a, range(0, P));
        assert_eq!(b, range(P, 2 * P));
        assert_eq!(w.free_bytes(), 13 * P);
    }

    #[test]
    fn allocate_past_the_free_space_fails_with_exhausted() {
        let mut w = WindowAllocator::new(4 * P);
        w.allocate(3 * P).unwrap();

        assert_eq!(
            w.allocate(2 * P),
            Err(WindowError::Exhausted {
                len: 2 * P,
                free: P
            })
        );
    }

    #[test]
    fn allocate_zero_bytes_fails() {
        assert_eq!(WindowAllocator::new(P).allocate(0), Err(WindowError::Empty));
    }

    #[test]
    fn allocate_near_u64_max_fails_without_overflow() {
        let mut w = WindowAllocator::new(4 * P);

        assert!(matches!(
            w.allocate(u64::MAX),
            Err(WindowError::Exhausted { .. })
        ));
    }

    #[test]
    fn allocate_takes_the_first_hole_that_fits() {
        let mut w = WindowAllocator::new(8 * P);
        let a = w.allocate(P).unwrap();
        let _b = w.allocate(P).unwrap();
        let c = w.allocate(2 * P).unwrap();
        let _d = w.allocate(P).unwrap();
        w.release(a).unwrap();
        w.release(c).unwrap();

        assert_eq!(w.allocate(2 * P).unwrap(), range(2 * P, 2 * P));
        assert_eq!(w.allocate(P).unwrap(), range(0, P));
    }

    #[test]
    fn release_coalesces_both_neighbours_into_one_range() {
        let mut w = WindowAllocator::new(3 * P);
        let a = w.allocate(P).unwrap();
        let b = w.allocate(P).unwrap();
        let c = w.allocate(P).unwrap();
        w.release(a).unwrap();
        w.release(c).unwrap();

        w.release(b).unwrap();

        assert_eq!(w.allocate(3 * P).unwrap(), range(0, 3 * P));
    }

    #[test]
    fn release_of_a_free_range_fails() {
        let mut w = WindowAllocator::new(4 * P);
        let a = w.allocate(2 * P).unwrap();
        w.release(a).unwrap();

        assert!(matches!(
            w.release(range(P, P)),
            Err(WindowError::Conflict { state: "free", .. })
        ));
    }

    #[test]
    fn release_overlapping_a_free_range_fails() {
        let mut w = WindowAllocator::new(4 * P);
        w.allocate(2 * P).unwrap();

        assert!(matches!(
            w.release(range(P, 2 * P)),
            Err(WindowError::Conflict { .. })
        ));
    }

    #[test]
    fn reserve_splits_a_free_range_and_refuses_overlaps() {
        let mut w = WindowAllocator::new(8 * P);

        w.reserve(range(2 * P, 2 * P)).unwrap();

        assert!(matches!(
            w.reserve(range(3 * P, 2 * P)),
            Err(WindowError::Conflict {
                state: "in use",
                ..
            })
        ));
        assert_eq!(w.allocate(2 * P).unwrap(), range(0, 2 * P));
        assert_eq!(w.allocate(P).unwrap(), range(4 * P, P));
    }

    #[test]
    fn unaligned_and_out_of_bounds_ranges_are_refused() {
        let mut w = WindowAllocator::new(4 * P);

        assert!(matches!(
            w.reserve(range(1, P)),
            Err(WindowError::Unaligned { .. })
        ));
        assert!(matches!(
            w.reserve(range(3 * P, 2 * P)),
            Err(WindowError::OutOfBounds { .. })
        ));
        assert!(matches!(
            w.reserve(range(u64::MAX - P + 1, P)),
            Err(WindowError::OutOfBounds { .. })
        ));
    }

    #[test]
    fn a_size_below_one_page_gives_an_empty_window() {
        let mut w = WindowAllocator::new(P - 1);

        assert_eq!(w.size(), 0);
        assert!(matches!(w.allocate(1), Err(WindowError::Exhausted { .. })));
    }
}
