use std::sync::Mutex;

use bufbroker_proto::{CacheMode, Fourcc, Modifier, Usage};

use super::*;
use crate::heap::test_util::{isolated_test, open_fds};
use crate::heap::{MemfdHeap, page_size};

/// A linear plan of `size` bytes on the memfd heap.
pub(crate) fn plan(size: u64) -> Arc<Plan> {
    Arc::new(Plan {
        fourcc: Fourcc::from_chars(*b"R8  "),
        modifier: Modifier::LINEAR,
        width: 1,
        height: 1,
        planes: Vec::new(),
        size,
        alignment: 1,
        heap: "memfd".into(),
        cache_mode: CacheMode::Cached,
        contiguous: false,
        address_bits: 64,
        coherent: true,
        usage: Usage::CPU_READ,
        alternatives: Vec::new(),
    })
}

fn quota(bytes: u64, buffers: u32) -> Quota {
    Quota {
        bytes,
        buffers,
        in_flight: 2,
    }
}

fn no_pool() -> PoolLimits {
    PoolLimits {
        max_buffers_per_owner: 0,
        max_bytes_per_owner: 0,
        max_bytes: 0,
    }
}

fn registry() -> Registry {
    Registry::new(GlobalLimits::default(), PoolLimits::default())
}

#[test]
fn allocate_records_owner_size_heap_and_a_v4_uuid() {
    let (reg, heap) = (registry(), MemfdHeap::new());
    let owner = reg.add_owner("vm-1", Quota::DEFAULT);

    let bufs = reg.allocate(owner, &heap, &plan(100), 2).unwrap();

    assert_eq!(bufs.len(), 2);
    assert_ne!(bufs[0].uuid, bufs[1].uuid);
    assert_eq!(bufs[0].uuid.get_version_num(), 4);
    let view = reg.get(owner, bufs[0].id).unwrap();
    assert!(view.owned);
    assert_eq!(view.memory.size(), page_size());
    let stats = reg.owner_stats(owner).unwrap();
    assert_eq!((stats.bytes, stats.buffers), (2 * page_size(), 2));
    let heaps = reg.heap_stats();
    assert_eq!(heaps["memfd"].buffers, 2);
    assert_eq!(heaps["memfd"].bytes, 2 * page_size());
}

#[test]
fn another_owner_cannot_reach_a_buffer_by_id_or_uuid_without_a_grant() {
    let (reg, heap) = (registry(), MemfdHeap::new());
    let (a, b) = (
        reg.add_owner("a", Quota::DEFAULT),
        reg.add_owner("b", Quota::DEFAULT),
    );
    let buf = reg.allocate(a, &heap, &plan(1), 1).unwrap().remove(0);

    assert!(matches!(
        reg.get(b, buf.id),
        Err(RegistryError::NotFound(_))
    ));
    assert!(matches!(
        reg.free(b, buf.id),
        Err(RegistryError::NotFound(_))
    ));
    assert!(matches!(
        reg.dup_fd(b, buf.id),
        Err(RegistryError::NotFound(_))
    ));
    let err = reg.import(b, buf.uuid).unwrap_err();
    assert!(matches!(err, RegistryError::NotGranted { .. }), "{err}");
    assert!(reg.get(a, buf.id).is_ok());
}

#[test]
fn granted_owner_imports_and_its_free_drops_only_its_reference() {
    let (reg, heap) = (registry(), MemfdHeap::new());
    let (a, b) = (
        reg.add_owner("a", Quota::DEFAULT),
        reg.add_owner("b", Quota::DEFAULT),
    );
    let buf = reg.allocate(a, &heap, &plan(1), 1).unwrap().remove(0);

    reg.grant(a, buf.id, "b", Access::ReadOnly).unwrap();
    let imported = reg.import(b, buf.uuid).unwrap();
    reg.free(b, buf.id).unwrap();

    assert_eq!(
        (imported.id, imported.access, imported.owned),
        (buf.id, Access::ReadOnly, false)
    );
    assert!(matches!(
        reg.get(b, buf.id),
        Err(RegistryError::NotFound(_))
    ));
    assert!(reg.get(a, buf.id).is_ok());
    assert!(matches!(
        reg.grant(b, buf.id, "c", Access::ReadOnly),
        Err(RegistryError::NotFound(_))
    ));
}

