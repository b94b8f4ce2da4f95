#include "core/cache_geometry.h"

#include <initializer_list>

namespace pkv {

static void resolve_side(CacheSide &s, void *data, int64_t head_size, int64_t heads, int64_t block_size,
                         int e, int64_t sb, int64_t ss, int64_t sh, const float *scale) {
    s.data = static_cast<char *>(data);
    s.head_size = head_size;
    s.stride_head = sh ? sh : head_size * e;
    s.stride_slot = ss ? ss : heads * head_size * e;
    s.stride_block = sb ? sb : block_size * heads * head_size * e;
    s.scale = scale;
}

CacheGeometry resolve_cache_view(const pkv_cache_view &v) {
    CacheGeometry g;
    g.elem = elem_from_cache_format(v.format);
    g.num_blocks = v.num_blocks;
    g.block_size = v.block_size;
    g.num_heads = v.num_heads;
    g.per_head_scale = v.scale_mode == PKV_SCALE_PER_HEAD;
    g.has_v = v.v_data != nullptr;
    const int e = g.elem == Elem::Invalid ? 1 : elem_bytes(g.elem);
    const int64_t dv = v.head_size_v ? v.head_size_v : v.head_size_k;
    resolve_side(g.k, v.k_data, v.head_size_k, v.num_heads, v.block_size, e, v.k_stride_block,
                 v.k_stride_slot, v.k_stride_head, v.k_scale);
    resolve_side(g.v, v.v_data, dv, v.num_heads, v.block_size, e, v.v_stride_block, v.v_stride_slot,
                 v.v_stride_head, v.v_scale);
    return g;
}

RowsSide rows_from_tensor(const pkv_tensor &t, int elem_size) {
    RowsSide r;
    r.data = static_cast<char *>(t.data);
    r.stride_row = t.strides[0] * elem_size;
    r.stride_head = t.strides[1] * elem_size;
    return r;
}

uint64_t common_alignment(std::initializer_list<uint64_t> values) {
    uint64_t a = 16;
    for (uint64_t v : values)
        while (v % a) a >>= 1;
    return a;
}

int vector_elems(int src_elem_bytes, int dst_elem_bytes, int64_t head_size_k, int64_t head_size_v,
                 uint64_t src_alignment, uint64_t dst_alignment) {
    for (int n = 16; n > 1; n >>= 1) {
        if (!vector_fits(n, src_elem_bytes, dst_elem_bytes)) continue;
        if (head_size_k % n || head_size_v % n) continue;
        const uint64_t sb = uint64_t(n) * src_elem_bytes, db = uint64_t(n) * dst_elem_bytes;
        if (src_alignment % (sb < 16 ? sb : 16) || dst_alignment % (db < 16 ? db : 16)) continue;
        return n;
    }
    return 1;
}

}  // namespace pkv
