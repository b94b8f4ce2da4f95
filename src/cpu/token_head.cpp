// CPU per-token-head INT8 / FP8: tokens (write) or output rows (gather) in parallel (OpenMP),
// one head row at a time, with the shared row math of core/token_head_quant.h.
#include "core/element_convert.h"
#include "core/ops.h"
#include "core/token_head_quant.h"

namespace pkv {
namespace {

template <Elem In, bool Fp8>
void write_side(const WriteArgs &a, const RowsSide &src, const CacheSide &dst, int64_t t, int64_t block,
                int64_t offset) {
    for (int64_t h = 0; h < a.cache.num_heads; ++h) {
        const auto *x = reinterpret_cast<const storage_t<In> *>(src.data + src.offset(t, h));
        auto *codes = reinterpret_cast<uint8_t *>(dst.data + dst.offset(block, offset, h));
        *dst.scale_at(block, offset, h) = th::quantize_row<In, Fp8>(x, dst.head_size, codes);
    }
}

template <Elem In, bool Fp8> void write_all(const WriteArgs &a) {
    const int64_t num_slots = a.cache.num_slots();
    int64_t out_of_range = 0;
#pragma omp parallel for schedule(static) reduction(+ : out_of_range) if (a.num_tokens > 64)
    for (int64_t t = 0; t < a.num_tokens; ++t) {
        const int64_t slot = a.slots[t];
        if (slot < 0) continue;  // padding: neither codes nor scale
        if (slot >= num_slots) {
            ++out_of_range;
            continue;
        }
        const int64_t block = slot / a.cache.block_size, offset = slot % a.cache.block_size;
        write_side<In, Fp8>(a, a.key, a.cache.k, t, block, offset);
        if (a.cache.has_v) write_side<In, Fp8>(a, a.value, a.cache.v, t, block, offset);
    }
    // Atomic: concurrent calls may share one counter (documented in pagedkv.h).
    if (a.out_of_range && out_of_range) __atomic_fetch_add(a.out_of_range, out_of_range, __ATOMIC_RELAXED);
}

template <Elem Out, bool Fp8>
void gather_side(const GatherArgs &a, const CacheSide &src, const RowsSide &dst, int64_t row, int64_t block,
                 int64_t offset) {
    for (int64_t h = 0; h < a.cache.num_heads; ++h) {
        const auto *codes = reinterpret_cast<const uint8_t *>(src.data + src.offset(block, offset, h));
        auto *out = reinterpret_cast<storage_t<Out> *>(dst.data + dst.offset(row, h));
        th::dequantize_row<Out, Fp8>(codes, src.head_size, *src.scale_at(block, offset, h), out);
    }
}

template <Elem Out, bool Fp8> void gather_all(const GatherArgs &a) {
    int64_t out_of_range = 0;
#pragma omp parallel for schedule(static) reduction(+ : out_of_range) if (a.num_rows > 64)
    for (int64_t row = 0; row < a.num_rows; ++row) {
        int64_t block, offset;
        if (!gather_row_source(a, row, block, offset)) continue;
        if (block < 0) {
            ++out_of_range;
            continue;
        }
        gather_side<Out, Fp8>(a, a.cache.k, a.key, row, block, offset);
        if (a.value.data) gather_side<Out, Fp8>(a, a.cache.v, a.value, row, block, offset);
    }
    if (a.out_of_range && out_of_range) __atomic_fetch_add(a.out_of_range, out_of_range, __ATOMIC_RELAXED);
}

template <typename F> void dispatch_fp8(pkv_cache_format f, F &&fn) {
    if (f == PKV_CACHE_FORMAT_FP8_PER_TOKEN_HEAD) fn(std::true_type{});
    else fn(std::false_type{});
}

}  // namespace

void cpu_write_token_head(const WriteArgs &a) {
    dispatch_elem(a.in, [&](auto in) {
        dispatch_fp8(a.cache.format, [&](auto fp8) {
            constexpr Elem In = decltype(in)::value;
            if constexpr (!elem_is_fp8(In)) write_all<In, decltype(fp8)::value>(a);
        });
    });
}

void cpu_gather_token_head(const GatherArgs &a) {
    dispatch_elem(a.out, [&](auto out) {
        dispatch_fp8(a.cache.format, [&](auto fp8) {
            constexpr Elem Out = decltype(out)::value;
            if constexpr (!elem_is_fp8(Out)) gather_all<Out, decltype(fp8)::value>(a);
        });
    });
}

}  // namespace pkv
