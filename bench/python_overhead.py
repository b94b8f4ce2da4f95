#!/usr/bin/env python3
"""Per-call overhead of the Python path (pagedkv package) against a direct C call.

Measures µs per call of a decode-size write (pkv_write_kv, T tokens, bf16 NHD cache) and
gather (pkv_gather_kv) through:

  C            a small C program calling the C API in a loop (compiled here with `cc` against
               include/pagedkv.h and the library the package loaded): the floor.
  ctypes       the same call through ctypes with prebuilt structs.
  pagedkv      pagedkv.write_kv / gather_kv with a prebuilt CacheView (NumPy or torch tensors).
  vllm         pagedkv.vllm.reshape_and_cache_flash (builds the view from the cache tensors each
               call, as a drop-in must).
  torch.ops    torch.ops.pagedkv.reshape_and_cache_flash (the torch.library dispatcher path).

On CUDA the loop enqueues `iters` calls and synchronizes once (launch cost, as an engine sees
it without graphs); on the CPU each call also does the (tiny) work itself, identical for all
paths, so the difference to the C row is the binding's overhead.

    python3 bench/python_overhead.py [--device cpu|cuda] [--tokens 1] [--iters 20000] [--markdown out.md]
"""
import argparse
import ctypes
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

import pagedkv

C_SOURCE = r"""
#include <pagedkv.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e9 + ts.tv_nsec;
}
#define CHECK(x) do { pkv_status s_ = (x); if (s_ != PKV_SUCCESS) { \
    fprintf(stderr, "%s: %s\n", #x, pkv_last_error_message()); return 1; } } while (0)

static pkv_tensor tensor(void *data, pkv_dtype dt, pkv_device dev, int nd, const int64_t *shape) {
    pkv_tensor t;
    memset(&t, 0, sizeof t);
    t.data = data; t.dtype = dt; t.device = dev; t.ndim = nd;
    int64_t s = 1;
    for (int d = nd - 1; d >= 0; --d) { t.shape[d] = shape[d]; t.strides[d] = s; s *= shape[d]; }
    return t;
}

static void *buffer(pkv_device dev, size_t bytes, const void *init) {
    void *p = NULL;
    if (pkv_alloc(&p, dev, bytes) != PKV_SUCCESS) return NULL;
    pkv_device host = {PKV_DEVICE_CPU, 0};
    pkv_copy(p, dev, init, host, bytes, NULL);
    return p;
}

int main(int argc, char **argv) {
    if (argc < 7) { fprintf(stderr, "usage: cpu|cuda iters T H D NB\n"); return 2; }
    const int cuda = strcmp(argv[1], "cuda") == 0;
    const long iters = atol(argv[2]);
    const int64_t T = atoll(argv[3]), H = atoll(argv[4]), D = atoll(argv[5]), NB = atoll(argv[6]), BS = 16;
    pkv_device dev = {cuda ? PKV_DEVICE_CUDA : PKV_DEVICE_CPU, 0};
    size_t cache_bytes = (size_t)(NB * BS * H * D * 2), rows_bytes = (size_t)(T * H * D * 2);
    unsigned short *h = malloc(cache_bytes > rows_bytes ? cache_bytes : rows_bytes);
    for (size_t i = 0; i < (cache_bytes > rows_bytes ? cache_bytes : rows_bytes) / 2; ++i) h[i] = 0x3F80;
    int64_t *slots = malloc(T * 8);
    for (int64_t i = 0; i < T; ++i) slots[i] = i;
    int32_t *bt = malloc(NB * 4);
    for (int64_t i = 0; i < NB; ++i) bt[i] = (int32_t)i;
    int32_t cu_h[2] = {0, (int32_t)T};
    void *kc = buffer(dev, cache_bytes, h), *vc = buffer(dev, cache_bytes, h);
    void *key = buffer(dev, rows_bytes, h), *val = buffer(dev, rows_bytes, h), *out = buffer(dev, rows_bytes, h);
    void *sm = buffer(dev, T * 8, slots), *btd = buffer(dev, NB * 4, bt), *cud = buffer(dev, 8, cu_h);
    if (!kc || !vc || !key || !val || !out || !sm || !btd || !cud) { fprintf(stderr, "alloc failed\n"); return 1; }

    pkv_cache_view v = PKV_CACHE_VIEW_INIT;
    v.format = PKV_CACHE_FORMAT_BF16; v.device = dev;
    v.num_blocks = NB; v.block_size = BS; v.num_heads = H; v.head_size_k = D; v.k_data = kc; v.v_data = vc;
    int64_t rs[3] = {T, H, D}, ss[1] = {T}, bs[2] = {1, NB}, cs[1] = {2};
    pkv_tensor k = tensor(key, PKV_DTYPE_BF16, dev, 3, rs), va = tensor(val, PKV_DTYPE_BF16, dev, 3, rs);
    pkv_tensor o = tensor(out, PKV_DTYPE_BF16, dev, 3, rs), s = tensor(sm, PKV_DTYPE_INT64, dev, 1, ss);
    pkv_tensor b = tensor(btd, PKV_DTYPE_INT32, dev, 2, bs), c = tensor(cud, PKV_DTYPE_INT32, dev, 1, cs);

    for (int i = 0; i < 200; ++i) CHECK(pkv_write_kv(&v, &k, &va, &s, NULL, NULL));
    CHECK(pkv_stream_synchronize(NULL));
    double t0 = now_ns();
    for (long i = 0; i < iters; ++i) CHECK(pkv_write_kv(&v, &k, &va, &s, NULL, NULL));
    CHECK(pkv_stream_synchronize(NULL));
    double t1 = now_ns();
    for (int i = 0; i < 200; ++i) CHECK(pkv_gather_kv(&o, NULL, &v, &b, &c, NULL, NULL, NULL));
    CHECK(pkv_stream_synchronize(NULL));
    double t2 = now_ns();
    for (long i = 0; i < iters; ++i) CHECK(pkv_gather_kv(&o, NULL, &v, &b, &c, NULL, NULL, NULL));
    CHECK(pkv_stream_synchronize(NULL));
    double t3 = now_ns();
    printf("%.4f %.4f\n", (t1 - t0) / iters / 1e3, (t3 - t2) / iters / 1e3);
    return 0;
}
"""


