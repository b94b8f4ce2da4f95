//! Memory: the [`Scalar`] element types of host slices, borrowed buffers ([`BufferRef`],
//! [`BufferMut`]) and owned allocations on any device ([`DeviceBuffer`]).

use std::ffi::c_void;
use std::marker::PhantomData;
use std::mem::size_of;
use std::ptr;

use crate::error::{Error, Result, check};
use crate::sys;
use crate::tensor::{TensorMut, TensorRef};
use crate::types::{DType, Device, DeviceType};

mod sealed {
    pub trait Sealed {}
}

/// Plain element types of host slices: `f32`, `u16` (f16 / bf16 bits), `u8` (FP8 bits),
/// `i8`, `i32`, `i64`, `u32`, `u64`. Every bit pattern is a valid value, so bytes written by
/// the library are always valid Rust values. Sealed.
pub trait Scalar: sealed::Sealed + Copy + Default + 'static {}

/// A [`Scalar`] with one natural [`DType`] (`f32` -> F32, `i32` -> I32, `i64` -> I64,
/// `i8` -> I8, `u8` -> U8). `u16` has none: name F16 or BF16 explicitly.
pub trait NativeScalar: Scalar {
    /// The dtype of this type.
    const DTYPE: DType;
}

macro_rules! scalar {
    ($($t:ty),*) => { $( impl sealed::Sealed for $t {} impl Scalar for $t {} )* };
}
scalar!(f32, u16, u8, i8, i32, i64, u32, u64);

impl NativeScalar for f32 {
    const DTYPE: DType = DType::F32;
}
impl NativeScalar for i32 {
    const DTYPE: DType = DType::I32;
}
impl NativeScalar for i64 {
    const DTYPE: DType = DType::I64;
}
impl NativeScalar for i8 {
    const DTYPE: DType = DType::I8;
}
impl NativeScalar for u8 {
    const DTYPE: DType = DType::U8;
}

/// Memory borrowed for reading during `'a`: a host slice or a [`DeviceBuffer`].
///
/// Made with `From` (`(&slice[..]).into()`, `(&value).into()`, `(&device_buffer).into()`);
/// methods taking `impl Into<BufferRef>` accept all of those.
#[derive(Clone, Copy, Debug)]
pub struct BufferRef<'a> {
    pub(crate) ptr: *const u8,
    pub(crate) bytes: usize,
    pub(crate) device: Device,
    _borrow: PhantomData<&'a [u8]>,
}

/// Memory borrowed for writing during `'a`: a host slice or a [`DeviceBuffer`].
#[derive(Debug)]
pub struct BufferMut<'a> {
    pub(crate) ptr: *mut u8,
    pub(crate) bytes: usize,
    pub(crate) device: Device,
    _borrow: PhantomData<&'a mut [u8]>,
}

impl<'a> BufferRef<'a> {
    /// A view of memory the caller guarantees.
    ///
    /// # Safety
    /// `ptr .. ptr + bytes` is memory of `device`, readable for `'a` and not written by
    /// anyone else meanwhile.
    pub unsafe fn from_raw_parts(ptr: *const c_void, bytes: usize, device: Device) -> Self {
        BufferRef { ptr: ptr.cast(), bytes, device, _borrow: PhantomData }
    }

    /// Size in bytes.
    pub fn len(&self) -> usize {
        self.bytes
    }

    /// Whether it has no bytes.
    pub fn is_empty(&self) -> bool {
        self.bytes == 0
    }

    /// Where it lives.
    pub fn device(&self) -> Device {
        self.device
    }

    /// Error unless it is on `device` (host memory counts as CPU), at least `bytes` long and
    /// aligned to `align`.
    pub(crate) fn require(&self, what: &str, device: Device, bytes: usize, align: usize) -> Result<()> {
        require(what, self.ptr as usize, self.bytes, self.device, device, bytes, align)
    }
}

impl<'a> BufferMut<'a> {
    /// A view of memory the caller guarantees.
    ///
    /// # Safety
    /// `ptr .. ptr + bytes` is memory of `device`, readable and writable for `'a`, and
    /// accessed by no one else meanwhile.
    pub unsafe fn from_raw_parts(ptr: *mut c_void, bytes: usize, device: Device) -> Self {
        BufferMut { ptr: ptr.cast(), bytes, device, _borrow: PhantomData }
    }

    /// Size in bytes.
    pub fn len(&self) -> usize {
        self.bytes
    }

    /// Whether it has no bytes.
    pub fn is_empty(&self) -> bool {
        self.bytes == 0
    }

