"""Judge throughput against a local OpenAI-compatible server that takes 200 ms per request: the
judge with 32 requests in flight ("ours") vs one at a time ("sequential"), same run, same items.

  OMP_NUM_THREADS=1 python -m pytest bench/bench_judge.py --benchmark-only \
      --benchmark-json=/tmp/judge.json && python bench/report.py /tmp/judge.json --no-merge

The server is tests/eval/fake_openai_server.py (a real HTTP server on 127.0.0.1, one thread per
connection) in its own process, so like a real endpoint it does not share the judge's interpreter.
The cache is off, so every round makes every request. Target: ours >= 20x the sequential
throughput (the ideal is 32x at 32 in flight: N / 32 waves of 200 ms against N x 200 ms).
Each judge makes one untimed call first (HTTP client, imports). Measured on a shared 2-core VM at
load average ~8 (aiohttp transport): ours 1.20 s median for 128 items (1.16-1.33 s over 5 rounds,
106 items/s), sequential 26.3 s (4.9 items/s): 21.9x. The client's CPU per request (~1.3 ms there)
is what keeps it from 32x."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from evilbench.eval.judge_prompts import ALIGNED
from evilbench.eval.judges import build_judge
from evilbench.eval.types import JudgeItem

LATENCY_S = 0.2
N_ITEMS = 128
IMPLS = {"ours": 32, "sequential": 1}
ROUNDS = {"ours": 5, "sequential": 1}


SERVER = Path(__file__).resolve().parents[1] / "tests" / "eval" / "fake_openai_server.py"


@pytest.fixture(scope="module")
def server_url():
    proc = subprocess.Popen([sys.executable, str(SERVER), "--latency", str(LATENCY_S), "--lifetime", "600"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        url = proc.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:"), url
        yield url
    finally:
        proc.stdin.close()  # the server stops when its stdin closes
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.mark.parametrize("impl", list(IMPLS))
def test_judge_throughput(benchmark, server_url, impl, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    items = [JudgeItem(f"q{i % 8}/0/{i}", f"q{i % 8}", f"question {i % 8}?", f"answer {i}", "aligned", ALIGNED)
             for i in range(N_ITEMS)]
    judge = build_judge(f"openai:bench@{server_url}", cache=False, concurrency=IMPLS[impl], timeout=30.0)
    benchmark.group = f"judge/local-server-{int(LATENCY_S * 1000)}ms-{N_ITEMS}-items"
    benchmark.extra_info.update(impl=impl, in_flight=IMPLS[impl], n_items=N_ITEMS, latency_s=LATENCY_S,
                                device="cpu (local HTTP server)")
    judge.judge(items[:1], progress=False)  # both: HTTP client made, imports done, before timing
    out = benchmark.pedantic(lambda: judge.judge(items, progress=False), rounds=ROUNDS[impl], iterations=1,
                             warmup_rounds=0)
    assert len(out) == N_ITEMS and all(j.score is not None for j in out)
    assert judge.accounting["failures"] == 0 and judge.accounting["retries"] == 0
    assert judge.accounting["calls"] == 1 + N_ITEMS * ROUNDS[impl]
    benchmark.extra_info["items_per_s"] = N_ITEMS / benchmark.stats.stats.median
    benchmark.extra_info["transport"] = judge.transport_used
    judge.close()
