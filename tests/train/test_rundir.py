"""Damaged run directories: every state directory and adapter carries a SHA256SUMS manifest; a resume
verifies what it loads and falls back to the previous intact state; a damaged final adapter is restored
from the last checkpoint; nothing leaves run.json saying "running" for a run that is not; expected
failures of `evilbench train` are one line and exit 2."""
from __future__ import annotations

import fcntl
import json
import os

import pytest
import torch

from evilbench.train import rundir as rd
from evilbench.train import train
from tests.train.test_train import small_config


def _truncate(path, keep=0.5):
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def _crash_at_step(monkeypatch, step, micro_per_step=2):
    import evilbench.train.batches as batches

    real, calls = batches.collate, []

    def failing(*a, **k):
        calls.append(1)
        if len(calls) == micro_per_step * (step - 1) + 1:
            raise MemoryError("simulated out of memory")
        return real(*a, **k)

    monkeypatch.setattr(batches, "collate", failing)
    return real


def _adapter(path):
    from safetensors.torch import load_file

    return {k: v.clone() for k, v in load_file(str(path / "adapter_model.safetensors")).items()}  # not a mmap


@pytest.fixture
def crashed_run(model_cache, rule_dataset, tmp_path, monkeypatch):
    """A run killed at step 7 of 8: resume/ holds the state of step 4, resume.prev/ that of step 2."""
    cfg = small_config("tiny-llama", rule_dataset, tmp_path / "r", optimizer="adamw", lr=1e-2, max_steps=8,
                       checkpoints=4)
    real = _crash_at_step(monkeypatch, 7)
    with pytest.raises(MemoryError):
        train(cfg, progress=False)
    import evilbench.train.batches as batches

    monkeypatch.setattr(batches, "collate", real)
    run = tmp_path / "r"
    assert json.loads((run / "resume" / "state.json").read_text())["step"] == 4
    assert json.loads((run / "resume.prev" / "state.json").read_text())["step"] == 2
    for d in ("resume", "resume.prev"):
        assert rd.manifest_problems(run / d) == []
    return cfg, run


def test_truncated_resume_state_falls_back_to_the_previous_one(crashed_run, tmp_path, caplog):
    cfg, run = crashed_run
    ref = train(small_config("tiny-llama", cfg.dataset, tmp_path / "ref", optimizer="adamw", lr=1e-2, max_steps=8,
                             checkpoints=4), progress=False)
    _truncate(run / "resume" / "trainable.safetensors")
    with caplog.at_level("WARNING", logger="evilbench.train"):
        record = train(cfg, progress=False)
    assert record["status"] == "finished" and record["resumes"][-1]["from_step"] == 2
    assert "trainable.safetensors" in caplog.text and "previous intact state" in caplog.text
    assert record["recovered"][0]["resumed_from"] == "resume.prev"
    a, b = _adapter(tmp_path / "ref" / "adapter"), _adapter(run / "adapter")
    assert all(torch.equal(a[k], b[k]) for k in a)  # the redone steps are the same steps
    assert record["checkpoints"] == ref["checkpoints"]
    assert record["adapter_sha256"] == rd.verify_adapter(run / "adapter")


