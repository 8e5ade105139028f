//! The VMM side: what QEMU does for a vhost-user device, in process.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bufbroker_guest::MappedRegion;
use rustix::event::{PollFd, PollFlags, Timespec, poll};
use rustix::fs::MemfdFlags;
use rustix::mm::{MapFlags, ProtFlags};
use uuid::Uuid;
use vhost::vhost_user::message::{
    VhostUserConfigFlags, VhostUserHeaderFlag, VhostUserMMap, VhostUserMMapFlags,
    VhostUserProtocolFeatures, VhostUserSharedMsg, VhostUserVirtioFeatures,
};
use vhost::vhost_user::{
    Frontend, FrontendReqHandler, HandlerResult, VhostUserFrontend, VhostUserFrontendReqHandler,
};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use crate::memory::{Mem, memfd_guest_memory};
use crate::ring::{Buf, SplitRing, ring_bytes};
use crate::{Context, HarnessError, Result};

/// Harness VMM options.
#[derive(Debug, Clone)]
pub struct VmmOptions {
    /// Negotiate VIRTIO_RING_F_EVENT_IDX.
    pub event_idx: bool,
    /// Entries per queue.
    pub queue_size: u16,
    /// Bytes of guest RAM.
    pub mem_size: usize,
}

impl Default for VmmOptions {
    fn default() -> Self {
        VmmOptions {
            event_idx: true,
            queue_size: 256,
            mem_size: 32 << 20,
        }
    }
}

/// One request of the backend channel, as the VMM saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChannelEvent {
    /// SHMEM_MAP (already mapped into the window when recorded).
    ShmemMap {
        /// Region id.
        shmid: u8,
        /// Offset in the file.
        fd_offset: u64,
        /// Offset in the window.
        shm_offset: u64,
        /// Length.
        len: u64,
        /// Writable mapping.
        writable: bool,
    },
    /// SHMEM_UNMAP.
    ShmemUnmap {
        /// Offset in the window.
        shm_offset: u64,
        /// Length.
        len: u64,
    },
    /// SHARED_OBJECT_ADD.
    SharedObjectAdd(Uuid),
    /// SHARED_OBJECT_REMOVE.
    SharedObjectRemove(Uuid),
}

/// The VMM's shared-memory window: an address range reserved at connection, into which
/// SHMEM_MAP maps files (as QEMU maps them into the device's BAR). The reservation is a
/// [`MappedRegion`] so that a guest-library transport can hand the same mapping to
/// `Client::map` (as the userspace driver hands out its mapping of the BAR); it stays mapped
/// while any clone of the `Arc` lives.
#[derive(Debug)]
struct Window {
    region: Arc<MappedRegion>,
}

impl Window {
    fn reserve(size: usize) -> Result<Option<Window>> {
        if size == 0 {
            return Ok(None);
        }
        // `MappedRegion` only maps files: map a sparse memfd of the window's size (nothing is
        // allocated until touched), then turn the whole range into PROT_NONE so that what is
        // not mapped by SHMEM_MAP is inaccessible, as before.
        let fd = rustix::fs::memfd_create("bufbroker-harness-window", MemfdFlags::CLOEXEC)
            .context("memfd for the window")?;
        rustix::fs::ftruncate(&fd, size as u64).context("sizing the window memfd")?;
        let region =
            MappedRegion::map_fd(fd.as_fd(), size, true).context("reserving the window")?;
        // SAFETY: the range is exactly the mapping just made, which nothing else uses yet;
        // MAP_FIXED replaces it in place, so the region's later munmap covers it.
        unsafe {
            rustix::mm::mmap_anonymous(
                region.as_ptr().cast(),
                size,
                ProtFlags::empty(),
                MapFlags::PRIVATE | MapFlags::FIXED | MapFlags::NORESERVE,
            )
        }
        .context("reserving the window")?;
        Ok(Some(Window {
            region: Arc::new(region),
        }))
    }

