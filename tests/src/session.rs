//! The whole broker in process, as the session tests use it: one [`Broker`] behind the
//! vhost-user device (the real guest session) and behind a local socket (host clients), and
//! the guest's side of a session on top of a [`Vmm`].

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bufbroker::config::Config;
use bufbroker::local::{Client, LocalServer};
use bufbroker::session::{Broker, guest_factory};
use bufbroker::vhost::DeviceConfig;
use bufbroker_proto::wire::{
    self, Access, Allocate, BufferId, Features, Grant, Hello, HelloReply, Import, ImportView,
    Message, Placement,
};
use bufbroker_proto::{ConstraintSet, Fourcc, Participant, ParticipantId, Request, Usage};

use crate::broker::{Recorder, TestBroker, recording};
use uuid::Uuid;

use crate::vmm::{Vmm, VmmOptions};
use crate::{Context, HarnessError, Result};

/// A [`Broker`] serving a guest device (socket name "test", so its owner is called "test")
/// and a local socket for host clients; the device's connections are recorded. Dropping it
/// stops the device and removes the socket's directory.
pub struct FullBroker {
    /// The broker both sockets serve.
    pub broker: Arc<Broker>,
    /// The vhost-user device, served with [`guest_factory`].
    pub device: TestBroker,
    /// The device's connections (exposures) and teardowns.
    pub recorder: Arc<Recorder>,
    /// The local socket's path.
    pub local: PathBuf,
    _dir: tempfile::TempDir,
}

impl FullBroker {
    /// A broker from `config` with a device whose window has `window` bytes.
    pub fn start(config: Config, window: u64) -> Result<Self> {
        let broker = Arc::new(Broker::from_config(config).context("starting the broker")?);
        let recorder = Recorder::new();
        let device = TestBroker::start(
            recording(&recorder, guest_factory(broker.clone())),
            DeviceConfig {
                shmem_size: window,
                ..DeviceConfig::default()
            },
        )?;
        let dir = tempfile::tempdir().context("creating the local socket's directory")?;
        let local = dir.path().join("local.sock");
        let server = LocalServer::bind(&local, broker.clone()).context("binding the socket")?;
        std::thread::Builder::new()
            .name("test-local".into())
            .spawn(move || server.serve())
            .context("spawning the local server")?;
        Ok(FullBroker {
            broker,
            device,
            recorder,
            local,
            _dir: dir,
        })
    }

    /// The local socket's path.
    pub fn local(&self) -> &Path {
        &self.local
    }

    /// A VMM connected to the device and started, whose guest said Hello (request id 1) as
    /// `client` with every feature; returns the reply too.
    pub fn guest(&self, client: &str) -> Result<(Vmm, HelloReply)> {
        let mut vmm = Vmm::connect_and_start(self.device.socket(), VmmOptions::default())?;
        let reply = hello(&mut vmm, Features::all(), client)?;
        Ok((vmm, reply))
    }
}

/// Sends `message` as request `id` and returns the reply, which must carry `id`.
pub fn ask(vmm: &mut Vmm, id: u32, message: &Message) -> Result<Message> {
    let request = wire::encode(message, id).context("encoding the request")?;
    let bytes = vmm.request(&request, 64 * 1024)?;
    let (header, reply) = wire::decode(&bytes).context("decoding the reply")?;
    if header.request_id != id {
        return Err(HarnessError(format!(
            "reply to request {} for request {id}: {reply:?}",
            header.request_id
        )));
    }
    Ok(reply)
}

/// The guest's Hello (request id 1) offering `features`, as `client`; the reply must be a
/// `HelloReply`.
pub fn hello(vmm: &mut Vmm, features: Features, client: &str) -> Result<HelloReply> {
    let hello = Message::Hello(Hello {
        min_version: wire::MIN_PROTOCOL_VERSION,
        max_version: wire::PROTOCOL_VERSION,
        features,
        client: client.into(),
    });
    match ask(vmm, 1, &hello)? {
        Message::HelloReply(r) => Ok(r),
        other => Err(HarnessError(format!("expected HelloReply, got {other:?}"))),
    }
}

/// XRGB8888 (DRM's `XR24`), 4 bytes a pixel.
pub const XRGB8888: Fourcc = Fourcc::from_chars(*b"XR24");
/// NV12, 1.5 bytes a pixel.
pub const NV12: Fourcc = Fourcc::from_chars(*b"NV12");

/// `count` buffers of `width`×`height` `format` for one CPU participant (`label`) that reads
/// and writes them.
pub fn cpu_request(format: Fourcc, width: u32, height: u32, count: u32, label: &str) -> Request {
    let usage = Usage::CPU_READ | Usage::CPU_WRITE;
    Request {
        width,
        height,
        formats: vec![format],
        usage,
        participants: vec![Participant::new(
            ParticipantId::Cpu,
            label,
            usage,
            ConstraintSet::default(),
        )],
        count,
    }
}

/// Allocates `request` in the guest's host window as request `id`; returns the reply.
pub fn allocate_host_window(vmm: &mut Vmm, id: u32, request: Request) -> Result<Message> {
    ask(
        vmm,
        id,
        &Message::Allocate(Allocate {
            request,
            placement: Placement::HostWindow,
        }),
    )
}

/// Grants `buffer` to the host user this test runs as (`uid:N`, the owner name a local client
/// of that user gets) with `access`, as request `id`; returns the reply.
pub fn grant_to_host(vmm: &mut Vmm, id: u32, buffer: BufferId, access: Access) -> Result<Message> {
    let uid = rustix::process::getuid().as_raw();
    ask(
        vmm,
        id,
        &Message::Grant(Grant {
            buffer,
            grantee: format!("uid:{uid}"),
            access,
        }),
    )
}

/// A new host client on the broker's local socket imports `uuid` as a descriptor; returns the
/// reply (an `ImportReply` or an `ErrorReply`) and the descriptors that came with it.
pub fn host_import(local: &Path, uuid: Uuid) -> Result<(Message, Vec<OwnedFd>)> {
    let (mut client, _) =
        Client::connect_hello(local, Features::all()).context("connecting a host client")?;
    client
        .request(&Message::Import(Import {
            uuid,
            view: ImportView::HostClient,
        }))
        .context("importing as a host client")
}
