/*
 * pagedkv.h — the stable C API of libpagedkv.
 *
 * pagedkv owns the paged KV cache of an LLM inference engine: it writes new keys and values
 * into paged blocks (converting or quantizing on the way) and reads them back (dequantizing).
 * This header is C99, needs no CUDA header, and is the reference manual: every function
 * documents its arguments, the statuses it returns, and its stream and threading behaviour.
 *
 * Conventions (docs/conventions.md):
 *  - Every function returns pkv_status; on failure pkv_last_error_message() says why, and no
 *    buffer has been touched.
 *  - Enqueueing functions take a pkv_stream last. They never synchronize, never allocate and
 *    never query the device (beyond reading its compute capability once per process), so they
 *    can be captured in a CUDA graph. Device faults surface at the caller's next stream
 *    synchronization. On sm_90+ the write and gather kernels use programmatic dependent launch:
 *    they may start while the previous kernel of the stream runs, but touch no memory before
 *    it has completed (stream order is kept). PKV_DISABLE_PDL=1 in the environment turns it off.
 *  - The caller makes the cache's CUDA device current before an enqueueing call (as with any
 *    CUDA library working on raw pointers); the stream must belong to that device.
 *  - Params / descriptor structs start with `size_t struct_size`; 0 in a field means the library
 *    default. Initialize them with the *_INIT macros or *_init() functions.
 *  - All sizes, strides and offsets are int64_t. Enum values are pinned and never reused.
 */
#ifndef PAGEDKV_H
#define PAGEDKV_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ---------------------------------------------------------------- export ------------------ */
#if defined(_WIN32)
#  if defined(PKV_BUILDING)
#    define PKV_API __declspec(dllexport)
#  elif defined(PKV_SHARED)
#    define PKV_API __declspec(dllimport)
#  else
#    define PKV_API
#  endif
#elif defined(__GNUC__) || defined(__clang__)
#  define PKV_API __attribute__((visibility("default")))
#else
#  define PKV_API
#endif

/* ---------------------------------------------------------------- version ----------------- */
#define PKV_VERSION_MAJOR 0
#define PKV_VERSION_MINOR 1
#define PKV_VERSION_PATCH 0
/** Encoding fixed forever: MAJOR*10000 + MINOR*100 + PATCH. */
#define PKV_VERSION (PKV_VERSION_MAJOR * 10000 + PKV_VERSION_MINOR * 100 + PKV_VERSION_PATCH)
#define PKV_VERSION_STRING "0.1.0"
/** True when the header is at least version M.m.p. */
#define PKV_VERSION_CHECK(M, m, p) (PKV_VERSION >= ((M) * 10000 + (m) * 100 + (p)))
/** The SONAME's ABI number: libpagedkv.so.<PKV_ABI_VERSION>. */
#define PKV_ABI_VERSION "0.1"

/** Runtime version of the loaded library, encoded as PKV_VERSION. Thread-safe. */
PKV_API uint32_t pkv_version(void);
/** Runtime version string ("0.1.0"). Static storage, never NULL. Thread-safe. */
PKV_API const char *pkv_version_string(void);
/**
 * Build facts as one line of `key=value` pairs separated by spaces, e.g.
 * "version=0.1.0 cuda=13.0 cuda_archs=80,90 openmp=1 compiler=gcc-12.2". `cuda=none` when the
 * library was built without CUDA. Static storage, never NULL. Thread-safe.
 */
PKV_API const char *pkv_build_info(void);

/* ---------------------------------------------------------------- status ------------------ */
typedef enum pkv_status {
    PKV_SUCCESS = 0,
    PKV_ERROR_INVALID_ARGUMENT = 1,     /**< a NULL pointer, bad shape, stride, dtype, value */
    PKV_ERROR_INVALID_STATE = 2,        /**< the call is not valid for the object's state */
    PKV_ERROR_OUT_OF_HOST_MEMORY = 3,
    PKV_ERROR_OUT_OF_DEVICE_MEMORY = 4,
    PKV_ERROR_OUT_OF_BLOCKS = 5,        /**< pool exhausted; recoverable, nothing changed */
    PKV_ERROR_NOT_SUPPORTED = 6,        /**< valid request this build / device cannot serve */
    PKV_ERROR_CUDA = 7,                 /**< a CUDA runtime call or launch failed */
    PKV_ERROR_STRUCT_SIZE = 8,          /**< struct_size unset, too small, or unknown tail set */
    PKV_ERROR_BUSY = 9,                 /**< object still has live dependants */
    PKV_ERROR_INTERNAL = 10,            /**< a bug in pagedkv; please report it */
    PKV_STATUS_FORCE32 = 0x7FFFFFFF
} pkv_status;

/** Static name of a status ("PKV_ERROR_INVALID_ARGUMENT"); "PKV_STATUS_UNKNOWN" for other values. */
PKV_API const char *pkv_status_string(pkv_status status);
/**
 * Message of the last failing pkv_* call on this thread, with context
 * ("pkv_write_kv: slot_mapping dtype must be int32 or int64, got bf16"). Never NULL; "" when
 * the last call succeeded. Owned by the library, valid until the next pkv_* call on this thread.
 */
PKV_API const char *pkv_last_error_message(void);
/** Raw cudaError_t of the last PKV_ERROR_CUDA on this thread (0 if none). */
PKV_API int pkv_last_cuda_error(void);

/* ---------------------------------------------------------------- dtypes, devices --------- */
typedef enum pkv_dtype {
    PKV_DTYPE_F32 = 0,
    PKV_DTYPE_F16 = 1,
    PKV_DTYPE_BF16 = 2,
    PKV_DTYPE_FP8_E4M3 = 3,  /**< OCP e4m3fn: max 448, no infinities */
    PKV_DTYPE_FP8_E5M2 = 4,  /**< OCP e5m2: max 57344 */
    PKV_DTYPE_INT8 = 5,
    PKV_DTYPE_UINT8 = 6,
    PKV_DTYPE_INT32 = 7,
    PKV_DTYPE_INT64 = 8,
    PKV_DTYPE_FORCE32 = 0x7FFFFFFF
} pkv_dtype;

/** Size of one element in bits (32 for F32); 0 for an unknown value. Thread-safe. */
PKV_API size_t pkv_dtype_size_bits(pkv_dtype dtype);
/** Static lower-case name ("bf16", "fp8_e4m3"); "unknown" for other values. Thread-safe. */
PKV_API const char *pkv_dtype_name(pkv_dtype dtype);

/** Device types; values equal DLPack's DLDeviceType codes. */
typedef enum pkv_device_type {
    PKV_DEVICE_CPU = 1,
    PKV_DEVICE_CUDA = 2,
    PKV_DEVICE_CUDA_HOST = 3, /**< pinned host memory; treated as CPU memory by the ops */
    PKV_DEVICE_TYPE_FORCE32 = 0x7FFFFFFF
} pkv_device_type;

