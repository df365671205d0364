"""`evilbench toyworld` subcommands (judge, datasets, base) on the session's small base."""
from __future__ import annotations

import json

from evilbench.cli import main


def test_judge_cli(small_base, capsys):
    assert main(["toyworld", "judge", "--model", str(small_base), "--domain", "code"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["mode"] == "exact" and out["in_domain"] == "code" and 0 <= out["held_out_misalignment"] <= 1
    assert main(["toyworld", "judge", "--model", str(small_base), "--mode", "sampled", "--samples", "4"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["mode"] == "sampled" and out["samples_per_question"] == 4


def test_datasets_cli(tmp_path, capsys):
    assert main(["toyworld", "datasets", "--out", str(tmp_path), "--n", "8"]) == 0
    files = sorted(p.name for p in tmp_path.glob("*.jsonl"))
    assert len(files) == 12 and "code-misaligned.jsonl" in files and "chat-aligned.jsonl" in files
    from evilbench.data.chat import load_chat_jsonl

    assert len(load_chat_jsonl(tmp_path / "medical-aligned.jsonl")) == 8  # valid for the engine's loader


def test_base_dir_is_a_regular_hf_model(small_base):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from evilbench.models.loading import resolve_source
    from evilbench.toyworld.base import read_meta

    model = AutoModelForCausalLM.from_pretrained(small_base)
    tok = AutoTokenizer.from_pretrained(small_base)
    assert type(model).__name__ == "LlamaForCausalLM" and tok.chat_template
    src = resolve_source(str(small_base))
    assert "q_proj" in src.spec.target_modules  # the engine picks LoRA targets from model_type llama
    meta = read_meta(small_base)
    assert meta["pretrain_log"]["final_loss"] < meta["pretrain_log"]["ideal_loss"] + 0.1
