// pkv_copy_blocks, pkv_pool_copy_blocks, pkv_pool_swap_blocks, pkv_pool_gather_blocks, pkv_pool_scatter_blocks:
// validate, resolve, dispatch by the pool's device.
#include <vector>

#include "api/error_state.h"
#include "api/handle_checks.h"
#include "api/validate.h"
#include "core/block_moves.h"
#include "core/ops.h"
#include "core/pool.h"

using namespace pkv;
using namespace pkv::api;

namespace {

// Index tensors are read element by element: their data must be aligned to the element size.
void require_element_aligned(const char *name, const pkv_tensor *t) {
    const uintptr_t size = t->dtype == PKV_DTYPE_INT64 ? 8 : 4;
    require(reinterpret_cast<uintptr_t>(t->data) % size == 0, PKV_ERROR_INVALID_ARGUMENT, name,
            "->data is not aligned to its ", size, "-byte element size");
}

const char *tier_name(pkv_tier t) { return t == PKV_TIER_HOST ? "host" : "device"; }

// pairs of copy_blocks: a contiguous [P, 2] int32 / int64 tensor on `device`; returns P.
int64_t check_pairs(const pkv_tensor *pairs, pkv_device device) {
    require(pairs != nullptr, PKV_ERROR_INVALID_ARGUMENT, "pairs is NULL");
    require(pairs->ndim == 2, PKV_ERROR_INVALID_ARGUMENT, "pairs must be a 2-D tensor [P, 2], got ndim ",
            pairs->ndim);
    require(pairs->shape[1] == 2, PKV_ERROR_INVALID_ARGUMENT, "pairs shape[1] must be 2 (src, dst), got ",
            pairs->shape[1]);
    require(pairs->dtype == PKV_DTYPE_INT32 || pairs->dtype == PKV_DTYPE_INT64, PKV_ERROR_INVALID_ARGUMENT,
            "pairs dtype must be int32 or int64, got ", pkv_dtype_name(pairs->dtype));
    const int64_t count = pairs->shape[0];
    require(count >= 0, PKV_ERROR_INVALID_ARGUMENT, "pairs shape[0] must be >= 0, got ", count);
    require(pairs->strides[1] == 1 && (count <= 1 || pairs->strides[0] == 2), PKV_ERROR_INVALID_ARGUMENT,
            "pairs must be contiguous (strides [2, 1]), got [", pairs->strides[0], ", ", pairs->strides[1], "]");
    require(count == 0 || pairs->data != nullptr, PKV_ERROR_INVALID_ARGUMENT, "pairs->data is NULL");
    require_element_aligned("pairs", pairs);
    require_same_device("pairs", pairs->device, device);
    return count;
}

void copy_blocks(pkv_pool *pool, const pkv_tensor *pairs, pkv_stream stream) {
    require(pool != nullptr, PKV_ERROR_INVALID_ARGUMENT, "pool is NULL");
    const int64_t count = check_pairs(pairs, pool->device);
    require(count <= INT64_MAX / pool->layout.bytes_per_block, PKV_ERROR_INVALID_ARGUMENT, "pairs has ", count,
            " rows: the bytes to copy overflow int64");
    if (count == 0) return;

    const FlatBlockCopy c = pair_copy(pool->device_base, pool->num_blocks, pool->layout.bytes_per_block,
                                      pairs->data, pairs->dtype == PKV_DTYPE_INT64, count);
    if (pool->is_cuda()) cuda_copy_blocks(c, stream);
    else cpu_copy_blocks(c);
}

// One raw cache of pkv_copy_blocks: [num_blocks, ...], dim 0 any stride >= one block (no two
// blocks overlap), the other dims dense row-major. Every byte of it addressable in int64.
CacheBlocks check_raw_cache(const pkv_tensor *t, int32_t index, pkv_device device) {
    require(t->ndim >= 1 && t->ndim <= PKV_MAX_DIMS, PKV_ERROR_INVALID_ARGUMENT, "caches[", index,
            "] must have 1 to ", PKV_MAX_DIMS, " dimensions, got ", t->ndim);
    const size_t bits = pkv_dtype_size_bits(t->dtype);
    require(bits >= 8, PKV_ERROR_INVALID_ARGUMENT, "caches[", index, "] has an unknown dtype ", int(t->dtype));
    require_same_device("caches[i]", t->device, device);
    const int64_t elem = int64_t(bits / 8);
    int64_t block_elems = 1;
    for (int d = t->ndim - 1; d >= 1; --d) {
        require(t->shape[d] >= 0, PKV_ERROR_INVALID_ARGUMENT, "caches[", index, "] shape[", d, "] is negative");
        require(t->shape[d] <= 1 || t->strides[d] == block_elems, PKV_ERROR_INVALID_ARGUMENT, "caches[", index,
                "] must be dense row-major past dimension 0: strides[", d, "] is ", t->strides[d], ", expected ",
                block_elems);
        require(!__builtin_mul_overflow(block_elems, t->shape[d], &block_elems), PKV_ERROR_INVALID_ARGUMENT,
                "caches[", index, "] block size overflows int64");
    }
    const int64_t num_blocks = t->shape[0];
    require(num_blocks >= 0, PKV_ERROR_INVALID_ARGUMENT, "caches[", index, "] shape[0] is negative");
    int64_t block_bytes = 0, stride_bytes = 0, last = 0;
    require(!__builtin_mul_overflow(block_elems, elem, &block_bytes) &&
                !__builtin_mul_overflow(t->strides[0], elem, &stride_bytes) &&
                (num_blocks == 0 || !__builtin_mul_overflow(num_blocks - 1, stride_bytes, &last)) &&
                !__builtin_add_overflow(last, block_bytes, &last),
            PKV_ERROR_INVALID_ARGUMENT, "caches[", index, "] spans more than int64 bytes");
    require(num_blocks <= 1 || t->strides[0] >= block_elems, PKV_ERROR_INVALID_ARGUMENT, "caches[", index,
            "] strides[0] = ", t->strides[0], " is smaller than a block (", block_elems, " elements): blocks overlap");
    require(num_blocks == 0 || block_bytes == 0 || t->data != nullptr, PKV_ERROR_INVALID_ARGUMENT, "caches[",
            index, "]->data is NULL");
    return CacheBlocks{static_cast<char *>(t->data), stride_bytes, num_blocks, block_bytes};
}

void copy_cache_blocks(const pkv_tensor *caches, int32_t num_caches, const pkv_tensor *pairs, pkv_stream stream) {
    require(num_caches >= 0, PKV_ERROR_INVALID_ARGUMENT, "num_caches must be >= 0, got ", num_caches);
    require(num_caches == 0 || caches != nullptr, PKV_ERROR_INVALID_ARGUMENT, "caches is NULL");
    const pkv_device device = num_caches > 0 ? caches[0].device : (pairs ? pairs->device : pkv_device{});
    const int64_t count = check_pairs(pairs, device);
    require(is_host_device(device) || cuda_available_in_build(), PKV_ERROR_NOT_SUPPORTED, "the caches are on ",
            device_string(device), " but this library was built without CUDA");
    std::vector<CacheBlocks> blocks;
    blocks.reserve(size_t(num_caches));
    for (int32_t i = 0; i < num_caches; ++i) blocks.push_back(check_raw_cache(&caches[i], i, device));
    for (const CacheBlocks &b : blocks)
        require(b.bytes_per_block == 0 || count <= INT64_MAX / b.bytes_per_block, PKV_ERROR_INVALID_ARGUMENT,
                "pairs has ", count, " rows: the bytes to copy overflow int64");
    if (count == 0 || num_caches == 0) return;

    CacheBlockCopy c;
    c.caches = blocks.data();
    c.num_caches = num_caches;
    set_pairs(c, pairs->data, pairs->dtype == PKV_DTYPE_INT64, count);
    c.vec = cache_copy_vector_bytes(c);
    if (is_host_device(device)) cpu_copy_cache_blocks(c);
    else cuda_copy_cache_blocks(c, stream);
}

void check_swap_ids(const pkv_pool &pool, const char *name, const int32_t *ids, int64_t n, pkv_tier tier) {
    const int64_t blocks = pool.tier_blocks(tier);
    for (int64_t i = 0; i < n; ++i)
        require(ids[i] >= 0 && ids[i] < blocks, PKV_ERROR_INVALID_ARGUMENT, name, "[", i, "] = ", ids[i],
                " is outside the ", tier_name(tier), " tier's blocks [0, ", blocks, ")");
}

void swap_blocks(pkv_pool *pool, pkv_tier src_tier, const int32_t *src_ids, pkv_tier dst_tier,
                 const int32_t *dst_ids, int64_t n, pkv_stream stream) {
    require(pool != nullptr, PKV_ERROR_INVALID_ARGUMENT, "pool is NULL");
    check_tier(src_tier);
    check_tier(dst_tier);
    for (pkv_tier t : {src_tier, dst_tier})
        require(t != PKV_TIER_HOST || pool->num_host_blocks > 0, PKV_ERROR_INVALID_STATE,
                t == src_tier ? "src_tier" : "dst_tier",
                " is PKV_TIER_HOST but the pool has no host tier (num_host_blocks 0)");
    check_id_array("src_ids", src_ids, n);
    check_id_array("dst_ids", dst_ids, n);
    check_swap_ids(*pool, "src_ids", src_ids, n, src_tier);
    check_swap_ids(*pool, "dst_ids", dst_ids, n, dst_tier);
    if (n == 0) return;

    SwapArgs a;
    a.src_base = pool->tier_base(src_tier);
    a.dst_base = pool->tier_base(dst_tier);
    a.bytes_per_block = pool->layout.bytes_per_block;
    a.src_ids = src_ids;
    a.dst_ids = dst_ids;
    a.count = n;
    a.same_tier = src_tier == dst_tier;
    if (pool->is_cuda()) cuda_swap_blocks(a, stream);
    else cpu_swap_blocks(a);
}

// gather (to_buffer) / scatter: the checks and the dispatch are the same.
void transfer_blocks(const pkv_pool *pool, const pkv_tensor *block_ids, void *buffer, pkv_device buffer_device,
                     pkv_block_order order, bool to_buffer, pkv_stream stream) {
    require(pool != nullptr, PKV_ERROR_INVALID_ARGUMENT, "pool is NULL");
    const int64_t count = check_index_vector("block_ids", block_ids, true, pool->device);
    require_element_aligned("block_ids", block_ids);
    require(order == PKV_BLOCK_ORDER_BLOCK_MAJOR || order == PKV_BLOCK_ORDER_LAYER_MAJOR,
            PKV_ERROR_INVALID_ARGUMENT, "order ", int(order), " is not a known pkv_block_order");
    // The kernels of a CUDA pool reach device memory of the pool's device or pinned host memory;
    // the CPU backend reaches host memory only.
    const bool reachable = pool->is_cuda()
                               ? (buffer_device.type == PKV_DEVICE_CUDA_HOST ||
                                  (buffer_device.type == PKV_DEVICE_CUDA && buffer_device.id == pool->device.id))
                               : is_host_device(buffer_device);
    require(reachable, PKV_ERROR_INVALID_ARGUMENT, "buffer_device ", device_string(buffer_device),
            " cannot be used with a pool on ", device_string(pool->device),
            pool->is_cuda() ? " (use the pool's device or pinned host memory)" : " (use host memory)");
    require(count == 0 || buffer != nullptr, PKV_ERROR_INVALID_ARGUMENT, "buffer is NULL");
    require(order != PKV_BLOCK_ORDER_LAYER_MAJOR || !pool->is_cuda() ||
                int64_t(pool->layout.layers.size()) <= kMaxLayerMajorLayers,
            PKV_ERROR_NOT_SUPPORTED, "PKV_BLOCK_ORDER_LAYER_MAJOR supports pools of at most ", kMaxLayerMajorLayers,
            " layers on CUDA, the pool has ", pool->layout.layers.size());
    const int64_t bpb = pool->layout.bytes_per_block;
    require(count <= INT64_MAX / bpb, PKV_ERROR_INVALID_ARGUMENT, "block_ids has ", count,
            " entries: the buffer size overflows int64");
    if (count == 0) return;

    BlockTransfer t;
    t.layout = &pool->layout;
    t.pool_base = pool->device_base;
    t.num_blocks = pool->num_blocks;
    t.ids = BlockIds{block_ids->data, block_ids->dtype == PKV_DTYPE_INT64, block_ids->strides[0]};
    t.count = count;
    t.buffer = static_cast<char *>(buffer);
    t.order = order;
    t.to_buffer = to_buffer;
    t.vec = transfer_vector_bytes(t);
    if (pool->is_cuda()) cuda_transfer_blocks(t, stream);
    else cpu_transfer_blocks(t);
}

}  // namespace

