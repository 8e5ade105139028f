//! Memory the device reads and writes: locked anonymous pages and their guest-physical
//! addresses from `/proc/self/pagemap`.
//!
//! Without an IOMMU (or with a device that bypasses it, as vhost-user devices do) the device
//! uses guest-physical addresses. The pages are populated and locked (`mlock`) so they stay
//! resident, and transparent huge pages are disabled on them so khugepaged does not collapse
//! them into new frames. Reading pagemap PFNs needs `CAP_SYS_ADMIN`. Locked pages can still
//! be moved by memory compaction when `vm.compact_unevictable_allowed` is 1 (the default);
//! `DmaMemory::still_at` re-reads the addresses so a driver can detect that.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::ptr::NonNull;

use rustix::mm::{MapFlags, ProtFlags};

use super::VirtioPciError;

/// Page size the driver assumes (x86-64 and arm64 4 KiB kernels).
pub const PAGE_SIZE: usize = 4096;

/// Locked, zeroed memory with the physical address of each page.
#[derive(Debug)]
pub struct DmaMemory {
    ptr: NonNull<u8>,
    len: usize,
    pages: Vec<u64>,
    owned: bool,
    identity: bool,
}

// SAFETY: the memory is owned by this value and only accessed through its raw-pointer
// methods; the device's concurrent access is what volatile accesses and fences in the queue
// code are for.
unsafe impl Send for DmaMemory {}

impl DmaMemory {
    /// Allocates `len` bytes (rounded up to pages), locks them and translates every page.
    pub fn new(len: usize) -> Result<Self, VirtioPciError> {
        let len = len.div_ceil(PAGE_SIZE).max(1) * PAGE_SIZE;
        // SAFETY: a fresh anonymous private mapping at a kernel-chosen address aliases nothing;
        // it is unmapped once, in Drop.
        let raw = unsafe {
            rustix::mm::mmap_anonymous(
                std::ptr::null_mut(),
                len,
                ProtFlags::READ | ProtFlags::WRITE,
                MapFlags::PRIVATE | MapFlags::POPULATE | MapFlags::LOCKED,
            )
        }
        .map_err(|e| VirtioPciError::Dma("mmap", e.into()))?;
        let ptr = NonNull::new(raw.cast::<u8>())
            .ok_or(VirtioPciError::Dma("mmap", std::io::Error::other("null")))?;
        let mut mem = DmaMemory {
            ptr,
            len,
            pages: Vec::new(),
            owned: true,
            identity: false,
        };
        // SAFETY: `raw..raw+len` is the mapping just created; the advice changes no contents.
        let advised = unsafe { rustix::mm::madvise(raw, len, rustix::mm::Advice::LinuxNoHugepage) };
        if let Err(e) = advised {
            log::debug!("madvise(MADV_NOHUGEPAGE) failed: {e}");
        }
        // SAFETY: as above; mlock only pins the pages (MAP_LOCKED failures are silent, so
        // lock explicitly to see the error).
        unsafe { rustix::mm::mlock(raw, len) }
            .map_err(|e| VirtioPciError::Dma("mlock", e.into()))?;
        // Touch every page so it is present (POPULATE already did; this is cheap insurance).
        for at in (0..len).step_by(PAGE_SIZE) {
            mem.write_bytes(at, &[0]);
        }
        mem.pages = translate(raw as usize, len)?;
        Ok(mem)
    }

    /// Heap memory whose "physical" addresses are its virtual addresses, for in-process tests
    /// that play the device.
    #[cfg(test)]
    pub fn identity(len: usize) -> Self {
        let len = len.div_ceil(PAGE_SIZE).max(1) * PAGE_SIZE;
        let layout = std::alloc::Layout::from_size_align(len, PAGE_SIZE).unwrap();
        // SAFETY: non-zero size; leaked on purpose (tests only).
        let raw = unsafe { std::alloc::alloc_zeroed(layout) };
        let ptr = NonNull::new(raw).unwrap();
        let pages = (0..len / PAGE_SIZE)
            .map(|i| (raw as usize + i * PAGE_SIZE) as u64)
            .collect();
        DmaMemory {
            ptr,
            len,
            pages,
            owned: false,
            identity: true,
        }
    }

    /// Never unmaps the memory (for pages a device that cannot be stopped may still write).
    pub fn leak(&mut self) {
        self.owned = false;
    }

    /// Length in bytes (whole pages).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether empty (never).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Physical address of byte `at`.
    pub fn phys(&self, at: usize) -> Option<u64> {
        let page = self.pages.get(at / PAGE_SIZE)?;
        Some(page + (at % PAGE_SIZE) as u64)
    }

    /// The physically contiguous runs `(address, length)` covering `at..at+len`.
    pub fn runs(&self, at: usize, len: usize) -> Option<Vec<(u64, u32)>> {
        let end = at.checked_add(len)?;
        if end > self.len {
            return None;
        }
        let mut runs: Vec<(u64, u32)> = Vec::new();
        let mut pos = at;
        while pos < end {
            let chunk = (PAGE_SIZE - pos % PAGE_SIZE).min(end - pos);
            let pa = self.phys(pos)?;
            let chunk32 = u32::try_from(chunk).ok()?;
            match runs.last_mut() {
                Some((start, l)) if *start + u64::from(*l) == pa => *l += chunk32,
                _ => runs.push((pa, chunk32)),
            }
            pos += chunk;
        }
        Some(runs)
    }

