"""Helpers shared by the conftests of the toy-model test folders (tests/sweep, tests/toyworld)."""
from __future__ import annotations

import contextlib
import os
from pathlib import Path

import pytest


@contextlib.contextmanager
def one_torch_thread():
    """The toy models are tiny: intra-op threads only add contention (and spin) on a busy 2-core machine."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@contextlib.contextmanager
def private_cache(tmp_path_factory):
    """EVILBENCH_CACHE set to a fresh directory, never the user's cache. EVILBENCH_TEST_CACHE names one
    to reuse across test sessions (development on a slow machine)."""
    reuse = os.environ.get("EVILBENCH_TEST_CACHE")
    root = Path(reuse) if reuse else tmp_path_factory.mktemp("evilbench-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("EVILBENCH_CACHE", str(root))
        yield root
