//! The messages: one payload type per message type, and the [`Message`] enum over them.
//!
//! Field order in each struct is the wire order (postcard encodes fields in declaration order
//! with no names), so **reordering, inserting or removing a field is a protocol change** that
//! needs a new protocol version. `PROTOCOL.md` lists every payload field by field; the golden
//! vectors in `tests/golden/` pin the bytes.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use uuid::Uuid;

use crate::participant::Participant;
use crate::plan::Plan;
use crate::request::Request;
use crate::solver::{Diagnostic, Solution};

use super::error::ErrorCode;

bitflags::bitflags! {
    /// Protocol feature bits, negotiated by `Hello`: the broker replies with the intersection
    /// of what both sides offer. Unknown bits are carried through decoding unchanged and
    /// dropped by the intersection.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
    pub struct Features: u64 {
        /// Buffers in the device's shared-memory window (`Placement::HostWindow`, `Map`, `Unmap`).
        const HOST_WINDOW = 1 << 0;
        /// Buffers in the guest's own RAM (`Placement::GuestRam`).
        const GUEST_RAM = 1 << 1;
        /// Buffers handed to host clients as file descriptors (`Placement::HostClient`).
        const HOST_CLIENT_FD = 1 << 2;
        /// Virtio shared objects: `Export`, `Import`, `Grant`.
        const SHARED_OBJECTS = 1 << 3;
        /// Notifications on the event queue (`Event`).
        const EVENTS = 1 << 4;
        /// Session-registered participants (`RegisterParticipant`, `UnregisterParticipant`).
        const REGISTERED_PARTICIPANTS = 1 << 5;
        /// Buffers mapped into host VFIO devices' IOMMU domains; their IOVAs (`QueryIovas`).
        const IOVA = 1 << 6;
    }
}

impl Serialize for Features {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(self.bits())
    }
}

impl<'de> Deserialize<'de> for Features {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        u64::deserialize(d).map(Features::from_bits_retain)
    }
}

/// A UUID as 16 raw bytes on the wire (postcard: a fixed-size array, no length prefix), as a
/// hyphenated string in human-readable formats.
pub(crate) mod uuid_bytes {
    use super::*;

    pub fn serialize<S: Serializer>(u: &Uuid, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            u.serialize(s)
        } else {
            u.as_bytes().serialize(s)
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Uuid, D::Error> {
        if d.is_human_readable() {
            Uuid::deserialize(d)
        } else {
            <[u8; 16]>::deserialize(d).map(Uuid::from_bytes)
        }
    }
}

/// A buffer, named by the broker. Unique per broker for the broker's lifetime; never 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct BufferId(pub u64);

impl fmt::Display for BufferId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "buffer {}", self.0)
    }
}

/// A participant registered in one session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ParticipantHandle(pub u32);

/// Protocol limits a broker announces (in `HelloReply` and `LimitsReply`). A peer must not
/// send more than these; the broker rejects what exceeds them with `LIMIT_EXCEEDED`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct WireLimits {
    /// Largest message, header included, in bytes.
    pub max_message_size: u32,
    /// Most participants in one request.
    pub max_participants: u32,
    /// Most alternatives per participant.
    pub max_alternatives: u32,
    /// Most buffers one `Allocate` may create.
    pub max_buffers_per_request: u32,
    /// Most guest-physical ranges in one `Placement::GuestRam`.
    pub max_guest_ranges: u32,
    /// Most participants one session may register.
    pub max_registered_participants: u32,
    /// Largest `Ping` payload in bytes.
    pub max_ping_payload: u32,
}

/// `Hello` (request): the first message of a session; proposes a version range and features.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Hello {
    /// Lowest protocol version the sender speaks.
    pub min_version: u16,
    /// Highest protocol version the sender speaks.
    pub max_version: u16,
    /// Features the sender wants.
    pub features: Features,
    /// Free-form name of the client (for logs), at most `MAX_STRING` bytes.
    pub client: String,
}

/// `HelloReply`: the chosen version, the negotiated features and the broker's limits.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct HelloReply {
    /// The version both sides use from now on: the highest both speak.
    pub version: u16,
    /// Features in effect: the intersection of both sides'.
    pub features: Features,
    /// The broker's limits.
    pub limits: WireLimits,
    /// Free-form name and version of the broker.
    pub broker: String,
}

