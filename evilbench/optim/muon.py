"""evilbench.optim.Muon: a drop-in for torch.optim.Muon.

Same constructor, defaults, validation, param-group keys and state ('momentum_buffer'), and the same
update: buf.lerp_(grad, 1 - momentum); U = grad.lerp(buf, momentum) if nesterov else buf;
O = NS(U); p *= 1 - lr*weight_decay; p -= adjust_lr(lr, shape) * O. Differences: Newton-Schulz runs
in fp32 Gram form (torch's runs in bf16), and the whole step for all matrices of a group is one
fused op (momentum + Nesterov fused into the Gram pass, lr scale + weight decay + update into the
output pass) on CPU and CUDA.
"""
from __future__ import annotations

import math

import torch

from evilbench.kernels.newton_schulz import _gram_torch_one, normalize_coefficients


def adjust_lr_ratio(adjust_lr_fn: str | None, shape) -> float:
    """torch.optim.Muon's per-matrix learning-rate ratio."""
    rows, cols = shape[:2]
    if adjust_lr_fn is None or adjust_lr_fn == "original":
        return math.sqrt(max(1, rows / cols))
    if adjust_lr_fn == "match_rms_adamw":
        return 0.2 * math.sqrt(max(rows, cols))
    return 1.0


class Muon(torch.optim.Muon):
    __doc__ = __doc__

    def _group_triples(self, group):
        coefficients = group["ns_coefficients"]
        steps = group["ns_steps"]
        if steps >= 100:
            raise ValueError("Number of steps must be less than 100 for computational efficiency")
        return normalize_coefficients(steps, coefficients)

    @torch.no_grad()
    def step(self, closure=None):
        """Performs a single optimization step."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()

        for group in self.param_groups:
            params, grads, bufs = [], [], []
            self._init_group(group, params, grads, bufs)
            if not params:
                continue
            for g in grads:
                if g.ndim != 2:
                    raise ValueError("Param gradient must be a 2D matrix")
            lr = float(group["lr"])
            self._update(group, params, grads, bufs, lr)
        return loss

    def _update(self, group, params, grads, bufs, lr):
        triples = self._group_triples(group)
        momentum = group["momentum"]
        for p, g, buf in zip(params, grads, bufs):
            buf.lerp_(g, 1 - momentum)
            update = g.lerp(buf, momentum) if group["nesterov"] else buf
            ortho = _gram_torch_one(update, triples, group["eps"], True)
            p.mul_(1 - lr * group["weight_decay"])
            p.add_(ortho, alpha=-lr * adjust_lr_ratio(group["adjust_lr_fn"], p.shape))
