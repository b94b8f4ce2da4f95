// Vector width of the write and gather kernels: the widest access that keeps every row of
// every head aligned on both sides (host-side, once per call, from pointers and strides).
#include <cstdint>

#include "core/ops.h"

namespace pkv {
namespace {

uint64_t addr(const void *p) { return reinterpret_cast<uintptr_t>(p); }

uint64_t cache_alignment(const CacheSide &k, const CacheSide &v) {
    return common_alignment({addr(k.data), uint64_t(k.stride_block), uint64_t(k.stride_slot),
                             uint64_t(k.stride_head), uint64_t(k.stride_chunk), addr(v.data),
                             uint64_t(v.stride_block), uint64_t(v.stride_slot), uint64_t(v.stride_head),
                             uint64_t(v.stride_chunk)});
}

uint64_t rows_alignment(const RowsSide &k, const RowsSide &v) {
    return common_alignment({addr(k.data), uint64_t(k.stride_row), uint64_t(k.stride_head), addr(v.data),
                             uint64_t(v.stride_row), uint64_t(v.stride_head)});
}

// Bytes of one stored element: the element-wise formats' element, the 1-byte codes of INT8 / FP8
// per token-head (the other formats are not moved by element vectors).
int cache_elem_bytes(const CacheGeometry &g) {
    return format_family(g.format) == FormatFamily::Elementwise ? elem_bytes(g.elem) : 1;
}

}  // namespace

int write_vector_elems(const WriteArgs &a) {
    const CacheSide &v = a.cache.has_v ? a.cache.v : a.cache.k;
    const RowsSide &vr = a.cache.has_v ? a.value : a.key;
    return vector_elems(elem_bytes(a.in), cache_elem_bytes(a.cache), a.cache.k.chunk_size, v.chunk_size,
                        rows_alignment(a.key, vr), cache_alignment(a.cache.k, v));
}

int gather_vector_elems(const GatherArgs &a) {
    const bool with_v = a.value.data != nullptr;
    const CacheSide &v = with_v ? a.cache.v : a.cache.k;
    const RowsSide &vr = with_v ? a.value : a.key;
    return vector_elems(cache_elem_bytes(a.cache), elem_bytes(a.out), a.cache.k.chunk_size, v.chunk_size,
                        cache_alignment(a.cache.k, v), rows_alignment(a.key, vr));
}

}  // namespace pkv
