#!/usr/bin/env python3
"""The cache write as an XLA custom call (pagedkv.jax) against the direct C call, µs per step.

One step writes T tokens (H = 8 KV heads, D = 128, bf16 keys and values) into a paged K/V cache
(bf16, or fp8_e4m3 with a per-tensor scale; NHD, block_size 16, 4096 blocks). Rows:

  jax jit step   a jitted `write_kv` step with the caches donated and threaded through, called
                 from a Python loop: `kc, vc = step(kc, vc, k, v, slots)` `iters` times, then
                 block_until_ready once; µs = wall time / iters. What an engine that dispatches
                 one jitted step at a time sees (JAX dispatch + the custom call + the kernel).
  jax scan       `steps` writes inside ONE jitted lax.fori_loop (caches carried in-graph), the
                 jitted call timed with block_until_ready; µs = wall time / steps. The in-graph
                 cost per write without per-step dispatch (XLA may run the loop body as a command
                 buffer / CUDA graph).
  C call         pagedkv.write_kv(view, k, v, slots) with a prebuilt CacheView over torch CUDA
                 tensors (JAX arrays through DLPack without torch), `iters` calls enqueued, then
                 one synchronize; µs = wall time / iters (the pkv_write_kv launch path plus
                 ~1.4 µs of Python binding, bench/results/python_overhead_*).

Each figure is the median of `repeats` timed runs after warm-up. The "in place" column checks that
the donated cache kept its buffer address (no copy per step).

    python3 bench/jax_write_step.py [--tokens 1,64,1024] [--iters 2000] [--steps 200]
                                    [--repeats 7] [--device auto|gpu|cpu] [--markdown out.md]
"""
import argparse
import datetime
import functools
import os
import platform
import statistics
import sys
import time

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import numpy as np  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from jax import lax  # noqa: E402

import pagedkv  # noqa: E402
import pagedkv.jax as pkj  # noqa: E402

try:
    import torch  # noqa: E402
except ImportError:  # pragma: no cover
    torch = None

H, D, BS, NB = 8, 128, 16, 4096


def _median_us(fn, n, repeats):
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) / n * 1e6)
    return statistics.median(times)


def bench_jax(dev, fmt, t, iters, steps, repeats, rng):
    cache_dt = jnp.bfloat16 if fmt == "bf16" else jnp.float8_e4m3fn
    kw = {} if fmt == "bf16" else {"k_scale": jax.device_put(np.array([0.05], np.float32), dev),
                                   "v_scale": jax.device_put(np.array([0.05], np.float32), dev)}
    put = functools.partial(jax.device_put, device=dev)
    kc = put(jnp.zeros((NB, BS, H, D), cache_dt))
    vc = put(jnp.zeros((NB, BS, H, D), cache_dt))
    key = put(jnp.asarray(rng.standard_normal((t, H, D)), jnp.bfloat16))
    value = put(jnp.asarray(rng.standard_normal((t, H, D)), jnp.bfloat16))
    slots = put(jnp.asarray(rng.choice(NB * BS, t, replace=False), jnp.int32))

    @functools.partial(jax.jit, donate_argnums=(0, 1))
    def step(kc, vc, k, v, s):
        return pkj.write_kv(k, v, kc, vc, s, format=fmt, **kw)

    @functools.partial(jax.jit, donate_argnums=(0, 1))
    def scan(kc, vc, k, v, s):
        def body(i, c):
            return pkj.write_kv(k, v, c[0], c[1], s, format=fmt, **kw)
        return lax.fori_loop(0, steps, body, (kc, vc))

    ptr = kc.unsafe_buffer_pointer()
    state = [kc, vc]
    for _ in range(20):
        state = list(step(*state, key, value, slots))
    state = list(scan(*state, key, value, slots))
    jax.block_until_ready(state)

    def run_steps():
        kc, vc = state
        for _ in range(iters):
            kc, vc = step(kc, vc, key, value, slots)
        jax.block_until_ready((kc, vc))
        state[:] = [kc, vc]

    def run_scan():
        state[:] = list(scan(*state, key, value, slots))
        jax.block_until_ready(state)

    step_us = _median_us(run_steps, iters, repeats)
    scan_us = _median_us(run_scan, steps, repeats)
    in_place = state[0].unsafe_buffer_pointer() == ptr
    return step_us, scan_us, in_place


