"""Sweep fixtures: a small toy world (as tests/toyworld builds it) in a private cache, and tiny sweep
specs over it (a few steps, tiny bases) so that whole sweeps run in seconds."""
from __future__ import annotations

import pytest
from sweep_helpers import SMALL_TOY, TINY_TRAIN, tiny_spec  # noqa: F401 - re-exported for the tests


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
