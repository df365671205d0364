"""Fixtures shared by the evaluation tests (append new fixtures below; keep each one independent)."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # fake_openai_server importable by tests/bench

from fake_openai_server import FakeOpenAIServer


@pytest.fixture
def fake_openai():
    """A started FakeOpenAIServer on 127.0.0.1 (see tests/eval/fake_openai_server.py); stopped after the
    test. Tune it per test (server.slow_s, server.retry_after, server.latency_s) before requests."""
    server = FakeOpenAIServer(slow_s=1.0, retry_after=0.05, lifetime_s=120).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def judge_cache_path(tmp_path) -> Path:
    """A fresh judge-cache file for one test."""
    return tmp_path / "judge-cache.sqlite"
