//! A small in-process stand-in for the broker, for tests, examples and the C API's tests.
//!
//! It is **not** the broker: it keeps buffers in memfds, solves with `bufbroker_proto::solve`
//! against one memfd heap, has no quotas, and trusts its client. It answers `Hello`, `Ping`,
//! `RegisterParticipant`, `Solve`, `Allocate` (host window, host client), `Free`, `Export`,
//! `Grant`, `Import`, `Map`, `Unmap`, `QueryStats` and `QueryLimits`. [`FakeTransport`] calls
//! it in-process and offers a memfd-backed host window; [`FakeBroker::serve`] answers on a
//! Unix socket (seqpacket or stream), as the real broker's local socket will.

use std::collections::{HashMap, VecDeque};
use std::io::IoSlice;
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use bufbroker_proto::heap::HeapInfo;
use bufbroker_proto::wire::{
    self, AllocateReply, BufferId, BufferInfo, ErrorCode, ErrorReply, Event, ExportReply, Features,
    FreeReply, GrantReply, HelloReply, ImportReply, ImportView, LimitsReply, Location, MapReply,
    Message, OwnerStats, ParticipantHandle, Placement, Pong, RegisterParticipantReply, SolveReply,
    StatsReply, UnmapReply, UnregisterParticipantReply, WireLimits,
};
use bufbroker_proto::{Participant, ParticipantId, Plan, Request};
use rustix::net::{SendAncillaryBuffer, SendAncillaryMessage, SendFlags};
use uuid::Uuid;

use crate::mapping::MappedRegion;
use crate::transport::{Transport, TransportError};

const PAGE: u64 = 4096;

struct FakeBuffer {
    plan: Plan,
    uuid: Uuid,
    memfd: OwnedFd,
    window: Option<(u64, u64)>,
}

/// The fake broker's state.
pub struct FakeBroker {
    features: Features,
    named: HashMap<String, Participant>,
    registered: HashMap<u32, String>,
    next_handle: u32,
    buffers: HashMap<u64, FakeBuffer>,
    next_id: u64,
    window: Option<(Arc<MappedRegion>, u64)>,
    pending_events: VecDeque<Event>,
    negotiated: bool,
}

impl std::fmt::Debug for FakeBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeBroker")
            .field("buffers", &self.buffers.len())
            .finish_non_exhaustive()
    }
}

impl Default for FakeBroker {
    fn default() -> Self {
        Self::new()
    }
}

impl FakeBroker {
    /// A fake broker offering every feature but `GUEST_RAM`, without a host window.
    pub fn new() -> Self {
        FakeBroker {
            features: Features::all() - Features::GUEST_RAM,
            named: HashMap::new(),
            registered: HashMap::new(),
            next_handle: 1,
            buffers: HashMap::new(),
            next_id: 1,
            window: None,
            pending_events: VecDeque::new(),
            negotiated: false,
        }
    }

    /// Configures a named host participant (as the broker's configuration would).
    pub fn with_named(mut self, name: &str, participant: Participant) -> Self {
        self.named.insert(name.to_owned(), participant);
        self
    }

    /// Gives the broker a host window (`HostWindow` placements are carved from it).
    pub fn with_window(mut self, window: Arc<MappedRegion>) -> Self {
        self.window = Some((window, 0));
        self
    }

    /// Queues an event; it is delivered before the next reply.
    pub fn push_event(&mut self, event: Event) {
        self.pending_events.push_back(event);
    }

    /// Encoded events waiting to be sent.
    pub fn take_events(&mut self) -> Vec<Vec<u8>> {
        self.pending_events
            .drain(..)
            .filter_map(|e| wire::encode(&Message::Event(e), 0).ok())
            .collect()
    }

    /// Answers one encoded request: the encoded reply and the fds to send with it.
    pub fn handle(&mut self, request: &[u8]) -> (Vec<u8>, Vec<OwnedFd>) {
        let id = wire::peek_request_id(request).unwrap_or(0);
        let (reply, fds) = match wire::decode(request) {
            Ok((_, msg)) => match self.answer(msg) {
                Ok(r) => r,
                Err(e) => (Message::ErrorReply(e), Vec::new()),
            },
            Err(e) => (Message::ErrorReply(ErrorReply::from(&e)), Vec::new()),
        };
        let bytes = wire::encode(&reply, id).unwrap_or_default();
        (bytes, fds)
    }

