// One warp moves the head rows of one token between a dense row and a cache slot, converting
// each element. Lanes stride over (head, chunk) pairs, kUnroll aligned vector accesses in flight
// per lane. The vector width VEC was chosen on the host so that every access is aligned
// (core/vector_width.cpp). Loads and stores are separate stages so that a kernel can issue its
// first loads before it knows the destination (the write kernel overlaps them with the slot load).
#pragma once

#include <cstdint>

#include "core/element_convert.h"
#include "core/fast_divmod.h"
#include "cuda/cuda_check.cuh"

namespace pkv {

enum class Direction { Encode, Decode };  // Encode: input -> cache; Decode: cache -> output

constexpr int kUnroll = 2;

template <Elem From, Elem To, Direction Dir, int VEC> struct WarpRowCopy {
    using S = storage_t<From>;
    using D = storage_t<To>;
    using VS = Vec<S, VEC>;
    using VD = Vec<D, VEC>;
    static constexpr bool kScaled = elem_is_fp8(Dir == Direction::Encode ? To : From) && From != To;

    // One batch of kUnroll accesses of a lane.
    struct Batch {
        VS in[kUnroll];
    };

    const char *src;
    int64_t src_head_stride;
    char *dst;  // may be set after load()
    int64_t dst_head_stride;
    uint32_t units;      // heads * chunks
    FastDivmod chunks;   // vectors per head row
    const float *scale;  // FP8 scales (NULL = 1.0)
    bool per_head_scale;

    __device__ __forceinline__ void load(uint32_t base, Batch &b) const {
#pragma unroll
        for (int u = 0; u < kUnroll; ++u) {
            const uint32_t j = base + u * 32;
            if (j < units) {
                uint32_t head, chunk;
                chunks.divmod(j, head, chunk);
                b.in[u] = *reinterpret_cast<const VS *>(src + head * src_head_stride + int64_t(chunk) * (VEC * sizeof(S)));
            }
        }
    }

    __device__ __forceinline__ void store(uint32_t base, const Batch &b) const {
        float tensor_scale = 1.0f;
        if constexpr (kScaled) {
            if (scale && !per_head_scale) tensor_scale = *scale;
        }
#pragma unroll
        for (int u = 0; u < kUnroll; ++u) {
            const uint32_t j = base + u * 32;
            if (j < units) {
                uint32_t head, chunk;  // recomputed: cheaper than holding them in registers
                chunks.divmod(j, head, chunk);
                float s = tensor_scale;
                if constexpr (kScaled) {
                    if (scale && per_head_scale) s = scale[head];
                }
                VD out;
#pragma unroll
                for (int i = 0; i < VEC; ++i) {
                    if constexpr (Dir == Direction::Encode) out.v[i] = encode_for_cache<From, To>(b.in[u].v[i], s);
                    else out.v[i] = decode_from_cache<From, To>(b.in[u].v[i], s);
                }
                *reinterpret_cast<VD *>(dst + head * dst_head_stride + int64_t(chunk) * (VEC * sizeof(D))) = out;
            }
        }
    }

    // Copies every unit from `base` on (a lane passes its lane index, or the next batch start).
    __device__ __forceinline__ void run(uint32_t base) const {
        for (; base < units; base += 32 * kUnroll) {
            Batch b;
            load(base, b);
            store(base, b);
        }
    }
};

}  // namespace pkv
