// Two 16-bit floats (f16 or bf16) in one 32-bit word: element 2k in the low half, 2k + 1 in the
// high half. Widening, rounding and min / max a pair at a time, with the bits of the per-element
// conversions of core/element_convert.h.
#pragma once

#include <cstdint>

#include "core/element_convert.h"

namespace pkv {

template <Elem T> __device__ __forceinline__ float pair_lo(uint32_t w) {
    if constexpr (T == Elem::BF16) return __uint_as_float(w << 16);
    else return to_f32<T>(uint16_t(w));
}
template <Elem T> __device__ __forceinline__ float pair_hi(uint32_t w) {
    if constexpr (T == Elem::BF16) return __uint_as_float(w & 0xffff0000u);
    else return to_f32<T>(uint16_t(w >> 16));
}

// from_f32<T>(lo) | from_f32<T>(hi) << 16 in one conversion instruction (the same rounding,
// NaN canonical).
template <Elem T> __device__ __forceinline__ uint32_t pack_rn(float lo, float hi) {
    uint32_t r;
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    // cvt.rn.{bf16,f16}x2.f32 d, a, b puts a in the upper half; one register, no repacking.
    if constexpr (T == Elem::BF16) asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
    else asm("cvt.rn.f16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
#else
    r = uint32_t(from_f32<T>(lo)) | uint32_t(from_f32<T>(hi)) << 16;
#endif
    return r;
}

// Halfwise min (Max = false) or max of two pairs, NaN when either half is NaN; exact
// (subnormals kept).
template <Elem T, bool Max> __device__ __forceinline__ uint32_t pair_extreme_nan(uint32_t a, uint32_t b) {
    uint32_t r;
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    if constexpr (T == Elem::BF16 && Max) asm("max.NaN.bf16x2 %0, %1, %2;" : "=r"(r) : "r"(a), "r"(b));
    else if constexpr (T == Elem::BF16) asm("min.NaN.bf16x2 %0, %1, %2;" : "=r"(r) : "r"(a), "r"(b));
    else if constexpr (Max) asm("max.NaN.f16x2 %0, %1, %2;" : "=r"(r) : "r"(a), "r"(b));
    else asm("min.NaN.f16x2 %0, %1, %2;" : "=r"(r) : "r"(a), "r"(b));
#else
    const auto pick = [](float x, float y) { return Max ? fmaxf(x, y) : fminf(x, y); };
    r = pack_rn<T>(pick(pair_lo<T>(a), pair_lo<T>(b)), pick(pair_hi<T>(a), pair_hi<T>(b)));
#endif
    return r;
}

}  // namespace pkv
