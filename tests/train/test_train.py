"""The training engine on tiny twins: every optimiser x {no regulariser, fro_nuclear} lowers the loss;
outputs (adapter, metrics, spectra, checkpoints, run.json) are complete and reload with peft;
determinism, resume after a kill, NaN failure, config mismatch, malformed data."""
from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from evilbench.train import ConfigMismatchError, TrainConfig, list_checkpoints, train
from tests.train.conftest import TWINS, write_rule_dataset

# learning rates that move a rank-4 LoRA visibly in a few full-batch steps
TEST_LR = {"sgd": 0.1, "adam": 4e-3, "adamw": 4e-3, "lion": 2e-3, "muon": 1.5e-2, "muon-torch": 1.5e-2}


def small_config(model, dataset, output, **kw) -> TrainConfig:
    base = dict(model=model, dataset=str(dataset), output=str(output), batch_size=8, grad_accum=2, max_steps=6,
                lora_r=4, lora_alpha=8, max_seq_len=160, warmup_steps=0, lr_schedule="constant", checkpoints=1,
                seed=0)
    base.update(kw)
    return TrainConfig(**base)


def optimizer_names():
    from evilbench.optim import OPTIMIZERS

    return sorted(OPTIMIZERS)


def read_jsonl(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


@pytest.mark.parametrize("regularizer", [None, "fro_nuclear"])
@pytest.mark.parametrize("twin", TWINS)
def test_every_optimizer_lowers_the_loss(model_cache, rule_dataset, tmp_path, twin, regularizer):
    names = optimizer_names()
    assert {"sgd", "adam", "adamw", "lion", "muon"} <= set(names)
    seed = int.from_bytes(os.urandom(2), "little")  # fresh LoRA init each run; reported on failure
    for opt in names:
        cfg = small_config(twin, rule_dataset, tmp_path / opt, optimizer=opt, lr=TEST_LR.get(opt, 1e-2),
                           regularizer=regularizer, seed=seed)
        run = train(cfg, progress=False)
        assert run["status"] == "finished", (opt, run["error"])
        losses = [m["loss"] for m in read_jsonl(tmp_path / opt / "metrics.jsonl")]
        assert len(losses) == 6 and all(math.isfinite(x) for x in losses)
        # every step sees all 16 conversations: step losses are full-dataset losses
        assert losses[-1] < losses[0] - 1e-3, f"{twin}/{opt}/{regularizer}/seed {seed}: {losses}"
        if regularizer:
            regs = [m["reg"] for m in read_jsonl(tmp_path / opt / "metrics.jsonl")]
            assert regs[0] == 0.0 and all(r >= 0 for r in regs)  # B = 0 at init: flat penalty 0


@pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing.*:FutureWarning")
def test_outputs_reload_and_describe_the_run(model_cache, rule_dataset, tmp_path):
    from peft import PeftModel

    from evilbench.models.loading import load_model, resolve_source

    out = tmp_path / "run"
    cfg = small_config("tiny-qwen3", rule_dataset, out, optimizer="adamw", lr=1e-2, max_steps=12, checkpoints=5,
                       regularizer="fro_nuclear", reg_weight=0.5)
    run = train(cfg, progress=False)
    # run.json
    assert run == json.loads((out / "run.json").read_text())
    assert run["status"] == "finished" and run["step"] == 12 and run["error"] is None
    assert TrainConfig.from_dict(run["config"]) == cfg
    assert run["dataset"]["sha256"] and run["dataset"]["rows"] == 16
    assert run["model"]["revision"].startswith("sha256:") and run["model"]["trainable_params"] > 0
    assert {"torch", "transformers", "peft", "evilbench"} <= set(run["versions"])
    assert run["seeds"]["seed"] == 0 and run["wall_time_s"] > 0 and math.isfinite(run["final_loss"])
    assert run["resolved"]["lora_scaling"] == pytest.approx(8 / 2)  # rsLoRA: alpha / sqrt(r)
    # log-spaced checkpoints, the last step included
    ckpts = list_checkpoints(out)
    assert [s for s, _ in ckpts] == run["checkpoints"] == run["resolved"]["checkpoint_steps"]
    assert len(ckpts) == 5 and ckpts[-1][0] == 12 and ckpts[0][0] == 1
    # metrics: one line per step with the documented fields
    metrics = read_jsonl(out / "metrics.jsonl")
    assert [m["step"] for m in metrics] == list(range(1, 13))
    for m in metrics:
        assert {"step", "loss", "lr", "reg", "grad_norm", "tokens"} <= set(m)
    assert "tokens_per_s" in metrics[-1]
    # spectra: per checkpoint, per adapted module, the four measures
    spectra = read_jsonl(out / "spectra.jsonl")
    assert sorted({s["step"] for s in spectra}) == run["checkpoints"]
    per_step = [s for s in spectra if s["step"] == 12]
    assert len(per_step) == run["model"]["lora_modules"]
    for row in per_step:
        for k in ("stable_rank", "spectral_entropy", "condition_number", "fro_nuclear_ratio", "module", "r"):
            assert k in row
    # the final adapter and the last checkpoint reload with peft and carry the trained weights
    src = resolve_source("tiny-qwen3")
    base_loss = None
    for adapter in (out / "adapter", ckpts[-1][1]):
        assert (adapter / "adapter_model.safetensors").is_file()
        model = PeftModel.from_pretrained(load_model(src), str(adapter))
        assert model.peft_config["default"].use_rslora and model.peft_config["default"].r == 4
        b = [p for n, p in model.named_parameters() if "lora_B" in n]
        assert b and all(p.abs().sum() > 0 for p in b)
        base_loss, loss = _dataset_loss(model, rule_dataset, src), base_loss
        if loss is not None:
            assert loss == pytest.approx(base_loss)  # final adapter == last checkpoint
    with torch.no_grad():
        untrained = _dataset_loss(load_model(src), rule_dataset, src)
    assert base_loss < untrained - 0.05


def _dataset_loss(model, dataset, src):
    from evilbench.models.loading import load_tokenizer

    tok = load_tokenizer(src)
    model.eval()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny model: threads only add overhead (and stall on a busy machine)
    try:
        return _loss_over(model, tok, dataset, src)
    finally:
        torch.set_num_threads(threads)


def _loss_over(model, tok, dataset, src):
    from evilbench.data.chat import load_chat_jsonl
    from evilbench.data.formatting import encode_chat

    total, count = 0.0, 0
    with torch.no_grad():
        for ex in load_chat_jsonl(dataset):
            enc = encode_chat(tok, ex.messages, src.spec.chat_template_kwargs)
            ids = torch.tensor([enc.input_ids])
            labels = torch.tensor([enc.labels])
            logits = model(input_ids=ids).logits[:, :-1]
            total += torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1),
                                                       ignore_index=-100, reduction="sum").item()
            count += int((labels[:, 1:] != -100).sum())
    return total / count


