//! The broker's configuration file (TOML): heaps, quotas, named host participants, and which
//! owners may use which participants.
//!
//! Documented in `docs/configuration.md`; `broker/bufbroker.example.toml` is a commented example.
//! Every table rejects unknown keys, so a typo is an error naming the key, not a silent default.
//!
//! Owners are named: a guest by the name its device was given on the command line, a local
//! client by `uid:<uid>` (from `SO_PEERCRED`). `[owners."<name>"]` overrides `[defaults]`
//! field by field.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use bufbroker_proto::Participant;
use serde::Deserialize;
use thiserror::Error;

use crate::constraints_file::{self, ConstraintFileError};
use crate::heap::PoolLimits;
use crate::vfio::VfioSource;

/// Errors loading the configuration.
#[derive(Debug, Error)]
pub enum ConfigError {
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
        /// The parser's message, with line, column and key.
        message: String,
    },
    /// A named participant's constraint file is wrong.
    #[error("participant {name:?}")]
    ParticipantFile {
        /// The participant's configured name.
        name: String,
        /// What is wrong with its file.
        #[source]
        source: ConstraintFileError,
    },
    /// A named participant's file does not hold the participant the configuration asks for.
    #[error("participant {name:?}: {file} has {found}")]
    ParticipantMissing {
        /// The participant's configured name.
        name: String,
        /// Its constraint file.
        file: PathBuf,
        /// What the file holds instead.
        found: String,
    },
    /// A name is both a `[participants]` entry and a VFIO device, or a device is given twice.
    #[error("participant name {0:?} is configured twice")]
    DuplicateParticipant(String),
    /// A `--vfio-device` argument is malformed.
    #[error("{0}")]
    VfioArgument(String),
    /// An owner's allow-list names a participant that is not configured.
    #[error("owner {owner:?} may use participant {participant:?}, which is not configured")]
    UnknownParticipant {
        /// The owner (`defaults` for the defaults).
        owner: String,
        /// The participant name.
        participant: String,
    },
}

/// The whole configuration file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Which heaps the broker allocates from.
    #[serde(default)]
    pub heaps: HeapPolicy,
    /// Recycling of freed buffers (per owner).
    #[serde(default)]
    pub pool: PoolConfig,
    /// Limits over all owners together.
    #[serde(default)]
    pub global: GlobalLimits,
    /// Arenas: large memfds mapped into a guest's window once, buffers carved from them.
    #[serde(default)]
    pub arenas: ArenaConfig,
    /// Quotas and allowed participants of every owner without its own entry.
    #[serde(default)]
    pub defaults: OwnerPolicy,
    /// Per-owner overrides, by owner name (`"vm-1"`, `"uid:1000"`).
    #[serde(default)]
    pub owners: BTreeMap<String, OwnerPolicy>,
    /// Host participants requests may name (`ParticipantId::Named`), by name.
    #[serde(default)]
    pub participants: BTreeMap<String, ParticipantSource>,
    /// Host VFIO devices, opened at start-up and named like participants.
    #[serde(default)]
    pub vfio: BTreeMap<String, VfioSource>,
}

/// `[heaps]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeapPolicy {
    /// Heaps to use, by name; absent means every discovered heap.
    pub allow: Option<Vec<String>>,
    /// Largest single memfd buffer in bytes (0 = no limit); absent means half of memory.
    pub memfd_max_size: Option<u64>,
}

/// `[pool]`: how much freed memory is kept for reuse by the same owner.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PoolConfig {
    /// Most buffers kept per owner (0 disables recycling).
    pub max_buffers_per_owner: usize,
    /// Most bytes kept per owner.
    pub max_bytes_per_owner: u64,
    /// Most bytes kept in total.
    pub max_bytes: u64,
}

impl Default for PoolConfig {
    fn default() -> Self {
        let d = PoolLimits::default();
        PoolConfig {
            max_buffers_per_owner: d.max_buffers_per_owner,
            max_bytes_per_owner: d.max_bytes_per_owner,
            max_bytes: d.max_bytes,
        }
    }
}

