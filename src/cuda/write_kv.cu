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
    const int64_t step = p.token_stride * U;
    Fp8Divisor divisor;
    bool have_divisor = false;
    pdl_wait();
    for (int64_t t = first; t < a.num_tokens; t += step) {
        int64_t slot[U];
        Vec<S, VEC> in[U];
#pragma unroll
        for (int i = 0; i < U; ++i) {
            const int64_t ti = t + i * p.token_stride;
            slot[i] = -1;
            if (ti >= a.num_tokens) continue;
            slot[i] = a.slots[ti];
            in[i] = *reinterpret_cast<const Vec<S, VEC> *>(src_unit + ti * src.stride_row);
        }
        if constexpr (kScaled) {
            // After the first loads are in flight: the scale load and its reciprocal overlap them.
            if (!have_divisor) {
                divisor = make_fp8_divisor(scale ? *scale : 1.0f);
                have_divisor = true;
            }
        }
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
            Vec<D, VEC> out;
            if constexpr (kScaled && VEC % 2 == 0) {
                // fp8_quotient with its scale test hoisted out of the element loop, and the
                // hardware converting pairs (one independent instruction per two elements).
                float q[VEC];
                if (divisor.fast) {
#pragma unroll
                    for (int e = 0; e < VEC; ++e) q[e] = fp8_quotient_fast(to_f32<In>(in[i].v[e]), divisor);
                } else {
#pragma unroll
                    for (int e = 0; e < VEC; ++e) q[e] = to_f32<In>(in[i].v[e]) / divisor.scale;
                }
#pragma unroll
                for (int e = 0; e < VEC; e += 2) {
                    const uint16_t pair = fmt::f32x2_to_fp8x2<Cache == Elem::E5M2>(q[e], q[e + 1]);
                    out.v[e] = uint8_t(pair);
                    out.v[e + 1] = uint8_t(pair >> 8);
                }
            } else {
#pragma unroll
                for (int e = 0; e < VEC; ++e) out.v[e] = encode_for_cache<In, Cache>(in[i].v[e], divisor);
            }
            *reinterpret_cast<Vec<D, VEC> *>(dst_unit + block * dst.stride_block + offset * dst.stride_slot) = out;
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
