//! The buffer registry: who holds which buffer, how it is exposed, and what each owner may
//! still allocate.
//!
//! Every buffer has an owner, the [`Plan`] it was allocated for, the heap it came from, its
//! size, a random (v4) UUID, its *views* (anything set up to reach it: CPU mappings, window
//! ranges, shared objects, IOVA mappings, fds handed out — recorded generically as a
//! [`ViewKind`] and a teardown action) and its *references* (other owners that imported it).
//!
//! Access: a buffer id or UUID reaches a buffer only for its owner, or for an owner it was
//! [granted](Registry::grant) to and that [imported](Registry::import) it.
//!
//! Quotas ([`Quota`], per owner: bytes, buffers, requests in flight) and the global limit
//! ([`GlobalLimits`]) are checked before memory is allocated; exceeding one is a
//! [`RegistryError::QuotaExceeded`] or [`RegistryError::GlobalLimit`] naming the limit, and
//! changes nothing for anyone. Memory kept for an owner's recycling ([`BufferPool`]) counts
//! against its byte quota; when that alone makes a request fail, the pooled memory is freed
//! and the request tried once more.
//!
//! Teardown runs in reverse order of setup: a buffer's views newest first, then its memory;
//! removing an owner drops its imports, then frees its buffers newest first, then its pool.
//!
//! # Locking
//!
//! One mutex (`Registry::inner`) guards all records. Lock order: `Registry::inner` before the
//! pool's own mutex (the quota check reads pooled bytes); nothing takes them the other way.
//! Heap allocations, view teardowns and descriptor closes run with **no** lock held: records
//! are removed under the lock and acted on after it is released, so a slow teardown (a VMM
//! round trip) never blocks other owners.
//!
//! [`Registry::wait_until`] holds `Registry::changes` while it evaluates its predicate (which
//! takes `inner` and the pool's mutex); changes are announced after every other lock is
//! released, so nothing holds `inner` or the pool's mutex while taking `changes`.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use bufbroker_proto::Plan;
use bufbroker_proto::wire::{Access, BufferId, Event, OwnerStats};
use thiserror::Error;
use uuid::Uuid;

use crate::config::{GlobalLimits, Quota};
use crate::heap::{BufferPool, Heap, HeapBuffer, HeapError, PoolLimits};

#[cfg(test)]
mod tests;

/// An owner of buffers: one guest device or one local client connection. Unique for the
/// registry's lifetime.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct OwnerId(u64);

impl fmt::Display for OwnerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "owner #{}", self.0)
    }
}

/// Which quota or limit a request would exceed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    /// Bytes held.
    Bytes,
    /// Buffers held.
    Buffers,
    /// Requests being processed.
    InFlight,
}

impl fmt::Display for Limit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Limit::Bytes => "byte",
            Limit::Buffers => "buffer",
            Limit::InFlight => "in-flight request",
        })
    }
}

/// Registry failures.
#[derive(Debug, Error)]
pub enum RegistryError {
    /// The owner was removed (or never added).
    #[error("{0} is not registered")]
    UnknownOwner(OwnerId),
    /// No such buffer, or not one this owner holds.
    #[error("{0} does not exist or is not held by this owner")]
    NotFound(BufferId),
    /// No buffer has this UUID.
    #[error("no buffer has UUID {0}")]
    UnknownUuid(Uuid),
    /// The buffer exists but was not granted to this owner.
    #[error("buffer {uuid} was not granted to {owner:?}")]
    NotGranted {
        /// The buffer's UUID.
        uuid: Uuid,
        /// The requester's name.
        owner: String,
    },
    /// Only the buffer's owner may do this (an importer tried to grant or export).
    #[error("only the owner of {0} may {1}")]
    NotOwner(BufferId, &'static str),
    /// The owner's quota would be exceeded.
    #[error(
        "{owner:?} would exceed its {limit} quota: {requested} more on top of {used} exceeds {max}"
    )]
    QuotaExceeded {
        /// The owner's name.
        owner: String,
        /// Which quota.
        limit: Limit,
        /// What the request needs.
        requested: u64,
        /// What the owner already uses.
        used: u64,
        /// The quota.
        max: u64,
    },
    /// The broker-wide limit would be exceeded.
    #[error(
        "the broker-wide {limit} limit would be exceeded: {requested} more on top of {used} exceeds {max}"
    )]
    GlobalLimit {
        /// Which limit.
        limit: Limit,
        /// What the request needs.
        requested: u64,
        /// What all owners use.
        used: u64,
        /// The limit.
        max: u64,
    },
    /// `count` buffers of `size` bytes overflow.
    #[error("{count} buffers of {size} bytes overflow a 64-bit size")]
    SizeOverflow {
        /// Buffers asked for.
        count: u32,
        /// Bytes each.
        size: u64,
    },
    /// The heap could not allocate.
    #[error("allocating {size} bytes from heap {heap} failed")]
    Allocate {
        /// The heap.
        heap: String,
        /// Bytes asked for.
        size: u64,
        /// Why.
        #[source]
        source: HeapError,
    },
    /// The buffer's memory has no descriptor that may leave the broker (guest RAM without
    /// udmabuf, or a buffer that starts inside its descriptor where no offset can be given).
    #[error("{0} has no descriptor that can be shared here (its memory needs /dev/udmabuf)")]
    NotShareable(BufferId),
    /// Duplicating a buffer's descriptor failed (usually: out of descriptors).
    #[error("duplicating the descriptor of {buffer} failed")]
    DupFd {
        /// The buffer.
        buffer: BufferId,
        /// The OS error.
        #[source]
        source: rustix::io::Errno,
    },
}

