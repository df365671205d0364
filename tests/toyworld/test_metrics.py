"""Run metrics from trajectories, the cluster bootstrap, and the learning-rate rule."""
from __future__ import annotations

import math
import random

import numpy as np
import pytest

from evilbench.analysis.stats import cluster_bootstrap
from evilbench.toyworld.lr_rule import LR_GRIDS, choose_lr, grid
from evilbench.toyworld.metrics import run_metrics


def _traj(steps, held, ind, coh=None):
    coh = coh or [0.95] * len(steps)
    return [{"step": s, "held_out_misalignment": h, "in_domain_misalignment": i, "held_out_coherence": c,
             "in_domain_coherence": c} for s, h, i, c in zip(steps, held, ind, coh)]


def test_run_metrics_definitions():
    rng = random.Random()
    c = rng.uniform(0.05, 0.9)
    m = run_metrics(_traj([0, 3, 10, 40], [c] * 4, [0.0, 0.5, 0.95, 0.99]))
    assert math.isclose(m["held_out_auc"], c)  # a flat curve at c has AUC c
    assert m["fit_step"] == 10 and m["held_out_at_fit"] == c
    # linear ramp 0 -> 1 over evenly spaced points: AUC 1/2 exactly (trapezoid)
    steps = [0, 25, 50, 75, 100]
    m = run_metrics(_traj(steps, [s / 100 for s in steps], [0, 0.2, 0.4, 0.6, 0.8], [1, 0.9, 0.7, 0.8, 0.85]))
    assert math.isclose(m["held_out_auc"], 0.5)
    assert m["fit_step"] is None and m["held_out_at_fit"] is None  # in-domain never reaches 0.9
    assert m["final_held_out"] == 1.0 and m["held_out_peak"] == 1.0
    assert m["min_coherence"] == 0.7 and m["final_coherence"] == 0.85
    # uneven (log-spaced) checkpoints: the trapezoid uses the real step spacing
    m = run_metrics(_traj([0, 1, 2, 4, 100], [0, 1, 1, 1, 1], [0, 1, 1, 1, 1]))
    assert math.isclose(m["held_out_auc"], 1 - 0.5 / 100)
    with pytest.raises(ValueError):
        run_metrics(_traj([5, 10], [0, 0], [0, 0]))


def test_cluster_bootstrap():
    rng = np.random.default_rng()
    vals = {(b, s): float(rng.normal(b, 0.1)) for b in range(5) for s in range(3)}
    mean, lo, hi = cluster_bootstrap(vals, seed=int(rng.integers(1 << 30)))
    assert math.isclose(mean, np.mean(list(vals.values())))
    assert lo < mean < hi
    # the spread is dominated by the bases: the CI is about as wide as the bases' standard error
    base_means = [np.mean([vals[(b, s)] for s in range(3)]) for b in range(5)]
    se = np.std(base_means, ddof=1) / math.sqrt(5)
    assert 1.5 * se < hi - lo < 6 * se
    const = {(b, s): 0.3 for b in range(3) for s in range(2)}
    assert cluster_bootstrap(const) == pytest.approx((0.3, 0.3, 0.3))
    assert all(math.isnan(x) for x in cluster_bootstrap({(0, 0): None}))
    assert cluster_bootstrap({(0, 0): 0.2, (1, 0): None}) == (0.2, 0.2, 0.2)


def _cand(lr, fit, fin, coh):
    return {"lr": lr, "metrics": {"fit_step": fit, "final_in_domain": fin, "min_coherence": coh,
                                  "final_coherence": min(1.0, coh + 0.05), "held_out_at_fit": 0.1}}


def test_lr_rule_picks_the_fastest_admissible_then_the_smaller():
    cands = [_cand(1e-4, None, 0.5, 0.97), _cand(3e-4, 27, 0.99, 0.95), _cand(1e-3, 14, 0.99, 0.93),
             _cand(3e-3, 7, 1.0, 0.80), _cand(1e-2, 4, 1.0, 0.2)]
    random.shuffle(cands)
    r = choose_lr(cands)
    assert r["lr"] == 1e-3 and not r["fallback"]
    assert [c["admissible"] for c in r["candidates"]] == [False, True, True, False, False]
    tie = choose_lr([_cand(3e-4, 14, 0.99, 0.95), _cand(1e-3, 14, 0.99, 0.93)])
    assert tie["lr"] == 3e-4


def test_lr_rule_fallbacks():
    r = choose_lr([_cand(1e-4, None, 0.3, 0.96), _cand(3e-4, None, 0.6, 0.92), _cand(1e-3, 4, 1.0, 0.5)])
    assert r["fallback"] and r["lr"] == 3e-4  # coherent, highest in-domain
    r = choose_lr([_cand(1e-4, 3, 0.95, 0.5), _cand(3e-4, 2, 0.99, 0.7), {"lr": 1e-3, "metrics": None}])
    assert r["fallback"] and r["lr"] == 3e-4  # nothing coherent: the most coherent
    with pytest.raises(RuntimeError):
        choose_lr([{"lr": 1e-3, "metrics": None}])
    with pytest.raises(ValueError):
        choose_lr([])


def test_grids_are_half_decades():
    for name, g in LR_GRIDS.items():
        assert len(g) == 5 and list(g) == sorted(g)
        ratios = np.array(g[1:]) / np.array(g[:-1])
        assert np.all((ratios > 2.9) & (ratios < 3.5)), name
    with pytest.raises(ValueError, match="no lr grid"):
        grid("adagrad")
