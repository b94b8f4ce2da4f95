//! [`Pool`]: cache memory for a schema of layers, a reference-counted block allocator and an
//! optional host tier; [`PoolBuilder`], [`LayerSpec`], [`PoolStats`].

use std::fmt;
use std::mem::size_of;
use std::ptr::{self, NonNull};

use crate::block_table::{BlockTable, BlockTableParams};
use crate::cache::CacheView;
use crate::error::{Error, Result, check};
use crate::memory::{BufferMut, BufferRef};
use crate::slots::Slots;
use crate::stream::Stream;
use crate::sys;
use crate::tensor::TensorRef;
use crate::types::{BlockOrder, CacheFormat, Device, HeadLayout, ScaleMode, Tier};

/// One layer of a pool's schema (`pkv_layer_spec`). Pools hold plain (F32 / F16 / BF16) and
/// FP8 (per tensor or per head) layers, NHD or HND, K/V or K-only.
///
/// ```
/// use pagedkv::{CacheFormat, HeadLayout, LayerSpec, ScaleMode};
/// let kv = LayerSpec::new(CacheFormat::FP8E4M3, 8, 128).layout(HeadLayout::Hnd).scale_mode(ScaleMode::PerHead);
/// let mla = LayerSpec::new(CacheFormat::BF16, 1, 576).k_only();
/// assert!(mla.is_k_only() && !kv.is_k_only());
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LayerSpec {
    format: CacheFormat,
    layout: HeadLayout,
    scale_mode: ScaleMode,
    num_heads: i64,
    head_size_k: i64,
    head_size_v: i64,
    k_only: bool,
}

impl LayerSpec {
    /// A K/V layer of `num_heads` KV heads of `head_size` elements, NHD, per-tensor scales.
    pub fn new(format: CacheFormat, num_heads: i64, head_size: i64) -> Self {
        LayerSpec {
            format,
            layout: HeadLayout::Nhd,
            scale_mode: ScaleMode::PerTensor,
            num_heads,
            head_size_k: head_size,
            head_size_v: 0,
            k_only: false,
        }
    }

    /// Head layout inside a block.
    pub fn layout(mut self, layout: HeadLayout) -> Self {
        self.layout = layout;
        self
    }

    /// Scale granularity of an FP8 layer (scales start at 1.0; see [`Pool::set_scales`]).
    pub fn scale_mode(mut self, mode: ScaleMode) -> Self {
        self.scale_mode = mode;
        self
    }

    /// Head size of V when it differs from K's.
    pub fn head_size_v(mut self, head_size_v: i64) -> Self {
        self.head_size_v = head_size_v;
        self
    }

    /// No V (an MLA latent cache; `PKV_LAYER_K_ONLY`).
    pub fn k_only(mut self) -> Self {
        self.k_only = true;
        self
    }

    /// The cache format.
    pub fn format(&self) -> CacheFormat {
        self.format
    }

    /// KV heads.
    pub fn num_heads(&self) -> i64 {
        self.num_heads
    }

    /// Whether the layer has no V.
    pub fn is_k_only(&self) -> bool {
        self.k_only
    }

    /// Scales of one side that [`Pool::set_scales`] takes: 1, or `num_heads` per head.
    fn scale_count(&self) -> usize {
        match self.scale_mode {
            ScaleMode::PerHead => self.num_heads.max(0) as usize,
            ScaleMode::PerTensor => 1,
        }
    }

    fn raw(&self) -> sys::pkv_layer_spec {
        sys::pkv_layer_spec {
            struct_size: size_of::<sys::pkv_layer_spec>(),
            flags: if self.k_only { sys::PKV_LAYER_K_ONLY } else { 0 },
            format: self.format.raw(),
            layout: self.layout.raw(),
            scale_mode: self.scale_mode.raw(),
            num_heads: self.num_heads,
            head_size_k: self.head_size_k,
            head_size_v: self.head_size_v,
        }
    }
}

/// Parameters of [`Pool::builder`]: device, block size, the layers, the number of blocks
/// (or a memory budget) and the host tier.
#[derive(Clone, Debug)]
#[must_use]
pub struct PoolBuilder {
    device: Device,
    block_size: i64,
    layers: Vec<LayerSpec>,
    num_blocks: i64,
    memory_bytes: usize,
    host_blocks: i64,
}

impl PoolBuilder {
    /// The pool's device (CPU by default).
    pub fn device(mut self, device: Device) -> Self {
        self.device = device;
        self
    }

