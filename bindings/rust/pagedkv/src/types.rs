//! Typed enums of the C API ([`DType`], [`CacheFormat`], [`DeviceType`], [`Tier`], ...),
//! [`Device`] and [`CacheFlags`].
//!
//! Every enum converts into its `sys` newtype and `u32` with `From`, and back with `TryFrom`
//! (an unknown value is a [`Status::InvalidArgument`](crate::Status::InvalidArgument) error).

use std::fmt;
use std::ops::{BitOr, BitOrAssign};

use crate::error::{Error, Result, static_str};
use crate::sys;

/// Defines a Rust enum over a `sys` newtype enum, with the conversions both ways.
macro_rules! c_enum {
    (
        $(#[$meta:meta])*
        pub enum $name:ident: $raw:ident {
            $( $(#[$vmeta:meta])* $variant:ident = $c:ident, )+
        }
    ) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        #[non_exhaustive]
        pub enum $name {
            $( $(#[$vmeta])* $variant, )+
        }

        impl $name {
            /// Every value, in the order of the C enum.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The C value.
            pub const fn raw(self) -> sys::$raw {
                match self {
                    $( $name::$variant => sys::$raw::$c, )+
                }
            }
        }

        impl From<$name> for sys::$raw {
            fn from(value: $name) -> Self {
                value.raw()
            }
        }

        impl From<$name> for u32 {
            fn from(value: $name) -> Self {
                value.raw().0
            }
        }

        impl TryFrom<sys::$raw> for $name {
            type Error = Error;

            fn try_from(raw: sys::$raw) -> Result<Self> {
                $name::ALL.iter().copied().find(|v| v.raw() == raw).ok_or_else(|| {
                    Error::invalid(format!(
                        concat!("{} is not a known ", stringify!($raw), " value"),
                        raw.0
                    ))
                })
            }
        }

        impl TryFrom<u32> for $name {
            type Error = Error;

            fn try_from(raw: u32) -> Result<Self> {
                $name::try_from(sys::$raw(raw))
            }
        }
    };
}

c_enum! {
    /// Element type of a tensor (`pkv_dtype`).
    ///
    /// Host data of the 16-bit float types is passed as `u16` slices with the dtype named
    /// explicitly, FP8 data as `u8` slices.
    pub enum DType: pkv_dtype {
        /// IEEE float32.
        F32 = PKV_DTYPE_F32,
        /// IEEE float16.
        F16 = PKV_DTYPE_F16,
        /// bfloat16 (the upper half of a float32).
        BF16 = PKV_DTYPE_BF16,
        /// OCP FP8 e4m3fn: max 448, no infinities.
        FP8E4M3 = PKV_DTYPE_FP8_E4M3,
        /// OCP FP8 e5m2: max 57344.
        FP8E5M2 = PKV_DTYPE_FP8_E5M2,
        /// Signed 8-bit integer.
        I8 = PKV_DTYPE_INT8,
        /// Unsigned 8-bit integer.
        U8 = PKV_DTYPE_UINT8,
        /// Signed 32-bit integer.
        I32 = PKV_DTYPE_INT32,
        /// Signed 64-bit integer.
        I64 = PKV_DTYPE_INT64,
    }
}

impl DType {
    /// Size of one element in bits, from the library (`pkv_dtype_size_bits`).
    pub fn size_bits(self) -> usize {
        // SAFETY: a pure function of its argument.
        unsafe { sys::pkv_dtype_size_bits(self.raw()) }
    }

    /// Size of one element in bytes.
    pub fn size_bytes(self) -> usize {
        self.size_bits() / 8
    }

    /// The library's lower-case name (`"bf16"`, `"fp8_e4m3"`).
    pub fn name(self) -> &'static str {
        // SAFETY: returns static, NUL-terminated text for any value.
        unsafe { static_str(sys::pkv_dtype_name(self.raw())) }
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

c_enum! {
    /// Kind of memory (`pkv_device_type`; the values are DLPack's `DLDeviceType` codes).
    pub enum DeviceType: pkv_device_type {
        /// Host memory.
        Cpu = PKV_DEVICE_CPU,
        /// CUDA device memory.
        Cuda = PKV_DEVICE_CUDA,
        /// Pinned host memory; the ops treat it as CPU memory.
        CudaHost = PKV_DEVICE_CUDA_HOST,
    }
}

/// Where memory lives: a [`DeviceType`] and, for CUDA, the device ordinal (`pkv_device`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Device {
    /// The kind of memory.
    pub device_type: DeviceType,
    /// CUDA ordinal; 0 for the CPU.
    pub id: i32,
}

impl Device {
    /// Host memory.
    pub const CPU: Device = Device { device_type: DeviceType::Cpu, id: 0 };

    /// CUDA device `id`.
    pub const fn cuda(id: i32) -> Device {
        Device { device_type: DeviceType::Cuda, id }
    }

    /// Host memory (CPU or pinned), which the CPU backend runs on.
    pub const fn is_host(self) -> bool {
        matches!(self.device_type, DeviceType::Cpu | DeviceType::CudaHost)
    }

    /// The C value.
    pub const fn raw(self) -> sys::pkv_device {
        sys::pkv_device { type_: self.device_type.raw(), id: self.id }
    }
}

impl Default for Device {
    /// [`Device::CPU`].
    fn default() -> Self {
        Device::CPU
    }
}

impl From<Device> for sys::pkv_device {
    fn from(device: Device) -> Self {
        device.raw()
    }
}

impl TryFrom<sys::pkv_device> for Device {
    type Error = Error;

    fn try_from(raw: sys::pkv_device) -> Result<Self> {
        Ok(Device { device_type: DeviceType::try_from(raw.type_)?, id: raw.id })
    }
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.device_type {
            DeviceType::Cpu => f.write_str("cpu"),
            DeviceType::Cuda => write!(f, "cuda:{}", self.id),
            DeviceType::CudaHost => f.write_str("cuda_host"),
        }
    }
}

c_enum! {
    /// How one cache element is encoded (`pkv_cache_format`). The header documents the math
    /// and `docs/formats.md` the byte layouts.
    pub enum CacheFormat: pkv_cache_format {
        /// Plain float32.
        F32 = PKV_CACHE_FORMAT_F32,
        /// Plain float16.
        F16 = PKV_CACHE_FORMAT_F16,
        /// Plain bfloat16.
        BF16 = PKV_CACHE_FORMAT_BF16,
        /// FP8 e4m3 with per-tensor or per-head float32 scales: `q = sat_finite_rne(x / scale)`.
        FP8E4M3 = PKV_CACHE_FORMAT_FP8_E4M3,
        /// FP8 e5m2 with per-tensor or per-head float32 scales.
        FP8E5M2 = PKV_CACHE_FORMAT_FP8_E5M2,
        /// INT8 with a float32 scale per token and head (in the scale planes).
        Int8PerTokenHead = PKV_CACHE_FORMAT_INT8_PER_TOKEN_HEAD,
        /// FP8 e4m3 with a float32 scale per token and head.
        FP8PerTokenHead = PKV_CACHE_FORMAT_FP8_PER_TOKEN_HEAD,
        /// INT4 per token and head after a randomized Hadamard rotation (vLLM-compatible).
        Int4PerTokenHead = PKV_CACHE_FORMAT_INT4_PER_TOKEN_HEAD,
        /// INT2 per token and head after a Hadamard rotation (Lloyd-Max codes).
        Int2PerTokenHead = PKV_CACHE_FORMAT_INT2_PER_TOKEN_HEAD,
        /// DeepSeek sparse-MLA 656-byte entries (vLLM `fp8_ds_mla`), written by
        /// [`CacheView::write_mla`](crate::CacheView::write_mla).
        FP8DsMla = PKV_CACHE_FORMAT_FP8_DS_MLA,
    }
}

impl CacheFormat {
    /// Bytes of one head row of `head_size` elements (4 per element for F32, 1 for FP8,
    /// `head_size / 2` for INT4, 656 for FP8_DS_MLA, ...), rounded up.
    pub const fn row_bytes(self, head_size: i64) -> i64 {
        match self {
            CacheFormat::F32 => head_size * 4,
            CacheFormat::F16 | CacheFormat::BF16 => head_size * 2,
            CacheFormat::FP8E4M3
            | CacheFormat::FP8E5M2
            | CacheFormat::Int8PerTokenHead
            | CacheFormat::FP8PerTokenHead => head_size,
            CacheFormat::Int4PerTokenHead => (head_size + 1) / 2,
            CacheFormat::Int2PerTokenHead => (head_size + 3) / 4,
            CacheFormat::FP8DsMla => 656,
        }
    }

    /// The formats that keep a float32 scale per token and head in scale planes.
    pub const fn has_scale_planes(self) -> bool {
        matches!(
            self,
            CacheFormat::Int8PerTokenHead
                | CacheFormat::FP8PerTokenHead
                | CacheFormat::Int4PerTokenHead
                | CacheFormat::Int2PerTokenHead
        )
    }

    /// The FP8 formats whose scales are per tensor or per head ([`ScaleMode`]).
    pub const fn has_scales(self) -> bool {
        matches!(self, CacheFormat::FP8E4M3 | CacheFormat::FP8E5M2)
    }
}

c_enum! {
    /// Granularity of the scales of the FP8 formats (`pkv_scale_mode`).
    pub enum ScaleMode: pkv_scale_mode {
        /// One float32 scale for all of K (and one for V).
        PerTensor = PKV_SCALE_PER_TENSOR,
        /// `num_heads` float32 scales, indexed by KV head.
        PerHead = PKV_SCALE_PER_HEAD,
    }
}

impl Default for ScaleMode {
    /// [`ScaleMode::PerTensor`].
    fn default() -> Self {
        ScaleMode::PerTensor
    }
}

c_enum! {
    /// Head layout of a block (`pkv_head_layout`).
    pub enum HeadLayout: pkv_head_layout {
        /// `[block_size, num_heads, head_size]` (the default).
        Nhd = PKV_HEAD_LAYOUT_NHD,
        /// `[num_heads, block_size, head_size]`.
        Hnd = PKV_HEAD_LAYOUT_HND,
    }
}

impl Default for HeadLayout {
    /// [`HeadLayout::Nhd`].
    fn default() -> Self {
        HeadLayout::Nhd
    }
}

c_enum! {
    /// Where a pool block lives (`pkv_tier`).
    pub enum Tier: pkv_tier {
        /// The pool's device (GPU memory, or host memory for a CPU pool).
        Device = PKV_TIER_DEVICE,
        /// The pool's pinned host tier, for offload.
        Host = PKV_TIER_HOST,
    }
}

c_enum! {
    /// Order of blocks in a transfer buffer (`pkv_block_order`).
    pub enum BlockOrder: pkv_block_order {
        /// `[n][bytes_per_block]`: a block's layers together.
        BlockMajor = PKV_BLOCK_ORDER_BLOCK_MAJOR,
        /// `[layer][n][layer bytes per block]`.
        LayerMajor = PKV_BLOCK_ORDER_LAYER_MAJOR,
    }
}

/// Flags of a cache view (`pkv_cache_view::flags`).
///
/// ```
/// use pagedkv::CacheFlags;
/// let flags = CacheFlags::ROTATED_DOMAIN | CacheFlags::ROPE_F16;
/// assert!(flags.contains(CacheFlags::ROPE_F16));
/// assert_eq!(flags.bits(), 3);
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct CacheFlags(u32);

impl CacheFlags {
    /// No flag.
    pub const NONE: CacheFlags = CacheFlags(0);
    /// Gathers of the rotated formats (INT4, INT2) return the rotated domain
    /// (`PKV_CACHE_VIEW_ROTATED_DOMAIN`).
    pub const ROTATED_DOMAIN: CacheFlags = CacheFlags(sys::PKV_CACHE_VIEW_ROTATED_DOMAIN);
    /// FP8_DS_MLA entries keep float16 RoPE values instead of bfloat16
    /// (`PKV_CACHE_VIEW_ROPE_F16`).
    pub const ROPE_F16: CacheFlags = CacheFlags(sys::PKV_CACHE_VIEW_ROPE_F16);

    /// Flags from bits (unknown bits are kept; the library rejects them).
    pub const fn from_bits(bits: u32) -> Self {
        CacheFlags(bits)
    }

    /// The bits.
    pub const fn bits(self) -> u32 {
        self.0
    }

    /// Whether every flag of `other` is set.
    pub const fn contains(self, other: CacheFlags) -> bool {
        self.0 & other.0 == other.0
    }
}

impl BitOr for CacheFlags {
    type Output = CacheFlags;

    fn bitor(self, rhs: CacheFlags) -> CacheFlags {
        CacheFlags(self.0 | rhs.0)
    }
}

impl BitOrAssign for CacheFlags {
    fn bitor_assign(&mut self, rhs: CacheFlags) {
        self.0 |= rhs.0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enums_round_trip_through_raw_values() {
        for &d in DType::ALL {
            assert_eq!(DType::try_from(u32::from(d)).unwrap(), d);
        }
        for &f in CacheFormat::ALL {
            assert_eq!(CacheFormat::try_from(f.raw()).unwrap(), f);
        }
        assert_eq!(Tier::try_from(1u32).unwrap(), Tier::Host);
        assert_eq!(u32::from(DeviceType::Cuda), 2);
        assert_eq!(u32::from(CacheFormat::FP8DsMla), 10);
        assert_eq!(u32::from(BlockOrder::LayerMajor), 1);
    }

    #[test]
    fn unknown_raw_values_are_errors() {
        let err = DType::try_from(99u32).unwrap_err();
        assert_eq!(err.status(), crate::Status::InvalidArgument);
        assert!(err.message().contains("99"), "{err}");
        assert!(CacheFormat::try_from(0u32).is_err(), "UNSET is not a format");
        assert!(HeadLayout::try_from(0x7FFF_FFFFu32).is_err(), "FORCE32 is not a layout");
        assert!(Device::try_from(sys::pkv_device { type_: sys::pkv_device_type(7), id: 0 }).is_err());
    }

    #[test]
    fn dtype_sizes_and_names_come_from_the_library() {
        let expected = [
            (DType::F32, 32, "f32"),
            (DType::F16, 16, "f16"),
            (DType::BF16, 16, "bf16"),
            (DType::FP8E4M3, 8, "fp8_e4m3"),
            (DType::FP8E5M2, 8, "fp8_e5m2"),
            (DType::I8, 8, "int8"),
            (DType::U8, 8, "uint8"),
            (DType::I32, 32, "int32"),
            (DType::I64, 64, "int64"),
        ];
        for (dtype, bits, name) in expected {
            assert_eq!((dtype.size_bits(), dtype.name()), (bits, name));
        }
        assert_eq!(DType::BF16.to_string(), "bf16");
    }

    #[test]
    fn devices() {
        assert_eq!(Device::CPU.to_string(), "cpu");
        assert_eq!(Device::cuda(1).to_string(), "cuda:1");
        assert!(Device::CPU.is_host() && !Device::cuda(0).is_host());
        let raw = sys::pkv_device::from(Device::cuda(3));
        assert_eq!(Device::try_from(raw).unwrap(), Device::cuda(3));
    }

    #[test]
    fn row_bytes() {
        assert_eq!(CacheFormat::BF16.row_bytes(128), 256);
        assert_eq!(CacheFormat::Int4PerTokenHead.row_bytes(128), 64);
        assert_eq!(CacheFormat::Int2PerTokenHead.row_bytes(128), 32);
        assert_eq!(CacheFormat::FP8DsMla.row_bytes(576), 656);
    }
}