    fn answer(&mut self, msg: Message) -> Result<(Message, Vec<OwnedFd>), ErrorReply> {
        let err = |code, m: &str| ErrorReply::new(code, m);
        if !self.negotiated && !matches!(msg, Message::Hello(_) | Message::Ping(_)) {
            return Err(err(ErrorCode::NOT_NEGOTIATED, "send Hello first"));
        }
        let none = Vec::new;
        let reply: Message = match msg {
            Message::Hello(h) => {
                if self.negotiated {
                    return Err(err(ErrorCode::UNEXPECTED_MESSAGE, "second Hello"));
                }
                let n = wire::negotiate(&h, self.features).map_err(|c| err(c, "no version"))?;
                self.negotiated = true;
                self.features = n.features;
                HelloReply {
                    version: n.version,
                    features: n.features,
                    limits: WireLimits::CURRENT,
                    broker: "bufbroker fake".into(),
                }
                .into()
            }
            Message::Ping(p) => Pong { payload: p.payload }.into(),
            Message::RegisterParticipant(r) => {
                if self.named.contains_key(&r.name)
                    && self.registered.values().any(|n| *n == r.name)
                {
                    return Err(err(ErrorCode::ALREADY_EXISTS, "name registered"));
                }
                let handle = self.next_handle;
                self.next_handle += 1;
                self.registered.insert(handle, r.name.clone());
                self.named.insert(r.name, r.participant);
                RegisterParticipantReply {
                    handle: ParticipantHandle(handle),
                }
                .into()
            }
            Message::UnregisterParticipant(u) => {
                let name = self
                    .registered
                    .remove(&u.handle.0)
                    .ok_or_else(|| err(ErrorCode::NOT_FOUND, "no such handle"))?;
                self.named.remove(&name);
                UnregisterParticipantReply { handle: u.handle }.into()
            }
            Message::Solve(s) => {
                let request = self.resolve(&s.request)?;
                match bufbroker_proto::solve(&request, &[HeapInfo::memfd()]) {
                    Ok(sol) => SolveReply::Solved(sol).into(),
                    Err(e) => return Err(err(ErrorCode::INVALID_REQUEST, &e.to_string())),
                }
            }
            Message::Allocate(a) => return self.allocate(&a.request, &a.placement),
            Message::Free(f) => {
                self.buffers
                    .remove(&f.buffer.0)
                    .ok_or_else(|| err(ErrorCode::NOT_FOUND, "no such buffer"))?;
                FreeReply { buffer: f.buffer }.into()
            }
            Message::Export(e) => {
                let b = self.buffer(e.buffer)?;
                ExportReply {
                    buffer: e.buffer,
                    uuid: b.uuid,
                }
                .into()
            }
            Message::Grant(g) => {
                let b = self.buffer(g.buffer)?;
                GrantReply {
                    buffer: g.buffer,
                    uuid: b.uuid,
                }
                .into()
            }
            Message::Import(i) => {
                let (id, b) = self
                    .buffers
                    .iter()
                    .find(|(_, b)| b.uuid == i.uuid)
                    .ok_or_else(|| err(ErrorCode::NOT_FOUND, "no such UUID"))?;
                let mut fds = Vec::new();
                let location = match i.view {
                    ImportView::None => Location::Unmapped,
                    ImportView::HostWindow => {
                        b.window
                            .map_or(Location::Unmapped, |(offset, len)| Location::HostWindow {
                                shmid: 0,
                                offset,
                                len,
                            })
                    }
                    ImportView::HostClient => {
                        let fd = b
                            .memfd
                            .try_clone()
                            .map_err(|e| err(ErrorCode::INTERNAL, &format!("dup: {e}")))?;
                        fds.push(fd);
                        Location::HostClient { fd_index: 0 }
                    }
                };
                let reply = ImportReply {
                    buffer: BufferInfo {
                        id: BufferId(*id),
                        uuid: b.uuid,
                        location,
                    },
                    plan: b.plan.clone(),
                    access: wire::Access::ReadWrite,
                };
                return Ok((reply.into(), fds));
            }
            Message::Map(m) => {
                let b = self.buffer(m.buffer)?;
                let (offset, len) = b
                    .window
                    .ok_or_else(|| err(ErrorCode::UNSUPPORTED, "not in the window"))?;
                MapReply {
                    buffer: m.buffer,
                    shmid: 0,
                    offset,
                    len,
                }
                .into()
            }
            Message::Unmap(u) => {
                self.buffer(u.buffer)?;
                UnmapReply { buffer: u.buffer }.into()
            }
            Message::QueryStats(_) => {
                let bytes = self.buffers.values().map(|b| b.plan.size).sum();
                StatsReply {
                    owners: vec![OwnerStats {
                        owner: "fake-client".into(),
                        bytes,
                        buffers: u32::try_from(self.buffers.len()).unwrap_or(u32::MAX),
                        in_flight: 1,
                        quota_bytes: 0,
                        quota_buffers: 0,
                    }],
                }
                .into()
            }
            Message::QueryLimits(_) => LimitsReply {
                limits: WireLimits::CURRENT,
            }
            .into(),
            _ => return Err(err(ErrorCode::UNEXPECTED_MESSAGE, "not a request")),
        };
        Ok((reply, none()))
    }

