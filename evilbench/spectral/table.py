"""Per-module spectra of a peft model's LoRA adapters, computed with the fused Gram route."""
from __future__ import annotations

import math

import torch

from evilbench.spectral.measures import MEASURES, spectral_measures
from evilbench.spectral.pairs import lora_pairs


@torch.no_grad()
def spectra_table(model, adapter_name: str | None = None, *, include_zero: bool = True,
                  impl: str = "auto") -> list[dict]:
    """One dict per LoRA pair: module, adapter, r, d_in, d_out, scaling, zero, sigma_max, fro_norm
    (‖BA‖_F, without peft's scaling: multiply by `scaling` for ‖ΔW‖_F) and the measures of
    evilbench.spectral.measures. Adapters with B = 0 or A = 0 (peft's B = 0 init; the cutoff is
    evilbench.kernels.spectral.MIN_GRAM, scale-free) have zero=True and None for every measure
    (include_zero=False drops them)."""
    from evilbench.kernels.spectral import MIN_GRAM, lora_singular_values

    pairs = lora_pairs(model, adapter_name)
    sigmas = lora_singular_values([p.A for p in pairs], [p.B for p in pairs], impl=impl)
    rows = []
    for pair, sigma in zip(pairs, sigmas):
        zero = any(float(f.detach().double().square().sum()) <= MIN_GRAM for f in (pair.A, pair.B))
        row = {
            "module": pair.module,
            "adapter": pair.adapter,
            "r": pair.r,
            "d_in": pair.A.shape[1],
            "d_out": pair.B.shape[0],
            "scaling": pair.scaling,
            "zero": zero,
        }
        if zero:
            if not include_zero:
                continue
            row.update(sigma_max=None, fro_norm=None, **{m: None for m in MEASURES})
        else:
            s = sigma.double().cpu()
            row.update(sigma_max=float(s.max()), fro_norm=math.sqrt(float((s * s).sum())), **spectral_measures(s))
        rows.append(row)
    return rows
