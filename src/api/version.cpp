// Version and build queries, dtype names and sizes.
#include "pagedkv.h"

#ifndef PKV_CUDA_VERSION
#define PKV_CUDA_VERSION "none"
#endif
#ifndef PKV_CUDA_ARCHS
#define PKV_CUDA_ARCHS "none"
#endif
#ifndef PKV_WITH_OPENMP
#define PKV_WITH_OPENMP 0
#endif
#ifndef PKV_WITH_XLA
#define PKV_WITH_XLA 0
#endif
#ifndef PKV_COMPILER
#define PKV_COMPILER "unknown"
#endif
#define PKV_STR2(x) #x
#define PKV_STR(x) PKV_STR2(x)

extern "C" {

PKV_API uint32_t pkv_version(void) { return PKV_VERSION; }

PKV_API const char *pkv_version_string(void) { return PKV_VERSION_STRING; }

PKV_API const char *pkv_build_info(void) {
    return "version=" PKV_VERSION_STRING " abi=" PKV_ABI_VERSION " cuda=" PKV_CUDA_VERSION
           " cuda_archs=" PKV_CUDA_ARCHS " openmp=" PKV_STR(PKV_WITH_OPENMP) " xla_ffi=" PKV_STR(PKV_WITH_XLA)
           " compiler=" PKV_COMPILER;
}

PKV_API size_t pkv_dtype_size_bits(pkv_dtype dtype) {
    switch (dtype) {
        case PKV_DTYPE_F32: case PKV_DTYPE_INT32: return 32;
        case PKV_DTYPE_F16: case PKV_DTYPE_BF16: return 16;
        case PKV_DTYPE_FP8_E4M3: case PKV_DTYPE_FP8_E5M2: case PKV_DTYPE_INT8: case PKV_DTYPE_UINT8: return 8;
        case PKV_DTYPE_INT64: return 64;
        default: return 0;
    }
}

PKV_API const char *pkv_dtype_name(pkv_dtype dtype) {
    switch (dtype) {
        case PKV_DTYPE_F32: return "f32";
        case PKV_DTYPE_F16: return "f16";
        case PKV_DTYPE_BF16: return "bf16";
        case PKV_DTYPE_FP8_E4M3: return "fp8_e4m3";
        case PKV_DTYPE_FP8_E5M2: return "fp8_e5m2";
        case PKV_DTYPE_INT8: return "int8";
        case PKV_DTYPE_UINT8: return "uint8";
        case PKV_DTYPE_INT32: return "int32";
        case PKV_DTYPE_INT64: return "int64";
        default: return "unknown";
    }
}

}  // extern "C"
