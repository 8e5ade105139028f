//! A split virtqueue (virtio 1.2 §2.7) in one page of DMA memory, driver side.
//!
//! Layout in the page, for a queue of `size <= 64` entries: descriptor table at 0 (16 bytes
//! per entry), available ring at 1024 (`flags, idx, ring[size], used_event`), used ring at
//! 2048 (`flags, idx, ring[size] of {id: u32, len: u32}, avail_event`). Every field shared
//! with the device is accessed with volatile reads and writes, and the index updates are
//! fenced: descriptors and ring entries are visible before `avail.idx` moves, and the used
//! element is read only after `used.idx` was seen to move.

use std::sync::atomic::{Ordering, fence};

use super::dma::DmaMemory;

/// Largest queue the one-page layout holds.
pub const MAX_QUEUE_SIZE: u16 = 64;

const DESC: usize = 0;
const AVAIL: usize = 1024;
const USED: usize = 2048;

/// `VIRTQ_DESC_F_NEXT`.
pub const DESC_F_NEXT: u16 = 1;
/// `VIRTQ_DESC_F_WRITE`: device-writable.
pub const DESC_F_WRITE: u16 = 2;
/// `VIRTQ_AVAIL_F_NO_INTERRUPT`: the driver polls.
const AVAIL_F_NO_INTERRUPT: u16 = 1;

/// One buffer segment: physical address, length, device-writable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    /// Physical address.
    pub addr: u64,
    /// Length in bytes.
    pub len: u32,
    /// Whether the device writes it.
    pub writable: bool,
}

/// A completed chain: its head descriptor and the bytes the device wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Used {
    /// Head descriptor index.
    pub id: u32,
    /// Bytes written into the chain's writable part.
    pub len: u32,
}

/// The driver side of one split virtqueue.
#[derive(Debug)]
pub struct SplitQueue {
    mem: DmaMemory,
    size: u16,
    avail_idx: u16,
    last_used: u16,
}

impl SplitQueue {
    /// A queue of `size` entries (a power of two, at most [`MAX_QUEUE_SIZE`]) in `mem`
    /// (at least one page, zeroed).
    pub fn new(mem: DmaMemory, size: u16) -> Option<Self> {
        if size == 0 || size > MAX_QUEUE_SIZE || !size.is_power_of_two() || mem.len() < 4096 {
            return None;
        }
        let q = SplitQueue {
            mem,
            size,
            avail_idx: 0,
            last_used: 0,
        };
        q.write16(AVAIL, AVAIL_F_NO_INTERRUPT);
        Some(q)
    }

    /// Number of entries.
    pub fn size(&self) -> u16 {
        self.size
    }

    /// Physical addresses of the descriptor table, available ring and used ring.
    pub fn addresses(&self) -> Option<(u64, u64, u64)> {
        Some((
            self.mem.phys(DESC)?,
            self.mem.phys(AVAIL)?,
            self.mem.phys(USED)?,
        ))
    }

    /// The ring memory, mutably (to leak it when the device cannot be stopped).
    pub fn memory_mut(&mut self) -> &mut DmaMemory {
        &mut self.mem
    }

    /// The ring memory (for `still_at` checks).
    pub fn memory(&self) -> &DmaMemory {
        &self.mem
    }

    fn write16(&self, at: usize, v: u16) {
        if let Some(p) = self.mem.ptr::<u16>(at) {
            // SAFETY: aligned and inside the ring page (checked by `ptr`).
            unsafe { p.write_volatile(v.to_le()) }
        }
    }

    fn read16(&self, at: usize) -> u16 {
        match self.mem.ptr::<u16>(at) {
            // SAFETY: aligned and inside the ring page (checked by `ptr`).
            Some(p) => u16::from_le(unsafe { p.read_volatile() }),
            None => 0,
        }
    }

    fn read32(&self, at: usize) -> u32 {
        match self.mem.ptr::<u32>(at) {
            // SAFETY: aligned and inside the ring page (checked by `ptr`).
            Some(p) => u32::from_le(unsafe { p.read_volatile() }),
            None => 0,
        }
    }

    fn write_desc(&self, i: u16, s: &Segment, next: Option<u16>) {
        let at = DESC + 16 * usize::from(i);
        let mut flags = if s.writable { DESC_F_WRITE } else { 0 };
        if next.is_some() {
            flags |= DESC_F_NEXT;
        }
        if let Some(p) = self.mem.ptr::<u64>(at) {
            // SAFETY: aligned and inside the ring page (checked by `ptr`).
            unsafe { p.write_volatile(s.addr.to_le()) }
        }
        if let Some(p) = self.mem.ptr::<u32>(at + 8) {
            // SAFETY: as above.
            unsafe { p.write_volatile(s.len.to_le()) }
        }
        self.write16(at + 12, flags);
        self.write16(at + 14, next.unwrap_or(0));
    }

    /// Writes `segments` as one chain starting at descriptor `first` and makes it available.
    /// Returns the head index; `None` if the chain does not fit.
    pub fn push_chain(&mut self, first: u16, segments: &[Segment]) -> Option<u16> {
        let n = u16::try_from(segments.len()).ok()?;
        if n == 0 || first.checked_add(n)? > self.size {
            return None;
        }
        for (k, s) in (first..).zip(segments) {
            let next = (k + 1 < first + n).then_some(k + 1);
            self.write_desc(k, s, next);
        }
        self.make_available(first);
        Some(first)
    }

