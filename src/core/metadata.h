// Device-side metadata builders (slot mapping from a block table, or from a FlashInfer-style CSR
// page table): resolved arguments, the per-token index math shared by the CPU and CUDA
// backends (one output token at a time, no state), and the backend entry points.
#pragma once

#include <cstdint>

#include "core/numeric_formats.h"  // PKV_HD
#include "pagedkv.h"

namespace pkv {

// The output slot mapping: int32 or int64, element stride.
struct SlotOutput {
    void *data = nullptr;
    bool is_int64 = false;
    int64_t stride = 1;
    int64_t count = 0;  // T, > 0

    // A slot int32 cannot hold is written as -1 (padding) rather than wrapped onto another slot.
    PKV_HD void store(int64_t i, int64_t slot) const {
        if (is_int64) static_cast<int64_t *>(data)[i * stride] = slot;
        else static_cast<int32_t *>(data)[i * stride] = slot <= INT32_MAX ? int32_t(slot) : int32_t(-1);
    }
};

struct SlotMappingArgs {
    SlotOutput out;
    const int32_t *block_table = nullptr;  // [batch, max_blocks], row stride table_stride
    int64_t table_stride = 0, max_blocks = 0;
    const int32_t *seq_lens = nullptr;         // [batch]
    const int32_t *query_start_loc = nullptr;  // [batch + 1]
    int64_t batch = 0;
    int64_t block_size = 0;
};

struct CsrSlotMappingArgs {
    SlotOutput out;
    const int32_t *indptr = nullptr;         // [batch + 1] into indices
    const int32_t *indices = nullptr;        // [num_indices] page ids
    int64_t num_indices = 0;
    const int32_t *last_page_len = nullptr;  // [batch]
    const int32_t *append_indptr = nullptr;  // [batch + 1]
    int64_t batch = 0;
    int64_t page_size = 0;
};

// The request b with starts[b] <= i < starts[b + 1] (starts has batch + 1 entries, expected
// non-decreasing), by binary search for the last start <= i; -1 when i lies in none.
PKV_HD int64_t request_of_token(const int32_t *starts, int64_t batch, int64_t i) {
    if (batch <= 0 || i < starts[0] || i >= starts[batch]) return -1;
    int64_t lo = 0, hi = batch - 1;
    while (lo < hi) {
        const int64_t mid = (lo + hi + 1) >> 1;
        if (starts[mid] <= i) lo = mid;
        else hi = mid - 1;
    }
    return i < starts[lo + 1] ? lo : -1;  // guards against a decreasing (malformed) starts array
}

// Slot of cache position `pos` of a request whose blocks are ids[first .. first + entries);
// -1 when the position or the block id is outside.
PKV_HD int64_t slot_at_position(const int32_t *ids, int64_t first, int64_t entries, int64_t pos,
                                int64_t block_size) {
    if (pos < 0) return -1;
    const int64_t index = pos / block_size;
    if (index >= entries) return -1;
    const int64_t block = ids[first + index];
    if (block < 0) return -1;
    return block * block_size + (pos - index * block_size);
}

// Token i of pkv_build_slot_mapping: request b by query_start_loc, position
// seq_lens[b] - new_tokens(b) + (i - query_start_loc[b]).
PKV_HD int64_t slot_of_token(const SlotMappingArgs &a, int64_t i) {
    const int64_t b = request_of_token(a.query_start_loc, a.batch, i);
    if (b < 0) return -1;
    const int64_t first = a.query_start_loc[b], new_tokens = a.query_start_loc[b + 1] - first;
    const int64_t pos = int64_t(a.seq_lens[b]) - new_tokens + (i - first);
    return slot_at_position(a.block_table, b * a.table_stride, a.max_blocks, pos, a.block_size);
}

// Token i of pkv_build_slot_mapping_csr: request b by append_indptr; the request holds
// (pages - 1) * page_size + last_page_len[b] tokens (0 without pages), its new tokens the last ones.
PKV_HD int64_t slot_of_token(const CsrSlotMappingArgs &a, int64_t i) {
    const int64_t b = request_of_token(a.append_indptr, a.batch, i);
    if (b < 0) return -1;
    const int64_t page_begin = a.indptr[b], pages = int64_t(a.indptr[b + 1]) - page_begin;
    if (page_begin < 0 || pages < 0) return -1;
    const int64_t seq_len = pages > 0 ? (pages - 1) * a.page_size + a.last_page_len[b] : 0;
    const int64_t first = a.append_indptr[b], new_tokens = a.append_indptr[b + 1] - first;
    const int64_t pos = seq_len - new_tokens + (i - first);
    // Pages past the end of `indices` (a malformed indptr) count as outside the table.
    const int64_t in_indices = a.num_indices - page_begin;
    return slot_at_position(a.indices, page_begin, pages < in_indices ? pages : in_indices, pos, a.page_size);
}

// CPU backend (src/cpu/): synchronous.
void cpu_build_slot_mapping(const SlotMappingArgs &a);
void cpu_build_slot_mapping_csr(const CsrSlotMappingArgs &a);

// CUDA backend (src/cuda/; src/nocuda/ throws NOT_SUPPORTED): one thread per output token.
void cuda_build_slot_mapping(const SlotMappingArgs &a, pkv_stream stream);
void cuda_build_slot_mapping_csr(const CsrSlotMappingArgs &a, pkv_stream stream);

}  // namespace pkv
