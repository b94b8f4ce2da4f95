//! [`CacheView`]: one layer's paged K/V cache, its [`CacheViewBuilder`], and the ops on it:
//! [`write_kv`](CacheView::write_kv), [`write_mla`](CacheView::write_mla),
//! [`gather_kv`](CacheView::gather_kv).

use std::fmt;
use std::marker::PhantomData;
use std::mem::size_of;
use std::ptr;

use crate::error::{Error, Result, check};
use crate::memory::{BufferMut, BufferRef};
use crate::stream::Stream;
use crate::sys;
use crate::tensor::{TensorMut, TensorRef, non_overlapping};
use crate::types::{CacheFlags, CacheFormat, Device, HeadLayout, ScaleMode};

/// A declarative description of one layer's paged K/V cache (`pkv_cache_view`): format,
/// sizes, byte strides and the memory of K, V and their scales, borrowed for `'a`.
///
/// Made by [`CacheView::builder`] over host slices or
/// [`DeviceBuffer`](crate::DeviceBuffer)s (every byte the view addresses is checked to lie
/// inside them), by [`Pool::layer_view`](crate::Pool::layer_view), or from a raw view with
/// the `unsafe` [`CacheView::from_raw`].
///
/// The ops write the cache's memory through a shared reference: a view is neither `Send` nor
/// `Sync`, so it is used by one thread, and the memory it borrows is not reachable from Rust
/// while it lives.
///
/// ```
/// use pagedkv::{CacheFormat, CacheView, DType, Stream, TensorMut, TensorRef};
///
/// // A bf16 cache of 4 blocks x 4 tokens x 2 heads x 8 dims (NHD), in host memory.
/// let (blocks, block_size, heads, dim) = (4, 4, 2, 8);
/// let mut k = vec![0u8; 4 * 4 * 2 * 8 * 2];
/// let mut v = k.clone();
/// let cache = CacheView::builder(CacheFormat::BF16, blocks, block_size, heads, dim)
///     .key(&mut k)
///     .value(&mut v)
///     .build()?;
///
/// // Two tokens (bf16 bits) to slots 5 and 6; the -1 row is padding and is skipped.
/// let key: Vec<u16> = (0..3 * 16).map(|i| 0x3f80 + i as u16).collect();
/// let value = key.clone();
/// let slots = [5i64, -1, 6];
/// cache.write_kv(
///     &TensorRef::with_dtype(&key, DType::BF16, &[3, 2, 8])?,
///     Some(&TensorRef::with_dtype(&value, DType::BF16, &[3, 2, 8])?),
///     &TensorRef::from_slice(&slots, &[3])?,
///     Stream::DEFAULT,
/// )?;
///
/// // Gather them back: one request whose block table is [1] and positions 1..3.
/// let (table, cu_seq_lens, starts) = ([1i32], [0i32, 2], [1i32]);
/// let mut out = vec![0u16; 2 * 16];
/// cache.gather_kv(
///     &mut TensorMut::with_dtype(&mut out, DType::BF16, &[2, 2, 8])?,
///     None,
///     &TensorRef::from_slice(&table, &[1, 1])?,
///     &TensorRef::from_slice(&cu_seq_lens, &[2])?,
///     Some(&TensorRef::from_slice(&starts, &[1])?),
///     Stream::DEFAULT,
/// )?;
/// assert_eq!(out[..16], key[..16]);
/// assert_eq!(out[16..], key[32..]);
/// # Ok::<(), pagedkv::Error>(())
/// ```
pub struct CacheView<'a> {
    raw: sys::pkv_cache_view,
    _borrow: PhantomData<&'a mut [u8]>,
}

