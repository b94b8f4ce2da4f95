// The block table handle's state: per request its physical blocks (device tier of the pool) and
// token count, plus the device mirror of a batch. src/api/ validates; these functions trust
// their arguments (known requests, capacities checked) and keep every invariant:
//   blocks.size() == ceil(num_tokens / block_size), each block holding one reference of the table.
#pragma once

#include <cstdint>
#include <memory>
#include <unordered_map>
#include <vector>

#include "core/device_memory.h"
#include "core/pool.h"
#include "pagedkv.h"

namespace pkv {

struct RequestBlocks {
    std::vector<int32_t> blocks;
    int64_t num_tokens = 0;
};

// Byte offsets of the mirror's arrays inside its one allocation (and the staging's). The small,
// always-copied arrays come first and the block table last, so that an upload copies one prefix:
// [seq_lens | query_start_loc | slot_mapping | block_table rows in use].
struct MirrorLayout {
    int64_t max_batch = 0, max_blocks = 0, max_tokens = 0;
    int64_t seq_lens = 0, query_start_loc = 0, slot_mapping = 0, block_table = 0;  // byte offsets
    int64_t bytes = 0;

    // Bytes an upload must copy when rows [0, rows) of the block table may have changed.
    int64_t prefix_bytes(int64_t rows) const { return block_table + rows * max_blocks * int64_t(sizeof(int32_t)); }
};

MirrorLayout make_mirror_layout(int64_t max_batch, int64_t max_blocks, int64_t max_tokens);

// Slot of token position `pos` of a request: its block's first slot plus the offset in the block.
inline int64_t token_slot(const std::vector<int32_t> &blocks, int64_t block_size, int64_t pos) {
    return int64_t(blocks[size_t(pos / block_size)]) * block_size + pos % block_size;
}

}  // namespace pkv

struct pkv_block_table {
    pkv_pool *pool = nullptr;
    std::unordered_map<uint64_t, pkv::RequestBlocks> requests;

    pkv::MirrorLayout mirror_layout;
    pkv::DeviceBuffer mirror;   // on the pool's device (host memory for a CPU pool)
    pkv::DeviceBuffer staging;  // pinned; CUDA pools only (a CPU pool's mirror is written directly)
    void *upload_done = nullptr;  // event recorded after the last upload's copy (CUDA pools)
    bool upload_pending = false;  // upload_done recorded and not yet waited for
    // What the host buffer (staging or CPU mirror) holds beyond the defaults: rows and slot
    // mapping entries written by the last build, entries used in each row. Clearing only those
    // keeps an upload's host work proportional to the batch, not to the mirror's capacity.
    int64_t staged_batch = 0, staged_tokens = 0;
    std::vector<int64_t> row_used;
    bool device_stale = false;  // a copy failed: the device mirror may differ from the staging
    int64_t last_batch = 0, last_tokens = 0;  // reported by pkv_block_table_mirror
    std::vector<const pkv::RequestBlocks *> batch_rows;  // upload's scratch, max_batch reserved

    pkv_block_table() = default;
    pkv_block_table(const pkv_block_table &) = delete;
    pkv_block_table &operator=(const pkv_block_table &) = delete;
    ~pkv_block_table();  // waits for the last upload, releases every block, frees the mirror
};

namespace pkv {

// Allocates the mirror (initialized: block table 0, slot mapping -1, seq_lens and
// query_start_loc 0) and, for a CUDA pool, the staging and the event. Does not count as a child
// of the pool; the api layer does that once the table is complete.
std::unique_ptr<pkv_block_table> create_block_table(pkv_pool *pool, const MirrorLayout &layout);

// Appends n > 0 tokens (copy-on-write of a shared partial last block enqueued on `stream`),
// writing their slots to out_slots when not NULL. Throws PKV_ERROR_OUT_OF_BLOCKS with nothing
// changed when the pool lacks blocks.
void block_table_append(pkv_block_table &t, RequestBlocks &r, int64_t n, int64_t *out_slots, pkv_stream stream);
// Inserts `child` (absent) as a copy of `parent`, one more reference on each block.
void block_table_fork(pkv_block_table &t, const RequestBlocks &parent, uint64_t child);
// Keeps the first n <= num_tokens tokens, releasing the blocks past them.
void block_table_truncate(pkv_block_table &t, RequestBlocks &r, int64_t n);
// Releases the request's blocks and forgets it.
void block_table_remove(pkv_block_table &t, uint64_t request);

// Mirror of a validated batch: rows[b] are the requests, new_tokens[b] <= their token counts,
// blocks <= max_blocks, the total <= max_tokens. Waits for the previous upload's copy first.
void block_table_upload(pkv_block_table &t, const RequestBlocks *const *rows, const int64_t *new_tokens,
                        int64_t batch, pkv_stream stream);
// The mirror's tensors and the last upload's counts.
pkv_batch_mirror block_table_mirror(const pkv_block_table &t);

}  // namespace pkv
