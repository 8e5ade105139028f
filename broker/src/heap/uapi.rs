//! The kernel interfaces no crate provides: the udmabuf, dma-heap and dma-buf ioctls.
//!
//! rustix offers the generic `ioctl` machinery but not these requests, and no maintained crate
//! binds them (crosvm and others carry their own copies too), so the structures and opcodes are
//! transcribed by hand from the Linux UAPI headers:
//!
//! - `include/uapi/linux/udmabuf.h`: `struct udmabuf_create`, `struct udmabuf_create_item`,
//!   `struct udmabuf_create_list`, `UDMABUF_CREATE`, `UDMABUF_CREATE_LIST`;
//! - `include/uapi/linux/dma-heap.h`: `struct dma_heap_allocation_data`, `DMA_HEAP_IOCTL_ALLOC`;
//! - `include/uapi/linux/dma-buf.h`: `struct dma_buf_sync`, `DMA_BUF_IOCTL_SYNC` and its flags.
//!
//! Everything `unsafe` about these calls lives in this file; the rest of the module calls the
//! safe wrappers below.

use std::ffi::c_void;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use rustix::io;
use rustix::ioctl::{Ioctl, IoctlOutput, Opcode, opcode};

// ---- include/uapi/linux/udmabuf.h -------------------------------------------------------------

/// `UDMABUF_FLAGS_CLOEXEC`: the new dmabuf fd gets `O_CLOEXEC`.
const UDMABUF_FLAGS_CLOEXEC: u32 = 0x01;

/// `struct udmabuf_create`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
struct UdmabufCreate {
    memfd: u32,
    flags: u32,
    offset: u64,
    size: u64,
}

/// `struct udmabuf_create_list` without its flexible `list[]` member (that is what `sizeof`
/// measures and therefore what the opcode encodes).
#[repr(C)]
struct UdmabufCreateListHeader {
    flags: u32,
    count: u32,
}

/// `struct udmabuf_create_item`: 24 bytes, 8-byte aligned.
const UDMABUF_CREATE_ITEM_WORDS: usize = 3;

/// `UDMABUF_CREATE = _IOW('u', 0x42, struct udmabuf_create)`.
const UDMABUF_CREATE: Opcode = opcode::write::<UdmabufCreate>(b'u', 0x42);
/// `UDMABUF_CREATE_LIST = _IOW('u', 0x43, struct udmabuf_create_list)`.
const UDMABUF_CREATE_LIST: Opcode = opcode::write::<UdmabufCreateListHeader>(b'u', 0x43);

// ---- include/uapi/linux/dma-heap.h ------------------------------------------------------------

/// `struct dma_heap_allocation_data`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
struct DmaHeapAllocationData {
    len: u64,
    fd: u32,
    fd_flags: u32,
    heap_flags: u64,
}

/// `DMA_HEAP_IOCTL_ALLOC = _IOWR('H', 0x0, struct dma_heap_allocation_data)`.
const DMA_HEAP_IOCTL_ALLOC: Opcode = opcode::read_write::<DmaHeapAllocationData>(b'H', 0x0);

// ---- include/uapi/linux/dma-buf.h -------------------------------------------------------------

/// `struct dma_buf_sync`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
struct DmaBufSync {
    flags: u64,
}

/// `DMA_BUF_SYNC_READ`.
pub(crate) const DMA_BUF_SYNC_READ: u64 = 1; // 1 << 0 in the header
/// `DMA_BUF_SYNC_WRITE`.
pub(crate) const DMA_BUF_SYNC_WRITE: u64 = 2; // 2 << 0 in the header
/// `DMA_BUF_SYNC_START`.
pub(crate) const DMA_BUF_SYNC_START: u64 = 0; // 0 << 2 in the header
/// `DMA_BUF_SYNC_END`.
pub(crate) const DMA_BUF_SYNC_END: u64 = 1 << 2;

/// `DMA_BUF_IOCTL_SYNC = _IOW('b', 0, struct dma_buf_sync)`.
const DMA_BUF_IOCTL_SYNC: Opcode = opcode::write::<DmaBufSync>(b'b', 0);

