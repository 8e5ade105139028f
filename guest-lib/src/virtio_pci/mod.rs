//! A userspace driver for the bufbroker virtio device (PCI `1af4:1065`, virtio id 37) inside a
//! Linux guest, through sysfs (the "sysfs mode"; needs root and no IOMMU between the device
//! and guest RAM, which holds for vhost-user devices without `iommu_platform=on`).
//!
//! Setup, in order ([`VirtioPciTransport::open`]):
//!
//! 1. find the device under `/sys/bus/pci/devices` by vendor/device id, unbind it from
//!    `virtio-pci` (the kernel has no driver for it, but `virtio-pci` claims every virtio
//!    function), enable memory decoding and bus mastering in the command register;
//! 2. walk the vendor capabilities ([`caps`]): common cfg, notify, ISR, device cfg, and the
//!    shared-memory region 0 (type 8, id 0); map their BARs via `resourceN` (sizes from the
//!    `resource` file);
//! 3. reset; ACKNOWLEDGE; DRIVER; negotiate `VIRTIO_F_VERSION_1` only (no `EVENT_IDX`: the
//!    driver polls, and sets `VIRTQ_AVAIL_F_NO_INTERRUPT`); FEATURES_OK and check it stuck;
//! 4. set up queue 0 (requests) and queue 1 (events) in locked pages ([`dma`]) at their
//!    `/proc/self/pagemap` physical addresses, post the event buffers; DRIVER_OK;
//! 5. read the device configuration (`bufbroker_proto::config_space`) with the generation
//!    check, and map the shared-memory window.
//!
//! A request is one descriptor chain: the request bytes (device-readable, one descriptor per
//! physically contiguous run) followed by a 64 KiB reply buffer (device-writable, likewise).
//! The driver polls the used ring until the chain returns or the timeout passes. After a
//! timeout the device still owns the buffers, so the transport refuses further requests
//! ([`TransportError::Broken`]); dropping it resets the device.
//!
//! Not done: the VFIO mode (binding the device to `vfio-pci` and mapping IOVA = guest-physical
//! addresses for the rings); interrupts (MSI-X through VFIO eventfds) instead of polling.

pub mod caps;
pub mod dma;
pub mod mmio;
pub mod queue;
pub mod sysfs;

use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bufbroker_proto::config_space::{CONFIG_SPACE_SIZE, ConfigSpace};
use bufbroker_proto::wire::{EVENT_BUFFER_SIZE, MAX_MESSAGE_SIZE};
use thiserror::Error;

use crate::mapping::{MapError, MappedRegion};
use crate::transport::{Transport, TransportError};
use caps::{CapRegion, VirtioCaps};
use dma::DmaMemory;
use mmio::Mmio;
use queue::{Segment, SplitQueue};

