"""Drop-in replacements for vLLM's cache ops (``vllm._custom_ops``).

Same names, signatures and semantics, so switching is one import::

    # from vllm import _custom_ops as ops
    from pagedkv import vllm as ops

    ops.reshape_and_cache_flash(key, value, key_cache, value_cache, slot_mapping, "fp8", k_scale, v_scale)

What carries over from vLLM: ``kv_cache_dtype`` strings (``"auto"``, ``"float16"``,
``"bfloat16"``, ``"fp8"``, ``"fp8_e4m3"``, ``"fp8_e5m2"``, ``"fp8_ds_mla"`` and the
``"*_per_token_head"`` modes with vLLM's inline scales), ``k_scale`` / ``v_scale`` as float32
device tensors of 1 or ``num_heads`` values read at run time, int64 slot mappings, negative
slots as padding, ``slot_mapping.size(0)`` as the token count (key / value may carry padding
rows), caches written in place on the current PyTorch stream. Differences (all supersets):
int32 slot mappings are accepted too, cache strides are honoured by every op (vLLM's legacy
5-D op assumes contiguous caches), slots past the cache are skipped instead of written out of
bounds, the input and cache dtypes may differ in ``"auto"`` mode (converted, round to nearest
even), and NumPy / CuPy tensors work as well as PyTorch ones.

Under ``torch.compile`` the functions dispatch to the ``torch.ops.pagedkv`` custom ops of
:mod:`pagedkv.torch` (no graph break); in eager mode they call the library directly.
"""
from __future__ import annotations

from typing import Any, List, Optional

from . import _C
from ._enums import CacheFormat, DType, Status
from ._errors import PagedKVError

try:  # vLLM users have torch imported already; pagedkv works without it.
    import torch as _torch

    _is_compiling = getattr(getattr(_torch, "compiler", None), "is_compiling", None) or _torch._dynamo.is_compiling
except Exception:  # pragma: no cover - no (usable) torch
    _torch = None

    def _is_compiling() -> bool:
        return False


__all__ = [
    "reshape_and_cache",
    "reshape_and_cache_flash",
    "concat_and_cache_mla",
    "copy_blocks",
    "copy_blocks_mla",
    "swap_blocks",
    "convert_fp8",
    "gather_and_maybe_dequant_cache",
]

Tensor = Any

_KIND_BSHD, _KIND_LEGACY5D, _KIND_MLA = 0, 1, 2
_AUTO = 0  # CacheFormat unset: the plain format of the cache tensor's dtype

# kv_cache_dtype -> cache format (vLLM's get_fp8_kv_cache_data_type and KVQuantMode names).
_FORMATS = {
    "auto": _AUTO,
    "float16": _AUTO,
    "bfloat16": _AUTO,
    "float32": _AUTO,
    "fp8": int(CacheFormat.FP8_E4M3),
    "fp8_e4m3": int(CacheFormat.FP8_E4M3),
    "fp8_e5m2": int(CacheFormat.FP8_E5M2),
    "fp8_ds_mla": int(CacheFormat.FP8_E4M3),  # per-tensor e4m3 outside the MLA ops
    "int8_per_token_head": int(CacheFormat.INT8_PER_TOKEN_HEAD),
    "fp8_per_token_head": int(CacheFormat.FP8_PER_TOKEN_HEAD),
    "int4_per_token_head": int(CacheFormat.INT4_PER_TOKEN_HEAD),
    "int2_per_token_head": int(CacheFormat.INT2_PER_TOKEN_HEAD),
}
_FP8_FORMATS = (int(CacheFormat.FP8_E4M3), int(CacheFormat.FP8_E5M2))
_PER_TOKEN_HEAD = (6, 7, 8, 9)


def _format(kv_cache_dtype: str, op: str) -> int:
    try:
        return _FORMATS[kv_cache_dtype]
    except (KeyError, TypeError):
        raise PagedKVError(
            Status.INVALID_ARGUMENT,
            f"pagedkv.vllm.{op}: unsupported kv_cache_dtype {kv_cache_dtype!r} "
            f"(supported: {', '.join(sorted(_FORMATS))})",
        ) from None


