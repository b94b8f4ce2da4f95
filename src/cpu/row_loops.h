// The loops every CPU backend shares: tokens of a write or rows of a gather in parallel (OpenMP),
// padding and out-of-range slots or rows skipped, out-of-range ones counted.
#pragma once

#include <cstdint>

#include "core/ops.h"

namespace pkv {

// Adds a call's out-of-range count to the caller's counter (atomic: concurrent calls may share
// one counter, as pagedkv.h allows).
inline void add_out_of_range(int64_t *counter, int64_t n) {
    if (counter && n) __atomic_fetch_add(counter, n, __ATOMIC_RELAXED);
}

// Calls fn(t, block, offset) for every token t < num_tokens whose slot lies in the cache. A
// negative slot (padding) is skipped; a slot past the cache is skipped and counted.
template <typename F>
void for_each_slot(const IndexVector &slots, int64_t num_tokens, const CacheGeometry &cache, int64_t *out_of_range,
                   F &&fn) {
    const int64_t num_slots = cache.num_slots();
    int64_t skipped = 0;
#pragma omp parallel for schedule(static) reduction(+ : skipped) if (num_tokens > 32)
    for (int64_t t = 0; t < num_tokens; ++t) {
        const int64_t slot = slots[t];
        if (slot < 0) continue;
        if (slot >= num_slots) {
            ++skipped;
            continue;
        }
        fn(t, slot / cache.block_size, slot % cache.block_size);
    }
    add_out_of_range(out_of_range, skipped);
}

// Calls fn(row, block, offset) for every output row of a gather that reads the cache (see
// gather_row_source); rows past cu_seq_lens[batch] are skipped, out-of-range rows counted.
template <typename F> void for_each_gather_row(const GatherArgs &a, F &&fn) {
    int64_t skipped = 0;
#pragma omp parallel for schedule(static) reduction(+ : skipped) if (a.num_rows > 32)
    for (int64_t row = 0; row < a.num_rows; ++row) {
        int64_t block, offset;
        if (!gather_row_source(a, row, block, offset)) continue;
        if (block < 0) {
            ++skipped;
            continue;
        }
        fn(row, block, offset);
    }
    add_out_of_range(a.out_of_range, skipped);
}

}  // namespace pkv
