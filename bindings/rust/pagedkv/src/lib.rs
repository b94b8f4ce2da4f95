//! Safe Rust API of `libpagedkv`, the paged KV cache library of LLM inference engines: write
//! new keys and values into paged blocks (converting or quantizing on the way), gather them
//! back to dense rows (dequantizing), and manage blocks with pools, block tables and request
//! slots, on the CPU or a CUDA GPU.
//!
//! It sits on the stable C API (`include/pagedkv.h`) through the [`sys`] crate
//! (`pagedkv-sys`). The CPU path needs no `unsafe`: tensors and caches are views of host
//! slices whose bounds are checked before any call, handles free themselves on drop, and
//! lifetimes keep a [`Pool`] alive while its [`BlockTable`]s and [`Slots`] are.
//!
//! | C | Rust |
//! |---|---|
//! | `pkv_status` + `pkv_last_error_message()` | [`Result<T, Error>`](Error), [`Status`] |
//! | `pkv_dtype`, `pkv_cache_format`, `pkv_tier`, ... | [`DType`], [`CacheFormat`], [`Tier`], ... |
//! | `pkv_tensor` | [`TensorRef`] (read) / [`TensorMut`] (written) |
//! | `pkv_cache_view` | [`CacheView`], built by [`CacheView::builder`] or [`Pool::layer_view`] |
//! | `pkv_write_kv`, `pkv_write_mla`, `pkv_gather_kv` | [`CacheView::write_kv`], [`CacheView::write_mla`], [`CacheView::gather_kv`] |
//! | `pkv_pool`, `pkv_block_table`, `pkv_slots` | [`Pool`], [`BlockTable`], [`Slots`] |
//! | `pkv_stream` | [`Stream`] |
//! | `pkv_alloc` / `pkv_copy` / `pkv_free` | [`DeviceBuffer`] |
//!
//! # Example
//!
//! Write three tokens (one of them padding) into an FP8 cache and read them back:
//!
//! ```
//! use pagedkv::{CacheFormat, CacheView, Stream, TensorMut, TensorRef};
//!
//! let (blocks, block_size, heads, dim) = (2, 4, 1, 4);
//! let mut k = vec![0u8; 2 * 4 * 4];                   // fp8: one byte an element
//! let mut v = vec![0u8; 2 * 4 * 4];
//! let scale = 0.5f32;
//! let cache = CacheView::builder(CacheFormat::FP8E4M3, blocks, block_size, heads, dim)
//!     .key(&mut k)
//!     .value(&mut v)
//!     .key_scale(&scale)
//!     .value_scale(&scale)
//!     .build()?;
//!
//! let key = [1.0f32, 2.0, -3.0, 0.25, /* padding: */ 9.0, 9.0, 9.0, 9.0, 0.5, 1.5, 8.0, -1.0];
//! let slots = [4i32, -1, 5];                          // block 1, offsets 0 and 1
//! let key = TensorRef::from_slice(&key, &[3, 1, 4])?;
//! cache.write_kv(&key, Some(&key), &TensorRef::from_slice(&slots, &[3])?, Stream::DEFAULT)?;
//!
//! let mut out = [0.0f32; 8];
//! let (table, cu) = ([1i32], [0i32, 2]);
//! cache.gather_kv(
//!     &mut TensorMut::from_slice(&mut out, &[2, 1, 4])?,
//!     None,
//!     &TensorRef::from_slice(&table, &[1, 1])?,
//!     &TensorRef::from_slice(&cu, &[2])?,
//!     None,
//!     Stream::DEFAULT,
//! )?;
//! assert_eq!(out, [1.0, 2.0, -3.0, 0.25, 0.5, 1.5, 8.0, -1.0]); // exact in e4m3
//! # Ok::<(), pagedkv::Error>(())
//! ```
//!
//! Errors carry the library's message:
//!
//! ```
//! use pagedkv::{CacheFormat, CacheView, Status, Stream, TensorRef};
//! let mut k = vec![0.0f32; 16];
//! let cache = CacheView::builder(CacheFormat::F32, 1, 4, 1, 4).key(&mut k).build()?;
//! let key = [0.0f32; 4];
//! let bad_slots = [0.0f32];                           // slots must be int32 / int64
//! let err = cache
//!     .write_kv(&TensorRef::from_slice(&key, &[1, 1, 4])?, None,
//!               &TensorRef::from_slice(&bad_slots, &[1])?, Stream::DEFAULT)
//!     .unwrap_err();
//! assert_eq!(err.status(), Status::InvalidArgument);
//! assert!(err.message().contains("slot_mapping dtype must be int32 or int64"), "{err}");
//! # Ok::<(), pagedkv::Error>(())
//! ```
//!
//! # Pools and block tables
//!
//! An engine without its own block manager lets a [`Pool`] own the memory and a
//! [`BlockTable`] hand out slots:
//!
//! ```
//! use pagedkv::{BlockTableParams, CacheFormat, DType, LayerSpec, Pool, Stream, TensorRef, Tier};
//!
//! let pool = Pool::builder()
//!     .block_size(16)
//!     .num_blocks(1024)
//!     .layer(LayerSpec::new(CacheFormat::BF16, 8, 128))
//!     .build()?;
//! let mut table = pool.block_table(BlockTableParams::default())?;
//! table.add(1)?;
//! let slots = table.append(1, 3, Stream::DEFAULT)?; // 3 new tokens of request 1 -> slots
//!
//! let (key, value) = (vec![0x3f80u16; 3 * 8 * 128], vec![0xbf80u16; 3 * 8 * 128]); // bf16 bits
//! let cache = pool.layer_view(0, Tier::Device)?;
//! cache.write_kv(
//!     &TensorRef::with_dtype(&key, DType::BF16, &[3, 8, 128])?,
//!     Some(&TensorRef::with_dtype(&value, DType::BF16, &[3, 8, 128])?),
//!     &TensorRef::from_slice(&slots, &[3])?,
//!     Stream::DEFAULT,
//! )?;
//! # Ok::<(), pagedkv::Error>(())
//! ```
//!
//! # CUDA
//!
//! The same calls run on a GPU when the memory is on one: [`DeviceBuffer`]s of a CUDA
//! [`Device`], or a [`Pool`] built on one. Ops are then enqueued on the given [`Stream`] and
//! return, as in C; [`DeviceBuffer`] copies wait for the default stream. A safe call never
//! lets a kernel reach Rust-owned host memory: host slices are refused for CUDA caches (the
//! library checks devices), and a CUDA pool's host tier is synchronized by
//! [`Pool::swap_blocks`]. Memory of other libraries comes in through the `unsafe`
//! constructors ([`TensorRef::from_raw_parts`], [`CacheView::from_raw`], [`Stream::from_raw`]).
//!
//! # Threads
//!
//! [`Pool`], [`DeviceBuffer`] and [`Stream`] are `Send`; views, block tables and slots are
//! used on the thread that made them (they write memory through shared references).
//!
//! # Linking
//!
//! `pagedkv-sys` finds the library through `PAGEDKV_LIB_DIR` / `PAGEDKV_INCLUDE_DIR` or
//! `pkg-config pagedkv`; see its build script. At run time the loader must find
//! `libpagedkv.so` (a system path, `LD_LIBRARY_PATH`, or an rpath from `DEP_PAGEDKV_LIB`).

