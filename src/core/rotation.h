// The default sign vector of the INT4 rotation (pkv_default_rotation_signs), one definition for
// the CPU and CUDA paths.
#pragma once

#include <cstdint>

#include "core/numeric_formats.h"  // PKV_HD

namespace pkv {

// splitmix64 (Steele, Lea, Flood 2014): word k is the mix of seed + (k + 1) * golden gamma.
PKV_HD uint64_t splitmix64_word(uint64_t seed, uint64_t k) {
    uint64_t z = seed + (k + 1) * 0x9E3779B97F4A7C15ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

constexpr uint64_t kRotationSeed = 0x9E3779B9ull;

// -1.0f when bit (i % 64) of word i / 64 is set, else +1.0f.
PKV_HD float default_rotation_sign(int64_t i) {
    const uint64_t w = splitmix64_word(kRotationSeed, uint64_t(i) >> 6);
    return (w >> (uint64_t(i) & 63)) & 1 ? -1.0f : 1.0f;
}

// The sign of element i of a side: the caller's vector, or the default.
PKV_HD float rotation_sign(const float *signs, int64_t i) { return signs ? signs[i] : default_rotation_sign(i); }

}  // namespace pkv