    fn range(&self, offset: u64, len: u64) -> std::io::Result<(usize, usize)> {
        let bad = || std::io::Error::from(std::io::ErrorKind::InvalidInput);
        let offset = usize::try_from(offset).map_err(|_| bad())?;
        let len = usize::try_from(len).map_err(|_| bad())?;
        if len == 0
            || offset
                .checked_add(len)
                .is_none_or(|end| end > self.region.len())
            || offset % 4096 != 0
        {
            return Err(bad());
        }
        Ok((self.region.as_ptr() as usize + offset, len))
    }

    fn map(&self, req: &VhostUserMMap, fd: BorrowedFd<'_>) -> std::io::Result<()> {
        let (addr, len) = self.range(req.shm_offset, req.len)?;
        let writable = req.flags & VhostUserMMapFlags::WRITABLE.bits() != 0;
        let prot = if writable {
            ProtFlags::READ | ProtFlags::WRITE
        } else {
            ProtFlags::READ
        };
        // SAFETY: [addr, addr+len) lies inside our own reservation (checked by `range`), into
        // which nothing else maps; its other users (`window_region`) only copy through raw
        // pointers, never hold references into it; MAP_FIXED replaces only that part of it.
        unsafe {
            rustix::mm::mmap(
                addr as *mut _,
                len,
                prot,
                MapFlags::SHARED | MapFlags::FIXED,
                fd,
                req.fd_offset,
            )
        }?;
        Ok(())
    }

    fn unmap(&self, req: &VhostUserMMap) -> std::io::Result<()> {
        let (addr, len) = self.range(req.shm_offset, req.len)?;
        // SAFETY: as in `map`: the range is inside our reservation; it goes back to PROT_NONE.
        unsafe {
            rustix::mm::mmap_anonymous(
                addr as *mut _,
                len,
                ProtFlags::empty(),
                MapFlags::PRIVATE | MapFlags::FIXED | MapFlags::NORESERVE,
            )
        }?;
        Ok(())
    }

    fn read(&self, offset: u64, len: u64) -> std::io::Result<Vec<u8>> {
        let (addr, len) = self.range(offset, len)?;
        let mut out = vec![0u8; len];
        // SAFETY: the caller asks only for ranges it saw mapped (SHMEM_MAP recorded), readable
        // for `len` bytes inside our reservation; copying from shared memory another process
        // may write is a plain byte copy.
        unsafe { std::ptr::copy_nonoverlapping(addr as *const u8, out.as_mut_ptr(), len) };
        Ok(out)
    }
}

/// The VMM end of the backend channel: records every request, maps windows, acks.
#[derive(Debug, Default)]
pub struct ChannelLog {
    events: Mutex<Vec<ChannelEvent>>,
    changed: Condvar,
    window: Mutex<Option<Window>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl ChannelLog {
    /// Everything recorded so far.
    pub fn events(&self) -> Vec<ChannelEvent> {
        lock(&self.events).clone()
    }

    /// Waits until `pred` holds for the recorded events, or `timeout`.
    pub fn wait_for(&self, timeout: Duration, pred: impl Fn(&[ChannelEvent]) -> bool) -> bool {
        let events = lock(&self.events);
        let (events, _) = self
            .changed
            .wait_timeout_while(events, timeout, |e| !pred(e))
            .unwrap_or_else(PoisonError::into_inner);
        pred(&events)
    }

    fn record(&self, e: ChannelEvent) {
        lock(&self.events).push(e);
        self.changed.notify_all();
    }

    /// Bytes of the window as the VMM sees them (after a SHMEM_MAP of that range).
    pub fn read_window(&self, offset: u64, len: u64) -> Result<Vec<u8>> {
        lock(&self.window)
            .as_ref()
            .ok_or_else(|| HarnessError("the device has no window".into()))?
            .read(offset, len)
            .context("reading the window")
    }

    /// The window reservation itself (`None` when the device has no window): the mapping a
    /// guest library reaches host-window buffers through. Ranges the device did not map (or
    /// unmapped again) are `PROT_NONE`: touching them faults, as on a BAR hole.
    pub fn window_region(&self) -> Option<Arc<MappedRegion>> {
        lock(&self.window).as_ref().map(|w| w.region.clone())
    }
}

impl VhostUserFrontendReqHandler for ChannelLog {
    fn shmem_map(&self, req: &VhostUserMMap, fd: &dyn AsRawFd) -> HandlerResult<u64> {
        // SAFETY: `fd` is the descriptor that came with the message, open for this call.
        let fd = unsafe { BorrowedFd::borrow_raw(fd.as_raw_fd()) };
        lock(&self.window)
            .as_ref()
            .ok_or_else(|| std::io::Error::other("no window"))?
            .map(req, fd)?;
        self.record(ChannelEvent::ShmemMap {
            shmid: req.shmid,
            fd_offset: req.fd_offset,
            shm_offset: req.shm_offset,
            len: req.len,
            writable: req.flags & VhostUserMMapFlags::WRITABLE.bits() != 0,
        });
        Ok(0)
    }

