// pkv_copy_blocks over caches the caller owns, and pkv_convert, against host models:
//  - copy_blocks: each cache is a byte image; the model applies the pairs block by block (skipping
//    ids out of range and src == dst) and the whole image is compared, so a byte written in the
//    gap between strided blocks, or in a skipped block, fails the test.
//  - convert: every dtype pair, strided source and padded destination, against the independent
//    oracle of test_common.h (exact RNE search); padding bytes of dst must stay as they were.
// CPU always; CUDA (same cases) when a device is present.
#include "test_common.h"

namespace pkvt {
namespace {

// ------------------------------------------------------------------------------ copy_blocks
struct RawCache {
    pkv_dtype dtype;
    int64_t elem;                       // bytes
    int64_t num_blocks;
    std::vector<int64_t> block_shape;   // dims 1..
    int64_t stride0;                    // elements between blocks (>= block elements)
    int64_t block_elems() const {
        int64_t n = 1;
        for (int64_t d : block_shape) n *= d;
        return n;
    }
    int64_t image_bytes() const { return ((num_blocks - 1) * stride0 + block_elems()) * elem; }
};

pkv_tensor raw_tensor(const RawCache &c, void *data, pkv_device dev) {
    pkv_tensor t;
    std::memset(&t, 0, sizeof t);
    t.data = data;
    t.dtype = c.dtype;
    t.device = dev;
    t.ndim = int32_t(1 + c.block_shape.size());
    t.shape[0] = c.num_blocks;
    t.strides[0] = c.stride0;
    int64_t stride = 1;
    for (int d = t.ndim - 1; d >= 1; --d) {
        t.shape[d] = c.block_shape[size_t(d - 1)];
        t.strides[d] = stride;
        stride *= t.shape[d];
    }
    return t;
}

// A mix of vLLM-like caches: NHD bf16, the key half of [NB, 2, BS, H, D] (gaps between blocks),
// fp8 bytes with an odd block size (byte accesses), f32, int8 of 1 element a block.
std::vector<RawCache> mixed_caches(int64_t nb) {
    return {{PKV_DTYPE_BF16, 2, nb, {4, 2, 16}, 4 * 2 * 16},
            {PKV_DTYPE_F16, 2, nb, {4, 2, 16}, 2 * 4 * 2 * 16},
            {PKV_DTYPE_FP8_E4M3, 1, nb, {3, 5}, 17},
            {PKV_DTYPE_F32, 4, nb, {2, 3}, 6},
            {PKV_DTYPE_INT8, 1, nb, {1}, 1}};
}

// pairs as [P, 2] rows (src, dst): ordinary moves, ids out of range on either side, a self copy.
std::vector<int64_t> test_pairs(int64_t nb) {
    return {0, 3, 5, 1, 2, 2, -1, 4, 6, nb, nb + 7, 0, 7, 6};
}

void model_copy(const RawCache &c, std::vector<uint8_t> &img, const std::vector<int64_t> &pairs) {
    const int64_t bytes = c.block_elems() * c.elem, stride = c.stride0 * c.elem;
    const std::vector<uint8_t> before = img;  // pairs run in parallel: read the original blocks
    for (size_t i = 0; i + 1 < pairs.size(); i += 2) {
        const int64_t s = pairs[i], d = pairs[i + 1];
        if (s < 0 || s >= c.num_blocks || d < 0 || d >= c.num_blocks || s == d) continue;
        std::memcpy(img.data() + d * stride, before.data() + s * stride, size_t(bytes));
    }
}

struct CopyCase {
    Backend be;
    bool int64_pairs;
    int num_caches;  // > 5: that many small caches (several CUDA launches past 256)
};

class RawCopyBlocks : public ::testing::TestWithParam<CopyCase> {};

TEST_P(RawCopyBlocks, MatchesByteModel) {
    const CopyCase p = GetParam();
    PKVT_SKIP_IF_NO_BACKEND(p.be);
    const pkv_device dev = backend_device(p.be);
    const int64_t nb = 8;
    std::vector<RawCache> caches = mixed_caches(nb);
    while (int(caches.size()) < p.num_caches)  // varied small caches
        caches.push_back({PKV_DTYPE_UINT8, 1, nb, {int64_t(caches.size() % 7 + 1)}, int64_t(caches.size() % 7 + 3)});
    Rng rng(17 + uint64_t(p.num_caches));
    std::vector<Buf> bufs;
    std::vector<std::vector<uint8_t>> expected;
    std::vector<pkv_tensor> tensors;
    for (const RawCache &c : caches) {
        std::vector<uint8_t> img = random_bytes(rng, size_t(c.image_bytes()));
        bufs.emplace_back(p.be, img.size());
        bufs.back().upload(img);
        tensors.push_back(raw_tensor(c, bufs.back().ptr(), dev));
        expected.push_back(img);
    }
    const std::vector<int64_t> pairs64 = test_pairs(nb);
    std::vector<int32_t> pairs32(pairs64.begin(), pairs64.end());
    Buf pairs_buf = p.int64_pairs ? to_device(p.be, pairs64) : to_device(p.be, pairs32);
    const pkv_tensor pairs = make_tensor(pairs_buf.ptr(), p.int64_pairs ? PKV_DTYPE_INT64 : PKV_DTYPE_INT32, dev,
                                         {int64_t(pairs64.size() / 2), 2}, {2, 1});
    TestStream stream(p.be, true);
    ASSERT_EQ(pkv_copy_blocks(tensors.data(), int32_t(tensors.size()), &pairs, stream.get()), PKV_SUCCESS)
        << pkv_last_error_message();
    stream.sync(p.be);
    for (size_t i = 0; i < caches.size(); ++i) {
        model_copy(caches[i], expected[i], pairs64);
        EXPECT_TRUE(bytes_equal(expected[i], bufs[i].download_all(), nullptr, "cache " + std::to_string(i)));
    }
}

std::vector<CopyCase> copy_cases(Backend be) {
    return {{be, true, 5}, {be, false, 5}, {be, true, 300}};
}
std::string copy_name(const ::testing::TestParamInfo<CopyCase> &i) {
    return std::string(i.param.int64_pairs ? "int64" : "int32") + "_" + std::to_string(i.param.num_caches) + "caches";
}
INSTANTIATE_TEST_SUITE_P(Cpu, RawCopyBlocks, ::testing::ValuesIn(copy_cases(Backend::CPU)), copy_name);
INSTANTIATE_TEST_SUITE_P(Cuda, RawCopyBlocks, ::testing::ValuesIn(copy_cases(Backend::CUDA)), copy_name);

TEST(RawOpsErrors, CopyBlocksRejectsBadCaches) {
    const pkv_device cpu{PKV_DEVICE_CPU, 0};
    std::vector<uint8_t> mem(4096, 0x5A);
    const std::vector<uint8_t> untouched = mem;
    std::vector<int64_t> ids = {0, 1};
    const pkv_tensor pairs = make_tensor(ids.data(), PKV_DTYPE_INT64, cpu, {1, 2}, {2, 1});
    // Blocks that overlap (stride0 smaller than a block).
    pkv_tensor t = make_tensor(mem.data(), PKV_DTYPE_F32, cpu, {4, 8}, {4, 1});
    EXPECT_TRUE(failed_with(pkv_copy_blocks(&t, 1, &pairs, nullptr), PKV_ERROR_INVALID_ARGUMENT, "pkv_copy_blocks",
                            {"caches[0]", "overlap"}));
    // Inner dimensions not dense.
    t = make_tensor(mem.data(), PKV_DTYPE_F32, cpu, {4, 4, 2}, {16, 1, 4});
    EXPECT_TRUE(failed_with(pkv_copy_blocks(&t, 1, &pairs, nullptr), PKV_ERROR_INVALID_ARGUMENT, "pkv_copy_blocks",
                            {"dense"}));
    // Pairs of the wrong shape, NULL caches, a negative count.
    t = make_tensor(mem.data(), PKV_DTYPE_F32, cpu, {4, 8}, {8, 1});
    const pkv_tensor flat = make_tensor(ids.data(), PKV_DTYPE_INT64, cpu, {2}, {1});
    EXPECT_TRUE(failed_with(pkv_copy_blocks(&t, 1, &flat, nullptr), PKV_ERROR_INVALID_ARGUMENT, "pkv_copy_blocks",
                            {"pairs"}));
    EXPECT_TRUE(failed_with(pkv_copy_blocks(nullptr, 1, &pairs, nullptr), PKV_ERROR_INVALID_ARGUMENT,
                            "pkv_copy_blocks", {"caches"}));
    EXPECT_TRUE(failed_with(pkv_copy_blocks(&t, -1, &pairs, nullptr), PKV_ERROR_INVALID_ARGUMENT, "pkv_copy_blocks",
                            {"num_caches"}));
    // A second cache on another device than the first.
    pkv_tensor two[2] = {t, t};
    two[1].device = {PKV_DEVICE_CUDA, 0};
    EXPECT_EQ(pkv_copy_blocks(two, 2, &pairs, nullptr), PKV_ERROR_INVALID_ARGUMENT);
    EXPECT_EQ(mem, untouched);
    // Zero caches or zero pairs: nothing to do.
    EXPECT_EQ(pkv_copy_blocks(nullptr, 0, &pairs, nullptr), PKV_SUCCESS);
    const pkv_tensor none = make_tensor(nullptr, PKV_DTYPE_INT32, cpu, {0, 2}, {2, 1});
    EXPECT_EQ(pkv_copy_blocks(&t, 1, &none, nullptr), PKV_SUCCESS);
    EXPECT_EQ(mem, untouched);
}

// ------------------------------------------------------------------------------ convert
constexpr Fmt kFmts[] = {Fmt::F32, Fmt::F16, Fmt::BF16, Fmt::E4M3, Fmt::E5M2};

struct ConvertCase {
    Backend be;
    Fmt src, dst;
};

// The expected bits of one element, from the oracle: float32 x / scale then RNE to fp8; fp8 to
// float(q) * scale in float32 then RNE; plain RNE between floats; equal formats copy bits.
uint32_t expected_bits(Fmt src, Fmt dst, uint32_t bits, float scale) {
    if (src == dst) return bits;
    float x = oracle_to_float(src, bits);
    if (fmt_is_fp8(dst)) x = x / scale;
    if (fmt_is_fp8(src)) x = x * scale;
    return oracle_encode(dst, x);
}

bool same_value(Fmt f, uint32_t a, uint32_t b) {
    return (oracle_is_nan(f, a) && oracle_is_nan(f, b)) || a == b;
}

class Convert : public ::testing::TestWithParam<ConvertCase> {};

TEST_P(Convert, MatchesOracle) {
    const ConvertCase p = GetParam();
    PKVT_SKIP_IF_NO_BACKEND(p.be);
    const pkv_device dev = backend_device(p.be);
    // Logical [3, 5, 7]; src is a transposed view of a [7, 3, 5] buffer; dst rows padded to 9.
    const int64_t A = 3, B = 5, C = 7, n = A * B * C;
    const int sb = fmt_bytes(p.src), db = fmt_bytes(p.dst);
    Rng rng(uint64_t(int(p.src) * 8 + int(p.dst)));
    std::vector<uint8_t> src(size_t(n * sb));
    for (int64_t i = 0; i < n; ++i) {
        uint32_t b = rng.chance(0.05) ? nan_bits(p.src) : random_code_no_nan(rng, p.src);
        if (!fmt_is_fp8(p.src) && rng.chance(0.7)) b = random_value_bits(rng, p.src);
        store_bits(src.data() + i * sb, p.src, b);
    }
    const int64_t dst_elems = A * B * 9;
    std::vector<uint8_t> dst_init = random_bytes(rng, size_t(dst_elems * db));
    Buf src_buf = to_device(p.be, src), dst_buf = to_device(p.be, dst_init);
    const float scale = 0.37f;
    Buf scale_buf = to_device(p.be, std::vector<float>{scale});
    const pkv_tensor s = make_tensor(src_buf.ptr(), fmt_dtype(p.src), dev, {A, B, C}, {B, 1, A * B});
    const pkv_tensor d = make_tensor(dst_buf.ptr(), fmt_dtype(p.dst), dev, {A, B, C}, {B * 9, 9, 1});
    TestStream stream(p.be, true);
    const pkv_status st = pkv_convert(&d, &s, reinterpret_cast<const float *>(scale_buf.ptr()), stream.get());
    if (fmt_is_fp8(p.src) && fmt_is_fp8(p.dst) && p.src != p.dst) {
        EXPECT_TRUE(failed_with(st, PKV_ERROR_NOT_SUPPORTED, "pkv_convert", {"e5m2"}));
        return;
    }
    ASSERT_EQ(st, PKV_SUCCESS) << pkv_last_error_message();
    stream.sync(p.be);
    const std::vector<uint8_t> got = dst_buf.download_all();
    int bad = 0;
    for (int64_t e = 0; e < dst_elems; ++e) {
        const int64_t a = e / (B * 9), b = e / 9 % B, c = e % 9;
        const uint32_t g = load_bits(got.data() + e * db, p.dst);
        if (c >= C) {  // padding: untouched
            if (g != load_bits(dst_init.data() + e * db, p.dst) && bad++ < 5) ADD_FAILURE() << "padding " << e;
            continue;
        }
        const uint32_t in = load_bits(src.data() + (a * B + b + c * A * B) * sb, p.src);
        const uint32_t want = expected_bits(p.src, p.dst, in, scale);
        if (!same_value(p.dst, want, g) && bad++ < 5)
            ADD_FAILURE() << "[" << a << "," << b << "," << c << "] src 0x" << std::hex << in << " want 0x" << want
                          << " got 0x" << g;
    }
    EXPECT_EQ(bad, 0);
}

std::vector<ConvertCase> convert_cases(Backend be) {
    std::vector<ConvertCase> v;
    for (Fmt s : kFmts)
        for (Fmt d : kFmts) v.push_back({be, s, d});
    return v;
}
std::string convert_name(const ::testing::TestParamInfo<ConvertCase> &i) {
    return std::string(fmt_name(i.param.src)) + "_to_" + fmt_name(i.param.dst);
}
INSTANTIATE_TEST_SUITE_P(Cpu, Convert, ::testing::ValuesIn(convert_cases(Backend::CPU)), convert_name);
INSTANTIATE_TEST_SUITE_P(Cuda, Convert, ::testing::ValuesIn(convert_cases(Backend::CUDA)), convert_name);

TEST(RawOpsErrors, ConvertRejectsBadTensors) {
    const pkv_device cpu{PKV_DEVICE_CPU, 0};
    std::vector<float> src(12, 1.5f), dst(12, -2.0f);
    const std::vector<float> untouched = dst;
    const pkv_tensor s = make_tensor(src.data(), PKV_DTYPE_F32, cpu, {3, 4}, {4, 1});
    pkv_tensor d = make_tensor(dst.data(), PKV_DTYPE_F16, cpu, {4, 3}, {3, 1});
    EXPECT_TRUE(failed_with(pkv_convert(&d, &s, nullptr, nullptr), PKV_ERROR_INVALID_ARGUMENT, "pkv_convert",
                            {"shape"}));
    d = make_tensor(dst.data(), PKV_DTYPE_INT32, cpu, {3, 4}, {4, 1});
    EXPECT_TRUE(failed_with(pkv_convert(&d, &s, nullptr, nullptr), PKV_ERROR_INVALID_ARGUMENT, "pkv_convert",
                            {"dtype"}));
    d = make_tensor(dst.data(), PKV_DTYPE_F32, cpu, {3, 4}, {-4, 1});
    EXPECT_TRUE(failed_with(pkv_convert(&d, &s, nullptr, nullptr), PKV_ERROR_INVALID_ARGUMENT, "pkv_convert",
                            {"negative"}));
    d = make_tensor(dst.data(), PKV_DTYPE_F32, {PKV_DEVICE_CUDA, 0}, {3, 4}, {4, 1});
    EXPECT_EQ(pkv_convert(&d, &s, nullptr, nullptr), PKV_ERROR_INVALID_ARGUMENT);
    EXPECT_TRUE(failed_with(pkv_convert(nullptr, &s, nullptr, nullptr), PKV_ERROR_INVALID_ARGUMENT, "pkv_convert",
                            {"dst"}));
    EXPECT_EQ(dst, untouched);
    // In place (dst is src) and 0-d tensors work; NULL scale is 1.
    pkv_tensor same = make_tensor(dst.data(), PKV_DTYPE_F32, cpu, {12}, {1});
    EXPECT_EQ(pkv_convert(&same, &same, nullptr, nullptr), PKV_SUCCESS);
    EXPECT_EQ(dst, untouched);
    uint16_t h = 0;
    const pkv_tensor scalar_src = make_tensor(src.data(), PKV_DTYPE_F32, cpu, {}, {});
    const pkv_tensor scalar_dst = make_tensor(&h, PKV_DTYPE_BF16, cpu, {}, {});
    EXPECT_EQ(pkv_convert(&scalar_dst, &scalar_src, nullptr, nullptr), PKV_SUCCESS);
    EXPECT_EQ(h, 0x3FC0);  // 1.5 in bf16
}

}  // namespace
}  // namespace pkvt
