// CUDA block moves.
//  - pool copy_blocks and BLOCK_MAJOR gather / scatter: one flat grid over (pair, vector of the
//    block); each thread issues the loads of a few vectors before any store.
//  - copy_blocks of raw caches: the same flat grid in x, the cache in y; the cache table rides in the kernel
//    parameters (up to kMaxCachesPerLaunch caches a launch).
//  - LAYER_MAJOR gather / scatter: blockIdx.y is the layer, a flat grid over (block, vector of
//    the layer's K and V bytes) in x. The layer table rides in the kernel parameters (no device
//    allocation, graph capturable).
//  - swap: one cudaMemcpyAsync per run of consecutive ids (host ids, known before return).
// A pinned host transfer buffer is read / written by the kernels through its UVA mapping.
#include "core/block_moves.h"
#include "core/fast_divmod.h"
#include "cuda/cuda_check.cuh"

namespace pkv {
namespace {

constexpr int kThreads = 256;
constexpr int kUnroll = 4;                        // vectors per thread per step in large calls
constexpr int64_t kLargeCallUnits = int64_t(1) << 18;
constexpr int64_t kMaxGrid = int64_t(1) << 22;    // blocks in x; the kernels grid-stride past it

// The access type of `B` bytes.
template <int B> struct Access;
template <> struct Access<16> { using T = uint4; };
template <> struct Access<8> { using T = uint2; };
template <> struct Access<4> { using T = uint32_t; };
template <> struct Access<2> { using T = uint16_t; };
template <> struct Access<1> { using T = uint8_t; };

unsigned grid_for(int64_t units, int unroll, int64_t cap) {
    const int64_t per_block = int64_t(kThreads) * unroll;
    const int64_t blocks = (units + per_block - 1) / per_block;
    return unsigned(blocks < cap ? blocks : cap);
}

// Splits flat unit u into (item, vector in the item); FastDivmod while every u < 2^31.
struct UnitSplit {
    FastDivmod fast;
    int64_t per_item = 1;
    bool small = false;

