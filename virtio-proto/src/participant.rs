//! Participants: who will touch a buffer, and what each of them needs.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::constraint::{ConstraintSet, Usage, usage_serde};

/// A PCI address `domain:bus:device.function`. Human-readable formats write it as the string
/// `0000:00:02.0`; compact ones as four integers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
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

impl std::str::FromStr for PciAddress {
    type Err = String;

    /// Parses `dddd:bb:dd.f` (the domain may be omitted).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || format!("bad PCI address {s:?}, expected dddd:bb:dd.f");
        let (head, function) = s.rsplit_once('.').ok_or_else(bad)?;
        let parts: Vec<&str> = head.split(':').collect();
        let (domain, bus, device) = match parts.as_slice() {
            [d, b, v] => (*d, *b, *v),
            [b, v] => ("0", *b, *v),
            _ => return Err(bad()),
        };
        let hex16 = |x: &str| u16::from_str_radix(x, 16).map_err(|_| bad());
        let hex8 = |x: &str| u8::from_str_radix(x, 16).map_err(|_| bad());
        let addr = PciAddress {
            domain: hex16(domain)?,
            bus: hex8(bus)?,
            device: hex8(device)?,
            function: hex8(function)?,
        };
        if addr.device >= 32 || addr.function >= 8 {
            return Err(bad());
        }
        Ok(addr)
    }
}

impl Serialize for PciAddress {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.serialize_str(&self.to_string())
        } else {
            (self.domain, self.bus, self.device, self.function).serialize(s)
        }
    }
}

impl<'de> Deserialize<'de> for PciAddress {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        if d.is_human_readable() {
            let s = String::deserialize(d)?;
            s.parse().map_err(serde::de::Error::custom)
        } else {
            let (domain, bus, device, function) = <(u16, u8, u8, u8)>::deserialize(d)?;
            Ok(PciAddress {
                domain,
                bus,
                device,
                function,
            })
        }
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
    pub fn new(
        id: ParticipantId,
        label: impl Into<String>,
        usage: Usage,
        set: ConstraintSet,
    ) -> Self {
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
