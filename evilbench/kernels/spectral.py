"""LoRA spectra without forming B@A, and the spectral-penalty loss with its gradient.

Maths. For a pair A (r × n), B (m × r), W = B A:
  P = BᵀB, Q = AAᵀ                     r × r Grams: one pass over A and B
  P = R Rᵀ                             Cholesky; eigen route R = E Λ^½ when B is (nearly) rank deficient
  K = Rᵀ Q R = V diag(σ²) Vᵀ           the r singular values of W (zeros when rank(W) < r)
  ∂f/∂W = B N A,  N = R⁺ᵀ V diag(g/σ) Vᵀ Rᵀ,  g = ∂f/∂σ
  ∂f/∂B = B (N Q),  ∂f/∂A = (P N) A    one pass over A and B applying r × r matrices
`participation` needs no eigen-decomposition: with M = PQ, Σσ² = tr M, Σσ⁴ = tr M², and
N = c₁ I + c₃ Q P (∂f/∂W = c₁ W + c₃ W Wᵀ W).

Conventions shared by every implementation (fused C++/CUDA ops, the plain-torch path, the float64
reference):
  * pairs with B = 0 or A = 0 (peft initialises B = 0; also float64 factors with ‖·‖_F² ≤ 1e-290,
    whose Grams underflow) have value 0 and exactly zero gradients, and so do pairs whose product is
    numerically zero relative to the scale (σ₁ ≤ 1e-10 ‖A‖_F ‖B‖_F); tiny but non-zero factors keep
    their spectrum (every measure is scale-invariant);
  * singular values σᵢ ≤ 1e-6 σ₁ count as zero, in the value and in the gradient (the zero
    subgradient: their gᵢ/σᵢ terms are dropped);
  * r = 1 gives 0 for every kind (a single singular value is a flat spectrum);
  * `stable_rank` at a tie for σ₁ (within 1e-5 relative) shares the derivative of σ₁ equally among the
    tied values (the mean element of the subdifferential), so flat spectra have zero gradient.

Accuracy: the Grams square the condition number of A and B. The fused kernels accumulate products in
float32 over short runs of rows and sum the runs in float64; the r × r work is float64. Singular
values well above √(Gram error)·σ₁ ≈ 1e-4 σ₁ come out with relative error ~1e-6; smaller ones are
noise-dominated (as in any Gram/Cholesky route).

Implementations (`impl=`): "fused" = the registered ops torch.ops.evilbench.spectral_forward /
spectral_backward (CPU and CUDA kernels of evilbench._C); "torch" = the same maths in plain torch
(float64 Grams), used when the extension is missing; "auto" picks "fused" when it can.
"""
from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence

import torch

KINDS = ("fro_nuclear", "entropy", "stable_rank", "participation")
REDUCTIONS = ("mean", "sum")
# ‖B‖_F² or ‖A‖_F² at or below this: the pair contributes exactly 0. Only zero factors (peft's B = 0)
# and float64 factors whose Grams underflow qualify; the measures are scale-invariant, so tiny but
# non-zero factors keep their spectrum (numerically zero products are caught by ZERO_PRODUCT).
MIN_GRAM = 1e-290
SIGMA_TOL = 1e-6  # σᵢ ≤ SIGMA_TOL·σ₁ counts as a zero singular value
TIE_TOL = 1e-5  # stable_rank: σᵢ ≥ (1 − TIE_TOL)·σ₁ ties with σ₁
CHOL_TOL = 1e-10  # Cholesky pivot² below CHOL_TOL·max diag(P): use the eigen route instead
EIG_TOL = 1e-12  # eigen route: eigenvalues of P below EIG_TOL·λ_max are treated as zero
ZERO_PRODUCT = 1e-10  # σ₁ ≤ ZERO_PRODUCT·‖A‖_F‖B‖_F: B A is numerically zero, the pair contributes 0

_OPS = ("spectral_grams", "spectral_forward", "spectral_backward", "spectral_singular_values")


# ---------------------------------------------------------------------------------------------
# input checks


_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)


