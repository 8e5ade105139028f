//! What a VFIO device tells about itself, as plain data: PCI ids from its config space and
//! the IOMMU's answer to `VFIO_IOMMU_GET_INFO`. Recorded once on real hardware (or in a guest),
//! it is all that constraint derivation needs, so derivation is tested without hardware.

use bufbroker_proto::AddressRange;
use serde::{Deserialize, Serialize};
use thiserror::Error;
use vfio_bindings::bindings::vfio::{
    VFIO_IOMMU_INFO_CAPS, VFIO_IOMMU_INFO_PGSIZES, VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE,
    VFIO_IOMMU_TYPE1_INFO_DMA_AVAIL,
};

/// PCI identity read from the device's configuration space.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PciIds {
    /// Vendor id (config offset 0x00).
    pub vendor: u16,
    /// Device id (0x02).
    pub device: u16,
    /// Class code: base class, subclass, programming interface (0x0b, 0x0a, 0x09) as
    /// `0xBBSSPP`.
    pub class: u32,
    /// Revision id (0x08).
    pub revision: u8,
    /// Subsystem vendor id (0x2c).
    pub subsystem_vendor: u16,
    /// Subsystem id (0x2e).
    pub subsystem: u16,
}

impl PciIds {
    /// Parses the first 0x30 bytes of a type-0 configuration header.
    pub fn from_config(config: &[u8]) -> Result<PciIds, InfoError> {
        let u8_at = |o: usize| {
            config
                .get(o)
                .copied()
                .ok_or(InfoError::ShortConfig(config.len()))
        };
        let u16_at = |o: usize| -> Result<u16, InfoError> {
            Ok(u16::from_le_bytes([u8_at(o)?, u8_at(o + 1)?]))
        };
        Ok(PciIds {
            vendor: u16_at(0x00)?,
            device: u16_at(0x02)?,
            revision: u8_at(0x08)?,
            class: u32::from_le_bytes([u8_at(0x09)?, u8_at(0x0a)?, u8_at(0x0b)?, 0]),
            subsystem_vendor: u16_at(0x2c)?,
            subsystem: u16_at(0x2e)?,
        })
    }

    /// The `vendor:device` key of device profiles, lower-case hex (`1234:11e8`).
    pub fn key(&self) -> String {
        format!("{:04x}:{:04x}", self.vendor, self.device)
    }
}

/// The type1 IOMMU's description of the container, from `VFIO_IOMMU_GET_INFO`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IommuInfo {
    /// Bitmap of supported IOMMU page sizes (bit n set: 2^n bytes); 0 if not reported.
    pub page_sizes: u64,
    /// Usable IOVA ranges (capability `VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE`: the aperture
    /// minus reserved regions such as the MSI window); empty if not reported.
    #[serde(default)]
    pub iova_ranges: Vec<AddressRange>,
    /// DMA mappings still available to this container (capability
    /// `VFIO_IOMMU_TYPE1_INFO_DMA_AVAIL`, the module parameter `dma_entry_limit` minus the
    /// mappings made); `None` if not reported.
    #[serde(default)]
    pub dma_avail: Option<u32>,
}

impl IommuInfo {
    /// The smallest IOMMU page size in bytes (4096 when none is reported).
    pub fn min_page_size(&self) -> u64 {
        if self.page_sizes == 0 {
            4096
        } else {
            1u64 << self.page_sizes.trailing_zeros()
        }
    }

    /// The IOVA address width the ranges span: bits needed for the highest usable IOVA
    /// (64 when no range is reported).
    pub fn address_bits(&self) -> u8 {
        match self.iova_ranges.iter().map(|r| r.end).max() {
            Some(end) => (64 - end.leading_zeros()) as u8,
            None => 64,
        }
    }
}

/// Everything derivation needs to know about one VFIO device.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceInfo {
    /// The device's sysfs name (`0000:00:03.0`).
    pub name: String,
    /// Its PCI identity.
    pub ids: PciIds,
    /// The IOMMU of its container.
    pub iommu: IommuInfo,
}

