//! Pixel formats (DRM fourcc codes), format modifiers and their plane geometry.
//!
//! The geometry table follows the kernel's format table, `drivers/gpu/drm/drm_fourcc.c`
//! (`drm_format_info()`, Linux 6.12): number of planes, bytes per block (`cpp` /
//! `char_per_block`), block size and chroma subsampling (`hsub`, `vsub`). Fourcc values come
//! from the `drm-fourcc` crate, which mirrors `include/uapi/drm/drm_fourcc.h`.
//!
//! Tiled modifiers are described by their tile geometry as documented in
//! `include/uapi/drm/drm_fourcc.h`; a modifier not in [`ModifierInfo::lookup`]'s table has no
//! layout this crate can compute and is refused rather than guessed.

use std::fmt;
use std::str::FromStr;

use drm_fourcc::DrmFourcc;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use thiserror::Error;

/// Errors about formats and modifiers.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum FormatError {
    /// The fourcc is not in the geometry table.
    #[error("unknown pixel format {0}")]
    UnknownFourcc(Fourcc),
    /// A format name that no table entry carries.
    #[error("unknown pixel format name {0:?}")]
    UnknownFormatName(String),
    /// A modifier whose layout is not known.
    #[error("modifier {0} has no known layout")]
    UnknownModifier(Modifier),
    /// A modifier name or number that does not parse.
    #[error("cannot parse modifier {0:?}")]
    BadModifierName(String),
    /// A plane index beyond the format's planes.
    #[error("plane {plane} does not exist in {fourcc}")]
    NoSuchPlane {
        /// The format.
        fourcc: Fourcc,
        /// The plane asked for.
        plane: usize,
    },
}

/// A DRM fourcc pixel format code (`DRM_FORMAT_*`).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Fourcc(pub u32);

impl Fourcc {
    /// Builds a code from its four characters (`fourcc_code()` in `drm_fourcc.h`).
    pub const fn from_chars(c: [u8; 4]) -> Self {
        Fourcc(u32::from_le_bytes(c))
    }

    /// The four characters of the code, as the kernel prints them.
    pub fn chars(self) -> [u8; 4] {
        self.0.to_le_bytes()
    }

    /// The table entry for this format, or an error naming the code.
    pub fn info(self) -> Result<&'static FormatInfo, FormatError> {
        FormatInfo::lookup(self)
    }

    /// The canonical name (`NV12`) when the format is known.
    pub fn name(self) -> Option<&'static str> {
        FormatInfo::lookup(self).ok().map(|i| i.name)
    }
}

impl fmt::Display for Fourcc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(n) => f.write_str(n),
            None => {
                let printable = self
                    .chars()
                    .iter()
                    .all(|c| c.is_ascii_graphic() || *c == b' ');
                if printable {
                    let s: String = self.chars().iter().map(|&c| c as char).collect();
                    write!(f, "'{}' (0x{:08x})", s.trim_end(), self.0)
                } else {
                    write!(f, "0x{:08x}", self.0)
                }
            }
        }
    }
}

impl fmt::Debug for Fourcc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fourcc({self})")
    }
}

impl FromStr for Fourcc {
    type Err = FormatError;

    /// Accepts a table name (`NV12`, case-insensitive), or `0x` + hex for any code.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim();
        if let Some(hex) = t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
            return u32::from_str_radix(hex, 16)
                .map(Fourcc)
                .map_err(|_| FormatError::UnknownFormatName(s.to_owned()));
        }
        FORMATS
            .iter()
            .find(|i| i.name.eq_ignore_ascii_case(t))
            .map(|i| i.fourcc)
            .ok_or_else(|| FormatError::UnknownFormatName(s.to_owned()))
    }
}

impl Serialize for Fourcc {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            match self.name() {
                Some(n) => s.serialize_str(n),
                None => s.serialize_str(&format!("0x{:08x}", self.0)),
            }
        } else {
            s.serialize_u32(self.0)
        }
    }
}

impl<'de> Deserialize<'de> for Fourcc {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        if d.is_human_readable() {
            let s = String::deserialize(d)?;
            s.parse().map_err(serde::de::Error::custom)
        } else {
            u32::deserialize(d).map(Fourcc)
        }
    }
}