    /// Where it lives.
    pub fn device(&self) -> Device {
        self.device
    }

    pub(crate) fn require(&self, what: &str, device: Device, bytes: usize, align: usize) -> Result<()> {
        require(what, self.ptr as usize, self.bytes, self.device, device, bytes, align)
    }
}

fn same_memory(a: Device, b: Device) -> bool {
    if a.is_host() || b.is_host() { a.is_host() && b.is_host() } else { a == b }
}

fn require(what: &str, addr: usize, have: usize, on: Device, device: Device, bytes: usize, align: usize) -> Result<()> {
    if !same_memory(on, device) {
        return Err(Error::invalid(format!("{what} is on {on}, needs {device}")));
    }
    if have < bytes {
        return Err(Error::invalid(format!("{what} has {have} bytes, needs {bytes}")));
    }
    if align > 1 && addr % align != 0 {
        return Err(Error::invalid(format!("{what} is not aligned to {align} bytes")));
    }
    Ok(())
}

impl<'a, T: Scalar> From<&'a [T]> for BufferRef<'a> {
    fn from(slice: &'a [T]) -> Self {
        BufferRef { ptr: slice.as_ptr().cast(), bytes: size_of_val(slice), device: Device::CPU, _borrow: PhantomData }
    }
}

impl<'a, T: Scalar, const N: usize> From<&'a [T; N]> for BufferRef<'a> {
    fn from(array: &'a [T; N]) -> Self {
        BufferRef::from(&array[..])
    }
}

impl<'a, T: Scalar> From<&'a T> for BufferRef<'a> {
    fn from(value: &'a T) -> Self {
        BufferRef::from(std::slice::from_ref(value))
    }
}

impl<'a, T: Scalar> From<&'a Vec<T>> for BufferRef<'a> {
    fn from(vec: &'a Vec<T>) -> Self {
        BufferRef::from(vec.as_slice())
    }
}

impl<'a, T: Scalar> From<&'a mut [T]> for BufferMut<'a> {
    fn from(slice: &'a mut [T]) -> Self {
        BufferMut {
            ptr: slice.as_mut_ptr().cast(),
            bytes: size_of_val(slice),
            device: Device::CPU,
            _borrow: PhantomData,
        }
    }
}

impl<'a, T: Scalar, const N: usize> From<&'a mut [T; N]> for BufferMut<'a> {
    fn from(array: &'a mut [T; N]) -> Self {
        BufferMut::from(&mut array[..])
    }
}

impl<'a, T: Scalar> From<&'a mut T> for BufferMut<'a> {
    fn from(value: &'a mut T) -> Self {
        BufferMut::from(std::slice::from_mut(value))
    }
}

impl<'a, T: Scalar> From<&'a mut Vec<T>> for BufferMut<'a> {
    fn from(vec: &'a mut Vec<T>) -> Self {
        BufferMut::from(vec.as_mut_slice())
    }
}

impl<'a> From<&'a DeviceBuffer> for BufferRef<'a> {
    fn from(buffer: &'a DeviceBuffer) -> Self {
        BufferRef { ptr: buffer.ptr.cast(), bytes: buffer.bytes, device: buffer.device, _borrow: PhantomData }
    }
}

impl<'a> From<&'a mut DeviceBuffer> for BufferMut<'a> {
    fn from(buffer: &'a mut DeviceBuffer) -> Self {
        BufferMut { ptr: buffer.ptr.cast(), bytes: buffer.bytes, device: buffer.device, _borrow: PhantomData }
    }
}

impl<'a> From<BufferMut<'a>> for BufferRef<'a> {
    fn from(buffer: BufferMut<'a>) -> Self {
        BufferRef { ptr: buffer.ptr, bytes: buffer.bytes, device: buffer.device, _borrow: PhantomData }
    }
}

/// An owned allocation on a device (`pkv_alloc` / `pkv_free`): host memory for
/// [`Device::CPU`], `cudaMalloc` memory for a CUDA device. 256-byte aligned, zero-filled at
/// creation, freed on drop.
///
/// It lets the same code run on a GPU or on the CPU (as the examples do): upload with
/// [`DeviceBuffer::from_slice`], view it as tensors with [`DeviceBuffer::tensor`] /
/// [`DeviceBuffer::tensor_mut`], download with [`DeviceBuffer::to_vec`]. The copies
/// synchronize, so the host side is never read or written after they return.
///
/// ```
/// use pagedkv::{DType, Device, DeviceBuffer};
/// let buffer = DeviceBuffer::from_slice(Device::CPU, &[1.0f32, 2.0, 3.0, 4.0])?;
/// let tensor = buffer.tensor(DType::F32, &[2, 2])?;
/// assert_eq!(tensor.shape(), &[2, 2]);
/// assert_eq!(buffer.to_vec::<f32>()?, [1.0, 2.0, 3.0, 4.0]);
/// # Ok::<(), pagedkv::Error>(())
/// ```
#[derive(Debug)]
pub struct DeviceBuffer {
    ptr: *mut c_void,
    bytes: usize,
    device: Device,
}

