//! The wire protocol: a fixed 16-byte little-endian header followed by a postcard payload.
//!
//! ```text
//! offset  size  field
//!      0     4  magic "BBRK" (0x4B524242 as a little-endian u32)
//!      4     2  protocol version
//!      6     2  message type code (MessageType)
//!      8     4  request id (echoed in the reply; 0 for events)
//!     12     4  payload length in bytes
//!     16     n  payload: postcard 1.x encoding of the message type's payload struct
//! ```
//!
//! `virtio-proto/PROTOCOL.md` specifies every payload byte by byte; `tests/golden/` pins them.
//!
//! # Bounded decoding
//!
//! [`decode`] checks, in this order: at least a header's worth of bytes, the magic, the
//! version, the payload length against [`MAX_PAYLOAD_SIZE`], the payload length against the
//! bytes present, the type code; then decodes the payload with `postcard::take_from_bytes`,
//! rejects trailing bytes, and checks the decoded content against the hard limits
//! ([`crate::limits`] and [`check_message`]). Every failure is a [`WireError`] with a stable
//! [`ErrorCode`]; none needs a disconnect. [`decode_header`] alone lets a server learn the
//! request id when the payload is bad, so it can send an [`ErrorReply`].
//!
//! # Worst-case allocation while decoding
//!
//! The limits are checked after postcard has built the value, so what bounds memory during
//! decoding is postcard's framing:
//!
//! - Every list element and every string byte costs at least one input byte: no message
//!   contains a list of a zero-sized type (asserted at compile time below), unit-only enums
//!   encode as a one-byte varint, and a `String`/`Vec<u8>` is its length plus its bytes. So
//!   a list has at most [`MAX_PAYLOAD_SIZE`] elements, whatever its length prefix claims.
//! - Preallocation is capped twice: postcard reports no size hint when the claimed length
//!   exceeds the bytes left, and serde caps any hint at 1 MiB per list. A hostile length
//!   prefix therefore costs at most `min(bytes left, 1 MiB / size_of::<T>())` elements of
//!   up-front capacity, and only for lists being decoded (at most one per nesting level,
//!   four levels deep in `Request`: participants → alternatives → formats → modifiers).
//! - Fully decoded data is at most `size_of::<T>()` bytes of memory per input byte for the
//!   largest element type reached by a one-byte encoding (a `ConstraintSet` with every field
//!   empty encodes in about 30 bytes; a `FormatModifiers` in 2 bytes for 32 bytes of memory).
//!
//! `tests/wire_alloc.rs` measures the peak on adversarial inputs; the bound it asserts is
//! documented in `PROTOCOL.md` ("Resource bounds").

mod error;
mod fit;
mod message;
mod validate;

pub use error::{ErrorCode, WireError};
pub use fit::{fit_diagnostic, fit_solution};
pub use message::*;
pub use validate::check_message;

use crate::limits::{MAX_ALTERNATIVES, MAX_BUFFER_COUNT, MAX_PARTICIPANTS};

/// The magic at offset 0: the bytes `BBRK`.
pub const MAGIC: [u8; 4] = *b"BBRK";
/// Size of the header.
pub const HEADER_SIZE: usize = 16;
/// Largest message, header included.
pub const MAX_MESSAGE_SIZE: usize = 64 * 1024;
/// Largest payload.
pub const MAX_PAYLOAD_SIZE: usize = MAX_MESSAGE_SIZE - HEADER_SIZE;
/// The protocol version this crate speaks best (and encodes with).
pub const PROTOCOL_VERSION: u16 = 1;
/// The lowest protocol version this crate decodes.
pub const MIN_PROTOCOL_VERSION: u16 = 1;
/// The highest protocol version this crate decodes.
pub const MAX_PROTOCOL_VERSION: u16 = PROTOCOL_VERSION;

/// Largest `Ping`/`Pong` payload.
pub const MAX_PING_PAYLOAD: usize = 1024;
/// Most guest-physical ranges in one `Placement::GuestRam`.
pub const MAX_GUEST_RANGES: usize = 256;
/// Most plans in one `SolveReply`.
pub const MAX_PLANS: usize = 16;
/// Most ignored extensions in one `SolveReply`: one per extension of every alternative of
/// every participant, so a solver outcome never exceeds it.
pub const MAX_IGNORED_EXTENSIONS: usize =
    MAX_PARTICIPANTS * MAX_ALTERNATIVES * crate::limits::MAX_EXTENSIONS;