/// A DRM format modifier (`DRM_FORMAT_MOD_*`): the memory layout of an image.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Modifier(pub u64);

/// Vendor ids in the top byte of a modifier (`DRM_FORMAT_MOD_VENDOR_*`).
mod vendor {
    pub const NONE: u64 = 0;
    pub const INTEL: u64 = 0x01;
    pub const NVIDIA: u64 = 0x03;
    pub const SAMSUNG: u64 = 0x04;
    pub const VIVANTE: u64 = 0x06;
}

/// `fourcc_mod_code(vendor, val)` from `drm_fourcc.h`.
const fn mod_code(vendor: u64, val: u64) -> Modifier {
    Modifier((vendor << 56) | (val & 0x00ff_ffff_ffff_ffff))
}

impl Modifier {
    /// `DRM_FORMAT_MOD_LINEAR`: rows one after another.
    pub const LINEAR: Modifier = mod_code(vendor::NONE, 0);
    /// `DRM_FORMAT_MOD_INVALID`: "no modifier"; never a valid layout.
    pub const INVALID: Modifier = Modifier(0x00ff_ffff_ffff_ffff);
    /// `I915_FORMAT_MOD_X_TILED`: 512-byte by 8-row tiles.
    pub const I915_X_TILED: Modifier = mod_code(vendor::INTEL, 1);
    /// `I915_FORMAT_MOD_Y_TILED`: 128-byte by 32-row tiles.
    pub const I915_Y_TILED: Modifier = mod_code(vendor::INTEL, 2);
    /// `I915_FORMAT_MOD_4_TILED`: 128-byte by 32-row tiles (Tile4, DG2 and later).
    pub const I915_4_TILED: Modifier = mod_code(vendor::INTEL, 9);
    /// `DRM_FORMAT_MOD_SAMSUNG_64_32_TILE`: 64-byte by 32-row tiles (Exynos MFC NV12MT).
    pub const SAMSUNG_64_32_TILE: Modifier = mod_code(vendor::SAMSUNG, 1);
    /// `DRM_FORMAT_MOD_VIVANTE_TILED`: 4x4-pixel tiles.
    pub const VIVANTE_TILED: Modifier = mod_code(vendor::VIVANTE, 1);
    /// `DRM_FORMAT_MOD_VIVANTE_SUPER_TILED`: 64x64-pixel tiles.
    pub const VIVANTE_SUPER_TILED: Modifier = mod_code(vendor::VIVANTE, 2);

    /// `DRM_FORMAT_MOD_NVIDIA_16BX2_BLOCK(v)`: 64-byte by 8-row GOBs stacked `2^v` high.
    pub const fn nvidia_16bx2_block(log2_height: u8) -> Modifier {
        mod_code(vendor::NVIDIA, 0x10 | (log2_height as u64 & 0xf))
    }

    /// The vendor byte.
    pub fn vendor(self) -> u8 {
        (self.0 >> 56) as u8
    }

    /// The layout of this modifier, or an error when it is not known.
    pub fn info(self) -> Result<ModifierInfo, FormatError> {
        ModifierInfo::lookup(self)
    }
}

impl fmt::Display for Modifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match ModifierInfo::lookup(*self) {
            Ok(info) => f.write_str(info.name),
            Err(_) if *self == Modifier::INVALID => f.write_str("INVALID"),
            Err(_) => write!(f, "0x{:016x}", self.0),
        }
    }
}

impl fmt::Debug for Modifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Modifier({self})")
    }
}

impl FromStr for Modifier {
    type Err = FormatError;

