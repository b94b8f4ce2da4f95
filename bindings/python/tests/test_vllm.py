"""pagedkv.vllm: vLLM's cache-op signatures and semantics (tests/kernels/attention/test_cache.py
style: random unique slots, scales from amax, reference by indexing), on every backend."""
import numpy as np
import pytest

import pagedkv
from pagedkv import vllm as ops

from conftest import (bf16, fp8_codes, fp8_values, needs_ml_dtypes, poison, randn, ref_write, slots_from)

pytestmark = needs_ml_dtypes

NB, BS, H, T = 64, 16, 4, 42


def _dt(name):
    return {"f32": np.dtype(np.float32), "bf16": bf16(), "f16": np.dtype(np.float16)}[name]


def _kind(kv_cache_dtype):
    return "e5m2" if kv_cache_dtype == "fp8_e5m2" else "e4m3"


# (kv_cache_dtype, scale_type): per-head scales only matter for fp8
_CACHE_MODES = [("auto", "tensor"), ("fp8", "tensor"), ("fp8", "attn_head"), ("fp8_e5m2", "tensor"),
                ("fp8_e5m2", "attn_head")]


@pytest.mark.parametrize("kv_cache_dtype, scale_type", _CACHE_MODES)
@pytest.mark.parametrize("layout", ["NHD", "HND", "interleaved"])
@pytest.mark.parametrize("head_size", [64, 80])
@pytest.mark.parametrize("dtype", ["bf16", "f32"])
def test_reshape_and_cache_flash(backend, rng, kv_cache_dtype, layout, head_size, dtype, scale_type):
    dt = _dt(dtype)
    fp8 = kv_cache_dtype != "auto"
    cdt = np.dtype(np.uint8) if fp8 else dt
    d = head_size
    key, value = randn(rng, (T + 2, H, d), dt), randn(rng, (T + 2, H, d), dt)  # 2 graph-padding rows
    slots = slots_from(rng, NB, BS, T, pad_every=9)
    n = H if scale_type == "attn_head" else 1
    if scale_type == "attn_head":
        k_scale = (np.abs(key.astype(np.float32)).max(axis=(0, 2)) / 64).astype(np.float32)
        v_scale = (np.abs(value.astype(np.float32)).max(axis=(0, 2)) / 64).astype(np.float32)
    else:
        k_scale = np.array([np.abs(key.astype(np.float32)).max() / 64], np.float32)
        v_scale = np.array([np.abs(value.astype(np.float32)).max() / 64], np.float32)
    assert k_scale.shape == (n,)

    if layout == "NHD":
        kc_np, vc_np = poison(rng, (NB, BS, H, d), cdt), poison(rng, (NB, BS, H, d), cdt)
        kc, vc = backend.from_np(kc_np), backend.from_np(vc_np)
        k_view, v_view = kc, vc
        logical = lambda t: backend.to_np(t)  # noqa: E731
    elif layout == "HND":  # allocated [NB, H, BS, D], passed as the permuted [NB, BS, H, D] view
        kc_np = poison(rng, (NB, H, BS, d), cdt).transpose(0, 2, 1, 3).copy()
        vc_np = poison(rng, (NB, H, BS, d), cdt).transpose(0, 2, 1, 3).copy()
        kc = backend.from_np(np.ascontiguousarray(kc_np.transpose(0, 2, 1, 3)))
        vc = backend.from_np(np.ascontiguousarray(vc_np.transpose(0, 2, 1, 3)))
        k_view, v_view = backend.permute(kc, (0, 2, 1, 3)), backend.permute(vc, (0, 2, 1, 3))
        logical = lambda t: backend.to_np(t).transpose(0, 2, 1, 3)  # noqa: E731
    else:  # FlashInfer-style [NB, 2, BS, H, D]: key_cache = kv[:, 0] (block stride 2*BS*H*D)
        kv_np = poison(rng, (NB, 2, BS, H, d), cdt)
        kc_np, vc_np = kv_np[:, 0].copy(), kv_np[:, 1].copy()
        kv = backend.from_np(kv_np)
        kc = kv
        k_view, v_view = kv[:, 0], kv[:, 1]
        logical = None

    ops.reshape_and_cache_flash(backend.from_np(key), backend.from_np(value), k_view, v_view, backend.from_np(slots),
                                kv_cache_dtype, backend.from_np(k_scale), backend.from_np(v_scale))
    backend.sync()
    if fp8:
        ref_write(kc_np, key, slots, lambda r: fp8_codes(r, k_scale.reshape(-1, 1), _kind(kv_cache_dtype)))
        ref_write(vc_np, value, slots, lambda r: fp8_codes(r, v_scale.reshape(-1, 1), _kind(kv_cache_dtype)))
    else:
        ref_write(kc_np, key, slots)
        ref_write(vc_np, value, slots)
    if layout == "interleaved":
        got = backend.to_np(kv)
        got_k, got_v = got[:, 0], got[:, 1]
    else:
        got_k, got_v = logical(kc), logical(vc)
    assert np.array_equal(got_k.view(np.uint8), kc_np.view(np.uint8))
    assert np.array_equal(got_v.view(np.uint8), vc_np.view(np.uint8))


