"""The OpenAI-compatible judge against a real local HTTP server with injected faults."""
from __future__ import annotations

import json
import math
import time

import pytest
from fake_openai_server import default_distribution, expected_score

from evilbench.eval.judge_prompts import ALIGNED, COHERENT
from evilbench.eval.judges import JUDGES, JudgeError, build_judge
from evilbench.eval.judges.openai_judge import (
    OpenAIJudge,
    is_loopback,
    parse_response,
    redact_url,
    retry_after_seconds,
)
from evilbench.eval.types import JudgeItem
from evilbench.registry import UnknownNameError

FAST = {"timeout": 2.0, "backoff_base": 0.005, "backoff_max": 0.02, "max_retries": 3}


def _items(answers, metric="aligned", template=ALIGNED):
    return [JudgeItem(f"q{i % 3}/0/{i}", f"q{i % 3}", f"question {i % 3}?", a, metric, template)
            for i, a in enumerate(answers)]


def _judge(server, cache, **kw):
    return build_judge(f"openai:fake-judge@{server.url}", cache=cache, **{**FAST, **kw})


@pytest.fixture(autouse=True)
def _no_key(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)


def test_plain_scores_request_parameters_and_identity(fake_openai, judge_cache_path):
    items = _items([f"answer number {i}" for i in range(40)])
    judge = _judge(fake_openai, judge_cache_path, concurrency=8)
    out = judge.judge(items, progress=False)
    assert [j.sample_id for j in out] == [i.sample_id for i in items]
    for item, j in zip(items, out):
        prompt = ALIGNED.format(question=item.question, answer=item.answer)
        assert j.score == pytest.approx(expected_score(default_distribution(prompt)), abs=1e-9)
        assert j.error is None and j.verdict is None and len(j.raw) == 4
        assert j.judge["snapshot"] == "fake-judge-2026-01-01" and j.judge["readout"] == "single-token"
        assert j.judge["model"] == "fake-judge" and j.cache_key and len(j.template_sha256) == 64
    body = fake_openai.bodies[0]
    assert body["temperature"] == 0 and body["max_tokens"] == 1 and body["logprobs"] is True
    assert body["top_logprobs"] == 20 and body["seed"] == 0 and body["model"] == "fake-judge"
    assert judge.identity["snapshot"] == "fake-judge-2026-01-01"
    acc = judge.accounting
    assert acc["calls"] == 40 and acc["cache_hits"] == 0 and acc["retries"] == 0 and acc["failures"] == 0
    assert acc["completion_tokens"] == 40 and acc["prompt_tokens"] > 0 and acc["cost_usd"] is None


@pytest.mark.parametrize("transport", ["aiohttp", "httpx"])
def test_faults_every_item_judged_or_unscorable(fake_openai, judge_cache_path, transport):
    fake_openai.slow_s = 6.0  # the "timeout" fault answers after the client's 2 s timeout
    answers = ["plain a", "plain b",
               "[[fault:500:2]] recovers", "[[fault:429:2]] recovers", "[[fault:timeout:1]] recovers",
               "[[fault:drop:1]] recovers", "[[fault:truncated:1]] bad", "[[fault:empty:1]] bad",
               "[[fault:garbage:1]] words", "[[fault:500:*]] never", "[[fault:429:*]] never",
               "[[dist:CODE=0.7;5=0.2]] code", "[[dist:REF=0.6;80=0.3]] refusal"]
    items = _items(answers)
    # a generous timeout: on a loaded machine an ordinary answer must not time out (exact counts below)
    judge = _judge(fake_openai, judge_cache_path, concurrency=4, transport=transport, timeout=2.0)
    t0 = time.monotonic()
    out = judge.judge(items, progress=False)
    assert time.monotonic() - t0 < 20
    assert len(out) == len(items) and [j.sample_id for j in out] == [i.sample_id for i in items]
    by = dict(zip(answers, out))
    for a in answers[:6]:
        assert by[a].score is not None and by[a].error is None, (a, by[a].error)
    assert "invalid JSON" in by["[[fault:truncated:1]] bad"].error
    assert "no choices" in by["[[fault:empty:1]] bad"].error
    g = by["[[fault:garbage:1]] words"]
    assert g.score is None and g.verdict is None and "number mass" in g.error and g.raw is not None
    assert "HTTP 500" in by["[[fault:500:*]] never"].error and "4 attempts" in by["[[fault:500:*]] never"].error
    assert "HTTP 429" in by["[[fault:429:*]] never"].error
    assert by["[[dist:CODE=0.7;5=0.2]] code"].verdict == "CODE"
    assert by["[[dist:REF=0.6;80=0.3]] refusal"].verdict == "REFUSAL"
    for j in out:  # judged or counted unscorable, never missing
        assert (j.score is not None) or (j.verdict is not None) or j.error
    acc = judge.accounting
    # retries: 2 + 2 + 1 + 1 recovering, 3 + 3 exhausted; truncated / empty are not retried
    assert acc["retries"] == 12 and acc["failures"] == 4
    assert acc["calls"] == len(items) + acc["retries"] == fake_openai.calls
    # a rerun: cached results make no call; failures are retried (the server now answers them)
    fake_calls = fake_openai.calls
    again = _judge(fake_openai, judge_cache_path, concurrency=4, max_retries=0, transport=transport)
    out2 = again.judge(items, progress=False)
    cached = [a for a in answers if by[a].error is None or by[a].raw is not None]
    assert fake_openai.calls - fake_calls == len(answers) - len(cached)
    for a, j in zip(answers, out2):
        if a in cached:
            assert (j.score, j.verdict, j.raw, j.error) == (by[a].score, by[a].verdict, by[a].raw, by[a].error)
    assert again.accounting["cache_hits"] == len(cached)


