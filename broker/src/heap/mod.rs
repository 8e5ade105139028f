//! The broker's heaps: where buffer memory comes from.
//!
//! Three kinds of heap back every buffer the broker hands out:
//!
//! - [`MemfdHeap`]: a sealed, preallocated memfd (always available; hugetlb variants when the
//!   huge-page pool has pages). Not a dmabuf.
//! - [`UdmabufHeap`]: a memfd turned into a dmabuf by `/dev/udmabuf`. [`UdmabufDevice`] also builds
//!   dmabufs over lists of memfd ranges (guest-RAM placement, arenas).
//! - [`DmaHeap`]: a `/dev/dma_heap/<name>` heap (`system`, CMA, ...).
//!
//! Each implements [`Heap`]: it describes itself in the solver's vocabulary ([`HeapInfo`]) and
//! allocates [`HeapBuffer`]s, which own their file descriptors and can be mapped ([`Mapping`]).
//! CPU access to dmabufs is bracketed by [`CpuAccess`]. [`discover`] finds the heaps of this
//! machine and explains the ones it cannot offer ([`DiscoveryReport`]). [`BufferPool`] recycles
//! freed buffers within one owner.
//!
//! The hand-written kernel interfaces (ioctls no crate provides) live in `uapi.rs`.
//!
//! Tests that need `/dev/udmabuf`, `/dev/dma_heap/system` or huge pages skip with a message on
//! hosts without them; `guest-tests.sh` next to this file runs the whole suite inside the
//! Debian guest kernel where they run for real.

use std::fmt;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::PathBuf;
use std::sync::Arc;

use bufbroker_proto::HeapInfo;
use rustix::io::Errno;

mod discover;
mod dma_heap;
mod dmabuf;
mod mapping;
mod memfd;
mod pool;
mod uapi;
mod udmabuf;

#[cfg(test)]
pub(crate) mod test_util;

pub use discover::{
    DiscoveryConfig, DiscoveryReport, HeapReportEntry, HeapStatus, Heaps, discover,
};
pub use dma_heap::DmaHeap;
pub use dmabuf::{CpuAccess, SyncAccess, is_dmabuf};
pub use mapping::Mapping;
pub(crate) use memfd::BUFFER_SEALS;
pub use memfd::{HugePageSize, MemfdHeap};
pub use pool::{BufferPool, PoolLimits};
pub use udmabuf::{UdmabufDevice, UdmabufHeap, UdmabufLimits, UdmabufRange};

