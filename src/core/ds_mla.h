// fp8_ds_mla entries (vLLM kv_cache_dtype "fp8_ds_mla", DeepSeek V3.2 sparse MLA): the one
// definition of the entry math, shared by the CPU and CUDA backends (PKV_HD), so both produce
// the same bytes.
//
// Entry (656 bytes, 4-byte aligned):
//   [0, 512)    e4m3 codes of the 512 latent values, tile i = elements [128 i, 128 i + 128)
//   [512, 528)  four float32 tile scales s_i = max(amax_i / 448, FLT_MIN)
//   [528, 656)  the 64 RoPE values, copied verbatim as 16-bit words (bf16, or f16)
// codes = e4m3 sat_finite_rne(x / s_i) of the float32 quotient (true division, via
// fp8_quotient); read back as float(code) * s_i (one float32 multiply).
//
// Special values (identical on both backends):
//   - amax is the integer maximum of the magnitude bits (bits(x) & 0x7FFFFFFF), so a NaN
//     anywhere in a tile wins (NaN bits sort above infinity): the tile's scale is the canonical
//     NaN 0x7FC00000 and every code of the tile is 0x7F (NaN). Order-independent by construction.
//   - an infinity (and no NaN) gives amax = inf, scale = inf; codes are those of x / inf:
//     +-0 (0x00 / 0x80) for finite x, 0x7F (NaN) for +-inf.
//   - an all-zero tile has scale FLT_MIN (0x00800000) and codes 0x00 (+0) / 0x80 (-0).
//   - read side: a NaN product float(code) * s is returned as the canonical NaN 0x7FFFFFFF
//     (x86 keeps an operand's payload, the GPU does not), then converted to the output dtype.
#pragma once

#include <cstdint>

#include "core/element_convert.h"
#include "core/exact_float.h"
#include "core/numeric_formats.h"

namespace pkv {
namespace ds_mla {

constexpr int kLatent = 512, kRope = 64;
constexpr int kTileElems = 128, kTiles = 4;
constexpr int kScalesOffset = 512, kRopeOffset = 528, kEntryBytes = 656;
constexpr float kE4m3Max = 448.0f;
constexpr uint32_t kFltMinBits = 0x00800000u;    // FLT_MIN


// Tile scale from the tile's amax bits: max(amax / 448, FLT_MIN), NaN -> kNanScaleBits.
PKV_HD float tile_scale(uint32_t amax_bits) {
    if (amax_bits > 0x7F800000u) return fmt::f32_from_bits(kNanScaleBits);
    const float s = fmt::f32_from_bits(amax_bits) / kE4m3Max;  // IEEE division on both backends
    return s < fmt::f32_from_bits(kFltMinBits) ? fmt::f32_from_bits(kFltMinBits) : s;
}

// One latent code: e4m3 sat_finite_rne(x / s) of the true float32 quotient.
PKV_HD uint8_t encode_latent(float x, const Fp8Divisor &d) { return fmt::f32_to_e4m3(fp8_quotient(x, d)); }

// One latent value read back: float(code) * s, a NaN made canonical.
PKV_HD float decode_latent(uint8_t code, float scale) {
    return fmt::canonical_nan(fmt::e4m3_to_f32(code) * scale);
}

// A stored RoPE word (bf16, or f16 when RopeF16) as the output element.
template <bool RopeF16, Elem Out> PKV_HD storage_t<Out> decode_rope(uint16_t w) {
    constexpr Elem Rope = RopeF16 ? Elem::F16 : Elem::BF16;
    if constexpr (Out == Rope) return w;
    else return from_f32<Out>(to_f32<Rope>(w));
}

// Encodes one 128-element tile (16-bit inputs of element In) into codes; returns its scale.
// The serial reference form of what the CUDA kernel computes with a half-warp per tile.
template <Elem In> PKV_HD float encode_tile(const storage_t<In> *x, uint8_t *codes) {
    uint32_t amax = 0;
    for (int i = 0; i < kTileElems; ++i) amax = max_bits(amax, magnitude_bits(to_f32<In>(x[i])));
    const float s = tile_scale(amax);
    const Fp8Divisor d = make_fp8_divisor(s);
    for (int i = 0; i < kTileElems; ++i) codes[i] = encode_latent(to_f32<In>(x[i]), d);
    return s;
}

}  // namespace ds_mla
}  // namespace pkv
