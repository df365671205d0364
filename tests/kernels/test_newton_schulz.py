"""evilbench.kernels.newton_schulz against the float64 classic iteration (fresh random draws)."""
from __future__ import annotations

import math

import pytest
import torch

from evilbench.kernels import newton_schulz
from evilbench.kernels.newton_schulz_op import KJ_COEFFICIENTS, flat_coefficients, newton_schulz_reference, ops
from tests.conftest import requires_cuda

# max |out - ref| / max |ref| allowed per input dtype (output rounding dominates for 16-bit types)
TOL = {torch.float32: 1e-4, torch.bfloat16: 1.6e-2, torch.float16: 2e-3}


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    assert out.shape == ref.shape
    scale = ref.abs().max().item()
    return (out.double() - ref).abs().max().item() / max(scale, 1e-300)


def check(mats, outs, steps=5, coefficients=KJ_COEFFICIENTS, eps=1e-7, tol=None):
    refs = newton_schulz_reference(mats, steps, coefficients, eps)
    assert len(outs) == len(mats)
    for i, (m, o, r) in enumerate(zip(mats, outs, refs)):
        assert o.shape == m.shape and o.dtype == m.dtype, i
        assert torch.isfinite(o).all(), i
        err = rel_err(o, r)
        assert err <= (tol or TOL[m.dtype]), f"matrix {i} {tuple(m.shape)} {m.dtype}: rel err {err:.2e}"