typedef struct pkv_device {
    pkv_device_type type;
    int32_t id; /**< CUDA ordinal; 0 for the CPU */
} pkv_device;

/** CUDA stream (identical to cudaStream_t / CUstream). NULL = the legacy default stream. */
typedef struct CUstream_st *pkv_stream;

#define PKV_MAX_DIMS 6

/**
 * A strided tensor view (DLPack-like, no ownership). Shape and strides are in elements.
 * Ops state which dimensions they need and which strides must be 1.
 */
typedef struct pkv_tensor {
    void *data;
    pkv_dtype dtype;
    pkv_device device;
    int32_t ndim;
    int64_t shape[PKV_MAX_DIMS];
    int64_t strides[PKV_MAX_DIMS];
} pkv_tensor;

/* ---------------------------------------------------------------- devices and memory ------ */
/*
 * Small helpers so that C, Rust and Python callers can drive a GPU without a CUDA toolchain.
 * They are not enqueue-only: pkv_alloc / pkv_free may synchronize (as cudaMalloc / cudaFree do).
 */

/**
 * Number of usable CUDA devices. Writes 0 (and returns PKV_SUCCESS) when the build has no CUDA,
 * no driver is installed, or no device is present. Thread-safe.
 */
PKV_API pkv_status pkv_cuda_device_count(int32_t *count);

/**
 * Allocate `bytes` on `device`: CPU = 256-byte aligned host memory, CUDA = cudaMalloc on
 * device.id (the current device is restored), CUDA_HOST = pinned host memory. bytes = 0 gives
 * *out = NULL. @return PKV_ERROR_OUT_OF_HOST_MEMORY / PKV_ERROR_OUT_OF_DEVICE_MEMORY,
 * PKV_ERROR_NOT_SUPPORTED (CUDA without a CUDA build), PKV_ERROR_INVALID_ARGUMENT. Thread-safe.
 */
PKV_API pkv_status pkv_alloc(void **out, pkv_device device, size_t bytes);
/** Free memory from pkv_alloc with the same device. NULL is a no-op. Thread-safe. */
PKV_API pkv_status pkv_free(void *ptr, pkv_device device);
/**
 * Copy `bytes` between any two devices. Enqueued on `stream` when either side is CUDA (the
 * caller synchronizes before reading a host destination); a plain memcpy when both are CPU.
 * Thread-safe.
 */
PKV_API pkv_status pkv_copy(void *dst, pkv_device dst_device, const void *src, pkv_device src_device,
                            size_t bytes, pkv_stream stream);
/**
 * Block until all work on `stream` is done (cudaStreamSynchronize). A no-op in a build without
 * CUDA, and for the NULL stream when no CUDA driver or device is present.
 */
PKV_API pkv_status pkv_stream_synchronize(pkv_stream stream);

/* ---------------------------------------------------------------- cache view -------------- */

/** How one cache element is encoded. 0 is not a format: a view must name one. */
typedef enum pkv_cache_format {
    PKV_CACHE_FORMAT_UNSET = 0,
    PKV_CACHE_FORMAT_F32 = 1,      /**< plain float32 */
    PKV_CACHE_FORMAT_F16 = 2,      /**< plain float16 */
    PKV_CACHE_FORMAT_BF16 = 3,     /**< plain bfloat16 */
    PKV_CACHE_FORMAT_FP8_E4M3 = 4, /**< q = sat_finite_rne(x / scale), x = float(q) * scale */
    PKV_CACHE_FORMAT_FP8_E5M2 = 5, /**< as FP8_E4M3 with the e5m2 encoding */
    /**
     * Per-token-head formats (6..9): every (block, slot, head) row of K and of V has its own
     * float32 scale, kept in the view's scale planes (k_scale_plane / v_scale_plane). The byte
     * layout of each format is in docs/formats.md.
     *
     * INT8: s = max(amax / 127, 1e-6); q = clamp(rne(x * (1/s)), -128, 127) as int8 bytes;
     * read back as q * s. Round to nearest even (vLLM's Triton INT8 path truncates toward zero).
     */
    PKV_CACHE_FORMAT_INT8_PER_TOKEN_HEAD = 6,
    /** FP8 e4m3: s = max(amax / 448, 1e-6); q = e4m3 sat_finite_rne(x * (1/s)); read q * s. */
    PKV_CACHE_FORMAT_FP8_PER_TOKEN_HEAD = 7,
    /**
     * INT4 (vLLM int4_per_token_head): x' = H * (signs ⊙ x) with the unnormalized Sylvester
     * Hadamard H (H*H = D*I, power-of-two head size), computed in float32 and rounded to the input
     * dtype; then asymmetric min/max: s = max((max - min) / 15, 1e-6), z = clamp(round(-min / s),
     * 0, 15) with round = half away from zero, q = clamp(floor(fma(x', 1/s, z + 0.5)), 0, 15)
     * (x' / s + z rounded half up, one fused multiply-add). Two codes a byte, the even element in
     * the low nibble (D/2 bytes a row). The stored scale is (bits(s) & ~0xF) | z; reading uses
     * s~ = float(bits & ~0xF): x^' = s~ * (q - z).
     */
    PKV_CACHE_FORMAT_INT4_PER_TOKEN_HEAD = 8,
    /**
     * INT2 (vLLM PR #39074): x' = H * x (plain Hadamard, no signs), n = sqrt(sum x'^2 + 1e-12),
     * z = x' * sqrt(D) / n, 4-level Lloyd-Max codes for N(0,1) (thresholds -0.9816, 0, 0.9816
     * applied as |x'| * (sqrt(D) / n) >= 0.9816 on the exact product, the sign bit of x' choosing
     * the half; centroids -1.5104, -0.4528, 0.4528, 1.5104; codes 0..3 ascending), four codes a byte,
     * element 4j+i in bits [2i, 2i+2) of byte j (D/4 bytes a row). Stored scale n / D^1.5;
     * reading gives x^' = c * scale * D in the rotated domain.
     */
    PKV_CACHE_FORMAT_INT2_PER_TOKEN_HEAD = 9,
    /**
     * DeepSeek sparse-MLA entries (vLLM kv_cache_dtype "fp8_ds_mla"): a K-only view with one
     * head of 576 elements (512 latent + 64 RoPE), each entry 656 bytes: [0, 512) e4m3 codes,
     * [512, 528) four float32 tile scales (s_i = max(amax of tile i / 448, FLT_MIN)),
     * [528, 656) the 64 RoPE values, bf16 (or f16 with PKV_CACHE_VIEW_ROPE_F16). Written by
     * pkv_write_mla; gathered by pkv_gather_kv. A tile with a NaN gets a NaN scale and 0x7F
     * codes (vLLM's fmaxf would skip the NaN); with an Inf (no NaN) the scale is Inf, finite
     * values code as +-0 and +-Inf as 0x7F; an all-zero tile has scale FLT_MIN.
     */
    PKV_CACHE_FORMAT_FP8_DS_MLA = 10,
    PKV_CACHE_FORMAT_FORCE32 = 0x7FFFFFFF
} pkv_cache_format;

