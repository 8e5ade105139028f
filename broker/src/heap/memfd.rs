//! The memfd heap: sealed, preallocated memfds (and their hugetlb variants).
//!
//! Every memfd the broker allocates is
//!
//! 1. created with `MFD_ALLOW_SEALING | MFD_CLOEXEC` (plus `MFD_NOEXEC_SEAL` where the kernel
//!    knows it, so buffer memory can never be mapped executable);
//! 2. sized with `ftruncate` and preallocated with `fallocate`, so a full tmpfs or an empty
//!    huge-page pool fails the allocation with `ENOSPC` instead of a peer taking SIGBUS on a
//!    later page fault;
//! 3. sealed with `F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL`: no holder of the fd (guest VMM,
//!    host client) can shrink it under another's mapping (SIGBUS) or grow it past the accounted
//!    size, and no one can add or remove seals later.
//!
//! Not `F_SEAL_WRITE`: it fails while any writable shared mapping exists and forbids new ones,
//! but buffers are written through shared mappings by guests, devices and the broker after
//! allocation, and udmabuf refuses memfds carrying it. Buffers that nobody writes after the
//! broker initialises them get `F_SEAL_FUTURE_WRITE` instead ([`MemfdHeap::allocate_read_only`]):
//! it forbids new writable mappings and `write(2)` but leaves the initialising mapping alone.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bufbroker_proto::{CacheMode, HeapInfo, HeapKind};
use rustix::fs::{FallocateFlags, MemfdFlags, SealFlags};
use rustix::io::Errno;

use super::{Backing, Heap, HeapBuffer, HeapError, Mapping, check_limit, page_size, round_size};

/// The seals every broker memfd carries (see the module documentation).
pub(crate) const BUFFER_SEALS: SealFlags = SealFlags::SHRINK
    .union(SealFlags::GROW)
    .union(SealFlags::SEAL);

/// Set once the kernel rejected `MFD_NOEXEC_SEAL` (before Linux 6.3).
static NOEXEC_SEAL_UNSUPPORTED: AtomicBool = AtomicBool::new(false);

/// A huge-page size for hugetlb memfds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct HugePageSize(u64);

impl HugePageSize {
    /// A huge-page size in bytes; `None` unless it is a power of two of at least 64 KiB.
    pub fn from_bytes(bytes: u64) -> Option<Self> {
        (bytes.is_power_of_two() && bytes >= 64 << 10).then_some(HugePageSize(bytes))
    }

    /// Size in bytes.
    pub fn bytes(self) -> u64 {
        self.0
    }

    /// `MFD_HUGETLB` with the page size encoded as `log2(size) << MFD_HUGE_SHIFT`.
    fn memfd_flags(self) -> MemfdFlags {
        const MFD_HUGE_SHIFT: u32 = 26;
        MemfdFlags::HUGETLB
            | MemfdFlags::from_bits_retain(self.0.trailing_zeros() << MFD_HUGE_SHIFT)
    }

    /// Short label: `2M`, `1G`, `64K`.
    pub fn label(self) -> String {
        match self.0 {
            b if b >= 1 << 30 && b % (1 << 30) == 0 => format!("{}G", b >> 30),
            b if b >= 1 << 20 && b % (1 << 20) == 0 => format!("{}M", b >> 20),
            b => format!("{}K", b >> 10),
        }
    }
}

/// Sealed, preallocated memfds: the heap that is always there.
#[derive(Debug)]
pub struct MemfdHeap {
    info: HeapInfo,
    name: Arc<str>,
    huge: Option<HugePageSize>,
}

impl Default for MemfdHeap {
    fn default() -> Self {
        Self::new()
    }
}

impl MemfdHeap {
    /// The normal memfd heap (`memfd`), backed by shmem pages, with the default size limit
    /// ([`MemfdHeap::default_max_size`]).
    pub fn new() -> Self {
        Self::with_max_size(Self::default_max_size())
    }

    /// The normal memfd heap with a size limit for one buffer (0 means none: a request for
    /// more memory than the machine has then runs the system out of memory while `fallocate`
    /// preallocates, and the OOM killer ends the broker or some other process).
    pub fn with_max_size(max_size: u64) -> Self {
        let info = HeapInfo {
            max_size,
            ..HeapInfo::memfd()
        };
        Self::with_info(info, None)
    }

    /// Half of physical memory (`MemTotal` in `/proc/meminfo`), or 1 GiB where that cannot be
    /// read. A sanity limit for one buffer; quotas are the registry's business.
    pub fn default_max_size() -> u64 {
        let page = page_size();
        mem_total().map_or(1 << 30, |total| (total / 2) & !(page - 1))
    }