/// Errors of setting up the device.
#[derive(Debug, Error)]
pub enum VirtioPciError {
    /// No matching PCI device.
    #[error("no PCI device {vendor:04x}:{device:04x}")]
    NotFound {
        /// Vendor id.
        vendor: u16,
        /// Device id.
        device: u16,
    },
    /// A sysfs file could not be used.
    #[error("cannot {what} ({path})")]
    Sysfs {
        /// What was being done.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The device is bound to a driver this library does not take it from.
    #[error("the device is bound to {0}; unbind it first")]
    BoundElsewhere(String),
    /// The `resource` file does not parse.
    #[error("cannot parse {0}")]
    BadResourceFile(PathBuf),
    /// Configuration space reads returned fewer than 256 bytes (not root?).
    #[error("configuration space read returned {0} bytes; run as root")]
    ShortConfig(usize),
    /// A required virtio capability is missing.
    #[error("not a modern virtio-pci device: {0}")]
    NotModern(&'static str),
    /// A capability points outside its BAR.
    #[error("BAR {bar}: range {offset:#x}+{len:#x} outside its {size:#x} bytes")]
    BadBarRange {
        /// BAR index.
        bar: u8,
        /// Offset.
        offset: u64,
        /// Length.
        len: u64,
        /// BAR size.
        size: u64,
    },
    /// Mapping a BAR failed.
    #[error("cannot map BAR {0}")]
    MapBar(u8, #[source] MapError),
    /// The device did not finish a reset.
    #[error("the device did not complete its reset")]
    ResetTimeout,
    /// The device lacks `VIRTIO_F_VERSION_1`, or refused FEATURES_OK.
    #[error("feature negotiation failed: {0}")]
    Features(String),
    /// A queue cannot be set up.
    #[error("queue {queue}: {reason}")]
    Queue {
        /// Queue index.
        queue: u16,
        /// What is wrong.
        reason: String,
    },
    /// DMA memory could not be prepared.
    #[error("DMA memory: {0} failed")]
    Dma(&'static str, #[source] std::io::Error),
    /// A DMA page was not present in pagemap.
    #[error("a locked DMA page is not present in /proc/self/pagemap")]
    PageNotPresent,
    /// pagemap hides physical addresses (needs CAP_SYS_ADMIN).
    #[error("/proc/self/pagemap hides physical addresses; run as root")]
    NoPhysicalAddresses,
    /// The device configuration is unusable.
    #[error("device configuration: {0}")]
    Config(String),
}

/// Where and how to find the device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VirtioPciOptions {
    /// PCI vendor id (`0x1af4`).
    pub vendor: u16,
    /// PCI device id (`0x1040 + virtio id`; `0x1065` for id 37).
    pub device: u16,
    /// A specific PCI address (`0000:00:03.0`) instead of the first match.
    pub bdf: Option<String>,
    /// The sysfs PCI devices folder.
    pub devices_dir: PathBuf,
    /// Unbind the device from `virtio-pci` if bound.
    pub unbind: bool,
    /// How long to wait for a reply.
    pub timeout: Duration,
    /// Largest queue size to use (power of two, at most 64).
    pub max_queue_size: u16,
}

impl Default for VirtioPciOptions {
    fn default() -> Self {
        Self::for_virtio_id(37)
    }
}

impl VirtioPciOptions {
    /// Options for a device of virtio id `id` (PCI device id `0x1040 + id`).
    pub fn for_virtio_id(id: u16) -> Self {
        VirtioPciOptions {
            vendor: 0x1af4,
            device: 0x1040u16.saturating_add(id),
            bdf: None,
            devices_dir: PathBuf::from("/sys/bus/pci/devices"),
            unbind: true,
            timeout: Duration::from_secs(10),
            max_queue_size: queue::MAX_QUEUE_SIZE,
        }
    }
}

// Common configuration registers (virtio 1.2 §4.1.4.3).
const DEVICE_FEATURE_SELECT: usize = 0x00;
const DEVICE_FEATURE: usize = 0x04;
const DRIVER_FEATURE_SELECT: usize = 0x08;
const DRIVER_FEATURE: usize = 0x0c;
const NUM_QUEUES: usize = 0x12;
const DEVICE_STATUS: usize = 0x14;
const CONFIG_GENERATION: usize = 0x15;
const QUEUE_SELECT: usize = 0x16;
const QUEUE_SIZE: usize = 0x18;
const QUEUE_MSIX_VECTOR: usize = 0x1a;
const QUEUE_ENABLE: usize = 0x1c;
const QUEUE_NOTIFY_OFF: usize = 0x1e;
const QUEUE_DESC: usize = 0x20;
const QUEUE_DRIVER: usize = 0x28;
const QUEUE_DEVICE: usize = 0x30;
const COMMON_CFG_LEN: u64 = 0x38;

const STATUS_ACKNOWLEDGE: u8 = 1;
const STATUS_DRIVER: u8 = 2;
const STATUS_DRIVER_OK: u8 = 4;
const STATUS_FEATURES_OK: u8 = 8;
const STATUS_NEEDS_RESET: u8 = 64;
const STATUS_FAILED: u8 = 128;

/// `VIRTIO_F_VERSION_1` is bit 32: bit 0 of feature word 1.
const F_VERSION_1_WORD1: u32 = 1;
const NO_VECTOR: u16 = 0xffff;

const REQUEST_QUEUE: u16 = 0;
const EVENT_QUEUE: u16 = 1;
/// Event buffers kept posted.
const EVENT_BUFFERS: u16 = 4;

struct Queue {
    ring: SplitQueue,
    notify: Mmio,
    notify_at: usize,
}

impl Queue {
    fn kick(&self, index: u16) {
        self.notify.write16(self.notify_at, index);
    }
}

/// The transport over the bufbroker virtio device.
pub struct VirtioPciTransport {
    common: Mmio,
    requests: Queue,
    events: Queue,
    request_buf: DmaMemory,
    reply_buf: DmaMemory,
    event_buf: DmaMemory,
    event_size: usize,
    config: ConfigSpace,
    window: Option<Arc<MappedRegion>>,
    /// `resourceN` of the window's BAR, when the window starts at offset 0 of it (then another
    /// process can map the window through this file with the same offsets).
    window_file: Option<std::path::PathBuf>,
    timeout: Duration,
    broken: bool,
    bdf: String,
}

impl std::fmt::Debug for VirtioPciTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VirtioPciTransport")
            .field("bdf", &self.bdf)
            .field("config", &self.config)
            .field("window", &self.window.as_ref().map(|w| w.len()))
            .finish_non_exhaustive()
    }
}

fn map_cap(
    dev: &sysfs::PciDevice,
    bars: &mut [Option<Arc<MappedRegion>>; 6],
    sizes: &[(u64, u64); 6],
    cap: CapRegion,
    min_len: u64,
) -> Result<Mmio, VirtioPciError> {
    let idx = usize::from(cap.bar);
    let size = sizes.get(idx).map_or(0, |s| s.1);
    let bad = VirtioPciError::BadBarRange {
        bar: cap.bar,
        offset: cap.offset,
        len: cap.length,
        size,
    };
    if cap.length < min_len {
        return Err(bad);
    }
    let slot = bars
        .get_mut(idx)
        .ok_or(VirtioPciError::NotModern("BAR index"))?;
    let bar = match slot {
        Some(b) => b.clone(),
        None => {
            let b = dev.map_bar(cap.bar, 0, size, size)?;
            *slot = Some(b.clone());
            b
        }
    };
    Mmio::new(bar, cap.offset, cap.length).ok_or(bad)
}

impl VirtioPciTransport {
    /// Finds, claims and initialises the device; see the module documentation.
    pub fn open(options: &VirtioPciOptions) -> Result<Self, VirtioPciError> {
        let dev = sysfs::PciDevice::find(
            &options.devices_dir,
            options.vendor,
            options.device,
            options.bdf.as_deref(),
        )?;
        if options.unbind {
            dev.unbind("virtio-pci")?;
        } else if let Some(d) = dev.driver() {
            return Err(VirtioPciError::BoundElsewhere(d));
        }
        let sizes = dev.resources()?;
        let caps: VirtioCaps = caps::parse(&dev.read_config()?)?;
        dev.enable_bus_master()?;

        let mut bars: [Option<Arc<MappedRegion>>; 6] = Default::default();
        let common = map_cap(&dev, &mut bars, &sizes, caps.common, COMMON_CFG_LEN)?;
        let notify = map_cap(&dev, &mut bars, &sizes, caps.notify, 2)?;
        let device_cfg = caps
            .device
            .map(|c| map_cap(&dev, &mut bars, &sizes, c, CONFIG_SPACE_SIZE as u64))
            .transpose()?;

        // Reset, ACKNOWLEDGE, DRIVER.
        reset(&common)?;
        common.write8(DEVICE_STATUS, STATUS_ACKNOWLEDGE);
        common.write8(DEVICE_STATUS, STATUS_ACKNOWLEDGE | STATUS_DRIVER);

        // Features: VERSION_1 only.
        common.write32(DEVICE_FEATURE_SELECT, 1);
        let high = common.read32(DEVICE_FEATURE);
        if high & F_VERSION_1_WORD1 == 0 {
            fail(&common);
            return Err(VirtioPciError::Features("no VIRTIO_F_VERSION_1".into()));
        }
        common.write32(DRIVER_FEATURE_SELECT, 0);
        common.write32(DRIVER_FEATURE, 0);
        common.write32(DRIVER_FEATURE_SELECT, 1);
        common.write32(DRIVER_FEATURE, F_VERSION_1_WORD1);
        let status = STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK;
        common.write8(DEVICE_STATUS, status);
        if common.read8(DEVICE_STATUS) & STATUS_FEATURES_OK == 0 {
            fail(&common);
            return Err(VirtioPciError::Features(format!(
                "device refused FEATURES_OK with VERSION_1 only (device features high word {high:#x}; \
                 ACCESS_PLATFORM devices need the VFIO mode, which is not implemented)"
            )));
        }
        if common.read16(NUM_QUEUES) < 2 {
            fail(&common);
            return Err(VirtioPciError::Queue {
                queue: EVENT_QUEUE,
                reason: format!("device has {} queues, needs 2", common.read16(NUM_QUEUES)),
            });
        }

        let (requests, mut events) = setup_queue(&common, &notify, &caps, options, REQUEST_QUEUE)
            .and_then(|r| {
                Ok((
                    r,
                    setup_queue(&common, &notify, &caps, options, EVENT_QUEUE)?,
                ))
            })
            .inspect_err(|_| fail(&common))?;

        let config = match &device_cfg {
            Some(cfg) => read_config(&common, cfg)?,
            None => {
                fail(&common);
                return Err(VirtioPciError::Config(
                    "no device configuration capability".into(),
                ));
            }
        };
        let event_size = usize::try_from(config.event_buffer_size)
            .ok()
            .filter(|&n| (1..=dma::PAGE_SIZE).contains(&n))
            .unwrap_or(EVENT_BUFFER_SIZE)
            .max(EVENT_BUFFER_SIZE);
        let posted = EVENT_BUFFERS.min(events.ring.size());
        let event_buf = DmaMemory::new(usize::from(posted) * event_size)?;
        for i in 0..posted {
            let at = usize::from(i) * event_size;
            let segs = event_segments(&event_buf, at, event_size).ok_or_else(|| {
                VirtioPciError::Queue {
                    queue: EVENT_QUEUE,
                    reason: "event buffer translation".into(),
                }
            })?;
            if events.ring.push_chain(i, &segs).is_none() {
                fail(&common);
                return Err(VirtioPciError::Queue {
                    queue: EVENT_QUEUE,
                    reason: "cannot post event buffers".into(),
                });
            }
        }
        let request_buf = DmaMemory::new(MAX_MESSAGE_SIZE)?;
        let reply_buf = DmaMemory::new(MAX_MESSAGE_SIZE)?;

        common.write8(DEVICE_STATUS, status | STATUS_DRIVER_OK);
        events.kick(EVENT_QUEUE);

        let window_file = caps
            .shm0
            .as_ref()
            .filter(|shm| shm.length > 0 && shm.offset == 0)
            .map(|shm| dev.resource_path(shm.bar));
        let window = match caps.shm0 {
            Some(shm) if shm.length > 0 => {
                let size = sizes.get(usize::from(shm.bar)).map_or(0, |s| s.1);
                let len = match config.shm_window_size {
                    0 => shm.length,
                    n => n.min(shm.length),
                };
                Some(dev.map_bar(shm.bar, shm.offset, len, size)?)
            }
            _ => None,
        };

        Ok(VirtioPciTransport {
            common,
            requests,
            events,
            request_buf,
            reply_buf,
            event_buf,
            event_size,
            config,
            window,
            window_file,
            timeout: options.timeout,
            broken: false,
            bdf: dev.bdf().to_owned(),
        })
    }

