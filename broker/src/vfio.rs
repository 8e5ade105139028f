//! Host VFIO devices as named participants and DMA targets.
//!
//! At start-up every configured device (`[vfio.NAME]` tables, `--vfio-device`) is opened
//! through `bufbroker-vfio` (bound to vfio-pci first when `bind = true`), probed, and its
//! participant derived from the probe plus a profile (a configured file, else the built-in
//! profiles). It is then a named host participant like a `[participants]` entry: a request
//! names it with `ParticipantId::Named(NAME)`, subject to the owner's allow-list.
//!
//! An allocation naming a device maps each buffer into the device's IOMMU domain through a
//! [`DmaTarget`] (the real one is a [`DmaSpace`]; tests use a fake), checks that the IOVA is
//! one the device's chosen alternative can address, and records the mapping as a
//! [`ViewKind::Iova`](crate::registry::ViewKind::Iova) view whose teardown drops the mapping:
//! the IOVA is unmapped before the registry frees the memory.

use std::collections::BTreeMap;
use std::fmt;
use std::os::fd::BorrowedFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bufbroker_proto::wire::{BufferId, ErrorCode};
use bufbroker_proto::{MemoryConstraints, Participant};
use bufbroker_vfio::{
    DmaError, DmaMapping, DmaSpace, ProfileError, Profiles, VfioDevice, VfioError,
    derive_participant, sysfs,
};
use serde::Deserialize;
use thiserror::Error;

/// `[vfio.NAME]`: a VFIO device the broker opens at start-up.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VfioSource {
    /// PCI address in sysfs form, `0000:00:04.0`.
    pub address: String,
    /// A profile file (`vfio/profiles/README.md`) with an entry for this device's
    /// `vendor:device`; relative to the configuration file. Default: the built-in profiles.
    #[serde(default)]
    pub profile: Option<PathBuf>,
    /// Unbind the device from its driver and bind it to vfio-pci at start-up.
    #[serde(default)]
    pub bind: bool,
}

impl VfioSource {
    /// A device given on the command line: `[NAME=]ADDRESS` (the name defaults to the
    /// address); never bound by the broker.
    pub fn from_arg(arg: &str) -> Result<(String, VfioSource), String> {
        let (name, address) = arg.split_once('=').unwrap_or((arg, arg));
        if name.is_empty() || address.is_empty() {
            return Err(format!(
                "--vfio-device {arg:?}: expected [NAME=]ADDRESS, e.g. edu=0000:00:04.0"
            ));
        }
        let source = VfioSource {
            address: address.to_owned(),
            profile: None,
            bind: false,
        };
        Ok((name.to_owned(), source))
    }
}

