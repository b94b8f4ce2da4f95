#include "core/cache_geometry.h"

#include <initializer_list>

namespace pkv {

struct SideFields {
    void *data;
    int64_t head_size, sb, ss, sh, chunk, stride_chunk;
    const float *scale;
    float *plane;
    int64_t psb, pss, psh;
    const float *signs;
};

static void resolve_side(CacheSide &s, const SideFields &f, const pkv_cache_view &v) {
    const int64_t row = format_row_bytes(v.format, f.head_size);
    s.data = static_cast<char *>(f.data);
    s.head_size = f.head_size;
    s.stride_head = f.sh ? f.sh : row;
    s.stride_slot = f.ss ? f.ss : v.num_heads * row;
    s.stride_block = f.sb ? f.sb : v.block_size * v.num_heads * row;
    s.scale = f.scale;
    s.chunk_size = f.chunk > 0 ? f.chunk : f.head_size;
    s.stride_chunk = f.chunk > 0 ? f.stride_chunk : row;
    s.scale_plane = reinterpret_cast<char *>(f.plane);
    s.scale_stride_head = f.psh ? f.psh : 4;
    s.scale_stride_slot = f.pss ? f.pss : v.num_heads * 4;
    s.scale_stride_block = f.psb ? f.psb : v.block_size * v.num_heads * 4;
    s.rotation_signs = f.signs;
}

CacheGeometry resolve_cache_view(const pkv_cache_view &v) {
    CacheGeometry g;
    g.format = v.format;
    g.elem = elem_from_cache_format(v.format);
    g.num_blocks = v.num_blocks;
    g.block_size = v.block_size;
    g.num_heads = v.num_heads;
    g.per_head_scale = v.scale_mode == PKV_SCALE_PER_HEAD;
    g.has_v = v.v_data != nullptr;
    g.rotated_domain = (v.flags & PKV_CACHE_VIEW_ROTATED_DOMAIN) != 0;
    g.rope_f16 = (v.flags & PKV_CACHE_VIEW_ROPE_F16) != 0;
    const int64_t dv = v.head_size_v ? v.head_size_v : v.head_size_k;
    resolve_side(g.k, {v.k_data, v.head_size_k, v.k_stride_block, v.k_stride_slot, v.k_stride_head, v.k_chunk_size,
                       v.k_stride_chunk, v.k_scale, v.k_scale_plane, v.k_scale_stride_block, v.k_scale_stride_slot,
                       v.k_scale_stride_head, v.k_rotation_signs}, v);
    resolve_side(g.v, {v.v_data, dv, v.v_stride_block, v.v_stride_slot, v.v_stride_head, v.v_chunk_size,
                       v.v_stride_chunk, v.v_scale, v.v_scale_plane, v.v_scale_stride_block, v.v_scale_stride_slot,
                       v.v_scale_stride_head, v.v_rotation_signs}, v);
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
