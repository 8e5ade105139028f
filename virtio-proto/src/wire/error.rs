//! Decode and encode errors, and the stable numeric error codes carried by error replies.

use std::fmt;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::limits::LimitError;
use crate::solver::SolveError;

use super::message::MessageType;
use super::{HEADER_SIZE, MAX_PROTOCOL_VERSION, MIN_PROTOCOL_VERSION};

/// A stable numeric error code, as carried by [`ErrorReply`](super::ErrorReply).
///
/// Codes are a `u16` and never change meaning. A peer must accept codes it does not know
/// (newer peers add codes), so this is an open set of constants rather than a closed enum.
///
/// | range | meaning |
/// |---|---|
/// | `0x0001..=0x00ff` | the message could not be decoded ([`WireError`]) |
/// | `0x0100..=0x01ff` | the session or broker refused the request |
/// | `0x0200..=0x02ff` | the solver refused the request |
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ErrorCode(pub u16);

macro_rules! error_codes {
    ($( $(#[$doc:meta])* $name:ident = $value:literal, )*) => {
        impl ErrorCode {
            $( $(#[$doc])* pub const $name: ErrorCode = ErrorCode($value); )*

            /// Every code this version knows, in numeric order.
            pub const ALL: &'static [ErrorCode] = &[$(ErrorCode::$name),*];

            /// The constant's name (`BAD_MAGIC`), or `None` for a code this version does not know.
            pub fn name(self) -> Option<&'static str> {
                match self.0 {
                    $( $value => Some(stringify!($name)), )*
                    _ => None,
                }
            }
        }
    };
}

error_codes! {
    /// The header's magic is not `BBRK`.
    BAD_MAGIC = 0x0001,
    /// The header's protocol version is not one this peer speaks.
    UNSUPPORTED_VERSION = 0x0002,
    /// Fewer bytes than a header.
    SHORT_MESSAGE = 0x0003,
    /// The header's payload length differs from the bytes present.
    LENGTH_MISMATCH = 0x0004,
    /// The message is larger than the maximum message size.
    MESSAGE_TOO_LARGE = 0x0005,
    /// The header's message type is not one this peer knows.
    UNKNOWN_MESSAGE_TYPE = 0x0006,
    /// The payload is not a valid postcard encoding of the message type's payload.
    MALFORMED_PAYLOAD = 0x0007,
    /// Bytes are left over after the payload.
    TRAILING_BYTES = 0x0008,
    /// The decoded message breaks a hard limit (list length, string length, range).
    LIMIT_EXCEEDED = 0x0009,
    /// The message could not be serialized (never sent by a correct peer).
    ENCODE_FAILED = 0x000a,

    /// A request other than `Hello` or `Ping` arrived before version negotiation.
    NOT_NEGOTIATED = 0x0100,
    /// The message is valid but not expected here (a reply or event sent as a request).
    UNEXPECTED_MESSAGE = 0x0101,
    /// The request needs a feature that was not negotiated or that this broker lacks.
    UNSUPPORTED = 0x0102,
    /// A field has a value the broker cannot use (empty guest range, bad placement...).
    INVALID_ARGUMENT = 0x0103,
    /// No such buffer, participant handle, participant name or UUID.
    NOT_FOUND = 0x0104,
    /// The owner may not do this (no grant, participant not allowed for this owner).
    PERMISSION_DENIED = 0x0105,
    /// The owner's quota would be exceeded.
    QUOTA_EXCEEDED = 0x0106,
    /// The heap could not provide the memory.
    OUT_OF_MEMORY = 0x0107,
    /// Too many requests in flight; retry later.
    BUSY = 0x0108,
    /// A bug or unexpected host failure in the broker.
    INTERNAL = 0x0109,
    /// The name is already registered in this session.
    ALREADY_EXISTS = 0x010a,

    /// No buffer satisfies every participant (send `Solve` for the diagnostic).
    UNSATISFIABLE = 0x0200,
    /// A participant requires an extension the solver does not understand.
    UNKNOWN_REQUIRED_EXTENSION = 0x0201,
    /// The solver's search exceeded its step budget.
    SOLVER_BUDGET_EXCEEDED = 0x0202,
    /// The request breaks a limit the solver enforces.
    INVALID_REQUEST = 0x0203,
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(n) => write!(f, "{n} ({:#06x})", self.0),
            None => write!(f, "unknown error code {:#06x}", self.0),
        }
    }
}

impl fmt::Debug for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ErrorCode({self})")
    }
}

