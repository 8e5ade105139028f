//! The local Unix-socket transport, for host processes (VMM device backends, host pipelines).
//!
//! Framing: every message is the 16-byte header plus payload (`PROTOCOL.md` §1). On a
//! `SOCK_SEQPACKET` socket each message is one packet; on a `SOCK_STREAM` socket (PROTOCOL.md
//! §8) the reader takes the 16-byte header, then exactly `payload_len` bytes. [`LocalTransport::connect`]
//! tries `SOCK_SEQPACKET` first and falls back to `SOCK_STREAM` when the broker's socket is a
//! stream socket. File descriptors arrive as `SCM_RIGHTS` ancillary data with the reply's
//! bytes. `Event` messages may be interleaved with replies; they are queued for
//! [`Transport::recv_event`].
//!
//! A `HelloReply` that comes with an fd (only the guest agent, `bufbroker-guestd`, sends one)
//! carries the host window: the transport maps the whole file from offset 0 and offers it as
//! [`Transport::window`], so `Location::HostWindow` buffers map as over the device.

use std::collections::VecDeque;
use std::io::{IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bufbroker_proto::wire::{self, HEADER_SIZE, MAX_MESSAGE_SIZE};
use rustix::event::{PollFd, PollFlags, Timespec};
use rustix::io::Errno;
use rustix::net::{
    AddressFamily, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags,
    SendAncillaryBuffer, SendFlags, SocketAddrUnix, SocketFlags, SocketType,
};

use crate::mapping::MappedRegion;
use crate::transport::{Transport, TransportError};

/// Most fds one message may carry (one per buffer of the largest `Allocate`).
pub const MAX_FDS_PER_MESSAGE: usize = bufbroker_proto::limits::MAX_BUFFER_COUNT as usize;
/// Most events kept while waiting for replies; older ones are dropped (with a log line).
pub const MAX_QUEUED_EVENTS: usize = 256;
/// Default time to wait for a reply.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// One received message and the fds that came with it.
type Received = (Vec<u8>, Vec<OwnedFd>);

/// How messages are delimited on the socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// `SOCK_SEQPACKET`: one message per packet.
    Seqpacket,
    /// `SOCK_STREAM`: header, then `payload_len` bytes.
    Stream,
}

/// A connection to the broker's local socket.
#[derive(Debug)]
pub struct LocalTransport {
    sock: OwnedFd,
    framing: Framing,
    events: VecDeque<Vec<u8>>,
    timeout: Duration,
    broken: bool,
    window: Option<Arc<MappedRegion>>,
}

impl LocalTransport {
    /// Connects to the broker's socket at `path` (`SOCK_SEQPACKET`, else `SOCK_STREAM`).
    pub fn connect(path: &Path) -> Result<Self, TransportError> {
        let addr =
            SocketAddrUnix::new(path).map_err(|e| TransportError::errno("socket path", e))?;
        let mut last = Errno::PROTOTYPE;
        for ty in [SocketType::SEQPACKET, SocketType::STREAM] {
            let sock =
                rustix::net::socket_with(AddressFamily::UNIX, ty, SocketFlags::CLOEXEC, None)
                    .map_err(|e| TransportError::errno("socket", e))?;
            match rustix::net::connect(&sock, &addr) {
                Ok(()) => return Self::from_fd(sock),
                // A stream listener refuses seqpacket peers with EPROTOTYPE.
                Err(e) if e == Errno::PROTOTYPE => last = e,
                Err(e) => return Err(TransportError::errno("connect", e)),
            }
        }
        Err(TransportError::errno("connect", last))
    }

    /// Uses an already connected Unix socket (`SOCK_SEQPACKET` or `SOCK_STREAM`), e.g. one
    /// end of a socketpair or an fd inherited from a parent.
    pub fn from_fd(sock: OwnedFd) -> Result<Self, TransportError> {
        let ty = rustix::net::sockopt::socket_type(&sock)
            .map_err(|e| TransportError::errno("getsockopt(SO_TYPE)", e))?;
        let framing = if ty == SocketType::SEQPACKET {
            Framing::Seqpacket
        } else if ty == SocketType::STREAM {
            Framing::Stream
        } else {
            return Err(TransportError::Setup(format!(
                "socket type {ty:?} is neither SOCK_SEQPACKET nor SOCK_STREAM"
            )));
        };
        Ok(LocalTransport {
            sock,
            framing,
            events: VecDeque::new(),
            timeout: DEFAULT_TIMEOUT,
            broken: false,
            window: None,
        })
    }

