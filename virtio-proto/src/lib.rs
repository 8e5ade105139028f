//! bufbroker's shared vocabulary.
//!
//! Participants describe what a shared buffer must look like for them ([`constraint`]); a
//! [`request`] names the image and the participants; the [`solver`] intersects them into ranked
//! [`plan`]s or explains why no buffer can satisfy everyone. The [`wire`] module frames these as
//! messages between guests, host clients and the broker (specified in `PROTOCOL.md`), and
//! [`config_space`] is the virtio device's configuration-space layout.
//!
//! This crate does no I/O and contains no `unsafe`.

#![forbid(unsafe_code)]

#[doc(hidden)]
pub mod bench_support;
pub mod check;
pub mod config_space;
pub mod constraint;
pub mod format;
#[doc(hidden)]
pub mod fuzzing;
pub mod heap;
pub mod limits;
pub mod participant;
pub mod plan;
pub mod request;
pub mod solver;
pub mod wire;

pub use constraint::{
    AddressRange, CacheMode, ConstraintSet, Extension, FormatModifiers, LayoutConstraints,
    MemoryConstraints, Usage,
};
pub use format::{FormatError, FormatInfo, Fourcc, Modifier, ModifierInfo};
pub use heap::{HeapInfo, HeapKind};
pub use participant::{Participant, ParticipantId, PciAddress};
pub use plan::{Plan, PlaneLayout};
pub use request::Request;
pub use solver::{Diagnostic, Solution, SolveError, SolveOptions, solve, solve_with};
