//! [`VhostExposure`]: the vhost-user device's [`GuestExposure`].
//!
//! Backend-channel requests (SHMEM_MAP/UNMAP, SHARED_OBJECT_ADD/REMOVE) block until the VMM
//! acks them, and the VMM may need the main socket served before it can (QEMU sends a new
//! SET_MEM_TABLE after every map; measured: sending SHMEM_MAP from the thread that serves
//! QEMU's requests deadlocks QEMU). So every such request runs on one dedicated thread per
//! connection, the *exposure thread*; callers on other threads wait for its answer. The
//! handler's teardown runs there too, so a teardown started by a QEMU request never blocks
//! QEMU's request thread.
//!
//! Maps and shared objects are sent only while the device is started (a ring was kicked since
//! the last reset): QEMU 11.1 crashes on a SHMEM_MAP before the guest starts the device.
//! Unmaps are not sent while it is stopped either. Measured with QEMU 11.1.3
//! (`tests/e2e/qemu-scenarios.sh`, scenario e: a guest process holding buffers exits and its
//! driver resets the device): QEMU removes the device's mappings itself when the guest resets
//! it (a SHMEM_UNMAP sent after the device is started again gets "Shared memory mapping not
//! found"), and a SHMEM_UNMAP that arrives while the device is stopped makes QEMU segfault.
//! So an unmap while stopped only releases the range here.
//! Mapped ranges are tracked in a [`WindowAllocator`] so two mappings never overlap.

use std::collections::VecDeque;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::mpsc::{self, Sender};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::{JoinHandle, ThreadId};
use std::time::Duration;

use uuid::Uuid;
use vhost::vhost_user::message::{VhostUserMMap, VhostUserMMapFlags, VhostUserSharedMsg};
use vhost::vhost_user::{Backend, VhostUserFrontendReqHandler};
use vhost_user_backend::{VringRwLock, VringT};
use virtio_queue::QueueT;
use vm_memory::{
    GuestAddressSpace, GuestMemoryAtomic, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion,
};

use super::window::{WindowAllocator, WindowRange};
use crate::exposure::{ExposureError, GuestExposure, GuestRegion};

type Job = Box<dyn FnOnce(&Shared) + Send>;

/// Events held for a driver that has not posted event buffers; older ones are dropped (and
/// counted) beyond this.
pub const MAX_PENDING_EVENTS: usize = 64;

/// Counters of the event queue.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EventStats {
    /// Events written into driver buffers.
    pub delivered: u64,
    /// Events waiting for a buffer.
    pub pending: usize,
    /// Events dropped: too many held, a buffer too small, a reset, a broken ring.
    pub dropped: u64,
}

/// The event queue's state: the vring (known once the device saw a kick), events waiting for
/// buffers, counters.
#[derive(Default)]
struct EventQueue {
    vring: Option<VringRwLock>,
    pending: VecDeque<Vec<u8>>,
    delivered: u64,
    dropped: u64,
}

impl EventQueue {
    fn stats(&self) -> EventStats {
        EventStats {
            delivered: self.delivered,
            pending: self.pending.len(),
            dropped: self.dropped,
        }
    }

    /// Writes held events into posted buffers, oldest first, until either runs out; signals
    /// the driver if it asked. Bounded: at most one chain per held event.
    fn flush(&mut self, mem: &GuestMemoryAtomic<GuestMemoryMmap>) {
        let Some(vring) = self.vring.clone() else {
            return;
        };
        let mut used_any = false;
        while let Some(event) = self.pending.front() {
            // Pop in a statement of its own: `add_used` takes the ring's lock.
            let chain = vring
                .get_mut()
                .get_queue_mut()
                .pop_descriptor_chain(mem.memory());
            let Some(chain) = chain else { break };
            let head = chain.head_index();
            let written = write_event(chain, event);
            if written == 0 {
                self.dropped = self.dropped.saturating_add(1);
            } else {
                self.delivered = self.delivered.saturating_add(1);
            }
            self.pending.pop_front();
            if let Err(e) = vring.add_used(head, written) {
                log::warn!("event queue: cannot return chain {head}: {e}");
                return;
            }
            used_any = true;
        }
        if used_any && vring.needs_notification().unwrap_or(true) {
            if let Err(e) = vring.signal_used_queue() {
                log::debug!("event queue: cannot signal the driver: {e}");
            }
        }
    }
}