/// Everything that can go wrong in the heap module.
///
/// Messages say what failed; the underlying OS error is the [`source`](std::error::Error::source).
#[derive(Debug, thiserror::Error)]
pub enum HeapError {
    /// A zero-byte buffer was requested.
    #[error("buffer size must not be zero")]
    ZeroSize,
    /// Rounding the size up to the heap's page size overflows.
    #[error("buffer size {size} cannot be rounded up to a multiple of {granularity} bytes")]
    SizeOverflow {
        /// Requested size in bytes.
        size: u64,
        /// The heap's allocation granularity.
        granularity: u64,
    },
    /// The request exceeds what the heap can allocate at once.
    #[error("{size} bytes exceed the {limit}-byte limit of heap {heap}")]
    TooLarge {
        /// Heap name.
        heap: String,
        /// Requested (rounded) size.
        size: u64,
        /// The heap's limit.
        limit: u64,
    },
    /// The size does not fit the address space.
    #[error("{size} bytes do not fit in this process's address space")]
    AddressSpace {
        /// Requested size.
        size: u64,
    },
    /// `memfd_create` failed.
    #[error("creating a memfd for heap {heap} failed")]
    CreateMemfd {
        /// Heap name.
        heap: String,
        /// The OS error.
        #[source]
        source: Errno,
    },
    /// `ftruncate` of a new memfd failed.
    #[error("setting the memfd size to {size} bytes failed")]
    Resize {
        /// Size in bytes.
        size: u64,
        /// The OS error.
        #[source]
        source: Errno,
    },
    /// `fallocate` failed: the backing tmpfs or huge-page pool cannot hold the buffer.
    #[error("preallocating {size} bytes failed")]
    Preallocate {
        /// Size in bytes.
        size: u64,
        /// The OS error (`ENOSPC` when tmpfs or the huge-page pool is full).
        #[source]
        source: Errno,
    },
    /// Adding seals to a memfd failed.
    #[error("sealing the memfd failed")]
    Seal(#[source] Errno),
    /// Reading the seals of a memfd failed.
    #[error("reading the seals of a memfd failed")]
    GetSeals(#[source] Errno),
    /// Opening a device node failed.
    #[error("opening {path} failed")]
    Open {
        /// The device path.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: Errno,
    },
    /// Reading a sysfs/procfs value failed or gave nonsense.
    #[error("reading {path} failed")]
    ReadParameter {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        #[source]
        source: std::io::Error,
    },
    /// A range given to udmabuf is invalid.
    #[error("udmabuf range {index} is invalid: {reason}")]
    InvalidRange {
        /// Position in the list.
        index: usize,
        /// Why.
        reason: String,
    },
    /// More ranges than `/sys/module/udmabuf/parameters/list_limit` allows.
    #[error("{count} ranges exceed the udmabuf list limit of {limit}")]
    TooManyRanges {
        /// Ranges given.
        count: usize,
        /// The module's `list_limit`.
        limit: u32,
    },
    /// `UDMABUF_CREATE` / `UDMABUF_CREATE_LIST` failed.
    #[error("creating a udmabuf over {ranges} range(s), {size} bytes in total, failed")]
    CreateUdmabuf {
        /// Number of ranges.
        ranges: usize,
        /// Total size in bytes.
        size: u64,
        /// The OS error.
        #[source]
        source: Errno,
    },
    /// `DMA_HEAP_IOCTL_ALLOC` failed.
    #[error("allocating {size} bytes from dma-heap {heap} failed")]
    DmaHeapAlloc {
        /// Heap name.
        heap: String,
        /// Size in bytes.
        size: u64,
        /// The OS error.
        #[source]
        source: Errno,
    },
    /// A dma-heap name without known properties was opened without a description.
    #[error("dma-heap {0} has no known properties; configure them explicitly to use it")]
    UnknownDmaHeap(String),
    /// `mmap` failed.
    #[error("mapping {len} bytes failed")]
    Map {
        /// Length in bytes.
        len: u64,
        /// The OS error.
        #[source]
        source: Errno,
    },
    /// A mapping was asked for outside the buffer or at an unaligned offset.
    #[error(
        "cannot map {len} bytes at offset {offset} of a {size}-byte buffer (offsets are page-aligned)"
    )]
    MapRange {
        /// Requested offset.
        offset: u64,
        /// Requested length.
        len: u64,
        /// Buffer size.
        size: u64,
    },
    /// A read or write fell outside a mapping.
    #[error("{len} bytes at offset {offset} lie outside the {size}-byte mapping")]
    OutOfBounds {
        /// Offset of the access.
        offset: usize,
        /// Length of the access.
        len: usize,
        /// Mapping size.
        size: usize,
    },
    /// A write was attempted through a read-only mapping.
    #[error("the mapping is read-only")]
    ReadOnly,
    /// A heap that carves buffers from larger memory (an arena) found no room.
    #[error("no memory for {size} bytes: {reason}")]
    NoRoom {
        /// Bytes asked for.
        size: u64,
        /// Why not (window full, map refused).
        reason: String,
    },
    /// `DMA_BUF_IOCTL_SYNC` failed.
    #[error("{what} of CPU access to a dmabuf failed")]
    Sync {
        /// "start" or "end".
        what: &'static str,
        /// The OS error.
        #[source]
        source: Errno,
    },
}

/// A heap the broker can allocate buffers from.
pub trait Heap: Send + Sync + fmt::Debug {
    /// The heap described in the solver's vocabulary.
    fn info(&self) -> &HeapInfo;