    /// Sets how long [`Transport::round_trip`] waits for a reply.
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }

    /// How messages are delimited on this connection.
    pub fn framing(&self) -> Framing {
        self.framing
    }

    fn send(&mut self, request: &[u8]) -> Result<(), TransportError> {
        if request.len() > MAX_MESSAGE_SIZE {
            return Err(TransportError::RequestTooLarge {
                len: request.len(),
                max: MAX_MESSAGE_SIZE,
            });
        }
        let mut sent = 0;
        while sent < request.len() {
            let rest = request.get(sent..).unwrap_or_default();
            let mut control = SendAncillaryBuffer::default();
            match rustix::net::sendmsg(
                &self.sock,
                &[IoSlice::new(rest)],
                &mut control,
                SendFlags::NOSIGNAL,
            ) {
                Ok(n) if self.framing == Framing::Seqpacket && n != request.len() => {
                    self.broken = true;
                    return Err(TransportError::Protocol(format!(
                        "short seqpacket send: {n} of {} bytes",
                        request.len()
                    )));
                }
                Ok(n) => sent += n,
                Err(Errno::INTR) => {}
                Err(Errno::PIPE | Errno::CONNRESET) => return Err(TransportError::Closed),
                Err(e) => {
                    self.broken = self.framing == Framing::Stream && sent > 0;
                    return Err(TransportError::errno("sendmsg", e));
                }
            }
        }
        Ok(())
    }

    /// Waits until the socket is readable or `deadline` passes (`None`: do not wait).
    fn wait_readable(&self, deadline: Option<Instant>) -> Result<bool, TransportError> {
        loop {
            let left = deadline.map_or(Duration::ZERO, |d| {
                d.saturating_duration_since(Instant::now())
            });
            let ts = Timespec::try_from(left).unwrap_or(Timespec {
                tv_sec: i64::MAX,
                tv_nsec: 0,
            });
            let mut fds = [PollFd::new(&self.sock, PollFlags::IN)];
            match rustix::event::poll(&mut fds, Some(&ts)) {
                Ok(0) if deadline.is_some_and(|d| Instant::now() < d) => continue,
                Ok(0) => return Ok(false),
                Ok(_) => return Ok(true),
                Err(Errno::INTR) => continue,
                Err(e) => return Err(TransportError::errno("poll", e)),
            }
        }
    }

    /// One `recvmsg` into `buf`, collecting fds. Returns the byte count and return flags.
    fn recv_some(
        &self,
        buf: &mut [u8],
        fds: &mut Vec<OwnedFd>,
    ) -> Result<(usize, ReturnFlags), TransportError> {
        let mut space =
            [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS_PER_MESSAGE))];
        let mut control = RecvAncillaryBuffer::new(&mut space);
        let r = loop {
            match rustix::net::recvmsg(
                &self.sock,
                &mut [IoSliceMut::new(buf)],
                &mut control,
                RecvFlags::CMSG_CLOEXEC,
            ) {
                Err(Errno::INTR) => continue,
                Err(Errno::CONNRESET) => return Err(TransportError::Closed),
                other => break other.map_err(|e| TransportError::errno("recvmsg", e))?,
            }
        };
        for msg in control.drain() {
            if let RecvAncillaryMessage::ScmRights(received) = msg {
                fds.extend(received);
            }
        }
        if r.flags.contains(ReturnFlags::CTRUNC) {
            return Err(TransportError::Protocol(format!(
                "more than {MAX_FDS_PER_MESSAGE} fds with one message"
            )));
        }
        Ok((r.bytes, r.flags))
    }

    /// Receives one whole message (and its fds), waiting until `deadline`.
    fn recv_message(
        &mut self,
        deadline: Option<Instant>,
    ) -> Result<Option<Received>, TransportError> {
        if !self.wait_readable(deadline)? {
            return Ok(None);
        }
        let mut fds = Vec::new();
        match self.framing {
            Framing::Seqpacket => {
                let mut buf = vec![0u8; MAX_MESSAGE_SIZE];
                let (n, flags) = self.recv_some(&mut buf, &mut fds)?;
                if n == 0 {
                    return Err(TransportError::Closed);
                }
                if flags.contains(ReturnFlags::TRUNC) {
                    return Err(TransportError::Protocol(format!(
                        "packet larger than {MAX_MESSAGE_SIZE} bytes"
                    )));
                }
                buf.truncate(n);
                Ok(Some((buf, fds)))
            }
            Framing::Stream => {
                let mut header = [0u8; HEADER_SIZE];
                self.read_exact(&mut header, &mut fds, deadline)?;
                let h = wire::decode_header(&header).map_err(|e| {
                    // Without a valid length the next message cannot be found.
                    self.broken = true;
                    TransportError::Protocol(e.to_string())
                })?;
                let mut msg = vec![0u8; HEADER_SIZE + h.payload_len as usize];
                if let Some(head) = msg.get_mut(..HEADER_SIZE) {
                    head.copy_from_slice(&header);
                }
                if let Some(payload) = msg.get_mut(HEADER_SIZE..) {
                    self.read_exact(payload, &mut fds, deadline)?;
                }
                Ok(Some((msg, fds)))
            }
        }
    }

    fn read_exact(
        &mut self,
        mut buf: &mut [u8],
        fds: &mut Vec<OwnedFd>,
        deadline: Option<Instant>,
    ) -> Result<(), TransportError> {
        while !buf.is_empty() {
            if !self.wait_readable(deadline.or_else(|| Some(Instant::now() + self.timeout)))? {
                self.broken = true;
                return Err(TransportError::Timeout(self.timeout));
            }
            let (n, _) = self.recv_some(buf, fds)?;
            if n == 0 {
                return Err(TransportError::Closed);
            }
            buf = buf.get_mut(n..).unwrap_or_default();
        }
        Ok(())
    }

    /// Server side (the fake broker): waits for the next message, whatever its type.
    /// `Ok(None)` when the peer hung up.
    pub(crate) fn recv_request(&mut self) -> Result<Option<Received>, TransportError> {
        loop {
            let deadline = Instant::now() + Duration::from_secs(3600);
            match self.recv_message(Some(deadline)) {
                Ok(Some(m)) => return Ok(Some(m)),
                Ok(None) => continue,
                Err(TransportError::Closed) => return Ok(None),
                Err(e) => return Err(e),
            }
        }
    }

    /// Maps the host window the guest agent sent with `HelloReply` (the whole file).
    fn adopt_window(&mut self, fd: &OwnedFd) {
        let size = match rustix::fs::fstat(fd) {
            Ok(st) => u64::try_from(st.st_size).unwrap_or(0),
            Err(e) => {
                log::warn!("fstat of the window fd failed: {e}");
                return;
            }
        };
        if size == 0 {
            return;
        }
        match MappedRegion::map_file(fd, size, true) {
            Ok(region) => self.window = Some(Arc::new(region)),
            Err(e) => log::warn!("cannot map the host window: {e}"),
        }
    }

    fn queue_event(&mut self, event: Vec<u8>) {
        if self.events.len() >= MAX_QUEUED_EVENTS {
            log::warn!("event queue full: dropping the oldest event");
            self.events.pop_front();
        }
        self.events.push_back(event);
    }
}

