// The FP8 encoders divide through fp8_quotient (reciprocal + one Markstein step); these tests
// hold it to the IEEE division it replaces. CPU: random inputs and edge values. CUDA: all 2^32
// inputs for 64 scales (fp8_quotient_device.cu).
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "core/element_convert.h"
#if defined(PKV_TEST_CUDA)
#include <cuda_runtime.h>

#include "fp8_quotient_device.h"
#endif

namespace {

float from_bits(uint32_t u) {
    float f;
    std::memcpy(&f, &u, 4);
    return f;
}

// Scales: powers of two, all-ones mantissas, typical amax/64 values, the fast-path limits and
// just outside them, negatives, random bit patterns.
std::vector<float> test_scales() {
    std::vector<float> s = {1.0f, 0.5f, 2.0f, 0x1p-40f, 0x1p40f, 0x1.000002p-40f, 0x1.fffffep39f, 0x1p-41f,
                            0x1p41f, from_bits(0x3f7fffff), from_bits(0x3fffffff), 3.0f, 0.1f, 0.05f,
                            0.04f, 1.0f / 3.0f, 448.0f / 200.0f, 7.0f / 64.0f, -0.25f, -1.7f, 1e-30f, 1e30f,
                            from_bits(0x00000001), from_bits(0x007fffff)};
    std::mt19937 rng(7);
    std::uniform_int_distribution<uint32_t> exp(127 - 20, 127 + 10), man(0, 0x7fffff);
    while (s.size() < 64) s.push_back(from_bits((exp(rng) << 23) | man(rng)));
    return s;
}

TEST(Fp8Quotient, CpuMatchesDivisionCodes) {
    std::mt19937 rng(11);
    std::uniform_int_distribution<uint32_t> bits;
    for (float scale : test_scales()) {
        const pkv::Fp8Divisor d = pkv::make_fp8_divisor(scale);
        for (int i = 0; i < 200000 + 8; ++i) {
            // First the signed zeros and the smallest values, then random bit patterns.
            static const uint32_t fixed[8] = {0x00000000u, 0x80000000u, 0x00000001u, 0x80000001u,
                                              0x00800000u, 0x80800000u, 0x7f800000u, 0xff800000u};
            const float x = from_bits(i < 8 ? fixed[i] : bits(rng));
            const float fast = pkv::fp8_quotient(x, d), exact = x / scale;
            ASSERT_EQ(pkv::fmt::f32_to_e4m3(fast), pkv::fmt::f32_to_e4m3(exact)) << "scale " << scale << " x " << x;
            ASSERT_EQ(pkv::fmt::f32_to_e5m2(fast), pkv::fmt::f32_to_e5m2(exact)) << "scale " << scale << " x " << x;
            // In the refined range the quotient itself is the correctly rounded one.
            const float a = std::fabs(x * d.reciprocal);
            if (d.fast && a >= 0x1p-20f && a < 0x1p64f && std::isfinite(exact)) {
                ASSERT_EQ(std::memcmp(&fast, &exact, 4), 0) << "scale " << scale << " x " << x;
            }
        }
    }
}

#if defined(PKV_TEST_CUDA)
TEST(Fp8QuotientDevice, AllInputsMatchDivisionCodes) {
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess || n == 0) {
        (void)cudaGetLastError();
        GTEST_SKIP() << "no CUDA device";
    }
    const std::vector<float> scales = test_scales();
    pkvt::Fp8QuotientResult r;
    ASSERT_EQ(pkvt::fp8_quotient_device_check(scales.data(), int(scales.size()), &r), 0) << r.error;
    EXPECT_EQ(r.quotient_mismatch, 0ull) << "first at scale " << (r.first_scale_index >= 0 ? scales[r.first_scale_index] : 0.0f)
                                         << " x bits 0x" << std::hex << r.first_x_bits;
    EXPECT_EQ(r.pair_mismatch, 0ull);
}
#endif

}  // namespace