    /// Allocates a buffer of at least `size` bytes (rounded up to the heap's page size; the
    /// buffer's [`HeapBuffer::size`] is the real size). The memory is backed when this returns:
    /// a full heap fails here, never later with a page fault.
    fn allocate(&self, size: u64) -> Result<HeapBuffer, HeapError>;

    /// Allocation granularity in bytes (a power of two): sizes are rounded up to it.
    fn granularity(&self) -> u64 {
        page_size()
    }

    /// Whether the recycling pool may serve this heap's allocations (false for heaps that
    /// carve memory out of something larger: they recycle it themselves).
    fn recyclable(&self) -> bool {
        true
    }
}

/// The file descriptors behind a buffer.
#[derive(Debug)]
enum Backing {
    /// A sealed memfd.
    Memfd(OwnedFd),
    /// A sealed memfd and the udmabuf made from it.
    Udmabuf { memfd: OwnedFd, dmabuf: OwnedFd },
    /// A dmabuf with no memfd behind it (dma-heap).
    DmaBuf(OwnedFd),
    /// Part of a larger memfd (an arena, guest RAM).
    Carved(Carved),
}

/// A range of a memfd that holds (part of) a buffer.
#[derive(Debug, Clone)]
pub struct MemfdRange {
    /// The memfd (shared with the other buffers carved from it).
    pub memfd: Arc<OwnedFd>,
    /// Page-aligned offset of the range in the memfd.
    pub offset: u64,
    /// Page-aligned length.
    pub len: u64,
}

/// Where in an arena a carved buffer lies (see `session::arena`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ArenaSlot {
    /// The arena's id (unique in the process).
    pub arena: u64,
    /// Offset of the buffer in the arena memfd.
    pub offset: u64,
    /// Bytes of the arena the buffer occupies (page-rounded).
    pub len: u64,
}

/// Memory carved out of something larger than the buffer: a range of an arena memfd, or
/// pages of guest RAM (a scatter-gather list over the VMM's guest-memory memfds). Such a
/// buffer is never recycled by the pool: its memory goes back to where it came from when the
/// buffer is dropped (`on_drop`).
pub struct Carved {
    /// The first memfd range.
    pub first: MemfdRange,
    /// More ranges, concatenated after `first` (guest RAM only).
    pub rest: Vec<MemfdRange>,
    /// A dmabuf over exactly the ranges (udmabuf), where `/dev/udmabuf` exists.
    pub dmabuf: Option<OwnedFd>,
    /// Whether, without a dmabuf, the first memfd (with the range's offset) may be handed to
    /// other parties. It exposes the whole memfd: true for arenas configured so, never for
    /// guest RAM.
    pub share_memfd: bool,
    /// Set for arena slices.
    pub arena: Option<ArenaSlot>,
    /// Runs once when the buffer is dropped, after its dmabuf is closed (returns the range).
    pub on_drop: Option<Box<dyn FnOnce() + Send + Sync>>,
}

impl fmt::Debug for Carved {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Carved")
            .field("first", &self.first)
            .field("rest", &self.rest.len())
            .field("dmabuf", &self.dmabuf)
            .field("share_memfd", &self.share_memfd)
            .field("arena", &self.arena)
            .finish_non_exhaustive()
    }
}

impl Drop for Carved {
    fn drop(&mut self) {
        drop(self.dmabuf.take());
        if let Some(f) = self.on_drop.take() {
            f();
        }
    }
}

/// One allocation: owns its file descriptors (closed on drop), knows its size and heap.
#[derive(Debug)]
pub struct HeapBuffer {
    backing: Backing,
    size: u64,
    heap: Arc<str>,
}

impl HeapBuffer {
    fn new(backing: Backing, size: u64, heap: Arc<str>) -> Self {
        HeapBuffer {
            backing,
            size,
            heap,
        }
    }

