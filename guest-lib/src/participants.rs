//! Local participants: the CPU of this process, and devices described in constraint files
//! (the TOML format of `docs/constraints.md`, as in `examples/participants/`).

use std::path::{Path, PathBuf};

use bufbroker_proto::constraint::{CacheMode, ConstraintSet, MemoryConstraints, Usage};
use bufbroker_proto::{Participant, ParticipantId, limits};
use serde::Deserialize;
use thiserror::Error;

/// Errors reading a constraint file.
#[derive(Debug, Error)]
pub enum ParticipantsError {
    /// The file cannot be read.
    #[error("{path}: cannot read")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The file does not parse or does not match the schema.
    #[error("{path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message with line and column.
        message: String,
    },
    /// A participant breaks a protocol limit or has no alternative.
    #[error("{path}: participant {label:?} is invalid: {reason}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// The participant.
        label: String,
        /// What is wrong.
        reason: String,
    },
}

#[derive(Deserialize)]
struct File {
    #[serde(default)]
    participant: Vec<Participant>,
    // A file may also hold a `[request]`; the library ignores it.
    #[serde(default)]
    #[allow(dead_code)]
    request: Option<toml::Value>,
}

/// The CPU of this process: any format, linear, cached or write-combined mappings (as
/// `examples/participants/cpu.toml`).
pub fn cpu() -> Participant {
    let set = ConstraintSet {
        usage: Usage::CPU_READ | Usage::CPU_WRITE | Usage::CPU_OFTEN,
        memory: MemoryConstraints {
            cache_modes: vec![CacheMode::Cached, CacheMode::WriteCombined],
            ..MemoryConstraints::default()
        },
        ..ConstraintSet::default()
    };
    Participant::new(
        ParticipantId::Cpu,
        "CPU",
        Usage::CPU_READ | Usage::CPU_WRITE,
        set,
    )
}

/// A participant configured on the broker (a host device, another VM's device), by name.
/// The broker substitutes its description; the alternatives sent are placeholders.
pub fn named(name: &str, usage: Usage) -> Participant {
    Participant::new(
        ParticipantId::Named(name.to_owned()),
        name,
        usage,
        ConstraintSet::default(),
    )
}

/// Parses the participants of a constraint file's text.
pub fn parse(path: &Path, text: &str) -> Result<Vec<Participant>, ParticipantsError> {
    let file: File = toml::from_str(text).map_err(|e| ParticipantsError::Parse {
        path: path.to_owned(),
        message: e.to_string().trim_end().to_owned(),
    })?;
    for p in &file.participant {
        let invalid = |reason: String| ParticipantsError::Invalid {
            path: path.to_owned(),
            label: p.label.clone(),
            reason,
        };
        if p.alternatives.is_empty() {
            return Err(invalid("no [[participant.alternatives]]".into()));
        }
        limits::check_participant(p).map_err(|e| invalid(e.to_string()))?;
    }
    Ok(file.participant)
}

/// Reads the participants of the constraint file at `path` (guest devices that will touch
/// buffers: a video decoder, a display controller).
pub fn load(path: &Path) -> Result<Vec<Participant>, ParticipantsError> {
    let text = std::fs::read_to_string(path).map_err(|source| ParticipantsError::Read {
        path: path.to_owned(),
        source,
    })?;
    parse(path, &text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn load_repository_cpu_file_matches_cpu_participant() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/participants/cpu.toml");

        let loaded = load(&path).unwrap();

        assert_eq!(loaded, vec![cpu()]);
    }

    #[test]
    fn parse_participant_without_alternatives_fails() {
        let text = "[[participant]]\nid = \"cpu\"\nlabel = \"x\"\nalternatives = []\n";

        let err = parse(Path::new("x.toml"), text).unwrap_err();

        assert!(matches!(err, ParticipantsError::Invalid { .. }));
    }
}
