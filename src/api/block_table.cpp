// pkv_block_table_*: validation and entry points (state and mirror logic in core/block_table).

#include "api/error_state.h"
#include "api/handle_checks.h"
#include "api/struct_size.h"
#include "api/validate.h"
#include "core/block_table.h"

using namespace pkv;
using namespace pkv::api;

namespace {

constexpr int64_t kDefaultMaxBatch = 256, kDefaultMaxBlocks = 512, kDefaultMaxTokens = 8192;

pkv_block_table &checked_table(pkv_block_table *t) {
    require(t != nullptr, PKV_ERROR_INVALID_ARGUMENT, "table is NULL");
    return *t;
}
const pkv_block_table &checked_table(const pkv_block_table *t) {
    require(t != nullptr, PKV_ERROR_INVALID_ARGUMENT, "table is NULL");
    return *t;
}

template <typename Table> auto &known_request(Table &t, uint64_t request, const char *name = "request") {
    auto it = t.requests.find(request);
    require(it != t.requests.end(), PKV_ERROR_INVALID_ARGUMENT, name, " ", request, " is not in the table");
    return it->second;
}

void table_create(pkv_block_table **out, pkv_pool *pool, const pkv_block_table_params *params) {
    require(out != nullptr, PKV_ERROR_INVALID_ARGUMENT, "out is NULL");
    *out = nullptr;
    require(pool != nullptr, PKV_ERROR_INVALID_ARGUMENT, "pool is NULL");
    pkv_block_table_params p = PKV_BLOCK_TABLE_PARAMS_INIT;
    if (params) p = read_versioned(params, "params");
    require(p.flags == 0, PKV_ERROR_INVALID_ARGUMENT, "params->flags must be 0, got ", p.flags);
    require(p.max_batch >= 0, PKV_ERROR_INVALID_ARGUMENT, "params->max_batch must be >= 0, got ", p.max_batch);
    require(p.max_blocks >= 0, PKV_ERROR_INVALID_ARGUMENT, "params->max_blocks must be >= 0, got ", p.max_blocks);
    require(p.max_tokens >= 0, PKV_ERROR_INVALID_ARGUMENT, "params->max_tokens must be >= 0, got ", p.max_tokens);
    const int64_t batch = p.max_batch ? p.max_batch : kDefaultMaxBatch;
    const int64_t blocks = p.max_blocks ? p.max_blocks : kDefaultMaxBlocks;
    const int64_t tokens = p.max_tokens ? p.max_tokens : kDefaultMaxTokens;
    // query_start_loc holds up to max_tokens in int32, and has max_batch + 1 entries.
    require(tokens <= INT32_MAX, PKV_ERROR_INVALID_ARGUMENT, "params->max_tokens must be <= 2^31 - 1, got ", tokens);
    require(batch < INT32_MAX, PKV_ERROR_INVALID_ARGUMENT, "params->max_batch must be < 2^31 - 1, got ", batch);
    const int64_t bytes = sat_add(sat_mul(sat_mul(batch, blocks), 4), sat_add(sat_mul(tokens, 8), sat_mul(batch, 8)));
    require(bytes < (int64_t(1) << 40), PKV_ERROR_INVALID_ARGUMENT,
            "the mirror of params->max_batch x max_blocks x max_tokens would exceed 2^40 bytes");
    auto t = create_block_table(pool, make_mirror_layout(batch, blocks, tokens));
    ++pool->live_children;
    *out = t.release();
}

void table_append(int64_t *out_slots, pkv_block_table *table, uint64_t request, int64_t n, pkv_stream stream) {
    pkv_block_table &t = checked_table(table);
    RequestBlocks &r = known_request(t, request);
    require(n >= 0, PKV_ERROR_INVALID_ARGUMENT, "n must be >= 0, got ", n);
    // seq_lens are int32 in the mirror and in the attention metadata built from it.
    require(n <= INT32_MAX - r.num_tokens, PKV_ERROR_INVALID_ARGUMENT, "request ", request, " has ", r.num_tokens,
            " tokens; ", n, " more would exceed 2^31 - 1");
    if (n == 0) return;
    block_table_append(t, r, n, out_slots, stream);
}

void table_upload(pkv_block_table *table, const uint64_t *requests, const int64_t *new_tokens, int64_t batch,
                  pkv_stream stream) {
    pkv_block_table &t = checked_table(table);
    const MirrorLayout &l = t.mirror_layout;
    require(batch >= 0 && batch <= l.max_batch, PKV_ERROR_INVALID_ARGUMENT, "batch ", batch,
            " is outside [0, max_batch = ", l.max_batch, "]");
    require(batch == 0 || requests != nullptr, PKV_ERROR_INVALID_ARGUMENT, "requests is NULL");
    require(batch == 0 || new_tokens != nullptr, PKV_ERROR_INVALID_ARGUMENT, "new_tokens is NULL");
    t.batch_rows.clear();  // reserved for max_batch: no allocation
    int64_t total = 0;
    for (int64_t b = 0; b < batch; ++b) {
        auto it = t.requests.find(requests[b]);
        require(it != t.requests.end(), PKV_ERROR_INVALID_ARGUMENT, "requests[", b, "] = ", requests[b],
                " is not in the table");
        const RequestBlocks &r = it->second;
        require(int64_t(r.blocks.size()) <= l.max_blocks, PKV_ERROR_INVALID_ARGUMENT, "requests[", b, "] = ",
                requests[b], " has ", r.blocks.size(), " blocks, more than the mirror's max_blocks ", l.max_blocks);
        require(new_tokens[b] >= 0 && new_tokens[b] <= r.num_tokens, PKV_ERROR_INVALID_ARGUMENT, "new_tokens[", b,
                "] = ", new_tokens[b], " is outside [0, ", r.num_tokens, "] (the request's token count)");
        total += new_tokens[b];
        require(total <= l.max_tokens, PKV_ERROR_INVALID_ARGUMENT, "the batch's new tokens exceed the mirror's max_tokens ",
                l.max_tokens);
        t.batch_rows.push_back(&r);
    }
    block_table_upload(t, t.batch_rows.data(), new_tokens, batch, stream);
}

}  // namespace

