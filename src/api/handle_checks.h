// Argument checks shared by the handle entry points (pool, block tables, slots).
#pragma once

#include <cstdint>

#include "api/validate.h"
#include "core/pool.h"

namespace pkv {
namespace api {

// a * b and a + b for size bounds; INT64_MAX marks an overflow (caught by the callers' limits).
inline int64_t sat_mul(int64_t a, int64_t b) {
    int64_t r;
    return __builtin_mul_overflow(a, b, &r) ? INT64_MAX : r;
}
inline int64_t sat_add(int64_t a, int64_t b) {
    int64_t r;
    return __builtin_add_overflow(a, b, &r) ? INT64_MAX : r;
}

inline void check_tier(pkv_tier tier) {
    require(tier == PKV_TIER_DEVICE || tier == PKV_TIER_HOST, PKV_ERROR_INVALID_ARGUMENT, "tier ", int(tier),
            " is not a known pkv_tier");
}

inline void check_layer(const pkv_pool &pool, int64_t layer) {
    const int64_t n = int64_t(pool.layout.layers.size());
    require(layer >= 0 && layer < n, PKV_ERROR_INVALID_ARGUMENT, "layer ", layer, " is out of range [0, ", n, ")");
}

// n block ids of a tier given as an array: n >= 0, ids non-NULL when n > 0.
inline void check_id_array(const char *name, const int32_t *ids, int64_t n) {
    require(n >= 0, PKV_ERROR_INVALID_ARGUMENT, "n must be >= 0, got ", n);
    require(n == 0 || ids != nullptr, PKV_ERROR_INVALID_ARGUMENT, name, " is NULL");
}

}  // namespace api
}  // namespace pkv
