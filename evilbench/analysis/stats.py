"""Statistics of the analysis: cluster bootstrap CIs, OLS fits (R², adjusted R²), interpolation."""
from __future__ import annotations

import math

import numpy as np


def cluster_bootstrap(values: dict[tuple, float], n_boot: int = 2000, seed: int = 0,
                      level: float = 0.95) -> tuple[float, float, float]:
    """(mean, lo, hi) of {(cluster, member): value}: percentile CI of the mean under a two-level bootstrap
    (resample clusters with replacement, then members within each drawn cluster). None / non-finite
    values are dropped; (nan, nan, nan) when nothing is left. Clusters are the models (bases), members
    the seeds: runs on one model are not independent draws."""
    clean = {k: v for k, v in values.items() if v is not None and math.isfinite(v)}
    if not clean:
        return (math.nan, math.nan, math.nan)
    groups: dict = {}
    for (c, _m), v in clean.items():
        groups.setdefault(c, []).append(v)
    sizes = np.array([len(v) for v in groups.values()])
    table = np.zeros((len(groups), sizes.max()))
    for g, v in enumerate(groups.values()):
        table[g, : len(v)] = v
    mean = float(np.mean(list(clean.values())))
    if len(clean) == 1:
        return (mean, mean, mean)
    rng = np.random.default_rng(seed)
    nb, smax = len(groups), sizes.max()
    picks = rng.integers(nb, size=(n_boot, nb))
    n = sizes[picks]
    within = np.floor(rng.random((n_boot, nb, smax)) * n[..., None]).astype(int)
    valid = np.arange(smax)[None, None, :] < n[..., None]
    picked = table[picks[..., None], within]
    stats = (picked * valid).sum((1, 2)) / valid.sum((1, 2))
    lo, hi = np.quantile(stats, [(1 - level) / 2, 1 - (1 - level) / 2])
    return (mean, float(lo), float(hi))


def ci_dict(values: dict[tuple, float], **kw) -> dict:
    mean, lo, hi = cluster_bootstrap(values, **kw)
    n = sum(1 for v in values.values() if v is not None and math.isfinite(v))
    return {"mean": mean, "lo": lo, "hi": hi, "n": n}


def ols(y, X_cols: dict, categorical: dict | None = None) -> dict:
    """OLS of y on numeric columns (+ categorical dummies): {r2, adj_r2, n, params, pvalues, formula}."""
    import pandas as pd
    import statsmodels.formula.api as smf

    df = pd.DataFrame({"y": y, **X_cols, **(categorical or {})}).dropna()
    terms = list(X_cols) + [f"C({c})" for c in (categorical or {})]
    formula = "y ~ " + (" + ".join(terms) if terms else "1")
    n = len(df)
    k = len(X_cols) + sum(max(0, df[c].nunique() - 1) for c in (categorical or {}))
    if n < k + 2:
        return {"r2": math.nan, "adj_r2": math.nan, "n": n, "params": {}, "pvalues": {}, "formula": formula}
    fit = smf.ols(formula, data=df).fit()
    return {"r2": float(fit.rsquared), "adj_r2": float(fit.rsquared_adj), "n": n,
            "params": {k: float(v) for k, v in fit.params.items()},
            "pvalues": {k: float(v) for k, v in fit.pvalues.items()}, "formula": formula}


def value_at_loss(losses, values, target: float) -> float | None:
    """The value where a trajectory first reaches training loss <= target, linearly interpolated in
    loss between the two checkpoints around the crossing; None if it never gets there."""
    pts = [(float(x), float(v)) for x, v in zip(losses, values)
           if x is not None and v is not None and math.isfinite(x) and math.isfinite(v)]
    for i, (x, v) in enumerate(pts):
        if x <= target:
            if i == 0:
                return v
            x0, v0 = pts[i - 1]
            if x0 == x:
                return v
            w = (x0 - target) / (x0 - x)
            return v0 + w * (v - v0)
    return None
