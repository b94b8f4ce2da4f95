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

}  // namespace pkv
