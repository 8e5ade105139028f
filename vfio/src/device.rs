//! Opening a VFIO device the legacy way: container (`/dev/vfio/vfio`, type1 IOMMU), group
//! (`/dev/vfio/N`), device fd; reading its PCI config space and BARs; asking the IOMMU.

use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use thiserror::Error;
use vfio_bindings::bindings::vfio::{
    VFIO_API_VERSION, VFIO_DEVICE_FLAGS_PCI, VFIO_DMA_MAP_FLAG_READ, VFIO_DMA_MAP_FLAG_WRITE,
    VFIO_GROUP_FLAGS_VIABLE, VFIO_PCI_CONFIG_REGION_INDEX, VFIO_TYPE1_IOMMU, VFIO_TYPE1v2_IOMMU,
    vfio_device_info, vfio_group_status, vfio_iommu_type1_dma_map, vfio_iommu_type1_dma_unmap,
    vfio_region_info,
};

use crate::info::{DeviceInfo, InfoError, IommuInfo, PciIds, TYPE1_INFO_SIZE, parse_type1_info};
use crate::sys;

/// Errors opening or talking to a VFIO device.
#[derive(Debug, Error)]
pub enum VfioError {
    /// A file under `/dev/vfio` or `/sys` could not be opened or read.
    #[error("cannot access {0}")]
    Access(PathBuf, #[source] io::Error),
    /// The device has no IOMMU group (no IOMMU, or not a PCI device).
    #[error("device {0} has no IOMMU group (is the IOMMU enabled?)")]
    NoGroup(String),
    /// The kernel's VFIO API version is not the one this crate speaks.
    #[error("VFIO API version {0}, expected {VFIO_API_VERSION}")]
    ApiVersion(i32),
    /// The container offers no type1 IOMMU.
    #[error("the VFIO container offers no type1 IOMMU")]
    NoType1,
    /// Some device of the group is bound to a host driver.
    #[error(
        "IOMMU group {0} is not viable: bind every device of the group to vfio-pci (or no driver)"
    )]
    NotViable(u32),
    /// An ioctl failed.
    #[error("{what} failed")]
    Ioctl {
        /// Which ioctl (and on what).
        what: String,
        /// The kernel's error.
        #[source]
        source: io::Error,
    },
    /// The device is not a PCI device.
    #[error("device {0} is not a vfio-pci device")]
    NotPci(String),
    /// Reading or writing a region failed.
    #[error("{what} of region {region} at {offset:#x} failed")]
    Region {
        /// `read` or `write`.
        what: &'static str,
        /// Region index.
        region: u32,
        /// Offset inside the region.
        offset: u64,
        /// The kernel's error.
        #[source]
        source: io::Error,
    },
    /// An access would leave its region.
    #[error("access of {len} bytes at {offset:#x} leaves region {region} ({size:#x} bytes)")]
    OutOfRegion {
        /// Region index.
        region: u32,
        /// Offset inside the region.
        offset: u64,
        /// Bytes accessed.
        len: usize,
        /// Region size.
        size: u64,
    },
    /// The kernel's answer could not be parsed.
    #[error("bad answer from the kernel")]
    Info(#[from] InfoError),
}

fn ioctl_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> VfioError {
    let what = what.into();
    move |source| VfioError::Ioctl { what, source }
}

/// A VFIO container with a type1 IOMMU: the address space that devices of its groups DMA in.
///
/// It holds its groups' fds: closing the last group would tear the IOMMU down under live
/// [`DmaMapping`](crate::DmaMapping)s, which share the container through an `Arc`.
#[derive(Debug)]
pub struct Container {
    // Field order is drop order: the groups leave the container before it closes.
    groups: Vec<OwnedFd>,
    fd: OwnedFd,
}

impl Container {
    /// Opens `/dev/vfio/vfio` and checks the API version and type1 support.
    fn open() -> Result<Container, VfioError> {
        let path = Path::new("/dev/vfio/vfio");
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(|e| VfioError::Access(path.into(), e))?;
        let c = Container {
            groups: Vec::new(),
            fd: file.into(),
        };
        let v = sys::ioctl_int(c.fd.as_fd(), sys::VFIO_GET_API_VERSION, 0)
            .map_err(ioctl_err("VFIO_GET_API_VERSION"))?;
        if v != VFIO_API_VERSION as i32 {
            return Err(VfioError::ApiVersion(v));
        }
        Ok(c)
    }

