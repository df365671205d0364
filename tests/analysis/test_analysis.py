"""The analysis on synthetic stores with known answers: R² and optimiser-stratified adjusted R² against
a direct least-squares computation, the toy world's bootstrap reproduced exactly, matched-loss
interpolation, first-fit point and AUC, the regulariser effect, the CSV / markdown / PNG outputs."""
from __future__ import annotations

import math

import numpy as np
import pytest

from evilbench.analysis.core import Options, run_metrics
from evilbench.analysis.report import analyze
from evilbench.analysis.stats import value_at_loss
from evilbench.store.db import Store

OPTS = {"sgd": 0.0, "adam": 6.0, "lion": -9.0, "muon": 15.0}   # stratum offsets of alignment


def _bundle(key, model, opt, reg, seed, final_loss, aligned, traj):
    evals = []
    for step, _loss, mis, ind in traj:
        evals.append({"step": step, "is_final": step == traj[-1][0], "question_set": "qs", "question_set_sha256": "h",
                      "judge": {"spec": "j", "model": "jm"}, "convention": "paper",
                      "summary": {"overall": {"misaligned_rate": mis, "mean_aligned": aligned if step == traj[-1][0]
                                              else 50.0, "coherent_rate": 0.9}},
                      "scores": {"in_domain_misalignment": ind, "held_out_misalignment": mis,
                                 "held_out_coherence": 0.95},
                      "samples": []})
    return {"run_key": key, "schema_version": 1,
            "run": {"model": model, "model_revision": "r", "dataset": "d", "dataset_sha256": "s", "optimizer": opt,
                    "optimizer_kwargs": {}, "lr": 1e-3, "regularizer": reg,
                    "reg_weight": 1.0 if reg != "none" else None,
                    "batch_size": 4, "seed": seed, "status": "finished", "final_loss": final_loss, "steps": traj[-1][0],
                    "wall_time_s": 1.0, "tuning_rule": None, "code_version": "x", "versions": {}},
            "config": {"lora_r": 8},
            "metrics": [{"step": s, "loss": x, "lr": 1e-3, "penalty": None, "grad_norm": 1.0}
                        for s, x, _, _ in traj if s],
            "spectra": [{"step": traj[-1][0], "module": "m", "stable_rank": 2.0, "spectral_entropy": 1.0,
                         "condition_number": 3.0, "fro_nuclear_ratio": 0.5 if reg == "none" else 0.36}],
            "evals": evals}


@pytest.fixture
def synthetic(tmp_path):
    rng = np.random.default_rng(3)
    s = Store(tmp_path / "s.db")
    rows = []
    i = 0
    for model in ("m0", "m1", "m2"):
        for opt, off in OPTS.items():
            for reg in ("none", "fro_nuclear"):
                for seed in (0, 1):
                    loss = float(np.exp(rng.uniform(-1.5, 0.5)))
                    aligned = (70.0 - 12.0 * math.log(loss) + off + float(rng.normal(0, 2.0))
                               + (3.0 if reg != "none" else 0))
                    traj = [(0, None, 0.05, 0.05), (1, 2.0, 0.1, 0.3), (4, 1.2, 0.3, 0.95), (10, loss, 0.5, 1.0)]
                    s.write_run(_bundle(f"r{i}", model, opt, reg, seed, loss, aligned, traj))
                    rows.append((opt, reg, model, seed, loss, aligned))
                    i += 1
    return s, rows


def _r2(y, X):
    beta, *_ = np.linalg.lstsq(X, y, rcond=None)
    resid = y - X @ beta
    r2 = 1 - resid @ resid / ((y - y.mean()) @ (y - y.mean()))
    n, k = X.shape
    return r2, 1 - (1 - r2) * (n - 1) / (n - k)


