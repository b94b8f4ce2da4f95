//! Tensor views: [`TensorRef`] (read by an op) and [`TensorMut`] (written by an op).
//!
//! A view is a `pkv_tensor` (data pointer, dtype, device, shape and strides in elements)
//! that borrows its memory. The safe constructors take a host slice or a [`DeviceBuffer`]
//! and check that every element the shape and strides address lies inside it, so no op can
//! reach past it. Views of memory the crate cannot see (a raw device pointer of another
//! library) come from the `unsafe` constructors.
//!
//! [`DeviceBuffer`]: crate::DeviceBuffer

use std::ffi::c_void;
use std::fmt;
use std::marker::PhantomData;
use std::mem::size_of;

use crate::error::{Error, Result, check};
use crate::memory::{BufferMut, BufferRef, NativeScalar, Scalar};
use crate::sys;
use crate::types::{DType, Device};

/// Most dimensions of a tensor (`PKV_MAX_DIMS`).
pub const MAX_DIMS: usize = sys::PKV_MAX_DIMS as usize;

/// Row-major strides of `shape`, in elements.
pub fn contiguous_strides(shape: &[i64]) -> Vec<i64> {
    let mut strides = vec![1i64; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        strides[i] = strides[i + 1].saturating_mul(shape[i + 1].max(1));
    }
    strides
}

/// Builds a pkv_tensor of `ptr`, checking the shape and strides and, when `available` is
/// Some(bytes), that every addressed element lies in `[ptr, ptr + bytes)`.
fn make_raw(
    what: &str,
    ptr: *mut c_void,
    available: Option<usize>,
    device: Device,
    dtype: DType,
    shape: &[i64],
    strides: Option<&[i64]>,
) -> Result<sys::pkv_tensor> {
    let ndim = shape.len();
    if ndim > MAX_DIMS {
        return Err(Error::invalid(format!("{what}: {ndim} dimensions, at most {MAX_DIMS}")));
    }
    let contiguous;
    let strides = match strides {
        Some(s) => s,
        None => {
            contiguous = contiguous_strides(shape);
            &contiguous
        }
    };
    if strides.len() != ndim {
        return Err(Error::invalid(format!("{what}: {} strides for {ndim} dimensions", strides.len())));
    }
    if let Some(&d) = shape.iter().find(|&&d| d < 0) {
        return Err(Error::invalid(format!("{what}: negative dimension {d} in shape {shape:?}")));
    }
    let elem = dtype.size_bytes() as i64;
    if let Some(bytes) = available {
        if strides.iter().any(|&s| s < 0) {
            return Err(Error::invalid(format!("{what}: negative stride in {strides:?}")));
        }
        // Elements spanned: 1 + sum (shape[i] - 1) * strides[i], or 0 for an empty tensor.
        let span = if shape.contains(&0) {
            Some(0)
        } else {
            shape.iter().zip(strides).try_fold(1i64, |acc, (&d, &s)| acc.checked_add((d - 1).checked_mul(s)?))
        };
        let needed = span.and_then(|n| n.checked_mul(elem));
        match needed {
            Some(n) if n as u128 <= bytes as u128 => {}
            _ => {
                return Err(Error::invalid(format!(
                    "{what}: shape {shape:?} with strides {strides:?} of {dtype} spans {} bytes, \
                     the memory has {bytes}",
                    needed.map_or("more than i64::MAX".to_string(), |n| n.to_string())
                )));
            }
        }
    }
    let mut raw = sys::pkv_tensor {
        data: ptr,
        dtype: dtype.raw(),
        device: device.raw(),
        ndim: ndim as i32,
        shape: [0; MAX_DIMS],
        strides: [0; MAX_DIMS],
    };
    raw.shape[..ndim].copy_from_slice(shape);
    raw.strides[..ndim].copy_from_slice(strides);
    Ok(raw)
}

/// Whether no two in-bounds index tuples of `shape` / `strides` address the same element
/// (a sufficient test: sorted by stride, each dimension's stride passes the extent of the
/// smaller ones). Writes through an overlapping view would race between the library's
/// threads.
pub(crate) fn non_overlapping(shape: &[i64], strides: &[i64]) -> bool {
    if shape.contains(&0) {
        return true;
    }
    let mut dims: Vec<(i64, i64)> = shape.iter().zip(strides).filter(|&(&d, _)| d > 1).map(|(&d, &s)| (s, d)).collect();
    dims.sort_unstable();
    let mut extent = 0i64; // max offset reached by the dimensions so far
    for (stride, size) in dims {
        if stride <= extent {
            return false;
        }
        match (size - 1).checked_mul(stride).and_then(|e| e.checked_add(extent)) {
            Some(e) => extent = e,
            None => return false,
        }
    }
    true
}

