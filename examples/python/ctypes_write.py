#!/usr/bin/env python3
"""Call libpagedkv.so from plain ctypes: no extension module, no NumPy, no compiler.

The C API (include/pagedkv.h) is a C ABI: C99 structs, 32-bit enums, int64 sizes, a status
return and a thread-local error message. This script mirrors the structs it needs with
ctypes.Structure, writes three tokens into a CPU K/V cache with pkv_write_kv (one of them a
padding slot), reads them back with pkv_gather_kv, and shows the error path.

    python3 examples/python/ctypes_write.py [path/to/libpagedkv.so]

The library is found from the command line, else $PAGEDKV_LIBRARY, else the loader's search
path (LD_LIBRARY_PATH, ldconfig), else the copy inside an installed `pagedkv` wheel.
"""
import ctypes
import glob
import importlib.util
import os
import sys

# ------------------------------------------------------------------------------ the C types
PKV_SUCCESS = 0
PKV_ERROR_INVALID_ARGUMENT = 1
PKV_DTYPE_F32, PKV_DTYPE_INT64 = 0, 8
PKV_DEVICE_CPU = 1
PKV_CACHE_FORMAT_F32 = 1
PKV_MAX_DIMS = 6


class Device(ctypes.Structure):
    _fields_ = [("type", ctypes.c_int), ("id", ctypes.c_int32)]


class Tensor(ctypes.Structure):
    _fields_ = [
        ("data", ctypes.c_void_p),
        ("dtype", ctypes.c_int),
        ("device", Device),
        ("ndim", ctypes.c_int32),
        ("shape", ctypes.c_int64 * PKV_MAX_DIMS),
        ("strides", ctypes.c_int64 * PKV_MAX_DIMS),
    ]


class CacheView(ctypes.Structure):
    _fields_ = [
        ("struct_size", ctypes.c_size_t),
        ("flags", ctypes.c_uint32),
        ("format", ctypes.c_int),
        ("device", Device),
        ("num_blocks", ctypes.c_int64),
        ("block_size", ctypes.c_int64),
        ("num_heads", ctypes.c_int64),
        ("head_size_k", ctypes.c_int64),
        ("head_size_v", ctypes.c_int64),
        ("k_data", ctypes.c_void_p),
        ("v_data", ctypes.c_void_p),
        ("k_stride_block", ctypes.c_int64), ("k_stride_slot", ctypes.c_int64), ("k_stride_head", ctypes.c_int64),
        ("v_stride_block", ctypes.c_int64), ("v_stride_slot", ctypes.c_int64), ("v_stride_head", ctypes.c_int64),
        ("scale_mode", ctypes.c_int),
        ("k_scale", ctypes.c_void_p),
        ("v_scale", ctypes.c_void_p),
        # appended after the first version (152 bytes)
        ("k_chunk_size", ctypes.c_int64), ("v_chunk_size", ctypes.c_int64),
        ("k_stride_chunk", ctypes.c_int64), ("v_stride_chunk", ctypes.c_int64),
        ("k_scale_plane", ctypes.c_void_p), ("v_scale_plane", ctypes.c_void_p),
        ("k_scale_stride_block", ctypes.c_int64), ("k_scale_stride_slot", ctypes.c_int64),
        ("k_scale_stride_head", ctypes.c_int64),
        ("v_scale_stride_block", ctypes.c_int64), ("v_scale_stride_slot", ctypes.c_int64),
        ("v_scale_stride_head", ctypes.c_int64),
        ("k_rotation_signs", ctypes.c_void_p), ("v_rotation_signs", ctypes.c_void_p),
    ]


def find_library(argv):
    if len(argv) > 1:
        return argv[1]
    if os.environ.get("PAGEDKV_LIBRARY"):
        return os.environ["PAGEDKV_LIBRARY"]
    for name in ("libpagedkv.so.0.1", "libpagedkv.so"):
        try:
            ctypes.CDLL(name)
            return name
        except OSError:
            pass
    spec = importlib.util.find_spec("pagedkv")  # an installed wheel carries the library (not imported)
    if spec is not None and spec.submodule_search_locations:
        for where in spec.submodule_search_locations:
            hits = sorted(glob.glob(os.path.join(where, "libpagedkv.so*")))
            if hits:
                return hits[0]
    sys.exit("ctypes_write: libpagedkv.so not found (pass its path or set PAGEDKV_LIBRARY)")


def load(path):
    lib = ctypes.CDLL(path)
    P = ctypes.POINTER
    lib.pkv_version.restype = ctypes.c_uint32
    lib.pkv_version_string.restype = ctypes.c_char_p
    lib.pkv_build_info.restype = ctypes.c_char_p
    lib.pkv_status_string.restype = ctypes.c_char_p
    lib.pkv_status_string.argtypes = [ctypes.c_int]
    lib.pkv_last_error_message.restype = ctypes.c_char_p
    lib.pkv_cache_view_init.argtypes = [P(CacheView), ctypes.c_size_t]
    lib.pkv_write_kv.argtypes = [P(CacheView), P(Tensor), P(Tensor), P(Tensor), P(ctypes.c_int64), ctypes.c_void_p]
    lib.pkv_gather_kv.argtypes = [P(Tensor), P(Tensor), P(CacheView), P(Tensor), P(Tensor), P(Tensor),
                                  P(ctypes.c_int64), ctypes.c_void_p]
    for fn in (lib.pkv_cache_view_init, lib.pkv_write_kv, lib.pkv_gather_kv):
        fn.restype = ctypes.c_int
    return lib


