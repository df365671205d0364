"""Shared test fixtures: deterministic seeding, the ../shared data directory, device selection."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# ../shared sits beside the checkout on CI and in development; EVILBENCH_SHARED overrides it.
SHARED = Path(os.environ.get("EVILBENCH_SHARED", REPO.parent / "shared"))
EM_DATA = SHARED / "data" / "emergent-misalignment"


@pytest.fixture
def em_data_dir() -> Path:
    """The MIT-licensed emergent-misalignment files; tests needing them skip cleanly without them."""
    if not (EM_DATA / "data" / "insecure.jsonl").is_file():
        pytest.skip(f"shared EM data not found at {EM_DATA}")
    return EM_DATA


def cuda_available() -> bool:
    try:
        import torch

        from evilbench.kernels import _ext

        return torch.cuda.is_available() and _ext.with_cuda()
    except Exception:
        return False


requires_cuda = pytest.mark.skipif(not cuda_available(), reason="needs a GPU and the CUDA build of evilbench._C")