/// Most conflicts, and most notes, in one diagnostic.
pub const MAX_DIAGNOSTIC_ENTRIES: usize = 64;
/// Longest diagnostic text (a conflict's value, a note) in bytes.
pub const MAX_TEXT: usize = 1024;
/// Longest `ErrorReply` message in bytes.
pub const MAX_ERROR_MESSAGE: usize = 1024;
/// Most owners in one `StatsReply`.
pub const MAX_STATS_OWNERS: usize = 256;
/// Most participants one session may register.
pub const MAX_REGISTERED_PARTICIPANTS: usize = 64;
/// Smallest writable buffer a driver posts on the event queue; every `Event` fits.
pub const EVENT_BUFFER_SIZE: usize = 1024;

// No message may contain a list of a zero-sized type: postcard would decode a hostile
// length prefix into that many elements without consuming input. These are the element
// types of every `Vec` reachable from `Message`.
const _: () = {
    use std::mem::size_of;
    assert!(size_of::<u8>() > 0);
    assert!(size_of::<u32>() > 0);
    assert!(size_of::<String>() > 0);
    assert!(size_of::<crate::Fourcc>() > 0);
    assert!(size_of::<crate::Modifier>() > 0);
    assert!(size_of::<crate::Participant>() > 0);
    assert!(size_of::<crate::ConstraintSet>() > 0);
    assert!(size_of::<crate::FormatModifiers>() > 0);
    assert!(size_of::<crate::AddressRange>() > 0);
    assert!(size_of::<crate::CacheMode>() > 0);
    assert!(size_of::<crate::Extension>() > 0);
    assert!(size_of::<crate::Plan>() > 0);
    assert!(size_of::<crate::PlaneLayout>() > 0);
    assert!(size_of::<crate::solver::IgnoredExtension>() > 0);
    assert!(size_of::<crate::solver::Conflict>() > 0);
    assert!(size_of::<GuestRange>() > 0);
    assert!(size_of::<BufferInfo>() > 0);
    assert!(size_of::<OwnerStats>() > 0);
};

impl WireLimits {
    /// The limits this crate enforces.
    pub const CURRENT: WireLimits = WireLimits {
        max_message_size: MAX_MESSAGE_SIZE as u32,
        max_participants: MAX_PARTICIPANTS as u32,
        max_alternatives: MAX_ALTERNATIVES as u32,
        max_buffers_per_request: MAX_BUFFER_COUNT,
        max_guest_ranges: MAX_GUEST_RANGES as u32,
        max_registered_participants: MAX_REGISTERED_PARTICIPANTS as u32,
        max_ping_payload: MAX_PING_PAYLOAD as u32,
    };
}

/// A decoded header (the magic is implied).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Header {
    /// Protocol version the message is framed with.
    pub version: u16,
    /// Message type code; see [`Header::message_type`].
    pub type_code: u16,
    /// Request id, echoed in the reply.
    pub request_id: u32,
    /// Payload length in bytes.
    pub payload_len: u32,
}

impl Header {
    /// The message type, if the code is known.
    pub fn message_type(&self) -> Option<MessageType> {
        MessageType::from_code(self.type_code)
    }

    /// The 16 header bytes.
    pub fn to_bytes(&self) -> [u8; HEADER_SIZE] {
        let mut b = [0u8; HEADER_SIZE];
        let fields: [&[u8]; 5] = [
            &MAGIC,
            &self.version.to_le_bytes(),
            &self.type_code.to_le_bytes(),
            &self.request_id.to_le_bytes(),
            &self.payload_len.to_le_bytes(),
        ];
        let mut at = 0;
        for f in fields {
            if let Some(dst) = b.get_mut(at..at + f.len()) {
                dst.copy_from_slice(f);
            }
            at += f.len();
        }
        b
    }
}

fn le_u16(b: &[u8; HEADER_SIZE], at: usize) -> u16 {
    let mut v = [0u8; 2];
    if let Some(s) = b.get(at..at + 2) {
        v.copy_from_slice(s);
    }
    u16::from_le_bytes(v)
}

fn le_u32(b: &[u8; HEADER_SIZE], at: usize) -> u32 {
    let mut v = [0u8; 4];
    if let Some(s) = b.get(at..at + 4) {
        v.copy_from_slice(s);
    }
    u32::from_le_bytes(v)
}

