"""LoRA spectra: per-adapter uniformity measures, a per-module table of a peft model, and the
spectral regulariser hook for training.

  spectral_measures(sigma) -> dict            measures of one adapter's singular values
  lora_pairs(model, adapter_name=None)        the (A, B) pairs of a peft model
  spectra_table(model, adapter_name=None)     one dict per adapter: module, r, σ_max, ‖BA‖_F, measures
  SpectralRegularizer(model, kind, weight)    weight × spectral_penalty over all LoRA pairs

Imports are lazy: `import evilbench.spectral` loads neither torch's extension nor peft.
"""
from __future__ import annotations

from evilbench._lazy import lazy_exports

_EXPORTS = {
    "MEASURES": "evilbench.spectral.measures",
    "spectral_measures": "evilbench.spectral.measures",
    "LoraPair": "evilbench.spectral.pairs",
    "lora_pairs": "evilbench.spectral.pairs",
    "spectra_table": "evilbench.spectral.table",
    "SpectralRegularizer": "evilbench.spectral.regularizer",
}
__all__ = list(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
