//! The request queue: descriptor chain in, handler, reply out.
//!
//! A driver posts one chain per request: readable descriptors holding the message, then
//! writable descriptors for the reply. Nothing in a chain is trusted: its readable part may be
//! too large, point outside guest memory, or hold garbage; its writable part may be too small.
//! Every chain gets a used element (so the driver can reclaim it) and, when it has room for
//! one, a complete message: the handler's reply, or an `ErrorReply` from this module. A reply
//! is never truncated.

use std::io::{Read, Write};

use bufbroker_proto::wire::{self, ErrorCode};
use vhost_user_backend::{VringRwLock, VringT};
use virtio_queue::{DescriptorChain, QueueT};
use vm_memory::{GuestAddressSpace, GuestMemoryAtomic, GuestMemoryLoadGuard, GuestMemoryMmap};

use super::handler::{RequestHandler, error_reply};

type Mem = GuestMemoryMmap<()>;
type Chain = DescriptorChain<GuestMemoryLoadGuard<Mem>>;

/// Serves every available chain of the request queue, then signals the driver if it asked.
///
/// With EVENT_IDX the device runs the disable / drain / re-enable loop, so a chain published
/// while notifications were off is not missed. Errors touch only the ring itself (a bad
/// avail index, guest memory gone); they are logged and serving stops until the next kick.
pub(crate) fn serve_requests(
    vring: &VringRwLock,
    mem: &GuestMemoryAtomic<Mem>,
    event_idx: bool,
    handler: &dyn RequestHandler,
) {
    if let Err(e) = drain(vring, mem, event_idx, handler) {
        log::warn!("request queue: {e}");
    }
}

fn drain(
    vring: &VringRwLock,
    mem: &GuestMemoryAtomic<Mem>,
    event_idx: bool,
    handler: &dyn RequestHandler,
) -> Result<(), String> {
    loop {
        if event_idx {
            vring
                .disable_notification()
                .map_err(|e| format!("cannot disable notifications: {e}"))?;
        }
        let mut used_any = false;
        loop {
            // Pop in a statement of its own: the ring's write guard is a temporary of this
            // statement, and `add_used` below takes the same lock (a `while let` would hold it
            // for the whole body and deadlock).
            let chain = vring
                .get_mut()
                .get_queue_mut()
                .pop_descriptor_chain(mem.memory());
            let Some(chain) = chain else { break };
            let head = chain.head_index();
            let used_len = answer(chain, handler);
            vring
                .add_used(head, used_len)
                .map_err(|e| format!("cannot return chain {head}: {e}"))?;
            used_any = true;
        }
        if used_any
            && vring
                .needs_notification()
                .map_err(|e| format!("cannot read the event index: {e}"))?
        {
            vring
                .signal_used_queue()
                .map_err(|e| format!("cannot signal the driver: {e}"))?;
        }
        if !event_idx
            || !vring
                .enable_notification()
                .map_err(|e| format!("cannot enable notifications: {e}"))?
        {
            return Ok(());
        }
    }
}

/// Answers one chain; returns the number of bytes written into it.
fn answer(chain: Chain, handler: &dyn RequestHandler) -> u32 {
    let mem = chain.memory();
    let mut writer = match chain.clone().writer(mem) {
        Ok(w) => w,
        Err(e) => {
            log::debug!(
                "request queue: chain {} has no usable writable part: {e}",
                chain.head_index()
            );
            return 0;
        }
    };
    let capacity = writer.available_bytes();
    let reply = match read_request(chain.clone()) {
        Ok(request) => {
            let reply = handler.handle(&request, capacity);
            if reply.len() > capacity {
                error_reply(
                    wire::peek_request_id(&request).unwrap_or(0),
                    ErrorCode::MESSAGE_TOO_LARGE,
                    &format!(
                        "the reply of {} bytes does not fit in the {capacity} writable bytes of the chain",
                        reply.len()
                    ),
                )
            } else {
                reply
            }
        }
        Err(refusal) => refusal,
    };
    let reply = if reply.len() <= capacity {
        reply
    } else {
        // Not even the error fits with its text: try without it, else write nothing.
        let id = wire::peek_request_id(&reply).unwrap_or(0);
        let code = decode_error_code(&reply).unwrap_or(ErrorCode::MESSAGE_TOO_LARGE);
        let bare = error_reply(id, code, "");
        if bare.len() <= capacity {
            bare
        } else {
            Vec::new()
        }
    };
    match writer.write_all(&reply) {
        Ok(()) => u32::try_from(reply.len()).unwrap_or(0),
        Err(e) => {
            log::debug!("request queue: cannot write the reply: {e}");
            0
        }
    }
}

/// The readable bytes of `chain`, or the encoded `ErrorReply` refusing it.
fn read_request(chain: Chain) -> Result<Vec<u8>, Vec<u8>> {
    let mem = chain.memory();
    let mut reader = chain.clone().reader(mem).map_err(|e| {
        error_reply(
            0,
            ErrorCode::INVALID_ARGUMENT,
            &format!("the readable part of the descriptor chain is unusable: {e}"),
        )
    })?;
    let len = reader.available_bytes();
    if len > wire::MAX_MESSAGE_SIZE {
        let mut head = [0u8; wire::HEADER_SIZE];
        let id = reader
            .read_exact(&mut head)
            .ok()
            .and_then(|()| wire::peek_request_id(&head))
            .unwrap_or(0);
        return Err(error_reply(
            id,
            ErrorCode::MESSAGE_TOO_LARGE,
            &format!(
                "the request of {len} bytes exceeds the maximum message size of {}",
                wire::MAX_MESSAGE_SIZE
            ),
        ));
    }
    let mut request = vec![0u8; len];
    reader.read_exact(&mut request).map_err(|e| {
        error_reply(
            0,
            ErrorCode::INVALID_ARGUMENT,
            &format!("cannot read the request from guest memory: {e}"),
        )
    })?;
    Ok(request)
}

fn decode_error_code(reply: &[u8]) -> Option<ErrorCode> {
    match wire::decode(reply).ok()? {
        (_, wire::Message::ErrorReply(e)) => Some(e.code),
        _ => None,
    }
}
