//! The client: negotiates a session over a [`Transport`] and turns requests into typed,
//! validated replies.
//!
//! Every reply is decoded with `bufbroker_proto::wire::decode` (bounded: size, lists, strings)
//! and then checked against what was asked: the request id, the reply type, buffer counts, fd
//! indices, and every offset and length against the plan and the mapped window. A hostile or
//! buggy broker gets a [`ClientError`], never a panic or an out-of-bounds access.

use std::collections::HashSet;
use std::os::fd::OwnedFd;
use std::time::{Duration, Instant};

use bufbroker_proto::wire::{
    self, Access, Allocate, BufferId, BufferInfo, ErrorCode, Event, Export, Features, Free, Grant,
    Hello, Import, ImportView, Location, Map, Message, MessageType, OwnerStats, ParticipantHandle,
    Ping, Placement, QueryLimits, QueryStats, RegisterParticipant, Solve, SolveReply, Unmap,
    UnregisterParticipant, WireError, WireLimits,
};
use bufbroker_proto::{Participant, Plan, Request};
use thiserror::Error;
use uuid::Uuid;

use crate::mapping::{BufferMap, MapError, MappedRegion};
use crate::transport::{Transport, TransportError};

/// Errors of client calls.
#[derive(Debug, Error)]
pub enum ClientError {
    /// The transport failed.
    #[error("transport failed")]
    Transport(#[from] TransportError),
    /// The request could not be encoded (it breaks a protocol limit).
    #[error("cannot encode the {0} request")]
    Encode(MessageType, #[source] WireError),
    /// The reply does not decode.
    #[error("the reply to {0} does not decode")]
    Decode(MessageType, #[source] WireError),
    /// The broker answered with `ErrorReply`.
    #[error("the broker refused {request}: {} ({message})", code_name(*.code))]
    Broker {
        /// The request that failed.
        request: MessageType,
        /// The broker's code.
        code: ErrorCode,
        /// The broker's message.
        message: String,
    },
    /// The reply has the wrong type.
    #[error("expected {expected} in reply, got {got}")]
    UnexpectedReply {
        /// The reply type asked for.
        expected: MessageType,
        /// What came.
        got: MessageType,
    },
    /// The reply answers another request.
    #[error("reply carries request id {got}, expected {sent}")]
    RequestIdMismatch {
        /// The id sent.
        sent: u32,
        /// The id received.
        got: u32,
    },
    /// The reply decodes but its content is inconsistent with the request or with itself.
    #[error("invalid {request} reply: {reason}")]
    InvalidReply {
        /// The request.
        request: MessageType,
        /// What is wrong.
        reason: String,
    },
    /// The session did not negotiate a feature this call needs.
    #[error("the session did not negotiate {0:?}")]
    NotNegotiated(Features),
    /// The broker speaks no protocol version in common with this library.
    #[error("no common protocol version (broker chose {0})")]
    Version(u16),
    /// A buffer cannot be mapped into this process.
    #[error("cannot map {0}")]
    Map(BufferId, #[source] MapError),
    /// The buffer is in the host window but the transport has no window mapped.
    #[error("{0} is in the host window, but this transport has no shared-memory window")]
    NoWindow(BufferId),
    /// The buffer has no view in this process (`Location::Unmapped` or `GuestRam`).
    #[error("{0} has no mapping this process can reach (location {1:?})")]
    NotMappable(BufferId, Location),
}

fn code_name(code: ErrorCode) -> String {
    code.name()
        .map_or_else(|| format!("error {:#06x}", code.0), str::to_owned)
}

/// What to ask for in `Hello`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientOptions {
    /// Client name, for the broker's logs (at most 256 bytes).
    pub name: String,
    /// Features wanted; the session uses the intersection with the broker's.
    pub features: Features,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            name: format!("bufbroker-guest {}", env!("CARGO_PKG_VERSION")),
            features: Features::HOST_WINDOW
                | Features::HOST_CLIENT_FD
                | Features::SHARED_OBJECTS
                | Features::EVENTS
                | Features::REGISTERED_PARTICIPANTS,
        }
    }
}

/// What the session negotiated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    /// Protocol version in use.
    pub version: u16,
    /// Features in effect.
    pub features: Features,
    /// The broker's limits.
    pub limits: WireLimits,
    /// The broker's name and version.
    pub broker: String,
}