    fn buffer(&self, id: BufferId) -> Result<&FakeBuffer, ErrorReply> {
        self.buffers
            .get(&id.0)
            .ok_or_else(|| ErrorReply::new(ErrorCode::NOT_FOUND, "no such buffer"))
    }

    /// Replaces `Named` participants by their configured or registered descriptions.
    fn resolve(&self, request: &Request) -> Result<Request, ErrorReply> {
        let mut r = request.clone();
        for p in &mut r.participants {
            if let ParticipantId::Named(name) = &p.id {
                let known = self.named.get(name).ok_or_else(|| {
                    ErrorReply::new(ErrorCode::NOT_FOUND, format!("no participant {name:?}"))
                })?;
                *p = known.clone();
            }
        }
        Ok(r)
    }

    fn allocate(
        &mut self,
        request: &Request,
        placement: &Placement,
    ) -> Result<(Message, Vec<OwnedFd>), ErrorReply> {
        let err = |code, m: String| ErrorReply::new(code, m);
        let resolved = self.resolve(request)?;
        let sol = bufbroker_proto::solve(&resolved, &[HeapInfo::memfd()])
            .map_err(|e| err(ErrorCode::INVALID_REQUEST, e.to_string()))?;
        let plan = sol
            .plans
            .into_iter()
            .next()
            .ok_or_else(|| err(ErrorCode::UNSATISFIABLE, "no plan".into()))?;
        let mut buffers = Vec::new();
        let mut fds = Vec::new();
        for _ in 0..request.count {
            let memfd = rustix::fs::memfd_create("fake-buffer", rustix::fs::MemfdFlags::CLOEXEC)
                .map_err(|e| err(ErrorCode::OUT_OF_MEMORY, e.to_string()))?;
            rustix::fs::ftruncate(&memfd, plan.size)
                .map_err(|e| err(ErrorCode::OUT_OF_MEMORY, e.to_string()))?;
            let id = self.next_id;
            self.next_id += 1;
            let uuid = Uuid::new_v4();
            let (location, window) = match placement {
                Placement::HostWindow => {
                    let (region, next) = self
                        .window
                        .as_mut()
                        .ok_or_else(|| err(ErrorCode::UNSUPPORTED, "no window".into()))?;
                    let len = plan.size.div_ceil(PAGE) * PAGE;
                    let offset = *next;
                    if offset + len > region.len() as u64 {
                        return Err(err(ErrorCode::OUT_OF_MEMORY, "window full".into()));
                    }
                    *next += len;
                    (
                        Location::HostWindow {
                            shmid: 0,
                            offset,
                            len,
                        },
                        Some((offset, len)),
                    )
                }
                Placement::HostClient => {
                    let fd_index = u32::try_from(fds.len()).unwrap_or(u32::MAX);
                    let dup = memfd
                        .try_clone()
                        .map_err(|e| err(ErrorCode::INTERNAL, e.to_string()))?;
                    fds.push(dup);
                    (Location::HostClient { fd_index }, None)
                }
                Placement::GuestRam { .. } => {
                    return Err(err(ErrorCode::UNSUPPORTED, "no guest RAM".into()));
                }
            };
            self.buffers.insert(
                id,
                FakeBuffer {
                    plan: plan.clone(),
                    uuid,
                    memfd,
                    window,
                },
            );
            buffers.push(BufferInfo {
                id: BufferId(id),
                uuid,
                location,
            });
        }
        Ok((AllocateReply { plan, buffers }.into(), fds))
    }

