"""CUDA checks without pytest (gpu-tests.sh runs this when pytest is not installed).

A subset of test_torch.py / test_vllm.py on torch CUDA tensors: every result is compared with
the same op on CPU tensors (the CPU backend is the oracle) and, for plain caches, with torch
indexing. Exit status 0 when all pass.
"""
import sys
import traceback

import torch

import pagedkv
import pagedkv.torch  # noqa: F401
from pagedkv import vllm as ops

NB, BS, H, D, T = 64, 16, 4, 80, 42
CHECKS = []


def check(name):
    def deco(fn):
        CHECKS.append((name, fn))
        return fn

    return deco


def inputs(device, cache_dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    key = torch.randn(T + 2, H, D, generator=g).bfloat16()
    value = torch.randn(T + 2, H, D, generator=g).bfloat16()
    slots = torch.randperm(NB * BS, generator=g)[:T]
    slots[::7] = -1
    kv = torch.randint(1, 100, (NB, 2, BS, H, D), generator=g).to(cache_dtype)
    ks, vs = torch.tensor([0.03]), torch.tensor([0.05])
    return [x.to(device) for x in (key, value, kv, slots, ks, vs)]


@check("reshape_and_cache_flash auto / fp8 / fp8_e5m2: CUDA == CPU, auto == torch indexing")
def _():
    for dt, cd in (("auto", torch.bfloat16), ("fp8", torch.uint8), ("fp8_e5m2", torch.uint8)):
        outs = []
        for dev in ("cpu", "cuda"):
            key, value, kv, slots, ks, vs = inputs(dev, cd)
            ops.reshape_and_cache_flash(key, value, kv[:, 0], kv[:, 1], slots, dt, ks, vs)
            outs.append(kv.cpu())
        assert torch.equal(outs[0], outs[1]), dt
        if dt == "auto":
            key, value, kv, slots, ks, vs = inputs("cpu", cd)
            m = slots >= 0
            s = slots[m]
            kv[s // BS, 0, s % BS] = key[:T][m]
            kv[s // BS, 1, s % BS] = value[:T][m]
            assert torch.equal(kv, outs[1])


@check("gather_kv (torch.ops.pagedkv) CUDA == CPU")
def _():
    outs = []
    for dev in ("cpu", "cuda"):
        key, value, kv, slots, ks, vs = inputs(dev, torch.uint8)
        ops.reshape_and_cache_flash(key, value, kv[:, 0], kv[:, 1], slots, "fp8", ks, vs)
        bt = torch.arange(NB, dtype=torch.int32, device=dev).reshape(4, 16)
        cu = torch.tensor([0, 100, 100, 250, 256], dtype=torch.int32, device=dev)
        ok, ov = torch.zeros(260, H, D, device=dev), torch.zeros(260, H, D, device=dev)
        torch.ops.pagedkv.gather_kv(ok, ov, kv[:, 0], kv[:, 1], bt, cu, None, "fp8", ks, vs)
        outs.append((ok.cpu(), ov.cpu()))
    assert torch.equal(outs[0][0], outs[1][0]) and torch.equal(outs[0][1], outs[1][1])


@check("concat_and_cache_mla fp8_ds_mla + gather CUDA == CPU")
def _():
    outs = []
    for dev in ("cpu", "cuda"):
        g = torch.Generator().manual_seed(5)
        kv_c = torch.randn(T, 512, generator=g).bfloat16().to(dev)
        k_pe = torch.randn(T, 64, generator=g).bfloat16().to(dev)
        slots = torch.randperm(16 * BS, generator=g)[:T].to(dev)
        cache = torch.zeros(16, BS, 656, dtype=torch.uint8, device=dev)
        one = torch.ones(1, device=dev)
        ops.concat_and_cache_mla(kv_c, k_pe, cache, slots, "fp8_ds_mla", one)
        dst = torch.zeros(T, 576, dtype=torch.bfloat16, device=dev)
        bt = torch.arange(16, dtype=torch.int32, device=dev).reshape(1, 16)
        cu = torch.tensor([0, T], dtype=torch.int32, device=dev)
        tok = torch.zeros(T, dtype=torch.int32, device=dev)
        ops.gather_and_maybe_dequant_cache(cache, dst, bt, cu, tok, T, "fp8_ds_mla", one)
        outs.append((cache.cpu(), dst.cpu()))
    assert torch.equal(outs[0][0], outs[1][0]) and torch.equal(outs[0][1], outs[1][1])


@check("copy_blocks / swap_blocks (D2H, H2D) / convert_fp8 on CUDA")
def _():
    g = torch.Generator().manual_seed(9)
    caches = [torch.randn(NB, BS, H, D, generator=g).cuda() for _ in range(3)]
    ref = [c.clone() for c in caches]
    mapping = torch.tensor([[1, 5], [7, 60]], device="cuda")
    ops.copy_blocks(caches[:2], caches[2:], mapping)
    for r in ref:
        r[mapping[:, 1]] = r[mapping[:, 0]]
    assert all(torch.equal(a, b) for a, b in zip(caches, ref))
    host = torch.zeros(NB, BS, H, D).pin_memory()
    ops.swap_blocks(caches[0], host, BS * H * D * 4, torch.tensor([[1, 2], [5, 3]]))
    torch.cuda.synchronize()
    assert torch.equal(host[2], caches[0][1].cpu()) and torch.equal(host[3], caches[0][5].cpu())
    back = torch.zeros_like(caches[0])
    ops.swap_blocks(host, back, torch.tensor([[2, 0]]))
    torch.cuda.synchronize()
    assert torch.equal(back[0], caches[0][1])
    q = torch.zeros(NB, BS, H, D, dtype=torch.uint8, device="cuda")
    ops.convert_fp8(q, caches[1], 0.5, "fp8")
    qc = torch.zeros(NB, BS, H, D, dtype=torch.uint8)
    ops.convert_fp8(qc, caches[1].cpu(), 0.5, "fp8")
    assert torch.equal(q.cpu(), qc)


@check("streams: current torch stream by default, explicit stream objects / ints / __cuda_stream__")
def _():
    key, value, kv, slots, ks, vs = inputs("cuda", torch.bfloat16)
    ref = kv.clone()
    ops.reshape_and_cache_flash(key, value, ref[:, 0], ref[:, 1], slots, "auto", ks, vs)
    s = torch.cuda.Stream()

    class CS:
        def __cuda_stream__(self):
            return (0, s.cuda_stream)

    for stream in (None, s, s.cuda_stream, CS()):
        out = inputs("cuda", torch.bfloat16)[2]
        cache = pagedkv.CacheView.from_tensors(out[:, 0], out[:, 1])
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            assert pagedkv._C.resolve_stream(key, None) == s.cuda_stream
            pagedkv.write_kv(cache, key, value, slots, stream=stream)
        s.synchronize()
        assert torch.equal(out, ref)


@check("__cuda_array_interface__ objects")
def _():
    key, value, kv, slots, ks, vs = inputs("cuda", torch.float16)
    key, value = key.half(), value.half()
    ref = kv.clone()
    ops.reshape_and_cache_flash(key, value, ref[:, 0], ref[:, 1], slots, "auto", ks, vs)

    class CAI:
        def __init__(self, t):
            self._t, self.__cuda_array_interface__ = t, t.__cuda_array_interface__

    ops.reshape_and_cache_flash(CAI(key), CAI(value), CAI(kv[:, 0]), CAI(kv[:, 1]), CAI(slots), "auto", ks, vs)
    torch.cuda.synchronize()
    assert torch.equal(kv, ref)


@check("torch.library.opcheck on CUDA")
def _():
    key, value, kv, slots, ks, vs = inputs("cuda", torch.uint8)
    torch.library.opcheck(torch.ops.pagedkv.reshape_and_cache_flash.default,
                          (key, value, kv[:, 0].contiguous(), kv[:, 1].contiguous(), slots, "fp8", ks, vs))


@check("torch.compile(fullgraph=True) == eager on CUDA")
def _():
    def step(x, kv, slots, ks, vs):
        k = (x * 2).bfloat16()
        ops.reshape_and_cache_flash(k, k, kv[:, 0], kv[:, 1], slots, "fp8", ks, vs)
        return x.sum()

    res = []
    for fn in (step, torch.compile(step, fullgraph=True)):
        key, value, kv, slots, ks, vs = inputs("cuda", torch.uint8)
        fn(key.float(), kv, slots, ks, vs)
        res.append(kv)
    assert torch.equal(res[0], res[1])


@check("Pool on CUDA: write, block table mirror via DLPack, gather")
def _():
    with pagedkv.Pool([pagedkv.LayerSpec("bf16", H, D)], block_size=BS, num_blocks=32, device="cuda") as pool, \
            pool.block_table(max_batch=2, max_blocks=8, max_tokens=64) as table:
        table.add(3)
        table.append(3, 40)
        table.upload([3], [40])
        m = table.mirror()
        sm = torch.from_dlpack(m.slot_mapping)[:40]
        key = torch.randn(40, H, D, device="cuda").bfloat16()
        pagedkv.write_kv(pool.layer(0), key, key, sm)
        out = torch.zeros_like(key)
        pagedkv.gather_kv(out, None, pool.layer(0), torch.from_dlpack(m.block_table)[:1],
                          torch.tensor([0, 40], dtype=torch.int32, device="cuda"))
        torch.cuda.synchronize()
        assert torch.equal(out, key)


def main():
    if not torch.cuda.is_available():
        sys.exit("gpu_smoke: torch sees no CUDA device")
    failures = []
    for name, fn in CHECKS:
        try:
            fn()
            print(f"ok    {name}")
        except Exception:  # noqa: BLE001
            failures.append(name)
            print(f"FAIL  {name}")
            traceback.print_exc()
    print(f"{len(CHECKS) - len(failures)} passed, {len(failures)} failed")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