    UnitSplit() = default;
    UnitSplit(int64_t per, int64_t total) : per_item(per), small(total < (int64_t(1) << 31)) {
        if (small) fast = FastDivmod(uint32_t(per));
    }
    __device__ __forceinline__ void split(int64_t u, int64_t &item, int64_t &rest) const {
        if (small) {
            uint32_t q, r;
            fast.divmod(uint32_t(u), q, r);
            item = q;
            rest = r;
        } else {
            item = u / per_item;
            rest = u - item * per_item;
        }
    }
};

// ------------------------------------------------------------------ flat block copies
struct FlatLaunch {
    FlatBlockCopy c;
    UnitSplit units;  // vectors per block
    int64_t total;    // count * vectors per block
};

template <int VEC, int U> __global__ void __launch_bounds__(kThreads) flat_copy_kernel(const FlatLaunch p) {
    using T = typename Access<VEC>::T;
    for (int64_t base = int64_t(blockIdx.x) * (kThreads * U) + threadIdx.x; base < p.total;
         base += int64_t(gridDim.x) * (kThreads * U)) {
        T v[U];
        int64_t dst[U];
#pragma unroll
        for (int i = 0; i < U; ++i) {
            const int64_t u = base + i * kThreads;
            dst[i] = -1;
            if (u >= p.total) continue;
            int64_t pair, rest, s, d;
            p.units.split(u, pair, rest);
            if (!flat_pair_offsets(p.c, pair, s, d)) continue;
            v[i] = *reinterpret_cast<const T *>(p.c.src.base + s + rest * VEC);
            dst[i] = d + rest * VEC;
        }
#pragma unroll
        for (int i = 0; i < U; ++i)
            if (dst[i] >= 0) *reinterpret_cast<T *>(p.c.dst.base + dst[i]) = v[i];
    }
}

// ------------------------------------------------------------------ copy_blocks over caches
struct CacheEntry {
    char *base;
    int64_t block_stride, num_blocks;
    UnitSplit units;  // vectors per block
};

template <int N> struct CacheCopyLaunch {
    BlockIds src, dst;
    int64_t count;
    CacheEntry caches[N];
};
static_assert(sizeof(CacheCopyLaunch<int(kMaxCachesPerLaunch)>) <= 32764, "cache table exceeds the parameter space");

template <int VEC, int U, int N> __global__ void __launch_bounds__(kThreads) cache_copy_kernel(const CacheCopyLaunch<N> p) {
    using T = typename Access<VEC>::T;
    const CacheEntry &e = p.caches[blockIdx.y];  // uniform: read from the constant bank
    const CacheBlocks c{e.base, e.block_stride, e.num_blocks, 0};
    const int64_t total = p.count * e.units.per_item;
    for (int64_t base = int64_t(blockIdx.x) * (kThreads * U) + threadIdx.x; base < total;
         base += int64_t(gridDim.x) * (kThreads * U)) {
        T v[U];
        int64_t dst[U];
#pragma unroll
        for (int i = 0; i < U; ++i) {
            const int64_t u = base + i * kThreads;
            dst[i] = -1;
            if (u >= total) continue;
            int64_t pair, rest, s, d;
            e.units.split(u, pair, rest);
            if (!cache_pair_offsets(c, p.src[pair], p.dst[pair], s, d)) continue;
            v[i] = *reinterpret_cast<const T *>(e.base + s + rest * VEC);
            dst[i] = d + rest * VEC;
        }
#pragma unroll
        for (int i = 0; i < U; ++i)
            if (dst[i] >= 0) *reinterpret_cast<T *>(e.base + dst[i]) = v[i];
    }
}

// Caches [first, first + n) of the copy, n <= N, in one launch.
template <int N> void launch_cache_copy(const CacheBlockCopy &c, int64_t first, int64_t n, cudaStream_t stream) {
    CacheCopyLaunch<N> p;
    p.src = c.src;
    p.dst = c.dst;
    p.count = c.count;
    int64_t max_units = 0;
    for (int64_t i = 0; i < n; ++i) {
        const CacheBlocks &b = c.caches[first + i];
        const int64_t per_block = b.bytes_per_block / c.vec;
        p.caches[i] = CacheEntry{b.base, b.block_stride, b.num_blocks, UnitSplit(per_block, c.count * per_block)};
        if (c.count * per_block > max_units) max_units = c.count * per_block;
    }
    if (max_units == 0) return;  // only empty blocks
    const bool large = max_units >= kLargeCallUnits;
    const int64_t cap = kMaxGrid / n > 0 ? kMaxGrid / n : 1;
    const dim3 grid(grid_for(max_units, large ? kUnroll : 1, cap), unsigned(n));
    dispatch_vec(c.vec, [&](auto vec) {
        constexpr int V = decltype(vec)::value;
        if (large) cache_copy_kernel<V, kUnroll, N><<<grid, kThreads, 0, stream>>>(p);
        else cache_copy_kernel<V, 1, N><<<grid, kThreads, 0, stream>>>(p);
    });
    cuda_check_launch("cache_copy_kernel");
}

// ------------------------------------------------------------------ layer-major transfers
struct LayerEntry {
    int64_t section;             // byte offset of the layer's [count][layer bytes] buffer section
    int64_t k_offset, v_offset;  // bytes inside a pool block
    int64_t k_bytes;             // K region bytes (then the V region's)
    UnitSplit units;             // vectors of the layer's K + V bytes per block
};

template <int N> struct LayerMajorLaunch {
    char *pool_base;
    char *buffer;
    int64_t bytes_per_block, num_blocks, count;
    BlockIds ids;
    LayerEntry layers[N];
};

// Kernel parameters may hold 32764 bytes (CUDA >= 12.1, Volta and newer).
static_assert(sizeof(LayerMajorLaunch<kMaxLayerMajorLayers>) <= 32764, "layer table exceeds the parameter space");

template <int VEC, int U, int N, bool TO_BUFFER>
__global__ void __launch_bounds__(kThreads) layer_major_kernel(const LayerMajorLaunch<N> p) {
    using T = typename Access<VEC>::T;
    const LayerEntry &l = p.layers[blockIdx.y];  // uniform: read from the constant bank
    const int64_t total = p.count * l.units.per_item;
    for (int64_t base = int64_t(blockIdx.x) * (kThreads * U) + threadIdx.x; base < total;
         base += int64_t(gridDim.x) * (kThreads * U)) {
        T v[U];
        int64_t dst[U];
#pragma unroll
        for (int i = 0; i < U; ++i) {
            const int64_t u = base + i * kThreads;
            dst[i] = -1;
            if (u >= total) continue;
            int64_t item, rest;
            l.units.split(u, item, rest);
            const int64_t id = p.ids[item];
            if (id < 0 || id >= p.num_blocks) continue;
            const int64_t pool = id * p.bytes_per_block + layer_byte_in_block(l.k_offset, l.k_bytes, l.v_offset, rest * VEC);
            const int64_t buf = l.section + u * VEC;  // the section is [count][layer bytes]: u's byte
            v[i] = *reinterpret_cast<const T *>((TO_BUFFER ? p.pool_base : p.buffer) + (TO_BUFFER ? pool : buf));
            dst[i] = TO_BUFFER ? buf : pool;
        }
        char *out = TO_BUFFER ? p.buffer : p.pool_base;
#pragma unroll
        for (int i = 0; i < U; ++i)
            if (dst[i] >= 0) *reinterpret_cast<T *>(out + dst[i]) = v[i];
    }
}

template <int N> void launch_layer_major(const BlockTransfer &t, cudaStream_t stream) {
    LayerMajorLaunch<N> p;
    p.pool_base = t.pool_base;
    p.buffer = t.buffer;
    p.bytes_per_block = t.layout->bytes_per_block;
    p.num_blocks = t.num_blocks;
    p.count = t.count;
    p.ids = t.ids;
    const int64_t layers = int64_t(t.layout->layers.size());
    int64_t section = 0, max_units = 0;
    for (int64_t i = 0; i < layers; ++i) {
        const LayerLayout &l = t.layout->layers[size_t(i)];
        LayerEntry &e = p.layers[i];
        e.section = section;
        e.k_offset = l.k_offset;
        e.v_offset = l.region_bytes_v ? l.v_offset : 0;
        e.k_bytes = l.region_bytes_k;
        const int64_t per_block = layer_bytes(l) / t.vec;
        e.units = UnitSplit(per_block, t.count * per_block);
        section += t.count * layer_bytes(l);
        if (t.count * per_block > max_units) max_units = t.count * per_block;
    }
    const bool large = max_units >= kLargeCallUnits;
    const int64_t cap = kMaxGrid / layers > 0 ? kMaxGrid / layers : 1;
    const dim3 grid(grid_for(max_units, large ? kUnroll : 1, cap), unsigned(layers));
    dispatch_vec(t.vec, [&](auto vec) {
        constexpr int V = decltype(vec)::value;
        if (t.to_buffer) {
            if (large) layer_major_kernel<V, kUnroll, N, true><<<grid, kThreads, 0, stream>>>(p);
            else layer_major_kernel<V, 1, N, true><<<grid, kThreads, 0, stream>>>(p);
        } else {
            if (large) layer_major_kernel<V, kUnroll, N, false><<<grid, kThreads, 0, stream>>>(p);
            else layer_major_kernel<V, 1, N, false><<<grid, kThreads, 0, stream>>>(p);
        }
    });
    cuda_check_launch("layer_major_kernel");
}

// Layer tables of up to this many layers use a small parameter block (cheaper launches).
constexpr int kSmallLayerTable = 64;
constexpr int kSmallCacheTable = 64;

}  // namespace

void cuda_copy_blocks(const FlatBlockCopy &c, pkv_stream stream) {
    FlatLaunch p;
    p.c = c;
    const int64_t per_block = c.bytes_per_block / c.vec;
    p.total = c.count * per_block;
    p.units = UnitSplit(per_block, p.total);
    const bool large = p.total >= kLargeCallUnits;
    const unsigned grid = grid_for(p.total, large ? kUnroll : 1, kMaxGrid);
    const cudaStream_t s = reinterpret_cast<cudaStream_t>(stream);
    dispatch_vec(c.vec, [&](auto vec) {
        constexpr int V = decltype(vec)::value;
        if (large) flat_copy_kernel<V, kUnroll><<<grid, kThreads, 0, s>>>(p);
        else flat_copy_kernel<V, 1><<<grid, kThreads, 0, s>>>(p);
    });
    cuda_check_launch("flat_copy_kernel");
}

void cuda_copy_cache_blocks(const CacheBlockCopy &c, pkv_stream stream) {
    const cudaStream_t s = reinterpret_cast<cudaStream_t>(stream);
    for (int64_t first = 0; first < c.num_caches; first += kMaxCachesPerLaunch) {
        const int64_t n = std::min(c.num_caches - first, kMaxCachesPerLaunch);
        // No one-entry table: indexed by blockIdx.y, a one-element parameter array was copied to
        // local memory and every access became a generic one (64 % of memcpy on an H100).
        if (n <= kSmallCacheTable) launch_cache_copy<kSmallCacheTable>(c, first, n, s);
        else launch_cache_copy<int(kMaxCachesPerLaunch)>(c, first, n, s);
    }
}

void cuda_transfer_blocks(const BlockTransfer &t, pkv_stream stream) {
    if (t.order == PKV_BLOCK_ORDER_BLOCK_MAJOR) {
        cuda_copy_blocks(block_major_copy(t), stream);
        return;
    }
    const cudaStream_t s = reinterpret_cast<cudaStream_t>(stream);
    if (int64_t(t.layout->layers.size()) <= kSmallLayerTable) launch_layer_major<kSmallLayerTable>(t, s);
    else launch_layer_major<int(kMaxLayerMajorLayers)>(t, s);
}

void cuda_swap_blocks(const SwapArgs &a, pkv_stream stream) {
    const cudaStream_t s = reinterpret_cast<cudaStream_t>(stream);
    for_each_block_run(a, [&](int64_t src, int64_t dst, int64_t blocks) {
        cuda_check(cudaMemcpyAsync(a.dst_base + dst * a.bytes_per_block, a.src_base + src * a.bytes_per_block,
                                   size_t(blocks * a.bytes_per_block), cudaMemcpyDefault, s),
                   "cudaMemcpyAsync");
    });
}

}  // namespace pkv
