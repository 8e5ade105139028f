//! The guest agent (`bufbroker-guestd`): one process owns the virtio device and serves other
//! guest processes over a Unix socket with the same protocol, so that `Client<LocalTransport>`
//! works against it unchanged.
//!
//! - The agent says `Hello` to the device once, at start ([`Agent::new`]); each client's
//!   `Hello` is answered by the agent from that session (the version if the client speaks it,
//!   the intersection of features). The `HelloReply` carries one fd through which the client
//!   maps the host window from offset 0 ([`Transport::window_fd`]: the BAR's sysfs
//!   `resourceN` file over the device, the window's memfd over the fake), so
//!   `Location::HostWindow` offsets in replies stay valid in the client unchanged.
//! - One thread per client, at most [`AgentOptions::max_clients`] of them; requests are
//!   forwarded to the device one at a time (a mutex around the device transport) with the
//!   request id rewritten to the agent's own sequence, and the reply goes back with the
//!   client's id.
//! - Buffers (and registered participant handles) are tracked per client: `Free`, `Export`,
//!   `Grant`, `Map`, `Unmap`, `QueryIovas` and `UnregisterParticipant` on an id another client
//!   owns are refused with `NOT_FOUND` (as the broker answers for an unknown id), and what a
//!   client allocated, imported or registered is freed or unregistered when it disconnects.
//! - Events from the device: `BufferRevoked` goes to the client that owns the buffer (and is
//!   dropped if none does); other events are broadcast to every client that negotiated
//!   `EVENTS`. A thread polls the device's event queue every 20 ms while idle.
//!
//! The device side is any [`Transport`], so tests run the agent over [`crate::fake::FakeTransport`].

use std::collections::{HashMap, HashSet};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use bufbroker_proto::wire::{
    self, BufferId, ErrorCode, ErrorReply, Event, Features, Free, Hello, HelloReply, Message,
    UnregisterParticipant,
};
use thiserror::Error;

use crate::fake::send_with_fds;
use crate::local::LocalTransport;
use crate::transport::{Transport, TransportError};

/// Default socket path of the agent.
pub const DEFAULT_SOCKET: &str = "/run/bufbroker-guestd.sock";
/// Default number of clients served at once.
pub const DEFAULT_MAX_CLIENTS: usize = 64;
/// How often the event pump looks at the device's event queue when it is idle.
const EVENT_POLL: Duration = Duration::from_millis(20);