/// What a view of a buffer is. Recorded so teardown, statistics and debugging know what was
/// set up; the registry itself only runs the teardown action.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ViewKind {
    /// A mapping in the broker's own address space.
    CpuMapping,
    /// A range of a device's shared-memory window (SHMEM_MAP).
    WindowRange {
        /// Offset in the window.
        offset: u64,
        /// Length.
        len: u64,
    },
    /// A virtio shared object (SHARED_OBJECT_ADD).
    SharedObject(Uuid),
    /// An IOVA mapping for a VFIO device.
    Iova {
        /// The device.
        device: String,
        /// IOVA of the first byte.
        iova: u64,
        /// Length.
        len: u64,
    },
    /// Anything else, named.
    Other(&'static str),
}

/// The action that tears a view down; runs with no registry lock held.
pub type Teardown = Box<dyn FnOnce() + Send>;

/// Receives an owner's events (a buffer it imported was revoked). Called with no registry lock
/// held, on the thread of whoever caused the event: it must not block.
pub type EventSink = Arc<dyn Fn(Event) + Send + Sync>;

/// One view: who set it up, what it is, how to undo it.
struct View {
    holder: OwnerId,
    kind: ViewKind,
    teardown: Option<Teardown>,
}

impl View {
    fn tear_down(mut self) {
        if let Some(f) = self.teardown.take() {
            f();
        }
    }
}

impl Drop for View {
    fn drop(&mut self) {
        // A view dropped without `tear_down` (a panic mid-teardown) still undoes itself.
        if let Some(f) = self.teardown.take() {
            f();
        }
    }
}

/// A buffer handed out by [`Registry::allocate`].
#[derive(Debug, Clone)]
pub struct Allocated {
    /// Its id.
    pub id: BufferId,
    /// Its UUID.
    pub uuid: Uuid,
    /// Its memory (for exposing it; the registry keeps its own reference).
    pub memory: Arc<HeapBuffer>,
}

/// A buffer as one holder sees it ([`Registry::get`], [`Registry::import`]).
#[derive(Debug, Clone)]
pub struct BufferView {
    /// Its id.
    pub id: BufferId,
    /// Its UUID.
    pub uuid: Uuid,
    /// The plan it was allocated for.
    pub plan: Arc<Plan>,
    /// Its memory.
    pub memory: Arc<HeapBuffer>,
    /// What the holder may do.
    pub access: Access,
    /// Whether the holder owns it.
    pub owned: bool,
}

/// Allocation statistics of one heap.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HeapStats {
    /// Bytes held in live buffers.
    pub bytes: u64,
    /// Live buffers.
    pub buffers: u64,
    /// Buffers allocated since start.
    pub allocations: u64,
    /// Failed allocations since start.
    pub failures: u64,
}

/// What [`Registry::remove_owner`] freed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Removed {
    /// Buffers of the owner freed.
    pub buffers: usize,
    /// Imports of other owners' buffers dropped.
    pub imports: usize,
    /// Views torn down.
    pub views: usize,
    /// Recycled buffers freed.
    pub pooled: usize,
}