    /// The device configuration read at setup.
    pub fn config(&self) -> &ConfigSpace {
        &self.config
    }

    /// The device's PCI address.
    pub fn bdf(&self) -> &str {
        &self.bdf
    }

    /// Sets the reply timeout.
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }

    /// Whether the ring pages are still at the physical addresses given to the device.
    pub fn rings_in_place(&self) -> bool {
        self.requests.ring.memory().still_at()
            && self.events.ring.memory().still_at()
            && self.request_buf.still_at()
            && self.reply_buf.still_at()
            && self.event_buf.still_at()
    }

    fn check_device(&mut self) -> Result<(), TransportError> {
        let s = self.common.read8(DEVICE_STATUS);
        if s & (STATUS_NEEDS_RESET | STATUS_FAILED) != 0 || s & STATUS_DRIVER_OK == 0 {
            self.broken = true;
            return Err(TransportError::Protocol(format!(
                "device status {s:#x}: needs reset"
            )));
        }
        Ok(())
    }
}

/// Builds the writable segments of one event buffer.
fn event_segments(mem: &DmaMemory, at: usize, len: usize) -> Option<Vec<Segment>> {
    Some(
        mem.runs(at, len)?
            .into_iter()
            .map(|(addr, len)| Segment {
                addr,
                len,
                writable: true,
            })
            .collect(),
    )
}

