//! The driver's side of a split virtqueue (virtio 1.x §2.7), as a guest kernel writes it.
//!
//! Layout at `base` for `size` entries: descriptor table (16 bytes each), available ring
//! (`flags, idx, ring[size], used_event`), then, 4-byte aligned, the used ring
//! (`flags, idx, ring[size] of {id, len}, avail_event`). Indices wrap at 2^16 as the spec
//! says; the entry of index `i` is at `i % size`.

use std::sync::atomic::{Ordering, fence};

use vhost::VringConfigData;
use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE, VRING_USED_F_NO_NOTIFY};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

use crate::memory::Mem;
use crate::{Context, HarnessError, Result};

/// One descriptor of a chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Buf {
    /// Guest-physical address.
    pub addr: u64,
    /// Length in bytes.
    pub len: u32,
    /// Device-writable.
    pub writable: bool,
}

/// Bytes the rings of a queue of `size` entries occupy.
pub fn ring_bytes(size: u16) -> u64 {
    let n = u64::from(size);
    let used = (16 * n + 6 + 2 * n).next_multiple_of(4);
    used + 6 + 8 * n
}

/// A split virtqueue, driver side.
#[derive(Debug)]
pub struct SplitRing {
    size: u16,
    desc: u64,
    avail: u64,
    used: u64,
    event_idx: bool,
    free: Vec<u16>,
    /// The descriptor ids of each outstanding chain, by head id.
    chains: Vec<Vec<u16>>,
    avail_idx: u16,
    last_used: u16,
    /// The avail index when the last kick decision was made.
    kicked_at: u16,
}

impl SplitRing {
    /// A ring of `size` entries (a power of two) at `base` in `mem`, zeroed.
    pub fn new(mem: &Mem, base: u64, size: u16, event_idx: bool) -> Result<Self> {
        if !size.is_power_of_two() {
            return Err(HarnessError(format!(
                "queue size {size} is not a power of two"
            )));
        }
        let n = u64::from(size);
        let avail = base + 16 * n;
        let used = (avail + 6 + 2 * n).next_multiple_of(4);
        let zeros = vec![0u8; usize::try_from(ring_bytes(size)).context("ring size")?];
        mem.write_slice(&zeros, GuestAddress(base))
            .context("zeroing the rings")?;
        Ok(SplitRing {
            size,
            desc: base,
            avail,
            used,
            event_idx,
            free: (0..size).rev().collect(),
            chains: vec![Vec::new(); usize::from(size)],
            avail_idx: 0,
            last_used: 0,
            kicked_at: 0,
        })
    }

    /// Entries in the ring.
    pub fn size(&self) -> u16 {
        self.size
    }

    /// Free descriptors.
    pub fn free_descriptors(&self) -> usize {
        self.free.len()
    }

    /// SET_VRING_ADDR data: vhost-user wants the VMM's *virtual* addresses of the rings.
    pub fn vring_config(&self, mem: &Mem) -> Result<VringConfigData> {
        let hva = |gpa: u64| -> Result<u64> {
            mem.get_host_address(GuestAddress(gpa))
                .map(|p| p as u64)
                .context("ring address outside guest RAM")
        };
        Ok(VringConfigData {
            queue_max_size: self.size,
            queue_size: self.size,
            flags: 0,
            desc_table_addr: hva(self.desc)?,
            used_ring_addr: hva(self.used)?,
            avail_ring_addr: hva(self.avail)?,
            log_addr: None,
        })
    }

