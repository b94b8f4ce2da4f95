// pkv_convert: validate, resolve (collapse dimensions), dispatch by device.
#include "api/error_state.h"
#include "api/validate.h"
#include "core/convert.h"
#include "core/ops.h"  // cuda_available_in_build

using namespace pkv;
using namespace pkv::api;

namespace {

// A tensor of f32 / f16 / bf16 / fp8 elements, non-negative shape and strides, data aligned to
// its element size, every element addressable in int64. Returns its element count.
int64_t check_convert_tensor(const char *name, const pkv_tensor *t) {
    require(t != nullptr, PKV_ERROR_INVALID_ARGUMENT, name, " is NULL");
    require(t->ndim >= 0 && t->ndim <= PKV_MAX_DIMS, PKV_ERROR_INVALID_ARGUMENT, name, " must have 0 to ",
            PKV_MAX_DIMS, " dimensions, got ", t->ndim);
    const Elem e = elem_from_dtype(t->dtype);
    require(e != Elem::Invalid, PKV_ERROR_INVALID_ARGUMENT, name, " dtype must be f32, f16, bf16, fp8_e4m3 or fp8_e5m2, got ",
            pkv_dtype_name(t->dtype));
    int64_t numel = 1, span = 0;
    for (int d = 0; d < t->ndim; ++d) {
        require(t->shape[d] >= 0, PKV_ERROR_INVALID_ARGUMENT, name, " shape[", d, "] is negative: ", t->shape[d]);
        require(t->strides[d] >= 0, PKV_ERROR_INVALID_ARGUMENT, name, " strides[", d, "] is negative: ",
                t->strides[d]);
        int64_t reach = 0;
        require(!__builtin_mul_overflow(numel, t->shape[d], &numel) &&
                    (t->shape[d] == 0 || (!__builtin_mul_overflow(t->shape[d] - 1, t->strides[d], &reach) &&
                                          !__builtin_add_overflow(span, reach, &span))),
                PKV_ERROR_INVALID_ARGUMENT, name, " spans more than int64 elements");
    }
    require(span <= INT64_MAX / elem_bytes(e), PKV_ERROR_INVALID_ARGUMENT, name, " spans more than int64 bytes");
    require(numel == 0 || t->data != nullptr, PKV_ERROR_INVALID_ARGUMENT, name, "->data is NULL");
    require(reinterpret_cast<uintptr_t>(t->data) % uintptr_t(elem_bytes(e)) == 0, PKV_ERROR_INVALID_ARGUMENT, name,
            "->data is not aligned to its ", elem_bytes(e), "-byte element size");
    return numel;
}

void convert(const pkv_tensor *dst, const pkv_tensor *src, const float *scale, pkv_stream stream) {
    const int64_t numel = check_convert_tensor("dst", dst);
    check_convert_tensor("src", src);
    require(dst->ndim == src->ndim, PKV_ERROR_INVALID_ARGUMENT, "dst has ", dst->ndim, " dimensions, src ",
            src->ndim);
    for (int d = 0; d < dst->ndim; ++d)
        require(dst->shape[d] == src->shape[d], PKV_ERROR_INVALID_ARGUMENT, "dst shape[", d, "] = ", dst->shape[d],
                " differs from src shape[", d, "] = ", src->shape[d]);
    const Elem de = elem_from_dtype(dst->dtype), se = elem_from_dtype(src->dtype);
    require(!(elem_is_fp8(de) && elem_is_fp8(se) && de != se), PKV_ERROR_NOT_SUPPORTED,
            "conversions between fp8_e4m3 and fp8_e5m2 are not supported");
    require_same_device("src", src->device, dst->device);
    require(is_host_device(dst->device) || cuda_available_in_build(), PKV_ERROR_NOT_SUPPORTED, "dst is on ",
            device_string(dst->device), " but this library was built without CUDA");
    require(reinterpret_cast<uintptr_t>(scale) % alignof(float) == 0, PKV_ERROR_INVALID_ARGUMENT,
            "scale is not 4-byte aligned");
    if (numel == 0) return;

    ConvertArgs a;
    a.dst = static_cast<char *>(dst->data);
    a.src = static_cast<const char *>(src->data);
    a.dst_elem = de;
    a.src_elem = se;
    a.ndim = dst->ndim;
    for (int d = 0; d < a.ndim; ++d) {
        a.shape[d] = dst->shape[d];
        a.dst_strides[d] = dst->strides[d];
        a.src_strides[d] = src->strides[d];
    }
    a.numel = numel;
    a.scale = scale;
    collapse_dims(a);
    if (is_host_device(dst->device)) cpu_convert(a);
    else cuda_convert(a, stream);
}

}  // namespace

PKV_API pkv_status pkv_convert(const pkv_tensor *dst, const pkv_tensor *src, const float *scale, pkv_stream stream) {
    return guarded("pkv_convert", [&] { convert(dst, src, scale, stream); });
}
