//! [`BufbrokerDevice`]: the `VhostUserBackend` of one guest connection.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use bufbroker_proto::config_space::ConfigSpace;
use vhost::vhost_user::Backend;
use vhost::vhost_user::message::{
    VhostUserProtocolFeatures, VhostUserShMemConfig, VhostUserSharedMsg, VhostUserVirtioFeatures,
};
use vhost_user_backend::{VhostUserBackend, VringRwLock};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;
use vm_memory::{GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{
    EventConsumer, EventFlag, EventNotifier, new_event_consumer_and_notifier,
};

use super::exposure::VhostExposure;
use super::handler::{RequestHandler, Teardown};
use super::queue::serve_requests;
use super::{DeviceConfig, EVENT_QUEUE, MAX_QUEUE_SIZE, NUM_QUEUES, REQUEST_QUEUE};

/// Virtio feature bits the device offers.
pub const DEVICE_FEATURES: u64 = (1 << VIRTIO_F_VERSION_1)
    | (1 << VIRTIO_RING_F_EVENT_IDX)
    | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();

/// vhost-user protocol features the device offers.
pub fn protocol_features() -> VhostUserProtocolFeatures {
    VhostUserProtocolFeatures::MQ
        | VhostUserProtocolFeatures::REPLY_ACK
        | VhostUserProtocolFeatures::BACKEND_REQ
        | VhostUserProtocolFeatures::BACKEND_SEND_FD
        | VhostUserProtocolFeatures::CONFIG
        | VhostUserProtocolFeatures::SHARED_OBJECT
        | VhostUserProtocolFeatures::SHMEM
}

/// The device of one guest connection: queues, config space, shared-memory region, and the
/// hooks that feed [`VhostExposure`] (backend channel, started state) and the handler
/// (requests, teardown on reset).
pub struct BufbrokerDevice {
    config: DeviceConfig,
    handler: Arc<dyn RequestHandler>,
    exposure: Arc<VhostExposure>,
    mem: GuestMemoryAtomic<GuestMemoryMmap>,
    event_idx: AtomicBool,
    exit: Mutex<Vec<EventNotifier>>,
    /// Exit-event consumers handed to vhost-user-backend, with their eventfd ids; closed when
    /// the device drops (see [`BufbrokerDevice::exit_event`]).
    exit_consumers: Mutex<Vec<(RawFd, String)>>,
}

impl BufbrokerDevice {
    /// A device answering with `handler`, exposing through `exposure`, reading guest memory
    /// through `mem` (the same `GuestMemoryAtomic` the daemon is given).
    pub fn new(
        config: DeviceConfig,
        handler: Arc<dyn RequestHandler>,
        exposure: Arc<VhostExposure>,
        mem: GuestMemoryAtomic<GuestMemoryMmap>,
    ) -> Self {
        BufbrokerDevice {
            config,
            handler,
            exposure,
            mem,
            event_idx: AtomicBool::new(false),
            exit: Mutex::new(Vec::new()),
            exit_consumers: Mutex::new(Vec::new()),
        }
    }

    /// The config space bytes.
    pub fn config_space(&self) -> [u8; bufbroker_proto::config_space::CONFIG_SPACE_SIZE] {
        ConfigSpace::new(
            self.config.features,
            self.config.shmem_size,
            self.config.max_buffers,
        )
        .to_bytes()
    }

    /// The guest stopped the device: tear its state down on the exposure thread (not here:
    /// this runs on the thread serving the VMM, and teardown sends backend-channel requests).
    fn stopped(&self) {
        if self.exposure.set_started(false) {
            log::info!("{}: device reset by the guest", self.config.name);
            let handler = self.handler.clone();
            self.exposure
                .schedule(move || handler.teardown(Teardown::Reset));
        }
    }
}

impl VhostUserBackend for BufbrokerDevice {
    type Bitmap = ();
    type Vring = VringRwLock;

    fn num_queues(&self) -> usize {
        NUM_QUEUES
    }

    fn max_queue_size(&self) -> usize {
        MAX_QUEUE_SIZE
    }

    fn features(&self) -> u64 {
        DEVICE_FEATURES
    }

    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        protocol_features()
    }

    fn set_event_idx(&self, enabled: bool) {
        self.event_idx.store(enabled, Ordering::Relaxed);
    }

    fn get_config(&self, offset: u32, size: u32) -> Vec<u8> {
        let bytes = self.config_space();
        let start = (offset as usize).min(bytes.len());
        let end = start.saturating_add(size as usize).min(bytes.len());
        bytes.get(start..end).unwrap_or_default().to_vec()
    }

    fn update_memory(&self, _mem: GuestMemoryAtomic<GuestMemoryMmap>) -> io::Result<()> {
        // `self.mem` is the daemon's own GuestMemoryAtomic, already holding the new table.
        // Nothing else to do: QEMU sends a new table after every window map, keep this cheap.
        Ok(())
    }

    fn set_backend_req_fd(&self, backend: Backend) {
        self.exposure.set_channel(backend);
    }

    fn get_shared_object(&self, uuid: VhostUserSharedMsg) -> io::Result<File> {
        self.handler
            .shared_object(uuid.uuid)
            .map(File::from)
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::NotFound,
                    format!("no shared object {}", uuid.uuid),
                )
            })
    }

    fn get_shmem_config(&self) -> io::Result<VhostUserShMemConfig> {
        Ok(VhostUserShMemConfig::new(1, &[self.config.shmem_size]))
    }

    fn reset_device(&self) {
        self.stopped();
    }

    fn stop_vring(&self, _queue_index: u32) -> io::Result<()> {
        self.stopped();
        Ok(())
    }

    /// vhost-user-backend 0.24's `VringEpollHandler::new` registers the consumer with
    /// `into_raw_fd()` and never closes it: one eventfd leaked per connection (found by
    /// `tests/e2e/qemu-scenarios.sh`, scenario e; `tests/tests/connection_fds.rs`). The device
    /// remembers the descriptor and its eventfd id and closes it when it drops, which happens
    /// after the last epoll handler (each holds the device) is gone.
    fn exit_event(&self, _thread_index: usize) -> Option<(EventConsumer, EventNotifier)> {
        let (consumer, notifier) = new_event_consumer_and_notifier(EventFlag::NONBLOCK).ok()?;
        let raw = consumer.as_raw_fd();
        if let Some(id) = eventfd_id(raw) {
            self.exit_consumers
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .push((raw, id));
        }
        let keep = notifier.try_clone().ok()?;
        self.exit
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(keep);
        Some((consumer, notifier))
    }

    fn handle_event(
        &self,
        device_event: u16,
        evset: EventSet,
        vrings: &[VringRwLock],
        _thread_id: usize,
    ) -> io::Result<()> {
        // An error here would end the queue worker for the rest of the connection: log
        // instead, whatever the guest did.
        if evset != EventSet::IN {
            log::warn!("{}: unexpected event set {evset:?}", self.config.name);
            return Ok(());
        }
        if !self.exposure.set_started(true) {
            log::info!("{}: device started by the guest", self.config.name);
        }
        if let Some(events) = vrings.get(usize::from(EVENT_QUEUE)) {
            self.exposure.event_queue(events);
        }
        match (device_event, vrings.get(usize::from(device_event))) {
            (REQUEST_QUEUE, Some(vring)) => serve_requests(
                vring,
                &self.mem,
                self.event_idx.load(Ordering::Relaxed),
                self.handler.as_ref(),
            ),
            // The driver posted event buffers: held events went out above.
            (EVENT_QUEUE, Some(_)) => {}
            _ => log::warn!("{}: unknown device event {device_event}", self.config.name),
        }
        Ok(())
    }
}

/// The `eventfd-id` the kernel shows for descriptor `fd` of this process (Linux 6.0 and later),
/// which tells one eventfd from another (they all share one inode).
fn eventfd_id(fd: RawFd) -> Option<String> {
    let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}")).ok()?;
    info.lines()
        .find_map(|l| l.strip_prefix("eventfd-id:"))
        .map(|id| id.trim().to_owned())
}

impl Drop for BufbrokerDevice {
    fn drop(&mut self) {
        let consumers = std::mem::take(
            self.exit_consumers
                .get_mut()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        for (fd, id) in consumers {
            // Only if `fd` is still the very eventfd handed out (a library that closed it
            // itself, and a reuse of the number, show up as another id or none).
            if eventfd_id(fd).as_deref() == Some(id.as_str()) {
                // SAFETY: `fd` is the exit-event consumer vhost-user-backend took with
                // `into_raw_fd` and abandoned (see `exit_event`); its epoll handlers, which
                // hold this device, are gone, so nothing else owns or uses the descriptor, and
                // the id check above shows it was not closed and reused meanwhile.
                drop(unsafe { OwnedFd::from_raw_fd(fd) });
            }
        }
    }
}
