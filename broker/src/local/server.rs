//! The listening socket and one thread per client.

use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use bufbroker_proto::wire::{self, ErrorCode, ErrorReply, Message};
use thiserror::Error;

use super::framing::{FramingError, read_frame, send_frame};
use crate::session::{Broker, Reply, Session};

/// Errors of the local server.
#[derive(Debug, Error)]
pub enum ServerError {
    /// Something that is not a socket is in the way.
    #[error("{0} exists and is not a socket")]
    NotASocket(PathBuf),
    /// Another broker is listening there.
    #[error("{0} is in use by a running server")]
    InUse(PathBuf),
    /// Binding failed.
    #[error("cannot listen on {path}")]
    Bind {
        /// The socket path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Accepting a connection failed.
    #[error("accepting a connection failed")]
    Accept(#[source] std::io::Error),
    /// Starting a client thread failed.
    #[error("starting a client thread failed")]
    Spawn(#[source] std::io::Error),
}

/// A bound local socket.
#[derive(Debug)]
pub struct LocalServer {
    listener: UnixListener,
    path: PathBuf,
    broker: Arc<Broker>,
    clients: Arc<AtomicU32>,
}

/// One connected client counted against the limit; released when dropped.
struct ClientSlot(Arc<AtomicU32>);

impl ClientSlot {
    /// Counts one more client unless `limit` are connected.
    fn take(count: &Arc<AtomicU32>, limit: u32) -> Option<ClientSlot> {
        count
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < limit).then_some(n + 1)
            })
            .ok()
            .map(|_| ClientSlot(count.clone()))
    }
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl LocalServer {
    /// Listens on `path`. A stale socket left by a broker that is gone is replaced; a live
    /// one or any other file is an error.
    pub fn bind(path: &Path, broker: Arc<Broker>) -> Result<LocalServer, ServerError> {
        if let Ok(meta) = std::fs::symlink_metadata(path) {
            if !meta.file_type().is_socket() {
                return Err(ServerError::NotASocket(path.to_owned()));
            }
            if UnixStream::connect(path).is_ok() {
                return Err(ServerError::InUse(path.to_owned()));
            }
            let _ = std::fs::remove_file(path);
        }
        let listener = UnixListener::bind(path).map_err(|source| ServerError::Bind {
            path: path.to_owned(),
            source,
        })?;
        Ok(LocalServer {
            listener,
            path: path.to_owned(),
            broker,
            clients: Arc::new(AtomicU32::new(0)),
        })
    }

    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Accepts clients forever, each on its own thread.
    pub fn serve(&self) -> Result<(), ServerError> {
        loop {
            let (stream, _) = match self.listener.accept() {
                Ok(conn) => conn,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                // Out of descriptors or memory: refuse this one, keep serving the others.
                Err(e) if e.raw_os_error().is_some_and(is_resource) => {
                    log::warn!("cannot accept a client: {e}");
                    std::thread::sleep(std::time::Duration::from_millis(50));
                    continue;
                }
                Err(e) => return Err(ServerError::Accept(e)),
            };
            let limit = match self.broker.config().global.local_clients {
                0 => crate::config::DEFAULT_LOCAL_CLIENTS,
                n => n,
            };
            let Some(slot) = ClientSlot::take(&self.clients, limit) else {
                log::warn!(
                    "refusing a local client: {limit} clients are connected ([global] local_clients)"
                );
                drop(stream);
                continue;
            };
            let broker = self.broker.clone();
            let spawned = std::thread::Builder::new()
                .name("bufbroker-client".into())
                .spawn(move || {
                    serve_client(stream, broker);
                    drop(slot);
                });
            // A client the broker cannot serve is dropped; the others keep being served.
            if let Err(e) = spawned {
                log::warn!(
                    "cannot start a thread for a local client: {}",
                    ServerError::Spawn(e)
                );
            }
        }
    }
}

/// EMFILE, ENFILE, ENOBUFS, ENOMEM.
fn is_resource(errno: i32) -> bool {
    use rustix::io::Errno;
    [Errno::MFILE, Errno::NFILE, Errno::NOBUFS, Errno::NOMEM]
        .iter()
        .any(|e| e.raw_os_error() == errno)
}

/// Serves one client until it disconnects; its session (and everything it holds) ends here.
pub fn serve_client(mut stream: UnixStream, broker: Arc<Broker>) {
    let (name, pid) = match rustix::net::sockopt::socket_peercred(&stream) {
        Ok(cred) => {
            let name = format!("uid:{}", cred.uid.as_raw());
            let pid = cred.pid.as_raw_nonzero();
            log::info!("{name}: client pid {pid} connected");
            (name, pid)
        }
        Err(e) => {
            log::warn!("SO_PEERCRED failed ({e}); refusing the client");
            return;
        }
    };
    let mut session = Session::new(broker, &name, None);
    loop {
        let frame = match read_frame(&mut stream) {
            Ok(Some(frame)) => frame,
            Ok(None) => break,
            Err((id, e)) => {
                if let FramingError::Header(wire_error) = &e {
                    let reply = Reply {
                        message: Message::ErrorReply(ErrorReply::from(wire_error)),
                        fds: Vec::new(),
                    };
                    let _ = send_reply(&mut stream, id.unwrap_or(0), reply);
                }
                log::info!("{name}: closing the connection: {}", wire::error_chain(&e));
                break;
            }
        };
        let (id, reply) = session.handle_bytes(&frame);
        if let Err(e) = send_reply(&mut stream, id, reply) {
            log::info!(
                "{name}: cannot send a reply, closing: {}",
                wire::error_chain(&e)
            );
            break;
        }
    }
    drop(session);
    drop(stream);
    // After the connection is closed: tests/e2e counts the broker's open fds after this line.
    log::info!("{name}: client pid {pid} disconnected");
}

fn send_reply(stream: &mut UnixStream, id: u32, reply: Reply) -> Result<(), FramingError> {
    let bytes = wire::encode(&reply.message, id).or_else(|e| {
        let error = ErrorReply::new(ErrorCode::INTERNAL, wire::error_chain(&e));
        wire::encode(&Message::ErrorReply(error), id)
    });
    match bytes {
        Ok(bytes) => send_frame(stream, &bytes, &reply.fds),
        Err(e) => Err(FramingError::Header(e)),
    }
    // `reply.fds` (the broker's duplicates) close here; the client has its own copies.
}
