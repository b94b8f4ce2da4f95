/*
 * pagedkv_xla.h — XLA FFI handlers of libpagedkv (the cache write and gather as XLA custom
 * calls, for JAX). Optional part of the library: the symbols exist only when libpagedkv was
 * built with the XLA FFI headers (CMake PKV_ENABLE_XLA; pkv_build_info() then says "xla_ffi=1").
 *
 * Each symbol is an XLA FFI handler, `XLA_FFI_Error *fn(XLA_FFI_CallFrame *)` (xla/ffi/api/
 * c_api.h, API version 0.x, "typed FFI", custom_call_api_version 4). Engines register them with
 * XLA instead of calling them: from JAX,
 *
 *     lib = ctypes.CDLL(pagedkv.library_path())
 *     jax.ffi.register_ffi_target("pagedkv_write_kv", jax.ffi.pycapsule(lib.pkv_xla_write_kv_cpu),
 *                                 platform="cpu")
 *     jax.ffi.register_ffi_target("pagedkv_write_kv", jax.ffi.pycapsule(lib.pkv_xla_write_kv_cuda),
 *                                 platform="CUDA")
 *
 * which the Python module pagedkv.jax does (write_kv / gather_kv wrappers over jax.ffi.ffi_call).
 * The handlers build a pkv_cache_view and pkv_tensors from the XLA buffers and attributes and
 * call the public pkv_write_kv / pkv_gather_kv: the same validation, kernels and bytes as the C
 * API. A failing check or call returns an XLA error (INVALID_ARGUMENT, UNIMPLEMENTED for
 * PKV_ERROR_NOT_SUPPORTED, INTERNAL otherwise) whose message starts with "pagedkv.write_kv: ",
 * "pagedkv.write_mla: " or "pagedkv.gather_kv: " followed by the reason (pkv_last_error_message()
 * for the C API's checks); nothing is written then. A handler never aborts and lets no exception
 * out.
 *
 * Threading: as the C functions they call: reentrant, so XLA may run them from several threads;
 * concurrent writes must target disjoint slots (XLA orders calls on one cache through its
 * aliasing), gathers only read the cache.
 *
 * _cpu handlers: buffers in host memory, the work runs before the handler returns.
 * _cuda handlers: the stream and device ordinal come from XLA's execution context; the work is
 * enqueued on that stream (never synchronized, nothing allocated, no host read of device data),
 * so they are registered as compatible with XLA's command buffers (CUDA graphs). In a build
 * without CUDA they exist too and fail with UNIMPLEMENTED ("built without CUDA").
 *
 * ---- attributes (all int64 scalars, all required) ----
 *   format  pkv_cache_format of the cache (F32 .. INT2_PER_TOKEN_HEAD; not FP8_DS_MLA)
 *   layout  pkv_head_layout: 0 = NHD, caches [NB, BS, H, Dst]; 1 = HND, caches [NB, H, BS, Dst]
 *   extras  PKV_XLA_ARG_* bits: which optional operands follow the fixed ones, in bit order
 *   flags   pkv_cache_view flags (PKV_CACHE_VIEW_ROTATED_DOMAIN for gathers); 0 otherwise
 *
 * Cache buffers: 4-D, dense row-major. Dst is the stored head row in elements of the cache's
 * dtype: D for F32 / F16 / BF16 caches of the same dtype and for FP8 / INT8 / FP8-per-token-head
 * caches (dtype f8e4m3fn, f8e5m2, s8 or u8 as the format's byte), D/2 bytes for INT4, D/4 bytes
 * for INT2 (u8 or s8). The head size D comes from the key / value (write) or the outputs
 * (gather); K and V may have different head sizes.
 *
 * ---- pkv_xla_write_kv_{cpu,cuda} ----
 *   operands: key [T_pad, H, Dk], value [T_pad, H, Dv] (f32 / f16 / bf16), key_cache,
 *             value_cache, slot_mapping [T] (s32 / s64; negative = padding, skipped), then the
 *             extras in bit order.
 *   results:  key_cache, value_cache, then (PKV_XLA_ARG_SCALE_PLANES) k_scale_plane,
 *             v_scale_plane. Every result MUST alias its operand (jax.ffi.ffi_call
 *             input_output_aliases {2: 0, 3: 1} and the planes' operands to results 2, 3): the
 *             handler writes the new tokens into that memory and leaves the rest as it is. A
 *             result that does not alias its operand is refused (INVALID_ARGUMENT).
 * ---- pkv_xla_write_mla_{cpu,cuda} ----
 *   operands: kv_c [T_pad, R], k_pe [T_pad, P] (f32 / f16 / bf16), kv_cache [NB, BS, entry],
 *             slot_mapping [T], then PKV_XLA_ARG_K_SCALE (FP8: f32 [1]). entry = R + P elements
 *             of the cache's format (F32 / F16 / BF16 / FP8_E4M3 / FP8_E5M2), or 656 bytes (u8)
 *             for FP8_DS_MLA (R = 512, P = 64; flags PKV_CACHE_VIEW_ROPE_F16 for f16 inputs).
 *             layout must be 0.
 *   results:  kv_cache, aliasing operand 2.
 * ---- pkv_xla_gather_kv_{cpu,cuda} ----
 *   operands: key_cache, value_cache, block_table [B, max_blocks] s32, cu_seq_lens [B + 1] s32,
 *             then the extras in bit order.
 *   results:  out_key [N, H, Dk], out_value [N, H, Dv] (f32 / f16 / bf16, one dtype). Rows
 *             past cu_seq_lens[B] are not written: pass PKV_XLA_ARG_OUT_INIT operands (aliased
 *             to the results) to give them defined contents.
 */
