// Block tables: request bookkeeping on the pool's allocator, copy-on-write, the device mirror.
#include "core/block_table.h"

#include <algorithm>
#include <cstring>
#include <string>

#include "core/cuda_runtime.h"
#include "core/error.h"
#include "core/ops.h"

namespace pkv {

namespace {

int64_t align_up(int64_t x, int64_t a) { return (x + a - 1) / a * a; }

int64_t blocks_for(int64_t tokens, int64_t block_size) { return (tokens + block_size - 1) / block_size; }

// Where the mirror is built: pinned staging for a CUDA pool, the mirror itself for a CPU pool.
char *host_buffer(const pkv_block_table &t) { return t.pool->is_cuda() ? t.staging.get() : t.mirror.get(); }

template <typename T> T *array_at(char *base, int64_t offset) { return reinterpret_cast<T *>(base + offset); }

void fill_defaults(char *base, const MirrorLayout &l) {
    std::memset(base, 0, size_t(l.bytes));
    std::fill_n(array_at<int64_t>(base, l.slot_mapping), l.max_tokens, int64_t(-1));
}

// Copies block `src` to block `dst` of the device tier, all layers (one contiguous run).
void copy_block(pkv_pool &pool, int32_t dst, int32_t src, pkv_stream stream) {
    const int64_t bpb = pool.layout.bytes_per_block;
    char *d = pool.device_base + int64_t(dst) * bpb;
    const char *s = pool.device_base + int64_t(src) * bpb;
    if (pool.is_cuda()) cuda_copy(d, s, size_t(bpb), stream);
    else std::memcpy(d, s, size_t(bpb));
}

void release_or_fail(BlockAllocator &a, const int32_t *ids, int64_t n) {
    if (!a.release(ids, n)) fail(PKV_ERROR_INTERNAL, "block table holds a block the allocator does not");
}

}  // namespace

MirrorLayout make_mirror_layout(int64_t max_batch, int64_t max_blocks, int64_t max_tokens) {
    MirrorLayout l;
    l.max_batch = max_batch;
    l.max_blocks = max_blocks;
    l.max_tokens = max_tokens;
    const int64_t a = 256;
    l.seq_lens = 0;
    l.query_start_loc = align_up(l.seq_lens + max_batch * 4, a);
    l.slot_mapping = align_up(l.query_start_loc + (max_batch + 1) * 4, a);
    l.block_table = align_up(l.slot_mapping + max_tokens * 8, a);
    l.bytes = align_up(l.block_table + max_batch * max_blocks * 4, a);
    return l;
}

std::unique_ptr<pkv_block_table> create_block_table(pkv_pool *pool, const MirrorLayout &layout) {
    auto t = std::make_unique<pkv_block_table>();
    t->pool = pool;
    t->mirror_layout = layout;
    t->row_used.assign(size_t(layout.max_batch), 0);
    t->batch_rows.reserve(size_t(layout.max_batch));
    t->mirror = DeviceBuffer(pool->device, size_t(layout.bytes));
    if (pool->is_cuda()) {
        t->staging = DeviceBuffer(pkv_device{PKV_DEVICE_CUDA_HOST, 0}, size_t(layout.bytes));
        fill_defaults(t->staging.get(), layout);
        cuda_copy_blocking(pool->device, t->mirror.get(), t->staging.get(), size_t(layout.bytes));
        t->upload_done = cuda_event_create(pool->device);
    } else {
        fill_defaults(t->mirror.get(), layout);
    }
    return t;
}

void block_table_append(pkv_block_table &t, RequestBlocks &r, int64_t n, int64_t *out_slots, pkv_stream stream) {
    pkv_pool &pool = *t.pool;
    BlockAllocator &alloc = pool.device_blocks;
    const int64_t bs = pool.layout.block_size, start = r.num_tokens;
    // The partial last block is written by this append: a block shared with another request
    // (or retained by the caller) gets a private copy first.
    const bool cow = start % bs != 0 && alloc.refcount(r.blocks.back()) > 1;
    const int64_t grow = blocks_for(start + n, bs) - int64_t(r.blocks.size());
    const int64_t fresh = grow + (cow ? 1 : 0);

    // The new ids go straight into the request's vector, reserved first: the only allocation
    // that can fail (bad_alloc) happens before any block is taken, so a failure changes nothing.
    const size_t old = r.blocks.size();
    r.blocks.reserve(old + size_t(fresh));
    r.blocks.resize(old + size_t(fresh));
    if (fresh > 0 && !alloc.allocate(fresh, r.blocks.data() + old)) {
        r.blocks.resize(old);
        fail(PKV_ERROR_OUT_OF_BLOCKS, "appending " + std::to_string(n) + " tokens needs " + std::to_string(fresh) +
                                          " free blocks, the pool has " + std::to_string(alloc.free_count()));
    }
    if (cow) {
        const int32_t shared = r.blocks[old - 1], priv = r.blocks[old];
        try {
            copy_block(pool, priv, shared, stream);
        } catch (...) {
            alloc.release(r.blocks.data() + old, fresh);  // nothing enqueued: undo the allocation
            r.blocks.resize(old);
            throw;
        }
        r.blocks[old - 1] = priv;
        r.blocks[old] = r.blocks.back();
        r.blocks.pop_back();
        release_or_fail(alloc, &shared, 1);  // the other holders keep the original
    }
    r.num_tokens = start + n;
    if (out_slots)
        for (int64_t i = 0; i < n; ++i) out_slots[i] = token_slot(r.blocks, bs, start + i);
}

void block_table_fork(pkv_block_table &t, const RequestBlocks &parent, uint64_t child) {
    BlockAllocator &alloc = t.pool->device_blocks;
    RequestBlocks copy = parent;  // before the emplace, which may rehash away `parent`
    const int64_t n = int64_t(copy.blocks.size());
    if (!alloc.retain(copy.blocks.data(), n)) fail(PKV_ERROR_INTERNAL, "block table holds a block the allocator does not");
    try {
        t.requests.emplace(child, std::move(copy));
    } catch (...) {
        alloc.release(parent.blocks.data(), n);
        throw;
    }
}

void block_table_truncate(pkv_block_table &t, RequestBlocks &r, int64_t n) {
    const int64_t keep = blocks_for(n, t.pool->layout.block_size);
    const int64_t drop = int64_t(r.blocks.size()) - keep;
    if (drop > 0) release_or_fail(t.pool->device_blocks, r.blocks.data() + keep, drop);
    r.blocks.resize(size_t(keep));
    r.num_tokens = n;
}

void block_table_remove(pkv_block_table &t, uint64_t request) {
    auto it = t.requests.find(request);
    release_or_fail(t.pool->device_blocks, it->second.blocks.data(), int64_t(it->second.blocks.size()));
    t.requests.erase(it);
}

void block_table_upload(pkv_block_table &t, const RequestBlocks *const *rows, const int64_t *new_tokens,
                        int64_t batch, pkv_stream stream) {
    const MirrorLayout &l = t.mirror_layout;
    const bool cuda = t.pool->is_cuda();
    if (t.upload_pending) {  // the previous copy may still read the staging
        cuda_event_synchronize(t.upload_done);
        t.upload_pending = false;
    }
    char *h = host_buffer(t);
    int32_t *seq_lens = array_at<int32_t>(h, l.seq_lens);
    int32_t *qsl = array_at<int32_t>(h, l.query_start_loc);
    int64_t *slots = array_at<int64_t>(h, l.slot_mapping);
    int32_t *table = array_at<int32_t>(h, l.block_table);
    const int64_t bs = t.pool->layout.block_size;

    int64_t total = 0;
    for (int64_t b = 0; b < batch; ++b) {
        const RequestBlocks &r = *rows[b];
        const int64_t used = int64_t(r.blocks.size());
        int32_t *row = table + b * l.max_blocks;
        std::copy(r.blocks.begin(), r.blocks.end(), row);
        if (t.row_used[size_t(b)] > used) std::fill(row + used, row + t.row_used[size_t(b)], 0);
        t.row_used[size_t(b)] = used;
        seq_lens[b] = int32_t(r.num_tokens);
        qsl[b] = int32_t(total);
        for (int64_t p = r.num_tokens - new_tokens[b]; p < r.num_tokens; ++p) slots[total++] = token_slot(r.blocks, bs, p);
    }
    for (int64_t b = batch; b < t.staged_batch; ++b) {  // rows of the previous batch past this one
        std::fill_n(table + b * l.max_blocks, t.row_used[size_t(b)], 0);
        t.row_used[size_t(b)] = 0;
        seq_lens[b] = 0;
    }
    std::fill(qsl + batch, qsl + l.max_batch + 1, int32_t(total));
    if (t.staged_tokens > total) std::fill(slots + total, slots + t.staged_tokens, int64_t(-1));
    const int64_t rows_changed = std::max(batch, t.staged_batch);
    t.staged_batch = batch;
    t.staged_tokens = total;

    if (cuda) {
        // One copy of the prefix that can differ from the device mirror (everything after a
        // failed copy); the rows past it are zero on both sides.
        const int64_t bytes = t.device_stale ? l.bytes : l.prefix_bytes(rows_changed);
        t.device_stale = true;
        cuda_copy(t.mirror.get(), h, size_t(bytes), stream);
        cuda_event_record(t.upload_done, stream);
        t.upload_pending = true;
        t.device_stale = false;
    }
    t.last_batch = batch;
    t.last_tokens = total;
}

pkv_batch_mirror block_table_mirror(const pkv_block_table &t) {
    const MirrorLayout &l = t.mirror_layout;
    const pkv_device dev = t.pool->device;
    char *base = t.mirror.get();
    auto tensor = [&](int64_t offset, pkv_dtype dtype, int64_t rows, int64_t cols) {
        pkv_tensor x;
        std::memset(&x, 0, sizeof x);
        x.data = base + offset;
        x.dtype = dtype;
        x.device = dev;
        x.ndim = cols ? 2 : 1;
        x.shape[0] = rows;
        x.strides[0] = cols ? cols : 1;
        if (cols) {
            x.shape[1] = cols;
            x.strides[1] = 1;
        }
        return x;
    };
    pkv_batch_mirror m;
    std::memset(&m, 0, sizeof m);
    m.struct_size = sizeof m;
    m.block_table = tensor(l.block_table, PKV_DTYPE_INT32, l.max_batch, l.max_blocks);
    m.slot_mapping = tensor(l.slot_mapping, PKV_DTYPE_INT64, l.max_tokens, 0);
    m.seq_lens = tensor(l.seq_lens, PKV_DTYPE_INT32, l.max_batch, 0);
    m.query_start_loc = tensor(l.query_start_loc, PKV_DTYPE_INT32, l.max_batch + 1, 0);
    m.batch = t.last_batch;
    m.num_tokens = t.last_tokens;
    return m;
}

}  // namespace pkv

pkv_block_table::~pkv_block_table() {
    if (upload_pending) {
        try {
            pkv::cuda_event_synchronize(upload_done);  // the copy reads the staging freed below
        } catch (...) {
            // A device fault: it is reported on the caller's next synchronization.
        }
    }
    pkv::cuda_event_destroy(upload_done);
    if (pool)
        for (auto &entry : requests) pool->device_blocks.release(entry.second.blocks.data(), int64_t(entry.second.blocks.size()));
}
