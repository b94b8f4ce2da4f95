// CUDA metadata builders: one thread per output token (grid-stride), the shared per-token math
// (a binary search over the batch's start offsets, then one block-table load).
#include "core/metadata.h"
#include "cuda/cuda_check.cuh"

namespace pkv {
namespace {

constexpr int kThreads = 256;

template <typename Args>
__global__ void __launch_bounds__(kThreads) slot_mapping_kernel(const Args a) {
    for (int64_t i = int64_t(blockIdx.x) * kThreads + threadIdx.x; i < a.out.count;
         i += int64_t(gridDim.x) * kThreads)
        a.out.store(i, slot_of_token(a, i));
}

unsigned token_grid(int64_t tokens) {
    const int64_t blocks = (tokens + kThreads - 1) / kThreads;
    return unsigned(blocks < (1 << 20) ? blocks : (1 << 20));
}

}  // namespace

void cuda_build_slot_mapping(const SlotMappingArgs &a, pkv_stream stream) {
    slot_mapping_kernel<SlotMappingArgs>
        <<<token_grid(a.out.count), kThreads, 0, reinterpret_cast<cudaStream_t>(stream)>>>(a);
    cuda_check_launch("slot_mapping_kernel");
}

void cuda_build_slot_mapping_csr(const CsrSlotMappingArgs &a, pkv_stream stream) {
    slot_mapping_kernel<CsrSlotMappingArgs>
        <<<token_grid(a.out.count), kThreads, 0, reinterpret_cast<cudaStream_t>(stream)>>>(a);
    cuda_check_launch("slot_mapping_kernel");
}

}  // namespace pkv
