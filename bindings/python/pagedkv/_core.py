"""Cache views and the stream-ordered ops (write, gather, block copies, conversion)."""
from __future__ import annotations

from typing import Any, Iterator, Optional, Sequence, Tuple, Union

import numpy as np

from . import _C
from ._enums import CacheFormat, DeviceType, DType, HeadLayout, ScaleMode

__all__ = [
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
]

#: A tensor: a NumPy array (ml_dtypes bf16 / fp8 included), or any object with ``__dlpack__``
#: (PyTorch, CuPy, JAX, NumPy) or ``__cuda_array_interface__``.
Tensor = Any
#: A CUDA stream: an int handle (0 = legacy default stream), an object with ``__cuda_stream__``
#: or ``cuda_stream`` (``torch.cuda.Stream``), or ``None`` for the default.
Stream = Any


class Device:
    """A device: :class:`DeviceType` and index (CUDA ordinal; 0 for the CPU). Compares equal to
    the ``(type, index)`` tuple. ``Device.parse("cuda:1")``, ``Device.parse("cpu")``, a
    ``torch.device`` or a ``(type, index)`` tuple are accepted wherever a device is."""

    __slots__ = ("type", "index")
    type: DeviceType  # noqa: A003
    index: int

    def __init__(self, type: Union[DeviceType, int], index: int = 0) -> None:  # noqa: A002
        object.__setattr__(self, "type", DeviceType(type))
        object.__setattr__(self, "index", int(index))

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("Device is immutable")

    def __iter__(self) -> Iterator[int]:
        return iter((self.type, self.index))

    def __getitem__(self, i: int) -> int:
        return (self.type, self.index)[i]

    def __len__(self) -> int:
        return 2

    def __eq__(self, other: object) -> bool:
        if isinstance(other, (Device, tuple)):
            return tuple(self) == tuple(other)
        return NotImplemented

    def __hash__(self) -> int:
        return hash((int(self.type), self.index))

    @classmethod
    def parse(cls, device: Any) -> "Device":
        if isinstance(device, Device):
            return device
        if isinstance(device, tuple) and len(device) == 2:
            return cls(device[0], device[1])
        if device is None:
            return cls(DeviceType.CPU, 0)
        kind = getattr(device, "type", None)
        if isinstance(kind, str):  # torch.device
            index = getattr(device, "index", None)
            device = kind if index is None else f"{kind}:{index}"
        if isinstance(device, str):
            name, _, idx = device.partition(":")
            name = name.strip().lower()
            types = {"cpu": DeviceType.CPU, "cuda": DeviceType.CUDA, "gpu": DeviceType.CUDA,
                     "cuda_host": DeviceType.CUDA_HOST, "pinned": DeviceType.CUDA_HOST}
            if name in types:
                return cls(types[name], int(idx) if idx else 0)
        raise ValueError(f"pagedkv: cannot read a device from {device!r} (use 'cpu', 'cuda', 'cuda:N')")

    def __repr__(self) -> str:
        return f"Device({self.type.name.lower()}:{self.index})"


def describe(tensor: Tensor) -> dict:
    """How pagedkv sees ``tensor`` (no copy): ``data`` pointer, ``dtype`` (:class:`DType`),
    ``device`` (:class:`Device`), ``shape`` and ``strides`` in elements, and ``source`` (the
    protocol used: ``numpy``, ``dlpack_c_exchange_api``, ``dlpack``, ``cuda_array_interface``)."""
    d = _C.describe(tensor)
    d["dtype"] = DType(d["dtype"])
    d["device"] = Device(*d["device"])
    return d


def _as_c(cache: Any) -> "_C.CacheView":
    view = getattr(cache, "_view", cache)
    if not isinstance(view, _C.CacheView):
        raise TypeError(f"pagedkv: expected a CacheView, got {type(cache).__name__}")
    return view