// SAFETY: the buffer owns its allocation, which any thread may use or free (pkv_alloc and
// pkv_free are thread-safe).
unsafe impl Send for DeviceBuffer {}
// SAFETY: shared references only read the allocation (writes need &mut).
unsafe impl Sync for DeviceBuffer {}

impl DeviceBuffer {
    /// `bytes` zero bytes on `device` (CPU or CUDA; pinned host memory is not offered here).
    pub fn zeroed(device: Device, bytes: usize) -> Result<Self> {
        if device.device_type == DeviceType::CudaHost {
            return Err(Error::invalid(
                "DeviceBuffer: pinned host memory (cuda_host) is not supported; use Device::CPU or a CUDA device",
            ));
        }
        let mut ptr = ptr::null_mut();
        // SAFETY: ptr is a valid out-pointer; the library validates the device.
        check(unsafe { sys::pkv_alloc(&mut ptr, device.raw(), bytes) })?;
        let mut buffer = DeviceBuffer { ptr, bytes, device };
        if bytes > 0 {
            buffer.copy_from_bytes(&vec![0u8; bytes])?;
        }
        Ok(buffer)
    }

    /// A copy of `data` on `device`.
    pub fn from_slice<T: Scalar>(device: Device, data: &[T]) -> Result<Self> {
        let mut buffer = DeviceBuffer::zeroed(device, size_of_val(data))?;
        buffer.copy_from_slice(data)?;
        Ok(buffer)
    }

    /// Where it lives.
    pub fn device(&self) -> Device {
        self.device
    }

    /// Size in bytes.
    pub fn len(&self) -> usize {
        self.bytes
    }

    /// Whether it has no bytes.
    pub fn is_empty(&self) -> bool {
        self.bytes == 0
    }

    /// The address (NULL when empty), for the raw API.
    pub fn as_ptr(&self) -> *const c_void {
        self.ptr
    }

    /// The address (NULL when empty), for the raw API.
    pub fn as_mut_ptr(&mut self) -> *mut c_void {
        self.ptr
    }

    fn copy_from_bytes(&mut self, src: &[u8]) -> Result<()> {
        if src.len() > self.bytes {
            return Err(Error::invalid(format!(
                "DeviceBuffer: {} bytes do not fit in a buffer of {}",
                src.len(),
                self.bytes
            )));
        }
        if src.is_empty() {
            return Ok(());
        }
        // SAFETY: dst has self.bytes >= src.len() bytes on self.device, src is a live host
        // slice; the copy is complete when the stream synchronization returns (below).
        check(unsafe {
            sys::pkv_copy(
                self.ptr,
                self.device.raw(),
                src.as_ptr().cast(),
                Device::CPU.raw(),
                src.len(),
                ptr::null_mut(),
            )
        })?;
        self.wait()
    }

    /// Copies `src` to the start of the buffer (which must be large enough); returns when the
    /// copy is done.
    pub fn copy_from_slice<T: Scalar>(&mut self, src: &[T]) -> Result<()> {
        // SAFETY: T is a Scalar: plain bytes without padding.
        let bytes = unsafe { std::slice::from_raw_parts(src.as_ptr().cast::<u8>(), size_of_val(src)) };
        self.copy_from_bytes(bytes)
    }

    /// Copies the start of the buffer into `dst` (the buffer must be large enough); returns
    /// when the copy is done.
    pub fn copy_to_slice<T: Scalar>(&self, dst: &mut [T]) -> Result<()> {
        let bytes = size_of_val(dst);
        if bytes > self.bytes {
            return Err(Error::invalid(format!(
                "DeviceBuffer: cannot read {bytes} bytes from a buffer of {}",
                self.bytes
            )));
        }
        if bytes == 0 {
            return Ok(());
        }
        // SAFETY: dst is a live host slice of `bytes` bytes and every bit pattern is a valid
        // T (Scalar); src has at least that many bytes. The copy is complete when the
        // synchronization returns, before dst's borrow ends.
        check(unsafe {
            sys::pkv_copy(
                dst.as_mut_ptr().cast(),
                Device::CPU.raw(),
                self.ptr,
                self.device.raw(),
                bytes,
                ptr::null_mut(),
            )
        })?;
        self.wait()
    }