#ifndef PAGEDKV_XLA_H
#define PAGEDKV_XLA_H

#include "pagedkv.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- extras bits (attribute "extras"): optional operands, appended in this order ---- */
#define PKV_XLA_ARG_SEQ_STARTS     0x01u /**< gather: seq_starts [B] s32 */
#define PKV_XLA_ARG_K_SCALE        0x02u /**< FP8: k_scale f32 [1] or [H] (absent = 1.0); the
                                              MLA write's scale */
#define PKV_XLA_ARG_V_SCALE        0x04u /**< FP8: v_scale f32 [1] or [H], as many as k_scale */
#define PKV_XLA_ARG_SCALE_PLANES   0x08u /**< per-token-head: k_scale_plane, v_scale_plane f32
                                              [NB, BS, H] (HND: [NB, H, BS]); required */
#define PKV_XLA_ARG_ROTATION_SIGNS 0x10u /**< INT4: k_signs f32 [Dk], v_signs f32 [Dv] (absent =
                                              pkv_default_rotation_signs) */
#define PKV_XLA_ARG_OUT_INIT       0x20u /**< gather: out_key, out_value initial contents, aliased
                                              to the results */

/* The handlers. The parameter types are the incomplete structs of xla/ffi/api/c_api.h. */
struct XLA_FFI_Error;
struct XLA_FFI_CallFrame;

PKV_API struct XLA_FFI_Error *pkv_xla_write_kv_cpu(struct XLA_FFI_CallFrame *call_frame);
PKV_API struct XLA_FFI_Error *pkv_xla_write_kv_cuda(struct XLA_FFI_CallFrame *call_frame);
PKV_API struct XLA_FFI_Error *pkv_xla_write_mla_cpu(struct XLA_FFI_CallFrame *call_frame);
PKV_API struct XLA_FFI_Error *pkv_xla_write_mla_cuda(struct XLA_FFI_CallFrame *call_frame);
PKV_API struct XLA_FFI_Error *pkv_xla_gather_kv_cpu(struct XLA_FFI_CallFrame *call_frame);
PKV_API struct XLA_FFI_Error *pkv_xla_gather_kv_cuda(struct XLA_FFI_CallFrame *call_frame);

#ifdef __cplusplus
} /* extern "C" */
#endif

#endif /* PAGEDKV_XLA_H */