// ---- the ioctl objects ------------------------------------------------------------------------

/// An ioctl whose argument points at `T` (read by the kernel, and written back when `MUTATING`)
/// and whose return value is a new file descriptor (`UDMABUF_CREATE*`) or zero.
struct PtrIoctl<'a, T: ?Sized, const OPCODE: Opcode, const MUTATING: bool> {
    arg: &'a mut T,
}

// SAFETY: every instantiation below pairs an opcode with the exact `#[repr(C)]` layout the UAPI
// header declares for it (see the constants above), passes a pointer to a live, exclusively
// borrowed value of that type (plus, for UDMABUF_CREATE_LIST, the trailing items the header
// promises, see `create_udmabuf_list`), and marks the call as mutating whenever the kernel writes
// back (`DMA_HEAP_IOCTL_ALLOC`). `output_from_ptr` only returns the syscall's integer result.
unsafe impl<T: ?Sized, const OPCODE: Opcode, const MUTATING: bool> Ioctl
    for PtrIoctl<'_, T, OPCODE, MUTATING>
{
    type Output = IoctlOutput;

    const IS_MUTATING: bool = MUTATING;

    fn opcode(&self) -> Opcode {
        OPCODE
    }

    fn as_ptr(&mut self) -> *mut c_void {
        std::ptr::from_mut::<T>(self.arg).cast()
    }

    unsafe fn output_from_ptr(out: IoctlOutput, _: *mut c_void) -> io::Result<IoctlOutput> {
        Ok(out)
    }
}

