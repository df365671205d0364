"""Spectral uniformity measures of one LoRA adapter from its singular values σ (docs/design.md, "Spectra").

Definitions (σ descending, σᵢ ≤ 1e-6·σ₁ counted as 0, as in evilbench.kernels.spectral):
  stable_rank        Σσ² / σ₁²                                     in [1, r]
  spectral_entropy   H = −Σ pᵢ ln pᵢ, pᵢ = σᵢ / Σσ (nats)           in [0, ln r]
  effective_rank     exp(H) (Roy & Vetterli 2007, same p)           in [1, r]
  condition_number   σ₁ / σ_r over all r values (inf when rank(BA) < r)
  fro_nuclear_ratio  √Σσ² / Σσ = ‖BA‖_F / ‖BA‖_*                     in [1/√r, 1]
  numerical_rank     #{σᵢ > 1e-6·σ₁}
A flat spectrum has stable_rank = effective_rank = r, entropy ln r, condition number 1, ratio 1/√r.
"""
from __future__ import annotations

import math

import torch

MEASURES = (
    "stable_rank",
    "spectral_entropy",
    "effective_rank",
    "condition_number",
    "fro_nuclear_ratio",
    "numerical_rank",
)


def spectral_measures(sigma: torch.Tensor) -> dict[str, float]:
    """Measures of one adapter from its r singular values (any order). All-zero σ (a zero adapter)
    raises ValueError: its spectrum is undefined; spectra_table flags such adapters instead."""
    from evilbench.kernels.spectral import SIGMA_TOL

    s = torch.as_tensor(sigma).detach().double().flatten().sort(descending=True).values.cpu()
    if s.numel() == 0 or not bool(torch.isfinite(s).all()):
        raise ValueError(f"spectral_measures: need finite singular values, got {s.tolist()}")
    if float(s[0]) <= 0.0:
        raise ValueError("spectral_measures: all singular values are zero (a zero adapter has no spectrum)")
    s = torch.where(s > SIGMA_TOL * s[0], s, torch.zeros_like(s))
    s1, s2 = float(s.sum()), float((s * s).sum())
    p = s[s > 0] / s1
    H = float(-(p * p.log()).sum())
    smin = float(s[-1])
    return {
        "stable_rank": s2 / float(s[0]) ** 2,
        "spectral_entropy": H,
        "effective_rank": math.exp(H),
        "condition_number": float(s[0]) / smin if smin > 0 else math.inf,
        "fro_nuclear_ratio": math.sqrt(s2) / s1,
        "numerical_rank": int((s > 0).sum()),
    }