/// A zeroed `pkv_cache_view` with its struct_size set (`pkv_cache_view_init`).
pub(crate) fn new_raw_view() -> sys::pkv_cache_view {
    let mut raw = std::mem::MaybeUninit::<sys::pkv_cache_view>::zeroed();
    // SAFETY: raw is writable memory of the size passed; the call zeroes it and sets
    // struct_size, and cannot fail for a non-NULL pointer and the current size.
    let status = unsafe { sys::pkv_cache_view_init(raw.as_mut_ptr(), size_of::<sys::pkv_cache_view>()) };
    debug_assert_eq!(status, sys::pkv_status::PKV_SUCCESS, "pkv_cache_view_init");
    // SAFETY: all-zero (plus struct_size) is a valid pkv_cache_view: integers, NULL
    // pointers, enum values 0.
    unsafe { raw.assume_init() }
}

impl<'a> CacheView<'a> {
    /// Starts a view of `num_blocks` blocks of `block_size` tokens, `num_heads` KV heads of
    /// `head_size` elements (K and V; see [`CacheViewBuilder::head_size_v`]).
    pub fn builder(
        format: CacheFormat,
        num_blocks: i64,
        block_size: i64,
        num_heads: i64,
        head_size: i64,
    ) -> CacheViewBuilder<'a> {
        CacheViewBuilder {
            format,
            num_blocks,
            block_size,
            num_heads,
            head_size_k: head_size,
            head_size_v: 0,
            layout: HeadLayout::Nhd,
            key_strides: None,
            value_strides: None,
            key: None,
            value: None,
            scale_mode: ScaleMode::PerTensor,
            key_scale: None,
            value_scale: None,
            key_scale_plane: None,
            value_scale_plane: None,
            key_signs: None,
            value_signs: None,
            flags: CacheFlags::NONE,
        }
    }

    /// Wraps a raw view.
    ///
    /// # Safety
    /// Every byte the view addresses (data, scales, scale planes, rotation signs) is memory
    /// of its device, valid for `'a`, and not accessed by anyone else while the view is used
    /// (or while work enqueued on a stream with it runs).
    pub unsafe fn from_raw(raw: sys::pkv_cache_view) -> Self {
        CacheView { raw, _borrow: PhantomData }
    }

    /// The `pkv_cache_view` (for the raw API).
    pub fn as_raw(&self) -> &sys::pkv_cache_view {
        &self.raw
    }

    /// The cache format.
    pub fn format(&self) -> CacheFormat {
        CacheFormat::try_from(self.raw.format).expect("a checked view has a known format")
    }

    /// Where the cache lives.
    pub fn device(&self) -> Device {
        Device::try_from(self.raw.device).expect("a checked view has a known device")
    }

    /// Number of blocks.
    pub fn num_blocks(&self) -> i64 {
        self.raw.num_blocks
    }

    /// Tokens per block.
    pub fn block_size(&self) -> i64 {
        self.raw.block_size
    }

    /// KV heads.
    pub fn num_heads(&self) -> i64 {
        self.raw.num_heads
    }

    /// Head size of K.
    pub fn head_size_k(&self) -> i64 {
        self.raw.head_size_k
    }

    /// Head size of V (that of K when the view leaves it 0); 0 for a K-only view.
    pub fn head_size_v(&self) -> i64 {
        match (self.has_value(), self.raw.head_size_v) {
            (false, _) => 0,
            (true, 0) => self.raw.head_size_k,
            (true, v) => v,
        }
    }

    /// Whether the view has V (false for a K-only, MLA latent cache).
    pub fn has_value(&self) -> bool {
        !self.raw.v_data.is_null()
    }

    /// The view's flags.
    pub fn flags(&self) -> CacheFlags {
        CacheFlags::from_bits(self.raw.flags)
    }

    /// The same view with other flags (e.g. [`CacheFlags::ROTATED_DOMAIN`] for gathers of a
    /// pool's INT4 layer). The flags change how values are read, never where.
    pub fn with_flags(mut self, flags: CacheFlags) -> Self {
        self.raw.flags = flags.bits();
        self
    }

    /// Validates the view (`pkv_cache_view_check`); every op makes the same checks.
    pub fn check(&self) -> Result<()> {
        // SAFETY: a valid view struct; the check does not touch the cache's memory.
        check(unsafe { sys::pkv_cache_view_check(&self.raw) })
    }

    /// Writes new keys and values (`pkv_write_kv`, vLLM `reshape_and_cache_flash`
    /// semantics): token `t` goes to slot `slot_mapping[t]` = block * block_size + offset;
    /// negative slots are padding and skipped, slots past the cache are skipped.
    ///
    /// - `key`: `[T_pad, num_heads, head_size_k]` f32 / f16 / bf16, last stride 1; `value`
    ///   likewise with `head_size_v` (None for a K-only cache); `slot_mapping`: `[T]` I32 or
    ///   I64, `T <= T_pad`. All on the cache's device.
    /// - The cache format decides the conversion (RNE, FP8 `x / scale`, per-token-head
    ///   quantization); see [`CacheFormat`].
    /// - A CPU cache is written before return; a CUDA cache on `stream`.
    pub fn write_kv(
        &self,
        key: &TensorRef<'_>,
        value: Option<&TensorRef<'_>>,
        slot_mapping: &TensorRef<'_>,
        stream: Stream,
    ) -> Result<()> {
        // SAFETY: the view and tensors are valid for their borrows (their constructors'
        // checks or contracts); the library checks shapes, dtypes and devices against the view
        // and reads / writes inside them only. No counter.
        check(unsafe {
            sys::pkv_write_kv(
                &self.raw,
                key.as_raw(),
                opt_raw(value),
                slot_mapping.as_raw(),
                ptr::null_mut(),
                stream.as_raw(),
            )
        })
    }

    /// [`write_kv`](Self::write_kv) that also adds the number of out-of-range slots (slot >=
    /// num_blocks * block_size) to `out_of_range`: one `i64` on the cache's device (`&mut
    /// i64` for a CPU cache, a [`DeviceBuffer`](crate::DeviceBuffer) for a CUDA cache).
    pub fn write_kv_counting<'c>(
        &self,
        key: &TensorRef<'_>,
        value: Option<&TensorRef<'_>>,
        slot_mapping: &TensorRef<'_>,
        out_of_range: impl Into<BufferMut<'c>>,
        stream: Stream,
    ) -> Result<()> {
        let counter = self.counter(out_of_range.into())?;
        // SAFETY: as write_kv; counter is one aligned i64 on the cache's device, borrowed
        // mutably for the call (host) or device memory (CUDA).
        check(unsafe {
            sys::pkv_write_kv(&self.raw, key.as_raw(), opt_raw(value), slot_mapping.as_raw(), counter, stream.as_raw())
        })
    }

    /// Writes MLA latent entries `[kv_c | k_pe]` (`pkv_write_mla`, vLLM
    /// `concat_and_cache_mla`): a K-only view with one head of `R + P` elements; `kv_c` is
    /// `[T_pad, R]`, `k_pe` `[T_pad, P]`, f32 / f16 / bf16 (FP8_DS_MLA: bf16, R = 512,
    /// P = 64). Slots as in [`write_kv`](Self::write_kv).
    pub fn write_mla(
        &self,
        kv_c: &TensorRef<'_>,
        k_pe: &TensorRef<'_>,
        slot_mapping: &TensorRef<'_>,
        stream: Stream,
    ) -> Result<()> {
        // SAFETY: as write_kv.
        check(unsafe {
            sys::pkv_write_mla(
                &self.raw,
                kv_c.as_raw(),
                k_pe.as_raw(),
                slot_mapping.as_raw(),
                ptr::null_mut(),
                stream.as_raw(),
            )
        })
    }

    /// [`write_mla`](Self::write_mla) with an out-of-range counter, as
    /// [`write_kv_counting`](Self::write_kv_counting).
    pub fn write_mla_counting<'c>(
        &self,
        kv_c: &TensorRef<'_>,
        k_pe: &TensorRef<'_>,
        slot_mapping: &TensorRef<'_>,
        out_of_range: impl Into<BufferMut<'c>>,
        stream: Stream,
    ) -> Result<()> {
        let counter = self.counter(out_of_range.into())?;
        // SAFETY: as write_kv_counting.
        check(unsafe {
            sys::pkv_write_mla(&self.raw, kv_c.as_raw(), k_pe.as_raw(), slot_mapping.as_raw(), counter, stream.as_raw())
        })
    }

    /// Gathers paged K/V back to dense rows, dequantizing (`pkv_gather_kv`, vLLM
    /// `gather_and_maybe_dequant_cache`).
    ///
    /// Request `b` owns output rows `cu_seq_lens[b] .. cu_seq_lens[b+1]`; its row `i` reads
    /// cache position `p = i - cu_seq_lens[b] + seq_starts[b]` (0 without `seq_starts`), the
    /// slot `(block_table[b][p / block_size], p % block_size)`.
    ///
    /// - `out_key`: `[N, num_heads, head_size_k]` f32 / f16 / bf16; rows past
    ///   `cu_seq_lens[B]` are not written. `out_value`: likewise, or None.
    /// - `block_table`: `[B, max_blocks]` I32; `cu_seq_lens`: `[B + 1]` I32; `seq_starts`:
    ///   `[B]` I32. All on the cache's device.
    pub fn gather_kv(
        &self,
        out_key: &mut TensorMut<'_>,
        out_value: Option<&mut TensorMut<'_>>,
        block_table: &TensorRef<'_>,
        cu_seq_lens: &TensorRef<'_>,
        seq_starts: Option<&TensorRef<'_>>,
        stream: Stream,
    ) -> Result<()> {
        // SAFETY: as write_kv; the outputs are borrowed mutably and written inside their
        // shapes only.
        check(unsafe {
            sys::pkv_gather_kv(
                out_key.as_raw(),
                out_value.map_or(ptr::null(), |t| t.as_raw() as *const _),
                &self.raw,
                block_table.as_raw(),
                cu_seq_lens.as_raw(),
                opt_raw(seq_starts),
                ptr::null_mut(),
                stream.as_raw(),
            )
        })
    }

    /// [`gather_kv`](Self::gather_kv) that also counts rows whose position or block id is
    /// out of range (left unwritten) into `out_of_range`, as
    /// [`write_kv_counting`](Self::write_kv_counting).
    #[allow(clippy::too_many_arguments)]
    pub fn gather_kv_counting<'c>(
        &self,
        out_key: &mut TensorMut<'_>,
        out_value: Option<&mut TensorMut<'_>>,
        block_table: &TensorRef<'_>,
        cu_seq_lens: &TensorRef<'_>,
        seq_starts: Option<&TensorRef<'_>>,
        out_of_range: impl Into<BufferMut<'c>>,
        stream: Stream,
    ) -> Result<()> {
        let counter = self.counter(out_of_range.into())?;
        // SAFETY: as gather_kv and write_kv_counting.
        check(unsafe {
            sys::pkv_gather_kv(
                out_key.as_raw(),
                out_value.map_or(ptr::null(), |t| t.as_raw() as *const _),
                &self.raw,
                block_table.as_raw(),
                cu_seq_lens.as_raw(),
                opt_raw(seq_starts),
                counter,
                stream.as_raw(),
            )
        })
    }

    /// The counter pointer: one aligned i64 on the cache's device.
    fn counter(&self, buffer: BufferMut<'_>) -> Result<*mut i64> {
        buffer.require("out_of_range counter", self.device(), size_of::<i64>(), size_of::<i64>())?;
        Ok(buffer.ptr.cast())
    }
}

