//! Solver cost against participants and candidates: the requests of
//! `virtio-proto/benches/solver.rs` (the same ones, from `bufbroker_proto::bench_support`, so
//! the figures compare), each participant with three alternatives (tiled with large
//! alignments, tiled with small ones, linear).

pub use bufbroker_proto::bench_support::{heaps, request};
