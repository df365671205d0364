"""Sweep fixtures: a small toy world (as tests/toyworld builds it) in a private cache, and tiny sweep
specs over it (a few steps, tiny bases) so that whole sweeps run in seconds."""
from __future__ import annotations

import pytest
from sweep_helpers import SMALL_TOY, TINY_TRAIN, tiny_spec  # noqa: F401 - re-exported for the tests

from tests.helpers import one_torch_thread, private_cache


@pytest.fixture(scope="session")
def sweep_cache(tmp_path_factory):
    with private_cache(tmp_path_factory) as root:
        yield root


@pytest.fixture(autouse=True)
def _one_thread():
    with one_torch_thread():
        yield


@pytest.fixture(scope="session")
def small_base(sweep_cache):
    """toyworld:base-0 of SMALL_TOY, built once per session."""
    from evilbench.sweep.resources import resolve_model
    from evilbench.toyworld.base import BaseSpec, ensure_base

    with one_torch_thread():
        m = resolve_model("toyworld:base-0", SMALL_TOY)
        if m["prepare"]:
            ensure_base(BaseSpec.from_dict(m["prepare"]["spec"]), m["prepare"]["cache"], progress=False)
        return m["path"]
