// pkv_pool_*: creation, views, stats, scales, and the block allocator entry points.
#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "api/error_state.h"
#include "api/handle_checks.h"
#include "api/struct_size.h"
#include "api/validate.h"
#include "core/element.h"
#include "core/ops.h"
#include "core/pool.h"

using namespace pkv;
using namespace pkv::api;

namespace {

constexpr int64_t kMaxBlocks = INT32_MAX;  // block ids are int32 in every index tensor

// Checks one layer spec (already read per the struct_size rules); returns an upper bound of the
// bytes the layer adds to a block (its regions plus alignment padding).
int64_t check_layer_spec(const pkv_layer_spec &s, const std::string &name, int64_t block_size) {
    const char *n = name.c_str();
    require((s.flags & ~PKV_LAYER_K_ONLY) == 0, PKV_ERROR_INVALID_ARGUMENT, n, ".flags has unknown bits 0x",
            std::hex, s.flags & ~PKV_LAYER_K_ONLY);
    require(s.format != PKV_CACHE_FORMAT_UNSET, PKV_ERROR_INVALID_ARGUMENT, n, ".format is unset");
    require(format_family(s.format) == FormatFamily::Unknown || format_family(s.format) == FormatFamily::Elementwise,
            PKV_ERROR_NOT_SUPPORTED, n, ".format ", cache_format_name(s.format),
            ": pools hold plain and FP8 layers; build a pkv_cache_view over your own memory for this format");
    const Elem e = elem_from_cache_format(s.format);
    require(e != Elem::Invalid, PKV_ERROR_INVALID_ARGUMENT, n, ".format ", int(s.format),
            " is not a known pkv_cache_format");
    require(s.layout == PKV_HEAD_LAYOUT_NHD || s.layout == PKV_HEAD_LAYOUT_HND, PKV_ERROR_INVALID_ARGUMENT, n,
            ".layout ", int(s.layout), " is not a known pkv_head_layout");
    require(s.scale_mode == PKV_SCALE_PER_TENSOR || s.scale_mode == PKV_SCALE_PER_HEAD, PKV_ERROR_INVALID_ARGUMENT,
            n, ".scale_mode ", int(s.scale_mode), " is not a known pkv_scale_mode");
    require(s.num_heads > 0, PKV_ERROR_INVALID_ARGUMENT, n, ".num_heads must be > 0, got ", s.num_heads);
    require(s.head_size_k > 0, PKV_ERROR_INVALID_ARGUMENT, n, ".head_size_k must be > 0, got ", s.head_size_k);
    require(s.head_size_v >= 0, PKV_ERROR_INVALID_ARGUMENT, n, ".head_size_v must be >= 0, got ", s.head_size_v);
    const bool k_only = (s.flags & PKV_LAYER_K_ONLY) != 0;
    require(!k_only || s.head_size_v == 0, PKV_ERROR_INVALID_ARGUMENT, n,
            ".head_size_v must be 0 for a PKV_LAYER_K_ONLY layer, got ", s.head_size_v);
    const int64_t token_k = sat_mul(sat_mul(s.num_heads, s.head_size_k), elem_bytes(e));
    const int64_t token_v = k_only ? 0 : sat_mul(sat_mul(s.num_heads, s.head_size_v ? s.head_size_v : s.head_size_k),
                                                 elem_bytes(e));
    return sat_add(sat_add(sat_mul(block_size, token_k), sat_mul(block_size, token_v)), 2 * kPoolAlignment);
}

void pool_create(pkv_pool **out, const pkv_pool_params *params_in) {
    require(out != nullptr, PKV_ERROR_INVALID_ARGUMENT, "out is NULL");
    *out = nullptr;
    require(params_in != nullptr, PKV_ERROR_INVALID_ARGUMENT, "params is NULL");
    pkv_pool_params p = read_versioned(params_in, "params");
    // 0 means the library default in every params field: a zeroed device (pkv_pool_params_init)
    // is the CPU.
    if (p.device.type == pkv_device_type(0)) p.device.type = PKV_DEVICE_CPU;
    require(p.flags == 0, PKV_ERROR_INVALID_ARGUMENT, "params->flags must be 0, got ", p.flags);
    require(p.device.type == PKV_DEVICE_CPU || p.device.type == PKV_DEVICE_CUDA, PKV_ERROR_INVALID_ARGUMENT,
            "params->device must be cpu or cuda, got ", device_string(p.device));
    require(p.device.id >= 0, PKV_ERROR_INVALID_ARGUMENT, "params->device.id must be >= 0, got ", p.device.id);
    require(p.block_size > 0, PKV_ERROR_INVALID_ARGUMENT, "params->block_size must be > 0, got ", p.block_size);
    require(p.num_layers > 0, PKV_ERROR_INVALID_ARGUMENT, "params->num_layers must be > 0, got ", p.num_layers);
    require(p.layers != nullptr, PKV_ERROR_INVALID_ARGUMENT, "params->layers is NULL");
    require(p.num_blocks >= 0 && p.num_blocks <= kMaxBlocks, PKV_ERROR_INVALID_ARGUMENT,
            "params->num_blocks must be in [0, 2^31 - 1], got ", p.num_blocks);
    require(p.num_host_blocks >= 0 && p.num_host_blocks <= kMaxBlocks, PKV_ERROR_INVALID_ARGUMENT,
            "params->num_host_blocks must be in [0, 2^31 - 1], got ", p.num_host_blocks);
    require(p.num_blocks > 0 || p.memory_bytes > 0, PKV_ERROR_INVALID_ARGUMENT,
            "params->num_blocks and params->memory_bytes are both 0 (set one)");

    // The specs are an array of the caller's struct: its elements lie struct_size bytes apart
    // (a caller built against a newer header has a larger pkv_layer_spec).
    const size_t stride = checked_struct_size(p.layers[0].struct_size, "params->layers[0]", sizeof(pkv_layer_spec));
    require(stride % alignof(pkv_layer_spec) == 0, PKV_ERROR_STRUCT_SIZE, "params->layers[0].struct_size ",
            stride, " is not a multiple of ", alignof(pkv_layer_spec));
    std::vector<pkv_layer_spec> specs(size_t(p.num_layers));
    int64_t block_bound = 0;
    for (int64_t i = 0; i < p.num_layers; ++i) {
        const std::string name = "params->layers[" + std::to_string(i) + "]";
        const auto *spec = reinterpret_cast<const pkv_layer_spec *>(reinterpret_cast<const char *>(p.layers) +
                                                                     size_t(i) * stride);
        require(spec->struct_size == stride, PKV_ERROR_STRUCT_SIZE, name, ".struct_size ", spec->struct_size,
                " differs from layers[0].struct_size ", stride);
        specs[size_t(i)] = read_versioned(spec, name.c_str());
        block_bound = sat_add(block_bound, check_layer_spec(specs[size_t(i)], name, p.block_size));
    }
    require(block_bound < (int64_t(1) << 48), PKV_ERROR_INVALID_ARGUMENT,
            "one block of all layers would exceed 2^48 bytes (block_size, heads or head sizes too large)");
    if (p.device.type == PKV_DEVICE_CUDA) {
        require(cuda_available_in_build(), PKV_ERROR_NOT_SUPPORTED, "params->device is ",
                device_string(p.device), " but this library was built without CUDA");
        const int32_t count = cuda_device_count();
        require(count > 0, PKV_ERROR_NOT_SUPPORTED, "params->device is ", device_string(p.device),
                " but no CUDA device is present");
        require(p.device.id < count, PKV_ERROR_INVALID_ARGUMENT, "params->device is ", device_string(p.device),
                " but only ", count, " CUDA device(s) are present");
    }

    PoolLayout layout = make_pool_layout(p.block_size, specs.data(), p.num_layers);
    const int64_t bpb = layout.bytes_per_block;
    int64_t num_blocks = p.num_blocks;
    if (num_blocks == 0) {
        const uint64_t fit = uint64_t(p.memory_bytes) / uint64_t(bpb);
        require(fit > 0, PKV_ERROR_INVALID_ARGUMENT, "params->memory_bytes ", p.memory_bytes,
                " holds no block of ", bpb, " bytes");
        require(fit <= uint64_t(kMaxBlocks), PKV_ERROR_INVALID_ARGUMENT, "params->memory_bytes ", p.memory_bytes,
                " holds ", fit, " blocks, more than the 2^31 - 1 block ids");
        num_blocks = int64_t(fit);
    }
    // Tier sizes in size_t on a 64-bit host: block_bound < 2^48 and ids < 2^31 cannot overflow,
    // but a 32-bit size_t could.
    const bool too_large = uint64_t(num_blocks) * uint64_t(bpb) > SIZE_MAX ||
                           uint64_t(p.num_host_blocks) * uint64_t(bpb) > SIZE_MAX;
    require(!too_large, PKV_ERROR_INVALID_ARGUMENT, "the pool's size overflows size_t");
    *out = create_pool(p.device, std::move(layout), num_blocks, p.num_host_blocks).release();
}

void pool_layer_view(pkv_cache_view *out, const pkv_pool *pool, int64_t layer, pkv_tier tier) {
    require(out != nullptr, PKV_ERROR_INVALID_ARGUMENT, "out is NULL");
    require(pool != nullptr, PKV_ERROR_INVALID_ARGUMENT, "pool is NULL");
    check_layer(*pool, layer);
    check_tier(tier);
    require(tier != PKV_TIER_HOST || pool->num_host_blocks > 0, PKV_ERROR_INVALID_STATE,
            "tier is PKV_TIER_HOST but the pool has no host tier (num_host_blocks 0)");
    *out = layer_view(pool->layout, layer, pool->tier_device(tier), pool->tier_base(tier), pool->tier_blocks(tier),
                      pool->tier_scales(tier));
}

void pool_set_scales(pkv_pool *pool, int64_t layer, const float *k_scales, const float *v_scales,
                     pkv_stream stream) {
    require(pool != nullptr, PKV_ERROR_INVALID_ARGUMENT, "pool is NULL");
    check_layer(*pool, layer);
    const LayerLayout &l = pool->layout.layers[size_t(layer)];
    require(l.scale_count > 0, PKV_ERROR_INVALID_ARGUMENT, "layer ", layer, " has format ",
            cache_format_name(l.spec.format), ", which has no scales (FP8 formats only)");
    const bool has_v = (l.spec.flags & PKV_LAYER_K_ONLY) == 0;
    require(k_scales != nullptr, PKV_ERROR_INVALID_ARGUMENT, "k_scales is NULL");
    require(!has_v || v_scales != nullptr, PKV_ERROR_INVALID_ARGUMENT, "v_scales is NULL");
    require(has_v || v_scales == nullptr, PKV_ERROR_INVALID_ARGUMENT,
            "v_scales must be NULL for a K-only layer (layer ", layer, ")");
    for (int64_t i = 0; i < l.scale_count; ++i) {
        // The write stores x / scale: a zero, negative or non-finite scale corrupts the cache.
        require(std::isfinite(k_scales[i]) && k_scales[i] > 0.0f, PKV_ERROR_INVALID_ARGUMENT, "k_scales[", i,
                "] must be finite and > 0, got ", k_scales[i]);
        if (has_v)
            require(std::isfinite(v_scales[i]) && v_scales[i] > 0.0f, PKV_ERROR_INVALID_ARGUMENT, "v_scales[", i,
                    "] must be finite and > 0, got ", v_scales[i]);
    }
    set_pool_scales(*pool, layer, k_scales, v_scales, stream);
}

}  // namespace