def build_c_helper(workdir):
    inc = os.environ.get("PAGEDKV_INCLUDE_DIR") or os.path.join(os.path.dirname(__file__), "..", "include")
    lib = pagedkv.library_path()
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if not cc:
        return None, "no C compiler"
    src = os.path.join(workdir, "overhead.c")
    exe = os.path.join(workdir, "overhead")
    with open(src, "w") as f:
        f.write(C_SOURCE)
    # link the very library the package loaded (by path; RPATH to its directory)
    cmd = [cc, "-O2", "-std=c99", "-D_POSIX_C_SOURCE=199309L", "-I", inc, src, "-o", exe, lib,
           f"-Wl,-rpath,{os.path.dirname(lib)}"]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        return None, r.stderr
    return exe, None


REPEATS = 7  # best of: the machine may be shared


def timeit(fn, iters, sync):
    for _ in range(200):
        fn()
    sync()
    best = float("inf")
    for _ in range(REPEATS):
        t0 = time.perf_counter()
        for _ in range(iters):
            fn()
        sync()
        best = min(best, (time.perf_counter() - t0) / iters * 1e6)
    return best


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--tokens", type=int, default=1)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--head-size", type=int, default=128)
    ap.add_argument("--blocks", type=int, default=256)
    ap.add_argument("--iters", type=int, default=20000)
    ap.add_argument("--markdown", help="append the table to this file")
    args = ap.parse_args()
    T, H, D, NB, BS = args.tokens, args.heads, args.head_size, args.blocks, 16
    os.environ.setdefault("OMP_NUM_THREADS", "1")

    rows = []  # (path, tensors, write µs, gather µs)
    with tempfile.TemporaryDirectory() as wd:
        exe, err = build_c_helper(wd)
        if exe is None:
            print("C helper not built:", err, file=sys.stderr)
        else:
            best = None
            for _ in range(REPEATS):
                out = subprocess.run([exe, args.device, str(args.iters), str(T), str(H), str(D), str(NB)],
                                     capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
                if out.returncode != 0:
                    print("C helper failed:", out.stderr, file=sys.stderr)
                    break
                w, g = map(float, out.stdout.split())
                best = (w, g) if best is None else (min(best[0], w), min(best[1], g))
            if best is not None:
                rows.append(("C (direct pkv_* calls)", "raw pointers", best[0], best[1]))

    try:
        import torch
    except ImportError:
        torch = None
    if args.device == "cuda" and torch is None:
        sys.exit("--device cuda needs torch for the Python-side tensors")

    # ---- ctypes with prebuilt structs (CPU only: NumPy memory)
    if args.device == "cpu":
        sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "examples", "python"))
        import ctypes_write as cw

        lib = cw.load(pagedkv.library_path())
        import ml_dtypes

        bf = ml_dtypes.bfloat16
        kc = np.ones((NB, BS, H, D), bf)
        vc = np.ones((NB, BS, H, D), bf)
        key = np.ones((T, H, D), bf)
        sl = np.arange(T, dtype=np.int64)
        view = cw.CacheView()
        lib.pkv_cache_view_init(ctypes.byref(view), ctypes.sizeof(view))
        view.format, view.device = 3, cw.Device(1, 0)
        view.num_blocks, view.block_size, view.num_heads, view.head_size_k = NB, BS, H, D
        view.k_data, view.v_data = kc.ctypes.data, vc.ctypes.data
        kt = cw.tensor(ctypes.c_void_p(key.ctypes.data), 2, (T, H, D))
        kt.data = key.ctypes.data
        st = cw.tensor(ctypes.c_void_p(sl.ctypes.data), 8, (T,))
        st.data = sl.ctypes.data
        refs = (ctypes.byref(view), ctypes.byref(kt), ctypes.byref(st))
        w = timeit(lambda: lib.pkv_write_kv(refs[0], refs[1], refs[1], refs[2], None, None), args.iters, lambda: None)
        rows.append(("ctypes (prebuilt structs)", "NumPy", w, float("nan")))

    # ---- the package
    def make(lib_name):
        if lib_name == "numpy":
            import ml_dtypes

            bf = ml_dtypes.bfloat16
            z = lambda *s: np.ones(s, bf)  # noqa: E731
            return (z(NB, BS, H, D), z(NB, BS, H, D), z(T, H, D), z(T, H, D), np.arange(T, dtype=np.int64),
                    np.arange(NB, dtype=np.int32).reshape(1, NB), np.array([0, T], np.int32), z(T, H, D),
                    np.ones(1, np.float32), lambda: None)
        dev = args.device
        z = lambda *s: torch.ones(s, dtype=torch.bfloat16, device=dev)  # noqa: E731
        sync = torch.cuda.synchronize if dev == "cuda" else (lambda: None)
        return (z(NB, BS, H, D), z(NB, BS, H, D), z(T, H, D), z(T, H, D), torch.arange(T, device=dev),
                torch.arange(NB, dtype=torch.int32, device=dev).reshape(1, NB),
                torch.tensor([0, T], dtype=torch.int32, device=dev), z(T, H, D), torch.ones(1, device=dev), sync)

    from pagedkv import vllm as pv

    libs = (["numpy"] if args.device == "cpu" else []) + (["torch"] if torch is not None else [])
    for name in libs:
        kc, vc, key, val, sl, bt, cu, out, one, sync = make(name)
        view = pagedkv.CacheView.from_tensors(kc, vc)
        label = "NumPy" if name == "numpy" else f"torch ({args.device})"
        w = timeit(lambda: pagedkv.write_kv(view, key, val, sl), args.iters, sync)
        g = timeit(lambda: pagedkv.gather_kv(out, None, view, bt, cu), args.iters, sync)
        rows.append(("pagedkv.write_kv / gather_kv (prebuilt view)", label, w, g))
        w = timeit(lambda: pv.reshape_and_cache_flash(key, val, kc, vc, sl, "auto", one, one), args.iters, sync)
        rows.append(("pagedkv.vllm.reshape_and_cache_flash", label, w, float("nan")))
        if name == "torch":
            __import__("pagedkv.torch")

            op = torch.ops.pagedkv.reshape_and_cache_flash
            w = timeit(lambda: op(key, val, kc, vc, sl, "auto", one, one), args.iters, sync)
            rows.append(("torch.ops.pagedkv.reshape_and_cache_flash", label, w, float("nan")))

    base_w = rows[0][2] if rows and rows[0][0].startswith("C") else float("nan")
    base_g = rows[0][3] if rows and rows[0][0].startswith("C") else float("nan")
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except Exception:
        pass
    fmt = lambda x: "—" if x != x else f"{x:.2f}"  # noqa: E731
    lines = [
        f"device: {args.device}" + (f" ({torch.cuda.get_device_name()})" if args.device == "cuda" else f" ({cpu})"),
        f"library: {pagedkv.build_info()}; python {platform.python_version()}, numpy {np.__version__}, "
        f"torch {getattr(torch, '__version__', 'n/a')}",
        f"shape: T={T} tokens, {H} heads x {D}, bf16 NHD cache of {NB} blocks x {BS}; {args.iters} calls, "
        f"best of {REPEATS}; OMP_NUM_THREADS=1",
        "",
        "| path | tensors | write µs/call | overhead vs C | gather µs/call | overhead vs C |",
        "|---|---|--:|--:|--:|--:|",
    ]
    for path, tensors, w, g in rows:
        lines.append(f"| {path} | {tensors} | {fmt(w)} | {fmt(w - base_w) if not path.startswith('C') else '0'} | "
                     f"{fmt(g)} | {fmt(g - base_g) if not path.startswith('C') and g == g else ('0' if path.startswith('C') else '—')} |")
    text = "\n".join(lines)
    print(text)
    if args.markdown:
        with open(args.markdown, "a") as f:
            f.write(text + "\n\n")


if __name__ == "__main__":
    main()
