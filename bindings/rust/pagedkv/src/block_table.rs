//! [`BlockTable`]: request ids -> blocks of a pool, and its device mirror ([`BatchMirror`]).

use std::fmt;
use std::marker::PhantomData;
use std::mem::size_of;
use std::ptr::{self, NonNull};

use crate::error::{Error, Result, check};
use crate::pool::Pool;
use crate::stream::Stream;
use crate::sys;
use crate::tensor::TensorRef;

/// Capacity of a block table's device mirror (`pkv_block_table_params`); 0 = the library
/// default.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BlockTableParams {
    /// Rows of the mirror (requests per upload); 0 = 256.
    pub max_batch: i64,
    /// Columns of the mirror (blocks per request); 0 = 512.
    pub max_blocks: i64,
    /// New tokens per upload (slot mapping length); 0 = 8192.
    pub max_tokens: i64,
}

/// Maps request ids (`u64`) to the blocks of a [`Pool`] (`pkv_block_table`): append tokens
/// (allocating blocks and returning their slots), fork with copy-on-write, truncate
/// (speculative rollback), remove; and upload a batch's block table, slot mapping, seq_lens
/// and query_start_loc to a mirror at fixed device addresses ([`BlockTable::mirror`]).
///
/// Borrows its pool; dropping it releases every request's blocks
/// (`pkv_block_table_destroy`).
///
/// ```
/// use pagedkv::{BlockTableParams, CacheFormat, LayerSpec, Pool, Stream};
/// let pool = Pool::builder().block_size(4).num_blocks(16)
///     .layer(LayerSpec::new(CacheFormat::F32, 2, 8)).build()?;
/// let mut table = pool.block_table(BlockTableParams::default())?;
/// table.add(7)?;
/// let slots = table.append(7, 6, Stream::DEFAULT)?;     // 6 tokens: 2 blocks
/// assert_eq!(slots.len(), 6);
/// table.fork(7, 8)?;                                     // shares both blocks
/// table.truncate(8, 4)?;                                 // drops its share of the second
/// assert_eq!(table.blocks(8)?.len(), 1);
/// assert_eq!(table.num_tokens(7)?, 6);
/// # Ok::<(), pagedkv::Error>(())
/// ```
pub struct BlockTable<'p> {
    raw: NonNull<sys::pkv_block_table>,
    _pool: PhantomData<&'p Pool>,
}

impl<'p> BlockTable<'p> {
    /// A table over `pool` (also [`Pool::block_table`]): allocates the mirror and its pinned
    /// staging.
    pub fn new(pool: &'p Pool, params: BlockTableParams) -> Result<Self> {
        let raw_params = sys::pkv_block_table_params {
            struct_size: size_of::<sys::pkv_block_table_params>(),
            flags: 0,
            max_batch: params.max_batch,
            max_blocks: params.max_blocks,
            max_tokens: params.max_tokens,
        };
        let mut raw = ptr::null_mut();
        // SAFETY: out-pointer and params are valid; the pool is live for 'p.
        check(unsafe { sys::pkv_block_table_create(&mut raw, pool.as_raw(), &raw_params) })?;
        let raw =
            NonNull::new(raw).ok_or_else(|| Error::new(crate::Status::Internal, "pkv_block_table_create gave NULL"))?;
        Ok(BlockTable { raw, _pool: PhantomData })
    }

    /// The raw handle (the table still owns it).
    pub fn as_raw(&self) -> *mut sys::pkv_block_table {
        self.raw.as_ptr()
    }

    /// Adds an empty request (an error if the id exists).
    pub fn add(&mut self, request: u64) -> Result<()> {
        // SAFETY: the table is live and used by this thread only (&mut).
        check(unsafe { sys::pkv_block_table_add(self.raw.as_ptr(), request) })
    }

    /// Appends `n` tokens to a request and returns their slots (block * block_size +
    /// offset). Blocks are allocated as needed; a shared partial last block (after a fork) is
    /// first replaced by a private copy, enqueued on `stream` (copy-on-write).
    /// [`Status::OutOfBlocks`](crate::Status::OutOfBlocks): nothing changed.
    pub fn append(&mut self, request: u64, n: usize, stream: Stream) -> Result<Vec<i64>> {
        let mut slots = vec![0i64; n];
        self.append_into(request, &mut slots, stream)?;
        Ok(slots)
    }

