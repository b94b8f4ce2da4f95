#include "core/pool_layout.h"

#include "core/element.h"

namespace pkv {

static int64_t align_up(int64_t x, int64_t a) { return (x + a - 1) / a * a; }

PoolLayout make_pool_layout(int64_t block_size, const pkv_layer_spec *specs, int64_t num_layers) {
    PoolLayout p;
    p.block_size = block_size;
    int64_t offset = 0;
    for (int64_t i = 0; i < num_layers; ++i) {
        LayerLayout l;
        l.spec = specs[i];
        if (l.spec.head_size_v == 0) l.spec.head_size_v = l.spec.head_size_k;
        const int64_t e = l.elem_bytes = elem_bytes(elem_from_cache_format(l.spec.format));
        const int64_t h = l.spec.num_heads, dk = l.spec.head_size_k, dv = l.spec.head_size_v;
        const bool hnd = l.spec.layout == PKV_HEAD_LAYOUT_HND;
        l.k_stride_head = hnd ? block_size * dk * e : dk * e;
        l.k_stride_slot = hnd ? dk * e : h * dk * e;
        l.region_bytes_k = block_size * h * dk * e;
        l.k_offset = offset;
        offset = align_up(offset + l.region_bytes_k, kPoolAlignment);
        if (!(l.spec.flags & PKV_LAYER_K_ONLY)) {
            l.v_stride_head = hnd ? block_size * dv * e : dv * e;
            l.v_stride_slot = hnd ? dv * e : h * dv * e;
            l.region_bytes_v = block_size * h * dv * e;
            l.v_offset = offset;
            offset = align_up(offset + l.region_bytes_v, kPoolAlignment);
        }
        if (elem_is_fp8(elem_from_cache_format(l.spec.format))) {
            l.scale_count = l.spec.scale_mode == PKV_SCALE_PER_HEAD ? h : 1;
            l.k_scale_index = p.total_scales;
            l.v_scale_index = p.total_scales + l.scale_count;
            p.total_scales += 2 * l.scale_count;
        }
        p.layers.push_back(l);
    }
    p.bytes_per_block = align_up(offset, kPoolAlignment);
    return p;
}

pkv_cache_view layer_view(const PoolLayout &layout, int64_t layer, pkv_device device, char *base,
                          int64_t num_blocks, const float *scales) {
    const LayerLayout &l = layout.layers[size_t(layer)];
    pkv_cache_view v = PKV_CACHE_VIEW_INIT;
    v.format = l.spec.format;
    v.device = device;
    v.num_blocks = num_blocks;
    v.block_size = layout.block_size;
    v.num_heads = l.spec.num_heads;
    v.head_size_k = l.spec.head_size_k;
    v.head_size_v = l.spec.head_size_v;
    v.k_data = base + l.k_offset;
    v.k_stride_block = layout.bytes_per_block;
    v.k_stride_slot = l.k_stride_slot;
    v.k_stride_head = l.k_stride_head;
    if (l.v_offset >= 0) {
        v.v_data = base + l.v_offset;
        v.v_stride_block = layout.bytes_per_block;
        v.v_stride_slot = l.v_stride_slot;
        v.v_stride_head = l.v_stride_head;
    }
    v.scale_mode = l.spec.scale_mode;
    if (l.scale_count && scales) {
        v.k_scale = scales + l.k_scale_index;
        v.v_scale = scales + l.v_scale_index;
    }
    return v;
}

}  // namespace pkv
