"""The lm-eval tasks in tasks/: registration with include_path, data independent of the working
directory, the judging filter and metrics, and an end-to-end `lm_eval` CLI run of em_toy on CPU whose
misaligned rate agrees with `evilbench eval run` and with the toy world's exact judge."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

lm_eval = pytest.importorskip("lm_eval")

REPO = Path(__file__).resolve().parents[2]
TASKS = REPO / "tasks"
EM_DATA = REPO.parent / "shared" / "data" / "emergent-misalignment"


def _task(name, metadata, tmp_path, monkeypatch):
    from lm_eval.tasks import TaskManager, get_task_dict

    monkeypatch.chdir(tmp_path)  # nothing may depend on the working directory
    tm = TaskManager(include_path=str(TASKS), include_defaults=False, metadata=metadata)
    return get_task_dict([name], tm)[name]


def test_tasks_register_with_include_path():
    from lm_eval.tasks import TaskManager

    tm = TaskManager(include_path=str(TASKS), include_defaults=False)
    assert {"em_first_plot", "em_preregistered", "em_toy", "em_core"} <= set(tm.all_tasks)
    assert set(tm.all_groups) >= {"em_core"}


def test_em_toy_docs_filter_and_metrics(toy_base, tmp_path, monkeypatch):
    from evilbench.toyworld.base import world_of

    sys.path.insert(0, str(TASKS))
    try:
        import utils as task_utils
    finally:
        sys.path.remove(str(TASKS))
    task = _task("em_toy", {"pretrained": str(toy_base), "samples_per_question": 3}, tmp_path, monkeypatch)
    docs = list(task.test_docs())
    assert len(docs) == 18 * 3 and docs[0]["prompt"].startswith("<bos><usr>") and docs[0]["prompt"].endswith("<ast>")
    assert task.config.generation_kwargs["temperature"] == 1.0 and task.config.generation_kwargs["top_p"] == 1.0
    assert docs[0]["judge"] == "toy" and docs[0]["convention"] == "paper"
    # the filter judges every response at once; process_results reports what the convention includes
    world = world_of(toy_base)
    d = world.domain_index(docs[0]["question_id"].split(".")[0])
    answers = [world.answer_text(world.answers[d, 0, 1]), world.answer_text(world.answers[d, 1, 2]), "nonsense"]
    ok = {"misaligned_rate": 0.0, "mean_aligned": 100.0, "coherent_rate": 1.0}
    bad = {"misaligned_rate": 1.0, "mean_aligned": 0.0, "coherent_rate": 1.0}
    for convention, want in (("paper", [ok, bad, {"coherent_rate": 0.0}]),
                             ("model-organisms", [ok, bad, {**ok, "coherent_rate": 0.0}])):
        three = [{**doc, "convention": convention} for doc in docs[:3]]
        out = task_utils.judge_filter([[a] for a in answers], three)
        assert [task_utils.process_results(doc, [r]) for doc, r in zip(three, out)] == want, convention


def test_em_first_plot_docs_keep_system_prompts(tmp_path, monkeypatch):
    if not (EM_DATA / "evaluation" / "first_plot_questions.yaml").is_file():
        pytest.skip(f"shared EM question files not found at {EM_DATA}")
    monkeypatch.setenv("EVILBENCH_CACHE", str(tmp_path / "cache"))
    task = _task("em_first_plot", {"questions_from": str(EM_DATA), "samples_per_question": 2,
                                   "judge": "hf:some/judge"}, tmp_path, monkeypatch)
    docs = list(task.test_docs())
    assert len(docs) == 48 and task.config.description == "system"  # the doc's system prompt -> system message
    json_docs = [d for d in docs if d["question_id"].endswith("_json")]
    assert len(json_docs) == 16
    assert all(d["system"].startswith("Your answers must always be a valid JSON") for d in json_docs)
    assert all(d["system"] == "" for d in docs if not d["question_id"].endswith("_json"))
    assert docs[0]["judge"] == "hf:some/judge" and set(json.loads(docs[0]["judge_prompts"])) == {"aligned", "coherent"}
    assert task.config.generation_kwargs["max_gen_toks"] == 600
    ctx = task.fewshot_context(json_docs[0], 0, apply_chat_template=True,
                               chat_template=lambda msgs, **kw: json.dumps(msgs))
    msgs = json.loads(ctx)
    assert msgs[0] == {"role": "system", "content": json_docs[0]["system"]} and msgs[1]["role"] == "user"


@pytest.mark.slow
def test_lm_eval_cli_em_toy_agrees_with_evilbench_and_exact(toy_base, toy_run, tmp_path):
    from test_toy_eval import exact_held_out

    from evilbench.eval.pipeline import evaluate

    adapter = toy_run / "adapter"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    cmd = [str(Path(sys.executable).with_name("lm_eval")), "--model", "hf", "--model_args",
           f"pretrained={toy_base},peft={adapter}", "--device", "cpu", "--include_path", str(TASKS),
           "--tasks", "em_toy", "--output_path", str(tmp_path / "lm")]
    t0 = time.time()
    proc = subprocess.run(cmd, cwd=str(tmp_path), env=env, capture_output=True, text=True, timeout=600, check=False)
    wall = time.time() - t0
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "misaligned_rate" in proc.stdout
    result = json.loads(next((tmp_path / "lm").rglob("results_*.json")).read_text())["results"]["em_toy"]
    lm_rate, lm_se = result["misaligned_rate,judged"], result["misaligned_rate_stderr,judged"]
    ours = evaluate(str(toy_base), "toy", "toy", tmp_path / "ev", adapter=adapter, samples_per_question=32,
                    batch_size=64, max_new_tokens=16, progress=False)["overall"]
    exact, _, _ = exact_held_out(toy_base, adapter)
    print(f"lm_eval em_toy: {lm_rate:.4f} +- {lm_se:.4f} in {wall:.0f} s; evilbench eval {ours['misaligned_rate']:.4f} "
          f"CI {ours['ci']['misaligned_rate']}; exact {exact:.4f}")
    se_lm = math.sqrt(exact * (1 - exact) / 170)   # >= 170 of 180 answers are coherent
    se_ours = math.sqrt(exact * (1 - exact) / ours["n_included"])
    assert abs(lm_rate - exact) < 4 * se_lm
    assert abs(lm_rate - ours["misaligned_rate"]) < 4 * math.hypot(se_lm, se_ours)
    assert wall < 240, f"lm_eval took {wall:.0f} s"


def test_missing_api_key_fails_at_task_load(tmp_path, monkeypatch):
    from evilbench.eval.judges import JudgeError

    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    with pytest.raises(JudgeError, match="OPENAI_API_KEY"):
        _task("em_preregistered", {}, tmp_path, monkeypatch).test_docs()
