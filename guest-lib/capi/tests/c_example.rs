//! Compiles `guest-lib/examples/c/alloc.c` with the system C compiler against the checked-in
//! header and the static library, and runs it against the fake broker on a Unix socket.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::Command;

use bufbroker_guest::bufbroker_proto::ParticipantId;
use bufbroker_guest::fake::FakeBroker;
use bufbroker_guest::participants;

/// `libbufbroker_client.a`, built with this test's dependencies (target/<profile>/deps or its parent).
fn static_lib() -> PathBuf {
    let deps = std::env::current_exe()
        .unwrap()
        .parent()
        .unwrap()
        .to_owned();
    [
        deps.join("libbufbroker_client.a"),
        deps.parent().unwrap().join("libbufbroker_client.a"),
    ]
    .into_iter()
    .find(|p| p.exists())
    .expect("libbufbroker_client.a next to the test binary")
}

#[test]
fn c_example_allocates_maps_and_exports_over_the_local_socket() {
    let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = tempfile::tempdir().unwrap();
    let exe = dir.path().join("alloc");
    let cc = Command::new(std::env::var("CC").unwrap_or_else(|_| "cc".into()))
        .args(["-std=c11", "-Wall", "-Wextra", "-Werror", "-o"])
        .arg(&exe)
        .arg(crate_dir.join("../examples/c/alloc.c"))
        .arg("-I")
        .arg(crate_dir.join("include"))
        .arg(static_lib())
        .args(["-lpthread", "-ldl", "-lm"])
        .output()
        .unwrap();
    assert!(
        cc.status.success(),
        "cc failed: {}",
        String::from_utf8_lossy(&cc.stderr)
    );
    let sock = dir.path().join("broker.sock");
    let listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    let mut display = participants::cpu();
    display.id = ParticipantId::Named("display".into());
    std::thread::spawn(move || {
        let (s, _) = listener.accept().unwrap();
        FakeBroker::new()
            .with_named("display", display)
            .serve(OwnedFd::from(s));
    });

    let out = Command::new(&exe)
        .arg("--socket")
        .arg(&sock)
        .arg("display")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);

    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("plane 1 offset"), "{stdout}");
    assert!(stdout.contains("pattern written"), "{stdout}");
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("uuid ") && l.len() == 41),
        "{stdout}"
    );
}

#[test]
fn c_api_reports_connect_failure_with_a_message() {
    let mut client = std::ptr::null_mut();

    // SAFETY: valid NUL-terminated path and out pointer.
    let status = unsafe {
        bufbroker_client::bb_connect_local(c"/nonexistent/bufbroker.sock".as_ptr(), &mut client)
    };
    // SAFETY: bb_last_error returns a NUL-terminated string valid until the next call.
    let message = unsafe { std::ffi::CStr::from_ptr(bufbroker_client::bb_last_error()) };

    assert_eq!(status, bufbroker_client::bb_status::BB_ERROR_TRANSPORT);
    assert!(client.is_null());
    assert!(message.to_str().unwrap().contains("connect"), "{message:?}");
}

#[test]
fn c_api_null_arguments_are_invalid_not_crashes() {
    // SAFETY: null pointers are part of the contract (rejected).
    let status = unsafe { bufbroker_client::bb_ping(std::ptr::null_mut(), std::ptr::null_mut()) };

    assert_eq!(
        status,
        bufbroker_client::bb_status::BB_ERROR_INVALID_ARGUMENT
    );
}

#[test]
fn pkg_config_file_is_generated_with_version_and_lib() {
    let pc = include_str!(concat!(env!("OUT_DIR"), "/bufbroker.pc"));

    assert!(pc.contains(&format!("Version: {}", env!("CARGO_PKG_VERSION"))));
    assert!(pc.contains("Libs: -L${libdir} -lbufbroker_client"));
    assert!(!pc.contains('@'));
}
