// Resolved arguments of each op, built by src/api/ after validation, and the backend entry
// points that run them. Backends trust these arguments completely.
#pragma once

#include <cstdint>

#include "core/cache_geometry.h"
#include "pagedkv.h"

namespace pkv {

// Token indices, int32 or int64, with an element stride.
struct IndexVector {
    const void *data = nullptr;
    bool is_int64 = false;
    int64_t stride = 1;  // elements

    PKV_HD int64_t operator[](int64_t i) const {
        return is_int64 ? static_cast<const int64_t *>(data)[i * stride]
                        : int64_t(static_cast<const int32_t *>(data)[i * stride]);
    }
};

struct WriteArgs {
    CacheGeometry cache;
    Elem in = Elem::Invalid;
    RowsSide key, value;       // value unused when !cache.has_v
    IndexVector slots;
    int64_t num_tokens = 0;    // > 0
    int64_t *out_of_range = nullptr;
    int vec = 1;               // elements per vector access (core::vector_elems)
};

struct GatherArgs {
    CacheGeometry cache;
    Elem out = Elem::Invalid;
    RowsSide key, value;       // value.data == nullptr: V not gathered
    int64_t num_rows = 0;      // > 0
    const int32_t *block_table = nullptr;
    int64_t block_table_stride = 0;  // elements between rows
    int64_t max_blocks = 0;
    const int32_t *cu_seq_lens = nullptr;  // [batch + 1]
    int64_t batch = 0;                     // > 0
    const int32_t *seq_starts = nullptr;   // optional [batch]
    int64_t *out_of_range = nullptr;
    int vec = 1;
};

// Where output row `row` of a gather reads from. Returns false when the row is past
// cu_seq_lens[batch] (left unwritten). Otherwise sets `block` and `offset`, with block = -1 when
// the position falls outside the block table or the block id outside the cache (counted as
// out of range, row left unwritten).
PKV_HD bool gather_row_source(const GatherArgs &a, int64_t row, int64_t &block, int64_t &offset) {
    if (row >= a.cu_seq_lens[a.batch]) return false;
    int64_t lo = 0, hi = a.batch - 1;  // last request b with cu_seq_lens[b] <= row
    while (lo < hi) {
        const int64_t mid = (lo + hi + 1) >> 1;
        if (a.cu_seq_lens[mid] <= row) lo = mid;
        else hi = mid - 1;
    }
    const int64_t pos = row - a.cu_seq_lens[lo] + (a.seq_starts ? a.seq_starts[lo] : 0);
    block = -1;
    offset = 0;
    if (pos < 0) return true;
    // 32-bit division when it suffices: on a GPU a 64-bit one is a long subroutine.
    const int64_t index = pos < (int64_t(1) << 31) && a.cache.block_size < (int64_t(1) << 31)
                              ? int64_t(uint32_t(pos) / uint32_t(a.cache.block_size))
                              : pos / a.cache.block_size;
    if (index >= a.max_blocks) return true;
    const int64_t id = a.block_table[lo * a.block_table_stride + index];
    if (id < 0 || id >= a.cache.num_blocks) return true;
    block = id;
    offset = pos - index * a.cache.block_size;
    return true;
}

// pkv_write_mla of an FP8_DS_MLA cache: kv_c [T, 512] and k_pe [T, 64] rows (stride_head unused).
struct MlaWriteArgs {
    CacheGeometry cache;
    Elem in = Elem::Invalid;   // F16 or BF16 (matches cache.rope_f16)
    RowsSide kv_c, k_pe;
    IndexVector slots;
    int64_t num_tokens = 0;    // > 0
    int64_t *out_of_range = nullptr;
};

// Elements per vector access for the kernels (see vector_elems), from the arguments' addresses;
// element-wise formats and the 1-byte codes of INT8 / FP8 per token-head.
int write_vector_elems(const WriteArgs &a);
int gather_vector_elems(const GatherArgs &a);

// CPU backend (src/cpu/): synchronous.
void cpu_write_kv(const WriteArgs &a);
void cpu_gather_kv(const GatherArgs &a);

// Per-token-head INT8 / FP8: src/cpu/token_head.cpp, src/cuda/token_head.cu.
void cpu_write_token_head(const WriteArgs &a);
void cpu_gather_token_head(const GatherArgs &a);
void cuda_write_token_head(const WriteArgs &a, pkv_stream stream);
void cuda_gather_token_head(const GatherArgs &a, pkv_stream stream);

// Hadamard-rotated per-token-head INT4 / INT2: src/cpu/rotated.cpp, src/cuda/rotated.cu.
void cpu_write_rotated(const WriteArgs &a);
void cpu_gather_rotated(const GatherArgs &a);
void cuda_write_rotated(const WriteArgs &a, pkv_stream stream);
void cuda_gather_rotated(const GatherArgs &a, pkv_stream stream);

// FP8_DS_MLA entries: src/cpu/ds_mla.cpp, src/cuda/ds_mla.cu.
void cpu_write_ds_mla(const MlaWriteArgs &a);
void cpu_gather_ds_mla(const GatherArgs &a);
void cuda_write_ds_mla(const MlaWriteArgs &a, pkv_stream stream);
void cuda_gather_ds_mla(const GatherArgs &a, pkv_stream stream);

// CUDA backend (src/cuda/, or src/nocuda/ in builds without CUDA: those throw NOT_SUPPORTED).
bool cuda_available_in_build();
void cuda_write_kv(const WriteArgs &a, pkv_stream stream);
void cuda_gather_kv(const GatherArgs &a, pkv_stream stream);
int32_t cuda_device_count();
void *cuda_alloc(pkv_device device, size_t bytes);
void cuda_free(void *ptr, pkv_device device);
void cuda_copy(void *dst, const void *src, size_t bytes, pkv_stream stream);
void cuda_stream_synchronize(pkv_stream stream);

}  // namespace pkv
