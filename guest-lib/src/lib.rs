//! Client library for bufbroker.
//!
//! A [`Client`] negotiates a session with the broker over a [`Transport`] and offers the
//! broker's operations as typed calls: ping, register participants, solve, allocate, map a
//! buffer into this process, export/import/grant UUIDs, free, stats and events. Transports:
//!
//! - [`virtio_pci::VirtioPciTransport`]: inside a Linux guest, a userspace driver for the
//!   bufbroker virtio device (PCI `1af4:1065`); host-window buffers are reached through the
//!   mapped shared-memory BAR.
//! - [`local::LocalTransport`]: on the host, the broker's Unix socket; buffers come as fds.
//! - [`fake::FakeTransport`] / [`fake::FakeBroker`]: an in-process stand-in for tests.
//!
//! [`agent`] is the guest agent (`bufbroker-guestd`): it owns the device and serves several
//! guest processes, each a `Client<LocalTransport>`, over a Unix socket.
//!
//! Every reply is decoded with bounded decoding and validated before use; see [`client`].

pub mod agent;
pub mod client;
pub mod fake;
pub mod local;
pub mod mapping;
pub mod participants;
pub mod transport;
pub mod virtio_pci;

#[cfg(feature = "tokio")]
pub mod r#async;

pub use bufbroker_proto;
pub use client::{Allocation, Buffer, Client, ClientError, ClientOptions, Imported, Session};
pub use mapping::{BufferMap, MapError, MappedRegion};
pub use transport::{Transport, TransportError};
