// CUDA INT4 / INT2 (Hadamard-rotated per-token-head) write and gather. The math and its op
// orders are core/hadamard.h, shared with the CPU backend (bit-identical results).
//
// Layout: a group of L = D / E lanes holds one (token, side, head) row, each lane E = min(D, 32)
// consecutive elements, so a warp works on 32 / L rows at once and a group makes U rows per
// iteration (every load of the U rows issued before the first row is computed; U = 1 now, see
// kBlocksPerSm). Butterfly
// stages h < E run in registers, stages h >= E exchange with lane ^ (h / E) (xor shuffles stay
// inside the group). Min / max and the INT2 sum of squares reduce over the group in the order
// hadamard.h defines. A lane writes its E / 2 (INT4) or E / 4 (INT2) code bytes; the group's
// first lane writes the scale. The gather fetches a warp's next rows (source lookup, codes) before
// computing the current ones, and (32 elements a lane) stores its rows through shared memory in
// whole sectors (exchange_row: on the H100, D = 128, INT4 / INT2 gathers went from 81 / 73 % of
// copy bandwidth to 95 / 85 %; loading the write's inputs that way made it slower, 81 -> 75 %).
// Warps grid-stride over the rows; loop bounds are warp-uniform, so
// every lane reaches every shuffle (rows that are padding or past the end compute on whatever
// they loaded and store nothing). Launched with programmatic dependent launch: no global memory
// is touched before pdl_wait().
//
// Exactness notes (each replaces a literal hadamard.h helper by the same result):
//  * min.NaN / max.NaN: equal to min_f / max_f on rows without NaN (up to the sign of a zero
//    min / max, which changes neither s nor z), and NaN when any element is NaN; so "any x'_i
//    not finite" is "min or max not finite", no per-element test. For 16-bit inputs the values
//    rounded to the input dtype are compared as pairs (min.NaN.bf16x2 / .f16x2, exact), then the
//    two halves.
//  * INT2: any non-finite x'_i makes the sum of squares Inf or NaN, hence n not finite: the
//    "any x'_i not finite" test is implied by int2_quant's own test of n.
//  * INT4 codes: RN(x * (inv / 16) + zh / 16) == RN(x * inv + zh) / 16 (power-of-two scaling
//    inside one FMA, exact while inv / 16 is normal), so fma.rn.sat gives clamp(t, 0, 16) / 16
//    (NaN: 0); after min(., 15/16), floor(16 w) is the low bits of 16 w + 2^23 rounded toward
//    zero (no F2I).
//  * INT4 original-domain gather: H (q - z) is exact in any order, and for D <= 128 exact in
//    f16 too (integers of magnitude <= 15 * 128 = 1920 < 2048): the butterflies run on f16x2
//    pairs (elements e and e + 4 of an 8-element run share a word), two elements an
//    instruction; the stage inside a word is one fma.f16x2 with (1, -1) and the swapped word.
//  * A sign flip commutes with every rounding: INT4 signs flip the raw 16-bit input pairs.
//  * float(q - z) == (2^23 + q) - (2^23 + z) (both exact, difference exact).
//  * INT2 centroids are symmetric: c0 * f == -(c3 * f), c1 * f == -(c2 * f).
#include "core/fast_divmod.h"
#include "core/hadamard.h"
#include "core/ops.h"
#include "cuda/cuda_check.cuh"
#include "cuda/pairs.cuh"

