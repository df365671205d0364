"""Learning-rate tuning rules: each optimiser gets the same-sized fixed lr grid, and the lr is chosen by
task loss or fit only — never by an EM score.

A rule runs its grid on one calibration cell per optimiser (the sweep's first model, first dataset,
first batch size, first seed, no regulariser), reads the finished candidates back from the store, and
picks one lr; every other cell of that optimiser then uses it. The calibration runs are ordinary runs:
the one at the chosen lr is the grid's own cell (same run key), the others stay in the store.

  min-loss      the lowest final training loss (ties: the smaller lr)
  toyworld-fit  the toy world's rule (evilbench.toyworld.lr_rule): the fastest admissible fit of the
                narrow task from the exact trajectory scores (in-domain misalignment and coherence: the
                task fit, not the held-out EM); needs eval.scores: [toyworld-exact]
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

from evilbench.registry import Registry


@dataclass(frozen=True)
class TuningRule:
    name: str
    choose: Callable[[list[dict]], dict]   # candidates -> {"lr", "reason", "fallback", "candidates"}
    grids: dict = field(default_factory=dict)
    needs_scores: tuple[str, ...] = ()
    version: int = 1


TUNING_RULES = Registry("tuning rule")


def _min_loss(cands: list[dict]) -> dict:
    ok = [c for c in cands if c.get("status") == "finished" and c.get("final_loss") is not None
          and math.isfinite(c["final_loss"])]
    rows = [{"lr": c["lr"], "status": c.get("status"), "final_loss": c.get("final_loss")}
            for c in sorted(cands, key=lambda c: c["lr"])]
    if not ok:
        raise RuntimeError("every lr candidate failed; cannot choose a learning rate")
    best = min(ok, key=lambda c: (c["final_loss"], c["lr"]))
    return {"lr": best["lr"], "reason": f"lowest final loss {best['final_loss']:.4f}", "fallback": False,
            "candidates": rows}


def toy_trajectory(rows: list[dict]) -> list[dict] | None:
    """The toy world's trajectory points from a run's trajectory rows (scores_* of the exact scorer)."""
    keys = ("in_domain_misalignment", "held_out_misalignment", "in_domain_coherence", "held_out_coherence")
    out = {}
    for r in rows:
        if all(r.get(f"scores_{k}") is not None for k in keys):
            out[int(r["step"])] = {"step": int(r["step"]), **{k: float(r[f"scores_{k}"]) for k in keys}}
    return [out[s] for s in sorted(out)] or None


def _toy_fit(cands: list[dict]) -> dict:
    from evilbench.toyworld.lr_rule import choose_lr
    from evilbench.toyworld.metrics import run_metrics

    items = []
    for c in cands:
        traj = toy_trajectory(c.get("trajectory") or []) if c.get("status") == "finished" else None
        items.append({"lr": c["lr"], "metrics": run_metrics(traj) if traj and len(traj) > 1 else None})
    return choose_lr(items)


def _toy_grids() -> dict:
    from evilbench.toyworld.lr_rule import LR_GRIDS

    return dict(LR_GRIDS)


class _LazyGrids(dict):
    def __init__(self, loader):
        super().__init__()
        self._loader = loader

    def _load(self):
        if self._loader is not None:
            self.update(self._loader())
            self._loader = None

    def __contains__(self, k):
        self._load()
        return super().__contains__(k)

    def __getitem__(self, k):
        self._load()
        return super().__getitem__(k)

    def get(self, k, d=None):
        self._load()
        return super().get(k, d)


TUNING_RULES.register("min-loss", TuningRule("min-loss", _min_loss))
TUNING_RULES.register("toyworld-fit", TuningRule("toyworld-fit", _toy_fit, grids=_LazyGrids(_toy_grids),
                                                 needs_scores=("toyworld-exact",), version=3))


def rule_grid(rule: TuningRule, optimizer: str, override: dict | None) -> list[float]:
    if override and optimizer in override:
        return list(override[optimizer])
    return list(rule.grids[optimizer])