def _ops() -> Any:
    return _torch.ops.pagedkv  # registered by pagedkv.torch (imported at the end of this module)


# ---------------------------------------------------------------------------------- writes


def _flash_args(fmt: int, k_scale: Any, v_scale: Any, key: Tensor, value: Tensor) -> tuple:
    """(k_scale, v_scale, head_size_k, head_size_v, inline_scales) for the view of 4-D
    [NB, BS, H, D] caches: scales only for FP8; the per-token-head formats take their head sizes
    from the rows (`key` / `value`) and find their inline scales."""
    if fmt in _PER_TOKEN_HEAD:
        return None, None, int(key.shape[-1]), int(value.shape[-1]), -1
    if fmt in _FP8_FORMATS:
        return k_scale, v_scale, 0, 0, 0
    return None, None, 0, 0, 0


def reshape_and_cache_flash(
    key: Tensor,
    value: Tensor,
    key_cache: Tensor,
    value_cache: Tensor,
    slot_mapping: Tensor,
    kv_cache_dtype: str,
    k_scale: Tensor,
    v_scale: Tensor,
) -> None:
    """Write ``key`` / ``value`` ``[T_pad, H, D]`` into ``key_cache`` / ``value_cache`` (logical
    ``[num_blocks, block_size, H, D]``, any strides: NHD, HND views, ``kv_cache[:, 0]`` of
    interleaved allocations) at ``slot_mapping`` ``[T]`` (negative = padding), in place.

    ``kv_cache_dtype``: ``"auto"`` / ``"float16"`` / ``"bfloat16"`` (the cache's own dtype),
    ``"fp8"`` / ``"fp8_e4m3"`` / ``"fp8_e5m2"`` (uint8 or torch fp8 caches, stored
    ``x / k_scale``; scales of 1 or H values), or ``"int8_per_token_head"``,
    ``"fp8_per_token_head"``, ``"int4_per_token_head"``, ``"int2_per_token_head"`` (uint8 caches
    with vLLM's inline float32 scale after each head row; the scales are not used).
    """
    if _is_compiling():
        return _ops().reshape_and_cache_flash(key, value, key_cache, value_cache, slot_mapping, kv_cache_dtype,
                                              k_scale, v_scale)
    fmt = _format(kv_cache_dtype, "reshape_and_cache_flash")
    ks, vs, hk, hv, inline = _flash_args(fmt, k_scale, v_scale, key, value)
    _C.write_cache(key, value, key_cache, value_cache, slot_mapping, fmt, _KIND_BSHD, ks, vs, hk, hv, inline, 0)


def reshape_and_cache(
    key: Tensor,
    value: Tensor,
    key_cache: Tensor,
    value_cache: Tensor,
    slot_mapping: Tensor,
    kv_cache_dtype: str,
    k_scale: Tensor,
    v_scale: Tensor,
) -> None:
    """Write into vLLM's legacy paged-attention layout: ``key_cache`` ``[NB, H, D/x, BS, x]``
    and ``value_cache`` ``[NB, H, D, BS]`` (``x`` = 16 bytes of cache elements). Plain and
    per-tensor FP8 ``kv_cache_dtype`` values; otherwise as :func:`reshape_and_cache_flash`."""
    if _is_compiling():
        return _ops().reshape_and_cache(key, value, key_cache, value_cache, slot_mapping, kv_cache_dtype,
                                        k_scale, v_scale)
    fmt = _format(kv_cache_dtype, "reshape_and_cache")
    fp8 = fmt in _FP8_FORMATS
    _C.write_cache(key, value, key_cache, value_cache, slot_mapping, fmt, _KIND_LEGACY5D, k_scale if fp8 else None,
                   v_scale if fp8 else None, 0, 0, 0, 0)


def _mla_format(kv_cache_dtype: str, k_pe: Tensor, op: str) -> "tuple[int, int]":
    if kv_cache_dtype == "fp8_ds_mla":
        flags = _C.CACHE_VIEW_ROPE_F16 if DType(_C.describe(k_pe)["dtype"]) == DType.F16 else 0
        return int(CacheFormat.FP8_DS_MLA), flags
    fmt = _format(kv_cache_dtype, op)
    if fmt in _PER_TOKEN_HEAD:
        raise PagedKVError(Status.NOT_SUPPORTED, f"pagedkv.vllm.{op}: kv_cache_dtype {kv_cache_dtype!r} is not an MLA format")
    return fmt, 0