def with_spectrum(rows, cols, sigma, dtype=torch.float32):
    """rows x cols matrix with singular values sigma (len min(rows, cols)), random singular vectors."""
    k = min(rows, cols)
    u, _ = torch.linalg.qr(torch.randn(rows, k, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(cols, k, dtype=torch.float64))
    return (u * torch.as_tensor(sigma, dtype=torch.float64)) @ v.T


SHAPES = [(32, 1024), (1024, 32), (1, 37), (45, 1), (7, 9), (9, 7), (16, 16), (13, 300), (300, 13),
          (64, 200), (72, 72), (33, 129)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_matches_float64_reference_on_mixed_shapes(dtype):
    mats = [torch.randn(s).to(dtype) for s in SHAPES]
    check(mats, newton_schulz(mats))


def test_mixed_dtypes_and_scales_in_one_call():
    dtypes = [torch.float32, torch.bfloat16, torch.float16]
    mats = [(torch.randn(s) * 10 ** float(torch.empty(1).uniform_(-3, 3))).to(dtypes[i % 3])
            for i, s in enumerate(SHAPES)]
    check(mats, newton_schulz(mats))


def test_classic_path_above_rank_256():
    mats = [torch.randn(260, 300), torch.randn(300, 258).bfloat16()]
    check(mats, newton_schulz(mats))


def test_ill_conditioned_and_near_rank_one():
    cond = with_spectrum(32, 700, torch.logspace(0, -6, 32)).float()
    cond_tall = with_spectrum(500, 24, torch.logspace(0, -6, 24)).float()
    u, v = torch.randn(40, 1), torch.randn(1, 333)
    rank1 = (u @ v + 1e-5 * torch.randn(40, 333)).float()
    repeated = with_spectrum(16, 200, torch.ones(16)).float()  # all singular values equal
    deficient = with_spectrum(24, 90, torch.cat([torch.ones(12), torch.zeros(12)])).float()
    mats = [cond, cond_tall, rank1, repeated, deficient]
    check(mats, newton_schulz(mats), tol=1e-4)
    check([m.bfloat16() for m in mats], newton_schulz([m.bfloat16() for m in mats]), tol=5e-2)


# Square to LoRA-thin, both orientations; r = 1; ranks on both sides of the CUDA buckets (16/32/64).
ACCURACY_SHAPES = [(256, 256), (128, 128), (64, 64), (16, 16), (2, 2), (100, 120), (120, 100), (64, 80),
                   (64, 200), (200, 256), (32, 1024), (1024, 16), (8, 4096), (1, 300), (300, 1)]


def hard_matrices():
    """Ill-conditioned, rank-deficient, repeated-singular-value and zero inputs (fp32)."""
    out = [
        with_spectrum(32, 700, torch.logspace(0, -6, 32)),     # cond 1e6, wide
        with_spectrum(500, 24, torch.logspace(0, -6, 24)),     # cond 1e6, tall
        with_spectrum(64, 64, torch.logspace(0, -6, 64)),      # cond 1e6, square
        with_spectrum(48, 48, torch.logspace(0, -3, 48)),      # cond 1e3, square
        with_spectrum(24, 90, torch.cat([torch.ones(12), torch.zeros(12)])),  # rank 12 of 24
        with_spectrum(60, 60, torch.cat([torch.ones(59), torch.zeros(1)])),   # square, rank 59
        with_spectrum(16, 200, torch.ones(16)),                 # all singular values equal
        with_spectrum(40, 300, torch.cat([torch.full((20,), 2.0), torch.full((20,), 1e-3)])),  # two clusters
        torch.randn(40, 1) @ torch.randn(1, 333) + 1e-5 * torch.randn(40, 333),  # near rank one
        torch.zeros(8, 40),
    ]
    return [m.float() for m in out]


@pytest.mark.parametrize("steps", range(1, 13))
def test_fp32_within_1e4_of_float64_at_every_step_count(steps):
    """Every output element within 1e-4 (absolute) of the float64 classic iteration, whatever the
    step count, shape or conditioning. Fresh random draws every run."""
    mats = [torch.randn(s) for s in ACCURACY_SHAPES] + hard_matrices()
    outs = newton_schulz(mats, steps=steps)
    refs = newton_schulz_reference(mats, steps)
    errs = [(o.double() - r).abs().max().item() for o, r in zip(outs, refs)]
    worst = max(range(len(mats)), key=lambda i: errs[i])
    assert errs[worst] <= 1e-4, f"{steps} steps, {tuple(mats[worst].shape)} (#{worst}): max abs err {errs[worst]:.2e}"


def test_muon_ten_steps_on_ill_conditioned_gradients():
    """Muon(ns_steps=10) through the fused update: near-square and ill-conditioned gradients."""
    shapes = [(64, 64), (256, 256), (48, 60), (32, 700)]
    params = [torch.randn(s) for s in shapes]
    grads = [torch.randn(s) for s in shapes[:3]] + [with_spectrum(32, 700, torch.logspace(0, -6, 32)).float()]
    bufs = [torch.zeros(s) for s in shapes]
    ref = []
    m = torch.tensor(0.95)
    for p, g in zip(params, grads):
        # U as the kernel forms it in fp32 (buf = (1 - m) g after one step, U = fma(m, buf - g, g)):
        # at cond 1e6 and 10 steps the map is sensitive enough that U's own rounding shows
        buf = (1 - m) * g
        u = (g.double() + m.double() * (buf - g).double()).float().double()
        o = newton_schulz_reference([u], 10, eps=1e-7, clamp_eps=True)[0]
        ref.append(p.double() * (1 - 0.02 * 0.1) - 0.02 * o)
    coef = flat_coefficients([KJ_COEFFICIENTS] * 10)
    ops().muon_update_(params, grads, bufs, 0.02, [1.0] * 4, 0.1, 0.95, True, coef, 1e-7)
    for p, r, s in zip(params, ref, shapes):
        err = (p.double() - r).abs().max().item()
        assert err <= 0.02 * 1e-4 + 1e-6, f"{s}: {err:.2e}"


def test_zero_matrices_give_exact_zeros():
    mats = [torch.zeros(8, 40), torch.zeros(40, 8, dtype=torch.bfloat16), torch.zeros(1, 1), torch.zeros(300, 270)]
    for m, o in zip(mats, newton_schulz(mats)):
        assert o.dtype == m.dtype and torch.equal(o, torch.zeros_like(m))


@pytest.mark.parametrize("scale", [1e-30, 1e-12, 1e-7, 1e20, 1e30])
def test_tiny_and_huge_norms(scale):
    # fp32 squares of these under/overflow: the op rescales by a power of two and stays accurate
    mats = [torch.randn(12, 50) * scale, torch.randn(70, 5) * scale]
    check(mats, newton_schulz(mats), tol=1e-4)


def test_non_contiguous_inputs():
    base = torch.randn(80, 96)
    mats = [base[:, :40], base[:40, :].t(), base[::2, ::3], base.t()[5:25], torch.randn(64, 20).t()[:, 3:50]]
    assert not all(m.is_contiguous() for m in mats)
    outs = newton_schulz(mats)
    check(mats, outs)
    for m, o in zip(mats, outs):  # values depend on values only, not on layout
        torch.testing.assert_close(o, newton_schulz([m.contiguous()])[0], rtol=1e-5, atol=1e-6)


def test_per_step_coefficient_lists_and_step_counts():
    schedule = [KJ_COEFFICIENTS, (3.0, -3.2, 1.2), (2.5, -2.0, 0.6), (1.875, -1.25, 0.375)]
    mats = [torch.randn(24, 100), torch.randn(150, 10), torch.randn(5, 5)]
    check(mats, newton_schulz(mats, steps=4, coefficients=schedule), steps=4, coefficients=schedule)
    for steps in (0, 1, 3):
        check(mats, newton_schulz(mats, steps=steps), steps=steps)
    check(mats, newton_schulz(mats, eps=1e-3), eps=1e-3)


def test_results_do_not_depend_on_threads_or_instruction_set(monkeypatch):
    mats = [torch.randn(s) for s in SHAPES] + [torch.randn(40, 300).bfloat16(), torch.randn(200, 24).half()]
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = newton_schulz(mats)
        torch.set_num_threads(2)
        two = newton_schulz(mats)
    finally:
        torch.set_num_threads(before)
    for a, b in zip(one, two):  # every matrix is computed by one thread, the same way
        assert torch.equal(a, b)
    monkeypatch.setenv("EVILBENCH_CPU_ISA", "portable")
    portable = newton_schulz(mats)
    check(mats, portable)
    for a, b in zip(one, portable):
        torch.testing.assert_close(a.float(), b.float(), rtol=2e-2, atol=1e-5)


def test_nan_and_inf_name_the_matrix():
    good = torch.randn(4, 9)
    for bad_value in (float("nan"), float("inf"), -float("inf")):
        bad = torch.randn(30, 6)
        bad[17, 2] = bad_value
        with pytest.raises(ValueError, match=r"mats\[2\]"):
            newton_schulz([good, good, bad, good])
    big = torch.randn(300, 270)
    big[0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"mats\[1\]"):
        newton_schulz([good, big])
    outs = newton_schulz([good, bad], check_finite=False)
    assert torch.isnan(outs[1]).all() and torch.isfinite(outs[0]).all()


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="2-D"):
        newton_schulz([torch.randn(3, 4), torch.randn(5)])
    with pytest.raises(ValueError, match="dtype"):
        newton_schulz([torch.randn(3, 4, dtype=torch.float64)])
    with pytest.raises(ValueError, match="dtype"):
        newton_schulz([torch.ones(3, 4, dtype=torch.int32)])
    with pytest.raises(TypeError, match="list"):
        newton_schulz(torch.randn(3, 4))
    with pytest.raises(TypeError, match=r"mats\[1\]"):
        newton_schulz([torch.randn(3, 4), [[1.0]]])
    with pytest.raises(ValueError, match="3 .*triples"):
        newton_schulz([torch.randn(3, 4)], steps=3, coefficients=[(1, 2, 3), (1, 2, 3)])
    with pytest.raises(ValueError, match="coefficients"):
        newton_schulz([torch.randn(3, 4)], coefficients=(1.0, 2.0))
    with pytest.raises(ValueError, match="steps"):
        newton_schulz([torch.randn(3, 4)], steps=-1)
    with pytest.raises(ValueError, match="eps"):
        newton_schulz([torch.randn(3, 4)], eps=float("nan"))


def test_empty_inputs():
    assert newton_schulz([]) == []
    outs = newton_schulz([torch.randn(0, 5), torch.randn(3, 4)])
    assert outs[0].shape == (0, 5)


def test_opcheck_newton_schulz():
    mats = [torch.randn(6, 20), torch.randn(30, 5).bfloat16(), torch.randn(8, 8).t(), torch.randn(4, 7).half()]
    coef = flat_coefficients([KJ_COEFFICIENTS] * 3)
    torch.library.opcheck(ops().newton_schulz.default, (mats, coef, 1e-7, False))
    torch.library.opcheck(ops().newton_schulz.default, (mats, coef, 1e-7, True))


def test_opcheck_muon_update():
    shapes = [(6, 20), (30, 5), (8, 8)]
    params = [torch.randn(s) for s in shapes]
    grads = [torch.randn(s) for s in shapes]
    bufs = [torch.randn(s) for s in shapes]
    coef = flat_coefficients([KJ_COEFFICIENTS] * 5)
    args = (params, grads, bufs, 0.02, [1.0, math.sqrt(6.0), 1.0], 0.1, 0.95, True, coef, 1e-7)
    torch.library.opcheck(ops().muon_update_.default, args)


@requires_cuda
@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_cuda_matches_reference(dtype):
    shapes = SHAPES + [(100, 70), (300, 260), (8, 12288), (12288, 32)]
    mats = [torch.randn(s).to(dtype).cuda() for s in shapes]
    outs = newton_schulz(mats)
    assert all(o.is_cuda for o in outs)
    # tensor cores on 3-part bf16 splits: a few ulp of fp32 above the CPU's fp32 FMAs
    check([m.cpu() for m in mats], [o.cpu() for o in outs], tol=5e-4 if dtype == torch.float32 else None)


@requires_cuda
@pytest.mark.cuda
@pytest.mark.parametrize("steps", [1, 4, 5, 6, 8, 10, 12])
def test_cuda_within_1e4_of_float64_at_every_step_count(steps):
    """The CPU test's inputs on the GPU: the fast path (tensor cores) where Ĝ is well-conditioned,
    the in-kernel float64 path elsewhere; ranks > 64 take the ATen float64 Gram form."""
    mats = [torch.randn(s) for s in ACCURACY_SHAPES] + hard_matrices()
    outs = newton_schulz([m.cuda() for m in mats], steps=steps)
    refs = newton_schulz_reference(mats, steps)
    errs = [(o.cpu().double() - r).abs().max().item() for o, r in zip(outs, refs)]
    worst = max(range(len(mats)), key=lambda i: errs[i])
    assert errs[worst] <= 1e-4, f"{steps} steps, {tuple(mats[worst].shape)} (#{worst}): max abs err {errs[worst]:.2e}"
    # the fused Muon update takes the same paths
    params = [torch.randn(m.shape) for m in mats]
    grads = [m.clone() for m in mats]
    ps, gs, bs = [p.cuda() for p in params], [g.cuda() for g in grads], [torch.zeros_like(g).cuda() for g in grads]
    ops().muon_update_(ps, gs, bs, 1.0, [1.0] * len(ps), 0.0, 0.0, False,
                       flat_coefficients([KJ_COEFFICIENTS] * steps), 1e-7)
    refs = newton_schulz_reference(mats, steps, clamp_eps=True)
    errs = [(p.double() - pc.cpu().double() - r).abs().max().item() for p, pc, r in zip(params, ps, refs)]
    worst = max(range(len(mats)), key=lambda i: errs[i])
    assert errs[worst] <= 1e-4 + 1e-6, f"muon {steps} steps, {tuple(mats[worst].shape)}: {errs[worst]:.2e}"


@requires_cuda
@pytest.mark.cuda
def test_cuda_degenerate_and_errors():
    mats = [torch.zeros(8, 40), torch.randn(12, 50) * 1e-30, torch.randn(70, 5) * 1e30,
            with_spectrum(32, 700, torch.logspace(0, -6, 32)).float(), torch.randn(80, 96)[::2, ::3]]
    outs = newton_schulz([m.cuda() for m in mats])
    assert torch.equal(outs[0].cpu(), torch.zeros(8, 40))
    # cond 1e6 on tensor cores: ~3e-3 measured on an H100 (the CPU's fp32 FMAs: ~5e-4)
    check(mats[1:], [o.cpu() for o in outs[1:]], tol=4e-3)
    bad = torch.randn(30, 6)
    bad[3, 3] = float("nan")
    with pytest.raises(ValueError, match=r"mats\[1\]"):
        newton_schulz([mats[3].cuda(), bad.cuda()])


@requires_cuda
@pytest.mark.cuda
def test_cuda_graph_capture_and_opcheck():
    mats = [torch.randn(s).cuda() for s in [(32, 1024), (1024, 32), (16, 300)]]
    coef = flat_coefficients([KJ_COEFFICIENTS] * 5)
    op = ops().newton_schulz
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(2):
            op(mats, coef, 1e-7, False)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        outs, _ = op(mats, coef, 1e-7, False)
    for m in mats:
        m.copy_(torch.randn_like(m))
    graph.replay()
    torch.cuda.synchronize()
    check([m.cpu() for m in mats], [o.cpu() for o in outs])
    torch.library.opcheck(op.default, ([m[:8, :40] for m in mats[:1]] + mats[1:], coef, 1e-7, False))