#![warn(missing_docs, unsafe_op_in_unsafe_fn, clippy::undocumented_unsafe_blocks)]

pub use pagedkv_sys as sys;

mod block_table;
mod cache;
mod error;
mod memory;
mod ops;
mod pool;
mod slots;
mod stream;
mod tensor;
mod types;

pub use block_table::{BatchMirror, BlockTable, BlockTableParams};
pub use cache::{CacheView, CacheViewBuilder};
pub use error::{Error, Result, Status};
pub use memory::{BufferMut, BufferRef, DeviceBuffer, NativeScalar, Scalar};
pub use ops::{build_slot_mapping, build_slot_mapping_csr, convert, convert_scaled, copy_blocks};
pub use pool::{LayerSpec, Pool, PoolBuilder, PoolStats};
pub use slots::Slots;
pub use stream::Stream;
pub use tensor::{MAX_DIMS, TensorMut, TensorRef, contiguous_strides};
pub use types::{BlockOrder, CacheFlags, CacheFormat, DType, Device, DeviceType, HeadLayout, ScaleMode, Tier};

use error::{check, static_str};

/// Version of the header these bindings were generated from, encoded as
/// `MAJOR * 10000 + MINOR * 100 + PATCH` (`PKV_VERSION`).
pub const HEADER_VERSION: u32 = sys::PKV_VERSION;

/// Runtime version of the loaded library, encoded as [`HEADER_VERSION`] (`pkv_version`).
pub fn version() -> u32 {
    // SAFETY: no arguments.
    unsafe { sys::pkv_version() }
}

/// Runtime version string of the loaded library ("0.1.0"; `pkv_version_string`).
pub fn version_string() -> &'static str {
    // SAFETY: static, NUL-terminated text.
    unsafe { static_str(sys::pkv_version_string()) }
}

