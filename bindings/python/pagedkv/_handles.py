"""Pythonic handles: Pool, BlockTable, Slots (context managers with close())."""
from __future__ import annotations

import dataclasses
from typing import Any, Iterable, List, Sequence, Union

import numpy as np

from . import _C
from ._core import CacheView, Device, Stream, Tensor
from ._enums import BlockOrder, CacheFormat, DeviceType, HeadLayout, ScaleMode, Status, Tier
from ._errors import PagedKVError

__all__ = ["LayerSpec", "PoolStats", "BatchMirror", "Pool", "BlockTable", "Slots"]


@dataclasses.dataclass(frozen=True)
class LayerSpec:
    """One layer of a pool's schema (``pkv_layer_spec``).

    Attributes:
        format: the layer's :class:`CacheFormat` (or its name).
        num_heads: KV heads.
        head_size: elements per K head row.
        head_size_v: elements per V head row (0 = head_size); must be 0 when ``k_only``.
        layout: :class:`HeadLayout` of the layer inside a block.
        scale_mode: FP8 formats: per tensor or per head (scales start at 1.0).
        k_only: no V (MLA latent cache).
    """

    format: Union[CacheFormat, str]  # noqa: A003
    num_heads: int
    head_size: int
    head_size_v: int = 0
    layout: HeadLayout = HeadLayout.NHD
    scale_mode: ScaleMode = ScaleMode.PER_TENSOR
    k_only: bool = False

    def _tuple(self) -> tuple:
        layout = HeadLayout[self.layout.upper()] if isinstance(self.layout, str) else HeadLayout(self.layout)
        return (
            _C.LAYER_K_ONLY if self.k_only else 0,
            int(CacheFormat.from_any(self.format)),
            int(layout),
            int(ScaleMode(self.scale_mode)),
            int(self.num_heads),
            int(self.head_size),
            int(self.head_size_v),
        )


@dataclasses.dataclass(frozen=True)
class PoolStats:
    """A snapshot of a pool's allocator counters (``pkv_pool_stats``)."""

    block_size: int
    num_layers: int
    total_blocks: int
    free_blocks: int
    total_host_blocks: int
    free_host_blocks: int
    bytes_per_block: int


@dataclasses.dataclass(frozen=True)
class BatchMirror:
    """A block table's device mirror (``pkv_batch_mirror``): views at fixed device addresses,
    valid while the table is open. Each tensor supports DLPack and the (CUDA) array interface:
    ``torch.from_dlpack(mirror.slot_mapping)``, ``np.from_dlpack(...)`` for a CPU pool."""

    block_table: Any  #: [max_batch, max_blocks] int32
    slot_mapping: Any  #: [max_tokens] int64, unused entries -1
    seq_lens: Any  #: [max_batch] int32
    query_start_loc: Any  #: [max_batch + 1] int32
    batch: int  #: rows filled by the last upload
    num_tokens: int  #: slots filled by the last upload


class _Handle:
    """Common lifetime logic: ``close()`` (idempotent), context manager, close at collection."""

    _handle: int = 0
    _kind = "handle"

    def _h(self) -> int:
        if not self._handle:
            raise PagedKVError(Status.INVALID_STATE, f"pagedkv.{self._kind}: the {self._kind} is closed")
        return self._handle

    @property
    def closed(self) -> bool:
        return not self._handle

    def _destroy(self, handle: int) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    def close(self) -> None:
        """Destroy the C handle. A second call does nothing."""
        if self._handle:
            self._destroy(self._handle)
            self._handle = 0

    def __enter__(self):
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass


def _tier(tier: Union[Tier, str]) -> int:
    return int(Tier[tier.upper()] if isinstance(tier, str) else Tier(tier))