    /// A buffer of `size` bytes over carved memory, credited to the heap called `heap`.
    pub fn carved(carved: Carved, size: u64, heap: &str) -> Self {
        HeapBuffer::new(Backing::Carved(carved), size, Arc::from(heap))
    }

    /// Size in bytes (the requested size rounded up to the heap's page size).
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Name of the heap it came from.
    pub fn heap_name(&self) -> &str {
        &self.heap
    }

    /// The memfd, for memfd and udmabuf buffers (what SHMEM_MAP and host clients get when no
    /// dmabuf is needed). For carved buffers the memfd they were carved from, whose offset 0
    /// is not the buffer's first byte: see [`HeapBuffer::memfd_range`].
    pub fn memfd(&self) -> Option<BorrowedFd<'_>> {
        match &self.backing {
            Backing::Memfd(fd) | Backing::Udmabuf { memfd: fd, .. } => Some(fd.as_fd()),
            Backing::Carved(c) => Some(c.first.memfd.as_fd()),
            Backing::DmaBuf(_) => None,
        }
    }

    /// The memfd and the offset of the buffer's first byte in it, when the buffer is one
    /// contiguous range of a memfd.
    pub fn memfd_range(&self) -> Option<(BorrowedFd<'_>, u64)> {
        match &self.backing {
            Backing::Memfd(fd) | Backing::Udmabuf { memfd: fd, .. } => Some((fd.as_fd(), 0)),
            Backing::Carved(c) if c.rest.is_empty() => {
                Some((c.first.memfd.as_fd(), c.first.offset))
            }
            Backing::Carved(_) | Backing::DmaBuf(_) => None,
        }
    }

    /// The dmabuf, for udmabuf and dma-heap buffers (and carved ones where udmabuf exists).
    pub fn dmabuf(&self) -> Option<BorrowedFd<'_>> {
        match &self.backing {
            Backing::Udmabuf { dmabuf: fd, .. } | Backing::DmaBuf(fd) => Some(fd.as_fd()),
            Backing::Carved(c) => c.dmabuf.as_ref().map(AsFd::as_fd),
            Backing::Memfd(_) => None,
        }
    }

    /// The main descriptor: the dmabuf when there is one, else the memfd (for carved buffers
    /// the one they were carved from). To hand a buffer to someone, use
    /// [`HeapBuffer::share_fd`], which knows what may leave the broker.
    pub fn fd(&self) -> BorrowedFd<'_> {
        match &self.backing {
            Backing::Udmabuf { dmabuf: fd, .. } | Backing::DmaBuf(fd) | Backing::Memfd(fd) => {
                fd.as_fd()
            }
            Backing::Carved(c) => c
                .dmabuf
                .as_ref()
                .map_or_else(|| c.first.memfd.as_fd(), AsFd::as_fd),
        }
    }

    /// The descriptor to give a peer (host client, VMM) and the offset of the buffer's first
    /// byte in it: `(fd, 0)` for buffers with their own file; for carved buffers their dmabuf,
    /// else the memfd they were carved from with the buffer's offset when that may be shared
    /// (an arena configured so); `None` when nothing may be shared (guest RAM without
    /// udmabuf: its memfd is the guest's whole memory).
    pub fn share_fd(&self) -> Option<(BorrowedFd<'_>, u64)> {
        match &self.backing {
            Backing::Carved(c) => match &c.dmabuf {
                Some(fd) => Some((fd.as_fd(), 0)),
                None if c.share_memfd && c.rest.is_empty() => {
                    Some((c.first.memfd.as_fd(), c.first.offset))
                }
                None => None,
            },
            _ => Some((self.fd(), 0)),
        }
    }

    /// Where in an arena the buffer lies, for arena slices.
    pub fn arena_slot(&self) -> Option<ArenaSlot> {
        match &self.backing {
            Backing::Carved(c) => c.arena,
            _ => None,
        }
    }

    /// Whether the pool may keep the buffer for reuse (not for carved memory).
    pub fn recyclable(&self) -> bool {
        !matches!(self.backing, Backing::Carved(_))
    }

    /// Maps the whole buffer, shared, read-only or read-write. The memfd is mapped when there
    /// is one (cached, like the memfd itself), else the dmabuf (with the heap's cache mode).
    /// Bracket CPU access to a dmabuf with [`HeapBuffer::begin_cpu_access`].
    pub fn map(&self, writable: bool) -> Result<Mapping, HeapError> {
        self.map_range(0, self.size, writable)
    }

    /// Maps `len` bytes from `offset` (a multiple of the page size), like [`HeapBuffer::map`].
    /// A carved buffer maps its dmabuf, or its memfd range; one over several ranges without a
    /// dmabuf cannot be mapped in one piece ([`HeapError::MapRange`]).
    pub fn map_range(&self, offset: u64, len: u64, writable: bool) -> Result<Mapping, HeapError> {
        let inside = offset.checked_add(len).is_some_and(|end| end <= self.size);
        if !inside || offset % page_size() != 0 {
            return Err(HeapError::MapRange {
                offset,
                len,
                size: self.size,
            });
        }
        if let Backing::Carved(c) = &self.backing
            && c.dmabuf.is_none()
        {
            // Only a single range can be mapped in one piece.
            let (fd, base) = self.memfd_range().ok_or(HeapError::MapRange {
                offset,
                len,
                size: self.size,
            })?;
            return Mapping::new(fd, base.saturating_add(offset), len, writable);
        }
        let fd = match &self.backing {
            Backing::Carved(_) => self.fd(),
            _ => self.memfd().unwrap_or_else(|| self.fd()),
        };
        Mapping::new(fd, offset, len, writable)
    }

    /// Starts CPU access (`DMA_BUF_IOCTL_SYNC` START) when the buffer is a dmabuf; the returned
    /// guard ends it on drop. A no-op guard for plain memfds, which need no sync.
    pub fn begin_cpu_access(&self, access: SyncAccess) -> Result<CpuAccess<'_>, HeapError> {
        match self.dmabuf() {
            Some(fd) => CpuAccess::begin(fd, access),
            None => Ok(CpuAccess::none()),
        }
    }
}