/// One buffer this client owns or imported.
#[derive(Debug)]
pub struct Buffer {
    /// The broker's id, UUID and where the buffer is.
    pub info: BufferInfo,
    /// The buffer's fd, for `Location::HostClient`.
    pub fd: Option<OwnedFd>,
    /// What this client may do with it: `ReadOnly` for a read-only grant, whose mappings
    /// refuse writes.
    pub access: Access,
}

impl Buffer {
    /// The broker's id.
    pub fn id(&self) -> BufferId {
        self.info.id
    }
}

/// The result of `allocate`.
#[derive(Debug)]
pub struct Allocation {
    /// The layout of every buffer.
    pub plan: Plan,
    /// The buffers, `request.count` of them.
    pub buffers: Vec<Buffer>,
}

/// The result of `import`.
#[derive(Debug)]
pub struct Imported {
    /// The buffer as this client sees it.
    pub buffer: Buffer,
    /// Its layout.
    pub plan: Plan,
    /// What this client may do with it.
    pub access: Access,
}

/// A broker session over a transport. Calls are synchronous: one request, one reply.
#[derive(Debug)]
pub struct Client<T: Transport> {
    transport: T,
    next_id: u32,
    session: Session,
}

impl<T: Transport> Client<T> {
    /// Negotiates a session (`Hello`) over `transport`.
    pub fn connect(transport: T, options: &ClientOptions) -> Result<Self, ClientError> {
        let mut client = Client {
            transport,
            next_id: 1,
            session: Session {
                version: wire::PROTOCOL_VERSION,
                features: Features::empty(),
                limits: WireLimits::CURRENT,
                broker: String::new(),
            },
        };
        let hello = Hello {
            min_version: wire::MIN_PROTOCOL_VERSION,
            max_version: wire::MAX_PROTOCOL_VERSION,
            features: options.features,
            client: options.name.clone(),
        };
        let (reply, _) = client.call(hello.into())?;
        let Message::HelloReply(r) = reply else {
            return Err(unexpected(MessageType::HelloReply, &reply));
        };
        if !(wire::MIN_PROTOCOL_VERSION..=wire::MAX_PROTOCOL_VERSION).contains(&r.version) {
            return Err(ClientError::Version(r.version));
        }
        if !options.features.contains(r.features) {
            return Err(invalid(
                MessageType::Hello,
                format!(
                    "broker granted features {:#x} beyond the {:#x} asked for",
                    r.features.bits(),
                    options.features.bits()
                ),
            ));
        }
        client.session = Session {
            version: r.version,
            features: r.features,
            limits: r.limits,
            broker: r.broker,
        };
        Ok(client)
    }

    /// What the session negotiated.
    pub fn session(&self) -> &Session {
        &self.session
    }

    /// The transport.
    pub fn transport(&self) -> &T {
        &self.transport
    }

    /// The transport, mutably (for transport-specific calls).
    pub fn transport_mut(&mut self) -> &mut T {
        &mut self.transport
    }

    /// Sends `Ping` with `payload` and checks the echo; returns the round-trip time.
    pub fn ping(&mut self, payload: &[u8]) -> Result<Duration, ClientError> {
        let t0 = Instant::now();
        let (reply, _) = self.call(
            Ping {
                payload: payload.to_vec(),
            }
            .into(),
        )?;
        match reply {
            Message::Pong(p) if p.payload == payload => Ok(t0.elapsed()),
            Message::Pong(_) => Err(invalid(MessageType::Ping, "payload not echoed".into())),
            other => Err(unexpected(MessageType::Pong, &other)),
        }
    }

    /// Registers `participant` under `name`; later requests may use
    /// `ParticipantId::Named(name)`.
    pub fn register_participant(
        &mut self,
        name: &str,
        participant: Participant,
    ) -> Result<ParticipantHandle, ClientError> {
        self.need(Features::REGISTERED_PARTICIPANTS)?;
        let msg = RegisterParticipant {
            name: name.to_owned(),
            participant,
        };
        match self.call(msg.into())?.0 {
            Message::RegisterParticipantReply(r) => Ok(r.handle),
            other => Err(unexpected(MessageType::RegisterParticipantReply, &other)),
        }
    }

