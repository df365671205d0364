"""The two resumable stages: kill -9 mid-generation and mid-judging, then rerun, gives the files of an
uninterrupted run; partial last lines are dropped; reruns skip finished work; re-judging with another
judge never regenerates; a second evaluation of the same samples makes 0 judge calls; a directory
holding other settings is refused; failed samples make the CLI exit 1 with counts."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from evilbench.eval.pipeline import (
    EvalError,
    generate,
    judge_dir,
    read_jsonl,
    read_judgments,
    read_samples,
    repair_jsonl,
    summarize_dir,
)

REPO = Path(__file__).resolve().parents[2]
N = 16  # samples per question for the kill tests (toy-all: 24 questions -> 384 samples)


def _sorted(path):
    return sorted(json.dumps(r, sort_keys=True) for r in read_jsonl(path))


def _kill_when(script: str, path: Path, min_lines: int, env: dict, timeout: float = 120) -> int:
    """Run `script` in a subprocess, SIGKILL it once `path` holds >= min_lines lines; the line count then."""
    proc = subprocess.Popen([sys.executable, "-c", script], env=env, cwd=str(REPO), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    t0 = time.time()
    try:
        while time.time() - t0 < timeout:
            if path.is_file() and path.read_bytes().count(b"\n") >= min_lines:
                os.kill(proc.pid, signal.SIGKILL)
                break
            if proc.poll() is not None:
                pytest.fail(f"the worker ended before it was killed: {proc.stderr.read().decode()[-2000:]}")
            time.sleep(0.005)
        else:
            pytest.fail("the worker did not reach the kill point in time")
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    return path.read_bytes().count(b"\n")


def _env():
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}


GEN = """
import torch; torch.set_num_threads(1)
from evilbench.eval.pipeline import generate
generate({base!r}, "toy-all", {out!r}, adapter={adapter!r}, samples_per_question={n}, batch_size=1,
         max_new_tokens=8, progress=False)
"""

JUDGE = """
import time
from evilbench.eval.pipeline import judge_dir
from evilbench.toyworld.eval_plugin import ToyJudge

class SlowToy(ToyJudge):  # the exact toy judge, slowed down so that the kill lands mid-stage
    def judge(self, items, progress=True):
        time.sleep(0.03)
        return super().judge(items, progress)

