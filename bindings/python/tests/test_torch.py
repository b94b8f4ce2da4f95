"""PyTorch integration: torch.library custom ops (opcheck), torch.compile(fullgraph=True) equal to
eager, streams (explicit and the current PyTorch stream), __cuda_array_interface__, CuPy."""
import pytest

torch = pytest.importorskip("torch")
if not hasattr(torch.library, "opcheck"):  # pragma: no cover
    pytest.skip("torch.library.opcheck needs PyTorch >= 2.4", allow_module_level=True)

import pagedkv  # noqa: E402
import pagedkv.torch  # noqa: E402,F401  (registers torch.ops.pagedkv)
from pagedkv import _C, vllm as ops  # noqa: E402

from conftest import TORCH_CUDA, cupy  # noqa: E402

DEVICES = ["cpu"] + (["cuda"] if TORCH_CUDA else [])
NB, BS, H, D = 32, 16, 4, 80


def _inputs(device, kv_cache_dtype="auto", dtype=torch.bfloat16, t=21, seed=0):
    g = torch.Generator().manual_seed(seed)
    key = torch.randn(t + 2, H, D, generator=g).to(dtype).to(device)
    value = torch.randn(t + 2, H, D, generator=g).to(dtype).to(device)
    slots = torch.randperm(NB * BS, generator=g)[:t].to(device)
    slots[::5] = -1
    cdt = torch.uint8 if kv_cache_dtype.startswith("fp8") else dtype
    kv = torch.randint(1, 100, (NB, 2, BS, H, D), generator=g).to(cdt).to(device)
    k_scale = torch.tensor([0.05], device=device)
    v_scale = torch.tensor([0.07], device=device)
    return key, value, kv, slots, k_scale, v_scale


