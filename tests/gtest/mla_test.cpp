// pkv_write_mla for every format it writes (plain F32 / F16 / BF16, per-tensor FP8 E4M3 / E5M2,
// fp8_ds_mla 656-byte entries) and pkv_gather_kv of those caches, against an independent oracle
// (test_common.h: exact code tables, float32 division / multiplication on the host). CUDA
// results are compared byte for byte with the CPU backend.
//
// fp8_ds_mla rules pinned here (src/core/ds_mla.h): s_i = max(amax_i / 448, FLT_MIN) with
// true division; a tile holding a NaN has scale bits 0x7FC00000 and all codes 0x7F; an infinite
// amax gives scale inf and the codes of x / inf; codes = e4m3 sat_finite_rne(x / s_i); RoPE
// words copied verbatim. Gather: float(code) * s_i (NaN -> 0x7FFFFFFF) then RNE to the output.
#include <cfloat>
#include <set>

#include "test_common.h"

namespace pkvt {
namespace {

enum class Kind { Plain, Fp8, DsMla };
const char *kind_name(Kind k) { return k == Kind::Plain ? "plain" : k == Kind::Fp8 ? "fp8" : "dsmla"; }

constexpr uint32_t kScaleNan = 0x7FC00000u, kDecodeNan = 0x7FFFFFFFu, kFltMinBits = 0x00800000u;

// ============================================================================ geometry
struct MlaGeom {
    Kind kind = Kind::DsMla;
    Fmt cache = Fmt::E4M3;  // element of plain / fp8 caches
    bool rope_f16 = false;
    int64_t R = 512, P = 64, NB = 8, BS = 16;
    int64_t entry = 656, ss = 0, sb = 0, base = 0;  // bytes
    bool explicit_strides = false;
    size_t bytes = 0;