pub use bufbroker_proto::wire::error_chain;

/// The system page size in bytes.
pub(crate) fn page_size() -> u64 {
    // usize → u64 never truncates on the platforms Rust supports.
    rustix::param::page_size() as u64
}

/// `size` rounded up to a multiple of `granularity` (a power of two); rejects zero and overflow.
pub(crate) fn round_size(size: u64, granularity: u64) -> Result<u64, HeapError> {
    if size == 0 {
        return Err(HeapError::ZeroSize);
    }
    let mask = granularity.saturating_sub(1);
    size.checked_add(mask)
        .map(|s| s & !mask)
        .ok_or(HeapError::SizeOverflow { size, granularity })
}

/// Rejects sizes above a heap's `max_size` (0 = no limit).
pub(crate) fn check_limit(info: &HeapInfo, size: u64) -> Result<(), HeapError> {
    if info.max_size != 0 && size > info.max_size {
        return Err(HeapError::TooLarge {
            heap: info.name.clone(),
            size,
            limit: info.max_size,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_size_rounds_up_to_the_page() {
        assert_eq!(round_size(1, 4096).unwrap(), 4096);
        assert_eq!(round_size(4096, 4096).unwrap(), 4096);
        assert_eq!(round_size(4097, 4096).unwrap(), 8192);
    }

    #[test]
    fn round_size_zero_returns_zero_size() {
        assert!(matches!(round_size(0, 4096), Err(HeapError::ZeroSize)));
    }

    #[test]
    fn round_size_near_max_returns_overflow() {
        let err = round_size(u64::MAX - 10, 4096).unwrap_err();
        assert!(matches!(err, HeapError::SizeOverflow { .. }));
        assert_eq!(
            err.to_string(),
            format!(
                "buffer size {} cannot be rounded up to a multiple of 4096 bytes",
                u64::MAX - 10
            )
        );
    }
}