fn fail(common: &Mmio) {
    let s = common.read8(DEVICE_STATUS);
    common.write8(DEVICE_STATUS, s | STATUS_FAILED);
}

fn reset(common: &Mmio) -> Result<(), VirtioPciError> {
    common.write8(DEVICE_STATUS, 0);
    let deadline = Instant::now() + Duration::from_secs(5);
    while common.read8(DEVICE_STATUS) != 0 {
        if Instant::now() > deadline {
            return Err(VirtioPciError::ResetTimeout);
        }
        std::thread::sleep(Duration::from_micros(100));
    }
    Ok(())
}

fn setup_queue(
    common: &Mmio,
    notify: &Mmio,
    caps: &VirtioCaps,
    options: &VirtioPciOptions,
    index: u16,
) -> Result<Queue, VirtioPciError> {
    let err = |reason: String| VirtioPciError::Queue {
        queue: index,
        reason,
    };
    common.write16(QUEUE_SELECT, index);
    let max = common.read16(QUEUE_SIZE);
    if max == 0 {
        return Err(err("not available (size 0)".into()));
    }
    // The largest power of two within the device's maximum and ours.
    let limit = max.min(options.max_queue_size).min(queue::MAX_QUEUE_SIZE);
    let size = if limit == 0 {
        0
    } else {
        1u16 << (15 - limit.leading_zeros().min(15))
    };
    let ring = SplitQueue::new(DmaMemory::new(dma::PAGE_SIZE)?, size)
        .ok_or_else(|| err(format!("unusable size {size} (device maximum {max})")))?;
    let (desc, driver, device) = ring
        .addresses()
        .ok_or_else(|| err("ring translation".into()))?;
    common.write16(QUEUE_SIZE, size);
    common.write16(QUEUE_MSIX_VECTOR, NO_VECTOR);
    common.write64_split(QUEUE_DESC, desc);
    common.write64_split(QUEUE_DRIVER, driver);
    common.write64_split(QUEUE_DEVICE, device);
    let notify_off = u64::from(common.read16(QUEUE_NOTIFY_OFF));
    let at = notify_off
        .checked_mul(u64::from(caps.notify_multiplier))
        .filter(|&a| {
            a.checked_add(2)
                .is_some_and(|end| end <= notify.len() as u64)
        })
        .and_then(|a| usize::try_from(a).ok())
        .ok_or_else(|| {
            err(format!(
                "notify offset {notify_off} outside the notify area"
            ))
        })?;
    common.write16(QUEUE_ENABLE, 1);
    Ok(Queue {
        ring,
        notify: notify.clone(),
        notify_at: at,
    })
}

