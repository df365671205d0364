"""CUDA kernels of the spectral penalty against the CPU kernels and the float64 reference (skips
without a GPU and the CUDA build)."""
from __future__ import annotations

import os

import pytest
import torch

from evilbench.kernels import spectral as S
from tests.conftest import requires_cuda

pytestmark = [requires_cuda, pytest.mark.cuda]


@pytest.fixture
def gen():
    seed = int.from_bytes(os.urandom(4), "little")
    return torch.Generator().manual_seed(seed)


def _pairs(gen, shapes, dtypes=(torch.float32,)):
    A_list, B_list = [], []
    for j, (r, n, m) in enumerate(shapes):
        A_list.append(torch.randn(r, n, generator=gen, dtype=torch.float64).to(dtypes[j % len(dtypes)]))
        B_list.append(torch.randn(m, r, generator=gen, dtype=torch.float64).to(dtypes[(j + 1) % len(dtypes)]))
    return A_list, B_list


SHAPES = [(1, 9, 5), (2, 40, 30), (5, 3, 17), (7, 64, 6), (16, 96, 128), (33, 100, 70), (64, 160, 192),
          (32, 4096, 1024), (32, 3000, 5000), (8, 2049, 2047)]


def _cuda(ts):
    return [t.cuda() for t in ts]


def test_grams_singular_values_and_values_match_cpu(gen):
    A_list, B_list = _pairs(gen, SHAPES, (torch.float32, torch.bfloat16, torch.float16, torch.float64))
    ops = torch.ops.evilbench
    g_cpu = ops.spectral_grams(A_list, B_list)
    g_gpu = ops.spectral_grams(_cuda(A_list), _cuda(B_list)).cpu()
    assert float((g_gpu - g_cpu).abs().max()) <= 1e-12 * float(g_cpu.abs().max()), f"seed {gen.initial_seed()}"
    s_cpu = ops.spectral_singular_values(A_list, B_list)
    s_gpu = ops.spectral_singular_values(_cuda(A_list), _cuda(B_list)).cpu()
    torch.testing.assert_close(s_gpu, s_cpu, rtol=1e-5, atol=1e-6 * float(s_cpu.abs().max()))
    for kind in S.KINDS:
        v_cpu, f_cpu = ops.spectral_forward(A_list, B_list, kind, True)
        v_gpu, f_gpu = ops.spectral_forward(_cuda(A_list), _cuda(B_list), kind, True)
        torch.testing.assert_close(v_gpu.cpu(), v_cpu, rtol=1e-8, atol=1e-10, msg=f"{kind} seed {gen.initial_seed()}")
        offs = S._factor_offsets(A_list)
        for i in range(len(A_list)):
            a, b = f_gpu[offs[i] : offs[i + 1]].cpu(), f_cpu[offs[i] : offs[i + 1]]
            scale = float(b.abs().max())
            assert scale < 1e-12 or float((a - b).abs().max()) <= 1e-6 * scale, (kind, i, f"seed {gen.initial_seed()}")


@pytest.mark.parametrize("kind", S.KINDS)
def test_penalty_and_gradients_match_reference(kind, gen):
    A_list, B_list = _pairs(gen, SHAPES[:7] + [(32, 500, 700)])
    A_req = [A.cuda().requires_grad_() for A in A_list]
    B_req = [B.cuda().requires_grad_() for B in B_list]
    out = S.spectral_penalty(A_req, B_req, kind, "sum", impl="fused")
    out.backward()
    assert out.is_cuda and out.dtype == torch.float32
    ref_total = 0.0
    for A, B, Ar, Br in zip(A_list, B_list, A_req, B_req):
        A64, B64 = A.double().requires_grad_(), B.double().requires_grad_()
        v = S.reference_penalty(A64, B64, kind)
        gA, gB = torch.autograd.grad(v, [A64, B64], allow_unused=True)
        ref_total += float(v.detach())
        for g, ref in ((Ar.grad, gA), (Br.grad, gB)):
            ref = torch.zeros_like(g, dtype=torch.float64, device="cpu") if ref is None else ref
            if float(ref.norm()) > 1e-9:
                assert float((g.cpu().double() - ref).norm() / ref.norm()) < 1e-4, f"seed {gen.initial_seed()}"
    assert abs(float(out) - ref_total) < 1e-5 * max(1.0, abs(ref_total))


