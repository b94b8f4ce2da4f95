// Block moves of a pool (copy_blocks, swap, gather / scatter to a transfer buffer): the
// resolved arguments src/api/ builds after validation, the address math the CPU and CUDA
// backends share, and the backend entry points. Backends trust these arguments completely.
//
// A pool block is one contiguous run of bytes_per_block bytes holding every layer (see
// pool_layout.h), so copy_blocks, swap and BLOCK_MAJOR transfers are flat copies of whole
// blocks; LAYER_MAJOR transfers move each layer's K and V regions (not the padding between them).
#pragma once

#include <cstdint>

#include "core/numeric_formats.h"  // PKV_HD
#include "core/pool_layout.h"
#include "pagedkv.h"

namespace pkv {

// Block ids, int32 or int64, with an element stride. data == nullptr is the identity (i -> i):
// the side of a contiguous transfer buffer, whose i-th block is simply the i-th slot.
struct BlockIds {
    const void *data = nullptr;
    bool is_int64 = false;
    int64_t stride = 1;  // elements

    PKV_HD int64_t operator[](int64_t i) const {
        if (!data) return i;
        return is_int64 ? static_cast<const int64_t *>(data)[i * stride]
                        : int64_t(static_cast<const int32_t *>(data)[i * stride]);
    }
};

// One side of a flat block copy: block k starts at base + k * bytes_per_block. Ids outside
// [0, num_blocks) are skipped (for an identity side num_blocks is the pair count).
struct BlockSide {
    char *base = nullptr;
    BlockIds ids;
    int64_t num_blocks = 0;
};

// copy_blocks of a pool and BLOCK_MAJOR gather / scatter: pair i copies bytes_per_block bytes from block
// src.ids[i] to block dst.ids[i].
struct FlatBlockCopy {
    BlockSide src, dst;
    int64_t count = 0;            // pairs, > 0
    int64_t bytes_per_block = 0;  // a multiple of vec
    int vec = 1;                  // bytes per access (flat_vector_bytes)
};

// Widest access (bytes, power of two <= 16) keeping every address of the copy aligned.
int flat_vector_bytes(const FlatBlockCopy &c);

// Byte offsets of pair i's blocks; false when the pair is skipped: an id outside its side, or
// a block copied onto itself (a no-op, and memcpy onto itself is undefined).
PKV_HD bool flat_pair_offsets(const FlatBlockCopy &c, int64_t i, int64_t &src_off, int64_t &dst_off) {
    const int64_t s = c.src.ids[i], d = c.dst.ids[i];
    if (s < 0 || s >= c.src.num_blocks || d < 0 || d >= c.dst.num_blocks) return false;
    src_off = s * c.bytes_per_block;
    dst_off = d * c.bytes_per_block;
    return !(c.src.base == c.dst.base && s == d);
}

// pkv_pool_copy_blocks: pairs [count, 2] (src, dst), contiguous, inside one tier at `base`.
inline FlatBlockCopy pair_copy(char *base, int64_t num_blocks, int64_t bytes_per_block, const void *pairs,
                               bool is_int64, int64_t count) {
    const char *ids = static_cast<const char *>(pairs);
    FlatBlockCopy c;
    c.src = BlockSide{base, BlockIds{ids, is_int64, 2}, num_blocks};
    c.dst = BlockSide{base, BlockIds{ids + (is_int64 ? 8 : 4), is_int64, 2}, num_blocks};
    c.count = count;
    c.bytes_per_block = bytes_per_block;
    c.vec = flat_vector_bytes(c);
    return c;
}

// pkv_copy_blocks: every cache applies the same (src, dst) pairs to its blocks. A cache is
// num_blocks blocks of bytes_per_block contiguous bytes, block_stride bytes apart.
struct CacheBlocks {
    char *base = nullptr;
    int64_t block_stride = 0;     // bytes
    int64_t num_blocks = 0;
    int64_t bytes_per_block = 0;  // a multiple of the copy's vec
};
struct CacheBlockCopy {
    const CacheBlocks *caches = nullptr;  // host array of num_caches
    int64_t num_caches = 0;
    BlockIds src, dst;  // pair i copies block src[i] to block dst[i] in every cache
    int64_t count = 0;  // pairs, > 0
    int vec = 1;        // bytes per access (cache_copy_vector_bytes)
};

// The pairs of a contiguous [count, 2] (src, dst) id tensor.
inline void set_pairs(CacheBlockCopy &c, const void *pairs, bool is_int64, int64_t count) {
    const char *ids = static_cast<const char *>(pairs);
    c.src = BlockIds{ids, is_int64, 2};
    c.dst = BlockIds{ids + (is_int64 ? 8 : 4), is_int64, 2};
    c.count = count;
}

// Widest access (bytes, power of two <= 16) keeping every address of every cache aligned.
int cache_copy_vector_bytes(const CacheBlockCopy &c);

// Byte offsets of a pair's blocks in one cache; false when the pair is skipped there: an id
// outside [0, num_blocks), or a block copied onto itself.
PKV_HD bool cache_pair_offsets(const CacheBlocks &c, int64_t s, int64_t d, int64_t &src_off, int64_t &dst_off) {
    if (s < 0 || s >= c.num_blocks || d < 0 || d >= c.num_blocks || s == d) return false;
    src_off = s * c.block_stride;
    dst_off = d * c.block_stride;
    return true;
}

// CUDA launches carry up to this many caches in their parameters; more take several launches.
constexpr int64_t kMaxCachesPerLaunch = 256;

// gather_blocks (to_buffer) / scatter_blocks between device-tier blocks and a contiguous buffer.
struct BlockTransfer {
    const PoolLayout *layout = nullptr;  // the pool's (host memory)
    char *pool_base = nullptr;
    int64_t num_blocks = 0;
    BlockIds ids;
    int64_t count = 0;        // block ids, > 0
    char *buffer = nullptr;   // count * bytes_per_block (BLOCK_MAJOR) or count * moved bytes
    pkv_block_order order = PKV_BLOCK_ORDER_BLOCK_MAJOR;
    bool to_buffer = true;
    int vec = 1;              // bytes per access (transfer_vector_bytes)
};

// BLOCK_MAJOR transfer as a flat copy: buffer slot i is block i of an identity side.
inline FlatBlockCopy block_major_copy(const BlockTransfer &t) {
    FlatBlockCopy c;
    BlockSide pool{t.pool_base, t.ids, t.num_blocks}, buffer{t.buffer, BlockIds{}, t.count};
    c.src = t.to_buffer ? pool : buffer;
    c.dst = t.to_buffer ? buffer : pool;
    c.count = t.count;
    c.bytes_per_block = t.layout->bytes_per_block;
    c.vec = t.vec;
    return c;
}

// LAYER_MAJOR: layer l of the buffer is [count][layer_bytes(l)], layers one after the other;
// a layer's bytes of one block are its K region then its V region.
inline int64_t layer_bytes(const LayerLayout &l) { return l.region_bytes_k + l.region_bytes_v; }

// Offset inside a pool block of byte `b` of a layer's moved bytes (K region, then V region).
PKV_HD int64_t layer_byte_in_block(int64_t k_offset, int64_t k_bytes, int64_t v_offset, int64_t b) {
    return b < k_bytes ? k_offset + b : v_offset + (b - k_bytes);
}

// Widest access (bytes, power of two <= 16) keeping every address of the transfer aligned.
int transfer_vector_bytes(const BlockTransfer &t);

// swap_blocks: dst block dst_ids[i] of one tier receives src block src_ids[i] of a tier (ids
// validated, host arrays). Pairs take effect in order: a run is never coalesced across a
// source block written earlier in the same run, so a chain inside one tier copies in sequence.
struct SwapArgs {
    const char *src_base = nullptr;
    char *dst_base = nullptr;
    int64_t bytes_per_block = 0;
    const int32_t *src_ids = nullptr, *dst_ids = nullptr;
    int64_t count = 0;
    bool same_tier = false;
};

// Calls fn(src_first, dst_first, blocks) for each maximal run of pairs whose source ids and
// destination ids both step by one. Within one tier a run stops before its source range would
// overlap its destination range (so each run is one non-overlapping copy, equivalent to its
// pairs in order), and a block copied onto itself is skipped.
template <typename F> void for_each_block_run(const SwapArgs &a, F &&fn) {
    int64_t i = 0;
    while (i < a.count) {
        const int64_t s = a.src_ids[i], d = a.dst_ids[i];
        if (a.same_tier && s == d) {
            ++i;
            continue;
        }
        const int64_t gap = s > d ? s - d : d - s;  // runs longer than gap would overlap
        int64_t n = 1;
        while (i + n < a.count && a.src_ids[i + n] == s + n && a.dst_ids[i + n] == d + n &&
               (!a.same_tier || n < gap))
            ++n;
        fn(s, d, n);
        i += n;
    }
}

// CUDA LAYER_MAJOR launches carry the per-layer table as a kernel parameter (no device
// allocation per call); pools with more layers get PKV_ERROR_NOT_SUPPORTED for that order.
constexpr int64_t kMaxLayerMajorLayers = 448;

// CPU backend (src/cpu/): synchronous.
void cpu_copy_blocks(const FlatBlockCopy &c);
void cpu_copy_cache_blocks(const CacheBlockCopy &c);
void cpu_transfer_blocks(const BlockTransfer &t);
void cpu_swap_blocks(const SwapArgs &a);

// CUDA backend (src/cuda/; src/nocuda/ throws NOT_SUPPORTED): enqueued on `stream`.
void cuda_copy_blocks(const FlatBlockCopy &c, pkv_stream stream);
void cuda_copy_cache_blocks(const CacheBlockCopy &c, pkv_stream stream);
void cuda_transfer_blocks(const BlockTransfer &t, pkv_stream stream);
void cuda_swap_blocks(const SwapArgs &a, pkv_stream stream);

}  // namespace pkv
