//! `bufbroker-e2e-consumer`: a second vhost-user device in the QEMU end-to-end VM
//! (`tests/e2e/qemu-scenarios.sh`, scenario b) that consumes a buffer the guest exported
//! through the broker, the way a host device backend (video decoder, GPU) would.
//!
//! ```text
//! bufbroker-e2e-consumer --socket VHOST_SOCKET --local-socket BROKER_LOCAL_SOCKET --requests FIFO
//! ```
//!
//! It serves QEMU on VHOST_SOCKET (one queue, protocol features BACKEND_REQ, REPLY_ACK and
//! SHARED_OBJECT; nothing drives its queue) and prints `CONSUMER-LISTENING` once the socket is
//! bound. For every line `UUID SIZE` read from FIFO:
//! 1. it sends VHOST_USER_BACKEND_SHARED_OBJECT_LOOKUP for UUID on its backend channel, as the
//!    virtio shared-object spec intends, and prints `CONSUMER-LOOKUP <outcome>`. With QEMU
//!    11.1.3 this cannot work (`docs/qemu-11.1-shared-object-lookup.md`: QEMU asks the
//!    exporting backend with a GET_SHARED_OBJECT without the UUID, and loses the fd); the
//!    outcome is recorded, not required. vhost 0.18's `shared_object_lookup` sends a
//!    placeholder fd with the request and rejects a reply that carries one, so a reply with an
//!    fd shows up as `invalid reply`;
//! 2. it resolves UUID through the broker's local socket instead (the grant names this
//!    process's `uid:N`), maps the fd and checks the guest's pattern; prints
//!    `CONSUMER-RESULT pass|fail <detail>`.
//!
//! After FIFO's writer closes it, it keeps serving QEMU until QEMU disconnects (a backend that
//! goes away under QEMU 11.1.3 can crash it) and exits 0 if every check passed.

use std::io::BufRead;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

use bufbroker_tests::e2e;
use uuid::Uuid;
use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserSharedMsg};
use vhost::vhost_user::{Backend, Listener, VhostUserFrontendReqHandler};
use vhost_user_backend::{VhostUserBackend, VhostUserDaemon, VringRwLock};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use vm_memory::{GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{
    EventConsumer, EventFlag, EventNotifier, new_event_consumer_and_notifier,
};

/// How long a lookup may wait for QEMU's answer.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Default)]
struct Consumer {
    channel: Mutex<Option<Backend>>,
    channel_set: Condvar,
}

impl Consumer {
    fn channel(&self, timeout: Duration) -> Option<Backend> {
        let guard = self.channel.lock().unwrap_or_else(PoisonError::into_inner);
        let (guard, _) = self
            .channel_set
            .wait_timeout_while(guard, timeout, |c| c.is_none())
            .unwrap_or_else(PoisonError::into_inner);
        guard.clone()
    }
}

impl VhostUserBackend for Consumer {
    type Bitmap = ();
    type Vring = VringRwLock;

    fn num_queues(&self) -> usize {
        1
    }

    fn max_queue_size(&self) -> usize {
        256
    }

    fn features(&self) -> u64 {
        (1 << VIRTIO_F_VERSION_1)
            | vhost::vhost_user::message::VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits()
    }

    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        VhostUserProtocolFeatures::MQ
            | VhostUserProtocolFeatures::REPLY_ACK
            | VhostUserProtocolFeatures::BACKEND_REQ
            | VhostUserProtocolFeatures::SHARED_OBJECT
    }

    fn set_event_idx(&self, _enabled: bool) {}

    fn update_memory(&self, _mem: GuestMemoryAtomic<GuestMemoryMmap>) -> std::io::Result<()> {
        Ok(())
    }

    fn set_backend_req_fd(&self, backend: Backend) {
        *self.channel.lock().unwrap_or_else(PoisonError::into_inner) = Some(backend);
        self.channel_set.notify_all();
    }

    fn exit_event(&self, _thread_index: usize) -> Option<(EventConsumer, EventNotifier)> {
        new_event_consumer_and_notifier(EventFlag::NONBLOCK).ok()
    }

    fn handle_event(
        &self,
        _device_event: u16,
        _evset: EventSet,
        _vrings: &[VringRwLock],
        _thread_id: usize,
    ) -> std::io::Result<()> {
        Ok(())
    }
}