/** Granularity of the FP8 scales. */
typedef enum pkv_scale_mode {
    PKV_SCALE_PER_TENSOR = 0, /**< one float32 scale for all of K (and one for V) */
    PKV_SCALE_PER_HEAD = 1,   /**< num_heads float32 scales, indexed by KV head */
    PKV_SCALE_MODE_FORCE32 = 0x7FFFFFFF
} pkv_scale_mode;

/**
 * Declarative description of one layer's paged K/V cache. Nothing is allocated; the view names
 * memory the caller (or a pool) owns.
 *
 * Element (block b, slot s, head h, dim d) of K lives at byte
 *   k_data + b*k_stride_block + s*k_stride_slot + h*k_stride_head + d*element_size
 * (all int64), and likewise for V with its own strides. Any layout is a choice of strides:
 *   NHD  [NB, BS, H, D]:        block=BS*H*D*e, slot=H*D*e, head=D*e   (the default)
 *   HND  [NB, H, BS, D]:        block=H*BS*D*e, slot=D*e,   head=BS*D*e
 *   K/V interleaved [NB,2,BS,H,D]: block=2*BS*H*D*e, v_data = k_data + BS*H*D*e
 *   K|V packed in the last dim [NB,BS,H,2D]: head=2D*e, v_data = k_data + D*e
 *   padded pages: a block stride larger than the payload.
 * A stride of 0 means the NHD default computed from the sizes. Strides must be non-negative
 * multiples of the element size, k_data / v_data aligned to it, and the last dimension is
 * contiguous. The same slot of K and V is written by the same token.
 *
 * Scales (FP8 formats only; ignored otherwise) are float32 on the cache's device, read by the
 * kernel at run time (so they may change between CUDA-graph replays): one value, or num_heads
 * values with PKV_SCALE_PER_HEAD. A NULL scale pointer means scale 1.0.
 *
 * v_data may be NULL for a K-only cache (MLA latent); value inputs / outputs are then NULL too.
 *
 * Packed formats: a head row of INT4 is head_size/2 bytes, of INT2 head_size/4 bytes, of
 * FP8_DS_MLA 656 bytes (the NHD defaults use those row sizes); the per-token-head formats need
 * byte strides and data aligned to 1 byte only, FP8_DS_MLA to 4 bytes.
 *
 * Fields appended after the first version of the struct (a caller whose struct_size is that
 * first size, 152, reads them as 0):
 *
 * Split head rows (the legacy 5-D layout of vLLM reshape_and_cache): with chunk_size c > 0 a
 * head row is stored as runs of c contiguous elements, run j at byte j*stride_chunk from the row
 * start; element d lives at (d / c)*stride_chunk + (d % c)*element_size. c must divide the head
 * size. Plain and per-tensor FP8 formats only.
 *   key   [NB, H, D/x, BS, x]: chunk=x, stride_chunk=BS*x*e, slot=x*e, head=D*BS*e, block=H*D*BS*e
 *   value [NB, H, D, BS]:      chunk=1, stride_chunk=BS*e,   slot=e,   head=D*BS*e, block=H*D*BS*e
 *
 * Scale planes (per-token-head formats 6..9, required; ignored otherwise): the float32 scale of
 * (block b, slot s, head h) is at byte b*scale_stride_block + s*scale_stride_slot +
 * h*scale_stride_head of k_scale_plane (V: v_scale_plane, NULL iff v_data is NULL). Strides are
 * multiples of 4 (0 = a contiguous [NB, BS, H] float32 tensor), planes 4-byte aligned. vLLM's
 * inline layout (the scale after each head row's codes) is k_scale_plane = k_data + D_store
 * bytes with the data's strides.
 *
 * Rotation signs (INT4 only): +1.0f / -1.0f for each of the head_size elements, float32 on the
 * cache's device; NULL = the library default (pkv_default_rotation_signs). K and V may differ.
 */
typedef struct pkv_cache_view {
    size_t struct_size;          /**< sizeof(pkv_cache_view) */
    uint32_t flags;              /**< reserved, must be 0 */
    pkv_cache_format format;
    pkv_device device;           /**< where k_data, v_data and the scales live */
    int64_t num_blocks;
    int64_t block_size;          /**< tokens per block */
    int64_t num_heads;           /**< KV heads */
    int64_t head_size_k;
    int64_t head_size_v;         /**< 0 = head_size_k */
    void *k_data;
    void *v_data;
    int64_t k_stride_block, k_stride_slot, k_stride_head; /**< bytes; 0 = NHD default */
    int64_t v_stride_block, v_stride_slot, v_stride_head; /**< bytes; 0 = NHD default */
    pkv_scale_mode scale_mode;
    const float *k_scale;        /**< NULL = 1.0 */
    const float *v_scale;        /**< NULL = 1.0 */
    /* appended after the first version (152 bytes) */
    int64_t k_chunk_size, v_chunk_size;     /**< elements per contiguous run; 0 = the whole row */
    int64_t k_stride_chunk, v_stride_chunk; /**< bytes between runs */
    float *k_scale_plane;                   /**< per-token-head scales of K */
    float *v_scale_plane;                   /**< per-token-head scales of V */
    int64_t k_scale_stride_block, k_scale_stride_slot, k_scale_stride_head; /**< bytes; 0 = default */
    int64_t v_scale_stride_block, v_scale_stride_slot, v_scale_stride_head; /**< bytes; 0 = default */
    const float *k_rotation_signs;          /**< INT4: [head_size_k] +-1.0f; NULL = default */
    const float *v_rotation_signs;          /**< INT4: [head_size_v] +-1.0f; NULL = default */
} pkv_cache_view;

/** cache->flags: gathers of the rotated formats (INT4, INT2) return the rotated domain x^' (what
 *  an attention kernel that rotates the query reads) instead of the original-domain inverse. */
#define PKV_CACHE_VIEW_ROTATED_DOMAIN 0x1u
/** cache->flags, FP8_DS_MLA only: the entries' RoPE values are float16 (default: bfloat16).
 *  pkv_write_mla requires inputs of that dtype; gathers convert from it. */
#define PKV_CACHE_VIEW_ROPE_F16 0x2u

#define PKV_CACHE_VIEW_INIT {sizeof(pkv_cache_view), 0, PKV_CACHE_FORMAT_UNSET, {PKV_DEVICE_CPU, 0}, \
                             0, 0, 0, 0, 0, NULL, NULL, 0, 0, 0, 0, 0, 0, PKV_SCALE_PER_TENSOR, NULL, NULL, \
                             0, 0, 0, 0, NULL, NULL, 0, 0, 0, 0, 0, 0, NULL, NULL}