/// Writes `event` into the writable part of `chain`; returns the bytes written (0 when the
/// chain is unusable or too small: the event is not cut).
fn write_event(
    chain: virtio_queue::DescriptorChain<vm_memory::GuestMemoryLoadGuard<GuestMemoryMmap>>,
    event: &[u8],
) -> u32 {
    use std::io::Write;
    let mem = chain.memory();
    match chain.clone().writer(mem) {
        Ok(mut w) if w.available_bytes() >= event.len() => match w.write_all(event) {
            Ok(()) => u32::try_from(event.len()).unwrap_or(0),
            Err(_) => 0,
        },
        _ => 0,
    }
}

/// How long a map waits for the guest to start the device before failing with
/// [`ExposureError::NotStarted`].
pub const START_TIMEOUT: Duration = Duration::from_secs(5);

/// The exposure of one guest connection. See the module docs.
pub struct VhostExposure {
    shared: Arc<Shared>,
    jobs: Mutex<Option<Sender<Job>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
    thread_id: ThreadId,
}

struct Shared {
    name: String,
    mem: GuestMemoryAtomic<GuestMemoryMmap>,
    events: Mutex<EventQueue>,
    /// Notified whenever [`EventStats`] change.
    events_changed: Condvar,
    channel: Mutex<Option<Backend>>,
    state: Mutex<State>,
    state_changed: Condvar,
    window: Mutex<WindowAllocator>,
    window_size: u64,
}

#[derive(Debug, Default)]
struct State {
    started: bool,
    closed: bool,
    /// Requests blocked in `wait_started`.
    waiting_for_start: usize,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section here leaves the data consistent, so a panic elsewhere does not
    // make it unusable.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl VhostExposure {
    /// The exposure of a device with a window of `window_size` bytes whose guest memory table
    /// is `mem` (the daemon's). Starts the exposure thread.
    pub fn new(
        name: &str,
        window_size: u64,
        mem: GuestMemoryAtomic<GuestMemoryMmap>,
    ) -> std::io::Result<Arc<Self>> {
        let shared = Arc::new(Shared {
            name: name.to_owned(),
            mem,
            events: Mutex::new(EventQueue::default()),
            events_changed: Condvar::new(),
            channel: Mutex::new(None),
            state: Mutex::new(State::default()),
            state_changed: Condvar::new(),
            window: Mutex::new(WindowAllocator::new(window_size)),
            window_size,
        });
        let (tx, rx) = mpsc::channel::<Job>();
        let worker_shared = shared.clone();
        let thread = std::thread::Builder::new()
            .name(format!("{name}-expose"))
            .spawn(move || {
                for job in rx {
                    job(&worker_shared);
                }
            })?;
        Ok(Arc::new(VhostExposure {
            shared,
            jobs: Mutex::new(Some(tx)),
            thread_id: thread.thread().id(),
            thread: Mutex::new(Some(thread)),
        }))
    }

    /// The backend channel arrived (SET_BACKEND_REQ_FD).
    pub fn set_channel(&self, backend: Backend) {
        *lock(&self.shared.channel) = Some(backend);
    }

    /// Marks the device started (a ring was kicked) or stopped (reset). Returns the previous
    /// state. Stopping drops events held for the old session.
    pub fn set_started(&self, started: bool) -> bool {
        let mut state = lock(&self.shared.state);
        let was = std::mem::replace(&mut state.started, started);
        self.shared.state_changed.notify_all();
        drop(state);
        if !started {
            let mut events = lock(&self.shared.events);
            let stale = events.pending.len() as u64;
            events.pending.clear();
            events.dropped = events.dropped.saturating_add(stale);
            self.shared.events_changed.notify_all();
        }
        was
    }

