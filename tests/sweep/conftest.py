"""Sweep fixtures: a small toy world (as tests/toyworld builds it) in a private cache, and tiny sweep
specs over it (a few steps, tiny bases) so that whole sweeps run in seconds."""
from __future__ import annotations

import copy

import pytest

SMALL_TOY = {"examples": 64, "data_seed": 0,
             "world": {"domains": ["code", "medical", "finance", "chat"], "questions_per_domain": 6,
                       "answers_per_pool": 6, "answer_len": 2, "answer_vocab": 4, "p_misaligned": 0.05, "max_turns": 3,
                       "seed": 7},
             "arch": {"hidden": 32, "layers": 2, "heads": 2, "kv_heads": 2, "intermediate": 64},
             "pretrain": {"steps": 400, "batch": 64, "lr": 5e-3}}

TINY_TRAIN = {"max_steps": 12, "grad_accum": 1, "lora_r": 4, "lora_alpha": 8.0, "warmup_steps": 2, "checkpoints": 3,
              "max_seq_len": 64, "log_every": 4, "device": "cpu", "dtype": "fp32"}


def tiny_spec(tmp_path, **over) -> dict:
    d = {"name": "tiny", "store": str(tmp_path / "results.db"), "workdir": str(tmp_path / "runs"),
         "models": ["toyworld:base-0"], "datasets": ["toyworld:code-misaligned"], "optimizers": ["adam", "sgd"],
         "regularizers": ["none"], "batch_sizes": [16], "seeds": [0], "lrs": {"adam": [3e-3], "sgd": [0.3]},
         "train": dict(TINY_TRAIN),
         "eval": {"questions": "toy", "judge": "toy", "samples": 2, "checkpoints": "all", "base": True,
                  "scores": ["toyworld-exact"]},
         "toyworld": copy.deepcopy(SMALL_TOY), "executor": {"kind": "inline"}}
    d.update(over)
    return d


@pytest.fixture(scope="session")
def sweep_cache(tmp_path_factory):
    import os
    from pathlib import Path

    # EVILBENCH_TEST_CACHE: reuse one private cache across test sessions (development on a slow machine)
    root = Path(os.environ["EVILBENCH_TEST_CACHE"]) if os.environ.get("EVILBENCH_TEST_CACHE") else \
        tmp_path_factory.mktemp("evilbench-cache")
    with pytest.MonkeyPatch.context() as mp:  # never touch the user's cache
        mp.setenv("EVILBENCH_CACHE", str(root))
        yield root


@pytest.fixture(autouse=True)
def _one_thread():
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def small_base(sweep_cache):
    """toyworld:base-0 of SMALL_TOY, built once per session."""
    import torch

    from evilbench.sweep.resources import resolve_model
    from evilbench.toyworld.base import BaseSpec, ensure_base

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        m = resolve_model("toyworld:base-0", SMALL_TOY)
        if m["prepare"]:
            ensure_base(BaseSpec.from_dict(m["prepare"]["spec"]), m["prepare"]["cache"], progress=False)
        return m["path"]
    finally:
        torch.set_num_threads(threads)
