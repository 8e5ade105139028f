//! One owner's conversation with the broker, independent of the transport.
//!
//! A transport (the local socket, the vhost-user device) decodes each request and hands it to
//! [`Session::handle_bytes`] (or [`Session::handle`]); the session answers with exactly one
//! [`Reply`] — the request's reply message or an `ErrorReply` with a stable code — and keeps
//! serving whatever went wrong. A request is processed top to bottom:
//!
//! 1. negotiation and feature checks (`Hello` first; `Ping` always works);
//! 2. the owner's in-flight quota;
//! 3. named participants resolved: this session's registered ones first, then the broker's
//!    configured host participants that the owner's policy allows;
//! 4. the solver, through the broker's [plan cache](PlanCache);
//! 5. the heap the best plan names, through the [registry](crate::registry) (quotas, records);
//! 6. exposure: fds for local clients ([`Reply::fds`]), window ranges and shared objects for
//!    guests ([`GuestExposure`]), IOVA mappings for host VFIO devices the request names
//!    (`iova.rs`), each recorded as a view so teardown undoes it.
//!
//! Dropping a session removes its owner: every buffer, view and recycled buffer is freed.

mod arena;
mod broker;
mod guest;
mod guest_ram;
mod iova;
mod plan_cache;

/// A new, read-only open of the file behind `fd` (through `/proc/self/fd`), so that a
/// read-only grant cannot be mapped writable by the importer. Works for memfds; a dmabuf (an
/// anonymous inode) cannot be reopened, and is then refused rather than sent writable.
fn reopen_read_only(fd: &OwnedFd) -> Result<OwnedFd, SessionError> {
    use std::os::fd::AsRawFd;
    let path = format!("/proc/self/fd/{}", fd.as_raw_fd());
    rustix::fs::open(
        path.as_str(),
        rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )
    .map_err(|_| SessionError::Unsupported("read-only descriptors of this buffer's memory"))
}

#[cfg(test)]
mod tests;

use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex, PoisonError};

use bufbroker_proto::solver::{Solution, SolveError};
use bufbroker_proto::wire::{
    self, Access, Allocate, AllocateReply, BufferId, BufferInfo, ErrorCode, ErrorReply, Export,
    ExportReply, Features, Grant, GrantReply, Hello, HelloReply, Import, ImportReply, ImportView,
    LimitsReply, Location, Map, MapReply, Message, MessageType, Negotiated, ParticipantHandle,
    Placement, Pong, RegisterParticipant, RegisterParticipantReply, SolveReply, StatsReply, Unmap,
    UnmapReply, UnregisterParticipant, UnregisterParticipantReply, WireError, WireLimits,
};
use bufbroker_proto::{Participant, ParticipantId, Plan, Request};
use thiserror::Error;

use crate::config::ResolvedPolicy;
use crate::exposure::{ExposureError, GuestExposure};
use crate::registry::{Allocated, OwnerId, RegistryError, ViewKind};
use crate::vhost::WindowAllocator;

pub use arena::{ArenaHeap, ArenaStats, Arenas};
pub use broker::{Broker, BrokerError};
pub use guest::{GuestHandler, guest_factory};
pub use plan_cache::{
    FastHashState, FastHasher, Lookup, Outcome, PlanCache, Resolution, wire_request,
};