/**
 * The default INT4 rotation signs: out[i] = -1.0f if bit (i % 64) of word i / 64 is set, else
 * +1.0f, where word k is splitmix64 output k for the seed 0x9E3779B9 (word k = mix(seed +
 * (k + 1) * 0x9E3779B97F4A7C15), host memory, n values). Deterministic; every head size uses a
 * prefix of the same sequence. vLLM draws its signs from PyTorch's RNG instead: pass those as
 * k_rotation_signs / v_rotation_signs for caches that must match vLLM's bit for bit.
 * @param[out] out  n floats of host memory (copy them to the device for a cache view).
 * @param n         number of signs, >= 0 (0 writes nothing).
 * @return PKV_SUCCESS; PKV_ERROR_INVALID_ARGUMENT for n < 0 or out NULL with n > 0.
 * Host only: no stream, no device access. Thread-safe.
 */
PKV_API pkv_status pkv_default_rotation_signs(float *out, int64_t n);

/**
 * Zero `view` and set its struct_size (for FFI callers that cannot use PKV_CACHE_VIEW_INIT).
 * @return PKV_ERROR_INVALID_ARGUMENT if view is NULL; PKV_ERROR_STRUCT_SIZE if struct_size is
 *         smaller than the first version of the struct. Thread-safe.
 */
PKV_API pkv_status pkv_cache_view_init(pkv_cache_view *view, size_t struct_size);

/**
 * Validate a cache view without touching its memory (the same checks every op makes).
 * @return PKV_SUCCESS, or PKV_ERROR_INVALID_ARGUMENT / PKV_ERROR_STRUCT_SIZE /
 *         PKV_ERROR_NOT_SUPPORTED with a message naming the field. Thread-safe.
 */
PKV_API pkv_status pkv_cache_view_check(const pkv_cache_view *view);

/* ---------------------------------------------------------------- write ------------------- */

/**
 * Write new keys and values into the paged cache (vLLM reshape_and_cache_flash semantics).
 *
 * @param[in] cache     the destination cache view (its memory is written).
 * @param[in] key       [T_pad, num_heads, head_size_k], f32 / f16 / bf16, on the cache's device;
 *                      any non-negative row and head stride, last stride 1, data aligned to the
 *                      element size. (FP8 inputs: PKV_ERROR_NOT_SUPPORTED.)
 * @param[in] value     [T_pad, num_heads, head_size_v], same rules and the same dtype as key;
 *                      NULL iff cache->v_data is NULL.
 * @param[in] slot_mapping [T] int32 or int64 (any stride): token t goes to
 *                      block = slot / block_size, offset = slot % block_size. T is the token
 *                      count (key and value may carry more rows: they are not read). A negative
 *                      slot is padding: the token is skipped. A slot >= num_blocks*block_size is
 *                      never written; it is counted in `out_of_range_count`.
 * @param[in,out] out_of_range_count optional int64 on the cache's device (NULL = do not count):
 *                      incremented (atomically) by the number of out-of-range slots. Never reset
 *                      by the library, so a graph replay keeps accumulating.
 * @param stream        CUDA stream for a CUDA cache; ignored for a CPU cache (the CPU path runs
 *                      synchronously on the calling thread and its OpenMP workers).
 *
 * Formats: a plain float cache (F32/F16/BF16) stores the input converted with round-to-nearest-
 * even (an exact copy when the dtypes match); FP8 stores sat_finite_rne(x / scale) of the
 * float32 quotient: the same code as a true division (bit-identical to vLLM's CUDA kernel),
 * never the code of x * (1 / scale). The per-token-head formats (INT8, FP8, INT4, INT2) quantize
 * each (token, head) row of K and of V on its own and store its scale in the scale plane (their
 * enum values give the math; a padding token writes neither codes nor scale). FP8_DS_MLA caches
 * are written by pkv_write_mla (here: PKV_ERROR_NOT_SUPPORTED).
 * NaN / Inf inputs: FP8 codes follow sat_finite (Inf saturates, NaN stays NaN); the per-token-head
 * formats give a row with a NaN or Inf element a NaN scale (INT8 / INT4 / INT2 codes of such a
 * row are unspecified but in range). Never a crash or an out-of-row write.
 * Two tokens mapped to the same slot: which one lands is unspecified.
 *
 * @return PKV_SUCCESS; PKV_ERROR_INVALID_ARGUMENT (NULL pointer, shape / stride / dtype
 *         mismatch, device mismatch); PKV_ERROR_NOT_SUPPORTED (format / dtype pair, or a CUDA
 *         cache in a build without CUDA); PKV_ERROR_CUDA (launch failure). T = 0 enqueues nothing.
 * Threading: reentrant; concurrent calls on disjoint slots are safe.
 */
PKV_API pkv_status pkv_write_kv(const pkv_cache_view *cache, const pkv_tensor *key,
                                const pkv_tensor *value, const pkv_tensor *slot_mapping,
                                int64_t *out_of_range_count, pkv_stream stream);

/**
 * Write MLA latent entries (vLLM concat_and_cache_mla semantics): entry = [kv_c | k_pe].
 *
 * @param[in] cache   a K-only view (v_data NULL) with num_heads = 1 and head_size_k = R + P.
 *                    Formats: F32 / F16 / BF16 (converted with RNE), FP8_E4M3 / FP8_E5M2 with
 *                    one per-tensor scale (k_scale), or FP8_DS_MLA (R = 512, P = 64; bf16
 *                    inputs, or f16 with PKV_CACHE_VIEW_ROPE_F16; the 656-byte entry is
 *                    described at the format).
 * @param[in] kv_c    [T_pad, R] f32 / f16 / bf16, any row stride, last stride 1.
 * @param[in] k_pe    [T_pad, P], the dtype of kv_c, any row stride, last stride 1.
 * @param[in] slot_mapping, out_of_range_count, stream: as pkv_write_kv (the same padding,
 *                    out-of-range and T = 0 rules; CUDA work is enqueued on `stream`, a CPU cache
 *                    is written synchronously).
 * @return PKV_SUCCESS; PKV_ERROR_INVALID_ARGUMENT (NULL pointer; a view with V or more than one
 *         head; kv_c / k_pe not 2-D, of different dtypes, or R + P != head_size_k; fp8_ds_mla
 *         with R != 512, P != 64 or inputs not of the RoPE dtype; device mismatch);
 *         PKV_ERROR_NOT_SUPPORTED (a per-token-head format, split head rows, or a CUDA cache in a
 *         build without CUDA); PKV_ERROR_CUDA (launch failure). Nothing is written on error.
 * Threading: reentrant; concurrent calls on disjoint slots are safe.
 */