/// Takes ownership of a descriptor number the kernel just returned from a creating ioctl.
fn own_new_fd(raw: RawFd) -> io::Result<OwnedFd> {
    if raw < 0 {
        return Err(io::Errno::BADF);
    }
    // SAFETY: the kernel returned `raw` as a newly installed descriptor of this process that no
    // one else owns yet; wrapping it immediately makes this the single owner that closes it.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

/// `UDMABUF_CREATE` on `dev` (an open `/dev/udmabuf`): a close-on-exec dmabuf over
/// `[offset, offset + size)` of `memfd`.
pub(crate) fn create_udmabuf(
    dev: BorrowedFd<'_>,
    memfd: BorrowedFd<'_>,
    offset: u64,
    size: u64,
) -> io::Result<OwnedFd> {
    let mut arg = UdmabufCreate {
        memfd: fd_as_u32(memfd)?,
        flags: UDMABUF_FLAGS_CLOEXEC,
        offset,
        size,
    };
    let call = PtrIoctl::<UdmabufCreate, UDMABUF_CREATE, false> { arg: &mut arg };
    // SAFETY: `UDMABUF_CREATE` reads one `struct udmabuf_create`, which `arg` is; the kernel
    // only reads it (`_IOW`), and the result is a new descriptor or an error.
    let raw = unsafe { rustix::ioctl::ioctl(dev, call) }?;
    own_new_fd(raw)
}

/// `UDMABUF_CREATE_LIST` on `dev`: one close-on-exec dmabuf over all `(memfd, offset, size)`
/// items, in order.
pub(crate) fn create_udmabuf_list(
    dev: BorrowedFd<'_>,
    items: &[(BorrowedFd<'_>, u64, u64)],
) -> io::Result<OwnedFd> {
    let count = u32::try_from(items.len()).map_err(|_| io::Errno::INVAL)?;
    // The header and the 24-byte items, laid out as the kernel reads them, in one 8-byte aligned
    // buffer. Pairs of u32 are packed with native-endian byte order so the memory layout matches
    // the C structs on every architecture.
    let pair = |a: u32, b: u32| {
        let (a, b) = (a.to_ne_bytes(), b.to_ne_bytes());
        u64::from_ne_bytes([a[0], a[1], a[2], a[3], b[0], b[1], b[2], b[3]])
    };
    let mut words = Vec::with_capacity(1 + UDMABUF_CREATE_ITEM_WORDS * items.len());
    words.push(pair(UDMABUF_FLAGS_CLOEXEC, count));
    for &(memfd, offset, size) in items {
        words.extend_from_slice(&[pair(fd_as_u32(memfd)?, 0), offset, size]);
    }
    let header = words.as_mut_slice();
    let call = PtrIoctl::<[u64], UDMABUF_CREATE_LIST, false> { arg: header };
    // SAFETY: `UDMABUF_CREATE_LIST` reads a `struct udmabuf_create_list` header followed by
    // `count` `struct udmabuf_create_item`s (the kernel copies `count * 24` bytes after the
    // header); `words` holds exactly that many, 8-byte aligned, and the kernel only reads them.
    let raw = unsafe { rustix::ioctl::ioctl(dev, call) }?;
    own_new_fd(raw)
}

/// `DMA_HEAP_IOCTL_ALLOC` on `heap` (an open `/dev/dma_heap/<name>`): a new dmabuf of `len`
/// bytes, opened `O_RDWR | O_CLOEXEC`.
pub(crate) fn dma_heap_alloc(heap: BorrowedFd<'_>, len: u64) -> io::Result<OwnedFd> {
    // O_RDWR | O_CLOEXEC as the kernel defines them (DMA_HEAP_VALID_FD_FLAGS).
    let fd_flags = (rustix::fs::OFlags::RDWR | rustix::fs::OFlags::CLOEXEC).bits();
    let mut arg = DmaHeapAllocationData {
        len,
        fd: 0,
        fd_flags,
        heap_flags: 0,
    };
    let call = PtrIoctl::<DmaHeapAllocationData, DMA_HEAP_IOCTL_ALLOC, true> { arg: &mut arg };
    // SAFETY: `DMA_HEAP_IOCTL_ALLOC` reads and writes back one `struct dma_heap_allocation_data`,
    // which `arg` is (exclusively borrowed for the call); on success the kernel stores the new
    // descriptor in `arg.fd`.
    unsafe { rustix::ioctl::ioctl(heap, call) }?;
    let raw = RawFd::try_from(arg.fd).map_err(|_| io::Errno::BADF)?;
    own_new_fd(raw)
}

/// `DMA_BUF_IOCTL_SYNC` on a dmabuf with `flags` (`DMA_BUF_SYNC_*`). Retries on `EINTR` and
/// `EAGAIN`, as dma-buf.h asks of userspace.
pub(crate) fn dma_buf_sync(dmabuf: BorrowedFd<'_>, flags: u64) -> io::Result<()> {
    loop {
        let mut arg = DmaBufSync { flags };
        let call = PtrIoctl::<DmaBufSync, DMA_BUF_IOCTL_SYNC, false> { arg: &mut arg };
        // SAFETY: `DMA_BUF_IOCTL_SYNC` reads one `struct dma_buf_sync`, which `arg` is; it writes
        // nothing back and returns 0 or an error.
        match unsafe { rustix::ioctl::ioctl(dmabuf, call) } {
            Ok(_) => return Ok(()),
            Err(io::Errno::INTR | io::Errno::AGAIN) => continue,
            Err(e) => return Err(e),
        }
    }
}

/// The descriptor number as the `__u32` the UAPI structs carry.
fn fd_as_u32(fd: BorrowedFd<'_>) -> io::Result<u32> {
    u32::try_from(fd.as_raw_fd()).map_err(|_| io::Errno::BADF)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opcodes_match_the_uapi_headers() {
        // Values as computed by the C macros on x86_64/aarch64 (asm-generic ioctl encoding).
        #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
        {
            assert_eq!(UDMABUF_CREATE, 0x4018_7542);
            assert_eq!(UDMABUF_CREATE_LIST, 0x4008_7543);
            assert_eq!(DMA_HEAP_IOCTL_ALLOC, 0xc018_4800);
            assert_eq!(DMA_BUF_IOCTL_SYNC, 0x4008_6200);
        }
        assert_eq!(size_of::<UdmabufCreate>(), 24);
        assert_eq!(size_of::<UdmabufCreateListHeader>(), 8);
        assert_eq!(size_of::<DmaHeapAllocationData>(), 24);
        assert_eq!(size_of::<DmaBufSync>(), 8);
    }
}