    /// The device's event queue (queue 1): where [`GuestExposure::send_event`] writes. Called
    /// by the device whenever a queue is kicked; held events go into buffers the driver
    /// posted.
    pub fn event_queue(&self, vring: &VringRwLock) {
        let mut events = lock(&self.shared.events);
        if events.vring.is_none() {
            events.vring = Some(vring.clone());
        }
        events.flush(&self.shared.mem);
        self.shared.events_changed.notify_all();
    }

    /// Events delivered, held and dropped so far.
    pub fn event_stats(&self) -> EventStats {
        lock(&self.shared.events).stats()
    }

    /// Waits until `pred` holds of the event counters (checked now and after every change),
    /// or `timeout` passed; returns whether it holds.
    pub fn wait_event_stats(&self, timeout: Duration, pred: impl Fn(&EventStats) -> bool) -> bool {
        let events = lock(&self.shared.events);
        let (events, _) = self
            .shared
            .events_changed
            .wait_timeout_while(events, timeout, |e| !pred(&e.stats()))
            .unwrap_or_else(PoisonError::into_inner);
        pred(&events.stats())
    }

    /// Waits until at least `n` requests (maps, shared objects) are blocked waiting for the
    /// guest to start the device, or `timeout` passed; returns whether they are.
    pub fn wait_for_start_waiters(&self, n: usize, timeout: Duration) -> bool {
        let state = lock(&self.shared.state);
        let (state, _) = self
            .shared
            .state_changed
            .wait_timeout_while(state, timeout, |s| s.waiting_for_start < n)
            .unwrap_or_else(PoisonError::into_inner);
        state.waiting_for_start >= n
    }

    /// Whether the device is started.
    pub fn is_started(&self) -> bool {
        lock(&self.shared.state).started
    }

    /// Runs `f` on the exposure thread without waiting for it.
    pub fn schedule(&self, f: impl FnOnce() + Send + 'static) {
        let sent = lock(&self.jobs)
            .as_ref()
            .is_some_and(|tx| tx.send(Box::new(move |_: &Shared| f())).is_ok());
        if !sent {
            log::warn!("exposure thread gone: a scheduled job was dropped");
        }
    }

    /// Waits until every job queued on the exposure thread before this call (teardowns,
    /// backend-channel requests) has run. Fails with [`ExposureError::Disconnected`] once the
    /// connection ended.
    pub fn flush(&self) -> Result<(), ExposureError> {
        self.run(|_| Ok(()))
    }

    /// The connection ended: later requests fail with [`ExposureError::Disconnected`], jobs
    /// already queued still run (a teardown scheduled before closing sees a closed channel),
    /// and the exposure thread ends. Waits for it unless called on it.
    pub fn close(&self) {
        {
            let mut state = lock(&self.shared.state);
            state.closed = true;
            state.started = false;
            self.shared.state_changed.notify_all();
        }
        *lock(&self.shared.channel) = None;
        lock(&self.jobs).take();
        let thread = lock(&self.thread).take();
        if let Some(t) = thread
            && std::thread::current().id() != self.thread_id
            && t.join().is_err()
        {
            log::error!("the exposure thread panicked");
        }
    }

    /// Allocates a range of `len` bytes (page aligned, first fit) and maps `fd` there; the
    /// range is free again if the map fails. Returns the window offset.
    pub fn map_anywhere(
        &self,
        fd: BorrowedFd<'_>,
        fd_offset: u64,
        len: u64,
        writable: bool,
    ) -> Result<u64, ExposureError> {
        let fd = dup(fd, "SHMEM_MAP")?;
        self.run(move |s| s.map(&fd, fd_offset, None, len, writable))
    }