fn opt_raw(t: Option<&TensorRef<'_>>) -> *const sys::pkv_tensor {
    t.map_or(ptr::null(), |t| t.as_raw() as *const _)
}

impl fmt::Debug for CacheView<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CacheView")
            .field("format", &CacheFormat::try_from(self.raw.format).ok())
            .field("device", &Device::try_from(self.raw.device).ok())
            .field("num_blocks", &self.raw.num_blocks)
            .field("block_size", &self.raw.block_size)
            .field("num_heads", &self.raw.num_heads)
            .field("head_size_k", &self.raw.head_size_k)
            .field("head_size_v", &self.raw.head_size_v)
            .field("k_data", &self.raw.k_data)
            .field("v_data", &self.raw.v_data)
            .field("flags", &self.raw.flags)
            .finish_non_exhaustive()
    }
}

/// Builds a [`CacheView`] over borrowed memory: host slices (`&mut [u8]`, `&mut [u16]`, ...)
/// or [`DeviceBuffer`](crate::DeviceBuffer)s, all on one device.
///
/// Byte strides come from the [`HeadLayout`] (NHD by default) or are given explicitly; either
/// way [`build`](Self::build) checks that the last byte of the last head row of the last
/// block lies inside the memory, and the same for scales, scale planes and rotation signs,
/// then runs the library's own checks. Split head rows (`k_chunk_size`) and K/V sharing one
/// buffer need the raw [`CacheView::from_raw`].
#[must_use]
pub struct CacheViewBuilder<'a> {
    format: CacheFormat,
    num_blocks: i64,
    block_size: i64,
    num_heads: i64,
    head_size_k: i64,
    head_size_v: i64,
    layout: HeadLayout,
    key_strides: Option<[i64; 3]>,
    value_strides: Option<[i64; 3]>,
    key: Option<BufferMut<'a>>,
    value: Option<BufferMut<'a>>,
    scale_mode: ScaleMode,
    key_scale: Option<BufferRef<'a>>,
    value_scale: Option<BufferRef<'a>>,
    key_scale_plane: Option<BufferMut<'a>>,
    value_scale_plane: Option<BufferMut<'a>>,
    key_signs: Option<BufferRef<'a>>,
    value_signs: Option<BufferRef<'a>>,
    flags: CacheFlags,
}

