//! Serving a listening socket: one [`VhostUserDaemon`] per VMM connection, one connection at a
//! time, the next one accepted after the previous ended.

use std::os::fd::OwnedFd;
use std::os::unix::net::UnixListener;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use rustix::event::{EventfdFlags, PollFd, PollFlags, eventfd, poll};
use thiserror::Error;
use vhost::vhost_user::Listener;
use vhost_user_backend::{ShutdownHandle, VhostUserDaemon};
use vm_memory::{GuestMemoryAtomic, GuestMemoryMmap};

use super::DeviceConfig;
use super::device::BufbrokerDevice;
use super::exposure::VhostExposure;
use super::handler::{GuestConnection, HandlerFactory, Teardown};

/// Failures of the accept loop (a failed connection is logged, not returned).
#[derive(Debug, Error)]
pub enum ServeError {
    /// Waiting for a connection failed.
    #[error("cannot wait for a connection on {socket}")]
    Poll {
        /// The socket's name.
        socket: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The stop signal could not be created.
    #[error("cannot create the stop event")]
    StopEvent(#[source] std::io::Error),
}

/// How one connection ended.
#[derive(Debug)]
pub enum ConnectionEnd {
    /// The VMM hung up (or the server was stopped).
    Disconnected,
    /// The connection failed; the socket keeps serving.
    Failed(String),
}

/// Stops a [`serve_socket`] loop: wakes it from waiting for a connection and shuts the current
/// connection down.
pub struct StopSignal {
    event: OwnedFd,
    stopped: AtomicBool,
    current: Mutex<Option<ShutdownHandle>>,
}

impl StopSignal {
    /// A signal not yet raised.
    pub fn new() -> Result<Arc<Self>, ServeError> {
        Ok(Arc::new(StopSignal {
            event: eventfd(0, EventfdFlags::NONBLOCK | EventfdFlags::CLOEXEC)
                .map_err(|e| ServeError::StopEvent(e.into()))?,
            stopped: AtomicBool::new(false),
            current: Mutex::new(None),
        }))
    }

    /// Raises it.
    pub fn stop(&self) {
        self.stopped.store(true, Ordering::SeqCst);
        if let Err(e) = rustix::io::write(&self.event, &1u64.to_ne_bytes()) {
            log::error!("cannot wake the accept loop: {e}");
        }
        if let Some(h) = self
            .current
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
        {
            h.shutdown();
        }
    }

    /// Whether it was raised.
    pub fn is_stopped(&self) -> bool {
        self.stopped.load(Ordering::SeqCst)
    }

    fn set_current(&self, handle: Option<ShutdownHandle>) {
        *self.current.lock().unwrap_or_else(PoisonError::into_inner) = handle;
        if self.is_stopped()
            && let Some(h) = self
                .current
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .as_ref()
        {
            h.shutdown();
        }
    }
}

/// Serves VMM connections on `listener` one after another until `stop` is raised. `name`
/// names the socket in logs and in [`GuestConnection::name`].
pub fn serve_socket(
    listener: &UnixListener,
    name: &str,
    config: &DeviceConfig,
    factory: &dyn HandlerFactory,
    stop: &StopSignal,
) -> Result<(), ServeError> {
    let connections = AtomicU64::new(0);
    loop {
        if !wait_readable(listener, stop).map_err(|source| ServeError::Poll {
            socket: name.to_owned(),
            source,
        })? {
            return Ok(());
        }
        let n = connections.fetch_add(1, Ordering::Relaxed);
        let conn_name = format!("{name}#{n}");
        match serve_connection(listener, &conn_name, config, factory, stop) {
            ConnectionEnd::Disconnected => log::info!("{conn_name}: disconnected"),
            ConnectionEnd::Failed(why) => log::warn!("{conn_name}: connection failed: {why}"),
        }
        if stop.is_stopped() {
            return Ok(());
        }
    }
}

/// Waits until `listener` has a connection (true) or `stop` is raised (false).
fn wait_readable(listener: &UnixListener, stop: &StopSignal) -> std::io::Result<bool> {
    loop {
        if stop.is_stopped() {
            return Ok(false);
        }
        let mut fds = [
            PollFd::new(listener, PollFlags::IN),
            PollFd::new(&stop.event, PollFlags::IN),
        ];
        match poll(&mut fds, None) {
            Ok(_) => {}
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
        let [conn, _] = &fds;
        if stop.is_stopped() {
            return Ok(false);
        }
        if conn.revents().contains(PollFlags::IN) {
            return Ok(true);
        }
    }
}

/// Accepts one connection and serves it until it ends; the guest's state is torn down
/// before this returns.
pub fn serve_connection(
    listener: &UnixListener,
    name: &str,
    config: &DeviceConfig,
    factory: &dyn HandlerFactory,
    stop: &StopSignal,
) -> ConnectionEnd {
    let mem = GuestMemoryAtomic::new(GuestMemoryMmap::new());
    let exposure = match VhostExposure::new(name, config.shmem_size, mem.clone()) {
        Ok(e) => e,
        Err(e) => return ConnectionEnd::Failed(format!("cannot start the exposure thread: {e}")),
    };
    let handler = factory.connect(GuestConnection {
        name: name.to_owned(),
        exposure: exposure.clone(),
        vhost: exposure.clone(),
    });
    let device = Arc::new(BufbrokerDevice::new(
        DeviceConfig {
            name: name.to_owned(),
            ..config.clone()
        },
        handler.clone(),
        exposure.clone(),
        mem.clone(),
    ));
    let end = run_daemon(listener, name, device, mem, stop);
    // Teardown first (queued before close, so it runs with the channel already gone), then
    // close, which waits for it.
    exposure.schedule(move || handler.teardown(Teardown::Disconnect));
    exposure.close();
    end
}

fn run_daemon(
    listener: &UnixListener,
    name: &str,
    device: Arc<BufbrokerDevice>,
    mem: GuestMemoryAtomic<GuestMemoryMmap>,
    stop: &StopSignal,
) -> ConnectionEnd {
    let mut daemon = match VhostUserDaemon::new(name.to_owned(), device, mem) {
        Ok(d) => d,
        Err(e) => return ConnectionEnd::Failed(format!("cannot create the daemon: {e}")),
    };
    let mut accept_from = match listener.try_clone() {
        Ok(l) => Listener::from(l),
        Err(e) => return ConnectionEnd::Failed(format!("cannot clone the listener: {e}")),
    };
    if let Err(e) = daemon.start(&mut accept_from) {
        return ConnectionEnd::Failed(format!("cannot accept: {e}"));
    }
    log::info!("{name}: VMM connected");
    stop.set_current(daemon.shutdown_handle());
    let result = daemon.wait();
    stop.set_current(None);
    for handler in daemon.get_epoll_handlers() {
        handler.send_exit_event();
    }
    match result {
        Ok(())
        | Err(vhost_user_backend::Error::HandleRequest(
            vhost::vhost_user::Error::Disconnected | vhost::vhost_user::Error::PartialMessage,
        )) => ConnectionEnd::Disconnected,
        Err(e) => ConnectionEnd::Failed(e.to_string()),
    }
}
