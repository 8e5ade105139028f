//! DMA mappings of broker buffers: an fd + offset + length, mmapped into this process and
//! mapped into a container's IOMMU at an IOVA the device's constraints allow. Dropping the
//! [`DmaMapping`] unmaps the IOVA before the memory is unmapped.

use std::io;
use std::os::fd::BorrowedFd;
use std::ptr::NonNull;
use std::sync::{Arc, Mutex, MutexGuard};

use bufbroker_proto::MemoryConstraints;
use rustix::mm::{MapFlags, ProtFlags};
use thiserror::Error;

use crate::device::Container;
use crate::info::IommuInfo;
use crate::iova::{IovaAllocator, IovaError};

/// Errors mapping buffers for DMA.
#[derive(Debug, Error)]
pub enum DmaError {
    /// The container's DMA mapping limit is reached.
    #[error(
        "DMA mapping limit reached: the container allows {limit} mappings (vfio_iommu_type1 \
         dma_entry_limit) and all are in use; unmap a buffer first"
    )]
    LimitReached {
        /// Mappings this space may hold.
        limit: u32,
    },
    /// No IOVA is free where the device can reach.
    #[error("no IOVA for the buffer")]
    Iova(#[from] IovaError),
    /// Offset or length not a multiple of the IOMMU page.
    #[error("offset {offset:#x} and length {len:#x} must be multiples of the IOMMU page {page:#x}")]
    Unaligned {
        /// Offset into the fd.
        offset: u64,
        /// Length.
        len: u64,
        /// IOMMU page size.
        page: u64,
    },
    /// The buffer could not be mmapped.
    #[error("cannot mmap {len:#x} bytes of the buffer at offset {offset:#x}")]
    Mmap {
        /// Offset into the fd.
        offset: u64,
        /// Length.
        len: u64,
        /// The kernel's error.
        #[source]
        source: io::Error,
    },
    /// `VFIO_IOMMU_MAP_DMA` failed.
    #[error("VFIO_IOMMU_MAP_DMA of {len:#x} bytes at IOVA {iova:#x} failed")]
    Map {
        /// IOVA.
        iova: u64,
        /// Length.
        len: u64,
        /// The kernel's error.
        #[source]
        source: io::Error,
    },
    /// A CPU access through the mapping would leave it.
    #[error("access of {len} bytes at {offset:#x} leaves the {size:#x}-byte mapping")]
    OutOfBounds {
        /// Offset into the mapping.
        offset: u64,
        /// Bytes accessed.
        len: usize,
        /// Mapping size.
        size: u64,
    },
}

#[derive(Debug)]
struct State {
    iova: IovaAllocator,
    mapped: u32,
}

/// Where one device's buffers are mapped: a container plus an IOVA allocator over the
/// ranges the device's constraints allow, and a count against the container's DMA mapping
/// limit.
///
/// The limit is the `dma_avail` the IOMMU reported when the space was made; other spaces of
/// the same container share the kernel's count, and the kernel's own refusal (ENOSPC) is
/// reported as the same [`DmaError::LimitReached`].
#[derive(Debug)]
pub struct DmaSpace {
    container: Arc<Container>,
    state: Mutex<State>,
    limit: Option<u32>,
    page: u64,
}

