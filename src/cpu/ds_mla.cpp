// CPU fp8_ds_mla entries: tokens / output rows in parallel (OpenMP). The entry math is
// core/ds_mla.h (shared with the CUDA backend). Inputs and outputs may be aligned to their
// element size only: every access goes through memcpy.
#include <cstring>

#include "core/ds_mla.h"
#include "core/ops.h"
#include "cpu/row_loops.h"

namespace pkv {
namespace {

template <Elem In> void write_entry(const MlaWriteArgs &a, int64_t t, char *entry) {
    using S = storage_t<In>;
    S x[ds_mla::kLatent];
    std::memcpy(x, a.kv_c.data + a.kv_c.offset(t, 0), sizeof x);
    uint8_t codes[ds_mla::kLatent];
    float scales[ds_mla::kTiles];
    for (int i = 0; i < ds_mla::kTiles; ++i)
        scales[i] = ds_mla::encode_tile<In>(x + i * ds_mla::kTileElems, codes + i * ds_mla::kTileElems);
    std::memcpy(entry, codes, sizeof codes);
    std::memcpy(entry + ds_mla::kScalesOffset, scales, sizeof scales);
    std::memcpy(entry + ds_mla::kRopeOffset, a.k_pe.data + a.k_pe.offset(t, 0), ds_mla::kRope * sizeof(uint16_t));
}

template <Elem In> void write_all(const MlaWriteArgs &a) {
    for_each_slot(a.slots, a.num_tokens, a.cache, a.out_of_range, [&](int64_t t, int64_t block, int64_t offset) {
        write_entry<In>(a, t, a.cache.k.data + a.cache.k.offset(block, offset, 0));
    });
}

template <bool RopeF16, Elem Out> void gather_entry(const char *entry, char *dst) {
    using D = storage_t<Out>;
    D out[ds_mla::kLatent + ds_mla::kRope];
    float scales[ds_mla::kTiles];
    std::memcpy(scales, entry + ds_mla::kScalesOffset, sizeof scales);
    const auto *codes = reinterpret_cast<const uint8_t *>(entry);
    for (int i = 0; i < ds_mla::kLatent; ++i)
        out[i] = from_f32<Out>(ds_mla::decode_latent(codes[i], scales[i / ds_mla::kTileElems]));
    uint16_t rope[ds_mla::kRope];
    std::memcpy(rope, entry + ds_mla::kRopeOffset, sizeof rope);
    for (int i = 0; i < ds_mla::kRope; ++i) out[ds_mla::kLatent + i] = ds_mla::decode_rope<RopeF16, Out>(rope[i]);
    std::memcpy(dst, out, sizeof out);
}

template <bool RopeF16, Elem Out> void gather_all(const GatherArgs &a) {
    for_each_gather_row(a, [&](int64_t row, int64_t block, int64_t offset) {
        gather_entry<RopeF16, Out>(a.cache.k.data + a.cache.k.offset(block, offset, 0), a.key.data + a.key.offset(row, 0));
    });
}

}  // namespace

void cpu_write_ds_mla(const MlaWriteArgs &a) {
    if (a.in == Elem::F16) write_all<Elem::F16>(a);
    else write_all<Elem::BF16>(a);
}

void cpu_gather_ds_mla(const GatherArgs &a) {
    dispatch_elem(a.out, [&](auto out) {
        constexpr Elem Out = decltype(out)::value;
        if constexpr (!elem_is_fp8(Out)) {
            if (a.cache.rope_f16) gather_all<true, Out>(a);
            else gather_all<false, Out>(a);
        }
    });
}

}  // namespace pkv
