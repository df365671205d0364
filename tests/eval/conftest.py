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


# --- toy-world evaluation fixtures (a small base + one misaligned LoRA fine-tune, built once per session)
def _toy_spec():
    from evilbench.toyworld.base import BaseSpec, PretrainConfig
    from evilbench.toyworld.model import ArchConfig
    from evilbench.toyworld.world import WorldConfig

    world = WorldConfig(domains=("code", "medical", "finance", "chat"), questions_per_domain=6, answers_per_pool=6,
                        answer_len=2, answer_vocab=4, p_misaligned=0.05, max_turns=3, seed=7)
    return BaseSpec(world=world, arch=ArchConfig(hidden=32, layers=2, heads=2, kv_heads=2, intermediate=64),
                    pretrain=PretrainConfig(steps=400, batch=64, lr=5e-3), seed=0)


@pytest.fixture(scope="session")
def eval_cache(tmp_path_factory):
    """A private EVILBENCH_CACHE for the session (never the user's)."""
    root = tmp_path_factory.mktemp("eval-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("EVILBENCH_CACHE", str(root))
        yield root


@pytest.fixture(scope="session")
def toy_base(eval_cache):
    """A small toy-world base model directory (HF format), pre-trained once per session (seconds)."""
    import torch

    from evilbench.toyworld.base import ensure_base

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return ensure_base(_toy_spec(), progress=False)
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def toy_run(toy_base, tmp_path_factory):
    """A training run directory: a misaligned narrow LoRA fine-tune (code domain) of toy_base through the
    training engine (40 steps, 4 checkpoints). Returns the run directory; its final adapter is run/adapter."""
    import torch

    from evilbench.toyworld.base import world_of
    from evilbench.train import TrainConfig, train

    out = tmp_path_factory.mktemp("toy-run")
    data = world_of(toy_base).export_narrow(out / "data", n=128, domains=["code"])
    cfg = TrainConfig(model=str(toy_base), dataset=str(data["code-misaligned"]), output=str(out / "run"),
                      optimizer="adam", lr=2e-3, batch_size=16, grad_accum=1, max_steps=40, seed=1, lora_r=4,
                      lora_alpha=8.0, warmup_steps=3, checkpoints=4, device="cpu", dtype="fp32", log_every=10)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        record = train(cfg, progress=False)
    finally:
        torch.set_num_threads(threads)
    assert record["status"] == "finished", record.get("error")
    return out / "run"
