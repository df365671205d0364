"""lora_singular_values / spectral_penalty against the float64 dense-SVD reference, on fresh random
inputs (the seed changes per run and is printed on failure), for the plain-torch path and the fused
ops (when the extension is built)."""
from __future__ import annotations

import math
import os

import pytest
import torch

from evilbench.kernels import spectral as S

KINDS = S.KINDS


def _fused_ok():
    try:
        return S._fused_ops_available(torch.device("cpu"))
    except Exception:
        return False


IMPLS = ["torch", pytest.param("fused", marks=pytest.mark.skipif(not _fused_ok(),
                                                                 reason="evilbench._C spectral ops not built"))]


@pytest.fixture
def gen():
    seed = int.from_bytes(os.urandom(4), "little")
    g = torch.Generator().manual_seed(seed)
    return g


def _randn(g, *shape, dtype=torch.float32):
    return torch.randn(*shape, generator=g, dtype=torch.float64).to(dtype)


def _orthonormal(g, n, k):
    q, _ = torch.linalg.qr(torch.randn(n, k, generator=g, dtype=torch.float64))
    return q


def _pair_with_spectrum(g, sigma, n, m, dtype=torch.float32):
    """A (r × n), B (m × r) with B @ A = U diag(sigma) Vᵀ, split by a random invertible r × r mix."""
    r = len(sigma)
    U, V = _orthonormal(g, m, r), _orthonormal(g, n, r)
    G = _orthonormal(g, r, r) * (0.5 + 1.5 * torch.rand(r, generator=g, dtype=torch.float64))  # cond(G) ≤ 4
    B = U @ torch.diag(torch.as_tensor(sigma, dtype=torch.float64)) @ G
    A = torch.linalg.solve(G, V.T)
    return A.to(dtype), B.to(dtype)


def _ref(A_list, B_list, kind):
    """Per-pair reference values and gradients in float64 (dense SVD autograd)."""
    vals, gAs, gBs = [], [], []
    for A, B in zip(A_list, B_list):
        A64 = A.detach().double().requires_grad_()
        B64 = B.detach().double().requires_grad_()
        v = S.reference_penalty(A64, B64, kind)
        gA, gB = torch.autograd.grad(v, [A64, B64], allow_unused=True)
        vals.append(float(v.detach()))
        gAs.append(torch.zeros_like(A64) if gA is None else gA)
        gBs.append(torch.zeros_like(B64) if gB is None else gB)
    return torch.tensor(vals, dtype=torch.float64), gAs, gBs


def _ours(A_list, B_list, kind, impl, reduction="sum"):
    A_req = [A.detach().clone().requires_grad_() for A in A_list]
    B_req = [B.detach().clone().requires_grad_() for B in B_list]
    out = S.spectral_penalty(A_req, B_req, kind, reduction, impl=impl)
    out.backward()
    return out, [A.grad for A in A_req], [B.grad for B in B_req]


def _rel(x, ref, floor=1e-30):
    return float((x.double() - ref).norm() / max(float(ref.norm()), floor))


SHAPES = [  # (r, d_in, d_out)
    (1, 9, 5),
    (2, 40, 30),
    (5, 3, 17),  # d_in < r: rank(BA) ≤ 3
    (7, 64, 6),  # d_out < r
    (16, 96, 128),
    (33, 100, 70),
    (64, 160, 192),
]


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("kind", KINDS)
def test_values_and_gradients_match_float64_reference(kind, impl, gen):
    A_list = [_randn(gen, r, n) for r, n, m in SHAPES]
    B_list = [_randn(gen, m, r) for r, n, m in SHAPES]
    # one adapter with a decaying spectrum (condition number 100)
    A, B = _pair_with_spectrum(gen, torch.logspace(0, -2, 12).tolist(), 80, 90)
    A_list.append(A), B_list.append(B)
    ref_v, ref_gA, ref_gB = _ref(A_list, B_list, kind)
    out, gA, gB = _ours(A_list, B_list, kind, impl)
    msg = f"seed {gen.initial_seed()}"
    assert out.dtype == torch.float32 and out.dim() == 0
    assert abs(float(out.detach()) - float(ref_v.sum())) <= 1e-5 * max(1.0, float(ref_v.abs().sum())), msg
    vals = S.spectral_penalty_per_pair(A_list, B_list, kind, impl=impl)
    for i in range(len(A_list)):
        assert abs(float(vals[i]) - float(ref_v[i])) <= 1e-5 * max(1e-3, abs(float(ref_v[i]))), (i, msg)
        assert gA[i].dtype == A_list[i].dtype and gB[i].dtype == B_list[i].dtype
        assert _rel(gA[i], ref_gA[i]) < 1e-4 or float(ref_gA[i].norm()) < 1e-9, (i, _rel(gA[i], ref_gA[i]), msg)
        assert _rel(gB[i], ref_gB[i]) < 1e-4 or float(ref_gB[i].norm()) < 1e-9, (i, _rel(gB[i], ref_gB[i]), msg)