    /// A hugetlb memfd heap (`memfd-hugetlb-2M`, ...) for one huge-page size. `pool_bytes` (the
    /// pool's size, 0 for unknown) becomes the heap's `max_size`.
    pub fn hugetlb(page: HugePageSize, pool_bytes: u64) -> Self {
        let info = HeapInfo {
            name: format!("memfd-hugetlb-{}", page.label()),
            max_size: pool_bytes,
            ..HeapInfo::memfd()
        };
        Self::with_info(info, Some(page))
    }

    /// A plain memfd heap under another name (the memfds behind udmabufs).
    pub(crate) fn named(name: &str) -> Self {
        let info = HeapInfo {
            name: name.to_owned(),
            ..HeapInfo::memfd()
        };
        Self::with_info(info, None)
    }

    /// The heap's name, shared with its buffers.
    pub(crate) fn name(&self) -> Arc<str> {
        self.name.clone()
    }

    fn with_info(info: HeapInfo, huge: Option<HugePageSize>) -> Self {
        MemfdHeap {
            name: Arc::from(info.name.as_str()),
            info,
            huge,
        }
    }

    fn flags(&self) -> MemfdFlags {
        let base = MemfdFlags::ALLOW_SEALING | MemfdFlags::CLOEXEC;
        self.huge.map_or(base, |page| base | page.memfd_flags())
    }

    /// The size to allocate for a request: rounded up and within limits.
    fn checked_size(&self, size: u64) -> Result<u64, HeapError> {
        let size = round_size(size, Heap::granularity(self))?;
        check_limit(&self.info, size)?;
        Ok(size)
    }

    /// A preallocated memfd of `size` bytes carrying `seals`.
    pub(crate) fn create_memfd(&self, size: u64, seals: SealFlags) -> Result<OwnedFd, HeapError> {
        let fd = memfd_create(&self.name, self.flags())?;
        preallocate(fd.as_fd(), size)?;
        rustix::fs::fcntl_add_seals(&fd, seals).map_err(HeapError::Seal)?;
        Ok(fd)
    }

    /// Allocates a buffer that nobody writes after `init` fills it: the memfd additionally gets
    /// `F_SEAL_FUTURE_WRITE`, so no peer can map it writable or `write(2)` to it. `init` gets a
    /// writable mapping that is unmapped before the seal is applied.
    pub fn allocate_read_only(
        &self,
        size: u64,
        init: impl FnOnce(&Mapping) -> Result<(), HeapError>,
    ) -> Result<HeapBuffer, HeapError> {
        let size = self.checked_size(size)?;
        let fd = self.create_memfd(size, SealFlags::SHRINK | SealFlags::GROW)?;
        {
            let mapping = Mapping::new(fd.as_fd(), 0, size, true)?;
            init(&mapping)?;
        }
        rustix::fs::fcntl_add_seals(&fd, SealFlags::FUTURE_WRITE | SealFlags::SEAL)
            .map_err(HeapError::Seal)?;
        Ok(HeapBuffer::new(Backing::Memfd(fd), size, self.name.clone()))
    }
}

impl Heap for MemfdHeap {
    fn info(&self) -> &HeapInfo {
        &self.info
    }

    /// The page or huge-page size.
    fn granularity(&self) -> u64 {
        self.huge.map_or_else(page_size, HugePageSize::bytes)
    }

    fn allocate(&self, size: u64) -> Result<HeapBuffer, HeapError> {
        let size = self.checked_size(size)?;
        let fd = self.create_memfd(size, BUFFER_SEALS)?;
        Ok(HeapBuffer::new(Backing::Memfd(fd), size, self.name.clone()))
    }
}

/// `MemTotal` from `/proc/meminfo`, in bytes.
fn mem_total() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = meminfo.lines().find_map(|l| l.strip_prefix("MemTotal:"))?;
    let kib: u64 = line.trim().strip_suffix("kB")?.trim().parse().ok()?;
    kib.checked_mul(1024)
}

