//! The self-test binary and the NV12 example, run as processes against the fake broker.

// Test code: a panic is how a test reports failure (as clippy.toml allows inside #[test]).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::process::Command;

#[test]
fn selftest_with_fake_broker_passes_every_step() {
    let out = Command::new(env!("CARGO_BIN_EXE_bufbroker-guest-selftest"))
        .args(["--fake", "--pings", "10"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);

    let results: Vec<&str> = stdout
        .lines()
        .filter(|l| l.starts_with("BUFBROKER-RESULT"))
        .collect();

    assert!(out.status.success(), "{stdout}");
    assert_eq!(results.len(), 7, "{stdout}");
    assert!(
        results.iter().all(|l| l.split(' ').nth(2) == Some("pass")),
        "{stdout}"
    );
}

#[test]
fn selftest_without_device_reports_open_failure_and_fails() {
    let out = Command::new(env!("CARGO_BIN_EXE_bufbroker-guest-selftest"))
        .args(["--bdf", "ffff:ff:1f.7"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);

    assert!(!out.status.success());
    assert!(
        stdout.contains("BUFBROKER-RESULT guest:open fail"),
        "{stdout}"
    );
    assert!(
        stdout.contains("BUFBROKER-RESULT guest:free fail"),
        "{stdout}"
    );
}

#[path = "../examples/alloc_nv12.rs"]
mod alloc_nv12;

#[test]
fn alloc_nv12_example_exports_a_uuid_with_the_host_participants_stride() {
    use bufbroker_guest::bufbroker_proto::wire::Placement;
    use bufbroker_guest::fake::{FakeBroker, FakeTransport};
    let broker = FakeBroker::new().with_named("host-display", alloc_nv12::fake_display());
    let transport = FakeTransport::new(broker, 64 << 20).unwrap();

    let (plan, uuid) = alloc_nv12::run(transport, Placement::HostWindow, "host-display").unwrap();

    assert_eq!(
        plan.planes[0].stride, 2048,
        "1920 rounded up to the display's 256"
    );
    assert!(!uuid.is_nil());
}

#[test]
fn two_selftests_pass_through_bufbroker_guestd_on_the_fake_device() {
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("guestd.sock");
    let mut agent = Command::new(env!("CARGO_BIN_EXE_bufbroker-guestd"))
        .arg("--fake")
        .arg("--socket")
        .arg(&sock)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(agent.stdout.take().unwrap()).lines();
    assert!(
        lines.any(|l| l.unwrap().contains("listening on")),
        "the agent did not start"
    );
    let run = || {
        Command::new(env!("CARGO_BIN_EXE_bufbroker-guest-selftest"))
            .arg("--socket")
            .arg(&sock)
            .args(["--pings", "10"])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (first, second) = (run(), run());
    for child in [first, second] {
        let out = child.wait_with_output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{stdout}");
        assert!(!stdout.contains(" fail "), "{stdout}");
    }
    agent.kill().unwrap();
    agent.wait().unwrap();
}