fn check_elem<T: Scalar>(what: &str, dtype: DType) -> Result<()> {
    if dtype.size_bytes() != size_of::<T>() {
        return Err(Error::invalid(format!(
            "{what}: dtype {dtype} has {} bytes, the slice's elements {}",
            dtype.size_bytes(),
            size_of::<T>()
        )));
    }
    Ok(())
}

macro_rules! tensor_accessors {
    () => {
        /// The element type.
        pub fn dtype(&self) -> DType {
            DType::try_from(self.raw.dtype).expect("a tensor of this crate has a known dtype")
        }

        /// Where the data lives.
        pub fn device(&self) -> Device {
            Device::try_from(self.raw.device).expect("a tensor of this crate has a known device")
        }

        /// Number of dimensions.
        pub fn ndim(&self) -> usize {
            self.raw.ndim as usize
        }

        /// The shape, in elements.
        pub fn shape(&self) -> &[i64] {
            &self.raw.shape[..self.ndim()]
        }

        /// The strides, in elements.
        pub fn strides(&self) -> &[i64] {
            &self.raw.strides[..self.ndim()]
        }

        /// Number of elements (the product of the shape).
        pub fn numel(&self) -> i64 {
            self.shape().iter().product()
        }

        /// The `pkv_tensor` (for the raw API).
        pub fn as_raw(&self) -> &sys::pkv_tensor {
            &self.raw
        }

        /// The same view with dimension `dim` cut to its first `len` entries (`len` <= the
        /// current size; a smaller view is always inside the memory).
        ///
        /// ```
        /// # use pagedkv::TensorRef;
        /// let data = [0i64; 8];
        /// let t = TensorRef::from_slice(&data, &[8])?.narrow(0, 3)?;
        /// assert_eq!(t.shape(), &[3]);
        /// # Ok::<(), pagedkv::Error>(())
        /// ```
        pub fn narrow(mut self, dim: usize, len: i64) -> Result<Self> {
            if dim >= self.ndim() || len < 0 || len > self.raw.shape[dim] {
                return Err(Error::invalid(format!(
                    "narrow: dimension {dim} to {len} entries in shape {:?}",
                    self.shape()
                )));
            }
            self.raw.shape[dim] = len;
            Ok(self)
        }
    };
}

/// A tensor an op reads: borrows its memory immutably for `'a`.
///
/// ```
/// use pagedkv::{DType, TensorRef};
/// let slots = [0i64, 1, -1, 5];
/// let t = TensorRef::from_slice(&slots, &[4])?;            // dtype from the type: I64
/// assert_eq!((t.dtype(), t.shape()), (DType::I64, &[4][..]));
///
/// let bf16 = [0x3f80u16; 2 * 3 * 8];                        // 1.0 in bf16
/// let key = TensorRef::with_dtype(&bf16, DType::BF16, &[2, 3, 8])?;
/// assert_eq!(key.strides(), &[24, 8, 1]);
///
/// // Every addressed element must lie in the slice:
/// let err = TensorRef::with_dtype(&bf16, DType::BF16, &[3, 3, 8]).unwrap_err();
/// assert_eq!(err.status(), pagedkv::Status::InvalidArgument);
/// # Ok::<(), pagedkv::Error>(())
/// ```
#[derive(Clone, Copy)]
pub struct TensorRef<'a> {
    raw: sys::pkv_tensor,
    _borrow: PhantomData<&'a [u8]>,
}

impl<'a> TensorRef<'a> {
    /// A contiguous view of a host slice, its dtype given by the element type.
    pub fn from_slice<T: NativeScalar>(data: &'a [T], shape: &[i64]) -> Result<Self> {
        Self::with_dtype(data, T::DTYPE, shape)
    }

    /// A contiguous view of a host slice with an explicit dtype of the element's size
    /// (`u16` data as F16 or BF16, `u8` as FP8).
    pub fn with_dtype<T: Scalar>(data: &'a [T], dtype: DType, shape: &[i64]) -> Result<Self> {
        check_elem::<T>("TensorRef", dtype)?;
        Self::from_buffer(data.into(), dtype, shape, None)
    }

