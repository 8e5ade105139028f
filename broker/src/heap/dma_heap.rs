//! dma-heaps: `/dev/dma_heap/<name>` (`DMA_HEAP_IOCTL_ALLOC`).
//!
//! The kernel says nothing about a heap's properties beyond its name, so the broker knows the
//! standard names ([`DmaHeap::known_info`]) and uses any other heap only when it is configured
//! explicitly with a [`HeapInfo`] ([`DmaHeap::open_at`]).

use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bufbroker_proto::{CacheMode, HeapInfo, HeapKind};
use rustix::fs::{Mode, OFlags};

use super::memfd::system_memory_info;
use super::{Backing, Heap, HeapBuffer, HeapError, check_limit, page_size, round_size, uapi};

/// A dma-heap, open.
#[derive(Debug)]
pub struct DmaHeap {
    fd: OwnedFd,
    path: PathBuf,
    info: HeapInfo,
    name: Arc<str>,
}

impl DmaHeap {
    /// Where the kernel puts dma-heap device nodes.
    pub const DIR: &'static str = "/dev/dma_heap";

    /// The properties of the heaps the kernel (and Android's common kernels) name:
    ///
    /// - `system`: scattered pages, cached;
    /// - `system-uncached`: scattered pages, mapped write-combined;
    /// - `default_cma_region`, `reserved`, `linux,cma`: the default CMA area, physically
    ///   contiguous, cached.
    pub fn known_info(name: &str) -> Option<HeapInfo> {
        let system = || system_memory_info(name, HeapKind::DmaHeap, true);
        match name {
            "system" => Some(system()),
            "system-uncached" => Some(HeapInfo {
                cache_mode: CacheMode::WriteCombined,
                ..system()
            }),
            "default_cma_region" | "reserved" | "linux,cma" => Some(HeapInfo {
                contiguous: true,
                ..system()
            }),
            _ => None,
        }
    }

    /// Opens `/dev/dma_heap/<name>` for a heap with known properties.
    pub fn open(name: &str) -> Result<Self, HeapError> {
        let info = Self::known_info(name).ok_or_else(|| HeapError::UnknownDmaHeap(name.into()))?;
        Self::open_at(&Path::new(Self::DIR).join(name), info)
    }

    /// Opens the heap device at `path` with explicitly configured properties (the way to use a
    /// heap the broker does not know). `info.kind` is forced to [`HeapKind::DmaHeap`] and
    /// `info.dmabuf` to true.
    pub fn open_at(path: &Path, info: HeapInfo) -> Result<Self, HeapError> {
        let fd = rustix::fs::open(path, OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty()).map_err(
            |source| HeapError::Open {
                path: path.to_owned(),
                source,
            },
        )?;
        let info = HeapInfo {
            kind: HeapKind::DmaHeap,
            dmabuf: true,
            ..info
        };
        Ok(DmaHeap {
            fd,
            path: path.to_owned(),
            name: Arc::from(info.name.as_str()),
            info,
        })
    }

    /// The device path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Heap for DmaHeap {
    fn info(&self) -> &HeapInfo {
        &self.info
    }

