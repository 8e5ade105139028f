//! Shared by the wire tests: the fixed sample messages behind the golden vectors and the
//! fuzz seed corpora, and proptest strategies for every message.

// Test code: a panic is how a test reports failure.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]
#![allow(dead_code)]

use std::path::PathBuf;

use bufbroker_proto::solver::{
    Conflict, ConstraintKind, ConstraintOwner, IgnoredExtension, SplitProposal,
};
use bufbroker_proto::wire::*;
use bufbroker_proto::{
    AddressRange, CacheMode, ConstraintSet, Diagnostic, Extension, FormatModifiers, Fourcc,
    LayoutConstraints, MemoryConstraints, Modifier, Participant, ParticipantId, PciAddress, Plan,
    PlaneLayout, Request, Solution, Usage,
};
use proptest::prelude::*;
use uuid::Uuid;

pub fn golden_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

pub fn corpus_dir(target: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target)
}

pub const NV12: Fourcc = Fourcc::from_chars(*b"NV12");
pub const XR24: Fourcc = Fourcc::from_chars(*b"XR24");

/// The smallest useful request: a 64x32 XRGB8888 buffer the CPU writes.
pub fn small_request() -> Request {
    Request {
        width: 64,
        height: 32,
        formats: vec![XR24],
        usage: Usage::empty(),
        participants: vec![Participant::new(
            ParticipantId::Cpu,
            "cpu",
            Usage::CPU_WRITE,
            ConstraintSet::default(),
        )],
        count: 1,
    }
}

/// A video pipeline: a guest decoder, a host display with tiled and linear alternatives.
pub fn video_request() -> Request {
    Request {
        width: 1920,
        height: 1080,
        formats: vec![NV12],
        usage: Usage::CPU_READ,
        participants: vec![
            Participant::new(
                ParticipantId::GuestLocal(1),
                "decoder",
                Usage::VIDEO_DECODE,
                ConstraintSet {
                    formats: vec![FormatModifiers {
                        fourcc: NV12,
                        modifiers: vec![],
                    }],
                    layout: LayoutConstraints {
                        stride_alignment: 64,
                        height_alignment: 16,
                        ..LayoutConstraints::default()
                    },
                    ..ConstraintSet::default()
                },
            ),
            Participant {
                id: ParticipantId::Pci {
                    address: PciAddress {
                        domain: 0,
                        bus: 0,
                        device: 2,
                        function: 0,
                    },
                    vendor: 0x8086,
                    device: 0x46a6,
                },
                label: "display".into(),
                usage: Usage::SCANOUT,
                alternatives: vec![
                    ConstraintSet {
                        formats: vec![FormatModifiers {
                            fourcc: NV12,
                            modifiers: vec![Modifier::I915_Y_TILED],
                        }],
                        memory: MemoryConstraints {
                            heaps: vec!["system".into()],
                            dmabuf: true,
                            ..MemoryConstraints::default()
                        },
                        ..ConstraintSet::default()
                    },
                    ConstraintSet {
                        formats: vec![FormatModifiers {
                            fourcc: NV12,
                            modifiers: vec![Modifier::LINEAR],
                        }],
                        layout: LayoutConstraints {
                            stride_alignment: 256,
                            ..LayoutConstraints::default()
                        },
                        memory: MemoryConstraints {
                            address_bits: 32,
                            cache_modes: vec![CacheMode::WriteCombined, CacheMode::Uncached],
                            ..MemoryConstraints::default()
                        },
                        extensions: vec![Extension {
                            vendor: 0x01,
                            code: 7,
                            required: false,
                            payload: vec![1, 2, 3],
                        }],
                        ..ConstraintSet::default()
                    },
                ],
            },
        ],
        count: 2,
    }
}

/// Seeds for the `solve` fuzz target: the samples above, a tiled request and an
/// unsatisfiable one (so the diagnosis path is reached from the start).
pub fn solve_seed_requests() -> Vec<(&'static str, Request)> {
    let mut tiled = small_request();
    tiled.participants[0].alternatives[0].formats = vec![FormatModifiers {
        fourcc: XR24,
        modifiers: vec![
            Modifier::I915_Y_TILED,
            Modifier::I915_X_TILED,
            Modifier::LINEAR,
        ],
    }];
    tiled.participants[0].alternatives[0]
        .layout
        .stride_alignment = 128;
    let mut unsatisfiable = video_request();
    unsatisfiable.formats = vec![XR24];
    vec![
        ("small", small_request()),
        ("video", video_request()),
        ("tiled", tiled),
        ("unsatisfiable", unsatisfiable),
    ]
}

