// The Hadamard-rotated per-token-head formats (INT4, INT2): pkv_write_kv and pkv_gather_kv
// against a test-side reference written from the op orders of src/core/hadamard.h, on the CPU
// backend and (with a device) on the CUDA backend, whose bytes are also compared with the CPU
// backend's. Every case poisons the cache, its scale planes and the gather outputs with random
// bytes and compares whole images, so padding tokens, out-of-range slots and rows past
// cu_seq_lens must leave their bytes untouched.
#include <cmath>

#include "core/hadamard.h"
#include "test_common.h"

namespace pkvt {
namespace {

// =============================================================================== reference
// Written from the definitions in src/core/hadamard.h (none of its code is used here).
void ref_fwht(std::vector<float> &v) {
    const size_t n = v.size();
    for (size_t h = 1; h < n; h <<= 1)
        for (size_t i = 0; i < n; ++i)
            if ((i & h) == 0) {
                const float a = v[i], b = v[i + h];
                v[i] = a + b;
                v[i + h] = a - b;
            }
}

float round_to(Fmt f, float x) {
    if (f == Fmt::F32) return x;
    return oracle_to_float(f, oracle_encode(f, x));
}

int ref_rha(float t) {  // round half away from zero of t, clamped to [0, 15]
    float r = t >= 0.0f ? t + 0.5f : t - 0.5f;
    if (!(r >= 0.0f)) r = 0.0f;
    if (r > 15.0f) r = 15.0f;
    return int(r);
}

bool finite(float x) { return std::isfinite(x); }

// One row: codes (D/2 or D/4 bytes) and the scale bits.
struct RefRow {
    std::vector<uint8_t> codes;
    uint32_t scale_bits = 0;
};

RefRow ref_int4_write(const std::vector<float> &x, Fmt in, const std::vector<float> &signs) {
    const size_t d = x.size();
    std::vector<float> v(d);
    for (size_t i = 0; i < d; ++i) v[i] = std::signbit(signs[i]) ? -x[i] : x[i];
    ref_fwht(v);
    bool bad = false;
    float mn = INFINITY, mx = -INFINITY;
    for (size_t i = 0; i < d; ++i) {
        v[i] = round_to(in, v[i]);
        if (!finite(v[i])) bad = true;
        else { mn = std::min(mn, v[i]); mx = std::max(mx, v[i]); }
    }
    RefRow r;
    r.codes.assign(d / 2, 0);
    float s = (mx - mn) / 15.0f;
    if (!(s > 1e-6f)) s = 1e-6f;
    if (bad || !finite(s)) {
        r.scale_bits = 0x7FC00000u;
        return r;
    }
    const int z = ref_rha(-mn / s);
    const float inv = 1.0f / s;
    for (size_t i = 0; i < d; ++i) {
        const float t = std::fma(v[i], inv, float(z) + 0.5f);  // rounded once
        const int q = t >= 15.0f ? 15 : t >= 0.0f ? int(std::floor(t)) : 0;
        r.codes[i / 2] |= uint8_t(q << (4 * (i % 2)));
    }
    r.scale_bits = (f32_bits(s) & ~0xFu) | uint32_t(z);
    return r;
}

float ref_sum_squares(const std::vector<float> &v) {
    const size_t d = v.size(), k = std::min<size_t>(d, 16), c = d / k;
    std::vector<float> p(c, 0.0f);
    for (size_t j = 0; j < c; ++j)
        for (size_t i = 0; i < k; ++i) {
            p[j] = std::fma(v[j * k + i], v[j * k + i], p[j]);
        }
    for (size_t off = c / 2; off >= 1; off >>= 1) {
        std::vector<float> q(c);
        for (size_t j = 0; j < c; ++j) q[j] = p[j] + p[j ^ off];
        p = q;
    }
    return p[0];
}

RefRow ref_int2_write(const std::vector<float> &x) {
    const size_t d = x.size();
    std::vector<float> v = x;
    ref_fwht(v);
    bool bad = false;
    for (float e : v) bad |= !finite(e);
    const float n = std::sqrt(ref_sum_squares(v) + 1e-12f);
    RefRow r;
    r.codes.assign(d / 4, 0);
    if (bad || !finite(n)) {
        r.scale_bits = 0x7FC00000u;
        return r;
    }
    const float root = std::sqrt(float(d));
    const float f = root / n;
    for (size_t i = 0; i < d; ++i) {
        // The exact product |x'| f decides (double holds it exactly); -0 counts as negative.
        const bool big = std::fabs(double(v[i])) * double(f) >= double(0.9816f);
        const uint32_t c = std::signbit(v[i]) ? (big ? 0 : 1) : (big ? 3 : 2);
        r.codes[i / 4] |= uint8_t(c << (2 * (i % 4)));
    }
    r.scale_bits = f32_bits(n / (float(d) * root));
    return r;
}

// Dequantized row: the rotated domain x^', or the original domain.
std::vector<float> ref_read(bool int4, const uint8_t *codes, uint32_t scale_bits, size_t d,
                            const std::vector<float> &signs, bool rotated_domain) {
    std::vector<float> v(d);
    if (int4) {
        // Rotated domain s~ * (q - z); original domain signs ⊙ (sigma * H (q - z)), H exact.
        const int z = int(scale_bits & 0xF);
        const float s = f32_from_bits(scale_bits & ~0xFu);
        std::vector<int64_t> w(d);
        for (size_t i = 0; i < d; ++i) w[i] = int((codes[i / 2] >> (4 * (i % 2))) & 0xF) - z;
        if (rotated_domain) {
            for (size_t i = 0; i < d; ++i) v[i] = s * float(w[i]);
            return v;
        }
        std::vector<int64_t> h(d, 0);
        for (size_t i = 0; i < d; ++i)
            for (size_t j = 0; j < d; ++j) h[i] += (__builtin_popcountll(i & j) & 1) ? -w[j] : w[j];
        const float sigma = s * (1.0f / float(d));
        for (size_t i = 0; i < d; ++i) {
            const float e = sigma * float(h[i]);
            v[i] = std::signbit(signs[i]) ? -e : e;
        }
        return v;
    }
    static const float c[4] = {-1.5104f, -0.4528f, 0.4528f, 1.5104f};
    const float scale = f32_from_bits(scale_bits);
    if (rotated_domain) {
        const float f = scale * float(d);
        for (size_t i = 0; i < d; ++i) v[i] = c[(codes[i / 4] >> (2 * (i % 4))) & 3] * f;
        return v;
    }
    for (size_t i = 0; i < d; ++i) v[i] = c[(codes[i / 4] >> (2 * (i % 4))) & 3] * scale;
    ref_fwht(v);
    return v;
}

uint32_t ref_output_bits(Fmt out, float x) {
    if (std::isnan(x)) return out == Fmt::F32 ? 0x7FFFFFFFu : 0x7FFFu;
    return oracle_encode(out, x);
}

std::vector<float> default_signs(int64_t n) {
    std::vector<float> s(static_cast<size_t>(n), 0.0f);
    EXPECT_EQ(pkv_default_rotation_signs(s.data(), n), PKV_SUCCESS);
    return s;
}

// =============================================================================== cache geometry
enum class Plane { SEPARATE, SEPARATE_HND, INLINE };
const char *plane_name(Plane p) {
    return p == Plane::SEPARATE ? "sep" : p == Plane::SEPARATE_HND ? "hnd" : "inline";
}

// Byte offsets (from the buffer start) of a rotated cache: K and V code rows and scale planes.
struct RotGeom {
    bool int4 = true, has_v = true;
    Plane plane = Plane::SEPARATE;
    int64_t NB = 0, BS = 0, H = 0, D[2] = {0, 0};
    int64_t row[2] = {0, 0};                   // code bytes of a head row
    int64_t off[2] = {0, 0}, sb[2] = {0, 0}, ss[2] = {0, 0}, sh[2] = {0, 0};
    int64_t poff[2] = {0, 0}, psb[2] = {0, 0}, pss[2] = {0, 0}, psh[2] = {0, 0};
    size_t bytes = 0;

