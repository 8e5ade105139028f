//! The PCI device through sysfs: discovery, driver unbinding, BAR resources, configuration
//! space, bus mastering.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::VirtioPciError;
use crate::mapping::MappedRegion;

/// A PCI function under `<sysfs>/bus/pci/devices/<bdf>`.
#[derive(Debug, Clone)]
pub struct PciDevice {
    path: PathBuf,
    bdf: String,
}

fn read_hex(path: &Path) -> Option<u64> {
    let s = std::fs::read_to_string(path).ok()?;
    u64::from_str_radix(s.trim().trim_start_matches("0x"), 16).ok()
}

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> VirtioPciError {
    let path = path.to_owned();
    move |source| VirtioPciError::Sysfs { what, path, source }
}

impl PciDevice {
    /// The first device with `vendor:device` under `devices_dir` (normally
    /// `/sys/bus/pci/devices`), or the one named `bdf`.
    pub fn find(
        devices_dir: &Path,
        vendor: u16,
        device: u16,
        bdf: Option<&str>,
    ) -> Result<Self, VirtioPciError> {
        let mut names: Vec<String> = match bdf {
            Some(b) => vec![b.to_owned()],
            None => std::fs::read_dir(devices_dir)
                .map_err(io("list PCI devices", devices_dir))?
                .filter_map(|e| e.ok())
                .filter_map(|e| e.file_name().into_string().ok())
                .collect(),
        };
        names.sort();
        for name in names {
            let path = devices_dir.join(&name);
            if read_hex(&path.join("vendor")) == Some(u64::from(vendor))
                && read_hex(&path.join("device")) == Some(u64::from(device))
            {
                return Ok(PciDevice { path, bdf: name });
            }
        }
        Err(VirtioPciError::NotFound { vendor, device })
    }

    /// The PCI address (`0000:00:03.0`).
    pub fn bdf(&self) -> &str {
        &self.bdf
    }

    /// The bound driver's name, if any.
    pub fn driver(&self) -> Option<String> {
        let link = std::fs::read_link(self.path.join("driver")).ok()?;
        link.file_name()?.to_str().map(str::to_owned)
    }

    /// Unbinds the device from `expected` (e.g. `virtio-pci`). Another driver is an error:
    /// the library does not take devices away from drivers it does not know.
    pub fn unbind(&self, expected: &str) -> Result<(), VirtioPciError> {
        match self.driver() {
            None => Ok(()),
            Some(d) if d == expected => {
                let unbind = self.path.join("driver/unbind");
                std::fs::write(&unbind, &self.bdf).map_err(io("unbind the driver", &unbind))
            }
            Some(d) => Err(VirtioPciError::BoundElsewhere(d)),
        }
    }

    /// `(start, size)` of each of the six BARs (size 0: absent), from the `resource` file.
    pub fn resources(&self) -> Result<[(u64, u64); 6], VirtioPciError> {
        let path = self.path.join("resource");
        let text = std::fs::read_to_string(&path).map_err(io("read resources", &path))?;
        parse_resources(&text).ok_or(VirtioPciError::BadResourceFile(path))
    }

    /// The first 256 bytes of configuration space (needs root for more than 64).
    pub fn read_config(&self) -> Result<Vec<u8>, VirtioPciError> {
        let path = self.path.join("config");
        let f = File::open(&path).map_err(io("read config space", &path))?;
        let mut buf = vec![0u8; 256];
        let n = f
            .read_at(&mut buf, 0)
            .map_err(io("read config space", &path))?;
        if n < 256 {
            return Err(VirtioPciError::ShortConfig(n));
        }
        Ok(buf)
    }

    /// Sets Memory Space and Bus Master in the command register.
    pub fn enable_bus_master(&self) -> Result<(), VirtioPciError> {
        let path = self.path.join("config");
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(io("open config space", &path))?;
        let mut cmd = [0u8; 2];
        f.read_exact_at(&mut cmd, 4)
            .map_err(io("read the command register", &path))?;
        let value = u16::from_le_bytes(cmd) | 0x2 | 0x4;
        f.write_all_at(&value.to_le_bytes(), 4)
            .map_err(io("write the command register", &path))
    }