/// Errors of the agent.
#[derive(Debug, Error)]
pub enum AgentError {
    /// Talking to the device failed.
    #[error("the device transport failed")]
    Transport(#[from] TransportError),
    /// The device refused or garbled the agent's `Hello`.
    #[error("the device's Hello failed: {0}")]
    Hello(String),
    /// A socket operation failed.
    #[error("{what} failed")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// How the agent behaves.
#[derive(Debug, Clone)]
pub struct AgentOptions {
    /// Most clients connected at once; further connections are closed at once.
    pub max_clients: usize,
    /// Name the agent gives the broker in its `Hello`.
    pub name: String,
}

impl Default for AgentOptions {
    fn default() -> Self {
        AgentOptions {
            max_clients: DEFAULT_MAX_CLIENTS,
            name: format!("bufbroker-guestd {}", env!("CARGO_PKG_VERSION")),
        }
    }
}

/// The device and the agent's request-id sequence, behind one mutex.
struct Device<T> {
    transport: T,
    next_id: u32,
}

impl<T: Transport> Device<T> {
    /// Sends `request` with its request id replaced by the agent's own, returns the reply
    /// with the client's id put back, and its fds.
    fn forward(&mut self, request: &[u8]) -> Result<(Vec<u8>, Vec<OwnedFd>), TransportError> {
        let id = self.next_id;
        self.next_id = self.next_id.checked_add(1).unwrap_or(1);
        let mut bytes = request.to_vec();
        let client_id = set_request_id(&mut bytes, id)
            .ok_or_else(|| TransportError::Protocol("request shorter than a header".into()))?;
        let (mut reply, fds) = self.transport.round_trip(&bytes)?;
        match set_request_id(&mut reply, client_id) {
            Some(got) if got == id => Ok((reply, fds)),
            Some(got) => Err(TransportError::Protocol(format!(
                "the device answered request {got} to request {id}"
            ))),
            None => Err(TransportError::Protocol(
                "reply shorter than a header".into(),
            )),
        }
    }

    /// Sends `message` and decodes the reply.
    fn call(&mut self, message: &Message) -> Result<Message, AgentError> {
        let bytes = wire::encode(message, 0).map_err(|e| AgentError::Hello(e.to_string()))?;
        let (reply, _) = self.forward(&bytes)?;
        let (_, reply) = wire::decode(&reply).map_err(|e| AgentError::Hello(e.to_string()))?;
        Ok(reply)
    }
}

/// Replaces the request id in an encoded message; returns the old one.
fn set_request_id(bytes: &mut [u8], id: u32) -> Option<u32> {
    let field = bytes.get_mut(8..12)?;
    let old = u32::from_le_bytes(<[u8; 4]>::try_from(&*field).ok()?);
    field.copy_from_slice(&id.to_le_bytes());
    Some(old)
}

/// One connected client, as the event pump and the cleanup see it.
struct Conn {
    /// Writes (replies and events) go through this lock so they never interleave.
    writer: Mutex<OwnedFd>,
    /// Whether the client negotiated `EVENTS`.
    events: AtomicBool,
}

impl Conn {
    fn send(&self, bytes: &[u8], fds: &[BorrowedFd<'_>]) -> std::io::Result<()> {
        let sock = lock(&self.writer);
        send_with_fds(sock.as_fd(), bytes, fds)
    }
}

/// What each client owns.
#[derive(Default)]
struct Owners {
    /// Buffer id → client.
    buffers: HashMap<u64, u64>,
    /// Participant handle → client.
    handles: HashMap<u32, u64>,
}

struct Shared<T> {
    device: Mutex<Device<T>>,
    session: HelloReply,
    window: Option<OwnedFd>,
    clients: Mutex<HashMap<u64, Arc<Conn>>>,
    owners: Mutex<Owners>,
    next_client: AtomicU64,
    options: AgentOptions,
    stop: AtomicBool,
}

/// Locks a mutex, ignoring poisoning (the state stays consistent: every update is one insert
/// or remove).
fn lock<M>(m: &Mutex<M>) -> MutexGuard<'_, M> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The agent: owns the device transport, serves clients.
pub struct Agent<T> {
    shared: Arc<Shared<T>>,
}

impl<T> Clone for Agent<T> {
    fn clone(&self) -> Self {
        Agent {
            shared: self.shared.clone(),
        }
    }
}

impl<T> std::fmt::Debug for Agent<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agent")
            .field("session", &self.shared.session)
            .finish_non_exhaustive()
    }
}

impl<T: Transport + Send + 'static> Agent<T> {
    /// Negotiates the device session (`Hello`, every feature this library knows) and starts
    /// the event pump.
    pub fn new(transport: T, options: AgentOptions) -> Result<Self, AgentError> {
        let window = transport.window_fd();
        let mut device = Device {
            transport,
            next_id: 1,
        };
        let hello = Hello {
            min_version: wire::MIN_PROTOCOL_VERSION,
            max_version: wire::MAX_PROTOCOL_VERSION,
            features: Features::all(),
            client: options.name.clone(),
        };
        let session = match device.call(&hello.into())? {
            Message::HelloReply(r) => r,
            Message::ErrorReply(e) => {
                return Err(AgentError::Hello(format!("{:?}: {}", e.code, e.message)));
            }
            other => {
                return Err(AgentError::Hello(format!(
                    "{} instead of HelloReply",
                    other.message_type()
                )));
            }
        };
        if !session.features.contains(Features::HOST_WINDOW) || window.is_none() {
            log::info!("no host window to share: clients cannot map HostWindow buffers");
        }
        let shared = Arc::new(Shared {
            device: Mutex::new(device),
            session,
            window,
            clients: Mutex::new(HashMap::new()),
            owners: Mutex::new(Owners::default()),
            next_client: AtomicU64::new(1),
            options,
            stop: AtomicBool::new(false),
        });
        let pump = shared.clone();
        std::thread::Builder::new()
            .name("guestd-events".into())
            .spawn(move || event_pump(&pump))
            .map_err(|source| AgentError::Io {
                what: "spawning the event thread",
                source,
            })?;
        Ok(Agent { shared })
    }