/// `Ping` (request): liveness check; the reply echoes the payload.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Ping {
    /// Opaque bytes, at most [`MAX_PING_PAYLOAD`](super::MAX_PING_PAYLOAD).
    pub payload: Vec<u8>,
}

/// `Pong`: the reply to `Ping`, with its payload.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Pong {
    /// The `Ping` payload, unchanged.
    pub payload: Vec<u8>,
}

/// `RegisterParticipant` (request): describe a participant once; later requests name it with
/// `ParticipantId::Named(name)`. A session's registered names shadow broker-configured ones.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RegisterParticipant {
    /// The name requests use, at most `MAX_STRING` bytes.
    pub name: String,
    /// The participant.
    pub participant: Participant,
}

/// `RegisterParticipantReply`: the handle of the registered participant.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RegisterParticipantReply {
    /// Handle for `UnregisterParticipant` and `Event::ParticipantGone`.
    pub handle: ParticipantHandle,
}

/// `UnregisterParticipant` (request): forget a registered participant.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct UnregisterParticipant {
    /// Its handle.
    pub handle: ParticipantHandle,
}

/// `UnregisterParticipantReply`: the participant is forgotten.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct UnregisterParticipantReply {
    /// Its handle.
    pub handle: ParticipantHandle,
}

/// `Solve` (request): what would a buffer for this request look like? Allocates nothing.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Solve {
    /// The request.
    pub request: Request,
}

/// `SolveReply`: ranked plans, or why there are none. Other solver failures (limits, unknown
/// required extension, budget) are sent as `ErrorReply`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum SolveReply {
    /// Plans, best first.
    Solved(Solution),
    /// No buffer satisfies every participant.
    Unsatisfiable(Box<Diagnostic>),
}

/// One guest-physical range of guest RAM, page aligned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct GuestRange {
    /// Guest-physical address of the first byte.
    pub addr: u64,
    /// Length in bytes.
    pub len: u64,
}

/// Where the memory of a new buffer lives and how the requester reaches it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Placement {
    /// Broker heap memory, mapped into the device's shared-memory window.
    HostWindow,
    /// The guest's own pages. The ranges, concatenated in order, hold the buffers one after
    /// another: buffer `i` is bytes `[i * plan.size, (i + 1) * plan.size)` of the concatenation.
    GuestRam {
        /// Guest-physical ranges, at most [`MAX_GUEST_RANGES`](super::MAX_GUEST_RANGES).
        ranges: Vec<GuestRange>,
    },
    /// Broker heap memory, handed to a host client as a file descriptor over the socket.
    HostClient,
}

/// `Allocate` (request): solve and allocate `request.count` buffers of the best plan.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Allocate {
    /// The request.
    pub request: Request,
    /// Where the buffers go.
    pub placement: Placement,
}

/// Where the requester finds one buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Location {
    /// Not mapped anywhere for this requester (reach it through its UUID or `Map`).
    Unmapped,
    /// In the device's shared-memory region `shmid`, at `offset`, `len` bytes.
    HostWindow {
        /// Shared-memory region id (0).
        shmid: u8,
        /// Offset in the region, page aligned.
        offset: u64,
        /// Mapped length, `plan.size` rounded up to a page.
        len: u64,
    },
    /// In the guest RAM ranges the requester sent.
    GuestRam,
    /// In the file descriptor with this index among those sent with the reply (`SCM_RIGHTS`).
    HostClient {
        /// Index of the fd in the reply's ancillary data.
        fd_index: u32,
    },
}

/// One buffer created or imported.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct BufferInfo {
    /// The broker's id.
    pub id: BufferId,
    /// The virtio shared-object UUID (also used by `Import` and `Grant`).
    #[serde(with = "uuid_bytes")]
    pub uuid: Uuid,
    /// Where the requester finds it.
    pub location: Location,
}