extern "C" {

PKV_API pkv_status pkv_copy_blocks(const pkv_tensor *caches, int32_t num_caches, const pkv_tensor *pairs,
                                   pkv_stream stream) {
    return guarded("pkv_copy_blocks", [&] { copy_cache_blocks(caches, num_caches, pairs, stream); });
}

PKV_API pkv_status pkv_pool_copy_blocks(pkv_pool *pool, const pkv_tensor *pairs, pkv_stream stream) {
    return guarded("pkv_pool_copy_blocks", [&] { copy_blocks(pool, pairs, stream); });
}

PKV_API pkv_status pkv_pool_swap_blocks(pkv_pool *pool, pkv_tier src_tier, const int32_t *src_ids,
                                        pkv_tier dst_tier, const int32_t *dst_ids, int64_t n, pkv_stream stream) {
    return guarded("pkv_pool_swap_blocks",
                   [&] { swap_blocks(pool, src_tier, src_ids, dst_tier, dst_ids, n, stream); });
}

PKV_API pkv_status pkv_pool_gather_blocks(void *buffer, pkv_device buffer_device, pkv_block_order order,
                                          const pkv_pool *pool, const pkv_tensor *block_ids, pkv_stream stream) {
    return guarded("pkv_pool_gather_blocks",
                   [&] { transfer_blocks(pool, block_ids, buffer, buffer_device, order, true, stream); });
}

PKV_API pkv_status pkv_pool_scatter_blocks(pkv_pool *pool, const pkv_tensor *block_ids, const void *buffer,
                                           pkv_device buffer_device, pkv_block_order order, pkv_stream stream) {
    return guarded("pkv_pool_scatter_blocks", [&] {
        // The scatter only reads the buffer; the shared path takes it non-const.
        transfer_blocks(pool, block_ids, const_cast<void *>(buffer), buffer_device, order, false, stream);
    });
}

}  // extern "C"