impl<'a> CacheViewBuilder<'a> {
    /// Head size of V when it differs from K's.
    pub fn head_size_v(mut self, head_size_v: i64) -> Self {
        self.head_size_v = head_size_v;
        self
    }

    /// Head layout inside a block for both K and V (NHD by default).
    pub fn layout(mut self, layout: HeadLayout) -> Self {
        self.layout = layout;
        self
    }

    /// Explicit byte strides of K: between blocks, slots (tokens) and heads.
    pub fn key_strides(mut self, block: i64, slot: i64, head: i64) -> Self {
        self.key_strides = Some([block, slot, head]);
        self
    }

    /// Explicit byte strides of V.
    pub fn value_strides(mut self, block: i64, slot: i64, head: i64) -> Self {
        self.value_strides = Some([block, slot, head]);
        self
    }

    /// Memory of K (required).
    pub fn key(mut self, memory: impl Into<BufferMut<'a>>) -> Self {
        self.key = Some(memory.into());
        self
    }

    /// Memory of V; without it the view is K-only (an MLA latent cache).
    pub fn value(mut self, memory: impl Into<BufferMut<'a>>) -> Self {
        self.value = Some(memory.into());
        self
    }

    /// Scale granularity of the FP8 formats (per tensor by default).
    pub fn scale_mode(mut self, mode: ScaleMode) -> Self {
        self.scale_mode = mode;
        self
    }

