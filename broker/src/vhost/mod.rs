//! The vhost-user device: `bufbroker serve`.
//!
//! QEMU (or the test harness) connects to a unix socket and drives a virtio device whose
//! queues, config space and shared-memory region this module implements on top of
//! `vhost-user-backend`. The data path of one request:
//!
//! 1. The guest driver posts a descriptor chain on the request queue (0): readable
//!    descriptors with one wire message, then writable descriptors for the reply.
//! 2. [`queue`] pops it, bounds and reads the request, and gives the bytes to the
//!    connection's [`RequestHandler`] (the session's `GuestHandler`; [`MinimalHandler`] in
//!    device-level tests).
//! 3. The handler answers with one encoded message; [`queue`] writes it into the writable
//!    descriptors, or an `ErrorReply(MESSAGE_TOO_LARGE)` if it does not fit. Malformed chains
//!    get an `ErrorReply` too: guest input never panics the device or drops the connection.
//! 4. To show a buffer to the guest the handler calls its [`GuestExposure`]
//!    ([`VhostExposure`]): SHMEM_MAP into the window, SHARED_OBJECT_ADD, or guest RAM through
//!    the memory table. Those requests run on the exposure thread, never on the thread that
//!    serves the VMM (measured deadlock with QEMU 11.1), and maps wait until the device is
//!    started.
//! 5. A reset (SET_VRING_ENABLE 0 + GET_VRING_BASE) or a disconnect calls
//!    [`RequestHandler::teardown`]; after a disconnect the socket accepts the next VMM.
//!
//! | file | concern |
//! |---|---|
//! | [`handler`] | the seam: [`RequestHandler`], [`HandlerFactory`], [`MinimalHandler`] |
//! | [`device`] | [`BufbrokerDevice`]: features, config space, shared-memory config, hooks |
//! | [`queue`] | chain → request bytes → handler → reply bytes → chain |
//! | [`exposure`] | [`VhostExposure`]: backend-channel requests on their own thread |
//! | [`window`] | [`WindowAllocator`]: page-aligned ranges of the shared-memory window |
//! | [`server`] | the accept loop: one daemon per connection |
//!
//! QEMU 11.1 specifics (protocol-feature bit numbers, the start-up sequence, the payload-less
//! GET_SHARED_OBJECT patched in `third_party/vhost`) are in `qemu-configs/README.md` and
//! `docs/upstream-vhost-get-shared-object.md`.
//!
//! [`GuestExposure`]: crate::exposure::GuestExposure

pub mod device;
pub mod exposure;
pub mod handler;
mod queue;
pub mod server;
pub mod window;

pub use device::BufbrokerDevice;
pub use exposure::VhostExposure;
pub use handler::{GuestConnection, HandlerFactory, MinimalHandler, RequestHandler, Teardown};
pub use server::{ServeError, StopSignal, serve_connection, serve_socket};
pub use window::{WindowAllocator, WindowError, WindowRange};

use bufbroker_proto::wire::Features;

/// The request queue's index.
pub const REQUEST_QUEUE: u16 = 0;
/// The event queue's index.
pub const EVENT_QUEUE: u16 = 1;
/// Number of queues.
pub const NUM_QUEUES: usize = 2;
/// Largest queue the device accepts.
pub const MAX_QUEUE_SIZE: usize = 256;
/// Default size of the shared-memory window (region 0).
pub const DEFAULT_SHMEM_SIZE: u64 = 64 << 20;

/// What the device advertises.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceConfig {
    /// Name for logs (the socket).
    pub name: String,
    /// Size of shared-memory region 0 in bytes (the window); 0 for none.
    pub shmem_size: u64,
    /// Wire features offered in the config space.
    pub features: Features,
    /// Most buffers per guest, in the config space (0: unlimited).
    pub max_buffers: u32,
}

impl Default for DeviceConfig {
    fn default() -> Self {
        DeviceConfig {
            name: "bufbroker".into(),
            shmem_size: DEFAULT_SHMEM_SIZE,
            features: handler::MINIMAL_FEATURES,
            max_buffers: 0,
        }
    }
}
