// Helpers of the handle tests (pool, block tables, slots): owning wrappers, layer specs, and
// exact write / gather through a pool's layer views (values representable in the cache format,
// so a round trip is bit-exact and any misplaced byte shows).
#pragma once

#include <memory>

#include "test_common.h"

namespace pkvt {

struct PoolDeleter {
    void operator()(pkv_pool *p) const { EXPECT_EQ(pkv_pool_destroy(p), PKV_SUCCESS) << pkv_last_error_message(); }
};
struct TableDeleter {
    void operator()(pkv_block_table *t) const {
        EXPECT_EQ(pkv_block_table_destroy(t), PKV_SUCCESS) << pkv_last_error_message();
    }
};
struct SlotsDeleter {
    void operator()(pkv_slots *s) const { EXPECT_EQ(pkv_slots_destroy(s), PKV_SUCCESS) << pkv_last_error_message(); }
};
using PoolPtr = std::unique_ptr<pkv_pool, PoolDeleter>;
using TablePtr = std::unique_ptr<pkv_block_table, TableDeleter>;
using SlotsPtr = std::unique_ptr<pkv_slots, SlotsDeleter>;

inline pkv_layer_spec layer_spec(Fmt f, pkv_head_layout layout, int64_t heads, int64_t dk, int64_t dv,
                                 bool k_only = false, pkv_scale_mode mode = PKV_SCALE_PER_TENSOR) {
    pkv_layer_spec s = PKV_LAYER_SPEC_INIT;
    s.format = fmt_cache_format(f);
    s.layout = layout;
    s.scale_mode = mode;
    s.num_heads = heads;
    s.head_size_k = dk;
    s.head_size_v = k_only ? 0 : dv;
    s.flags = k_only ? PKV_LAYER_K_ONLY : 0u;
    return s;
}

inline PoolPtr make_pool(Backend be, int64_t block_size, const std::vector<pkv_layer_spec> &specs, int64_t num_blocks,
                         int64_t num_host_blocks = 0) {
    pkv_pool_params p = PKV_POOL_PARAMS_INIT;
    p.device = backend_device(be);
    p.block_size = block_size;
    p.num_layers = int64_t(specs.size());
    p.layers = specs.data();
    p.num_blocks = num_blocks;
    p.num_host_blocks = num_host_blocks;
    pkv_pool *pool = nullptr;
    const pkv_status s = pkv_pool_create(&pool, &p);
    EXPECT_EQ(s, PKV_SUCCESS) << pkv_last_error_message();
    return PoolPtr(pool);
}

inline TablePtr make_table(pkv_pool *pool, int64_t max_batch = 0, int64_t max_blocks = 0, int64_t max_tokens = 0) {
    pkv_block_table_params p = PKV_BLOCK_TABLE_PARAMS_INIT;
    p.max_batch = max_batch;
    p.max_blocks = max_blocks;
    p.max_tokens = max_tokens;
    pkv_block_table *t = nullptr;
    EXPECT_EQ(pkv_block_table_create(&t, pool, &p), PKV_SUCCESS) << pkv_last_error_message();
    return TablePtr(t);
}

inline pkv_pool_stats pool_stats(const pkv_pool *pool) {
    pkv_pool_stats s;
    std::memset(&s, 0, sizeof s);
    s.struct_size = sizeof s;
    EXPECT_EQ(pkv_pool_get_stats(&s, pool), PKV_SUCCESS) << pkv_last_error_message();
    return s;
}

inline pkv_cache_view pool_view(const pkv_pool *pool, int64_t layer, pkv_tier tier = PKV_TIER_DEVICE) {
    pkv_cache_view v = PKV_CACHE_VIEW_INIT;
    EXPECT_EQ(pkv_pool_layer_view(&v, pool, layer, tier), PKV_SUCCESS) << pkv_last_error_message();
    return v;
}

inline Fmt fmt_of(pkv_cache_format f) {
    switch (f) {
        case PKV_CACHE_FORMAT_F32: return Fmt::F32;
        case PKV_CACHE_FORMAT_F16: return Fmt::F16;
        case PKV_CACHE_FORMAT_BF16: return Fmt::BF16;
        case PKV_CACHE_FORMAT_FP8_E4M3: return Fmt::E4M3;
        default: return Fmt::E5M2;
    }
}

inline std::vector<int32_t> table_blocks(const pkv_block_table *t, uint64_t request) {
    int64_t count = 0;
    EXPECT_EQ(pkv_block_table_blocks(nullptr, 0, &count, t, request), PKV_SUCCESS) << pkv_last_error_message();
    std::vector<int32_t> ids(static_cast<size_t>(count));
    if (count) {
        EXPECT_EQ(pkv_block_table_blocks(ids.data(), count, &count, t, request), PKV_SUCCESS);
    }
    return ids;
}

inline int64_t table_tokens(const pkv_block_table *t, uint64_t request) {
    int64_t n = -1;
    EXPECT_EQ(pkv_block_table_num_tokens(&n, t, request), PKV_SUCCESS) << pkv_last_error_message();
    return n;
}

inline int32_t refcount(const pkv_pool *pool, int32_t id, pkv_tier tier = PKV_TIER_DEVICE) {
    int32_t c = -1;
    EXPECT_EQ(pkv_pool_block_refcount(&c, pool, tier, id), PKV_SUCCESS) << pkv_last_error_message();
    return c;
}

// Dense K (and V) rows in f32 for `tokens` tokens of a view, every value exactly representable in
// the view's format times its scale (scales are powers of two in these tests).
struct Rows {
    std::vector<float> k, v;
};
inline Rows exact_rows(Rng &r, const pkv_cache_view &view, int64_t tokens, const std::vector<float> &k_scale = {},
                       const std::vector<float> &v_scale = {}) {
    const Fmt f = fmt_of(view.format);
    const int64_t H = view.num_heads, Dk = view.head_size_k, Dv = view.head_size_v ? view.head_size_v : Dk;
    auto fill = [&](std::vector<float> &out, int64_t D, const std::vector<float> &scale) {
        out.resize(size_t(tokens * H * D));
        for (int64_t t = 0; t < tokens; ++t)
            for (int64_t h = 0; h < H; ++h)
                for (int64_t d = 0; d < D; ++d) {
                    const float s = scale.empty() ? 1.0f : scale[scale.size() == 1 ? 0 : size_t(h)];
                    out[size_t((t * H + h) * D + d)] = oracle_to_float(f, random_value_bits(r, f)) * s;
                }
    };
    Rows rows;
    fill(rows.k, Dk, k_scale);
    if (view.v_data) fill(rows.v, Dv, v_scale);
    return rows;
}

// pkv_write_kv of f32 rows to `slots` of a view on `be` (enqueued on `stream`).
inline void write_rows(Backend be, const pkv_cache_view &view, const Rows &rows, const std::vector<int64_t> &slots,
                       pkv_stream stream) {
    const pkv_device dev = backend_device(be);
    const int64_t T = int64_t(slots.size()), H = view.num_heads, Dk = view.head_size_k;
    const int64_t Dv = view.head_size_v ? view.head_size_v : Dk;
    Buf kb = to_device(be, rows.k), vb = to_device(be, rows.v), sb = to_device(be, slots);
    pkv_tensor kt = make_tensor(kb.ptr(), PKV_DTYPE_F32, dev, {T, H, Dk}, {H * Dk, Dk, 1});
    pkv_tensor vt = make_tensor(vb.ptr(), PKV_DTYPE_F32, dev, {T, H, Dv}, {H * Dv, Dv, 1});
    pkv_tensor st = make_tensor(sb.ptr(), PKV_DTYPE_INT64, dev, {T}, {1});
    ASSERT_EQ(pkv_write_kv(&view, &kt, view.v_data ? &vt : nullptr, &st, nullptr, stream), PKV_SUCCESS)
        << pkv_last_error_message();
    device_sync(be);  // the input buffers die at return
}

// pkv_gather_kv of single slots (one request per slot: block table row = its block, seq_start =
// its offset) into f32 rows.
inline Rows gather_slots(Backend be, const pkv_cache_view &view, const std::vector<int64_t> &slots, pkv_stream stream) {
    const pkv_device dev = backend_device(be);
    const int64_t T = int64_t(slots.size()), H = view.num_heads, Dk = view.head_size_k;
    const int64_t Dv = view.head_size_v ? view.head_size_v : Dk;
    std::vector<int32_t> table, cu{0}, starts;
    for (int64_t s : slots) {
        table.push_back(int32_t(s / view.block_size));
        starts.push_back(int32_t(s % view.block_size));
        cu.push_back(cu.back() + 1);
    }
    Rows out;
    out.k.assign(size_t(T * H * Dk), -7.0f);
    if (view.v_data) out.v.assign(size_t(T * H * Dv), -7.0f);
    Buf ok = to_device(be, out.k), ov = to_device(be, out.v);
    Buf tb = to_device(be, table), cb = to_device(be, cu), stb = to_device(be, starts);
    pkv_tensor okt = make_tensor(ok.ptr(), PKV_DTYPE_F32, dev, {T, H, Dk}, {H * Dk, Dk, 1});
    pkv_tensor ovt = make_tensor(ov.ptr(), PKV_DTYPE_F32, dev, {T, H, Dv}, {H * Dv, Dv, 1});
    pkv_tensor btt = make_tensor(tb.ptr(), PKV_DTYPE_INT32, dev, {T, 1}, {1, 1});
    pkv_tensor cut = make_tensor(cb.ptr(), PKV_DTYPE_INT32, dev, {T + 1}, {1});
    pkv_tensor stt = make_tensor(stb.ptr(), PKV_DTYPE_INT32, dev, {T}, {1});
    EXPECT_EQ(pkv_gather_kv(&okt, view.v_data ? &ovt : nullptr, &view, &btt, &cut, &stt, nullptr, stream), PKV_SUCCESS)
        << pkv_last_error_message();
    device_sync(be);
    ok.download(out.k.data(), out.k.size() * 4);
    if (view.v_data) ov.download(out.v.data(), out.v.size() * 4);
    return out;
}

inline ::testing::AssertionResult rows_equal(const Rows &expected, const Rows &got, const std::string &what) {
    auto r = bytes_equal(as_bytes(expected.k), as_bytes(got.k), nullptr, what + " (K)");
    if (!r) return r;
    return bytes_equal(as_bytes(expected.v), as_bytes(got.v), nullptr, what + " (V)");
}

}  // namespace pkvt
