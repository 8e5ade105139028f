//! The real test: QEMU's `edu` device (1234:11e8) behind an emulated intel-iommu, driven
//! through VFIO from inside the Debian guest of `tests/e2e/vfio-tests.sh`.
//!
//! Without an edu device every test returns early (a host `cargo test`), unless
//! `BUFBROKER_REQUIRE_DEVICES=1` (set by the guest script), which makes that a failure.
//! `dma_limit_*` expects a container with at most 64 mappings: the guest script sets
//! `vfio_iommu_type1`'s `dma_entry_limit` to 4 before running it alone.

// Test code: a panic is how a test reports failure.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::fs::File;
use std::os::fd::AsFd;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use bufbroker_proto::{
    ConstraintSet, HeapInfo, Participant, ParticipantId, Request, SolveError, Usage, solve,
};
use bufbroker_vfio::edu::{self, Bar0};
use bufbroker_vfio::{DmaError, DmaSpace, Profiles, VfioDevice, derive_participant, sysfs};

/// The edu device bound to vfio-pci, or `None` (test skipped) when there is none and
/// devices are not required.
fn edu() -> Option<String> {
    let name = edu::address_or_skip().unwrap()?;
    sysfs::bind_vfio_pci(&name).unwrap();
    Some(name)
}

fn derived(dev: &VfioDevice) -> (bufbroker_vfio::DeviceInfo, Participant) {
    let info = dev.info().unwrap();
    let profiles = Profiles::builtin().unwrap();
    let p = derive_participant(&info, profiles.get(info.ids.vendor, info.ids.device)).unwrap();
    (info, p)
}

fn memfd(len: u64) -> File {
    let fd = rustix::fs::memfd_create("edu-dma", rustix::fs::MemfdFlags::CLOEXEC).unwrap();
    rustix::fs::ftruncate(&fd, len).unwrap();
    File::from(fd)
}

/// Opens edu, reads its ids and IOMMU facts, derives its 28-bit constraint set; prints the
/// recorded `DeviceInfo` (the source of `tests/data/edu-intel-iommu.toml`).
#[test]
fn edu_info_derives_28_bit_constraints() {
    let Some(name) = edu() else { return };
    let dev = VfioDevice::open(&name).unwrap();
    let (info, p) = derived(&dev);
    println!("# recorded DeviceInfo\n{}", toml::to_string(&info).unwrap());
    println!("# derived participant\n{}", toml::to_string(&p).unwrap());
    assert_eq!(
        (info.ids.vendor, info.ids.device),
        (edu::VENDOR, edu::DEVICE)
    );
    // QEMU's PCI_CLASS_OTHERS is 0x00ff (base class 0x00, subclass 0xff), prog-if 0.
    assert_eq!(info.ids.class, 0x00ff00, "edu's class code");
    assert!(!info.iommu.iova_ranges.is_empty(), "IOVA ranges reported");
    assert!(info.iommu.page_sizes & 4096 != 0, "4 KiB IOMMU pages");
    assert!(info.iommu.dma_avail.is_some(), "DMA-avail capability");
    let m = &p.alternatives[0].memory;
    assert_eq!(m.address_bits, 28);
    assert!(m.behind_iommu);
    assert_eq!(m.iova_ranges, info.iommu.iova_ranges);
}

/// A pattern goes from a memfd buffer into edu and back into another part of the buffer,
/// through IOVAs below 2^28; the mapping is gone from the kernel once dropped.
#[test]
fn edu_dma_round_trip_through_iommu() {
    let Some(name) = edu() else { return };
    let dev = VfioDevice::open(&name).unwrap();
    let (info, p) = derived(&dev);
    dev.enable_bus_master().unwrap();
    let bar0 = Bar0::new(&dev).unwrap();
    assert_eq!(
        bar0.read32(edu::ID).unwrap() & 0xff,
        0xed,
        "edu identification register"
    );
    bar0.write32(edu::LIVENESS, 0x1234_5678).unwrap();
    assert_eq!(bar0.read32(edu::LIVENESS).unwrap(), !0x1234_5678u32);

    let space = DmaSpace::new(
        Arc::clone(dev.container()),
        &p.alternatives[0].memory,
        &info.iommu,
    );
    let buf = memfd(64 * 1024);
    let avail_before = dev.container().iommu_info().unwrap().dma_avail;
    let map = space.map(buf.as_fd(), 0, 64 * 1024).unwrap();
    assert!(map.iova() + map.len() <= 1 << 28, "IOVA {:#x}", map.iova());
    assert_eq!(space.mapped(), 1);

    let pattern: Vec<u8> = (0..edu::DMA_SIZE).map(|i| (i * 7 + 3) as u8).collect();
    map.write_at(0, &pattern).unwrap();
    bar0.dma(map.iova(), edu::DMA_BUF, edu::DMA_SIZE, false)
        .unwrap();
    bar0.dma(edu::DMA_BUF, map.iova() + 0x8000, edu::DMA_SIZE, true)
        .unwrap();

    let mut back = vec![0u8; edu::DMA_SIZE as usize];
    map.read_at(0x8000, &mut back).unwrap();
    assert_eq!(back, pattern, "bytes through the mapping");
    // The same bytes through the memfd itself: the device wrote the broker buffer.
    let mut via_fd = vec![0u8; edu::DMA_SIZE as usize];
    buf.read_exact_at(&mut via_fd, 0x8000).unwrap();
    assert_eq!(via_fd, pattern, "bytes through the fd");

    drop(map);
    assert_eq!(space.mapped(), 0);
    assert_eq!(
        dev.container().iommu_info().unwrap().dma_avail,
        avail_before,
        "the kernel's mapping is gone after drop"
    );
}

