// CUDA pkv_convert: a grid-stride loop over elements. One collapsed dimension (the dense case)
// needs no index division; more dimensions decompose the flat index.
#include "core/convert.h"
#include "cuda/cuda_check.cuh"

namespace pkv {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kMaxBlocks = int64_t(1) << 16;

template <Elem S, Elem D, bool FLAT> __global__ void __launch_bounds__(kThreads) convert_kernel(const ConvertArgs a) {
    const Fp8Divisor d = make_fp8_divisor(a.scale ? *a.scale : 1.0f);
    const auto *src = reinterpret_cast<const storage_t<S> *>(a.src);
    auto *dst = reinterpret_cast<storage_t<D> *>(a.dst);
    for (int64_t i = int64_t(blockIdx.x) * kThreads + threadIdx.x; i < a.numel; i += int64_t(gridDim.x) * kThreads) {
        int64_t o_dst, o_src;
        if (FLAT) {
            o_dst = i * a.dst_strides[0];
            o_src = i * a.src_strides[0];
        } else {
            convert_offsets(a, i, o_dst, o_src);
        }
        dst[o_dst] = convert_element<S, D>(src[o_src], d);
    }
}

}  // namespace

void cuda_convert(const ConvertArgs &a, pkv_stream stream) {
    const cudaStream_t s = reinterpret_cast<cudaStream_t>(stream);
    const int64_t want = (a.numel + kThreads - 1) / kThreads;
    const unsigned blocks = unsigned(want < kMaxBlocks ? want : kMaxBlocks);
    dispatch_elem(a.src_elem, [&](auto src_e) {
        dispatch_elem(a.dst_elem, [&](auto dst_e) {
            constexpr Elem S = decltype(src_e)::value, D = decltype(dst_e)::value;
            // e4m3 <-> e5m2 is refused by the api layer; no kernel for it.
            if constexpr (!(elem_is_fp8(S) && elem_is_fp8(D) && S != D)) {
                if (a.ndim == 1) convert_kernel<S, D, true><<<blocks, kThreads, 0, s>>>(a);
                else convert_kernel<S, D, false><<<blocks, kThreads, 0, s>>>(a);
            }
        });
    });
    cuda_check_launch("convert_kernel");
}

}  // namespace pkv
