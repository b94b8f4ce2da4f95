// The Hadamard-rotated per-token-head formats (PKV_CACHE_FORMAT_INT4_PER_TOKEN_HEAD and
// PKV_CACHE_FORMAT_INT2_PER_TOKEN_HEAD): the one definition of every float operation they make,
// shared by the CPU (src/cpu/rotated.cpp) and CUDA (src/cuda/rotated.cu) backends, which agree
// bit for bit. Every product or quotient below is a single IEEE float32 operation rounded to
// nearest even (the helpers mul_rn / add_rn / ... keep nvcc and gcc from contracting a product
// and a sum into an FMA); division and square root are correctly rounded (nvcc's defaults
// without fast math, and the C++ operators on the host).
//
// ---- Hadamard transform (unnormalized Sylvester order, H*H = D*I, D a power of two)
//   for h = 1, 2, 4, ..., D/2 (in this order):
//     for every i with (i & h) == 0:  a = v[i]; b = v[i+h]; v[i] = a + b; v[i+h] = a - b
// The pairs of one stage are disjoint, so only the stage order matters. The CUDA kernels keep
// E = rotated_elems_per_lane(D) consecutive elements per lane: stages h < E run inside a lane,
// stages h >= E exchange with lane ^ (h / E); the lower lane computes mine + other, the upper
// other - mine (= other + (-mine)), the very operations above.
//
// ---- Signs (INT4 only). Element i of a side is negated when the sign bit of its sign value is
// set: signs[i] of the view's rotation_signs, or default_rotation_sign(i) (core/rotation.h).
// For the documented +-1.0f values that is exactly the product signs[i] * x.
//
// ---- INT4 write, per (token, head) row of one side, D = that side's head size:
//   y_i  = sign_i ⊙ float(x_i)
//   x'   = H y                                     (butterfly above, float32)
//   x'_i = to_f32(from_f32<In>(x'_i))              (rounded to the input dtype; f32 unchanged)
//   mn = min x'_i, mx = max x'_i                   (exact, any order)
//   s    = max((mx - mn) / 15, 1e-6f)              (sub, div; max(d, m) = d > m ? d : m)
//   z    = rha_clamp(-mn / s, 15)                   (div)
//   inv  = 1 / s                                   (div)
//   q_i  = clamp(floor(fma(x'_i, inv, z + 0.5)), 0, 15)   (one fused multiply-add, z + 0.5 exact;
//          NaN -> 0): x'_i / s + z rounded half up, i.e. half away from zero for every code)
//   rha_clamp(t, hi): r = t >= 0 ? t + 0.5f : t - 0.5f (rounded add), clamped to [0, hi]
//                    (NaN -> 0), then truncated toward zero: round half away from zero.
//   bytes: byte j of the row = q_{2j} | q_{2j+1} << 4;  scale bits = (bits(s) & ~0xF) | z.
// ---- INT4 read: z = bits & 0xF, s~ = float(bits & ~0xF), x^'_i = s~ * float(q_i - z) (mul, exact:
//   s~ has at most 20 significant bits). Original domain, rounded once: w = H (q - z) exactly
//   (integers, |w_i| <= 15 D), sigma = s~ * (1/D) (mul), x^_i = sign_i ⊙ (sigma * float(w_i))
//   (mul), to the output dtype; mathematically signs ⊙ (H x^') / D.
//
// ---- INT2 write (no signs, no rounding to the input dtype):
//   x' = H float(x)
//   S  = the sum of x'_i * x'_i in this order: chunks of K = min(D, 16) consecutive elements
//        (C = D / K chunks); chunk c sums p_c = 0; p_c = fma(x'_i, x'_i, p_c) for
//        i = cK, cK+1, ... in increasing order; then for k = C/2, C/4, ..., 1 (in this order)
//        p_c = p_c + p_{c^k} for every c at once (every p_c ends equal); S = p_0.
//        (CUDA: a lane holds E = 16 or 32 elements = one or two chunks; the cross-lane offsets
//        are the xor shuffles, the in-lane offset 1 of E = 32 comes last.)
//   n  = sqrt(S + 1e-12f)                           (add, sqrt)
//   r  = sqrt(float(D)),  f = r / n                 (sqrt, div)
//   code_i: big_i = (|x'_i| * f >= T) for the exact product and T = 0.9816f, i.e. the sign of
//        e_i = fma(|x'_i|, f, -T) (a rounded result keeps the sign of the exact one, an exact
//        zero is +0); sign bit of x'_i clear: 3 if big_i else 2; set: 0 if big_i else 1 (-0
//        codes as 1, +0 as 2).
//   bytes: element 4j+i in bits [2i, 2i+2) of byte j;  scale = n / (float(D) * r)  (mul (exact), div)
// ---- INT2 read: x^'_i = c[code_i] * (scale * float(D))  (mul (exact), mul), c = {-1.5104f,
//   -0.4528f, 0.4528f, 1.5104f}. Original domain: x^ = H y with y_i = c[code_i] * scale (mul,
//   then the butterflies); mathematically (H x^') / D.
//
// ---- Rows that cannot be quantized: when any x'_i (INT4: after rounding to the input dtype)
// is NaN or infinite, or s (INT4) / n (INT2) is not finite, the row's codes are all 0 and its
// scale is the quiet NaN 0x7FC00000. A NaN or Inf input element always does that (every x'_i
// is a +-1 sum of all inputs); so do finite rows whose rotation overflows. No float is ever
// converted to an integer outside [0, 15].
//
// ---- Gather outputs: f32 NaNs are written as the canonical 0x7FFFFFFF (bf16 / f16 NaNs are
// canonical through from_f32), so both backends give the same bytes for any cache contents.
#pragma once

