//! An async wrapper around [`Client`] (feature `tokio`).
//!
//! The transports are synchronous (the virtio-pci driver polls a used ring; the local socket
//! blocks in `recvmsg`), so each call runs on tokio's blocking thread pool through
//! `spawn_blocking`, with the client behind a mutex: calls are serialised, one request in
//! flight at a time, exactly as with the synchronous client. Needs a tokio runtime.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bufbroker_proto::Request;
use bufbroker_proto::wire::{BufferId, Event, OwnerStats, Placement, SolveReply};
use thiserror::Error;
use uuid::Uuid;

use crate::client::{Allocation, Client, ClientError};
use crate::transport::Transport;

/// Errors of async calls.
#[derive(Debug, Error)]
pub enum AsyncError {
    /// The call failed.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// The blocking task panicked or was cancelled.
    #[error("the blocking task did not complete")]
    Join(#[from] tokio::task::JoinError),
    /// An earlier call panicked while holding the client.
    #[error("the client is poisoned by an earlier panic")]
    Poisoned,
}

/// A [`Client`] usable from async code.
#[derive(Debug)]
pub struct AsyncClient<T: Transport + Send + 'static> {
    inner: Arc<Mutex<Client<T>>>,
}

impl<T: Transport + Send + 'static> Clone for AsyncClient<T> {
    fn clone(&self) -> Self {
        AsyncClient {
            inner: self.inner.clone(),
        }
    }
}

impl<T: Transport + Send + 'static> AsyncClient<T> {
    /// Wraps a connected client.
    pub fn new(client: Client<T>) -> Self {
        AsyncClient {
            inner: Arc::new(Mutex::new(client)),
        }
    }

    /// Runs `f` with the client on the blocking pool.
    pub async fn with<R, F>(&self, f: F) -> Result<R, AsyncError>
    where
        R: Send + 'static,
        F: FnOnce(&mut Client<T>) -> Result<R, ClientError> + Send + 'static,
    {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            let mut client = inner.lock().map_err(|_| AsyncError::Poisoned)?;
            f(&mut client).map_err(AsyncError::from)
        })
        .await?
    }

    /// [`Client::ping`].
    pub async fn ping(&self, payload: Vec<u8>) -> Result<Duration, AsyncError> {
        self.with(move |c| c.ping(&payload)).await
    }

    /// [`Client::solve`].
    pub async fn solve(&self, request: Request) -> Result<SolveReply, AsyncError> {
        self.with(move |c| c.solve(&request)).await
    }

    /// [`Client::allocate`].
    pub async fn allocate(
        &self,
        request: Request,
        placement: Placement,
    ) -> Result<Allocation, AsyncError> {
        self.with(move |c| c.allocate(&request, placement)).await
    }

    /// [`Client::export`].
    pub async fn export(&self, buffer: BufferId) -> Result<Uuid, AsyncError> {
        self.with(move |c| c.export(buffer)).await
    }

    /// [`Client::free`].
    pub async fn free(&self, buffer: BufferId) -> Result<(), AsyncError> {
        self.with(move |c| c.free(buffer)).await
    }

    /// [`Client::stats`].
    pub async fn stats(&self) -> Result<Vec<OwnerStats>, AsyncError> {
        self.with(|c| c.stats()).await
    }

    /// [`Client::next_event`]; holds the client (blocking other calls) while it waits.
    pub async fn next_event(&self, timeout: Option<Duration>) -> Result<Option<Event>, AsyncError> {
        self.with(move |c| c.next_event(timeout)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::ClientOptions;
    use crate::fake::{FakeBroker, FakeTransport};

    #[tokio::test]
    async fn async_client_allocates_and_frees() {
        let t = FakeTransport::new(FakeBroker::new(), 1 << 24).unwrap();
        let client = AsyncClient::new(Client::connect(t, &ClientOptions::default()).unwrap());
        let request = Request {
            width: 64,
            height: 64,
            formats: vec![],
            usage: Default::default(),
            participants: vec![crate::participants::cpu()],
            count: 1,
        };

        client.ping(vec![1]).await.unwrap();
        let alloc = client
            .allocate(request, Placement::HostWindow)
            .await
            .unwrap();
        client.free(alloc.buffers[0].id()).await.unwrap();

        assert_eq!(client.stats().await.unwrap()[0].buffers, 0);
    }
}