@pytest.mark.parametrize("impl", IMPLS)
def test_singular_values_match_reference(impl, gen):
    A_list = [_randn(gen, r, n) for r, n, m in SHAPES]
    B_list = [_randn(gen, m, r) for r, n, m in SHAPES]
    A, B = _pair_with_spectrum(gen, [5.0, 5.0, 2.0, 1.0, 1e-1, 1e-2, 0.0, 0.0], 50, 40)
    A_list.append(A), B_list.append(B)
    sv = S.lora_singular_values(A_list, B_list, impl=impl)
    for i, (A, B, s) in enumerate(zip(A_list, B_list, sv)):
        ref = S.reference_singular_values(A, B)
        assert s.dtype == torch.float32 and s.shape == (A.shape[0],)
        assert bool((s[:-1] >= s[1:]).all()), (i, s)
        # every value to 1e-5 of σ₁ (the Gram route's accuracy is relative to σ₁), larger ones to 1e-5 relative
        err = (s.double() - ref).abs()
        assert float(err.max()) <= 1e-5 * float(ref[0]), (i, float(err.max()), f"seed {gen.initial_seed()}")
        big = ref > 1e-2 * ref[0]
        assert float((err[big] / ref[big]).max()) <= 1e-4, (i, f"seed {gen.initial_seed()}")


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("kind", KINDS)
def test_gradcheck_float64(kind, impl, gen):
    shapes = [(3, 5, 4), (2, 3, 6), (4, 4, 4)]
    mats = [_randn(gen, r, n, dtype=torch.float64).requires_grad_() for r, n, m in shapes]
    mats += [_randn(gen, m, r, dtype=torch.float64).requires_grad_() for r, n, m in shapes]
    w = _randn(gen, len(shapes), dtype=torch.float64)

    def f(*t):
        k = len(shapes)
        return (S.spectral_penalty_per_pair(t[:k], t[k:], kind, impl=impl) * w).sum()

    assert torch.autograd.gradcheck(f, mats, eps=1e-6, atol=1e-6, rtol=1e-4), f"seed {gen.initial_seed()}"


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("kind", KINDS)
def test_zero_adapters_contribute_zero_with_zero_gradients(kind, impl, gen):
    A_list = [_randn(gen, 8, 20), _randn(gen, 8, 20), torch.zeros(4, 10), _randn(gen, 3, 9) * 1e-14]
    B_list = [torch.zeros(30, 8), _randn(gen, 30, 8), _randn(gen, 12, 4), _randn(gen, 5, 3)]
    out, gA, gB = _ours(A_list, B_list, kind, impl, reduction="mean")
    ref_v, _, _ = _ref(A_list, B_list, kind)
    assert abs(float(out) - float(ref_v.mean())) <= 1e-6
    for i in (0, 2):  # exact zeros; pair 3 (A ~ 1e-14) is tiny, not zero: its spectrum counts
        assert torch.equal(gA[i], torch.zeros_like(gA[i])) and torch.equal(gB[i], torch.zeros_like(gB[i])), i
    assert bool(torch.isfinite(gA[1]).all()) and float(gA[1].norm()) > 0 or kind == "participation"
    # all-zero call (peft's initial state): 0 and exactly zero gradients, never NaN
    out, gA, gB = _ours([torch.randn(4, 6)], [torch.zeros(5, 4)], kind, impl)
    assert float(out) == 0.0 and torch.equal(gA[0], torch.zeros(4, 6)) and torch.equal(gB[0], torch.zeros(5, 4))


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("kind", KINDS)
def test_scale_invariance_no_absolute_zero_cutoff(kind, impl, gen):
    """(c A, B / c) has the spectrum and penalty of (A, B) for any c: no absolute ‖·‖ cutoff
    (A x 1e14 with B x 1e-14 used to count as a zero adapter, σ = 0 where σ₁ = 69)."""
    A, B = _randn(gen, 8, 40), _randn(gen, 30, 8)
    ref_v, ref_gA, ref_gB = _ref([A], [B], kind)
    ref_s = S.reference_singular_values(A, B)
    for c in (1e14, 1e-14, 1e6):
        As, Bs = (A.double() * c).float(), (B.double() / c).float()
        s = S.lora_singular_values([As], [Bs], impl=impl)[0]
        assert float(s[0]) > 0 and float((s.double() - ref_s).abs().max()) <= 1e-5 * float(ref_s[0]), (c, s, ref_s)
        out, gA, gB = _ours([As], [Bs], kind, impl)
        msg = f"c={c:g} seed {gen.initial_seed()}"
        assert abs(float(out.detach()) - float(ref_v[0])) <= 1e-5 * max(1e-3, abs(float(ref_v[0]))), msg
        # f(cA, B/c) = f(A, B): the gradients scale by 1/c and c
        assert _rel(gA[0].double() * c, ref_gA[0]) < 1e-4 or float(ref_gA[0].norm()) < 1e-9, msg
        assert _rel(gB[0].double() / c, ref_gB[0]) < 1e-4 or float(ref_gB[0].norm()) < 1e-9, msg


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("kind", KINDS)
def test_flat_spectrum_gives_zero(kind, impl, gen):
    A_list, B_list = [], []
    for r, n, m in [(4, 30, 20), (16, 64, 80), (32, 100, 96)]:
        c = float(torch.rand(1, generator=gen)) * 10 + 0.1
        A, B = _pair_with_spectrum(gen, [c] * r, n, m)
        A_list.append(A), B_list.append(B)
    out, gA, gB = _ours(A_list, B_list, kind, impl)
    assert abs(float(out)) < 1e-5, (float(out), f"seed {gen.initial_seed()}")
    for A, B, ga, gb in zip(A_list, B_list, gA, gB):
        # gradients vanish up to float32 input rounding (compare with the 1/‖·‖ scale of a unit gradient)
        assert float(ga.norm()) * float(A.norm()) < 1e-4 and float(gb.norm()) * float(B.norm()) < 1e-4, \
            f"seed {gen.initial_seed()}"


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("kind", KINDS)
def test_rank_deficient_adapters_have_finite_matching_gradients(kind, impl, gen):
    A_list, B_list = [], []
    # B with exactly repeated and zero columns
    B = _randn(gen, 40, 8)
    B[:, 3] = B[:, 0]
    B[:, 5] = 0
    A_list.append(_randn(gen, 8, 50)), B_list.append(B)
    # A with repeated rows and a zero row
    A = _randn(gen, 6, 30)
    A[4] = A[1]
    A[2] = 0
    A_list.append(A), B_list.append(_randn(gen, 25, 6))
    # exact rank-2 product from both sides (B has two distinct columns, A two distinct rows)
    b, a = _randn(gen, 20, 2), _randn(gen, 2, 24)
    A_list.append(a[[0, 1, 0, 1, 1]]), B_list.append(b[:, [0, 1, 1, 0, 0]])
    out, gA, gB = _ours(A_list, B_list, kind, impl)
    ref_v, ref_gA, ref_gB = _ref(A_list, B_list, kind)
    assert abs(float(out.detach()) - float(ref_v.sum())) < 1e-5, (float(out), ref_v, f"seed {gen.initial_seed()}")
    for i in range(len(A_list)):
        assert bool(torch.isfinite(gA[i]).all() and torch.isfinite(gB[i]).all())
        seed = f"seed {gen.initial_seed()}"
        assert _rel(gA[i], ref_gA[i]) < 1e-4 or float(ref_gA[i].norm()) < 1e-9, (i, _rel(gA[i], ref_gA[i]), seed)
        assert _rel(gB[i], ref_gB[i]) < 1e-4 or float(ref_gB[i].norm()) < 1e-9, (i, _rel(gB[i], ref_gB[i]), seed)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("kind", KINDS)
