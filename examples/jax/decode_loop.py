#!/usr/bin/env python3
"""A paged KV cache driven from JAX: prefill, then a jitted decode loop, then a gather.

pagedkv.jax registers libpagedkv's XLA FFI targets, so the cache write and gather are ops inside
the XLA graph (CPU, or the GPU when JAX has one). The caches are ordinary JAX arrays that XLA
updates in place: they are donated to the jitted step (donate_argnums) and carried through a
lax.scan, so no step copies the cache.

    python3 examples/jax/decode_loop.py [--steps 16] [--format bf16|fp8_e4m3|int8_per_token_head]

Prints "decode_loop: OK" when the gathered rows are what was written (exactly for bf16, within
the quantization error for the other formats).
"""
import argparse
import functools

import numpy as np

import jax
import jax.numpy as jnp
from jax import lax

import pagedkv.jax as pkj


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=16)
    ap.add_argument("--format", default="bf16", choices=["bf16", "fp8_e4m3", "int8_per_token_head"])
    args = ap.parse_args()

    num_blocks, block_size, heads, head_size = 64, 16, 4, 64
    requests, max_blocks = 4, 8
    rng = np.random.default_rng(0)
    dev = jax.devices()[0]
    print(f"decode_loop: {dev.platform} device, format {args.format}, pagedkv targets on {pkj.registered_platforms()}")

    # Caches [blocks, block_size, heads, head_size]; quantized formats carry scales.
    cache_dtype = {"bf16": jnp.bfloat16, "fp8_e4m3": jnp.float8_e4m3fn, "int8_per_token_head": jnp.int8}[args.format]
    shape = (num_blocks, block_size, heads, head_size)
    k_cache, v_cache = jnp.zeros(shape, cache_dtype), jnp.zeros(shape, cache_dtype)
    fmt_kw = {"format": args.format}
    planes = ()
    if args.format == "fp8_e4m3":
        fmt_kw.update(k_scale=jnp.full((heads,), 0.02, jnp.float32), v_scale=jnp.full((heads,), 0.02, jnp.float32))
    if args.format == "int8_per_token_head":
        planes = (jnp.zeros(shape[:3], jnp.float32), jnp.zeros(shape[:3], jnp.float32))

    # Each request owns max_blocks physical blocks (a block table a scheduler would keep).
    block_table = jnp.asarray(rng.permutation(num_blocks)[: requests * max_blocks].reshape(requests, max_blocks),
                              jnp.int32)
    prompt_lens = np.array([7, 1, 20, 3], np.int32)

    def slots_of(lens):  # the next token's slot of each request, in-graph
        blk = jnp.take_along_axis(block_table, (lens // block_size)[:, None], axis=1)[:, 0]
        return blk * block_size + lens % block_size

    def write(k, v, caches, slots):
        out = pkj.write_kv(k, v, caches[0], caches[1], slots, k_scale_plane=caches[2] if planes else None,
                           v_scale_plane=caches[3] if planes else None, **fmt_kw)
        return tuple(out)

    # Prefill: all prompt tokens in one write (slot mapping built on the host here).
    pos = np.concatenate([np.arange(n) for n in prompt_lens]).astype(np.int32)
    req = np.concatenate([np.full(n, r) for r, n in enumerate(prompt_lens)]).astype(np.int32)
    bt_np = np.asarray(block_table)
    prefill_slots = jnp.asarray(bt_np[req, pos // block_size] * block_size + pos % block_size)
    prompt_k = jnp.asarray(rng.standard_normal((len(pos), heads, head_size)), jnp.bfloat16)
    caches = (k_cache, v_cache) + planes
    caches = jax.jit(write, donate_argnums=(2,))(prompt_k, -prompt_k, caches, prefill_slots)

    # Decode: one token per request per step, request 1 finishing after 5 steps (padding slot -1).
    steps = args.steps
    step_k = jnp.asarray(rng.standard_normal((steps, requests, heads, head_size)), jnp.bfloat16)
    active = np.ones((steps, requests), bool)
    active[5:, 1] = False

    @functools.partial(jax.jit, donate_argnums=(0,))
    def decode(caches, lens, xs, act):
        def body(carry, x):
            caches, lens = carry
            xk, a = x
            slots = jnp.where(a, slots_of(lens), -1)
            caches = write(xk, -xk, caches, slots)
            return (caches, lens + a.astype(jnp.int32)), None

        (caches, lens), _ = lax.scan(body, (caches, lens), (xs, act))
        return caches, lens

    before = caches[0].unsafe_buffer_pointer()
    caches, lens = decode(caches, jnp.asarray(prompt_lens), step_k, jnp.asarray(active))
    in_place = caches[0].unsafe_buffer_pointer() == before

    # Read everything back: dense [rows, heads, head_size] per request, dequantized to float32.
    lens_np = np.asarray(lens)
    cu = np.concatenate([[0], np.cumsum(lens_np)]).astype(np.int32)
    gather_kw = dict(fmt_kw)
    if planes:
        gather_kw.update(k_scale_plane=caches[2], v_scale_plane=caches[3])
    out_k, out_v = pkj.gather_kv(caches[0], caches[1], block_table, jnp.asarray(cu), int(cu[-1]),
                                 dtype=jnp.float32, **gather_kw)
    out_k, out_v = np.asarray(out_k), np.asarray(out_v)

    pk = np.asarray(prompt_k, np.float32)
    sk = np.asarray(step_k, np.float32)
    offsets = np.concatenate([[0], np.cumsum(prompt_lens)])
    tol = {"bf16": 0.0, "fp8_e4m3": 0.07, "int8_per_token_head": 0.01}[args.format]
    worst = 0.0
    for r in range(requests):
        want = np.concatenate([pk[offsets[r]:offsets[r + 1]], sk[active[:, r], r]])
        got_k, got_v = out_k[cu[r]:cu[r + 1]], out_v[cu[r]:cu[r + 1]]
        assert got_k.shape == want.shape, (r, got_k.shape, want.shape)
        err = max(np.abs(got_k - want).max(), np.abs(got_v + want).max()) / np.abs(want).max()
        worst = max(worst, float(err))
    print(f"decode_loop: {requests} requests, {steps} steps, lengths {lens_np.tolist()}, "
          f"cache updated in place: {in_place}, worst relative error {worst:.4f}")
    if worst > tol:
        print("decode_loop: FAILED (gathered rows differ from the written ones)")
        return 1
    print("decode_loop: OK")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
