// CUDA fp8_ds_mla entries. The entry math is core/ds_mla.h (shared with the CPU backend).
//
// Write: one 96-thread block per token (grid-stride over tokens). Warps 0 and 1 quantize the
// 512 latent values, a half-warp per 128-element tile: 8 elements a lane (one 16-byte load when
// the kv_c row allows it), the tile amax as the integer maximum of magnitude bits reduced with
// xor shuffles over the 16 lanes, then the codes as one 8-byte store a lane and the tile scale
// from the half-warp's first lane. Warp 2 copies the 64 RoPE words, two a lane.
// Gather: one warp per output row (grid-stride). Lane l reads 4 code bytes of each tile
// (16 fp8 bytes a lane, coalesced 4-byte loads: an entry is only 4-byte aligned) and 2 RoPE words,
// and writes 4 + 4 + 4 + 4 + 2 contiguous output elements (vector stores when the row allows).
// No host sync, allocation or device query: graph-capturable. Address math in int64. Both are
// launched with programmatic dependent launch (launch_pdl, cuda_check.cuh): no global memory is
// touched before pdl_wait().
#include <cstdint>

#include "core/ds_mla.h"
#include "core/ops.h"
#include "cuda/cuda_check.cuh"

namespace pkv {
namespace {

constexpr int kWriteThreads = 96;
constexpr int64_t kMaxGrid = int64_t(1) << 22;

template <Elem In> __global__ void __launch_bounds__(kWriteThreads) write_ds_mla_kernel(const MlaWriteArgs a) {
    pdl_launch_dependents();  // the next kernel may launch; it waits for our completion itself
    const int64_t num_slots = a.cache.num_slots();
    const int warp = int(threadIdx.x) >> 5, lane = int(threadIdx.x) & 31;
    pdl_wait();  // no global memory access before the previous kernel has completed
    for (int64_t t = blockIdx.x; t < a.num_tokens; t += gridDim.x) {
        const int64_t slot = a.slots[t];
        if (slot < 0) continue;  // padding: the whole block skips the token
        if (slot >= num_slots) {
            if (threadIdx.x == 0 && a.out_of_range)
                atomicAdd(reinterpret_cast<unsigned long long *>(a.out_of_range), 1ull);
            continue;
        }
        const int64_t block = slot / a.cache.block_size, offset = slot - block * a.cache.block_size;
        char *entry = a.cache.k.data + a.cache.k.offset(block, offset, 0);
        if (warp < 2) {
            const int tile = warp * 2 + (lane >> 4);
            const int first = tile * ds_mla::kTileElems + (lane & 15) * 8;
            const char *src = a.kv_c.data + a.kv_c.offset(t, 0) + int64_t(first) * 2;
            uint16_t x[8];
            if ((reinterpret_cast<uintptr_t>(src) & 15u) == 0) {
                const Vec<uint16_t, 8> v = *reinterpret_cast<const Vec<uint16_t, 8> *>(src);
#pragma unroll
                for (int e = 0; e < 8; ++e) x[e] = v.v[e];
            } else {
#pragma unroll
                for (int e = 0; e < 8; ++e) x[e] = reinterpret_cast<const uint16_t *>(src)[e];
            }
            float f[8];
            uint32_t amax = 0;
#pragma unroll
            for (int e = 0; e < 8; ++e) {
                f[e] = to_f32<In>(x[e]);
                amax = ds_mla::max_bits(amax, ds_mla::magnitude_bits(f[e]));
            }
#pragma unroll
            for (int m = 8; m >= 1; m >>= 1) amax = ds_mla::max_bits(amax, __shfl_xor_sync(0xffffffffu, amax, m));
            const float s = ds_mla::tile_scale(amax);
            const Fp8Divisor d = make_fp8_divisor(s);
            uint32_t packed[2] = {0u, 0u};
#pragma unroll
            for (int e = 0; e < 8; e += 2) {
                // f32x2_to_fp8x2 equals two f32_to_e4m3 (ds_mla::encode_latent), checked bit for
                // bit by tests/gtest/formats_device.cu.
                const uint32_t pair =
                    fmt::f32x2_to_fp8x2<false>(fp8_quotient(f[e], d), fp8_quotient(f[e + 1], d));
                packed[e / 4] |= pair << (16 * ((e / 2) & 1));
            }
            char *dst = entry + first;
            if ((reinterpret_cast<uintptr_t>(dst) & 7u) == 0) {
                *reinterpret_cast<uint2 *>(dst) = make_uint2(packed[0], packed[1]);
            } else {  // entries are 4-byte aligned
                reinterpret_cast<uint32_t *>(dst)[0] = packed[0];
                reinterpret_cast<uint32_t *>(dst)[1] = packed[1];
            }
            if ((lane & 15) == 0) reinterpret_cast<float *>(entry + ds_mla::kScalesOffset)[tile] = s;
        } else {
            const char *src = a.k_pe.data + a.k_pe.offset(t, 0) + lane * 4;
            uint32_t w;
            if ((reinterpret_cast<uintptr_t>(src) & 3u) == 0) {
                w = *reinterpret_cast<const uint32_t *>(src);
            } else {
                const uint16_t *p = reinterpret_cast<const uint16_t *>(src);
                w = uint32_t(p[0]) | (uint32_t(p[1]) << 16);
            }
            reinterpret_cast<uint32_t *>(entry + ds_mla::kRopeOffset)[lane] = w;
        }
    }
}

template <bool RopeF16, Elem Out>
__global__ void __launch_bounds__(kWarpsPerBlock * 32) gather_ds_mla_kernel(const GatherArgs a) {
    using D = storage_t<Out>;
    pdl_launch_dependents();
    const uint32_t lane = threadIdx.x & 31;
    const int64_t first = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) >> 5;
    const int64_t stride = (int64_t(gridDim.x) * blockDim.x) >> 5;
    pdl_wait();
    for (int64_t row = first; row < a.num_rows; row += stride) {
        int64_t block, offset;
        if (!gather_row_source(a, row, block, offset)) continue;
        if (block < 0) {
            if (lane == 0 && a.out_of_range) atomicAdd(reinterpret_cast<unsigned long long *>(a.out_of_range), 1ull);
            continue;
        }
        const char *entry = a.cache.k.data + a.cache.k.offset(block, offset, 0);
        uint32_t codes[ds_mla::kTiles];
        float scales[ds_mla::kTiles];
#pragma unroll
        for (int i = 0; i < ds_mla::kTiles; ++i) {
            codes[i] = reinterpret_cast<const uint32_t *>(entry + i * ds_mla::kTileElems)[lane];
            scales[i] = reinterpret_cast<const float *>(entry + ds_mla::kScalesOffset)[i];
        }
        const uint32_t rope = reinterpret_cast<const uint32_t *>(entry + ds_mla::kRopeOffset)[lane];

        D *dst = reinterpret_cast<D *>(a.key.data + a.key.offset(row, 0));
        const bool vec = (reinterpret_cast<uintptr_t>(dst) % (4 * sizeof(D))) == 0;
#pragma unroll
        for (int i = 0; i < ds_mla::kTiles; ++i) {
            Vec<D, 4> o;
#pragma unroll
            for (int e = 0; e < 4; ++e)
                o.v[e] = from_f32<Out>(ds_mla::decode_latent(uint8_t(codes[i] >> (8 * e)), scales[i]));
            D *p = dst + i * ds_mla::kTileElems + lane * 4;
            if (vec) {
                *reinterpret_cast<Vec<D, 4> *>(p) = o;
            } else {
#pragma unroll
                for (int e = 0; e < 4; ++e) p[e] = o.v[e];
            }
        }
        Vec<D, 2> r;
        r.v[0] = ds_mla::decode_rope<RopeF16, Out>(uint16_t(rope));
        r.v[1] = ds_mla::decode_rope<RopeF16, Out>(uint16_t(rope >> 16));
        D *p = dst + ds_mla::kLatent + lane * 2;
        if (vec) {
            *reinterpret_cast<Vec<D, 2> *>(p) = r;
        } else {
            p[0] = r.v[0];
            p[1] = r.v[1];
        }
    }
}

}  // namespace

void cuda_write_ds_mla(const MlaWriteArgs &a, pkv_stream stream) {
    const unsigned grid = unsigned(a.num_tokens < kMaxGrid ? a.num_tokens : kMaxGrid);
    if (a.in == Elem::F16) launch_pdl(write_ds_mla_kernel<Elem::F16>, grid, kWriteThreads, stream, a);
    else launch_pdl(write_ds_mla_kernel<Elem::BF16>, grid, kWriteThreads, stream, a);
    cuda_check_launch("write_ds_mla_kernel");
}

void cuda_gather_ds_mla(const GatherArgs &a, pkv_stream stream) {
    const unsigned grid = rows_grid(a.num_rows);
    dispatch_elem(a.out, [&](auto out) {
        constexpr Elem Out = decltype(out)::value;
        if constexpr (!elem_is_fp8(Out)) {
            if (a.cache.rope_f16) launch_pdl(gather_ds_mla_kernel<true, Out>, grid, kWarpsPerBlock * 32, stream, a);
            else launch_pdl(gather_ds_mla_kernel<false, Out>, grid, kWarpsPerBlock * 32, stream, a);
        }
    });
    cuda_check_launch("gather_ds_mla_kernel");
}

}  // namespace pkv