def _as_pairs(A_list: Sequence[torch.Tensor], B_list: Sequence[torch.Tensor], who: str):
    A_list, B_list = list(A_list), list(B_list)
    if len(A_list) != len(B_list):
        raise ValueError(f"{who}: got {len(A_list)} A matrices but {len(B_list)} B matrices")
    if not A_list:
        return A_list, B_list, None
    # fast path (called every training step): one cheap pass, details only when something is off
    try:
        ok = all(
            A.dim() == 2 and B.dim() == 2 and A.shape[0] == B.shape[1] and A.dtype in _DTYPES and B.dtype in _DTYPES
            and A.numel() > 0 and B.numel() > 0
            for A, B in zip(A_list, B_list)
        ) and len({T.get_device() for T in A_list} | {T.get_device() for T in B_list}) == 1
    except (AttributeError, TypeError):
        ok = False
    if ok:
        return A_list, B_list, A_list[0].device
    device = None
    for i, (A, B) in enumerate(zip(A_list, B_list)):
        if not isinstance(A, torch.Tensor) or not isinstance(B, torch.Tensor):
            raise TypeError(f"{who}: pair {i}: A and B must be tensors")
        if A.dim() != 2 or B.dim() != 2:
            raise ValueError(
                f"{who}: pair {i}: A must be r × d_in and B d_out × r (2-D), got A {tuple(A.shape)}, "
                f"B {tuple(B.shape)}"
            )
        if A.shape[0] != B.shape[1]:
            raise ValueError(
                f"{who}: pair {i}: rank mismatch, A is {tuple(A.shape)} (r × d_in) but B is "
                f"{tuple(B.shape)} (d_out × r)"
            )
        if A.shape[0] < 1 or A.shape[1] < 1 or B.shape[0] < 1:
            raise ValueError(f"{who}: pair {i}: empty matrix, A {tuple(A.shape)}, B {tuple(B.shape)}")
        for name, T in (("A", A), ("B", B)):
            if T.dtype not in _DTYPES:
                raise TypeError(f"{who}: pair {i}: {name} has dtype {T.dtype}; "
                                "expected float32/64, bfloat16 or float16")
            if device is None:
                device = T.device
            elif T.device != device:
                raise ValueError(f"{who}: pair {i}: {name} is on {T.device}, other matrices on {device}")
    return A_list, B_list, device


def _check_kind(kind: str, reduction: str | None = None):
    if kind not in KINDS:
        raise ValueError(f"unknown spectral penalty kind {kind!r}; expected one of {', '.join(KINDS)}")
    if reduction is not None and reduction not in REDUCTIONS:
        raise ValueError(f"unknown reduction {reduction!r}; expected one of {', '.join(REDUCTIONS)}")


def _raise_nonfinite(values: torch.Tensor, A_list, B_list, who: str):
    if bool(torch.isfinite(values.detach()).all()):  # one small read-back
        return
    bad = torch.nonzero(~torch.isfinite(values.detach())).flatten().tolist()
    if bad:
        i = bad[0]
        more = f" (and {len(bad) - 1} more pairs: {bad[1:6]}{'...' if len(bad) > 6 else ''})" if len(bad) > 1 else ""
        raise ValueError(
            f"{who}: pair {i} (A {tuple(A_list[i].shape)}, B {tuple(B_list[i].shape)}) contains NaN or Inf "
            f"(or values whose squares overflow float32){more}"
        )


def _factor_offsets(A_list) -> list[int]:
    offs, o = [], 0
    for A in A_list:
        offs.append(o)
        o += 2 * A.shape[0] ** 2
    offs.append(o)
    return offs


# ---------------------------------------------------------------------------------------------
# the r × r phase in batched torch (float64): Grams in, values + gradient factors out