/// `AllocateReply`: the plan used and the buffers created.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct AllocateReply {
    /// The layout and placement of every buffer.
    pub plan: Plan,
    /// `request.count` buffers, at most `MAX_BUFFER_COUNT`.
    pub buffers: Vec<BufferInfo>,
}

/// `Free` (request): release a buffer: every view of it (window mapping, shared object,
/// imports by others) is torn down and its quota returned.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Free {
    /// The buffer.
    pub buffer: BufferId,
}

/// `FreeReply`: the buffer is gone.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct FreeReply {
    /// The buffer.
    pub buffer: BufferId,
}

/// `Export` (request): make a buffer a virtio shared object other devices of the VM can import.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Export {
    /// The buffer.
    pub buffer: BufferId,
}

/// `ExportReply`: the buffer's UUID.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ExportReply {
    /// The buffer.
    pub buffer: BufferId,
    /// Its shared-object UUID.
    #[serde(with = "uuid_bytes")]
    pub uuid: Uuid,
}

/// How an importer may use a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Access {
    /// Read only.
    ReadOnly,
    /// Read and write.
    ReadWrite,
}

/// `Grant` (request): let another owner (a VM or host client, by its configured name) import
/// the buffer.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Grant {
    /// The buffer.
    pub buffer: BufferId,
    /// The owner's name as configured on the broker, at most `MAX_STRING` bytes.
    pub grantee: String,
    /// What the grantee may do.
    pub access: Access,
}

/// `GrantReply`: the UUID the grantee imports.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct GrantReply {
    /// The buffer.
    pub buffer: BufferId,
    /// Its UUID.
    #[serde(with = "uuid_bytes")]
    pub uuid: Uuid,
}

/// How an importer wants to reach an imported buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ImportView {
    /// No mapping (use `Map` later, or only pass the UUID on).
    None,
    /// Map it into the shared-memory window.
    HostWindow,
    /// Send the fd (host clients).
    HostClient,
}

/// `Import` (request): take a reference to a buffer exported by, and granted to, this owner.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Import {
    /// The buffer's UUID.
    #[serde(with = "uuid_bytes")]
    pub uuid: Uuid,
    /// How to reach it.
    pub view: ImportView,
}

/// `ImportReply`: this owner's id for the buffer, its layout and location.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ImportReply {
    /// The buffer as this owner sees it.
    pub buffer: BufferInfo,
    /// Its layout.
    pub plan: Plan,
    /// What this owner may do with it.
    pub access: Access,
}

/// `Map` (request): map a buffer into the shared-memory window.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Map {
    /// The buffer.
    pub buffer: BufferId,
}

/// `MapReply`: where the buffer is in the window.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct MapReply {
    /// The buffer.
    pub buffer: BufferId,
    /// Shared-memory region id (0).
    pub shmid: u8,
    /// Offset in the region, page aligned.
    pub offset: u64,
    /// Mapped length.
    pub len: u64,
}

/// `Unmap` (request): remove a buffer's window mapping; the buffer stays allocated.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Unmap {
    /// The buffer.
    pub buffer: BufferId,
}

/// `UnmapReply`: the mapping is gone.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct UnmapReply {
    /// The buffer.
    pub buffer: BufferId,
}

/// `QueryStats` (request): accounting of the requester (all owners for an admin client).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub struct QueryStats;

/// Accounting of one owner.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct OwnerStats {
    /// The owner's configured name, at most `MAX_STRING` bytes.
    pub owner: String,
    /// Bytes allocated.
    pub bytes: u64,
    /// Buffers allocated.
    pub buffers: u32,
    /// Requests being processed.
    pub in_flight: u32,
    /// Byte quota; 0 means unlimited.
    pub quota_bytes: u64,
    /// Buffer-count quota; 0 means unlimited.
    pub quota_buffers: u32,
}

/// `StatsReply`: accounting per owner.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct StatsReply {
    /// One entry per owner, at most [`MAX_STATS_OWNERS`](super::MAX_STATS_OWNERS).
    pub owners: Vec<OwnerStats>,
}

/// `QueryLimits` (request): the broker's limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub struct QueryLimits;

/// `LimitsReply`: the broker's limits.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct LimitsReply {
    /// The limits.
    pub limits: WireLimits,
}