    /// Accepts a table name (`LINEAR`, `I915_X_TILED`, `NVIDIA_16BX2_BLOCK(4)`), or a number
    /// (`0x0100000000000001`).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim();
        let bad = || FormatError::BadModifierName(s.to_owned());
        if let Some(hex) = t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
            return u64::from_str_radix(hex, 16)
                .map(Modifier)
                .map_err(|_| bad());
        }
        if t.bytes().all(|b| b.is_ascii_digit()) && !t.is_empty() {
            return t.parse::<u64>().map(Modifier).map_err(|_| bad());
        }
        let upper = t.to_ascii_uppercase();
        let upper = upper.strip_prefix("DRM_FORMAT_MOD_").unwrap_or(&upper);
        if let Some(arg) = upper
            .strip_prefix("NVIDIA_16BX2_BLOCK(")
            .and_then(|r| r.strip_suffix(')'))
        {
            let v: u8 = arg.trim().parse().map_err(|_| bad())?;
            return if v <= 5 {
                Ok(Modifier::nvidia_16bx2_block(v))
            } else {
                Err(bad())
            };
        }
        let named = [
            ("LINEAR", Modifier::LINEAR),
            ("INVALID", Modifier::INVALID),
            ("I915_X_TILED", Modifier::I915_X_TILED),
            ("I915_Y_TILED", Modifier::I915_Y_TILED),
            ("I915_4_TILED", Modifier::I915_4_TILED),
            ("SAMSUNG_64_32_TILE", Modifier::SAMSUNG_64_32_TILE),
            ("VIVANTE_TILED", Modifier::VIVANTE_TILED),
            ("VIVANTE_SUPER_TILED", Modifier::VIVANTE_SUPER_TILED),
        ];
        let upper = upper
            .strip_prefix("I915_FORMAT_MOD_")
            .map(|r| format!("I915_{r}"))
            .unwrap_or_else(|| upper.to_owned());
        named
            .iter()
            .find(|(n, _)| *n == upper)
            .map(|(_, m)| *m)
            .ok_or_else(bad)
    }
}

impl Serialize for Modifier {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.serialize_str(&self.to_string())
        } else {
            s.serialize_u64(self.0)
        }
    }
}

impl<'de> Deserialize<'de> for Modifier {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        if d.is_human_readable() {
            let s = String::deserialize(d)?;
            s.parse().map_err(serde::de::Error::custom)
        } else {
            u64::deserialize(d).map(Modifier)
        }
    }
}

/// How one plane of a format is sampled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlaneInfo {
    /// Bytes per block (the kernel's `char_per_block`; `cpp` for 1x1 blocks).
    pub bytes_per_block: u32,
    /// Block width in pixels of this plane (2 for packed 4:2:2 such as YUYV).
    pub block_width: u32,
    /// Horizontal subsampling of this plane relative to the image (1 for plane 0).
    pub hsub: u32,
    /// Vertical subsampling of this plane relative to the image (1 for plane 0).
    pub vsub: u32,
}

impl PlaneInfo {
    /// Width of this plane in pixels for an image `width` wide (rounded up, as the kernel's
    /// `drm_format_info_plane_width()`).
    pub fn width(&self, width: u32) -> u32 {
        width.div_ceil(self.hsub)
    }

    /// Height of this plane in rows for an image `height` high.
    pub fn height(&self, height: u32) -> u32 {
        height.div_ceil(self.vsub)
    }

    /// Bytes one row of this plane needs without padding, or `None` on overflow.
    pub fn min_row_bytes(&self, width: u32) -> Option<u64> {
        let blocks = u64::from(self.width(width)).div_ceil(u64::from(self.block_width));
        blocks.checked_mul(u64::from(self.bytes_per_block))
    }
}

/// A format's geometry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FormatInfo {
    /// The code.
    pub fourcc: Fourcc,
    /// Canonical name, as in `DRM_FORMAT_<name>`.
    pub name: &'static str,
    /// Planes in order.
    pub planes: &'static [PlaneInfo],
    /// Whether it is a YUV format.
    pub is_yuv: bool,
}

impl FormatInfo {
    /// The entry for `fourcc`, or [`FormatError::UnknownFourcc`].
    pub fn lookup(fourcc: Fourcc) -> Result<&'static FormatInfo, FormatError> {
        FORMATS
            .iter()
            .find(|i| i.fourcc == fourcc)
            .ok_or(FormatError::UnknownFourcc(fourcc))
    }

    /// Every known format, in table order.
    pub fn all() -> &'static [FormatInfo] {
        FORMATS
    }

    /// Number of planes.
    pub fn plane_count(&self) -> usize {
        self.planes.len()
    }
}

