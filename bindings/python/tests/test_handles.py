"""Pool, BlockTable and Slots: lifetime (close twice, context managers, BUSY), allocator, moves."""
import gc

import numpy as np
import pytest

import pagedkv
from pagedkv import LayerSpec, PagedKVError, Pool, Status, Tier

from conftest import HAS_CUDA, TORCH_CUDA, poison, randn

DEVICES = ["cpu"] + (["cuda"] if HAS_CUDA else [])


def _pool(device="cpu", **kw):
    layers = [LayerSpec("f32", num_heads=2, head_size=16), LayerSpec("bf16", num_heads=1, head_size=32, k_only=True),
              LayerSpec(pagedkv.CacheFormat.FP8_E4M3, num_heads=2, head_size=16, layout="HND",
                        scale_mode=pagedkv.ScaleMode.PER_HEAD)]
    args = dict(block_size=8, num_blocks=16, device=device)
    args.update(kw)
    return Pool(layers, **args)


def test_pool_basics_and_close_twice():
    pool = _pool()
    s = pool.stats()
    assert (s.block_size, s.num_layers, s.total_blocks, s.free_blocks) == (8, 3, 16, 16)
    assert pool.block_size == 8 and pool.num_blocks == 16
    assert pool.bytes_per_token(0) == 2 * 2 * 16 * 4 and pool.bytes_per_token(1) == 32 * 2
    view = pool.layer(2)
    assert view.format is pagedkv.CacheFormat.FP8_E4M3 and view.scale_mode is pagedkv.ScaleMode.PER_HEAD
    assert not pool.layer(1).has_value
    assert "Pool(" in repr(pool)
    pool.close()
    pool.close()  # no-op
    assert pool.closed and repr(pool) == "Pool(closed)"
    with pytest.raises(PagedKVError) as info:
        pool.stats()
    assert info.value.status is Status.INVALID_STATE


def test_pool_bad_params():
    with pytest.raises(PagedKVError) as info:
        Pool([LayerSpec("f32", num_heads=0, head_size=16)], block_size=8, num_blocks=4)
    assert info.value.status is Status.INVALID_ARGUMENT and "num_heads" in info.value.message
    with pytest.raises(ValueError):
        Pool([LayerSpec("f32", 1, 16)], block_size=8, num_blocks=4, device="tpu")
    if not HAS_CUDA and pagedkv.build_info()["cuda"] == "none":
        with pytest.raises(PagedKVError) as info:
            Pool([LayerSpec("f32", 1, 16)], block_size=8, num_blocks=4, device="cuda:0")
        assert info.value.status is Status.NOT_SUPPORTED


def test_context_managers_and_busy():
    with _pool() as pool:
        with pool.block_table(max_batch=4, max_blocks=4, max_tokens=32) as table:
            with pytest.raises(PagedKVError) as info:
                pool.close()
            assert info.value.status is Status.BUSY and "pkv_pool_destroy" in info.value.message
            assert not pool.closed
            table.add(1)
            table.append(1, 3)
        assert table.closed
        assert pool.stats().free_blocks == 16  # closing the table released its blocks
        slots = pool.slots(4)
        with pytest.raises(PagedKVError):
            pool.close()
        slots.close()
        slots.close()
    assert pool.closed


def test_allocator():
    with _pool() as pool:
        ids = pool.alloc_blocks(5)
        assert ids.dtype == np.int32 and len(set(ids.tolist())) == 5
        assert pool.stats().free_blocks == 11
        pool.retain_blocks(ids[:2])
        assert pool.block_refcount(int(ids[0])) == 2 and pool.block_refcount(int(ids[4])) == 1
        pool.release_blocks(ids)
        assert pool.block_refcount(int(ids[0])) == 1 and pool.block_refcount(int(ids[4])) == 0
        with pytest.raises(PagedKVError) as info:
            pool.alloc_blocks(100)
        assert info.value.status is Status.OUT_OF_BLOCKS
        assert pool.stats().free_blocks == 14  # nothing allocated by the failing call
        with pytest.raises(PagedKVError) as info:
            pool.release_blocks([ids[4]])
        assert info.value.status is Status.INVALID_ARGUMENT