/// Why a request failed. Each maps to a wire [`ErrorCode`] ([`SessionError::code`]).
#[derive(Debug, Error)]
pub enum SessionError {
    /// The request could not be decoded.
    #[error("cannot decode the request")]
    Decode(#[source] WireError),
    /// A request other than `Hello`/`Ping` before `Hello`.
    #[error("{0} before Hello")]
    NotNegotiated(MessageType),
    /// A second `Hello`.
    #[error("the session is already negotiated")]
    AlreadyNegotiated,
    /// A reply or event sent as a request.
    #[error("{0} is not a request")]
    Unexpected(MessageType),
    /// No common protocol version.
    #[error("no common protocol version: the client speaks {min}..={max}")]
    UnsupportedVersion {
        /// The client's lowest version.
        min: u16,
        /// The client's highest version.
        max: u16,
    },
    /// The request needs a feature that was not negotiated.
    #[error("{0} was not negotiated")]
    FeatureNotNegotiated(&'static str),
    /// This transport or broker cannot do it.
    #[error("{0} is not supported here")]
    Unsupported(&'static str),
    /// A named participant is neither registered in this session nor configured.
    #[error("no participant is called {0:?}")]
    UnknownParticipant(String),
    /// A configured participant this owner's policy does not allow.
    #[error("owner {owner:?} may not use participant {participant:?}")]
    ParticipantNotAllowed {
        /// The owner.
        owner: String,
        /// The participant.
        participant: String,
    },
    /// The name is already registered in this session.
    #[error("participant name {0:?} is already registered in this session")]
    AlreadyRegistered(String),
    /// Too many registered participants.
    #[error("this session already registered the maximum of {0} participants")]
    TooManyRegistered(usize),
    /// No registered participant has this handle.
    #[error("no registered participant has handle {0}")]
    UnknownHandle(u32),
    /// A field the broker cannot use.
    #[error("{0}")]
    InvalidArgument(String),
    /// The solver refused the request.
    #[error("the solver refused the request")]
    Solve(#[source] SolveError),
    /// The solver reported success without a plan (a bug).
    #[error("the solver returned no plan")]
    NoPlan,
    /// The plan names a heap the broker does not offer (a bug: the solver only sees ours).
    #[error("the plan names heap {0:?}, which this broker does not offer")]
    UnknownHeap(String),
    /// The registry refused (quota, not found, permission) or the heap failed.
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// The shared-memory window has no room.
    #[error("the shared-memory window has no free range of {0} bytes")]
    WindowFull(u64),
    /// A host VFIO device could not map the buffer.
    #[error(transparent)]
    Iova(#[from] crate::vfio::IovaError),
    /// The transport could not expose the buffer.
    #[error("exposing {buffer} failed")]
    Exposure {
        /// The buffer.
        buffer: BufferId,
        /// Why.
        #[source]
        source: ExposureError,
    },
}

impl SessionError {
    /// The wire error code of this failure.
    pub fn code(&self) -> ErrorCode {
        match self {
            SessionError::Decode(e) => e.code(),
            SessionError::NotNegotiated(_) => ErrorCode::NOT_NEGOTIATED,
            SessionError::AlreadyNegotiated | SessionError::Unexpected(_) => {
                ErrorCode::UNEXPECTED_MESSAGE
            }
            SessionError::UnsupportedVersion { .. } => ErrorCode::UNSUPPORTED_VERSION,
            SessionError::FeatureNotNegotiated(_) | SessionError::Unsupported(_) => {
                ErrorCode::UNSUPPORTED
            }
            SessionError::UnknownParticipant(_) | SessionError::UnknownHandle(_) => {
                ErrorCode::NOT_FOUND
            }
            SessionError::ParticipantNotAllowed { .. } => ErrorCode::PERMISSION_DENIED,
            SessionError::AlreadyRegistered(_) => ErrorCode::ALREADY_EXISTS,
            SessionError::TooManyRegistered(_) => ErrorCode::LIMIT_EXCEEDED,
            SessionError::InvalidArgument(_) => ErrorCode::INVALID_ARGUMENT,
            SessionError::Solve(e) => ErrorCode::from(e),
            SessionError::UnknownHeap(_) | SessionError::NoPlan => ErrorCode::INTERNAL,
            SessionError::Registry(e) => registry_code(e),
            SessionError::WindowFull(_) => ErrorCode::OUT_OF_MEMORY,
            SessionError::Iova(e) => e.code(),
            SessionError::Exposure { source, .. } => match source {
                ExposureError::Unsupported(_) => ErrorCode::UNSUPPORTED,
                ExposureError::Refused { .. }
                | ExposureError::Disconnected
                | ExposureError::NotStarted
                | ExposureError::WindowRange { .. } => ErrorCode::INTERNAL,
            },
        }
    }
}

fn registry_code(e: &RegistryError) -> ErrorCode {
    use crate::heap::HeapError;
    use crate::registry::Limit;
    match e {
        RegistryError::UnknownOwner(_) => ErrorCode::INTERNAL,
        RegistryError::NotFound(_) | RegistryError::UnknownUuid(_) => ErrorCode::NOT_FOUND,
        RegistryError::NotGranted { .. } | RegistryError::NotOwner(..) => {
            ErrorCode::PERMISSION_DENIED
        }
        RegistryError::QuotaExceeded {
            limit: Limit::InFlight,
            ..
        } => ErrorCode::BUSY,
        RegistryError::QuotaExceeded { .. } | RegistryError::GlobalLimit { .. } => {
            ErrorCode::QUOTA_EXCEEDED
        }
        RegistryError::SizeOverflow { .. } => ErrorCode::INVALID_ARGUMENT,
        RegistryError::Allocate { source, .. } => match source {
            HeapError::ZeroSize
            | HeapError::SizeOverflow { .. }
            | HeapError::TooLarge { .. }
            | HeapError::AddressSpace { .. } => ErrorCode::INVALID_ARGUMENT,
            HeapError::NoRoom { .. } => ErrorCode::OUT_OF_MEMORY,
            _ => ErrorCode::OUT_OF_MEMORY,
        },
        RegistryError::DupFd { .. } => ErrorCode::OUT_OF_MEMORY,
        RegistryError::NotShareable(_) => ErrorCode::UNSUPPORTED,
    }
}

/// The answer to one request: a message and, for local clients, descriptors to send with it
/// (`SCM_RIGHTS`, in `fd_index` order).
#[derive(Debug)]
pub struct Reply {
    /// The reply or `ErrorReply`.
    pub message: Message,
    /// Descriptors that go with it.
    pub fds: Vec<OwnedFd>,
}

impl Reply {
    fn new(message: impl Into<Message>) -> Self {
        Reply {
            message: message.into(),
            fds: Vec::new(),
        }
    }

    fn error(e: &SessionError) -> Self {
        Reply::new(ErrorReply::new(e.code(), wire::error_chain(e)))
    }

    /// The `ErrorReply`'s code, if this is one.
    pub fn error_code(&self) -> Option<ErrorCode> {
        match &self.message {
            Message::ErrorReply(e) => Some(e.code),
            _ => None,
        }
    }
}

/// A participant registered in this session.
#[derive(Debug)]
struct Registered {
    handle: ParticipantHandle,
    name: String,
    participant: Participant,
}

/// Where this session's buffers go beyond the broker.
enum Transport {
    /// A host process on the local socket: buffers leave as fds.
    Local,
    /// A guest behind a virtio device.
    Guest {
        exposure: Arc<dyn GuestExposure>,
        window: Arc<Mutex<WindowAllocator>>,
        arenas: Arc<Arenas>,
    },
}

/// One owner's session. Not shared between threads; the broker behind it is.
pub struct Session {
    broker: Arc<Broker>,
    owner: OwnerId,
    name: String,
    policy: ResolvedPolicy,
    transport: Transport,
    negotiated: Option<Negotiated>,
    registered: Vec<Registered>,
    next_handle: u32,
    /// What this session's named participants stand for, as the plan cache knows it.
    resolution: Resolution,
    /// While [`Session::handle_bytes`] answers a `Solve` or `Allocate`: its request's bytes as
    /// received, the plan cache's key (empty otherwise: then the cache encodes the request).
    wire_request: Vec<u8>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("owner", &self.owner)
            .field("name", &self.name)
            .field("negotiated", &self.negotiated)
            .finish_non_exhaustive()
    }
}

impl Session {
    /// A session for the owner called `name` (a guest's configured name, `uid:N` for a local
    /// client). With `exposure` it serves a guest (window, shared objects); without, a local
    /// client (fds). The owner is added to the registry with its configured quota.
    pub fn new(broker: Arc<Broker>, name: &str, exposure: Option<Arc<dyn GuestExposure>>) -> Self {
        let policy = broker.policy(name);
        let owner = broker.registry().add_owner(name, policy.quota);
        let transport = match exposure {
            None => Transport::Local,
            Some(exposure) => {
                let window = Arc::new(Mutex::new(WindowAllocator::new(exposure.window_size())));
                let arenas = Arenas::new(
                    broker.config().arenas,
                    exposure.clone(),
                    window.clone(),
                    broker.udmabuf().cloned(),
                );
                Transport::Guest {
                    exposure,
                    window,
                    arenas,
                }
            }
        };
        Session {
            owner,
            name: name.to_owned(),
            policy,
            transport,
            negotiated: None,
            registered: Vec::new(),
            next_handle: 1,
            resolution: broker.plans().resolution(),
            wire_request: Vec::new(),
            broker,
        }
    }

    /// The owner this session allocates for.
    pub fn owner(&self) -> OwnerId {
        self.owner
    }

    /// What this session's arenas did (guests only).
    pub fn arena_stats(&self) -> Option<ArenaStats> {
        match &self.transport {
            Transport::Guest { arenas, .. } => Some(arenas.stats()),
            Transport::Local => None,
        }
    }

    /// The features this session's transport supports.
    pub fn offered_features(&self) -> Features {
        let mut common = Features::SHARED_OBJECTS | Features::REGISTERED_PARTICIPANTS;
        if self.broker.has_vfio() {
            common |= Features::IOVA;
        }
        match &self.transport {
            Transport::Local => common | Features::HOST_CLIENT_FD,
            Transport::Guest { exposure, .. } => {
                let mut features = common | Features::EVENTS | Features::GUEST_RAM;
                if exposure.window_size() > 0 {
                    features |= Features::HOST_WINDOW;
                }
                features
            }
        }
    }

    /// Decodes one message and answers it. Returns the request id to echo (from the header,
    /// or as much of it as could be read) and the reply.
    pub fn handle_bytes(&mut self, bytes: &[u8]) -> (u32, Reply) {
        match wire::decode(bytes) {
            Ok((header, message)) => {
                if let Some(request) = wire_request(&message, bytes) {
                    self.wire_request.extend_from_slice(request);
                }
                let reply = self.handle(message);
                self.wire_request.clear();
                (header.request_id, reply)
            }
            Err(e) => {
                let id = wire::peek_request_id(bytes).unwrap_or(0);
                (id, Reply::error(&SessionError::Decode(e)))
            }
        }
    }

    /// Answers one decoded message.
    pub fn handle(&mut self, message: Message) -> Reply {
        let ty = message.message_type();
        match self.dispatch(message) {
            Ok(reply) => reply,
            Err(e) => {
                log::debug!("{}: {ty} failed: {}", self.name, wire::error_chain(&e));
                Reply::error(&e)
            }
        }
    }

    fn dispatch(&mut self, message: Message) -> Result<Reply, SessionError> {
        let ty = message.message_type();
        match message {
            Message::Hello(m) => return self.hello(&m),
            Message::Ping(m) => return Ok(Reply::new(Pong { payload: m.payload })),
            _ if ty.direction() != wire::Direction::Request => {
                return Err(SessionError::Unexpected(ty));
            }
            _ if self.negotiated.is_none() => return Err(SessionError::NotNegotiated(ty)),
            _ => {}
        }
        let broker = self.broker.clone();
        let _in_flight = broker.registry().begin_request(self.owner)?;
        match message {
            Message::RegisterParticipant(m) => self.register(m),
            Message::UnregisterParticipant(m) => self.unregister(&m),
            Message::Solve(m) => self.solve(&m.request),
            Message::Allocate(m) => self.allocate(&m),
            Message::Free(m) => {
                broker.registry().free(self.owner, m.buffer)?;
                Ok(Reply::new(wire::FreeReply { buffer: m.buffer }))
            }
            Message::Export(m) => self.export(&m),
            Message::Grant(m) => self.grant(&m),
            Message::Import(m) => self.import(&m),
            Message::Map(m) => self.map(&m),
            Message::Unmap(m) => self.unmap(&m),
            Message::QueryStats(_) => self.stats(),
            Message::QueryLimits(_) => Ok(Reply::new(LimitsReply {
                limits: WireLimits::CURRENT,
            })),
            Message::QueryIovas(m) => self.query_iovas(&m),
            other => Err(SessionError::Unexpected(other.message_type())),
        }
    }

    fn hello(&mut self, hello: &Hello) -> Result<Reply, SessionError> {
        if self.negotiated.is_some() {
            return Err(SessionError::AlreadyNegotiated);
        }
        let negotiated = wire::negotiate(hello, self.offered_features()).map_err(|_| {
            SessionError::UnsupportedVersion {
                min: hello.min_version,
                max: hello.max_version,
            }
        })?;
        self.negotiated = Some(negotiated);
        if let (Transport::Guest { exposure, .. }, true) = (
            &self.transport,
            negotiated.features.contains(Features::EVENTS),
        ) {
            self.broker
                .registry()
                .set_event_sink(self.owner, Some(event_sink(&self.name, exposure.clone())));
        }
        log::info!(
            "{}: client {:?} negotiated version {} features {:?}",
            self.name,
            hello.client,
            negotiated.version,
            negotiated.features
        );
        Ok(Reply::new(HelloReply {
            version: negotiated.version,
            features: negotiated.features,
            limits: WireLimits::CURRENT,
            broker: format!("bufbroker {}", env!("CARGO_PKG_VERSION")),
        }))
    }

    fn require(&self, feature: Features, name: &'static str) -> Result<(), SessionError> {
        match self.negotiated {
            Some(n) if n.features.contains(feature) => Ok(()),
            _ => Err(SessionError::FeatureNotNegotiated(name)),
        }
    }

    fn register(&mut self, m: RegisterParticipant) -> Result<Reply, SessionError> {
        self.require(Features::REGISTERED_PARTICIPANTS, "REGISTERED_PARTICIPANTS")?;
        if self.registered.iter().any(|r| r.name == m.name) {
            return Err(SessionError::AlreadyRegistered(m.name));
        }
        if self.registered.len() >= wire::MAX_REGISTERED_PARTICIPANTS {
            return Err(SessionError::TooManyRegistered(
                wire::MAX_REGISTERED_PARTICIPANTS,
            ));
        }
        let handle = ParticipantHandle(self.next_handle);
        self.next_handle = self.next_handle.wrapping_add(1).max(1);
        self.registered.push(Registered {
            handle,
            name: m.name,
            participant: m.participant,
        });
        self.renew_resolution();
        Ok(Reply::new(RegisterParticipantReply { handle }))
    }

    fn unregister(&mut self, m: &UnregisterParticipant) -> Result<Reply, SessionError> {
        self.require(Features::REGISTERED_PARTICIPANTS, "REGISTERED_PARTICIPANTS")?;
        let before = self.registered.len();
        self.registered.retain(|r| r.handle != m.handle);
        if self.registered.len() == before {
            return Err(SessionError::UnknownHandle(m.handle.0));
        }
        self.renew_resolution();
        Ok(Reply::new(UnregisterParticipantReply { handle: m.handle }))
    }

    /// The registered participants changed: cached plans of named requests no longer apply.
    fn renew_resolution(&mut self) {
        let plans = self.broker.plans();
        plans.forget(std::mem::replace(&mut self.resolution, plans.resolution()));
    }

    /// The request with every `Named` participant replaced by its registered or configured
    /// description (keeping the usage the request adds).
    fn resolve(&self, request: &Request) -> Result<Request, SessionError> {
        let mut resolved = request.clone();
        for p in &mut resolved.participants {
            let ParticipantId::Named(name) = &p.id else {
                continue;
            };
            let found = match self.registered.iter().find(|r| &r.name == name) {
                Some(r) => r.participant.clone(),
                None => {
                    let configured = self
                        .broker
                        .participant(name)
                        .ok_or_else(|| SessionError::UnknownParticipant(name.clone()))?;
                    if !self.policy.participants.contains(name) {
                        return Err(SessionError::ParticipantNotAllowed {
                            owner: self.name.clone(),
                            participant: name.clone(),
                        });
                    }
                    configured.clone()
                }
            };
            let usage = p.usage | found.usage;
            *p = Participant { usage, ..found };
        }
        Ok(resolved)
    }

    /// Solves `request` through the plan cache (resolved only on a miss).
    fn outcome(&self, request: &Request) -> Result<plan_cache::Outcome, SessionError> {
        let broker = &self.broker;
        let wire = Some(self.wire_request.as_slice()).filter(|w| !w.is_empty());
        broker.plans().solve(
            Lookup::new(request, wire, self.resolution),
            |r| self.resolve(r),
            broker.heap_infos(),
            broker.solve_options(),
        )
    }

    fn solve(&self, request: &Request) -> Result<Reply, SessionError> {
        let outcome = self.outcome(request)?;
        let reply = SolveReply::from_outcome((*outcome).clone()).map_err(SessionError::Solve)?;
        Ok(Reply::new(reply))
    }

    /// The best plan for `request`.
    fn best_plan(&self, request: &Request) -> Result<Plan, SessionError> {
        let outcome = self.outcome(request)?;
        match &*outcome {
            Ok(Solution { plans, .. }) => plans.first().cloned().ok_or(SessionError::NoPlan),
            Err(e) => Err(SessionError::Solve(e.clone())),
        }
    }

    fn allocate(&mut self, m: &Allocate) -> Result<Reply, SessionError> {
        match &m.placement {
            Placement::HostClient => self.require(Features::HOST_CLIENT_FD, "HOST_CLIENT_FD")?,
            Placement::HostWindow => self.require(Features::HOST_WINDOW, "HOST_WINDOW")?,
            Placement::GuestRam { .. } => self.require(Features::GUEST_RAM, "GUEST_RAM")?,
        }
        let plan = Arc::new(self.best_plan(&m.request)?);
        if let Placement::GuestRam { ranges } = &m.placement {
            // Guest pages are the guest's own memory: not mapped for host VFIO devices.
            return self.allocate_in_guest_ram(&plan, ranges, m.request.count);
        }
        let vfio = self.vfio_targets(&m.request);
        let mut heap = self
            .broker
            .heap(&plan.heap)
            .ok_or_else(|| SessionError::UnknownHeap(plan.heap.clone()))?
            .clone();
        if let (Placement::HostWindow, Transport::Guest { arenas, .. }) =
            (&m.placement, &self.transport)
            && arenas.eligible(&plan)
        {
            heap = Arc::new(arenas.heap(heap.info()));
        }
        let registry = self.broker.registry();
        let buffers = registry.allocate(self.owner, heap.as_ref(), &plan, m.request.count)?;
        let mut reply = Reply::new(AllocateReply {
            plan: (*plan).clone(),
            buffers: Vec::new(),
        });
        let mut infos = Vec::with_capacity(buffers.len());
        for buffer in &buffers {
            let exposed = self
                .map_iovas(buffer, &plan, &vfio)
                .and_then(|()| self.expose_new(buffer, &m.placement, &mut reply.fds));
            match exposed {
                Ok(location) => infos.push(BufferInfo {
                    id: buffer.id,
                    uuid: buffer.uuid,
                    location,
                }),
                Err(e) => {
                    // All or nothing: free what this request created (views go with them).
                    for b in &buffers {
                        let _ = registry.free(self.owner, b.id);
                    }
                    return Err(e);
                }
            }
        }
        if let Message::AllocateReply(r) = &mut reply.message {
            r.buffers = infos;
        }
        Ok(reply)
    }

    /// Buffers made of the guest's own pages (see `guest_ram.rs`).
    fn allocate_in_guest_ram(
        &self,
        plan: &Arc<Plan>,
        ranges: &[wire::GuestRange],
        count: u32,
    ) -> Result<Reply, SessionError> {
        let Transport::Guest { exposure, .. } = &self.transport else {
            return Err(SessionError::Unsupported("guest-RAM placement"));
        };
        if plan.contiguous {
            return Err(SessionError::InvalidArgument(
                "the plan needs contiguous memory, which guest RAM is not".into(),
            ));
        }
        let stride = guest_ram::check_ranges(ranges, plan.size, count)
            .map_err(SessionError::InvalidArgument)?;
        let udmabuf = self.broker.udmabuf().map(Arc::as_ref);
        let memory = guest_ram::build(exposure.as_ref(), udmabuf, ranges, stride, count)
            .map_err(SessionError::InvalidArgument)?;
        let heap = guest_ram::PreparedHeap::new(plan, memory);
        let buffers = self
            .broker
            .registry()
            .allocate(self.owner, &heap, plan, count)?;
        Ok(Reply::new(AllocateReply {
            plan: (**plan).clone(),
            buffers: buffers
                .iter()
                .map(|b| BufferInfo {
                    id: b.id,
                    uuid: b.uuid,
                    location: Location::GuestRam,
                })
                .collect(),
        }))
    }

    fn expose_new(
        &self,
        buffer: &Allocated,
        placement: &Placement,
        fds: &mut Vec<OwnedFd>,
    ) -> Result<Location, SessionError> {
        match placement {
            Placement::HostClient => self
                .send_fd(buffer.id, Access::ReadWrite, fds)
                .map(|(location, _)| location),
            Placement::HostWindow => self.map_window(buffer.id, true),
            Placement::GuestRam { .. } => Err(SessionError::Unsupported("guest-RAM placement")),
        }
    }

    /// Adds buffer `id`'s descriptor to `fds`; returns its location and the offset of the
    /// buffer's first byte in the descriptor (not 0 only for arena slices without udmabuf).
    fn send_fd(
        &self,
        id: BufferId,
        access: Access,
        fds: &mut Vec<OwnedFd>,
    ) -> Result<(Location, u64), SessionError> {
        let (fd, offset) = self.broker.registry().dup_fd(self.owner, id)?;
        let fd = match access {
            Access::ReadWrite => fd,
            Access::ReadOnly => reopen_read_only(&fd)?,
        };
        let fd_index = u32::try_from(fds.len()).unwrap_or(u32::MAX);
        fds.push(fd);
        Ok((Location::HostClient { fd_index }, offset))
    }

    /// Maps buffer `id` into the window (once per holder) and records the view. A buffer
    /// carved from this session's arenas is there already; any other gets a SHMEM_MAP of its
    /// own.
    fn map_window(&self, id: BufferId, writable: bool) -> Result<Location, SessionError> {
        let Transport::Guest {
            exposure,
            window,
            arenas,
        } = &self.transport
        else {
            return Err(SessionError::Unsupported("the shared-memory window"));
        };
        let registry = self.broker.registry();
        let existing = registry
            .views(self.owner, id)
            .into_iter()
            .find_map(|v| match v {
                ViewKind::WindowRange { offset, len } => Some((offset, len)),
                _ => None,
            });
        if let Some((offset, len)) = existing {
            return Ok(Location::HostWindow {
                shmid: 0,
                offset,
                len,
            });
        }
        let view = registry.get(self.owner, id)?;
        if let Some((offset, len)) = arenas.window_range(&view.memory) {
            // The arena's mapping is the buffer's: the view only records where it is (an
            // Unmap drops the record; the pages stay mapped with the arena until freed).
            registry.add_view(
                self.owner,
                id,
                ViewKind::WindowRange { offset, len },
                Box::new(|| {}),
            )?;
            return Ok(Location::HostWindow {
                shmid: 0,
                offset,
                len,
            });
        }
        let (fd, fd_offset) = view.memory.share_fd().ok_or(SessionError::Unsupported(
            "showing this buffer in another window (its memory is guest RAM and /dev/udmabuf \
             is absent)",
        ))?;
        let size = view.memory.size();
        let range = window
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .allocate(size)
            .map_err(|_| SessionError::WindowFull(size))?;
        let (offset, len) = (range.offset, range.len);
        let release = {
            let window = window.clone();
            move || arena::release_range(&window, offset, len)
        };
        let writable = writable && view.access == Access::ReadWrite;
        if let Err(source) = exposure.map_window(fd, fd_offset, offset, size, writable) {
            release();
            return Err(SessionError::Exposure { buffer: id, source });
        }
        let exposure = exposure.clone();
        let teardown = Box::new(move || {
            if let Err(e) = exposure.unmap_window(offset, size) {
                log::warn!("unmapping window range {offset:#x}+{size:#x} failed: {e}");
            }
            release();
        });
        registry.add_view(
            self.owner,
            id,
            ViewKind::WindowRange { offset, len },
            teardown,
        )?;
        Ok(Location::HostWindow {
            shmid: 0,
            offset,
            len,
        })
    }

    fn export(&self, m: &Export) -> Result<Reply, SessionError> {
        self.require(Features::SHARED_OBJECTS, "SHARED_OBJECTS")?;
        let registry = self.broker.registry();
        let uuid = registry.uuid(self.owner, m.buffer)?;
        let exported = registry
            .views(self.owner, m.buffer)
            .contains(&ViewKind::SharedObject(uuid));
        if let (Transport::Guest { exposure, .. }, false) = (&self.transport, exported) {
            exposure
                .add_shared_object(uuid)
                .map_err(|source| SessionError::Exposure {
                    buffer: m.buffer,
                    source,
                })?;
            let exposure = exposure.clone();
            let teardown = Box::new(move || {
                if let Err(e) = exposure.remove_shared_object(uuid) {
                    log::warn!("removing shared object {uuid} failed: {e}");
                }
            });
            registry.add_view(self.owner, m.buffer, ViewKind::SharedObject(uuid), teardown)?;
        }
        Ok(Reply::new(ExportReply {
            buffer: m.buffer,
            uuid,
        }))
    }

    fn grant(&self, m: &Grant) -> Result<Reply, SessionError> {
        self.require(Features::SHARED_OBJECTS, "SHARED_OBJECTS")?;
        if m.grantee.is_empty() {
            return Err(SessionError::InvalidArgument(
                "the grantee name is empty".into(),
            ));
        }
        let uuid = self
            .broker
            .registry()
            .grant(self.owner, m.buffer, &m.grantee, m.access)?;
        Ok(Reply::new(GrantReply {
            buffer: m.buffer,
            uuid,
        }))
    }

    fn import(&self, m: &Import) -> Result<Reply, SessionError> {
        self.require(Features::SHARED_OBJECTS, "SHARED_OBJECTS")?;
        match m.view {
            ImportView::None => {}
            ImportView::HostWindow => self.require(Features::HOST_WINDOW, "HOST_WINDOW")?,
            ImportView::HostClient => self.require(Features::HOST_CLIENT_FD, "HOST_CLIENT_FD")?,
        }
        let view = self.broker.registry().import(self.owner, m.uuid)?;
        let mut reply = Reply::new(Message::ErrorReply(ErrorReply::new(
            ErrorCode::INTERNAL,
            "",
        )));
        let mut plan = (*view.plan).clone();
        let location = match m.view {
            ImportView::None => Location::Unmapped,
            ImportView::HostWindow => self.map_window(view.id, view.access == Access::ReadWrite)?,
            ImportView::HostClient => {
                let (location, fd_offset) = self.send_fd(view.id, view.access, &mut reply.fds)?;
                // The descriptor starts before the buffer (an arena memfd): plane offsets are
                // relative to the descriptor, as for any multi-plane dmabuf.
                for plane in &mut plan.planes {
                    plane.offset = plane.offset.saturating_add(fd_offset);
                }
                location
            }
        };
        reply.message = Message::ImportReply(ImportReply {
            buffer: BufferInfo {
                id: view.id,
                uuid: view.uuid,
                location,
            },
            plan,
            access: view.access,
        });
        Ok(reply)
    }

    fn map(&self, m: &Map) -> Result<Reply, SessionError> {
        self.require(Features::HOST_WINDOW, "HOST_WINDOW")?;
        // An importer holding a read-only grant gets a read-only window mapping.
        let access = self.broker.registry().get(self.owner, m.buffer)?.access;
        match self.map_window(m.buffer, access == Access::ReadWrite)? {
            Location::HostWindow { shmid, offset, len } => Ok(Reply::new(MapReply {
                buffer: m.buffer,
                shmid,
                offset,
                len,
            })),
            _ => Err(SessionError::Unsupported("the shared-memory window")),
        }
    }

    fn unmap(&self, m: &Unmap) -> Result<Reply, SessionError> {
        self.require(Features::HOST_WINDOW, "HOST_WINDOW")?;
        let n = self
            .broker
            .registry()
            .remove_views(self.owner, m.buffer, |k| {
                matches!(k, ViewKind::WindowRange { .. })
            })?;
        if n == 0 {
            return Err(SessionError::InvalidArgument(format!(
                "{} is not mapped in the window",
                m.buffer
            )));
        }
        Ok(Reply::new(UnmapReply { buffer: m.buffer }))
    }

    fn stats(&self) -> Result<Reply, SessionError> {
        let registry = self.broker.registry();
        let mut owners = if self.policy.admin {
            registry.all_owner_stats()
        } else {
            vec![registry.owner_stats(self.owner)?]
        };
        owners.truncate(wire::MAX_STATS_OWNERS);
        Ok(Reply::new(StatsReply { owners }))
    }
}

/// Encodes each event and sends it on the guest's event queue (never blocks; see
/// [`GuestExposure::send_event`]).
fn event_sink(name: &str, exposure: Arc<dyn GuestExposure>) -> crate::registry::EventSink {
    let name = name.to_owned();
    Arc::new(move |event: wire::Event| {
        let sent = wire::encode(&Message::Event(event), 0)
            .map_err(|e| wire::error_chain(&e))
            .and_then(|bytes| {
                exposure
                    .send_event(&bytes)
                    .map_err(|e| wire::error_chain(&e))
            });
        if let Err(e) = sent {
            log::debug!("{name}: an event was not sent: {e}");
        }
    })
}

impl Drop for Session {
    fn drop(&mut self) {
        self.broker.plans().forget(self.resolution);
        let removed = self.broker.registry().remove_owner(self.owner);
        if removed != crate::registry::Removed::default() {
            log::info!("{}: session ended, freed {removed:?}", self.name);
        }
    }
}
