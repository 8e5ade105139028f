//! udmabuf: dmabufs made from memfd pages (`/dev/udmabuf`).
//!
//! The kernel's rules (drivers/dma-buf/udmabuf.c), checked here first so that a violation gives
//! a precise error instead of a bare `EINVAL`:
//!
//! - every memfd carries `F_SEAL_SHRINK` and never `F_SEAL_WRITE`;
//! - offsets and sizes are multiples of the page size and lie inside the memfd;
//! - the total size stays within `/sys/module/udmabuf/parameters/size_limit_mb`, the number of
//!   ranges within `list_limit`.
//!
//! [`UdmabufDevice::create_list`] builds one dmabuf over several ranges, possibly of different
//! memfds: guest-RAM placement (ranges of the VMM's guest-memory memfd) and buffers carved from
//! arenas use it. [`UdmabufHeap`] allocates a fresh sealed memfd per buffer and wraps it.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bufbroker_proto::{HeapInfo, HeapKind};
use rustix::fs::{Mode, OFlags, SealFlags};

use super::memfd::{BUFFER_SEALS, MemfdHeap, system_memory_info};
use super::{Backing, Heap, HeapBuffer, HeapError, check_limit, page_size, round_size, uapi};

/// The udmabuf module's limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UdmabufLimits {
    /// Largest dmabuf in bytes (`size_limit_mb` × 1 MiB).
    pub size_limit: u64,
    /// Most ranges in one `UDMABUF_CREATE_LIST` (`list_limit`).
    pub list_limit: u32,
}

impl UdmabufLimits {
    /// The kernel's defaults (`size_limit_mb=64`, `list_limit=1024`).
    pub const KERNEL_DEFAULT: UdmabufLimits = UdmabufLimits {
        size_limit: 64 << 20,
        list_limit: 1024,
    };

    /// Reads `size_limit_mb` and `list_limit` from the module's parameter directory
    /// (normally `/sys/module/udmabuf/parameters`).
    pub fn read(params_dir: &Path) -> Result<Self, HeapError> {
        let size_mb: u64 = read_parameter(&params_dir.join("size_limit_mb"))?;
        let list_limit: u32 = read_parameter(&params_dir.join("list_limit"))?;
        Ok(UdmabufLimits {
            size_limit: size_mb.saturating_mul(1 << 20),
            list_limit,
        })
    }
}

/// Reads one integer from a sysfs/procfs file.
pub(crate) fn read_parameter<T: std::str::FromStr>(path: &Path) -> Result<T, HeapError>
where
    T::Err: std::error::Error + Send + Sync + 'static,
{
    let error = |source| HeapError::ReadParameter {
        path: path.to_owned(),
        source,
    };
    let text = std::fs::read_to_string(path).map_err(error)?;
    text.trim()
        .parse()
        .map_err(|e| error(std::io::Error::new(std::io::ErrorKind::InvalidData, e)))
}

/// One range of a memfd to put into a udmabuf.
#[derive(Debug, Clone, Copy)]
pub struct UdmabufRange<'a> {
    /// A memfd sealed with `F_SEAL_SHRINK` and without `F_SEAL_WRITE`.
    pub memfd: BorrowedFd<'a>,
    /// Page-aligned offset into the memfd.
    pub offset: u64,
    /// Page-aligned, non-zero length.
    pub size: u64,
}

/// An open `/dev/udmabuf` with its limits.
#[derive(Debug)]
pub struct UdmabufDevice {
    fd: OwnedFd,
    path: PathBuf,
    limits: UdmabufLimits,
}

impl UdmabufDevice {
    /// The device node.
    pub const PATH: &'static str = "/dev/udmabuf";
    /// The module's parameter directory.
    pub const PARAMETERS: &'static str = "/sys/module/udmabuf/parameters";

    /// Opens `/dev/udmabuf` and reads the module's limits.
    pub fn open() -> Result<Self, HeapError> {
        Self::open_at(Path::new(Self::PATH), Path::new(Self::PARAMETERS))
    }

    /// Opens the device at `path` and reads the limits from `params_dir`. Where that directory
    /// is missing the kernel defaults are assumed (a built-in udmabuf still has it, so this is
    /// only for unusual kernels).
    pub fn open_at(path: &Path, params_dir: &Path) -> Result<Self, HeapError> {
        let fd = rustix::fs::open(path, OFlags::RDWR | OFlags::CLOEXEC, Mode::empty()).map_err(
            |source| HeapError::Open {
                path: path.to_owned(),
                source,
            },
        )?;
        let limits = if params_dir.exists() {
            UdmabufLimits::read(params_dir)?
        } else {
            log::warn!(
                "{} missing; assuming the kernel's default udmabuf limits",
                params_dir.display()
            );
            UdmabufLimits::KERNEL_DEFAULT
        };
        Ok(UdmabufDevice {
            fd,
            path: path.to_owned(),
            limits,
        })
    }

