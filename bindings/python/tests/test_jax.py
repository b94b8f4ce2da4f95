"""pagedkv.jax: the XLA FFI write / gather targets from JAX, against the C API on NumPy arrays.

Every test runs on the CPU platform, and on the GPU when JAX sees one and the CUDA targets are
registered. Skipped when jax is not installed, or when libpagedkv was built without the XLA
handlers (PAGEDKV_REQUIRE_JAX=1 turns both skips into failures: the project's test command sets
it where it installed jax and built the handlers).
"""
import os
import subprocess
import sys

import numpy as np
import pytest

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # leave GPU memory to torch tests

import pagedkv  # noqa: E402
from pagedkv import CacheFormat, CacheView  # noqa: E402

from conftest import bf16, e4m3, fp8_codes, needs_ml_dtypes, poison, randn, ref_write, repo_root  # noqa: E402

_REQUIRE = os.environ.get("PAGEDKV_REQUIRE_JAX") == "1"
try:
    import jax
    import jax.numpy as jnp
    from jax import lax
except ImportError as e:  # pragma: no cover
    if _REQUIRE:
        raise
    pytest.skip(f"jax is not installed ({e})", allow_module_level=True)

if pagedkv.build_info().get("xla_ffi") != "1":
    if _REQUIRE:
        raise RuntimeError(f"PAGEDKV_REQUIRE_JAX=1 but libpagedkv has no XLA handlers: {pagedkv.build_info()}")
    pytest.skip("libpagedkv was built without the XLA FFI handlers", allow_module_level=True)

import pagedkv.jax as pkj  # noqa: E402

pytestmark = needs_ml_dtypes

NB, BS, H = 12, 16, 2
DK, DV = 64, 32  # K and V head sizes differ (powers of two: INT4 / INT2 need them)


def _gpu_devices():
    if "CUDA" not in pkj.registered_platforms():
        return []
    try:
        return jax.devices("gpu")
    except RuntimeError:
        return []


PLATFORMS = [pytest.param(jax.devices("cpu")[0], id="cpu")]
if _gpu_devices():
    PLATFORMS.append(pytest.param(_gpu_devices()[0], id="cuda"))


@pytest.fixture(params=PLATFORMS)
def device(request):
    return request.param


@pytest.fixture
def rng():
    return np.random.default_rng(4321)


def _put(x, device):
    return None if x is None else jax.device_put(x, device)


def _np(x):
    return np.asarray(jax.device_get(x))


def _bytes(a):
    return np.ascontiguousarray(a).view(np.uint8)


# (format, cache dtype, input dtype, extras): every format the XLA targets serve.
FORMATS = {
    "f32": (CacheFormat.F32, np.float32, np.float32, None),
    "f16": (CacheFormat.F16, np.float16, np.float16, None),
    "bf16_from_f32": (CacheFormat.BF16, "bf16", np.float32, None),
    "fp8_e4m3_per_tensor": (CacheFormat.FP8_E4M3, "e4m3", "bf16", "per_tensor"),
    "fp8_e5m2_per_head_u8": (CacheFormat.FP8_E5M2, np.uint8, np.float32, "per_head"),
    "int8_per_token_head": (CacheFormat.INT8_PER_TOKEN_HEAD, np.int8, "bf16", "planes"),
    "fp8_per_token_head": (CacheFormat.FP8_PER_TOKEN_HEAD, np.uint8, "bf16", "planes"),
    "int4_per_token_head": (CacheFormat.INT4_PER_TOKEN_HEAD, np.uint8, "bf16", "planes"),
    "int2_per_token_head": (CacheFormat.INT2_PER_TOKEN_HEAD, np.uint8, np.float32, "planes"),
}
_ROW_DIV = {CacheFormat.INT4_PER_TOKEN_HEAD: 2, CacheFormat.INT2_PER_TOKEN_HEAD: 4}


def _dt(d):
    return {"bf16": bf16(), "e4m3": e4m3()}.get(d, None) if isinstance(d, str) else np.dtype(d)