def _scale_tensor(value: Any, like: Tensor) -> Any:
    """A Python number as a one-element float32 tensor on ``like``'s device."""
    if value is None or not isinstance(value, (int, float)):
        return value
    dev = _C.describe(like)["device"]
    if dev[0] != DeviceType.CUDA:
        return np.array([value], dtype=np.float32)
    mod = type(like).__module__.split(".")[0]
    if mod == "torch":
        import torch

        return torch.tensor([float(value)], dtype=torch.float32, device=like.device)
    if mod == "cupy":
        import cupy

        with cupy.cuda.Device(dev[1]):
            return cupy.asarray([value], dtype=cupy.float32)
    raise TypeError("pagedkv: a number as the scale of a CUDA cache needs a torch or CuPy cache; "
                    "pass a float32 device tensor instead")


_KIND_BSHD, _KIND_LEGACY5D, _KIND_MLA = 0, 1, 2
_PERM = {HeadLayout.NHD: (0, 1, 2, 3), HeadLayout.HND: (0, 2, 1, 3)}


class CacheView:
    """One layer's paged K/V cache: memory plus the declarative layout ``pkv_cache_view``.

    Element (block b, slot s, head h, dim d) of K lives at byte
    ``k_data + b*k_stride_block + s*k_stride_slot + h*k_stride_head + d*element_size``.
    Any layout (NHD, HND, K/V interleaved, K|V packed, padded pages) is a choice of strides, so
    a view is usually built from tensors the caller owns with :meth:`from_tensors` (strides are
    taken from the tensors), or obtained from a :class:`pagedkv.Pool` layer.

    The view keeps the tensors it was built from referenced; their data pointers are captured
    when the view is built (re-build it if a tensor is reallocated).
    """

    __slots__ = ("_view",)

    def __init__(self, view: "_C.CacheView") -> None:
        self._view = view

    # ------------------------------------------------------------------ constructors
    @classmethod
    def from_tensors(
        cls,
        key_cache: Tensor,
        value_cache: Optional[Tensor] = None,
        *,
        format: Union[CacheFormat, str, None] = None,  # noqa: A002
        layout: Union[HeadLayout, str] = HeadLayout.NHD,
        k_scale: Any = None,
        v_scale: Any = None,
        scale_mode: Optional[ScaleMode] = None,
        head_size: int = 0,
        head_size_v: int = 0,
        k_scale_plane: Optional[Tensor] = None,
        v_scale_plane: Optional[Tensor] = None,
        inline_scales: bool = False,
        k_rotation_signs: Optional[Tensor] = None,
        v_rotation_signs: Optional[Tensor] = None,
        rotated_domain: bool = False,
    ) -> "CacheView":
        """A view over 4-D cache tensors, in place (no copy).

        Args:
            key_cache: ``[num_blocks, block_size, num_heads, D]`` (``layout="NHD"``) or
                ``[num_blocks, num_heads, block_size, D]`` (``"HND"``), any strides with a
                contiguous last dimension (e.g. ``kv_cache[:, 0]`` of a ``[NB, 2, BS, H, D]``
                allocation). Packed formats use uint8 tensors whose last dimension is the
                stored row in bytes.
            value_cache: the same for V, or ``None`` for a K-only cache.
            format: the :class:`CacheFormat`; default: the plain format of the tensors' dtype
                (f32 / f16 / bf16 / torch fp8). Required for uint8 caches.
            k_scale, v_scale: FP8 scales: float32 tensors of 1 element (per tensor) or
                ``num_heads`` (per head) on the cache's device, read at run time; or numbers.
            scale_mode: force :class:`ScaleMode` (default: from the scale's length).
            head_size, head_size_v: elements per head row, when the row's bytes do not say it
                (inline scales); 0 = derived.
            k_scale_plane, v_scale_plane: per-token-head formats: float32 ``[NB, BS, H]``
                tensors (in the cache's dimension order) holding one scale per row.
            inline_scales: per-token-head formats: the float32 scale sits right after each
                row's codes (vLLM's layout: the last dimension is ``D_store + 4`` bytes).
            k_rotation_signs, v_rotation_signs: INT4: ``[D]`` float32 +-1 signs on the device
                (default: :func:`default_rotation_signs`).
            rotated_domain: INT4 / INT2 gathers return the rotated-domain values.
        """
        fmt = cls._infer_format(key_cache, format)
        perm = _PERM[HeadLayout[layout.upper()] if isinstance(layout, str) else HeadLayout(layout)]
        flags = _C.CACHE_VIEW_ROTATED_DOMAIN if rotated_domain else 0
        return cls(
            _C.view_from_tensors(
                key_cache, value_cache, int(fmt), _KIND_BSHD, perm,
                _scale_tensor(k_scale, key_cache), _scale_tensor(v_scale, key_cache),
                -1 if scale_mode is None else int(scale_mode), int(head_size), int(head_size_v),
                k_scale_plane, v_scale_plane, int(bool(inline_scales)), k_rotation_signs, v_rotation_signs, flags,
            )
        )

    @classmethod
    def from_legacy_5d(
        cls,
        key_cache: Tensor,
        value_cache: Tensor,
        *,
        format: Union[CacheFormat, str, None] = None,  # noqa: A002
        k_scale: Any = None,
        v_scale: Any = None,
    ) -> "CacheView":
        """A view over vLLM's legacy paged-attention layout: key ``[NB, H, D/x, BS, x]`` and
        value ``[NB, H, D, BS]`` (strides honoured). Plain and per-tensor FP8 formats."""
        fmt = cls._infer_format(key_cache, format)
        return cls(
            _C.view_from_tensors(
                key_cache, value_cache, int(fmt), _KIND_LEGACY5D, (0, 1, 2, 3),
                _scale_tensor(k_scale, key_cache), _scale_tensor(v_scale, key_cache), -1, 0, 0,
                None, None, 0, None, None, 0,
            )
        )

    @classmethod
    def from_mla(
        cls,
        kv_cache: Tensor,
        *,
        format: Union[CacheFormat, str, None] = None,  # noqa: A002
        scale: Any = None,
        rope_f16: bool = False,
    ) -> "CacheView":
        """A K-only one-head view over an MLA latent cache ``[NB, BS, R + P]`` (any block and
        slot strides). ``CacheFormat.FP8_DS_MLA`` takes a ``[NB, BS, 656]`` uint8 cache (or 328
        16-bit elements); ``rope_f16``: its RoPE values are float16 instead of bfloat16."""
        fmt = cls._infer_format(kv_cache, format)
        flags = _C.CACHE_VIEW_ROPE_F16 if rope_f16 else 0
        return cls(
            _C.view_from_tensors(
                kv_cache, None, int(fmt), _KIND_MLA, (0, 1, 2, 3), _scale_tensor(scale, kv_cache), None,
                -1, 0, 0, None, None, 0, None, None, flags,
            )
        )

    @staticmethod
    def _infer_format(cache: Tensor, fmt: Any) -> CacheFormat:
        if fmt is not None:
            return CacheFormat.from_any(fmt)
        return CacheFormat.from_dtype(DType(_C.describe(cache)["dtype"]))

    # ------------------------------------------------------------------ fields
    @property
    def format(self) -> CacheFormat:  # noqa: A003
        return CacheFormat(self._view.format)

    @property
    def device(self) -> Device:
        return Device(*self._view.device)

    @property
    def num_blocks(self) -> int:
        return self._view.num_blocks

    @property
    def block_size(self) -> int:
        return self._view.block_size

    @property
    def num_heads(self) -> int:
        return self._view.num_heads

    @property
    def head_size(self) -> int:
        """Elements per K head row."""
        return self._view.head_size_k

    @property
    def head_size_v(self) -> int:
        """Elements per V head row (equal to :attr:`head_size` unless they differ)."""
        return self._view.head_size_v or self._view.head_size_k

    @property
    def has_value(self) -> bool:
        return self._view.v_data != 0

    @property
    def scale_mode(self) -> ScaleMode:
        return ScaleMode(self._view.scale_mode)

    @property
    def k_strides(self) -> Tuple[int, int, int]:
        """(block, slot, head) byte strides of K."""
        v = self._view
        return (v.k_stride_block, v.k_stride_slot, v.k_stride_head)

    @property
    def v_strides(self) -> Tuple[int, int, int]:
        """(block, slot, head) byte strides of V."""
        v = self._view
        return (v.v_stride_block, v.v_stride_slot, v.v_stride_head)

    @property
    def raw(self) -> "_C.CacheView":
        """The underlying ``pkv_cache_view`` (every field, read / write)."""
        return self._view

    def check(self) -> None:
        """Validate the view (``pkv_cache_view_check``); raises :class:`PagedKVError`."""
        self._view.check()

    def __repr__(self) -> str:
        v = self._view
        hv = f", head_size_v={v.head_size_v}" if v.head_size_v and v.head_size_v != v.head_size_k else ""
        kind = "" if v.v_data else ", k_only"
        return (f"CacheView({self.format.name}, {self.device!r}, num_blocks={v.num_blocks}, "
                f"block_size={v.block_size}, num_heads={v.num_heads}, head_size={v.head_size_k}{hv}{kind})")


