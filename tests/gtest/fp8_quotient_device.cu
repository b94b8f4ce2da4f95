// Device check of the FP8 encoders' quotient (core/element_convert.h: fp8_quotient) against
// the IEEE float32 division it stands for: for each scale and all 2^32 float inputs, the FP8
// codes (e4m3 and e5m2) of fp8_quotient(x) and of x / scale must be equal. Also checks the pair
// converter (f32x2_to_fp8x2) against two single conversions. Compiled only with CUDA.
#include <cuda_runtime.h>

#include <cstdio>

#include "core/element_convert.h"
#include "fp8_quotient_device.h"

namespace pkvt {
namespace {

struct Counts {
    unsigned long long quotient_mismatch, pair_mismatch;
    unsigned int first_x;
};

__global__ void sweep(float scale, Counts *c) {
    const pkv::Fp8Divisor d = pkv::make_fp8_divisor(scale);
    const uint64_t n = uint64_t(1) << 32, step = uint64_t(gridDim.x) * blockDim.x;
    unsigned long long qm = 0, pm = 0;
    for (uint64_t i = uint64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += step) {
        const float x = __uint_as_float(uint32_t(i));
        const float fast = pkv::fp8_quotient(x, d), exact = x / scale;
        const bool same4 = pkv::fmt::f32_to_e4m3(fast) == pkv::fmt::f32_to_e4m3(exact);
        const bool same5 = pkv::fmt::f32_to_e5m2(fast) == pkv::fmt::f32_to_e5m2(exact);
        if (!same4 || !same5) {
            ++qm;
            atomicMin(&c->first_x, uint32_t(i));
        }
        const uint16_t p4 = pkv::fmt::f32x2_to_fp8x2<false>(fast, -exact);
        const uint16_t p5 = pkv::fmt::f32x2_to_fp8x2<true>(fast, -exact);
        if (p4 != (pkv::fmt::f32_to_e4m3(fast) | (uint32_t(pkv::fmt::f32_to_e4m3(-exact)) << 8)) ||
            p5 != (pkv::fmt::f32_to_e5m2(fast) | (uint32_t(pkv::fmt::f32_to_e5m2(-exact)) << 8)))
            ++pm;
    }
    if (qm) atomicAdd(&c->quotient_mismatch, qm);
    if (pm) atomicAdd(&c->pair_mismatch, pm);
}

}  // namespace

int fp8_quotient_device_check(const float *scales, int n, Fp8QuotientResult *r) {
    *r = Fp8QuotientResult{};
    Counts *c = nullptr;
    cudaError_t e = cudaMalloc(&c, sizeof(Counts));
    int sms = 0;
    if (e == cudaSuccess) e = cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0);
    for (int i = 0; i < n && e == cudaSuccess; ++i) {
        Counts h{0, 0, 0xFFFFFFFFu};
        cudaMemcpy(c, &h, sizeof h, cudaMemcpyHostToDevice);
        sweep<<<sms * 8, 256>>>(scales[i], c);
        e = cudaMemcpy(&h, c, sizeof h, cudaMemcpyDeviceToHost);
        r->quotient_mismatch += h.quotient_mismatch;
        r->pair_mismatch += h.pair_mismatch;
        if (h.quotient_mismatch && r->first_scale_index < 0) {
            r->first_scale_index = i;
            r->first_x_bits = h.first_x;
        }
    }
    cudaFree(c);
    if (e != cudaSuccess) {
        std::snprintf(r->error, sizeof r->error, "%s", cudaGetErrorString(e));
        return 1;
    }
    return 0;
}

}  // namespace pkvt
