//! The VFIO ioctls this crate issues, hand-written over `libc::ioctl`.
//!
//! Why not `vfio-ioctls` 0.10 (which does build with `default-features = false`, no KVM): it
//! has no wrapper for `VFIO_IOMMU_GET_INFO`'s capability chain (IOVA ranges, DMA-avail),
//! which is what this crate is about; its `VfioDevice::region_read`/`region_write` return
//! nothing and only log failures; and it always pulls in vm-memory for guest-memory maps we do
//! not use. Its sibling `vfio-bindings` 0.7 (Apache-2.0 OR
//! BSD-3-Clause, no dependencies without `fam-wrappers`) gives the kernel's structs and
//! constants; the ioctl numbers (`_IO(';', 100 + n)` in `include/uapi/linux/vfio.h`) are
//! written here because bindgen does not translate the `_IO` macros.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

/// `VFIO_TYPE` (`';'`).
const VFIO_TYPE: libc::c_ulong = b';' as libc::c_ulong;
/// `VFIO_BASE`.
const VFIO_BASE: libc::c_ulong = 100;

const fn io(nr: libc::c_ulong) -> libc::c_ulong {
    (VFIO_TYPE << 8) | (VFIO_BASE + nr)
}

pub(crate) const VFIO_GET_API_VERSION: libc::c_ulong = io(0);
pub(crate) const VFIO_CHECK_EXTENSION: libc::c_ulong = io(1);
pub(crate) const VFIO_SET_IOMMU: libc::c_ulong = io(2);
pub(crate) const VFIO_GROUP_GET_STATUS: libc::c_ulong = io(3);
pub(crate) const VFIO_GROUP_SET_CONTAINER: libc::c_ulong = io(4);
pub(crate) const VFIO_GROUP_GET_DEVICE_FD: libc::c_ulong = io(6);
pub(crate) const VFIO_DEVICE_GET_INFO: libc::c_ulong = io(7);
pub(crate) const VFIO_DEVICE_GET_REGION_INFO: libc::c_ulong = io(8);
pub(crate) const VFIO_IOMMU_GET_INFO: libc::c_ulong = io(12);
pub(crate) const VFIO_IOMMU_MAP_DMA: libc::c_ulong = io(13);
pub(crate) const VFIO_IOMMU_UNMAP_DMA: libc::c_ulong = io(14);

/// An ioctl whose argument is a plain integer (the kernel dereferences nothing).
pub(crate) fn ioctl_int(
    fd: BorrowedFd<'_>,
    request: libc::c_ulong,
    arg: libc::c_ulong,
) -> io::Result<i32> {
    // SAFETY: `fd` is a live descriptor for the borrow's duration; the requests used with this
    // function (GET_API_VERSION, CHECK_EXTENSION, SET_IOMMU) take an integer argument, which
    // the kernel does not treat as a pointer, so no memory of this process is touched.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), request, arg) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// An ioctl whose argument points at `arg`.
///
/// # Safety
///
/// `request` must be an ioctl that reads and/or writes at most `size_of::<T>()` bytes at
/// `arg` — or, for argsz-sized structs, at most the `argsz` the caller stored, which must not
/// exceed the memory `arg` points into — and does not keep the pointer after it returns.
pub(crate) unsafe fn ioctl_ptr<T>(
    fd: BorrowedFd<'_>,
    request: libc::c_ulong,
    arg: *mut T,
) -> io::Result<i32> {
    // SAFETY: the caller guarantees `request` only accesses the memory behind `arg` within
    // its bounds and for the duration of the call; `fd` is live for the borrow.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), request, arg) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Values from the kernel's `_IO(VFIO_TYPE, VFIO_BASE + n)`, as vfio-ioctls' own tests
    /// check them (`VFIO_DEVICE_GET_INFO` = 15211).
    #[test]
    fn ioctl_numbers_match_the_kernel() {
        assert_eq!(VFIO_GET_API_VERSION, 0x3b64);
        assert_eq!(VFIO_DEVICE_GET_INFO, 15211);
        assert_eq!(VFIO_IOMMU_GET_INFO, 0x3b70);
        assert_eq!(VFIO_IOMMU_MAP_DMA, 0x3b71);
        assert_eq!(VFIO_IOMMU_UNMAP_DMA, 0x3b72);
    }
}