    /// The device path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The module's limits, as read when the device was opened.
    pub fn limits(&self) -> UdmabufLimits {
        self.limits
    }

    /// A dmabuf over one range of a memfd (`UDMABUF_CREATE`).
    pub fn create(&self, range: UdmabufRange<'_>) -> Result<OwnedFd, HeapError> {
        let total = self.validate(std::slice::from_ref(&range))?;
        uapi::create_udmabuf(self.fd.as_fd(), range.memfd, range.offset, range.size).map_err(
            |source| HeapError::CreateUdmabuf {
                ranges: 1,
                size: total,
                source,
            },
        )
    }

    /// One dmabuf over `ranges`, concatenated in order (`UDMABUF_CREATE_LIST`).
    pub fn create_list(&self, ranges: &[UdmabufRange<'_>]) -> Result<OwnedFd, HeapError> {
        let total = self.validate(ranges)?;
        let items: Vec<_> = ranges.iter().map(|r| (r.memfd, r.offset, r.size)).collect();
        uapi::create_udmabuf_list(self.fd.as_fd(), &items).map_err(|source| {
            HeapError::CreateUdmabuf {
                ranges: ranges.len(),
                size: total,
                source,
            }
        })
    }

    /// Checks the kernel's rules; returns the total size.
    fn validate(&self, ranges: &[UdmabufRange<'_>]) -> Result<u64, HeapError> {
        if ranges.is_empty() {
            return Err(HeapError::ZeroSize);
        }
        if ranges.len() > self.limits.list_limit as usize {
            return Err(HeapError::TooManyRanges {
                count: ranges.len(),
                limit: self.limits.list_limit,
            });
        }
        let page = page_size();
        let mut total: u64 = 0;
        for (index, range) in ranges.iter().enumerate() {
            let invalid = |reason: String| HeapError::InvalidRange { index, reason };
            check_range(range, page).map_err(invalid)?;
            total = total
                .checked_add(range.size)
                .ok_or_else(|| invalid("total size overflows".into()))?;
        }
        if total > self.limits.size_limit {
            return Err(HeapError::TooLarge {
                heap: "udmabuf".into(),
                size: total,
                limit: self.limits.size_limit,
            });
        }
        Ok(total)
    }
}

/// One range against the kernel's rules; the reason when it breaks one.
fn check_range(range: &UdmabufRange<'_>, page: u64) -> Result<(), String> {
    if range.size == 0 {
        return Err("size is zero".into());
    }
    if range.offset % page != 0 || range.size % page != 0 {
        return Err(format!(
            "offset {:#x} and size {:#x} must be multiples of the {page}-byte page",
            range.offset, range.size
        ));
    }
    let end = range
        .offset
        .checked_add(range.size)
        .ok_or_else(|| "offset + size overflows".to_owned())?;
    let seals = rustix::fs::fcntl_get_seals(range.memfd)
        .map_err(|e| format!("not a sealable memfd ({e})"))?;
    if !seals.contains(SealFlags::SHRINK) {
        return Err("memfd lacks F_SEAL_SHRINK".into());
    }
    if seals.contains(SealFlags::WRITE) {
        return Err("memfd carries F_SEAL_WRITE".into());
    }
    let len = rustix::fs::fstat(range.memfd)
        .map_err(|e| format!("fstat failed ({e})"))?
        .st_size;
    if u64::try_from(len).map_or(true, |len| end > len) {
        return Err(format!(
            "range ends at {end:#x}, past the memfd's {len:#x} bytes"
        ));
    }
    Ok(())
}

/// Buffers that are a fresh sealed memfd plus the udmabuf over it.
#[derive(Debug)]
pub struct UdmabufHeap {
    device: Arc<UdmabufDevice>,
    memfd: MemfdHeap,
    info: HeapInfo,
}

impl UdmabufHeap {
    /// The `udmabuf` heap over an open device; its `max_size` is the module's size limit.
    pub fn new(device: Arc<UdmabufDevice>) -> Self {
        let info = HeapInfo {
            max_size: device.limits().size_limit,
            ..system_memory_info("udmabuf", HeapKind::Udmabuf, true)
        };
        UdmabufHeap {
            memfd: MemfdHeap::named(&info.name),
            device,
            info,
        }
    }

    /// The device, for building dmabufs over other memfds.
    pub fn device(&self) -> &Arc<UdmabufDevice> {
        &self.device
    }
}

impl Heap for UdmabufHeap {
    fn info(&self) -> &HeapInfo {
        &self.info
    }

    fn allocate(&self, size: u64) -> Result<HeapBuffer, HeapError> {
        let size = round_size(size, page_size())?;
        check_limit(&self.info, size)?;
        let memfd = self.memfd.create_memfd(size, BUFFER_SEALS)?;
        let dmabuf = self.device.create(UdmabufRange {
            memfd: memfd.as_fd(),
            offset: 0,
            size,
        })?;
        Ok(HeapBuffer::new(
            Backing::Udmabuf { memfd, dmabuf },
            size,
            self.memfd.name(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::heap::test_util::{isolated_test, missing_path, open_fds, rlimit_leaving_free};
    use crate::heap::{SyncAccess, is_dmabuf};

    /// The real device, or `None` after printing why the test is skipped.
    fn device() -> Option<Arc<UdmabufDevice>> {
        match UdmabufDevice::open() {
            Ok(dev) => Some(Arc::new(dev)),
            Err(e) => {
                crate::heap::test_util::skip(&format!(
                    "{} (kernel without CONFIG_UDMABUF, module not loaded, or no access); \
                     these tests run for real in the guest-kernel tier",
                    crate::heap::error_chain(&e)
                ));
                None
            }
        }
    }

    fn sealed_memfd(size: u64) -> OwnedFd {
        MemfdHeap::new().create_memfd(size, BUFFER_SEALS).unwrap()
    }

    #[test]
    fn limits_read_parses_module_parameters() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("size_limit_mb"), "64\n").unwrap();
        std::fs::write(dir.path().join("list_limit"), "1024\n").unwrap();
        assert_eq!(
            UdmabufLimits::read(dir.path()).unwrap(),
            UdmabufLimits::KERNEL_DEFAULT
        );
    }

    #[test]
    fn limits_read_garbage_returns_read_parameter() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("size_limit_mb"), "lots\n").unwrap();
        let err = UdmabufLimits::read(dir.path()).unwrap_err();
        assert!(matches!(err, HeapError::ReadParameter { .. }), "{err:?}");
    }

    #[test]
    fn open_missing_device_returns_open_enoent() {
        let err = UdmabufDevice::open_at(&missing_path(), &missing_path()).unwrap_err();
        assert!(
            matches!(
                err,
                HeapError::Open {
                    source: rustix::io::Errno::NOENT,
                    ..
                }
            ),
            "{err:?}"
        );
    }

    #[test]
    fn check_range_unsealed_memfd_is_rejected() {
        let fd = rustix::fs::memfd_create("t", rustix::fs::MemfdFlags::ALLOW_SEALING).unwrap();
        rustix::fs::ftruncate(&fd, page_size()).unwrap();
        let range = UdmabufRange {
            memfd: fd.as_fd(),
            offset: 0,
            size: page_size(),
        };
        assert_eq!(
            check_range(&range, page_size()).unwrap_err(),
            "memfd lacks F_SEAL_SHRINK"
        );
    }

    #[test]
    fn check_range_write_sealed_memfd_is_rejected() {
        let fd = rustix::fs::memfd_create("t", rustix::fs::MemfdFlags::ALLOW_SEALING).unwrap();
        rustix::fs::ftruncate(&fd, page_size()).unwrap();
        rustix::fs::fcntl_add_seals(&fd, SealFlags::SHRINK | SealFlags::WRITE).unwrap();
        let range = UdmabufRange {
            memfd: fd.as_fd(),
            offset: 0,
            size: page_size(),
        };
        assert_eq!(
            check_range(&range, page_size()).unwrap_err(),
            "memfd carries F_SEAL_WRITE"
        );
    }

    #[test]
    fn check_range_unaligned_or_outside_is_rejected() {
        let fd = sealed_memfd(4 * page_size());
        let p = page_size();
        let at = |offset, size| UdmabufRange {
            memfd: fd.as_fd(),
            offset,
            size,
        };
        assert!(
            check_range(&at(1, p), p)
                .unwrap_err()
                .contains("multiples of the")
        );
        assert!(
            check_range(&at(0, p + 1), p)
                .unwrap_err()
                .contains("multiples of the")
        );
        assert!(
            check_range(&at(0, 0), p)
                .unwrap_err()
                .contains("size is zero")
        );
        assert!(
            check_range(&at(2 * p, 4 * p), p)
                .unwrap_err()
                .contains("past the memfd")
        );
        assert!(
            check_range(&at(u64::MAX - p + 1, p), p)
                .unwrap_err()
                .contains("overflows")
        );
        check_range(&at(p, 3 * p), p).unwrap();
    }

    #[test]
    fn heap_allocates_a_mappable_synced_dmabuf() {
        let Some(dev) = device() else { return };
        let heap = UdmabufHeap::new(dev);
        let buf = heap.allocate(3 * page_size() - 7).unwrap();
        assert_eq!(buf.size(), 3 * page_size());
        let dmabuf = buf.dmabuf().unwrap();
        assert!(is_dmabuf(dmabuf));
        assert!(!is_dmabuf(buf.memfd().unwrap()));
        assert_eq!(
            rustix::fs::seek(dmabuf, rustix::fs::SeekFrom::End(0)).unwrap(),
            buf.size()
        );
        let map = buf.map(true).unwrap();
        let pattern: Vec<u8> = (0..map.len()).map(|i| (i * 7 % 256) as u8).collect();
        {
            let _cpu = buf.begin_cpu_access(SyncAccess::Write).unwrap();
            map.write_at(0, &pattern).unwrap();
        }
        // Read back through a mapping of the dmabuf itself, bracketed by a read sync.
        let dmabuf_map = crate::heap::Mapping::new(dmabuf, 0, buf.size(), false).unwrap();
        let cpu = buf.begin_cpu_access(SyncAccess::Read).unwrap();
        let mut back = vec![0; dmabuf_map.len()];
        dmabuf_map.read_at(0, &mut back).unwrap();
        cpu.end().unwrap();
        assert_eq!(back, pattern);
    }

    #[test]
    fn create_list_concatenates_ranges_of_two_memfds() {
        let Some(dev) = device() else { return };
        let p = page_size();
        let (a, b) = (sealed_memfd(4 * p), sealed_memfd(2 * p));
        for (fd, byte) in [(&a, 0xaa_u8), (&b, 0xbb)] {
            let len = rustix::fs::fstat(fd).unwrap().st_size as u64;
            crate::heap::Mapping::new(fd.as_fd(), 0, len, true)
                .unwrap()
                .fill(byte)
                .unwrap();
        }
        let dmabuf = dev
            .create_list(&[
                UdmabufRange {
                    memfd: a.as_fd(),
                    offset: p,
                    size: 2 * p,
                },
                UdmabufRange {
                    memfd: b.as_fd(),
                    offset: 0,
                    size: p,
                },
            ])
            .unwrap();
        assert!(is_dmabuf(dmabuf.as_fd()));
        assert_eq!(
            rustix::fs::seek(&dmabuf, rustix::fs::SeekFrom::End(0)).unwrap(),
            3 * p
        );
        let map = crate::heap::Mapping::new(dmabuf.as_fd(), 0, 3 * p, false).unwrap();
        let _cpu = crate::heap::CpuAccess::begin(dmabuf.as_fd(), SyncAccess::Read).unwrap();
        let mut back = vec![0; map.len()];
        map.read_at(0, &mut back).unwrap();
        let p = p as usize;
        assert!(back[..2 * p].iter().all(|&x| x == 0xaa));
        assert!(back[2 * p..].iter().all(|&x| x == 0xbb));
    }

    #[test]
    fn create_list_over_the_limits_is_rejected_before_the_kernel() {
        let Some(dev) = device() else { return };
        let p = page_size();
        let limits = dev.limits();
        let fd = sealed_memfd(p);
        let ranges = vec![
            UdmabufRange {
                memfd: fd.as_fd(),
                offset: 0,
                size: p
            };
            limits.list_limit as usize + 1
        ];
        assert!(matches!(
            dev.create_list(&ranges),
            Err(HeapError::TooManyRanges { .. })
        ));
        let heap = UdmabufHeap::new(dev);
        let err = heap.allocate(limits.size_limit + 1).unwrap_err();
        assert!(matches!(err, HeapError::TooLarge { .. }), "{err:?}");
    }

    isolated_test!(
        /// Allocation, mapping and CPU access leave no descriptor behind, and running out of
        /// descriptors between the memfd and the dmabuf closes the memfd again.
        fn udmabuf_allocation_leaks_no_fds() {
            let Some(dev) = device() else { return };
            let heap = UdmabufHeap::new(dev);
            let before = open_fds();
            {
                let bufs: Vec<_> = (0..8)
                    .map(|_| heap.allocate(page_size()).unwrap())
                    .collect();
                assert_eq!(open_fds().len(), before.len() + 16);
                for b in &bufs {
                    let m = b.map(true).unwrap();
                    let _cpu = b.begin_cpu_access(SyncAccess::ReadWrite).unwrap();
                    m.fill(3).unwrap();
                }
            }
            assert_eq!(open_fds(), before);

            use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
            let old = getrlimit(Resource::Nofile);
            // Room for exactly one more descriptor: the memfd succeeds, the udmabuf cannot.
            let limit = rlimit_leaving_free(&before, 1);
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
                    HeapError::CreateUdmabuf {
                        source: rustix::io::Errno::MFILE,
                        ..
                    }
                ),
                "{err:?}"
            );
            assert_eq!(open_fds(), before);
        }
    );
}
