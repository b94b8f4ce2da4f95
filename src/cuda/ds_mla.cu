// CUDA fp8_ds_mla entries. The entry math is core/ds_mla.h (shared with the CPU backend).
//
// Write: one warp per token, U tokens a warp per step (U = 4 from 16384 tokens, 2 from 8192,
// else 1; U > 1 needs 16-byte aligned kv_c rows and entries). All loads of a step (slots, kv_c
// and k_pe rows) are issued before any arithmetic or store. Lane l owns latent elements
// [16 l, 16 l + 16) (tile l / 8): two 16-byte loads (2-byte loads for unaligned rows). With
// U > 1, lane u < U loads and resolves token u's slot (one division by the block size a step,
// by shift or host-made magic number, never a 64-bit division), shared by shuffle / ballot.
// The tile amax is the integer maximum of the 16-bit magnitudes (monotone, so it equals the
// float32 one; a NaN still wins), reduced over the tile's 8 lanes with xor shuffles, two tokens
// packed in a word; each lane then computes one (token, tile) scale and reciprocal (the IEEE
// division and reciprocal once a step) and they are shuffled back. Codes: tile_quotient (3
// instructions an element, same code as fp8_quotient for every input of the tile, exhaustively
// checked against ds_mla::encode_latent for all bf16 / f16 amax / x pairs) with a rare
// power-of-two rescaled path for scales outside [2^-40, 2^40], inf and NaN (no division per
// element). Stores: one 16-byte store a lane (four 4-byte stores for 4-byte aligned entries),
// the tile scale from the tile's first lane, and the 64 RoPE words, two a lane.
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
#include <type_traits>

#include "core/ds_mla.h"
#include "core/ops.h"
#include "cuda/cuda_check.cuh"

