//! The device's GuestExposure: backend-channel requests arrive at the VMM, only after start.

// Test code: a panic is a test failure, which is what these lints would otherwise forbid.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::fs::File;
use std::io::Write;
use std::os::fd::AsFd;
use std::time::Duration;

use bufbroker::exposure::{ExposureError, GuestExposure, GuestRegion};
use bufbroker::vhost::DeviceConfig;
use bufbroker_proto::wire::{self, Message, Ping};
use bufbroker_tests::broker::{Recorder, TestBroker, recording_factory};
use bufbroker_tests::vmm::{ChannelEvent, Vmm, VmmOptions};
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(5);
const PAGE: u64 = 4096;

fn memfd(len: u64, fill: u8) -> File {
    let fd = rustix::fs::memfd_create("test-buffer", rustix::fs::MemfdFlags::CLOEXEC).unwrap();
    let mut f = File::from(fd);
    f.write_all(&vec![fill; len as usize]).unwrap();
    f
}

fn broker(recorder: &std::sync::Arc<Recorder>, window: u64) -> TestBroker {
    TestBroker::start(
        recording_factory(recorder),
        DeviceConfig {
            shmem_size: window,
            ..DeviceConfig::default()
        },
    )
    .unwrap()
}

fn kick_with_a_ping(vmm: &mut Vmm) {
    let ping = wire::encode(&Message::Ping(Ping { payload: vec![] }), 1).unwrap();
    vmm.request(&ping, 4096).unwrap();
}

#[test]
fn shmem_map_waits_for_the_device_to_start_then_reaches_the_vmm() {
    let recorder = Recorder::new();
    let broker = broker(&recorder, 1 << 20);
    let mut vmm = Vmm::connect(broker.socket(), VmmOptions::default()).unwrap();
    let exposure = recorder.vhost_exposure(0, WAIT).unwrap();
    let buffer = memfd(2 * PAGE, 0x5a);

    let mapper = {
        let exposure = exposure.clone();
        std::thread::spawn(move || exposure.map_window(buffer.as_fd(), 0, 4 * PAGE, 2 * PAGE, true))
    };
    assert!(
        exposure.wait_for_start_waiters(1, WAIT),
        "the map never waited for the device to start"
    );
    assert!(
        vmm.channel.events().is_empty(),
        "mapped before the device started"
    );
    vmm.start().unwrap();
    kick_with_a_ping(&mut vmm);

    mapper.join().unwrap().unwrap();
    assert_eq!(
        vmm.channel.events(),
        [ChannelEvent::ShmemMap {
            shmid: 0,
            fd_offset: 0,
            shm_offset: 4 * PAGE,
            len: 2 * PAGE,
            writable: true,
        }]
    );
    assert_eq!(vmm.channel.read_window(4 * PAGE, 16).unwrap(), [0x5a; 16]);
}

#[test]
fn unmap_reaches_the_vmm_and_frees_the_range() {
    let recorder = Recorder::new();
    let broker = broker(&recorder, 1 << 20);
    let mut vmm = Vmm::connect_and_start(broker.socket(), VmmOptions::default()).unwrap();
    kick_with_a_ping(&mut vmm);
    let exposure = recorder.exposure(0, WAIT).unwrap();
    let buffer = memfd(PAGE, 1);
    exposure
        .map_window(buffer.as_fd(), 0, 0, PAGE, false)
        .unwrap();

    exposure.unmap_window(0, PAGE).unwrap();

    assert_eq!(
        vmm.channel.events()[1],
        ChannelEvent::ShmemUnmap {
            shm_offset: 0,
            len: PAGE
        }
    );
    exposure
        .map_window(buffer.as_fd(), 0, 0, PAGE, false)
        .unwrap();
}

/// QEMU 11.1.3 drops a device's mappings when the guest resets it and segfaults on a
/// SHMEM_UNMAP that arrives while the device is stopped (tests/e2e/qemu-scenarios.sh, scenario
/// e): after a reset, unmapping only releases the range.
#[test]
fn unmap_after_a_reset_sends_nothing_and_frees_the_range() {
    let recorder = Recorder::new();
    let broker = broker(&recorder, 1 << 20);
    let mut vmm = Vmm::connect_and_start(broker.socket(), VmmOptions::default()).unwrap();
    kick_with_a_ping(&mut vmm);
    let exposure = recorder.exposure(0, WAIT).unwrap();
    let buffer = memfd(PAGE, 1);
    exposure
        .map_window(buffer.as_fd(), 0, 0, PAGE, false)
        .unwrap();
    vmm.reset().unwrap();

    exposure.unmap_window(0, PAGE).unwrap();

    assert_eq!(vmm.channel.events().len(), 1, "{:?}", vmm.channel.events());
    vmm.start().unwrap();
    kick_with_a_ping(&mut vmm);
    exposure
        .map_window(buffer.as_fd(), 0, 0, PAGE, false)
        .unwrap();
    assert!(matches!(
        vmm.channel.events()[..],
        [ChannelEvent::ShmemMap { .. }, ChannelEvent::ShmemMap { .. }]
    ));
}