    /// The whole buffer as a vector of `T` (a trailing partial element is left out).
    pub fn to_vec<T: Scalar>(&self) -> Result<Vec<T>> {
        let mut out = vec![T::default(); self.bytes / size_of::<T>()];
        self.copy_to_slice(&mut out)?;
        Ok(out)
    }

    /// Waits for the default stream after a copy that involves CUDA memory.
    fn wait(&self) -> Result<()> {
        if self.device.is_host() {
            return Ok(()); // host-to-host copies are plain memcpys
        }
        // SAFETY: NULL is the default stream.
        check(unsafe { sys::pkv_stream_synchronize(ptr::null_mut()) })
    }

    /// A contiguous tensor view of the buffer's start (checked against its size).
    pub fn tensor(&self, dtype: DType, shape: &[i64]) -> Result<TensorRef<'_>> {
        TensorRef::from_buffer(self.into(), dtype, shape, None)
    }

    /// A strided tensor view (strides in elements, checked against the buffer's size).
    pub fn tensor_strided(&self, dtype: DType, shape: &[i64], strides: &[i64]) -> Result<TensorRef<'_>> {
        TensorRef::from_buffer(self.into(), dtype, shape, Some(strides))
    }

    /// A contiguous, writable tensor view of the buffer's start.
    pub fn tensor_mut(&mut self, dtype: DType, shape: &[i64]) -> Result<TensorMut<'_>> {
        TensorMut::from_buffer(self.into(), dtype, shape, None)
    }

    /// A strided, writable tensor view.
    pub fn tensor_mut_strided(&mut self, dtype: DType, shape: &[i64], strides: &[i64]) -> Result<TensorMut<'_>> {
        TensorMut::from_buffer(self.into(), dtype, shape, Some(strides))
    }
}

impl Drop for DeviceBuffer {
    fn drop(&mut self) {
        // SAFETY: ptr came from pkv_alloc on self.device and is freed once. cudaFree waits for
        // the device, so no kernel still uses it.
        unsafe {
            sys::pkv_free(self.ptr, self.device.raw());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_buffer_round_trip() {
        let mut buffer = DeviceBuffer::zeroed(Device::CPU, 16).unwrap();
        assert_eq!(buffer.to_vec::<u32>().unwrap(), [0; 4]);
        buffer.copy_from_slice(&[1u16, 2, 3]).unwrap();
        assert_eq!(buffer.to_vec::<u16>().unwrap(), [1, 2, 3, 0, 0, 0, 0, 0]);
        assert_eq!(buffer.as_ptr() as usize % 256, 0);
        let err = buffer.copy_from_slice(&[0u64; 3]).unwrap_err();
        assert!(err.message().contains("do not fit"), "{err}");
        let mut small = [0i64; 3];
        assert!(buffer.copy_to_slice(&mut small).is_err());
    }

    #[test]
    fn empty_buffer() {
        let buffer = DeviceBuffer::zeroed(Device::CPU, 0).unwrap();
        assert!(buffer.is_empty());
        assert!(buffer.to_vec::<f32>().unwrap().is_empty());
        assert!(buffer.tensor(DType::F32, &[0, 4]).is_ok());
        assert!(buffer.tensor(DType::F32, &[1]).is_err());
    }

    #[test]
    fn pinned_host_is_refused() {
        let err = DeviceBuffer::zeroed(Device { device_type: DeviceType::CudaHost, id: 0 }, 8).unwrap_err();
        assert_eq!(err.status(), crate::Status::InvalidArgument);
    }

    #[test]
    fn buffer_requirements() {
        let data = [0f32; 4];
        let buffer = BufferRef::from(&data[..]);
        assert!(buffer.require("x", Device::CPU, 16, 4).is_ok());
        assert!(buffer.require("x", Device::CPU, 17, 4).is_err());
        assert!(buffer.require("x", Device::cuda(0), 4, 4).is_err());
        let bytes = [0u8; 8];
        let unaligned = BufferRef::from(&bytes[1..]);
        let aligned_to_4 = (unaligned.ptr as usize) % 4 == 0;
        assert_eq!(unaligned.require("x", Device::CPU, 4, 4).is_ok(), aligned_to_4);
    }
}
