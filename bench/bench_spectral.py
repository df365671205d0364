"""Spectral penalty loss + gradient over every LoRA adapter of Qwen3-0.6B (196) and Qwen3-8B (252),
r = 32: ours (fused ops) vs the paper's Cholesky route in plain torch with autograd vs dense
torch.linalg.svdvals(B @ A) with autograd.

Run:  python -m pytest bench/bench_spectral.py --benchmark-only --benchmark-json=out.json
      (add -k cpu / -k cuda; EVILBENCH_BENCH_DENSE=0 skips the slow dense baseline)
      python bench/report.py out.json --no-merge   # ratio table (without --no-merge: into bench/results/)

Conventions shared with the other benchmarks: benchmark.group = "spectral/<set>", extra_info:
impl ("ours" | "cholesky-torch" | "dense-svd"), n_adapters, bytes (the floor: two reads of every A
and B and one write of their gradients), device, dtype. The dense baseline times ONE transformer
layer (7 adapters, every shape of the set) and reports `scaled_to_set_s` = time × layers (layers
are identical, so this is the set's time, not measured in one go); its `n_adapters` is 7.
Inputs: A ~ N(0, 1/d_in), B = 0.01 · G diag(logspace(0, -1.5, r)) (a decaying spectrum, condition
number ~30 like trained adapters). Accuracy vs float64 dense SVD autograd is recorded in extra_info
(rel_err_value, rel_err_grad) for the penalty of one layer (8B: its k and v adapters only).
"""
from __future__ import annotations

import functools
import math
import os
import time

import pytest
import torch

from evilbench.kernels import spectral as S

R = 32
SETS = {
    # name: (hidden, q_out, kv_out, intermediate, layers)
    "qwen3-0.6b": (1024, 2048, 1024, 3072, 28),
    "qwen3-8b": (4096, 4096, 1024, 12288, 36),
}
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
DENSE = os.environ.get("EVILBENCH_BENCH_DENSE", "1") != "0"


def layer_shapes(name):
    h, q, kv, inter, _ = SETS[name]
    # (d_in, d_out) of q, k, v, o, gate, up, down
    return [(h, q), (h, kv), (h, kv), (q, h), (h, inter), (h, inter), (inter, h)]


