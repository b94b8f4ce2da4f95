"""pagedkv ops on every tensor backend, against NumPy references (ml_dtypes for bf16 / fp8)."""
import numpy as np
import pytest

import pagedkv
from pagedkv import CacheFormat, CacheView

from conftest import (bf16, e4m3, fp8_codes, fp8_values, needs_ml_dtypes, poison, randn, ref_write,
                      slots_from)

pytestmark = needs_ml_dtypes

NB, BS, H = 24, 16, 3


def _dtype(name):
    return {"f32": np.dtype(np.float32), "f16": np.dtype(np.float16), "bf16": bf16()}[name]


def _cache_pair(backend, rng, shape, dtype, layout):
    """Poisoned K and V caches in the physical layout; returns (k, v, k_np_logical, v_np_logical)."""
    nb, bs, h, d = shape
    phys = (nb, bs, h, d) if layout == "NHD" else (nb, h, bs, d)
    k_np, v_np = poison(rng, phys, dtype), poison(rng, phys, dtype)
    to_logical = (lambda a: a) if layout == "NHD" else (lambda a: a.transpose(0, 2, 1, 3))
    return backend.from_np(k_np), backend.from_np(v_np), to_logical(k_np).copy(), to_logical(v_np).copy(), to_logical


@pytest.mark.parametrize("dtype", ["f32", "f16", "bf16"])
@pytest.mark.parametrize("head_size", [64, 80, 46])
@pytest.mark.parametrize("layout", ["NHD", "HND"])
@pytest.mark.parametrize("slot_dtype", [np.int64, np.int32])
def test_write_plain(backend, rng, dtype, head_size, layout, slot_dtype):
    dt = _dtype(dtype)
    t = 20
    k, v, k_ref, v_ref, to_logical = _cache_pair(backend, rng, (NB, BS, H, head_size), dt, layout)
    key = randn(rng, (t + 3, H, head_size), dt)  # 3 padding rows past the slot mapping
    value = randn(rng, (t + 3, H, head_size), dt)
    slots = slots_from(rng, NB, BS, t, pad_every=5).astype(slot_dtype)
    cache = CacheView.from_tensors(k, v, layout=layout)  # HND tensors are [NB, H, BS, D]
    assert cache.raw.k_data == backend.ptr(k) and cache.raw.v_data == backend.ptr(v)
    ptr_before = backend.ptr(k)
    pagedkv.write_kv(cache, backend.from_np(key), backend.from_np(value), backend.from_np(slots))
    backend.sync()
    assert backend.ptr(k) == ptr_before  # written in place
    ref_write(k_ref, key, slots)
    ref_write(v_ref, value, slots)
    got_k, got_v = to_logical(backend.to_np(k)), to_logical(backend.to_np(v))
    assert np.array_equal(got_k.view(np.uint8), k_ref.view(np.uint8))
    assert np.array_equal(got_v.view(np.uint8), v_ref.view(np.uint8))


def test_write_converts_with_rne(backend, rng):
    k_np = poison(rng, (NB, BS, H, 64), bf16())
    k = backend.from_np(k_np)
    key = randn(rng, (9, H, 64), np.float32, scale=3.0)
    slots = slots_from(rng, NB, BS, 9)
    pagedkv.write_kv(CacheView.from_tensors(k), backend.from_np(key), None, backend.from_np(slots))
    backend.sync()
    ref_write(k_np, key, slots, lambda r: r.astype(bf16()))
    assert np.array_equal(backend.to_np(k).view(np.uint16), k_np.view(np.uint16))


