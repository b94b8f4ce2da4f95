// Float operations rounded once each, never fused unless named so (nvcc contracts a * b + c into
// an FMA by default; gcc may with an FMA ISA), and the integer views of magnitudes: what the quantized
// formats' row math uses so that the CPU and CUDA backends give the same bits.
#pragma once

#include <cstdint>

#include "core/numeric_formats.h"

namespace pkv {

// On the host, an empty asm statement pins the rounded value in a register, so that gcc's
// -ffp-contract=fast (when an FMA ISA is enabled) cannot fuse it into a following add.
PKV_HD float pin(float x) {
#if !defined(__CUDA_ARCH__) && defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
    asm("" : "+x"(x));
#elif !defined(__CUDA_ARCH__) && defined(__GNUC__) && defined(__aarch64__)
    asm("" : "+w"(x));
#endif
    return x;
}

PKV_HD float mul_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
    return __fmul_rn(a, b);
#else
    return pin(a * b);
#endif
}
PKV_HD float add_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
    return __fadd_rn(a, b);
#else
    return pin(a + b);
#endif
}
PKV_HD float sub_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
    return __fsub_rn(a, b);
#else
    return pin(a - b);
#endif
}
// a * b + c rounded once (a fused multiply-add; exact on every host: fmaf is correctly rounded).
PKV_HD float fma_rn(float a, float b, float c) {
#if defined(__CUDA_ARCH__)
    return __fmaf_rn(a, b, c);
#else
    return pin(__builtin_fmaf(a, b, c));
#endif
}
PKV_HD float div_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
    return __fdiv_rn(a, b);
#else
    return pin(a / b);
#endif
}
PKV_HD float sqrt_rn(float a) {
#if defined(__CUDA_ARCH__)
    return __fsqrt_rn(a);
#else
    return pin(__builtin_sqrtf(a));
#endif
}

// |x| as its bit pattern: orders like |x|, with Inf and NaN above every finite value, so the
// maximum over a row is exact in any reduction order.
PKV_HD uint32_t magnitude_bits(float x) { return fmt::f32_bits(x) & 0x7fffffffu; }
PKV_HD uint32_t max_bits(uint32_t a, uint32_t b) { return a > b ? a : b; }

// The scale stored for a row or tile that cannot be quantized (NaN / Inf values).
constexpr uint32_t kNanScaleBits = 0x7fc00000u;

}  // namespace pkv
