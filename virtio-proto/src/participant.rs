//! Participants: who will touch a buffer, and what each of them needs.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::constraint::{ConstraintSet, Usage, usage_serde};

/// A PCI address `domain:bus:device.function`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PciAddress {
    /// PCI domain (segment).
    pub domain: u16,
    /// Bus number.
    pub bus: u8,
    /// Device number (0..32).
    pub device: u8,
    /// Function number (0..8).
    pub function: u8,
}

impl fmt::Display for PciAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:04x}:{:02x}:{:02x}.{:x}",
            self.domain, self.bus, self.device, self.function
        )
    }
}

/// Who a participant is.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub enum ParticipantId {
    /// The CPU of whoever maps the buffer.
    Cpu,
    /// A PCI device.
    Pci {
        /// Its address.
        address: PciAddress,
        /// PCI vendor id.
        vendor: u16,
        /// PCI device id.
        device: u16,
    },
    /// A device known by its sysfs path.
    Sysfs(String),
    /// A device driven through VFIO (the host's sysfs name, e.g. `0000:00:04.0`).
    Vfio(String),
    /// A device inside the guest, numbered by the guest.
    GuestLocal(u32),
    /// A participant configured on the broker under this name.
    Named(String),
}

impl fmt::Display for ParticipantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParticipantId::Cpu => f.write_str("cpu"),
            ParticipantId::Pci {
                address,
                vendor,
                device,
            } => write!(f, "pci {address} [{vendor:04x}:{device:04x}]"),
            ParticipantId::Sysfs(p) => write!(f, "sysfs {p}"),
            ParticipantId::Vfio(p) => write!(f, "vfio {p}"),
            ParticipantId::GuestLocal(n) => write!(f, "guest device {n}"),
            ParticipantId::Named(n) => write!(f, "{n}"),
        }
    }
}

/// A participant: identity, a human label, what it will do, and its alternatives (best first).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Participant {
    /// Identity.
    pub id: ParticipantId,
    /// Human label used in plans and diagnostics.
    pub label: String,
    /// What this participant will do with the buffer. An alternative whose own usage is not
    /// empty applies only if it covers all of this.
    #[serde(with = "usage_serde", default)]
    pub usage: Usage,
    /// Alternatives, best first. At least one.
    pub alternatives: Vec<ConstraintSet>,
}

impl Participant {
    /// A participant with one alternative.
    pub fn new(id: ParticipantId, label: impl Into<String>, usage: Usage, set: ConstraintSet) -> Self {
        Participant {
            id,
            label: label.into(),
            usage,
            alternatives: vec![set],
        }
    }

    /// Whether alternative `set` covers this participant's usage.
    pub fn alternative_applies(&self, set: &ConstraintSet) -> bool {
        set.usage.is_empty() || set.usage.contains(self.usage)
    }
}