impl From<&SolveError> for ErrorCode {
    fn from(e: &SolveError) -> Self {
        match e {
            SolveError::InvalidRequest(_) => ErrorCode::INVALID_REQUEST,
            SolveError::UnknownRequiredExtension { .. } => ErrorCode::UNKNOWN_REQUIRED_EXTENSION,
            SolveError::Unsatisfiable(_) => ErrorCode::UNSATISFIABLE,
            SolveError::BudgetExceeded(_) => ErrorCode::SOLVER_BUDGET_EXCEEDED,
        }
    }
}

/// Why a message could not be decoded or encoded.
///
/// Every variant maps to a stable [`ErrorCode`] ([`WireError::code`]) that a server sends back
/// in an [`ErrorReply`](super::ErrorReply); none of them is a reason to drop the connection.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum WireError {
    /// Fewer bytes than a header.
    #[error("message of {len} bytes is shorter than the {HEADER_SIZE}-byte header")]
    ShortMessage {
        /// Bytes present.
        len: usize,
    },
    /// The magic is wrong: not a bufbroker message.
    #[error("bad magic {found:#010x}, expected \"BBRK\"")]
    BadMagic {
        /// The first four bytes, little-endian.
        found: u32,
    },
    /// The header's protocol version is not supported.
    #[error(
        "protocol version {version} is not supported (this peer speaks {MIN_PROTOCOL_VERSION}..={MAX_PROTOCOL_VERSION})"
    )]
    UnsupportedVersion {
        /// The version in the header.
        version: u16,
    },
    /// The payload (or the whole message) is larger than allowed.
    #[error("payload of {len} bytes exceeds the maximum of {max}")]
    MessageTooLarge {
        /// Payload length announced or produced.
        len: usize,
        /// The maximum payload length.
        max: usize,
    },
    /// The header's payload length differs from the bytes present.
    #[error("header announces {announced} payload bytes but {present} are present")]
    LengthMismatch {
        /// Payload length in the header.
        announced: u32,
        /// Payload bytes present.
        present: usize,
    },
    /// The message type code is unknown.
    #[error("unknown message type {0:#06x}")]
    UnknownMessageType(u16),
    /// The payload does not decode as the message type's payload.
    #[error("malformed {ty:?} payload")]
    Malformed {
        /// The message type.
        ty: MessageType,
        /// What postcard reported.
        #[source]
        source: postcard::Error,
    },
    /// Bytes left after the payload.
    #[error("{trailing} bytes follow the {ty:?} payload")]
    TrailingBytes {
        /// The message type.
        ty: MessageType,
        /// How many bytes are left over.
        trailing: usize,
    },
    /// The decoded (or to-be-encoded) message breaks a hard limit.
    #[error("{ty:?} message exceeds a limit")]
    Limit {
        /// The message type.
        ty: MessageType,
        /// Which limit.
        #[source]
        source: LimitError,
    },
    /// Serialization failed.
    #[error("cannot serialize {ty:?} payload")]
    Encode {
        /// The message type.
        ty: MessageType,
        /// What postcard reported.
        #[source]
        source: postcard::Error,
    },
}

impl WireError {
    /// The stable code for this error.
    pub fn code(&self) -> ErrorCode {
        match self {
            WireError::ShortMessage { .. } => ErrorCode::SHORT_MESSAGE,
            WireError::BadMagic { .. } => ErrorCode::BAD_MAGIC,
            WireError::UnsupportedVersion { .. } => ErrorCode::UNSUPPORTED_VERSION,
            WireError::MessageTooLarge { .. } => ErrorCode::MESSAGE_TOO_LARGE,
            WireError::LengthMismatch { .. } => ErrorCode::LENGTH_MISMATCH,
            WireError::UnknownMessageType(_) => ErrorCode::UNKNOWN_MESSAGE_TYPE,
            WireError::Malformed { .. } => ErrorCode::MALFORMED_PAYLOAD,
            WireError::TrailingBytes { .. } => ErrorCode::TRAILING_BYTES,
            WireError::Limit { .. } => ErrorCode::LIMIT_EXCEEDED,
            WireError::Encode { .. } => ErrorCode::ENCODE_FAILED,
        }
    }
}
