// CUDA reset of one request slot's state regions: one launch, the regions in the kernel's
// parameters (blockIdx.y = region), each region's words grid-strided along x.
#include "core/slots.h"
#include "cuda/cuda_check.cuh"

namespace pkv {

namespace {

__global__ void slots_reset_kernel(const SlotsResetArgs a) {
    const int r = blockIdx.y;
    uint32_t *dst = a.dst[r];
    const uint32_t fill = a.fill[r];
    const int64_t words = a.words[r];
    for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < words; i += int64_t(gridDim.x) * blockDim.x)
        dst[i] = fill;
}

}  // namespace

void cuda_slots_reset(const SlotsResetArgs &a, pkv_stream stream) {
    constexpr int kThreads = 256;
    const int64_t blocks = (a.max_words + kThreads - 1) / kThreads;
    const dim3 grid(unsigned(blocks < 1024 ? blocks : 1024), unsigned(a.count));
    slots_reset_kernel<<<grid, kThreads, 0, reinterpret_cast<cudaStream_t>(stream)>>>(a);
    cuda_check_launch("slots_reset_kernel");
}

}  // namespace pkv
