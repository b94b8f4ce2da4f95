// Split head rows (k_chunk_size / v_chunk_size): vLLM's legacy 5-D reshape_and_cache layout,
// key [NB, H, D/x, BS, x] and value [NB, H, D, BS]. The write into that layout must put every
// element where an NHD write puts it (compared element by element through the 5-D address
// formula, untouched slots included), and the gather must read it back; head counts with more
// than 512 chunks per token check that no chunk is dropped.
#include <gtest/gtest.h>

#include <vector>

#include "test_common.h"

using namespace pkvt;

namespace {

struct SplitCase {
    Backend be;
    Fmt in, cache;
    int64_t H, D, BS;
};

std::string split_name(const ::testing::TestParamInfo<SplitCase> &info) {
    const SplitCase &c = info.param;
    return std::string(fmt_name(c.in)) + "_to_" + fmt_name(c.cache) + "_H" + std::to_string(c.H) + "_D" +
           std::to_string(c.D) + "_BS" + std::to_string(c.BS);
}

class SplitRows : public ::testing::TestWithParam<SplitCase> {};

// Byte offset of element (b, s, h, d) in the 5-D key or 4-D value layout (contiguous tensors).
int64_t legacy_offset(bool value, const SplitCase &c, int64_t b, int64_t s, int64_t h, int64_t d) {
    const int64_t e = fmt_bytes(c.cache), x = 16 / e;
    if (value) return (((b * c.H + h) * c.D + d) * c.BS + s) * e;
    return ((((b * c.H + h) * (c.D / x) + d / x) * c.BS + s) * x + d % x) * e;
}

pkv_cache_view legacy_view(const SplitCase &c, int64_t NB, uint8_t *k, uint8_t *v, pkv_device dev, const float *scale) {
    const int64_t e = fmt_bytes(c.cache), x = 16 / e;
    pkv_cache_view view = PKV_CACHE_VIEW_INIT;
    view.format = fmt_cache_format(c.cache);
    view.device = dev;
    view.num_blocks = NB;
    view.block_size = c.BS;
    view.num_heads = c.H;
    view.head_size_k = c.D;
    view.k_data = k;
    view.v_data = v;
    view.k_stride_block = view.v_stride_block = c.H * c.D * c.BS * e;
    view.k_stride_head = view.v_stride_head = c.D * c.BS * e;
    view.k_stride_slot = x * e;
    view.k_chunk_size = x;
    view.k_stride_chunk = c.BS * x * e;
    view.v_stride_slot = e;
    view.v_chunk_size = 1;
    view.v_stride_chunk = c.BS * e;
    view.k_scale = view.v_scale = scale;
    return view;
}

TEST_P(SplitRows, MatchesNhd) {
    const SplitCase &c = GetParam();
    PKVT_SKIP_IF_NO_BACKEND(c.be);
    const int64_t T = 37, NB = (T + c.BS - 1) / c.BS + 2, e = fmt_bytes(c.cache), ie = fmt_bytes(c.in);
    const int64_t row = c.H * c.D, cache_bytes = NB * c.BS * row * e;
    Rng rng(uint64_t(c.H * 1000 + c.D * 10 + c.BS) + uint64_t(c.cache) * 7);

    // Inputs: random values; slots: unique, a few padding entries.
    std::vector<uint8_t> key(size_t(T * row * ie)), value(key.size());
    for (int64_t i = 0; i < T * row; ++i) {
        store_bits(&key[size_t(i * ie)], c.in, random_value_bits(rng, c.in));
        store_bits(&value[size_t(i * ie)], c.in, random_value_bits(rng, c.in));
    }
    std::vector<int64_t> all(size_t(NB * c.BS));
    for (size_t i = 0; i < all.size(); ++i) all[i] = int64_t(i);
    for (size_t i = all.size() - 1; i > 0; --i) std::swap(all[i], all[size_t(rng.range(0, int64_t(i)))]);
    std::vector<int64_t> slots(all.begin(), all.begin() + T);
    slots[3] = slots[17] = -1;
    const float scale = 0.5f;

    // Reference: an NHD write on the CPU.
    std::vector<uint8_t> ref_k(size_t(cache_bytes), 0xA5), ref_v(size_t(cache_bytes), 0x5A);
    {
        pkv_cache_view view = PKV_CACHE_VIEW_INIT;
        view.format = fmt_cache_format(c.cache);
        view.num_blocks = NB;
        view.block_size = c.BS;
        view.num_heads = c.H;
        view.head_size_k = c.D;
        view.k_data = ref_k.data();
        view.v_data = ref_v.data();
        view.k_scale = view.v_scale = &scale;
        const pkv_device cpu = backend_device(Backend::CPU);
        pkv_tensor kt = make_tensor(key.data(), fmt_dtype(c.in), cpu, {T, c.H, c.D}, {row, c.D, 1});
        pkv_tensor vt = make_tensor(value.data(), fmt_dtype(c.in), cpu, {T, c.H, c.D}, {row, c.D, 1});
        pkv_tensor st = make_tensor(slots.data(), PKV_DTYPE_INT64, cpu, {T}, {1});
        ASSERT_EQ(pkv_write_kv(&view, &kt, &vt, &st, nullptr, nullptr), PKV_SUCCESS) << pkv_last_error_message();
    }

    // The legacy layout on the backend under test, poisoned the same way.
    const pkv_device dev = backend_device(c.be);
    Buf kb(c.be, size_t(cache_bytes)), vb(c.be, size_t(cache_bytes)), in_k(c.be, key.size()), in_v(c.be, key.size());
    Buf sb(c.be, slots.size() * 8), scale_b(c.be, 4);
    kb.fill(0xA5, 0, size_t(cache_bytes));
    vb.fill(0x5A, 0, size_t(cache_bytes));
    in_k.upload(key);
    in_v.upload(value);
    sb.upload(slots.data(), slots.size() * 8);
    scale_b.upload(&scale, 4);
    const float *scale_dev = reinterpret_cast<const float *>(scale_b.ptr());
    pkv_cache_view view = legacy_view(c, NB, kb.ptr(), vb.ptr(), dev, scale_dev);
    pkv_tensor kt = make_tensor(in_k.ptr(), fmt_dtype(c.in), dev, {T, c.H, c.D}, {row, c.D, 1});
    pkv_tensor vt = make_tensor(in_v.ptr(), fmt_dtype(c.in), dev, {T, c.H, c.D}, {row, c.D, 1});
    pkv_tensor st = make_tensor(sb.ptr(), PKV_DTYPE_INT64, dev, {T}, {1});
    ASSERT_EQ(pkv_cache_view_check(&view), PKV_SUCCESS) << pkv_last_error_message();
    ASSERT_EQ(pkv_write_kv(&view, &kt, &vt, &st, nullptr, nullptr), PKV_SUCCESS) << pkv_last_error_message();
    device_sync(c.be);
    const std::vector<uint8_t> got_k = kb.download_all(), got_v = vb.download_all();

    int64_t mismatches = 0;
    for (int side = 0; side < 2; ++side) {
        const std::vector<uint8_t> &ref = side ? ref_v : ref_k, &got = side ? got_v : got_k;
        for (int64_t b = 0; b < NB; ++b)
            for (int64_t s = 0; s < c.BS; ++s)
                for (int64_t h = 0; h < c.H; ++h)
                    for (int64_t d = 0; d < c.D; ++d) {
                        const int64_t r = (((b * c.BS + s) * c.H + h) * c.D + d) * e;
                        const int64_t l = legacy_offset(side == 1, c, b, s, h, d);
                        if (std::memcmp(&ref[size_t(r)], &got[size_t(l)], size_t(e)) != 0 && ++mismatches <= 5)
                            ADD_FAILURE() << (side ? "V" : "K") << "[b=" << b << ",s=" << s << ",h=" << h << ",d=" << d
                                          << "] differs from the NHD write";
                    }
    }
    EXPECT_EQ(mismatches, 0);

    // Gather every written slot back (one request whose block table lists the blocks in
    // order) and compare with the gather of the NHD reference.
    const Fmt out = fmt_is_fp8(c.cache) ? Fmt::F32 : c.cache;
    const int64_t N = NB * c.BS, oe = fmt_bytes(out);
    std::vector<int32_t> table(static_cast<size_t>(NB));
    std::vector<int32_t> cu = {0, int32_t(N)};
    for (int64_t b = 0; b < NB; ++b) table[size_t(b)] = int32_t(b);
    std::vector<uint8_t> want_k(size_t(N * row * oe)), want_v(want_k.size());
    {
        const pkv_device cpu = backend_device(Backend::CPU);
        pkv_cache_view ref = PKV_CACHE_VIEW_INIT;
        ref.format = fmt_cache_format(c.cache);
        ref.num_blocks = NB;
        ref.block_size = c.BS;
        ref.num_heads = c.H;
        ref.head_size_k = c.D;
        ref.k_data = ref_k.data();
        ref.v_data = ref_v.data();
        ref.k_scale = ref.v_scale = &scale;
        pkv_tensor ok = make_tensor(want_k.data(), fmt_dtype(out), cpu, {N, c.H, c.D}, {row, c.D, 1});
        pkv_tensor ov = make_tensor(want_v.data(), fmt_dtype(out), cpu, {N, c.H, c.D}, {row, c.D, 1});
        pkv_tensor bt = make_tensor(table.data(), PKV_DTYPE_INT32, cpu, {1, NB}, {NB, 1});
        pkv_tensor ct = make_tensor(cu.data(), PKV_DTYPE_INT32, cpu, {2}, {1});
        ASSERT_EQ(pkv_gather_kv(&ok, &ov, &ref, &bt, &ct, nullptr, nullptr, nullptr), PKV_SUCCESS)
            << pkv_last_error_message();
    }
    Buf gk(c.be, want_k.size()), gv(c.be, want_v.size()), tb(c.be, table.size() * 4), cb(c.be, 8);
    gk.fill(0, 0, want_k.size());
    gv.fill(0, 0, want_v.size());
    tb.upload(table.data(), table.size() * 4);
    cb.upload(cu.data(), 8);
    pkv_tensor ok = make_tensor(gk.ptr(), fmt_dtype(out), dev, {N, c.H, c.D}, {row, c.D, 1});
    pkv_tensor ov = make_tensor(gv.ptr(), fmt_dtype(out), dev, {N, c.H, c.D}, {row, c.D, 1});
    pkv_tensor bt = make_tensor(tb.ptr(), PKV_DTYPE_INT32, dev, {1, NB}, {NB, 1});
    pkv_tensor ct = make_tensor(cb.ptr(), PKV_DTYPE_INT32, dev, {2}, {1});
    ASSERT_EQ(pkv_gather_kv(&ok, &ov, &view, &bt, &ct, nullptr, nullptr, nullptr), PKV_SUCCESS)
        << pkv_last_error_message();
    device_sync(c.be);
    EXPECT_TRUE(gk.download_all() == want_k) << "gathered K differs from the NHD gather";
    EXPECT_TRUE(gv.download_all() == want_v) << "gathered V differs from the NHD gather";
}

std::vector<SplitCase> split_cases(Backend be) {
    std::vector<SplitCase> out;
    const Fmt pairs[][2] = {{Fmt::F32, Fmt::F32}, {Fmt::F16, Fmt::F16}, {Fmt::BF16, Fmt::BF16},
                            {Fmt::F32, Fmt::BF16}, {Fmt::BF16, Fmt::E4M3}, {Fmt::F16, Fmt::E5M2}};
    for (const auto &p : pairs)
        for (int64_t D : {64, 80})
            for (int64_t BS : {1, 16}) out.push_back({be, p[0], p[1], 4, D, BS});
    // 128 heads x 128 dims: 2048 x-chunks per token for a 16-bit cache (vLLM's kernel stops at 512).
    out.push_back({be, Fmt::BF16, Fmt::BF16, 128, 128, 16});
    out.push_back({be, Fmt::BF16, Fmt::E4M3, 128, 128, 16});
    return out;
}

INSTANTIATE_TEST_SUITE_P(Cpu, SplitRows, ::testing::ValuesIn(split_cases(Backend::CPU)), split_name);
INSTANTIATE_TEST_SUITE_P(Cuda, SplitRows, ::testing::ValuesIn(split_cases(Backend::CUDA)), split_name);

TEST(SplitRowsMisc, Validation) {
    float k[64] = {};
    pkv_cache_view view = PKV_CACHE_VIEW_INIT;
    view.format = PKV_CACHE_FORMAT_F32;
    view.num_blocks = 1;
    view.block_size = 1;
    view.num_heads = 1;
    view.head_size_k = 8;
    view.k_data = k;
    view.k_chunk_size = 3;  // does not divide 8
    view.k_stride_chunk = 16;
    EXPECT_TRUE(failed_with(pkv_cache_view_check(&view), PKV_ERROR_INVALID_ARGUMENT, "pkv_cache_view_check",
                            {"chunk_size"}));
    view.k_chunk_size = 4;
    EXPECT_EQ(pkv_cache_view_check(&view), PKV_SUCCESS) << pkv_last_error_message();
    view.k_stride_chunk = 6;  // not a multiple of the element size
    EXPECT_TRUE(failed_with(pkv_cache_view_check(&view), PKV_ERROR_INVALID_ARGUMENT, "pkv_cache_view_check",
                            {"stride_chunk"}));
}

}  // namespace
