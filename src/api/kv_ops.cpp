// pkv_write_kv, pkv_write_mla, pkv_gather_kv: validate, resolve, dispatch by format family and device.
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

void run_write(WriteArgs &a, pkv_device device, pkv_stream stream);

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
    require(format_family(a.cache.format) != FormatFamily::DsMla, PKV_ERROR_NOT_SUPPORTED,
            "fp8_ds_mla caches are written by pkv_write_mla");
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

    run_write(a, v.device, stream);
}

// Runs a validated write of any format except FP8_DS_MLA.
void run_write(WriteArgs &a, pkv_device device, pkv_stream stream) {
    const bool host = is_host_device(device);
    if (format_is_rotated(a.cache.format)) {
        if (host) cpu_write_rotated(a);
        else cuda_write_rotated(a, stream);
        return;
    }
    if (format_family(a.cache.format) == FormatFamily::TokenHead) {
        if (host) cpu_write_token_head(a);
        else cuda_write_token_head(a, stream);
        return;
    }
    a.vec = write_vector_elems(a);
    if (host) cpu_write_kv(a);
    else cuda_write_kv(a, stream);
}

// A [T_pad, n] MLA input as the [T_pad, 1, n] rows tensor the checks and kernels take.
pkv_tensor mla_rows(const char *name, const pkv_tensor *t) {
    require(t != nullptr, PKV_ERROR_INVALID_ARGUMENT, name, " is NULL");
    require(t->ndim == 2, PKV_ERROR_INVALID_ARGUMENT, name, " must be 2-D [tokens, dim], got ndim ", t->ndim);
    pkv_tensor r = *t;
    r.ndim = 3;
    r.shape[2] = t->shape[1];
    r.strides[2] = t->strides[1];
    r.shape[1] = 1;
    r.strides[1] = t->shape[1];
    return r;
}