    /// Whether every page is still at the address recorded at allocation.
    pub fn still_at(&self) -> bool {
        if self.identity {
            return true;
        }
        translate(self.ptr.as_ptr() as usize, self.len).is_ok_and(|p| p == self.pages)
    }

    /// A pointer to `T` at `at`, if it is aligned and in bounds.
    pub fn ptr<T>(&self, at: usize) -> Option<*mut T> {
        let end = at.checked_add(std::mem::size_of::<T>())?;
        if end > self.len || at % std::mem::align_of::<T>() != 0 {
            return None;
        }
        Some(self.ptr.as_ptr().wrapping_add(at).cast::<T>())
    }

    /// Copies `data` to `at` (bounds checked; false when out of bounds).
    pub fn write_bytes(&self, at: usize, data: &[u8]) -> bool {
        match at.checked_add(data.len()) {
            Some(end) if end <= self.len => {
                // SAFETY: `at..end` is inside the owned mapping; raw copy, no references.
                unsafe {
                    std::ptr::copy_nonoverlapping(
                        data.as_ptr(),
                        self.ptr.as_ptr().add(at),
                        data.len(),
                    )
                };
                true
            }
            _ => false,
        }
    }

    /// Copies `len` bytes at `at` out (None when out of bounds).
    pub fn read_bytes(&self, at: usize, len: usize) -> Option<Vec<u8>> {
        let end = at.checked_add(len)?;
        if end > self.len {
            return None;
        }
        let mut out = vec![0u8; len];
        // SAFETY: `at..end` is inside the owned mapping; `out` has `len` bytes.
        unsafe { std::ptr::copy_nonoverlapping(self.ptr.as_ptr().add(at), out.as_mut_ptr(), len) };
        Some(out)
    }
}

impl Drop for DmaMemory {
    fn drop(&mut self) {
        if self.owned {
            // SAFETY: exactly the mapping created in `new`, unmapped once. The device must no
            // longer use it: the transport resets the device before dropping its queues.
            if let Err(e) = unsafe { rustix::mm::munmap(self.ptr.as_ptr().cast(), self.len) } {
                log::warn!("munmap of DMA memory failed: {e}");
            }
        }
    }
}

/// Physical addresses of the pages of `va..va+len` from `/proc/self/pagemap`.
fn translate(va: usize, len: usize) -> Result<Vec<u64>, VirtioPciError> {
    let f = File::open("/proc/self/pagemap")
        .map_err(|e| VirtioPciError::Dma("open /proc/self/pagemap", e))?;
    let mut pages = Vec::with_capacity(len / PAGE_SIZE);
    for i in 0..len / PAGE_SIZE {
        let vpn = (va / PAGE_SIZE + i) as u64;
        let mut e = [0u8; 8];
        f.read_exact_at(&mut e, vpn * 8)
            .map_err(|e| VirtioPciError::Dma("read /proc/self/pagemap", e))?;
        let entry = u64::from_le_bytes(e);
        if entry >> 63 == 0 {
            return Err(VirtioPciError::PageNotPresent);
        }
        let pfn = entry & ((1 << 55) - 1);
        if pfn == 0 {
            return Err(VirtioPciError::NoPhysicalAddresses);
        }
        pages.push(pfn * PAGE_SIZE as u64);
    }
    Ok(pages)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Real pagemap translation; needs root (CAP_SYS_ADMIN), as the driver does.
    #[test]
    fn new_locks_and_translates_every_page_as_root() {
        if !rustix::process::geteuid().is_root() {
            eprintln!("skipped: not root");
            return;
        }

        let mem = DmaMemory::new(3 * PAGE_SIZE + 1).unwrap();

        assert_eq!(mem.len(), 4 * PAGE_SIZE);
        assert!(
            mem.pages
                .iter()
                .all(|&pa| pa != 0 && pa % PAGE_SIZE as u64 == 0)
        );
        assert!(mem.still_at());
        assert_eq!(mem.phys(5).unwrap(), mem.pages[0] + 5);
    }

    #[test]
    fn runs_merge_contiguous_pages_and_split_at_gaps() {
        let mut mem = DmaMemory::identity(4 * PAGE_SIZE);
        let base = mem.pages[0];
        mem.pages = vec![base, base + 4096, base + 3 * 4096, base + 4 * 4096];

        let runs = mem.runs(100, 4 * PAGE_SIZE - 200).unwrap();

        assert_eq!(
            runs,
            vec![
                (base + 100, 2 * 4096 - 100),
                (base + 3 * 4096, 2 * 4096 - 100)
            ]
        );
        assert!(mem.runs(1, 4 * PAGE_SIZE).is_none());
    }
}
