// Host-side block allocator of one tier: a free stack and reference counts, O(1) per block,
// all-or-nothing per call, internally locked (children of one pool may allocate concurrently).
#pragma once

#include <cstdint>
#include <mutex>
#include <vector>

namespace pkv {

class BlockAllocator {
public:
    // Sets num_blocks free blocks (call once, before use).
    void init(int64_t num_blocks);

    int64_t total() const { return int64_t(refcount_.size()); }
    int64_t free_count() const;

    // false (nothing allocated) when fewer than n blocks are free.
    bool allocate(int64_t n, int32_t *out);
    // false (nothing changed) when an id is out of range or not allocated.
    bool retain(const int32_t *ids, int64_t n);
    // Drops one reference from each id (an id may appear several times if it holds as many
    // references); false (nothing changed) when an id is out of range or lacks a reference.
    bool release(const int32_t *ids, int64_t n);
    // 0 = free, -1 = out of range.
    int32_t refcount(int32_t id) const;

private:
    bool check_held(const int32_t *ids, int64_t n, int32_t extra_needed) const;
    mutable std::mutex mutex_;
    std::vector<int32_t> free_;      // stack of free ids; the lowest id on top at the start
    std::vector<int32_t> refcount_;  // per block
};

}  // namespace pkv