    /// A strided view of a host slice (strides in elements, non-negative).
    pub fn strided<T: Scalar>(data: &'a [T], dtype: DType, shape: &[i64], strides: &[i64]) -> Result<Self> {
        check_elem::<T>("TensorRef", dtype)?;
        Self::from_buffer(data.into(), dtype, shape, Some(strides))
    }

    /// A view of borrowed memory (a host slice or a [`DeviceBuffer`](crate::DeviceBuffer)),
    /// contiguous when `strides` is None.
    pub fn from_buffer(buffer: BufferRef<'a>, dtype: DType, shape: &[i64], strides: Option<&[i64]>) -> Result<Self> {
        if buffer.ptr as usize % dtype.size_bytes().max(1) != 0 {
            return Err(Error::invalid(format!("TensorRef: data is not aligned to {dtype}")));
        }
        let raw =
            make_raw("TensorRef", buffer.ptr as *mut c_void, Some(buffer.bytes), buffer.device, dtype, shape, strides)?;
        Ok(TensorRef { raw, _borrow: PhantomData })
    }

    /// A view of memory this crate cannot check, e.g. a device pointer of another library;
    /// contiguous when `strides` is None. Shape and strides are checked, the bounds are not.
    ///
    /// # Safety
    /// Every element the shape and strides address is readable memory of `device`, aligned
    /// to the dtype, valid and not written by anyone else for `'a` (or until the work an op
    /// enqueues on a stream has run).
    pub unsafe fn from_raw_parts(
        data: *const c_void,
        dtype: DType,
        device: Device,
        shape: &[i64],
        strides: Option<&[i64]>,
    ) -> Result<Self> {
        let raw = make_raw("TensorRef", data as *mut c_void, None, device, dtype, shape, strides)?;
        Ok(TensorRef { raw, _borrow: PhantomData })
    }

    /// Wraps a `pkv_tensor` as is.
    ///
    /// # Safety
    /// As [`TensorRef::from_raw_parts`], for the tensor's fields; its dtype and device are
    /// values of this crate's enums.
    pub unsafe fn from_raw(raw: sys::pkv_tensor) -> Self {
        TensorRef { raw, _borrow: PhantomData }
    }

    tensor_accessors!();

    /// The elements in row-major order, copied to the host (for inspection and tests): any
    /// strides for host memory, contiguous tensors only for CUDA memory (copied on the default
    /// stream, then waited for). `T` has the dtype's size.
    ///
    /// ```
    /// # use pagedkv::{DType, TensorRef};
    /// let data = [1i32, 2, 3, 4, 5, 6];
    /// let t = TensorRef::strided(&data, DType::I32, &[2, 2], &[3, 1])?;
    /// assert_eq!(t.to_vec::<i32>()?, [1, 2, 4, 5]);
    /// # Ok::<(), pagedkv::Error>(())
    /// ```
    pub fn to_vec<T: Scalar>(&self) -> Result<Vec<T>> {
        check_elem::<T>("TensorRef::to_vec", self.dtype())?;
        let n = usize::try_from(self.numel()).map_err(|_| Error::invalid("TensorRef::to_vec: too many elements"))?;
        let mut out = Vec::with_capacity(n);
        if n == 0 {
            return Ok(out);
        }
        let device = self.device();
        if device.is_host() {
            let base = self.raw.data as *const T;
            let mut index = vec![0i64; self.ndim()];
            for _ in 0..n {
                let offset: i64 = index.iter().zip(self.strides()).map(|(i, s)| i * s).sum();
                // SAFETY: the index lies inside the shape, so the element lies in the view's
                // memory (checked by the safe constructors, promised by the unsafe ones), which
                // is borrowed immutably for 'a and aligned to T (the dtype's size).
                out.push(unsafe { base.offset(offset as isize).read() });
                for d in (0..index.len()).rev() {
                    index[d] += 1;
                    if index[d] < self.shape()[d] {
                        break;
                    }
                    index[d] = 0;
                }
            }
            return Ok(out);
        }
        if self.strides() != contiguous_strides(self.shape()).as_slice() {
            return Err(Error::invalid("TensorRef::to_vec: a device tensor must be contiguous"));
        }
        out.resize(n, T::default());
        // SAFETY: the source holds n contiguous elements of device memory (the view's
        // contract); out holds n host elements and every bit pattern is a valid T. The
        // synchronization below completes the copy before out is read.
        check(unsafe {
            sys::pkv_copy(
                out.as_mut_ptr().cast(),
                Device::CPU.raw(),
                self.raw.data,
                self.raw.device,
                n * size_of::<T>(),
                std::ptr::null_mut(),
            )
        })?;
        // SAFETY: NULL is the default stream.
        check(unsafe { sys::pkv_stream_synchronize(std::ptr::null_mut()) })?;
        Ok(out)
    }
}