# ---------------------------------------------------------------------------------- ops


def write_kv(
    cache: CacheView,
    key: Tensor,
    value: Optional[Tensor],
    slot_mapping: Tensor,
    *,
    out_of_range_count: Optional[Tensor] = None,
    stream: Stream = None,
) -> None:
    """Write new keys and values into the paged cache, in place (``pkv_write_kv``; vLLM
    ``reshape_and_cache_flash`` semantics), converting or quantizing to the cache's format.

    Args:
        cache: the destination :class:`CacheView`.
        key, value: ``[T_pad, num_heads, head_size]`` f32 / f16 / bf16 on the cache's device
            (any row / head stride, last stride 1); ``value`` is ``None`` for a K-only cache.
        slot_mapping: ``[T]`` int32 or int64; token t goes to slot ``block*block_size+offset``.
            T is the token count (extra key / value rows are not read); a negative slot is
            padding (skipped).
        out_of_range_count: optional int64 tensor on the device, incremented by the number
            of slots past the cache.
        stream: CUDA stream (default: the current PyTorch / CuPy stream of CUDA tensors, else
            the legacy default stream). CPU caches are written before the call returns.

    Raises:
        PagedKVError: with the library's message; nothing is written.
    """
    _C.write_kv(_as_c(cache), key, value, slot_mapping, out_of_range_count, stream)


