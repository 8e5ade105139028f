//! bufbroker's in-process test harness: a VMM and a guest driver in one process, talking to
//! the real broker code over a real vhost-user socket.
//!
//! - [`broker::TestBroker`] runs `bufbroker::vhost::serve_socket` on a fresh socket in a
//!   thread, with any [`bufbroker::vhost::HandlerFactory`];
//!   [`broker::Recorder`] is a factory that records teardowns and hands out each connection's
//!   [`bufbroker::exposure::GuestExposure`].
//! - [`vmm::Vmm`] plays QEMU: the handshake through vhost's `Frontend`, memfd guest RAM,
//!   the backend channel served on its own thread (recording SHMEM_MAP / SHARED_OBJECT
//!   traffic, acking with REPLY_ACK, mapping windows into a reserved address range), device
//!   start, reset and disconnect.
//! - [`ring::SplitRing`] is the guest driver's side of a split virtqueue, with EVENT_IDX
//!   (virtio-queue's `MockSplitQueue` lays out 256-entry rings wrongly and never wraps).
//! - [`session::FullBroker`] is one broker behind the device and a local socket; [`session`]
//!   also holds the guest's side of a session (Hello, requests, allocations).
//! - [`transport::HarnessTransport`] is `bufbroker_guest::Transport` over a [`vmm::Vmm`]:
//!   the guest library's `Client` through the device, as inside a guest.
//!
//! - [`e2e`]: what the host-side binaries of `tests/e2e/qemu-scenarios.sh` share.
//!
//! See `tests/README.md` for what the tests cover.

pub mod broker;
pub mod e2e;
pub mod memory;
pub mod ring;
pub mod session;
pub mod transport;
pub mod vmm;

use thiserror::Error;

/// A harness failure, with what was being done.
#[derive(Debug, Error)]
#[error("{0}")]
pub struct HarnessError(pub String);

impl HarnessError {
    /// An error from `what` and a cause.
    pub fn new(what: &str, cause: impl std::fmt::Display) -> Self {
        HarnessError(format!("{what}: {cause}"))
    }
}

/// The harness's result type.
pub type Result<T> = std::result::Result<T, HarnessError>;

/// Adds context to any displayable error.
pub trait Context<T> {
    /// Wraps the error with `what`.
    fn context(self, what: &str) -> Result<T>;
}

impl<T, E: std::fmt::Display> Context<T> for std::result::Result<T, E> {
    fn context(self, what: &str) -> Result<T> {
        self.map_err(|e| HarnessError::new(what, e))
    }
}
