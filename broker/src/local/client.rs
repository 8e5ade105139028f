//! A minimal client for the local socket (tests and tools; guest-lib has the real one).

use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::path::Path;

use bufbroker_proto::wire::{self, Features, Hello, HelloReply, Message, WireError};
use thiserror::Error;

use super::framing::{FramingError, recv_frame, send_frame};

/// Client failures.
#[derive(Debug, Error)]
pub enum ClientError {
    /// Connecting failed.
    #[error("cannot connect to the broker")]
    Connect(#[source] std::io::Error),
    /// The socket failed.
    #[error("talking to the broker failed")]
    Framing(#[from] FramingError),
    /// A message could not be encoded or decoded.
    #[error("bad message")]
    Wire(#[from] WireError),
    /// The broker closed the connection.
    #[error("the broker closed the connection")]
    Closed,
    /// The reply answers another request.
    #[error("reply to request {got}, expected {want}")]
    WrongReply {
        /// Id received.
        got: u32,
        /// Id sent.
        want: u32,
    },
    /// `Hello` was answered with something else.
    #[error("Hello was refused: {0:?}")]
    Refused(Box<Message>),
}

/// A connection to the broker's local socket.
#[derive(Debug)]
pub struct Client {
    stream: UnixStream,
    next_id: u32,
}

impl Client {
    /// Connects to the socket at `path`.
    pub fn connect(path: &Path) -> Result<Client, ClientError> {
        let stream = UnixStream::connect(path).map_err(ClientError::Connect)?;
        Ok(Client { stream, next_id: 1 })
    }

    /// Connects and negotiates `features`.
    pub fn connect_hello(
        path: &Path,
        features: Features,
    ) -> Result<(Client, HelloReply), ClientError> {
        let mut client = Self::connect(path)?;
        let hello = Hello {
            min_version: wire::MIN_PROTOCOL_VERSION,
            max_version: wire::MAX_PROTOCOL_VERSION,
            features,
            client: "bufbroker local client".into(),
        };
        match client.request(&Message::Hello(hello))? {
            (Message::HelloReply(r), _) => Ok((client, r)),
            (other, _) => Err(ClientError::Refused(Box::new(other))),
        }
    }

    /// Sends `message` and waits for its reply and the descriptors that came with it.
    pub fn request(&mut self, message: &Message) -> Result<(Message, Vec<OwnedFd>), ClientError> {
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1).max(1);
        let bytes = wire::encode(message, id)?;
        send_frame(&mut self.stream, &bytes, &[])?;
        self.receive(id)
    }

    /// Sends raw bytes (for tests of bad input).
    pub fn send_raw(&mut self, bytes: &[u8]) -> Result<(), ClientError> {
        send_frame(&mut self.stream, bytes, &[])?;
        Ok(())
    }

    /// Waits for the reply to request `id`.
    pub fn receive(&mut self, id: u32) -> Result<(Message, Vec<OwnedFd>), ClientError> {
        let (frame, fds) = recv_frame(&mut self.stream)?.ok_or(ClientError::Closed)?;
        let (header, message) = wire::decode(&frame)?;
        if header.request_id != id {
            return Err(ClientError::WrongReply {
                got: header.request_id,
                want: id,
            });
        }
        Ok((message, fds))
    }

    /// The socket.
    pub fn stream(&self) -> &UnixStream {
        &self.stream
    }
}
