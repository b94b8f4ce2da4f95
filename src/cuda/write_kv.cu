// CUDA write: one warp per token (grid-stride), K then V head rows via warp_copy_heads.
#include "core/ops.h"
#include "cuda/warp_copy.cuh"

namespace pkv {
namespace {

struct WriteLaunch {
    WriteArgs a;
    FastDivmod chunks_k, chunks_v;  // vectors per head row
    FastDivmod block_size;          // used when every slot fits in 31 bits
    bool small_slots;
};

template <Elem In, Elem Cache, int VEC>
__global__ void __launch_bounds__(kWarpsPerBlock * 32, 3) write_kv_kernel(const WriteLaunch p) {
    using Copy = WarpRowCopy<In, Cache, Direction::Encode, VEC>;
    const WriteArgs &a = p.a;
    const uint32_t lane = threadIdx.x & 31;
    const int64_t first = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) >> 5;
    const int64_t stride = (int64_t(gridDim.x) * blockDim.x) >> 5;
    const int64_t num_slots = a.cache.num_slots();
    const uint32_t heads = uint32_t(a.cache.num_heads);
    const CacheSide &kc = a.cache.k, &vc = a.cache.v;
    for (int64_t t = first; t < a.num_tokens; t += stride) {
        // The source rows do not depend on the slot: start their loads together with it.
        const int64_t slot = a.slots[t];
        Copy k{a.key.data + a.key.offset(t, 0), a.key.stride_head, nullptr, kc.stride_head,
               heads * p.chunks_k.divisor, p.chunks_k, kc.scale, a.cache.per_head_scale};
        Copy v{a.value.data + a.value.offset(t, 0), a.value.stride_head, nullptr, vc.stride_head,
               a.cache.has_v ? heads * p.chunks_v.divisor : 0u, p.chunks_v, vc.scale, a.cache.per_head_scale};
        typename Copy::Batch kb, vb;
        k.load(lane, kb);
        v.load(lane, vb);
        if (slot < 0) continue;  // padding
        if (slot >= num_slots) {
            if (lane == 0 && a.out_of_range) atomicAdd(reinterpret_cast<unsigned long long *>(a.out_of_range), 1ull);
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
        k.dst = kc.data + kc.offset(block, offset, 0);
        v.dst = vc.data + vc.offset(block, offset, 0);
        k.store(lane, kb);
        v.store(lane, vb);
        k.run(lane + 32 * kUnroll);
        v.run(lane + 32 * kUnroll);
    }
}

}  // namespace

void cuda_write_kv(const WriteArgs &a, pkv_stream stream) {
    WriteLaunch p;
    p.a = a;
    p.chunks_k = FastDivmod(uint32_t(a.cache.k.head_size / a.vec));
    p.chunks_v = FastDivmod(uint32_t((a.cache.has_v ? a.cache.v.head_size : a.cache.k.head_size) / a.vec));
    p.small_slots = a.cache.num_slots() < (int64_t(1) << 31);
    p.block_size = FastDivmod(p.small_slots ? uint32_t(a.cache.block_size) : 1u);
    const unsigned grid = rows_grid(a.num_tokens);
    dispatch_elem(a.in, [&](auto in) {
        dispatch_elem(a.cache.elem, [&](auto cache) {
            dispatch_vec(a.vec, [&](auto vec) {
                constexpr Elem In = decltype(in)::value, Cache = decltype(cache)::value;
                constexpr int V = decltype(vec)::value;
                if constexpr (!elem_is_fp8(In) && V * elem_bytes(In) <= 16 && V * elem_bytes(Cache) <= 16) {
                    write_kv_kernel<In, Cache, V>
                        <<<grid, kWarpsPerBlock * 32, 0, reinterpret_cast<cudaStream_t>(stream)>>>(p);
                }
            });
        });
    });
    cuda_check_launch("write_kv_kernel");
}

}  // namespace pkv