    /// Forgets a registered participant.
    pub fn unregister_participant(&mut self, handle: ParticipantHandle) -> Result<(), ClientError> {
        self.need(Features::REGISTERED_PARTICIPANTS)?;
        match self.call(UnregisterParticipant { handle }.into())?.0 {
            Message::UnregisterParticipantReply(r) if r.handle == handle => Ok(()),
            Message::UnregisterParticipantReply(r) => Err(invalid(
                MessageType::UnregisterParticipant,
                format!("answers handle {} instead of {}", r.handle.0, handle.0),
            )),
            other => Err(unexpected(MessageType::UnregisterParticipantReply, &other)),
        }
    }

    /// Solves `request` without allocating: ranked plans, or a diagnostic.
    pub fn solve(&mut self, request: &Request) -> Result<SolveReply, ClientError> {
        let msg = Solve {
            request: request.clone(),
        };
        match self.call(msg.into())?.0 {
            Message::SolveReply(SolveReply::Solved(s)) => {
                for plan in &s.plans {
                    check_plan(MessageType::Solve, plan)?;
                }
                Ok(SolveReply::Solved(s))
            }
            Message::SolveReply(r) => Ok(r),
            other => Err(unexpected(MessageType::SolveReply, &other)),
        }
    }

    /// Solves and allocates `request.count` buffers of the best plan, placed as asked.
    pub fn allocate(
        &mut self,
        request: &Request,
        placement: Placement,
    ) -> Result<Allocation, ClientError> {
        let needed = match &placement {
            Placement::HostWindow => Features::HOST_WINDOW,
            Placement::GuestRam { .. } => Features::GUEST_RAM,
            Placement::HostClient => Features::HOST_CLIENT_FD,
        };
        self.need(needed)?;
        let msg = Allocate {
            request: request.clone(),
            placement,
        };
        let (reply, fds) = self.call(msg.into())?;
        let Message::AllocateReply(r) = reply else {
            return Err(unexpected(MessageType::AllocateReply, &reply));
        };
        let ty = MessageType::Allocate;
        check_plan(ty, &r.plan)?;
        if r.buffers.len() != request.count as usize {
            return Err(invalid(
                ty,
                format!(
                    "{} buffers for a request of {}",
                    r.buffers.len(),
                    request.count
                ),
            ));
        }
        let buffers = self.adopt_buffers(ty, &r.plan, r.buffers, fds)?;
        Ok(Allocation {
            plan: r.plan,
            buffers,
        })
    }

    /// Frees a buffer (every view of it goes away). Drop your mappings of it first: the host
    /// window range may be reused.
    pub fn free(&mut self, buffer: BufferId) -> Result<(), ClientError> {
        match self.call(Free { buffer }.into())?.0 {
            Message::FreeReply(r) if r.buffer == buffer => Ok(()),
            Message::FreeReply(r) => Err(wrong_buffer(MessageType::Free, buffer, r.buffer)),
            other => Err(unexpected(MessageType::FreeReply, &other)),
        }
    }

    /// Makes a buffer a virtio shared object; returns its UUID.
    pub fn export(&mut self, buffer: BufferId) -> Result<Uuid, ClientError> {
        self.need(Features::SHARED_OBJECTS)?;
        match self.call(Export { buffer }.into())?.0 {
            Message::ExportReply(r) if r.buffer == buffer => Ok(r.uuid),
            Message::ExportReply(r) => Err(wrong_buffer(MessageType::Export, buffer, r.buffer)),
            other => Err(unexpected(MessageType::ExportReply, &other)),
        }
    }

    /// Lets the owner `grantee` (as configured on the broker) import the buffer; returns the
    /// UUID to give it.
    pub fn grant(
        &mut self,
        buffer: BufferId,
        grantee: &str,
        access: Access,
    ) -> Result<Uuid, ClientError> {
        self.need(Features::SHARED_OBJECTS)?;
        let msg = Grant {
            buffer,
            grantee: grantee.to_owned(),
            access,
        };
        match self.call(msg.into())?.0 {
            Message::GrantReply(r) if r.buffer == buffer => Ok(r.uuid),
            Message::GrantReply(r) => Err(wrong_buffer(MessageType::Grant, buffer, r.buffer)),
            other => Err(unexpected(MessageType::GrantReply, &other)),
        }
    }