const fn p(bytes_per_block: u32, hsub: u32, vsub: u32) -> PlaneInfo {
    PlaneInfo {
        bytes_per_block,
        block_width: 1,
        hsub,
        vsub,
    }
}

const RGB1: &[PlaneInfo] = &[p(1, 1, 1)];
const RGB2: &[PlaneInfo] = &[p(2, 1, 1)];
const RGB4: &[PlaneInfo] = &[p(4, 1, 1)];
const RGB8: &[PlaneInfo] = &[p(8, 1, 1)];
const YUV420_SEMI: &[PlaneInfo] = &[p(1, 1, 1), p(2, 2, 2)];
const YUV422_SEMI: &[PlaneInfo] = &[p(1, 1, 1), p(2, 2, 1)];
const YUV444_SEMI: &[PlaneInfo] = &[p(1, 1, 1), p(2, 1, 1)];
const P010_PLANES: &[PlaneInfo] = &[p(2, 1, 1), p(4, 2, 2)];
const YUV420_PLANAR: &[PlaneInfo] = &[p(1, 1, 1), p(1, 2, 2), p(1, 2, 2)];
/// Packed 4:2:2: the kernel lists `cpp = 2, hsub = 2` on one plane; a 2-pixel macro-pixel
/// of 4 bytes is the same row size and rounds odd widths up to a whole macro-pixel.
const YUV422_PACKED: &[PlaneInfo] = &[PlaneInfo {
    bytes_per_block: 4,
    block_width: 2,
    hsub: 1,
    vsub: 1,
}];

const fn f(
    code: DrmFourcc,
    name: &'static str,
    planes: &'static [PlaneInfo],
    is_yuv: bool,
) -> FormatInfo {
    FormatInfo {
        fourcc: Fourcc(code as u32),
        name,
        planes,
        is_yuv,
    }
}

/// The geometry table. Each line matches `drm_format_info()` in `drm_fourcc.c` (Linux 6.12).
static FORMATS: &[FormatInfo] = &[
    f(DrmFourcc::Argb8888, "ARGB8888", RGB4, false),
    f(DrmFourcc::Xrgb8888, "XRGB8888", RGB4, false),
    f(DrmFourcc::Abgr8888, "ABGR8888", RGB4, false),
    f(DrmFourcc::Xbgr8888, "XBGR8888", RGB4, false),
    f(DrmFourcc::Rgba8888, "RGBA8888", RGB4, false),
    f(DrmFourcc::Bgra8888, "BGRA8888", RGB4, false),
    f(DrmFourcc::Rgb565, "RGB565", RGB2, false),
    f(DrmFourcc::Bgr888, "BGR888", &[p(3, 1, 1)], false),
    f(DrmFourcc::Rgb888, "RGB888", &[p(3, 1, 1)], false),
    f(DrmFourcc::Argb2101010, "ARGB2101010", RGB4, false),
    f(DrmFourcc::Xrgb2101010, "XRGB2101010", RGB4, false),
    f(DrmFourcc::Abgr2101010, "ABGR2101010", RGB4, false),
    f(DrmFourcc::Xbgr2101010, "XBGR2101010", RGB4, false),
    f(DrmFourcc::Abgr16161616f, "ABGR16161616F", RGB8, false),
    f(DrmFourcc::Xbgr16161616f, "XBGR16161616F", RGB8, false),
    f(DrmFourcc::R8, "R8", RGB1, false),
    f(DrmFourcc::R16, "R16", RGB2, false),
    f(DrmFourcc::Gr88, "GR88", RGB2, false),
    f(DrmFourcc::Nv12, "NV12", YUV420_SEMI, true),
    f(DrmFourcc::Nv21, "NV21", YUV420_SEMI, true),
    f(DrmFourcc::Nv16, "NV16", YUV422_SEMI, true),
    f(DrmFourcc::Nv61, "NV61", YUV422_SEMI, true),
    f(DrmFourcc::Nv24, "NV24", YUV444_SEMI, true),
    f(DrmFourcc::Nv42, "NV42", YUV444_SEMI, true),
    f(DrmFourcc::P010, "P010", P010_PLANES, true),
    f(DrmFourcc::Yuv420, "YUV420", YUV420_PLANAR, true),
    f(DrmFourcc::Yvu420, "YVU420", YUV420_PLANAR, true),
    f(DrmFourcc::Yuyv, "YUYV", YUV422_PACKED, true),
    f(DrmFourcc::Yvyu, "YVYU", YUV422_PACKED, true),
    f(DrmFourcc::Uyvy, "UYVY", YUV422_PACKED, true),
    f(DrmFourcc::Vyuy, "VYUY", YUV422_PACKED, true),
];