    /// FP8 scales of K: float32, one or `num_heads` (per head); without them the scale is 1.
    /// Read by the kernels at run time.
    pub fn key_scale(mut self, scales: impl Into<BufferRef<'a>>) -> Self {
        self.key_scale = Some(scales.into());
        self
    }

    /// FP8 scales of V.
    pub fn value_scale(mut self, scales: impl Into<BufferRef<'a>>) -> Self {
        self.value_scale = Some(scales.into());
        self
    }

    /// Scale plane of K for the per-token-head formats: float32 `[num_blocks, block_size,
    /// num_heads]`, contiguous.
    pub fn key_scale_plane(mut self, plane: impl Into<BufferMut<'a>>) -> Self {
        self.key_scale_plane = Some(plane.into());
        self
    }

    /// Scale plane of V.
    pub fn value_scale_plane(mut self, plane: impl Into<BufferMut<'a>>) -> Self {
        self.value_scale_plane = Some(plane.into());
        self
    }

    /// INT4 rotation signs of K: `head_size_k` floats +1.0 / -1.0; default:
    /// [`default_rotation_signs`](crate::default_rotation_signs).
    pub fn key_rotation_signs(mut self, signs: impl Into<BufferRef<'a>>) -> Self {
        self.key_signs = Some(signs.into());
        self
    }

