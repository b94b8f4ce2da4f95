// Division by a run-time constant through a precomputed multiplier (Granlund-Montgomery), for
// kernel index math. Valid for dividends in [0, 2^31).
#pragma once

#include <cstdint>

#include "core/numeric_formats.h"  // PKV_HD

namespace pkv {

struct FastDivmod {
    uint32_t divisor = 1;
    uint32_t multiplier = 0;
    uint32_t shift = 0;

    FastDivmod() = default;
    explicit FastDivmod(uint32_t d) : divisor(d) {
        while ((1ull << shift) < d) ++shift;
        multiplier = uint32_t(((1ull << 32) * ((1ull << shift) - d)) / d + 1);
    }

    PKV_HD uint32_t div(uint32_t n) const {
#if defined(__CUDA_ARCH__)
        const uint32_t hi = __umulhi(n, multiplier);
#else
        const uint32_t hi = uint32_t((uint64_t(n) * multiplier) >> 32);
#endif
        return (hi + n) >> shift;
    }
    PKV_HD void divmod(uint32_t n, uint32_t &q, uint32_t &r) const {
        q = div(n);
        r = n - q * divisor;
    }
};

}  // namespace pkv