/// Tile geometry of a modifier, per plane.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TileUnit {
    /// Tiles `width` bytes wide and `height` rows high.
    Bytes {
        /// Tile width in bytes.
        width: u32,
        /// Tile height in rows.
        height: u32,
    },
    /// Tiles `width` by `height` pixels (Vivante).
    Pixels {
        /// Tile width in pixels.
        width: u32,
        /// Tile height in rows.
        height: u32,
    },
}

/// A modifier's layout rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModifierInfo {
    /// The modifier.
    pub modifier: Modifier,
    /// Display name.
    pub name: &'static str,
    /// Tile geometry; `Bytes { 1, 1 }` for linear.
    pub tile: TileUnit,
    /// Formats this layout is defined for; empty means any format.
    pub formats: &'static [Fourcc],
}

const NV12: Fourcc = Fourcc(DrmFourcc::Nv12 as u32);

impl ModifierInfo {
    /// The layout of `modifier`, or [`FormatError::UnknownModifier`].
    pub fn lookup(modifier: Modifier) -> Result<ModifierInfo, FormatError> {
        let bytes = |width, height| TileUnit::Bytes { width, height };
        let (name, tile, formats): (&'static str, TileUnit, &'static [Fourcc]) = match modifier {
            Modifier::LINEAR => ("LINEAR", bytes(1, 1), &[]),
            Modifier::I915_X_TILED => ("I915_X_TILED", bytes(512, 8), &[]),
            Modifier::I915_Y_TILED => ("I915_Y_TILED", bytes(128, 32), &[]),
            Modifier::I915_4_TILED => ("I915_4_TILED", bytes(128, 32), &[]),
            Modifier::SAMSUNG_64_32_TILE => ("SAMSUNG_64_32_TILE", bytes(64, 32), &[NV12]),
            Modifier::VIVANTE_TILED => (
                "VIVANTE_TILED",
                TileUnit::Pixels {
                    width: 4,
                    height: 4,
                },
                &[],
            ),
            Modifier::VIVANTE_SUPER_TILED => (
                "VIVANTE_SUPER_TILED",
                TileUnit::Pixels {
                    width: 64,
                    height: 64,
                },
                &[],
            ),
            m if m.vendor() == vendor::NVIDIA as u8
                && (0x10..=0x15).contains(&(m.0 & 0x00ff_ffff_ffff_ffff)) =>
            {
                const NAMES: [&str; 6] = [
                    "NVIDIA_16BX2_BLOCK(0)",
                    "NVIDIA_16BX2_BLOCK(1)",
                    "NVIDIA_16BX2_BLOCK(2)",
                    "NVIDIA_16BX2_BLOCK(3)",
                    "NVIDIA_16BX2_BLOCK(4)",
                    "NVIDIA_16BX2_BLOCK(5)",
                ];
                let v = (m.0 & 0xf) as usize;
                let name = NAMES.get(v).copied().unwrap_or("NVIDIA_16BX2_BLOCK");
                (name, bytes(64, 8 << v), &[])
            }
            other => return Err(FormatError::UnknownModifier(other)),
        };
        Ok(ModifierInfo {
            modifier,
            name,
            tile,
            formats,
        })
    }

    /// Whether this layout is defined for `fourcc`.
    pub fn supports(&self, fourcc: Fourcc) -> bool {
        self.formats.is_empty() || self.formats.contains(&fourcc)
    }

