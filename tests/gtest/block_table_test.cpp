// pkv_block_table: slots of appended tokens, fork (shared blocks, reference counts) and
// copy-on-write of the shared partial block (contents checked through pkv_write_kv /
// pkv_gather_kv), truncate, remove, all-or-nothing OUT_OF_BLOCKS, the device mirror's contents,
// capacity and argument errors. Cpu/BlockTable and (with a device) Cuda/BlockTable.
#include "handles_common.h"

namespace pkvt {
namespace {

// Host image of a block table's device mirror.
struct MirrorImage {
    pkv_batch_mirror m;
    std::vector<int32_t> table, seq_lens, qsl;
    std::vector<int64_t> slots;
};

MirrorImage read_mirror(const pkv_block_table *t, pkv_stream stream) {
    MirrorImage im;
    std::memset(&im.m, 0, sizeof im.m);
    im.m.struct_size = sizeof im.m;
    EXPECT_EQ(pkv_block_table_mirror(&im.m, t), PKV_SUCCESS) << pkv_last_error_message();
    const pkv_device cpu{PKV_DEVICE_CPU, 0};
    auto fetch = [&](auto &out, const pkv_tensor &x, int64_t n) {
        out.resize(size_t(n));
        EXPECT_EQ(pkv_copy(out.data(), cpu, x.data, x.device, size_t(n) * sizeof(out[0]), stream), PKV_SUCCESS);
    };
    fetch(im.table, im.m.block_table, im.m.block_table.shape[0] * im.m.block_table.shape[1]);
    fetch(im.seq_lens, im.m.seq_lens, im.m.seq_lens.shape[0]);
    fetch(im.qsl, im.m.query_start_loc, im.m.query_start_loc.shape[0]);
    fetch(im.slots, im.m.slot_mapping, im.m.slot_mapping.shape[0]);
    EXPECT_EQ(pkv_stream_synchronize(stream), PKV_SUCCESS);
    return im;
}

std::vector<int64_t> expected_slots(const std::vector<int32_t> &blocks, int64_t bs, int64_t from, int64_t to) {
    std::vector<int64_t> s;
    for (int64_t p = from; p < to; ++p) s.push_back(int64_t(blocks[size_t(p / bs)]) * bs + p % bs);
    return s;
}

std::vector<int64_t> append(pkv_block_table *t, uint64_t request, int64_t n, pkv_stream stream = nullptr) {
    std::vector<int64_t> slots(size_t(n), -9);
    EXPECT_EQ(pkv_block_table_append(slots.data(), t, request, n, stream), PKV_SUCCESS) << pkv_last_error_message();
    return slots;
}

class BlockTable : public ::testing::TestWithParam<Backend> {};

TEST_P(BlockTable, AppendReturnsTheSlotsOfItsBlocks) {
    const Backend be = GetParam();
    PKVT_SKIP_IF_NO_BACKEND(be);
    const int64_t BS = 4;
    PoolPtr pool = make_pool(be, BS, {layer_spec(Fmt::F16, PKV_HEAD_LAYOUT_NHD, 1, 8, 8)}, 16);
    TablePtr t = make_table(pool.get());
    ASSERT_TRUE(pool && t);
    ASSERT_EQ(pkv_block_table_add(t.get(), 7), PKV_SUCCESS);
    ASSERT_EQ(pkv_block_table_add(t.get(), 1ull << 40), PKV_SUCCESS);  // any 64-bit id
    EXPECT_EQ(table_tokens(t.get(), 7), 0);
    EXPECT_TRUE(table_blocks(t.get(), 7).empty());
    std::vector<int64_t> all;
    for (int64_t n : {3, 1, 6, 0, 5, 4}) {
        const int64_t before = table_tokens(t.get(), 7);
        const std::vector<int64_t> s = append(t.get(), 7, n);
        const std::vector<int32_t> blocks = table_blocks(t.get(), 7);
        EXPECT_EQ(int64_t(blocks.size()), (before + n + BS - 1) / BS);
        EXPECT_EQ(s, expected_slots(blocks, BS, before, before + n));
        all.insert(all.end(), s.begin(), s.end());
        (void)append(t.get(), 1ull << 40, 2);  // interleaved with another request
    }
    EXPECT_EQ(table_tokens(t.get(), 7), 19);
    std::vector<int64_t> sorted = all;
    std::sort(sorted.begin(), sorted.end());
    EXPECT_EQ(std::unique(sorted.begin(), sorted.end()), sorted.end()) << "a slot was handed out twice";
    for (int32_t b : table_blocks(t.get(), 7)) EXPECT_EQ(refcount(pool.get(), b), 1);
    EXPECT_EQ(pool_stats(pool.get()).free_blocks, 16 - 5 - 3);
    // out_slots may be NULL.
    ASSERT_EQ(pkv_block_table_append(nullptr, t.get(), 7, 1, nullptr), PKV_SUCCESS);
    EXPECT_EQ(table_tokens(t.get(), 7), 20);
    // The blocks query reports the count and copies min(count, capacity) ids.
    int32_t two[2] = {-1, -1};
    int64_t count = 0;
    ASSERT_EQ(pkv_block_table_blocks(two, 2, &count, t.get(), 7), PKV_SUCCESS);
    EXPECT_EQ(count, 5);
    EXPECT_EQ(two[0], table_blocks(t.get(), 7)[0]);
    EXPECT_EQ(two[1], table_blocks(t.get(), 7)[1]);
}

TEST_P(BlockTable, ForkSharesBlocksAndCopiesOnWrite) {
    const Backend be = GetParam();
    PKVT_SKIP_IF_NO_BACKEND(be);
    const int64_t BS = 4;
    PoolPtr pool = make_pool(be, BS, {layer_spec(Fmt::F16, PKV_HEAD_LAYOUT_NHD, 1, 8, 8)}, 16);
    TablePtr t = make_table(pool.get());
    pkv_pool *p = pool.get();
    ASSERT_EQ(pkv_block_table_add(t.get(), 1), PKV_SUCCESS);
    (void)append(t.get(), 1, 9);  // 3 blocks, the last holds 1 token
    ASSERT_EQ(pkv_block_table_fork(t.get(), 1, 2), PKV_SUCCESS) << pkv_last_error_message();
    const std::vector<int32_t> parent = table_blocks(t.get(), 1);
    EXPECT_EQ(table_blocks(t.get(), 2), parent);
    EXPECT_EQ(table_tokens(t.get(), 2), 9);
    for (int32_t b : parent) EXPECT_EQ(refcount(p, b), 2);
    EXPECT_EQ(pool_stats(p).free_blocks, 13);

    // The child's append writes the shared partial block: it gets a private copy.
    const std::vector<int64_t> s = append(t.get(), 2, 2);
    const std::vector<int32_t> child = table_blocks(t.get(), 2);
    ASSERT_EQ(child.size(), 3u);
    EXPECT_EQ(child[0], parent[0]);
    EXPECT_EQ(child[1], parent[1]);
    EXPECT_NE(child[2], parent[2]);
    EXPECT_EQ(s, expected_slots(child, BS, 9, 11));
    EXPECT_EQ(refcount(p, parent[2]), 1);
    EXPECT_EQ(refcount(p, child[2]), 1);
    EXPECT_EQ(refcount(p, parent[0]), 2);
    EXPECT_EQ(table_blocks(t.get(), 1), parent);  // the parent is untouched
    EXPECT_EQ(pool_stats(p).free_blocks, 12);

    // The parent's partial block is now its own: no copy.
    (void)append(t.get(), 1, 1);
    EXPECT_EQ(table_blocks(t.get(), 1), parent);
    // A fork at a block boundary shares only full blocks: appending allocates, never copies.
    (void)append(t.get(), 1, 2);  // 12 tokens, 3 full blocks
    ASSERT_EQ(pkv_block_table_fork(t.get(), 1, 3), PKV_SUCCESS);
    (void)append(t.get(), 3, 1);
    const std::vector<int32_t> third = table_blocks(t.get(), 3);
    ASSERT_EQ(third.size(), 4u);
    EXPECT_TRUE(std::equal(parent.begin(), parent.end(), third.begin()));
    EXPECT_EQ(refcount(p, parent[2]), 2);

    // Removing requests drops their references; shared blocks live on with the others.
    ASSERT_EQ(pkv_block_table_remove(t.get(), 1), PKV_SUCCESS);
    EXPECT_EQ(refcount(p, parent[0]), 2);  // child 2 and request 3
    EXPECT_EQ(refcount(p, parent[2]), 1);  // request 3
    ASSERT_EQ(pkv_block_table_remove(t.get(), 3), PKV_SUCCESS);
    ASSERT_EQ(pkv_block_table_remove(t.get(), 2), PKV_SUCCESS);
    EXPECT_EQ(pool_stats(p).free_blocks, 16);
    EXPECT_EQ(pkv_block_table_remove(t.get(), 2), PKV_ERROR_INVALID_ARGUMENT);
}

// Copy-on-write moves the data: tokens written before a fork read back identically through the
// child after its private copy, on every layer, while each side's new tokens stay its own.
TEST_P(BlockTable, CopyOnWriteCopiesThePartialBlock) {
    const Backend be = GetParam();
    PKVT_SKIP_IF_NO_BACKEND(be);
    const int64_t BS = 4;
    PoolPtr pool = make_pool(be, BS,
                             {layer_spec(Fmt::F16, PKV_HEAD_LAYOUT_NHD, 2, 16, 16),
                              layer_spec(Fmt::E4M3, PKV_HEAD_LAYOUT_HND, 1, 32, 24)},
                             8);
    TablePtr t = make_table(pool.get(), 4, 4, 16);
    TestStream stream(be, true);
    const pkv_cache_view views[2] = {pool_view(pool.get(), 0), pool_view(pool.get(), 1)};
    Rng r(5);
    auto write = [&](const std::vector<int64_t> &slots) {
        std::vector<Rows> rows;
        for (const pkv_cache_view &v : views) {
            rows.push_back(exact_rows(r, v, int64_t(slots.size())));
            write_rows(be, v, rows.back(), slots, stream.get());
        }
        return rows;
    };
    auto concat = [](const Rows &a, const Rows &b) {
        Rows c = a;
        c.k.insert(c.k.end(), b.k.begin(), b.k.end());
        c.v.insert(c.v.end(), b.v.begin(), b.v.end());
        return c;
    };
    ASSERT_EQ(pkv_block_table_add(t.get(), 10), PKV_SUCCESS);
    const std::vector<Rows> prefix = write(append(t.get(), 10, 6, stream.get()));  // block 1 holds 2 tokens
    ASSERT_EQ(pkv_block_table_fork(t.get(), 10, 11), PKV_SUCCESS);
    const std::vector<Rows> child_new = write(append(t.get(), 11, 2, stream.get()));   // copies block 1 first
    const std::vector<Rows> parent_new = write(append(t.get(), 10, 2, stream.get()));  // its own block now
    EXPECT_NE(table_blocks(t.get(), 10)[1], table_blocks(t.get(), 11)[1]);
    for (int l = 0; l < 2; ++l) {
        const std::vector<int64_t> ps = expected_slots(table_blocks(t.get(), 10), BS, 0, 8);
        const std::vector<int64_t> cs = expected_slots(table_blocks(t.get(), 11), BS, 0, 8);
        EXPECT_TRUE(rows_equal(concat(prefix[size_t(l)], parent_new[size_t(l)]), gather_slots(be, views[l], ps, stream.get()),
                               "parent layer " + std::to_string(l)));
        EXPECT_TRUE(rows_equal(concat(prefix[size_t(l)], child_new[size_t(l)]), gather_slots(be, views[l], cs, stream.get()),
                               "child layer " + std::to_string(l)));
    }
    // The same through the mirror's block table (what an attention kernel would read).
    const uint64_t reqs[] = {10, 11};
    const int64_t news[] = {8, 8};
    ASSERT_EQ(pkv_block_table_upload(t.get(), reqs, news, 2, stream.get()), PKV_SUCCESS) << pkv_last_error_message();
    pkv_batch_mirror m;
    m.struct_size = sizeof m;
    ASSERT_EQ(pkv_block_table_mirror(&m, t.get()), PKV_SUCCESS);
    const pkv_device dev = backend_device(be);
    for (int l = 0; l < 2; ++l) {
        const pkv_cache_view &v = views[l];
        const int64_t H = v.num_heads, Dk = v.head_size_k, Dv = v.head_size_v;
        std::vector<float> ok(size_t(16 * H * Dk)), ov(size_t(16 * H * Dv));
        Buf kb = to_device(be, ok), vb = to_device(be, ov);
        pkv_tensor kt = make_tensor(kb.ptr(), PKV_DTYPE_F32, dev, {16, H, Dk}, {H * Dk, Dk, 1});
        pkv_tensor vt = make_tensor(vb.ptr(), PKV_DTYPE_F32, dev, {16, H, Dv}, {H * Dv, Dv, 1});
        pkv_tensor bt = m.block_table;
        bt.shape[0] = 2;
        pkv_tensor cu = m.query_start_loc;  // all tokens are "new": query_start_loc = cu_seq_lens
        cu.shape[0] = 3;
        ASSERT_EQ(pkv_gather_kv(&kt, &vt, &v, &bt, &cu, nullptr, nullptr, stream.get()), PKV_SUCCESS)
            << pkv_last_error_message();
        stream.sync(be);
        kb.download(ok.data(), ok.size() * 4);
        vb.download(ov.data(), ov.size() * 4);
        Rows got{ok, ov};
        const Rows want = concat(concat(prefix[size_t(l)], parent_new[size_t(l)]), concat(prefix[size_t(l)], child_new[size_t(l)]));
        EXPECT_TRUE(rows_equal(want, got, "mirror gather layer " + std::to_string(l)));
    }
}

TEST_P(BlockTable, TruncateReleasesWholeBlocks) {
    const Backend be = GetParam();
    PKVT_SKIP_IF_NO_BACKEND(be);
    const int64_t BS = 4;
    PoolPtr pool = make_pool(be, BS, {layer_spec(Fmt::BF16, PKV_HEAD_LAYOUT_HND, 2, 8, 8)}, 8);
    TablePtr t = make_table(pool.get());
    pkv_pool *p = pool.get();
    ASSERT_EQ(pkv_block_table_add(t.get(), 1), PKV_SUCCESS);
    (void)append(t.get(), 1, 10);
    const std::vector<int32_t> blocks = table_blocks(t.get(), 1);
    ASSERT_EQ(pkv_block_table_truncate(t.get(), 1, 10), PKV_SUCCESS);  // no-op
    EXPECT_EQ(table_blocks(t.get(), 1), blocks);
    ASSERT_EQ(pkv_block_table_truncate(t.get(), 1, 5), PKV_SUCCESS);
    EXPECT_EQ(table_tokens(t.get(), 1), 5);
    EXPECT_EQ(table_blocks(t.get(), 1), std::vector<int32_t>(blocks.begin(), blocks.begin() + 2));
    EXPECT_EQ(refcount(p, blocks[2]), 0);
    EXPECT_EQ(pool_stats(p).free_blocks, 6);
    ASSERT_EQ(pkv_block_table_truncate(t.get(), 1, 4), PKV_SUCCESS);
    EXPECT_EQ(table_blocks(t.get(), 1).size(), 1u);
    // Regrow after a rollback: the new positions continue from the truncated count.
    const std::vector<int64_t> s = append(t.get(), 1, 3);
    EXPECT_EQ(s, expected_slots(table_blocks(t.get(), 1), BS, 4, 7));
    EXPECT_EQ(pkv_block_table_truncate(t.get(), 1, 8), PKV_ERROR_INVALID_ARGUMENT);
    EXPECT_EQ(pkv_block_table_truncate(t.get(), 1, -1), PKV_ERROR_INVALID_ARGUMENT);
    EXPECT_EQ(pkv_block_table_truncate(t.get(), 99, 0), PKV_ERROR_INVALID_ARGUMENT);
    EXPECT_EQ(table_tokens(t.get(), 1), 7);
    // Truncating a fork releases only its references; then appending copies the shared block.
    ASSERT_EQ(pkv_block_table_fork(t.get(), 1, 2), PKV_SUCCESS);
    ASSERT_EQ(pkv_block_table_truncate(t.get(), 2, 2), PKV_SUCCESS);
    const std::vector<int32_t> pb = table_blocks(t.get(), 1);
    EXPECT_EQ(refcount(p, pb[0]), 2);
    EXPECT_EQ(refcount(p, pb[1]), 1);
    (void)append(t.get(), 2, 1);
    EXPECT_NE(table_blocks(t.get(), 2)[0], pb[0]);
    EXPECT_EQ(refcount(p, pb[0]), 1);
    ASSERT_EQ(pkv_block_table_truncate(t.get(), 2, 0), PKV_SUCCESS);
    EXPECT_TRUE(table_blocks(t.get(), 2).empty());
    EXPECT_EQ(pool_stats(p).free_blocks, 6);
}

TEST_P(BlockTable, OutOfBlocksChangesNothing) {
    const Backend be = GetParam();
    PKVT_SKIP_IF_NO_BACKEND(be);
    const int64_t BS = 4;
    PoolPtr pool = make_pool(be, BS, {layer_spec(Fmt::F16, PKV_HEAD_LAYOUT_NHD, 1, 8, 8)}, 4);
    TablePtr t = make_table(pool.get());
    pkv_pool *p = pool.get();
    ASSERT_EQ(pkv_block_table_add(t.get(), 1), PKV_SUCCESS);
    ASSERT_EQ(pkv_block_table_add(t.get(), 2), PKV_SUCCESS);
    (void)append(t.get(), 1, 10);  // 3 blocks, partial last
    (void)append(t.get(), 2, 1);   // the 4th
    std::vector<int64_t> slots(8, -9);
    EXPECT_EQ(pkv_block_table_append(slots.data(), t.get(), 2, 4, nullptr), PKV_ERROR_OUT_OF_BLOCKS);
    EXPECT_NE(std::string(pkv_last_error_message()).find("free blocks"), std::string::npos);
    EXPECT_EQ(table_tokens(t.get(), 2), 1);
    EXPECT_EQ(table_blocks(t.get(), 2).size(), 1u);
    EXPECT_EQ(slots[0], -9);
    // Copy-on-write needs a block too: the fork's append fails whole, the shared block stays shared.
    ASSERT_EQ(pkv_block_table_fork(t.get(), 1, 3), PKV_SUCCESS);
    const std::vector<int32_t> shared = table_blocks(t.get(), 3);
    EXPECT_EQ(pkv_block_table_append(slots.data(), t.get(), 3, 1, nullptr), PKV_ERROR_OUT_OF_BLOCKS);
    EXPECT_EQ(table_blocks(t.get(), 3), shared);
    EXPECT_EQ(table_tokens(t.get(), 3), 10);
    EXPECT_EQ(refcount(p, shared[2]), 2);
    EXPECT_EQ(pool_stats(p).free_blocks, 0);
    // Appending within the partial block needs no block (request 2 has 3 free positions).
    (void)append(t.get(), 2, 3);
    // After freeing, the same call succeeds.
    ASSERT_EQ(pkv_block_table_remove(t.get(), 2), PKV_SUCCESS);
    (void)append(t.get(), 3, 1);
    EXPECT_NE(table_blocks(t.get(), 3)[2], shared[2]);
}

TEST_P(BlockTable, UploadFillsTheMirror) {
    const Backend be = GetParam();
    PKVT_SKIP_IF_NO_BACKEND(be);
    const int64_t BS = 4, MB = 6, MBL = 5, MT = 20;
    PoolPtr pool = make_pool(be, BS, {layer_spec(Fmt::F16, PKV_HEAD_LAYOUT_NHD, 1, 8, 8)}, 32);
    TablePtr t = make_table(pool.get(), MB, MBL, MT);
    TestStream stream(be, true);
    pkv_block_table *tb = t.get();
    // Fresh mirror: defaults everywhere.
    MirrorImage im = read_mirror(tb, stream.get());
    EXPECT_EQ(im.m.batch, 0);
    EXPECT_EQ(im.m.num_tokens, 0);
    EXPECT_EQ(im.m.block_table.dtype, PKV_DTYPE_INT32);
    EXPECT_EQ(im.m.block_table.device.type, backend_device(be).type);
    EXPECT_EQ(im.m.block_table.ndim, 2);
    EXPECT_EQ(im.m.block_table.shape[0], MB);
    EXPECT_EQ(im.m.block_table.shape[1], MBL);
    EXPECT_EQ(im.m.block_table.strides[0], MBL);
    EXPECT_EQ(im.m.block_table.strides[1], 1);
    EXPECT_EQ(im.m.slot_mapping.dtype, PKV_DTYPE_INT64);
    EXPECT_EQ(im.m.slot_mapping.shape[0], MT);
    EXPECT_EQ(im.m.seq_lens.shape[0], MB);
    EXPECT_EQ(im.m.query_start_loc.shape[0], MB + 1);
    EXPECT_EQ(im.table, std::vector<int32_t>(size_t(MB * MBL), 0));
    EXPECT_EQ(im.slots, std::vector<int64_t>(size_t(MT), -1));
    EXPECT_EQ(im.seq_lens, std::vector<int32_t>(size_t(MB), 0));
    EXPECT_EQ(im.qsl, std::vector<int32_t>(size_t(MB + 1), 0));
    const void *addresses[] = {im.m.block_table.data, im.m.slot_mapping.data, im.m.seq_lens.data,
                               im.m.query_start_loc.data};

    for (uint64_t id : {100, 200, 300, 400}) ASSERT_EQ(pkv_block_table_add(tb, id), PKV_SUCCESS);
    (void)append(tb, 100, 5);
    (void)append(tb, 200, 17);
    (void)append(tb, 300, 1);
    (void)append(tb, 100, 3);  // interleaved: blocks of 100 are not consecutive ids
    // Check the mirror of a batch against the table's own bookkeeping.
    auto check = [&](const std::vector<uint64_t> &reqs, const std::vector<int64_t> &news) {
        ASSERT_EQ(pkv_block_table_upload(tb, reqs.data(), news.data(), int64_t(reqs.size()), stream.get()), PKV_SUCCESS)
            << pkv_last_error_message();
        const MirrorImage got = read_mirror(tb, stream.get());
        std::vector<int32_t> table(size_t(MB * MBL), 0), seq(size_t(MB), 0), qsl(size_t(MB + 1), 0);
        std::vector<int64_t> slots;
        for (size_t b = 0; b < reqs.size(); ++b) {
            const std::vector<int32_t> blocks = table_blocks(tb, reqs[b]);
            std::copy(blocks.begin(), blocks.end(), table.begin() + int64_t(b) * MBL);
            const int64_t n = table_tokens(tb, reqs[b]);
            seq[b] = int32_t(n);
            qsl[b] = int32_t(slots.size());
            const std::vector<int64_t> s = expected_slots(blocks, BS, n - news[b], n);
            slots.insert(slots.end(), s.begin(), s.end());
        }
        for (size_t b = reqs.size(); b <= size_t(MB); ++b) qsl[b] = int32_t(slots.size());
        const int64_t total = int64_t(slots.size());
        slots.resize(size_t(MT), -1);
        EXPECT_EQ(got.m.batch, int64_t(reqs.size()));
        EXPECT_EQ(got.m.num_tokens, total);
        EXPECT_EQ(got.table, table);
        EXPECT_EQ(got.seq_lens, seq);
        EXPECT_EQ(got.qsl, qsl);
        EXPECT_EQ(got.slots, slots);
        const void *now[] = {got.m.block_table.data, got.m.slot_mapping.data, got.m.seq_lens.data,
                             got.m.query_start_loc.data};
        for (int i = 0; i < 4; ++i) EXPECT_EQ(now[i], addresses[i]) << "the mirror moved";
    };
    check({200, 100, 300}, {17, 2, 1});       // prefill-size and decode-size rows
    check({300}, {1});                        // a smaller batch clears the rows and tokens past it
    check({100, 200, 300, 400}, {8, 0, 1, 0}); // an empty request and zero new tokens
    (void)append(tb, 300, 4);
    check({300, 300}, {2, 2});                // a request twice (the engine's business)
    check({}, {});
    // Back-to-back uploads without reading in between (the staging waits for the previous copy).
    for (int i = 0; i < 20; ++i) {
        const uint64_t reqs[] = {uint64_t(i % 2 ? 100 : 200)};
        const int64_t news[] = {1};
        ASSERT_EQ(pkv_block_table_upload(tb, reqs, news, 1, stream.get()), PKV_SUCCESS);
    }
    check({100, 200}, {1, 1});
}

TEST_P(BlockTable, UploadCapacityErrorsChangeNothing) {
    const Backend be = GetParam();
    PKVT_SKIP_IF_NO_BACKEND(be);
    const int64_t BS = 4;
    PoolPtr pool = make_pool(be, BS, {layer_spec(Fmt::F16, PKV_HEAD_LAYOUT_NHD, 1, 8, 8)}, 16);
    TablePtr t = make_table(pool.get(), 2, 2, 4);
    TestStream stream(be, true);
    pkv_block_table *tb = t.get();
    for (uint64_t id : {1, 2, 3}) ASSERT_EQ(pkv_block_table_add(tb, id), PKV_SUCCESS);
    (void)append(tb, 1, 3);
    (void)append(tb, 2, 9);  // 3 blocks > max_blocks 2
    (void)append(tb, 3, 8);
    const uint64_t ok_reqs[] = {1, 3};
    const int64_t ok_news[] = {1, 3};
    ASSERT_EQ(pkv_block_table_upload(tb, ok_reqs, ok_news, 2, stream.get()), PKV_SUCCESS);
    const MirrorImage before = read_mirror(tb, stream.get());
    struct Case {
        std::vector<uint64_t> reqs;
        std::vector<int64_t> news;
        const char *text;
    };
    const Case cases[] = {
        {{1, 3, 1}, {0, 0, 0}, "max_batch"},
        {{2}, {1}, "max_blocks"},
        {{1, 3}, {3, 2}, "max_tokens"},
        {{1, 9}, {0, 0}, "requests[1] = 9 is not in the table"},
        {{1}, {4}, "new_tokens[0] = 4"},
        {{1}, {-1}, "new_tokens[0] = -1"},
    };
    for (const Case &c : cases) {
        EXPECT_EQ(pkv_block_table_upload(tb, c.reqs.data(), c.news.data(), int64_t(c.reqs.size()), stream.get()),
                  PKV_ERROR_INVALID_ARGUMENT)
            << c.text;
        EXPECT_NE(std::string(pkv_last_error_message()).find(c.text), std::string::npos) << pkv_last_error_message();
    }
    EXPECT_EQ(pkv_block_table_upload(tb, nullptr, ok_news, 1, nullptr), PKV_ERROR_INVALID_ARGUMENT);
    EXPECT_EQ(pkv_block_table_upload(tb, ok_reqs, nullptr, 1, nullptr), PKV_ERROR_INVALID_ARGUMENT);
    EXPECT_EQ(pkv_block_table_upload(tb, ok_reqs, ok_news, -1, nullptr), PKV_ERROR_INVALID_ARGUMENT);
    EXPECT_EQ(pkv_block_table_upload(nullptr, ok_reqs, ok_news, 1, nullptr), PKV_ERROR_INVALID_ARGUMENT);
    const MirrorImage after = read_mirror(tb, stream.get());
    EXPECT_EQ(after.table, before.table);
    EXPECT_EQ(after.slots, before.slots);
    EXPECT_EQ(after.seq_lens, before.seq_lens);
    EXPECT_EQ(after.qsl, before.qsl);
    EXPECT_EQ(after.m.batch, 2);
    EXPECT_EQ(after.m.num_tokens, 4);
}

TEST_P(BlockTable, DestroyReleasesEveryBlock) {
    const Backend be = GetParam();
    PKVT_SKIP_IF_NO_BACKEND(be);
    PoolPtr pool = make_pool(be, 4, {layer_spec(Fmt::F16, PKV_HEAD_LAYOUT_NHD, 1, 8, 8)}, 16);
    pkv_block_table *t = nullptr;
    ASSERT_EQ(pkv_block_table_create(&t, pool.get(), nullptr), PKV_SUCCESS);
    TestStream stream(be, true);
    ASSERT_EQ(pkv_block_table_add(t, 1), PKV_SUCCESS);
    (void)append(t, 1, 9);
    ASSERT_EQ(pkv_block_table_fork(t, 1, 2), PKV_SUCCESS);
    (void)append(t, 2, 5, stream.get());
    const uint64_t reqs[] = {1, 2};
    const int64_t news[] = {1, 1};
    ASSERT_EQ(pkv_block_table_upload(t, reqs, news, 2, stream.get()), PKV_SUCCESS);  // in flight at destroy
    EXPECT_LT(pool_stats(pool.get()).free_blocks, 16);
    ASSERT_EQ(pkv_block_table_destroy(t), PKV_SUCCESS);
    EXPECT_EQ(pool_stats(pool.get()).free_blocks, 16);
    stream.sync(be);
}

INSTANTIATE_TEST_SUITE_P(Cpu, BlockTable, ::testing::Values(Backend::CPU));
INSTANTIATE_TEST_SUITE_P(Cuda, BlockTable, ::testing::Values(Backend::CUDA));

// ---------------------------------------------------------------- argument errors (CPU pool)

struct Fixture {
    PoolPtr pool = make_pool(Backend::CPU, 4, {layer_spec(Fmt::F16, PKV_HEAD_LAYOUT_NHD, 1, 8, 8)}, 8);
    TablePtr table = make_table(pool.get());
};

TEST(BlockTableErrors, Create) {
    Fixture f;
    pkv_block_table *t = nullptr;
    EXPECT_EQ(pkv_block_table_create(nullptr, f.pool.get(), nullptr), PKV_ERROR_INVALID_ARGUMENT);
    EXPECT_EQ(pkv_block_table_create(&t, nullptr, nullptr), PKV_ERROR_INVALID_ARGUMENT);
    pkv_block_table_params p = PKV_BLOCK_TABLE_PARAMS_INIT;
    p.struct_size = 0;
    EXPECT_EQ(pkv_block_table_create(&t, f.pool.get(), &p), PKV_ERROR_STRUCT_SIZE);
    p = PKV_BLOCK_TABLE_PARAMS_INIT;
    p.flags = 2;
    EXPECT_EQ(pkv_block_table_create(&t, f.pool.get(), &p), PKV_ERROR_INVALID_ARGUMENT);
    p.flags = 0;
    p.max_batch = -1;
    EXPECT_EQ(pkv_block_table_create(&t, f.pool.get(), &p), PKV_ERROR_INVALID_ARGUMENT);
    EXPECT_NE(std::string(pkv_last_error_message()).find("params->max_batch"), std::string::npos);
    p.max_batch = 0;
    p.max_tokens = int64_t(1) << 31;
    EXPECT_EQ(pkv_block_table_create(&t, f.pool.get(), &p), PKV_ERROR_INVALID_ARGUMENT);
    p.max_tokens = 0;
    p.max_blocks = int64_t(1) << 40;
    EXPECT_EQ(pkv_block_table_create(&t, f.pool.get(), &p), PKV_ERROR_INVALID_ARGUMENT);
    EXPECT_EQ(t, nullptr);
    // Defaults (params NULL): 256 x 512, 8192 tokens.
    ASSERT_EQ(pkv_block_table_create(&t, f.pool.get(), nullptr), PKV_SUCCESS);
    pkv_batch_mirror m;
    m.struct_size = sizeof m;
    ASSERT_EQ(pkv_block_table_mirror(&m, t), PKV_SUCCESS);
    EXPECT_EQ(m.block_table.shape[0], 256);
    EXPECT_EQ(m.block_table.shape[1], 512);
    EXPECT_EQ(m.slot_mapping.shape[0], 8192);
    m.struct_size = 0;
    EXPECT_EQ(pkv_block_table_mirror(&m, t), PKV_ERROR_STRUCT_SIZE);
    EXPECT_EQ(pkv_block_table_mirror(nullptr, t), PKV_ERROR_INVALID_ARGUMENT);
    EXPECT_EQ(pkv_block_table_destroy(t), PKV_SUCCESS);
}

TEST(BlockTableErrors, Requests) {
    Fixture f;
    pkv_block_table *t = f.table.get();
    ASSERT_EQ(pkv_block_table_add(t, 5), PKV_SUCCESS);
    EXPECT_EQ(pkv_block_table_add(t, 5), PKV_ERROR_INVALID_ARGUMENT);
    EXPECT_NE(std::string(pkv_last_error_message()).find("request 5 already exists"), std::string::npos);
    EXPECT_EQ(pkv_block_table_add(nullptr, 6), PKV_ERROR_INVALID_ARGUMENT);
    int64_t s[4];
    EXPECT_EQ(pkv_block_table_append(s, t, 6, 1, nullptr), PKV_ERROR_INVALID_ARGUMENT);
    EXPECT_NE(std::string(pkv_last_error_message()).find("request 6 is not in the table"), std::string::npos);
    EXPECT_EQ(pkv_block_table_append(s, t, 5, -1, nullptr), PKV_ERROR_INVALID_ARGUMENT);
    EXPECT_EQ(pkv_block_table_append(s, t, 5, int64_t(1) << 31, nullptr), PKV_ERROR_INVALID_ARGUMENT);
    EXPECT_EQ(pkv_block_table_append(s, t, 5, 0, nullptr), PKV_SUCCESS);
    EXPECT_EQ(pkv_block_table_fork(t, 6, 7), PKV_ERROR_INVALID_ARGUMENT);
    EXPECT_NE(std::string(pkv_last_error_message()).find("parent 6"), std::string::npos);
    EXPECT_EQ(pkv_block_table_fork(t, 5, 5), PKV_ERROR_INVALID_ARGUMENT);
    EXPECT_NE(std::string(pkv_last_error_message()).find("child 5 already exists"), std::string::npos);
    EXPECT_EQ(pkv_block_table_remove(t, 6), PKV_ERROR_INVALID_ARGUMENT);
    int64_t n = 0, count = 0;
    EXPECT_EQ(pkv_block_table_num_tokens(&n, t, 6), PKV_ERROR_INVALID_ARGUMENT);
    EXPECT_EQ(pkv_block_table_num_tokens(nullptr, t, 5), PKV_ERROR_INVALID_ARGUMENT);
    EXPECT_EQ(pkv_block_table_num_tokens(&n, nullptr, 5), PKV_ERROR_INVALID_ARGUMENT);
    int32_t ids[2];
    EXPECT_EQ(pkv_block_table_blocks(ids, 2, nullptr, t, 5), PKV_ERROR_INVALID_ARGUMENT);
    EXPECT_EQ(pkv_block_table_blocks(nullptr, 2, &count, t, 5), PKV_ERROR_INVALID_ARGUMENT);
    EXPECT_EQ(pkv_block_table_blocks(ids, -1, &count, t, 5), PKV_ERROR_INVALID_ARGUMENT);
    EXPECT_EQ(pkv_block_table_blocks(ids, 2, &count, t, 6), PKV_ERROR_INVALID_ARGUMENT);
}

}  // namespace
}  // namespace pkvt