    fn shmem_unmap(&self, req: &VhostUserMMap) -> HandlerResult<u64> {
        lock(&self.window)
            .as_ref()
            .ok_or_else(|| std::io::Error::other("no window"))?
            .unmap(req)?;
        self.record(ChannelEvent::ShmemUnmap {
            shm_offset: req.shm_offset,
            len: req.len,
        });
        Ok(0)
    }

    fn shared_object_add(&self, msg: &VhostUserSharedMsg) -> HandlerResult<u64> {
        self.record(ChannelEvent::SharedObjectAdd(msg.uuid));
        Ok(0)
    }

    fn shared_object_remove(&self, msg: &VhostUserSharedMsg) -> HandlerResult<u64> {
        self.record(ChannelEvent::SharedObjectRemove(msg.uuid));
        Ok(0)
    }
}

/// The thread serving the backend channel.
struct ChannelServer {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl ChannelServer {
    fn start(mut handler: FrontendReqHandler<ChannelLog>) -> Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let stop_thread = stop.clone();
        let thread = std::thread::Builder::new()
            .name("vmm-backend-channel".into())
            .spawn(move || {
                let tick = Timespec {
                    tv_sec: 0,
                    tv_nsec: 20_000_000,
                };
                while !stop_thread.load(Ordering::Relaxed) {
                    // SAFETY: the handler owns this socket for the whole loop.
                    let fd = unsafe { BorrowedFd::borrow_raw(handler.as_raw_fd()) };
                    let mut fds = [PollFd::new(&fd, PollFlags::IN)];
                    match poll(&mut fds, Some(&tick)) {
                        Ok(0) | Err(rustix::io::Errno::INTR) => continue,
                        Ok(_) => {
                            if handler.handle_request().is_err() {
                                break; // the backend closed the channel
                            }
                        }
                        Err(_) => break,
                    }
                }
            })
            .context("spawning the backend-channel thread")?;
        Ok(ChannelServer {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for ChannelServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Where the rings of queue `q` live; data slots follow.
const RING_AREA: u64 = 0x1_0000;
/// Start of the data slots.
const DATA_BASE: u64 = 0x10_0000;
/// Bytes per data slot: a request area and a reply area of half that each.
pub const SLOT_SIZE: u64 = 192 << 10;
/// Where event-queue buffers live (below the data slots): [`EVENT_BUFFERS`] of
/// [`EVENT_BUFFER_BYTES`].
const EVENT_AREA: u64 = 0x8_0000;
/// Bytes per event buffer.
pub const EVENT_BUFFER_BYTES: u32 = 4096;
/// Event buffers the harness can post at once.
pub const EVENT_BUFFERS: usize = 128;

/// A connected VMM with a guest driver: see the crate docs.
pub struct Vmm {
    frontend: Frontend,
    mem: Mem,
    options: VmmOptions,
    rings: Vec<SplitRing>,
    kick: Vec<EventFd>,
    call: Vec<EventFd>,
    /// The backend channel's log.
    pub channel: Arc<ChannelLog>,
    _channel_server: ChannelServer,
    features: u64,
    shmem_size: u64,
    free_slots: Vec<u64>,
    slot_of: Vec<Option<u64>>,
    /// The event buffer of each outstanding event-queue chain, by head.
    event_of: Vec<Option<u64>>,
}

/// Queue count of the device.
pub const NUM_QUEUES: usize = 2;

impl Vmm {
    /// Connects and negotiates in QEMU 11.1's order (GET_FEATURES, GET/SET_PROTOCOL_FEATURES,
    /// GET_QUEUE_NUM, SET_BACKEND_REQ_FD, SET_OWNER, GET_SHMEM_CONFIG); the device is not
    /// started yet ([`Vmm::start`]).
    pub fn connect(socket: &Path, options: VmmOptions) -> Result<Vmm> {
        let mut fe = Frontend::connect(socket, NUM_QUEUES as u64).context("connecting")?;
        let offered = fe.get_features().context("GET_FEATURES")?;
        let mut want =
            (1u64 << VIRTIO_F_VERSION_1) | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();
        if options.event_idx {
            want |= 1 << VIRTIO_RING_F_EVENT_IDX;
        }
        if offered & want != want {
            return Err(HarnessError(format!(
                "the device offers {offered:#x}, the harness needs {want:#x}"
            )));
        }
        let proto = fe
            .get_protocol_features()
            .context("GET_PROTOCOL_FEATURES")?
            & (VhostUserProtocolFeatures::MQ
                | VhostUserProtocolFeatures::REPLY_ACK
                | VhostUserProtocolFeatures::CONFIG
                | VhostUserProtocolFeatures::BACKEND_REQ
                | VhostUserProtocolFeatures::BACKEND_SEND_FD
                | VhostUserProtocolFeatures::SHARED_OBJECT
                | VhostUserProtocolFeatures::SHMEM);
        fe.set_protocol_features(proto)
            .context("SET_PROTOCOL_FEATURES")?;
        if proto.contains(VhostUserProtocolFeatures::REPLY_ACK) {
            fe.set_hdr_flags(VhostUserHeaderFlag::NEED_REPLY);
        }
        let queues = fe.get_queue_num().context("GET_QUEUE_NUM")?;
        if queues < NUM_QUEUES as u64 {
            return Err(HarnessError(format!("the device has {queues} queues")));
        }
        let channel = Arc::new(ChannelLog::default());
        let mut handler = FrontendReqHandler::new(channel.clone()).context("backend channel")?;
        handler.set_reply_ack_flag(proto.contains(VhostUserProtocolFeatures::REPLY_ACK));
        fe.set_backend_request_fd(&handler.get_tx_raw_fd())
            .context("SET_BACKEND_REQ_FD")?;
        let channel_server = ChannelServer::start(handler)?;
        fe.set_owner().context("SET_OWNER")?;
        let shmem = fe.get_shmem_config().context("GET_SHMEM_CONFIG")?;
        let shmem_size = if shmem.nregions > 0 {
            shmem.memory_sizes.first().copied().unwrap_or(0)
        } else {
            0
        };
        *lock(&channel.window) =
            Window::reserve(usize::try_from(shmem_size).context("window size")?)?;
        let mem = memfd_guest_memory(options.mem_size)?;
        let slots = (options.mem_size as u64).saturating_sub(DATA_BASE) / SLOT_SIZE;
        Ok(Vmm {
            frontend: fe,
            mem,
            rings: Vec::new(),
            kick: Vec::new(),
            call: Vec::new(),
            channel,
            _channel_server: channel_server,
            features: offered & want,
            shmem_size,
            free_slots: (0..slots)
                .rev()
                .map(|i| DATA_BASE + i * SLOT_SIZE)
                .collect(),
            slot_of: vec![None; usize::from(options.queue_size)],
            event_of: vec![None; usize::from(options.queue_size)],
            options,
        })
    }

    /// Connects and starts the device.
    pub fn connect_and_start(socket: &Path, options: VmmOptions) -> Result<Vmm> {
        let mut vmm = Vmm::connect(socket, options)?;
        vmm.start()?;
        Ok(vmm)
    }

    /// The size of shared-memory region 0 the device advertised.
    pub fn shmem_size(&self) -> u64 {
        self.shmem_size
    }

    /// Guest RAM.
    pub fn memory(&self) -> &Mem {
        &self.mem
    }

    /// The device's config space (GET_CONFIG).
    pub fn config_space(&mut self, len: u32) -> Result<Vec<u8>> {
        let buf = vec![0u8; len as usize];
        let (_, payload) = self
            .frontend
            .get_config(0, len, VhostUserConfigFlags::WRITABLE, &buf)
            .context("GET_CONFIG")?;
        Ok(payload.to_vec())
    }

    /// The guest starts the device: SET_FEATURES, SET_MEM_TABLE, each ring's
    /// NUM/ADDR/BASE/CALL/KICK and SET_VRING_ENABLE(1). Also after a [`Vmm::reset`].
    pub fn start(&mut self) -> Result<()> {
        let fe = &mut self.frontend;
        fe.set_features(self.features).context("SET_FEATURES")?;
        let regions = self
            .mem
            .iter()
            .map(VhostUserMemoryRegionInfo::from_guest_region)
            .collect::<std::result::Result<Vec<_>, _>>()
            .context("memory regions")?;
        fe.set_mem_table(&regions).context("SET_MEM_TABLE")?;
        self.rings.clear();
        self.kick.clear();
        self.call.clear();
        for q in 0..NUM_QUEUES {
            let base =
                RING_AREA + q as u64 * ring_bytes(self.options.queue_size).next_multiple_of(4096);
            let ring = SplitRing::new(
                &self.mem,
                base,
                self.options.queue_size,
                self.options.event_idx,
            )?;
            fe.set_vring_num(q, self.options.queue_size)
                .context("SET_VRING_NUM")?;
            fe.set_vring_addr(q, &ring.vring_config(&self.mem)?)
                .context("SET_VRING_ADDR")?;
            fe.set_vring_base(q, 0).context("SET_VRING_BASE")?;
            let call = EventFd::new(EFD_NONBLOCK).context("eventfd")?;
            let kick = EventFd::new(0).context("eventfd")?;
            fe.set_vring_call(q, &call).context("SET_VRING_CALL")?;
            fe.set_vring_kick(q, &kick).context("SET_VRING_KICK")?;
            fe.set_vring_enable(q, true).context("SET_VRING_ENABLE")?;
            self.rings.push(ring);
            self.kick.push(kick);
            self.call.push(call);
        }
        let slots = (self.options.mem_size as u64).saturating_sub(DATA_BASE) / SLOT_SIZE;
        self.free_slots = (0..slots)
            .rev()
            .map(|i| DATA_BASE + i * SLOT_SIZE)
            .collect();
        self.slot_of = vec![None; usize::from(self.options.queue_size)];
        self.event_of = vec![None; usize::from(self.options.queue_size)];
        Ok(())
    }

    /// What QEMU does at guest reset or power-off: SET_VRING_ENABLE(0) and GET_VRING_BASE on
    /// every queue.
    pub fn reset(&mut self) -> Result<()> {
        for q in 0..NUM_QUEUES {
            self.frontend
                .set_vring_enable(q, false)
                .context("SET_VRING_ENABLE(0)")?;
        }
        for q in 0..NUM_QUEUES {
            self.frontend.get_vring_base(q).context("GET_VRING_BASE")?;
        }
        Ok(())
    }

    /// GET_SHARED_OBJECT for `uuid` (the payload-less QEMU variant cannot be sent through
    /// `Frontend`: `tests/tests/shared_object.rs` sends it on a raw socket).
    pub fn get_shared_object(&mut self, uuid: Uuid) -> Result<std::fs::File> {
        self.frontend
            .get_shared_object(&VhostUserSharedMsg { uuid })
            .context("GET_SHARED_OBJECT")
    }

    fn ring(&mut self, q: usize) -> Result<&mut SplitRing> {
        self.rings
            .get_mut(q)
            .ok_or_else(|| HarnessError(format!("queue {q} is not set up (start the device)")))
    }

    /// Publishes a raw chain on queue `q` without kicking.
    pub fn add_raw(&mut self, q: usize, bufs: &[Buf]) -> Result<u16> {
        let mem = self.mem.clone();
        self.ring(q)?.add_chain(&mem, bufs)
    }

    /// Kicks queue `q` if the device asked for it.
    pub fn kick(&mut self, q: usize) -> Result<()> {
        let mem = self.mem.clone();
        if self.ring(q)?.needs_kick(&mem)? {
            self.kick
                .get(q)
                .ok_or_else(|| HarnessError("no kick fd".into()))?
                .write(1)
                .context("kick")?;
        }
        Ok(())
    }

    /// Posts `request` (one readable descriptor, split in `split` parts when given) and a
    /// writable reply area of `reply_capacity` bytes on the request queue; returns the head.
    pub fn submit(&mut self, request: &[u8], reply_capacity: u32) -> Result<u16> {
        let half = SLOT_SIZE / 2;
        if request.len() as u64 > half || u64::from(reply_capacity) > half {
            return Err(HarnessError(format!(
                "a slot holds at most {half} bytes each way"
            )));
        }
        let slot = self
            .free_slots
            .pop()
            .ok_or_else(|| HarnessError("no free data slot".into()))?;
        self.mem
            .write_slice(request, GuestAddress(slot))
            .context("writing the request")?;
        let mut bufs = Vec::with_capacity(2);
        if !request.is_empty() {
            bufs.push(Buf {
                addr: slot,
                len: u32::try_from(request.len()).context("request length")?,
                writable: false,
            });
        }
        if reply_capacity > 0 {
            bufs.push(Buf {
                addr: slot + half,
                len: reply_capacity,
                writable: true,
            });
        }
        let head = match self.add_raw(0, &bufs) {
            Ok(h) => h,
            Err(e) => {
                self.free_slots.push(slot);
                return Err(e);
            }
        };
        if let Some(s) = self.slot_of.get_mut(usize::from(head)) {
            *s = Some(slot);
        }
        Ok(head)
    }

    /// Waits up to `timeout` for the used element of any chain on queue `q`; returns its head
    /// and the reply bytes (from the data slot, for chains made by [`Vmm::submit`]).
    pub fn wait_used(&mut self, q: usize, timeout: Duration) -> Result<(u16, Vec<u8>)> {
        self.poll_used(q, timeout)?
            .ok_or_else(|| HarnessError(format!("no used element on queue {q} within {timeout:?}")))
    }

    /// As [`Vmm::wait_used`], but `Ok(None)` when nothing was used within `timeout` (zero:
    /// only what is already there).
    pub fn poll_used(&mut self, q: usize, timeout: Duration) -> Result<Option<(u16, Vec<u8>)>> {
        let deadline = Instant::now() + timeout;
        loop {
            let mem = self.mem.clone();
            if let Some((head, len)) = self.ring(q)?.pop_used(&mem)? {
                let slot = self
                    .slot_of
                    .get_mut(usize::from(head))
                    .and_then(Option::take);
                let mut reply = vec![0u8; len as usize];
                if let Some(slot) = slot {
                    self.free_slots.push(slot);
                    if u64::from(len) > SLOT_SIZE / 2 {
                        return Err(HarnessError(format!(
                            "the device used {len} bytes of a {}-byte reply area",
                            SLOT_SIZE / 2
                        )));
                    }
                    self.mem
                        .read_slice(&mut reply, GuestAddress(slot + SLOT_SIZE / 2))
                        .context("reading the reply")?;
                }
                return Ok(Some((head, reply)));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(None);
            }
            self.wait_call(q, left)?;
        }
    }

    /// Posts `n` writable buffers of [`EVENT_BUFFER_BYTES`] on the event queue (1) and kicks
    /// it.
    pub fn post_event_buffers(&mut self, n: usize) -> Result<()> {
        for _ in 0..n {
            let used: Vec<u64> = self.event_of.iter().flatten().copied().collect();
            let addr = (0..EVENT_BUFFERS as u64)
                .map(|i| EVENT_AREA + i * u64::from(EVENT_BUFFER_BYTES))
                .find(|a| !used.contains(a))
                .ok_or_else(|| HarnessError("every event buffer is posted".into()))?;
            let head = self.add_raw(
                1,
                &[Buf {
                    addr,
                    len: EVENT_BUFFER_BYTES,
                    writable: true,
                }],
            )?;
            if let Some(e) = self.event_of.get_mut(usize::from(head)) {
                *e = Some(addr);
            }
        }
        self.kick(1)
    }

    /// Waits up to `timeout` for the device to fill an event buffer; returns its bytes.
    pub fn wait_event(&mut self, timeout: Duration) -> Result<Vec<u8>> {
        self.poll_event(timeout)?
            .ok_or_else(|| HarnessError(format!("no event within {timeout:?}")))
    }

    /// As [`Vmm::wait_event`], but `Ok(None)` when no event came within `timeout` (zero: only
    /// what is already there). The buffer is not posted again ([`Vmm::post_event_buffers`]).
    pub fn poll_event(&mut self, timeout: Duration) -> Result<Option<Vec<u8>>> {
        let deadline = Instant::now() + timeout;
        loop {
            let mem = self.mem.clone();
            if let Some((head, len)) = self.ring(1)?.pop_used(&mem)? {
                let addr = self
                    .event_of
                    .get_mut(usize::from(head))
                    .and_then(Option::take)
                    .ok_or_else(|| HarnessError(format!("event head {head} was not posted")))?;
                if len > EVENT_BUFFER_BYTES {
                    return Err(HarnessError(format!(
                        "the device used {len} bytes of a {EVENT_BUFFER_BYTES}-byte event buffer"
                    )));
                }
                let mut event = vec![0u8; len as usize];
                self.mem
                    .read_slice(&mut event, GuestAddress(addr))
                    .context("reading an event")?;
                return Ok(Some(event));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(None);
            }
            self.wait_call(1, left)?;
        }
    }

    /// One request, one reply (1 in flight).
    pub fn request(&mut self, request: &[u8], reply_capacity: u32) -> Result<Vec<u8>> {
        let head = self.submit(request, reply_capacity)?;
        self.kick(0)?;
        let (used, reply) = self.wait_used(0, Duration::from_secs(5))?;
        if used != head {
            return Err(HarnessError(format!("expected head {head}, got {used}")));
        }
        Ok(reply)
    }

    fn wait_call(&self, q: usize, timeout: Duration) -> Result<()> {
        let call = self
            .call
            .get(q)
            .ok_or_else(|| HarnessError("no call fd".into()))?;
        // SAFETY: the eventfd is owned by `self` and outlives this borrow.
        let fd = unsafe { BorrowedFd::borrow_raw(call.as_raw_fd()) };
        let mut fds = [PollFd::new(&fd, PollFlags::IN)];
        let ts = Timespec {
            tv_sec: i64::try_from(timeout.as_secs()).unwrap_or(i64::MAX),
            tv_nsec: i64::from(timeout.subsec_nanos()),
        };
        match poll(&mut fds, Some(&ts)) {
            Ok(_) | Err(rustix::io::Errno::INTR) => {
                let _ = call.read();
                Ok(())
            }
            Err(e) => Err(HarnessError::new("waiting for an interrupt", e)),
        }
    }

    /// The raw fd of the vhost-user socket (for tests that inspect it).
    pub fn socket_fd(&self) -> BorrowedFd<'_> {
        // SAFETY: the socket is owned by the frontend, which `self` owns.
        unsafe { BorrowedFd::borrow_raw(self.frontend.as_raw_fd()) }
    }
}

/// A descriptor that names guest memory that does not exist.
pub fn buf_outside_memory(mem: &Mem, len: u32, writable: bool) -> Buf {
    let end = mem.last_addr().0 + 1;
    Buf {
        addr: end + (1 << 30),
        len,
        writable,
    }
}