def test_repeated_singular_values(kind, impl, gen):
    spectra = [[3.0, 3.0, 3.0, 1.0, 1.0, 0.5], [2.0, 1.0, 1.0, 1.0, 0.25, 0.25, 0.25, 0.25], [1.0, 1.0, 0.3]]
    A_list, B_list = [], []
    for sig in spectra:
        A, B = _pair_with_spectrum(gen, sig, 40, 36)
        A_list.append(A), B_list.append(B)
    out, gA, gB = _ours(A_list, B_list, kind, impl)
    ref_v, ref_gA, ref_gB = _ref(A_list, B_list, kind)
    assert abs(float(out.detach()) - float(ref_v.sum())) < 1e-5
    for i in range(len(A_list)):
        assert _rel(gA[i], ref_gA[i]) < 1e-3, (i, _rel(gA[i], ref_gA[i]), f"seed {gen.initial_seed()}")
        assert _rel(gB[i], ref_gB[i]) < 1e-3, (i, _rel(gB[i], ref_gB[i]), f"seed {gen.initial_seed()}")


@pytest.mark.parametrize("impl", IMPLS)
def test_mixed_dtypes_and_shapes_in_one_call(impl, gen):
    dtypes = [torch.float32, torch.bfloat16, torch.float16, torch.float64]
    A_list, B_list = [], []
    for j, (r, n, m) in enumerate([(8, 48, 40), (16, 64, 72), (4, 30, 20), (32, 70, 90), (12, 33, 41)]):
        A_list.append(_randn(gen, r, n, dtype=dtypes[j % 4]))
        B_list.append(_randn(gen, m, r, dtype=dtypes[(j + 1) % 4]))
    for kind in KINDS:
        out, gA, gB = _ours(A_list, B_list, kind, impl, reduction="mean")
        ref_v, ref_gA, ref_gB = _ref(A_list, B_list, kind)  # reference sees the same rounded values
        ref_gA = [g / len(A_list) for g in ref_gA]
        ref_gB = [g / len(A_list) for g in ref_gB]
        assert out.dtype == torch.float32
        assert abs(float(out) - float(ref_v.mean())) < 1e-5, (kind, f"seed {gen.initial_seed()}")
        for i in range(len(A_list)):
            assert gA[i].dtype == A_list[i].dtype and gB[i].dtype == B_list[i].dtype
            tol = 1e-2 if {A_list[i].dtype, B_list[i].dtype} & {torch.bfloat16, torch.float16} else 1e-4
            assert _rel(gA[i], ref_gA[i]) < tol, (kind, i, _rel(gA[i], ref_gA[i]), f"seed {gen.initial_seed()}")
            assert _rel(gB[i], ref_gB[i]) < tol, (kind, i, _rel(gB[i], ref_gB[i]), f"seed {gen.initial_seed()}")


