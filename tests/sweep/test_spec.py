"""Sweep specs: validation errors name the file, line and key; grid expansion; run keys stable across
processes and key order."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import yaml
from sweep_helpers import square  # noqa: F401  (the helpers module is importable from this folder)

from evilbench.sweep.spec import SpecError, load_spec, parse_spec

GOOD = """\
name: t
models: [toyworld:base-0]
datasets: [toyworld:code-misaligned]
optimizers: [adam, sgd]
regularizers: [none, "fro_nuclear:0.5"]
batch_sizes: [16]
seeds: [0, 1]
lrs: {adam: [1e-3, 3e-3], sgd: [0.3]}
train: {max_steps: 12, lora_r: 4}
eval: {questions: toy, judge: toy, samples: 2}
"""


def _write(tmp_path, text):
    p = tmp_path / "spec.yaml"
    p.write_text(text)
    return p


@pytest.mark.parametrize("bad, where, msg", [
    (GOOD.replace("optimizers: [adam, sgd]", "optimizers: [adam, sgdd]"), ":4: optimizers[1]",
     "unknown optimiser 'sgdd'"),
    (GOOD.replace('"fro_nuclear:0.5"', '"fro_nuclear:-1"'), ":5: regularizers[1]", "finite number > 0"),
    (GOOD.replace('"fro_nuclear:0.5"', '"spiky"'), ":5: regularizers[1]", "unknown regulariser kind"),
    (GOOD.replace("train: {max_steps: 12, lora_r: 4}", "train: {max_stepz: 12}"), ":9: train.max_stepz",
     "not a training-config field"),
    (GOOD.replace("train: {max_steps: 12, lora_r: 4}", "train: {lr: 0.1}"), ":9: train.lr", "set by the sweep's axes"),
    (GOOD.replace("sgd: [0.3]", "sgd: [-0.3]"), ":8: lrs.sgd[0]", "finite number > 0"),
    (GOOD.replace(", sgd: [0.3]", ""), ":8: lrs", "no learning rates for optimiser 'sgd'"),
    (GOOD.replace("seeds: [0, 1]", "seeds: [0, 0]"), ":7: seeds", "repeats a value"),
    (GOOD + "bogus: 1\n", ":11: bogus", "unknown key"),
    (GOOD.replace("samples: 2", "samples: 0"), ":10: eval.samples", "an integer >= 1"),
    (GOOD + "executor: {kind: slurmy}\n", ":11: executor.kind", "one of local"),
    (GOOD + "executor: {kind: local, address: x}\n", ":11: executor.address", "unknown key for a local executor"),
    (GOOD + "lrz: 1\n", ":11: lrz", "unknown key"),
    (GOOD.replace("lrs: {adam: [1e-3, 3e-3], sgd: [0.3]}", "lrs: {rule: best-em}"), ":8: lrs.rule",
     "unknown tuning rule"),
    (GOOD.replace("name: t", "name: ''"), ":1: name", "required"),
    (GOOD.replace("train: {max_steps: 12, lora_r: 4}", "train: {max_steps: 0}"), ":9: train",
     "max_steps must be >= 1"),
])
def test_errors_name_line_and_key(tmp_path, bad, where, msg):
    p = _write(tmp_path, bad)
    with pytest.raises(SpecError) as e:
        load_spec(p)
    text = str(e.value)
    assert text.startswith(f"{p}{where}: "), text
    assert msg in text


def test_yaml_syntax_error_has_a_line(tmp_path):
    p = _write(tmp_path, GOOD.replace("seeds: [0, 1]", "seeds: [0, 1"))
    with pytest.raises(SpecError, match=r"spec.yaml:\d+: not valid YAML"):
        load_spec(p)


def test_cli_plan_error_is_one_line(tmp_path, capsys):
    from evilbench.cli import main

    p = _write(tmp_path, GOOD.replace("sgd]", "sgdd]"))
    assert main(["sweep", "plan", str(p)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and "optimizers[1]" in err


def test_grid_expansion_and_extra(tmp_path, sweep_cache):
    from evilbench.sweep.runner import Runner

    d = yaml.safe_load(GOOD)
    d["extra"] = [{"datasets": ["toyworld:code-aligned"], "optimizers": ["adam"], "regularizers": ["none"]}]
    r = Runner(parse_spec(d), store=str(tmp_path / "r.db"), workdir=str(tmp_path / "w"))
    plan = r.plan()
    # main: 1 model x 1 dataset x (2 adam lrs + 1 sgd lr) x 2 regs x 2 seeds = 12; extra: 2 lrs x 2 seeds = 4
    assert len(plan.jobs) == 16 and not plan.pending_rule
    assert len({j.run_key for j in plan.jobs}) == 16
    regs = {j.cell["regularizer"] for j in plan.jobs}
    assert regs == {"none", "fro_nuclear:0.5"}
    j = next(j for j in plan.jobs if j.cell["regularizer"] == "fro_nuclear:0.5")
    assert j.payload["train"]["regularizer"] == "fro_nuclear" and j.payload["train"]["reg_weight"] == 0.5


def test_toy_preset_plan(sweep_cache):
    from evilbench.sweep.runner import Runner

    spec = load_spec("toy")
    r = Runner(spec, store="/nonexistent/toy.db")
    plan = r.plan()
    assert len(plan.jobs) == 20 and all(j.calibration for j in plan.jobs)  # 4 optimisers x 5-lr grids
    assert len(plan.pending_rule) == 4 * 2 * 4 * 2 + 4 * 2  # the demo's 64 runs + 8 aligned controls
    assert {j.payload["train"]["lora_r"] for j in plan.jobs} == {8}


_KEYS = r"""
import json, sys, yaml
from evilbench.sweep.spec import parse_spec
from evilbench.sweep.runner import Runner
d = yaml.safe_load(open(sys.argv[1]))
r = Runner(parse_spec(d), store=sys.argv[2], workdir=sys.argv[3])
print(json.dumps(sorted(j.run_key for j in r.plan().jobs)))
"""


def test_run_keys_stable_across_processes_and_key_order(tmp_path, sweep_cache):
    d = yaml.safe_load(GOOD)
    shuffled = dict(reversed(list(d.items())))
    shuffled["train"] = dict(reversed(list(d["train"].items())))
    shuffled["eval"] = dict(reversed(list(d["eval"].items())))
    (tmp_path / "a.yaml").write_text(yaml.safe_dump(d, sort_keys=False))
    (tmp_path / "b.yaml").write_text(yaml.safe_dump(shuffled, sort_keys=False))
    env = {**os.environ, "PYTHONHASHSEED": "123"}
    outs = []
    for name, hashseed in (("a", "1"), ("b", "2")):
        env["PYTHONHASHSEED"] = hashseed
        res = subprocess.run([sys.executable, "-c", _KEYS, str(tmp_path / f"{name}.yaml"), str(tmp_path / "s.db"),
                              str(tmp_path / name)], env=env, capture_output=True, text=True, check=True)
        outs.append(json.loads(res.stdout))
    assert outs[0] == outs[1] and len(outs[0]) == 12
    # and a result-affecting change changes the key, an operational one does not
    from evilbench.sweep.runner import Runner

    base = sorted(j.run_key for j in Runner(parse_spec(d), store=str(tmp_path / "s.db")).plan().jobs)
    assert base == outs[0]
    d2 = {**d, "train": {**d["train"], "log_every": 3, "resume_every_s": 5.0}}
    assert sorted(j.run_key for j in Runner(parse_spec(d2), store=str(tmp_path / "s.db")).plan().jobs) == base
    d3 = {**d, "train": {**d["train"], "lora_r": 8}}
    assert set(j.run_key for j in Runner(parse_spec(d3), store=str(tmp_path / "s.db")).plan().jobs).isdisjoint(base)
    d4 = {**d, "eval": {**d["eval"], "samples": 3}}
    assert set(j.run_key for j in Runner(parse_spec(d4), store=str(tmp_path / "s.db")).plan().jobs).isdisjoint(base)