    /// Selects the type1 IOMMU (v2 where offered). Needs a group attached first.
    fn set_type1(&self) -> Result<(), VfioError> {
        let has = |ext: u32| {
            sys::ioctl_int(self.fd.as_fd(), sys::VFIO_CHECK_EXTENSION, ext.into()).unwrap_or(0) > 0
        };
        let kind = if has(VFIO_TYPE1v2_IOMMU) {
            VFIO_TYPE1v2_IOMMU
        } else if has(VFIO_TYPE1_IOMMU) {
            VFIO_TYPE1_IOMMU
        } else {
            return Err(VfioError::NoType1);
        };
        sys::ioctl_int(self.fd.as_fd(), sys::VFIO_SET_IOMMU, kind.into())
            .map_err(ioctl_err("VFIO_SET_IOMMU"))?;
        Ok(())
    }

    /// The IOMMU's page sizes, usable IOVA ranges and remaining DMA mappings
    /// (`VFIO_IOMMU_GET_INFO` with its capability chain).
    pub fn iommu_info(&self) -> Result<IommuInfo, VfioError> {
        // First call with the bare struct: the kernel writes the size it needs into argsz.
        let mut argsz = TYPE1_INFO_SIZE as u32;
        for _ in 0..2 {
            // u64 words keep the buffer 8-byte aligned, as the struct needs.
            let mut words = vec![0u64; (argsz as usize).div_ceil(8)];
            let bytes_len = words.len() * 8;
            if let Some(first) = words.first_mut() {
                *first = u64::from(argsz);
            }
            // SAFETY: VFIO_IOMMU_GET_INFO reads argsz from the buffer and writes at most
            // argsz bytes into it; the buffer holds `bytes_len >= argsz` bytes and outlives
            // the call.
            unsafe {
                sys::ioctl_ptr(
                    self.fd.as_fd(),
                    sys::VFIO_IOMMU_GET_INFO,
                    words.as_mut_ptr(),
                )
            }
            .map_err(ioctl_err("VFIO_IOMMU_GET_INFO"))?;
            let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
            let needed = bytes
                .get(..4)
                .and_then(|b| b.try_into().ok())
                .map_or(0, u32::from_le_bytes);
            if needed as usize <= bytes_len {
                let valid = bytes.get(..needed as usize).unwrap_or(&bytes);
                return Ok(parse_type1_info(valid)?);
            }
            argsz = needed;
        }
        Err(VfioError::Ioctl {
            what: "VFIO_IOMMU_GET_INFO (argsz kept growing)".into(),
            source: io::Error::from(io::ErrorKind::InvalidData),
        })
    }

    /// Maps `size` bytes at `vaddr` to `iova`, readable and writable by devices.
    ///
    /// # Safety
    ///
    /// `vaddr..vaddr+size` must be a mapping of this process that stays mapped until
    /// [`unmap_dma`](Self::unmap_dma) of the same range returns: the kernel pins the pages
    /// and devices may access them at any time until then.
    pub(crate) unsafe fn map_dma(&self, vaddr: *mut u8, iova: u64, size: u64) -> io::Result<()> {
        let mut map = vfio_iommu_type1_dma_map {
            argsz: std::mem::size_of::<vfio_iommu_type1_dma_map>() as u32,
            flags: VFIO_DMA_MAP_FLAG_READ | VFIO_DMA_MAP_FLAG_WRITE,
            vaddr: vaddr as u64,
            iova,
            size,
        };
        // SAFETY: MAP_DMA reads exactly this struct (argsz = its size) during the call; the
        // caller keeps the memory it names mapped until the matching unmap.
        unsafe { sys::ioctl_ptr(self.fd.as_fd(), sys::VFIO_IOMMU_MAP_DMA, &mut map) }?;
        Ok(())
    }