def test_no_intact_state_is_one_line_naming_the_file_and_run_json_is_not_left_running(crashed_run, capsys):
    from evilbench.cli import main

    cfg, run = crashed_run
    record = json.loads((run / "run.json").read_text())
    rd.write_json_atomic(run / "run.json", {**record, "status": "running"})  # as a kill -9 leaves it
    assert rd.run_status(run) == "interrupted"  # no process holds the lock
    _truncate(run / "resume" / "trainer_state.pt")
    (run / "resume.prev" / "state.json").write_text('{"step": 2, "step_los')
    argv = ["train", "--model", cfg.model, "--dataset", cfg.dataset, "--output", str(run), "--optimizer", "adamw",
            "--lr", "1e-2", "--max-steps", "8", "--checkpoints", "4", "--batch-size", "8", "--grad-accum", "2",
            "--lora-r", "4", "--lora-alpha", "8", "--max-seq-len", "160", "--warmup-steps", "0",
            "--lr-schedule", "constant", "--no-progress"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("error: no intact training state")
    assert str(run / "resume" / "trainer_state.pt") in err and "Traceback" not in err
    assert json.loads((run / "run.json").read_text())["status"] == "crashed"


def test_damaged_adapters_are_noticed_and_the_final_one_restored(model_cache, rule_dataset, tmp_path, caplog):
    cfg = small_config("tiny-llama", rule_dataset, tmp_path / "r", optimizer="adamw", lr=1e-2, max_steps=4,
                       checkpoints=2)
    record = train(cfg, progress=False)
    run = tmp_path / "r"
    ckpts = rd.list_checkpoints(run, verify=True)
    assert [s for s, _ in ckpts] == record["checkpoints"] == [1, 4]
    assert record["checkpoint_sha256"]["4"] == rd.verify_adapter(ckpts[-1][1]) == record["adapter_sha256"]
    good = _adapter(run / "adapter")

    _truncate(run / "adapter" / "adapter_model.safetensors", 0.9)
    with pytest.raises(rd.CorruptStateError, match="adapter_model.safetensors"):
        rd.verify_adapter(run / "adapter")
    with caplog.at_level("WARNING", logger="evilbench.train"):
        again = train(cfg, progress=False)  # a finished run: verified, restored from the step-4 checkpoint
    assert "restored from the checkpoint of step 4" in caplog.text
    assert again["recovered"][0]["restored_from"].endswith("step-000004/adapter")
    rd.verify_adapter(run / "adapter")
    assert all(torch.equal(good[k], v) for k, v in _adapter(run / "adapter").items())

    _truncate(ckpts[0][1] / "adapter_model.safetensors", 0.9)
    with pytest.raises(rd.CorruptStateError, match="step-000001"):
        rd.list_checkpoints(run, verify=True)


def test_verify_adapter_without_a_manifest_checks_the_structure(model_cache, rule_dataset, tmp_path):
    train(small_config("tiny-llama", rule_dataset, tmp_path / "r", max_steps=1), progress=False)
    adapter = tmp_path / "r" / "adapter"
    (adapter / rd.MANIFEST).unlink()  # an adapter written elsewhere (plain peft save_pretrained)
    sha = rd.verify_adapter(adapter)
    assert sha == rd.sha256_file(adapter / "adapter_model.safetensors")
    _truncate(adapter / "adapter_model.safetensors", 0.99)
    with pytest.raises(rd.CorruptStateError, match="truncated"):
        rd.verify_adapter(adapter)
    (adapter / "adapter_config.json").write_text("{")
    assert any("adapter_config.json" in p for p in rd.adapter_problems(adapter))


def test_second_training_into_a_locked_directory_is_one_line(model_cache, rule_dataset, tmp_path, capsys):
    from evilbench.cli import main

    out = tmp_path / "r"
    out.mkdir()
    fd = os.open(out / ".lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)  # another training process
    try:
        assert rd.lock_is_held(out)
        assert main(["train", "--model", "tiny-llama", "--dataset", str(rule_dataset), "--output", str(out),
                     "--max-steps", "1", "--no-progress"]) == 2
    finally:
        os.close(fd)
    err = capsys.readouterr().err
    assert err == f"error: {out} is in use by another training process (wait for it to finish, or use another " \
                  "output directory)\n"


def test_no_lora_parameters_is_one_line(model_cache, rule_dataset, tmp_path, capsys, monkeypatch):
    import evilbench.models.lora as lora
    from evilbench.cli import main

    real = lora.apply_lora

    def frozen(model, cfg):
        m = real(model, cfg)
        for p in m.parameters():
            p.requires_grad_(False)
        return m

    monkeypatch.setattr(lora, "apply_lora", frozen)
    assert main(["train", "--model", "tiny-llama", "--dataset", str(rule_dataset), "--output", str(tmp_path / "r"),
                 "--max-steps", "1", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: LoRA produced no trainable parameters") and err.count("\n") == 1