def test_zero_nan_and_mixed_dtypes(gen):
    A_list = [torch.randn(8, 20), torch.randn(8, 20), torch.randn(4, 10, dtype=torch.float64)]
    B_list = [torch.zeros(30, 8), torch.randn(30, 8, dtype=torch.bfloat16), torch.randn(7, 4, dtype=torch.float64)]
    A_req = [A.cuda().requires_grad_() for A in A_list]
    B_req = [B.cuda().requires_grad_() for B in B_list]
    out = S.spectral_penalty(A_req, B_req, "fro_nuclear", impl="fused")
    out.backward()
    assert torch.equal(A_req[0].grad, torch.zeros_like(A_req[0]))
    assert torch.equal(B_req[0].grad, torch.zeros_like(B_req[0]))
    assert B_req[1].grad.dtype == torch.bfloat16 and A_req[2].grad.dtype == torch.float64
    B_bad = [B.cuda() for B in B_list]
    B_bad[1][3, 2] = float("nan")
    with pytest.raises(ValueError, match="pair 1"):
        S.spectral_penalty([A.cuda() for A in A_list], B_bad, impl="fused")


def test_gradcheck_float64_cuda(gen):
    shapes = [(3, 5, 4), (2, 3, 6), (4, 4, 4)]
    mats = [torch.randn(r, n, generator=gen, dtype=torch.float64).cuda().requires_grad_() for r, n, m in shapes]
    mats += [torch.randn(m, r, generator=gen, dtype=torch.float64).cuda().requires_grad_() for r, n, m in shapes]
    w = torch.randn(len(shapes), dtype=torch.float64, device="cuda")
    for kind in S.KINDS:
        def f(*t, kind=kind):
            return (S.spectral_penalty_per_pair(t[:3], t[3:], kind, impl="fused") * w).sum()

        assert torch.autograd.gradcheck(f, mats, eps=1e-6, atol=1e-6, rtol=1e-4)


def test_opcheck_cuda(gen):
    A_list = [torch.randn(4, 10, device="cuda").requires_grad_(),
              torch.randn(3, 7, device="cuda", dtype=torch.bfloat16)]
    B_list = [torch.randn(12, 4, device="cuda").requires_grad_(), torch.randn(9, 3, device="cuda")]
    ops = torch.ops.evilbench
    torch.library.opcheck(ops.spectral_forward.default, (A_list, B_list, "fro_nuclear", True))
    _, factors = ops.spectral_forward(A_list, B_list, "entropy", True)
    grad_values = torch.rand(2, device="cuda", dtype=torch.float64)
    torch.library.opcheck(ops.spectral_backward.default,
                          ([A.detach() for A in A_list], [B.detach() for B in B_list], factors, grad_values))
    torch.library.opcheck(ops.spectral_singular_values.default, (A_list, B_list))


def test_qwen_shaped_set_matches_cpu(gen):
    # two layers of Qwen3-8B-shaped adapters, r = 32: fused CUDA vs fused CPU, values and gradients
    shapes = [(4096, 4096), (4096, 1024), (4096, 1024), (4096, 4096), (4096, 12288), (4096, 12288), (12288, 4096)] * 2
    A_list = [torch.randn(32, di, generator=gen) / di**0.5 for di, do in shapes]
    B_list = [0.01 * torch.randn(do, 32, generator=gen) for di, do in shapes]
    res = {}
    for dev in ("cpu", "cuda"):
        A_req = [A.detach().to(dev).requires_grad_() for A in A_list]
        B_req = [B.detach().to(dev).requires_grad_() for B in B_list]
        out = S.spectral_penalty(A_req, B_req, "entropy", impl="fused")
        out.backward()
        res[dev] = (float(out), [t.grad.cpu() for t in A_req + B_req])
    assert abs(res["cpu"][0] - res["cuda"][0]) <= 1e-6 * abs(res["cpu"][0])
    for a, b in zip(res["cpu"][1], res["cuda"][1]):
        assert float((a - b).norm() / b.norm()) < 1e-5