    /// Runs `f` on the exposure thread and waits for its result; inline when already there.
    fn run<R: Send + 'static>(
        &self,
        f: impl FnOnce(&Shared) -> Result<R, ExposureError> + Send + 'static,
    ) -> Result<R, ExposureError> {
        if std::thread::current().id() == self.thread_id {
            return f(&self.shared);
        }
        let (tx, rx) = mpsc::sync_channel(1);
        let job: Job = Box::new(move |s: &Shared| {
            let _ = tx.send(f(s));
        });
        let sent = lock(&self.jobs)
            .as_ref()
            .is_some_and(|j| j.send(job).is_ok());
        if !sent {
            return Err(ExposureError::Disconnected);
        }
        rx.recv().unwrap_or(Err(ExposureError::Disconnected))
    }
}

impl Drop for VhostExposure {
    fn drop(&mut self) {
        self.close();
    }
}

fn dup(fd: BorrowedFd<'_>, what: &'static str) -> Result<OwnedFd, ExposureError> {
    fd.try_clone_to_owned()
        .map_err(|source| ExposureError::Refused { what, source })
}

impl Shared {
    fn channel(&self) -> Result<Backend, ExposureError> {
        lock(&self.channel)
            .clone()
            .ok_or(ExposureError::Disconnected)
    }

    fn wait_started(&self) -> Result<(), ExposureError> {
        let mut state = lock(&self.state);
        if !state.started && !state.closed {
            state.waiting_for_start += 1;
            self.state_changed.notify_all();
            state = self
                .state_changed
                .wait_timeout_while(state, START_TIMEOUT, |s| !s.started && !s.closed)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
            state.waiting_for_start = state.waiting_for_start.saturating_sub(1);
            self.state_changed.notify_all();
        }
        if state.closed {
            Err(ExposureError::Disconnected)
        } else if !state.started {
            Err(ExposureError::NotStarted)
        } else {
            Ok(())
        }
    }

    /// A failed backend-channel request: the channel is gone, or the VMM said no.
    fn refused(&self, what: &'static str, source: std::io::Error) -> ExposureError {
        if lock(&self.state).closed {
            ExposureError::Disconnected
        } else {
            ExposureError::Refused { what, source }
        }
    }

    fn map(
        &self,
        fd: &OwnedFd,
        fd_offset: u64,
        window_offset: Option<u64>,
        len: u64,
        writable: bool,
    ) -> Result<u64, ExposureError> {
        let channel = self.channel()?;
        self.wait_started()?;
        let range = {
            let mut window = lock(&self.window);
            match window_offset {
                Some(offset) => {
                    let range = WindowRange { offset, len };
                    window.reserve(range).map(|()| range)
                }
                None => window.allocate(len),
            }
            .map_err(|e| ExposureError::WindowRange {
                window_offset: window_offset.unwrap_or(0),
                len,
                reason: e.to_string(),
            })?
        };
        let msg = VhostUserMMap {
            shmid: 0,
            padding: [0; 7],
            fd_offset,
            shm_offset: range.offset,
            len: range.len,
            flags: if writable {
                VhostUserMMapFlags::WRITABLE.bits()
            } else {
                0
            },
        };
        match channel.shmem_map(&msg, &fd.as_fd()) {
            Ok(_) => Ok(range.offset),
            Err(e) => {
                if let Err(release) = lock(&self.window).release(range) {
                    log::error!("window bookkeeping after a failed map: {release}");
                }
                Err(self.refused("SHMEM_MAP", e))
            }
        }
    }