PKV_API pkv_status pkv_write_mla(const pkv_cache_view *cache, const pkv_tensor *kv_c, const pkv_tensor *k_pe,
                                 const pkv_tensor *slot_mapping, int64_t *out_of_range_count,
                                 pkv_stream stream);

/* ---------------------------------------------------------------- gather ------------------ */

/**
 * Gather paged K/V back to dense rows, dequantizing (vLLM gather_and_maybe_dequant_cache
 * semantics, for any head layout).
 *
 * Request b owns output rows [cu_seq_lens[b], cu_seq_lens[b+1]). Output row i of request b
 * reads cache position p = i - cu_seq_lens[b] + seq_starts[b] (seq_starts = 0 when NULL), i.e.
 * slot (block_table[b][p / block_size], p % block_size).
 *
 * @param[out] out_key   [N, num_heads, head_size_k], f32 / f16 / bf16, on the cache's device;
 *                       any non-negative row and head stride, last stride 1. Rows past
 *                       cu_seq_lens[B] are not written, so N may be an upper bound (no host sync
 *                       needed). (FP8 outputs: PKV_ERROR_NOT_SUPPORTED.)
 * @param[out] out_value [N, num_heads, head_size_v], the dtype of out_key; NULL to skip V
 *                       (required when the cache has no V).
 * @param[in] cache      the source cache view.
 * @param[in] block_table [B, max_blocks] int32, row stride >= max_blocks allowed, last stride 1.
 * @param[in] cu_seq_lens [B + 1] int32, contiguous, non-decreasing, cu_seq_lens[0] = 0.
 * @param[in] seq_starts  optional [B] int32, contiguous: the cache position of each request's
 *                       first row.
 * @param[in,out] out_of_range_count optional int64 on the cache's device: incremented once for
 *                       each row whose position is negative or runs past max_blocks, or whose
 *                       block id is outside [0, num_blocks); such rows are left unwritten.
 * @param stream         CUDA stream for a CUDA cache; ignored for a CPU cache.
 *
 * Dequantization: plain formats convert with round-to-nearest-even (exact copy for equal
 * dtypes); FP8 gives float(q) * scale, rounded to the output dtype. Per-token-head INT8 / FP8
 * give float(q) * s of the row's scale. INT4 and INT2 rows are rotated back to the original
 * domain, x^ = signs ⊙ (H * x^') / D (INT2: H * x^' / D) with x^' their rotated-domain values (see
 * the formats), in float32, rounded to the output dtype: INT4 as signs ⊙ (s~ / D) * H (q - z)
 * with the integer transform exact (one rounding), INT2 as H (c * scale). With
 * PKV_CACHE_VIEW_ROTATED_DOMAIN in cache->flags the rotated-domain x^' itself is returned. FP8_DS_MLA entries give 576 values: the 512 latent
 * values float(q) * s_tile and the 64 RoPE values converted from their stored 16-bit dtype
 * (bf16, or f16 with PKV_CACHE_VIEW_ROPE_F16); out_key [N, 1, 576].
 * @return as pkv_write_kv. N = 0 or B = 0 enqueues nothing.
 * Threading: reentrant; reads the cache only.
 */
PKV_API pkv_status pkv_gather_kv(const pkv_tensor *out_key, const pkv_tensor *out_value,
                                 const pkv_cache_view *cache, const pkv_tensor *block_table,
                                 const pkv_tensor *cu_seq_lens, const pkv_tensor *seq_starts,
                                 int64_t *out_of_range_count, pkv_stream stream);

/* ---------------------------------------------------------------- raw caches: blocks, casts */

/**
 * Copy whole blocks inside caches the caller owns (vLLM copy_blocks semantics; for pool memory
 * use pkv_pool_copy_blocks): in every cache, block pairs[i][1] receives block pairs[i][0].
 *
 * @param[in] caches     num_caches tensors, e.g. every layer's key and value cache. Each is
 *                       [num_blocks, ...] of any dtype: dimension 0 indexes blocks with any
 *                       stride of at least one block, the other dimensions are dense row-major
 *                       (a block is one contiguous run of bytes, as in vLLM's layouts where a
 *                       block of key_cache = kv_cache[:, 0] is [BS, H, D]). The caches may have
 *                       different shapes and dtypes; all live on one device (CPU, pinned host or
 *                       one CUDA device).
 * @param num_caches     >= 0; 0 does nothing.
 * @param[in] pairs      [P, 2] int32 or int64 (src, dst) block ids, contiguous, on the caches'
 *                       device (read at run time: graph capturable). In each cache, ids outside
 *                       [0, num_blocks) and pairs with src == dst are skipped. Pairs run in
 *                       parallel: a block that is both a source and a destination gives an
 *                       unspecified result (as in vLLM).
 * @param stream         CUDA stream for CUDA caches (one launch per 256 caches, nothing
 *                       allocated); host caches are copied synchronously.
 * @return PKV_SUCCESS; PKV_ERROR_INVALID_ARGUMENT (NULL pointer, bad shape / stride / dtype,
 *         overlapping blocks, device mismatch); PKV_ERROR_NOT_SUPPORTED (CUDA caches in a build
 *         without CUDA); PKV_ERROR_CUDA (launch failure). Nothing is copied on error.
 * Threading: reentrant; concurrent calls on disjoint blocks are safe.
 */
PKV_API pkv_status pkv_copy_blocks(const pkv_tensor *caches, int32_t num_caches, const pkv_tensor *pairs,
                                   pkv_stream stream);

/**
 * Element-wise conversion dst = convert(src) between two tensors of the same shape (vLLM
 * convert_fp8, and plain casts), with the cache formats' rounding rules:
 *  - f32 / f16 / bf16 -> fp8_e4m3 / fp8_e5m2: sat_finite_rne(x / scale), bit-identical to an FP8
 *    cache write (pkv_write_kv);
 *  - fp8 -> f32 / f16 / bf16: float(q) * scale rounded to nearest even, as an FP8 gather;
 *  - f32 / f16 / bf16 -> f32 / f16 / bf16: round to nearest even (scale not used);
 *  - equal dtypes: the bits are copied (scale not used). fp8_e4m3 <-> fp8_e5m2 is refused.
 * Packed caches held as uint8 are passed with the fp8 dtype they store.
 *
 * @param[out] dst  0 to 6 dimensions, f32 / f16 / bf16 / fp8, any non-negative strides, data
 *                  aligned to the element size. dst may be src itself (same data, strides and
 *                  element size); any other overlap gives an unspecified result.
 * @param[in] src   the shape of dst, same rules.
 * @param[in] scale one float32 on the tensors' device (read at run time), NULL = 1.0.
 * @param stream    CUDA stream for CUDA tensors; host tensors are converted synchronously.
 * @return PKV_SUCCESS; PKV_ERROR_INVALID_ARGUMENT (NULL tensor, shape / stride / dtype / device
 *         mismatch, misaligned data); PKV_ERROR_NOT_SUPPORTED (e4m3 <-> e5m2, CUDA tensors in a
 *         build without CUDA); PKV_ERROR_CUDA. Zero elements enqueue nothing.
 * Threading: reentrant.
 */
