// CUDA per-token-head INT8 / FP8, with the row math of core/token_head_quant.h (bit-identical
// to the CPU backend).
//
// Write: a group of G lanes (a power of two, at most 32) per (token, head), G the fewest lanes
// that hold the longer of the K and V rows in kUnits aligned vectors a lane; a warp handles
// 32 / G rows at once (grid-striding over T * H). Each lane first issues the slot load and the
// loads of all its K and V vectors (up to 2 * kUnits * 16 bytes in flight a lane), then reduces
// the lane-local maximum magnitude patterns across the group (xor shuffles: exact in any order),
// and only then works out the destination, the scale (stored by the group's first lane) and the
// codes. Rows longer than 32 * kUnits vectors read the rest again in the second pass.
// Gather: one warp per output row, the lanes strided over the (side, head, vector) units of the
// K row and the V row together; kGatherUnroll units a lane are loaded before any is converted.
// FP8 codes are decoded by the hardware (e4m3x2 -> f16x2, exact) on sm_89+.
// Both launched with programmatic dependent launch (cuda_check.cuh): no global memory access
// before pdl_wait(). No host sync, no allocation, no device query: capturable in a CUDA graph.
#include "core/element_convert.h"
#include "core/fast_divmod.h"
#include "core/ops.h"
#include "core/token_head_quant.h"
#include "cuda/cuda_check.cuh"

