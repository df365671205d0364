"""Accuracy of Newton-Schulz implementations against the float64 iteration.

  python -m bench.accuracy [--device cpu|cuda] [--machine NAME] [--no-merge]   (from the repository root)

Max over matrices of max|out - ref| / max|ref| for fp32 and bf16 inputs, on the Qwen3-0.6B rank-32
set (Gaussian) and on cond-1e6 matrices; merged into bench/results/<machine>.json under "accuracy".
"""
from __future__ import annotations

import argparse
import sys

import torch

from evilbench.kernels.lora_sets import lora_matrices
from evilbench.kernels.newton_schulz_op import newton_schulz, newton_schulz_reference
from evilbench.kernels.ns_baselines import BASELINES


def ill_conditioned(n: int, rows: int, cols: int, cond: float = 1e6):
    out = []
    for _ in range(n):
        k = min(rows, cols)
        u, _ = torch.linalg.qr(torch.randn(rows, k, dtype=torch.float64))
        v, _ = torch.linalg.qr(torch.randn(cols, k, dtype=torch.float64))
        spectrum = torch.logspace(0, -torch.log10(torch.tensor(cond)).item(), k, dtype=torch.float64)
        out.append(((u * spectrum) @ v.T).float())
    return out


def max_rel_err(outs, refs) -> float:
    return max(((o.double().cpu() - r).abs().max() / r.abs().max()).item() for o, r in zip(outs, refs))


def measure(device: str) -> dict:
    sets = {
        "qwen3-0.6b-r32 (every 4th)": lora_matrices("qwen3-0.6b", 32, seed=1)[::4],
        "cond-1e6 32x2048 / 2048x32": ill_conditioned(4, 32, 2048) + ill_conditioned(4, 2048, 32),
    }
    impls = {"ours": lambda m: newton_schulz(m), "torch-muon": BASELINES["torch-muon"],
             "eager-fp32": BASELINES["eager-fp32"]}
    results = {}
    for set_name, mats in sets.items():
        for dname, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
            inputs = [m.to(dtype) for m in mats]
            refs = newton_schulz_reference(inputs)  # on the rounded inputs
            for impl, fn in impls.items():
                outs = fn([m.to(device) for m in inputs])
                results[f"{set_name} {dname} {impl}"] = max_rel_err(outs, refs)
    return results


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--machine")
    ap.add_argument("--no-merge", action="store_true")
    args = ap.parse_args(argv)
    res = measure(args.device)
    print("| inputs | dtype | impl | max rel err vs float64 |\n|---|---|---|---:|")
    for key, err in res.items():
        set_name, dname, impl = key.rsplit(" ", 2)
        print(f"| {set_name} | {dname} | {impl} | {err:.2e} |")
    if not args.no_merge:
        from bench import report

        if args.machine:
            machine = args.machine
        elif args.device == "cuda":
            machine = "-".join(report.slug(torch.cuda.get_device_name()).split("-")[:2])
        else:
            import platform

            brand = platform.processor() or "unknown"
            try:
                from cpuinfo import get_cpu_info  # py-cpuinfo, as pytest-benchmark uses

                brand = get_cpu_info().get("brand_raw", brand)
            except Exception:
                pass
            machine = f"cpu-{torch.get_num_threads()}t-{report.slug(brand)}"
        path = report.merge(machine, {}, None, {"accuracy": {"device": args.device, **res}})
        print(f"merged into {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
