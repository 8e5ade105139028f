//! The C API of the bufbroker client library (`libbufbroker_client`, header `bufbroker.h`).
//!
//! Every exported function catches panics (`catch_unwind`) and turns them into
//! `BB_ERROR_PANIC`; errors are returned as a [`bb_status`] and described by
//! [`bb_last_error`] (per thread). Handles are opaque; buffers stay owned by the client
//! handle until `bb_free` or `bb_client_destroy`.

// C naming for C types.
#![allow(non_camel_case_types)]

use std::cell::RefCell;
use std::collections::HashMap;
use std::ffi::{CStr, CString, c_char};
use std::os::fd::AsRawFd;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;

use bufbroker_guest::bufbroker_proto::constraint::Usage;
use bufbroker_guest::bufbroker_proto::wire::{BufferId, Placement};
use bufbroker_guest::bufbroker_proto::{Fourcc, Plan, Request};
use bufbroker_guest::local::LocalTransport;
use bufbroker_guest::virtio_pci::{VirtioPciOptions, VirtioPciTransport};
use bufbroker_guest::{
    Buffer, BufferMap, Client, ClientError, ClientOptions, Transport, participants,
};

/// Result of every call.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum bb_status {
    /// Success.
    BB_OK = 0,
    /// A null pointer, bad string, unknown placement or unknown buffer id.
    BB_ERROR_INVALID_ARGUMENT = 1,
    /// The transport failed (socket, device, timeout).
    BB_ERROR_TRANSPORT = 2,
    /// The broker refused the request (`ErrorReply`).
    BB_ERROR_BROKER = 3,
    /// The broker's reply is invalid or inconsistent.
    BB_ERROR_INVALID_REPLY = 4,
    /// The buffer could not be mapped.
    BB_ERROR_MAP = 5,
    /// A bug: the library panicked (the call had no effect on the caller's memory).
    BB_ERROR_PANIC = 6,
}

/// Placement of a new buffer: in the device's shared-memory window (guests).
pub const BB_PLACEMENT_HOST_WINDOW: u32 = 0;
/// Placement of a new buffer: an fd passed over the local socket (host processes).
pub const BB_PLACEMENT_HOST_CLIENT: u32 = 2;

/// Most planes in a `bb_buffer_info`.
pub const BB_MAX_PLANES: usize = 4;

/// One plane of a buffer.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct bb_plane {
    /// Offset from the start of the buffer.
    pub offset: u64,
    /// Bytes per row.
    pub stride: u32,
    /// Bytes of the plane.
    pub size: u64,
}

/// A buffer request: one buffer used by this process's CPU and the named participants.
#[repr(C)]
#[derive(Debug)]
pub struct bb_request {
    /// Width in pixels.
    pub width: u32,
    /// Height in rows.
    pub height: u32,
    /// DRM fourcc, 0 for any.
    pub fourcc: u32,
    /// Usage bits added by the requester (`PROTOCOL.md` §5.1).
    pub usage: u32,
    /// `BB_PLACEMENT_*`.
    pub placement: u32,
    /// Names of participants configured on the broker (may be null when `named_count` is 0).
    pub named: *const *const c_char,
    /// Number of names.
    pub named_count: usize,
}

/// What `bb_allocate` returns.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct bb_buffer_info {
    /// Broker buffer id.
    pub id: u64,
    /// Shared-object UUID (RFC 4122 byte order).
    pub uuid: [u8; 16],
    /// DRM fourcc.
    pub fourcc: u32,
    /// DRM format modifier.
    pub modifier: u64,
    /// Width.
    pub width: u32,
    /// Height.
    pub height: u32,
    /// Bytes of the buffer.
    pub size: u64,
    /// Number of valid entries in `planes`.
    pub num_planes: u32,
    /// Plane layouts.
    pub planes: [bb_plane; BB_MAX_PLANES],
    /// The buffer's fd for host-client placements, else -1. Owned by the client handle: valid
    /// until `bb_free`; `dup` it to keep it.
    pub fd: i32,
}

