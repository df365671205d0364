"""`evilbench kernels demo`: time the fused Newton-Schulz op against plain-torch baselines on the
rank-32 LoRA factors of a real model and print the speed-up table (< 1 min on 2 CPU cores)."""
from __future__ import annotations

import argparse
import time

_DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


def register(subparsers) -> None:
    parser = subparsers.add_parser("kernels", help="fused kernels: demo timings")
    sub = parser.add_subparsers(dest="kernels_command", metavar="ACTION")
    sub.required = True
    demo = sub.add_parser("demo", help="Newton-Schulz speed-up table over a model's LoRA factors")
    demo.add_argument("--model", default="qwen3-0.6b", help="LoRA shape set (qwen3-0.6b: 392 matrices, qwen3-8b: 504)")
    demo.add_argument("--rank", type=int, default=32)
    demo.add_argument("--dtype", choices=sorted(_DTYPES), default="fp32")
    demo.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    demo.add_argument("--threads", type=int, default=2, help="CPU threads (default 2)")
    demo.add_argument("--rounds", type=int, default=5, help="timed rounds of ours (baselines: 1)")
    demo.add_argument("--layers", type=int, default=None, help="only the first N layers (quick look)")
    demo.set_defaults(func=run_demo)


def _time(fn, mats, rounds, sync):
    fn(mats)  # warm-up (first-call allocations, extension load)
    sync()
    times = []
    for _ in range(rounds):
        t = time.perf_counter()
        fn(mats)
        sync()
        times.append(time.perf_counter() - t)
    times.sort()
    return times[len(times) // 2]


def run_demo(args) -> int:
    import torch
    from tqdm import tqdm

    from evilbench.kernels.lora_sets import MODELS, lora_matrices
    from evilbench.kernels.newton_schulz_op import newton_schulz, newton_schulz_reference
    from evilbench.kernels.ns_baselines import BASELINES

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    torch.set_num_threads(args.threads)
    dtype = getattr(torch, _DTYPES[args.dtype])
    mats = lora_matrices(args.model, args.rank, dtype, device=device)
    layers = MODELS[args.model][0]
    if args.layers is not None:
        if not 1 <= args.layers <= layers:
            raise SystemExit(f"--layers must be between 1 and {layers} for {args.model}")
        mats = mats[: len(mats) * args.layers // layers]
        layers = args.layers
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    where = f"{device}" + (f", {args.threads} threads" if device == "cpu" else f" ({torch.cuda.get_device_name()})")
    print(f"Newton-Schulz (5 quintic steps) over {len(mats)} rank-{args.rank} LoRA factors of {args.model}, "
          f"{args.dtype}, {where}")

    ours = _time(newton_schulz, mats, args.rounds, sync)
    rows = [("ours (evilbench fused op)", ours, "")]
    # torch.optim.Muon's bf16 NS is slow on CPUs without bf16 matrix units: time it on a few
    # layers and scale by the matrix count (labelled as such); the same for the other per-matrix loops.
    for name, fn in tqdm(BASELINES.items(), desc="baselines", leave=False):
        subset, note = mats, ""
        if device == "cpu" and layers > 2 and name in ("torch-muon", "eager-fp32", "gram-torch-loop"):
            per_layer = len(mats) // layers
            subset = mats[: 2 * per_layer]
            note = f"timed on 2 of {layers} layers, scaled x{len(mats) / len(subset):.0f}"
        t = _time(fn, subset, 1, sync) * len(mats) / len(subset)
        rows.append((name, t, note))

    print(f"\n{'implementation':<28}{'time':>12}{'ours is faster by':>20}  note")
    for name, t, note in rows:
        speed = "" if name.startswith("ours") else f"{t / ours:.1f}x"
        print(f"{name:<28}{t * 1e3:>9.1f} ms{speed:>20}  {note}")

    sample = mats[:: max(1, len(mats) // 24)]
    refs = newton_schulz_reference([m.cpu() for m in sample])
    outs = newton_schulz(sample)
    err = max(((o.double().cpu() - r).abs().max() / r.abs().max()).item() for o, r in zip(outs, refs))
    print(f"\naccuracy of ours vs the float64 iteration ({len(sample)} matrices): max relative error {err:.1e}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    p = argparse.ArgumentParser()
    register(p.add_subparsers())