/// Errors parsing what the kernel returned.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum InfoError {
    /// The configuration space read was too short.
    #[error("PCI configuration space too short ({0} bytes, need 0x30)")]
    ShortConfig(usize),
    /// `VFIO_IOMMU_GET_INFO` returned fewer bytes than its fixed header.
    #[error("VFIO_IOMMU_GET_INFO reply too short ({0} bytes)")]
    ShortInfo(usize),
    /// A capability points outside the reply or loops.
    #[error("malformed capability chain at offset {0:#x}")]
    BadCapability(u32),
}

/// Size of `struct vfio_iommu_type1_info` (argsz, flags, iova_pgsizes, cap_offset, pad).
pub(crate) const TYPE1_INFO_SIZE: usize = 24;
/// Size of `struct vfio_info_cap_header` (id, version, next).
const CAP_HEADER_SIZE: usize = 8;
/// Size of one `struct vfio_iova_range` (start, end).
const IOVA_RANGE_SIZE: usize = 16;
/// Most capabilities followed, against loops in a corrupt chain.
const MAX_CAPS: usize = 64;

fn le_u32(b: &[u8], at: usize) -> Option<u32> {
    let s = b.get(at..at.checked_add(4)?)?;
    Some(u32::from_le_bytes(s.try_into().ok()?))
}

fn le_u64(b: &[u8], at: usize) -> Option<u64> {
    let s = b.get(at..at.checked_add(8)?)?;
    Some(u64::from_le_bytes(s.try_into().ok()?))
}