namespace pkv {
namespace {

constexpr int kThreads = 256;
constexpr int kUnits = 4;  // vectors a lane keeps in registers per row (K and V each)
// Units a lane loads before converting any: 32 code bytes with 16-byte vectors (more would
// spill: 16 codes decode to 32 output bytes), else 4 vectors.
template <int VEC> constexpr int gather_unroll() { return VEC >= 16 ? 2 : 4; }

// By value: the vector is read as one access (a reference into global memory would let the
// compiler read it element by element).
template <typename T> __device__ __forceinline__ T load_at(const char *base, int64_t byte_offset) {
    return *reinterpret_cast<const T *>(base + byte_offset);
}

template <Elem In, int VEC> __device__ __forceinline__ uint32_t vec_amax(const Vec<storage_t<In>, VEC> &x) {
    uint32_t m = 0;
#pragma unroll
    for (int e = 0; e < VEC; ++e) m = max_bits(m, magnitude_bits(to_f32<In>(x.v[e])));
    return m;
}

template <Elem In, bool Fp8, int VEC>
__device__ __forceinline__ Vec<uint8_t, VEC> quantize_vec(const Vec<storage_t<In>, VEC> &x, float inv) {
    Vec<uint8_t, VEC> out;
    float v[VEC];
#pragma unroll
    for (int e = 0; e < VEC; ++e) v[e] = mul_rn(to_f32<In>(x.v[e]), inv);
    if constexpr (Fp8 && VEC % 2 == 0) {
        // The same codes as th::encode<true> (fmt::f32_to_e4m3), converted a pair at a time.
#pragma unroll
        for (int e = 0; e < VEC; e += 2) {
            const uint16_t pair = fmt::f32x2_to_fp8x2<false>(v[e], v[e + 1]);
            out.v[e] = uint8_t(pair);
            out.v[e + 1] = uint8_t(pair >> 8);
        }
    } else {
#pragma unroll
        for (int e = 0; e < VEC; ++e) out.v[e] = Fp8 ? fmt::f32_to_e4m3(v[e]) : uint8_t(th::int8_code(v[e]));
    }
    return out;
}

// One side's row held by a lane: vectors sub + G * i (i < kUnits) of the row.
template <Elem In, int VEC> struct RowRegs {
    Vec<storage_t<In>, VEC> x[kUnits];
};

// Issues the loads of this lane's held vectors (units = 0: none).
template <Elem In, int VEC>
__device__ __forceinline__ void load_row(RowRegs<In, VEC> &R, const char *src, uint32_t units, uint32_t sub,
                                         uint32_t gsize) {
    using V = Vec<storage_t<In>, VEC>;
#pragma unroll
    for (int i = 0; i < kUnits; ++i) {
        const uint32_t u = sub + gsize * i;
        if (u < units) R.x[i] = load_at<V>(src, int64_t(u) * sizeof(V));
    }
}

// This lane's maximum magnitude pattern of the row (the held vectors, then any beyond them).
template <Elem In, int VEC>
__device__ __forceinline__ uint32_t row_amax(const RowRegs<In, VEC> &R, const char *src, uint32_t units, uint32_t sub,
                                             uint32_t gsize) {
    using V = Vec<storage_t<In>, VEC>;
    uint32_t m = 0;
#pragma unroll
    for (int i = 0; i < kUnits; ++i)
        if (sub + gsize * i < units) m = max_bits(m, vec_amax<In, VEC>(R.x[i]));
    for (uint32_t u = sub + gsize * kUnits; u < units; u += gsize)
        m = max_bits(m, vec_amax<In, VEC>(load_at<V>(src, int64_t(u) * sizeof(V))));
    return m;
}

// Second pass of a row, with the group's maximum: the scale (first lane), then this lane's codes.
template <Elem In, bool Fp8, int VEC>
__device__ __forceinline__ void store_row(const RowRegs<In, VEC> &R, uint32_t amax, const char *src, char *dst,
                                          float *scale_dst, uint32_t units, uint32_t sub, uint32_t gsize) {
    using V = Vec<storage_t<In>, VEC>;
    using C = Vec<uint8_t, VEC>;
    const float s = th::row_scale<Fp8>(amax);
    const float inv = th::reciprocal(s);
    if (sub == 0) *scale_dst = s;
#pragma unroll
    for (int i = 0; i < kUnits; ++i) {
        const uint32_t u = sub + gsize * i;
        if (u < units) *reinterpret_cast<C *>(dst + int64_t(u) * VEC) = quantize_vec<In, Fp8, VEC>(R.x[i], inv);
    }
    for (uint32_t u = sub + gsize * kUnits; u < units; u += gsize)
        *reinterpret_cast<C *>(dst + int64_t(u) * VEC) =
            quantize_vec<In, Fp8, VEC>(load_at<V>(src, int64_t(u) * sizeof(V)), inv);
}

struct WriteLaunch {
    WriteArgs a;
    uint32_t units_k, units_v;  // vectors per K / V row (units_v = 0 without V)
    uint32_t group_shift;       // log2 of the lanes per row
    bool small_rows;            // num_tokens * num_heads < 2^31: `heads` applies
    bool small_slots;           // num_slots < 2^31: `block_size` applies
    FastDivmod heads, block_size;
};

template <Elem In, bool Fp8, int VEC>
__global__ void __launch_bounds__(kThreads) token_head_write_kernel(const WriteLaunch p) {
    pdl_launch_dependents();  // the next kernel may launch; it waits for our completion itself
    const WriteArgs &a = p.a;
    const uint32_t gsize = 1u << p.group_shift;
    const uint32_t sub = threadIdx.x & (gsize - 1);
    const int64_t thread = int64_t(blockIdx.x) * kThreads + threadIdx.x;
    const int64_t warp_first = (thread & ~int64_t(31)) >> p.group_shift;  // the warp's first group
    const int64_t in_warp = (thread >> p.group_shift) - warp_first;
    const int64_t groups = (int64_t(gridDim.x) * kThreads) >> p.group_shift;
    const int64_t rows = a.num_tokens * a.cache.num_heads;
    const int64_t num_slots = a.cache.num_slots();
    const bool has_v = a.cache.has_v;
    pdl_wait();  // no global memory access before the previous kernel has completed
    // Warp-uniform loop (the group reductions shuffle over the whole warp); past the last row a
    // group loads nothing and stores nothing.
    for (int64_t w0 = warp_first; w0 < rows; w0 += groups) {
        const int64_t w = w0 + in_warp;
        const bool valid = w < rows;
        int64_t t = 0, h = 0;
        if (valid) {
            if (p.small_rows) {
                uint32_t q, r;
                p.heads.divmod(uint32_t(w), q, r);
                t = q;
                h = r;
            } else {
                t = w / a.cache.num_heads;
                h = w - t * a.cache.num_heads;
            }
        }
        const uint32_t units_k = valid ? p.units_k : 0u, units_v = valid ? p.units_v : 0u;
        const int64_t slot = valid ? a.slots[t] : -1;
        // The row loads do not depend on the slot: all in flight before it is tested.
        const char *ksrc = a.key.data + a.key.offset(t, h);
        const char *vsrc = has_v ? a.value.data + a.value.offset(t, h) : ksrc;
        RowRegs<In, VEC> kr, vr;
        load_row<In, VEC>(kr, ksrc, units_k, sub, gsize);
        load_row<In, VEC>(vr, vsrc, units_v, sub, gsize);
        uint32_t km = row_amax<In, VEC>(kr, ksrc, units_k, sub, gsize);
        uint32_t vm = row_amax<In, VEC>(vr, vsrc, units_v, sub, gsize);
        for (uint32_t o = gsize >> 1; o > 0; o >>= 1) {  // within the group: exact in any order
            km = max_bits(km, __shfl_xor_sync(0xffffffffu, km, o));
            vm = max_bits(vm, __shfl_xor_sync(0xffffffffu, vm, o));
        }
        if (slot < 0) continue;  // padding (or past the last row): neither codes nor scale
        if (slot >= num_slots) {  // counted once per token
            if (h == 0 && sub == 0 && a.out_of_range)
                atomicAdd(reinterpret_cast<unsigned long long *>(a.out_of_range), 1ull);
            continue;
        }
        int64_t block, offset;
        if (p.small_slots) {
            uint32_t q, r;
            p.block_size.divmod(uint32_t(slot), q, r);
            block = q;
            offset = r;
        } else {
            block = slot / a.cache.block_size;
            offset = slot - block * a.cache.block_size;
        }
        const CacheSide &kc = a.cache.k;
        store_row<In, Fp8, VEC>(kr, km, ksrc, kc.data + kc.offset(block, offset, h), kc.scale_at(block, offset, h),
                                units_k, sub, gsize);
        if (has_v) {
            const CacheSide &vc = a.cache.v;
            store_row<In, Fp8, VEC>(vr, vm, vsrc, vc.data + vc.offset(block, offset, h),
                                    vc.scale_at(block, offset, h), units_v, sub, gsize);
        }
    }
}

// float(code) of an INT8 code: 2^23 + (q + 128) as a float pattern, minus 2^23 + 128 (exact).
__device__ __forceinline__ float int8_value(uint8_t q) {
    return __fsub_rn(__uint_as_float(0x4b000000u | uint32_t(q ^ 0x80u)), 8388736.0f);
}

// th::decode for a vector of codes, converted to the output dtype.
template <Elem Out, bool Fp8, int VEC>
__device__ __forceinline__ Vec<storage_t<Out>, VEC> decode_vec(const Vec<uint8_t, VEC> &in, float s) {
    Vec<storage_t<Out>, VEC> out;
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 890
    if constexpr (Fp8 && VEC % 2 == 0) {
        // e4m3x2 -> f16x2 is exact for every code (NaN codes give a NaN: canonical after the
        // multiply, like th::decode's), f16 -> f32 too.
#pragma unroll
        for (int e = 0; e < VEC; e += 2) {
            const __nv_fp8x2_storage_t pair =
                __nv_fp8x2_storage_t(uint32_t(in.v[e]) | (uint32_t(in.v[e + 1]) << 8));
            const __half2_raw h = __nv_cvt_fp8x2_to_halfraw2(pair, __NV_E4M3);
            const float lo = __half2float(__ushort_as_half(h.x)), hi = __half2float(__ushort_as_half(h.y));
            out.v[e] = from_f32<Out>(fmt::canonical_nan(mul_rn(lo, s)));
            out.v[e + 1] = from_f32<Out>(fmt::canonical_nan(mul_rn(hi, s)));
        }
        return out;
    }
#endif
    if constexpr (!Fp8) {
#pragma unroll
        for (int e = 0; e < VEC; ++e) out.v[e] = from_f32<Out>(fmt::canonical_nan(mul_rn(int8_value(in.v[e]), s)));
    } else {
#pragma unroll
        for (int e = 0; e < VEC; ++e) out.v[e] = from_f32<Out>(th::decode<true>(in.v[e], s));
    }
    return out;
}

struct GatherLaunch {
    GatherArgs a;
    uint32_t units_k, units;        // vectors in a K row (all heads), in the K and V rows
    FastDivmod chunks_k, chunks_v;  // vectors per head row
};

template <Elem Out, bool Fp8, int VEC>
__global__ void __launch_bounds__(kThreads, 4) token_head_gather_kernel(const GatherLaunch p) {
    using D = storage_t<Out>;
    using C = Vec<uint8_t, VEC>;
    using O = Vec<D, VEC>;
    constexpr int kGatherUnroll = gather_unroll<VEC>();
    pdl_launch_dependents();  // the next kernel may launch; it waits for our completion itself
    const GatherArgs &a = p.a;
    const uint32_t lane = threadIdx.x & 31;
    const int64_t first = (int64_t(blockIdx.x) * kThreads + threadIdx.x) >> 5;
    const int64_t stride = (int64_t(gridDim.x) * kThreads) >> 5;
    const CacheSide &kc = a.cache.k, &vc = a.cache.v;
    pdl_wait();  // no global memory access before the previous kernel has completed
    for (int64_t row = first; row < a.num_rows; row += stride) {
        int64_t block, offset;
        if (!gather_row_source(a, row, block, offset)) continue;
        if (block < 0) {
            if (lane == 0 && a.out_of_range) atomicAdd(reinterpret_cast<unsigned long long *>(a.out_of_range), 1ull);
            continue;
        }
        const char *ksrc = kc.data + kc.offset(block, offset, 0);
        const char *kscale = reinterpret_cast<const char *>(kc.scale_at(block, offset, 0));
        char *kdst = a.key.data + a.key.offset(row, 0);
        // Without V, units == units_k: the V pointers are never used.
        const bool with_v = p.units > p.units_k;
        const char *vsrc = with_v ? vc.data + vc.offset(block, offset, 0) : ksrc;
        const char *vscale = with_v ? reinterpret_cast<const char *>(vc.scale_at(block, offset, 0)) : kscale;
        char *vdst = with_v ? a.value.data + a.value.offset(row, 0) : kdst;
        for (uint32_t base = lane; base < p.units; base += 32 * kGatherUnroll) {
            C in[kGatherUnroll];
            float s[kGatherUnroll];
#pragma unroll
            for (int u = 0; u < kGatherUnroll; ++u) {
                const uint32_t j = base + u * 32;
                if (j >= p.units) continue;
                const bool is_v = j >= p.units_k;
                uint32_t head, chunk;
                (is_v ? p.chunks_v : p.chunks_k).divmod(is_v ? j - p.units_k : j, head, chunk);
                const CacheSide &c = is_v ? vc : kc;
                in[u] = load_at<C>(is_v ? vsrc : ksrc, head * c.stride_head + int64_t(chunk) * VEC);
                s[u] = load_at<float>(is_v ? vscale : kscale, head * c.scale_stride_head);
            }
#pragma unroll
            for (int u = 0; u < kGatherUnroll; ++u) {
                const uint32_t j = base + u * 32;
                if (j >= p.units) continue;
                const bool is_v = j >= p.units_k;
                uint32_t head, chunk;  // recomputed: cheaper than holding them in registers
                (is_v ? p.chunks_v : p.chunks_k).divmod(is_v ? j - p.units_k : j, head, chunk);
                const int64_t head_stride = is_v ? a.value.stride_head : a.key.stride_head;
                *reinterpret_cast<O *>((is_v ? vdst : kdst) + head * head_stride + int64_t(chunk) * sizeof(O)) =
                    decode_vec<Out, Fp8, VEC>(in[u], s[u]);
            }
        }
    }
}

}  // namespace

void cuda_write_token_head(const WriteArgs &a, pkv_stream stream) {
    const int in_bytes = elem_bytes(a.in);
    int vec = write_vector_elems(a);
    while (vec > 1 && vec * in_bytes > 16) vec >>= 1;  // at most 16 bytes a source vector

    WriteLaunch p;
    p.a = a;
    const int64_t rows = a.num_tokens * a.cache.num_heads;
    p.small_rows = rows < (int64_t(1) << 31);
    p.heads = FastDivmod(uint32_t(a.cache.num_heads));
    p.small_slots = a.cache.num_slots() < (int64_t(1) << 31);
    p.block_size = FastDivmod(p.small_slots ? uint32_t(a.cache.block_size) : 1u);
    p.units_k = uint32_t(a.cache.k.head_size / vec);
    p.units_v = a.cache.has_v ? uint32_t(a.cache.v.head_size / vec) : 0u;
    // The fewest lanes (a power of two, at most a warp) holding a row in kUnits vectors each.
    const uint32_t units_max = p.units_k > p.units_v ? p.units_k : p.units_v;
    p.group_shift = 0;
    while (p.group_shift < 5 && (uint32_t(kUnits) << p.group_shift) < units_max) ++p.group_shift;
    // Decode-size calls: more lanes a row (down to one vector a lane) while the grid stays under
    // 2^15 threads; with few rows the latency of each lane's loads, reduction and stores counts.
    while (p.group_shift < 5 && (1u << p.group_shift) < units_max && (rows << (p.group_shift + 1)) <= (1 << 15))
        ++p.group_shift;
    // One group per row, at most 2^22 blocks (then the groups stride over the rows).
    int64_t blocks = ((rows << p.group_shift) + kThreads - 1) / kThreads;
    blocks = blocks < (1 << 22) ? blocks : (1 << 22);
    dispatch_elem(a.in, [&](auto in) {
        th::dispatch_fp8(a.cache.format, [&](auto fp8) {
            dispatch_vec(vec, [&](auto vc) {
                constexpr Elem In = std::decay_t<decltype(in)>::value;
                constexpr bool Fp8 = std::decay_t<decltype(fp8)>::value;
                constexpr int V = std::decay_t<decltype(vc)>::value;
                if constexpr (!elem_is_fp8(In) && V * elem_bytes(In) <= 16)
                    launch_pdl(token_head_write_kernel<In, Fp8, V>, unsigned(blocks), kThreads, stream, p);
            });
        });
    });
    cuda_check_launch("token_head_write_kernel");
}

void cuda_gather_token_head(const GatherArgs &a, pkv_stream stream) {
    const CacheSide &v = a.value.data ? a.cache.v : a.cache.k;
    // Up to 16 code bytes a vector (a 32-byte output vector is stored as two 16-byte halves).
    const int vec = gather_vector_elems(a);
    GatherLaunch p;
    p.a = a;
    p.chunks_k = FastDivmod(uint32_t(a.cache.k.head_size / vec));
    p.chunks_v = FastDivmod(uint32_t(v.head_size / vec));
    const uint32_t heads = uint32_t(a.cache.num_heads);
    p.units_k = heads * p.chunks_k.divisor;
    p.units = p.units_k + (a.value.data ? heads * p.chunks_v.divisor : 0u);
    const unsigned grid = rows_grid(a.num_rows);
    dispatch_elem(a.out, [&](auto out) {
        th::dispatch_fp8(a.cache.format, [&](auto fp8) {
            dispatch_vec(vec, [&](auto vc) {
                constexpr Elem Out = std::decay_t<decltype(out)>::value;
                constexpr bool Fp8 = std::decay_t<decltype(fp8)>::value;
                constexpr int V = std::decay_t<decltype(vc)>::value;
                if constexpr (!elem_is_fp8(Out) && vector_fits(V, 1, elem_bytes(Out)))
                    launch_pdl(token_head_gather_kernel<Out, Fp8, V>, grid, kThreads, stream, p);
            });
        });
    });
    cuda_check_launch("token_head_gather_kernel");
}

}  // namespace pkv
