"""The runner on tiny toy sweeps: run, skip finished, store content, a failing run recorded while the
sweep goes on, status and retry-failed, the CLI's exit status and failure names."""
from __future__ import annotations

import json

from sweep_helpers import tiny_spec

from evilbench.store.check import check_store
from evilbench.store.db import Store
from evilbench.sweep.runner import Runner
from evilbench.sweep.spec import parse_spec


def test_run_skip_and_store_content(tmp_path, small_base):
    spec = parse_spec(tiny_spec(tmp_path))
    r = Runner(spec, progress=False, log=lambda m: None)
    s = r.run()
    assert s["finished"] == 2 and s["this_call"]["done"] == 2 and not s["failed"]
    again = r.run()
    assert again["this_call"] == {**again["this_call"], "done": 0, "skipped": 2}
    st = Store(spec.store, readonly=True)
    assert check_store(st)["ok"]
    runs = st.runs_frame().set_index("optimizer")
    assert set(runs.status) == {"finished"} and runs.loc["adam", "lr"] == 3e-3
    traj = st.trajectory_frame()
    # base (step 0) + checkpoints (3 log-spaced, the last = final) for each run
    assert sorted(traj.groupby("run_key").size().tolist()) == [4, 4]
    assert traj["scores_held_out_misalignment"].between(0, 1).all() and traj["misaligned_rate"].notna().any()
    fin = st.samples_frame()
    assert len(fin) == 2 * 3 * 6 * 2  # runs x held-out domains x questions x samples
    assert set(fin.question_set) == {"toy"} and set(json.loads(fin.judge.iloc[0])) >= {"spec", "model"}
    # the run directory holds what the store holds
    from evilbench.sweep.bundle import bundle_from_run_dir

    key = st.run_keys()[0]
    b = bundle_from_run_dir(tmp_path / "runs" / "runs" / key)
    from evilbench.store.db import content_sha256

    assert content_sha256(b) == content_sha256(st.get_bundle(key))


def test_failing_run_recorded_and_sweep_goes_on(tmp_path, small_base, capsys):
    bad = tmp_path / "broken.jsonl"
    bad.write_text('{"messages": [{"role": "user", "content": "hi"}]}\nnot json\n')
    d = tiny_spec(tmp_path, datasets=["toyworld:code-misaligned", str(bad)], optimizers=["adam"],
                  lrs={"adam": [3e-3]})
    spec = parse_spec(d)
    r = Runner(spec, progress=False, log=lambda m: None)
    s = r.run()
    assert s["finished"] == 1 and len(s["failed"]) == 1
    st = Store(spec.store, readonly=True)
    failed = st.get_run(s["failed"][0])
    assert failed["status"] == "failed" and str(bad) in failed["error"]
    status = r.status()
    assert (len(status["done"]), len(status["failed"]), len(status["pending"])) == (1, 1, 0)
    # retry-failed: the record is deleted and the run tried again (it fails again, and is recorded again)
    s2 = r.run(retry_failed=True)
    assert s2["this_call"]["done"] == 0 and s2["this_call"]["failed"] == 1 and s2["this_call"]["skipped"] == 1
    # the CLI: exit 1, the failure named
    from evilbench.cli import main

    p = tmp_path / "spec.yaml"
    import yaml

    p.write_text(yaml.safe_dump(d))
    assert main(["sweep", "run", str(p), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert f"failed: {s['failed'][0]}" in err and "broken.jsonl" in err
    assert main(["sweep", "status", str(p)]) == 0
    assert "done 1, failed 1, running 0, pending 0" in capsys.readouterr().out


def test_tuning_rule_min_loss(tmp_path, small_base):
    d = tiny_spec(tmp_path, optimizers=["adam"], seeds=[0, 1], lrs={"rule": "min-loss", "grid": {"adam": [1e-3, 3e-3]}})
    spec = parse_spec(d)
    r = Runner(spec, progress=False, log=lambda m: None)
    plan = r.plan()
    assert len(plan.jobs) == 2 and len(plan.pending_rule) == 2
    s = r.run()
    st = Store(spec.store, readonly=True)
    runs = st.runs_frame()
    cand = runs[runs.seed == 0].set_index("lr")["final_loss"]
    assert s["lr_choices"]["adam"]["lr"] == cand.idxmin()
    assert s["finished"] == 3  # 2 candidates (one is the seed-0 grid cell) + seed 1 at the chosen lr
    assert sorted(runs[runs.seed == 1].lr) == [cand.idxmin()]


def test_rule_candidates_defer_the_sampled_evaluation_and_the_chosen_one_completes(tmp_path, small_base, capsys):
    """A tuning rule's calibration runs get only the rule's inputs (training, exact scores); the chosen
    one is completed with the sampled evaluation in the grid phase, and its stored bundle then equals
    the same cell run at that lr without a rule."""
    import yaml

    from evilbench.cli import main
    from evilbench.store.db import content_sha256

    d = tiny_spec(tmp_path / "rule", optimizers=["adam"], seeds=[0],
                  lrs={"rule": "toyworld-fit", "grid": {"adam": [1e-3, 3e-2]}})
    spec = parse_spec(d)
    s = Runner(spec, progress=False, log=lambda m: None).run()
    assert s["finished"] == 2 and not s["not_evaluated"] and s["this_call"]["evaluated"] == 1
    chosen = s["lr_choices"]["adam"]["lr"]
    st = Store(spec.store, readonly=True)
    assert check_store(st)["ok"]
    runs = st.runs_frame().set_index("lr")
    other = runs.loc[[lr for lr in (1e-3, 3e-2) if lr != chosen][0], "run_key"]
    assert st.deferred_run_keys() == {other}
    b_other = st.get_bundle(other)
    assert all(e["samples"] == [] for e in b_other["evals"] if e["step"] > 0)  # only the shared base is sampled
    assert all(e["scores"] for e in b_other["evals"])  # the rule's exact scores at every checkpoint
    fixed = parse_spec(tiny_spec(tmp_path / "fixed", optimizers=["adam"], seeds=[0], lrs={"adam": [chosen]}))
    Runner(fixed, progress=False, log=lambda m: None).run()
    key = runs.loc[chosen, "run_key"]
    with Store(fixed.store, readonly=True) as st2:
        assert st2.run_keys() == [key]
        assert content_sha256(st.get_bundle(key)) == content_sha256(st2.get_bundle(key))
    p = tmp_path / "rule.yaml"
    p.write_text(yaml.safe_dump(d))
    assert main(["sweep", "run", str(p), "--no-progress"]) == 0  # nothing left to do
    assert "2/2 runs finished (0 now, 2 already stored)" in capsys.readouterr().out
