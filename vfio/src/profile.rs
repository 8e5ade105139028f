//! Device profiles: what cannot be probed through VFIO (formats, alignment, the device's own
//! DMA address width), keyed by PCI `vendor:device`. Format: `vfio/profiles/README.md`.

use std::collections::BTreeMap;
use std::path::Path;

use bufbroker_proto::{ConstraintSet, Usage};
use serde::Deserialize;
use thiserror::Error;

/// What a profile file holds: `[devices."vvvv:dddd"]` tables.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ProfileFile {
    #[serde(default)]
    devices: BTreeMap<String, DeviceProfile>,
}

/// What is known about one kind of device beyond what VFIO reports.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceProfile {
    /// Human label for plans and diagnostics (default: derived from the PCI ids).
    #[serde(default)]
    pub label: Option<String>,
    /// What the device does with buffers, usage names as in constraint files (default:
    /// `dma-read`, `dma-write`).
    #[serde(default)]
    pub usage: Vec<String>,
    /// The device's DMA address width in bits (its DMA mask). Applies to every alternative;
    /// behind an IOMMU it limits the IOVA.
    #[serde(default)]
    pub address_bits: Option<u8>,
    /// Where the facts come from (datasheet, driver source); free text, kept for people.
    #[serde(default)]
    pub source: Option<String>,
    /// Constraint sets, best first, in the constraint-file form; probing adds the IOMMU
    /// facts to each. Default: one alternative that constrains nothing else.
    #[serde(default)]
    pub alternatives: Vec<ConstraintSet>,
}

impl DeviceProfile {
    /// The usage flags, with the default (`dma-read | dma-write`) for an empty list.
    pub fn usage_flags(&self) -> Result<Usage, ProfileError> {
        if self.usage.is_empty() {
            return Ok(Usage::DMA_READ | Usage::DMA_WRITE);
        }
        let mut u = Usage::empty();
        for name in &self.usage {
            u |= Usage::from_usage_name(name)
                .ok_or_else(|| ProfileError::UnknownUsage(name.clone()))?;
        }
        Ok(u)
    }
}

/// Profiles by `vendor:device` key (lower-case hex, `1234:11e8`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Profiles {
    by_key: BTreeMap<String, DeviceProfile>,
}

/// The profiles shipped in `vfio/profiles/`, compiled in.
const BUILTIN: &[(&str, &str)] = &[("qemu-edu.toml", include_str!("../profiles/qemu-edu.toml"))];

/// Errors loading profiles.
#[derive(Debug, Error)]
pub enum ProfileError {
    /// The TOML is malformed or has unknown fields.
    #[error("bad profile file {origin}")]
    Parse {
        /// File name or origin.
        origin: String,
        /// The parser's error (names the line and field).
        #[source]
        source: Box<toml::de::Error>,
    },
    /// A key is not `vvvv:dddd` in hex.
    #[error("bad profile key {0:?} in {1}, expected \"vvvv:dddd\" in hex")]
    BadKey(String, String),
    /// A usage name is unknown.
    #[error("unknown usage {0:?} in a device profile")]
    UnknownUsage(String),
    /// Reading a profile file or folder failed.
    #[error("cannot read profiles from {0}")]
    Io(String, #[source] std::io::Error),
    /// The same device appears in two files.
    #[error("device {0} is profiled twice (second time in {1})")]
    Duplicate(String, String),
}

impl Profiles {
    /// The compiled-in profiles of `vfio/profiles/`.
    pub fn builtin() -> Result<Profiles, ProfileError> {
        let mut p = Profiles::default();
        for (origin, text) in BUILTIN {
            p.add_toml(origin, text)?;
        }
        Ok(p)
    }