class Case:
    """Inputs of one write (NumPy), for the C API on NumPy and for pagedkv.jax."""

    def __init__(self, rng, name, layout, t=20, pad_every=4):
        self.fmt, cdt, idt, self.extra = FORMATS[name]
        self.layout = layout
        self.cdt, self.idt = _dt(cdt), _dt(idt)
        div = _ROW_DIV.get(self.fmt, 1)
        dims = (lambda d: (NB, BS, H, d)) if layout == "NHD" else (lambda d: (NB, H, BS, d))
        self.kc = poison(rng, dims(DK // div), self.cdt)
        self.vc = poison(rng, dims(DV // div), self.cdt)
        self.key = randn(rng, (t + 3, H, DK), self.idt, 4.0)  # 3 rows past the slot mapping
        self.value = randn(rng, (t + 3, H, DV), self.idt, 4.0)
        slots = rng.choice(NB * BS, size=t, replace=False).astype(np.int32)
        if pad_every:
            slots[::pad_every] = -1
        self.slots = slots
        self.k_scale = self.v_scale = self.kp = self.vp = None
        if self.extra in ("per_tensor", "per_head"):
            n = 1 if self.extra == "per_tensor" else H
            self.k_scale = rng.uniform(0.02, 0.1, n).astype(np.float32)
            self.v_scale = rng.uniform(0.02, 0.1, n).astype(np.float32)
        if self.extra == "planes":
            pshape = (NB, BS, H) if layout == "NHD" else (NB, H, BS)
            self.kp = poison(rng, pshape, np.float32)
            self.vp = poison(rng, pshape, np.float32)

    def c_view(self, kc, vc, kp, vp):
        return CacheView.from_tensors(
            kc.view(np.uint8) if self.cdt.itemsize == 1 else kc,
            vc.view(np.uint8) if self.cdt.itemsize == 1 else vc,
            format=self.fmt, layout=self.layout, k_scale=self.k_scale, v_scale=self.v_scale,
            k_scale_plane=kp, v_scale_plane=vp)

    def c_write(self):
        """The C API on NumPy copies: (kc, vc, kp, vp) after the write."""
        kc, vc = self.kc.copy(), self.vc.copy()
        kp = None if self.kp is None else self.kp.copy()
        vp = None if self.vp is None else self.vp.copy()
        pagedkv.write_kv(self.c_view(kc, vc, kp, vp), self.key, self.value, self.slots.astype(np.int64))
        return kc, vc, kp, vp

    def jax_kwargs(self, device):
        kw = dict(format=self.fmt.name.lower(), layout=self.layout)
        if self.k_scale is not None:
            kw.update(k_scale=_put(self.k_scale, device), v_scale=_put(self.v_scale, device))
        if self.kp is not None:
            kw.update(k_scale_plane=_put(self.kp, device), v_scale_plane=_put(self.vp, device))
        return kw

    def jax_write(self, device, jit=True):
        args = [_put(a, device) for a in (self.key, self.value, self.kc, self.vc, self.slots)]
        kw = self.jax_kwargs(device)
        planes = kw.pop("k_scale_plane", None), kw.pop("v_scale_plane", None)

        def step(key, value, kc, vc, slots, kp, vp):
            return pkj.write_kv(key, value, kc, vc, slots, k_scale_plane=kp, v_scale_plane=vp, **kw)

        fn = jax.jit(step, donate_argnums=(2, 3, 5, 6)) if jit else step
        return [_np(x) for x in fn(*args, *planes)]


@pytest.mark.parametrize("layout", ["NHD", "HND"])
@pytest.mark.parametrize("name", list(FORMATS))
def test_write_matches_c_api(device, rng, name, layout):
    case = Case(rng, name, layout)
    want = case.c_write()
    got = case.jax_write(device)
    assert len(got) == (4 if case.kp is not None else 2)
    for g, w in zip(got, want):
        assert g.dtype == w.dtype and g.shape == w.shape
        assert np.array_equal(_bytes(g), _bytes(w))
    # the write changed something, and padding / unused slots kept their poison
    assert not np.array_equal(_bytes(got[0]), _bytes(case.kc))


@pytest.mark.parametrize("layout", ["NHD", "HND"])
@pytest.mark.parametrize("name", list(FORMATS))
def test_gather_matches_c_api(device, rng, name, layout):
    case = Case(rng, name, layout, t=40, pad_every=0)
    kc, vc, kp, vp = case.c_write()
    b = 3
    bt = rng.permutation(NB)[: b * 4].reshape(b, 4).astype(np.int32)
    lens = np.array([17, 0, 33], np.int32)
    starts = np.array([5, 0, 2], np.int32)
    cu = np.concatenate([[0], np.cumsum(lens)]).astype(np.int32)
    rows = int(cu[-1]) + 6  # rows past cu[-1]: the fill value
    out_dt = np.float32 if case.fmt not in (CacheFormat.F16,) else np.float16
    want_k = np.zeros((rows, H, DK), out_dt)
    want_v = np.zeros((rows, H, DV), out_dt)
    pagedkv.gather_kv(want_k, want_v, case.c_view(kc, vc, kp, vp), bt, cu, starts)

    kw = case.jax_kwargs(device)
    if kp is not None:  # the planes the write produced
        kw.update(k_scale_plane=_put(kp, device), v_scale_plane=_put(vp, device))
    fn = jax.jit(lambda kc, vc, bt, cu, st: pkj.gather_kv(kc, vc, bt, cu, rows, seq_starts=st, dtype=out_dt, **kw))
    got_k, got_v = fn(*[_put(a, device) for a in (kc, vc, bt, cu, starts)])
    assert got_k.shape == (rows, H, DK) and got_v.shape == (rows, H, DV) and got_k.dtype == out_dt
    assert np.array_equal(_bytes(_np(got_k)), _bytes(want_k))
    assert np.array_equal(_bytes(_np(got_v)), _bytes(want_v))
    assert np.all(_np(got_k)[cu[-1]:] == 0)


def test_gather_default_dtype_and_fill(device, rng):
    kc = randn(rng, (NB, BS, H, DK), bf16())
    vc = randn(rng, (NB, BS, H, DV), bf16())
    bt = np.arange(NB, dtype=np.int32).reshape(1, NB)
    cu = np.array([0, 10], np.int32)
    k, v = pkj.gather_kv(*[_put(a, device) for a in (kc, vc, bt, cu)], 12, fill=-3.0)
    assert k.dtype == jnp.bfloat16 and v.shape == (12, H, DV)
    assert np.array_equal(_np(k)[:10].view(np.uint16), kc.reshape(-1, H, DK)[:10].view(np.uint16))
    assert np.all(_np(k)[10:].astype(np.float32) == -3.0)
    k2, _ = pkj.gather_kv(*[_put(a, device) for a in (kc, vc, bt, cu)], 12, fill=None)  # rows 10.. unspecified
    assert np.array_equal(_np(k2)[:10].view(np.uint16), kc.reshape(-1, H, DK)[:10].view(np.uint16))


def test_padding_slots_leave_the_cache_untouched(device, rng):
    kc = poison(rng, (NB, BS, H, DK), np.float32)
    vc = poison(rng, (NB, BS, H, DV), np.float32)
    key, value = randn(rng, (6, H, DK)), randn(rng, (6, H, DV))
    slots = np.array([-1, -1, 7, -5, -1, 40], np.int32)
    k2, v2 = jax.jit(pkj.write_kv, donate_argnums=(2, 3))(*[_put(a, device) for a in (key, value, kc, vc, slots)])
    want_k = ref_write(kc.copy(), key, slots)
    want_v = ref_write(vc.copy(), value, slots)
    assert np.array_equal(_np(k2), want_k) and np.array_equal(_np(v2), want_v)
    # all padding: nothing changes
    pad = np.full(6, -1, np.int32)
    k3, v3 = pkj.write_kv(*[_put(a, device) for a in (key, value, kc, vc, pad)])
    assert np.array_equal(_np(k3), kc) and np.array_equal(_np(v3), vc)
    # no token at all (T = 0), and a gather of no row
    none = np.zeros(0, np.int32)
    k4, _ = pkj.write_kv(*[_put(a, device) for a in (key[:0], value[:0], kc, vc, none)])
    assert np.array_equal(_np(k4), kc)
    g, _ = pkj.gather_kv(_put(kc, device), _put(vc, device), _put(np.zeros((1, 2), np.int32), device),
                         _put(np.zeros(2, np.int32), device), 0)
    assert g.shape == (0, H, DK)


def test_fp8_cache_dtype_is_the_format(device, rng):
    """A float8_e4m3fn cache needs no format=; the bytes are sat_finite_rne(x / scale)."""
    kc = np.zeros((NB, BS, H, DK), e4m3())
    vc = np.zeros((NB, BS, H, DK), e4m3())
    key = randn(rng, (5, H, DK), bf16(), 300.0)  # some codes saturate at 448 * scale
    scale = np.array([0.5], np.float32)
    slots = np.array([3, 4, 5, 30, 31], np.int32)
    k2, v2 = pkj.write_kv(*[_put(a, device) for a in (key, key, kc, vc, slots)], k_scale=_put(scale, device),
                          v_scale=0.25)
    assert k2.dtype == jnp.float8_e4m3fn
    want_k = ref_write(np.zeros((NB, BS, H, DK), np.uint8), key, slots, lambda r: fp8_codes(r, scale))
    want_v = ref_write(np.zeros((NB, BS, H, DK), np.uint8), key, slots, lambda r: fp8_codes(r, np.float32(0.25)))
    assert np.array_equal(_np(k2).view(np.uint8), want_k)
    assert np.array_equal(_np(v2).view(np.uint8), want_v)
    # and back: float(q) * scale
    bt = np.arange(NB, dtype=np.int32).reshape(1, NB)
    cu = np.array([0, 32], np.int32)
    gk, _ = pkj.gather_kv(k2, v2, _put(bt, device), _put(cu, device), 32, k_scale=_put(scale, device), v_scale=0.25)
    q = want_k.reshape(-1, H, DK)[:32].view(e4m3()).astype(np.float32) * scale[0]
    assert np.array_equal(_np(gk), q)


def test_donated_cache_keeps_its_buffer(device, rng):
    # The steady state of a serving loop: once the caches live in buffers a jitted step produced,
    # every donated step writes them in place. (The very first buffers may not be donatable: a
    # jax.device_put of a NumPy array can wrap the NumPy memory on the CPU, and jax 0.11 with a
    # GPU plugin was seen to copy jnp.zeros(device=cpu) caches once; np.asarray(cache) pins a
    # CPU buffer too, so nothing reads the caches into NumPy inside the loop.)
    kc = jnp.zeros((NB, BS, H, DK), jnp.float32, device=device)
    vc = jnp.zeros((NB, BS, H, DV), jnp.float32, device=device)
    step = jax.jit(lambda kc, vc, k, v, s: pkj.write_kv(k, v, kc, vc, s), donate_argnums=(0, 1))
    keys = []
    pk = pv = None
    for i in range(4):
        key, value = randn(rng, (4, H, DK)), randn(rng, (4, H, DV))
        keys.append(key)
        slots = np.arange(4, dtype=np.int32) + 4 * i
        old = kc
        kc, vc = step(kc, vc, _put(key, device), _put(value, device), _put(slots, device))
        assert old.is_deleted()
        if i == 0:
            pk, pv = kc.unsafe_buffer_pointer(), vc.unsafe_buffer_pointer()
        else:
            assert kc.unsafe_buffer_pointer() == pk and vc.unsafe_buffer_pointer() == pv
    assert np.array_equal(_np(kc)[0, :16], np.concatenate(keys))


def _decode_reference(prompt, steps_k, active):
    """Per request, the K rows it holds after the prompt and the decode steps."""
    seqs = []
    for r in range(len(prompt)):
        rows = list(prompt[r])
        rows += [steps_k[s, r] for s in range(steps_k.shape[0]) if active[s, r]]
        seqs.append(np.array(rows).reshape(-1, H, DK))
    return seqs


def test_decode_loop_jit_scan(device, rng):
    """Several requests, one token each per step, written in a jitted lax.scan (caches donated
    and carried), then gathered back exactly (bf16 cache, bf16 tokens)."""
    r_count, steps, bs, max_blocks = 3, 9, 4, 5
    nb = 20
    kc = poison(rng, (nb, bs, H, DK), bf16())
    vc = poison(rng, (nb, bs, H, DK), bf16())
    bt = rng.permutation(nb)[: r_count * max_blocks].reshape(r_count, max_blocks).astype(np.int32)
    prompt_lens = np.array([5, 2, 0], np.int32)
    prompt = [randn(rng, (int(n), H, DK), bf16()) for n in prompt_lens]
    # request 1 stops after 4 steps: its later tokens are padding (slot -1)
    active = np.ones((steps, r_count), bool)
    active[4:, 1] = False
    steps_k = randn(rng, (steps, r_count, H, DK), bf16())
    steps_v = -steps_k

    k, v = _put(kc, device), _put(vc, device)
    # prefill: every prompt token in one write
    pos = np.concatenate([np.arange(n) for n in prompt_lens]).astype(np.int32)
    req = np.concatenate([np.full(n, r) for r, n in enumerate(prompt_lens)]).astype(np.int32)
    slots = bt[req, pos // bs] * bs + pos % bs
    pk = np.concatenate(prompt)
    k, v = jax.jit(pkj.write_kv, donate_argnums=(2, 3))(_put(pk, device), _put(-pk, device), k, v, _put(slots, device))

    @jax.jit
    def decode(k, v, bt, lens, xs_k, xs_v, act):
        def body(carry, x):
            k, v, lens = carry
            xk, xv, a = x
            blk = jnp.take_along_axis(bt, (lens // bs)[:, None], axis=1)[:, 0]
            slot = jnp.where(a, blk * bs + lens % bs, -1)
            k, v = pkj.write_kv(xk, xv, k, v, slot)
            return (k, v, lens + a.astype(jnp.int32)), None

        (k, v, lens), _ = lax.scan(body, (k, v, lens), (xs_k, xs_v, act))
        return k, v, lens

    decode_donated = jax.jit(decode, donate_argnums=(0, 1))
    k, v, lens = decode_donated(k, v, _put(bt, device), _put(prompt_lens, device), _put(steps_k, device),
                                _put(steps_v, device), _put(active, device))
    want = _decode_reference(prompt, steps_k, active)
    assert list(_np(lens)) == [len(w) for w in want]
    cu = np.concatenate([[0], np.cumsum(_np(lens))]).astype(np.int32)
    gk, gv = pkj.gather_kv(k, v, _put(bt, device), _put(cu, device), int(cu[-1]))
    got_k, got_v = _np(gk), _np(gv)
    for r, w in enumerate(want):
        assert np.array_equal(got_k[cu[r]:cu[r + 1]].view(np.uint16), w.view(np.uint16)), r
        assert np.array_equal(got_v[cu[r]:cu[r + 1]].astype(np.float32), -w.astype(np.float32)), r


@pytest.mark.parametrize("fmt", ["bf16", "f32_from_bf16", "fp8_e4m3", "fp8_ds_mla"])
def test_write_mla_matches_c_api(device, rng, fmt):
    t = 13
    r, p = (512, 64) if fmt == "fp8_ds_mla" else (96, 32)
    kv_c = randn(rng, (t + 2, r), bf16(), 3.0)
    k_pe = randn(rng, (t + 2, p), bf16())
    slots = rng.choice(NB * BS, size=t, replace=False).astype(np.int32)
    slots[::5] = -1
    kw, scale = {}, None
    if fmt == "bf16":
        cache = poison(rng, (NB, BS, r + p), bf16())
    elif fmt == "f32_from_bf16":
        cache = poison(rng, (NB, BS, r + p), np.float32)
    elif fmt == "fp8_e4m3":
        cache = poison(rng, (NB, BS, r + p), np.uint8)
        scale = np.array([0.04], np.float32)
        kw = dict(format="fp8_e4m3", scale=_put(scale, device))
    else:
        cache = poison(rng, (NB, BS, 656), np.uint8)
        kw = dict(format="fp8_ds_mla")
    want = cache.copy()
    view = CacheView.from_mla(want, format=kw.get("format"), scale=scale)
    pagedkv.write_mla(view, kv_c, k_pe, slots.astype(np.int64))
    fn = jax.jit(lambda c, kc, kp, s: pkj.write_mla(kc, kp, c, s, **kw), donate_argnums=(0,))
    got = fn(*[_put(a, device) for a in (cache, kv_c, k_pe, slots)])
    assert got.dtype == cache.dtype and got.shape == cache.shape
    assert np.array_equal(_bytes(_np(got)), _bytes(want))
    assert not np.array_equal(_bytes(want), _bytes(cache))


def test_write_mla_errors(device, rng):
    cache = _put(np.zeros((NB, BS, 128), np.float32), device)
    kv_c, k_pe = _put(randn(rng, (3, 96)), device), _put(randn(rng, (3, 16)), device)
    slots = _put(np.arange(3, dtype=np.int32), device)
    _raises(lambda: pkj.write_mla(kv_c, k_pe, cache, slots), "pagedkv.write_mla", "head rows hold")
    _raises(lambda: pkj.write_mla(kv_c[0], k_pe[0], cache, slots), "kv_c must be 2-D")
    _raises(lambda: pkj.write_mla(kv_c, k_pe, cache, slots, scale=2.0), "a scale is for the fp8")
    u8 = _put(np.zeros((NB, BS, 600), np.uint8), device)
    _raises(lambda: pkj.write_mla(kv_c, k_pe, u8, slots, format="fp8_ds_mla"), "656")
    ok = pkj.write_mla(kv_c, _put(randn(rng, (3, 32)), device), cache, slots)
    assert np.array_equal(_np(ok)[0, :3, :96], _np(kv_c))


# ---------------------------------------------------------------------------------- errors


def _raises(fn, *needles):
    with pytest.raises(Exception) as ei:
        jax.block_until_ready(fn())
    msg = str(ei.value)
    for n in needles:
        assert n in msg, msg
    return msg


def test_errors_are_python_exceptions(device, rng):
    kc = _put(np.zeros((NB, BS, H, DK), np.float32), device)
    vc = _put(np.zeros((NB, BS, H, DK), np.float32), device)
    key = _put(randn(rng, (4, H, DK)), device)
    slots = _put(np.arange(4, dtype=np.int32), device)
    write = pkj.write_kv
    # wrong input dtype (checked by the C API), wrong rank, wrong slot dtype
    _raises(lambda: write(key.astype(jnp.int32), key.astype(jnp.int32), kc, vc, slots), "pagedkv.write_kv", "key")
    _raises(lambda: write(key[0], key[0], kc, vc, slots), "pagedkv.write_kv: key must be 3-D")
    _raises(lambda: write(key, key, kc, vc, slots.astype(jnp.float32)), "slot_mapping dtype")
    # mismatched caches, heads, head size
    _raises(lambda: write(key, key, kc, vc[:3], slots), "differ in num_blocks")
    _raises(lambda: write(key[:, :1], key[:, :1], kc, vc, slots), "pagedkv.write_kv")
    _raises(lambda: write(key[..., :32], key[..., :32], kc, vc, slots), "head rows hold")
    # a cache dtype that is not the format's
    _raises(lambda: write(key, key, kc, vc, slots, format="bf16"), "must be bfloat16")
    # FP8: scale length
    u8 = _put(np.zeros((NB, BS, H, DK), np.uint8), device)
    _raises(lambda: write(key, key, u8, u8, slots, format="fp8_e4m3", k_scale=_put(np.ones(H + 1, np.float32), device)),
            "k_scale must hold 1")
    # per-token-head without planes; scales on a plain cache
    _raises(lambda: write(key, key, u8, u8, slots, format="int8_per_token_head"), "needs k_scale_plane")
    _raises(lambda: write(key, key, kc, vc, slots, k_scale=2.0), "k_scale / v_scale are for the fp8")
    # python-side argument errors
    with pytest.raises(ValueError, match="no implied format"):
        write(key, key, u8, u8, slots)
    with pytest.raises(ValueError, match="NHD"):
        write(key, key, kc, vc, slots, layout="XYZ")
    with pytest.raises(ValueError):
        write(key, key, kc, vc, slots, format="not_a_format")
    # gather: bad block table dtype, wrong output rank via head_size mismatch
    bt = _put(np.zeros((1, 2), np.float32), device)
    cu = _put(np.array([0, 3], np.int32), device)
    _raises(lambda: pkj.gather_kv(kc, vc, bt, cu, 4), "pagedkv.gather_kv", "block_table")
    _raises(lambda: pkj.gather_kv(kc, vc, bt.astype(jnp.int32), cu, 4, head_size=32), "head rows hold")
    # the process is alive and the targets still work
    k2, _ = write(key, key, kc, vc, slots)
    assert np.array_equal(_np(k2)[0, :4], _np(key))


def test_raw_target_errors(device, rng):
    """The handlers' own checks, through jax.ffi.ffi_call directly (no Python-side help)."""
    kc = _put(np.zeros((NB, BS, H, DK), np.float32), device)
    key = _put(randn(rng, (4, H, DK)), device)
    slots = _put(np.arange(4, dtype=np.int32), device)
    sds = jax.ShapeDtypeStruct(kc.shape, kc.dtype)
    attrs = dict(format=np.int64(1), layout=np.int64(0), extras=np.int64(0), flags=np.int64(0))

    def call(aliases=None, **over):
        a = dict(attrs, **over)
        return jax.ffi.ffi_call(pkj.WRITE_KV_TARGET, (sds, sds), input_output_aliases=aliases)(
            key, key, kc, kc + 0, slots, **a)

    _raises(lambda: call({2: 0, 3: 1}, format=np.int64(99)), "pagedkv.write_kv", "format")
    _raises(lambda: call({2: 0, 3: 1}, layout=np.int64(7)), "attribute layout=7")
    _raises(lambda: call({2: 0, 3: 1}, extras=np.int64(0x40)), "attribute extras=64")
    _raises(lambda: call({2: 0, 3: 1}, extras=np.int64(pkj._ARG_K_SCALE)), "optional operands")
    _raises(lambda: call({2: 0, 3: 1}, format=np.int64(int(CacheFormat.FP8_DS_MLA))), "fp8_ds_mla")
    _raises(lambda: call(None), "must alias operand 2")


def test_registration():
    assert "cpu" in pkj.registered_platforms()
    if pagedkv.build_info().get("cuda", "none") == "none":
        assert pkj.cuda_registration_error()
    elif _gpu_devices():
        assert "CUDA" in pkj.registered_platforms()


@pytest.mark.parametrize("fmt", ["bf16", "fp8_e4m3", "int8_per_token_head"])
def test_jax_example_runs(fmt):
    example = os.path.join(repo_root(), "examples", "jax", "decode_loop.py")
    if not os.path.exists(example):
        pytest.skip("examples/jax not found")
    r = subprocess.run([sys.executable, example, "--format", fmt], capture_output=True, text=True, timeout=300,
                       env=dict(os.environ, XLA_PYTHON_CLIENT_PREALLOCATE="false"))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "decode_loop: OK" in r.stdout