pub fn small_plan() -> Plan {
    Plan {
        fourcc: XR24,
        modifier: Modifier::LINEAR,
        width: 64,
        height: 32,
        planes: vec![PlaneLayout {
            offset: 0,
            stride: 256,
            size: 8192,
        }],
        size: 8192,
        alignment: 4096,
        heap: "memfd".into(),
        cache_mode: CacheMode::Cached,
        contiguous: false,
        address_bits: 64,
        coherent: false,
        usage: Usage::CPU_WRITE,
        alternatives: vec![0],
    }
}

pub fn video_plan() -> Plan {
    Plan {
        fourcc: NV12,
        modifier: Modifier::LINEAR,
        width: 1920,
        height: 1080,
        planes: vec![
            PlaneLayout {
                offset: 0,
                stride: 2048,
                size: 2048 * 1088,
            },
            PlaneLayout {
                offset: 2048 * 1088,
                stride: 2048,
                size: 2048 * 544,
            },
        ],
        size: 2048 * 1632,
        alignment: 4096,
        heap: "memfd".into(),
        cache_mode: CacheMode::WriteCombined,
        contiguous: false,
        address_bits: 32,
        coherent: false,
        usage: Usage::CPU_READ | Usage::VIDEO_DECODE | Usage::SCANOUT,
        alternatives: vec![0, 1],
    }
}

pub fn uuid(n: u8) -> Uuid {
    Uuid::from_bytes([
        0x6b, 0x1f, 0x3c, 0x2a, 0x90, 0x4e, 0x4d, 0x21, 0x8a, 0x5c, 0x00, 0x00, 0x00, 0x00, 0x00, n,
    ])
}