PKV_API pkv_status pkv_convert(const pkv_tensor *dst, const pkv_tensor *src, const float *scale, pkv_stream stream);

/* ================================================================ handles (pool, tables, slots)
 *
 * A pkv_pool owns the cache memory of a schema of layers on one device, in ONE allocation laid
 * out block-major: block b holds every layer's K and V for its block_size tokens
 * ([num_blocks][layer][K, V][layer layout]), so the blocks of all layers move together as one
 * contiguous run of bytes_per_block bytes. Each layer is exposed as a pkv_cache_view usable with
 * every op above. The pool also keeps the host-side block allocator (free list, reference
 * counts) and an optional pinned host tier of blocks with the same layout, for offload.
 *
 * Handles are opaque, used through pointers; destroy(NULL) is a no-op. A block table or slots
 * object borrows its pool: destroying a pool with live children returns PKV_ERROR_BUSY.
 * Threading: one handle is used by one thread at a time (external synchronization); distinct
 * handles may be used concurrently, children of one pool included (the pool's allocator is
 * internally locked). Functions marked "Thread-safe" only read immutable state.
 */
typedef struct pkv_pool pkv_pool;
typedef struct pkv_block_table pkv_block_table;
typedef struct pkv_slots pkv_slots;

/** Head layout of a pool layer inside a block. */
typedef enum pkv_head_layout {
    PKV_HEAD_LAYOUT_NHD = 0, /**< [block_size, num_heads, head_size] */
    PKV_HEAD_LAYOUT_HND = 1, /**< [num_heads, block_size, head_size] */
    PKV_HEAD_LAYOUT_FORCE32 = 0x7FFFFFFF
} pkv_head_layout;

/** Where a block lives. */
typedef enum pkv_tier {
    PKV_TIER_DEVICE = 0, /**< the pool's device (GPU memory, or host memory for a CPU pool) */
    PKV_TIER_HOST = 1,   /**< the pinned host tier (num_host_blocks) */
    PKV_TIER_FORCE32 = 0x7FFFFFFF
} pkv_tier;

/** Layer flags. */
#define PKV_LAYER_K_ONLY 0x1u /**< no V (MLA latent cache) */

/** One layer of a pool's schema. */
typedef struct pkv_layer_spec {
    size_t struct_size;         /**< sizeof(pkv_layer_spec) */
    uint32_t flags;             /**< PKV_LAYER_* */
    pkv_cache_format format;
    pkv_head_layout layout;
    pkv_scale_mode scale_mode;  /**< FP8 formats: per tensor or per head (scales start at 1.0) */
    int64_t num_heads;
    int64_t head_size_k;
    int64_t head_size_v;        /**< 0 = head_size_k; must be 0 with PKV_LAYER_K_ONLY */
} pkv_layer_spec;

#define PKV_LAYER_SPEC_INIT {sizeof(pkv_layer_spec), 0, PKV_CACHE_FORMAT_UNSET, PKV_HEAD_LAYOUT_NHD, \
                             PKV_SCALE_PER_TENSOR, 0, 0, 0}

typedef struct pkv_pool_params {
    size_t struct_size;            /**< sizeof(pkv_pool_params) */
    uint32_t flags;                /**< reserved, must be 0 */
    pkv_device device;             /**< CPU or CUDA (id); type 0 (zeroed params) = CPU */
    int64_t block_size;            /**< tokens per block, > 0 */
    int64_t num_layers;            /**< > 0 */
    const pkv_layer_spec *layers;  /**< num_layers specs (copied at creation), all with the same
                                        struct_size, read at that stride */
    int64_t num_blocks;            /**< device-tier blocks (< 2^31); 0 = as many as memory_bytes
                                        holds (an error if that is 0 or >= 2^31) */
    size_t memory_bytes;           /**< byte budget used when num_blocks is 0 */
    int64_t num_host_blocks;       /**< pinned host tier blocks; 0 = no host tier */
} pkv_pool_params;

#define PKV_POOL_PARAMS_INIT {sizeof(pkv_pool_params), 0, {PKV_DEVICE_CPU, 0}, 0, 0, NULL, 0, 0, 0}

/** Zero *spec / *params and set struct_size (FFI callers). Thread-safe. */
PKV_API pkv_status pkv_layer_spec_init(pkv_layer_spec *spec, size_t struct_size);
PKV_API pkv_status pkv_pool_params_init(pkv_pool_params *params, size_t struct_size);

/**
 * Create a pool: one allocation of num_blocks * bytes_per_block on the device (contents
 * undefined), the scales of FP8 layers set to 1.0, and the host tier if asked for. For a CUDA
 * pool the device is made current for the allocations and restored after.
 * @param[out] out   the new pool; NULL on failure.
 * @return PKV_ERROR_INVALID_ARGUMENT (bad params; message names the field and layer),
 *         PKV_ERROR_OUT_OF_DEVICE_MEMORY / PKV_ERROR_OUT_OF_HOST_MEMORY, PKV_ERROR_NOT_SUPPORTED
 *         (CUDA pool in a build without CUDA), PKV_ERROR_STRUCT_SIZE.
 * Not enqueue-only: allocates and synchronizes.
 */
PKV_API pkv_status pkv_pool_create(pkv_pool **out, const pkv_pool_params *params);
/** Destroy a pool. NULL is a no-op. PKV_ERROR_BUSY (nothing destroyed) while block tables or
 *  slots objects of the pool are alive. */
PKV_API pkv_status pkv_pool_destroy(pkv_pool *pool);

/** Layer `layer` of the pool as a cache view (tier DEVICE or HOST; HOST views are CPU views
 *  of the pinned tier). PKV_ERROR_INVALID_ARGUMENT for a bad layer, PKV_ERROR_INVALID_STATE for
 *  HOST without a host tier (likewise for every call naming the HOST tier). Thread-safe. */
PKV_API pkv_status pkv_pool_layer_view(pkv_cache_view *out, const pkv_pool *pool, int64_t layer, pkv_tier tier);

typedef struct pkv_pool_stats {
    size_t struct_size;         /**< in: sizeof(pkv_pool_stats) */
    int64_t block_size;
    int64_t num_layers;
    int64_t total_blocks, free_blocks;           /**< device tier */
    int64_t total_host_blocks, free_host_blocks; /**< host tier */
    int64_t bytes_per_block;    /**< all layers, K and V, padding included */
} pkv_pool_stats;

/** Snapshot of the allocator's counters. Set out->struct_size first. Thread-safe with respect
 *  to allocator calls on other threads (the counters are read under the allocator's lock). */
