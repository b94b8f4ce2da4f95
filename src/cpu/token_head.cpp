// CPU per-token-head INT8 / FP8: tokens (write) or output rows (gather) in parallel (OpenMP),
// one head row at a time, with the shared row math of core/token_head_quant.h.
#include "core/element_convert.h"
#include "core/ops.h"
#include "core/token_head_quant.h"
#include "cpu/row_loops.h"

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
    for_each_slot(a.slots, a.num_tokens, a.cache, a.out_of_range, [&](int64_t t, int64_t block, int64_t offset) {
        write_side<In, Fp8>(a, a.key, a.cache.k, t, block, offset);
        if (a.cache.has_v) write_side<In, Fp8>(a, a.value, a.cache.v, t, block, offset);
    });
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
    for_each_gather_row(a, [&](int64_t row, int64_t block, int64_t offset) {
        gather_side<Out, Fp8>(a, a.cache.k, a.key, row, block, offset);
        if (a.value.data) gather_side<Out, Fp8>(a, a.cache.v, a.value, row, block, offset);
    });
}

}  // namespace

void cpu_write_token_head(const WriteArgs &a) {
    dispatch_elem(a.in, [&](auto in) {
        th::dispatch_fp8(a.cache.format, [&](auto fp8) {
            constexpr Elem In = decltype(in)::value;
            if constexpr (!elem_is_fp8(In)) write_all<In, decltype(fp8)::value>(a);
        });
    });
}

void cpu_gather_token_head(const GatherArgs &a) {
    dispatch_elem(a.out, [&](auto out) {
        th::dispatch_fp8(a.cache.format, [&](auto fp8) {
            constexpr Elem Out = decltype(out)::value;
            if constexpr (!elem_is_fp8(Out)) gather_all<Out, decltype(fp8)::value>(a);
        });
    });
}

}  // namespace pkv