def test_reshape_and_cache_flash_unaligned_rows(backend, rng):
    """vLLM issue #41257: H = 13, D = 46, bf16 (rows not 16-byte aligned)."""
    h, d = 13, 46
    key, value = randn(rng, (T, h, d), bf16()), randn(rng, (T, h, d), bf16())
    slots = slots_from(rng, 128, 16, T)
    kc_np, vc_np = poison(rng, (128, 16, h, d), bf16()), poison(rng, (128, 16, h, d), bf16())
    kc, vc = backend.from_np(kc_np), backend.from_np(vc_np)
    one = backend.from_np(np.ones(1, np.float32))
    ops.reshape_and_cache_flash(backend.from_np(key), backend.from_np(value), kc, vc,
                                backend.from_np(slots.astype(np.int32)), "auto", one, one)
    backend.sync()
    ref_write(kc_np, key, slots)
    ref_write(vc_np, value, slots)
    assert np.array_equal(backend.to_np(kc).view(np.uint16), kc_np.view(np.uint16))
    assert np.array_equal(backend.to_np(vc).view(np.uint16), vc_np.view(np.uint16))


@pytest.mark.parametrize("mode", ["int8_per_token_head", "fp8_per_token_head"])
def test_reshape_and_cache_flash_per_token_head(backend, rng, mode):
    """vLLM's inline-scale layout: kv [NB, 2, BS, H, D + 4] uint8, scale after each row's codes."""
    d, t = 64, 7
    key, value = randn(rng, (t, H, d), bf16(), 4.0), randn(rng, (t, H, d), bf16(), 4.0)
    slots = np.array([0, -1, 1, -1, 37, 5, 900], np.int64)  # the [0, -1, 1, -1] pattern of vLLM's test
    kv_np = poison(rng, (NB, 2, BS, H, d + 4), np.uint8)
    kv = backend.from_np(kv_np)
    one = backend.from_np(np.ones(1, np.float32))
    ops.reshape_and_cache_flash(backend.from_np(key), backend.from_np(value), kv[:, 0], kv[:, 1],
                                backend.from_np(slots), mode, one, one)
    backend.sync()
    got = backend.to_np(kv)
    qmax = 127.0 if mode.startswith("int8") else 448.0
    for ti, s in enumerate(slots):
        b, o = divmod(int(s), BS) if s >= 0 else (None, None)
        for side, x in ((0, key), (1, value)):
            row = x[ti].astype(np.float32)
            sc = np.maximum(np.abs(row).max(axis=-1) / np.float32(qmax), np.float32(1e-6)).astype(np.float32)
            if s < 0:
                continue
            assert np.array_equal(got[b, side, o, :, d:].copy().view(np.float32)[:, 0], sc)
            deq = (got[b, side, o, :, :d].view(np.int8).astype(np.float32) if qmax == 127
                   else fp8_values(np.ascontiguousarray(got[b, side, o, :, :d]), 1.0))
            assert np.all(np.abs(deq * sc[:, None] - row) <= sc[:, None] * (1.0 if qmax == 127 else 32.0))
    untouched = np.ones(NB * BS, bool)
    untouched[slots[slots >= 0]] = False
    for s in np.flatnonzero(untouched)[:50]:
        assert np.array_equal(got[s // BS, :, s % BS], kv_np[s // BS, :, s % BS])


@pytest.mark.parametrize("kv_cache_dtype", ["auto", "fp8"])
def test_reshape_and_cache_legacy(backend, rng, kv_cache_dtype):
    d = 64
    dt = bf16()
    fp8 = kv_cache_dtype == "fp8"
    cdt = np.dtype(np.uint8) if fp8 else dt
    x = 16 // cdt.itemsize
    key, value = randn(rng, (T, H, d), dt), randn(rng, (T, H, d), dt)
    slots = slots_from(rng, NB, BS, T, pad_every=8)
    kc_np, vc_np = poison(rng, (NB, H, d // x, BS, x), cdt), poison(rng, (NB, H, d, BS), cdt)
    kc, vc = backend.from_np(kc_np), backend.from_np(vc_np)
    k_scale, v_scale = np.array([0.02], np.float32), np.array([0.03], np.float32)
    ops.reshape_and_cache(backend.from_np(key), backend.from_np(value), kc, vc, backend.from_np(slots),
                          kv_cache_dtype, backend.from_np(k_scale), backend.from_np(v_scale))
    backend.sync()
    conv_k = (lambda r: fp8_codes(r, k_scale)) if fp8 else (lambda r: r)
    conv_v = (lambda r: fp8_codes(r, v_scale)) if fp8 else (lambda r: r)
    for ti, s in enumerate(slots):
        if s < 0:
            continue
        b, o = divmod(int(s), BS)
        kr, vr = conv_k(key[ti]), conv_v(value[ti])
        for j in range(d):
            kc_np[b, :, j // x, o, j % x] = kr[:, j]
        vc_np[b, :, :, o] = vr
    assert np.array_equal(backend.to_np(kc).view(np.uint8), kc_np.view(np.uint8))
    assert np.array_equal(backend.to_np(vc).view(np.uint8), vc_np.view(np.uint8))


@pytest.mark.parametrize("kv_cache_dtype", ["auto", "fp8", "fp8_ds_mla"])
def test_concat_and_cache_mla_and_gather(backend, rng, kv_cache_dtype):
    r, p = 512, 64
    kv_c, k_pe = randn(rng, (T, r), bf16(), 2.0), randn(rng, (T, p), bf16())
    slots = slots_from(rng, 16, BS, T, pad_every=10)
    scale = np.array([0.1], np.float32)
    entry, cdt = {"auto": (r + p, bf16()), "fp8": (r + p, np.dtype(np.uint8)),
                  "fp8_ds_mla": (656, np.dtype(np.uint8))}[kv_cache_dtype]
    cache_np = poison(rng, (16, BS, entry), cdt)
    cache = backend.from_np(cache_np)
    ops.concat_and_cache_mla(backend.from_np(kv_c), backend.from_np(k_pe), cache, backend.from_np(slots),
                             kv_cache_dtype, backend.from_np(scale))
    backend.sync()
    got = backend.to_np(cache)
    full = np.concatenate([kv_c, k_pe], axis=1)
    for ti, s in enumerate(slots):
        if s < 0:
            continue
        row = got[s // BS, s % BS]
        if kv_cache_dtype == "auto":
            assert np.array_equal(row.view(np.uint16), full[ti].view(np.uint16))
        elif kv_cache_dtype == "fp8":
            assert np.array_equal(row, fp8_codes(full[ti], scale))
        else:
            tiles = row[512:528].copy().view(np.float32)
            x = kv_c[ti].astype(np.float32).reshape(4, 128)
            want = np.maximum(np.abs(x).max(axis=1) / np.float32(448), np.finfo(np.float32).tiny)
            assert np.array_equal(tiles, want.astype(np.float32))
            assert np.array_equal(row[528:].copy().view(np.uint16), k_pe[ti].view(np.uint16))

    # gather back (current signature, with seq_starts), then the older (batch_size) one
    b = 3
    bt = np.stack([rng.permutation(16)[:4] for _ in range(b)]).astype(np.int32)
    lens = np.array([10, 0, 33], np.int32)
    starts = np.array([2, 0, 7], np.int32)
    cu = np.concatenate([[0], np.cumsum(lens)]).astype(np.int32)
    tok = np.repeat(np.arange(b), lens).astype(np.int32)
    width = 576
    out_np = poison(rng, (int(cu[-1]) + 3, width), bf16())
    out = backend.from_np(out_np)
    ops.gather_and_maybe_dequant_cache(cache, out, backend.from_np(bt), backend.from_np(cu), backend.from_np(tok),
                                       int(cu[-1]), kv_cache_dtype, backend.from_np(scale), backend.from_np(starts))
    backend.sync()
    ref = out_np.copy()
    for q in range(b):
        for i in range(lens[q]):
            pos = starts[q] + i
            row = got[bt[q, pos // BS], pos % BS]
            if kv_cache_dtype == "auto":
                ref[cu[q] + i] = row
            elif kv_cache_dtype == "fp8":
                ref[cu[q] + i] = fp8_values(row, scale).astype(bf16())
            else:
                tiles = row[512:528].copy().view(np.float32)
                lat = fp8_values(row[:512].copy(), 1.0).reshape(4, 128) * tiles[:, None]
                ref[cu[q] + i, :512] = lat.reshape(-1).astype(bf16())
                ref[cu[q] + i, 512:] = row[528:].copy().view(bf16())
    assert np.array_equal(backend.to_np(out).view(np.uint16), ref.view(np.uint16))

    out2 = backend.from_np(out_np)
    ops.gather_and_maybe_dequant_cache(cache, out2, backend.from_np(bt), backend.from_np(cu), b, kv_cache_dtype,
                                       backend.from_np(scale), backend.from_np(starts))
    backend.sync()
    assert np.array_equal(backend.to_np(out2).view(np.uint16), ref.view(np.uint16))


def test_copy_blocks(backend, rng):
    layers = 3
    kcs = [poison(rng, (NB, H, 8, BS, 8), bf16()) for _ in range(layers)]
    vcs = [poison(rng, (NB, H, 64, BS), bf16()) for _ in range(layers)]
    k, v = [backend.from_np(a) for a in kcs], [backend.from_np(a) for a in vcs]
    src = rng.choice(NB, 8, replace=False)
    rest = np.setdiff1d(np.arange(NB), src)
    dst = rng.choice(rest, 8, replace=False)
    mapping = np.stack([src, dst], axis=1).astype(np.int64)
    ops.copy_blocks(k, v, backend.from_np(mapping))
    backend.sync()
    for a, t in zip(kcs + vcs, k + v):
        ref = a.copy()
        ref[dst] = a[src]
        assert np.array_equal(backend.to_np(t).view(np.uint16), ref.view(np.uint16))
    mla = [poison(rng, (NB, BS, 576), bf16()) for _ in range(2)]
    m = [backend.from_np(a) for a in mla]
    ops.copy_blocks_mla(m, backend.from_np(mapping))
    backend.sync()
    for a, t in zip(mla, m):
        ref = a.copy()
        ref[dst] = a[src]
        assert np.array_equal(backend.to_np(t).view(np.uint16), ref.view(np.uint16))


def test_swap_blocks(backend, rng):
    src_np = poison(rng, (NB, BS, H, 32), np.float32)
    dst_np = poison(rng, (NB, BS, H, 32), np.float32)
    src, dst = backend.from_np(src_np), backend.from_np(dst_np)
    mapping = np.array([[3, 7], [10, 0], [63, 62]], np.int64)  # host memory, as vLLM requires
    block_bytes = BS * H * 32 * 4
    ops.swap_blocks(src, dst, block_bytes, mapping)
    backend.sync()
    ref = dst_np.copy()
    ref[mapping[:, 1]] = src_np[mapping[:, 0]]
    assert np.array_equal(backend.to_np(dst), ref)
    # the older signature: block size from src.stride(0)
    dst2 = backend.from_np(dst_np)
    ops.swap_blocks(src, dst2, mapping)
    backend.sync()
    assert np.array_equal(backend.to_np(dst2), ref)
    with pytest.raises(pagedkv.PagedKVError, match="outside"):
        ops.swap_blocks(src, dst2, block_bytes, np.array([[0, 64]], np.int64))


@pytest.mark.parametrize("kv_dtype", ["fp8", "fp8_e5m2"])
def test_convert_fp8_round_trip(backend, rng, kv_dtype):
    kind = _kind(kv_dtype)
    x = rng.uniform(-224, 224, (NB // 4, BS, H, 64)).astype(np.float32).astype(bf16())
    q = backend.from_np(np.zeros(x.shape, np.uint8))
    ops.convert_fp8(q, backend.from_np(x), 0.5, kv_dtype)
    backend.sync()
    codes = backend.to_np(q)
    assert np.array_equal(codes, fp8_codes(x, 0.5, kind))
    y = backend.from_np(np.zeros(x.shape, bf16()))
    ops.convert_fp8(y, q, 0.5, kv_dtype)
    backend.sync()
    want = fp8_values(codes, 0.5, kind).astype(bf16())
    assert np.array_equal(backend.to_np(y).view(np.uint16), want.view(np.uint16))
    assert np.allclose(backend.to_np(y).astype(np.float32), x.astype(np.float32), atol=1e-3, rtol=0.13)


def test_bad_kv_cache_dtype(backend, rng):
    kc = backend.from_np(np.zeros((4, 4, 1, 8), np.float32))
    key = backend.from_np(randn(rng, (2, 1, 8)))
    one = backend.from_np(np.ones(1, np.float32))
    with pytest.raises(pagedkv.PagedKVError, match="kv_cache_dtype") as info:
        ops.reshape_and_cache_flash(key, key, kc, kc, backend.from_np(np.arange(2)), "int3", one, one)
    assert info.value.status is pagedkv.Status.INVALID_ARGUMENT
    with pytest.raises(pagedkv.PagedKVError, match="implied format"):
        bad = backend.from_np(np.zeros((4, 4, 1, 8), np.uint8))
        ops.reshape_and_cache_flash(key, key, bad, bad, backend.from_np(np.arange(2)), "auto", one, one)