impl From<PoolConfig> for PoolLimits {
    fn from(c: PoolConfig) -> Self {
        PoolLimits {
            max_buffers_per_owner: c.max_buffers_per_owner,
            max_bytes_per_owner: c.max_bytes_per_owner,
            max_bytes: c.max_bytes,
        }
    }
}

/// `[arenas]`: host-window buffers carved from large sealed memfds ("arenas") that are mapped
/// into the guest's shared-memory window once (one SHMEM_MAP per arena instead of one per
/// buffer; every SHMEM_MAP makes QEMU resend its memory table to every vhost-user device).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ArenaConfig {
    /// When to carve buffers from arenas.
    pub mode: ArenaMode,
    /// Bytes per arena; a larger buffer gets an arena of its own (rounded up to pages).
    pub size: u64,
    /// Keep one empty arena mapped for the next allocation instead of unmapping it when its
    /// last buffer goes. It stays mapped until the guest's session ends.
    pub keep_warm: bool,
}

impl Default for ArenaConfig {
    /// `auto`, 16 MiB, not kept warm.
    fn default() -> Self {
        ArenaConfig {
            mode: ArenaMode::Auto,
            size: 16 << 20,
            keep_warm: false,
        }
    }
}

/// `[arenas] mode`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ArenaMode {
    /// Arenas where `/dev/udmabuf` exists, so every carved buffer gets a dmabuf of its own
    /// pages to share; one SHMEM_MAP per buffer elsewhere.
    #[default]
    Auto,
    /// Arenas everywhere. Without udmabuf a carved buffer's descriptor is the arena memfd (and
    /// an offset): a host client importing it can reach the owner's other buffers in that
    /// arena.
    Always,
    /// One SHMEM_MAP per buffer.
    Never,
}

/// `[global]`: limits over all owners; 0 means unlimited.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GlobalLimits {
    /// Most bytes allocated (including memory kept for recycling).
    pub bytes: u64,
    /// Most buffers allocated.
    pub buffers: u64,
    /// Most host processes served at once on the local socket; 0 means
    /// [`DEFAULT_LOCAL_CLIENTS`]. Connections above it are closed at once.
    pub local_clients: u32,
}

/// Local-socket clients served at once when `[global] local_clients` is 0.
pub const DEFAULT_LOCAL_CLIENTS: u32 = 256;

/// `[defaults]` and `[owners."name"]`: every field optional so an override names only what
/// it changes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OwnerPolicy {
    /// Most bytes the owner may hold (including memory kept for its recycling); 0 = unlimited.
    pub bytes: Option<u64>,
    /// Most buffers the owner may hold; 0 = unlimited.
    pub buffers: Option<u32>,
    /// Most requests of the owner processed at once; 0 = unlimited.
    pub in_flight: Option<u32>,
    /// Named participants the owner may use.
    pub participants: Option<Vec<String>>,
    /// Whether the owner sees every owner's statistics.
    pub admin: Option<bool>,
}

/// An owner's effective quota; 0 means unlimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Quota {
    /// Bytes.
    pub bytes: u64,
    /// Buffers.
    pub buffers: u32,
    /// Requests in flight.
    pub in_flight: u32,
}

impl Quota {
    /// 1 GiB, 256 buffers, 16 requests: the defaults when the configuration says nothing.
    pub const DEFAULT: Quota = Quota {
        bytes: 1 << 30,
        buffers: 256,
        in_flight: 16,
    };
}

/// What an owner may do, resolved from `[defaults]` and its `[owners."name"]` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedPolicy {
    /// Its quota.
    pub quota: Quota,
    /// Named participants it may use.
    pub participants: Vec<String>,
    /// Whether it sees every owner's statistics.
    pub admin: bool,
}

/// `[participants.<name>]`: a host participant from a constraint file.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ParticipantSource {
    /// The constraint file (relative paths are relative to the configuration file).
    pub file: PathBuf,
    /// The participant's `label` in the file; absent when the file holds exactly one.
    pub label: Option<String>,
}

