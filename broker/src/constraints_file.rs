//! Constraint files: participants (and optionally a request) in TOML.
//!
//! The format is documented in `docs/constraints.md`; `examples/participants/` has real ones.

use std::path::{Path, PathBuf};

use bufbroker_proto::constraint::Usage;
use bufbroker_proto::{Fourcc, Participant, limits};
use serde::Deserialize;
use thiserror::Error;

/// Errors reading constraint files. Messages name the file; TOML errors carry line and column.
#[derive(Debug, Error)]
pub enum ConstraintFileError {
    /// The file cannot be read.
    #[error("{path}: cannot read")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML or does not match the schema.
    #[error("{path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message, with line, column and field.
        message: String,
    },
    /// A participant breaks a limit.
    #[error("{path}: participant {label:?} breaks a limit")]
    Limit {
        /// The file.
        path: PathBuf,
        /// The participant.
        label: String,
        /// The limit.
        #[source]
        source: limits::LimitError,
    },
    /// A participant has no alternative.
    #[error("{path}: participant {label:?} has no [[participant.alternatives]]")]
    NoAlternative {
        /// The file.
        path: PathBuf,
        /// The participant.
        label: String,
    },
}

/// The request part of a file: every field optional, so flags can fill in the rest.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestSpec {
    /// Width in pixels.
    pub width: Option<u32>,
    /// Height in rows.
    pub height: Option<u32>,
    /// Formats, best first.
    #[serde(default)]
    pub formats: Vec<Fourcc>,
    /// Usage names.
    #[serde(default)]
    pub usage: Vec<String>,
    /// Buffer count.
    pub count: Option<u32>,
}

impl RequestSpec {
    /// The usage flags named in `usage`.
    pub fn usage_flags(&self) -> Result<Usage, String> {
        Usage::parse_list(&self.usage.join(","))
    }
}

/// One constraint file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConstraintFile {
    /// Participants.
    #[serde(default)]
    pub participant: Vec<Participant>,
    /// An optional request.
    pub request: Option<RequestSpec>,
}

/// Parses `text` as a constraint file named `path`.
pub fn parse(path: &Path, text: &str) -> Result<ConstraintFile, ConstraintFileError> {
    let file: ConstraintFile = toml::from_str(text).map_err(|e| ConstraintFileError::Parse {
        path: path.to_owned(),
        message: e.to_string().trim_end().replace('\n', "\n    "),
    })?;
    for p in &file.participant {
        if p.alternatives.is_empty() {
            return Err(ConstraintFileError::NoAlternative {
                path: path.to_owned(),
                label: p.label.clone(),
            });
        }
        limits::check_participant(p).map_err(|source| ConstraintFileError::Limit {
            path: path.to_owned(),
            label: p.label.clone(),
            source,
        })?;
    }
    Ok(file)
}

/// Reads and parses the file at `path`.
pub fn load(path: &Path) -> Result<ConstraintFile, ConstraintFileError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConstraintFileError::Read {
        path: path.to_owned(),
        source,
    })?;
    parse(path, &text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minimal_participant_parses() {
        let f = parse(
            Path::new("x.toml"),
            r#"
[[participant]]
id = "cpu"
label = "CPU"
usage = ["cpu-write"]
[[participant.alternatives]]
formats = [{ fourcc = "NV12" }]
[participant.alternatives.layout]
stride_alignment = 64
"#,
        )
        .unwrap();
        assert_eq!(f.participant.len(), 1);
        assert_eq!(f.participant[0].alternatives[0].layout.stride_alignment, 64);
    }

    #[test]
    fn unknown_field_is_an_error_naming_line_and_field() {
        let err = parse(
            Path::new("bad.toml"),
            "[[participant]]\nid = \"cpu\"\nlabel = \"CPU\"\n[[participant.alternatives]]\nstride_alignment = 4\n",
        )
        .unwrap_err()
        .to_string();
        assert!(err.starts_with("bad.toml: "), "{err}");
        assert!(err.contains("line 5"), "{err}");
        assert!(err.contains("stride_alignment"), "{err}");
    }

    #[test]
    fn unknown_format_is_an_error() {
        let err = parse(
            Path::new("f.toml"),
            "[[participant]]\nid = \"cpu\"\nlabel = \"CPU\"\n[[participant.alternatives]]\nformats = [{ fourcc = \"NV99\" }]\n",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("NV99"), "{err}");
    }

    #[test]
    fn participant_without_alternatives_is_an_error() {
        let err = parse(
            Path::new("e.toml"),
            "[[participant]]\nid = \"cpu\"\nlabel = \"CPU\"\nalternatives = []\n",
        )
        .unwrap_err();
        assert!(matches!(err, ConstraintFileError::NoAlternative { .. }));
    }
}
