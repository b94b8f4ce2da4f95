// pkv_build_slot_mapping and pkv_build_slot_mapping_csr against a plain reference written here
// (linear search for the request, the header's position formulas), on CPU tensors and (with a
// device) CUDA tensors: random batches with zero-length requests, positions outside the table,
// negative positions, block ids whose slot int32 cannot hold, a padding tail, a short output,
// int32 and int64 outputs, strided outputs whose gaps must stay untouched.
#include "test_common.h"

namespace pkvt {
namespace {

int64_t narrow(int64_t slot, bool i64) { return i64 || slot <= INT32_MAX ? slot : -1; }

// ------------------------------------------------------------------------------ references
struct TableBatch {
    int64_t B = 0, max_blocks = 0, row_stride = 0, block_size = 0;
    std::vector<int32_t> table, seq_lens, qsl;
};

int64_t ref_table_slot(const TableBatch &x, int64_t i) {
    for (int64_t b = 0; b < x.B; ++b) {
        const int64_t lo = x.qsl[size_t(b)], hi = x.qsl[size_t(b + 1)];
        if (i < lo || i >= hi) continue;
        const int64_t pos = x.seq_lens[size_t(b)] - (hi - lo) + (i - lo);
        if (pos < 0 || pos / x.block_size >= x.max_blocks) return -1;
        const int64_t block = x.table[size_t(b * x.row_stride + pos / x.block_size)];
        return block < 0 ? -1 : block * x.block_size + pos % x.block_size;
    }
    return -1;
}

struct CsrBatch {
    int64_t B = 0, page_size = 0;
    std::vector<int32_t> indptr, indices, last_page_len, append_indptr;
};

int64_t ref_csr_slot(const CsrBatch &x, int64_t i) {
    for (int64_t b = 0; b < x.B; ++b) {
        const int64_t lo = x.append_indptr[size_t(b)], hi = x.append_indptr[size_t(b + 1)];
        if (i < lo || i >= hi) continue;
        const int64_t pages = x.indptr[size_t(b + 1)] - x.indptr[size_t(b)];
        const int64_t len = pages > 0 ? (pages - 1) * x.page_size + x.last_page_len[size_t(b)] : 0;
        const int64_t pos = len - (hi - lo) + (i - lo);
        if (pos < 0 || pos / x.page_size >= pages) return -1;
        const int64_t page = x.indices[size_t(x.indptr[size_t(b)] + pos / x.page_size)];
        return page < 0 ? -1 : page * x.page_size + pos % x.page_size;
    }
    return -1;
}

// Random dense batch: zero-length requests, contexts that run past the table, negative positions
// (more new tokens than seq_lens), -1 entries, ids whose slots exceed int32.
TableBatch random_table_batch(Rng &r, int64_t B) {
    TableBatch x;
    x.B = B;
    x.block_size = r.chance(0.5) ? 16 : 5;
    x.max_blocks = r.range(1, 6);
    x.row_stride = x.max_blocks + r.range(0, 3);
    x.table.assign(size_t(std::max<int64_t>(B, 1) * x.row_stride), 0);
    for (auto &e : x.table) {
        const double u = r.uni();
        e = u < 0.05 ? -1 : u < 0.1 ? int32_t((int64_t(1) << 30) + r.range(0, 1000)) : int32_t(r.range(0, 5000));
    }
    x.qsl.push_back(0);
    for (int64_t b = 0; b < B; ++b) {
        const int64_t n = r.chance(0.25) ? 0 : r.range(1, 2 * x.block_size);
        const double u = r.uni();
        const int64_t ctx = u < 0.1 ? -r.range(1, 3)                                    // negative positions
                            : u < 0.2 ? x.max_blocks * x.block_size + r.range(-3, 10)   // past the table
                                      : r.range(0, x.max_blocks * x.block_size - n > 0 ? x.max_blocks * x.block_size - n : 0);
        x.seq_lens.push_back(int32_t(std::max<int64_t>(ctx + n, 0)));
        x.qsl.push_back(int32_t(x.qsl.back() + n));
    }
    return x;
}

CsrBatch random_csr_batch(Rng &r, int64_t B) {
    CsrBatch x;
    x.B = B;
    x.page_size = r.chance(0.5) ? 16 : 3;
    x.indptr.push_back(0);
    x.append_indptr.push_back(0);
    for (int64_t b = 0; b < B; ++b) {
        const int64_t pages = r.chance(0.15) ? 0 : r.range(1, 5);
        for (int64_t j = 0; j < pages; ++j) {
            const double u = r.uni();
            x.indices.push_back(u < 0.05 ? -1 : u < 0.1 ? int32_t((int64_t(1) << 30) + r.range(0, 99))
                                                        : int32_t(r.range(0, 3000)));
        }
        x.indptr.push_back(int32_t(x.indptr.back() + pages));
        x.last_page_len.push_back(pages ? int32_t(r.range(1, x.page_size)) : 0);
        const int64_t len = pages ? (pages - 1) * x.page_size + x.last_page_len.back() : 0;
        int64_t n = r.chance(0.2) ? 0 : r.range(0, len);
        if (r.chance(0.1)) n = len + r.range(1, 3);  // more new tokens than the request holds
        x.append_indptr.push_back(int32_t(x.append_indptr.back() + n));
    }
    return x;
}

// ------------------------------------------------------------------------------ suite
struct MetaCase {
    Backend be;
    std::string name;
};
void PrintTo(const MetaCase &c, std::ostream *os) { *os << c.name; }
class SlotMapping : public ::testing::TestWithParam<MetaCase> {};

// The output buffer: T entries at `stride`, gaps and entries poisoned; returns the tensor.
struct Output {
    Buf buf;
    pkv_tensor t;
    std::vector<uint8_t> poison;
    int64_t T, stride;
    bool i64;
    Output(Backend be, Rng &r, int64_t T_, bool i64_, int64_t stride_) : T(T_), stride(stride_), i64(i64_) {
        const size_t e = i64 ? 8 : 4;
        poison = random_bytes(r, size_t(std::max<int64_t>(T * stride, 1)) * e);
        buf = to_device(be, poison);
        t = make_tensor(buf.ptr(), i64 ? PKV_DTYPE_INT64 : PKV_DTYPE_INT32, backend_device(be), {T}, {stride});
    }
    // The expected image: entry i = slot(i), gaps unchanged.
    std::vector<uint8_t> expected(const std::function<int64_t(int64_t)> &slot) const {
        std::vector<uint8_t> v = poison;
        for (int64_t i = 0; i < T; ++i) {
            const int64_t s = narrow(slot(i), i64);
            if (i64) std::memcpy(&v[size_t(i * stride * 8)], &s, 8);
            else {
                const int32_t s32 = int32_t(s);
                std::memcpy(&v[size_t(i * stride * 4)], &s32, 4);
            }
        }
        return v;
    }
};

TEST_P(SlotMapping, FromBlockTableMatchesReference) {
    const Backend be = GetParam().be;
    PKVT_SKIP_IF_NO_BACKEND(be);
    const pkv_device dev = backend_device(be);
    TestStream stream(be, true);
    Rng r(11);
    int round = 0;
    for (int64_t B : {0, 1, 2, 5, 17, 64})
        for (bool i64 : {false, true})
            for (int64_t stride : {1, 3}) {
                const TableBatch x = random_table_batch(r, B);
                const int64_t total = x.qsl.back();
                // A padding tail, exactly the total, or fewer outputs than tokens.
                const int64_t T = round % 3 == 0 ? total + r.range(1, 40) : round % 3 == 1 ? total : total / 2;
                ++round;
                SCOPED_TRACE("B=" + std::to_string(B) + " T=" + std::to_string(T) + " total=" + std::to_string(total) +
                             (i64 ? " int64" : " int32") + " stride=" + std::to_string(stride));
                Output out(be, r, T, i64, stride);
                Buf tb = to_device(be, x.table), sb = to_device(be, x.seq_lens), qb = to_device(be, x.qsl);
                pkv_tensor tt = make_tensor(tb.ptr(), PKV_DTYPE_INT32, dev, {B, x.max_blocks}, {x.row_stride, 1});
                pkv_tensor st = make_tensor(sb.ptr(), PKV_DTYPE_INT32, dev, {B}, {1});
                pkv_tensor qt = make_tensor(qb.ptr(), PKV_DTYPE_INT32, dev, {B + 1}, {1});
                ASSERT_EQ(pkv_build_slot_mapping(&out.t, &tt, &st, &qt, x.block_size, stream.get()), PKV_SUCCESS)
                    << pkv_last_error_message();
                stream.sync(be);
                EXPECT_TRUE(bytes_equal(out.expected([&](int64_t i) { return ref_table_slot(x, i); }),
                                        out.buf.download_all(), nullptr, "slot mapping"));
            }
}

TEST_P(SlotMapping, FromCsrPageTableMatchesReference) {
    const Backend be = GetParam().be;
    PKVT_SKIP_IF_NO_BACKEND(be);
    const pkv_device dev = backend_device(be);
    TestStream stream(be, true);
    Rng r(12);
    int round = 0;
    for (int64_t B : {0, 1, 3, 8, 33, 100})
        for (bool i64 : {false, true})
            for (int64_t stride : {1, 2}) {
                const CsrBatch x = random_csr_batch(r, B);
                const int64_t total = x.append_indptr.back();
                const int64_t T = round % 3 == 0 ? total + r.range(1, 40) : round % 3 == 1 ? total : total / 2;
                ++round;
                SCOPED_TRACE("B=" + std::to_string(B) + " T=" + std::to_string(T) + " total=" + std::to_string(total) +
                             (i64 ? " int64" : " int32") + " stride=" + std::to_string(stride));
                Output out(be, r, T, i64, stride);
                Buf ib = to_device(be, x.indptr), xb = to_device(be, x.indices), lb = to_device(be, x.last_page_len),
                    ab = to_device(be, x.append_indptr);
                const int64_t nnz = int64_t(x.indices.size());
                pkv_tensor it = make_tensor(ib.ptr(), PKV_DTYPE_INT32, dev, {B + 1}, {1});
                pkv_tensor xt = make_tensor(nnz ? xb.ptr() : nullptr, PKV_DTYPE_INT32, dev, {nnz}, {1});
                pkv_tensor lt = make_tensor(B ? lb.ptr() : nullptr, PKV_DTYPE_INT32, dev, {B}, {1});
                pkv_tensor at = make_tensor(ab.ptr(), PKV_DTYPE_INT32, dev, {B + 1}, {1});
                ASSERT_EQ(pkv_build_slot_mapping_csr(&out.t, &it, &xt, &lt, &at, x.page_size, stream.get()),
                          PKV_SUCCESS)
                    << pkv_last_error_message();
                stream.sync(be);
                EXPECT_TRUE(bytes_equal(out.expected([&](int64_t i) { return ref_csr_slot(x, i); }),
                                        out.buf.download_all(), nullptr, "slot mapping"));
            }
}

TEST_P(SlotMapping, KnownBatchAndLargeOutput) {
    // A hand-checked batch: request 0 decodes 1 token at position 17, request 1 is empty,
    // request 2 prefills 3 tokens at positions 0..2; block size 16.
    const Backend be = GetParam().be;
    PKVT_SKIP_IF_NO_BACKEND(be);
    const pkv_device dev = backend_device(be);
    const std::vector<int32_t> table = {7, 9, 0, 4, 4, 4, 12, 0, 0}, seq = {18, 5, 3}, qsl = {0, 1, 1, 4};
    Buf tb = to_device(be, table), sb = to_device(be, seq), qb = to_device(be, qsl);
    pkv_tensor tt = make_tensor(tb.ptr(), PKV_DTYPE_INT32, dev, {3, 3}, {3, 1});
    pkv_tensor st = make_tensor(sb.ptr(), PKV_DTYPE_INT32, dev, {3}, {1});
    pkv_tensor qt = make_tensor(qb.ptr(), PKV_DTYPE_INT32, dev, {4}, {1});
    const int64_t T = 70000;  // many padding tokens: several thread blocks all writing -1
    Buf ob = to_device(be, std::vector<int64_t>(size_t(T), 123));
    pkv_tensor ot = make_tensor(ob.ptr(), PKV_DTYPE_INT64, dev, {T}, {1});
    ASSERT_EQ(pkv_build_slot_mapping(&ot, &tt, &st, &qt, 16, nullptr), PKV_SUCCESS) << pkv_last_error_message();
    device_sync(be);
    std::vector<int64_t> got(static_cast<size_t>(T));
    ob.download(got.data(), got.size() * 8);
    EXPECT_EQ(got[0], 9 * 16 + 1);
    EXPECT_EQ(got[1], 12 * 16 + 0);
    EXPECT_EQ(got[2], 12 * 16 + 1);
    EXPECT_EQ(got[3], 12 * 16 + 2);
    EXPECT_EQ(std::count(got.begin() + 4, got.end(), -1), T - 4);

    // The same batch as a CSR page table: pages {7, 9} (last page 2 tokens), {}, {12} (3 tokens).
    const std::vector<int32_t> indptr = {0, 2, 2, 3}, indices = {7, 9, 12}, last = {2, 0, 3};
    Buf ib = to_device(be, indptr), xb = to_device(be, indices), lb = to_device(be, last);
    pkv_tensor it = make_tensor(ib.ptr(), PKV_DTYPE_INT32, dev, {4}, {1});
    pkv_tensor xt = make_tensor(xb.ptr(), PKV_DTYPE_INT32, dev, {3}, {1});
    pkv_tensor lt = make_tensor(lb.ptr(), PKV_DTYPE_INT32, dev, {3}, {1});
    Buf ob32 = to_device(be, std::vector<int32_t>(6, 55));
    pkv_tensor ot32 = make_tensor(ob32.ptr(), PKV_DTYPE_INT32, dev, {6}, {1});
    ASSERT_EQ(pkv_build_slot_mapping_csr(&ot32, &it, &xt, &lt, &qt, 16, nullptr), PKV_SUCCESS)
        << pkv_last_error_message();
    device_sync(be);
    std::vector<int32_t> got32(6);
    ob32.download(got32.data(), 24);
    EXPECT_EQ(got32, (std::vector<int32_t>{9 * 16 + 1, 12 * 16, 12 * 16 + 1, 12 * 16 + 2, -1, -1}));

    // T = 0: nothing is launched (the output data may be NULL).
    pkv_tensor none = make_tensor(nullptr, PKV_DTYPE_INT64, dev, {0}, {1});
    EXPECT_EQ(pkv_build_slot_mapping(&none, &tt, &st, &qt, 16, nullptr), PKV_SUCCESS) << pkv_last_error_message();
    EXPECT_EQ(pkv_build_slot_mapping_csr(&none, &it, &xt, &lt, &qt, 16, nullptr), PKV_SUCCESS)
        << pkv_last_error_message();
}

std::vector<MetaCase> meta_cases(Backend be) { return {{be, "all"}}; }
std::string meta_name(const ::testing::TestParamInfo<MetaCase> &i) { return i.param.name; }
INSTANTIATE_TEST_SUITE_P(Cpu, SlotMapping, ::testing::ValuesIn(meta_cases(Backend::CPU)), meta_name);
INSTANTIATE_TEST_SUITE_P(Cuda, SlotMapping, ::testing::ValuesIn(meta_cases(Backend::CUDA)), meta_name);

// ------------------------------------------------------------------------------ errors
// A valid CPU call of each builder; every case breaks one argument and checks the output.
struct MetaEnv {
    const pkv_device cpu = backend_device(Backend::CPU);
    std::vector<int32_t> table = {1, 2, 3, 4}, seq = {3, 5}, qsl = {0, 2, 3};
    std::vector<int32_t> indptr = {0, 1, 2}, indices = {4, 5}, last = {3, 5}, append = {0, 2, 3};
    std::vector<int64_t> out = std::vector<int64_t>(4, 77);
    pkv_tensor ot, tt, st, qt, it, xt, lt, at;
    MetaEnv() {
        ot = make_tensor(out.data(), PKV_DTYPE_INT64, cpu, {4}, {1});
        tt = make_tensor(table.data(), PKV_DTYPE_INT32, cpu, {2, 2}, {2, 1});
        st = make_tensor(seq.data(), PKV_DTYPE_INT32, cpu, {2}, {1});
        qt = make_tensor(qsl.data(), PKV_DTYPE_INT32, cpu, {3}, {1});
        it = make_tensor(indptr.data(), PKV_DTYPE_INT32, cpu, {3}, {1});
        xt = make_tensor(indices.data(), PKV_DTYPE_INT32, cpu, {2}, {1});
        lt = make_tensor(last.data(), PKV_DTYPE_INT32, cpu, {2}, {1});
        at = make_tensor(append.data(), PKV_DTYPE_INT32, cpu, {3}, {1});
    }
    pkv_status dense(int64_t bs = 4) { return pkv_build_slot_mapping(&ot, &tt, &st, &qt, bs, nullptr); }
    pkv_status csr(int64_t ps = 4) { return pkv_build_slot_mapping_csr(&ot, &it, &xt, &lt, &at, ps, nullptr); }
    bool untouched() const { return out == std::vector<int64_t>(4, 77); }
};

TEST(SlotMappingErrors, BlockTableBuilder) {
    const char *fn = "pkv_build_slot_mapping";
    struct Bad {
        const char *what;
        std::function<void(MetaEnv &)> mutate;
        const char *fragment;
    };
    const pkv_device cuda = backend_device(Backend::CUDA);
    const std::vector<Bad> bad = {
        {"out f32", [](MetaEnv &e) { e.ot.dtype = PKV_DTYPE_F32; }, "out_slot_mapping"},
        {"out 2-D", [](MetaEnv &e) { e.ot.ndim = 2; e.ot.shape[1] = 1; }, "out_slot_mapping"},
        {"out stride 0", [](MetaEnv &e) { e.ot.strides[0] = 0; }, "out_slot_mapping"},
        {"out NULL data", [](MetaEnv &e) { e.ot.data = nullptr; }, "out_slot_mapping"},
        {"out misaligned", [](MetaEnv &e) { e.ot.data = static_cast<char *>(e.ot.data) + 4; }, "aligned"},
        {"table misaligned", [](MetaEnv &e) { e.tt.data = static_cast<char *>(e.tt.data) + 2; }, "block_table"},
        {"seq_lens misaligned", [](MetaEnv &e) { e.st.data = static_cast<char *>(e.st.data) + 1; }, "aligned"},
        {"table int64", [](MetaEnv &e) { e.tt.dtype = PKV_DTYPE_INT64; }, "block_table"},
        {"table 1-D", [](MetaEnv &e) { e.tt.ndim = 1; }, "block_table"},
        {"table column stride", [](MetaEnv &e) { e.tt.strides[1] = 2; }, "block_table"},
        {"table row stride", [](MetaEnv &e) { e.tt.strides[0] = 1; }, "block_table"},
        {"table on CUDA", [=](MetaEnv &e) { e.tt.device = cuda; }, "block_table"},
        {"seq_lens length", [](MetaEnv &e) { e.st.shape[0] = 3; }, "seq_lens"},
        {"seq_lens stride", [](MetaEnv &e) { e.st.strides[0] = 2; }, "seq_lens"},
        {"seq_lens int64", [](MetaEnv &e) { e.st.dtype = PKV_DTYPE_INT64; }, "seq_lens"},
        {"query_start_loc length", [](MetaEnv &e) { e.qt.shape[0] = 2; }, "query_start_loc"},
        {"query_start_loc on CUDA", [=](MetaEnv &e) { e.qt.device = cuda; }, "query_start_loc"},
    };
    for (const Bad &b : bad) {
        SCOPED_TRACE(b.what);
        MetaEnv e;
        b.mutate(e);
        EXPECT_TRUE(failed_with(e.dense(), PKV_ERROR_INVALID_ARGUMENT, fn, {b.fragment}));
        EXPECT_TRUE(e.untouched());
    }
    {
        MetaEnv e;
        EXPECT_TRUE(failed_with(pkv_build_slot_mapping(nullptr, &e.tt, &e.st, &e.qt, 4, nullptr),
                                PKV_ERROR_INVALID_ARGUMENT, fn, {"out_slot_mapping"}));
        EXPECT_TRUE(failed_with(pkv_build_slot_mapping(&e.ot, nullptr, &e.st, &e.qt, 4, nullptr),
                                PKV_ERROR_INVALID_ARGUMENT, fn, {"block_table"}));
        EXPECT_TRUE(failed_with(pkv_build_slot_mapping(&e.ot, &e.tt, nullptr, &e.qt, 4, nullptr),
                                PKV_ERROR_INVALID_ARGUMENT, fn, {"seq_lens"}));
        EXPECT_TRUE(failed_with(pkv_build_slot_mapping(&e.ot, &e.tt, &e.st, nullptr, 4, nullptr),
                                PKV_ERROR_INVALID_ARGUMENT, fn, {"query_start_loc"}));
        EXPECT_TRUE(failed_with(e.dense(0), PKV_ERROR_INVALID_ARGUMENT, fn, {"block_size"}));
        EXPECT_TRUE(failed_with(e.dense(-16), PKV_ERROR_INVALID_ARGUMENT, fn, {"block_size"}));
        EXPECT_TRUE(failed_with(e.dense(int64_t(1) << 31), PKV_ERROR_INVALID_ARGUMENT, fn, {"block_size"}));
        EXPECT_TRUE(e.untouched());
        ASSERT_EQ(e.dense(), PKV_SUCCESS) << pkv_last_error_message();
        // positions 1, 2 of request 0 (block 1) and 4 of request 1 (block 4), then padding
        EXPECT_EQ(e.out, (std::vector<int64_t>{4 + 1, 4 + 2, 4 * 4 + 0, -1}));
    }
}

TEST(SlotMappingErrors, CsrBuilder) {
    const char *fn = "pkv_build_slot_mapping_csr";
    struct Bad {
        const char *what;
        std::function<void(MetaEnv &)> mutate;
        const char *fragment;
    };
    const std::vector<Bad> bad = {
        {"out int8", [](MetaEnv &e) { e.ot.dtype = PKV_DTYPE_INT8; }, "out_slot_mapping"},
        {"indptr length", [](MetaEnv &e) { e.it.shape[0] = 2; }, "indptr"},
        {"indptr int64", [](MetaEnv &e) { e.it.dtype = PKV_DTYPE_INT64; }, "indptr"},
        {"indices stride", [](MetaEnv &e) { e.xt.strides[0] = 2; }, "indices"},
        {"indices NULL", [](MetaEnv &e) { e.xt.data = nullptr; }, "indices"},
        {"last_page_len 2-D", [](MetaEnv &e) { e.lt.ndim = 2; }, "last_page_len"},
        {"append_indptr length", [](MetaEnv &e) { e.at.shape[0] = 4; }, "append_indptr"},
        {"append_indptr on CUDA", [](MetaEnv &e) { e.at.device = backend_device(Backend::CUDA); }, "append_indptr"},
    };
    for (const Bad &b : bad) {
        SCOPED_TRACE(b.what);
        MetaEnv e;
        b.mutate(e);
        EXPECT_TRUE(failed_with(e.csr(), PKV_ERROR_INVALID_ARGUMENT, fn, {b.fragment}));
        EXPECT_TRUE(e.untouched());
    }
    MetaEnv e;
    EXPECT_TRUE(failed_with(e.csr(0), PKV_ERROR_INVALID_ARGUMENT, fn, {"page_size"}));
    EXPECT_TRUE(failed_with(pkv_build_slot_mapping_csr(&e.ot, &e.it, nullptr, &e.lt, &e.at, 4, nullptr),
                            PKV_ERROR_INVALID_ARGUMENT, fn, {"indices"}));
    EXPECT_TRUE(e.untouched());
    ASSERT_EQ(e.csr(), PKV_SUCCESS) << pkv_last_error_message();
    // request 0: page 4 holding 3 tokens, 2 new -> positions 1, 2; request 1: page 5, 5 tokens (one
    // page of 4 cannot hold 5: position 4 is outside the table) -> -1; then padding
    EXPECT_EQ(e.out, (std::vector<int64_t>{4 * 4 + 1, 4 * 4 + 2, -1, -1}));
}

TEST(SlotMappingErrors, CudaOutputWithoutCudaBuild) {
    if (std::string(pkv_build_info()).find("cuda=none") == std::string::npos) GTEST_SKIP() << "library built with CUDA";
    MetaEnv e;
    const pkv_device cuda = backend_device(Backend::CUDA);
    e.ot.device = e.tt.device = e.st.device = e.qt.device = cuda;
    EXPECT_TRUE(failed_with(e.dense(), PKV_ERROR_NOT_SUPPORTED, "pkv_build_slot_mapping", {"without CUDA"}));
    EXPECT_TRUE(e.untouched());
}

}  // namespace
}  // namespace pkvt
