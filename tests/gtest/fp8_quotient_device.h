// Interface between fp8_quotient_device.cu (compiled only with CUDA) and fp8_quotient_test.cpp.
#pragma once

#include <cstdint>

namespace pkvt {

struct Fp8QuotientResult {
    unsigned long long quotient_mismatch = 0;  // inputs whose FP8 codes differ from x / scale
    unsigned long long pair_mismatch = 0;      // pair conversions differing from single ones
    int first_scale_index = -1;
    uint32_t first_x_bits = 0;
    char error[256] = {};
};

// Sweeps all 2^32 float inputs for each scale on the current device. Non-zero on a CUDA error.
int fp8_quotient_device_check(const float *scales, int n, Fp8QuotientResult *r);

}  // namespace pkvt
