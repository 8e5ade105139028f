//! An IOVA allocator over the ranges a device's constraints allow.

use std::collections::BTreeMap;

use bufbroker_proto::{AddressRange, MemoryConstraints};
use thiserror::Error;

/// Errors of the IOVA allocator.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum IovaError {
    /// No free hole is large enough.
    #[error("no free IOVA range of {len:#x} bytes below 2^{bits} ({free:#x} bytes free in all)")]
    Exhausted {
        /// Bytes asked for (rounded up to the page).
        len: u64,
        /// The address width the allocator respects.
        bits: u8,
        /// Total free bytes.
        free: u64,
    },
    /// A zero-length allocation.
    #[error("zero-length IOVA allocation")]
    Empty,
}

/// First-fit allocator of page-aligned IOVA blocks, inside the usable ranges and below
/// `2^address_bits`. IOVA 0 is never handed out, so a zero in a device register never names
/// a mapped buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IovaAllocator {
    /// Free holes: start → end (inclusive), disjoint and not adjacent.
    free: BTreeMap<u64, u64>,
    page: u64,
    bits: u8,
}

impl IovaAllocator {
    /// An allocator over `ranges` (empty: the whole space) clipped below `2^bits` (0 or ≥ 64:
    /// no limit), in blocks of `page` bytes (a power of two; other values are read as 4096).
    pub fn new(ranges: &[AddressRange], bits: u8, page: u64) -> Self {
        let page = if page.is_power_of_two() { page } else { 4096 };
        let top = if bits == 0 || bits >= 64 {
            u64::MAX
        } else {
            (1u64 << bits) - 1
        };
        let whole = [AddressRange {
            start: 0,
            end: u64::MAX,
        }];
        let ranges = if ranges.is_empty() {
            &whole[..]
        } else {
            ranges
        };
        let mut a = IovaAllocator {
            free: BTreeMap::new(),
            page,
            bits: if bits == 0 { 64 } else { bits.min(64) },
        };
        let mut holes = Vec::with_capacity(ranges.len());
        for r in ranges {
            let Some(start) = r.start.max(page).checked_next_multiple_of(page) else {
                continue;
            };
            let end = r.end.min(top);
            // Keep whole pages only: the end is the last byte of a page.
            // (2^64 is a multiple of the page, so u64::MAX already ends one.)
            let end = match end.checked_add(1) {
                Some(e) => (e & !(page - 1)).checked_sub(1),
                None => Some(u64::MAX),
            };
            if let Some(end) = end.filter(|&e| start <= e) {
                holes.push((start, end));
            }
        }
        // Overlapping input ranges (a profile may list them) merge into one hole.
        holes.sort_unstable();
        let mut merged: Vec<(u64, u64)> = Vec::with_capacity(holes.len());
        for (s, e) in holes {
            match merged.last_mut() {
                Some(last) if s <= last.1.saturating_add(1) => last.1 = last.1.max(e),
                _ => merged.push((s, e)),
            }
        }
        for (s, e) in merged {
            a.insert_free(s, e);
        }
        a
    }

    /// The allocator a device's memory constraints allow.
    pub fn for_constraints(memory: &MemoryConstraints, page: u64) -> Self {
        IovaAllocator::new(&memory.iova_ranges, memory.effective_address_bits(), page)
    }

    /// Allocates `len` bytes (rounded up to the page), returning the IOVA.
    pub fn alloc(&mut self, len: u64) -> Result<u64, IovaError> {
        if len == 0 {
            return Err(IovaError::Empty);
        }
        let exhausted = |a: &Self, len| IovaError::Exhausted {
            len,
            bits: a.bits,
            free: a.free_bytes(),
        };
        let Some(len) = len.checked_next_multiple_of(self.page) else {
            return Err(exhausted(self, len));
        };
        let hole = self
            .free
            .iter()
            .find(|&(&s, &e)| e - s >= len - 1)
            .map(|(&s, &e)| (s, e));
        let Some((start, end)) = hole else {
            return Err(exhausted(self, len));
        };
        self.free.remove(&start);
        if end - start > len - 1 {
            self.free.insert(start + len, end);
        }
        Ok(start)
    }

    /// Returns a block given by [`alloc`](Self::alloc) (same `len`).
    pub fn free(&mut self, iova: u64, len: u64) {
        let Some(len) = len.checked_next_multiple_of(self.page) else {
            return;
        };
        if len == 0 {
            return;
        }
        self.insert_free(iova, iova.saturating_add(len - 1));
    }