#[test]
fn mapping_into_a_full_window_fails_and_sends_nothing() {
    let recorder = Recorder::new();
    let broker = broker(&recorder, 16 * PAGE);
    let mut vmm = Vmm::connect_and_start(broker.socket(), VmmOptions::default()).unwrap();
    kick_with_a_ping(&mut vmm);
    let exposure = recorder.exposure(0, WAIT).unwrap();
    let buffer = memfd(16 * PAGE, 2);
    exposure
        .map_window(buffer.as_fd(), 0, 0, 16 * PAGE, true)
        .unwrap();

    let overlapping = exposure.map_window(buffer.as_fd(), 0, 8 * PAGE, PAGE, true);
    let outside = exposure.map_window(buffer.as_fd(), 0, 16 * PAGE, PAGE, true);

    assert!(
        matches!(overlapping, Err(ExposureError::WindowRange { .. })),
        "{overlapping:?}"
    );
    assert!(
        matches!(outside, Err(ExposureError::WindowRange { .. })),
        "{outside:?}"
    );
    assert_eq!(vmm.channel.events().len(), 1);
}

#[test]
fn unmapping_a_range_never_mapped_fails() {
    let recorder = Recorder::new();
    let broker = broker(&recorder, 16 * PAGE);
    let mut vmm = Vmm::connect_and_start(broker.socket(), VmmOptions::default()).unwrap();
    kick_with_a_ping(&mut vmm);
    let exposure = recorder.exposure(0, WAIT).unwrap();

    let r = exposure.unmap_window(0, PAGE);

    assert!(matches!(r, Err(ExposureError::WindowRange { .. })), "{r:?}");
}

#[test]
fn shared_object_add_and_remove_reach_the_vmm() {
    let recorder = Recorder::new();
    let broker = broker(&recorder, 1 << 20);
    let mut vmm = Vmm::connect_and_start(broker.socket(), VmmOptions::default()).unwrap();
    kick_with_a_ping(&mut vmm);
    let exposure = recorder.exposure(0, WAIT).unwrap();
    let uuid = Uuid::new_v4();

    exposure.add_shared_object(uuid).unwrap();
    exposure.remove_shared_object(uuid).unwrap();

    assert_eq!(
        vmm.channel.events(),
        [
            ChannelEvent::SharedObjectAdd(uuid),
            ChannelEvent::SharedObjectRemove(uuid)
        ]
    );
}

#[test]
fn guest_memory_lists_the_vmm_memory_table() {
    let recorder = Recorder::new();
    let broker = broker(&recorder, 1 << 20);
    let mut vmm = Vmm::connect_and_start(broker.socket(), VmmOptions::default()).unwrap();
    kick_with_a_ping(&mut vmm);
    let exposure = recorder.exposure(0, WAIT).unwrap();
    let mut seen = Vec::new();

    exposure.with_guest_memory(&mut |regions: &[GuestRegion<'_>]| {
        seen = regions
            .iter()
            .map(|r| (r.guest_phys, r.size, r.fd_offset))
            .collect();
    });

    assert_eq!(seen, [(0, 32 << 20, 0)]);
}

#[test]
fn requests_after_disconnect_fail_with_disconnected() {
    let recorder = Recorder::new();
    let broker = broker(&recorder, 1 << 20);
    let mut vmm = Vmm::connect_and_start(broker.socket(), VmmOptions::default()).unwrap();
    kick_with_a_ping(&mut vmm);
    let exposure = recorder.exposure(0, WAIT).unwrap();

    drop(vmm);
    assert!(recorder.wait_teardowns(1, WAIT));

    let r = exposure.add_shared_object(Uuid::new_v4());
    assert!(matches!(r, Err(ExposureError::Disconnected)), "{r:?}");
}
