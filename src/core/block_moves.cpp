// Access widths of the block moves, from the addresses and sizes of one call (host-side).
#include "core/block_moves.h"

#include "core/cache_geometry.h"  // common_alignment

namespace pkv {

namespace {
uint64_t addr(const void *p) { return reinterpret_cast<uintptr_t>(p); }
}  // namespace

int flat_vector_bytes(const FlatBlockCopy &c) {
    return int(common_alignment({addr(c.src.base), addr(c.dst.base), uint64_t(c.bytes_per_block)}));
}

int cache_copy_vector_bytes(const CacheBlockCopy &c) {
    uint64_t a = 16;
    for (int64_t i = 0; i < c.num_caches; ++i) {
        const CacheBlocks &b = c.caches[i];
        a = common_alignment({a, addr(b.base), uint64_t(b.block_stride), uint64_t(b.bytes_per_block)});
    }
    return int(a);
}

int transfer_vector_bytes(const BlockTransfer &t) {
    if (t.order == PKV_BLOCK_ORDER_BLOCK_MAJOR)
        return int(common_alignment({addr(t.pool_base), addr(t.buffer), uint64_t(t.layout->bytes_per_block)}));
    // LAYER_MAJOR: every region start and size, so that no access straddles K and V and every
    // layer's section of the buffer (count * sum of earlier layers' bytes) stays aligned.
    uint64_t a = common_alignment({addr(t.pool_base), addr(t.buffer), uint64_t(t.layout->bytes_per_block)});
    for (const LayerLayout &l : t.layout->layers) {
        const uint64_t v_offset = l.region_bytes_v ? uint64_t(l.v_offset) : 0;
        a = common_alignment({a, uint64_t(l.k_offset), uint64_t(l.region_bytes_k), v_offset,
                              uint64_t(l.region_bytes_v)});
    }
    return int(a);
}

}  // namespace pkv