    /// Publishes a chain of `bufs` (in order) and returns its head id.
    pub fn add_chain(&mut self, mem: &Mem, bufs: &[Buf]) -> Result<u16> {
        if bufs.is_empty() || bufs.len() > self.free.len() {
            return Err(HarnessError(format!(
                "cannot add a chain of {} descriptors with {} free",
                bufs.len(),
                self.free.len()
            )));
        }
        let ids: Vec<u16> = self.free.split_off(self.free.len() - bufs.len());
        let mut ids_iter = ids.iter().rev().copied().peekable();
        let mut order = Vec::with_capacity(ids.len());
        for buf in bufs {
            let Some(id) = ids_iter.next() else { break };
            let next = ids_iter.peek().copied();
            let mut flags = 0u16;
            if buf.writable {
                flags |= VRING_DESC_F_WRITE as u16;
            }
            if next.is_some() {
                flags |= VRING_DESC_F_NEXT as u16;
            }
            let mut raw = [0u8; 16];
            raw[..8].copy_from_slice(&buf.addr.to_le_bytes());
            raw[8..12].copy_from_slice(&buf.len.to_le_bytes());
            raw[12..14].copy_from_slice(&flags.to_le_bytes());
            raw[14..].copy_from_slice(&next.unwrap_or(0).to_le_bytes());
            mem.write_slice(&raw, GuestAddress(self.desc + 16 * u64::from(id)))
                .context("writing a descriptor")?;
            order.push(id);
        }
        let head = *order.first().context_none("empty chain")?;
        let slot = u64::from(self.avail_idx % self.size);
        mem.write_obj(head.to_le(), GuestAddress(self.avail + 4 + 2 * slot))
            .context("writing the avail ring")?;
        self.avail_idx = self.avail_idx.wrapping_add(1);
        // The descriptors and the ring entry must be visible before the index.
        fence(Ordering::Release);
        mem.store(
            self.avail_idx.to_le(),
            GuestAddress(self.avail + 2),
            Ordering::Release,
        )
        .context("publishing the avail index")?;
        if let Some(c) = self.chains.get_mut(usize::from(head)) {
            *c = order;
        }
        Ok(head)
    }

    /// Whether the device wants a kick for the chains added since the last call
    /// (`avail_event` with EVENT_IDX, `VRING_USED_F_NO_NOTIFY` without).
    pub fn needs_kick(&mut self, mem: &Mem) -> Result<bool> {
        fence(Ordering::SeqCst);
        let old = self.kicked_at;
        let new = self.avail_idx;
        self.kicked_at = new;
        if self.event_idx {
            let avail_event: u16 = mem
                .load(
                    GuestAddress(self.used + 4 + 8 * u64::from(self.size)),
                    Ordering::Acquire,
                )
                .context("reading avail_event")?;
            // vring_need_event(avail_event, new, old)
            Ok(new.wrapping_sub(avail_event).wrapping_sub(1) < new.wrapping_sub(old))
        } else {
            let flags: u16 = mem
                .load(GuestAddress(self.used), Ordering::Acquire)
                .context("reading the used flags")?;
            Ok(flags & VRING_USED_F_NO_NOTIFY as u16 == 0)
        }
    }

    /// Takes one used element: (head id, bytes written), and frees its descriptors. With
    /// EVENT_IDX, asks for an interrupt at the next used element.
    pub fn pop_used(&mut self, mem: &Mem) -> Result<Option<(u16, u32)>> {
        let used_idx: u16 = mem
            .load(GuestAddress(self.used + 2), Ordering::Acquire)
            .context("reading the used index")?;
        if used_idx == self.last_used {
            return Ok(None);
        }
        let elem = self.used + 4 + 8 * u64::from(self.last_used % self.size);
        let id: u32 = mem
            .read_obj(GuestAddress(elem))
            .context("reading a used element")?;
        let len: u32 = mem
            .read_obj(GuestAddress(elem + 4))
            .context("reading a used element")?;
        self.last_used = self.last_used.wrapping_add(1);
        if self.event_idx {
            mem.store(
                self.last_used.to_le(),
                GuestAddress(self.avail + 4 + 2 * u64::from(self.size)),
                Ordering::Release,
            )
            .context("writing used_event")?;
            fence(Ordering::SeqCst);
        }
        let head = u16::try_from(id)
            .ok()
            .filter(|&h| h < self.size)
            .context_none("the device returned an id outside the ring")?;
        let chain = self
            .chains
            .get_mut(usize::from(head))
            .map(std::mem::take)
            .unwrap_or_default();
        if chain.is_empty() {
            return Err(HarnessError(format!(
                "the device returned head {head}, which is not outstanding"
            )));
        }
        self.free.extend(chain);
        Ok(Some((head, len)))
    }
}

/// `Option` to harness error.
trait OptionContext<T> {
    fn context_none(self, what: &str) -> Result<T>;
}

impl<T> OptionContext<T> for Option<T> {
    fn context_none(self, what: &str) -> Result<T> {
        self.ok_or_else(|| HarnessError(what.to_owned()))
    }
}
