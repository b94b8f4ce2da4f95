// CUDA write: a flat grid over (token, unit), a unit being one aligned vector of a head row (a
// token's K row units, then its V row units). Each thread takes a few units a grid step and
// issues all their loads (slot, source vector, scale: independent of each other) before any
// store, so small calls pay one load latency and large calls keep enough bytes in flight.
#include "core/element_convert.h"
#include "core/fast_divmod.h"
#include "core/ops.h"
#include "cuda/cuda_check.cuh"

namespace pkv {
namespace {

constexpr int kThreads = 256;

struct WriteLaunch {
    WriteArgs a;
    uint32_t units_k;          // vectors in a token's K row (heads * chunks_k)
    FastDivmod units_token;    // vectors in a token's K and V rows
    FastDivmod chunks_k, chunks_v;  // vectors per head row
    FastDivmod block_size;     // valid when small_slots
    bool small_slots;          // every slot < 2^31
    bool small_units;          // num_tokens * units_token < 2^31
};

// Units a thread moves per grid step in a large call (all their loads are issued before the
// first store). Small calls use 1, spreading the work over more multiprocessors.
template <Elem Cache> constexpr int large_call_units() { return elem_is_fp8(Cache) ? 2 : 4; }
constexpr int64_t kLargeCallUnits = int64_t(1) << 18;

template <Elem In, Elem Cache, int VEC, int U>
__global__ void __launch_bounds__(kThreads) write_kv_kernel(const WriteLaunch p) {
    using S = storage_t<In>;
    using D = storage_t<Cache>;
    constexpr bool kScaled = elem_is_fp8(Cache);
    const WriteArgs &a = p.a;
    const int64_t total = a.num_tokens * int64_t(p.units_token.divisor);
    const int64_t num_slots = a.cache.num_slots();
    // Per-tensor FP8 scales: one divisor (with its reciprocal) per thread, not per vector.
    Fp8Divisor k_divisor, v_divisor;
    if constexpr (kScaled) {
        if (!a.cache.per_head_scale) {
            k_divisor = make_fp8_divisor(a.cache.k.scale ? *a.cache.k.scale : 1.0f);
            v_divisor = make_fp8_divisor(a.cache.v.scale ? *a.cache.v.scale : 1.0f);
        }
    }
    for (int64_t base = int64_t(blockIdx.x) * (kThreads * U) + threadIdx.x; base < total;
         base += int64_t(gridDim.x) * (kThreads * U)) {
        int64_t slot[U];
        uint32_t rest[U], head[U], chunk[U];
        Vec<S, VEC> in[U];
        Fp8Divisor divisor[U];
#pragma unroll
        for (int i = 0; i < U; ++i) {
            const int64_t u = base + i * kThreads;
            slot[i] = -1;
            if (u >= total) continue;
            int64_t t;
            uint32_t r;
            if (p.small_units) {
                uint32_t q;
                p.units_token.divmod(uint32_t(u), q, r);
                t = q;
            } else {
                t = u / p.units_token.divisor;
                r = uint32_t(u - t * p.units_token.divisor);
            }
            slot[i] = a.slots[t];
            rest[i] = r;
            const bool is_v = r >= p.units_k;
            (is_v ? p.chunks_v : p.chunks_k).divmod(is_v ? r - p.units_k : r, head[i], chunk[i]);
            const RowsSide &src = is_v ? a.value : a.key;
            in[i] = *reinterpret_cast<const Vec<S, VEC> *>(src.data + src.offset(t, head[i]) +
                                                           int64_t(chunk[i]) * (VEC * sizeof(S)));
            if constexpr (kScaled) {
                if (a.cache.per_head_scale) {
                    const float *sp = is_v ? a.cache.v.scale : a.cache.k.scale;
                    divisor[i] = make_fp8_divisor(sp ? sp[head[i]] : 1.0f);
                } else {
                    divisor[i] = is_v ? v_divisor : k_divisor;
                }
            }
        }
#pragma unroll
        for (int i = 0; i < U; ++i) {
            if (slot[i] < 0) continue;  // padding (or past the end of the grid)
            if (slot[i] >= num_slots) {
                if (rest[i] == 0 && a.out_of_range)
                    atomicAdd(reinterpret_cast<unsigned long long *>(a.out_of_range), 1ull);
                continue;
            }
            int64_t block, offset;
            if (p.small_slots) {
                uint32_t q, m;
                p.block_size.divmod(uint32_t(slot[i]), q, m);
                block = q;
                offset = m;
            } else {
                block = slot[i] / a.cache.block_size;
                offset = slot[i] - block * a.cache.block_size;
            }
            const CacheSide &dst = rest[i] >= p.units_k ? a.cache.v : a.cache.k;
            Vec<D, VEC> out;
            if constexpr (kScaled && VEC % 2 == 0) {
                // fp8_quotient with its scale test hoisted out of the element loop, and the
                // hardware converting pairs (one independent instruction per two elements).
                const Fp8Divisor &d = divisor[i];
                float q[VEC];
                if (d.fast) {
#pragma unroll
                    for (int e = 0; e < VEC; ++e) q[e] = fp8_quotient_fast(to_f32<In>(in[i].v[e]), d);
                } else {
#pragma unroll
                    for (int e = 0; e < VEC; ++e) q[e] = to_f32<In>(in[i].v[e]) / d.scale;
                }
#pragma unroll
                for (int e = 0; e < VEC; e += 2) {
                    const uint16_t pair = fmt::f32x2_to_fp8x2<Cache == Elem::E5M2>(q[e], q[e + 1]);
                    out.v[e] = uint8_t(pair);
                    out.v[e + 1] = uint8_t(pair >> 8);
                }
            } else {
#pragma unroll
                for (int e = 0; e < VEC; ++e) out.v[e] = encode_for_cache<In, Cache>(in[i].v[e], divisor[i]);
            }
            *reinterpret_cast<Vec<D, VEC> *>(dst.data + dst.offset(block, offset, head[i]) +
                                             int64_t(chunk[i]) * (VEC * sizeof(D))) = out;
        }
    }
}

}  // namespace

void cuda_write_kv(const WriteArgs &a, pkv_stream stream) {
    WriteLaunch p;
    p.a = a;
    const uint32_t heads = uint32_t(a.cache.num_heads);
    p.chunks_k = FastDivmod(uint32_t(a.cache.k.head_size / a.vec));
    p.chunks_v = FastDivmod(a.cache.has_v ? uint32_t(a.cache.v.head_size / a.vec) : 1u);
    p.units_k = heads * p.chunks_k.divisor;
    p.units_token = FastDivmod(p.units_k + (a.cache.has_v ? heads * p.chunks_v.divisor : 0u));
    p.small_slots = a.cache.num_slots() < (int64_t(1) << 31);
    p.block_size = FastDivmod(p.small_slots ? uint32_t(a.cache.block_size) : 1u);
    const int64_t total = a.num_tokens * int64_t(p.units_token.divisor);
    p.small_units = total < (int64_t(1) << 31);
    dispatch_elem(a.in, [&](auto in) {
        dispatch_elem(a.cache.elem, [&](auto cache) {
            dispatch_vec(a.vec, [&](auto vec) {
                constexpr Elem In = decltype(in)::value, Cache = decltype(cache)::value;
                constexpr int V = decltype(vec)::value;
                if constexpr (!elem_is_fp8(In) && vector_fits(V, elem_bytes(In), elem_bytes(Cache))) {
                    constexpr int kLarge = large_call_units<Cache>();
                    const bool large = total >= kLargeCallUnits;
                    const int64_t per_block = int64_t(kThreads) * (large ? kLarge : 1);
                    const int64_t blocks = (total + per_block - 1) / per_block;
                    const unsigned grid = unsigned(blocks < (1 << 22) ? blocks : (1 << 22));
                    const cudaStream_t s = reinterpret_cast<cudaStream_t>(stream);
                    if (large) write_kv_kernel<In, Cache, V, kLarge><<<grid, kThreads, 0, s>>>(p);
                    else write_kv_kernel<In, Cache, V, 1><<<grid, kThreads, 0, s>>>(p);
                }
            });
        });
    });
    cuda_check_launch("write_kv_kernel");
}

}  // namespace pkv
