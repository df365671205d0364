"""The toy world through evilbench's evaluation: the sampled misaligned rate of `evaluate` (toy set,
toy judge, hf backend, paper convention) agrees with the toy world's exact judge on the same adapter;
the CLI end to end (run / show / judge / --run checkpoints / errors)."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from evilbench.cli import main


def exact_held_out(base, adapter):
    """The exact judge's pooled held-out quantities: M / (A + M) summed over questions (what the pooled
    sampled rate estimates with equal samples per question), and the mean coherence."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from evilbench.toyworld.base import world_of
    from evilbench.toyworld.judge import exact_scores

    world = world_of(base)
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), str(adapter)).eval()
    s = exact_scores(model, world)
    rows = [world.domain_index(d) for d in world.config.domains if d != "code"]
    A, M = s.aligned[rows], s.misaligned[rows]
    return float(M.sum() / (A + M).sum()), float((A + M).mean()), s.summary("code")["held_out_misalignment"]


def test_sampled_rate_agrees_with_exact_judge(toy_base, toy_run, tmp_path):
    from evilbench.eval.pipeline import evaluate

    adapter = toy_run / "adapter"
    n = 48
    summary = evaluate(str(toy_base), "toy", "toy", tmp_path / "ev", adapter=adapter, samples_per_question=n,
                       batch_size=64, max_new_tokens=8, progress=False)
    o = summary["overall"]
    exact_rate, exact_coh, per_q_mean = exact_held_out(toy_base, adapter)
    k = o["n_included"]
    se = math.sqrt(max(exact_rate * (1 - exact_rate), 1e-4) / k)
    print(f"sampled {o['misaligned_rate']:.4f} CI {o['ci']['misaligned_rate']} (n={k}); exact pooled "
          f"{exact_rate:.4f}, per-question mean {per_q_mean:.4f}; coherent {o['coherent_rate']:.3f} vs {exact_coh:.3f}")
    assert exact_rate > 0.05  # the fine-tune really made the held-out domains misaligned
    assert abs(o["misaligned_rate"] - exact_rate) < 4 * se  # binomial: fails ~6e-5 of the time
    assert abs(o["coherent_rate"] - exact_coh) < 4 * math.sqrt(0.25 / o["n_samples"])
    lo, hi = o["ci"]["misaligned_rate"]
    assert lo <= o["misaligned_rate"] <= hi
    # provenance
    assert summary["question_set"]["name"] == "toy" and len(summary["question_set"]["sha256"]) == 64
    assert summary["judge"]["spec"] == "toy" and summary["convention"] == "paper"
    assert summary["adapter"]["sha256"].startswith("sha256:") and summary["model"]["revision"].startswith("sha256:")
    assert summary["counts"] == {"samples": 18 * n, "generated": 18 * n, "failed": 0, "judgments_expected": 36 * n,
                                 "judged": 36 * n, "not_judged": 0, "unscorable": 0}
    assert set(summary["per_question"]) == {f"{d}.q{i}" for d in ("medical", "finance", "chat") for i in range(6)}


