//! Arenas: host-window buffers carved from large memfds mapped into the window once.
//!
//! Every SHMEM_MAP makes QEMU add a memory region and resend SET_MEM_TABLE to every vhost-user
//! device of the VM, so one map per buffer is slow. A guest session instead maps a sealed,
//! preallocated memfd *arena* (`[arenas] size`, 16 MiB by default, or the buffer's size when
//! that is larger) into its window once and carves buffers from it with a first-fit
//! sub-allocator. A buffer is one page-aligned range of the arena memfd; where `/dev/udmabuf`
//! exists it also gets a dmabuf over exactly that range, which is what host clients and other
//! devices receive. Without udmabuf (`mode = "always"`) its shareable descriptor is the arena
//! memfd plus the buffer's offset.
//!
//! Lifetime: a carved buffer's memory returns to its arena when the buffer is dropped (freed,
//! owner reset or gone); an arena is unmapped when its last buffer goes, unless it is the one
//! empty arena `keep_warm` keeps for the next allocation (unmapped when the session ends).
//!
//! Accounting: quotas count buffer bytes (page-rounded), not arena slack. The slack is bounded
//! by the window, which bounds every arena of the session.
//!
//! Which buffers: plans on the `memfd` or `udmabuf` heap that need no contiguous memory.
//! dma-heap buffers, contiguous plans and buffers imported from other owners get a SHMEM_MAP
//! of their own.

use std::collections::BTreeMap;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use bufbroker_proto::{HeapInfo, Plan};

use crate::config::{ArenaConfig, ArenaMode};
use crate::exposure::GuestExposure;
use crate::heap::{
    ArenaSlot, BUFFER_SEALS, Carved, Heap, HeapBuffer, HeapError, MemfdHeap, MemfdRange,
    UdmabufDevice, UdmabufRange, error_chain, page_size, round_size,
};
use crate::vhost::{WindowAllocator, WindowRange};

/// Arena ids, unique in the process (a buffer's [`ArenaSlot`] names its arena).
static NEXT_ARENA: AtomicU64 = AtomicU64::new(1);

/// One mapped arena.
struct Arena {
    memfd: Arc<OwnedFd>,
    window_offset: u64,
    size: u64,
    slices: WindowAllocator,
    live: usize,
}

/// What the arenas of a session did so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ArenaStats {
    /// Arenas mapped now.
    pub arenas: usize,
    /// Bytes of window they occupy.
    pub mapped_bytes: u64,
    /// Buffers carved from them now.
    pub buffers: usize,
    /// SHMEM_MAPs of arenas since the session started.
    pub maps: u64,
    /// SHMEM_UNMAPs of arenas since the session started.
    pub unmaps: u64,
}

/// The arenas of one guest session.
pub struct Arenas {
    config: ArenaConfig,
    exposure: Arc<dyn GuestExposure>,
    window: Arc<Mutex<WindowAllocator>>,
    udmabuf: Option<Arc<UdmabufDevice>>,
    memfd: MemfdHeap,
    arenas: Mutex<BTreeMap<u64, Arena>>,
    maps: AtomicU64,
    unmaps: AtomicU64,
}

