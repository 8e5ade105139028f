//! Hard limits on everything a peer can send. Decoders and the solver enforce them, so a
//! hostile peer cannot make the broker allocate or compute without bound.

use thiserror::Error;

use crate::constraint::ConstraintSet;
use crate::participant::Participant;
use crate::request::Request;

/// Largest image width or height in pixels.
pub const MAX_DIMENSION: u32 = 32768;
/// Most participants in one request.
pub const MAX_PARTICIPANTS: usize = 16;
/// Most alternatives per participant.
pub const MAX_ALTERNATIVES: usize = 8;
/// Most formats in one constraint set or request.
pub const MAX_FORMATS: usize = 64;
/// Most modifiers listed for one format.
pub const MAX_MODIFIERS_PER_FORMAT: usize = 32;
/// Most (format, modifier) pairs in one constraint set.
pub const MAX_FORMAT_MODIFIER_PAIRS: usize = 256;
/// Most heaps named in one constraint set.
pub const MAX_HEAPS: usize = 16;
/// Most IOVA ranges in one constraint set.
pub const MAX_IOVA_RANGES: usize = 32;
/// Most extensions in one constraint set.
pub const MAX_EXTENSIONS: usize = 16;
/// Largest extension payload in bytes.
pub const MAX_EXTENSION_PAYLOAD: usize = 256;
/// Longest string (labels, names, paths) in bytes.
pub const MAX_STRING: usize = 256;
/// Most planes a format can have.
pub const MAX_PLANES: usize = 4;
/// Most buffers one request may ask for.
pub const MAX_BUFFER_COUNT: u32 = 64;
/// Most heaps the solver considers.
pub const MAX_SOLVER_HEAPS: usize = 32;

/// A limit that an input exceeds.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum LimitError {
    /// A list is longer than allowed.
    #[error("{what} has {len} entries, more than the limit of {max}")]
    TooMany {
        /// Which list.
        what: &'static str,
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A value is outside its range.
    #[error("{what} is {value}, outside 1..={max}")]
    OutOfRange {
        /// Which value.
        what: &'static str,
        /// The value.
        value: u64,
        /// The limit.
        max: u64,
    },
}

fn count(what: &'static str, len: usize, max: usize) -> Result<(), LimitError> {
    if len > max {
        Err(LimitError::TooMany { what, len, max })
    } else {
        Ok(())
    }
}

fn string(what: &'static str, s: &str) -> Result<(), LimitError> {
    count(what, s.len(), MAX_STRING)
}

fn range(what: &'static str, value: u64, max: u64) -> Result<(), LimitError> {
    if value == 0 || value > max {
        Err(LimitError::OutOfRange { what, value, max })
    } else {
        Ok(())
    }
}

/// Checks a constraint set against the limits.
pub fn check_constraint_set(set: &ConstraintSet) -> Result<(), LimitError> {
    count("formats", set.formats.len(), MAX_FORMATS)?;
    let mut pairs = 0usize;
    for f in &set.formats {
        count(
            "modifiers of one format",
            f.modifiers.len(),
            MAX_MODIFIERS_PER_FORMAT,
        )?;
        pairs += f.modifiers.len().max(1);
    }
    count("format/modifier pairs", pairs, MAX_FORMAT_MODIFIER_PAIRS)?;
    count(
        "plane row alignments",
        set.layout.plane_row_alignment.len(),
        MAX_PLANES,
    )?;
    count("heaps", set.memory.heaps.len(), MAX_HEAPS)?;
    for h in &set.memory.heaps {
        string("heap name", h)?;
    }
    count("IOVA ranges", set.memory.iova_ranges.len(), MAX_IOVA_RANGES)?;
    count("cache modes", set.memory.cache_modes.len(), 3)?;
    count("extensions", set.extensions.len(), MAX_EXTENSIONS)?;
    for e in &set.extensions {
        count("extension payload", e.payload.len(), MAX_EXTENSION_PAYLOAD)?;
    }
    Ok(())
}

/// Checks a participant against the limits.
pub fn check_participant(p: &Participant) -> Result<(), LimitError> {
    string("label", &p.label)?;
    match &p.id {
        crate::ParticipantId::Sysfs(s)
        | crate::ParticipantId::Vfio(s)
        | crate::ParticipantId::Named(s) => string("participant name", s)?,
        _ => {}
    }
    range(
        "alternatives",
        p.alternatives.len() as u64,
        MAX_ALTERNATIVES as u64,
    )?;
    p.alternatives.iter().try_for_each(check_constraint_set)
}

/// Checks a request against the limits.
pub fn check_request(r: &Request) -> Result<(), LimitError> {
    range("width", r.width.into(), MAX_DIMENSION.into())?;
    range("height", r.height.into(), MAX_DIMENSION.into())?;
    range("buffer count", r.count.into(), MAX_BUFFER_COUNT.into())?;
    count("request formats", r.formats.len(), MAX_FORMATS)?;
    range(
        "participants",
        r.participants.len() as u64,
        MAX_PARTICIPANTS as u64,
    )?;
    r.participants.iter().try_for_each(check_participant)
}
