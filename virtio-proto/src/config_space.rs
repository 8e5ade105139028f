//! The virtio device's configuration space: fixed offsets, little-endian.
//!
//! ```text
//! offset  size  field
//!   0x00     2  min_version       lowest protocol version the device speaks
//!   0x02     2  max_version       highest protocol version the device speaks
//!   0x04     4  max_message_size  largest message (header included) on the request queue
//!   0x08     8  features          wire::Features bits the device offers
//!   0x10     8  shm_window_size   size of shared-memory region 0 in bytes (0: none)
//!   0x18     4  max_buffers       most buffers the driver's owner may hold (0: unlimited)
//!   0x1c     4  event_buffer_size smallest writable buffer to post on the event queue
//! ```
//!
//! The driver reads it before the first `Hello`; the same values come back in `HelloReply`.
//! The layout only grows: fields are never moved, new ones are appended.

use thiserror::Error;

use crate::wire::{
    EVENT_BUFFER_SIZE, Features, MAX_MESSAGE_SIZE, MAX_PROTOCOL_VERSION, MIN_PROTOCOL_VERSION,
};

/// Size of the configuration space in bytes.
pub const CONFIG_SPACE_SIZE: usize = 32;

/// The configuration space's fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConfigSpace {
    /// Lowest protocol version the device speaks.
    pub min_version: u16,
    /// Highest protocol version the device speaks.
    pub max_version: u16,
    /// Largest message on the request queue, header included.
    pub max_message_size: u32,
    /// Features the device offers.
    pub features: Features,
    /// Size of shared-memory region 0 in bytes; 0 when there is none.
    pub shm_window_size: u64,
    /// Most buffers this device's owner may hold; 0 means unlimited.
    pub max_buffers: u32,
    /// Smallest writable buffer the driver must post on the event queue.
    pub event_buffer_size: u32,
}

/// The configuration space bytes are too short.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[error("config space of {len} bytes is shorter than {CONFIG_SPACE_SIZE}")]
pub struct ConfigSpaceError {
    /// Bytes given.
    pub len: usize,
}

impl ConfigSpace {
    /// This crate's values, for a device with a window of `shm_window_size` bytes.
    pub fn new(features: Features, shm_window_size: u64, max_buffers: u32) -> Self {
        ConfigSpace {
            min_version: MIN_PROTOCOL_VERSION,
            max_version: MAX_PROTOCOL_VERSION,
            max_message_size: MAX_MESSAGE_SIZE as u32,
            features,
            shm_window_size,
            max_buffers,
            event_buffer_size: EVENT_BUFFER_SIZE as u32,
        }
    }

    /// The bytes, as the device exposes them.
    pub fn to_bytes(&self) -> [u8; CONFIG_SPACE_SIZE] {
        let mut b = [0u8; CONFIG_SPACE_SIZE];
        let fields: [(usize, &[u8]); 7] = [
            (0x00, &self.min_version.to_le_bytes()),
            (0x02, &self.max_version.to_le_bytes()),
            (0x04, &self.max_message_size.to_le_bytes()),
            (0x08, &self.features.bits().to_le_bytes()),
            (0x10, &self.shm_window_size.to_le_bytes()),
            (0x18, &self.max_buffers.to_le_bytes()),
            (0x1c, &self.event_buffer_size.to_le_bytes()),
        ];
        for (at, f) in fields {
            if let Some(dst) = b.get_mut(at..at + f.len()) {
                dst.copy_from_slice(f);
            }
        }
        b
    }

    /// Parses the first [`CONFIG_SPACE_SIZE`] bytes; later bytes (fields of newer devices)
    /// are ignored.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, ConfigSpaceError> {
        let b: &[u8; CONFIG_SPACE_SIZE] = bytes
            .get(..CONFIG_SPACE_SIZE)
            .and_then(|b| b.try_into().ok())
            .ok_or(ConfigSpaceError { len: bytes.len() })?;
        Ok(ConfigSpace {
            min_version: u16::from_le_bytes(field(b, 0x00)),
            max_version: u16::from_le_bytes(field(b, 0x02)),
            max_message_size: u32::from_le_bytes(field(b, 0x04)),
            features: Features::from_bits_retain(u64::from_le_bytes(field(b, 0x08))),
            shm_window_size: u64::from_le_bytes(field(b, 0x10)),
            max_buffers: u32::from_le_bytes(field(b, 0x18)),
            event_buffer_size: u32::from_le_bytes(field(b, 0x1c)),
        })
    }
}

/// The `N` bytes at `at` (all offsets are constants inside the array).
fn field<const N: usize>(b: &[u8; CONFIG_SPACE_SIZE], at: usize) -> [u8; N] {
    let mut v = [0u8; N];
    if let Some(s) = b.get(at..at + N) {
        v.copy_from_slice(s);
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_space_fields_sit_at_their_documented_offsets() {
        let cs = ConfigSpace {
            min_version: 0x0102,
            max_version: 0x0304,
            max_message_size: 0x0506_0708,
            features: Features::from_bits_retain(0x1112_1314_1516_1718),
            shm_window_size: 0x2122_2324_2526_2728,
            max_buffers: 0x3132_3334,
            event_buffer_size: 0x4142_4344,
        };

        let bytes = cs.to_bytes();

        let expected: [u8; CONFIG_SPACE_SIZE] = [
            0x02, 0x01, 0x04, 0x03, 0x08, 0x07, 0x06, 0x05, //
            0x18, 0x17, 0x16, 0x15, 0x14, 0x13, 0x12, 0x11, //
            0x28, 0x27, 0x26, 0x25, 0x24, 0x23, 0x22, 0x21, //
            0x34, 0x33, 0x32, 0x31, 0x44, 0x43, 0x42, 0x41,
        ];
        assert_eq!(bytes, expected);
        assert_eq!(ConfigSpace::from_bytes(&bytes), Ok(cs));
    }

    #[test]
    fn config_space_from_bytes_ignores_appended_fields() {
        let cs = ConfigSpace::new(Features::all(), 1 << 30, 128);
        let mut bytes = cs.to_bytes().to_vec();
        bytes.extend_from_slice(&[0xaa; 8]);

        assert_eq!(ConfigSpace::from_bytes(&bytes), Ok(cs));
    }

    #[test]
    fn config_space_from_short_bytes_fails() {
        let bytes = ConfigSpace::new(Features::empty(), 0, 0).to_bytes();

        assert_eq!(
            ConfigSpace::from_bytes(&bytes[..CONFIG_SPACE_SIZE - 1]),
            Err(ConfigSpaceError {
                len: CONFIG_SPACE_SIZE - 1
            })
        );
    }
}
