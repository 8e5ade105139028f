//! Reading and writing framed messages with descriptors on a stream socket.

use std::io::{IoSlice, IoSliceMut, Read, Write};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;

use bufbroker_proto::limits::MAX_BUFFER_COUNT;
use bufbroker_proto::wire::{self, HEADER_SIZE, WireError};
use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};
use thiserror::Error;

/// Most descriptors one message carries (one per buffer of the largest allocation).
pub const MAX_FDS: usize = MAX_BUFFER_COUNT as usize;

/// Errors moving frames over the socket.
#[derive(Debug, Error)]
pub enum FramingError {
    /// The peer closed the connection inside a message.
    #[error("the connection closed after {got} of {want} bytes of a message")]
    Truncated {
        /// Bytes received.
        got: usize,
        /// Bytes the frame needs.
        want: usize,
    },
    /// The header is not a valid bufbroker header.
    #[error("invalid message header")]
    Header(#[source] WireError),
    /// Reading or writing the socket failed.
    #[error("socket I/O failed")]
    Io(#[from] std::io::Error),
    /// Sending descriptors failed.
    #[error("sending {fds} descriptors failed")]
    SendFds {
        /// How many.
        fds: usize,
        /// The OS error.
        #[source]
        source: rustix::io::Errno,
    },
    /// More descriptors than a message may carry.
    #[error("{0} descriptors exceed the {MAX_FDS} one message may carry")]
    TooManyFds(usize),
}

/// Reads until `buf` is full; returns how many bytes were read before end of file.
fn read_full(stream: &mut UnixStream, buf: &mut [u8]) -> Result<usize, FramingError> {
    let mut got = 0;
    while let Some(rest) = buf.get_mut(got..).filter(|r| !r.is_empty()) {
        match stream.read(rest) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(got)
}

/// Reads one frame (header + payload). `Ok(None)` at a clean end of file between frames.
/// On a bad header, returns the header bytes read so far inside the error path's reply.
pub fn read_frame(stream: &mut UnixStream) -> Result<Option<Vec<u8>>, (Option<u32>, FramingError)> {
    let mut frame = vec![0u8; HEADER_SIZE];
    let got = read_full(stream, &mut frame).map_err(|e| (None, e))?;
    if got == 0 {
        return Ok(None);
    }
    finish_frame(stream, frame, got).map(Some)
}

/// Completes a frame whose first `got` header bytes are in `frame`.
fn finish_frame(
    stream: &mut UnixStream,
    mut frame: Vec<u8>,
    got: usize,
) -> Result<Vec<u8>, (Option<u32>, FramingError)> {
    if got < HEADER_SIZE {
        let more = frame
            .get_mut(got..)
            .map_or(Ok(0), |rest| read_full(stream, rest));
        let more = more.map_err(|e| (None, e))?;
        if got + more < HEADER_SIZE {
            let e = FramingError::Truncated {
                got: got + more,
                want: HEADER_SIZE,
            };
            return Err((None, e));
        }
    }
    let id = wire::peek_request_id(&frame);
    let header = wire::decode_header(&frame).map_err(|e| (id, FramingError::Header(e)))?;
    let len = header.payload_len as usize;
    frame.resize(HEADER_SIZE + len, 0);
    let payload = frame.get_mut(HEADER_SIZE..).unwrap_or_default();
    let got = read_full(stream, payload).map_err(|e| (id, e))?;
    if got < len {
        let e = FramingError::Truncated {
            got: HEADER_SIZE + got,
            want: HEADER_SIZE + len,
        };
        return Err((id, e));
    }
    Ok(frame)
}

/// Sends `bytes` with `fds` attached to the first byte; `MSG_NOSIGNAL`, so a vanished peer
/// is an error, not a SIGPIPE.
pub fn send_frame(
    stream: &mut UnixStream,
    bytes: &[u8],
    fds: &[OwnedFd],
) -> Result<(), FramingError> {
    if fds.len() > MAX_FDS {
        return Err(FramingError::TooManyFds(fds.len()));
    }
    let borrowed: Vec<BorrowedFd<'_>> = fds.iter().map(AsFd::as_fd).collect();
    let mut space = vec![MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !borrowed.is_empty() && !control.push(SendAncillaryMessage::ScmRights(&borrowed)) {
        return Err(FramingError::TooManyFds(fds.len()));
    }
    let sent = loop {
        match rustix::net::sendmsg(
            &*stream,
            &[IoSlice::new(bytes)],
            &mut control,
            SendFlags::NOSIGNAL,
        ) {
            Ok(n) => break n,
            Err(rustix::io::Errno::INTR) => {}
            Err(source) => {
                return Err(FramingError::SendFds {
                    fds: fds.len(),
                    source,
                });
            }
        }
    };
    // The descriptors went with the first chunk; the rest is plain bytes.
    stream.write_all(bytes.get(sent..).unwrap_or_default())?;
    Ok(())
}

/// A frame and the descriptors that came with it.
pub type FrameWithFds = (Vec<u8>, Vec<OwnedFd>);

/// Reads one frame and the descriptors that came with it. `Ok(None)` at end of file.
pub fn recv_frame(stream: &mut UnixStream) -> Result<Option<FrameWithFds>, FramingError> {
    let mut frame = vec![0u8; HEADER_SIZE];
    let mut space = vec![MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let got = loop {
        let mut iov = [IoSliceMut::new(&mut frame)];
        match rustix::net::recvmsg(&*stream, &mut iov, &mut control, RecvFlags::CMSG_CLOEXEC) {
            Ok(r) => break r.bytes,
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(FramingError::Io(e.into())),
        }
    };
    let mut fds = Vec::new();
    for message in control.drain() {
        if let RecvAncillaryMessage::ScmRights(received) = message {
            fds.extend(received);
        }
    }
    if got == 0 {
        return Ok(None);
    }
    let frame = finish_frame(stream, frame, got).map_err(|(_, e)| e)?;
    Ok(Some((frame, fds)))
}