struct Args {
    socket: PathBuf,
    local_socket: PathBuf,
    requests: PathBuf,
}

fn args() -> Result<Args, String> {
    let (mut socket, mut local_socket, mut requests) = (None, None, None);
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let value = it
            .next()
            .map(PathBuf::from)
            .ok_or(format!("{a} needs a value"))?;
        match a.as_str() {
            "--socket" => socket = Some(value),
            "--local-socket" => local_socket = Some(value),
            "--requests" => requests = Some(value),
            other => return Err(format!("unknown argument {other}")),
        }
    }
    Ok(Args {
        socket: socket.ok_or("--socket is required")?,
        local_socket: local_socket.ok_or("--local-socket is required")?,
        requests: requests.ok_or("--requests is required")?,
    })
}

fn main() -> ExitCode {
    match run() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("bufbroker-e2e-consumer: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<bool, String> {
    let args = args()?;
    let _ = std::fs::remove_file(&args.socket);
    let listener =
        UnixListener::bind(&args.socket).map_err(|e| format!("{}: {e}", args.socket.display()))?;
    let consumer = Arc::new(Consumer::default());
    let mut daemon = VhostUserDaemon::new(
        "bufbroker-e2e-consumer".into(),
        consumer.clone(),
        GuestMemoryAtomic::new(GuestMemoryMmap::new()),
    )
    .map_err(|e| format!("daemon: {e}"))?;
    println!("CONSUMER-LISTENING {}", args.socket.display());
    let served = std::thread::spawn(move || -> Result<(), String> {
        daemon
            .start(&mut Listener::from(listener))
            .map_err(|e| format!("accept: {e}"))?;
        println!("CONSUMER-CONNECTED");
        let end = daemon.wait();
        println!("CONSUMER-DISCONNECTED {end:?}");
        Ok(())
    });

    let mut all_passed = true;
    let requests = std::fs::File::open(&args.requests)
        .map_err(|e| format!("{}: {e}", args.requests.display()))?;
    for line in std::io::BufReader::new(requests).lines() {
        let line = line.map_err(|e| e.to_string())?;
        let mut words = line.split_whitespace();
        let (Some(uuid), Some(size)) = (words.next(), words.next()) else {
            continue;
        };
        let uuid = Uuid::parse_str(uuid).map_err(|e| e.to_string())?;
        let size: u64 = size.parse().map_err(|e| format!("size: {e}"))?;
        lookup(&consumer, uuid);
        match e2e::import_and_check(Path::new(&args.local_socket), uuid, size) {
            Ok(detail) => {
                println!("CONSUMER-RESULT pass {detail} (through the broker's local socket)")
            }
            Err(e) => {
                println!("CONSUMER-RESULT fail {e}");
                all_passed = false;
            }
        }
    }
    match served.join() {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            println!("CONSUMER-ERROR {e}");
            all_passed = false;
        }
        Err(_) => return Err("the daemon thread panicked".into()),
    }
    Ok(all_passed)
}

/// SHARED_OBJECT_LOOKUP through QEMU; prints the outcome.
fn lookup(consumer: &Consumer, uuid: Uuid) {
    let Some(channel) = consumer.channel(LOOKUP_TIMEOUT) else {
        println!("CONSUMER-LOOKUP {uuid}: no backend channel from QEMU");
        return;
    };
    let (tx, rx) = mpsc::channel();
    let t = Instant::now();
    std::thread::spawn(move || {
        let placeholder = std::fs::File::open("/dev/null");
        let result = match &placeholder {
            Ok(f) => channel
                .shared_object_lookup(&VhostUserSharedMsg { uuid }, f)
                .map_err(|e| e.to_string()),
            Err(e) => Err(format!("/dev/null: {e}")),
        };
        let _ = tx.send(result);
    });
    let outcome = match rx.recv_timeout(LOOKUP_TIMEOUT) {
        Ok(Ok(status)) => format!("status {status}, no fd in the reply"),
        Ok(Err(e)) => format!("failed: {e}"),
        Err(_) => format!("no answer within {LOOKUP_TIMEOUT:?}"),
    };
    println!("CONSUMER-LOOKUP {uuid}: {outcome} ({:?})", t.elapsed());
}
