// pkv_write_kv, pkv_gather_kv: validate, resolve, dispatch by device.
#include "api/error_state.h"
#include "api/validate.h"
#include "core/ops.h"

using namespace pkv;
using namespace pkv::api;

namespace {

void require_cuda_build(pkv_device d) {
    require(is_host_device(d) || cuda_available_in_build(), PKV_ERROR_NOT_SUPPORTED,
            "the cache is on ", device_string(d), " but this library was built without CUDA");
}

void write_kv(const pkv_cache_view *view, const pkv_tensor *key, const pkv_tensor *value,
              const pkv_tensor *slot_mapping, int64_t *out_of_range, pkv_stream stream) {
    pkv_cache_view v;
    WriteArgs a;
    a.cache = checked_cache(view, v);
    const int64_t tokens = check_index_vector("slot_mapping", slot_mapping, true, v.device);
    check_rows_tensor("key", key, tokens, a.cache.num_heads, a.cache.k.head_size, v.device);
    if (a.cache.has_v) {
        check_rows_tensor("value", value, tokens, a.cache.num_heads, a.cache.v.head_size, v.device);
        require(value->dtype == key->dtype, PKV_ERROR_INVALID_ARGUMENT, "value dtype ",
                pkv_dtype_name(value->dtype), " differs from key dtype ", pkv_dtype_name(key->dtype));
    } else {
        require(value == nullptr, PKV_ERROR_INVALID_ARGUMENT, "value must be NULL for a K-only cache (v_data NULL)");
    }
    require_cuda_build(v.device);
    if (tokens == 0) return;

    a.in = elem_from_dtype(key->dtype);
    const int in_bytes = elem_bytes(a.in);
    a.key = rows_from_tensor(*key, in_bytes);
    if (a.cache.has_v) a.value = rows_from_tensor(*value, in_bytes);
    a.slots.data = slot_mapping->data;
    a.slots.is_int64 = slot_mapping->dtype == PKV_DTYPE_INT64;
    a.slots.stride = slot_mapping->strides[0];
    a.num_tokens = tokens;
    a.out_of_range = out_of_range;

    a.vec = write_vector_elems(a);

    if (is_host_device(v.device)) cpu_write_kv(a);
    else cuda_write_kv(a, stream);
}

void gather_kv(const pkv_tensor *out_key, const pkv_tensor *out_value, const pkv_cache_view *view,
               const pkv_tensor *block_table, const pkv_tensor *cu_seq_lens, const pkv_tensor *seq_starts,
               int64_t *out_of_range, pkv_stream stream) {
    pkv_cache_view v;
    GatherArgs a;
    a.cache = checked_cache(view, v);
    require(out_key != nullptr, PKV_ERROR_INVALID_ARGUMENT, "out_key is NULL");
    check_rows_tensor("out_key", out_key, 0, a.cache.num_heads, a.cache.k.head_size, v.device);
    const int64_t rows = out_key->shape[0];
    if (out_value) {
        require(a.cache.has_v, PKV_ERROR_INVALID_ARGUMENT, "out_value must be NULL for a K-only cache (v_data NULL)");
        check_rows_tensor("out_value", out_value, rows, a.cache.num_heads, a.cache.v.head_size, v.device);
        require(out_value->dtype == out_key->dtype, PKV_ERROR_INVALID_ARGUMENT, "out_value dtype ",
                pkv_dtype_name(out_value->dtype), " differs from out_key dtype ", pkv_dtype_name(out_key->dtype));
    }
    int64_t batch, max_blocks;
    check_block_table(block_table, batch, max_blocks);
    require_same_device("block_table", block_table->device, v.device);
    const int64_t cu_len = check_index_vector("cu_seq_lens", cu_seq_lens, false, v.device);
    require(cu_len == batch + 1, PKV_ERROR_INVALID_ARGUMENT, "cu_seq_lens has ", cu_len,
            " entries, needs batch + 1 = ", batch + 1);
    require(cu_seq_lens->strides[0] == 1 || cu_len <= 1, PKV_ERROR_INVALID_ARGUMENT,
            "cu_seq_lens must be contiguous (stride 1)");
    if (seq_starts) {
        require(check_index_vector("seq_starts", seq_starts, false, v.device) == batch,
                PKV_ERROR_INVALID_ARGUMENT, "seq_starts has ", seq_starts->shape[0], " entries, needs batch = ", batch);
        require(seq_starts->strides[0] == 1 || batch <= 1, PKV_ERROR_INVALID_ARGUMENT,
                "seq_starts must be contiguous (stride 1)");
    }
    require_cuda_build(v.device);
    if (rows == 0 || batch == 0) return;

    a.out = elem_from_dtype(out_key->dtype);
    const int out_bytes = elem_bytes(a.out);
    a.key = rows_from_tensor(*out_key, out_bytes);
    if (out_value) a.value = rows_from_tensor(*out_value, out_bytes);
    a.num_rows = rows;
    a.block_table = static_cast<const int32_t *>(block_table->data);
    a.block_table_stride = block_table->strides[0];
    a.max_blocks = max_blocks;
    a.cu_seq_lens = static_cast<const int32_t *>(cu_seq_lens->data);
    a.batch = batch;
    a.seq_starts = seq_starts ? static_cast<const int32_t *>(seq_starts->data) : nullptr;
    a.out_of_range = out_of_range;

    a.vec = gather_vector_elems(a);

    if (is_host_device(v.device)) cpu_gather_kv(a);
    else cuda_gather_kv(a, stream);
}

}  // namespace

extern "C" {

PKV_API pkv_status pkv_write_kv(const pkv_cache_view *cache, const pkv_tensor *key, const pkv_tensor *value,
                                const pkv_tensor *slot_mapping, int64_t *out_of_range_count, pkv_stream stream) {
    return guarded("pkv_write_kv", [&] { write_kv(cache, key, value, slot_mapping, out_of_range_count, stream); });
}

PKV_API pkv_status pkv_gather_kv(const pkv_tensor *out_key, const pkv_tensor *out_value,
                                 const pkv_cache_view *cache, const pkv_tensor *block_table,
                                 const pkv_tensor *cu_seq_lens, const pkv_tensor *seq_starts,
                                 int64_t *out_of_range_count, pkv_stream stream) {
    return guarded("pkv_gather_kv", [&] {
        gather_kv(out_key, out_value, cache, block_table, cu_seq_lens, seq_starts, out_of_range_count, stream);
    });
}

}  // extern "C"