def _kind_value_and_gos(sigma: torch.Tensor, kind: str, r: int):
    """sigma: (k, r) float64, descending, entries ≤ SIGMA_TOL·σ₁ already set to 0, σ₁ > 0.
    Returns the penalty value (k,) and g/σ (k, r), with 0 where σ = 0 (zero subgradient)."""
    valid = sigma > 0
    safe = torch.where(valid, sigma, torch.ones_like(sigma))
    s1 = sigma.sum(-1, keepdim=True)
    s2 = (sigma * sigma).sum(-1, keepdim=True)
    if r == 1:
        return torch.zeros_like(s1[:, 0]), torch.zeros_like(sigma)
    if kind == "fro_nuclear":
        nf = s2.sqrt()
        value = (nf / s1)[:, 0] - 1.0 / math.sqrt(r)
        gos = 1.0 / (nf * s1) - nf / (s1 * s1 * safe)
    elif kind == "entropy":
        p = sigma / s1
        logp = torch.log(torch.where(valid, p, torch.ones_like(p)))
        H = -(p * logp).sum(-1, keepdim=True)
        value = 1.0 - H[:, 0] / math.log(r)
        g = (logp + H) / (s1 * math.log(r))
        gos = g / safe
    elif kind == "stable_rank":
        smax = sigma[:, :1]
        tied = sigma >= (1.0 - TIE_TOL) * smax
        value = 1.0 - (s2 / (smax * smax))[:, 0] / r
        gos = -2.0 / (smax * smax * r) + tied * (2.0 * s2 / (smax**3 * r * tied.sum(-1, keepdim=True))) / safe
    else:
        raise AssertionError(kind)
    return value, torch.where(valid, gos, torch.zeros_like(gos))


def _rxr_phase(P: torch.Tensor, Q: torch.Tensor, kind: str | None, need_factors: bool):
    """P, Q: (k, r, r) float64. Returns (values (k,), sigma (k, r) descending, FB (k,r,r), FA (k,r,r));
    kind None: singular values only. Non-finite Grams give NaN values/σ and zero factors."""
    k, r, _ = P.shape
    dt, dev = P.dtype, P.device
    eye = torch.eye(r, dtype=dt, device=dev).expand(k, r, r)
    trP = P.diagonal(dim1=-2, dim2=-1).sum(-1)
    trQ = Q.diagonal(dim1=-2, dim2=-1).sum(-1)
    bad = ~(torch.isfinite(trP) & torch.isfinite(trQ))
    zero = (~bad) & ((trP <= MIN_GRAM) | (trQ <= MIN_GRAM))
    skip = (bad | zero)[:, None, None]
    P = torch.where(skip, eye, P)
    Q = torch.where(skip, eye, Q)
    values = sigma = FB = FA = None
    if kind == "participation" and r == 1:
        values = torch.zeros(k, dtype=dt, device=dev)
        if need_factors:
            FB = FA = torch.zeros_like(P)
    elif kind == "participation":
        M = P @ Q
        s2 = M.diagonal(dim1=-2, dim2=-1).sum(-1)
        s4 = (M * M.mT).sum((-2, -1))
        values = 1.0 - s2 * s2 / (r * s4)
        if need_factors:
            c1 = (-4.0 * s2 / (r * s4))[:, None, None]
            c3 = (4.0 * s2 * s2 / (r * s4 * s4))[:, None, None]
            N = c1 * eye + c3 * (Q @ P)
            FB, FA = N @ Q, P @ N
    else:
        # P = R Rᵀ, T = R⁺ᵀ: Cholesky where P is safely positive definite, eigen route elsewhere
        L, info = torch.linalg.cholesky_ex(P)
        piv = L.diagonal(dim1=-2, dim2=-1)
        ok = (info == 0) & (piv.min(-1).values ** 2 > CHOL_TOL * P.diagonal(dim1=-2, dim2=-1).max(-1).values)
        R = L.clone()
        T = torch.linalg.solve_triangular(torch.where(ok[:, None, None], L, eye).mT, eye, upper=True)
        if not bool(ok.all()):
            idx = torch.nonzero(~ok).flatten()
            lam, E = torch.linalg.eigh(P[idx])
            keep = lam > EIG_TOL * lam[:, -1:].clamp_min(0)
            s = torch.where(keep, lam.clamp_min(0).sqrt(), torch.zeros_like(lam))
            sinv = torch.where(keep, 1.0 / torch.where(keep, s, torch.ones_like(s)), torch.zeros_like(s))
            R[idx] = E * s[:, None, :]
            T[idx] = E * sinv[:, None, :]
        K = R.mT @ Q @ R
        K = 0.5 * (K + K.mT)
        lam, V = torch.linalg.eigh(K)
        lam, V = lam.flip(-1), V.flip(-1)
        sigma = lam.clamp_min(0).sqrt()
        if kind is not None:
            # B A numerically zero although A and B are not: treat like a zero pair
            zero = zero | (~bad & ~(sigma[:, 0] ** 2 > ZERO_PRODUCT**2 * trP * trQ))
            skip = (bad | zero)[:, None, None]
            s = torch.where(sigma > SIGMA_TOL * sigma[:, :1], sigma, torch.zeros_like(sigma))
            s = torch.where(skip[:, :, 0], torch.ones_like(s), s)
            values, gos = _kind_value_and_gos(s, kind, r)
            if need_factors:
                N = T @ (V * gos[:, None, :]) @ V.mT @ R.mT
                FB, FA = N @ Q, P @ N
    if values is not None:
        values = torch.where(zero, torch.zeros_like(values), values)
        values = torch.where(bad, torch.full_like(values, float("nan")), values)
    if sigma is not None:
        sigma = torch.where(zero[:, None], torch.zeros_like(sigma), sigma)
        sigma = torch.where(bad[:, None], torch.full_like(sigma, float("nan")), sigma)
    if FB is not None:
        FB = torch.where(skip, torch.zeros_like(FB), FB)
        FA = torch.where(skip, torch.zeros_like(FA), FA)
    return values, sigma, FB, FA


