//! Test helpers: descriptor counting, tests isolated in a child process, a private tmpfs.

use std::ffi::CString;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The environment variable naming the one test a child process runs.
const CHILD_ENV: &str = "BUFBROKER_ISOLATED_TEST";

/// The descriptors open in this process (from `/proc/self/fd`, without the directory handle
/// used to list it), sorted.
pub(crate) fn open_fds() -> Vec<i32> {
    let me = std::fs::read_link("/proc/self").unwrap();
    let own_dir = Path::new("/proc").join(me).join("fd");
    let mut fds: Vec<i32> = std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let fd = entry.file_name().to_str()?.parse().ok()?;
            // The listing's own directory descriptor points at /proc/<pid>/fd.
            let target = std::fs::read_link(entry.path()).ok()?;
            (target != own_dir).then_some(fd)
        })
        .collect();
    fds.sort_unstable();
    fds
}

/// The `RLIMIT_NOFILE` that leaves exactly `free` descriptor numbers usable, given the open
/// descriptors `open`: the number of the (`free`+1)-th unused descriptor slot.
pub(crate) fn rlimit_leaving_free(open: &[i32], free: usize) -> u64 {
    (0_i32..)
        .filter(|fd| !open.contains(fd))
        .nth(free)
        .map(|fd| fd as u64)
        .unwrap()
}

/// Runs `body` alone in a fresh child process (this test binary re-executed with
/// `--exact <name> --test-threads=1`): for tests that count descriptors, change resource limits
/// or mount namespaces, which would race with or disturb tests running in parallel.
pub(crate) fn run_isolated(module_path: &str, body: impl FnOnce()) {
    // libtest names tests by module path without the crate name.
    let name = module_path
        .split_once("::")
        .map_or(module_path, |(_, rest)| rest);
    if std::env::var(CHILD_ENV).as_deref() == Ok(name) {
        body();
        return;
    }
    let out = Command::new(std::env::current_exe().unwrap())
        .args([name, "--exact", "--test-threads=1", "--nocapture"])
        .env(CHILD_ENV, name)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("--- child stdout ---\n{stdout}");
    println!(
        "--- child stderr ---\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "isolated test {name} failed: {}",
        out.status
    );
    assert!(
        stdout.contains("1 passed"),
        "isolated test {name} did not run"
    );
}

/// Defines a `#[test]` whose body runs in its own child process (see [`run_isolated`]).
macro_rules! isolated_test {
    ($(#[$meta:meta])* fn $name:ident() $body:block) => {
        $(#[$meta])*
        #[test]
        fn $name() {
            $crate::heap::test_util::run_isolated(
                concat!(module_path!(), "::", stringify!($name)),
                || $body,
            );
        }
    };
}
pub(crate) use isolated_test;

/// A tmpfs mounted in a private mount namespace of this (isolated) process; unmounted on drop.
pub(crate) struct PrivateTmpfs {
    dir: tempfile::TempDir,
}

impl std::ops::Deref for PrivateTmpfs {
    type Target = Path;
    fn deref(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for PrivateTmpfs {
    fn drop(&mut self) {
        let _ = rustix::mount::unmount(self.dir.path(), rustix::mount::UnmountFlags::DETACH);
    }
}

/// Mounts a tmpfs with `options` (e.g. `size=1m`) in a new private mount namespace; `None` (with
/// a skip message) where that is not permitted. Call only from an isolated test.
pub(crate) fn private_tmpfs(options: &str) -> Option<PrivateTmpfs> {
    assert!(
        std::env::var(CHILD_ENV).is_ok(),
        "private_tmpfs needs an isolated test"
    );
    // SAFETY: only the mount namespace (and with it the filesystem context) of this thread is
    // unshared, not the descriptor table, so no thread can observe descriptors it does not share.
    if let Err(e) = unsafe { rustix::thread::unshare_unsafe(rustix::thread::UnshareFlags::NEWNS) } {
        eprintln!("SKIP: cannot create a private mount namespace (needs CAP_SYS_ADMIN): {e}");
        return None;
    }
    use rustix::mount::{MountFlags, MountPropagationFlags, mount, mount_change};
    mount_change(
        "/",
        MountPropagationFlags::PRIVATE | MountPropagationFlags::REC,
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let data = CString::new(options).unwrap();
    if let Err(e) = mount(
        "tmpfs",
        dir.path(),
        "tmpfs",
        MountFlags::empty(),
        data.as_c_str(),
    ) {
        eprintln!("SKIP: cannot mount a tmpfs: {e}");
        return None;
    }
    Some(PrivateTmpfs { dir })
}

/// A path that surely does not exist.
pub(crate) fn missing_path() -> PathBuf {
    PathBuf::from("/nonexistent/bufbroker-test")
}

/// Reports a test that cannot run here. In the guest-kernel tier
/// (`BUFBROKER_REQUIRE_DEVICES=1`) the devices must exist, so a skip there is a failure.
pub(crate) fn skip(reason: &str) {
    if std::env::var_os("BUFBROKER_REQUIRE_DEVICES").is_some_and(|v| v == "1") {
        panic!("required device missing: {reason}");
    }
    eprintln!("SKIP: {reason}");
}