    /// Tokens per block (required).
    pub fn block_size(mut self, block_size: i64) -> Self {
        self.block_size = block_size;
        self
    }

    /// Appends a layer.
    pub fn layer(mut self, layer: LayerSpec) -> Self {
        self.layers.push(layer);
        self
    }

    /// Appends layers.
    pub fn layers(mut self, layers: impl IntoIterator<Item = LayerSpec>) -> Self {
        self.layers.extend(layers);
        self
    }

    /// Device-tier blocks (< 2^31).
    pub fn num_blocks(mut self, num_blocks: i64) -> Self {
        self.num_blocks = num_blocks;
        self
    }

    /// Byte budget, used to size the pool when no block count is given.
    pub fn memory_bytes(mut self, bytes: usize) -> Self {
        self.memory_bytes = bytes;
        self
    }

    /// Blocks of the pinned host tier (0 = none).
    pub fn host_blocks(mut self, blocks: i64) -> Self {
        self.host_blocks = blocks;
        self
    }

    /// Creates the pool (`pkv_pool_create`): one allocation, contents unspecified, FP8 scales
    /// 1.0.
    pub fn build(self) -> Result<Pool> {
        let specs: Vec<sys::pkv_layer_spec> = self.layers.iter().map(LayerSpec::raw).collect();
        let params = sys::pkv_pool_params {
            struct_size: size_of::<sys::pkv_pool_params>(),
            flags: 0,
            device: self.device.raw(),
            block_size: self.block_size,
            num_layers: specs.len() as i64,
            layers: if specs.is_empty() { ptr::null() } else { specs.as_ptr() },
            num_blocks: self.num_blocks,
            memory_bytes: self.memory_bytes,
            num_host_blocks: self.host_blocks,
        };
        let mut raw = ptr::null_mut();
        // SAFETY: params and the specs it points to are valid for the call (copied by it).
        check(unsafe { sys::pkv_pool_create(&mut raw, &params) })?;
        let raw = NonNull::new(raw).ok_or_else(|| Error::new(crate::Status::Internal, "pkv_pool_create gave NULL"))?;
        let mut pool = Pool { raw, device: self.device, layers: self.layers, stats: PoolStats::default() };
        pool.stats = pool.stats()?;
        Ok(pool)
    }
}

/// Counters of a pool (`pkv_pool_stats`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PoolStats {
    /// Tokens per block.
    pub block_size: i64,
    /// Layers.
    pub num_layers: i64,
    /// Device-tier blocks.
    pub total_blocks: i64,
    /// Free device-tier blocks.
    pub free_blocks: i64,
    /// Host-tier blocks.
    pub total_host_blocks: i64,
    /// Free host-tier blocks.
    pub free_host_blocks: i64,
    /// Bytes of one block: all layers, K and V, padding included.
    pub bytes_per_block: i64,
}

/// A pool of cache blocks (`pkv_pool`): the memory of every layer in one block-major
/// allocation on one device, a reference-counted block allocator, and an optional pinned host
/// tier for offload. Each layer is a [`CacheView`] for the ops.
///
/// A [`BlockTable`] or [`Slots`] borrows its pool, so the pool cannot be dropped while they
/// live; dropping it destroys it (`pkv_pool_destroy`). A pool can move to another thread
/// (`Send`) but is not shared between threads (not `Sync`): its views write its memory
/// through shared references.
///
/// ```
/// use pagedkv::{CacheFormat, Device, LayerSpec, Pool, Tier};
/// let pool = Pool::builder()
///     .device(Device::CPU)
///     .block_size(16)
///     .num_blocks(64)
///     .layer(LayerSpec::new(CacheFormat::BF16, 8, 128))
///     .build()?;
/// let ids = pool.alloc_blocks(Tier::Device, 3)?;
/// assert_eq!(pool.stats()?.free_blocks, 61);
/// pool.release_blocks(Tier::Device, &ids)?;
/// assert_eq!(pool.layer_view(0, Tier::Device)?.num_blocks(), 64);
/// # Ok::<(), pagedkv::Error>(())
/// ```
///
/// The borrow checker keeps a pool alive while its block tables are:
///
/// ```compile_fail,E0505
/// # use pagedkv::{CacheFormat, LayerSpec, Pool, BlockTableParams};
/// let pool = Pool::builder().block_size(4).num_blocks(8)
///     .layer(LayerSpec::new(CacheFormat::F32, 1, 4)).build().unwrap();
/// let table = pool.block_table(BlockTableParams::default()).unwrap();
/// drop(pool); // error: `pool` is borrowed by `table`
/// drop(table);
/// ```
pub struct Pool {
    raw: NonNull<sys::pkv_pool>,
    device: Device,
    layers: Vec<LayerSpec>,
    stats: PoolStats,
}

