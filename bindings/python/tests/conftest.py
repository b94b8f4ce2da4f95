"""Shared fixtures: tensor backends (NumPy, PyTorch CPU / CUDA, CuPy) and NumPy references.

Every test builds its inputs in NumPy (ml_dtypes for bf16 / fp8), moves them to the backend
under test, runs pagedkv, and compares the backend's result, brought back bit for bit, with a
reference computed in NumPy. CUDA backends appear only when a CUDA device is present.
"""
import os
import sys

import numpy as np
import pytest

import pagedkv

try:
    import ml_dtypes
except ImportError:  # pragma: no cover
    ml_dtypes = None

try:
    import torch
except ImportError:  # pragma: no cover
    torch = None

try:
    import cupy
    if cupy.cuda.runtime.getDeviceCount() < 1:
        cupy = None
except Exception:  # pragma: no cover
    cupy = None

HAS_CUDA = pagedkv.cuda_device_count() > 0 and pagedkv.build_info().get("cuda", "none") != "none"
TORCH_CUDA = torch is not None and HAS_CUDA and torch.cuda.is_available()

needs_ml_dtypes = pytest.mark.skipif(ml_dtypes is None, reason="ml_dtypes is not installed")
needs_torch = pytest.mark.skipif(torch is None, reason="torch is not installed")


def bf16():
    return np.dtype(ml_dtypes.bfloat16)


def e4m3():
    return np.dtype(ml_dtypes.float8_e4m3fn)


def e5m2():
    return np.dtype(ml_dtypes.float8_e5m2)


# ---------------------------------------------------------------------------------- backends


class NumpyBackend:
    name = "numpy"
    is_cuda = False

    def from_np(self, a):
        return np.array(a, copy=True)

    def to_np(self, t):
        return np.array(t, copy=True)

    def ptr(self, t):
        return t.__array_interface__["data"][0]

    def permute(self, t, dims):
        return t.transpose(dims)

    def sync(self):
        pass


_TORCH_VIEW = {}


def _torch_dtype_of(np_dtype):
    if torch is None:
        return None
    m = {
        np.dtype(np.float32): torch.float32, np.dtype(np.float16): torch.float16,
        np.dtype(np.int8): torch.int8, np.dtype(np.uint8): torch.uint8, np.dtype(np.int32): torch.int32,
        np.dtype(np.int64): torch.int64,
    }
    if np_dtype in m:
        return m[np_dtype]
    name = np_dtype.name
    if name == "bfloat16":
        return torch.bfloat16
    if name == "float8_e4m3fn":
        return torch.float8_e4m3fn
    if name == "float8_e5m2":
        return torch.float8_e5m2
    raise TypeError(np_dtype)


class TorchBackend:
    def __init__(self, device):
        self.device = device
        self.is_cuda = device != "cpu"
        self.name = f"torch-{device}"

    def from_np(self, a):
        a = np.ascontiguousarray(a)
        td = _torch_dtype_of(a.dtype)
        if a.dtype.itemsize == 2 and a.dtype.kind not in "fiu":
            t = torch.from_numpy(a.view(np.int16)).view(td)
        elif a.dtype.itemsize == 1 and a.dtype.kind not in "fiu":
            t = torch.from_numpy(a.view(np.uint8)).view(td)
        else:
            t = torch.from_numpy(a.copy())
        return t.to(self.device).clone()

    def to_np(self, t):
        t = t.detach().cpu()
        if t.dtype == torch.bfloat16:
            return t.view(torch.int16).numpy().view(bf16())
        if t.dtype == torch.float8_e4m3fn:
            return t.view(torch.uint8).numpy().view(e4m3())
        if t.dtype == torch.float8_e5m2:
            return t.view(torch.uint8).numpy().view(e5m2())
        return t.numpy().copy()

    def ptr(self, t):
        return t.data_ptr()

    def permute(self, t, dims):
        return t.permute(*dims)

    def sync(self):
        if self.is_cuda:
            torch.cuda.synchronize()


class CupyBackend:
    name = "cupy"
    is_cuda = True

    def from_np(self, a):
        if a.dtype.kind not in "fiu":
            raise pytest.skip.Exception("CuPy has no bf16 / fp8 dtypes")
        return cupy.asarray(a)

    def to_np(self, t):
        return cupy.asnumpy(t)

    def ptr(self, t):
        return t.data.ptr

    def permute(self, t, dims):
        return t.transpose(dims)

    def sync(self):
        cupy.cuda.get_current_stream().synchronize()