    /// The device session the agent negotiated.
    pub fn session(&self) -> &HelloReply {
        &self.shared.session
    }

    /// Runs `f` on the device transport (holding the device lock).
    pub fn with_device<R>(&self, f: impl FnOnce(&mut T) -> R) -> R {
        f(&mut lock(&self.shared.device).transport)
    }

    /// Number of clients connected now.
    pub fn clients(&self) -> usize {
        lock(&self.shared.clients).len()
    }

    /// Number of buffers the agent tracks for its clients.
    pub fn tracked_buffers(&self) -> usize {
        lock(&self.shared.owners).buffers.len()
    }

    /// Binds `path` (replacing a stale socket nobody listens on) as a `SOCK_STREAM` listener.
    pub fn bind(path: &Path) -> Result<UnixListener, AgentError> {
        if path.exists() && UnixStream::connect(path).is_err() {
            let _ = std::fs::remove_file(path);
        }
        UnixListener::bind(path).map_err(|source| AgentError::Io {
            what: "binding the agent socket",
            source,
        })
    }

    /// Accepts clients on `listener` until [`Agent::stop`] (checked between connections), one
    /// thread each.
    pub fn serve(&self, listener: &UnixListener) -> Result<(), AgentError> {
        for stream in listener.incoming() {
            if self.shared.stop.load(Ordering::Acquire) {
                break;
            }
            let stream = match stream {
                Ok(s) => s,
                Err(e) => {
                    log::warn!("accept failed: {e}");
                    continue;
                }
            };
            if let Err(e) = self.spawn_client(stream) {
                log::warn!("client not served: {e}");
            }
        }
        Ok(())
    }

    /// Serves `listener` on a new thread.
    pub fn spawn(&self, listener: UnixListener) -> JoinHandle<Result<(), AgentError>> {
        let agent = self.clone();
        std::thread::spawn(move || agent.serve(&listener))
    }

    /// Asks the event pump and [`Agent::serve`] to stop (the latter after its next accept).
    pub fn stop(&self) {
        self.shared.stop.store(true, Ordering::Release);
    }

    /// Serves one connected client on a new thread (or closes it if the agent is full).
    pub fn spawn_client(&self, stream: UnixStream) -> Result<(), AgentError> {
        let io = |what| move |source| AgentError::Io { what, source };
        let sock: OwnedFd = stream.into();
        let writer = sock.try_clone().map_err(io("dup of a client socket"))?;
        let conn = Arc::new(Conn {
            writer: Mutex::new(writer),
            events: AtomicBool::new(false),
        });
        let id = self.shared.next_client.fetch_add(1, Ordering::Relaxed);
        {
            let mut clients = lock(&self.shared.clients);
            if clients.len() >= self.shared.options.max_clients {
                log::warn!(
                    "{} clients connected: refusing another",
                    self.shared.options.max_clients
                );
                return Ok(());
            }
            clients.insert(id, conn.clone());
        }
        let shared = self.shared.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("guestd-client-{id}"))
            .spawn(move || {
                if let Err(e) = serve_client(&shared, id, &conn, sock) {
                    log::info!("client {id}: {e}");
                }
                cleanup(&shared, id);
            });
        if let Err(e) = spawned {
            lock(&self.shared.clients).remove(&id);
            return Err(io("spawning a client thread")(e));
        }
        Ok(())
    }
}