namespace pkv {
namespace {

constexpr int kThreads = 256;
// Launch bounds: 4 blocks of 256 threads a multiprocessor, one row a group per iteration (H100,
// D = 128, T = 16384: 3 blocks of 2 rows each made INT4 write / gather 71 / 72 % of copy
// bandwidth, 4 of 1 row 78 / 77 %; 5 and more blocks spill).
constexpr int kBlocksPerSm = 4;


constexpr unsigned kFull = 0xffffffffu;

template <int D> struct RowShape {
    static constexpr int E = D < 32 ? D : 32;  // elements per lane
    static constexpr int L = D / E;            // lanes per row
    static constexpr int RPW = 32 / L;         // rows per warp
};

// ---------------------------------------------------------------- unaligned-safe vector access
template <int N> struct Words {
    uint32_t w[(N + 3) / 4];
};

// N bytes from p, with the widest accesses the address allows (p is aligned to at least
// min(N, 2) bytes for inputs / outputs; code bytes may have any alignment).
template <int N> __device__ __forceinline__ Words<N> load_bytes(const char *p) {
    Words<N> r;
#pragma unroll
    for (int i = 0; i < (N + 3) / 4; ++i) r.w[i] = 0;
    const uintptr_t a = reinterpret_cast<uintptr_t>(p);
    if constexpr (N % 16 == 0) {
        if (a % 16 == 0) {
#pragma unroll
            for (int i = 0; i < N / 16; ++i) {
                const uint4 x = reinterpret_cast<const uint4 *>(p)[i];
                r.w[4 * i] = x.x; r.w[4 * i + 1] = x.y; r.w[4 * i + 2] = x.z; r.w[4 * i + 3] = x.w;
            }
            return r;
        }
    }
    if constexpr (N % 8 == 0) {
        if (a % 8 == 0) {
#pragma unroll
            for (int i = 0; i < N / 8; ++i) {
                const uint2 x = reinterpret_cast<const uint2 *>(p)[i];
                r.w[2 * i] = x.x; r.w[2 * i + 1] = x.y;
            }
            return r;
        }
    }
    if constexpr (N % 4 == 0) {
        if (a % 4 == 0) {
#pragma unroll
            for (int i = 0; i < N / 4; ++i) r.w[i] = reinterpret_cast<const uint32_t *>(p)[i];
            return r;
        }
    }
    if constexpr (N % 2 == 0) {
        if (a % 2 == 0) {
#pragma unroll
            for (int i = 0; i < N / 2; ++i)
                r.w[i / 2] |= uint32_t(reinterpret_cast<const uint16_t *>(p)[i]) << (16 * (i % 2));
            return r;
        }
    }
#pragma unroll
    for (int i = 0; i < N; ++i) r.w[i / 4] |= uint32_t(reinterpret_cast<const uint8_t *>(p)[i]) << (8 * (i % 4));
    return r;
}

template <int N> __device__ __forceinline__ void store_bytes(char *p, const Words<N> &r) {
    const uintptr_t a = reinterpret_cast<uintptr_t>(p);
    if constexpr (N % 16 == 0) {
        if (a % 16 == 0) {
#pragma unroll
            for (int i = 0; i < N / 16; ++i)
                reinterpret_cast<uint4 *>(p)[i] = make_uint4(r.w[4 * i], r.w[4 * i + 1], r.w[4 * i + 2], r.w[4 * i + 3]);
            return;
        }
    }
    if constexpr (N % 8 == 0) {
        if (a % 8 == 0) {
#pragma unroll
            for (int i = 0; i < N / 8; ++i) reinterpret_cast<uint2 *>(p)[i] = make_uint2(r.w[2 * i], r.w[2 * i + 1]);
            return;
        }
    }
    if constexpr (N % 4 == 0) {
        if (a % 4 == 0) {
#pragma unroll
            for (int i = 0; i < N / 4; ++i) reinterpret_cast<uint32_t *>(p)[i] = r.w[i];
            return;
        }
    }
    if constexpr (N % 2 == 0) {
        if (a % 2 == 0) {
#pragma unroll
            for (int i = 0; i < N / 2; ++i) reinterpret_cast<uint16_t *>(p)[i] = uint16_t(r.w[i / 2] >> (16 * (i % 2)));
            return;
        }
    }
#pragma unroll
    for (int i = 0; i < N; ++i) reinterpret_cast<uint8_t *>(p)[i] = uint8_t(r.w[i / 4] >> (8 * (i % 4)));
}

// ---------------------------------------------------------------- INT4 signs on 16-bit pairs
// A lane's INT4 sign mask (bit e: negate element e) spread for 16-bit pairs: bits 2k and 2k + 1
// of each half at 2k and 2k + 16, so that one shift puts a pair's two signs on bits 15 and 31.
struct PairSigns {
    uint32_t lo = 0, hi = 0;  // elements 0..15, 16..31
};
__device__ __forceinline__ PairSigns spread_pair_signs(uint32_t m) {
    const auto spread = [](uint32_t x) { return (x & 0x5555u) | ((x & 0xaaaau) << 15); };
    return {spread(m & 0xffffu), spread(m >> 16)};
}
// The sign bits of word k's two elements, at bits 15 and 31.
__device__ __forceinline__ uint32_t pair_sign_bits(const PairSigns &s, int k) {
    return ((k < 8 ? s.lo : s.hi) << (15 - 2 * (k % 8))) & 0x80008000u;
}

// ---------------------------------------------------------------- group operations
// The Hadamard transform of the group's row (hadamard.h's stage order). Cross-lane pairs: the
// lower lane computes mine + other, the upper other - mine, as one FMA with an exact product
// (mine * +-1): round(other +- mine), the very sum / difference of the definition.
template <int E, int L> __device__ __forceinline__ void group_hadamard(float (&v)[E], uint32_t g) {
#pragma unroll
    for (int h = 1; h < E; h <<= 1) {
#pragma unroll
        for (int i = 0; i < E; ++i)
            if ((i & h) == 0) rot::butterfly(v[i], v[i + h]);
    }
#pragma unroll
    for (int m = 1; m < L; m <<= 1) {
        const float sgn = (g & m) ? -1.0f : 1.0f;
#pragma unroll
        for (int e = 0; e < E; ++e) {
            const float other = __shfl_xor_sync(kFull, v[e], m);
            v[e] = __fmaf_rn(v[e], sgn, other);
        }
    }
}

// min / max that return NaN when either operand is NaN (see the exactness notes above).
__device__ __forceinline__ float min_nan(float a, float b) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    float r;
    asm("min.NaN.f32 %0, %1, %2;" : "=f"(r) : "f"(a), "f"(b));
    return r;
#else
    return (a != a || b != b) ? __int_as_float(0x7fffffff) : fminf(a, b);
#endif
}
__device__ __forceinline__ float max_nan(float a, float b) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    float r;
    asm("max.NaN.f32 %0, %1, %2;" : "=f"(r) : "f"(a), "f"(b));
    return r;
#else
    return (a != a || b != b) ? __int_as_float(0x7fffffff) : fmaxf(a, b);
#endif
}

template <int L> __device__ __forceinline__ void group_min_max(float &mn, float &mx) {
#pragma unroll
    for (int m = L / 2; m >= 1; m >>= 1) {
        mn = min_nan(mn, __shfl_xor_sync(kFull, mn, m));
        mx = max_nan(mx, __shfl_xor_sync(kFull, mx, m));
    }
}

// The INT2 sum of squares in hadamard.h's order: chunks of min(D, 16) elements (one or two per
// lane), then the xor butterfly over chunks, offsets C/2 .. 1 (cross-lane first).
template <int E, int L> __device__ __forceinline__ float group_sum_squares(const float (&v)[E]) {
    constexpr int K = E < 16 ? E : 16, NC = E / K;
    float p[NC];
#pragma unroll
    for (int c = 0; c < NC; ++c) {
        float s = 0.0f;
#pragma unroll
        for (int i = 0; i < K; ++i) s = __fmaf_rn(v[c * K + i], v[c * K + i], s);
        p[c] = s;
    }
#pragma unroll
    for (int m = L / 2; m >= 1; m >>= 1) {
#pragma unroll
        for (int c = 0; c < NC; ++c) p[c] = add_rn(p[c], __shfl_xor_sync(kFull, p[c], m));
    }
    if constexpr (NC == 2) {
        const float a = p[0], b = p[1];
        p[0] = add_rn(a, b);
    }
    return p[0];
}

