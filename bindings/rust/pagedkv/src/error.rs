//! [`Error`], [`Status`] and the crate's [`Result`].

use std::ffi::CStr;
use std::fmt;

use crate::sys;

/// The result of every fallible call of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why a call failed: the `pkv_status` codes of the C API other than `PKV_SUCCESS`.
///
/// The values are pinned by the C API and never reused; [`Status::raw`] gives the code.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Status {
    /// A NULL pointer, bad shape, stride, dtype or value (`PKV_ERROR_INVALID_ARGUMENT`).
    InvalidArgument,
    /// The call is not valid for the object's state (`PKV_ERROR_INVALID_STATE`).
    InvalidState,
    /// Host memory ran out (`PKV_ERROR_OUT_OF_HOST_MEMORY`).
    OutOfHostMemory,
    /// Device memory ran out (`PKV_ERROR_OUT_OF_DEVICE_MEMORY`).
    OutOfDeviceMemory,
    /// The pool (or the slots object) is exhausted; recoverable: nothing changed
    /// (`PKV_ERROR_OUT_OF_BLOCKS`).
    OutOfBlocks,
    /// A valid request this build or device cannot serve (`PKV_ERROR_NOT_SUPPORTED`).
    NotSupported,
    /// A CUDA runtime call or launch failed (`PKV_ERROR_CUDA`); see [`Error::cuda_error`].
    Cuda,
    /// A `struct_size` was unset, too small, or an unknown tail was set
    /// (`PKV_ERROR_STRUCT_SIZE`).
    StructSize,
    /// The object still has live dependants (`PKV_ERROR_BUSY`).
    Busy,
    /// A bug in pagedkv (`PKV_ERROR_INTERNAL`); also how a status code unknown to this crate
    /// (from a newer library) reads: [`Error::raw_status`] has the code.
    Internal,
}

impl Status {
    /// Every status, in code order.
    pub const ALL: &'static [Status] = &[
        Status::InvalidArgument,
        Status::InvalidState,
        Status::OutOfHostMemory,
        Status::OutOfDeviceMemory,
        Status::OutOfBlocks,
        Status::NotSupported,
        Status::Cuda,
        Status::StructSize,
        Status::Busy,
        Status::Internal,
    ];

    /// The C value (`pkv_status`).
    pub const fn raw(self) -> sys::pkv_status {
        match self {
            Status::InvalidArgument => sys::pkv_status::PKV_ERROR_INVALID_ARGUMENT,
            Status::InvalidState => sys::pkv_status::PKV_ERROR_INVALID_STATE,
            Status::OutOfHostMemory => sys::pkv_status::PKV_ERROR_OUT_OF_HOST_MEMORY,
            Status::OutOfDeviceMemory => sys::pkv_status::PKV_ERROR_OUT_OF_DEVICE_MEMORY,
            Status::OutOfBlocks => sys::pkv_status::PKV_ERROR_OUT_OF_BLOCKS,
            Status::NotSupported => sys::pkv_status::PKV_ERROR_NOT_SUPPORTED,
            Status::Cuda => sys::pkv_status::PKV_ERROR_CUDA,
            Status::StructSize => sys::pkv_status::PKV_ERROR_STRUCT_SIZE,
            Status::Busy => sys::pkv_status::PKV_ERROR_BUSY,
            Status::Internal => sys::pkv_status::PKV_ERROR_INTERNAL,
        }
    }

    /// The library's name of the status (`"PKV_ERROR_INVALID_ARGUMENT"`).
    pub fn name(self) -> &'static str {
        // SAFETY: pkv_status_string accepts any value and returns static, NUL-terminated text.
        unsafe { static_str(sys::pkv_status_string(self.raw())) }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl TryFrom<sys::pkv_status> for Status {
    type Error = Error;

    /// A failure status; `PKV_SUCCESS` and unknown codes are an [`Status::InvalidArgument`]
    /// error.
    fn try_from(raw: sys::pkv_status) -> Result<Self> {
        Status::ALL
            .iter()
            .copied()
            .find(|s| s.raw() == raw)
            .ok_or_else(|| Error::invalid(format!("{} is not a pkv_status failure code", raw.0)))
    }
}

impl TryFrom<u32> for Status {
    type Error = Error;

    fn try_from(raw: u32) -> Result<Self> {
        Status::try_from(sys::pkv_status(raw))
    }
}

impl From<Status> for sys::pkv_status {
    fn from(status: Status) -> Self {
        status.raw()
    }
}

/// A failed call: the [`Status`] and the library's message, which names the function and the
/// argument ("pkv_write_kv: slot_mapping dtype must be int32 or int64, got f32").
///
/// Errors raised by this crate's own checks (slice bounds, lengths, devices) before calling
/// the library have status [`Status::InvalidArgument`] and a message naming the Rust item.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Error {
    status: Status,
    raw: u32,
    message: String,
    cuda_error: i32,
}

impl Error {
    /// Builds an error (for wrappers and tests); `raw_status` is the status's code.
    pub fn new(status: Status, message: impl Into<String>) -> Self {
        Error { status, raw: status.raw().0, message: message.into(), cuda_error: 0 }
    }

    /// An [`Status::InvalidArgument`] error with this message.
    pub(crate) fn invalid(message: impl Into<String>) -> Self {
        Error::new(Status::InvalidArgument, message)
    }

    /// The error of a failing call, with this thread's last-error message, which must be read
    /// before any other pkv call (it is valid until the next one).
    fn last(raw: sys::pkv_status) -> Self {
        // SAFETY: never NULL; thread-local text valid until the next pkv call, copied here
        // before the next one.
        let message = unsafe { CStr::from_ptr(sys::pkv_last_error_message()) }.to_string_lossy().into_owned();
        let status = Status::try_from(raw).unwrap_or(Status::Internal);
        let cuda_error = if status == Status::Cuda {
            // SAFETY: no arguments; reads this thread's state.
            unsafe { sys::pkv_last_cuda_error() }
        } else {
            0
        };
        Error { status, raw: raw.0, message, cuda_error }
    }

    /// Why the call failed.
    pub fn status(&self) -> Status {
        self.status
    }

    /// The library's message (or this crate's, for its own checks).
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The C status code as returned (differs from `status().raw()` only for a code this
    /// crate does not know).
    pub fn raw_status(&self) -> u32 {
        self.raw
    }

    /// The raw `cudaError_t` of a [`Status::Cuda`] error, `None` otherwise.
    pub fn cuda_error(&self) -> Option<i32> {
        (self.status == Status::Cuda).then_some(self.cuda_error)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.status, self.message)?;
        if let Some(code) = self.cuda_error() {
            write!(f, " (cudaError_t {code})")?;
        }
        Ok(())
    }
}

impl std::error::Error for Error {}

/// `Ok(())` for `PKV_SUCCESS`, else the error with the thread's last-error message. Call it
/// directly on the status of the call, before any other pkv call.
pub(crate) fn check(status: sys::pkv_status) -> Result<()> {
    if status == sys::pkv_status::PKV_SUCCESS { Ok(()) } else { Err(Error::last(status)) }
}

/// A `&'static str` of static, NUL-terminated library text.
///
/// # Safety
/// `ptr` is non-NULL and points to NUL-terminated text of static storage.
pub(crate) unsafe fn static_str(ptr: *const std::os::raw::c_char) -> &'static str {
    // SAFETY: guaranteed by the caller; the library's static strings are ASCII.
    unsafe { CStr::from_ptr(ptr) }.to_str().unwrap_or("(invalid UTF-8)")
}