    /// Tile width in bytes and height in rows for a plane with `bytes_per_block`-byte pixels.
    pub fn tile_bytes(&self, plane: &PlaneInfo) -> (u64, u64) {
        match self.tile {
            TileUnit::Bytes { width, height } => (u64::from(width), u64::from(height)),
            TileUnit::Pixels { width, height } => (
                u64::from(width) * u64::from(plane.bytes_per_block) / u64::from(plane.block_width),
                u64::from(height),
            ),
        }
    }

    /// Whether this is the linear layout.
    pub fn is_linear(&self) -> bool {
        self.modifier == Modifier::LINEAR
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fourcc_values_match_drm_fourcc_h() {
        // fourcc_code('N','V','1','2') and fourcc_code('X','R','2','4') from drm_fourcc.h.
        assert_eq!(Fourcc::from_chars(*b"NV12"), "NV12".parse().unwrap());
        assert_eq!(Fourcc::from_chars(*b"XR24").0, 0x3432_5258);
        assert_eq!("xrgb8888".parse::<Fourcc>().unwrap().0, 0x3432_5258);
    }

    #[test]
    fn every_required_format_is_in_the_table() {
        for name in [
            "ARGB8888",
            "XRGB8888",
            "ABGR8888",
            "XBGR8888",
            "RGB565",
            "ARGB2101010",
            "XRGB2101010",
            "ABGR16161616F",
            "R8",
            "GR88",
            "NV12",
            "NV21",
            "NV16",
            "NV24",
            "P010",
            "YUV420",
            "YVU420",
            "YUYV",
            "UYVY",
        ] {
            let fourcc: Fourcc = name.parse().unwrap();
            assert_eq!(fourcc.info().unwrap().name, name);
        }
    }

    #[test]
    fn table_names_round_trip_and_codes_are_unique() {
        for (i, info) in FormatInfo::all().iter().enumerate() {
            assert_eq!(info.name.parse::<Fourcc>().unwrap(), info.fourcc);
            assert_eq!(info.fourcc.to_string(), info.name);
            for other in &FormatInfo::all()[i + 1..] {
                assert_ne!(info.fourcc, other.fourcc);
            }
        }
    }

    #[test]
    fn nv12_geometry_matches_kernel() {
        let nv12 = NV12.info().unwrap();
        assert_eq!(nv12.planes.len(), 2);
        assert_eq!(nv12.planes[0].min_row_bytes(1919), Some(1919));
        // Chroma: DIV_ROUND_UP(1919, 2) samples of 2 bytes.
        assert_eq!(nv12.planes[1].min_row_bytes(1919), Some(1920));
        assert_eq!(nv12.planes[1].height(1081), 541);
    }

    #[test]
    fn packed_yuv_rounds_to_whole_macropixels() {
        let yuyv: Fourcc = "YUYV".parse().unwrap();
        assert_eq!(
            yuyv.info().unwrap().planes[0].min_row_bytes(1920),
            Some(3840)
        );
        assert_eq!(yuyv.info().unwrap().planes[0].min_row_bytes(3), Some(8));
    }

    #[test]
    fn unknown_fourcc_is_an_error_naming_it() {
        let err = Fourcc::from_chars(*b"ZZZZ").info().unwrap_err();
        assert_eq!(err.to_string(), "unknown pixel format 'ZZZZ' (0x5a5a5a5a)");
    }

    #[test]
    fn modifier_names_parse_and_print() {
        assert_eq!("LINEAR".parse::<Modifier>().unwrap(), Modifier::LINEAR);
        assert_eq!(
            "I915_FORMAT_MOD_X_TILED".parse::<Modifier>().unwrap(),
            Modifier::I915_X_TILED
        );
        assert_eq!(Modifier::I915_X_TILED.0, 0x0100_0000_0000_0001);
        let nv = "NVIDIA_16BX2_BLOCK(4)".parse::<Modifier>().unwrap();
        assert_eq!(nv.0, 0x0300_0000_0000_0014);
        assert_eq!(nv.to_string(), "NVIDIA_16BX2_BLOCK(4)");
        assert_eq!(
            Modifier(0x0200_0000_0000_0123).to_string(),
            "0x0200000000000123"
        );
        assert!(Modifier(0x0200_0000_0000_0123).info().is_err());
        assert!("NVIDIA_16BX2_BLOCK(9)".parse::<Modifier>().is_err());
    }
}