/// Checks that the loaded library has the ABI of the header the bindings were generated
/// from (during 0.x: the same major.minor), as the C examples do at start-up.
///
/// ```
/// pagedkv::check_version().expect("libpagedkv matches pagedkv-sys");
/// ```
pub fn check_version() -> Result<()> {
    if version() / 100 == HEADER_VERSION / 100 {
        Ok(())
    } else {
        Err(Error::new(
            Status::NotSupported,
            format!(
                "libpagedkv {} does not match the bindings' header {}",
                version_string(),
                std::str::from_utf8(&sys::PKV_VERSION_STRING[..sys::PKV_VERSION_STRING.len() - 1]).unwrap_or("?")
            ),
        ))
    }
}

/// Build facts of the loaded library (`pkv_build_info`): `key=value` pairs separated by
/// spaces, e.g. `version=0.1.0 cuda=13.0 cuda_archs=80,90 openmp=1 compiler=gcc-12.2`.
///
/// ```
/// let info = pagedkv::build_info();
/// assert_eq!(info.get("version"), Some(pagedkv::version_string()));
/// println!("{info} (cuda: {})", info.has_cuda());
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BuildInfo(&'static str);

impl BuildInfo {
    /// The whole line.
    pub fn as_str(&self) -> &'static str {
        self.0
    }

    /// The value of `key`, if present.
    pub fn get(&self, key: &str) -> Option<&'static str> {
        self.0.split_whitespace().find_map(|pair| pair.strip_prefix(key)?.strip_prefix('='))
    }

    /// Whether the library was built with its CUDA backend (`cuda` is not `none`).
    pub fn has_cuda(&self) -> bool {
        self.get("cuda").is_some_and(|v| v != "none")
    }
}

impl std::fmt::Display for BuildInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}

/// Build facts of the loaded library.
pub fn build_info() -> BuildInfo {
    // SAFETY: static, NUL-terminated text.
    BuildInfo(unsafe { static_str(sys::pkv_build_info()) })
}

/// Number of usable CUDA devices (`pkv_cuda_device_count`): 0 without CUDA in the build, a
/// driver or a device.
pub fn cuda_device_count() -> Result<usize> {
    let mut count = 0i32;
    // SAFETY: count is a valid out-pointer.
    check(unsafe { sys::pkv_cuda_device_count(&mut count) })?;
    Ok(count.max(0) as usize)
}

/// The library's default INT4 rotation signs (`pkv_default_rotation_signs`): `n` values
/// +1.0 / -1.0, deterministic; every head size uses a prefix of the same sequence.
///
/// ```
/// let signs = pagedkv::default_rotation_signs(128);
/// assert!(signs.iter().all(|&s| s == 1.0 || s == -1.0));
/// assert_eq!(pagedkv::default_rotation_signs(64), signs[..64]);
/// ```
pub fn default_rotation_signs(n: usize) -> Vec<f32> {
    let mut out = vec![0.0f32; n];
    // SAFETY: out holds n floats.
    let status = unsafe { sys::pkv_default_rotation_signs(out.as_mut_ptr(), n as i64) };
    debug_assert_eq!(status, sys::pkv_status::PKV_SUCCESS);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_matches_the_header() {
        check_version().unwrap();
        assert_eq!(version() / 100, HEADER_VERSION / 100);
        assert_eq!(build_info().get("version"), Some(version_string()));
        assert!(build_info().get("no_such_key").is_none());
    }

    #[test]
    fn status_names() {
        assert_eq!(Status::OutOfBlocks.name(), "PKV_ERROR_OUT_OF_BLOCKS");
        assert_eq!(Status::try_from(9u32).unwrap(), Status::Busy);
        assert!(Status::try_from(0u32).is_err(), "success is not a failure status");
        for &s in Status::ALL {
            assert_eq!(Status::try_from(s.raw()).unwrap(), s);
            assert!(s.name().starts_with("PKV_ERROR_"));
        }
    }

    #[test]
    fn error_display() {
        let e = Error::new(Status::InvalidState, "pkv_x: y");
        assert_eq!(e.to_string(), "PKV_ERROR_INVALID_STATE: pkv_x: y");
        assert_eq!(e.raw_status(), 2);
        assert_eq!(e.cuda_error(), None);
        let boxed: Box<dyn std::error::Error> = Box::new(e);
        assert!(boxed.to_string().contains("pkv_x"));
    }

    #[test]
    fn cuda_device_count_works_without_a_gpu() {
        let n = cuda_device_count().unwrap();
        if !build_info().has_cuda() {
            assert_eq!(n, 0);
        }
    }
}
