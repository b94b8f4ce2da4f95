// CUDA write: each thread owns one unit — one aligned vector of one head row of K or V — and
// moves that unit for a strided series of tokens. The unit's head, chunk, source and cache
// offsets and FP8 divisor are worked out once per thread; per token only the slot, two row
// addresses and the conversion remain. All loads of a step (slots, source vectors) are issued
// before any store, so small calls pay one load latency and large calls keep bytes in flight.
// Launched with programmatic dependent launch (sm_90+): the prologue overlaps the previous
// kernel, and no global memory is touched before pdl_wait().
#include "core/element_convert.h"
#include "core/fast_divmod.h"
#include "core/ops.h"
#include "cuda/cuda_check.cuh"
#include "cuda/pairs.cuh"

namespace pkv {
namespace {

constexpr int kThreads = 256;       // threads a block (large calls)
constexpr int kSmallThreads = 128;  // decode-size calls: twice the blocks, spread over more SMs

struct WriteLaunch {
    WriteArgs a;
    uint32_t units_k;             // vectors in a token's K row (heads * chunks_k)
    FastDivmod units_token;       // vectors in a token's K and V rows: threads per token
    FastDivmod chunks_k, chunks_v;  // vectors per head row
    FastDivmod block_size;        // valid when small_slots
    bool small_slots;             // every slot < 2^31
    int64_t token_stride;         // tokens between a thread's consecutive tokens
};

// Tokens a thread moves per step in a large call (all loaded before the first store). Small
// calls use 1, spreading the work over more multiprocessors.
template <Elem Cache> constexpr int large_call_units() { return elem_is_fp8(Cache) ? 2 : 4; }
constexpr int64_t kLargeCallUnits = int64_t(1) << 18;

// A vector of VEC elements of T as the registers hold it: 32-bit words where it fills whole
// words, so that packing and unpacking narrow elements is one shift, mask or permute.
template <typename T, int VEC>
using Raw = std::conditional_t<(VEC * sizeof(T)) % 4 == 0, Vec<uint32_t, VEC * sizeof(T) / 4>, Vec<T, VEC>>;

template <typename T, int VEC> __device__ __forceinline__ Vec<T, VEC> elements(const Raw<T, VEC> &raw) {
    Vec<T, VEC> v;
    memcpy(v.v, raw.v, sizeof(v.v));
    return v;
}

// The elements of one input vector as floats; 16-bit pairs straight from their word.
template <Elem In, int VEC>
__device__ __forceinline__ void widen(const Raw<storage_t<In>, VEC> &in, float (&f)[VEC]) {
    if constexpr (sizeof(storage_t<In>) == 2 && VEC % 2 == 0) {
#pragma unroll
        for (int k = 0; k < VEC / 2; ++k) {
            f[2 * k] = pair_lo<In>(in.v[k]);
            f[2 * k + 1] = pair_hi<In>(in.v[k]);
        }
    } else {
        const Vec<storage_t<In>, VEC> e = elements<storage_t<In>, VEC>(in);
#pragma unroll
        for (int k = 0; k < VEC; ++k) f[k] = to_f32<In>(e.v[k]);
    }
}

// One input vector -> one cache vector. FP8: fp8_quotient with its scale test hoisted out of
// the element loop, the hardware converting pairs, and two pairs making each word.
template <Elem In, Elem Cache, int VEC>
__device__ __forceinline__ Raw<storage_t<Cache>, VEC> encode_vector(const Raw<storage_t<In>, VEC> &in,
                                                                     const Fp8Divisor &divisor) {
    using D = storage_t<Cache>;
    Raw<D, VEC> out;
    if constexpr (In == Cache) {
        out = in;
    } else if constexpr (elem_is_fp8(Cache) && VEC % 4 == 0) {
        float q[VEC];
        widen<In, VEC>(in, q);
        if (divisor.fast) {
#pragma unroll
            for (int e = 0; e < VEC; ++e) q[e] = fp8_quotient_fast(q[e], divisor);
        } else {
#pragma unroll
            for (int e = 0; e < VEC; ++e) q[e] = q[e] / divisor.scale;
        }
#pragma unroll
        for (int w = 0; w < VEC / 4; ++w) {
            const uint32_t lo = fmt::f32x2_to_fp8x2<Cache == Elem::E5M2>(q[4 * w], q[4 * w + 1]);
            const uint32_t hi = fmt::f32x2_to_fp8x2<Cache == Elem::E5M2>(q[4 * w + 2], q[4 * w + 3]);
            out.v[w] = lo | hi << 16;
        }
    } else {
        const Vec<storage_t<In>, VEC> e = elements<storage_t<In>, VEC>(in);
        Vec<D, VEC> o;
#pragma unroll
        for (int k = 0; k < VEC; ++k) o.v[k] = encode_for_cache<In, Cache>(e.v[k], divisor);
        memcpy(out.v, o.v, sizeof(o.v));
    }
    return out;
}

template <Elem In, Elem Cache, int VEC, int U>
__global__ void __launch_bounds__(kThreads) write_kv_kernel(const WriteLaunch p) {
    using S = storage_t<In>;
    using D = storage_t<Cache>;
    constexpr bool kScaled = elem_is_fp8(Cache);
    pdl_launch_dependents();  // the next kernel may launch; it waits for our completion itself
    const WriteArgs &a = p.a;
    uint32_t first, unit;
    p.units_token.divmod(blockIdx.x * blockDim.x + threadIdx.x, first, unit);
    if (first >= p.token_stride) return;  // past the last whole group of units
    const bool is_v = unit >= p.units_k;
    uint32_t head, chunk;
    (is_v ? p.chunks_v : p.chunks_k).divmod(is_v ? unit - p.units_k : unit, head, chunk);
    const RowsSide &src = is_v ? a.value : a.key;
    const CacheSide &dst = is_v ? a.cache.v : a.cache.k;
    const char *const src_unit = src.data + head * src.stride_head + int64_t(chunk) * (VEC * sizeof(S));
    char *const dst_unit = dst.data + head * dst.stride_head + dst.element_offset(int64_t(chunk) * VEC, sizeof(D));
    const float *scale = kScaled && dst.scale ? dst.scale + (a.cache.per_head_scale ? head : 0) : nullptr;
    const bool counts = unit == 0 && a.out_of_range;  // one count per token
    const int64_t num_slots = a.cache.num_slots();
    const int64_t stride_block = dst.stride_block, stride_slot = dst.stride_slot;
    const int64_t step = p.token_stride * U;
    Fp8Divisor divisor;
    bool have_divisor = false;
    pdl_wait();
    for (int64_t t = first; t < a.num_tokens; t += step) {
        // The scale is loaded in the loop (not hoisted: its reciprocal would then wait for it
        // before the row loads issue), ahead of the rows, so its reciprocal overlaps their wait.
        float scale_value = 1.0f;
        if (kScaled && !have_divisor && scale) scale_value = *scale;
        int64_t slot[U];
        Raw<S, VEC> in[U];
#pragma unroll
        for (int i = 0; i < U; ++i) {
            const int64_t ti = t + i * p.token_stride;
            slot[i] = -1;
            if (i > 0 && ti >= a.num_tokens) {
                in[i] = {};
                continue;
            }
            slot[i] = a.slots[ti];
            in[i] = *reinterpret_cast<const Raw<S, VEC> *>(src_unit + ti * src.stride_row);
        }
        if (kScaled && !have_divisor) {
            divisor = make_fp8_divisor(scale_value);
            have_divisor = true;
        }
        // Converted before the slot tests, so that the conversion and the address math of the
        // store can overlap (small calls are one latency chain per thread).
        Raw<D, VEC> out[U];
#pragma unroll
        for (int i = 0; i < U; ++i) out[i] = encode_vector<In, Cache, VEC>(in[i], divisor);
#pragma unroll
        for (int i = 0; i < U; ++i) {
            if (slot[i] < 0) continue;  // padding (or past the last token)
            if (slot[i] >= num_slots) {
                if (counts) atomicAdd(reinterpret_cast<unsigned long long *>(a.out_of_range), 1ull);
                continue;
            }
            int64_t block, offset;
            if (p.small_slots) {
                uint32_t q, m;
                p.block_size.divmod(uint32_t(slot[i]), q, m);
                block = q;
                offset = m;
            } else {
                block = slot[i] / a.cache.block_size;
                offset = slot[i] - block * a.cache.block_size;
            }
            *reinterpret_cast<Raw<D, VEC> *>(dst_unit + block * stride_block + offset * stride_slot) = out[i];
        }
    }
}

}  // namespace

void cuda_write_kv(const WriteArgs &a, pkv_stream stream) {
    WriteLaunch p;
    p.a = a;
    // Decode-size FP8 calls (under 2^14 vectors): at most 8 elements a thread. Few warps run per
    // scheduler then, so each thread's conversion chain is on the critical path (H100, T = 64:
    // 1.39 µs with 16, 1.30 with 8, 1.33 with 4). Mid-size calls keep wide vectors: 8-element
    // ones cost T = 1024 15 % of its bandwidth.
    const int64_t vectors = a.num_tokens * (a.cache.k.head_size + (a.cache.has_v ? a.cache.v.head_size : 0)) *
                            a.cache.num_heads / a.vec;
    const bool large = vectors >= kLargeCallUnits;
    if (elem_is_fp8(a.cache.elem) && vectors < (int64_t(1) << 14) && a.vec > 8) p.a.vec = 8;
    const uint32_t heads = uint32_t(a.cache.num_heads);
    p.chunks_k = FastDivmod(uint32_t(a.cache.k.head_size / p.a.vec));
    p.chunks_v = FastDivmod(a.cache.has_v ? uint32_t(a.cache.v.head_size / p.a.vec) : 1u);
    p.units_k = heads * p.chunks_k.divisor;
    const uint32_t units_token = p.units_k + (a.cache.has_v ? heads * p.chunks_v.divisor : 0u);
    p.units_token = FastDivmod(units_token);
    p.small_slots = a.cache.num_slots() < (int64_t(1) << 31);
    p.block_size = FastDivmod(p.small_slots ? uint32_t(a.cache.block_size) : 1u);
    dispatch_elem(a.in, [&](auto in) {
        dispatch_elem(a.cache.elem, [&](auto cache) {
            dispatch_vec(p.a.vec, [&](auto vec) {
                constexpr Elem In = decltype(in)::value, Cache = decltype(cache)::value;
                constexpr int V = decltype(vec)::value;
                if constexpr (!elem_is_fp8(In) && vector_fits(V, elem_bytes(In), elem_bytes(Cache))) {
                    constexpr int kLarge = large_call_units<Cache>();
                    const int64_t per_thread = large ? kLarge : 1;
                    // Threads: one per unit of every per_thread-th token, at least one token's
                    // worth, at most 2^22 blocks (then the threads stride over the tokens).
                    const int64_t threads = (a.num_tokens + per_thread - 1) / per_thread * int64_t(units_token);
                    const int block_threads = threads < (int64_t(1) << 15) ? kSmallThreads : kThreads;
                    int64_t blocks = (threads + block_threads - 1) / block_threads;
                    blocks = blocks < (1 << 22) ? blocks : (1 << 22);
                    p.token_stride = blocks * block_threads / units_token;
                    if (large) launch_pdl(write_kv_kernel<In, Cache, V, kLarge>, unsigned(blocks), block_threads, stream, p);
                    else launch_pdl(write_kv_kernel<In, Cache, V, 1>, unsigned(blocks), block_threads, stream, p);
                }
            });
        });
    });
    cuda_check_launch("write_kv_kernel");
}

}  // namespace pkv
