//! How a session shows buffers to its peer beyond its own process.
//!
//! A session (transport-agnostic request handling) asks its transport to expose a buffer; the
//! vhost-user device implements [`GuestExposure`] with backend-channel requests to the VMM
//! (SHMEM_MAP/UNMAP, SHARED_OBJECT_ADD/REMOVE) and its memory table; the local socket has no
//! guest and hands fds over SCM_RIGHTS instead.

use std::os::fd::BorrowedFd;

use thiserror::Error;
use uuid::Uuid;

/// Exposure failures.
#[derive(Debug, Error)]
pub enum ExposureError {
    /// The transport cannot do this (e.g. a local client has no shared-memory window).
    #[error("{0} is not available on this transport")]
    Unsupported(&'static str),
    /// The VMM refused or failed the request.
    #[error("the VMM refused {what}")]
    Refused {
        /// The request.
        what: &'static str,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The peer is gone.
    #[error("the VMM connection is closed")]
    Disconnected,
    /// The guest has not started the device, or has reset it: nothing can be shown to it now
    /// (QEMU 11.1 crashes on a SHMEM_MAP before the device starts).
    #[error("the guest has not started the device")]
    NotStarted,
    /// The window range cannot be used: unaligned, outside the window, overlapping a mapped
    /// range (to map), not mapped (to unmap), or no free range is large enough.
    #[error("window range {window_offset:#x}+{len:#x}: {reason}")]
    WindowRange {
        /// Offset in the window.
        window_offset: u64,
        /// Length.
        len: u64,
        /// What is wrong with it.
        reason: String,
    },
}

/// One region of guest RAM as the VMM shared it (from SET_MEM_TABLE).
#[derive(Debug)]
pub struct GuestRegion<'a> {
    /// Guest-physical address of the first byte.
    pub guest_phys: u64,
    /// Bytes in the region.
    pub size: u64,
    /// The file backing the region (a memfd for `memory-backend-memfd,share=on`).
    pub fd: BorrowedFd<'a>,
    /// Offset of the region in `fd`.
    pub fd_offset: u64,
}

/// What a guest transport (the vhost-user device) offers a session.
pub trait GuestExposure: Send + Sync {
    /// Size of the device's shared-memory window (region 0) in bytes; 0 when there is none.
    fn window_size(&self) -> u64;

    /// Maps `len` bytes of `fd` from `fd_offset` at `window_offset` in the window (SHMEM_MAP).
    /// Must not be called from the thread that serves the VMM's requests (it would deadlock).
    fn map_window(
        &self,
        fd: BorrowedFd<'_>,
        fd_offset: u64,
        window_offset: u64,
        len: u64,
        writable: bool,
    ) -> Result<(), ExposureError>;

    /// Unmaps a window range mapped before (SHMEM_UNMAP).
    fn unmap_window(&self, window_offset: u64, len: u64) -> Result<(), ExposureError>;

    /// Registers a virtio shared object with the VMM (SHARED_OBJECT_ADD).
    fn add_shared_object(&self, uuid: Uuid) -> Result<(), ExposureError>;

    /// Withdraws a virtio shared object (SHARED_OBJECT_REMOVE).
    fn remove_shared_object(&self, uuid: Uuid) -> Result<(), ExposureError>;

    /// Calls `f` with the guest's RAM regions (for guest-RAM placement).
    fn with_guest_memory(&self, f: &mut dyn FnMut(&[GuestRegion<'_>]));

    /// Sends one encoded `Event` message to the guest (the device's event queue). Never
    /// blocks: with no buffer posted the event is held (bounded) or dropped and counted.
    /// May be called from any thread.
    fn send_event(&self, message: &[u8]) -> Result<(), ExposureError> {
        let _ = message;
        Err(ExposureError::Unsupported("events"))
    }
}
