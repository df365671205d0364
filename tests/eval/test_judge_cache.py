"""The SQLite judge cache: keys, round trips, concurrent writer processes, re-runs with 0 calls."""
from __future__ import annotations

import multiprocessing as mp
import sqlite3

import pytest

from evilbench.eval.judge_prompts import ALIGNED
from evilbench.eval.judges import build_judge
from evilbench.eval.judges.cache import JudgeCache, cache_key, default_cache_path
from evilbench.eval.types import JudgeItem


def test_key_depends_on_every_part():
    base = ({"spec": "openai:m", "model": "m"}, "t" * 64, "prompt", {"temperature": 0})
    k = cache_key(*base)
    assert len(k) == 64 and k == cache_key(*base)
    assert cache_key({"model": "m", "spec": "openai:m"}, *base[1:]) == k  # canonical JSON
    for i, other in enumerate(({"spec": "openai:n", "model": "n"}, "u" * 64, "prompt!", {"temperature": 1})):
        args = list(base)
        args[i] = other
        assert cache_key(*args) != k


def test_round_trip_first_write_wins_and_wal(tmp_path):
    c = JudgeCache(tmp_path / "c.sqlite")
    assert c.get("k") is None
    c.put("k", {"raw": [["1", -0.5]], "snapshot": "s"})
    c.put("k", {"raw": [["2", -0.1]], "snapshot": "other"})
    assert c.get("k") == {"raw": [["1", -0.5]], "snapshot": "s"} and len(c) == 1
    assert c.get_many(["k", "missing"]) == {"k": c.get("k")}
    assert sqlite3.connect(tmp_path / "c.sqlite").execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_default_location(monkeypatch, tmp_path):
    monkeypatch.delenv("EVILBENCH_JUDGE_CACHE", raising=False)
    monkeypatch.setenv("EVILBENCH_CACHE", str(tmp_path / "root"))
    assert default_cache_path() == tmp_path / "root" / "judge-cache.sqlite"
    monkeypatch.setenv("EVILBENCH_JUDGE_CACHE", str(tmp_path / "x.sqlite"))
    assert default_cache_path() == tmp_path / "x.sqlite"


def _writer(path, who, n, barrier):
    c = JudgeCache(path)
    barrier.wait()
    for i in range(n):
        c.put(f"{who}-{i}", {"who": who, "i": i})
        c.put(f"shared-{i}", {"i": i})
        assert c.get(f"{who}-{i}") == {"who": who, "i": i}
    c.close()


def test_two_writer_processes(tmp_path):
    path = tmp_path / "c.sqlite"
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(2)
    procs = [ctx.Process(target=_writer, args=(str(path), w, 300, barrier)) for w in ("a", "b")]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0]
    c = JudgeCache(path)
    assert len(c) == 900
    assert all(c.get(f"{w}-{i}") == {"who": w, "i": i} for w in "ab" for i in range(300))


def test_second_run_makes_no_calls_identical_numbers(fake_openai, judge_cache_path, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    items = [JudgeItem(f"q/0/{i}", "q", "Q?", f"answer {i % 7}", "aligned", ALIGNED) for i in range(30)]
    opts = {"cache": judge_cache_path, "timeout": 1.0, "backoff_base": 0.01}
    first = build_judge(f"openai:fake@{fake_openai.url}", **opts).judge(items, progress=False)
    assert fake_openai.calls == 7  # duplicate prompts are sent once
    judge = build_judge(f"openai:fake@{fake_openai.url}", **opts)
    second = judge.judge(items, progress=False)
    assert fake_openai.calls == 7 and judge.accounting["calls"] == 0 and judge.accounting["cache_hits"] == 30
    assert [j.to_dict() for j in second] == [j.to_dict() for j in first]
    assert judge.identity["snapshot"] == "fake-judge-2026-01-01"
    # another template or decoding parameter is another key
    other = build_judge(f"openai:fake@{fake_openai.url}", top_logprobs=5, **opts)
    other.judge(items[:1], progress=False)
    assert fake_openai.calls == 8


def test_no_cache_option(fake_openai):
    j = build_judge(f"openai:fake@{fake_openai.url}", cache=False)
    items = [JudgeItem("q/0/0", "q", "Q?", "a", "aligned", ALIGNED)]
    j.judge(items, progress=False)
    j.judge(items, progress=False)
    assert fake_openai.calls == 2 and j.cache is None


@pytest.mark.parametrize("bad", ["{question} {answer} {other}", "{0}", "{question"])
def test_bad_template_is_a_clear_error(bad):
    from evilbench.eval.judges import JudgeError, render

    with pytest.raises(JudgeError, match="placeholders"):
        render(bad, "q", "a")
