// Helpers shared by the CUDA benchmark programs: error checks that throw, a device buffer,
// the median of timing samples.
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdarg>
#include <cstdio>
#include <stdexcept>
#include <string>
#include <vector>

#include "pagedkv.h"

namespace pkv_bench {

inline std::string strf(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    char buf[2048];
    std::vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    return std::string(buf);
}

struct BenchError : std::runtime_error {
    using std::runtime_error::runtime_error;
};

#define CK(expr)                                                                              \
    do {                                                                                      \
        cudaError_t e_ = (expr);                                                              \
        if (e_ != cudaSuccess)                                                                \
            throw pkv_bench::BenchError(pkv_bench::strf("%s:%d: %s failed: %s (%s)", __FILE__, \
                                                        __LINE__, #expr, cudaGetErrorName(e_), \
                                                        cudaGetErrorString(e_)));             \
    } while (0)

#define PK(expr)                                                                              \
    do {                                                                                      \
        pkv_status s_ = (expr);                                                               \
        if (s_ != PKV_SUCCESS)                                                                \
            throw pkv_bench::BenchError(pkv_bench::strf("%s:%d: %s failed: %s: %s", __FILE__,  \
                                                        __LINE__, #expr, pkv_status_string(s_), \
                                                        pkv_last_error_message()));           \
    } while (0)

// cudaMalloc'd bytes, freed on destruction.
struct DevBuf {
    void *p = nullptr;
    size_t bytes = 0;
    DevBuf() = default;
    explicit DevBuf(size_t n) : bytes(n) {
        if (n) CK(cudaMalloc(&p, n));
    }
    DevBuf(const DevBuf &) = delete;
    DevBuf &operator=(const DevBuf &) = delete;
    ~DevBuf() {
        if (p) cudaFree(p);
    }
    template <class T> T *as() const { return static_cast<T *>(p); }
    char *c() const { return static_cast<char *>(p); }
};

// Median of the samples; NaN for none.
inline double median(std::vector<double> v) {
    if (v.empty()) return NAN;
    std::sort(v.begin(), v.end());
    const size_t n = v.size();
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

}  // namespace pkv_bench