    int64_t entry_off(int64_t b, int64_t s) const { return base + b * sb + s * ss; }
    Fmt rope_fmt() const { return rope_f16 ? Fmt::F16 : Fmt::BF16; }
    std::string describe(int64_t off) const {
        const int64_t rel = off - base;
        if (rel < 0) return "before the cache";
        const int64_t b = rel / sb, s = (rel % sb) / ss, e = (rel % sb) % ss;
        if (b >= NB || (rel % sb) >= BS * ss || e >= entry) return "padding / unaddressed byte";
        std::ostringstream o;
        o << "block " << b << " slot " << s << " entry byte " << e;
        return o.str();
    }
};

MlaGeom make_mla_geom(Kind kind, Fmt cache, bool rope_f16, int64_t R, int64_t P, int64_t NB, int64_t BS,
                      int64_t slot_stride, int64_t block_pad, int64_t base) {
    MlaGeom g;
    g.kind = kind; g.cache = cache; g.rope_f16 = rope_f16; g.R = R; g.P = P; g.NB = NB; g.BS = BS;
    g.entry = kind == Kind::DsMla ? 656 : (R + P) * fmt_bytes(cache);
    g.explicit_strides = slot_stride != 0 || block_pad != 0;
    g.ss = slot_stride ? slot_stride : g.entry;
    g.sb = BS * g.ss + block_pad;
    g.base = base;
    g.bytes = size_t(round_up(base + NB * g.sb + 64, 256));
    return g;
}

pkv_cache_view make_mla_view(const MlaGeom &g, uint8_t *buf, pkv_device dev, const float *scale) {
    pkv_cache_view v = PKV_CACHE_VIEW_INIT;
    v.format = g.kind == Kind::DsMla ? PKV_CACHE_FORMAT_FP8_DS_MLA : fmt_cache_format(g.cache);
    v.flags = g.rope_f16 ? PKV_CACHE_VIEW_ROPE_F16 : 0u;
    v.device = dev;
    v.num_blocks = g.NB;
    v.block_size = g.BS;
    v.num_heads = 1;
    v.head_size_k = g.R + g.P;
    v.k_data = buf + g.base;
    if (g.explicit_strides) {
        v.k_stride_slot = g.ss;
        v.k_stride_block = g.sb;
    }
    v.k_scale = scale;
    return v;
}

// ============================================================================ inputs
struct Mat {  // a [rows, D] input in host memory (element strides)
    Fmt f = Fmt::BF16;
    int64_t rows = 0, D = 0, rs = 0, shift = 0;
    std::vector<uint8_t> bytes;
    int64_t off(int64_t t, int64_t d) const { return (shift + t * rs + d) * fmt_bytes(f); }
    uint32_t get(int64_t t, int64_t d) const { return load_bits(&bytes[size_t(off(t, d))], f); }
    void set(int64_t t, int64_t d, uint32_t b) { store_bits(&bytes[size_t(off(t, d))], f, b); }
};

// Rows [0, T) random non-zero values; every other element (rows past T, row padding) NaN.
Mat make_mat(Rng &r, Fmt f, int64_t T, int64_t T_pad, int64_t D, int64_t row_pad, int64_t shift) {
    Mat m;
    m.f = f; m.rows = T_pad; m.D = D; m.rs = D + row_pad; m.shift = shift;
    const int64_t n = shift + std::max<int64_t>(T_pad, 1) * m.rs + 1;
    m.bytes.resize(size_t(n * fmt_bytes(f)));
    for (int64_t i = 0; i < n; ++i) store_bits(&m.bytes[size_t(i * fmt_bytes(f))], f, nan_bits(f));
    for (int64_t t = 0; t < T; ++t)
        for (int64_t d = 0; d < D; ++d) m.set(t, d, random_value_bits(r, f));
    return m;
}

pkv_tensor mat_tensor(const Buf &b, const Mat &m, pkv_device dev) {
    return make_tensor(b.ptr() + m.shift * fmt_bytes(m.f), fmt_dtype(m.f), dev, {m.rows, m.D}, {m.rs, 1});
}

// ============================================================================ oracle: entries
// One fp8_ds_mla tile: codes and scale bits from float32 values.
void oracle_tile(const float *x, uint8_t *codes, uint32_t *scale_bits) {
    bool nan = false;
    float amax = 0.f;
    for (int i = 0; i < 128; ++i) {
        if (std::isnan(x[i])) nan = true;
        else amax = std::max(amax, std::fabs(x[i]));
    }
    if (nan) {
        *scale_bits = kScaleNan;
        for (int i = 0; i < 128; ++i) codes[i] = 0x7F;
        return;
    }
    volatile float q = amax / 448.0f;
    float s = q;
    if (s < FLT_MIN) s = FLT_MIN;
    *scale_bits = f32_bits(s);
    for (int i = 0; i < 128; ++i) {
        volatile float y = x[i] / s;
        codes[i] = uint8_t(oracle_encode(Fmt::E4M3, y));
    }
}

// The 656-byte entry of one token.
std::vector<uint8_t> oracle_ds_entry(const Mat &kv, const Mat &pe, int64_t t) {
    std::vector<uint8_t> e(656);
    for (int tile = 0; tile < 4; ++tile) {
        float x[128];
        for (int i = 0; i < 128; ++i) x[i] = oracle_to_float(kv.f, kv.get(t, tile * 128 + i));
        uint32_t sb;
        oracle_tile(x, &e[size_t(tile * 128)], &sb);
        std::memcpy(&e[size_t(512 + 4 * tile)], &sb, 4);
    }
    for (int i = 0; i < 64; ++i) store_bits(&e[size_t(528 + 2 * i)], Fmt::F16, pe.get(t, i));
    return e;
}

// A plain / fp8 entry element d of token t.
uint32_t oracle_plain_elem(const MlaGeom &g, const Mat &kv, const Mat &pe, int64_t t, int64_t d, float scale) {
    const uint32_t src = d < g.R ? kv.get(t, d) : pe.get(t, d - g.R);
    if (kv.f == g.cache) return src;
    volatile float x = oracle_to_float(kv.f, src);
    if (fmt_is_fp8(g.cache)) {
        volatile float y = x / scale;
        return oracle_encode(g.cache, y);
    }
    return oracle_encode(g.cache, x);
}

// ============================================================================ cases
struct MlaCase {
    int idx = 0;
    Backend be = Backend::CPU;
    Kind kind = Kind::DsMla;
    Fmt in = Fmt::BF16, cache = Fmt::E4M3;
    bool rope_f16 = false;
    int64_t R = 512, P = 64, T = 42, BS = 16, NB = 8;
    int64_t slot_stride = 0, block_pad = 0, base = 0;  // cache bytes; 0 stride = NHD default
    int64_t kv_row_pad = 0, pe_row_pad = 0, kv_shift = 0, pe_shift = 0, extra_rows = 3;  // elements
    bool slot64 = true;
    double pad_frac = 0.25, oob_frac = 0.0;
    bool count = true;
    bool null_scale = false;
    bool specials = false;  // ds_mla: NaN / inf / zero tiles in some tokens
    bool stream = false;
    int64_t out_row_pad = 0, out_shift = 0;  // gather output (elements)
    std::string name;
};

void PrintTo(const MlaCase &c, std::ostream *os) {
    *os << c.name << " {be=" << backend_name(c.be) << " kind=" << kind_name(c.kind) << " in=" << fmt_name(c.in)
        << " cache=" << fmt_name(c.cache) << " rope_f16=" << c.rope_f16 << " R=" << c.R << " P=" << c.P
        << " T=" << c.T << " BS=" << c.BS << " NB=" << c.NB << " ss=" << c.slot_stride << " bpad=" << c.block_pad
        << " base=" << c.base << " kv(pad,shift)=" << c.kv_row_pad << "," << c.kv_shift << " pe(pad,shift)="
        << c.pe_row_pad << "," << c.pe_shift << " slot64=" << c.slot64 << " pad=" << c.pad_frac
        << " oob=" << c.oob_frac << " count=" << c.count << " specials=" << c.specials << "}";
}

struct MlaData {
    MlaGeom g;
    std::vector<uint8_t> cache0;
    Mat kv, pe;
    std::vector<int64_t> slots;
    std::vector<uint8_t> slot_bytes;
    std::vector<float> scale;  // fp8: one value (empty: NULL)
    int64_t counter0 = 0;
};

MlaData make_data(const MlaCase &c) {
    Rng r(0x51A7ull + uint64_t(c.idx) * 1000003ull);
    MlaData w;
    w.g = make_mla_geom(c.kind, c.cache, c.rope_f16, c.R, c.P, c.NB, c.BS, c.slot_stride, c.block_pad, c.base);
    w.cache0 = random_bytes(r, w.g.bytes);
    const int64_t T_pad = c.T + c.extra_rows;
    w.kv = make_mat(r, c.in, c.T, T_pad, c.R, c.kv_row_pad, c.kv_shift);
    w.pe = make_mat(r, c.in, c.T, T_pad, c.P, c.pe_row_pad, c.pe_shift);
    if (c.specials) {
        const uint32_t inf = c.in == Fmt::F16 ? 0x7C00u : 0x7F80u;
        for (int64_t t = 0; t < c.T; ++t) {
            if (t % 5 == 1) w.kv.set(t, 256 + r.range(0, 127), nan_bits(c.in) | uint32_t(r.range(0, 1)) << 15);
            if (t % 7 == 2) w.kv.set(t, 128 + r.range(0, 127), inf | uint32_t(r.range(0, 1)) << 15);
            if (t % 6 == 3)
                for (int i = 0; i < 128; ++i) w.kv.set(t, 384 + i, r.chance(0.5) ? 0x8000u : 0u);
            if (t % 4 == 0) w.pe.set(t, r.range(0, 63), nan_bits(c.in) + 1);  // a NaN payload, verbatim
        }
    }
    if (c.kind == Kind::Fp8 && !c.null_scale) {
        float amax = 0.f;
        for (int64_t t = 0; t < c.T; ++t) {
            for (int64_t d = 0; d < c.R; ++d) amax = std::max(amax, std::fabs(oracle_to_float(c.in, w.kv.get(t, d))));
            for (int64_t d = 0; d < c.P; ++d) amax = std::max(amax, std::fabs(oracle_to_float(c.in, w.pe.get(t, d))));
        }
        const double C = c.cache == Fmt::E4M3 ? 16.0 + 700.0 * r.uni() : 500.0 + 90000.0 * r.uni();
        w.scale.push_back(float(amax / C));
    }
    const int64_t S = c.NB * c.BS;
    std::vector<int64_t> perm(static_cast<size_t>(S));
    for (int64_t i = 0; i < S; ++i) perm[size_t(i)] = i;
    r.shuffle(perm);
    size_t front = 0;
    for (int64_t t = 0; t < c.T; ++t) {
        int64_t s;
        if (r.chance(c.pad_frac)) s = r.chance(0.7) ? -1 : (c.slot64 ? -5000000000ll : -7);
        else if (r.chance(c.oob_frac)) s = r.chance(0.5) ? S + r.range(0, 3 * c.BS) : (c.slot64 ? (int64_t(1) << 40) : INT32_MAX);
        else if (front < perm.size()) s = perm[front++];
        else s = -1;
        w.slots.push_back(s);
    }
    const int esz = c.slot64 ? 8 : 4;
    w.slot_bytes.resize(size_t((c.T + 2) * esz));
    for (int64_t t = 0; t < c.T + 2; ++t) {
        // entries past T point at unused slots: a library that reads them writes a trap row
        const int64_t v = t < c.T ? w.slots[size_t(t)] : (front < perm.size() ? perm[front++] : 0);
        if (c.slot64) std::memcpy(&w.slot_bytes[size_t(t * 8)], &v, 8);
        else { const int32_t v32 = int32_t(v); std::memcpy(&w.slot_bytes[size_t(t * 4)], &v32, 4); }
    }
    w.counter0 = 300 + c.idx;
    return w;
}

std::vector<uint8_t> oracle_write(const MlaCase &c, const MlaData &w, int64_t *oob) {
    std::vector<uint8_t> img = w.cache0;
    *oob = 0;
    const float scale = w.scale.empty() ? 1.0f : w.scale[0];
    for (int64_t t = 0; t < c.T; ++t) {
        const int64_t s = w.slots[size_t(t)];
        if (s < 0) continue;
        if (s >= c.NB * c.BS) { ++*oob; continue; }
        const int64_t off = w.g.entry_off(s / c.BS, s % c.BS);
        if (c.kind == Kind::DsMla) {
            const std::vector<uint8_t> e = oracle_ds_entry(w.kv, w.pe, t);
            std::memcpy(&img[size_t(off)], e.data(), e.size());
        } else {
            for (int64_t d = 0; d < c.R + c.P; ++d)
                store_bits(&img[size_t(off + d * fmt_bytes(c.cache))], c.cache, oracle_plain_elem(w.g, w.kv, w.pe, t, d, scale));
        }
    }
    return img;
}

// ============================================================================ running writes
WriteOutcome run_write_mla(Backend be, const MlaCase &c, const MlaData &w) {
    const pkv_device dev = backend_device(be);
    Buf cache = to_device(be, w.cache0);
    Buf kv = to_device(be, w.kv.bytes), pe = to_device(be, w.pe.bytes);
    Buf slots = to_device(be, w.slot_bytes), scale = to_device(be, w.scale);
    Buf counter = to_device(be, std::vector<int64_t>{w.counter0});
    pkv_cache_view view = make_mla_view(w.g, cache.ptr(), dev,
                                        w.scale.empty() ? nullptr : reinterpret_cast<const float *>(scale.ptr()));
    pkv_tensor kt = mat_tensor(kv, w.kv, dev), pt = mat_tensor(pe, w.pe, dev);
    pkv_tensor st = make_tensor(slots.ptr(), c.slot64 ? PKV_DTYPE_INT64 : PKV_DTYPE_INT32, dev, {c.T}, {1});
    TestStream stream(be, c.stream);
    const pkv_status s = pkv_write_mla(&view, &kt, &pt, &st,
                                       c.count ? reinterpret_cast<int64_t *>(counter.ptr()) : nullptr, stream.get());
    return write_outcome(s, be, stream, cache, counter);
}

// The element-wise pkv_write_kv of the concatenated rows [kv_c | k_pe] on a [T_pad, 1, R+P] key.
WriteOutcome run_write_kv_concat(Backend be, const MlaCase &c, const MlaData &w) {
    const pkv_device dev = backend_device(be);
    const int64_t D = c.R + c.P, T_pad = w.kv.rows;
    Mat cat;
    cat.f = c.in; cat.rows = T_pad; cat.D = D; cat.rs = D;
    cat.bytes.resize(size_t(T_pad * D * fmt_bytes(c.in)));
    for (int64_t t = 0; t < T_pad; ++t)
        for (int64_t d = 0; d < D; ++d) cat.set(t, d, d < c.R ? w.kv.get(t, d) : w.pe.get(t, d - c.R));
    Buf cache = to_device(be, w.cache0), key = to_device(be, cat.bytes);
    Buf slots = to_device(be, w.slot_bytes), scale = to_device(be, w.scale);
    Buf counter = to_device(be, std::vector<int64_t>{w.counter0});
    pkv_cache_view view = make_mla_view(w.g, cache.ptr(), dev,
                                        w.scale.empty() ? nullptr : reinterpret_cast<const float *>(scale.ptr()));
    pkv_tensor kt = make_tensor(key.ptr(), fmt_dtype(c.in), dev, {T_pad, 1, D}, {D, D, 1});
    pkv_tensor st = make_tensor(slots.ptr(), c.slot64 ? PKV_DTYPE_INT64 : PKV_DTYPE_INT32, dev, {c.T}, {1});
    const pkv_status s = pkv_write_kv(&view, &kt, nullptr, &st,
                                      c.count ? reinterpret_cast<int64_t *>(counter.ptr()) : nullptr, nullptr);
    return write_outcome(s, be, TestStream(be, false), cache, counter);
}

// ============================================================================ gathers
struct GatherSetup {
    int64_t B = 0, M = 0, bt_stride = 0, N = 0;
    std::vector<int32_t> table, cu, starts;
};

// Three requests over a random block table: one plain, one with an unaligned seq_start, one
// whose last block id is invalid and whose rows run past max_blocks (out-of-range rows).
GatherSetup make_gather_setup(Rng &r, int64_t NB, int64_t BS, bool identity) {
    GatherSetup s;
    if (identity) {  // one request reading every slot in order
        s.B = 1; s.M = NB; s.bt_stride = NB;
        for (int64_t b = 0; b < NB; ++b) s.table.push_back(int32_t(b));
        s.cu = {0, int32_t(NB * BS)};
        s.starts = {0};
        s.N = NB * BS;
        return s;
    }
    s.B = 3; s.M = std::min<int64_t>(NB, 6); s.bt_stride = s.M + 2;
    s.table.resize(size_t(s.B * s.bt_stride));
    for (auto &x : s.table) x = int32_t(r.range(0, NB - 1));
    s.table[size_t(2 * s.bt_stride + s.M - 1)] = r.chance(0.5) ? -1 : int32_t(NB + 2);
    const int64_t cap = s.M * BS;
    s.starts = {0, int32_t(r.range(1, BS - 1)), int32_t((s.M - 2) * BS + 3)};
    const int64_t lens[3] = {r.range(1, cap), r.range(1, cap - s.starts[1]), 2 * BS};
    s.cu = {0};
    for (int64_t b = 0; b < s.B; ++b) s.cu.push_back(int32_t(s.cu.back() + lens[b]));
    s.N = s.cu.back() + 5;
    return s;
}

struct GatherOut {
    pkv_status status = PKV_SUCCESS;
    std::string message;
    std::vector<uint8_t> out;
    int64_t counter = 0;
};

GatherOut run_gather(Backend be, const MlaGeom &g, const std::vector<uint8_t> &cache_img, const std::vector<float> &scale,
                     const GatherSetup &s, Fmt out, const Mat &o0, bool count) {
    const pkv_device dev = backend_device(be);
    Buf cache = to_device(be, cache_img), sc = to_device(be, scale);
    Buf ob = to_device(be, o0.bytes), table = to_device(be, s.table), cu = to_device(be, s.cu),
        st = to_device(be, s.starts);
    Buf counter = to_device(be, std::vector<int64_t>{11});
    pkv_cache_view view = make_mla_view(g, cache.ptr(), dev, scale.empty() ? nullptr : reinterpret_cast<const float *>(sc.ptr()));
    pkv_tensor ot = make_tensor(ob.ptr() + o0.shift * fmt_bytes(out), fmt_dtype(out), dev, {s.N, 1, g.R + g.P},
                                {o0.rs, o0.rs, 1});
    pkv_tensor bt = make_tensor(table.ptr(), PKV_DTYPE_INT32, dev, {s.B, s.M}, {s.bt_stride, 1});
    pkv_tensor cut = make_tensor(cu.ptr(), PKV_DTYPE_INT32, dev, {s.B + 1}, {1});
    pkv_tensor stt = make_tensor(st.ptr(), PKV_DTYPE_INT32, dev, {s.B}, {1});
    GatherOut o;
    o.status = pkv_gather_kv(&ot, nullptr, &view, &bt, &cut, &stt, count ? reinterpret_cast<int64_t *>(counter.ptr()) : nullptr,
                             nullptr);
    o.message = pkv_last_error_message();
    device_sync(be);
    o.out = ob.download_all();
    counter.download(&o.counter, 8);
    o.counter -= 11;
    return o;
}

// Expected output image of a gather from `img`; NaN elements listed in `nan_offs` (their bits
// are compared for NaN-ness only).
std::vector<uint8_t> oracle_gather(const MlaGeom &g, const std::vector<uint8_t> &img, const std::vector<float> &scale,
                                   const GatherSetup &s, const Mat &o0, std::vector<int64_t> &nan_offs, int64_t *oob) {
    std::vector<uint8_t> exp = o0.bytes;
    const Fmt out = o0.f;
    *oob = 0;
    const int64_t D = g.R + g.P;
    for (int64_t row = 0; row < s.cu[size_t(s.B)]; ++row) {
        int64_t b = 0;
        while (s.cu[size_t(b + 1)] <= row) ++b;
        const int64_t pos = row - s.cu[size_t(b)] + s.starts[size_t(b)];
        const int64_t idx = pos / g.BS;
        if (idx >= s.M) { ++*oob; continue; }
        const int64_t id = s.table[size_t(b * s.bt_stride + idx)];
        if (id < 0 || id >= g.NB) { ++*oob; continue; }
        const uint8_t *e = &img[size_t(g.entry_off(id, pos % g.BS))];
        for (int64_t d = 0; d < D; ++d) {
            uint32_t bits;
            bool nan = false;
            if (g.kind == Kind::DsMla && d < 512) {
                float sc;
                std::memcpy(&sc, e + 512 + 4 * (d / 128), 4);
                volatile float v = oracle_to_float(Fmt::E4M3, e[d]) * sc;
                nan = std::isnan(v);
                bits = nan ? (out == Fmt::F32 ? kDecodeNan : nan_bits(out)) : oracle_encode(out, v);
            } else {
                const Fmt sf = g.kind == Kind::DsMla ? g.rope_fmt() : g.cache;
                const int64_t at = g.kind == Kind::DsMla ? 528 + 2 * (d - 512) : d * fmt_bytes(g.cache);
                const uint32_t src = load_bits(e + at, sf);
                if (sf == out) {
                    bits = src;
                } else {
                    volatile float v = oracle_to_float(sf, src);
                    if (fmt_is_fp8(sf)) v = v * (scale.empty() ? 1.0f : scale[0]);
                    nan = std::isnan(v);
                    bits = oracle_encode(out, v);
                }
            }
            const int64_t off = o0.off(row, d);
            if (nan) nan_offs.push_back(off);
            store_bits(&exp[size_t(off)], out, bits);
        }
    }
    return exp;
}

::testing::AssertionResult gather_matches(const std::vector<uint8_t> &expected_in, const GatherOut &got, Fmt out,
                                          const std::vector<int64_t> &nan_offs, const std::string &what) {
    std::vector<uint8_t> expected = expected_in;
    for (int64_t off : nan_offs) {
        const uint32_t b = load_bits(&got.out[size_t(off)], out);
        if (!oracle_is_nan(out, b))
            return ::testing::AssertionFailure() << what << ": byte " << off << " should hold a NaN, got 0x" << std::hex << b;
        store_bits(&expected[size_t(off)], out, b);
    }
    return bytes_equal(expected, got.out, nullptr, what);
}

class Mla : public ::testing::TestWithParam<MlaCase> {};

TEST_P(Mla, WriteAndGatherMatchOracle) {
    const MlaCase &c = GetParam();
    PKVT_SKIP_IF_NO_BACKEND(c.be);
    const MlaData w = make_data(c);
    int64_t oob = 0;
    const std::vector<uint8_t> expected = oracle_write(c, w, &oob);
    const WriteOutcome r = run_write_mla(c.be, c, w);
    ASSERT_EQ(r.status, PKV_SUCCESS) << status_str(r.status) << ": " << r.message;
    auto describe = [&](int64_t off) { return w.g.describe(off); };
    EXPECT_TRUE(bytes_equal(expected, r.cache, describe, "cache vs oracle"));
    EXPECT_EQ(r.counter, w.counter0 + (c.count ? oob : 0)) << oob << " out-of-range slots";
    if (c.be == Backend::CUDA) {
        const WriteOutcome cpu = run_write_mla(Backend::CPU, c, w);
        ASSERT_EQ(cpu.status, PKV_SUCCESS) << cpu.message;
        EXPECT_TRUE(bytes_equal(cpu.cache, r.cache, describe, "CUDA cache vs CPU cache"));
        EXPECT_EQ(cpu.counter, r.counter);
    }
    if (c.kind != Kind::DsMla) {  // the same bytes as the element-wise write of [kv_c | k_pe]
        const WriteOutcome kv = run_write_kv_concat(c.be, c, w);
        ASSERT_EQ(kv.status, PKV_SUCCESS) << kv.message;
        EXPECT_TRUE(bytes_equal(kv.cache, r.cache, describe, "pkv_write_mla vs pkv_write_kv of the concatenated rows"));
        EXPECT_EQ(kv.counter, r.counter);
    }

    // Gathers of the written cache (its unwritten entries are random bytes: any code, scale or
    // RoPE word) to every output dtype, through a random block table with seq_starts.
    Rng rg(0x6A7Eull + uint64_t(c.idx));
    for (Fmt out : {Fmt::F32, Fmt::BF16, Fmt::F16}) {
        for (bool identity : {false, true}) {
            const GatherSetup s = make_gather_setup(rg, c.NB, c.BS, identity);
            Mat o0;
            o0.f = out; o0.rows = s.N; o0.D = c.R + c.P; o0.rs = o0.D + c.out_row_pad; o0.shift = c.out_shift;
            o0.bytes = random_bytes(rg, size_t((o0.shift + s.N * o0.rs + 2) * fmt_bytes(out)));
            std::vector<int64_t> nan_offs;
            int64_t goob = 0;
            const std::vector<uint8_t> gexp = oracle_gather(w.g, r.cache, w.scale, s, o0, nan_offs, &goob);
            const GatherOut go = run_gather(c.be, w.g, r.cache, w.scale, s, out, o0, c.count);
            const std::string what = std::string("gather to ") + fmt_name(out) + (identity ? " (identity)" : "");
            ASSERT_EQ(go.status, PKV_SUCCESS) << what << ": " << go.message;
            EXPECT_TRUE(gather_matches(gexp, go, out, nan_offs, what + " vs oracle"));
            EXPECT_EQ(go.counter, c.count ? goob : 0) << what;
            if (c.be == Backend::CUDA) {
                const GatherOut cpu = run_gather(Backend::CPU, w.g, r.cache, w.scale, s, out, o0, c.count);
                EXPECT_TRUE(bytes_equal(cpu.out, go.out, nullptr, what + ": CUDA vs CPU"));
                EXPECT_EQ(cpu.counter, go.counter);
            }
            // Round trip of the written tokens (identity table: output row = slot).
            if (!identity || out != Fmt::F32 || c.kind != Kind::DsMla) continue;
            int checked = 0;
            for (int64_t t = 0; t < c.T; ++t) {
                const int64_t slot = w.slots[size_t(t)];
                if (slot < 0 || slot >= c.NB * c.BS) continue;
                for (int tile = 0; tile < 4; ++tile) {
                    float amax = 0.f;
                    bool special = false;
                    for (int i = 0; i < 128; ++i) {
                        const float x = oracle_to_float(c.in, w.kv.get(t, tile * 128 + i));
                        if (!std::isfinite(x)) special = true;
                        amax = std::max(amax, std::fabs(x));
                    }
                    if (special) continue;
                    const float sc = std::max(amax / 448.0f, FLT_MIN);
                    for (int i = 0; i < 128; ++i) {
                        const int d = tile * 128 + i;
                        const float x = oracle_to_float(c.in, w.kv.get(t, d));
                        float y;
                        std::memcpy(&y, &go.out[size_t(o0.off(slot, d))], 4);
                        ASSERT_LE(std::fabs(y - x), std::fabs(x) / 16.0f + sc * 0x1p-9f * 1.0001f)
                            << "token " << t << " dim " << d << " x " << x << " read " << y;
                    }
                }
                for (int64_t i = 0; i < 64; ++i) {
                    float y;
                    std::memcpy(&y, &go.out[size_t(o0.off(slot, 512 + i))], 4);
                    const float x = oracle_to_float(c.in, w.pe.get(t, i));
                    if (std::isnan(x)) EXPECT_TRUE(std::isnan(y));
                    else EXPECT_EQ(f32_bits(y), f32_bits(x)) << "RoPE " << i << " of token " << t;
                }
                ++checked;
            }
            EXPECT_GT(checked, 0);
        }
    }
}

std::vector<MlaCase> mla_cases(Backend be) {
    std::vector<MlaCase> v;
    auto fin = [&](MlaCase c) {
        c.idx = int(v.size());
        c.be = be;
        std::ostringstream ss;
        ss << kind_name(c.kind) << "_" << c.idx << "_" << fmt_name(c.in);
        if (c.kind == Kind::DsMla) ss << (c.rope_f16 ? "_ropef16" : "_ropebf16");
        else ss << "_to_" << fmt_name(c.cache);
        ss << "_r" << c.R << "_bs" << c.BS << "_nb" << c.NB << "_t" << c.T;
        if (c.slot_stride) ss << "_ss" << c.slot_stride;
        c.name = ss.str();
        v.push_back(c);
    };
    // fp8_ds_mla: BS 16 / 64, NB 8..64, bf16 / f16 RoPE, NHD default (656) and padded strides,
    // unaligned inputs and cache bases, padding, out-of-range slots, specials.
    int k = 0;
    for (int64_t BS : {16, 64})
        for (int64_t NB : {8, 64})
            for (bool f16 : {false, true}) {
                MlaCase c;
                const int i = k++;
                c.kind = Kind::DsMla;
                c.rope_f16 = f16;
                c.in = f16 ? Fmt::F16 : Fmt::BF16;
                c.BS = BS; c.NB = NB;
                c.slot_stride = (i % 3 == 1) ? 704 : (i % 3 == 2) ? 660 : 0;
                c.block_pad = (i % 4 == 2) ? 36 : 0;
                c.base = (i % 4 == 3) ? 4 : (i % 4 == 1) ? 8 : 0;
                c.kv_row_pad = (i % 2) ? 8 : 0;
                c.kv_shift = (i % 5 == 2) ? 1 : (i % 5 == 4) ? 2 : 0;
                c.pe_row_pad = (i % 3 == 0) ? 3 : 0;
                c.pe_shift = (i % 4 == 1) ? 1 : 0;
                c.slot64 = (i % 2) == 0;
                c.oob_frac = (i % 3 == 1) ? 0.1 : 0.0;
                c.count = (i % 5) != 4;
                c.specials = (i % 2) == 1 || i == 0;
                c.stream = (i % 2) == 0;
                c.out_row_pad = (i % 3 == 2) ? 5 : 0;
                c.out_shift = (i % 4 == 3) ? 1 : 0;
                fin(c);
            }
    {   // many tokens, BS 64 x NB 64 slots
        MlaCase c;
        c.kind = Kind::DsMla; c.T = 3000; c.BS = 64; c.NB = 64; c.pad_frac = 0.1; c.oob_frac = 0.02;
        fin(c);
    }
    // Plain and per-tensor FP8 caches: every input dtype x cache format, R 256 / 512.
    const Fmt ins[] = {Fmt::F32, Fmt::F16, Fmt::BF16};
    const Fmt caches[] = {Fmt::F32, Fmt::F16, Fmt::BF16, Fmt::E4M3, Fmt::E5M2};
    k = 0;
    for (Fmt in : ins)
        for (Fmt cf : caches) {
            MlaCase c;
            const int i = k++;
            c.kind = fmt_is_fp8(cf) ? Kind::Fp8 : Kind::Plain;
            c.in = in; c.cache = cf;
            c.R = (i % 2) ? 256 : 512;
            c.BS = (i % 3 == 0) ? 64 : 16;
            c.NB = 8;
            c.slot_stride = (i % 4 == 1) ? (c.R + c.P) * fmt_bytes(cf) + 16 : 0;
            c.base = (i % 5 == 2) ? fmt_bytes(cf) : 0;
            c.kv_row_pad = (i % 3 == 1) ? 5 : 0;
            c.kv_shift = (i % 4 == 2) ? 1 : 0;
            c.pe_shift = (i % 3 == 2) ? 1 : 0;
            c.slot64 = (i % 2) == 1;
            c.oob_frac = (i % 3 == 2) ? 0.1 : 0.0;
            c.null_scale = (i % 7 == 3);
            c.out_row_pad = (i % 2) ? 3 : 0;
            fin(c);
        }
    return v;
}

std::string case_name(const ::testing::TestParamInfo<MlaCase> &info) { return info.param.name; }

INSTANTIATE_TEST_SUITE_P(Cpu, Mla, ::testing::ValuesIn(mla_cases(Backend::CPU)), case_name);
INSTANTIATE_TEST_SUITE_P(Cuda, Mla, ::testing::ValuesIn(mla_cases(Backend::CUDA)), case_name);

// ============================================================================ hand-computed entries
std::vector<Backend> usable_backends() {
    std::vector<Backend> v{Backend::CPU};
    if (cuda_usable()) v.push_back(Backend::CUDA);
    return v;
}

uint16_t bf16(float f) { return uint16_t(oracle_encode(Fmt::BF16, f)); }
uint32_t u32_at(const std::vector<uint8_t> &v, size_t off) { uint32_t x; std::memcpy(&x, &v[off], 4); return x; }

// A bf16 value v in [1, 1024) for which v / (v / 448) > 448 in float32 (the quotient of the
// tile maximum rounds above the e4m3 maximum: the code must saturate to 0x7E, not become NaN).
uint16_t saturating_bf16() {
    for (uint32_t b = 0x3F80; b < 0x4480; ++b) {
        const float v = f32_from_bits(b << 16);
        volatile float s = v / 448.0f;
        volatile float q = v / s;
        if (q > 448.0f) return uint16_t(b);
    }
    return 0;
}

TEST(MlaMisc, HandComputedDsMlaEntries) {
    const uint16_t sat = saturating_bf16();
    ASSERT_NE(sat, 0) << "no saturating bf16 value found";
    const float sat_v = f32_from_bits(uint32_t(sat) << 16);
    // Token 0.
    std::vector<uint16_t> kv0(512, 0), pe0(64), kv1(512, 0), pe1(64, 0x3F80);
    kv0[0] = bf16(896.f); kv0[1] = bf16(1.f); kv0[2] = bf16(-2.f); kv0[3] = bf16(3.f); kv0[4] = 0x8000;  // tile 0: s = 2
    kv0[128 + 7] = 0x8000;                                  // tile 1: all zero (one -0): s = FLT_MIN
    kv0[256] = 0x7FC1; kv0[257] = bf16(1.f);                // tile 2: NaN
    kv0[384] = bf16(3.f); kv0[385] = bf16(1.5f); kv0[386] = bf16(-3.f);  // tile 3: s = 3 / 448
    for (int i = 0; i < 64; ++i) pe0[size_t(i)] = uint16_t(0x1234 + 977 * i);
    pe0[0] = 0x3F80; pe0[1] = 0x8000; pe0[2] = 0x7FA1; pe0[3] = 0xFF80;
    // Token 1: an infinite tile and a saturating tile.
    kv1[0] = 0x7F80; kv1[1] = bf16(5.f); kv1[2] = 0xFF80; kv1[3] = bf16(-5.f);
    kv1[128] = sat; kv1[129] = uint16_t(sat | 0x8000); kv1[130] = bf16(1.f);

    const int64_t NB = 2, BS = 16;
    const MlaGeom g = make_mla_geom(Kind::DsMla, Fmt::E4M3, false, 512, 64, NB, BS, 0, 0, 0);
    for (Backend be : usable_backends()) {
        SCOPED_TRACE(backend_name(be));
        const pkv_device dev = backend_device(be);
        Rng r(9);
        const std::vector<uint8_t> cache0 = random_bytes(r, g.bytes);
        Buf cache = to_device(be, cache0);
        std::vector<uint16_t> kv(kv0), pe(pe0);
        kv.insert(kv.end(), 512, 0x7FC0);  // token 1 is padding: NaN rows
        pe.insert(pe.end(), 64, 0x7FC0);
        kv.insert(kv.end(), kv1.begin(), kv1.end());
        pe.insert(pe.end(), pe1.begin(), pe1.end());
        Buf kvb = to_device(be, kv), peb = to_device(be, pe);
        Buf slots = to_device(be, std::vector<int64_t>{5, -1, 17});
        Buf counter = to_device(be, std::vector<int64_t>{0});
        pkv_cache_view view = make_mla_view(g, cache.ptr(), dev, nullptr);
        pkv_tensor kt = make_tensor(kvb.ptr(), PKV_DTYPE_BF16, dev, {3, 512}, {512, 1});
        pkv_tensor pt = make_tensor(peb.ptr(), PKV_DTYPE_BF16, dev, {3, 64}, {64, 1});
        pkv_tensor st = make_tensor(slots.ptr(), PKV_DTYPE_INT64, dev, {3}, {1});
        ASSERT_EQ(pkv_write_mla(&view, &kt, &pt, &st, reinterpret_cast<int64_t *>(counter.ptr()), nullptr), PKV_SUCCESS)
            << pkv_last_error_message();
        device_sync(be);
        const std::vector<uint8_t> img = cache.download_all();

        const size_t e0 = size_t(g.entry_off(0, 5)), e1 = size_t(g.entry_off(1, 1));
        // Every byte outside the two entries is untouched.
        std::vector<uint8_t> masked = img;
        std::memcpy(&masked[e0], &cache0[e0], 656);
        std::memcpy(&masked[e1], &cache0[e1], 656);
        EXPECT_TRUE(bytes_equal(cache0, masked, nullptr, "bytes outside the written entries"));

        // Token 0, tile 0: amax 896, s = 2.0.
        EXPECT_EQ(u32_at(img, e0 + 512), 0x40000000u);
        EXPECT_EQ(img[e0 + 0], 0x7E);  // 896 / 2 = 448
        EXPECT_EQ(img[e0 + 1], 0x30);  // 0.5
        EXPECT_EQ(img[e0 + 2], 0xB8);  // -1
        EXPECT_EQ(img[e0 + 3], 0x3C);  // 1.5
        EXPECT_EQ(img[e0 + 4], 0x80);  // -0
        for (int i = 5; i < 128; ++i) EXPECT_EQ(img[e0 + size_t(i)], 0x00) << i;
        // Tile 1: all zero -> FLT_MIN; -0 keeps its sign.
        EXPECT_EQ(u32_at(img, e0 + 516), kFltMinBits);
        for (int i = 128; i < 256; ++i) EXPECT_EQ(img[e0 + size_t(i)], i == 135 ? 0x80 : 0x00) << i;
        // Tile 2: NaN -> canonical NaN scale, every code NaN.
        EXPECT_EQ(u32_at(img, e0 + 520), kScaleNan);
        for (int i = 256; i < 384; ++i) EXPECT_EQ(img[e0 + size_t(i)], 0x7F) << i;
        // Tile 3: s = 3 / 448 (float32 division); 3 -> 448, 1.5 -> 224, -3 -> -448.
        const float s3 = 3.0f / 448.0f;
        EXPECT_EQ(u32_at(img, e0 + 524), f32_bits(s3));
        EXPECT_EQ(img[e0 + 384], 0x7E);
        EXPECT_EQ(img[e0 + 385], 0x76);
        EXPECT_EQ(img[e0 + 386], 0xFE);
        // RoPE: verbatim (NaN payload, -0, -inf included).
        EXPECT_EQ(std::memcmp(&img[e0 + 528], pe0.data(), 128), 0);

        // Token 1, tile 0: inf -> scale inf; finite / inf = +-0, inf / inf = NaN.
        EXPECT_EQ(u32_at(img, e1 + 512), 0x7F800000u);
        EXPECT_EQ(img[e1 + 0], 0x7F);
        EXPECT_EQ(img[e1 + 1], 0x00);
        EXPECT_EQ(img[e1 + 2], 0x7F);
        EXPECT_EQ(img[e1 + 3], 0x80);
        // Tile 1: the maximum's quotient exceeds 448 and saturates.
        volatile float s1 = sat_v / 448.0f;
        EXPECT_EQ(u32_at(img, e1 + 516), f32_bits(s1));
        EXPECT_EQ(img[e1 + 128], 0x7E);
        EXPECT_EQ(img[e1 + 129], 0xFE);
        EXPECT_EQ(img[e1 + 130], uint8_t(oracle_encode(Fmt::E4M3, 1.0f / s1)));
        // Tiles 2 and 3 of token 1: all zero.
        EXPECT_EQ(u32_at(img, e1 + 520), kFltMinBits);
        EXPECT_EQ(u32_at(img, e1 + 524), kFltMinBits);
        int64_t cnt = -1;
        counter.download(&cnt, 8);
        EXPECT_EQ(cnt, 0);

        // Gather token 0 back (one request: block table [0, 1], seq_start 5, one row) to f32 and f16.
        Buf table = to_device(be, std::vector<int32_t>{0, 1});
        Buf cu = to_device(be, std::vector<int32_t>{0, 1});
        Buf starts = to_device(be, std::vector<int32_t>{5});
        Buf out32(be, 576 * 4), out16(be, 576 * 2);
        pkv_tensor bt = make_tensor(table.ptr(), PKV_DTYPE_INT32, dev, {1, 2}, {2, 1});
        pkv_tensor cut = make_tensor(cu.ptr(), PKV_DTYPE_INT32, dev, {2}, {1});
        pkv_tensor stt = make_tensor(starts.ptr(), PKV_DTYPE_INT32, dev, {1}, {1});
        pkv_tensor o32 = make_tensor(out32.ptr(), PKV_DTYPE_F32, dev, {1, 1, 576}, {576, 576, 1});
        pkv_tensor o16 = make_tensor(out16.ptr(), PKV_DTYPE_F16, dev, {1, 1, 576}, {576, 576, 1});
        ASSERT_EQ(pkv_gather_kv(&o32, nullptr, &view, &bt, &cut, &stt, nullptr, nullptr), PKV_SUCCESS)
            << pkv_last_error_message();
        ASSERT_EQ(pkv_gather_kv(&o16, nullptr, &view, &bt, &cut, &stt, nullptr, nullptr), PKV_SUCCESS)
            << pkv_last_error_message();
        device_sync(be);
        std::vector<float> f(576);
        std::vector<uint16_t> h(576);
        out32.download(f.data(), 576 * 4);
        out16.download(h.data(), 576 * 2);
        EXPECT_EQ(f[0], 896.f); EXPECT_EQ(f[1], 1.f); EXPECT_EQ(f[2], -2.f); EXPECT_EQ(f[3], 3.f);
        EXPECT_EQ(f32_bits(f[4]), 0x80000000u);
        EXPECT_EQ(f32_bits(f[135]), 0x80000000u);
        for (int i = 256; i < 384; ++i) EXPECT_EQ(f32_bits(f[size_t(i)]), kDecodeNan) << i;
        EXPECT_EQ(f[384], 448.f * s3);
        EXPECT_EQ(f[385], 224.f * s3);
        EXPECT_EQ(f32_bits(f[512]), 0x3F800000u);
        EXPECT_EQ(f32_bits(f[513]), 0x80000000u);
        EXPECT_EQ(f32_bits(f[514]), 0x7FA10000u);  // bf16 -> f32 keeps the payload
        EXPECT_EQ(f32_bits(f[515]), 0xFF800000u);
        EXPECT_EQ(h[0], 0x6300u);                   // 896 in f16
        EXPECT_EQ(h[256], 0x7FFFu);                 // NaN latent -> canonical f16 NaN
        EXPECT_EQ(h[512], 0x3C00u);
        EXPECT_EQ(h[514], 0x7FFFu);                 // NaN RoPE -> canonical f16 NaN
        EXPECT_EQ(h[515], 0xFC00u);
    }
}

// Enqueue-only and graph-capturable: an fp8_ds_mla write and a gather captured into one CUDA
// graph (global capture mode) and replayed twice; the bytes equal the CPU backend's and the
// out-of-range counter accumulates over replays.
TEST(MlaMisc, CudaGraphCaptureAndReplay) {
#if PKVT_HAVE_CUDA
    if (!cuda_usable()) GTEST_SKIP() << "no CUDA device";
    const Backend be = Backend::CUDA;
    const pkv_device dev = backend_device(be);
    MlaCase c;
    c.idx = 777; c.be = be; c.kind = Kind::DsMla; c.NB = 8; c.BS = 16; c.oob_frac = 0.1; c.specials = true;
    const MlaData w = make_data(c);
    int64_t oob = 0;
    const std::vector<uint8_t> expected = oracle_write(c, w, &oob);
    Buf cache = to_device(be, w.cache0), kv = to_device(be, w.kv.bytes), pe = to_device(be, w.pe.bytes);
    Buf slots = to_device(be, w.slot_bytes), counter = to_device(be, std::vector<int64_t>{0});
    pkv_cache_view view = make_mla_view(w.g, cache.ptr(), dev, nullptr);
    pkv_tensor kt = mat_tensor(kv, w.kv, dev), pt = mat_tensor(pe, w.pe, dev);
    pkv_tensor st = make_tensor(slots.ptr(), PKV_DTYPE_INT64, dev, {c.T}, {1});
    Rng rg(4242);
    const GatherSetup gs = make_gather_setup(rg, c.NB, c.BS, false);
    Mat o0;
    o0.f = Fmt::BF16; o0.rows = gs.N; o0.D = 576; o0.rs = 576;
    o0.bytes = random_bytes(rg, size_t((gs.N * 576 + 2) * 2));
    Buf ob = to_device(be, o0.bytes), tb = to_device(be, gs.table), cb = to_device(be, gs.cu), sb = to_device(be, gs.starts);
    pkv_tensor ot = make_tensor(ob.ptr(), PKV_DTYPE_BF16, dev, {gs.N, 1, 576}, {576, 576, 1});
    pkv_tensor btt = make_tensor(tb.ptr(), PKV_DTYPE_INT32, dev, {gs.B, gs.M}, {gs.bt_stride, 1});
    pkv_tensor cut = make_tensor(cb.ptr(), PKV_DTYPE_INT32, dev, {gs.B + 1}, {1});
    pkv_tensor stt = make_tensor(sb.ptr(), PKV_DTYPE_INT32, dev, {gs.B}, {1});
    int64_t *cnt = reinterpret_cast<int64_t *>(counter.ptr());

    cudaStream_t stream;
    PKVT_CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
    PKVT_CUDA_CHECK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeGlobal));
    const pkv_status s1 = pkv_write_mla(&view, &kt, &pt, &st, cnt, reinterpret_cast<pkv_stream>(stream));
    const std::string m1 = pkv_last_error_message();
    const pkv_status s2 = pkv_gather_kv(&ot, nullptr, &view, &btt, &cut, &stt, cnt, reinterpret_cast<pkv_stream>(stream));
    const std::string m2 = pkv_last_error_message();
    cudaGraph_t graph = nullptr;
    const cudaError_t ce = cudaStreamEndCapture(stream, &graph);
    ASSERT_EQ(s1, PKV_SUCCESS) << "write under capture: " << m1;
    ASSERT_EQ(s2, PKV_SUCCESS) << "gather under capture: " << m2;
    ASSERT_EQ(ce, cudaSuccess) << cudaGetErrorString(ce);
    cudaGraphExec_t exec = nullptr;
    PKVT_CUDA_CHECK(cudaGraphInstantiate(&exec, graph, 0));
    std::vector<int64_t> nan_offs;
    int64_t goob = 0;
    const std::vector<uint8_t> gexp = oracle_gather(w.g, expected, {}, gs, o0, nan_offs, &goob);
    for (int replay = 0; replay < 2; ++replay) {
        SCOPED_TRACE("replay " + std::to_string(replay));
        PKVT_CUDA_CHECK(cudaGraphLaunch(exec, stream));
        PKVT_CUDA_CHECK(cudaStreamSynchronize(stream));
        EXPECT_TRUE(bytes_equal(expected, cache.download_all(), nullptr, "cache after replay"));
        GatherOut go;
        go.out = ob.download_all();
        EXPECT_TRUE(gather_matches(gexp, go, Fmt::BF16, nan_offs, "gather after replay"));
        int64_t n = -1;
        counter.download(&n, 8);
        EXPECT_EQ(n, (replay + 1) * (oob + goob));
    }
    cudaGraphExecDestroy(exec);
    cudaGraphDestroy(graph);
    cudaStreamDestroy(stream);
#else
    GTEST_SKIP() << "tests built without CUDA";
#endif
}

