#include "core/element.h"

namespace pkv {

Elem elem_from_dtype(pkv_dtype d) {
    switch (d) {
        case PKV_DTYPE_F32: return Elem::F32;
        case PKV_DTYPE_F16: return Elem::F16;
        case PKV_DTYPE_BF16: return Elem::BF16;
        case PKV_DTYPE_FP8_E4M3: return Elem::E4M3;
        case PKV_DTYPE_FP8_E5M2: return Elem::E5M2;
        default: return Elem::Invalid;
    }
}

Elem elem_from_cache_format(pkv_cache_format f) {
    switch (f) {
        case PKV_CACHE_FORMAT_F32: return Elem::F32;
        case PKV_CACHE_FORMAT_F16: return Elem::F16;
        case PKV_CACHE_FORMAT_BF16: return Elem::BF16;
        case PKV_CACHE_FORMAT_FP8_E4M3: return Elem::E4M3;
        case PKV_CACHE_FORMAT_FP8_E5M2: return Elem::E5M2;
        default: return Elem::Invalid;
    }
}

const char *cache_format_name(pkv_cache_format f) {
    switch (f) {
        case PKV_CACHE_FORMAT_UNSET: return "unset";
        case PKV_CACHE_FORMAT_F32: return "f32";
        case PKV_CACHE_FORMAT_F16: return "f16";
        case PKV_CACHE_FORMAT_BF16: return "bf16";
        case PKV_CACHE_FORMAT_FP8_E4M3: return "fp8_e4m3";
        case PKV_CACHE_FORMAT_FP8_E5M2: return "fp8_e5m2";
        default: return "unknown";
    }
}

}  // namespace pkv