def bench_c(dev, fmt, t, iters, repeats, rng, on_gpu):
    fmt_enum = pagedkv.CacheFormat.BF16 if fmt == "bf16" else pagedkv.CacheFormat.FP8_E4M3
    if on_gpu and torch is not None and torch.cuda.is_available():
        tdev = "cuda"
        cdt = torch.bfloat16 if fmt == "bf16" else torch.uint8
        kc = torch.zeros((NB, BS, H, D), dtype=cdt, device=tdev)
        vc = torch.zeros_like(kc)
        key = torch.randn((t, H, D), dtype=torch.bfloat16, device=tdev)
        value = torch.randn((t, H, D), dtype=torch.bfloat16, device=tdev)
        slots = torch.from_numpy(rng.choice(NB * BS, t, replace=False).astype(np.int64)).to(tdev)
        scale = torch.tensor([0.05], dtype=torch.float32, device=tdev)
        sync, via = torch.cuda.synchronize, "torch"
    else:  # JAX buffers through DLPack (written behind JAX's back: benchmark only)
        put = functools.partial(jax.device_put, device=dev)
        cdt = jnp.bfloat16 if fmt == "bf16" else jnp.uint8
        kc, vc = put(jnp.zeros((NB, BS, H, D), cdt)), put(jnp.zeros((NB, BS, H, D), cdt))
        key = put(jnp.asarray(rng.standard_normal((t, H, D)), jnp.bfloat16))
        value = put(jnp.asarray(rng.standard_normal((t, H, D)), jnp.bfloat16))
        slots = put(jnp.asarray(rng.choice(NB * BS, t, replace=False), jnp.int32))
        scale = put(jnp.asarray([0.05], jnp.float32))
        jax.block_until_ready((kc, vc, key, value, slots, scale))
        sync, via = (lambda: pagedkv.synchronize()), "jax-dlpack"
    view = pagedkv.CacheView.from_tensors(kc, vc, format=fmt_enum,
                                          **({} if fmt == "bf16" else {"k_scale": scale, "v_scale": scale}))
    write = pagedkv.write_kv
    for _ in range(20):
        write(view, key, value, slots)
    sync()

    def run():
        for _ in range(iters):
            write(view, key, value, slots)
        sync()

    return _median_us(run, iters, repeats), via


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", default="1,64,1024")
    ap.add_argument("--formats", default="bf16,fp8_e4m3")
    ap.add_argument("--iters", type=int, default=2000)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--device", default="auto", choices=["auto", "gpu", "cpu"])
    ap.add_argument("--markdown", help="also write the table to this file")
    args = ap.parse_args()

    gpus = []
    if args.device != "cpu" and "CUDA" in pkj.registered_platforms():
        try:
            gpus = jax.devices("gpu")
        except RuntimeError:
            gpus = []
    if args.device == "gpu" and not gpus:
        print("jax_write_step: no GPU visible to JAX with the pagedkv CUDA targets registered "
              f"({pkj.cuda_registration_error()})", file=sys.stderr)
        return 1
    dev = gpus[0] if gpus else jax.devices("cpu")[0]
    on_gpu = bool(gpus)
    name = getattr(dev, "device_kind", dev.platform)
    rng = np.random.default_rng(0)

    rows = []
    for fmt in args.formats.split(","):
        for t in (int(x) for x in args.tokens.split(",")):
            step_us, scan_us, in_place = bench_jax(dev, fmt, t, args.iters, args.steps, args.repeats, rng)
            c_us, via = bench_c(dev, fmt, t, args.iters, args.repeats, rng, on_gpu)
            rows.append((fmt, t, step_us, scan_us, c_us, via, in_place))
            print(f"  {fmt:8s} T={t:5d}: jit step {step_us:7.2f} us, scan {scan_us:7.2f} us/step, "
                  f"C call {c_us:7.2f} us ({via}), in place: {in_place}", file=sys.stderr)

    lines = [
        f"### pagedkv.jax write step vs direct C call — {name} ({dev.platform})",
        "",
        f"{datetime.date.today()}, jax {jax.__version__}, pagedkv {pagedkv.__version__}, "
        f"{pagedkv.build_info().get('cuda')} / {platform.python_version()}; H={H}, D={D}, bf16 keys, "
        f"NHD cache {NB}x{BS} blocks; medians of {args.repeats} runs ({args.iters} dispatched steps / "
        f"{args.steps} in-graph steps each); wall time with one block_until_ready / synchronize per run.",
        "",
        "| cache | T | jax jit step (µs/step) | jax scan (µs/step) | C call (µs/call) | jit step − C call | donated cache in place |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for fmt, t, step_us, scan_us, c_us, via, in_place in rows:
        lines.append(f"| {fmt} | {t} | {step_us:.2f} | {scan_us:.2f} | {c_us:.2f} ({via}) | "
                     f"{step_us - c_us:+.2f} | {'yes' if in_place else 'NO'} |")
    table = "\n".join(lines)
    print(table)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(table + "\n")
    return 0 if all(r[-1] for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