def concat_and_cache_mla(
    kv_c: Tensor,
    k_pe: Tensor,
    kv_cache: Tensor,
    slot_mapping: Tensor,
    kv_cache_dtype: str,
    scale: Tensor,
) -> None:
    """Write MLA entries ``[kv_c | k_pe]`` (``kv_c`` ``[T, R]``, ``k_pe`` ``[T, P]``) into
    ``kv_cache`` ``[NB, BS, R + P]`` (any block / slot strides). ``"fp8"`` stores
    ``x / scale``; ``"fp8_ds_mla"`` writes DeepSeek's 656-byte entries (``kv_cache`` uint8
    ``[NB, BS, 656]``; ``scale`` unused)."""
    if _is_compiling():
        return _ops().concat_and_cache_mla(kv_c, k_pe, kv_cache, slot_mapping, kv_cache_dtype, scale)
    fmt, flags = _mla_format(kv_cache_dtype, k_pe, "concat_and_cache_mla")
    _C.write_cache(kv_c, k_pe, kv_cache, None, slot_mapping, fmt, _KIND_MLA, scale if fmt in _FP8_FORMATS else None,
                   None, 0, 0, 0, flags)


# ---------------------------------------------------------------------------------- gather


def gather_and_maybe_dequant_cache(
    src_cache: Tensor,
    dst: Tensor,
    block_table: Tensor,
    cu_seq_lens: Tensor,
    token_to_seq: Any,
    num_tokens: Any,
    kv_cache_dtype: Any = "auto",
    scale: Any = None,
    seq_starts: Optional[Tensor] = None,
) -> None:
    """Gather paged MLA entries ``src_cache`` ``[NB, BS, E]`` into ``dst`` ``[T, E]``:
    output row i of request b (``cu_seq_lens[b] <= i < cu_seq_lens[b+1]``) reads position
    ``i - cu_seq_lens[b] + seq_starts[b]`` through ``block_table`` ``[B, max_blocks]`` int32;
    fp8 entries are dequantized ``float(q) * scale``. Rows ``[0, num_tokens)`` are written.

    Both vLLM signatures are accepted: ``(..., cu_seq_lens, token_to_seq, num_tokens,
    kv_cache_dtype, scale, seq_starts=None)`` (current; ``token_to_seq`` is implied by
    ``cu_seq_lens`` and not read) and ``(..., cu_seq_lens, batch_size, kv_cache_dtype, scale,
    seq_starts=None)`` (older). ``"fp8_ds_mla"`` gathers 656-byte entries to 576 values.
    """
    if isinstance(token_to_seq, int) or isinstance(num_tokens, str):
        # older form: (src_cache, dst, block_table, cu_seq_lens, batch_size, kv_cache_dtype, scale, seq_starts)
        batch_size = int(token_to_seq)
        kv_cache_dtype, scale, seq_starts = num_tokens, kv_cache_dtype, scale
        block_table = block_table[:batch_size]
        cu_seq_lens = cu_seq_lens[: batch_size + 1]
        if seq_starts is not None:
            seq_starts = seq_starts[:batch_size]
        token_to_seq, num_tokens = None, -1
    if _is_compiling():
        return _ops().gather_and_maybe_dequant_cache(src_cache, dst, block_table, cu_seq_lens, token_to_seq,
                                                     int(num_tokens), kv_cache_dtype, scale, seq_starts)
    out = dst if num_tokens is None or int(num_tokens) < 0 else dst[: int(num_tokens)]
    if kv_cache_dtype == "fp8_ds_mla":
        fmt, flags = int(CacheFormat.FP8_DS_MLA), 0
        if DType(_C.describe(dst)["dtype"]) == DType.F16:
            flags = _C.CACHE_VIEW_ROPE_F16
    else:
        fmt, flags = _format(kv_cache_dtype, "gather_and_maybe_dequant_cache"), 0
    _C.gather_cache(out, None, src_cache, None, block_table, cu_seq_lens, seq_starts, fmt, _KIND_MLA,
                    scale if fmt in _FP8_FORMATS else None, None, 0, 0, 0, flags)