/// Reads the device configuration with the generation check (virtio 1.2 §4.1.4.3.1).
fn read_config(common: &Mmio, cfg: &Mmio) -> Result<ConfigSpace, VirtioPciError> {
    for _ in 0..100 {
        let before = common.read8(CONFIG_GENERATION);
        let mut bytes = [0u8; CONFIG_SPACE_SIZE];
        for (i, chunk) in bytes.chunks_exact_mut(4).enumerate() {
            chunk.copy_from_slice(&cfg.read32(i * 4).to_le_bytes());
        }
        if common.read8(CONFIG_GENERATION) == before {
            return ConfigSpace::from_bytes(&bytes)
                .map_err(|e| VirtioPciError::Config(e.to_string()));
        }
    }
    Err(VirtioPciError::Config(
        "configuration keeps changing".into(),
    ))
}

impl Transport for VirtioPciTransport {
    fn round_trip(&mut self, request: &[u8]) -> Result<(Vec<u8>, Vec<OwnedFd>), TransportError> {
        if self.broken {
            return Err(TransportError::Broken);
        }
        self.check_device()?;
        if request.len() > MAX_MESSAGE_SIZE || request.is_empty() {
            return Err(TransportError::RequestTooLarge {
                len: request.len(),
                max: MAX_MESSAGE_SIZE,
            });
        }
        let proto = |m: &str| TransportError::Protocol(m.to_owned());
        if !self.request_buf.write_bytes(0, request) {
            return Err(proto("request buffer"));
        }
        let reply_len = self.reply_buf.len();
        let mut segs: Vec<Segment> = self
            .request_buf
            .runs(0, request.len())
            .ok_or_else(|| proto("request translation"))?
            .into_iter()
            .map(|(addr, len)| Segment {
                addr,
                len,
                writable: false,
            })
            .collect();
        segs.extend(
            self.reply_buf
                .runs(0, reply_len)
                .ok_or_else(|| proto("reply translation"))?
                .into_iter()
                .map(|(addr, len)| Segment {
                    addr,
                    len,
                    writable: true,
                }),
        );
        let head = self.requests.ring.push_chain(0, &segs).ok_or_else(|| {
            TransportError::Setup(format!(
                "a request needs {} descriptors; the queue has {}",
                segs.len(),
                self.requests.ring.size()
            ))
        })?;
        self.requests.kick(REQUEST_QUEUE);

        let deadline = Instant::now() + self.timeout;
        let mut spins = 0u32;
        let used = loop {
            if let Some(u) = self.requests.ring.pop_used() {
                break u;
            }
            if Instant::now() > deadline {
                self.broken = true;
                return Err(TransportError::Timeout(self.timeout));
            }
            spins = spins.saturating_add(1);
            if spins > 1000 {
                std::thread::sleep(Duration::from_micros(20));
            } else {
                std::hint::spin_loop();
            }
        };
        if used.id != u32::from(head) {
            self.broken = true;
            return Err(TransportError::Protocol(format!(
                "device returned descriptor {} for a chain at {head}",
                used.id
            )));
        }
        let len = used.len as usize;
        if len > reply_len {
            self.broken = true;
            return Err(TransportError::Protocol(format!(
                "device wrote {len} bytes into a {reply_len}-byte reply buffer"
            )));
        }
        let reply = self
            .reply_buf
            .read_bytes(0, len)
            .ok_or_else(|| proto("reply buffer"))?;
        Ok((reply, Vec::new()))
    }

