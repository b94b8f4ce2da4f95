// Construction and teardown of a pool's memory; the scale updates.
#include "core/pool.h"

#include <algorithm>
#include <cstring>

#include "core/cuda_runtime.h"
#include "core/device_memory.h"
#include "core/ops.h"

namespace {

pkv_device host_tier_device(pkv_device pool_device) {
    // A CUDA pool's host tier is pinned so that swaps run as async DMA.
    return pool_device.type == PKV_DEVICE_CPU ? pkv_device{PKV_DEVICE_CPU, 0} : pkv_device{PKV_DEVICE_CUDA_HOST, 0};
}

}  // namespace

pkv_pool::~pkv_pool() {
    pkv::free_on(device_base, device);
    pkv::free_on(host_base, host_tier_device(device));
    pkv::free_on(scales, device);
}

namespace pkv {

std::unique_ptr<pkv_pool> create_pool(pkv_device device, PoolLayout layout, int64_t num_blocks,
                                      int64_t num_host_blocks) {
    auto pool = std::make_unique<pkv_pool>();
    pool->device = device;
    pool->layout = std::move(layout);
    pool->num_blocks = num_blocks;
    pool->num_host_blocks = num_host_blocks;
    const size_t block_bytes = size_t(pool->layout.bytes_per_block);
    // Each pointer is stored as soon as it exists, so a later failure frees it in ~pkv_pool.
    pool->device_base = static_cast<char *>(alloc_on(device, size_t(num_blocks) * block_bytes));
    pool->host_base = static_cast<char *>(alloc_on(host_tier_device(device), size_t(num_host_blocks) * block_bytes));

    const size_t scale_bytes = size_t(pool->layout.total_scales) * sizeof(float);
    pool->host_scales.assign(size_t(pool->layout.total_scales), 1.0f);
    pool->scales = static_cast<float *>(alloc_on(device, scale_bytes));
    if (scale_bytes) {
        if (device.type == PKV_DEVICE_CPU) std::memcpy(pool->scales, pool->host_scales.data(), scale_bytes);
        else cuda_copy_blocking(device, pool->scales, pool->host_scales.data(), scale_bytes);
    }
    if (device.type == PKV_DEVICE_CPU) pool->host_scales.clear();  // HOST views use `scales`

    pool->device_blocks.init(num_blocks);
    pool->host_blocks.init(num_host_blocks);
    return pool;
}

void set_pool_scales(pkv_pool &pool, int64_t layer, const float *k_scales, const float *v_scales,
                     pkv_stream stream) {
    const LayerLayout &l = pool.layout.layers[size_t(layer)];
    const size_t count = size_t(l.scale_count);
    if (pool.device.type == PKV_DEVICE_CPU) {
        std::copy(k_scales, k_scales + count, pool.scales + l.k_scale_index);
        if (v_scales) std::copy(v_scales, v_scales + count, pool.scales + l.v_scale_index);
        return;
    }
    float *host = pool.host_scales.data();
    std::copy(k_scales, k_scales + count, host + l.k_scale_index);
    if (v_scales) std::copy(v_scales, v_scales + count, host + l.v_scale_index);
    // The K and V scales of a layer are adjacent: one copy. host_scales is pageable memory, so
    // cudaMemcpyAsync has staged it before returning and a later update cannot race this one.
    cuda_copy(pool.scales + l.k_scale_index, host + l.k_scale_index, 2 * count * sizeof(float), stream);
}

}  // namespace pkv
