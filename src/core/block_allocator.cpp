#include "core/block_allocator.h"

#include <unordered_map>

namespace pkv {

void BlockAllocator::init(int64_t num_blocks) {
    std::lock_guard<std::mutex> lock(mutex_);
    free_.assign(size_t(num_blocks), 0);
    refcount_.assign(size_t(num_blocks), 0);
    for (int64_t i = 0; i < num_blocks; ++i) free_[size_t(i)] = int32_t(num_blocks - 1 - i);
}

int64_t BlockAllocator::free_count() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return int64_t(free_.size());
}

bool BlockAllocator::allocate(int64_t n, int32_t *out) {
    std::lock_guard<std::mutex> lock(mutex_);
    if (n < 0 || n > int64_t(free_.size())) return false;
    for (int64_t i = 0; i < n; ++i) {
        const int32_t id = free_.back();
        free_.pop_back();
        refcount_[size_t(id)] = 1;
        out[i] = id;
    }
    return true;
}

// Every id in range and allocated; for release, each id must hold at least as many references
// as it appears in the list.
bool BlockAllocator::check_held(const int32_t *ids, int64_t n, int32_t per_occurrence) const {
    std::unordered_map<int32_t, int32_t> seen;
    for (int64_t i = 0; i < n; ++i) {
        const int32_t id = ids[i];
        if (id < 0 || id >= int32_t(refcount_.size()) || refcount_[size_t(id)] == 0) return false;
        if (per_occurrence && ++seen[id] > refcount_[size_t(id)]) return false;
    }
    return true;
}

bool BlockAllocator::retain(const int32_t *ids, int64_t n) {
    std::lock_guard<std::mutex> lock(mutex_);
    if (!check_held(ids, n, 0)) return false;
    for (int64_t i = 0; i < n; ++i) ++refcount_[size_t(ids[i])];
    return true;
}

bool BlockAllocator::release(const int32_t *ids, int64_t n) {
    std::lock_guard<std::mutex> lock(mutex_);
    if (!check_held(ids, n, 1)) return false;
    for (int64_t i = 0; i < n; ++i) {
        const int32_t id = ids[i];
        if (--refcount_[size_t(id)] == 0) free_.push_back(id);
    }
    return true;
}

int32_t BlockAllocator::refcount(int32_t id) const {
    std::lock_guard<std::mutex> lock(mutex_);
    if (id < 0 || id >= int32_t(refcount_.size())) return -1;
    return refcount_[size_t(id)];
}

}  // namespace pkv