# ---------------------------------------------------------------------------------- blocks


def copy_blocks(key_caches: List[Tensor], value_caches: List[Tensor], block_mapping: Tensor) -> None:
    """Copy blocks in every layer's key and value cache in one launch: block
    ``block_mapping[i, 1]`` receives block ``block_mapping[i, 0]`` (``[P, 2]`` int64 on the
    caches' device, read at run time). Each cache is ``[num_blocks, ...]``, dimension 0 any
    stride, the other dimensions dense."""
    if _is_compiling():
        return _ops().copy_blocks(key_caches, value_caches, block_mapping)
    _C.copy_blocks(list(key_caches) + list(value_caches), block_mapping, None)


def copy_blocks_mla(kv_caches: List[Tensor], block_mapping: Tensor) -> None:
    """:func:`copy_blocks` for MLA (one cache a layer)."""
    if _is_compiling():
        return _ops().copy_blocks_mla(kv_caches, block_mapping)
    _C.copy_blocks(list(kv_caches), block_mapping, None)


def swap_blocks(src: Tensor, dst: Tensor, block_size_in_bytes: Any, block_mapping: Optional[Tensor] = None) -> None:
    """Copy blocks between devices or inside one GPU: for each row ``(s, d)`` of the host
    ``block_mapping`` ``[n, 2]`` int64, ``block_size_in_bytes`` bytes at byte offset
    ``s * block_size_in_bytes`` of ``src`` go to ``d * block_size_in_bytes`` of ``dst`` (one
    async copy each on the current stream; D2H, H2D, D2D). The older signature
    ``swap_blocks(src, dst, block_mapping)`` takes the block size from ``src``'s dimension-0
    stride. Ids are checked against both tensors before anything is copied."""
    if block_mapping is None:  # older vLLM: swap_blocks(src, dst, block_mapping)
        block_mapping = block_size_in_bytes
        if hasattr(src, "element_size"):  # torch (also while tracing)
            block_size_in_bytes = src.stride(0) * src.element_size()
        elif hasattr(src, "strides") and isinstance(src.strides[0], int):  # NumPy / CuPy: bytes
            block_size_in_bytes = src.strides[0]
        else:
            d = _C.describe(src)
            block_size_in_bytes = d["strides"][0] * DType(d["dtype"]).itemsize
    if _is_compiling():
        return _ops().swap_blocks(src, dst, int(block_size_in_bytes), block_mapping)
    _C.swap_blocks(src, dst, int(block_size_in_bytes), block_mapping, None)


def convert_fp8(output: Tensor, input: Tensor, scale: float = 1.0, kv_dtype: str = "fp8") -> None:  # noqa: A002
    """Convert a whole cache element-wise between a float dtype and FP8: a float ``input``
    quantizes into ``output`` (uint8 or torch fp8) as ``sat_finite_rne(x / scale)``; an fp8
    ``input`` dequantizes as ``float(q) * scale``. ``kv_dtype``: ``"fp8"`` / ``"fp8_e4m3"``
    (uint8 tensors hold e4m3), ``"fp8_e5m2"``, or ``"auto"`` (float <-> float casts)."""
    if _is_compiling():
        return _ops().convert_fp8(output, input, float(scale), kv_dtype)
    if kv_dtype in ("fp8", "fp8_e4m3"):
        as_ = int(DType.FP8_E4M3)
    elif kv_dtype == "fp8_e5m2":
        as_ = int(DType.FP8_E5M2)
    elif kv_dtype == "auto":
        as_ = -1
    else:
        raise PagedKVError(Status.INVALID_ARGUMENT, f"pagedkv.vllm.convert_fp8: unsupported kv_dtype {kv_dtype!r}")
    scale_t = None
    if float(scale) != 1.0:
        from ._core import _scale_tensor

        scale_t = _scale_tensor(float(scale), output)
    _C.convert(output, input, scale_t, None, -1, -1, as_)


if _torch is not None:
    import importlib

    importlib.import_module(__package__ + ".torch")  # registers torch.ops.pagedkv.*