/// `memfd_create("bufbroker:<heap>", flags)`, adding `MFD_NOEXEC_SEAL` where the kernel has it.
fn memfd_create(heap: &str, flags: MemfdFlags) -> Result<OwnedFd, HeapError> {
    let name = format!("bufbroker:{heap}");
    let error = |source| HeapError::CreateMemfd {
        heap: heap.to_owned(),
        source,
    };
    if NOEXEC_SEAL_UNSUPPORTED.load(Ordering::Relaxed) {
        return rustix::fs::memfd_create(&name, flags).map_err(error);
    }
    match rustix::fs::memfd_create(&name, flags | MemfdFlags::NOEXEC_SEAL) {
        Ok(fd) => Ok(fd),
        // EINVAL may also mean bad flags (an unsupported huge-page size): only a retry that
        // succeeds without MFD_NOEXEC_SEAL proves the kernel lacks it.
        Err(Errno::INVAL) => {
            let fd = rustix::fs::memfd_create(&name, flags).map_err(error)?;
            NOEXEC_SEAL_UNSUPPORTED.store(true, Ordering::Relaxed);
            Ok(fd)
        }
        Err(e) => Err(error(e)),
    }
}

/// Sets the size of a fresh file and backs all of it with memory (`ftruncate` + `fallocate`).
pub(crate) fn preallocate(fd: BorrowedFd<'_>, size: u64) -> Result<(), HeapError> {
    rustix::fs::ftruncate(fd, size).map_err(|source| HeapError::Resize { size, source })?;
    rustix::fs::fallocate(fd, FallocateFlags::empty(), 0, size)
        .map_err(|source| HeapError::Preallocate { size, source })
}

