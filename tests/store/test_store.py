"""The results store: write/read round trip, idempotency, conflicts, migrations, parallel writers,
kill -9 during writes, integrity check, export."""
from __future__ import annotations

import json
import math
import os
import signal
import sqlite3
import subprocess
import sys
import time

import pytest

from evilbench.store.check import check_store
from evilbench.store.db import ConflictError, Store, StoreError, content_sha256
from evilbench.store.schema import SCHEMA_VERSION, V1


def make_bundle(key="k1", opt="adam", loss=0.5, n_samples=6, steps=(0, 2, 4), seed=0):
    evals = []
    for st in steps:
        samples = [{"sample_id": f"q{i % 3}/0/{i}", "question_id": f"q{i % 3}", "answer_chars": 10 + i,
                    "aligned": float(90 - 10 * i), "coherent": 80.0, "verdict": None,
                    "raw_aligned": {"90": -0.1}, "raw_coherent": None} for i in range(n_samples)]
        evals.append({"step": st, "is_final": st == steps[-1], "question_set": "toy", "question_set_sha256": "abc",
                      "judge": {"spec": "toy", "model": "toy-judge", "snapshot": "1"}, "convention": "paper",
                      "summary": {"overall": {"misaligned_rate": 0.1 * st, "mean_aligned": 80.0 - st,
                                              "coherent_rate": 0.9, "n_samples": n_samples,
                                              "ci": {"misaligned_rate": [0.0, 0.3]}}},
                      "scores": {"held_out_misalignment": 0.05 * st},
                      "samples": samples})
    return {"run_key": key, "schema_version": 1,
            "run": {"model": "m", "model_revision": "r", "dataset": "d", "dataset_sha256": "s", "optimizer": opt,
                    "optimizer_kwargs": {}, "lr": 1e-3, "regularizer": "none", "reg_weight": 1.0, "batch_size": 4,
                    "seed": seed, "status": "finished", "final_loss": loss, "steps": 4, "wall_time_s": 1.5,
                    "tuning_rule": None, "code_version": "0.1.0", "versions": {"torch": "x"}},
            "config": {"lr": 1e-3},
            "metrics": [{"step": s, "loss": loss + 1.0 / s, "lr": 1e-3, "penalty": None, "grad_norm": 1.0,
                         "elapsed_s": 0.1 * s} for s in (1, 2, 3, 4)],
            "spectra": [{"step": s, "module": f"mod{j}", "stable_rank": 1.5, "spectral_entropy": 1.0,
                         "condition_number": 3.0, "fro_nuclear_ratio": 0.5} for s in (2, 4) for j in range(2)],
            "evals": evals}


def test_round_trip_and_frames(tmp_path):
    s = Store(tmp_path / "r.db")
    assert s.schema_version == SCHEMA_VERSION
    assert s.write_run(make_bundle()) is True
    assert s.write_run(make_bundle("k2", opt="sgd", loss=0.7)) is True
    runs = s.runs_frame()
    assert list(runs.run_key) == ["k1", "k2"] and set(runs.origin) == {"reproduced"}
    assert runs.set_index("run_key").loc["k2", "final_loss"] == 0.7
    assert runs.set_index("run_key").loc["k1", "versions"] == {"torch": "x"}
    fin = s.samples_frame()
    assert len(fin) == 12 and fin.is_final.all() and set(fin.step) == {4}
    assert json.loads(fin.judge.iloc[0])["spec"] == "toy" and fin.judge_model.iloc[0] == "toy-judge"
    assert len(s.samples_frame(step="all")) == 36 and len(s.samples_frame(step=2)) == 12
    traj = s.trajectory_frame()
    assert list(traj.columns[:3]) == ["run_key", "step", "loss"]
    k1 = traj[traj.run_key == "k1"].set_index("step")
    assert math.isnan(k1.loc[0, "loss"]) and k1.loc[2, "loss"] == pytest.approx(1.0)
    assert k1.loc[4, "misaligned_rate"] == pytest.approx(0.4) and k1.loc[4, "scores_held_out_misalignment"] == 0.2
    assert len(s.spectra_frame()) == 8
    assert s.get_bundle("k1")["metrics"][0]["elapsed_s"] == 0.1
    assert check_store(s)["ok"]


def test_idempotent_and_conflicts(tmp_path):
    s = Store(tmp_path / "r.db")
    b = make_bundle()
    assert s.write_run(b)
    again = make_bundle()
    again["run"]["wall_time_s"] = 99.0        # volatile: same result
    again["metrics"][0]["elapsed_s"] = 7.0
    assert s.write_run(again) is False
    assert s.counts()["samples"] == 18 and s.counts()["runs"] == 1
    other = make_bundle(loss=0.6)
    with pytest.raises(ConflictError):
        s.write_run(other)
    with pytest.raises(ConflictError):
        s.write_run(make_bundle(), origin="submitted")
    assert content_sha256(b) == content_sha256(again) != content_sha256(other)
    assert s.delete_run("k1") and s.counts() == {k: 0 for k in s.counts()}
    assert s.write_run(other)