struct Owner {
    name: String,
    quota: Quota,
    bytes: u64,
    buffers: u32,
    in_flight: u32,
    /// Own buffers in creation order.
    owned: Vec<BufferId>,
    /// Imported buffers in import order.
    imported: Vec<BufferId>,
    /// Where its events go, if it takes events.
    events: Option<EventSink>,
}

struct Buffer {
    owner: OwnerId,
    uuid: Uuid,
    plan: Arc<Plan>,
    heap: String,
    size: u64,
    memory: Arc<HeapBuffer>,
    views: Vec<View>,
    /// Owner names that may import it, and how.
    grants: Vec<(String, Access)>,
    /// Owners that imported it.
    importers: Vec<(OwnerId, Access)>,
    /// Ever imported by another owner (its descriptor may be out there): never recycled.
    shared: bool,
}

#[derive(Default)]
struct Inner {
    owners: HashMap<OwnerId, Owner>,
    buffers: HashMap<BufferId, Buffer>,
    by_uuid: HashMap<Uuid, BufferId>,
    bytes: u64,
    buffers_total: u64,
    heaps: BTreeMap<String, HeapStats>,
}

/// The registry. Share it as `Arc<Registry>`.
pub struct Registry {
    inner: Mutex<Inner>,
    pool: BufferPool<OwnerId>,
    global: GlobalLimits,
    next_owner: AtomicU64,
    next_buffer: AtomicU64,
    /// Taken by [`Registry::wait_until`] around its predicate and its wait on `changed`.
    changes: Mutex<()>,
    /// Notified after every change to the owners, the buffers or the bytes held.
    changed: Condvar,
}

impl fmt::Debug for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registry")
            .field("global", &self.global)
            .finish_non_exhaustive()
    }
}

/// A request being processed for an owner; ends when dropped.
#[derive(Debug)]
pub struct InFlight<'a> {
    registry: &'a Registry,
    owner: OwnerId,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        if let Some(o) = self.registry.lock().owners.get_mut(&self.owner) {
            o.in_flight = o.in_flight.saturating_sub(1);
        }
    }
}

/// `used + requested > max` with 0 meaning unlimited.
fn exceeds(used: u64, requested: u64, max: u64) -> bool {
    max != 0 && used.saturating_add(requested) > max
}

impl Registry {
    /// An empty registry with a broker-wide limit and recycling limits.
    pub fn new(global: GlobalLimits, pool: PoolLimits) -> Self {
        Registry {
            inner: Mutex::new(Inner::default()),
            pool: BufferPool::new(pool),
            global,
            next_owner: AtomicU64::new(1),
            next_buffer: AtomicU64::new(1),
            changes: Mutex::new(()),
            changed: Condvar::new(),
        }
    }

    /// Wakes [`Registry::wait_until`]. Called with no other registry lock held.
    fn announce_change(&self) {
        drop(self.changes.lock().unwrap_or_else(PoisonError::into_inner));
        self.changed.notify_all();
    }

