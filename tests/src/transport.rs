//! [`HarnessTransport`]: the guest library's [`Transport`] over the harness [`Vmm`], so the
//! real `bufbroker_guest::Client` talks to the real broker through the vhost-user device, as
//! the userspace virtio-pci driver does inside a guest.
//!
//! Requests go on queue 0 (one in flight, a reply area of [`MAX_MESSAGE_SIZE`] bytes), events
//! come on queue 1 into [`EVENT_BUFFERS_POSTED`] buffers posted up front (each handed back as
//! soon as its event is read), and the window is the harness VMM's mapping of shared-memory
//! region 0 ([`crate::vmm::ChannelLog::window_region`]).

use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::Duration;

use bufbroker_guest::{MappedRegion, Transport, TransportError};
use bufbroker_proto::wire::MAX_MESSAGE_SIZE;

use crate::vmm::Vmm;
use crate::{HarnessError, Result};

/// Event buffers kept posted on queue 1.
pub const EVENT_BUFFERS_POSTED: usize = 16;
/// Default time [`Transport::round_trip`] waits for the used element.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// A [`Transport`] over a started harness [`Vmm`] (see the module docs).
///
/// Like the real driver it is unusable after a timeout or a framing failure (the device may
/// still answer the lost request; its chain is never reused): every later call returns
/// [`TransportError::Broken`].
pub struct HarnessTransport {
    vmm: Vmm,
    timeout: Duration,
    broken: bool,
}

impl std::fmt::Debug for HarnessTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HarnessTransport")
            .field("timeout", &self.timeout)
            .field("broken", &self.broken)
            .finish_non_exhaustive()
    }
}

impl HarnessTransport {
    /// Takes a started `vmm` and posts its event buffers.
    pub fn new(mut vmm: Vmm) -> Result<Self> {
        vmm.post_event_buffers(EVENT_BUFFERS_POSTED)?;
        Ok(HarnessTransport {
            vmm,
            timeout: DEFAULT_TIMEOUT,
            broken: false,
        })
    }

    /// Sets how long [`Transport::round_trip`] waits for the device.
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }

    /// Whether an earlier failure made the transport unusable.
    pub fn is_broken(&self) -> bool {
        self.broken
    }

    /// The VMM (its backend-channel log, config space).
    pub fn vmm(&self) -> &Vmm {
        &self.vmm
    }

    /// The VMM, mutably (reset, raw chains). Requests sent around the transport must not be
    /// left in flight.
    pub fn vmm_mut(&mut self) -> &mut Vmm {
        &mut self.vmm
    }

    /// Gives the VMM back.
    pub fn into_vmm(self) -> Vmm {
        self.vmm
    }

    /// Marks the transport broken and returns `e`.
    fn fail(&mut self, e: TransportError) -> TransportError {
        self.broken = true;
        e
    }
}

/// A harness failure (guest memory, the ring, an eventfd) as a transport error.
fn harness(what: &'static str, e: HarnessError) -> TransportError {
    TransportError::Io {
        what,
        source: std::io::Error::other(e),
    }
}

impl Transport for HarnessTransport {
    fn round_trip(
        &mut self,
        request: &[u8],
    ) -> std::result::Result<(Vec<u8>, Vec<OwnedFd>), TransportError> {
        if self.broken {
            return Err(TransportError::Broken);
        }
        if request.len() > MAX_MESSAGE_SIZE {
            return Err(TransportError::RequestTooLarge {
                len: request.len(),
                max: MAX_MESSAGE_SIZE,
            });
        }
        let capacity = MAX_MESSAGE_SIZE as u32;
        // A failed submit leaves nothing posted; a failed kick or wait leaves the chain with
        // the device, in an unknown state.
        let head = self
            .vmm
            .submit(request, capacity)
            .map_err(|e| harness("posting the request", e))?;
        if let Err(e) = self.vmm.kick(0) {
            return Err(self.fail(harness("kicking the request queue", e)));
        }
        let used = match self.vmm.poll_used(0, self.timeout) {
            Ok(Some(used)) => used,
            Ok(None) => return Err(self.fail(TransportError::Timeout(self.timeout))),
            Err(e) => return Err(self.fail(TransportError::Protocol(e.to_string()))),
        };
        let (used_head, reply) = used;
        if used_head != head {
            return Err(self.fail(TransportError::Protocol(format!(
                "the device returned chain {used_head} for the request at {head}"
            ))));
        }
        if reply.len() > MAX_MESSAGE_SIZE {
            return Err(self.fail(TransportError::Protocol(format!(
                "the device wrote {} bytes into a {capacity}-byte reply area",
                reply.len()
            ))));
        }
        Ok((reply, Vec::new()))
    }

    fn recv_event(
        &mut self,
        timeout: Option<Duration>,
    ) -> std::result::Result<Option<Vec<u8>>, TransportError> {
        if self.broken {
            return Err(TransportError::Broken);
        }
        let event = match self.vmm.poll_event(timeout.unwrap_or(Duration::ZERO)) {
            Ok(event) => event,
            Err(e) => return Err(self.fail(TransportError::Protocol(e.to_string()))),
        };
        if event.is_some() {
            // Hand a buffer back so the device can deliver the next one.
            if let Err(e) = self.vmm.post_event_buffers(1) {
                return Err(self.fail(harness("posting an event buffer", e)));
            }
        }
        Ok(event)
    }

    fn window(&self) -> Option<Arc<MappedRegion>> {
        self.vmm.channel.window_region()
    }

    fn window_size(&self) -> Option<u64> {
        Some(self.vmm.shmem_size()).filter(|&s| s > 0)
    }
}
