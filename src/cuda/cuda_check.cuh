// Turning CUDA runtime errors into pkv::Error; the vector type and launch helpers of the kernels.
#pragma once

#include <cuda_runtime.h>

#include <string>
#include <type_traits>

#include "core/error.h"

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

}  // namespace pkv