/// Reads requests from one client until it hangs up.
fn serve_client<T: Transport>(
    shared: &Shared<T>,
    id: u64,
    conn: &Conn,
    sock: OwnedFd,
) -> Result<(), TransportError> {
    let mut reader = LocalTransport::from_fd(sock)?;
    let mut negotiated = false;
    while let Some((request, _fds)) = reader.recv_request()? {
        let request_id = wire::peek_request_id(&request).unwrap_or(0);
        let (reply, fds) = match handle(shared, id, conn, &mut negotiated, &request) {
            Ok(r) => r,
            Err(e) => match wire::encode(&Message::ErrorReply(e), request_id) {
                Ok(bytes) => (bytes, Vec::new()),
                Err(_) => return Err(TransportError::Protocol("cannot encode an error".into())),
            },
        };
        let borrowed: Vec<BorrowedFd<'_>> = fds.iter().map(AsFd::as_fd).collect();
        conn.send(&reply, &borrowed)
            .map_err(|source| TransportError::Io {
                what: "sending a reply",
                source,
            })?;
    }
    Ok(())
}

/// The buffer a request names, if it names one.
fn named_buffer(message: &Message) -> Option<BufferId> {
    match message {
        Message::Free(m) => Some(m.buffer),
        Message::Export(m) => Some(m.buffer),
        Message::Grant(m) => Some(m.buffer),
        Message::Map(m) => Some(m.buffer),
        Message::Unmap(m) => Some(m.buffer),
        Message::QueryIovas(m) => Some(m.buffer),
        _ => None,
    }
}

/// Answers one request of client `id`: the encoded reply and its fds.
fn handle<T: Transport>(
    shared: &Shared<T>,
    id: u64,
    conn: &Conn,
    negotiated: &mut bool,
    request: &[u8],
) -> Result<(Vec<u8>, Vec<OwnedFd>), ErrorReply> {
    let (header, message) = wire::decode(request).map_err(|e| ErrorReply::from(&e))?;
    let not_found = || ErrorReply::new(ErrorCode::NOT_FOUND, "no such buffer");
    match &message {
        Message::Hello(h) => {
            if *negotiated {
                return Err(ErrorReply::new(
                    ErrorCode::UNEXPECTED_MESSAGE,
                    "second Hello",
                ));
            }
            let s = &shared.session;
            if !(h.min_version..=h.max_version).contains(&s.version) {
                return Err(ErrorReply::new(
                    ErrorCode::UNSUPPORTED_VERSION,
                    format!("the agent's device session speaks version {}", s.version),
                ));
            }
            let features = h.features & s.features;
            *negotiated = true;
            conn.events
                .store(features.contains(Features::EVENTS), Ordering::Release);
            let reply = HelloReply {
                version: s.version,
                features,
                limits: s.limits,
                broker: format!("{} via bufbroker-guestd", s.broker),
            };
            let bytes = wire::encode(&reply.into(), header.request_id)
                .map_err(|e| ErrorReply::new(ErrorCode::INTERNAL, e.to_string()))?;
            let mut fds = Vec::new();
            if features.contains(Features::HOST_WINDOW) {
                if let Some(fd) = shared.window.as_ref().and_then(|w| w.try_clone().ok()) {
                    fds.push(fd);
                }
            }
            return Ok((bytes, fds));
        }
        Message::Ping(_) => {}
        _ if !*negotiated => {
            return Err(ErrorReply::new(
                ErrorCode::NOT_NEGOTIATED,
                "send Hello first",
            ));
        }
        Message::UnregisterParticipant(UnregisterParticipant { handle }) => {
            if lock(&shared.owners).handles.get(&handle.0) != Some(&id) {
                return Err(ErrorReply::new(ErrorCode::NOT_FOUND, "no such handle"));
            }
        }
        m => {
            if let Some(buffer) = named_buffer(m) {
                if lock(&shared.owners).buffers.get(&buffer.0) != Some(&id) {
                    return Err(not_found());
                }
            }
        }
    }
    let (reply, fds) = lock(&shared.device)
        .forward(request)
        .map_err(|e| ErrorReply::new(ErrorCode::INTERNAL, format!("device: {e}")))?;
    track(shared, id, &message, &reply);
    Ok((reply, fds))
}

