//! QEMU's `edu` test device (PCI 1234:11e8; QEMU's `docs/specs/edu.rst`): its ids, its BAR0
//! register map and its DMA engine. The VFIO end-to-end tests (`vfio/tests/edu_guest.rs`,
//! `broker/tests/vfio_edu_guest.rs`) drive it from inside a guest; edu has a 28-bit DMA
//! engine, which makes it a small stand-in for a real device with an address limit.

use std::time::{Duration, Instant};

use thiserror::Error;

use crate::device::{Region, VfioDevice, VfioError};
use crate::sysfs;

/// edu's PCI vendor id.
pub const VENDOR: u16 = 0x1234;
/// edu's PCI device id.
pub const DEVICE: u16 = 0x11e8;

/// BAR0: identification (`0xRRrr00ed`: major, minor revision, `0xed`).
pub const ID: u64 = 0x00;
/// BAR0: liveness check; reads back the bitwise negation of what was written.
pub const LIVENESS: u64 = 0x04;
/// BAR0: DMA source address.
pub const DMA_SRC: u64 = 0x80;
/// BAR0: DMA destination address.
pub const DMA_DST: u64 = 0x88;
/// BAR0: DMA transfer count in bytes.
pub const DMA_COUNT: u64 = 0x90;
/// BAR0: DMA command register.
pub const DMA_CMD: u64 = 0x98;
/// [`DMA_CMD`] bit: start a transfer; the device clears it when done.
pub const CMD_START: u64 = 1;
/// [`DMA_CMD`] bit: transfer from edu's buffer to RAM (else from RAM to the buffer).
pub const CMD_TO_RAM: u64 = 2;
/// edu's internal DMA buffer, as the engine addresses it.
pub const DMA_BUF: u64 = 0x40000;
/// Size of edu's internal DMA buffer.
pub const DMA_SIZE: u64 = 4096;

/// How long [`Bar0::dma`] waits for a transfer.
pub const DMA_TIMEOUT: Duration = Duration::from_secs(20);

/// The environment variable that makes a missing edu device an error for [`address_or_skip`].
pub const REQUIRE_DEVICES: &str = "BUFBROKER_REQUIRE_DEVICES";

/// Driving edu failed.
#[derive(Debug, Error)]
pub enum EduError {
    /// A register access or the device failed.
    #[error(transparent)]
    Vfio(#[from] VfioError),
    /// The DMA engine did not clear its start bit in time.
    #[error("edu DMA did not finish within {0:?}")]
    DmaTimeout(Duration),
    /// No edu device, and [`REQUIRE_DEVICES`] is set.
    #[error("no edu device (1234:11e8) and {REQUIRE_DEVICES} is set")]
    Missing,
}

/// The PCI address of the first edu device, if there is one.
pub fn find() -> Option<String> {
    sysfs::find_pci(VENDOR, DEVICE).into_iter().next()
}

/// For tests that need edu: its address; `None` (the test is skipped, which is said on
/// stderr) when there is none, unless [`REQUIRE_DEVICES`] is set, which makes that
/// [`EduError::Missing`].
pub fn address_or_skip() -> Result<Option<String>, EduError> {
    match find() {
        Some(address) => Ok(Some(address)),
        None if std::env::var_os(REQUIRE_DEVICES).is_some() => Err(EduError::Missing),
        None => {
            eprintln!("skipped: no edu device (1234:11e8)");
            Ok(None)
        }
    }
}

/// edu's BAR0 of an open device.
pub struct Bar0<'a> {
    dev: &'a VfioDevice,
    region: Region,
}

impl<'a> Bar0<'a> {
    /// BAR0 (region 0) of `dev`.
    pub fn new(dev: &'a VfioDevice) -> Result<Self, VfioError> {
        Ok(Bar0 {
            dev,
            region: dev.region(0)?,
        })
    }

    /// The 32-bit register at `offset`.
    pub fn read32(&self, offset: u64) -> Result<u32, VfioError> {
        self.read(offset).map(u32::from_le_bytes)
    }

    /// Writes the 32-bit register at `offset`.
    pub fn write32(&self, offset: u64, value: u32) -> Result<(), VfioError> {
        self.write(offset, &value.to_le_bytes())
    }

    /// The 64-bit register at `offset`.
    pub fn read64(&self, offset: u64) -> Result<u64, VfioError> {
        self.read(offset).map(u64::from_le_bytes)
    }

    /// Writes the 64-bit register at `offset`.
    pub fn write64(&self, offset: u64, value: u64) -> Result<(), VfioError> {
        self.write(offset, &value.to_le_bytes())
    }

    fn read<const N: usize>(&self, offset: u64) -> Result<[u8; N], VfioError> {
        let mut bytes = [0u8; N];
        self.dev.read_region(&self.region, offset, &mut bytes)?;
        Ok(bytes)
    }

    fn write(&self, offset: u64, bytes: &[u8]) -> Result<(), VfioError> {
        self.dev.write_region(&self.region, offset, bytes)
    }

    /// One DMA transfer of `count` bytes from `src` to `dst` (one of them [`DMA_BUF`],
    /// `to_ram` saying which); returns once the engine cleared its start bit (it is polled:
    /// edu signals completion only by an interrupt, which VFIO would need set up), failing
    /// after [`DMA_TIMEOUT`].
    pub fn dma(&self, src: u64, dst: u64, count: u64, to_ram: bool) -> Result<(), EduError> {
        self.write64(DMA_SRC, src)?;
        self.write64(DMA_DST, dst)?;
        self.write64(DMA_COUNT, count)?;
        let direction = if to_ram { CMD_TO_RAM } else { 0 };
        self.write64(DMA_CMD, CMD_START | direction)?;
        let start = Instant::now();
        while self.read64(DMA_CMD)? & CMD_START != 0 {
            if start.elapsed() >= DMA_TIMEOUT {
                return Err(EduError::DmaTimeout(DMA_TIMEOUT));
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        Ok(())
    }
}
