// CPU block moves: memcpy per block (OpenMP over blocks), per run for swaps.
#include <cstring>

#include "core/block_moves.h"

namespace pkv {

void cpu_copy_blocks(const FlatBlockCopy &c) {
#pragma omp parallel for schedule(static) if (c.count > 4)
    for (int64_t i = 0; i < c.count; ++i) {
        int64_t src, dst;
        if (!flat_pair_offsets(c, i, src, dst)) continue;
        std::memcpy(c.dst.base + dst, c.src.base + src, size_t(c.bytes_per_block));
    }
}

void cpu_copy_cache_blocks(const CacheBlockCopy &c) {
    for (int64_t k = 0; k < c.num_caches; ++k) {
        const CacheBlocks &b = c.caches[k];
#pragma omp parallel for schedule(static) if (c.count > 4)
        for (int64_t i = 0; i < c.count; ++i) {
            int64_t src, dst;
            if (!cache_pair_offsets(b, c.src[i], c.dst[i], src, dst)) continue;
            std::memcpy(b.base + dst, b.base + src, size_t(b.bytes_per_block));
        }
    }
}

void cpu_transfer_blocks(const BlockTransfer &t) {
    if (t.order == PKV_BLOCK_ORDER_BLOCK_MAJOR) {
        cpu_copy_blocks(block_major_copy(t));
        return;
    }
    const int64_t bpb = t.layout->bytes_per_block;
    int64_t section = 0;  // start of the layer's [count][layer bytes] section in the buffer
    for (const LayerLayout &l : t.layout->layers) {
        const int64_t lb = layer_bytes(l);
#pragma omp parallel for schedule(static) if (t.count > 4)
        for (int64_t i = 0; i < t.count; ++i) {
            const int64_t id = t.ids[i];
            if (id < 0 || id >= t.num_blocks) continue;
            char *block = t.pool_base + id * bpb;
            char *slot = t.buffer + section + i * lb;
            if (t.to_buffer) {
                std::memcpy(slot, block + l.k_offset, size_t(l.region_bytes_k));
                if (l.region_bytes_v) std::memcpy(slot + l.region_bytes_k, block + l.v_offset, size_t(l.region_bytes_v));
            } else {
                std::memcpy(block + l.k_offset, slot, size_t(l.region_bytes_k));
                if (l.region_bytes_v) std::memcpy(block + l.v_offset, slot + l.region_bytes_k, size_t(l.region_bytes_v));
            }
        }
        section += t.count * lb;
    }
}

void cpu_swap_blocks(const SwapArgs &a) {
    for_each_block_run(a, [&](int64_t src, int64_t dst, int64_t blocks) {
        std::memcpy(a.dst_base + dst * a.bytes_per_block, a.src_base + src * a.bytes_per_block,
                    size_t(blocks * a.bytes_per_block));
    });
}

}  // namespace pkv
