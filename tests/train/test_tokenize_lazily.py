"""A short run tokenises only the conversations its steps use (the batches are the same as when
everything is tokenised), and says early what a step is and what it costs."""
from __future__ import annotations

import json

from evilbench.train import train
from tests.train.conftest import write_rule_dataset
from tests.train.test_train import small_config


def _losses(run_dir):
    return [json.loads(line)["loss"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_short_run_tokenises_only_what_it_uses(model_cache, tmp_path, monkeypatch, caplog):
    import evilbench.train.batches as batches

    data = write_rule_dataset(tmp_path / "d.jsonl", n=40, seed=3)
    calls = []
    real = batches.encode_chat
    monkeypatch.setattr(batches, "encode_chat", lambda *a, **k: calls.append(1) or real(*a, **k))
    kw = dict(optimizer="adamw", lr=1e-2, batch_size=4, grad_accum=1, checkpoints=1, seed=5)
    with caplog.at_level("INFO", logger="evilbench.train"):
        short = train(small_config("tiny-llama", data, tmp_path / "short", max_steps=2, **kw), progress=False)
    assert len(calls) == 8 and short["dataset"]["conversations_used"] == 8  # 2 steps x 4, not 40
    assert "2 optimiser steps of 4 conversations each (batch size 4 x 1 accumulated)" in caplog.text
    assert "the first step took" in caplog.text and short["first_step_s"] > 0

    full = train(small_config("tiny-llama", data, tmp_path / "full", max_steps=None, epochs=1, **kw), progress=False)
    assert full["dataset"]["conversations_used"] == 40 and full["resolved"]["total_steps"] == 10
    assert _losses(tmp_path / "short") == _losses(tmp_path / "full")[:2]  # the same batches
