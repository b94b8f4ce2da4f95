"""pagedkv for JAX: the paged cache writes and gather as XLA custom calls (XLA FFI), in-graph.

Importing this module registers libpagedkv's XLA FFI handlers (``include/pagedkv_xla.h``) with
JAX for the ``cpu`` platform and, when libpagedkv has CUDA, for ``CUDA``. The handlers call the
same C API (``pkv_write_kv`` / ``pkv_write_mla`` / ``pkv_gather_kv``) and kernels as the rest of pagedkv, on the
stream XLA runs the computation on; the CUDA ones may be captured in XLA's command buffers
(CUDA graphs).

Caches are JAX arrays, so a write *returns* the updated caches. Under :func:`jax.jit` the
update is in place only when the caches are **donated** and threaded through::

    import jax, jax.numpy as jnp
    import pagedkv.jax as pkj

    @functools.partial(jax.jit, donate_argnums=(0, 1))
    def step(key_cache, value_cache, k, v, slots):
        return pkj.write_kv(k, v, key_cache, value_cache, slots)

    key_cache, value_cache = step(key_cache, value_cache, k, v, slots)  # same buffers, updated

Without donation XLA copies each cache before the call (correct, but a full-cache copy per
step). Inside one jitted function (``lax.scan`` / ``fori_loop`` over decode steps) the caches
are carried values and XLA updates them in place.

Raises ImportError when jax is missing or libpagedkv was built without the XLA handlers
(CMake ``PKV_ENABLE_XLA``; ``pagedkv.build_info()["xla_ffi"]`` says ``"1"`` when they are in).
The calls have no batching (``vmap``) or differentiation rules.
"""
from __future__ import annotations

import ctypes
from typing import Any, List, Optional, Tuple, Union

try:
    import jax
    import jax.numpy as jnp
    import jax.ffi as _ffi
except ImportError as e:  # pragma: no cover - exercised only without jax
    raise ImportError(f"pagedkv.jax needs jax (pip install jax): {e}") from e

import numpy as np

from . import build_info, library_path
from ._enums import CacheFormat, HeadLayout

__all__ = [
    "write_kv",
    "write_mla",
    "gather_kv",
    "WRITE_KV_TARGET",
    "WRITE_MLA_TARGET",
    "GATHER_KV_TARGET",
    "registered_platforms",
    "cuda_registration_error",
]

#: XLA FFI target names (custom_call_api_version 4, typed FFI).
WRITE_KV_TARGET = "pagedkv_write_kv"
GATHER_KV_TARGET = "pagedkv_gather_kv"
WRITE_MLA_TARGET = "pagedkv_write_mla"
_TARGETS = ((WRITE_KV_TARGET, "write_kv"), (WRITE_MLA_TARGET, "write_mla"), (GATHER_KV_TARGET, "gather_kv"))

# PKV_XLA_ARG_* (include/pagedkv_xla.h): optional operands, appended in bit order.
_ARG_SEQ_STARTS = 0x01
_ARG_K_SCALE = 0x02
_ARG_V_SCALE = 0x04
_ARG_SCALE_PLANES = 0x08
_ARG_ROTATION_SIGNS = 0x10
_ARG_OUT_INIT = 0x20
_ROTATED_DOMAIN = 0x1  # PKV_CACHE_VIEW_ROTATED_DOMAIN
_ROPE_F16 = 0x2  # PKV_CACHE_VIEW_ROPE_F16

_info = build_info()
if _info.get("xla_ffi") != "1":
    raise ImportError(
        "pagedkv.jax: this libpagedkv was built without the XLA FFI handlers "
        f"({library_path()}: xla_ffi={_info.get('xla_ffi', 'absent')}); rebuild it with the XLA FFI "
        "headers available (CMake -DPKV_ENABLE_XLA=ON -DPKV_XLA_FFI_INCLUDE_DIR=$(python3 -c "
        "'import jax.ffi; print(jax.ffi.include_dir())'), or jaxlib installed for the build's Python)"
    )

_lib = ctypes.CDLL(library_path())  # kept alive for the registered handler pointers
_registered: List[str] = []
_cuda_error: Optional[str] = None


def _register() -> None:
    global _cuda_error
    for target, op in _TARGETS:
        _ffi.register_ffi_target(target, _ffi.pycapsule(getattr(_lib, f"pkv_xla_{op}_cpu")), platform="cpu")
    _registered.append("cpu")
    if _info.get("cuda", "none") == "none":
        _cuda_error = "libpagedkv was built without CUDA"
        return
    try:
        for target, op in _TARGETS:
            _ffi.register_ffi_target(target, _ffi.pycapsule(getattr(_lib, f"pkv_xla_{op}_cuda")), platform="CUDA")
        _registered.append("CUDA")
    except Exception as e:  # a jax without a CUDA plugin may refuse the platform
        _cuda_error = f"{type(e).__name__}: {e}"


