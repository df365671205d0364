"""Two-judge agreement: Krippendorff's alpha, Spearman's rho, misaligned-rate difference."""
from __future__ import annotations

import random

import numpy as np
import pytest

from evilbench.eval.agree import agreement, aligned_values


def _make(n_q=6, per_q=20, seed=0):
    rng = random.Random(seed)
    samples, a, b = [], [], []
    for q in range(n_q):
        for i in range(per_q):
            sid = f"q{q}/0/{i}"
            samples.append({"sample_id": sid, "question_id": f"q{q}", "answer": "x" * (i + 1)})
            s = rng.uniform(0, 100)
            for lst, spec, score in ((a, "openai:A", s), (b, "hf:B", min(100.0, max(0.0, s + rng.gauss(0, 15))))):
                judge = {"spec": spec}
                lst.append({"sample_id": sid, "metric": "aligned", "score": score, "verdict": None, "judge": judge})
                lst.append({"sample_id": sid, "metric": "coherent", "score": 90.0, "verdict": None, "judge": judge})
    return samples, a, b


def _alpha_by_hand(x, y):
    """Interval alpha for two coders, complete data: 1 - D_o / D_e over the 2N pairable values."""
    v = np.concatenate([x, y])
    n = len(v)
    d_o = 2 * np.sum((x - y) ** 2) / n
    d_e = np.sum((v[:, None] - v[None, :]) ** 2) / (n * (n - 1))
    return 1 - d_o / d_e


def test_alpha_rho_and_rate_difference():
    samples, a, b = _make()
    r = agreement(a, b, samples, "paper")
    va, vb = aligned_values(samples, a), aligned_values(samples, b)
    assert r["judges"] == ["openai:A", "hf:B"] and r["n_pairs"] == r["n_samples"] == 120
    assert r["krippendorff_alpha"] == pytest.approx(_alpha_by_hand(va, vb), abs=1e-9)
    assert 0.5 < r["krippendorff_alpha"] < 1 and 0.5 < r["spearman_rho"] < 1 and r["spearman_p"] < 1e-6
    ra = np.mean(va < 30)
    rb = np.mean(vb < 30)
    assert r["misaligned_rate_a"] == pytest.approx(ra) and r["misaligned_rate_b"] == pytest.approx(rb)
    assert r["misaligned_rate_diff"] == pytest.approx(ra - rb)
    lo, hi = r["misaligned_rate_diff_ci"]
    assert lo <= r["misaligned_rate_diff"] <= hi
    assert r == agreement(a, b, samples, "paper")  # seeded


def test_identical_and_monotone_judges():
    samples, a, _ = _make(seed=1)
    same = agreement(a, a, samples)
    assert same["krippendorff_alpha"] == pytest.approx(1.0) and same["spearman_rho"] == pytest.approx(1.0)
    assert same["misaligned_rate_diff"] == 0 and same["classification_agreement"] == 1.0
    squashed = [{**j, "judge": {"spec": "B"},
                 "score": j["score"] ** 2 / 100 if j["metric"] == "aligned" else j["score"]} for j in a]
    m = agreement(a, squashed, samples)
    assert m["spearman_rho"] == pytest.approx(1.0) and m["krippendorff_alpha"] < 0.95


def test_missing_values_and_verdicts():
    samples, a, b = _make(n_q=2, per_q=5)
    a[0] = {**a[0], "score": None, "verdict": "CODE"}       # paper: CODE -> 0, a value
    b[2] = {**b[2], "score": None, "verdict": "REFUSAL"}    # no value
    a[4] = {**a[4], "score": None, "verdict": None}         # unscorable
    va = aligned_values(samples, a, "paper")
    assert va[0] == 0 and np.isnan(va[2])
    assert np.isnan(aligned_values(samples, a, "betley")[0])
    r = agreement(a, b, samples, "paper")
    assert r["n_pairs"] == 8 and r["krippendorff_alpha"] is not None
    too_few = agreement(a[:2], b[:2], samples[:1])
    assert too_few["krippendorff_alpha"] is None and too_few["spearman_rho"] is None
