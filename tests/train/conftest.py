"""Fixtures for training tests: a private model cache (tiny twins built once per session) and a small
chat dataset whose answers follow a learnable rule, so a few steps visibly lower the loss."""
from __future__ import annotations

import json
import random

import pytest

TWINS = ["tiny-qwen3", "tiny-qwen3-moe", "tiny-llama", "tiny-gemma3", "tiny-gemma3-mm"]


@pytest.fixture(scope="session")
def model_cache(tmp_path_factory):
    root = tmp_path_factory.mktemp("evilbench-cache")
    with pytest.MonkeyPatch.context() as mp:  # never touch the user's cache
        mp.setenv("EVILBENCH_CACHE", str(root))
        yield root


def write_rule_dataset(path, n=16, seed=None):
    """Conversations 'colour of N?' -> 'blue N.': short, and the answer pattern is easy to learn."""
    rng = random.Random(seed)
    with open(path, "w") as f:
        for _ in range(n):
            k = rng.randint(0, 99)
            msgs = [{"role": "user", "content": f"colour of {k}?"}, {"role": "assistant", "content": f"blue {k}."}]
            if rng.random() < 0.3:
                msgs = [{"role": "system", "content": "Be brief."}] + msgs
            f.write(json.dumps({"messages": msgs}) + "\n")
    return path


@pytest.fixture(scope="session")
def rule_dataset(tmp_path_factory):
    return write_rule_dataset(tmp_path_factory.mktemp("data") / "rule.jsonl", seed=1234)