// SAFETY: the pool owns its handle; the C API lets any thread use a handle as long as one
// thread uses it at a time, which `&mut` / not being Sync guarantees.
unsafe impl Send for Pool {}

impl Pool {
    /// Starts a pool description.
    pub fn builder() -> PoolBuilder {
        PoolBuilder {
            device: Device::CPU,
            block_size: 0,
            layers: Vec::new(),
            num_blocks: 0,
            memory_bytes: 0,
            host_blocks: 0,
        }
    }

    /// The raw handle (for the raw API; the pool still owns it).
    pub fn as_raw(&self) -> *mut sys::pkv_pool {
        self.raw.as_ptr()
    }

    /// The pool's device.
    pub fn device(&self) -> Device {
        self.device
    }

    /// The layers.
    pub fn layers(&self) -> &[LayerSpec] {
        &self.layers
    }

    /// Tokens per block.
    pub fn block_size(&self) -> i64 {
        self.stats.block_size
    }

    /// Device-tier blocks.
    pub fn num_blocks(&self) -> i64 {
        self.stats.total_blocks
    }

    /// Host-tier blocks.
    pub fn num_host_blocks(&self) -> i64 {
        self.stats.total_host_blocks
    }

    /// Bytes of one block (all layers).
    pub fn bytes_per_block(&self) -> i64 {
        self.stats.bytes_per_block
    }

