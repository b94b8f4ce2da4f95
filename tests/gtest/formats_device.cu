// Exhaustive device check of the library's `_soft` format encoders against CUDA's conversion
// instructions / intrinsics, for all 2^32 float bit patterns: __float2half_rn,
// __float2bfloat16_rn, __nv_cvt_float_to_fp8(x, __NV_SATFINITE, __NV_E4M3 / __NV_E5M2).
// numeric_formats.h documents its NaN results (0x7FFF / 0x7F) and claims bit-for-bit agreement,
// so NaN results are compared bit for bit too (counted apart to make a report readable).
// Decoders are compared against the hardware up-conversions for every code (NaN == any NaN).
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>
#include <cuda_runtime.h>

#include <cstdio>
#include <cstring>

#include "core/numeric_formats.h"
#include "formats_device.h"

namespace pkvt {
namespace {

__device__ uint32_t hw_encode(int f, float x) {
    switch (f) {
        case 0: return __half_as_ushort(__float2half_rn(x));
        case 1: return __bfloat16_as_ushort(__float2bfloat16_rn(x));
        case 2: return uint32_t(__nv_cvt_float_to_fp8(x, __NV_SATFINITE, __NV_E4M3));
        default: return uint32_t(__nv_cvt_float_to_fp8(x, __NV_SATFINITE, __NV_E5M2));
    }
}

__device__ uint32_t soft_encode(int f, float x) {
    switch (f) {
        case 0: return pkv::fmt::f32_to_f16_bits_soft(x);
        case 1: return pkv::fmt::f32_to_bf16_bits_soft(x);
        case 2: return pkv::fmt::f32_to_e4m3_soft(x);
        default: return pkv::fmt::f32_to_e5m2_soft(x);
    }
}

__device__ bool is_nan_code(int f, uint32_t c) {
    switch (f) {
        case 0: return (c & 0x7FFFu) > 0x7C00u;
        case 1: return (c & 0x7FFFu) > 0x7F80u;
        case 2: return (c & 0x7Fu) == 0x7Fu;
        default: return (c & 0x7Fu) > 0x7Cu;
    }
}

struct DevState {
    unsigned long long mism[4], nanm[4];
    unsigned int first[4];
    unsigned long long dmism[4];
    unsigned int dfirst[4];
    int arch;
};

__global__ void sweep_encode(DevState *s) {
#if defined(__CUDA_ARCH__)
    if (blockIdx.x == 0 && threadIdx.x == 0) s->arch = __CUDA_ARCH__;
#endif
    const uint64_t n = uint64_t(1) << 32;
    const uint64_t step = uint64_t(gridDim.x) * blockDim.x;
    for (uint64_t i = uint64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += step) {
        const float x = __uint_as_float(uint32_t(i));
#pragma unroll
        for (int f = 0; f < 4; ++f) {
            const uint32_t h = hw_encode(f, x), so = soft_encode(f, x);
            if (h != so) {
                if (is_nan_code(f, h) && is_nan_code(f, so)) atomicAdd(&s->nanm[f], 1ull);
                else atomicAdd(&s->mism[f], 1ull);
                atomicMin(&s->first[f], uint32_t(i));
            }
        }
    }
}

__device__ float hw_decode(int f, uint32_t c) {
    switch (f) {
        case 0: return __half2float(__ushort_as_half(uint16_t(c)));
        case 1: return __bfloat162float(__ushort_as_bfloat16(uint16_t(c)));
        case 2: return __half2float(__half(__nv_cvt_fp8_to_halfraw(__nv_fp8_storage_t(c), __NV_E4M3)));
        default: return __half2float(__half(__nv_cvt_fp8_to_halfraw(__nv_fp8_storage_t(c), __NV_E5M2)));
    }
}
__device__ float lib_decode(int f, uint32_t c) {
    switch (f) {
        case 0: return pkv::fmt::f16_bits_to_f32(uint16_t(c));
        case 1: return pkv::fmt::bf16_bits_to_f32(uint16_t(c));
        case 2: return pkv::fmt::e4m3_to_f32(uint8_t(c));
        default: return pkv::fmt::e5m2_to_f32(uint8_t(c));
    }
}

__global__ void sweep_decode(DevState *s) {
    const uint32_t c = blockIdx.x * blockDim.x + threadIdx.x;
    for (int f = 0; f < 4; ++f) {
        if (c >= (f < 2 ? 65536u : 256u)) continue;
        const float a = hw_decode(f, c), b = lib_decode(f, c);
        const bool same = (a != a && b != b) || __float_as_uint(a) == __float_as_uint(b);
        if (!same) {
            atomicAdd(&s->dmism[f], 1ull);
            atomicMin(&s->dfirst[f], c);
        }
    }
}

__global__ void eval_first(const DevState *s, uint32_t *out) {
    const int f = threadIdx.x;
    if (f >= 4) return;
    const float x = __uint_as_float(s->first[f]);
    out[f] = hw_encode(f, x);
    out[4 + f] = soft_encode(f, x);
    const uint32_t c = s->dfirst[f] < 65536u ? s->dfirst[f] : 0u;
    out[8 + f] = __float_as_uint(lib_decode(f, c));
    out[12 + f] = __float_as_uint(hw_decode(f, c));
}

}  // namespace

int formats_device_check(FormatsDeviceResult *r) {
    std::memset(r, 0, sizeof *r);
    auto fail = [&](const char *what, cudaError_t e) {
        std::snprintf(r->error, sizeof r->error, "%s: %s", what, cudaGetErrorString(e));
        return 1;
    };
    DevState init;
    std::memset(&init, 0, sizeof init);
    for (int f = 0; f < 4; ++f) init.first[f] = init.dfirst[f] = 0xFFFFFFFFu;
    DevState *d = nullptr;
    uint32_t *firsts = nullptr;
    cudaError_t e = cudaMalloc(&d, sizeof(DevState));
    if (e != cudaSuccess) return fail("cudaMalloc", e);
    e = cudaMalloc(&firsts, 16 * sizeof(uint32_t));
    if (e != cudaSuccess) return fail("cudaMalloc", e);
    cudaMemcpy(d, &init, sizeof init, cudaMemcpyHostToDevice);
    int sms = 0;
    cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0);
    sweep_encode<<<sms * 8, 256>>>(d);
    sweep_decode<<<256, 256>>>(d);
    eval_first<<<1, 4>>>(d, firsts);
    e = cudaDeviceSynchronize();
    if (e != cudaSuccess) return fail("kernels", e);
    DevState h;
    uint32_t fv[16];
    cudaMemcpy(&h, d, sizeof h, cudaMemcpyDeviceToHost);
    cudaMemcpy(fv, firsts, sizeof fv, cudaMemcpyDeviceToHost);
    cudaFree(d);
    cudaFree(firsts);
    for (int f = 0; f < 4; ++f) {
        r->encode_mismatch[f] = h.mism[f];
        r->encode_nan_mismatch[f] = h.nanm[f];
        r->first_input[f] = h.first[f];
        r->first_hw[f] = fv[f];
        r->first_soft[f] = fv[4 + f];
        r->decode_mismatch[f] = h.dmism[f];
        r->first_decode_code[f] = h.dfirst[f];
        r->first_decode_lib[f] = fv[8 + f];
        r->first_decode_hw[f] = fv[12 + f];
    }
    r->device_arch = h.arch;
    e = cudaGetLastError();
    if (e != cudaSuccess) return fail("cuda", e);
    return 0;
}

}  // namespace pkvt