def tensor(buf, dtype, shape):
    """A contiguous pkv_tensor over a ctypes array (CPU)."""
    t = Tensor(ctypes.cast(buf, ctypes.c_void_p), dtype, Device(PKV_DEVICE_CPU, 0), len(shape))
    stride = 1
    for d in reversed(range(len(shape))):
        t.shape[d], t.strides[d] = shape[d], stride
        stride *= shape[d]
    return t


def check(lib, status, what):
    if status != PKV_SUCCESS:
        name = lib.pkv_status_string(status).decode()
        sys.exit(f"ctypes_write: {what} failed: {name}: {lib.pkv_last_error_message().decode()}")


def main(argv):
    lib = load(find_library(argv))
    version = lib.pkv_version()
    print(f"libpagedkv {lib.pkv_version_string().decode()} ({lib.pkv_build_info().decode()})")
    if version // 100 != 1:  # this script was written against the 0.1 ABI
        sys.exit(f"ctypes_write: ABI 0.1 expected, the library is {version}")

    nb, bs, h, d, t = 8, 4, 2, 8, 3
    cache_elems = nb * bs * h * d
    k_cache = (ctypes.c_float * cache_elems)(*([-1.0] * cache_elems))  # poisoned
    v_cache = (ctypes.c_float * cache_elems)(*([-1.0] * cache_elems))
    key = (ctypes.c_float * (t * h * d))(*[0.5 + i for i in range(t * h * d)])
    value = (ctypes.c_float * (t * h * d))(*[-0.25 - i for i in range(t * h * d)])
    slots = (ctypes.c_int64 * t)(5, 0, -1)  # token 2 is padding

    view = CacheView()
    check(lib, lib.pkv_cache_view_init(ctypes.byref(view), ctypes.sizeof(view)), "pkv_cache_view_init")
    view.format = PKV_CACHE_FORMAT_F32
    view.device = Device(PKV_DEVICE_CPU, 0)
    view.num_blocks, view.block_size, view.num_heads, view.head_size_k = nb, bs, h, d
    view.k_data = ctypes.cast(k_cache, ctypes.c_void_p)
    view.v_data = ctypes.cast(v_cache, ctypes.c_void_p)  # strides 0 = the NHD default

    kt, vt = tensor(key, PKV_DTYPE_F32, (t, h, d)), tensor(value, PKV_DTYPE_F32, (t, h, d))
    st = tensor(slots, PKV_DTYPE_INT64, (t,))
    check(lib, lib.pkv_write_kv(ctypes.byref(view), ctypes.byref(kt), ctypes.byref(vt), ctypes.byref(st), None, None),
          "pkv_write_kv")

    row = h * d
    ok = list(k_cache[5 * row:6 * row]) == list(key[0:row]) and list(k_cache[0:row]) == list(key[row:2 * row])
    ok = ok and list(v_cache[5 * row:6 * row]) == list(value[0:row])
    ok = ok and all(x == -1.0 for x in k_cache[row:5 * row])  # padding and untouched slots kept
    print(f"pkv_write_kv: slot 5 <- token 0, slot 0 <- token 1, token 2 skipped: {'ok' if ok else 'WRONG'}")

    # Gather request 0 = slots 0..5 of blocks [0, 1] back to dense rows.
    table = (ctypes.c_int32 * 2)(0, 1)
    cu = (ctypes.c_int32 * 2)(0, 6)
    out = (ctypes.c_float * (6 * row))()
    ot, bt, ct = tensor(out, PKV_DTYPE_F32, (6, h, d)), tensor(table, 7, (1, 2)), tensor(cu, 7, (2,))
    check(lib, lib.pkv_gather_kv(ctypes.byref(ot), None, ctypes.byref(view), ctypes.byref(bt), ctypes.byref(ct),
                                 None, None, None), "pkv_gather_kv")
    ok2 = list(out[5 * row:6 * row]) == list(key[0:row]) and list(out[0:row]) == list(key[row:2 * row])
    print(f"pkv_gather_kv: rows 0 and 5 read back: {'ok' if ok2 else 'WRONG'}")

    # The error path: a float32 slot mapping is refused with a message; nothing is written.
    bad = tensor(key, PKV_DTYPE_F32, (t,))
    status = lib.pkv_write_kv(ctypes.byref(view), ctypes.byref(kt), ctypes.byref(vt), ctypes.byref(bad), None, None)
    message = lib.pkv_last_error_message().decode()
    print(f"expected error: {lib.pkv_status_string(status).decode()}: {message}")
    ok3 = status == PKV_ERROR_INVALID_ARGUMENT and "slot_mapping" in message

    if not (ok and ok2 and ok3):
        sys.exit("ctypes_write: FAILED")
    print("ctypes_write: OK")


if __name__ == "__main__":
    main(sys.argv)
