//! Virtio PCI vendor capabilities (virtio 1.2 §4.1.4), parsed from configuration-space bytes.

use super::VirtioPciError;

/// `cfg_type` of the common configuration.
pub const CAP_COMMON_CFG: u8 = 1;
/// `cfg_type` of the notification area.
pub const CAP_NOTIFY_CFG: u8 = 2;
/// `cfg_type` of the ISR status.
pub const CAP_ISR_CFG: u8 = 3;
/// `cfg_type` of the device-specific configuration.
pub const CAP_DEVICE_CFG: u8 = 4;
/// `cfg_type` of a shared-memory region (`virtio_pci_cap64`).
pub const CAP_SHARED_MEMORY_CFG: u8 = 8;

const PCI_CAP_ID_VNDR: u8 = 0x09;
const PCI_STATUS_CAP_LIST: u8 = 0x10;

/// Where one structure lives: a BAR, an offset and a length inside it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CapRegion {
    /// BAR index (0..=5).
    pub bar: u8,
    /// Offset in the BAR.
    pub offset: u64,
    /// Length in bytes.
    pub length: u64,
}

/// The capabilities the driver uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VirtioCaps {
    /// Common configuration.
    pub common: CapRegion,
    /// Notification area.
    pub notify: CapRegion,
    /// Bytes between the notify addresses of consecutive `queue_notify_off` values.
    pub notify_multiplier: u32,
    /// ISR status (unused: the driver polls).
    pub isr: Option<CapRegion>,
    /// Device-specific configuration.
    pub device: Option<CapRegion>,
    /// Shared-memory region 0 (the host window).
    pub shm0: Option<CapRegion>,
}

fn u32_at(cfg: &[u8], at: usize) -> Option<u32> {
    let b: [u8; 4] = cfg.get(at..at.checked_add(4)?)?.try_into().ok()?;
    Some(u32::from_le_bytes(b))
}

