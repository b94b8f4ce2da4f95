#include "api/validate.h"

#include "api/struct_size.h"


#include "core/element.h"

namespace pkv {
namespace api {

std::string device_string(pkv_device d) {
    switch (d.type) {
        case PKV_DEVICE_CPU: return "cpu";
        case PKV_DEVICE_CUDA_HOST: return "cuda_host";
        case PKV_DEVICE_CUDA: return "cuda:" + std::to_string(d.id);
        default: return "device type " + std::to_string(int(d.type));
    }
}

static bool valid_device(pkv_device d) {
    return (is_host_device(d) || d.type == PKV_DEVICE_CUDA) && d.id >= 0;
}

void require_same_device(const char *name, pkv_device got, pkv_device cache) {
    const bool same = is_host_device(cache) ? is_host_device(got) : (got.type == cache.type && got.id == cache.id);
    require(same, PKV_ERROR_INVALID_ARGUMENT, name, " is on ", device_string(got), " but the cache is on ",
            device_string(cache));
}

// a + b*c with int64 overflow detection (b, c >= 0).
static bool add_product(int64_t &a, int64_t b, int64_t c) {
    int64_t term = 0;
    return !__builtin_mul_overflow(b, c, &term) && !__builtin_add_overflow(a, term, &a);
}

static bool is_pow2(int64_t x) { return x > 0 && (x & (x - 1)) == 0; }

// One side's strides, alignment, split rows and scale plane; every byte it can touch must be
// addressable in int64.
static void check_side(const char *side, const CacheSide &s, const CacheGeometry &g) {
    const int a = format_alignment(g.format);
    require(s.stride_block >= 0 && s.stride_slot >= 0 && s.stride_head >= 0, PKV_ERROR_INVALID_ARGUMENT,
            "cache ", side, " strides must be >= 0 (0 = default)");
    require(s.stride_block % a == 0 && s.stride_slot % a == 0 && s.stride_head % a == 0 &&
                reinterpret_cast<uintptr_t>(s.data) % a == 0,
            PKV_ERROR_INVALID_ARGUMENT, "cache ", side, " data and strides must be multiples of ", a,
            " bytes (the format's alignment)");
    const int64_t row = format_row_bytes(g.format, s.head_size);
    int64_t row_extent = row;
    if (s.split_rows()) {
        require(format_family(g.format) == FormatFamily::Elementwise, PKV_ERROR_NOT_SUPPORTED, "cache ", side,
                "_chunk_size (split head rows) is supported for plain and per-tensor FP8 formats only, not ",
                cache_format_name(g.format));
        require(s.chunk_size > 0 && s.head_size % s.chunk_size == 0, PKV_ERROR_INVALID_ARGUMENT, "cache ", side,
                "_chunk_size ", s.chunk_size, " must divide the head size ", s.head_size);
        require(s.stride_chunk >= 0 && s.stride_chunk % a == 0, PKV_ERROR_INVALID_ARGUMENT, "cache ", side,
                "_stride_chunk must be a non-negative multiple of ", a, " bytes");
        row_extent = 0;
        require(add_product(row_extent, s.head_size / s.chunk_size - 1, s.stride_chunk) &&
                    add_product(row_extent, s.chunk_size, a),
                PKV_ERROR_INVALID_ARGUMENT, "cache ", side, " row extent overflows int64");
    }
    int64_t extent = row_extent;
    require(add_product(extent, g.num_blocks - 1, s.stride_block) &&
                add_product(extent, g.block_size - 1, s.stride_slot) &&
                add_product(extent, g.num_heads - 1, s.stride_head),
            PKV_ERROR_INVALID_ARGUMENT, "cache ", side, " extent overflows int64");
    if (format_family(g.format) != FormatFamily::TokenHead) return;
    require(s.scale_plane != nullptr, PKV_ERROR_INVALID_ARGUMENT, "cache ", side, "_scale_plane is NULL (format ",
            cache_format_name(g.format), " keeps a float32 scale per token and head)");
    require(s.scale_stride_block >= 0 && s.scale_stride_slot >= 0 && s.scale_stride_head >= 0 &&
                s.scale_stride_block % 4 == 0 && s.scale_stride_slot % 4 == 0 && s.scale_stride_head % 4 == 0 &&
                reinterpret_cast<uintptr_t>(s.scale_plane) % 4 == 0,
            PKV_ERROR_INVALID_ARGUMENT, "cache ", side,
            "_scale_plane and its strides must be non-negative multiples of 4 bytes");
    int64_t plane = 4;
    require(add_product(plane, g.num_blocks - 1, s.scale_stride_block) &&
                add_product(plane, g.block_size - 1, s.scale_stride_slot) &&
                add_product(plane, g.num_heads - 1, s.scale_stride_head),
            PKV_ERROR_INVALID_ARGUMENT, "cache ", side, " scale plane extent overflows int64");
    if (g.format == PKV_CACHE_FORMAT_INT4_PER_TOKEN_HEAD || g.format == PKV_CACHE_FORMAT_INT2_PER_TOKEN_HEAD) {
        const int64_t lo = g.format == PKV_CACHE_FORMAT_INT4_PER_TOKEN_HEAD ? 2 : 4;
        require(is_pow2(s.head_size) && s.head_size >= lo && s.head_size <= kMaxRotatedHeadSize,
                PKV_ERROR_INVALID_ARGUMENT, "cache ", side, " head size ", s.head_size, " must be a power of two in [",
                lo, ", ", kMaxRotatedHeadSize, "] for ", cache_format_name(g.format), " (Hadamard rotation)");
        require(reinterpret_cast<uintptr_t>(s.rotation_signs) % 4 == 0, PKV_ERROR_INVALID_ARGUMENT, "cache ", side,
                "_rotation_signs is not 4-byte aligned");
    }
}

CacheGeometry checked_cache(const pkv_cache_view *view, pkv_cache_view &v) {
    require(view != nullptr, PKV_ERROR_INVALID_ARGUMENT, "cache is NULL");
    v = read_versioned(view, "cache", kCacheViewV1Size);

    constexpr uint32_t known_flags = PKV_CACHE_VIEW_ROTATED_DOMAIN | PKV_CACHE_VIEW_ROPE_F16;
    require((v.flags & ~known_flags) == 0, PKV_ERROR_INVALID_ARGUMENT, "cache->flags has unknown bits: ",
            v.flags & ~known_flags);
    require(v.format != PKV_CACHE_FORMAT_UNSET, PKV_ERROR_INVALID_ARGUMENT, "cache->format is unset");
    require(format_family(v.format) != FormatFamily::Unknown, PKV_ERROR_INVALID_ARGUMENT, "cache->format ",
            int(v.format), " is not a known pkv_cache_format");
    require(valid_device(v.device), PKV_ERROR_INVALID_ARGUMENT, "cache->device is invalid (",
            device_string(v.device), ")");
    require(v.num_blocks > 0, PKV_ERROR_INVALID_ARGUMENT, "cache->num_blocks must be > 0, got ", v.num_blocks);
    require(v.block_size > 0, PKV_ERROR_INVALID_ARGUMENT, "cache->block_size must be > 0, got ", v.block_size);
    require(v.num_heads > 0, PKV_ERROR_INVALID_ARGUMENT, "cache->num_heads must be > 0, got ", v.num_heads);
    require(v.head_size_k > 0, PKV_ERROR_INVALID_ARGUMENT, "cache->head_size_k must be > 0, got ", v.head_size_k);
    require(v.head_size_v >= 0, PKV_ERROR_INVALID_ARGUMENT, "cache->head_size_v must be >= 0, got ", v.head_size_v);
    require(v.k_data != nullptr, PKV_ERROR_INVALID_ARGUMENT, "cache->k_data is NULL");
    require(v.scale_mode == PKV_SCALE_PER_TENSOR || v.scale_mode == PKV_SCALE_PER_HEAD,
            PKV_ERROR_INVALID_ARGUMENT, "cache->scale_mode ", int(v.scale_mode), " is not a known pkv_scale_mode");
    require(v.num_blocks <= INT64_MAX / v.block_size, PKV_ERROR_INVALID_ARGUMENT,
            "cache->num_blocks * block_size overflows int64");
    if (v.format == PKV_CACHE_FORMAT_FP8_DS_MLA) {
        require(v.v_data == nullptr && v.num_heads == 1 && v.head_size_k == kDsMlaLatent + kDsMlaRope,
                PKV_ERROR_INVALID_ARGUMENT, "cache format fp8_ds_mla needs a K-only view (v_data NULL) with "
                "num_heads 1 and head_size_k 576, got v_data ", v.v_data ? "set" : "NULL", ", num_heads ",
                v.num_heads, ", head_size_k ", v.head_size_k);
        require(v.k_stride_slot == 0 || v.k_stride_slot >= kDsMlaEntryBytes, PKV_ERROR_INVALID_ARGUMENT,
                "cache->k_stride_slot ", v.k_stride_slot, " is smaller than the 656-byte fp8_ds_mla entry");
    }
    if (format_family(v.format) == FormatFamily::TokenHead)
        require((v.v_data == nullptr) == (v.v_scale_plane == nullptr),
                PKV_ERROR_INVALID_ARGUMENT, "cache->v_scale_plane must be set exactly when v_data is (format ",
                cache_format_name(v.format), ")");

    const CacheGeometry g = resolve_cache_view(v);
    check_side("k", g.k, g);
    if (g.has_v) check_side("v", g.v, g);
    return g;
}

void check_rows_tensor(const char *name, const pkv_tensor *t, int64_t min_rows, int64_t heads,
                       int64_t head_size, pkv_device cache_device) {
    require(t != nullptr, PKV_ERROR_INVALID_ARGUMENT, name, " is NULL");
    require(t->ndim == 3, PKV_ERROR_INVALID_ARGUMENT, name, " must be 3-D [rows, heads, head_size], got ndim ",
            t->ndim);
    const Elem e = elem_from_dtype(t->dtype);
    require(e != Elem::Invalid, PKV_ERROR_INVALID_ARGUMENT, name, " dtype must be f32, f16 or bf16, got ",
            pkv_dtype_name(t->dtype));
    require(!elem_is_fp8(e), PKV_ERROR_NOT_SUPPORTED, name, " dtype ", pkv_dtype_name(t->dtype),
            " is not supported (f32, f16 or bf16)");
    require(t->shape[0] >= min_rows, PKV_ERROR_INVALID_ARGUMENT, name, " has ", t->shape[0],
            " rows, needs at least ", min_rows);
    require(t->shape[1] == heads, PKV_ERROR_INVALID_ARGUMENT, name, " shape[1] (heads) is ", t->shape[1],
            ", the cache has ", heads);
    require(t->shape[2] == head_size, PKV_ERROR_INVALID_ARGUMENT, name, " shape[2] (head size) is ", t->shape[2],
            ", the cache has ", head_size);
    require(t->strides[2] == 1, PKV_ERROR_INVALID_ARGUMENT, name, " last-dim stride must be 1, got ",
            t->strides[2]);
    require(t->strides[0] >= 0 && t->strides[1] >= 0, PKV_ERROR_INVALID_ARGUMENT, name,
            " strides must be >= 0");
    require(t->shape[0] == 0 || t->data != nullptr, PKV_ERROR_INVALID_ARGUMENT, name, "->data is NULL");
    require(reinterpret_cast<uintptr_t>(t->data) % elem_bytes(e) == 0, PKV_ERROR_INVALID_ARGUMENT, name,
            "->data is not aligned to its element size");
    require_same_device(name, t->device, cache_device);
}

int64_t check_index_vector(const char *name, const pkv_tensor *t, bool allow_int64, pkv_device cache_device) {
    require(t != nullptr, PKV_ERROR_INVALID_ARGUMENT, name, " is NULL");
    require(t->ndim == 1, PKV_ERROR_INVALID_ARGUMENT, name, " must be 1-D, got ndim ", t->ndim);
    const bool ok = t->dtype == PKV_DTYPE_INT32 || (allow_int64 && t->dtype == PKV_DTYPE_INT64);
    require(ok, PKV_ERROR_INVALID_ARGUMENT, name, " dtype must be ", allow_int64 ? "int32 or int64" : "int32",
            ", got ", pkv_dtype_name(t->dtype));
    require(t->shape[0] >= 0 && t->strides[0] >= 0, PKV_ERROR_INVALID_ARGUMENT, name,
            " shape and stride must be >= 0");
    require(t->shape[0] == 0 || t->data != nullptr, PKV_ERROR_INVALID_ARGUMENT, name, "->data is NULL");
    require_same_device(name, t->device, cache_device);
    return t->shape[0];
}

void check_block_table(const pkv_tensor *t, int64_t &batch, int64_t &max_blocks) {
    require(t != nullptr, PKV_ERROR_INVALID_ARGUMENT, "block_table is NULL");
    require(t->ndim == 2 && t->dtype == PKV_DTYPE_INT32, PKV_ERROR_INVALID_ARGUMENT,
            "block_table must be a 2-D int32 tensor [batch, max_blocks], got ndim ", t->ndim, " dtype ",
            pkv_dtype_name(t->dtype));
    batch = t->shape[0];
    max_blocks = t->shape[1];
    require(batch >= 0 && max_blocks >= 0, PKV_ERROR_INVALID_ARGUMENT, "block_table shape must be >= 0");
    require(max_blocks <= 1 || t->strides[1] == 1, PKV_ERROR_INVALID_ARGUMENT,
            "block_table last-dim stride must be 1, got ", t->strides[1]);
    require(batch <= 1 || t->strides[0] >= max_blocks, PKV_ERROR_INVALID_ARGUMENT, "block_table row stride ",
            t->strides[0], " is smaller than max_blocks ", max_blocks);
    require(batch * max_blocks == 0 || t->data != nullptr, PKV_ERROR_INVALID_ARGUMENT, "block_table->data is NULL");
    require(reinterpret_cast<uintptr_t>(t->data) % 4 == 0, PKV_ERROR_INVALID_ARGUMENT,
            "block_table->data is not aligned to 4 bytes");
}

}  // namespace api
}  // namespace pkv
