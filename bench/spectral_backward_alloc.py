"""Spectral backward on the CPU: separately allocated gradients (the registered op) against
one block per dtype reused across calls once the previous gradients are dropped (the eager path),
and the forward, interleaved.

    OMP_NUM_THREADS=2 python bench/spectral_backward_alloc.py qwen3-8b
"""
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1])); sys.path.insert(0, str(Path(__file__).resolve().parent))
torch.set_num_threads(2)
from evilbench.kernels import _ext; C = _ext.load()
from bench_spectral import make_set
As, Bs = make_set(sys.argv[1], "cpu"); Ad = [a.detach() for a in As]; Bd = [b.detach() for b in Bs]
ops = torch.ops.evilbench
val, fac = ops.spectral_forward(Ad, Bd, "fro_nuclear", True); gv = torch.ones_like(val)
r = {"separate": [], "grouped": [], "forward": []}
for _ in range(8):
    for k, fn in (("separate", lambda: ops.spectral_backward(Ad, Bd, fac, gv)), ("grouped", lambda: C._spectral_backward_grouped(Ad, Bd, fac, gv)), ("forward", lambda: ops.spectral_forward(Ad, Bd, "fro_nuclear", True))):
        t0 = time.perf_counter(); out = fn(); r[k].append(time.perf_counter() - t0); del out
print({k: round(statistics.median(v) * 1e3) for k, v in r.items()}, {k: [round(x * 1e3) for x in v] for k, v in r.items()})
