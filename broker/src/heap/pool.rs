//! Recycling freed buffers, keyed by (owner, heap, size).
//!
//! Policy: **a freed buffer is reused only by the owner that freed it**, with its old contents.
//! Zeroing before handing a buffer to another owner would not be enough: a buffer's descriptors
//! may have been passed to peers (a host client over SCM_RIGHTS, another device through
//! GET_SHARED_OBJECT), and the broker cannot revoke a descriptor, so the old owner could still
//! read or write what the next owner puts there. Within one owner nothing leaks that the owner
//! could not see anyway, and no time is spent clearing memory. A caller that needs zeroed memory
//! clears it (pooled pages are already backed, so that costs a memset, not page faults).
//!
//! Pooled buffers are memory still in use: the registry should count
//! [`BufferPool::owner_bytes`] against the owner's quota, and must call
//! [`BufferPool::release_owner`] when the owner goes away (disconnect, guest reset).

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Mutex, MutexGuard, PoisonError};

use super::{Heap, HeapBuffer, HeapError, round_size};

/// How much a [`BufferPool`] may keep.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolLimits {
    /// Most buffers kept for one owner.
    pub max_buffers_per_owner: usize,
    /// Most bytes kept for one owner.
    pub max_bytes_per_owner: u64,
    /// Most bytes kept in total.
    pub max_bytes: u64,
}

impl Default for PoolLimits {
    /// 16 buffers and 256 MiB per owner, 1 GiB in total.
    fn default() -> Self {
        PoolLimits {
            max_buffers_per_owner: 16,
            max_bytes_per_owner: 256 << 20,
            max_bytes: 1 << 30,
        }
    }
}

/// What one owner has in the pool.
#[derive(Debug, Default, Clone, Copy)]
struct Usage {
    buffers: usize,
    bytes: u64,
}

#[derive(Debug)]
struct Inner<O> {
    free: HashMap<(O, String, u64), Vec<HeapBuffer>>,
    owners: HashMap<O, Usage>,
    bytes: u64,
}

/// Freed buffers kept for reuse by the same owner (see the module documentation).
#[derive(Debug)]
pub struct BufferPool<O> {
    limits: PoolLimits,
    inner: Mutex<Inner<O>>,
}