void write_mla(const pkv_cache_view *view, const pkv_tensor *kv_c_in, const pkv_tensor *k_pe_in,
               const pkv_tensor *slot_mapping, int64_t *out_of_range, pkv_stream stream) {
    pkv_cache_view v;
    const CacheGeometry g = checked_cache(view, v);
    require(!g.has_v && g.num_heads == 1, PKV_ERROR_INVALID_ARGUMENT,
            "pkv_write_mla needs a K-only cache view (v_data NULL) with num_heads 1");
    const FormatFamily family = format_family(g.format);
    require(family != FormatFamily::TokenHead, PKV_ERROR_NOT_SUPPORTED, "pkv_write_mla does not write format ",
            cache_format_name(g.format), " (plain, per-tensor FP8 and fp8_ds_mla caches)");
    require(!g.k.split_rows(), PKV_ERROR_NOT_SUPPORTED, "pkv_write_mla does not write split head rows (k_chunk_size)");
    const pkv_tensor kv_c = mla_rows("kv_c", kv_c_in), k_pe = mla_rows("k_pe", k_pe_in);
    const int64_t tokens = check_index_vector("slot_mapping", slot_mapping, true, v.device);
    const int64_t r = kv_c.shape[2], p = k_pe.shape[2];
    require(r + p == g.k.head_size, PKV_ERROR_INVALID_ARGUMENT, "kv_c width ", r, " + k_pe width ", p,
            " differs from the cache's head_size_k ", g.k.head_size);
    check_rows_tensor("kv_c", &kv_c, tokens, 1, r, v.device);
    check_rows_tensor("k_pe", &k_pe, tokens, 1, p, v.device);
    require(k_pe.dtype == kv_c.dtype, PKV_ERROR_INVALID_ARGUMENT, "k_pe dtype ", pkv_dtype_name(k_pe.dtype),
            " differs from kv_c dtype ", pkv_dtype_name(kv_c.dtype));
    const Elem in = elem_from_dtype(kv_c.dtype);
    if (family == FormatFamily::DsMla) {
        require(r == kDsMlaLatent && p == kDsMlaRope, PKV_ERROR_INVALID_ARGUMENT,
                "fp8_ds_mla needs kv_c width 512 and k_pe width 64, got ", r, " and ", p);
        const Elem rope = g.rope_f16 ? Elem::F16 : Elem::BF16;
        require(in == rope, PKV_ERROR_INVALID_ARGUMENT, "fp8_ds_mla stores ", g.rope_f16 ? "f16" : "bf16",
                " RoPE values (PKV_CACHE_VIEW_ROPE_F16 ", g.rope_f16 ? "set" : "unset", "), so kv_c and k_pe must be ",
                g.rope_f16 ? "f16" : "bf16", ", got ", pkv_dtype_name(kv_c.dtype));
    }
    require_cuda_build(v.device);
    if (tokens == 0) return;

    IndexVector slots;
    slots.data = slot_mapping->data;
    slots.is_int64 = slot_mapping->dtype == PKV_DTYPE_INT64;
    slots.stride = slot_mapping->strides[0];
    const int in_bytes = elem_bytes(in);
    if (family == FormatFamily::DsMla) {
        MlaWriteArgs a;
        a.cache = g;
        a.in = in;
        a.kv_c = rows_from_tensor(kv_c, in_bytes);
        a.k_pe = rows_from_tensor(k_pe, in_bytes);
        a.slots = slots;
        a.num_tokens = tokens;
        a.out_of_range = out_of_range;
        if (is_host_device(v.device)) cpu_write_ds_mla(a);
        else cuda_write_ds_mla(a, stream);
        return;
    }
    // Plain and FP8 entries: two element-wise writes into the two column ranges of the entry
    // (out-of-range slots counted by the first only).
    const int e = elem_bytes(g.elem);
    const struct { const pkv_tensor *t; int64_t first, width; } parts[2] = {{&kv_c, 0, r}, {&k_pe, r, p}};
    for (int i = 0; i < 2; ++i) {
        WriteArgs a;
        a.cache = g;
        a.cache.k.data += parts[i].first * e;
        a.cache.k.head_size = a.cache.k.chunk_size = parts[i].width;
        a.in = in;
        a.key = rows_from_tensor(*parts[i].t, in_bytes);
        a.slots = slots;
        a.num_tokens = tokens;
        a.out_of_range = i == 0 ? out_of_range : nullptr;
        run_write(a, v.device, stream);
    }
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

    const bool host = is_host_device(v.device);
    switch (format_family(a.cache.format)) {
        case FormatFamily::TokenHead:
            if (format_is_rotated(a.cache.format)) {
                if (host) cpu_gather_rotated(a);
                else cuda_gather_rotated(a, stream);
            } else {
                if (host) cpu_gather_token_head(a);
                else cuda_gather_token_head(a, stream);
            }
            return;
        case FormatFamily::DsMla:
            if (host) cpu_gather_ds_mla(a);
            else cuda_gather_ds_mla(a, stream);
            return;
        default:
            a.vec = gather_vector_elems(a);
            if (host) cpu_gather_kv(a);
            else cuda_gather_kv(a, stream);
    }
}

}  // namespace

extern "C" {

PKV_API pkv_status pkv_write_kv(const pkv_cache_view *cache, const pkv_tensor *key, const pkv_tensor *value,
                                const pkv_tensor *slot_mapping, int64_t *out_of_range_count, pkv_stream stream) {
    return guarded("pkv_write_kv", [&] { write_kv(cache, key, value, slot_mapping, out_of_range_count, stream); });
}

PKV_API pkv_status pkv_write_mla(const pkv_cache_view *cache, const pkv_tensor *kv_c, const pkv_tensor *k_pe,
                                 const pkv_tensor *slot_mapping, int64_t *out_of_range_count, pkv_stream stream) {
    return guarded("pkv_write_mla", [&] { write_mla(cache, kv_c, k_pe, slot_mapping, out_of_range_count, stream); });
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