/// `(file stem, message, request id)` for every golden vector: each message type at least
/// once, each enum variant of a payload at least once.
pub fn golden_messages() -> Vec<(&'static str, Message, u32)> {
    let limits = WireLimits::CURRENT;
    vec![
        (
            "hello",
            Hello {
                min_version: 1,
                max_version: 1,
                features: Features::HOST_WINDOW | Features::SHARED_OBJECTS | Features::EVENTS,
                client: "guest".into(),
            }
            .into(),
            1,
        ),
        (
            "hello_reply",
            HelloReply {
                version: 1,
                features: Features::HOST_WINDOW | Features::SHARED_OBJECTS | Features::EVENTS,
                limits,
                broker: "bufbroker 0.1.0".into(),
            }
            .into(),
            1,
        ),
        (
            "ping",
            Ping {
                payload: vec![0xde, 0xad, 0xbe, 0xef],
            }
            .into(),
            2,
        ),
        (
            "pong",
            Pong {
                payload: vec![0xde, 0xad, 0xbe, 0xef],
            }
            .into(),
            2,
        ),
        (
            "register_participant",
            RegisterParticipant {
                name: "camera".into(),
                participant: Participant::new(
                    ParticipantId::Vfio("0000:00:04.0".into()),
                    "camera",
                    Usage::CAMERA_CAPTURE | Usage::DMA_WRITE,
                    ConstraintSet {
                        formats: vec![FormatModifiers {
                            fourcc: NV12,
                            modifiers: vec![],
                        }],
                        memory: MemoryConstraints {
                            contiguous: true,
                            behind_iommu: true,
                            iova_ranges: vec![AddressRange {
                                start: 0x1000,
                                end: 0xfeff_ffff,
                            }],
                            ..MemoryConstraints::default()
                        },
                        ..ConstraintSet::default()
                    },
                ),
            }
            .into(),
            3,
        ),
        (
            "register_participant_reply",
            RegisterParticipantReply {
                handle: ParticipantHandle(1),
            }
            .into(),
            3,
        ),
        (
            "unregister_participant",
            UnregisterParticipant {
                handle: ParticipantHandle(1),
            }
            .into(),
            4,
        ),
        (
            "unregister_participant_reply",
            UnregisterParticipantReply {
                handle: ParticipantHandle(1),
            }
            .into(),
            4,
        ),
        (
            "solve_small",
            Solve {
                request: small_request(),
            }
            .into(),
            5,
        ),
        (
            "solve_video",
            Solve {
                request: video_request(),
            }
            .into(),
            6,
        ),
        (
            "solve_reply_solved",
            SolveReply::Solved(Solution {
                plans: vec![small_plan()],
                ignored_extensions: vec![],
            })
            .into(),
            5,
        ),
        (
            "solve_reply_solved_video",
            SolveReply::Solved(Solution {
                plans: vec![video_plan()],
                ignored_extensions: vec![IgnoredExtension {
                    participant: 1,
                    alternative: 1,
                    vendor: 0x01,
                    code: 7,
                    required: false,
                }],
            })
            .into(),
            6,
        ),
        (
            "solve_reply_unsatisfiable",
            SolveReply::Unsatisfiable(Box::new(Diagnostic {
                conflicts: vec![
                    Conflict {
                        owner: ConstraintOwner::Request,
                        kind: ConstraintKind::Formats,
                        value: "NV12".into(),
                    },
                    Conflict {
                        owner: ConstraintOwner::Participant {
                            index: 1,
                            label: "display".into(),
                        },
                        kind: ConstraintKind::Formats,
                        value: "XRGB8888".into(),
                    },
                ],
                minimal: true,
                split: Some(SplitProposal {
                    first: vec![0],
                    second: vec![1],
                    first_plan: small_plan(),
                    second_plan: small_plan(),
                }),
                notes: vec!["a note".into()],
            }))
            .into(),
            7,
        ),
        (
            "allocate_host_window",
            Allocate {
                request: small_request(),
                placement: Placement::HostWindow,
            }
            .into(),
            8,
        ),
        (
            "allocate_guest_ram",
            Allocate {
                request: small_request(),
                placement: Placement::GuestRam {
                    ranges: vec![
                        GuestRange {
                            addr: 0x1_0000_0000,
                            len: 0x1000,
                        },
                        GuestRange {
                            addr: 0x8000_0000,
                            len: 0x1000,
                        },
                    ],
                },
            }
            .into(),
            9,
        ),
        (
            "allocate_host_client",
            Allocate {
                request: small_request(),
                placement: Placement::HostClient,
            }
            .into(),
            10,
        ),
        (
            "allocate_reply",
            AllocateReply {
                plan: small_plan(),
                buffers: vec![BufferInfo {
                    id: BufferId(1),
                    uuid: uuid(1),
                    location: Location::HostWindow {
                        shmid: 0,
                        offset: 0x20_0000,
                        len: 8192,
                    },
                }],
            }
            .into(),
            8,
        ),
        (
            "allocate_reply_other_locations",
            AllocateReply {
                plan: small_plan(),
                buffers: vec![
                    BufferInfo {
                        id: BufferId(2),
                        uuid: uuid(2),
                        location: Location::GuestRam,
                    },
                    BufferInfo {
                        id: BufferId(3),
                        uuid: uuid(3),
                        location: Location::HostClient { fd_index: 0 },
                    },
                    BufferInfo {
                        id: BufferId(4),
                        uuid: uuid(4),
                        location: Location::Unmapped,
                    },
                ],
            }
            .into(),
            9,
        ),
        (
            "free",
            Free {
                buffer: BufferId(1),
            }
            .into(),
            11,
        ),
        (
            "free_reply",
            FreeReply {
                buffer: BufferId(1),
            }
            .into(),
            11,
        ),
        (
            "export",
            Export {
                buffer: BufferId(1),
            }
            .into(),
            12,
        ),
        (
            "export_reply",
            ExportReply {
                buffer: BufferId(1),
                uuid: uuid(1),
            }
            .into(),
            12,
        ),
        (
            "import",
            Import {
                uuid: uuid(1),
                view: ImportView::HostWindow,
            }
            .into(),
            13,
        ),
        (
            "import_reply",
            ImportReply {
                buffer: BufferInfo {
                    id: BufferId(70_000),
                    uuid: uuid(1),
                    location: Location::HostWindow {
                        shmid: 0,
                        offset: 0,
                        len: 8192,
                    },
                },
                plan: small_plan(),
                access: Access::ReadOnly,
            }
            .into(),
            13,
        ),
        (
            "grant",
            Grant {
                buffer: BufferId(1),
                grantee: "vm2".into(),
                access: Access::ReadWrite,
            }
            .into(),
            14,
        ),
        (
            "grant_reply",
            GrantReply {
                buffer: BufferId(1),
                uuid: uuid(1),
            }
            .into(),
            14,
        ),
        (
            "map",
            Map {
                buffer: BufferId(1),
            }
            .into(),
            15,
        ),
        (
            "map_reply",
            MapReply {
                buffer: BufferId(1),
                shmid: 0,
                offset: 0x40_0000,
                len: 8192,
            }
            .into(),
            15,
        ),
        (
            "unmap",
            Unmap {
                buffer: BufferId(1),
            }
            .into(),
            16,
        ),
        (
            "unmap_reply",
            UnmapReply {
                buffer: BufferId(1),
            }
            .into(),
            16,
        ),
        ("query_stats", QueryStats.into(), 17),
        (
            "stats_reply",
            StatsReply {
                owners: vec![OwnerStats {
                    owner: "vm1".into(),
                    bytes: 16384,
                    buffers: 2,
                    in_flight: 1,
                    quota_bytes: 256 << 20,
                    quota_buffers: 0,
                }],
            }
            .into(),
            17,
        ),
        ("query_limits", QueryLimits.into(), 18),
        ("limits_reply", LimitsReply { limits }.into(), 18),
        (
            "query_iovas",
            QueryIovas {
                buffer: BufferId(1),
            }
            .into(),
            20,
        ),
        (
            "iovas_reply",
            IovasReply {
                buffer: BufferId(1),
                iovas: vec![IovaMapping {
                    participant: "edu".into(),
                    iova: 0x1000,
                    len: 8192,
                }],
            }
            .into(),
            20,
        ),
        (
            "event_buffer_revoked",
            Event::BufferRevoked {
                buffer: BufferId(1),
                reason: "exporter freed it".into(),
            }
            .into(),
            0,
        ),
        (
            "event_quota_changed",
            Event::QuotaChanged {
                quota_bytes: 1 << 30,
                quota_buffers: 64,
            }
            .into(),
            0,
        ),
        (
            "event_participant_gone",
            Event::ParticipantGone {
                name: "camera".into(),
            }
            .into(),
            0,
        ),
        (
            "error_reply",
            ErrorReply::new(
                ErrorCode::UNKNOWN_MESSAGE_TYPE,
                "unknown message type 0x0777",
            )
            .into(),
            19,
        ),
    ]
}