#include <cstdint>

#include "core/element_convert.h"
#include "core/exact_float.h"
#include "core/numeric_formats.h"
#include "core/rotation.h"

namespace pkv {
namespace rot {

PKV_HD bool is_finite(float x) { return (fmt::f32_bits(x) & 0x7f800000u) != 0x7f800000u; }
PKV_HD float neg(float x) { return fmt::f32_from_bits(fmt::f32_bits(x) ^ 0x80000000u); }
PKV_HD float min_f(float a, float b) { return b < a ? b : a; }
PKV_HD float max_f(float a, float b) { return b > a ? b : a; }


// ---------------------------------------------------------------- Hadamard
// One butterfly: (a, b) -> (a + b, a - b).
PKV_HD void butterfly(float &lo, float &hi) {
    const float a = lo, b = hi;
    lo = add_rn(a, b);
    hi = sub_rn(a, b);
}

// The unnormalized Sylvester-order transform of v[0, n) (n a power of two), stages h = 1..n/2.
PKV_HD void hadamard(float *v, int n) {
    for (int h = 1; h < n; h <<= 1)
        for (int i = 0; i < n; ++i)
            if ((i & h) == 0) butterfly(v[i], v[i + h]);
}

// Whether element i's sign value negates it.
PKV_HD bool sign_negates(const float *signs, int64_t i) {
    return signs ? (fmt::f32_bits(signs[i]) >> 31) != 0 : default_rotation_sign(i) < 0.0f;
}

// Round half away from zero of t, clamped to [0, hi] (NaN -> 0): t +- 0.5 (one rounded add),
// clamp, truncate.
PKV_HD int rha_clamp(float t, float hi) {
    float r = t >= 0.0f ? add_rn(t, 0.5f) : sub_rn(t, 0.5f);
    if (!(r >= 0.0f)) r = 0.0f;
    if (r > hi) r = hi;
    return int(r);
}

// ---------------------------------------------------------------- INT4
struct Int4Quant {
    float s = 1e-6f, inv = 1e6f, zh = 0.5f;  // zh = z + 0.5
    int z = 0;
    bool bad = false;  // the row cannot be quantized: NaN scale, codes 0
};

// From the row's min and max (of the values rounded to the input dtype) and whether any of them
// is not finite.
PKV_HD Int4Quant int4_quant(float mn, float mx, bool nonfinite) {
    Int4Quant p;
    const float d = div_rn(sub_rn(mx, mn), 15.0f);
    p.s = d > 1e-6f ? d : 1e-6f;
    p.bad = nonfinite || !is_finite(p.s);
    if (p.bad) return p;
    p.z = rha_clamp(div_rn(neg(mn), p.s), 15.0f);
    p.zh = float(p.z) + 0.5f;
    p.inv = div_rn(1.0f, p.s);
    return p;
}

PKV_HD uint32_t int4_code(float x, const Int4Quant &p) {
    if (p.bad) return 0u;
    float t = fma_rn(x, p.inv, p.zh);
    if (!(t >= 0.0f)) t = 0.0f;
    if (t > 15.0f) t = 15.0f;
    return uint32_t(t);
}

PKV_HD uint32_t int4_scale_bits(const Int4Quant &p) {
    return p.bad ? kNanScaleBits : ((fmt::f32_bits(p.s) & ~0xfu) | uint32_t(p.z));
}

struct Int4Dequant {
    float s = 0.0f;
    int z = 0;
};
PKV_HD Int4Dequant int4_dequant_params(uint32_t bits) {
    Int4Dequant d;
    d.z = int(bits & 0xfu);
    d.s = fmt::f32_from_bits(bits & ~0xfu);
    return d;
}
PKV_HD float int4_dequant(uint32_t q, const Int4Dequant &d) { return mul_rn(d.s, float(int(q) - d.z)); }
// The original-domain factor sigma = s~ * (1/D) (D a power of two).
PKV_HD float int4_inverse_factor(const Int4Dequant &d, int dim) { return mul_rn(d.s, 1.0f / float(dim)); }

// ---------------------------------------------------------------- INT2
constexpr float kInt2Threshold = 0.9816f;

PKV_HD float int2_centroid(uint32_t code) {
    switch (code & 3u) {
        case 0: return -1.5104f;
        case 1: return -0.4528f;
        case 2: return 0.4528f;
        default: return 1.5104f;
    }
}

// Elements of one chunk of the INT2 sum of squares.
constexpr int int2_chunk(int d) { return d < 16 ? d : 16; }

// The sum of squares in the defined order (the CPU's emulation of the CUDA reduction).
PKV_HD float int2_sum_squares(const float *x, int d) {
    const int k = int2_chunk(d), c = d / k;
    float p[kMaxRotatedHeadSize / 16];
    for (int j = 0; j < c; ++j) {
        float s = 0.0f;
        for (int i = 0; i < k; ++i) s = fma_rn(x[j * k + i], x[j * k + i], s);
        p[j] = s;
    }
    for (int off = c / 2; off >= 1; off >>= 1) {
        float q[kMaxRotatedHeadSize / 16];
        for (int j = 0; j < c; ++j) q[j] = add_rn(p[j], p[j ^ off]);
        for (int j = 0; j < c; ++j) p[j] = q[j];
    }
    return p[0];
}

struct Int2Quant {
    float f = 0.0f;      // sqrt(D) / n
    float scale = 0.0f;  // n / (D * sqrt(D))
    bool bad = false;
};

PKV_HD Int2Quant int2_quant(float sum_squares, int d, bool nonfinite) {
    Int2Quant p;
    const float n = sqrt_rn(add_rn(sum_squares, 1e-12f));
    p.bad = nonfinite || !is_finite(n);
    if (p.bad) return p;
    const float r = sqrt_rn(float(d));
    p.f = div_rn(r, n);
    p.scale = div_rn(n, mul_rn(float(d), r));
    return p;
}

PKV_HD uint32_t int2_code(float x, const Int2Quant &p) {
    if (p.bad) return 0u;
    const uint32_t bits = fmt::f32_bits(x);
    const float e = fma_rn(fmt::f32_from_bits(bits & 0x7fffffffu), p.f, -kInt2Threshold);  // |x| f - T
    const bool big = (fmt::f32_bits(e) >> 31) == 0;
    return (bits >> 31) ? (big ? 0u : 1u) : (big ? 3u : 2u);
}

PKV_HD uint32_t int2_scale_bits(const Int2Quant &p) { return p.bad ? kNanScaleBits : fmt::f32_bits(p.scale); }

// scale * D: the factor of the centroids in the rotated domain (scale itself in the original one).
PKV_HD float int2_dequant_factor(float scale, int d) { return mul_rn(scale, float(d)); }
PKV_HD float int2_dequant(uint32_t code, float factor) { return mul_rn(int2_centroid(code), factor); }

// ---------------------------------------------------------------- outputs
// A float32 result as an output element; f32 NaNs become the canonical 0x7FFFFFFF.
template <Elem Out> PKV_HD storage_t<Out> to_output(float x) {
    if constexpr (Out == Elem::F32) return fmt::canonical_nan(x);
    else return from_f32<Out>(x);
}

// A float32 rounded to the input dtype (INT4 write); f32 unchanged.
template <Elem In> PKV_HD float round_to_input(float x) {
    if constexpr (In == Elem::F32) return x;
    else return to_f32<In>(from_f32<In>(x));
}

}  // namespace rot
}  // namespace pkv