// Bit e set: element g*E + e of the side is negated (hadamard.h's sign rule). The default signs
// of a lane's E <= 32 consecutive elements (E a power of two, aligned) lie in one splitmix64 word.
template <int E> __device__ __forceinline__ uint32_t lane_sign_mask(const float *signs, uint32_t g) {
    const int64_t first = int64_t(g) * E;
    if (signs) {
        uint32_t m = 0;
#pragma unroll
        for (int e = 0; e < E; ++e) m |= (__float_as_uint(signs[first + e]) >> 31) << e;
        return m;
    }
    const uint64_t w = splitmix64_word(kRotationSeed, uint64_t(first) >> 6);
    const uint64_t bits = w >> (uint64_t(first) & 63);
    return E == 32 ? uint32_t(bits) : uint32_t(bits) & ((1u << E) - 1u);
}

// Element e's sign flip as an xor of its float bits.
__device__ __forceinline__ float apply_sign(float x, uint32_t mask, int e) {
    return __uint_as_float(__float_as_uint(x) ^ ((mask << (31 - e)) & 0x80000000u));
}

// int4_code (clamp(floor(fma(x, inv, zh)), 0, 15)) as the float 2^23 + code, see the exactness
// notes above: w = sat(RN(x * inv16 + zh16)) = clamp(RN(x * inv + zh), 0, 16) / 16 when
// inv16 = inv / 16 and zh16 = zh / 16 are exact (inv >= 2^-122).
__device__ __forceinline__ uint32_t int4_code_bits(float x, float inv16, float zh16) {
    float w, b;
    asm("fma.rn.sat.f32 %0, %1, %2, %3;" : "=f"(w) : "f"(x), "f"(inv16), "f"(zh16));
    w = fminf(w, 0.9375f);
    asm("fma.rz.f32 %0, %1, 0f41800000, 0f4B000000;" : "=f"(b) : "f"(w));  // 2^23 + floor(16 w)
    return __float_as_uint(b);
}
// The same for any inv (rows with s > 2^122): clamp, then 2^23 + floor(t) by one rounded add.
__device__ __forceinline__ uint32_t int4_code_bits_any(float x, float inv, float zh) {
    const float t = fminf(fmaxf(__fmaf_rn(x, inv, zh), 0.0f), 15.5f);  // fmaxf(NaN, 0) = 0
    return __float_as_uint(__fadd_rz(t, 8388608.0f));
}

// Eight such codes (fewer for E < 8) as nibbles, element 2j in the low nibble of byte j: the
// low byte of (b_{2j+1} << 4) + b_{2j} is that byte (the 2^23 bits lie above it).
template <int E> __device__ __forceinline__ uint32_t pack_int4_word(const uint32_t *b) {
    constexpr int P = E / 2 < 4 ? E / 2 : 4;  // pairs in the word
    uint32_t p[P];
#pragma unroll
    for (int j = 0; j < P; ++j) p[j] = (b[2 * j + 1] << 4) + b[2 * j];
    if constexpr (P == 4) return __byte_perm(__byte_perm(p[0], p[1], 0x0040), __byte_perm(p[2], p[3], 0x0040), 0x5410);
    else if constexpr (P == 2) return __byte_perm(p[0], p[1], 0x0040) & 0xffffu;
    else return p[0] & 0xffu;
}

// The INT2 codes of one word (elements 16i .. 16i + 15 of the lane, fewer for E < 16) of a
// quantizable row (hadamard.h): the sign bits s of x and b of e = fma(|x|, f, -T) are shifted in
// from the top (funnel shifts; element 15's first, s above b), then each pair becomes the code
// ~(s << 1 | (s ^ b)): bit 1 is "not negative", bit 0 "big" for x >= 0 and "not big" below.
template <int E> __device__ __forceinline__ uint32_t int2_code_word(const float *v, float f) {
    constexpr int N = E < 16 ? E : 16;
    uint32_t acc = 0;
#pragma unroll
    for (int k = N - 1; k >= 0; --k) {
        const float e = __fmaf_rn(fabsf(v[k]), f, -rot::kInt2Threshold);  // |x| is an operand modifier
        acc = __funnelshift_l(__float_as_uint(v[k]), acc, 1);
        acc = __funnelshift_l(__float_as_uint(e), acc, 1);
    }
    const uint32_t codes = ~(acc ^ ((acc >> 1) & 0x55555555u));
    return N == 16 ? codes : codes & ((1u << (2 * N)) - 1u);
}

// ---------------------------------------------------------------- row exchange
// A lane of an L-lane group owns C consecutive 16-byte chunks of its row (chunks g C .. g C +
// C - 1); a global access instruction is better made of L consecutive chunks a group (whole
// sectors), i.e. chunk i L + g in lane g at instruction i. exchange_row converts between the two
// orders through the warp's shared buffer. Chunk c of the warp's row r sits at
// r N + (c ^ ((c / 8 ^ r K) & 7)) (N = L C >= 8 chunks a row, K = 5 for L = 2, else 6): for
// every L in 2..32 and C in {4, 8} both orders put the 8 lanes of a shared-memory phase on 8
// distinct bank quads (checked exhaustively). Every lane of the warp calls it (it synchronizes
// the warp).
template <int L, int C> struct RowExchange {
    static constexpr int kRows = 32 / L, kChunks = L * C;
    static_assert(L * C >= 8, "the swizzle permutes runs of 8 chunks");
    static constexpr uint32_t kK = L <= 2 ? 5u : 6u;
    static __device__ __forceinline__ uint32_t at(uint32_t r, uint32_t c) {
        return r * kChunks + (c ^ (((c >> 3) ^ (r * kK)) & 7u));
    }
};
template <int L, int C, bool ToCoalesced>
__device__ __forceinline__ void exchange_row(uint4 *warp_buf, uint32_t grp, uint32_t g, const uint4 (&in)[C],
                                             uint4 (&out)[C]) {
    using X = RowExchange<L, C>;
    __syncwarp();  // earlier reads of the buffer are done
#pragma unroll
    for (uint32_t j = 0; j < C; ++j) warp_buf[X::at(grp, ToCoalesced ? g * C + j : j * L + g)] = in[j];
    __syncwarp();
#pragma unroll
    for (uint32_t i = 0; i < C; ++i) out[i] = warp_buf[X::at(grp, ToCoalesced ? i * L + g : g * C + i)];
}

