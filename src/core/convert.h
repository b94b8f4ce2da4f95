// pkv_convert: element-wise conversion between two strided tensors of one shape (vLLM
// convert_fp8 and plain casts). The resolved arguments src/api/ builds, the per-element rule
// both backends share, and the backend entry points.
#pragma once

#include <cstdint>

#include "core/element_convert.h"
#include "pagedkv.h"

namespace pkv {

// Dimensions are collapsed (size-1 dims dropped, dims contiguous in both tensors merged), so the
// common dense case is one dimension. strides are in elements, non-negative.
struct ConvertArgs {
    char *dst = nullptr;
    const char *src = nullptr;
    Elem dst_elem = Elem::Invalid, src_elem = Elem::Invalid;
    int ndim = 0;                  // >= 1
    int64_t shape[PKV_MAX_DIMS] = {};
    int64_t dst_strides[PKV_MAX_DIMS] = {}, src_strides[PKV_MAX_DIMS] = {};
    int64_t numel = 0;             // > 0
    const float *scale = nullptr;  // on the tensors' device; nullptr = 1
};

// Drops size-1 dimensions and merges neighbours that are contiguous in both tensors.
void collapse_dims(ConvertArgs &a);

// One element: equal elements copy the bits; a float to an FP8 element stores
// sat_finite_rne(x / scale) (the write path's quotient); FP8 to a float element gives
// float(q) * scale (the gather path's rule); float to float rounds to nearest even.
template <Elem Src, Elem Dst> PKV_HD storage_t<Dst> convert_element(storage_t<Src> x, const Fp8Divisor &d) {
    if constexpr (elem_is_fp8(Src) && Src != Dst) return decode_from_cache<Src, Dst>(x, d.scale);
    else return encode_for_cache<Src, Dst>(x, d);
}

// Element offsets (dst, src) of flat index i (row-major over the collapsed shape).
PKV_HD void convert_offsets(const ConvertArgs &a, int64_t i, int64_t &dst, int64_t &src) {
    dst = 0;
    src = 0;
    for (int d = a.ndim - 1; d >= 0; --d) {
        const int64_t n = a.shape[d];
        const int64_t q = d > 0 ? i / n : 0;
        const int64_t r = d > 0 ? i - q * n : i;
        dst += r * a.dst_strides[d];
        src += r * a.src_strides[d];
        i = q;
    }
}

void cpu_convert(const ConvertArgs &a);                     // synchronous
void cuda_convert(const ConvertArgs &a, pkv_stream stream);  // enqueued on `stream`

}  // namespace pkv