    fn unmap(&self, window_offset: u64, len: u64) -> Result<(), ExposureError> {
        let channel = self.channel()?;
        let range = WindowRange {
            offset: window_offset,
            len,
        };
        if !lock(&self.window).is_in_use(range) {
            return Err(ExposureError::WindowRange {
                window_offset,
                len,
                reason: "not mapped".into(),
            });
        }
        if !lock(&self.state).started {
            // The guest reset the device: QEMU has dropped the mapping (see the module docs).
            log::debug!(
                "{}: window range {window_offset:#x}+{len:#x} released without SHMEM_UNMAP (device stopped)",
                self.name
            );
            return lock(&self.window)
                .release(range)
                .map_err(|e| ExposureError::WindowRange {
                    window_offset,
                    len,
                    reason: e.to_string(),
                });
        }
        let msg = VhostUserMMap {
            shmid: 0,
            padding: [0; 7],
            fd_offset: 0,
            shm_offset: window_offset,
            len,
            flags: 0,
        };
        channel
            .shmem_unmap(&msg)
            .map_err(|e| self.refused("SHMEM_UNMAP", e))?;
        lock(&self.window)
            .release(range)
            .map_err(|e| ExposureError::WindowRange {
                window_offset,
                len,
                reason: e.to_string(),
            })
    }

    fn shared_object(&self, uuid: Uuid, add: bool) -> Result<(), ExposureError> {
        let channel = self.channel()?;
        let msg = VhostUserSharedMsg { uuid };
        if add {
            self.wait_started()?;
            channel
                .shared_object_add(&msg)
                .map_err(|e| self.refused("SHARED_OBJECT_ADD", e))?;
        } else {
            channel
                .shared_object_remove(&msg)
                .map_err(|e| self.refused("SHARED_OBJECT_REMOVE", e))?;
        }
        // The end-to-end runner checks these lines (with REPLY_ACK the call returned after
        // the VMM's ack).
        let what = if add { "ADD" } else { "REMOVE" };
        log::info!("{}: SHARED_OBJECT_{what} {uuid} acked", self.name);
        Ok(())
    }
}

impl GuestExposure for VhostExposure {
    fn window_size(&self) -> u64 {
        self.shared.window_size
    }

    fn map_window(
        &self,
        fd: BorrowedFd<'_>,
        fd_offset: u64,
        window_offset: u64,
        len: u64,
        writable: bool,
    ) -> Result<(), ExposureError> {
        let fd = dup(fd, "SHMEM_MAP")?;
        self.run(move |s| {
            s.map(&fd, fd_offset, Some(window_offset), len, writable)
                .map(drop)
        })
    }

    fn unmap_window(&self, window_offset: u64, len: u64) -> Result<(), ExposureError> {
        self.run(move |s| s.unmap(window_offset, len))
    }

    fn add_shared_object(&self, uuid: Uuid) -> Result<(), ExposureError> {
        self.run(move |s| s.shared_object(uuid, true))
    }

    fn remove_shared_object(&self, uuid: Uuid) -> Result<(), ExposureError> {
        self.run(move |s| s.shared_object(uuid, false))
    }

    fn send_event(&self, message: &[u8]) -> Result<(), ExposureError> {
        if lock(&self.shared.state).closed {
            return Err(ExposureError::Disconnected);
        }
        let mut events = lock(&self.shared.events);
        if events.pending.len() >= MAX_PENDING_EVENTS {
            events.pending.pop_front();
            events.dropped = events.dropped.saturating_add(1);
        }
        events.pending.push_back(message.to_vec());
        if self.is_started() {
            events.flush(&self.shared.mem);
        }
        self.shared.events_changed.notify_all();
        Ok(())
    }

    fn with_guest_memory(&self, f: &mut dyn FnMut(&[GuestRegion<'_>])) {
        let mem = self.shared.mem.memory();
        let regions: Vec<GuestRegion<'_>> = mem
            .iter()
            .filter_map(|r| {
                let file = r.file_offset()?;
                Some(GuestRegion {
                    guest_phys: r.start_addr().0,
                    size: r.len(),
                    fd: file.file().as_fd(),
                    fd_offset: file.start(),
                })
            })
            .collect();
        f(&regions);
    }
}