impl std::fmt::Debug for Arenas {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Arenas")
            .field("config", &self.config)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section here leaves the records consistent.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Arenas {
    /// The arenas of a session whose window is `window` (shared with its dedicated maps).
    pub fn new(
        config: ArenaConfig,
        exposure: Arc<dyn GuestExposure>,
        window: Arc<Mutex<WindowAllocator>>,
        udmabuf: Option<Arc<UdmabufDevice>>,
    ) -> Arc<Self> {
        Arc::new(Arenas {
            config,
            exposure,
            window,
            udmabuf,
            memfd: MemfdHeap::named("arena"),
            arenas: Mutex::new(BTreeMap::new()),
            maps: AtomicU64::new(0),
            unmaps: AtomicU64::new(0),
        })
    }

    /// Whether buffers of `plan` are carved from arenas (see the module docs).
    pub fn eligible(&self, plan: &Plan) -> bool {
        let mode_allows = match self.config.mode {
            ArenaMode::Never => false,
            ArenaMode::Auto => self.udmabuf.is_some(),
            ArenaMode::Always => true,
        };
        mode_allows
            && self.exposure.window_size() > 0
            && !plan.contiguous
            && matches!(plan.heap.as_str(), "memfd" | "udmabuf")
    }

    /// A heap carving buffers for `base` (the plan's heap: its name and limits) from arenas.
    pub fn heap(self: &Arc<Self>, base: &HeapInfo) -> ArenaHeap {
        ArenaHeap {
            arenas: self.clone(),
            info: base.clone(),
        }
    }

    /// The window range of `memory` if it was carved from one of these arenas.
    pub fn window_range(&self, memory: &HeapBuffer) -> Option<(u64, u64)> {
        let slot = memory.arena_slot()?;
        let arenas = lock(&self.arenas);
        let arena = arenas.get(&slot.arena)?;
        Some((arena.window_offset.checked_add(slot.offset)?, memory.size()))
    }

    /// Counters and current state.
    pub fn stats(&self) -> ArenaStats {
        let arenas = lock(&self.arenas);
        ArenaStats {
            arenas: arenas.len(),
            mapped_bytes: arenas.values().map(|a| a.size).sum(),
            buffers: arenas.values().map(|a| a.live).sum(),
            maps: self.maps.load(Ordering::Relaxed),
            unmaps: self.unmaps.load(Ordering::Relaxed),
        }
    }

    /// A buffer of `size` bytes (page-rounded) from an arena, mapping a new arena if none has
    /// room.
    fn carve(self: &Arc<Self>, heap: &str, size: u64) -> Result<HeapBuffer, HeapError> {
        let len = round_size(size, page_size())?;
        let found = lock(&self.arenas).iter_mut().find_map(|(&id, arena)| {
            let range = arena.slices.allocate(len).ok()?;
            arena.live += 1;
            Some((id, arena.memfd.clone(), range.offset))
        });
        let (arena, memfd, offset) = match found {
            Some(found) => found,
            None => self.map_new_arena(len)?,
        };
        let slot = ArenaSlot { arena, offset, len };
        let dmabuf = match &self.udmabuf {
            None => None,
            Some(device) => match device.create(UdmabufRange {
                memfd: memfd.as_fd(),
                offset,
                size: len,
            }) {
                Ok(fd) => Some(fd),
                Err(e) => {
                    self.release(slot);
                    return Err(e);
                }
            },
        };
        let arenas = self.clone();
        let carved = Carved {
            first: MemfdRange { memfd, offset, len },
            rest: Vec::new(),
            dmabuf,
            share_memfd: self.config.mode == ArenaMode::Always,
            arena: Some(slot),
            on_drop: Some(Box::new(move || arenas.release(slot))),
        };
        Ok(HeapBuffer::carved(carved, len, heap))
    }

    /// Maps a new arena with room for `len` bytes and takes them; returns the arena's id and
    /// memfd and the offset of the slice.
    fn map_new_arena(&self, len: u64) -> Result<(u64, Arc<OwnedFd>, u64), HeapError> {
        let wanted = round_size(self.config.size.max(len), page_size())?;
        let no_room = |reason: String| HeapError::NoRoom { size: len, reason };
        let (window_offset, size) = {
            let mut window = lock(&self.window);
            // A full-size arena if it fits, else one just large enough for this buffer.
            let range = window
                .allocate(wanted)
                .or_else(|_| window.allocate(len))
                .map_err(|_| {
                    no_room(format!(
                        "the shared-memory window of {} bytes has no free range of {len} bytes \
                         ({} bytes in use)",
                        self.exposure.window_size(),
                        window.size() - window.free_bytes()
                    ))
                })?;
            (range.offset, range.len)
        };
        let release_window = || release_range(&self.window, window_offset, size);
        let memfd = match self.memfd.create_memfd(size, BUFFER_SEALS) {
            Ok(fd) => Arc::new(fd),
            Err(e) => {
                release_window();
                return Err(e);
            }
        };
        if let Err(e) = self
            .exposure
            .map_window(memfd.as_fd(), 0, window_offset, size, true)
        {
            release_window();
            return Err(no_room(format!(
                "mapping an arena of {size} bytes failed: {}",
                error_chain(&e)
            )));
        }
        self.maps.fetch_add(1, Ordering::Relaxed);
        let mut slices = WindowAllocator::new(size);
        let Ok(WindowRange { offset, .. }) = slices.allocate(len) else {
            // Cannot happen (the arena holds at least `len`), but never leave it mapped.
            self.unmap(window_offset, size);
            return Err(no_room("the new arena is too small".into()));
        };
        let id = NEXT_ARENA.fetch_add(1, Ordering::Relaxed);
        log::debug!("arena {id}: {size} bytes mapped at window offset {window_offset:#x}");
        lock(&self.arenas).insert(
            id,
            Arena {
                memfd: memfd.clone(),
                window_offset,
                size,
                slices,
                live: 1,
            },
        );
        Ok((id, memfd, offset))
    }

    /// Gives a slice back; unmaps its arena if that was the last slice (and it is not kept
    /// warm).
    fn release(&self, slot: ArenaSlot) {
        let emptied = {
            let mut arenas = lock(&self.arenas);
            let Some(arena) = arenas.get_mut(&slot.arena) else {
                return;
            };
            release_in(&mut arena.slices, slot.offset, slot.len);
            arena.live = arena.live.saturating_sub(1);
            let empty = arena.live == 0;
            // Keep it when warm arenas are wanted and no other empty one is kept already.
            let keep = self.config.keep_warm
                && !arenas
                    .iter()
                    .any(|(&id, a)| id != slot.arena && a.live == 0);
            if empty && !keep {
                arenas.remove(&slot.arena)
            } else {
                None
            }
        };
        if let Some(arena) = emptied {
            log::debug!("arena {}: last buffer gone, unmapping", slot.arena);
            self.unmap(arena.window_offset, arena.size);
        }
    }

    fn unmap(&self, window_offset: u64, size: u64) {
        if let Err(e) = self.exposure.unmap_window(window_offset, size) {
            log::debug!(
                "unmapping the arena at {window_offset:#x}+{size:#x} failed: {}",
                error_chain(&e)
            );
        }
        release_range(&self.window, window_offset, size);
        self.unmaps.fetch_add(1, Ordering::Relaxed);
    }
}

impl Drop for Arenas {
    fn drop(&mut self) {
        // Only empty arenas can remain (every slice holds a reference): the warm one.
        let arenas = std::mem::take(&mut *lock(&self.arenas));
        for arena in arenas.into_values() {
            self.unmap(arena.window_offset, arena.size);
        }
    }
}

/// A [`Heap`] whose buffers are carved from a session's arenas; named and limited like the
/// plan's heap. Never recycled by the pool: the arena is the recycling.
#[derive(Debug)]
pub struct ArenaHeap {
    arenas: Arc<Arenas>,
    info: HeapInfo,
}

impl Heap for ArenaHeap {
    fn info(&self) -> &HeapInfo {
        &self.info
    }

    fn allocate(&self, size: u64) -> Result<HeapBuffer, HeapError> {
        let rounded = round_size(size, page_size())?;
        if self.info.max_size != 0 && rounded > self.info.max_size {
            return Err(HeapError::TooLarge {
                heap: self.info.name.clone(),
                size: rounded,
                limit: self.info.max_size,
            });
        }
        self.arenas.carve(&self.info.name, size)
    }

    fn recyclable(&self) -> bool {
        false
    }
}

/// Returns `offset..offset+len` to `allocator`; a range it does not hold is a bug, logged.
fn release_in(allocator: &mut WindowAllocator, offset: u64, len: u64) {
    if let Err(e) = allocator.release(WindowRange { offset, len }) {
        log::error!("releasing range {offset:#x}+{len:#x}: {e}");
    }
}

/// [`release_in`] on a shared window allocator.
pub(super) fn release_range(window: &Mutex<WindowAllocator>, offset: u64, len: u64) {
    release_in(&mut lock(window), offset, len);
}
