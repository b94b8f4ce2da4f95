//! [`Stream`]: a CUDA stream handle.

use std::ffi::c_void;
use std::ptr;

use crate::error::{Result, check};
use crate::sys;

/// A CUDA stream (`pkv_stream`, the same handle as `cudaStream_t` / `CUstream`).
///
/// Ops on CPU memory ignore the stream and run synchronously; pass [`Stream::DEFAULT`]. For
/// CUDA memory the ops are enqueued on the stream and return; like the C API they never
/// synchronize.
///
/// ```
/// use pagedkv::Stream;
/// let s = Stream::DEFAULT;
/// assert!(s.is_default());
/// s.synchronize().unwrap(); // a no-op without CUDA
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Stream(sys::pkv_stream);

// SAFETY: a CUDA stream handle is a plain token usable from any host thread (the CUDA
// runtime is thread-safe); this type never dereferences it.
unsafe impl Send for Stream {}
// SAFETY: as for Send: sharing the token shares no Rust state.
unsafe impl Sync for Stream {}

impl Stream {
    /// The legacy default stream (NULL).
    pub const DEFAULT: Stream = Stream(ptr::null_mut());

    /// Wraps a `cudaStream_t` / `CUstream` of the caller.
    ///
    /// # Safety
    /// `stream` is NULL or a live CUDA stream of the device of the memory it is used with, and
    /// stays alive while work enqueued on it through this crate runs. The crate cannot check
    /// a foreign stream.
    pub const unsafe fn from_raw(stream: *mut c_void) -> Stream {
        Stream(stream.cast())
    }

    /// The raw handle (NULL for [`Stream::DEFAULT`]).
    pub const fn as_raw(self) -> sys::pkv_stream {
        self.0
    }

    /// Whether this is the legacy default stream.
    pub fn is_default(self) -> bool {
        self.0.is_null()
    }

    /// Blocks until the work on the stream is done (`pkv_stream_synchronize`); a no-op in a
    /// build without CUDA and for the default stream without a CUDA driver or device.
    pub fn synchronize(self) -> Result<()> {
        // SAFETY: the handle is NULL or a live stream (from_raw's contract).
        check(unsafe { sys::pkv_stream_synchronize(self.0) })
    }
}

impl Default for Stream {
    /// [`Stream::DEFAULT`].
    fn default() -> Self {
        Stream::DEFAULT
    }
}