    fn recv_event(&mut self, timeout: Option<Duration>) -> Result<Option<Vec<u8>>, TransportError> {
        if self.broken {
            return Err(TransportError::Broken);
        }
        let deadline = timeout.map(|t| Instant::now() + t);
        let used = loop {
            if let Some(u) = self.events.ring.pop_used() {
                break u;
            }
            if deadline.is_none_or(|d| Instant::now() > d) {
                return Ok(None);
            }
            std::thread::sleep(Duration::from_micros(100));
        };
        let posted = EVENT_BUFFERS.min(self.events.ring.size());
        let slot = u16::try_from(used.id)
            .ok()
            .filter(|&s| s < posted)
            .ok_or_else(|| {
                self.broken = true;
                TransportError::Protocol(format!("event on unknown descriptor {}", used.id))
            })?;
        let len = (used.len as usize).min(self.event_size);
        let at = usize::from(slot) * self.event_size;
        let bytes = self.event_buf.read_bytes(at, len).unwrap_or_default();
        // Hand the buffer back to the device (its descriptor is unchanged).
        self.events.ring.make_available(slot);
        self.events.kick(EVENT_QUEUE);
        Ok(Some(bytes))
    }

    fn window(&self) -> Option<Arc<MappedRegion>> {
        self.window.clone()
    }

    fn window_size(&self) -> Option<u64> {
        self.window.as_ref().map(|w| w.len() as u64)
    }

    fn window_fd(&self) -> Option<OwnedFd> {
        self.window.as_ref()?;
        let path = self.window_file.as_ref()?;
        match std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
        {
            Ok(f) => Some(f.into()),
            Err(e) => {
                log::warn!("{}: cannot open {}: {e}", self.bdf, path.display());
                None
            }
        }
    }
}

impl Drop for VirtioPciTransport {
    fn drop(&mut self) {
        // Reset so the device stops using the rings before their memory is unmapped.
        self.common.write8(DEVICE_STATUS, 0);
        let deadline = Instant::now() + Duration::from_secs(1);
        while self.common.read8(DEVICE_STATUS) != 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_micros(100));
        }
        if self.common.read8(DEVICE_STATUS) != 0 {
            // The device may still write into these pages: never give them back.
            log::error!("{}: device did not reset; leaking its DMA memory", self.bdf);
            self.requests.ring.memory_mut().leak();
            self.events.ring.memory_mut().leak();
            self.request_buf.leak();
            self.reply_buf.leak();
            self.event_buf.leak();
        }
    }
}