    /// [`append`](Self::append) of `slots.len()` tokens, writing their slots into `slots`.
    pub fn append_into(&mut self, request: u64, slots: &mut [i64], stream: Stream) -> Result<()> {
        // SAFETY: slots has room for n slots; the table is used by this thread only.
        check(unsafe {
            sys::pkv_block_table_append(
                slots.as_mut_ptr(),
                self.raw.as_ptr(),
                request,
                slots.len() as i64,
                stream.as_raw(),
            )
        })
    }

    /// A new request `child` sharing all of `parent`'s blocks and tokens.
    pub fn fork(&mut self, parent: u64, child: u64) -> Result<()> {
        // SAFETY: the table is live and used by this thread only.
        check(unsafe { sys::pkv_block_table_fork(self.raw.as_ptr(), parent, child) })
    }

    /// Keeps the first `n` tokens of a request, releasing whole blocks past them.
    pub fn truncate(&mut self, request: u64, n: i64) -> Result<()> {
        // SAFETY: the table is live and used by this thread only.
        check(unsafe { sys::pkv_block_table_truncate(self.raw.as_ptr(), request, n) })
    }

    /// Releases a request's blocks and forgets it.
    pub fn remove(&mut self, request: u64) -> Result<()> {
        // SAFETY: the table is live and used by this thread only.
        check(unsafe { sys::pkv_block_table_remove(self.raw.as_ptr(), request) })
    }

    /// Token count of a request.
    pub fn num_tokens(&self, request: u64) -> Result<i64> {
        let mut out = 0;
        // SAFETY: out is a valid out-pointer.
        check(unsafe { sys::pkv_block_table_num_tokens(&mut out, self.raw.as_ptr(), request) })?;
        Ok(out)
    }

    /// A request's block ids, in order.
    pub fn blocks(&self, request: u64) -> Result<Vec<i32>> {
        let mut count = 0i64;
        // SAFETY: capacity 0: only the count is written.
        check(unsafe { sys::pkv_block_table_blocks(ptr::null_mut(), 0, &mut count, self.raw.as_ptr(), request) })?;
        let mut ids = vec![0i32; count.max(0) as usize];
        // SAFETY: ids has room for `capacity` ids; at most that many are written.
        check(unsafe {
            sys::pkv_block_table_blocks(ids.as_mut_ptr(), ids.len() as i64, &mut count, self.raw.as_ptr(), request)
        })?;
        ids.truncate(count.max(0) as usize);
        Ok(ids)
    }

    /// Fills the mirror for a batch (`pkv_block_table_upload`): row `b` is `requests[b]`
    /// with its blocks and token count, and its last `new_tokens[b]` tokens are the step's new
    /// tokens (slot mapping, query_start_loc). One async copy on `stream` for a CUDA pool.
    pub fn upload(&mut self, requests: &[u64], new_tokens: &[i64], stream: Stream) -> Result<()> {
        if requests.len() != new_tokens.len() {
            return Err(Error::invalid(format!(
                "BlockTable::upload: {} requests and {} new-token counts",
                requests.len(),
                new_tokens.len()
            )));
        }
        // SAFETY: both arrays hold `batch` entries, read before return; the mirror is not
        // borrowed (BatchMirror borrows the table, and this takes &mut).
        check(unsafe {
            sys::pkv_block_table_upload(
                self.raw.as_ptr(),
                requests.as_ptr(),
                new_tokens.as_ptr(),
                requests.len() as i64,
                stream.as_raw(),
            )
        })
    }

    /// The device mirror of the last upload (`pkv_block_table_mirror`): tensors at fixed
    /// addresses, on the pool's device, borrowed from the table.
    pub fn mirror(&self) -> Result<BatchMirror<'_>> {
        // SAFETY: zero is valid for every field.
        let mut raw: sys::pkv_batch_mirror = unsafe { std::mem::zeroed() };
        raw.struct_size = size_of::<sys::pkv_batch_mirror>();
        // SAFETY: raw is a valid out-struct.
        check(unsafe { sys::pkv_block_table_mirror(&mut raw, self.raw.as_ptr()) })?;
        Ok(BatchMirror { raw, _table: PhantomData })
    }
}

