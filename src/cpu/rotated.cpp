// CPU INT4 / INT2 (Hadamard-rotated per-token-head) write and gather: tokens / output rows in
// parallel (OpenMP), one head row at a time. The math is core/hadamard.h, shared with CUDA.
#include <cstring>

#include "core/hadamard.h"
#include "core/ops.h"
#include "cpu/row_loops.h"

namespace pkv {
namespace {

using rot::Int2Quant;
using rot::Int4Quant;

void store_scale(const CacheSide &c, int64_t block, int64_t offset, int64_t head, uint32_t bits) {
    std::memcpy(c.scale_at(block, offset, head), &bits, 4);
}

template <Elem In>
void write_row_int4(const char *src, const CacheSide &dst, int64_t block, int64_t offset, int64_t head) {
    const int d = int(dst.head_size);
    float v[kMaxRotatedHeadSize];
    const auto *s = reinterpret_cast<const storage_t<In> *>(src);
    for (int i = 0; i < d; ++i) {
        const float x = to_f32<In>(s[i]);
        v[i] = rot::sign_negates(dst.rotation_signs, i) ? rot::neg(x) : x;
    }
    rot::hadamard(v, d);
    bool nonfinite = false;
    float mn = 0.0f, mx = 0.0f;
    for (int i = 0; i < d; ++i) {
        v[i] = rot::round_to_input<In>(v[i]);
        nonfinite |= !rot::is_finite(v[i]);
        mn = i == 0 ? v[i] : rot::min_f(mn, v[i]);
        mx = i == 0 ? v[i] : rot::max_f(mx, v[i]);
    }
    const Int4Quant p = rot::int4_quant(mn, mx, nonfinite);
    auto *o = reinterpret_cast<uint8_t *>(dst.data + dst.offset(block, offset, head));
    for (int j = 0; j < d / 2; ++j)
        o[j] = uint8_t(rot::int4_code(v[2 * j], p) | (rot::int4_code(v[2 * j + 1], p) << 4));
    store_scale(dst, block, offset, head, rot::int4_scale_bits(p));
}

template <Elem In>
void write_row_int2(const char *src, const CacheSide &dst, int64_t block, int64_t offset, int64_t head) {
    const int d = int(dst.head_size);
    float v[kMaxRotatedHeadSize];
    const auto *s = reinterpret_cast<const storage_t<In> *>(src);
    for (int i = 0; i < d; ++i) v[i] = to_f32<In>(s[i]);
    rot::hadamard(v, d);
    bool nonfinite = false;
    for (int i = 0; i < d; ++i) nonfinite |= !rot::is_finite(v[i]);
    const Int2Quant p = rot::int2_quant(rot::int2_sum_squares(v, d), d, nonfinite);
    auto *o = reinterpret_cast<uint8_t *>(dst.data + dst.offset(block, offset, head));
    for (int j = 0; j < d / 4; ++j) {
        uint32_t b = 0;
        for (int i = 0; i < 4; ++i) b |= rot::int2_code(v[4 * j + i], p) << (2 * i);
        o[j] = uint8_t(b);
    }
    store_scale(dst, block, offset, head, rot::int2_scale_bits(p));
}

template <Elem In, bool Int4> void write_all(const WriteArgs &a) {
    for_each_slot(a.slots, a.num_tokens, a.cache, a.out_of_range, [&](int64_t t, int64_t block, int64_t offset) {
        for (int side = 0; side < (a.cache.has_v ? 2 : 1); ++side) {
            const RowsSide &src = side ? a.value : a.key;
            const CacheSide &dst = side ? a.cache.v : a.cache.k;
            for (int64_t h = 0; h < a.cache.num_heads; ++h) {
                if constexpr (Int4) write_row_int4<In>(src.data + src.offset(t, h), dst, block, offset, h);
                else write_row_int2<In>(src.data + src.offset(t, h), dst, block, offset, h);
            }
        }
    });
}

template <Elem Out, bool Int4>
void gather_row(const CacheSide &src, int64_t block, int64_t offset, int64_t head, char *out, bool rotated_domain) {
    const int d = int(src.head_size);
    float v[kMaxRotatedHeadSize];
    const auto *codes = reinterpret_cast<const uint8_t *>(src.data + src.offset(block, offset, head));
    uint32_t bits;
    std::memcpy(&bits, src.scale_at(block, offset, head), 4);
    if constexpr (Int4) {
        const rot::Int4Dequant p = rot::int4_dequant_params(bits);
        for (int i = 0; i < d; ++i) {
            const uint32_t q = (codes[i / 2] >> (4 * (i % 2))) & 0xfu;
            v[i] = rotated_domain ? rot::int4_dequant(q, p) : float(int(q) - p.z);
        }
        if (!rotated_domain) {
            rot::hadamard(v, d);  // exact: integers of magnitude <= 15 d
            const float sigma = rot::int4_inverse_factor(p, d);
            for (int i = 0; i < d; ++i) {
                const float x = mul_rn(sigma, v[i]);
                v[i] = rot::sign_negates(src.rotation_signs, i) ? rot::neg(x) : x;
            }
        }
    } else {
        const float scale = fmt::f32_from_bits(bits);
        const float factor = rotated_domain ? rot::int2_dequant_factor(scale, d) : scale;
        for (int i = 0; i < d; ++i) v[i] = rot::int2_dequant((codes[i / 4] >> (2 * (i % 4))) & 3u, factor);
        if (!rotated_domain) rot::hadamard(v, d);
    }
    auto *o = reinterpret_cast<storage_t<Out> *>(out);
    for (int i = 0; i < d; ++i) o[i] = rot::to_output<Out>(v[i]);
}

template <Elem Out, bool Int4> void gather_all(const GatherArgs &a) {
    for_each_gather_row(a, [&](int64_t row, int64_t block, int64_t offset) {
        for (int side = 0; side < (a.value.data ? 2 : 1); ++side) {
            const CacheSide &src = side ? a.cache.v : a.cache.k;
            const RowsSide &dst = side ? a.value : a.key;
            for (int64_t h = 0; h < a.cache.num_heads; ++h)
                gather_row<Out, Int4>(src, block, offset, h, dst.data + dst.offset(row, h), a.cache.rotated_domain);
        }
    });
}

}  // namespace

void cpu_write_rotated(const WriteArgs &a) {
    const bool int4 = a.cache.format == PKV_CACHE_FORMAT_INT4_PER_TOKEN_HEAD;
    dispatch_elem(a.in, [&](auto in) {
        constexpr Elem In = decltype(in)::value;
        if constexpr (!elem_is_fp8(In)) {
            if (int4) write_all<In, true>(a);
            else write_all<In, false>(a);
        }
    });
}

void cpu_gather_rotated(const GatherArgs &a) {
    const bool int4 = a.cache.format == PKV_CACHE_FORMAT_INT4_PER_TOKEN_HEAD;
    dispatch_elem(a.out, [&](auto out) {
        constexpr Elem Out = decltype(out)::value;
        if constexpr (!elem_is_fp8(Out)) {
            if (int4) gather_all<Out, true>(a);
            else gather_all<Out, false>(a);
        }
    });
}

}  // namespace pkv
