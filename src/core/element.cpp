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
        case PKV_CACHE_FORMAT_INT8_PER_TOKEN_HEAD: return "int8_per_token_head";
        case PKV_CACHE_FORMAT_FP8_PER_TOKEN_HEAD: return "fp8_per_token_head";
        case PKV_CACHE_FORMAT_INT4_PER_TOKEN_HEAD: return "int4_per_token_head";
        case PKV_CACHE_FORMAT_INT2_PER_TOKEN_HEAD: return "int2_per_token_head";
        case PKV_CACHE_FORMAT_FP8_DS_MLA: return "fp8_ds_mla";
        default: return "unknown";
    }
}

FormatFamily format_family(pkv_cache_format f) {
    switch (f) {
        case PKV_CACHE_FORMAT_F32:
        case PKV_CACHE_FORMAT_F16:
        case PKV_CACHE_FORMAT_BF16:
        case PKV_CACHE_FORMAT_FP8_E4M3:
        case PKV_CACHE_FORMAT_FP8_E5M2: return FormatFamily::Elementwise;
        case PKV_CACHE_FORMAT_INT8_PER_TOKEN_HEAD:
        case PKV_CACHE_FORMAT_FP8_PER_TOKEN_HEAD:
        case PKV_CACHE_FORMAT_INT4_PER_TOKEN_HEAD:
        case PKV_CACHE_FORMAT_INT2_PER_TOKEN_HEAD: return FormatFamily::TokenHead;
        case PKV_CACHE_FORMAT_FP8_DS_MLA: return FormatFamily::DsMla;
        default: return FormatFamily::Unknown;
    }
}

int64_t format_row_bytes(pkv_cache_format f, int64_t head_size) {
    switch (f) {
        case PKV_CACHE_FORMAT_INT8_PER_TOKEN_HEAD:
        case PKV_CACHE_FORMAT_FP8_PER_TOKEN_HEAD: return head_size;
        case PKV_CACHE_FORMAT_INT4_PER_TOKEN_HEAD: return head_size / 2;
        case PKV_CACHE_FORMAT_INT2_PER_TOKEN_HEAD: return head_size / 4;
        case PKV_CACHE_FORMAT_FP8_DS_MLA: return kDsMlaEntryBytes;
        default: {
            const Elem e = elem_from_cache_format(f);
            return head_size * (e == Elem::Invalid ? 1 : elem_bytes(e));
        }
    }
}

int format_alignment(pkv_cache_format f) {
    if (format_family(f) == FormatFamily::DsMla) return 4;
    const Elem e = elem_from_cache_format(f);
    return e == Elem::Invalid ? 1 : elem_bytes(e);
}

}  // namespace pkv