// ---------------------------------------------------------------- launches
struct RowSplit {
    int64_t total = 0;             // rows of this launch: items * sides * heads
    int side_first = 0, sides = 1; // sides of this launch (K = 0, V = 1)
    bool count = true;             // counts out-of-range tokens / rows
    FastDivmod units_item;         // sides * heads
    FastDivmod heads;
    bool small_units = true;       // total < 2^31
};

RowSplit make_split(int64_t items, int64_t heads, int side_first, int sides, bool count) {
    RowSplit s;
    s.side_first = side_first;
    s.sides = sides;
    s.count = count;
    s.units_item = FastDivmod(uint32_t(sides * heads));
    s.heads = FastDivmod(uint32_t(heads));
    s.total = items * sides * heads;
    s.small_units = s.total < (int64_t(1) << 31);
    return s;
}

// Row u of a launch -> item (token or output row), side (0 K, 1 V) and head.
__device__ __forceinline__ void split_unit(const RowSplit &s, int64_t u, int64_t &item, int &side, uint32_t &head) {
    uint32_t rest;
    if (s.small_units) {
        uint32_t q;
        s.units_item.divmod(uint32_t(u), q, rest);
        item = q;
    } else {
        item = u / s.units_item.divisor;
        rest = uint32_t(u - item * s.units_item.divisor);
    }
    uint32_t sl;
    s.heads.divmod(rest, sl, head);
    side = s.side_first + int(sl);
}

// One wave of resident blocks at most (kBlocksPerSm a multiprocessor): warps then
// stride over several row groups, sharing their prologue (sign masks, parameters) among them.
unsigned grid_for(int64_t total, int rows_per_warp) {
    const int64_t warps = (total + rows_per_warp - 1) / rows_per_warp;
    const int64_t blocks = (warps + kThreads / 32 - 1) / (kThreads / 32);
    const int sms = multiprocessor_count();
    const int64_t cap = sms > 0 ? int64_t(sms) * kBlocksPerSm : (int64_t(1) << 20);
    return unsigned(blocks < cap ? blocks : cap);
}

// ---------------------------------------------------------------- write
struct WriteLaunch {
    WriteArgs a;
    RowSplit split;
    FastDivmod block_size;  // valid when small_slots
    bool small_slots;
};

// Rows a group makes per iteration (all their loads in flight before the first is computed).
constexpr int kRowsPerGroup = 1;

// The sign flips of a lane's INT4 elements, in the form its input dtype applies them in.
template <Elem In> using LaneSigns = std::conditional_t<In == Elem::F32, uint32_t, PairSigns>;
template <Elem In> __device__ __forceinline__ LaneSigns<In> make_lane_signs(uint32_t mask) {
    if constexpr (In == Elem::F32) return mask;
    else return spread_pair_signs(mask);
}

// A lane's E input elements as floats, INT4 sign flips applied (16-bit inputs: to the raw
// pair, one xor for two elements; exact, as a sign flip is).
template <Elem In, bool Int4, int E, int N>
__device__ __forceinline__ void widen_row(const Words<N> &in, const LaneSigns<In> &signs, float (&v)[E]) {
    if constexpr (In == Elem::F32) {
#pragma unroll
        for (int e = 0; e < E; ++e) v[e] = Int4 ? apply_sign(__uint_as_float(in.w[e]), signs, e) : __uint_as_float(in.w[e]);
    } else {
#pragma unroll
        for (int k = 0; k < E / 2; ++k) {
            uint32_t w = in.w[k];
            if constexpr (Int4) w ^= pair_sign_bits(signs, k);
            v[2 * k] = pair_lo<In>(w);
            v[2 * k + 1] = pair_hi<In>(w);
        }
    }
}

// INT4: each x'_i rounded to the input dtype (16-bit: a pair a conversion), and the min and max
// of the rounded values (16-bit: halfwise on the pairs, then the two halves).
template <Elem In, int E> __device__ __forceinline__ void round_min_max(float (&v)[E], float &mn, float &mx) {
    if constexpr (In == Elem::F32) {
        mn = mx = v[0];
#pragma unroll
        for (int e = 1; e < E; ++e) {
            mn = min_nan(mn, v[e]);
            mx = max_nan(mx, v[e]);
        }
    } else {
        constexpr int K = E / 2;
        uint32_t pk[K];
#pragma unroll
        for (int k = 0; k < K; ++k) pk[k] = pack_rn<In>(v[2 * k], v[2 * k + 1]);
        uint32_t lo = pk[0], hi = pk[0];
#pragma unroll
        for (int k = 1; k < K; ++k) {
            lo = pair_extreme_nan<In, false>(lo, pk[k]);
            hi = pair_extreme_nan<In, true>(hi, pk[k]);
        }
        mn = min_nan(pair_lo<In>(lo), pair_hi<In>(lo));
        mx = max_nan(pair_lo<In>(hi), pair_hi<In>(hi));
#pragma unroll
        for (int k = 0; k < K; ++k) {
            v[2 * k] = pair_lo<In>(pk[k]);
            v[2 * k + 1] = pair_hi<In>(pk[k]);
        }
    }
}

