"""Ranking, ties, aggregation order, coverage and the side columns on stores built with write_run."""
from __future__ import annotations

import numpy as np
import pytest

from tests.leaderboard.conftest import make_bundle, write_store

MODELS = ["org/m1", "org/m2"]
DATASETS = ["insecure", "medical"]


def _grid(qs, cells, seeds=(0, 1, 2), models=MODELS, datasets=DATASETS, **kw):
    out = []
    for (opt, reg, w), extra in cells.items():
        for m in models:
            for d in datasets:
                for s in seeds:
                    out.append(make_bundle(qs, model=m, dataset=d, optimizer=opt, regularizer=reg, reg_weight=w,
                                           seed=s, **{**kw, **extra}))
    return out


def _lb(path, **kw):
    from evilbench.leaderboard.ranking import Frames, build
    from evilbench.store import Store

    with Store(path, readonly=True) as st:
        frames = Frames.from_store(st)
    return build(frames, n_boot=kw.pop("n_boot", 400), **kw)


def _row(lb, cell):
    t = lb.table
    return t[t["cell"] == cell].iloc[0]


def test_rank_and_ties(tmp_path, toy_qs):
    cells = {("adam", "none", 0.0): {"qmis": [3] * 8}, ("lion", "none", 0.0): {"qmis": [3] * 8},
             ("muon", "none", 0.0): {"qmis": [0, 1, 0, 0, 1, 0, 0, 0]}}
    db = write_store(tmp_path / "r.db", _grid(toy_qs, cells))
    lb = _lb(db)
    from evilbench.leaderboard.ranking import rank_labels

    labels = dict(zip(lb.table["cell"], rank_labels(lb.table)))
    assert labels == {"muon × none": "1", "adam × none": "=2", "lion × none": "=2"}
    assert lb.table["cell"].iloc[0] == "muon × none"
    assert _row(lb, "adam × none")["misaligned_rate"] == pytest.approx(0.5)
    assert _row(lb, "muon × none")["misaligned_rate"] == pytest.approx(2 / 48)
    # identical data: the difference is exactly zero, not significant either way
    pw = lb.pairwise
    adam_lion = pw[(pw["cell"] == "adam × none") & (pw["other"] == "lion × none")].iloc[0]
    assert adam_lion["diff"] == 0 and not adam_lion["better"]
    muon_adam = pw[(pw["cell"] == "muon × none") & (pw["other"] == "adam × none")].iloc[0]
    assert muon_adam["better"] and muon_adam["hi"] < 0 and muon_adam["n_common"] == 4
    r = _row(lb, "adam × none")
    assert r["misaligned_lo"] <= r["misaligned_rate"] <= r["misaligned_hi"]
    # by mean alignment (higher is better) the order is the same
    lb2 = _lb(db, metric="mean_aligned")
    assert dict(zip(lb2.table["cell"], rank_labels(lb2.table)))["muon × none"] == "1"
    assert _row(lb2, "adam × none")["mean_aligned"] == pytest.approx(50.0)


def test_overlapping_cis_tie_and_separated_do_not(tmp_path, toy_qs):
    cells = {("adam", "none", 0.0): {"p_mis": 0.30}, ("adamw", "none", 0.0): {"p_mis": 0.32},
             ("sgd", "none", 0.0): {"p_mis": 0.9}}
    lb = _lb(write_store(tmp_path / "r.db", _grid(toy_qs, cells, models=["org/m1"], datasets=["insecure"])))
    t = lb.table.set_index("cell")
    assert t.loc["adam × none", "rank"] == t.loc["adamw × none", "rank"] == 1
    assert t.loc["adam × none", "tie"] and t.loc["sgd × none", "rank"] == 3 and not t.loc["sgd × none", "tie"]


def test_seeds_first_then_workloads(tmp_path, toy_qs):
    qs = toy_qs
    b = [
        # workload m1 × insecure: seed 0 rate 1 (6 samples per question), seed 1 rate 0 (2 per question)
        make_bundle(qs, model="org/m1", dataset="insecure", seed=0, per_q=6, qmis=[6] * 8),
        make_bundle(qs, model="org/m1", dataset="insecure", seed=1, per_q=2, qmis=[0] * 8),
        # workload m2 × insecure: one seed, rate 0.25
        make_bundle(qs, model="org/m2", dataset="insecure", seed=0, per_q=4, qmis=[1] * 8),
    ]
    lb = _lb(write_store(tmp_path / "r.db", b))
    r = _row(lb, "adam × none")
    # seeds: (1 + 0) / 2 = 0.5 for m1; then workloads: (0.5 + 0.25) / 2 (pooled samples would give 0.5625)
    assert r["misaligned_rate"] == pytest.approx(0.375)
    assert lb.per_model.loc["adam × none", "org/m1"] == pytest.approx(0.5)
    assert lb.per_model.loc["adam × none", "org/m2"] == pytest.approx(0.25)


