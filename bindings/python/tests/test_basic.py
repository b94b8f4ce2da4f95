"""Package basics: version, build info, enums against the header, errors, tensor conversion."""
import os
import pickle
import re

import numpy as np
import pytest

import pagedkv
from pagedkv import _C

from conftest import bf16, e4m3, e5m2, header_path, needs_ml_dtypes, randn


def test_version_and_build_info():
    assert pagedkv.__version__ == _C.HEADER_VERSION
    assert re.fullmatch(r"\d+\.\d+\.\d+", pagedkv.__version__)
    assert ".".join(map(str, pagedkv.version())) == pagedkv.__version__
    info = pagedkv.build_info()
    assert info["version"] == pagedkv.__version__
    assert "cuda" in info and "cuda_archs" in info
    assert pagedkv.library_path().split("/")[-1].startswith("libpagedkv.so")
    # the package's own copy is loaded (RPATH $ORIGIN wins over LD_LIBRARY_PATH)
    assert os.path.dirname(pagedkv.library_path()) == os.path.dirname(os.path.realpath(_C.__file__))
    assert pagedkv.cuda_device_count() >= 0


def _header_enums():
    path = header_path()
    if path is None:
        pytest.skip("include/pagedkv.h not found")
    text = open(path).read()
    return {m.group(1): int(m.group(2), 0) for m in re.finditer(r"\b(PKV_[A-Z0-9_]+)\s*=\s*(0x[0-9A-Fa-f]+|\d+)", text)}


@pytest.mark.parametrize(
    "enum, prefix",
    [
        (pagedkv.Status, "PKV_ERROR_"),
        (pagedkv.DType, "PKV_DTYPE_"),
        (pagedkv.DeviceType, "PKV_DEVICE_"),
        (pagedkv.CacheFormat, "PKV_CACHE_FORMAT_"),
        (pagedkv.ScaleMode, "PKV_SCALE_"),
        (pagedkv.HeadLayout, "PKV_HEAD_LAYOUT_"),
        (pagedkv.Tier, "PKV_TIER_"),
        (pagedkv.BlockOrder, "PKV_BLOCK_ORDER_"),
    ],
)
def test_enums_match_header(enum, prefix):
    values = _header_enums()
    for member in enum:
        name = "PKV_SUCCESS" if member.name == "SUCCESS" else prefix + member.name
        assert values[name] == int(member), name
    # and the header has no member the Python enum lacks
    header_members = {k[len(prefix):] for k in values if k.startswith(prefix) and "FORCE32" not in k}
    header_members.discard("UNSET")
    assert header_members <= {m.name for m in enum}, header_members - {m.name for m in enum}


def test_status_names_from_library():
    for st in pagedkv.Status:
        assert _C.status_string(int(st)) == st.c_name


def test_dtype_names_and_sizes():
    for d in pagedkv.DType:
        assert _C.dtype_size_bits(int(d)) == 8 * d.itemsize
        assert pagedkv.DType.from_any(_C.dtype_name(int(d))) is d
    assert pagedkv.DType.from_any("bfloat16") is pagedkv.DType.BF16
    assert pagedkv.DType.from_any(np.dtype(np.float16)) is pagedkv.DType.F16
    with pytest.raises(ValueError):
        pagedkv.DType.from_any("complex64")


def test_cache_format_helpers():
    F = pagedkv.CacheFormat
    assert F.from_any("fp8") is F.FP8_E4M3
    assert F.from_any("int4_per_token_head") is F.INT4_PER_TOKEN_HEAD
    assert F.from_dtype("bf16") is F.BF16
    assert F.FP8_E5M2.is_fp8 and not F.BF16.is_fp8
    assert F.INT2_PER_TOKEN_HEAD.is_per_token_head and not F.FP8_DS_MLA.is_per_token_head
    with pytest.raises(ValueError):
        F.from_dtype("uint8")


