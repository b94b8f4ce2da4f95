// One warp moves the head rows of one token between a dense row and a cache slot, converting
// each element. Lanes stride over (head, chunk) pairs; each keeps kUnroll aligned vector loads
// in flight before its stores. The vector width VEC was chosen on the host so that every
// access is aligned (core/vector_width.cpp).
#pragma once

#include <cstdint>

#include "core/element_convert.h"
#include "core/fast_divmod.h"
#include "cuda/cuda_check.cuh"

namespace pkv {

enum class Direction { Encode, Decode };  // Encode: input -> cache; Decode: cache -> output

template <Elem From, Elem To, Direction Dir> __device__ __forceinline__ storage_t<To> convert(storage_t<From> x, float scale) {
    if constexpr (Dir == Direction::Encode) return encode_for_cache<From, To>(x, scale);
    else return decode_from_cache<From, To>(x, scale);
}

template <Elem From, Elem To, Direction Dir>
constexpr bool uses_scale() { return elem_is_fp8(Dir == Direction::Encode ? To : From) && From != To; }

constexpr int kUnroll = 4;

template <Elem From, Elem To, Direction Dir, int VEC>
__device__ __forceinline__ void warp_copy_heads(const char *__restrict__ src, int64_t src_head_stride,
                                                char *__restrict__ dst, int64_t dst_head_stride,
                                                uint32_t heads, FastDivmod chunks, const float *scale,
                                                bool per_head_scale, int lane) {
    using S = storage_t<From>;
    using D = storage_t<To>;
    using VS = Vec<S, VEC>;
    using VD = Vec<D, VEC>;
    const uint32_t units = heads * chunks.divisor;
    float tensor_scale = 1.0f;
    if constexpr (uses_scale<From, To, Dir>()) {
        if (scale && !per_head_scale) tensor_scale = *scale;
    }
    for (uint32_t base = lane; base < units; base += 32 * kUnroll) {
        VS in[kUnroll];
        uint32_t head[kUnroll], chunk[kUnroll];
#pragma unroll
        for (int u = 0; u < kUnroll; ++u) {
            const uint32_t j = base + u * 32;
            if (j < units) {
                chunks.divmod(j, head[u], chunk[u]);
                in[u] = *reinterpret_cast<const VS *>(src + head[u] * src_head_stride +
                                                      int64_t(chunk[u]) * (VEC * sizeof(S)));
            }
        }
#pragma unroll
        for (int u = 0; u < kUnroll; ++u) {
            const uint32_t j = base + u * 32;
            if (j < units) {
                float s = tensor_scale;
                if constexpr (uses_scale<From, To, Dir>()) {
                    if (scale && per_head_scale) s = scale[head[u]];
                }
                VD out;
#pragma unroll
                for (int i = 0; i < VEC; ++i) out.v[i] = convert<From, To, Dir>(in[u].v[i], s);
                *reinterpret_cast<VD *>(dst + head[u] * dst_head_stride + int64_t(chunk[u]) * (VEC * sizeof(D))) = out;
            }
        }
    }
}

// Calls f(std::integral_constant<int, VEC>{}) for VEC in {1, 2, 4, 8}.
template <typename F> void dispatch_vec(int vec, F &&f) {
    switch (vec) {
        case 8: f(std::integral_constant<int, 8>{}); break;
        case 4: f(std::integral_constant<int, 4>{}); break;
        case 2: f(std::integral_constant<int, 2>{}); break;
        default: f(std::integral_constant<int, 1>{}); break;
    }
}

}  // namespace pkv