    /// Imports a buffer exported by, and granted to, this client's owner.
    pub fn import(&mut self, uuid: Uuid, view: ImportView) -> Result<Imported, ClientError> {
        self.need(Features::SHARED_OBJECTS)?;
        let (reply, fds) = self.call(Import { uuid, view }.into())?;
        let Message::ImportReply(r) = reply else {
            return Err(unexpected(MessageType::ImportReply, &reply));
        };
        let ty = MessageType::Import;
        if matches!(r.buffer.location, Location::HostClient { .. }) {
            check_fd_plan(ty, &r.plan)?;
        } else {
            check_plan(ty, &r.plan)?;
        }
        if r.buffer.uuid != uuid {
            return Err(invalid(ty, format!("answers UUID {}", r.buffer.uuid)));
        }
        let mut buffers = self.adopt_buffers(ty, &r.plan, vec![r.buffer], fds)?;
        let mut buffer = buffers
            .pop()
            .ok_or_else(|| invalid(ty, "no buffer".into()))?;
        buffer.access = r.access;
        Ok(Imported {
            buffer,
            plan: r.plan,
            access: r.access,
        })
    }

    /// Maps a buffer into the host window (again, or for the first time after an import
    /// without a view); updates `buffer.info.location`.
    pub fn map_window(&mut self, buffer: &mut Buffer, plan: &Plan) -> Result<(), ClientError> {
        self.need(Features::HOST_WINDOW)?;
        let id = buffer.id();
        let (reply, _) = self.call(Map { buffer: id }.into())?;
        let Message::MapReply(r) = reply else {
            return Err(unexpected(MessageType::MapReply, &reply));
        };
        if r.buffer != id {
            return Err(wrong_buffer(MessageType::Map, id, r.buffer));
        }
        let location = Location::HostWindow {
            shmid: r.shmid,
            offset: r.offset,
            len: r.len,
        };
        self.check_location(MessageType::Map, plan, &location, 0)?;
        buffer.info.location = location;
        Ok(())
    }

    /// Removes a buffer's host-window mapping (the buffer stays allocated). Drop your
    /// [`BufferMap`]s of it first.
    pub fn unmap_window(&mut self, buffer: &mut Buffer) -> Result<(), ClientError> {
        self.need(Features::HOST_WINDOW)?;
        let id = buffer.id();
        match self.call(Unmap { buffer: id }.into())?.0 {
            Message::UnmapReply(r) if r.buffer == id => {
                buffer.info.location = Location::Unmapped;
                Ok(())
            }
            Message::UnmapReply(r) => Err(wrong_buffer(MessageType::Unmap, id, r.buffer)),
            other => Err(unexpected(MessageType::UnmapReply, &other)),
        }
    }

    /// Maps a buffer's bytes into this process: a range of the host window, or the buffer's fd.
    /// A window view covers `plan.size` bytes. An fd view starts at the fd's first byte, as
    /// the plane offsets do, and ends at the end of the last plane (at least `plan.size`
    /// bytes): an imported buffer may start inside its fd (an arena file, PROTOCOL.md
    /// "ImportReply to a host client"), where its planes' offsets include its start.
    pub fn map(&self, buffer: &Buffer, plan: &Plan) -> Result<BufferMap, ClientError> {
        let id = buffer.id();
        match buffer.info.location {
            Location::HostWindow { offset, .. } => {
                let window = self.transport.window().ok_or(ClientError::NoWindow(id))?;
                BufferMap::new(window, offset, plan.size)
                    .map(|m| m.with_access(buffer.access))
                    .map_err(|e| ClientError::Map(id, e))
            }
            Location::HostClient { .. } => {
                let fd = buffer
                    .fd
                    .as_ref()
                    .ok_or(ClientError::NotMappable(id, buffer.info.location))?;
                let extent = fd_extent(plan).ok_or(ClientError::Map(
                    id,
                    MapError::OutOfBounds {
                        offset: 0,
                        len: u64::MAX,
                        size: u64::MAX,
                    },
                ))?;
                let writable = buffer.access == Access::ReadWrite;
                let region = MappedRegion::map_file(fd, extent, writable)
                    .map_err(|e| ClientError::Map(id, e))?;
                BufferMap::new(std::sync::Arc::new(region), 0, extent)
                    .map_err(|e| ClientError::Map(id, e))
            }
            loc @ (Location::Unmapped | Location::GuestRam) => {
                Err(ClientError::NotMappable(id, loc))
            }
        }
    }