#[test]
fn importer_may_not_grant_onwards() {
    let (reg, heap) = (registry(), MemfdHeap::new());
    let (a, b) = (
        reg.add_owner("a", Quota::DEFAULT),
        reg.add_owner("b", Quota::DEFAULT),
    );
    let buf = reg.allocate(a, &heap, &plan(1), 1).unwrap().remove(0);
    reg.grant(a, buf.id, "b", Access::ReadWrite).unwrap();
    reg.import(b, buf.uuid).unwrap();

    let err = reg.grant(b, buf.id, "c", Access::ReadWrite).unwrap_err();

    assert!(matches!(err, RegistryError::NotOwner(..)), "{err}");
}

#[test]
fn over_the_buffer_quota_names_the_limit_and_other_owners_are_unaffected() {
    let (reg, heap) = (registry(), MemfdHeap::new());
    let a = reg.add_owner("vm-a", quota(0, 2));
    let b = reg.add_owner("vm-b", quota(0, 2));
    reg.allocate(a, &heap, &plan(1), 2).unwrap();

    let err = reg.allocate(a, &heap, &plan(1), 1).unwrap_err();

    assert_eq!(
        err.to_string(),
        "\"vm-a\" would exceed its buffer quota: 1 more on top of 2 exceeds 2"
    );
    assert_eq!(reg.owner_stats(a).unwrap().buffers, 2);
    assert_eq!(reg.allocate(b, &heap, &plan(1), 2).unwrap().len(), 2);
}