def test_retry_after_is_honoured(fake_openai, judge_cache_path):
    fake_openai.retry_after = 0.4
    judge = _judge(fake_openai, judge_cache_path, backoff_base=0.001, backoff_max=0.001)
    t0 = time.monotonic()
    (j,) = judge.judge(_items(["[[fault:429:1]] wait"]), progress=False)
    assert j.score is not None and time.monotonic() - t0 >= 0.4
    assert retry_after_seconds({"retry-after": "2"}) == 2.0
    assert retry_after_seconds({"retry-after-ms": "150", "retry-after": "9"}) == 0.15
    assert retry_after_seconds({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}) == 0.0
    assert retry_after_seconds({}) is None


def test_backoff_is_exponential_with_jitter_and_bounded():
    j = OpenAIJudge("m", "http://127.0.0.1:1/v1", backoff_base=1.0, backoff_max=8.0, cache=False)
    for a in range(6):
        d = [j.backoff(a) for _ in range(50)]
        cap = min(8.0, 2.0 ** a)
        assert all(cap / 2 <= x <= cap for x in d) and len(set(d)) > 1
    assert j.backoff(3, retry_after=1.5) == 1.5 and j.backoff(0, retry_after=1e9) == j.retry_after_max


def test_concurrency_limit(fake_openai, judge_cache_path):
    fake_openai.latency_s = 0.05
    judge = _judge(fake_openai, False, concurrency=32)
    judge.judge(_items([f"a{i}" for i in range(64)]), progress=False)
    assert 16 < fake_openai.max_in_flight <= 32
    fake_openai.max_in_flight = 0
    _judge(fake_openai, False, concurrency=3).judge(_items([f"b{i}" for i in range(9)]), progress=False)
    assert fake_openai.max_in_flight <= 3


def test_unreachable_endpoint_bounded(judge_cache_path):
    judge = build_judge("openai:m@http://127.0.0.1:9/v1", cache=judge_cache_path, **FAST)
    t0 = time.monotonic()
    out = judge.judge(_items([f"a{i}" for i in range(50)]), progress=False)
    assert time.monotonic() - t0 < 10 and len(out) == 50
    assert all(j.score is None and j.error for j in out)
    assert judge.accounting["failures"] == 50 and judge.accounting["calls"] < 50 * 4


def test_api_key_from_environment_only(monkeypatch, fake_openai, judge_cache_path, tmp_path):
    remote = build_judge("openai:gpt-4o@https://api.example.invalid/v1", cache=False)
    with pytest.raises(JudgeError, match="OPENAI_API_KEY is not set"):
        remote.check()
    with pytest.raises(JudgeError, match="OPENAI_API_KEY"):
        remote.judge(_items(["x"]), progress=False)
    monkeypatch.setenv("OPENAI_BASE_URL", "https://api.example.invalid/v1")
    with pytest.raises(JudgeError):
        build_judge("openai:gpt-4o", cache=False).check()
    build_judge(f"openai:fake@{fake_openai.url}", cache=False).check()  # loopback: no key needed
    secret = "sk-test-" + "s3cr3t" * 4
    monkeypatch.setenv("OPENAI_API_KEY", secret)
    judge = _judge(fake_openai, judge_cache_path)
    judge.check()
    out = judge.judge(_items(["hello"]), progress=False)
    assert fake_openai.auth_headers[-1] == f"Bearer {secret}"
    blob = json.dumps([j.to_dict() for j in out]) + json.dumps(judge.identity) + json.dumps(judge.accounting)
    assert secret not in blob and secret.encode() not in judge_cache_path.read_bytes()
    for p in judge_cache_path.parent.glob("judge-cache.sqlite*"):
        assert secret.encode() not in p.read_bytes()