    /// Adds the profiles of one TOML text; `origin` names it in errors.
    pub fn add_toml(&mut self, origin: &str, text: &str) -> Result<(), ProfileError> {
        let file: ProfileFile = toml::from_str(text).map_err(|e| ProfileError::Parse {
            origin: origin.to_owned(),
            source: Box::new(e),
        })?;
        for (key, profile) in file.devices {
            let norm = normalize_key(&key)
                .ok_or_else(|| ProfileError::BadKey(key.clone(), origin.to_owned()))?;
            profile.usage_flags()?;
            if self.by_key.insert(norm.clone(), profile).is_some() {
                return Err(ProfileError::Duplicate(norm, origin.to_owned()));
            }
        }
        Ok(())
    }

    /// Adds every `*.toml` file of a folder, in name order.
    pub fn add_dir(&mut self, dir: &Path) -> Result<(), ProfileError> {
        let io = |e| ProfileError::Io(dir.display().to_string(), e);
        let mut files: Vec<_> = std::fs::read_dir(dir)
            .map_err(io)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "toml"))
            .collect();
        files.sort();
        for f in files {
            let text = std::fs::read_to_string(&f)
                .map_err(|e| ProfileError::Io(f.display().to_string(), e))?;
            self.add_toml(&f.display().to_string(), &text)?;
        }
        Ok(())
    }

    /// The profile of `vendor:device`, if any.
    pub fn get(&self, vendor: u16, device: u16) -> Option<&DeviceProfile> {
        self.by_key.get(&format!("{vendor:04x}:{device:04x}"))
    }

    /// Number of profiled devices.
    pub fn len(&self) -> usize {
        self.by_key.len()
    }

    /// Whether no device is profiled.
    pub fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }
}

fn normalize_key(key: &str) -> Option<String> {
    let (v, d) = key.split_once(':')?;
    if v.len() != 4 || d.len() != 4 {
        return None;
    }
    let v = u16::from_str_radix(v, 16).ok()?;
    let d = u16::from_str_radix(d, 16).ok()?;
    Some(format!("{v:04x}:{d:04x}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_profiles_include_edu_with_28_bits() {
        let p = Profiles::builtin().unwrap();
        let edu = p.get(0x1234, 0x11e8).unwrap();
        assert_eq!(edu.address_bits, Some(28));
        assert_eq!(
            edu.usage_flags().unwrap(),
            Usage::DMA_READ | Usage::DMA_WRITE
        );
    }

    #[test]
    fn every_file_in_profiles_dir_loads() {
        let mut p = Profiles::default();
        p.add_dir(&Path::new(env!("CARGO_MANIFEST_DIR")).join("profiles"))
            .unwrap();
        assert_eq!(p, Profiles::builtin().unwrap());
    }

    #[test]
    fn unknown_field_is_rejected_naming_it() {
        let err = Profiles::default()
            .add_toml("t.toml", "[devices.\"1234:11e8\"]\naddress_width = 28\n")
            .unwrap_err();
        let ProfileError::Parse { source, .. } = err else {
            panic!("{err}")
        };
        assert!(source.to_string().contains("address_width"), "{source}");
    }

    #[test]
    fn upper_case_key_is_normalized() {
        let mut p = Profiles::default();
        p.add_toml("t", "[devices.\"8086:A0C8\"]\naddress_bits = 32\n")
            .unwrap();
        assert_eq!(p.get(0x8086, 0xa0c8).unwrap().address_bits, Some(32));
    }

    #[test]
    fn bad_key_is_rejected() {
        let err = Profiles::default()
            .add_toml("t", "[devices.edu]\n")
            .unwrap_err();
        assert!(matches!(err, ProfileError::BadKey(..)), "{err}");
    }

    #[test]
    fn unknown_usage_is_rejected() {
        let err = Profiles::default()
            .add_toml("t", "[devices.\"1234:11e8\"]\nusage = [\"teleport\"]\n")
            .unwrap_err();
        assert!(matches!(err, ProfileError::UnknownUsage(..)), "{err}");
    }

    #[test]
    fn duplicate_device_is_rejected() {
        let mut p = Profiles::builtin().unwrap();
        let err = p.add_toml("t", "[devices.\"1234:11E8\"]\n").unwrap_err();
        assert!(matches!(err, ProfileError::Duplicate(..)), "{err}");
    }
}