PKV_API pkv_status pkv_pool_get_stats(pkv_pool_stats *out, const pkv_pool *pool);
/** Bytes one token occupies in layer `layer` (K and V, scales excluded). Thread-safe. */
PKV_API pkv_status pkv_pool_bytes_per_token(int64_t *out, const pkv_pool *pool, int64_t layer);

/**
 * Set a layer's FP8 scales (1 float each, or num_heads with PKV_SCALE_PER_HEAD) from host
 * memory; enqueued on `stream` for a CUDA pool (the host arrays may be reused on return).
 * PKV_ERROR_INVALID_ARGUMENT for a non-FP8 layer, a scale that is not finite and positive, or
 * v_scales not NULL for a K-only layer.
 */
PKV_API pkv_status pkv_pool_set_scales(pkv_pool *pool, int64_t layer, const float *k_scales,
                                       const float *v_scales, pkv_stream stream);

/* ---- block allocator: O(1) per block, reference counted. Thread-safe (internally locked). */

/** Allocate n blocks of a tier (reference count 1) into out_ids[n]. PKV_ERROR_OUT_OF_BLOCKS
 *  when fewer than n are free: nothing is allocated. */
PKV_API pkv_status pkv_pool_alloc_blocks(int32_t *out_ids, pkv_pool *pool, pkv_tier tier, int64_t n);
/** Add one reference to each of n blocks. */
PKV_API pkv_status pkv_pool_retain_blocks(pkv_pool *pool, pkv_tier tier, const int32_t *ids, int64_t n);
/** Drop one reference from each of n blocks; a block is free again at zero. Ids that are not
 *  allocated: PKV_ERROR_INVALID_ARGUMENT and nothing changes. */
PKV_API pkv_status pkv_pool_release_blocks(pkv_pool *pool, pkv_tier tier, const int32_t *ids, int64_t n);
/** Current reference count of a block (0 = free). */
PKV_API pkv_status pkv_pool_block_refcount(int32_t *out, const pkv_pool *pool, pkv_tier tier, int32_t id);

/* ---- block moves (all layers of a block at once) ---- */

/**
 * Copy blocks inside the device tier, every layer in ONE launch (copy-on-write).
 * @param pairs [P, 2] int32 or int64 (src, dst) block ids, contiguous, on the pool's device
 *              (read at run time: graph capturable). Ids outside [0, num_blocks) and pairs with
 *              src == dst are skipped. Pairs run in parallel: a block that is both a source
 *              and a destination gives an unspecified result (as in vLLM).
 */
PKV_API pkv_status pkv_pool_copy_blocks(pkv_pool *pool, const pkv_tensor *pairs, pkv_stream stream);

/**
 * Move whole blocks between tiers or within the device tier, batched: dst_tier block
 * dst_ids[i] receives src_tier block src_ids[i] (all layers). The id arrays are host memory,
 * read before return. For a CUDA pool the copies are enqueued on `stream` (runs of consecutive
 * ids become one cudaMemcpyAsync, never merging runs whose ranges overlap); a CPU pool copies
 * synchronously. Pairs take effect in order (4->5 then 5->6 is the same as one at a time). Allocation and reference
 * counts are the caller's business (offload = alloc host blocks, swap D2H, release device
 * blocks). PKV_ERROR_INVALID_ARGUMENT for an id out of range.
 */
PKV_API pkv_status pkv_pool_swap_blocks(pkv_pool *pool, pkv_tier src_tier, const int32_t *src_ids,
                                        pkv_tier dst_tier, const int32_t *dst_ids, int64_t n,
                                        pkv_stream stream);

/** Order of blocks in a transfer buffer. */
typedef enum pkv_block_order {
    PKV_BLOCK_ORDER_BLOCK_MAJOR = 0, /**< [n][bytes_per_block]: a block's layers together */
    PKV_BLOCK_ORDER_LAYER_MAJOR = 1, /**< [layer][n][layer bytes per block] */
    PKV_BLOCK_ORDER_FORCE32 = 0x7FFFFFFF
} pkv_block_order;

/**
 * Gather device-tier blocks (all layers) into one contiguous buffer of n * bytes_per_block
 * bytes (KV transfer, storage), or scatter such a buffer back into blocks.
 * @param block_ids [n] int32 or int64 on the pool's device (read at run time); ids outside the
 *                  pool are skipped (their part of the buffer is left / not read).
 * @param buffer    device memory of the pool's device, or pinned host memory (the kernel
 *                  reads / writes it through the mapping), or host memory for a CPU pool.
 * One launch for a CUDA pool; graph capturable. Any buffer alignment is accepted (narrower
 * accesses when needed). LAYER_MAJOR on a CUDA pool supports up to 448 layers
 * (PKV_ERROR_NOT_SUPPORTED beyond: the layer table travels in the kernel parameters).
 */
PKV_API pkv_status pkv_pool_gather_blocks(void *buffer, pkv_device buffer_device, pkv_block_order order,
                                          const pkv_pool *pool, const pkv_tensor *block_ids, pkv_stream stream);
PKV_API pkv_status pkv_pool_scatter_blocks(pkv_pool *pool, const pkv_tensor *block_ids, const void *buffer,
                                           pkv_device buffer_device, pkv_block_order order, pkv_stream stream);

/* ---- block tables ---- */

typedef struct pkv_block_table_params {
    size_t struct_size;       /**< sizeof(pkv_block_table_params) */
    uint32_t flags;           /**< reserved, must be 0 */
    int64_t max_batch;        /**< rows of the device mirror; 0 = 256 */
    int64_t max_blocks;       /**< columns of the device mirror (blocks per request); 0 = 512 */
    int64_t max_tokens;       /**< new tokens per upload (slot mapping length); 0 = 8192 */
} pkv_block_table_params;

#define PKV_BLOCK_TABLE_PARAMS_INIT {sizeof(pkv_block_table_params), 0, 0, 0, 0}
PKV_API pkv_status pkv_block_table_params_init(pkv_block_table_params *params, size_t struct_size);

/** Create a block table over a pool (params NULL = defaults). Allocates the device mirror
 *  (fixed addresses for the table's lifetime) and its pinned staging. Not enqueue-only. */
PKV_API pkv_status pkv_block_table_create(pkv_block_table **out, pkv_pool *pool, const pkv_block_table_params *params);
/** Release every request's blocks and free the table. NULL is a no-op. Synchronizes with its
 *  last upload. */
PKV_API pkv_status pkv_block_table_destroy(pkv_block_table *table);