/// A tensor an op writes: borrows its memory mutably for `'a`.
///
/// ```
/// use pagedkv::{DType, TensorMut};
/// let mut out = vec![0u16; 4 * 2 * 8];
/// let t = TensorMut::with_dtype(&mut out, DType::BF16, &[4, 2, 8])?;
/// assert_eq!(t.numel(), 64);
/// # Ok::<(), pagedkv::Error>(())
/// ```
pub struct TensorMut<'a> {
    raw: sys::pkv_tensor,
    _borrow: PhantomData<&'a mut [u8]>,
}

impl<'a> TensorMut<'a> {
    /// A contiguous view of a host slice, its dtype given by the element type.
    pub fn from_slice<T: NativeScalar>(data: &'a mut [T], shape: &[i64]) -> Result<Self> {
        Self::with_dtype(data, T::DTYPE, shape)
    }

    /// A contiguous view of a host slice with an explicit dtype of the element's size.
    pub fn with_dtype<T: Scalar>(data: &'a mut [T], dtype: DType, shape: &[i64]) -> Result<Self> {
        check_elem::<T>("TensorMut", dtype)?;
        Self::from_buffer(data.into(), dtype, shape, None)
    }

    /// A strided view of a host slice (strides in elements, non-negative, and no two
    /// elements at the same address).
    pub fn strided<T: Scalar>(data: &'a mut [T], dtype: DType, shape: &[i64], strides: &[i64]) -> Result<Self> {
        check_elem::<T>("TensorMut", dtype)?;
        Self::from_buffer(data.into(), dtype, shape, Some(strides))
    }

    /// A view of mutably borrowed memory (a host slice or a
    /// [`DeviceBuffer`](crate::DeviceBuffer)), contiguous when `strides` is None.
    pub fn from_buffer(buffer: BufferMut<'a>, dtype: DType, shape: &[i64], strides: Option<&[i64]>) -> Result<Self> {
        if buffer.ptr as usize % dtype.size_bytes().max(1) != 0 {
            return Err(Error::invalid(format!("TensorMut: data is not aligned to {dtype}")));
        }
        let raw = make_raw("TensorMut", buffer.ptr.cast(), Some(buffer.bytes), buffer.device, dtype, shape, strides)?;
        let ndim = raw.ndim as usize;
        if !non_overlapping(&raw.shape[..ndim], &raw.strides[..ndim]) {
            return Err(Error::invalid(format!(
                "TensorMut: strides {:?} make elements of shape {:?} overlap",
                &raw.strides[..ndim],
                &raw.shape[..ndim]
            )));
        }
        Ok(TensorMut { raw, _borrow: PhantomData })
    }

    /// A writable view of memory this crate cannot check; contiguous when `strides` is None.
    ///
    /// # Safety
    /// Every element the shape and strides address is writable memory of `device`, aligned
    /// to the dtype, valid and accessed by no one else for `'a` (or until the work an op
    /// enqueues on a stream has run).
    pub unsafe fn from_raw_parts(
        data: *mut c_void,
        dtype: DType,
        device: Device,
        shape: &[i64],
        strides: Option<&[i64]>,
    ) -> Result<Self> {
        let raw = make_raw("TensorMut", data, None, device, dtype, shape, strides)?;
        Ok(TensorMut { raw, _borrow: PhantomData })
    }

    /// Wraps a `pkv_tensor` as is.
    ///
    /// # Safety
    /// As [`TensorMut::from_raw_parts`], for the tensor's fields; its dtype and device are
    /// values of this crate's enums.
    pub unsafe fn from_raw(raw: sys::pkv_tensor) -> Self {
        TensorMut { raw, _borrow: PhantomData }
    }

    /// A read-only view of the same memory, borrowing this one.
    pub fn as_tensor_ref(&self) -> TensorRef<'_> {
        TensorRef { raw: self.raw, _borrow: PhantomData }
    }

    tensor_accessors!();
}

impl fmt::Debug for TensorRef<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        debug(f, "TensorRef", &self.raw)
    }
}