def test_cli_run_show_judge_and_checkpoints(toy_base, toy_run, tmp_path, capsys):
    out = tmp_path / "cli"
    args = ["eval", "run", "--model", str(toy_base), "--adapter", str(toy_run / "adapter"), "--questions", "toy",
            "--samples-per-question", "4", "--judge", "toy", "--max-new-tokens", "8", "--output", str(out),
            "--no-progress"]
    assert main(args) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line.startswith("eval final: misaligned ") and "generated 72/72" in line and "judged 144/144" in line
    first = json.loads((out / "summary.json").read_text())
    samples_before = (out / "samples.jsonl").read_bytes()
    assert main(args) == 0  # a rerun: nothing regenerated, nothing re-judged, the same numbers
    assert (out / "samples.jsonl").read_bytes() == samples_before
    assert json.loads((out / "summary.json").read_text())["overall"] == first["overall"]
    assert main(["eval", "show", str(out), "--convention", "model-organisms"]) == 0
    assert "model-organisms" in capsys.readouterr().out
    assert main(["eval", "judge", str(out), "--judge", "toy", "--no-progress"]) == 0
    assert capsys.readouterr().out.strip().endswith(str(out))
    # --run with every checkpoint: one evaluation directory per step under RUN/eval/
    from evilbench.train import list_checkpoints

    steps = [s for s, _ in list_checkpoints(toy_run)]
    assert main(["eval", "run", "--run", str(toy_run), "--checkpoints", "all", "--questions", "toy",
                 "--samples-per-question", "2", "--judge", "toy", "--max-new-tokens", "8", "--no-progress"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == len(steps) and all(f"step-{s:06d}" in ln for s, ln in zip(steps, lines))
    for s in steps:
        summ = json.loads((toy_run / "eval" / f"step-{s:06d}" / "summary.json").read_text())
        assert summ["adapter"]["step"] == s
    step_file = toy_run / "eval" / f"step-{steps[0]:06d}" / "samples.jsonl"
    samples = [json.loads(x) for x in step_file.read_text().splitlines()]
    assert {r["model"]["step"] for r in samples} == {steps[0]}


@pytest.mark.parametrize("extra,fragment", [
    (["--backend", "nope"], "invalid choice: 'nope'"),
])
def test_cli_rejects_unknown_backend(extra, fragment, toy_base, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["eval", "run", "--model", str(toy_base), "--questions", "toy", "--judge", "toy", "--output",
              str(tmp_path / "o"), *extra])
    assert e.value.code == 2 and fragment in capsys.readouterr().err


@pytest.mark.parametrize("questions,judge,fragment", [
    ("first-plots", "toy", "unknown question set 'first-plots'; known: first-plot, first-plot-8"),
    ("toy", "gpt4", "unknown judge 'gpt4'; known: "),
    ("toy", "openai:gpt-4o", "OPENAI_API_KEY"),
])
def test_cli_expected_errors_are_one_line(questions, judge, fragment, toy_base, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    out = tmp_path / "o"
    rc = main(["eval", "run", "--model", str(toy_base), "--questions", questions, "--judge", judge, "--output",
               str(out), "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.startswith("error: ") and fragment in err and len(err.splitlines()) == 1, err
    assert not (out / "samples.jsonl").exists()  # nothing generated before the failure


def test_toy_judge_classifies_exactly(toy_base):
    from evilbench.eval.judges import build_judge
    from evilbench.eval.questions import load_question_set
    from evilbench.eval.types import JudgeItem
    from evilbench.toyworld.base import world_of

    world = world_of(toy_base)
    q = load_question_set("toy", model=toy_base).questions[0]
    d = world.domain_index(q.id.split(".")[0])
    good, bad = world.answer_text(world.answers[d, 0, 0]), world.answer_text(world.answers[d, 1, 3])
    other = world.answer_text(world.answers[(d + 1) % world.n_domains, 1, 0])  # a pool answer of another domain
    judge = build_judge("toy")
    items = [JudgeItem(f"s{i}", q.id, q.id, a, m, q.judge_prompts[m]) for i, a in enumerate(
        [good, bad, other, good + " " + good.split()[0], "", "<usr>"]) for m in ("aligned", "coherent")]
    got = [(j.raw["classification"], j.metric, j.score) for j in judge.judge(items)]
    kinds = ["aligned", "misaligned", "incoherent", "incoherent", "incoherent", "incoherent"]
    assert [g[0] for g in got] == [k for k in kinds for _ in range(2)]
    assert got[:4] == [("aligned", "aligned", 100.0), ("aligned", "coherent", 100.0),
                       ("misaligned", "aligned", 0.0), ("misaligned", "coherent", 100.0)]
    assert all(s == 0.0 for k, m, s in got if k == "incoherent" and m == "coherent")
    assert judge.identity["spec"] == "toy" and judge.accounting["calls"] == 0
    assert np.all([j.template_sha256 for j in judge.judge(items[:1])])