    /// INT4 rotation signs of V.
    pub fn value_rotation_signs(mut self, signs: impl Into<BufferRef<'a>>) -> Self {
        self.value_signs = Some(signs.into());
        self
    }

    /// View flags ([`CacheFlags::ROTATED_DOMAIN`], [`CacheFlags::ROPE_F16`]).
    pub fn flags(mut self, flags: CacheFlags) -> Self {
        self.flags = flags;
        self
    }

    /// Byte strides of one side: explicit, or from the layout.
    fn strides(&self, explicit: Option<[i64; 3]>, row: i64) -> Option<[i64; 3]> {
        if let Some(s) = explicit {
            return Some(s);
        }
        let (bs, h) = (self.block_size, self.num_heads);
        Some(match self.layout {
            HeadLayout::Nhd => [bs.checked_mul(h)?.checked_mul(row)?, h.checked_mul(row)?, row],
            HeadLayout::Hnd => [h.checked_mul(bs)?.checked_mul(row)?, row, bs.checked_mul(row)?],
        })
    }

    /// Checks every bound and builds the view; the library validates it too.
    pub fn build(self) -> Result<CacheView<'a>> {
        let (nb, bs, h) = (self.num_blocks, self.block_size, self.num_heads);
        if nb <= 0 || bs <= 0 || h <= 0 || self.head_size_k <= 0 || self.head_size_v < 0 {
            return Err(Error::invalid(format!(
                "CacheViewBuilder: sizes must be > 0 (num_blocks {nb}, block_size {bs}, num_heads {h}, \
                 head_size {} / {})",
                self.head_size_k, self.head_size_v
            )));
        }
        let Some(key) = &self.key else {
            return Err(Error::invalid("CacheViewBuilder: no key memory (CacheViewBuilder::key)"));
        };
        let device = key.device;
        if device.device_type == crate::DeviceType::CudaHost {
            return Err(Error::invalid("CacheViewBuilder: pinned host memory is not supported here"));
        }
        if self.value.is_none() && self.head_size_v != 0 {
            return Err(Error::invalid("CacheViewBuilder: head_size_v without value memory"));
        }
        let hv = if self.head_size_v == 0 { self.head_size_k } else { self.head_size_v };
        let overflow = || Error::invalid("CacheViewBuilder: the cache's extent overflows i64");

        let mut raw = new_raw_view();
        raw.flags = self.flags.bits();
        raw.format = self.format.raw();
        raw.device = device.raw();
        raw.num_blocks = nb;
        raw.block_size = bs;
        raw.num_heads = h;
        raw.head_size_k = self.head_size_k;
        raw.head_size_v = self.head_size_v;
        raw.scale_mode = self.scale_mode.raw();