    fn allocate(&self, size: u64) -> Result<HeapBuffer, HeapError> {
        let size = round_size(size, page_size())?;
        check_limit(&self.info, size)?;
        let dmabuf = uapi::dma_heap_alloc(self.fd.as_fd(), size).map_err(|source| {
            HeapError::DmaHeapAlloc {
                heap: self.info.name.clone(),
                size,
                source,
            }
        })?;
        Ok(HeapBuffer::new(
            Backing::DmaBuf(dmabuf),
            size,
            self.name.clone(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::heap::test_util::{isolated_test, open_fds};
    use crate::heap::{SyncAccess, is_dmabuf};

    /// The real `system` heap, or `None` after printing why the test is skipped.
    fn system_heap() -> Option<DmaHeap> {
        match DmaHeap::open("system") {
            Ok(heap) => Some(heap),
            Err(e) => {
                crate::heap::test_util::skip(&format!(
                    "{} (kernel without CONFIG_DMABUF_HEAPS_SYSTEM or no access); \
                     these tests run for real in the guest-kernel tier",
                    crate::heap::error_chain(&e)
                ));
                None
            }
        }
    }

    #[test]
    fn known_names_have_their_properties() {
        let system = DmaHeap::known_info("system").unwrap();
        assert!(!system.contiguous && system.dmabuf && system.cache_mode == CacheMode::Cached);
        assert_eq!(system.kind, HeapKind::DmaHeap);
        let wc = DmaHeap::known_info("system-uncached").unwrap();
        assert_eq!(wc.cache_mode, CacheMode::WriteCombined);
        for cma in ["default_cma_region", "reserved", "linux,cma"] {
            assert!(DmaHeap::known_info(cma).unwrap().contiguous, "{cma}");
        }
        assert_eq!(DmaHeap::known_info("vendor-secure"), None);
    }

    #[test]
    fn open_unknown_name_returns_unknown_dma_heap() {
        let err = DmaHeap::open("vendor-secure").unwrap_err();
        assert_eq!(
            err.to_string(),
            "dma-heap vendor-secure has no known properties; configure them explicitly to use it"
        );
    }

    #[test]
    fn allocating_from_a_non_heap_file_returns_dma_heap_alloc() {
        let file = tempfile::NamedTempFile::new().unwrap();
        let info = HeapInfo {
            name: "fake".into(),
            ..HeapInfo::memfd()
        };
        let heap = DmaHeap::open_at(file.path(), info).unwrap();
        assert_eq!(heap.info().kind, HeapKind::DmaHeap);
        assert!(heap.info().dmabuf);
        let err = heap.allocate(1).unwrap_err();
        assert!(
            matches!(err, HeapError::DmaHeapAlloc { size, source: rustix::io::Errno::NOTTY, .. } if size == page_size()),
            "{err:?}"
        );
    }

    #[test]
    fn system_heap_allocates_a_mappable_synced_dmabuf() {
        let Some(heap) = system_heap() else { return };
        let buf = heap.allocate(5 * page_size() + 1).unwrap();
        assert_eq!(buf.size(), 6 * page_size());
        assert!(buf.memfd().is_none());
        let dmabuf = buf.dmabuf().unwrap();
        assert!(is_dmabuf(dmabuf));
        assert_eq!(
            rustix::fs::seek(dmabuf, rustix::fs::SeekFrom::End(0)).unwrap(),
            buf.size()
        );
        let pattern: Vec<u8> = (0..buf.size()).map(|i| (i % 253) as u8).collect();
        {
            let map = buf.map(true).unwrap();
            let _cpu = buf.begin_cpu_access(SyncAccess::Write).unwrap();
            map.write_at(0, &pattern).unwrap();
        }
        let map = buf.map(false).unwrap();
        let cpu = buf.begin_cpu_access(SyncAccess::Read).unwrap();
        let mut back = vec![0; map.len()];
        map.read_at(0, &mut back).unwrap();
        cpu.end().unwrap();
        assert_eq!(back, pattern);
    }

    isolated_test!(
        /// dma-heap allocations, mappings and syncs leave no descriptor behind.
        fn dma_heap_allocation_leaks_no_fds() {
            let Some(heap) = system_heap() else { return };
            let before = open_fds();
            {
                let bufs: Vec<_> = (0..8)
                    .map(|_| heap.allocate(page_size()).unwrap())
                    .collect();
                assert_eq!(open_fds().len(), before.len() + 8);
                for b in &bufs {
                    let m = b.map(true).unwrap();
                    let _cpu = b.begin_cpu_access(SyncAccess::ReadWrite).unwrap();
                    m.fill(9).unwrap();
                }
            }
            assert_eq!(open_fds(), before);
        }
    );
}