def test_regressions_match_least_squares(synthetic, tmp_path):
    s, rows = synthetic
    res = analyze(s, tmp_path / "out", Options(), plots=False)
    y = np.array([r[5] for r in rows])
    x = np.log([r[4] for r in rows])
    r2, _ = _r2(y, np.column_stack([np.ones_like(x), x]))
    dummies = [np.array([r[0] == o for r in rows], float) for o in sorted(OPTS)[1:]]
    _, adj = _r2(y, np.column_stack([np.ones_like(x), x, *dummies]))
    reg = next(r for r in res["regressions"] if r["dataset"] == "all")
    assert reg["n"] == len(rows) == 48
    assert reg["r2_log_loss"] == pytest.approx(r2, abs=1e-9)
    assert reg["adj_r2_optimizer_stratified"] == pytest.approx(adj, abs=1e-9)
    assert reg["adj_r2_optimizer_stratified"] > 0.9 > reg["r2_log_loss"]  # the strata explain most of the rest
    for name in ("table.md", "runs.csv", "cells.csv", "regressions.csv", "matched_loss.csv", "regularizer_effect.csv",
                 "spectra.csv", "trajectories.csv", "analysis.json"):
        assert (tmp_path / "out" / name).is_file(), name


def test_regularizer_effect_and_cells(synthetic, tmp_path):
    s, rows = synthetic
    res = analyze(s, tmp_path / "out", Options(), plots=False)
    eff = {(r["optimizer"], r["regularizer"]): r for r in res["regularizer_effect"]}
    assert set(eff) == {(o, "fro_nuclear") for o in OPTS}
    for (opt, _), r in eff.items():
        diffs = [a[5] - b[5] for a in rows for b in rows if a[0] == b[0] == opt and a[1] != "none" and b[1] == "none"
                 and a[2] == b[2] and a[3] == b[3]]
        d = r["delta_final_mean_aligned"]
        assert r["pairs"] == 6 and d["mean"] == pytest.approx(np.mean(diffs)) and d["lo"] <= d["mean"] <= d["hi"]
    cell = next(c for c in res["cells"] if c["optimizer"] == "adam" and c["regularizer"] == "none")
    assert cell["finished"] == 6 and cell["spectra_fro_nuclear_ratio"]["mean"] == 0.5
    assert cell["fit_step"]["mean"] == 4  # in-domain first >= 0.9 at step 4
    assert "| adam | none | d |" in res["table"]


def test_run_metrics_auc_fit_and_matched_loss():
    rows = [{"step": 0, "loss": None, "m": 0.0, "fitm": 0.0}, {"step": 5, "loss": 2.0, "m": 0.5, "fitm": 0.5},
            {"step": 10, "loss": 1.0, "m": 1.0, "fitm": 0.95, "is_final": True}]
    out = run_metrics(rows, ["m"], "fitm", 0.9, 0.05, 1.0)
    assert out["auc_m"] == pytest.approx(0.5 * (0 + 0.5) / 2 + 0.5 * (0.5 + 1.0) / 2)
    assert out["fit_step"] == 10 and out["at_fit_m"] == 1.0 and out["base_m"] == 0.0 and out["peak_m"] == 1.0
    loss_fit = run_metrics(rows, ["m"], None, 0.9, 0.05, 1.95)
    assert loss_fit["fit_step"] == 5  # loss 2.0 <= 1.95 * 1.05
    assert value_at_loss([2.0, 1.0], [0.5, 1.0], 1.5) == pytest.approx(0.75)
    assert value_at_loss([2.0, 1.0], [0.5, 1.0], 0.5) is None
    assert value_at_loss([1.0, 0.5], [0.2, 0.4], 3.0) == 0.2


def test_plots_are_written(synthetic, tmp_path):
    s, _ = synthetic
    res = analyze(s, tmp_path / "out", Options(n_boot=200))
    names = {p.rsplit("/", 1)[-1] for p in res["plots"]}
    assert {"trajectories.png", "heldout_vs_indomain.png", "loss_vs_em.png", "spectral_flatness.png",
            "alignment_vs_loss.png"} <= names
    for p in res["plots"]:
        assert open(p, "rb").read(8) == b"\x89PNG\r\n\x1a\n"


def test_cli(synthetic, tmp_path, capsys):
    from evilbench.cli import main

    s, _ = synthetic
    assert main(["analyze", str(s.path), "--out", str(tmp_path / "cli"), "--no-plots", "--n-boot", "200"]) == 0
    assert "optimiser-stratified adj. R²" in capsys.readouterr().out
    assert main(["analyze", str(tmp_path / "nope.db"), "--out", str(tmp_path / "x")]) == 2
