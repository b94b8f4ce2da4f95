// The handles' threading contract: distinct block tables and slots objects of ONE pool used
// from several threads at once (the pool's allocator is internally locked). Each thread runs a
// random mix of add / append / fork / truncate / remove on its own table and checks its own
// bookkeeping; at the end every block is free again and the reference counts add up.
#include <atomic>
#include <map>
#include <thread>

#include "handles_common.h"

namespace pkvt {
namespace {

class HandleThreads : public ::testing::TestWithParam<Backend> {};

TEST_P(HandleThreads, DistinctTablesShareOnePool) {
    const Backend be = GetParam();
    PKVT_SKIP_IF_NO_BACKEND(be);
    const int64_t BS = 4, NB = 96;
    const int kThreads = 6, kSteps = 400;
    PoolPtr pool = make_pool(be, BS, {layer_spec(Fmt::F16, PKV_HEAD_LAYOUT_NHD, 1, 16, 16)}, NB);
    ASSERT_TRUE(pool);
    std::atomic<int> failures{0}, out_of_blocks{0}, cows{0};
    auto worker = [&](int index) {
        TestStream stream(be, true);
        pkv_block_table *t = nullptr;
        pkv_slots *slots = nullptr;
        if (pkv_block_table_create(&t, pool.get(), nullptr) != PKV_SUCCESS ||
            pkv_slots_create(&slots, pool.get(), 8) != PKV_SUCCESS) {
            ++failures;
            return;
        }
        Rng r(uint64_t(100 + index));
        std::map<uint64_t, int64_t> tokens;  // the thread's own model of its table
        std::vector<int32_t> held_slots;
        uint64_t next_id = uint64_t(index) << 32;
        auto fail = [&](const char *what) {
            ++failures;
            ADD_FAILURE() << "thread " << index << ": " << what << ": " << pkv_last_error_message();
        };
        for (int step = 0; step < kSteps && failures == 0; ++step) {
            const int op = int(r.range(0, 9));
            auto pick = [&]() {
                auto it = tokens.begin();
                std::advance(it, r.range(0, int64_t(tokens.size()) - 1));
                return it;
            };
            if (tokens.empty() || op == 0) {
                if (pkv_block_table_add(t, next_id) != PKV_SUCCESS) fail("add");
                tokens[next_id++] = 0;
            } else if (op <= 4) {
                auto it = pick();
                const int64_t n = r.range(1, 9);
                std::vector<int64_t> s(static_cast<size_t>(n));
                const std::vector<int32_t> before = table_blocks(t, it->first);
                const pkv_status st = pkv_block_table_append(s.data(), t, it->first, n, stream.get());
                if (st == PKV_ERROR_OUT_OF_BLOCKS) {
                    ++out_of_blocks;
                    if (table_blocks(t, it->first) != before) fail("OUT_OF_BLOCKS changed the request");
                    continue;
                }
                if (st != PKV_SUCCESS) fail("append");
                const std::vector<int32_t> after = table_blocks(t, it->first);
                if (!before.empty() && after[before.size() - 1] != before.back()) ++cows;
                for (int64_t i = 0; i < n; ++i) {
                    const int64_t p = it->second + i;
                    if (s[size_t(i)] != int64_t(after[size_t(p / BS)]) * BS + p % BS) fail("slot");
                }
                it->second += n;
            } else if (op <= 6) {
                auto it = pick();
                if (pkv_block_table_fork(t, it->first, next_id) != PKV_SUCCESS) fail("fork");
                tokens[next_id++] = it->second;
            } else if (op == 7) {
                auto it = pick();
                const int64_t n = r.range(0, it->second);
                if (pkv_block_table_truncate(t, it->first, n) != PKV_SUCCESS) fail("truncate");
                it->second = n;
            } else if (op == 8) {
                auto it = pick();
                if (pkv_block_table_remove(t, it->first) != PKV_SUCCESS) fail("remove");
                tokens.erase(it);
            } else {
                int32_t id = -1;
                const pkv_status st = pkv_slots_acquire(&id, slots, stream.get());
                if (st == PKV_SUCCESS) held_slots.push_back(id);
                else if (st != PKV_ERROR_OUT_OF_BLOCKS) fail("slots acquire");
                if (held_slots.size() > 4) {
                    if (pkv_slots_release(slots, held_slots.front()) != PKV_SUCCESS) fail("slots release");
                    held_slots.erase(held_slots.begin());
                }
            }
            for (const auto &kv : tokens) {
                if (table_tokens(t, kv.first) != kv.second) fail("token count");
                if (int64_t(table_blocks(t, kv.first).size()) != (kv.second + BS - 1) / BS) fail("block count");
            }
        }
        // Leave some requests for destroy to release.
        stream.sync(be);
        if (pkv_block_table_destroy(t) != PKV_SUCCESS) fail("table destroy");
        if (pkv_slots_destroy(slots) != PKV_SUCCESS) fail("slots destroy");
    };
    std::vector<std::thread> threads;
    for (int i = 0; i < kThreads; ++i) threads.emplace_back(worker, i);
    for (std::thread &th : threads) th.join();
    EXPECT_EQ(failures.load(), 0);
    EXPECT_GT(out_of_blocks.load(), 0) << "the pool never ran dry: the test did not contend";
    EXPECT_GT(cows.load(), 0) << "no copy-on-write happened";
    const pkv_pool_stats s = pool_stats(pool.get());
    EXPECT_EQ(s.free_blocks, NB);
    for (int32_t id = 0; id < NB; ++id) EXPECT_EQ(refcount(pool.get(), id), 0) << "block " << id;
}

// The allocator itself, hammered: alloc / retain / release from many threads.
TEST_P(HandleThreads, AllocatorIsInternallyLocked) {
    const Backend be = GetParam();
    PKVT_SKIP_IF_NO_BACKEND(be);
    const int64_t NB = 64;
    PoolPtr pool = make_pool(be, 4, {layer_spec(Fmt::F16, PKV_HEAD_LAYOUT_NHD, 1, 8, 8)}, NB);
    std::atomic<int> failures{0};
    auto worker = [&](int index) {
        Rng r(uint64_t(7 + index));
        for (int step = 0; step < 2000; ++step) {
            int32_t ids[4];
            const int64_t n = r.range(1, 4);
            const pkv_status st = pkv_pool_alloc_blocks(ids, pool.get(), PKV_TIER_DEVICE, n);
            if (st == PKV_ERROR_OUT_OF_BLOCKS) continue;
            if (st != PKV_SUCCESS) { ++failures; continue; }
            if (pkv_pool_retain_blocks(pool.get(), PKV_TIER_DEVICE, ids, n) != PKV_SUCCESS) ++failures;
            for (int64_t i = 0; i < n; ++i)
                if (refcount(pool.get(), ids[i]) != 2) ++failures;  // ours alone: nobody else holds it
            if (pkv_pool_release_blocks(pool.get(), PKV_TIER_DEVICE, ids, n) != PKV_SUCCESS) ++failures;
            if (pkv_pool_release_blocks(pool.get(), PKV_TIER_DEVICE, ids, n) != PKV_SUCCESS) ++failures;
        }
    };
    std::vector<std::thread> threads;
    for (int i = 0; i < 8; ++i) threads.emplace_back(worker, i);
    for (std::thread &th : threads) th.join();
    EXPECT_EQ(failures.load(), 0);
    EXPECT_EQ(pool_stats(pool.get()).free_blocks, NB);
}

INSTANTIATE_TEST_SUITE_P(Cpu, HandleThreads, ::testing::Values(Backend::CPU));
INSTANTIATE_TEST_SUITE_P(Cuda, HandleThreads, ::testing::Values(Backend::CUDA));

}  // namespace
}  // namespace pkvt