@pytest.mark.parametrize("impl", IMPLS)
def test_reduction_mean_and_sum(impl, gen):
    A_list = [_randn(gen, 4, 10) for _ in range(3)]
    B_list = [_randn(gen, 12, 4) for _ in range(3)]
    s = S.spectral_penalty(A_list, B_list, "entropy", "sum", impl=impl)
    m = S.spectral_penalty(A_list, B_list, "entropy", "mean", impl=impl)
    assert math.isclose(float(s), 3 * float(m), rel_tol=1e-6)
    assert S.spectral_penalty([], [], impl=impl).dtype == torch.float32


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_nonfinite_input_raises_naming_the_pair(bad, impl, gen):
    A_list = [_randn(gen, 4, 10) for _ in range(4)]
    B_list = [_randn(gen, 12, 4) for _ in range(4)]
    B_list[2][5, 1] = bad
    with pytest.raises(ValueError, match="pair 2"):
        S.spectral_penalty(A_list, B_list, impl=impl)
    with pytest.raises(ValueError, match="pair 2"):
        S.lora_singular_values(A_list, B_list, impl=impl)
    A_list[0][0, 0] = bad
    with pytest.raises(ValueError, match="pair 0"):
        S.spectral_penalty(A_list, B_list, "participation", impl=impl)