def _groups_by_rank(A_list):
    groups: dict[int, list[int]] = {}
    for i, A in enumerate(A_list):
        groups.setdefault(A.shape[0], []).append(i)
    return groups


def _torch_grams(A: torch.Tensor, B: torch.Tensor):
    A64, B64 = A.detach().double(), B.detach().double()
    return B64.mT @ B64, A64 @ A64.mT


def torch_spectral_forward(A_list, B_list, kind: str, need_factors: bool):
    """Plain-torch twin of torch.ops.evilbench.spectral_forward: per-pair values (float64, NaN for
    non-finite input) and packed gradient factors (float64, per pair FB then FA, r² each)."""
    device = A_list[0].device
    n = len(A_list)
    values = torch.empty(n, dtype=torch.float64, device=device)
    offs = _factor_offsets(A_list)
    factors = torch.zeros(offs[-1] if need_factors else 0, dtype=torch.float64, device=device)
    for r, idx in _groups_by_rank(A_list).items():
        grams = [_torch_grams(A_list[i], B_list[i]) for i in idx]
        P = torch.stack([g[0] for g in grams])
        Q = torch.stack([g[1] for g in grams])
        v, _, FB, FA = _rxr_phase(P, Q, kind, need_factors)
        values[idx] = v
        if need_factors:
            for j, i in enumerate(idx):
                factors[offs[i] : offs[i] + r * r] = FB[j].flatten()
                factors[offs[i] + r * r : offs[i + 1]] = FA[j].flatten()
    return values, factors


def torch_spectral_backward(A_list, B_list, factors, grad_values):
    """Plain-torch twin of torch.ops.evilbench.spectral_backward: gB = g·B FB, gA = g·FA A."""
    offs = _factor_offsets(A_list)
    gA, gB = [], []
    for i, (A, B) in enumerate(zip(A_list, B_list)):
        r = A.shape[0]
        ct = torch.float64 if A.dtype == torch.float64 or B.dtype == torch.float64 else torch.float32
        FB = factors[offs[i] : offs[i] + r * r].view(r, r).to(ct)
        FA = factors[offs[i] + r * r : offs[i + 1]].view(r, r).to(ct)
        g = grad_values[i].to(ct)
        gB.append(((B.detach().to(ct) @ FB) * g).to(B.dtype))
        gA.append(((FA @ A.detach().to(ct)) * g).to(A.dtype))
    return gA, gB


def torch_singular_values(A_list, B_list) -> torch.Tensor:
    """Plain-torch twin of torch.ops.evilbench.spectral_singular_values: packed σ (float32)."""
    device = A_list[0].device
    out = torch.empty(sum(A.shape[0] for A in A_list), dtype=torch.float32, device=device)
    starts = [0]
    for A in A_list:
        starts.append(starts[-1] + A.shape[0])
    for idx in _groups_by_rank(A_list).values():
        grams = [_torch_grams(A_list[i], B_list[i]) for i in idx]
        P = torch.stack([g[0] for g in grams])
        Q = torch.stack([g[1] for g in grams])
        _, sigma, _, _ = _rxr_phase(P, Q, None, False)
        for j, i in enumerate(idx):
            out[starts[i] : starts[i + 1]] = sigma[j].float()
    return out