def test_ops_registered():
    for name in ["reshape_and_cache_flash", "reshape_and_cache", "concat_and_cache_mla",
                 "gather_and_maybe_dequant_cache", "gather_kv", "copy_blocks", "copy_blocks_mla", "swap_blocks",
                 "convert_fp8"]:
        op = getattr(torch.ops.pagedkv, name).default
        mutable = [a.name for a in op._schema.arguments if a.alias_info is not None and a.alias_info.is_write]
        assert mutable, name


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kv_cache_dtype", ["auto", "fp8"])
def test_opcheck_write_and_gather(device, kv_cache_dtype):
    key, value, kv, slots, ks, vs = _inputs(device, kv_cache_dtype)
    kc, vc = kv[:, 0].contiguous(), kv[:, 1].contiguous()
    torch.library.opcheck(torch.ops.pagedkv.reshape_and_cache_flash.default,
                          (key, value, kc, vc, slots, kv_cache_dtype, ks, vs))
    bt = torch.arange(8, dtype=torch.int32, device=device).reshape(2, 4)
    cu = torch.tensor([0, 20, 50], dtype=torch.int32, device=device)
    out_k = torch.zeros(50, H, D, dtype=torch.float32, device=device)
    out_v = torch.zeros_like(out_k)
    torch.library.opcheck(torch.ops.pagedkv.gather_kv.default,
                          (out_k, out_v, kc, vc, bt, cu, None, kv_cache_dtype, ks, vs))
    kc5 = torch.randint(1, 50, (NB, H, D // 8, BS, 8)).to(torch.bfloat16).to(device)
    vc5 = torch.randint(1, 50, (NB, H, D, BS)).to(torch.bfloat16).to(device)
    torch.library.opcheck(torch.ops.pagedkv.reshape_and_cache.default,
                          (key, value, kc5, vc5, slots, "auto", ks, vs))


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck_mla_blocks_convert(device):
    g = torch.Generator().manual_seed(3)
    kv_c = torch.randn(9, 512, generator=g).to(torch.bfloat16).to(device)
    k_pe = torch.randn(9, 64, generator=g).to(torch.bfloat16).to(device)
    slots = torch.randperm(8 * BS, generator=g)[:9].to(device)
    cache = torch.zeros(8, BS, 576, dtype=torch.bfloat16, device=device) + 3
    scale = torch.ones(1, device=device)
    torch.library.opcheck(torch.ops.pagedkv.concat_and_cache_mla.default,
                          (kv_c, k_pe, cache, slots, "auto", scale))
    ds = torch.zeros(8, BS, 656, dtype=torch.uint8, device=device) + 1
    torch.library.opcheck(torch.ops.pagedkv.concat_and_cache_mla.default, (kv_c, k_pe, ds, slots, "fp8_ds_mla", scale))
    dst = torch.zeros(30, 576, dtype=torch.bfloat16, device=device)
    bt = torch.arange(8, dtype=torch.int32, device=device).reshape(2, 4)
    cu = torch.tensor([0, 10, 30], dtype=torch.int32, device=device)
    tok = torch.repeat_interleave(torch.arange(2, dtype=torch.int32), torch.tensor([10, 20])).to(device)
    torch.library.opcheck(torch.ops.pagedkv.gather_and_maybe_dequant_cache.default,
                          (cache, dst, bt, cu, tok, 30, "auto", scale, None))
    caches = [torch.randn(8, 4, 16, generator=g).to(device) for _ in range(2)]
    mapping = torch.tensor([[0, 3], [5, 6]], device=device)
    torch.library.opcheck(torch.ops.pagedkv.copy_blocks.default, (caches[:1], caches[1:], mapping))
    torch.library.opcheck(torch.ops.pagedkv.copy_blocks_mla.default, (caches, mapping))
    src = torch.randn(8, 4, 16, generator=g).to(device)
    dst2 = torch.zeros(8, 4, 16)  # host destination (D2H on CUDA)
    torch.library.opcheck(torch.ops.pagedkv.swap_blocks.default, (src, dst2, 4 * 16 * 4, mapping.cpu()))
    x = torch.randn(4, 64, generator=g).to(device)
    q = torch.zeros(4, 64, dtype=torch.uint8, device=device)
    torch.library.opcheck(torch.ops.pagedkv.convert_fp8.default, (q, x, 0.5, "fp8"))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kv_cache_dtype", ["auto", "fp8"])
def test_compile_fullgraph_equals_eager(device, kv_cache_dtype):
    """A step that computes K/V, writes them into the cache and gathers them back compiles with
    fullgraph=True (no graph break) and gives the eager result."""
    torch._dynamo.reset()

    def step(x, w, kv, slots, ks, vs, bt, cu, out_k, out_v):
        key = (x @ w).view(-1, H, D)
        value = key * 0.5 + 1
        ops.reshape_and_cache_flash(key, value, kv[:, 0], kv[:, 1], slots, kv_cache_dtype, ks, vs)
        torch.ops.pagedkv.gather_kv(out_k, out_v, kv[:, 0], kv[:, 1], bt, cu, None, kv_cache_dtype, ks, vs)
        return key.float().sum()

    def run(fn):
        g = torch.Generator().manual_seed(7)
        x = torch.randn(12, 32, generator=g).to(device)
        w = torch.randn(32, H * D, generator=g).to(device)
        _, _, kv, slots, ks, vs = _inputs(device, kv_cache_dtype, dtype=torch.float32, t=12, seed=1)
        bt = torch.arange(8, dtype=torch.int32, device=device).reshape(2, 4)
        cu = torch.tensor([0, 30, 64], dtype=torch.int32, device=device)
        out_k, out_v = torch.zeros(64, H, D, device=device), torch.zeros(64, H, D, device=device)
        ptr = kv.data_ptr()
        r = fn(x, w, kv, slots, ks, vs, bt, cu, out_k, out_v)
        assert kv.data_ptr() == ptr
        return r, kv, out_k, out_v

    r_eager, kv_eager, ok_eager, ov_eager = run(step)
    compiled = torch.compile(step, fullgraph=True)
    r_comp, kv_comp, ok_comp, ov_comp = run(compiled)
    assert torch.equal(kv_eager, kv_comp)  # the cache written in place, same bytes
    assert torch.equal(ok_eager, ok_comp) and torch.equal(ov_eager, ov_comp)
    assert torch.allclose(r_eager, r_comp, rtol=1e-4)
    assert not torch.equal(kv_comp, _inputs(device, kv_cache_dtype, dtype=torch.float32, t=12, seed=1)[2])


@pytest.mark.parametrize("device", DEVICES)
def test_compile_mla_and_copy_blocks(device):
    torch._dynamo.reset()

    def step(kv_c, k_pe, cache, slots, scale, k_caches, v_caches, mapping):
        ops.concat_and_cache_mla(kv_c * 2, k_pe, cache, slots, "fp8", scale)
        ops.copy_blocks(k_caches, v_caches, mapping)
        return cache.sum()

    def run(fn):
        g = torch.Generator().manual_seed(11)
        kv_c = torch.randn(9, 128, generator=g).to(device)
        k_pe = torch.randn(9, 32, generator=g).to(device)
        cache = torch.randint(0, 255, (8, BS, 160), generator=g).to(torch.uint8).to(device)
        slots = torch.randperm(8 * BS, generator=g)[:9].to(device)
        ks = [torch.randn(8, 2, BS, 4, generator=g).to(device) for _ in range(2)]
        vs = [torch.randn(8, 2, BS, 4, generator=g).to(device) for _ in range(2)]
        mapping = torch.tensor([[1, 4], [2, 7]], device=device)
        fn(kv_c, k_pe, cache, slots, torch.tensor([0.02], device=device), ks, vs, mapping)
        return cache, ks, vs

    e = run(step)
    c = run(torch.compile(step, fullgraph=True))
    assert torch.equal(e[0], c[0])
    for a, b in zip(e[1] + e[2], c[1] + c[2]):
        assert torch.equal(a, b)


def test_no_graph_breaks_reported():
    torch._dynamo.reset()

    def step(key, value, kc, vc, slots, ks, vs):
        ops.reshape_and_cache_flash(key, value, kc, vc, slots, "auto", ks, vs)
        return key + 1

    key, value, kv, slots, ks, vs = _inputs("cpu")
    explanation = torch._dynamo.explain(step)(key, value, kv[:, 0], kv[:, 1], slots, ks, vs)
    assert explanation.graph_break_count == 0 and explanation.graph_count == 1


# ---------------------------------------------------------------------------------- CUDA only

cuda_only = pytest.mark.skipif(not TORCH_CUDA, reason="needs a CUDA device with torch CUDA")


@cuda_only
def test_default_stream_is_the_current_torch_stream():
    t = torch.zeros(4, device="cuda")
    assert _C.resolve_stream(t, None) == torch.cuda.current_stream().cuda_stream
    s = torch.cuda.Stream()
    with torch.cuda.stream(s):
        assert _C.resolve_stream(t, None) == s.cuda_stream
    # explicit streams: a torch stream object, an int, an object with __cuda_stream__
    assert _C.resolve_stream(t, s) == s.cuda_stream
    assert _C.resolve_stream(t, s.cuda_stream) == s.cuda_stream

    class CS:
        def __cuda_stream__(self):
            return (0, s.cuda_stream)

    assert _C.resolve_stream(t, CS()) == s.cuda_stream


@cuda_only
@pytest.mark.parametrize("how", ["current", "object", "int", "protocol"])
def test_write_on_a_side_stream(how):
    key, value, kv, slots, ks, vs = _inputs("cuda")
    ref = kv.clone()
    ops.reshape_and_cache_flash(key, value, ref[:, 0], ref[:, 1], slots, "auto", ks, vs)
    torch.cuda.synchronize()
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    cache = pagedkv.CacheView.from_tensors(kv[:, 0], kv[:, 1])

    class CS:
        def __cuda_stream__(self):
            return (0, s.cuda_stream)

    stream = {"current": None, "object": s, "int": s.cuda_stream, "protocol": CS()}[how]
    with torch.cuda.stream(s):
        pagedkv.write_kv(cache, key, value, slots, stream=stream)
    s.synchronize()
    assert torch.equal(kv, ref)


@cuda_only
def test_cuda_array_interface_objects():
    key, value, kv, slots, ks, vs = _inputs("cuda", dtype=torch.float16)

    class CAI:  # only __cuda_array_interface__ (as numba device arrays)
        def __init__(self, t):
            self._t = t
            self.__cuda_array_interface__ = t.__cuda_array_interface__

    ref = kv.clone()
    ops.reshape_and_cache_flash(key, value, ref[:, 0], ref[:, 1], slots, "auto", ks, vs)
    ops.reshape_and_cache_flash(CAI(key), CAI(value), CAI(kv[:, 0]), CAI(kv[:, 1]), CAI(slots), "auto", ks, vs)
    torch.cuda.synchronize()
    assert torch.equal(kv, ref)
    assert pagedkv.describe(CAI(key))["source"] == "cuda_array_interface"


@cuda_only
@pytest.mark.skipif(cupy is None, reason="CuPy is not installed")
def test_cupy_and_torch_share_a_cache():
    key, value, kv, slots, ks, vs = _inputs("cuda", dtype=torch.float16)
    ref = kv.clone()
    ops.reshape_and_cache_flash(key, value, ref[:, 0], ref[:, 1], slots, "auto", ks, vs)
    kv_cp = cupy.from_dlpack(kv)  # the same memory
    ops.reshape_and_cache_flash(cupy.from_dlpack(key), cupy.from_dlpack(value), kv_cp[:, 0], kv_cp[:, 1],
                                cupy.from_dlpack(slots), "auto", cupy.from_dlpack(ks), cupy.from_dlpack(vs))
    cupy.cuda.get_current_stream().synchronize()
    assert torch.equal(kv, ref)


@cuda_only
def test_mirror_as_torch_tensor():
    with pagedkv.Pool([pagedkv.LayerSpec("bf16", 2, 64)], block_size=16, num_blocks=8, device="cuda") as pool, \
            pool.block_table(max_batch=2, max_blocks=4, max_tokens=16) as table:
        table.add(1)
        slots = table.append(1, 5)
        table.upload([1], [5])
        torch.cuda.synchronize()
        m = table.mirror()
        sm = torch.from_dlpack(m.slot_mapping)
        assert sm.is_cuda and sm[:5].cpu().tolist() == slots.tolist()
        key = torch.randn(5, 2, 64, device="cuda", dtype=torch.bfloat16)
        pagedkv.write_kv(pool.layer(0), key, key, sm[:5])
        out = torch.zeros(5, 2, 64, device="cuda", dtype=torch.bfloat16)
        pagedkv.gather_kv(out, None, pool.layer(0), torch.from_dlpack(m.block_table)[:1],
                          torch.tensor([0, 5], dtype=torch.int32, device="cuda"))
        torch.cuda.synchronize()
        assert torch.equal(out, key)


@pytest.mark.parametrize("device", DEVICES)
def test_torch_fp8_dtype_caches(device):
    """Caches held as torch.float8_e4m3fn (not uint8) are the same bytes."""
    if not hasattr(torch, "float8_e4m3fn"):
        pytest.skip("no torch.float8_e4m3fn")
    key, value, kv, slots, ks, vs = _inputs(device, "fp8")
    kv8 = kv.clone().view(torch.float8_e4m3fn)
    try:
        assert pagedkv.describe(kv8)["dtype"] is pagedkv.DType.FP8_E4M3
    except (BufferError, RuntimeError, TypeError) as e:  # older torch: no fp8 through DLPack
        pytest.skip(f"torch cannot export fp8 through DLPack: {e}")
    ops.reshape_and_cache_flash(key, value, kv[:, 0], kv[:, 1], slots, "fp8", ks, vs)
    ops.reshape_and_cache_flash(key, value, kv8[:, 0], kv8[:, 1], slots, "fp8", ks, vs)
    cache = pagedkv.CacheView.from_tensors(kv8[:, 0], kv8[:, 1], k_scale=ks, v_scale=vs)  # format from the dtype
    assert cache.format is pagedkv.CacheFormat.FP8_E4M3
    out = torch.zeros(16, H, D, device=device)
    pagedkv.gather_kv(out, None, cache, torch.zeros(1, 1, dtype=torch.int32, device=device),
                      torch.tensor([0, 16], dtype=torch.int32, device=device))
    if device == "cuda":
        torch.cuda.synchronize()
    assert torch.equal(kv8.view(torch.uint8), kv)
    assert torch.equal(out, (kv8[0, 0].float() * ks))
