//! The transport between a client and the broker: one request in, one reply (and its fds) out,
//! plus unsolicited events and, where the transport has one, the shared-memory window.

use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::Duration;

use thiserror::Error;

use crate::mapping::MappedRegion;

/// Errors of a transport. The client wraps them in [`crate::ClientError::Transport`].
#[derive(Debug, Error)]
pub enum TransportError {
    /// A system call failed.
    #[error("{what} failed")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The peer closed the connection.
    #[error("the broker closed the connection")]
    Closed,
    /// No reply within the transport's timeout. Every transport is unusable afterwards (the
    /// device still owns the buffers; a late reply on a socket would answer the next request);
    /// see [`TransportError::Broken`].
    #[error("no reply within {0:?}")]
    Timeout(Duration),
    /// An earlier failure left the transport in an unknown state; reconnect (or reset the device).
    #[error("the transport is unusable after an earlier failure")]
    Broken,
    /// The request is larger than the transport can carry.
    #[error("request of {len} bytes exceeds the transport's limit of {max}")]
    RequestTooLarge {
        /// Request size.
        len: usize,
        /// Largest request.
        max: usize,
    },
    /// The peer sent something the transport cannot frame (bad header, truncated message,
    /// a descriptor the driver never posted, a length past the buffer).
    #[error("the broker sent an invalid frame: {0}")]
    Protocol(String),
    /// The device or socket could not be set up.
    #[error("transport setup failed: {0}")]
    Setup(String),
}

impl TransportError {
    /// An [`TransportError::Io`] from a rustix errno.
    pub(crate) fn errno(what: &'static str, e: rustix::io::Errno) -> Self {
        TransportError::Io {
            what,
            source: e.into(),
        }
    }
}

/// Carries encoded messages (`bufbroker_proto::wire` frames) to the broker and back.
///
/// A transport frames and moves bytes; it does not decode payloads. The [`crate::Client`]
/// encodes, decodes and validates.
pub trait Transport {
    /// Sends one encoded request and returns the encoded reply with the file descriptors that
    /// came with it (only the local socket carries fds). Events that arrive while waiting are
    /// kept for [`Transport::recv_event`].
    fn round_trip(&mut self, request: &[u8]) -> Result<(Vec<u8>, Vec<OwnedFd>), TransportError>;

    /// Returns the next encoded `Event` message, waiting at most `timeout` (`None`: do not
    /// wait). `Ok(None)` when there is none.
    fn recv_event(&mut self, timeout: Option<Duration>) -> Result<Option<Vec<u8>>, TransportError>;

    /// The device's shared-memory region 0 (the host window), mapped into this process, if the
    /// transport has one.
    fn window(&self) -> Option<Arc<MappedRegion>> {
        None
    }

    /// Size of the host window the device announces (config space), if known. Buffer offsets
    /// are checked against the smaller of this and the mapped window.
    fn window_size(&self) -> Option<u64> {
        self.window().map(|w| w.len() as u64)
    }

    /// A new fd through which another process can map the host window from offset 0 (so that
    /// `Location::HostWindow` offsets stay valid there), if the transport can give one. The
    /// guest agent (`crate::agent`) hands it to its clients with `HelloReply`.
    fn window_fd(&self) -> Option<OwnedFd> {
        None
    }
}

impl<T: Transport + ?Sized> Transport for Box<T> {
    fn round_trip(&mut self, request: &[u8]) -> Result<(Vec<u8>, Vec<OwnedFd>), TransportError> {
        (**self).round_trip(request)
    }

    fn recv_event(&mut self, timeout: Option<Duration>) -> Result<Option<Vec<u8>>, TransportError> {
        (**self).recv_event(timeout)
    }

    fn window(&self) -> Option<Arc<MappedRegion>> {
        (**self).window()
    }

    fn window_size(&self) -> Option<u64> {
        (**self).window_size()
    }

    fn window_fd(&self) -> Option<OwnedFd> {
        (**self).window_fd()
    }
}
