// The library's numeric formats (src/core/numeric_formats.h, host build) against the test's own
// oracle (test_common.h: exact code values from ldexp, nearest search with ties to even).
//  - decode: every code of e4m3, e5m2, f16, bf16;
//  - encode: every code value, every midpoint between adjacent codes and its float neighbours,
//    +-0, subnormals, values past max (saturate for fp8, infinity for f16/bf16), +-inf, NaN,
//    and a million random floats across magnitudes (and random bit patterns).
#include "core/numeric_formats.h"
#include "test_common.h"

namespace pkvt {
namespace {

namespace lib = ::pkv::fmt;

float lib_decode(Fmt f, uint32_t c) {
    switch (f) {
        case Fmt::F16: return lib::f16_bits_to_f32(uint16_t(c));
        case Fmt::BF16: return lib::bf16_bits_to_f32(uint16_t(c));
        case Fmt::E4M3: return lib::e4m3_to_f32(uint8_t(c));
        case Fmt::E5M2: return lib::e5m2_to_f32(uint8_t(c));
        default: return f32_from_bits(c);
    }
}
uint32_t lib_encode(Fmt f, float x) {
    switch (f) {
        case Fmt::F16: return lib::f32_to_f16_bits(x);
        case Fmt::BF16: return lib::f32_to_bf16_bits(x);
        case Fmt::E4M3: return lib::f32_to_e4m3(x);
        case Fmt::E5M2: return lib::f32_to_e5m2(x);
        default: return f32_bits(x);
    }
}
uint32_t lib_encode_soft(Fmt f, float x) {
    switch (f) {
        case Fmt::F16: return lib::f32_to_f16_bits_soft(x);
        case Fmt::BF16: return lib::f32_to_bf16_bits_soft(x);
        case Fmt::E4M3: return lib::f32_to_e4m3_soft(x);
        case Fmt::E5M2: return lib::f32_to_e5m2_soft(x);
        default: return f32_bits(x);
    }
}

class Formats : public ::testing::TestWithParam<Fmt> {};

// The oracle itself, against hand-known values.
TEST(FormatsOracle, KnownValues) {
    EXPECT_EQ(oracle_decode(Fmt::E4M3, 0x7E), 448.0);
    EXPECT_EQ(oracle_decode(Fmt::E4M3, 0xFE), -448.0);
    EXPECT_EQ(oracle_decode(Fmt::E4M3, 0x38), 1.0);
    EXPECT_EQ(oracle_decode(Fmt::E4M3, 0x01), std::ldexp(1.0, -9));
    EXPECT_EQ(oracle_decode(Fmt::E4M3, 0x08), std::ldexp(1.0, -6));
    EXPECT_TRUE(std::isnan(oracle_decode(Fmt::E4M3, 0x7F)));
    EXPECT_TRUE(std::isnan(oracle_decode(Fmt::E4M3, 0xFF)));
    EXPECT_EQ(oracle_decode(Fmt::E5M2, 0x7B), 57344.0);
    EXPECT_EQ(oracle_decode(Fmt::E5M2, 0x3C), 1.0);
    EXPECT_EQ(oracle_decode(Fmt::E5M2, 0x01), std::ldexp(1.0, -16));
    EXPECT_TRUE(std::isinf(oracle_decode(Fmt::E5M2, 0x7C)));
    EXPECT_TRUE(std::isnan(oracle_decode(Fmt::E5M2, 0x7D)));
    EXPECT_EQ(oracle_decode(Fmt::F16, 0x3C00), 1.0);
    EXPECT_EQ(oracle_decode(Fmt::F16, 0x7BFF), 65504.0);
    EXPECT_EQ(oracle_decode(Fmt::F16, 0x0001), std::ldexp(1.0, -24));
    EXPECT_EQ(oracle_decode(Fmt::BF16, 0x3F80), 1.0);
    EXPECT_EQ(oracle_decode(Fmt::BF16, 0x0001), std::ldexp(1.0, -133));
    EXPECT_EQ(oracle_encode(Fmt::F16, 65519.99f), 0x7BFFu);
    EXPECT_EQ(oracle_encode(Fmt::F16, 65520.0f), 0x7C00u);
    EXPECT_EQ(oracle_encode(Fmt::E4M3, 1e9f), 0x7Eu);
    EXPECT_EQ(oracle_encode(Fmt::E4M3, -INFINITY), 0xFEu);
    EXPECT_EQ(oracle_encode(Fmt::E5M2, INFINITY), 0x7Bu);
    EXPECT_EQ(oracle_encode(Fmt::E4M3, 0.0f), 0x00u);
    EXPECT_EQ(oracle_encode(Fmt::E4M3, -0.0f), 0x80u);
    EXPECT_EQ(oracle_encode(Fmt::E4M3, 1.0625f), 0x38u);  // 1 + 1/16: tie -> even (1.0)
    EXPECT_EQ(oracle_encode(Fmt::E4M3, 1.1875f), 0x3Au);  // 1 + 3/16: tie -> even (1.25)
    EXPECT_EQ(oracle_encode(Fmt::BF16, 1.00390625f), 0x3F80u);  // 1 + 2^-8: tie -> even
}

TEST_P(Formats, DecodeEveryCode) {
    const Fmt f = GetParam();
    const uint32_t n = 1u << (8 * fmt_bytes(f));
    int64_t bad = 0;
    for (uint32_t c = 0; c < n; ++c) {
        const double want = oracle_decode(f, c);
        const float got = lib_decode(f, c);
        bool ok = std::isnan(want) ? std::isnan(got) : (f32_bits(got) == f32_bits(float(want)));
        if (!ok && bad++ < 8)
            ADD_FAILURE() << fmt_name(f) << " code 0x" << std::hex << c << std::dec << ": expected " << want << " got "
                          << got;
    }
    EXPECT_EQ(bad, 0);
}

// Inputs that probe every rounding boundary of the format, plus specials and random values.
std::vector<float> probe_inputs(Fmt f) {
    std::vector<float> xs;
    const OracleTable &t = oracle_table(f);
    const uint32_t last = t.saturating ? t.max_finite : t.top;
    for (uint32_t c = 0; c <= last; ++c) {
        const float v = float(t.pos[c]);
        if (std::isfinite(v)) {
            xs.push_back(v);
            xs.push_back(std::nextafter(v, INFINITY));
            xs.push_back(std::nextafter(v, 0.0f));
        }
        if (c < last) {
            const double mid = 0.5 * (t.pos[c] + t.pos[c + 1]);
            const float m = float(mid);
            if (double(m) == mid) {  // midpoints are exact in float for all these formats
                xs.push_back(m);
                xs.push_back(std::nextafter(m, INFINITY));
                xs.push_back(std::nextafter(m, 0.0f));
            } else {
                ADD_FAILURE() << "midpoint not exact in float: " << mid;
            }
        }
    }
    // Past the largest finite value.
    const double mx = t.pos[t.max_finite];
    for (double k : {1.0001, 1.03, 1.0625, 1.07, 1.5, 2.0, 10.0, 1e6})
        if (mx * k < 3.4e38) xs.push_back(float(mx * k));
    const float specials[] = {0.0f, INFINITY, std::numeric_limits<float>::max(), std::numeric_limits<float>::min(),
                              std::numeric_limits<float>::denorm_min(), 1e-30f, 1e-45f, 65504.f, 65519.f, 65520.f,
                              65536.f, 448.f, 464.f, 480.f, 57344.f, 61440.f, 3.3961776e38f, 3.3895314e38f};
    for (float s : specials) xs.push_back(s);
    Rng r(uint64_t(f) + 99);
    for (int i = 0; i < 400000; ++i) {
        const double lg = -48.0 + 180.0 * r.uni();  // 2^-48 .. 2^132: around every format's range
        xs.push_back(float(std::ldexp(1.0 + r.uni(), int(std::floor(lg)))));
    }
    for (int i = 0; i < 200000; ++i) xs.push_back(f32_from_bits(uint32_t(r.next())));
    const size_t n = xs.size();
    for (size_t i = 0; i < n; ++i) xs.push_back(-xs[i]);
    xs.push_back(std::numeric_limits<float>::quiet_NaN());
    xs.push_back(-std::numeric_limits<float>::quiet_NaN());
    xs.push_back(f32_from_bits(0x7F800001u));  // signalling NaN
    xs.push_back(f32_from_bits(0xFFC12345u));
    return xs;
}

void check_encode(Fmt f, uint32_t (*enc)(Fmt, float), const char *which) {
    int64_t bad = 0;
    const std::vector<float> xs = probe_inputs(f);
    for (float x : xs) {
        const uint32_t want = oracle_encode(f, x);
        const uint32_t got = enc(f, x);
        const bool ok = std::isnan(x) ? oracle_is_nan(f, got) : got == want;
        if (!ok && bad++ < 8)
            ADD_FAILURE() << which << " " << fmt_name(f) << "(" << std::hexfloat << x << std::defaultfloat << " = " << x
                          << ", bits 0x" << std::hex << f32_bits(x) << "): expected 0x" << want << " got 0x" << got
                          << std::dec;
    }
    EXPECT_EQ(bad, 0) << "of " << xs.size() << " inputs";
}

TEST_P(Formats, EncodeMatchesNearestEven) { check_encode(GetParam(), lib_encode, "f32_to_*"); }
TEST_P(Formats, SoftEncodeMatchesNearestEven) { check_encode(GetParam(), lib_encode_soft, "f32_to_*_soft"); }

// Round trip: decode then encode gives the code back for every non-NaN code.
TEST_P(Formats, RoundTripEveryCode) {
    const Fmt f = GetParam();
    const uint32_t n = 1u << (8 * fmt_bytes(f));
    int64_t bad = 0;
    for (uint32_t c = 0; c < n; ++c) {
        if (oracle_is_nan(f, c)) continue;
        if (fmt_is_fp8(f) && oracle_is_inf(f, c)) continue;  // SATFINITE: inf -> max, checked above
        const uint32_t back = lib_encode(f, lib_decode(f, c));
        if (back != c && bad++ < 8) ADD_FAILURE() << fmt_name(f) << " 0x" << std::hex << c << " -> 0x" << back;
    }
    EXPECT_EQ(bad, 0);
}

INSTANTIATE_TEST_SUITE_P(All, Formats, ::testing::Values(Fmt::F16, Fmt::BF16, Fmt::E4M3, Fmt::E5M2),
                         [](const ::testing::TestParamInfo<Fmt> &i) { return std::string(fmt_name(i.param)); });

}  // namespace
}  // namespace pkvt