/// Reads and validates the header at the start of `bytes`: length, magic, version, and the
/// payload length against [`MAX_PAYLOAD_SIZE`]. It does not look at the payload (a stream
/// reader calls it on the first 16 bytes to learn how many more to read) nor at the type code.
pub fn decode_header(bytes: &[u8]) -> Result<Header, WireError> {
    let head: &[u8; HEADER_SIZE] = bytes
        .get(..HEADER_SIZE)
        .and_then(|h| h.try_into().ok())
        .ok_or(WireError::ShortMessage { len: bytes.len() })?;
    let magic = le_u32(head, 0);
    if magic != u32::from_le_bytes(MAGIC) {
        return Err(WireError::BadMagic { found: magic });
    }
    let header = Header {
        version: le_u16(head, 4),
        type_code: le_u16(head, 6),
        request_id: le_u32(head, 8),
        payload_len: le_u32(head, 12),
    };
    if !(MIN_PROTOCOL_VERSION..=MAX_PROTOCOL_VERSION).contains(&header.version) {
        return Err(WireError::UnsupportedVersion {
            version: header.version,
        });
    }
    if header.payload_len as usize > MAX_PAYLOAD_SIZE {
        return Err(WireError::MessageTooLarge {
            len: header.payload_len as usize,
            max: MAX_PAYLOAD_SIZE,
        });
    }
    Ok(header)
}

/// The request id at offset 8, if at least 12 bytes are present, whatever else is wrong.
/// For addressing an error reply when [`decode_header`] fails; the header layout is the same
/// in every protocol version.
pub fn peek_request_id(bytes: &[u8]) -> Option<u32> {
    let b: [u8; 4] = bytes.get(8..12)?.try_into().ok()?;
    Some(u32::from_le_bytes(b))
}

/// Decodes one complete message: header, payload, limits. `bytes` must hold exactly one
/// message.
pub fn decode(bytes: &[u8]) -> Result<(Header, Message), WireError> {
    let header = decode_header(bytes)?;
    let payload = bytes.get(HEADER_SIZE..).unwrap_or_default();
    if payload.len() != header.payload_len as usize {
        return Err(WireError::LengthMismatch {
            announced: header.payload_len,
            present: payload.len(),
        });
    }
    let ty = header
        .message_type()
        .ok_or(WireError::UnknownMessageType(header.type_code))?;
    let (message, rest) = Message::deserialize_payload(ty, payload)
        .map_err(|source| WireError::Malformed { ty, source })?;
    if !rest.is_empty() {
        return Err(WireError::TrailingBytes {
            ty,
            trailing: rest.len(),
        });
    }
    check_message(&message).map_err(|source| WireError::Limit { ty, source })?;
    Ok((header, message))
}

/// Encodes `message` with `request_id`, framed with [`PROTOCOL_VERSION`].
///
/// Fails when the message breaks a limit the decoder enforces (so a peer never receives what
/// it must reject) or its payload is larger than [`MAX_PAYLOAD_SIZE`].
pub fn encode(message: &Message, request_id: u32) -> Result<Vec<u8>, WireError> {
    let ty = message.message_type();
    check_message(message).map_err(|source| WireError::Limit { ty, source })?;
    let payload = message
        .serialize_payload()
        .map_err(|source| WireError::Encode { ty, source })?;
    let payload_len = u32::try_from(payload.len())
        .ok()
        .filter(|&n| n as usize <= MAX_PAYLOAD_SIZE)
        .ok_or(WireError::MessageTooLarge {
            len: payload.len(),
            max: MAX_PAYLOAD_SIZE,
        })?;
    let header = Header {
        version: PROTOCOL_VERSION,
        type_code: ty.code(),
        request_id,
        payload_len,
    };
    let mut out = Vec::with_capacity(HEADER_SIZE + payload.len());
    out.extend_from_slice(&header.to_bytes());
    out.extend_from_slice(&payload);
    Ok(out)
}

/// The outcome of version negotiation on the broker side.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Negotiated {
    /// The version to use: the highest both sides speak.
    pub version: u16,
    /// The features in effect: the intersection of both sides'.
    pub features: Features,
}

/// Answers a `Hello` for a broker that speaks [`MIN_PROTOCOL_VERSION`]..=[`MAX_PROTOCOL_VERSION`]
/// and offers `offered` features. Fails with [`ErrorCode::UNSUPPORTED_VERSION`] when the
/// ranges do not overlap.
pub fn negotiate(hello: &Hello, offered: Features) -> Result<Negotiated, ErrorCode> {
    let version = hello.max_version.min(MAX_PROTOCOL_VERSION);
    if version < hello.min_version.max(MIN_PROTOCOL_VERSION) {
        return Err(ErrorCode::UNSUPPORTED_VERSION);
    }
    Ok(Negotiated {
        version,
        features: hello.features & offered,
    })
}

/// An error and its sources, joined with `": "` (for an `ErrorReply` message or a log line).
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        source = inner.source();
    }
    s
}