impl fmt::Debug for TensorMut<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        debug(f, "TensorMut", &self.raw)
    }
}

fn debug(f: &mut fmt::Formatter<'_>, name: &str, raw: &sys::pkv_tensor) -> fmt::Result {
    let n = (raw.ndim.max(0) as usize).min(MAX_DIMS);
    f.debug_struct(name)
        .field("data", &raw.data)
        .field("dtype", &DType::try_from(raw.dtype).ok())
        .field("device", &Device::try_from(raw.device).ok())
        .field("shape", &&raw.shape[..n])
        .field("strides", &&raw.strides[..n])
        .finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_are_checked() {
        let data = [0f32; 12];
        assert!(TensorRef::from_slice(&data, &[3, 4]).is_ok());
        assert!(TensorRef::from_slice(&data, &[4, 4]).is_err());
        // Strided: rows 5 apart, 2 rows of 4 need 5 + 4 = 9 elements.
        assert!(TensorRef::strided(&data, DType::F32, &[2, 4], &[5, 1]).is_ok());
        assert!(TensorRef::strided(&data, DType::F32, &[3, 4], &[5, 1]).is_err());
        // Broadcast (stride 0) rows are fine; negative strides are not.
        assert!(TensorRef::strided(&data, DType::F32, &[100, 4], &[0, 1]).is_ok());
        assert!(TensorRef::strided(&data, DType::F32, &[2, 4], &[-4, 1]).is_err());
        // Empty tensors address nothing.
        assert!(TensorRef::from_slice(&data[..0], &[0, 1000]).is_ok());
        // Overflow is an error, not a wrap.
        assert!(TensorRef::strided(&data, DType::F32, &[2, 2], &[i64::MAX, 1]).is_err());
        assert!(TensorRef::from_slice(&data, &[1, 2, 3, 4, 5, 6, 7]).is_err());
        assert!(TensorRef::from_slice(&data, &[-1]).is_err());
        assert!(TensorRef::strided(&data, DType::F32, &[12], &[1, 1]).is_err());
    }

    #[test]
    fn dtype_must_match_the_element_size() {
        let data = [0u16; 8];
        assert!(TensorRef::with_dtype(&data, DType::BF16, &[8]).is_ok());
        let err = TensorRef::with_dtype(&data, DType::F32, &[4]).unwrap_err();
        assert!(err.message().contains("bytes"), "{err}");
        let bytes = [0u8; 8];
        assert!(TensorRef::with_dtype(&bytes, DType::FP8E4M3, &[2, 4]).is_ok());
    }

    #[test]
    fn writable_views_do_not_overlap() {
        let mut data = [0f32; 16];
        assert!(TensorMut::strided(&mut data, DType::F32, &[2, 4], &[8, 1]).is_ok());
        assert!(TensorMut::strided(&mut data, DType::F32, &[4, 2], &[1, 4]).is_ok());
        assert!(TensorMut::strided(&mut data, DType::F32, &[2, 4], &[0, 1]).is_err());
        assert!(TensorMut::strided(&mut data, DType::F32, &[2, 4], &[3, 1]).is_err());
        assert!(TensorMut::strided(&mut data, DType::F32, &[1, 4], &[0, 1]).is_ok());
        assert!(non_overlapping(&[3, 2, 2], &[4, 1, 2]));
        assert!(!non_overlapping(&[3, 2, 2], &[3, 1, 2]));
    }

    #[test]
    fn zero_dim_tensor_is_one_element() {
        let one = [7i32];
        let t = TensorRef::from_slice(&one, &[]).unwrap();
        assert_eq!((t.ndim(), t.numel()), (0, 1));
        assert!(TensorRef::from_slice(&one[..0], &[]).is_err());
    }

    #[test]
    fn narrow_only_shrinks() {
        let mut data = [0i32; 6];
        let t = TensorMut::from_slice(&mut data, &[2, 3]).unwrap();
        let t = t.narrow(1, 2).unwrap();
        assert_eq!(t.shape(), &[2, 2]);
        assert_eq!(t.strides(), &[3, 1]);
        assert!(t.narrow(1, 3).is_err());
    }

    #[test]
    fn contiguous_strides_of_shapes() {
        assert_eq!(contiguous_strides(&[2, 3, 4]), [12, 4, 1]);
        assert_eq!(contiguous_strides(&[]), [0i64; 0]);
        assert_eq!(contiguous_strides(&[5]), [1]);
    }
}
