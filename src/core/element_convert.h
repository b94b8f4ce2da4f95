// Per-element conversions of the write and gather paths, built on numeric_formats.h.
// Shared by the CPU and CUDA backends, so both produce the same bits.
#pragma once

#include <cstdint>
#include <type_traits>

#include "core/element.h"
#include "core/numeric_formats.h"

namespace pkv {

template <Elem E> struct Storage;
template <> struct Storage<Elem::F32> { using type = float; };
template <> struct Storage<Elem::F16> { using type = uint16_t; };
template <> struct Storage<Elem::BF16> { using type = uint16_t; };
template <> struct Storage<Elem::E4M3> { using type = uint8_t; };
template <> struct Storage<Elem::E5M2> { using type = uint8_t; };
template <Elem E> using storage_t = typename Storage<E>::type;

template <Elem E> PKV_HD float to_f32(storage_t<E> x) {
    if constexpr (E == Elem::F32) return x;
    else if constexpr (E == Elem::F16) return fmt::f16_bits_to_f32(x);
    else if constexpr (E == Elem::BF16) return fmt::bf16_bits_to_f32(x);
    else if constexpr (E == Elem::E4M3) return fmt::e4m3_to_f32(x);
    else return fmt::e5m2_to_f32(x);
}

template <Elem E> PKV_HD storage_t<E> from_f32(float f) {
    if constexpr (E == Elem::F32) return f;
    else if constexpr (E == Elem::F16) return fmt::f32_to_f16_bits(f);
    else if constexpr (E == Elem::BF16) return fmt::f32_to_bf16_bits(f);
    else if constexpr (E == Elem::E4M3) return fmt::f32_to_e4m3(f);
    else return fmt::f32_to_e5m2(f);
}

// The FP8 scale with its correctly rounded reciprocal, made once per scale so that each
// element costs a multiply and two FMAs instead of a full division.
struct Fp8Divisor {
    float scale = 1.0f, reciprocal = 1.0f;
    bool fast = true;  // |scale| in [2^-40, 2^40]: fp8_quotient_fast applies
};

PKV_HD float abs_f32(float x) {
#if defined(__CUDA_ARCH__)
    return fabsf(x);  // an operand modifier, no instruction
#else
    return __builtin_fabsf(x);
#endif
}

PKV_HD Fp8Divisor make_fp8_divisor(float scale) {
    Fp8Divisor d;
    d.scale = scale;
    d.reciprocal = 1.0f / scale;
    const float a = abs_f32(scale);
    d.fast = a >= 0x1p-40f && a <= 0x1p40f;
    return d;
}

PKV_HD float fma_f32(float a, float b, float c) {
#if defined(__CUDA_ARCH__)
    return __fmaf_rn(a, b, c);
#else
    return __builtin_fmaf(a, b, c);
#endif
}


// x / d.scale for FP8 encoding when d.fast: gives the same FP8 code as the IEEE float32
// quotient (vLLM's x / scale) for every x. For |q0| in [2^-20, 2^64) one Markstein step (exact
// residual by FMA, then q0 + residual * reciprocal) is the correctly rounded quotient. Outside
// that range q0 is returned: every candidate quotient there has the same FP8 code (below 2^-17
// both formats round to a zero with the sign of x / scale, which q0 has — the FMA step would
// turn -0 into +0; from 2^64 both saturate) and NaN / inf propagate as in a division.
// Straight-line code: no division, no call. tests/gtest/fp8_quotient_*.cpp check it.
PKV_HD float fp8_quotient_fast(float x, const Fp8Divisor &d) {
    const float q0 = x * d.reciprocal;
    const float a = abs_f32(q0);
    const float residual = fma_f32(-d.scale, q0, x);
    const float q1 = fma_f32(residual, d.reciprocal, q0);
    return (a >= 0x1p-20f && a < 0x1p64f) ? q1 : q0;
}

PKV_HD float fp8_quotient(float x, const Fp8Divisor &d) { return d.fast ? fp8_quotient_fast(x, d) : x / d.scale; }

// Write path: one input element -> one cache element. Equal types copy the bits (NaN payloads
// included); FP8 caches store sat_finite_rne(x / scale), the quotient as fp8_quotient gives it.
template <Elem In, Elem Cache> PKV_HD storage_t<Cache> encode_for_cache(storage_t<In> x, const Fp8Divisor &d) {
    if constexpr (In == Cache) {
        return x;
    } else {
        float f = to_f32<In>(x);
        if constexpr (elem_is_fp8(Cache)) f = fp8_quotient(f, d);
        return from_f32<Cache>(f);
    }
}

// Gather path: one cache element -> one output element. FP8 gives float(q) * scale (NaN canonical).
template <Elem Cache, Elem Out> PKV_HD storage_t<Out> decode_from_cache(storage_t<Cache> x, float scale) {
    if constexpr (Cache == Out) {
        return x;
    } else {
        float f = to_f32<Cache>(x);
        if constexpr (elem_is_fp8(Cache)) f = fmt::canonical_nan(f * scale);
        return from_f32<Out>(f);
    }
}

// Call f(std::integral_constant<Elem, e>{}) for a run-time Elem (the caller has validated it).
template <typename F> decltype(auto) dispatch_elem(Elem e, F &&f) {
    switch (e) {
        case Elem::F32: return f(std::integral_constant<Elem, Elem::F32>{});
        case Elem::F16: return f(std::integral_constant<Elem, Elem::F16>{});
        case Elem::BF16: return f(std::integral_constant<Elem, Elem::BF16>{});
        case Elem::E4M3: return f(std::integral_constant<Elem, Elem::E4M3>{});
        default: return f(std::integral_constant<Elem, Elem::E5M2>{});
    }
}

}  // namespace pkv
