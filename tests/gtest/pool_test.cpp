// pkv_pool: creation and its parameter errors, layer views (usable by pkv_write_kv /
// pkv_gather_kv on every layer), stats, bytes per token, scales, the block allocator, BUSY.
// Backend suites (Cpu/Pool, Cuda/Pool) run on a CPU pool and, with a device, a CUDA pool.
#include "handles_common.h"

namespace pkvt {
namespace {

// Five layers of different formats, layouts, head counts and sizes (Dk != Dv, K only).
std::vector<pkv_layer_spec> mixed_specs() {
    return {layer_spec(Fmt::F16, PKV_HEAD_LAYOUT_NHD, 2, 64, 64),
            layer_spec(Fmt::BF16, PKV_HEAD_LAYOUT_HND, 4, 32, 48),
            layer_spec(Fmt::E4M3, PKV_HEAD_LAYOUT_NHD, 2, 80, 80, false, PKV_SCALE_PER_HEAD),
            layer_spec(Fmt::F32, PKV_HEAD_LAYOUT_HND, 1, 46, 0, true),
            layer_spec(Fmt::E5M2, PKV_HEAD_LAYOUT_HND, 3, 16, 24)};
}

class Pool : public ::testing::TestWithParam<Backend> {};

TEST_P(Pool, ViewsRoundTripOnEveryLayer) {
    const Backend be = GetParam();
    PKVT_SKIP_IF_NO_BACKEND(be);
    const auto specs = mixed_specs();
    const int64_t BS = 8, NB = 12;
    PoolPtr pool = make_pool(be, BS, specs, NB);
    ASSERT_TRUE(pool);
    const pkv_pool_stats st = pool_stats(pool.get());
    Rng r(7);
    // Every slot of the pool, in random order, written on every layer; then everything read back
    // (a layer or block overlapping another would show as a mismatch).
    std::vector<int64_t> slots(size_t(NB * BS));
    for (size_t i = 0; i < slots.size(); ++i) slots[i] = int64_t(i);
    r.shuffle(slots);
    std::vector<Rows> written;
    for (int64_t l = 0; l < int64_t(specs.size()); ++l) {
        const pkv_cache_view v = pool_view(pool.get(), l);
        ASSERT_EQ(pkv_cache_view_check(&v), PKV_SUCCESS) << pkv_last_error_message();
        EXPECT_EQ(v.device.type, backend_device(be).type);
        EXPECT_EQ(v.num_blocks, NB);
        EXPECT_EQ(v.block_size, BS);
        EXPECT_EQ(v.k_stride_block, st.bytes_per_block);  // block-major: all layers of a block together
        EXPECT_EQ(v.v_data == nullptr, (specs[size_t(l)].flags & PKV_LAYER_K_ONLY) != 0);
        written.push_back(exact_rows(r, v, int64_t(slots.size())));
        write_rows(be, v, written.back(), slots, nullptr);
    }
    for (int64_t l = 0; l < int64_t(specs.size()); ++l) {
        const pkv_cache_view v = pool_view(pool.get(), l);
        EXPECT_TRUE(rows_equal(written[size_t(l)], gather_slots(be, v, slots, nullptr), "layer " + std::to_string(l)));
    }
}

TEST_P(Pool, StatsAndBytesPerToken) {
    const Backend be = GetParam();
    PKVT_SKIP_IF_NO_BACKEND(be);
    const auto specs = mixed_specs();
    PoolPtr pool = make_pool(be, 16, specs, 10, 3);
    ASSERT_TRUE(pool);
    const pkv_pool_stats s = pool_stats(pool.get());
    EXPECT_EQ(s.block_size, 16);
    EXPECT_EQ(s.num_layers, 5);
    EXPECT_EQ(s.total_blocks, 10);
    EXPECT_EQ(s.free_blocks, 10);
    EXPECT_EQ(s.total_host_blocks, 3);
    EXPECT_EQ(s.free_host_blocks, 3);
    EXPECT_EQ(s.bytes_per_block % 256, 0);
    int64_t payload = 0;
    const int64_t expected[] = {2 * (2 * 64 * 2), 2 * 4 * 32 + 2 * 4 * 48, 2 * 80 * 2, 46 * 4, 3 * 16 + 3 * 24};
    for (int64_t l = 0; l < 5; ++l) {
        int64_t b = -1;
        ASSERT_EQ(pkv_pool_bytes_per_token(&b, pool.get(), l), PKV_SUCCESS) << pkv_last_error_message();
        EXPECT_EQ(b, expected[l]) << "layer " << l;
        payload += b * 16;
    }
    EXPECT_GE(s.bytes_per_block, payload);
    EXPECT_LT(s.bytes_per_block, payload + 10 * 256);  // at most one alignment pad per region
    int64_t b = 0;
    EXPECT_EQ(pkv_pool_bytes_per_token(&b, pool.get(), 5), PKV_ERROR_INVALID_ARGUMENT);
    EXPECT_EQ(pkv_pool_bytes_per_token(&b, pool.get(), -1), PKV_ERROR_INVALID_ARGUMENT);
    EXPECT_EQ(pkv_pool_bytes_per_token(nullptr, pool.get(), 0), PKV_ERROR_INVALID_ARGUMENT);
}

TEST_P(Pool, StatsStructSize) {
    const Backend be = GetParam();
    PKVT_SKIP_IF_NO_BACKEND(be);
    PoolPtr pool = make_pool(be, 16, mixed_specs(), 4);
    ASSERT_TRUE(pool);
    pkv_pool_stats s;
    std::memset(&s, 0, sizeof s);
    EXPECT_EQ(pkv_pool_get_stats(&s, pool.get()), PKV_ERROR_STRUCT_SIZE);  // struct_size 0
    s.struct_size = sizeof s - 8;
    EXPECT_EQ(pkv_pool_get_stats(&s, pool.get()), PKV_ERROR_STRUCT_SIZE);
    // A newer caller's struct: the known fields filled, the unknown tail zeroed, struct_size kept.
    struct Newer {
        pkv_pool_stats s;
        int64_t extra[2];
    } n;
    std::memset(&n, 0x5A, sizeof n);
    n.s.struct_size = sizeof n;
    ASSERT_EQ(pkv_pool_get_stats(&n.s, pool.get()), PKV_SUCCESS) << pkv_last_error_message();
    EXPECT_EQ(n.s.struct_size, sizeof n);
    EXPECT_EQ(n.s.total_blocks, 4);
    EXPECT_EQ(n.extra[0], 0);
    EXPECT_EQ(n.extra[1], 0);
    EXPECT_EQ(pkv_pool_get_stats(nullptr, pool.get()), PKV_ERROR_INVALID_ARGUMENT);
    s.struct_size = sizeof s;
    EXPECT_EQ(pkv_pool_get_stats(&s, nullptr), PKV_ERROR_INVALID_ARGUMENT);
}

TEST_P(Pool, ScalesStartAtOneAndCanBeSet) {
    const Backend be = GetParam();
    PKVT_SKIP_IF_NO_BACKEND(be);
    const auto specs = mixed_specs();
    PoolPtr pool = make_pool(be, 8, specs, 6, 2);
    ASSERT_TRUE(pool);
    auto read_scales = [&](const pkv_cache_view &v, int64_t n, bool host) {
        std::vector<float> out(size_t(2 * n), 0.0f);
        pkv_device src = host ? pkv_device{PKV_DEVICE_CPU, 0} : backend_device(be);
        const pkv_device cpu{PKV_DEVICE_CPU, 0};
        EXPECT_EQ(pkv_copy(out.data(), cpu, v.k_scale, src, size_t(n) * 4, nullptr), PKV_SUCCESS);
        EXPECT_EQ(pkv_copy(out.data() + n, cpu, v.v_scale, src, size_t(n) * 4, nullptr), PKV_SUCCESS);
        EXPECT_EQ(pkv_stream_synchronize(nullptr), PKV_SUCCESS);
        return out;
    };
    // Layer 2: E4M3 per head (2 heads); layer 4: E5M2 per tensor. Non-FP8 views have no scales.
    pkv_cache_view v2 = pool_view(pool.get(), 2), v4 = pool_view(pool.get(), 4);
    EXPECT_EQ(pool_view(pool.get(), 0).k_scale, nullptr);
    ASSERT_NE(v2.k_scale, nullptr);
    EXPECT_EQ(v2.scale_mode, PKV_SCALE_PER_HEAD);
    EXPECT_EQ(read_scales(v2, 2, false), (std::vector<float>{1, 1, 1, 1}));
    EXPECT_EQ(read_scales(v4, 1, false), (std::vector<float>{1, 1}));

    TestStream stream(be, true);
    const float k2[] = {0.5f, 4.0f}, v2s[] = {2.0f, 0.25f}, k4[] = {8.0f}, v4s[] = {0.125f};
    ASSERT_EQ(pkv_pool_set_scales(pool.get(), 2, k2, v2s, stream.get()), PKV_SUCCESS) << pkv_last_error_message();
    ASSERT_EQ(pkv_pool_set_scales(pool.get(), 4, k4, v4s, stream.get()), PKV_SUCCESS) << pkv_last_error_message();
    stream.sync(be);
    EXPECT_EQ(read_scales(v2, 2, false), (std::vector<float>{0.5f, 4.0f, 2.0f, 0.25f}));
    EXPECT_EQ(read_scales(v4, 1, false), (std::vector<float>{8.0f, 0.125f}));
    // The host tier's views (CPU views) carry host copies of the same scales.
    const pkv_cache_view h2 = pool_view(pool.get(), 2, PKV_TIER_HOST);
    EXPECT_EQ(h2.device.type, PKV_DEVICE_CPU);
    EXPECT_EQ(read_scales(h2, 2, true), (std::vector<float>{0.5f, 4.0f, 2.0f, 0.25f}));

    // The scales are used: values x * scale round-trip exactly.
    Rng r(3);
    std::vector<int64_t> slots = {0, 5, 17, 30, 47};
    for (int64_t l : {2, 4}) {
        const pkv_cache_view v = pool_view(pool.get(), l);
        const Rows rows = l == 2 ? exact_rows(r, v, 5, {0.5f, 4.0f}, {2.0f, 0.25f}) : exact_rows(r, v, 5, {8.0f}, {0.125f});
        write_rows(be, v, rows, slots, nullptr);
        EXPECT_TRUE(rows_equal(rows, gather_slots(be, v, slots, nullptr), "layer " + std::to_string(l)));
    }

    // Errors: non-FP8 layer, NULL arrays, bad values, bad layer.
    EXPECT_EQ(pkv_pool_set_scales(pool.get(), 0, k4, v4s, nullptr), PKV_ERROR_INVALID_ARGUMENT);
    EXPECT_NE(std::string(pkv_last_error_message()).find("no scales"), std::string::npos) << pkv_last_error_message();
    EXPECT_EQ(pkv_pool_set_scales(pool.get(), 4, nullptr, v4s, nullptr), PKV_ERROR_INVALID_ARGUMENT);
    EXPECT_EQ(pkv_pool_set_scales(pool.get(), 4, k4, nullptr, nullptr), PKV_ERROR_INVALID_ARGUMENT);
    const float zero[] = {0.0f, 1.0f}, nan[] = {1.0f, NAN};
    EXPECT_EQ(pkv_pool_set_scales(pool.get(), 2, zero, v2s, nullptr), PKV_ERROR_INVALID_ARGUMENT);
    EXPECT_EQ(pkv_pool_set_scales(pool.get(), 2, k2, nan, nullptr), PKV_ERROR_INVALID_ARGUMENT);
    EXPECT_EQ(pkv_pool_set_scales(pool.get(), 9, k4, v4s, nullptr), PKV_ERROR_INVALID_ARGUMENT);
    EXPECT_EQ(pkv_pool_set_scales(nullptr, 4, k4, v4s, nullptr), PKV_ERROR_INVALID_ARGUMENT);
    EXPECT_EQ(read_scales(v2, 2, false), (std::vector<float>{0.5f, 4.0f, 2.0f, 0.25f}));  // unchanged
}

TEST_P(Pool, HostTierViews) {
    const Backend be = GetParam();
    PKVT_SKIP_IF_NO_BACKEND(be);
    const auto specs = mixed_specs();
    PoolPtr pool = make_pool(be, 8, specs, 6, 3);
    ASSERT_TRUE(pool);
    Rng r(11);
    std::vector<int64_t> slots = {0, 9, 23, 12, 7};
    for (int64_t l = 0; l < 5; ++l) {
        const pkv_cache_view v = pool_view(pool.get(), l, PKV_TIER_HOST);
        EXPECT_EQ(v.device.type, PKV_DEVICE_CPU);
        EXPECT_EQ(v.num_blocks, 3);
        const Rows rows = exact_rows(r, v, int64_t(slots.size()));
        write_rows(Backend::CPU, v, rows, slots, nullptr);
        EXPECT_TRUE(rows_equal(rows, gather_slots(Backend::CPU, v, slots, nullptr), "host layer " + std::to_string(l)));
    }
    // No host tier: INVALID_STATE.
    PoolPtr bare = make_pool(be, 8, specs, 2);
    pkv_cache_view v = PKV_CACHE_VIEW_INIT;
    EXPECT_EQ(pkv_pool_layer_view(&v, bare.get(), 0, PKV_TIER_HOST), PKV_ERROR_INVALID_STATE);
    EXPECT_EQ(pkv_pool_layer_view(&v, bare.get(), 5, PKV_TIER_DEVICE), PKV_ERROR_INVALID_ARGUMENT);
    EXPECT_EQ(pkv_pool_layer_view(&v, bare.get(), 0, pkv_tier(7)), PKV_ERROR_INVALID_ARGUMENT);
    EXPECT_EQ(pkv_pool_layer_view(nullptr, bare.get(), 0, PKV_TIER_DEVICE), PKV_ERROR_INVALID_ARGUMENT);
    EXPECT_EQ(pkv_pool_layer_view(&v, nullptr, 0, PKV_TIER_DEVICE), PKV_ERROR_INVALID_ARGUMENT);
}

TEST_P(Pool, AllocatorCountsAndExhaustion) {
    const Backend be = GetParam();
    PKVT_SKIP_IF_NO_BACKEND(be);
    PoolPtr pool = make_pool(be, 4, {layer_spec(Fmt::F16, PKV_HEAD_LAYOUT_NHD, 1, 8, 8)}, 8, 2);
    ASSERT_TRUE(pool);
    pkv_pool *p = pool.get();
    std::vector<int32_t> a(5, -1), b(3, -1);
    ASSERT_EQ(pkv_pool_alloc_blocks(a.data(), p, PKV_TIER_DEVICE, 5), PKV_SUCCESS);
    ASSERT_EQ(pkv_pool_alloc_blocks(b.data(), p, PKV_TIER_DEVICE, 3), PKV_SUCCESS);
    std::vector<int32_t> all = a;
    all.insert(all.end(), b.begin(), b.end());
    std::sort(all.begin(), all.end());
    EXPECT_EQ(all, (std::vector<int32_t>{0, 1, 2, 3, 4, 5, 6, 7}));  // every id once
    for (int32_t id : all) EXPECT_EQ(refcount(p, id), 1);
    EXPECT_EQ(pool_stats(p).free_blocks, 0);

    // Exhausted: OUT_OF_BLOCKS, the output untouched, nothing changed.
    int32_t extra[2] = {-5, -5};
    EXPECT_EQ(pkv_pool_alloc_blocks(extra, p, PKV_TIER_DEVICE, 1), PKV_ERROR_OUT_OF_BLOCKS);
    EXPECT_NE(std::string(pkv_last_error_message()).find("free"), std::string::npos);
    EXPECT_EQ(extra[0], -5);
    EXPECT_EQ(pool_stats(p).free_blocks, 0);

    // Retain / release: a block is free again only at zero references.
    ASSERT_EQ(pkv_pool_retain_blocks(p, PKV_TIER_DEVICE, a.data(), 2), PKV_SUCCESS);
    EXPECT_EQ(refcount(p, a[0]), 2);
    ASSERT_EQ(pkv_pool_release_blocks(p, PKV_TIER_DEVICE, a.data(), 5), PKV_SUCCESS);
    EXPECT_EQ(refcount(p, a[0]), 1);
    EXPECT_EQ(refcount(p, a[4]), 0);
    EXPECT_EQ(pool_stats(p).free_blocks, 3);
    // A request larger than the free count changes nothing either.
    int32_t four[4];
    EXPECT_EQ(pkv_pool_alloc_blocks(four, p, PKV_TIER_DEVICE, 4), PKV_ERROR_OUT_OF_BLOCKS);
    EXPECT_EQ(pool_stats(p).free_blocks, 3);
    EXPECT_EQ(pkv_pool_alloc_blocks(four, p, PKV_TIER_DEVICE, 0), PKV_SUCCESS);

    // Errors leave every count as it was.
    const int32_t bad_free[] = {a[0], a[4]};  // a[4] is free
    EXPECT_EQ(pkv_pool_release_blocks(p, PKV_TIER_DEVICE, bad_free, 2), PKV_ERROR_INVALID_ARGUMENT);
    EXPECT_EQ(refcount(p, a[0]), 1);
    const int32_t twice[] = {b[0], b[0]};  // one reference, listed twice
    EXPECT_EQ(pkv_pool_release_blocks(p, PKV_TIER_DEVICE, twice, 2), PKV_ERROR_INVALID_ARGUMENT);
    EXPECT_EQ(refcount(p, b[0]), 1);
    const int32_t out_of_range[] = {b[1], 8};
    EXPECT_EQ(pkv_pool_release_blocks(p, PKV_TIER_DEVICE, out_of_range, 2), PKV_ERROR_INVALID_ARGUMENT);
    EXPECT_EQ(pkv_pool_retain_blocks(p, PKV_TIER_DEVICE, out_of_range, 2), PKV_ERROR_INVALID_ARGUMENT);
    EXPECT_EQ(pkv_pool_retain_blocks(p, PKV_TIER_DEVICE, bad_free, 2), PKV_ERROR_INVALID_ARGUMENT);
    EXPECT_EQ(refcount(p, b[1]), 1);
    EXPECT_EQ(refcount(p, a[0]), 1);
    EXPECT_EQ(pkv_pool_release_blocks(p, PKV_TIER_DEVICE, nullptr, 1), PKV_ERROR_INVALID_ARGUMENT);
    EXPECT_EQ(pkv_pool_release_blocks(p, PKV_TIER_DEVICE, a.data(), -1), PKV_ERROR_INVALID_ARGUMENT);
    EXPECT_EQ(pkv_pool_alloc_blocks(nullptr, p, PKV_TIER_DEVICE, 1), PKV_ERROR_INVALID_ARGUMENT);
    EXPECT_EQ(pkv_pool_alloc_blocks(four, p, pkv_tier(3), 1), PKV_ERROR_INVALID_ARGUMENT);
    EXPECT_EQ(pkv_pool_alloc_blocks(four, nullptr, PKV_TIER_DEVICE, 1), PKV_ERROR_INVALID_ARGUMENT);
    int32_t c = 0;
    EXPECT_EQ(pkv_pool_block_refcount(&c, p, PKV_TIER_DEVICE, 8), PKV_ERROR_INVALID_ARGUMENT);
    EXPECT_EQ(pkv_pool_block_refcount(&c, p, PKV_TIER_DEVICE, -1), PKV_ERROR_INVALID_ARGUMENT);
    EXPECT_EQ(pkv_pool_block_refcount(nullptr, p, PKV_TIER_DEVICE, 0), PKV_ERROR_INVALID_ARGUMENT);
    EXPECT_EQ(pool_stats(p).free_blocks, 3);

    // The host tier has its own allocator.
    int32_t h[3];
    ASSERT_EQ(pkv_pool_alloc_blocks(h, p, PKV_TIER_HOST, 2), PKV_SUCCESS);
    EXPECT_EQ(pkv_pool_alloc_blocks(h + 2, p, PKV_TIER_HOST, 1), PKV_ERROR_OUT_OF_BLOCKS);
    EXPECT_EQ(refcount(p, h[0], PKV_TIER_HOST), 1);
    EXPECT_EQ(pool_stats(p).free_host_blocks, 0);
    EXPECT_EQ(pool_stats(p).free_blocks, 3);
    ASSERT_EQ(pkv_pool_release_blocks(p, PKV_TIER_HOST, h, 2), PKV_SUCCESS);
    EXPECT_EQ(pool_stats(p).free_host_blocks, 2);
    PoolPtr bare = make_pool(be, 4, {layer_spec(Fmt::F16, PKV_HEAD_LAYOUT_NHD, 1, 8, 8)}, 2);
    EXPECT_EQ(pkv_pool_alloc_blocks(h, bare.get(), PKV_TIER_HOST, 1), PKV_ERROR_INVALID_STATE);

    // Give back the rest: all free.
    std::vector<int32_t> held;
    for (int32_t id = 0; id < 8; ++id)
        for (int32_t k = refcount(p, id); k > 0; --k) held.push_back(id);
    ASSERT_EQ(pkv_pool_release_blocks(p, PKV_TIER_DEVICE, held.data(), int64_t(held.size())), PKV_SUCCESS);
    EXPECT_EQ(pool_stats(p).free_blocks, 8);
}

TEST_P(Pool, MemoryBudgetSetsTheBlockCount) {
    const Backend be = GetParam();
    PKVT_SKIP_IF_NO_BACKEND(be);
    const auto specs = mixed_specs();
    PoolPtr probe = make_pool(be, 16, specs, 1);
    ASSERT_TRUE(probe);
    const int64_t bpb = pool_stats(probe.get()).bytes_per_block;
    pkv_pool_params p = PKV_POOL_PARAMS_INIT;
    p.device = backend_device(be);
    p.block_size = 16;
    p.num_layers = int64_t(specs.size());
    p.layers = specs.data();
    p.memory_bytes = size_t(bpb * 7 + bpb / 2);
    pkv_pool *pool = nullptr;
    ASSERT_EQ(pkv_pool_create(&pool, &p), PKV_SUCCESS) << pkv_last_error_message();
    EXPECT_EQ(pool_stats(pool).total_blocks, 7);
    EXPECT_EQ(pkv_pool_destroy(pool), PKV_SUCCESS);
    p.memory_bytes = size_t(bpb - 1);
    pool = reinterpret_cast<pkv_pool *>(&p);
    EXPECT_EQ(pkv_pool_create(&pool, &p), PKV_ERROR_INVALID_ARGUMENT);
    EXPECT_EQ(pool, nullptr);
    EXPECT_NE(std::string(pkv_last_error_message()).find("memory_bytes"), std::string::npos);
    // num_blocks wins over memory_bytes.
    p.num_blocks = 3;
    ASSERT_EQ(pkv_pool_create(&pool, &p), PKV_SUCCESS) << pkv_last_error_message();
    EXPECT_EQ(pool_stats(pool).total_blocks, 3);
    EXPECT_EQ(pkv_pool_destroy(pool), PKV_SUCCESS);
}

TEST_P(Pool, DestroyIsBusyWhileChildrenLive) {
    const Backend be = GetParam();
    PKVT_SKIP_IF_NO_BACKEND(be);
    PoolPtr pool = make_pool(be, 4, {layer_spec(Fmt::F16, PKV_HEAD_LAYOUT_NHD, 1, 8, 8)}, 4);
    ASSERT_TRUE(pool);
    pkv_block_table *t = nullptr;
    pkv_slots *s = nullptr;
    ASSERT_EQ(pkv_block_table_create(&t, pool.get(), nullptr), PKV_SUCCESS) << pkv_last_error_message();
    ASSERT_EQ(pkv_slots_create(&s, pool.get(), 4), PKV_SUCCESS) << pkv_last_error_message();
    EXPECT_EQ(pkv_pool_destroy(pool.get()), PKV_ERROR_BUSY);
    EXPECT_NE(std::string(pkv_last_error_message()).find("2 live"), std::string::npos) << pkv_last_error_message();
    ASSERT_EQ(pkv_block_table_add(t, 1), PKV_SUCCESS);  // the pool still works
    ASSERT_EQ(pkv_block_table_append(nullptr, t, 1, 5, nullptr), PKV_SUCCESS);
    EXPECT_EQ(pkv_block_table_destroy(t), PKV_SUCCESS);
    EXPECT_EQ(pool_stats(pool.get()).free_blocks, 4);  // the table gave its blocks back
    EXPECT_EQ(pkv_pool_destroy(pool.get()), PKV_ERROR_BUSY);
    EXPECT_EQ(pkv_slots_destroy(s), PKV_SUCCESS);
    EXPECT_EQ(pkv_pool_destroy(pool.release()), PKV_SUCCESS);
    EXPECT_EQ(pkv_pool_destroy(nullptr), PKV_SUCCESS);
    EXPECT_EQ(pkv_block_table_destroy(nullptr), PKV_SUCCESS);
    EXPECT_EQ(pkv_slots_destroy(nullptr), PKV_SUCCESS);
}

INSTANTIATE_TEST_SUITE_P(Cpu, Pool, ::testing::Values(Backend::CPU));
INSTANTIATE_TEST_SUITE_P(Cuda, Pool, ::testing::Values(Backend::CUDA));

// ---------------------------------------------------------------- creation errors (CPU pools)

struct Creation {
    std::vector<pkv_layer_spec> specs = {layer_spec(Fmt::F16, PKV_HEAD_LAYOUT_NHD, 2, 16, 16),
                                         layer_spec(Fmt::E4M3, PKV_HEAD_LAYOUT_HND, 2, 16, 16)};
    pkv_pool_params p = PKV_POOL_PARAMS_INIT;
    Creation() {
        p.block_size = 16;
        p.num_layers = 2;
        p.layers = specs.data();
        p.num_blocks = 4;
    }
    // Status of pkv_pool_create; the message must name `field` when given.
    pkv_status create(const char *field = nullptr) {
        p.layers = specs.data();
        pkv_pool *pool = reinterpret_cast<pkv_pool *>(this);
        const pkv_status s = pkv_pool_create(&pool, &p);
        if (s == PKV_SUCCESS) {
            EXPECT_EQ(pkv_pool_destroy(pool), PKV_SUCCESS);
        } else {
            EXPECT_EQ(pool, nullptr);
            const std::string msg = pkv_last_error_message();
            EXPECT_EQ(msg.rfind("pkv_pool_create: ", 0), 0u) << msg;
            if (field) {
                EXPECT_NE(msg.find(field), std::string::npos) << "message: " << msg << "\nexpected: " << field;
            }
        }
        return s;
    }
};

TEST(PoolErrors, BaselineSucceeds) { EXPECT_EQ(Creation().create(), PKV_SUCCESS) << pkv_last_error_message(); }

TEST(PoolErrors, NullArguments) {
    Creation c;
    EXPECT_EQ(pkv_pool_create(nullptr, &c.p), PKV_ERROR_INVALID_ARGUMENT);
    pkv_pool *pool = nullptr;
    EXPECT_EQ(pkv_pool_create(&pool, nullptr), PKV_ERROR_INVALID_ARGUMENT);
    c.p.layers = nullptr;
    pkv_pool_params p = c.p;
    EXPECT_EQ(pkv_pool_create(&pool, &p), PKV_ERROR_INVALID_ARGUMENT);
    EXPECT_NE(std::string(pkv_last_error_message()).find("params->layers is NULL"), std::string::npos);
}

TEST(PoolErrors, StructSize) {
    {
        Creation c;
        c.p.struct_size = 0;
        EXPECT_EQ(c.create("params->struct_size"), PKV_ERROR_STRUCT_SIZE);
    }
    {
        Creation c;
        c.p.struct_size = sizeof(pkv_pool_params) - 8;
        EXPECT_EQ(c.create("params->struct_size"), PKV_ERROR_STRUCT_SIZE);
    }
    {
        Creation c;
        c.specs[1].struct_size = 0;
        EXPECT_EQ(c.create("layers[1].struct_size"), PKV_ERROR_STRUCT_SIZE);
    }
    {
        Creation c;
        c.specs[0].struct_size = 8;
        EXPECT_EQ(c.create("layers[0]->struct_size"), PKV_ERROR_STRUCT_SIZE);
    }
    // Newer callers: zero tails accepted, a set unknown field refused. Layer specs are read at the
    // caller's struct_size stride.
    struct NewerParams {
        pkv_pool_params p;
        uint64_t extra;
    };
    struct NewerSpec {
        pkv_layer_spec s;
        uint64_t extra;
    };
    Creation c;
    NewerSpec specs[2];
    std::memset(specs, 0, sizeof specs);
    for (int i = 0; i < 2; ++i) {
        specs[i].s = c.specs[size_t(i)];
        specs[i].s.struct_size = sizeof(NewerSpec);
    }
    NewerParams np;
    std::memset(&np, 0, sizeof np);
    np.p = c.p;
    np.p.struct_size = sizeof np;
    np.p.layers = &specs[0].s;
    pkv_pool *pool = nullptr;
    ASSERT_EQ(pkv_pool_create(&pool, &np.p), PKV_SUCCESS) << pkv_last_error_message();
    int64_t b = 0;
    ASSERT_EQ(pkv_pool_bytes_per_token(&b, pool, 1), PKV_SUCCESS);
    EXPECT_EQ(b, 2 * 2 * 16);  // layer 1 read from the second NewerSpec
    EXPECT_EQ(pkv_pool_destroy(pool), PKV_SUCCESS);
    specs[1].extra = 1;
    EXPECT_EQ(pkv_pool_create(&pool, &np.p), PKV_ERROR_STRUCT_SIZE);
    EXPECT_NE(std::string(pkv_last_error_message()).find("params->layers[1]"), std::string::npos);
    specs[1].extra = 0;
    np.extra = 1;
    EXPECT_EQ(pkv_pool_create(&pool, &np.p), PKV_ERROR_STRUCT_SIZE);
    EXPECT_NE(std::string(pkv_last_error_message()).find("params: unknown field"), std::string::npos);
}

TEST(PoolErrors, ParamFields) {
    struct Case {
        const char *field;
        std::function<void(Creation &)> edit;
        pkv_status expected;
    };
    const Case cases[] = {
        {"params->flags", [](Creation &c) { c.p.flags = 1; }, PKV_ERROR_INVALID_ARGUMENT},
        {"params->device", [](Creation &c) { c.p.device.type = PKV_DEVICE_CUDA_HOST; }, PKV_ERROR_INVALID_ARGUMENT},
        {"params->device", [](Creation &c) { c.p.device.type = pkv_device_type(9); }, PKV_ERROR_INVALID_ARGUMENT},
        {"params->device.id", [](Creation &c) { c.p.device.id = -1; }, PKV_ERROR_INVALID_ARGUMENT},
        {"params->block_size", [](Creation &c) { c.p.block_size = 0; }, PKV_ERROR_INVALID_ARGUMENT},
        {"params->num_layers", [](Creation &c) { c.p.num_layers = 0; }, PKV_ERROR_INVALID_ARGUMENT},
        {"params->num_blocks", [](Creation &c) { c.p.num_blocks = -1; }, PKV_ERROR_INVALID_ARGUMENT},
        {"params->num_blocks", [](Creation &c) { c.p.num_blocks = int64_t(1) << 31; }, PKV_ERROR_INVALID_ARGUMENT},
        {"params->num_host_blocks", [](Creation &c) { c.p.num_host_blocks = -2; }, PKV_ERROR_INVALID_ARGUMENT},
        {"memory_bytes are both 0", [](Creation &c) { c.p.num_blocks = 0; }, PKV_ERROR_INVALID_ARGUMENT},
        {"params->layers[1].flags", [](Creation &c) { c.specs[1].flags = 4; }, PKV_ERROR_INVALID_ARGUMENT},
        {"params->layers[0].format is unset", [](Creation &c) { c.specs[0].format = PKV_CACHE_FORMAT_UNSET; },
         PKV_ERROR_INVALID_ARGUMENT},
        {"params->layers[1].format", [](Creation &c) { c.specs[1].format = pkv_cache_format(99); },
         PKV_ERROR_INVALID_ARGUMENT},
        {"params->layers[1].format int4_per_token_head",  // scale planes: views over your own memory
         [](Creation &c) { c.specs[1].format = PKV_CACHE_FORMAT_INT4_PER_TOKEN_HEAD; }, PKV_ERROR_NOT_SUPPORTED},
        {"params->layers[1].layout", [](Creation &c) { c.specs[1].layout = pkv_head_layout(2); },
         PKV_ERROR_INVALID_ARGUMENT},
        {"params->layers[0].scale_mode", [](Creation &c) { c.specs[0].scale_mode = pkv_scale_mode(2); },
         PKV_ERROR_INVALID_ARGUMENT},
        {"params->layers[1].num_heads", [](Creation &c) { c.specs[1].num_heads = 0; }, PKV_ERROR_INVALID_ARGUMENT},
        {"params->layers[0].head_size_k", [](Creation &c) { c.specs[0].head_size_k = -3; },
         PKV_ERROR_INVALID_ARGUMENT},
        {"params->layers[1].head_size_v", [](Creation &c) { c.specs[1].head_size_v = -1; },
         PKV_ERROR_INVALID_ARGUMENT},
        {"params->layers[0].head_size_v", [](Creation &c) { c.specs[0].flags = PKV_LAYER_K_ONLY; },
         PKV_ERROR_INVALID_ARGUMENT},
        {"2^48", [](Creation &c) { c.specs[0].num_heads = int64_t(1) << 40; }, PKV_ERROR_INVALID_ARGUMENT},
        {"2^48", [](Creation &c) { c.p.block_size = INT64_MAX; }, PKV_ERROR_INVALID_ARGUMENT},
    };
    for (const Case &k : cases) {
        Creation c;
        k.edit(c);
        EXPECT_EQ(c.create(k.field), k.expected) << k.field;
    }
}

TEST(PoolErrors, CudaPoolWithoutDevice) {
    if (cuda_usable()) GTEST_SKIP() << "a CUDA device is present";
    Creation c;
    c.p.device = pkv_device{PKV_DEVICE_CUDA, 0};
    EXPECT_EQ(c.create("cuda:0"), PKV_ERROR_NOT_SUPPORTED);
}

TEST(PoolErrors, CudaDeviceOutOfRange) {
    if (!cuda_usable()) GTEST_SKIP() << "no CUDA device";
    Creation c;
    c.p.device = pkv_device{PKV_DEVICE_CUDA, 1000};
    EXPECT_EQ(c.create("cuda:1000"), PKV_ERROR_INVALID_ARGUMENT);
}

TEST(PoolErrors, InitFunctions) {
    pkv_layer_spec s;
    std::memset(&s, 0x33, sizeof s);
    ASSERT_EQ(pkv_layer_spec_init(&s, sizeof s), PKV_SUCCESS);
    EXPECT_EQ(s.struct_size, sizeof s);
    EXPECT_EQ(s.format, PKV_CACHE_FORMAT_UNSET);
    EXPECT_EQ(s.num_heads, 0);
    EXPECT_EQ(pkv_layer_spec_init(&s, sizeof s - 1), PKV_ERROR_STRUCT_SIZE);
    EXPECT_EQ(pkv_layer_spec_init(nullptr, sizeof s), PKV_ERROR_INVALID_ARGUMENT);
    pkv_pool_params p;
    std::memset(&p, 0x33, sizeof p);
    ASSERT_EQ(pkv_pool_params_init(&p, sizeof p), PKV_SUCCESS);
    EXPECT_EQ(p.struct_size, sizeof p);
    EXPECT_EQ(p.layers, nullptr);
    EXPECT_EQ(int(p.device.type), 0);  // zeroed: 0 = the default device, the CPU
    std::vector<pkv_layer_spec> specs = {layer_spec(Fmt::F16, PKV_HEAD_LAYOUT_NHD, 1, 8, 8)};
    p.block_size = 4;
    p.num_layers = 1;
    p.layers = specs.data();
    p.num_blocks = 2;
    pkv_pool *pool = nullptr;
    ASSERT_EQ(pkv_pool_create(&pool, &p), PKV_SUCCESS) << pkv_last_error_message();
    EXPECT_EQ(pool_view(pool, 0).device.type, PKV_DEVICE_CPU);
    EXPECT_EQ(pkv_pool_destroy(pool), PKV_SUCCESS);
    EXPECT_EQ(pkv_pool_params_init(&p, 4), PKV_ERROR_STRUCT_SIZE);
    EXPECT_EQ(pkv_pool_params_init(nullptr, sizeof p), PKV_ERROR_INVALID_ARGUMENT);
    pkv_block_table_params t;
    ASSERT_EQ(pkv_block_table_params_init(&t, sizeof t), PKV_SUCCESS);
    EXPECT_EQ(t.struct_size, sizeof t);
    EXPECT_EQ(t.max_batch, 0);
    EXPECT_EQ(pkv_block_table_params_init(&t, 0), PKV_ERROR_STRUCT_SIZE);
}

}  // namespace
}  // namespace pkvt
