"""pagedkv's cache ops as ``torch.library`` custom ops: ``torch.ops.pagedkv.*``.

Importing this module (done by :mod:`pagedkv.vllm` whenever PyTorch is installed) registers:

====================================  ==================================================
op                                    mutates
====================================  ==================================================
``reshape_and_cache_flash``           ``key_cache``, ``value_cache``
``reshape_and_cache``                 ``key_cache``, ``value_cache`` (legacy 5-D layout)
``concat_and_cache_mla``              ``kv_cache``
``gather_and_maybe_dequant_cache``    ``dst``
``gather_kv``                         ``out_key``, ``out_value`` (4-D K/V caches)
``copy_blocks``                       ``key_caches``, ``value_caches`` (lists)
``copy_blocks_mla``                   ``kv_caches``
``swap_blocks``                       ``dst``
``convert_fp8``                       ``output``
====================================  ==================================================

Each is declared with ``mutates_args`` for the caches it writes and has a fake (meta)
implementation, so ``torch.compile(fullgraph=True)`` traces through it without a graph break
(the cache update is functionalized and re-inplaced by Inductor) and
``torch.library.opcheck`` passes. Arguments and semantics are those of :mod:`pagedkv.vllm`;
the ops run on the current CUDA stream. In eager code, calling :mod:`pagedkv.vllm` directly
skips the dispatcher (it routes here by itself while compiling).
"""
# No `from __future__ import annotations`: torch.library infers the schema from the annotations.
from typing import List, Optional

import torch
from torch import Tensor

from . import _C
from . import vllm as _v

__all__ = [
    "ops",
    "reshape_and_cache_flash",
    "reshape_and_cache",
    "concat_and_cache_mla",
    "gather_and_maybe_dequant_cache",
    "gather_kv",
    "copy_blocks",
    "copy_blocks_mla",
    "swap_blocks",
    "convert_fp8",
]

_LIB = "pagedkv"


def _already_registered(name: str) -> bool:
    return hasattr(torch.ops, _LIB) and hasattr(getattr(torch.ops, _LIB), name)


if _already_registered("reshape_and_cache_flash"):  # re-import (e.g. importlib.reload): keep the first registration
    ops = torch.ops.pagedkv
    reshape_and_cache_flash = ops.reshape_and_cache_flash
    reshape_and_cache = ops.reshape_and_cache
    concat_and_cache_mla = ops.concat_and_cache_mla
    gather_and_maybe_dequant_cache = ops.gather_and_maybe_dequant_cache
    gather_kv = ops.gather_kv
    copy_blocks = ops.copy_blocks
    copy_blocks_mla = ops.copy_blocks_mla
    swap_blocks = ops.swap_blocks
    convert_fp8 = ops.convert_fp8