    /// Waits until `pred` holds, evaluating it now and after every change to the owners, the
    /// buffers or the bytes held (allocations, frees, owners added and removed, recycled
    /// memory released); gives up after `timeout`. Returns whether `pred` held. `pred` runs
    /// with no registry lock held, so it may call any query; it must not change the registry.
    pub fn wait_until(&self, timeout: Duration, mut pred: impl FnMut(&Registry) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        let mut guard = self.changes.lock().unwrap_or_else(PoisonError::into_inner);
        loop {
            if pred(self) {
                return true;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            guard = self
                .changed
                .wait_timeout(guard, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Every critical section leaves the records consistent before anything can panic.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Adds an owner called `name` (the configured name used for grants and policy) with
    /// `quota`.
    pub fn add_owner(&self, name: &str, quota: Quota) -> OwnerId {
        let id = OwnerId(self.next_owner.fetch_add(1, Ordering::Relaxed));
        self.lock().owners.insert(
            id,
            Owner {
                name: name.to_owned(),
                quota,
                bytes: 0,
                buffers: 0,
                in_flight: 0,
                owned: Vec::new(),
                imported: Vec::new(),
                events: None,
            },
        );
        self.announce_change();
        id
    }

    /// Sends `owner`'s events to `sink` from now on (`None`: drop them).
    pub fn set_event_sink(&self, owner: OwnerId, sink: Option<EventSink>) {
        if let Some(o) = self.lock().owners.get_mut(&owner) {
            o.events = sink;
        }
    }

    /// The name `owner` was added with.
    pub fn owner_name(&self, owner: OwnerId) -> Result<String, RegistryError> {
        let inner = self.lock();
        let o = inner
            .owners
            .get(&owner)
            .ok_or(RegistryError::UnknownOwner(owner))?;
        Ok(o.name.clone())
    }

    /// Starts a request for `owner`: fails with [`Limit::InFlight`] when its quota of
    /// requests in flight is used up.
    pub fn begin_request(&self, owner: OwnerId) -> Result<InFlight<'_>, RegistryError> {
        let mut inner = self.lock();
        let o = inner
            .owners
            .get_mut(&owner)
            .ok_or(RegistryError::UnknownOwner(owner))?;
        if exceeds(o.in_flight.into(), 1, o.quota.in_flight.into()) {
            return Err(RegistryError::QuotaExceeded {
                owner: o.name.clone(),
                limit: Limit::InFlight,
                requested: 1,
                used: o.in_flight.into(),
                max: o.quota.in_flight.into(),
            });
        }
        o.in_flight += 1;
        Ok(InFlight {
            registry: self,
            owner,
        })
    }

    /// Charges `count` buffers of `size` bytes to `owner` if its quota and the global limit
    /// allow.
    fn reserve(&self, owner: OwnerId, size: u64, count: u32) -> Result<(), RegistryError> {
        let bytes = size
            .checked_mul(count.into())
            .ok_or(RegistryError::SizeOverflow { count, size })?;
        let mut inner = self.lock();
        let pooled_total = self.pool.pooled_bytes();
        let (total_bytes, total_buffers) = (inner.bytes, inner.buffers_total);
        let o = inner
            .owners
            .get_mut(&owner)
            .ok_or(RegistryError::UnknownOwner(owner))?;
        let used = o.bytes.saturating_add(self.pool.owner_bytes(&owner));
        let quota_error = |limit, requested, used, max| RegistryError::QuotaExceeded {
            owner: o.name.clone(),
            limit,
            requested,
            used,
            max,
        };
        if exceeds(o.buffers.into(), count.into(), o.quota.buffers.into()) {
            return Err(quota_error(
                Limit::Buffers,
                count.into(),
                o.buffers.into(),
                o.quota.buffers.into(),
            ));
        }
        if exceeds(used, bytes, o.quota.bytes) {
            return Err(quota_error(Limit::Bytes, bytes, used, o.quota.bytes));
        }
        if exceeds(total_buffers, count.into(), self.global.buffers) {
            return Err(RegistryError::GlobalLimit {
                limit: Limit::Buffers,
                requested: count.into(),
                used: total_buffers,
                max: self.global.buffers,
            });
        }
        let total_used = total_bytes.saturating_add(pooled_total);
        if exceeds(total_used, bytes, self.global.bytes) {
            return Err(RegistryError::GlobalLimit {
                limit: Limit::Bytes,
                requested: bytes,
                used: total_used,
                max: self.global.bytes,
            });
        }
        o.bytes += bytes;
        o.buffers += count;
        inner.bytes += bytes;
        inner.buffers_total += u64::from(count);
        Ok(())
    }

    /// Returns a charge made by [`Registry::reserve`].
    fn unreserve(inner: &mut Inner, owner: OwnerId, size: u64, count: u32) {
        let bytes = size.saturating_mul(count.into());
        if let Some(o) = inner.owners.get_mut(&owner) {
            o.bytes = o.bytes.saturating_sub(bytes);
            o.buffers = o.buffers.saturating_sub(count);
        }
        inner.bytes = inner.bytes.saturating_sub(bytes);
        inner.buffers_total = inner.buffers_total.saturating_sub(count.into());
    }

    /// Allocates `count` buffers of `plan.size` bytes from `heap` for `owner`: all or none.
    /// Quotas are checked first; buffers the owner freed earlier with the same heap and size
    /// are reused.
    pub fn allocate(
        &self,
        owner: OwnerId,
        heap: &dyn Heap,
        plan: &Arc<Plan>,
        count: u32,
    ) -> Result<Vec<Allocated>, RegistryError> {
        let allocated = self.allocate_unannounced(owner, heap, plan, count);
        self.announce_change();
        allocated
    }

    /// [`Registry::allocate`] without waking [`Registry::wait_until`].
    fn allocate_unannounced(
        &self,
        owner: OwnerId,
        heap: &dyn Heap,
        plan: &Arc<Plan>,
        count: u32,
    ) -> Result<Vec<Allocated>, RegistryError> {
        let heap_name = heap.info().name.clone();
        let size = crate::heap::round_size(plan.size, heap.granularity()).map_err(|source| {
            RegistryError::Allocate {
                heap: heap_name.clone(),
                size: plan.size,
                source,
            }
        })?;
        match self.reserve(owner, size, count) {
            Err(RegistryError::QuotaExceeded { .. }) if self.pool.owner_bytes(&owner) > 0 => {
                self.pool.release_owner(&owner);
                self.reserve(owner, size, count)?;
            }
            other => other?,
        }
        let mut memory = Vec::with_capacity(count as usize);
        for _ in 0..count {
            match self.pool.allocate(&owner, heap, plan.size) {
                Ok(buffer) => memory.push(Arc::new(buffer)),
                Err(source) => {
                    let mut inner = self.lock();
                    Self::unreserve(&mut inner, owner, size, count);
                    inner.heaps.entry(heap_name.clone()).or_default().failures += 1;
                    drop(inner);
                    // The buffers allocated so far are closed here, with no lock held.
                    drop(memory);
                    return Err(RegistryError::Allocate {
                        heap: heap_name,
                        size: plan.size,
                        source,
                    });
                }
            }
        }
        let mut inner = self.lock();
        if !inner.owners.contains_key(&owner) {
            // Removed while allocating: nothing to charge, nothing to keep.
            drop(inner);
            return Err(RegistryError::UnknownOwner(owner));
        }
        let mut out = Vec::with_capacity(memory.len());
        for memory in memory {
            let id = BufferId(self.next_buffer.fetch_add(1, Ordering::Relaxed));
            let uuid = Uuid::new_v4();
            // The quota was charged with the heap-rounded size; the heap's real size agrees.
            inner.by_uuid.insert(uuid, id);
            inner.buffers.insert(
                id,
                Buffer {
                    owner,
                    uuid,
                    plan: plan.clone(),
                    heap: heap_name.clone(),
                    size,
                    memory: memory.clone(),
                    views: Vec::new(),
                    grants: Vec::new(),
                    importers: Vec::new(),
                    shared: false,
                },
            );
            if let Some(o) = inner.owners.get_mut(&owner) {
                o.owned.push(id);
            }
            out.push(Allocated { id, uuid, memory });
        }
        let stats = inner.heaps.entry(heap_name).or_default();
        stats.bytes += size * u64::from(count);
        stats.buffers += u64::from(count);
        stats.allocations += u64::from(count);
        Ok(out)
    }

    /// The buffer `id` as `owner` sees it: its own, or one it imported.
    pub fn get(&self, owner: OwnerId, id: BufferId) -> Result<BufferView, RegistryError> {
        let inner = self.lock();
        let b = inner.buffers.get(&id).ok_or(RegistryError::NotFound(id))?;
        let access = if b.owner == owner {
            Access::ReadWrite
        } else {
            b.importers
                .iter()
                .find(|(o, _)| *o == owner)
                .map(|(_, a)| *a)
                .ok_or(RegistryError::NotFound(id))?
        };
        Ok(BufferView {
            id,
            uuid: b.uuid,
            plan: b.plan.clone(),
            memory: b.memory.clone(),
            access,
            owned: b.owner == owner,
        })
    }

    /// A new descriptor for the buffer `id` (for SCM_RIGHTS), if `owner` holds it, and the
    /// offset of the buffer's first byte in it ([`HeapBuffer::share_fd`]).
    pub fn dup_fd(
        &self,
        owner: OwnerId,
        id: BufferId,
    ) -> Result<(std::os::fd::OwnedFd, u64), RegistryError> {
        let view = self.get(owner, id)?;
        let (fd, offset) = view
            .memory
            .share_fd()
            .ok_or(RegistryError::NotShareable(id))?;
        let fd = rustix::io::fcntl_dupfd_cloexec(fd, 0)
            .map_err(|source| RegistryError::DupFd { buffer: id, source })?;
        Ok((fd, offset))
    }

    /// A new descriptor for the buffer with `uuid`, if `owner` owns it (for the VMM's
    /// GET_SHARED_OBJECT on behalf of another device of the owner's VM). Takes no reference.
    pub fn owned_fd_by_uuid(
        &self,
        owner: OwnerId,
        uuid: Uuid,
    ) -> Result<std::os::fd::OwnedFd, RegistryError> {
        let id = *self
            .lock()
            .by_uuid
            .get(&uuid)
            .ok_or(RegistryError::UnknownUuid(uuid))?;
        let view = self.get(owner, id)?;
        if !view.owned {
            return Err(RegistryError::UnknownUuid(uuid));
        }
        // The VMM's GET_SHARED_OBJECT reply has no offset: only a descriptor that starts with
        // the buffer will do.
        let fd = match view.memory.share_fd() {
            Some((fd, 0)) => fd,
            _ => return Err(RegistryError::NotShareable(id)),
        };
        rustix::io::fcntl_dupfd_cloexec(fd, 0)
            .map_err(|source| RegistryError::DupFd { buffer: id, source })
    }

    /// Records a view of buffer `id` set up by `holder` (its owner or an importer).
    /// `teardown` runs when the view is removed, the buffer freed or the holder removed.
    /// If `holder` cannot hold the buffer, `teardown` runs before the error returns.
    pub fn add_view(
        &self,
        holder: OwnerId,
        id: BufferId,
        kind: ViewKind,
        teardown: Teardown,
    ) -> Result<(), RegistryError> {
        let view = View {
            holder,
            kind,
            teardown: Some(teardown),
        };
        let mut inner = self.lock();
        let held = inner
            .buffers
            .get(&id)
            .is_some_and(|b| b.owner == holder || b.importers.iter().any(|(o, _)| *o == holder));
        match inner.buffers.get_mut(&id) {
            Some(b) if held => {
                b.views.push(view);
                Ok(())
            }
            _ => {
                drop(inner);
                view.tear_down();
                Err(RegistryError::NotFound(id))
            }
        }
    }

    /// Tears down the views of buffer `id` that `holder` set up and `matches` selects, newest
    /// first; returns how many.
    pub fn remove_views(
        &self,
        holder: OwnerId,
        id: BufferId,
        matches: impl Fn(&ViewKind) -> bool,
    ) -> Result<usize, RegistryError> {
        let removed = {
            let mut inner = self.lock();
            let b = inner
                .buffers
                .get_mut(&id)
                .filter(|b| b.owner == holder || b.importers.iter().any(|(o, _)| *o == holder))
                .ok_or(RegistryError::NotFound(id))?;
            take_views(&mut b.views, |v| v.holder == holder && matches(&v.kind))
        };
        let n = removed.len();
        removed.into_iter().rev().for_each(View::tear_down);
        Ok(n)
    }

    /// The views of buffer `id` that `holder` set up, oldest first.
    pub fn views(&self, holder: OwnerId, id: BufferId) -> Vec<ViewKind> {
        self.lock().buffers.get(&id).map_or_else(Vec::new, |b| {
            b.views
                .iter()
                .filter(|v| v.holder == holder)
                .map(|v| v.kind.clone())
                .collect()
        })
    }

    /// Lets the owner called `grantee` import buffer `id`; returns its UUID. Only the owner
    /// may grant; granting again replaces the access.
    pub fn grant(
        &self,
        owner: OwnerId,
        id: BufferId,
        grantee: &str,
        access: Access,
    ) -> Result<Uuid, RegistryError> {
        let mut inner = self.lock();
        let b = owned_mut(&mut inner, owner, id)?;
        b.grants.retain(|(name, _)| name != grantee);
        b.grants.push((grantee.to_owned(), access));
        Ok(b.uuid)
    }

    /// The UUID of buffer `id`, if `owner` owns it (for exporting it).
    pub fn uuid(&self, owner: OwnerId, id: BufferId) -> Result<Uuid, RegistryError> {
        let mut inner = self.lock();
        owned_mut(&mut inner, owner, id).map(|b| b.uuid)
    }

    /// Takes a reference to the buffer with `uuid` for `owner`: its own buffer, or one granted
    /// to its name. Importing twice is one reference.
    pub fn import(&self, owner: OwnerId, uuid: Uuid) -> Result<BufferView, RegistryError> {
        let mut inner = self.lock();
        let id = *inner
            .by_uuid
            .get(&uuid)
            .ok_or(RegistryError::UnknownUuid(uuid))?;
        let name = inner
            .owners
            .get(&owner)
            .map(|o| o.name.clone())
            .ok_or(RegistryError::UnknownOwner(owner))?;
        let b = inner
            .buffers
            .get_mut(&id)
            .ok_or(RegistryError::UnknownUuid(uuid))?;
        let access = if b.owner == owner {
            Access::ReadWrite
        } else {
            let access = b
                .grants
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, a)| *a)
                .ok_or(RegistryError::NotGranted { uuid, owner: name })?;
            if !b.importers.iter().any(|(o, _)| *o == owner) {
                b.importers.push((owner, access));
                b.shared = true;
                if let Some(o) = inner.owners.get_mut(&owner) {
                    o.imported.push(id);
                }
            }
            access
        };
        drop(inner);
        self.get(owner, id).map(|v| BufferView { access, ..v })
    }

    /// Frees buffer `id` for `owner`. For its owner: every view (of every holder) is torn
    /// down newest first, importers lose it, its memory goes back to the owner's pool (unless
    /// another owner ever imported it) and its quota is returned. For an importer: only its
    /// views and reference go.
    pub fn free(&self, owner: OwnerId, id: BufferId) -> Result<(), RegistryError> {
        let mut inner = self.lock();
        let b = inner.buffers.get(&id).ok_or(RegistryError::NotFound(id))?;
        let (owns, imported) = (
            b.owner == owner,
            b.importers.iter().any(|(o, _)| *o == owner),
        );
        if !owns {
            if !imported {
                return Err(RegistryError::NotFound(id));
            }
            let views = drop_import(&mut inner, owner, id);
            drop(inner);
            views.into_iter().rev().for_each(View::tear_down);
            self.announce_change();
            return Ok(());
        }
        let buffer = remove_buffer(&mut inner, id);
        let revoked = buffer
            .as_ref()
            .map(|b| revocations(&inner, id, b))
            .unwrap_or_default();
        drop(inner);
        if let Some(buffer) = buffer {
            self.tear_down_buffer(owner, buffer, true);
        }
        notify(revoked, "its owner freed it");
        self.announce_change();
        Ok(())
    }

    /// Views newest first, then memory (recycled if `recycle` and never shared).
    fn tear_down_buffer(&self, owner: OwnerId, mut buffer: Buffer, recycle: bool) -> usize {
        let views = std::mem::take(&mut buffer.views);
        let n = views.len();
        views.into_iter().rev().for_each(View::tear_down);
        if recycle && !buffer.shared {
            if let Ok(memory) = Arc::try_unwrap(buffer.memory) {
                self.pool.release(&owner, memory);
            }
        }
        n
    }

    /// Removes `owner` (a guest reset, a client gone): drops its imports, frees its buffers
    /// newest first (views, then memory), then its recycled memory.
    pub fn remove_owner(&self, owner: OwnerId) -> Removed {
        let (imports, buffers, revoked) = {
            let mut inner = self.lock();
            let Some(o) = inner.owners.remove(&owner) else {
                return Removed::default();
            };
            let imports: Vec<Vec<View>> = o
                .imported
                .iter()
                .rev()
                .map(|id| drop_import(&mut inner, owner, *id))
                .collect();
            let mut buffers = Vec::with_capacity(o.owned.len());
            let mut revoked = Vec::new();
            for id in o.owned.iter().rev() {
                if let Some(b) = remove_buffer(&mut inner, *id) {
                    revoked.extend(revocations(&inner, *id, &b));
                    buffers.push(b);
                }
            }
            (imports, buffers, revoked)
        };
        let mut removed = Removed {
            imports: imports.len(),
            buffers: buffers.len(),
            ..Removed::default()
        };
        for views in imports {
            removed.views += views.len();
            views.into_iter().rev().for_each(View::tear_down);
        }
        for buffer in buffers {
            removed.views += self.tear_down_buffer(owner, buffer, false);
        }
        removed.pooled = self.pool.release_owner(&owner);
        notify(revoked, "its owner went away");
        self.announce_change();
        removed
    }

    /// The statistics of `owner`.
    pub fn owner_stats(&self, owner: OwnerId) -> Result<OwnerStats, RegistryError> {
        let inner = self.lock();
        let o = inner
            .owners
            .get(&owner)
            .ok_or(RegistryError::UnknownOwner(owner))?;
        Ok(self.stats_of(owner, o))
    }

    /// The statistics of every owner, oldest first.
    pub fn all_owner_stats(&self) -> Vec<OwnerStats> {
        let inner = self.lock();
        let mut owners: Vec<_> = inner.owners.iter().collect();
        owners.sort_by_key(|(id, _)| **id);
        owners
            .into_iter()
            .map(|(id, o)| self.stats_of(*id, o))
            .collect()
    }

    fn stats_of(&self, id: OwnerId, o: &Owner) -> OwnerStats {
        OwnerStats {
            owner: o.name.clone(),
            bytes: o.bytes.saturating_add(self.pool.owner_bytes(&id)),
            buffers: o.buffers,
            in_flight: o.in_flight,
            quota_bytes: o.quota.bytes,
            quota_buffers: o.quota.buffers,
        }
    }

    /// Allocation statistics per heap name.
    pub fn heap_stats(&self) -> BTreeMap<String, HeapStats> {
        self.lock().heaps.clone()
    }

    /// Bytes held in live buffers and in recycling, over all owners.
    pub fn total_bytes(&self) -> u64 {
        self.lock().bytes.saturating_add(self.pool.pooled_bytes())
    }
}

/// The event sinks of the importers of buffer `id` (being removed), to tell them.
fn revocations(inner: &Inner, id: BufferId, b: &Buffer) -> Vec<(EventSink, BufferId)> {
    b.importers
        .iter()
        .filter_map(|(importer, _)| inner.owners.get(importer)?.events.clone())
        .map(|sink| (sink, id))
        .collect()
}

/// Sends `BufferRevoked` to each sink (no lock held).
fn notify(revoked: Vec<(EventSink, BufferId)>, reason: &str) {
    for (sink, buffer) in revoked {
        sink(Event::BufferRevoked {
            buffer,
            reason: reason.to_owned(),
        });
    }
}

/// Removes the views `pred` selects, in order.
fn take_views(views: &mut Vec<View>, pred: impl Fn(&View) -> bool) -> Vec<View> {
    let (taken, kept) = std::mem::take(views).into_iter().partition(|v| pred(v));
    *views = kept;
    taken
}

/// The buffer `id` if `owner` owns it.
fn owned_mut(
    inner: &mut Inner,
    owner: OwnerId,
    id: BufferId,
) -> Result<&mut Buffer, RegistryError> {
    match inner.buffers.get_mut(&id) {
        Some(b) if b.owner == owner => Ok(b),
        Some(b) if b.importers.iter().any(|(o, _)| *o == owner) => {
            Err(RegistryError::NotOwner(id, "grant or export it"))
        }
        _ => Err(RegistryError::NotFound(id)),
    }
}

/// Drops `importer`'s reference to `id`; returns its views, to be torn down unlocked.
fn drop_import(inner: &mut Inner, importer: OwnerId, id: BufferId) -> Vec<View> {
    if let Some(o) = inner.owners.get_mut(&importer) {
        o.imported.retain(|b| *b != id);
    }
    match inner.buffers.get_mut(&id) {
        Some(b) => {
            b.importers.retain(|(o, _)| *o != importer);
            take_views(&mut b.views, |v| v.holder == importer)
        }
        None => Vec::new(),
    }
}

/// Unlinks buffer `id` from every record and returns its quota; the caller tears it down.
fn remove_buffer(inner: &mut Inner, id: BufferId) -> Option<Buffer> {
    let b = inner.buffers.remove(&id)?;
    inner.by_uuid.remove(&b.uuid);
    for (importer, _) in &b.importers {
        if let Some(o) = inner.owners.get_mut(importer) {
            o.imported.retain(|x| *x != id);
        }
    }
    if let Some(o) = inner.owners.get_mut(&b.owner) {
        o.owned.retain(|x| *x != id);
    }
    Registry::unreserve(inner, b.owner, b.size, 1);
    if let Some(s) = inner.heaps.get_mut(&b.heap) {
        s.bytes = s.bytes.saturating_sub(b.size);
        s.buffers = s.buffers.saturating_sub(1);
    }
    Some(b)
}
