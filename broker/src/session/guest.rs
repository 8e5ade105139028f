//! Sessions behind the vhost-user device: one [`Session`] per guest connection, answering the
//! device's requests through its [`RequestHandler`] seam.

use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex, MutexGuard};

use bufbroker_proto::wire::{self, ErrorCode};
use uuid::Uuid;

use super::{Broker, Session};
use crate::exposure::GuestExposure;
use crate::vhost::{GuestConnection, HandlerFactory, RequestHandler, Teardown};

/// The request handler of one guest connection. A reset replaces the session with a fresh one
/// (everything the guest held is freed); a disconnect drops it.
pub struct GuestHandler {
    broker: Arc<Broker>,
    name: String,
    exposure: Arc<dyn GuestExposure>,
    session: Arc<Mutex<Option<Session>>>,
}

impl GuestHandler {
    /// A handler for the guest called `name` (its owner name for quotas and policy).
    pub fn new(broker: Arc<Broker>, name: &str, exposure: Arc<dyn GuestExposure>) -> Self {
        let session = Session::new(broker.clone(), name, Some(exposure.clone()));
        GuestHandler {
            broker,
            name: name.to_owned(),
            exposure,
            session: Arc::new(Mutex::new(Some(session))),
        }
    }

    fn session_handle(&self) -> Arc<Mutex<Option<Session>>> {
        self.session.clone()
    }

    fn lock(&self) -> MutexGuard<'_, Option<Session>> {
        self.session.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl RequestHandler for GuestHandler {
    fn handle(&self, request: &[u8], _reply_capacity: usize) -> Vec<u8> {
        let mut guard = self.lock();
        let session = guard.get_or_insert_with(|| {
            Session::new(self.broker.clone(), &self.name, Some(self.exposure.clone()))
        });
        let (id, reply) = session.handle_bytes(request);
        if !reply.fds.is_empty() {
            // A guest cannot receive descriptors; the session only makes them for local
            // clients. Dropping them here closes them.
            log::warn!(
                "{}: reply carried descriptors a guest cannot receive",
                self.name
            );
        }
        match wire::encode(&reply.message, id) {
            Ok(bytes) => bytes,
            Err(e) => {
                crate::vhost::handler::error_reply(id, ErrorCode::INTERNAL, &wire::error_chain(&e))
            }
        }
    }

    fn teardown(&self, why: Teardown) {
        // Runs on the device's exposure thread. A request in flight may hold the session while
        // it waits for that same thread to send a SHMEM_MAP: blocking here would deadlock. So
        // take the session only if it is free, and otherwise drop it from a helper thread once
        // the request is done (its maps are then torn down with everything else).
        match self.session.try_lock() {
            Ok(mut guard) => {
                let old = guard.take();
                drop(guard);
                drop(old);
                log::info!("{}: guest state freed ({why:?})", self.name);
            }
            Err(_) => {
                let session = self.session_handle();
                let name = self.name.clone();
                let spawned = std::thread::Builder::new()
                    .name("bufbroker-teardown".into())
                    .spawn(move || {
                        let old = session.lock().unwrap_or_else(|e| e.into_inner()).take();
                        drop(old);
                        log::info!(
                            "{name}: guest state freed after the request in flight ({why:?})"
                        );
                    });
                if let Err(e) = spawned {
                    log::error!("{}: cannot start the teardown thread: {e}", self.name);
                }
            }
        }
    }

    fn shared_object(&self, uuid: Uuid) -> Option<OwnedFd> {
        let guard = self.session.try_lock().ok()?;
        let owner = guard.as_ref()?.owner();
        self.broker.registry().owned_fd_by_uuid(owner, uuid).ok()
    }
}

/// A factory giving each guest connection a [`GuestHandler`]. The guest's owner name is the
/// socket's name (the configuration's `[guests.NAME]` tables match it).
pub fn guest_factory(broker: Arc<Broker>) -> Arc<dyn HandlerFactory> {
    Arc::new(move |guest: GuestConnection| -> Arc<dyn RequestHandler> {
        let name = guest_name(&guest.name);
        Arc::new(GuestHandler::new(broker.clone(), &name, guest.exposure))
    })
}

/// The owner name of a connection named `SOCKET#N`: the socket's file name.
fn guest_name(connection: &str) -> String {
    let socket = connection.rsplit_once('#').map_or(connection, |(s, _)| s);
    std::path::Path::new(socket)
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or(socket)
        .to_owned()
}

#[cfg(test)]
mod tests {
    use super::guest_name;

    #[test]
    fn guest_name_is_the_socket_file_name() {
        assert_eq!(guest_name("/run/bufbroker/vm1.sock#3"), "vm1.sock");
        assert_eq!(guest_name("fd 3#0"), "fd 3");
    }
}
