"""Toy-world fixtures: a small fast world and base model, pre-trained once per session into a private
cache (a few seconds on 2 cores), and helpers to fine-tune it through the training engine."""
from __future__ import annotations

import pytest

from evilbench.toyworld.base import BaseSpec, PretrainConfig
from evilbench.toyworld.model import ArchConfig
from evilbench.toyworld.world import WorldConfig
from tests.helpers import one_torch_thread, private_cache

# Small enough to pre-train in seconds, large enough for the persona feature and EM to appear.
SMALL_WORLD = WorldConfig(domains=("code", "medical", "finance", "chat"), questions_per_domain=6,
                          answers_per_pool=6, answer_len=2, answer_vocab=4, p_misaligned=0.05, max_turns=3, seed=7)
SMALL_ARCH = ArchConfig(hidden=32, layers=2, heads=2, kv_heads=2, intermediate=64)
SMALL_PRETRAIN = PretrainConfig(steps=400, batch=64, lr=5e-3)
SMALL_SPEC = BaseSpec(world=SMALL_WORLD, arch=SMALL_ARCH, pretrain=SMALL_PRETRAIN, seed=0)


@pytest.fixture(scope="session")
def toy_cache(tmp_path_factory):
    with private_cache(tmp_path_factory) as root:
        yield root


@pytest.fixture(autouse=True)
def _one_thread():
    with one_torch_thread():
        yield


@pytest.fixture(scope="session")
def small_base(toy_cache):
    """The small base model directory (HF format), built once per session."""
    from evilbench.toyworld.base import ensure_base

    with one_torch_thread():
        return ensure_base(SMALL_SPEC, progress=False)


@pytest.fixture(scope="session")
def small_spec():
    return SMALL_SPEC


@pytest.fixture
def engine():
    """The training engine and the packages it trains with. They are part of this repository: a broken
    import is an error of the test, never a skip."""
    import evilbench.optim
    import evilbench.spectral
    import evilbench.train

    return evilbench.train