// Quantizes one row (E elements a lane of its group, signs applied) into the lane's code words
// and the scale.
template <Elem In, bool Int4, int D, int NW>
__device__ __forceinline__ void quantize_row(float (&v)[RowShape<D>::E], uint32_t g, uint32_t (&codes)[NW],
                                             uint32_t &scale_bits) {
    constexpr int E = RowShape<D>::E, L = RowShape<D>::L;
    group_hadamard<E, L>(v, g);
    bool bad;
    if constexpr (Int4) {
        float mn, mx;
        round_min_max<In, E>(v, mn, mx);
        group_min_max<L>(mn, mx);
        const rot::Int4Quant q = rot::int4_quant(mn, mx, !(rot::is_finite(mn) && rot::is_finite(mx)));
        uint32_t b[E];
        if (q.inv >= 0x1p-122f) {  // inv / 16 exact (every row but those with s > 2^122)
            const float inv16 = q.inv * 0.0625f, zh16 = q.zh * 0.0625f;
#pragma unroll
            for (int e = 0; e < E; ++e) b[e] = int4_code_bits(v[e], inv16, zh16);
        } else {
#pragma unroll
            for (int e = 0; e < E; ++e) b[e] = int4_code_bits_any(v[e], q.inv, q.zh);
        }
#pragma unroll
        for (int i = 0; i < NW; ++i) codes[i] = pack_int4_word<E>(b + 8 * i);
        scale_bits = rot::int4_scale_bits(q);
        bad = q.bad;
    } else {
        const float sum = group_sum_squares<E, L>(v);
        const rot::Int2Quant q = rot::int2_quant(sum, D, false);  // n not finite covers every x'_i
#pragma unroll
        for (int i = 0; i < NW; ++i) codes[i] = int2_code_word<E>(v + 16 * i, q.f);
        scale_bits = rot::int2_scale_bits(q);
        bad = q.bad;
    }
    if (bad) {
#pragma unroll
        for (int i = 0; i < NW; ++i) codes[i] = 0;
    }
}

template <Elem In, bool Int4, int D, int U>
__global__ void __launch_bounds__(kThreads, kBlocksPerSm) write_rotated_kernel(const WriteLaunch p) {
    using Shape = RowShape<D>;
    constexpr int E = Shape::E, L = Shape::L, RPW = Shape::RPW;
    constexpr int kInBytes = E * int(sizeof(storage_t<In>));
    constexpr int kCodeBytes = Int4 ? E / 2 : E / 4;
    pdl_launch_dependents();  // the next kernel may launch; it waits for our completion itself
    const WriteArgs &a = p.a;
    const uint32_t lane = threadIdx.x & 31, g = lane % L, grp = lane / L;
    const int64_t warp = (int64_t(blockIdx.x) * kThreads + threadIdx.x) >> 5;
    const int64_t warps = (int64_t(gridDim.x) * kThreads) >> 5;
    const int64_t num_slots = a.cache.num_slots();
    const int64_t total = p.split.total;
    pdl_wait();
    LaneSigns<In> k_signs{}, v_signs{};  // scalars, not an array: no local memory
    if constexpr (Int4) {  // only the sides of this launch: the other may have another head size
        if (p.split.side_first == 0) k_signs = make_lane_signs<In>(lane_sign_mask<E>(a.cache.k.rotation_signs, g));
        if (p.split.side_first + p.split.sides > 1)
            v_signs = make_lane_signs<In>(lane_sign_mask<E>(a.cache.v.rotation_signs, g));
    }
    for (int64_t base = warp * (RPW * U); base < total; base += warps * (RPW * U)) {
        int64_t t[U], slot[U];
        int side[U];
        uint32_t head[U];
        Words<kInBytes> in[U];
#pragma unroll
        for (int j = 0; j < U; ++j) {  // every load of the U rows first
            const int64_t u = base + j * RPW + grp;
            t[j] = 0;
            slot[j] = -1;
            side[j] = 0;
            head[j] = 0;
            if (u < total) {
                split_unit(p.split, u, t[j], side[j], head[j]);
                slot[j] = a.slots[t[j]];
                const RowsSide &src = side[j] ? a.value : a.key;
                in[j] = load_bytes<kInBytes>(src.data + src.offset(t[j], head[j]) + int64_t(g) * kInBytes);
            } else {
#pragma unroll
                for (int i = 0; i < (kInBytes + 3) / 4; ++i) in[j].w[i] = 0;
            }
        }
#pragma unroll
        for (int j = 0; j < U; ++j) {
            if (slot[j] >= num_slots && p.split.count && side[j] == p.split.side_first && head[j] == 0 && g == 0 &&
                a.out_of_range)
                atomicAdd(reinterpret_cast<unsigned long long *>(a.out_of_range), 1ull);
            float v[E];
            widen_row<In, Int4, E>(in[j], side[j] ? v_signs : k_signs, v);
            Words<kCodeBytes> codes;
            uint32_t scale_bits;
            quantize_row<In, Int4, D>(v, g, codes.w, scale_bits);
            if (slot[j] >= 0 && slot[j] < num_slots) {
                int64_t block, offset;
                if (p.small_slots) {
                    uint32_t q, r;
                    p.block_size.divmod(uint32_t(slot[j]), q, r);
                    block = q;
                    offset = r;
                } else {
                    block = slot[j] / a.cache.block_size;
                    offset = slot[j] - block * a.cache.block_size;
                }
                const CacheSide &dst = side[j] ? a.cache.v : a.cache.k;
                store_bytes<kCodeBytes>(dst.data + dst.offset(block, offset, head[j]) + int64_t(g) * kCodeBytes, codes);
                if (g == 0) *reinterpret_cast<uint32_t *>(dst.scale_at(block, offset, head[j])) = scale_bits;
            }
        }
    }
}

// Calls f(std::integral_constant<int, D>{}) for a validated power-of-two head size.
template <typename F> void dispatch_head_size(int64_t d, F &&f) {
    switch (d) {
        case 2: f(std::integral_constant<int, 2>{}); break;
        case 4: f(std::integral_constant<int, 4>{}); break;
        case 8: f(std::integral_constant<int, 8>{}); break;
        case 16: f(std::integral_constant<int, 16>{}); break;
        case 32: f(std::integral_constant<int, 32>{}); break;
        case 64: f(std::integral_constant<int, 64>{}); break;
        case 128: f(std::integral_constant<int, 128>{}); break;
        case 256: f(std::integral_constant<int, 256>{}); break;
        case 512: f(std::integral_constant<int, 512>{}); break;
        default: f(std::integral_constant<int, 1024>{}); break;
    }
}

