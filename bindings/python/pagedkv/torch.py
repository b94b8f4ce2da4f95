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

Each is declared as mutating the caches it writes (``Tensor(a!)`` in its schema, what
``torch.library.custom_op(..., mutates_args=...)`` generates) and has a fake (meta)
implementation, so ``torch.compile(fullgraph=True)`` traces through it without a graph break
(the cache update is functionalized and re-inplaced by Inductor) and
``torch.library.opcheck`` passes. Arguments and semantics are those of :mod:`pagedkv.vllm`;
the ops run on the current CUDA stream. In eager code, calling :mod:`pagedkv.vllm` directly
skips the dispatcher (it routes here by itself while compiling).
"""
from typing import Any, List, Optional

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

_NS = "pagedkv"

# Schemas: `Tensor(a!)` marks the tensors an op writes in place (what custom_op's mutates_args
# generates). The ops are registered with torch.library.Library.define + impl rather than
# torch.library.custom_op: the same schema, fake and functionalization, but about a third of the
# dispatch cost per call (custom_op routes every call through a Python autograd wrapper).
_SCHEMAS = {
    "reshape_and_cache_flash": "(Tensor key, Tensor value, Tensor(a!) key_cache, Tensor(b!) value_cache, "
                               "Tensor slot_mapping, str kv_cache_dtype, Tensor k_scale, Tensor v_scale) -> ()",
    "reshape_and_cache": "(Tensor key, Tensor value, Tensor(a!) key_cache, Tensor(b!) value_cache, "
                         "Tensor slot_mapping, str kv_cache_dtype, Tensor k_scale, Tensor v_scale) -> ()",
    "concat_and_cache_mla": "(Tensor kv_c, Tensor k_pe, Tensor(a!) kv_cache, Tensor slot_mapping, "
                            "str kv_cache_dtype, Tensor scale) -> ()",
    "gather_and_maybe_dequant_cache": "(Tensor src_cache, Tensor(a!) dst, Tensor block_table, Tensor cu_seq_lens, "
                                      "Tensor? token_to_seq, int num_tokens, str kv_cache_dtype, Tensor? scale, "
                                      "Tensor? seq_starts=None) -> ()",
    "gather_kv": "(Tensor(a!) out_key, Tensor(b!) out_value, Tensor key_cache, Tensor value_cache, "
                 "Tensor block_table, Tensor cu_seq_lens, Tensor? seq_starts, str kv_cache_dtype, Tensor? k_scale, "
                 "Tensor? v_scale) -> ()",
    "copy_blocks": "(Tensor(a!)[] key_caches, Tensor(b!)[] value_caches, Tensor block_mapping) -> ()",
    "copy_blocks_mla": "(Tensor(a!)[] kv_caches, Tensor block_mapping) -> ()",
    "swap_blocks": "(Tensor src, Tensor(a!) dst, int block_size_in_bytes, Tensor block_mapping) -> ()",
    "convert_fp8": "(Tensor(a!) output, Tensor input, float scale, str kv_dtype) -> ()",
}


def _gather_kv(out_key: Tensor, out_value: Tensor, key_cache: Tensor, value_cache: Tensor, block_table: Tensor,
               cu_seq_lens: Tensor, seq_starts: Optional[Tensor], kv_cache_dtype: str, k_scale: Optional[Tensor],
               v_scale: Optional[Tensor]) -> None:
    fmt = _v._format(kv_cache_dtype, "gather_kv")
    ks, vs, hk, hv, inline = _v._flash_args(fmt, k_scale, v_scale, out_key, out_value)
    _C.gather_cache(out_key, out_value, key_cache, value_cache, block_table, cu_seq_lens, seq_starts, fmt, 0, ks, vs,
                    hk, hv, inline, 0)


def _copy_blocks(key_caches: List[Tensor], value_caches: List[Tensor], block_mapping: Tensor) -> None:
    _v.copy_blocks(key_caches, value_caches, block_mapping)


_IMPLS = {
    "reshape_and_cache_flash": _v.reshape_and_cache_flash,
    "reshape_and_cache": _v.reshape_and_cache,
    "concat_and_cache_mla": _v.concat_and_cache_mla,
    "gather_and_maybe_dequant_cache": _v.gather_and_maybe_dequant_cache,
    "gather_kv": _gather_kv,
    "copy_blocks": _copy_blocks,
    "copy_blocks_mla": _v.copy_blocks_mla,
    "swap_blocks": _v.swap_blocks,
    "convert_fp8": _v.convert_fp8,
}


def _fake(*args, **kwargs) -> None:
    """Fake (meta) implementation of every op: they return nothing and only write their
    declared mutable arguments, whose shapes do not change."""
    return None


def _register() -> Optional[Any]:
    if hasattr(torch.ops, _NS) and hasattr(getattr(torch.ops, _NS), "reshape_and_cache_flash"):
        return None  # already registered (a re-import): keep the first registration
    lib = torch.library.Library(_NS, "FRAGMENT")
    register_fake = getattr(torch.library, "register_fake", None) or torch.library.impl_abstract
    for name, schema in _SCHEMAS.items():
        lib.define(name + schema)
        # The implementations run eagerly (also for a compiled graph) on real tensors of any device.
        lib.impl(name, _IMPLS[name], "CompositeExplicitAutograd")
        register_fake(f"{_NS}::{name}", _fake, lib=lib)
    return lib


_LIBRARY = _register()  # keeps the registrations alive

#: ``torch.ops.pagedkv``
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