namespace pkv {
namespace {

constexpr int kWriteThreads = 128;
constexpr int kGatherThreads = 256;
constexpr int64_t kMaxGrid = int64_t(1) << 22;
constexpr int64_t kLargeCall = 8192;   // tokens / rows from which a warp takes 2 a step
constexpr int64_t kLargerCall = 16384; // tokens from which a write warp takes 4 a step

__device__ __forceinline__ uint32_t ldg_u16(const char *p) { return *reinterpret_cast<const uint16_t *>(p); }

// 16-bit magnitudes of two packed inputs, the larger of each half kept (unsigned, per half).
__device__ __forceinline__ uint32_t max_u16x2(uint32_t a, uint32_t b) { return __vmaxu2(a, b); }

// The low / high input of a word as float32, for the fast path only (no NaN / inf there, so the
// f16 conversion needs none of f16_bits_to_f32's NaN-payload handling).
template <Elem In> __device__ __forceinline__ float lo_f32(uint32_t w) {
    if constexpr (In == Elem::BF16) return __uint_as_float(w << 16);
    else return __half2float(__ushort_as_half(uint16_t(w)));
}
template <Elem In> __device__ __forceinline__ float hi_f32(uint32_t w) {
    if constexpr (In == Elem::BF16) return __uint_as_float(w & 0xFFFF0000u);
    else return __half2float(__ushort_as_half(uint16_t(w >> 16)));
}

// fp8_quotient_fast's code for the tile values of a fast divisor, in three instructions.
// In a tile |x| <= amax and s = RN(amax / 448) (>= FLT_MIN), so |x / s| <= 448 (1 + 2^-22): the
// range test of fp8_quotient_fast (q0 below 2^-20 or from 2^64: return q0) matters only below
// 2^-20, where q0 and q1 both code as a zero (|q| < 2^-10) and differ at most in its sign (q1 of
// a -0 input is +0 there). Computing the residual negated, -(s q0 - x), keeps that sign: it is
// RN(x - s q0) bit for bit when nonzero (round to nearest is symmetric), -0 for x = +-0 (so q1 =
// -0 + q0 = q0, a zero with x's sign), and where it is an exact zero for x != 0, q1 = q0 as well.
// For a nonzero x, q1 = RN(q0 + residual r) keeps x's sign (|residual r| is far below |q0|, or
// q0 = 0 and q1 = RN(x r)). So the code equals that of fp8_quotient for every finite x of the
// tile (tests/gtest/mla_test.cpp compares with the CPU backend bit for bit).
__device__ __forceinline__ float tile_quotient(float x, float s, float r) {
    const float q0 = __fmul_rn(x, r);
    const float t = __fmaf_rn(s, q0, -x);
    return __fmaf_rn(-t, r, q0);
}

// The 16 codes of a lane (x: 16 inputs, two a word) with tile_quotient(x k, s, r). k = 1 for a
// fast divisor (s in [2^-40, 2^40]). Otherwise (s normal, = 2^e s1 with s1 in [1, 2)) the caller
// passes s1, r1 = RN(1 / s1) = 2^e RN(1 / s) and k = 2^-e: x k is exact unless it falls below
// 2^-126, where x / s codes as a zero with x's sign as x k / s1 does, so the code is that of the
// true quotient x / s (fp8_quotient's division); s = inf passes s1 = r1 = 0, which gives x * 0 =
// x / inf; s = NaN gives NaN codes (0x7F) by itself.
template <Elem In>
__device__ __forceinline__ void encode16(const uint32_t (&x)[8], uint32_t (&codes)[4], float s, float r, float k) {
#pragma unroll
    for (int j = 0; j < 4; ++j) {
        const uint32_t w0 = x[2 * j], w1 = x[2 * j + 1];
        const uint32_t p0 = fmt::f32x2_to_fp8x2<false>(tile_quotient(lo_f32<In>(w0) * k, s, r),
                                                       tile_quotient(hi_f32<In>(w0) * k, s, r));
        const uint32_t p1 = fmt::f32x2_to_fp8x2<false>(tile_quotient(lo_f32<In>(w1) * k, s, r),
                                                       tile_quotient(hi_f32<In>(w1) * k, s, r));
        codes[j] = p0 | (p1 << 16);
    }
}

// Token u of a step's lanes: the entry offset, and whether it is written.
struct TokenDst {
    int64_t off;
    bool write;
};

// slot / block_size without a 64-bit division: a shift for a power of two, else libdivide's
// branch-free unsigned 64-bit algorithm (magic = 1 + 2 floor(2^(64 + l) / d) (+ 1), l =
// floor(log2 d); exact for every n < 2^64 and d >= 2), made once per launch on the host.
struct SlotDivider {
    uint64_t magic = 0;
    int shift = 0;
    bool pow2 = true;
};

SlotDivider make_slot_divider(int64_t block_size) {
    SlotDivider v;
    const uint64_t d = uint64_t(block_size);
    int l = 0;
    while ((d >> (l + 1)) != 0) ++l;
    v.shift = l;
    v.pow2 = (d & (d - 1)) == 0;
    if (!v.pow2) {
        const unsigned __int128 num = (unsigned __int128)(uint64_t(1) << l) << 64;
        uint64_t m = uint64_t(num / d);
        const uint64_t rem = uint64_t(num % d);
        m += m;
        const uint64_t twice_rem = rem + rem;
        if (twice_rem >= d || twice_rem < rem) m += 1;
        v.magic = 1 + m;
    }
    return v;
}

__device__ __forceinline__ uint64_t divide_slot(uint64_t n, const SlotDivider &v) {
    if (v.pow2) return n >> v.shift;
    const uint64_t q = __umul64hi(v.magic, n);
    return (((n - q) >> 1) + q) >> v.shift;
}

// Slot -> entry byte offset, or false (padding, past the end: nothing; out of range: counted
// when `count`).
__device__ __forceinline__ bool slot_entry(const MlaWriteArgs &a, const SlotDivider &div, int64_t slot,
                                           int64_t num_slots, bool count, int64_t &off) {
    if (slot < 0) return false;
    if (slot >= num_slots) {
        if (count && a.out_of_range) atomicAdd(reinterpret_cast<unsigned long long *>(a.out_of_range), 1ull);
        return false;
    }
    const int64_t block = int64_t(divide_slot(uint64_t(slot), div));
    const int64_t offset = slot - block * a.cache.block_size;
    off = a.cache.k.offset(block, offset, 0);
    return true;
}

// U tokens a warp per step. kSrcVec: kv_c rows 16-byte aligned and k_pe rows 4-byte aligned;
// kDst16: every entry 16-byte aligned (else tested per entry). div: make_slot_divider(block_size).
template <Elem In, bool kSrcVec, bool kDst16, int U>
__global__ void __launch_bounds__(kWriteThreads, U == 4 ? 8 : U == 2 ? 10 : 1)
    write_ds_mla_kernel(const MlaWriteArgs a, const SlotDivider div) {
    pdl_launch_dependents();  // the next kernel may launch; it waits for our completion itself
    const int lane = int(threadIdx.x) & 31;
    const int64_t warp = (int64_t(blockIdx.x) * kWriteThreads + threadIdx.x) >> 5;
    const int64_t step = ((int64_t(gridDim.x) * kWriteThreads) >> 5) * U;
    const int64_t num_slots = a.cache.num_slots();
    const int tile = lane >> 3;
    pdl_wait();  // no global memory access before the previous kernel has completed
    for (int64_t t0 = warp * U; t0 < a.num_tokens; t0 += step) {
        // Slots: U = 1, every lane loads the token's (one broadcast load); else lane u < U loads
        // token t0 + u's and resolves it, shared below with shuffles.
        int64_t my_slot = -1;
        if (U == 1) my_slot = a.slots[t0];
        else if (lane < U && t0 + lane < a.num_tokens) my_slot = a.slots[t0 + lane];
        uint32_t x[U][8];  // 16 inputs, two a word (element 2 j in the low half of word j)
        uint32_t rope[U];
#pragma unroll
        for (int u = 0; u < U; ++u) {
            const int64_t t = t0 + u;
            if (U > 1 && t >= a.num_tokens) {
#pragma unroll
                for (int j = 0; j < 8; ++j) x[u][j] = 0;
                rope[u] = 0;
                continue;
            }
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
        TokenDst dst[U];
        if (U == 1) {
            int64_t off = 0;  // every lane resolves the slot; lane 0 alone counts an out-of-range one
            const bool write = slot_entry(a, div, my_slot, num_slots, lane == 0, off);
            dst[0] = {off, write};
        } else {
            int64_t off = 0;
            const bool write = slot_entry(a, div, my_slot, num_slots, true, off);  // lanes >= U: slot -1
            const uint32_t writes = __ballot_sync(0xffffffffu, write);
#pragma unroll
            for (int u = 0; u < U; ++u) {
                dst[u].off = __shfl_sync(0xffffffffu, off, u);
                dst[u].write = (writes >> u) & 1u;
            }
        }
        // Tile amax of every token: the largest 16-bit magnitude (as the float32 magnitude bits),
        // reduced over the tile's 8 lanes with two tokens packed in a word (u16x2 maxima).
        uint32_t m16[U];
#pragma unroll
        for (int u = 0; u < U; ++u) {
            uint32_t m = x[u][0] & 0x7FFF7FFFu;
#pragma unroll
            for (int j = 1; j < 8; ++j) m = max_u16x2(m, x[u][j] & 0x7FFF7FFFu);
            m16[u] = max_bits(m & 0xFFFFu, m >> 16);
        }
        // Scale and reciprocal of (token u, this lane's tile): U == 1, every lane computes its
        // tile's; else lane l computes token l % U's (every lane of a tile holds all U maxima),
        // shared below with shuffles, so a step pays one division and one reciprocal.
        float my_s, my_r;
        {
            uint32_t mine;
            if constexpr (U == 1) {
                mine = m16[0];
#pragma unroll
                for (int k = 4; k >= 1; k >>= 1) mine = max_bits(mine, __shfl_xor_sync(0xffffffffu, mine, k));
            } else {
                uint32_t p[U / 2];
#pragma unroll
                for (int i = 0; i < U / 2; ++i) {
                    p[i] = m16[2 * i] | (m16[2 * i + 1] << 16);
#pragma unroll
                    for (int k = 4; k >= 1; k >>= 1) p[i] = max_u16x2(p[i], __shfl_xor_sync(0xffffffffu, p[i], k));
                }
                const int u = lane & (U - 1);
                uint32_t w = p[0];
#pragma unroll
                for (int i = 1; i < U / 2; ++i)
                    if ((u >> 1) == i) w = p[i];
                mine = (u & 1) ? w >> 16 : w & 0xFFFFu;
            }
            my_s = ds_mla::tile_scale(magnitude_bits(to_f32<In>(uint16_t(mine))));
            my_r = 1.0f / my_s;  // make_fp8_divisor's reciprocal
        }
#pragma unroll
        for (int u = 0; u < U; ++u) {
            const int src_lane = (lane & ~7) | u;  // a lane of this tile that computed token u's
            const float s = U == 1 ? my_s : __shfl_sync(0xffffffffu, my_s, src_lane);
            const float r = U == 1 ? my_r : __shfl_sync(0xffffffffu, my_r, src_lane);
            // f32x2_to_fp8x2 equals two f32_to_e4m3 (ds_mla::encode_latent), checked bit for bit
            // by tests/gtest/formats_device.cu.
            uint32_t codes[4];
            const float as = fabsf(s);
            if (as >= 0x1p-40f && as <= 0x1p40f) {  // make_fp8_divisor(s).fast
                encode16<In>(x[u], codes, s, r, 1.0f);
            } else {  // rare, see encode16
                const uint32_t eb = __float_as_uint(s) >> 23;  // s > 0: its biased exponent
                float s1 = s, r1 = r, k = 1.0f;
                if (eb == 0xFFu) {
                    if (!(s != s)) s1 = r1 = 0.0f;  // s = inf: x * 0 is x / inf
                } else {
                    k = __uint_as_float((254u - eb) << 23);  // 2^-e, s = 2^e * [1, 2)
                    s1 = s * k;                                 // exact, in [1, 2)
                    r1 = r * __uint_as_float(eb << 23);         // r * 2^e = RN(1 / s1), exact
                }
                encode16<In>(x[u], codes, s1, r1, k);
            }
            if (!dst[u].write) continue;  // warp-uniform
            char *entry = a.cache.k.data + dst[u].off;
            char *out = entry + lane * 16;
            if (kDst16 || (reinterpret_cast<uintptr_t>(entry) & 15u) == 0) {
                *reinterpret_cast<uint4 *>(out) = make_uint4(codes[0], codes[1], codes[2], codes[3]);
            } else {  // entries are 4-byte aligned
#pragma unroll
                for (int j = 0; j < 4; ++j) reinterpret_cast<uint32_t *>(out)[j] = codes[j];
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
    const bool dst16 = ((reinterpret_cast<uintptr_t>(a.cache.k.data) | uint64_t(a.cache.k.stride_block) |
                         uint64_t(a.cache.k.stride_slot)) & 15u) == 0;
    const bool fast = src_vec && dst16;  // else 1 token a step, entries' alignment tested each
    const int per_warp = !fast ? 1 : a.num_tokens >= kLargerCall ? 4 : a.num_tokens >= kLargeCall ? 2 : 1;
    const SlotDivider div = make_slot_divider(a.cache.block_size);
    const unsigned grid = warps_grid(a.num_tokens, per_warp, kWriteThreads);
    auto go = [&](auto kernel) { launch_pdl(kernel, grid, kWriteThreads, stream, a, div); };
    auto pick = [&](auto in) {
        constexpr Elem In = decltype(in)::value;
        if (!fast) src_vec ? go(write_ds_mla_kernel<In, true, false, 1>) : go(write_ds_mla_kernel<In, false, false, 1>);
        else if (per_warp == 4) go(write_ds_mla_kernel<In, true, true, 4>);
        else if (per_warp == 2) go(write_ds_mla_kernel<In, true, true, 2>);
        else go(write_ds_mla_kernel<In, true, true, 1>);
    };
    if (a.in == Elem::F16) pick(std::integral_constant<Elem, Elem::F16>{});
    else pick(std::integral_constant<Elem, Elem::BF16>{});
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
