//! Ops on plain tensors: block copies inside caches the caller owns ([`copy_blocks`]),
//! conversions ([`convert`]), and the device-side slot-mapping builders
//! ([`build_slot_mapping`], [`build_slot_mapping_csr`]).

use std::mem::size_of;
use std::ptr;

use crate::error::{Error, Result, check};
use crate::memory::BufferRef;
use crate::stream::Stream;
use crate::sys;
use crate::tensor::{TensorMut, TensorRef};

/// Copies whole blocks inside caches the caller owns (`pkv_copy_blocks`, vLLM `copy_blocks`):
/// in every cache, block `pairs[i][1]` receives block `pairs[i][0]`.
///
/// Each cache is `[num_blocks, ...]` of any dtype, dense row-major past dimension 0 (e.g.
/// every layer's key and value cache); all on one device. `pairs` is `[P, 2]` I32 or I64,
/// contiguous, on that device; ids outside a cache and pairs with src == dst are skipped. (For
/// a [`Pool`](crate::Pool), use [`Pool::copy_blocks`](crate::Pool::copy_blocks).)
///
/// ```
/// use pagedkv::{Stream, TensorMut, TensorRef, copy_blocks};
/// let mut k = vec![0.0f32; 4 * 8];                  // 4 blocks of 8 values
/// k[..8].fill(1.5);                                 // block 0
/// let pairs = [0i32, 3];                            // block 0 -> block 3
/// copy_blocks(&mut [TensorMut::from_slice(&mut k, &[4, 8])?],
///             &TensorRef::from_slice(&pairs, &[1, 2])?, Stream::DEFAULT)?;
/// assert!(k[24..].iter().all(|&x| x == 1.5));
/// # Ok::<(), pagedkv::Error>(())
/// ```
pub fn copy_blocks(caches: &mut [TensorMut<'_>], pairs: &TensorRef<'_>, stream: Stream) -> Result<()> {
    let raw: Vec<sys::pkv_tensor> = caches.iter().map(|t| *t.as_raw()).collect();
    let count = i32::try_from(raw.len())
        .map_err(|_| Error::invalid(format!("copy_blocks: {} caches, at most i32::MAX", raw.len())))?;
    // SAFETY: every cache is a mutably borrowed tensor (distinct memory, bounds checked by
    // its constructor) and pairs a valid tensor; the library copies inside the caches only.
    check(unsafe {
        sys::pkv_copy_blocks(
            if raw.is_empty() { ptr::null() } else { raw.as_ptr() },
            count,
            pairs.as_raw(),
            stream.as_raw(),
        )
    })
}

/// Element-wise `dst = convert(src)` between tensors of the same shape (`pkv_convert`, vLLM
/// `convert_fp8` and plain casts), with the cache formats' rounding: to FP8
/// `sat_finite_rne(x / scale)`, from FP8 `float(q) * scale` rounded to nearest even, between
/// f32 / f16 / bf16 round to nearest even, equal dtypes bit copies. Scale 1.0; see
/// [`convert_scaled`].
///
/// ```
/// use pagedkv::{DType, Stream, TensorMut, TensorRef, convert};
/// let src = [1.0f32, -2.5, 448.0, 1000.0];
/// let mut fp8 = [0u8; 4];
/// convert(&mut TensorMut::with_dtype(&mut fp8, DType::FP8E4M3, &[4])?,
///         &TensorRef::from_slice(&src, &[4])?, Stream::DEFAULT)?;
/// assert_eq!(fp8, [0x38, 0xC2, 0x7E, 0x7E]);        // 1000 saturates to 448
/// # Ok::<(), pagedkv::Error>(())
/// ```
pub fn convert(dst: &mut TensorMut<'_>, src: &TensorRef<'_>, stream: Stream) -> Result<()> {
    // SAFETY: dst is borrowed mutably, src immutably (distinct memory); the library checks
    // shapes, dtypes and devices and reads / writes inside them only.
    check(unsafe { sys::pkv_convert(dst.as_raw(), src.as_raw(), ptr::null(), stream.as_raw()) })
}

/// [`convert`] with a float32 scale read at run time: one `f32` on the tensors' device
/// (`&f32` for host tensors, a [`DeviceBuffer`](crate::DeviceBuffer) for CUDA ones).
pub fn convert_scaled<'s>(
    dst: &mut TensorMut<'_>,
    src: &TensorRef<'_>,
    scale: impl Into<BufferRef<'s>>,
    stream: Stream,
) -> Result<()> {
    let scale = scale.into();
    scale.require("convert_scaled: scale", dst.device(), size_of::<f32>(), size_of::<f32>())?;
    // SAFETY: as convert; scale is one aligned f32 on the tensors' device, borrowed.
    check(unsafe { sys::pkv_convert(dst.as_raw(), src.as_raw(), scale.ptr.cast(), stream.as_raw()) })
}

/// The slot mapping of a step's new tokens from a 2-D block table (`pkv_build_slot_mapping`):
/// token `i` of request `b` (`query_start_loc[b] <= i < query_start_loc[b+1]`) has position
/// `seq_lens[b] - new_tokens(b) + (i - query_start_loc[b])` and slot
/// `block_table[b][pos / block_size] * block_size + pos % block_size`; tokens past the batch
/// and positions outside the table get -1.
///
/// `out_slot_mapping`: `[T]` I32 / I64; `block_table`: `[B, max_blocks]` I32;
/// `seq_lens`: `[B]` I32; `query_start_loc`: `[B + 1]` I32; all on one device (the output's).
pub fn build_slot_mapping(
    out_slot_mapping: &mut TensorMut<'_>,
    block_table: &TensorRef<'_>,
    seq_lens: &TensorRef<'_>,
    query_start_loc: &TensorRef<'_>,
    block_size: i64,
    stream: Stream,
) -> Result<()> {
    // SAFETY: valid tensors (constructors' checks); the library validates shapes, dtypes and
    // devices and reads inside the inputs only.
    check(unsafe {
        sys::pkv_build_slot_mapping(
            out_slot_mapping.as_raw(),
            block_table.as_raw(),
            seq_lens.as_raw(),
            query_start_loc.as_raw(),
            block_size,
            stream.as_raw(),
        )
    })
}

/// The slot mapping from a FlashInfer-style CSR page table (`pkv_build_slot_mapping_csr`):
/// request `b` owns pages `indices[indptr[b] .. indptr[b+1]]`, its last page holding
/// `last_page_len[b]` tokens; its new tokens are the last `append_indptr[b+1] -
/// append_indptr[b]` positions. All index tensors I32, contiguous, on the output's device.
pub fn build_slot_mapping_csr(
    out_slot_mapping: &mut TensorMut<'_>,
    indptr: &TensorRef<'_>,
    indices: &TensorRef<'_>,
    last_page_len: &TensorRef<'_>,
    append_indptr: &TensorRef<'_>,
    page_size: i64,
    stream: Stream,
) -> Result<()> {
    // SAFETY: as build_slot_mapping.
    check(unsafe {
        sys::pkv_build_slot_mapping_csr(
            out_slot_mapping.as_raw(),
            indptr.as_raw(),
            indices.as_raw(),
            last_page_len.as_raw(),
            append_indptr.as_raw(),
            page_size,
            stream.as_raw(),
        )
    })
}