def test_error_type():
    e = pagedkv.PagedKVError(1, "pkv_x: bad")
    assert isinstance(e, RuntimeError)
    assert e.status is pagedkv.Status.INVALID_ARGUMENT and e.message == "pkv_x: bad"
    assert "PKV_ERROR_INVALID_ARGUMENT" in str(e) and "pkv_x: bad" in str(e)
    e2 = pickle.loads(pickle.dumps(e))
    assert e2.status == e.status and e2.message == e.message
    assert pagedkv.PagedKVError(99, "future").status == 99


def test_library_error_carries_message(rng):
    k = np.ones((4, 2, 1, 8), np.float32)
    cache = pagedkv.CacheView.from_tensors(k, k.copy())
    key = randn(rng, (2, 1, 8))
    with pytest.raises(pagedkv.PagedKVError) as info:
        pagedkv.write_kv(cache, key, key, np.array([0, 1], np.float32))
    assert info.value.status is pagedkv.Status.INVALID_ARGUMENT
    assert "slot_mapping" in info.value.message and "pkv_write_kv" in info.value.message
    assert np.all(k == 1)  # nothing written


def test_describe_numpy_no_copy():
    a = np.arange(2 * 3 * 4, dtype=np.float32).reshape(2, 3, 4)
    d = pagedkv.describe(a)
    assert d["data"] == a.__array_interface__["data"][0]
    assert d["dtype"] is pagedkv.DType.F32 and d["device"] == (pagedkv.DeviceType.CPU, 0)
    assert d["shape"] == (2, 3, 4) and d["strides"] == (12, 4, 1) and d["source"] == "numpy"
    t = a.transpose(2, 0, 1)[::2]
    d = pagedkv.describe(t)
    assert d["shape"] == (2, 2, 3) and d["strides"] == (2, 12, 4)
    for dtype, want in [(np.float16, "F16"), (np.int8, "INT8"), (np.uint8, "UINT8"), (np.int32, "INT32"),
                        (np.int64, "INT64")]:
        assert pagedkv.describe(np.zeros(3, dtype))["dtype"].name == want


@needs_ml_dtypes
def test_describe_ml_dtypes():
    for dt, want in [(bf16(), "BF16"), (e4m3(), "FP8_E4M3"), (e5m2(), "FP8_E5M2")]:
        assert pagedkv.describe(np.zeros((2, 2), dt))["dtype"].name == want


def test_describe_rejects():
    with pytest.raises(pagedkv.PagedKVError, match="not supported"):
        pagedkv.describe(np.zeros(3, np.complex64))
    with pytest.raises(pagedkv.PagedKVError, match="not supported"):
        pagedkv.describe(np.zeros(3, bool))
    with pytest.raises(pagedkv.PagedKVError, match="dimensions"):
        pagedkv.describe(np.zeros((1,) * 7, np.float32))
    with pytest.raises(TypeError, match="must be a tensor"):
        pagedkv.describe([1.0, 2.0])
    with pytest.raises(TypeError):
        pagedkv.describe(None)


def test_array_interface_and_dlpack_objects():
    a = np.arange(6, dtype=np.int32).reshape(2, 3)

    class AI:  # only __array_interface__
        __array_interface__ = a.__array_interface__

    d = _C.describe(AI())
    assert d["source"] == "array_interface" and d["shape"] == (2, 3) and d["data"] == a.ctypes.data

    class DL:  # only __dlpack__ (NumPy as the producer)
        def __dlpack__(self, stream=None, max_version=None, **kw):
            assert stream is None  # CPU: no stream
            return a.__dlpack__(max_version=max_version) if max_version else a.__dlpack__()

        def __dlpack_device__(self):
            return a.__dlpack_device__()

    d = _C.describe(DL())
    assert d["source"] == "dlpack" and d["data"] == a.ctypes.data and d["strides"] == (3, 1)


