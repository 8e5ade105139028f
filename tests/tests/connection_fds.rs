//! A finished VMM connection leaves no descriptor behind in the broker (the QEMU end-to-end
//! runner checks the same on the real process, `tests/e2e/qemu-scenarios.sh` scenario e).
//! Its own test binary: it counts the process's open descriptors.

// Test code: a panic is a test failure, which is what these lints would otherwise forbid.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::sync::Arc;

use bufbroker::config::Config;
use bufbroker::session::{Broker, guest_factory};
use bufbroker::vhost::DeviceConfig;
use bufbroker_proto::wire::{self, Message, Ping};
use bufbroker_tests::broker::TestBroker;
use bufbroker_tests::vmm::{Vmm, VmmOptions};

fn open_fds() -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .map(|p| p.display().to_string())
        .filter(|p| !p.starts_with("/proc/"))
        // The live connection's sockets differ from one run to the next; their kind counts.
        .map(|p| match p.split_once(":[") {
            Some((kind, _)) => kind.to_owned(),
            None => p,
        })
        .collect();
    v.sort();
    v
}

/// A started VMM that has had one request answered. The socket serves one connection at a
/// time, so when this returns every earlier connection has been torn down.
fn vmm(broker: &TestBroker) -> Vmm {
    let mut vmm = Vmm::connect_and_start(broker.socket(), VmmOptions::default()).unwrap();
    let ping = wire::encode(&Message::Ping(Ping { payload: vec![] }), 1).unwrap();
    vmm.request(&ping, 4096).unwrap();
    vmm
}

#[test]
fn connections_leave_no_descriptors_behind() {
    let broker = Arc::new(Broker::from_config(Config::default()).unwrap());
    let broker = TestBroker::start(
        guest_factory(broker),
        DeviceConfig {
            shmem_size: 1 << 20,
            ..DeviceConfig::default()
        },
    )
    .unwrap();
    let mut live = vmm(&broker);
    live.reset().unwrap();
    drop(live);
    let live = vmm(&broker);
    let before = open_fds();
    drop(live);
    for _ in 0..3 {
        let mut v = vmm(&broker);
        v.reset().unwrap();
    }
    let _live = vmm(&broker);
    assert_eq!(open_fds(), before);
}