_register()


def registered_platforms() -> Tuple[str, ...]:
    """The XLA platforms the pagedkv targets are registered for (``("cpu", "CUDA")`` or ``("cpu",)``)."""
    return tuple(_registered)


def cuda_registration_error() -> Optional[str]:
    """Why the CUDA targets are not registered (``None`` when they are)."""
    return _cuda_error


# ---------------------------------------------------------------------------------- helpers

_FORMAT_OF_DTYPE = {
    "float32": CacheFormat.F32,
    "float16": CacheFormat.F16,
    "bfloat16": CacheFormat.BF16,
    "float8_e4m3fn": CacheFormat.FP8_E4M3,
    "float8_e5m2": CacheFormat.FP8_E5M2,
}
# Stored bits per head-row element (the cache's last dimension holds D * bits / 8 bytes).
_ROW_BITS = {
    CacheFormat.F32: 32, CacheFormat.F16: 16, CacheFormat.BF16: 16, CacheFormat.FP8_E4M3: 8,
    CacheFormat.FP8_E5M2: 8, CacheFormat.INT8_PER_TOKEN_HEAD: 8, CacheFormat.FP8_PER_TOKEN_HEAD: 8,
    CacheFormat.INT4_PER_TOKEN_HEAD: 4, CacheFormat.INT2_PER_TOKEN_HEAD: 2,
}


def _format(cache: Any, fmt: Any) -> CacheFormat:
    if fmt is not None:
        return CacheFormat.from_any(fmt)
    name = np.dtype(cache.dtype).name
    if name not in _FORMAT_OF_DTYPE:
        raise ValueError(f"pagedkv.jax: a {name} cache has no implied format; pass format= "
                         "(e.g. 'fp8_e4m3', 'int8_per_token_head')")
    return _FORMAT_OF_DTYPE[name]


def _layout(layout: Union[str, HeadLayout, int]) -> HeadLayout:
    if isinstance(layout, str):
        try:
            return HeadLayout[layout.upper()]
        except KeyError:
            raise ValueError(f"pagedkv.jax: layout must be 'NHD' or 'HND', got {layout!r}") from None
    return HeadLayout(layout)


def _scale(value: Any) -> Any:
    if isinstance(value, (int, float)):
        return jnp.asarray([value], dtype=jnp.float32)
    return value


def _scales_and_planes(fmt: CacheFormat, k_scale: Any, v_scale: Any, k_scale_plane: Any, v_scale_plane: Any,
                       k_rotation_signs: Any, v_rotation_signs: Any) -> Tuple[int, list]:
    extras, operands = 0, []
    if k_scale is not None:
        extras |= _ARG_K_SCALE
        operands.append(_scale(k_scale))
    if v_scale is not None:
        extras |= _ARG_V_SCALE
        operands.append(_scale(v_scale))
    if (k_scale_plane is None) != (v_scale_plane is None):
        raise ValueError("pagedkv.jax: pass both k_scale_plane and v_scale_plane, or neither")
    if k_scale_plane is not None:
        extras |= _ARG_SCALE_PLANES
        operands += [k_scale_plane, v_scale_plane]
    if (k_rotation_signs is None) != (v_rotation_signs is None):
        raise ValueError("pagedkv.jax: pass both k_rotation_signs and v_rotation_signs, or neither")
    if k_rotation_signs is not None:
        extras |= _ARG_ROTATION_SIGNS
        operands += [k_rotation_signs, v_rotation_signs]
    return extras, operands


def _sds(x: Any) -> "jax.ShapeDtypeStruct":
    return jax.ShapeDtypeStruct(jnp.shape(x), jnp.result_type(x))


# ---------------------------------------------------------------------------------- ops


