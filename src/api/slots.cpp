// pkv_slots_*: request-slot ids and the reset of their registered state regions.
#include <algorithm>
#include <memory>

#include "api/error_state.h"
#include "api/handle_checks.h"
#include "api/validate.h"
#include "core/slots.h"

using namespace pkv;
using namespace pkv::api;

namespace {

pkv_slots &checked_slots(pkv_slots *s) {
    require(s != nullptr, PKV_ERROR_INVALID_ARGUMENT, "slots is NULL");
    return *s;
}

void register_region(pkv_slots *slots, void *base, int64_t bytes_per_slot, int64_t slot_stride, uint32_t fill) {
    pkv_slots &s = checked_slots(slots);
    require(base != nullptr, PKV_ERROR_INVALID_ARGUMENT, "base is NULL");
    require(reinterpret_cast<uintptr_t>(base) % 4 == 0, PKV_ERROR_INVALID_ARGUMENT,
            "base must be 4-byte aligned (the fill pattern is 32-bit)");
    require(bytes_per_slot > 0 && bytes_per_slot % 4 == 0, PKV_ERROR_INVALID_ARGUMENT,
            "bytes_per_slot must be a positive multiple of 4, got ", bytes_per_slot);
    require(slot_stride >= 0 && slot_stride % 4 == 0, PKV_ERROR_INVALID_ARGUMENT,
            "slot_stride must be a non-negative multiple of 4, got ", slot_stride);
    // Overlapping slots would let one request's reset clobber another's live state.
    require(s.max_requests == 1 || slot_stride >= bytes_per_slot, PKV_ERROR_INVALID_ARGUMENT, "slot_stride ",
            slot_stride, " is smaller than bytes_per_slot ", bytes_per_slot, " (slots would overlap)");
    require(sat_add(sat_mul(s.max_requests - 1, slot_stride), bytes_per_slot) < INT64_MAX,
            PKV_ERROR_INVALID_ARGUMENT, "the region's extent overflows int64");
    require(int(s.regions.size()) < kMaxSlotRegions, PKV_ERROR_INVALID_ARGUMENT, "slots already has ",
            kMaxSlotRegions, " regions (the maximum)");
    s.regions.push_back(SlotRegion{static_cast<char *>(base), bytes_per_slot / 4, slot_stride, fill});
}

void acquire(int32_t *out_slot, pkv_slots *slots, pkv_stream stream) {
    require(out_slot != nullptr, PKV_ERROR_INVALID_ARGUMENT, "out_slot is NULL");
    pkv_slots &s = checked_slots(slots);
    const auto it = std::find(s.taken.begin(), s.taken.end(), uint8_t(0));
    require(it != s.taken.end(), PKV_ERROR_OUT_OF_BLOCKS, "all ", s.max_requests, " slots are taken");
    const int32_t slot = int32_t(it - s.taken.begin());
    if (!s.regions.empty()) {  // reset first: a failed launch leaves the slot free
        const SlotsResetArgs a = slots_reset_args(s.regions, slot);
        if (s.pool->is_cuda()) cuda_slots_reset(a, stream);
        else cpu_slots_reset(a);
    }
    *it = 1;
    *out_slot = slot;
}

}  // namespace

extern "C" {

PKV_API pkv_status pkv_slots_create(pkv_slots **out, pkv_pool *pool, int32_t max_requests) {
    return guarded("pkv_slots_create", [&] {
        require(out != nullptr, PKV_ERROR_INVALID_ARGUMENT, "out is NULL");
        *out = nullptr;
        require(pool != nullptr, PKV_ERROR_INVALID_ARGUMENT, "pool is NULL");
        require(max_requests > 0, PKV_ERROR_INVALID_ARGUMENT, "max_requests must be > 0, got ", max_requests);
        auto s = std::make_unique<pkv_slots>();
        s->pool = pool;
        s->max_requests = max_requests;
        s->taken.assign(size_t(max_requests), 0);
        s->regions.reserve(kMaxSlotRegions);
        ++pool->live_children;
        *out = s.release();
    });
}

PKV_API pkv_status pkv_slots_destroy(pkv_slots *slots) {
    return guarded("pkv_slots_destroy", [&] {
        if (slots == nullptr) return;
        pkv_pool *pool = slots->pool;
        delete slots;
        --pool->live_children;
    });
}

PKV_API pkv_status pkv_slots_register_region(pkv_slots *slots, void *base, int64_t bytes_per_slot,
                                             int64_t slot_stride, uint32_t fill) {
    return guarded("pkv_slots_register_region",
                   [&] { register_region(slots, base, bytes_per_slot, slot_stride, fill); });
}

PKV_API pkv_status pkv_slots_acquire(int32_t *out_slot, pkv_slots *slots, pkv_stream stream) {
    return guarded("pkv_slots_acquire", [&] { acquire(out_slot, slots, stream); });
}

PKV_API pkv_status pkv_slots_release(pkv_slots *slots, int32_t slot) {
    return guarded("pkv_slots_release", [&] {
        pkv_slots &s = checked_slots(slots);
        require(slot >= 0 && slot < s.max_requests, PKV_ERROR_INVALID_ARGUMENT, "slot ", slot,
                " is out of range [0, ", s.max_requests, ")");
        require(s.taken[size_t(slot)] != 0, PKV_ERROR_INVALID_ARGUMENT, "slot ", slot, " is not acquired");
        s.taken[size_t(slot)] = 0;
    });
}

}  // extern "C"
