// CPU gather: output rows in parallel (OpenMP), one head row at a time.
#include <cstring>

#include "core/element_convert.h"
#include "core/ops.h"
#include "cpu/row_loops.h"

namespace pkv {
namespace {

template <Elem Cache, Elem Out>
void gather_side(const GatherArgs &a, const CacheSide &src, const RowsSide &dst, int64_t row, int64_t block,
                 int64_t offset) {
    for (int64_t h = 0; h < a.cache.num_heads; ++h) {
        const float scale = src.scale ? src.scale[a.cache.per_head_scale ? h : 0] : 1.0f;
        for (int64_t c = 0; c < src.head_size; c += src.chunk_size) {  // one run unless rows are split
            const char *s = src.data + src.offset(block, offset, h) + src.element_offset(c, sizeof(storage_t<Cache>));
            char *o = dst.data + dst.offset(row, h) + c * int64_t(sizeof(storage_t<Out>));
            if constexpr (Cache == Out) {
                std::memcpy(o, s, size_t(src.chunk_size) * sizeof(storage_t<Out>));
            } else {
                const auto *si = reinterpret_cast<const storage_t<Cache> *>(s);
                auto *oi = reinterpret_cast<storage_t<Out> *>(o);
                for (int64_t i = 0; i < src.chunk_size; ++i) oi[i] = decode_from_cache<Cache, Out>(si[i], scale);
            }
        }
    }
}

template <Elem Cache, Elem Out> void gather_all(const GatherArgs &a) {
    for_each_gather_row(a, [&](int64_t row, int64_t block, int64_t offset) {
        gather_side<Cache, Out>(a, a.cache.k, a.key, row, block, offset);
        if (a.value.data) gather_side<Cache, Out>(a, a.cache.v, a.value, row, block, offset);
    });
}

}  // namespace

void cpu_gather_kv(const GatherArgs &a) {
    dispatch_elem(a.cache.elem, [&](auto cache) {
        dispatch_elem(a.out, [&](auto out) {
            if constexpr (!elem_is_fp8(decltype(out)::value)) gather_all<decltype(cache)::value, decltype(out)::value>(a);
        });
    });
}

}  // namespace pkv
