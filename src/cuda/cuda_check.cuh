// Turning CUDA runtime errors into pkv::Error; the vector type and launch helpers of the kernels.
#pragma once

#include <cuda_runtime.h>

#include <string>
#include <utility>
#include <type_traits>

#include "core/error.h"
#include "pagedkv.h"

namespace pkv {

inline void cuda_check(cudaError_t e, const char *what) {
    if (e == cudaSuccess) return;
    const pkv_status s = e == cudaErrorMemoryAllocation ? PKV_ERROR_OUT_OF_DEVICE_MEMORY : PKV_ERROR_CUDA;
    throw Error(s, std::string(what) + ": " + cudaGetErrorName(e) + " (" + cudaGetErrorString(e) + ")", int(e));
}

// Reports a failed launch (bad configuration, no device, no kernel image for this arch).
inline void cuda_check_launch(const char *kernel) { cuda_check(cudaGetLastError(), kernel); }

// N elements of T moved as aligned accesses of at most 16 bytes (a 32-byte vector is two).
template <typename T, int N> struct alignas(sizeof(T) * N > 16 ? 16 : sizeof(T) * N) Vec {
    T v[N];
};

// Grid for one warp per row, grid-striding beyond the cap (so any row count works).
constexpr int kWarpsPerBlock = 8;
inline unsigned rows_grid(int64_t rows) {
    const int64_t blocks = (rows + kWarpsPerBlock - 1) / kWarpsPerBlock;
    return unsigned(blocks < (1 << 22) ? blocks : (1 << 22));
}

// Calls f(std::integral_constant<int, VEC>{}) for VEC in {1, 2, 4, 8, 16}.
template <typename F> void dispatch_vec(int vec, F &&f) {
    switch (vec) {
        case 16: f(std::integral_constant<int, 16>{}); break;
        case 8: f(std::integral_constant<int, 8>{}); break;
        case 4: f(std::integral_constant<int, 4>{}); break;
        case 2: f(std::integral_constant<int, 2>{}); break;
        default: f(std::integral_constant<int, 1>{}); break;
    }
}

// Programmatic dependent launch (sm_90+): a kernel launched with launch_pdl may start while the
// previous kernel of its stream is still running. It must call pdl_wait() before its first
// global memory access (the wait returns once the previous grid has completed and its memory
// is visible), and calls pdl_launch_dependents() to let the next such kernel start early.
// Before sm_90 both compile to nothing and launch_pdl launches normally.
__device__ __forceinline__ void pdl_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}
__device__ __forceinline__ void pdl_launch_dependents() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.launch_dependents;" :::);
#endif
}

// Whether the current device supports programmatic dependent launch (cached per device;
// PKV_DISABLE_PDL=1 in the environment turns it off, for comparisons).
bool pdl_enabled();

// The current device's multiprocessor count (cached per device; 0 when it cannot be queried).
int multiprocessor_count();

template <typename... Params, typename... Args>
void launch_pdl(void (*kernel)(Params...), unsigned grid, unsigned block, pkv_stream stream, Args &&...args) {
    const cudaStream_t s = reinterpret_cast<cudaStream_t>(stream);
    if (!pdl_enabled()) {
        kernel<<<grid, block, 0, s>>>(std::forward<Args>(args)...);
        return;
    }
    cudaLaunchConfig_t config = {};
    config.gridDim = dim3(grid);
    config.blockDim = dim3(block);
    config.stream = s;
    cudaLaunchAttribute attribute[1];
    attribute[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attribute[0].val.programmaticStreamSerializationAllowed = 1;
    config.attrs = attribute;
    config.numAttrs = 1;
    (void)cudaLaunchKernelEx(&config, kernel, std::forward<Args>(args)...);  // checked by cuda_check_launch
}

}  // namespace pkv
