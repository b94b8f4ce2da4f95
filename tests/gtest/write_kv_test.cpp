// pkv_write_kv against an independent per-element oracle, on the CPU backend and (with a device)
// on the CUDA backend; CUDA results are also compared byte for byte with the CPU backend.
//
// Every case: random non-zero inputs, a cache poisoned with random bytes, ~25 % padding slots
// (-1 and other negatives), unique random slots, key/value rows past T (and the gaps of padded
// row / head strides) filled with NaN, and slot-mapping entries past T (and between strided
// entries) pointing at unused slots: a library that reads anything it must not read writes NaN
// or a trap row somewhere, and the whole cache image is compared byte for byte.
#include <map>
#include <set>
#include <thread>

#include "test_common.h"

namespace pkvt {
namespace {

struct WriteCase {
    int idx = 0;
    Backend be = Backend::CPU;
    Layout layout = Layout::NHD;
    int64_t H = 8, Dk = 64, Dv = 64, BS = 16, NB = 0, T = 48;
    Fmt in = Fmt::F16, cache = Fmt::F16;
    Scale scale = Scale::TENSOR;
    bool slot64 = true;
    int64_t slot_stride = 1;
    int64_t key_extra_rows = 3;            // T_pad - T
    int64_t key_head_pad = 0, key_row_pad = 0;  // elements
    int64_t val_head_pad = 0, val_row_pad = 0;
    int64_t key_shift = 0;                 // elements between the buffer start and key->data
    bool k_only = false;
    double pad_frac = 0.25, oob_frac = 0.0;
    bool count_oob = true;
    int64_t base_shift = 0;                // bytes: cache base misalignment
    bool stream = false;                   // CUDA: a created (non-default) stream
    std::string name;
};

void PrintTo(const WriteCase &c, std::ostream *os) {
    *os << c.name << " {be=" << backend_name(c.be) << " layout=" << layout_name(c.layout) << " H=" << c.H
        << " Dk=" << c.Dk << " Dv=" << c.Dv << " BS=" << c.BS << " NB=" << c.NB << " T=" << c.T
        << " in=" << fmt_name(c.in) << " cache=" << fmt_name(c.cache) << " scale=" << scale_name(c.scale)
        << " slot=" << (c.slot64 ? "i64" : "i32") << " slot_stride=" << c.slot_stride
        << " key_extra_rows=" << c.key_extra_rows << " key_pad(h,r)=" << c.key_head_pad << "," << c.key_row_pad
        << " val_pad(h,r)=" << c.val_head_pad << "," << c.val_row_pad << " key_shift=" << c.key_shift
        << " k_only=" << c.k_only << " pad=" << c.pad_frac << " oob=" << c.oob_frac << " count=" << c.count_oob
        << " base_shift=" << c.base_shift << " stream=" << c.stream << "}";
}

// ------------------------------------------------------------------------------ inputs
struct Rows {  // a dense [rows, H, D] input in host memory (element strides)
    Fmt f = Fmt::F16;
    int64_t rows = 0, H = 0, D = 0, rs = 0, hs = 0, shift = 0;
    std::vector<uint8_t> bytes;
    int64_t elem_off(int64_t t, int64_t h, int64_t d) const { return shift + t * rs + h * hs + d; }
    uint32_t get(int64_t t, int64_t h, int64_t d) const { return load_bits(&bytes[elem_off(t, h, d) * fmt_bytes(f)], f); }
};

Rows make_rows(Rng &r, Fmt f, int64_t T, int64_t T_pad, int64_t H, int64_t D, int64_t head_pad, int64_t row_pad,
               int64_t shift) {
    Rows x;
    x.f = f; x.rows = T_pad; x.H = H; x.D = D; x.shift = shift;
    x.hs = D + head_pad;
    x.rs = H * x.hs + row_pad;
    const int64_t n = shift + std::max<int64_t>(T_pad, 1) * x.rs + 1;
    const int e = fmt_bytes(f);
    x.bytes.resize(size_t(n * e));
    for (int64_t i = 0; i < n; ++i) store_bits(&x.bytes[size_t(i * e)], f, nan_bits(f));  // NaN everywhere
    for (int64_t t = 0; t < T; ++t)
        for (int64_t h = 0; h < H; ++h)
            for (int64_t d = 0; d < D; ++d) store_bits(&x.bytes[size_t(x.elem_off(t, h, d) * e)], f, random_value_bits(r, f));
    return x;
}

struct WriteData {
    CacheGeom g;
    std::vector<uint8_t> cache0;
    Rows key, value;
    int64_t T_pad = 0;
    std::vector<uint8_t> slot_bytes;  // the whole slot buffer (entries at i * stride are the T slots)
    std::vector<int64_t> slots;       // the T logical slots
    std::vector<float> k_scale, v_scale;
    int64_t counter0 = 0;
};

std::vector<float> make_scales(Rng &r, const Rows &x, int64_t T, Scale mode, Fmt cache) {
    if (mode == Scale::NONE) return {};
    const int64_t n = mode == Scale::HEAD ? x.H : 1;
    std::vector<float> amax(size_t(n), 0.f);
    for (int64_t t = 0; t < T; ++t)
        for (int64_t h = 0; h < x.H; ++h)
            for (int64_t d = 0; d < x.D; ++d) {
                float v = std::fabs(oracle_to_float(x.f, x.get(t, h, d)));
                float &a = amax[size_t(mode == Scale::HEAD ? h : 0)];
                a = std::max(a, v);
            }
    std::vector<float> s(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) {
        // amax / C with C spread around the fp8 range, so that some values saturate and some
        // land in the subnormals.
        double C = cache == Fmt::E4M3 ? 16.0 + 700.0 * r.uni() : 500.0 + 90000.0 * r.uni();
        float a = amax[size_t(i)] > 0 ? amax[size_t(i)] : 1.f;
        s[size_t(i)] = float(a / C);
    }
    return s;
}

WriteData make_write_data(const WriteCase &c) {
    Rng r(0xC0FFEEull + uint64_t(c.idx) * 7919ull);
    WriteData w;
    w.g = make_geom(c.layout, c.cache, c.NB, c.BS, c.H, c.Dk, c.Dv, !c.k_only, c.base_shift);
    w.cache0 = random_bytes(r, w.g.bytes);
    w.T_pad = c.T + c.key_extra_rows;
    w.key = make_rows(r, c.in, c.T, w.T_pad, c.H, c.Dk, c.key_head_pad, c.key_row_pad, c.key_shift);
    if (!c.k_only) w.value = make_rows(r, c.in, c.T, w.T_pad, c.H, c.Dv, c.val_head_pad, c.val_row_pad, 0);
    if (fmt_is_fp8(c.cache)) {
        w.k_scale = make_scales(r, w.key, c.T, c.scale, c.cache);
        if (!c.k_only) w.v_scale = make_scales(r, w.value, c.T, c.scale, c.cache);
    }

    // Slots: a permutation of all slots; valid tokens take from the front, traps from the back.
    const int64_t S = c.NB * c.BS;
    std::vector<int64_t> perm(static_cast<size_t>(S));
    for (int64_t i = 0; i < S; ++i) perm[size_t(i)] = i;
    r.shuffle(perm);
    size_t front = 0, back = perm.size();
    const int64_t neg32[] = {-1, -1, -1, -2, -1000, std::numeric_limits<int32_t>::min()};
    const int64_t neg64[] = {-1, -1, -1, -2, -5000000000ll, std::numeric_limits<int64_t>::min()};
    w.slots.resize(size_t(c.T));
    for (int64_t t = 0; t < c.T; ++t) {
        int64_t s;
        if (r.chance(c.pad_frac)) {
            s = (c.slot64 ? neg64 : neg32)[r.range(0, 5)];
        } else if (r.chance(c.oob_frac)) {
            const int64_t big = c.slot64 ? (r.chance(0.5) ? (int64_t(1) << 40) : std::numeric_limits<int64_t>::max())
                                         : std::numeric_limits<int32_t>::max();
            const int64_t opts[] = {S, S + 1, S + 3 * c.BS + 1, big};
            s = opts[r.range(0, 3)];
        } else if (front < back) {
            s = perm[front++];
        } else {
            s = -1;  // cache full: the rest is padding
        }
        w.slots[size_t(t)] = s;
    }
    const int64_t entries = (std::max(c.T, w.T_pad) + 2) * c.slot_stride;
    const int esz = c.slot64 ? 8 : 4;
    w.slot_bytes.resize(size_t(entries * esz));
    auto put = [&](int64_t i, int64_t v) {
        if (c.slot64) std::memcpy(&w.slot_bytes[size_t(i * 8)], &v, 8);
        else { int32_t v32 = int32_t(v); std::memcpy(&w.slot_bytes[size_t(i * 4)], &v32, 4); }
    };
    for (int64_t i = 0; i < entries; ++i) put(i, back > front ? perm[--back] : -1);  // traps
    for (int64_t t = 0; t < c.T; ++t) put(t * c.slot_stride, w.slots[size_t(t)]);
    w.counter0 = 1000 + c.idx;
    return w;
}

// ------------------------------------------------------------------------------ oracle
// Expected cache image and out-of-range count: the simplest per-element loops.
std::vector<uint8_t> oracle_write(const WriteCase &c, const WriteData &w, int64_t *oob) {
    std::vector<uint8_t> img = w.cache0;
    const CacheGeom &g = w.g;
    *oob = 0;
    for (int64_t t = 0; t < c.T; ++t) {
        const int64_t s = w.slots[size_t(t)];
        if (s < 0) continue;
        if (s >= c.NB * c.BS) { ++*oob; continue; }
        const int64_t b = s / c.BS, o = s % c.BS;
        for (int side = 0; side < g.sides(); ++side) {
            const Rows &x = side == 0 ? w.key : w.value;
            const std::vector<float> &sc = side == 0 ? w.k_scale : w.v_scale;
            for (int64_t h = 0; h < c.H; ++h)
                for (int64_t d = 0; d < g.D(side); ++d) {
                    const uint32_t src = x.get(t, h, d);
                    uint32_t q;
                    if (c.in == c.cache) {
                        q = src;
                    } else if (fmt_is_fp8(c.cache)) {
                        const float scale = sc.empty() ? 1.0f : sc[size_t(sc.size() == 1 ? 0 : h)];
                        const float y = oracle_to_float(c.in, src) / scale;
                        q = oracle_encode(c.cache, y);
                    } else {
                        q = oracle_encode(c.cache, oracle_to_float(c.in, src));
                    }
                    store_bits(&img[size_t(g.offset(side, b, o, h, d))], c.cache, q);
                }
        }
    }
    return img;
}

// ------------------------------------------------------------------------------ running
WriteOutcome run_write(Backend be, const WriteCase &c, const WriteData &w) {
    const pkv_device dev = backend_device(be);
    Buf cache(be, w.g.bytes);
    cache.upload(w.cache0);
    Buf key = to_device(be, w.key.bytes);
    Buf value = c.k_only ? Buf() : to_device(be, w.value.bytes);
    Buf slots = to_device(be, w.slot_bytes);
    Buf ks = to_device(be, w.k_scale), vs = to_device(be, w.v_scale);
    Buf counter = to_device(be, std::vector<int64_t>{w.counter0});

    const pkv_scale_mode mode = c.scale == Scale::HEAD ? PKV_SCALE_PER_HEAD : PKV_SCALE_PER_TENSOR;
    const float *kp = w.k_scale.empty() ? nullptr : reinterpret_cast<const float *>(ks.ptr());
    const float *vp = w.v_scale.empty() ? nullptr : reinterpret_cast<const float *>(vs.ptr());
    pkv_cache_view view = make_view(w.g, cache.ptr(), dev, mode, kp, vp);

    const int ie = fmt_bytes(c.in);
    pkv_tensor kt = make_tensor(key.ptr() + w.key.shift * ie, fmt_dtype(c.in), dev, {w.T_pad, c.H, c.Dk},
                                {w.key.rs, w.key.hs, 1});
    pkv_tensor vt{};
    if (!c.k_only)
        vt = make_tensor(value.ptr(), fmt_dtype(c.in), dev, {w.T_pad, c.H, c.Dv}, {w.value.rs, w.value.hs, 1});
    pkv_tensor st = make_tensor(slots.ptr(), c.slot64 ? PKV_DTYPE_INT64 : PKV_DTYPE_INT32, dev, {c.T}, {c.slot_stride});

    TestStream stream(be, c.stream);
    const pkv_status s = pkv_write_kv(&view, &kt, c.k_only ? nullptr : &vt, &st,
                                      c.count_oob ? reinterpret_cast<int64_t *>(counter.ptr()) : nullptr, stream.get());
    return write_outcome(s, be, stream, cache, counter);
}

class WriteKv : public ::testing::TestWithParam<WriteCase> {};

TEST_P(WriteKv, MatchesOracle) {
    const WriteCase &c = GetParam();
    PKVT_SKIP_IF_NO_BACKEND(c.be);
    const WriteData w = make_write_data(c);
    int64_t oob = 0;
    const std::vector<uint8_t> expected = oracle_write(c, w, &oob);

    WriteOutcome r = run_write(c.be, c, w);
    ASSERT_EQ(r.status, PKV_SUCCESS) << status_str(r.status) << ": " << r.message;
    EXPECT_STREQ(r.message.c_str(), "") << "last error message must be empty after a success";
    auto describe = [&](int64_t off) { return w.g.describe(off); };
    EXPECT_TRUE(bytes_equal(expected, r.cache, describe, "cache vs oracle"));
    EXPECT_EQ(r.counter, w.counter0 + (c.count_oob ? oob : 0)) << "out_of_range_count (initial " << w.counter0
                                                               << ", " << oob << " out-of-range slots)";
    if (c.be == Backend::CUDA) {
        WriteOutcome cpu = run_write(Backend::CPU, c, w);
        ASSERT_EQ(cpu.status, PKV_SUCCESS) << cpu.message;
        EXPECT_TRUE(bytes_equal(cpu.cache, r.cache, describe, "CUDA cache vs CPU backend cache"));
        EXPECT_EQ(cpu.counter, r.counter);
    }
}

// ------------------------------------------------------------------------------ the grid
std::vector<WriteCase> write_cases(Backend be) {
    std::vector<WriteCase> v;
    const Fmt in_fmts[] = {Fmt::F32, Fmt::F16, Fmt::BF16};
    const Fmt cache_fmts[] = {Fmt::F32, Fmt::F16, Fmt::BF16, Fmt::E4M3, Fmt::E5M2};
    const Scale scales[] = {Scale::TENSOR, Scale::HEAD, Scale::NONE};
    const int64_t Ts[] = {48, 37, 64, 23};
    auto fin = [&](WriteCase c, const char *tag) {
        c.idx = int(v.size());
        c.be = be;
        if (c.NB == 0) c.NB = (c.T * 5 / 4 + c.BS - 1) / c.BS + 1;
        if (c.k_only) c.Dv = 0;
        c.base_shift *= fmt_bytes(c.cache);  // the cache base stays element-aligned
        std::ostringstream ss;
        ss << tag << "_" << c.idx << "_" << layout_name(c.layout) << "_" << fmt_name(c.in) << "_to_" << fmt_name(c.cache);
        if (fmt_is_fp8(c.cache)) ss << "_" << scale_name(c.scale);
        ss << "_h" << c.H << "_d" << c.Dk;
        if (c.k_only) ss << "_konly";
        else if (c.Dv != c.Dk) ss << "x" << c.Dv;
        ss << "_bs" << c.BS << "_t" << c.T;
        c.name = ss.str();
        v.push_back(c);
    };
    // Per-case variations of the secondary knobs, derived from a counter.
    int k = 0;
    auto vary = [&](WriteCase &c) {
        const int i = k++;
        c.slot64 = (i % 2) == 0;
        c.slot_stride = (i % 5 == 1) ? 3 : (i % 7 == 2) ? 2 : 1;
        c.key_extra_rows = (i % 3 == 0) ? 0 : (i % 3 == 1) ? 5 : 1;
        c.key_head_pad = (i % 4 == 1) ? 3 : 0;
        c.key_row_pad = (i % 6 == 2) ? 7 : 0;
        c.val_head_pad = (i % 4 == 2) ? 1 : 0;
        c.val_row_pad = (i % 5 == 3) ? 11 : 0;
        c.key_shift = (i % 8 == 5) ? 1 : 0;
        c.oob_frac = (i % 3 == 2) ? 0.08 : 0.0;
        c.count_oob = (i % 4 != 3);
        c.base_shift = (i % 9 == 4) ? 1 : 0;  // in cache elements (scaled in fin)
        c.stream = (i % 2) == 1;
        c.T = Ts[i % 4];
    };

    // 1. Geometry sweep: every head size x head count x block size, other axes rotating.
    int i = 0;
    for (int64_t D : {46, 64, 80, 120, 128, 256})
        for (int64_t H : {1, 8, 13})
            for (int64_t BS : {1, 16, 32}) {
                WriteCase c;
                vary(c);
                c.H = H; c.Dk = c.Dv = D; c.BS = BS;
                c.layout = kAllLayouts[i % 7];
                c.in = in_fmts[i % 3];
                c.cache = cache_fmts[(i / 3) % 5];
                c.scale = scales[(i / 2) % 3];
                if (D == 256 && H == 13) c.T = 23;  // keep the CPU time modest
                fin(c, "geom");
                ++i;
            }
    // 2. Every input dtype x cache format x scale mode.
    i = 0;
    for (Fmt in : in_fmts)
        for (Fmt cf : cache_fmts)
            for (Scale sc : scales) {
                if (!fmt_is_fp8(cf) && sc != Scale::TENSOR) continue;
                WriteCase c;
                vary(c);
                c.in = in; c.cache = cf; c.scale = sc;
                c.H = (i % 2) ? 8 : 13; c.Dk = c.Dv = (i % 2) ? 128 : 46; c.BS = 16;
                c.layout = kAllLayouts[i % 7];
                fin(c, "fmt");
                ++i;
            }
    // 3. Every layout x cache format at the unaligned regression shape (13 heads x 46).
    i = 0;
    for (Layout l : kAllLayouts)
        for (Fmt cf : cache_fmts) {
            WriteCase c;
            vary(c);
            c.layout = l; c.cache = cf; c.in = in_fmts[i % 3]; c.scale = scales[i % 3];
            c.H = 13; c.Dk = c.Dv = 46; c.BS = 16;
            fin(c, "layout");
            ++i;
        }
    // 4. Dk != Dv on every layout.
    i = 0;
    for (Layout l : kAllLayouts)
        for (auto dd : {std::pair<int64_t, int64_t>{128, 64}, {46, 80}}) {
            WriteCase c;
            vary(c);
            c.layout = l; c.Dk = dd.first; c.Dv = dd.second; c.H = 8; c.BS = (i % 2) ? 16 : 32;
            c.in = in_fmts[i % 3]; c.cache = cache_fmts[(i + 1) % 5]; c.scale = scales[i % 3];
            fin(c, "dkdv");
            ++i;
        }
    // 5. K-only caches (v_data NULL, value NULL).
    i = 0;
    for (Layout l : {Layout::NHD, Layout::NHD_DEFAULT, Layout::HND, Layout::PADDED, Layout::STRIDED})
        for (Fmt cf : {Fmt::BF16, Fmt::E4M3}) {
            WriteCase c;
            vary(c);
            c.layout = l; c.k_only = true; c.cache = cf; c.in = in_fmts[i % 3]; c.scale = scales[i % 3];
            c.H = 1; c.Dk = (i % 2) ? 576 : 64; c.BS = (i % 2) ? 16 : 32;  // MLA-latent-like row
            fin(c, "konly");
            ++i;
        }
    // 6. Edge cases.
    {
        WriteCase c;  // T = 0 with no extra rows
        vary(c);
        c.T = 0; c.key_extra_rows = 0;
        fin(c, "t0");
        c = WriteCase();
        vary(c);
        c.T = 0; c.key_extra_rows = 4; c.cache = Fmt::E4M3; c.in = Fmt::BF16;  // T = 0, padded key
        fin(c, "t0pad");
        c = WriteCase();  // T much larger than the cache, mostly padding
        vary(c);
        c.T = 300; c.NB = 2; c.BS = 16; c.H = 8; c.Dk = c.Dv = 64; c.pad_frac = 0.25; c.oob_frac = 0.02;
        fin(c, "bigT");
        c = WriteCase();
        vary(c);
        c.T = 200; c.NB = 3; c.BS = 1; c.H = 13; c.Dk = c.Dv = 46; c.cache = Fmt::E5M2; c.in = Fmt::F32;
        c.scale = Scale::HEAD; c.layout = Layout::HND;
        fin(c, "bigT");
        c = WriteCase();  // all padding
        vary(c);
        c.pad_frac = 1.0;
        fin(c, "allpad");
        c = WriteCase();  // a third out of range, counted
        vary(c);
        c.oob_frac = 0.45; c.count_oob = true; c.slot64 = true; c.layout = Layout::KV_PACKED;
        fin(c, "oob");
        c = WriteCase();
        vary(c);
        c.oob_frac = 0.45; c.count_oob = true; c.slot64 = false; c.layout = Layout::INTERLEAVED; c.cache = Fmt::E4M3;
        fin(c, "oob");
        c = WriteCase();  // out of range, not counted
        vary(c);
        c.oob_frac = 0.45; c.count_oob = false;
        fin(c, "oobnocount");
        c = WriteCase();  // one token
        vary(c);
        c.T = 1; c.pad_frac = 0; c.oob_frac = 0; c.key_extra_rows = 0;
        fin(c, "one");
        c = WriteCase();  // large slot-mapping stride, misaligned everything
        vary(c);
        c.slot_stride = 7; c.key_shift = 3; c.base_shift = 3; c.key_head_pad = 1; c.key_row_pad = 5; c.Dk = c.Dv = 80;
        c.H = 13; c.layout = Layout::STRIDED; c.in = Fmt::F16; c.cache = Fmt::BF16;
        fin(c, "stride7");
        c = WriteCase();  // H*D < 32 (tiny rows)
        vary(c);
        c.H = 1; c.Dk = c.Dv = 8; c.BS = 4; c.cache = Fmt::E4M3; c.scale = Scale::HEAD;
        fin(c, "tiny");
        c = WriteCase();  // every slot of the cache written (no unused slot)
        vary(c);
        c.T = 64; c.NB = 4; c.BS = 16; c.pad_frac = 0.0; c.oob_frac = 0.0;
        fin(c, "full");
    }
    return v;
}

std::string case_name(const ::testing::TestParamInfo<WriteCase> &info) { return info.param.name; }

INSTANTIATE_TEST_SUITE_P(Cpu, WriteKv, ::testing::ValuesIn(write_cases(Backend::CPU)), case_name);
INSTANTIATE_TEST_SUITE_P(Cuda, WriteKv, ::testing::ValuesIn(write_cases(Backend::CUDA)), case_name);

// ------------------------------------------------------------------------------ > 2^31 bytes
// Caches whose used blocks sit past 2^31 bytes (block stride x block id), on a sparse host
// mapping (CPU) or a 2-3 GB cudaMalloc. Writes tokens into high blocks, checks the touched
// blocks and their neighbours byte for byte (and on the CPU that nothing else changed), then
// gathers the tokens back through a block table. Variant 2 also has more than 2^31 slots
// (int64 slot ids past INT32_MAX).
struct LargeCase {
    Backend be;
    int variant;  // 0: padded pages, f16; 1: HND, K/V interleaved, e4m3 per-head; 2: > 2^31 slots
    std::string name;
};
void PrintTo(const LargeCase &c, std::ostream *os) { *os << c.name; }

class LargeOffsets : public ::testing::TestWithParam<LargeCase> {};

// Offset of the first non-zero byte in [begin, end), or -1.
int64_t first_nonzero(const uint8_t *p, int64_t begin, int64_t end) {
    int64_t i = begin;
    for (; i < end && (i & 7); ++i)
        if (p[i]) return i;
    for (; i + 8 <= end; i += 8) {
        uint64_t w;
        std::memcpy(&w, p + i, 8);
        if (w) break;
    }
    for (; i < end; ++i)
        if (p[i]) return i;
    return -1;
}

TEST_P(LargeOffsets, WriteAndGatherPast2GiB) {
    const LargeCase &lc = GetParam();
    PKVT_SKIP_IF_NO_BACKEND(lc.be);
    const Backend be = lc.be;
    const pkv_device dev = backend_device(be);
    Rng r(77 + lc.variant);

    CacheGeom g;
    g.layout = Layout::STRIDED;  // explicit strides are passed
    g.has_v = true;
    Fmt in = Fmt::F16;
    bool slot64 = false;
    if (lc.variant == 0) {
        g.fmt = Fmt::F16; g.e = 2; g.NB = 70000; g.BS = 16; g.H = 2; g.Dk = g.Dv = 64;
        g.kss = g.H * g.Dk * 2; g.ksh = g.Dk * 2; g.vss = g.kss; g.vsh = g.ksh;
        g.ksb = g.vsb = 40960;  // payload 4 KiB + 4 KiB, the rest is page padding
        g.k_off = 0; g.v_off = 4096 + 256;
    } else if (lc.variant == 1) {
        in = Fmt::BF16;
        g.fmt = Fmt::E4M3; g.e = 1; g.NB = 72000; g.BS = 32; g.H = 4; g.Dk = g.Dv = 128;
        g.kss = g.Dk; g.ksh = g.BS * g.Dk; g.vss = g.kss; g.vsh = g.ksh;  // HND
        g.ksb = g.vsb = 2 * g.BS * g.H * g.Dk;                          // [NB, 2, H, BS, D]
        g.k_off = 0; g.v_off = g.BS * g.H * g.Dk;
    } else {
        in = Fmt::F32;
        slot64 = true;
        g.has_v = false;
        g.fmt = Fmt::E5M2; g.e = 1; g.NB = (int64_t(1) << 28) + 64; g.BS = 8; g.H = 1; g.Dk = 1; g.Dv = 0;
        g.kss = 1; g.ksh = 1; g.ksb = 8;  // NHD, one byte per token: 2^31 + 512 slots
        g.vss = g.vsh = g.vsb = 0;
        g.k_off = 0;
    }
    g.bytes = size_t(g.NB * g.ksb);
    ASSERT_GT(g.bytes, size_t(1) << 31);
    const int64_t S = g.NB * g.BS;
    if (lc.variant == 2) {
        ASSERT_GT(S, int64_t(std::numeric_limits<int32_t>::max()));
    }
    const int64_t T = 64;

    // Tokens: mostly into the top 1000 blocks, a few into block 0 and the very last slot.
    std::set<int64_t> used;
    std::vector<int64_t> slots;
    while (int64_t(slots.size()) < T) {
        int64_t s;
        if (slots.empty()) s = S - 1;
        else if (slots.size() < 3) s = r.range(0, g.BS - 1);
        else s = r.range((g.NB - 1000) * g.BS, S - 1);
        if (used.insert(s).second) slots.push_back(s);
    }
    slots[5] = -1;  // padding
    slots[6] = S;   // out of range (just past the end)
    std::vector<int32_t> slots32(slots.begin(), slots.end());

    Rows key = make_rows(r, in, T, T, g.H, g.Dk, 0, 0, 0);
    Rows value = g.has_v ? make_rows(r, in, T, T, g.H, g.Dv, 0, 0, 0) : Rows();
    std::vector<float> ks(size_t(g.H)), vs(size_t(g.H));
    for (auto &x : ks) x = float(0.01 + r.uni());
    for (auto &x : vs) x = float(0.01 + r.uni());
    const bool fp8 = fmt_is_fp8(g.fmt);
    auto scale_of = [&](int side, int64_t h) { return lc.variant == 1 ? (side ? vs : ks)[size_t(h)] : 1.0f; };

    // Blocks to check: every touched block and its neighbours, poisoned with random bytes.
    std::set<int64_t> blocks;
    for (int64_t s : slots)
        if (s >= 0 && s < S)
            for (int64_t b = s / g.BS - 1; b <= s / g.BS + 1; ++b)
                if (b >= 0 && b < g.NB) blocks.insert(b);
    Buf cache(be, g.bytes, /*sparse=*/be == Backend::CPU);
    if (be == Backend::CUDA) cache.fill(0, 0, g.bytes);
    std::map<int64_t, std::vector<uint8_t>> expected;
    for (int64_t b : blocks) {
        expected[b] = random_bytes(r, size_t(g.ksb));
        cache.upload(expected[b].data(), size_t(g.ksb), size_t(b * g.ksb));
    }
    int64_t oob = 0;
    for (int64_t t = 0; t < T; ++t) {
        const int64_t s = slots[size_t(t)];
        if (s < 0) continue;
        if (s >= S) { ++oob; continue; }
        const int64_t b = s / g.BS, o = s % g.BS;
        for (int side = 0; side < g.sides(); ++side)
            for (int64_t h = 0; h < g.H; ++h)
                for (int64_t d = 0; d < g.D(side); ++d) {
                    const uint32_t src = (side ? value : key).get(t, h, d);
                    uint32_t q = src;
                    if (fp8) q = oracle_encode(g.fmt, oracle_to_float(in, src) / scale_of(side, h));
                    store_bits(&expected[b][size_t(g.offset(side, b, o, h, d) - b * g.ksb)], g.fmt, q);
                }
    }

    Buf kb = to_device(be, key.bytes), vb = to_device(be, value.bytes);
    Buf sb = slot64 ? to_device(be, slots) : to_device(be, slots32);
    Buf ksb = to_device(be, ks), vsb = to_device(be, vs), cnt = to_device(be, std::vector<int64_t>{0});
    const bool scaled = lc.variant == 1;
    pkv_cache_view view = make_view(g, cache.ptr(), dev, scaled ? PKV_SCALE_PER_HEAD : PKV_SCALE_PER_TENSOR,
                                    scaled ? reinterpret_cast<float *>(ksb.ptr()) : nullptr,
                                    scaled ? reinterpret_cast<float *>(vsb.ptr()) : nullptr);
    pkv_tensor kt = make_tensor(kb.ptr(), fmt_dtype(in), dev, {T, g.H, g.Dk}, {key.rs, key.hs, 1});
    pkv_tensor vt{};
    if (g.has_v) vt = make_tensor(vb.ptr(), fmt_dtype(in), dev, {T, g.H, g.Dv}, {value.rs, value.hs, 1});
    pkv_tensor st = make_tensor(sb.ptr(), slot64 ? PKV_DTYPE_INT64 : PKV_DTYPE_INT32, dev, {T}, {1});
    pkv_status s = pkv_write_kv(&view, &kt, g.has_v ? &vt : nullptr, &st, reinterpret_cast<int64_t *>(cnt.ptr()), nullptr);
    ASSERT_EQ(s, PKV_SUCCESS) << pkv_last_error_message();
    device_sync(be);
    int64_t count = -1;
    cnt.download(&count, 8);
    EXPECT_EQ(count, oob);
    for (auto &kv : expected) {
        std::vector<uint8_t> got(size_t(g.ksb));
        cache.download(got.data(), got.size(), size_t(kv.first * g.ksb));
        const int64_t base = kv.first * g.ksb;
        auto where = [&](int64_t off) { return "block byte " + std::to_string(off) + " (cache byte " + std::to_string(base + off) + ")"; };
        ASSERT_TRUE(bytes_equal(kv.second, got, where, "block " + std::to_string(kv.first)));
    }
    if (be == Backend::CPU) {  // nothing outside the checked blocks changed (still zero pages)
        int64_t pos = 0, stray = -1;
        for (auto &kv : expected) {
            if (stray < 0) stray = first_nonzero(cache.ptr(), pos, kv.first * g.ksb);
            pos = (kv.first + 1) * g.ksb;
        }
        if (stray < 0) stray = first_nonzero(cache.ptr(), pos, int64_t(g.bytes));
        EXPECT_EQ(stray, -1) << "a byte outside the written blocks changed at offset " << stray;
    }

    // Gather the tokens back: one request per valid token (length 1, seq_start = offset).
    std::vector<int32_t> table, cu{0}, starts;
    std::vector<int64_t> rows;
    for (int64_t t = 0; t < T; ++t) {
        const int64_t sl = slots[size_t(t)];
        if (sl < 0 || sl >= S) continue;
        table.push_back(int32_t(sl / g.BS));
        starts.push_back(int32_t(sl % g.BS));
        cu.push_back(cu.back() + 1);
        rows.push_back(t);
    }
    const int64_t B = int64_t(rows.size());
    Fmt outf = fp8 ? Fmt::F32 : in;
    const int oe = fmt_bytes(outf);
    Buf ok(be, size_t(B * g.H * g.Dk * oe)), ov(be, size_t(std::max<int64_t>(B * g.H * g.Dv * oe, 1)));
    Buf tb = to_device(be, table), cub = to_device(be, cu), stb = to_device(be, starts);
    pkv_tensor okt = make_tensor(ok.ptr(), fmt_dtype(outf), dev, {B, g.H, g.Dk}, {g.H * g.Dk, g.Dk, 1});
    pkv_tensor ovt = make_tensor(ov.ptr(), fmt_dtype(outf), dev, {B, g.H, g.Dv}, {g.H * g.Dv, g.Dv, 1});
    pkv_tensor tbt = make_tensor(tb.ptr(), PKV_DTYPE_INT32, dev, {B, 1}, {1, 1});
    pkv_tensor cut = make_tensor(cub.ptr(), PKV_DTYPE_INT32, dev, {B + 1}, {1});
    pkv_tensor stt = make_tensor(stb.ptr(), PKV_DTYPE_INT32, dev, {B}, {1});
    s = pkv_gather_kv(&okt, g.has_v ? &ovt : nullptr, &view, &tbt, &cut, &stt, reinterpret_cast<int64_t *>(cnt.ptr()),
                      nullptr);
    ASSERT_EQ(s, PKV_SUCCESS) << pkv_last_error_message();
    device_sync(be);
    std::vector<uint8_t> gk = ok.download_all(), gv = ov.download_all();
    int64_t bad = 0;
    for (int64_t i = 0; i < B; ++i)
        for (int side = 0; side < g.sides(); ++side)
            for (int64_t h = 0; h < g.H; ++h)
                for (int64_t d = 0; d < g.D(side); ++d) {
                    const uint32_t src = (side ? value : key).get(rows[size_t(i)], h, d);
                    uint32_t want = src;
                    if (fp8) {
                        const uint32_t q = oracle_encode(g.fmt, oracle_to_float(in, src) / scale_of(side, h));
                        want = f32_bits(oracle_to_float(g.fmt, q) * scale_of(side, h));
                    }
                    const int64_t D = g.D(side);
                    const uint32_t got = load_bits(&(side ? gv : gk)[size_t(((i * g.H + h) * D + d) * oe)], outf);
                    if (got != want && bad++ < 5)
                        ADD_FAILURE() << "gathered row " << i << (side ? " V" : " K") << " h=" << h << " d=" << d
                                      << ": expected 0x" << std::hex << want << " got 0x" << got;
                }
    EXPECT_EQ(bad, 0);
    cnt.download(&count, 8);
    EXPECT_EQ(count, oob) << "gather found out-of-range rows that are not";
}

std::vector<LargeCase> large_cases(Backend be) {
    return {{be, 0, "nhd_padded_f16"}, {be, 1, "hnd_interleaved_e4m3"}, {be, 2, "konly_e5m2_2e31_slots"}};
}
std::string large_name(const ::testing::TestParamInfo<LargeCase> &i) { return i.param.name; }
INSTANTIATE_TEST_SUITE_P(Cpu, LargeOffsets, ::testing::ValuesIn(large_cases(Backend::CPU)), large_name);
INSTANTIATE_TEST_SUITE_P(Cuda, LargeOffsets, ::testing::ValuesIn(large_cases(Backend::CUDA)), large_name);

// ------------------------------------------------------------------------------ misc
// Two writes of disjoint slot sets accumulate into the counter and into the cache (the counter
// is never reset); and a repeated write of the same data is idempotent.
TEST(WriteKvMisc, CounterAccumulatesAndRewriteIsIdempotent) {
    for (Backend be : {Backend::CPU, Backend::CUDA}) {
        if (be == Backend::CUDA && !cuda_usable()) continue;
        SCOPED_TRACE(backend_name(be));
        WriteCase c;
        c.idx = 4242; c.be = be; c.NB = 8; c.oob_frac = 0.3; c.count_oob = true;
        c.name = "misc";
        const WriteData w = make_write_data(c);
        int64_t oob = 0;
        const std::vector<uint8_t> expected = oracle_write(c, w, &oob);
        const pkv_device dev = backend_device(be);
        Buf cache(be, w.g.bytes);
        cache.upload(w.cache0);
        Buf key = to_device(be, w.key.bytes), value = to_device(be, w.value.bytes), slots = to_device(be, w.slot_bytes);
        Buf counter = to_device(be, std::vector<int64_t>{5});
        pkv_cache_view view = make_view(w.g, cache.ptr(), dev, PKV_SCALE_PER_TENSOR, nullptr, nullptr);
        pkv_tensor kt = make_tensor(key.ptr(), fmt_dtype(c.in), dev, {w.T_pad, c.H, c.Dk}, {w.key.rs, w.key.hs, 1});
        pkv_tensor vt = make_tensor(value.ptr(), fmt_dtype(c.in), dev, {w.T_pad, c.H, c.Dv}, {w.value.rs, w.value.hs, 1});
        pkv_tensor st = make_tensor(slots.ptr(), PKV_DTYPE_INT64, dev, {c.T}, {1});
        for (int rep = 0; rep < 3; ++rep)
            ASSERT_EQ(pkv_write_kv(&view, &kt, &vt, &st, reinterpret_cast<int64_t *>(counter.ptr()), nullptr), PKV_SUCCESS)
                << pkv_last_error_message();
        device_sync(be);
        int64_t n = 0;
        counter.download(&n, 8);
        EXPECT_GT(oob, 0);
        EXPECT_EQ(n, 5 + 3 * oob);
        EXPECT_TRUE(bytes_equal(expected, cache.download_all(), [&](int64_t o) { return w.g.describe(o); }, "cache"));
    }
}

// "Reentrant; concurrent calls on disjoint slots are safe", and the counter is "incremented
// (atomically)": several threads write disjoint slot sets of one CPU cache, all counting into
// one int64; the cache must equal the oracle of all writes and no increment may be lost.
TEST(WriteKvMisc, ConcurrentDisjointWritesShareCounter) {
    const int kThreads = 4, kIters = 20000;
    WriteCase c;
    c.idx = 777; c.be = Backend::CPU; c.H = 1; c.Dk = c.Dv = 8; c.BS = 16; c.T = 8; c.NB = 0; c.key_extra_rows = 0;
    c.name = "concurrent";
    const CacheGeom g = make_geom(Layout::NHD, Fmt::F16, 4 * kThreads, c.BS, c.H, c.Dk, c.Dv, true, 0);
    Rng r(9);
    std::vector<uint8_t> cache0 = random_bytes(r, g.bytes), expected = cache0;
    Buf cache = to_device(Backend::CPU, cache0);
    int64_t counter = 0;
    const pkv_device cpu = backend_device(Backend::CPU);
    pkv_cache_view view = make_view(g, cache.ptr(), cpu, PKV_SCALE_PER_TENSOR, nullptr, nullptr);
    // Thread i writes T tokens to slots i*T .. i*T+T-1 (all in range) plus 3 out-of-range slots.
    const int64_t T = c.T + 3;
    std::vector<std::vector<uint16_t>> keys(kThreads), values(kThreads);
    std::vector<std::vector<int64_t>> slots(kThreads);
    for (int i = 0; i < kThreads; ++i) {
        for (int64_t t = 0; t < T; ++t) {
            slots[size_t(i)].push_back(t < c.T ? i * c.T + t : g.NB * g.BS + t);
            for (int64_t d = 0; d < c.Dk; ++d) {
                keys[size_t(i)].push_back(uint16_t(random_value_bits(r, Fmt::F16)));
                values[size_t(i)].push_back(uint16_t(random_value_bits(r, Fmt::F16)));
            }
        }
        for (int64_t t = 0; t < c.T; ++t) {
            const int64_t s = slots[size_t(i)][size_t(t)];
            for (int side = 0; side < 2; ++side)
                for (int64_t d = 0; d < c.Dk; ++d)
                    store_bits(&expected[size_t(g.offset(side, s / c.BS, s % c.BS, 0, d))], Fmt::F16,
                               (side ? values : keys)[size_t(i)][size_t(t * c.Dk + d)]);
        }
    }
    std::vector<std::thread> th;
    std::vector<int> failures(kThreads, 0);
    for (int i = 0; i < kThreads; ++i)
        th.emplace_back([&, i] {
            pkv_tensor kt = make_tensor(keys[size_t(i)].data(), PKV_DTYPE_F16, cpu, {T, 1, c.Dk}, {c.Dk, c.Dk, 1});
            pkv_tensor vt = make_tensor(values[size_t(i)].data(), PKV_DTYPE_F16, cpu, {T, 1, c.Dk}, {c.Dk, c.Dk, 1});
            pkv_tensor st = make_tensor(slots[size_t(i)].data(), PKV_DTYPE_INT64, cpu, {T}, {1});
            for (int it = 0; it < kIters; ++it)
                if (pkv_write_kv(&view, &kt, &vt, &st, &counter, nullptr) != PKV_SUCCESS) ++failures[size_t(i)];
        });
    for (auto &t : th) t.join();
    for (int i = 0; i < kThreads; ++i) EXPECT_EQ(failures[size_t(i)], 0);
    EXPECT_EQ(counter, int64_t(kThreads) * kIters * 3) << "out_of_range_count lost increments under concurrent calls";
    EXPECT_TRUE(bytes_equal(expected, cache.download_all(), [&](int64_t o) { return g.describe(o); }, "cache"));
}

// FP8 stores sat_finite_rne(x / scale) computed with a float division, not x * (1 / scale).
// The inputs are crafted so that the two differ after rounding to fp8: x / scale sits exactly on
// (or next to) an fp8 rounding midpoint while x * (1 / scale) falls on the other side.
class Fp8Division : public ::testing::TestWithParam<std::tuple<Backend, Fmt>> {};

TEST_P(Fp8Division, DividesNotMultipliesByReciprocal) {
    const Backend be = std::get<0>(GetParam());
    const Fmt f = std::get<1>(GetParam());
    PKVT_SKIP_IF_NO_BACKEND(be);
    Rng r(int(f) * 1000 + 5);
    const OracleTable &tab = oracle_table(f);
    float scale = 1.0f;
    std::vector<float> hits;
    for (int attempt = 0; attempt < 200 && hits.size() < 64; ++attempt) {
        scale = float(0.01 + 10.0 * r.uni());
        hits.clear();
        for (uint32_t c = 0; c + 1 <= tab.max_finite && hits.size() < 64; ++c) {
            const double m = 0.5 * (tab.pos[c] + tab.pos[c + 1]);
            const float x0 = float(m * double(scale));
            for (float x : {x0, std::nextafter(x0, INFINITY), std::nextafter(x0, 0.0f)}) {
                const uint32_t qd = oracle_encode(f, x / scale), qr = oracle_encode(f, x * (1.0f / scale));
                if (qd != qr) {
                    hits.push_back(r.chance(0.5) ? -x : x);
                    break;
                }
            }
        }
    }
    ASSERT_GE(hits.size(), 16u) << "test setup: no distinguishing inputs found";
    const int64_t H = 1, D = 16, T = int64_t((hits.size() + D - 1) / D), BS = 16;
    std::vector<float> key(static_cast<size_t>(T * D));
    for (size_t i = 0; i < key.size(); ++i) key[i] = hits[i % hits.size()];
    std::vector<int64_t> slots(static_cast<size_t>(T));
    for (int64_t t = 0; t < T; ++t) slots[size_t(t)] = t;
    const CacheGeom g = make_geom(Layout::NHD, f, (T + BS - 1) / BS, BS, H, D, D, false, 0);
    std::vector<uint8_t> expected(g.bytes, 0xCD);
    for (int64_t t = 0; t < T; ++t)
        for (int64_t d = 0; d < D; ++d)
            expected[size_t(g.offset(0, t / BS, t % BS, 0, d))] = uint8_t(oracle_encode(f, key[size_t(t * D + d)] / scale));
    const pkv_device dev = backend_device(be);
    Buf cache(be, g.bytes);
    cache.fill(0xCD, 0, g.bytes);
    Buf kb = to_device(be, key), sb = to_device(be, slots), scb = to_device(be, std::vector<float>{scale});
    pkv_cache_view view = make_view(g, cache.ptr(), dev, PKV_SCALE_PER_TENSOR, reinterpret_cast<float *>(scb.ptr()), nullptr);
    pkv_tensor kt = make_tensor(kb.ptr(), PKV_DTYPE_F32, dev, {T, H, D}, {H * D, D, 1});
    pkv_tensor st = make_tensor(sb.ptr(), PKV_DTYPE_INT64, dev, {T}, {1});
    ASSERT_EQ(pkv_write_kv(&view, &kt, nullptr, &st, nullptr, nullptr), PKV_SUCCESS) << pkv_last_error_message();
    device_sync(be);
    EXPECT_TRUE(bytes_equal(expected, cache.download_all(), [&](int64_t o) { return g.describe(o); },
                            "fp8 cache (x / scale, scale = " + std::to_string(scale) + ")"));
}

INSTANTIATE_TEST_SUITE_P(Cpu, Fp8Division, ::testing::Combine(::testing::Values(Backend::CPU), ::testing::Values(Fmt::E4M3, Fmt::E5M2)),
                         [](const ::testing::TestParamInfo<std::tuple<Backend, Fmt>> &i) { return std::string(fmt_name(std::get<1>(i.param))); });
INSTANTIATE_TEST_SUITE_P(Cuda, Fp8Division, ::testing::Combine(::testing::Values(Backend::CUDA), ::testing::Values(Fmt::E4M3, Fmt::E5M2)),
                         [](const ::testing::TestParamInfo<std::tuple<Backend, Fmt>> &i) { return std::string(fmt_name(std::get<1>(i.param))); });

// A cache on PKV_DEVICE_CUDA_HOST is host memory for the ops (the CPU path), and a CPU cache
// ignores the stream argument (here a bogus, non-NULL handle).
TEST(WriteKvMisc, CudaHostDeviceAndIgnoredStream) {
    for (int variant = 0; variant < 2; ++variant) {
        SCOPED_TRACE(variant == 0 ? "CUDA_HOST device" : "CPU with a bogus stream");
        WriteCase c;
        c.idx = 4343 + variant; c.be = Backend::CPU; c.NB = 6; c.cache = Fmt::E4M3; c.scale = Scale::HEAD;
        c.oob_frac = 0.1; c.name = "host";
        const WriteData w = make_write_data(c);
        int64_t oob = 0;
        const std::vector<uint8_t> expected = oracle_write(c, w, &oob);
        pkv_device dev = backend_device(Backend::CPU);
        if (variant == 0) dev.type = PKV_DEVICE_CUDA_HOST;
        std::vector<uint8_t> cache = w.cache0, key = w.key.bytes, value = w.value.bytes, slots = w.slot_bytes;
        std::vector<float> ks = w.k_scale, vs = w.v_scale;
        int64_t counter = 3;
        pkv_cache_view view = make_view(w.g, cache.data(), dev, PKV_SCALE_PER_HEAD, ks.data(), vs.data());
        pkv_tensor kt = make_tensor(key.data(), fmt_dtype(c.in), dev, {w.T_pad, c.H, c.Dk}, {w.key.rs, w.key.hs, 1});
        pkv_tensor vt = make_tensor(value.data(), fmt_dtype(c.in), dev, {w.T_pad, c.H, c.Dv}, {w.value.rs, w.value.hs, 1});
        pkv_tensor st = make_tensor(slots.data(), c.slot64 ? PKV_DTYPE_INT64 : PKV_DTYPE_INT32, dev, {c.T}, {c.slot_stride});
        pkv_stream stream = variant == 1 ? reinterpret_cast<pkv_stream>(uintptr_t(0xdead0)) : nullptr;
        ASSERT_EQ(pkv_write_kv(&view, &kt, &vt, &st, &counter, stream), PKV_SUCCESS) << pkv_last_error_message();
        EXPECT_EQ(counter, 3 + oob);
        EXPECT_TRUE(bytes_equal(expected, cache, [&](int64_t o) { return w.g.describe(o); }, "cache"));
    }
}

#if PKVT_HAVE_CUDA
// Enqueue-only and graph-capturable: a write and a gather captured into one CUDA graph (global
// capture mode: any synchronizing or allocating call would fail the capture) and replayed
// twice. Scales are read at run time (changed between replays), and the out-of-range counter
// keeps accumulating over replays.
TEST(WriteKvMisc, CudaGraphCaptureAndReplay) {
    if (!cuda_usable()) GTEST_SKIP() << "no CUDA device";
    const Backend be = Backend::CUDA;
    const pkv_device dev = backend_device(be);
    WriteCase c;
    c.idx = 5151; c.be = be; c.NB = 6; c.cache = Fmt::E5M2; c.in = Fmt::BF16; c.scale = Scale::TENSOR;
    c.oob_frac = 0.15; c.key_extra_rows = 2; c.name = "graph";
    WriteData w = make_write_data(c);
    Buf cache = to_device(be, w.cache0), key = to_device(be, w.key.bytes), value = to_device(be, w.value.bytes);
    Buf slots = to_device(be, w.slot_bytes), ks = to_device(be, w.k_scale), vs = to_device(be, w.v_scale);
    Buf counter = to_device(be, std::vector<int64_t>{0});
    pkv_cache_view view = make_view(w.g, cache.ptr(), dev, PKV_SCALE_PER_TENSOR, reinterpret_cast<float *>(ks.ptr()),
                                    reinterpret_cast<float *>(vs.ptr()));
    pkv_tensor kt = make_tensor(key.ptr(), fmt_dtype(c.in), dev, {w.T_pad, c.H, c.Dk}, {w.key.rs, w.key.hs, 1});
    pkv_tensor vt = make_tensor(value.ptr(), fmt_dtype(c.in), dev, {w.T_pad, c.H, c.Dv}, {w.value.rs, w.value.hs, 1});
    pkv_tensor st = make_tensor(slots.ptr(), c.slot64 ? PKV_DTYPE_INT64 : PKV_DTYPE_INT32, dev, {c.T}, {c.slot_stride});
    // Gather every valid token back: one request per token (length 1, seq_start = offset).
    std::vector<int32_t> table, cu{0}, starts;
    for (int64_t t = 0; t < c.T; ++t) {
        const int64_t sl = w.slots[size_t(t)];
        if (sl < 0 || sl >= c.NB * c.BS) continue;
        table.push_back(int32_t(sl / c.BS));
        starts.push_back(int32_t(sl % c.BS));
        cu.push_back(cu.back() + 1);
    }
    table.push_back(int32_t(c.NB + 1));  // one more request whose block id is out of range
    starts.push_back(0);
    cu.push_back(cu.back() + 1);
    const int64_t B = int64_t(starts.size()), N = cu.back();
    Buf tb = to_device(be, table), cb = to_device(be, cu), sb = to_device(be, starts);
    Buf ok(be, size_t(N * c.H * c.Dk * 4)), ov(be, size_t(N * c.H * c.Dv * 4));
    pkv_tensor okt = make_tensor(ok.ptr(), PKV_DTYPE_F32, dev, {N, c.H, c.Dk}, {c.H * c.Dk, c.Dk, 1});
    pkv_tensor ovt = make_tensor(ov.ptr(), PKV_DTYPE_F32, dev, {N, c.H, c.Dv}, {c.H * c.Dv, c.Dv, 1});
    pkv_tensor btt = make_tensor(tb.ptr(), PKV_DTYPE_INT32, dev, {B, 1}, {1, 1});
    pkv_tensor cut = make_tensor(cb.ptr(), PKV_DTYPE_INT32, dev, {B + 1}, {1});
    pkv_tensor stt = make_tensor(sb.ptr(), PKV_DTYPE_INT32, dev, {B}, {1});

    cudaStream_t stream;
    PKVT_CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
    PKVT_CUDA_CHECK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeGlobal));
    const pkv_status s1 = pkv_write_kv(&view, &kt, &vt, &st, reinterpret_cast<int64_t *>(counter.ptr()),
                                       reinterpret_cast<pkv_stream>(stream));
    const std::string m1 = pkv_last_error_message();
    const pkv_status s2 = pkv_gather_kv(&okt, &ovt, &view, &btt, &cut, &stt, reinterpret_cast<int64_t *>(counter.ptr()),
                                        reinterpret_cast<pkv_stream>(stream));
    const std::string m2 = pkv_last_error_message();
    cudaGraph_t graph = nullptr;
    const cudaError_t ce = cudaStreamEndCapture(stream, &graph);
    ASSERT_EQ(s1, PKV_SUCCESS) << "write under capture: " << m1;
    ASSERT_EQ(s2, PKV_SUCCESS) << "gather under capture: " << m2;
    ASSERT_EQ(ce, cudaSuccess) << cudaGetErrorString(ce);
    cudaGraphExec_t exec = nullptr;
    PKVT_CUDA_CHECK(cudaGraphInstantiate(&exec, graph, 0));

