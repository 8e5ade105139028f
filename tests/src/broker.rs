//! The broker under test, in process.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use std::os::fd::OwnedFd;

use bufbroker::exposure::GuestExposure;
use bufbroker::vhost::{
    DeviceConfig, GuestConnection, HandlerFactory, MinimalHandler, RequestHandler, ServeError,
    StopSignal, Teardown, VhostExposure, serve_socket,
};
use uuid::Uuid;

use crate::{Context, Result};

/// `bufbroker::vhost::serve_socket` on a fresh socket in a temporary directory, in a thread.
/// Dropping it stops the server and removes the directory.
pub struct TestBroker {
    socket: PathBuf,
    dir: PathBuf,
    stop: Arc<StopSignal>,
    thread: Option<JoinHandle<std::result::Result<(), ServeError>>>,
}

static NEXT_DIR: AtomicU64 = AtomicU64::new(0);

impl TestBroker {
    /// Starts serving with `factory`; the socket is listening when this returns.
    pub fn start(factory: Arc<dyn HandlerFactory>, config: DeviceConfig) -> Result<Self> {
        let dir = std::env::temp_dir().join(format!(
            "bufbroker-harness-{}-{}",
            std::process::id(),
            NEXT_DIR.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).context("creating the socket directory")?;
        let socket = dir.join("bufbroker.sock");
        let listener =
            std::os::unix::net::UnixListener::bind(&socket).context("binding the socket")?;
        let stop = StopSignal::new().context("stop signal")?;
        let thread_stop = stop.clone();
        let thread = std::thread::Builder::new()
            .name("test-broker".into())
            .spawn(move || serve_socket(&listener, "test", &config, factory.as_ref(), &thread_stop))
            .context("spawning the broker")?;
        Ok(TestBroker {
            socket,
            dir,
            stop,
            thread: Some(thread),
        })
    }

    /// A broker answering with [`MinimalHandler`] and a window of `shmem_size` bytes.
    pub fn minimal(shmem_size: u64) -> Result<Self> {
        Self::start(
            MinimalHandler::factory(),
            DeviceConfig {
                shmem_size,
                ..DeviceConfig::default()
            },
        )
    }

    /// The socket path.
    pub fn socket(&self) -> &Path {
        &self.socket
    }
}

impl Drop for TestBroker {
    fn drop(&mut self) {
        self.stop.stop();
        if let Some(t) = self.thread.take()
            && let Ok(Err(e)) = t.join()
        {
            log::error!("test broker: {e}");
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A [`HandlerFactory`] that serves with another factory's handlers ([`MinimalHandler`]
/// unless told) and records what the device did with them: each connection's exposure, and
/// every teardown.
#[derive(Default)]
pub struct Recorder {
    state: Mutex<RecorderState>,
    changed: Condvar,
}

#[derive(Default)]
struct RecorderState {
    exposures: Vec<Arc<VhostExposure>>,
    teardowns: Vec<(String, Teardown)>,
}

struct RecordingHandler {
    name: String,
    inner: Arc<dyn RequestHandler>,
    recorder: Arc<Recorder>,
}

impl RequestHandler for RecordingHandler {
    fn handle(&self, request: &[u8], reply_capacity: usize) -> Vec<u8> {
        self.inner.handle(request, reply_capacity)
    }

    fn teardown(&self, why: Teardown) {
        self.inner.teardown(why);
        self.recorder
            .lock()
            .teardowns
            .push((self.name.clone(), why));
        self.recorder.changed.notify_all();
    }

    fn shared_object(&self, uuid: Uuid) -> Option<OwnedFd> {
        self.inner.shared_object(uuid)
    }
}

impl Recorder {
    /// A recorder, shareable as a factory.
    pub fn new() -> Arc<Self> {
        Arc::new(Recorder::default())
    }

    fn lock(&self) -> MutexGuard<'_, RecorderState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Teardowns so far: (connection name, why).
    pub fn teardowns(&self) -> Vec<(String, Teardown)> {
        self.lock().teardowns.clone()
    }

    /// Waits until `n` teardowns happened (true) or `timeout` passed (false).
    pub fn wait_teardowns(&self, n: usize, timeout: Duration) -> bool {
        let state = self.lock();
        let (state, _) = self
            .changed
            .wait_timeout_while(state, timeout, |s| s.teardowns.len() < n)
            .unwrap_or_else(PoisonError::into_inner);
        state.teardowns.len() >= n
    }

    /// The exposure of connection `n` (0 = first), waiting up to `timeout` for it.
    pub fn exposure(&self, n: usize, timeout: Duration) -> Option<Arc<dyn GuestExposure>> {
        self.vhost_exposure(n, timeout)
            .map(|e| -> Arc<dyn GuestExposure> { e })
    }

    /// The exposure of connection `n` as the device's own type (for its counters and
    /// waits), waiting up to `timeout` for it.
    pub fn vhost_exposure(&self, n: usize, timeout: Duration) -> Option<Arc<VhostExposure>> {
        let state = self.lock();
        let (state, _) = self
            .changed
            .wait_timeout_while(state, timeout, |s| s.exposures.len() <= n)
            .unwrap_or_else(PoisonError::into_inner);
        state.exposures.get(n).cloned()
    }
}

/// Wraps a recorder as a factory of [`MinimalHandler`]s.
pub fn recording_factory(recorder: &Arc<Recorder>) -> Arc<dyn HandlerFactory> {
    recording(recorder, MinimalHandler::factory())
}

/// Wraps a recorder around `inner`, which makes the handlers.
pub fn recording(
    recorder: &Arc<Recorder>,
    inner: Arc<dyn HandlerFactory>,
) -> Arc<dyn HandlerFactory> {
    let recorder = recorder.clone();
    Arc::new(move |guest: GuestConnection| -> Arc<dyn RequestHandler> {
        recorder.lock().exposures.push(guest.vhost.clone());
        recorder.changed.notify_all();
        Arc::new(RecordingHandler {
            name: guest.name.clone(),
            inner: inner.connect(guest),
            recorder: recorder.clone(),
        })
    })
}