// ============================================================================ errors
struct MlaEnv {
    Buf cache, kv, pe, slots, counter, plane;
    std::vector<uint8_t> cache0;
    pkv_cache_view view;
    pkv_tensor kt, pt, st;
    MlaEnv(pkv_cache_format fmt, int64_t R, int64_t P, pkv_dtype dt, uint32_t flags = 0) {
        Rng r(3);
        const int64_t NB = 2, BS = 4, T = 3;
        cache0 = random_bytes(r, size_t(NB * BS * 656 * 4 + 256));
        cache = to_device(Backend::CPU, cache0);
        plane = Buf(Backend::CPU, 1024);
        const pkv_device cpu = backend_device(Backend::CPU);
        view = PKV_CACHE_VIEW_INIT;
        view.format = fmt;
        view.flags = flags;
        view.device = cpu;
        view.num_blocks = NB;
        view.block_size = BS;
        view.num_heads = 1;
        view.head_size_k = 576;
        view.k_data = cache.ptr();
        std::vector<uint8_t> x(size_t(T * 1024 * 4));
        for (size_t i = 0; i < x.size(); i += 2) { x[i] = 0x80; x[i + 1] = 0x3F; }
        kv = to_device(Backend::CPU, x);
        pe = to_device(Backend::CPU, x);
        slots = to_device(Backend::CPU, std::vector<int64_t>{0, 5, -1});
        counter = to_device(Backend::CPU, std::vector<int64_t>{0});
        kt = make_tensor(kv.ptr(), dt, cpu, {T, R}, {R, 1});
        pt = make_tensor(pe.ptr(), dt, cpu, {T, P}, {P, 1});
        st = make_tensor(slots.ptr(), PKV_DTYPE_INT64, cpu, {T}, {1});
    }
    pkv_status write() { return pkv_write_mla(&view, &kt, &pt, &st, reinterpret_cast<int64_t *>(counter.ptr()), nullptr); }
    ::testing::AssertionResult untouched() {
        std::vector<uint8_t> now = cache.download_all();
        int64_t c = -1;
        counter.download(&c, 8);
        if (c != 0) return ::testing::AssertionFailure() << "counter changed to " << c;
        return bytes_equal(cache0, now, nullptr, "cache after a failed call");
    }
};