    /// Removes the mapping of `iova..iova+size`.
    pub(crate) fn unmap_dma(&self, iova: u64, size: u64) -> io::Result<()> {
        let mut unmap = vfio_iommu_type1_dma_unmap {
            argsz: std::mem::size_of::<vfio_iommu_type1_dma_unmap>() as u32,
            flags: 0,
            iova,
            size,
            ..Default::default()
        };
        // SAFETY: UNMAP_DMA reads and writes back (size unmapped) this struct only, argsz
        // bytes, with no dirty bitmap requested (flags 0).
        unsafe { sys::ioctl_ptr(self.fd.as_fd(), sys::VFIO_IOMMU_UNMAP_DMA, &mut unmap) }?;
        Ok(())
    }
}

impl AsFd for Container {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// One region of the device (config space, a BAR): where it lives in the device fd.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Region {
    /// Region index (`VFIO_PCI_BAR0_REGION_INDEX` = 0 … `VFIO_PCI_CONFIG_REGION_INDEX` = 7).
    pub index: u32,
    /// `VFIO_REGION_INFO_FLAG_*`.
    pub flags: u32,
    /// Size in bytes.
    pub size: u64,
    /// Offset of the region in the device fd.
    pub offset: u64,
}

/// An opened VFIO PCI device with its group and container.
#[derive(Debug)]
pub struct VfioDevice {
    name: String,
    device: File,
    group: u32,
    // Dropped after the device fd; the container (with the group) lives on while DMA
    // mappings use it.
    container: Arc<Container>,
    config: Region,
}

