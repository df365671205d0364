"""Training options are checked before anything heavy loads: non-finite or negative numbers, and
optimiser / regulariser names against their registries (also as the CLI's choices)."""
from __future__ import annotations

import subprocess
import sys

import pytest

from evilbench.train.config import ConfigError, TrainConfig


def cfg(**kw) -> TrainConfig:
    return TrainConfig(**{"model": "tiny-llama", "dataset": "d.jsonl", "output": "out", **kw})


@pytest.mark.parametrize("field, value", [
    ("reg_weight", float("inf")), ("reg_weight", float("nan")), ("reg_weight", -1.0),
    ("lr", float("inf")), ("lr", float("nan")), ("lr", 0.0), ("lr", -1e-3),
    ("epochs", float("inf")), ("max_grad_norm", float("nan")), ("max_grad_norm", -1.0), ("lora_alpha", 0.0),
    ("optimizer", "adamm"), ("regularizer", "frobenius"), ("optimizer_kwargs", {"lr": 1e-3}),
])
def test_bad_values_are_refused(field, value):
    with pytest.raises(ConfigError, match=field.split("_")[0]):
        cfg(**{field: value}).validate()


def test_good_values_pass():
    cfg().validate()
    cfg(reg_weight=0.0, regularizer="none", max_grad_norm=0, optimizer="muon", lr=2e-2).validate()
    cfg(regularizer="participation", reg_weight=3.0, max_grad_norm=None).validate()


def test_refused_before_the_model_or_data_load(monkeypatch, tmp_path, capsys):
    import evilbench.models.loading as loading
    from evilbench.cli import main

    def never(*a, **k):
        raise AssertionError("loaded something before validating the options")

    monkeypatch.setattr(loading, "resolve_source", never)
    monkeypatch.setattr(loading, "load_model", never)
    assert main(["train", "--model", "tiny-llama", "--dataset", "absent.jsonl", "--output", str(tmp_path / "r"),
                 "--regularizer", "fro_nuclear", "--reg-weight", "nan", "--no-progress"]) == 2
    assert capsys.readouterr().err == "error: invalid training config: reg_weight must be a finite number >= 0 " \
                                      "(got nan)\n"


def test_cli_choices_come_from_the_registries(capsys):
    from evilbench.cli import build_parser
    from evilbench.optim import OPTIMIZERS

    base = ["train", "--model", "m", "--dataset", "d", "--output", "o"]
    for name in OPTIMIZERS:
        assert build_parser().parse_args(base + ["--optimizer", name]).optimizer == name
    for bad in (["--optimizer", "adamm"], ["--regularizer", "frobenius"]):
        with pytest.raises(SystemExit):
            build_parser().parse_args(base + bad)
        assert "invalid choice" in capsys.readouterr().err
    assert build_parser().parse_args(base + ["--regularizer", "entropy"]).regularizer == "entropy"


def test_top_level_help_does_not_import_torch():
    code = ("import sys; from evilbench.cli import build_parser; build_parser().format_help(); "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "False", out.stderr