impl Config {
    /// Parses `text` as the configuration file at `path`.
    pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
        let config = Self::parse_unchecked(path, text)?;
        config.check_allow_lists()?;
        Ok(config)
    }

    fn parse_unchecked(path: &Path, text: &str) -> Result<Config, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string().trim_end().replace('\n', "\n    "),
        })
    }

    /// Reads and parses the file at `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        Self::load_with_vfio(Some(path), &[])
    }

    /// The file at `path` (or the defaults without one) plus the VFIO devices of the command
    /// line (`--vfio-device [NAME=]ADDRESS`); allow-lists may name either.
    pub fn load_with_vfio(path: Option<&Path>, devices: &[String]) -> Result<Config, ConfigError> {
        let mut config = match path {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.to_owned(),
                    source,
                })?;
                let mut config = Self::parse_unchecked(path, &text)?;
                let base = path.parent().unwrap_or(Path::new("."));
                for source in config.participants.values_mut() {
                    if source.file.is_relative() {
                        source.file = base.join(&source.file);
                    }
                }
                for source in config.vfio.values_mut() {
                    crate::vfio::resolve_profile(base, source);
                }
                config
            }
            None => Config::default(),
        };
        for arg in devices {
            let (name, source) = VfioSource::from_arg(arg).map_err(ConfigError::VfioArgument)?;
            if config.vfio.insert(name.clone(), source).is_some() {
                return Err(ConfigError::DuplicateParticipant(name));
            }
        }
        config.check_allow_lists()?;
        Ok(config)
    }

    fn check_allow_lists(&self) -> Result<(), ConfigError> {
        if let Some(name) = self
            .vfio
            .keys()
            .find(|n| self.participants.contains_key(*n))
        {
            return Err(ConfigError::DuplicateParticipant(name.clone()));
        }
        let owners = std::iter::once(("defaults", &self.defaults))
            .chain(self.owners.iter().map(|(n, p)| (n.as_str(), p)));
        for (owner, policy) in owners {
            for participant in policy.participants.iter().flatten() {
                if !self.participants.contains_key(participant)
                    && !self.vfio.contains_key(participant)
                {
                    return Err(ConfigError::UnknownParticipant {
                        owner: owner.to_owned(),
                        participant: participant.clone(),
                    });
                }
            }
        }
        Ok(())
    }

    /// The policy of the owner called `name`: its `[owners]` entry over `[defaults]` over
    /// [`Quota::DEFAULT`].
    pub fn policy(&self, name: &str) -> ResolvedPolicy {
        let own = self.owners.get(name);
        let pick = |f: fn(&OwnerPolicy) -> Option<u64>, default: u64| {
            own.and_then(f)
                .or_else(|| f(&self.defaults))
                .unwrap_or(default)
        };
        let quota = Quota {
            bytes: pick(|p| p.bytes, Quota::DEFAULT.bytes),
            buffers: pick(|p| p.buffers.map(u64::from), Quota::DEFAULT.buffers.into())
                .try_into()
                .unwrap_or(u32::MAX),
            in_flight: pick(
                |p| p.in_flight.map(u64::from),
                Quota::DEFAULT.in_flight.into(),
            )
            .try_into()
            .unwrap_or(u32::MAX),
        };
        let participants = own
            .and_then(|p| p.participants.clone())
            .or_else(|| self.defaults.participants.clone())
            .unwrap_or_default();
        let admin = own
            .and_then(|p| p.admin)
            .or(self.defaults.admin)
            .unwrap_or(false);
        ResolvedPolicy {
            quota,
            participants,
            admin,
        }
    }

    /// Loads every named participant's constraint file.
    pub fn load_participants(&self) -> Result<BTreeMap<String, Participant>, ConfigError> {
        let mut out = BTreeMap::new();
        for (name, source) in &self.participants {
            let file =
                constraints_file::load(&source.file).map_err(|e| ConfigError::ParticipantFile {
                    name: name.clone(),
                    source: e,
                })?;
            let missing = |found: String| ConfigError::ParticipantMissing {
                name: name.clone(),
                file: source.file.clone(),
                found,
            };
            let labels: Vec<&str> = file.participant.iter().map(|p| p.label.as_str()).collect();
            let participant = match &source.label {
                Some(label) => file
                    .participant
                    .iter()
                    .find(|p| &p.label == label)
                    .ok_or_else(|| {
                        missing(format!("no participant labelled {label:?} ({labels:?})"))
                    })?,
                None => match file.participant.as_slice() {
                    [only] => only,
                    _ => {
                        return Err(missing(format!(
                            "{} participants {labels:?}; name one with `label`",
                            labels.len()
                        )));
                    }
                },
            };
            out.insert(name.clone(), participant.clone());
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(Path::new("test.toml"), text)
    }

    #[test]
    fn example_file_parses_and_loads_its_participants() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("bufbroker.example.toml");
        let config = Config::load(&path).unwrap();
        let participants = config.load_participants().unwrap();
        assert!(participants.contains_key("display"), "{participants:?}");
        assert_eq!(config.policy("vm-media").quota.bytes, 2 << 30);
    }

    #[test]
    fn owner_override_replaces_only_the_fields_it_names() {
        let config = parse(
            "[defaults]\nbytes = 100\nbuffers = 5\n[owners.\"uid:1000\"]\nbuffers = 9\nadmin = true\n",
        )
        .unwrap();
        let own = config.policy("uid:1000");
        let other = config.policy("uid:1001");
        assert_eq!(
            (own.quota.bytes, own.quota.buffers, own.admin),
            (100, 9, true)
        );
        assert_eq!((other.quota.buffers, other.admin), (5, false));
        assert_eq!(other.quota.in_flight, Quota::DEFAULT.in_flight);
    }

    #[test]
    fn vfio_devices_from_file_and_command_line_may_be_allowed() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("b.toml");
        std::fs::write(
            &file,
            "[defaults]\nparticipants = [\"edu\", \"nic\"]\n\
             [vfio.edu]\naddress = \"0000:00:04.0\"\nprofile = \"edu.toml\"\nbind = true\n",
        )
        .unwrap();
        assert!(matches!(
            Config::load(&file),
            Err(ConfigError::UnknownParticipant { .. })
        ));
        let config = Config::load_with_vfio(Some(&file), &["nic=0000:00:05.0".into()]).unwrap();
        assert_eq!(
            config.vfio["edu"].profile,
            Some(dir.path().join("edu.toml"))
        );
        assert!(config.vfio["edu"].bind);
        assert_eq!(config.vfio["nic"].address, "0000:00:05.0");
        assert_eq!(config.policy("vm").participants, ["edu", "nic"]);
        let twice = Config::load_with_vfio(Some(&file), &["edu=0000:00:06.0".into()]);
        assert!(matches!(twice, Err(ConfigError::DuplicateParticipant(n)) if n == "edu"));
    }

    #[test]
    fn unknown_key_is_an_error_naming_it() {
        let err = parse("[defaults]\nbyte = 1\n").unwrap_err();
        assert!(err.to_string().contains("unknown field `byte`"), "{err}");
    }

    #[test]
    fn allow_list_naming_an_unconfigured_participant_is_an_error() {
        let err = parse("[owners.vm]\nparticipants = [\"camera\"]\n").unwrap_err();
        assert_eq!(
            err.to_string(),
            "owner \"vm\" may use participant \"camera\", which is not configured"
        );
    }

    #[test]
    fn file_with_several_participants_needs_a_label() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("two.toml");
        let one = "[[participant]]\nid = \"cpu\"\nlabel = \"A\"\n[[participant.alternatives]]\n";
        std::fs::write(&file, format!("{one}{}", one.replace("\"A\"", "\"B\""))).unwrap();
        let text = format!(
            "[participants.x]\nfile = {:?}\n",
            file.display().to_string()
        );
        let err = parse(&text).unwrap().load_participants().unwrap_err();
        assert!(err.to_string().contains("name one with `label`"), "{err}");
        let text = format!("{text}label = \"B\"\n");
        assert_eq!(
            parse(&text).unwrap().load_participants().unwrap()["x"].label,
            "B"
        );
    }
}