def make_set(name, device, dtype=torch.float32, layers=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    decay = torch.logspace(0, -1.5, R)
    As, Bs = [], []
    for _ in range(SETS[name][4] if layers is None else layers):
        for d_in, d_out in layer_shapes(name):
            A = torch.randn(R, d_in, generator=g) / math.sqrt(d_in)
            B = 0.01 * torch.randn(d_out, R, generator=g) * decay
            As.append(A.to(device=device, dtype=dtype).requires_grad_())
            Bs.append(B.to(device=device, dtype=dtype).requires_grad_())
    return As, Bs


def floor_bytes(As, Bs):
    return 3 * sum(T.numel() * T.element_size() for T in As + Bs)


def cholesky_route(As, Bs):
    """The paper's route in plain torch: Grams, Cholesky of BᵀB, eigenvalues of LᵀAAᵀL, autograd."""
    total = 0.0
    for A, B in zip(As, Bs):
        P = B.mT @ B
        Q = A @ A.mT
        L = torch.linalg.cholesky(P)
        K = L.mT @ Q @ L
        lam = torch.linalg.eigvalsh(K).clamp_min(1e-30)
        total = total + lam.sum().sqrt() / lam.sqrt().sum() - 1.0 / math.sqrt(A.shape[0])
    return total / len(As)


def dense_route(As, Bs):
    total = 0.0
    for A, B in zip(As, Bs):
        s = torch.linalg.svdvals(B @ A)[: A.shape[0]]
        total = total + s.norm() / s.sum() - 1.0 / math.sqrt(A.shape[0])
    return total / len(As)


def ours(As, Bs):
    return S.spectral_penalty(As, Bs, "fro_nuclear", "mean", impl="fused")


def _step(fn, As, Bs, device):
    for T in As + Bs:
        T.grad = None
    loss = fn(As, Bs)
    loss.backward()
    if device == "cuda":
        torch.cuda.synchronize()
    return loss


@functools.cache
def _reference(name):
    """float64 dense-SVD autograd value and gradients for the accuracy subset of a set: one layer
    (Qwen3-8B: its k and v adapters only, to keep float64 SVDs of 12288-wide matrices out)."""
    As, Bs = make_set(name, "cpu", torch.float32, layers=1, seed=1)
    if name == "qwen3-8b":
        As, Bs = As[1:3], Bs[1:3]
    A64 = [A.detach().double().requires_grad_() for A in As]
    B64 = [B.detach().double().requires_grad_() for B in Bs]
    ref = sum(S.reference_penalty(A, B, "fro_nuclear") for A, B in zip(A64, B64)) / len(A64)
    ref.backward()
    return As, Bs, float(ref), [T.grad for T in A64 + B64]


def _accuracy(fn, name, device, dtype):
    """Relative errors of the penalty value and of the gradients (norm-wise over all matrices of the
    subset) against float64 dense-SVD autograd."""
    As, Bs, ref, ref_grads = _reference(name)
    As = [A.detach().to(device, dtype).requires_grad_() for A in As]
    Bs = [B.detach().to(device, dtype).requires_grad_() for B in Bs]
    loss = _step(fn, As, Bs, device)
    num = sum(float((T.grad.double().cpu() - g).norm() ** 2) for T, g in zip(As + Bs, ref_grads))
    den = sum(float(g.norm() ** 2) for g in ref_grads)
    return abs(float(loss) - ref) / abs(ref), math.sqrt(num / den)


def _info(benchmark, impl, name, device, dtype, As, Bs, n_adapters):
    benchmark.group = f"spectral/{name}"
    benchmark.extra_info.update(
        impl=impl,
        n_adapters=n_adapters,
        bytes=floor_bytes(As, Bs),
        device=torch.cuda.get_device_name() if device == "cuda" else "cpu",
        dtype=str(dtype).replace("torch.", ""),
        threads=torch.get_num_threads(),
    )


@pytest.fixture(autouse=True)
def _two_threads(request):
    callspec = getattr(request.node, "callspec", None)
    if callspec is None or callspec.params.get("device") != "cpu":
        yield
        return
    prev = torch.get_num_threads()
    torch.set_num_threads(2)  # the 2-core CPU setting of the recorded results
    yield
    torch.set_num_threads(prev)


def _op_times(As, Bs, device, iters=20):
    """Seconds per call of each registered op, called back to back without autograd or checks (on
    CUDA this is the kernels' time: the host enqueues ahead). grams = pass 1 (+ a cheap r × r
    reduction), singular_values = pass 1 + Jacobi, forward = pass 1 + full r × r phase, backward =
    pass 2 (apply)."""
    ops = torch.ops.evilbench
    A = [a.detach() for a in As]
    B = [b.detach() for b in Bs]
    _, factors = ops.spectral_forward(A, B, "fro_nuclear", True)
    gv = torch.ones(len(A), dtype=torch.float64, device=device)
    calls = {
        "grams": lambda: ops.spectral_grams(A, B),
        "singular_values": lambda: ops.spectral_singular_values(A, B),
        "forward": lambda: ops.spectral_forward(A, B, "fro_nuclear", True),
        "backward": lambda: ops.spectral_backward(A, B, factors, gv),
    }
    out = {}
    for name, fn in calls.items():
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(iters):
            fn()
        if device == "cuda":
            torch.cuda.synchronize()
        out[f"op_{name}_s"] = (time.perf_counter() - t) / iters
    out["op_forward_backward_s"] = out["op_forward_s"] + out["op_backward_s"]
    return out


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", list(SETS))
def test_ours(benchmark, name, device):
    dtype = torch.float32
    As, Bs = make_set(name, device, dtype)
    _info(benchmark, "ours", name, device, dtype, As, Bs, len(As))
    ev, eg = _accuracy(ours, name, device, dtype)
    benchmark.extra_info.update(rel_err_value=ev, rel_err_grad=eg)
    if device == "cuda":
        benchmark.extra_info.update(_op_times(As, Bs, device))
    benchmark.pedantic(_step, args=(ours, As, Bs, device), rounds=5, iterations=1, warmup_rounds=1)
    assert ev <= 1e-3 and eg <= 1e-2


@pytest.mark.parametrize("device", ["cuda"] if "cuda" in DEVICES else [])
@pytest.mark.parametrize("name", list(SETS))
def test_ours_bf16(benchmark, name, device):
    dtype = torch.bfloat16
    As, Bs = make_set(name, device, dtype)
    _info(benchmark, "ours", name, device, dtype, As, Bs, len(As))
    benchmark.group = f"spectral/{name}-bf16"
    benchmark.extra_info.update(_op_times(As, Bs, device))
    benchmark.pedantic(_step, args=(ours, As, Bs, device), rounds=10, iterations=1, warmup_rounds=2)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", list(SETS))
def test_cholesky_torch(benchmark, name, device):
    dtype = torch.float32
    As, Bs = make_set(name, device, dtype)
    _info(benchmark, "cholesky-torch", name, device, dtype, As, Bs, len(As))
    ev, eg = _accuracy(cholesky_route, name, device, dtype)
    benchmark.extra_info.update(rel_err_value=ev, rel_err_grad=eg)
    benchmark.pedantic(_step, args=(cholesky_route, As, Bs, device), rounds=3, iterations=1, warmup_rounds=1)


@pytest.mark.skipif(not DENSE, reason="EVILBENCH_BENCH_DENSE=0")
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", list(SETS))
def test_dense_svd(benchmark, name, device):
    dtype = torch.float32
    As, Bs = make_set(name, device, dtype, layers=1)
    _info(benchmark, "dense-svd", name, device, dtype, As, Bs, len(As))
    layers = SETS[name][4]
    benchmark.extra_info["bytes"] *= layers  # the floor of the whole set, for the ratio table
    benchmark.extra_info["layers_measured"] = 1
    benchmark.extra_info["scale"] = layers
    benchmark.pedantic(_step, args=(dense_route, As, Bs, device), rounds=1, iterations=1)
    benchmark.extra_info["scaled_to_set_s"] = benchmark.stats.stats.mean * layers


@pytest.mark.parametrize("device", ["cuda"] if "cuda" in DEVICES else [])
def test_copy_bandwidth(benchmark, device):
    """Device copy bandwidth (read + write of 1 GiB), to turn `bytes` into a floor time."""
    x = torch.empty(2**28, dtype=torch.float32, device=device)
    y = torch.empty_like(x)

    def copy():
        y.copy_(x)
        torch.cuda.synchronize()

    benchmark.group = "spectral/bandwidth"
    benchmark.extra_info.update(impl="copy", bytes=2 * x.numel() * 4, device=torch.cuda.get_device_name())
    benchmark.pedantic(copy, rounds=20, iterations=1, warmup_rounds=3)
