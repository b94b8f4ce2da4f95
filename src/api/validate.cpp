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

// Highest byte offset touched by one side, checked for int64 overflow.
static void check_side_extent(const char *side, const CacheSide &s, const CacheGeometry &g, int e) {
    require(s.stride_block >= 0 && s.stride_slot >= 0 && s.stride_head >= 0, PKV_ERROR_INVALID_ARGUMENT,
            "cache ", side, " strides must be >= 0 (0 = default)");
    require(s.stride_block % e == 0 && s.stride_slot % e == 0 && s.stride_head % e == 0 &&
                reinterpret_cast<uintptr_t>(s.data) % e == 0,
            PKV_ERROR_INVALID_ARGUMENT, "cache ", side, " data and strides must be multiples of the ", e,
            "-byte element size");
    int64_t extent = 0, term = 0;
    const bool overflow = __builtin_mul_overflow(g.num_blocks - 1, s.stride_block, &term) ||
                          __builtin_add_overflow(extent, term, &extent) ||
                          __builtin_mul_overflow(g.block_size - 1, s.stride_slot, &term) ||
                          __builtin_add_overflow(extent, term, &extent) ||
                          __builtin_mul_overflow(g.num_heads - 1, s.stride_head, &term) ||
                          __builtin_add_overflow(extent, term, &extent) ||
                          __builtin_mul_overflow(s.head_size, int64_t(e), &term) ||
                          __builtin_add_overflow(extent, term, &extent);
    require(!overflow, PKV_ERROR_INVALID_ARGUMENT, "cache ", side, " extent overflows int64");
}

CacheGeometry checked_cache(const pkv_cache_view *view, pkv_cache_view &v) {
    require(view != nullptr, PKV_ERROR_INVALID_ARGUMENT, "cache is NULL");
    v = read_versioned(view, "cache");

    require(v.flags == 0, PKV_ERROR_INVALID_ARGUMENT, "cache->flags must be 0, got ", v.flags);
    require(v.format != PKV_CACHE_FORMAT_UNSET, PKV_ERROR_INVALID_ARGUMENT, "cache->format is unset");
    require(elem_from_cache_format(v.format) != Elem::Invalid, PKV_ERROR_INVALID_ARGUMENT,
            "cache->format ", int(v.format), " is not a known pkv_cache_format");
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

    const CacheGeometry g = resolve_cache_view(v);
    const int e = elem_bytes(g.elem);
    check_side_extent("k", g.k, g, e);
    if (g.has_v) check_side_extent("v", g.v, g, e);
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
