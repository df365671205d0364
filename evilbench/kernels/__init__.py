"""Fused kernels as registered torch ops (torch.ops.evilbench.*), with Python wrappers, fake
(meta) kernels, autograd registrations and float64 references.

Public API (imported lazily so `import evilbench.kernels` does not load the extension):
  newton_schulz(mats, steps=5, coefficients=KJ_COEFFICIENTS, eps=1e-7) -> list[Tensor]
  lora_singular_values(A_list, B_list) -> list[Tensor]
  spectral_penalty(A_list, B_list, kind="fro_nuclear", reduction="mean") -> Tensor
"""
from __future__ import annotations

from evilbench._lazy import lazy_exports

_EXPORTS = {
    "newton_schulz": "evilbench.kernels.newton_schulz_op",
    "lora_singular_values": "evilbench.kernels.spectral",
    "spectral_penalty": "evilbench.kernels.spectral",
}
__all__ = list(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
