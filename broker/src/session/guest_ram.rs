//! Guest-RAM placement: buffers made of pages of the guest's own memory.
//!
//! The guest sends a scatter-gather list of guest-physical ranges; buffer `i` is bytes
//! `[i·S, i·S + plan.size)` of their concatenation, `S` being `plan.size` rounded up to the page
//! (so every buffer starts on a page and can be a udmabuf). Nothing in the list is trusted:
//! every range must be non-empty, page aligned, free of overflow, inside one region of the
//! memory table the VMM sent (SET_MEM_TABLE), and disjoint from the others; the total must
//! hold `count · S` bytes. Work is bounded by the list's length (at most 256 ranges, decode
//! limit) plus the buffer count.
//!
//! Each range is translated to (memfd, offset, length) of the VMM's guest-memory file. Where
//! `/dev/udmabuf` exists each buffer gets a dmabuf over its pieces (`UDMABUF_CREATE_LIST`):
//! that is what host clients and other devices import, and it pins the pages. Without udmabuf
//! the buffer only records its guest pages: the guest uses it in place, and nothing can be
//! shared (imports get `UNSUPPORTED`): the only descriptor is the guest's whole memory.

use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex, PoisonError};

use bufbroker_proto::wire::GuestRange;
use bufbroker_proto::{HeapInfo, Plan};

use crate::exposure::{GuestExposure, GuestRegion};
use crate::heap::{Carved, Heap, HeapBuffer, HeapError, MemfdRange, UdmabufDevice, UdmabufRange};

/// Guest page size the ranges must be aligned to.
pub const GUEST_PAGE: u64 = 4096;

/// The heap name guest-RAM buffers are recorded under.
pub const GUEST_RAM_HEAP: &str = "guest-ram";

/// Checks the list against everything that does not need the memory table; returns the
/// per-buffer stride `S`.
pub fn check_ranges(ranges: &[GuestRange], plan_size: u64, count: u32) -> Result<u64, String> {
    let stride = plan_size
        .checked_next_multiple_of(GUEST_PAGE)
        .filter(|s| *s > 0)
        .ok_or_else(|| format!("plan size {plan_size} cannot be used"))?;
    let needed = stride
        .checked_mul(u64::from(count))
        .ok_or_else(|| format!("{count} buffers of {stride} bytes overflow"))?;
    if ranges.is_empty() {
        return Err("the guest-RAM placement lists no ranges".into());
    }
    let mut total: u64 = 0;
    for (i, r) in ranges.iter().enumerate() {
        if r.len == 0 {
            return Err(format!("range {i} is empty"));
        }
        if r.addr % GUEST_PAGE != 0 || r.len % GUEST_PAGE != 0 {
            return Err(format!(
                "range {i} ({:#x}+{:#x}) is not aligned to {GUEST_PAGE} bytes",
                r.addr, r.len
            ));
        }
        if r.addr.checked_add(r.len).is_none() {
            return Err(format!(
                "range {i} ({:#x}+{:#x}) overflows the address space",
                r.addr, r.len
            ));
        }
        total = total
            .checked_add(r.len)
            .ok_or_else(|| "the ranges' total length overflows".to_owned())?;
    }
    let mut sorted: Vec<(usize, &GuestRange)> = ranges.iter().enumerate().collect();
    sorted.sort_unstable_by_key(|(_, r)| r.addr);
    for pair in sorted.windows(2) {
        if let [(i, a), (j, b)] = pair
            && a.addr.saturating_add(a.len) > b.addr
        {
            return Err(format!("ranges {i} and {j} overlap"));
        }
    }
    if total < needed {
        return Err(format!(
            "the ranges hold {total} bytes; {count} buffers of {stride} bytes need {needed}"
        ));
    }
    Ok(stride)
}

/// One piece of a buffer: region index, offset in the region's file, length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Piece {
    region: usize,
    fd_offset: u64,
    len: u64,
}

