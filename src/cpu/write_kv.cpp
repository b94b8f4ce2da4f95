// CPU write: tokens in parallel (OpenMP), one head row at a time.
#include <cstring>

#include "core/element_convert.h"
#include "core/ops.h"
#include "cpu/row_loops.h"

namespace pkv {
namespace {

template <Elem In, Elem Cache>
void write_head_row(const char *src, char *dst, int64_t d, const float *scale_ptr) {
    if constexpr (In == Cache) {
        std::memcpy(dst, src, size_t(d) * sizeof(storage_t<In>));
    } else {
        const Fp8Divisor divisor = make_fp8_divisor(scale_ptr ? *scale_ptr : 1.0f);
        const auto *s = reinterpret_cast<const storage_t<In> *>(src);
        auto *o = reinterpret_cast<storage_t<Cache> *>(dst);
        for (int64_t i = 0; i < d; ++i) o[i] = encode_for_cache<In, Cache>(s[i], divisor);
    }
}

template <Elem In, Elem Cache>
void write_side(const WriteArgs &a, const RowsSide &src, const CacheSide &dst, int64_t t, int64_t block,
                int64_t offset) {
    for (int64_t h = 0; h < a.cache.num_heads; ++h) {
        const float *scale = dst.scale ? dst.scale + (a.cache.per_head_scale ? h : 0) : nullptr;
        const char *s = src.data + src.offset(t, h);
        char *d = dst.data + dst.offset(block, offset, h);
        for (int64_t c = 0; c < dst.head_size; c += dst.chunk_size)  // one run unless rows are split
            write_head_row<In, Cache>(s + c * int64_t(sizeof(storage_t<In>)),
                                      d + dst.element_offset(c, sizeof(storage_t<Cache>)), dst.chunk_size, scale);
    }
}

template <Elem In, Elem Cache> void write_all(const WriteArgs &a) {
    for_each_slot(a.slots, a.num_tokens, a.cache, a.out_of_range, [&](int64_t t, int64_t block, int64_t offset) {
        write_side<In, Cache>(a, a.key, a.cache.k, t, block, offset);
        if (a.cache.has_v) write_side<In, Cache>(a, a.value, a.cache.v, t, block, offset);
    });
}

}  // namespace

void cpu_write_kv(const WriteArgs &a) {
    dispatch_elem(a.in, [&](auto in) {
        dispatch_elem(a.cache.elem, [&](auto cache) {
            if constexpr (!elem_is_fp8(decltype(in)::value)) write_all<decltype(in)::value, decltype(cache)::value>(a);
        });
    });
}

}  // namespace pkv