impl Drop for BlockTable<'_> {
    fn drop(&mut self) {
        // SAFETY: the handle is live and destroyed once.
        let status = unsafe { sys::pkv_block_table_destroy(self.raw.as_ptr()) };
        debug_assert_eq!(status, sys::pkv_status::PKV_SUCCESS, "pkv_block_table_destroy");
    }
}

impl fmt::Debug for BlockTable<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BlockTable").field("raw", &self.raw).finish()
    }
}

/// The device mirror of a [`BlockTable`] (`pkv_batch_mirror`), as filled by the last
/// [`BlockTable::upload`]. Its tensors live at fixed addresses for the table's lifetime
/// (what a captured CUDA graph reads); the `step_*` tensors are cut to the last upload.
#[derive(Clone, Copy)]
pub struct BatchMirror<'t> {
    raw: sys::pkv_batch_mirror,
    _table: PhantomData<&'t ()>,
}

impl<'t> BatchMirror<'t> {
    /// SAFETY of every view: the mirror's memory belongs to the table, lives as long as its
    /// borrow and is only rewritten by upload, which needs `&mut BlockTable`.
    fn view(&self, raw: &sys::pkv_tensor) -> TensorRef<'t> {
        // SAFETY: see above; the library describes the tensors' shapes and strides.
        unsafe { TensorRef::from_raw(*raw) }
    }

    /// `[max_batch, max_blocks]` I32 block ids; unused entries 0.
    pub fn block_table(&self) -> TensorRef<'t> {
        self.view(&self.raw.block_table)
    }

    /// `[max_tokens]` I64 slots of the new tokens; unused entries -1 (padding).
    pub fn slot_mapping(&self) -> TensorRef<'t> {
        self.view(&self.raw.slot_mapping)
    }

    /// `[max_batch]` I32 token counts after the step; unused 0.
    pub fn seq_lens(&self) -> TensorRef<'t> {
        self.view(&self.raw.seq_lens)
    }

    /// `[max_batch + 1]` I32 prefix sums of the new tokens; unused entries = the total.
    pub fn query_start_loc(&self) -> TensorRef<'t> {
        self.view(&self.raw.query_start_loc)
    }

    /// Rows filled by the last upload.
    pub fn batch(&self) -> i64 {
        self.raw.batch
    }

    /// Slots filled by the last upload.
    pub fn num_tokens(&self) -> i64 {
        self.raw.num_tokens
    }

    /// The block table cut to the last upload's `batch` rows.
    pub fn step_block_table(&self) -> TensorRef<'t> {
        self.block_table().narrow(0, self.raw.batch).expect("batch <= max_batch")
    }

    /// The slot mapping cut to the last upload's tokens.
    pub fn step_slot_mapping(&self) -> TensorRef<'t> {
        self.slot_mapping().narrow(0, self.raw.num_tokens).expect("num_tokens <= max_tokens")
    }

    /// seq_lens cut to the last upload's `batch` rows.
    pub fn step_seq_lens(&self) -> TensorRef<'t> {
        self.seq_lens().narrow(0, self.raw.batch).expect("batch <= max_batch")
    }

    /// query_start_loc cut to `batch + 1` entries: the cu_seq_lens of the step's new tokens.
    pub fn step_query_start_loc(&self) -> TensorRef<'t> {
        self.query_start_loc().narrow(0, self.raw.batch + 1).expect("batch + 1 <= max_batch + 1")
    }
}

impl fmt::Debug for BatchMirror<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BatchMirror")
            .field("block_table", &self.block_table())
            .field("slot_mapping", &self.slot_mapping())
            .field("seq_lens", &self.seq_lens())
            .field("query_start_loc", &self.query_start_loc())
            .field("batch", &self.raw.batch)
            .field("num_tokens", &self.raw.num_tokens)
            .finish()
    }
}