/// The pieces of each of `count` buffers of `stride` bytes over the checked `ranges`.
fn pieces(
    regions: &[GuestRegion<'_>],
    ranges: &[GuestRange],
    stride: u64,
    count: u32,
) -> Result<Vec<Vec<Piece>>, String> {
    // Each range → (region, file offset).
    let mut located = Vec::with_capacity(ranges.len());
    for (i, r) in ranges.iter().enumerate() {
        let end = r.addr.saturating_add(r.len);
        let (index, region) = regions
            .iter()
            .enumerate()
            .find(|(_, g)| {
                g.guest_phys <= r.addr && g.guest_phys.checked_add(g.size).is_some_and(|e| end <= e)
            })
            .ok_or_else(|| {
                format!(
                    "range {i} ({:#x}+{:#x}) is not inside one region of guest RAM",
                    r.addr, r.len
                )
            })?;
        let fd_offset = region
            .fd_offset
            .checked_add(r.addr - region.guest_phys)
            .ok_or_else(|| format!("range {i} overflows its region's file offset"))?;
        located.push(Piece {
            region: index,
            fd_offset,
            len: r.len,
        });
    }
    // Cut the concatenation into buffers.
    let mut out = Vec::with_capacity(count as usize);
    let mut next = located.into_iter();
    let mut current: Option<Piece> = None;
    for _ in 0..count {
        let mut want = stride;
        let mut buffer = Vec::new();
        while want > 0 {
            let piece = match current.take().or_else(|| next.next()) {
                Some(p) => p,
                None => return Err("the ranges ran out (checked before: a bug)".into()),
            };
            let take = piece.len.min(want);
            buffer.push(Piece { len: take, ..piece });
            want -= take;
            if take < piece.len {
                current = Some(Piece {
                    fd_offset: piece.fd_offset + take,
                    len: piece.len - take,
                    ..piece
                });
            }
        }
        out.push(buffer);
    }
    Ok(out)
}

/// The memory of `count` buffers over `ranges` (checked with [`check_ranges`], giving
/// `stride`), translated through the guest's memory table.
pub fn build(
    exposure: &dyn GuestExposure,
    udmabuf: Option<&UdmabufDevice>,
    ranges: &[GuestRange],
    stride: u64,
    count: u32,
) -> Result<Vec<HeapBuffer>, String> {
    let mut result = Err("the VMM has not shared guest memory".to_owned());
    exposure.with_guest_memory(&mut |regions| {
        result = build_in(regions, udmabuf, ranges, stride, count);
    });
    result
}

fn build_in(
    regions: &[GuestRegion<'_>],
    udmabuf: Option<&UdmabufDevice>,
    ranges: &[GuestRange],
    stride: u64,
    count: u32,
) -> Result<Vec<HeapBuffer>, String> {
    let buffers = pieces(regions, ranges, stride, count)?;
    // One descriptor per region used, shared by the buffers' records.
    let mut files: Vec<Option<Arc<OwnedFd>>> = vec![None; regions.len()];
    let mut file = |index: usize| -> Result<Arc<OwnedFd>, String> {
        let slot = files
            .get_mut(index)
            .ok_or_else(|| "region index out of range".to_owned())?;
        if let Some(fd) = slot {
            return Ok(fd.clone());
        }
        let region = regions
            .get(index)
            .ok_or_else(|| "region index out of range".to_owned())?;
        let fd = Arc::new(
            region
                .fd
                .try_clone_to_owned()
                .map_err(|e| format!("duplicating the guest-memory descriptor failed: {e}"))?,
        );
        *slot = Some(fd.clone());
        Ok(fd)
    };
    let mut out = Vec::with_capacity(buffers.len());
    for pieces in buffers {
        let mut ranges = Vec::with_capacity(pieces.len());
        for p in &pieces {
            ranges.push(MemfdRange {
                memfd: file(p.region)?,
                offset: p.fd_offset,
                len: p.len,
            });
        }
        let dmabuf = match udmabuf {
            None => None,
            Some(device) => {
                let list: Vec<UdmabufRange<'_>> = ranges
                    .iter()
                    .map(|r| UdmabufRange {
                        memfd: std::os::fd::AsFd::as_fd(&*r.memfd),
                        offset: r.offset,
                        size: r.len,
                    })
                    .collect();
                Some(
                    device
                        .create_list(&list)
                        .map_err(|e| crate::heap::error_chain(&e))?,
                )
            }
        };
        let mut ranges = ranges.into_iter();
        let first = ranges
            .next()
            .ok_or_else(|| "a buffer without pages (a bug)".to_owned())?;
        out.push(HeapBuffer::carved(
            Carved {
                first,
                rest: ranges.collect(),
                dmabuf,
                share_memfd: false,
                arena: None,
                on_drop: None,
            },
            stride,
            GUEST_RAM_HEAP,
        ));
    }
    Ok(out)
}

/// Hands the registry buffers built beforehand, in order (the registry allocates through a
/// [`Heap`]).
#[derive(Debug)]
pub struct PreparedHeap {
    info: HeapInfo,
    buffers: Mutex<std::vec::IntoIter<HeapBuffer>>,
}

impl PreparedHeap {
    /// A heap handing out `buffers`.
    pub fn new(plan: &Plan, buffers: Vec<HeapBuffer>) -> Self {
        PreparedHeap {
            info: HeapInfo {
                name: GUEST_RAM_HEAP.into(),
                contiguous: plan.contiguous,
                ..HeapInfo::memfd()
            },
            buffers: Mutex::new(buffers.into_iter()),
        }
    }
}

impl Heap for PreparedHeap {
    fn info(&self) -> &HeapInfo {
        &self.info
    }

    fn allocate(&self, size: u64) -> Result<HeapBuffer, HeapError> {
        self.buffers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .next()
            .ok_or(HeapError::NoRoom {
                size,
                reason: "no more prepared guest-RAM buffers".into(),
            })
    }

    fn recyclable(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: u64 = GUEST_PAGE;

    fn r(addr: u64, len: u64) -> GuestRange {
        GuestRange { addr, len }
    }

    #[test]
    fn check_ranges_accepts_a_split_list_and_returns_the_page_stride() {
        assert_eq!(
            check_ranges(&[r(8 * P, 2 * P), r(0, P)], 2 * P + 1, 1),
            Ok(3 * P)
        );
    }

    #[test]
    fn check_ranges_refuses_bad_lists_naming_the_problem() {
        let cases = [
            (vec![], "no ranges"),
            (vec![r(0, 0)], "empty"),
            (vec![r(1, P)], "not aligned"),
            (vec![r(0, P + 1)], "not aligned"),
            (vec![r(u64::MAX - P + 1, 2 * P)], "overflows"),
            (vec![r(0, 2 * P), r(P, P)], "overlap"),
            (vec![r(0, P)], "need"),
        ];
        for (ranges, want) in cases {
            let err = check_ranges(&ranges, 2 * P, 1).unwrap_err();
            assert!(err.contains(want), "{ranges:?}: {err}");
        }
    }

    #[test]
    fn check_ranges_refuses_an_overflowing_buffer_count() {
        assert!(check_ranges(&[r(0, P)], u64::MAX / 2, 64).is_err());
        assert!(check_ranges(&[r(0, P)], u64::MAX, 1).is_err());
    }
}
