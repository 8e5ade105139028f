//! PCI devices in sysfs: finding them by id, their IOMMU group, binding them to vfio-pci.

use std::fs;
use std::path::{Path, PathBuf};

use crate::device::VfioError;

const PCI_DEVICES: &str = "/sys/bus/pci/devices";

fn read_hex(path: &Path) -> Option<u32> {
    let s = fs::read_to_string(path).ok()?;
    u32::from_str_radix(s.trim().trim_start_matches("0x"), 16).ok()
}

/// Sysfs names of the PCI devices with this vendor and device id, sorted.
pub fn find_pci(vendor: u16, device: u16) -> Vec<String> {
    let Ok(dir) = fs::read_dir(PCI_DEVICES) else {
        return Vec::new();
    };
    let mut out: Vec<String> = dir
        .filter_map(|e| e.ok())
        .filter(|e| {
            let p = e.path();
            read_hex(&p.join("vendor")) == Some(vendor.into())
                && read_hex(&p.join("device")) == Some(device.into())
        })
        .filter_map(|e| e.file_name().into_string().ok())
        .collect();
    out.sort();
    out
}

/// The IOMMU group number of device `name`.
pub fn iommu_group(name: &str) -> Result<u32, VfioError> {
    let link = Path::new(PCI_DEVICES).join(name).join("iommu_group");
    let target = fs::read_link(&link).map_err(|_| VfioError::NoGroup(name.to_owned()))?;
    target
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| VfioError::NoGroup(name.to_owned()))
}

/// The driver device `name` is bound to, if any.
pub fn driver(name: &str) -> Option<String> {
    let link = fs::read_link(Path::new(PCI_DEVICES).join(name).join("driver")).ok()?;
    link.file_name()?.to_str().map(str::to_owned)
}

/// Binds device `name` to vfio-pci (module loaded already): unbinds it from its driver, sets
/// `driver_override` and asks the PCI core to probe it. Nothing happens if it is bound
/// to vfio-pci already.
pub fn bind_vfio_pci(name: &str) -> Result<(), VfioError> {
    let dev = Path::new(PCI_DEVICES).join(name);
    let write = |p: PathBuf, v: &str| fs::write(&p, v).map_err(|e| VfioError::Access(p, e));
    match driver(name).as_deref() {
        Some("vfio-pci") => return Ok(()),
        Some(_) => write(dev.join("driver/unbind"), name)?,
        None => {}
    }
    write(dev.join("driver_override"), "vfio-pci")?;
    write(PathBuf::from("/sys/bus/pci/drivers_probe"), name)?;
    match driver(name).as_deref() {
        Some("vfio-pci") => Ok(()),
        _ => Err(VfioError::Access(
            dev.join("driver"),
            std::io::Error::other("device did not bind to vfio-pci (is the module loaded?)"),
        )),
    }
}
