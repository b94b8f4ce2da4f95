// pkv_slots: lowest-free acquisition, the reset of registered regions (only the acquired
// slot's bytes, each region's own 32-bit pattern), exhaustion, release and register errors.
// Cpu/Slots and (with a device) Cuda/Slots.
#include "handles_common.h"

namespace pkvt {
namespace {

SlotsPtr make_slots(pkv_pool *pool, int32_t max_requests) {
    pkv_slots *s = nullptr;
    EXPECT_EQ(pkv_slots_create(&s, pool, max_requests), PKV_SUCCESS) << pkv_last_error_message();
    return SlotsPtr(s);
}

int32_t acquire(pkv_slots *s, pkv_stream stream = nullptr) {
    int32_t id = -5;
    EXPECT_EQ(pkv_slots_acquire(&id, s, stream), PKV_SUCCESS) << pkv_last_error_message();
    return id;
}

class Slots : public ::testing::TestWithParam<Backend> {};

TEST_P(Slots, AcquireTakesTheLowestFreeId) {
    const Backend be = GetParam();
    PKVT_SKIP_IF_NO_BACKEND(be);
    PoolPtr pool = make_pool(be, 4, {layer_spec(Fmt::F16, PKV_HEAD_LAYOUT_NHD, 1, 8, 8)}, 2);
    SlotsPtr s = make_slots(pool.get(), 4);
    EXPECT_EQ(acquire(s.get()), 0);
    EXPECT_EQ(acquire(s.get()), 1);
    EXPECT_EQ(acquire(s.get()), 2);
    ASSERT_EQ(pkv_slots_release(s.get(), 1), PKV_SUCCESS);
    ASSERT_EQ(pkv_slots_release(s.get(), 0), PKV_SUCCESS);
    EXPECT_EQ(acquire(s.get()), 0);
    EXPECT_EQ(acquire(s.get()), 1);
    EXPECT_EQ(acquire(s.get()), 3);
    // Exhausted: OUT_OF_BLOCKS, the output untouched, nothing taken.
    int32_t id = -5;
    EXPECT_EQ(pkv_slots_acquire(&id, s.get(), nullptr), PKV_ERROR_OUT_OF_BLOCKS);
    EXPECT_EQ(id, -5);
    EXPECT_NE(std::string(pkv_last_error_message()).find("all 4 slots are taken"), std::string::npos);
    ASSERT_EQ(pkv_slots_release(s.get(), 2), PKV_SUCCESS);
    EXPECT_EQ(acquire(s.get()), 2);
    // Release errors.
    EXPECT_EQ(pkv_slots_release(s.get(), 4), PKV_ERROR_INVALID_ARGUMENT);
    EXPECT_EQ(pkv_slots_release(s.get(), -1), PKV_ERROR_INVALID_ARGUMENT);
    ASSERT_EQ(pkv_slots_release(s.get(), 3), PKV_SUCCESS);
    EXPECT_EQ(pkv_slots_release(s.get(), 3), PKV_ERROR_INVALID_ARGUMENT);
    EXPECT_NE(std::string(pkv_last_error_message()).find("slot 3 is not acquired"), std::string::npos);
    EXPECT_EQ(pkv_slots_release(nullptr, 0), PKV_ERROR_INVALID_ARGUMENT);
}

TEST_P(Slots, AcquireResetsOnlyThatSlotOfEveryRegion) {
    const Backend be = GetParam();
    PKVT_SKIP_IF_NO_BACKEND(be);
    PoolPtr pool = make_pool(be, 4, {layer_spec(Fmt::F16, PKV_HEAD_LAYOUT_NHD, 1, 8, 8)}, 2);
    const int32_t R = 5;
    SlotsPtr s = make_slots(pool.get(), R);
    TestStream stream(be, true);
    // Region A: 12 bytes per slot, 20-byte stride (gaps); region B: 4 KiB + 4 per slot, packed
    // (larger than one CUDA block of threads); region C: one word per slot.
    struct Region {
        int64_t bytes, stride;
        uint32_t fill;
    };
    const Region regions[] = {{12, 20, 0xDEADBEEFu}, {4100, 4100, 0x00000000u}, {4, 8, 0x7F800001u}};
    Rng r(9);
    std::vector<Buf> bufs;
    std::vector<std::vector<uint8_t>> expect;
    for (const Region &g : regions) {
        expect.push_back(random_bytes(r, size_t(g.stride * R + 16)));
        bufs.push_back(to_device(be, expect.back()));
        ASSERT_EQ(pkv_slots_register_region(s.get(), bufs.back().ptr(), g.bytes, g.stride, g.fill), PKV_SUCCESS)
            << pkv_last_error_message();
    }
    auto reset_expected = [&](int32_t slot) {
        for (size_t i = 0; i < 3; ++i)
            for (int64_t w = 0; w < regions[i].bytes / 4; ++w)
                std::memcpy(&expect[i][size_t(slot * regions[i].stride + w * 4)], &regions[i].fill, 4);
    };
    auto check = [&](const char *when) {
        stream.sync(be);
        for (size_t i = 0; i < 3; ++i)
            EXPECT_TRUE(bytes_equal(expect[i], bufs[i].download_all(), nullptr,
                                    std::string(when) + ": region " + std::to_string(i)));
    };
    EXPECT_EQ(acquire(s.get(), stream.get()), 0);
    reset_expected(0);
    check("slot 0");
    EXPECT_EQ(acquire(s.get(), stream.get()), 1);
    reset_expected(1);
    check("slot 1");
    // Dirty slot 0's state, release it, acquire again: reset again.
    bufs[0].upload(random_bytes(r, 12).data(), 12, 0);
    ASSERT_EQ(pkv_slots_release(s.get(), 0), PKV_SUCCESS);
    EXPECT_EQ(acquire(s.get(), stream.get()), 0);
    check("slot 0 again");
    for (int32_t k = 2; k < R; ++k) {
        EXPECT_EQ(acquire(s.get(), stream.get()), k);
        reset_expected(k);
    }
    check("all slots");
}

INSTANTIATE_TEST_SUITE_P(Cpu, Slots, ::testing::Values(Backend::CPU));
INSTANTIATE_TEST_SUITE_P(Cuda, Slots, ::testing::Values(Backend::CUDA));

TEST(SlotsErrors, CreateAndRegister) {
    PoolPtr pool = make_pool(Backend::CPU, 4, {layer_spec(Fmt::F16, PKV_HEAD_LAYOUT_NHD, 1, 8, 8)}, 2);
    pkv_slots *raw = nullptr;
    EXPECT_EQ(pkv_slots_create(&raw, pool.get(), 0), PKV_ERROR_INVALID_ARGUMENT);
    EXPECT_NE(std::string(pkv_last_error_message()).find("max_requests"), std::string::npos);
    EXPECT_EQ(pkv_slots_create(&raw, nullptr, 4), PKV_ERROR_INVALID_ARGUMENT);
    EXPECT_EQ(pkv_slots_create(nullptr, pool.get(), 4), PKV_ERROR_INVALID_ARGUMENT);
    EXPECT_EQ(raw, nullptr);
    SlotsPtr s = make_slots(pool.get(), 4);
    std::vector<uint32_t> mem(256);
    char *base = reinterpret_cast<char *>(mem.data());
    EXPECT_EQ(pkv_slots_register_region(s.get(), nullptr, 8, 8, 0), PKV_ERROR_INVALID_ARGUMENT);
    EXPECT_EQ(pkv_slots_register_region(s.get(), base + 2, 8, 8, 0), PKV_ERROR_INVALID_ARGUMENT);
    EXPECT_EQ(pkv_slots_register_region(s.get(), base, 6, 8, 0), PKV_ERROR_INVALID_ARGUMENT);
    EXPECT_NE(std::string(pkv_last_error_message()).find("bytes_per_slot"), std::string::npos);
    EXPECT_EQ(pkv_slots_register_region(s.get(), base, 0, 8, 0), PKV_ERROR_INVALID_ARGUMENT);
    EXPECT_EQ(pkv_slots_register_region(s.get(), base, 8, 10, 0), PKV_ERROR_INVALID_ARGUMENT);
    EXPECT_EQ(pkv_slots_register_region(s.get(), base, 8, 4, 0), PKV_ERROR_INVALID_ARGUMENT);
    EXPECT_NE(std::string(pkv_last_error_message()).find("overlap"), std::string::npos);
    EXPECT_EQ(pkv_slots_register_region(s.get(), base, 8, INT64_MAX / 2, 0), PKV_ERROR_INVALID_ARGUMENT);
    EXPECT_EQ(pkv_slots_register_region(nullptr, base, 8, 8, 0), PKV_ERROR_INVALID_ARGUMENT);
    for (int i = 0; i < 16; ++i)
        ASSERT_EQ(pkv_slots_register_region(s.get(), base + 4 * i, 4, 64, uint32_t(i)), PKV_SUCCESS)
            << pkv_last_error_message();
    EXPECT_EQ(pkv_slots_register_region(s.get(), base, 4, 64, 0), PKV_ERROR_INVALID_ARGUMENT);
    EXPECT_NE(std::string(pkv_last_error_message()).find("16 regions"), std::string::npos);
    // 16 regions, interleaved word by word: one reset writes each its own pattern.
    int32_t id = -1;
    ASSERT_EQ(pkv_slots_acquire(&id, s.get(), nullptr), PKV_SUCCESS);
    ASSERT_EQ(id, 0);
    for (int i = 0; i < 16; ++i) EXPECT_EQ(mem[size_t(i)], uint32_t(i));
    EXPECT_EQ(pkv_slots_acquire(nullptr, s.get(), nullptr), PKV_ERROR_INVALID_ARGUMENT);
    EXPECT_EQ(pkv_slots_acquire(&id, nullptr, nullptr), PKV_ERROR_INVALID_ARGUMENT);
}

}  // namespace
}  // namespace pkvt
