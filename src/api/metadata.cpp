// pkv_build_slot_mapping, pkv_build_slot_mapping_csr: validate, resolve, dispatch by the output's
// device (every tensor must be on it).
#include "api/error_state.h"
#include "api/validate.h"
#include "core/metadata.h"
#include "core/ops.h"

using namespace pkv;
using namespace pkv::api;

namespace {

// The output [T] int32 / int64: its device is the one every other tensor must be on.
SlotOutput checked_output(const pkv_tensor *out) {
    require(out != nullptr, PKV_ERROR_INVALID_ARGUMENT, "out_slot_mapping is NULL");
    const pkv_device d = out->device;
    require((is_host_device(d) || d.type == PKV_DEVICE_CUDA) && d.id >= 0, PKV_ERROR_INVALID_ARGUMENT,
            "out_slot_mapping->device is invalid (", device_string(d), ")");
    SlotOutput o;
    o.count = check_index_vector("out_slot_mapping", out, true, d);
    require(o.count <= 1 || out->strides[0] > 0, PKV_ERROR_INVALID_ARGUMENT,
            "out_slot_mapping stride must be > 0, got ", out->strides[0]);
    require(is_host_device(d) || cuda_available_in_build(), PKV_ERROR_NOT_SUPPORTED, "out_slot_mapping is on ",
            device_string(d), " but this library was built without CUDA");
    require(reinterpret_cast<uintptr_t>(out->data) % (out->dtype == PKV_DTYPE_INT64 ? 8 : 4) == 0,
            PKV_ERROR_INVALID_ARGUMENT, "out_slot_mapping->data is not aligned to its element size");
    o.data = out->data;
    o.is_int64 = out->dtype == PKV_DTYPE_INT64;
    o.stride = out->strides[0];
    return o;
}

// `t` must be on the output's device (host memory counts as one device).
void require_on_output_device(const char *name, const pkv_tensor *t, pkv_device d) {
    require(t != nullptr, PKV_ERROR_INVALID_ARGUMENT, name, " is NULL");
    const pkv_device g = t->device;
    const bool same = is_host_device(d) ? is_host_device(g) : (g.type == d.type && g.id == d.id);
    require(same, PKV_ERROR_INVALID_ARGUMENT, name, " is on ", device_string(g), " but out_slot_mapping is on ",
            device_string(d));
}

// A contiguous int32 vector of exactly `length` entries on `device`.
const int32_t *checked_int32(const char *name, const pkv_tensor *t, int64_t length, pkv_device device) {
    require_on_output_device(name, t, device);
    const int64_t n = check_index_vector(name, t, false, device);
    require(n == length, PKV_ERROR_INVALID_ARGUMENT, name, " has ", n, " entries, needs ", length);
    require(n <= 1 || t->strides[0] == 1, PKV_ERROR_INVALID_ARGUMENT, name, " must be contiguous (stride 1), got ",
            t->strides[0]);
    require(reinterpret_cast<uintptr_t>(t->data) % 4 == 0, PKV_ERROR_INVALID_ARGUMENT, name,
            "->data is not aligned to 4 bytes");
    return static_cast<const int32_t *>(t->data);
}

void check_unit(const char *name, int64_t size) {
    require(size > 0 && size <= INT32_MAX, PKV_ERROR_INVALID_ARGUMENT, name, " must be in [1, 2^31 - 1], got ", size);
}

void build_slot_mapping(const pkv_tensor *out, const pkv_tensor *block_table, const pkv_tensor *seq_lens,
                        const pkv_tensor *query_start_loc, int64_t block_size, pkv_stream stream) {
    SlotMappingArgs a;
    a.out = checked_output(out);
    const pkv_device d = out->device;
    require_on_output_device("block_table", block_table, d);
    int64_t batch, max_blocks;
    check_block_table(block_table, batch, max_blocks);
    a.seq_lens = checked_int32("seq_lens", seq_lens, batch, d);
    a.query_start_loc = checked_int32("query_start_loc", query_start_loc, batch + 1, d);
    check_unit("block_size", block_size);
    if (a.out.count == 0) return;

    a.block_table = static_cast<const int32_t *>(block_table->data);
    a.table_stride = batch > 1 ? block_table->strides[0] : max_blocks;
    a.max_blocks = max_blocks;
    a.batch = batch;
    a.block_size = block_size;
    if (is_host_device(d)) cpu_build_slot_mapping(a);
    else cuda_build_slot_mapping(a, stream);
}

void build_slot_mapping_csr(const pkv_tensor *out, const pkv_tensor *indptr, const pkv_tensor *indices,
                            const pkv_tensor *last_page_len, const pkv_tensor *append_indptr, int64_t page_size,
                            pkv_stream stream) {
    CsrSlotMappingArgs a;
    a.out = checked_output(out);
    const pkv_device d = out->device;
    require_on_output_device("last_page_len", last_page_len, d);
    const int64_t batch = check_index_vector("last_page_len", last_page_len, false, d);
    a.last_page_len = checked_int32("last_page_len", last_page_len, batch, d);
    a.indptr = checked_int32("indptr", indptr, batch + 1, d);
    a.append_indptr = checked_int32("append_indptr", append_indptr, batch + 1, d);
    require_on_output_device("indices", indices, d);
    a.num_indices = check_index_vector("indices", indices, false, d);
    a.indices = checked_int32("indices", indices, a.num_indices, d);
    check_unit("page_size", page_size);
    if (a.out.count == 0) return;

    a.batch = batch;
    a.page_size = page_size;
    if (is_host_device(d)) cpu_build_slot_mapping_csr(a);
    else cuda_build_slot_mapping_csr(a, stream);
}

}  // namespace

extern "C" {

PKV_API pkv_status pkv_build_slot_mapping(const pkv_tensor *out_slot_mapping, const pkv_tensor *block_table,
                                          const pkv_tensor *seq_lens, const pkv_tensor *query_start_loc,
                                          int64_t block_size, pkv_stream stream) {
    return guarded("pkv_build_slot_mapping", [&] {
        build_slot_mapping(out_slot_mapping, block_table, seq_lens, query_start_loc, block_size, stream);
    });
}

PKV_API pkv_status pkv_build_slot_mapping_csr(const pkv_tensor *out_slot_mapping, const pkv_tensor *indptr,
                                              const pkv_tensor *indices, const pkv_tensor *last_page_len,
                                              const pkv_tensor *append_indptr, int64_t page_size,
                                              pkv_stream stream) {
    return guarded("pkv_build_slot_mapping_csr", [&] {
        build_slot_mapping_csr(out_slot_mapping, indptr, indices, last_page_len, append_indptr, page_size, stream);
    });
}

}  // extern "C"