    /// Layer `layer` as a cache view of the device tier or the host tier (`pkv_pool_layer_view`).
    pub fn layer_view(&self, layer: usize, tier: Tier) -> Result<CacheView<'_>> {
        let mut raw = crate::cache::new_raw_view();
        // SAFETY: raw is a valid out-struct with struct_size set; the pool is live.
        check(unsafe { sys::pkv_pool_layer_view(&mut raw, self.raw.as_ptr(), layer as i64, tier.raw()) })?;
        // SAFETY: the view addresses the pool's memory, which lives as long as the pool
        // borrow; Rust holds no references into it.
        Ok(unsafe { CacheView::from_raw(raw) })
    }

    /// A snapshot of the allocator's counters (`pkv_pool_get_stats`).
    pub fn stats(&self) -> Result<PoolStats> {
        // SAFETY: zero is valid for every field.
        let mut raw: sys::pkv_pool_stats = unsafe { std::mem::zeroed() };
        raw.struct_size = size_of::<sys::pkv_pool_stats>();
        // SAFETY: raw is a valid out-struct; the pool is live.
        check(unsafe { sys::pkv_pool_get_stats(&mut raw, self.raw.as_ptr()) })?;
        Ok(PoolStats {
            block_size: raw.block_size,
            num_layers: raw.num_layers,
            total_blocks: raw.total_blocks,
            free_blocks: raw.free_blocks,
            total_host_blocks: raw.total_host_blocks,
            free_host_blocks: raw.free_host_blocks,
            bytes_per_block: raw.bytes_per_block,
        })
    }

    /// Bytes one token occupies in layer `layer` (K and V).
    pub fn bytes_per_token(&self, layer: usize) -> Result<i64> {
        let mut out = 0;
        // SAFETY: out is a valid out-pointer; the pool is live.
        check(unsafe { sys::pkv_pool_bytes_per_token(&mut out, self.raw.as_ptr(), layer as i64) })?;
        Ok(out)
    }

    /// Sets an FP8 layer's scales: one per side, or `num_heads` with
    /// [`ScaleMode::PerHead`]; `v_scales` is None for a K-only layer. Enqueued on `stream`
    /// for a CUDA pool (the slices may be reused on return).
    pub fn set_scales(&self, layer: usize, k_scales: &[f32], v_scales: Option<&[f32]>, stream: Stream) -> Result<()> {
        if let Some(spec) = self.layers.get(layer) {
            let need = spec.scale_count();
            let lens = [("k_scales", Some(k_scales.len())), ("v_scales", v_scales.map(<[f32]>::len))];
            if let Some((name, Some(len))) = lens.into_iter().find(|&(_, len)| len.is_some_and(|n| n != need)) {
                return Err(Error::invalid(format!(
                    "Pool::set_scales: {name} has {len} values, layer {layer} takes {need}"
                )));
            }
        }
        // SAFETY: each array holds the scale count of the layer (checked above; an unknown
        // layer is rejected before the arrays are read).
        check(unsafe {
            sys::pkv_pool_set_scales(
                self.raw.as_ptr(),
                layer as i64,
                k_scales.as_ptr(),
                v_scales.map_or(ptr::null(), <[f32]>::as_ptr),
                stream.as_raw(),
            )
        })
    }

    /// Allocates `n` blocks of a tier (reference count 1). [`Status::OutOfBlocks`] when
    /// fewer are free: nothing is allocated.
    ///
    /// [`Status::OutOfBlocks`]: crate::Status::OutOfBlocks
    pub fn alloc_blocks(&self, tier: Tier, n: usize) -> Result<Vec<i32>> {
        let mut ids = vec![0i32; n];
        // SAFETY: ids has room for n ids.
        check(unsafe { sys::pkv_pool_alloc_blocks(ids.as_mut_ptr(), self.raw.as_ptr(), tier.raw(), n as i64) })?;
        Ok(ids)
    }

    /// Adds one reference to each block.
    pub fn retain_blocks(&self, tier: Tier, ids: &[i32]) -> Result<()> {
        // SAFETY: ids is a live slice of its length.
        check(unsafe { sys::pkv_pool_retain_blocks(self.raw.as_ptr(), tier.raw(), ids.as_ptr(), ids.len() as i64) })
    }

    /// Drops one reference from each block; a block is free again at zero. Ids that are not
    /// allocated: an error and nothing changes.
    pub fn release_blocks(&self, tier: Tier, ids: &[i32]) -> Result<()> {
        // SAFETY: ids is a live slice of its length.
        check(unsafe { sys::pkv_pool_release_blocks(self.raw.as_ptr(), tier.raw(), ids.as_ptr(), ids.len() as i64) })
    }

    /// The reference count of a block (0 = free).
    pub fn block_refcount(&self, tier: Tier, id: i32) -> Result<i32> {
        let mut out = 0;
        // SAFETY: out is a valid out-pointer.
        check(unsafe { sys::pkv_pool_block_refcount(&mut out, self.raw.as_ptr(), tier.raw(), id) })?;
        Ok(out)
    }

    /// Copies device-tier blocks, every layer at once (copy-on-write; `pkv_pool_copy_blocks`):
    /// `pairs` is `[P, 2]` I32 or I64 `(src, dst)`, contiguous, on the pool's device. Ids
    /// outside the pool and pairs with src == dst are skipped.
    pub fn copy_blocks(&self, pairs: &TensorRef<'_>, stream: Stream) -> Result<()> {
        // SAFETY: pairs is a valid tensor (its constructor's checks); the library checks its
        // shape, dtype and device and copies inside the pool only.
        check(unsafe { sys::pkv_pool_copy_blocks(self.raw.as_ptr(), pairs.as_raw(), stream.as_raw()) })
    }

    /// Moves whole blocks (all layers) between tiers or within one (`pkv_pool_swap_blocks`):
    /// `dst_tier` block `dst_ids[i]` receives `src_tier` block `src_ids[i]`, in order.
    ///
    /// A CPU pool copies before return. For a CUDA pool the copies are enqueued on `stream`,
    /// and when either tier is the host tier this call also waits for the stream, so the host
    /// tier is never in flight while a host-tier [`CacheView`] could read or write it.
    pub fn swap_blocks(
        &self,
        src_tier: Tier,
        src_ids: &[i32],
        dst_tier: Tier,
        dst_ids: &[i32],
        stream: Stream,
    ) -> Result<()> {
        // SAFETY: as swap_blocks_async; the host tier is synchronized below.
        unsafe { self.swap_blocks_async(src_tier, src_ids, dst_tier, dst_ids, stream)? };
        if !self.device.is_host() && (src_tier == Tier::Host || dst_tier == Tier::Host) {
            stream.synchronize()?;
        }
        Ok(())
    }

    /// [`swap_blocks`](Self::swap_blocks) without the wait for a CUDA pool's host tier.
    ///
    /// # Safety
    /// Until the stream has run the copies, no host-tier view of this pool is used by an op
    /// on the CPU.
    pub unsafe fn swap_blocks_async(
        &self,
        src_tier: Tier,
        src_ids: &[i32],
        dst_tier: Tier,
        dst_ids: &[i32],
        stream: Stream,
    ) -> Result<()> {
        if src_ids.len() != dst_ids.len() {
            return Err(Error::invalid(format!(
                "Pool::swap_blocks: {} source ids and {} destination ids",
                src_ids.len(),
                dst_ids.len()
            )));
        }
        // SAFETY: both id arrays hold n ids, read before return; the library checks every id.
        check(unsafe {
            sys::pkv_pool_swap_blocks(
                self.raw.as_ptr(),
                src_tier.raw(),
                src_ids.as_ptr(),
                dst_tier.raw(),
                dst_ids.as_ptr(),
                src_ids.len() as i64,
                stream.as_raw(),
            )
        })
    }

    /// Bytes of a transfer buffer for `block_ids`, checked against `have`.
    fn transfer_bytes(&self, what: &str, block_ids: &TensorRef<'_>, have: usize) -> Result<()> {
        if block_ids.ndim() != 1 {
            return Ok(()); // the library rejects it before touching the buffer
        }
        let need = block_ids.shape()[0].checked_mul(self.bytes_per_block());
        match need {
            Some(n) if n as u128 <= have as u128 => Ok(()),
            _ => Err(Error::invalid(format!(
                "Pool::{what}: {} blocks of {} bytes do not fit in a buffer of {have} bytes",
                block_ids.shape()[0],
                self.bytes_per_block()
            ))),
        }
    }

    /// Gathers device-tier blocks (all layers) into a contiguous buffer of
    /// `n * bytes_per_block` bytes (`pkv_pool_gather_blocks`; KV transfer, storage).
    /// `block_ids`: `[n]` I32 / I64 on the pool's device; ids outside the pool are skipped.
    /// The buffer is host memory for a CPU pool, a [`DeviceBuffer`](crate::DeviceBuffer) of
    /// the pool's device for a CUDA pool.
    pub fn gather_blocks<'b>(
        &self,
        buffer: impl Into<BufferMut<'b>>,
        order: BlockOrder,
        block_ids: &TensorRef<'_>,
        stream: Stream,
    ) -> Result<()> {
        let buffer = buffer.into();
        self.transfer_bytes("gather_blocks", block_ids, buffer.bytes)?;
        // SAFETY: the buffer is borrowed mutably and holds n * bytes_per_block bytes; the
        // library checks the ids tensor and that the buffer's device is reachable.
        check(unsafe {
            sys::pkv_pool_gather_blocks(
                buffer.ptr.cast(),
                buffer.device.raw(),
                order.raw(),
                self.raw.as_ptr(),
                block_ids.as_raw(),
                stream.as_raw(),
            )
        })
    }

    /// Scatters a buffer made by [`gather_blocks`](Self::gather_blocks) back into blocks
    /// (`pkv_pool_scatter_blocks`).
    pub fn scatter_blocks<'b>(
        &self,
        block_ids: &TensorRef<'_>,
        buffer: impl Into<BufferRef<'b>>,
        order: BlockOrder,
        stream: Stream,
    ) -> Result<()> {
        let buffer = buffer.into();
        self.transfer_bytes("scatter_blocks", block_ids, buffer.bytes)?;
        // SAFETY: as gather_blocks; the buffer is only read.
        check(unsafe {
            sys::pkv_pool_scatter_blocks(
                self.raw.as_ptr(),
                block_ids.as_raw(),
                buffer.ptr.cast(),
                buffer.device.raw(),
                order.raw(),
                stream.as_raw(),
            )
        })
    }

    /// A block table over this pool (`pkv_block_table_create`).
    pub fn block_table(&self, params: BlockTableParams) -> Result<BlockTable<'_>> {
        BlockTable::new(self, params)
    }

    /// A slots object over this pool's device with ids `0..max_requests` (`pkv_slots_create`).
    pub fn slots<'p>(&'p self, max_requests: i32) -> Result<Slots<'p>> {
        Slots::new(self, max_requests)
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        // SAFETY: the handle is live and destroyed once; its block tables and slots borrow
        // the pool, so none is alive (no PKV_ERROR_BUSY).
        let status = unsafe { sys::pkv_pool_destroy(self.raw.as_ptr()) };
        debug_assert_eq!(status, sys::pkv_status::PKV_SUCCESS, "pkv_pool_destroy");
    }
}

impl fmt::Debug for Pool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pool")
            .field("device", &self.device)
            .field("layers", &self.layers)
            .field("block_size", &self.stats.block_size)
            .field("num_blocks", &self.stats.total_blocks)
            .field("num_host_blocks", &self.stats.total_host_blocks)
            .field("bytes_per_block", &self.stats.bytes_per_block)
            .finish()
    }
}
