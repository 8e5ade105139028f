//! [`BufbrokerDevice`]: the `VhostUserBackend` of one guest connection.

use std::fs::File;
use std::io;
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

    fn exit_event(&self, _thread_index: usize) -> Option<(EventConsumer, EventNotifier)> {
        let (consumer, notifier) = new_event_consumer_and_notifier(EventFlag::NONBLOCK).ok()?;
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
