// Argument checks shared by the entry points. Each throws pkv::Error with a message naming
// the argument; they never touch tensor memory.
#pragma once

#include <cstdint>
#include <sstream>
#include <string>

#include "core/cache_geometry.h"
#include "core/error.h"
#include "pagedkv.h"

namespace pkv {
namespace api {

template <typename... Parts> [[noreturn]] void fail_with(pkv_status s, const Parts &...parts) {
    std::ostringstream os;
    (os << ... << parts);
    fail(s, os.str());
}

template <typename... Parts> void require(bool ok, pkv_status s, const Parts &...parts) {
    if (!ok) fail_with(s, parts...);
}

std::string device_string(pkv_device d);

// True for memory the CPU backend reads and writes directly (CPU, pinned host).
inline bool is_host_device(pkv_device d) { return d.type == PKV_DEVICE_CPU || d.type == PKV_DEVICE_CUDA_HOST; }

// sizeof(pkv_cache_view) in its first version (before split rows, scale planes and rotation signs).
constexpr size_t kCacheViewV1Size = 152;

// Copies *view into a full-size struct per the struct_size rules (older callers: zero tail;
// newer callers: unknown tail must be zero) and checks every field. Returns the resolved view.
CacheGeometry checked_cache(const pkv_cache_view *view, pkv_cache_view &normalized);

// `name` must be on the cache's device (host memory counts as one device).
void require_same_device(const char *name, pkv_device got, pkv_device cache);

// A [rows, heads, head_size] tensor with unit last stride and non-negative strides, dtype one
// of f32/f16/bf16 (fp8 dtypes: PKV_ERROR_NOT_SUPPORTED when `fp8_unsupported`).
void check_rows_tensor(const char *name, const pkv_tensor *t, int64_t min_rows, int64_t heads,
                       int64_t head_size, pkv_device cache_device);

// 1-D index tensor (int32, or int64 when allowed) on the cache's device; returns its length.
int64_t check_index_vector(const char *name, const pkv_tensor *t, bool allow_int64, pkv_device cache_device);

// A [batch, max_blocks] int32 block table: last stride 1, rows not overlapping, data present
// and aligned. Sets batch and max_blocks. The caller checks the tensor's device.
void check_block_table(const pkv_tensor *t, int64_t &batch, int64_t &max_blocks);

}  // namespace api
}  // namespace pkv
