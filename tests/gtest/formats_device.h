// Interface between formats_device.cu (kernels, compiled only with CUDA) and formats_test.cpp.
#pragma once

#include <cstdint>

namespace pkvt {

// Index 0..3: f16, bf16, e4m3, e5m2.
struct FormatsDeviceResult {
    unsigned long long encode_mismatch[4];      // _soft != hardware, NaN results excluded
    unsigned long long encode_nan_mismatch[4];  // both NaN codes but different bits
    uint32_t first_input[4];                    // smallest input bit pattern that mismatched
    uint32_t first_hw[4], first_soft[4];        // the two results for it
    unsigned long long decode_mismatch[4];      // library decode != hardware decode (NaN == NaN)
    uint32_t first_decode_code[4];
    uint32_t first_decode_lib[4], first_decode_hw[4];  // float bits
    int device_arch;                            // __CUDA_ARCH__ the kernels ran with
    char error[256];                            // non-empty on a CUDA error
};

// Runs the exhaustive comparison on the current device. Returns 0 on success (results filled),
// non-zero on a CUDA error (message in r->error).
int formats_device_check(FormatsDeviceResult *r);

}  // namespace pkvt