    /// Accounting: this client's owner (all owners for an administrative host client).
    pub fn stats(&mut self) -> Result<Vec<OwnerStats>, ClientError> {
        match self.call(QueryStats.into())?.0 {
            Message::StatsReply(r) => Ok(r.owners),
            other => Err(unexpected(MessageType::StatsReply, &other)),
        }
    }

    /// The broker's limits.
    pub fn limits(&mut self) -> Result<WireLimits, ClientError> {
        match self.call(QueryLimits.into())?.0 {
            Message::LimitsReply(r) => Ok(r.limits),
            other => Err(unexpected(MessageType::LimitsReply, &other)),
        }
    }

    /// The next event, waiting at most `timeout` (`None`: only what already arrived).
    pub fn next_event(&mut self, timeout: Option<Duration>) -> Result<Option<Event>, ClientError> {
        let Some(bytes) = self.transport.recv_event(timeout)? else {
            return Ok(None);
        };
        let ty = MessageType::Event;
        let (header, message) = wire::decode(&bytes).map_err(|e| ClientError::Decode(ty, e))?;
        match message {
            Message::Event(e) if header.request_id == 0 => Ok(Some(e)),
            Message::Event(_) => Err(invalid(
                ty,
                format!("event with request id {}", header.request_id),
            )),
            other => Err(unexpected(ty, &other)),
        }
    }

    fn need(&self, feature: Features) -> Result<(), ClientError> {
        if self.session.features.contains(feature) {
            Ok(())
        } else {
            Err(ClientError::NotNegotiated(feature))
        }
    }

    /// Sends `message`, returns the decoded reply (not `ErrorReply`: that becomes
    /// [`ClientError::Broker`]) and the fds that came with it.
    fn call(&mut self, message: Message) -> Result<(Message, Vec<OwnedFd>), ClientError> {
        let ty = message.message_type();
        let id = self.next_id;
        self.next_id = self.next_id.checked_add(1).unwrap_or(1);
        let bytes = wire::encode(&message, id).map_err(|e| ClientError::Encode(ty, e))?;
        let (reply, fds) = self.transport.round_trip(&bytes)?;
        let (header, reply) = wire::decode(&reply).map_err(|e| ClientError::Decode(ty, e))?;
        if header.request_id != id {
            return Err(ClientError::RequestIdMismatch {
                sent: id,
                got: header.request_id,
            });
        }
        if let Message::ErrorReply(e) = reply {
            return Err(ClientError::Broker {
                request: ty,
                code: e.code,
                message: e.message,
            });
        }
        Ok((reply, fds))
    }

    /// Validates the buffers of a reply and attaches their fds.
    fn adopt_buffers(
        &self,
        ty: MessageType,
        plan: &Plan,
        infos: Vec<BufferInfo>,
        fds: Vec<OwnedFd>,
    ) -> Result<Vec<Buffer>, ClientError> {
        let mut fds: Vec<Option<OwnedFd>> = fds.into_iter().map(Some).collect();
        let mut ids = HashSet::new();
        let mut buffers = Vec::with_capacity(infos.len());
        for info in infos {
            if info.id.0 == 0 || !ids.insert(info.id) {
                return Err(invalid(
                    ty,
                    format!("buffer id {} is 0 or repeated", info.id.0),
                ));
            }
            self.check_location(ty, plan, &info.location, fds.len())?;
            let fd = match info.location {
                Location::HostClient { fd_index } => {
                    let fd = fds
                        .get_mut(fd_index as usize)
                        .and_then(Option::take)
                        .ok_or_else(|| invalid(ty, format!("fd index {fd_index} used twice")))?;
                    Some(fd)
                }
                _ => None,
            };
            buffers.push(Buffer {
                info,
                fd,
                access: Access::ReadWrite,
            });
        }
        Ok(buffers)
    }

    /// Checks one location against the plan and the window; `fd_count` fds came with the reply.
    fn check_location(
        &self,
        ty: MessageType,
        plan: &Plan,
        location: &Location,
        fd_count: usize,
    ) -> Result<(), ClientError> {
        match *location {
            Location::HostWindow { shmid, offset, len } => {
                if shmid != 0 {
                    return Err(invalid(ty, format!("shared-memory region {shmid}, not 0")));
                }
                if len < plan.size {
                    return Err(invalid(
                        ty,
                        format!("window range of {len} bytes for a plan of {}", plan.size),
                    ));
                }
                if let Some(size) = self.transport.window_size() {
                    if offset.checked_add(len).is_none_or(|end| end > size) {
                        return Err(invalid(
                            ty,
                            format!(
                                "window range {offset:#x}+{len:#x} outside the {size:#x}-byte window"
                            ),
                        ));
                    }
                }
                Ok(())
            }
            Location::HostClient { fd_index } if fd_index as usize >= fd_count => Err(invalid(
                ty,
                format!("fd index {fd_index} but {fd_count} fds came"),
            )),
            Location::HostClient { .. } | Location::Unmapped | Location::GuestRam => Ok(()),
        }
    }
}