/// edu plus a participant that forces 1 GiB-multiple buffers: more than edu's 28-bit IOVA
/// window holds, so the solver refuses and names edu's address width.
#[test]
fn solver_refuses_memory_edu_cannot_address() {
    let Some(name) = edu() else { return };
    let dev = VfioDevice::open(&name).unwrap();
    let (_, edu) = derived(&dev);
    let mut huge = ConstraintSet::default();
    huge.layout.size_alignment = 1 << 30;
    let mapper = Participant::new(
        ParticipantId::Named("1g-hugepage-mapper".into()),
        "1G huge-page mapper",
        Usage::CPU_READ | Usage::CPU_WRITE,
        huge,
    );
    let mut req = Request {
        width: 1024,
        height: 1,
        formats: vec![],
        usage: Usage::empty(),
        participants: vec![edu, mapper],
        count: 1,
    };
    let err = solve(&req, &[HeapInfo::memfd()]).unwrap_err();
    let SolveError::Unsatisfiable(diag) = err else {
        panic!("{err}")
    };
    let text = diag.to_string();
    println!("{text}");
    assert!(
        text.contains("qemu edu: memory.address_bits = 28 bits"),
        "{text}"
    );
    // Without the huge-page participant edu alone is fine.
    req.participants.truncate(1);
    assert!(solve(&req, &[HeapInfo::memfd()]).is_ok());
}

/// Mapping beyond the container's limit fails with `LimitReached`; dropping one mapping
/// frees a slot in the kernel too.
#[test]
fn dma_limit_reached_is_a_clear_error() {
    let Some(name) = edu() else { return };
    let dev = VfioDevice::open(&name).unwrap();
    let (info, p) = derived(&dev);
    let limit = info.iommu.dma_avail.unwrap();
    assert!(
        limit <= 64,
        "dma_avail {limit}: run with vfio_iommu_type1 dma_entry_limit <= 64 \
         (tests/e2e/guest/vfio-tests.sh sets 4)"
    );
    let space = DmaSpace::new(
        Arc::clone(dev.container()),
        &p.alternatives[0].memory,
        &info.iommu,
    );
    let buf = memfd(4096 * (u64::from(limit) + 1));
    let mut maps: Vec<_> = (0..u64::from(limit))
        .map(|i| space.map(buf.as_fd(), i * 4096, 4096).unwrap())
        .collect();
    let err = space
        .map(buf.as_fd(), u64::from(limit) * 4096, 4096)
        .unwrap_err();
    println!("{err}");
    assert!(
        matches!(err, DmaError::LimitReached { limit: l } if l == limit),
        "{err}"
    );
    assert!(err.to_string().contains("dma_entry_limit"));
    maps.pop();
    let again = space
        .map(buf.as_fd(), u64::from(limit) * 4096, 4096)
        .unwrap();
    assert!(again.iova() < 1 << 28);
}

/// The kernel itself enforces the limit: a second space on the same container (which does
/// not see the first one's count) gets the kernel's ENOSPC as `LimitReached`.
#[test]
fn dma_limit_kernel_refusal_maps_to_limit_reached() {
    let Some(name) = edu() else { return };
    let dev = VfioDevice::open(&name).unwrap();
    let (info, p) = derived(&dev);
    let limit = info.iommu.dma_avail.unwrap();
    assert!(limit <= 64, "dma_avail {limit}: set dma_entry_limit <= 64");
    let mem = &p.alternatives[0].memory;
    let a = DmaSpace::new(Arc::clone(dev.container()), mem, &info.iommu);
    let buf = memfd(4096 * (u64::from(limit) + 1));
    let _maps: Vec<_> = (0..u64::from(limit))
        .map(|i| a.map(buf.as_fd(), i * 4096, 4096).unwrap())
        .collect();
    // A second space starts its IOVAs where the first did: move past them by asking for
    // ranges above the first space's blocks.
    let mut upper = mem.clone();
    upper.iova_ranges = vec![bufbroker_proto::AddressRange {
        start: 1 << 27,
        end: (1 << 28) - 1,
    }];
    let b = DmaSpace::new(Arc::clone(dev.container()), &upper, &info.iommu);
    let err = b
        .map(buf.as_fd(), u64::from(limit) * 4096, 4096)
        .unwrap_err();
    println!("{err}");
    assert!(matches!(err, DmaError::LimitReached { .. }), "{err}");
}

/// A mapping may outlive the device handle: the container keeps its group, so the IOMMU
/// (and the unmap on drop) still works, and the IOVA returns to the allocator.
#[test]
fn mapping_outlives_device_and_unmaps_cleanly() {
    let Some(name) = edu() else { return };
    let dev = VfioDevice::open(&name).unwrap();
    let (info, p) = derived(&dev);
    let space = DmaSpace::new(
        Arc::clone(dev.container()),
        &p.alternatives[0].memory,
        &info.iommu,
    );
    let buf = memfd(8192);
    let first = space.map(buf.as_fd(), 0, 8192).unwrap();
    let iova = first.iova();
    drop(dev);
    drop(first);
    assert_eq!(space.mapped(), 0);
    let again = space.map(buf.as_fd(), 0, 8192).unwrap();
    assert_eq!(again.iova(), iova, "the unmapped IOVA was reused");
}