def _backend_params():
    params = [pytest.param(NumpyBackend(), id="numpy")]
    if torch is not None:
        params.append(pytest.param(TorchBackend("cpu"), id="torch-cpu"))
        if TORCH_CUDA:
            params.append(pytest.param(TorchBackend("cuda"), id="torch-cuda"))
    else:
        params.append(pytest.param(None, id="torch-cpu", marks=pytest.mark.skip(reason="torch is not installed")))
    if cupy is not None and HAS_CUDA:
        params.append(pytest.param(CupyBackend(), id="cupy"))
    return params


BACKENDS = _backend_params()
TORCH_BACKENDS = [p for p in BACKENDS if p.id.startswith("torch")]


@pytest.fixture(params=BACKENDS)
def backend(request):
    return request.param


@pytest.fixture(params=TORCH_BACKENDS or [pytest.param(None, marks=pytest.mark.skip(reason="torch is not installed"))])
def tbackend(request):
    return request.param


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


# ---------------------------------------------------------------------------------- references


def randn(rng, shape, dtype=np.float32, scale=1.0):
    """Random normal values, never exactly zero, rounded to `dtype`."""
    x = rng.standard_normal(shape).astype(np.float32) * np.float32(scale)
    x[x == 0] = 0.5
    return x.astype(dtype)


def poison(rng, shape, dtype):
    """Garbage that is not zero: random bytes reinterpreted (NaN-free for float dtypes)."""
    dt = np.dtype(dtype)
    if dt.kind in "fV" or dt.name in ("bfloat16", "float8_e4m3fn", "float8_e5m2"):
        return (rng.uniform(-7, 7, shape).astype(np.float32) + 11).astype(dt)
    return rng.integers(1, 120, size=shape).astype(dt)


def fp8_codes(x, scale, kind="e4m3"):
    """sat_finite_rne(x / scale) as uint8 codes (the float32 quotient, rounded once)."""
    dt, maxv = (e4m3(), 448.0) if kind == "e4m3" else (e5m2(), 57344.0)
    q = x.astype(np.float32) / np.asarray(scale, dtype=np.float32)
    q = np.clip(q, -maxv, maxv).astype(np.float32)
    return q.astype(dt).view(np.uint8)


def fp8_values(codes, scale, kind="e4m3"):
    dt = e4m3() if kind == "e4m3" else e5m2()
    return codes.view(dt).astype(np.float32) * np.asarray(scale, dtype=np.float32)


def slots_from(rng, num_blocks, block_size, t, pad_every=0):
    """Unique random slots (int64), with -1 padding every `pad_every` tokens."""
    slots = rng.choice(num_blocks * block_size, size=t, replace=False).astype(np.int64)
    if pad_every:
        slots[::pad_every] = -1
    return slots


def ref_write(cache, rows, slots, convert=lambda r: r):
    """cache: logical [NB, BS, H, D] NumPy array, written in place like pkv_write_kv."""
    nb, bs = cache.shape[0], cache.shape[1]
    for t, s in enumerate(slots):
        if s < 0 or s >= nb * bs:
            continue
        cache[s // bs, s % bs] = convert(rows[t])
    return cache


def repo_root():
    here = os.path.dirname(os.path.abspath(__file__))
    return os.path.abspath(os.path.join(here, "..", "..", ".."))


def header_path():
    inc = os.environ.get("PAGEDKV_INCLUDE_DIR")
    for cand in ([os.path.join(inc, "pagedkv.h")] if inc else []) + [os.path.join(repo_root(), "include", "pagedkv.h")]:
        if os.path.exists(cand):
            return cand
    return None


def pytest_report_header(config):
    lines = [f"pagedkv {pagedkv.__version__} from {os.path.dirname(pagedkv.__file__)}",
             f"pagedkv build: {pagedkv.build_info()}",
             f"cuda devices: {pagedkv.cuda_device_count()}; torch: {getattr(torch, '__version__', None)}; "
             f"torch cuda: {TORCH_CUDA}; cupy: {cupy is not None}; ml_dtypes: {ml_dtypes is not None}",
             f"python: {sys.version.split()[0]}"]
    return lines