class _TorchPenalty(torch.autograd.Function):
    @staticmethod
    def forward(ctx, kind, n, *mats):
        A_list, B_list = list(mats[:n]), list(mats[n:])
        need = any(ctx.needs_input_grad[2:])
        values, factors = torch_spectral_forward(A_list, B_list, kind, need)
        ctx.n = n
        ctx.save_for_backward(factors, *mats)
        ctx.mark_non_differentiable(factors)
        return values

    @staticmethod
    def backward(ctx, grad_values):
        factors, *mats = ctx.saved_tensors
        n = ctx.n
        gA, gB = torch_spectral_backward(mats[:n], mats[n:], factors, grad_values)
        return (None, None, *gA, *gB)


def _below_autograd():
    guard = getattr(torch._C, "_AutoDispatchBelowADInplaceOrView", None)
    return guard() if guard is not None else contextlib.nullcontext()


class _FusedPenalty(torch.autograd.Function):
    """Eager autograd around the fused ops (the same forward/backward ops that register_autograd wires
    up below, without torch.library's per-call pytree handling of ~500 tensors)."""

    @staticmethod
    def forward(ctx, kind, n, *mats):
        with _below_autograd():  # straight to the CPU/CUDA kernel, past the op's own autograd kernel
            values, factors = torch.ops.evilbench.spectral_forward(list(mats[:n]), list(mats[n:]), kind, True)
        ctx.n = n
        ctx.save_for_backward(factors, *mats)
        return values

    @staticmethod
    def backward(ctx, grad_values):
        factors, *mats = ctx.saved_tensors
        n = ctx.n
        from evilbench.kernels import _ext

        gA, gB = _ext.load()._spectral_backward_grouped(list(mats[:n]), list(mats[n:]), factors,
                                                        grad_values.contiguous())
        return (None, None, *gA, *gB)


# ---------------------------------------------------------------------------------------------
# fused ops: fake kernels and autograd for torch.ops.evilbench.spectral_*


_FUSED_OK: dict[str, bool] = {}


def _fused_ops_available(device: torch.device) -> bool:
    ok = _FUSED_OK.get(device.type)
    if ok is None:
        ok = _FUSED_OK[device.type] = _probe_fused(device)
    return ok


def _probe_fused(device: torch.device) -> bool:
    try:
        from evilbench.kernels import _ext

        _ext.load()
    except ImportError:
        return False
    if not all(hasattr(torch.ops.evilbench, op) for op in _OPS):
        return False
    _register_python_side()
    if device.type == "cpu":
        return True
    return device.type == "cuda" and _ext.with_cuda()


_REGISTERED = False


def _register_python_side():
    global _REGISTERED
    if _REGISTERED:
        return
    _REGISTERED = True

    @torch.library.register_fake("evilbench::spectral_forward")
    def _fwd_fake(A_list, B_list, kind, need_factors):
        total = sum(2 * A.shape[0] * A.shape[0] for A in A_list) if need_factors else 0
        dev = A_list[0].device
        return (
            torch.empty(len(A_list), dtype=torch.float64, device=dev),
            torch.empty(total, dtype=torch.float64, device=dev),
        )

    @torch.library.register_fake("evilbench::spectral_backward")
    def _bwd_fake(A_list, B_list, factors, grad_values):
        return [torch.empty_like(A) for A in A_list], [torch.empty_like(B) for B in B_list]

    @torch.library.register_fake("evilbench::spectral_grams")
    def _grams_fake(A_list, B_list):
        total = sum(2 * A.shape[0] * A.shape[0] for A in A_list)
        return torch.empty(total, dtype=torch.float64, device=A_list[0].device)

    @torch.library.register_fake("evilbench::spectral_singular_values")
    def _sv_fake(A_list, B_list):
        return torch.empty(sum(A.shape[0] for A in A_list), dtype=torch.float32, device=A_list[0].device)

    def _setup_context(ctx, inputs, output):
        A_list, B_list, kind, need_factors = inputs
        _, factors = output
        ctx.need_factors = need_factors
        ctx.save_for_backward(factors, *A_list, *B_list)
        ctx.n = len(A_list)
        ctx.mark_non_differentiable(factors)

    def _backward(ctx, grad_values, _grad_factors):
        factors, *mats = ctx.saved_tensors
        n = ctx.n
        if not ctx.need_factors:
            raise RuntimeError(
                "evilbench::spectral_forward was called with need_factors=False; call it with True to backpropagate"
            )
        gA, gB = torch.ops.evilbench.spectral_backward(mats[:n], mats[n:], factors, grad_values.contiguous())
        return list(gA), list(gB), None, None

    torch.library.register_autograd("evilbench::spectral_forward", _backward, setup_context=_setup_context)


