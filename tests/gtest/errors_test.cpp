// Argument validation of pkv_write_kv / pkv_gather_kv (status, a message naming the argument,
// buffers untouched), and the small API surface: status strings, dtypes, version, build info,
// the thread-local last-error message, cache-view init / check, alloc / free / copy, devices.
#include <thread>

#include "test_common.h"

namespace pkvt {
namespace {

bool build_has_cuda() { return std::string(pkv_build_info()).find("cuda=none") == std::string::npos; }

// A valid CPU setup for both ops; every test breaks one thing and checks nothing was written.
struct Env {
    static constexpr int64_t NB = 4, BS = 16, H = 2, D = 32, T = 8, B = 2, M = 3;
    CacheGeom g;
    Buf cache, key, value, slots, counter, out_k, out_v, table, cu, starts, kscale;
    std::vector<uint8_t> cache0, outk0, outv0;
    pkv_cache_view view;
    pkv_tensor kt, vt, st, okt, ovt, btt, cut, stt;
    bool k_only;

    explicit Env(Fmt f = Fmt::F16, bool konly = false) : k_only(konly) {
        Rng r(5);
        const pkv_device cpu = backend_device(Backend::CPU);
        g = make_geom(Layout::NHD, f, NB, BS, H, D, D, !konly, 0);
        cache0 = random_bytes(r, g.bytes);
        cache = to_device(Backend::CPU, cache0);
        kscale = to_device(Backend::CPU, std::vector<float>{0.5f, 0.25f});
        view = make_view(g, cache.ptr(), cpu, PKV_SCALE_PER_TENSOR,
                         fmt_is_fp8(f) ? reinterpret_cast<float *>(kscale.ptr()) : nullptr, nullptr);
        std::vector<uint16_t> kv(size_t(T * H * D));
        for (auto &x : kv) x = uint16_t(random_value_bits(r, Fmt::F16));
        key = to_device(Backend::CPU, kv);
        value = to_device(Backend::CPU, kv);
        std::vector<int64_t> sl(T);
        for (int64_t i = 0; i < T; ++i) sl[size_t(i)] = i * 3;
        slots = to_device(Backend::CPU, sl);
        counter = to_device(Backend::CPU, std::vector<int64_t>{0});
        kt = make_tensor(key.ptr(), PKV_DTYPE_F16, cpu, {T, H, D}, {H * D, D, 1});
        vt = make_tensor(value.ptr(), PKV_DTYPE_F16, cpu, {T, H, D}, {H * D, D, 1});
        st = make_tensor(slots.ptr(), PKV_DTYPE_INT64, cpu, {T}, {1});
        // gather
        outk0 = random_bytes(r, size_t(T * H * D * 4));
        outv0 = random_bytes(r, size_t(T * H * D * 4));
        out_k = to_device(Backend::CPU, outk0);
        out_v = to_device(Backend::CPU, outv0);
        okt = make_tensor(out_k.ptr(), PKV_DTYPE_F32, cpu, {T, H, D}, {H * D, D, 1});
        ovt = make_tensor(out_v.ptr(), PKV_DTYPE_F32, cpu, {T, H, D}, {H * D, D, 1});
        table = to_device(Backend::CPU, std::vector<int32_t>{0, 1, 2, 3, 2, 1, 0, 3});
        cu = to_device(Backend::CPU, std::vector<int32_t>{0, 5, 8});
        starts = to_device(Backend::CPU, std::vector<int32_t>{3, 0});
        btt = make_tensor(table.ptr(), PKV_DTYPE_INT32, cpu, {B, M}, {4, 1});
        cut = make_tensor(cu.ptr(), PKV_DTYPE_INT32, cpu, {B + 1}, {1});
        stt = make_tensor(starts.ptr(), PKV_DTYPE_INT32, cpu, {B}, {1});
    }
    pkv_status write() { return pkv_write_kv(&view, &kt, k_only ? nullptr : &vt, &st, cnt(), nullptr); }
    pkv_status gather() { return pkv_gather_kv(&okt, k_only ? nullptr : &ovt, &view, &btt, &cut, &stt, cnt(), nullptr); }
    int64_t *cnt() { return reinterpret_cast<int64_t *>(counter.ptr()); }
    ::testing::AssertionResult untouched() {
        if (cache.download_all() != cache0) return ::testing::AssertionFailure() << "the cache was modified";
        if (out_k.download_all() != outk0) return ::testing::AssertionFailure() << "out_key was modified";
        if (out_v.download_all() != outv0) return ::testing::AssertionFailure() << "out_value was modified";
        if (*cnt() != 0) return ::testing::AssertionFailure() << "out_of_range_count was modified";
        return ::testing::AssertionSuccess();
    }
};

constexpr pkv_status INVALID = PKV_ERROR_INVALID_ARGUMENT;

TEST(WriteKvErrors, BaselineSucceeds) {
    Env s;
    EXPECT_EQ(s.write(), PKV_SUCCESS) << pkv_last_error_message();
    EXPECT_STREQ(pkv_last_error_message(), "");
    EXPECT_NE(s.cache.download_all(), s.cache0);
    Env k(Fmt::E4M3, true);
    EXPECT_EQ(k.write(), PKV_SUCCESS) << pkv_last_error_message();
}

TEST(WriteKvErrors, NullArguments) {
    {
        Env s;
        EXPECT_TRUE(failed_with(pkv_write_kv(nullptr, &s.kt, &s.vt, &s.st, s.cnt(), nullptr), INVALID, "pkv_write_kv", {"cache"}));
        EXPECT_TRUE(s.untouched());
        EXPECT_TRUE(failed_with(pkv_write_kv(&s.view, nullptr, &s.vt, &s.st, s.cnt(), nullptr), INVALID, "pkv_write_kv", {"key"}));
        EXPECT_TRUE(failed_with(pkv_write_kv(&s.view, &s.kt, &s.vt, nullptr, s.cnt(), nullptr), INVALID, "pkv_write_kv", {"slot_mapping"}));
        EXPECT_TRUE(failed_with(pkv_write_kv(&s.view, &s.kt, nullptr, &s.st, s.cnt(), nullptr), INVALID, "pkv_write_kv", {"value"}));
        EXPECT_TRUE(s.untouched());
    }
    {
        Env s;
        s.kt.data = nullptr;
        EXPECT_TRUE(failed_with(s.write(), INVALID, "pkv_write_kv", {"key"}));
        EXPECT_TRUE(s.untouched());
    }
    {
        Env s;
        s.st.data = nullptr;
        EXPECT_TRUE(failed_with(s.write(), INVALID, "pkv_write_kv", {"slot_mapping"}));
        EXPECT_TRUE(s.untouched());
    }
    {
        Env s;
        s.view.k_data = nullptr;
        EXPECT_TRUE(failed_with(s.write(), INVALID, "pkv_write_kv", {"k_data"}));
        EXPECT_TRUE(s.untouched());
    }
    {
        Env s(Fmt::F16, /*konly=*/true);  // value given for a K-only cache
        EXPECT_TRUE(failed_with(pkv_write_kv(&s.view, &s.kt, &s.vt, &s.st, s.cnt(), nullptr), INVALID, "pkv_write_kv", {"value"}));
        EXPECT_TRUE(s.untouched());
    }
}

TEST(WriteKvErrors, StructSize) {
    {
        Env s;
        s.view.struct_size = 0;
        EXPECT_TRUE(failed_with(s.write(), PKV_ERROR_STRUCT_SIZE, "pkv_write_kv", {"struct_size"}));
        EXPECT_TRUE(s.untouched());
        s.view.struct_size = 8;
        EXPECT_TRUE(failed_with(s.write(), PKV_ERROR_STRUCT_SIZE, "pkv_write_kv", {"struct_size"}));
        s.view.struct_size = 152 - 8;  // below the first version of the struct
        EXPECT_TRUE(failed_with(s.write(), PKV_ERROR_STRUCT_SIZE, "pkv_write_kv", {"struct_size"}));
        EXPECT_TRUE(s.untouched());
    }
    {
        // A caller of the first version (struct_size 152): the newer fields read as 0, whatever its memory holds.
        Env s;
        pkv_cache_view old = s.view;
        old.struct_size = 152;
        old.k_chunk_size = 3;  // past the caller's struct: ignored
        EXPECT_EQ(pkv_write_kv(&old, &s.kt, &s.vt, &s.st, s.cnt(), nullptr), PKV_SUCCESS) << pkv_last_error_message();
    }
    {
        // A newer caller's larger struct: accepted when the unknown tail is zero, refused when set.
        Env s;
        struct Bigger {
            pkv_cache_view v;
            uint64_t tail[2];
        } big;
        std::memset(&big, 0, sizeof big);
        big.v = s.view;
        big.v.struct_size = sizeof big;
        big.tail[1] = 7;
        EXPECT_TRUE(failed_with(pkv_write_kv(&big.v, &s.kt, &s.vt, &s.st, s.cnt(), nullptr), PKV_ERROR_STRUCT_SIZE,
                                "pkv_write_kv", {}));
        EXPECT_TRUE(s.untouched());
        big.tail[1] = 0;
        EXPECT_EQ(pkv_write_kv(&big.v, &s.kt, &s.vt, &s.st, s.cnt(), nullptr), PKV_SUCCESS) << pkv_last_error_message();
    }
}

TEST(WriteKvErrors, CacheViewFields) {
    struct Mut {
        const char *what;
        std::function<void(pkv_cache_view &)> f;
        const char *fragment;
    };
    const Mut muts[] = {
        {"format unset", [](pkv_cache_view &v) { v.format = PKV_CACHE_FORMAT_UNSET; }, "format"},
        {"flags", [](pkv_cache_view &v) { v.flags = 0x80; }, "flags"},
        {"num_blocks < 0", [](pkv_cache_view &v) { v.num_blocks = -4; }, "num_blocks"},
        {"block_size 0", [](pkv_cache_view &v) { v.block_size = 0; }, "block_size"},
        {"block_size < 0", [](pkv_cache_view &v) { v.block_size = -16; }, "block_size"},
        {"num_heads 0", [](pkv_cache_view &v) { v.num_heads = 0; }, "num_heads"},
        {"head_size_k 0", [](pkv_cache_view &v) { v.head_size_k = 0; }, "head_size"},
        {"head_size_v < 0", [](pkv_cache_view &v) { v.head_size_v = -1; }, "head_size"},
        {"negative block stride", [](pkv_cache_view &v) { v.k_stride_block = -2048; }, "stride"},
        {"negative slot stride", [](pkv_cache_view &v) { v.k_stride_slot = -128; }, "stride"},
        {"negative v head stride", [](pkv_cache_view &v) { v.v_stride_head = -64; }, "stride"},
        {"scale_mode unknown", [](pkv_cache_view &v) { v.scale_mode = pkv_scale_mode(7); }, "scale_mode"},
        {"device type unknown", [](pkv_cache_view &v) { v.device.type = pkv_device_type(42); }, "device"},
    };
    for (const Mut &m : muts) {
        SCOPED_TRACE(m.what);
        Env s(Fmt::E4M3);
        m.f(s.view);
        EXPECT_TRUE(failed_with(s.write(), INVALID, "pkv_write_kv", {m.fragment}));
        EXPECT_TRUE(s.untouched());
        EXPECT_TRUE(failed_with(s.gather(), INVALID, "pkv_gather_kv", {m.fragment}));
        EXPECT_TRUE(s.untouched());
        pkv_status c = pkv_cache_view_check(&s.view);
        EXPECT_TRUE(failed_with(c, INVALID, nullptr, {m.fragment}));
    }
    {
        // A reserved / unknown format value: refused (invalid or not supported), naming the format.
        Env s;
        s.view.format = pkv_cache_format(6);
        const pkv_status st = s.write();
        EXPECT_TRUE(st == INVALID || st == PKV_ERROR_NOT_SUPPORTED) << pkv_status_string(st);
        EXPECT_NE(lower(pkv_last_error_message()).find("format"), std::string::npos) << pkv_last_error_message();
        EXPECT_TRUE(s.untouched());
    }
}

TEST(WriteKvErrors, DtypesShapesStrides) {
    struct Mut {
        const char *what;
        std::function<void(Env &)> f;
        pkv_status want;
        const char *fragment;
    };
    const Mut muts[] = {
        {"int8 key", [](Env &s) { s.kt.dtype = PKV_DTYPE_INT8; }, INVALID, "key"},
        {"int32 value", [](Env &s) { s.vt.dtype = PKV_DTYPE_INT32; }, INVALID, "value"},
        {"bf16 slot_mapping", [](Env &s) { s.st.dtype = PKV_DTYPE_BF16; }, INVALID, "slot_mapping"},
        {"f32 slot_mapping", [](Env &s) { s.st.dtype = PKV_DTYPE_F32; }, INVALID, "slot_mapping"},
        {"uint8 slot_mapping", [](Env &s) { s.st.dtype = PKV_DTYPE_UINT8; }, INVALID, "slot_mapping"},
        {"unknown dtype key", [](Env &s) { s.kt.dtype = pkv_dtype(77); }, INVALID, "key"},
        {"key 2-D", [](Env &s) { s.kt.ndim = 2; }, INVALID, "key"},
        {"key 4-D", [](Env &s) { s.kt.ndim = 4; s.kt.shape[3] = 1; s.kt.strides[3] = 1; }, INVALID, "key"},
        {"key heads", [](Env &s) { s.kt.shape[1] = 3; }, INVALID, "key"},
        {"key head size", [](Env &s) { s.kt.shape[2] = 16; }, INVALID, "key"},
        {"value heads", [](Env &s) { s.vt.shape[1] = 1; }, INVALID, "value"},
        {"value head size", [](Env &s) { s.vt.shape[2] = 33; }, INVALID, "value"},
        {"key fewer rows than slots", [](Env &s) { s.kt.shape[0] = Env::T - 1; }, INVALID, "key"},
        {"value fewer rows than slots", [](Env &s) { s.vt.shape[0] = 2; }, INVALID, "value"},
        {"key last stride", [](Env &s) { s.kt.strides[2] = 2; }, INVALID, "key"},
        {"value last stride", [](Env &s) { s.vt.strides[2] = 0; }, INVALID, "value"},
        {"slot_mapping 2-D", [](Env &s) { s.st.ndim = 2; s.st.shape[1] = 1; s.st.strides[1] = 1; }, INVALID, "slot_mapping"},
        {"key on CUDA, cache on CPU", [](Env &s) { s.kt.device = backend_device(Backend::CUDA); }, INVALID, "key"},
        {"value on CUDA", [](Env &s) { s.vt.device = backend_device(Backend::CUDA); }, INVALID, "value"},
        {"slot_mapping on CUDA", [](Env &s) { s.st.device = backend_device(Backend::CUDA); }, INVALID, "slot_mapping"},
    };
    for (const Mut &m : muts) {
        SCOPED_TRACE(m.what);
        Env s;
        m.f(s);
        EXPECT_TRUE(failed_with(s.write(), m.want, "pkv_write_kv", {m.fragment}));
        EXPECT_TRUE(s.untouched());
    }
    {
        // An fp8 key: not an input dtype of the write (invalid, or an unsupported pair).
        Env s;
        s.kt.dtype = PKV_DTYPE_FP8_E4M3;
        const pkv_status st = s.write();
        EXPECT_TRUE(st == INVALID || st == PKV_ERROR_NOT_SUPPORTED) << pkv_status_string(st);
        EXPECT_NE(std::string(pkv_last_error_message()).find("key"), std::string::npos) << pkv_last_error_message();
        EXPECT_TRUE(s.untouched());
    }
}

TEST(WriteKvErrors, ZeroTokensIsANoOp) {
    Env s;
    s.st.shape[0] = 0;
    EXPECT_EQ(s.write(), PKV_SUCCESS) << pkv_last_error_message();
    EXPECT_STREQ(pkv_last_error_message(), "");
    EXPECT_TRUE(s.untouched());
}

TEST(WriteKvErrors, CudaCacheWithoutCudaBuild) {
    if (build_has_cuda()) GTEST_SKIP() << "library built with CUDA";
    Env s;
    const pkv_device cuda = backend_device(Backend::CUDA);
    s.view.device = cuda;
    s.kt.device = s.vt.device = s.st.device = cuda;
    EXPECT_TRUE(failed_with(pkv_write_kv(&s.view, &s.kt, &s.vt, &s.st, nullptr, nullptr), PKV_ERROR_NOT_SUPPORTED,
                            "pkv_write_kv", {}));
    EXPECT_TRUE(s.untouched());
}

TEST(WriteKvErrors, CpuTensorWithCudaCache) {
    if (!cuda_usable()) GTEST_SKIP() << "no CUDA device";
    Env s;
    s.view.device = backend_device(Backend::CUDA);  // the check must fire before any access
    // Every tensor is on the CPU: the message may name any of them, but must name the device.
    EXPECT_TRUE(failed_with(s.write(), INVALID, "pkv_write_kv", {"cuda"}));
    EXPECT_TRUE(s.untouched());
    EXPECT_TRUE(failed_with(s.gather(), INVALID, "pkv_gather_kv", {"cuda"}));
    EXPECT_TRUE(s.untouched());
}

// ------------------------------------------------------------------------------ gather
TEST(GatherKvErrors, BaselineSucceeds) {
    Env s;
    EXPECT_EQ(s.gather(), PKV_SUCCESS) << pkv_last_error_message();
    EXPECT_STREQ(pkv_last_error_message(), "");
    EXPECT_NE(s.out_k.download_all(), s.outk0);
}

TEST(GatherKvErrors, NullArguments) {
    Env s;
    EXPECT_TRUE(failed_with(pkv_gather_kv(nullptr, &s.ovt, &s.view, &s.btt, &s.cut, &s.stt, s.cnt(), nullptr), INVALID,
                            "pkv_gather_kv", {"out_key"}));
    EXPECT_TRUE(failed_with(pkv_gather_kv(&s.okt, &s.ovt, nullptr, &s.btt, &s.cut, &s.stt, s.cnt(), nullptr), INVALID,
                            "pkv_gather_kv", {"cache"}));
    EXPECT_TRUE(failed_with(pkv_gather_kv(&s.okt, &s.ovt, &s.view, nullptr, &s.cut, &s.stt, s.cnt(), nullptr), INVALID,
                            "pkv_gather_kv", {"block_table"}));
    EXPECT_TRUE(failed_with(pkv_gather_kv(&s.okt, &s.ovt, &s.view, &s.btt, nullptr, &s.stt, s.cnt(), nullptr), INVALID,
                            "pkv_gather_kv", {"cu_seq_lens"}));
    EXPECT_TRUE(s.untouched());
    Env k(Fmt::F16, true);  // out_value for a K-only cache
    EXPECT_TRUE(failed_with(pkv_gather_kv(&k.okt, &k.ovt, &k.view, &k.btt, &k.cut, &k.stt, k.cnt(), nullptr), INVALID,
                            "pkv_gather_kv", {"out_value"}));
    EXPECT_TRUE(k.untouched());
}

TEST(GatherKvErrors, Fp8OutputNotSupported) {
    for (pkv_dtype dt : {PKV_DTYPE_FP8_E4M3, PKV_DTYPE_FP8_E5M2}) {
        SCOPED_TRACE(pkv_dtype_name(dt));
        Env s(Fmt::E4M3);
        s.okt.dtype = s.ovt.dtype = dt;
        EXPECT_TRUE(failed_with(s.gather(), PKV_ERROR_NOT_SUPPORTED, "pkv_gather_kv", {"out_key"}));
        EXPECT_TRUE(s.untouched());
    }
}

TEST(GatherKvErrors, DtypesShapesStrides) {
    struct Mut {
        const char *what;
        std::function<void(Env &)> f;
        const char *fragment;
    };
    const Mut muts[] = {
        {"int8 out_key", [](Env &s) { s.okt.dtype = PKV_DTYPE_INT8; }, "out_key"},
        {"out_key heads", [](Env &s) { s.okt.shape[1] = 1; }, "out_key"},
        {"out_key head size", [](Env &s) { s.okt.shape[2] = 31; }, "out_key"},
        {"out_key last stride", [](Env &s) { s.okt.strides[2] = 3; }, "out_key"},
        {"out_key 2-D", [](Env &s) { s.okt.ndim = 2; }, "out_key"},
        {"out_value head size", [](Env &s) { s.ovt.shape[2] = 64; }, "out_value"},
        {"out_key on CUDA", [](Env &s) { s.okt.device = backend_device(Backend::CUDA); }, "out_key"},
        {"block_table int64", [](Env &s) { s.btt.dtype = PKV_DTYPE_INT64; }, "block_table"},
        {"block_table f32", [](Env &s) { s.btt.dtype = PKV_DTYPE_F32; }, "block_table"},
        {"block_table 1-D", [](Env &s) { s.btt.ndim = 1; }, "block_table"},
        {"block_table last stride", [](Env &s) { s.btt.strides[1] = 2; }, "block_table"},
        {"block_table on CUDA", [](Env &s) { s.btt.device = backend_device(Backend::CUDA); }, "block_table"},
        {"cu_seq_lens int64", [](Env &s) { s.cut.dtype = PKV_DTYPE_INT64; }, "cu_seq_lens"},
        {"cu_seq_lens length", [](Env &s) { s.cut.shape[0] = Env::B; }, "cu_seq_lens"},
        {"cu_seq_lens 2-D", [](Env &s) { s.cut.ndim = 2; s.cut.shape[1] = 1; s.cut.strides[1] = 1; }, "cu_seq_lens"},
        {"seq_starts length", [](Env &s) { s.stt.shape[0] = Env::B + 1; }, "seq_starts"},
        {"seq_starts bf16", [](Env &s) { s.stt.dtype = PKV_DTYPE_BF16; }, "seq_starts"},
    };
    for (const Mut &m : muts) {
        SCOPED_TRACE(m.what);
        Env s;
        m.f(s);
        EXPECT_TRUE(failed_with(s.gather(), INVALID, "pkv_gather_kv", {m.fragment}));
        EXPECT_TRUE(s.untouched());
    }
}

TEST(GatherKvErrors, EmptyIsANoOp) {
    {
        Env s;  // B = 0
        s.btt.shape[0] = 0;
        s.cut.shape[0] = 1;
        s.stt.shape[0] = 0;
        EXPECT_EQ(s.gather(), PKV_SUCCESS) << pkv_last_error_message();
        EXPECT_TRUE(s.untouched());
    }
    {
        Env s;  // N = 0 with requests of length 0
        s.okt.shape[0] = s.ovt.shape[0] = 0;
        s.cu.upload(std::vector<uint8_t>(12, 0));
        EXPECT_EQ(s.gather(), PKV_SUCCESS) << pkv_last_error_message();
        EXPECT_TRUE(s.untouched());
    }
}

// ------------------------------------------------------------------------------ small API
TEST(Api, StatusStrings) {
    const std::pair<pkv_status, const char *> all[] = {
        {PKV_SUCCESS, "PKV_SUCCESS"},
        {PKV_ERROR_INVALID_ARGUMENT, "PKV_ERROR_INVALID_ARGUMENT"},
        {PKV_ERROR_INVALID_STATE, "PKV_ERROR_INVALID_STATE"},
        {PKV_ERROR_OUT_OF_HOST_MEMORY, "PKV_ERROR_OUT_OF_HOST_MEMORY"},
        {PKV_ERROR_OUT_OF_DEVICE_MEMORY, "PKV_ERROR_OUT_OF_DEVICE_MEMORY"},
        {PKV_ERROR_OUT_OF_BLOCKS, "PKV_ERROR_OUT_OF_BLOCKS"},
        {PKV_ERROR_NOT_SUPPORTED, "PKV_ERROR_NOT_SUPPORTED"},
        {PKV_ERROR_CUDA, "PKV_ERROR_CUDA"},
        {PKV_ERROR_STRUCT_SIZE, "PKV_ERROR_STRUCT_SIZE"},
        {PKV_ERROR_BUSY, "PKV_ERROR_BUSY"},
        {PKV_ERROR_INTERNAL, "PKV_ERROR_INTERNAL"},
    };
    for (auto &p : all) {
        ASSERT_NE(pkv_status_string(p.first), nullptr);
        EXPECT_STREQ(pkv_status_string(p.first), p.second);
    }
    for (int v : {11, 12, 100, -1, 0x12345})
        EXPECT_STREQ(pkv_status_string(pkv_status(v)), "PKV_STATUS_UNKNOWN") << v;
    // Pinned values.
    EXPECT_EQ(int(PKV_ERROR_INTERNAL), 10);
    EXPECT_EQ(int(PKV_ERROR_STRUCT_SIZE), 8);
}

TEST(Api, Dtypes) {
    const struct {
        pkv_dtype d;
        size_t bits;
    } all[] = {{PKV_DTYPE_F32, 32},      {PKV_DTYPE_F16, 16},  {PKV_DTYPE_BF16, 16},   {PKV_DTYPE_FP8_E4M3, 8},
               {PKV_DTYPE_FP8_E5M2, 8}, {PKV_DTYPE_INT8, 8},  {PKV_DTYPE_UINT8, 8},   {PKV_DTYPE_INT32, 32},
               {PKV_DTYPE_INT64, 64}};
    std::vector<std::string> names;
    for (auto &x : all) {
        EXPECT_EQ(pkv_dtype_size_bits(x.d), x.bits) << int(x.d);
        const char *n = pkv_dtype_name(x.d);
        ASSERT_NE(n, nullptr);
        EXPECT_STRNE(n, "unknown");
        EXPECT_GT(std::strlen(n), 0u);
        EXPECT_EQ(lower(n), std::string(n)) << "names are lower-case";
        names.push_back(n);
    }
    std::sort(names.begin(), names.end());
    EXPECT_EQ(std::unique(names.begin(), names.end()), names.end()) << "dtype names must be distinct";
    EXPECT_STREQ(pkv_dtype_name(PKV_DTYPE_BF16), "bf16");
    EXPECT_STREQ(pkv_dtype_name(PKV_DTYPE_FP8_E4M3), "fp8_e4m3");
    for (int v : {9, 100, -1}) {
        EXPECT_EQ(pkv_dtype_size_bits(pkv_dtype(v)), 0u) << v;
        EXPECT_STREQ(pkv_dtype_name(pkv_dtype(v)), "unknown") << v;
    }
}

TEST(Api, VersionAndBuildInfo) {
    EXPECT_EQ(pkv_version(), uint32_t(PKV_VERSION));
    EXPECT_EQ(PKV_VERSION, 100);
    ASSERT_NE(pkv_version_string(), nullptr);
    EXPECT_STREQ(pkv_version_string(), PKV_VERSION_STRING);
    EXPECT_TRUE(PKV_VERSION_CHECK(0, 1, 0));
    EXPECT_FALSE(PKV_VERSION_CHECK(0, 1, 1));
    const char *info = pkv_build_info();
    ASSERT_NE(info, nullptr);
    const std::string s = info;
    EXPECT_FALSE(s.empty());
    EXPECT_NE(s.find("version=" PKV_VERSION_STRING), std::string::npos) << s;
    EXPECT_NE(s.find("cuda="), std::string::npos) << s;
    EXPECT_EQ(s.find('\n'), std::string::npos) << "one line";
}

TEST(Api, LastErrorClearedBySuccess) {
    Env s;
    ASSERT_EQ(pkv_write_kv(nullptr, nullptr, nullptr, nullptr, nullptr, nullptr), INVALID);
    EXPECT_STRNE(pkv_last_error_message(), "");
    EXPECT_EQ(pkv_last_cuda_error(), 0);
    EXPECT_EQ(s.write(), PKV_SUCCESS);
    EXPECT_STREQ(pkv_last_error_message(), "");
    EXPECT_EQ(pkv_cache_view_check(nullptr), INVALID);
    EXPECT_STRNE(pkv_last_error_message(), "");
    EXPECT_EQ(pkv_cache_view_check(&s.view), PKV_SUCCESS);
    EXPECT_STREQ(pkv_last_error_message(), "");
    EXPECT_EQ(pkv_gather_kv(nullptr, nullptr, nullptr, nullptr, nullptr, nullptr, nullptr, nullptr), INVALID);
    int32_t n = -1;
    EXPECT_EQ(pkv_cuda_device_count(&n), PKV_SUCCESS);
    EXPECT_STREQ(pkv_last_error_message(), "");
}

TEST(Api, LastErrorIsThreadLocal) {
    Env s;
    s.kt.ndim = 2;
    ASSERT_EQ(s.write(), INVALID);
    const std::string mine = pkv_last_error_message();
    ASSERT_FALSE(mine.empty());
    std::string other_initial, other_after;
    pkv_status other_status = PKV_SUCCESS;
    std::thread th([&] {
        other_initial = pkv_last_error_message();
        other_status = pkv_gather_kv(nullptr, nullptr, nullptr, nullptr, nullptr, nullptr, nullptr, nullptr);
        other_after = pkv_last_error_message();
    });
    th.join();
    EXPECT_EQ(other_initial, "") << "a new thread starts with no error";
    EXPECT_EQ(other_status, INVALID);
    EXPECT_FALSE(other_after.empty());
    EXPECT_NE(other_after, mine);
    EXPECT_EQ(std::string(pkv_last_error_message()), mine) << "another thread's failure changed this thread's message";
}

TEST(Api, CacheViewInit) {
    EXPECT_EQ(pkv_cache_view_init(nullptr, sizeof(pkv_cache_view)), INVALID);
    EXPECT_STRNE(pkv_last_error_message(), "");
    pkv_cache_view v;
    std::memset(&v, 0xAB, sizeof v);
    EXPECT_EQ(pkv_cache_view_init(&v, 8), PKV_ERROR_STRUCT_SIZE);
    EXPECT_EQ(pkv_cache_view_init(&v, 0), PKV_ERROR_STRUCT_SIZE);
    EXPECT_STRNE(pkv_last_error_message(), "");
    ASSERT_EQ(pkv_cache_view_init(&v, sizeof v), PKV_SUCCESS) << pkv_last_error_message();
    EXPECT_STREQ(pkv_last_error_message(), "");
    EXPECT_EQ(v.struct_size, sizeof v);
    pkv_cache_view z;
    std::memset(&z, 0, sizeof z);
    z.struct_size = sizeof z;
    EXPECT_EQ(std::memcmp(&v, &z, sizeof v), 0) << "every other field must be zero";
    const pkv_cache_view m = PKV_CACHE_VIEW_INIT;
    EXPECT_EQ(m.struct_size, sizeof(pkv_cache_view));
    EXPECT_EQ(m.format, PKV_CACHE_FORMAT_UNSET);
    EXPECT_EQ(m.device.type, PKV_DEVICE_CPU);
}

TEST(Api, CacheViewCheck) {
    EXPECT_EQ(pkv_cache_view_check(nullptr), INVALID);
    // A valid view whose memory must not be touched: k_data / v_data point nowhere.
    pkv_cache_view v = PKV_CACHE_VIEW_INIT;
    v.format = PKV_CACHE_FORMAT_FP8_E5M2;
    v.num_blocks = 1000;
    v.block_size = 16;
    v.num_heads = 8;
    v.head_size_k = 128;
    v.k_data = reinterpret_cast<void *>(uintptr_t(0x100000));
    v.v_data = reinterpret_cast<void *>(uintptr_t(0x200000));
    v.scale_mode = PKV_SCALE_PER_HEAD;
    v.k_scale = reinterpret_cast<const float *>(uintptr_t(0x300000));
    EXPECT_EQ(pkv_cache_view_check(&v), PKV_SUCCESS) << pkv_last_error_message();
    v.v_data = nullptr;  // K-only is valid
    EXPECT_EQ(pkv_cache_view_check(&v), PKV_SUCCESS) << pkv_last_error_message();
    pkv_cache_view w = v;
    w.struct_size = 0;
    EXPECT_TRUE(failed_with(pkv_cache_view_check(&w), PKV_ERROR_STRUCT_SIZE, nullptr, {"struct_size"}));
    w = v;
    w.format = PKV_CACHE_FORMAT_UNSET;
    EXPECT_TRUE(failed_with(pkv_cache_view_check(&w), INVALID, nullptr, {"format"}));
    w = v;
    w.k_stride_head = -256;
    EXPECT_TRUE(failed_with(pkv_cache_view_check(&w), INVALID, nullptr, {"stride"}));
    w = v;
    w.device.type = PKV_DEVICE_CUDA;
    const pkv_status st = pkv_cache_view_check(&w);
    if (build_has_cuda()) {
        EXPECT_EQ(st, PKV_SUCCESS) << pkv_last_error_message();
    } else {
        EXPECT_TRUE(st == PKV_ERROR_NOT_SUPPORTED || st == PKV_SUCCESS) << pkv_status_string(st);
    }
}

TEST(Api, DeviceCount) {
    EXPECT_EQ(pkv_cuda_device_count(nullptr), INVALID);
    int32_t n = -1;
    ASSERT_EQ(pkv_cuda_device_count(&n), PKV_SUCCESS) << pkv_last_error_message();
    EXPECT_GE(n, 0);
    if (!build_has_cuda()) {
        EXPECT_EQ(n, 0);
    }
#if PKVT_HAVE_CUDA
    EXPECT_EQ(n, test_cuda_device_count());
#endif
}

TEST(Api, CpuAllocFreeCopy) {
    const pkv_device cpu = backend_device(Backend::CPU);
    EXPECT_EQ(pkv_alloc(nullptr, cpu, 16), INVALID);
    void *z = reinterpret_cast<void *>(1);
    ASSERT_EQ(pkv_alloc(&z, cpu, 0), PKV_SUCCESS);
    EXPECT_EQ(z, nullptr);
    EXPECT_EQ(pkv_free(nullptr, cpu), PKV_SUCCESS);
    void *a = nullptr, *b = nullptr;
    ASSERT_EQ(pkv_alloc(&a, cpu, 1000), PKV_SUCCESS) << pkv_last_error_message();
    ASSERT_EQ(pkv_alloc(&b, cpu, 1000), PKV_SUCCESS) << pkv_last_error_message();
    ASSERT_NE(a, nullptr);
    ASSERT_NE(b, nullptr);
    EXPECT_EQ(reinterpret_cast<uintptr_t>(a) % 256, 0u);
    EXPECT_EQ(reinterpret_cast<uintptr_t>(b) % 256, 0u);
    Rng r(3);
    std::vector<uint8_t> src = random_bytes(r, 1000);
    std::memcpy(a, src.data(), 1000);
    std::memset(b, 0, 1000);
    ASSERT_EQ(pkv_copy(b, cpu, a, cpu, 1000, nullptr), PKV_SUCCESS) << pkv_last_error_message();
    EXPECT_EQ(std::memcmp(b, src.data(), 1000), 0);
    ASSERT_EQ(pkv_copy(b, cpu, a, cpu, 0, nullptr), PKV_SUCCESS);
    EXPECT_EQ(pkv_free(a, cpu), PKV_SUCCESS);
    EXPECT_EQ(pkv_free(b, cpu), PKV_SUCCESS);
    EXPECT_STREQ(pkv_last_error_message(), "");
    // Host-only build: CUDA memory is not supported.
    if (!build_has_cuda()) {
        void *d = nullptr;
        EXPECT_TRUE(failed_with(pkv_alloc(&d, backend_device(Backend::CUDA), 64), PKV_ERROR_NOT_SUPPORTED, "pkv_alloc", {}));
        EXPECT_EQ(pkv_stream_synchronize(nullptr), PKV_SUCCESS);
    }
    pkv_device bad;
    bad.type = pkv_device_type(99);
    bad.id = 0;
    void *d = nullptr;
    EXPECT_EQ(pkv_alloc(&d, bad, 64), INVALID);
}

TEST(Api, CudaAllocFreeCopy) {
    if (!cuda_usable()) GTEST_SKIP() << "no CUDA device";
    const pkv_device cpu = backend_device(Backend::CPU), gpu = backend_device(Backend::CUDA);
    void *d = nullptr;
    ASSERT_EQ(pkv_alloc(&d, gpu, 4096), PKV_SUCCESS) << pkv_last_error_message();
    ASSERT_NE(d, nullptr);
    Rng r(4);
    std::vector<uint8_t> src = random_bytes(r, 4096), back(4096, 0);
    ASSERT_EQ(pkv_copy(d, gpu, src.data(), cpu, 4096, nullptr), PKV_SUCCESS) << pkv_last_error_message();
    void *d2 = nullptr;
    ASSERT_EQ(pkv_alloc(&d2, gpu, 4096), PKV_SUCCESS);
    ASSERT_EQ(pkv_copy(d2, gpu, d, gpu, 4096, nullptr), PKV_SUCCESS) << pkv_last_error_message();
    ASSERT_EQ(pkv_copy(back.data(), cpu, d2, gpu, 4096, nullptr), PKV_SUCCESS) << pkv_last_error_message();
    ASSERT_EQ(pkv_stream_synchronize(nullptr), PKV_SUCCESS) << pkv_last_error_message();
    EXPECT_EQ(back, src);
    EXPECT_EQ(pkv_free(d, gpu), PKV_SUCCESS);
    EXPECT_EQ(pkv_free(d2, gpu), PKV_SUCCESS);
    // Pinned host memory.
    void *h = nullptr;
    pkv_device pinned;
    pinned.type = PKV_DEVICE_CUDA_HOST;
    pinned.id = 0;
    ASSERT_EQ(pkv_alloc(&h, pinned, 256), PKV_SUCCESS) << pkv_last_error_message();
    ASSERT_NE(h, nullptr);
    std::memset(h, 7, 256);
    EXPECT_EQ(pkv_free(h, pinned), PKV_SUCCESS);
}

}  // namespace
}  // namespace pkvt
