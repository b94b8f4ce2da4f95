"""Enumerations of the C API (values pinned by include/pagedkv.h, never reused)."""
from __future__ import annotations

import enum
from typing import Any

__all__ = [
    "Status",
    "DType",
    "DeviceType",
    "CacheFormat",
    "ScaleMode",
    "HeadLayout",
    "Tier",
    "BlockOrder",
]


class Status(enum.IntEnum):
    """``pkv_status``: the result of every C call. :class:`pagedkv.PagedKVError` carries one."""

    SUCCESS = 0
    INVALID_ARGUMENT = 1
    INVALID_STATE = 2
    OUT_OF_HOST_MEMORY = 3
    OUT_OF_DEVICE_MEMORY = 4
    OUT_OF_BLOCKS = 5  #: pool exhausted; recoverable, nothing changed
    NOT_SUPPORTED = 6
    CUDA = 7
    STRUCT_SIZE = 8
    BUSY = 9
    INTERNAL = 10

    @property
    def c_name(self) -> str:
        """The C enumerator name (``"PKV_ERROR_INVALID_ARGUMENT"``)."""
        return "PKV_SUCCESS" if self is Status.SUCCESS else f"PKV_ERROR_{self.name}"


class DType(enum.IntEnum):
    """``pkv_dtype``: element types of tensors passed to the library."""

    F32 = 0
    F16 = 1
    BF16 = 2
    FP8_E4M3 = 3  #: OCP e4m3fn (max 448, no infinities)
    FP8_E5M2 = 4  #: OCP e5m2 (max 57344)
    INT8 = 5
    UINT8 = 6
    INT32 = 7
    INT64 = 8

    @property
    def itemsize(self) -> int:
        """Bytes per element."""
        return _DTYPE_BYTES[self]

    @classmethod
    def from_any(cls, dtype: Any) -> "DType":
        """A DType from a DType, an int, a name (``"bf16"``, ``"bfloat16"``, ``"float8_e4m3fn"``),
        a NumPy / ml_dtypes dtype or a torch dtype."""
        if isinstance(dtype, DType):
            return dtype
        if isinstance(dtype, int):
            return cls(dtype)
        name = dtype if isinstance(dtype, str) else str(getattr(dtype, "name", dtype))
        name = name.lower().replace("torch.", "")
        try:
            return _DTYPE_NAMES[name]
        except KeyError:
            raise ValueError(f"pagedkv: no pkv_dtype for {dtype!r}") from None


_DTYPE_BYTES = {
    DType.F32: 4, DType.F16: 2, DType.BF16: 2, DType.FP8_E4M3: 1, DType.FP8_E5M2: 1,
    DType.INT8: 1, DType.UINT8: 1, DType.INT32: 4, DType.INT64: 8,
}
_DTYPE_NAMES = {
    "f32": DType.F32, "float32": DType.F32, "float": DType.F32,
    "f16": DType.F16, "float16": DType.F16, "half": DType.F16,
    "bf16": DType.BF16, "bfloat16": DType.BF16,
    "fp8_e4m3": DType.FP8_E4M3, "float8_e4m3fn": DType.FP8_E4M3, "e4m3": DType.FP8_E4M3,
    "fp8_e5m2": DType.FP8_E5M2, "float8_e5m2": DType.FP8_E5M2, "e5m2": DType.FP8_E5M2,
    "int8": DType.INT8, "uint8": DType.UINT8, "int32": DType.INT32, "int64": DType.INT64,
}


class DeviceType(enum.IntEnum):
    """``pkv_device_type`` (values equal DLPack's ``DLDeviceType``)."""

    CPU = 1
    CUDA = 2
    CUDA_HOST = 3  #: pinned host memory; treated as CPU memory by the ops


class CacheFormat(enum.IntEnum):
    """``pkv_cache_format``: how one cache element is stored (see docs/formats.md)."""

    F32 = 1
    F16 = 2
    BF16 = 3
    FP8_E4M3 = 4  #: q = sat_finite_rne(x / scale), read float(q) * scale
    FP8_E5M2 = 5
    INT8_PER_TOKEN_HEAD = 6
    FP8_PER_TOKEN_HEAD = 7
    INT4_PER_TOKEN_HEAD = 8
    INT2_PER_TOKEN_HEAD = 9
    FP8_DS_MLA = 10  #: DeepSeek sparse-MLA 656-byte entries

    @property
    def is_fp8(self) -> bool:
        """Per-tensor / per-head scaled FP8 (the formats that take k_scale / v_scale)."""
        return self in (CacheFormat.FP8_E4M3, CacheFormat.FP8_E5M2)

    @property
    def is_per_token_head(self) -> bool:
        """Formats with a scale per (block, slot, head) row in a scale plane."""
        return CacheFormat.INT8_PER_TOKEN_HEAD <= self <= CacheFormat.INT2_PER_TOKEN_HEAD

    @classmethod
    def from_dtype(cls, dtype: Any) -> "CacheFormat":
        """The plain format storing elements of ``dtype`` (f32 / f16 / bf16 / fp8)."""
        d = DType.from_any(dtype)
        try:
            return _FORMAT_OF_DTYPE[d]
        except KeyError:
            raise ValueError(
                f"pagedkv: a {d.name} cache has no implied format; pass format= (e.g. CacheFormat.FP8_E4M3)"
            ) from None

    @classmethod
    def from_any(cls, fmt: Any) -> "CacheFormat":
        """A CacheFormat from a CacheFormat, an int or a name (``"bf16"``, ``"fp8_e4m3"``,
        ``"int4_per_token_head"``; vLLM's ``"fp8"`` means e4m3)."""
        if isinstance(fmt, CacheFormat):
            return fmt
        if isinstance(fmt, int):
            return cls(fmt)
        if isinstance(fmt, str):
            key = fmt.lower()
            key = {"fp8": "fp8_e4m3", "float16": "f16", "bfloat16": "bf16", "float32": "f32",
                   "fp8_ds_mla": "fp8_ds_mla"}.get(key, key)
            for member in cls:
                if member.name.lower() == key:
                    return member
        raise ValueError(f"pagedkv: unknown cache format {fmt!r}")


_FORMAT_OF_DTYPE = {
    DType.F32: CacheFormat.F32,
    DType.F16: CacheFormat.F16,
    DType.BF16: CacheFormat.BF16,
    DType.FP8_E4M3: CacheFormat.FP8_E4M3,
    DType.FP8_E5M2: CacheFormat.FP8_E5M2,
}


class ScaleMode(enum.IntEnum):
    """``pkv_scale_mode``: granularity of FP8 scales."""

    PER_TENSOR = 0
    PER_HEAD = 1


class HeadLayout(enum.IntEnum):
    """``pkv_head_layout``: head layout of a pool layer inside a block."""

    NHD = 0  #: [block_size, num_heads, head_size]
    HND = 1  #: [num_heads, block_size, head_size]


class Tier(enum.IntEnum):
    """``pkv_tier``: where a pool block lives."""

    DEVICE = 0
    HOST = 1  #: the pinned host tier


class BlockOrder(enum.IntEnum):
    """``pkv_block_order``: order of blocks in a gather / scatter transfer buffer."""

    BLOCK_MAJOR = 0  #: [n][bytes_per_block]
    LAYER_MAJOR = 1  #: [layer][n][layer bytes per block]