def test_missing_cells_are_shown_missing_not_imputed(tmp_path, toy_qs):
    cells = {("adam", "none", 0.0): {"qmis": [2] * 8}}
    bundles = _grid(toy_qs, cells)
    bundles += [make_bundle(toy_qs, model="org/m1", dataset="insecure", optimizer="muon", seed=s, qmis=[0] * 8)
                for s in range(3)]
    lb = _lb(write_store(tmp_path / "r.db", bundles))
    r = _row(lb, "muon × none")
    assert r["coverage"] == "1/4" and r["n_covered"] == 1
    assert r["missing"] == "org/m1 × medical; org/m2 × insecure; org/m2 × medical"
    assert r["misaligned_rate"] == 0.0
    bd = lb.breakdown.loc["muon × none"]
    assert np.isfinite(bd[("org/m1", "insecure", 4)]) and bd.isna().sum() == 3
    assert np.isnan(lb.per_model.loc["muon × none", "org/m2"])
    # the comparison uses only the one workload both cover
    pw = lb.pairwise
    assert pw[(pw["cell"] == "muon × none") & (pw["other"] == "adam × none")].iloc[0]["n_common"] == 1
    assert _row(lb, "adam × none")["coverage"] == "4/4" and _row(lb, "adam × none")["missing"] == ""


def test_lr_chosen_by_training_loss_never_by_em(tmp_path, toy_qs):
    b = []
    for s in range(2):
        # the lower-loss lr has the WORSE misalignment: the rule must still pick it
        b.append(make_bundle(toy_qs, lr=1e-4, seed=s, final_loss=0.5, qmis=[6] * 8))
        b.append(make_bundle(toy_qs, lr=3e-4, seed=s, final_loss=0.9, qmis=[0] * 8))
    lb = _lb(write_store(tmp_path / "r.db", b))
    r = _row(lb, "adam × none")
    assert r["misaligned_rate"] == 1.0 and r["n_runs"] == 2 and r["final_loss"] == pytest.approx(0.5)
    assert "lowest mean final training loss" in lb.header["lr_selection"]


def test_a_tuning_rules_choice_beats_its_single_seed_candidates(tmp_path, toy_qs):
    # the rule chose 3e-4 (run for every seed); its candidates 1e-4 (lower loss!) and 1e-3 ran seed 0 only
    b = [make_bundle(toy_qs, lr=3e-4, seed=s, final_loss=0.7, qmis=[1] * 8, tuning_rule="toyworld-fit")
         for s in range(3)]
    b += [make_bundle(toy_qs, lr=lr, seed=0, final_loss=loss, qmis=[5] * 8, tuning_rule="toyworld-fit")
          for lr, loss in ((1e-4, 0.4), (1e-3, 0.9))]
    lb = _lb(write_store(tmp_path / "r.db", b))
    r = _row(lb, "adam × none")
    assert r["n_runs"] == 3 and r["misaligned_rate"] == pytest.approx(1 / 6)
    assert lb.header["tuning_rule"] == ["toyworld-fit"]


def test_side_columns_header_and_origin(tmp_path, toy_qs):
    qs = toy_qs
    b = [make_bundle(qs, seed=s, final_loss=0.8, fro_nuclear=0.30, qmis=[2] * 8) for s in range(2)]
    b += [make_bundle(qs, seed=s, regularizer="fro_nuclear", reg_weight=0.1, final_loss=0.85, fro_nuclear=0.40,
                      qmis=[1] * 8) for s in range(2)]
    db = write_store(tmp_path / "r.db", b)
    sub = make_bundle(qs, model="org/m1", optimizer="lion", seed=0, qmis=[4] * 8)
    write_store(db, [sub], origin="submitted")
    lb = _lb(db)
    none, reg, lion = _row(lb, "adam × none"), _row(lb, "adam × fro_nuclear (0.1)"), _row(lb, "lion × none")
    assert none["loss_cost"] == 0.0 and reg["loss_cost"] == pytest.approx(0.05)
    assert lion["loss_cost"] == 0.0 and lion["n_runs"] == 1
    assert none["fro_nuclear"] == pytest.approx(0.305) and reg["fro_nuclear"] == pytest.approx(0.405)
    assert np.isfinite(none["aligned_at_matched_loss"]) and np.isfinite(reg["aligned_at_matched_loss"])
    assert lion["source"] == "submitted" and none["source"] == "reproduced"
    h = lb.header
    assert h["convention"] == "paper" and h["judge"]["spec"] == "toy" and h["judge"]["snapshot"] == "v1"
    assert h["question_set"] == {"name": "toy", "sha256": qs.sha256}
    assert h["tuning_rule"] == ["fixed-lr"] and h["origins"] == {"reproduced": 4, "submitted": 1}
    assert "re-scored under paper" in h["matched_loss"]


