//! The seam between the device and the session: [`RequestHandler`].
//!
//! The device knows virtqueues, not messages: it takes the readable bytes of one descriptor
//! chain, gives them to the guest's handler, and writes what comes back into the chain's
//! writable bytes. The handler knows messages, not virtqueues. One handler serves one guest
//! connection; [`HandlerFactory`] makes it when the VMM connects and hands it the
//! [`GuestExposure`] of that connection.
//!
//! `bufbroker serve` plugs in `session::GuestHandler` (one session per guest).
//! [`MinimalHandler`] answers Hello, Ping, and an `ErrorReply` for everything else: the test
//! harness uses it to test the device without the session.

use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bufbroker_proto::wire::{
    self, ErrorCode, ErrorReply, Features, HelloReply, Message, Pong, WireLimits,
};

use uuid::Uuid;

use super::exposure::VhostExposure;
use crate::exposure::GuestExposure;

/// Why the guest's state must go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Teardown {
    /// The guest reset or stopped the device (SET_VRING_ENABLE 0, GET_VRING_BASE). The
    /// connection stays; the next request starts a new session.
    Reset,
    /// The VMM closed the connection.
    Disconnect,
}

/// Answers the requests of one guest connection.
///
/// Called from the device's queue worker thread ([`RequestHandler::handle`]) and from its
/// exposure thread ([`RequestHandler::teardown`]), so it synchronizes internally. It may call the
/// [`GuestExposure`] it was made with from `handle` and from `teardown`.
pub trait RequestHandler: Send + Sync {
    /// Answers one request. `request` is the readable part of a descriptor chain, at most
    /// [`wire::MAX_MESSAGE_SIZE`] bytes (longer chains are answered by the device itself) and
    /// not validated in any way. The reply must be one complete message; when it is longer
    /// than `reply_capacity` (the chain's writable bytes) the device sends
    /// `ErrorReply(MESSAGE_TOO_LARGE)` instead, so a handler that can produce a shorter
    /// answer should check.
    fn handle(&self, request: &[u8], reply_capacity: usize) -> Vec<u8>;

    /// Drops everything the guest holds (buffers, mappings, grants, negotiated state). Called
    /// once per device start when the guest resets it, and once when the VMM disconnects
    /// (then backend-channel requests fail with [`crate::exposure::ExposureError::Disconnected`]).
    fn teardown(&self, why: Teardown);

    /// The file of a shared object this guest exported (SHARED_OBJECT_ADD), for the VMM's
    /// GET_SHARED_OBJECT on behalf of another device. `None`: unknown, and the VMM gets an
    /// error. Called on the thread that serves the VMM's requests: must not block.
    fn shared_object(&self, uuid: Uuid) -> Option<OwnedFd> {
        let _ = uuid;
        None
    }
}

/// What the device tells the factory about a new connection.
#[derive(Clone)]
pub struct GuestConnection {
    /// A name for logs: the socket and the connection's sequence number on it.
    pub name: String,
    /// Backend-channel requests and the guest's memory table for this connection.
    pub exposure: Arc<dyn GuestExposure>,
    /// The same exposure as the device's own type, for what only it offers: its event
    /// counters and the waits on them and on the device's start.
    pub vhost: Arc<VhostExposure>,
}

/// Makes the [`RequestHandler`] of each guest connection.
pub trait HandlerFactory: Send + Sync {
    /// A VMM connected.
    fn connect(&self, guest: GuestConnection) -> Arc<dyn RequestHandler>;
}

impl<F> HandlerFactory for F
where
    F: Fn(GuestConnection) -> Arc<dyn RequestHandler> + Send + Sync,
{
    fn connect(&self, guest: GuestConnection) -> Arc<dyn RequestHandler> {
        self(guest)
    }
}

/// The features [`MinimalHandler`] offers: none (it allocates nothing).
pub const MINIMAL_FEATURES: Features = Features::empty();

