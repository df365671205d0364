"""The spectral regulariser: weight × spectral_penalty over every LoRA pair of a peft model, added to
the training loss."""
from __future__ import annotations

import torch

from evilbench.spectral.pairs import lora_layers, pairs_of_layers, tensor_sources


class SpectralRegularizer:
    """`reg = SpectralRegularizer(model, kind="fro_nuclear", weight=1.0)`; each step
    `loss = reg.add_to_loss(loss)` (or `loss + reg()`), then backward as usual.

    The LoRA layers and their parameters are found once, at construction (call refresh() after adding
    adapters or replacing parameters); expert/convolution views are re-taken from the live parameters
    on every call. Moving the model between devices or dtypes in place (model.to) is fine.
    `reduction="mean"` averages over pairs (the paper's convention), so the weight does not scale with
    the number of adapted modules. weight 0 skips the computation.
    `last_penalty` holds the latest unweighted value (detached) for logging.
    """

    def __init__(
        self,
        model,
        kind: str = "fro_nuclear",
        weight: float = 1.0,
        *,
        adapter_name: str | None = None,
        reduction: str = "mean",
        impl: str = "auto",
        check_finite: bool = True,
    ):
        from evilbench.kernels.spectral import _check_kind

        _check_kind(kind, reduction)
        self.model = model
        self.kind = kind
        self.weight = float(weight)
        self.adapter_name = adapter_name
        self.reduction = reduction
        self.impl = impl
        self.check_finite = check_finite
        self.last_penalty: torch.Tensor | None = None
        self.refresh()

    def refresh(self) -> None:
        """Find the LoRA layers again (after adding/replacing adapters or parameters)."""
        from evilbench.kernels.spectral import _as_pairs

        self._layers = lora_layers(self.model, self.adapter_name)
        if not self._layers:
            raise ValueError("SpectralRegularizer: the model has no peft LoRA layers for the requested adapter")
        self._sources = tensor_sources(self._layers)
        self._signature = None
        A_list, B_list = self._tensors()
        _as_pairs(A_list, B_list, "SpectralRegularizer")  # full checks once; per step only a cheap signature

    def pairs(self):
        return pairs_of_layers(self._layers)

    def _tensors(self):
        A_list, B_list = [], []
        for src in self._sources:
            if isinstance(src, tuple):
                A_list.append(src[0])
                B_list.append(src[1])
            else:
                for A, B in src():
                    A_list.append(A)
                    B_list.append(B)
        return A_list, B_list

    def penalty(self) -> torch.Tensor:
        """The unweighted penalty (float32 scalar, attached to the graph)."""
        from evilbench.kernels.spectral import _as_pairs, _spectral_penalty_prevalidated

        A_list, B_list = self._tensors()
        # dtype/device may change (model.to(...)): re-check fully when the first pair's do
        sig = (A_list[0].device, A_list[0].dtype, B_list[0].dtype, len(A_list))
        if sig != self._signature:
            _as_pairs(A_list, B_list, "SpectralRegularizer")
            self._signature = sig
        value = _spectral_penalty_prevalidated(A_list, B_list, self.kind, self.reduction, self.impl, self.check_finite)
        self.last_penalty = value.detach()
        return value

    def __call__(self) -> torch.Tensor:
        if self.weight == 0.0:
            return torch.zeros((), dtype=torch.float32, device=self._tensors()[0][0].device)
        return self.weight * self.penalty()

    def add_to_loss(self, loss: torch.Tensor) -> torch.Tensor:
        return loss + self().to(loss.device)

    def __repr__(self) -> str:
        return (
            f"SpectralRegularizer(kind={self.kind!r}, weight={self.weight}, reduction={self.reduction!r}, "
            f"layers={len(self._layers)})"
        )
