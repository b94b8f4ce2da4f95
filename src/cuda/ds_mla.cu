// CUDA fp8_ds_mla entries. The entry math is core/ds_mla.h (shared with the CPU backend).
//
// Write: one warp per token, U tokens a warp per step (U = 2 for large calls with 16-byte
// aligned kv_c rows, else 1). All loads of a step (the U slots, kv_c and k_pe rows) are issued
// before any arithmetic or store, so a step pays one memory latency and keeps 2 x 16 bytes
// (U = 2: 4 x 16) of kv_c in flight a lane. Lane l owns latent elements [16 l, 16 l + 16)
// (tile l / 8): two 16-byte loads when the kv_c rows are 16-byte
// aligned (2-byte loads otherwise). The tile amax is the integer maximum of the magnitude bits,
// taken in the 16-bit domain of the input (monotone, so it equals the float32 one; a NaN still
// wins) and reduced with xor shuffles over the tile's 8 lanes; then the codes (one 16-byte
// store a lane when the entry is 16-byte aligned, else four 4-byte stores), the tile scale from
// the tile's first lane, and the 64 RoPE words, two a lane.
// Gather: one warp per R output rows (R = 1 or 2) a step. The lanes find the rows' sources in
// parallel (lane l: row l % R) and share them with shuffles; then every load of the step is
// issued before the first store. Lane l decodes elements [8 l, 8 l + 8) and [256 + 8 l, ...)
// (8-byte code loads when entries are 8-byte aligned, e.g. the 656-byte default stride; 4-byte
// loads otherwise) and 2 RoPE words; fp8 -> float via the hardware e4m3x2 -> f16x2 conversion
// (exact), then float(code) * s and the canonical NaN as ds_mla::decode_latent.
// No host sync, allocation or device query: graph-capturable. Address math in int64. Both are
// launched with programmatic dependent launch (launch_pdl, cuda_check.cuh): no global memory is
// touched before pdl_wait().
#include <cstdint>

#include "core/ds_mla.h"
#include "core/ops.h"
#include "cuda/cuda_check.cuh"

