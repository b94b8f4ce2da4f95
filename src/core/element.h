// Element encodings the kernels dispatch on, and their sizes. Maps the public pkv_dtype and
// pkv_cache_format enums onto one internal list.
#pragma once

#include <cstdint>

#include "pagedkv.h"

namespace pkv {

enum class Elem : int { F32 = 0, F16 = 1, BF16 = 2, E4M3 = 3, E5M2 = 4, Invalid = -1 };

constexpr int elem_bytes(Elem e) { return e == Elem::F32 ? 4 : (e == Elem::F16 || e == Elem::BF16) ? 2 : 1; }
constexpr bool elem_is_fp8(Elem e) { return e == Elem::E4M3 || e == Elem::E5M2; }

// F32/F16/BF16/FP8 dtypes -> Elem; anything else -> Invalid.
Elem elem_from_dtype(pkv_dtype d);
// A cache format -> the element it stores; UNSET or unknown -> Invalid.
Elem elem_from_cache_format(pkv_cache_format f);
const char *cache_format_name(pkv_cache_format f);

// Families of cache formats; each family has its own write / gather kernels.
enum class FormatFamily : int {
    Unknown,
    Elementwise,  // F32 / F16 / BF16 / FP8 per tensor or per head: one element, one value
    TokenHead,    // INT8 / FP8 / INT4 / INT2 with a scale per (block, slot, head)
    DsMla,        // 656-byte DeepSeek MLA entries
};
FormatFamily format_family(pkv_cache_format f);
// INT4 / INT2: stored in the Hadamard-rotated domain.
constexpr bool format_is_rotated(pkv_cache_format f) {
    return f == PKV_CACHE_FORMAT_INT4_PER_TOKEN_HEAD || f == PKV_CACHE_FORMAT_INT2_PER_TOKEN_HEAD;
}
// Bytes of one stored head row of `head_size` elements (codes only, no scale).
int64_t format_row_bytes(pkv_cache_format f, int64_t head_size);
// Alignment the view's data pointers and strides must have.
int format_alignment(pkv_cache_format f);
// DeepSeek MLA entry geometry (fp8_ds_mla).
constexpr int64_t kDsMlaLatent = 512, kDsMlaRope = 64, kDsMlaEntryBytes = 656;
// Largest head size of the Hadamard-rotated formats (a warp holds a row in registers).
constexpr int64_t kMaxRotatedHeadSize = 1024;

}  // namespace pkv
