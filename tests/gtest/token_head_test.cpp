// Per-token-head INT8 / FP8 caches (PKV_CACHE_FORMAT_INT8_PER_TOKEN_HEAD / FP8_PER_TOKEN_HEAD):
// pkv_write_kv and pkv_gather_kv against an independent oracle written here from the header's
// rules, on the CPU backend and (with a device) on the CUDA backend, whose bytes are also
// compared with the CPU backend's bytes exactly.
//
// The rules (pagedkv.h, src/core/token_head_quant.h): per (token, head) row of K and of V,
//   s = max(amax / QMAX, 1e-6f) (QMAX 127 / 448), inv = 1.0f / s, v = x * inv,
//   INT8 q = clamp(rne(v), -128, 127), FP8 q = e4m3 sat_finite_rne(v);
//   a row with a NaN / Inf element: scale 0x7FC00000, INT8 codes 0, FP8 codes 0x7F;
//   gather: float(q) * s (NaN -> 0x7FFFFFFF), rounded to the output dtype.
// Every cache buffer is poisoned with random bytes and compared whole (codes, scale planes, gaps),
// so a write outside the rows it must write (padding, out-of-range, rows past T) is caught.
#include <map>

#include "test_common.h"

namespace pkvt {
namespace {

enum class THFmt { INT8, FP8 };
inline const char *th_name(THFmt f) { return f == THFmt::INT8 ? "int8" : "fp8"; }
inline pkv_cache_format th_format(THFmt f) {
    return f == THFmt::INT8 ? PKV_CACHE_FORMAT_INT8_PER_TOKEN_HEAD : PKV_CACHE_FORMAT_FP8_PER_TOKEN_HEAD;
}

constexpr uint32_t kNanScaleBits = 0x7FC00000u;

// ----------------------------------------------------------------------------- the oracle
// Codes and scale of one row of float32 values (the input already converted exactly).
float oracle_quantize(THFmt f, const std::vector<float> &x, std::vector<uint8_t> &codes) {
    codes.assign(x.size(), 0);
    float amax = 0.0f;
    bool finite = true;
    for (float v : x) {
        if (!std::isfinite(v)) finite = false;
        else amax = std::max(amax, std::fabs(v));
    }
    if (!finite) {
        for (auto &c : codes) c = f == THFmt::INT8 ? 0x00 : 0x7F;
        return f32_from_bits(kNanScaleBits);
    }
    const volatile float q = f == THFmt::INT8 ? 127.0f : 448.0f;
    float s = amax / q;
    if (!(s > 1e-6f)) s = 1e-6f;
    const volatile float one = 1.0f;
    const float inv = one / s;
    for (size_t i = 0; i < x.size(); ++i) {
        const float v = x[i] * inv;
        if (f == THFmt::INT8) {
            double r = std::nearbyint(double(v));  // ties to even (default rounding mode)
            r = std::min(127.0, std::max(-128.0, r));
            codes[i] = uint8_t(int8_t(int(r)));
        } else {
            codes[i] = uint8_t(oracle_encode(Fmt::E4M3, v));
        }
    }
    return s;
}

float oracle_code_value(THFmt f, uint8_t q) {
    return f == THFmt::INT8 ? float(int8_t(q)) : oracle_to_float(Fmt::E4M3, q);
}

// ----------------------------------------------------------------------------- geometry
enum class THLayout { NHD, NHD_DEFAULT, HND, INLINE, STRIDED };
constexpr THLayout kTHLayouts[] = {THLayout::NHD, THLayout::NHD_DEFAULT, THLayout::HND, THLayout::INLINE,
                                   THLayout::STRIDED};
inline const char *th_layout_name(THLayout l) {
    switch (l) {
        case THLayout::NHD: return "nhd";
        case THLayout::NHD_DEFAULT: return "nhd0";
        case THLayout::HND: return "hnd";
        case THLayout::INLINE: return "inline";
        default: return "strided";
    }
}

// Codes (1 byte an element) and float32 scale planes inside one buffer.
struct THGeom {
    THLayout layout = THLayout::NHD;
    int64_t NB = 0, BS = 0, H = 0, Dk = 0, Dv = 0;
    bool has_v = true;
    int64_t off[2] = {0, 0}, sb[2] = {0, 0}, ss[2] = {0, 0}, sh[2] = {0, 0};      // codes
    int64_t poff[2] = {0, 0}, psb[2] = {0, 0}, pss[2] = {0, 0}, psh[2] = {0, 0};  // scale planes
    size_t bytes = 0;