/// Errors opening a configured VFIO device.
#[derive(Debug, Error)]
pub enum VfioSetupError {
    /// Binding to vfio-pci, opening or probing the device failed.
    #[error("VFIO device {name:?} ({address})")]
    Device {
        /// The configured name.
        name: String,
        /// Its PCI address.
        address: String,
        /// Why.
        #[source]
        source: VfioError,
    },
    /// The profile file is wrong.
    #[error("VFIO device {name:?}: profile")]
    Profile {
        /// The configured name.
        name: String,
        /// Why.
        #[source]
        source: ProfileError,
    },
    /// The profile file cannot be read.
    #[error("VFIO device {name:?}: cannot read profile {path}")]
    ProfileRead {
        /// The configured name.
        name: String,
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The configured profile file has no entry for the device.
    #[error("VFIO device {name:?}: {path} has no entry for {key}")]
    ProfileMissing {
        /// The configured name.
        name: String,
        /// The file.
        path: PathBuf,
        /// The device's `vendor:device`.
        key: String,
    },
}

/// A buffer mapped for one device's DMA; dropping it unmaps the IOVA (then its own CPU
/// mapping of the buffer).
pub trait DmaView: Send {
    /// IOVA of the first byte.
    fn iova(&self) -> u64;
    /// Mapped length.
    fn len(&self) -> u64;
    /// Whether the mapping is empty (never: zero-length maps are refused).
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Where one device's buffers are mapped for DMA: the seam between sessions and the IOMMU.
pub trait DmaTarget: Send + Sync {
    /// Maps the first `len` bytes of `fd` (a multiple of the IOMMU page) at a free IOVA.
    fn map(&self, fd: BorrowedFd<'_>, len: u64) -> Result<Box<dyn DmaView>, DmaError>;
}

impl DmaView for DmaMapping {
    fn iova(&self) -> u64 {
        DmaMapping::iova(self)
    }
    fn len(&self) -> u64 {
        DmaMapping::len(self)
    }
}

/// The real target: a container's IOMMU through `bufbroker-vfio`.
struct SpaceTarget(Arc<DmaSpace>);

impl DmaTarget for SpaceTarget {
    fn map(&self, fd: BorrowedFd<'_>, len: u64) -> Result<Box<dyn DmaView>, DmaError> {
        Ok(Box::new(self.0.map(fd, 0, len)?))
    }
}

/// Failures mapping a buffer for a device.
#[derive(Debug, Error)]
pub enum IovaError {
    /// The DMA mapping failed (limit reached, no IOVA left, the kernel refused).
    #[error("mapping {buffer} for VFIO device {device:?}")]
    Map {
        /// The device's configured name.
        device: String,
        /// The buffer.
        buffer: BufferId,
        /// Why.
        #[source]
        source: DmaError,
    },
    /// The mapping's IOVA is not one the device can address (a bug in the IOVA allocator or
    /// the DMA target; the mapping was undone).
    #[error(
        "{buffer} was mapped for VFIO device {device:?} at IOVA {iova:#x}+{len:#x}, which its \
         constraints do not allow ({why})"
    )]
    Unaddressable {
        /// The device's configured name.
        device: String,
        /// The buffer.
        buffer: BufferId,
        /// IOVA.
        iova: u64,
        /// Length.
        len: u64,
        /// Which constraint.
        why: String,
    },
}

impl IovaError {
    /// The wire error code.
    pub fn code(&self) -> ErrorCode {
        match self {
            IovaError::Map { source, .. } => match source {
                DmaError::LimitReached { .. } => ErrorCode::QUOTA_EXCEEDED,
                DmaError::Iova(_) | DmaError::Mmap { .. } => ErrorCode::OUT_OF_MEMORY,
                _ => ErrorCode::INTERNAL,
            },
            IovaError::Unaddressable { .. } => ErrorCode::INTERNAL,
        }
    }
}

/// One host VFIO device: its participant and where its buffers are mapped.
pub struct HostDevice {
    name: String,
    participant: Participant,
    dma: Box<dyn DmaTarget>,
    // Kept open so the device (and its group) stay ours; dropped after the DMA target.
    device: Option<VfioDevice>,
}

impl fmt::Debug for HostDevice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HostDevice")
            .field("name", &self.name)
            .field("participant", &self.participant.label)
            .field("device", &self.device)
            .finish_non_exhaustive()
    }
}

impl HostDevice {
    /// Opens the device `source` names (binding it to vfio-pci if asked), probes it and
    /// derives its participant with `source.profile` or the built-in profiles.
    pub fn open(name: &str, source: &VfioSource) -> Result<HostDevice, VfioSetupError> {
        let address = source.address.as_str();
        let dev_err = |e| VfioSetupError::Device {
            name: name.to_owned(),
            address: address.to_owned(),
            source: e,
        };
        if source.bind {
            sysfs::bind_vfio_pci(address).map_err(dev_err)?;
        }
        let device = VfioDevice::open(address).map_err(dev_err)?;
        let info = device.info().map_err(dev_err)?;
        let profile_err = |source| VfioSetupError::Profile {
            name: name.to_owned(),
            source,
        };
        let profiles = match &source.profile {
            Some(path) => {
                let text =
                    std::fs::read_to_string(path).map_err(|e| VfioSetupError::ProfileRead {
                        name: name.to_owned(),
                        path: path.clone(),
                        source: e,
                    })?;
                let mut p = Profiles::default();
                p.add_toml(&path.display().to_string(), &text)
                    .map_err(profile_err)?;
                if p.get(info.ids.vendor, info.ids.device).is_none() {
                    return Err(VfioSetupError::ProfileMissing {
                        name: name.to_owned(),
                        path: path.clone(),
                        key: info.ids.key(),
                    });
                }
                p
            }
            None => Profiles::builtin().map_err(profile_err)?,
        };
        let profile = profiles.get(info.ids.vendor, info.ids.device);
        let participant = derive_participant(&info, profile).map_err(profile_err)?;
        // One IOVA allocator per device, over the first alternative's window: derivation
        // gives every alternative the same IOMMU ranges and profile width, and the session
        // checks each IOVA against the alternative the plan chose.
        let memory = participant
            .alternatives
            .first()
            .map(|a| a.memory.clone())
            .unwrap_or_default();
        let space = DmaSpace::new(device.container().clone(), &memory, &info.iommu);
        log::info!(
            "VFIO device {name:?}: {address} [{}] as {:?}, IOMMU page {:#x}, DMA mapping limit {}",
            info.ids.key(),
            participant.label,
            space.page(),
            space
                .limit()
                .map_or_else(|| "unknown".to_owned(), |l| l.to_string()),
        );
        Ok(HostDevice {
            name: name.to_owned(),
            participant,
            dma: Box::new(SpaceTarget(space)),
            device: Some(device),
        })
    }

