// CUDA gather: one warp per output row (grid-stride). The row's source is found once per warp
// (binary search over cu_seq_lens, then the block table); the lanes then stride over the
// (head, chunk) vectors of the K row and the V row, a few loads in flight per lane. Launched
// with programmatic dependent launch (see cuda_check.cuh).
#include "core/element_convert.h"
#include "core/fast_divmod.h"
#include "core/ops.h"
#include "cuda/cuda_check.cuh"

namespace pkv {
namespace {

constexpr int kUnroll = 2;

struct GatherLaunch {
    GatherArgs a;
    FastDivmod chunks_k, chunks_v;  // vectors per head row
};

// Dequantizes one row's heads from a cache slot into a dense output row.
template <Elem Cache, Elem Out, int VEC>
__device__ __forceinline__ void warp_gather_row(const char *__restrict__ src, const CacheSide &side,
                                                char *__restrict__ dst, int64_t dst_head_stride, uint32_t heads,
                                                FastDivmod chunks, bool per_head_scale, uint32_t lane) {
    const int64_t src_head_stride = side.stride_head;
    const float *scale = side.scale;
    using S = storage_t<Cache>;
    using D = storage_t<Out>;
    const uint32_t units = heads * chunks.divisor;
    for (uint32_t base = lane; base < units; base += 32 * kUnroll) {
        Vec<S, VEC> in[kUnroll];
        float s[kUnroll];
#pragma unroll
        for (int u = 0; u < kUnroll; ++u) {
            const uint32_t j = base + u * 32;
            if (j >= units) continue;
            uint32_t head, chunk;
            chunks.divmod(j, head, chunk);
            in[u] = *reinterpret_cast<const Vec<S, VEC> *>(src + head * src_head_stride +
                                                           side.element_offset(int64_t(chunk) * VEC, sizeof(S)));
            s[u] = scale ? scale[per_head_scale ? head : 0] : 1.0f;
        }
#pragma unroll
        for (int u = 0; u < kUnroll; ++u) {
            const uint32_t j = base + u * 32;
            if (j >= units) continue;
            uint32_t head, chunk;  // recomputed: cheaper than holding them in registers
            chunks.divmod(j, head, chunk);
            Vec<D, VEC> out;
#pragma unroll
            for (int i = 0; i < VEC; ++i) out.v[i] = decode_from_cache<Cache, Out>(in[u].v[i], s[u]);
            *reinterpret_cast<Vec<D, VEC> *>(dst + head * dst_head_stride + int64_t(chunk) * (VEC * sizeof(D))) = out;
        }
    }
}

template <Elem Cache, Elem Out, int VEC>
__global__ void __launch_bounds__(kWarpsPerBlock * 32, 4) gather_kv_kernel(const GatherLaunch p) {
    pdl_launch_dependents();  // the next kernel may launch; it waits for our completion itself
    const GatherArgs &a = p.a;
    const uint32_t lane = threadIdx.x & 31;
    const int64_t first = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) >> 5;
    const int64_t stride = (int64_t(gridDim.x) * blockDim.x) >> 5;
    const uint32_t heads = uint32_t(a.cache.num_heads);
    const CacheSide &kc = a.cache.k, &vc = a.cache.v;
    pdl_wait();  // no global memory access before the previous kernel has completed
    for (int64_t row = first; row < a.num_rows; row += stride) {
        int64_t block, offset;
        if (!gather_row_source(a, row, block, offset)) continue;
        if (block < 0) {
            if (lane == 0 && a.out_of_range) atomicAdd(reinterpret_cast<unsigned long long *>(a.out_of_range), 1ull);
            continue;
        }
        warp_gather_row<Cache, Out, VEC>(kc.data + kc.offset(block, offset, 0), kc, a.key.data + a.key.offset(row, 0),
                                         a.key.stride_head, heads, p.chunks_k, a.cache.per_head_scale, lane);
        if (a.value.data)
            warp_gather_row<Cache, Out, VEC>(vc.data + vc.offset(block, offset, 0), vc,
                                             a.value.data + a.value.offset(row, 0), a.value.stride_head, heads,
                                             p.chunks_v, a.cache.per_head_scale, lane);
    }
}

}  // namespace

void cuda_gather_kv(const GatherArgs &a, pkv_stream stream) {
    GatherLaunch p;
    p.a = a;
    p.chunks_k = FastDivmod(uint32_t(a.cache.k.head_size / a.vec));
    p.chunks_v = FastDivmod(uint32_t((a.value.data ? a.cache.v.head_size : a.cache.k.head_size) / a.vec));
    const unsigned grid = rows_grid(a.num_rows);
    dispatch_elem(a.cache.elem, [&](auto cache) {
        dispatch_elem(a.out, [&](auto out) {
            dispatch_vec(a.vec, [&](auto vec) {
                constexpr Elem Cache = decltype(cache)::value, Out = decltype(out)::value;
                constexpr int V = decltype(vec)::value;
                if constexpr (!elem_is_fp8(Out) && vector_fits(V, elem_bytes(Cache), elem_bytes(Out))) {
                    launch_pdl(gather_kv_kernel<Cache, Out, V>, grid, kWarpsPerBlock * 32, stream, p);
                }
            });
        });
    });
    cuda_check_launch("gather_kv_kernel");
}

}  // namespace pkv
