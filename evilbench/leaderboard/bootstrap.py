"""Two-way cluster bootstrap (seeds × questions) for the leaderboard's cell estimates.

Data layout: dense count arrays of shape (C, W, S, Q) — cell (optimiser × regulariser), workload
(model × dataset × batch size), seed slot, question — holding, per (cell, workload, seed, question),
the numerator and denominator of a ratio (misaligned samples / included samples, or the sum of
alignment values / their count). The estimate follows the leaderboard's aggregation order:

  per seed         r[c,w,s] = Σ_q num / Σ_q den
  per workload     θ[c,w]   = mean over the seeds of (c, w) that have data
  per cell         Θ[c]     = mean over the workloads of c that have data (never imputed)

A bootstrap replicate draws one multinomial weight vector over the questions, shared by every cell
and workload (they answer the same question set, so comparisons stay paired over questions), and,
independently for every (cell, workload), a resample of that workload's seeds. Everything is
vectorised over replicates."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class BootstrapResult:
    point: np.ndarray          # (C,) cell estimates (NaN: no data)
    point_w: np.ndarray        # (C, W) workload estimates (NaN: missing cell)
    reps_w: np.ndarray         # (B, C, W) replicate workload estimates
    reps: np.ndarray           # (B, C) replicate cell estimates
    level: float

    def ci(self) -> np.ndarray:
        """(C, 2) percentile intervals."""
        a = (1 - self.level) / 2
        out = np.full((self.point.shape[0], 2), np.nan)
        for c in range(self.point.shape[0]):
            r = self.reps[:, c]
            r = r[np.isfinite(r)]
            if r.size and np.isfinite(self.point[c]):
                out[c] = np.quantile(r, [a, 1 - a])
        return out

    def diff_ci(self, i: int, j: int) -> tuple[float, float, float, int]:
        """(estimate, lo, hi, n_common) of Θ_i − Θ_j over the workloads both cells cover."""
        common = np.isfinite(self.point_w[i]) & np.isfinite(self.point_w[j])
        n = int(common.sum())
        if n == 0:
            return (np.nan, np.nan, np.nan, 0)
        est = float(np.mean(self.point_w[i, common] - self.point_w[j, common]))
        d = np.nanmean(self.reps_w[:, i, common] - self.reps_w[:, j, common], axis=1)
        d = d[np.isfinite(d)]
        a = (1 - self.level) / 2
        lo, hi = np.quantile(d, [a, 1 - a]) if d.size else (np.nan, np.nan)
        return (est, float(lo), float(hi), n)


def _seed_weights(present: np.ndarray, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """(B, C, W, S) resampling counts of the seeds present in each (cell, workload).

    `present` (C, W, S) must have each (c, w)'s seeds packed into the first k slots."""
    k = present.sum(-1)                                     # (C, W)
    S = present.shape[-1]
    m = np.maximum(k - 1, 1)                                # k - 1 draws of k seeds (see cluster_bootstrap)
    draws = np.floor(rng.random((n_boot, *present.shape)) * np.maximum(k, 1)[None, :, :, None]).astype(np.int64)
    slot_used = np.arange(S)[None, None, None, :] < m[None, :, :, None]       # only the first m draws count
    onehot = draws[..., None] == np.arange(S)                               # (B, C, W, S_draw, S_target)
    return (onehot & slot_used[..., None]).sum(-2).astype(np.float64)


def _estimate(num: np.ndarray, den: np.ndarray, qw: np.ndarray | None, sw: np.ndarray | None):
    """Workload (…, C, W) and cell (…, C) estimates for question weights qw (B, Q) and seed weights
    sw (B, C, W, S); None means weight 1 everywhere (the point estimate)."""
    if qw is None:
        n = num.sum(-1)
        d = den.sum(-1)
    else:
        n = np.einsum("bq,cwsq->bcws", qw, num, optimize=True)
        d = np.einsum("bq,cwsq->bcws", qw, den, optimize=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        r = np.where(d > 0, n / np.where(d > 0, d, 1), np.nan)
    w = np.ones_like(r) if sw is None else sw
    ok = np.isfinite(r) & (w > 0)
    ws = np.where(ok, w, 0.0)
    tot = ws.sum(-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        theta_w = np.where(tot > 0, (np.where(ok, r, 0.0) * ws).sum(-1) / np.where(tot > 0, tot, 1), np.nan)
    with _quiet():
        theta = np.nanmean(theta_w, axis=-1)
    return theta_w, theta


class _quiet:
    def __enter__(self):
        import warnings
        self._w = warnings.catch_warnings()
        self._w.__enter__()
        warnings.simplefilter("ignore", RuntimeWarning)

    def __exit__(self, *exc):
        self._w.__exit__(*exc)


def cluster_bootstrap(num: np.ndarray, den: np.ndarray, seed_present: np.ndarray, *, n_boot: int = 1000,
                      level: float = 0.95, seed: int = 0, chunk: int = 250) -> BootstrapResult:
    """Point estimates and replicates for arrays num/den (C, W, S, Q) and seed_present (C, W, S).

    Each level draws n - 1 of its n clusters (questions; a workload's seeds, when it has two or more):
    for a mean this makes the bootstrap variance s²/n, the unbiased one, where drawing n of n gives
    (n - 1)/n of it — with 3 seeds, two thirds — and percentile intervals that undercover. With a
    single seed a workload contributes no seed variance (it cannot be estimated from one seed)."""
    num = np.asarray(num, dtype=np.float64)
    den = np.asarray(den, dtype=np.float64)
    present = np.asarray(seed_present, dtype=bool)
    C, W, _, Q = num.shape
    point_w, point = _estimate(num, den, None, None)
    rng = np.random.default_rng(seed)
    reps_w = np.empty((n_boot, C, W))
    reps = np.empty((n_boot, C))
    for start in range(0, n_boot, chunk):
        b = min(chunk, n_boot - start)
        qw = rng.multinomial(max(Q - 1, 1), np.full(Q, 1.0 / Q), size=b).astype(np.float64)
        sw = _seed_weights(present, b, rng)
        tw, _ = _estimate(num, den, qw, sw)
        tw = np.where(np.isfinite(point_w)[None], tw, np.nan)  # a missing cell stays missing
        reps_w[start:start + b] = tw
        with _quiet():
            reps[start:start + b] = np.nanmean(tw, axis=-1)
    return BootstrapResult(point=point, point_w=point_w, reps_w=reps_w, reps=reps, level=level)
