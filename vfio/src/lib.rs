//! VFIO devices as bufbroker participants and DMA targets.
//!
//! The path of one device, top to bottom:
//! 1. [`sysfs`]: find the PCI device, bind it to vfio-pci, find its IOMMU group;
//! 2. [`device`]: open container (type1 IOMMU), group and device; read PCI ids from config
//!    space and the IOMMU's facts (`VFIO_IOMMU_GET_INFO`) into a [`DeviceInfo`];
//! 3. [`profile`]: add what cannot be probed (the device's DMA width, formats, alignment)
//!    from TOML profiles keyed by `vendor:device`;
//! 4. [`derive`]: a pure function from `DeviceInfo` + profile to a
//!    [`bufbroker_proto::Participant`];
//! 5. [`dma`]: map broker buffers (fd + offset + length) at IOVAs the participant's
//!    constraints allow ([`iova`]), unmapped when the mapping is dropped.
//!
//! [`edu`] is QEMU's `edu` test device, which the end-to-end tests drive.

pub mod derive;
pub mod device;
pub mod dma;
pub mod edu;
pub mod info;
pub mod iova;
pub mod profile;
mod sys;
pub mod sysfs;

pub use derive::derive_participant;
pub use device::{Container, Region, VfioDevice, VfioError};
pub use dma::{DmaError, DmaMapping, DmaSpace};
pub use info::{DeviceInfo, InfoError, IommuInfo, PciIds, parse_type1_info};
pub use iova::{IovaAllocator, IovaError};
pub use profile::{DeviceProfile, ProfileError, Profiles};