    /// Answers requests on a connected Unix socket (seqpacket or stream) on a new thread until
    /// the peer hangs up. Pending events are sent before each reply.
    pub fn serve(mut self, sock: OwnedFd) -> JoinHandle<()> {
        std::thread::spawn(move || {
            let Ok(mut conn) = crate::local::LocalTransport::from_fd(sock) else {
                return;
            };
            while let Ok(Some((request, _fds))) = conn.recv_request() {
                for event in self.take_events() {
                    if send_with_fds(conn.as_fd(), &event, &[]).is_err() {
                        return;
                    }
                }
                let (reply, fds) = self.handle(&request);
                let borrowed: Vec<BorrowedFd<'_>> = fds.iter().map(AsFd::as_fd).collect();
                if send_with_fds(conn.as_fd(), &reply, &borrowed).is_err() {
                    return;
                }
            }
        })
    }
}

/// Sends one message with `fds` as `SCM_RIGHTS` (one `sendmsg`; stream peers may see it split).
pub fn send_with_fds(
    sock: BorrowedFd<'_>,
    bytes: &[u8],
    fds: &[BorrowedFd<'_>],
) -> std::io::Result<()> {
    let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(64))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !fds.is_empty() && !control.push(SendAncillaryMessage::ScmRights(fds)) {
        return Err(std::io::Error::other("too many fds"));
    }
    let mut sent = rustix::net::sendmsg(
        sock,
        &[IoSlice::new(bytes)],
        &mut control,
        SendFlags::NOSIGNAL,
    )?;
    while sent < bytes.len() {
        let rest = bytes.get(sent..).unwrap_or_default();
        sent += rustix::net::send(sock, rest, SendFlags::NOSIGNAL)?;
    }
    Ok(())
}

/// An in-process transport to a [`FakeBroker`], with a memfd-backed host window.
#[derive(Debug)]
pub struct FakeTransport {
    broker: FakeBroker,
    window: Arc<MappedRegion>,
    window_file: OwnedFd,
    events: VecDeque<Vec<u8>>,
}

impl FakeTransport {
    /// A fake broker with a host window of `window_size` bytes.
    pub fn new(broker: FakeBroker, window_size: usize) -> Result<Self, TransportError> {
        let fd = rustix::fs::memfd_create("fake-window", rustix::fs::MemfdFlags::CLOEXEC)
            .map_err(|e| TransportError::errno("memfd_create", e))?;
        rustix::fs::ftruncate(&fd, window_size as u64)
            .map_err(|e| TransportError::errno("ftruncate", e))?;
        let window = Arc::new(
            MappedRegion::map_fd(fd.as_fd(), window_size, true)
                .map_err(|e| TransportError::Setup(e.to_string()))?,
        );
        Ok(FakeTransport {
            broker: broker.with_window(window.clone()),
            window,
            window_file: fd,
            events: VecDeque::new(),
        })
    }

    /// The broker, to queue events or inspect it.
    pub fn broker_mut(&mut self) -> &mut FakeBroker {
        &mut self.broker
    }
}

impl Transport for FakeTransport {
    fn round_trip(&mut self, request: &[u8]) -> Result<(Vec<u8>, Vec<OwnedFd>), TransportError> {
        self.events.extend(self.broker.take_events());
        Ok(self.broker.handle(request))
    }

    fn recv_event(
        &mut self,
        _timeout: Option<Duration>,
    ) -> Result<Option<Vec<u8>>, TransportError> {
        self.events.extend(self.broker.take_events());
        Ok(self.events.pop_front())
    }

    fn window(&self) -> Option<Arc<MappedRegion>> {
        Some(self.window.clone())
    }

    fn window_fd(&self) -> Option<OwnedFd> {
        self.window_file.try_clone().ok()
    }
}