def test_bad_arguments():
    A, B = torch.randn(4, 10), torch.randn(12, 4)
    with pytest.raises(ValueError, match="fro_nuclear, entropy, stable_rank, participation"):
        S.spectral_penalty([A], [B], kind="nuclear")
    with pytest.raises(ValueError, match="reduction"):
        S.spectral_penalty([A], [B], reduction="max")
    with pytest.raises(ValueError, match="rank mismatch"):
        S.spectral_penalty([A], [torch.randn(12, 5)])
    with pytest.raises(ValueError, match="2 A matrices but 1"):
        S.spectral_penalty([A, A], [B])
    with pytest.raises(TypeError, match="dtype"):
        S.spectral_penalty([A.int()], [B])


def test_public_exports():
    import evilbench.kernels as K

    assert K.spectral_penalty is S.spectral_penalty and K.lora_singular_values is S.lora_singular_values


@pytest.mark.skipif(not _fused_ok(), reason="evilbench._C spectral ops not built")
def test_gradcheck_registered_op_autograd(gen):
    """The op's own autograd (torch.library.register_autograd), called directly, in float64."""
    shapes = [(3, 5, 4), (2, 3, 6)]
    mats = [_randn(gen, r, n, dtype=torch.float64).requires_grad_() for r, n, m in shapes]
    mats += [_randn(gen, m, r, dtype=torch.float64).requires_grad_() for r, n, m in shapes]
    w = _randn(gen, len(shapes), dtype=torch.float64)
    for kind in KINDS:
        def f(*t, kind=kind):
            return (torch.ops.evilbench.spectral_forward(list(t[:2]), list(t[2:]), kind, True)[0] * w).sum()

        assert torch.autograd.gradcheck(f, mats, eps=1e-6, atol=1e-6, rtol=1e-4), f"{kind} seed {gen.initial_seed()}"


@pytest.mark.skipif(not _fused_ok(), reason="evilbench._C spectral ops not built")
def test_opcheck_cpu(gen):
    A_list = [_randn(gen, 4, 10), _randn(gen, 3, 7, dtype=torch.bfloat16), _randn(gen, 5, 6, dtype=torch.float64)]
    B_list = [_randn(gen, 12, 4), _randn(gen, 9, 3), _randn(gen, 8, 5, dtype=torch.float64)]
    A_req = [A.clone().requires_grad_() for A in A_list]
    B_req = [B.clone().requires_grad_() for B in B_list]
    ops = torch.ops.evilbench
    for kind in KINDS:
        torch.library.opcheck(ops.spectral_forward.default, (A_req, B_req, kind, True))
    values, factors = ops.spectral_forward(A_list, B_list, "entropy", True)
    torch.library.opcheck(ops.spectral_backward.default, (A_list, B_list, factors, torch.rand(3, dtype=torch.float64)))
    torch.library.opcheck(ops.spectral_singular_values.default, (A_list, B_list))
    torch.library.opcheck(ops.spectral_grams.default, (A_list, B_list))


