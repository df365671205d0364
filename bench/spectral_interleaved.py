"""Interleaved CPU timing of the fused spectral penalty (ours) against the paper's Cholesky route:
alternating rounds in one process, so load drift hits both alike; prints medians and every round.

    OMP_NUM_THREADS=2 python bench/spectral_interleaved.py qwen3-8b 12
"""
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1])); sys.path.insert(0, str(Path(__file__).resolve().parent))
torch.set_num_threads(2)
from bench_spectral import make_set, cholesky_route, ours, _step
name = sys.argv[1]; rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 8
As, Bs = make_set(name, "cpu")
res = {"ours": [], "cholesky": []}
for fn in (ours, cholesky_route): _step(fn, As, Bs, "cpu")
for _ in range(rounds):
    for k, fn in (("ours", ours), ("cholesky", cholesky_route)):
        t0 = time.perf_counter(); _step(fn, As, Bs, "cpu"); res[k].append(time.perf_counter() - t0)
mo, mc = statistics.median(res["ours"]) * 1e3, statistics.median(res["cholesky"]) * 1e3
print(f"{name}: ours {mo:.0f} ms, cholesky {mc:.0f} ms, ratio {mc/mo:.2f}; ours {[round(x*1e3) for x in res['ours']]} chol {[round(x*1e3) for x in res['cholesky']]}")