    int64_t code_at(int side, int64_t b, int64_t s, int64_t h) const {
        return off[side] + b * sb[side] + s * ss[side] + h * sh[side];
    }
    int64_t scale_at(int side, int64_t b, int64_t s, int64_t h) const {
        return poff[side] + b * psb[side] + s * pss[side] + h * psh[side];
    }
};

RotGeom make_rot_geom(bool int4, int64_t NB, int64_t BS, int64_t H, int64_t Dk, int64_t Dv, bool has_v, Plane plane) {
    RotGeom g;
    g.int4 = int4; g.has_v = has_v; g.plane = plane; g.NB = NB; g.BS = BS; g.H = H;
    g.D[0] = Dk; g.D[1] = has_v ? Dv : 0;
    int64_t end = 32;  // a few leading bytes stay poisoned
    for (int side = 0; side < (has_v ? 2 : 1); ++side) {
        const int64_t r = g.row[side] = int4 ? g.D[side] / 2 : g.D[side] / 4;
        g.off[side] = end;
        if (plane == Plane::INLINE) {
            const int64_t rr = r + 4;
            g.sh[side] = rr; g.ss[side] = H * rr; g.sb[side] = BS * H * rr + 8;
            g.poff[side] = g.off[side] + r;
            g.psb[side] = g.sb[side]; g.pss[side] = g.ss[side]; g.psh[side] = g.sh[side];
            end = g.off[side] + NB * g.sb[side];
        } else {
            if (plane == Plane::SEPARATE) {
                g.sh[side] = r; g.ss[side] = H * r; g.sb[side] = BS * H * r;
            } else {  // HND data, HND plane with a padded block
                g.sh[side] = BS * r; g.ss[side] = r; g.sb[side] = H * BS * r + 3;
            }
            end = g.off[side] + NB * g.sb[side] + 5;
            g.poff[side] = round_up(end, 4) + 16;
            if (plane == Plane::SEPARATE) {
                g.psh[side] = 4; g.pss[side] = H * 4; g.psb[side] = BS * H * 4;
            } else {
                g.psh[side] = BS * 4; g.pss[side] = 4; g.psb[side] = H * BS * 4 + 12;
            }
            end = g.poff[side] + NB * g.psb[side] + 8;
        }
    }
    g.bytes = size_t(round_up(end + 64, 256));
    return g;
}

pkv_cache_view make_rot_view(const RotGeom &g, uint8_t *base, pkv_device dev) {
    pkv_cache_view v = PKV_CACHE_VIEW_INIT;
    v.format = g.int4 ? PKV_CACHE_FORMAT_INT4_PER_TOKEN_HEAD : PKV_CACHE_FORMAT_INT2_PER_TOKEN_HEAD;
    v.device = dev;
    v.num_blocks = g.NB;
    v.block_size = g.BS;
    v.num_heads = g.H;
    v.head_size_k = g.D[0];
    v.head_size_v = g.has_v ? g.D[1] : 0;
    v.k_data = base + g.off[0];
    v.k_stride_block = g.sb[0]; v.k_stride_slot = g.ss[0]; v.k_stride_head = g.sh[0];
    v.k_scale_plane = reinterpret_cast<float *>(base + g.poff[0]);
    const bool default_plane = g.plane == Plane::SEPARATE;
    if (!default_plane) {
        v.k_scale_stride_block = g.psb[0]; v.k_scale_stride_slot = g.pss[0]; v.k_scale_stride_head = g.psh[0];
    }
    if (g.has_v) {
        v.v_data = base + g.off[1];
        v.v_stride_block = g.sb[1]; v.v_stride_slot = g.ss[1]; v.v_stride_head = g.sh[1];
        v.v_scale_plane = reinterpret_cast<float *>(base + g.poff[1]);
        if (!default_plane) {
            v.v_scale_stride_block = g.psb[1]; v.v_scale_stride_slot = g.pss[1]; v.v_scale_stride_head = g.psh[1];
        }
    }
    return v;
}

// =============================================================================== cases
struct RotCase {
    Backend be = Backend::CPU;
    bool int4 = true;
    Fmt in = Fmt::BF16;
    int64_t H = 2, Dk = 128, Dv = 128, BS = 16, NB = 6, T = 40;
    bool has_v = true;
    Plane plane = Plane::SEPARATE;
    bool slot64 = true;
    bool custom_signs = false;
    bool specials = false;  // NaN / Inf / huge rows
    int64_t misalign = 0;   // elements: input / output base shift and row padding
    std::string name;
};

std::string case_name(const ::testing::TestParamInfo<RotCase> &i) { return i.param.name; }

void PrintTo(const RotCase &c, std::ostream *os) {
    *os << c.name << " {be=" << backend_name(c.be) << (c.int4 ? " int4" : " int2") << " in=" << fmt_name(c.in)
        << " H=" << c.H << " Dk=" << c.Dk << " Dv=" << c.Dv << " BS=" << c.BS << " NB=" << c.NB << " T=" << c.T
        << " has_v=" << c.has_v << " plane=" << plane_name(c.plane) << " slot64=" << c.slot64
        << " custom_signs=" << c.custom_signs << " specials=" << c.specials << " misalign=" << c.misalign << "}";
}

std::vector<RotCase> rot_cases(Backend be) {
    std::vector<RotCase> v;
    auto add = [&](RotCase c, const std::string &n) {
        c.be = be;
        c.name = std::string(c.int4 ? "int4_" : "int2_") + n;
        v.push_back(c);
    };
    for (bool int4 : {true, false}) {
        RotCase base;
        base.int4 = int4;
        for (int64_t d : {2, 4, 8, 16, 32, 64, 128, 256, 512, 1024}) {
            if (!int4 && d < 4) continue;
            RotCase c = base;
            c.Dk = c.Dv = d;
            c.T = d >= 512 ? 20 : 40;
            add(c, "d" + std::to_string(d));
        }
        for (Fmt f : {Fmt::F32, Fmt::F16, Fmt::BF16}) {
            RotCase c = base;
            c.in = f;
            c.Dk = c.Dv = 64;
            c.slot64 = false;
            add(c, std::string("d64_") + fmt_name(f) + "_i32");
        }
        { RotCase c = base; c.Dk = 128; c.Dv = 64; c.H = 3; add(c, "diffkv_128_64"); }
        { RotCase c = base; c.Dk = 64; c.Dv = 256; c.in = Fmt::F16; add(c, "diffkv_64_256"); }
        { RotCase c = base; c.has_v = false; c.Dk = 64; add(c, "konly_d64"); }
        { RotCase c = base; c.BS = 1; c.NB = 64; c.Dk = c.Dv = 32; add(c, "bs1_d32"); }
        { RotCase c = base; c.plane = Plane::INLINE; add(c, "inline_d128"); }
        { RotCase c = base; c.plane = Plane::INLINE; c.Dk = 64; c.Dv = 16; c.in = Fmt::F32; add(c, "inline_d64_16"); }
        { RotCase c = base; c.plane = Plane::SEPARATE_HND; c.Dk = c.Dv = 128; c.H = 4; add(c, "hnd_d128"); }
        { RotCase c = base; c.custom_signs = true; c.Dk = 128; c.Dv = 32; add(c, "signs_128_32"); }
        { RotCase c = base; c.specials = true; c.in = Fmt::F16; c.Dk = c.Dv = 64; add(c, "specials_f16"); }
        { RotCase c = base; c.specials = true; c.in = Fmt::F32; c.Dk = c.Dv = 8; add(c, "specials_f32_d8"); }
        { RotCase c = base; c.misalign = 1; c.in = Fmt::F16; c.Dk = c.Dv = 256; add(c, "misaligned_d256"); }
        { RotCase c = base; c.misalign = 1; c.in = Fmt::F32; c.Dk = c.Dv = 16; c.plane = Plane::INLINE; add(c, "misaligned_inline_d16"); }
        { RotCase c = base; c.H = 8; c.NB = 40; c.T = 600; c.Dk = c.Dv = 128; add(c, "many_tokens"); }
    }
    return v;
}

// What one backend produced.
struct Result {
    std::vector<uint8_t> cache;
    int64_t write_oor = 0, gather_oor[2] = {0, 0};
    std::vector<uint8_t> out_k[2], out_v[2];  // [domain]: 0 original, 1 rotated
};

struct Inputs {
    int64_t rs[2] = {0, 0};           // row stride (elements)
    std::vector<uint8_t> bytes[2];    // encoded key / value buffers
    std::vector<float> values[2];     // decoded, [T][H][D]
    std::vector<int64_t> slots;
    std::vector<float> signs[2];      // host copy of the signs in effect
    std::vector<uint8_t> cache_poison;
    std::vector<uint8_t> out_poison[2];
    std::vector<bool> special_row;    // [T * H * 2]
    int64_t N = 0;                    // gather output rows
    int64_t expected_write_oor = 0;
};

Inputs make_inputs(const RotCase &c, const RotGeom &g, uint64_t seed) {
    Rng r(seed);
    Inputs in;
    const int e = fmt_bytes(c.in);
    const int64_t T_pad = c.T + 2;
    in.special_row.assign(size_t(c.T * c.H * 2), false);
    for (int side = 0; side < (c.has_v ? 2 : 1); ++side) {
        const int64_t D = g.D[side];
        in.rs[side] = c.H * D + (c.misalign ? 3 : 0);
        in.bytes[side].assign(size_t((c.misalign + T_pad * in.rs[side]) * e), 0);
        r.bytes(in.bytes[side].data(), in.bytes[side].size());  // rows past T: garbage, never read
        in.values[side].assign(size_t(c.T * c.H * D), 0.0f);
        for (int64_t t = 0; t < c.T; ++t)
            for (int64_t h = 0; h < c.H; ++h) {
                const double row_scale = std::pow(10.0, -2.0 + 3.0 * r.uni());
                // Rows with an offset: the signs spread it over the INT4 row; INT2 has no signs.
                const double mean = c.int4 && D >= 16 && r.chance(0.3) ? r.normal() * row_scale : 0.0;
                for (int64_t d = 0; d < D; ++d) {
                    float x = float(mean + r.normal() * row_scale);
                    uint32_t b = oracle_encode(c.in, x);
                    if (c.specials && t % 5 == 3 && h == 0 && d == (t * 7) % D) {
                        const int kind = int((t / 5) % 4);
                        if (kind == 0) b = nan_bits(c.in);
                        else if (kind == 1) b = oracle_encode(c.in, side ? -INFINITY : INFINITY);
                        else if (kind == 2) b = oracle_encode(c.in, c.in == Fmt::F16 ? 60000.0f : 3.0e38f);
                        else b = oracle_encode(c.in, -0.0f);
                        in.special_row[size_t((t * c.H + h) * 2 + side)] = kind != 3;
                    }
                    store_bits(&in.bytes[side][size_t((c.misalign + t * in.rs[side] + h * D + d) * e)], c.in, b);
                    in.values[side][size_t((t * c.H + h) * D + d)] = oracle_to_float(c.in, b);
                }
            }
        if (c.int4) {
            if (c.custom_signs) {
                in.signs[side].resize(size_t(D));
                for (auto &s : in.signs[side]) s = r.chance(0.5) ? -1.0f : 1.0f;
            } else {
                in.signs[side] = default_signs(D);
            }
        }
    }
    // Unique slots; token 1 and every 9th are padding, token 2 is out of range.
    const int64_t num_slots = c.NB * c.BS;
    std::vector<int64_t> perm(static_cast<size_t>(num_slots));
    for (int64_t i = 0; i < num_slots; ++i) perm[size_t(i)] = i;
    r.shuffle(perm);
    in.slots.resize(size_t(c.T));
    for (int64_t t = 0; t < c.T; ++t) {
        int64_t s = perm[size_t(t % num_slots)];
        if (t == 1 || t % 9 == 8) s = t % 2 ? -1 : -(t + 100);
        if (t == 2 || t == c.T - 1) {
            s = num_slots + t;
            ++in.expected_write_oor;
        }
        in.slots[size_t(t)] = s;
    }
    in.cache_poison = random_bytes(r, g.bytes);
    in.N = num_slots + 2 + 3;
    for (int side = 0; side < (c.has_v ? 2 : 1); ++side)
        in.out_poison[side] = random_bytes(r, size_t((c.misalign + in.N * c.H * g.D[side]) * fmt_bytes(c.in)));
    return in;
}

// The expected result, from the reference.
Result reference(const RotCase &c, const RotGeom &g, const Inputs &in) {
    Result res;
    res.cache = in.cache_poison;
    const int64_t num_slots = c.NB * c.BS;
    for (int64_t t = 0; t < c.T; ++t) {
        const int64_t slot = in.slots[size_t(t)];
        if (slot < 0) continue;
        if (slot >= num_slots) { ++res.write_oor; continue; }
        const int64_t b = slot / c.BS, s = slot % c.BS;
        for (int side = 0; side < (c.has_v ? 2 : 1); ++side)
            for (int64_t h = 0; h < c.H; ++h) {
                const int64_t D = g.D[side];
                std::vector<float> x(in.values[side].begin() + (t * c.H + h) * D,
                                     in.values[side].begin() + (t * c.H + h + 1) * D);
                const RefRow row = c.int4 ? ref_int4_write(x, c.in, in.signs[side]) : ref_int2_write(x);
                std::memcpy(&res.cache[size_t(g.code_at(side, b, s, h))], row.codes.data(), row.codes.size());
                std::memcpy(&res.cache[size_t(g.scale_at(side, b, s, h))], &row.scale_bits, 4);
            }
    }
    // Gather: request 0 = every block in order, request 1 = 2 rows of an out-of-range block.
    for (int dom = 0; dom < 2; ++dom) {
        for (int side = 0; side < (c.has_v ? 2 : 1); ++side) {
            std::vector<uint8_t> out = in.out_poison[side];
            const int64_t D = g.D[side];
            for (int64_t row = 0; row < num_slots; ++row) {
                const int64_t b = row / c.BS, s = row % c.BS;
                for (int64_t h = 0; h < c.H; ++h) {
                    uint32_t bits;
                    std::memcpy(&bits, &res.cache[size_t(g.scale_at(side, b, s, h))], 4);
                    const std::vector<float> x = ref_read(c.int4, &res.cache[size_t(g.code_at(side, b, s, h))],
                                                          bits, size_t(D), in.signs[side], dom == 1);
                    for (int64_t d = 0; d < D; ++d)
                        store_bits(&out[size_t((c.misalign + (row * c.H + h) * D + d) * fmt_bytes(c.in))], c.in,
                                   ref_output_bits(c.in, x[size_t(d)]));
                }
            }
            (side ? res.out_v : res.out_k)[dom] = out;
        }
        res.gather_oor[dom] = 2;
    }
    return res;
}

Result run_backend(Backend be, const RotCase &c, const RotGeom &g, const Inputs &in) {
    Result res;
    const pkv_device dev = backend_device(be);
    Buf cache = to_device(be, in.cache_poison);
    pkv_cache_view view = make_rot_view(g, cache.ptr(), dev);
    Buf signs[2];
    if (c.custom_signs) {
        signs[0] = to_device(be, in.signs[0]);
        view.k_rotation_signs = reinterpret_cast<const float *>(signs[0].ptr());
        if (c.has_v) {
            signs[1] = to_device(be, in.signs[1]);
            view.v_rotation_signs = reinterpret_cast<const float *>(signs[1].ptr());
        }
    }
    const pkv_dtype dt = fmt_dtype(c.in);
    Buf src[2];
    pkv_tensor rows[2];
    const int e = fmt_bytes(c.in);
    for (int side = 0; side < (c.has_v ? 2 : 1); ++side) {
        src[side] = to_device(be, in.bytes[side]);
        rows[side] = make_tensor(src[side].ptr() + c.misalign * e, dt, dev, {c.T + 2, c.H, g.D[side]},
                                 {in.rs[side], g.D[side], 1});
    }
    std::vector<uint8_t> slot_bytes;
    if (c.slot64) {
        slot_bytes = as_bytes(in.slots);
    } else {
        std::vector<int32_t> s32(in.slots.begin(), in.slots.end());
        slot_bytes = as_bytes(s32);
    }
    Buf slots = to_device(be, slot_bytes);
    const pkv_tensor slot_t =
        make_tensor(slots.ptr(), c.slot64 ? PKV_DTYPE_INT64 : PKV_DTYPE_INT32, dev, {c.T}, {1});
    Buf counter = to_device(be, std::vector<int64_t>{0});
    int64_t *oor = reinterpret_cast<int64_t *>(counter.ptr());
    EXPECT_EQ(pkv_write_kv(&view, &rows[0], c.has_v ? &rows[1] : nullptr, &slot_t, oor, nullptr), PKV_SUCCESS)
        << pkv_last_error_message();
    device_sync(be);
    res.cache = cache.download_all();
    counter.download(&res.write_oor, 8);

    // Gather
    std::vector<int32_t> table(size_t(2 * c.NB), 0);
    for (int64_t b = 0; b < c.NB; ++b) {
        table[size_t(b)] = int32_t(b);
        table[size_t(c.NB + b)] = int32_t(c.NB + 7);
    }
    const int64_t num_slots = c.NB * c.BS;
    Buf bt = to_device(be, table);
    Buf cu = to_device(be, std::vector<int32_t>{0, int32_t(num_slots), int32_t(num_slots + 2)});
    const pkv_tensor bt_t = make_tensor(bt.ptr(), PKV_DTYPE_INT32, dev, {2, c.NB}, {c.NB, 1});
    const pkv_tensor cu_t = make_tensor(cu.ptr(), PKV_DTYPE_INT32, dev, {3}, {1});
    for (int dom = 0; dom < 2; ++dom) {
        view.flags = dom ? PKV_CACHE_VIEW_ROTATED_DOMAIN : 0;
        Buf out[2];
        pkv_tensor out_t[2];
        for (int side = 0; side < (c.has_v ? 2 : 1); ++side) {
            out[side] = to_device(be, in.out_poison[side]);
            out_t[side] = make_tensor(out[side].ptr() + c.misalign * e, dt, dev, {in.N, c.H, g.D[side]},
                                      {c.H * g.D[side], g.D[side], 1});
        }
        Buf gcounter = to_device(be, std::vector<int64_t>{0});
        EXPECT_EQ(pkv_gather_kv(&out_t[0], c.has_v ? &out_t[1] : nullptr, &view, &bt_t, &cu_t, nullptr,
                                reinterpret_cast<int64_t *>(gcounter.ptr()), nullptr),
                  PKV_SUCCESS)
            << pkv_last_error_message();
        device_sync(be);
        res.out_k[dom] = out[0].download_all();
        if (c.has_v) res.out_v[dom] = out[1].download_all();
        gcounter.download(&res.gather_oor[dom], 8);
    }
    return res;
}

void expect_same(const Result &want, const Result &got, const std::string &what) {
    EXPECT_TRUE(bytes_equal(want.cache, got.cache, nullptr, what + ": cache"));
    EXPECT_EQ(want.write_oor, got.write_oor) << what;
    for (int dom = 0; dom < 2; ++dom) {
        const std::string d = dom ? " (rotated domain)" : " (original domain)";
        EXPECT_TRUE(bytes_equal(want.out_k[dom], got.out_k[dom], nullptr, what + ": gathered K" + d));
        EXPECT_TRUE(bytes_equal(want.out_v[dom], got.out_v[dom], nullptr, what + ": gathered V" + d));
        EXPECT_EQ(want.gather_oor[dom], got.gather_oor[dom]) << what << d;
    }
}

class Rotated : public ::testing::TestWithParam<RotCase> {};

TEST_P(Rotated, MatchesReference) {
    const RotCase &c = GetParam();
    PKVT_SKIP_IF_NO_BACKEND(c.be);
    const RotGeom g = make_rot_geom(c.int4, c.NB, c.BS, c.H, c.Dk, c.Dv, c.has_v, c.plane);
    const Inputs in = make_inputs(c, g, std::hash<std::string>()(c.name));
    const Result want = reference(c, g, in);
    const Result got = run_backend(c.be, c, g, in);
    expect_same(want, got, std::string(backend_name(c.be)) + " vs reference");
    if (c.be == Backend::CUDA) expect_same(run_backend(Backend::CPU, c, g, in), got, "cuda vs cpu backend");

    // Round trip (original domain) on the written rows: relative RMS error.
    const int e = fmt_bytes(c.in);
    for (int side = 0; side < (c.has_v ? 2 : 1); ++side) {
        const int64_t D = g.D[side];
        double err = 0.0, ref = 0.0;
        for (int64_t t = 0; t < c.T; ++t) {
            const int64_t slot = in.slots[size_t(t)];
            if (slot < 0 || slot >= c.NB * c.BS) continue;
            for (int64_t h = 0; h < c.H; ++h) {
                if (in.special_row[size_t((t * c.H + h) * 2 + side)]) continue;
                for (int64_t d = 0; d < D; ++d) {
                    const std::vector<uint8_t> &out = side ? got.out_v[0] : got.out_k[0];
                    const double x = in.values[side][size_t((t * c.H + h) * D + d)];
                    const double y = oracle_to_float(
                        c.in, load_bits(&out[size_t((c.misalign + (slot * c.H + h) * D + d) * e)], c.in));
                    err += (x - y) * (x - y);
                    ref += x * x;
                }
            }
        }
        ASSERT_GT(ref, 0.0);
        const double rel = std::sqrt(err / ref);
        // INT4: 16 levels over the rotated row's range (about 0.1); at D = 2 the two values of a
        // row often share a sign and the zero point clamps to 0 (a property of the format).
        // INT2: 4-level Lloyd-Max, about 0.34 for Gaussian coordinates.
        const double bound = c.int4 ? (D == 2 ? 0.7 : D <= 64 ? 0.13 : 0.16) : 0.40;
        EXPECT_LT(rel, bound) << (side ? "V" : "K") << " relative RMS error, D=" << D;
    }
}


// Default signs passed explicitly give the bytes of the NULL (default) signs; other signs differ.
// (One geometry: runs with the int4_d128 case of each backend.)
TEST_P(Rotated, ExplicitDefaultSignsEqualNull) {
    if (GetParam().name != "int4_d128") return;
    const Backend be = GetParam().be;
    PKVT_SKIP_IF_NO_BACKEND(be);
    const int64_t D = 128, H = 2, T = 8;
    const RotGeom g = make_rot_geom(true, 2, 8, H, D, D, true, Plane::SEPARATE);
    Rng r(77);
    std::vector<uint16_t> x(static_cast<size_t>(T * H * D));
    for (auto &v : x) v = uint16_t(oracle_encode(Fmt::BF16, float(r.normal())));
    std::vector<int64_t> slots(static_cast<size_t>(T));
    for (int64_t t = 0; t < T; ++t) slots[size_t(t)] = 3 * t;
    const pkv_device dev = backend_device(be);
    Buf kb = to_device(be, x), vb = to_device(be, x), sb = to_device(be, slots);
    const pkv_tensor k = make_tensor(kb.ptr(), PKV_DTYPE_BF16, dev, {T, H, D}, {H * D, D, 1});
    const pkv_tensor v = make_tensor(vb.ptr(), PKV_DTYPE_BF16, dev, {T, H, D}, {H * D, D, 1});
    const pkv_tensor s = make_tensor(sb.ptr(), PKV_DTYPE_INT64, dev, {T}, {1});
    const std::vector<float> def = default_signs(D);
    std::vector<float> flipped = def;
    flipped[5] = -flipped[5];
    Buf def_b = to_device(be, def), flip_b = to_device(be, flipped);
    auto write = [&](const float *ks, const float *vs) {
        Buf cache(be, g.bytes);
        cache.fill(0, 0, g.bytes);
        pkv_cache_view view = make_rot_view(g, cache.ptr(), dev);
        view.k_rotation_signs = ks;
        view.v_rotation_signs = vs;
        EXPECT_EQ(pkv_write_kv(&view, &k, &v, &s, nullptr, nullptr), PKV_SUCCESS) << pkv_last_error_message();
        device_sync(be);
        return cache.download_all();
    };
    const auto *dp = reinterpret_cast<const float *>(def_b.ptr());
    const auto *fp = reinterpret_cast<const float *>(flip_b.ptr());
    const std::vector<uint8_t> null_signs = write(nullptr, nullptr);
    EXPECT_TRUE(bytes_equal(null_signs, write(dp, dp), nullptr, "explicit default signs"));
    EXPECT_FALSE(bytes_equal(null_signs, write(fp, dp), nullptr, "flipped K sign"));
    // Only K changed: the V half of the image is the same.
    const std::vector<uint8_t> kflip = write(fp, dp);
    EXPECT_TRUE(std::equal(null_signs.begin() + g.off[1], null_signs.end(), kflip.begin() + g.off[1]));
}

INSTANTIATE_TEST_SUITE_P(Cpu, Rotated, ::testing::ValuesIn(rot_cases(Backend::CPU)), case_name);
INSTANTIATE_TEST_SUITE_P(Cuda, Rotated, ::testing::ValuesIn(rot_cases(Backend::CUDA)), case_name);

// =============================================================================== misc (CPU)
// One K-only row of head size D written on the CPU with all-+1 signs; returns codes and scale.
RefRow write_one_row(bool int4, Fmt f, const std::vector<float> &x, bool plus_signs = true) {
    const int64_t D = int64_t(x.size());
    const RotGeom g = make_rot_geom(int4, 1, 1, 1, D, 0, false, Plane::SEPARATE);
    std::vector<uint8_t> cache(g.bytes, 0xCD);
    pkv_cache_view view = make_rot_view(g, cache.data(), backend_device(Backend::CPU));
    std::vector<float> ones(static_cast<size_t>(D), 1.0f);
    if (plus_signs) view.k_rotation_signs = ones.data();
    std::vector<uint8_t> in(x.size() * size_t(fmt_bytes(f)));
    for (size_t i = 0; i < x.size(); ++i) store_bits(&in[i * size_t(fmt_bytes(f))], f, oracle_encode(f, x[i]));
    const pkv_tensor k = make_tensor(in.data(), fmt_dtype(f), backend_device(Backend::CPU), {1, 1, D}, {D, D, 1});
    const int64_t slot = 0;
    const pkv_tensor s = make_tensor(const_cast<int64_t *>(&slot), PKV_DTYPE_INT64, backend_device(Backend::CPU),
                                     {1}, {1});
    EXPECT_EQ(pkv_write_kv(&view, &k, nullptr, &s, nullptr, nullptr), PKV_SUCCESS) << pkv_last_error_message();
    RefRow r;
    r.codes.assign(cache.begin() + g.off[0], cache.begin() + g.off[0] + g.row[0]);
    std::memcpy(&r.scale_bits, &cache[size_t(g.poff[0])], 4);
    return r;
}

// Gathers that one row back (CPU), original or rotated domain, as f32.
std::vector<float> read_one_row(bool int4, const RefRow &row, int64_t D, bool rotated) {
    const RotGeom g = make_rot_geom(int4, 1, 1, 1, D, 0, false, Plane::SEPARATE);
    std::vector<uint8_t> cache(g.bytes, 0);
    std::memcpy(&cache[size_t(g.off[0])], row.codes.data(), row.codes.size());
    std::memcpy(&cache[size_t(g.poff[0])], &row.scale_bits, 4);
    pkv_cache_view view = make_rot_view(g, cache.data(), backend_device(Backend::CPU));
    std::vector<float> ones(static_cast<size_t>(D), 1.0f);
    view.k_rotation_signs = ones.data();
    view.flags = rotated ? PKV_CACHE_VIEW_ROTATED_DOMAIN : 0;
    std::vector<float> out(static_cast<size_t>(D), -7.0f);
    const pkv_device cpu = backend_device(Backend::CPU);
    const pkv_tensor o = make_tensor(out.data(), PKV_DTYPE_F32, cpu, {1, 1, D}, {D, D, 1});
    int32_t bt = 0, cu[2] = {0, 1};
    const pkv_tensor bt_t = make_tensor(&bt, PKV_DTYPE_INT32, cpu, {1, 1}, {1, 1});
    const pkv_tensor cu_t = make_tensor(cu, PKV_DTYPE_INT32, cpu, {2}, {1});
    EXPECT_EQ(pkv_gather_kv(&o, nullptr, &view, &bt_t, &cu_t, nullptr, nullptr, nullptr), PKV_SUCCESS)
        << pkv_last_error_message();
    return out;
}

TEST(RotatedMisc, HadamardMatchesMatrixProduct) {
    Rng r(5);
    for (int d = 1; d <= 1024; d *= 2) {
        std::vector<float> x(static_cast<size_t>(d));
        for (auto &v : x) v = float(r.range(-8, 8));
        std::vector<float> y = x;
        pkv::rot::hadamard(y.data(), d);
        for (int i = 0; i < d; ++i) {
            double s = 0.0;
            for (int j = 0; j < d; ++j) s += (__builtin_popcount(unsigned(i & j)) & 1 ? -1.0 : 1.0) * x[size_t(j)];
            ASSERT_EQ(double(y[size_t(i)]), s) << "d=" << d << " i=" << i;
        }
        // H * H = D * I
        pkv::rot::hadamard(y.data(), d);
        for (int i = 0; i < d; ++i) ASSERT_EQ(y[size_t(i)], float(d) * x[size_t(i)]);
    }
}

TEST(RotatedMisc, DefaultSignsAreSplitmix) {
    const std::vector<float> s = default_signs(300);
    auto word = [](uint64_t k) {
        uint64_t z = 0x9E3779B9ull + (k + 1) * 0x9E3779B97F4A7C15ull;
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
        return z ^ (z >> 31);
    };
    int neg = 0;
    for (int i = 0; i < 300; ++i) {
        EXPECT_EQ(s[size_t(i)], (word(uint64_t(i) / 64) >> (i % 64)) & 1 ? -1.0f : 1.0f) << i;
        neg += s[size_t(i)] < 0;
    }
    EXPECT_GT(neg, 100);
    EXPECT_LT(neg, 200);
}

// x = H x' / 4 for hand-picked x' (exact in every dtype), all signs +1.
std::vector<float> from_rotated(const std::vector<float> &xr) {
    std::vector<float> x = xr;
    ref_fwht(x);
    for (auto &v : x) v /= float(xr.size());
    return x;
}

TEST(RotatedMisc, Int4HandCheckedRows) {
    struct Row {
        std::vector<float> xr;  // the rotated row x'
        uint8_t b0, b1;
        uint32_t scale_bits;
    };
    const Row rows[] = {
        // mn 0, mx 15: s 1, z 0; 7.5 rounds half away to 8.
        {{0.0f, 15.0f, 3.0f, 7.5f}, 0xF0, 0x83, 0x3F800000u},
        // z = 3 packed in the scale; 3.5 -> 4, 1.5 -> 2.
        {{-3.0f, 12.0f, 0.5f, -1.5f}, 0xF0, 0x24, 0x3F800003u},
        // ties where round-half-even would differ: 2.5 -> 3, 0.5 -> 1.
        {{-3.0f, 12.0f, -0.5f, -2.5f}, 0xF0, 0x13, 0x3F800003u},
        // -mn / s = 2.5 -> z = 3 (half away); 15.5 clamps to 15.
        {{-2.5f, 12.5f, 0.0f, 1.0f}, 0xF1, 0x43, 0x3F800003u},
    };
    for (Fmt f : {Fmt::F32, Fmt::BF16, Fmt::F16}) {
        for (const Row &row : rows) {
            const RefRow got = write_one_row(true, f, from_rotated(row.xr));
            ASSERT_EQ(got.codes.size(), 2u);
            EXPECT_EQ(got.codes[0], row.b0) << fmt_name(f) << " x'[0]=" << row.xr[0];
            EXPECT_EQ(got.codes[1], row.b1) << fmt_name(f) << " x'[0]=" << row.xr[0];
            EXPECT_EQ(got.scale_bits, row.scale_bits) << fmt_name(f) << " x'[0]=" << row.xr[0];
            // Rotated-domain gather: s~ * (q - z); original domain: exact inverse here.
            const std::vector<float> rot = read_one_row(true, got, 4, true);
            const std::vector<float> orig = read_one_row(true, got, 4, false);
            const int z = int(row.scale_bits & 0xF);
            for (int i = 0; i < 4; ++i) {
                const int q = (i % 2 ? got.codes[size_t(i / 2)] >> 4 : got.codes[size_t(i / 2)] & 0xF);
                EXPECT_EQ(rot[size_t(i)], float(q - z));
            }
            EXPECT_EQ(orig, from_rotated(rot));
        }
    }
    const uint32_t tiny = f32_bits(1e-6f) & ~0xFu;
    // Zeros: s = 1e-6 (truncated), z = 0, codes 0.
    RefRow r = write_one_row(true, Fmt::F32, {0.0f, 0.0f, 0.0f, 0.0f});
    EXPECT_EQ(r.scale_bits, tiny);
    EXPECT_EQ(r.codes, (std::vector<uint8_t>{0, 0}));
    // All-equal rows (x = c e_0 gives x' = c everywhere): s = 1e-6.
    r = write_one_row(true, Fmt::F32, {1.0f, 0.0f, 0.0f, 0.0f});
    EXPECT_EQ(r.scale_bits, tiny);  // -1 / 1e-6 clamps z to 0
    EXPECT_EQ(r.codes, (std::vector<uint8_t>{0xFF, 0xFF}));
    r = write_one_row(true, Fmt::F32, {-5e-6f, 0.0f, 0.0f, 0.0f});
    EXPECT_EQ(r.scale_bits, tiny | 5u);
    EXPECT_EQ(r.codes, (std::vector<uint8_t>{0, 0}));
    // NaN / Inf rows: NaN scale, codes 0; the gather gives NaN.
    for (float bad : {NAN, INFINITY, -INFINITY}) {
        for (Fmt f : {Fmt::F32, Fmt::BF16}) {
            r = write_one_row(true, f, {1.0f, bad, 2.0f, 3.0f});
            EXPECT_EQ(r.scale_bits, 0x7FC00000u);
            EXPECT_EQ(r.codes, (std::vector<uint8_t>{0, 0}));
            for (float v : read_one_row(true, r, 4, false)) EXPECT_EQ(f32_bits(v), 0x7FFFFFFFu);
        }
    }
    // A finite f16 row whose rotation overflows f16: NaN scale too.
    r = write_one_row(true, Fmt::F16, {60000.0f, 60000.0f, 60000.0f, 60000.0f});
    EXPECT_EQ(r.scale_bits, 0x7FC00000u);
}

TEST(RotatedMisc, Int2Codebook) {
    using namespace pkv::rot;
    Int2Quant p;
    p.f = 1.0f;  // z = x exactly
    const float t = 0.9816f;
    EXPECT_EQ(int2_code(-1000.0f, p), 0u);
    EXPECT_EQ(int2_code(std::nextafter(-t, -1.0f), p), 0u);
    EXPECT_EQ(int2_code(-t, p), 0u);  // |x| f >= T: big on both sides
    EXPECT_EQ(int2_code(std::nextafter(-t, 0.0f), p), 1u);
    EXPECT_EQ(int2_code(-1e-30f, p), 1u);
    EXPECT_EQ(int2_code(-0.0f, p), 1u);  // the sign bit decides
    EXPECT_EQ(int2_code(0.0f, p), 2u);
    EXPECT_EQ(int2_code(std::nextafter(t, 0.0f), p), 2u);
    EXPECT_EQ(int2_code(t, p), 3u);
    EXPECT_EQ(int2_code(1000.0f, p), 3u);
    {  // the exact product decides, not the rounded one: x * f < T although it rounds to T
        Int2Quant q;
        q.f = std::nextafter(1.0f, 2.0f);
        const float x = std::nextafter(std::nextafter(t, 0.0f), 0.0f);
        ASSERT_EQ(x * q.f, t);
        EXPECT_EQ(int2_code(x, q), 2u);
        EXPECT_EQ(int2_code(-x, q), 1u);
    }
    EXPECT_EQ(int2_centroid(0), -1.5104f);
    EXPECT_EQ(int2_centroid(1), -0.4528f);
    EXPECT_EQ(int2_centroid(2), 0.4528f);
    EXPECT_EQ(int2_centroid(3), 1.5104f);

    // End to end, D = 4: x' = (-1.5, -0.5, 0.5, 1.5), z = x' * 2 / sqrt(5) -> codes 0, 1, 2, 3.
    for (Fmt f : {Fmt::F32, Fmt::BF16, Fmt::F16}) {
        const RefRow r = write_one_row(false, f, from_rotated({-1.5f, -0.5f, 0.5f, 1.5f}), false);
        ASSERT_EQ(r.codes.size(), 1u);
        EXPECT_EQ(r.codes[0], 0xE4) << fmt_name(f);
        EXPECT_EQ(r.scale_bits, f32_bits(std::sqrt(5.0f + 1e-12f) / (4.0f * 2.0f))) << fmt_name(f);
        const std::vector<float> rot = read_one_row(false, r, 4, true);
        const float factor = f32_from_bits(r.scale_bits) * 4.0f;
        EXPECT_EQ(rot, (std::vector<float>{-1.5104f * factor, -0.4528f * factor, 0.4528f * factor, 1.5104f * factor}));
    }
    // Zeros: n = 1e-6, every z is 0 -> code 2; NaN row: NaN scale, codes 0.
    RefRow r = write_one_row(false, Fmt::F32, {0.0f, 0.0f, 0.0f, 0.0f}, false);
    EXPECT_EQ(r.codes[0], 0xAA);
    EXPECT_EQ(r.scale_bits, f32_bits(std::sqrt(1e-12f) / 8.0f));
    r = write_one_row(false, Fmt::F32, {0.0f, NAN, 0.0f, 0.0f}, false);
    EXPECT_EQ(r.codes[0], 0);
    EXPECT_EQ(r.scale_bits, 0x7FC00000u);
    // A finite row whose sum of squares overflows: NaN scale.
    r = write_one_row(false, Fmt::F32, {3e19f, 0.0f, 0.0f, 0.0f}, false);
    EXPECT_EQ(r.scale_bits, 0x7FC00000u);
}

TEST(RotatedMisc, InvalidHeadSizes) {
    for (bool int4 : {true, false}) {
        for (int64_t d : {int64_t(48), int64_t(int4 ? 1 : 2), int64_t(2048), int64_t(96)}) {
            const RotGeom g = make_rot_geom(int4, 2, 4, 1, d, d, true, Plane::SEPARATE);
            std::vector<uint8_t> cache(g.bytes + 4096, 0);
            pkv_cache_view view = make_rot_view(g, cache.data(), backend_device(Backend::CPU));
            std::vector<uint16_t> x(static_cast<size_t>(d), 0);
            const pkv_device cpu = backend_device(Backend::CPU);
            const pkv_tensor k = make_tensor(x.data(), PKV_DTYPE_BF16, cpu, {1, 1, d}, {d, d, 1});
            int64_t slot = 0;
            const pkv_tensor s = make_tensor(&slot, PKV_DTYPE_INT64, cpu, {1}, {1});
            EXPECT_TRUE(failed_with(pkv_write_kv(&view, &k, &k, &s, nullptr, nullptr), PKV_ERROR_INVALID_ARGUMENT,
                                    "pkv_write_kv", {"power of two"}))
                << "d=" << d;
            EXPECT_TRUE(std::all_of(cache.begin(), cache.end(), [](uint8_t b) { return b == 0; }));
        }
    }
    // A missing scale plane.
    const RotGeom g = make_rot_geom(true, 2, 4, 1, 64, 64, false, Plane::SEPARATE);
    std::vector<uint8_t> cache(g.bytes, 0);
    pkv_cache_view view = make_rot_view(g, cache.data(), backend_device(Backend::CPU));
    view.k_scale_plane = nullptr;
    EXPECT_EQ(pkv_cache_view_check(&view), PKV_ERROR_INVALID_ARGUMENT);
}

}  // namespace
}  // namespace pkvt