def _use_fused(impl: str, device: torch.device) -> bool:
    if impl not in ("auto", "fused", "torch"):
        raise ValueError(f"unknown impl {impl!r}; expected 'auto', 'fused' or 'torch'")
    if impl == "torch":
        return False
    ok = _fused_ops_available(device)
    if impl == "fused" and not ok:
        raise RuntimeError(
            f"impl='fused' but the evilbench._C spectral ops are not available for device {device} "
            "(build the extension; CUDA needs the CUDA build)"
        )
    return ok


# ---------------------------------------------------------------------------------------------
# public API


def spectral_penalty_per_pair(
    A_list: Sequence[torch.Tensor], B_list: Sequence[torch.Tensor], kind: str = "fro_nuclear", *, impl: str = "auto"
) -> torch.Tensor:
    """Per-pair penalty values, float64 (n,), differentiable w.r.t. every A and B. No finiteness check:
    a pair with NaN/Inf input gets NaN. The float64 output makes this the function to gradcheck."""
    _check_kind(kind)
    A_list, B_list, device = _as_pairs(A_list, B_list, "spectral_penalty")
    return _per_pair(A_list, B_list, kind, impl, device)


def _per_pair(A_list, B_list, kind, impl, device):
    if not A_list:
        return torch.zeros(0, dtype=torch.float64)
    A_list = [A if A.is_contiguous() else A.contiguous() for A in A_list]
    B_list = [B if B.is_contiguous() else B.contiguous() for B in B_list]
    need = torch.is_grad_enabled() and any(T.requires_grad for T in A_list + B_list)
    if _use_fused(impl, device):
        if need:
            return _FusedPenalty.apply(kind, len(A_list), *A_list, *B_list)
        return torch.ops.evilbench.spectral_forward(A_list, B_list, kind, False)[0]
    if need:
        return _TorchPenalty.apply(kind, len(A_list), *A_list, *B_list)
    return torch_spectral_forward(A_list, B_list, kind, False)[0]


def spectral_penalty(
    A_list: Sequence[torch.Tensor],
    B_list: Sequence[torch.Tensor],
    kind: str = "fro_nuclear",
    reduction: str = "mean",
    *,
    impl: str = "auto",
    check_finite: bool = True,
) -> torch.Tensor:
    """Spectral-uniformity penalty over LoRA pairs (A: r × d_in, B: d_out × r), a float32 scalar
    differentiable w.r.t. every A and B.

    kind: "fro_nuclear" (‖BA‖_F/‖BA‖_* − 1/√r, the paper's), "entropy" (1 − H(p)/ln r, p = σ/Σσ),
    "stable_rank" (1 − (Σσ²/σ₁²)/r), "participation" (1 − (Σσ²)²/(r Σσ⁴)); each is 0 for a flat
    spectrum. reduction: "mean" over all pairs passed, or "sum". Pairs may mix shapes, ranks and
    dtypes (float32, bfloat16, float16, float64). Zero pairs (B = 0 or A = 0) contribute 0 with
    zero gradients. check_finite=True raises ValueError naming the first pair with NaN/Inf input (on
    CUDA this reads one small tensor back to the host; pass False inside CUDA graphs).
    """
    _check_kind(kind, reduction)
    A_list, B_list, device = _as_pairs(A_list, B_list, "spectral_penalty")
    if not A_list:
        return torch.zeros((), dtype=torch.float32)
    values = _per_pair(A_list, B_list, kind, impl, device)
    if check_finite:
        _raise_nonfinite(values, A_list, B_list, "spectral_penalty")
    out = values.sum() if reduction == "sum" else values.mean()
    return out.float()