extern "C" {

PKV_API pkv_status pkv_block_table_params_init(pkv_block_table_params *params, size_t struct_size) {
    return guarded("pkv_block_table_params_init", [&] {
        init_versioned(params, struct_size, "params", "pkv_block_table_params");
    });
}

PKV_API pkv_status pkv_block_table_create(pkv_block_table **out, pkv_pool *pool, const pkv_block_table_params *params) {
    return guarded("pkv_block_table_create", [&] { table_create(out, pool, params); });
}

PKV_API pkv_status pkv_block_table_destroy(pkv_block_table *table) {
    return guarded("pkv_block_table_destroy", [&] {
        if (table == nullptr) return;
        pkv_pool *pool = table->pool;
        delete table;
        --pool->live_children;
    });
}

PKV_API pkv_status pkv_block_table_add(pkv_block_table *table, uint64_t request) {
    return guarded("pkv_block_table_add", [&] {
        pkv_block_table &t = checked_table(table);
        require(t.requests.count(request) == 0, PKV_ERROR_INVALID_ARGUMENT, "request ", request, " already exists");
        t.requests.emplace(request, RequestBlocks{});
    });
}

PKV_API pkv_status pkv_block_table_append(int64_t *out_slots, pkv_block_table *table, uint64_t request, int64_t n,
                                          pkv_stream stream) {
    return guarded("pkv_block_table_append", [&] { table_append(out_slots, table, request, n, stream); });
}

PKV_API pkv_status pkv_block_table_fork(pkv_block_table *table, uint64_t parent, uint64_t child) {
    return guarded("pkv_block_table_fork", [&] {
        pkv_block_table &t = checked_table(table);
        const RequestBlocks &p = known_request(t, parent, "parent");
        require(t.requests.count(child) == 0, PKV_ERROR_INVALID_ARGUMENT, "child ", child, " already exists");
        block_table_fork(t, p, child);
    });
}

PKV_API pkv_status pkv_block_table_truncate(pkv_block_table *table, uint64_t request, int64_t n) {
    return guarded("pkv_block_table_truncate", [&] {
        pkv_block_table &t = checked_table(table);
        RequestBlocks &r = known_request(t, request);
        require(n >= 0 && n <= r.num_tokens, PKV_ERROR_INVALID_ARGUMENT, "n ", n, " is outside [0, ", r.num_tokens,
                "] (request ", request, "'s token count)");
        block_table_truncate(t, r, n);
    });
}

PKV_API pkv_status pkv_block_table_remove(pkv_block_table *table, uint64_t request) {
    return guarded("pkv_block_table_remove", [&] {
        pkv_block_table &t = checked_table(table);
        known_request(t, request);
        block_table_remove(t, request);
    });
}

PKV_API pkv_status pkv_block_table_num_tokens(int64_t *out, const pkv_block_table *table, uint64_t request) {
    return guarded("pkv_block_table_num_tokens", [&] {
        require(out != nullptr, PKV_ERROR_INVALID_ARGUMENT, "out is NULL");
        *out = known_request(checked_table(table), request).num_tokens;
    });
}

PKV_API pkv_status pkv_block_table_blocks(int32_t *out, int64_t capacity, int64_t *count,
                                          const pkv_block_table *table, uint64_t request) {
    return guarded("pkv_block_table_blocks", [&] {
        require(count != nullptr, PKV_ERROR_INVALID_ARGUMENT, "count is NULL");
        require(capacity >= 0, PKV_ERROR_INVALID_ARGUMENT, "capacity must be >= 0, got ", capacity);
        require(capacity == 0 || out != nullptr, PKV_ERROR_INVALID_ARGUMENT, "out is NULL with capacity ", capacity);
        const RequestBlocks &r = known_request(checked_table(table), request);
        const int64_t n = int64_t(r.blocks.size());
        std::copy(r.blocks.begin(), r.blocks.begin() + (n < capacity ? n : capacity), out);
        *count = n;
    });
}

PKV_API pkv_status pkv_block_table_upload(pkv_block_table *table, const uint64_t *requests,
                                          const int64_t *new_tokens, int64_t batch, pkv_stream stream) {
    return guarded("pkv_block_table_upload", [&] { table_upload(table, requests, new_tokens, batch, stream); });
}

PKV_API pkv_status pkv_block_table_mirror(pkv_batch_mirror *out, const pkv_block_table *table) {
    return guarded("pkv_block_table_mirror", [&] {
        require(out != nullptr, PKV_ERROR_INVALID_ARGUMENT, "out is NULL");
        write_versioned(out, block_table_mirror(checked_table(table)), "out");
    });
}

}  // extern "C"
