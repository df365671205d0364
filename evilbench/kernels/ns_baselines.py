"""Plain-torch Newton-Schulz baselines that the fused op is benchmarked against."""
from __future__ import annotations

from collections import defaultdict

import torch

from evilbench.kernels.newton_schulz_op import KJ_COEFFICIENTS, newton_schulz_gram_torch, normalize_coefficients


def eager_loop_fp32(mats, steps=5, coefficients=KJ_COEFFICIENTS, eps=1e-7):
    """Classic quintic NS per matrix in fp32 (KellerJordan's code, fp32 instead of bf16)."""
    triples = normalize_coefficients(steps, coefficients)
    out = []
    for m in mats:
        x = m.float()
        tall = x.shape[0] > x.shape[1]
        if tall:
            x = x.T
        x = x / (x.norm() + eps)
        for a, b, c in triples:
            g = x @ x.T
            x = torch.addmm(x, torch.addmm(g, g, g, beta=b, alpha=c), x, beta=a)
        out.append((x.T if tall else x).to(m.dtype))
    return out


def _by_shape(mats):
    groups = defaultdict(list)
    for i, m in enumerate(mats):
        groups[(tuple(m.shape), m.dtype)].append(i)
    return groups


def batched_bmm(mats, steps=5, coefficients=KJ_COEFFICIENTS, eps=1e-7):
    """Classic NS in fp32, matrices of equal shape stacked and iterated with bmm."""
    triples = normalize_coefficients(steps, coefficients)
    out = [None] * len(mats)
    for (shape, dtype), idx in _by_shape(mats).items():
        x = torch.stack([mats[i] for i in idx]).float()
        tall = shape[0] > shape[1]
        if tall:
            x = x.transpose(1, 2)
        x = x / (torch.linalg.vector_norm(x, dim=(1, 2), keepdim=True) + eps)
        for a, b, c in triples:
            g = x @ x.transpose(1, 2)
            x = torch.baddbmm(x, torch.baddbmm(g, g, g, beta=b, alpha=c), x, beta=a)
        if tall:
            x = x.transpose(1, 2)
        x = x.to(dtype)
        for k, i in enumerate(idx):
            out[i] = x[k]
    return out


def gram_batched(mats, steps=5, coefficients=KJ_COEFFICIENTS, eps=1e-7):
    """Gram form in plain torch, equal shapes stacked: G = X Xᵀ (bmm), r x r iteration batched,
    out = (sM) X (bmm). Same maths as the fused op."""
    triples = normalize_coefficients(steps, coefficients)
    out = [None] * len(mats)
    for (shape, dtype), idx in _by_shape(mats).items():
        x = torch.stack([mats[i] for i in idx]).float()
        tall = shape[0] > shape[1]
        if tall:
            x = x.transpose(1, 2)
        g = x @ x.transpose(1, 2)
        s = 1.0 / (g.diagonal(dim1=1, dim2=2).sum(-1).sqrt() + eps)
        g = g * (s * s)[:, None, None]
        mm = torch.eye(g.shape[-1], device=g.device).expand_as(g)
        for step, (a, b, c) in enumerate(triples):
            t = g if step == 0 else mm @ g @ mm.transpose(1, 2)
            mm = torch.baddbmm(mm, torch.baddbmm(t, t, t, beta=b, alpha=c), mm, beta=a)
        y = (mm * s[:, None, None]) @ x
        if tall:
            y = y.transpose(1, 2)
        y = y.to(dtype)
        for k, i in enumerate(idx):
            out[i] = y[k]
    return out


def gram_loop(mats, steps=5, coefficients=KJ_COEFFICIENTS, eps=1e-7):
    """Gram form in plain torch, one matrix at a time."""
    return newton_schulz_gram_torch(mats, steps, coefficients, eps)


def torch_muon_ns(mats, steps=5, coefficients=KJ_COEFFICIENTS, eps=1e-7):
    """torch.optim.Muon's own NS (bf16), once per matrix. It normalises bf16 inputs in place
    (grad.bfloat16() is the input itself), so bf16 matrices are cloned first."""
    from torch.optim._muon import _zeropower_via_newtonschulz

    return [
        _zeropower_via_newtonschulz(m.clone() if m.dtype == torch.bfloat16 else m, tuple(coefficients), steps, eps)
        for m in mats
    ]


BASELINES = {
    "eager-fp32": eager_loop_fp32,
    "bmm-batched": batched_bmm,
    "gram-torch-batched": gram_batched,
    "gram-torch-loop": gram_loop,
    "torch-muon": torch_muon_ns,
}