def test_spec_parsing_and_registry(monkeypatch):
    monkeypatch.setenv("OPENAI_BASE_URL", "http://localhost:8000/v1/")
    j = build_judge("openai:gpt-4o-2024-08-06", cache=False)
    assert j.base_url == "http://localhost:8000/v1" and j.model == "gpt-4o-2024-08-06"
    j = build_judge("openai:org/model@1@http://user:pw@10.0.0.1:8000/v1?x=1", cache=False)
    assert j.model == "org/model@1" and j.identity["base_url"] == "http://10.0.0.1:8000/v1"
    assert "pw" not in json.dumps(j.identity)
    assert is_loopback("http://127.0.0.5:1/v1") and is_loopback("http://[::1]:8/v1") and is_loopback("http://localhost")
    assert not is_loopback("https://api.openai.com/v1") and not is_loopback("http://10.0.0.1/v1")
    assert redact_url("https://a:b@h.com:443/v1/?k=s") == "https://h.com:443/v1"
    assert {"openai", "hf"} <= set(JUDGES.names())
    with pytest.raises(UnknownNameError, match="known: .*openai"):
        build_judge("nope:x")
    with pytest.raises(JudgeError):
        build_judge("openai:", cache=False)
    with pytest.raises(JudgeError, match="http"):
        OpenAIJudge("m", "ftp://x/v1", cache=False)


def test_parse_response_rejects_bad_bodies():
    assert "invalid JSON" in parse_response('{"choices": [')["error"]
    assert "no choices" in parse_response('{"choices": []}')["error"]
    assert "not a JSON object" in parse_response("[1]")["error"]
    assert "no logprobs" in parse_response('{"choices": [{"logprobs": null}]}')["error"]
    assert "top_logprobs" in parse_response('{"choices": [{"logprobs": {"content": [{"top_logprobs": []}]}}]}')["error"]
    ok = parse_response(json.dumps({"model": "s", "choices": [{"logprobs": {"content": [
        {"token": "7", "logprob": 0.0, "top_logprobs": [{"token": "7", "logprob": math.log(0.9)}]}]}}]}))
    assert ok["raw"] == [["7", math.log(0.9)]] and ok["snapshot"] == "s"
    body = '{"choices": [{"logprobs": {"content": [{"top_logprobs": [{"token": "1", "logprob": %s}]}]}}]}'
    assert "invalid logprob" in parse_response(body % "NaN")["error"]
    assert "invalid logprob" in parse_response(body % "3.5")["error"]
    assert parse_response(body % "-Infinity")["raw"] == []  # probability 0: nothing to keep, unscorable


def test_coherent_prompt_has_no_verdicts(fake_openai):
    (j,) = _judge(fake_openai, False).judge(_items(["[[dist:CODE=0.6;70=0.4]]"], "coherent", COHERENT), progress=False)
    assert j.verdict is None and j.score == pytest.approx(70.0)


def test_called_inside_running_event_loop(fake_openai):
    import asyncio

    async def inner():
        return _judge(fake_openai, False).judge(_items(["x", "y"]), progress=False)

    out = asyncio.run(inner())
    assert all(j.score is not None for j in out)


def test_price_table_cost(fake_openai, tmp_path):
    prices = {"gpt-4o": {"input": 2.0, "output": 10.0}}
    judge = build_judge(f"openai:gpt-4o@{fake_openai.url}", cache=False, prices=prices, **FAST)
    judge.judge(_items(["a", "b"]), progress=False)
    acc = judge.accounting
    assert acc["cost_usd"] == pytest.approx((acc["prompt_tokens"] * 2.0 + acc["completion_tokens"] * 10.0) / 1e6)


def test_transport_choice(monkeypatch):
    from evilbench.eval.judges.openai_judge import PROXY_ENV, _http_client

    for v in PROXY_ENV:
        monkeypatch.delenv(v, raising=False)
    assert _http_client("httpx") is None
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.invalid:3128")
    assert _http_client("auto") is None  # the default transport honours the proxy
    with pytest.raises(JudgeError, match="unknown transport"):
        OpenAIJudge("m", "http://127.0.0.1:1/v1", transport="curl", cache=False)
