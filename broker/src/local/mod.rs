//! Host processes as clients: a Unix socket speaking the wire protocol.
//!
//! **Framing**: `SOCK_STREAM`, each message the wire protocol's 16-byte header followed by
//! exactly `payload_len` bytes (`virtio-proto/PROTOCOL.md`, "Host clients"). A stream socket
//! was chosen over `SOCK_SEQPACKET` because it is what the protocol specifies, and a reader
//! needs no maximum-size receive buffer: it reads the header, then the announced payload.
//! Replies that carry buffers send their fds as `SCM_RIGHTS` ancillary data attached to the
//! reply's first byte, in `fd_index` order.
//!
//! **Identity**: `SO_PEERCRED` gives the peer's uid and pid; the owner is named `uid:<uid>`
//! for policy and quotas (`[owners."uid:1000"]` in the configuration). Every connection is
//! its own owner in the registry (quotas apply per connection), so two processes of one user
//! do not free each other's buffers; grants name `uid:<uid>` and reach every connection of
//! that user.
//!
//! **Lifetime**: one thread per connection. When the connection closes — cleanly, in the
//! middle of a message, or before its reply could be sent — the session ends and everything
//! the client held is freed.
//!
//! A malformed header cannot be skipped on a stream (its length is untrusted), so the server
//! answers it with an `ErrorReply` and closes the connection; every other bad request gets an
//! `ErrorReply` and the connection keeps serving.

pub mod client;
mod framing;
mod server;

pub use client::{Client, ClientError};
pub use framing::FramingError;
pub use server::{LocalServer, ServerError};
