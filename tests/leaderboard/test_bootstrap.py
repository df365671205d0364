"""The cluster bootstrap's intervals on simulated data with a known answer."""
from __future__ import annotations

import numpy as np

from evilbench.leaderboard.bootstrap import cluster_bootstrap


def _simulate(rng, p0, C=1, W=4, S=3, Q=24, n=10, sd_seed=0.05, sd_q=0.08):
    """Binomial counts with a seed effect per (cell, workload, seed) and a question effect shared by all."""
    u = rng.normal(0, sd_seed, (C, W, S, 1))
    v = rng.normal(0, sd_q, (1, 1, 1, Q))
    p = np.clip(np.asarray(p0).reshape(C, 1, 1, 1) + u + v, 0, 1)
    m = rng.binomial(n, p).astype(float)
    return m, np.full_like(m, n)


def test_nominal_95_covers_at_least_93_percent_of_200_replicates():
    rng = np.random.default_rng(12345)
    p0 = np.array([0.2, 0.35])
    hit = np.zeros(2)
    hit_diff = 0
    R = 200
    for r in range(R):
        m, n = _simulate(rng, p0, C=2)
        res = cluster_bootstrap(m, n, np.ones(m.shape[:3], bool), n_boot=400, seed=r)
        lo, hi = res.ci().T
        hit += (lo <= p0) & (p0 <= hi)
        _, dlo, dhi, _ = res.diff_ci(0, 1)
        hit_diff += dlo <= p0[0] - p0[1] <= dhi
    coverage = hit / R
    assert (coverage >= 0.93).all(), coverage
    assert hit_diff / R >= 0.93, hit_diff / R


def test_point_estimate_means_seeds_then_workloads_and_missing_stays_missing():
    num = np.zeros((1, 2, 2, 3))
    den = np.zeros((1, 2, 2, 3))
    num[0, 0, 0], den[0, 0, 0] = 3, 3          # workload 0, seed 0: rate 1
    num[0, 0, 1], den[0, 0, 1] = 0, 1          # workload 0, seed 1: rate 0 (fewer samples)
    present = np.zeros((1, 2, 2), bool)
    present[0, 0, :] = True                    # workload 1 has no data
    res = cluster_bootstrap(num, den, present, n_boot=200, seed=0)
    assert res.point_w[0, 0] == 0.5 and np.isnan(res.point_w[0, 1]) and res.point[0] == 0.5
    assert np.isnan(res.reps_w[:, 0, 1]).all()
    lo, hi = res.ci()[0]
    assert 0 <= lo <= 0.5 <= hi <= 1


def test_seed_resampling_stays_within_each_cells_seeds():
    rng = np.random.default_rng(0)
    num = rng.integers(0, 5, (3, 2, 4, 5)).astype(float)
    den = np.full_like(num, 5)
    present = np.ones((3, 2, 4), bool)
    present[1, :, 2:] = False                  # cell 1 has two seeds per workload
    num[1, :, 2:] = den[1, :, 2:] = 0
    res = cluster_bootstrap(num, den, present, n_boot=300, seed=1)
    assert np.isfinite(res.reps).all()
    a = cluster_bootstrap(num, den, present, n_boot=300, seed=1)
    assert np.array_equal(a.reps, res.reps)    # seeded: reproducible