struct Held {
    buffer: Buffer,
    plan: Plan,
    map: Option<BufferMap>,
}

/// A broker session (opaque).
pub struct bb_client {
    client: Client<Box<dyn Transport>>,
    buffers: HashMap<u64, Held>,
}

thread_local! {
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

fn set_error(message: String) {
    let c = CString::new(message.replace('\0', " ")).unwrap_or_default();
    LAST_ERROR.with(|e| *e.borrow_mut() = c);
}

type Outcome = Result<(), (bb_status, String)>;

/// Runs `f`, catching panics and recording the error message.
fn guard(f: impl FnOnce() -> Outcome) -> bb_status {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(())) => bb_status::BB_OK,
        Ok(Err((status, message))) => {
            set_error(message);
            status
        }
        Err(_) => {
            set_error("internal error: the library panicked".into());
            bb_status::BB_ERROR_PANIC
        }
    }
}

fn client_error(e: ClientError) -> (bb_status, String) {
    let status = match &e {
        ClientError::Transport(_) => bb_status::BB_ERROR_TRANSPORT,
        ClientError::Broker { .. } | ClientError::NotNegotiated(_) | ClientError::Version(_) => {
            bb_status::BB_ERROR_BROKER
        }
        ClientError::Map(..) | ClientError::NoWindow(_) | ClientError::NotMappable(..) => {
            bb_status::BB_ERROR_MAP
        }
        _ => bb_status::BB_ERROR_INVALID_REPLY,
    };
    (
        status,
        bufbroker_guest::bufbroker_proto::wire::error_chain(&e),
    )
}

fn invalid(message: &str) -> (bb_status, String) {
    (bb_status::BB_ERROR_INVALID_ARGUMENT, message.to_owned())
}

fn connect(t: Box<dyn Transport>, out: *mut *mut bb_client) -> Outcome {
    if out.is_null() {
        return Err(invalid("out is null"));
    }
    let client = Client::connect(t, &ClientOptions::default()).map_err(client_error)?;
    let handle = Box::new(bb_client {
        client,
        buffers: HashMap::new(),
    });
    // SAFETY: `out` is non-null and, by the caller's contract, valid for a write.
    unsafe { out.write(Box::into_raw(handle)) };
    Ok(())
}

/// Connects to the broker's local socket at `path` and negotiates a session.
///
/// # Safety
///
/// `path` must be a NUL-terminated string; `out` must be valid for writing a pointer. On
/// success `*out` is a handle to release with `bb_client_destroy`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn bb_connect_local(
    path: *const c_char,
    out: *mut *mut bb_client,
) -> bb_status {
    guard(|| {
        if path.is_null() {
            return Err(invalid("path is null"));
        }
        // SAFETY: non-null and NUL-terminated by the caller's contract.
        let path = unsafe { CStr::from_ptr(path) }
            .to_str()
            .map_err(|_| invalid("path is not UTF-8"))?;
        let t = LocalTransport::connect(Path::new(path))
            .map_err(|e| client_error(ClientError::Transport(e)))?;
        connect(Box::new(t), out)
    })
}

/// Claims the bufbroker virtio device (PCI 1af4:1065; `bdf` selects one, or null for the
/// first) with the userspace virtio-pci driver, and negotiates a session. Needs root inside
/// a Linux guest.
///
/// # Safety
///
/// `bdf` must be null or a NUL-terminated string; `out` must be valid for writing a pointer.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn bb_connect_device(
    bdf: *const c_char,
    out: *mut *mut bb_client,
) -> bb_status {
    guard(|| {
        let mut options = VirtioPciOptions::default();
        if !bdf.is_null() {
            // SAFETY: non-null and NUL-terminated by the caller's contract.
            let s = unsafe { CStr::from_ptr(bdf) }
                .to_str()
                .map_err(|_| invalid("bdf is not UTF-8"))?;
            options.bdf = Some(s.to_owned());
        }
        let t = VirtioPciTransport::open(&options).map_err(|e| {
            (
                bb_status::BB_ERROR_TRANSPORT,
                bufbroker_guest::bufbroker_proto::wire::error_chain(&e),
            )
        })?;
        connect(Box::new(t), out)
    })
}

