// Resolved form of a pkv_cache_view and of the dense row tensors the ops read or write: byte
// strides with defaults applied, elements decoded. All address math is here, in int64.
#pragma once

#include <cstdint>
#include <initializer_list>

#include "core/element.h"
#include "core/numeric_formats.h"  // PKV_HD
#include "pagedkv.h"

namespace pkv {

// One of K or V inside the paged cache.
struct CacheSide {
    char *data = nullptr;
    int64_t stride_block = 0, stride_slot = 0, stride_head = 0;  // bytes
    int64_t head_size = 0;
    const float *scale = nullptr;  // per-tensor / per-head FP8 scale; NULL = 1.0
    // A head row is stored as runs of chunk_size contiguous elements, stride_chunk bytes apart
    // (chunk_size == head_size: one contiguous row, the usual case).
    int64_t chunk_size = 0, stride_chunk = 0;
    // Per-token-head formats: the float32 scale of (block, slot, head), byte strides.
    char *scale_plane = nullptr;
    int64_t scale_stride_block = 0, scale_stride_slot = 0, scale_stride_head = 0;
    const float *rotation_signs = nullptr;  // INT4: +-1 per element; NULL = default_rotation_sign

    PKV_HD int64_t offset(int64_t block, int64_t slot_in_block, int64_t head) const {
        return block * stride_block + slot_in_block * stride_slot + head * stride_head;
    }
    // Whether a head row is stored as several runs (the legacy 5-D layout).
    PKV_HD bool split_rows() const { return chunk_size != head_size; }
    // Byte offset of element d within a head row (d a multiple of the vector width).
    PKV_HD int64_t element_offset(int64_t d, int elem_size) const {
        return !split_rows() ? d * elem_size : (d / chunk_size) * stride_chunk + (d % chunk_size) * elem_size;
    }
    PKV_HD float *scale_at(int64_t block, int64_t slot_in_block, int64_t head) const {
        return reinterpret_cast<float *>(scale_plane + block * scale_stride_block +
                                         slot_in_block * scale_stride_slot + head * scale_stride_head);
    }
};

struct CacheGeometry {
    pkv_cache_format format = PKV_CACHE_FORMAT_UNSET;
    Elem elem = Elem::Invalid;  // Elementwise formats: the stored element
    int64_t num_blocks = 0, block_size = 0, num_heads = 0;
    bool per_head_scale = false;
    bool has_v = false;
    bool rotated_domain = false;  // gathers of INT4 / INT2 return the rotated domain
    bool rope_f16 = false;        // FP8_DS_MLA: RoPE values are f16 (else bf16)
    CacheSide k, v;

    PKV_HD int64_t num_slots() const { return num_blocks * block_size; }
};

// Dense rows [N, H, D] of keys or values: row and head strides in bytes, last dim contiguous.
struct RowsSide {
    char *data = nullptr;
    int64_t stride_row = 0, stride_head = 0;  // bytes

    PKV_HD int64_t offset(int64_t row, int64_t head) const { return row * stride_row + head * stride_head; }
};

// Applies the NHD defaults for zero strides and head_size_v. Does not validate.
CacheGeometry resolve_cache_view(const pkv_cache_view &view);

// Rows view of a [N, H, D] tensor of element size `elem_size` (strides in elements -> bytes).
RowsSide rows_from_tensor(const pkv_tensor &t, int elem_size);

// Whether vectors of n elements suit these element sizes: at most 32 bytes a side, and at most
// one side above 16 bytes (moved as two 16-byte accesses; it lets a 1-byte side use 16 bytes).
constexpr bool vector_fits(int n, int src_elem_bytes, int dst_elem_bytes) {
    return n * src_elem_bytes <= 32 && n * dst_elem_bytes <= 32 &&
           (n * src_elem_bytes <= 16 || n * dst_elem_bytes <= 16);
}

// Largest count of elements in {16, 8, 4, 2, 1} that every row of both sides can move as
// aligned vectors: fits (vector_fits), divides both head sizes, and keeps every source and
// destination access aligned to its size. `alignment` folds in addresses and strides.
// Pass the sides' run lengths (chunk_size) as the head sizes of split rows.
int vector_elems(int src_elem_bytes, int dst_elem_bytes, int64_t head_size_k, int64_t head_size_v,
                 uint64_t src_alignment, uint64_t dst_alignment);

// Largest power of two (<= 16) dividing every value given (0 values are ignored).
uint64_t common_alignment(std::initializer_list<uint64_t> values);

}  // namespace pkv