def _spectral_penalty_prevalidated(A_list, B_list, kind, reduction, impl, check_finite):
    """spectral_penalty for callers that validated the pairs once (SpectralRegularizer): skips the
    per-call Python checks (the C++ ops still check shapes and devices)."""
    values = _per_pair(A_list, B_list, kind, impl, A_list[0].device)
    if check_finite:
        _raise_nonfinite(values, A_list, B_list, "spectral_penalty")
    out = values.sum() if reduction == "sum" else values.mean()
    return out.float()


@torch.no_grad()
def lora_singular_values(
    A_list: Sequence[torch.Tensor], B_list: Sequence[torch.Tensor], *, impl: str = "auto"
) -> list[torch.Tensor]:
    """The r singular values of each B @ A (descending, float32, on the inputs' device), computed from
    the r × r Grams without forming B @ A. Not differentiable (use spectral_penalty for gradients).
    Zero pairs (B = 0 or A = 0) give zeros; NaN/Inf input raises ValueError naming the pair."""
    A_list, B_list, device = _as_pairs(A_list, B_list, "lora_singular_values")
    if not A_list:
        return []
    A_list = [A.detach().contiguous() for A in A_list]
    B_list = [B.detach().contiguous() for B in B_list]
    if _use_fused(impl, device):
        packed = torch.ops.evilbench.spectral_singular_values(A_list, B_list)
    else:
        packed = torch_singular_values(A_list, B_list)
    out = list(torch.split(packed, [A.shape[0] for A in A_list]))
    firsts = torch.stack([s[0] for s in out])
    _raise_nonfinite(firsts, A_list, B_list, "lora_singular_values")
    return out


# ---------------------------------------------------------------------------------------------
# float64 references (dense B @ A, SVD autograd) for tests and benchmarks


def reference_singular_values(A: torch.Tensor, B: torch.Tensor) -> torch.Tensor:
    """The r largest singular values of B @ A in float64 via a dense SVD (zeros past min(m, n))."""
    r = A.shape[0]
    W = B.detach().double() @ A.detach().double()
    s = torch.linalg.svdvals(W)
    out = torch.zeros(r, dtype=torch.float64, device=s.device)
    k = min(r, s.numel())
    out[:k] = s[:k]
    return out


def reference_penalty(A: torch.Tensor, B: torch.Tensor, kind: str) -> torch.Tensor:
    """Penalty of one pair from a dense float64 SVD of B @ A, differentiable through
    torch.linalg.svdvals (pass float64 leaves that require grad). Encodes the module's conventions
    (zero pairs, SIGMA_TOL, r = 1, stable_rank ties) explicitly so gradients can be compared."""
    _check_kind(kind)
    r = A.shape[0]
    if float(B.detach().double().square().sum()) <= MIN_GRAM or float(A.detach().double().square().sum()) <= MIN_GRAM:
        return (A.sum() + B.sum()).double() * 0.0
    W = B.double() @ A.double()
    s_all = torch.linalg.svdvals(W)
    if float(s_all[0].detach()) <= ZERO_PRODUCT * float(A.detach().double().norm() * B.detach().double().norm()):
        return (A.sum() + B.sum()).double() * 0.0
    if s_all.numel() < r:
        s_all = torch.cat([s_all, s_all.new_zeros(r - s_all.numel())])
    s = s_all[:r]
    mask = (s > SIGMA_TOL * s[0]).detach()
    s = s * mask
    if r == 1:
        return s.sum() * 0.0
    s1, s2 = s.sum(), (s * s).sum()
    if kind == "fro_nuclear":
        return s2.sqrt() / s1 - 1.0 / math.sqrt(r)
    if kind == "entropy":
        p = s / s1
        H = -torch.where(mask, p * torch.log(torch.where(mask, p, torch.ones_like(p))), torch.zeros_like(p)).sum()
        return 1.0 - H / math.log(r)
    if kind == "stable_rank":
        tied = (s >= (1.0 - TIE_TOL) * s[0]).detach()
        smax = (s * tied).sum() / tied.sum()
        return 1.0 - s2 / (smax * smax) / r
    return 1.0 - s2 * s2 / (r * (s**4).sum())
