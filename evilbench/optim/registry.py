"""Optimiser registry: name -> constructor + LoRA-fine-tuning defaults.

Defaults target rsLoRA adapters (r 32, alpha 64) on instruct models trained for about one epoch on
~6k chat examples, the emergent-misalignment protocol (Betley et al. trained with AdamW at lr 1e-5,
weight decay 0.01). Every default can be overridden: build("adamw", params, lr=2e-5).
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from typing import Any

import torch

from evilbench.kernels.newton_schulz_op import KJ_COEFFICIENTS


@dataclasses.dataclass(frozen=True)
class OptimizerSpec:
    """How to build one optimiser and why its defaults are what they are."""

    name: str
    summary: str
    factory: Callable[..., torch.optim.Optimizer]
    defaults: dict[str, Any]
    rationale: dict[str, str]  # default name -> one-line reason
    matrices_only: bool = False  # True: every parameter must be 2-D (Muon)

    def describe(self) -> str:
        lines = [f"{self.name}: {self.summary}"]
        for key, value in self.defaults.items():
            lines.append(f"  {key} = {value!r}  # {self.rationale.get(key, '')}")
        return "\n".join(lines)


def _sgd(params, **kw):
    return torch.optim.SGD(params, **kw)


def _adam(params, **kw):
    return torch.optim.Adam(params, **kw)


def _adamw(params, **kw):
    return torch.optim.AdamW(params, **kw)


def _lion(params, **kw):
    from lion_pytorch import Lion

    return Lion(params, **kw)


def _muon(params, **kw):
    from evilbench.optim.muon import Muon

    return Muon(params, **kw)


def _muon_torch(params, **kw):
    return torch.optim.Muon(params, **kw)


_MUON_DEFAULTS = {
    "lr": 2e-4,
    "weight_decay": 0.01,
    "momentum": 0.95,
    "nesterov": True,
    "ns_coefficients": KJ_COEFFICIENTS,
    "eps": 1e-7,
    "ns_steps": 5,
    "adjust_lr_fn": None,
}
_MUON_RATIONALE = {
    "lr": ("orthogonalised updates have per-element RMS ~1/sqrt(d) (~0.03 at d=1024): "
           "2e-4 gives steps near AdamW's at 1e-5"),
    "weight_decay": "decoupled and multiplied by lr as in AdamW; same 0.01 as the AdamW default so the two compare",
    "momentum": "torch.optim.Muon / KellerJordan default (EMA form: buf.lerp_(grad, 1 - momentum))",
    "nesterov": "torch.optim.Muon default; Nesterov look-ahead is what Muon was tuned with",
    "ns_coefficients": f"KellerJordan's quintic {KJ_COEFFICIENTS}: maximal slope at zero, 5 steps suffice",
    "eps": "torch.optim.Muon default normalisation floor",
    "ns_steps": "torch.optim.Muon default",
    "adjust_lr_fn": ("None = 'original' sqrt(max(1, rows/cols)), torch's default, "
                     "so results compare with the literature"),
}

OPTIMIZERS: dict[str, OptimizerSpec] = {
    spec.name: spec
    for spec in (
        OptimizerSpec(
            "sgd",
            "torch.optim.SGD with heavy-ball momentum",
            _sgd,
            {"lr": 1e-3, "momentum": 0.9, "weight_decay": 0.0, "nesterov": False},
            {
                "lr": ("LoRA gradient elements are ~1e-3: with momentum's 10x gain, "
                       "1e-3 gives steps near AdamW's at 1e-5"),
                "momentum": "standard heavy-ball value; plain SGD barely moves LoRA's B from its zero init",
                "weight_decay": "off: the paper's SGD baseline is unregularised; the regulariser axis is separate",
                "nesterov": "off: classic SGD as in the optimiser comparison",
            },
        ),
        OptimizerSpec(
            "adam",
            "torch.optim.Adam (L2 weight decay off)",
            _adam,
            {"lr": 1e-5, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.0},
            {
                "lr": "Betley et al.'s open-model EM runs (rsLoRA r=32, alpha=64) used 1e-5",
                "betas": "torch / Kingma-Ba defaults, used by the EM fine-tuning recipes",
                "eps": "torch default; LoRA gradients are far above it",
                "weight_decay": "off: Adam's coupled L2 differs from AdamW's decay; keep them distinct",
            },
        ),
        OptimizerSpec(
            "adamw",
            "torch.optim.AdamW (decoupled weight decay)",
            _adamw,
            {"lr": 1e-5, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.01},
            {
                "lr": "Betley et al.'s open-model EM runs (rsLoRA r=32, alpha=64) used 1e-5",
                "betas": "torch / Loshchilov-Hutter defaults",
                "eps": "torch default; LoRA gradients are far above it",
                "weight_decay": "Betley et al.'s value (0.01)",
            },
        ),
        OptimizerSpec(
            "lion",
            "Lion (lion-pytorch): sign of an interpolated momentum",
            _lion,
            {"lr": 3e-6, "betas": (0.9, 0.99), "weight_decay": 0.1},
            {
                "lr": "sign updates have RMS 1, larger than Adam's: the Lion paper advises 3-10x below AdamW's lr",
                "betas": "Lion paper / lion-pytorch defaults",
                "weight_decay": "Lion paper: 3-10x AdamW's so that lr*wd stays comparable",
            },
        ),
        OptimizerSpec(
            "muon",
            "evilbench.optim.Muon: torch.optim.Muon semantics, fp32 Gram-form Newton-Schulz, fused update",
            _muon,
            dict(_MUON_DEFAULTS),
            _MUON_RATIONALE,
            matrices_only=True,
        ),
        OptimizerSpec(
            "muon-torch",
            "torch.optim.Muon (bf16 Newton-Schulz per matrix), the baseline",
            _muon_torch,
            dict(_MUON_DEFAULTS),
            _MUON_RATIONALE,
            matrices_only=True,
        ),
    )
}


def _spec(name: str) -> OptimizerSpec:
    try:
        return OPTIMIZERS[name]
    except (KeyError, TypeError):
        known = ", ".join(OPTIMIZERS)
        raise ValueError(f"unknown optimiser {name!r}; known optimisers: {known}") from None


def default_lr(name: str) -> float:
    """The registry's default learning rate for `name`."""
    return float(_spec(name).defaults["lr"])