/// Whether `msg` is an event (type code `0x4000..=0x7fff`).
fn is_event(msg: &[u8]) -> bool {
    let code = msg
        .get(6..8)
        .and_then(|b| <[u8; 2]>::try_from(b).ok())
        .map(u16::from_le_bytes);
    matches!(code, Some(0x4000..=0x7fff))
}

/// Whether `msg` is a `HelloReply`.
fn is_hello_reply(msg: &[u8]) -> bool {
    wire::decode_header(msg).is_ok_and(|h| h.message_type() == Some(wire::MessageType::HelloReply))
}

impl Transport for LocalTransport {
    fn round_trip(&mut self, request: &[u8]) -> Result<(Vec<u8>, Vec<OwnedFd>), TransportError> {
        if self.broken {
            return Err(TransportError::Broken);
        }
        self.send(request)?;
        let deadline = Instant::now() + self.timeout;
        loop {
            let received = self.recv_message(Some(deadline)).inspect_err(|_| {
                // A failed read may leave part of a message (or a late reply) in the socket:
                // every later reply would be read out of step, so the connection is done.
                self.broken = true;
            })?;
            match received {
                None => {
                    // The reply may still come, and would then answer the next request.
                    self.broken = true;
                    return Err(TransportError::Timeout(self.timeout));
                }
                Some((msg, _fds)) if is_event(&msg) => self.queue_event(msg),
                Some((msg, mut fds)) if is_hello_reply(&msg) && !fds.is_empty() => {
                    let fd = fds.remove(0);
                    self.adopt_window(&fd);
                    return Ok((msg, fds));
                }
                Some(reply) => return Ok(reply),
            }
        }
    }

    fn recv_event(&mut self, timeout: Option<Duration>) -> Result<Option<Vec<u8>>, TransportError> {
        if let Some(e) = self.events.pop_front() {
            return Ok(Some(e));
        }
        if self.broken {
            return Err(TransportError::Broken);
        }
        let deadline = timeout.map(|t| Instant::now() + t);
        match self.recv_message(deadline)? {
            None => Ok(None),
            Some((msg, _)) if is_event(&msg) => Ok(Some(msg)),
            Some(_) => Err(TransportError::Protocol(
                "a reply arrived while no request was outstanding".into(),
            )),
        }
    }

    fn window(&self) -> Option<Arc<MappedRegion>> {
        self.window.clone()
    }
}

impl AsFd for LocalTransport {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.sock.as_fd()
    }
}