#[test]
fn over_the_byte_quota_is_refused_before_allocating() {
    let (reg, heap) = (registry(), MemfdHeap::new());
    let a = reg.add_owner("vm-a", quota(3 * page_size(), 0));

    let err = reg.allocate(a, &heap, &plan(1), 4).unwrap_err();

    assert!(
        matches!(
            err,
            RegistryError::QuotaExceeded {
                limit: Limit::Bytes,
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(
        reg.heap_stats().get("memfd").map_or(0, |s| s.allocations),
        0
    );
    assert_eq!(reg.owner_stats(a).unwrap().bytes, 0);
}

#[test]
fn global_limit_applies_across_owners() {
    let global = GlobalLimits {
        buffers: 3,
        ..GlobalLimits::default()
    };
    let (reg, heap) = (
        Registry::new(global, PoolLimits::default()),
        MemfdHeap::new(),
    );
    let (a, b) = (
        reg.add_owner("a", Quota::DEFAULT),
        reg.add_owner("b", Quota::DEFAULT),
    );
    reg.allocate(a, &heap, &plan(1), 2).unwrap();

    let err = reg.allocate(b, &heap, &plan(1), 2).unwrap_err();

    assert!(
        matches!(
            err,
            RegistryError::GlobalLimit {
                limit: Limit::Buffers,
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(reg.allocate(b, &heap, &plan(1), 1).unwrap().len(), 1);
}

#[test]
fn in_flight_quota_is_per_owner_and_released_on_drop() {
    let reg = registry();
    let a = reg.add_owner("a", quota(0, 0));
    let b = reg.add_owner("b", quota(0, 0));
    let first = reg.begin_request(a).unwrap();
    let _second = reg.begin_request(a).unwrap();

    let err = reg.begin_request(a).unwrap_err();
    let other = reg.begin_request(b);
    drop(first);

    assert!(matches!(
        err,
        RegistryError::QuotaExceeded {
            limit: Limit::InFlight,
            ..
        }
    ));
    assert!(other.is_ok());
    assert!(reg.begin_request(a).is_ok());
}

#[test]
fn count_times_size_overflow_is_a_clear_error() {
    let (reg, heap) = (registry(), MemfdHeap::new());
    let a = reg.add_owner("a", quota(0, 0));

    let err = reg.allocate(a, &heap, &plan(u64::MAX / 2), 4).unwrap_err();

    assert!(matches!(err, RegistryError::SizeOverflow { .. }), "{err}");
}

#[test]
fn zero_size_is_a_heap_error() {
    let (reg, heap) = (registry(), MemfdHeap::new());
    let a = reg.add_owner("a", Quota::DEFAULT);

    let err = reg.allocate(a, &heap, &plan(0), 1).unwrap_err();

    assert!(
        matches!(
            err,
            RegistryError::Allocate {
                source: HeapError::ZeroSize,
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn free_tears_views_down_newest_first_then_recycles_memory() {
    let (reg, heap) = (registry(), MemfdHeap::new());
    let a = reg.add_owner("a", Quota::DEFAULT);
    let buf = reg.allocate(a, &heap, &plan(1), 1).unwrap().remove(0);
    let order = Arc::new(Mutex::new(Vec::new()));
    for name in ["first", "second", "third"] {
        let order = order.clone();
        let teardown = Box::new(move || order.lock().unwrap().push(name));
        reg.add_view(a, buf.id, ViewKind::Other(name), teardown)
            .unwrap();
    }
    let inode = rustix::fs::fstat(buf.memory.fd()).unwrap().st_ino;
    drop(buf.memory);

    reg.free(a, buf.id).unwrap();

    assert_eq!(*order.lock().unwrap(), ["third", "second", "first"]);
    let stats = reg.owner_stats(a).unwrap();
    assert_eq!(
        (stats.buffers, stats.bytes),
        (0, page_size()),
        "pooled bytes still count"
    );
    let again = reg.allocate(a, &heap, &plan(1), 1).unwrap().remove(0);
    assert_eq!(rustix::fs::fstat(again.memory.fd()).unwrap().st_ino, inode);
}

#[test]
fn buffer_imported_by_another_owner_is_never_recycled() {
    let (reg, heap) = (registry(), MemfdHeap::new());
    let (a, b) = (
        reg.add_owner("a", Quota::DEFAULT),
        reg.add_owner("b", Quota::DEFAULT),
    );
    let buf = reg.allocate(a, &heap, &plan(1), 1).unwrap().remove(0);
    reg.grant(a, buf.id, "b", Access::ReadOnly).unwrap();
    reg.import(b, buf.uuid).unwrap();
    drop(buf.memory);

    reg.free(a, buf.id).unwrap();

    assert_eq!(reg.owner_stats(a).unwrap().bytes, 0);
    assert!(matches!(
        reg.get(b, buf.id),
        Err(RegistryError::NotFound(_))
    ));
}

#[test]
fn pooled_memory_is_freed_when_only_it_blocks_the_byte_quota() {
    let (reg, heap) = (registry(), MemfdHeap::new());
    let a = reg.add_owner("a", quota(2 * page_size(), 0));
    let buf = reg.allocate(a, &heap, &plan(1), 1).unwrap().remove(0);
    drop(buf.memory);
    reg.free(a, buf.id).unwrap();

    let two = reg.allocate(a, &heap, &plan(2 * page_size()), 1);

    assert!(two.is_ok(), "{two:?}");
    assert_eq!(reg.owner_stats(a).unwrap().bytes, 2 * page_size());
}

#[test]
fn add_view_for_a_buffer_not_held_runs_the_teardown_and_fails() {
    let (reg, heap) = (registry(), MemfdHeap::new());
    let (a, b) = (
        reg.add_owner("a", Quota::DEFAULT),
        reg.add_owner("b", Quota::DEFAULT),
    );
    let buf = reg.allocate(a, &heap, &plan(1), 1).unwrap().remove(0);
    let ran = Arc::new(Mutex::new(false));
    let flag = ran.clone();

    let err = reg.add_view(
        b,
        buf.id,
        ViewKind::CpuMapping,
        Box::new(move || *flag.lock().unwrap() = true),
    );

    assert!(matches!(err, Err(RegistryError::NotFound(_))));
    assert!(*ran.lock().unwrap());
}

#[test]
fn remove_owner_drops_imports_then_own_buffers_newest_first() {
    let (reg, heap) = (registry(), MemfdHeap::new());
    let (a, b) = (
        reg.add_owner("a", Quota::DEFAULT),
        reg.add_owner("b", Quota::DEFAULT),
    );
    let order = Arc::new(Mutex::new(Vec::new()));
    let record = |name: &'static str| {
        let order = order.clone();
        Box::new(move || order.lock().unwrap().push(name)) as Teardown
    };
    let theirs = reg.allocate(b, &heap, &plan(1), 1).unwrap().remove(0);
    reg.grant(b, theirs.id, "a", Access::ReadWrite).unwrap();
    let mine = reg.allocate(a, &heap, &plan(1), 2).unwrap();
    reg.add_view(a, mine[0].id, ViewKind::CpuMapping, record("old"))
        .unwrap();
    reg.add_view(a, mine[1].id, ViewKind::CpuMapping, record("new"))
        .unwrap();
    reg.import(a, theirs.uuid).unwrap();
    reg.add_view(a, theirs.id, ViewKind::CpuMapping, record("import"))
        .unwrap();

    let removed = reg.remove_owner(a);

    assert_eq!(*order.lock().unwrap(), ["import", "new", "old"]);
    assert_eq!((removed.buffers, removed.imports, removed.views), (2, 1, 3));
    assert!(matches!(
        reg.owner_stats(a),
        Err(RegistryError::UnknownOwner(_))
    ));
    assert!(reg.get(b, theirs.id).is_ok());
    assert_eq!(reg.total_bytes(), page_size());
    assert_eq!(reg.heap_stats()["memfd"].buffers, 1);
}

/// Shared memory this process has mapped (`RssShmem` in `/proc/self/status`), in bytes.
pub(crate) fn rss_shmem() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status
        .lines()
        .find_map(|l| l.strip_prefix("RssShmem:"))
        .unwrap();
    line.trim()
        .trim_end_matches("kB")
        .trim()
        .parse::<u64>()
        .unwrap()
        * 1024
}

isolated_test!(
    /// Removing an owner closes every descriptor and unmaps every mapping it caused.
    fn remove_owner_returns_descriptors_and_resident_memory() {
        let (reg, heap) = (registry(), MemfdHeap::new());
        let (fds_before, rss_before) = (open_fds(), rss_shmem());
        let owner = reg.add_owner("a", Quota::DEFAULT);
        for buf in reg.allocate(owner, &heap, &plan(4 << 20), 4).unwrap() {
            let mapping = buf.memory.map(true).unwrap();
            mapping.fill(0xa5).unwrap();
            let view = Box::new(move || drop(mapping));
            reg.add_view(owner, buf.id, ViewKind::CpuMapping, view)
                .unwrap();
        }
        let buf = reg.allocate(owner, &heap, &plan(1), 1).unwrap().remove(0);
        drop(buf.memory);
        reg.free(owner, buf.id).unwrap();
        assert_eq!(open_fds().len(), fds_before.len() + 5, "4 live + 1 pooled");
        assert!(rss_shmem() >= rss_before + (16 << 20));

        let removed = reg.remove_owner(owner);

        assert_eq!((removed.buffers, removed.views, removed.pooled), (4, 4, 1));
        assert_eq!(open_fds(), fds_before);
        assert!(
            rss_shmem() < rss_before + (1 << 20),
            "{} vs {rss_before}",
            rss_shmem()
        );
        assert_eq!(reg.total_bytes(), 0);
    }
);

#[test]
fn no_pool_frees_memory_at_once() {
    let (reg, heap) = (
        Registry::new(GlobalLimits::default(), no_pool()),
        MemfdHeap::new(),
    );
    let a = reg.add_owner("a", Quota::DEFAULT);
    let buf = reg.allocate(a, &heap, &plan(1), 1).unwrap().remove(0);
    drop(buf.memory);

    reg.free(a, buf.id).unwrap();

    assert_eq!(reg.total_bytes(), 0);
}

#[test]
fn wait_until_wakes_when_another_thread_frees_the_last_buffer() {
    let reg = Arc::new(Registry::new(GlobalLimits::default(), no_pool()));
    let heap = MemfdHeap::new();
    let owner = reg.add_owner("vm-1", Quota::DEFAULT);
    let buf = reg.allocate(owner, &heap, &plan(100), 1).unwrap().remove(0);
    assert!(!reg.wait_until(std::time::Duration::ZERO, |r| r.total_bytes() == 0));

    let freer = {
        let reg = reg.clone();
        std::thread::spawn(move || reg.free(owner, buf.id).unwrap())
    };

    assert!(reg.wait_until(std::time::Duration::from_secs(10), |r| r.total_bytes() == 0));
    freer.join().unwrap();
}