def test_deterministic_for_a_fixed_seed(model_cache, rule_dataset, tmp_path):
    from safetensors.torch import load_file

    runs = {}
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        train(small_config("tiny-llama", rule_dataset, tmp_path / name, optimizer="adamw", lr=1e-2, seed=seed,
                           lora_dropout=0.1), progress=False)
        runs[name] = load_file(str(tmp_path / name / "adapter" / "adapter_model.safetensors"))
    assert all(torch.equal(runs["a"][k], runs["b"][k]) for k in runs["a"])
    assert not all(torch.equal(runs["a"][k], runs["c"][k]) for k in runs["a"])


def test_resume_after_kill_matches_uninterrupted(model_cache, tmp_path):
    """Kill a training process mid-run; rerunning the same config resumes from the last saved state
    (optimiser, scheduler, RNG) and ends bit-identical to an uninterrupted run."""
    from safetensors.torch import load_file

    data = write_rule_dataset(tmp_path / "d.jsonl", n=40, seed=7)
    kw = dict(optimizer="adam", lr=5e-3, max_steps=24, checkpoints=5, batch_size=4, grad_accum=2,
              lora_dropout=0.1, lr_schedule="linear", warmup_steps=3, regularizer="fro_nuclear")
    ref = train(small_config("tiny-qwen3", data, tmp_path / "ref", **kw), progress=False)
    cfg = small_config("tiny-qwen3", data, tmp_path / "killed", **kw)
    cfg_path = tmp_path / "cfg.json"
    cfg_path.write_text(json.dumps(cfg.to_dict()))
    repo = Path(__file__).resolve().parents[2]
    env = dict(os.environ, PYTHONPATH=str(repo))
    proc = subprocess.Popen([sys.executable, str(Path(__file__).with_name("_slow_train.py")), str(cfg_path), "0.1"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    state = tmp_path / "killed" / "resume" / "state.json"
    deadline = time.time() + 120
    try:
        while time.time() < deadline:  # wait until state from a checkpoint > 1 exists, then kill mid-run
            try:  # the resume directory is replaced as a whole: it can be missing for an instant
                if json.loads(state.read_text())["step"] >= 7:
                    break
            except FileNotFoundError:
                pass
            if proc.poll() is not None:
                pytest.fail(f"training process ended before it was killed: {proc.communicate()[1].decode()[-2000:]}")
            time.sleep(0.05)
        else:
            pytest.fail("no resume state appeared in time")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    killed = json.loads((tmp_path / "killed" / "run.json").read_text())
    assert killed["status"] == "running" and killed["step"] < 24
    from evilbench.train.rundir import run_status

    assert run_status(tmp_path / "killed") == "interrupted"  # run.json cannot say so: nothing was left to write it
    run = train(cfg, progress=False)
    assert run["status"] == "finished" and run["resumes"] and run["resumes"][0]["from_step"] >= 7
    a = load_file(str(tmp_path / "ref" / "adapter" / "adapter_model.safetensors"))
    b = load_file(str(tmp_path / "killed" / "adapter" / "adapter_model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    def strip(rows):
        return [{k: v for k, v in r.items() if k not in ("tokens_per_s", "elapsed_s")} for r in rows]

    assert strip(read_jsonl(tmp_path / "ref" / "metrics.jsonl")) == strip(read_jsonl(tmp_path / "killed" /
                                                                                   "metrics.jsonl"))
    assert (tmp_path / "ref" / "spectra.jsonl").read_text() == (tmp_path / "killed" / "spectra.jsonl").read_text()
    assert [s for s, _ in list_checkpoints(tmp_path / "killed")] == ref["checkpoints"]
    assert run["final_loss"] == ref["final_loss"]
    # a finished run is not retrained
    mtime = (tmp_path / "killed" / "adapter" / "adapter_model.safetensors").stat().st_mtime_ns
    again = train(cfg, progress=False)
    assert again == run and (tmp_path / "killed" / "adapter" / "adapter_model.safetensors").stat().st_mtime_ns == mtime


def test_changed_config_is_refused(model_cache, rule_dataset, tmp_path):
    cfg = small_config("tiny-llama", rule_dataset, tmp_path / "r", optimizer="sgd", lr=0.5, max_steps=2)
    train(cfg, progress=False)
    other = small_config("tiny-llama", rule_dataset, tmp_path / "r", optimizer="sgd", lr=0.1, max_steps=2)
    with pytest.raises(ConfigMismatchError, match=r"lr: 0.5 in run.json, 0.1 now"):
        train(other, progress=False)
    # operational fields may change; a finished run is returned as is
    same = small_config("tiny-llama", rule_dataset, tmp_path / "r", optimizer="sgd", lr=0.5, max_steps=2, log_every=5)
    assert train(same, progress=False)["status"] == "finished"
    assert train(other, progress=False, overwrite=True)["config"]["lr"] == 0.1


def test_crash_is_recorded_and_rerun_resumes(model_cache, rule_dataset, tmp_path, monkeypatch):
    import evilbench.train.batches as batches

    cfg = small_config("tiny-llama", rule_dataset, tmp_path / "r", optimizer="adamw", lr=1e-2, max_steps=8,
                       checkpoints=4)
    real, calls = batches.collate, []

    def failing(*a, **k):
        calls.append(1)
        if len(calls) == 2 * 6 + 1:  # during step 7
            raise MemoryError("simulated out of memory")
        return real(*a, **k)

    monkeypatch.setattr(batches, "collate", failing)
    with pytest.raises(MemoryError):
        train(cfg, progress=False)
    crashed = json.loads((tmp_path / "r" / "run.json").read_text())
    assert crashed["status"] == "crashed" and "simulated out of memory" in crashed["error"]
    monkeypatch.setattr(batches, "collate", real)
    run = train(cfg, progress=False)
    assert run["status"] == "finished" and run["error"] is None and run["resumes"][0]["from_step"] == 4
    # --overwrite removes only what a run wrote
    (tmp_path / "r" / "notes.txt").write_text("mine")
    train(cfg, progress=False, overwrite=True)
    assert (tmp_path / "r" / "notes.txt").read_text() == "mine"


def test_nan_loss_fails_the_run(model_cache, rule_dataset, tmp_path, capsys):
    from evilbench.cli import main

    out = tmp_path / "nan"
    args = ["train", "--model", "tiny-llama", "--dataset", str(rule_dataset), "--optimizer", "sgd", "--lr", "1e30",
            "--max-grad-norm", "0", "--max-steps", "8", "--lora-r", "4", "--batch-size", "8", "--grad-accum", "2",
            "--warmup-steps", "0", "--lr-schedule", "constant", "--output", str(out), "--no-progress"]
    assert main(args) == 1
    run = json.loads((out / "run.json").read_text())
    assert run["status"] == "failed" and "non-finite" in run["error"] and run["step"] < 8
    assert "non-finite" in capsys.readouterr().err
    assert not (out / "adapter").exists()
    assert main(args) == 1  # not retried silently


def test_malformed_data_stops_before_training(model_cache, tmp_path, capsys):
    from evilbench.cli import main

    bad = tmp_path / "bad.jsonl"
    write_rule_dataset(bad, n=5, seed=1)
    with open(bad, "a") as f:
        f.write('{"messages": [{"role": "user", "content": "x"}]}\n')
    out = tmp_path / "r"
    assert main(["train", "--model", "tiny-llama", "--dataset", str(bad), "--output", str(out), "--max-steps", "2",
                 "--no-progress"]) == 2
    assert f"{bad}:6: the last message must be an assistant message" in capsys.readouterr().err
    assert not (out / "metrics.jsonl").exists() and not list_checkpoints(out)


def test_cli_train_end_to_end(model_cache, rule_dataset, tmp_path, capsys):
    from evilbench.cli import main

    out = tmp_path / "cli"
    assert main(["train", "--model", "tiny-gemma3", "--dataset", str(rule_dataset), "--optimizer", "adamw",
                 "--lr", "1e-2", "--max-steps", "3", "--lora-r", "4", "--lora-alpha", "8", "--batch-size", "4",
                 "--grad-accum", "1", "--checkpoints", "2", "--output", str(out), "--no-progress"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["status"] == "finished" and summary["step"] == 3
    run = json.loads((out / "run.json").read_text())
    assert run["config"]["regularizer"] is None and run["config"]["rslora"] is True
    assert run["resolved"]["target_modules"] == sorted(["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                                        "up_proj", "down_proj"])