    int sides() const { return has_v ? 2 : 1; }
    int64_t D(int side) const { return side == 0 ? Dk : Dv; }
    int64_t code(int side, int64_t b, int64_t s, int64_t h, int64_t d) const {
        return off[side] + b * sb[side] + s * ss[side] + h * sh[side] + d;
    }
    int64_t scale(int side, int64_t b, int64_t s, int64_t h) const {
        return poff[side] + b * psb[side] + s * pss[side] + h * psh[side];
    }
    std::string describe(int64_t o) const {
        for (int side = 0; side < sides(); ++side)
            for (int64_t b = 0; b < NB; ++b)
                for (int64_t s = 0; s < BS; ++s)
                    for (int64_t h = 0; h < H; ++h) {
                        std::ostringstream ss_;
                        ss_ << (side ? "V" : "K") << "[block=" << b << ",slot=" << s << ",head=" << h << "]";
                        const int64_t c = code(side, b, s, h, 0);
                        if (o >= c && o < c + D(side)) return ss_.str() + " code " + std::to_string(o - c);
                        const int64_t p = scale(side, b, s, h);
                        if (o >= p && o < p + 4) return ss_.str() + " scale byte " + std::to_string(o - p);
                    }
        return "unaddressed byte";
    }
};

THGeom make_th_geom(THLayout l, int64_t NB, int64_t BS, int64_t H, int64_t Dk, int64_t Dv, bool has_v) {
    THGeom g;
    g.layout = l; g.NB = NB; g.BS = BS; g.H = H; g.Dk = Dk; g.Dv = has_v ? Dv : 0; g.has_v = has_v;
    const int n = g.sides();
    int64_t end = 0;
    auto region = [&](int64_t size, int64_t shift) {  // a fresh 256-aligned region (+ shift)
        const int64_t o = round_up(end, 256) + shift;
        end = o + size;
        return o;
    };
    if (l == THLayout::INLINE) {  // vLLM: [NB, 2, BS, H, D + 4], scale after each row's codes
        const int64_t rk = Dk + 4, rv = Dv + 4;
        const int64_t pk = BS * H * rk, pv = has_v ? BS * H * rv : 0;
        const int64_t block = pk + pv;
        g.off[0] = region(NB * block, 0);
        g.off[1] = g.off[0] + pk;
        for (int s = 0; s < n; ++s) {
            const int64_t r = s == 0 ? rk : rv;
            g.sb[s] = g.psb[s] = block;
            g.ss[s] = g.pss[s] = H * r;
            g.sh[s] = g.psh[s] = r;
            g.poff[s] = g.off[s] + g.D(s);
        }
    } else {
        for (int s = 0; s < n; ++s) {
            const int64_t D = g.D(s);
            switch (l) {
                case THLayout::HND:
                    g.ss[s] = D; g.sh[s] = BS * D; g.sb[s] = H * BS * D;
                    g.pss[s] = 4; g.psh[s] = BS * 4; g.psb[s] = H * BS * 4;
                    break;
                case THLayout::STRIDED:  // gaps everywhere, odd byte strides and base
                    g.sh[s] = D + 3; g.ss[s] = H * g.sh[s] + 5; g.sb[s] = BS * g.ss[s] + 7;
                    g.psh[s] = (BS + 1) * 4; g.pss[s] = 4; g.psb[s] = H * g.psh[s] + 12;
                    break;
                default:  // NHD, contiguous [NB, BS, H] planes
                    g.sh[s] = D; g.ss[s] = H * D; g.sb[s] = BS * H * D;
                    g.psh[s] = 4; g.pss[s] = H * 4; g.psb[s] = BS * H * 4;
            }
            g.off[s] = region(NB * g.sb[s], l == THLayout::STRIDED ? 1 + 2 * s : 0);
        }
        for (int s = 0; s < n; ++s) g.poff[s] = region(NB * g.psb[s], l == THLayout::STRIDED ? 4 : 0);
    }
    g.bytes = size_t(round_up(end + 64, 256));
    return g;
}

pkv_cache_view make_th_view(THFmt f, const THGeom &g, uint8_t *base, pkv_device dev) {
    pkv_cache_view v = PKV_CACHE_VIEW_INIT;
    v.format = th_format(f);
    v.device = dev;
    v.num_blocks = g.NB;
    v.block_size = g.BS;
    v.num_heads = g.H;
    v.head_size_k = g.Dk;
    v.head_size_v = g.has_v ? g.Dv : 0;
    v.k_data = base + g.off[0];
    v.k_scale_plane = reinterpret_cast<float *>(base + g.poff[0]);
    if (g.has_v) {
        v.v_data = base + g.off[1];
        v.v_scale_plane = reinterpret_cast<float *>(base + g.poff[1]);
    }
    if (g.layout != THLayout::NHD_DEFAULT) {
        v.k_stride_block = g.sb[0]; v.k_stride_slot = g.ss[0]; v.k_stride_head = g.sh[0];
        v.k_scale_stride_block = g.psb[0]; v.k_scale_stride_slot = g.pss[0]; v.k_scale_stride_head = g.psh[0];
        if (g.has_v) {
            v.v_stride_block = g.sb[1]; v.v_stride_slot = g.ss[1]; v.v_stride_head = g.sh[1];
            v.v_scale_stride_block = g.psb[1]; v.v_scale_stride_slot = g.pss[1]; v.v_scale_stride_head = g.psh[1];
        }
    }
    return v;
}

// ----------------------------------------------------------------------------- inputs
struct Rows {  // a dense [rows, H, D] tensor in host memory (element strides)
    Fmt f = Fmt::F16;
    int64_t rows = 0, H = 0, D = 0, rs = 0, hs = 0, shift = 0;
    std::vector<uint8_t> bytes;
    int64_t elem_off(int64_t t, int64_t h, int64_t d) const { return shift + t * rs + h * hs + d; }
    uint32_t get(int64_t t, int64_t h, int64_t d) const { return load_bits(&bytes[size_t(elem_off(t, h, d) * fmt_bytes(f))], f); }
    void set(int64_t t, int64_t h, int64_t d, uint32_t b) { store_bits(&bytes[size_t(elem_off(t, h, d) * fmt_bytes(f))], f, b); }
    std::vector<float> row(int64_t t, int64_t h) const {
        std::vector<float> v(static_cast<size_t>(D));
        for (int64_t d = 0; d < D; ++d) v[size_t(d)] = oracle_to_float(f, get(t, h, d));
        return v;
    }
};

// Rows [0, T) random (each row scaled by a random power of ten), everything else NaN.
Rows make_rows(Rng &r, Fmt f, int64_t T, int64_t T_pad, int64_t H, int64_t D, int64_t head_pad, int64_t row_pad,
               int64_t shift) {
    Rows x;
    x.f = f; x.rows = T_pad; x.H = H; x.D = D; x.shift = shift;
    x.hs = D + head_pad;
    x.rs = H * x.hs + row_pad;
    const int64_t n = shift + std::max<int64_t>(T_pad, 1) * x.rs + 1;
    x.bytes.resize(size_t(n * fmt_bytes(f)));
    for (int64_t i = 0; i < n; ++i) store_bits(&x.bytes[size_t(i * fmt_bytes(f))], f, nan_bits(f));
    for (int64_t t = 0; t < T; ++t)
        for (int64_t h = 0; h < H; ++h) {
            const double row_scale = std::pow(10.0, double(r.range(-3, 2)));
            for (int64_t d = 0; d < D; ++d) {
                const float v = float(oracle_decode(f, random_value_bits(r, f)) * row_scale);
                uint32_t b = oracle_encode(f, v);
                if (oracle_decode(f, b) == 0.0 || !std::isfinite(oracle_decode(f, b))) b = oracle_encode(f, 1.0f);
                x.set(t, h, d, b);
            }
        }
    return x;
}

// Special rows: all zero, all equal, exact ties, a NaN, +-Inf.
void make_special_row(Rng &r, Rows &x, int64_t t, int64_t h, int kind) {
    const Fmt f = x.f;
    for (int64_t d = 0; d < x.D; ++d) {
        uint32_t b;
        switch (kind) {
            case 0: b = oracle_encode(f, 0.0f); break;
            case 1: b = oracle_encode(f, -3.0f); break;
            case 2: b = oracle_encode(f, d == 0 ? 127.0f : float(d % 9) - 4.5f); break;  // s = 1, ties
            default: b = x.get(t, h, d);
        }
        x.set(t, h, d, b);
    }
    const int64_t where = r.range(0, x.D - 1);
    if (kind == 3) x.set(t, h, where, nan_bits(f));
    if (kind == 4) x.set(t, h, where, oracle_encode(f, std::numeric_limits<float>::infinity()));
    if (kind == 5) x.set(t, h, where, oracle_encode(f, -std::numeric_limits<float>::infinity()));
    if (kind == 6) x.set(t, h, where, oracle_encode(f, 0.0f) | (f == Fmt::F32 ? 0x80000000u : 0x8000u));  // -0
}

// ----------------------------------------------------------------------------- write cases
struct THWriteCase {
    int idx = 0;
    Backend be = Backend::CPU;
    THFmt fmt = THFmt::INT8;
    Fmt in = Fmt::BF16;
    THLayout layout = THLayout::NHD;
    int64_t H = 4, Dk = 64, Dv = 64, BS = 16, NB = 0, T = 40;
    bool k_only = false, slot64 = true;
    int64_t slot_stride = 1, extra_rows = 3, head_pad = 0, row_pad = 0, key_shift = 0;
    double pad_frac = 0.2, oob_frac = 0.0, special_frac = 0.0;
    bool count_oob = true;
    bool stream = false;
    std::string name;
};

void PrintTo(const THWriteCase &c, std::ostream *os) {
    *os << c.name << " {be=" << backend_name(c.be) << " fmt=" << th_name(c.fmt) << " in=" << fmt_name(c.in)
        << " layout=" << th_layout_name(c.layout) << " H=" << c.H << " Dk=" << c.Dk << " Dv=" << c.Dv
        << " BS=" << c.BS << " NB=" << c.NB << " T=" << c.T << " k_only=" << c.k_only << " slot64=" << c.slot64
        << " slot_stride=" << c.slot_stride << " pad=" << c.pad_frac << " oob=" << c.oob_frac
        << " special=" << c.special_frac << "}";
}

struct THWriteData {
    THGeom g;
    std::vector<uint8_t> cache0;
    Rows key, value;
    int64_t T_pad = 0;
    std::vector<uint8_t> slot_bytes;
    std::vector<int64_t> slots;
    int64_t counter0 = 0;
};

THWriteData make_write_data(const THWriteCase &c) {
    Rng r(0x7A11ull + uint64_t(c.idx) * 104729ull);
    THWriteData w;
    w.g = make_th_geom(c.layout, c.NB, c.BS, c.H, c.Dk, c.Dv, !c.k_only);
    w.cache0 = random_bytes(r, w.g.bytes);
    w.T_pad = c.T + c.extra_rows;
    w.key = make_rows(r, c.in, c.T, w.T_pad, c.H, c.Dk, c.head_pad, c.row_pad, c.key_shift);
    if (!c.k_only) w.value = make_rows(r, c.in, c.T, w.T_pad, c.H, c.Dv, (c.head_pad + 1) % 3, c.row_pad ? 0 : 5, 0);
    for (int64_t t = 0; t < c.T; ++t)
        for (int64_t h = 0; h < c.H; ++h)
            for (int side = 0; side < w.g.sides(); ++side)
                if (r.chance(c.special_frac)) make_special_row(r, side ? w.value : w.key, t, h, int(r.range(0, 6)));

    const int64_t S = c.NB * c.BS;
    std::vector<int64_t> perm(static_cast<size_t>(S));
    for (int64_t i = 0; i < S; ++i) perm[size_t(i)] = i;
    r.shuffle(perm);
    size_t front = 0, back = perm.size();
    w.slots.resize(size_t(c.T));
    for (int64_t t = 0; t < c.T; ++t) {
        int64_t s;
        if (r.chance(c.pad_frac)) {
            const int64_t neg[] = {-1, -1, -2, c.slot64 ? -5000000000ll : -1000, c.slot64 ? INT64_MIN : INT32_MIN};
            s = neg[r.range(0, 4)];
        } else if (r.chance(c.oob_frac)) {
            const int64_t big = c.slot64 ? (int64_t(1) << 40) : INT32_MAX;
            const int64_t opts[] = {S, S + 1, S + 3 * c.BS, big};
            s = opts[r.range(0, 3)];
        } else if (front < back) {
            s = perm[front++];
        } else {
            s = -1;
        }
        w.slots[size_t(t)] = s;
    }
    const int64_t entries = (std::max(c.T, w.T_pad) + 2) * c.slot_stride;
    const int esz = c.slot64 ? 8 : 4;
    w.slot_bytes.resize(size_t(entries * esz));
    auto put = [&](int64_t i, int64_t v) {
        if (c.slot64) std::memcpy(&w.slot_bytes[size_t(i * 8)], &v, 8);
        else { const int32_t v32 = int32_t(v); std::memcpy(&w.slot_bytes[size_t(i * 4)], &v32, 4); }
    };
    for (int64_t i = 0; i < entries; ++i) put(i, back > front ? perm[--back] : -1);  // traps: unused slots
    for (int64_t t = 0; t < c.T; ++t) put(t * c.slot_stride, w.slots[size_t(t)]);
    w.counter0 = 77 + c.idx;
    return w;
}

std::vector<uint8_t> oracle_write(const THWriteCase &c, const THWriteData &w, int64_t *oob) {
    std::vector<uint8_t> img = w.cache0;
    *oob = 0;
    std::vector<uint8_t> codes;
    for (int64_t t = 0; t < c.T; ++t) {
        const int64_t s = w.slots[size_t(t)];
        if (s < 0) continue;
        if (s >= c.NB * c.BS) { ++*oob; continue; }
        const int64_t b = s / c.BS, o = s % c.BS;
        for (int side = 0; side < w.g.sides(); ++side)
            for (int64_t h = 0; h < c.H; ++h) {
                const float scale = oracle_quantize(c.fmt, (side ? w.value : w.key).row(t, h), codes);
                for (int64_t d = 0; d < w.g.D(side); ++d) img[size_t(w.g.code(side, b, o, h, d))] = codes[size_t(d)];
                std::memcpy(&img[size_t(w.g.scale(side, b, o, h))], &scale, 4);
            }
    }
    return img;
}

WriteOutcome run_write(Backend be, const THWriteCase &c, const THWriteData &w) {
    const pkv_device dev = backend_device(be);
    Buf cache = to_device(be, w.cache0);
    Buf key = to_device(be, w.key.bytes);
    Buf value = c.k_only ? Buf() : to_device(be, w.value.bytes);
    Buf slots = to_device(be, w.slot_bytes);
    Buf counter = to_device(be, std::vector<int64_t>{w.counter0});
    pkv_cache_view view = make_th_view(c.fmt, w.g, cache.ptr(), dev);
    const int ie = fmt_bytes(c.in);
    pkv_tensor kt = make_tensor(key.ptr() + w.key.shift * ie, fmt_dtype(c.in), dev, {w.T_pad, c.H, c.Dk},
                                {w.key.rs, w.key.hs, 1});
    pkv_tensor vt{};
    if (!c.k_only) vt = make_tensor(value.ptr(), fmt_dtype(c.in), dev, {w.T_pad, c.H, c.Dv}, {w.value.rs, w.value.hs, 1});
    pkv_tensor st = make_tensor(slots.ptr(), c.slot64 ? PKV_DTYPE_INT64 : PKV_DTYPE_INT32, dev, {c.T}, {c.slot_stride});
    TestStream stream(be, c.stream);
    const pkv_status s = pkv_write_kv(&view, &kt, c.k_only ? nullptr : &vt, &st,
                                      c.count_oob ? reinterpret_cast<int64_t *>(counter.ptr()) : nullptr, stream.get());
    return write_outcome(s, be, stream, cache, counter);
}

// ----------------------------------------------------------------------------- gather cases
struct THGatherCase {
    int idx = 0;
    Backend be = Backend::CPU;
    THFmt fmt = THFmt::INT8;
    Fmt out = Fmt::F32;
    THLayout layout = THLayout::NHD;
    int64_t H = 4, Dk = 64, Dv = 64, BS = 16, NB = 12;
    bool k_only = false, gather_v = true, seq_starts = true;
    int64_t out_head_pad = 0, out_row_pad = 0;
    bool stream = false;
    std::string name;
};

void PrintTo(const THGatherCase &c, std::ostream *os) {
    *os << c.name << " {be=" << backend_name(c.be) << " fmt=" << th_name(c.fmt) << " out=" << fmt_name(c.out)
        << " layout=" << th_layout_name(c.layout) << " H=" << c.H << " Dk=" << c.Dk << " Dv=" << c.Dv
        << " BS=" << c.BS << " NB=" << c.NB << " k_only=" << c.k_only << " gather_v=" << c.gather_v << "}";
}

struct THGatherData {
    THGeom g;
    std::vector<uint8_t> cache;
    int64_t B = 0, M = 0, table_stride = 0, N = 0;
    std::vector<int32_t> table, cu, starts;
    int64_t ors[2] = {0, 0}, ohs[2] = {0, 0};  // output row / head strides (elements)
    std::vector<uint8_t> out0[2];
    int64_t counter0 = 0;
};

THGatherData make_gather_data(const THGatherCase &c) {
    Rng r(0x6A7Bull + uint64_t(c.idx) * 7907ull);
    THGatherData w;
    w.g = make_th_geom(c.layout, c.NB, c.BS, c.H, c.Dk, c.Dv, !c.k_only);
    w.cache = random_bytes(r, w.g.bytes);  // codes: every byte value (FP8 NaN codes included)
    for (int side = 0; side < w.g.sides(); ++side)
        for (int64_t b = 0; b < c.NB; ++b)
            for (int64_t s = 0; s < c.BS; ++s)
                for (int64_t h = 0; h < c.H; ++h) {
                    float v;
                    const double u = r.uni();
                    if (u < 0.85) v = float(std::pow(10.0, -6.0 + 7.0 * r.uni()));
                    else if (u < 0.9) v = 1e30f;  // overflows f16 / bf16 products
                    else if (u < 0.93) v = f32_from_bits(kNanScaleBits);
                    else if (u < 0.95) v = std::numeric_limits<float>::infinity();
                    else if (u < 0.97) v = 0.0f;
                    else v = -0.5f;
                    std::memcpy(&w.cache[size_t(w.g.scale(side, b, s, h))], &v, 4);
                }
    w.B = r.range(2, 5);
    std::vector<int64_t> lens(size_t(w.B)), starts(size_t(w.B));
    int64_t need = 0;
    for (int64_t b = 0; b < w.B; ++b) {
        lens[size_t(b)] = r.range(0, 3 * c.BS);
        starts[size_t(b)] = c.seq_starts ? r.range(0, c.BS + 2) : 0;
        need = std::max(need, lens[size_t(b)] + starts[size_t(b)]);
    }
    w.M = std::max<int64_t>(1, (need + c.BS - 1) / c.BS - 1);  // some rows run past max_blocks
    w.table_stride = w.M + 2;
    w.table.assign(size_t(w.B * w.table_stride), 999999);
    for (int64_t b = 0; b < w.B; ++b)
        for (int64_t m = 0; m < w.M; ++m) {
            const double u = r.uni();
            w.table[size_t(b * w.table_stride + m)] =
                u < 0.85 ? int32_t(r.range(0, c.NB - 1)) : u < 0.93 ? -1 : int32_t(c.NB + r.range(0, 3));
        }
    w.cu.assign(size_t(w.B + 1), 0);
    for (int64_t b = 0; b < w.B; ++b) w.cu[size_t(b + 1)] = w.cu[size_t(b)] + int32_t(lens[size_t(b)]);
    for (int64_t b = 0; b < w.B; ++b) w.starts.push_back(int32_t(starts[size_t(b)]));
    w.N = w.cu[size_t(w.B)] + 3;  // extra rows: never written
    const int e = fmt_bytes(c.out);
    for (int side = 0; side < 2; ++side) {
        const int64_t D = side ? c.Dv : c.Dk;
        w.ohs[side] = D + (side ? (c.out_head_pad + 1) % 3 : c.out_head_pad);
        w.ors[side] = c.H * w.ohs[side] + c.out_row_pad;
        w.out0[side] = random_bytes(r, size_t((w.N * w.ors[side] + 1) * e));
    }
    w.counter0 = 5 + c.idx;
    return w;
}

// Expected outputs; `nan_at` marks elements whose expected value is a NaN (any NaN pattern ok).
void oracle_gather(const THGatherCase &c, const THGatherData &w, std::vector<uint8_t> out[2],
                   std::vector<uint8_t> nan_at[2], int64_t *oob) {
    const int e = fmt_bytes(c.out);
    *oob = 0;
    for (int side = 0; side < 2; ++side) {
        out[side] = w.out0[side];
        nan_at[side].assign(out[side].size() / size_t(e), 0);
    }
    for (int64_t row = 0; row < w.cu[size_t(w.B)]; ++row) {
        int64_t b = 0;
        while (w.cu[size_t(b + 1)] <= row) ++b;
        const int64_t pos = row - w.cu[size_t(b)] + (c.seq_starts ? w.starts[size_t(b)] : 0);
        const int64_t idx = pos / c.BS;
        if (pos < 0 || idx >= w.M) { ++*oob; continue; }
        const int64_t id = w.table[size_t(b * w.table_stride + idx)];
        if (id < 0 || id >= c.NB) { ++*oob; continue; }
        const int64_t o = pos % c.BS;
        const int sides = c.gather_v && !c.k_only ? 2 : 1;
        for (int side = 0; side < sides; ++side)
            for (int64_t h = 0; h < c.H; ++h) {
                float s;
                std::memcpy(&s, &w.cache[size_t(w.g.scale(side, id, o, h))], 4);
                for (int64_t d = 0; d < w.g.D(side); ++d) {
                    const float v = oracle_code_value(c.fmt, w.cache[size_t(w.g.code(side, id, o, h, d))]) * s;
                    const int64_t el = row * w.ors[side] + h * w.ohs[side] + d;
                    store_bits(&out[side][size_t(el * e)], c.out, oracle_encode(c.out, v));
                    nan_at[side][size_t(el)] = std::isnan(v);
                }
            }
    }
}

struct THGatherResult {
    pkv_status status = PKV_SUCCESS;
    std::string message;
    std::vector<uint8_t> out[2];
    int64_t counter = 0;
};

THGatherResult run_gather(Backend be, const THGatherCase &c, const THGatherData &w) {
    const pkv_device dev = backend_device(be);
    Buf cache = to_device(be, w.cache);
    Buf ok = to_device(be, w.out0[0]), ov = to_device(be, w.out0[1]);
    Buf table = to_device(be, w.table), cu = to_device(be, w.cu), starts = to_device(be, w.starts);
    Buf counter = to_device(be, std::vector<int64_t>{w.counter0});
    pkv_cache_view view = make_th_view(c.fmt, w.g, cache.ptr(), dev);
    pkv_tensor okt = make_tensor(ok.ptr(), fmt_dtype(c.out), dev, {w.N, c.H, c.Dk}, {w.ors[0], w.ohs[0], 1});
    pkv_tensor ovt = make_tensor(ov.ptr(), fmt_dtype(c.out), dev, {w.N, c.H, c.Dv}, {w.ors[1], w.ohs[1], 1});
    pkv_tensor btt = make_tensor(table.ptr(), PKV_DTYPE_INT32, dev, {w.B, w.M}, {w.table_stride, 1});
    pkv_tensor cut = make_tensor(cu.ptr(), PKV_DTYPE_INT32, dev, {w.B + 1}, {1});
    pkv_tensor stt = make_tensor(starts.ptr(), PKV_DTYPE_INT32, dev, {w.B}, {1});
    TestStream stream(be, c.stream);
    THGatherResult res;
    res.status = pkv_gather_kv(&okt, c.gather_v && !c.k_only ? &ovt : nullptr, &view, &btt, &cut,
                               c.seq_starts ? &stt : nullptr, reinterpret_cast<int64_t *>(counter.ptr()), stream.get());
    res.message = pkv_last_error_message();
    stream.sync(be);
    res.out[0] = ok.download_all();
    res.out[1] = ov.download_all();
    counter.download(&res.counter, 8);
    return res;
}

// ----------------------------------------------------------------------------- the grids
std::string case_name(const char *tag, int idx, THFmt f, Fmt io, THLayout l, int64_t H, int64_t Dk, int64_t Dv,
                      bool k_only, int64_t BS) {
    std::ostringstream ss;
    ss << tag << "_" << idx << "_" << th_name(f) << "_" << fmt_name(io) << "_" << th_layout_name(l) << "_h" << H
       << "_d" << Dk;
    if (k_only) ss << "_konly";
    else if (Dv != Dk) ss << "x" << Dv;
    ss << "_bs" << BS;
    return ss.str();
}

std::vector<THWriteCase> write_cases(Backend be) {
    std::vector<THWriteCase> v;
    const Fmt ins[] = {Fmt::F32, Fmt::F16, Fmt::BF16};
    int k = 0;
    auto add = [&](THWriteCase c, const char *tag) {
        const int i = k++;
        c.idx = int(v.size());
        c.be = be;
        c.slot64 = (i % 2) == 0;
        c.slot_stride = (i % 5 == 1) ? 3 : 1;
        c.extra_rows = (i % 3 == 0) ? 0 : 4;
        c.head_pad = (i % 4 == 1) ? 3 : 0;
        c.row_pad = (i % 6 == 2) ? 7 : 0;
        c.key_shift = (i % 7 == 3) ? 1 : 0;
        c.stream = (i % 2) == 1;
        if (c.oob_frac == 0.0 && i % 3 == 2) c.oob_frac = 0.1;
        c.count_oob = c.count_oob && (i % 5 != 4);
        if (c.special_frac == 0.0 && i % 4 == 3) c.special_frac = 0.15;
        if (c.k_only) c.Dv = 0;
        if (c.NB == 0) c.NB = (c.T * 5 / 4 + c.BS - 1) / c.BS + 1;
        c.name = case_name(tag, c.idx, c.fmt, c.in, c.layout, c.H, c.Dk, c.Dv, c.k_only, c.BS);
        v.push_back(c);
    };
    // 1. Head sizes x block sizes x formats, layouts / dtypes rotating (INLINE needs D % 4 == 0).
    int i = 0;
    for (int64_t D : {46, 64, 80, 128, 256})
        for (int64_t BS : {1, 16})
            for (THFmt f : {THFmt::INT8, THFmt::FP8}) {
                THWriteCase c;
                c.fmt = f; c.Dk = c.Dv = D; c.BS = BS; c.H = (i % 3 == 0) ? 1 : (i % 3 == 1) ? 4 : 13;
                c.in = ins[i % 3];
                c.layout = kTHLayouts[i % 5];
                if (c.layout == THLayout::INLINE && D % 4) c.layout = THLayout::STRIDED;
                c.T = D == 256 ? 24 : 40;
                add(c, "geom");
                ++i;
            }
    // 2. Every layout x format x input dtype.
    i = 0;
    for (THLayout l : kTHLayouts)
        for (THFmt f : {THFmt::INT8, THFmt::FP8})
            for (Fmt in : ins) {
                THWriteCase c;
                c.layout = l; c.fmt = f; c.in = in; c.H = 8; c.Dk = c.Dv = (i % 2) ? 128 : 64; c.BS = 16;
                add(c, "layout");
                ++i;
            }
    // 3. Dk != Dv (diff-kv), K-only.
    i = 0;
    for (THLayout l : kTHLayouts)
        for (THFmt f : {THFmt::INT8, THFmt::FP8}) {
            THWriteCase c;
            c.layout = l; c.fmt = f; c.in = ins[i % 3]; c.H = 8; c.Dk = 128; c.Dv = 64; c.BS = (i % 2) ? 16 : 1;
            add(c, "dkdv");
            c = THWriteCase();
            c.layout = l; c.fmt = f; c.in = ins[(i + 1) % 3]; c.H = (i % 2) ? 1 : 4; c.Dk = (i % 2) ? 576 : 80;
            c.BS = 16; c.k_only = true;
            add(c, "konly");
            ++i;
        }
    // 4. Special rows (zeros, all equal, ties, NaN, +-Inf, -0), every dtype and format.
    i = 0;
    for (THFmt f : {THFmt::INT8, THFmt::FP8})
        for (Fmt in : ins) {
            THWriteCase c;
            c.fmt = f; c.in = in; c.special_frac = 0.6; c.H = 4; c.Dk = c.Dv = (i % 2) ? 46 : 128;
            c.layout = (i % 2) ? THLayout::STRIDED : THLayout::INLINE;
            add(c, "special");
            ++i;
        }
    // 5. Padding / out of range / large T / slot dtypes.
    {
        THWriteCase c;
        c.pad_frac = 1.0; add(c, "allpad");
        c = THWriteCase(); c.oob_frac = 0.45; c.count_oob = true; c.slot64 = true; c.fmt = THFmt::FP8; add(c, "oob");
        c = THWriteCase(); c.oob_frac = 0.45; c.count_oob = false; c.layout = THLayout::INLINE; add(c, "oobnocount");
        c = THWriteCase(); c.T = 1; c.pad_frac = 0.0; c.H = 1; c.Dk = c.Dv = 46; add(c, "one");
        c = THWriteCase(); c.T = 2000; c.H = 8; c.Dk = c.Dv = 128; c.BS = 16; c.fmt = THFmt::FP8; c.in = Fmt::BF16;
        c.layout = THLayout::INLINE; add(c, "bigT");
        c = THWriteCase(); c.T = 1500; c.NB = 20; c.BS = 16; c.H = 2; c.Dk = c.Dv = 64; c.pad_frac = 0.5;
        c.oob_frac = 0.3; add(c, "bigToob");
    }
    return v;
}

std::vector<THGatherCase> gather_cases(Backend be) {
    std::vector<THGatherCase> v;
    const Fmt outs[] = {Fmt::F32, Fmt::F16, Fmt::BF16};
    auto add = [&](THGatherCase c, const char *tag) {
        c.idx = int(v.size());
        c.be = be;
        c.out_head_pad = (c.idx % 4 == 1) ? 2 : 0;
        c.out_row_pad = (c.idx % 3 == 2) ? 5 : 0;
        c.seq_starts = c.idx % 3 != 1;
        c.stream = c.idx % 2 == 1;
        if (c.k_only) { c.Dv = 0; c.gather_v = false; }
        c.name = case_name(tag, c.idx, c.fmt, c.out, c.layout, c.H, c.Dk, c.Dv, c.k_only, c.BS);
        v.push_back(c);
    };
    int i = 0;
    for (THLayout l : kTHLayouts)
        for (THFmt f : {THFmt::INT8, THFmt::FP8})
            for (Fmt out : outs) {
                THGatherCase c;
                c.layout = l; c.fmt = f; c.out = out; c.H = (i % 2) ? 8 : 3;
                c.Dk = c.Dv = (i % 3 == 0) ? 128 : (i % 3 == 1) ? 64 : 80;
                c.BS = (i % 4 == 0) ? 1 : 16;
                c.NB = c.BS == 1 ? 64 : 12;
                add(c, "layout");
                ++i;
            }
    i = 0;
    for (int64_t D : {46, 256})
        for (THFmt f : {THFmt::INT8, THFmt::FP8}) {
            THGatherCase c;
            c.fmt = f; c.out = outs[i % 3]; c.Dk = c.Dv = D; c.layout = (i % 2) ? THLayout::STRIDED : THLayout::HND;
            add(c, "dsize");
            ++i;
        }
    for (THFmt f : {THFmt::INT8, THFmt::FP8}) {
        THGatherCase c;
        c.fmt = f; c.Dk = 128; c.Dv = 64; c.layout = THLayout::INLINE; c.out = Fmt::BF16;
        add(c, "dkdv");
        c.gather_v = false;
        add(c, "konlyout");
        c = THGatherCase();
        c.fmt = f; c.k_only = true; c.Dk = 576; c.H = 1; c.out = Fmt::F16;
        add(c, "konly");
    }
    return v;
}

std::vector<uint8_t> nan_equalized(const std::vector<uint8_t> &expected, const std::vector<uint8_t> &got,
                                   const std::vector<uint8_t> &nan_at, Fmt f) {
    std::vector<uint8_t> e = expected;
    const int n = fmt_bytes(f);
    for (size_t i = 0; i < nan_at.size(); ++i)
        if (nan_at[i] && oracle_is_nan(f, load_bits(&got[i * size_t(n)], f)))
            std::memcpy(&e[i * size_t(n)], &got[i * size_t(n)], size_t(n));
    return e;
}

// ----------------------------------------------------------------------------- tests
class TokenHead : public ::testing::TestWithParam<Backend> {};

TEST_P(TokenHead, WriteMatchesOracle) {
    const Backend be = GetParam();
    PKVT_SKIP_IF_NO_BACKEND(be);
    for (const THWriteCase &c : write_cases(be)) {
        SCOPED_TRACE(::testing::PrintToString(c));
        const THWriteData w = make_write_data(c);
        int64_t oob = 0;
        const std::vector<uint8_t> expected = oracle_write(c, w, &oob);
        const WriteOutcome r = run_write(be, c, w);
        ASSERT_EQ(r.status, PKV_SUCCESS) << status_str(r.status) << ": " << r.message;
        auto describe = [&](int64_t off) { return w.g.describe(off); };
        EXPECT_TRUE(bytes_equal(expected, r.cache, describe, "cache vs oracle"));
        EXPECT_EQ(r.counter, w.counter0 + (c.count_oob ? oob : 0)) << "out_of_range_count";
        if (be == Backend::CUDA) {
            const WriteOutcome cpu = run_write(Backend::CPU, c, w);
            ASSERT_EQ(cpu.status, PKV_SUCCESS) << cpu.message;
            EXPECT_TRUE(bytes_equal(cpu.cache, r.cache, describe, "CUDA cache vs CPU backend cache"));
            EXPECT_EQ(cpu.counter, r.counter);
        }
    }
}

TEST_P(TokenHead, GatherMatchesOracle) {
    const Backend be = GetParam();
    PKVT_SKIP_IF_NO_BACKEND(be);
    for (const THGatherCase &c : gather_cases(be)) {
        SCOPED_TRACE(::testing::PrintToString(c));
        const THGatherData w = make_gather_data(c);
        std::vector<uint8_t> expected[2], nan_at[2];
        int64_t oob = 0;
        oracle_gather(c, w, expected, nan_at, &oob);
        const THGatherResult r = run_gather(be, c, w);
        ASSERT_EQ(r.status, PKV_SUCCESS) << status_str(r.status) << ": " << r.message;
        for (int side = 0; side < 2; ++side)
            EXPECT_TRUE(bytes_equal(nan_equalized(expected[side], r.out[side], nan_at[side], c.out), r.out[side], nullptr,
                                    side ? "out_value vs oracle" : "out_key vs oracle"));
        EXPECT_EQ(r.counter, w.counter0 + oob) << "out_of_range_count";
        if (be == Backend::CUDA) {
            const THGatherResult cpu = run_gather(Backend::CPU, c, w);
            ASSERT_EQ(cpu.status, PKV_SUCCESS) << cpu.message;
            for (int side = 0; side < 2; ++side)
                EXPECT_TRUE(bytes_equal(cpu.out[side], r.out[side], nullptr, "CUDA output vs CPU backend output"));
            EXPECT_EQ(cpu.counter, r.counter);
        }
    }
}

// Write then gather (f32 out): INT8 error <= s/2 per element, FP8 within the e4m3 rounding bound.
TEST_P(TokenHead, RoundTrip) {
    const Backend be = GetParam();
    PKVT_SKIP_IF_NO_BACKEND(be);
    const pkv_device dev = backend_device(be);
    int idx = 0;
    for (THFmt f : {THFmt::INT8, THFmt::FP8})
        for (Fmt in : {Fmt::F32, Fmt::F16, Fmt::BF16})
            for (THLayout l : {THLayout::INLINE, THLayout::HND, THLayout::STRIDED}) {
                SCOPED_TRACE(std::string(th_name(f)) + " " + fmt_name(in) + " " + th_layout_name(l));
                const int64_t H = 4, Dk = 128, Dv = 64, BS = 16, NB = 8, T = NB * BS - 5;
                Rng r(991 + uint64_t(idx++));
                const THGeom g = make_th_geom(l, NB, BS, H, Dk, Dv, true);
                Buf cache = to_device(be, random_bytes(r, g.bytes));
                const Rows key = make_rows(r, in, T, T, H, Dk, 0, 0, 0), value = make_rows(r, in, T, T, H, Dv, 0, 0, 0);
                Buf kb = to_device(be, key.bytes), vb = to_device(be, value.bytes);
                // Tokens in order over a shuffled set of blocks; one request reads them back.
                std::vector<int32_t> blocks(NB);
                for (int64_t b = 0; b < NB; ++b) blocks[size_t(b)] = int32_t(b);
                r.shuffle(blocks);
                std::vector<int32_t> slots(T);
                for (int64_t t = 0; t < T; ++t) slots[size_t(t)] = blocks[size_t(t / BS)] * int32_t(BS) + int32_t(t % BS);
                Buf sb = to_device(be, slots), tb = to_device(be, blocks);
                Buf cu = to_device(be, std::vector<int32_t>{0, int32_t(T)});
                pkv_cache_view view = make_th_view(f, g, cache.ptr(), dev);
                pkv_tensor kt = make_tensor(kb.ptr(), fmt_dtype(in), dev, {T, H, Dk}, {key.rs, key.hs, 1});
                pkv_tensor vt = make_tensor(vb.ptr(), fmt_dtype(in), dev, {T, H, Dv}, {value.rs, value.hs, 1});
                pkv_tensor st = make_tensor(sb.ptr(), PKV_DTYPE_INT32, dev, {T}, {1});
                ASSERT_EQ(pkv_write_kv(&view, &kt, &vt, &st, nullptr, nullptr), PKV_SUCCESS) << pkv_last_error_message();
                Buf ok(be, size_t(T * H * Dk * 4)), ov(be, size_t(T * H * Dv * 4));
                pkv_tensor okt = make_tensor(ok.ptr(), PKV_DTYPE_F32, dev, {T, H, Dk}, {H * Dk, Dk, 1});
                pkv_tensor ovt = make_tensor(ov.ptr(), PKV_DTYPE_F32, dev, {T, H, Dv}, {H * Dv, Dv, 1});
                pkv_tensor btt = make_tensor(tb.ptr(), PKV_DTYPE_INT32, dev, {1, NB}, {NB, 1});
                pkv_tensor cut = make_tensor(cu.ptr(), PKV_DTYPE_INT32, dev, {2}, {1});
                ASSERT_EQ(pkv_gather_kv(&okt, &ovt, &view, &btt, &cut, nullptr, nullptr, nullptr), PKV_SUCCESS)
                    << pkv_last_error_message();
                device_sync(be);
                const std::vector<uint8_t> img = cache.download_all();
                const std::vector<uint8_t> outs[2] = {ok.download_all(), ov.download_all()};
                int64_t bad = 0;
                for (int side = 0; side < 2; ++side) {
                    const Rows &x = side ? value : key;
                    const int64_t D = side ? Dv : Dk;
                    for (int64_t t = 0; t < T; ++t)
                        for (int64_t h = 0; h < H; ++h) {
                            float s;
                            std::memcpy(&s, &img[size_t(g.scale(side, blocks[size_t(t / BS)], t % BS, h))], 4);
                            for (int64_t d = 0; d < D; ++d) {
                                const double xv = oracle_decode(in, x.get(t, h, d));
                                float yv;
                                std::memcpy(&yv, &outs[side][size_t(((t * H + h) * D + d) * 4)], 4);
                                const double err = std::fabs(double(yv) - xv);
                                const double bound = f == THFmt::INT8
                                                         ? 0.5 * s * (1 + 1e-5) + std::fabs(xv) * 1e-6
                                                         : std::fabs(xv) * (0.0625 + 1e-5) + s * std::ldexp(1.0, -10) * 1.01;
                                if (!(err <= bound) && bad++ < 5)
                                    ADD_FAILURE() << (side ? "V" : "K") << " t=" << t << " h=" << h << " d=" << d
                                                  << " x=" << xv << " got " << yv << " s=" << s << " err " << err
                                                  << " > " << bound;
                            }
                        }
                }
                EXPECT_EQ(bad, 0);
            }
}

INSTANTIATE_TEST_SUITE_P(Cpu, TokenHead, ::testing::Values(Backend::CPU));
INSTANTIATE_TEST_SUITE_P(Cuda, TokenHead, ::testing::Values(Backend::CUDA));

// ----------------------------------------------------------------------------- hand-checked
// One token, one head, D = 8, NHD with a separate plane, on the CPU; returns codes and scale.
struct Hand {
    std::vector<uint8_t> codes;
    uint32_t scale_bits = 0;
};

Hand hand_write(THFmt f, Fmt in, const std::vector<float> &x, Backend be = Backend::CPU) {
    const int64_t D = int64_t(x.size());
    const pkv_device dev = backend_device(be);
    Buf codes = to_device(be, std::vector<uint8_t>(size_t(D), 0xAB));
    Buf plane = to_device(be, std::vector<uint32_t>{0xDEADBEEFu});
    pkv_cache_view v = PKV_CACHE_VIEW_INIT;
    v.format = th_format(f);
    v.device = dev;
    v.num_blocks = v.block_size = v.num_heads = 1;
    v.head_size_k = D;
    v.k_data = codes.ptr();
    v.k_scale_plane = reinterpret_cast<float *>(plane.ptr());
    std::vector<uint8_t> bytes(size_t(D * fmt_bytes(in)));
    for (int64_t d = 0; d < D; ++d) {
        uint32_t b = oracle_encode(in, x[size_t(d)]);
        if (std::isnan(x[size_t(d)])) b = nan_bits(in);
        store_bits(&bytes[size_t(d * fmt_bytes(in))], in, b);
    }
    Buf key = to_device(be, bytes);
    Buf slot = to_device(be, std::vector<int64_t>{0});
    pkv_tensor kt = make_tensor(key.ptr(), fmt_dtype(in), dev, {1, 1, D}, {D, D, 1});
    pkv_tensor st = make_tensor(slot.ptr(), PKV_DTYPE_INT64, dev, {1}, {1});
    EXPECT_EQ(pkv_write_kv(&v, &kt, nullptr, &st, nullptr, nullptr), PKV_SUCCESS) << pkv_last_error_message();
    device_sync(be);
    Hand h;
    h.codes = codes.download_all();
    std::vector<uint8_t> p = plane.download_all();
    std::memcpy(&h.scale_bits, p.data(), 4);
    return h;
}

std::vector<uint8_t> i8(std::initializer_list<int> v) {
    std::vector<uint8_t> out;
    for (int x : v) out.push_back(uint8_t(int8_t(x)));
    return out;
}

TEST(TokenHeadMisc, Int8TiesToEven) {
    // amax 127 -> s = 1 exactly, inv = 1: the codes are rne(x).
    const Hand h = hand_write(THFmt::INT8, Fmt::F32, {127.0f, 0.5f, 1.5f, 2.5f, -0.5f, -1.5f, -2.5f, 3.5f});
    EXPECT_EQ(h.codes, i8({127, 0, 2, 2, 0, -2, -2, 4}));
    EXPECT_EQ(h.scale_bits, f32_bits(1.0f));
    // amax 254 -> s = 2, inv = 0.5.
    const Hand g = hand_write(THFmt::INT8, Fmt::BF16, {-254.0f, 1.0f, 3.0f, 5.0f, 7.0f, -1.0f, -3.0f, 254.0f});
    EXPECT_EQ(g.codes, i8({-127, 0, 2, 2, 4, 0, -2, 127}));
    EXPECT_EQ(g.scale_bits, f32_bits(2.0f));
}

TEST(TokenHeadMisc, Int8EqualZeroAndTinyRows) {
    const Hand eq = hand_write(THFmt::INT8, Fmt::F16, std::vector<float>(8, 3.0f));
    EXPECT_EQ(eq.codes, std::vector<uint8_t>(8, 127));
    EXPECT_EQ(eq.scale_bits, f32_bits(3.0f / 127.0f));
    const Hand neg = hand_write(THFmt::INT8, Fmt::F32, std::vector<float>(8, -0.25f));
    EXPECT_EQ(neg.codes, i8({-127, -127, -127, -127, -127, -127, -127, -127}));
    const Hand zero = hand_write(THFmt::INT8, Fmt::BF16, std::vector<float>(8, 0.0f));
    EXPECT_EQ(zero.codes, std::vector<uint8_t>(8, 0));
    EXPECT_EQ(zero.scale_bits, f32_bits(1e-6f)) << "an all-zero row keeps the 1e-6 floor";
    // amax 1e-5: amax / 127 < 1e-6, so s = 1e-6 and the codes are rne(x * 1e6).
    const Hand tiny = hand_write(THFmt::INT8, Fmt::F32, {1e-5f, -1e-5f, 2.5e-6f, 0.0f, 5e-7f, 1.5e-6f, -3e-6f, 1e-4f * 0.0f});
    EXPECT_EQ(tiny.scale_bits, f32_bits(1e-6f));
    EXPECT_EQ(tiny.codes[0], uint8_t(10));
    EXPECT_EQ(tiny.codes[1], uint8_t(int8_t(-10)));
    EXPECT_EQ(tiny.codes[6], uint8_t(int8_t(-3)));
}

TEST(TokenHeadMisc, Fp8HandVectors) {
    // amax 448 -> s = 1: codes are the e4m3 encodings, ties to even.
    const float t10 = std::ldexp(1.0f, -10);
    const Hand h = hand_write(THFmt::FP8, Fmt::F32, {448.0f, 1.0f, -2.0f, 0.0f, 17.0f, std::ldexp(1.0f, -9), t10, 3 * t10});
    EXPECT_EQ(h.codes, std::vector<uint8_t>({0x7E, 0x38, 0xC0, 0x00, 0x58, 0x01, 0x00, 0x02}));
    EXPECT_EQ(h.scale_bits, f32_bits(1.0f));
    // amax 896 -> s = 2.
    const Hand g = hand_write(THFmt::FP8, Fmt::BF16, {-896.0f, 2.0f, 34.0f, 0.0f, 1.0f, -1.0f, 36.0f, 896.0f});
    EXPECT_EQ(g.codes, std::vector<uint8_t>({0xFE, 0x38, 0x58, 0x00, 0x30, 0xB0, 0x59, 0x7E}));
    EXPECT_EQ(g.scale_bits, f32_bits(2.0f));
    const Hand zero = hand_write(THFmt::FP8, Fmt::F16, std::vector<float>(8, 0.0f));
    EXPECT_EQ(zero.codes, std::vector<uint8_t>(8, 0));
    EXPECT_EQ(zero.scale_bits, f32_bits(1e-6f));
    const Hand eq = hand_write(THFmt::FP8, Fmt::F32, std::vector<float>(8, -5.0f));
    EXPECT_EQ(eq.codes, std::vector<uint8_t>(8, 0xFE));  // -448
    EXPECT_EQ(eq.scale_bits, f32_bits(5.0f / 448.0f));
}

TEST(TokenHeadMisc, NonFiniteRows) {
    const float nan = std::numeric_limits<float>::quiet_NaN(), inf = std::numeric_limits<float>::infinity();
    for (Fmt in : {Fmt::F32, Fmt::F16, Fmt::BF16})
        for (float bad : {nan, inf, -inf}) {
            SCOPED_TRACE(std::string(fmt_name(in)) + " " + std::to_string(bad));
            const std::vector<float> row = {1.0f, -2.0f, bad, 0.5f, 100.0f, 0.0f, -7.0f, 3.0f};
            const Hand a = hand_write(THFmt::INT8, in, row);
            EXPECT_EQ(a.scale_bits, kNanScaleBits);
            EXPECT_EQ(a.codes, std::vector<uint8_t>(8, 0));
            const Hand b = hand_write(THFmt::FP8, in, row);
            EXPECT_EQ(b.scale_bits, kNanScaleBits);
            EXPECT_EQ(b.codes, std::vector<uint8_t>(8, 0x7F));
            if (cuda_usable()) {
                const Hand ca = hand_write(THFmt::INT8, in, row, Backend::CUDA);
                EXPECT_EQ(ca.scale_bits, kNanScaleBits);
                EXPECT_EQ(ca.codes, a.codes);
                const Hand cb = hand_write(THFmt::FP8, in, row, Backend::CUDA);
                EXPECT_EQ(cb.scale_bits, kNanScaleBits);
                EXPECT_EQ(cb.codes, b.codes);
            }
        }
}

TEST(TokenHeadMisc, GatherHandVectors) {
    // One slot, D = 4: codes and scale set by hand; out = float(q) * s, rounded to the dtype.
    for (THFmt f : {THFmt::INT8, THFmt::FP8}) {
        const std::vector<uint8_t> codes = f == THFmt::INT8 ? i8({-128, -1, 3, 127}) : std::vector<uint8_t>{0xFE, 0x38, 0x01, 0x7F};
        const float s = 0.25f;
        const std::vector<float> want = f == THFmt::INT8
                                            ? std::vector<float>{-32.0f, -0.25f, 0.75f, 31.75f}
                                            : std::vector<float>{-112.0f, 0.25f, std::ldexp(1.0f, -11), NAN};
        Buf cache = to_device(Backend::CPU, codes);
        Buf plane = to_device(Backend::CPU, std::vector<float>{s});
        const pkv_device dev = backend_device(Backend::CPU);
        pkv_cache_view v = PKV_CACHE_VIEW_INIT;
        v.format = th_format(f);
        v.device = dev;
        v.num_blocks = v.block_size = v.num_heads = 1;
        v.head_size_k = 4;
        v.k_data = cache.ptr();
        v.k_scale_plane = reinterpret_cast<float *>(plane.ptr());
        std::vector<float> out(4, 123.0f);
        std::vector<int32_t> table = {0}, cu = {0, 1};
        pkv_tensor ot = make_tensor(out.data(), PKV_DTYPE_F32, dev, {1, 1, 4}, {4, 4, 1});
        pkv_tensor bt = make_tensor(table.data(), PKV_DTYPE_INT32, dev, {1, 1}, {1, 1});
        pkv_tensor ct = make_tensor(cu.data(), PKV_DTYPE_INT32, dev, {2}, {1});
        ASSERT_EQ(pkv_gather_kv(&ot, nullptr, &v, &bt, &ct, nullptr, nullptr, nullptr), PKV_SUCCESS)
            << pkv_last_error_message();
        for (int i = 0; i < 4; ++i) {
            if (std::isnan(want[size_t(i)])) EXPECT_EQ(f32_bits(out[size_t(i)]), 0x7FFFFFFFu) << i;
            else EXPECT_EQ(out[size_t(i)], want[size_t(i)]) << th_name(f) << " element " << i;
        }
    }
}

// ----------------------------------------------------------------------------- errors
TEST(TokenHeadMisc, Errors) {
    const pkv_device cpu = backend_device(Backend::CPU);
    const THGeom g = make_th_geom(THLayout::NHD, 2, 4, 2, 16, 16, true);
    Rng r(3);
    const std::vector<uint8_t> cache0 = random_bytes(r, g.bytes);
    Buf cache = to_device(Backend::CPU, cache0);
    std::vector<float> kv(size_t(3 * 2 * 16), 1.0f);
    std::vector<int64_t> slots = {0, 5, 7};
    pkv_tensor kt = make_tensor(kv.data(), PKV_DTYPE_F32, cpu, {3, 2, 16}, {32, 16, 1});
    pkv_tensor st = make_tensor(slots.data(), PKV_DTYPE_INT64, cpu, {3}, {1});
    for (THFmt f : {THFmt::INT8, THFmt::FP8}) {
        pkv_cache_view v = make_th_view(f, g, cache.ptr(), cpu);
        v.k_scale_plane = nullptr;
        EXPECT_TRUE(failed_with(pkv_write_kv(&v, &kt, &kt, &st, nullptr, nullptr), PKV_ERROR_INVALID_ARGUMENT,
                                "pkv_write_kv", {"k_scale_plane"}));
        v = make_th_view(f, g, cache.ptr(), cpu);
        v.v_scale_plane = nullptr;
        EXPECT_TRUE(failed_with(pkv_write_kv(&v, &kt, &kt, &st, nullptr, nullptr), PKV_ERROR_INVALID_ARGUMENT,
                                "pkv_write_kv", {"v_scale_plane"}));
        v = make_th_view(f, g, cache.ptr(), cpu);
        v.k_scale_stride_slot = 6;  // not a multiple of 4
        EXPECT_TRUE(failed_with(pkv_write_kv(&v, &kt, &kt, &st, nullptr, nullptr), PKV_ERROR_INVALID_ARGUMENT,
                                "pkv_write_kv", {"scale_plane"}));
        v = make_th_view(f, g, cache.ptr(), cpu);
        v.k_scale_plane = nullptr;
        std::vector<float> out(size_t(3 * 2 * 16));
        std::vector<int32_t> table = {0, 1}, cu = {0, 3};
        pkv_tensor ot = make_tensor(out.data(), PKV_DTYPE_F32, cpu, {3, 2, 16}, {32, 16, 1});
        pkv_tensor bt = make_tensor(table.data(), PKV_DTYPE_INT32, cpu, {1, 2}, {2, 1});
        pkv_tensor ct = make_tensor(cu.data(), PKV_DTYPE_INT32, cpu, {2}, {1});
        EXPECT_TRUE(failed_with(pkv_gather_kv(&ot, nullptr, &v, &bt, &ct, nullptr, nullptr, nullptr),
                                PKV_ERROR_INVALID_ARGUMENT, "pkv_gather_kv", {"k_scale_plane"}));
    }
    EXPECT_EQ(cache.download_all(), cache0) << "a failed call must leave the cache untouched";
}

}  // namespace
}  // namespace pkvt
