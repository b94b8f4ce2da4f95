#!/usr/bin/env python3
"""PyTorch indexing baseline for pkv_write_kv (optional; needs torch with CUDA).

Times what an engine without a cache library does to write new keys and values into a paged
NHD cache:

    key_cache.view(-1, H, D)[slots] = key                                   # bf16 -> bf16
    key_cache.view(-1, H, D)[slots] = (key / k_scale).to(torch.float8_e4m3fn)  # bf16 -> fp8

(and the same for values), with the workload of bench/bench_write.cu: H = 8, D = 128, block
size 16, int64 random unique slots, random bf16 inputs, T in {1, 64, 1024, 16384, 65536}.
Eager (back-to-back calls between CUDA events) and CUDA-graph replay (20 calls per graph),
beside a device-to-device copy of the same bytes and a near-empty kernel
(torch.cuda._sleep(0), a <<<1,1>>> spin of zero cycles). Prints a Markdown table in the format
of pkv_bench_write to stdout.

    python3 bench/torch_baseline.py [--quick] [--sizes 1,64,1024]
"""

import argparse
import datetime
import math
import statistics
import sys

H, D, BS = 8, 128, 16
GRAPH_CALLS = 20
K_SCALE, V_SCALE = 0.05, 0.04


class Stat:
    def __init__(self, samples=None, iters=0, err=""):
        self.ok = bool(samples)
        self.med = statistics.median(samples) if samples else math.nan
        self.min = min(samples) if samples else math.nan
        self.max = max(samples) if samples else math.nan
        self.iters = iters
        self.err = err

    def spread_pct(self):
        return 100.0 * (self.max - self.min) / self.med if self.ok and self.med > 0 else math.nan


def clamp(v, lo, hi):
    return max(lo, min(hi, v))


def time_eager(torch, fn, reps, target_us):
    try:
        for i in range(5):
            fn(i)
        torch.cuda.synchronize()
        a = torch.cuda.Event(enable_timing=True)
        b = torch.cuda.Event(enable_timing=True)
        a.record()
        for i in range(10):
            fn(i)
        b.record()
        b.synchronize()
        per = max(1e-3, a.elapsed_time(b) * 1000.0 / 10)
        iters = clamp(int(target_us / per), 10, 20000)
        samples = []
        for _ in range(reps):
            a.record()
            for i in range(iters):
                fn(i)
            b.record()
            b.synchronize()
            samples.append(a.elapsed_time(b) * 1000.0 / iters)
        return Stat(samples, iters)
    except Exception as e:  # noqa: BLE001 - report and go on
        return Stat(err=f"{type(e).__name__}: {e}")


def time_graph(torch, fn, reps, target_us):
    try:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for i in range(3):
                fn(i)
        torch.cuda.current_stream().wait_stream(side)
        torch.cuda.synchronize()
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            for i in range(GRAPH_CALLS):
                fn(i)
        g.replay()
        torch.cuda.synchronize()
        a = torch.cuda.Event(enable_timing=True)
        b = torch.cuda.Event(enable_timing=True)
        a.record()
        g.replay()
        b.record()
        b.synchronize()
        per_replay = max(1e-3, a.elapsed_time(b) * 1000.0)
        replays = clamp(int(target_us / per_replay), 3, 5000)
        samples = []
        for _ in range(reps):
            a.record()
            for _ in range(replays):
                g.replay()
            b.record()
            b.synchronize()
            samples.append(a.elapsed_time(b) * 1000.0 / (replays * GRAPH_CALLS))
        del g
        return Stat(samples, replays)
    except Exception as e:  # noqa: BLE001
        return Stat(err=f"{type(e).__name__}: {e}")