    /// The sysfs file through which BAR `bar` can be mapped (`resourceN`).
    pub fn resource_path(&self, bar: u8) -> PathBuf {
        self.path.join(format!("resource{bar}"))
    }

    /// Maps `len` bytes at `offset` of BAR `bar` (through `resourceN`), after checking the
    /// range against the BAR's size.
    pub fn map_bar(
        &self,
        bar: u8,
        offset: u64,
        len: u64,
        bar_size: u64,
    ) -> Result<Arc<MappedRegion>, VirtioPciError> {
        let path = self.resource_path(bar);
        let bad = || VirtioPciError::BadBarRange {
            bar,
            offset,
            len,
            size: bar_size,
        };
        if offset.checked_add(len).is_none_or(|end| end > bar_size) || len == 0 {
            return Err(bad());
        }
        if offset % 4096 != 0 {
            return Err(bad());
        }
        let len = usize::try_from(len).map_err(|_| bad())?;
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(io("open a BAR", &path))?;
        // SAFETY: `offset` is page aligned and `offset + len` lies inside the BAR (checked
        // above against the size in `resource`), so the mapping covers only device memory.
        let region =
            unsafe { MappedRegion::map_fd_at(std::os::fd::AsFd::as_fd(&f), offset, len, true) }
                .map_err(|e| VirtioPciError::MapBar(bar, e))?;
        Ok(Arc::new(region))
    }
}

/// Parses the six BAR lines of a sysfs `resource` file.
fn parse_resources(text: &str) -> Option<[(u64, u64); 6]> {
    let mut out = [(0u64, 0u64); 6];
    let mut lines = text.lines();
    for slot in &mut out {
        let line = lines.next()?;
        let mut f = line
            .split_whitespace()
            .map(|x| u64::from_str_radix(x.trim_start_matches("0x"), 16).ok());
        let (Some(Some(start)), Some(Some(end))) = (f.next(), f.next()) else {
            return None;
        };
        *slot = if start == 0 && end == 0 {
            (0, 0)
        } else {
            (start, end.checked_sub(start)?.checked_add(1)?)
        };
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_resources_reads_sizes_and_absent_bars() {
        let text = "0x00000000fe000000 0x00000000fe000fff 0x0000000000040200\n\
                    0x0000000000000000 0x0000000000000000 0x0000000000000000\n\
                    0x0000000000000000 0x0000000000000000 0x0000000000000000\n\
                    0x0000000000000000 0x0000000000000000 0x0000000000000000\n\
                    0x0000000800000000 0x00000008007fffff 0x000000000014220c\n\
                    0x0000000000000000 0x0000000000000000 0x0000000000000000\n\
                    0x0000000000000000 0x0000000000000000 0x0000000000000000\n";

        let r = parse_resources(text).unwrap();

        assert_eq!(r[0], (0xfe00_0000, 0x1000));
        assert_eq!(r[1], (0, 0));
        assert_eq!(r[4], (0x8_0000_0000, 0x80_0000));
    }

    #[test]
    fn parse_resources_rejects_short_or_inverted_files() {
        assert!(parse_resources("0x10 0x20 0x0\n").is_none());
        assert!(parse_resources(&"0x20 0x10 0x0\n".repeat(6)).is_none());
    }

    #[test]
    fn find_matches_vendor_and_device_in_a_fake_sysfs() {
        let dir = tempfile::tempdir().unwrap();
        for (bdf, dev) in [
            ("0000:00:02.0", "0x1af4\n0x1041"),
            ("0000:00:03.0", "0x1af4\n0x1065"),
        ] {
            let d = dir.path().join(bdf);
            std::fs::create_dir(&d).unwrap();
            let (v, id) = dev.split_once('\n').unwrap();
            std::fs::write(d.join("vendor"), format!("{v}\n")).unwrap();
            std::fs::write(d.join("device"), format!("{id}\n")).unwrap();
        }

        let found = PciDevice::find(dir.path(), 0x1af4, 0x1065, None).unwrap();

        assert_eq!(found.bdf(), "0000:00:03.0");
        assert!(found.driver().is_none());
        assert!(PciDevice::find(dir.path(), 0x1af4, 0x1099, None).is_err());
    }
}
