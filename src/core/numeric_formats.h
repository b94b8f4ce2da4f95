// The one definition of every numeric format pagedkv stores, shared by the CPU and CUDA
// backends (PKV_HD = __host__ __device__), so both produce identical bits.
//
// Each encoder has a `_soft` integer-only definition. On devices with a conversion
// instruction the public encoder uses it instead; tests/gtest/formats_device.cu checks over
// all 2^32 inputs that the instruction and the `_soft` definition agree bit for bit.
// Integer code only: no float expression here may be contracted into an FMA by a compiler.
#pragma once

#include <cstdint>
#include <cstring>

#if defined(__CUDACC__)
#define PKV_HD __host__ __device__ __forceinline__
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>
#else
#define PKV_HD inline
#endif

namespace pkv {
namespace fmt {

PKV_HD uint32_t f32_bits(float f) {
#if defined(__CUDA_ARCH__)
    return __float_as_uint(f);
#else
    uint32_t u;
    std::memcpy(&u, &f, 4);
    return u;
#endif
}

PKV_HD float f32_from_bits(uint32_t u) {
#if defined(__CUDA_ARCH__)
    return __uint_as_float(u);
#else
    float f;
    std::memcpy(&f, &u, 4);
    return f;
#endif
}

// Any NaN as the canonical 0x7FFFFFFF, the pattern the GPU's arithmetic gives (the CPU's keeps an
// operand's payload): values read back from a cache are the same bytes on both backends.
PKV_HD float canonical_nan(float x) { return x != x ? f32_from_bits(0x7fffffffu) : x; }

// Count of leading zero bits of a non-zero 32-bit value.
PKV_HD int clz32(uint32_t x) {
#if defined(__CUDA_ARCH__)
    return __clz(x);
#else
    return __builtin_clz(x);
#endif
}

// Round the magnitude `m` (with `shift` low bits to drop) to nearest, ties to even.
PKV_HD uint32_t round_shift_rne(uint32_t m, uint32_t shift) {
    if (shift == 0) return m;
    if (shift > 31) return 0;
    const uint32_t q = m >> shift;
    const uint32_t rem = m & ((1u << shift) - 1u);
    const uint32_t half = 1u << (shift - 1u);
    return q + ((rem > half || (rem == half && (q & 1u))) ? 1u : 0u);
}

// A float's magnitude bits `ax` (below 2^emin_of_target) expressed in units of the target's
// smallest subnormal 2^unit_exp, rounded to nearest even. Requires ax to be a normal float.
PKV_HD uint32_t subnormal_units_rne(uint32_t ax, int unit_exp) {
    const int e = int(ax >> 23);                       // biased exponent, >= 1
    const uint32_t m = (ax & 0x7fffffu) | 0x800000u;   // value = m * 2^(e - 150)
    const int shift = (unit_exp + 150) - e;            // value / 2^unit_exp = m >> shift
    return shift <= 0 ? (m << (-shift)) : round_shift_rne(m, uint32_t(shift));
}

// ---------------------------------------------------------------- bfloat16
PKV_HD float bf16_bits_to_f32(uint16_t b) { return f32_from_bits(uint32_t(b) << 16); }

// Round to nearest even; NaN -> canonical 0x7FFF (what cvt.rn.bf16.f32 gives).
PKV_HD uint16_t f32_to_bf16_bits_soft(float f) {
    uint32_t u = f32_bits(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return 0x7fffu;
    u += 0x7fffu + ((u >> 16) & 1u);
    return uint16_t(u >> 16);
}

PKV_HD uint16_t f32_to_bf16_bits(float f) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    return __bfloat16_as_ushort(__float2bfloat16_rn(f));
#else
    return f32_to_bf16_bits_soft(f);
#endif
}

// ---------------------------------------------------------------- float16
PKV_HD float f16_bits_to_f32_soft(uint16_t h) {
    const uint32_t sign = uint32_t(h & 0x8000u) << 16;
    const uint32_t exp = (h >> 10) & 0x1fu;
    uint32_t man = h & 0x3ffu;
    if (exp == 0x1fu) return f32_from_bits(sign | 0x7f800000u | (man << 13));  // inf / NaN
    if (exp != 0) return f32_from_bits(sign | ((exp + 112u) << 23) | (man << 13));
    if (man == 0) return f32_from_bits(sign);
    // Subnormal man * 2^-24: normalize into a float32 normal.
    const uint32_t shift = uint32_t(clz32(man) - 21);  // brings the leading one to bit 10
    man <<= shift;
    return f32_from_bits(sign | ((113u - shift) << 23) | ((man & 0x3ffu) << 13));
}

// The conversion instruction is exact for every non-NaN half; NaNs take the shared bits
// (payload kept), so CPU and GPU agree on every input.
PKV_HD float f16_bits_to_f32(uint16_t h) {
#if defined(__CUDA_ARCH__)
    if ((h & 0x7c00u) == 0x7c00u && (h & 0x3ffu)) return f32_from_bits((uint32_t(h & 0x8000u) << 16) | 0x7f800000u | (uint32_t(h & 0x3ffu) << 13));
    return __half2float(__ushort_as_half(h));
#else
    return f16_bits_to_f32_soft(h);
#endif
}

// Round to nearest even, overflow to infinity; NaN -> canonical 0x7FFF (cvt.rn.f16.f32).
PKV_HD uint16_t f32_to_f16_bits_soft(float f) {
    const uint32_t x = f32_bits(f);
    const uint16_t sign = uint16_t((x >> 16) & 0x8000u);
    const uint32_t ax = x & 0x7fffffffu;
    if (ax > 0x7f800000u) return 0x7fffu;
    if (ax >= 0x477ff000u) return sign | 0x7c00u;          // >= 65520 rounds to inf
    if (ax >= 0x38800000u) {                                // normal half (>= 2^-14)
        uint32_t r = ax - 0x38000000u;                      // rebias 127 -> 15
        r += 0x0fffu + ((r >> 13) & 1u);
        return sign | uint16_t(r >> 13);
    }
    if (ax <= 0x33000000u) return sign;                     // <= 2^-25 rounds to zero
    return sign | uint16_t(subnormal_units_rne(ax, -24));  // may round up to 0x400
}

PKV_HD uint16_t f32_to_f16_bits(float f) {
#if defined(__CUDA_ARCH__)
    return __half_as_ushort(__float2half_rn(f));
#else
    return f32_to_f16_bits_soft(f);
#endif
}

// ---------------------------------------------------------------- fp8 e4m3 (OCP e4m3fn)
// bias 7, no infinities, 0x7F / 0xFF are NaN, max finite 448 (0x7E).
PKV_HD float e4m3_to_f32(uint8_t b) {
    const uint32_t sign = uint32_t(b & 0x80u) << 24;
    const uint32_t exp = (b >> 3) & 0xfu;
    const uint32_t man = b & 0x7u;
    if (exp == 0xfu && man == 0x7u) return f32_from_bits(0x7fffffffu);
    if (exp != 0) return f32_from_bits(sign | ((exp + 120u) << 23) | (man << 20));
    if (man == 0) return f32_from_bits(sign);
    // Subnormal man * 2^-9: normalize into a float32 normal.
    const uint32_t shift = uint32_t(clz32(man) - 28);  // brings the leading one to bit 3
    return f32_from_bits(sign | ((121u - shift) << 23) | (((man << shift) & 0x7u) << 20));
}

// Saturating (SATFINITE) round-to-nearest-even; NaN -> 0x7F; +-inf -> +-448.
PKV_HD uint8_t f32_to_e4m3_soft(float f) {
    const uint32_t x = f32_bits(f);
    const uint8_t sign = uint8_t((x >> 24) & 0x80u);
    const uint32_t ax = x & 0x7fffffffu;
    if (ax > 0x7f800000u) return 0x7fu;
    if (ax >= 0x43e00000u) return sign | 0x7eu;            // >= 448 saturates
    if (ax >= 0x3c800000u) {                                // normal (>= 2^-6)
        uint32_t r = ax - 0x3c000000u;                      // rebias 127 -> 7
        r += 0x7ffffu + ((r >> 20) & 1u);
        const uint32_t q = r >> 20;
        return sign | uint8_t(q > 0x7eu ? 0x7eu : q);
    }
    if (ax <= 0x3a800000u) return sign;                     // <= 2^-10 rounds to zero
    return sign | uint8_t(subnormal_units_rne(ax, -9));    // may round up to 0x08
}

PKV_HD uint8_t f32_to_e4m3(float f) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 890
    return uint8_t(__nv_cvt_float_to_fp8(f, __NV_SATFINITE, __NV_E4M3));
#else
    return f32_to_e4m3_soft(f);
#endif
}

// ---------------------------------------------------------------- fp8 e5m2

// Two encodes at once, `lo` in the low byte: the device converts the pair in one independent
// instruction (the one-value form merges into the previous result, serializing a vector).
template <bool E5M2> PKV_HD uint16_t f32x2_to_fp8x2(float lo, float hi);

// bias 15, the top byte of an IEEE half: infinities 0x7C, NaNs 0x7D-0x7F, max finite 57344.
PKV_HD float e5m2_to_f32(uint8_t b) { return f16_bits_to_f32(uint16_t(uint16_t(b) << 8)); }

// Saturating (SATFINITE) round-to-nearest-even; NaN -> 0x7F; +-inf -> +-57344.
PKV_HD uint8_t f32_to_e5m2_soft(float f) {
    const uint32_t x = f32_bits(f);
    const uint8_t sign = uint8_t((x >> 24) & 0x80u);
    const uint32_t ax = x & 0x7fffffffu;
    if (ax > 0x7f800000u) return 0x7fu;
    if (ax >= 0x47600000u) return sign | 0x7bu;            // >= 57344 saturates
    if (ax >= 0x38800000u) {                                // normal (>= 2^-14)
        uint32_t r = ax - 0x38000000u;                      // rebias 127 -> 15
        r += 0xfffffu + ((r >> 21) & 1u);
        const uint32_t q = r >> 21;
        return sign | uint8_t(q > 0x7bu ? 0x7bu : q);
    }
    if (ax <= 0x37000000u) return sign;                     // <= 2^-17 rounds to zero
    return sign | uint8_t(subnormal_units_rne(ax, -16));
}

PKV_HD uint8_t f32_to_e5m2(float f) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 890
    return uint8_t(__nv_cvt_float_to_fp8(f, __NV_SATFINITE, __NV_E5M2));
#else
    return f32_to_e5m2_soft(f);
#endif
}

template <bool E5M2> PKV_HD uint16_t f32x2_to_fp8x2(float lo, float hi) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 890
    return uint16_t(__nv_cvt_float2_to_fp8x2(make_float2(lo, hi), __NV_SATFINITE, E5M2 ? __NV_E5M2 : __NV_E4M3));
#else
    if constexpr (E5M2) return uint16_t(f32_to_e5m2_soft(lo) | (uint32_t(f32_to_e5m2_soft(hi)) << 8));
    else return uint16_t(f32_to_e4m3_soft(lo) | (uint32_t(f32_to_e4m3_soft(hi)) << 8));
#endif
}

}  // namespace fmt
}  // namespace pkv