void launch_write(const WriteArgs &a, int64_t d, int side_first, int sides, bool count, pkv_stream s) {
    WriteLaunch p;
    p.a = a;
    p.split = make_split(a.num_tokens, a.cache.num_heads, side_first, sides, count);
    p.small_slots = a.cache.num_slots() < (int64_t(1) << 31);
    p.block_size = FastDivmod(p.small_slots ? uint32_t(a.cache.block_size) : 1u);
    const bool int4 = a.cache.format == PKV_CACHE_FORMAT_INT4_PER_TOKEN_HEAD;
    dispatch_elem(a.in, [&](auto in) {
        constexpr Elem In = decltype(in)::value;
        if constexpr (!elem_is_fp8(In)) {
            dispatch_head_size(d, [&](auto dd) {
                constexpr int D = decltype(dd)::value;
                constexpr int U = kRowsPerGroup;
                const unsigned grid = grid_for(p.split.total, RowShape<D>::RPW * U);
                if (int4) {
                    launch_pdl(write_rotated_kernel<In, true, D, U>, grid, kThreads, s, p);
                } else if constexpr (D >= 4) {
                    launch_pdl(write_rotated_kernel<In, false, D, U>, grid, kThreads, s, p);
                }
            });
        }
    });
    cuda_check_launch("write_rotated_kernel");
}

// ---------------------------------------------------------------- INT4 original-domain gather
// f16x2 words as integers (see the exactness notes above).
__device__ __forceinline__ uint32_t h2_add(uint32_t a, uint32_t b) {
    uint32_t r;
    asm("add.rn.f16x2 %0, %1, %2;" : "=r"(r) : "r"(a), "r"(b));
    return r;
}
__device__ __forceinline__ uint32_t h2_sub(uint32_t a, uint32_t b) {
    uint32_t r;
    asm("sub.rn.f16x2 %0, %1, %2;" : "=r"(r) : "r"(a), "r"(b));
    return r;
}
__device__ __forceinline__ uint32_t h2_fma(uint32_t a, uint32_t b, uint32_t c) {
    uint32_t r;
    asm("fma.rn.f16x2 %0, %1, %2, %3;" : "=r"(r) : "r"(a), "r"(b), "r"(c));
    return r;
}
__device__ __forceinline__ float h2_lo(uint32_t w) {
    float r;
    asm("{.reg .b16 l, h;\n mov.b32 {l, h}, %1;\n cvt.f32.f16 %0, l;}" : "=f"(r) : "r"(w));
    return r;
}
__device__ __forceinline__ float h2_hi(uint32_t w) {
    float r;
    asm("{.reg .b16 l, h;\n mov.b32 {l, h}, %1;\n cvt.f32.f16 %0, h;}" : "=f"(r) : "r"(w));
    return r;
}
constexpr uint32_t kH2One = 0x3c003c00u, kH2MinusOne = 0xbc00bc00u, kH2PlusMinus = 0xbc003c00u;

// Whether a head size's INT4 original-domain gather runs on f16x2 words (elements e and e + 4 of
// each 8-element run in word 4 (e / 8) + e % 8, e % 8 < 4).
template <int D> constexpr bool kInt4GatherF16 = RowShape<D>::E >= 8 && D <= 128;

// The lane's sign mask (bit e: negate element e) spread for those words (as PairSigns does for
// adjacent elements): word p's two signs at bits 2 (p % 8) and 2 (p % 8) + 16 of lo (p < 8) or hi.
template <int E> __device__ __forceinline__ PairSigns spread_quad_signs(uint32_t m) {
    PairSigns s;
#pragma unroll
    for (int p = 0; p < E / 2; ++p) {
        const int e = 8 * (p / 4) + p % 4, j = p % 8;
        const uint32_t b = ((m >> e) & 1u) << (2 * j) | ((m >> (e + 4)) & 1u) << (2 * j + 16);
        if (p < 8) s.lo |= b;
        else s.hi |= b;
    }
    return s;
}
template <int D> using Int4GatherSigns = std::conditional_t<kInt4GatherF16<D>, PairSigns, uint32_t>;
template <int D> __device__ __forceinline__ Int4GatherSigns<D> make_gather_signs(uint32_t mask) {
    if constexpr (kInt4GatherF16<D>) return spread_quad_signs<RowShape<D>::E>(mask);
    else return mask;
}

// One INT4 row in the original domain (hadamard.h): sign_i ⊙ (sigma * w_i), w = H (q - z) exact.
template <int D>
__device__ __forceinline__ void int4_original_row(const uint32_t *cw, uint32_t bits, const Int4GatherSigns<D> &signs,
                                                  uint32_t g, float (&v)[RowShape<D>::E]) {
    constexpr int E = RowShape<D>::E, L = RowShape<D>::L;
    const rot::Int4Dequant q = rot::int4_dequant_params(bits);
    const float sigma = rot::int4_inverse_factor(q, D);
    if constexpr (kInt4GatherF16<D>) {
        constexpr int P = E / 2;
        uint32_t h[P];
        const uint32_t zz = (0x6400u | uint32_t(q.z)) * 0x10001u;  // 1024 + z, both halves
#pragma unroll
        for (int i = 0; i < E / 8; ++i) {  // nibbles k and k + 4 of a word as 1024 + q, minus 1024 + z
#pragma unroll
            for (int k = 0; k < 4; ++k) h[4 * i + k] = h2_sub(((cw[i] >> (4 * k)) & 0x000f000fu) | 0x64006400u, zz);
        }
        // Element stages 1 and 2 pair words p, p ^ 1 and p, p ^ 2; stage 4 lies inside a word;
        // stages 8 and 16 pair words p, p ^ 4 and p, p ^ 8.
#pragma unroll
        for (int w = 1; w < P; w <<= 1) {
#pragma unroll
            for (int p = 0; p < P; ++p) {
                if ((p & w) == 0) {
                    const uint32_t a = h[p], b = h[p + w];
                    h[p] = h2_add(a, b);
                    h[p + w] = h2_sub(a, b);
                }
            }
            if (w == 2) {
#pragma unroll
                for (int p = 0; p < P; ++p) h[p] = h2_fma(h[p], kH2PlusMinus, __byte_perm(h[p], 0, 0x1032));
            }
        }
#pragma unroll
        for (int m = 1; m < L; m <<= 1) {
            const uint32_t sgn = (g & m) ? kH2MinusOne : kH2One;
#pragma unroll
            for (int p = 0; p < P; ++p) h[p] = h2_fma(h[p], sgn, __shfl_xor_sync(kFull, h[p], m));
        }
#pragma unroll
        for (int i = 0; i < E / 8; ++i) {
#pragma unroll
            for (int k = 0; k < 4; ++k) {
                const uint32_t w = h[4 * i + k] ^ pair_sign_bits(signs, 4 * i + k);
                v[8 * i + k] = __fmul_rn(sigma, h2_lo(w));
                v[8 * i + k + 4] = __fmul_rn(sigma, h2_hi(w));
            }
        }
    } else {
        const float zm = __uint_as_float(0x4b000000u | uint32_t(q.z));  // 2^23 + z
#pragma unroll
        for (int e = 0; e < E; ++e) {
            const uint32_t c = (cw[e / 8] >> (4 * (e % 8))) & 0xfu;
            v[e] = __fsub_rn(__uint_as_float(0x4b000000u | c), zm);
        }
        group_hadamard<E, L>(v, g);  // exact: integers of magnitude <= 15 D
#pragma unroll
        for (int e = 0; e < E; ++e) v[e] = apply_sign(__fmul_rn(sigma, v[e]), signs, e);
    }
}