#if PKVT_HAVE_CUDA
#include "formats_device.h"

namespace pkvt {
namespace {

// All 2^32 float inputs: the library's _soft encoders == CUDA's conversions, bit for bit.
TEST(FormatsDevice, SoftEncodersMatchHardwareForAllFloats) {
    if (!cuda_usable()) GTEST_SKIP() << "no CUDA device";
    FormatsDeviceResult r;
    ASSERT_EQ(formats_device_check(&r), 0) << r.error;
    const char *names[4] = {"f16 (__float2half_rn)", "bf16 (__float2bfloat16_rn)",
                            "e4m3 (__nv_cvt_float_to_fp8 SATFINITE)", "e5m2 (__nv_cvt_float_to_fp8 SATFINITE)"};
    std::printf("device kernels ran as __CUDA_ARCH__ %d\n", r.device_arch);
    for (int f = 0; f < 4; ++f) {
        std::printf("%-40s encode mismatches %llu (+%llu NaN-payload), decode mismatches %llu\n", names[f],
                    r.encode_mismatch[f], r.encode_nan_mismatch[f], r.decode_mismatch[f]);
        EXPECT_EQ(r.encode_mismatch[f], 0u)
            << names[f] << ": first mismatching input bits 0x" << std::hex << r.first_input[f] << " ("
            << f32_from_bits(r.first_input[f]) << "): hardware 0x" << r.first_hw[f] << ", _soft 0x" << r.first_soft[f];
        EXPECT_EQ(r.encode_nan_mismatch[f], 0u)
            << names[f] << " (NaN results differ; numeric_formats.h documents its NaN codes): first input 0x"
            << std::hex << r.first_input[f] << ": hardware 0x" << r.first_hw[f] << ", _soft 0x" << r.first_soft[f];
        EXPECT_EQ(r.decode_mismatch[f], 0u)
            << names[f] << ": first code 0x" << std::hex << r.first_decode_code[f] << ": library 0x"
            << r.first_decode_lib[f] << ", hardware 0x" << r.first_decode_hw[f];
    }
}

}  // namespace
}  // namespace pkvt
#endif
