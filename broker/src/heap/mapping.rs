//! A shared memory mapping of a buffer, unmapped on drop.

use std::ffi::c_void;
use std::os::fd::BorrowedFd;
use std::ptr::NonNull;

use rustix::mm::{MapFlags, ProtFlags};

use super::HeapError;

/// A `MAP_SHARED` mapping of a whole buffer. Unmapped on drop; it stays valid after the buffer's
/// descriptors are closed (the kernel keeps the memory alive for the mapping).
///
/// The memory is shared with other processes (guests, devices, host clients), so the safe
/// accessors copy through raw pointers ([`Mapping::read_at`], [`Mapping::write_at`],
/// [`Mapping::fill`]) and never create Rust references into it; concurrent writers elsewhere can
/// only make the copied bytes inconsistent, not break this process. [`Mapping::as_slice`] and
/// [`Mapping::as_mut_slice`] are `unsafe` for that reason.
#[derive(Debug)]
pub struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
    writable: bool,
}

// SAFETY: the mapping is plain shared memory owned by this value; it is not tied to the thread
// that created it, and `&Mapping` only allows copies through raw pointers (no references), so
// sharing it between threads is as safe as sharing it with another process.
unsafe impl Send for Mapping {}
// SAFETY: see `Send`; methods taking `&self` never hand out references into the memory.
unsafe impl Sync for Mapping {}

impl Mapping {
    /// Maps `len` bytes of `fd` from `offset` (page-aligned), shared: for dmabufs and memfds
    /// that are not [`HeapBuffer`](super::HeapBuffer)s (a udmabuf over guest RAM, say).
    ///
    /// Accessing the mapping raises SIGBUS if the file is shrunk below the mapped range; the
    /// broker's own memfds are sealed against that, other files must be too.
    pub fn new(
        fd: BorrowedFd<'_>,
        offset: u64,
        len: u64,
        writable: bool,
    ) -> Result<Mapping, HeapError> {
        if len == 0 {
            return Err(HeapError::ZeroSize);
        }
        let size = usize::try_from(len).map_err(|_| HeapError::AddressSpace { size: len })?;
        let prot = if writable {
            ProtFlags::READ | ProtFlags::WRITE
        } else {
            ProtFlags::READ
        };
        // SAFETY: a null hint lets the kernel pick a fresh range, so no existing memory of this
        // process is replaced; `size` is non-zero; the result is only used through this value.
        let addr = unsafe {
            rustix::mm::mmap(
                std::ptr::null_mut(),
                size,
                prot,
                MapFlags::SHARED,
                fd,
                offset,
            )
        }
        .map_err(|source| HeapError::Map { len, source })?;
        let ptr = NonNull::new(addr.cast::<u8>()).ok_or(HeapError::Map {
            len,
            source: rustix::io::Errno::FAULT,
        })?;
        Ok(Mapping {
            ptr,
            len: size,
            writable,
        })
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Always false: mappings are never empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether the mapping allows writes.
    pub fn is_writable(&self) -> bool {
        self.writable
    }

    /// The start of the mapping, for code that does its own (volatile) accesses.
    pub fn as_ptr(&self) -> *const u8 {
        self.ptr.as_ptr()
    }

    /// The start of the mapping for writing; `None` when it is read-only.
    pub fn as_mut_ptr(&mut self) -> Option<*mut u8> {
        self.writable.then_some(self.ptr.as_ptr())
    }

    fn check(&self, offset: usize, len: usize) -> Result<(), HeapError> {
        match offset.checked_add(len) {
            Some(end) if end <= self.len => Ok(()),
            _ => Err(HeapError::OutOfBounds {
                offset,
                len,
                size: self.len,
            }),
        }
    }

    /// Copies `buf.len()` bytes starting at `offset` out of the mapping.
    pub fn read_at(&self, offset: usize, buf: &mut [u8]) -> Result<(), HeapError> {
        self.check(offset, buf.len())?;
        // SAFETY: `check` proved `offset + buf.len() <= self.len`, so the source range lies inside
        // the live mapping; `buf` is a distinct, exclusively borrowed Rust allocation, so the
        // ranges cannot overlap. Bytes written concurrently by another process only make the
        // copied values inconsistent.
        unsafe {
            std::ptr::copy_nonoverlapping(
                self.ptr.as_ptr().add(offset),
                buf.as_mut_ptr(),
                buf.len(),
            );
        }
        Ok(())
    }

    /// Copies `data` into the mapping at `offset`.
    pub fn write_at(&self, offset: usize, data: &[u8]) -> Result<(), HeapError> {
        if !self.writable {
            return Err(HeapError::ReadOnly);
        }
        self.check(offset, data.len())?;
        // SAFETY: the mapping is writable and `check` proved the destination range lies inside it;
        // `data` is a Rust borrow that cannot overlap the mapping (we never hand out references
        // into it). No Rust reference to the destination exists.
        unsafe {
            std::ptr::copy_nonoverlapping(data.as_ptr(), self.ptr.as_ptr().add(offset), data.len());
        }
        Ok(())
    }

    /// Sets every byte of the mapping to `byte`.
    pub fn fill(&self, byte: u8) -> Result<(), HeapError> {
        if !self.writable {
            return Err(HeapError::ReadOnly);
        }
        // SAFETY: the mapping is writable and `len` bytes long; no Rust reference into it exists.
        unsafe { std::ptr::write_bytes(self.ptr.as_ptr(), byte, self.len) };
        Ok(())
    }

    /// The mapping as a byte slice.
    ///
    /// # Safety
    ///
    /// Nothing may write the memory (another mapping in this or another process, a device, the
    /// guest) while the slice is alive.
    pub unsafe fn as_slice(&self) -> &[u8] {
        // SAFETY: the pointer is valid for `len` bytes for the lifetime of `self`; the caller
        // guarantees there are no concurrent writers.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    /// The mapping as a mutable byte slice; `None` when it is read-only.
    ///
    /// # Safety
    ///
    /// Nothing else may read or write the memory while the slice is alive.
    pub unsafe fn as_mut_slice(&mut self) -> Option<&mut [u8]> {
        if !self.writable {
            return None;
        }
        // SAFETY: the mapping is writable and valid for `len` bytes while `self` is exclusively
        // borrowed; the caller guarantees no one else accesses the memory meanwhile.
        Some(unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) })
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: `ptr`/`len` describe exactly the mapping created in `new`, which is unmapped
        // only here; no references into it can outlive `self` (the unsafe slice accessors borrow
        // `self`).
        if let Err(e) = unsafe { rustix::mm::munmap(self.ptr.as_ptr().cast::<c_void>(), self.len) }
        {
            log::error!("munmap of a {}-byte buffer mapping failed: {e}", self.len);
        }
    }
}
