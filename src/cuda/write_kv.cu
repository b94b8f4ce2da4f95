// CUDA write: one thread per aligned vector of a head row (flat grid over tokens x units), so
// that the slot, the source vector and the scale are independent loads issued together and the
// grid runs at full occupancy. Units of a token: the K row's vectors, then the V row's.
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

template <Elem In, Elem Cache, int VEC>
__global__ void __launch_bounds__(kThreads) write_kv_kernel(const WriteLaunch p) {
    using S = storage_t<In>;
    using D = storage_t<Cache>;
    constexpr bool kScaled = elem_is_fp8(Cache);
    const WriteArgs &a = p.a;
    const int64_t total = a.num_tokens * int64_t(p.units_token.divisor);
    const int64_t num_slots = a.cache.num_slots();
    for (int64_t u = int64_t(blockIdx.x) * kThreads + threadIdx.x; u < total; u += int64_t(gridDim.x) * kThreads) {
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
        const int64_t slot = a.slots[t];
        const bool is_v = r >= p.units_k;
        uint32_t head, chunk;
        (is_v ? p.chunks_v : p.chunks_k).divmod(is_v ? r - p.units_k : r, head, chunk);
        const RowsSide &src = is_v ? a.value : a.key;
        const Vec<S, VEC> in = *reinterpret_cast<const Vec<S, VEC> *>(
            src.data + src.offset(t, head) + int64_t(chunk) * (VEC * sizeof(S)));
        const CacheSide &dst = is_v ? a.cache.v : a.cache.k;
        float scale = 1.0f;
        if constexpr (kScaled) {
            if (dst.scale) scale = dst.scale[a.cache.per_head_scale ? head : 0];
        }
        if (slot < 0) continue;  // padding
        if (slot >= num_slots) {
            if (r == 0 && a.out_of_range) atomicAdd(reinterpret_cast<unsigned long long *>(a.out_of_range), 1ull);
            continue;
        }
        int64_t block, offset;
        if (p.small_slots) {
            uint32_t q, m;
            p.block_size.divmod(uint32_t(slot), q, m);
            block = q;
            offset = m;
        } else {
            block = slot / a.cache.block_size;
            offset = slot - block * a.cache.block_size;
        }
        Vec<D, VEC> out;
#pragma unroll
        for (int i = 0; i < VEC; ++i) out.v[i] = encode_for_cache<In, Cache>(in.v[i], scale);
        *reinterpret_cast<Vec<D, VEC> *>(dst.data + dst.offset(block, offset, head) + int64_t(chunk) * (VEC * sizeof(D))) = out;
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
    const int64_t blocks = (total + kThreads - 1) / kThreads;
    const unsigned grid = unsigned(blocks < (1 << 22) ? blocks : (1 << 22));
    dispatch_elem(a.in, [&](auto in) {
        dispatch_elem(a.cache.elem, [&](auto cache) {
            dispatch_vec(a.vec, [&](auto vec) {
                constexpr Elem In = decltype(in)::value, Cache = decltype(cache)::value;
                constexpr int V = decltype(vec)::value;
                if constexpr (!elem_is_fp8(In) && V * elem_bytes(In) <= 16 && V * elem_bytes(Cache) <= 16) {
                    write_kv_kernel<In, Cache, V><<<grid, kThreads, 0, reinterpret_cast<cudaStream_t>(stream)>>>(p);
                }
            });
        });
    });
    cuda_check_launch("write_kv_kernel");
}

}  // namespace pkv
