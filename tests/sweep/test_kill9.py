"""kill -9 of `evilbench sweep run` at random points of a 12-run toy sweep, then a rerun: every run
finished and stored exactly once, the integrity check clean, and every run that was interrupted
mid-training resumed from its last saved checkpoint, not from step 0."""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from sweep_helpers import tiny_spec

from evilbench.store.check import check_store
from evilbench.store.db import EmptyStoreError, Store

ROOT = Path(__file__).resolve().parent.parent.parent


def _state(workdir: Path, store_path: Path) -> dict:
    """run_key -> the step of the newest saved training state, for unfinished runs not yet in the store."""
    try:
        stored = set(Store(store_path, readonly=True).run_keys()) if store_path.is_file() else set()
    except EmptyStoreError:
        stored = set()
    out = {}
    for d in (workdir / "runs").glob("*") if (workdir / "runs").is_dir() else []:
        rj = d / "run.json"
        if d.name in stored or not rj.is_file():
            continue
        try:
            rec = json.loads(rj.read_text())
        except json.JSONDecodeError:
            continue
        if rec.get("status") == "finished":
            continue
        for state in (d / "resume" / "state.json", d / "resume.prev" / "state.json"):  # the newest saved state
            try:
                step = json.loads(state.read_text())["step"]
            except (OSError, ValueError, KeyError):
                continue
            if step > 0:
                out[d.name] = step
            break
    return out


@pytest.mark.slow
def test_kill9_at_random_points_then_rerun(tmp_path, small_base):
    d = tiny_spec(tmp_path, optimizers=["adam", "sgd", "lion"], regularizers=["none", "fro_nuclear:1"], seeds=[0, 1],
                  lrs={"adam": [3e-3], "sgd": [0.3], "lion": [3e-4]}, executor={"kind": "local", "workers": 2})
    d["train"].update(max_steps=40, checkpoints=4)
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(d))
    store_path, workdir = Path(d["store"]), Path(d["workdir"])
    cmd = [sys.executable, "-c", "import sys; from evilbench.cli import main; sys.exit(main())",
           "sweep", "run", str(spec), "--no-progress", "--native-math"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    rng = random.Random(int(os.environ.get("KILL_SEED", "11")))
    interrupted: dict[str, set] = {}
    kills = 0
    def stored() -> int:
        if not store_path.is_file():
            return 0
        try:
            with Store(store_path, readonly=True) as st:
                return len(st.run_keys())
        except EmptyStoreError:
            return 0

    while kills < 5:
        n0 = stored()
        p = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        # a random point: while some run is training (after its first checkpoint), or just after a store write
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and p.poll() is None:
            if (kills % 2 == 0 and _state(workdir, store_path)) or (kills % 2 == 1 and stored() > n0):
                break
            time.sleep(0.05)
        time.sleep(rng.uniform(0.0, 2.0) if kills % 2 == 0 else rng.uniform(0.0, 0.3))
        if p.poll() is not None:
            break  # finished before this kill: nothing left to interrupt
        p.send_signal(signal.SIGKILL)
        p.wait()
        kills += 1
        time.sleep(0.5)  # the workers die with the runner (prctl); give the kernel a moment
        for k, step in _state(workdir, store_path).items():
            interrupted.setdefault(k, set()).add(step)
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    st = Store(store_path, readonly=True)
    keys = st.run_keys()
    assert len(keys) == 12 and set(st.statuses().values()) == {"finished"}
    chk = check_store(st)
    assert chk["ok"], chk["problems"]
    evals = st.evals_frame()
    assert (evals.groupby("run_key").size() == 5).all()  # base + 3 checkpoints + final, once each
    resumed_ok = 0
    for k, steps in interrupted.items():
        rec = json.loads((workdir / "runs" / k / "run.json").read_text())
        froms = {r["from_step"] for r in rec.get("resumes", [])}
        assert steps <= froms, (k, steps, froms)  # resumed from the saved step, never from 0 after a save
        resumed_ok += 1
    print(f"\nkill -9 x{kills}: {len(keys)} runs stored once each, {len(interrupted)} interrupted mid-training "
          f"and resumed from their last checkpoint ({resumed_ok} checked), integrity check ok")
    assert kills == 5 and interrupted, "the kills never landed inside a training run"
