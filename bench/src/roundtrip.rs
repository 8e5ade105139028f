//! Requests through the vhost-user device and the real session, driven by the in-process
//! harness (`bufbroker-tests`): a guest driver on a split ring in memfd guest RAM, the VMM's
//! backend channel mapping window ranges for real, the broker's device and session behind the
//! socket. What a guest's request costs end to end, short of a real VM exit.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bufbroker::config::{Config, PoolConfig};
use bufbroker::session::{Broker, guest_factory};
use bufbroker::vhost::DeviceConfig;
use bufbroker_proto::wire::{
    self, Allocate, BufferId, Features, Free, Hello, Message, Ping, Placement, Solve,
};
use bufbroker_proto::{ConstraintSet, Participant, ParticipantId, Request, Usage};
use bufbroker_tests::broker::TestBroker;
use bufbroker_tests::vmm::{Vmm, VmmOptions};

const WAIT: Duration = Duration::from_secs(30);
/// Reply area of every request.
const REPLY_CAPACITY: u32 = 16 << 10;

/// A guest's 1080p NV12 frame, written and read by its CPU (3 MiB).
pub fn nv12_1080p() -> Request {
    let usage = Usage::CPU_READ | Usage::CPU_WRITE;
    Request {
        width: 1920,
        height: 1080,
        formats: vec!["NV12".parse().expect("known format")],
        usage,
        participants: vec![Participant::new(
            ParticipantId::Cpu,
            "guest cpu",
            usage,
            ConstraintSet::default(),
        )],
        count: 1,
    }
}

/// A broker (`Broker::from_config`: this machine's heaps) whose pool keeps up to
/// `pooled_buffers` freed buffers per owner (0: every allocation is cold).
pub fn broker(pooled_buffers: usize) -> Arc<Broker> {
    let config = Config {
        pool: PoolConfig {
            max_buffers_per_owner: pooled_buffers,
            max_bytes_per_owner: 1 << 30,
            max_bytes: 4 << 30,
        },
        ..Config::default()
    };
    Arc::new(Broker::from_config(config).expect("the memfd heap needs no device"))
}

/// The vhost-user device of `broker` on its own socket, with a window of `window` bytes.
pub fn device(broker: &Arc<Broker>, window: u64) -> TestBroker {
    TestBroker::start(
        guest_factory(broker.clone()),
        DeviceConfig {
            shmem_size: window,
            ..DeviceConfig::default()
        },
    )
    .expect("starting the device")
}

/// A negotiated guest on one device, with its requests encoded once.
pub struct Guest {
    /// The harness VMM and guest driver.
    pub vmm: Vmm,
    ping: Vec<u8>,
    solve: Vec<u8>,
    allocate: Vec<u8>,
}

impl Guest {
    /// Connects to `device` (guest RAM of `mem_size` bytes), starts it (SET_MEM_TABLE, the
    /// rings) and says `Hello`.
    pub fn connect(device: &TestBroker, mem_size: usize) -> Guest {
        let options = VmmOptions {
            mem_size,
            ..VmmOptions::default()
        };
        let vmm = Vmm::connect_and_start(device.socket(), options).expect("connecting");
        let request = nv12_1080p();
        let mut guest = Guest {
            vmm,
            ping: encode(&Message::Ping(Ping {
                payload: vec![0xab; 64],
            })),
            solve: encode(&Message::Solve(Solve {
                request: request.clone(),
            })),
            allocate: encode(&Message::Allocate(Allocate {
                request,
                placement: Placement::HostWindow,
            })),
        };
        let reply = guest.ask(&encode(&Message::Hello(Hello {
            min_version: wire::MIN_PROTOCOL_VERSION,
            max_version: wire::PROTOCOL_VERSION,
            features: Features::all(),
            client: "bench guest".into(),
        })));
        assert!(matches!(reply, Message::HelloReply(_)), "{reply:?}");
        guest
    }

    /// One request, one reply.
    pub fn ask(&mut self, request: &[u8]) -> Message {
        let bytes = self.vmm.request(request, REPLY_CAPACITY).expect("request");
        decode(&bytes)
    }

    /// `Ping` with 64 bytes, echoed as `Pong`: the ring and the session's dispatch alone.
    pub fn ping(&mut self) {
        let request = std::mem::take(&mut self.ping);
        let reply = self.ask(&request);
        self.ping = request;
        assert!(matches!(reply, Message::Pong(_)), "{reply:?}");
    }

    /// `Solve` for a 1080p NV12 frame (a plan-cache hit after the first).
    pub fn solve(&mut self) {
        let request = std::mem::take(&mut self.solve);
        let reply = self.ask(&request);
        self.solve = request;
        assert!(matches!(reply, Message::SolveReply(_)), "{reply:?}");
    }

    /// `Allocate` of a 1080p NV12 frame in the window (SHMEM_MAP), then `Free` (SHMEM_UNMAP):
    /// two requests.
    pub fn allocate_free(&mut self) {
        let request = std::mem::take(&mut self.allocate);
        let reply = self.ask(&request);
        self.allocate = request;
        let id = allocated(&reply);
        let freed = self.ask(&encode(&Message::Free(Free { buffer: id })));
        assert!(matches!(freed, Message::FreeReply(_)), "{freed:?}");
    }

