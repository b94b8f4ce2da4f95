// Per-token-head INT8 / FP8 (e4m3) row math: the ONE definition shared by the CPU backend
// (src/cpu/token_head.cpp) and the CUDA backend (src/cuda/token_head.cu), so that both store the
// same bytes. Every float operation is spelled out as a correctly rounded IEEE operation
// (__fdiv_rn / __fmul_rn on the device); no multiply ever feeds an add, so no FMA contraction
// can change a result.
//
// A row (one token, one head, one of K or V) of D values x_i (f32 / f16 / bf16 input, read as
// float32):
//   amax  = max_i |x_i|, found as the maximum of the magnitude bit patterns (bits(x) & 0x7FFFFFFF):
//           for non-negative floats the integer order is the float order, and +Inf / NaN
//           patterns are above every finite one. Exact, and independent of the reduction order.
//   s     = max(amax / QMAX, 1e-6f)     QMAX = 127 (INT8) or 448 (FP8 e4m3), IEEE division
//   inv   = 1.0f / s                    IEEE division
//   v_i   = x_i * inv                   one IEEE multiply (vLLM: x * (1/s), not x / s)
//   INT8  q_i = clamp(rne(v_i), -128, 127)   round to nearest, ties to even. vLLM's Triton kernel
//           truncates toward zero instead (float -> int8 store); we round to nearest (more
//           accurate, documented in pagedkv.h).
//   FP8   q_i = e4m3 sat_finite_rne(v_i)    (fmt::f32_to_e4m3, the shared encoder)
// Read back: x^_i = float(q_i) * s (one IEEE multiply; a NaN result as 0x7FFFFFFF), rounded to the
// output dtype.
//
// Non-finite rows: a row with any NaN or +-Inf element (amax pattern >= 0x7F800000) stores the
// canonical NaN scale 0x7FC00000. Then inv and every v_i are NaN, so the codes are: INT8 0 for
// every element (NaN is mapped to 0 explicitly: float -> int of NaN is UB in C++; CUDA's
// __float2int_rn would give 0 too), FP8 0x7F (the e4m3 NaN code) for every element. Identical
// on the CPU and the GPU; a gather of such a row gives NaN everywhere.
#pragma once

#include <cstdint>
#include <type_traits>

#include "core/element_convert.h"
#include "core/exact_float.h"
#include "core/numeric_formats.h"

namespace pkv {
namespace th {

constexpr float kMinScale = 1e-6f;
constexpr float kInt8Max = 127.0f;
constexpr float kFp8Max = 448.0f;
constexpr uint32_t kInfBits = 0x7f800000u;




// The row scale from the row's maximum magnitude pattern (see above): NaN for a non-finite row.
template <bool Fp8> PKV_HD float row_scale(uint32_t amax_bits) {
    if (amax_bits >= kInfBits) return fmt::f32_from_bits(kNanScaleBits);
    const float s = div_rn(fmt::f32_from_bits(amax_bits), Fp8 ? kFp8Max : kInt8Max);
    return s > kMinScale ? s : kMinScale;
}

// 1 / s, correctly rounded.
PKV_HD float reciprocal(float s) { return div_rn(1.0f, s); }

// The INT8 code of v = x * (1/s): NaN -> 0, else clamp to [-128, 127] and round to nearest even
// (clamping first keeps the float -> int conversion defined; the order does not change the result).
PKV_HD int8_t int8_code(float v) {
    if (!(v == v)) return 0;
    const float c = v < -128.0f ? -128.0f : (v > 127.0f ? 127.0f : v);
#if defined(__CUDA_ARCH__)
    return int8_t(__float2int_rn(c));
#else
    return int8_t(int(__builtin_rintf(c)));  // the default rounding mode: nearest even
#endif
}

// The code byte of one element x (already float32) for a row with reciprocal scale inv.
template <bool Fp8> PKV_HD uint8_t encode(float x, float inv) {
    const float v = mul_rn(x, inv);
    if constexpr (Fp8) return fmt::f32_to_e4m3(v);
    else return uint8_t(int8_code(v));
}

// float(q) * s for one code byte. A NaN product (NaN scale, or an FP8 NaN code) is returned as
// the canonical 0x7FFFFFFF: the GPU's multiply gives that pattern, the CPU's would propagate the
// operand's payload (0x7FC00000 for the NaN scale), and f32 outputs must be the same bytes.
template <bool Fp8> PKV_HD float decode(uint8_t q, float s) {
    const float r = mul_rn(Fp8 ? fmt::e4m3_to_f32(q) : float(int8_t(q)), s);
    return fmt::canonical_nan(r);
}

// A whole row, sequentially (the CPU backend; the CUDA kernels split the same steps over a warp).
// Writes d code bytes to `codes` and returns the scale.
template <Elem In, bool Fp8> PKV_HD float quantize_row(const storage_t<In> *x, int64_t d, uint8_t *codes) {
    uint32_t amax = 0;
    for (int64_t i = 0; i < d; ++i) amax = max_bits(amax, magnitude_bits(to_f32<In>(x[i])));
    const float s = row_scale<Fp8>(amax);
    const float inv = reciprocal(s);
    for (int64_t i = 0; i < d; ++i) codes[i] = encode<Fp8>(to_f32<In>(x[i]), inv);
    return s;
}

// A whole row back to the output dtype.
template <Elem Out, bool Fp8> PKV_HD void dequantize_row(const uint8_t *codes, int64_t d, float s, storage_t<Out> *out) {
    for (int64_t i = 0; i < d; ++i) out[i] = from_f32<Out>(decode<Fp8>(codes[i], s));
}

// Calls fn(std::true_type{}) for FP8_PER_TOKEN_HEAD, fn(std::false_type{}) for INT8 (host-side
// dispatch of both backends).
template <typename F> void dispatch_fp8(pkv_cache_format f, F &&fn) {
    if (f == PKV_CACHE_FORMAT_FP8_PER_TOKEN_HEAD) fn(std::true_type{});
    else fn(std::false_type{});
}

}  // namespace th
}  // namespace pkv
