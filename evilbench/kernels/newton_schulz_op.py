"""Newton-Schulz orthogonalisation (Muon's zeroth matrix power) for lists of matrices.

Semantics (KellerJordan / torch.optim.Muon): work on X = M, or Mᵀ when M is tall, so rows <= cols;
X <- X / (||X||_F + eps); for each step (a, b, c): A = X Xᵀ, X <- a X + (b A + c A²) X; transpose
back. Every iterate is X_k = M_k X_0 with M_k r x r (r = min dim), so for r <= GRAM_MAX_RANK the op
computes in Gram form: G = X Xᵀ in one fp32 pass, the r x r iteration in fp32, then out = (s M) X in
a second pass (two reads and one write of X whatever the step count). Larger r use the classic
iteration in fp32.

The fp32 Gram form squares the condition number: rounding Ĝ = G / tr G to fp32 moves a singular
value σ by ~1e-7/σ, and each step amplifies the smallest directions by up to a ≈ 3.4. The kernels
therefore run it only when λ_min(Ĝ) >= τ(coefficients, steps) (a float64 Cholesky of Ĝ − τI; τ is
1e-3 from 6 KellerJordan steps on, ~1e-4 at 5, see csrc/ns_common.h); near-square, ill-conditioned
and rank-deficient inputs take the Gram form in float64 instead (_gram_float64_one is the same
maths). Every step count and shape then stays within 1e-4 of the float64 reference in fp32.
"""
from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import torch

KJ_COEFFICIENTS = (3.4445, -4.7750, 2.0315)
GRAM_MAX_RANK = 256
_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def normalize_coefficients(steps: int, coefficients) -> list[tuple[float, float, float]]:
    """(a, b, c) for every step: a single triple is repeated `steps` times; a per-step list must
    have exactly `steps` triples."""
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ValueError(f"steps must be a non-negative int, got {steps!r}")
    try:
        flat = [float(v) for v in coefficients]
        if len(flat) != 3:
            raise ValueError
        triples = [tuple(flat)] * steps
    except (TypeError, ValueError):
        try:
            triples = [tuple(float(v) for v in t) for t in coefficients]
        except TypeError:
            raise ValueError(
                f"coefficients must be one (a, b, c) triple or a list of {steps} triples, got {coefficients!r}"
            ) from None
        if len(triples) != steps or any(len(t) != 3 for t in triples):
            raise ValueError(
                f"coefficients as a per-step list must hold {steps} (a, b, c) triples (one per step), "
                f"got {len(triples)} entries: {coefficients!r}"
            ) from None
    if not all(math.isfinite(v) for t in triples for v in t):
        raise ValueError(f"coefficients must be finite, got {coefficients!r}")
    return triples


def _check_mats(mats) -> list[torch.Tensor]:
    if isinstance(mats, torch.Tensor):
        raise TypeError("newton_schulz takes a list of 2-D tensors; wrap a single matrix as [m]")
    mats = list(mats)
    device = None
    for i, m in enumerate(mats):
        if not isinstance(m, torch.Tensor):
            raise TypeError(f"mats[{i}] is a {type(m).__name__}, expected a torch.Tensor")
        if m.ndim != 2:
            raise ValueError(f"mats[{i}] must be 2-D, got shape {tuple(m.shape)}")
        if m.dtype not in _DTYPES:
            raise ValueError(f"mats[{i}] has dtype {m.dtype}; supported: float32, bfloat16, float16")
        if device is None:
            device = m.device
        elif m.device != device:
            raise ValueError(f"mats[{i}] is on {m.device} but mats[0] is on {device}; use one device per call")
    return mats


def _nonfinite_error(index: int, m: torch.Tensor) -> ValueError:
    return ValueError(f"newton_schulz: mats[{index}] (shape {tuple(m.shape)}) contains NaN or Inf")


def newton_schulz_reference(
    mats: Sequence[torch.Tensor],
    steps: int = 5,
    coefficients=KJ_COEFFICIENTS,
    eps: float = 1e-7,
    clamp_eps: bool = False,
) -> list[torch.Tensor]:
    """Float64 classic iteration (the semantics), returned in float64. clamp_eps=True divides by
    max(||X||, eps) as torch.optim.Muon does instead of ||X|| + eps."""
    triples = normalize_coefficients(steps, coefficients)
    out = []
    for m in mats:
        x = m.detach().to(torch.float64)
        tall = x.shape[0] > x.shape[1]
        if tall:
            x = x.T
        norm = torch.linalg.vector_norm(x)
        x = x / (norm.clamp(min=eps) if clamp_eps else norm + eps)
        for a, b, c in triples:
            gram = x @ x.T
            x = a * x + (b * gram + c * gram @ gram) @ x
        out.append(x.T.contiguous() if tall else x)
    return out