/// Parses a complete `VFIO_IOMMU_GET_INFO` reply (the fixed `vfio_iommu_type1_info` followed
/// by its capability chain, as laid out in `include/uapi/linux/vfio.h`). Unknown
/// capabilities are skipped.
pub fn parse_type1_info(reply: &[u8]) -> Result<IommuInfo, InfoError> {
    let short = || InfoError::ShortInfo(reply.len());
    let flags = le_u32(reply, 4).ok_or_else(short)?;
    let pgsizes = le_u64(reply, 8).ok_or_else(short)?;
    let cap_offset = le_u32(reply, 16).ok_or_else(short)?;
    let mut info = IommuInfo {
        page_sizes: if flags & VFIO_IOMMU_INFO_PGSIZES != 0 {
            pgsizes
        } else {
            0
        },
        ..IommuInfo::default()
    };
    if flags & VFIO_IOMMU_INFO_CAPS == 0 {
        return Ok(info);
    }
    let mut next = cap_offset;
    for _ in 0..MAX_CAPS {
        if next == 0 {
            return Ok(info);
        }
        let at = next as usize;
        if at < TYPE1_INFO_SIZE {
            return Err(InfoError::BadCapability(next));
        }
        let bad = InfoError::BadCapability(next);
        let header = le_u32(reply, at).ok_or(bad.clone())?;
        let id = header & 0xffff;
        let following = le_u32(reply, at + 4).ok_or(bad.clone())?;
        let body = at + CAP_HEADER_SIZE;
        if id == VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE {
            let n = le_u32(reply, body).ok_or(bad.clone())? as usize;
            let mut ranges = Vec::with_capacity(n.min(256));
            for i in 0..n {
                let r = body + 8 + i * IOVA_RANGE_SIZE;
                let start = le_u64(reply, r).ok_or(bad.clone())?;
                let end = le_u64(reply, r + 8).ok_or(bad.clone())?;
                ranges.push(AddressRange { start, end });
            }
            info.iova_ranges = ranges;
        } else if id == VFIO_IOMMU_TYPE1_INFO_DMA_AVAIL {
            info.dma_avail = Some(le_u32(reply, body).ok_or(bad)?);
        }
        // Capabilities are chained forward; a pointer backwards would loop.
        if following != 0 && following <= next {
            return Err(InfoError::BadCapability(following));
        }
        next = following;
    }
    Err(InfoError::BadCapability(next))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reply as the 6.12 kernel builds it: header, IOVA-range capability (two ranges
    /// around the x86 MSI window), migration capability (id 2, skipped), DMA-avail capability.
    fn recorded_reply() -> Vec<u8> {
        let mut b = Vec::new();
        let push32 = |b: &mut Vec<u8>, v: u32| b.extend_from_slice(&v.to_le_bytes());
        let push64 = |b: &mut Vec<u8>, v: u64| b.extend_from_slice(&v.to_le_bytes());
        push32(&mut b, 0); // argsz, patched below
        push32(&mut b, VFIO_IOMMU_INFO_PGSIZES | VFIO_IOMMU_INFO_CAPS);
        push64(&mut b, 0x4020_1000); // 4K, 2M, 1G
        push32(&mut b, 24);
        push32(&mut b, 0);
        // IOVA ranges at 24: header 8 + nr 4 + reserved 4 + 2 * 16 = 48 bytes.
        push32(&mut b, VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE | (1 << 16));
        push32(&mut b, 72);
        push32(&mut b, 2);
        push32(&mut b, 0);
        push64(&mut b, 0);
        push64(&mut b, 0xfedf_ffff);
        push64(&mut b, 0xfef0_0000);
        push64(&mut b, 0x7f_ffff_ffff);
        // Migration capability at 72 (24 bytes), skipped.
        push32(&mut b, 2 | (1 << 16));
        push32(&mut b, 96);
        push32(&mut b, 0);
        push32(&mut b, 0);
        push64(&mut b, 0);
        // DMA avail at 96.
        push32(&mut b, VFIO_IOMMU_TYPE1_INFO_DMA_AVAIL | (1 << 16));
        push32(&mut b, 0);
        push32(&mut b, 65535);
        push32(&mut b, 0);
        let len = b.len() as u32;
        b[..4].copy_from_slice(&len.to_le_bytes());
        b
    }

    #[test]
    fn parse_type1_info_recorded_reply_gives_ranges_pages_and_limit() {
        let info = parse_type1_info(&recorded_reply()).unwrap();
        assert_eq!(info.page_sizes, 0x4020_1000);
        assert_eq!(info.min_page_size(), 4096);
        assert_eq!(
            info.iova_ranges,
            vec![
                AddressRange {
                    start: 0,
                    end: 0xfedf_ffff
                },
                AddressRange {
                    start: 0xfef0_0000,
                    end: 0x7f_ffff_ffff
                }
            ]
        );
        assert_eq!(info.dma_avail, Some(65535));
        assert_eq!(info.address_bits(), 39);
    }

    #[test]
    fn parse_type1_info_without_caps_flag_ignores_chain() {
        let mut b = recorded_reply();
        b[4..8].copy_from_slice(&VFIO_IOMMU_INFO_PGSIZES.to_le_bytes());
        let info = parse_type1_info(&b).unwrap();
        assert!(info.iova_ranges.is_empty());
        assert_eq!(info.dma_avail, None);
    }

    #[test]
    fn parse_type1_info_backward_pointer_is_an_error() {
        let mut b = recorded_reply();
        b[100..104].copy_from_slice(&24u32.to_le_bytes());
        assert_eq!(parse_type1_info(&b), Err(InfoError::BadCapability(24)));
    }

    #[test]
    fn parse_type1_info_truncated_range_list_is_an_error() {
        let b = recorded_reply();
        assert!(matches!(
            parse_type1_info(&b[..60]),
            Err(InfoError::BadCapability(24))
        ));
    }

    #[test]
    fn parse_type1_info_short_reply_is_an_error() {
        assert_eq!(parse_type1_info(&[0; 10]), Err(InfoError::ShortInfo(10)));
    }

    #[test]
    fn pci_ids_from_edu_config_header() {
        let mut c = [0u8; 0x40];
        c[0..2].copy_from_slice(&0x1234u16.to_le_bytes());
        c[2..4].copy_from_slice(&0x11e8u16.to_le_bytes());
        c[8] = 0x10;
        c[0x0a] = 0xff; // QEMU's PCI_CLASS_OTHERS (0x00ff) at PCI_CLASS_DEVICE
        c[0x2c..0x2e].copy_from_slice(&0x1af4u16.to_le_bytes());
        c[0x2e..0x30].copy_from_slice(&0x1100u16.to_le_bytes());
        let ids = PciIds::from_config(&c).unwrap();
        assert_eq!(ids.key(), "1234:11e8");
        assert_eq!(ids.class, 0x00_ff00);
        assert_eq!(ids.revision, 0x10);
        assert_eq!(ids.subsystem_vendor, 0x1af4);
    }
}
