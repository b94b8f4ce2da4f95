//! [`Slots`]: request-slot ids that index per-request state.

use std::fmt;
use std::marker::PhantomData;
use std::ptr::{self, NonNull};

use crate::error::{Error, Result, check};
use crate::memory::BufferMut;
use crate::pool::Pool;
use crate::stream::Stream;
use crate::sys;
use crate::types::Device;

/// Hands out request-slot ids in `0..max_requests` (`pkv_slots`) and resets the per-request
/// state regions registered with it when a slot is acquired.
///
/// Borrows its pool, and for `'p` the memory of its regions; dropping it frees it
/// (`pkv_slots_destroy`).
///
/// ```
/// use pagedkv::{CacheFormat, LayerSpec, Pool, Status, Stream};
/// let pool = Pool::builder().block_size(4).num_blocks(4)
///     .layer(LayerSpec::new(CacheFormat::F32, 1, 4)).build()?;
/// let mut state = vec![0u32; 2 * 4];                 // 2 requests x 4 words of state
/// {
///     let mut slots = pool.slots(2)?;
///     slots.register_region(&mut state, 16, 16, 0xFFFF_FFFF)?;
///     let a = slots.acquire(Stream::DEFAULT)?;      // resets slot a's 4 words
///     let b = slots.acquire(Stream::DEFAULT)?;
///     assert_eq!((a, b), (0, 1));
///     let full = slots.acquire(Stream::DEFAULT).unwrap_err();
///     assert_eq!(full.status(), Status::OutOfBlocks);
///     slots.release(a)?;
/// }
/// assert!(state.iter().all(|&w| w == 0xFFFF_FFFF));
/// # Ok::<(), pagedkv::Error>(())
/// ```
pub struct Slots<'p> {
    raw: NonNull<sys::pkv_slots>,
    device: Device,
    max_requests: i32,
    _borrows: PhantomData<(&'p Pool, &'p mut [u8])>,
}

impl<'p> Slots<'p> {
    /// A slots object over `pool`'s device (also [`Pool::slots`]).
    pub fn new(pool: &'p Pool, max_requests: i32) -> Result<Self> {
        let mut raw = ptr::null_mut();
        // SAFETY: out-pointer valid; the pool is live for 'p.
        check(unsafe { sys::pkv_slots_create(&mut raw, pool.as_raw(), max_requests) })?;
        let raw = NonNull::new(raw).ok_or_else(|| Error::new(crate::Status::Internal, "pkv_slots_create gave NULL"))?;
        Ok(Slots { raw, device: pool.device(), max_requests, _borrows: PhantomData })
    }

    /// The raw handle (the slots object still owns it).
    pub fn as_raw(&self) -> *mut sys::pkv_slots {
        self.raw.as_ptr()
    }

    /// Number of slot ids.
    pub fn max_requests(&self) -> i32 {
        self.max_requests
    }

    /// Registers a per-request state region on the pool's device, borrowed for the slots'
    /// lifetime: slot `s` owns bytes `s * slot_stride .. s * slot_stride + bytes_per_slot`
    /// of `region`, set to the 32-bit pattern `fill` on acquire. Both sizes are multiples of
    /// 4 and `slot_stride >= bytes_per_slot`; at most 16 regions.
    pub fn register_region(
        &mut self,
        region: impl Into<BufferMut<'p>>,
        bytes_per_slot: i64,
        slot_stride: i64,
        fill: u32,
    ) -> Result<()> {
        let region = region.into();
        let last = i64::from(self.max_requests - 1);
        let need = last.checked_mul(slot_stride).and_then(|x| x.checked_add(bytes_per_slot));
        let need = match need {
            Some(n) if n > 0 && slot_stride >= 0 => n as usize,
            _ => {
                return Err(Error::invalid(format!(
                    "Slots::register_region: bytes_per_slot {bytes_per_slot}, slot_stride {slot_stride}"
                )));
            }
        };
        region.require("Slots::register_region: region", self.device, need, 4)?;
        // SAFETY: the region holds every slot's bytes (checked), is on the pool's device, and
        // stays borrowed mutably for 'p, the slots object's lifetime.
        check(unsafe {
            sys::pkv_slots_register_region(self.raw.as_ptr(), region.ptr.cast(), bytes_per_slot, slot_stride, fill)
        })
    }

    /// Takes the lowest free slot id and resets its regions (one kernel on `stream` for a
    /// CUDA pool). [`Status::OutOfBlocks`](crate::Status::OutOfBlocks) when every slot is
    /// taken: nothing changes.
    pub fn acquire(&mut self, stream: Stream) -> Result<i32> {
        let mut slot = -1;
        // SAFETY: out-pointer valid; the regions are live (borrowed for 'p).
        check(unsafe { sys::pkv_slots_acquire(&mut slot, self.raw.as_ptr(), stream.as_raw()) })?;
        Ok(slot)
    }

    /// Gives a slot back (an error if it is not acquired).
    pub fn release(&mut self, slot: i32) -> Result<()> {
        // SAFETY: the handle is live and used by this thread only.
        check(unsafe { sys::pkv_slots_release(self.raw.as_ptr(), slot) })
    }
}

impl Drop for Slots<'_> {
    fn drop(&mut self) {
        // SAFETY: the handle is live and destroyed once.
        let status = unsafe { sys::pkv_slots_destroy(self.raw.as_ptr()) };
        debug_assert_eq!(status, sys::pkv_status::PKV_SUCCESS, "pkv_slots_destroy");
    }
}

impl fmt::Debug for Slots<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Slots")
            .field("device", &self.device)
            .field("max_requests", &self.max_requests)
            .finish_non_exhaustive()
    }
}