TEST(MlaMisc, ErrorsLeaveEverythingUntouched) {
    {   // sanity: the base setup succeeds
        MlaEnv e(PKV_CACHE_FORMAT_FP8_DS_MLA, 512, 64, PKV_DTYPE_BF16);
        EXPECT_EQ(e.write(), PKV_SUCCESS) << pkv_last_error_message();
    }
    {   // widths 448 + 128 = 576 but not 512 + 64
        MlaEnv e(PKV_CACHE_FORMAT_FP8_DS_MLA, 448, 128, PKV_DTYPE_BF16);
        EXPECT_TRUE(failed_with(e.write(), PKV_ERROR_INVALID_ARGUMENT, "pkv_write_mla", {"512", "64"}));
        EXPECT_TRUE(e.untouched());
    }
    {   // R + P differs from head_size_k
        MlaEnv e(PKV_CACHE_FORMAT_BF16, 512, 32, PKV_DTYPE_BF16);
        EXPECT_TRUE(failed_with(e.write(), PKV_ERROR_INVALID_ARGUMENT, "pkv_write_mla", {"head_size_k"}));
        EXPECT_TRUE(e.untouched());
    }
    {   // bf16 inputs with the f16 RoPE flag
        MlaEnv e(PKV_CACHE_FORMAT_FP8_DS_MLA, 512, 64, PKV_DTYPE_BF16, PKV_CACHE_VIEW_ROPE_F16);
        EXPECT_TRUE(failed_with(e.write(), PKV_ERROR_INVALID_ARGUMENT, "pkv_write_mla", {"f16"}));
        EXPECT_TRUE(e.untouched());
    }
    {   // f16 inputs without it
        MlaEnv e(PKV_CACHE_FORMAT_FP8_DS_MLA, 512, 64, PKV_DTYPE_F16);
        EXPECT_TRUE(failed_with(e.write(), PKV_ERROR_INVALID_ARGUMENT, "pkv_write_mla", {"bf16"}));
        EXPECT_TRUE(e.untouched());
    }
    {   // f32 inputs to fp8_ds_mla
        MlaEnv e(PKV_CACHE_FORMAT_FP8_DS_MLA, 512, 64, PKV_DTYPE_F32);
        EXPECT_TRUE(failed_with(e.write(), PKV_ERROR_INVALID_ARGUMENT, "pkv_write_mla", {"bf16"}));
        EXPECT_TRUE(e.untouched());
    }
    {   // k_pe dtype differs from kv_c
        MlaEnv e(PKV_CACHE_FORMAT_BF16, 512, 64, PKV_DTYPE_BF16);
        e.pt.dtype = PKV_DTYPE_F16;
        EXPECT_TRUE(failed_with(e.write(), PKV_ERROR_INVALID_ARGUMENT, "pkv_write_mla", {"k_pe dtype"}));
        EXPECT_TRUE(e.untouched());
    }
    {   // a cache with V
        MlaEnv e(PKV_CACHE_FORMAT_BF16, 512, 64, PKV_DTYPE_BF16);
        e.view.v_data = e.cache.ptr() + 4096;
        EXPECT_TRUE(failed_with(e.write(), PKV_ERROR_INVALID_ARGUMENT, "pkv_write_mla", {"K-only"}));
        EXPECT_TRUE(e.untouched());
    }
    {   // fp8_ds_mla view with V, two heads, or a short / misaligned slot stride
        MlaEnv e(PKV_CACHE_FORMAT_FP8_DS_MLA, 512, 64, PKV_DTYPE_BF16);
        e.view.v_data = e.cache.ptr() + 4096;
        EXPECT_TRUE(failed_with(e.write(), PKV_ERROR_INVALID_ARGUMENT, "pkv_write_mla", {"fp8_ds_mla"}));
        e.view.v_data = nullptr;
        e.view.num_heads = 2;
        EXPECT_TRUE(failed_with(e.write(), PKV_ERROR_INVALID_ARGUMENT, "pkv_write_mla", {"fp8_ds_mla"}));
        e.view.num_heads = 1;
        e.view.k_stride_slot = 652;
        EXPECT_TRUE(failed_with(e.write(), PKV_ERROR_INVALID_ARGUMENT, "pkv_write_mla", {"656"}));
        e.view.k_stride_slot = 658;
        EXPECT_EQ(e.write(), PKV_ERROR_INVALID_ARGUMENT) << pkv_last_error_message();
        e.view.k_stride_slot = 0;
        e.view.k_data = e.cache.ptr() + 2;
        EXPECT_EQ(e.write(), PKV_ERROR_INVALID_ARGUMENT) << pkv_last_error_message();
        EXPECT_TRUE(e.untouched());
    }
    {   // a per-token-head format
        MlaEnv e(PKV_CACHE_FORMAT_INT8_PER_TOKEN_HEAD, 512, 64, PKV_DTYPE_BF16);
        e.view.k_scale_plane = reinterpret_cast<float *>(e.plane.ptr());
        EXPECT_TRUE(failed_with(e.write(), PKV_ERROR_NOT_SUPPORTED, "pkv_write_mla", {"int8_per_token_head"}));
        EXPECT_TRUE(e.untouched());
    }
    {   // 1-D inputs
        MlaEnv e(PKV_CACHE_FORMAT_FP8_DS_MLA, 512, 64, PKV_DTYPE_BF16);
        e.kt.ndim = 1;
        EXPECT_TRUE(failed_with(e.write(), PKV_ERROR_INVALID_ARGUMENT, "pkv_write_mla", {"kv_c"}));
        EXPECT_TRUE(e.untouched());
    }
    {   // pkv_write_kv does not write fp8_ds_mla
        MlaEnv e(PKV_CACHE_FORMAT_FP8_DS_MLA, 512, 64, PKV_DTYPE_BF16);
        pkv_tensor key = make_tensor(e.kv.ptr(), PKV_DTYPE_BF16, backend_device(Backend::CPU), {3, 1, 576}, {576, 576, 1});
        EXPECT_TRUE(failed_with(pkv_write_kv(&e.view, &key, nullptr, &e.st, nullptr, nullptr), PKV_ERROR_NOT_SUPPORTED,
                                "pkv_write_kv", {"pkv_write_mla"}));
        EXPECT_TRUE(e.untouched());
    }
    {   // T = 0: nothing written
        MlaEnv e(PKV_CACHE_FORMAT_FP8_DS_MLA, 512, 64, PKV_DTYPE_BF16);
        e.st.shape[0] = 0;
        EXPECT_EQ(e.write(), PKV_SUCCESS) << pkv_last_error_message();
        EXPECT_TRUE(e.untouched());
    }
    {   // gathers of fp8_ds_mla: 576-wide K only, float outputs
        MlaEnv e(PKV_CACHE_FORMAT_FP8_DS_MLA, 512, 64, PKV_DTYPE_BF16);
        const pkv_device cpu = backend_device(Backend::CPU);
        Buf out(Backend::CPU, 4 * 576 * 4), table = to_device(Backend::CPU, std::vector<int32_t>{0, 1});
        Buf cu = to_device(Backend::CPU, std::vector<int32_t>{0, 4});
        pkv_tensor bt = make_tensor(table.ptr(), PKV_DTYPE_INT32, cpu, {1, 2}, {2, 1});
        pkv_tensor cut = make_tensor(cu.ptr(), PKV_DTYPE_INT32, cpu, {2}, {1});
        pkv_tensor o = make_tensor(out.ptr(), PKV_DTYPE_F32, cpu, {4, 1, 512}, {576, 576, 1});
        EXPECT_TRUE(failed_with(pkv_gather_kv(&o, nullptr, &e.view, &bt, &cut, nullptr, nullptr, nullptr),
                                PKV_ERROR_INVALID_ARGUMENT, "pkv_gather_kv", {"out_key"}));
        o.shape[2] = 576;
        o.dtype = PKV_DTYPE_FP8_E4M3;
        EXPECT_TRUE(failed_with(pkv_gather_kv(&o, nullptr, &e.view, &bt, &cut, nullptr, nullptr, nullptr),
                                PKV_ERROR_NOT_SUPPORTED, "pkv_gather_kv", {"out_key"}));
        o.dtype = PKV_DTYPE_F32;
        EXPECT_EQ(pkv_gather_kv(&o, &o, &e.view, &bt, &cut, nullptr, nullptr, nullptr), PKV_ERROR_INVALID_ARGUMENT);
        EXPECT_EQ(pkv_gather_kv(&o, nullptr, &e.view, &bt, &cut, nullptr, nullptr, nullptr), PKV_SUCCESS)
            << pkv_last_error_message();
    }
}

}  // namespace
}  // namespace pkvt