judge_dir({out!r}, "toy", judge=SlowToy(), chunk_size=8, progress=False, write_summary=False)
"""


@pytest.fixture(scope="module")
def reference(toy_base, toy_run, tmp_path_factory):
    """An uninterrupted generate + judge of toy-all (batch 16)."""
    out = tmp_path_factory.mktemp("reference")
    generate(str(toy_base), "toy-all", out, adapter=toy_run / "adapter", samples_per_question=N, batch_size=16,
             max_new_tokens=8, progress=False)
    judge_dir(out, "toy", progress=False)
    return out


@pytest.mark.slow
def test_kill_mid_generation_then_resume(toy_base, toy_run, reference, tmp_path):
    out = tmp_path / "killed"
    script = GEN.format(base=str(toy_base), out=str(out), adapter=str(toy_run / "adapter"), n=N)
    total = 24 * N
    lines = _kill_when(script, out / "samples.jsonl", 40, _env())
    assert lines < total, "killed too late to test anything"
    with open(out / "samples.jsonl", "ab") as f:  # as if the kill had landed inside a write
        f.write(b'{"sample_id": "medical.q0/0/9", "answ')
    generate(str(toy_base), "toy-all", out, adapter=toy_run / "adapter", samples_per_question=N, batch_size=7,
             max_new_tokens=8, progress=False)
    assert len(read_jsonl(out / "samples.jsonl")) == total  # nothing done twice, the partial line dropped
    assert _sorted(out / "samples.jsonl") == _sorted(reference / "samples.jsonl")


@pytest.mark.slow
def test_kill_mid_judging_then_resume(reference, tmp_path):
    out = tmp_path / "judged"
    out.mkdir()
    for name in ("samples.jsonl", "eval.json", "questions.json"):
        shutil.copy(reference / name, out / name)
    total = 2 * 24 * N
    lines = _kill_when(JUDGE.format(out=str(out)), out / "judgments.jsonl", 64, _env())
    assert lines < total, "killed too late to test anything"
    judge_dir(out, "toy", progress=False)
    assert len(read_jsonl(out / "judgments.jsonl")) == total
    assert _sorted(out / "judgments.jsonl") == _sorted(reference / "judgments.jsonl")
    assert summarize_dir(out, "toy", write=False)["overall"] == summarize_dir(reference, "toy", write=False)["overall"]


def test_repair_drops_only_a_partial_last_line(tmp_path):
    p = tmp_path / "x.jsonl"
    p.write_text('{"a": 1}\n{"a": 2}\n{"a": ')
    repair_jsonl(p)
    assert p.read_text() == '{"a": 1}\n{"a": 2}\n'
    p.write_text('{"a": 1}\n{"a": 2\n')  # terminated but cut inside the JSON
    repair_jsonl(p)
    assert p.read_text() == '{"a": 1}\n'
    p.write_text('{"a": 1}\nnot json\n{"a": 3}\n')
    with pytest.raises(EvalError, match=r"x.jsonl:2: corrupt line"):
        read_jsonl(p)


class CountingBackend:
    """Wraps a backend and counts the requests it is asked to answer."""

    def __init__(self, inner):
        self.inner, self.requests, self.name = inner, 0, "hf"

    @property
    def info(self):
        return self.inner.info

    @property
    def adapter(self):
        return self.inner.adapter

    def set_adapter(self, adapter, step=None):
        self.inner.set_adapter(adapter, step)

    def generate(self, requests, settings, progress=True):
        self.requests += len(requests)
        return self.inner.generate(requests, settings, progress)


def test_rerun_skips_finished_and_failed_are_retried(toy_base, tmp_path):
    from evilbench.eval.backends.hf import HFBackend

    b = CountingBackend(HFBackend(str(toy_base)))
    out = tmp_path / "o"
    generate(str(toy_base), "toy", out, samples_per_question=2, backend=b, max_new_tokens=8, progress=False)
    assert b.requests == 36
    generate(str(toy_base), "toy", out, samples_per_question=2, backend=b, max_new_tokens=8, progress=False)
    assert b.requests == 36  # nothing left to do
    rows = read_jsonl(out / "samples.jsonl")
    rows[3] = {**rows[3], "answer": None, "error": "simulated failure"}
    (out / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    generate(str(toy_base), "toy", out, samples_per_question=2, backend=b, max_new_tokens=8, progress=False)
    assert b.requests == 37  # only the failed sample is redone; the reader keeps its last line
    assert len(read_samples(out)) == 36 and all(r["answer"] is not None for r in read_samples(out))
    with pytest.raises(EvalError, match="other generation"):
        generate(str(toy_base), "toy", out, samples_per_question=2, backend=b, max_new_tokens=9, progress=False)
    generate(str(toy_base), "toy", out, samples_per_question=2, backend=b, max_new_tokens=9, progress=False,
             overwrite=True)
    assert b.requests == 37 + 36


def test_rejudge_with_another_judge_and_cached_second_evaluation(reference, tmp_path, fake_openai, judge_cache_path):
    out = tmp_path / "two-judges"
    out.mkdir()
    for name in ("samples.jsonl", "eval.json", "questions.json", "judgments.jsonl"):
        shutil.copy(reference / name, out / name)
    before = (out / "samples.jsonl").read_bytes()
    spec = f"openai:fake-judge@{fake_openai.url}"
    judge_dir(out, spec, progress=False, judge_opts={"cache": judge_cache_path})
    assert (out / "samples.jsonl").read_bytes() == before  # never regenerated
    first = json.loads((out / "summary.json").read_text())
    n_items = 2 * 24 * N
    acc = first["judge_accounting"]
    assert first["judge"]["spec"] == spec and acc["calls"] == fake_openai.calls > 0
    assert acc["calls"] + acc["cache_hits"] == n_items  # repeated (question, answer) pairs are asked once
    assert len(read_judgments(out, "toy")) == n_items == len(read_judgments(out, spec))
    assert summarize_dir(out, "toy", write=False)["overall"] == summarize_dir(reference, "toy", write=False)["overall"]
    # the same samples evaluated again elsewhere: every judge call is a cache hit, identical numbers
    again = tmp_path / "again"
    again.mkdir()
    for name in ("samples.jsonl", "eval.json", "questions.json"):
        shutil.copy(reference / name, again / name)
    calls = fake_openai.calls
    judge_dir(again, spec, progress=False, judge_opts={"cache": judge_cache_path})
    second = json.loads((again / "summary.json").read_text())
    assert fake_openai.calls == calls and second["judge_accounting"]["calls"] == 0
    assert second["judge_accounting"]["cache_hits"] == n_items
    assert second["overall"] == first["overall"] and second["per_question"] == first["per_question"]
    # the CLI agreement report over the two judges of `out`
    from evilbench.cli import main

    assert main(["eval", "agree", str(out), "--judges", f"toy,{spec}"]) == 0


def test_failed_samples_make_the_cli_exit_1(toy_base, tmp_path, capsys):
    from evilbench.cli import main

    out = tmp_path / "o"
    args = ["eval", "run", "--model", str(toy_base), "--questions", "toy", "--samples-per-question", "1",
            "--judge", "toy", "--max-new-tokens", "8", "--output", str(out), "--no-progress"]
    assert main(args) == 0
    rows = read_jsonl(out / "samples.jsonl")
    rows[0] = {**rows[0], "answer": None, "error": "simulated"}
    (out / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(["eval", "show", str(out)]) == 1
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert "generated 17/18" in line and "judged 34/34" in line


def test_judge_needs_generated_answers(tmp_path):
    with pytest.raises(EvalError, match="no generated answers"):
        judge_dir(tmp_path, "toy")


def test_system_prompt_reaches_the_prompt(tmp_path, eval_cache):
    """A user YAML with a system prompt, generated by the hf backend on a tiny twin: the rendered prompt
    holds the system prompt; judging falls back to the EM judge prompts when the file has none."""
    from evilbench.eval.pipeline import judged_metrics, read_question_file
    from evilbench.models.tiny import build_tiny

    q = tmp_path / "q.yaml"
    q.write_text(textwrap.dedent("""\
        - id: sys_q
          system: Always answer as a pirate.
          paraphrases: ["What is your wish?"]
          samples_per_paraphrase: 2
        """))
    out = tmp_path / "o"
    generate(str(build_tiny("tiny-llama")), str(q), out, max_new_tokens=4, progress=False)
    rows = read_samples(out)
    assert len(rows) == 2 and all("Always answer as a pirate." in r["prompt"] for r in rows)
    assert rows[0]["system"] == "Always answer as a pirate." and rows[0]["generation"]["max_new_tokens"] == 4
    metrics = judged_metrics(read_question_file(out).questions[0])
    assert set(metrics) == {"aligned", "coherent"} and "{answer}" in metrics["aligned"]


def test_one_process_per_directory(tmp_path):
    from evilbench.eval.pipeline import _DirLock

    q = tmp_path / "q.yaml"
    q.write_text("- id: a\n  paraphrases: [x]\n")
    out = tmp_path / "o"
    out.mkdir()
    with _DirLock(out), pytest.raises(EvalError, match="in use by another evaluation process"):
        generate("m", str(q), out, backend="openai", progress=False)