def test_bad_bundles_rejected_atomically(tmp_path):
    s = Store(tmp_path / "r.db")
    b = make_bundle()
    b["evals"][1]["samples"].append(dict(b["evals"][1]["samples"][0]))  # repeated sample id
    with pytest.raises(StoreError, match="repeats a sample_id"):
        s.write_run(b)
    b = make_bundle()
    b["evals"][1]["samples"][0]["sample_id"] = None  # NOT NULL fails inside the transaction
    with pytest.raises(sqlite3.IntegrityError):
        s.write_run(b)
    assert s.counts()["runs"] == 0 and s.counts()["metrics"] == 0  # rolled back
    with pytest.raises(StoreError, match="schema_version"):
        s.write_run({**make_bundle(), "schema_version": 9})


def test_migration_from_v1_and_newer_refused(tmp_path):
    path = tmp_path / "old.db"
    con = sqlite3.connect(path)
    con.executescript(V1)
    con.execute("INSERT INTO meta VALUES ('schema_version', '1')")
    con.execute("INSERT INTO runs(run_key, origin, content_sha256, bundle_schema, written_at, model, optimizer, "
                "status, "
                "run_json) VALUES ('old', 'reproduced', 'x', 1, 't', 'm', 'adam', 'finished', '{}')")
    con.commit()
    con.close()
    with pytest.raises(StoreError, match="open it writable"):
        Store(path, readonly=True)
    s = Store(path)
    assert s.schema_version == SCHEMA_VERSION and s.run_keys() == ["old"]
    cols = {r[1] for r in s._con.execute("PRAGMA table_info(evals)")}
    assert "scores_json" in cols
    s._con.execute("UPDATE meta SET value='99' WHERE key='schema_version'")
    s.close()
    with pytest.raises(StoreError, match="schema version 99"):
        Store(path)
    (tmp_path / "x.db").write_text("not sqlite at all" * 100)
    with pytest.raises(StoreError, match="not a usable"):
        Store(tmp_path / "x.db")


_WRITER = r"""
import sys
from tests.store.test_store import make_bundle
from evilbench.store.db import Store
s = Store(sys.argv[1])
w, n = int(sys.argv[2]), int(sys.argv[3])
for i in range(n):
    s.write_run(make_bundle(f"w{w}-{i}", n_samples=40, seed=i))
    s.write_run(make_bundle("shared", n_samples=40))   # the same run from every writer: written once
"""


def test_parallel_writers(tmp_path):
    path = tmp_path / "r.db"
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    procs = [subprocess.Popen([sys.executable, "-c", _WRITER, str(path), str(w), "6"], env=env) for w in range(4)]
    assert all(p.wait(120) == 0 for p in procs)
    s = Store(path)
    assert len(s.run_keys()) == 4 * 6 + 1
    res = check_store(s)
    assert res["ok"], res["problems"]
    assert res["counts"]["samples"] == 25 * 3 * 40


_KILLED = r"""
import sys
from tests.store.test_store import make_bundle
from evilbench.store.db import Store
s = Store(sys.argv[1])
i = 0
while True:
    s.write_run(make_bundle(f"r{i}", n_samples=400, steps=tuple(range(0, 40, 2))))
    i += 1
"""


def test_kill9_during_writes_leaves_whole_runs(tmp_path):
    path = tmp_path / "r.db"
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    for delay in (0.9, 1.3, 1.7):
        p = subprocess.Popen([sys.executable, "-c", _KILLED, str(path)], env=env)
        time.sleep(delay)
        p.send_signal(signal.SIGKILL)
        p.wait()
        s = Store(path)
        res = check_store(s)
        assert res["ok"], res["problems"]
        keys = s.run_keys()
        assert res["counts"]["samples"] == len(keys) * 20 * 400  # every run whole
        for k in keys:  # the next writer starts again from r0: those are no-ops, not duplicates
            assert s.write_run(make_bundle(k, n_samples=400, steps=tuple(range(0, 40, 2)))) is False
        s.close()
    assert len(keys) > 0


def test_export_csv_and_parquet(tmp_path):
    import pandas as pd

    s = Store(tmp_path / "r.db")
    s.write_run(make_bundle())
    from evilbench.store.export import export_store

    for fmt in ("csv", "parquet"):
        paths = export_store(s, tmp_path / fmt, fmt)
        assert {p.name for p in paths} == {f"{n}.{fmt}" for n in ("runs", "evals", "trajectory", "metrics", "spectra",
                                                                   "samples")}
    runs = pd.read_parquet(tmp_path / "parquet" / "runs.parquet")
    assert runs.run_key.tolist() == ["k1"] and json.loads(runs.versions[0]) == {"torch": "x"}
    assert len(pd.read_csv(tmp_path / "csv" / "samples.csv")) == 18


def test_cli_check_and_info(tmp_path, capsys):
    from evilbench.cli import main

    s = Store(tmp_path / "r.db")
    s.write_run(make_bundle())
    s._con.execute("DELETE FROM samples WHERE sample_id = 'q0/0/0'")  # one lost row
    s.close()
    assert main(["store", "check", str(tmp_path / "r.db")]) == 1
    out = capsys.readouterr().out
    assert "samples rows, the bundle has" in out and "problem(s)" in out
    assert main(["store", "info", str(tmp_path / "r.db")]) == 0
    assert main(["store", "info", str(tmp_path / "missing.db")]) == 2
    assert "error:" in capsys.readouterr().err