class Pool(_Handle):
    """Cache memory for a schema of layers on one device, with a reference-counted block
    allocator and an optional pinned host tier (``pkv_pool``).

    >>> pool = pagedkv.Pool([pagedkv.LayerSpec("bf16", num_heads=8, head_size=128)] * 2,
    ...                     block_size=16, num_blocks=1024, device="cuda")
    >>> pagedkv.write_kv(pool.layer(0), key, value, slot_mapping)

    Closing a pool that still has open block tables or slots raises ``PagedKVError(BUSY)``.
    """

    _kind = "Pool"

    def __init__(
        self,
        layers: Sequence[LayerSpec],
        *,
        block_size: int,
        num_blocks: int = 0,
        memory_bytes: int = 0,
        num_host_blocks: int = 0,
        device: Any = "cpu",
    ) -> None:
        dev = Device.parse(device)
        self.device = dev
        self._handle = _C.pool_create(
            int(dev.type), dev.index, int(block_size), [l._tuple() for l in layers], int(num_blocks),
            int(memory_bytes), int(num_host_blocks),
        )
        self.layers = tuple(layers)

    def _destroy(self, handle: int) -> None:
        _C.pool_destroy(handle)

    def layer(self, index: int, tier: Union[Tier, str] = Tier.DEVICE) -> CacheView:
        """Layer ``index`` as a :class:`CacheView` (the HOST tier: a CPU view of the pinned
        tier). The view keeps the pool referenced; it is invalid once the pool is closed."""
        return CacheView(_C.pool_layer_view(self._h(), int(index), _tier(tier), self))

    def stats(self) -> PoolStats:
        return PoolStats(**_C.pool_stats(self._h()))

    @property
    def block_size(self) -> int:
        return self.stats().block_size

    @property
    def num_blocks(self) -> int:
        return self.stats().total_blocks

    def bytes_per_token(self, layer: int) -> int:
        """Bytes one token occupies in ``layer`` (K and V, scales excluded)."""
        return _C.pool_bytes_per_token(self._h(), int(layer))

    def set_scales(self, layer: int, k_scales: Any, v_scales: Any = None, *, stream: Stream = None) -> None:
        """Set an FP8 layer's scales (1 value or num_heads) from host values."""
        k = None if k_scales is None else np.atleast_1d(np.asarray(k_scales, dtype=np.float32))
        v = None if v_scales is None else np.atleast_1d(np.asarray(v_scales, dtype=np.float32))
        _C.pool_set_scales(self._h(), int(layer), k, v, stream)

    # ---- allocator
    def alloc_blocks(self, n: int, tier: Union[Tier, str] = Tier.DEVICE) -> np.ndarray:
        """Allocate ``n`` blocks (reference count 1); int32 ids. ``PagedKVError(OUT_OF_BLOCKS)``
        when fewer are free (nothing allocated)."""
        return _C.pool_alloc_blocks(self._h(), _tier(tier), int(n))

    def retain_blocks(self, ids: Iterable[int], tier: Union[Tier, str] = Tier.DEVICE) -> None:
        _C.pool_retain_blocks(self._h(), _tier(tier), np.asarray(ids, dtype=np.int32))

    def release_blocks(self, ids: Iterable[int], tier: Union[Tier, str] = Tier.DEVICE) -> None:
        _C.pool_release_blocks(self._h(), _tier(tier), np.asarray(ids, dtype=np.int32))

    def block_refcount(self, block: int, tier: Union[Tier, str] = Tier.DEVICE) -> int:
        return _C.pool_block_refcount(self._h(), _tier(tier), int(block))

    # ---- block moves
    def copy_blocks(self, pairs: Tensor, *, stream: Stream = None) -> None:
        """Copy blocks (all layers, one launch): ``pairs`` ``[P, 2]`` int32 / int64 (src, dst)
        on the pool's device."""
        _C.pool_copy_blocks(self._h(), pairs, stream)

    def swap_blocks(
        self, src_tier: Union[Tier, str], src_ids: Iterable[int], dst_tier: Union[Tier, str],
        dst_ids: Iterable[int], *, stream: Stream = None,
    ) -> None:
        """Move whole blocks between tiers (offload / reload) or inside the device tier."""
        _C.pool_swap_blocks(self._h(), _tier(src_tier), np.asarray(src_ids, dtype=np.int32), _tier(dst_tier),
                            np.asarray(dst_ids, dtype=np.int32), stream)

    def gather_blocks(
        self, buffer: Tensor, block_ids: Tensor, *, order: BlockOrder = BlockOrder.BLOCK_MAJOR, stream: Stream = None
    ) -> None:
        """Gather blocks (all layers) into a contiguous buffer of ``n * bytes_per_block`` bytes."""
        _C.pool_gather_blocks(buffer, int(order), self._h(), block_ids, stream)

    def scatter_blocks(
        self, block_ids: Tensor, buffer: Tensor, *, order: BlockOrder = BlockOrder.BLOCK_MAJOR, stream: Stream = None
    ) -> None:
        """Scatter a buffer written by :meth:`gather_blocks` back into blocks."""
        _C.pool_scatter_blocks(self._h(), block_ids, buffer, int(order), stream)

    # ---- children
    def block_table(self, *, max_batch: int = 0, max_blocks: int = 0, max_tokens: int = 0) -> "BlockTable":
        return BlockTable(self, max_batch=max_batch, max_blocks=max_blocks, max_tokens=max_tokens)

    def slots(self, max_requests: int) -> "Slots":
        return Slots(self, max_requests)

    def __repr__(self) -> str:
        if self.closed:
            return "Pool(closed)"
        s = self.stats()
        return (f"Pool({self.device!r}, layers={s.num_layers}, block_size={s.block_size}, "
                f"blocks={s.free_blocks}/{s.total_blocks} free)")