impl<O: Eq + Hash + Clone> BufferPool<O> {
    /// An empty pool.
    pub fn new(limits: PoolLimits) -> Self {
        BufferPool {
            limits,
            inner: Mutex::new(Inner {
                free: HashMap::new(),
                owners: HashMap::new(),
                bytes: 0,
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner<O>> {
        // Every critical section leaves the maps consistent before anything can panic.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A buffer of at least `size` bytes from `heap` for `owner`: one `owner` freed earlier with
    /// the same heap and rounded size (old contents kept), else a new allocation.
    pub fn allocate(&self, owner: &O, heap: &dyn Heap, size: u64) -> Result<HeapBuffer, HeapError> {
        if !heap.recyclable() {
            return heap.allocate(size);
        }
        let rounded = round_size(size, heap.granularity())?;
        let key = (owner.clone(), heap.info().name.clone(), rounded);
        let reused = {
            let mut inner = self.lock();
            let buffer = inner.free.get_mut(&key).and_then(Vec::pop);
            if let Some(buffer) = &buffer {
                if inner.free.get(&key).is_some_and(Vec::is_empty) {
                    inner.free.remove(&key);
                }
                inner.bytes -= buffer.size();
                if let Some(usage) = inner.owners.get_mut(owner) {
                    usage.buffers -= 1;
                    usage.bytes -= buffer.size();
                    if usage.buffers == 0 {
                        inner.owners.remove(owner);
                    }
                }
            }
            buffer
        };
        match reused {
            Some(buffer) => Ok(buffer),
            None => heap.allocate(size),
        }
    }

    /// Gives `buffer` back on behalf of `owner`. It is kept for `owner` if the limits allow,
    /// else freed; returns whether it was kept.
    pub fn release(&self, owner: &O, buffer: HeapBuffer) -> bool {
        if !buffer.recyclable() {
            return false;
        }
        let size = buffer.size();
        let mut inner = self.lock();
        let usage = inner.owners.get(owner).copied().unwrap_or_default();
        let fits = usage.buffers < self.limits.max_buffers_per_owner
            && usage.bytes.saturating_add(size) <= self.limits.max_bytes_per_owner
            && inner.bytes.saturating_add(size) <= self.limits.max_bytes;
        if !fits {
            drop(inner);
            drop(buffer);
            return false;
        }
        inner.bytes += size;
        let usage = inner.owners.entry(owner.clone()).or_default();
        usage.buffers += 1;
        usage.bytes += size;
        let key = (owner.clone(), buffer.heap_name().to_owned(), size);
        inner.free.entry(key).or_default().push(buffer);
        true
    }

    /// Frees everything kept for `owner`; returns how many buffers that was.
    pub fn release_owner(&self, owner: &O) -> usize {
        let dropped: Vec<HeapBuffer> = {
            let mut inner = self.lock();
            let keys: Vec<_> = inner
                .free
                .keys()
                .filter(|k| &k.0 == owner)
                .cloned()
                .collect();
            let buffers: Vec<_> = keys
                .iter()
                .filter_map(|k| inner.free.remove(k))
                .flatten()
                .collect();
            if let Some(usage) = inner.owners.remove(owner) {
                inner.bytes -= usage.bytes;
            }
            buffers
        };
        // Descriptors are closed here, outside the lock.
        dropped.len()
    }

    /// Bytes kept for `owner`.
    pub fn owner_bytes(&self, owner: &O) -> u64 {
        self.lock().owners.get(owner).map_or(0, |u| u.bytes)
    }

    /// Bytes kept in total.
    pub fn pooled_bytes(&self) -> u64 {
        self.lock().bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::heap::test_util::{isolated_test, open_fds};
    use crate::heap::{MemfdHeap, page_size};

    fn small_limits() -> PoolLimits {
        PoolLimits {
            max_buffers_per_owner: 2,
            max_bytes_per_owner: 4 * page_size(),
            max_bytes: 6 * page_size(),
        }
    }

    /// The inode of a buffer's memfd: tells whether a buffer was reused.
    fn inode(buffer: &HeapBuffer) -> u64 {
        rustix::fs::fstat(buffer.fd()).unwrap().st_ino
    }

    #[test]
    fn same_owner_same_rounded_size_reuses_the_buffer() {
        let (pool, heap) = (BufferPool::new(small_limits()), MemfdHeap::new());
        let first = pool.allocate(&"guest-1", &heap, 100).unwrap();
        let id = inode(&first);
        assert!(pool.release(&"guest-1", first));
        assert_eq!(pool.owner_bytes(&"guest-1"), page_size());
        let again = pool.allocate(&"guest-1", &heap, page_size()).unwrap();
        assert_eq!(inode(&again), id);
        assert_eq!(pool.pooled_bytes(), 0);
    }

    #[test]
    fn another_owner_never_gets_a_freed_buffer() {
        let (pool, heap) = (BufferPool::new(small_limits()), MemfdHeap::new());
        let first = pool.allocate(&"guest-1", &heap, 100).unwrap();
        let id = inode(&first);
        pool.release(&"guest-1", first);
        let other = pool.allocate(&"guest-2", &heap, 100).unwrap();
        assert_ne!(inode(&other), id);
        assert_eq!(pool.owner_bytes(&"guest-1"), page_size());
    }

    #[test]
    fn other_sizes_and_heaps_are_not_reused() {
        let pool = BufferPool::new(small_limits());
        let (heap, other_heap) = (MemfdHeap::new(), MemfdHeap::named("memfd-2"));
        let first = pool.allocate(&1, &heap, page_size()).unwrap();
        let id = inode(&first);
        pool.release(&1, first);
        assert_ne!(
            inode(&pool.allocate(&1, &heap, 2 * page_size()).unwrap()),
            id
        );
        assert_ne!(
            inode(&pool.allocate(&1, &other_heap, page_size()).unwrap()),
            id
        );
        assert_eq!(inode(&pool.allocate(&1, &heap, 1).unwrap()), id);
    }

    #[test]
    fn release_beyond_the_limits_frees_the_buffer() {
        let (pool, heap) = (BufferPool::new(small_limits()), MemfdHeap::new());
        let bufs: Vec<_> = (0..3)
            .map(|_| heap.allocate(page_size()).unwrap())
            .collect();
        let kept: Vec<bool> = bufs.into_iter().map(|b| pool.release(&1, b)).collect();
        assert_eq!(kept, [true, true, false]);
        let big = heap.allocate(5 * page_size()).unwrap();
        assert!(!pool.release(&2, big), "over the per-owner bytes");
        let fits = heap.allocate(4 * page_size()).unwrap();
        assert!(
            pool.release(&3, fits),
            "exactly the total bytes (2 + 4 = 6 pages)"
        );
        let one_more = heap.allocate(page_size()).unwrap();
        assert!(!pool.release(&4, one_more), "over the total bytes");
        assert_eq!(pool.pooled_bytes(), 6 * page_size());
    }

    isolated_test!(
        /// Pooled buffers keep their descriptors; releasing the owner closes all of them.
        fn release_owner_closes_every_pooled_descriptor() {
            let (pool, heap) = (BufferPool::new(small_limits()), MemfdHeap::new());
            let before = open_fds();
            for owner in [1, 2] {
                let bufs: Vec<_> = (0..2)
                    .map(|_| pool.allocate(&owner, &heap, 1).unwrap())
                    .collect();
                bufs.into_iter()
                    .for_each(|b| assert!(pool.release(&owner, b)));
            }
            assert_eq!(open_fds().len(), before.len() + 4);
            assert_eq!(pool.release_owner(&1), 2);
            assert_eq!(open_fds().len(), before.len() + 2);
            assert_eq!(pool.owner_bytes(&1), 0);
            assert_eq!(pool.pooled_bytes(), 2 * page_size());
            assert_eq!(pool.release_owner(&2), 2);
            assert_eq!(open_fds(), before);
        }
    );
}