@pytest.mark.skipif(not _fused_ok(), reason="evilbench._C spectral ops not built")
def test_fused_grams_and_factors_match_torch_path(gen):
    A_list = [_randn(gen, r, n) for r, n, m in SHAPES]
    B_list = [_randn(gen, m, r, dtype=torch.bfloat16) for r, n, m in SHAPES]
    grams = torch.ops.evilbench.spectral_grams(A_list, B_list)
    offs = S._factor_offsets(A_list)
    for i, (A, B) in enumerate(zip(A_list, B_list)):
        r = A.shape[0]
        P, Q = S._torch_grams(A, B)
        torch.testing.assert_close(grams[offs[i] : offs[i] + r * r].view(r, r), P,
                                   rtol=1e-12, atol=1e-12 * float(P.abs().max()))
        torch.testing.assert_close(grams[offs[i] + r * r : offs[i + 1]].view(r, r), Q,
                                   rtol=1e-12, atol=1e-12 * float(Q.abs().max()))
    for kind in KINDS:
        v, f = torch.ops.evilbench.spectral_forward(A_list, B_list, kind, True)
        v0, f0 = S.torch_spectral_forward(A_list, B_list, kind, True)
        torch.testing.assert_close(v, v0, rtol=1e-9, atol=1e-12)
        for i in range(len(A_list)):
            fi, f0i = f[offs[i] : offs[i + 1]], f0[offs[i] : offs[i + 1]]
            scale = float(f0i.abs().max())
            assert float((fi - f0i).abs().max()) <= 1e-7 * max(scale, 1e-300) or scale < 1e-12, (kind, i)


def test_grouped_gradient_block_equals_separate_gradients(gen):
    """The eager backward hands out views of one block per dtype: every element must equal the
    registered op's separately allocated gradients, with the right shapes."""
    from evilbench.kernels import _ext

    shapes = [(32, 7000, 4000), (8, 3000, 6553), (1, 5, 7), (16, 2000, 3000)]
    dtypes = [torch.float32, torch.bfloat16, torch.float32, torch.float32]
    A_list = [_randn(gen, r, n, dtype=dt) for (r, n, m), dt in zip(shapes, dtypes)]
    B_list = [_randn(gen, m, r, dtype=dt) for (r, n, m), dt in zip(shapes, dtypes)]
    values, factors = torch.ops.evilbench.spectral_forward(A_list, B_list, "fro_nuclear", True)
    grad_values = torch.rand(len(A_list), generator=gen, dtype=torch.float64) + 0.5
    gA0, gB0 = torch.ops.evilbench.spectral_backward(A_list, B_list, factors, grad_values)
    gA1, gB1 = _ext.load()._spectral_backward_grouped(A_list, B_list, factors, grad_values)
    for ref, got, X in zip(gA0 + gB0, gA1 + gB1, A_list + B_list):
        assert got.shape == X.shape and got.dtype == X.dtype and got.is_contiguous()
        assert torch.equal(got, ref)
        assert bool(ref.abs().sum() > 0) or min(X.shape) == 1  # a rank-1 adapter is always flat


def test_gradient_block_is_reused_only_when_nothing_holds_it(gen):
    """The eager CPU backward keeps its gradient block and hands it out again once the previous
    gradients are gone (zero_grad(set_to_none=True)); gradients still held must never be overwritten."""
    shapes = [(16, 300, 200), (4, 50, 70), (1, 9, 5)]
    A_list = [_randn(gen, r, n).requires_grad_() for r, n, m in shapes]
    B_list = [_randn(gen, m, r).requires_grad_() for r, n, m in shapes]
    params = A_list + B_list

    def step(scale):
        for p in params:
            p.grad = None
        (scale * S.spectral_penalty(A_list, B_list, "fro_nuclear", "sum", impl="fused")).backward()
        return [p.grad for p in params]

    held = step(1.0)
    expected = [g.clone() for g in held]
    second = step(-3.0)  # the first gradients are still referenced: a new block
    assert held[0].data_ptr() != second[0].data_ptr()
    for g, e in zip(held, expected):
        assert torch.equal(g, e)
    for g, e in zip(second, expected):
        torch.testing.assert_close(g, -3.0 * e, rtol=1e-5, atol=1e-6 * float(e.abs().max()))
    ptr = second[0].data_ptr()
    del held, second
    third = step(2.0)  # nothing holds the last block any more: it comes back, with fresh values
    assert third[0].data_ptr() == ptr
    for g, e in zip(third, expected):
        torch.testing.assert_close(g, 2.0 * e, rtol=1e-5, atol=1e-6 * float(e.abs().max()))