    int64_t oob = 0;
    for (int replay = 0; replay < 2; ++replay) {
        SCOPED_TRACE("replay " + std::to_string(replay));
        if (replay == 1) {  // new scales between replays, read by the kernels at run time
            for (auto &x : w.k_scale) x *= 0.37f;
            for (auto &x : w.v_scale) x *= 3.1f;
            ks.upload(w.k_scale.data(), 4);
            vs.upload(w.v_scale.data(), 4);
        }
        cache.upload(w.cache0);
        PKVT_CUDA_CHECK(cudaGraphLaunch(exec, stream));
        PKVT_CUDA_CHECK(cudaStreamSynchronize(stream));
        const std::vector<uint8_t> expected = oracle_write(c, w, &oob);
        EXPECT_TRUE(bytes_equal(expected, cache.download_all(), [&](int64_t o) { return w.g.describe(o); }, "cache"));
        // Gathered rows: float(q) * scale of what was written.
        std::vector<uint8_t> gk = ok.download_all(), gv = ov.download_all();
        int64_t bad = 0, row = 0;
        for (int64_t t = 0; t < c.T; ++t) {
            const int64_t sl = w.slots[size_t(t)];
            if (sl < 0 || sl >= c.NB * c.BS) continue;
            for (int side = 0; side < 2; ++side)
                for (int64_t h = 0; h < c.H; ++h)
                    for (int64_t d = 0; d < c.Dk; ++d) {
                        const float scale = (side ? w.v_scale : w.k_scale)[0];
                        const uint32_t q = load_bits(&expected[size_t(w.g.offset(side, sl / c.BS, sl % c.BS, h, d))], c.cache);
                        const uint32_t want = f32_bits(oracle_to_float(c.cache, q) * scale);
                        const uint32_t got = load_bits(&(side ? gv : gk)[size_t(((row * c.H + h) * c.Dk + d) * 4)], Fmt::F32);
                        if (got != want) ++bad;
                    }
            ++row;
        }
        EXPECT_EQ(bad, 0) << "gathered elements differing from float(q) * scale";
        int64_t n = -1;
        counter.download(&n, 8);
        EXPECT_EQ(n, (replay + 1) * (oob + 1)) << "counter must accumulate over replays (write + gather)";
    }
    cudaGraphExecDestroy(exec);
    cudaGraphDestroy(graph);
    cudaStreamDestroy(stream);
}
#endif

}  // namespace
}  // namespace pkvt
