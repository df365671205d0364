"""Learning-rate schedules (warm-up then linear / cosine / constant, as transformers defines them) and
log-spaced checkpoint steps."""
from __future__ import annotations

import math


def lr_factor(step: int, total: int, warmup: int, kind: str = "linear") -> float:
    """Multiplier of the peak lr for optimiser step `step` (0-based), as in transformers'
    get_{linear,cosine,constant}_schedule_with_warmup: 0 -> 1 over `warmup` steps, then decay."""
    if step < warmup:
        return step / max(1, warmup)
    if kind == "constant":
        return 1.0
    progress = (step - warmup) / max(1, total - warmup)
    if kind == "linear":
        return max(0.0, 1.0 - progress)
    if kind == "cosine":
        return max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))
    raise ValueError(f"unknown lr schedule {kind!r}")


def checkpoint_steps(total: int, count: int) -> list[int]:
    """About `count` log-spaced steps in [1, total] (1-based optimiser steps done), always ending at
    `total`; all steps when count >= total."""
    if count >= total:
        return list(range(1, total + 1))
    if count <= 1:
        return [total]
    for m in range(count, total + 1):
        pts = sorted({max(1, min(total, round(math.exp(math.log(total) * i / (m - 1))))) for i in range(m)})
        if len(pts) >= count:
            return pts
    return list(range(1, total + 1))