    /// `n` requests in flight: all posted, one kick, all replies collected.
    fn pipeline(&mut self, requests: &[&[u8]]) -> Vec<Message> {
        for r in requests {
            self.vmm.submit(r, REPLY_CAPACITY).expect("submit");
        }
        self.vmm.kick(0).expect("kick");
        (0..requests.len())
            .map(|_| decode(&self.vmm.wait_used(0, WAIT).expect("reply").1))
            .collect()
    }

    /// `n` pings in flight.
    pub fn ping_batch(&mut self, n: usize) {
        let request = std::mem::take(&mut self.ping);
        self.pipeline(&vec![request.as_slice(); n]);
        self.ping = request;
    }

    /// `n` solves in flight.
    pub fn solve_batch(&mut self, n: usize) {
        let request = std::mem::take(&mut self.solve);
        self.pipeline(&vec![request.as_slice(); n]);
        self.solve = request;
    }

    /// `n` allocations in flight, then their `n` frees in flight.
    pub fn allocate_free_batch(&mut self, n: usize) {
        let request = std::mem::take(&mut self.allocate);
        let ids: Vec<BufferId> = self
            .pipeline(&vec![request.as_slice(); n])
            .iter()
            .map(allocated)
            .collect();
        self.allocate = request;
        let frees: Vec<Vec<u8>> = ids
            .into_iter()
            .map(|buffer| encode(&Message::Free(Free { buffer })))
            .collect();
        let frees: Vec<&[u8]> = frees.iter().map(Vec::as_slice).collect();
        self.pipeline(&frees);
    }
}

fn encode(message: &Message) -> Vec<u8> {
    wire::encode(message, 1).expect("encodable")
}

fn decode(bytes: &[u8]) -> Message {
    wire::decode(bytes).expect("a valid reply").1
}

fn allocated(reply: &Message) -> BufferId {
    match reply {
        Message::AllocateReply(r) => r.buffers.first().expect("one buffer").id,
        other => panic!("expected AllocateReply, got {other:?}"),
    }
}

/// `guests` guests of one broker, each on its own device socket (a VMM has its own socket),
/// so that they are served in parallel as separate VMs are.
pub struct Fleet {
    /// The guests (dropped before their devices).
    pub guests: Vec<Guest>,
    /// Their devices.
    pub devices: Vec<TestBroker>,
    /// How long connecting them took, per guest (socket, negotiation, SET_MEM_TABLE, rings,
    /// `Hello`).
    pub connect_time: Duration,
}

impl Fleet {
    /// `guests` guests on `broker`, each with 2 MiB of guest RAM and an 8 MiB window.
    pub fn new(broker: &Arc<Broker>, guests: usize) -> Fleet {
        raise_fd_limit();
        let start = Instant::now();
        let devices: Vec<TestBroker> = (0..guests).map(|_| device(broker, 8 << 20)).collect();
        let guests: Vec<Guest> = devices.iter().map(|d| Guest::connect(d, 2 << 20)).collect();
        let connect_time = start.elapsed() / u32::try_from(guests.len().max(1)).unwrap_or(1);
        Fleet {
            guests,
            devices,
            connect_time,
        }
    }

    /// Allocations (each with its `Free`) per second with the first `n` guests allocating
    /// concurrently for `time`, and the CPU time the process used meanwhile in cores
    /// (1.0 = one core busy all the time).
    pub fn throughput(&mut self, n: usize, time: Duration) -> (f64, f64) {
        let cpu_start = process_cpu();
        let start = Instant::now();
        let deadline = start + time;
        let done: u64 = std::thread::scope(|scope| {
            let workers: Vec<_> = self
                .guests
                .iter_mut()
                .take(n)
                .map(|guest| {
                    scope.spawn(move || {
                        let mut done = 0u64;
                        while Instant::now() < deadline {
                            guest.allocate_free();
                            done += 1;
                        }
                        done
                    })
                })
                .collect();
            workers
                .into_iter()
                .map(|w| w.join().expect("a guest thread panicked"))
                .sum()
        });
        let wall = start.elapsed().as_secs_f64();
        let cpu = (process_cpu() - cpu_start).as_secs_f64();
        (done as f64 / wall, cpu / wall)
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        // Disconnect every guest before stopping the devices.
        self.guests.clear();
        self.devices.clear();
    }
}

/// CPU time used by this process so far (every thread: the guests and the broker).
pub fn process_cpu() -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ProcessCPUTime);
    Duration::new(
        u64::try_from(t.tv_sec).unwrap_or(0),
        u32::try_from(t.tv_nsec).unwrap_or(0),
    )
}

/// Each guest holds about 30 descriptors on both sides of its socket: allow as many as the
/// hard limit lets.
fn raise_fd_limit() {
    let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile);
    if let Some(max) = limit.maximum {
        let _ = rustix::process::setrlimit(
            rustix::process::Resource::Nofile,
            rustix::process::Rlimit {
                current: Some(max),
                maximum: Some(max),
            },
        );
    }
}