/// Ends the session: drops every mapping, closes every fd, and releases the handle. The
/// broker frees the session's buffers when the connection ends.
///
/// # Safety
///
/// `client` must be null or a handle from `bb_connect_*` not yet destroyed; it is invalid
/// afterwards.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn bb_client_destroy(client: *mut bb_client) {
    let _ = guard(|| {
        if !client.is_null() {
            // SAFETY: a live handle from Box::into_raw, destroyed once (caller's contract).
            drop(unsafe { Box::from_raw(client) });
        }
        Ok(())
    });
}

/// Borrows the handle.
///
/// # Safety
///
/// `client` must be null or a live handle.
unsafe fn handle<'a>(client: *mut bb_client) -> Result<&'a mut bb_client, (bb_status, String)> {
    // SAFETY: null or live and not aliased during the call (caller's contract).
    unsafe { client.as_mut() }.ok_or_else(|| invalid("client is null"))
}

/// Sends `Ping`; writes the round-trip time in nanoseconds to `nanos` if not null.
///
/// # Safety
///
/// `client` must be a live handle; `nanos` null or valid for a write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn bb_ping(client: *mut bb_client, nanos: *mut u64) -> bb_status {
    guard(|| {
        // SAFETY: caller's contract.
        let c = unsafe { handle(client) }?;
        let rtt = c.client.ping(b"bufbroker-c").map_err(client_error)?;
        if !nanos.is_null() {
            // SAFETY: non-null and valid for a write (caller's contract).
            unsafe { nanos.write(u64::try_from(rtt.as_nanos()).unwrap_or(u64::MAX)) };
        }
        Ok(())
    })
}

/// Allocates one buffer for `request` and describes it in `*info`.
///
/// # Safety
///
/// `client` must be a live handle; `request` valid for reads, with `named` pointing to
/// `named_count` NUL-terminated strings; `info` valid for a write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn bb_allocate(
    client: *mut bb_client,
    request: *const bb_request,
    info: *mut bb_buffer_info,
) -> bb_status {
    guard(|| {
        // SAFETY: caller's contract.
        let c = unsafe { handle(client) }?;
        // SAFETY: null or valid for reads (caller's contract).
        let r = unsafe { request.as_ref() }.ok_or_else(|| invalid("request is null"))?;
        if info.is_null() {
            return Err(invalid("info is null"));
        }
        let placement = match r.placement {
            BB_PLACEMENT_HOST_WINDOW => Placement::HostWindow,
            BB_PLACEMENT_HOST_CLIENT => Placement::HostClient,
            _ => return Err(invalid("unknown placement")),
        };
        let usage = Usage::from_bits(r.usage).ok_or_else(|| invalid("unknown usage bits"))?;
        let mut parts = vec![participants::cpu()];
        if r.named_count > 0 {
            if r.named.is_null() {
                return Err(invalid("named is null"));
            }
            // SAFETY: `named` points to `named_count` pointers (caller's contract).
            let names = unsafe { std::slice::from_raw_parts(r.named, r.named_count) };
            for &n in names {
                if n.is_null() {
                    return Err(invalid("a participant name is null"));
                }
                // SAFETY: non-null, NUL-terminated (caller's contract).
                let name = unsafe { CStr::from_ptr(n) }
                    .to_str()
                    .map_err(|_| invalid("a participant name is not UTF-8"))?;
                parts.push(participants::named(name, Usage::empty()));
            }
        }
        let req = Request {
            width: r.width,
            height: r.height,
            formats: if r.fourcc == 0 {
                vec![]
            } else {
                vec![Fourcc(r.fourcc)]
            },
            usage,
            participants: parts,
            count: 1,
        };
        let alloc = c.client.allocate(&req, placement).map_err(client_error)?;
        let plan = alloc.plan;
        let buffer = alloc
            .buffers
            .into_iter()
            .next()
            .ok_or_else(|| (bb_status::BB_ERROR_INVALID_REPLY, "no buffer".to_owned()))?;
        let mut planes = [bb_plane::default(); BB_MAX_PLANES];
        for (dst, p) in planes.iter_mut().zip(&plan.planes) {
            *dst = bb_plane {
                offset: p.offset,
                stride: p.stride,
                size: p.size,
            };
        }
        let out = bb_buffer_info {
            id: buffer.id().0,
            uuid: *buffer.info.uuid.as_bytes(),
            fourcc: plan.fourcc.0,
            modifier: plan.modifier.0,
            width: plan.width,
            height: plan.height,
            size: plan.size,
            num_planes: u32::try_from(plan.planes.len().min(BB_MAX_PLANES)).unwrap_or(0),
            planes,
            fd: buffer.fd.as_ref().map_or(-1, |fd| fd.as_raw_fd()),
        };
        c.buffers.insert(
            out.id,
            Held {
                buffer,
                plan,
                map: None,
            },
        );
        // SAFETY: non-null and valid for a write (caller's contract).
        unsafe { info.write(out) };
        Ok(())
    })
}