/// The cache mode and coherency of plain system memory (memfd, udmabuf, the `system` heap).
pub(crate) fn system_memory_info(name: &str, kind: HeapKind, dmabuf: bool) -> HeapInfo {
    HeapInfo {
        name: name.to_owned(),
        kind,
        dmabuf,
        cache_mode: CacheMode::Cached,
        ..HeapInfo::memfd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::heap::test_util::{isolated_test, open_fds, private_tmpfs, rlimit_leaving_free};

    #[test]
    fn allocate_rounds_up_and_seals_shrink_grow_seal() {
        let heap = MemfdHeap::new();
        let buf = heap.allocate(1000).unwrap();
        assert_eq!(buf.size(), page_size());
        assert_eq!(buf.heap_name(), "memfd");
        assert!(buf.dmabuf().is_none());
        let memfd = buf.memfd().unwrap();
        let seals = rustix::fs::fcntl_get_seals(memfd).unwrap();
        assert!(seals.contains(BUFFER_SEALS), "{seals:?}");
        assert!(!seals.contains(SealFlags::WRITE));
        assert!(!seals.contains(SealFlags::FUTURE_WRITE));
        assert_eq!(
            rustix::fs::fstat(memfd).unwrap().st_size as u64,
            page_size()
        );
    }

    #[test]
    fn memfds_are_never_executable() {
        let buf = MemfdHeap::new().allocate(page_size()).unwrap();
        let seals = rustix::fs::fcntl_get_seals(buf.fd()).unwrap();
        // MFD_NOEXEC_SEAL (Linux 6.3+) clears the execute bits and seals them.
        if !NOEXEC_SEAL_UNSUPPORTED.load(Ordering::Relaxed) {
            assert!(seals.contains(SealFlags::EXEC), "{seals:?}");
            let mode = rustix::fs::fstat(buf.fd()).unwrap().st_mode;
            assert_eq!(mode & 0o111, 0, "{mode:o}");
        }
    }

    #[test]
    fn allocate_is_preallocated() {
        let heap = MemfdHeap::new();
        let buf = heap.allocate(16 * page_size()).unwrap();
        let st = rustix::fs::fstat(buf.fd()).unwrap();
        // st_blocks counts 512-byte units: all pages are backed before anyone touches them.
        assert_eq!(st.st_blocks as u64 * 512, 16 * page_size());
    }

    #[test]
    fn sealed_memfd_cannot_shrink_grow_or_be_resealed() {
        let buf = MemfdHeap::new().allocate(page_size()).unwrap();
        let fd = buf.fd();
        assert_eq!(rustix::fs::ftruncate(fd, 0), Err(Errno::PERM));
        assert_eq!(rustix::fs::ftruncate(fd, 2 * page_size()), Err(Errno::PERM));
        assert_eq!(
            rustix::fs::fcntl_add_seals(fd, SealFlags::WRITE),
            Err(Errno::PERM)
        );
    }

    #[test]
    fn map_write_then_read_back_through_a_second_mapping() {
        let buf = MemfdHeap::new().allocate(3 * page_size()).unwrap();
        let writer = buf.map(true).unwrap();
        let reader = buf.map(false).unwrap();
        assert_eq!(writer.len() as u64, buf.size());
        let pattern: Vec<u8> = (0..writer.len()).map(|i| (i % 251) as u8).collect();
        writer.write_at(0, &pattern).unwrap();
        let mut back = vec![0; reader.len()];
        reader.read_at(0, &mut back).unwrap();
        assert_eq!(back, pattern);
    }

    #[test]
    fn map_range_maps_a_window_of_the_buffer() {
        let p = page_size();
        let buf = MemfdHeap::new().allocate(4 * p).unwrap();
        buf.map(true)
            .unwrap()
            .write_at(2 * p as usize, b"window")
            .unwrap();
        let window = buf.map_range(2 * p, p, false).unwrap();
        assert_eq!(window.len() as u64, p);
        let mut back = [0; 6];
        window.read_at(0, &mut back).unwrap();
        assert_eq!(&back, b"window");
    }

    #[test]
    fn map_range_outside_or_unaligned_returns_map_range() {
        let p = page_size();
        let buf = MemfdHeap::new().allocate(2 * p).unwrap();
        for (offset, len) in [(p, 2 * p), (1, p), (u64::MAX, 2), (0, 0)] {
            let err = buf.map_range(offset, len, false).unwrap_err();
            let expected = matches!(err, HeapError::MapRange { .. } | HeapError::ZeroSize);
            assert!(expected, "{offset} {len}: {err:?}");
        }
    }

    #[test]
    fn write_through_read_only_mapping_returns_read_only() {
        let buf = MemfdHeap::new().allocate(page_size()).unwrap();
        let reader = buf.map(false).unwrap();
        assert!(matches!(reader.write_at(0, &[1]), Err(HeapError::ReadOnly)));
        assert!(matches!(reader.fill(1), Err(HeapError::ReadOnly)));
    }

    #[test]
    fn access_past_the_end_returns_out_of_bounds() {
        let buf = MemfdHeap::new().allocate(page_size()).unwrap();
        let map = buf.map(true).unwrap();
        let err = map.write_at(map.len() - 1, &[1, 2]).unwrap_err();
        assert!(matches!(err, HeapError::OutOfBounds { .. }));
        let err = map.read_at(usize::MAX, &mut [0]).unwrap_err();
        assert!(matches!(err, HeapError::OutOfBounds { .. }));
    }

    #[test]
    fn allocate_zero_returns_zero_size() {
        let err = MemfdHeap::new().allocate(0).unwrap_err();
        assert!(matches!(err, HeapError::ZeroSize));
        assert_eq!(err.to_string(), "buffer size must not be zero");
    }

    #[test]
    fn allocate_overflowing_size_returns_size_overflow() {
        let err = MemfdHeap::new().allocate(u64::MAX).unwrap_err();
        assert!(matches!(err, HeapError::SizeOverflow { .. }), "{err:?}");
    }

    #[test]
    fn allocate_more_than_half_the_memory_returns_too_large() {
        // Never ask the kernel for such sizes in a test: fallocate on the internal shmem mount
        // has no size limit and runs the machine out of memory (the OOM killer ends the test).
        let heap = MemfdHeap::new();
        let max = heap.info().max_size;
        assert!(max > 0 && max <= mem_total().unwrap() / 2, "{max}");
        let err = heap.allocate(max + 1).unwrap_err();
        assert!(matches!(err, HeapError::TooLarge { .. }), "{err:?}");
        assert!(matches!(
            heap.allocate(1 << 62),
            Err(HeapError::TooLarge { .. })
        ));
    }

    #[test]
    fn allocate_read_only_seals_future_write() {
        let buf = MemfdHeap::new()
            .allocate_read_only(page_size(), |m| m.fill(0xa5))
            .unwrap();
        let seals = rustix::fs::fcntl_get_seals(buf.fd()).unwrap();
        assert!(seals.contains(SealFlags::FUTURE_WRITE | SealFlags::SEAL | SealFlags::SHRINK));
        assert!(matches!(buf.map(true), Err(HeapError::Map { .. })));
        let map = buf.map(false).unwrap();
        let mut byte = [0];
        map.read_at(page_size() as usize - 1, &mut byte).unwrap();
        assert_eq!(byte, [0xa5]);
    }

    #[test]
    fn hugetlb_flags_encode_the_page_size() {
        let two_m = HugePageSize::from_bytes(2 << 20).unwrap();
        assert_eq!(
            two_m.memfd_flags(),
            MemfdFlags::HUGETLB | MemfdFlags::HUGE_2MB
        );
        let one_g = HugePageSize::from_bytes(1 << 30).unwrap();
        assert_eq!(
            one_g.memfd_flags(),
            MemfdFlags::HUGETLB | MemfdFlags::HUGE_1GB
        );
        assert_eq!(two_m.label(), "2M");
        assert_eq!(one_g.label(), "1G");
        assert_eq!(HugePageSize::from_bytes(3 << 20), None);
    }

    #[test]
    fn hugetlb_heap_allocates_when_the_pool_has_pages() {
        let pools = crate::heap::discover::hugetlb_pools("/sys/kernel/mm/hugepages".as_ref())
            .unwrap_or_default();
        let Some(pool) = pools
            .iter()
            .filter_map(|(_, pool)| pool.as_ref().ok())
            .find(|pool| pool.free > 0)
        else {
            crate::heap::test_util::skip(
                "no huge-page pool has free pages (/proc/sys/vm/nr_hugepages is 0)",
            );
            return;
        };
        let page = pool.page;
        let heap = MemfdHeap::hugetlb(page, 0);
        let buf = heap.allocate(1).unwrap();
        assert_eq!(buf.size(), page.bytes());
        assert!(
            rustix::fs::fcntl_get_seals(buf.fd())
                .unwrap()
                .contains(BUFFER_SEALS)
        );
        let map = buf.map(true).unwrap();
        map.write_at(0, b"huge").unwrap();
        // More pages than the pool has left: fails now with ENOSPC, not with SIGBUS later.
        let err = heap.allocate(pool.free * page.bytes()).unwrap_err();
        assert!(
            matches!(
                err,
                HeapError::Preallocate {
                    source: Errno::NOSPC,
                    ..
                }
            ),
            "{err:?}"
        );
    }

    isolated_test!(
        /// The fd-exhaustion test: with RLIMIT_NOFILE at the current count, allocation fails with
        /// a clear EMFILE error and leaves no descriptor behind.
        fn allocate_without_free_fds_returns_create_memfd_error_and_leaks_nothing() {
            use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
            let heap = MemfdHeap::new();
            let keep: Vec<_> = (0..3)
                .map(|_| heap.allocate(page_size()).unwrap())
                .collect();
            let before = open_fds();
            let old = getrlimit(Resource::Nofile);
            let limit = rlimit_leaving_free(&before, 0);
            setrlimit(
                Resource::Nofile,
                Rlimit {
                    current: Some(limit),
                    maximum: old.maximum,
                },
            )
            .unwrap();
            let err = heap.allocate(page_size()).unwrap_err();
            setrlimit(Resource::Nofile, old).unwrap();
            assert!(
                matches!(
                    err,
                    HeapError::CreateMemfd {
                        source: Errno::MFILE,
                        ..
                    }
                ),
                "{err:?}"
            );
            assert_eq!(
                crate::heap::error_chain(&err),
                "creating a memfd for heap memfd failed: Too many open files (os error 24)"
            );
            assert_eq!(open_fds(), before);
            drop(keep);
            assert_eq!(open_fds().len(), before.len() - 3);
        }
    );

    isolated_test!(
        /// A full tmpfs fails `preallocate` with ENOSPC (memfds live on the kernel's internal
        /// shmem mount, which cannot be shrunk, so the test runs the same function on a file in
        /// a 1 MiB tmpfs mounted in a private mount namespace).
        fn preallocate_on_full_tmpfs_returns_enospc() {
            let Some(dir) = private_tmpfs("size=1m") else {
                return;
            };
            let file = rustix::fs::open(
                dir.join("buffer"),
                rustix::fs::OFlags::RDWR | rustix::fs::OFlags::CREATE | rustix::fs::OFlags::CLOEXEC,
                rustix::fs::Mode::from_raw_mode(0o600),
            )
            .unwrap();
            let err = preallocate(file.as_fd(), 4 << 20).unwrap_err();
            assert!(
                matches!(
                    err,
                    HeapError::Preallocate {
                        size: 0x40_0000,
                        source: Errno::NOSPC
                    }
                ),
                "{err:?}"
            );
            assert_eq!(
                crate::heap::error_chain(&err),
                "preallocating 4194304 bytes failed: No space left on device (os error 28)"
            );
            preallocate(file.as_fd(), 512 << 10).unwrap();
        }
    );

    isolated_test!(
        /// Allocating, mapping and dropping many buffers leaves the descriptor table as it was.
        fn allocate_map_drop_leaks_no_fds() {
            let before = open_fds();
            {
                let heap = MemfdHeap::new();
                let bufs: Vec<_> = (0..32)
                    .map(|_| heap.allocate(page_size()).unwrap())
                    .collect();
                let maps: Vec<_> = bufs.iter().map(|b| b.map(true).unwrap()).collect();
                assert_eq!(open_fds().len(), before.len() + 32);
                drop(bufs);
                maps.iter().for_each(|m| m.fill(1).unwrap());
            }
            assert_eq!(open_fds(), before);
        }
    );
}
