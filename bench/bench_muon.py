"""One Muon step over every rank-32 LoRA factor of Qwen3-0.6B: evilbench.optim.Muon (fused op) vs
torch.optim.Muon, same gradients. Same conventions as bench_newton_schulz.py
(group "muon/<set>", extra_info["impl"]).

  OMP_NUM_THREADS=2 python -m pytest bench/bench_muon.py --benchmark-only --benchmark-json=/tmp/m.json
"""
from __future__ import annotations

import os

import pytest
import torch

from evilbench.kernels.lora_sets import lora_matrices
from evilbench.optim import Muon

DEVICE = os.environ.get("EVILBENCH_BENCH_DEVICE") or ("cuda" if torch.cuda.is_available() else "cpu")
THREADS = int(os.environ.get("EVILBENCH_BENCH_THREADS", "2"))
IMPLS = {"ours": Muon, "torch-muon": torch.optim.Muon}


@pytest.mark.parametrize("impl", list(IMPLS))
@pytest.mark.parametrize("dtype", ["fp32"])
def test_muon_step(benchmark, impl, dtype):
    torch.set_num_threads(THREADS)
    params = [torch.nn.Parameter(m) for m in lora_matrices("qwen3-0.6b", 32, torch.float32, device=DEVICE, seed=0)]
    for p, g in zip(params, lora_matrices("qwen3-0.6b", 32, torch.float32, device=DEVICE, seed=1)):
        p.grad = g
    opt = IMPLS[impl](params, lr=1e-3)
    benchmark.group = f"muon/qwen3-0.6b-r32-{dtype}"
    elems = sum(p.numel() for p in params)
    benchmark.extra_info.update(
        impl=impl,
        # param, grad, buffer read twice, buffer written once, param written once (4-byte elements)
        bytes=4 * elems * 7,
        device=torch.cuda.get_device_name() if DEVICE == "cuda" else f"cpu ({THREADS} threads)",
        threads=THREADS,
    )

    def step():
        opt.step()
        if DEVICE == "cuda":
            torch.cuda.synchronize()

    slow = DEVICE == "cpu" and impl == "torch-muon"
    benchmark.pedantic(step, rounds=1 if slow else 5, iterations=1, warmup_rounds=0 if slow else 1)
