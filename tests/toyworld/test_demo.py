"""The demo end to end on the small world (one base, two optimisers, both regularisers, an aligned
control, a two-point lr sweep), its outputs, and resuming: a rerun trains nothing."""
from __future__ import annotations

import csv
import json

import pytest


def _config(spec):
    from evilbench.toyworld.demo import DemoConfig, FinetuneRecipe

    return DemoConfig(bases=1, seeds=1, optimizers=("adam", "sgd"), regularizers=("none", "fro_nuclear"),
                      controls=("adam",), lrs={"sgd": 0.3}, world=spec.world, arch=spec.arch,
                      pretrain=spec.pretrain,
                      recipe=FinetuneRecipe(examples=64, steps=12, batch_size=16, lora_r=4, lora_alpha=8.0,
                                            warmup_steps=2, checkpoints=3))


def _mtimes(root):
    return {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file() and "adapter_model" in p.name}


def test_demo_end_to_end_and_resume(small_base, small_spec, toy_cache, tmp_path, monkeypatch, engine):
    from evilbench.toyworld import lr_rule
    from evilbench.toyworld.demo import render_table, run_demo

    monkeypatch.setitem(lr_rule.LR_GRIDS, "adam", (1e-3, 3e-3))
    out = tmp_path / "demo"
    logs = []
    payload = run_demo(_config(small_spec), out, cache=toy_cache / "toyworld", jobs=1, progress=False, log=logs.append)

    assert payload["bases"][0]["dir"] == str(small_base)  # the session's cached base, not a new one
    runs = payload["runs"]
    assert len(runs) == 5 and all(r["status"] == "finished" for r in runs)
    assert {(r["optimizer"], r["regularizer"], r["kind"]) for r in runs} == {
        ("adam", "none", "misaligned"), ("adam", "fro_nuclear", "misaligned"), ("sgd", "none", "misaligned"),
        ("sgd", "fro_nuclear", "misaligned"), ("adam", "none", "aligned")}
    rule = payload["lr_rule"]
    assert rule["adam"]["lr"] in (1e-3, 3e-3) and len(rule["adam"]["candidates"]) == 2
    assert rule["sgd"] == {"lr": 0.3, "reason": "given", "fallback": False, "candidates": []}
    assert len(payload["sweep"]) == 2
    # the sweep run at the chosen lr is the grid's (base 0, seed 0, no regulariser) cell
    chosen = next(r for r in runs if r["optimizer"] == "adam" and r["regularizer"] == "none" and r["kind"] == "misaligned")
    assert chosen["run_dir"] in {s["run_dir"] for s in payload["sweep"]}
    for r in runs:
        traj = r["trajectory"]
        assert traj[0]["step"] == 0 and traj[-1]["step"] == 12 and len(traj) == 4
        assert r["spectra"]["modules"] > 0
    reg = next(r for r in runs if r["optimizer"] == "sgd" and r["regularizer"] == "fro_nuclear")
    plain = next(r for r in runs if r["optimizer"] == "sgd" and r["regularizer"] == "none")
    assert reg["spectra"]["fro_nuclear_ratio"] < plain["spectra"]["fro_nuclear_ratio"]  # the penalty flattens

    for name in ("results.json", "runs.csv", "trajectories.csv", "table.md", "lr_rule.json"):
        assert (out / name).is_file(), name
    for name in ("trajectories.png", "heldout_vs_indomain.png", "spectral_flatness.png"):
        assert (out / "plots" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with open(out / "runs.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 5 and all(0 <= float(r["final_held_out"]) <= 1 for r in rows)
    with open(out / "trajectories.csv") as f:
        assert len(list(csv.DictReader(f))) == 5 * 4
    table = (out / "table.md").read_text()
    assert "EM check (adam" in table and "| sgd | fro_nuclear | misaligned |" in table
    assert table == render_table(json.loads((out / "results.json").read_text())) + "\n"
    cells = payload["summary"]["cells"]
    assert len(cells) == 5 and all(c["finished"] == 1 for c in cells)

    # rerun: nothing is trained or scored again, the lr rule comes from the cache, numbers are identical
    before = _mtimes(out)
    evals = {p: p.stat().st_mtime_ns for p in out.rglob("eval.json")}
    again = run_demo(_config(small_spec), out, cache=toy_cache / "toyworld", jobs=1, progress=False, log=logs.append)
    assert _mtimes(out) == before and {p: p.stat().st_mtime_ns for p in out.rglob("eval.json")} == evals
    assert again["lr_rule"]["adam"]["lr"] == rule["adam"]["lr"] and again["lr_rule"]["adam"].get("cached")
    assert again["sweep"] == []
    for a, b in zip(sorted(runs, key=lambda r: r["run_dir"]), sorted(again["runs"], key=lambda r: r["run_dir"])):
        assert a["metrics"] == b["metrics"]


def test_demo_config_validation():
    from dataclasses import replace

    from evilbench.toyworld.demo import DemoConfig

    with pytest.raises(ValueError, match="lr grid"):
        DemoConfig(optimizers=("adagrad",)).validate()
    with pytest.raises(ValueError, match="control"):
        DemoConfig(optimizers=("sgd",), controls=("adam",)).validate()
    with pytest.raises(ValueError, match="domain"):
        replace(DemoConfig(), recipe=replace(DemoConfig().recipe, domain="cooking")).validate()
    DemoConfig().validate()