namespace pkv {
namespace {

constexpr int kWriteThreads = 128;
constexpr int kGatherThreads = 256;
constexpr int64_t kMaxGrid = int64_t(1) << 22;
constexpr int64_t kLargeCall = 8192;  // tokens / rows from which a warp takes 2 a step

__device__ __forceinline__ uint32_t ldg_u16(const char *p) { return *reinterpret_cast<const uint16_t *>(p); }

// 16-bit magnitudes of two packed inputs, the larger of each half kept (unsigned, per half).
__device__ __forceinline__ uint32_t max_u16x2(uint32_t a, uint32_t b) { return __vmaxu2(a, b); }

template <Elem In, bool kSrcVec, int U>
__global__ void __launch_bounds__(kWriteThreads, U > 1 ? 10 : 1) write_ds_mla_kernel(const MlaWriteArgs a) {
    pdl_launch_dependents();  // the next kernel may launch; it waits for our completion itself
    const int lane = int(threadIdx.x) & 31;
    const int64_t warp = (int64_t(blockIdx.x) * kWriteThreads + threadIdx.x) >> 5;
    const int64_t step = ((int64_t(gridDim.x) * kWriteThreads) >> 5) * U;
    const int64_t num_slots = a.cache.num_slots();
    const int tile = lane >> 3;
    pdl_wait();  // no global memory access before the previous kernel has completed
    for (int64_t t0 = warp * U; t0 < a.num_tokens; t0 += step) {
        int64_t slot[U];
        uint32_t x[U][8];  // 16 inputs, two a word (element 2 j in the low half of word j)
        uint32_t rope[U];
#pragma unroll
        for (int u = 0; u < U; ++u) {
            const int64_t t = t0 + u;
            slot[u] = -1;
            if (U > 1 && t >= a.num_tokens) continue;
            slot[u] = a.slots[t];
            const char *src = a.kv_c.data + a.kv_c.offset(t, 0) + lane * 32;
            const char *pe = a.k_pe.data + a.k_pe.offset(t, 0) + lane * 4;
            if constexpr (kSrcVec) {
                const uint4 v0 = reinterpret_cast<const uint4 *>(src)[0];
                const uint4 v1 = reinterpret_cast<const uint4 *>(src)[1];
                x[u][0] = v0.x, x[u][1] = v0.y, x[u][2] = v0.z, x[u][3] = v0.w;
                x[u][4] = v1.x, x[u][5] = v1.y, x[u][6] = v1.z, x[u][7] = v1.w;
                rope[u] = *reinterpret_cast<const uint32_t *>(pe);
            } else {
#pragma unroll
                for (int j = 0; j < 8; ++j) x[u][j] = ldg_u16(src + 4 * j) | (ldg_u16(src + 4 * j + 2) << 16);
                rope[u] = ldg_u16(pe) | (ldg_u16(pe + 2) << 16);
            }
        }
#pragma unroll
        for (int u = 0; u < U; ++u) {
            const int64_t s_u = slot[u];
            if (s_u < 0) continue;  // padding (or past the end): the whole warp skips the token
            if (s_u >= num_slots) {
                if (lane == 0 && a.out_of_range)
                    atomicAdd(reinterpret_cast<unsigned long long *>(a.out_of_range), 1ull);
                continue;
            }
            // Tile amax: the largest 16-bit magnitude, as the float32 magnitude bits.
            uint32_t m = x[u][0] & 0x7FFF7FFFu;
#pragma unroll
            for (int j = 1; j < 8; ++j) m = max_u16x2(m, x[u][j] & 0x7FFF7FFFu);
            const uint32_t m16 = ds_mla::max_bits(m & 0xFFFFu, m >> 16);
            uint32_t amax = ds_mla::magnitude_bits(to_f32<In>(uint16_t(m16)));
#pragma unroll
            for (int k = 4; k >= 1; k >>= 1) amax = ds_mla::max_bits(amax, __shfl_xor_sync(0xffffffffu, amax, k));
            const float s = ds_mla::tile_scale(amax);
            const Fp8Divisor d = make_fp8_divisor(s);
            // fp8_quotient, its test hoisted out of the element loop. f32x2_to_fp8x2 equals two
            // f32_to_e4m3 (ds_mla::encode_latent), checked bit for bit by tests/gtest/formats_device.cu.
            uint32_t codes[4];
            const auto encode = [&](auto quotient) {
#pragma unroll
                for (int j = 0; j < 4; ++j) {
                    const uint32_t w0 = x[u][2 * j], w1 = x[u][2 * j + 1];
                    const uint32_t p0 = fmt::f32x2_to_fp8x2<false>(quotient(to_f32<In>(uint16_t(w0))),
                                                                   quotient(to_f32<In>(uint16_t(w0 >> 16))));
                    const uint32_t p1 = fmt::f32x2_to_fp8x2<false>(quotient(to_f32<In>(uint16_t(w1))),
                                                                   quotient(to_f32<In>(uint16_t(w1 >> 16))));
                    codes[j] = p0 | (p1 << 16);
                }
            };
            if (d.fast) encode([&](float v) { return fp8_quotient_fast(v, d); });
            else encode([&](float v) { return v / d.scale; });
            const int64_t block = s_u / a.cache.block_size, offset = s_u - block * a.cache.block_size;
            char *entry = a.cache.k.data + a.cache.k.offset(block, offset, 0);
            char *dst = entry + lane * 16;
            if ((reinterpret_cast<uintptr_t>(entry) & 15u) == 0) {
                *reinterpret_cast<uint4 *>(dst) = make_uint4(codes[0], codes[1], codes[2], codes[3]);
            } else {  // entries are 4-byte aligned
#pragma unroll
                for (int j = 0; j < 4; ++j) reinterpret_cast<uint32_t *>(dst)[j] = codes[j];
            }
            if ((lane & 7) == 0) reinterpret_cast<float *>(entry + ds_mla::kScalesOffset)[tile] = s;
            reinterpret_cast<uint32_t *>(entry + ds_mla::kRopeOffset)[lane] = rope[u];
        }
    }
}

// Four codes (one word) -> four floats, exactly fmt::e4m3_to_f32 for every non-NaN code (a
// NaN code gives some NaN; decode() makes every NaN product canonical).
__device__ __forceinline__ void e4m3x4_to_f32(uint32_t w, float f[4]) {
    const __half2_raw lo = __nv_cvt_fp8x2_to_halfraw2(__nv_fp8x2_storage_t(w & 0xFFFFu), __NV_E4M3);
    const __half2_raw hi = __nv_cvt_fp8x2_to_halfraw2(__nv_fp8x2_storage_t(w >> 16), __NV_E4M3);
    f[0] = __half2float(__half(__half_raw{lo.x}));
    f[1] = __half2float(__half(__half_raw{lo.y}));
    f[2] = __half2float(__half(__half_raw{hi.x}));
    f[3] = __half2float(__half(__half_raw{hi.y}));
}

template <Elem Out> __device__ __forceinline__ Vec<storage_t<Out>, 8> decode8(uint32_t w0, uint32_t w1, float s) {
    float f[8];
    e4m3x4_to_f32(w0, f);
    e4m3x4_to_f32(w1, f + 4);
    Vec<storage_t<Out>, 8> o;
#pragma unroll
    for (int e = 0; e < 8; ++e) o.v[e] = from_f32<Out>(fmt::canonical_nan(f[e] * s));  // ds_mla::decode_latent
    return o;
}

template <typename V> __device__ __forceinline__ void store_vec(V *p, const V &v, bool vec) {
    if (vec) {
        *p = v;
    } else {
        constexpr int n = sizeof(v.v) / sizeof(v.v[0]);
#pragma unroll
        for (int e = 0; e < n; ++e) p->v[e] = v.v[e];
    }
}

// R rows a warp per step; kVec8: entries are 8-byte aligned (cache base and strides).
template <bool RopeF16, Elem Out, bool kVec8, int R>
__global__ void __launch_bounds__(kGatherThreads) gather_ds_mla_kernel(const GatherArgs a) {
    using D = storage_t<Out>;
    pdl_launch_dependents();
    const uint32_t lane = threadIdx.x & 31;
    const int64_t warp = (int64_t(blockIdx.x) * kGatherThreads + threadIdx.x) >> 5;
    const int64_t step = ((int64_t(gridDim.x) * kGatherThreads) >> 5) * R;
    const int mine = int(lane) % R;  // the row of the step whose source this lane finds
    const int half_tile = int(lane) >> 4;  // tile of elements [8 l, 8 l + 8): 0 or 1 (+2 above 256)
    pdl_wait();
    for (int64_t row0 = warp * R; row0 < a.num_rows; row0 += step) {
        // Sources, in parallel over the lanes: state 0 = not written, 1 = out of range, 2 = read.
        int64_t entry_off = 0;
        int state = 0;
        {
            const int64_t row = row0 + mine;
            int64_t block, offset;
            if ((R == 1 || row < a.num_rows) && gather_row_source(a, row, block, offset)) {
                state = block < 0 ? 1 : 2;
                if (block >= 0) entry_off = a.cache.k.offset(block, offset, 0);
            }
        }
        if (int(lane) < R && state == 1 && a.out_of_range)
            atomicAdd(reinterpret_cast<unsigned long long *>(a.out_of_range), 1ull);
        uint32_t c[R][4];
        float sc[R][2];
        uint32_t rope[R];
        bool read[R];
#pragma unroll
        for (int r = 0; r < R; ++r) {
            const int st = R == 1 ? state : __shfl_sync(0xffffffffu, state, r);
            const int64_t off = R == 1 ? entry_off : __shfl_sync(0xffffffffu, entry_off, r);
            read[r] = st == 2;
            if (!read[r]) continue;
            const char *entry = a.cache.k.data + off;
            if constexpr (kVec8) {
                const uint2 lo = reinterpret_cast<const uint2 *>(entry)[lane];
                const uint2 hi = reinterpret_cast<const uint2 *>(entry + 256)[lane];
                c[r][0] = lo.x, c[r][1] = lo.y, c[r][2] = hi.x, c[r][3] = hi.y;
            } else {
                const uint32_t *w = reinterpret_cast<const uint32_t *>(entry) + 2 * lane;
                c[r][0] = w[0], c[r][1] = w[1], c[r][2] = w[64], c[r][3] = w[65];
            }
            const float *scales = reinterpret_cast<const float *>(entry + ds_mla::kScalesOffset);
            sc[r][0] = scales[half_tile];
            sc[r][1] = scales[2 + half_tile];
            rope[r] = reinterpret_cast<const uint32_t *>(entry + ds_mla::kRopeOffset)[lane];
        }
#pragma unroll
        for (int r = 0; r < R; ++r) {
            if (!read[r]) continue;
            D *dst = reinterpret_cast<D *>(a.key.data + a.key.offset(row0 + r, 0));
            const bool vec = (reinterpret_cast<uintptr_t>(dst) & 15u) == 0;
            store_vec(reinterpret_cast<Vec<D, 8> *>(dst + lane * 8), decode8<Out>(c[r][0], c[r][1], sc[r][0]), vec);
            store_vec(reinterpret_cast<Vec<D, 8> *>(dst + 256 + lane * 8), decode8<Out>(c[r][2], c[r][3], sc[r][1]),
                      vec);
            Vec<D, 2> o;
            o.v[0] = ds_mla::decode_rope<RopeF16, Out>(uint16_t(rope[r]));
            o.v[1] = ds_mla::decode_rope<RopeF16, Out>(uint16_t(rope[r] >> 16));
            store_vec(reinterpret_cast<Vec<D, 2> *>(dst + ds_mla::kLatent + lane * 2), o, vec);
        }
    }
}

unsigned warps_grid(int64_t items, int per_warp, int threads) {
    const int64_t warps = (items + per_warp - 1) / per_warp;
    const int64_t per_block = threads / 32;
    const int64_t blocks = (warps + per_block - 1) / per_block;
    return unsigned(blocks < kMaxGrid ? blocks : kMaxGrid);
}

}  // namespace

void cuda_write_ds_mla(const MlaWriteArgs &a, pkv_stream stream) {
    // 16-byte kv_c loads need every row 16-byte aligned; k_pe words then need 4 bytes.
    const bool src_vec = ((reinterpret_cast<uintptr_t>(a.kv_c.data) | uint64_t(a.kv_c.stride_row)) & 15u) == 0 &&
                         ((reinterpret_cast<uintptr_t>(a.k_pe.data) | uint64_t(a.k_pe.stride_row)) & 3u) == 0;
    const bool large = src_vec && a.num_tokens >= kLargeCall;  // the fallback takes 1 token a step
    const unsigned grid = warps_grid(a.num_tokens, large ? 2 : 1, kWriteThreads);
    auto go = [&](auto kernel) { launch_pdl(kernel, grid, kWriteThreads, stream, a); };
    if (a.in == Elem::F16) {
        if (large) go(write_ds_mla_kernel<Elem::F16, true, 2>);
        else src_vec ? go(write_ds_mla_kernel<Elem::F16, true, 1>) : go(write_ds_mla_kernel<Elem::F16, false, 1>);
    } else {
        if (large) go(write_ds_mla_kernel<Elem::BF16, true, 2>);
        else src_vec ? go(write_ds_mla_kernel<Elem::BF16, true, 1>) : go(write_ds_mla_kernel<Elem::BF16, false, 1>);
    }
    cuda_check_launch("write_ds_mla_kernel");
}

void cuda_gather_ds_mla(const GatherArgs &a, pkv_stream stream) {
    const bool vec8 = ((reinterpret_cast<uintptr_t>(a.cache.k.data) | uint64_t(a.cache.k.stride_block) |
                        uint64_t(a.cache.k.stride_slot)) & 7u) == 0;
    const bool large = a.num_rows >= kLargeCall;
    const unsigned grid = warps_grid(a.num_rows, large ? 2 : 1, kGatherThreads);
    dispatch_elem(a.out, [&](auto out) {
        constexpr Elem Out = decltype(out)::value;
        if constexpr (!elem_is_fp8(Out)) {
            auto go = [&](auto rope_f16, auto v8) {
                constexpr bool RopeF16 = decltype(rope_f16)::value, V8 = decltype(v8)::value;
                if (large) launch_pdl(gather_ds_mla_kernel<RopeF16, Out, V8, 2>, grid, kGatherThreads, stream, a);
                else launch_pdl(gather_ds_mla_kernel<RopeF16, Out, V8, 1>, grid, kGatherThreads, stream, a);
            };
            using T = std::true_type;
            using F = std::false_type;
            if (a.cache.rope_f16) vec8 ? go(T{}, T{}) : go(T{}, F{});
            else vec8 ? go(F{}, T{}) : go(F{}, F{});
        }
    });
    cuda_check_launch("gather_ds_mla_kernel");
}

}  // namespace pkv
