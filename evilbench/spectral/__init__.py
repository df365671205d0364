"""LoRA spectra: per-adapter uniformity measures, a per-module table of a peft model, and the
spectral regulariser hook for training.

  spectral_measures(sigma) -> dict            measures of one adapter's singular values
  lora_pairs(model, adapter_name=None)        the (A, B) pairs of a peft model
  spectra_table(model, adapter_name=None)     one dict per adapter: module, r, σ_max, ‖BA‖_F, measures
  SpectralRegularizer(model, kind, weight)    weight × spectral_penalty over all LoRA pairs

Imports are lazy: `import evilbench.spectral` loads neither torch's extension nor peft.
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    "MEASURES": "evilbench.spectral.measures",
    "spectral_measures": "evilbench.spectral.measures",
    "LoraPair": "evilbench.spectral.pairs",
    "lora_pairs": "evilbench.spectral.pairs",
    "spectra_table": "evilbench.spectral.table",
    "SpectralRegularizer": "evilbench.spectral.regularizer",
}
__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'evilbench.spectral' has no attribute {name!r}")