// ---- proptest strategies -------------------------------------------------------------------

fn arb_string(max: usize) -> impl Strategy<Value = String> {
    prop::collection::vec(any::<char>(), 0..8).prop_map(move |cs| {
        let mut s: String = cs.into_iter().collect();
        while s.len() > max {
            s.pop();
        }
        s
    })
}

fn arb_usage() -> impl Strategy<Value = Usage> {
    any::<u32>().prop_map(Usage::from_bits_truncate)
}

fn arb_cache_mode() -> impl Strategy<Value = CacheMode> {
    prop::sample::select(CacheMode::ALL.to_vec())
}

fn arb_participant_id() -> impl Strategy<Value = ParticipantId> {
    prop_oneof![
        Just(ParticipantId::Cpu),
        (
            any::<u16>(),
            any::<u8>(),
            any::<u8>(),
            any::<u8>(),
            any::<u16>(),
            any::<u16>()
        )
            .prop_map(
                |(domain, bus, device, function, vendor, dev)| ParticipantId::Pci {
                    address: PciAddress {
                        domain,
                        bus,
                        device,
                        function,
                    },
                    vendor,
                    device: dev,
                }
            ),
        arb_string(64).prop_map(ParticipantId::Sysfs),
        arb_string(64).prop_map(ParticipantId::Vfio),
        any::<u32>().prop_map(ParticipantId::GuestLocal),
        arb_string(64).prop_map(ParticipantId::Named),
    ]
}

