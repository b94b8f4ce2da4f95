// CUDA gather: one warp per output row (grid-stride), K then V head rows via warp_copy_heads.
#include "core/ops.h"
#include "cuda/warp_copy.cuh"

namespace pkv {
namespace {

struct GatherLaunch {
    GatherArgs a;
    FastDivmod chunks_k, chunks_v;  // vectors per head row
};

template <Elem Cache, Elem Out, int VEC>
__global__ void __launch_bounds__(kWarpsPerBlock * 32, 4) gather_kv_kernel(const GatherLaunch p) {
    using Copy = WarpRowCopy<Cache, Out, Direction::Decode, VEC>;
    const GatherArgs &a = p.a;
    const uint32_t lane = threadIdx.x & 31;
    const int64_t first = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) >> 5;
    const int64_t stride = (int64_t(gridDim.x) * blockDim.x) >> 5;
    const uint32_t heads = uint32_t(a.cache.num_heads);
    const CacheSide &kc = a.cache.k, &vc = a.cache.v;
    for (int64_t row = first; row < a.num_rows; row += stride) {
        int64_t block, offset;
        if (!gather_row_source(a, row, block, offset)) continue;
        if (block < 0) {
            if (lane == 0 && a.out_of_range) atomicAdd(reinterpret_cast<unsigned long long *>(a.out_of_range), 1ull);
            continue;
        }
        const Copy k{kc.data + kc.offset(block, offset, 0), kc.stride_head, a.key.data + a.key.offset(row, 0),
                     a.key.stride_head, heads * p.chunks_k.divisor, p.chunks_k, kc.scale, a.cache.per_head_scale};
        k.run(lane);
        if (a.value.data) {
            const Copy v{vc.data + vc.offset(block, offset, 0), vc.stride_head, a.value.data + a.value.offset(row, 0),
                         a.value.stride_head, heads * p.chunks_v.divisor, p.chunks_v, vc.scale,
                         a.cache.per_head_scale};
            v.run(lane);
        }
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
                if constexpr (!elem_is_fp8(Out) && V * elem_bytes(Out) <= 16 && V * elem_bytes(Cache) <= 16) {
                    gather_kv_kernel<Cache, Out, V>
                        <<<grid, kWarpsPerBlock * 32, 0, reinterpret_cast<cudaStream_t>(stream)>>>(p);
                }
            });
        });
    });
    cuda_check_launch("gather_kv_kernel");
}

}  // namespace pkv
