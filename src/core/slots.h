// The slots handle's state (request-slot ids and their registered state regions) and the reset
// the backends run on acquire. src/api/ validates; these trust their arguments.
#pragma once

#include <cstdint>
#include <vector>

#include "core/pool.h"
#include "pagedkv.h"

namespace pkv {

constexpr int kMaxSlotRegions = 16;

// A registered per-request state region: slot s owns the 32-bit words
// [base + s * slot_stride, base + s * slot_stride + words * 4).
struct SlotRegion {
    char *base = nullptr;
    int64_t words = 0;
    int64_t slot_stride = 0;  // bytes
    uint32_t fill = 0;
};

// One slot's reset: every region's words set to its pattern. Passed by value to the kernel, so
// a reset is one launch with no device-side argument buffer.
struct SlotsResetArgs {
    uint32_t *dst[kMaxSlotRegions] = {};
    int64_t words[kMaxSlotRegions] = {};
    uint32_t fill[kMaxSlotRegions] = {};
    int32_t count = 0;      // regions, > 0
    int64_t max_words = 0;  // the largest words[i]
};

SlotsResetArgs slots_reset_args(const std::vector<SlotRegion> &regions, int32_t slot);

// Backends: CPU (synchronous) and CUDA (one launch on `stream`).
void cpu_slots_reset(const SlotsResetArgs &a);
void cuda_slots_reset(const SlotsResetArgs &a, pkv_stream stream);

}  // namespace pkv

struct pkv_slots {
    pkv_pool *pool = nullptr;
    int32_t max_requests = 0;
    std::vector<uint8_t> taken;  // per slot id
    std::vector<pkv::SlotRegion> regions;
};
