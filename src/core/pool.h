// The pool handle's state. src/api/ creates and validates it; the backends read its layout.
#pragma once

#include <atomic>
#include <cstdint>

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
    pkv::BlockAllocator device_blocks, host_blocks;
    std::atomic<int64_t> live_children{0};  // block tables and slots objects

    char *tier_base(pkv_tier t) const { return t == PKV_TIER_HOST ? host_base : device_base; }
    int64_t tier_blocks(pkv_tier t) const { return t == PKV_TIER_HOST ? num_host_blocks : num_blocks; }
    pkv::BlockAllocator &tier_allocator(pkv_tier t) { return t == PKV_TIER_HOST ? host_blocks : device_blocks; }
};
