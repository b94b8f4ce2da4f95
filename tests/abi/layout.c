/*
 * ABI layout of include/pagedkv.h, checked at compile time (C11 _Static_assert).
 *
 * Struct sizes and offsets are pinned for x86-64 (LP64, System V); enum values are pinned on
 * every platform. A failure here means the ABI changed: that needs a new minor version during
 * 0.x (docs/api-stability.md) and a matching update of the bindings' struct mirrors.
 * Extending a struct = appending fields at the end (struct_size tells the library which).
 */
#include <pagedkv.h>

#include <stddef.h>
#include <stdio.h>

#define PIN(expr) _Static_assert(expr, #expr)

/* --------------------------------------------------------------------- enums (everywhere) */
PIN(sizeof(pkv_status) == 4);
PIN(PKV_SUCCESS == 0);
PIN(PKV_ERROR_INVALID_ARGUMENT == 1);
PIN(PKV_ERROR_INVALID_STATE == 2);
PIN(PKV_ERROR_OUT_OF_HOST_MEMORY == 3);
PIN(PKV_ERROR_OUT_OF_DEVICE_MEMORY == 4);
PIN(PKV_ERROR_OUT_OF_BLOCKS == 5);
PIN(PKV_ERROR_NOT_SUPPORTED == 6);
PIN(PKV_ERROR_CUDA == 7);
PIN(PKV_ERROR_STRUCT_SIZE == 8);
PIN(PKV_ERROR_BUSY == 9);
PIN(PKV_ERROR_INTERNAL == 10);
PIN(PKV_STATUS_FORCE32 == 0x7FFFFFFF);

PIN(sizeof(pkv_dtype) == 4);
PIN(PKV_DTYPE_F32 == 0);
PIN(PKV_DTYPE_F16 == 1);
PIN(PKV_DTYPE_BF16 == 2);
PIN(PKV_DTYPE_FP8_E4M3 == 3);
PIN(PKV_DTYPE_FP8_E5M2 == 4);
PIN(PKV_DTYPE_INT8 == 5);
PIN(PKV_DTYPE_UINT8 == 6);
PIN(PKV_DTYPE_INT32 == 7);
PIN(PKV_DTYPE_INT64 == 8);
PIN(PKV_DTYPE_FORCE32 == 0x7FFFFFFF);

/* Device types equal DLPack's DLDeviceType codes (kDLCPU=1, kDLCUDA=2, kDLCUDAHost=3). */
PIN(sizeof(pkv_device_type) == 4);
PIN(PKV_DEVICE_CPU == 1);
PIN(PKV_DEVICE_CUDA == 2);
PIN(PKV_DEVICE_CUDA_HOST == 3);
PIN(PKV_DEVICE_TYPE_FORCE32 == 0x7FFFFFFF);

PIN(sizeof(pkv_cache_format) == 4);
PIN(PKV_CACHE_FORMAT_UNSET == 0);
PIN(PKV_CACHE_FORMAT_F32 == 1);
PIN(PKV_CACHE_FORMAT_F16 == 2);
PIN(PKV_CACHE_FORMAT_BF16 == 3);
PIN(PKV_CACHE_FORMAT_FP8_E4M3 == 4);
PIN(PKV_CACHE_FORMAT_FP8_E5M2 == 5);
PIN(PKV_CACHE_FORMAT_FORCE32 == 0x7FFFFFFF);

PIN(sizeof(pkv_scale_mode) == 4);
PIN(PKV_SCALE_PER_TENSOR == 0);
PIN(PKV_SCALE_PER_HEAD == 1);
PIN(PKV_SCALE_MODE_FORCE32 == 0x7FFFFFFF);

PIN(sizeof(pkv_head_layout) == 4);
PIN(PKV_HEAD_LAYOUT_NHD == 0);
PIN(PKV_HEAD_LAYOUT_HND == 1);
PIN(sizeof(pkv_tier) == 4);
PIN(PKV_TIER_DEVICE == 0);
PIN(PKV_TIER_HOST == 1);
PIN(sizeof(pkv_block_order) == 4);
PIN(PKV_BLOCK_ORDER_BLOCK_MAJOR == 0);
PIN(PKV_BLOCK_ORDER_LAYER_MAJOR == 1);
PIN(PKV_LAYER_K_ONLY == 0x1u);