else:

    @torch.library.custom_op("pagedkv::reshape_and_cache_flash", mutates_args=("key_cache", "value_cache"))
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
        """vLLM ``reshape_and_cache_flash`` (see :func:`pagedkv.vllm.reshape_and_cache_flash`)."""
        _v.reshape_and_cache_flash(key, value, key_cache, value_cache, slot_mapping, kv_cache_dtype, k_scale, v_scale)

    @reshape_and_cache_flash.register_fake
    def _(key, value, key_cache, value_cache, slot_mapping, kv_cache_dtype, k_scale, v_scale) -> None:
        return None

    @torch.library.custom_op("pagedkv::reshape_and_cache", mutates_args=("key_cache", "value_cache"))
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
        """vLLM ``reshape_and_cache`` (legacy 5-D layout)."""
        _v.reshape_and_cache(key, value, key_cache, value_cache, slot_mapping, kv_cache_dtype, k_scale, v_scale)

    @reshape_and_cache.register_fake
    def _(key, value, key_cache, value_cache, slot_mapping, kv_cache_dtype, k_scale, v_scale) -> None:
        return None

    @torch.library.custom_op("pagedkv::concat_and_cache_mla", mutates_args=("kv_cache",))
    def concat_and_cache_mla(
        kv_c: Tensor, k_pe: Tensor, kv_cache: Tensor, slot_mapping: Tensor, kv_cache_dtype: str, scale: Tensor
    ) -> None:
        """vLLM ``concat_and_cache_mla`` (``"fp8_ds_mla"`` included)."""
        _v.concat_and_cache_mla(kv_c, k_pe, kv_cache, slot_mapping, kv_cache_dtype, scale)

    @concat_and_cache_mla.register_fake
    def _(kv_c, k_pe, kv_cache, slot_mapping, kv_cache_dtype, scale) -> None:
        return None

    @torch.library.custom_op("pagedkv::gather_and_maybe_dequant_cache", mutates_args=("dst",))
    def gather_and_maybe_dequant_cache(
        src_cache: Tensor,
        dst: Tensor,
        block_table: Tensor,
        cu_seq_lens: Tensor,
        token_to_seq: Optional[Tensor],
        num_tokens: int,
        kv_cache_dtype: str,
        scale: Optional[Tensor],
        seq_starts: Optional[Tensor] = None,
    ) -> None:
        """vLLM ``gather_and_maybe_dequant_cache`` (``num_tokens`` < 0: every row of ``dst``)."""
        _v.gather_and_maybe_dequant_cache(src_cache, dst, block_table, cu_seq_lens, token_to_seq, num_tokens,
                                          kv_cache_dtype, scale, seq_starts)

    @gather_and_maybe_dequant_cache.register_fake
    def _(src_cache, dst, block_table, cu_seq_lens, token_to_seq, num_tokens, kv_cache_dtype, scale,
          seq_starts=None) -> None:
        return None

    @torch.library.custom_op("pagedkv::gather_kv", mutates_args=("out_key", "out_value"))
    def gather_kv(
        out_key: Tensor,
        out_value: Tensor,
        key_cache: Tensor,
        value_cache: Tensor,
        block_table: Tensor,
        cu_seq_lens: Tensor,
        seq_starts: Optional[Tensor],
        kv_cache_dtype: str,
        k_scale: Optional[Tensor],
        v_scale: Optional[Tensor],
    ) -> None:
        """Gather (and dequantize) 4-D ``[NB, BS, H, D]`` K/V caches (any strides) into dense
        ``[N, H, D]`` rows: :func:`pagedkv.gather_kv` over the caches of
        :func:`pagedkv.vllm.reshape_and_cache_flash`, with the same ``kv_cache_dtype`` strings."""
        fmt = _v._format(kv_cache_dtype, "gather_kv")
        view = _v._flash_view(key_cache, value_cache, fmt, k_scale, v_scale, out_key, out_value)
        _C.gather_kv(out_key, out_value, view, block_table, cu_seq_lens, seq_starts, None, None)

    @gather_kv.register_fake
    def _(out_key, out_value, key_cache, value_cache, block_table, cu_seq_lens, seq_starts, kv_cache_dtype,
          k_scale, v_scale) -> None:
        return None

    @torch.library.custom_op("pagedkv::copy_blocks", mutates_args=("key_caches", "value_caches"))
    def copy_blocks(key_caches: List[Tensor], value_caches: List[Tensor], block_mapping: Tensor) -> None:
        """vLLM ``copy_blocks`` (all layers in one launch)."""
        _v.copy_blocks(key_caches, value_caches, block_mapping)

    @copy_blocks.register_fake
    def _(key_caches, value_caches, block_mapping) -> None:
        return None

    @torch.library.custom_op("pagedkv::copy_blocks_mla", mutates_args=("kv_caches",))
    def copy_blocks_mla(kv_caches: List[Tensor], block_mapping: Tensor) -> None:
        """vLLM ``copy_blocks_mla``."""
        _v.copy_blocks_mla(kv_caches, block_mapping)

    @copy_blocks_mla.register_fake
    def _(kv_caches, block_mapping) -> None:
        return None

    @torch.library.custom_op("pagedkv::swap_blocks", mutates_args=("dst",))
    def swap_blocks(src: Tensor, dst: Tensor, block_size_in_bytes: int, block_mapping: Tensor) -> None:
        """vLLM ``swap_blocks`` (``block_mapping`` on the host)."""
        _v.swap_blocks(src, dst, block_size_in_bytes, block_mapping)

    @swap_blocks.register_fake
    def _(src, dst, block_size_in_bytes, block_mapping) -> None:
        return None

    @torch.library.custom_op("pagedkv::convert_fp8", mutates_args=("output",))
    def convert_fp8(output: Tensor, input: Tensor, scale: float, kv_dtype: str) -> None:  # noqa: A002
        """vLLM ``convert_fp8``."""
        _v.convert_fp8(output, input, scale, kv_dtype)

    @convert_fp8.register_fake
    def _(output, input, scale, kv_dtype) -> None:  # noqa: A002
        return None

    #: ``torch.ops.pagedkv``
    ops = torch.ops.pagedkv
