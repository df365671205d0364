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

from evilbench.kernels.newton_schulz_op import _gram_float64_one, flat_coefficients, normalize_coefficients, ops


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
        momentum, nesterov = float(group["momentum"]), bool(group["nesterov"])
        wd, eps, fn = float(group["weight_decay"]), float(group["eps"]), group["adjust_lr_fn"]
        fused: dict[torch.device, list[int]] = {}
        for i, (p, g, buf) in enumerate(zip(params, grads, bufs)):
            if _fusable(p, g, buf):
                fused.setdefault(p.device, []).append(i)
            else:  # odd layouts / mixed dtypes: plain torch ops, the Gram form in float64
                buf.lerp_(g, 1 - momentum)
                update = g.lerp(buf, momentum) if nesterov else buf
                ortho = _gram_float64_one(update, triples, eps, True)
                p.mul_(1 - lr * wd)
                p.add_(ortho, alpha=-lr * adjust_lr_ratio(fn, p.shape))
        if fused:
            coef = flat_coefficients(triples)
            for idx in fused.values():
                ops().muon_update_(
                    [params[i] for i in idx],
                    [grads[i] for i in idx],
                    [bufs[i] for i in idx],
                    lr,
                    [adjust_lr_ratio(fn, params[i].shape) for i in idx],
                    wd,
                    momentum,
                    nesterov,
                    coef,
                    eps,
                )


_FUSED_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def _fusable(p: torch.Tensor, g: torch.Tensor, buf: torch.Tensor) -> bool:
    return (
        p.dtype in _FUSED_DTYPES
        and g.dtype == p.dtype
        and buf.dtype == p.dtype
        and g.shape == p.shape
        and buf.shape == p.shape
        and g.device == p.device
        and buf.device == p.device
        and p.is_contiguous()
        and g.is_contiguous()
        and buf.is_contiguous()
        and (p.device.type == "cpu" or p.device.type == "cuda")
    )
