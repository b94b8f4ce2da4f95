"""pagedkv — the paged KV cache of an LLM inference engine, from Python.

pagedkv writes new keys and values into paged cache blocks (converting or quantizing on the
way), gathers them back to dense rows (dequantizing), and moves blocks, on the CPU or a CUDA
GPU. This package sits on libpagedkv's C API (``include/pagedkv.h``) and takes tensors from
NumPy, PyTorch, CuPy or anything speaking DLPack / ``__cuda_array_interface__`` without
copying: caches are written in place.

Modules:
    pagedkv          cache views, ops, handles (Pool, BlockTable, Slots), enums, errors
    pagedkv.vllm     drop-in replacements for vLLM's cache ops (``_custom_ops``)
    pagedkv.torch    the same ops as ``torch.library`` custom ops (torch.compile friendly)

Quick start::

    import numpy as np, pagedkv
    k_cache = np.zeros((64, 16, 8, 128), np.float32)     # [blocks, block_size, heads, dim]
    v_cache = np.zeros_like(k_cache)
    cache = pagedkv.CacheView.from_tensors(k_cache, v_cache)
    key = np.random.randn(5, 8, 128).astype(np.float32)
    slots = np.array([0, 1, 2, 17, -1])                  # -1 = padding
    pagedkv.write_kv(cache, key, key, slots)              # k_cache now holds the rows
"""
from __future__ import annotations

from typing import Dict

from . import _C
from ._core import (
    CacheView,
    Device,
    build_slot_mapping,
    build_slot_mapping_csr,
    convert,
    copy_blocks,
    default_rotation_signs,
    describe,
    gather_kv,
    write_kv,
    write_mla,
)
from ._enums import BlockOrder, CacheFormat, DeviceType, DType, HeadLayout, ScaleMode, Status, Tier
from ._errors import PagedKVError
from ._handles import BatchMirror, BlockTable, LayerSpec, Pool, PoolStats, Slots

__all__ = [
    "__version__",
    "version",
    "build_info",
    "library_path",
    "cuda_device_count",
    "synchronize",
    # enums and errors
    "Status",
    "DType",
    "DeviceType",
    "CacheFormat",
    "ScaleMode",
    "HeadLayout",
    "Tier",
    "BlockOrder",
    "PagedKVError",
    # views and ops
    "Device",
    "CacheView",
    "write_kv",
    "write_mla",
    "gather_kv",
    "copy_blocks",
    "convert",
    "build_slot_mapping",
    "build_slot_mapping_csr",
    "default_rotation_signs",
    "describe",
    # handles
    "LayerSpec",
    "PoolStats",
    "BatchMirror",
    "Pool",
    "BlockTable",
    "Slots",
]

#: Version of the loaded libpagedkv ("0.1.0").
__version__: str = _C.version_string()

if _C.version() // 100 != _C.HEADER_VERSION_NUMBER // 100:  # 0.x: MAJOR.MINOR is the ABI
    raise ImportError(
        f"pagedkv: the extension was built against libpagedkv {_C.HEADER_VERSION} but loaded "
        f"{__version__} (an old libpagedkv first on LD_LIBRARY_PATH?)"
    )


def version() -> tuple:
    """The loaded library's version as ``(major, minor, patch)``."""
    v = _C.version()
    return (v // 10000, v // 100 % 100, v % 100)


def build_info() -> Dict[str, str]:
    """Build facts of the loaded library (``pkv_build_info()``) as a dict, e.g.
    ``{'version': '0.1.0', 'cuda': '13.0', 'cuda_archs': '80,90', 'openmp': '1', ...}``;
    ``cuda`` is ``'none'`` for a CPU-only build."""
    info: Dict[str, str] = {}
    for item in _C.build_info().split():
        key, _, value = item.partition("=")
        info[key] = value
    return info


def library_path() -> str:
    """Path of the libpagedkv shared library the extension loaded (for ctypes users)."""
    import os

    ext = os.path.realpath(_C.__file__)
    with open("/proc/self/maps") as maps:
        for line in maps:
            path = line.rsplit(None, 1)[-1] if "/" in line else ""
            if os.path.basename(path).startswith("libpagedkv.so"):
                return path
    # Not Linux /proc: the copy shipped next to the extension.
    here = os.path.dirname(ext)
    for name in sorted(os.listdir(here)):
        if name.startswith("libpagedkv.so"):
            return os.path.join(here, name)
    raise FileNotFoundError("pagedkv: libpagedkv shared library not found")


def cuda_device_count() -> int:
    """Usable CUDA devices (0 without a CUDA build, driver or device)."""
    return _C.cuda_device_count()


def synchronize(stream=None) -> None:
    """Block until the work on ``stream`` is done (``None`` = the legacy default stream)."""
    _C.stream_synchronize(stream)
