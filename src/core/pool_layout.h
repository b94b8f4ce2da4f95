// Byte layout of a pool block: every layer's K and V regions for block_size tokens, each region
// 256-byte aligned, the block padded to 256 bytes. Block b of a tier starts at base + b *
// bytes_per_block, so a block of all layers is one contiguous run.
#pragma once

#include <cstdint>
#include <vector>

#include "pagedkv.h"

namespace pkv {

struct LayerLayout {
    pkv_layer_spec spec;  // head_size_v resolved (never 0)
    int elem_bytes = 0;
    int64_t k_offset = 0, v_offset = -1;        // bytes inside a block; v_offset -1: K only
    int64_t region_bytes_k = 0, region_bytes_v = 0;
    int64_t k_stride_slot = 0, k_stride_head = 0;  // bytes
    int64_t v_stride_slot = 0, v_stride_head = 0;
    int64_t scale_count = 0;                    // floats per K (and per V) scale array; 0 = no FP8
    int64_t k_scale_index = 0, v_scale_index = 0;  // offsets into the pool's scale array
};

struct PoolLayout {
    int64_t block_size = 0;
    int64_t bytes_per_block = 0;
    int64_t total_scales = 0;  // floats in the pool's scale array
    std::vector<LayerLayout> layers;
};

constexpr int64_t kPoolAlignment = 256;

// Assumes validated specs (src/api/ checks them first).
PoolLayout make_pool_layout(int64_t block_size, const pkv_layer_spec *specs, int64_t num_layers);

// Layer view of a tier whose block 0 starts at `base`; scales from `scales` (may be NULL).
pkv_cache_view layer_view(const PoolLayout &layout, int64_t layer, pkv_device device, char *base,
                          int64_t num_blocks, const float *scales);

}  // namespace pkv
