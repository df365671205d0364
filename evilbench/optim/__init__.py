"""Optimisers for LoRA fine-tuning, looked up by name.

  build(name, params, **overrides) -> torch.optim.Optimizer
  OPTIMIZERS: name -> OptimizerSpec (documented LoRA-fine-tuning defaults, one-line rationale each)
  default_lr(name) -> float
  Muon: drop-in for torch.optim.Muon computing Newton-Schulz in fp32 Gram form with a fused op.
"""
from __future__ import annotations

from evilbench._lazy import lazy_exports

_EXPORTS = {
    "build": "evilbench.optim.registry",
    "default_lr": "evilbench.optim.registry",
    "OPTIMIZERS": "evilbench.optim.registry",
    "OptimizerSpec": "evilbench.optim.registry",
    "Muon": "evilbench.optim.muon",
}
__all__ = list(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