def write_kv(
    key: "jax.Array",
    value: "jax.Array",
    key_cache: "jax.Array",
    value_cache: "jax.Array",
    slot_mapping: "jax.Array",
    *,
    format: Union[CacheFormat, str, int, None] = None,  # noqa: A002
    layout: Union[str, HeadLayout] = "NHD",
    k_scale: Any = None,
    v_scale: Any = None,
    k_scale_plane: Optional["jax.Array"] = None,
    v_scale_plane: Optional["jax.Array"] = None,
    k_rotation_signs: Optional["jax.Array"] = None,
    v_rotation_signs: Optional["jax.Array"] = None,
) -> Tuple["jax.Array", ...]:
    """Write new keys and values into the paged caches (``pkv_write_kv``; vLLM
    ``reshape_and_cache_flash`` semantics) and return the updated caches.

    The caches are aliased to the results (``input_output_aliases``): **donate them** under
    :func:`jax.jit` (``donate_argnums``) and use the returned arrays from then on, and the write
    is in place; otherwise XLA copies each cache before the call.

    Args:
        key, value: ``[T_pad, H, Dk]`` / ``[T_pad, H, Dv]`` float32 / float16 / bfloat16, one dtype.
        key_cache, value_cache: ``[NB, BS, H, row]`` (``layout="NHD"``) or ``[NB, H, BS, row]``
            (``"HND"``), dense. ``row`` is D for float caches (same dtype as the format) and for the
            byte formats (FP8 as float8_e4m3fn / float8_e5m2 / uint8, INT8 as int8 / uint8),
            D/2 bytes for INT4 and D/4 bytes for INT2 (uint8).
        slot_mapping: ``[T]`` int32 / int64; token t goes to slot ``block * BS + offset``;
            negative = padding (skipped). T is the token count (extra key rows are not read).
        format: the cache format (:class:`pagedkv.CacheFormat`, its name, or value); default:
            the plain / FP8 format of the cache's dtype.
        layout: ``"NHD"`` or ``"HND"``.
        k_scale, v_scale: FP8 formats: float32 ``[1]`` (per tensor) or ``[H]`` (per head)
            arrays, or numbers; ``None`` = 1.0. The code stored is ``sat_finite_rne(x / scale)``.
        k_scale_plane, v_scale_plane: per-token-head formats (required): float32 ``[NB, BS, H]``
            (HND: ``[NB, H, BS]``) scale planes, aliased and returned like the caches.
        k_rotation_signs, v_rotation_signs: INT4: float32 ``[D]`` +-1 signs (default: the
            library's, :func:`pagedkv.default_rotation_signs`).

    Returns:
        ``(key_cache, value_cache)``, plus ``(k_scale_plane, v_scale_plane)`` for the
        per-token-head formats.

    Errors (wrong dtype / rank / shape, bad attributes) surface as the JAX runtime error of the
    call, with pagedkv's message ("pagedkv.write_kv: ..."); nothing is written.
    """
    fmt = _format(key_cache, format)
    lay = _layout(layout)
    extras, operands = _scales_and_planes(fmt, k_scale, v_scale, k_scale_plane, v_scale_plane,
                                          k_rotation_signs, v_rotation_signs)
    results = [_sds(key_cache), _sds(value_cache)]
    aliases = {2: 0, 3: 1}
    if extras & _ARG_SCALE_PLANES:
        first = 5 + bool(extras & _ARG_K_SCALE) + bool(extras & _ARG_V_SCALE)
        results += [_sds(k_scale_plane), _sds(v_scale_plane)]
        aliases.update({first: 2, first + 1: 3})
    call = _ffi.ffi_call(WRITE_KV_TARGET, tuple(results), input_output_aliases=aliases)
    out = call(key, value, key_cache, value_cache, slot_mapping, *operands,
               format=np.int64(int(fmt)), layout=np.int64(int(lay)), extras=np.int64(extras), flags=np.int64(0))
    return tuple(out)


def write_mla(
    kv_c: "jax.Array",
    k_pe: "jax.Array",
    kv_cache: "jax.Array",
    slot_mapping: "jax.Array",
    *,
    format: Union[CacheFormat, str, int, None] = None,  # noqa: A002
    scale: Any = None,
    rope_f16: bool = False,
) -> "jax.Array":
    """Write MLA latent entries ``[kv_c | k_pe]`` (``pkv_write_mla``; vLLM
    ``concat_and_cache_mla``) and return the updated cache (aliased: donate it, as for
    :func:`write_kv`).

    Args:
        kv_c: ``[T_pad, R]``, k_pe: ``[T_pad, P]``, float32 / float16 / bfloat16, one dtype.
        kv_cache: ``[NB, BS, R + P]`` of the format's dtype (FP8: float8 or uint8 with
            ``format=``), or ``[NB, BS, 656]`` uint8 for ``format="fp8_ds_mla"`` (R = 512, P = 64).
        slot_mapping: ``[T]`` int32 / int64, negative = padding.
        scale: FP8 formats: float32 ``[1]`` array or a number (default 1.0).
        rope_f16: fp8_ds_mla: the RoPE part is float16 (inputs float16) instead of bfloat16.
    """
    fmt = _format(kv_cache, format)
    extras, operands = 0, []
    if scale is not None:
        extras |= _ARG_K_SCALE
        operands.append(_scale(scale))
    call = _ffi.ffi_call(WRITE_MLA_TARGET, _sds(kv_cache), input_output_aliases={2: 0})
    return call(kv_c, k_pe, kv_cache, slot_mapping, *operands, format=np.int64(int(fmt)), layout=np.int64(0),
                extras=np.int64(extras), flags=np.int64(_ROPE_F16 if rope_f16 else 0))


