// The pool handle's state. src/api/ creates and validates it; the backends read its layout.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <vector>

#include "core/block_allocator.h"
#include "core/pool_layout.h"
#include "pagedkv.h"

struct pkv_pool {
    pkv_device device{PKV_DEVICE_CPU, 0};
    pkv::PoolLayout layout;
    int64_t num_blocks = 0, num_host_blocks = 0;
    char *device_base = nullptr;  // num_blocks * bytes_per_block on `device`
    char *host_base = nullptr;    // num_host_blocks * bytes_per_block, pinned (CUDA) or plain (CPU pool)
    float *scales = nullptr;      // layout.total_scales floats on `device`
    // Host copy of the scales for HOST-tier views (CPU views: they cannot read a CUDA pool's
    // device scales). A CPU pool's HOST views use `scales` itself.
    std::vector<float> host_scales;
    pkv::BlockAllocator device_blocks, host_blocks;
    std::atomic<int64_t> live_children{0};  // block tables and slots objects

    pkv_pool() = default;
    pkv_pool(const pkv_pool &) = delete;
    pkv_pool &operator=(const pkv_pool &) = delete;
    ~pkv_pool();  // frees the tiers and the scales (core/pool.cpp)

    char *tier_base(pkv_tier t) const { return t == PKV_TIER_HOST ? host_base : device_base; }
    int64_t tier_blocks(pkv_tier t) const { return t == PKV_TIER_HOST ? num_host_blocks : num_blocks; }
    pkv::BlockAllocator &tier_allocator(pkv_tier t) { return t == PKV_TIER_HOST ? host_blocks : device_blocks; }
    const pkv::BlockAllocator &tier_allocator(pkv_tier t) const {
        return t == PKV_TIER_HOST ? host_blocks : device_blocks;
    }
    // Device of a tier's memory as the ops see it (the pinned host tier is CPU memory to them).
    pkv_device tier_device(pkv_tier t) const { return t == PKV_TIER_HOST ? pkv_device{PKV_DEVICE_CPU, 0} : device; }
    const float *tier_scales(pkv_tier t) const {
        return t == PKV_TIER_HOST && device.type != PKV_DEVICE_CPU ? host_scales.data() : scales;
    }
    bool is_cuda() const { return device.type == PKV_DEVICE_CUDA; }
};

namespace pkv {

// Allocates a pool for a validated layout: the device tier (contents undefined), the host tier
// (pinned for a CUDA pool, plain for a CPU pool; none when num_host_blocks is 0), the scales set
// to 1.0 (waits for the copy: creation is not enqueue-only), and both allocators all free.
// Throws pkv::Error; nothing is left allocated on failure.
std::unique_ptr<pkv_pool> create_pool(pkv_device device, PoolLayout layout, int64_t num_blocks,
                                      int64_t num_host_blocks);

// Sets layer `layer`'s K (and V) scales of a validated FP8 layer from host arrays: kept in the
// host copy, then copied to the device scales (enqueued on `stream` for a CUDA pool, from the
// pool's own pageable copy, so the caller's arrays are free on return).
void set_pool_scales(pkv_pool &pool, int64_t layer, const float *k_scales, const float *v_scales,
                     pkv_stream stream);

}  // namespace pkv