@pytest.mark.parametrize("device", DEVICES)
def test_pool_write_gather_copy_swap(device, rng):
    torch = pytest.importorskip("torch") if device == "cuda" else None
    if device == "cuda" and not TORCH_CUDA:
        pytest.skip("needs torch with CUDA")
    conv = (lambda a: torch.from_numpy(a).to(device)) if device == "cuda" else (lambda a: a)
    back = (lambda t: t.cpu().numpy()) if device == "cuda" else (lambda a: a)
    with _pool(device, num_host_blocks=4) as pool, pool.block_table(max_batch=2, max_blocks=4,
                                                                    max_tokens=32) as table:
        view = pool.layer(0)
        table.add(10)
        slots = table.append(10, 12)
        assert slots.dtype == np.int64 and len(slots) == 12 and table.num_tokens(10) == 12
        blocks = table.blocks(10)
        assert len(blocks) == 2
        key, value = randn(rng, (12, 2, 16)), randn(rng, (12, 2, 16))
        pagedkv.write_kv(view, conv(key), conv(value), conv(slots))
        table.upload([10], [12])
        m = table.mirror()
        assert m.batch == 1 and m.num_tokens == 12
        bt = conv(np.ascontiguousarray(np.asarray(blocks, np.int32)[None, :]))
        cu = conv(np.array([0, 12], np.int32))
        out_k, out_v = conv(np.zeros((12, 2, 16), np.float32)), conv(np.zeros((12, 2, 16), np.float32))
        pagedkv.gather_kv(out_k, out_v, view, bt, cu)
        pagedkv.synchronize()
        assert np.array_equal(back(out_k), key) and np.array_equal(back(out_v), value)

        # copy-on-write: fork, then the child's append copies the shared partial block
        table.fork(10, 11)
        assert pool.block_refcount(int(blocks[1])) == 2
        table.append(11, 1)
        child = table.blocks(11)
        assert child[0] == blocks[0] and child[1] != blocks[1]
        bt2 = conv(np.ascontiguousarray(np.asarray(child, np.int32)[None, :]))
        out2 = conv(np.zeros((12, 2, 16), np.float32))
        pagedkv.gather_kv(out2, None, view, bt2, cu)
        pagedkv.synchronize()
        assert np.array_equal(back(out2), key)
        table.truncate(11, 4)
        assert table.num_tokens(11) == 4 and len(table.blocks(11)) == 1
        table.remove(11)

        # offload to the host tier and back into another block
        host = pool.alloc_blocks(2, Tier.HOST)
        pool.swap_blocks(Tier.DEVICE, blocks, Tier.HOST, host)
        fresh = pool.alloc_blocks(2)
        pool.swap_blocks("host", host, "device", fresh)
        out3 = conv(np.zeros((12, 2, 16), np.float32))
        pagedkv.gather_kv(out3, None, view, conv(np.ascontiguousarray(fresh[None, :])), cu)
        pagedkv.synchronize()
        assert np.array_equal(back(out3), key)
        # host-tier view sees the same rows
        hview = pool.layer(0, tier="host")
        assert hview.device.type is pagedkv.DeviceType.CPU

        # copy_blocks (all layers) and gather / scatter through a transfer buffer
        dst = pool.alloc_blocks(2)
        pool.copy_blocks(conv(np.stack([blocks, dst], axis=1).astype(np.int64)))
        bpb = pool.stats().bytes_per_block
        buf = conv(np.zeros(2 * bpb, np.uint8))
        pool.gather_blocks(buf, conv(dst.astype(np.int32)))
        dst2 = pool.alloc_blocks(2)
        pool.scatter_blocks(conv(dst2.astype(np.int64)), buf)
        out4 = conv(np.zeros((12, 2, 16), np.float32))
        pagedkv.gather_kv(out4, None, view, conv(np.ascontiguousarray(dst2[None, :])), cu)
        pagedkv.synchronize()
        assert np.array_equal(back(out4), key)


def test_mirror_is_dlpack_and_array_interface():
    with _pool() as pool, pool.block_table(max_batch=3, max_blocks=4, max_tokens=16) as table:
        table.add(5)
        table.add(6)
        table.append(5, 9)
        table.append(6, 3)
        table.upload([5, 6], [2, 3])
        m = table.mirror()
        sm = np.from_dlpack(m.slot_mapping)
        assert sm.shape == (16,) and sm.dtype == np.int64
        b5, b6 = table.blocks(5), table.blocks(6)
        pos5 = [7, 8]
        want = [int(b5[p // 8]) * 8 + p % 8 for p in pos5] + [int(b6[0]) * 8 + p for p in range(3)]
        assert sm[:5].tolist() == want and np.all(sm[5:] == -1)
        assert np.asarray(m.seq_lens)[:2].tolist() == [9, 3]
        assert np.asarray(m.query_start_loc)[:3].tolist() == [0, 2, 5]
        bt = np.asarray(m.block_table)
        assert bt.shape == (3, 4) and bt[0, :2].tolist() == b5.tolist()
        # the view keeps the table referenced
        del table
        gc.collect()
        assert np.from_dlpack(m.seq_lens)[0] == 9


def test_slots_reset_regions(rng):
    with _pool() as pool, pool.slots(3) as slots:
        state = poison(rng, (3, 8), np.uint32)
        slots.register_region(state, bytes_per_slot=16, slot_stride=32, fill=0xDEADBEEF)
        a = slots.acquire()
        b = slots.acquire()
        assert (a, b) == (0, 1)
        assert np.all(state[0, :4] == 0xDEADBEEF) and np.all(state[1, :4] == 0xDEADBEEF)
        before = state[2].copy()
        assert np.array_equal(state[2], before)
        slots.release(a)
        assert slots.acquire() == 0
        slots.acquire()
        with pytest.raises(PagedKVError) as info:
            slots.acquire()
        assert info.value.status is Status.OUT_OF_BLOCKS
        with pytest.raises(PagedKVError):
            slots.release(7)

        class OnGpu:  # memory of another device than the (CPU) pool's
            __cuda_array_interface__ = {"shape": (64,), "typestr": "|u1", "data": (0x1000, False), "version": 3}

        with pytest.raises(PagedKVError, match="register_region") as info:
            slots.register_region(OnGpu(), bytes_per_slot=16, slot_stride=16)
        assert info.value.status is Status.INVALID_ARGUMENT


def test_handles_are_collected(rng):
    pool = _pool()
    table = pool.block_table()
    view = pool.layer(0)
    del pool
    gc.collect()
    table.add(1)  # the table keeps its pool alive
    assert view.num_blocks == 16
    del table, view
    gc.collect()