def gather_kv(
    key_cache: "jax.Array",
    value_cache: "jax.Array",
    block_table: "jax.Array",
    cu_seq_lens: "jax.Array",
    num_rows: int,
    *,
    seq_starts: Optional["jax.Array"] = None,
    dtype: Any = None,
    head_size: Optional[int] = None,
    head_size_v: Optional[int] = None,
    format: Union[CacheFormat, str, int, None] = None,  # noqa: A002
    layout: Union[str, HeadLayout] = "NHD",
    k_scale: Any = None,
    v_scale: Any = None,
    k_scale_plane: Optional["jax.Array"] = None,
    v_scale_plane: Optional["jax.Array"] = None,
    k_rotation_signs: Optional["jax.Array"] = None,
    v_rotation_signs: Optional["jax.Array"] = None,
    rotated_domain: bool = False,
    fill: Optional[float] = 0.0,
) -> Tuple["jax.Array", "jax.Array"]:
    """Gather paged K/V back to dense rows, dequantizing (``pkv_gather_kv``; vLLM
    ``gather_and_maybe_dequant_cache`` semantics). The caches are only read.

    Request b owns output rows ``[cu_seq_lens[b], cu_seq_lens[b+1])``; row i reads cache position
    ``i - cu_seq_lens[b] + seq_starts[b]`` (slot ``block_table[b, pos // BS] * BS + pos % BS``).

    Args:
        key_cache, value_cache: as :func:`write_kv` (same ``format`` / ``layout`` / scales /
            planes / signs arguments).
        block_table: ``[B, max_blocks]`` int32. cu_seq_lens: ``[B + 1]`` int32 prefix sums.
        num_rows: N, the static number of output rows (an upper bound of ``cu_seq_lens[B]``).
        seq_starts: optional ``[B]`` int32 cache position of each request's first row.
        dtype: output dtype, float32 / float16 / bfloat16; default: the cache's dtype for a
            float cache, float32 otherwise.
        head_size, head_size_v: D of K / V; default: from the cache row and the format.
        rotated_domain: INT4 / INT2: return the rotated-domain values.
        fill: value of the rows past ``cu_seq_lens[B]`` (and rows the gather skips);
            ``None`` leaves them unspecified (saves filling the outputs).

    Returns:
        ``(out_key [N, H, Dk], out_value [N, H, Dv])``.
    """
    fmt = _format(key_cache, format)
    lay = _layout(layout)
    bits = _ROW_BITS.get(fmt)
    if dtype is None:
        dtype = key_cache.dtype if fmt in (CacheFormat.F32, CacheFormat.F16, CacheFormat.BF16) else jnp.float32
    heads = key_cache.shape[1] if lay == HeadLayout.HND else key_cache.shape[2]
    item_bits_k = np.dtype(key_cache.dtype).itemsize * 8
    item_bits_v = np.dtype(value_cache.dtype).itemsize * 8
    if head_size is None:
        head_size = key_cache.shape[-1] * item_bits_k // bits if bits else key_cache.shape[-1]
    if head_size_v is None:
        head_size_v = value_cache.shape[-1] * item_bits_v // bits if bits else value_cache.shape[-1]
    extras, operands = 0, []
    if seq_starts is not None:
        extras |= _ARG_SEQ_STARTS
        operands.append(seq_starts)
    more, scale_ops = _scales_and_planes(fmt, k_scale, v_scale, k_scale_plane, v_scale_plane,
                                         k_rotation_signs, v_rotation_signs)
    extras |= more
    operands += scale_ops
    out_k = jax.ShapeDtypeStruct((int(num_rows), heads, int(head_size)), dtype)
    out_v = jax.ShapeDtypeStruct((int(num_rows), heads, int(head_size_v)), dtype)
    aliases = {}
    if fill is not None:
        extras |= _ARG_OUT_INIT
        first = 4 + len(operands)
        operands += [jnp.full(out_k.shape, fill, dtype), jnp.full(out_v.shape, fill, dtype)]
        aliases = {first: 0, first + 1: 1}
    call = _ffi.ffi_call(GATHER_KV_TARGET, (out_k, out_v), input_output_aliases=aliases or None)
    flags = _ROTATED_DOMAIN if rotated_domain else 0
    out = call(key_cache, value_cache, block_table, cu_seq_lens, *operands,
               format=np.int64(int(fmt)), layout=np.int64(int(lay)), extras=np.int64(extras),
               flags=np.int64(flags))
    return out[0], out[1]