def run_row(torch, cfg, T, args, l2):
    name, fp8 = cfg
    row = {"op": f"torch index_put bf16->{name}", "T": T, "error": "", "verify": ""}
    try:
        dev = torch.device("cuda")
        cache_b = 1 if fp8 else 2
        elems = T * H * D
        op_bytes = elems * (2 + cache_b) * 2 + T * 8
        copy_bytes = elems * (2 + cache_b)
        R = clamp(math.ceil(3.0 * l2 / op_bytes), 1, 16)
        row.update(R=R, op_bytes=op_bytes, copy_bytes=copy_bytes)

        key = torch.empty(R, T, H, D, dtype=torch.bfloat16, device=dev).uniform_(-2.0, 2.0)
        val = torch.empty(R, T, H, D, dtype=torch.bfloat16, device=dev).uniform_(-2.0, 2.0)
        key.masked_fill_(key == 0, -2.0)  # never zeros
        val.masked_fill_(val == 0, -2.0)
        num_blocks = (R * T + BS - 1) // BS
        cdt = torch.float8_e4m3fn if fp8 else torch.bfloat16
        kc = torch.empty(num_blocks, BS, H, D, dtype=torch.uint8 if fp8 else cdt, device=dev)
        vc = torch.empty_like(kc)
        if fp8:
            kc.fill_(0xFF)
            vc.fill_(0xFF)
            kc = kc.view(cdt)
            vc = vc.view(cdt)
        else:
            kc.fill_(float("nan"))
            vc.fill_(float("nan"))
        slots = torch.randperm(num_blocks * BS, device=dev)[: R * T].view(R, T).contiguous()
        k_scale = torch.tensor(K_SCALE, dtype=torch.float32, device=dev)
        v_scale = torch.tensor(V_SCALE, dtype=torch.float32, device=dev)
        kf = kc.view(-1, H, D)
        vf = vc.view(-1, H, D)

        if not fp8:
            def op(i):
                r = i % R
                kf[slots[r]] = key[r]
                vf[slots[r]] = val[r]
        else:
            def op_direct(i):
                r = i % R
                kf[slots[r]] = (key[r] / k_scale).to(cdt)
                vf[slots[r]] = (val[r] / v_scale).to(cdt)

            ku = kf.view(torch.uint8)
            vu = vf.view(torch.uint8)

            def op_bytes_view(i):  # index_put on uint8 views, if fp8 index_put is missing
                r = i % R
                ku[slots[r]] = (key[r] / k_scale).to(cdt).view(torch.uint8)
                vu[slots[r]] = (val[r] / v_scale).to(cdt).view(torch.uint8)

            try:
                op_direct(0)
                torch.cuda.synchronize()
                op = op_direct
            except Exception:  # noqa: BLE001
                op = op_bytes_view
                row["op"] += " (u8 view)"

        # Verify one call on set 0.
        op(0)
        torch.cuda.synchronize()
        s0 = slots[0]
        for c, x, sc in ((kf, key[0], K_SCALE), (vf, val[0], V_SCALE)):
            got = (c.view(torch.uint8)[s0].view(cdt) if fp8 else c[s0]).float()
            ref = x.float()
            if fp8:
                got = got * sc
                # bf16 division then RNE to e4m3: ~2^-4 relative, plus subnormal half-ulp
                bad = (got - ref).abs() > ref.abs() / 8 + sc * 2.0**-9
            else:
                bad = got != ref
            nbad = int(bad.sum().item())
            if nbad:
                raise RuntimeError(f"verification failed: {nbad} elements differ")
        row["verify"] = f"ok ({2 * elems} elements)"

        row["op_eager"] = time_eager(torch, op, args.reps, args.target_us)
        row["op_graph"] = time_graph(torch, op, args.reps, args.target_us)

        src = torch.empty(R, copy_bytes // 2, dtype=torch.bfloat16, device=dev).uniform_(-2, 2)
        dst = torch.empty_like(src)

        def cp(i):
            r = i % R
            dst[r].copy_(src[r])

        row["copy_eager"] = time_eager(torch, cp, args.reps, args.target_us)
        row["copy_graph"] = time_graph(torch, cp, args.reps, args.target_us)

        if hasattr(torch.cuda, "_sleep"):
            def empty(_i):
                torch.cuda._sleep(0)
        else:
            tiny = torch.zeros(1, device=dev)

            def empty(_i):
                tiny.fill_(1.0)

        row["empty_eager"] = time_eager(torch, empty, args.reps, args.target_us)
        row["empty_graph"] = time_graph(torch, empty, args.reps, args.target_us)
        torch.cuda.synchronize()
    except Exception as e:  # noqa: BLE001
        row["error"] = f"{type(e).__name__}: {e}"
    finally:
        torch.cuda.empty_cache()
    return row


def fnum(v, f="{:.1f}"):
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f.format(v)


def fus(s):
    return fnum(s.med, "{:.2f}") if s is not None and s.ok else "n/a"


def gbps(nbytes, s):
    return nbytes / (s.med * 1e-6) / 1e9 if s is not None and s.ok else math.nan


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer repetitions, shorter timing")
    ap.add_argument("--sizes", default="1,64,1024,16384,65536", help="comma-separated token counts")
    args = ap.parse_args()
    args.reps, args.target_us = (3, 4000.0) if args.quick else (7, 20000.0)
    sizes = [int(x) for x in args.sizes.split(",") if x.strip()]

    try:
        import torch
    except ImportError as e:
        print(f"torch baseline skipped: {e}")
        return 1
    if not torch.cuda.is_available():
        print("torch baseline skipped: torch.cuda.is_available() is False")
        return 1

    prop = torch.cuda.get_device_properties(0)
    l2 = getattr(prop, "L2_cache_size", 0) or 50e6
    rows = []
    for cfg in (("bf16", False), ("fp8_e4m3", True)):
        for T in sizes:
            print(f"[torch] {cfg[0]} T={T} ...", file=sys.stderr, flush=True)
            rows.append(run_row(torch, cfg, T, args, l2))

    copy_peak, copy_T = math.nan, 0
    for r in rows:
        if not r["error"] and r["op"].endswith("bf16->bf16") and r["T"] >= copy_T:
            copy_peak, copy_T = gbps(2 * r["copy_bytes"], r["copy_graph"]), r["T"]

    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    out = []
    out.append("\n## PyTorch indexing baseline (bench/torch_baseline.py)\n")
    out.append(
        f"Device: {prop.name} (sm_{prop.major}{prop.minor}), {prop.multi_processor_count} SMs, "
        f"L2 {l2 / 1e6:.1f} MB | torch {torch.__version__}, CUDA {torch.version.cuda} | copy "
        f"bandwidth at the largest size (T={copy_T}, graph, read+write): "
        f"{fnum(copy_peak, '{:.0f}')} GB/s | {date}{' | --quick' if args.quick else ''}\n")
    out.append(
        f"`kc.view(-1,H,D)[slots] = key` (fp8: `(key/scale).to(torch.float8_e4m3fn)`), K and V; "
        f"H={H}, D={D}, block_size={BS}; empty kernel = torch.cuda._sleep(0); "
        f"graph = {GRAPH_CALLS} calls per captured graph.\n")
    out.append("| op | T | eager µs | graph µs | GB/s (graph) | copy GB/s (graph) | % of copy | "
               "empty-kernel graph µs | ratio vs empty |")
    out.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    errors = []
    for r in rows:
        if r["error"]:
            out.append(f"| {r['op']} | {r['T']} | ERROR | | | | | | |")
            errors.append(f"- {r['op']} T={r['T']}: {r['error']}")
            continue
        g = gbps(r["op_bytes"], r["op_graph"])
        c = gbps(2 * r["copy_bytes"], r["copy_graph"])
        og, eg = r["op_graph"], r["empty_graph"]
        ratio = og.med / eg.med if og.ok and eg.ok else math.nan
        pct = 100.0 * g / c if not (math.isnan(g) or math.isnan(c)) else math.nan
        out.append(
            f"| {r['op']} | {r['T']} | {fus(r['op_eager'])} | {fus(og)} | {fnum(g, '{:.0f}')} | "
            f"{fnum(c, '{:.0f}')} | {fnum(pct)} | {fus(eg)} | {fnum(ratio, '{:.2f}')} |")
        for k in ("op_eager", "op_graph", "copy_eager", "copy_graph", "empty_eager", "empty_graph"):
            if not r[k].ok:
                errors.append(f"- {r['op']} T={r['T']} {k}: {r[k].err}")
    out.append("")
    out.append("| op | T | R | copy eager µs | copy graph µs | empty eager µs | empty graph µs | "
               "op graph spread % | verify |")
    out.append("|---|---:|---:|---:|---:|---:|---:|---:|---|")
    for r in rows:
        if r["error"]:
            continue
        out.append(
            f"| {r['op']} | {r['T']} | {r['R']} | {fus(r['copy_eager'])} | {fus(r['copy_graph'])} "
            f"| {fus(r['empty_eager'])} | {fus(r['empty_graph'])} | "
            f"{fnum(r['op_graph'].spread_pct())} | {r['verify']} |")
    if errors:
        out.append("\nErrors:\n")
        out.extend(errors)
    print("\n".join(out), flush=True)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