def test_cuda_array_interface_parsing():
    # Only parsed here (never dereferenced): the pointer is taken as CUDA memory of device 0.
    class CAI:
        __cuda_array_interface__ = {"shape": (4, 2), "typestr": "<f2", "data": (0x1000, False),
                                    "strides": None, "version": 3}

    d = pagedkv.describe(CAI())
    assert d["source"] == "cuda_array_interface"
    assert d["device"] == (pagedkv.DeviceType.CUDA, 0) and d["dtype"] is pagedkv.DType.F16
    assert d["data"] == 0x1000 and d["strides"] == (2, 1)


def test_read_only_outputs_are_refused(rng):
    k = np.zeros((2, 4, 1, 8), np.float32)
    k.setflags(write=False)
    with pytest.raises(pagedkv.PagedKVError, match="read-only"):
        pagedkv.CacheView.from_tensors(k)


def test_stream_arguments():
    class CS:
        def __cuda_stream__(self):
            return (0, 0xBEEF)

    class TS:
        cuda_stream = 0xCAFE

    assert _C.resolve_stream(None, 1234) == 1234
    assert _C.resolve_stream(None, CS()) == 0xBEEF
    assert _C.resolve_stream(None, TS()) == 0xCAFE
    assert _C.resolve_stream(None, None) == 0
    # CPU tensors: default stream is the legacy default (NULL), no framework query
    assert _C.resolve_stream(np.zeros(2, np.float32), None) == 0
    with pytest.raises(TypeError):
        _C.resolve_stream(None, "stream")
    with pytest.raises(ValueError):
        _C.resolve_stream(None, -5)


def test_synchronize_cpu():
    pagedkv.synchronize()
    pagedkv.synchronize(0)


def test_default_rotation_signs():
    s = pagedkv.default_rotation_signs(128)
    assert s.dtype == np.float32 and s.shape == (128,)
    assert set(np.unique(s)) <= {-1.0, 1.0} and len(np.unique(s)) == 2
    assert np.array_equal(pagedkv.default_rotation_signs(64), s[:64])


def test_cache_view_fields():
    k = np.zeros((8, 16, 4, 80), np.float32)
    v = np.zeros((8, 4, 16, 64), np.float32)  # HND, other head size
    with pytest.raises(pagedkv.PagedKVError, match="value_cache"):
        pagedkv.CacheView.from_tensors(k, v)
    cv = pagedkv.CacheView.from_tensors(k.transpose(0, 2, 1, 3), v, layout="HND")
    assert cv.format is pagedkv.CacheFormat.F32 and cv.head_size == 80 and cv.head_size_v == 64
    assert cv.num_blocks == 8 and cv.block_size == 16 and cv.num_heads == 4 and cv.has_value
    assert cv.k_strides == (16 * 4 * 80 * 4, 4 * 80 * 4, 80 * 4)  # an NHD array seen as HND: NHD strides
    assert cv.v_strides == (4 * 16 * 64 * 4, 64 * 4, 16 * 64 * 4)
    assert cv.raw.k_data == k.ctypes.data and cv.raw.v_data == v.ctypes.data
    cv.check()
    assert "F32" in repr(cv)
    with pytest.raises(pagedkv.PagedKVError, match="last dimension"):
        pagedkv.CacheView.from_tensors(k.transpose(0, 1, 3, 2))


def test_device_parsing():
    D, T = pagedkv.Device, pagedkv.DeviceType
    assert D.parse("cpu") == (T.CPU, 0) and D.parse(None) == D(T.CPU)
    assert D.parse("cuda:1") == D(T.CUDA, 1) and D.parse("cuda").index == 0
    assert D.parse((2, 3)) == (T.CUDA, 3) and tuple(D.parse("cuda:3")) == (T.CUDA, 3)
    assert hash(D(T.CUDA, 1)) == hash(D.parse("cuda:1")) and repr(D(T.CUDA, 1)) == "Device(cuda:1)"

    class TorchLikeDevice:
        type = "cuda"
        index = 2

    assert D.parse(TorchLikeDevice()) == (T.CUDA, 2)
    with pytest.raises(ValueError):
        D.parse("tpu:0")
    with pytest.raises(AttributeError):
        D(T.CPU).index = 1
