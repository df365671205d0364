"""Newton-Schulz over every rank-32 LoRA factor of Qwen3-0.6B (392) and Qwen3-8B (504), side by
side in one run: ours (the fused op) and the plain-torch baselines of evilbench.kernels.ns_baselines.

  OMP_NUM_THREADS=2 python -m pytest bench/bench_newton_schulz.py --benchmark-only \
      --benchmark-json=/tmp/ns.json && python bench/report.py /tmp/ns.json

Device: CUDA when available (EVILBENCH_BENCH_DEVICE=cpu|cuda overrides); CPU threads:
EVILBENCH_BENCH_THREADS (default 2). Every baseline runs on both sets (the whole CPU run took
24 s on an idle 2-core machine). Convention (shared with the spectral benchmarks): benchmark.group =
"<suite>/<set>", extra_info["impl"] names the implementation ("ours" for ours) and
extra_info["bytes"] is the minimum memory traffic (two reads and one write of every matrix).
"""
from __future__ import annotations

import functools
import os

import pytest
import torch

from evilbench.kernels.lora_sets import lora_matrices
from evilbench.kernels.newton_schulz_op import newton_schulz
from evilbench.kernels.ns_baselines import BASELINES

DEVICE = os.environ.get("EVILBENCH_BENCH_DEVICE") or ("cuda" if torch.cuda.is_available() else "cpu")
THREADS = int(os.environ.get("EVILBENCH_BENCH_THREADS", "2"))
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
if DEVICE == "cpu":
    SETS = [("qwen3-0.6b", "fp32"), ("qwen3-0.6b", "bf16"), ("qwen3-8b", "bf16")]
else:
    SETS = [("qwen3-0.6b", "bf16"), ("qwen3-8b", "bf16"), ("qwen3-8b", "fp32")]
IMPLS = ["ours", *BASELINES]

# rounds per (device, model, impl)
def _rounds(model: str, impl: str) -> int:
    if DEVICE != "cpu":
        return 30 if impl == "ours" else 3
    if model == "qwen3-0.6b":
        return {"ours": 10, "gram-torch-batched": 5, "torch-muon": 1}.get(impl, 2)
    return {"ours": 5, "gram-torch-batched": 3}.get(impl, 2)


def _device_name() -> str:
    if DEVICE == "cuda":
        return torch.cuda.get_device_name()
    return f"cpu ({THREADS} threads)"


@functools.cache
def _mats(model: str, dtype: str):
    return tuple(lora_matrices(model, 32, DTYPES[dtype], device=DEVICE, seed=0))


def _sync():
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def _call(impl: str):
    if impl == "ours":
        # the op itself; check_finite=False skips the wrapper's one status read (a device sync)
        return functools.partial(newton_schulz, check_finite=False)
    return BASELINES[impl]


@pytest.fixture(autouse=True)
def _threads():
    before = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("model,dtype", SETS)
def test_newton_schulz(benchmark, model, dtype, impl):
    rounds = _rounds(model, impl)
    mats = list(_mats(model, dtype))
    fn = _call(impl)
    elem = mats[0].element_size()
    benchmark.group = f"newton_schulz/{model}-r32-{dtype}"
    benchmark.extra_info.update(
        impl=impl,
        bytes=3 * sum(m.numel() for m in mats) * elem,
        n_matrices=len(mats),
        device=_device_name(),
        threads=THREADS,
    )

    def run():
        out = fn(mats)
        _sync()
        return out

    out = benchmark.pedantic(run, rounds=rounds, iterations=1, warmup_rounds=1)
    assert len(out) == len(mats) and all(o.shape == m.shape for o, m in zip(out, mats))


@pytest.mark.skipif(DEVICE != "cuda", reason="device copy bandwidth: GPU only")
def test_copy_bandwidth(benchmark):
    """Device-to-device copy of 1 GiB: the achievable HBM bandwidth the report's floor uses."""
    src = torch.empty(2**30, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    benchmark.group = "memcpy/1GiB"
    benchmark.extra_info.update(impl="copy", bytes=2 * src.numel(), device=_device_name())

    def run():
        dst.copy_(src)
        torch.cuda.synchronize()

    benchmark.pedantic(run, rounds=20, iterations=1, warmup_rounds=2)


@pytest.mark.skipif(DEVICE != "cuda", reason="CUDA graphs: GPU only")
@pytest.mark.parametrize("model,dtype", SETS)
def test_newton_schulz_graph(benchmark, model, dtype):
    """ours captured once in a CUDA graph and replayed: device time without Python/launch overhead."""
    from evilbench.kernels.newton_schulz_op import KJ_COEFFICIENTS, flat_coefficients, normalize_coefficients, ops

    mats = list(_mats(model, dtype))
    coef = flat_coefficients(normalize_coefficients(5, KJ_COEFFICIENTS))
    op = ops().newton_schulz
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            op(mats, coef, 1e-7, False)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        outs, _ = op(mats, coef, 1e-7, False)
    benchmark.group = f"newton_schulz/{model}-r32-{dtype}"
    benchmark.extra_info.update(
        impl="ours-cuda-graph",
        bytes=3 * sum(m.numel() for m in mats) * mats[0].element_size(),
        n_matrices=len(mats),
        device=_device_name(),
    )

    def run():
        graph.replay()
        torch.cuda.synchronize()

    benchmark.pedantic(run, rounds=50, iterations=1, warmup_rounds=3)
    ref = newton_schulz(mats)
    for o, r in zip(outs, ref):
        torch.testing.assert_close(o, r, rtol=0, atol=0)
