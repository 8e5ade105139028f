//! Memory mapped into this process: whole mappings ([`MappedRegion`]) and bounded views of
//! one buffer inside them ([`BufferMap`]).
//!
//! Buffer memory is shared with other processes (the broker, host devices, the VMM), which
//! may write it at any time, so this module never hands out `&[u8]`/`&mut [u8]` into it: reads
//! and writes copy through raw pointers after a bounds check, and [`BufferMap::as_ptr`] is
//! there for callers (C, GPU APIs) that manage the sharing themselves.

use std::os::fd::{AsFd, BorrowedFd};
use std::ptr::NonNull;
use std::sync::Arc;

use rustix::mm::{MapFlags, ProtFlags};
use thiserror::Error;

/// Errors of mapping memory or of accessing a mapping.
#[derive(Debug, Error)]
pub enum MapError {
    /// `mmap` failed.
    #[error("mmap of {len} bytes failed")]
    Mmap {
        /// Requested length.
        len: usize,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The file behind the fd is smaller than the buffer.
    #[error("the buffer's file holds {file} bytes, fewer than the {needed} its plan needs")]
    FileTooSmall {
        /// File size.
        file: u64,
        /// Bytes needed.
        needed: u64,
    },
    /// `fstat` failed.
    #[error("fstat of the buffer's fd failed")]
    Stat(#[source] std::io::Error),
    /// A range falls outside the mapping.
    #[error("range {offset:#x}+{len:#x} is outside a mapping of {size:#x} bytes")]
    OutOfBounds {
        /// Start of the range.
        offset: u64,
        /// Its length.
        len: u64,
        /// Size of the mapping.
        size: u64,
    },
    /// A zero-length mapping was requested.
    #[error("cannot map zero bytes")]
    Empty,
    /// A write to a read-only mapping.
    #[error("the mapping is read-only")]
    ReadOnly,
}

/// A mapping this process owns: unmapped on drop.
#[derive(Debug)]
pub struct MappedRegion {
    ptr: NonNull<u8>,
    len: usize,
    writable: bool,
}

// SAFETY: the region is plain memory addressed through a raw pointer; every access goes
// through bounds-checked raw-pointer copies (never references), so moving or sharing the
// handle between threads cannot create aliasing references. Concurrent writers race on the
// bytes, as with any shared memory, but that cannot break memory safety of this process.
unsafe impl Send for MappedRegion {}
// SAFETY: see the `Send` impl: `&MappedRegion` only offers raw-pointer copies.
unsafe impl Sync for MappedRegion {}

impl MappedRegion {
    /// Maps `len` bytes of `fd` from offset 0, shared, readable and (if `writable`) writable.
    pub fn map_fd(fd: BorrowedFd<'_>, len: usize, writable: bool) -> Result<Self, MapError> {
        // SAFETY: `offset` is 0 and `len` is non-zero.
        unsafe { Self::map_fd_at(fd, 0, len, writable) }
    }

    /// Maps `len` bytes of `fd` from `offset` (page aligned).
    ///
    /// # Safety
    ///
    /// `offset` must be page aligned. For device files (PCI `resourceN`) the caller must make
    /// sure that `offset + len` lies inside the resource, so accesses never fault.
    pub unsafe fn map_fd_at(
        fd: BorrowedFd<'_>,
        offset: u64,
        len: usize,
        writable: bool,
    ) -> Result<Self, MapError> {
        if len == 0 {
            return Err(MapError::Empty);
        }
        let prot = if writable {
            ProtFlags::READ | ProtFlags::WRITE
        } else {
            ProtFlags::READ
        };
        // SAFETY: a fresh mapping at an address the kernel chooses (null hint) cannot alias
        // memory Rust knows about; the result is checked; the mapping is owned by the returned
        // value and unmapped exactly once, in `Drop`.
        let ptr = unsafe {
            rustix::mm::mmap(
                std::ptr::null_mut(),
                len,
                prot,
                MapFlags::SHARED,
                fd,
                offset,
            )
        }
        .map_err(|e| MapError::Mmap {
            len,
            source: e.into(),
        })?;
        let ptr = NonNull::new(ptr.cast::<u8>()).ok_or(MapError::Empty)?;
        Ok(MappedRegion { ptr, len, writable })
    }

    /// Maps a file (memfd, dmabuf) that must hold at least `needed` bytes; the mapping covers
    /// `needed` bytes rounded up to a page.
    pub fn map_file(fd: &impl AsFd, needed: u64, writable: bool) -> Result<Self, MapError> {
        let st = rustix::fs::fstat(fd).map_err(|e| MapError::Stat(e.into()))?;
        let file = u64::try_from(st.st_size).unwrap_or(0);
        // dmabufs report size 0 through fstat on older kernels; trust the plan for them.
        let is_regular = rustix::fs::FileType::from_raw_mode(st.st_mode).is_file();
        if is_regular && file < needed {
            return Err(MapError::FileTooSmall { file, needed });
        }
        let len = usize::try_from(needed).map_err(|_| MapError::OutOfBounds {
            offset: 0,
            len: needed,
            size: usize::MAX as u64,
        })?;
        Self::map_fd(fd.as_fd(), len, writable)
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the mapping is empty (never true: mappings have at least one byte).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The first byte.
    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    /// Checks that `offset..offset+len` lies inside the mapping.
    pub fn check_range(&self, offset: u64, len: u64) -> Result<(), MapError> {
        let size = self.len as u64;
        match offset.checked_add(len) {
            Some(end) if end <= size => Ok(()),
            _ => Err(MapError::OutOfBounds { offset, len, size }),
        }
    }
}

impl Drop for MappedRegion {
    fn drop(&mut self) {
        // SAFETY: `ptr`/`len` are exactly what mmap returned; this is the only unmap, and no
        // reference into the mapping outlives `self` (accesses copy through raw pointers
        // borrowed from `&self`).
        if let Err(e) = unsafe { rustix::mm::munmap(self.ptr.as_ptr().cast(), self.len) } {
            log::warn!("munmap of {} bytes failed: {e}", self.len);
        }
    }
}

/// One buffer's bytes inside a mapping (a range of the host window, or a whole fd mapping).
/// Keeps the mapping alive.
#[derive(Debug, Clone)]
pub struct BufferMap {
    region: Arc<MappedRegion>,
    offset: usize,
    len: usize,
    writable: bool,
}

impl BufferMap {
    /// The `len` bytes at `offset` of `region`, checked against the region.
    pub fn new(region: Arc<MappedRegion>, offset: u64, len: u64) -> Result<Self, MapError> {
        region.check_range(offset, len)?;
        // Both fit in the region's usize length after the check.
        let (Ok(o), Ok(l)) = (usize::try_from(offset), usize::try_from(len)) else {
            return Err(MapError::OutOfBounds {
                offset,
                len,
                size: region.len() as u64,
            });
        };
        let writable = region.writable;
        Ok(BufferMap {
            region,
            offset: o,
            len: l,
            writable,
        })
    }

    /// This view with writes refused when `access` is read-only (a read-only grant mapped
    /// through the writable shared-memory window).
    pub fn with_access(mut self, access: bufbroker_proto::wire::Access) -> Self {
        self.writable &= access == bufbroker_proto::wire::Access::ReadWrite;
        self
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the view is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The first byte of the buffer. Valid while this view (or a clone) lives. Other processes
    /// may access the memory concurrently.
    pub fn as_ptr(&self) -> *mut u8 {
        // `offset <= region.len()` was checked in `new`, so this stays in the allocation.
        self.region.as_ptr().wrapping_add(self.offset)
    }

    /// Copies `data` into the buffer at `at`.
    pub fn write_at(&self, at: usize, data: &[u8]) -> Result<(), MapError> {
        self.check(at, data.len())?;
        self.check_writable()?;
        // SAFETY: `at + data.len() <= self.len` (checked), and `offset + len` lies inside the
        // live mapping (checked in `new`; the Arc keeps it mapped), which was mapped writable
        // (checked just above). `data` is a Rust
        // slice and cannot overlap the mapping through a reference, since none is ever made.
        unsafe {
            std::ptr::copy_nonoverlapping(data.as_ptr(), self.as_ptr().add(at), data.len());
        }
        Ok(())
    }

    /// Copies bytes at `at` of the buffer into `out`.
    pub fn read_at(&self, at: usize, out: &mut [u8]) -> Result<(), MapError> {
        self.check(at, out.len())?;
        // SAFETY: as in `write_at`: the source range is inside the live mapping.
        unsafe {
            std::ptr::copy_nonoverlapping(self.as_ptr().add(at), out.as_mut_ptr(), out.len());
        }
        Ok(())
    }

    /// Sets `len` bytes at `at` to `value`.
    pub fn fill(&self, at: usize, len: usize, value: u8) -> Result<(), MapError> {
        self.check(at, len)?;
        self.check_writable()?;
        // SAFETY: as in `write_at`: the range is inside the live mapping, mapped writable.
        unsafe { std::ptr::write_bytes(self.as_ptr().add(at), value, len) };
        Ok(())
    }

    fn check_writable(&self) -> Result<(), MapError> {
        if self.writable {
            Ok(())
        } else {
            Err(MapError::ReadOnly)
        }
    }

    fn check(&self, at: usize, len: usize) -> Result<(), MapError> {
        match at.checked_add(len) {
            Some(end) if end <= self.len => Ok(()),
            _ => Err(MapError::OutOfBounds {
                offset: at as u64,
                len: len as u64,
                size: self.len as u64,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn memfd(len: u64) -> std::os::fd::OwnedFd {
        let fd = rustix::fs::memfd_create("test", rustix::fs::MemfdFlags::CLOEXEC).unwrap();
        rustix::fs::ftruncate(&fd, len).unwrap();
        fd
    }

    #[test]
    fn writing_a_read_only_mapping_is_an_error_not_a_fault() {
        let fd = memfd(4096);
        let region = Arc::new(MappedRegion::map_fd(fd.as_fd(), 4096, false).unwrap());
        let map = BufferMap::new(region, 0, 4096).unwrap();
        assert!(matches!(
            map.write_at(0, &[1, 2, 3]),
            Err(MapError::ReadOnly)
        ));
        assert!(matches!(map.fill(0, 16, 0xff), Err(MapError::ReadOnly)));
        let mut out = [9u8; 4];
        map.read_at(0, &mut out).unwrap();
        assert_eq!(out, [0; 4]);
    }

    #[test]
    fn a_read_only_view_of_a_writable_window_refuses_writes() {
        let fd = memfd(8192);
        let window = Arc::new(MappedRegion::map_fd(fd.as_fd(), 8192, true).unwrap());
        let map = BufferMap::new(window.clone(), 4096, 4096)
            .unwrap()
            .with_access(bufbroker_proto::wire::Access::ReadOnly);
        assert!(matches!(map.write_at(0, &[1]), Err(MapError::ReadOnly)));
        let writable = BufferMap::new(window, 4096, 4096)
            .unwrap()
            .with_access(bufbroker_proto::wire::Access::ReadWrite);
        writable.write_at(0, &[7]).unwrap();
        let mut out = [0u8; 1];
        map.read_at(0, &mut out).unwrap();
        assert_eq!(out, [7]);
    }

    #[test]
    fn buffer_map_outside_region_is_rejected() {
        let fd = memfd(8192);
        let region = Arc::new(MappedRegion::map_file(&fd, 8192, true).unwrap());

        let err = BufferMap::new(region.clone(), 4096, 8192).unwrap_err();

        assert!(matches!(err, MapError::OutOfBounds { .. }));
        assert!(BufferMap::new(region, u64::MAX, 2).is_err());
    }

    #[test]
    fn buffer_map_write_then_read_round_trips_and_bounds_hold() {
        let fd = memfd(8192);
        let region = Arc::new(MappedRegion::map_file(&fd, 8192, true).unwrap());
        let view = BufferMap::new(region, 4096, 4096).unwrap();

        view.write_at(10, b"abc").unwrap();
        let mut out = [0u8; 3];
        view.read_at(10, &mut out).unwrap();

        assert_eq!(&out, b"abc");
        assert!(view.write_at(4095, b"ab").is_err());
        assert!(view.fill(usize::MAX, 2, 0).is_err());
    }

    #[test]
    fn map_file_smaller_than_plan_fails() {
        let fd = memfd(4096);

        let err = MappedRegion::map_file(&fd, 8192, true).unwrap_err();

        assert!(matches!(
            err,
            MapError::FileTooSmall {
                file: 4096,
                needed: 8192
            }
        ));
    }
}