def test_matched_loss_interpolates_at_the_common_loss(toy_qs):
    import pandas as pd

    from evilbench.leaderboard.ranking import _matched_loss

    runs = pd.DataFrame({"run_key": ["a", "b"], "model": "m", "dataset": "d", "batch_size": 4})
    traj = pd.DataFrame({"run_key": ["a", "a", "a", "b", "b"], "step": [1, 2, 3, 1, 2],
                         "loss": [2.0, 1.0, 0.5, 2.0, 1.0], "mean_aligned": [90.0, 70.0, 40.0, 80.0, 60.0]})
    ml = _matched_loss(traj, runs, "mean_aligned")
    # every run reaches loss 1.0 (b's lowest): a is read at its step 2, b at its step 2
    assert ml["a"] == pytest.approx(70.0) and ml["b"] == pytest.approx(60.0)
    traj.loc[4, "loss"] = 0.75  # b's lowest is now 0.75: a lies between 1.0 (70) and 0.5 (40) in log loss
    ml = _matched_loss(traj, runs, "mean_aligned")
    f = (np.log(1.0) - np.log(0.75)) / (np.log(1.0) - np.log(0.5))
    assert ml["a"] == pytest.approx(70 + f * (40 - 70)) and ml["b"] == pytest.approx(60.0)


def test_picks_one_judge_and_names_the_others(tmp_path, toy_qs):
    b = [make_bundle(toy_qs, seed=s, qmis=[1] * 8) for s in range(3)]
    b += [make_bundle(toy_qs, seed=0, judge="openai", optimizer="muon")]
    db = write_store(tmp_path / "r.db", b)
    lb = _lb(db)
    assert lb.header["judge"]["spec"] == "toy" and list(lb.table["cell"]) == ["adam × none"]
    assert lb.header["not_shown"] and "gpt-4o" in lb.header["not_shown"][0]
    lb2 = _lb(db, judge="gpt-4o-2024-08-06")
    assert list(lb2.table["cell"]) == ["muon × none"] and lb2.header["judge"]["readout"] == "single-token"


def test_unknown_convention_and_metric(tmp_path, toy_qs):
    from evilbench.errors import UserError
    from evilbench.registry import UnknownNameError

    db = write_store(tmp_path / "r.db", [make_bundle(toy_qs)])
    with pytest.raises(UnknownNameError):
        _lb(db, convention="nope")
    with pytest.raises(UserError):
        _lb(db, metric="nope")


def test_control_datasets_stay_off_the_ranking(tmp_path, toy_qs):
    b = [make_bundle(toy_qs, dataset="toyworld:code-misaligned", seed=s, qmis=[3] * 8) for s in range(2)]
    b += [make_bundle(toy_qs, dataset="toyworld:code-aligned", seed=s, qmis=[0] * 8) for s in range(2)]
    b += [make_bundle(toy_qs, dataset="secure", seed=0, qmis=[0] * 8)]  # the registry's control of insecure
    db = write_store(tmp_path / "r.db", b)
    lb = _lb(db)
    assert _row(lb, "adam × none")["misaligned_rate"] == 0.5 and lb.header["datasets"] == ["toyworld:code-misaligned"]
    assert lb.header["controls"] == {"datasets": ["secure", "toyworld:code-aligned"], "included": False}
    lb2 = _lb(db, include_controls=True)
    assert _row(lb2, "adam × none")["misaligned_rate"] == pytest.approx(0.5 / 3)


def test_runs_without_included_samples_are_not_called_missing(tmp_path, toy_qs):
    b = [make_bundle(toy_qs, seed=0, qmis=[1] * 8)]
    b += [make_bundle(toy_qs, optimizer="sgd", seed=0, p_mis=0.0, p_incoh=1.0)]  # every answer incoherent
    lb = _lb(write_store(tmp_path / "r.db", b))
    r = _row(lb, "sgd × none")
    assert np.isnan(r["rank"]) and np.isnan(r["misaligned_rate"]) and r["n_included"] == 0
    assert r["missing"] == "" and r["none_included"] == "org/m1 × insecure" and r["coverage"] == "0/1"
    assert bool(lb.ran.loc["sgd × none"].all()) and lb.breakdown.loc["sgd × none"].isna().all()
    assert lb.table["cell"].iloc[-1] == "sgd × none"
