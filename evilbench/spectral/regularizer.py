"""The spectral regulariser: weight × spectral_penalty over every LoRA pair of a peft model, added to
the training loss."""
from __future__ import annotations

import torch

from evilbench.spectral.pairs import lora_layers, pairs_of_layers


class SpectralRegularizer:
    """`reg = SpectralRegularizer(model, kind="fro_nuclear", weight=1.0)`; each step
    `loss = reg.add_to_loss(loss)` (or `loss + reg()`), then backward as usual.

    The LoRA layers are found once, at construction (call refresh() after adding adapters); the
    (A, B) views are taken from the live parameters on every call, so moving the model between
    devices or dtypes is fine. `reduction="mean"` averages over pairs (the paper's convention), so
    the weight does not scale with the number of adapted modules. weight 0 skips the computation.
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
        self._layers = lora_layers(self.model, self.adapter_name)
        if not self._layers:
            raise ValueError("SpectralRegularizer: the model has no peft LoRA layers for the requested adapter")

    def pairs(self):
        return pairs_of_layers(self._layers)

    def penalty(self) -> torch.Tensor:
        """The unweighted penalty (float32 scalar, attached to the graph)."""
        from evilbench.kernels.spectral import spectral_penalty

        pairs = self.pairs()
        value = spectral_penalty(
            [p.A for p in pairs],
            [p.B for p in pairs],
            kind=self.kind,
            reduction=self.reduction,
            impl=self.impl,
            check_finite=self.check_finite,
        )
        self.last_penalty = value.detach()
        return value

    def __call__(self) -> torch.Tensor:
        if self.weight == 0.0:
            return torch.zeros((), dtype=torch.float32, device=self.pairs()[0].A.device)
        return self.weight * self.penalty()

    def add_to_loss(self, loss: torch.Tensor) -> torch.Tensor:
        return loss + self().to(loss.device)

    def __repr__(self) -> str:
        return (
            f"SpectralRegularizer(kind={self.kind!r}, weight={self.weight}, reduction={self.reduction!r}, "
            f"layers={len(self._layers)})"
        )