/// Checks that a plan is self-consistent: planes inside the buffer, a non-zero size.
fn check_plan(ty: MessageType, plan: &Plan) -> Result<(), ClientError> {
    if plan.size == 0 || plan.planes.is_empty() {
        return Err(invalid(ty, "plan with no size or no planes".into()));
    }
    for (i, p) in plan.planes.iter().enumerate() {
        if p.offset
            .checked_add(p.size)
            .is_none_or(|end| end > plan.size)
        {
            return Err(invalid(
                ty,
                format!(
                    "plane {i} at {:#x}+{:#x} outside a buffer of {:#x}",
                    p.offset, p.size, plan.size
                ),
            ));
        }
    }
    Ok(())
}

/// Checks the plan of a buffer that came as an fd: its plane offsets are relative to the fd,
/// which may start before the buffer (an arena file), so the planes must fit in `plan.size`
/// bytes from the first plane's offset.
fn check_fd_plan(ty: MessageType, plan: &Plan) -> Result<(), ClientError> {
    let start = plan.planes.iter().map(|p| p.offset).min().unwrap_or(0);
    let mut relative = plan.clone();
    for p in &mut relative.planes {
        p.offset = p.offset.saturating_sub(start);
    }
    check_plan(ty, &relative)
}

/// Bytes of an fd that hold a buffer of `plan`: up to the end of its last plane, at least
/// `plan.size`. `None` on overflow.
fn fd_extent(plan: &Plan) -> Option<u64> {
    plan.planes.iter().try_fold(plan.size, |extent, p| {
        Some(extent.max(p.offset.checked_add(p.size)?))
    })
}

fn unexpected(expected: MessageType, got: &Message) -> ClientError {
    ClientError::UnexpectedReply {
        expected,
        got: got.message_type(),
    }
}

fn invalid(request: MessageType, reason: String) -> ClientError {
    ClientError::InvalidReply { request, reason }
}

fn wrong_buffer(request: MessageType, sent: BufferId, got: BufferId) -> ClientError {
    invalid(request, format!("answers {got} instead of {sent}"))
}

#[cfg(test)]
mod tests {
    use bufbroker_proto::{Fourcc, Usage};

    use super::*;
    use crate::fake::{FakeBroker, FakeTransport};

    fn nv12_plan() -> Plan {
        let t = FakeTransport::new(FakeBroker::new(), 1 << 24).unwrap();
        let mut client = Client::connect(t, &ClientOptions::default()).unwrap();
        let request = Request {
            width: 64,
            height: 64,
            formats: vec![Fourcc::from_chars(*b"NV12")],
            usage: Usage::CPU_WRITE,
            participants: vec![crate::participants::cpu()],
            count: 1,
        };
        client
            .allocate(&request, Placement::HostWindow)
            .unwrap()
            .plan
    }

    #[test]
    fn fd_plan_may_start_inside_its_fd_but_must_fit_its_size() {
        let mut plan = nv12_plan();
        assert_eq!(fd_extent(&plan), Some(plan.size));
        // An arena buffer 64 KiB into its memfd (PROTOCOL.md, ImportReply to a host client).
        for p in &mut plan.planes {
            p.offset += 0x10000;
        }
        assert!(check_plan(MessageType::Import, &plan).is_err());
        check_fd_plan(MessageType::Import, &plan).unwrap();
        let last_end = plan.planes.iter().map(|p| p.offset + p.size).max();
        assert_eq!(fd_extent(&plan), last_end);

        // Planes spread over more than the buffer's size are still refused.
        plan.planes[1].offset += plan.size;
        assert!(check_fd_plan(MessageType::Import, &plan).is_err());
        plan.planes[1].offset = u64::MAX;
        assert_eq!(fd_extent(&plan), None);
    }
}