def write_mla(
    cache: CacheView,
    kv_c: Tensor,
    k_pe: Tensor,
    slot_mapping: Tensor,
    *,
    out_of_range_count: Optional[Tensor] = None,
    stream: Stream = None,
) -> None:
    """Write MLA latent entries ``[kv_c | k_pe]`` (``pkv_write_mla``; vLLM
    ``concat_and_cache_mla``). ``kv_c`` ``[T_pad, R]``, ``k_pe`` ``[T_pad, P]``, same dtype; the
    cache is a K-only one-head view with head size R + P (or FP8_DS_MLA). Padding, counter
    and stream as :func:`write_kv`."""
    _C.write_mla(_as_c(cache), kv_c, k_pe, slot_mapping, out_of_range_count, stream)


def gather_kv(
    out_key: Tensor,
    out_value: Optional[Tensor],
    cache: CacheView,
    block_table: Tensor,
    cu_seq_lens: Tensor,
    seq_starts: Optional[Tensor] = None,
    *,
    out_of_range_count: Optional[Tensor] = None,
    stream: Stream = None,
) -> None:
    """Gather paged K/V back to dense rows, dequantizing (``pkv_gather_kv``; vLLM
    ``gather_and_maybe_dequant_cache`` semantics for any layout).

    Request b owns output rows ``[cu_seq_lens[b], cu_seq_lens[b+1])``; row i reads cache
    position ``i - cu_seq_lens[b] + seq_starts[b]``.

    Args:
        out_key: ``[N, num_heads, head_size]`` (``[N, head_size]`` for a one-head cache)
            f32 / f16 / bf16, written in place; rows past ``cu_seq_lens[B]`` are untouched.
        out_value: the same for V, or ``None`` to skip V.
        cache: the source :class:`CacheView`.
        block_table: ``[B, max_blocks]`` int32. cu_seq_lens: ``[B + 1]`` int32.
        seq_starts: optional ``[B]`` int32 cache position of each request's first row.
    """
    _C.gather_kv(out_key, out_value, _as_c(cache), block_table, cu_seq_lens, seq_starts, out_of_range_count, stream)