def _gram_one(m: torch.Tensor, triples, eps: float, clamp_eps: bool, dtype=torch.float32) -> torch.Tensor:
    """Plain-torch Gram form for one matrix in `dtype` (fp32; float64 is the kernels' path for
    ill-conditioned Ĝ): two passes over X, r x r work between; returned in m's dtype."""
    x = m.to(dtype)
    tall = x.shape[0] > x.shape[1]
    if tall:
        x = x.T
    gram = x @ x.T
    norm = gram.diagonal().sum().sqrt()
    scale = 1.0 / (norm.clamp(min=eps) if clamp_eps else norm + eps)
    gram = gram * scale * scale
    mm = torch.eye(gram.shape[0], dtype=gram.dtype, device=gram.device)
    for a, b, c in triples:
        t = mm @ gram @ mm.T
        mm = a * mm + (b * t + c * t @ t) @ mm
    out = (mm * scale) @ x
    return (out.T if tall else out).to(m.dtype)


def _gram_float64_one(m: torch.Tensor, triples, eps: float, clamp_eps: bool) -> torch.Tensor:
    return _gram_one(m, triples, eps, clamp_eps, torch.float64)


def newton_schulz_gram_torch(
    mats: Sequence[torch.Tensor],
    steps: int = 5,
    coefficients=KJ_COEFFICIENTS,
    eps: float = 1e-7,
    clamp_eps: bool = False,
) -> list[torch.Tensor]:
    """Gram-form NS written with plain torch ops, one matrix at a time (benchmark baseline and
    fallback). Not robust to fp32 over/underflow of ||X||² (the fused op is)."""
    triples = normalize_coefficients(steps, coefficients)
    return [_gram_one(m, triples, eps, clamp_eps) for m in mats]


@functools.cache
def ops():
    """Load evilbench._C and register the fake (meta) kernels of its Newton-Schulz ops; returns
    torch.ops.evilbench."""
    from evilbench.kernels import _ext

    _ext.load()

    @torch.library.register_fake("evilbench::newton_schulz")
    def _newton_schulz_fake(mats, coefficients, eps, clamp_eps=False):
        outs = [_output_like(m) for m in mats]
        device = mats[0].device if len(mats) else torch.device("cpu")
        return outs, torch.empty(len(mats), dtype=torch.int32, device=device)

    @torch.library.register_fake("evilbench::muon_update_")
    def _muon_update_fake(params, grads, bufs, lr, lr_ratios, weight_decay, momentum, nesterov, coefficients, eps):
        return None

    return torch.ops.evilbench


def _output_like(m: torch.Tensor) -> torch.Tensor:
    """The op's output layout: column-major inputs give column-major outputs, all others row-major."""
    rows, cols = m.shape
    if m.stride(1) == 1 and m.stride(0) >= max(cols, 1):
        return m.new_empty((rows, cols))
    if m.stride(0) == 1 and m.stride(1) >= max(rows, 1):
        return m.new_empty((cols, rows)).t()
    return m.new_empty((rows, cols))


def flat_coefficients(triples) -> list[float]:
    return [v for t in triples for v in t]


def raise_on_status(status: torch.Tensor, mats) -> None:
    """ValueError naming the first matrix whose status is non-zero (syncs once on CUDA)."""
    if status.numel() == 0:
        return
    if status.is_cuda and torch.cuda.is_current_stream_capturing():
        return  # cannot sync inside a CUDA graph: bad matrices come out as NaN
    bad = torch.nonzero(status).flatten()
    if bad.numel():
        i = int(bad[0])
        raise _nonfinite_error(i, mats[i])


def newton_schulz(
    mats: Sequence[torch.Tensor],
    steps: int = 5,
    coefficients=KJ_COEFFICIENTS,
    eps: float = 1e-7,
    *,
    check_finite: bool = True,
) -> list[torch.Tensor]:
    """Orthogonalise every matrix of `mats` (2-D; float32, bfloat16 or float16; mixed shapes and
    dtypes allowed; one device) with one fused op. Returns new tensors with the same shapes and
    dtypes (column-major inputs give column-major outputs).

    `coefficients` is one (a, b, c) triple used at every step or a list of `steps` triples.
    Zero matrices give exact zeros. A matrix holding NaN or Inf raises ValueError naming its index
    (check_finite=False skips the check, which costs one device sync on CUDA, and leaves NaN
    outputs instead). Not differentiable: inputs are detached.
    """
    mats = _check_mats(mats)  # the op checks again; errors must not depend on reaching C++
    triples = normalize_coefficients(steps, coefficients)
    if not math.isfinite(eps) or eps < 0:
        raise ValueError(f"eps must be finite and >= 0, got {eps!r}")
    if not mats:
        return []
    with torch.no_grad():
        outs, status = ops().newton_schulz(mats, flat_coefficients(triples), float(eps), False)
    if check_finite:
        raise_on_status(status, mats)
    return list(outs)
