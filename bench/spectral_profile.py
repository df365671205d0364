"""CUDA kernel times of the fused spectral ops (torch.profiler), per kernel, for the Qwen3 adapter sets.

    python -m bench.spectral_profile [--out profile.json]   (from the repository root)

For each set and dtype: summed device time per kernel over --iters calls of forward (need_factors)
+ backward, divided by --iters; the floor (two reads of A and B + one write of the gradients at the
measured copy bandwidth); and the host time per call of the public loss + backward.
"""
from __future__ import annotations

import argparse
import json
import time
from collections import defaultdict
from pathlib import Path

import torch


def main():
    from bench import bench_spectral as bs
    from evilbench.kernels import _ext

    _ext.load()  # registers torch.ops.evilbench.*

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--out")
    args = ap.parse_args()
    x = torch.empty(2**28, device="cuda")
    y = torch.empty_like(x)
    for _ in range(3):
        y.copy_(x)
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(20):
        y.copy_(x)
    torch.cuda.synchronize()
    bw = 20 * 2 * x.numel() * 4 / (time.perf_counter() - t)
    del x, y
    results = {"device": torch.cuda.get_device_name(), "copy_bandwidth_Bps": bw, "sets": {}}
    ops = torch.ops.evilbench
    for name in bs.SETS:
        for dtype in (torch.float32, torch.bfloat16):
            As, Bs = bs.make_set(name, "cuda", dtype)
            A = [a.detach() for a in As]
            B = [b.detach() for b in Bs]
            gv = torch.ones(len(A), dtype=torch.float64, device="cuda")
            floor = bs.floor_bytes(A, B) / bw

            def fwd_bwd(A=A, B=B, gv=gv):
                _, f = ops.spectral_forward(A, B, "fro_nuclear", True)
                ops.spectral_backward(A, B, f, gv)

            fwd_bwd()
            torch.cuda.synchronize()
            with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
                for _ in range(args.iters):
                    fwd_bwd()
                torch.cuda.synchronize()
            per = defaultdict(float)
            for ev in prof.events():
                if ev.device_type == torch.autograd.DeviceType.CUDA:
                    total = ev.device_time_total if hasattr(ev, "device_time_total") else ev.cuda_time_total
                    per[ev.name] += total / 1e6 / args.iters
            kernels = {k: v for k, v in per.items() if v > 0}
            ktotal = sum(kernels.values())
            # host + device time of the public path (loss + backward, with the finiteness check)
            for T in As + Bs:
                T.grad = None
            bs._step(bs.ours, As, Bs, "cuda")
            t = time.perf_counter()
            for _ in range(args.iters):
                bs._step(bs.ours, As, Bs, "cuda")
            step = (time.perf_counter() - t) / args.iters
            key = f"{name}/{str(dtype).replace('torch.', '')}"
            results["sets"][key] = {
                "kernels_s": kernels, "kernels_total_s": ktotal, "floor_s": floor,
                "kernels_vs_floor": ktotal / floor, "public_step_s": step, "public_step_vs_floor": step / floor,
            }
            print(f"{key}: kernels {1e3 * ktotal:.3f} ms = {ktotal / floor:.2f}× floor ({1e3 * floor:.3f} ms); "
                  f"public loss+backward {1e3 * step:.3f} ms")
            for k, v in sorted(kernels.items(), key=lambda kv: -kv[1]):
                print(f"    {1e3 * v:8.3f} ms  {k[:90]}")
            del As, Bs, A, B, gv, fwd_bwd
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