def copy_blocks(caches: Sequence[Tensor], pairs: Tensor, *, stream: Stream = None) -> None:
    """Copy whole blocks inside caches the caller owns, every cache in one launch
    (``pkv_copy_blocks``; vLLM ``copy_blocks``): in each cache ``[num_blocks, ...]`` (dimension
    0 any stride, the rest dense), block ``pairs[i, 1]`` receives block ``pairs[i, 0]``.
    ``pairs`` is ``[P, 2]`` int32 / int64 on the caches' device, read at run time."""
    _C.copy_blocks(list(caches), pairs, stream)


def convert(
    dst: Tensor,
    src: Tensor,
    scale: Optional[Tensor] = None,
    *,
    stream: Stream = None,
    dst_dtype: Union[DType, str, None] = None,
    src_dtype: Union[DType, str, None] = None,
) -> None:
    """Element-wise ``dst = convert(src)`` with the cache formats' rounding rules
    (``pkv_convert``): float -> fp8 stores ``sat_finite_rne(x / scale)``, fp8 -> float gives
    ``float(q) * scale``, float <-> float rounds to nearest even. ``scale`` is a float32
    one-element tensor on the device (``None`` = 1). ``dst_dtype`` / ``src_dtype`` reinterpret a
    uint8 tensor as the fp8 type it holds (``DType.FP8_E4M3`` / ``DType.FP8_E5M2``)."""
    _C.convert(
        dst, src, _scale_tensor(scale, dst), stream,
        -1 if dst_dtype is None else int(DType.from_any(dst_dtype)),
        -1 if src_dtype is None else int(DType.from_any(src_dtype)),
    )


def build_slot_mapping(
    out: Tensor, block_table: Tensor, seq_lens: Tensor, query_start_loc: Tensor, block_size: int,
    *, stream: Stream = None,
) -> None:
    """Slot mapping of a step's new tokens from a 2-D block table, on the device
    (``pkv_build_slot_mapping``). ``out`` ``[T]`` int32 / int64; ``block_table`` ``[B, max_blocks]``,
    ``seq_lens`` ``[B]``, ``query_start_loc`` ``[B + 1]``, all int32. Unused tokens get -1."""
    _C.build_slot_mapping(out, block_table, seq_lens, query_start_loc, int(block_size), stream)


def build_slot_mapping_csr(
    out: Tensor, indptr: Tensor, indices: Tensor, last_page_len: Tensor, append_indptr: Tensor,
    page_size: int, *, stream: Stream = None,
) -> None:
    """Slot mapping from a FlashInfer-style CSR page table (``pkv_build_slot_mapping_csr``)."""
    _C.build_slot_mapping_csr(out, indptr, indices, last_page_len, append_indptr, int(page_size), stream)


def default_rotation_signs(n: int) -> np.ndarray:
    """The library's default INT4 rotation signs (+1.0 / -1.0, float32, host)."""
    return _C.default_rotation_signs(int(n))
