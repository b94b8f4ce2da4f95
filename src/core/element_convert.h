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

// Write path: one input element -> one cache element. Equal types copy the bits (NaN payloads
// included); FP8 caches store sat_finite_rne(x / scale) computed in float32.
template <Elem In, Elem Cache> PKV_HD storage_t<Cache> encode_for_cache(storage_t<In> x, float scale) {
    if constexpr (In == Cache) {
        return x;
    } else {
        float f = to_f32<In>(x);
        if constexpr (elem_is_fp8(Cache)) f = f / scale;
        return from_f32<Cache>(f);
    }
}

// Gather path: one cache element -> one output element. FP8 gives float(q) * scale.
template <Elem Cache, Elem Out> PKV_HD storage_t<Out> decode_from_cache(storage_t<Cache> x, float scale) {
    if constexpr (Cache == Out) {
        return x;
    } else {
        float f = to_f32<Cache>(x);
        if constexpr (elem_is_fp8(Cache)) f = f * scale;
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