// ---------------------------------------------------------------- gather
struct GatherLaunch {
    GatherArgs a;
    RowSplit split;
};

// A lane's share of one gather row: where it comes from (its codes and scale, loaded) and where
// it goes.
template <int kCodeBytes> struct GatherRow {
    Words<kCodeBytes> codes;
    uint32_t bits = 0;
    char *dst = nullptr;  // the lane's output bytes; nullptr: nothing to write
    bool v_side = false;
};

// Resolves row u of the launch (u >= total: an inactive row) and issues its loads; counts it
// when it is out of range.
template <int kCodeBytes, int kOutBytes>
__device__ __forceinline__ GatherRow<kCodeBytes> fetch_gather_row(const GatherLaunch &p, int64_t u, uint32_t g) {
    const GatherArgs &a = p.a;
    GatherRow<kCodeBytes> r;
#pragma unroll
    for (int i = 0; i < (kCodeBytes + 3) / 4; ++i) r.codes.w[i] = 0;
    if (u >= p.split.total) return r;
    int64_t row, block, offset;
    int side;
    uint32_t head;
    split_unit(p.split, u, row, side, head);
    r.v_side = side != 0;
    if (!gather_row_source(a, row, block, offset)) return r;
    if (block < 0) {
        if (p.split.count && side == p.split.side_first && head == 0 && g == 0 && a.out_of_range)
            atomicAdd(reinterpret_cast<unsigned long long *>(a.out_of_range), 1ull);
        return r;
    }
    const CacheSide &src = side ? a.cache.v : a.cache.k;
    r.codes = load_bytes<kCodeBytes>(src.data + src.offset(block, offset, head) + int64_t(g) * kCodeBytes);
    r.bits = *reinterpret_cast<const uint32_t *>(src.scale_at(block, offset, head));
    const RowsSide &dst = side ? a.value : a.key;
    r.dst = dst.data + dst.offset(row, head) + int64_t(g) * kOutBytes;
    return r;
}