    /// Puts chain `head` (already in the descriptor table) on the available ring.
    pub fn make_available(&mut self, head: u16) {
        let slot = AVAIL + 4 + 2 * usize::from(self.avail_idx % self.size);
        self.write16(slot, head);
        // The descriptors and the ring entry must be visible before the index.
        fence(Ordering::SeqCst);
        self.avail_idx = self.avail_idx.wrapping_add(1);
        self.write16(AVAIL + 2, self.avail_idx);
        // The index must be visible before the notification that follows.
        fence(Ordering::SeqCst);
    }

    /// The next completed chain, if the device returned one.
    pub fn pop_used(&mut self) -> Option<Used> {
        let idx = self.read16(USED + 2);
        if idx == self.last_used {
            return None;
        }
        // Read the element only after seeing the index move.
        fence(Ordering::SeqCst);
        let at = USED + 4 + 8 * usize::from(self.last_used % self.size);
        let used = Used {
            id: self.read32(at),
            len: self.read32(at + 4),
        };
        self.last_used = self.last_used.wrapping_add(1);
        Some(used)
    }

    /// Chains made available and not yet returned.
    pub fn in_flight(&self) -> u16 {
        self.avail_idx.wrapping_sub(self.last_used)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Plays the device: reads the chain at the next available slot, copies its readable
    /// bytes (reversed) into its writable segments, and returns it on the used ring.
    /// Addresses are virtual (identity DMA memory).
    fn device_echo_reversed(mem_base: *mut u8, size: u16, next_avail: &mut u16) -> bool {
        // SAFETY: (test) `mem_base` is the queue page; addresses in descriptors point into
        // identity DMA memory that outlives the call.
        unsafe {
            let avail_idx = (mem_base.add(AVAIL + 2) as *const u16).read_volatile();
            if avail_idx == *next_avail {
                return false;
            }
            let head = (mem_base.add(AVAIL + 4 + 2 * usize::from(*next_avail % size))
                as *const u16)
                .read_volatile();
            *next_avail = next_avail.wrapping_add(1);
            let mut input = Vec::new();
            let mut outs = Vec::new();
            let mut i = head;
            loop {
                let d = mem_base.add(16 * usize::from(i));
                let addr = (d as *const u64).read_volatile() as usize as *mut u8;
                let len = (d.add(8) as *const u32).read_volatile() as usize;
                let flags = (d.add(12) as *const u16).read_volatile();
                if flags & DESC_F_WRITE != 0 {
                    outs.push((addr, len));
                } else {
                    input.extend_from_slice(std::slice::from_raw_parts(addr, len));
                }
                if flags & DESC_F_NEXT == 0 {
                    break;
                }
                i = (d.add(14) as *const u16).read_volatile();
            }
            input.reverse();
            let mut written = 0;
            for (addr, len) in outs {
                let n = len.min(input.len() - written);
                std::ptr::copy_nonoverlapping(input.as_ptr().add(written), addr, n);
                written += n;
            }
            let used_idx = (mem_base.add(USED + 2) as *const u16).read_volatile();
            let e = mem_base.add(USED + 4 + 8 * usize::from(used_idx % size));
            (e as *mut u32).write_volatile(u32::from(head));
            (e.add(4) as *mut u32).write_volatile(written as u32);
            fence(Ordering::SeqCst);
            (mem_base.add(USED + 2) as *mut u16).write_volatile(used_idx.wrapping_add(1));
        }
        true
    }

    #[test]
    fn chains_across_pages_round_trip_and_indices_wrap() {
        let ring = DmaMemory::identity(4096);
        let base = ring.ptr::<u8>(0).unwrap();
        let mut q = SplitQueue::new(ring, 8).unwrap();
        let data = DmaMemory::identity(3 * 4096);
        let mut device_avail = 0u16;

        for round in 0..70_000u32 {
            let msg = round.to_le_bytes();
            data.write_bytes(4090, &msg); // straddles a page boundary
            let mut segs: Vec<Segment> = data
                .runs(4090, 4)
                .unwrap()
                .into_iter()
                .map(|(addr, len)| Segment {
                    addr,
                    len,
                    writable: false,
                })
                .collect();
            segs.extend(
                data.runs(2 * 4096 - 2, 4)
                    .unwrap()
                    .into_iter()
                    .map(|(addr, len)| Segment {
                        addr,
                        len,
                        writable: true,
                    }),
            );

            let head = q.push_chain(0, &segs).unwrap();
            assert!(device_echo_reversed(base, 8, &mut device_avail));
            let used = q.pop_used().unwrap();

            assert_eq!(
                used,
                Used {
                    id: u32::from(head),
                    len: 4
                }
            );
            let mut expect = msg;
            expect.reverse();
            assert_eq!(data.read_bytes(2 * 4096 - 2, 4).unwrap(), expect);
            assert_eq!(q.in_flight(), 0);
        }
    }

    #[test]
    fn new_rejects_sizes_that_do_not_fit_the_page() {
        assert!(SplitQueue::new(DmaMemory::identity(4096), 128).is_none());
        assert!(SplitQueue::new(DmaMemory::identity(4096), 6).is_none());
        assert!(SplitQueue::new(DmaMemory::identity(4096), 0).is_none());
    }

    #[test]
    fn push_chain_longer_than_the_queue_is_refused() {
        let mut q = SplitQueue::new(DmaMemory::identity(4096), 4).unwrap();
        let s = Segment {
            addr: 0,
            len: 1,
            writable: false,
        };

        assert!(q.push_chain(0, &[s; 5]).is_none());
        assert!(q.push_chain(3, &[s; 2]).is_none());
        assert_eq!(q.in_flight(), 0);
    }
}
