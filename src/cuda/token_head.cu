// CUDA per-token-head INT8 / FP8, with the row math of core/token_head_quant.h (bit-identical
// to the CPU backend).
//
// Write: one warp per (token, head), grid-striding over T * H. The warp loads the token's K row
// and V row of that head (lanes strided over aligned vectors, up to kMaxUnits vectors a lane
// held in registers; longer rows are read again for the second pass), reduces each row's
// maximum magnitude pattern across the warp, then lane 0 stores the scale and every lane
// quantizes and stores its vectors. Both rows' loads are issued before the slot is tested, so
// the slot load and the row loads overlap.
// Gather: one warp per output row, the lanes strided over the (head, vector) units of the K row
// and then the V row, each unit reading its head's scale.
// No host sync, no allocation, no device query: capturable in a CUDA graph.
#include "core/element_convert.h"
#include "core/fast_divmod.h"
#include "core/ops.h"
#include "core/token_head_quant.h"
#include "cuda/cuda_check.cuh"

namespace pkv {
namespace {

constexpr int kMaxUnits = 2;  // vectors a lane keeps in registers per row
constexpr int kGatherUnroll = 2;

__device__ __forceinline__ uint32_t warp_max(uint32_t v) {
#if __CUDA_ARCH__ >= 800
    return __reduce_max_sync(0xffffffffu, v);
#else
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = th::max_bits(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
#endif
}

template <Elem In, int VEC> struct RowRegs {
    Vec<storage_t<In>, VEC> r[kMaxUnits];
    uint32_t amax;
};

template <Elem In, int VEC> __device__ __forceinline__ const Vec<storage_t<In>, VEC> &load_vec(const char *src, uint32_t u) {
    return *reinterpret_cast<const Vec<storage_t<In>, VEC> *>(src + int64_t(u) * (VEC * sizeof(storage_t<In>)));
}

template <Elem In, int VEC> __device__ __forceinline__ uint32_t vec_amax(const Vec<storage_t<In>, VEC> &x) {
    uint32_t m = 0;
#pragma unroll
    for (int e = 0; e < VEC; ++e) m = th::max_bits(m, th::magnitude_bits(to_f32<In>(x.v[e])));
    return m;
}

// Loads this lane's vectors of a row and its lane-local maximum magnitude pattern.
template <Elem In, int VEC>
__device__ __forceinline__ void load_row(RowRegs<In, VEC> &R, const char *src, uint32_t units, uint32_t lane) {
#pragma unroll
    for (int i = 0; i < kMaxUnits; ++i) {
        const uint32_t u = lane + 32u * i;
        if (u < units) R.r[i] = load_vec<In, VEC>(src, u);
    }
    R.amax = 0;
#pragma unroll
    for (int i = 0; i < kMaxUnits; ++i)
        if (lane + 32u * i < units) R.amax = th::max_bits(R.amax, vec_amax<In, VEC>(R.r[i]));
    for (uint32_t u = lane + 32u * kMaxUnits; u < units; u += 32) R.amax = th::max_bits(R.amax, vec_amax<In, VEC>(load_vec<In, VEC>(src, u)));
}

template <Elem In, bool Fp8, int VEC>
__device__ __forceinline__ Vec<uint8_t, VEC> quantize_vec(const Vec<storage_t<In>, VEC> &x, float inv) {
    Vec<uint8_t, VEC> out;
    float v[VEC];
#pragma unroll
    for (int e = 0; e < VEC; ++e) v[e] = th::mul_rn(to_f32<In>(x.v[e]), inv);
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

// Second pass of a row: the warp's scale, then this lane's codes.
template <Elem In, bool Fp8, int VEC>
__device__ __forceinline__ void store_row(const RowRegs<In, VEC> &R, const char *src, char *dst, float *scale_dst,
                                          uint32_t units, uint32_t lane) {
    const float s = th::row_scale<Fp8>(warp_max(R.amax));
    const float inv = th::reciprocal(s);
    if (lane == 0) *scale_dst = s;
#pragma unroll
    for (int i = 0; i < kMaxUnits; ++i) {
        const uint32_t u = lane + 32u * i;
        if (u < units) *reinterpret_cast<Vec<uint8_t, VEC> *>(dst + int64_t(u) * VEC) = quantize_vec<In, Fp8, VEC>(R.r[i], inv);
    }
    for (uint32_t u = lane + 32u * kMaxUnits; u < units; u += 32)
        *reinterpret_cast<Vec<uint8_t, VEC> *>(dst + int64_t(u) * VEC) = quantize_vec<In, Fp8, VEC>(load_vec<In, VEC>(src, u), inv);
}

struct WriteLaunch {
    WriteArgs a;
    FastDivmod heads;     // valid when small_rows
    bool small_rows;      // num_tokens * num_heads < 2^31
    uint32_t units_k, units_v;  // vectors per K / V row
};

template <Elem In, bool Fp8, int VEC>
__global__ void __launch_bounds__(kWarpsPerBlock * 32) token_head_write_kernel(const WriteLaunch p) {
    const WriteArgs &a = p.a;
    const uint32_t lane = threadIdx.x & 31;
    const int64_t first = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) >> 5;
    const int64_t stride = (int64_t(gridDim.x) * blockDim.x) >> 5;
    const int64_t rows = a.num_tokens * a.cache.num_heads;
    const int64_t num_slots = a.cache.num_slots();
    for (int64_t w = first; w < rows; w += stride) {  // warp-uniform
        int64_t t, h;
        if (p.small_rows) {
            uint32_t q, r;
            p.heads.divmod(uint32_t(w), q, r);
            t = q;
            h = r;
        } else {
            t = w / a.cache.num_heads;
            h = w - t * a.cache.num_heads;
        }
        const int64_t slot = a.slots[t];
        // Rows of tokens t < num_tokens are always readable: load before testing the slot.
        RowRegs<In, VEC> kr, vr;
        const char *ksrc = a.key.data + a.key.offset(t, h);
        const char *vsrc = a.cache.has_v ? a.value.data + a.value.offset(t, h) : nullptr;
        load_row<In, VEC>(kr, ksrc, p.units_k, lane);
        if (a.cache.has_v) load_row<In, VEC>(vr, vsrc, p.units_v, lane);
        if (slot < 0) continue;  // padding: neither codes nor scale
        if (slot >= num_slots) {  // counted once per token
            if (h == 0 && lane == 0 && a.out_of_range)
                atomicAdd(reinterpret_cast<unsigned long long *>(a.out_of_range), 1ull);
            continue;
        }
        const int64_t block = slot / a.cache.block_size, offset = slot - block * a.cache.block_size;
        const CacheSide &kc = a.cache.k;
        store_row<In, Fp8, VEC>(kr, ksrc, kc.data + kc.offset(block, offset, h), kc.scale_at(block, offset, h),
                                p.units_k, lane);
        if (a.cache.has_v) {
            const CacheSide &vc = a.cache.v;
            store_row<In, Fp8, VEC>(vr, vsrc, vc.data + vc.offset(block, offset, h), vc.scale_at(block, offset, h),
                                    p.units_v, lane);
        }
    }
}

// Dequantizes one cache slot's heads of one side into a dense output row.
template <Elem Out, bool Fp8, int VEC>
__device__ __forceinline__ void warp_gather_row(const CacheSide &c, int64_t block, int64_t offset, char *dst,
                                                int64_t dst_head_stride, uint32_t heads, FastDivmod chunks,
                                                uint32_t lane) {
    using D = storage_t<Out>;
    const char *src = c.data + c.offset(block, offset, 0);
    const uint32_t units = heads * chunks.divisor;
    for (uint32_t base = lane; base < units; base += 32 * kGatherUnroll) {
        Vec<uint8_t, VEC> in[kGatherUnroll];
        float s[kGatherUnroll];
#pragma unroll
        for (int u = 0; u < kGatherUnroll; ++u) {
            const uint32_t j = base + u * 32;
            if (j >= units) continue;
            uint32_t head, chunk;
            chunks.divmod(j, head, chunk);
            in[u] = *reinterpret_cast<const Vec<uint8_t, VEC> *>(src + head * c.stride_head + int64_t(chunk) * VEC);
            s[u] = *c.scale_at(block, offset, head);
        }
#pragma unroll
        for (int u = 0; u < kGatherUnroll; ++u) {
            const uint32_t j = base + u * 32;
            if (j >= units) continue;
            uint32_t head, chunk;
            chunks.divmod(j, head, chunk);
            Vec<D, VEC> out;
#pragma unroll
            for (int i = 0; i < VEC; ++i) out.v[i] = from_f32<Out>(th::decode<Fp8>(in[u].v[i], s[u]));
            *reinterpret_cast<Vec<D, VEC> *>(dst + head * dst_head_stride + int64_t(chunk) * (VEC * sizeof(D))) = out;
        }
    }
}

struct GatherLaunch {
    GatherArgs a;
    FastDivmod chunks_k, chunks_v;  // vectors per head row
};

template <Elem Out, bool Fp8, int VEC>
__global__ void __launch_bounds__(kWarpsPerBlock * 32, 4) token_head_gather_kernel(const GatherLaunch p) {
    const GatherArgs &a = p.a;
    const uint32_t lane = threadIdx.x & 31;
    const int64_t first = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) >> 5;
    const int64_t stride = (int64_t(gridDim.x) * blockDim.x) >> 5;
    const uint32_t heads = uint32_t(a.cache.num_heads);
    for (int64_t row = first; row < a.num_rows; row += stride) {
        int64_t block, offset;
        if (!gather_row_source(a, row, block, offset)) continue;
        if (block < 0) {
            if (lane == 0 && a.out_of_range) atomicAdd(reinterpret_cast<unsigned long long *>(a.out_of_range), 1ull);
            continue;
        }
        warp_gather_row<Out, Fp8, VEC>(a.cache.k, block, offset, a.key.data + a.key.offset(row, 0), a.key.stride_head,
                                       heads, p.chunks_k, lane);
        if (a.value.data)
            warp_gather_row<Out, Fp8, VEC>(a.cache.v, block, offset, a.value.data + a.value.offset(row, 0),
                                           a.value.stride_head, heads, p.chunks_v, lane);
    }
}

uint64_t addr(const void *p) { return reinterpret_cast<uintptr_t>(p); }

uint64_t cache_alignment(const CacheSide &k, const CacheSide &v) {
    return common_alignment({addr(k.data), uint64_t(k.stride_block), uint64_t(k.stride_slot), uint64_t(k.stride_head),
                             addr(v.data), uint64_t(v.stride_block), uint64_t(v.stride_slot), uint64_t(v.stride_head)});
}

uint64_t rows_alignment(const RowsSide &k, const RowsSide &v) {
    return common_alignment({addr(k.data), uint64_t(k.stride_row), uint64_t(k.stride_head), addr(v.data),
                             uint64_t(v.stride_row), uint64_t(v.stride_head)});
}

template <typename F> void dispatch_fp8(pkv_cache_format f, F &&fn) {
    if (f == PKV_CACHE_FORMAT_FP8_PER_TOKEN_HEAD) fn(std::true_type{});
    else fn(std::false_type{});
}

}  // namespace

void cuda_write_token_head(const WriteArgs &a, pkv_stream stream) {
    const CacheSide &v = a.cache.has_v ? a.cache.v : a.cache.k;
    const RowsSide &vr = a.cache.has_v ? a.value : a.key;
    const int in_bytes = elem_bytes(a.in);
    int vec = vector_elems(in_bytes, 1, a.cache.k.head_size, v.head_size, rows_alignment(a.key, vr),
                           cache_alignment(a.cache.k, v));
    // At most 16 bytes a source vector, and preferably a whole warp of vectors per row.
    const int64_t dmax = a.cache.k.head_size > v.head_size ? a.cache.k.head_size : v.head_size;
    while (vec > 1 && (vec * in_bytes > 16 || dmax / vec < 32)) vec >>= 1;

    WriteLaunch p;
    p.a = a;
    const int64_t rows = a.num_tokens * a.cache.num_heads;
    p.small_rows = rows < (int64_t(1) << 31);
    p.heads = FastDivmod(uint32_t(a.cache.num_heads));
    p.units_k = uint32_t(a.cache.k.head_size / vec);
    p.units_v = uint32_t(v.head_size / vec);
    const unsigned grid = rows_grid(rows);
    const cudaStream_t s = reinterpret_cast<cudaStream_t>(stream);
    dispatch_elem(a.in, [&](auto in) {
        dispatch_fp8(a.cache.format, [&](auto fp8) {
            dispatch_vec(vec, [&](auto vc) {
                constexpr Elem In = std::decay_t<decltype(in)>::value;
                constexpr bool Fp8 = std::decay_t<decltype(fp8)>::value;
                constexpr int V = std::decay_t<decltype(vc)>::value;
                if constexpr (!elem_is_fp8(In) && V * elem_bytes(In) <= 16)
                    token_head_write_kernel<In, Fp8, V><<<grid, kWarpsPerBlock * 32, 0, s>>>(p);
            });
        });
    });
    cuda_check_launch("token_head_write_kernel");
}

void cuda_gather_token_head(const GatherArgs &a, pkv_stream stream) {
    const bool with_v = a.value.data != nullptr;
    const CacheSide &v = with_v ? a.cache.v : a.cache.k;
    const RowsSide &vr = with_v ? a.value : a.key;
    const int out_bytes = elem_bytes(a.out);
    int vec = vector_elems(1, out_bytes, a.cache.k.head_size, v.head_size, cache_alignment(a.cache.k, v),
                           rows_alignment(a.key, vr));
    while (vec > 1 && vec * out_bytes > 16) vec >>= 1;  // one 16-byte store at most (no spills)
    GatherLaunch p;
    p.a = a;
    p.chunks_k = FastDivmod(uint32_t(a.cache.k.head_size / vec));
    p.chunks_v = FastDivmod(uint32_t(v.head_size / vec));
    const unsigned grid = rows_grid(a.num_rows);
    const cudaStream_t s = reinterpret_cast<cudaStream_t>(stream);
    dispatch_elem(a.out, [&](auto out) {
        dispatch_fp8(a.cache.format, [&](auto fp8) {
            dispatch_vec(vec, [&](auto vc) {
                constexpr Elem Out = std::decay_t<decltype(out)>::value;
                constexpr bool Fp8 = std::decay_t<decltype(fp8)>::value;
                constexpr int V = std::decay_t<decltype(vc)>::value;
                if constexpr (!elem_is_fp8(Out) && V * elem_bytes(Out) <= 16)
                    token_head_gather_kernel<Out, Fp8, V><<<grid, kWarpsPerBlock * 32, 0, s>>>(p);
            });
        });
    });
    cuda_check_launch("token_head_gather_kernel");
}

}  // namespace pkv