@pytest.mark.parametrize("kind", ["e4m3", "e5m2"])
@pytest.mark.parametrize("per_head", [False, True])
@pytest.mark.parametrize("in_dtype", ["bf16", "f32"])
def test_write_gather_fp8(backend, rng, kind, per_head, in_dtype):
    d, t = 80, 30
    dt = _dtype(in_dtype)
    fmt = CacheFormat.FP8_E4M3 if kind == "e4m3" else CacheFormat.FP8_E5M2
    k_np, v_np = poison(rng, (NB, BS, H, d), np.uint8), poison(rng, (NB, BS, H, d), np.uint8)
    key, value = randn(rng, (t, H, d), dt, 40.0), randn(rng, (t, H, d), dt, 40.0)
    n = H if per_head else 1
    ks = (np.abs(key.astype(np.float32)).max() / 64 * rng.uniform(0.5, 1.5, n)).astype(np.float32)
    vs = (np.abs(value.astype(np.float32)).max() / 64 * rng.uniform(0.5, 1.5, n)).astype(np.float32)
    slots = slots_from(rng, NB, BS, t, pad_every=7)
    k, v = backend.from_np(k_np), backend.from_np(v_np)
    cache = CacheView.from_tensors(k, v, format=fmt, k_scale=backend.from_np(ks), v_scale=backend.from_np(vs))
    assert cache.scale_mode == (pagedkv.ScaleMode.PER_HEAD if per_head else pagedkv.ScaleMode.PER_TENSOR)
    pagedkv.write_kv(cache, backend.from_np(key), backend.from_np(value), backend.from_np(slots))
    backend.sync()
    ksb, vsb = ks.reshape(-1, 1), vs.reshape(-1, 1)  # broadcast over [H, D] rows
    ref_write(k_np, key, slots, lambda r: fp8_codes(r, ksb, kind))
    ref_write(v_np, value, slots, lambda r: fp8_codes(r, vsb, kind))
    assert np.array_equal(backend.to_np(k), k_np)
    assert np.array_equal(backend.to_np(v), v_np)

    # gather everything back (f32): float(q) * scale, exactly
    b = 3
    bt = rng.permutation(NB)[: b * 4].reshape(b, 4).astype(np.int32)
    lens = np.array([17, 0, 40], np.int32)
    cu = np.concatenate([[0], np.cumsum(lens)]).astype(np.int32)
    rows = int(cu[-1]) + 5
    out_k_np, out_v_np = poison(rng, (rows, H, d), np.float32), poison(rng, (rows, H, d), np.float32)
    out_k, out_v = backend.from_np(out_k_np), backend.from_np(out_v_np)
    pagedkv.gather_kv(out_k, out_v, cache, backend.from_np(bt), backend.from_np(cu))
    backend.sync()
    for r in range(b):
        for i in range(lens[r]):
            blk, off = bt[r, i // BS], i % BS
            out_k_np[cu[r] + i] = fp8_values(k_np[blk, off], ksb, kind)
            out_v_np[cu[r] + i] = fp8_values(v_np[blk, off], vsb, kind)
    assert np.array_equal(backend.to_np(out_k), out_k_np)
    assert np.array_equal(backend.to_np(out_v), out_v_np)


@pytest.mark.parametrize("dtype", ["bf16", "f16", "f32"])
def test_gather_plain_with_seq_starts(backend, rng, dtype):
    dt, d = _dtype(dtype), 46
    k_np = randn(rng, (NB, BS, H, d), dt)
    v_np = randn(rng, (NB, BS, H, d), dt)
    bt = rng.permutation(NB)[:12].reshape(3, 4).astype(np.int32)
    lens = np.array([5, 33, 20], np.int32)
    starts = np.array([3, 0, 31], np.int32)
    cu = np.concatenate([[0], np.cumsum(lens)]).astype(np.int32)
    rows = int(cu[-1]) + 4  # an upper bound: the extra rows stay untouched
    ok_np, ov_np = poison(rng, (rows, H, d), dt), poison(rng, (rows, H, d), dt)
    ok, ov = backend.from_np(ok_np), backend.from_np(ov_np)
    cache = CacheView.from_tensors(backend.from_np(k_np), backend.from_np(v_np))
    counter = backend.from_np(np.zeros(1, np.int64))
    pagedkv.gather_kv(ok, ov, cache, backend.from_np(bt), backend.from_np(cu), backend.from_np(starts),
                      out_of_range_count=counter)
    backend.sync()
    for r in range(3):
        for i in range(lens[r]):
            p = starts[r] + i
            ok_np[cu[r] + i] = k_np[bt[r, p // BS], p % BS]
            ov_np[cu[r] + i] = v_np[bt[r, p // BS], p % BS]
    assert np.array_equal(backend.to_np(ok).view(np.uint8), ok_np.view(np.uint8))
    assert np.array_equal(backend.to_np(ov).view(np.uint8), ov_np.view(np.uint8))
    assert backend.to_np(counter)[0] == 0


def test_out_of_range_slots_are_counted(backend, rng):
    k_np = poison(rng, (4, 8, 2, 16), np.float32)
    k = backend.from_np(k_np)
    key = randn(rng, (4, 2, 16))
    slots = np.array([3, 4 * 8, 1000, 5], np.int64)  # two slots past the 32-slot cache
    counter = backend.from_np(np.array([7], np.int64))
    pagedkv.write_kv(CacheView.from_tensors(k), backend.from_np(key), None, backend.from_np(slots),
                     out_of_range_count=counter)
    backend.sync()
    assert backend.to_np(counter)[0] == 9
    ref_write(k_np, key, slots)
    assert np.array_equal(backend.to_np(k), k_np)


def _token_head_ref(x, kind):
    """Codes and scales of per-token-head INT8 / FP8 rows (the header's formula)."""
    x = x.astype(np.float32)
    amax = np.abs(x).max(axis=-1, keepdims=True)
    qmax = np.float32(127.0 if kind == "int8" else 448.0)
    s = np.maximum(amax / qmax, np.float32(1e-6)).astype(np.float32)
    y = (x * (np.float32(1) / s)).astype(np.float32)
    if kind == "int8":
        codes = np.clip(np.rint(y), -128, 127).astype(np.int8).view(np.uint8)
    else:
        codes = np.clip(y, -448, 448).astype(e4m3()).view(np.uint8)
    return codes, s[..., 0]


@pytest.mark.parametrize("kind", ["int8", "fp8"])
@pytest.mark.parametrize("inline", [False, True])
def test_per_token_head_write_gather(backend, rng, kind, inline):
    d, t = 64, 25
    fmt = CacheFormat.INT8_PER_TOKEN_HEAD if kind == "int8" else CacheFormat.FP8_PER_TOKEN_HEAD
    key, value = randn(rng, (t, H, d), bf16(), 5.0), randn(rng, (t, H, d), bf16(), 5.0)
    slots = slots_from(rng, NB, BS, t, pad_every=4)
    row = d + 4 if inline else d
    k_np, v_np = poison(rng, (NB, BS, H, row), np.uint8), poison(rng, (NB, BS, H, row), np.uint8)
    k, v = backend.from_np(k_np), backend.from_np(v_np)
    if inline:
        cache = CacheView.from_tensors(k, v, format=fmt, head_size=d, inline_scales=True)
        ksp = vsp = None
    else:
        ksp_np, vsp_np = poison(rng, (NB, BS, H), np.float32), poison(rng, (NB, BS, H), np.float32)
        ksp, vsp = backend.from_np(ksp_np), backend.from_np(vsp_np)
        cache = CacheView.from_tensors(k, v, format=fmt, k_scale_plane=ksp, v_scale_plane=vsp)
    assert cache.head_size == d
    pagedkv.write_kv(cache, backend.from_np(key), backend.from_np(value), backend.from_np(slots))
    backend.sync()
    kc, ks = _token_head_ref(key, kind)
    vc, vs = _token_head_ref(value, kind)
    got_k, got_v = backend.to_np(k), backend.to_np(v)
    for ti, s in enumerate(slots):
        if s < 0:
            continue
        b, o = divmod(int(s), BS)
        assert np.array_equal(got_k[b, o, :, :d], kc[ti]), (ti, s)
        assert np.array_equal(got_v[b, o, :, :d], vc[ti])
        if inline:
            assert np.array_equal(got_k[b, o, :, d:].copy().view(np.float32)[:, 0], ks[ti])
            assert np.array_equal(got_v[b, o, :, d:].copy().view(np.float32)[:, 0], vs[ti])
        else:
            assert np.array_equal(backend.to_np(ksp)[b, o], ks[ti])
            assert np.array_equal(backend.to_np(vsp)[b, o], vs[ti])
    # padding slots: rows untouched
    used = {int(s) for s in slots if s >= 0}
    for s in range(NB * BS):
        if s not in used:
            b, o = divmod(s, BS)
            assert np.array_equal(got_k[b, o], k_np[b, o])
            break

    # round trip through a gather: within one quantization step of the row's scale
    written = [i for i, s in enumerate(slots) if s >= 0]
    bt = np.arange(NB, dtype=np.int32).reshape(1, NB)
    cu = np.array([0, NB * BS], np.int32)
    out = backend.from_np(np.zeros((NB * BS, H, d), np.float32))
    pagedkv.gather_kv(out, None, cache, backend.from_np(bt), backend.from_np(cu))
    backend.sync()
    out_np = backend.to_np(out)
    for i in written:
        x = key[i].astype(np.float32)
        err = np.abs(out_np[slots[i]] - x)
        step = ks[i][:, None] * (1.0 if kind == "int8" else 32.0)
        assert np.all(err <= step), i


@pytest.mark.parametrize("fmt, bound", [(CacheFormat.INT4_PER_TOKEN_HEAD, 0.15), (CacheFormat.INT2_PER_TOKEN_HEAD, 0.6)])
def test_rotated_formats_round_trip(backend, rng, fmt, bound):
    d, t = 128, 16
    div = 2 if fmt == CacheFormat.INT4_PER_TOKEN_HEAD else 4
    key = randn(rng, (t, H, d), bf16())
    slots = np.arange(t, dtype=np.int64) * 3
    k = backend.from_np(poison(rng, (NB, BS, H, d // div), np.uint8))
    sp = backend.from_np(poison(rng, (NB, BS, H), np.float32))
    cache = CacheView.from_tensors(k, format=fmt, k_scale_plane=sp)
    assert cache.head_size == d and not cache.has_value
    pagedkv.write_kv(cache, backend.from_np(key), None, backend.from_np(slots))
    rows = t * 3
    bt = np.arange(NB, dtype=np.int32).reshape(1, NB)
    cu = np.array([0, rows], np.int32)
    out = backend.from_np(np.zeros((rows, H, d), np.float32))
    pagedkv.gather_kv(out, None, cache, backend.from_np(bt), backend.from_np(cu))
    backend.sync()
    got = backend.to_np(out)[slots]
    x = key.astype(np.float32)
    rel = np.linalg.norm(got - x) / np.linalg.norm(x)
    assert rel < bound, rel
    # the rotated domain is a different (orthogonal-up-to-D) basis
    rot = CacheView.from_tensors(k, format=fmt, k_scale_plane=sp, rotated_domain=True)
    out2 = backend.from_np(np.zeros((rows, H, d), np.float32))
    pagedkv.gather_kv(out2, None, rot, backend.from_np(bt), backend.from_np(cu))
    backend.sync()
    assert not np.allclose(backend.to_np(out2)[slots], got)


def test_int4_explicit_default_signs_match(backend, rng):
    d = 64
    key = randn(rng, (5, H, d), bf16())
    slots = np.arange(5, dtype=np.int64)
    outs = []
    for signs in (None, pagedkv.default_rotation_signs(d)):
        k = backend.from_np(np.zeros((NB, BS, H, d // 2), np.uint8))
        sp = backend.from_np(np.zeros((NB, BS, H), np.float32))
        cache = CacheView.from_tensors(k, format="int4_per_token_head", k_scale_plane=sp,
                                       k_rotation_signs=None if signs is None else backend.from_np(signs))
        pagedkv.write_kv(cache, backend.from_np(key), None, backend.from_np(slots))
        backend.sync()
        outs.append(backend.to_np(k))
    assert np.array_equal(outs[0], outs[1])


@pytest.mark.parametrize("fmt", ["bf16", "fp8"])
def test_write_gather_mla(backend, rng, fmt):
    r, p, t = 128, 32, 21
    kv_c, k_pe = randn(rng, (t, r), bf16()), randn(rng, (t, p), bf16())
    slots = slots_from(rng, NB, BS, t, pad_every=6)
    if fmt == "bf16":
        cache_np = poison(rng, (NB, BS, r + p), bf16())
        c = backend.from_np(cache_np)
        cache = CacheView.from_mla(c)
        conv = lambda row: row  # noqa: E731
    else:
        cache_np = poison(rng, (NB, BS, r + p), np.uint8)
        scale = np.array([0.05], np.float32)
        c = backend.from_np(cache_np)
        cache = CacheView.from_mla(c, format="fp8_e4m3", scale=backend.from_np(scale))
        conv = lambda row: fp8_codes(row, scale)  # noqa: E731
    assert cache.num_heads == 1 and cache.head_size == r + p and not cache.has_value
    pagedkv.write_mla(cache, backend.from_np(kv_c), backend.from_np(k_pe), backend.from_np(slots))
    backend.sync()
    entries = np.concatenate([kv_c, k_pe], axis=1)
    ref_write(cache_np, entries, slots, conv)
    assert np.array_equal(backend.to_np(c).view(np.uint8), cache_np.view(np.uint8))


def _ds_mla_ref(kv_c, k_pe):
    x = kv_c.astype(np.float32)
    out = np.zeros(656, np.uint8)
    for tile in range(4):
        seg = x[tile * 128:(tile + 1) * 128]
        s = np.float32(max(np.abs(seg).max() / np.float32(448), np.finfo(np.float32).tiny))
        out[tile * 128:(tile + 1) * 128] = fp8_codes(seg, s)
        out[512 + 4 * tile:516 + 4 * tile] = np.array([s], np.float32).view(np.uint8)
    out[528:] = k_pe.view(np.uint8)
    return out


def test_write_ds_mla(backend, rng):
    t = 9
    kv_c, k_pe = randn(rng, (t, 512), bf16(), 3.0), randn(rng, (t, 64), bf16())
    slots = slots_from(rng, 8, 4, t, pad_every=4)
    cache_np = poison(rng, (8, 4, 656), np.uint8)
    c = backend.from_np(cache_np)
    cache = CacheView.from_mla(c, format=CacheFormat.FP8_DS_MLA)
    assert cache.head_size == 576
    pagedkv.write_mla(cache, backend.from_np(kv_c), backend.from_np(k_pe), backend.from_np(slots))
    backend.sync()
    ref_write(cache_np, np.arange(t), slots, lambda i: _ds_mla_ref(kv_c[i], k_pe[i]))
    assert np.array_equal(backend.to_np(c), cache_np)


@pytest.mark.parametrize("dtype", ["bf16", "f32"])
def test_legacy_5d_layout(backend, rng, dtype):
    dt, d, t = _dtype(dtype), 64, 19
    x = 16 // dt.itemsize
    kc_np = poison(rng, (NB, H, d // x, BS, x), dt)
    vc_np = poison(rng, (NB, H, d, BS), dt)
    key, value = randn(rng, (t, H, d), dt), randn(rng, (t, H, d), dt)
    slots = slots_from(rng, NB, BS, t, pad_every=5)
    kc, vc = backend.from_np(kc_np), backend.from_np(vc_np)
    cache = CacheView.from_legacy_5d(kc, vc)
    assert cache.head_size == d and cache.block_size == BS
    pagedkv.write_kv(cache, backend.from_np(key), backend.from_np(value), backend.from_np(slots))
    backend.sync()
    for ti, s in enumerate(slots):
        if s < 0:
            continue
        b, o = divmod(int(s), BS)
        for h in range(H):
            for j in range(d):
                kc_np[b, h, j // x, o, j % x] = key[ti, h, j]
            vc_np[b, h, :, o] = value[ti, h]
    assert np.array_equal(backend.to_np(kc).view(np.uint8), kc_np.view(np.uint8))
    assert np.array_equal(backend.to_np(vc).view(np.uint8), vc_np.view(np.uint8))


def test_errors_leave_caches_untouched(backend, rng):
    k_np = poison(rng, (NB, BS, H, 32), np.float32)
    k, v = backend.from_np(k_np), backend.from_np(k_np.copy())
    cache = CacheView.from_tensors(k, v)
    key = backend.from_np(randn(rng, (4, H, 32)))
    slots = backend.from_np(np.arange(4, dtype=np.int64))
    cases = [
        (lambda: pagedkv.write_kv(cache, key, backend.from_np(randn(rng, (4, H, 32), np.float16)), slots), "dtype"),
        (lambda: pagedkv.write_kv(cache, backend.from_np(randn(rng, (4, H, 16))), key, slots), "head"),
        (lambda: pagedkv.write_kv(cache, key, None, slots), "value"),
        (lambda: pagedkv.write_kv(cache, key, key, backend.from_np(np.zeros((4, 1), np.int64))), "slot_mapping"),
    ]
    for call, word in cases:
        with pytest.raises(pagedkv.PagedKVError) as info:
            call()
        assert info.value.status is pagedkv.Status.INVALID_ARGUMENT
        assert word in info.value.message.lower(), info.value.message
    backend.sync()
    assert np.array_equal(backend.to_np(k), k_np) and np.array_equal(backend.to_np(v), k_np)


def test_copy_blocks_raw(backend, rng):
    caches_np = [poison(rng, (10, 4, 2, 8), np.float32), poison(rng, (10, 3, 5), bf16()),
                 poison(rng, (10, 7), np.uint8)]
    caches = [backend.from_np(c) for c in caches_np]
    pairs = np.array([[0, 5], [3, 9], [7, 1]], np.int64)
    pagedkv.copy_blocks(caches, backend.from_np(pairs))
    backend.sync()
    for c_np, c in zip(caches_np, caches):
        ref = c_np.copy()
        for s, dd in pairs:
            ref[dd] = c_np[s]
        assert np.array_equal(backend.to_np(c).view(np.uint8), ref.view(np.uint8))


def test_convert(backend, rng):
    x = randn(rng, (6, 40), np.float32, 30.0)
    scale = np.array([0.25], np.float32)
    q = backend.from_np(np.zeros((6, 40), np.uint8))
    pagedkv.convert(q, backend.from_np(x), backend.from_np(scale), dst_dtype="fp8_e4m3")
    backend.sync()
    codes = backend.to_np(q)
    assert np.array_equal(codes, fp8_codes(x, scale))
    y = backend.from_np(np.zeros((6, 40), bf16()))
    pagedkv.convert(y, q, backend.from_np(scale), src_dtype=pagedkv.DType.FP8_E4M3)
    backend.sync()
    assert np.array_equal(backend.to_np(y).view(np.uint16), fp8_values(codes, scale).astype(bf16()).view(np.uint16))
    z = backend.from_np(np.zeros((6, 40), np.float16))
    pagedkv.convert(z, y)
    backend.sync()
    assert np.array_equal(backend.to_np(z), backend.to_np(y).astype(np.float32).astype(np.float16))


def test_build_slot_mapping(backend, rng):
    bs = 16
    bt = rng.permutation(64)[:12].reshape(3, 4).astype(np.int32)
    seq_lens = np.array([20, 5, 33], np.int32)
    new = np.array([4, 5, 1], np.int32)
    qsl = np.concatenate([[0], np.cumsum(new)]).astype(np.int32)
    out = backend.from_np(np.full(14, 12345, np.int64))
    pagedkv.build_slot_mapping(out, backend.from_np(bt), backend.from_np(seq_lens), backend.from_np(qsl), bs)
    backend.sync()
    ref = np.full(14, -1, np.int64)
    for b in range(3):
        for i in range(qsl[b], qsl[b + 1]):
            pos = seq_lens[b] - new[b] + (i - qsl[b])
            ref[i] = bt[b, pos // bs] * bs + pos % bs
    assert np.array_equal(backend.to_np(out), ref)

    # CSR page table (FlashInfer style): request b owns pages indices[indptr[b]:indptr[b+1]]
    indptr = np.array([0, 2, 3], np.int32)
    indices = np.array([7, 2, 9], np.int32)
    last = np.array([3, 16], np.int32)
    app = np.array([0, 2, 5], np.int32)
    out = backend.from_np(np.full(6, 99, np.int32))
    pagedkv.build_slot_mapping_csr(out, backend.from_np(indptr), backend.from_np(indices), backend.from_np(last),
                                   backend.from_np(app), bs)
    backend.sync()
    # request 0: 16 + 3 = 19 tokens, new = the last 2 (positions 17, 18) -> page 2
    # request 1: 16 tokens, new = the last 3 (positions 13..15) -> page 9
    ref = np.array([2 * bs + 1, 2 * bs + 2, 9 * bs + 13, 9 * bs + 14, 9 * bs + 15, -1], np.int32)
    assert np.array_equal(backend.to_np(out), ref)