/// Updates ownership after a successful reply.
fn track<T>(shared: &Shared<T>, id: u64, request: &Message, reply: &[u8]) {
    let Ok((_, reply)) = wire::decode(reply) else {
        return;
    };
    let mut owners = lock(&shared.owners);
    match (request, reply) {
        (Message::Allocate(_), Message::AllocateReply(r)) => {
            for b in r.buffers {
                owners.buffers.insert(b.id.0, id);
            }
        }
        (Message::Import(_), Message::ImportReply(r)) => {
            owners.buffers.entry(r.buffer.id.0).or_insert(id);
        }
        (Message::Free(_), Message::FreeReply(r)) => {
            owners.buffers.remove(&r.buffer.0);
        }
        (Message::RegisterParticipant(_), Message::RegisterParticipantReply(r)) => {
            owners.handles.insert(r.handle.0, id);
        }
        (Message::UnregisterParticipant(_), Message::UnregisterParticipantReply(r)) => {
            owners.handles.remove(&r.handle.0);
        }
        _ => {}
    }
}

/// Frees what client `id` owned and forgets it (it stays counted in `clients` until done).
fn cleanup<T: Transport>(shared: &Shared<T>, id: u64) {
    let (buffers, handles): (HashSet<u64>, HashSet<u32>) = {
        let mut owners = lock(&shared.owners);
        let buffers = owners
            .buffers
            .iter()
            .filter(|(_, c)| **c == id)
            .map(|(b, _)| *b)
            .collect::<HashSet<_>>();
        let handles = owners
            .handles
            .iter()
            .filter(|(_, c)| **c == id)
            .map(|(h, _)| *h)
            .collect::<HashSet<_>>();
        owners.buffers.retain(|_, c| *c != id);
        owners.handles.retain(|_, c| *c != id);
        (buffers, handles)
    };
    let mut device = lock(&shared.device);
    for b in buffers {
        let free = Free {
            buffer: BufferId(b),
        };
        match device.call(&free.into()) {
            Ok(Message::FreeReply(_)) => {}
            other => log::warn!("client {id} gone: freeing buffer {b}: {other:?}"),
        }
    }
    for h in handles {
        let msg = UnregisterParticipant {
            handle: wire::ParticipantHandle(h),
        };
        if let Err(e) = device.call(&msg.into()) {
            log::warn!("client {id} gone: unregistering handle {h}: {e}");
        }
    }
    drop(device);
    lock(&shared.clients).remove(&id);
}

/// Moves events from the device to the clients until the agent stops.
fn event_pump<T: Transport>(shared: &Shared<T>) {
    while !shared.stop.load(Ordering::Acquire) {
        let event = lock(&shared.device).transport.recv_event(None);
        match event {
            Ok(Some(bytes)) => route_event(shared, &bytes),
            Ok(None) => std::thread::sleep(EVENT_POLL),
            Err(e) => {
                log::warn!("event queue: {e}");
                std::thread::sleep(EVENT_POLL * 50);
            }
        }
    }
}

/// Sends one encoded event to the client it concerns (or to every client).
fn route_event<T>(shared: &Shared<T>, bytes: &[u8]) {
    let owner = match wire::decode(bytes) {
        Ok((_, Message::Event(Event::BufferRevoked { buffer, .. }))) => {
            let owner = lock(&shared.owners).buffers.get(&buffer.0).copied();
            if owner.is_none() {
                log::info!("BufferRevoked for {buffer}, which no client owns: dropped");
                return;
            }
            owner
        }
        Ok((_, Message::Event(_))) => None,
        other => {
            log::warn!("not an event on the event queue: {other:?}");
            return;
        }
    };
    let targets: Vec<Arc<Conn>> = {
        let clients = lock(&shared.clients);
        match owner {
            Some(o) => clients.get(&o).cloned().into_iter().collect(),
            None => clients.values().cloned().collect(),
        }
    };
    for conn in targets {
        if conn.events.load(Ordering::Acquire) {
            if let Err(e) = conn.send(bytes, &[]) {
                log::info!("dropping an event for a client: {e}");
            }
        }
    }
}