fn arb_constraint_set() -> impl Strategy<Value = ConstraintSet> {
    let formats = prop::collection::vec(
        (
            any::<u32>(),
            prop::collection::vec(any::<u64>().prop_map(Modifier), 0..3),
        )
            .prop_map(|(f, modifiers)| FormatModifiers {
                fourcc: Fourcc(f),
                modifiers,
            }),
        0..3,
    );
    let layout = (
        (
            any::<u32>(),
            any::<u32>(),
            any::<u32>(),
            any::<u32>(),
            any::<u32>(),
        ),
        (
            prop::collection::vec(any::<u32>(), 0..4),
            any::<bool>(),
            any::<bool>(),
            any::<u64>(),
        ),
        (
            any::<u32>(),
            any::<u32>(),
            any::<u32>(),
            any::<u64>(),
            any::<u32>(),
            any::<bool>(),
        ),
    )
        .prop_map(
            |((sa, oa, za, ha, wa), (rows, exact, b2b, base), (mw, mh, ms, msz, mp, sep))| {
                LayoutConstraints {
                    stride_alignment: sa,
                    offset_alignment: oa,
                    size_alignment: za,
                    height_alignment: ha,
                    width_alignment: wa,
                    plane_row_alignment: rows,
                    exact_stride: exact,
                    planes_back_to_back: b2b,
                    plane_base_alignment: base,
                    max_width: mw,
                    max_height: mh,
                    max_stride: ms,
                    max_size: msz,
                    max_planes: mp,
                    separate_planes: sep,
                }
            },
        );
    let memory = (
        prop::collection::vec(arb_string(16), 0..3),
        any::<bool>(),
        any::<u8>(),
        any::<bool>(),
        prop::collection::vec(
            (any::<u64>(), any::<u64>()).prop_map(|(start, end)| AddressRange { start, end }),
            0..3,
        ),
        any::<bool>(),
        prop::collection::vec(arb_cache_mode(), 0..3),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(
            |(
                heaps,
                contiguous,
                address_bits,
                behind_iommu,
                iova_ranges,
                coherent,
                cache_modes,
                protected,
                dmabuf,
            )| {
                MemoryConstraints {
                    heaps,
                    contiguous,
                    address_bits,
                    behind_iommu,
                    iova_ranges,
                    coherent,
                    cache_modes,
                    protected,
                    dmabuf,
                }
            },
        );
    let extensions = prop::collection::vec(
        (
            any::<u32>(),
            any::<u32>(),
            any::<bool>(),
            prop::collection::vec(any::<u8>(), 0..8),
        )
            .prop_map(|(vendor, code, required, payload)| Extension {
                vendor,
                code,
                required,
                payload,
            }),
        0..2,
    );
    (arb_usage(), formats, layout, memory, extensions).prop_map(
        |(usage, formats, layout, memory, extensions)| ConstraintSet {
            usage,
            formats,
            layout,
            memory,
            extensions,
        },
    )
}

pub fn arb_participant() -> impl Strategy<Value = Participant> {
    (
        arb_participant_id(),
        arb_string(32),
        arb_usage(),
        prop::collection::vec(arb_constraint_set(), 1..3),
    )
        .prop_map(|(id, label, usage, alternatives)| Participant {
            id,
            label,
            usage,
            alternatives,
        })
}

pub fn arb_request() -> impl Strategy<Value = Request> {
    (
        1u32..=32768,
        1u32..=32768,
        prop::collection::vec(any::<u32>().prop_map(Fourcc), 0..3),
        arb_usage(),
        prop::collection::vec(arb_participant(), 1..3),
        1u32..=64,
    )
        .prop_map(
            |(width, height, formats, usage, participants, count)| Request {
                width,
                height,
                formats,
                usage,
                participants,
                count,
            },
        )
}

pub fn arb_plan() -> impl Strategy<Value = Plan> {
    (
        (any::<u32>(), any::<u64>(), any::<u32>(), any::<u32>()),
        prop::collection::vec(
            (any::<u64>(), any::<u32>(), any::<u64>()).prop_map(|(offset, stride, size)| {
                PlaneLayout {
                    offset,
                    stride,
                    size,
                }
            }),
            0..=4,
        ),
        (any::<u64>(), any::<u64>(), arb_string(16), arb_cache_mode()),
        (any::<bool>(), any::<u8>(), any::<bool>(), arb_usage()),
        prop::collection::vec(any::<u32>(), 0..4),
    )
        .prop_map(
            |(
                (f, m, width, height),
                planes,
                (size, alignment, heap, cache_mode),
                (contiguous, address_bits, coherent, usage),
                alternatives,
            )| Plan {
                fourcc: Fourcc(f),
                modifier: Modifier(m),
                width,
                height,
                planes,
                size,
                alignment,
                heap,
                cache_mode,
                contiguous,
                address_bits,
                coherent,
                usage,
                alternatives,
            },
        )
}

fn arb_solution() -> impl Strategy<Value = Solution> {
    (
        prop::collection::vec(arb_plan(), 0..3),
        prop::collection::vec(
            (
                any::<u32>(),
                any::<u32>(),
                any::<u32>(),
                any::<u32>(),
                any::<bool>(),
            )
                .prop_map(|(participant, alternative, vendor, code, required)| {
                    IgnoredExtension {
                        participant,
                        alternative,
                        vendor,
                        code,
                        required,
                    }
                }),
            0..3,
        ),
    )
        .prop_map(|(plans, ignored_extensions)| Solution {
            plans,
            ignored_extensions,
        })
}

fn arb_diagnostic() -> impl Strategy<Value = Diagnostic> {
    let owner = prop_oneof![
        Just(ConstraintOwner::Request),
        Just(ConstraintOwner::Heaps),
        (any::<u32>(), arb_string(32))
            .prop_map(|(index, label)| ConstraintOwner::Participant { index, label }),
    ];
    let conflict = (
        owner,
        prop::sample::select(ConstraintKind::ALL.to_vec()),
        arb_string(64),
    )
        .prop_map(|(owner, kind, value)| Conflict { owner, kind, value });
    let split = prop::option::of(
        (
            prop::collection::vec(any::<u32>(), 0..4),
            prop::collection::vec(any::<u32>(), 0..4),
            arb_plan(),
            arb_plan(),
        )
            .prop_map(|(first, second, first_plan, second_plan)| SplitProposal {
                first,
                second,
                first_plan,
                second_plan,
            }),
    );
    (
        prop::collection::vec(conflict, 0..4),
        any::<bool>(),
        split,
        prop::collection::vec(arb_string(64), 0..3),
    )
        .prop_map(|(conflicts, minimal, split, notes)| Diagnostic {
            conflicts,
            minimal,
            split,
            notes,
        })
}

fn arb_uuid() -> impl Strategy<Value = Uuid> {
    any::<[u8; 16]>().prop_map(Uuid::from_bytes)
}

fn arb_buffer() -> impl Strategy<Value = BufferId> {
    any::<u64>().prop_map(BufferId)
}

fn arb_limits() -> impl Strategy<Value = WireLimits> {
    any::<[u32; 7]>().prop_map(|v| WireLimits {
        max_message_size: v[0],
        max_participants: v[1],
        max_alternatives: v[2],
        max_buffers_per_request: v[3],
        max_guest_ranges: v[4],
        max_registered_participants: v[5],
        max_ping_payload: v[6],
    })
}

fn arb_location() -> impl Strategy<Value = Location> {
    prop_oneof![
        Just(Location::Unmapped),
        Just(Location::GuestRam),
        (any::<u8>(), any::<u64>(), any::<u64>())
            .prop_map(|(shmid, offset, len)| Location::HostWindow { shmid, offset, len }),
        any::<u32>().prop_map(|fd_index| Location::HostClient { fd_index }),
    ]
}

fn arb_buffer_info() -> impl Strategy<Value = BufferInfo> {
    (arb_buffer(), arb_uuid(), arb_location()).prop_map(|(id, uuid, location)| BufferInfo {
        id,
        uuid,
        location,
    })
}

fn arb_access() -> impl Strategy<Value = Access> {
    prop_oneof![Just(Access::ReadOnly), Just(Access::ReadWrite)]
}

fn arb_features() -> impl Strategy<Value = Features> {
    any::<u64>().prop_map(Features::from_bits_retain)
}

fn arb_placement() -> impl Strategy<Value = Placement> {
    prop_oneof![
        Just(Placement::HostWindow),
        Just(Placement::HostClient),
        prop::collection::vec(
            (any::<u64>(), any::<u64>()).prop_map(|(addr, len)| GuestRange { addr, len }),
            0..8
        )
        .prop_map(|ranges| Placement::GuestRam { ranges }),
    ]
}

fn arb_event() -> impl Strategy<Value = Event> {
    prop_oneof![
        (arb_buffer(), arb_string(64))
            .prop_map(|(buffer, reason)| Event::BufferRevoked { buffer, reason }),
        (any::<u64>(), any::<u32>()).prop_map(|(quota_bytes, quota_buffers)| Event::QuotaChanged {
            quota_bytes,
            quota_buffers
        }),
        arb_string(64).prop_map(|name| Event::ParticipantGone { name }),
    ]
}

/// Any message within the limits, of any type.
pub fn arb_message() -> impl Strategy<Value = Message> {
    let handle = || any::<u32>().prop_map(ParticipantHandle);
    let bytes = || prop::collection::vec(any::<u8>(), 0..64);
    prop_oneof![
        (any::<u16>(), any::<u16>(), arb_features(), arb_string(64)).prop_map(
            |(min_version, max_version, features, client)| Hello {
                min_version,
                max_version,
                features,
                client
            }
            .into()
        ),
        (any::<u16>(), arb_features(), arb_limits(), arb_string(64)).prop_map(
            |(version, features, limits, broker)| HelloReply {
                version,
                features,
                limits,
                broker
            }
            .into()
        ),
        bytes().prop_map(|payload| Ping { payload }.into()),
        bytes().prop_map(|payload| Pong { payload }.into()),
        (arb_string(32), arb_participant()).prop_map(|(name, participant)| RegisterParticipant {
            name,
            participant
        }
        .into()),
        handle().prop_map(|handle| RegisterParticipantReply { handle }.into()),
        handle().prop_map(|handle| UnregisterParticipant { handle }.into()),
        handle().prop_map(|handle| UnregisterParticipantReply { handle }.into()),
        arb_request().prop_map(|request| Solve { request }.into()),
        arb_solution().prop_map(|s| SolveReply::Solved(s).into()),
        arb_diagnostic().prop_map(|d| SolveReply::Unsatisfiable(Box::new(d)).into()),
        (arb_request(), arb_placement()).prop_map(|(request, placement)| Allocate {
            request,
            placement
        }
        .into()),
        (arb_plan(), prop::collection::vec(arb_buffer_info(), 0..4))
            .prop_map(|(plan, buffers)| AllocateReply { plan, buffers }.into()),
        arb_buffer().prop_map(|buffer| Free { buffer }.into()),
        arb_buffer().prop_map(|buffer| FreeReply { buffer }.into()),
        arb_buffer().prop_map(|buffer| Export { buffer }.into()),
        (arb_buffer(), arb_uuid()).prop_map(|(buffer, uuid)| ExportReply { buffer, uuid }.into()),
        (
            arb_uuid(),
            prop_oneof![
                Just(ImportView::None),
                Just(ImportView::HostWindow),
                Just(ImportView::HostClient)
            ]
        )
            .prop_map(|(uuid, view)| Import { uuid, view }.into()),
        (arb_buffer_info(), arb_plan(), arb_access()).prop_map(|(buffer, plan, access)| {
            ImportReply {
                buffer,
                plan,
                access,
            }
            .into()
        }),
        (arb_buffer(), arb_string(32), arb_access()).prop_map(|(buffer, grantee, access)| Grant {
            buffer,
            grantee,
            access
        }
        .into()),
        (arb_buffer(), arb_uuid()).prop_map(|(buffer, uuid)| GrantReply { buffer, uuid }.into()),
        arb_buffer().prop_map(|buffer| Map { buffer }.into()),
        (arb_buffer(), any::<u8>(), any::<u64>(), any::<u64>()).prop_map(
            |(buffer, shmid, offset, len)| MapReply {
                buffer,
                shmid,
                offset,
                len
            }
            .into()
        ),
        arb_buffer().prop_map(|buffer| Unmap { buffer }.into()),
        arb_buffer().prop_map(|buffer| UnmapReply { buffer }.into()),
        Just(QueryStats.into()),
        prop::collection::vec(
            (
                arb_string(16),
                any::<u64>(),
                any::<u32>(),
                any::<u32>(),
                any::<u64>(),
                any::<u32>()
            )
                .prop_map(
                    |(owner, bytes, buffers, in_flight, quota_bytes, quota_buffers)| {
                        OwnerStats {
                            owner,
                            bytes,
                            buffers,
                            in_flight,
                            quota_bytes,
                            quota_buffers,
                        }
                    }
                ),
            0..4
        )
        .prop_map(|owners| StatsReply { owners }.into()),
        Just(QueryLimits.into()),
        arb_limits().prop_map(|limits| LimitsReply { limits }.into()),
        arb_buffer().prop_map(|buffer| QueryIovas { buffer }.into()),
        (
            arb_buffer(),
            prop::collection::vec(
                (arb_string(16), any::<u64>(), any::<u64>()).prop_map(
                    |(participant, iova, len)| IovaMapping {
                        participant,
                        iova,
                        len
                    }
                ),
                0..3
            )
        )
            .prop_map(|(buffer, iovas)| IovasReply { buffer, iovas }.into()),
        arb_event().prop_map(Message::from),
        (any::<u16>(), arb_string(64)).prop_map(|(code, message)| ErrorReply::new(
            ErrorCode(code),
            message
        )
        .into()),
    ]
}
