//! The whole broker in-process: a guest (harness VMM + split-ring driver) talks to the real
//! session through the vhost-user device; a host process on the local socket of the same
//! broker imports the guest's buffer under a grant. Zero copy is checked by writing through
//! the host client's fd and reading the guest's shared-memory window.

// Test code: a panic is a test failure, which is what these lints would otherwise forbid.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::time::Duration;

use bufbroker::config::Config;
use bufbroker::heap::Mapping;
use bufbroker_proto::Request;
use bufbroker_proto::wire::{self, Access, ErrorCode, Export, Features, Free, Location, Message};
use bufbroker_tests::session::{self, FullBroker, NV12, allocate_host_window, ask, cpu_request};
use bufbroker_tests::vmm::{ChannelEvent, Vmm, VmmOptions};

const WAIT: Duration = Duration::from_secs(10);

fn setup() -> FullBroker {
    FullBroker::start(Config::default(), 64 << 20).unwrap()
}

fn hello(vmm: &mut Vmm) {
    let reply = session::hello(vmm, Features::all(), "harness guest").unwrap();
    assert!(reply.features.contains(Features::HOST_WINDOW));
}

fn nv12_1080p() -> Request {
    cpu_request(NV12, 1920, 1080, 1, "guest cpu")
}

#[test]
fn guest_buffer_in_the_window_is_the_host_clients_buffer() {
    let s = setup();
    let mut vmm = Vmm::connect_and_start(s.device.socket(), VmmOptions::default()).unwrap();
    hello(&mut vmm);

    // The guest allocates NV12 1080p in the host window.
    let reply = allocate_host_window(&mut vmm, 2, nv12_1080p()).unwrap();
    let Message::AllocateReply(alloc) = reply else {
        panic!("expected AllocateReply, got {reply:?}")
    };
    assert_eq!(alloc.plan.size, 1920 * 1080 * 3 / 2);
    let buffer = alloc.buffers[0];
    let Location::HostWindow { offset, len, .. } = buffer.location else {
        panic!("not in the window: {:?}", buffer.location)
    };
    assert!(len >= alloc.plan.size);
    assert!(
        vmm.channel
            .wait_for(WAIT, |events| events.iter().any(|e| matches!(
                e,
                ChannelEvent::ShmemMap { shm_offset, .. } if *shm_offset == offset
            )))
    );

    // It exports and grants it to the host process (root on the local socket).
    let reply = ask(&mut vmm, 3, &Message::Export(Export { buffer: buffer.id })).unwrap();
    let Message::ExportReply(export) = reply else {
        panic!("expected ExportReply, got {reply:?}")
    };
    assert_eq!(export.uuid, buffer.uuid);
    let reply = session::grant_to_host(&mut vmm, 4, buffer.id, Access::ReadWrite).unwrap();
    assert!(matches!(reply, Message::GrantReply(_)), "{reply:?}");

    // The host process imports it, receives the fd, and writes a pattern.
    let (reply, fds) = session::host_import(&s.local, export.uuid).unwrap();
    let Message::ImportReply(import) = reply else {
        panic!("expected ImportReply, got {reply:?}")
    };
    assert_eq!(import.plan, alloc.plan);
    assert_eq!(fds.len(), 1);
    let host = Mapping::new(std::os::fd::AsFd::as_fd(&fds[0]), 0, alloc.plan.size, true).unwrap();
    let pattern: Vec<u8> = (0..4096u32).map(|i| (i * 7 + 3) as u8).collect();
    host.write_at(0, &pattern).unwrap();
    let tail = (alloc.plan.size - 4096) & !4095;
    host.write_at(tail as usize, &pattern).unwrap();

    // The guest's window shows the same bytes: one buffer, no copy.
    assert_eq!(vmm.channel.read_window(offset, 4096).unwrap(), pattern);
    assert_eq!(
        vmm.channel.read_window(offset + tail, 4096).unwrap(),
        pattern
    );
    let stats = s.broker.registry().total_bytes();
    assert!(stats >= alloc.plan.size);
}

#[test]
fn guest_reset_frees_its_buffers_without_unmapping() {
    let s = setup();
    let before = s.broker.registry().total_bytes();
    let mut vmm = Vmm::connect_and_start(s.device.socket(), VmmOptions::default()).unwrap();
    hello(&mut vmm);
    for id in 2..5 {
        let reply = allocate_host_window(&mut vmm, id, nv12_1080p()).unwrap();
        assert!(matches!(reply, Message::AllocateReply(_)), "{reply:?}");
    }
    assert!(s.broker.registry().total_bytes() > before);

    vmm.reset().unwrap();
    // Freed, but no SHMEM_UNMAP: QEMU 11.1.3 drops a reset device's mappings itself and
    // segfaults on an unmap while the device is stopped (tests/e2e/qemu-scenarios.sh, e).
    assert!(
        s.broker
            .registry()
            .wait_until(WAIT, |r| r.total_bytes() == before)
    );
    assert!(
        !vmm.channel
            .events()
            .iter()
            .any(|e| matches!(e, ChannelEvent::ShmemUnmap { .. })),
        "{:?}",
        vmm.channel.events()
    );

    // The device serves again after the reset: a new session that must say Hello first.
    vmm.start().unwrap();
    let reply = ask(
        &mut vmm,
        9,
        &Message::Free(Free {
            buffer: wire::BufferId(1),
        }),
    )
    .unwrap();
    let Message::ErrorReply(e) = reply else {
        panic!("expected ErrorReply, got {reply:?}")
    };
    assert_eq!(e.code, ErrorCode::NOT_NEGOTIATED);
    hello(&mut vmm);
}