impl VfioDevice {
    /// Opens the device with sysfs name `name` (`0000:00:03.0`), which must be bound to
    /// vfio-pci (see [`crate::sysfs::bind_vfio_pci`]), in a new container with a type1
    /// IOMMU.
    pub fn open(name: &str) -> Result<VfioDevice, VfioError> {
        let group = crate::sysfs::iommu_group(name)?;
        let mut container = Container::open()?;
        let group_path = PathBuf::from(format!("/dev/vfio/{group}"));
        let group_fd: OwnedFd = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&group_path)
            .map_err(|e| VfioError::Access(group_path.clone(), e))?
            .into();
        let mut status = vfio_group_status {
            argsz: std::mem::size_of::<vfio_group_status>() as u32,
            flags: 0,
        };
        // SAFETY: GROUP_GET_STATUS writes this 8-byte struct only.
        unsafe { sys::ioctl_ptr(group_fd.as_fd(), sys::VFIO_GROUP_GET_STATUS, &mut status) }
            .map_err(ioctl_err(format!("VFIO_GROUP_GET_STATUS on group {group}")))?;
        if status.flags & VFIO_GROUP_FLAGS_VIABLE == 0 {
            return Err(VfioError::NotViable(group));
        }
        let mut cfd: i32 = std::os::fd::AsRawFd::as_raw_fd(&container.fd);
        // SAFETY: GROUP_SET_CONTAINER reads one int (the container fd) from the pointer.
        unsafe { sys::ioctl_ptr(group_fd.as_fd(), sys::VFIO_GROUP_SET_CONTAINER, &mut cfd) }
            .map_err(ioctl_err(format!(
                "VFIO_GROUP_SET_CONTAINER on group {group}"
            )))?;
        container.set_type1()?;
        let cname = CString::new(name).map_err(|_| VfioError::NotPci(name.to_owned()))?;
        // SAFETY: GROUP_GET_DEVICE_FD reads the NUL-terminated name, which lives until the
        // call returns; the result is a new descriptor or an error.
        let raw = unsafe {
            sys::ioctl_ptr(
                group_fd.as_fd(),
                sys::VFIO_GROUP_GET_DEVICE_FD,
                cname.as_ptr().cast_mut(),
            )
        }
        .map_err(ioctl_err(format!("VFIO_GROUP_GET_DEVICE_FD {name}")))?;
        // SAFETY: the ioctl returned a new descriptor that nothing else owns.
        let device = unsafe { File::from_raw_fd(raw) };
        container.groups.push(group_fd);
        let mut dinfo = vfio_device_info {
            argsz: std::mem::size_of::<vfio_device_info>() as u32,
            ..Default::default()
        };
        // SAFETY: DEVICE_GET_INFO writes at most argsz (the struct's size) bytes.
        unsafe { sys::ioctl_ptr(device.as_fd(), sys::VFIO_DEVICE_GET_INFO, &mut dinfo) }
            .map_err(ioctl_err(format!("VFIO_DEVICE_GET_INFO {name}")))?;
        if dinfo.flags & VFIO_DEVICE_FLAGS_PCI == 0 {
            return Err(VfioError::NotPci(name.to_owned()));
        }
        let config = region_info(&device, VFIO_PCI_CONFIG_REGION_INDEX)?;
        Ok(VfioDevice {
            name: name.to_owned(),
            device,
            group,
            container: Arc::new(container),
            config,
        })
    }

    /// The sysfs name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The IOMMU group number.
    pub fn group(&self) -> u32 {
        self.group
    }

    /// The container (shared with DMA mappings, which keep it alive).
    pub fn container(&self) -> &Arc<Container> {
        &self.container
    }

    /// Where region `index` lives.
    pub fn region(&self, index: u32) -> Result<Region, VfioError> {
        region_info(&self.device, index)
    }

    /// Reads `buf.len()` bytes of region `region` at `offset`.
    pub fn read_region(
        &self,
        region: &Region,
        offset: u64,
        buf: &mut [u8],
    ) -> Result<(), VfioError> {
        check_bounds(region, offset, buf.len())?;
        self.device
            .read_exact_at(buf, region.offset + offset)
            .map_err(|source| VfioError::Region {
                what: "read",
                region: region.index,
                offset,
                source,
            })
    }

    /// Writes `buf` to region `region` at `offset`.
    pub fn write_region(&self, region: &Region, offset: u64, buf: &[u8]) -> Result<(), VfioError> {
        check_bounds(region, offset, buf.len())?;
        self.device
            .write_all_at(buf, region.offset + offset)
            .map_err(|source| VfioError::Region {
                what: "write",
                region: region.index,
                offset,
                source,
            })
    }

    /// The PCI ids from config space.
    pub fn pci_ids(&self) -> Result<PciIds, VfioError> {
        let mut header = [0u8; 0x30];
        self.read_region(&self.config, 0, &mut header)?;
        Ok(PciIds::from_config(&header)?)
    }

    /// Sets Memory Space Enable and Bus Master Enable in the PCI command register, so the
    /// device answers on its BARs and may start DMA.
    pub fn enable_bus_master(&self) -> Result<(), VfioError> {
        let mut cmd = [0u8; 2];
        self.read_region(&self.config, 0x04, &mut cmd)?;
        let v = u16::from_le_bytes(cmd) | 0x2 | 0x4;
        self.write_region(&self.config, 0x04, &v.to_le_bytes())
    }

    /// Everything constraint derivation needs: ids and the container's IOMMU facts.
    pub fn info(&self) -> Result<DeviceInfo, VfioError> {
        Ok(DeviceInfo {
            name: self.name.clone(),
            ids: self.pci_ids()?,
            iommu: self.container.iommu_info()?,
        })
    }
}

fn check_bounds(region: &Region, offset: u64, len: usize) -> Result<(), VfioError> {
    let end = offset.checked_add(len as u64);
    if end.is_none_or(|e| e > region.size) {
        return Err(VfioError::OutOfRegion {
            region: region.index,
            offset,
            len,
            size: region.size,
        });
    }
    Ok(())
}

fn region_info(device: &File, index: u32) -> Result<Region, VfioError> {
    let mut info = vfio_region_info {
        argsz: std::mem::size_of::<vfio_region_info>() as u32,
        index,
        ..Default::default()
    };
    // SAFETY: DEVICE_GET_REGION_INFO writes at most argsz (the struct's size) bytes; a
    // capability chain that does not fit is only announced in argsz, never written.
    unsafe { sys::ioctl_ptr(device.as_fd(), sys::VFIO_DEVICE_GET_REGION_INFO, &mut info) }
        .map_err(ioctl_err(format!("VFIO_DEVICE_GET_REGION_INFO {index}")))?;
    Ok(Region {
        index,
        flags: info.flags,
        size: info.size,
        offset: info.offset,
    })
}