    /// Total free bytes.
    pub fn free_bytes(&self) -> u64 {
        self.free.iter().fold(0u64, |acc, (&s, &e)| {
            acc.saturating_add(e - s).saturating_add(1)
        })
    }

    /// The block size.
    pub fn page(&self) -> u64 {
        self.page
    }

    fn insert_free(&mut self, mut start: u64, mut end: u64) {
        // Merge with the hole before (if adjacent) and after.
        if let Some((&ps, &pe)) = self.free.range(..start).next_back() {
            if pe.checked_add(1) == Some(start) {
                self.free.remove(&ps);
                start = ps;
            }
        }
        if let Some(next) = end.checked_add(1) {
            if let Some(ne) = self.free.remove(&next) {
                end = ne;
            }
        }
        self.free.insert(start, end);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(start: u64, end: u64) -> AddressRange {
        AddressRange { start, end }
    }

    #[test]
    fn allocations_stay_below_address_width_and_skip_page_zero() {
        let mut a = IovaAllocator::new(&[r(0, 0x7f_ffff_ffff)], 28, 4096);
        assert_eq!(a.free_bytes(), (1 << 28) - 4096);
        let x = a.alloc(1).unwrap();
        assert_eq!(x, 4096);
        let big = a.alloc((1 << 28) - 8192).unwrap();
        assert_eq!(big, 8192);
        assert!(matches!(
            a.alloc(4096),
            Err(IovaError::Exhausted { bits: 28, .. })
        ));
    }

    #[test]
    fn reserved_holes_are_never_handed_out() {
        let mut a = IovaAllocator::new(&[r(0, 0x2fff), r(0x5000, 0x8fff)], 64, 4096);
        assert_eq!(a.alloc(0x2000).unwrap(), 0x1000);
        assert_eq!(a.alloc(0x3000).unwrap(), 0x5000);
        assert!(a.alloc(0x2000).is_err());
        assert_eq!(a.alloc(0x1000).unwrap(), 0x8000);
    }

    #[test]
    fn unaligned_range_edges_are_trimmed_to_whole_pages() {
        let a = IovaAllocator::new(&[r(0x1800, 0x47ff)], 64, 4096);
        assert_eq!(a.free, BTreeMap::from([(0x2000, 0x3fff)]));
    }

    #[test]
    fn free_coalesces_so_a_full_size_block_fits_again() {
        let mut a = IovaAllocator::new(&[r(0, 0x4fff)], 64, 4096);
        let x = a.alloc(0x1000).unwrap();
        let y = a.alloc(0x1000).unwrap();
        let z = a.alloc(0x2000).unwrap();
        a.free(y, 0x1000);
        a.free(x, 0x1000);
        a.free(z, 0x2000);
        assert_eq!(a.alloc(0x4000).unwrap(), 0x1000);
    }

    #[test]
    fn overlapping_ranges_merge_so_no_iova_is_handed_out_twice() {
        let mut a = IovaAllocator::new(&[r(0x3000, 0x8fff), r(0x1000, 0x4fff)], 64, 4096);
        assert_eq!(a.free, BTreeMap::from([(0x1000, 0x8fff)]));
        assert_eq!(a.alloc(0x8000).unwrap(), 0x1000);
        assert!(a.alloc(0x1000).is_err());
    }

    #[test]
    fn zero_length_is_an_error() {
        let mut a = IovaAllocator::new(&[], 0, 4096);
        assert_eq!(a.alloc(0), Err(IovaError::Empty));
    }

    #[test]
    fn full_64_bit_space_works() {
        let mut a = IovaAllocator::new(&[], 0, 4096);
        assert_eq!(a.alloc(u64::MAX / 2).unwrap(), 4096);
        assert!(a.alloc(u64::MAX).is_err());
    }

    #[test]
    fn for_constraints_uses_bits_and_ranges() {
        let m = MemoryConstraints {
            address_bits: 28,
            behind_iommu: true,
            iova_ranges: vec![r(0, 0xfedf_ffff), r(0xfef0_0000, 0x7f_ffff_ffff)],
            ..MemoryConstraints::default()
        };
        let a = IovaAllocator::for_constraints(&m, 4096);
        assert_eq!(a.free, BTreeMap::from([(0x1000, 0x0fff_ffff)]));
    }
}
