// Shared helpers of the pagedkv GoogleTest suite:
//  - an independent oracle for every numeric format (tables of exact values built with ldexp,
//    brute-force nearest search with ties-to-even; no code shared with the library),
//  - host / CUDA buffers (cudaMalloc through the test's own CUDA runtime when PKV_TEST_CUDA),
//  - cache layouts (NHD, HND, K/V interleaved, padded pages, K|V packed, fully strided) as byte
//    geometry, cache views, tensors, a seeded RNG.
#pragma once

#include <gtest/gtest.h>
#include <sys/mman.h>

#include <algorithm>
#include <cctype>
#include <initializer_list>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <limits>
#include <random>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "pagedkv.h"

#if defined(PKV_TEST_CUDA) && PKV_TEST_CUDA
#include <cuda_runtime.h>
#define PKVT_HAVE_CUDA 1
#else
#define PKVT_HAVE_CUDA 0
#endif

namespace pkvt {

// =============================================================================== formats
enum class Fmt { F32, F16, BF16, E4M3, E5M2 };

inline int fmt_bytes(Fmt f) { return f == Fmt::F32 ? 4 : (f == Fmt::F16 || f == Fmt::BF16) ? 2 : 1; }
inline bool fmt_is_fp8(Fmt f) { return f == Fmt::E4M3 || f == Fmt::E5M2; }
inline const char *fmt_name(Fmt f) {
    switch (f) {
        case Fmt::F32: return "f32";
        case Fmt::F16: return "f16";
        case Fmt::BF16: return "bf16";
        case Fmt::E4M3: return "e4m3";
        default: return "e5m2";
    }
}
inline pkv_dtype fmt_dtype(Fmt f) {
    switch (f) {
        case Fmt::F32: return PKV_DTYPE_F32;
        case Fmt::F16: return PKV_DTYPE_F16;
        case Fmt::BF16: return PKV_DTYPE_BF16;
        case Fmt::E4M3: return PKV_DTYPE_FP8_E4M3;
        default: return PKV_DTYPE_FP8_E5M2;
    }
}
inline pkv_cache_format fmt_cache_format(Fmt f) {
    switch (f) {
        case Fmt::F32: return PKV_CACHE_FORMAT_F32;
        case Fmt::F16: return PKV_CACHE_FORMAT_F16;
        case Fmt::BF16: return PKV_CACHE_FORMAT_BF16;
        case Fmt::E4M3: return PKV_CACHE_FORMAT_FP8_E4M3;
        default: return PKV_CACHE_FORMAT_FP8_E5M2;
    }
}

inline uint32_t f32_bits(float f) {
    uint32_t u;
    std::memcpy(&u, &f, 4);
    return u;
}
inline float f32_from_bits(uint32_t u) {
    float f;
    std::memcpy(&f, &u, 4);
    return f;
}

// Exact value of every non-negative code of a narrow format, computed with ldexp from the
// format's definition (exponent bits, mantissa bits, bias). For the IEEE-like formats (f16,
// bf16) the table also holds the infinity code with the "virtual" value 2^(emax+1), so that a
// nearest search rounds to infinity exactly where IEEE round-to-nearest-even overflows.
struct OracleTable {
    std::vector<double> pos;  // pos[c] = value of code c, c in [0, top]
    uint32_t top = 0;         // last code searched (max finite, or the inf code for IEEE)
    uint32_t max_finite = 0;
    uint32_t sign_bit = 0;
    bool saturating = false;  // fp8 SATFINITE: clamp to max finite instead of overflowing
};

// value of code c (non-negative, finite or the virtual inf) with `mbits` mantissa bits, bias
inline double minifloat_value(uint32_t c, int mbits, int bias) {
    const uint32_t e = c >> mbits, m = c & ((1u << mbits) - 1u);
    if (e == 0) return std::ldexp(double(m), 1 - bias - mbits);
    return std::ldexp(double((1u << mbits) + m), int(e) - bias - mbits);
}

inline const OracleTable &oracle_table(Fmt f) {
    static const std::vector<OracleTable> v = [] {
        std::vector<OracleTable> t(4);
        t[0].top = 0x7C00; t[0].max_finite = 0x7BFF; t[0].sign_bit = 0x8000;
        for (uint32_t c = 0; c <= 0x7C00; ++c) t[0].pos.push_back(minifloat_value(c, 10, 15));
        t[1].top = 0x7F80; t[1].max_finite = 0x7F7F; t[1].sign_bit = 0x8000;
        for (uint32_t c = 0; c <= 0x7F80; ++c) t[1].pos.push_back(minifloat_value(c, 7, 127));
        t[2].top = 0x7E; t[2].max_finite = 0x7E; t[2].sign_bit = 0x80; t[2].saturating = true;
        for (uint32_t c = 0; c <= 0x7E; ++c) t[2].pos.push_back(minifloat_value(c, 3, 7));
        t[3].top = 0x7B; t[3].max_finite = 0x7B; t[3].sign_bit = 0x80; t[3].saturating = true;
        for (uint32_t c = 0; c <= 0x7B; ++c) t[3].pos.push_back(minifloat_value(c, 2, 15));
        return t;
    }();
    return v[int(f) - 1];
}

inline bool oracle_is_nan(Fmt f, uint32_t bits) {
    switch (f) {
        case Fmt::F32: return (bits & 0x7FFFFFFFu) > 0x7F800000u;
        case Fmt::F16: return (bits & 0x7FFFu) > 0x7C00u;
        case Fmt::BF16: return (bits & 0x7FFFu) > 0x7F80u;
        case Fmt::E4M3: return (bits & 0x7Fu) == 0x7Fu;
        default: return (bits & 0x7Fu) > 0x7Cu;
    }
}
inline bool oracle_is_inf(Fmt f, uint32_t bits) {
    switch (f) {
        case Fmt::F32: return (bits & 0x7FFFFFFFu) == 0x7F800000u;
        case Fmt::F16: return (bits & 0x7FFFu) == 0x7C00u;
        case Fmt::BF16: return (bits & 0x7FFFu) == 0x7F80u;
        case Fmt::E4M3: return false;
        default: return (bits & 0x7Fu) == 0x7Cu;
    }
}

// Exact value of a code (NaN for NaN codes, +-inf for infinities).
inline double oracle_decode(Fmt f, uint32_t bits) {
    if (f == Fmt::F32) return double(f32_from_bits(bits));
    if (oracle_is_nan(f, bits)) return std::numeric_limits<double>::quiet_NaN();
    const OracleTable &t = oracle_table(f);
    const bool neg = (bits & t.sign_bit) != 0;
    const uint32_t c = bits & (t.sign_bit - 1u);
    double v = oracle_is_inf(f, bits) ? std::numeric_limits<double>::infinity() : t.pos[c];
    return neg ? -v : v;
}
inline float oracle_to_float(Fmt f, uint32_t bits) { return float(oracle_decode(f, bits)); }

// Round-to-nearest-even encode by search over the exact code values. IEEE formats overflow to
// infinity; fp8 saturates to +-max (SATFINITE, also for +-inf). NaN -> a NaN code (callers
// compare NaN-ness only).
inline uint32_t oracle_encode(Fmt f, float x) {
    if (f == Fmt::F32) return f32_bits(x);
    if (std::isnan(x)) {
        switch (f) {
            case Fmt::F16: return 0x7E00;
            case Fmt::BF16: return 0x7FC0;
            case Fmt::E4M3: return 0x7F;
            default: return 0x7E;
        }
    }
    const OracleTable &t = oracle_table(f);
    const uint32_t s = std::signbit(x) ? t.sign_bit : 0u;
    const double a = std::fabs(double(x));
    if (t.saturating) {
        if (a >= t.pos[t.max_finite]) return s | t.max_finite;
    } else if (a >= t.pos[t.top]) {
        return s | t.top;  // infinity
    }
    auto it = std::upper_bound(t.pos.begin(), t.pos.begin() + t.top + 1, a);
    const uint32_t lo = uint32_t(it - t.pos.begin()) - 1u;
    if (t.pos[lo] == a) return s | lo;
    const uint32_t hi = lo + 1u;
    // a vs the midpoint, exactly: 2a and pos[lo] + pos[hi] are exact in double.
    const double a2 = 2.0 * a, mid2 = t.pos[lo] + t.pos[hi];
    uint32_t c = a2 < mid2 ? lo : a2 > mid2 ? hi : ((lo & 1u) ? hi : lo);
    return s | c;
}

inline uint32_t load_bits(const uint8_t *p, Fmt f) {
    switch (fmt_bytes(f)) {
        case 4: { uint32_t v; std::memcpy(&v, p, 4); return v; }
        case 2: { uint16_t v; std::memcpy(&v, p, 2); return v; }
        default: return *p;
    }
}
inline void store_bits(uint8_t *p, Fmt f, uint32_t bits) {
    switch (fmt_bytes(f)) {
        case 4: std::memcpy(p, &bits, 4); break;
        case 2: { uint16_t v = uint16_t(bits); std::memcpy(p, &v, 2); break; }
        default: *p = uint8_t(bits);
    }
}

// =============================================================================== rng
struct Rng {
    std::mt19937_64 g;
    explicit Rng(uint64_t seed) : g(seed * 0x9E3779B97F4A7C15ull + 12345) {}
    uint64_t next() { return g(); }
    double uni() { return double(g() >> 11) * (1.0 / 9007199254740992.0); }  // [0,1)
    int64_t range(int64_t lo, int64_t hi) { return lo + int64_t(g() % uint64_t(hi - lo + 1)); }  // inclusive
    bool chance(double p) { return uni() < p; }
    double normal() {
        double u1 = uni(), u2 = uni();
        if (u1 < 1e-300) u1 = 1e-300;
        return std::sqrt(-2.0 * std::log(u1)) * std::cos(6.283185307179586 * u2);
    }
    void bytes(uint8_t *p, size_t n) {
        size_t i = 0;
        for (; i + 8 <= n; i += 8) {
            uint64_t v = g();
            std::memcpy(p + i, &v, 8);
        }
        if (i < n) {
            uint64_t v = g();
            std::memcpy(p + i, &v, n - i);
        }
    }
    template <typename T> void shuffle(std::vector<T> &v) {
        for (size_t i = v.size(); i > 1; --i) std::swap(v[i - 1], v[size_t(g() % i)]);
    }
};

// A random finite non-zero value representable in `f`, of varied magnitude.
// profile 0: |x| ~ 10^[-2, 2] with a few large (for f32: up to 1e5, which overflows f16) and
// a few tiny values. Never zero.
inline uint32_t random_value_bits(Rng &r, Fmt f) {
    for (;;) {
        double mag;
        const double u = r.uni();
        if (u < 0.85) mag = std::pow(10.0, -2.0 + 4.0 * r.uni());
        else if (u < 0.93) mag = std::pow(10.0, -7.0 + 5.0 * r.uni());
        else mag = std::pow(10.0, 2.0 + 3.0 * r.uni());
        if (f == Fmt::F16 && mag > 6.0e4) mag = 6.0e4 * r.uni() + 1.0;
        double x = r.chance(0.5) ? -mag : mag;
        x *= 0.5 + r.uni();
        const uint32_t b = oracle_encode(f, float(x));
        if (oracle_decode(f, b) != 0.0 && std::isfinite(oracle_decode(f, b))) return b;
    }
}

// A random code of `f` that is not NaN (for caches read by gather): uniform over codes for the
// narrow formats (covers subnormals, infinities, extremes), a mix for f32.
inline uint32_t random_code_no_nan(Rng &r, Fmt f) {
    for (;;) {
        uint32_t b;
        if (f == Fmt::F32) {
            const double u = r.uni();
            if (u < 0.1) b = uint32_t(r.next());  // any bit pattern (subnormals, huge values)
            else if (u < 0.2) b = f32_bits(float((r.chance(0.5) ? -1 : 1) * std::pow(10.0, 3.0 + 2.0 * r.uni())));
            else if (u < 0.3) b = f32_bits(float((r.chance(0.5) ? -1 : 1) * std::pow(10.0, -10.0 + 5.0 * r.uni())));
            else b = f32_bits(float(r.normal() * 3.0));
        } else {
            b = uint32_t(r.next()) & ((1u << (8 * fmt_bytes(f))) - 1u);
        }
        if (!oracle_is_nan(f, b)) return b;
    }
}

inline uint32_t nan_bits(Fmt f) {
    switch (f) {
        case Fmt::F32: return 0x7FC00000u;
        case Fmt::F16: return 0x7E00u;
        case Fmt::BF16: return 0x7FC0u;
        case Fmt::E4M3: return 0x7Fu;
        default: return 0x7Eu;
    }
}

// =============================================================================== devices
enum class Backend { CPU, CUDA };
inline const char *backend_name(Backend b) { return b == Backend::CPU ? "cpu" : "cuda"; }
inline pkv_device backend_device(Backend b) {
    pkv_device d;
    d.type = b == Backend::CPU ? PKV_DEVICE_CPU : PKV_DEVICE_CUDA;
    d.id = 0;
    return d;
}

inline int test_cuda_device_count() {
#if PKVT_HAVE_CUDA
    static const int n = [] {
        int c = 0;
        if (cudaGetDeviceCount(&c) != cudaSuccess) {
            (void)cudaGetLastError();
            return 0;
        }
        return c;
    }();
    return n;
#else
    return 0;
#endif
}
inline bool cuda_usable() { return test_cuda_device_count() > 0; }

#define PKVT_SKIP_IF_NO_BACKEND(be)                                                         \
    do {                                                                                    \
        if ((be) == ::pkvt::Backend::CUDA && !::pkvt::cuda_usable())                        \
            GTEST_SKIP() << (PKVT_HAVE_CUDA ? "no CUDA device" : "tests built without CUDA"); \
    } while (0)

#if PKVT_HAVE_CUDA
#define PKVT_CUDA_CHECK(expr)                                                                   \
    do {                                                                                        \
        cudaError_t e_ = (expr);                                                                \
        if (e_ != cudaSuccess)                                                                  \
            throw std::runtime_error(std::string(#expr) + " failed: " + cudaGetErrorString(e_)); \
    } while (0)
#endif

// Wait for all device work (the library's enqueued kernels included) and surface faults.
inline void device_sync(Backend b) {
#if PKVT_HAVE_CUDA
    if (b == Backend::CUDA) PKVT_CUDA_CHECK(cudaDeviceSynchronize());
#else
    (void)b;
#endif
}

// A buffer on the CPU (256-byte aligned; optionally a sparse NORESERVE mapping) or on CUDA
// device 0. upload/download are synchronous.
class Buf {
public:
    Buf() = default;
    Buf(Backend be, size_t n, bool sparse = false) : be_(be), n_(n), sparse_(sparse) {
        const size_t alloc = std::max<size_t>(n, 1);
        if (be == Backend::CPU) {
            if (sparse) {
                void *p = mmap(nullptr, alloc, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
                               -1, 0);
                if (p == MAP_FAILED) throw std::runtime_error("mmap failed");
                p_ = static_cast<uint8_t *>(p);
            } else {
                p_ = static_cast<uint8_t *>(std::aligned_alloc(256, (alloc + 255) / 256 * 256));
                if (!p_) throw std::runtime_error("aligned_alloc failed");
            }
        } else {
#if PKVT_HAVE_CUDA
            void *p = nullptr;
            PKVT_CUDA_CHECK(cudaMalloc(&p, alloc));
            p_ = static_cast<uint8_t *>(p);
#else
            throw std::runtime_error("CUDA buffer in a build without CUDA");
#endif
        }
    }
    ~Buf() { release(); }
    Buf(const Buf &) = delete;
    Buf &operator=(const Buf &) = delete;
    Buf(Buf &&o) noexcept { *this = std::move(o); }
    Buf &operator=(Buf &&o) noexcept {
        if (this != &o) {
            release();
            be_ = o.be_; p_ = o.p_; n_ = o.n_; sparse_ = o.sparse_;
            o.p_ = nullptr; o.n_ = 0;
        }
        return *this;
    }

    uint8_t *ptr() const { return p_; }
    size_t size() const { return n_; }
    Backend backend() const { return be_; }

    void upload(const void *src, size_t bytes, size_t off = 0) {
        if (bytes == 0) return;
        if (off + bytes > n_) throw std::runtime_error("Buf::upload out of range");
        if (be_ == Backend::CPU) {
            std::memcpy(p_ + off, src, bytes);
        } else {
#if PKVT_HAVE_CUDA
            PKVT_CUDA_CHECK(cudaMemcpy(p_ + off, src, bytes, cudaMemcpyHostToDevice));
            // From pageable memory cudaMemcpy may return before the DMA has landed; kernels on a
            // non-blocking stream are not ordered after it, so wait for it here.
            PKVT_CUDA_CHECK(cudaDeviceSynchronize());
#endif
        }
    }
    void upload(const std::vector<uint8_t> &v) { upload(v.data(), v.size()); }
    void download(void *dst, size_t bytes, size_t off = 0) const {
        if (bytes == 0) return;
        if (off + bytes > n_) throw std::runtime_error("Buf::download out of range");
        if (be_ == Backend::CPU) {
            std::memcpy(dst, p_ + off, bytes);
        } else {
#if PKVT_HAVE_CUDA
            PKVT_CUDA_CHECK(cudaMemcpy(dst, p_ + off, bytes, cudaMemcpyDeviceToHost));
#endif
        }
    }
    std::vector<uint8_t> download_all() const {
        std::vector<uint8_t> v(n_);
        download(v.data(), n_);
        return v;
    }
    void fill(uint8_t value, size_t off, size_t bytes) {
        if (bytes == 0) return;
        if (be_ == Backend::CPU) {
            std::memset(p_ + off, value, bytes);
        } else {
#if PKVT_HAVE_CUDA
            PKVT_CUDA_CHECK(cudaMemset(p_ + off, value, bytes));
#endif
        }
    }

private:
    void release() {
        if (!p_) return;
        if (be_ == Backend::CPU) {
            if (sparse_) munmap(p_, std::max<size_t>(n_, 1));
            else std::free(p_);
        } else {
#if PKVT_HAVE_CUDA
            cudaFree(p_);
#endif
        }
        p_ = nullptr;
    }
    Backend be_ = Backend::CPU;
    uint8_t *p_ = nullptr;
    size_t n_ = 0;
    bool sparse_ = false;
};

// A CUDA stream of the test's runtime (interchangeable with the library's pkv_stream), or NULL.
class TestStream {
public:
    TestStream(Backend be, bool create) {
#if PKVT_HAVE_CUDA
        if (be == Backend::CUDA && create) {
            cudaStream_t s = nullptr;
            PKVT_CUDA_CHECK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
            s_ = s;
        }
#else
        (void)be; (void)create;
#endif
    }
    ~TestStream() {
#if PKVT_HAVE_CUDA
        if (s_) cudaStreamDestroy(static_cast<cudaStream_t>(s_));
#endif
    }
    TestStream(const TestStream &) = delete;
    TestStream &operator=(const TestStream &) = delete;
    pkv_stream get() const { return reinterpret_cast<pkv_stream>(s_); }
    void sync(Backend be) const {
#if PKVT_HAVE_CUDA
        if (be == Backend::CUDA) {
            if (s_) PKVT_CUDA_CHECK(cudaStreamSynchronize(static_cast<cudaStream_t>(s_)));
            PKVT_CUDA_CHECK(cudaDeviceSynchronize());
        }
#else
        (void)be;
#endif
    }

private:
    void *s_ = nullptr;
};

// =============================================================================== tensors
inline pkv_tensor make_tensor(void *data, pkv_dtype dtype, pkv_device dev, std::initializer_list<int64_t> shape,
                              std::initializer_list<int64_t> strides) {
    pkv_tensor t;
    std::memset(&t, 0, sizeof t);
    t.data = data;
    t.dtype = dtype;
    t.device = dev;
    t.ndim = int32_t(shape.size());
    int i = 0;
    for (int64_t s : shape) t.shape[i++] = s;
    i = 0;
    for (int64_t s : strides) t.strides[i++] = s;
    return t;
}

// =============================================================================== layouts
enum class Layout { NHD, NHD_DEFAULT, HND, INTERLEAVED, PADDED, KV_PACKED, STRIDED };
constexpr Layout kAllLayouts[] = {Layout::NHD,    Layout::NHD_DEFAULT, Layout::HND,    Layout::INTERLEAVED,
                                  Layout::PADDED, Layout::KV_PACKED,   Layout::STRIDED};
inline const char *layout_name(Layout l) {
    switch (l) {
        case Layout::NHD: return "nhd";
        case Layout::NHD_DEFAULT: return "nhd0";  // NHD given as zero strides (library defaults)
        case Layout::HND: return "hnd";
        case Layout::INTERLEAVED: return "kvinter";
        case Layout::PADDED: return "padded";
        case Layout::KV_PACKED: return "kvpacked";
        default: return "strided";
    }
}

inline int64_t round_up(int64_t x, int64_t a) { return (x + a - 1) / a * a; }

// Byte geometry of a cache inside one buffer: element (side, b, s, h, d) lives at
// k_off/v_off + b*sb + s*ss + h*sh + d*e.
struct CacheGeom {
    Layout layout = Layout::NHD;
    Fmt fmt = Fmt::F16;
    int64_t NB = 0, BS = 0, H = 0, Dk = 0, Dv = 0;
    bool has_v = true;
    int64_t e = 2;
    int64_t k_off = 0, v_off = 0;
    int64_t ksb = 0, kss = 0, ksh = 0, vsb = 0, vss = 0, vsh = 0;
    size_t bytes = 0;

    int64_t D(int side) const { return side == 0 ? Dk : Dv; }
    int64_t offset(int side, int64_t b, int64_t s, int64_t h, int64_t d) const {
        return side == 0 ? k_off + b * ksb + s * kss + h * ksh + d * e : v_off + b * vsb + s * vss + h * vsh + d * e;
    }
    int sides() const { return has_v ? 2 : 1; }
    // Call fn(side, b, s, h, d, byte_offset) for every element of the cache.
    template <typename F> void for_each(F &&fn) const {
        for (int side = 0; side < sides(); ++side)
            for (int64_t b = 0; b < NB; ++b)
                for (int64_t s = 0; s < BS; ++s)
                    for (int64_t h = 0; h < H; ++h)
                        for (int64_t d = 0; d < D(side); ++d) fn(side, b, s, h, d, offset(side, b, s, h, d));
    }
    // Human description of the byte at `off` ("K[b=3,s=1,h=0,d=45] byte 1" or "padding").
    std::string describe(int64_t off) const {
        std::string out = "padding/unaddressed byte";
        bool found = false;
        for_each([&](int side, int64_t b, int64_t s, int64_t h, int64_t d, int64_t o) {
            if (found || off < o || off >= o + e) return;
            found = true;
            std::ostringstream ss;
            ss << (side ? "V" : "K") << "[block=" << b << ",slot=" << s << ",head=" << h << ",dim=" << d
               << "] byte " << (off - o);
            out = ss.str();
        });
        return out;
    }
};

// base_shift: byte offset of the K (and V) region from a 256-aligned address (misaligned base).
inline CacheGeom make_geom(Layout layout, Fmt fmt, int64_t NB, int64_t BS, int64_t H, int64_t Dk, int64_t Dv,
                           bool has_v, int64_t base_shift = 0) {
    CacheGeom g;
    g.layout = layout; g.fmt = fmt; g.NB = NB; g.BS = BS; g.H = H; g.Dk = Dk; g.Dv = has_v ? Dv : 0;
    g.has_v = has_v;
    const int64_t e = g.e = fmt_bytes(fmt);
    const int64_t Pk = BS * H * Dk * e, Pv = BS * H * Dv * e;
    g.k_off = base_shift;
    bool separate_v = true;
    auto nhd = [&] {
        g.ksb = Pk; g.kss = H * Dk * e; g.ksh = Dk * e;
        g.vsb = Pv; g.vss = H * Dv * e; g.vsh = Dv * e;
    };
    switch (layout) {
        case Layout::NHD:
        case Layout::NHD_DEFAULT: nhd(); break;
        case Layout::HND:
            g.ksb = Pk; g.kss = Dk * e; g.ksh = BS * Dk * e;
            g.vsb = Pv; g.vss = Dv * e; g.vsh = BS * Dv * e;
            break;
        case Layout::INTERLEAVED:  // [NB, 2, BS, H, D]
            nhd();
            g.ksb = g.vsb = Pk + (has_v ? Pv : Pk);
            if (has_v) { g.v_off = g.k_off + Pk; separate_v = false; }
            break;
        case Layout::PADDED:
            nhd();
            g.ksb = Pk + 128 + 5 * e;
            g.vsb = Pv + 64 + 7 * e;
            break;
        case Layout::KV_PACKED:  // [NB, BS, H, Dk + Dv]
            if (!has_v) { nhd(); break; }
            g.ksh = g.vsh = (Dk + Dv) * e;
            g.kss = g.vss = H * (Dk + Dv) * e;
            g.ksb = g.vsb = BS * H * (Dk + Dv) * e;
            g.v_off = g.k_off + Dk * e;
            separate_v = false;
            break;
        case Layout::STRIDED:  // gaps after every head, slot and block
            g.ksh = (Dk + 3) * e; g.kss = H * g.ksh + 5 * e; g.ksb = BS * g.kss + 48;
            g.vsh = (Dv + 1) * e; g.vss = H * g.vsh + 2 * e; g.vsb = BS * g.vss + 16 + e;
            break;
    }
    if (!has_v) { g.vsb = g.vss = g.vsh = 0; }
    int64_t end = g.k_off + NB * g.ksb;
    if (has_v) {
        if (separate_v) g.v_off = round_up(end, 256) + base_shift;
        end = std::max(end, g.v_off + NB * g.vsb);
    }
    g.bytes = size_t(round_up(end + 64, 256));
    return g;
}

inline pkv_cache_view make_view(const CacheGeom &g, uint8_t *base, pkv_device dev, pkv_scale_mode mode,
                                const float *k_scale, const float *v_scale) {
    pkv_cache_view v = PKV_CACHE_VIEW_INIT;
    v.format = fmt_cache_format(g.fmt);
    v.device = dev;
    v.num_blocks = g.NB;
    v.block_size = g.BS;
    v.num_heads = g.H;
    v.head_size_k = g.Dk;
    const bool defaults = g.layout == Layout::NHD_DEFAULT;
    v.head_size_v = g.has_v ? ((defaults && g.Dv == g.Dk) ? 0 : g.Dv) : 0;
    v.k_data = base + g.k_off;
    v.v_data = g.has_v ? base + g.v_off : nullptr;
    if (!defaults) {
        v.k_stride_block = g.ksb; v.k_stride_slot = g.kss; v.k_stride_head = g.ksh;
        if (g.has_v) { v.v_stride_block = g.vsb; v.v_stride_slot = g.vss; v.v_stride_head = g.vsh; }
    }
    v.scale_mode = mode;
    v.k_scale = k_scale;
    v.v_scale = v_scale;
    return v;
}

// Scale configuration of FP8 caches.
enum class Scale { TENSOR, HEAD, NONE };
inline const char *scale_name(Scale s) { return s == Scale::TENSOR ? "tensor" : s == Scale::HEAD ? "head" : "noscale"; }

// =============================================================================== comparing
// Compare two byte images; on mismatch, report the count and the first few places.
inline ::testing::AssertionResult bytes_equal(const std::vector<uint8_t> &expected, const std::vector<uint8_t> &got,
                                              const std::function<std::string(int64_t)> &describe,
                                              const std::string &what) {
    if (expected.size() != got.size())
        return ::testing::AssertionFailure() << what << ": size " << got.size() << " != " << expected.size();
    int64_t bad = 0;
    std::ostringstream ss;
    for (size_t i = 0; i < expected.size(); ++i) {
        if (expected[i] == got[i]) continue;
        if (bad < 6) {
            ss << "\n  byte " << i << " (" << (describe ? describe(int64_t(i)) : std::string()) << "): expected 0x"
               << std::hex << int(expected[i]) << " got 0x" << int(got[i]) << std::dec;
        }
        ++bad;
    }
    if (bad == 0) return ::testing::AssertionSuccess();
    return ::testing::AssertionFailure() << what << ": " << bad << " of " << expected.size()
                                         << " bytes differ; first:" << ss.str();
}

inline std::vector<uint8_t> random_bytes(Rng &r, size_t n) {
    std::vector<uint8_t> v(n);
    r.bytes(v.data(), n);
    return v;
}

template <typename T> std::vector<uint8_t> as_bytes(const std::vector<T> &v) {
    std::vector<uint8_t> b(v.size() * sizeof(T));
    if (!b.empty()) std::memcpy(b.data(), v.data(), b.size());
    return b;
}

// Upload a host vector into a fresh buffer on `be`.
template <typename T> Buf to_device(Backend be, const std::vector<T> &v) {
    Buf b(be, v.size() * sizeof(T));
    b.upload(v.data(), v.size() * sizeof(T));
    return b;
}

inline std::string status_str(pkv_status s) { return pkv_status_string(s); }

// What a write call left behind: its status and message, the cache bytes, the out-of-range
// counter.
struct WriteOutcome {
    pkv_status status = PKV_SUCCESS;
    std::string message;
    std::vector<uint8_t> cache;
    int64_t counter = 0;
};

// Records a write's status with the thread's last message, waits for `stream` (and the device),
// then downloads the cache and the counter.
inline WriteOutcome write_outcome(pkv_status status, Backend be, const TestStream &stream, const Buf &cache,
                                  const Buf &counter) {
    WriteOutcome o;
    o.status = status;
    o.message = pkv_last_error_message();
    stream.sync(be);
    o.cache = cache.download_all();
    counter.download(&o.counter, 8);
    return o;
}

inline std::string lower(std::string s) {
    for (char &ch : s) ch = char(std::tolower(static_cast<unsigned char>(ch)));
    return s;
}

// The status is `want`, and the message is non-empty, names the function (unless NULL) and
// every fragment (case-insensitively). Shared by the error tests of every op.
inline ::testing::AssertionResult failed_with(pkv_status got, pkv_status want, const char *function,
                                       std::initializer_list<const char *> fragments) {
    const std::string msg = pkv_last_error_message();
    if (got != want)
        return ::testing::AssertionFailure() << "status " << pkv_status_string(got) << ", expected "
                                             << pkv_status_string(want) << " (message: \"" << msg << "\")";
    if (msg.empty()) return ::testing::AssertionFailure() << "empty pkv_last_error_message()";
    if (function && msg.find(function) == std::string::npos)
        return ::testing::AssertionFailure() << "message \"" << msg << "\" does not name " << function;
    for (const char *f : fragments)
        if (lower(msg).find(lower(f)) == std::string::npos)
            return ::testing::AssertionFailure() << "message \"" << msg << "\" does not mention \"" << f << "\"";
    return ::testing::AssertionSuccess() << msg;
}

}  // namespace pkvt