/// Answers `Hello` and `Ping`; every other request, and every undecodable one, gets an
/// `ErrorReply`. Requests other than `Hello` and `Ping` before a successful `Hello` get
/// `NOT_NEGOTIATED`, as the session will do.
#[derive(Debug, Default)]
pub struct MinimalHandler {
    negotiated: AtomicBool,
    teardowns: std::sync::atomic::AtomicU64,
}

impl MinimalHandler {
    /// A handler in the "not negotiated" state.
    pub fn new() -> Self {
        Self::default()
    }

    /// A factory making one `MinimalHandler` per connection.
    pub fn factory() -> Arc<dyn HandlerFactory> {
        Arc::new(|_guest: GuestConnection| -> Arc<dyn RequestHandler> { Arc::new(Self::new()) })
    }

    /// How many times [`RequestHandler::teardown`] ran.
    pub fn teardowns(&self) -> u64 {
        self.teardowns.load(Ordering::Relaxed)
    }

    fn answer(&self, request: &[u8]) -> Result<(u32, Message), (u32, ErrorReply)> {
        let id = wire::peek_request_id(request).unwrap_or(0);
        let (header, message) = wire::decode(request).map_err(|e| (id, ErrorReply::from(&e)))?;
        let id = header.request_id;
        let refuse = |code, text: String| Err((id, ErrorReply::new(code, text)));
        match message {
            Message::Hello(hello) => match wire::negotiate(&hello, MINIMAL_FEATURES) {
                Ok(n) => {
                    self.negotiated.store(true, Ordering::Relaxed);
                    Ok((
                        id,
                        Message::HelloReply(HelloReply {
                            version: n.version,
                            features: n.features,
                            limits: WireLimits::CURRENT,
                            broker: concat!("bufbroker ", env!("CARGO_PKG_VERSION")).into(),
                        }),
                    ))
                }
                Err(code) => refuse(code, "no protocol version in common".into()),
            },
            Message::Ping(ping) => Ok((
                id,
                Message::Pong(Pong {
                    payload: ping.payload,
                }),
            )),
            other => {
                let ty = other.message_type();
                if ty.direction() != wire::Direction::Request {
                    refuse(
                        ErrorCode::UNEXPECTED_MESSAGE,
                        format!("{ty} is not a request"),
                    )
                } else if !self.negotiated.load(Ordering::Relaxed) {
                    refuse(ErrorCode::NOT_NEGOTIATED, format!("{ty} before Hello"))
                } else {
                    refuse(
                        ErrorCode::UNSUPPORTED,
                        format!("{ty} is not served by this broker yet"),
                    )
                }
            }
        }
    }
}

impl RequestHandler for MinimalHandler {
    fn handle(&self, request: &[u8], _reply_capacity: usize) -> Vec<u8> {
        let (id, reply) = match self.answer(request) {
            Ok(ok) => ok,
            Err((id, e)) => (id, Message::ErrorReply(e)),
        };
        encode_or_internal_error(&reply, id)
    }

    fn teardown(&self, why: Teardown) {
        log::debug!("minimal handler: teardown ({why:?})");
        self.negotiated.store(false, Ordering::Relaxed);
        self.teardowns.fetch_add(1, Ordering::Relaxed);
    }
}

/// Encodes `reply`; if that fails (a bug: the reply breaks a limit), an `ErrorReply(INTERNAL)`.
pub fn encode_or_internal_error(reply: &Message, request_id: u32) -> Vec<u8> {
    wire::encode(reply, request_id).unwrap_or_else(|e| {
        log::error!(
            "cannot encode a {} reply: {}",
            reply.message_type(),
            wire::error_chain(&e)
        );
        error_reply(
            request_id,
            ErrorCode::INTERNAL,
            "the reply could not be encoded",
        )
    })
}

/// The encoded `ErrorReply`.
pub fn error_reply(request_id: u32, code: ErrorCode, message: &str) -> Vec<u8> {
    // An ErrorReply with a message of at most MAX_ERROR_MESSAGE bytes always encodes.
    wire::encode(
        &Message::ErrorReply(ErrorReply::new(code, message)),
        request_id,
    )
    .unwrap_or_default()
}