/// `QueryIovas` (request): where the host VFIO devices named in the buffer's `Allocate`
/// reach it. Only the buffer's owner gets an answer; the IOVAs were set up by that `Allocate`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct QueryIovas {
    /// The buffer.
    pub buffer: BufferId,
}

/// One buffer's mapping in one VFIO device's IOMMU domain.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct IovaMapping {
    /// The host participant's configured name (as the request named it), at most
    /// `MAX_STRING` bytes.
    pub participant: String,
    /// IOVA of the buffer's first byte, as the device addresses it.
    pub iova: u64,
    /// Mapped length (the buffer's size rounded up to the IOMMU page).
    pub len: u64,
}

/// `IovasReply`: the buffer's IOVA mappings, in the order of the request's participants.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct IovasReply {
    /// The buffer.
    pub buffer: BufferId,
    /// One entry per mapped device, at most `MAX_PARTICIPANTS`.
    pub iovas: Vec<IovaMapping>,
}

/// `Event` (device → driver, on the event queue; request id 0): something changed that the
/// driver did not ask for.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Event {
    /// The broker tore a buffer down (its exporter freed it, the grant was withdrawn, the
    /// owner's quota shrank, an administrator revoked it). Stop using it.
    BufferRevoked {
        /// The buffer, as this owner knows it.
        buffer: BufferId,
        /// Why, for logs; at most `MAX_STRING` bytes.
        reason: String,
    },
    /// The owner's quota changed.
    QuotaChanged {
        /// New byte quota; 0 means unlimited.
        quota_bytes: u64,
        /// New buffer-count quota; 0 means unlimited.
        quota_buffers: u32,
    },
    /// A participant went away (device unplugged, host client gone); requests naming it fail.
    ParticipantGone {
        /// Its name, at most `MAX_STRING` bytes.
        name: String,
    },
}

/// `ErrorReply`: the request failed. Sent in reply to any request, including undecodable ones.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ErrorReply {
    /// What went wrong, as a stable code.
    pub code: ErrorCode,
    /// Human-readable detail, at most [`MAX_ERROR_MESSAGE`](super::MAX_ERROR_MESSAGE) bytes.
    pub message: String,
}

impl ErrorReply {
    /// An error reply; `message` is cut (at a character boundary) to
    /// [`MAX_ERROR_MESSAGE`](super::MAX_ERROR_MESSAGE) bytes so the reply always encodes.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        let mut message = message.into();
        let max = super::MAX_ERROR_MESSAGE;
        if message.len() > max {
            let mut end = max;
            while !message.is_char_boundary(end) {
                end -= 1;
            }
            message.truncate(end);
        }
        ErrorReply { code, message }
    }
}

impl From<&super::WireError> for ErrorReply {
    fn from(e: &super::WireError) -> Self {
        ErrorReply::new(e.code(), crate::wire::error_chain(e))
    }
}