PIN(PKV_MAX_DIMS == 6);
PIN(PKV_VERSION == PKV_VERSION_MAJOR * 10000 + PKV_VERSION_MINOR * 100 + PKV_VERSION_PATCH);

/* --------------------------------------------------------------------- structs (x86-64) */
#if defined(__x86_64__) && defined(__LP64__)
#define PKV_ABI_PINNED_LAYOUT 1

PIN(sizeof(pkv_stream) == 8);

PIN(sizeof(pkv_device) == 8);
PIN(_Alignof(pkv_device) == 4);
PIN(offsetof(pkv_device, type) == 0);
PIN(offsetof(pkv_device, id) == 4);

PIN(sizeof(pkv_tensor) == 120);
PIN(_Alignof(pkv_tensor) == 8);
PIN(offsetof(pkv_tensor, data) == 0);
PIN(offsetof(pkv_tensor, dtype) == 8);
PIN(offsetof(pkv_tensor, device) == 12);
PIN(offsetof(pkv_tensor, ndim) == 20);
PIN(offsetof(pkv_tensor, shape) == 24);
PIN(offsetof(pkv_tensor, strides) == 72);

PIN(sizeof(pkv_cache_view) == 264);
PIN(_Alignof(pkv_cache_view) == 8);
PIN(offsetof(pkv_cache_view, struct_size) == 0);
PIN(offsetof(pkv_cache_view, flags) == 8);
PIN(offsetof(pkv_cache_view, format) == 12);
PIN(offsetof(pkv_cache_view, device) == 16);
PIN(offsetof(pkv_cache_view, num_blocks) == 24);
PIN(offsetof(pkv_cache_view, block_size) == 32);
PIN(offsetof(pkv_cache_view, num_heads) == 40);
PIN(offsetof(pkv_cache_view, head_size_k) == 48);
PIN(offsetof(pkv_cache_view, head_size_v) == 56);
PIN(offsetof(pkv_cache_view, k_data) == 64);
PIN(offsetof(pkv_cache_view, v_data) == 72);
PIN(offsetof(pkv_cache_view, k_stride_block) == 80);
PIN(offsetof(pkv_cache_view, k_stride_slot) == 88);
PIN(offsetof(pkv_cache_view, k_stride_head) == 96);
PIN(offsetof(pkv_cache_view, v_stride_block) == 104);
PIN(offsetof(pkv_cache_view, v_stride_slot) == 112);
PIN(offsetof(pkv_cache_view, v_stride_head) == 120);
PIN(offsetof(pkv_cache_view, scale_mode) == 128);
PIN(offsetof(pkv_cache_view, k_scale) == 136);
PIN(offsetof(pkv_cache_view, v_scale) == 144);
PIN(offsetof(pkv_cache_view, k_chunk_size) == 152);
PIN(offsetof(pkv_cache_view, v_chunk_size) == 160);
PIN(offsetof(pkv_cache_view, k_stride_chunk) == 168);
PIN(offsetof(pkv_cache_view, v_stride_chunk) == 176);
PIN(offsetof(pkv_cache_view, k_scale_plane) == 184);
PIN(offsetof(pkv_cache_view, v_scale_plane) == 192);
PIN(offsetof(pkv_cache_view, k_scale_stride_block) == 200);
PIN(offsetof(pkv_cache_view, k_scale_stride_slot) == 208);
PIN(offsetof(pkv_cache_view, k_scale_stride_head) == 216);
PIN(offsetof(pkv_cache_view, v_scale_stride_block) == 224);
PIN(offsetof(pkv_cache_view, v_scale_stride_slot) == 232);
PIN(offsetof(pkv_cache_view, v_scale_stride_head) == 240);
PIN(offsetof(pkv_cache_view, k_rotation_signs) == 248);
PIN(offsetof(pkv_cache_view, v_rotation_signs) == 256);
PIN(sizeof(pkv_layer_spec) == 48);
PIN(_Alignof(pkv_layer_spec) == 8);
PIN(offsetof(pkv_layer_spec, struct_size) == 0);
PIN(offsetof(pkv_layer_spec, flags) == 8);
PIN(offsetof(pkv_layer_spec, format) == 12);
PIN(offsetof(pkv_layer_spec, layout) == 16);
PIN(offsetof(pkv_layer_spec, scale_mode) == 20);
PIN(offsetof(pkv_layer_spec, num_heads) == 24);
PIN(offsetof(pkv_layer_spec, head_size_k) == 32);
PIN(offsetof(pkv_layer_spec, head_size_v) == 40);
PIN(sizeof(pkv_pool_params) == 72);
PIN(_Alignof(pkv_pool_params) == 8);
PIN(offsetof(pkv_pool_params, struct_size) == 0);
PIN(offsetof(pkv_pool_params, flags) == 8);
PIN(offsetof(pkv_pool_params, device) == 12);
PIN(offsetof(pkv_pool_params, block_size) == 24);
PIN(offsetof(pkv_pool_params, num_layers) == 32);
PIN(offsetof(pkv_pool_params, layers) == 40);
PIN(offsetof(pkv_pool_params, num_blocks) == 48);
PIN(offsetof(pkv_pool_params, memory_bytes) == 56);
PIN(offsetof(pkv_pool_params, num_host_blocks) == 64);
PIN(sizeof(pkv_pool_stats) == 64);
PIN(_Alignof(pkv_pool_stats) == 8);
PIN(offsetof(pkv_pool_stats, struct_size) == 0);
PIN(offsetof(pkv_pool_stats, block_size) == 8);
PIN(offsetof(pkv_pool_stats, num_layers) == 16);
PIN(offsetof(pkv_pool_stats, total_blocks) == 24);
PIN(offsetof(pkv_pool_stats, free_blocks) == 32);
PIN(offsetof(pkv_pool_stats, total_host_blocks) == 40);
PIN(offsetof(pkv_pool_stats, free_host_blocks) == 48);
PIN(offsetof(pkv_pool_stats, bytes_per_block) == 56);
PIN(sizeof(pkv_block_table_params) == 40);
PIN(_Alignof(pkv_block_table_params) == 8);
PIN(offsetof(pkv_block_table_params, struct_size) == 0);
PIN(offsetof(pkv_block_table_params, flags) == 8);
PIN(offsetof(pkv_block_table_params, max_batch) == 16);
PIN(offsetof(pkv_block_table_params, max_blocks) == 24);
PIN(offsetof(pkv_block_table_params, max_tokens) == 32);
PIN(sizeof(pkv_batch_mirror) == 504);
PIN(_Alignof(pkv_batch_mirror) == 8);
PIN(offsetof(pkv_batch_mirror, struct_size) == 0);
PIN(offsetof(pkv_batch_mirror, block_table) == 8);
PIN(offsetof(pkv_batch_mirror, slot_mapping) == 128);
PIN(offsetof(pkv_batch_mirror, seq_lens) == 248);
PIN(offsetof(pkv_batch_mirror, query_start_loc) == 368);
PIN(offsetof(pkv_batch_mirror, batch) == 488);
PIN(offsetof(pkv_batch_mirror, num_tokens) == 496);
#else
#define PKV_ABI_PINNED_LAYOUT 0
#endif

int main(void) {
    /* Runtime side: the library agrees on the struct size it was built with. */
    pkv_cache_view view;
    if (pkv_cache_view_init(&view, sizeof view) != PKV_SUCCESS ||
        view.struct_size != sizeof(pkv_cache_view)) {
        fprintf(stderr, "abi_layout: pkv_cache_view_init disagrees on sizeof(pkv_cache_view)\n");
        return 1;
    }
    printf("abi_layout: %s; sizeof pkv_device=%zu pkv_tensor=%zu pkv_cache_view=%zu\n",
           PKV_ABI_PINNED_LAYOUT ? "x86-64 layout pinned" : "enum values pinned (layout "
                                                             "not pinned on this platform)",
           sizeof(pkv_device), sizeof(pkv_tensor), sizeof(pkv_cache_view));
    return 0;
}