// Each warp's next row group is fetched (source lookup, code and scale loads) before the current
// one is computed, so that the chain of dependent loads of a row overlaps the arithmetic of the
// previous one.
template <Elem Out, bool Int4, int D>
__global__ void __launch_bounds__(kThreads, kBlocksPerSm) gather_rotated_kernel(const GatherLaunch p) {
    using Shape = RowShape<D>;
    constexpr int E = Shape::E, L = Shape::L, RPW = Shape::RPW;
    constexpr int kOutBytes = E * int(sizeof(storage_t<Out>));
    constexpr int kCodeBytes = Int4 ? E / 2 : E / 4;
    pdl_launch_dependents();  // the next kernel may launch; it waits for our completion itself
    const GatherArgs &a = p.a;
    const uint32_t lane = threadIdx.x & 31, g = lane % L, grp = lane / L;
    const int64_t warp = (int64_t(blockIdx.x) * kThreads + threadIdx.x) >> 5;
    const int64_t warps = (int64_t(gridDim.x) * kThreads) >> 5;
    const bool original = !a.cache.rotated_domain;
    const int64_t total = p.split.total;
    pdl_wait();
    Int4GatherSigns<D> k_signs{}, v_signs{};
    if constexpr (Int4) {  // only the sides of this launch: the other may have another head size
        if (original) {
            if (p.split.side_first == 0) k_signs = make_gather_signs<D>(lane_sign_mask<E>(a.cache.k.rotation_signs, g));
            if (p.split.side_first + p.split.sides > 1)
                v_signs = make_gather_signs<D>(lane_sign_mask<E>(a.cache.v.rotation_signs, g));
        }
    }
    int64_t base = warp * RPW;
    GatherRow<kCodeBytes> cur = fetch_gather_row<kCodeBytes, kOutBytes>(p, base + grp, g);
    for (; base < total; base += warps * RPW) {
        const GatherRow<kCodeBytes> next = fetch_gather_row<kCodeBytes, kOutBytes>(p, base + warps * RPW + grp, g);
        float v[E];  // every branch below is uniform over the launch: every lane reaches the shuffles
        if constexpr (Int4) {
            if (original) {
                const Int4GatherSigns<D> signs = cur.v_side ? v_signs : k_signs;
                int4_original_row<D>(cur.codes.w, cur.bits, signs, g, v);
            } else {
                const rot::Int4Dequant q = rot::int4_dequant_params(cur.bits);
                const float zm = __uint_as_float(0x4b000000u | uint32_t(q.z));  // 2^23 + z
#pragma unroll
                for (int i = 0; i < (E + 7) / 8; ++i) {
                    // Nibbles to bytes (even elements, odd elements), a byte to 2^23 + code.
                    const uint32_t even = cur.codes.w[i] & 0x0f0f0f0fu, odd = (cur.codes.w[i] >> 4) & 0x0f0f0f0fu;
#pragma unroll
                    for (int k = 0; k < 4 && 8 * i + 2 * k < E; ++k) {
                        const float c0 = __uint_as_float(__byte_perm(even, 0x4b000000u, 0x7540 + k));
                        const float c1 = __uint_as_float(__byte_perm(odd, 0x4b000000u, 0x7540 + k));
                        v[8 * i + 2 * k] = __fmul_rn(q.s, __fsub_rn(c0, zm));
                        v[8 * i + 2 * k + 1] = __fmul_rn(q.s, __fsub_rn(c1, zm));
                    }
                }
            }
        } else {
            // Centroids are symmetric (c0 = -c3, c1 = -c2, and so their products with the
            // factor): the magnitude is c3's when the code's bits agree, the sign its bit 1.
            // The factor is scale * D in the rotated domain, scale in the original one.
            const float scale = __uint_as_float(cur.bits);
            const float factor = original ? scale : rot::int2_dequant_factor(scale, D);
            const float big = rot::int2_dequant(3u, factor), small = rot::int2_dequant(2u, factor);
#pragma unroll
            for (int i = 0; i < (E + 15) / 16; ++i) {
                const uint32_t w = cur.codes.w[i], differ = w ^ (w >> 1), negative = ~w;
#pragma unroll
                for (int k = 0; k < 16 && 16 * i + k < E; ++k) {
                    const float mag = (differ >> (2 * k)) & 1u ? small : big;
                    v[16 * i + k] = __uint_as_float(__float_as_uint(mag) ^ ((negative << (30 - 2 * k)) & 0x80000000u));
                }
            }
            if (original) group_hadamard<E, L>(v, g);
        }
        Words<kOutBytes> out;
        if constexpr (Out == Elem::F32) {
#pragma unroll
            for (int e = 0; e < E; ++e) out.w[e] = __float_as_uint(rot::to_output<Out>(v[e]));
        } else {
#pragma unroll
            for (int k = 0; k < E / 2; ++k) out.w[k] = pack_rn<Out>(v[2 * k], v[2 * k + 1]);
        }
        if constexpr (E == 32 && L >= 2 && kOutBytes == 64) {  // 16-bit outputs: whole-sector stores (exchange_row)
            constexpr int C = kOutBytes / 16;
            __shared__ uint4 stage[kThreads / 32][RowExchange<L, C>::kRows * RowExchange<L, C>::kChunks];
            uint4 own[C], coalesced[C];
#pragma unroll
            for (int j = 0; j < C; ++j)
                own[j] = make_uint4(out.w[4 * j], out.w[4 * j + 1], out.w[4 * j + 2], out.w[4 * j + 3]);
            exchange_row<L, C, true>(stage[threadIdx.x >> 5], grp, g, own, coalesced);
            if (cur.dst) {
                char *row = cur.dst - int64_t(g) * kOutBytes;
#pragma unroll
                for (uint32_t i = 0; i < C; ++i) {
                    Words<16> w;
                    w.w[0] = coalesced[i].x; w.w[1] = coalesced[i].y; w.w[2] = coalesced[i].z; w.w[3] = coalesced[i].w;
                    store_bytes<16>(row + 16 * (i * L + g), w);
                }
            }
        } else if (cur.dst) {
            store_bytes<kOutBytes>(cur.dst, out);
        }
        cur = next;
    }
}

void launch_gather(const GatherArgs &a, int64_t d, int side_first, int sides, bool count, pkv_stream s) {
    GatherLaunch p;
    p.a = a;
    p.split = make_split(a.num_rows, a.cache.num_heads, side_first, sides, count);
    const bool int4 = a.cache.format == PKV_CACHE_FORMAT_INT4_PER_TOKEN_HEAD;
    dispatch_elem(a.out, [&](auto out) {
        constexpr Elem Out = decltype(out)::value;
        if constexpr (!elem_is_fp8(Out)) {
            dispatch_head_size(d, [&](auto dd) {
                constexpr int D = decltype(dd)::value;
                const unsigned grid = grid_for(p.split.total, RowShape<D>::RPW);
                if (int4) {
                    launch_pdl(gather_rotated_kernel<Out, true, D>, grid, kThreads, s, p);
                } else if constexpr (D >= 4) {
                    launch_pdl(gather_rotated_kernel<Out, false, D>, grid, kThreads, s, p);
                }
            });
        }
    });
    cuda_check_launch("gather_rotated_kernel");
}

}  // namespace

// K and V in one launch when their head sizes agree; otherwise one launch a side (the first
// counts the out-of-range tokens).
void cuda_write_rotated(const WriteArgs &a, pkv_stream stream) {
    const pkv_stream s = stream;
    const int64_t dk = a.cache.k.head_size;
    if (!a.cache.has_v || a.cache.v.head_size == dk) {
        launch_write(a, dk, 0, a.cache.has_v ? 2 : 1, true, s);
    } else {
        launch_write(a, dk, 0, 1, true, s);
        launch_write(a, a.cache.v.head_size, 1, 1, false, s);
    }
}

void cuda_gather_rotated(const GatherArgs &a, pkv_stream stream) {
    const pkv_stream s = stream;
    const int64_t dk = a.cache.k.head_size;
    const bool with_v = a.value.data != nullptr;
    if (!with_v || a.cache.v.head_size == dk) {
        launch_gather(a, dk, 0, with_v ? 2 : 1, true, s);
    } else {
        launch_gather(a, dk, 0, 1, true, s);
        launch_gather(a, a.cache.v.head_size, 1, 1, false, s);
    }
}

}  // namespace pkv