extern "C" {

PKV_API pkv_status pkv_layer_spec_init(pkv_layer_spec *spec, size_t struct_size) {
    return guarded("pkv_layer_spec_init", [&] {
        init_versioned(spec, struct_size, "spec", "pkv_layer_spec");
    });
}

PKV_API pkv_status pkv_pool_params_init(pkv_pool_params *params, size_t struct_size) {
    return guarded("pkv_pool_params_init", [&] {
        init_versioned(params, struct_size, "params", "pkv_pool_params");
    });
}

PKV_API pkv_status pkv_pool_create(pkv_pool **out, const pkv_pool_params *params) {
    return guarded("pkv_pool_create", [&] { pool_create(out, params); });
}

PKV_API pkv_status pkv_pool_destroy(pkv_pool *pool) {
    return guarded("pkv_pool_destroy", [&] {
        if (pool == nullptr) return;
        const int64_t children = pool->live_children.load();
        require(children == 0, PKV_ERROR_BUSY, "the pool still has ", children,
                " live block table(s) / slots object(s); destroy them first");
        delete pool;
    });
}

PKV_API pkv_status pkv_pool_layer_view(pkv_cache_view *out, const pkv_pool *pool, int64_t layer, pkv_tier tier) {
    return guarded("pkv_pool_layer_view", [&] { pool_layer_view(out, pool, layer, tier); });
}

PKV_API pkv_status pkv_pool_get_stats(pkv_pool_stats *out, const pkv_pool *pool) {
    return guarded("pkv_pool_get_stats", [&] {
        require(out != nullptr, PKV_ERROR_INVALID_ARGUMENT, "out is NULL");
        require(pool != nullptr, PKV_ERROR_INVALID_ARGUMENT, "pool is NULL");
        pkv_pool_stats s;
        std::memset(&s, 0, sizeof s);
        s.block_size = pool->layout.block_size;
        s.num_layers = int64_t(pool->layout.layers.size());
        s.total_blocks = pool->num_blocks;
        s.free_blocks = pool->device_blocks.free_count();
        s.total_host_blocks = pool->num_host_blocks;
        s.free_host_blocks = pool->host_blocks.free_count();
        s.bytes_per_block = pool->layout.bytes_per_block;
        write_versioned(out, s, "out");
    });
}

PKV_API pkv_status pkv_pool_bytes_per_token(int64_t *out, const pkv_pool *pool, int64_t layer) {
    return guarded("pkv_pool_bytes_per_token", [&] {
        require(out != nullptr, PKV_ERROR_INVALID_ARGUMENT, "out is NULL");
        require(pool != nullptr, PKV_ERROR_INVALID_ARGUMENT, "pool is NULL");
        check_layer(*pool, layer);
        const LayerLayout &l = pool->layout.layers[size_t(layer)];
        *out = (l.region_bytes_k + l.region_bytes_v) / pool->layout.block_size;
    });
}

PKV_API pkv_status pkv_pool_set_scales(pkv_pool *pool, int64_t layer, const float *k_scales,
                                       const float *v_scales, pkv_stream stream) {
    return guarded("pkv_pool_set_scales", [&] { pool_set_scales(pool, layer, k_scales, v_scales, stream); });
}

PKV_API pkv_status pkv_pool_alloc_blocks(int32_t *out_ids, pkv_pool *pool, pkv_tier tier, int64_t n) {
    return guarded("pkv_pool_alloc_blocks", [&] {
        require(pool != nullptr, PKV_ERROR_INVALID_ARGUMENT, "pool is NULL");
        check_tier(tier);
        // A missing tier is a configuration error, not a transient shortage (OUT_OF_BLOCKS).
        require(tier != PKV_TIER_HOST || pool->num_host_blocks > 0, PKV_ERROR_INVALID_STATE,
                "tier is PKV_TIER_HOST but the pool has no host tier (num_host_blocks 0)");
        check_id_array("out_ids", out_ids, n);
        BlockAllocator &a = pool->tier_allocator(tier);
        if (!a.allocate(n, out_ids))
            fail_with(PKV_ERROR_OUT_OF_BLOCKS, "asked for ", n, " blocks of the ",
                      tier == PKV_TIER_HOST ? "host" : "device", " tier, ", a.free_count(), " of ", a.total(),
                      " are free");
    });
}

PKV_API pkv_status pkv_pool_retain_blocks(pkv_pool *pool, pkv_tier tier, const int32_t *ids, int64_t n) {
    return guarded("pkv_pool_retain_blocks", [&] {
        require(pool != nullptr, PKV_ERROR_INVALID_ARGUMENT, "pool is NULL");
        check_tier(tier);
        check_id_array("ids", ids, n);
        require(pool->tier_allocator(tier).retain(ids, n), PKV_ERROR_INVALID_ARGUMENT,
                "ids holds a block id that is out of range or not allocated (nothing retained)");
    });
}

PKV_API pkv_status pkv_pool_release_blocks(pkv_pool *pool, pkv_tier tier, const int32_t *ids, int64_t n) {
    return guarded("pkv_pool_release_blocks", [&] {
        require(pool != nullptr, PKV_ERROR_INVALID_ARGUMENT, "pool is NULL");
        check_tier(tier);
        check_id_array("ids", ids, n);
        require(pool->tier_allocator(tier).release(ids, n), PKV_ERROR_INVALID_ARGUMENT,
                "ids holds a block id that is out of range, not allocated, or listed more times than it has "
                "references (nothing released)");
    });
}

PKV_API pkv_status pkv_pool_block_refcount(int32_t *out, const pkv_pool *pool, pkv_tier tier, int32_t id) {
    return guarded("pkv_pool_block_refcount", [&] {
        require(out != nullptr, PKV_ERROR_INVALID_ARGUMENT, "out is NULL");
        require(pool != nullptr, PKV_ERROR_INVALID_ARGUMENT, "pool is NULL");
        check_tier(tier);
        const int32_t count = pool->tier_allocator(tier).refcount(id);
        require(count >= 0, PKV_ERROR_INVALID_ARGUMENT, "id ", id, " is out of range [0, ",
                pool->tier_blocks(tier), ")");
        *out = count;
    });
}

}  // extern "C"