macro_rules! messages {
    ($( $(#[$doc:meta])* $variant:ident = $code:literal, )*) => {
        /// A message: requests (codes `0x0001..=0x3fff`), events (`0x4000..=0x7fff`) and
        /// replies (`0x8000..=0xffff`; a reply's code is its request's code with bit 15 set).
        #[derive(Debug, Clone, PartialEq, Eq)]
        pub enum Message {
            $( $(#[$doc])* $variant($variant), )*
        }

        /// The message type codes carried in the header. They never change.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
        #[repr(u16)]
        pub enum MessageType {
            $( $(#[$doc])* $variant = $code, )*
        }

        impl MessageType {
            /// Every type, in code order within requests, events and replies.
            pub const ALL: &'static [MessageType] = &[$(MessageType::$variant),*];

            /// The type with this code, if this version knows it.
            pub fn from_code(code: u16) -> Option<Self> {
                match code {
                    $( $code => Some(MessageType::$variant), )*
                    _ => None,
                }
            }

            /// The numeric code.
            pub fn code(self) -> u16 {
                self as u16
            }

            /// The name (`Hello`).
            pub fn name(self) -> &'static str {
                match self {
                    $( MessageType::$variant => stringify!($variant), )*
                }
            }
        }

        impl Message {
            /// This message's type.
            pub fn message_type(&self) -> MessageType {
                match self {
                    $( Message::$variant(_) => MessageType::$variant, )*
                }
            }

            pub(super) fn serialize_payload(&self) -> postcard::Result<Vec<u8>> {
                match self {
                    $( Message::$variant(m) => postcard::to_stdvec(m), )*
                }
            }

            pub(super) fn deserialize_payload(
                ty: MessageType,
                bytes: &[u8],
            ) -> postcard::Result<(Message, &[u8])> {
                match ty {
                    $( MessageType::$variant => postcard::take_from_bytes::<$variant>(bytes)
                        .map(|(m, rest)| (Message::$variant(m), rest)), )*
                }
            }
        }

        $(
            impl From<$variant> for Message {
                fn from(m: $variant) -> Self {
                    Message::$variant(m)
                }
            }
        )*
    };
}

messages! {
    /// Version and feature negotiation; the first request of a session.
    Hello = 0x0001,
    /// Liveness check.
    Ping = 0x0002,
    /// Register a participant under a name for this session.
    RegisterParticipant = 0x0003,
    /// Forget a registered participant.
    UnregisterParticipant = 0x0004,
    /// Solve a request without allocating.
    Solve = 0x0005,
    /// Solve and allocate.
    Allocate = 0x0006,
    /// Release a buffer.
    Free = 0x0007,
    /// Make a buffer a shared object.
    Export = 0x0008,
    /// Import a shared object by UUID.
    Import = 0x0009,
    /// Let another owner import a buffer.
    Grant = 0x000a,
    /// Map a buffer into the shared-memory window.
    Map = 0x000b,
    /// Remove a buffer's window mapping.
    Unmap = 0x000c,
    /// Ask for accounting.
    QueryStats = 0x000d,
    /// Ask for the broker's limits.
    QueryLimits = 0x000e,
    /// Ask where host VFIO devices reach a buffer.
    QueryIovas = 0x000f,

    /// An unsolicited notification (event queue).
    Event = 0x4001,

    /// A request failed.
    ErrorReply = 0x8000,
    /// Reply to `Hello`.
    HelloReply = 0x8001,
    /// Reply to `Ping`.
    Pong = 0x8002,
    /// Reply to `RegisterParticipant`.
    RegisterParticipantReply = 0x8003,
    /// Reply to `UnregisterParticipant`.
    UnregisterParticipantReply = 0x8004,
    /// Reply to `Solve`.
    SolveReply = 0x8005,
    /// Reply to `Allocate`.
    AllocateReply = 0x8006,
    /// Reply to `Free`.
    FreeReply = 0x8007,
    /// Reply to `Export`.
    ExportReply = 0x8008,
    /// Reply to `Import`.
    ImportReply = 0x8009,
    /// Reply to `Grant`.
    GrantReply = 0x800a,
    /// Reply to `Map`.
    MapReply = 0x800b,
    /// Reply to `Unmap`.
    UnmapReply = 0x800c,
    /// Reply to `QueryStats`.
    StatsReply = 0x800d,
    /// Reply to `QueryLimits`.
    LimitsReply = 0x800e,
    /// Reply to `QueryIovas`.
    IovasReply = 0x800f,
}

/// Which kind of message a type is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// Driver (or host client) → broker, expects one reply.
    Request,
    /// Broker → driver on the event queue, no reply.
    Event,
    /// Broker → driver, answers the request with the same request id.
    Reply,
}

impl MessageType {
    /// Whether this is a request, an event or a reply (from the code's top two bits).
    pub fn direction(self) -> Direction {
        match self.code() {
            0x8000..=0xffff => Direction::Reply,
            0x4000..=0x7fff => Direction::Event,
            _ => Direction::Request,
        }
    }

    /// The reply type that answers this request (`ErrorReply` may always answer instead).
    pub fn reply_type(self) -> Option<MessageType> {
        match self.direction() {
            Direction::Request => MessageType::from_code(self.code() | 0x8000),
            Direction::Event | Direction::Reply => None,
        }
    }
}

impl fmt::Display for MessageType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({:#06x})", self.name(), self.code())
    }
}
