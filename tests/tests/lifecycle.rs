//! Device lifecycle: reset and disconnect tear the guest down; the socket serves the next VMM.

// Test code: a panic is a test failure, which is what these lints would otherwise forbid.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::time::Duration;

use bufbroker::vhost::{DeviceConfig, Teardown};
use bufbroker_proto::wire::{self, Message, Ping};
use bufbroker_tests::broker::{Recorder, TestBroker, recording_factory};
use bufbroker_tests::vmm::{Vmm, VmmOptions};

const WAIT: Duration = Duration::from_secs(5);

fn ping(id: u32) -> Vec<u8> {
    wire::encode(
        &Message::Ping(Ping {
            payload: vec![1, 2, 3],
        }),
        id,
    )
    .unwrap()
}

fn broker(recorder: &std::sync::Arc<Recorder>) -> TestBroker {
    TestBroker::start(recording_factory(recorder), DeviceConfig::default()).unwrap()
}

#[test]
fn reset_calls_teardown_once_and_the_restarted_device_serves() {
    let recorder = Recorder::new();
    let broker = broker(&recorder);
    let mut vmm = Vmm::connect_and_start(broker.socket(), VmmOptions::default()).unwrap();
    vmm.request(&ping(1), 4096).unwrap();

    vmm.reset().unwrap();

    assert!(recorder.wait_teardowns(1, WAIT));
    assert_eq!(recorder.teardowns()[0].1, Teardown::Reset);
    vmm.start().unwrap();
    let reply = vmm.request(&ping(2), 4096).unwrap();
    assert_eq!(wire::decode(&reply).unwrap().0.request_id, 2);
    // Teardowns run on the exposure thread, not in order with replies: a second one the
    // restart scheduled has run once the jobs queued before now have.
    let exposure = recorder.vhost_exposure(0, WAIT).unwrap();
    exposure.flush().unwrap();
    assert_eq!(recorder.teardowns().len(), 1);
}

#[test]
fn disconnect_calls_teardown_and_the_socket_serves_the_next_vmm() {
    let recorder = Recorder::new();
    let broker = broker(&recorder);
    let mut first = Vmm::connect_and_start(broker.socket(), VmmOptions::default()).unwrap();
    first.request(&ping(1), 4096).unwrap();

    drop(first);

    assert!(recorder.wait_teardowns(1, WAIT));
    assert_eq!(recorder.teardowns()[0].1, Teardown::Disconnect);
    let mut second = Vmm::connect_and_start(broker.socket(), VmmOptions::default()).unwrap();
    let reply = second.request(&ping(9), 4096).unwrap();
    assert_eq!(wire::decode(&reply).unwrap().0.request_id, 9);
    let names: Vec<String> = recorder.teardowns().into_iter().map(|(n, _)| n).collect();
    assert_eq!(names, ["test#0"]);
}

#[test]
fn reset_then_disconnect_calls_teardown_for_each() {
    let recorder = Recorder::new();
    let broker = broker(&recorder);
    let mut vmm = Vmm::connect_and_start(broker.socket(), VmmOptions::default()).unwrap();
    vmm.request(&ping(1), 4096).unwrap();

    vmm.reset().unwrap();
    drop(vmm);

    assert!(recorder.wait_teardowns(2, WAIT));
    let whys: Vec<Teardown> = recorder.teardowns().into_iter().map(|(_, w)| w).collect();
    assert_eq!(whys, [Teardown::Reset, Teardown::Disconnect]);
}

#[test]
fn three_vmms_in_a_row_are_served_on_one_socket() {
    let recorder = Recorder::new();
    let broker = broker(&recorder);

    for i in 0..3u32 {
        let mut vmm = Vmm::connect_and_start(broker.socket(), VmmOptions::default()).unwrap();
        let reply = vmm.request(&ping(i), 4096).unwrap();
        assert_eq!(wire::decode(&reply).unwrap().0.request_id, i);
        drop(vmm);
        assert!(recorder.wait_teardowns(i as usize + 1, WAIT));
    }
}