/// Walks the capability list of `cfg` (at least the first 256 bytes of configuration space).
pub fn parse(cfg: &[u8]) -> Result<VirtioCaps, VirtioPciError> {
    let byte = |at: usize| cfg.get(at).copied();
    if byte(0x06).unwrap_or(0) & PCI_STATUS_CAP_LIST == 0 {
        return Err(VirtioPciError::NotModern("no capability list"));
    }
    let mut common = None;
    let mut notify = None;
    let mut isr = None;
    let mut device = None;
    let mut shm0 = None;
    let mut at = usize::from(byte(0x34).unwrap_or(0) & 0xfc);
    // A list longer than 48 entries (256 bytes / 4 + slack) is a loop.
    for _ in 0..48 {
        if at < 0x40 {
            break;
        }
        let (Some(id), Some(next)) = (byte(at), byte(at + 1)) else {
            break;
        };
        if id == PCI_CAP_ID_VNDR {
            let (Some(cfg_type), Some(bar), Some(shmid)) =
                (byte(at + 3), byte(at + 4), byte(at + 5))
            else {
                break;
            };
            let off = u32_at(cfg, at + 8);
            let len = u32_at(cfg, at + 12);
            if let (Some(off), Some(len), true) = (off, len, bar <= 5) {
                let mut region = CapRegion {
                    bar,
                    offset: u64::from(off),
                    length: u64::from(len),
                };
                match cfg_type {
                    CAP_COMMON_CFG if common.is_none() => common = Some(region),
                    CAP_NOTIFY_CFG if notify.is_none() => {
                        notify = u32_at(cfg, at + 16).map(|m| (region, m));
                    }
                    CAP_ISR_CFG if isr.is_none() => isr = Some(region),
                    CAP_DEVICE_CFG if device.is_none() => device = Some(region),
                    CAP_SHARED_MEMORY_CFG if shmid == 0 && shm0.is_none() => {
                        if let (Some(hi_off), Some(hi_len)) =
                            (u32_at(cfg, at + 16), u32_at(cfg, at + 20))
                        {
                            region.offset |= u64::from(hi_off) << 32;
                            region.length |= u64::from(hi_len) << 32;
                            shm0 = Some(region);
                        }
                    }
                    _ => {}
                }
            }
        }
        at = usize::from(next & 0xfc);
    }
    let common = common.ok_or(VirtioPciError::NotModern(
        "no common configuration capability",
    ))?;
    let (notify, notify_multiplier) =
        notify.ok_or(VirtioPciError::NotModern("no notification capability"))?;
    Ok(VirtioCaps {
        common,
        notify,
        notify_multiplier,
        isr,
        device,
        shm0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[allow(clippy::too_many_arguments)]
    fn put_cap(cfg: &mut [u8], at: usize, next: u8, ty: u8, bar: u8, id: u8, off: u32, len: u32) {
        cfg[at] = PCI_CAP_ID_VNDR;
        cfg[at + 1] = next;
        cfg[at + 2] = 16;
        cfg[at + 3] = ty;
        cfg[at + 4] = bar;
        cfg[at + 5] = id;
        cfg[at + 8..at + 12].copy_from_slice(&off.to_le_bytes());
        cfg[at + 12..at + 16].copy_from_slice(&len.to_le_bytes());
    }

    /// The layout QEMU 11.1 gives vhost-user-test-device-pci with a shared-memory region.
    fn qemu_like() -> Vec<u8> {
        let mut cfg = vec![0u8; 256];
        cfg[0x06] = PCI_STATUS_CAP_LIST;
        cfg[0x34] = 0x40;
        put_cap(&mut cfg, 0x40, 0x50, CAP_COMMON_CFG, 2, 0, 0, 0x1000);
        put_cap(&mut cfg, 0x50, 0x60, CAP_ISR_CFG, 2, 0, 0x1000, 0x1000);
        put_cap(&mut cfg, 0x60, 0x70, CAP_DEVICE_CFG, 2, 0, 0x2000, 0x1000);
        put_cap(&mut cfg, 0x70, 0x84, CAP_NOTIFY_CFG, 2, 0, 0x3000, 0x1000);
        cfg[0x80..0x84].copy_from_slice(&4u32.to_le_bytes());
        put_cap(&mut cfg, 0x84, 0x00, CAP_SHARED_MEMORY_CFG, 4, 0, 0, 0);
        cfg[0x84 + 16..0x84 + 20].copy_from_slice(&0u32.to_le_bytes());
        cfg[0x84 + 20..0x84 + 24].copy_from_slice(&1u32.to_le_bytes()); // 4 GiB
        cfg
    }

    #[test]
    fn parse_qemu_layout_finds_every_capability_and_64_bit_window() {
        let caps = parse(&qemu_like()).unwrap();

        assert_eq!(
            caps.common,
            CapRegion {
                bar: 2,
                offset: 0,
                length: 0x1000
            }
        );
        assert_eq!(caps.notify.offset, 0x3000);
        assert_eq!(caps.notify_multiplier, 4);
        assert_eq!(caps.device.unwrap().offset, 0x2000);
        assert_eq!(
            caps.shm0,
            Some(CapRegion {
                bar: 4,
                offset: 0,
                length: 1 << 32
            })
        );
    }

    #[test]
    fn parse_looping_capability_list_terminates() {
        let mut cfg = qemu_like();
        cfg[0x84 + 1] = 0x40; // the last cap points back at the first

        let caps = parse(&cfg).unwrap();

        assert_eq!(caps.common.bar, 2);
    }

    #[test]
    fn parse_without_common_cfg_is_not_modern() {
        let mut cfg = qemu_like();
        cfg[0x34] = 0x50; // skip the common cap

        assert!(matches!(parse(&cfg), Err(VirtioPciError::NotModern(_))));
        assert!(matches!(
            parse(&[0u8; 8]),
            Err(VirtioPciError::NotModern(_))
        ));
    }

    #[test]
    fn parse_ignores_bad_bar_indices_and_truncated_caps() {
        let mut cfg = qemu_like();
        cfg[0x40 + 4] = 9; // BAR 9 does not exist

        assert!(parse(&cfg).is_err());
        assert!(parse(&qemu_like()[..0x48]).is_err());
    }
}
