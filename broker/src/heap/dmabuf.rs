//! CPU access to dmabufs: `DMA_BUF_IOCTL_SYNC` brackets, and recognising a dmabuf descriptor.

use std::os::fd::{AsRawFd, BorrowedFd};

use super::HeapError;
use super::uapi::{
    DMA_BUF_SYNC_END, DMA_BUF_SYNC_READ, DMA_BUF_SYNC_START, DMA_BUF_SYNC_WRITE, dma_buf_sync,
};

/// The direction of a CPU access to a dmabuf.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncAccess {
    /// The CPU reads.
    Read,
    /// The CPU writes.
    Write,
    /// The CPU reads and writes.
    ReadWrite,
}

impl SyncAccess {
    fn flags(self) -> u64 {
        match self {
            SyncAccess::Read => DMA_BUF_SYNC_READ,
            SyncAccess::Write => DMA_BUF_SYNC_WRITE,
            SyncAccess::ReadWrite => DMA_BUF_SYNC_READ | DMA_BUF_SYNC_WRITE,
        }
    }
}

/// CPU access to a dmabuf in progress: `DMA_BUF_IOCTL_SYNC` START was issued on creation, END is
/// issued on drop (or by [`CpuAccess::end`], which reports its error). Exporters flush or
/// invalidate caches and wait for device fences in these calls; touching a mapped dmabuf outside
/// such a bracket may read stale data on non-coherent systems.
#[derive(Debug)]
#[must_use = "CPU access ends when the guard is dropped"]
pub struct CpuAccess<'a> {
    dmabuf: Option<BorrowedFd<'a>>,
    flags: u64,
}

impl<'a> CpuAccess<'a> {
    /// Starts CPU access to `dmabuf`.
    pub fn begin(dmabuf: BorrowedFd<'a>, access: SyncAccess) -> Result<Self, HeapError> {
        let flags = access.flags();
        dma_buf_sync(dmabuf, DMA_BUF_SYNC_START | flags).map_err(|source| HeapError::Sync {
            what: "start",
            source,
        })?;
        Ok(CpuAccess {
            dmabuf: Some(dmabuf),
            flags,
        })
    }

    /// A guard that does nothing (for memory that needs no sync, like a plain memfd).
    pub(crate) fn none() -> Self {
        CpuAccess {
            dmabuf: None,
            flags: 0,
        }
    }

    /// Ends the access now and reports whether the kernel accepted it.
    pub fn end(mut self) -> Result<(), HeapError> {
        self.finish()
    }

    fn finish(&mut self) -> Result<(), HeapError> {
        match self.dmabuf.take() {
            Some(fd) => {
                dma_buf_sync(fd, DMA_BUF_SYNC_END | self.flags).map_err(|source| HeapError::Sync {
                    what: "end",
                    source,
                })
            }
            None => Ok(()),
        }
    }
}

impl Drop for CpuAccess<'_> {
    fn drop(&mut self) {
        if let Err(e) = self.finish() {
            log::error!("{}", super::error_chain(&e));
        }
    }
}

/// Whether `fd` is a dmabuf: its `/proc/self/fdinfo` entry carries the dma-buf fields
/// (`exp_name:`), or its `/proc/self/fd` link names the dmabuf filesystem.
pub fn is_dmabuf(fd: BorrowedFd<'_>) -> bool {
    let raw = fd.as_raw_fd();
    let fdinfo = std::fs::read_to_string(format!("/proc/self/fdinfo/{raw}")).unwrap_or_default();
    if fdinfo.lines().any(|l| l.starts_with("exp_name:")) {
        return true;
    }
    std::fs::read_link(format!("/proc/self/fd/{raw}")).is_ok_and(|target| {
        let t = target.to_string_lossy();
        t.starts_with("/dmabuf:") || t.starts_with("anon_inode:dmabuf")
    })
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsFd;

    use super::*;

    #[test]
    fn is_dmabuf_memfd_returns_false() {
        let fd =
            rustix::fs::memfd_create("bufbroker-test", rustix::fs::MemfdFlags::CLOEXEC).unwrap();
        assert!(!is_dmabuf(fd.as_fd()));
    }

    #[test]
    fn cpu_access_on_memfd_returns_sync_error() {
        let fd =
            rustix::fs::memfd_create("bufbroker-test", rustix::fs::MemfdFlags::CLOEXEC).unwrap();
        let err = CpuAccess::begin(fd.as_fd(), SyncAccess::Read).unwrap_err();
        assert!(
            matches!(err, HeapError::Sync { what: "start", .. }),
            "{err:?}"
        );
        assert_eq!(err.to_string(), "start of CPU access to a dmabuf failed");
    }
}