/// Maps buffer `id` into this process; writes its address and length. The mapping stays
/// valid until `bb_free(id)` or `bb_client_destroy`. Other processes may access the memory
/// concurrently.
///
/// # Safety
///
/// `client` must be a live handle; `ptr` and `len` valid for writes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn bb_map(
    client: *mut bb_client,
    id: u64,
    ptr: *mut *mut u8,
    len: *mut usize,
) -> bb_status {
    guard(|| {
        // SAFETY: caller's contract.
        let c = unsafe { handle(client) }?;
        if ptr.is_null() || len.is_null() {
            return Err(invalid("ptr or len is null"));
        }
        let held = c
            .buffers
            .get_mut(&id)
            .ok_or_else(|| invalid("unknown buffer id"))?;
        let map = match &held.map {
            Some(m) => m.clone(),
            None => {
                let m = c
                    .client
                    .map(&held.buffer, &held.plan)
                    .map_err(client_error)?;
                held.map = Some(m.clone());
                m
            }
        };
        // SAFETY: both non-null and valid for writes (caller's contract).
        unsafe {
            ptr.write(map.as_ptr());
            len.write(map.len());
        }
        Ok(())
    })
}

/// Exports buffer `id` as a virtio shared object; writes its UUID (16 bytes).
///
/// # Safety
///
/// `client` must be a live handle; `uuid` valid for writing 16 bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn bb_export(client: *mut bb_client, id: u64, uuid: *mut u8) -> bb_status {
    guard(|| {
        // SAFETY: caller's contract.
        let c = unsafe { handle(client) }?;
        if uuid.is_null() {
            return Err(invalid("uuid is null"));
        }
        let u = c.client.export(BufferId(id)).map_err(client_error)?;
        // SAFETY: `uuid` is valid for 16 bytes (caller's contract); the source is a local array.
        unsafe { std::ptr::copy_nonoverlapping(u.as_bytes().as_ptr(), uuid, 16) };
        Ok(())
    })
}

/// Frees buffer `id`: unmaps it here, closes its fd, and asks the broker to free it.
///
/// # Safety
///
/// `client` must be a live handle. Pointers from `bb_map(id)` are invalid afterwards.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn bb_free(client: *mut bb_client, id: u64) -> bb_status {
    guard(|| {
        // SAFETY: caller's contract.
        let c = unsafe { handle(client) }?;
        drop(c.buffers.remove(&id));
        c.client.free(BufferId(id)).map_err(client_error)
    })
}

/// The message of the last error on this thread (empty if none). Valid until the next call
/// on this thread.
#[unsafe(no_mangle)]
pub extern "C" fn bb_last_error() -> *const c_char {
    catch_unwind(|| LAST_ERROR.with(|e| e.borrow().as_ptr())).unwrap_or(c"panic".as_ptr())
}