class BlockTable(_Handle):
    """Maps request ids to blocks of a pool and uploads a batch's metadata (``pkv_block_table``).

    Closing it releases every request's blocks.
    """

    _kind = "BlockTable"

    def __init__(self, pool: Pool, *, max_batch: int = 0, max_blocks: int = 0, max_tokens: int = 0) -> None:
        self.pool = pool  # keeps the pool alive while the table is
        self._handle = _C.block_table_create(pool._h(), int(max_batch), int(max_blocks), int(max_tokens))

    def _destroy(self, handle: int) -> None:
        _C.block_table_destroy(handle)

    def add(self, request: int) -> None:
        _C.block_table_add(self._h(), int(request))

    def append(self, request: int, n: int, *, stream: Stream = None) -> np.ndarray:
        """Append ``n`` tokens; returns their slots (int64). Copy-on-write of a shared last
        block is enqueued on ``stream``. ``PagedKVError(OUT_OF_BLOCKS)``: nothing changed."""
        return _C.block_table_append(self._h(), int(request), int(n), stream)

    def fork(self, parent: int, child: int) -> None:
        _C.block_table_fork(self._h(), int(parent), int(child))

    def truncate(self, request: int, n: int) -> None:
        _C.block_table_truncate(self._h(), int(request), int(n))

    def remove(self, request: int) -> None:
        _C.block_table_remove(self._h(), int(request))

    def num_tokens(self, request: int) -> int:
        return _C.block_table_num_tokens(self._h(), int(request))

    def blocks(self, request: int) -> np.ndarray:
        """A request's block ids (int32)."""
        return _C.block_table_blocks(self._h(), int(request))

    def upload(self, requests: Sequence[int], new_tokens: Sequence[int], *, stream: Stream = None) -> None:
        """Fill the device mirror for a batch (one async copy on ``stream``)."""
        _C.block_table_upload(self._h(), np.asarray(requests, dtype=np.uint64), np.asarray(new_tokens, dtype=np.int64),
                              stream)

    def mirror(self) -> BatchMirror:
        """The device mirror (fixed addresses; batch / num_tokens of the last upload)."""
        return BatchMirror(**_C.block_table_mirror(self._h(), self))


class Slots(_Handle):
    """Request-slot ids ``[0, max_requests)`` indexing per-request state (``pkv_slots``)."""

    _kind = "Slots"

    def __init__(self, pool: Pool, max_requests: int) -> None:
        self.pool = pool
        self._regions: List[Any] = []
        self._handle = _C.slots_create(pool._h(), int(max_requests))

    def _destroy(self, handle: int) -> None:
        _C.slots_destroy(handle)
        self._regions.clear()

    def register_region(self, base: Any, bytes_per_slot: int, slot_stride: int, fill: int = 0) -> None:
        """Register per-request state: slot s owns ``bytes_per_slot`` bytes at
        ``base + s * slot_stride``, reset to the 32-bit pattern ``fill`` on acquire. ``base`` is
        a tensor on the pool's device (kept referenced) or an int address."""
        if isinstance(base, int):
            ptr = base
        else:
            ptr, dev_type, dev_id = _C.tensor_data_ptr(base)
            pool_dev = self.pool.device
            same = (dev_type, dev_id) == (int(pool_dev.type), pool_dev.index) or (
                pool_dev.type != DeviceType.CUDA and dev_type != DeviceType.CUDA)
            if not same:
                raise PagedKVError(Status.INVALID_ARGUMENT,
                                   f"pagedkv.Slots.register_region: base is on {Device(dev_type, dev_id)!r}, "
                                   f"the pool on {pool_dev!r}")
            self._regions.append(base)
        _C.slots_register_region(self._h(), ptr, int(bytes_per_slot), int(slot_stride), int(fill) & 0xFFFFFFFF)

    def acquire(self, *, stream: Stream = None) -> int:
        """Take the lowest free slot and reset its regions on ``stream``.
        ``PagedKVError(OUT_OF_BLOCKS)`` when all are taken."""
        return _C.slots_acquire(self._h(), stream)

    def release(self, slot: int) -> None:
        _C.slots_release(self._h(), int(slot))