    /// A device with a given participant and DMA target (tests, other VFIO front ends).
    pub fn with_target(name: &str, participant: Participant, dma: Box<dyn DmaTarget>) -> Self {
        HostDevice {
            name: name.to_owned(),
            participant,
            dma,
            device: None,
        }
    }

    /// The configured name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The derived participant.
    pub fn participant(&self) -> &Participant {
        &self.participant
    }

    /// The opened VFIO device (none for a device made with [`with_target`](Self::with_target)).
    pub fn device(&self) -> Option<&VfioDevice> {
        self.device.as_ref()
    }

    /// Maps `len` bytes of `fd` for buffer `buffer`, at an IOVA the participant's alternative
    /// `alternative` can address; the mapping is undone if it cannot.
    pub fn map(
        &self,
        buffer: BufferId,
        fd: BorrowedFd<'_>,
        len: u64,
        alternative: usize,
    ) -> Result<Box<dyn DmaView>, IovaError> {
        let mapping = self.dma.map(fd, len).map_err(|source| IovaError::Map {
            device: self.name.clone(),
            buffer,
            source,
        })?;
        let memory = self
            .participant
            .alternatives
            .get(alternative)
            .map(|a| &a.memory);
        if let Some(why) = memory.and_then(|m| unaddressable(m, mapping.iova(), mapping.len())) {
            return Err(IovaError::Unaddressable {
                device: self.name.clone(),
                buffer,
                iova: mapping.iova(),
                len: mapping.len(),
                why,
            });
        }
        Ok(mapping)
    }
}

/// Why `iova..iova+len` is outside what `memory` allows, if it is.
pub fn unaddressable(memory: &MemoryConstraints, iova: u64, len: u64) -> Option<String> {
    let Some(last) = len.checked_sub(1).and_then(|l| iova.checked_add(l)) else {
        return Some("empty or overflowing range".to_owned());
    };
    let bits = memory.effective_address_bits();
    if bits < 64 && last >> bits != 0 {
        return Some(format!("memory.address_bits = {bits}"));
    }
    let inside = memory.iova_ranges.is_empty()
        || memory
            .iova_ranges
            .iter()
            .any(|r| r.start <= iova && last <= r.end);
    if !inside {
        return Some("outside memory.iova_ranges".to_owned());
    }
    None
}

/// Opens every configured device, in name order.
pub fn open_all(
    sources: &BTreeMap<String, VfioSource>,
) -> Result<BTreeMap<String, HostDevice>, VfioSetupError> {
    sources
        .iter()
        .map(|(name, source)| Ok((name.clone(), HostDevice::open(name, source)?)))
        .collect()
}

/// `path` relative to `base` unless absolute.
pub(crate) fn resolve_profile(base: &Path, source: &mut VfioSource) {
    if let Some(p) = &source.profile {
        if p.is_relative() {
            source.profile = Some(base.join(p));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bufbroker_proto::AddressRange;

    #[test]
    fn unaddressable_checks_width_and_ranges() {
        let mut m = MemoryConstraints {
            address_bits: 28,
            ..MemoryConstraints::default()
        };
        assert_eq!(unaddressable(&m, 0x1000, 0x1000), None);
        assert_eq!(
            unaddressable(&m, (1 << 28) - 0x1000, 0x2000).as_deref(),
            Some("memory.address_bits = 28")
        );
        m.iova_ranges = vec![AddressRange {
            start: 0x10_0000,
            end: 0x1f_ffff,
        }];
        assert_eq!(
            unaddressable(&m, 0x1000, 0x1000).as_deref(),
            Some("outside memory.iova_ranges")
        );
        assert_eq!(unaddressable(&m, 0x1f_f000, 0x1000), None);
        assert!(unaddressable(&m, 0x1000, 0).is_some());
    }

    #[test]
    fn vfio_device_argument_with_and_without_name() {
        let (name, s) = VfioSource::from_arg("edu=0000:00:04.0").unwrap();
        assert_eq!(
            (name.as_str(), s.address.as_str(), s.bind),
            ("edu", "0000:00:04.0", false)
        );
        let (name, s) = VfioSource::from_arg("0000:00:04.0").unwrap();
        assert_eq!(
            (name.as_str(), s.address.as_str()),
            ("0000:00:04.0", "0000:00:04.0")
        );
        assert!(VfioSource::from_arg("edu=").is_err());
    }
}