impl DmaSpace {
    /// A space for a device with `memory` constraints (its derived participant's) in
    /// `container`, whose IOMMU reported `iommu`.
    pub fn new(
        container: Arc<Container>,
        memory: &MemoryConstraints,
        iommu: &IommuInfo,
    ) -> Arc<DmaSpace> {
        let page = iommu.min_page_size();
        Arc::new(DmaSpace {
            container,
            state: Mutex::new(State {
                iova: IovaAllocator::for_constraints(memory, page),
                mapped: 0,
            }),
            limit: iommu.dma_avail,
            page,
        })
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves consistent state (every update is one
        // statement), so a poisoned lock is used as is.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Mappings currently held.
    pub fn mapped(&self) -> u32 {
        self.state().mapped
    }

    /// The mapping limit, if the IOMMU reported one.
    pub fn limit(&self) -> Option<u32> {
        self.limit
    }

    /// The IOMMU page size: offsets and lengths must be multiples of it.
    pub fn page(&self) -> u64 {
        self.page
    }

    /// Maps `len` bytes of `fd` at `offset` (both multiples of [`page`](Self::page)) for
    /// DMA, at an IOVA inside the device's allowed window.
    pub fn map(
        self: &Arc<Self>,
        fd: BorrowedFd<'_>,
        offset: u64,
        len: u64,
    ) -> Result<DmaMapping, DmaError> {
        if len == 0 || offset % self.page != 0 || len % self.page != 0 {
            return Err(DmaError::Unaligned {
                offset,
                len,
                page: self.page,
            });
        }
        let mmap_err = |source| DmaError::Mmap {
            offset,
            len,
            source,
        };
        let size =
            usize::try_from(len).map_err(|_| mmap_err(io::ErrorKind::InvalidInput.into()))?;
        let iova = {
            let mut st = self.state();
            if let Some(limit) = self.limit {
                if st.mapped >= limit {
                    return Err(DmaError::LimitReached { limit });
                }
            }
            let iova = st.iova.alloc(len)?;
            st.mapped += 1;
            iova
        };
        let release = |space: &DmaSpace| {
            let mut st = space.state();
            st.iova.free(iova, len);
            st.mapped -= 1;
        };
        // SAFETY: a new shared mapping at an address the kernel chooses, so no existing
        // memory is replaced; the fd is valid for the call (borrowed).
        let ptr = match unsafe {
            rustix::mm::mmap(
                std::ptr::null_mut(),
                size,
                ProtFlags::READ | ProtFlags::WRITE,
                MapFlags::SHARED,
                fd,
                offset,
            )
        } {
            Ok(p) => p.cast::<u8>(),
            Err(e) => {
                release(self);
                return Err(mmap_err(e.into()));
            }
        };
        let Some(ptr) = NonNull::new(ptr) else {
            release(self);
            return Err(mmap_err(io::ErrorKind::InvalidData.into()));
        };
        // SAFETY: `ptr..ptr+len` is the mapping made above, owned by the DmaMapping built
        // below, whose Drop unmaps the IOVA before it munmaps the memory.
        if let Err(e) = unsafe { self.container.map_dma(ptr.as_ptr(), iova, len) } {
            // SAFETY: the mapping made above, not used by anyone else.
            let _ = unsafe { rustix::mm::munmap(ptr.as_ptr().cast(), size) };
            release(self);
            return Err(match e.raw_os_error() {
                Some(libc::ENOSPC) => DmaError::LimitReached {
                    limit: self.limit.unwrap_or(0),
                },
                _ => DmaError::Map {
                    iova,
                    len,
                    source: e,
                },
            });
        }
        Ok(DmaMapping {
            space: Arc::clone(self),
            ptr,
            len,
            iova,
        })
    }
}

/// A buffer mapped for DMA. Dropping it unmaps the IOVA, then the memory.
#[derive(Debug)]
pub struct DmaMapping {
    space: Arc<DmaSpace>,
    ptr: NonNull<u8>,
    len: u64,
    iova: u64,
}

// SAFETY: the mapping is process-wide shared memory with no thread affinity; the raw
// pointer is only dereferenced inside `read_at`/`write_at`, bounds-checked.
unsafe impl Send for DmaMapping {}

impl DmaMapping {
    /// The IOVA the device uses for the first byte.
    pub fn iova(&self) -> u64 {
        self.iova
    }

    /// Length in bytes.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the mapping is empty (never: zero-length maps are refused).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn check(&self, offset: u64, len: usize) -> Result<usize, DmaError> {
        let end = offset.checked_add(len as u64);
        if end.is_none_or(|e| e > self.len) {
            return Err(DmaError::OutOfBounds {
                offset,
                len,
                size: self.len,
            });
        }
        // In bounds of a mapping whose length fits usize (checked at map time).
        usize::try_from(offset).map_err(|_| DmaError::OutOfBounds {
            offset,
            len,
            size: self.len,
        })
    }

    /// Copies `data` into the buffer at `offset` (CPU side).
    pub fn write_at(&self, offset: u64, data: &[u8]) -> Result<(), DmaError> {
        let off = self.check(offset, data.len())?;
        // SAFETY: `off + data.len() <= len` was checked, so the destination lies inside the
        // live mapping; `data` is a distinct Rust slice, so the ranges do not overlap.
        unsafe {
            std::ptr::copy_nonoverlapping(data.as_ptr(), self.ptr.as_ptr().add(off), data.len())
        };
        std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
        Ok(())
    }

    /// Copies bytes of the buffer at `offset` into `out` (CPU side).
    pub fn read_at(&self, offset: u64, out: &mut [u8]) -> Result<(), DmaError> {
        let off = self.check(offset, out.len())?;
        std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
        // SAFETY: the source lies inside the live mapping (bounds checked); `out` is a
        // distinct, exclusively borrowed Rust slice.
        unsafe {
            std::ptr::copy_nonoverlapping(self.ptr.as_ptr().add(off), out.as_mut_ptr(), out.len())
        };
        Ok(())
    }
}

impl Drop for DmaMapping {
    fn drop(&mut self) {
        // The IOVA first: after this the device can no longer reach the pages.
        let unmapped = self.space.container.unmap_dma(self.iova, self.len);
        {
            let mut st = self.space.state();
            st.mapped = st.mapped.saturating_sub(1);
            match &unmapped {
                Ok(()) => st.iova.free(self.iova, self.len),
                // Keep the IOVA out of use: it may still be mapped.
                Err(e) => log::error!(
                    "VFIO_IOMMU_UNMAP_DMA of IOVA {:#x} (+{:#x}) failed: {e}; IOVA leaked",
                    self.iova,
                    self.len
                ),
            }
        }
        // Even if the unmap failed, munmap is safe for this process: the IOMMU keeps its
        // own page references until the container closes.
        // SAFETY: this object owns the mapping made in `DmaSpace::map` with this length.
        let _ = unsafe { rustix::mm::munmap(self.ptr.as_ptr().cast(), self.len as usize) };
    }
}