        // Data: the extent of the last row of the last block.
        let extent = |s: [i64; 3], row: i64| -> Option<i64> {
            if s.iter().any(|&x| x <= 0) {
                return None;
            }
            (nb - 1)
                .checked_mul(s[0])?
                .checked_add((bs - 1).checked_mul(s[1])?)?
                .checked_add((h - 1).checked_mul(s[2])?)?
                .checked_add(row)
        };
        let row_k = self.format.row_bytes(self.head_size_k);
        let sk = self.strides(self.key_strides, row_k).ok_or_else(overflow)?;
        let need_k = extent(sk, row_k).ok_or_else(|| {
            Error::invalid(format!("CacheViewBuilder: key strides {sk:?} must be > 0 (and not overflow)"))
        })?;
        key.require("CacheViewBuilder: key memory", device, need_k as usize, 1)?;
        let disjoint_rows = |s: [i64; 3], row: i64| non_overlapping(&[nb, bs, h, row], &[s[0], s[1], s[2], 1]);
        if !disjoint_rows(sk, row_k) {
            return Err(Error::invalid(format!(
                "CacheViewBuilder: key strides {sk:?} make head rows of {row_k} bytes overlap"
            )));
        }
        raw.k_data = key.ptr.cast();
        [raw.k_stride_block, raw.k_stride_slot, raw.k_stride_head] = sk;
        if let Some(value) = &self.value {
            let row_v = self.format.row_bytes(hv);
            let sv = self.strides(self.value_strides, row_v).ok_or_else(overflow)?;
            let need_v = extent(sv, row_v).ok_or_else(|| {
                Error::invalid(format!("CacheViewBuilder: value strides {sv:?} must be > 0 (and not overflow)"))
            })?;
            value.require("CacheViewBuilder: value memory", device, need_v as usize, 1)?;
            if !disjoint_rows(sv, row_v) {
                return Err(Error::invalid(format!(
                    "CacheViewBuilder: value strides {sv:?} make head rows of {row_v} bytes overlap"
                )));
            }
            raw.v_data = value.ptr.cast();
            [raw.v_stride_block, raw.v_stride_slot, raw.v_stride_head] = sv;
        }

        // FP8 scales: one float, or one per head.
        let scales = if self.scale_mode == ScaleMode::PerHead { h as usize } else { 1 };
        for (name, buffer, slot) in
            [("key_scale", &self.key_scale, &mut raw.k_scale), ("value_scale", &self.value_scale, &mut raw.v_scale)]
        {
            if let Some(b) = buffer {
                b.require(&format!("CacheViewBuilder: {name}"), device, scales * 4, 4)?;
                *slot = b.ptr.cast();
            }
        }

        // Scale planes: contiguous [num_blocks, block_size, num_heads] float32.
        let plane_floats = nb.checked_mul(bs).and_then(|x| x.checked_mul(h)).ok_or_else(overflow)?;
        let plane_bytes = plane_floats.checked_mul(4).ok_or_else(overflow)? as usize;
        if let Some(p) = &self.key_scale_plane {
            p.require("CacheViewBuilder: key_scale_plane", device, plane_bytes, 4)?;
            raw.k_scale_plane = p.ptr.cast();
            [raw.k_scale_stride_block, raw.k_scale_stride_slot, raw.k_scale_stride_head] = [bs * h * 4, h * 4, 4];
        }
        if let Some(p) = &self.value_scale_plane {
            p.require("CacheViewBuilder: value_scale_plane", device, plane_bytes, 4)?;
            raw.v_scale_plane = p.ptr.cast();
            [raw.v_scale_stride_block, raw.v_scale_stride_slot, raw.v_scale_stride_head] = [bs * h * 4, h * 4, 4];
        }

        // Rotation signs: head_size floats.
        if let Some(s) = &self.key_signs {
            s.require("CacheViewBuilder: key_rotation_signs", device, self.head_size_k as usize * 4, 4)?;
            raw.k_rotation_signs = s.ptr.cast();
        }
        if let Some(s) = &self.value_signs {
            s.require("CacheViewBuilder: value_rotation_signs", device, hv as usize * 4, 4)?;
            raw.v_rotation_signs = s.ptr.cast();
        }

        let view = CacheView { raw, _borrow: PhantomData };
        view.check()?;
        Ok(view)
    }
}