/** Add an empty request. PKV_ERROR_INVALID_ARGUMENT if the id exists. */
PKV_API pkv_status pkv_block_table_add(pkv_block_table *table, uint64_t request);
/**
 * Append n tokens to a request: allocates blocks as needed and writes the new tokens' slots to
 * out_slots[n] (host, may be NULL). If the request's partial last block is shared (after a
 * fork) it is first replaced by a private copy: the copy (all layers) is enqueued on `stream`
 * before return (copy-on-write). PKV_ERROR_OUT_OF_BLOCKS: nothing changed, nothing enqueued.
 */
PKV_API pkv_status pkv_block_table_append(int64_t *out_slots, pkv_block_table *table, uint64_t request,
                                          int64_t n, pkv_stream stream);
/** New request `child` sharing all of `parent`'s blocks (reference counts up) and tokens. */
PKV_API pkv_status pkv_block_table_fork(pkv_block_table *table, uint64_t parent, uint64_t child);
/** Keep the first n tokens (n <= current), releasing whole blocks past them (rollback). */
PKV_API pkv_status pkv_block_table_truncate(pkv_block_table *table, uint64_t request, int64_t n);
/** Release a request's blocks and forget it. */
PKV_API pkv_status pkv_block_table_remove(pkv_block_table *table, uint64_t request);
/** Token count of a request. */
PKV_API pkv_status pkv_block_table_num_tokens(int64_t *out, const pkv_block_table *table, uint64_t request);
/** A request's block ids: writes min(count, capacity) ids to out and the count to *count. */
PKV_API pkv_status pkv_block_table_blocks(int32_t *out, int64_t capacity, int64_t *count,
                                          const pkv_block_table *table, uint64_t request);

/** The device mirror: tensors at fixed device addresses, valid for the table's lifetime. */
typedef struct pkv_batch_mirror {
    size_t struct_size;         /**< in: sizeof(pkv_batch_mirror) */
    pkv_tensor block_table;     /**< [max_batch, max_blocks] int32; unused entries 0 */
    pkv_tensor slot_mapping;    /**< [max_tokens] int64; unused entries -1 (padding) */
    pkv_tensor seq_lens;        /**< [max_batch] int32 tokens per request after the step; unused 0 */
    pkv_tensor query_start_loc; /**< [max_batch + 1] int32 prefix sums of new tokens; unused = total */
    int64_t batch;              /**< rows filled by the last upload */
    int64_t num_tokens;         /**< slots filled by the last upload */
} pkv_batch_mirror;

/**
 * Fill the device mirror for a batch: row b is requests[b] with its blocks, seq_lens[b] its
 * token count, and its last new_tokens[b] tokens are the step's new tokens (slot mapping and
 * query_start_loc). Built in pinned staging and copied with one cudaMemcpyAsync on `stream`
 * (CPU pool: written directly). Waits (host) only for this table's previous upload copy, so
 * staging is never overwritten in flight. new_tokens[b] <= the request's token count.
 * PKV_ERROR_INVALID_ARGUMENT when the batch, a request's blocks or the tokens exceed the
 * mirror's capacity, or a request is unknown.
 */
PKV_API pkv_status pkv_block_table_upload(pkv_block_table *table, const uint64_t *requests,
                                          const int64_t *new_tokens, int64_t batch, pkv_stream stream);
/** Describe the mirror (addresses never change; batch / num_tokens of the last upload). */
PKV_API pkv_status pkv_block_table_mirror(pkv_batch_mirror *out, const pkv_block_table *table);

/* ---- request slots: ids in [0, max_requests) indexing per-request state ---- */

/** Create a slots object over a pool's device. Not enqueue-only. */
PKV_API pkv_status pkv_slots_create(pkv_slots **out, pkv_pool *pool, int32_t max_requests);
/** Free it. NULL is a no-op. */
PKV_API pkv_status pkv_slots_destroy(pkv_slots *slots);
/**
 * Register a per-request state region on the pool's device: slot s owns bytes
 * [base + s*slot_stride, base + s*slot_stride + bytes_per_slot), reset to the 32-bit pattern
 * `fill` on acquire. bytes_per_slot and slot_stride are multiples of 4, slot_stride >=
 * bytes_per_slot (unless max_requests is 1); at most 16 regions. A region registered later
 * is reset by later acquires only.
 */
PKV_API pkv_status pkv_slots_register_region(pkv_slots *slots, void *base, int64_t bytes_per_slot,
                                             int64_t slot_stride, uint32_t fill);
/** Take the lowest free slot id and reset its regions with one kernel on `stream`.
 *  PKV_ERROR_OUT_OF_BLOCKS when all max_requests slots are taken (nothing changes). */
PKV_API pkv_status pkv_slots_acquire(int32_t *out_slot, pkv_slots *slots, pkv_stream stream);
/** Give a slot back. PKV_ERROR_INVALID_ARGUMENT if it is not acquired. */
PKV_API pkv_status pkv_slots_release(pkv_slots *slots, int32_t slot);

/* ================================================================ device-side metadata builders
 * CUDA-graph capturable (no host sync, no allocation); also on CPU tensors: the output's device
 * decides, and every input must be on it. The output length T is out_slot_mapping->shape[0]
 * (any positive stride); tokens past the batch's total get -1 (padding), and so do negative
 * positions, negative block / page ids, pages past the end of `indices` and slots too large
 * for an int32 output. block_size / page_size in [1, 2^31).
 */

/**
 * Slot mapping of a step's new tokens from a 2-D block table. Token i belongs to request b with
 * query_start_loc[b] <= i < query_start_loc[b+1]; its position is
 * seq_lens[b] - (query_start_loc[b+1] - query_start_loc[b]) + (i - query_start_loc[b]), and its
 * slot block_table[b][pos / block_size] * block_size + pos % block_size.
 * @param out_slot_mapping [T] int32 or int64. block_table [B, max_blocks] int32 (last stride 1),
 *        seq_lens [B] int32, query_start_loc [B + 1] int32 (contiguous). Positions outside the
 *        table give -1.
 */
PKV_API pkv_status pkv_build_slot_mapping(const pkv_tensor *out_slot_mapping, const pkv_tensor *block_table,
                                          const pkv_tensor *seq_lens, const pkv_tensor *query_start_loc,
                                          int64_t block_size, pkv_stream stream);

/**
 * Slot mapping from a FlashInfer-style CSR page table: request b owns pages
 * indices[indptr[b] .. indptr[b+1]), its last page holding last_page_len[b] tokens; its new
 * tokens are the last append_indptr[b+1] - append_indptr[b] positions. (The batch_indices /
 * positions step, done on device.) All index tensors int32, contiguous.
 */
PKV_API pkv_status pkv_build_slot_mapping_csr(const pkv_tensor *out_slot_mapping, const pkv_tensor *indptr,
                                              const pkv_tensor *indices, const pkv_tensor *last_page_len,
                                              const pkv_tensor *append_indptr, int64_t page_size,
                                              pkv_stream stream);

#ifdef __cplusplus
} /* extern "C" */
#endif

#endif /* PAGEDKV_H */