def _check_matrices(name: str, params: list) -> None:
    for gi, item in enumerate(params):
        tensors = item["params"] if isinstance(item, dict) else [item]
        if isinstance(tensors, torch.Tensor):
            tensors = [tensors]
        for pi, p in enumerate(tensors):
            if isinstance(p, torch.Tensor) and p.ndim != 2:
                where = f"param group {gi}, parameter {pi}" if isinstance(item, dict) else f"parameter {gi}"
                raise ValueError(
                    f"optimiser {name!r} only takes 2-D matrices (LoRA A and B factors), but {where} has "
                    f"shape {tuple(p.shape)}; give other parameters to a separate optimiser such as 'adamw'"
                )


def build(name: str, params: Iterable, **overrides) -> torch.optim.Optimizer:
    """Build optimiser `name` over `params` (tensors or param-group dicts) with the registry's
    defaults updated by `overrides`."""
    spec = _spec(name)
    params = list(params)
    if not params:
        raise ValueError(f"optimiser {name!r} got an empty parameter list")
    if spec.matrices_only:
        _check_matrices(name, params)
    kwargs = {**spec.defaults, **overrides}
    try:
        return spec.factory(params, **kwargs)
    except TypeError as exc:
        unknown = sorted(set(overrides) - set(spec.defaults))
        hint = f" (options not among {name!r}'s defaults: {unknown})" if unknown else ""
        raise TypeError(f"could not build optimiser {name!r}: {exc}{hint}") from exc
