// pkv_gather_kv against an independent per-element oracle (own decode + own round-to-nearest-
// even encode), on the CPU backend and (with a device) the CUDA backend; CUDA results are also
// compared byte for byte with the CPU backend. Plus write -> gather round trips.
//
// Every case: a cache whose elements are random non-NaN codes (subnormals, infinities, extremes
// included) and whose padding bytes are random; poisoned outputs with padded row / head strides;
// a block table whose row stride exceeds max_blocks (the columns past max_blocks hold valid
// block ids, so reading them shows); random request lengths (some 0), optional seq_starts that
// are not multiples of the block size; N > cu_seq_lens[B]; out-of-range rows (block index past
// max_blocks, block ids < 0 or >= num_blocks) counted and left untouched.
#include <thread>

#include "test_common.h"

namespace pkvt {
namespace {

struct GatherCase {
    int idx = 0;
    Backend be = Backend::CPU;
    Layout layout = Layout::NHD;
    int64_t H = 8, Dk = 64, Dv = 64, BS = 16, NB = 0;
    Fmt cache = Fmt::F16, out = Fmt::F16;
    Scale scale = Scale::TENSOR;
    bool k_only = false;
    bool gather_v = true;       // out_value given (when the cache has V)
    int64_t B = 3, M = 4;       // requests, max_blocks
    int64_t bt_pad = 2;         // block-table row stride - max_blocks
    bool seq_starts = true;
    int64_t extra_rows = 3;     // N - cu_seq_lens[B]
    int64_t out_head_pad = 0, out_row_pad = 0, out_shift = 0;  // elements
    int64_t outv_head_pad = 0, outv_row_pad = 0;
    bool oob = false;           // inject out-of-range rows
    bool count_oob = true;
    double zero_len = 0.2;      // chance of an empty request
    int64_t base_shift = 0;
    bool stream = false;
    std::string name;
};

void PrintTo(const GatherCase &c, std::ostream *os) {
    *os << c.name << " {be=" << backend_name(c.be) << " layout=" << layout_name(c.layout) << " H=" << c.H
        << " Dk=" << c.Dk << " Dv=" << c.Dv << " BS=" << c.BS << " NB=" << c.NB << " cache=" << fmt_name(c.cache)
        << " out=" << fmt_name(c.out) << " scale=" << scale_name(c.scale) << " k_only=" << c.k_only
        << " gather_v=" << c.gather_v << " B=" << c.B << " M=" << c.M << " bt_pad=" << c.bt_pad
        << " seq_starts=" << c.seq_starts << " extra_rows=" << c.extra_rows << " out_pad(h,r,shift)="
        << c.out_head_pad << "," << c.out_row_pad << "," << c.out_shift << " outv_pad(h,r)=" << c.outv_head_pad
        << "," << c.outv_row_pad << " oob=" << c.oob << " count=" << c.count_oob << " base_shift=" << c.base_shift
        << " stream=" << c.stream << "}";
}

struct OutRows {  // [N, H, D] output in host memory (element strides)
    Fmt f = Fmt::F16;
    int64_t N = 0, H = 0, D = 0, rs = 0, hs = 0, shift = 0;
    std::vector<uint8_t> bytes;  // initial (poisoned) image
    int64_t byte_off(int64_t i, int64_t h, int64_t d) const { return (shift + i * rs + h * hs + d) * fmt_bytes(f); }
    std::string describe(int64_t off) const {
        const int64_t e = fmt_bytes(f), el = off / e - shift;
        if (el < 0) return "before the tensor";
        const int64_t i = el / rs, rem = el % rs, h = rem / hs, d = rem % hs;
        if (h >= H || d >= D || i >= N) return "padding (row " + std::to_string(i) + ")";
        return "row " + std::to_string(i) + " head " + std::to_string(h) + " dim " + std::to_string(d);
    }
};

OutRows make_out(Rng &r, Fmt f, int64_t N, int64_t H, int64_t D, int64_t head_pad, int64_t row_pad, int64_t shift) {
    OutRows o;
    o.f = f; o.N = N; o.H = H; o.D = D; o.shift = shift;
    o.hs = D + head_pad;
    o.rs = H * o.hs + row_pad;
    o.bytes = random_bytes(r, size_t((shift + std::max<int64_t>(N, 1) * o.rs + 2) * fmt_bytes(f)));
    return o;
}

struct GatherData {
    CacheGeom g;
    std::vector<uint8_t> cache;
    std::vector<float> k_scale, v_scale;
    std::vector<int32_t> table;  // [B, M + bt_pad]
    int64_t bt_stride = 0;
    std::vector<int32_t> cu, starts;
    int64_t N = 0;
    OutRows ok, ov;
    int64_t counter0 = 0;
};

GatherData make_gather_data(const GatherCase &c) {
    Rng r(0xBEEFull + uint64_t(c.idx) * 104729ull);
    GatherData w;
    w.g = make_geom(c.layout, c.cache, c.NB, c.BS, c.H, c.Dk, c.Dv, !c.k_only, c.base_shift);
    w.cache = random_bytes(r, w.g.bytes);
    w.g.for_each([&](int, int64_t, int64_t, int64_t, int64_t, int64_t off) {
        store_bits(&w.cache[size_t(off)], c.cache, random_code_no_nan(r, c.cache));
    });
    if (fmt_is_fp8(c.cache) && c.scale != Scale::NONE) {
        const size_t n = c.scale == Scale::HEAD ? size_t(c.H) : 1;
        for (size_t i = 0; i < n; ++i) w.k_scale.push_back(float(0.001 + 2.0 * r.uni()));
        if (!c.k_only)
            for (size_t i = 0; i < n; ++i) w.v_scale.push_back(float(0.001 + 2.0 * r.uni()));
    }
    // Block table: valid ids everywhere (also in the padding columns), some invalid when oob.
    w.bt_stride = c.M + c.bt_pad;
    w.table.resize(size_t(std::max<int64_t>(c.B, 1) * w.bt_stride + 1));
    const int32_t bad_ids[] = {-1, int32_t(c.NB), int32_t(c.NB + 7), std::numeric_limits<int32_t>::max(),
                               std::numeric_limits<int32_t>::min()};
    for (size_t i = 0; i < w.table.size(); ++i) {
        w.table[i] = int32_t(r.range(0, c.NB - 1));
        if (c.oob && int64_t(i % size_t(w.bt_stride)) < c.M && r.chance(0.12)) w.table[i] = bad_ids[r.range(0, 4)];
    }
    // Requests.
    w.cu.push_back(0);
    for (int64_t b = 0; b < c.B; ++b) {
        const int64_t cap = c.M * c.BS;
        int64_t start = c.seq_starts ? std::min<int64_t>(r.range(0, 2 * c.BS + 3), cap) : 0;
        if (c.seq_starts && start % c.BS == 0 && start < cap) start += 1;  // not a block multiple
        int64_t len = r.chance(c.zero_len) ? 0 : r.range(1, std::max<int64_t>(cap - start, 1));
        if (c.oob && (r.chance(0.35) || b == c.B - 1)) len = cap - start + r.range(1, 2 * c.BS);  // runs past max_blocks
        w.starts.push_back(int32_t(start));
        w.cu.push_back(int32_t(w.cu.back() + len));
    }
    w.N = w.cu.back() + c.extra_rows;
    w.ok = make_out(r, c.out, w.N, c.H, c.Dk, c.out_head_pad, c.out_row_pad, c.out_shift);
    if (!c.k_only && c.gather_v) w.ov = make_out(r, c.out, w.N, c.H, c.Dv, c.outv_head_pad, c.outv_row_pad, 0);
    w.counter0 = 77 + c.idx;
    return w;
}

// The oracle: expected output images and out-of-range row count.
void oracle_gather(const GatherCase &c, const GatherData &w, std::vector<uint8_t> &ek, std::vector<uint8_t> &ev,
                   int64_t *oob) {
    ek = w.ok.bytes;
    ev = w.ov.bytes;
    *oob = 0;
    const CacheGeom &g = w.g;
    const bool do_v = !c.k_only && c.gather_v;
    for (int64_t b = 0; b < c.B; ++b)
        for (int64_t i = w.cu[size_t(b)]; i < w.cu[size_t(b) + 1]; ++i) {
            const int64_t p = i - w.cu[size_t(b)] + (c.seq_starts ? w.starts[size_t(b)] : 0);
            const int64_t bi = p / c.BS;
            if (bi >= c.M) { ++*oob; continue; }
            const int64_t id = w.table[size_t(b * w.bt_stride + bi)];
            if (id < 0 || id >= c.NB) { ++*oob; continue; }
            const int64_t o = p % c.BS;
            for (int side = 0; side < (do_v ? 2 : 1); ++side) {
                const OutRows &out = side ? w.ov : w.ok;
                std::vector<uint8_t> &img = side ? ev : ek;
                const std::vector<float> &sc = side ? w.v_scale : w.k_scale;
                for (int64_t h = 0; h < c.H; ++h)
                    for (int64_t d = 0; d < g.D(side); ++d) {
                        const uint32_t q = load_bits(&w.cache[size_t(g.offset(side, id, o, h, d))], c.cache);
                        uint32_t y;
                        if (c.cache == c.out) {
                            y = q;
                        } else if (fmt_is_fp8(c.cache)) {
                            const float scale = sc.empty() ? 1.0f : sc[sc.size() == 1 ? 0 : size_t(h)];
                            y = oracle_encode(c.out, oracle_to_float(c.cache, q) * scale);
                        } else {
                            y = oracle_encode(c.out, oracle_to_float(c.cache, q));
                        }
                        store_bits(&img[size_t(out.byte_off(i, h, d))], c.out, y);
                    }
            }
        }
}

struct GatherResult {
    pkv_status status = PKV_SUCCESS;
    std::string message;
    std::vector<uint8_t> k, v;
    int64_t counter = 0;
};

GatherResult run_gather(Backend be, const GatherCase &c, const GatherData &w) {
    const pkv_device dev = backend_device(be);
    Buf cache = to_device(be, w.cache);
    Buf ks = to_device(be, w.k_scale), vs = to_device(be, w.v_scale);
    Buf ok = to_device(be, w.ok.bytes), ov = to_device(be, w.ov.bytes);
    Buf table = to_device(be, w.table), cu = to_device(be, w.cu), starts = to_device(be, w.starts);
    Buf counter = to_device(be, std::vector<int64_t>{w.counter0});
    const pkv_scale_mode mode = c.scale == Scale::HEAD ? PKV_SCALE_PER_HEAD : PKV_SCALE_PER_TENSOR;
    pkv_cache_view view = make_view(w.g, cache.ptr(), dev, mode,
                                    w.k_scale.empty() ? nullptr : reinterpret_cast<const float *>(ks.ptr()),
                                    w.v_scale.empty() ? nullptr : reinterpret_cast<const float *>(vs.ptr()));
    const int oe = fmt_bytes(c.out);
    pkv_tensor okt = make_tensor(ok.ptr() + w.ok.shift * oe, fmt_dtype(c.out), dev, {w.N, c.H, c.Dk},
                                 {w.ok.rs, w.ok.hs, 1});
    pkv_tensor ovt{};
    const bool do_v = !c.k_only && c.gather_v;
    if (do_v) ovt = make_tensor(ov.ptr(), fmt_dtype(c.out), dev, {w.N, c.H, c.Dv}, {w.ov.rs, w.ov.hs, 1});
    pkv_tensor bt = make_tensor(table.ptr(), PKV_DTYPE_INT32, dev, {c.B, c.M}, {w.bt_stride, 1});
    pkv_tensor cut = make_tensor(cu.ptr(), PKV_DTYPE_INT32, dev, {c.B + 1}, {1});
    pkv_tensor st = make_tensor(starts.ptr(), PKV_DTYPE_INT32, dev, {c.B}, {1});
    TestStream stream(be, c.stream);
    GatherResult res;
    res.status = pkv_gather_kv(&okt, do_v ? &ovt : nullptr, &view, &bt, &cut, c.seq_starts ? &st : nullptr,
                               c.count_oob ? reinterpret_cast<int64_t *>(counter.ptr()) : nullptr, stream.get());
    res.message = pkv_last_error_message();
    stream.sync(be);
    res.k = ok.download_all();
    res.v = ov.download_all();
    counter.download(&res.counter, 8);
    return res;
}

class GatherKv : public ::testing::TestWithParam<GatherCase> {};

TEST_P(GatherKv, MatchesOracle) {
    const GatherCase &c = GetParam();
    PKVT_SKIP_IF_NO_BACKEND(c.be);
    const GatherData w = make_gather_data(c);
    std::vector<uint8_t> ek, ev;
    int64_t oob = 0;
    oracle_gather(c, w, ek, ev, &oob);
    if (c.oob) {
        EXPECT_GT(oob, 0) << "test setup: no out-of-range row was generated";
    }

    GatherResult r = run_gather(c.be, c, w);
    ASSERT_EQ(r.status, PKV_SUCCESS) << status_str(r.status) << ": " << r.message;
    EXPECT_STREQ(r.message.c_str(), "");
    auto dk = [&](int64_t o) { return w.ok.describe(o); };
    auto dv = [&](int64_t o) { return w.ov.describe(o); };
    EXPECT_TRUE(bytes_equal(ek, r.k, dk, "out_key vs oracle"));
    EXPECT_TRUE(bytes_equal(ev, r.v, dv, "out_value vs oracle"));
    EXPECT_EQ(r.counter, w.counter0 + (c.count_oob ? oob : 0))
        << "out_of_range_count (initial " << w.counter0 << ", " << oob << " out-of-range rows)";
    if (c.be == Backend::CUDA) {
        GatherResult cpu = run_gather(Backend::CPU, c, w);
        ASSERT_EQ(cpu.status, PKV_SUCCESS) << cpu.message;
        EXPECT_TRUE(bytes_equal(cpu.k, r.k, dk, "CUDA out_key vs CPU backend"));
        EXPECT_TRUE(bytes_equal(cpu.v, r.v, dv, "CUDA out_value vs CPU backend"));
        EXPECT_EQ(cpu.counter, r.counter);
    }
}

std::vector<GatherCase> gather_cases(Backend be) {
    std::vector<GatherCase> v;
    const Fmt outs[] = {Fmt::F32, Fmt::F16, Fmt::BF16};
    const Fmt caches[] = {Fmt::F32, Fmt::F16, Fmt::BF16, Fmt::E4M3, Fmt::E5M2};
    const Scale scales[] = {Scale::TENSOR, Scale::HEAD, Scale::NONE};
    int k = 0;
    auto vary = [&](GatherCase &c) {
        const int i = k++;
        c.B = 1 + i % 4;
        c.bt_pad = (i % 3 == 0) ? 0 : (i % 3 == 1) ? 2 : 5;
        c.seq_starts = (i % 2) == 0;
        c.extra_rows = (i % 4 == 0) ? 0 : 3 + i % 5;
        c.out_head_pad = (i % 4 == 1) ? 2 : 0;
        c.out_row_pad = (i % 5 == 2) ? 9 : 0;
        c.out_shift = (i % 6 == 3) ? 1 : 0;
        c.outv_head_pad = (i % 4 == 2) ? 5 : 0;
        c.outv_row_pad = (i % 3 == 1) ? 4 : 0;
        c.oob = (i % 3 == 2);
        c.count_oob = (i % 5 != 4);
        c.base_shift = (i % 7 == 3) ? 1 : 0;
        c.gather_v = (i % 11 != 6);
        c.stream = (i % 2) == 1;
    };
    auto fin = [&](GatherCase c, const char *tag) {
        c.idx = int(v.size());
        c.be = be;
        if (c.k_only) { c.Dv = 0; c.gather_v = false; }
        if (c.base_shift) c.base_shift *= fmt_bytes(c.cache);
        if (c.M == 0) c.M = 1;
        if (c.NB == 0) c.NB = 2 * c.M + 3;
        std::ostringstream ss;
        ss << tag << "_" << c.idx << "_" << layout_name(c.layout) << "_" << fmt_name(c.cache) << "_to_" << fmt_name(c.out);
        if (fmt_is_fp8(c.cache)) ss << "_" << scale_name(c.scale);
        ss << "_h" << c.H << "_d" << c.Dk;
        if (c.k_only) ss << "_konly";
        else if (c.Dv != c.Dk) ss << "x" << c.Dv;
        if (!c.k_only && !c.gather_v) ss << "_nov";
        ss << "_bs" << c.BS << "_b" << c.B;
        c.name = ss.str();
        v.push_back(c);
    };
    auto max_blocks_for = [](int64_t BS, int i) { return std::max<int64_t>(1, std::min<int64_t>(6, (64 + 16 * (i % 3)) / BS)); };

    // 1. Geometry sweep.
    int i = 0;
    for (int64_t D : {46, 64, 80, 120, 128, 256})
        for (int64_t H : {1, 8, 13})
            for (int64_t BS : {1, 16, 32}) {
                GatherCase c;
                vary(c);
                c.H = H; c.Dk = c.Dv = D; c.BS = BS;
                c.M = max_blocks_for(BS, i);
                if (BS == 1) c.M = 40 + i % 9;
                c.layout = kAllLayouts[i % 7];
                c.out = outs[i % 3];
                c.cache = caches[(i / 3) % 5];
                c.scale = scales[(i / 2) % 3];
                if (D == 256 && H == 13) c.B = std::min<int64_t>(c.B, 2);
                fin(c, "geom");
                ++i;
            }
    // 2. Every cache format x output dtype x scale mode.
    i = 0;
    for (Fmt cf : caches)
        for (Fmt of : outs)
            for (Scale sc : scales) {
                if (!fmt_is_fp8(cf) && sc != Scale::TENSOR) continue;
                GatherCase c;
                vary(c);
                c.cache = cf; c.out = of; c.scale = sc;
                c.H = (i % 2) ? 8 : 13; c.Dk = c.Dv = (i % 2) ? 128 : 46; c.BS = 16; c.M = 4;
                c.layout = kAllLayouts[i % 7];
                fin(c, "fmt");
                ++i;
            }
    // 3. Every layout x cache format at 13 heads x 46.
    i = 0;
    for (Layout l : kAllLayouts)
        for (Fmt cf : caches) {
            GatherCase c;
            vary(c);
            c.layout = l; c.cache = cf; c.out = outs[i % 3]; c.scale = scales[i % 3];
            c.H = 13; c.Dk = c.Dv = 46; c.BS = 16; c.M = 3;
            fin(c, "layout");
            ++i;
        }
    // 4. Dk != Dv.
    i = 0;
    for (Layout l : kAllLayouts)
        for (auto dd : {std::pair<int64_t, int64_t>{128, 64}, {46, 80}}) {
            GatherCase c;
            vary(c);
            c.layout = l; c.Dk = dd.first; c.Dv = dd.second; c.H = 8; c.BS = (i % 2) ? 16 : 32; c.M = 3;
            c.cache = caches[(i + 2) % 5]; c.out = outs[i % 3]; c.scale = scales[i % 3];
            fin(c, "dkdv");
            ++i;
        }
    // 5. K-only caches and V skipped.
    i = 0;
    for (Layout l : {Layout::NHD, Layout::NHD_DEFAULT, Layout::HND, Layout::PADDED, Layout::STRIDED})
        for (Fmt cf : {Fmt::BF16, Fmt::E4M3}) {
            GatherCase c;
            vary(c);
            c.layout = l; c.k_only = true; c.cache = cf; c.out = outs[i % 3]; c.scale = scales[i % 3];
            c.H = 1; c.Dk = (i % 2) ? 576 : 64; c.BS = 16; c.M = 3;
            fin(c, "konly");
            ++i;
        }
    for (Layout l : {Layout::KV_PACKED, Layout::INTERLEAVED}) {
        GatherCase c;
        vary(c);
        c.layout = l; c.gather_v = false; c.cache = Fmt::F16; c.out = Fmt::F32;
        fin(c, "nov");
    }
    // 6. Edge cases.
    {
        GatherCase c;  // heavy out-of-range
        vary(c);
        c.oob = true; c.count_oob = true; c.B = 6; c.zero_len = 0.0;
        fin(c, "oob");
        c = GatherCase();
        vary(c);
        c.oob = true; c.count_oob = false; c.B = 5; c.cache = Fmt::E5M2; c.scale = Scale::HEAD; c.out = Fmt::BF16;
        fin(c, "oobnocount");
        c = GatherCase();  // all requests empty: N > 0 rows, none written
        vary(c);
        c.zero_len = 1.0; c.oob = false; c.extra_rows = 4;
        fin(c, "allempty");
        c = GatherCase();  // N = 0
        vary(c);
        c.zero_len = 1.0; c.oob = false; c.extra_rows = 0;
        fin(c, "n0");
        c = GatherCase();  // B = 0
        vary(c);
        c.B = 0; c.oob = false; c.extra_rows = 5;
        fin(c, "b0");
        c = GatherCase();  // many small requests, block size 1, long table rows
        vary(c);
        c.B = 16; c.BS = 1; c.M = 24; c.NB = 100; c.H = 2; c.Dk = c.Dv = 64; c.cache = Fmt::E4M3; c.out = Fmt::F16;
        fin(c, "many");
        c = GatherCase();  // tiny rows (H*D < 32)
        vary(c);
        c.H = 1; c.Dk = c.Dv = 8; c.BS = 4; c.M = 5; c.cache = Fmt::BF16; c.out = Fmt::F16;
        fin(c, "tiny");
    }
    return v;
}

std::string case_name(const ::testing::TestParamInfo<GatherCase> &info) { return info.param.name; }

INSTANTIATE_TEST_SUITE_P(Cpu, GatherKv, ::testing::ValuesIn(gather_cases(Backend::CPU)), case_name);
INSTANTIATE_TEST_SUITE_P(Cuda, GatherKv, ::testing::ValuesIn(gather_cases(Backend::CUDA)), case_name);

// ------------------------------------------------------------------------------ round trip
// Same-dtype write then gather gives back exactly the input rows (bit for bit, NaN payloads
// aside: inputs are finite), for every layout and dtype, with seq_starts in the middle of blocks.
struct RoundTripCase {
    Backend be;
    Layout layout;
    Fmt f;
    std::string name;
};
void PrintTo(const RoundTripCase &c, std::ostream *os) { *os << c.name; }
class RoundTrip : public ::testing::TestWithParam<RoundTripCase> {};

TEST_P(RoundTrip, WriteThenGatherIsExact) {
    const RoundTripCase &rc = GetParam();
    PKVT_SKIP_IF_NO_BACKEND(rc.be);
    const Backend be = rc.be;
    const pkv_device dev = backend_device(be);
    Rng r(31 + int(rc.layout) * 3 + int(rc.f));
    const int64_t H = 13, Dk = 46, Dv = rc.layout == Layout::KV_PACKED ? 80 : 46, BS = 16, NB = 24, B = 4, M = 5;
    const CacheGeom g = make_geom(rc.layout, rc.f, NB, BS, H, Dk, Dv, true, 0);
    // Each request gets M distinct blocks; it writes positions [start, start + len).
    std::vector<int64_t> perm(NB);
    for (int64_t i = 0; i < NB; ++i) perm[size_t(i)] = i;
    r.shuffle(perm);
    std::vector<int32_t> table(size_t(B * (M + 1)), 0), cu{0}, starts;
    std::vector<int64_t> slots;
    for (int64_t b = 0; b < B; ++b) {
        for (int64_t j = 0; j < M; ++j) table[size_t(b * (M + 1) + j)] = int32_t(perm[size_t(b * M + j)]);
        const int64_t start = r.range(0, 20), len = r.range(0, M * BS - start);
        starts.push_back(int32_t(start));
        cu.push_back(int32_t(cu.back() + len));
        for (int64_t p = start; p < start + len; ++p) slots.push_back(table[size_t(b * (M + 1) + p / BS)] * BS + p % BS);
    }
    const int64_t T = int64_t(slots.size());
    const int e = fmt_bytes(rc.f);
    std::vector<uint8_t> key(size_t(T * H * Dk * e)), value(size_t(T * H * Dv * e));
    for (size_t i = 0; i < key.size(); i += size_t(e)) store_bits(&key[i], rc.f, random_value_bits(r, rc.f));
    for (size_t i = 0; i < value.size(); i += size_t(e)) store_bits(&value[i], rc.f, random_value_bits(r, rc.f));

    Buf cache = to_device(be, random_bytes(r, g.bytes));
    Buf kb = to_device(be, key), vb = to_device(be, value), sb = to_device(be, slots);
    pkv_cache_view view = make_view(g, cache.ptr(), dev, PKV_SCALE_PER_TENSOR, nullptr, nullptr);
    pkv_tensor kt = make_tensor(kb.ptr(), fmt_dtype(rc.f), dev, {T, H, Dk}, {H * Dk, Dk, 1});
    pkv_tensor vt = make_tensor(vb.ptr(), fmt_dtype(rc.f), dev, {T, H, Dv}, {H * Dv, Dv, 1});
    pkv_tensor st = make_tensor(sb.ptr(), PKV_DTYPE_INT64, dev, {T}, {1});
    ASSERT_EQ(pkv_write_kv(&view, &kt, &vt, &st, nullptr, nullptr), PKV_SUCCESS) << pkv_last_error_message();

    Buf ok = to_device(be, random_bytes(r, key.size())), ov = to_device(be, random_bytes(r, value.size()));
    Buf tb = to_device(be, table), cb = to_device(be, cu), stb = to_device(be, starts);
    pkv_tensor okt = make_tensor(ok.ptr(), fmt_dtype(rc.f), dev, {T, H, Dk}, {H * Dk, Dk, 1});
    pkv_tensor ovt = make_tensor(ov.ptr(), fmt_dtype(rc.f), dev, {T, H, Dv}, {H * Dv, Dv, 1});
    pkv_tensor btt = make_tensor(tb.ptr(), PKV_DTYPE_INT32, dev, {B, M}, {M + 1, 1});
    pkv_tensor cut = make_tensor(cb.ptr(), PKV_DTYPE_INT32, dev, {B + 1}, {1});
    pkv_tensor stt = make_tensor(stb.ptr(), PKV_DTYPE_INT32, dev, {B}, {1});
    ASSERT_EQ(pkv_gather_kv(&okt, &ovt, &view, &btt, &cut, &stt, nullptr, nullptr), PKV_SUCCESS)
        << pkv_last_error_message();
    device_sync(be);
    EXPECT_TRUE(bytes_equal(key, ok.download_all(), nullptr, "gathered keys vs written keys"));
    EXPECT_TRUE(bytes_equal(value, ov.download_all(), nullptr, "gathered values vs written values"));
}

std::vector<RoundTripCase> round_trip_cases(Backend be) {
    std::vector<RoundTripCase> v;
    for (Layout l : kAllLayouts)
        for (Fmt f : {Fmt::F32, Fmt::F16, Fmt::BF16})
            v.push_back({be, l, f, std::string(layout_name(l)) + "_" + fmt_name(f)});
    return v;
}
std::string rt_name(const ::testing::TestParamInfo<RoundTripCase> &i) { return i.param.name; }
INSTANTIATE_TEST_SUITE_P(Cpu, RoundTrip, ::testing::ValuesIn(round_trip_cases(Backend::CPU)), rt_name);
INSTANTIATE_TEST_SUITE_P(Cuda, RoundTrip, ::testing::ValuesIn(round_trip_cases(Backend::CUDA)), rt_name);

// Concurrent gathers from one CPU cache into disjoint outputs, all counting out-of-range rows
// into one int64 ("incremented" for each such row; reentrant): no increment may be lost.
TEST(GatherKvMisc, ConcurrentGathersShareCounter) {
    const int kThreads = 4, kIters = 20000;
    const int64_t H = 1, D = 8, BS = 4, NB = 4, M = 2;
    const CacheGeom g = make_geom(Layout::NHD, Fmt::F16, NB, BS, H, D, D, true, 0);
    Rng r(11);
    std::vector<uint8_t> cache0 = random_bytes(r, g.bytes);
    const pkv_device cpu = backend_device(Backend::CPU);
    pkv_cache_view view = make_view(g, cache0.data(), cpu, PKV_SCALE_PER_TENSOR, nullptr, nullptr);
    // One request of 10 rows over a table of 2 blocks of 4: rows 8, 9 are out of range.
    std::vector<int32_t> table{1, 3}, cu{0, 10};
    int64_t counter = 0;
    std::vector<std::vector<uint16_t>> outs(kThreads, std::vector<uint16_t>(size_t(10 * D * 2)));
    std::vector<std::thread> th;
    std::vector<int> failures(kThreads, 0);
    for (int i = 0; i < kThreads; ++i)
        th.emplace_back([&, i] {
            uint16_t *o = outs[size_t(i)].data();
            pkv_tensor okt = make_tensor(o, PKV_DTYPE_F16, cpu, {10, H, D}, {D, D, 1});
            pkv_tensor ovt = make_tensor(o + 10 * D, PKV_DTYPE_F16, cpu, {10, H, D}, {D, D, 1});
            pkv_tensor btt = make_tensor(table.data(), PKV_DTYPE_INT32, cpu, {1, M}, {M, 1});
            pkv_tensor cut = make_tensor(cu.data(), PKV_DTYPE_INT32, cpu, {2}, {1});
            for (int it = 0; it < kIters; ++it)
                if (pkv_gather_kv(&okt, &ovt, &view, &btt, &cut, nullptr, &counter, nullptr) != PKV_SUCCESS)
                    ++failures[size_t(i)];
        });
    for (auto &t : th) t.join();
    for (int i = 0; i < kThreads; ++i) EXPECT_EQ(failures[size_t(i)], 0);
    EXPECT_EQ(counter, int64_t(kThreads) * kIters * 2) << "out_of_range_count lost increments under concurrent calls";
}

}  // namespace
}  // namespace pkvt
